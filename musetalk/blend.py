"""Paste generated faces back into their frames, as tensors on any device.

This runs once per output frame, so it avoids PIL and OpenCV yet reproduces their integer arithmetic exactly:
`resize_linear_u8` is OpenCV's fixed-point `cv2.resize(..., INTER_LINEAR)` on uint8, and `paste_faces` is PIL's
`Image.paste(image, box, mask)` with an 8-bit mask. All the maths is per channel, so frames and faces may be in RGB or
BGR order as long as both use the same one (the golden fixtures are BGR, ComfyUI images RGB).
"""
import functools

import numpy as np
import torch

INTER_RESIZE_COEF_BITS = 11  # OpenCV's fixed-point weights: 1.0 == 2048
_COEF_SCALE = float(1 << INTER_RESIZE_COEF_BITS)


@functools.lru_cache(maxsize=1024)
def _linear_taps(src_size, dst_size, clamp_weights, device):
    """Source indices and 11-bit weights of OpenCV's bilinear resize along one axis, as tensors on `device`.

    The positions follow OpenCV: scale = 1 / (dst / src) in double, (d + 0.5) * scale - 0.5 rounded to float32, the
    fraction turned into weights with round-half-even. Columns (`clamp_weights`) that fall outside the source get
    the edge pixel with weight 1; rows keep their weights and only clamp the row index, as OpenCV does.
    Computed on the CPU, which always has float64 (MPS has none), and kept per size pair and device: a video's
    face boxes take a few hundred sizes, so nearly every frame's taps are already on the device.
    """
    scale = 1.0 / (dst_size / src_size)
    pos = ((torch.arange(dst_size, dtype=torch.float64) + 0.5) * scale - 0.5).float()
    index = torch.floor(pos).long()
    frac = pos - index.float()
    if clamp_weights:
        outside = (index < 0) | (index >= src_size - 1)
        frac = frac.masked_fill(outside, 0)
        index = index.clamp(0, src_size - 1)
    weights = [torch.round(w * _COEF_SCALE).int() for w in (1 - frac, frac)]
    indices = [i.clamp(0, src_size - 1) for i in (index, index + 1)]
    return [t.to(device) for t in indices + weights]


def resize_linear_u8(faces, out_h, out_w):
    """uint8 [B,h,w,C] -> uint8 [B,out_h,out_w,C], bit-exact with `cv2.resize(img, (out_w, out_h))` (INTER_LINEAR).

    OpenCV's uint8 path: a horizontal pass into 2048-scaled ints, then a vertical pass that pre-shifts by 4, takes the
    high 16 bits of each product (its SIMD multiply) and rounds by 2 bits. Integer tensor ops only, so it runs on any
    device. (OpenCV's exact-2x shortcut to INTER_AREA gives the same numbers, which this formula reproduces.)
    """
    if faces.dtype != torch.uint8 or faces.ndim != 4:
        raise ValueError(f"resize_linear_u8 expects uint8 [B,h,w,C], got {faces.dtype} {tuple(faces.shape)}")
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize target must be at least 1x1, got {out_w}x{out_h}")
    _, h, w, _ = faces.shape
    device = faces.device
    x0, x1, a0, a1 = _linear_taps(w, out_w, clamp_weights=True, device=device)
    y0, y1, b0, b1 = _linear_taps(h, out_h, clamp_weights=False, device=device)
    src = faces.to(torch.int32)
    rows = (src[:, :, x0] * a0[:, None] + src[:, :, x1] * a1[:, None]) >> 4
    out = (((rows[:, y0] * b0[:, None, None]) >> 16) + ((rows[:, y1] * b1[:, None, None]) >> 16) + 2) >> 2
    return out.clamp(0, 255).to(torch.uint8)


def _div255(a):
    # PIL's rounding division by 255, exact for 0 <= a <= 255*255
    a = a + 128
    return ((a >> 8) + a) >> 8


def _box(box, what, index):
    try:
        x1, y1, x2, y2 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"frame {index}: {what} must be (x1, y1, x2, y2), got {box!r}") from None
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"frame {index}: {what} {[x1, y1, x2, y2]} is empty; give None for frames without a face")
    return x1, y1, x2, y2


def paste_faces(frames, faces, face_boxes, masks, crop_boxes):
    """Paste each generated face into its frame through its blend mask, as the official `get_image(_blending)`.

    frames: uint8 [B,H,W,3]; faces: uint8 [B,h,w,3] (the 256x256 generated crops); face_boxes: B boxes
    (x1, y1, x2, y2) or None (that frame is returned unchanged); masks: B uint8 [2s,2s] arrays or tensors from
    `masks.blend_mask`; crop_boxes: the B matching crop boxes. Returns new uint8 [B,H,W,3] where `frames` are.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"paste_faces expects frames uint8 [B,H,W,3], got {frames.dtype} {tuple(frames.shape)}")
    out = frames.clone()
    paste_faces_into(out, range(frames.shape[0]), faces, face_boxes, masks, crop_boxes)
    return out


def paste_faces_into(frames, rows, faces, face_boxes, masks, crop_boxes):
    """`paste_faces` in place: face k goes into frames[rows[k]], and only the crop-box regions are copied.

    The blending runs where `faces` are: only the frames' crop-box regions (and mask parts) travel there and back,
    packed into one copy each way per call, so with frames in host memory and faces on a GPU a 1080p frame moves
    ~0.5 MB each way instead of 6 MB, and a batch synchronises twice rather than twice per frame.
    Per frame: the face is resized to its box (`resize_linear_u8`) and written over the frame's own pixels inside
    the crop box; then, where the crop box overlaps the frame, out = DIV255(frame*(255-m) + composed*m) per channel.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"paste_faces expects frames uint8 [B,H,W,3], got {frames.dtype} {tuple(frames.shape)}")
    if faces.dtype != torch.uint8 or faces.ndim != 4 or faces.shape[-1] != 3:
        raise ValueError(f"paste_faces expects faces uint8 [B,h,w,3], got {faces.dtype} {tuple(faces.shape)}")
    rows = list(rows)
    count = len(rows)
    if not (len(faces) == len(face_boxes) == len(masks) == len(crop_boxes) == count):
        raise ValueError(f"paste_faces needs one face, face box, mask and crop box per frame: {count} frames, "
                         f"{len(faces)} faces, {len(face_boxes)} boxes, {len(masks)} masks, "
                         f"{len(crop_boxes)} crop boxes")
    device = faces.device
    height, width = frames.shape[1:3]
    jobs = []  # (face, frame row, face box, visible crop-box region, that region of the mask)
    for i in range(count):
        if face_boxes[i] is None:
            continue
        face_box = _box(face_boxes[i], "face box", i)
        cx1, cy1, cx2, cy2 = _box(crop_boxes[i], "crop box", i)
        mask = masks[i] if isinstance(masks[i], torch.Tensor) else torch.from_numpy(np.ascontiguousarray(masks[i]))
        if mask.dtype != torch.uint8 or mask.shape != (cy2 - cy1, cx2 - cx1):
            raise ValueError(f"frame {i}: mask {mask.dtype} {tuple(mask.shape)} does not match crop box "
                             f"{[cx1, cy1, cx2, cy2]} (uint8 [y2-y1, x2-x1] expected); "
                             "pass the mask and crop box that blend_mask returned together")
        # only the part of the crop box inside the frame is ever written (PIL clips the paste)
        vx1, vy1, vx2, vy2 = max(cx1, 0), max(cy1, 0), min(cx2, width), min(cy2, height)
        if vx1 < vx2 and vy1 < vy2:
            jobs.append((i, rows[i], face_box, (vx1, vy1, vx2, vy2), mask[vy1 - cy1:vy2 - cy1, vx1 - cx1:vx2 - cx1]))
    bodies = _move([frames[row, y1:y2, x1:x2] for _, row, _, (x1, y1, x2, y2), _ in jobs], device)
    regions = _move([mask for *_, mask in jobs], device)
    pasted = []
    for (i, _, (fx1, fy1, fx2, fy2), (vx1, vy1, vx2, vy2), _), body, m in zip(jobs, bodies, regions):
        composed = body.clone()
        face = resize_linear_u8(faces[i:i + 1], fy2 - fy1, fx2 - fx1)[0]
        px1, py1, px2, py2 = max(fx1, vx1), max(fy1, vy1), min(fx2, vx2), min(fy2, vy2)
        if px1 < px2 and py1 < py2:
            composed[py1 - vy1:py2 - vy1, px1 - vx1:px2 - vx1] = face[py1 - fy1:py2 - fy1, px1 - fx1:px2 - fx1]
        m = m.to(torch.int32)[..., None]
        pasted.append(_div255(body.to(torch.int32) * (255 - m) + composed.to(torch.int32) * m).to(torch.uint8))
    for (_, row, _, (x1, y1, x2, y2), _), region in zip(jobs, _move(pasted, frames.device)):
        frames[row, y1:y2, x1:x2] = region


def _move(tensors, device):
    """Same-dtype tensors to `device` in one packed copy: a batch of frames costs one transfer each way, not one
    per frame (each a synchronisation on a GPU)."""
    if not tensors:
        return []
    packed = torch.cat([t.reshape(-1) for t in tensors])
    if torch.device(device).type == "cuda" and packed.device.type == "cpu":
        # from pinned memory the copy runs without the host waiting for it; the paste kernels queue behind it
        packed = packed.pin_memory().to(device, non_blocking=True)
    else:
        packed = packed.to(device)
    return [part.view(t.shape) for part, t in zip(packed.split([t.numel() for t in tensors]), tensors)]
