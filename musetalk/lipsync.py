"""The two lip-sync stages that the nodes and the command line share.

    generate_latents: face crops + audio tokens -> one mouth latent per output frame   (LatentLipInpaint)
    render_frames:    latents + source frames   -> output frames                      (BlendAndDecode)

Output frame t shows source frame `source_index[t]` at audio time t/fps. A frame whose source has no face skips the
networks and comes back unchanged; the official code instead drops it and shifts every later frame (README, "What
differs from the official implementation").
"""
import hashlib
import os
from dataclasses import dataclass

import torch

from .batching import fitting_batch_size, in_batches
from .compose import pasted_batches
from .inpaint import LATENT_SIZE, crops_tensor, decode_batch, encode_sources, inpaint_latents, unscale
from .runtime import Progress


@dataclass
class SourceLatents:
    """VAE latents of the source frames that have a face: rows [F,8,32,32], and each source frame's row or None."""

    latents: torch.Tensor
    rows: list

    @classmethod
    def encode(cls, models, faces, crops, batch_size=8):
        """The latents of `crops` (uint8 RGB [N,256,256,3], one per source frame of `faces`, a FaceTrack).

        The result is kept in `faces.memo` under `encoder_key(models)` together with a digest of the crops, and a
        later call with the same faces, crops and encoder returns it without a VAE pass: in ComfyUI a new audio
        re-runs LatentLipInpaint with the cached FaceDetectAndParse outputs, so only the UNet, decode and blend run
        again. This is safe because nothing changes a FaceTrack after it is built (new faces arrive as a new track
        with an empty memo) and the latents are a pure function of the track, the crops and the encoder, which the
        key and the digest hold; different crops or another VAE file or dtype simply miss.
        """
        if len(crops) != len(faces):
            raise ValueError(f"{len(crops)} crops for {len(faces)} frames of faces: give the crops made with "
                             "these faces")
        crops = crops_tensor(crops)
        key, digest = _memo_key(models), _digest(crops)
        kept = faces.memo.get(key)
        if kept is not None and kept[0] == digest:
            return kept[1]
        with_face = [i for i, present in enumerate(faces.has_face) if present]
        if with_face:
            latents = encode_sources(models, crops[with_face], batch_size)
        else:
            latents = torch.zeros(0, 8, LATENT_SIZE, LATENT_SIZE, device=models.runtime.storage_device)
        sources = cls.of_faces(faces, latents)
        faces.memo[key] = (digest, sources)
        return sources

    @classmethod
    def of_faces(cls, faces, latents):
        """Latents [F,8,32,32] of the F frames of `faces` that have a face, in frame order."""
        with_face = [i for i, present in enumerate(faces.has_face) if present]
        if tuple(latents.shape) != (len(with_face), 8, LATENT_SIZE, LATENT_SIZE):
            raise ValueError(f"latents of shape {tuple(latents.shape)} for {len(with_face)} face frames; "
                             f"[{len(with_face)},8,{LATENT_SIZE},{LATENT_SIZE}] expected")
        rows = [None] * len(faces)
        for row, frame in enumerate(with_face):
            rows[frame] = row
        return cls(latents, rows)

    def remember(self, models, faces, crops):
        """Let these latents answer `encode(models, faces, crops)` from now on (e.g. latents read from a file)."""
        faces.memo[_memo_key(models)] = (_digest(crops_tensor(crops)), self)


class LatentStream:
    """Source latents of face crops that arrive a few at a time (`detect_and_parse(..., crops_to=stream.add)`).

    Crops wait until `batch_size` of them are there, so the VAE sees exactly the batches of one `encode_sources` call
    over all of them and gives the same numbers; only the latents (32 KB per frame) are kept, not the crops.
    """

    def __init__(self, models, batch_size=8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._models, self._batch_size = models, batch_size
        self._waiting = []  # fewer than batch_size crops [256,256,3]
        self._latents = []

    def add(self, _indices, crops):
        """Take uint8 RGB crops [n,256,256,3] of face frames, in frame order (`_indices`: their frame numbers)."""
        self._waiting.extend(crops_tensor(crops))
        while len(self._waiting) >= self._batch_size:
            self._encode(self._waiting[:self._batch_size])
            del self._waiting[:self._batch_size]

    def sources(self, faces):
        """The SourceLatents of `faces`, the FaceTrack whose face crops were all added."""
        if self._waiting:
            self._encode(self._waiting)
            self._waiting = []
        if not self._latents:
            return SourceLatents.of_faces(faces, torch.zeros(0, 8, LATENT_SIZE, LATENT_SIZE,
                                                             device=self._models.runtime.storage_device))
        return SourceLatents.of_faces(faces, torch.cat(self._latents))

    def _encode(self, crops):
        # counted on the face stage's bar: a bar per handful of crops would replace it on the node every few frames
        self._latents.append(encode_sources(self._models, torch.stack(crops), self._batch_size, Progress(len(crops))))


def encoder_key(models):
    """What decides the source latents besides the faces and crops: (version, VAE dtype name, VAE name)."""
    return models.version, encoder_dtype(models), vae_name(models)


def encoder_dtype(models):
    """The dtype the VAE of `models` encodes in, as a name: 'float32', 'float16' or 'bfloat16'."""
    return str(models.runtime.compute_dtype("vae", models.precision)).replace("torch.", "")


def vae_name(models):
    """The VAE's folder or file name, e.g. 'sd-vae' or 'vae-ft-mse-840000-ema-pruned.safetensors' (not read)."""
    return os.path.basename(os.path.normpath(models.files.require(models.version, "vae")[0]))


def _memo_key(models):
    return ("source_latents",) + encoder_key(models)


def _digest(crops):
    # hashing the crops costs a small fraction of one VAE pass over them (bench/README.md)
    return hashlib.sha256(memoryview(crops.cpu().contiguous().numpy()).cast("B")).hexdigest()


def generate_latents(models, sources, features, source_index, batch_size=8, weights=None, first_frame=0,
                     progress=None):
    """Mouth latents float32 [T,4,32,32] for output frames first_frame..first_frame+T-1 of `features`
    (WhisperFeatures); zeros where the source frame has no face and where the mouth weight (`silence.mouth_weights`
    of these frames, [T]; None = all 1) is 0: those frames need no UNet step. Each batch's audio tokens are built
    when the UNet needs them. progress: what counts the UNet steps (default: a new `runtime.progress`).

    They are what the VAE decodes (`render_frames`, any SD-1.x VAE), i.e. the UNet's output times 1/0.18215,
    multiplied as the official decode does it.
    """
    samples = torch.zeros(len(source_index), 4, LATENT_SIZE, LATENT_SIZE, device=models.runtime.storage_device)
    active = unet_frames(sources, source_index, weights)
    if active:
        rows = [sources.rows[s] for s in source_index[active].tolist()]
        tokens = features.windows([first_frame + t for t in active])
        predicted = inpaint_latents(models, sources.latents, tokens, rows, batch_size, progress)
        samples[active] = unscale(predicted, models.runtime.compute_dtype("vae", models.precision))
    return samples


def unet_frames(sources, source_index, weights=None):
    """Positions t of the output frames (source frames `source_index`) that get a UNet step: the source frame has a
    face and the mouth weight (None = all 1) is above 0."""
    shown = [True] * len(source_index) if weights is None else (torch.as_tensor(weights) > 0).tolist()
    return [t for t, s in enumerate(source_index.tolist()) if sources.rows[s] is not None and shown[t]]


def render_frames(models, faces, samples, source_index, read_frames, batch_size=8, weights=None, progress=None):
    """Yield uint8 RGB frame batches [B,H,W,3] (CPU) of the lip-synced video, in output order.

    read_frames(indices) returns the uint8 RGB source frames with those indices (numpy or torch), as a new array:
    the pasted frames are written into it. Decoding and blending run on the runtime's device, but the frames stay
    in host memory: only the generated faces and the crop-box regions they are blended into travel (`paste_faces`).
    weights: [T] mouth weights (`silence.mouth_weights`; None = all 1): frames at 0 keep the source frame without a
    decode, frames between 0 and 1 paste the generated face with the mask scaled down (`compose.paste_mouths`).
    progress: what counts the frames (default: a new `runtime.progress`; a long job's chunks share one).
    """
    vae = models.vae()
    models.runtime.load(vae)
    decode_size = fitting_batch_size(vae, batch_size, "decode")

    def decoded(start, active):
        # a decode that does not fit is run again in halves (the frames stay as read); the size that fitted is kept
        nonlocal decode_size
        latents = samples[start:start + batch_size][active]
        parts = list(in_batches(lambda first, end: decode_batch(vae, latents[first:end]), len(latents), decode_size,
                                "VAE decoding"))
        largest = max(end - first for first, end, _ in parts)
        if largest < min(decode_size, len(latents)):
            decode_size = largest
        return torch.cat([faces for _, _, faces in parts])

    for frames, _ in pasted_batches(models.runtime, faces, source_index, read_frames, batch_size, decoded, weights,
                                    progress):
        yield frames
