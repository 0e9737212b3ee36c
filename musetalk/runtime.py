"""Where networks run: device, dtype, load-before-use, progress and interrupt.

The engine only talks to a `Runtime`. Inside ComfyUI the nodes pass one backed by `comfy.model_management`
(`nodes/comfy_runtime.py`); the command line and the tests use `StandaloneRuntime` below. Nothing here touches a
device until a runtime is created, so importing the engine stays cheap.
"""
import logging

import torch

log = logging.getLogger("musetalk")

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_EXPLICIT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ManagedModel:
    """A network plus where and in which dtype it runs. Call `runtime.load(model)` before using `module`."""

    def __init__(self, module, role, device, dtype, handle=None):
        self.module = module
        self.role = role
        self.device = device
        self.dtype = dtype
        self.handle = handle  # the runtime's own bookkeeping object (a ModelPatcher inside ComfyUI)

    def __repr__(self):
        return f"ManagedModel({type(self.module).__name__}, {self.role}, {self.device}, {self.dtype})"


class Progress:
    """Counts finished work units; `preview` is an optional [H,W,3] uint8 RGB image of the latest result.

    Inside ComfyUI the preview is shown on the node as it is, so it must be RGB, not the BGR of cv2."""

    def __init__(self, total, on_update=None):
        self.total = max(int(total), 1)
        self.done = 0
        self._on_update = on_update

    def update(self, n=1, preview=None):
        self.done = min(self.done + n, self.total)
        if self._on_update is not None:
            self._on_update(self.done, self.total, preview)


class Runtime:
    """The interface the engine uses; `StandaloneRuntime` and the ComfyUI runtime implement it."""

    device = torch.device("cpu")
    #: where results that leave a network are kept between stages (ComfyUI: intermediate_device())
    storage_device = torch.device("cpu")

    def compute_dtype(self, role, precision):
        """The dtype a network of `role` ("unet", "vae", "audio" or "face") runs in for `precision`.

        "face" networks (detector, landmarks, parser) always get fp32: their outputs are thresholded and argmax-ed
        into integer boxes and masks, where half precision flips results while saving almost nothing."""
        raise NotImplementedError

    def manage(self, module, role, precision="auto"):
        """Wrap a freshly loaded CPU fp32 module; casts it to the dtype it will run in."""
        dtype = self.compute_dtype(role, precision)
        if next(module.parameters()).dtype != dtype:
            # nn.Module.to, not diffusers' override, which warns about keeping modules in fp32 that MuseTalk lacks
            torch.nn.Module.to(module, dtype)
        return ManagedModel(module, role, self.device, dtype)

    def load(self, *models):
        """Make sure every model's weights sit on its device; call right before running them."""
        raise NotImplementedError

    def progress(self, total):
        return Progress(total)

    def check_interrupt(self):
        """Raise if the user asked to stop; called between batches."""


def pick_device():
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class StandaloneRuntime(Runtime):
    """Runtime for the command line and tests: one device, models moved there on first use and kept."""

    def __init__(self, device=None, show_progress=False):
        self.device = torch.device(device) if device is not None else pick_device()
        self.show_progress = show_progress

    def compute_dtype(self, role, precision="auto"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if role == "face":
            return torch.float32
        if precision == "auto":
            return torch.float16 if self.device.type in ("cuda", "mps") else torch.float32
        if precision == "fp16" and self.device.type == "cpu":
            log.warning("fp16 is not supported for convolutions on the CPU; running in fp32 instead (bf16 works)")
            return torch.float32
        return _EXPLICIT[precision]

    def load(self, *models):
        for model in models:
            model.module.to(model.device)

    def progress(self, total):
        if not self.show_progress:
            return Progress(total)

        def show(done, total, _preview):
            print(f"\r  {done}/{total}", end="\n" if done == total else "", flush=True)

        return Progress(total, show)
