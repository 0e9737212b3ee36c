"""Throughput of a prepared avatar: what a new audio costs once the video's faces and latents are known.

    python -m bench.bench_avatar [--models DIR] [--device cpu|cuda] [--precision auto|fp32|fp16|bf16]
                                 [--sources 12] [--seconds 2.0] [--batch 8[,16,32]]

The clip of `bench_pipeline` is analysed and encoded once (as MuseTalk Save Avatar does); then, per batch size, the
two stages a new audio runs are timed on the real code path: `generate_latents` (UNet) and `render_frames` (VAE
decode + paste on the device + the copy of finished frames to the host), the engine side of LatentLipInpaint and
BlendAndDecode. Video encoding is not counted: inside ComfyUI the frames leave as an IMAGE. The table gives each
network's share and the rest ("everything beyond UNet + decode": indexing, casts, paste, copies), which issue #6
wants under 10% of the per-frame time on a GPU. On a GPU each batch size first runs once untimed (kernel choice,
allocator), then once plain for the frame rate and once with a synchronised timer around each stage for the shares.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from musetalk import lipsync
from musetalk.audio import extract_features
from musetalk.face import detect_and_parse
from musetalk.face_boxes import parse_bboxes
from musetalk.inpaint import cycle_indices
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.runtime import StandaloneRuntime
from musetalk.video import read_audio

from .bench_networks import ensure_models
from .bench_pipeline import clip_arguments, instrumented, write_clip
from .measure import load_average, synchronize


def prepare(models, folder, sources, seconds):
    """Faces, source latents, frames and whisper features of the generated clip, as a saved avatar would hold them."""
    frames_dir, speech, boxes_file = write_clip(folder, sources, seconds)
    frames = np.stack([np.asarray(Image.open(os.path.join(frames_dir, f"{i}.png"))) for i in range(sources)])
    with open(boxes_file) as f:
        boxes = parse_bboxes(f.read(), len(frames), frames.shape[1:3])
    faces, crops = detect_and_parse(models, frames, bboxes=boxes)
    latents = lipsync.SourceLatents.encode(models, faces, crops)
    waveform, sample_rate = read_audio(speech)
    features = extract_features(models, torch.from_numpy(waveform), sample_rate, 25.0)
    return faces, latents, torch.from_numpy(frames), features


def new_audio(models, faces, latents, frames, features, batch):
    """The work of one new audio on a prepared avatar; returns the number of output frames."""
    index = cycle_indices(len(faces), features.frame_count)
    samples = lipsync.generate_latents(models, latents, features, index, batch)
    produced = 0
    for out in lipsync.render_frames(models, faces, samples, index, lambda i: frames[i], batch):
        produced += len(out)
    return produced


def timed_run(models, faces, latents, frames, features, batch):
    synchronize(models.runtime.device)
    start = time.perf_counter()
    count = new_audio(models, faces, latents, frames, features, batch)
    synchronize(models.runtime.device)
    return count, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    clip_arguments(parser, precision="auto", seconds=2.0)
    parser.add_argument("--batch", default="8", help="batch sizes, comma-separated")
    args = parser.parse_args(argv)

    ensure_models(args.models, args.version)
    runtime = StandaloneRuntime(args.device)
    models = MuseTalkModels(args.version, ModelFiles([args.models]), runtime, args.precision)
    labels = ("UNet", "VAE decode", "paste on device")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        faces, latents, frames, features = prepare(models, folder, args.sources, args.seconds)
        for batch in (int(b) for b in args.batch.split(",")):
            wall = None
            if runtime.device.type == "cuda":
                # the instrumented run synchronises around every stage, which stops the host from running ahead of
                # the GPU; the frame rate comes from a plain run after a warm-up one (kernel choice, allocator)
                new_audio(models, faces, latents, frames, features, batch)
                torch.cuda.reset_peak_memory_stats()
                wall = timed_run(models, faces, latents, frames, features, batch)[1]
            with instrumented(runtime.device, ()) as totals:
                count, instrumented_wall = timed_run(models, faces, latents, frames, features, batch)
            cuda = torch.cuda.max_memory_allocated() / 2 ** 30 if runtime.device.type == "cuda" else None
            rows.append((batch, count, wall or instrumented_wall, instrumented_wall,
                         {label: totals[label][0] for label in labels}, cuda))

    dtype = runtime.compute_dtype("unet", args.precision)
    print(f"Prepared avatar, MuseTalk {args.version}, {args.device} {str(dtype).replace('torch.', '')}, "
          f"{args.sources} source frames, {args.seconds:g} s audio; load average {load_average()}")
    print("batch | frames | fps    | ms/frame | UNet ms | decode ms | paste ms | rest ms | beyond UNet+decode "
          "| CUDA GiB")
    for batch, count, wall, instrumented_wall, parts, cuda in rows:
        # shares come from the instrumented run, the frame rate from the plain one
        per = {label: 1000 * seconds / count for label, seconds in parts.items()}
        total = 1000 * instrumented_wall / count
        rest = total - per["UNet"] - per["VAE decode"]
        print(f"{batch:5d} | {count:6d} | {count / wall:6.2f} | {1000 * wall / count:8.1f} | {per['UNet']:7.1f} | "
              f"{per['VAE decode']:9.1f} | {per['paste on device']:8.2f} | {rest:7.2f} | {100 * rest / total:17.1f}% | "
              f"{'-' if cuda is None else f'{cuda:.2f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
