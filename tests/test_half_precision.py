"""Half precision: every network runs in fp16 and bf16 on the CPU and stays close to its fp32 result, the fp16
overflow guards hold where plain fp16 overflows, and the TF32 policy and dtype choices of the runtime.

fp16 tolerances from tests/data/fixtures/README.md §3b: the UNet prediction within 2e-3 relative (max |diff| /
max |reference|) and decoded faces within 3 LSB of the official fp32 results. The faces hold; the UNet prediction does
not on this random-weight checkpoint (3.2e-3: rounding only its weights to fp16 already moves it by 1.4e-3, only its
inputs by 0.7e-3, bench/README.md), so that check is a strict expected failure that flips the day it holds. bf16 keeps
3 mantissa bits fewer than fp16 and has no documented tolerance; its bounds here are 8 times the fp16 ones.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fixture, fixture_inputs
from torch.utils._python_dispatch import TorchDispatchMode

from musetalk import audio as A
from musetalk import inpaint
from musetalk.blend import resize_linear_u8
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.networks import rtmpose, s3fd, whisper
from musetalk.runtime import ManagedModel, StandaloneRuntime

FP16_UNET_REL, FP16_FACE_LSB = 2e-3, 3
BOUNDS = {"fp16": (FP16_UNET_REL, FP16_FACE_LSB), "bf16": (8 * FP16_UNET_REL, 8 * FP16_FACE_LSB)}
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def models_in(root, precision, version="v1.5"):
    return MuseTalkModels(version, ModelFiles([str(root)]), StandaloneRuntime("cpu"), precision)


def in_dtype(model, dtype):
    """A copy of a face ManagedModel whose network holds `dtype` (the runtime's policy keeps them fp32)."""
    return ManagedModel(torch.nn.Module.to(copy.deepcopy(model.module), dtype), model.role, model.device, dtype)


def relative(ours, reference):
    return float((ours - reference).abs().max() / reference.abs().max())


# --- dtype choice and TF32 policy ----------------------------------------------------------------------------------

def test_the_cpu_runs_the_precision_asked_for_and_auto_is_fp32():
    runtime = StandaloneRuntime("cpu")
    assert runtime.compute_dtype("unet", "fp16") == torch.float16
    assert runtime.compute_dtype("vae", "bf16") == torch.bfloat16
    assert runtime.compute_dtype("unet", "auto") == runtime.compute_dtype("audio", "auto") == torch.float32
    assert runtime.compute_dtype("face", "fp16") == torch.float32


def _precisions():
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


@pytest.mark.parametrize("role, inside", [("face", ("ieee", "ieee")), ("audio", ("ieee", "ieee")),
                                          ("unet", ("tf32", "tf32")), ("vae", ("tf32", "tf32"))])
def test_tf32_is_chosen_per_network_on_cuda_and_restored(role, inside):
    before = _precisions()
    model = ManagedModel(torch.nn.Linear(2, 2), role, torch.device("cuda"), torch.float32)
    with model.computing():
        assert _precisions() == inside
    assert _precisions() == before


@pytest.mark.parametrize("device, dtype", [("cpu", torch.float32), ("cuda", torch.float16)])
def test_tf32_settings_stay_untouched_where_they_do_not_apply(device, dtype):
    before = _precisions()
    with ManagedModel(torch.nn.Linear(2, 2), "face", torch.device(device), dtype).computing():
        assert _precisions() == before


# --- UNet, VAE, whisper against fp32 -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def latent_fixture():
    return fixture("b_vae_unet_v15")[0]


@pytest.mark.xfail(strict=True, reason="fp16 UNet prediction 3.2e-3 from fp32 on this checkpoint, above 2e-3")
@pytest.mark.parametrize("precision", HALF)
def test_unet_in_half_precision_stays_within_the_fp16_tolerance(models_dir, latent_fixture, precision):
    models = models_in(models_dir, precision)
    assert models.unet().dtype == HALF[precision]
    predicted = inpaint.inpaint_latents(models, torch.from_numpy(latent_fixture["latents"]),
                                        torch.from_numpy(latent_fixture["in_audio"]), [0, 0, 0, 0], batch_size=4)
    assert predicted.dtype == torch.float32 and torch.isfinite(predicted).all()
    assert relative(predicted, torch.from_numpy(latent_fixture["pred_latents"])) < BOUNDS[precision][0]


@pytest.mark.parametrize("precision", HALF)
def test_decode_in_half_precision_stays_within_the_fp16_tolerance(models_dir, latent_fixture, precision):
    models = models_in(models_dir, precision)
    vae = models.vae()
    assert vae.dtype == HALF[precision]
    models.runtime.load(vae)
    faces = inpaint.decode_batch(vae, inpaint.unscale(torch.from_numpy(latent_fixture["pred_latents"]), vae.dtype))
    diff = np.abs(faces.numpy().astype(np.int16) - latent_fixture["recon_bgr"][..., ::-1].astype(np.int16))
    assert diff.max() <= BOUNDS[precision][1]


@pytest.mark.parametrize("precision", HALF)
def test_whisper_features_in_half_precision(models_dir, precision):
    samples = fixture_inputs()["audio_a16"].astype(np.float32) / 32768.0
    waveform = torch.from_numpy(samples[None])
    reference = A.extract_features(models_in(models_dir, "fp32"), waveform, 16000, 25).features
    models = models_in(models_dir, precision)
    assert models.whisper().dtype == HALF[precision]
    features = A.extract_features(models, waveform, 16000, 25).features
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    assert (features - reference).norm() / reference.norm() < (2e-3 if precision == "fp16" else 2e-2)


def test_the_log_mel_stays_float32_whatever_the_encoder_dtype():
    # torch has no CPU stft in fp16: the mel is made in float32 and only the encoder input is cast
    mel = A.log_mel(torch.zeros(16000))
    assert mel.dtype == torch.float32


# --- overflow guards -----------------------------------------------------------------------------------------------

def test_whisper_layer_norm_keeps_fp16_activations_past_its_range_finite():
    torch.manual_seed(0)
    norm = whisper.LayerNorm(whisper.WIDTH)
    loud = (torch.randn(2, 10, whisper.WIDTH) * 1e4).clamp(-6e4, 6e4).half()  # a residual stream in the 1e4s
    expected = F.layer_norm(loud.float(), (whisper.WIDTH,))
    # squares of such values overflow fp16: a variance taken in the run dtype is infinite
    assert torch.isinf((loud * loud).sum(-1)).all()
    out = norm.half()(loud)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, atol=2e-3, rtol=2e-3)


def test_s3fd_l2norm_keeps_fp16_feature_maps_finite():
    torch.manual_seed(0)
    norm = s3fd.L2Norm(256)
    features = (torch.rand(1, 256, 4, 4) * 60).half()  # VGG conv3_3 values: tens per channel
    assert torch.isinf(features.pow(2).sum(dim=1)).all()  # what an fp16 sum of squares gives
    out = norm.half()(features)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), norm.float()(features.float()), atol=1e-3, rtol=1e-3)


# --- face networks: runnable in any dtype (small inputs: half precision is slow for them on the CPU) -------------

@pytest.fixture(scope="module")
def face_models(models_dir):
    models = models_in(models_dir, "fp32")
    return models.face_detector(), models.dwpose(), models.face_parser()


@pytest.fixture(scope="module")
def patch_rgb():
    return torch.from_numpy(np.ascontiguousarray(fixture_inputs()["frames_bgr"][0, 100:228, 100:228, ::-1]))


@pytest.mark.parametrize("precision", HALF)
def test_s3fd_scores_anchors_in_half_precision(face_models, patch_rgb, precision):
    detector = face_models[0].module
    with torch.inference_mode():
        scores, boxes = s3fd.score_anchors(detector, patch_rgb[None])
        half = torch.nn.Module.to(copy.deepcopy(detector), HALF[precision])
        half_scores, half_boxes = s3fd.score_anchors(half, patch_rgb[None])
    assert half_scores.dtype == half_boxes.dtype == torch.float32
    assert torch.isfinite(half_scores).all() and torch.isfinite(half_boxes).all()
    assert (half_scores - scores).abs().max() < (1e-2 if precision == "fp16" else 8e-2)
    confident = scores[0] > s3fd.FACE_SCORE
    assert (half_boxes[0][confident] - boxes[0][confident]).abs().max() < (1 if precision == "fp16" else 8)  # px


@pytest.mark.parametrize("precision", HALF)
def test_face_parser_runs_in_half_precision(face_models, patch_rgb, precision):
    parser = face_models[2].module
    images = (patch_rgb.permute(2, 0, 1)[None].float() / 255 - 0.45) / 0.225
    with torch.inference_mode():
        reference = parser(images)
        logits = torch.nn.Module.to(copy.deepcopy(parser), HALF[precision])(images.to(HALF[precision]))
    assert logits.dtype == HALF[precision] and torch.isfinite(logits).all()
    # random weights leave many near-ties between labels; most pixels still keep their label
    assert (logits.float().argmax(1) == reference.argmax(1)).float().mean() > 0.9


def test_landmark_logits_come_back_float32_from_a_half_network():
    calls = []

    def network(pixels):
        calls.append(pixels.dtype)
        x = pixels.mean(dim=(1, 2, 3))[:, None, None].expand(-1, 133, 576)
        return x.half(), x[..., :1].expand(-1, 133, 768).half()

    crops = np.zeros((2, 384, 288, 3), np.uint8)
    x, y = rtmpose._predict_logits(network, crops, torch.device("cpu"), torch.float16, flip_test=True)
    assert calls == [torch.float16, torch.float16] and x.dtype == y.dtype == torch.float32


# --- blending: nothing in float64 on the faces' device (MPS has no float64) --------------------------------------

class DtypesOnDevice(TorchDispatchMode):
    """Records the dtype of every tensor an operation produces on a device other than the CPU."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "cpu":
                self.dtypes.add(tensor.dtype)
        return out


def test_resize_for_the_paste_computes_nothing_in_float64_on_the_device():
    faces = torch.zeros(1, 256, 256, 3, dtype=torch.uint8, device="meta")  # "meta" plays the GPU
    with DtypesOnDevice() as seen:
        out = resize_linear_u8(faces, 173, 161)
    assert out.shape == (1, 173, 161, 3) and out.dtype == torch.uint8
    assert torch.float64 not in seen.dtypes and seen.dtypes <= {torch.uint8, torch.int32, torch.int64}
