"""Face boxes: the official landmark box, the crop fed to the network, face choice, smoothing and user-given boxes.

Pure numpy/cv2 functions on one frame's numbers; `face.py` runs the detectors and strings these together per clip.
The box logic restates `get_landmark_and_bbox` of the official `musetalk/utils/preprocessing.py` (HEAD for v1.5,
commit 058f7dd for v1.0), including its integer arithmetic, so the boxes match the official ones exactly.
"""
import json
import math
from typing import NamedTuple

import numpy as np

from .opencv import load_cv2

CROP_SIZE = 256  # the network's input size
FACE_POINTS = slice(23, 91)  # the 68 face points inside COCO-WholeBody's 133 keypoints
NOSE_TOP, NOSE_BRIDGE, NOSE_LOWER = 28, 29, 30  # 68-point indices used by the box and the bbox_shift range
FACE_SELECT = ("first", "largest", "left-most", "right-most", "index")


class LandmarkBox(NamedTuple):
    """One frame's result: `box` (x1, y1, x2, y2) ints or None (no face); the bbox_shift range values
    (None without a face); `fell_back` is True when the landmark box was unusable and the detector box was taken."""

    box: tuple
    range_minus: int
    range_plus: int
    fell_back: bool


def landmark_box(keypoints133, detection_box, bbox_shift=0, version="v1.5"):
    """The official per-frame box from whole-body keypoints [133,2] and the detector's box (or None = no face).

    Horizontally the box spans the face contour, at the bottom it reaches the chin, and its top is the nose bridge
    (moved down by `bbox_shift` px) mirrored across the bridge-to-chin distance. v1.5 clamps the top at 0, v1.0 does
    not (its negative top is fixed later, in `paste_box`). Returns a `LandmarkBox`.
    """
    if detection_box is None:
        return LandmarkBox(None, None, None, False)
    # int32 truncation toward zero before any arithmetic, as the official code does
    marks = np.asarray(keypoints133)[FACE_POINTS].astype(np.int32)
    range_minus = int(marks[NOSE_LOWER, 1] - marks[NOSE_BRIDGE, 1])
    range_plus = int(marks[NOSE_BRIDGE, 1] - marks[NOSE_TOP, 1])
    if bbox_shift != 0:
        # The official code shifts through a numpy view, so the shifted bridge point also takes part in max(y)
        # below. Kept, though it cannot change a result: it only matters once the bridge passes the chin, and
        # then the box is empty with or without it and falls back to the detector box.
        marks[NOSE_BRIDGE, 1] += bbox_shift
    half_y = int(marks[NOSE_BRIDGE, 1])
    bottom = int(marks[:, 1].max())
    upper = half_y - (bottom - half_y)
    if version != "v1.0":
        upper = max(0, upper)  # HEAD (2025-07) clamps; the original v1.0 does not
    box = (int(marks[:, 0].min()), upper, int(marks[:, 0].max()), bottom)
    x1, y1, x2, y2 = box
    if y2 - y1 <= 0 or x2 - x1 <= 0 or x1 < 0:
        return LandmarkBox(tuple(int(v) for v in detection_box), range_minus, range_plus, True)
    return LandmarkBox(box, range_minus, range_plus, False)


def bbox_shift_range_text(n_frames, ranges_minus, ranges_plus, bbox_shift):
    """The official "Manually adjust range" line: mean nose-lower and nose-top distances over the face frames.

    The official code divides by the number of face frames and crashes without any; here that case gets a sentence.
    """
    if not ranges_minus:
        return (f"Total frame:「{n_frames}」 no face was found in any frame, so there is no bbox_shift range; "
                f"the frames pass through unchanged. Use a clip with a visible, roughly frontal face, "
                f"or give the face boxes with the bboxes input.")
    minus = int(sum(ranges_minus) / len(ranges_minus))
    plus = int(sum(ranges_plus) / len(ranges_plus))
    return (f"Total frame:「{n_frames}」 Manually adjust range : [ -{minus}~{plus} ] , "
            f"the current value: {bbox_shift}")


def paste_box(face_box, version, extra_margin, frame_height):
    """The region that is cropped for the network and later replaced: (x1, y1, x2, y2) ints, or None.

    v1.5 extends the box `extra_margin` px below the chin (clamped to the frame). Left and top are clamped at 0 for
    both versions: v1.0's unclamped negative top made the official crop slice wrap around (an empty or wrong crop);
    detected boxes never have a negative left, user-given ones may.
    Right and bottom edges past the frame are kept as the official code keeps them: the crop is cut at the frame
    edge and the result is stretched back to the full box when pasted.
    """
    if face_box is None:
        return None
    x1, y1, x2, y2 = face_box
    if version != "v1.0":
        y2 = min(y2 + extra_margin, frame_height)
    return (max(x1, 0), max(y1, 0), x2, y2)


def crop_is_empty(frame_shape, box):
    """True when `box` keeps no pixel of a frame of shape [H,W,...] (e.g. a detector box past the edge)."""
    height, width = frame_shape[:2]
    x1, y1, x2, y2 = box
    return min(x2, width) <= max(x1, 0) or min(y2, height) <= max(y1, 0)


def network_crop(frame, box):
    """The official network input: frame[y1:y2, x1:x2] resized to 256x256 with Lanczos-4 -> uint8 [256,256,3].

    `box` is a `paste_box`. Channel order is kept (Lanczos works per channel, so RGB in gives the official BGR
    crop's channels reversed). The aspect ratio is not kept, as in training.
    """
    x1, y1, x2, y2 = box
    crop = frame[y1:y2, x1:x2]
    cv2 = load_cv2()
    return cv2.resize(crop, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LANCZOS4)


def parse_face_select(face_select):
    """'first' | 'largest' | 'left-most' | 'right-most' | 'index:N' | int N -> (kind, N or None)."""
    if isinstance(face_select, (int, np.integer)) and not isinstance(face_select, bool):
        kind, index = "index", int(face_select)
    elif isinstance(face_select, str) and face_select.startswith("index:"):
        kind, text = "index", face_select[len("index:"):].strip()
        if not text.isdigit():
            raise ValueError(f"face_select {face_select!r}: the index must be a whole number >= 0, e.g. 'index:1'")
        index = int(text)
    else:
        kind, index = face_select, None
    if kind not in FACE_SELECT or (kind == "index" and index is None) or (index is not None and index < 0):
        raise ValueError(f"face_select must be one of 'first', 'largest', 'left-most', 'right-most', 'index:N' "
                         f"(N >= 0, faces counted from the left) or an int N; got {face_select!r}")
    return kind, index


def pick_detection(detections, kind, index=None):
    """Row of the detector output [K,5] (x1,y1,x2,y2,score; score order) to use, or None when there is none.

    'first' is the official choice (the highest score). 'index' counts faces from the left by box centre, so the same
    person keeps the same number while scores change from frame to frame.
    """
    if len(detections) == 0:
        return None
    boxes = np.asarray(detections, dtype=np.float64)[:, :4]
    if kind == "first":
        return 0
    if kind == "largest":
        return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    centres = (boxes[:, 0] + boxes[:, 2]) / 2
    order = np.argsort(centres, kind="stable")
    if kind == "left-most":
        return int(order[0])
    if kind == "right-most":
        return int(order[-1])
    return int(order[index]) if index < len(order) else None


def expand_box(box, factor, frame_shape):
    """A square of side factor*max(w,h) around `box`'s centre, cut to the frame: float [x1,y1,x2,y2]."""
    height, width = frame_shape[:2]
    x1, y1, x2, y2 = box
    half = max(x2 - x1, y2 - y1) * factor / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return [max(cx - half, 0.0), max(cy - half, 0.0), min(cx + half, float(width)), min(cy + half, float(height))]


def smooth_boxes(boxes, sigma):
    """Centred Gaussian average of each box coordinate over time (sigma in frames); 0 returns the boxes unchanged.

    Only runs of consecutive face frames are averaged: a no-face frame (None) splits the clip, so a face never
    drifts towards a box from the other side of a cut. Centred weights add no lag; windows are cut at run ends.
    """
    if sigma <= 0:
        return list(boxes)
    radius = max(1, math.ceil(3 * sigma))
    smoothed = list(boxes)
    for start, stop in _face_runs(boxes):
        run = np.asarray(boxes[start:stop], dtype=np.float64)
        for i in range(len(run)):
            lo, hi = max(0, i - radius), min(len(run), i + radius + 1)
            weights = np.exp(-0.5 * ((np.arange(lo, hi) - i) / sigma) ** 2)
            mean = weights @ run[lo:hi] / weights.sum()
            smoothed[start + i] = tuple(int(v) for v in np.floor(mean + 0.5))
    return smoothed


def _face_runs(boxes):
    start = None
    for i, box in enumerate(list(boxes) + [None]):
        if box is not None and start is None:
            start = i
        elif box is None and start is not None:
            yield start, i
            start = None


def parse_bboxes(text, n_frames, frame_size=None, name="bboxes"):
    """Face boxes from JSON text: one [x1,y1,x2,y2] (or null = no face) per frame -> list, or None for empty text.

    A single [x1,y1,x2,y2] is used for every frame. The official placeholders [0,0,0,0] and [-1,-1,-1,-1] also mean
    no face, so saved official coordinates can be pasted in. `frame_size` (H, W) enables the on-frame check.
    Raises ValueError naming the entry, what is wrong and how to fix it; `name` is what the messages call the boxes
    (the command line says which file).
    """
    if text is None or not str(text).strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                         f"write a list with one [x1, y1, x2, y2] or null per frame, e.g. "
                         f"[[133, 44, 195, 132], null]") from None
    if isinstance(data, list) and len(data) == 4 and all(_is_number(v) for v in data):
        data = [data] * n_frames
    if not isinstance(data, list):
        raise ValueError(f"{name} must be a JSON list with one [x1, y1, x2, y2] or null per frame, "
                         f"got a {type(data).__name__}")
    return check_bboxes(data, n_frames, frame_size, name)


def check_bboxes(bboxes, n_frames, frame_size=None, name="bboxes"):
    """Validate per-frame boxes (sequences of 4 numbers or None) -> list of int tuples or None."""
    if len(bboxes) != n_frames:
        raise ValueError(f"{name} has {len(bboxes)} entries but the images have {n_frames} frames: give exactly one "
                         f"[x1, y1, x2, y2] (or null for a frame without a face) per frame, or one box for all "
                         f"frames, or give no boxes to detect faces")
    return [_check_box(entry, i, frame_size, name) for i, entry in enumerate(bboxes)]


def _check_box(entry, i, frame_size, name):
    where = f"{name} entry {i} (frame {i})"
    if entry is None:
        return None
    entry = entry.tolist() if isinstance(entry, np.ndarray) else entry
    if not isinstance(entry, (list, tuple)) or len(entry) != 4 or not all(_is_number(v) for v in entry):
        raise ValueError(f"{where} is {entry!r}: it must be four numbers [x1, y1, x2, y2] in pixels, or null when "
                         f"the frame has no face")
    box = tuple(int(v) for v in entry)
    if box in ((0, 0, 0, 0), (-1, -1, -1, -1)):
        return None
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{where} is {list(box)}: x2 must be greater than x1 and y2 greater than y1 "
                         f"(order is left, top, right, bottom)")
    if frame_size is not None and crop_is_empty(frame_size, box):
        raise ValueError(f"{where} is {list(box)}: it lies outside the {frame_size[1]}x{frame_size[0]} frame; "
                         f"coordinates are pixels from the top-left corner")
    return box


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)
