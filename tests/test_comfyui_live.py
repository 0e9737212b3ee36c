"""The pack inside a real ComfyUI (skipped unless COMFYUI_DIR and COMFYUI_PYTHON name an installed ComfyUI):

    COMFYUI_DIR=/work/comfyui COMFYUI_PYTHON=/path/to/ComfyUI/venv/bin/python \\
        /work/venv/bin/python -m pytest -q tests/test_comfyui_live.py
"""
import json
import os
import re
import subprocess

import pytest

import checkpoint_generator
from comfyui_live import PACK_FOLDER, REPO, ComfyError, server_from_env
from conftest import fresh_pack

pytestmark = pytest.mark.skipif(not (os.environ.get("COMFYUI_DIR") and os.environ.get("COMFYUI_PYTHON")),
                                reason="set COMFYUI_DIR and COMFYUI_PYTHON to run against a real ComfyUI")


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    """The server's models/vae (empty until a test links a VAE file in; ComfyUI lists it afresh on every prompt)."""
    return tmp_path_factory.mktemp("comfyui_vae")


@pytest.fixture(scope="session")
def full_size_vae(tmp_path_factory):
    """A random-weight sd-vae-ft-mse at full size as one original-layout .safetensors file (~320 MiB): the only
    size ComfyUI's own Load VAE builds."""
    folder = tmp_path_factory.mktemp("full_size_vae")
    return checkpoint_generator.write_single_file_vae(str(folder / "musetalk-random-full-vae.safetensors"))


@pytest.fixture(scope="module")
def server(models_dir, vae_folder, tmp_path_factory):
    """ComfyUI with this checkout linked in, the generated checkpoints as an extra `musetalk` model path and
    `vae_folder` as a `vae` one."""
    work = tmp_path_factory.mktemp("comfyui_live")
    config = work / "extra_model_paths.yaml"
    config.write_text(f"musetalk_tests:\n    musetalk: {models_dir}\n    vae: {vae_folder}\n")
    (work / "input").mkdir()  # LoadImage lists it for /object_info; were it missing, the node would be left out
    live = server_from_env(extra_args=["--extra-model-paths-config", str(config), "--input-directory",
                                       str(work / "input"), "--output-directory", str(work / "output")])
    with live:
        yield live


@pytest.fixture(scope="module")
def pack():
    yield from fresh_pack("ComfyUI_MuseTalk_live_test")


def loader_prompt(**inputs):
    return {"1": {"class_type": "LoadMuseTalkModels",
                  "inputs": {"version": "v1.5", "precision": "auto", "vae": "auto (musetalk/sd-vae)", **inputs}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def test_pack_imports_without_errors(server):
    assert server.import_failures() == []
    assert f"custom_nodes/{PACK_FOLDER}" in server.log_tail(100000)


def test_comfyui_meets_the_packs_requires_comfyui(server):
    """pyproject.toml's floor is a release the running ComfyUI is at or above, and it has the core video nodes."""
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        (floor,) = re.findall(r'^requires-comfyui = ">=([0-9.]+)"$', f.read(), re.M)
    running = server.get("/system_stats")["system"]["comfyui_version"]
    assert tuple(map(int, running.lstrip("v").split("."))) >= tuple(map(int, floor.split(".")))
    info = server.object_info()
    assert {"LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo", "LoadAudio", "PreviewAny"} <= set(info)


def test_object_info_lists_every_registered_node(server, pack):
    info = server.object_info()
    ours = {name for name, node in info.items() if node.get("python_module") == f"custom_nodes.{PACK_FOLDER}"}
    assert ours == set(pack.NODE_CLASS_MAPPINGS)
    for name in ours:
        assert info[name]["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS[name]
        assert info[name]["category"].startswith("MuseTalk")


def test_loader_executes_and_finds_the_extra_model_path_first(server, models_dir):
    outputs = server.run_prompt(loader_prompt())
    (text,) = outputs["2"]["text"]
    assert text.startswith("MuseTalkModels(version='v1.5'")
    assert f"roots=['{models_dir}', " in text


def test_invalid_input_is_reported_per_node(server):
    with pytest.raises(ComfyError) as rejected:
        server.run_prompt(loader_prompt(version="v2.0"))
    assert "1" in rejected.value.details["node_errors"]
    assert "v2.0" in str(rejected.value)


def test_ui_workflow_converts_and_runs(server, tmp_path):
    """An uploaded image: LoadImage (with its upload widget) via a Reroute to PreviewImage; our loader to PreviewAny."""
    from PIL import Image

    Image.new("RGB", (24, 16), (200, 30, 30)).save(tmp_path / "musetalk_live_red.png")
    uploaded = server.upload(str(tmp_path / "musetalk_live_red.png"))
    workflow = {
        "last_node_id": 5, "last_link_id": 3, "version": 0.4,
        "nodes": [
            {"id": 1, "type": "LoadImage", "mode": 0, "widgets_values": [uploaded, "image"],
             "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]},
                                       {"name": "MASK", "type": "MASK", "links": []}]},
            {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
             "outputs": [{"name": "", "type": "IMAGE", "links": [2]}]},
            {"id": 3, "type": "PreviewImage", "mode": 0, "widgets_values": [],
             "inputs": [{"name": "images", "type": "IMAGE", "link": 2}], "outputs": []},
            {"id": 4, "type": "LoadMuseTalkModels", "mode": 0,
             "widgets_values": ["v1.0", "fp32", "auto (musetalk/sd-vae)"],
             "inputs": [], "outputs": [{"name": "model", "type": "MUSETALK_MODEL", "links": [3]}]},
            {"id": 5, "type": "PreviewAny", "mode": 0, "widgets_values": [],
             "inputs": [{"name": "source", "type": "*", "link": 3}], "outputs": []},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 4, 0, 5, 0, "MUSETALK_MODEL"]],
    }
    outputs = server.run_workflow(workflow)
    assert outputs["3"]["images"][0]["type"] == "temp"
    assert outputs["5"]["text"][0].startswith("MuseTalkModels(version='v1.0'")


# Runs inside ComfyUI's interpreter with ComfyUI's own modules (as `main.py --cpu` sets them up), without a server:
# the networks go through the real ModelPatcher / load_models_gpu under inference mode, as a node's execution does.
REAL_RUNTIME_PROBE = r"""
import importlib.util, json, os, sys
comfy_dir, pack_dir, models_dir = sys.argv[1:4]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfy_dir)
os.chdir(comfy_dir)
import comfy.options
comfy.options.enable_args_parsing()
import torch
import comfy.model_management as mm
import folder_paths

folder_paths.add_model_folder_path("musetalk", models_dir)
name = pack_dir.replace(".", "_x_")
spec = importlib.util.spec_from_file_location(name, os.path.join(pack_dir, "__init__.py"))
pack = importlib.util.module_from_spec(spec)
sys.modules[name] = pack
spec.loader.exec_module(pack)
report = {}
with torch.inference_mode():
    (models,) = pack.NODE_CLASS_MAPPINGS["LoadMuseTalkModels"]().load("v1.5", "auto")
    runtime = models.runtime
    vae, unet, parser = models.vae(), models.unet(), models.face_parser()
    runtime.load(vae, unet, parser)
    report["loaded"] = sorted(type(p.model.network).__name__ for p in mm.loaded_models())
    report["devices"] = sorted({str(t.device) for m in (vae, unet, parser)
                                for t in list(m.module.parameters()) + list(m.module.buffers())})
    report["reported"] = [str(m.device) for m in (vae, unet, parser)]
    latents = vae.module.encode(torch.rand(1, 3, 64, 64))
    report["latents"] = list(latents.shape)
    progress = runtime.progress(2)
    progress.update(1)
    progress.update(1, preview=torch.zeros(8, 8, 3, dtype=torch.uint8).numpy())
    runtime.check_interrupt()
    mm.interrupt_current_processing()
    try:
        runtime.check_interrupt()
    except mm.InterruptProcessingException:
        report["interrupted"] = True
    mm.unload_all_models()
    report["after_unload"] = len(mm.loaded_models())
    runtime.load(vae)
    report["reloaded"] = [type(p.model.network).__name__ for p in mm.loaded_models()]
    runtime.device = torch.device("cuda")  # only asks ComfyUI's dtype policy; under --cpu it never touches CUDA
    report["dtypes_for_a_gpu"] = [str(runtime.compute_dtype(role, "auto")) for role in ("unet", "vae", "audio")]
print(json.dumps(report))
"""


def test_runtime_on_real_model_management(models_dir):
    result = subprocess.run(
        [os.environ["COMFYUI_PYTHON"], "-c", REAL_RUNTIME_PROBE, os.environ["COMFYUI_DIR"], REPO, models_dir],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "loaded": ["AutoencoderKL", "BiSeNet", "UNet"],
        "devices": ["cpu"],
        "reported": ["cpu", "cpu", "cpu"],
        "latents": [1, 4, 8, 8],
        "interrupted": True,
        "after_unload": 0,
        "reloaded": ["AutoencoderKL"],
        "dtypes_for_a_gpu": ["torch.float32"] * 3,  # --cpu makes ComfyUI's should_use_fp16/bf16 say no
    }


def shipped_prompt(server, tmp_path, name, frames=slice(None)):
    """workflows/<name> as the frontend sends it, with an uploaded clip of the fixture's `frames` (384x384, 25 fps),
    the fixture speech, and the boxes of those frames given (random-weight detectors find no face)."""
    import numpy as np

    from comfyui_live import workflow_to_prompt
    from conftest import FIXTURES, fixture_inputs
    from musetalk.video import VideoWriter

    inputs = fixture_inputs()
    clip = tmp_path / "musetalk_live_clip.mp4"
    writer = VideoWriter(str(clip), 25, (384, 384))
    writer.write(np.ascontiguousarray(inputs["frames_bgr"][frames, :, :, ::-1]))
    writer.close()
    with open(os.path.join(REPO, "workflows", name)) as f:
        workflow = json.load(f)
    prompt = workflow_to_prompt(workflow, server.object_info())
    for node in prompt.values():
        if node["class_type"] == "LoadVideo":
            node["inputs"]["file"] = server.upload(str(clip))
        elif node["class_type"] == "LoadAudio":
            node["inputs"]["audio"] = server.upload(os.path.join(FIXTURES, "input_a16.wav"))
        elif node["class_type"] == "FaceDetectAndParse":
            node["inputs"]["bboxes"] = json.dumps([None if b[0] < 0 else b.tolist() for b in inputs["bboxes"][frames]])
    return prompt


@pytest.mark.parametrize("name", ["musetalk_v15_lipsync.json", "musetalk_v10_lipsync.json"])
def test_shipped_workflow_runs_to_a_saved_video(server, tmp_path, name):
    """workflows/<name> as a user loads it, with an uploaded clip and speech, on the generated checkpoints."""
    outputs = server.run_prompt(shipped_prompt(server, tmp_path, name), timeout=900)
    saved = next(o for o in outputs.values() if o.get("images") and o["images"][0]["filename"].endswith(".mp4"))
    assert saved["images"][0]["type"] == "output"


CHECK_FRAMES = slice(3, 7)  # four fixture frames, the third of them (fixture frame 5) without a face


def _node_of(prompt, class_type):
    (node_id,) = [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]
    return node_id


def test_core_vae_decode_and_encode_match_ours_on_the_full_size_vae(server, vae_folder, full_size_vae, models_dir,
                                                                     tmp_path):
    """The v1.5 workflow with one full-size VAE file for both LoadMuseTalkModels and core Load VAE: core VAE Decode
    of LatentLipInpaint's LATENT gives the faces of our decode within 1 LSB, and pasted by MuseTalkPasteFaces the
    frames of BlendAndDecode within 1 LSB; core VAE Encode of the crops gives our latents, and BlendAndDecode pastes
    that LATENT as core VAE Decode + MuseTalkPasteFaces do."""
    import io

    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load as load_safetensors

    from conftest import fixture_inputs
    from musetalk.inpaint import vae_inputs
    from musetalk.models import ModelFiles, MuseTalkModels
    from musetalk.runtime import StandaloneRuntime

    vae_name = os.path.basename(full_size_vae)
    os.symlink(full_size_vae, vae_folder / vae_name)  # listed by both loaders from the next prompt on
    prompt = shipped_prompt(server, tmp_path, "musetalk_v15_lipsync.json", CHECK_FRAMES)
    loader, detect, inpaint, blend, video = (_node_of(prompt, t) for t in (
        "LoadMuseTalkModels", "FaceDetectAndParse", "LatentLipInpaint", "BlendAndDecode", "GetVideoComponents"))
    prompt[loader]["inputs"]["vae"] = vae_name
    prompt[inpaint]["inputs"]["cycle"] = "once"  # one output per source frame: few full-size decodes on the CPU
    faces, images = [detect, 0], [video, 0]
    added = {
        "vae": ("VAELoader", {"vae_name": vae_name}),
        "core_faces": ("VAEDecode", {"samples": [inpaint, 0], "vae": ["vae", 0]}),
        "core_pasted": ("MuseTalkPasteFaces", {"generated": ["core_faces", 0], "latent": [inpaint, 0],
                                               "faces": faces, "images": images, "batch_size": 8}),
        "encoded": ("VAEEncode", {"pixels": [detect, 1], "vae": ["vae", 0]}),
        "encoded_blend": ("BlendAndDecode", {"model": [loader, 0], "latent": ["encoded", 0], "faces": faces,
                                             "images": images, "batch_size": 8}),
        "encoded_faces": ("VAEDecode", {"samples": ["encoded", 0], "vae": ["vae", 0]}),
        "encoded_pasted": ("MuseTalkPasteFaces", {"generated": ["encoded_faces", 0], "latent": ["encoded", 0],
                                                  "faces": faces, "images": images, "batch_size": 8}),
    }
    saved_images = {"core_faces": ["core_faces", 0], "core_pasted": ["core_pasted", 0], "blend": [blend, 0],
                    "crops": [detect, 1], "encoded_blend": ["encoded_blend", 0],
                    "encoded_pasted": ["encoded_pasted", 0]}
    saved_latents = {"latent": [inpaint, 0], "encoded": ["encoded", 0]}
    for node_id, (class_type, inputs) in added.items():
        prompt[node_id] = {"class_type": class_type, "inputs": inputs}
    for name, source in saved_images.items():
        prompt[f"save_{name}"] = {"class_type": "SaveImage",
                                  "inputs": {"images": source, "filename_prefix": f"vae_check/{name}"}}
    for name, source in saved_latents.items():
        prompt[f"save_{name}"] = {"class_type": "SaveLatent",
                                  "inputs": {"samples": source, "filename_prefix": f"vae_check/{name}"}}
    outputs = server.run_prompt(prompt, timeout=3600)

    def saved_image(name):  # SaveImage writes uint8(255 * x), truncated
        return np.stack([np.asarray(Image.open(io.BytesIO(server.output_file(item))))
                         for item in outputs[f"save_{name}"]["images"]]).astype(np.int64)

    def saved_latent(name):
        (item,) = outputs[f"save_{name}"]["latents"]
        return load_safetensors(server.output_file(item))["latent_tensor"]

    with_face = [i for i, box in enumerate(fixture_inputs()["bboxes"][CHECK_FRAMES]) if box[0] >= 0]
    assert len(with_face) == 3
    core_faces, crops = saved_image("core_faces")[with_face], saved_image("crops")
    latent, encoded = saved_latent("latent"), saved_latent("encoded")
    assert latent.shape == (4, 4, 32, 32) and encoded.shape == (4, 4, 32, 32)
    assert torch.isfinite(latent).all() and torch.isfinite(encoded).all()

    # our decode and encode of the same latents and crops, with the same file, as the engine runs them
    model = MuseTalkModels("v1.5", ModelFiles([models_dir], full_size_vae), StandaloneRuntime("cpu"), "fp32")
    vae = model.vae()
    model.runtime.load(vae)
    with torch.no_grad(), vae.computing():
        decoded = vae.module.decode(latent[with_face])
        ours_encoded = vae.module.encode(vae_inputs(torch.from_numpy(crops[with_face]).to(torch.uint8))[1])
    # truncated to uint8 as SaveImage truncates core's faces, so both sides are quantised alike
    ours_faces = ((decoded / 2 + 0.5).clamp(0, 1) * 255).floor().permute(0, 2, 3, 1).to(torch.int64).numpy()

    # the random full-size weights give real pictures, not a saturated or flat image
    saturated = np.isin(core_faces, (0, 255)).mean()
    assert core_faces.std() > 20 and saturated < 0.25
    face_diff = np.abs(core_faces - ours_faces)
    print(f"\nfull-size VAE, core VAE Decode vs ours: max {face_diff.max()} LSB on {(face_diff > 0).sum()} of "
          f"{face_diff.size} values; faces mean {core_faces.mean():.1f}, std {core_faces.std():.1f}, "
          f"{100 * saturated:.1f}% at 0 or 255")
    assert face_diff.max() <= 1

    for ours, core in (("blend", "core_pasted"), ("encoded_blend", "encoded_pasted")):
        frames, pasted = saved_image(ours), saved_image(core)
        frame_diff = np.abs(frames - pasted)
        print(f"{ours} vs {core}: max {frame_diff.max()} LSB on {(frame_diff > 0).sum()} of {frame_diff.size} values")
        assert frames.shape == (4, 384, 384, 3) and frame_diff.max() <= 1
        assert np.array_equal(frames[2], pasted[2])  # the frame without a face, passed through by both

    # the face frames' crops only: the black crop of a frame without a face (never pasted) is a constant image, whose
    # GroupNorm divides rounding noise by a near-zero spread (1.6e-3 apart there)
    encoded = encoded[with_face]
    encoded_diff = (encoded - ours_encoded).abs().max().item()
    print(f"core VAE Encode vs ours: max |diff| {encoded_diff:.2e} (latents up to {encoded.abs().max():.2f})")
    torch.testing.assert_close(encoded, ours_encoded, atol=1e-4, rtol=1e-4)  # the fixtures' latent tolerance
