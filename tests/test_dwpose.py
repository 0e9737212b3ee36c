"""DWPose (RTMPose-l whole-body): strict loading, and keypoints against mmpose's `inference_topdown` (fixture d_dwpose).

Keypoints are argmax bins / 2 mapped to the frame, so they must match exactly. The one allowed exception is a logit
tie: two bins whose logits differ by float rounding only, where the batch size or BLAS kernel decides which wins
(flip averaging makes mirror-symmetric face points tie often). A mismatch passes only if the other result's bin is
such a tie in our own logits.
"""
import os
from functools import lru_cache

import cv2
import numpy as np
import pytest
import torch
from conftest import fixture, fixture_inputs

from musetalk.networks.rtmpose import (INPUT_SIZE, SIMCC_SPLIT_RATIO, _crop_geometry, _predict_logits, _warp_matrix,
                                       estimate_keypoints, load_rtmpose)
from musetalk.runtime import StandaloneRuntime
from musetalk.weights import WeightsError

RELPATH = os.path.join("dwpose", "dw-ll_ucoco_384.pth")
EXPECTED = "the DWPose checkpoint"
FIX = "download it again"
TIE_RTOL = 1e-5  # float32 rounding of logits of a few hundred, summed over a deep network


@pytest.fixture(scope="module")
def runtime():
    return StandaloneRuntime("cpu")


@pytest.fixture(scope="module")
def pose(models_dir, runtime):
    return runtime.manage(load_rtmpose(os.path.join(models_dir, RELPATH), EXPECTED, FIX), "face")


@pytest.fixture(scope="module")
def run(pose, runtime):
    """run(frame_indices, flip_test, boxes=None) -> (keypoints, scores), each configuration computed once."""
    frames = fixture_inputs()["frames_bgr"]

    @lru_cache(maxsize=None)
    def cached(indices, flip_test, boxes):
        return estimate_keypoints(pose, runtime, frames[list(indices)], boxes=boxes, flip_test=flip_test)

    return lambda indices, flip_test, boxes=None: cached(tuple(indices), flip_test, boxes)


def _logits(pose, frame, flip_test):
    center, scale = _crop_geometry((0, 0, frame.shape[1], frame.shape[0]))
    crop = cv2.warpAffine(frame, _warp_matrix(center, scale), INPUT_SIZE, flags=cv2.INTER_LINEAR)
    with torch.no_grad():
        x, y = _predict_logits(pose.module, crop[None], pose.device, pose.dtype, flip_test)
    return (x[0].numpy(), y[0].numpy()), center, scale


def assert_same_or_tie(ours, other, pose, frame, flip_test):
    """`ours` (the single-frame result for the whole `frame`) equals `other` [133,2], except where `other`'s bin ties
    with our argmax in our single-frame logits."""
    differs = np.argwhere(np.abs(ours - other) > 1e-3)
    if len(differs) == 0:
        return
    logits, center, scale = _logits(pose, frame, flip_test)
    for k, axis in differs:
        row = logits[axis][k]
        size = INPUT_SIZE[axis]
        other_bin = int(round((other[k, axis] - center[axis] + 0.5 * scale[axis]) / scale[axis] * size
                              * SIMCC_SPLIT_RATIO))
        gap = row.max() - row[other_bin]
        assert gap <= TIE_RTOL * abs(row.max()), (
            f"keypoint {k} axis {'xy'[axis]}: {ours[k, axis]} vs {other[k, axis]}, logit gap {gap} is no tie")


# ---- loading

def test_generated_checkpoint_loads_strictly(pose):
    net = pose.module
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert len(net.state_dict()) == 470


def test_raw_and_prefixed_and_extra_keys_load(models_dir, tmp_path):
    state = torch.load(os.path.join(models_dir, RELPATH), weights_only=True)["state_dict"]
    variants = {
        "raw.pth": state,
        "prefixed.pth": {"state_dict": {"module." + k: v for k, v in state.items()}},
        "extra.pth": {"state_dict": state, "meta": {"epoch": 270, "mmpose_version": "1.3.2"},
                      "optimizer": {"lr": torch.tensor(0.004)}},
    }
    probe = "head.gau.uv.weight"
    for name, content in variants.items():
        torch.save(content, tmp_path / name)
        net = load_rtmpose(str(tmp_path / name), EXPECTED, FIX)
        assert torch.equal(net.state_dict()[probe], state[probe]), name
        os.remove(tmp_path / name)


def test_missing_key_names_file(models_dir, tmp_path):
    state = torch.load(os.path.join(models_dir, RELPATH), weights_only=True)["state_dict"]
    del state["head.gau.gamma"]
    path = tmp_path / "dw-ll_ucoco_384.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(WeightsError) as error:
        load_rtmpose(str(path), EXPECTED, FIX)
    text = str(error.value)
    assert str(path) in text and "1 missing: head.gau.gamma" in text and EXPECTED in text and FIX in text


def test_truncated_file_names_file(models_dir, tmp_path):
    path = tmp_path / "dw-ll_ucoco_384.pth"
    with open(os.path.join(models_dir, RELPATH), "rb") as f:
        path.write_bytes(f.read(200000))
    with pytest.raises(WeightsError, match="damaged, truncated") as error:
        load_rtmpose(str(path), EXPECTED, FIX)
    assert str(path) in str(error.value)


def test_another_networks_file_is_rejected(models_dir):
    path = os.path.join(models_dir, "s3fd", "s3fd-619a316812.pth")
    with pytest.raises(WeightsError, match="does not match the network") as error:
        load_rtmpose(path, EXPECTED, FIX)
    assert path in str(error.value)


# ---- inference against mmpose

@pytest.mark.parametrize("flip_test,suffix", [(True, ""), (False, "_noflip")])
def test_keypoints_match_mmpose(run, pose, flip_test, suffix):
    golden, _ = fixture("d_dwpose")
    keypoints, scores = run([0], flip_test)
    assert keypoints.shape == (1, 133, 2) and keypoints.dtype == np.float32 and scores.dtype == np.float32
    assert_same_or_tie(keypoints[0], golden["keypoints" + suffix][0], pose, fixture_inputs()["frames_bgr"][0],
                       flip_test)
    np.testing.assert_allclose(scores, golden["keypoint_scores" + suffix], rtol=1e-4)


def test_batch_equals_single_frames(run, pose):
    frames = fixture_inputs()["frames_bgr"]
    batch_keypoints, batch_scores = run([0, 1], False)
    for i in range(2):
        keypoints, scores = run([i], False)
        assert_same_or_tie(keypoints[0], batch_keypoints[i], pose, frames[i], False)
        np.testing.assert_allclose(batch_scores[i], scores[0], rtol=1e-4)


def test_whole_image_box_equals_no_box(run):
    keypoints, scores = run([0], False)
    boxed_keypoints, boxed_scores = run([0], False, boxes=((0, 0, 384, 384),))
    np.testing.assert_array_equal(boxed_keypoints, keypoints)
    np.testing.assert_array_equal(boxed_scores, scores)


def test_bad_input_is_explained(pose, runtime):
    frame = fixture_inputs()["frames_bgr"][0]
    with pytest.raises(ValueError, match="uint8 BGR"):
        estimate_keypoints(pose, runtime, [frame.astype(np.float32)])
    with pytest.raises(ValueError, match="1 boxes for 2 frames"):
        estimate_keypoints(pose, runtime, [frame, frame], boxes=[None])
    with pytest.raises(ValueError, match="x2>x1"):
        estimate_keypoints(pose, runtime, [frame], boxes=[(10, 10, 10, 50)])
