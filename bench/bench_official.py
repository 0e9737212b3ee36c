"""Our pipeline against the official MuseTalk v1.5 `scripts/inference.py`: same machine, clip and batch, one run.

    python -m bench.bench_official --official CHECKOUT --official-python PY [--ffmpeg-dir DIR] [--models DIR]
                                   [--sources 12] [--seconds 1.0] [--batch 8]

CHECKOUT is an official MuseTalk checkout whose `models/` holds the same checkpoints as --models, PY the python of
an environment that runs it (recipe in bench/README.md); --ffmpeg-dir a folder with an `ffmpeg` binary, which the
official script calls. Both sides run as child processes on the clip of `bench_pipeline.write_clip`, official first:
the official script through `bench/official_run.py` (known boxes after the real detection, VAE posterior mean,
result PNGs kept), ours through `bench/ours_run.py` (detection on every frame, then `pipeline.lipsync` with the known
boxes). Each child's wall time is taken from start to exit (imports and model loading included) and its peak RSS
from `os.wait4`, i.e. the child's own rusage `ru_maxrss` (the largest of the process and the descendants it waited
for: the official ffmpeg calls are far smaller). Then the output frames are compared value by value.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from musetalk.inpaint import cycle_indices

from .bench_networks import DEFAULT_MODELS, REPO
from .bench_pipeline import write_clip
from .measure import GIB, gemm_rate, load_average

OFFICIAL_RUN = os.path.join(REPO, "bench", "official_run.py")


def run_child(command, log_path):
    """Run `command` with its output in `log_path`; returns (wall seconds, peak RSS bytes, exit code)."""
    with open(log_path, "w") as log:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        # wait4 instead of child.wait(): the rusage of this child alone (RUSAGE_CHILDREN would mix both runs)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    return wall, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)  # Linux reports kilobytes


def check_child(name, code, log_path, frames_dir, expected):
    written = len([f for f in os.listdir(frames_dir) if f.endswith(".png")]) if os.path.isdir(frames_dir) else 0
    if code != 0 or written != expected:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{name} run failed (exit {code}, {written}/{expected} frames); end of its output:\n{tail}")


def run_official(args, clip, folder, expected):
    frames, speech, boxes = clip
    config = os.path.join(folder, "official.yaml")
    with open(config, "w") as f:
        f.write(f'task_0:\n video_path: "{frames}"\n audio_path: "{speech}"\n')
    keep, result_dir = os.path.join(folder, "official_frames"), os.path.join(folder, "official", "results")
    os.makedirs(keep)
    command = [args.official_python, OFFICIAL_RUN, os.path.abspath(args.official), boxes, keep, "--",
               "--version", "v15", "--inference_config", config, "--result_dir", result_dir,
               "--unet_model_path", "models/musetalkV15/unet.pth", "--unet_config", "models/musetalkV15/musetalk.json",
               "--vae_type", "sd-vae", "--whisper_dir", "models/whisper", "--batch_size", str(args.batch),
               "--fps", "25", "--ffmpeg_path", os.path.abspath(args.ffmpeg_dir)]
    log = os.path.join(folder, "official.log")
    wall, rss, code = run_child(command, log)
    pngs = os.path.join(keep, "frames_speech")  # the script names its result folder <video>_<audio>
    check_child("official", code, log, pngs, expected)
    return wall, rss, pngs


def run_ours(args, clip, folder, expected):
    frames, speech, boxes = clip
    pngs = os.path.join(folder, "ours_frames")
    command = [sys.executable, "-m", "bench.ours_run", args.models, frames, speech, boxes,
               os.path.join(folder, "ours.mp4"), pngs, "--sources", str(args.sources), "--batch", str(args.batch)]
    log = os.path.join(folder, "ours.log")
    wall, rss, code = run_child(command, log)
    check_child("our", code, log, pngs, expected)
    with open(log) as f:
        phases = json.loads(f.read().strip().splitlines()[-1])
    return wall, rss, pngs, phases


def read_png(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def compare_frames(official_dir, ours_dir, sources_dir, count):
    """Ours against the official frames over `count` output frames (uint8 PNGs named %08d.png).

    Returns (max |diff|, share of values differing by > 1, by > 2, share of official values that differ from the
    source frame: the part really generated, so that an agreement is not just two copies of the input)."""
    worst, over1, over2, changed, total = 0, 0, 0, 0, 0
    for i, source in enumerate(cycle_indices(len(os.listdir(sources_dir)), count).tolist()):
        name = f"{i:08d}.png"
        official = read_png(os.path.join(official_dir, name))
        diff = np.abs(official - read_png(os.path.join(ours_dir, name)))
        worst = max(worst, int(diff.max()))
        over1, over2 = over1 + int((diff > 1).sum()), over2 + int((diff > 2).sum())
        changed += int((official != read_png(os.path.join(sources_dir, f"{source}.png"))).sum())
        total += diff.size
    return worst, over1 / total, over2 / total, changed / total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True, help="official MuseTalk checkout (its models/ = --models)")
    parser.add_argument("--official-python", required=True, help="python of the official environment")
    parser.add_argument("--ffmpeg-dir", default=os.path.dirname(os.path.abspath(sys.executable)),
                        help="folder holding an `ffmpeg` binary for the official script")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="full-size models folder (official layout)")
    parser.add_argument("--sources", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--work", help="folder for the clip, logs and frames of both runs, kept (default: a temporary "
                        "folder, removed)")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.ffmpeg_dir, "ffmpeg")):
        parser.error(f"no ffmpeg in {args.ffmpeg_dir}: give --ffmpeg-dir, a folder with an `ffmpeg` binary")
    if args.work and os.path.isdir(args.work) and os.listdir(args.work):
        parser.error(f"--work {args.work} is not empty: give a new or empty folder")

    loads = [load_average()]
    gemm = gemm_rate("cpu", torch.float32)
    expected = int(args.seconds * 25)  # v1.5 writes floor(seconds * fps) frames
    with contextlib.ExitStack() as stack:
        folder = args.work or stack.enter_context(tempfile.TemporaryDirectory())
        os.makedirs(folder, exist_ok=True)
        clip = write_clip(folder, args.sources, args.seconds)
        official_wall, official_rss, official_pngs = run_official(args, clip, folder, expected)
        loads.append(load_average())
        ours_wall, ours_rss, ours_pngs, phases = run_ours(args, clip, folder, expected)
        loads.append(load_average())
        worst, over1, over2, generated = compare_frames(official_pngs, ours_pngs, clip[0], expected)

    rows = [("official scripts/inference.py", official_wall, official_rss),
            ("ours (detection + pipeline.lipsync)", ours_wall, ours_rss)]
    width = max(len(r[0]) for r in rows)
    print(f"MuseTalk v1.5, cpu fp32, {args.sources} source frames of 384x384, {args.seconds:g} s audio -> {expected} "
          f"output frames, batch {args.batch}; torch threads {torch.get_num_threads()}; GEMM {gemm:.0f} GFLOP/s; "
          f"load average before / after official / after ours: {' / '.join(f'{x:.2f}' for x in loads)}")
    print(f"{'run':<{width}} | process wall s | s per output frame | peak RSS GiB")
    for name, wall, rss in rows:
        print(f"{name:<{width}} | {wall:14.1f} | {wall / expected:18.2f} | {rss / GIB:12.2f}")
    print(f"ours/official: time {ours_wall / official_wall:.3f}, peak RSS {ours_rss / official_rss:.3f}")
    print(f"ours inside the process: detection {phases['detection_s']:.1f} s, lip sync {phases['lipsync_s']:.1f} s "
          f"({phases['frames']} frames)")
    print(f"frames, ours vs official over {expected} frames: max |diff| {worst}, values differing by > 1: "
          f"{100 * over1:.4f}%, by > 2: {100 * over2:.4f}% (parity: within 2 on < 0.5%); "
          f"{100 * generated:.2f}% of the official values differ from the source frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
