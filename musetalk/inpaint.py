"""The latent path: encode the source face crops once, run one UNet step per output frame, decode the new faces.

Everything follows the official `musetalk/models/vae.py` and the batch loop of `scripts/inference.py` operation by
operation, so fp32 results match the official numbers and fp16 results match its `--use_float16` mode. The one
deliberate change: the source latents are the posterior MEAN, where the official code draws a random sample
(training used the mode, which is the mean of a Gaussian; README, "What differs from the official implementation").

Latents travel between stages as float32 on `runtime.storage_device`; each network gets its inputs cast to its own
dtype and hands back float32. fp16 -> float32 -> fp16 is lossless, so the round trip changes no number.
"""
import functools

import numpy as np
import torch

from .batching import fitting_batch_size, in_batches
from .networks.unet import LATENT_SCALE, audio_positional_encoding

CROP_SIZE = 256
LATENT_SIZE = CROP_SIZE // 8
CYCLE_MODES = ("pingpong", "loop", "once")


def crops_tensor(crops):
    """uint8 [N,256,256,3] numpy or torch -> torch uint8, with a clear error for anything else."""
    if isinstance(crops, np.ndarray):
        crops = torch.from_numpy(np.ascontiguousarray(crops))
    if not isinstance(crops, torch.Tensor) or crops.dtype != torch.uint8 or crops.ndim != 4 \
            or tuple(crops.shape[1:]) != (CROP_SIZE, CROP_SIZE, 3):
        got = f"{type(crops).__name__} {getattr(crops, 'dtype', '')} {tuple(getattr(crops, 'shape', ()))}"
        raise ValueError(f"face crops must be uint8 RGB [N,{CROP_SIZE},{CROP_SIZE},3], got {got}; "
                         "crop and resize the faces to 256x256 first")
    return crops


def vae_inputs(crops):
    """The two VAE inputs of every crop, as the official `preprocess_img`: float32 [N,3,256,256] in [-1,1].

    `crops`: uint8 RGB [N,256,256,3] (numpy or torch). Returns (masked, reference): masked has the lower half
    (rows 128..255) blanked to exactly -1, so the UNet must invent the mouth; reference is the whole crop.
    """
    crops = crops_tensor(crops)
    # float64 /255 then float32, as numpy does in the official code, so the values are bit-identical. Contiguous
    # NCHW: a channels-last view would make the convolutions pick other kernels (and other rounding)
    channels_first = crops.permute(0, 3, 1, 2).contiguous()
    reference = (channels_first.to(torch.float64) / 255.0).to(torch.float32)
    masked = reference.clone()
    masked[:, :, CROP_SIZE // 2:, :] = 0
    # torchvision Normalize(0.5, 0.5) is subtract-then-divide; kept literally (0 becomes exactly -1)
    return (masked - 0.5) / 0.5, (reference - 0.5) / 0.5


@torch.no_grad()
def encode_sources(models, crops, batch_size=8, progress=None):
    """Latents of the source face crops: float32 [N,8,32,32] on the runtime's storage device.

    `crops`: uint8 RGB [N,256,256,3]. Channels 0-3 encode the masked crop, 4-7 the full crop, each the posterior
    mean times 0.18215 (computed in the VAE dtype, as the official code scales the VAE output). progress: what
    counts the encoded crops (default: a new `runtime.progress`).
    """
    crops = crops_tensor(crops)
    runtime, vae = models.runtime, models.vae()
    runtime.load(vae)
    progress = progress or runtime.progress(len(crops))

    def encode(start, end):
        runtime.check_interrupt()
        masked, reference = vae_inputs(crops[start:end])
        both = to_device(torch.cat([masked, reference]), vae.device, vae.dtype)
        with vae.computing():
            encoded = LATENT_SCALE * vae.module.encode(both)
        count = end - start
        return torch.cat([encoded[:count], encoded[count:]], dim=1).to(runtime.storage_device, torch.float32)

    latents = []
    for start, end, batch in in_batches(encode, len(crops), fitting_batch_size(vae, batch_size, "encode"),
                                        "VAE encoding"):
        latents.append(batch)
        progress.update(end - start)
    return torch.cat(latents)


def cycle_indices(n_sources, n_frames, mode="pingpong"):
    """The source frame for every output frame: int64 [T].

    "pingpong" is the official order (frames + frames[::-1], repeated: ..., N-2, N-1, N-1, N-2, ..., 0, 0, 1, ...),
    "loop" restarts at 0 after N-1, "once" plays every source at most once, so T = min(n_sources, n_frames).
    """
    if mode not in CYCLE_MODES:
        raise ValueError(f"cycle mode must be one of {CYCLE_MODES}, got {mode!r}")
    if n_sources < 1:
        raise ValueError("there is no source frame to animate (n_sources is 0); give at least one face crop")
    if mode == "once":
        return torch.arange(min(n_sources, n_frames))
    frames = torch.arange(n_frames)
    if mode == "loop":
        return frames % n_sources
    position = frames % (2 * n_sources)
    return torch.where(position < n_sources, position, 2 * n_sources - 1 - position)


def audio_context(features, device, dtype):
    """The UNet's cross-attention input: audio tokens [B,50,384] plus the sinusoidal position code.

    The sum is taken in the UNet dtype, as the official code adds its fp16 `pe` buffer to fp16 features.
    """
    return to_device(features, device, dtype) + _position_code(torch.device(device), dtype)


@functools.lru_cache(maxsize=None)
def _position_code(device, dtype):
    # made and copied to the device once, not for every batch (read-only: every use adds it into a new tensor)
    return audio_positional_encoding().to(device, dtype)


def to_device(tensor, device, dtype):
    """`tensor.to(device, dtype)`; a CPU tensor bound for a CUDA device goes through pinned memory without waiting
    for the copy (the kernels that use it queue behind the copy on the same stream)."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.to(dtype).pin_memory().to(device, non_blocking=True)
    return tensor.to(device, dtype)


@torch.no_grad()
def inpaint_latents(models, source_latents, features, source_index, batch_size=8, progress=None):
    """One UNet step per output frame: float32 [T,4,32,32] on the runtime's storage device.

    `source_latents`: [N,8,32,32] from `encode_sources`; `features`: audio tokens [T,50,384] (a tensor, or
    `audio.TokenWindows`, which builds each batch's tokens when it is sliced); `source_index`: [T]
    ints (see `cycle_indices`) picking the source latent of each output frame. No preview is shown here: a face
    picture would cost a VAE decode per batch; the blending stage shows one for free. progress: what counts the
    steps (default: a new `runtime.progress`).
    """
    if len(features) != len(source_index):
        raise ValueError(f"{len(features)} audio frames but {len(source_index)} source indices; give one index per "
                         "audio frame (cycle_indices(n_sources, len(features), mode))")
    source_index = torch.as_tensor(source_index, dtype=torch.long, device=source_latents.device)
    if len(source_index) and (source_index.min() < 0 or source_index.max() >= len(source_latents)):
        raise ValueError(f"source indices must lie in 0..{len(source_latents) - 1}, got "
                         f"{int(source_index.min())}..{int(source_index.max())}")
    runtime, unet = models.runtime, models.unet()
    runtime.load(unet)
    # the official tensor([0]); the UNet broadcasts it over the batch, so one tensor serves every batch size
    timestep = torch.zeros(1, dtype=torch.long, device=unet.device)
    progress = progress or runtime.progress(len(features))

    def step(start, end):
        runtime.check_interrupt()
        sample = to_device(source_latents[source_index[start:end]], unet.device, unet.dtype)
        context = audio_context(torch.as_tensor(features[start:end]), unet.device, unet.dtype)
        with unet.computing():
            output = unet.module(sample, timestep, context)
        return output.to(runtime.storage_device, torch.float32)

    predicted = []
    for start, end, output in in_batches(step, len(features), fitting_batch_size(unet, batch_size, "unet"), "UNet"):
        predicted.append(output)
        progress.update(end - start)
    if not predicted:
        return torch.zeros(0, 4, LATENT_SIZE, LATENT_SIZE, device=runtime.storage_device)
    return torch.cat(predicted)


def unscale(latents, dtype):
    """UNet output (latents times 0.18215) -> what the VAE decodes, float32 [B,4,32,32].

    The official decode multiplies by 1/0.18215 (not a division, which rounds differently) in the VAE's dtype;
    `dtype` is that dtype, so the product is rounded exactly once, as there, and float32 keeps it losslessly.
    """
    return ((1 / LATENT_SCALE) * latents.to(dtype)).to(torch.float32)


@torch.no_grad()
def decode_batch(vae, latents):
    """Decode latents [B,4,32,32] as the VAE gives them (unscaled, see `unscale`) with a loaded VAE (ManagedModel):
    uint8 RGB [B,256,256,3] on its device."""
    with vae.computing():
        image = vae.module.decode(to_device(latents, vae.device, vae.dtype))
    image = (image / 2 + 0.5).clamp(0, 1).float()
    return (image * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
