"""MuseTalkPasteFaces: faces decoded elsewhere (core VAE Decode), optionally restored at 2x/4x, pasted like
BlendAndDecode pastes them; with spandrel (ComfyUI's model loader) on a random-weight ESRGAN file when installed."""
import json

import pytest
import torch

from conftest import fixture_inputs
from musetalk.compose import mouth_frames
from musetalk.inpaint import decode_batch
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.runtime import StandaloneRuntime
from test_lipsync_nodes import NO_FACE, run_nodes


pytestmark = pytest.mark.usefixtures("standalone_models")


@pytest.fixture(scope="module")
def pipeline(nodes, standalone_models):
    """The five-node run, the faces of its FaceDetectAndParse and its LATENT decoded to 256x256 faces."""
    images, _, _, latent, frames, _ = run_nodes(nodes, "v1.5", "jaw")
    model = MuseTalkModels("v1.5", ModelFiles([standalone_models]), StandaloneRuntime("cpu"))
    faces = _faces(nodes, model, images)
    vae = model.vae()
    model.runtime.load(vae)
    # decoded as BlendAndDecode decodes them (its batches of 4 output frames, only the frames with a face), so that
    # each face comes from the very same VAE call and the comparison can be exact
    samples, order = latent["samples"], latent["musetalk_source_index"].tolist()
    decoded = torch.zeros(len(samples), 256, 256, 3, dtype=torch.uint8)
    for start in range(0, len(samples), 4):
        active = mouth_frames(faces, order[start:start + 4])
        if active:
            decoded[[start + i for i in active]] = decode_batch(vae, samples[start:start + 4][active]).cpu()
    return images, faces, latent, frames, decoded.float() / 255


def _faces(nodes, model, images):
    boxes = [None if i == NO_FACE else box.tolist() for i, box in enumerate(fixture_inputs()["bboxes"])]
    return nodes["FaceDetectAndParse"]().detect(model, images, 0, 10, "jaw", 90, 90, json.dumps(boxes))[0]


def _paste(nodes, generated, latent, faces, images, batch_size=8, audio=None):
    return nodes["MuseTalkPasteFaces"]().paste(generated, latent, faces, images, batch_size, audio)


def test_256_faces_give_blend_and_decode_exactly(nodes, pipeline):
    images, faces, latent, frames, decoded = pipeline
    pasted, _ = _paste(nodes, decoded, latent, faces, images, batch_size=5)
    assert pasted.shape == frames.shape and torch.equal(pasted, frames)


def test_larger_faces_are_pasted_at_the_frame_resolution(nodes, pipeline):
    images, faces, latent, frames, decoded = pipeline
    twice = decoded.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # a 2x "restorer": 512x512
    pasted, _ = _paste(nodes, twice, latent, faces, images)
    assert pasted.shape == frames.shape
    order = latent["musetalk_source_index"].tolist()
    for t, source in enumerate(order):
        changed = (pasted[t] != images[source]).any(-1)
        expected = (frames[t] != images[source]).any(-1)
        if source == NO_FACE:
            assert not changed.any()
        else:  # the same region changes, to nearly the same pixels
            assert (changed & ~expected).sum() <= 0.01 * expected.sum()
            assert (pasted[t] - frames[t]).abs().mean() < 2 / 255


def test_audio_is_cut_like_blend_and_decode(nodes, pipeline):
    images, faces, latent, frames, decoded = pipeline
    audio = {"waveform": torch.zeros(1, 1, 16000 * 3), "sample_rate": 16000}
    _, fitted = _paste(nodes, decoded, latent, faces, images, audio=audio)
    assert fitted["waveform"].shape[-1] == round(len(frames) / 25 * 16000)


@pytest.mark.parametrize("generated, needle", [
    (torch.zeros(37, 256, 200, 3), "square RGB images"),
    (torch.zeros(36, 256, 256, 3), "36 faces for the LATENT's 37 output frames"),
])
def test_faces_that_do_not_fit_the_latent_are_refused(nodes, pipeline, generated, needle):
    images, faces, latent, _, _ = pipeline
    with pytest.raises(ValueError, match=needle):
        _paste(nodes, generated, latent, faces, images)


def tiny_esrgan_x2(nf=16, blocks=1, seed=0):
    """A random-weight Real-ESRGAN x2 state dict (RRDBNet: pixel-unshuffle in, two 2x upconvs), 1 MB instead of
    67 MB; spandrel recognises it by its keys and shapes (it expects 32 growth channels)."""
    generator = torch.Generator().manual_seed(seed)
    state, growth = {}, 32

    def conv(name, out, inp):
        state[name + ".weight"] = torch.randn(out, inp, 3, 3, generator=generator) * 0.02
        state[name + ".bias"] = torch.zeros(out)

    conv("conv_first", nf, 3 * 4)
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 5):
                conv(f"body.{b}.rdb{r}.conv{c}", growth, nf + (c - 1) * growth)
            conv(f"body.{b}.rdb{r}.conv5", nf, nf + 4 * growth)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, nf, nf)
    conv("conv_last", 3, nf)
    return state


def test_restored_faces_from_a_spandrel_model_file(nodes, pipeline, tmp_path):
    spandrel = pytest.importorskip("spandrel")
    images, faces, latent, frames, decoded = pipeline
    path = tmp_path / "RealESRGAN_x2plus.pth"
    torch.save(tiny_esrgan_x2(), path)
    model = spandrel.ModelLoader().load_from_file(str(path)).eval()
    assert model.architecture.name == "ESRGAN" and model.scale == 2
    with torch.no_grad():  # what core Upscale Image (using Model) does with an IMAGE
        restored = torch.clamp(model(decoded.movedim(-1, -3)).movedim(-3, -1), 0, 1)
    assert restored.shape == (37, 512, 512, 3)
    pasted, _ = _paste(nodes, restored, latent, faces, images)
    assert pasted.shape == frames.shape
    order = latent["musetalk_source_index"].tolist()
    for t, source in enumerate(order):
        changed = (pasted[t] != images[source]).any(-1)
        region = (frames[t] != images[source]).any(-1)
        if source == NO_FACE:
            assert not changed.any()
        else:
            assert changed.any() and (changed & ~region).sum() <= 0.01 * region.sum()
