"""S3FD against the official detections on frame 0 (fixture d_s3fd), strict loading, batching and mixed frame sizes."""
import os

import numpy as np
import pytest
import torch
from conftest import fixture, fixture_inputs

from musetalk.networks.s3fd import detect_batch, detect_faces, first_face_box, load_s3fd, nms
from musetalk.runtime import StandaloneRuntime
from musetalk.weights import WeightsError

EXPECTED, FIX = "the S3FD face detector", "download s3fd-619a316812.pth again"
BOX_ATOL, SCORE_ATOL = 1e-3, 1e-5  # fixtures/README.md §3d


@pytest.fixture(scope="module")
def net(models_dir):
    return load_s3fd(os.path.join(models_dir, "s3fd", "s3fd-619a316812.pth"), EXPECTED, FIX)


@pytest.fixture(scope="module")
def golden():
    return fixture("d_s3fd")[0]


@pytest.fixture(scope="module")
def frame0_rgb():
    # the official reverses its BGR frame to RGB before subtracting the (BGR-ordered) means; we receive RGB
    return np.ascontiguousarray(fixture_inputs()["frames_bgr"][0][..., ::-1])


@pytest.fixture(scope="module")
def frame0(net, frame0_rgb):
    """Frame 0 alone, as MuseTalk calls the detector (one frame per call)."""
    with torch.inference_mode():
        return detect_batch(net, torch.from_numpy(frame0_rgb[None]))[0]


def assert_same_rows(ours, ref):
    """Equal multisets of (box, score) rows within the fixture tolerances, whatever their order."""
    assert ours.shape == ref.shape
    close = ((np.abs(ours[:, None, :4] - ref[None, :, :4]).max(-1) <= BOX_ATOL)
             & (np.abs(ours[:, None, 4] - ref[None, :, 4]) <= SCORE_ATOL))
    assert close.any(axis=1).all(), "some of our boxes have no counterpart"
    assert len(set(close.argmax(axis=1))) == len(ref), "two of our boxes match the same reference box"


def test_loads_generated_checkpoint_strictly(net, models_dir):
    state = torch.load(os.path.join(models_dir, "s3fd", "s3fd-619a316812.pth"), weights_only=True)
    assert set(net.state_dict()) == set(state)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    assert not net.training


def test_missing_key_is_reported(models_dir, tmp_path):
    state = torch.load(os.path.join(models_dir, "s3fd", "s3fd-619a316812.pth"), weights_only=True)
    del state["conv4_3_norm.weight"]
    path = str(tmp_path / "s3fd_missing.pth")
    torch.save(state, path)
    with pytest.raises(WeightsError, match="conv4_3_norm.weight") as error:
        load_s3fd(path, EXPECTED, FIX)
    assert path in str(error.value)


def test_truncated_file_is_reported(models_dir, tmp_path):
    with open(os.path.join(models_dir, "s3fd", "s3fd-619a316812.pth"), "rb") as f:
        data = f.read()
    path = str(tmp_path / "s3fd_truncated.pth")
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(WeightsError, match="cannot be read") as error:
        load_s3fd(path, EXPECTED, FIX)
    assert path in str(error.value)


def test_other_networks_file_is_reported(models_dir):
    path = os.path.join(models_dir, "dwpose", "dw-ll_ucoco_384.pth")
    with pytest.raises(WeightsError, match="does not match the network") as error:
        load_s3fd(path, EXPECTED, FIX)
    assert path in str(error.value) and EXPECTED in str(error.value)


def test_candidates_match_official(frame0, golden):
    ours, ref = frame0.candidates.numpy(), golden["raw_candidates"]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours[:, :4], ref[:, :4], rtol=0, atol=BOX_ATOL)
    np.testing.assert_allclose(ours[:, 4], ref[:, 4], rtol=0, atol=SCORE_ATOL)


def test_nms_keeps_the_official_set_in_score_order(frame0, golden):
    ours, ref = frame0.keep.numpy(), golden["nms_keep"]
    assert sorted(ours) == sorted(ref)  # the same candidates survive
    # the order is by score, highest first: by our own scores exactly, and by the official scores up to the scores'
    # tolerance, because candidates whose scores differ by less than that (frame 0 has exact ties, and pairs a few
    # 1e-7 apart whose order a different instruction set flips) may come in either order
    assert (np.diff(frame0.candidates[ours, 4].numpy()) <= 0).all()
    scores = golden["raw_candidates"][:, 4]
    np.testing.assert_allclose(scores[ours], scores[ref], rtol=0, atol=SCORE_ATOL)
    assert_same_rows(frame0.after_nms.numpy(), golden["after_nms"])


def test_final_boxes_and_musetalk_box(frame0, golden):
    faces = frame0.faces.numpy()
    assert_same_rows(faces, golden["final"])
    np.testing.assert_allclose(faces[:, 4], golden["final"][:, 4], rtol=0, atol=SCORE_ATOL)  # same score order
    assert first_face_box(faces) == tuple(golden["fa_box"].tolist())


def test_nms_over_faces_only_gives_the_same_faces(frame0, golden):
    # what detect_faces does: NMS over the boxes scoring above 0.5 only (no network run here)
    candidates = frame0.candidates[None]
    kept = nms(candidates[..., :4], candidates[..., 4], candidates[..., 4] > 0.5)[0]
    assert_same_rows(frame0.candidates[kept].numpy(), golden["final"])
    assert torch.equal(frame0.candidates[kept], frame0.faces)


def test_first_face_box_without_face():
    assert first_face_box(np.zeros((0, 5), np.float32)) is None
    assert first_face_box(np.array([[-3.7, 2.9, 10.2, 20.99, 0.9]], np.float32)) == (0, 2, 10, 20)


@pytest.fixture(scope="module")
def detector(net):
    runtime = StandaloneRuntime(device="cpu")
    return runtime, runtime.manage(net, "face")


def _alone(net, frame):
    with torch.inference_mode():
        return detect_batch(net, torch.from_numpy(frame[None]))[0].faces.numpy()


def test_identical_frames_in_one_batch_give_identical_results(net, detector, frame0_rgb):
    runtime, model = detector
    crop = np.ascontiguousarray(frame0_rgb[:96, :96])  # small: the network cost grows with the pixel count
    first, second = detect_faces(model, runtime, np.stack([crop, crop]))
    assert first.dtype == np.float32 and first.shape[1] == 5 and len(first) > 0
    np.testing.assert_array_equal(first, second)
    # a batch may pick other convolution kernels than a single frame: equal within float rounding
    assert_same_rows(first, _alone(net, crop))


def test_frames_of_different_sizes_in_one_call(net, detector, frame0_rgb):
    runtime, model = detector
    square = np.ascontiguousarray(frame0_rgb[:96, :96])
    wide = np.ascontiguousarray(frame0_rgb[100:170, 50:180])  # 70x130: not a multiple of the 32-pixel pooling
    results = detect_faces(model, runtime, [square, wide, square])
    assert len(results) == 3 and all(len(r) > 0 for r in results)
    np.testing.assert_array_equal(results[0], results[2])
    assert_same_rows(results[0], _alone(net, square))
    np.testing.assert_array_equal(results[1], _alone(net, wide))


def test_rejects_frames_that_are_not_uint8_rgb(detector):
    runtime, model = detector
    with pytest.raises(ValueError, match="frame 1 must be a uint8 RGB image"):
        detect_faces(model, runtime, [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])


def test_nms_per_frame_in_a_batch():
    # frame 0: the second box overlaps the first (IoU 0.70 with the +1 convention) and goes; frame 1 has no candidate
    boxes = torch.tensor([[[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]] * 2, dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.8, 0.7], [0.01, 0.02, 0.03]])
    kept = nms(boxes, scores, scores > 0.05)
    assert kept[0].tolist() == [0, 2] and kept[1].tolist() == []
