"""Fake comfy.model_management: a configurable device and dtype policy, recorded calls, the interrupt flag."""
import torch

calls = []
device = torch.device("cpu")
offload_device = torch.device("cpu")
#: what unet_dtype / vae_dtype answer on a non-CPU device (a CLI flag such as --fp8_e4m3fn-unet can make it odd)
gpu_unet_dtype = torch.float16
gpu_vae_dtype = torch.float16
#: like --novram for a module without comfy.ops layers: load_models_gpu moves nothing but still records the device
novram = False
_interrupted = False


class InterruptProcessingException(Exception):
    pass


def reset(torch_device="cpu", unet_dtype_on_gpu=torch.float16, vae_dtype_on_gpu=torch.float16, no_vram=False):
    global device, gpu_unet_dtype, gpu_vae_dtype, novram, _interrupted
    calls.clear()
    device = torch.device(torch_device)
    gpu_unet_dtype, gpu_vae_dtype, novram = unet_dtype_on_gpu, vae_dtype_on_gpu, no_vram
    _interrupted = False


def get_torch_device():
    calls.append(("get_torch_device",))
    return device


def unet_offload_device():
    return offload_device


def intermediate_device():
    return torch.device("cpu")


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    calls.append(("should_use_fp16", device))
    return device is not None and device.type != "cpu"


def unet_dtype(device=None, model_params=0, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32),
               weight_dtype=None):
    calls.append(("unet_dtype", device, list(supported_dtypes)))
    return torch.float32 if device is None or device.type == "cpu" else gpu_unet_dtype


def vae_dtype(device=None, allowed_dtypes=()):
    calls.append(("vae_dtype", device, list(allowed_dtypes)))
    return torch.float32 if device is None or device.type == "cpu" else gpu_vae_dtype


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    """Like the real one: moves each patcher's module (unless `novram`) and writes `device` onto it."""
    calls.append(("load_models_gpu", list(models), force_full_load))
    for patcher in models:
        if not novram:
            patcher.model.to(patcher.load_device)
        patcher.model.device = patcher.load_device


def interrupt_current_processing(value=True):
    global _interrupted
    _interrupted = value


def throw_exception_if_processing_interrupted():
    global _interrupted
    calls.append(("throw_exception_if_processing_interrupted",))
    if _interrupted:
        _interrupted = False
        raise InterruptProcessingException()
