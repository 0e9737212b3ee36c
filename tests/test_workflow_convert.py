"""UI workflow -> API prompt conversion (tests/comfyui_live.py), offline, on the captured core node definitions."""
import json
import os

import pytest

from comfyui_live import ComfyError, workflow_to_prompt
from conftest import TESTS

with open(os.path.join(TESTS, "data", "comfy_core_nodes.json")) as f:
    CORE = json.load(f)["nodes"]

# made-up nodes for the frontend's widget rules that the core nodes above do not exercise
SAMPLER = {"input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"default": 0}], "steps": ["INT", {}],
                                  "sampler": [["euler", "ddim"], {"control_after_generate": True}]},
                     "optional": {"denoise": ["FLOAT", {}]}},
           "input_order": {"required": ["model", "seed", "steps", "sampler"], "optional": ["denoise"]}}
UPLOADER = {"input": {"required": {"file": [["a.png", "b.png"], {"image_upload": True}]},
                      "optional": {"strength": ["FLOAT", {}]}}}
FORCED = {"input": {"required": {"count": ["INT", {"forceInput": True}], "label": ["STRING", {}]}}}
IMAGE_FILTER = {"input": {"required": {"image": ["IMAGE", {}], "amount": ["FLOAT", {}]}}}
MODEL_SOURCE = {"input": {"required": {}}}
OBJECT_INFO = {**CORE, "Sampler": SAMPLER, "Uploader": UPLOADER, "Forced": FORCED, "ImageFilter": IMAGE_FILTER,
               "ModelSource": MODEL_SOURCE}


def node(node_id, kind, widgets=(), inputs=(), mode=0):
    """A UI-format node; `inputs` are (name, type, link id or None[, widget name])."""
    slots = [{"name": i[0], "type": i[1], "link": i[2], **({"widget": {"name": i[3]}} if len(i) > 3 else {})}
             for i in inputs]
    return {"id": node_id, "type": kind, "mode": mode, "widgets_values": list(widgets), "inputs": slots}


def convert(nodes, links):
    return workflow_to_prompt({"nodes": nodes, "links": links, "version": 0.4}, OBJECT_INFO)


def test_core_video_pipeline():
    prompt = convert(
        [node(1, "LoadVideo", ["clip.mp4", None]),
         node(2, "GetVideoComponents", inputs=[("video", "VIDEO", 1)]),
         node(3, "CreateVideo", [30],
              inputs=[("images", "IMAGE", 2), ("fps", "FLOAT", 3, "fps"), ("audio", "AUDIO", 4)]),
         node(4, "SaveVideo", ["video/lipsync", "auto", "auto"], inputs=[("video", "VIDEO", 5)]),
         node(5, "LoadAudio", ["speech.wav", None, None])],
        [[1, 1, 0, 2, 0, "VIDEO"], [2, 2, 0, 3, 0, "IMAGE"], [3, 2, 2, 3, 1, "FLOAT"], [4, 5, 0, 3, 2, "AUDIO"],
         [5, 3, 0, 4, 0, "VIDEO"]])
    assert prompt == {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "clip.mp4"}, "_meta": {"title": "Load Video"}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]},
              "_meta": {"title": "Get Video Components"}},
        "3": {"class_type": "CreateVideo", "inputs": {"fps": ["2", 2], "images": ["2", 0], "audio": ["5", 0]},
              "_meta": {"title": "Create Video"}},
        "4": {"class_type": "SaveVideo",
              "inputs": {"filename_prefix": "video/lipsync", "format": "auto", "codec": "auto", "video": ["3", 0]},
              "_meta": {"title": "Save Video"}},
        "5": {"class_type": "LoadAudio", "inputs": {"audio": "speech.wav"}, "_meta": {"title": "Load Audio"}},
    }


def test_control_after_generate_slots_are_skipped():
    prompt = convert([node(1, "ModelSource"), node(2, "Sampler", [42, "randomize", 20, "ddim", "fixed", 0.5],
                                                   inputs=[("model", "MODEL", 1)])],
                     [[1, 1, 0, 2, 0, "MODEL"]])
    assert prompt["2"]["inputs"] == {"model": ["1", 0], "seed": 42, "steps": 20, "sampler": "ddim", "denoise": 0.5}


def test_upload_button_slot_sits_between_required_and_optional_widgets():
    prompt = convert([node(1, "Uploader", ["b.png", None, 0.7])], [])
    assert prompt["1"]["inputs"] == {"file": "b.png", "strength": 0.7}


def test_legacy_force_input_values_are_dropped():
    assert convert([node(1, "Forced", [5, "old"])], [])["1"]["inputs"] == {"label": "old"}
    assert convert([node(1, "Forced", ["new"])], [])["1"]["inputs"] == {"label": "new"}


def test_reroute_bypass_mute_primitive_and_note():
    prompt = convert(
        [node(1, "LoadImage", ["example.png", None]),
         node(2, "Reroute", inputs=[("", "*", 1)]),
         node(3, "ImageFilter", [0.3], inputs=[("image", "IMAGE", 2)], mode=4),  # bypassed: IMAGE passes through
         node(4, "PrimitiveNode", [0.9, "fixed"]),
         node(5, "ImageFilter", [0.1], inputs=[("image", "IMAGE", 3), ("amount", "FLOAT", 4, "amount")]),
         node(6, "ImageFilter", [0.2], inputs=[("image", "IMAGE", 5)], mode=2),  # muted: dropped with its links
         node(7, "PreviewImage", inputs=[("images", "IMAGE", 6)]),
         node(8, "Note", ["remember to upload the clip"])],
        [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 5, 0, "IMAGE"], [4, 4, 0, 5, 1, "FLOAT"],
         [5, 5, 0, 6, 0, "IMAGE"], [6, 6, 0, 7, 0, "IMAGE"]])
    assert sorted(prompt) == ["1", "5", "7"]
    assert prompt["5"]["inputs"] == {"image": ["1", 0], "amount": 0.9}
    assert prompt["7"]["inputs"] == {}


def test_links_in_object_form_and_titles():
    nodes = [node(1, "ModelSource"), {**node(2, "Sampler", [1, "fixed", 2, "euler", "fixed"],
                                               inputs=[("model", "MODEL", 9)]), "title": "My sampler"}]
    links = [{"id": 9, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "MODEL"}]
    prompt = workflow_to_prompt({"nodes": nodes, "links": links}, OBJECT_INFO)
    assert prompt["2"]["inputs"]["model"] == ["1", 0]
    assert prompt["2"]["_meta"] == {"title": "My sampler"}


def test_unknown_nodes_and_subgraphs_are_refused():
    with pytest.raises(ComfyError, match="VHS_LoadVideo"):
        convert([node(1, "VHS_LoadVideo")], [])
    with pytest.raises(ComfyError, match="subgraphs"):
        workflow_to_prompt({"nodes": [], "links": [], "definitions": {"subgraphs": [{"id": "x"}]}}, OBJECT_INFO)
