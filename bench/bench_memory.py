"""Peak host memory of the command line's lip-sync job against the video's length, at 1080p.

    python -m bench.bench_memory [--seconds 4,16] [--face-every 25] [--models DIR] [--repo DIR] [--keep DIR]

For each length it writes a synthetic 1080p clip at 25 fps (the fixture photo, enlarged so that the face spans
~160x250 px, sliding across a 1920x1080 frame) with a speech file of the same length. The face box is given (random
weights find no face) on every `--face-every`-th frame only, the other frames pass through: even the small networks
take ~4 s per face frame on the 2-core CPU. The per-frame data of a face frame (source latents 32 KB, compressed
blend mask) is therefore under-represented in the slope and is printed separately. Then it runs
`python -m musetalk lipsync` on it in a subprocess with the SMALL random-weight checkpoints (so the networks cost
little and the memory that depends on the video shows), and reads the child's peak RSS from wait4. It prints the peak per length, the slope in MB per minute of 1080p video, and the fp32 weight
bytes the full-size networks add (from models/manifest.json), for the expected full-size peak.

`--repo` runs the job of another checkout (e.g. a worktree of main) on the same clips, for a before/after table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import wave

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS = 25
SIZE = (1080, 1920)  # height, width
PHOTO_SCALE = 2.5  # the 400 px fixture photo -> 1000 px: a 1080p talking-head sized face


def write_clip(folder, seconds, face_every):
    """A 1080p mp4, a 16 kHz speech wav of the same length and a per-frame box file; returns their paths."""
    import cv2

    sys.path.insert(0, REPO)
    from musetalk.video import VideoWriter

    inputs = np.load(os.path.join(REPO, "tests", "data", "fixtures", "inputs.npz"))
    photo = inputs["astronaut400_bgr"][..., ::-1]
    side = int(photo.shape[0] * PHOTO_SCALE)
    photo = cv2.resize(np.ascontiguousarray(photo), (side, side), interpolation=cv2.INTER_CUBIC)
    x1, y1, x2, y2 = (int(v * PHOTO_SCALE) for v in inputs["bboxes"][0] + np.tile(inputs["frame_offsets_xy"][0], 2))
    count = int(seconds * FPS)
    height, width = SIZE
    top = (height - side) // 2
    writer = VideoWriter(os.path.join(folder, "clip.mp4"), FPS, SIZE)
    boxes = []
    for start in range(0, count, 25):
        frames = np.full((min(25, count - start), height, width, 3), 60, np.uint8)
        for row, i in enumerate(range(start, start + len(frames))):
            left = int((width - side) * (0.5 + 0.4 * np.sin(i / 40)))  # a slow sway across the frame
            frames[row, top:top + side, left:left + side] = photo
            boxes.append([x1 + left, y1 + top, x2 + left, y2 + top] if i % face_every == 0 else None)
        writer.write(frames)
    writer.close()
    rate = 16000
    with wave.open(os.path.join(folder, "speech.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes((3000 * np.sin(np.arange(int(rate * seconds)) / 9)).astype("<i2").tobytes())
    with open(os.path.join(folder, "boxes.json"), "w") as f:
        json.dump(boxes, f)
    return [os.path.join(folder, name) for name in ("clip.mp4", "speech.wav", "boxes.json")]


def run_job(repo, models, clip, audio, boxes, out):
    """(peak RSS bytes, seconds) of one `python -m musetalk lipsync` run of the checkout `repo`."""
    command = [sys.executable, "-m", "musetalk", "lipsync", "--video", clip, "--audio", audio, "--out", out,
               "--bboxes", boxes, "--models", models, "--device", "cpu"]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the job failed in {repo}:\n{output}")
    return usage.ru_maxrss * 1024, time.perf_counter() - started


def mask_bytes():
    """Compressed size of this clip's blend mask (jaw mode, a clean face region as a real parser gives)."""
    import cv2

    sys.path.insert(0, REPO)
    from musetalk.face import BlendMasks
    from musetalk.masks import blend_mask, mask_from_labels

    inputs = np.load(os.path.join(REPO, "tests", "data", "fixtures", "inputs.npz"))
    box = (inputs["bboxes"][0] + np.tile(inputs["frame_offsets_xy"][0], 2)) * PHOTO_SCALE
    labels = np.zeros((512, 512), np.uint8)
    cv2.ellipse(labels, (256, 270), (150, 200), 0, 0, 360, 1, -1)  # skin
    cv2.ellipse(labels, (256, 380), (50, 20), 0, 0, 360, 12, -1)  # lips
    return BlendMasks([blend_mask(mask_from_labels(labels, "jaw"), box.astype(int), "jaw")]).nbytes


def full_size_weights(version="v1.5"):
    """fp32 weight bytes per component of the official checkpoints, from the manifest's file sizes."""
    sys.path.insert(0, REPO)
    from musetalk.models import manifest_files

    sizes = {}
    for entry in manifest_files(version):
        if entry.get("size"):
            sizes[entry["component"]] = sizes.get(entry["component"], 0) + entry["size"]
    return sizes


def ensure_small_models(folder):
    if not os.path.isdir(os.path.join(folder, "musetalkV15")):
        subprocess.run([sys.executable, os.path.join(REPO, "tests", "checkpoint_generator.py"), folder,
                        "--size", "small"], check=True)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", default="4,16", help="clip lengths in seconds, comma-separated (two or more)")
    parser.add_argument("--face-every", type=int, default=25, help="give a face box on every N-th frame only")
    parser.add_argument("--models", help="folder of small random checkpoints (written when missing)")
    parser.add_argument("--repo", action="append", default=[], help="another checkout to measure (repeatable)")
    parser.add_argument("--keep", help="folder for the clips and outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    lengths = [float(s) for s in args.seconds.split(",")]
    work = args.keep or tempfile.mkdtemp(prefix="musetalk-memory-")
    models = ensure_small_models(args.models or os.path.join(tempfile.gettempdir(), "musetalk-small-models"))
    repos = [REPO] + args.repo

    peaks = {repo: [] for repo in repos}
    for seconds in lengths:
        folder = os.path.join(work, f"{seconds:g}s")
        os.makedirs(folder, exist_ok=True)
        clip, audio, boxes = write_clip(folder, seconds, args.face_every)
        for repo in repos:
            peak, took = run_job(repo, models, clip, audio, boxes, os.path.join(folder, "out.mp4"))
            peaks[repo].append(peak)
            print(f"{repo}: {seconds:g} s of 1080p ({int(seconds * FPS)} frames): peak RSS {peak / 2**20:.0f} MiB, "
                  f"{took:.0f} s", flush=True)

    print(f"\npeak host RSS of `python -m musetalk lipsync`, 1080p 25 fps, a face on every {args.face_every}. frame, "
          "small random checkpoints, cpu")
    print("checkout".ljust(40) + "".join(f"{s:g} s".rjust(12) for s in lengths) + "   MiB per minute of video")
    for repo in repos:
        slope = np.polyfit(lengths, np.array(peaks[repo]) / 2**20, 1)[0] * 60
        print(os.path.basename(os.path.normpath(repo)).ljust(40)
              + "".join(f"{p / 2**20:9.0f} MiB" for p in peaks[repo]) + f"   {slope:9.0f}")

    print(f"per face frame kept for the whole job: source latents 32 KiB + its compressed blend mask "
          f"({mask_bytes() / 1024:.0f} KiB for this clip's face): "
          f"{(32 * 1024 + mask_bytes()) * FPS * 60 / 2**20:.0f} MiB per minute of video with a face in every frame")
    weights = full_size_weights()
    print("\nfull-size v1.5 weights (fp32 file bytes, models/manifest.json): "
          + ", ".join(f"{name} {size / 2**20:.0f} MiB" for name, size in sorted(weights.items())))
    # the job holds the whisper encoder, then the face networks with the VAE, then the UNet with the VAE
    stages = [("whisper",), ("s3fd", "dwpose", "face_parsing", "vae"), ("unet", "vae")]
    resident = max(sum(weights.get(c, 0) for c in stage) for stage in stages)
    print(f"largest set held at once: {resident / 2**20:.0f} MiB (UNet + VAE): expected full-size peak = the peaks "
          f"above + {resident / 2**20:.0f} MiB + the full-size networks' activations (batch 8)")


if __name__ == "__main__":
    main()
