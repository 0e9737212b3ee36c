"""Checks of the ComfyUI values a node receives, made where they enter the pack, and ComfyUI advice for engine errors.

The engine takes plain arrays and says what is wrong in neutral words; only here is known what ComfyUI hands over
(IMAGE float [B,H,W,C] in 0..1, AUDIO {"waveform": [B,C,T], "sample_rate": int}) and
which node and socket a value came through, so a wrong value is named by its node input:

    images = inputs.image(images, "FaceDetectAndParse", "images")
    with inputs.advice("wire fps from Get Video Components' fps output"):
        ...engine call...
"""
from contextlib import contextmanager

import torch

from ..musetalk.weights import WeightsError
from .images import flat_frames

IMAGE_CHANNELS = (1, 3, 4)
# one uint8 step of slack: values a resize or a sharpen pushed just past the range are clamped, not refused
RANGE_SLACK = 1.0 / 255


def image(value, node, name):
    """Check an IMAGE input: a torch float tensor [B,H,W,C] (or a [N,T,H,W,C] video batch) with C in 1, 3, 4 and
    values in 0..1. Returns it unchanged; raises ValueError naming `node` and its input `name`."""
    where = f"{node} input '{name}'"
    value = _tensor(value, where, "IMAGE", "float [B,H,W,C] in 0..1")
    shape = tuple(value.shape)
    if value.ndim == 3 and shape[-1] in IMAGE_CHANNELS:
        raise ValueError(f"{where}: an image [H,W,C] = {list(shape)} without the batch axis; an IMAGE is "
                         f"[B,H,W,C]: add the axis with image.unsqueeze(0)")
    if value.ndim == 4 and shape[-1] not in IMAGE_CHANNELS and shape[1] in IMAGE_CHANNELS:
        raise ValueError(f"{where}: shape {list(shape)} is channels-first [B,C,H,W]; an IMAGE is [B,H,W,C]: "
                         f"reorder it with image.permute(0, 2, 3, 1)")
    if value.ndim not in (4, 5) or shape[-1] not in IMAGE_CHANNELS:
        raise ValueError(f"{where}: shape {list(shape)} is not an IMAGE [B,H,W,C] with C = 1, 3 or 4 channels")
    if 0 in shape:
        raise ValueError(f"{where}: the IMAGE is empty (shape {list(shape)}); give at least one frame")
    _require_float_range(value, where, "IMAGE", "image / 255")
    return value


def source_frames(images, faces, node):
    """Check the `images` input of a node that also takes the MUSETALK_FACES found in them: an IMAGE with one frame
    of the faces' size per face frame. Returns it as [B,H,W,C] (a [N,T,H,W,C] video batch flattened)."""
    images = flat_frames(image(images, node, "images"))
    if len(images) != len(faces) or tuple(images.shape[1:3]) != tuple(faces.frame_size):
        raise ValueError(f"images are {len(images)} frames of {tuple(images.shape[1:3])} but faces were found in "
                         f"{len(faces)} frames of {tuple(faces.frame_size)}: connect the same images that went "
                         "into FaceDetectAndParse")
    return images


def audio(value, node, name):
    """Check an AUDIO input: a dict {"waveform": tensor [B,C,T], "sample_rate": number}; returns (waveform, rate).

    What the samples hold (length, channels, rate range, NaN) is checked by the engine's `check_waveform`."""
    where = f"{node} input '{name}'"
    expected = 'an AUDIO dict {"waveform": tensor [B,C,T], "sample_rate": int}'
    if not isinstance(value, dict):
        raise ValueError(f"{where}: a {type(value).__name__}, not {expected}")
    missing = [key for key in ("waveform", "sample_rate") if key not in value]
    if missing:
        raise ValueError(f"{where}: the AUDIO dict has no {' and no '.join(repr(k) for k in missing)} "
                         f"(keys: {sorted(value)}); {expected} is needed")
    waveform, rate = value["waveform"], value["sample_rate"]
    waveform = _tensor(waveform, f"{where} waveform", "AUDIO waveform", "[B,C,T]")
    if waveform.ndim != 3:
        fix = " (one clip [C,T]: add the batch axis with waveform.unsqueeze(0))" if waveform.ndim == 2 else ""
        raise ValueError(f"{where}: the waveform has shape {list(waveform.shape)}, not [B,C,T]{fix}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise ValueError(f"{where}: sample_rate is {rate!r}, not a number of Hz")
    return waveform, rate


@contextmanager
def advice(hint, errors=(ValueError, WeightsError)):
    """Add ComfyUI advice (which node or socket to connect) to the engine errors raised inside the block."""
    try:
        yield
    except errors as error:
        if isinstance(error, WeightsError):
            raised = type(error)(error.path, error.problem, error.expected, f"{error.fix}\n  in ComfyUI: {hint}")
        else:
            raised = type(error)(f"{error}\n  in ComfyUI: {hint}")
        raise raised from error


def _tensor(value, where, kind, layout):
    if isinstance(value, torch.Tensor):
        return value
    if type(value).__module__ == "numpy":
        raise ValueError(f"{where}: a numpy array; ComfyUI passes an {kind} as a torch tensor {layout}: convert it "
                         "with torch.from_numpy(array)")
    raise ValueError(f"{where}: a {type(value).__name__}, not an {kind} (a torch tensor {layout})")


def _require_float_range(value, where, kind, fix):
    if not value.is_floating_point():
        raise ValueError(f"{where}: {value.dtype} values; an {kind} holds floats in 0..1 (from 8-bit values: "
                         f"{fix})")
    low, high = torch.aminmax(value.detach())
    low, high = float(low), float(high)
    if not (low >= -RANGE_SLACK and high <= 1 + RANGE_SLACK):  # also catches NaN
        hint = f" (0..255 values? use {fix})" if high > 1 + RANGE_SLACK else ""
        raise ValueError(f"{where}: values from {low:g} to {high:g}; an {kind} holds values in 0..1{hint}")
