"""The last step of every path: generated faces pasted into their source frames, for one batch of output frames.

BlendAndDecode decodes the faces itself; MuseTalkPasteFaces takes them from elsewhere (core VAE Decode, then a face
restorer at 2x or 4x); both paste through `paste_mouths`, so with the same 256x256 faces they give the same frames.
A face of any size is resized to its frame's face box like the network's 256x256 output (OpenCV's bilinear resize).
"""
from .blend import paste_faces
from .silence import fade_mask


def mouth_frames(faces, sources, levels=None):
    """Positions in a batch of output frames (source frames `sources`) that get a generated mouth: a face, and a
    mask strength above 0 (`silence.mask_levels`; None = every frame at full strength)."""
    return [i for i, s in enumerate(sources)
            if faces.paste_boxes[s] is not None and (levels is None or levels[i] > 0)]


def paste_mouths(faces, frames, sources, active, generated, levels=None):
    """Paste `generated` (uint8 [len(active),h,w,3], any device) into frames[active]; returns the new batch.

    faces: FaceTrack; frames: uint8 [B,H,W,3] CPU, output frames showing source frames `sources`; active: from
    `mouth_frames`; levels: per batch position mask strengths 0..255 (None = 255: the plain official paste)."""
    if not active:
        return frames
    if len(generated) != len(active):
        raise ValueError(f"{len(generated)} generated faces for {len(active)} frames with a mouth to paste")
    blends = [faces.blend[sources[i]] for i in active]  # each read unpacks a compressed mask
    masks = [mask if levels is None else fade_mask(mask, levels[i]) for i, (mask, _) in zip(active, blends)]
    pasted = paste_faces(frames[active], generated, [faces.paste_boxes[sources[i]] for i in active], masks,
                         [crop_box for _, crop_box in blends])
    frames[active] = pasted
    return frames

