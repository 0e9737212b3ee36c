"""The engine's Runtime on top of ComfyUI's model management (the only file that imports comfy).

Every network becomes a `ModelPatcher` so that ComfyUI decides where weights live, evicts them for other models and
unloads them on /free; stages call `load()` right before running, which goes through `load_models_gpu`.
"""
import os

import torch

from ..musetalk.avatar import avatar_file_name, standalone_avatar_dir
from ..musetalk.runtime import Progress, Runtime, StandaloneRuntime

MODEL_FOLDER = "musetalk"
AVATAR_SUBFOLDER = os.path.join("musetalk", "avatars")
PREVIEW_SIZE = 256


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


def current_runtime():
    return ComfyRuntime() if in_comfyui() else StandaloneRuntime()


class ComfyRuntime(Runtime):
    def __init__(self):
        import comfy.model_management as mm

        self._mm = mm
        self.device = mm.get_torch_device()
        self.offload_device = mm.unet_offload_device()
        self.storage_device = mm.intermediate_device()

    def compute_dtype(self, role, precision="auto"):
        if role == "face" or (precision == "auto" and self.device.type == "cpu"):
            return torch.float32
        if precision != "auto":
            return StandaloneRuntime(self.device).compute_dtype(role, precision)
        if role == "vae":
            return self._mm.vae_dtype(self.device, allowed_dtypes=[torch.float16, torch.bfloat16, torch.float32])
        # the official code runs whisper in the UNet's dtype
        return self._mm.unet_dtype(self.device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])

    def manage(self, module, role, precision="auto"):
        from comfy.model_patcher import ModelPatcher

        model = super().manage(module, role, precision)
        model.handle = ModelPatcher(module, load_device=self.device, offload_device=self.offload_device)
        return model

    def load(self, *models):
        # Full loads: these are plain torch modules, which ComfyUI can only move whole (partial loading needs comfy.ops).
        self._mm.load_models_gpu([m.handle for m in models], force_full_load=True)
        for model in models:
            # --novram may keep weights on the offload device; run where they are instead of mixing devices
            model.device = next(model.module.parameters()).device
            model.module.to(model.device)

    def progress(self, total):
        import comfy.utils

        bar = comfy.utils.ProgressBar(total)

        def update(done, total, preview):
            if preview is not None:
                from PIL import Image

                preview = ("JPEG", Image.fromarray(preview), PREVIEW_SIZE)
            bar.update_absolute(done, total, preview)

        return Progress(total, update)

    def check_interrupt(self):
        self._mm.throw_exception_if_processing_interrupted()

