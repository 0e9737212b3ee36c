"""The engine's Runtime on top of ComfyUI's model management (the only file that imports comfy).

Every network becomes a `ModelPatcher` so that ComfyUI decides where weights live, evicts them for other models and
unloads them on /free; stages call `load()` right before running, which goes through `load_models_gpu`.
"""
import logging
import os
import secrets

import torch

from ..musetalk.avatar import AVATAR_SUBFOLDER, avatar_file_name, standalone_avatar_dir
from ..musetalk.runtime import Progress, Runtime, StandaloneRuntime

MODEL_FOLDER = "musetalk"
PREVIEW_SIZE = 256
_RUNNABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

log = logging.getLogger("musetalk")


def in_comfyui():
    try:
        import comfy.model_management  # noqa: F401
    except ImportError:
        return False
    return True


def register_model_folder():
    """Add models/musetalk to ComfyUI's model folders (extra_model_paths.yaml entries for `musetalk` come first)."""
    try:
        import folder_paths
    except ImportError:
        return
    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def model_roots():
    import folder_paths

    return folder_paths.get_folder_paths(MODEL_FOLDER)


def vae_files():
    """Single-file VAEs in ComfyUI's models/vae that can replace sd-vae (the same weights as sd-vae-ft-mse)."""
    try:
        import folder_paths
    except ImportError:
        return []
    return [f for f in folder_paths.get_filename_list("vae") if f.endswith((".safetensors", ".ckpt", ".pt", ".pth"))]


def vae_file_path(name):
    import folder_paths

    return folder_paths.get_full_path_or_raise("vae", name)


def avatar_dir():
    """Where avatars are saved and listed: <ComfyUI output>/musetalk/avatars, or the standalone default outside."""
    try:
        import folder_paths
    except ImportError:
        return standalone_avatar_dir()
    return os.path.join(folder_paths.get_output_directory(), AVATAR_SUBFOLDER)


def avatar_path(name):
    """The file of the avatar called `name` in `avatar_dir()`; ValueError for names that are not plain file names."""
    return os.path.join(avatar_dir(), avatar_file_name(name))


def temp_video_path():
    """A new file name for a finished video in ComfyUI's temp folder (which ComfyUI empties when it starts)."""
    import folder_paths

    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"musetalk_{secrets.token_hex(8)}.mp4")


def video_from_file(path):
    """The core VIDEO (VideoFromFile) of the video file at `path`."""
    from comfy_api.latest import InputImpl

    return InputImpl.VideoFromFile(path)


def video_stream_source(video):
    """The file name or BytesIO a core VIDEO reads from when it is a VideoFromFile (Load Video), else None."""
    from comfy_api.latest import InputImpl

    if isinstance(video, InputImpl.VideoFromFile):
        return video.get_stream_source()
    return None


def current_runtime():
    return ComfyRuntime() if in_comfyui() else StandaloneRuntime()


class PatcherTarget(torch.nn.Module):
    """What the ModelPatcher manages: a plain container around one network.

    ModelPatcher writes `.device` and its bookkeeping attributes onto the module it is given; the container keeps
    them off the networks, which never clash with those names then (a read-only `device` property, as library models
    define one, makes a direct load fail inside ComfyUI).
    """

    def __init__(self, network):
        super().__init__()
        self.network = network


def gather_on_one_device(module):
    """Move every parameter and buffer of `module` to the device of its first parameter; returns that device.

    After a full load this is a no-op. It matters when ComfyUI left the weights on the offload device (--novram
    gives plain modules no budget at all) or evicted part of them: running where the weights are beats a mismatch.
    """
    device = next(module.parameters()).device
    module.to(device)
    return device


class ComfyRuntime(Runtime):
    def __init__(self):
        import comfy.model_management as mm

        self._mm = mm
        self.device = mm.get_torch_device()
        self.offload_device = mm.unet_offload_device()
        self.storage_device = mm.intermediate_device()

    def compute_dtype(self, role, precision="auto"):
        if role == "face" or precision != "auto" or self.device.type == "cpu":
            # explicit choices, the fp32-only face networks and CPU (where ComfyUI itself runs fp32) need no policy
            return StandaloneRuntime(self.device).compute_dtype(role, precision)
        if role == "vae":
            dtype = self._mm.vae_dtype(self.device, allowed_dtypes=list(_RUNNABLE_DTYPES))
        else:
            # the official code runs whisper in the UNet's dtype
            dtype = self._mm.unet_dtype(self.device, supported_dtypes=list(_RUNNABLE_DTYPES))
        if dtype in _RUNNABLE_DTYPES:
            return dtype
        # --fp8-*-unet / --fp64-unet describe diffusion model storage; these networks only run in half or full
        return torch.float16 if self._mm.should_use_fp16(self.device) else torch.float32

    def manage(self, module, role, precision="auto"):
        from comfy.model_patcher import ModelPatcher

        model = super().manage(module, role, precision)
        model.handle = ModelPatcher(PatcherTarget(module), load_device=self.device, offload_device=self.offload_device)
        return model

    def load(self, *models):
        # Full loads: ComfyUI streams only comfy.ops layers; a plain module loaded partially ends up split in two.
        self._mm.load_models_gpu([m.handle for m in models], force_full_load=True)
        for model in models:
            device = gather_on_one_device(model.module)
            if device == model.device:
                continue
            log.info("MuseTalk %s network runs on %s, where ComfyUI keeps its weights", model.role, device)
            model.device = device

    def progress(self, total):
        import comfy.utils

        bar = comfy.utils.ProgressBar(total)

        def update(done, total, preview):
            if callable(preview):
                preview = preview()
            if preview is not None:
                from PIL import Image

                # the tuple ComfyUI's progress hook sends to the browser: (format, PIL image, longest side)
                preview = ("JPEG", Image.fromarray(preview), PREVIEW_SIZE)
            bar.update_absolute(done, total, preview)

        return Progress(total, update)

    def check_interrupt(self):
        self._mm.throw_exception_if_processing_interrupted()

