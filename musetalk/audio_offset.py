"""Move the mouth earlier or later against the sound (`audio_offset_ms`), for lips that lead or lag the speech.

A positive offset moves the mouth later: output frame t shows the mouth of the audio at t/fps - offset. Use it when
the lips move before the sound; a negative offset when they move after it. The output keeps the speech's length
and every frame keeps its audio time (frame t is still shown at t/fps): only which audio drives which mouth moves.

    whole frames (offset * fps / 1000 an integer k, e.g. 40 ms steps at 25 fps): frame t takes the token window of
        frame t - k exactly; frames whose window would lie before the start or past the end read what the
        version reads past the audio's edges (v1.5: zeros, its padding; v1.0: the edge window, its replication).
    any other value: the waveform itself is shifted by round(offset * rate / 1000) samples before the features are
        computed (zeros come in at one end, as many samples leave at the other), so the clip's length and frame
        count do not change; the whisper encoder then sees the shifted audio.

The per-frame loudness that `silence.py` reads moves with the mouth in both cases (silence past the edges).
0 (the default) leaves the official timing exactly as it is.
"""
import math
from dataclasses import replace

import numpy as np
import torch

from .audio import SILENCE_DBFS, check_fps, check_waveform, extract_features

MAX_OFFSET_MS = 2000.0


def check_offset(offset_ms):
    if not (isinstance(offset_ms, (int, float)) and math.isfinite(offset_ms)) or abs(offset_ms) > MAX_OFFSET_MS:
        raise ValueError(f"audio offset {offset_ms!r} ms is not valid: give a number of milliseconds between "
                         f"-{MAX_OFFSET_MS:g} and {MAX_OFFSET_MS:g} (positive moves the mouth later)")
    return float(offset_ms)


def whole_frames(offset_ms, fps):
    """The offset as a whole number of frames at `fps`, or None when it is not one."""
    frames = offset_ms * fps / 1000.0
    nearest = round(frames)
    return nearest if abs(frames - nearest) < 1e-6 else None


def extract_features_with_offset(models, waveform, sample_rate, fps, offset_ms=0.0):
    """`audio.extract_features` with the mouth moved by `offset_ms` (see the module text)."""
    offset_ms, fps = check_offset(offset_ms), check_fps(fps)
    frames = whole_frames(offset_ms, fps)
    if frames is not None:
        return shift_windows(extract_features(models, waveform, sample_rate, fps), frames)
    samples, sample_rate = check_waveform(waveform, sample_rate)
    return extract_features(models, shift_waveform(samples, sample_rate, offset_ms), sample_rate, fps)


def shift_windows(features, frames):
    """WhisperFeatures whose frame t has the token window (and loudness) of frame t - `frames`."""
    if frames == 0:
        return features
    count = features.frame_count
    taken = torch.arange(count) - frames
    outside = (taken < 0) | (taken >= count)
    taken = taken.clamp(0, max(count - 1, 0))
    index = features.index[taken]
    if features.version != "v1.0":
        index[outside] = -1  # v1.5 pads with zero windows; v1.0 already repeats its edge windows
    loudness = features.loudness[taken].masked_fill(outside, SILENCE_DBFS)
    return replace(features, index=index, loudness=loudness)


def shift_waveform(samples, sample_rate, offset_ms):
    """[C,T] float32 samples delayed by `offset_ms` (advanced when negative), zero-filled, the same length."""
    shift = round(offset_ms * sample_rate / 1000.0)
    out = np.zeros_like(samples)
    length = samples.shape[1]
    if shift >= 0:
        out[:, shift:] = samples[:, :max(length - shift, 0)]
    else:
        out[:, :max(length + shift, 0)] = samples[:, -shift:]
    return out
