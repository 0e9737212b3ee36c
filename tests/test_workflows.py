"""workflows/*.json: every node exists, links type-check, widget values are valid, and the core workflow runs."""
import glob
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from comfyui_live import CORE_NODES_PATH, FRONTEND_ONLY, workflow_to_prompt
from conftest import FIXTURES, REPO, TESTS, fixture_inputs, load_pack
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.runtime import StandaloneRuntime
from musetalk.video import VideoWriter, open_frames, read_audio

WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
# combos whose options are the files in ComfyUI's input folder, which differ per install
INPUT_FILE_COMBOS = {("LoadVideo", "file"), ("LoadAudio", "audio"), ("LoadImage", "image"), ("VAELoader", "vae_name"),
                     ("UpscaleModelLoader", "model_name")}


def _definitions(path):
    with open(path) as f:
        return json.load(f)["nodes"]


def our_object_info(pack):
    """Our nodes in /object_info's shape (what ComfyUI serves for a V1 class)."""
    info = {}
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        inputs = cls.INPUT_TYPES()
        info[name] = {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
                      "output": list(cls.RETURN_TYPES), "output_name": list(getattr(cls, "RETURN_NAMES", ())),
                      "name": name, "output_node": getattr(cls, "OUTPUT_NODE", False)}
    return info


@pytest.fixture(scope="module")
def object_info():
    info = _definitions(CORE_NODES_PATH)
    info.update(_definitions(os.path.join(TESTS, "data", "musev_nodes.json")))
    info.update(our_object_info(load_pack()))
    return info


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_the_five_workflows_are_shipped():
    names = [os.path.basename(p) for p in WORKFLOWS]
    assert names == ["musetalk_v10_lipsync.json", "musetalk_v15_face_restore.json", "musetalk_v15_lipsync.json",
                     "musetalk_v15_long_video.json", "musev_to_musetalk_v15.json"]
    for path in WORKFLOWS:
        assert os.path.isfile(path[:-len(".json")] + ".jpg"), f"{path} has no picture"


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_links_connect_existing_slots_of_matching_types(path, object_info):
    workflow = _load(path)
    assert workflow["version"] == 0.4
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for node in nodes.values():
        assert node["type"] in object_info or node["type"] in FRONTEND_ONLY, node["type"]
    for link_id, source, source_slot, target, target_slot, kind in workflow["links"]:
        output = nodes[source]["outputs"][source_slot]
        slot = nodes[target]["inputs"][target_slot]
        assert link_id in output["links"] and slot["link"] == link_id
        expected = object_info[nodes[target]["type"]]
        spec = {**expected["input"].get("required", {}), **expected["input"].get("optional", {})}[slot["name"]]
        declared = object_info[nodes[source]["type"]]["output"][source_slot]
        assert output["type"] == kind == declared
        assert spec[0] in (kind, "*"), f"{nodes[target]['type']}.{slot['name']} takes {spec[0]}, gets {kind}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_prompt_has_every_required_input_with_a_valid_value(path, object_info):
    prompt = workflow_to_prompt(_load(path), object_info)
    assert any(object_info[n["class_type"]].get("output_node") for n in prompt.values())
    for node in prompt.values():
        definition = object_info[node["class_type"]]["input"]
        for name, spec in definition.get("required", {}).items():
            assert name in node["inputs"], f"{node['class_type']} misses {name}"
        for name, value in node["inputs"].items():
            spec = {**definition.get("required", {}), **definition.get("optional", {})}[name]
            if isinstance(value, list) or (node["class_type"], name) in INPUT_FILE_COMBOS:
                continue  # a link, or a file the user picks
            _check_value(node["class_type"], name, spec, value)


def _check_value(node, name, spec, value):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    choices = kind if isinstance(kind, list) else options.get("options")
    where = f"{node}.{name} = {value!r}"
    if choices is not None:
        assert value in choices, where
    elif kind == "INT":
        assert isinstance(value, int) and options.get("min", value) <= value <= options.get("max", value), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and options.get("min", value) <= value <= options.get("max", value), where
    elif kind in ("STRING", "BOOLEAN"):
        assert isinstance(value, {"STRING": str, "BOOLEAN": bool}[kind]), where


class CoreNodes:
    """Stand-ins for the ComfyUI core nodes of the workflow, built on the pack's own media layer and networks.

    The upscale model is the file `upscale_model` (spandrel loads it, as ComfyUI does) or, without spandrel, a 2x
    nearest-neighbour stand-in."""

    def __init__(self, folder, vae=None, upscale_model=None):
        self.folder = folder
        self.saved = []
        self.vae, self.upscale_model = vae, upscale_model

    def LoadVideo(self, file):
        return (os.path.join(self.folder, file),)

    def GetVideoComponents(self, video):
        source = open_frames(video)
        return torch.from_numpy(source.frames(0, source.count)).float() / 255, None, source.fps

    def LoadAudio(self, audio):
        waveform, rate = read_audio(os.path.join(self.folder, audio))
        return ({"waveform": torch.from_numpy(waveform)[None], "sample_rate": rate},)

    def CreateVideo(self, images, fps, audio=None):
        return ((images, fps, audio),)

    def SaveVideo(self, video, filename_prefix, format, codec):
        images, fps, audio = video
        path = os.path.join(self.folder, filename_prefix.replace("/", "_") + ".mp4")
        writer = VideoWriter(path, fps, tuple(images.shape[1:3]),
                             audio=(audio["waveform"][0].numpy(), audio["sample_rate"]))
        writer.write((images * 255).round().to(torch.uint8).numpy())
        writer.close()
        self.saved.append(path)
        return ()

    def PreviewAny(self, source):
        return ()

    def VAELoader(self, vae_name):
        return (self.vae,)

    def VAEDecode(self, samples, vae):
        """ComfyUI decodes `samples` as they are and maps [-1,1] to [0,1]."""
        vae.module.to(vae.device)
        with torch.no_grad():
            images = vae.module.decode(samples["samples"].to(vae.device, vae.dtype)).float()
        return (torch.clamp((images + 1) / 2, 0, 1).permute(0, 2, 3, 1).cpu(),)

    def UpscaleModelLoader(self, model_name):
        if self.upscale_model is None:
            return (None,)
        import spandrel

        return (spandrel.ModelLoader().load_from_file(self.upscale_model).eval(),)

    def ImageUpscaleWithModel(self, upscale_model, image):
        if upscale_model is None:
            return (image.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2),)
        with torch.no_grad():
            return (torch.clamp(upscale_model(image.movedim(-1, -3)).movedim(-3, -1), 0, 1),)


def run_prompt(prompt, pack, core):
    """Execute an API prompt in dependency order, as ComfyUI's executor would for these nodes."""
    results = {}

    def value(node_id):
        if node_id not in results:
            node = prompt[node_id]
            inputs = {name: value(v[0])[v[1]] if isinstance(v, list) else v for name, v in node["inputs"].items()}
            cls = pack.NODE_CLASS_MAPPINGS.get(node["class_type"])
            if cls is not None:
                results[node_id] = getattr(cls(), cls.FUNCTION)(**inputs)
            else:
                results[node_id] = getattr(core, node["class_type"])(**inputs)
        return results[node_id]

    for node_id in prompt:
        value(node_id)
    return results


def _example_inputs(tmp_path):
    inputs = fixture_inputs()
    writer = VideoWriter(str(tmp_path / "musetalk_example.mp4"), 25, (384, 384))
    writer.write(np.ascontiguousarray(inputs["frames_bgr"][..., ::-1]))
    writer.close()
    with open(os.path.join(FIXTURES, "input_a16.wav"), "rb") as f:
        (tmp_path / "musetalk_speech.wav").write_bytes(f.read())
    return inputs


def _prompt(name, object_info, inputs):
    prompt = workflow_to_prompt(_load(os.path.join(REPO, "workflows", name)), object_info)
    face = next(n for n in prompt.values() if n["class_type"] == "FaceDetectAndParse")
    # random-weight detectors find no face, so give the fixture's boxes as a user would paste saved ones
    face["inputs"]["bboxes"] = json.dumps([None if b[0] < 0 else b.tolist() for b in inputs["bboxes"]])
    return prompt


def _check_saved_video(saved):
    result = open_frames(saved)
    assert result.fps == 25 and result.count == 37 and result.size == (384, 384)
    audio, rate = read_audio(saved)
    assert rate == 16000 and abs(audio.shape[1] / rate - 37 / 25) < 0.1


def test_core_workflow_runs_to_a_saved_video(object_info, models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSETALK_MODELS", models_dir)
    prompt = _prompt("musetalk_v15_lipsync.json", object_info, _example_inputs(tmp_path))
    core = CoreNodes(str(tmp_path))
    run_prompt(prompt, load_pack(), core)
    (saved,) = core.saved
    _check_saved_video(saved)


def test_face_restore_workflow_runs_to_a_saved_video(object_info, models_dir, tmp_path, monkeypatch):
    """VAE Decode -> upscale model (spandrel on a random-weight ESRGAN file when installed) -> Paste Faces."""
    from test_paste_faces import tiny_esrgan_x2

    monkeypatch.setenv("MUSETALK_MODELS", models_dir)
    prompt = _prompt("musetalk_v15_face_restore.json", object_info, _example_inputs(tmp_path))
    vae = MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu")).vae()
    upscale_model = None
    if importlib.util.find_spec("spandrel") is not None:
        upscale_model = str(tmp_path / "RealESRGAN_x2plus.pth")
        torch.save(tiny_esrgan_x2(), upscale_model)
    core = CoreNodes(str(tmp_path), vae, upscale_model)
    results = run_prompt(prompt, load_pack(), core)
    upscaled = next(results[i][0] for i, n in prompt.items() if n["class_type"] == "ImageUpscaleWithModel")
    assert upscaled.shape == (37, 512, 512, 3)
    (saved,) = core.saved
    _check_saved_video(saved)
