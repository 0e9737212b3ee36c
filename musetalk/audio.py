"""Audio -> per-video-frame whisper tokens [T,50,384], the way each official MuseTalk version computes them.

    waveform --16 kHz mono--> log-mel --whisper-tiny encoder, 5 depths--> [N,5,384] at 50 Hz --10-frame windows-->
    [T,50,384]: for video frame f, 10 consecutive encoder frames x 5 depths (token t*5 + d)

v1.5 (HEAD `audio_processor.py`): librosa-style load (channel average, soxr "HQ"), 30 s pieces each zero-padded in the
waveform and normalised on their own, ln_post on the last depth, zero-padded windows.
v1.0 (`whisper/audio2feature.py`): ffmpeg-style load (libswresample, s16), one log-mel of the whole file normalised
globally and cut into 3000-frame segments padded in the log-mel domain, no ln_post, edge-replicated windows and
the original frame count (two frames past the end at 25 fps).
Where this differs from the official code, on purpose:
* v1.5 uses the float fps where the official truncates it with `int(fps)` (29.97 -> 29 drifts 3% per second).
* windows that run past the official padding read zeros instead of exiting (clips under ~0.1 s, and the last
  frames at 50 fps and above, where the official right padding of 6 * ceil(50/fps) frames is too short).
* digital silence is valid input (a muted stretch gives closed-mouth tokens); empty or non-finite audio is an error.
At 25 fps both versions are bit-for-bit the official window and frame-count arithmetic.
"""
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT, HOP = 400, 160
N_MELS = 80
PIECE_SAMPLES = 30 * SAMPLE_RATE  # whisper's fixed 30 s input
PIECE_MEL_FRAMES = PIECE_SAMPLES // HOP  # 3000
FEATURE_RATE = 50  # encoder frames per second (conv2 halves the 100 Hz mel)
WINDOW = 10  # encoder frames per video frame: 2 * (pad_left 2 + 1 + pad_right 2)
PAD_LEFT = 2
TOKENS, TOKEN_DIM = 50, 384
# 30 s pieces per encoder call: one, as the official code encodes them; the encoder's activations then do not grow
# with the clip's length, and a piece costs the whisper-tiny encoder little even on a GPU
PIECES_PER_BATCH = 1
MIN_RATE, MAX_RATE = 8000, 192000
MAX_FPS = 240.0
LOUDNESS_BLOCK_FRAMES = 4096  # video frames whose loudness is summed at once
SILENCE_DBFS = -120.0  # loudness floor, so that digital silence stays a finite number
# ffmpeg's default layout per channel count (av_channel_layout_default), which it assumes for unlabelled channels
FFMPEG_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


@dataclass
class WhisperFeatures:
    """The audio conditioning of one clip, one entry per output video frame.

    hidden: [N,5,384] float32 CPU, the whisper encoder's five depths at 50 Hz.
    index: [T,10] int64, the encoder frames of each video frame's window (-1 = zeros; `gather_windows`).
    frame_times: [T] float64 seconds, the start of the audio span frame f shows (f / fps).
    loudness: [T] float32 RMS in dBFS (a full-scale square wave is 0) of the 16 kHz audio over [f/fps, (f+1)/fps);
        SILENCE_DBFS (-120) for digital silence and for v1.0's frames past the end of the audio.
    sample_rate: the rate the features were computed at (always 16000); duration: seconds of the input audio.

    The UNet's tokens, 50*384 floats per video frame, are built from `hidden` when asked for (`windows`, `window`):
    neighbouring windows share most encoder frames, so the encoder output is 5x smaller at 25 fps (23 MB against
    110 MB per minute), and a long clip's tokens need never exist all at once.
    """

    hidden: torch.Tensor
    index: torch.Tensor
    fps: float
    frame_times: torch.Tensor
    loudness: torch.Tensor
    version: str
    sample_rate: int
    duration: float

    @property
    def frame_count(self):
        return self.index.shape[0]

    @property
    def features(self):
        """[T,50,384] float32, the UNet's audio tokens of every frame, before its positional encoding."""
        return self.window(0, self.frame_count)

    def window(self, start, stop):
        """The tokens of frames start..stop-1: [stop-start,50,384] float32."""
        return gather_windows(self.hidden, self.index[start:stop])

    def windows(self, frames):
        """The tokens of the video frames `frames` (ints), built a slice at a time when asked for: `TokenWindows`."""
        return TokenWindows(self.hidden, self.index[torch.as_tensor(frames, dtype=torch.long)])


class TokenWindows:
    """Audio tokens of some video frames, made only when sliced: `windows[a:b]` is [b-a,50,384] float32 and costs
    b-a windows, whatever the clip's length; `len(windows)` is the number of frames."""

    def __init__(self, hidden, index):
        self._hidden, self._index = hidden, index

    def __len__(self):
        return len(self._index)

    def __getitem__(self, frames):
        return gather_windows(self._hidden, self._index[frames])


def extract_features(models, waveform, sample_rate, fps):
    """A clip's whisper tokens per video frame, with the audio path of `models.version`.

    waveform: [C,T] or [1,C,T] (ComfyUI AUDIO, one clip) float in [-1,1], or int16 samples; 1 to 8 channels.
    sample_rate: 8000..192000 Hz. fps: the video frame rate (float, 0 < fps <= 240; 29.97 stays 29.97).
    Runs the whisper encoder on its ManagedModel's device and dtype; returns float32 CPU tensors.
    """
    samples, sample_rate = check_waveform(waveform, sample_rate)
    fps = check_fps(fps)
    audio = resample_to_16k(samples, sample_rate, models.version)
    check_length(len(audio), fps)
    if models.version == "v1.0":
        mel, lengths = log_mel_v10(audio)
        hidden = encode(models.whisper(), models.runtime, mel, final_norm=False)
        # each segment keeps the encoder frames of its real (unpadded) mel frames; only the last segment is short, so
        # they are a prefix of all frames: a view, so that a long clip's encoder output is never held twice
        hidden = hidden.flatten(0, 1)[:sum(n // 2 for n in lengths)]
        index = frame_index_v10(len(hidden), fps)
    else:
        mel = log_mel_v15(audio)
        hidden = encode(models.whisper(), models.runtime, mel, final_norm=True).flatten(0, 1)
        # drop the encoded padding: a view, so that a long clip's encoder output is never held twice (the padding,
        # less than one 30 s piece, stays allocated)
        hidden = hidden[:math.floor(len(audio) / SAMPLE_RATE * FEATURE_RATE)]
        index = frame_index_v15(len(audio), len(hidden), fps)
    return WhisperFeatures(hidden=hidden, index=index, fps=fps,
                           frame_times=torch.arange(len(index), dtype=torch.float64) / fps,
                           loudness=frame_loudness(audio, len(index), fps), version=models.version,
                           sample_rate=SAMPLE_RATE, duration=samples.shape[1] / sample_rate)


# ---------------------------------------------------------------------------------------------- input checks

def check_waveform(waveform, sample_rate):
    """-> ([C,T] float32 numpy, int rate); raises ValueError naming the problem and the fix."""
    if isinstance(sample_rate, float) and sample_rate.is_integer():
        sample_rate = int(sample_rate)
    if not isinstance(sample_rate, (int, np.integer)) or not MIN_RATE <= sample_rate <= MAX_RATE:
        raise ValueError(f"audio: sample rate {sample_rate!r} is not supported; it must be a whole number of Hz "
                         f"between {MIN_RATE} and {MAX_RATE} (resample the audio first)")
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu()
        waveform = (waveform.float() if waveform.is_floating_point() else waveform).numpy()
    samples = np.asarray(waveform)
    if samples.ndim == 3:
        if samples.shape[0] != 1:
            raise ValueError(f"audio: the waveform holds a batch of {samples.shape[0]} clips [B,C,T] = "
                             f"{list(samples.shape)}; MuseTalk lip-syncs one clip: pass one (split the batch first)")
        samples = samples[0]
    if samples.ndim == 1:
        samples = samples[None]
    if samples.ndim != 2:
        raise ValueError(f"audio: the waveform must be [C,T] or [1,C,T], got shape {list(samples.shape)}")
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / 32768.0  # what soundfile and ffmpeg's s16 -> float give
    elif not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"audio: samples must be float in [-1, 1] or int16, got {samples.dtype}")
    if samples.shape[0] == 0 or samples.shape[1] == 0:
        raise ValueError(f"audio: the waveform is empty (shape [C,T] = {list(samples.shape)}); "
                         "give audio that contains sound")
    if samples.shape[0] > len(FFMPEG_LAYOUTS):
        raise ValueError(f"audio: the waveform has {samples.shape[0]} channels (shape [C,T] = {list(samples.shape)}); "
                         f"at most {len(FFMPEG_LAYOUTS)} are supported. If it is [T,C], transpose it; "
                         "otherwise downmix it first")
    bad = ~np.isfinite(samples)
    if bad.any():
        channel, t = np.argwhere(bad)[0]
        raise ValueError(f"audio: {int(bad.sum())} samples are NaN or infinite, the first in channel {channel} at "
                         f"sample {t} ({t / sample_rate:.3f} s); fix or re-export the audio")
    return samples.astype(np.float32, copy=False), int(sample_rate)


def check_fps(fps):
    fps = float(fps)
    if not 0 < fps <= MAX_FPS:  # also rejects NaN
        raise ValueError(f"fps: {fps} is not a video frame rate; it must be above 0 and at most {MAX_FPS:g} "
                         "(give the video's own frame rate)")
    return fps


def check_length(n, fps):
    seconds = n / SAMPLE_RATE
    if math.floor(seconds * fps) < 1 or n < 2 * HOP:
        raise ValueError(f"audio: the clip is {seconds:.4f} s long, shorter than one video frame at {fps:g} fps "
                         "(or 20 ms); MuseTalk needs at least that much audio")


# ---------------------------------------------------------------------------------------------- resampling

def resample_to_16k(samples, sample_rate, version):
    """[C,T] float32 -> [T'] float32 mono at 16 kHz, as the version's official loader does.

    v1.5: librosa.load(sr=16000): float32 channel average, then soxr "HQ", length ceil(T * 16000 / rate).
    v1.0: `ffmpeg -ac 1 -ar 16000 -f s16le` then int16 / 32768: libswresample (through PyAV) downmixes with
        ffmpeg's matrix (5.1 centre/surround weights, LFE dropped) and resamples; quantised to int16.
    """
    if version == "v1.0":
        return _ffmpeg_s16_mono(samples, sample_rate)
    mono = samples[0] if samples.shape[0] == 1 else np.mean(samples, axis=0)
    if sample_rate == SAMPLE_RATE:
        return mono
    import soxr

    resampled = soxr.resample(mono, sample_rate, SAMPLE_RATE, quality="HQ")
    n = int(np.ceil(mono.shape[-1] * (float(SAMPLE_RATE) / sample_rate)))  # librosa's fix_length
    return np.asarray(np.pad(resampled, (0, max(0, n - len(resampled))))[:n], dtype=np.float32)


def _ffmpeg_s16_mono(samples, sample_rate):
    import av

    layout = FFMPEG_LAYOUTS[samples.shape[0]]
    scaled = samples * 32768.0
    options = f"osr={SAMPLE_RATE}:ochl=mono:osf=s16"
    if np.array_equal(scaled, np.round(scaled)) and -32768 <= scaled.min() and scaled.max() <= 32767:
        # a 16-bit source (wav): ffmpeg decodes it to s16, and libswresample then works in 16-bit fixed point
        # (its rule for s16 in and out; the v1.0 a44 fixture is bit-exact only this way)
        frame = av.AudioFrame.from_ndarray(scaled.T.astype(np.int16).reshape(1, -1), format="s16", layout=layout)
        options += ":internal_sample_fmt=s16p"
    else:  # compressed and 24/32-bit sources decode to float or s32, which libswresample processes in float
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
    frame.sample_rate = sample_rate
    graph = av.filter.Graph()
    chain = [graph.add_abuffer(format=frame.format.name, sample_rate=sample_rate, layout=layout),
             graph.add("aresample", options), graph.add("abuffersink")]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    graph.push(frame)
    graph.push(None)
    out = []
    while True:
        try:
            out.append(graph.pull().to_ndarray().reshape(-1))
        except (av.error.EOFError, av.error.BlockingIOError):
            break
    return np.concatenate(out or [np.zeros(0, np.int16)]).astype(np.float32) / 32768.0


# ---------------------------------------------------------------------------------------------- log-mel

@lru_cache(maxsize=1)
def mel_filters():
    """[80,201] float32: librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) (slaney scale and norm), which is
    what whisper's `mel_filters.npz` stores; the float32 rounding before the area normalisation is librosa's."""
    f_sp, min_log_hz, log_step = 200.0 / 3, 1000.0, np.log(6.4) / 27.0  # slaney: linear below 1 kHz, log above
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f):
        return min_log_mel + np.log(f / min_log_hz) / log_step if f >= min_log_hz else f / f_sp

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(log_step * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    mel_freqs = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2.0), N_MELS + 2))
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    widths = np.diff(mel_freqs)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]
    return weights


def log_mel(audio):
    """[..., T] float32 16 kHz -> [..., 80, T // 160] log10 mel power (not yet normalised), whisper's recipe."""
    stft = torch.stft(audio, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, pad_mode="reflect",
                      return_complex=True)
    power = stft[..., :-1].abs() ** 2
    return torch.clamp(torch.from_numpy(mel_filters()) @ power, min=1e-10).log10()


def _normalise(log_spec):
    return (torch.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0


def log_mel_v15(audio):
    """[T] -> [S,80,3000]: one 30 s piece at a time, zero-padded in the waveform and normalised with its padding."""
    pieces = []
    for start in range(0, len(audio), PIECE_SAMPLES):
        piece = torch.zeros(PIECE_SAMPLES)
        chunk = torch.from_numpy(audio[start:start + PIECE_SAMPLES])
        piece[:len(chunk)] = chunk
        pieces.append(_normalise(log_mel(piece)))
    return torch.stack(pieces)


def log_mel_v10(audio):
    """[T] -> ([S,80,3000], mel frames per segment): the whole file's log-mel normalised by its global maximum,
    cut into 3000-frame segments, the last padded with zeros in the normalised log-mel domain."""
    mel = _normalise(log_mel(torch.from_numpy(audio)))
    segments = list(torch.split(mel, PIECE_MEL_FRAMES, dim=1))
    lengths = [s.shape[1] for s in segments]
    segments[-1] = torch.nn.functional.pad(segments[-1], (0, PIECE_MEL_FRAMES - lengths[-1]))
    return torch.stack(segments), lengths


# ---------------------------------------------------------------------------------------------- encoder

def encode(whisper, runtime, mel, final_norm):
    """[S,80,3000] -> [S,1500,5,384] float32 CPU; PIECES_PER_BATCH pieces per encoder call on the model's device and
    dtype, each written straight into the result (no list of pieces to concatenate, which would double the peak)."""
    runtime.load(whisper)
    progress = runtime.progress(len(mel))
    out = None
    with torch.inference_mode():
        for start in range(0, len(mel), PIECES_PER_BATCH):
            runtime.check_interrupt()
            batch = mel[start:start + PIECES_PER_BATCH]
            with whisper.computing():
                hidden = whisper.module(batch.to(whisper.device, whisper.dtype), final_norm=final_norm)
            if out is None:
                out = torch.empty((len(mel), *hidden.shape[1:]), dtype=torch.float32)
            out[start:start + len(batch)] = hidden
            progress.update(len(batch))
    return out


# ---------------------------------------------------------------------------------------------- per-frame windows

def frame_index_v15(n_samples, n_features, fps):
    """[T,10] int64 encoder-frame index per video frame and window slot, -1 where the official pads with zeros.

    T = floor(seconds * fps). Frame f reads frames a - 2p ... a - 2p + 9 with a = floor(f * (50 / fps)) and
    p = ceil(50 / fps), all in float fps. For integer fps this is the official computation exactly (25 fps:
    2f-4 ... 2f+5). For fractional 50/fps (30, 29.97 fps) the start still rounds down, so consecutive windows
    advance by 1 or 2 encoder frames, and the window keeps the official fps-dependent offset.
    The official clip-length assert fails (exit) only for clips under ~0.1 s; those windows read zeros here.
    """
    multiplier = FEATURE_RATE / fps
    num_frames = math.floor(n_samples / SAMPLE_RATE * fps)
    starts = np.floor(np.arange(num_frames) * multiplier).astype(np.int64) - PAD_LEFT * math.ceil(multiplier)
    index = starts[:, None] + np.arange(WINDOW)
    index[(index < 0) | (index >= n_features)] = -1
    return torch.from_numpy(index)


def frame_index_v10(n_features, fps):
    """[T,10] int64 encoder-frame index, edge-replicated: frame f reads int(f*50/fps) - 4 ... + 5, clamped to
    [0, N-1]. T is the original loop's count: the first f with int(f * (50/fps)) > N, plus one (floor(N/2)+2 at 25)."""
    multiplier = 50.0 / fps
    count = 1
    while int((count - 1) * multiplier) <= n_features:
        count += 1
    centres = np.array([int(f * 50 / fps) for f in range(count)], dtype=np.int64)
    index = centres[:, None] + np.arange(-2 * PAD_LEFT, WINDOW - 2 * PAD_LEFT)
    return torch.from_numpy(np.clip(index, 0, n_features - 1))


def gather_windows(hidden, index):
    """[N,5,384] and [T,10] index (-1 = zeros) -> [T,50,384] float32 (token = window slot * 5 + depth).

    Only the T*10 encoder frames asked for are copied, so the cost is the windows' size, not the clip's."""
    if len(hidden) == 0:
        return hidden.new_zeros(len(index), TOKENS, TOKEN_DIM)
    tokens = hidden[index.clamp(min=0)]
    tokens[index < 0] = 0
    return tokens.reshape(len(index), TOKENS, TOKEN_DIM)


def frame_loudness(audio, num_frames, fps):
    """[T] float32 RMS dBFS of the 16 kHz audio over each frame's 1/fps span (zeros past the end)."""
    bounds = np.round(np.arange(num_frames + 1) * (SAMPLE_RATE / fps)).astype(np.int64)
    clipped = np.minimum(bounds, len(audio))
    energy = np.empty(num_frames)
    # float64 running sums a block of frames at a time: over the whole clip they would take 32 bytes per sample
    for first in range(0, num_frames, LOUDNESS_BLOCK_FRAMES):
        stop = min(first + LOUDNESS_BLOCK_FRAMES, num_frames)
        low = clipped[first]
        squares = np.concatenate([[0.0], np.cumsum(audio[low:clipped[stop]].astype(np.float64) ** 2)])
        sums = squares[clipped[first + 1:stop + 1] - low] - squares[clipped[first:stop] - low]
        energy[first:stop] = sums / np.maximum(bounds[first + 1:stop + 1] - bounds[first:stop], 1)
    return torch.from_numpy(np.maximum(10 * np.log10(np.maximum(energy, 1e-30)), SILENCE_DBFS).astype(np.float32))
