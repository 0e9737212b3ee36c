"""Where networks run: device, dtype, load-before-use, progress and interrupt.

The engine only talks to a `Runtime`. Inside ComfyUI the nodes pass one backed by `comfy.model_management`
(`nodes/comfy_runtime.py`); the command line and the tests use `StandaloneRuntime` below. Nothing here touches a
device until a runtime is created, so importing the engine stays cheap.
"""
import logging
from contextlib import contextmanager

import torch

log = logging.getLogger("musetalk")

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_EXPLICIT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Networks whose float32 matmuls and convolutions may use TF32 on CUDA (10 mantissa bits like fp16, with fp32
# accumulation: within the fp16 tolerance these two run in anyway). The face networks' scores are thresholded
# into boxes and masks and whisper is cheap, so they always compute in full float32.
TF32_ROLES = ("unet", "vae")


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

    @property
    def allows_tf32(self):
        """Whether float32 work of this network may run in TF32 (CUDA only; see TF32_ROLES)."""
        return self.role in TF32_ROLES

    @contextmanager
    def computing(self):
        """Run the network inside this: on CUDA in float32 it sets TF32 on or off for it (and restores the global
        setting after), as cuDNN's own default (TF32 on for convolutions on Ampere and newer) would otherwise
        decide for the face networks too."""
        if self.device.type != "cuda" or self.dtype != torch.float32:
            yield
            return
        with tf32(self.allows_tf32):
            yield


@contextmanager
def tf32(allowed):
    """Allow or forbid TF32 for CUDA float32 matmuls and cuDNN convolutions inside the block; restores the previous
    settings after. Uses the per-backend `fp32_precision` switches where torch has them (2.9+; mixing them with the
    older `allow_tf32` flags is an error there), else the `allow_tf32` flags."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision"):
        switches = (cudnn.conv, matmul)
        before = [switch.fp32_precision for switch in switches]
        for switch in switches:
            switch.fp32_precision = "tf32" if allowed else "ieee"
        try:
            yield
        finally:
            for switch, value in zip(switches, before):
                switch.fp32_precision = value
    else:
        before = cudnn.allow_tf32, matmul.allow_tf32
        cudnn.allow_tf32 = matmul.allow_tf32 = allowed
        try:
            yield
        finally:
            cudnn.allow_tf32, matmul.allow_tf32 = before


class Progress:
    """Counts finished work units; `preview` is an optional [H,W,3] uint8 RGB image of the latest result, or a
    function returning one, called only where previews are shown (a face on a GPU then leaves it only for that).

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
        into integer boxes and masks, where half precision flips results while saving almost nothing. (Their code
        runs in any dtype; the choice is this policy's.) `auto` is fp32 on the CPU, where these networks run several
        times slower in fp16 or bf16 (bench/README.md), and fp16 on a GPU."""
        raise NotImplementedError

    def manage(self, module, role, precision="auto"):
        """Wrap a freshly loaded CPU fp32 module; casts it to the dtype it will run in."""
        dtype = self.compute_dtype(role, precision)
        if next(module.parameters()).dtype != dtype:
            module.to(dtype)
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


def check_device(name):
    """The torch.device called `name` ("cpu", "cuda", "cuda:1", "mps"); ValueError unless this machine has it."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not a device name\n  fix: use cpu, cuda, cuda:N (N = the GPU number) "
                         "or mps, or give none to take the first available")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            reason = ("this torch build has no CUDA support" if torch.version.cuda is None
                      else "torch sees no CUDA GPU (driver, CUDA_VISIBLE_DEVICES)")
            raise ValueError(f"device {name!r}: {reason}\n  fix: use cpu, or install a CUDA build of torch on a "
                             "machine with an NVIDIA GPU")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: there is no GPU {device.index}, this machine has {count} "
                             f"(cuda:0..cuda:{count - 1})\n  fix: give one of those")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r}: Apple's Metal (mps) is not available on this machine\n"
                         "  fix: use cpu, or run on a Mac with Apple silicon and a torch build with mps")
    return device


class StandaloneRuntime(Runtime):
    """Runtime for the command line and tests: one device, models moved there on first use and kept.

    `device`: a torch.device, a name (checked by `check_device`) or None for the first available one. `report`, when
    given, is called with a progress line ("  3/12") at every step of a stage that has several; stages done in one
    step (a batch's VAE encode) are not reported."""

    def __init__(self, device=None, report=None):
        if device is None:
            device = pick_device()
        self.device = device if isinstance(device, torch.device) else check_device(device)
        self.report = report

    def compute_dtype(self, role, precision="auto"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if role == "face":
            return torch.float32
        if precision == "auto":
            return torch.float16 if self.device.type in ("cuda", "mps") else torch.float32
        return _EXPLICIT[precision]

    def load(self, *models):
        for model in models:
            model.module.to(model.device)

    def progress(self, total):
        if self.report is None:
            return Progress(total)
        steps = []

        def show(done, total, _preview):
            steps.append(done)
            if len(steps) > 1 or done < total:
                self.report(f"  {done}/{total}")

        return Progress(total, show)
