"""Conversions between ComfyUI's IMAGE (float 0..1 [B,H,W,C]) and the engine's uint8 frames."""
import torch


def flat_frames(images):
    """IMAGE [B,H,W,C] as it is; a 5-D [N,T,H,W,C] video batch (some video generators return one) as N*T frames."""
    return images.reshape(-1, *images.shape[2:]) if images.ndim == 5 else images


def to_uint8(images, chunk=16):
    """IMAGE -> uint8 [B,H,W,C] (rounded), a few frames at a time so a long clip is never copied in float.

    A 5-D [N,T,H,W,C] video batch is flattened into N*T frames (`flat_frames`)."""
    images = flat_frames(images)
    frames = torch.empty(images.shape, dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        frames[start:start + chunk] = (images[start:start + chunk].clamp(0, 1) * 255).round()
    return frames


def to_image(frames, out=None):
    """uint8 frames [B,H,W,C] -> IMAGE float32 on the CPU; written into `out` (a float32 CPU tensor of that shape,
    e.g. a slice of a larger IMAGE) when given, without a float copy besides it."""
    if out is None:
        return torch.as_tensor(frames).cpu().float().div_(255.0)
    return out.copy_(torch.as_tensor(frames)).div_(255.0)
