"""silence="source": which frames keep the source mouth, the fades at a pause's edges, and the mask scaling."""
import numpy as np
import pytest
import torch

from musetalk.audio import frame_loudness
from musetalk.silence import FULL, SilenceSettings, fade_mask, mask_levels, mouth_weights

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
