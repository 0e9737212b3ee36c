"""Media input and output for the command line, through PyAV (it bundles FFmpeg; no ffmpeg binary is needed).

Frames are uint8 RGB numpy arrays [H,W,3]; audio is float32 [C,T] in -1..1 with its sample rate.
"""
import os
import queue
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .outputs import PendingFile, check_video_output

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_INPUT_FIX = ("give a video that plays (re-export or re-download a damaged one), an image, or a folder of "
                   "frames")
AUDIO_INPUT_FIX = "give a speech file that plays (wav, mp3, flac, ...) or a video with an audio track"
SKIP_SECONDS = 2.0


class MediaError(ValueError):
    """An input file or folder cannot be used; the message says which and why."""


@dataclass
class FrameSource:
    """Source frames with random access in runs: a decoded video keeps only a window of frames in memory."""

    path: str
    fps: float
    count: int
    size: tuple  # (height, width)

    def frames(self, start, stop):
        """uint8 RGB [stop-start, H, W, 3] for frames start..stop-1."""
        raise NotImplementedError


class ImageFrames(FrameSource):
    """Image files, read when asked for: only the first is opened up front, for the frame size."""

    def __init__(self, path, files, fps):
        self._files = files
        super().__init__(path, fps, len(files), _read_image(files[0]).shape[:2])

    def frames(self, start, stop):
        images = [_read_image(name) for name in self._files[start:stop]]
        for name, image in zip(self._files[start:stop], images):
            if image.shape[:2] != self.size:
                raise MediaError(f"{name}: the image is {image.shape[1]}x{image.shape[0]}, but the first one is "
                                 f"{self.size[1]}x{self.size[0]}; every frame of a folder must have the same size")
        return np.stack(images)


class VideoFrames(FrameSource):
    """Decodes on demand. Reading forwards streams, also across a gap of up to SKIP_SECONDS (decoding through it
    costs less than seeking back to a keyframe, which may lie seconds earlier); other jumps seek to the keyframe
    before the target."""

    def __init__(self, path):
        with _reading(path, "video"):
            self._open(path)

    def _open(self, path):
        import av

        self._container = av.open(path)
        if not self._container.streams.video:
            raise MediaError(f"{path}: has no video stream\n  fix: {VIDEO_INPUT_FIX}")
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise MediaError(f"{path}: the video stream has no frame rate; pass the frames as a folder with --fps")
        self._stream = stream
        self._next_index = None
        self._decoder = None
        count = stream.frames
        if not count and stream.duration:
            count = int(round(float(stream.duration * stream.time_base * rate)))
        super().__init__(path, float(rate), count, (stream.height, stream.width))
        if count == 0:
            self.count = sum(1 for _ in self._iterate_from(0))

    def _iterate_from(self, index):
        """Yield (frame_index, decoded frame) starting at `index`, seeking to the keyframe before it."""
        stream = self._stream
        target = int(index / self.fps / stream.time_base) if index else 0
        self._container.seek(target + (stream.start_time or 0), stream=stream, backward=True, any_frame=False)
        first = None
        for frame in self._container.decode(stream):
            position = int(round(float((frame.pts - (stream.start_time or 0)) * stream.time_base) * self.fps))
            first = position if first is None else first + 1  # count decoded frames; pts can be irregular
            if first >= index:
                yield first, frame

    def frames(self, start, stop):
        with _reading(self.path, "video"):
            return self._decode(start, stop)

    def _decode(self, start, stop):
        ahead = None if self._next_index is None else start - self._next_index
        if ahead is None or not 0 <= ahead <= SKIP_SECONDS * self.fps:
            self._decoder = self._iterate_from(start)
        out = []
        for index, frame in self._decoder:
            if index < start:
                continue
            out.append(frame.to_ndarray(format="rgb24"))
            if index + 1 >= stop:
                break
        self._next_index = stop
        if len(out) != stop - start:
            raise MediaError(f"{self.path}: could only decode {len(out)} of frames {start}..{stop - 1}; the file is "
                             f"truncated or damaged\n  fix: {VIDEO_INPUT_FIX}")
        return np.stack(out)


class FrameWindow:
    """Source frames by index for an output order that walks a FrameSource forwards and backwards (pingpong).

    Frames are read `size` at a time in the direction of travel and kept until a request leaves that run, so a
    video is decoded about once per pass instead of seeking for every batch, and at most `size` frames are held.
    """

    def __init__(self, source, size):
        self._source, self._size = source, max(int(size), 1)
        self._start, self._frames = 0, None

    def __call__(self, indices):
        """uint8 RGB [len(indices),H,W,3] for the given frame indices."""
        out = np.empty((len(indices), *self._source.size, 3), np.uint8)
        for row, index in enumerate(indices):
            if self._frames is None or not self._start <= index < self._start + len(self._frames):
                self._read_around(int(index))
            out[row] = self._frames[index - self._start]
        return out

    def _read_around(self, index):
        walking_back = self._frames is not None and self._start - self._size <= index < self._start
        start = max(index - self._size + 1, 0) if walking_back else index
        self._frames = None  # let the old run go before the new one is decoded
        self._start, self._frames = start, self._source.frames(start, min(start + self._size, self._source.count))


class ReadAhead:
    """Reads frames one call ahead on a worker thread, for reads whose order is known: `read(indices)` (e.g. a
    FrameWindow) is called for the index lists of `reads`, in order. The call for `reads[k]` returns what the worker
    read (waiting for it if need be) and starts reading `reads[k + 1]`, so decoding the next source frames overlaps
    the work on these, for one batch more in memory. `read` only runs on the worker, one call at a time. `close()`
    (always; after an error or interrupt too) waits for the read in progress and stops the worker.
    """

    def __init__(self, read, reads):
        self._read = read
        self._reads = iter(reads)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="musetalk-frame-reader")
        self._pending = None
        self._start_next()

    def _start_next(self):
        indices = next(self._reads, None)
        self._pending = None if indices is None else (list(indices), self._pool.submit(self._read, indices))

    def __call__(self, indices):
        """The frames `read(indices)` gives; `indices` must be the next list of `reads`."""
        if self._pending is None or list(indices) != self._pending[0]:
            raise ValueError(f"frames {list(indices)} were asked for out of the announced order")
        frames = self._pending[1].result()
        self._start_next()
        return frames

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


def open_frames(path, fps=25.0):
    """A video file, a single image or a folder of images (sorted by the number in their names) as a FrameSource.

    `fps` applies to images and folders; a video keeps its own rate."""
    if os.path.isdir(path):
        names = [n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not names:
            raise MediaError(f"{path}: the folder holds no {'/'.join(IMAGE_EXTENSIONS)} images\n"
                             f"  fix: {VIDEO_INPUT_FIX}")
        names.sort(key=_natural_key)
        return ImageFrames(path, [os.path.join(path, n) for n in names], fps)
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file or folder\n  fix: check the path of the video, image or frames folder")
    if path.lower().endswith(IMAGE_EXTENSIONS):
        return ImageFrames(path, [path], fps)
    return VideoFrames(path)


def _natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_image(path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as error:  # PIL's UnidentifiedImageError and truncated-file errors are OSErrors
        raise MediaError(f"{path}: cannot be read as an image; the file is damaged, truncated or not an image "
                         f"({error})\n  fix: re-export it as PNG or JPEG, or remove it from the folder") from error


@contextmanager
def _reading(path, kind):
    """Turn FFmpeg's errors while reading `path` into a MediaError that names the file and the fix."""
    import av

    try:
        yield
    except av.FFmpegError as error:
        reason = getattr(error, "strerror", None) or str(error)
        noun = {"video": "a video", "audio": "audio"}[kind]
        raise MediaError(f"{path}: cannot be read as {kind}; the file is damaged, truncated or not {noun} "
                         f"({reason})\n  fix: {VIDEO_INPUT_FIX if kind == 'video' else AUDIO_INPUT_FIX}") from error


def read_audio(path):
    """Every audio sample of a file (wav, mp3, the audio track of a video...) as float32 [C,T] and its rate."""
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file\n  fix: {AUDIO_INPUT_FIX}")
    with _reading(path, "audio"):
        return _decode_audio(path)


def _decode_audio(path):
    import av

    with av.open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: has no audio stream\n  fix: {AUDIO_INPUT_FIX}")
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
        chunks = [f.to_ndarray() for frame in container.decode(stream) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
    if not chunks:
        raise MediaError(f"{path}: the audio stream is empty\n  fix: {AUDIO_INPUT_FIX}")
    return np.concatenate(chunks, axis=1).reshape(channels, -1).astype(np.float32), stream.rate


def fit_audio(waveform, sample_rate, seconds):
    """Trim or zero-pad [C,T] audio to exactly `seconds` so that the video and audio tracks end together."""
    length = int(round(seconds * sample_rate))
    if waveform.shape[1] >= length:
        return waveform[:, :length]
    return np.pad(waveform, ((0, 0), (0, length - waveform.shape[1])))


class VideoWriter:
    """H.264 (yuv420p, crf 18) with an optional AAC track; odd sizes are padded by one edge row/column for yuv420p.

    The video is written to a temporary file beside `path` that replaces `path` only on `close`; `discard` (or any
    failure in `close`) removes it, so an interrupted job keeps an earlier `path` and leaves nothing behind. The
    container follows the extension (`outputs.VIDEO_CONTAINERS`: .mp4, .mov, .mkv, .m4v). Audio at a rate the AAC
    encoder does not take (above 96 kHz, or an odd rate) is resampled to the nearest rate it takes.
    """

    def __init__(self, path, fps, size, audio=None, crf=18):
        import av

        self._av = av
        self.path = path
        container = check_video_output(path)
        self._pending = PendingFile(path)
        self._container = av.open(self._pending.temp, "w", format=container)
        try:
            self._height, self._width = size
            self._fps = float(fps)
            self._video = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(100000))
            self._video.width = self._width + self._width % 2
            self._video.height = self._height + self._height % 2
            self._video.pix_fmt = "yuv420p"
            self._video.options = {"crf": str(crf)}
            self._audio = audio
            self._audio_stream = None
            if audio is not None:  # every stream must exist before the first packet is written
                waveform, sample_rate = audio
                self._audio_layout = {1: "mono", 2: "stereo"}.get(waveform.shape[0], "mono")
                self._audio_stream = self._container.add_stream("aac", rate=aac_rate(sample_rate))
                self._audio_stream.layout = self._audio_layout
        except BaseException:
            self.discard()
            raise
        self.frames_written = 0

    def write(self, frames):
        """frames: uint8 RGB [B,H,W,3]."""
        pad = ((0, 0), (0, self._height % 2), (0, self._width % 2), (0, 0))
        if any(p[1] for p in pad):
            frames = np.pad(frames, pad, mode="edge")
        for rgb in frames:
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in self._video.encode(frame):
                self._container.mux(packet)
        self.frames_written += len(frames)

    def close(self):
        """Finish the file and put it in place of `path`."""
        try:
            for packet in self._video.encode():
                self._container.mux(packet)
            if self._audio is not None:
                self._write_audio(*self._audio)
            self._container.close()
            self._pending.commit()
        finally:
            self.discard()

    def discard(self):
        """Drop the unfinished file (nothing happens after `close`); an earlier file at `path` stays as it was."""
        if self._pending.committed:
            return
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - an unfinished container may refuse to close; it is deleted anyway
            pass
        self._pending.discard()

    def _write_audio(self, waveform, sample_rate):
        if waveform.shape[0] > 2:  # AAC in mp4 is written as mono or stereo; more channels are mixed down
            waveform = waveform.mean(axis=0, keepdims=True)
        seconds = self.frames_written / self._fps
        waveform = np.ascontiguousarray(fit_audio(waveform, sample_rate, seconds), dtype=np.float32)
        frame = self._av.AudioFrame.from_ndarray(waveform, format="fltp", layout=self._audio_layout)
        frame.sample_rate = sample_rate
        frame.pts = 0
        stream = self._audio_stream
        frames = [frame]
        if stream.rate != sample_rate:
            resampler = self._av.AudioResampler(format="fltp", layout=self._audio_layout, rate=stream.rate)
            frames = resampler.resample(frame) + resampler.resample(None)
        for packet in [p for f in frames for p in stream.encode(f)] + list(stream.encode(None)):
            self._container.mux(packet)


def aac_rate(sample_rate):
    """The sample rate the AAC track gets for audio at `sample_rate`: the same when the encoder takes it, else the
    highest rate it takes below (192 kHz -> 96 kHz), or its lowest one for audio below every rate it takes."""
    import av

    rates = sorted(av.codec.Codec("aac", "w").audio_rates or (sample_rate,))
    if sample_rate in rates:
        return sample_rate
    below = [r for r in rates if r < sample_rate]
    return below[-1] if below else rates[0]


class BackgroundWriter:
    """Runs a VideoWriter's `write` on a worker thread behind a queue of `depth` batches, so that H.264 encoding
    overlaps the networks. A failure on the worker comes back from the next `write` or from `close`; `abort` (after
    an error or an interrupt in the caller) drops the queued frames and stops the worker without waiting for them.
    The caller must not change a batch after handing it to `write`.
    """

    def __init__(self, writer, depth=2):
        self._writer = writer
        self._queue = queue.Queue(depth)
        self._error = None
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="musetalk-video-writer", daemon=True)
        self._thread.start()
        self.frames_written = 0  # frames handed over so far

    def _work(self):
        while True:
            frames = self._queue.get()
            if frames is None:
                return
            # after a failure or abort the worker keeps taking batches, so a waiting `write` never blocks for ever
            if self._error is None and not self._stopping:
                try:
                    self._writer.write(frames)
                except BaseException as error:  # handed to the caller's thread by _raise_failure
                    self._error = error

    def write(self, frames):
        """frames: uint8 RGB [B,H,W,3], queued for encoding (blocks while `depth` batches wait)."""
        self._raise_failure()
        self._queue.put(frames)
        self.frames_written += len(frames)

    def close(self):
        """Encode what is queued, then finish the file (see VideoWriter.close)."""
        self._finish()
        self._raise_failure()
        self._writer.close()

    def abort(self):
        """Stop the worker now, dropping queued frames, and delete the unfinished file. Does nothing after `close`."""
        self._stopping = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._finish()
        self._writer.discard()

    def _finish(self):
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise_failure(self):
        if self._error is not None:
            raise MediaError(f"{self._writer.path}: writing the video failed ({type(self._error).__name__}: "
                             f"{self._error})") from self._error
