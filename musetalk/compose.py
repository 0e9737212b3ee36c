"""The last step of every path: generated faces pasted into their source frames, a batch of output frames at a time.

BlendAndDecode decodes the faces itself; MuseTalkPasteFaces takes them from elsewhere (core VAE Decode, then a face
restorer at 2x or 4x); both paste through `pasted_batches`, so with the same 256x256 faces they give the same frames.
A face of any size is resized to its frame's face box like the network's 256x256 output (OpenCV's bilinear resize).
"""
import torch

from .blend import paste_faces_into
from .silence import fade_mask, mask_levels


def pasted_batches(runtime, faces, source_index, read_frames, batch_size, generated_for, weights=None,
                   progress=None):
    """Yield (frames, faces pasted or None) per batch of output frames, in output order.

    frames: uint8 RGB [B,H,W,3] (CPU), the source frames `source_index` names for output frames start..start+B-1,
    read by read_frames(indices) (numpy or torch, a new array: the faces are pasted into it). generated_for(start,
    active) gives the uint8 faces [len(active),h,w,3] (any size, any device) of the batch positions `active`
    (`mouth_frames`): only frames with a face and a mouth weight above 0 (`silence.mouth_weights`, [T]; None = all 1)
    ask for one. runtime: ticks a progress bar per batch (previewing the first pasted face; `progress`, else a new
    one) and checks for an interrupt.
    """
    levels = None if weights is None else mask_levels(weights)
    progress = progress or runtime.progress(len(source_index))
    for start in range(0, len(source_index), batch_size):
        runtime.check_interrupt()
        sources = source_index[start:start + batch_size].tolist()
        batch_levels = None if levels is None else levels[start:start + batch_size]
        frames = torch.as_tensor(read_frames(sources)).cpu()
        active = mouth_frames(faces, sources, batch_levels)
        generated = generated_for(start, active) if active else None
        paste_mouths(faces, frames, sources, active, generated, batch_levels)
        preview = None if generated is None else lambda face=generated[0]: face.cpu().numpy()
        progress.update(len(sources), preview=preview)
        yield frames, generated


def mouth_frames(faces, sources, levels=None):
    """Positions in a batch of output frames (source frames `sources`) that get a generated mouth: a face, and a
    mask strength above 0 (`silence.mask_levels`; None = every frame at full strength)."""
    return [i for i, s in enumerate(sources)
            if faces.paste_boxes[s] is not None and (levels is None or levels[i] > 0)]


def paste_mouths(faces, frames, sources, active, generated, levels=None):
    """Paste `generated` (uint8 [len(active),h,w,3], any device) into frames[active], in place; returns `frames`.

    faces: FaceTrack; frames: uint8 [B,H,W,3] CPU, output frames showing source frames `sources`; active: from
    `mouth_frames`; levels: per batch position mask strengths 0..255 (None = 255: the plain official paste)."""
    if not active:
        return frames
    if len(generated) != len(active):
        raise ValueError(f"{len(generated)} generated faces for {len(active)} frames with a mouth to paste")
    blends = [faces.blend[sources[i]] for i in active]  # each read unpacks a compressed mask
    masks = [mask if levels is None else fade_mask(mask, levels[i]) for i, (mask, _) in zip(active, blends)]
    paste_faces_into(frames, active, generated, [faces.paste_boxes[sources[i]] for i in active], masks,
                     [crop_box for _, crop_box in blends])
    return frames
