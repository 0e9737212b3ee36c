"""Anonymous memory of `avatar prepare` (musetalk/avatar_job.py) against the video's length, at 1080p.

    python -m bench.bench_avatar_memory --models DIR [--frames 50,200]

For each length it writes a 1080p clip of random frames at 25 fps and prepares an avatar of it with no face given
(every frame passes through, so no network runs and what is measured is the frames' way into the file), sampling
the process's RssAnon every 50 ms. The frames, crops and masks go through mapped scratch files, whose pages are the
kernel's page cache rather than the process's own memory, so the peak should not grow with the frame count.
"""
import argparse
import json
import os
import sys
import tempfile
import threading

import numpy as np

from musetalk.avatar_job import prepare_avatar_file
from musetalk.face_boxes import parse_bboxes
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.pipeline import LipSyncOptions
from musetalk.runtime import StandaloneRuntime
from musetalk.video import VideoWriter, open_frames


def anonymous_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("RssAnon"))


class PeakSampler:
    def __init__(self):
        self.peak, self._stop = anonymous_mib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, anonymous_mib())

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak


def measure(models, folder, frames):
    clip = os.path.join(folder, f"clip{frames}.mp4")
    writer = VideoWriter(clip, 25, (1080, 1920))
    for start in range(0, frames, 10):
        writer.write(np.random.default_rng(start).integers(0, 255, (10, 1080, 1920, 3), dtype=np.uint8))
    writer.close()
    source = open_frames(clip)
    boxes = parse_bboxes(json.dumps([None] * source.count), source.count, source.size)
    path = os.path.join(folder, f"a{frames}.musetalk-avatar")
    before = anonymous_mib()
    sampler = PeakSampler()
    prepare_avatar_file(models, source, path, LipSyncOptions(), boxes, report=lambda _: None)
    peak = sampler.stop()
    size = os.path.getsize(path) / 2 ** 30
    os.remove(path)
    os.remove(clip)
    return before, peak, size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="a models folder (the small test checkpoints will do)")
    parser.add_argument("--frames", default="50,200", help="clip lengths in frames, comma-separated")
    args = parser.parse_args(argv)
    models = MuseTalkModels("v1.5", ModelFiles([args.models]), StandaloneRuntime("cpu"))
    print("frames | avatar GiB | RssAnon before MiB | peak MiB")
    with tempfile.TemporaryDirectory() as folder:
        for frames in (int(n) for n in args.frames.split(",")):
            before, peak, size = measure(models, folder, frames)
            print(f"{frames:6d} | {size:10.2f} | {before:18d} | {peak:8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
