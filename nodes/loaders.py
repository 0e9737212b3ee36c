"""LoadMuseTalkModels: pick a MuseTalk version and precision; the weights are read when a stage first needs them."""
from ..musetalk.models import VERSIONS, ModelFiles, MuseTalkModels, standalone_models_dir
from ..musetalk.runtime import PRECISIONS
from . import comfy_runtime

AUTO_VAE = "auto (musetalk/sd-vae)"


class LoadMuseTalkModels:
    DESCRIPTION = ("Selects the MuseTalk weights under models/musetalk. Files are checked here and read on first use, "
                   "so a missing file fails this node with the command that downloads it.")
    CATEGORY = "MuseTalk"
    RETURN_TYPES = ("MUSETALK_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "version": (list(VERSIONS), {"default": "v1.5", "tooltip": "v1.5: better teeth and identity (default). "
                                         "v1.0: the original release, with its own audio features and mask."}),
            "precision": (list(PRECISIONS), {"default": "auto", "tooltip": "auto follows ComfyUI (fp16/bf16 on GPU, "
                                             "fp32 on CPU). Face detection and parsing always run in fp32."}),
            "vae": ([AUTO_VAE] + comfy_runtime.vae_files(), {"tooltip": "sd-vae-ft-mse from models/musetalk/sd-vae, "
                    "or the same weights as a single file from models/vae (vae-ft-mse-840000-ema-pruned)."}),
        }}

    def load(self, version, precision, vae=AUTO_VAE):
        roots = comfy_runtime.model_roots() if comfy_runtime.in_comfyui() else [standalone_models_dir()]
        vae_file = None if vae == AUTO_VAE else comfy_runtime.vae_file_path(vae)
        files = ModelFiles(list(roots), vae_file)
        for component in files.missing(version)[:1]:
            files.require(version, component)  # fail here, with the download command, rather than mid-workflow
        return (MuseTalkModels(version, files, comfy_runtime.current_runtime(), precision),)


NODE_CLASS_MAPPINGS = {"LoadMuseTalkModels": LoadMuseTalkModels}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadMuseTalkModels": "MuseTalk Load Models"}
