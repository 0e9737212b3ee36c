"""audio_offset_ms: whole frames shift the token windows exactly, other values shift the audio; lengths never change."""
import numpy as np
import pytest
import torch

from musetalk import audio as A
from musetalk.audio_offset import (check_offset, extract_features_with_offset, shift_waveform, shift_windows,
                                   whole_frames)
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.runtime import StandaloneRuntime


def speech(seconds=1.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return torch.from_numpy(tone.astype(np.float32))[None]


@pytest.fixture(scope="module")
def models(models_dir):
    return {v: MuseTalkModels(v, ModelFiles([models_dir]), StandaloneRuntime("cpu")) for v in ("v1.5", "v1.0")}


@pytest.mark.parametrize("version", ["v1.5", "v1.0"])
@pytest.mark.parametrize("offset_ms, frames", [(80.0, 2), (-120.0, -3)])
def test_whole_frames_are_exact_window_shifts(models, version, offset_ms, frames):
    waveform = speech()
    plain = A.extract_features(models[version], waveform, 16000, 25.0)
    moved = extract_features_with_offset(models[version], waveform, 16000, 25.0, offset_ms)
    count = plain.frame_count
    assert moved.frame_count == count and torch.equal(moved.frame_times, plain.frame_times)
    tokens, shifted = plain.features, moved.features
    inside = range(max(frames, 0), count + min(frames, 0))
    for t in inside:  # frame t shows the mouth of frame t - frames
        assert torch.equal(shifted[t], tokens[t - frames])
        assert moved.loudness[t] == plain.loudness[t - frames]
    for t in set(range(count)) - set(inside):
        edge = min(max(t - frames, 0), count - 1)
        expected = tokens[edge] if version == "v1.0" else torch.zeros_like(tokens[0])
        assert torch.equal(shifted[t], expected) and moved.loudness[t] == A.SILENCE_DBFS


def test_other_offsets_shift_the_audio_before_the_features(models):
    waveform = speech()
    moved = extract_features_with_offset(models["v1.5"], waveform, 16000, 25.0, 10.0)
    expected = A.extract_features(models["v1.5"], shift_waveform(waveform.numpy(), 16000, 10.0), 16000, 25.0)
    plain = A.extract_features(models["v1.5"], waveform, 16000, 25.0)
    assert moved.frame_count == plain.frame_count == 37
    assert torch.equal(moved.features, expected.features) and not torch.equal(moved.features, plain.features)


def test_zero_offset_is_the_official_timing(models):
    waveform = speech()
    plain = A.extract_features(models["v1.5"], waveform, 16000, 25.0)
    same = extract_features_with_offset(models["v1.5"], waveform, 16000, 25.0, 0)
    assert torch.equal(same.features, plain.features) and torch.equal(same.index, plain.index)


def test_shift_waveform_keeps_the_length():
    samples = np.arange(1, 11, dtype=np.float32)[None]
    np.testing.assert_array_equal(shift_waveform(samples, 1000, 3.0), [[0, 0, 0, 1, 2, 3, 4, 5, 6, 7]])
    np.testing.assert_array_equal(shift_waveform(samples, 1000, -3.0), [[4, 5, 6, 7, 8, 9, 10, 0, 0, 0]])
    assert not shift_waveform(samples, 1000, 20.0).any()


def test_whole_frames_and_bad_offsets():
    assert whole_frames(40.0, 25.0) == 1 and whole_frames(-200.0, 25.0) == -5 and whole_frames(10.0, 25.0) is None
    assert whole_frames(1000 / 29.97, 29.97) == 1 and whole_frames(0.0, 30.0) == 0
    features = A.WhisperFeatures(torch.zeros(4, 5, 384), torch.zeros(3, 10, dtype=torch.long), 25.0,
                                 torch.zeros(3, dtype=torch.float64), torch.zeros(3), "v1.5", 16000, 0.12)
    assert shift_windows(features, 0) is features and shift_windows(features, 5).index.eq(-1).all()
    for bad in (float("nan"), 5000.0, "40"):
        with pytest.raises(ValueError, match="audio offset"):
            check_offset(bad)
