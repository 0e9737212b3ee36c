"""Blend masks and paste-back against the official blending goldens (fixtures README §3c)."""
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fixture, fixture_inputs
from musetalk import blend, masks
from musetalk.networks.bisenet import load_bisenet
from musetalk.runtime import StandaloneRuntime

BBOX = [133, 44, 195, 132]
GOLDEN = {"raw": "c_blend_head_raw", "jaw": "c_blend_head_jaw", "neck": "c_blend_head_neck", "v1.0": "c_blend_v10"}
HEAD_MODES = ("raw", "jaw", "neck")
# README §3c: BiSeNet argmax may flip at near-ties with another torch/BLAS
MAX_PARSING_FLIPS = 0.001


def golden(mode):
    return fixture(GOLDEN[mode])


@pytest.fixture(scope="module")
def frame_bgr():
    return fixture_inputs()["frames_bgr"][0]


@pytest.fixture(scope="module")
def face256():
    return fixture("b_vae_unet_v15")[0]["recon_bgr"][0]


@pytest.fixture(scope="module")
def parsing(models_dir):
    runtime = StandaloneRuntime("cpu")
    path = os.path.join(models_dir, "face-parse-bisent", "79999_iter.pth")
    return runtime, runtime.manage(load_bisenet(path, "BiSeNet face parser", "regenerate the test checkpoints"), "face")


@pytest.fixture(scope="module")
def labels(parsing, frame_bgr):
    """Our label maps of frame 0 for the HEAD crop box (shared by raw/jaw/neck) and the v1.0 one."""
    runtime, parser = parsing
    rgb = frame_bgr[:, :, ::-1]
    boxes = {expand: masks.crop_box(BBOX, expand) for expand in (1.5, 1.2)}
    maps = masks.parse_faces(parser, runtime, [masks.crop_padded(rgb, boxes[1.5]), masks.crop_padded(rgb, boxes[1.2])])
    return {mode: maps[0 if masks.CROP_EXPAND[mode] == 1.5 else 1] for mode in masks.PARSING_MODES}


def crop_of(image, box):
    x1, y1, x2, y2 = box
    return image[max(y1, 0):y2, max(x1, 0):x2]


def paste_one(frame_bgr, face256, mask, box):
    out = blend.paste_faces(torch.from_numpy(frame_bgr)[None], torch.from_numpy(face256)[None], [BBOX], [mask], [box])
    return out[0].numpy()


@pytest.mark.parametrize("mode", masks.PARSING_MODES)
def test_crop_box_matches_official(mode):
    assert masks.crop_box(BBOX, masks.CROP_EXPAND[mode]) == golden(mode)[1]["crop_box"]


def test_crop_box_halves_before_expanding():
    # width 63: 63 // 2 * 1.5 = 46.5 -> 46, where 63 * 1.5 / 2 would give 47
    assert masks.crop_box([0, 0, 63, 10], 1.5) == [31 - 46, 5 - 46, 31 + 46, 5 + 46]


@pytest.mark.parametrize("mode", masks.PARSING_MODES)
def test_parsing512_matches_official(mode, labels):
    region = masks.mask_from_labels(labels[mode], mode)
    expected = golden(mode)[0]["parsing512"]
    assert region.dtype == np.uint8 and set(np.unique(region)) <= {0, 255}
    assert np.mean(region != expected) < MAX_PARSING_FLIPS


def test_jaw_dilation_grows_up_and_narrows_down():
    # spec oracle: a skin pixel at row 50 dilates to rows 34..56, columns centre-10..centre+10 (centre band: no erosion)
    labels = np.zeros((512, 512), np.uint8)
    labels[50, 256] = masks.SKIN
    rows, cols = np.nonzero(masks.mask_from_labels(labels, "jaw"))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (34, 56, 246, 266)


def test_cheek_widths_only_change_jaw():
    labels = np.full((512, 512), masks.SKIN, np.uint8)
    labels[:100] = 0
    assert (masks.mask_from_labels(labels, "raw", 20, 160) == masks.mask_from_labels(labels, "raw")).all()
    assert (masks.mask_from_labels(labels, "jaw", 20, 160) != masks.mask_from_labels(labels, "jaw")).any()
    with pytest.raises(ValueError, match="left_cheek_width"):
        masks.mask_from_labels(labels, "jaw", 300, 90)
    with pytest.raises(ValueError, match="parsing mode"):
        masks.mask_from_labels(labels, "chin")


@pytest.mark.parametrize("mode", masks.PARSING_MODES)
def test_prepare_mask_exact(mode):
    arrays, side = golden(mode)
    mask, box = masks.blend_mask(arrays["parsing512"], BBOX, mode, masks.PREPARED_BLUR_RATIO)
    assert box == side["crop_box"]
    np.testing.assert_array_equal(mask, arrays["prepare_mask"])


@pytest.mark.parametrize("mode", masks.PARSING_MODES)
def test_get_image_exact(mode, frame_bgr, face256):
    """Offline path: the mode's own blur (0.05 HEAD, 0.1 v1.0), the face resized and pasted through it."""
    arrays, side = golden(mode)
    mask, box = masks.blend_mask(arrays["parsing512"], BBOX, mode)
    out = paste_one(frame_bgr, face256, mask, box)
    np.testing.assert_array_equal(crop_of(out, box), arrays["get_image_crop"])
    outside = np.ones(frame_bgr.shape[:2], bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    np.testing.assert_array_equal(out[outside], frame_bgr[outside])


@pytest.mark.parametrize("mode", HEAD_MODES)
def test_get_image_blending_exact(mode, frame_bgr, face256):
    """Realtime path at HEAD: PIL paste through the prepared (0.1) mask."""
    arrays, side = golden(mode)
    out = paste_one(frame_bgr, face256, arrays["prepare_mask"], side["crop_box"])
    np.testing.assert_array_equal(crop_of(out, side["crop_box"]), arrays["get_image_blending_crop"])


def test_v10_realtime_blend_linear_within_one_lsb(frame_bgr, face256):
    """v1.0's realtime blend (cv2.blendLinear, float weights) is not reproduced; our PIL arithmetic is <= 1 LSB off."""
    arrays, side = golden("v1.0")
    out = crop_of(paste_one(frame_bgr, face256, arrays["prepare_mask"], side["crop_box"]), side["crop_box"])
    diff = np.abs(out.astype(int) - arrays["get_image_blending_crop"])
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.001


@pytest.mark.parametrize("mode", ["jaw", "v1.0"])
def test_blend_masks_end_to_end(mode, parsing, labels, frame_bgr):
    """The batched entry point: two faces and a frame without one (-> None); same masks as the step-by-step path."""
    runtime, parser = parsing
    frames = np.stack([frame_bgr, frame_bgr, frame_bgr])[..., ::-1]
    result = masks.blend_masks(parser, runtime, frames, [BBOX, None, BBOX], mode, blur_ratio=masks.PREPARED_BLUR_RATIO)
    assert result[1] is None
    expected, _ = masks.blend_mask(masks.mask_from_labels(labels[mode], mode), BBOX, mode, masks.PREPARED_BLUR_RATIO)
    for mask, box in (result[0], result[2]):
        assert box == golden(mode)[1]["crop_box"]
        # batch 2 vs batch 1 may flip near-tie labels on some BLAS; the mask then differs only around them
        assert np.mean(mask != expected) < 0.01


@pytest.mark.parametrize("mode", masks.PARSING_MODES)
def test_blend_masks_entry_point_gives_the_official_masks_exactly(mode, frame_bgr, monkeypatch):
    """The batched entry point behind a parser that answers the official parsing region: the official masks, bit for
    bit, whatever this machine's BLAS would make of BiSeNet's near-ties (test_parsing512_matches_official)."""
    arrays, side = golden(mode)
    labels = np.where(arrays["parsing512"] == 255, masks.MOUTH, 0).astype(np.uint8)  # every mode keeps the mouth
    assert np.array_equal(masks.mask_from_labels(labels, mode), arrays["parsing512"])
    parsed = []

    def official_parse(parser, runtime, crops):
        parsed.extend(crop.shape for crop in crops)
        return np.stack([labels] * len(crops))

    monkeypatch.setattr(masks, "parse_faces", official_parse)
    frames = np.stack([frame_bgr, frame_bgr, frame_bgr])[..., ::-1]
    result = masks.blend_masks(None, StandaloneRuntime("cpu"), frames, [BBOX, None, BBOX], mode,
                               blur_ratio=masks.PREPARED_BLUR_RATIO)
    x1, y1, x2, y2 = side["crop_box"]
    assert result[1] is None and parsed == [(y2 - y1, x2 - x1, 3)] * 2
    for mask, box in (result[0], result[2]):
        assert box == side["crop_box"]
        np.testing.assert_array_equal(mask, arrays["prepare_mask"])


def test_resize_linear_matches_fixture(face256):
    arrays, _ = golden("jaw")
    ours = blend.resize_linear_u8(torch.from_numpy(face256)[None], 88, 62)[0].numpy()
    np.testing.assert_array_equal(ours, arrays["face_resized"])


def test_resize_linear_bit_exact_with_cv2():
    rs = np.random.RandomState(7)
    sizes = [((256, 256), (88, 62)), ((256, 256), (256, 256)), ((256, 256), (128, 128)), ((256, 256), (1, 1)),
             ((1, 1), (5, 7)), ((3, 2), (1, 1)), ((2, 3), (300, 200)), ((256, 256), (700, 640)),
             ((257, 255), (128, 127)), ((7, 9), (14, 18))]
    sizes += [(tuple(rs.randint(1, 300, 2)), tuple(rs.randint(1, 300, 2))) for _ in range(25)]
    for (h, w), (oh, ow) in sizes:
        for image in (rs.randint(0, 256, (h, w, 3)), np.full((h, w, 3), 255), rs.randint(0, 2, (h, w, 3)) * 255):
            image = image.astype(np.uint8)
            ours = blend.resize_linear_u8(torch.from_numpy(image)[None], int(oh), int(ow))[0].numpy()
            np.testing.assert_array_equal(ours, cv2.resize(image, (int(ow), int(oh))), err_msg=f"{w}x{h} -> {ow}x{oh}")


def pil_paste(frame, face, face_box, mask, box):
    """What the official HEAD get_image_blending does, with PIL itself as the oracle."""
    body = Image.fromarray(frame)
    x1, y1, x2, y2 = face_box
    large = body.crop(box)
    large.paste(Image.fromarray(face), (x1 - box[0], y1 - box[1], x2 - box[0], y2 - box[1]))
    body.paste(large, tuple(box[:2]), Image.fromarray(mask))
    return np.asarray(body)


@pytest.mark.parametrize("face_box", [[2, 3, 40, 60], [70, 50, 118, 99], [-6, 80, 30, 104]])
def test_box_partly_outside_frame(face_box):
    rs = np.random.RandomState(3)
    frame = rs.randint(0, 256, (100, 120, 3)).astype(np.uint8)
    face = rs.randint(0, 256, (256, 256, 3)).astype(np.uint8)
    box = masks.crop_box(face_box, 1.5)
    assert box[0] < 0 or box[1] < 0 or box[2] > 120 or box[3] > 100
    np.testing.assert_array_equal(masks.crop_padded(frame, box), np.asarray(Image.fromarray(frame).crop(box)))
    mask = rs.randint(0, 256, (box[3] - box[1], box[2] - box[0])).astype(np.uint8)
    ours = blend.paste_faces(torch.from_numpy(frame)[None], torch.from_numpy(face)[None], [face_box], [mask], [box])
    resized = cv2.resize(face, (face_box[2] - face_box[0], face_box[3] - face_box[1]))
    np.testing.assert_array_equal(ours[0].numpy(), pil_paste(frame, resized, face_box, mask, box))


def test_frame_without_face_passes_through(frame_bgr, face256):
    arrays, side = golden("jaw")
    frames = torch.from_numpy(np.stack([frame_bgr, frame_bgr]))
    faces = torch.from_numpy(np.stack([face256, face256]))
    out = blend.paste_faces(frames, faces, [None, BBOX], [None, arrays["prepare_mask"]], [None, side["crop_box"]])
    np.testing.assert_array_equal(out[0].numpy(), frame_bgr)
    np.testing.assert_array_equal(crop_of(out[1].numpy(), side["crop_box"]), arrays["get_image_blending_crop"])


def test_paste_rejects_mismatched_mask(frame_bgr, face256):
    with pytest.raises(ValueError, match="does not match crop box"):
        paste_one(frame_bgr, face256, np.zeros((10, 10), np.uint8), masks.crop_box(BBOX, 1.5))
