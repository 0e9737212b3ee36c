"""The command-line job holds a bounded number of source frames whatever the clip's length, and its streaming parts
(compressed blend masks, lazy image folders, run-wise frame reads, streamed VAE encoding, the writer thread) give the
numbers and errors of the whole-clip versions."""
import json
import os
import threading
import time
import wave
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

import musetalk.pipeline as pipeline
from musetalk import video
from musetalk.face import BlendMasks, FaceTrack
from musetalk.inpaint import cycle_indices, encode_sources
from musetalk.lipsync import LatentStream
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.networks import unet as unet_module
from musetalk.runtime import StandaloneRuntime
from musetalk.video import BackgroundWriter, FrameWindow, MediaError, ReadAhead, VideoWriter, open_frames

HEIGHT, WIDTH = 96, 128
FACE_EVERY = 8  # frames with a face box; the others pass through, which keeps the networks' share small


class CountingSource:
    """A FrameSource that records every read and how many of the frames it handed out are still alive."""

    def __init__(self, source):
        self._source = source
        self.path, self.fps, self.count, self.size = source.path, source.fps, source.count, source.size
        self.calls, self.alive, self.peak = [], 0, 0

    def frames(self, start, stop):
        frames = self._source.frames(start, stop)
        self.calls.append((start, stop))
        self.alive += len(frames)
        self.peak = max(self.peak, self.alive)
        weakref.finalize(frames, self._freed, len(frames))
        return frames

    def _freed(self, count):
        self.alive -= count


def _clip(folder, n_frames, speech_seconds):
    """A video of n_frames distinct frames, a speech file and a box file with a face on every FACE_EVERY-th frame."""
    frames = np.zeros((n_frames, HEIGHT, WIDTH, 3), np.uint8)
    frames[:] = (np.arange(n_frames) * 3 % 256)[:, None, None, None].astype(np.uint8)
    frames[:, 20:80, 30:90, 1] = 200
    writer = VideoWriter(os.path.join(folder, "clip.mp4"), 25, (HEIGHT, WIDTH))
    writer.write(frames)
    writer.close()
    rate = 16000
    with wave.open(os.path.join(folder, "speech.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes((3000 * np.sin(np.arange(int(rate * speech_seconds)) / 9)).astype("<i2").tobytes())
    boxes = [[30, 20, 90, 80] if i % FACE_EVERY == 0 else None for i in range(n_frames)]
    with open(os.path.join(folder, "boxes.json"), "w") as f:
        json.dump(boxes, f)
    return boxes


def _lipsync(models_dir, folder, n_frames, monkeypatch):
    boxes = _clip(folder, n_frames, 1.5 * n_frames / 25)  # speech longer than the video: pingpong walks back
    sources = []
    real_open = pipeline.open_frames
    monkeypatch.setattr(pipeline, "open_frames", lambda path, fps: sources.append(CountingSource(real_open(path, fps)))
                        or sources[-1])
    monkeypatch.setattr(pipeline, "WINDOW_BYTES", 6 * HEIGHT * WIDTH * 3)  # 6 frames per run (batch_size is 4)
    models = MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu"))
    options = pipeline.LipSyncOptions(batch_size=4, bboxes=json.dumps(boxes))
    count = pipeline.lipsync(models, os.path.join(folder, "clip.mp4"), os.path.join(folder, "speech.wav"),
                             os.path.join(folder, "out.mp4"), options, os.path.join(folder, "png"), log=lambda _: None)
    return sources[0], boxes, count


def test_source_frames_held_do_not_grow_with_the_clip(models_dir, tmp_path, monkeypatch):
    runs = {}
    for n_frames in (32, 96):  # whole crop-pass batches of 16 frames, so both clips can reach the same peak
        folder = tmp_path / str(n_frames)
        folder.mkdir()
        runs[n_frames] = _lipsync(models_dir, str(folder), n_frames, monkeypatch)
    short, long = runs[32][0], runs[96][0]
    # one crop-pass batch (16 frames of this size) or one 6-frame run, plus the one read while it is still held
    assert long.peak == short.peak <= 2 * 16
    assert max(stop - start for start, stop in long.calls) <= 16

    source, boxes, count = runs[96]
    assert count == 144
    order = cycle_indices(96, 144).tolist()
    written = sorted(os.listdir(tmp_path / "96" / "png"))
    decoded = open_frames(str(tmp_path / "96" / "clip.mp4")).frames(0, 96)
    for t in range(0, 144, 5):  # frames without a face pass through: the right source frame, read back exactly
        if boxes[order[t]] is None:
            assert np.array_equal(np.asarray(Image.open(tmp_path / "96" / "png" / written[t])), decoded[order[t]])


def test_chunks_of_output_frames_change_no_frame(models_dir, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    whole.mkdir()
    _lipsync(models_dir, str(whole), 32, monkeypatch)
    chunked = tmp_path / "chunked"
    chunked.mkdir()
    monkeypatch.setattr(pipeline, "CHUNK_FRAMES", 8)
    chunks = []
    real_generate = pipeline.generate_latents
    monkeypatch.setattr(pipeline, "generate_latents",
                        lambda models, sources, features, index, *args: chunks.append(len(index))
                        or real_generate(models, sources, features, index, *args))
    unet_loads = []
    real_load_unet = unet_module.load_unet
    monkeypatch.setattr(unet_module, "load_unet", lambda *args: unet_loads.append(1) or real_load_unet(*args))
    _lipsync(models_dir, str(chunked), 32, monkeypatch)
    assert len(chunks) > 1 and sum(chunks) == 48
    # on the CPU the UNet is dropped before each chunk's decode (host memory), so a later chunk with a face loads it
    # again (a chunk without one needs no UNet); kept for the whole job, it would have been loaded once
    assert 1 < len(unet_loads) <= len(chunks)
    names = sorted(os.listdir(whole / "png"))
    assert names == sorted(os.listdir(chunked / "png")) and len(names) == 48
    for name in names:
        assert (whole / "png" / name).read_bytes() == (chunked / "png" / name).read_bytes()


def test_output_chunks_cut_only_between_whole_batches():
    assert pipeline.output_chunks(20, list(range(20)), 8, 1024) == [(0, 20)]
    assert pipeline.output_chunks(3000, list(range(3000)), 8, 1024) == [(0, 1024), (1024, 2048), (2048, 3000)]
    # faces on frames 1, 5, 9, 13 and batches of 3: the first place after 4 frames where both the output frames
    # and the frames with a UNet step before it fill whole batches is frame 12; none comes after it
    assert pipeline.output_chunks(30, [1, 5, 9, 13], 3, 4) == [(0, 12), (12, 30)]
    assert pipeline.output_chunks(10, [], 8, 4) == [(0, 8), (8, 10)]


def test_frame_window_reads_runs_both_ways():
    class Ramp:
        count, size = 50, (2, 2)

        def __init__(self):
            self.calls = []

        def frames(self, start, stop):
            self.calls.append((start, stop))
            return np.arange(start, stop, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3)

    source = Ramp()
    window = FrameWindow(source, 10)
    order = cycle_indices(50, 130).tolist()
    got = [int(f[0, 0, 0]) for start in range(0, 130, 4) for f in window(order[start:start + 4])]
    assert got == order
    # forwards 0..49, backwards 49..0 and forwards again 0..29: each in runs of 10, no frame read twice per pass
    assert source.calls == [(s, s + 10) for s in range(0, 50, 10)] + [(s, s + 10) for s in range(30, -1, -10)] \
        + [(s, s + 10) for s in range(10, 30, 10)]


def test_image_folder_is_read_when_asked(tmp_path, monkeypatch):
    for index in range(5):
        Image.fromarray(np.full((8, 6, 3), index, np.uint8)).save(tmp_path / f"{index}.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "9.png")
    opened = []
    real = video._read_image
    monkeypatch.setattr(video, "_read_image", lambda path: opened.append(os.path.basename(path)) or real(path))
    source = open_frames(str(tmp_path))
    assert opened == ["0.png"] and source.count == 6 and source.size == (8, 6)
    assert [int(f[0, 0, 0]) for f in source.frames(2, 4)] == [2, 3] and opened[1:] == ["2.png", "3.png"]
    with pytest.raises(MediaError, match="9.png: the image is 4x4, but the first one is 6x8"):
        source.frames(4, 6)


def test_blend_masks_are_compressed_and_read_back_exactly():
    mask = np.zeros((400, 400), np.uint8)
    mask[220:360, 80:320] = 255
    mask[210:220, 80:320] = np.linspace(0, 255, 10, dtype=np.uint8)[:, None]  # a blurred edge
    masks = BlendMasks([(mask, [10, 20, 410, 420]), None])
    assert len(masks) == 2 and masks[1] is None and masks.nbytes < mask.nbytes // 50
    got, box = masks[0]
    assert np.array_equal(got, mask) and got.dtype == np.uint8 and box == [10, 20, 410, 420]
    got[:] = 7  # a read gives a copy: the track cannot be changed through it
    assert np.array_equal(masks[0][0], mask) and [entry is None for entry in masks] == [False, True]
    track = FaceTrack((500, 500), "v1.5", [None, None], [(1, 2, 3, 4), None], [(mask, [0, 0, 400, 400]), None],
                      None, "")
    assert isinstance(track.blend, BlendMasks) and np.array_equal(track.blend[0][0], mask)
    with pytest.raises(ValueError, match="uint8"):
        BlendMasks([(mask.astype(np.float32), [0, 0, 400, 400])])


def test_latent_stream_gives_the_latents_of_one_encode(models_dir):
    models = MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu"))
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (7, 256, 256, 3), dtype=np.uint8))
    whole = encode_sources(models, crops, 3)
    stream = LatentStream(models, 3)
    for start, stop in ((0, 2), (2, 3), (3, 7)):  # portions that cut across the VAE batches
        stream.add(list(range(start, stop)), crops[start:stop])

    class Faces:
        has_face = [True] * 7

        def __len__(self):
            return 7

    streamed = stream.sources(Faces()).latents
    assert torch.equal(streamed, whole) and streamed.stride() == whole.stride()


def test_latent_stream_opens_no_progress_bar_of_its_own(models_dir):
    """Its crops are counted on the face stage's bar: in ComfyUI a bar per handful of crops would replace that one."""
    class CountingRuntime(StandaloneRuntime):
        bars = 0

        def progress(self, total):
            CountingRuntime.bars += 1
            return super().progress(total)

    models = MuseTalkModels("v1.5", ModelFiles([models_dir]), CountingRuntime("cpu"))
    crops = torch.zeros(5, 256, 256, 3, dtype=torch.uint8)
    stream = LatentStream(models, 2)
    stream.add(list(range(5)), crops)
    assert CountingRuntime.bars == 0  # two batches of two were encoded
    encode_sources(models, crops[:2])
    assert CountingRuntime.bars == 1


class SlowWriter:
    path = "slow.mp4"

    def __init__(self, fail_at=None):
        self.batches, self.closed, self.discarded, self._fail_at = [], False, False, fail_at

    def write(self, frames):
        time.sleep(0.05)
        if len(self.batches) == self._fail_at:
            raise OSError("disk full")
        self.batches.append(frames)

    def close(self):
        self.closed = True

    def discard(self):
        self.discarded = not self.closed


def test_background_writer_writes_in_order_and_reports_failures():
    inner = SlowWriter()
    writer = BackgroundWriter(inner, depth=2)
    for i in range(5):
        writer.write([i])
    writer.close()
    assert inner.batches == [[i] for i in range(5)] and inner.closed and writer.frames_written == 5

    writer = BackgroundWriter(SlowWriter(fail_at=1), depth=1)
    with pytest.raises(MediaError, match=r"slow.mp4: writing the video failed \(OSError: disk full\)"):
        for i in range(20):
            writer.write([i])
    writer.abort()
    writer = BackgroundWriter(SlowWriter(fail_at=0))
    writer.write([0])
    with pytest.raises(MediaError, match="disk full"):
        writer.close()


class StuckWriter(SlowWriter):
    """Its first write hangs until `release` is set, as an encoder busy with a batch when the caller aborts."""

    def __init__(self):
        super().__init__()
        self.busy, self.release = threading.Event(), threading.Event()

    def write(self, frames):
        if not self.batches:
            self.busy.set()
            self.release.wait()
        self.batches.append(frames)


def test_background_writer_abort_does_not_wait_for_queued_frames():
    inner = StuckWriter()
    writer = BackgroundWriter(inner, depth=3)
    for i in range(4):
        writer.write([i])  # the worker holds batch 0, three wait in the queue
    assert inner.busy.wait(30)
    aborting = threading.Thread(target=writer.abort)
    aborting.start()
    while not writer._stopping:  # abort has begun; the batch in hand may now finish
        time.sleep(0.001)
    inner.release.set()
    aborting.join(30)
    assert not aborting.is_alive() and inner.batches == [[0]] and not inner.closed and inner.discarded
    assert not [t for t in threading.enumerate() if t.name == "musetalk-video-writer"]
    writer.abort()  # twice, or after close: nothing left to do


def test_video_reads_across_gaps_and_back_give_the_decoded_frames(tmp_path):
    frames = np.zeros((80, 48, 64, 3), np.uint8)
    frames[:] = (np.arange(80) * 3)[:, None, None, None]
    writer = VideoWriter(str(tmp_path / "ramp.mp4"), 25, (48, 64))
    writer.write(frames)
    writer.close()
    whole = open_frames(str(tmp_path / "ramp.mp4")).frames(0, 80)
    source = open_frames(str(tmp_path / "ramp.mp4"))
    # gaps within SKIP_SECONDS decode through, the 70 -> 5 jump seeks back, 5 -> 75 (past 2 s) seeks forward
    for start, stop in ((0, 3), (10, 13), (40, 44), (70, 72), (5, 8), (75, 80)):
        assert np.array_equal(source.frames(start, stop), whole[start:stop]), (start, stop)


def _worker_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith(("musetalk-frame-reader", "musetalk-video"))]


def test_read_ahead_reads_the_next_batch_on_a_worker_while_the_caller_works():
    reads = [[0, 1], [2, 3], [3, 2]]
    calls, second_started = [], threading.Event()

    def read(indices):
        calls.append((list(indices), threading.current_thread().name))
        if list(indices) == reads[1]:
            second_started.set()
        return np.array(indices)

    reader = ReadAhead(read, reads)
    assert reader([0, 1]).tolist() == [0, 1]
    assert second_started.wait(30)  # read while the caller still works on the first batch
    assert [reader(indices).tolist() for indices in reads[1:]] == reads[1:]
    reader.close()
    assert [c[0] for c in calls] == reads and all(c[1].startswith("musetalk-frame-reader") for c in calls)
    assert _worker_threads() == []

    reader = ReadAhead(read, reads)
    with pytest.raises(ValueError, match="out of the announced order"):
        reader([2, 3])
    reader.close()

    def truncated(indices):
        raise MediaError("clip.mp4: could only decode 1 of frames 0..1")

    reader = ReadAhead(truncated, reads)
    with pytest.raises(MediaError, match="could only decode"):
        reader([0, 1])
    reader.close()
    assert _worker_threads() == []


def test_interrupted_job_leaves_no_thread_and_no_file(models_dir, tmp_path):
    boxes = _clip(str(tmp_path), 16, 1.0)
    models = MuseTalkModels("v1.5", ModelFiles([models_dir]), StandaloneRuntime("cpu"))
    source = open_frames(str(tmp_path / "clip.mp4"))
    options = pipeline.LipSyncOptions(batch_size=4)
    speech = video.read_audio(str(tmp_path / "speech.wav"))
    before = sorted(os.listdir(tmp_path))
    seen = []

    def interrupt_at_the_second_batch(first, batch):
        seen.append(first)
        if first:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.lipsync_stream(models, source, speech, str(tmp_path / "out.mp4"), options, boxes,
                                on_frames=interrupt_at_the_second_batch, frames_dir=str(tmp_path / "png"))
    assert seen == [0, 4] and sorted(os.listdir(tmp_path)) == before and _worker_threads() == []
