"""silence="source": which frames keep the source mouth, the fades at a pause's edges, and the mask scaling."""
import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import fixture_inputs, load_pack
from musetalk.audio import frame_loudness
from musetalk.inpaint import cycle_indices, decode_batch
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.runtime import StandaloneRuntime
from musetalk.silence import FULL, SilenceSettings, fade_mask, mask_levels, mouth_weights
from test_lipsync_nodes import NO_FACE

RATE, FPS = 16000, 25.0


def bursts(*parts):
    """16 kHz audio of (seconds, loud) parts: a 220 Hz tone at -13 dBFS, or digital silence."""
    out = []
    for seconds, loud in parts:
        t = np.arange(int(seconds * RATE)) / RATE
        out.append((0.3 * np.sin(2 * np.pi * 220 * t) if loud else np.zeros_like(t)).astype(np.float32))
    return np.concatenate(out)


def weights_of(audio, **settings):
    loudness = frame_loudness(audio, int(len(audio) / RATE * FPS), FPS)
    return mouth_weights(loudness, FPS, SilenceSettings(**settings))


def test_generate_keeps_every_generated_mouth():
    assert torch.equal(weights_of(bursts((1, True), (1, False), (1, True))), torch.ones(75))


def test_a_pause_keeps_the_source_mouth_with_fades_at_both_edges():
    weights = weights_of(bursts((1, True), (1, False), (1, True)), mode="source").tolist()
    assert weights[:25] == [1.0] * 25 and weights[50:] == [1.0] * 25  # speech: generated
    assert weights[25:28] == [0.75, 0.5, 0.25] and weights[47:50] == [0.25, 0.5, 0.75]  # fades, 3 frames at 25 fps
    assert weights[28:47] == [0.0] * 19  # the source mouth, no network
    fade_out, fade_in = weights[24:29], weights[46:51]
    assert fade_out == sorted(fade_out, reverse=True) and fade_in == sorted(fade_in)


def test_short_gaps_and_loud_audio_stay_generated():
    assert weights_of(bursts((1, True), (0.2, False), (1, True)), mode="source").eq(1).all()  # 5 frames < 0.3 s
    assert weights_of(bursts((1, True)), mode="source", threshold_dbfs=-10).eq(0).all()  # -13 dBFS is "silent" here


def test_pauses_at_the_clip_edges_fade_on_the_spoken_side_only():
    weights = weights_of(bursts((0.6, False), (1, True), (0.6, False)), mode="source").tolist()
    assert weights[:12] == [0.0] * 12 and weights[12:15] == [0.25, 0.5, 0.75] and weights[15:40] == [1.0] * 25
    assert weights[40:43] == [0.75, 0.5, 0.25] and weights[43:] == [0.0] * 12
    assert weights_of(bursts((1, False)), mode="source").eq(0).all()


def test_mask_levels_scale_the_paste_mask():
    assert mask_levels(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])) == [255, 191, 128, 64, 0]
    mask = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert fade_mask(mask, FULL) is mask and not fade_mask(mask, 0).any()
    half = fade_mask(mask, 128).astype(int)
    assert half.max() == 128 and np.all(np.diff(half.reshape(-1)) >= 0)


def test_bad_settings():
    with pytest.raises(ValueError, match="silence must be one of"):
        SilenceSettings(mode="mute")
    with pytest.raises(ValueError, match="threshold"):
        SilenceSettings(mode="source", threshold_dbfs=float("nan"))


# ------------------------------------------------------------------------------------------- through the nodes

class Counting(torch.nn.Module):
    """Forwards to a network and counts the frames it is given: UNet steps, VAE encodes and decodes."""

    def __init__(self, module, role, counts):
        super().__init__()
        self.inner, self.role, self.counts = module, role, counts

    def forward(self, sample, *args, **kwargs):
        self.counts[self.role] += len(sample)
        return self.inner(sample, *args, **kwargs)

    def encode(self, x):
        self.counts["encode"] += len(x) // 2  # masked and reference crops of each frame
        return self.inner.encode(x)

    def decode(self, z):
        self.counts["decode"] += len(z)
        return self.inner.decode(z)


class CountingRuntime(StandaloneRuntime):
    def __init__(self):
        super().__init__("cpu")
        self.counts = Counter()

    def manage(self, module, role, precision="auto"):
        managed = super().manage(module, role, precision)
        if role in ("unet", "vae"):
            managed.module = Counting(managed.module, role, self.counts)
        return managed


def speech_silence_speech():
    """12 source frames (frame 5 without a face) under 0.2 s of speech, 0.6 s of digital silence, 0.2 s of speech:
    25 output frames, few enough to run every network at batch 1."""
    inputs = fixture_inputs()
    images = torch.from_numpy(inputs["frames_bgr"][..., ::-1].copy()).float() / 255
    t = np.arange(RATE // 5) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2).astype(np.float32)
    audio = np.concatenate([tone, np.zeros(RATE * 3 // 5, np.float32), tone])
    boxes = [None if i == NO_FACE else box.tolist() for i, box in enumerate(inputs["bboxes"])]
    return images, audio, boxes


@pytest.fixture(scope="module")
def runs(models_dir):
    nodes = load_pack().NODE_CLASS_MAPPINGS
    images, audio, boxes = speech_silence_speech()
    model = MuseTalkModels("v1.5", ModelFiles([models_dir]), CountingRuntime())
    features, _ = nodes["AudioToWhisperFeatures"]().extract(
        model, {"waveform": torch.from_numpy(audio)[None, None], "sample_rate": RATE}, FPS)
    faces, crops, _ = nodes["FaceDetectAndParse"]().detect(model, images, 0, 10, "jaw", 90, 90, json.dumps(boxes))
    out = {}
    for mode in ("generate", "source"):
        model.runtime.counts.clear()
        # batch 1: every frame's UNet step and decode are the same computation in both runs
        (latent,) = nodes["LatentLipInpaint"]().inpaint(model, faces, crops, features, 1, "pingpong", mode)
        frames, _ = nodes["BlendAndDecode"]().blend(model, latent, faces, images, 1)
        out[mode] = latent, (frames * 255).round().to(torch.uint8), Counter(model.runtime.counts)
    return images, faces, out


def test_silent_frames_keep_the_source_mouth_without_networks(runs):
    images, faces, out = runs
    sources = (images * 255).round().to(torch.uint8)
    latent, frames, counts = out["source"]
    weights = latent["musetalk_mouth_weight"]
    order = latent["musetalk_source_index"].tolist()
    assert len(frames) == 25
    kept = [t for t in range(25) if weights[t] == 0]
    assert kept == list(range(8, 17))  # the silence is frames 5..19, minus 3 fading frames at each edge
    for t in kept:
        assert torch.equal(frames[t], sources[order[t]])
    with_face = [t for t in range(25) if faces.paste_boxes[order[t]] is not None]
    generated = [t for t in with_face if weights[t] > 0]
    assert out["generate"][2]["unet"] == out["generate"][2]["decode"] == len(with_face)
    assert counts["unet"] == counts["decode"] == len(generated) < len(with_face)


def test_speech_frames_are_the_official_ones_and_the_edges_fade(runs):
    images, faces, out = runs
    sources = (images * 255).round().to(torch.uint8).to(torch.int32)
    latent, frames, _ = out["source"]
    _, generated, _ = out["generate"]
    weights = latent["musetalk_mouth_weight"].tolist()
    order = latent["musetalk_source_index"].tolist()
    spoken = [t for t in range(25) if weights[t] == 1]
    assert spoken == list(range(5)) + list(range(20, 25))
    assert torch.equal(frames[spoken], generated[spoken])
    for t in [*range(5, 8), *range(17, 20)]:  # the fades: the share of the generated change follows the weight
        if faces.paste_boxes[order[t]] is None:
            continue
        ours = (frames[t].to(torch.int32) - sources[order[t]]).abs().sum()
        full = (generated[t].to(torch.int32) - sources[order[t]]).abs().sum()
        assert abs(ours / full - weights[t]) < 0.05, (t, weights[t], float(ours / full))


def test_paste_faces_follows_the_silent_frames(runs, models_dir):
    """MuseTalkPasteFaces with the decoded faces of the LATENT gives BlendAndDecode's frames, silence included."""
    images, faces, out = runs
    latent, frames, _ = out["source"]
    model = MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu"))
    vae = model.vae()
    model.runtime.load(vae)
    decoded = torch.cat([decode_batch(vae, latent["samples"][i:i + 1]) for i in range(25)])
    pasted, _ = load_pack().NODE_CLASS_MAPPINGS["MuseTalkPasteFaces"]().paste(decoded.float() / 255, latent, faces,
                                                                                images, 8)
    assert torch.equal((pasted * 255).round().to(torch.uint8), frames)


def test_command_line_silence_source(models_dir, tmp_path, monkeypatch):
    """`--silence source`: the frames inside the pause are the source frames, as written, the others generated."""
    import wave

    from PIL import Image

    import musetalk.__main__ as cli

    monkeypatch.setenv("MUSETALK_MODELS", models_dir)
    images, audio, boxes = speech_silence_speech()
    sources = (images * 255).round().to(torch.uint8).numpy()
    os.makedirs(tmp_path / "frames")
    for i, frame in enumerate(sources):
        Image.fromarray(frame).save(tmp_path / "frames" / f"{i}.png")
    with wave.open(str(tmp_path / "speech.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(RATE)
        f.writeframes((audio * 32767).astype("<i2").tobytes())
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    assert cli.main(["lipsync", "--video", str(tmp_path / "frames"), "--audio", str(tmp_path / "speech.wav"),
                     "--out", str(tmp_path / "out.mp4"), "--bboxes", str(tmp_path / "boxes.json"),
                     "--silence", "source", "--frames-dir", str(tmp_path / "png")]) == 0
    written = sorted(os.listdir(tmp_path / "png"))
    ours = np.stack([np.asarray(Image.open(tmp_path / "png" / name)) for name in written])
    order = cycle_indices(len(sources), len(ours), "pingpong").tolist()
    assert len(ours) == 25
    for t, source in enumerate(order):
        unchanged = np.array_equal(ours[t], sources[source])
        assert unchanged == (8 <= t <= 16 or source == NO_FACE), t
