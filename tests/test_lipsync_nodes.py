"""The five nodes chained as a workflow does, against the official scripts/inference.py output (f_pipeline_*)."""
import json

import numpy as np
import pytest
import torch

from conftest import fixture, fixture_inputs

CASES = {"v1.5": ("f_pipeline_head_v15", "jaw"), "v1.0": ("f_pipeline_v10", "v1.0")}
NO_FACE = 5  # the clip's frame without a face


_RUNS = {}


def run_nodes(nodes, version, parsing_mode, cycle="pingpong", batch_size=4):
    key = (version, parsing_mode, cycle, batch_size)
    if key not in _RUNS:
        _RUNS[key] = _run_nodes(nodes, version, parsing_mode, cycle, batch_size)
    return _RUNS[key]


def _run_nodes(nodes, version, parsing_mode, cycle, batch_size):
    inputs = fixture_inputs()
    images = torch.from_numpy(inputs["frames_bgr"][..., ::-1].copy()).float() / 255
    audio = {"waveform": torch.from_numpy(inputs["audio_a16"].astype(np.float32) / 32768)[None, None],
             "sample_rate": int(inputs["audio_a16_sr"])}
    boxes = [None if i == NO_FACE else box.tolist() for i, box in enumerate(inputs["bboxes"])]
    (model,) = nodes["LoadMuseTalkModels"]().load(version, "fp32")
    features, frame_count = nodes["AudioToWhisperFeatures"]().extract(model, audio, 25.0)
    faces, crops, _ = nodes["FaceDetectAndParse"]().detect(model, images, 0, 10, parsing_mode, 90, 90,
                                                                  json.dumps(boxes))
    (masks,) = nodes["MuseTalkFaceMasks"]().masks(faces)
    (latent,) = nodes["LatentLipInpaint"]().inpaint(model, faces, crops, features, batch_size, cycle)
    frames, fitted = nodes["BlendAndDecode"]().blend(model, latent, faces, images, batch_size, audio)
    return images, frame_count, masks, latent, frames, fitted


pytestmark = pytest.mark.usefixtures("standalone_models")


@pytest.mark.parametrize("version", ["v1.5", "v1.0"])
def test_frames_match_the_official_pipeline(nodes, version):
    name, parsing_mode = CASES[version]
    official, _ = fixture(name)
    images, frame_count, masks, latent, frames, fitted = run_nodes(nodes, version, parsing_mode)
    assert frame_count == {"v1.5": 37, "v1.0": 39}[version] == len(frames) == len(latent["samples"])
    ours = (frames * 255).round().to(torch.uint8).numpy()
    # The official run skips the no-face frame when it builds latents, so from output 5 on its faces come from
    # the wrong source frame (fixed here, README "What differs"): only outputs 0..4 are comparable.
    assert list(official["written_indices"][:5]) == [0, 1, 2, 3, 4]
    expected = official["frames_first8"][:5, ..., ::-1]
    diff = np.abs(ours[:5].astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 2 and (diff > 1).mean() < 0.005, (diff.max(), (diff > 0).mean())
    # the no-face frame is not dropped: it comes back unchanged, in place
    assert NO_FACE not in official["written_indices"]
    assert torch.equal(frames[NO_FACE], images[NO_FACE]) and masks[NO_FACE].max() == 0
    # the audio is cut to exactly the video's duration
    assert fitted["waveform"].shape[-1] == round(len(frames) / 25 * 16000)


def test_frames_after_a_no_face_frame_stay_aligned(nodes):
    """Output t must show source frame cycle(t): with latents from the right frame the pasted face matches it."""
    images, _, _, latent, frames, _ = run_nodes(nodes, "v1.5", "jaw")
    order = latent["musetalk_source_index"].tolist()
    assert order[:14] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 10]
    for t, source in enumerate(order):
        changed = (frames[t] - images[source]).abs().amax(-1) > 0
        if source == NO_FACE:
            assert not changed.any()
        else:  # only pixels inside the blend region may change
            assert changed.any() and changed.float().mean() < 0.2


def test_cycle_once_stops_at_the_shorter_input(nodes):
    _, _, _, latent, frames, fitted = run_nodes(nodes, "v1.5", "jaw", cycle="once", batch_size=5)
    assert len(frames) == 12 and latent["musetalk_source_index"].tolist() == list(range(12))
    assert fitted["waveform"].shape[-1] == round(12 / 25 * 16000)


# --- LATENT in ComfyUI's convention -------------------------------------------------------------------------------

def comfy_vae_decode(vae, samples):
    """What core VAE Decode does with a LATENT: decode `samples` as they are, then clamp((x + 1) / 2, 0, 1)."""
    with torch.no_grad():
        out = vae.module.decode(samples.to(vae.device, vae.dtype)).float()
    return torch.clamp((out + 1.0) / 2.0, min=0.0, max=1.0).permute(0, 2, 3, 1)


def comfy_vae_encode(vae, images):
    """What core VAE Encode does with an IMAGE: encode 2x - 1 and keep the posterior mean, unscaled."""
    with torch.no_grad():
        pixels = (images * 2.0 - 1.0).permute(0, 3, 1, 2).to(vae.device, vae.dtype)
        return vae.module.encode(pixels).float()


def test_core_vae_decode_shows_the_generated_faces(nodes):
    """LatentLipInpaint's samples are unscaled: decoding them as they are gives BlendAndDecode's faces (1 LSB)."""
    from musetalk.inpaint import decode_batch

    _, _, _, latent, _, _ = run_nodes(nodes, "v1.5", "jaw")
    (model,) = nodes["LoadMuseTalkModels"]().load("v1.5", "fp32")
    vae = model.vae()
    model.runtime.load(vae)
    samples = latent["samples"][:6]
    core = (comfy_vae_decode(vae, samples) * 255).round().to(torch.int16)
    ours = decode_batch(vae, samples).to(torch.int16)  # what BlendAndDecode pastes
    assert (core - ours).abs().max() <= 1
    # a latent left scaled by 0.18215 would decode to another picture altogether
    scaled = (comfy_vae_decode(vae, samples * 0.18215) * 255).round().to(torch.int16)
    assert (scaled - ours).abs().max() > 8


def test_blend_and_decode_reads_a_latent_from_core_vae_encode(nodes):
    """A LATENT from VAE Encode (unscaled, no MuseTalk keys) is decoded as it is and pasted in pingpong order."""
    from musetalk.blend import paste_faces

    images, _, _, _, _, _ = run_nodes(nodes, "v1.5", "jaw")
    (model,) = nodes["LoadMuseTalkModels"]().load("v1.5", "fp32")
    inputs = fixture_inputs()
    boxes = [None if i == NO_FACE else box.tolist() for i, box in enumerate(inputs["bboxes"])]
    faces, crops, _ = nodes["FaceDetectAndParse"]().detect(model, images, 0, 10, "jaw", 90, 90, json.dumps(boxes))
    vae = model.vae()
    model.runtime.load(vae)
    samples = comfy_vae_encode(vae, crops[:4])
    frames, _ = nodes["BlendAndDecode"]().blend(model, {"samples": samples}, faces, images, 4)
    assert len(frames) == 4
    decoded = (comfy_vae_decode(vae, samples) * 255).round().to(torch.uint8)
    blends = [faces.blend[i] for i in range(4)]
    expected = paste_faces((images[:4] * 255).round().to(torch.uint8), decoded, faces.paste_boxes[:4],
                           [m for m, _ in blends], [b for _, b in blends])
    diff = ((frames * 255).round().to(torch.int16) - expected.to(torch.int16)).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.01
