"""End-to-end cost of the command line's lip-sync job at the official network sizes: per stage and in total,
ms per output frame, GFLOP per frame, achieved GFLOP/s against the measured GEMM rate, and peak host memory.

    python -m bench.bench_pipeline [--models DIR] [--device cpu|cuda] [--precision auto|fp32|fp16|bf16]
                                   [--sources 12] [--seconds 1.0] [--batch 8]

It runs `musetalk.pipeline.lipsync` on a generated clip (the fixture photo shifted over `--sources` frames of 384x384,
the fixture speech looped to `--seconds`) with the faces' boxes given, since random weights give no usable face box.
Each stage function of the real code path is wrapped with a timer; FLOPs per frame are counted once on a 3-frame clip.
Face detection (S3FD + DWPose), which the given boxes skip, is measured separately on the same frames. The defaults are
the issue's configuration: 12 source frames, 1 s of audio at 25 fps (25 output frames), batch 8. The audio stage is
counted on the timed clip itself, because whisper's cost is per 30 s piece, not per frame.
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import wave

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from musetalk import audio_offset, compose, face, lipsync, masks, pipeline
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.networks.rtmpose import estimate_keypoints
from musetalk.networks.s3fd import detect_faces
from musetalk.runtime import StandaloneRuntime
from musetalk.video import VideoWriter

from .bench_networks import DEFAULT_MODELS, REPO, ensure_models
from .measure import Stage, format_table, gemm_rate, load_average, peak_rss, reset_peak_rss, synchronize

FIXTURES = os.path.join(REPO, "tests", "data", "fixtures")
# (label, owner, attribute, per): the functions the pipeline calls for each stage, as it looks them up
STAGES = [
    ("audio features (whisper)", audio_offset, "extract_features", "output"),
    ("face masks (BiSeNet + steps)", masks, "blend_masks", "source"),
    ("network crops (LANCZOS)", face, "network_crop", "source"),
    ("VAE encode (2 per source)", lipsync, "encode_sources", "source"),
    ("UNet", lipsync, "inpaint_latents", "output"),
    ("VAE decode", lipsync, "decode_batch", "output"),
    ("paste on device", compose, "paste_faces_into", "output"),
    ("H.264 write", VideoWriter, "write", "output"),
]


def write_clip(folder, sources, seconds):
    """Frames (PNG folder), speech (wav) and box file of a generated clip; returns their paths."""
    inputs = np.load(os.path.join(FIXTURES, "inputs.npz"))
    photo, boxes = inputs["astronaut400_bgr"][..., ::-1], []
    os.makedirs(os.path.join(folder, "frames"), exist_ok=True)
    for i in range(sources):
        ox, oy = inputs["frame_offsets_xy"][i % len(inputs["frame_offsets_xy"])]
        Image.fromarray(np.ascontiguousarray(photo[oy:oy + 384, ox:ox + 384])).save(
            os.path.join(folder, "frames", f"{i}.png"))
        box = inputs["bboxes"][i % len(inputs["bboxes"])]
        boxes.append(box.tolist() if box[0] >= 0 else inputs["bboxes"][0].tolist())
    speech = np.resize(inputs["audio_a16"], int(seconds * 16000))
    with wave.open(os.path.join(folder, "speech.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
        f.writeframes(speech.astype("<i2").tobytes())
    with open(os.path.join(folder, "boxes.json"), "w") as f:
        json.dump(boxes, f)
    return os.path.join(folder, "frames"), os.path.join(folder, "speech.wav"), os.path.join(folder, "boxes.json")


@contextlib.contextmanager
def instrumented(device, counted):
    """Wrap every stage function; yields {label: [seconds, cpu seconds, flops]} filled as the pipeline runs.

    FLOPs are counted for the stages whose labels are in `counted` (counting slows a stage down)."""
    totals = {label: [0.0, 0.0, 0.0] for label, *_ in STAGES}
    originals = []
    for label, owner, name, _ in STAGES:
        original = getattr(owner, name)
        originals.append((owner, name, original))

        def wrapper(*args, _original=original, _label=label, **kwargs):
            synchronize(device)
            start, cpu = time.perf_counter(), time.process_time()
            if _label in counted:
                with FlopCounterMode(display=False) as counter:
                    result = _original(*args, **kwargs)
                totals[_label][2] += counter.get_total_flops()
            else:
                result = _original(*args, **kwargs)
            synchronize(device)
            totals[_label][0] += time.perf_counter() - start
            totals[_label][1] += time.process_time() - cpu
            return result

        setattr(owner, name, wrapper)
    try:
        yield totals
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def run(models, folder, sources, seconds, batch, counted):
    """One pipeline run; returns (stage totals, output frames, wall seconds, CPU seconds, peak RSS)."""
    frames_dir, speech, boxes = write_clip(folder, sources, seconds)
    with open(boxes) as f:
        options = pipeline.LipSyncOptions(batch_size=batch, bboxes=f.read())
    reset_peak_rss()
    with instrumented(models.runtime.device, counted) as totals:
        start, cpu = time.perf_counter(), time.process_time()
        frames = pipeline.lipsync(models, frames_dir, speech, os.path.join(folder, "out.mp4"), options,
                                  log=lambda *a: None)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return totals, frames, wall, cpu, peak_rss()


def read_clip_frames(frames_dir, sources):
    """The clip's source frames written by `write_clip`: uint8 RGB [sources,384,384,3]."""
    return np.stack([np.asarray(Image.open(os.path.join(frames_dir, f"{i}.png"))) for i in range(sources)])


def detect_every_frame(models, frames):
    """S3FD + DWPose on every frame (RGB uint8 [N,H,W,3]), the detection work of a clip whose frames all hold a face.

    detect_and_parse runs DWPose only on frames where S3FD returns a box, which random weights may or may not do,
    so the two networks are called here directly; their results are meaningless with random weights and dropped."""
    detect_faces(models.face_detector(), models.runtime, frames)
    estimate_keypoints(models.dwpose(), models.runtime, np.ascontiguousarray(frames[..., ::-1]))


def detection_stage(models, folder, sources):
    """S3FD + DWPose on the clip's frames, as detect_and_parse runs them when no boxes are given."""
    frames = read_clip_frames(os.path.join(folder, "frames"), sources)
    stage = Stage("face detection (S3FD + DWPose)", sources)
    with FlopCounterMode(display=False) as counter:
        detect_every_frame(models, frames[:1])
    stage.flops = counter.get_total_flops() * sources
    start, cpu = time.perf_counter(), time.process_time()
    detect_every_frame(models, frames)
    stage.seconds.append(time.perf_counter() - start)
    stage.cpu_seconds.append(time.process_time() - cpu)
    return stage


def clip_arguments(parser, precision, seconds):
    """The options the scripts that run the pipeline on the generated clip share."""
    parser.add_argument("--models", default=DEFAULT_MODELS, help="full-size models folder (generated if missing)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=precision, choices=("auto", "fp32", "fp16", "bf16"))
    parser.add_argument("--version", default="v1.5", choices=("v1.5", "v1.0"))
    parser.add_argument("--sources", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    clip_arguments(parser, precision="fp32", seconds=1.0)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)

    ensure_models(args.models, args.version)
    models = MuseTalkModels(args.version, ModelFiles([args.models]), StandaloneRuntime(args.device), args.precision)
    gemm = gemm_rate(args.device, torch.float32 if args.precision in ("fp32", "auto") and args.device == "cpu"
                     else torch.float16 if args.precision != "bf16" else torch.bfloat16)
    with tempfile.TemporaryDirectory() as folder:
        per_frame = {label for label, *_ in STAGES[1:]}
        counted, counted_frames, *_ = run(models, os.path.join(folder, "count"), 2, 0.12, args.batch, per_frame)
        totals, out_frames, wall, cpu, rss = run(models, os.path.join(folder, "time"), args.sources, args.seconds,
                                                 args.batch, {STAGES[0][0]})
        detection = detection_stage(models, os.path.join(folder, "time"), args.sources)
    units = {"output": out_frames, "source": args.sources}
    counted_units = {"output": counted_frames, "source": 2}
    stages = []
    for label, _, _, per in STAGES:
        seconds, stage_cpu, _ = totals[label]
        stage = Stage(f"{label} [per {per} frame]", units[per], [seconds], [stage_cpu])
        stage.flops = totals[label][2] or counted[label][2] / counted_units[per] * units[per]
        stages.append(stage)
    detection.name += " [per source frame]"
    stages.append(detection)
    end_to_end = Stage("end to end, boxes given [per output frame]", out_frames, [wall], [cpu])
    end_to_end.flops = sum(s.flops for s in stages[:-1])
    end_to_end.rss_peak = rss
    end_to_end.rss_is_process_peak = True
    with_detection = Stage("end to end + detection [per output frame]", out_frames, [wall + detection.best],
                           [cpu + detection.cpu_seconds[0]])
    with_detection.flops = end_to_end.flops + detection.flops
    print(format_table(stages + [end_to_end, with_detection], gemm,
                       f"MuseTalk {args.version} pipeline, {args.device} {args.precision}, {args.sources} source "
                       f"frames, {args.seconds:g} s audio -> {out_frames} output frames, batch {args.batch}; "
                       f"GEMM {gemm:.0f} GFLOP/s; load average {load_average()}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
