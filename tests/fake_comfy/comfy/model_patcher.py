"""Fake comfy.model_patcher.ModelPatcher: records its arguments and, like the real one, writes onto the module."""
from . import model_management

instances = []


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        # the real __init__ sets these attributes on the module; load() later assigns model.device
        if not hasattr(model, "device"):
            model.device = offload_device
        model.model_loaded_weight_memory = 0
        model.lowvram_patch_counter = 0
        model.model_lowvram = False
        model.current_weight_patches_uuid = None
        instances.append(self)
        model_management.calls.append(("ModelPatcher", self))
