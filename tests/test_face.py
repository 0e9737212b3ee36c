"""Face boxes, network crops, the FaceTrack and the FaceDetectAndParse node.

The detectors and the face parser are replaced by small stubs that return given detections, keypoints and square
masks, so the box logic is tested exactly against the official outputs (e_boxlogic) without running networks.
Frame i of a stubbed clip carries its index in pixel (0, 0), which the stubs use to look up their answers.
"""
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from conftest import fixture, fixture_inputs, load_pack

import musetalk.networks  # noqa: F401  (the stubs attach to this package)
from musetalk import face as face_engine
from musetalk.face import FaceSettings, FaceTrack, as_rgb_uint8, detect_and_parse, frames_per_batch
from musetalk.face_boxes import (bbox_shift_range_text, landmark_box, network_crop, parse_bboxes, paste_box,
                                 smooth_boxes)
from musetalk.runtime import ManagedModel, StandaloneRuntime

SHIFTS = {"m7": -7, "0": 0, "6": 6}
VERSIONS = {"head": "v1.5", "v10": "v1.0"}
PACK_NAME = "ComfyUI_MuseTalk_under_test"


# ---------------------------------------------------------------- stubs of the networks face.py calls

class StubDetector:
    """S3FD answers per frame marker: [K,5] float32 (x1,y1,x2,y2,score) in score order."""

    def __init__(self, detections):
        self.detections = detections


class StubPose:
    """DWPose answers per frame marker: [133,2] keypoints; records the boxes it was given."""

    def __init__(self, keypoints):
        self.keypoints = keypoints
        self.calls = []


def _marker(frame):
    return int(frame[0, 0, 0])


def _detect_faces(detector, runtime, frames_rgb):
    return [np.asarray(detector.module.detections.get(_marker(f), np.zeros((0, 5))), np.float32) for f in frames_rgb]


def _first_face_box(dets):
    if len(dets) == 0:
        return None
    x1, y1, x2, y2 = np.clip(dets[0], 0, None)[:4]
    return int(x1), int(y1), int(x2), int(y2)


def _estimate_keypoints(pose, runtime, frames_bgr, boxes=None):
    pose.module.calls.append(None if boxes is None else np.asarray(boxes).tolist())
    points = np.stack([pose.module.keypoints[_marker(f)] for f in frames_bgr]).astype(np.float32)
    return points, np.ones(points.shape[:2], np.float32)


def _blend_masks(parser, runtime, frames_rgb, face_boxes, mode, left_cheek_width=90, right_cheek_width=90):
    """A full square at the official crop box (get_crop_box, expand 1.5), enough to test the plumbing."""
    parser.module.calls.append((len(frames_rgb), mode, left_cheek_width, right_cheek_width))
    out = []
    for box in face_boxes:
        if box is None:
            out.append(None)
            continue
        x1, y1, x2, y2 = box
        xc, yc, s = (x1 + x2) // 2, (y1 + y2) // 2, int(max(x2 - x1, y2 - y1) // 2 * 1.5)
        out.append((np.full((2 * s, 2 * s), 255, np.uint8), (xc - s, yc - s, xc + s, yc + s)))
    return out


STUB_MODULES = {
    "networks.s3fd": {"detect_faces": _detect_faces, "first_face_box": _first_face_box},
    "networks.rtmpose": {"estimate_keypoints": _estimate_keypoints},
    "masks": {"blend_masks": _blend_masks, "PARSING_MODES": ("jaw", "raw", "neck", "v1.0")},
}


def _install_stubs(monkeypatch, package):
    for name, attrs in STUB_MODULES.items():
        module = types.ModuleType(f"{package}.{name}")
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, module.__name__, module)
        parent, _, leaf = module.__name__.rpartition(".")
        if parent in sys.modules:
            monkeypatch.setattr(sys.modules[parent], leaf, module, raising=False)


@pytest.fixture
def stubs(monkeypatch):
    _install_stubs(monkeypatch, "musetalk")
    _install_stubs(monkeypatch, f"{PACK_NAME}.musetalk")


class CountingRuntime(StandaloneRuntime):
    def __init__(self, interrupt_after=None):
        super().__init__("cpu")
        self.ticks, self.interrupt_checks, self.interrupt_after = 0, 0, interrupt_after

    def progress(self, total):
        progress = super().progress(total)
        progress._on_update = lambda done, total, preview: setattr(self, "ticks", self.ticks + 1)
        return progress

    def check_interrupt(self):
        self.interrupt_checks += 1
        if self.interrupt_after is not None and self.interrupt_checks > self.interrupt_after:
            raise InterruptedError("stopped by the user")


class StubModels:
    """The parts of MuseTalkModels that detect_and_parse uses."""

    def __init__(self, version="v1.5", detections=None, keypoints=None, runtime=None):
        self.version = version
        self.runtime = runtime or CountingRuntime()
        self.detector = StubDetector(detections or {})
        self.pose = StubPose(keypoints or {})
        self.parser = types.SimpleNamespace(calls=[])
        self.requested = []

    def _managed(self, name, module):
        self.requested.append(name)
        return ManagedModel(module, "face", torch.device("cpu"), torch.float32)

    def face_detector(self):
        return self._managed("s3fd", self.detector)

    def dwpose(self):
        return self._managed("dwpose", self.pose)

    def face_parser(self):
        return self._managed("parser", self.parser)


def marked_frames(n, size=384, value=90):
    frames = np.full((n, size, size, 3), value, np.uint8)
    frames[:, 0, 0, :] = np.arange(n)[:, None]
    return frames


def boxlogic_models(version):
    arrays, _ = fixture("e_boxlogic")
    detections = {f: np.array([list(b) + [0.99]]) for f, b in enumerate(arrays["s3fd_boxes"]) if b[0] >= 0}
    keypoints = dict(enumerate(arrays["keypoints133"]))
    return StubModels(version, detections, keypoints)


def official_range_line(stdout):
    return next(line for line in stdout.splitlines() if line.startswith("Total frame:"))


# ---------------------------------------------------------------- box logic against the official outputs

@pytest.mark.parametrize("tag", VERSIONS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_landmark_box_matches_official(tag, shift):
    arrays, sidecar = fixture("e_boxlogic")
    results = [landmark_box(arrays["keypoints133"][f], None if box[0] < 0 else tuple(box), SHIFTS[shift],
                            VERSIONS[tag]) for f, box in enumerate(arrays["s3fd_boxes"])]
    coords = [r.box if r.box is not None else (0, 0, 0, 0) for r in results]
    assert coords == [tuple(int(v) for v in row) for row in arrays[f"coords_{tag}_shift{shift}"]]
    assert all(isinstance(v, int) for r in results if r.box for v in r.box)
    run = sidecar["runs"][f"{tag}_shift{shift}"]
    # the official code prints "error bbox" exactly for the frames that fall back to the detector box
    assert [r.fell_back for r in results] == [False, False, False, True]
    assert run["stdout"].count("error bbox:") == 1
    found = [r for r in results if r.box is not None]
    text = bbox_shift_range_text(4, [r.range_minus for r in found], [r.range_plus for r in found], SHIFTS[shift])
    assert text == official_range_line(run["stdout"])
    if shift == "m7":
        assert text == sidecar["runs"][f"{tag}_get_bbox_range_shift-7"]["return"]


@pytest.mark.parametrize("tag", VERSIONS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_detect_and_parse_boxes_match_official(stubs, tag, shift):
    arrays, sidecar = fixture("e_boxlogic")
    models = boxlogic_models(VERSIONS[tag])
    track, crops = detect_and_parse(models, marked_frames(4), FaceSettings(bbox_shift=SHIFTS[shift]))
    expected = [tuple(int(v) for v in row) for row in arrays[f"coords_{tag}_shift{shift}"]]
    assert [b if b is not None else (0, 0, 0, 0) for b in track.face_boxes] == expected
    assert track.bbox_shift_range == official_range_line(sidecar["runs"][f"{tag}_shift{shift}"]["stdout"])
    assert track.has_face == [True, False, True, True]
    assert models.pose.calls == [None]  # 'first': whole-image DWPose, as the official code


def test_bbox_shift_below_the_chin_falls_back_to_the_detector_box():
    """The official shift writes through a numpy view into the landmarks, so the shifted bridge joins max(y).
    That only changes anything once the bridge passes the chin, and then the box is empty either way: fallback."""
    keypoints = fixture("e_boxlogic")[0]["keypoints133"][0]
    marks = keypoints[23:91].astype(np.int32)
    shift = int(marks[:, 1].max() - marks[29, 1]) + 20
    for version in ("v1.5", "v1.0"):
        result = landmark_box(keypoints, (1, 2, 30, 40), shift, version)
        assert result.box == (1, 2, 30, 40) and result.fell_back
    assert not landmark_box(keypoints, (1, 2, 30, 40), shift - 21, "v1.5").fell_back


def test_range_text_without_any_face_is_a_sentence():
    text = bbox_shift_range_text(7, [], [], 0)
    assert text.startswith("Total frame:「7」") and "no face" in text


def test_landmark_box_without_detection_is_none():
    keypoints = fixture("e_boxlogic")[0]["keypoints133"][0]
    assert landmark_box(keypoints, None, 0, "v1.5").box is None


# ---------------------------------------------------------------- crops

def test_network_crop_matches_official_v15_crop():
    frame_bgr = fixture_inputs()["frames_bgr"][0]
    box = paste_box((133, 44, 195, 132), "v1.5", 10, 384)
    assert box == (133, 44, 195, 142)
    expected = fixture("b_vae_unet_v15")[0]["crop_bgr"]
    assert np.array_equal(network_crop(frame_bgr, box), expected)
    # Lanczos works per channel: cropping the RGB frame gives the same crop in RGB order
    assert np.array_equal(network_crop(np.ascontiguousarray(frame_bgr[..., ::-1]), box)[..., ::-1], expected)


def test_network_crop_matches_official_v10_crop():
    frame_bgr = fixture_inputs()["frames_bgr"][0]
    box = paste_box((133, 44, 195, 132), "v1.0", 10, 384)
    assert box == (133, 44, 195, 132)  # no extra_margin in v1.0
    assert np.array_equal(network_crop(frame_bgr, box), fixture("b_vae_unet_v1")[0]["crop_bgr"])


def test_paste_box_margin_is_clamped_and_v10_negative_top_is_fixed():
    assert paste_box((10, 20, 50, 380), "v1.5", 10, 384) == (10, 20, 50, 384)
    assert paste_box((131, -7, 193, 81), "v1.0", 10, 384) == (131, 0, 193, 81)
    assert paste_box(None, "v1.5", 10, 384) is None


def test_clip_through_bboxes_path(stubs):
    inputs = fixture_inputs()
    frames_rgb = np.ascontiguousarray(inputs["frames_bgr"][..., ::-1])
    bboxes = [None if row[0] < 0 else row.tolist() for row in inputs["bboxes"]]
    models = StubModels()
    track, crops = detect_and_parse(models, frames_rgb, bboxes=bboxes)
    assert "s3fd" not in models.requested and "dwpose" not in models.requested  # boxes replace detection
    assert crops.shape == (12, 256, 256, 3) and crops.dtype == np.uint8
    assert np.array_equal(crops[0][..., ::-1], fixture("b_vae_unet_v15")[0]["crop_bgr"])
    for i, row in enumerate(inputs["bboxes"]):
        if i == 5:
            continue
        x1, y1, x2, y2 = row
        official = cv2.resize(inputs["frames_bgr"][i][y1:min(y2 + 10, 384), x1:x2], (256, 256),
                              interpolation=cv2.INTER_LANCZOS4)
        assert np.array_equal(crops[i][..., ::-1], official), f"frame {i}"
    # frame 5 has no face: flagged, black crop, no mask, kept in place so later frames stay aligned
    assert track.has_face == [i != 5 for i in range(12)]
    assert not crops[5].any() and track.blend[5] is None and track.paste_boxes[5] is None
    masks = load_pack(name=PACK_NAME).nodes.face.frame_masks(track)
    assert masks.shape == (12, 384, 384) and masks.dtype == torch.float32
    assert not masks[5].any() and masks[0].max() == 1.0
    assert len(track) == 12 and track.paste_boxes[0] == (133, 44, 195, 142)
    assert "bboxes input" in track.bbox_shift_range


def test_v10_track_has_no_margin_and_clamped_top(stubs):
    track, crops = detect_and_parse(boxlogic_models("v1.0"), marked_frames(4), FaceSettings(bbox_shift=-7))
    assert track.face_boxes[2] == (131, -21, 193, 81)  # the official v1.0 box
    assert track.paste_boxes[2] == (131, 0, 193, 81)  # our fix: crop and paste from the frame top
    assert track.settings.extra_margin == 0 and track.paste_boxes[0] == track.face_boxes[0]


def test_frame_masks_cut_crop_boxes_at_the_frame_edge():
    mask = np.arange(100, dtype=np.uint8).reshape(10, 10)
    track = FaceTrack((8, 8), "v1.5", [(0, 0, 4, 4)], [(0, 0, 4, 4)], [(mask, (-3, -2, 7, 8))], None, "")
    rendered = load_pack(name=PACK_NAME).nodes.face.frame_masks(track)[0]
    assert torch.equal(rendered[:8, :7], torch.from_numpy(mask[2:10, 3:10].astype(np.float32) / 255))
    assert not rendered[:, 7:].any()


def test_face_cut_by_the_border_crops_like_the_official_slice(stubs):
    frames = marked_frames(2, value=0)
    frames[:, 100:, 300:] = 200
    frames[0, 0, 0] = 0
    frames[1, 0, 0] = 1
    # frame 0: box past the right edge (the official slice stops at the edge); frame 1: box entirely outside
    track, crops = detect_and_parse(StubModels(), frames, bboxes=[[300, 100, 420, 200], [120, 10, 180, 90]])
    official = cv2.resize(frames[0][100:210, 300:420], (256, 256), interpolation=cv2.INTER_LANCZOS4)
    assert np.array_equal(crops[0], official)
    assert track.paste_boxes[0] == (300, 100, 420, 210)
    models = StubModels(detections={0: np.array([[394, 286, 527, 435, 0.9]])},
                        keypoints={0: fixture("e_boxlogic")[0]["keypoints133"][3]})
    track, crops = detect_and_parse(models, marked_frames(1))
    # the landmark box is unusable, the fallback detector box lies outside the frame: no face, frame passes
    assert track.face_boxes == [(394, 286, 527, 435)] and track.has_face == [False] and not crops.any()


# ---------------------------------------------------------------- face selection and smoothing

THREE_FACES = np.array([[150, 100, 190, 140, 0.99],   # middle, small, best score
                        [20, 90, 120, 190, 0.90],     # left, large
                        [280, 100, 330, 150, 0.80]])  # right


@pytest.mark.parametrize("select,expected", [("first", 0), ("largest", 1), ("left-most", 1), ("right-most", 2),
                                             ("index:1", 0), (2, 2), ("index:5", None)])
def test_face_select(stubs, select, expected):
    # keypoints moved left of the image: the landmark box falls back to the chosen detector box, showing the choice
    keypoints = fixture("e_boxlogic")[0]["keypoints133"][3]
    models = StubModels(detections={0: THREE_FACES}, keypoints={0: keypoints})
    track, _ = detect_and_parse(models, marked_frames(1), FaceSettings(face_select=select))
    if expected is None:
        assert track.has_face == [False] and "no face" in track.bbox_shift_range
        return
    assert track.face_boxes[0] == tuple(int(v) for v in THREE_FACES[expected, :4])
    if select == "first":
        assert models.pose.calls == [None]
    else:
        # DWPose looks inside the chosen face, widened 2x around its centre
        x1, y1, x2, y2 = THREE_FACES[expected, :4]
        half = max(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        assert models.pose.calls == [[[max(cx - half, 0), max(cy - half, 0), min(cx + half, 384),
                                       min(cy + half, 384)]]]


@pytest.mark.parametrize("bad", ["biggest", "index:x", "index:-1", -1, "index"])
def test_face_select_rejects_unknown_values(stubs, bad):
    with pytest.raises(ValueError, match="face_select"):
        detect_and_parse(StubModels(), marked_frames(1), FaceSettings(face_select=bad))


def test_smoothing_off_keeps_boxes_identical(stubs):
    inputs = fixture_inputs()
    bboxes = [None if row[0] < 0 else tuple(row.tolist()) for row in inputs["bboxes"]]
    assert smooth_boxes(bboxes, 0) == bboxes
    frames = np.ascontiguousarray(inputs["frames_bgr"][..., ::-1])
    track, _ = detect_and_parse(StubModels(), frames, FaceSettings(smooth=0.0), bboxes=bboxes)
    assert track.face_boxes == bboxes


def test_smoothing_reduces_jitter_and_respects_gaps():
    jittery = [(100 + (4 if i % 2 else -4), 50, 160, 130) for i in range(10)] + [None] + [(300, 50, 360, 130)] * 3
    smoothed = smooth_boxes(jittery, 2.0)
    assert smoothed[10] is None and smoothed[11:] == jittery[11:]  # nothing leaks across the no-face frame
    x1 = np.array([b[0] for b in smoothed[2:8]])
    assert np.ptp(x1) < 8 / 2
    assert all(isinstance(v, int) for b in smoothed if b for v in b)


# ---------------------------------------------------------------- bad input

def test_parse_bboxes_accepts_lists_nulls_placeholders_and_one_box_for_all():
    assert parse_bboxes("", 3) is None and parse_bboxes("  \n", 3) is None
    assert parse_bboxes("[[1, 2, 30, 40], null, [0, 0, 0, 0]]", 3) == [(1, 2, 30, 40), None, None]
    assert parse_bboxes("[[1, 2, 30, 40.7], [-1, -1, -1, -1]]", 2) == [(1, 2, 30, 40), None]
    assert parse_bboxes("[5, 6, 50, 60]", 3) == [(5, 6, 50, 60)] * 3


@pytest.mark.parametrize("text,n,pattern", [
    ("[[1, 2, 3, 4],", 1, r"not valid JSON .*line 1, column"),
    ('{"a": 1}', 1, r"JSON list"),
    ("[[1, 2, 30, 40]]", 2, r"1 entries but the images have 2 frames"),
    ("[[1, 2, 30, 40], [1, 2, 30], null]", 3, r"entry 1 \(frame 1\).*four numbers"),
    ('[[1, 2, 30, 40], [1, "a", 3, 4]]', 2, r"entry 1 .*four numbers"),
    ("[[30, 2, 10, 40]]", 1, r"entry 0 .*x2 must be greater than x1"),
    ("[[500, 500, 600, 600]]", 1, r"entry 0 .*outside the 384x384 frame"),
])
def test_parse_bboxes_errors_say_what_and_where(text, n, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_bboxes(text, n, (384, 384))


def test_frames_rgba_and_grayscale_are_accepted():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((2, 8, 8, 1), 7, np.uint8)], axis=-1)
    assert np.array_equal(as_rgb_uint8(rgba), rgb)
    assert np.array_equal(as_rgb_uint8(torch.from_numpy(rgba)), rgb)
    gray = rgb[..., 0]
    assert np.array_equal(as_rgb_uint8(gray), np.repeat(gray[..., None], 3, -1))
    assert np.array_equal(as_rgb_uint8(gray[..., None]), np.repeat(gray[..., None], 3, -1))
    with pytest.raises(TypeError, match="uint8"):
        as_rgb_uint8(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        as_rgb_uint8(np.zeros((2, 8, 8, 5), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        as_rgb_uint8(np.zeros((0, 8, 8, 3), np.uint8))


def test_rgba_frames_go_through_detection(stubs):
    frames = np.concatenate([marked_frames(4), np.zeros((4, 384, 384, 1), np.uint8)], axis=-1)
    track, _ = detect_and_parse(boxlogic_models("v1.5"), frames)
    assert track.has_face == [True, False, True, True]


def test_tiny_frames_have_no_face_and_do_not_run_detectors(stubs):
    models = StubModels()
    track, crops = detect_and_parse(models, marked_frames(3, size=32))
    assert track.has_face == [False] * 3 and not crops.any() and models.requested == []
    assert "no face" in track.bbox_shift_range and list(track.blend) == [None] * 3


def test_no_face_anywhere_passes_frames_through(stubs):
    models = StubModels(keypoints={i: np.zeros((133, 2)) for i in range(3)})
    track, crops = detect_and_parse(models, marked_frames(3))
    assert track.has_face == [False] * 3 and "no face" in track.bbox_shift_range
    assert "parser" not in models.requested and not crops.any()


def test_faces_found_only_outside_the_frame_give_the_no_face_text_not_a_range(stubs):
    # random-weight detectors do this: boxes past the frame edge, which leave no pixel to lip-sync
    outside = np.array([[500, 500, 600, 600, 0.99]])
    models = StubModels(detections={0: outside, 1: outside}, keypoints={i: np.zeros((133, 2)) for i in range(2)})
    track, _ = detect_and_parse(models, marked_frames(2))
    assert track.face_boxes == [(500, 500, 600, 600)] * 2 and track.has_face == [False, False]
    assert "no face was found in any frame" in track.bbox_shift_range and "adjust range" not in track.bbox_shift_range


def test_huge_frames_are_batched_one_by_one(stubs):
    assert frames_per_batch(2160, 3840) == 1 and frames_per_batch(1080, 1920) == 3
    assert frames_per_batch(384, 384) == face_engine.MAX_FRAMES_PER_BATCH
    frames = np.zeros((2, 2160, 3840, 3), np.uint8)
    models = StubModels()
    track, crops = detect_and_parse(models, frames, bboxes=[[1800, 800, 2100, 1200]] * 2)
    assert [c[0] for c in models.parser.calls] == [1, 1] and track.has_face == [True, True]
    assert load_pack(name=PACK_NAME).nodes.face.frame_masks(track, [1]).shape == (1, 2160, 3840)


def test_detection_on_4k_frames_reports_every_batch(stubs):
    # a 4K frame is a detector batch of its own, minutes on a CPU: each one gets a line, in both passes
    lines = []
    frames = np.zeros((2, 2160, 3840, 3), np.uint8)
    frames[1, 0, 0] = 1
    keypoints = fixture("e_boxlogic")[0]["keypoints133"][0]
    models = StubModels(detections={0: THREE_FACES[:1], 1: THREE_FACES[:1]}, keypoints={0: keypoints, 1: keypoints},
                        runtime=StandaloneRuntime("cpu", report=lines.append))
    detect_and_parse(models, frames)
    assert lines == ["  1/4", "  2/4", "  3/4", "  4/4"]


def test_progress_ticks_and_interrupt(stubs):
    models = boxlogic_models("v1.5")
    detect_and_parse(models, marked_frames(4))
    assert models.runtime.ticks == 2  # one detection batch + one crop/mask batch
    models = boxlogic_models("v1.5")
    models.runtime.interrupt_after = 1
    with pytest.raises(InterruptedError):
        detect_and_parse(models, marked_frames(4))


def test_settings_and_parser_options_are_recorded(stubs):
    models = StubModels()
    track, _ = detect_and_parse(models, marked_frames(1), FaceSettings(
        parsing_mode="neck", left_cheek_width=60, right_cheek_width=120, extra_margin=25, bbox_shift=5),
        bboxes=[[100, 100, 200, 220]])
    assert models.parser.calls == [(1, "neck", 60, 120)]
    assert track.paste_boxes == [(100, 100, 200, 245)]
    settings = track.settings
    assert (settings.parsing_mode, settings.extra_margin, settings.boxes_given, settings.bbox_shift) == \
        ("neck", 25, True, 0)


# ---------------------------------------------------------------- the node

@pytest.fixture
def node_class(stubs):
    pack = load_pack(name=PACK_NAME)
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["FaceDetectAndParse"] == "MuseTalk Face Detect And Parse"
    return pack.NODE_CLASS_MAPPINGS["FaceDetectAndParse"]


def test_node_inputs(node_class):
    spec = node_class.INPUT_TYPES()
    required, optional = spec["required"], spec["optional"]
    assert required["model"][0] == "MUSETALK_MODEL" and required["images"][0] == "IMAGE"
    assert {k: required["bbox_shift"][1][k] for k in ("default", "min", "max")} == {"default": 0, "min": -100,
                                                                                     "max": 100}
    assert required["extra_margin"][1]["default"] == 10 and required["extra_margin"][1]["max"] == 40
    assert required["parsing_mode"][0] == ["jaw", "raw", "neck", "v1.0"]
    assert required["parsing_mode"][1]["default"] == "jaw"
    for side in ("left_cheek_width", "right_cheek_width"):
        assert {k: required[side][1][k] for k in ("default", "min", "max", "step")} == \
            {"default": 90, "min": 20, "max": 160, "step": 5}
    assert optional["bboxes"][1]["multiline"] and optional["smooth_boxes"][1]["default"] == 0.0
    assert node_class.RETURN_TYPES == ("MUSETALK_FACES", "IMAGE", "STRING")


def test_node_runs_on_comfy_images(node_class):
    inputs = fixture_inputs()
    images = torch.from_numpy(np.ascontiguousarray(inputs["frames_bgr"][..., ::-1])).float() / 255
    bboxes = "[" + ", ".join("null" if r[0] < 0 else str(r.tolist()) for r in inputs["bboxes"]) + "]"
    faces, crops, text = node_class().detect(StubModels(), images, 0, 10, "jaw", 90, 90, bboxes=bboxes)
    (masks,) = load_pack(name=PACK_NAME).NODE_CLASS_MAPPINGS["MuseTalkFaceMasks"]().masks(faces)
    assert type(faces).__name__ == "FaceTrack"  # the pack's own copy of the engine class
    assert crops.shape == (12, 256, 256, 3) and crops.dtype == torch.float32
    official = fixture("b_vae_unet_v15")[0]["crop_bgr"][..., ::-1]
    assert torch.equal((crops[0] * 255).round().to(torch.uint8), torch.from_numpy(official.copy()))
    assert masks.shape == (12, 384, 384) and not masks[5].any()
    assert isinstance(text, str) and faces.has_face[5] is False


def test_node_face_index_and_bad_bboxes(node_class):
    models = StubModels(detections={0: THREE_FACES}, keypoints={0: fixture("e_boxlogic")[0]["keypoints133"][3]})
    images = torch.from_numpy(marked_frames(1)).float() / 255
    faces, *_ = node_class().detect(models, images, 0, 10, "jaw", 90, 90, face_select="index", face_index=2)
    assert faces.face_boxes[0] == (280, 100, 330, 150)
    with pytest.raises(ValueError, match="2 entries but the images have 1 frames"):
        node_class().detect(models, images, 0, 10, "jaw", 90, 90, bboxes="[null, null]")


# ---------------------------------------------------------------- with the real networks

def test_real_networks_smoke(models_dir):
    """The real S3FD, DWPose and parser (random weights) behind detect_and_parse: the official box of frame 0, the
    no-face outcome it implies, and crops and masks where boxes are given."""
    from musetalk.models import ModelFiles, MuseTalkModels

    models = MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu"))
    frames = np.ascontiguousarray(fixture_inputs()["frames_bgr"][:2, ..., ::-1])
    track, crops = detect_and_parse(models, frames)
    # the official pipeline on frame 0 (fixtures d_s3fd, d_dwpose): face_alignment's box, and the landmark box from
    # DWPose's keypoints, unusable with random weights, so the detector's box is taken
    official = landmark_box(fixture("d_dwpose")[0]["keypoints"][0], fixture("d_s3fd")[1]["fa_box"], 0, "v1.5")
    assert official.fell_back and track.face_boxes[0] == official.box == (394, 286, 527, 435)
    # that box lies outside the 384x384 frame: no face anywhere, so no bbox_shift range and nothing to paste
    assert track.has_face == [False, False] and "no face was found in any frame" in track.bbox_shift_range
    frame_masks = load_pack(name=PACK_NAME).nodes.face.frame_masks
    assert not crops.any() and not frame_masks(track).any()

    box = (133, 44, 195, 132)
    track, crops = detect_and_parse(models, frames, bboxes=[list(box), None])
    paste = paste_box(box, "v1.5", 10, 384)
    assert track.has_face == [True, False] and track.paste_boxes == [paste, None]
    assert np.array_equal(crops[0], network_crop(frames[0], paste)) and not crops[1].any()
    masks = frame_masks(track)
    mask, (x0, y0, x1, y1) = track.blend[0]
    assert mask.dtype == np.uint8 and not masks[1].any()
    # the parser found a face region in the box's lower half, and nothing is pasted outside the crop box or in its
    # upper part (the mask is cut at the centre line; only the blur of its edge reaches a few rows above)
    inside = masks[0, y0:y1, x0:x1]
    assert (inside[(y1 - y0) // 2:] > 0).float().mean() > 0.1 and not inside[:(y1 - y0) * 2 // 5].any()
    outside = masks[0].clone()
    outside[y0:y1, x0:x1] = 0
    assert not outside.any()
    # detection, landmarks and parsing ran: none of them brought in the OpenMMLab stack or onnxruntime
    assert not [m for m in sys.modules if m.split(".")[0] in ("mmcv", "mmpose", "mmdet", "mmengine", "onnxruntime")]
