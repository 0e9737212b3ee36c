"""Keep the source video's mouth while nobody speaks (the `silence="source"` option).

The official MuseTalk generates a mouth for every frame, so in a pause the lips keep moving a little. With
`source`, a frame whose audio is silent, inside a silent run long enough to be a real pause, keeps the source frame's
own mouth: it needs no UNet step and no decode, so pauses are also faster. At the edges of each run the generated
mouth fades out and back in over a few frames, so the mouth never jumps.

Per output frame t this gives a mouth weight w[t] in [0, 1]: 1 = the generated mouth (every frame under
`generate`), 0 = the source mouth (the frame passes through like a frame without a face), in between a fade:
the paste mask is scaled by w, so the frame is w * generated + (1 - w) * source inside the mask.

    silent frame: its loudness (RMS dBFS of the audio in [t/fps, (t+1)/fps), `audio.frame_loudness`) is below
        `threshold_dbfs`.
    pause: a run of consecutive silent frames lasting at least MIN_PAUSE_SECONDS; shorter gaps between words keep
        the generated mouth (it closes there by itself).
    fade: inside a pause, frame t at distance d from the nearest spoken frame (d = 1 next to it) gets
        w = max(0, 1 - d / (n + 1)) with n = round(FADE_SECONDS * fps) (3 at 25 fps: 0.75, 0.5, 0.25, then 0).
        A pause that reaches the start or end of the clip fades only on its spoken side.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

SILENCE_MODES = ("generate", "source")
#: frames quieter than this (RMS dBFS, a full-scale sine is -3) count as silent: below quiet speech (-35 to -45),
#: above the room tone of a usable recording
DEFAULT_THRESHOLD_DBFS = -50.0
MIN_PAUSE_SECONDS = 0.3
FADE_SECONDS = 0.12
FULL = 255  # mask strength of a fully generated mouth


@dataclass
class SilenceSettings:
    """mode: "generate" (official: a generated mouth on every frame) or "source" (pauses keep the source mouth);
    threshold_dbfs: the loudness below which a frame is silent (used by "source" only)."""

    mode: str = "generate"
    threshold_dbfs: float = DEFAULT_THRESHOLD_DBFS

    def __post_init__(self):
        if self.mode not in SILENCE_MODES:
            raise ValueError(f"silence must be one of {SILENCE_MODES}, got {self.mode!r}")
        if not (isinstance(self.threshold_dbfs, (int, float)) and math.isfinite(self.threshold_dbfs)):
            raise ValueError(f"the silence threshold must be a number of dBFS (e.g. {DEFAULT_THRESHOLD_DBFS:g}), "
                             f"got {self.threshold_dbfs!r}")


def mouth_weights(loudness, fps, settings=None):
    """float32 [T] in [0, 1]: how much of the generated mouth each output frame shows (1 = all of it).

    loudness: [T] dBFS per output frame (`WhisperFeatures.loudness`); fps: the video frame rate."""
    settings = settings or SilenceSettings()
    loudness = torch.as_tensor(loudness, dtype=torch.float32).cpu()
    weights = torch.ones(len(loudness))
    if settings.mode == "generate" or not len(loudness):
        return weights
    silent = (loudness < settings.threshold_dbfs).numpy()
    min_run = max(1, math.ceil(MIN_PAUSE_SECONDS * fps - 1e-9))
    fade = max(1, round(FADE_SECONDS * fps))
    count = len(silent)
    for start, stop in _runs(silent):
        if stop - start < min_run:
            continue
        frames = np.arange(start, stop)
        distance = np.full(len(frames), np.inf)
        if start > 0:
            distance = np.minimum(distance, frames - (start - 1))
        if stop < count:
            distance = np.minimum(distance, stop - frames)
        weights[start:stop] = torch.from_numpy(np.maximum(0.0, 1.0 - distance / (fade + 1)).astype(np.float32))
    return weights


def _runs(flags):
    """(start, stop) of every run of True in a boolean array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist())


def mask_levels(weights):
    """Mouth weights -> int mask strengths 0..255 (255 leaves the paste mask as it is), one per frame."""
    levels = torch.round(torch.as_tensor(weights, dtype=torch.float32).cpu() * FULL).clamp(0, FULL)
    return levels.to(torch.int64).tolist()


def fade_mask(mask, level):
    """A uint8 paste mask (numpy) scaled to `level`/255, rounded; level 255 returns it unchanged."""
    if level == FULL:
        return mask
    return ((mask.astype(np.int32) * level + FULL // 2) // FULL).astype(np.uint8)
