"""The latent path against the official outputs (fixtures b_vae_unet_v15 / b_vae_unet_v1), plus loader strictness.

Tolerances from tests/data/fixtures/README.md §3b/§4: latents and UNet predictions atol/rtol 1e-4, decoded faces
at most 1 LSB off on under 0.5% of the pixels. The fixtures are BGR; the engine works in RGB.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import checkpoint_generator
from conftest import fixture

from musetalk import inpaint
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.networks import winograd
from musetalk.networks.unet import LATENT_SCALE, audio_positional_encoding
from musetalk.networks.vae import AutoencoderKL, VAEConfig
from musetalk.runtime import StandaloneRuntime
from musetalk.weights import WeightsError

FIXTURES = {"v1.5": "b_vae_unet_v15", "v1.0": "b_vae_unet_v1"}
TOLERANCE = dict(atol=1e-4, rtol=1e-4)


def models_for(version, root, vae_file=None, precision="auto"):
    return MuseTalkModels(version, ModelFiles([str(root)], vae_file), StandaloneRuntime("cpu"), precision)


@pytest.fixture(scope="module", params=list(FIXTURES))
def case(request, models_dir):
    """(models, fixture arrays, the fixture crop in RGB [1,256,256,3]) for one version."""
    arrays, _ = fixture(FIXTURES[request.param])
    rgb = np.ascontiguousarray(arrays["crop_bgr"][None, :, :, ::-1])
    return models_for(request.param, models_dir), arrays, rgb


def assert_faces_close(faces, expected, max_fraction=0.005):
    diff = np.abs(np.asarray(faces, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < max_fraction, (diff.max(), (diff > 0).mean())


# --- VAE inputs and source latents -------------------------------------------------------------------------------

def test_vae_inputs_equal_the_official_preprocessing(case):
    _, arrays, rgb = case
    masked, reference = inpaint.vae_inputs(rgb)
    assert torch.equal(masked, torch.from_numpy(arrays["masked_in"]))
    assert torch.equal(reference, torch.from_numpy(arrays["ref_in"]))
    assert (masked[:, :, 128:] == -1).all()
    torch_masked, _ = inpaint.vae_inputs(torch.from_numpy(rgb))
    assert torch.equal(torch_masked, masked)


def test_vae_inputs_reject_a_wrong_shape():
    with pytest.raises(ValueError, match=r"uint8 RGB \[N,256,256,3\]"):
        inpaint.vae_inputs(np.zeros((1, 128, 128, 3), np.uint8))


def test_source_latents_are_the_official_posterior_means(case):
    models, arrays, rgb = case
    latents = inpaint.encode_sources(models, rgb)
    assert latents.dtype == torch.float32 and latents.shape == (1, 8, 32, 32)
    masked_mean, ref_mean = (torch.from_numpy(arrays[k]) for k in ("masked_mean", "ref_mean"))
    torch.testing.assert_close(latents[:, :4] / LATENT_SCALE, masked_mean, **TOLERANCE)
    torch.testing.assert_close(latents[:, 4:] / LATENT_SCALE, ref_mean, **TOLERANCE)
    torch.testing.assert_close(latents, torch.from_numpy(arrays["latents"]), **TOLERANCE)


# --- audio context, UNet step, decode ----------------------------------------------------------------------------

def test_audio_positional_encoding_is_the_official_one(case):
    _, arrays, _ = case
    official_pe = torch.from_numpy(arrays["audio_pe"] - arrays["in_audio"])
    torch.testing.assert_close(audio_positional_encoding().expand(4, -1, -1), official_pe, atol=1e-6, rtol=0)
    context = inpaint.audio_context(torch.from_numpy(arrays["in_audio"]), "cpu", torch.float32)
    assert torch.equal(context, torch.from_numpy(arrays["audio_pe"]))


def test_unet_step_matches_the_official_prediction(case):
    models, arrays, _ = case
    assert np.array_equal(arrays["in_latents"], np.repeat(arrays["latents"], 4, axis=0))  # what the oracle fed
    predicted = inpaint.inpaint_latents(models, torch.from_numpy(arrays["latents"]),
                                        torch.from_numpy(arrays["in_audio"]), [0, 0, 0, 0], batch_size=4)
    assert predicted.dtype == torch.float32 and predicted.shape == (4, 4, 32, 32)
    torch.testing.assert_close(predicted, torch.from_numpy(arrays["pred_latents"]), **TOLERANCE)


def _decode(models, latents, batch_size):
    vae = models.vae()
    models.runtime.load(vae)
    return torch.cat([inpaint.decode_batch(vae, latents[i:i + batch_size]) for i in range(0, len(latents), batch_size)])


def test_decoded_faces_match_the_official_reconstruction(case):
    models, arrays, _ = case
    faces = _decode(models, inpaint.unscale(torch.from_numpy(arrays["pred_latents"]), torch.float32), 4)
    assert faces.dtype == torch.uint8 and faces.shape == (4, 256, 256, 3)
    assert_faces_close(faces.numpy(), arrays["recon_bgr"][..., ::-1])


def test_results_do_not_depend_on_the_batch_size(models_dir):
    arrays, _ = fixture(FIXTURES["v1.5"])
    models = models_for("v1.5", models_dir)
    crop = arrays["crop_bgr"][:, :, ::-1]
    crops = np.stack([crop, crop[:, ::-1]])
    sources = {b: inpaint.encode_sources(models, crops, batch_size=b) for b in (1, 2)}
    torch.testing.assert_close(sources[2], sources[1], **TOLERANCE)
    features = torch.from_numpy(arrays["in_audio"][:3])
    order = inpaint.cycle_indices(2, 3, "pingpong")
    predicted = {b: inpaint.inpaint_latents(models, sources[1], features, order, batch_size=b) for b in (1, 2)}
    torch.testing.assert_close(predicted[2], predicted[1], **TOLERANCE)  # batch 2 leaves a partial last batch
    faces = {b: _decode(models, inpaint.unscale(predicted[1], torch.float32), b).numpy() for b in (1, 2)}
    assert_faces_close(faces[2], faces[1])


def test_unet_input_errors_are_explained(models_dir):
    models = models_for("v1.5", models_dir)
    latents, features = torch.zeros(2, 8, 32, 32), torch.zeros(3, 50, 384)
    with pytest.raises(ValueError, match="one index per audio frame"):
        inpaint.inpaint_latents(models, latents, features, [0, 1])
    with pytest.raises(ValueError, match=r"0\.\.1, got 0\.\.2"):
        inpaint.inpaint_latents(models, latents, features, [0, 1, 2])


# --- cycle order ---------------------------------------------------------------------------------------------------

def official_pingpong(n_sources, n_frames):
    """scripts/inference.py: cycle = frames + frames[::-1]; output i uses cycle[i % len(cycle)]."""
    frames = list(range(n_sources))
    cycle = frames + frames[::-1]
    return [cycle[i % len(cycle)] for i in range(n_frames)]


@pytest.mark.parametrize("n_sources", [1, 2, 3, 7])
def test_pingpong_is_the_official_cycle(n_sources):
    assert inpaint.cycle_indices(n_sources, 30, "pingpong").tolist() == official_pingpong(n_sources, 30)


def test_cycle_modes():
    assert inpaint.cycle_indices(3, 14).tolist() == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1]
    assert inpaint.cycle_indices(3, 7, "loop").tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert inpaint.cycle_indices(3, 7, "once").tolist() == [0, 1, 2]
    assert inpaint.cycle_indices(5, 2, "once").tolist() == [0, 1]
    assert inpaint.cycle_indices(4, 0).tolist() == []
    with pytest.raises(ValueError, match="pingpong"):
        inpaint.cycle_indices(3, 7, "bounce")
    with pytest.raises(ValueError, match="no source frame"):
        inpaint.cycle_indices(0, 7)


# --- the VAE in its three on-disk forms ----------------------------------------------------------------------------

LEGACY_TO_MODERN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def test_the_vae_gives_the_same_latents_from_all_three_file_forms(models_dir, tmp_path):
    from safetensors.torch import save_file

    arrays, _ = fixture(FIXTURES["v1.5"])
    crop = arrays["crop_bgr"][None, :, :, ::-1]
    legacy = torch.load(os.path.join(models_dir, "sd-vae", "diffusion_pytorch_model.bin"), weights_only=True)

    modern_root = tmp_path / "converted"
    (modern_root / "sd-vae").mkdir(parents=True)
    shutil.copy(os.path.join(models_dir, "sd-vae", "config.json"), modern_root / "sd-vae" / "config.json")
    modern = {}
    for key, value in legacy.items():
        module, _, leaf = key.rpartition(".")
        parent, _, name = module.rpartition(".")
        if ".attentions." in parent and name in LEGACY_TO_MODERN:
            key = f"{parent}.{LEGACY_TO_MODERN[name]}.{leaf}"
        modern[key] = value.contiguous()
    save_file(modern, str(modern_root / "sd-vae" / "diffusion_pytorch_model.safetensors"))

    single_file = tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"
    # with a training leftover the loader must ignore
    save_file({"model_ema.decay": torch.tensor(0.9999), **checkpoint_generator.original_vae_layout(legacy)},
              str(single_file))

    def latents(models):
        return inpaint.encode_sources(models, crop)

    reference = latents(models_for("v1.5", models_dir))
    torch.testing.assert_close(reference, torch.from_numpy(arrays["latents"]), **TOLERANCE)
    assert torch.equal(latents(models_for("v1.5", modern_root)), reference)
    assert torch.equal(latents(models_for("v1.5", tmp_path / "nowhere", vae_file=str(single_file))), reference)


# --- strict UNet loading -------------------------------------------------------------------------------------------

@pytest.fixture
def unet_root(models_dir, tmp_path):
    """A copy of the v1.5 UNet folder that a test may damage."""
    shutil.copytree(os.path.join(models_dir, "musetalkV15"), tmp_path / "musetalkV15")
    return tmp_path


def assert_explained(error, path):
    text = str(error.value)
    assert str(path) in text and "fix:" in text and "python -m musetalk download --version v1.5" in text, text


def test_truncated_unet_file(unet_root):
    path = unet_root / "musetalkV15" / "unet.pth"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError, match="damaged, truncated") as error:
        models_for("v1.5", unet_root).unet()
    assert_explained(error, path)


def test_unet_missing_a_key(unet_root):
    path = unet_root / "musetalkV15" / "unet.pth"
    state = torch.load(path, weights_only=True)
    del state["conv_in.weight"]
    torch.save(state, path)
    with pytest.raises(WeightsError, match="1 missing: conv_in.weight") as error:
        models_for("v1.5", unet_root).unet()
    assert_explained(error, path)


def test_config_that_is_not_musetalks(unet_root):
    path = unet_root / "musetalkV15" / "musetalk.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "in_channels": 4, "cross_attention_dim": 768}))  # a Stable Diffusion UNet
    with pytest.raises(WeightsError, match="not a MuseTalk UNet config") as error:
        models_for("v1.5", unet_root).unet()
    assert_explained(error, path)


def test_vae_file_given_as_unet(unet_root, models_dir):
    path = unet_root / "musetalkV15" / "unet.pth"
    shutil.copy(os.path.join(models_dir, "sd-vae", "diffusion_pytorch_model.bin"), path)
    with pytest.raises(WeightsError, match="does not match the network") as error:
        models_for("v1.5", unet_root).unet()
    assert_explained(error, path)


@pytest.mark.parametrize("change", [{"use_linear_projection": True}, {"attention_head_dim": [5, 10, 20, 20]},
                                    {"upcast_attention": True}, {"down_block_types": ["AttnDownBlock2D"] * 4},
                                    {"addition_embed_type": "text_time"}])
def test_unet_config_outside_the_supported_subset(unet_root, change):
    path = unet_root / "musetalkV15" / "musetalk.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(WeightsError, match="outside the supported SD-1.x subset") as error:
        models_for("v1.5", unet_root).unet()
    assert_explained(error, path)
    assert next(iter(change)) in str(error.value)


def test_unet_config_with_saved_defaults_loads(unet_root):
    """A config re-saved by a newer library spells out defaults (and bookkeeping keys) the official one omits."""
    path = unet_root / "musetalkV15" / "musetalk.json"
    defaults = {"_name_or_path": "musetalk", "upcast_attention": False, "use_linear_projection": False,
                "only_cross_attention": False, "transformer_layers_per_block": 1, "dropout": 0.0}
    path.write_text(json.dumps({**json.loads(path.read_text()), **defaults}))
    assert models_for("v1.5", unet_root).unet().module.config.attention_head_dim == 8


def test_vae_config_outside_the_supported_subset(models_dir, tmp_path):
    shutil.copytree(os.path.join(models_dir, "sd-vae"), tmp_path / "sd-vae")
    path = tmp_path / "sd-vae" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_quant_conv": False}))
    with pytest.raises(WeightsError, match=r"outside the supported SD-1.x subset \(use_quant_conv=False\)") as error:
        models_for("v1.5", tmp_path).vae()
    assert str(path) in str(error.value) and "fix:" in str(error.value)


def test_network_inputs_of_the_wrong_shape_are_explained(models_dir):
    models = models_for("v1.5", models_dir)
    unet, vae = models.unet().module, models.vae().module
    context = torch.zeros(1, 50, 384)
    with pytest.raises(ValueError, match=r"UNet sample must be \[B,8,H,W\] with H and W multiples of 8"):
        unet(torch.zeros(1, 4, 32, 32), 0, context)
    with pytest.raises(ValueError, match=r"multiples of 8, got \(1, 8, 30, 32\)"):
        unet(torch.zeros(1, 8, 30, 32), 0, context)
    with pytest.raises(ValueError, match=r"UNet context must be \[2,tokens,384\]"):
        unet(torch.zeros(2, 8, 32, 32), 0, context)
    with pytest.raises(ValueError, match="one timestep or one per sample"):
        unet(torch.zeros(1, 8, 32, 32), torch.zeros(3), context)
    with pytest.raises(ValueError, match=r"VAE images must be \[B,3,H,W\], got \(1, 256, 256, 3\)"):
        vae.encode(torch.zeros(1, 256, 256, 3))
    with pytest.raises(ValueError, match=r"VAE latents must be \[B,4,H,W\]"):
        vae.decode(torch.zeros(1, 8, 32, 32))


# --- Winograd convolutions ---------------------------------------------------------------------------------------

def test_winograd_vae_stays_within_the_official_tolerance(case, models_dir, monkeypatch):
    """The full-size VAE runs its 512-channel layers by F(4x4, 3x3); the small test VAE has none that wide, so here
    every 3x3 layer is built as one, a harder test of the same rounding against the official outputs."""
    official, arrays, rgb = case
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    models = models_for(official.version, models_dir)
    assert sum(isinstance(m, winograd.WinogradConv2d) for m in models.vae().module.modules()) > 20
    latents = inpaint.encode_sources(models, rgb)
    torch.testing.assert_close(latents, torch.from_numpy(arrays["latents"]), **TOLERANCE)
    faces = _decode(models, inpaint.unscale(torch.from_numpy(arrays["pred_latents"]), torch.float32), 4)
    assert_faces_close(faces.numpy(), arrays["recon_bgr"][..., ::-1])


def test_the_vae_builds_winograd_layers_only_where_both_widths_are_wide(case, models_dir):
    switched = [m for m in case[0].vae().module.modules() if isinstance(m, winograd.WinogradConv2d)]
    assert switched == []  # the small VAE is at most 64 channels wide
    config = VAEConfig(block_out_channels=(32, 32, 64, 512), norm_num_groups=32)
    with torch.device("meta"):
        vae = AutoencoderKL(config)
    wide = {name for name, m in vae.named_modules() if isinstance(m, winograd.WinogradConv2d)}
    assert "decoder.up_blocks.0.resnets.0.conv1" in wide and "decoder.up_blocks.0.upsamplers.0.conv" in wide
    assert "encoder.down_blocks.3.resnets.0.conv1" not in wide  # 64 -> 512: one side is narrow
    assert "encoder.down_blocks.3.resnets.0.conv2" in wide
    assert all(name.startswith(("encoder.down_blocks.3.", "encoder.mid_block.", "decoder.mid_block.",
                                "decoder.up_blocks.0.")) for name in wide)
    plain = torch.nn.Conv2d(512, 512, 3, padding=1)
    assert winograd.WinogradConv2d(512, 512, 3, padding=1).state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("shape", [(2, 8, 12, 16, 16), (3, 5, 7, 13, 9), (1, 4, 4, 1, 1)])
def test_winograd_convolution_equals_the_direct_one(shape, monkeypatch):
    n, channels, out_channels, height, width = shape
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1)  # one image per chunk, so the chunk loop runs
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, height, width, generator=generator)
    weight = torch.randn(out_channels, channels, 3, 3, generator=generator) / (9 * channels) ** 0.5
    bias = torch.randn(out_channels, generator=generator)
    exact = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    for b in (bias, None):
        got = winograd.winograd_conv3x3(x, weight, b)
        want = exact if b is not None else exact - bias.double().view(1, -1, 1, 1)
        assert got.shape == want.shape and got.is_contiguous()
        # a float32 direct convolution is ~1e-5 off here; F(4x4, 3x3) rounds a few times more
        torch.testing.assert_close(got.double(), want, atol=5e-5, rtol=0)


def test_winograd_layers_fall_back_where_they_do_not_apply():
    layer = torch.nn.Sequential(winograd.WinogradConv2d(4, 4, 3, padding=1))
    conv, x = layer[0], torch.randn(1, 4, 8, 8)
    direct = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.equal(layer(x), direct)  # autograd on: the ordinary convolution
    with torch.no_grad():
        torch.testing.assert_close(layer(x), direct, atol=1e-5, rtol=0)
        layer.double()
        assert torch.equal(layer(x.double()), torch.nn.functional.conv2d(x.double(), conv.weight, conv.bias, padding=1))
