"""Blending masks: where the generated face replaces the original frame.

A square crop around the face box is parsed by BiSeNet into CelebAMask-HQ labels; a parsing mode turns the labels into
a 0/255 region at 512x512; that region is resized back to the crop, limited to the face box, cut above the box centre
line and blurred. The result is the soft paste mask that `blend.paste_faces` uses.

Everything here runs once per source frame (the output frames reuse the masks of the frames they were made from), so
the image steps stay with PIL and OpenCV, whose exact rounding the official code has; only BiSeNet runs batched on
the parser's device.
"""
import numpy as np
import torch
from PIL import Image

from .opencv import load_cv2

#: "jaw", "raw", "neck": the v1.5 code (HEAD). "v1.0": the original v1.0 release (labels 1..13, expand 1.2).
PARSING_MODES = ("jaw", "raw", "neck", "v1.0")
#: crop box side = expand * the longer side of the face box
CROP_EXPAND = {"jaw": 1.5, "raw": 1.5, "neck": 1.5, "v1.0": 1.2}
#: Gaussian blur kernel = this ratio of the crop width, for the offline path (`get_image`) of each version
OFFLINE_BLUR_RATIO = {"jaw": 0.05, "raw": 0.05, "neck": 0.05, "v1.0": 0.1}
#: the realtime path (`get_image_prepare_material`) blurs with 0.1 in both versions: softer edges
PREPARED_BLUR_RATIO = 0.1
#: rows of the crop above this fraction of its height never take generated pixels: only the lower face talks
UPPER_BOUNDARY_RATIO = 0.5
DEFAULT_CHEEK_WIDTH = 90  # what the v1.5 scripts and app pass (the parser's own default, 80, is never used by them)

PARSE_SIZE = 512
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# CelebAMask-HQ labels
SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP, NECK = 1, 10, 11, 12, 13, 14
_KEPT_LABELS = {
    "raw": (SKIN, MOUTH, UPPER_LIP, LOWER_LIP),
    "neck": (SKIN, MOUTH, UPPER_LIP, LOWER_LIP, NECK),
    "v1.0": tuple(range(1, 14)),  # skin, brows, eyes, glasses, ears, earring, nose, mouth, lips
}


def check_mode(mode):
    if mode not in PARSING_MODES:
        raise ValueError(f"parsing mode must be one of {PARSING_MODES}, got {mode!r}")


def crop_box(face_box, expand):
    """The square [x1, y1, x2, y2] around `face_box` (x1, y1, x2, y2) that the parser sees; it may leave the frame.

    Side 2s with s = int(max(w, h) // 2 * expand): the integer halving comes before the multiply, as in the official
    `get_crop_box`, which decides the crop size to the pixel.
    """
    x1, y1, x2, y2 = (int(v) for v in face_box)
    xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * expand)
    return [xc - s, yc - s, xc + s, yc + s]


def crop_padded(frame, box):
    """frame [H,W,C] uint8 -> frame[y1:y2, x1:x2] with black where `box` leaves the frame (as PIL `Image.crop`)."""
    x1, y1, x2, y2 = box
    h, w = frame.shape[:2]
    out = np.zeros((y2 - y1, x2 - x1) + frame.shape[2:], dtype=frame.dtype)
    vx1, vy1, vx2, vy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if vx1 < vx2 and vy1 < vy2:
        out[vy1 - y1:vy2 - y1, vx1 - x1:vx2 - x1] = frame[vy1:vy2, vx1:vx2]
    return out


def parse_faces(parser, runtime, crops_rgb):
    """BiSeNet labels of face crops.

    parser: the face parser ManagedModel (`MuseTalkModels.face_parser()`); crops_rgb: a sequence of uint8 [h,w,3] RGB
    crops of any sizes. Each is resized to 512x512 with PIL bilinear, normalised with the ImageNet statistics and
    parsed on `parser.device`. Returns uint8 [N,512,512] label maps (0..18).
    """
    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((PARSE_SIZE, PARSE_SIZE), Image.BILINEAR))
               for c in crops_rgb]
    if not resized:
        return np.zeros((0, PARSE_SIZE, PARSE_SIZE), np.uint8)
    runtime.load(parser)
    device = parser.device
    # the exact float steps of torchvision's ToTensor + Normalize, in its contiguous NCHW layout: a channels-last
    # input picks other convolution kernels whose rounding flips argmax near-ties against the official parser
    mean = torch.tensor(_IMAGENET_MEAN, dtype=torch.float32, device=device)[:, None, None]
    std = torch.tensor(_IMAGENET_STD, dtype=torch.float32, device=device)[:, None, None]
    images = torch.from_numpy(np.stack(resized)).to(device).permute(0, 3, 1, 2).contiguous()
    images = (images.to(torch.float32).div(255) - mean) / std
    with torch.inference_mode(), parser.computing():
        logits = parser.module(images.to(parser.dtype))
    return logits.argmax(1).to(torch.uint8).cpu().numpy()


def _jaw_dilation_kernel():
    """33x33, anchor at the centre: a cone of widths 1..21 in rows 10..20 over a 21-wide tail in rows 21..32.

    With OpenCV's dilation (max over p + offset) the skin grows up to 16 px upward at full width and up to 6 px
    downward in a narrowing triangle, which fills the jaw line below the chin skin the parser found.
    """
    kernel = np.zeros((33, 33), np.uint8)
    centre = 16
    for row in range(10, 33):
        half = min(row - 10, 10)
        kernel[row, centre - half:centre + half + 1] = 1
    return kernel


def _cheek_bands(left_cheek_width, right_cheek_width):
    """255 on columns 0..256-left and 256+right..511 (inclusive), the bands where the jaw region is eroded."""
    for name, width in (("left_cheek_width", left_cheek_width), ("right_cheek_width", right_cheek_width)):
        if not 0 <= width <= PARSE_SIZE // 2:
            raise ValueError(f"{name} must lie in 0..{PARSE_SIZE // 2} (pixels of the 512 parsing map), got {width}")
    centre = PARSE_SIZE // 2
    bands = np.zeros((PARSE_SIZE, PARSE_SIZE), np.uint8)
    bands[:, :centre - left_cheek_width + 1] = 255
    bands[:, centre + right_cheek_width:] = 255
    return bands


def _jaw_region(labels512, left_cheek_width, right_cheek_width):
    cv2 = load_cv2()

    skin = np.where(labels512 == SKIN, 255, 0).astype(np.uint8)
    dilated = cv2.dilate(skin, _jaw_dilation_kernel(), iterations=1)
    eroded = cv2.erode(dilated, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3)), iterations=2)
    bands = _cheek_bands(left_cheek_width, right_cheek_width)
    region = (eroded & bands) | (dilated & ~bands)
    return (region == 255) & (labels512 != NOSE)


def mask_from_labels(labels512, mode, left_cheek_width=DEFAULT_CHEEK_WIDTH, right_cheek_width=DEFAULT_CHEEK_WIDTH):
    """uint8 [512,512] label map -> uint8 [512,512] region of `mode`, 0 or 255.

    raw: skin, mouth, lips. neck: also the neck. v1.0: labels 1..13. jaw (v1.5 default): the skin dilated downward
    (eroded again inside the cheek bands, whose widths count from the centre column), minus the nose, plus mouth and
    lips. The cheek widths only matter for jaw.
    """
    check_mode(mode)
    labels512 = np.asarray(labels512)
    if labels512.shape != (PARSE_SIZE, PARSE_SIZE):
        raise ValueError(f"labels512 must be a [{PARSE_SIZE},{PARSE_SIZE}] label map, got shape {labels512.shape}")
    if mode == "jaw":
        keep = _jaw_region(labels512, left_cheek_width, right_cheek_width)
        keep |= np.isin(labels512, (MOUTH, UPPER_LIP, LOWER_LIP))
    else:
        keep = np.isin(labels512, _KEPT_LABELS[mode])
    return np.where(keep, 255, 0).astype(np.uint8)


def blur_kernel_size(crop_width, ratio):
    # the official expression to the letter: float floor-division, so 0.05 * 132 -> 6.6 // 2 * 2 -> 6 -> k = 7
    return int(ratio * crop_width // 2 * 2) + 1


def blend_mask(mask512, face_box, mode, blur_ratio=None):
    """The paste mask of one frame from its 512x512 parsing region.

    mask512: uint8 [512,512] from `mask_from_labels`; face_box: (x1, y1, x2, y2), the box the face is pasted into;
    blur_ratio: None for the offline ratio of `mode`, PREPARED_BLUR_RATIO for the realtime one.
    Returns (mask uint8 [2s,2s], crop_box [x1, y1, x2, y2]): the region resized to the crop (PIL bicubic), kept only
    inside the face box, zeroed above the crop's centre line and Gaussian-blurred.
    """
    cv2 = load_cv2()

    check_mode(mode)
    x1, y1, x2, y2 = (int(v) for v in face_box)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"face box {list(face_box)} is empty; give None for frames without a face")
    box = crop_box((x1, y1, x2, y2), CROP_EXPAND[mode])
    size = box[2] - box[0]
    region = np.asarray(Image.fromarray(np.asarray(mask512, np.uint8)).resize((size, size), Image.BICUBIC))
    mask = np.zeros((size, size), np.uint8)
    fx1, fy1 = max(x1 - box[0], 0), max(y1 - box[1], 0)
    fx2, fy2 = min(x2 - box[0], size), min(y2 - box[1], size)
    mask[fy1:fy2, fx1:fx2] = region[fy1:fy2, fx1:fx2]
    mask[:int(size * UPPER_BOUNDARY_RATIO)] = 0
    ratio = OFFLINE_BLUR_RATIO[mode] if blur_ratio is None else blur_ratio
    k = blur_kernel_size(size, ratio)
    return cv2.GaussianBlur(mask, (k, k), 0), box


def _frame_u8(frame, index):
    array = frame.cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"frame {index}: expected a uint8 [H,W,3] RGB image, got {array.dtype} {tuple(array.shape)}")
    return array


def blend_masks(parser, runtime, frames_rgb, face_boxes, mode, left_cheek_width=DEFAULT_CHEEK_WIDTH,
                right_cheek_width=DEFAULT_CHEEK_WIDTH, blur_ratio=None, batch_size=8):
    """Paste masks for many frames: crop, parse (batched), region of `mode`, `blend_mask`.

    frames_rgb: uint8 [N,H,W,3] RGB (numpy or CPU tensor, or a sequence of [H,W,3]); face_boxes: N boxes
    (x1, y1, x2, y2) the faces are pasted into, None where a frame has no face (for v1.5 the caller has already added
    extra_margin to y2, clamped to the frame). Returns a list of N (mask uint8 [2s,2s], crop_box) or None.
    """
    check_mode(mode)
    if len(frames_rgb) != len(face_boxes):
        raise ValueError(f"{len(frames_rgb)} frames but {len(face_boxes)} face boxes; give one box (or None) per frame")
    results = [None] * len(face_boxes)
    todo = [i for i, box in enumerate(face_boxes) if box is not None]
    progress = runtime.progress(len(todo))
    for start in range(0, len(todo), batch_size):
        runtime.check_interrupt()
        batch = todo[start:start + batch_size]
        crops = [crop_padded(_frame_u8(frames_rgb[i], i), crop_box(face_boxes[i], CROP_EXPAND[mode])) for i in batch]
        for i, labels in zip(batch, parse_faces(parser, runtime, crops)):
            region = mask_from_labels(labels, mode, left_cheek_width, right_cheek_width)
            results[i] = blend_mask(region, face_boxes[i], mode, blur_ratio)
        progress.update(len(batch))
    return results
