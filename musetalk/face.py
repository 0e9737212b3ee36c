"""The face track of a clip: per-frame face boxes, 256x256 network crops and blend masks, computed once per video.

`detect_and_parse` runs S3FD + DWPose (or takes user-given boxes), applies the official box logic of
`face_boxes.py`, crops the network inputs and asks the face parser for the paste-back masks. The result, a `FaceTrack`,
is the MUSETALK_FACES object that the inference and paste-back stages read; frames without a face stay in it, flagged,
so every output frame keeps its source frame (the official code dropped them and misaligned the rest; README, "What
differs from the official implementation").
"""
import logging
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .face_boxes import (CROP_SIZE, LandmarkBox, bbox_shift_range_text, check_bboxes, crop_is_empty, expand_box,
                         landmark_box, network_crop, parse_bboxes, parse_face_select, paste_box, pick_detection,
                         smooth_boxes)

__all__ = ["FaceSettings", "FaceTrack", "BlendMasks", "FrameReader", "detect_and_parse", "as_rgb_uint8",
           "landmark_box", "bbox_shift_range_text", "paste_box", "network_crop", "parse_bboxes", "smooth_boxes",
           "CROP_SIZE"]

log = logging.getLogger("musetalk")

# Below this size a face could not fill a useful share of a 256x256 crop, and S3FD's deepest layers shrink to
# nothing, so such frames are reported as having no face instead of being run through the detectors.
MIN_FRAME_SIDE = 64
# Frames per detector batch follow the frame size: S3FD's activations take ~0.7 KB per input pixel (s3fd.py), so a
# single 4K frame (8.3 M pixels) already fills a batch.
PIXELS_PER_BATCH = 8_000_000
MAX_FRAMES_PER_BATCH = 16
# For a non-default face choice DWPose looks inside the chosen face's box, widened so that the whole-body model
# sees the head with its contour and chin rather than a tight face crop.
POSE_BOX_EXPAND = 2.0


@dataclass
class FaceSettings:
    """The options of `detect_and_parse`. A FaceTrack keeps the values applied: bbox_shift is 0 when boxes were
    given, extra_margin is 0 for v1.0, boxes_given says whether they were."""

    bbox_shift: int = 0
    extra_margin: int = 10
    parsing_mode: str = "jaw"
    left_cheek_width: int = 90
    right_cheek_width: int = 90
    face_select: str = "first"
    smooth: float = 0.0
    boxes_given: bool = False


class BlendMasks:
    """The blend masks of a clip, one (mask uint8 [2s,2s], crop_box) or None per frame, kept zlib-compressed.

    A mask is mostly 0 with a 255 face region and a blurred edge: zlib (level 1) shrinks it many times over (sizes in
    bench/README.md, "Memory") and unpacks it far faster than the VAE decodes the face pasted through it. Reading an
    entry gives a fresh array, so the stored masks cannot be changed.
    """

    def __init__(self, entries=()):
        self._packed = []
        self.extend(entries)

    def extend(self, entries):
        for entry in entries:
            self._packed.append(None if entry is None else _pack_mask(*entry))

    def __len__(self):
        return len(self._packed)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [_unpack_mask(entry) for entry in self._packed[index]]
        return _unpack_mask(self._packed[index])

    def __iter__(self):
        return (_unpack_mask(entry) for entry in self._packed)

    def __eq__(self, other):
        return isinstance(other, BlendMasks) and self._packed == other._packed

    @property
    def shapes(self):
        """Each mask's (height, width), or None for a frame without a face; nothing is unpacked."""
        return [None if entry is None else entry[1] for entry in self._packed]

    @property
    def nbytes(self):
        """Bytes the compressed masks take."""
        return sum(len(entry[0]) for entry in self._packed if entry is not None)


def _pack_mask(mask, crop_box):
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"a blend mask must be uint8 [h,w] (0..255), got {mask.dtype} {mask.shape}")
    return zlib.compress(np.ascontiguousarray(mask), 1), mask.shape, crop_box


def _unpack_mask(entry):
    if entry is None:
        return None
    data, shape, crop_box = entry
    return np.frombuffer(zlib.decompress(data), np.uint8).reshape(shape).copy(), crop_box


@dataclass
class FrameReader:
    """Frames read in runs when they are needed instead of held: `read(start, stop)` gives frames start..stop-1 as
    uint8 [stop-start,H,W,C] (anything `as_rgb_uint8` takes), `count` frames of `size` (height, width) in all."""

    read: object
    count: int
    size: tuple

    def __len__(self):
        return self.count


@dataclass
class FaceTrack:
    """Per-frame face data of one clip (the MUSETALK_FACES type); index i belongs to frame i.

    face_boxes: (x1, y1, x2, y2) ints from the box logic (after smoothing), None = no face.
    paste_boxes: the region cropped for the network and replaced by the generated face (v1.5 adds extra_margin
        below the chin), None = no face: the frame passes through unchanged.
    blend: (mask uint8 [2s,2s], crop_box (x0,y0,x1,y1)) per face frame from the face parser, None otherwise; masks
        stay crop-sized (a frame-sized mask per frame would be 8 MB of float32 at 1080p). Given as a list, kept
        as `BlendMasks`.
    memo: what later stages derive from this track alone and keep with it, so that it lives exactly as long as the
        track (`SourceLatents.encode` keeps the VAE latents of the crops here). Never saved, never compared.
    """

    frame_size: tuple  # (height, width)
    version: str
    face_boxes: list
    paste_boxes: list
    blend: BlendMasks = field(repr=False)
    settings: FaceSettings
    bbox_shift_range: str
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.blend, BlendMasks):
            self.blend = BlendMasks(self.blend)

    def __len__(self):
        return len(self.paste_boxes)

    @property
    def has_face(self):
        return [box is not None for box in self.paste_boxes]


def detect_and_parse(models, frames, settings=None, bboxes=None, crops_to=None):
    """Find the face in every frame, crop the network inputs and build the blend masks.

    models: a MuseTalkModels (uses .version, .runtime, .face_detector(), .dwpose(), .face_parser()).
    frames: uint8 RGB [N,H,W,3] (numpy or torch); RGBA drops alpha, [N,H,W] / [N,H,W,1] grayscale is replicated.
        Or a `FrameReader`: the frames are then read a detector batch at a time, twice (detection, then crops and
        masks; once when `bboxes` are given), and never held all at once.
    settings: a FaceSettings (defaults when None). Its bbox_shift is added to the nose-bridge point before the
        box top is mirrored from it (v1.0 semantics; the official v1.5 scripts force 0 while its Gradio app passes
        the user's value; here it is always applied); extra_margin (v1.5 only) is added below the chin;
        face_select is 'first' (official: the detector's best face + DWPose on the whole image), 'largest',
        'left-most', 'right-most', 'index:N' or int N (N-th face from the left), the non-default choices running
        DWPose inside the chosen face's box widened POSE_BOX_EXPAND times; smooth is the sigma in frames of a
        centred Gaussian over the boxes of consecutive face frames (0 = official boxes); boxes_given is ignored.
    bboxes: per-frame [x1,y1,x2,y2] or None, used instead of detection (like the official saved coordinates);
        bbox_shift does not apply to them.
    crops_to: None, or a function (frame indices, crops uint8 [n,256,256,3]) called with the crops of the frames
        that have a face, a batch at a time in frame order, instead of collecting every crop.
    Returns (FaceTrack, crops uint8 [N,256,256,3] RGB, black where a frame has no face; None with `crops_to`).
    """
    if not isinstance(frames, FrameReader):
        array = as_rgb_uint8(frames)
        frames = FrameReader(lambda start, stop: array[start:stop], len(array), array.shape[1:3])
    settings = settings or FaceSettings()
    n_frames, (height, width) = frames.count, tuple(frames.size)
    version, runtime = models.version, models.runtime
    kind, index = parse_face_select(settings.face_select)
    margin = settings.extra_margin if version != "v1.0" else 0
    batch = frames_per_batch(height, width)
    starts = range(0, n_frames, batch)
    progress = runtime.progress(len(starts) * (1 if bboxes is not None else 2))

    if bboxes is not None:
        face_boxes = check_bboxes(bboxes, n_frames, (height, width))
        range_text = (f"Total frame:「{n_frames}」 face boxes come from the bboxes input: no detection ran, so "
                      f"bbox_shift was not applied and has no range.")
    else:
        face_boxes, range_text = _detect_boxes(models, frames, settings.bbox_shift, kind, index, batch, progress)

    face_boxes = smooth_boxes(face_boxes, settings.smooth)
    paste_boxes = [paste_box(box, version, margin, height) for box in face_boxes]
    outside = [i for i, box in enumerate(paste_boxes) if box is not None and crop_is_empty((height, width), box)]
    if outside:
        log.warning("MuseTalk: the face box of frame(s) %s lies outside the image; those frames pass through "
                    "unchanged", _frame_list(outside))
        for i in outside:
            paste_boxes[i] = None

    crops = None
    if crops_to is None:
        crops = np.zeros((n_frames, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)

        def crops_to(indices, face_crops):
            crops[indices] = face_crops
    blend = BlendMasks()
    parser = None
    if any(box is not None for box in paste_boxes):
        from .masks import blend_masks

        parser = models.face_parser()
    else:
        log.warning("MuseTalk: no face in any of the %d frames; they pass through unchanged", n_frames)
        if bboxes is None:  # detections that all lie outside the frame give no face either, and no range
            range_text = bbox_shift_range_text(n_frames, [], [], settings.bbox_shift)
    for start in starts:
        runtime.check_interrupt()
        stop = min(start + batch, n_frames)
        faces = [i for i in range(start, stop) if paste_boxes[i] is not None]
        if not faces:  # nothing to crop: such frames are not even read
            blend.extend([None] * (stop - start))
            progress.update(1)
            continue
        chunk = read_frames(frames, start, stop)
        face_crops = np.stack([network_crop(chunk[i - start], paste_boxes[i]) for i in faces])
        crops_to(faces, face_crops)
        blend.extend(blend_masks(parser, runtime, chunk, paste_boxes[start:stop], settings.parsing_mode,
                                 settings.left_cheek_width, settings.right_cheek_width))
        progress.update(1, preview=face_crops[-1])

    applied_shift = 0 if bboxes is not None else int(settings.bbox_shift)
    applied = FaceSettings(applied_shift, int(margin), settings.parsing_mode, int(settings.left_cheek_width),
                           int(settings.right_cheek_width), str(settings.face_select), float(settings.smooth),
                           bboxes is not None)
    track = FaceTrack((height, width), version, face_boxes, paste_boxes, blend, applied, range_text)
    return track, crops


def read_frames(frames, start, stop):
    """Frames start..stop-1 of a FrameReader as contiguous uint8 RGB [n,H,W,3], checked against its count and size."""
    chunk = as_rgb_uint8(frames.read(start, stop))
    if chunk.shape[:3] != (stop - start, *frames.size):
        raise ValueError(f"reading frames {start}..{stop - 1} gave shape {tuple(chunk.shape)}, "
                         f"[{stop - start},{frames.size[0]},{frames.size[1]},3] expected: all frames of a clip "
                         "must have the same size")
    return chunk


def _detect_boxes(models, frames, bbox_shift, kind, index, batch, progress):
    """S3FD + DWPose + the official box logic for every frame of a FrameReader -> (boxes or None, range text)."""
    n_frames, (height, width) = frames.count, tuple(frames.size)
    if min(height, width) < MIN_FRAME_SIDE:
        log.warning("MuseTalk: frames of %dx%d are too small to hold a usable face (min side %d px)",
                    width, height, MIN_FRAME_SIDE)
        return [None] * n_frames, bbox_shift_range_text(n_frames, [], [], bbox_shift)
    from .networks import rtmpose, s3fd

    runtime = models.runtime
    detector, pose = models.face_detector(), models.dwpose()
    results = []
    for start in range(0, n_frames, batch):
        runtime.check_interrupt()
        chunk = read_frames(frames, start, min(start + batch, n_frames))
        detections = s3fd.detect_faces(detector, runtime, chunk)
        picks = [pick_detection(dets, kind, index) for dets in detections]
        # the official pick (clip at 0, int) applied to the chosen row, so 'first' is exactly the official box
        chosen = [None if pick is None else s3fd.first_face_box(dets[pick:pick + 1])
                  for dets, pick in zip(detections, picks)]
        with_face = [i for i, box in enumerate(chosen) if box is not None]
        keypoints = {}
        if with_face:
            chunk_bgr = np.ascontiguousarray(chunk[with_face][..., ::-1])
            pose_boxes = None
            if kind != "first":
                pose_boxes = np.array([expand_box(chosen[i], POSE_BOX_EXPAND, chunk.shape[1:]) for i in with_face],
                                      dtype=np.float32)
            points, _scores = rtmpose.estimate_keypoints(pose, runtime, chunk_bgr, boxes=pose_boxes)
            keypoints = dict(zip(with_face, np.asarray(points)))
        for i, box in enumerate(chosen):
            results.append(LandmarkBox(None, None, None, False) if box is None
                           else landmark_box(keypoints[i], box, bbox_shift, models.version))
        progress.update(1)

    fell_back = [i for i, r in enumerate(results) if r.fell_back]
    if fell_back:
        log.info("MuseTalk: the landmark box of frame(s) %s was unusable; the face detector's box is used there",
                 _frame_list(fell_back))
    found = [r for r in results if r.box is not None]
    text = bbox_shift_range_text(n_frames, [r.range_minus for r in found], [r.range_plus for r in found], bbox_shift)
    return [r.box for r in results], text


def as_rgb_uint8(frames):
    """uint8 frames (numpy or torch) -> contiguous numpy uint8 RGB [N,H,W,3].

    Accepts [N,H,W,3], RGBA [N,H,W,4] (alpha dropped), grayscale [N,H,W] / [N,H,W,1] and gray+alpha [N,H,W,2].
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 (0..255), got {frames.dtype}; convert float images in 0..1 with "
                        f"round(x * 255)")
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"frames must be [N,H,W,C] with C = 1, 2, 3 or 4 (or grayscale [N,H,W]), "
                         f"got shape {tuple(frames.shape)}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames are empty (shape {tuple(frames.shape)}): give at least one image")
    if frames.shape[-1] in (1, 2):
        frames = np.repeat(frames[..., :1], 3, axis=-1)
    return np.ascontiguousarray(frames[..., :3])


def frames_per_batch(height, width):
    return int(max(1, min(MAX_FRAMES_PER_BATCH, PIXELS_PER_BATCH // (height * width))))


def _frame_list(indices, limit=10):
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")
