"""The pack against a fake ComfyUI (tests/fake_comfy): folders, ModelPatchers, loading, dtypes, progress, interrupt."""
import itertools
import json
import os
import sys

import numpy as np
import pytest
import torch

import checkpoint_generator
from conftest import REPO, TESTS, load_pack

FAKE_COMFY = os.path.join(TESTS, "fake_comfy")
_pack_names = itertools.count()


def _is_fake_module(name):
    return name in ("comfy", "comfy_api", "folder_paths") or name.startswith(("comfy.", "comfy_api."))


@pytest.fixture
def comfy(monkeypatch, tmp_path):
    """The fake comfy modules on sys.path, reset, with folder_paths rooted at tmp_path; undone afterwards."""
    for name in [n for n in sys.modules if _is_fake_module(n)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(FAKE_COMFY)
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils
    import folder_paths

    folder_paths.reset(str(tmp_path))
    comfy.model_management.reset()
    comfy.model_patcher.instances.clear()
    comfy.utils.updates.clear()
    yield comfy
    for name in [n for n in sys.modules if _is_fake_module(n)]:
        del sys.modules[name]


@pytest.fixture
def pack(comfy):
    """The pack imported the way ComfyUI does, after ComfyUI has set up folder_paths."""
    name = f"ComfyUI_MuseTalk_bridge_{next(_pack_names)}"
    yield load_pack(REPO, name)
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


@pytest.fixture(scope="module")
def unet_vae_dir(tmp_path_factory):
    """Loadable small UNets and VAE; every other file MuseTalk needs is an empty placeholder (only checked to exist)."""
    root = str(tmp_path_factory.mktemp("musetalk_models"))
    checkpoint_generator.generate(root, only=("unet", "vae"))
    with open(os.path.join(REPO, "models", "manifest.json")) as f:
        for entry in json.load(f)["files"]:
            path = os.path.join(root, entry["path"])
            if entry["component"] not in ("unet", "vae") and not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "wb").close()
    return root


def runtime_of(pack):
    return pack.nodes.comfy_runtime.ComfyRuntime()


def test_model_folder_registered_after_extra_paths(comfy, tmp_path):
    import folder_paths

    extra = str(tmp_path / "extra_musetalk")
    folder_paths.add_model_folder_path("musetalk", extra)  # what extra_model_paths.yaml does before packs load
    load_pack(REPO, "ComfyUI_MuseTalk_bridge_folders")
    try:
        assert folder_paths.get_folder_paths("musetalk") == [extra, os.path.join(folder_paths.models_dir, "musetalk")]
    finally:
        for module in [m for m in sys.modules if m.startswith("ComfyUI_MuseTalk_bridge_folders")]:
            del sys.modules[module]


def test_loader_resolves_files_through_folder_paths_extra_path_first(comfy, pack, unet_vae_dir, tmp_path):
    import folder_paths

    default_dir = os.path.join(folder_paths.models_dir, "musetalk")
    os.makedirs(os.path.join(default_dir, "musetalkV15"))
    open(os.path.join(default_dir, "musetalkV15", "unet.pth"), "wb").close()  # shadowed by the extra path's file
    folder_paths.folder_names_and_paths["musetalk"][0].insert(0, unet_vae_dir)

    (models,) = pack.nodes.loaders.LoadMuseTalkModels().load("v1.5", "auto")

    assert ("get_folder_paths", "musetalk") in folder_paths.calls
    assert models.files.roots == [unet_vae_dir, default_dir]
    assert models.files.require("v1.5", "unet")[1] == os.path.join(unet_vae_dir, "musetalkV15", "unet.pth")
    assert models.runtime.device == torch.device("cpu")
    assert type(models.runtime).__name__ == "ComfyRuntime"


def test_loader_lists_and_resolves_single_file_vaes(comfy, pack, unet_vae_dir):
    import folder_paths

    vae_dir = folder_paths.get_folder_paths("vae")[0]
    os.makedirs(vae_dir)
    open(os.path.join(vae_dir, "vae-ft-mse-840000-ema-pruned.safetensors"), "wb").close()
    open(os.path.join(vae_dir, "notes.txt"), "wb").close()
    folder_paths.add_model_folder_path("musetalk", unet_vae_dir, is_default=True)
    loader = pack.nodes.loaders.LoadMuseTalkModels

    choices = loader.INPUT_TYPES()["required"]["vae"][0]
    (models,) = loader().load("v1.0", "fp32", vae="vae-ft-mse-840000-ema-pruned.safetensors")

    assert choices == [pack.nodes.loaders.AUTO_VAE, "vae-ft-mse-840000-ema-pruned.safetensors"]
    assert models.files.vae_file == os.path.join(vae_dir, "vae-ft-mse-840000-ema-pruned.safetensors")


def test_missing_file_fails_the_node_with_the_download_command(comfy, pack):
    with pytest.raises(Exception) as failure:
        pack.nodes.loaders.LoadMuseTalkModels().load("v1.5", "auto")
    assert "python -m musetalk download --version v1.5" in str(failure.value)
    assert "musetalkV15/musetalk.json" in str(failure.value)


def test_networks_get_model_patchers_and_load_fully(comfy, pack, unet_vae_dir):
    import folder_paths

    folder_paths.add_model_folder_path("musetalk", unet_vae_dir, is_default=True)
    (models,) = pack.nodes.loaders.LoadMuseTalkModels().load("v1.5", "auto")

    with torch.inference_mode():  # ComfyUI executes every node inside inference mode
        vae, unet = models.vae(), models.unet()
        models.runtime.load(vae, unet)
        latents = vae.module.encode(torch.rand(1, 3, 64, 64, dtype=vae.dtype))

    patchers = comfy.model_patcher.instances
    assert [p.model.network for p in patchers] == [vae.module, unet.module]
    assert all(p.load_device == p.offload_device == torch.device("cpu") for p in patchers)
    assert (vae.handle, unet.handle) == tuple(patchers)
    loads = [c for c in comfy.model_management.calls if c[0] == "load_models_gpu"]
    assert loads == [("load_models_gpu", patchers, True)]
    assert vae.device == unet.device == torch.device("cpu")
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


def test_load_reports_the_device_the_weights_are_on(comfy, pack):
    """Under --novram ComfyUI leaves plain modules on the offload device: run there, every buffer included."""
    comfy.model_management.reset("meta", no_vram=True)  # "meta" plays the GPU that nothing gets moved to
    runtime = runtime_of(pack)
    face = runtime.manage(torch.nn.BatchNorm2d(3), "face")
    unet = runtime.manage(torch.nn.Conv2d(3, 4, 3), "unet")
    assert (face.device, face.dtype, unet.dtype) == (torch.device("meta"), torch.float32, torch.float16)

    runtime.load(face, unet)

    assert face.device == unet.device == torch.device("cpu")
    tensors = itertools.chain(face.module.parameters(), face.module.buffers())
    assert {(t.device, t.dtype) for t in tensors if t.is_floating_point()} == {(torch.device("cpu"), torch.float32)}
    # the UNet keeps its half precision there: the CPU runs fp16 convolutions
    assert unet.dtype == torch.float16
    assert {(t.device, t.dtype) for t in unet.module.parameters()} == {(torch.device("cpu"), torch.float16)}


@pytest.mark.parametrize("device, role, precision, expected", [
    ("cpu", "unet", "auto", torch.float32),
    ("cpu", "vae", "auto", torch.float32),
    ("cpu", "unet", "fp16", torch.float16),
    ("cpu", "unet", "bf16", torch.bfloat16),
    ("cpu", "audio", "fp32", torch.float32),
    ("cuda", "unet", "auto", torch.float16),
    ("cuda", "audio", "auto", torch.float16),
    ("cuda", "vae", "auto", torch.bfloat16),  # from the fake vae_dtype below, to see that it is asked
    ("cuda", "unet", "fp32", torch.float32),
    ("cuda", "vae", "fp16", torch.float16),
    ("cuda", "unet", "bf16", torch.bfloat16),
    ("cuda", "face", "auto", torch.float32),
    ("cuda", "face", "fp16", torch.float32),
])
def test_dtype_choice(comfy, pack, device, role, precision, expected):
    comfy.model_management.reset(device, vae_dtype_on_gpu=torch.bfloat16)
    assert runtime_of(pack).compute_dtype(role, precision) == expected


def test_auto_dtype_asks_comfyui_with_the_runnable_dtypes(comfy, pack):
    mm = comfy.model_management
    mm.reset("cuda")
    runtime = runtime_of(pack)
    runtime.compute_dtype("unet", "auto")
    runtime.compute_dtype("vae", "auto")
    runnable = [torch.float16, torch.bfloat16, torch.float32]
    assert ("unet_dtype", torch.device("cuda"), runnable) in mm.calls
    assert ("vae_dtype", torch.device("cuda"), runnable) in mm.calls


def test_fp8_unet_flag_falls_back_to_half(comfy, pack):
    comfy.model_management.reset("cuda", unet_dtype_on_gpu=torch.float8_e4m3fn)
    assert runtime_of(pack).compute_dtype("unet", "auto") == torch.float16


def test_progress_goes_to_progress_bar_with_jpeg_previews(comfy, pack):
    progress = runtime_of(pack).progress(3)
    progress.update(1)
    progress.update(2, preview=np.full((32, 48, 3), 200, np.uint8))

    (first, second) = comfy.utils.updates
    assert first == (1, 3, None)
    assert second[:2] == (3, 3)
    kind, image, max_size = second[2]
    assert (kind, image.size, image.mode, max_size) == ("JPEG", (48, 32), "RGB", 256)


def test_a_preview_given_as_a_function_is_made_when_shown(comfy, pack):
    # the engine passes a face still on the device as a function, so that only a shown preview copies it
    runtime_of(pack).progress(1).update(1, preview=lambda: np.full((16, 24, 3), 9, np.uint8))
    (update,) = comfy.utils.updates
    assert update[2][0] == "JPEG" and update[2][1].size == (24, 16)


def test_interrupt_propagates(comfy, pack):
    mm = comfy.model_management
    runtime = runtime_of(pack)
    runtime.check_interrupt()
    mm.interrupt_current_processing()
    with pytest.raises(mm.InterruptProcessingException):
        runtime.check_interrupt()
    assert mm.calls.count(("throw_exception_if_processing_interrupted",)) == 2


def test_fake_comfy_is_gone_after_a_test():
    files = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]
    assert not [f for f in files if f.startswith(FAKE_COMFY)]
    assert FAKE_COMFY not in sys.path
