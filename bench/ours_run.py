"""Our side of `bench.bench_official`: the official script's job done by our pipeline, in a process of its own.

    python -m bench.ours_run MODELS FRAMES SPEECH BOXES OUT PNG_DIR [--batch 8]

First face detection, S3FD + DWPose on every source frame, which is the detection work the official script does;
random weights give no usable face box, so its results are dropped and `pipeline.lipsync` takes the clip's known
boxes (BOXES: JSON list of [x1, y1, x2, y2] per frame), writes the mp4 OUT and the frames as PNGs into PNG_DIR.
Prints one JSON line: seconds of the detection and of the lip sync, and the number of frames written. Model loading
counts where it happens (the face networks in the detection, the others in the lip sync), as in the official script.
"""
import argparse
import json
import sys
import time

from musetalk import pipeline
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.runtime import StandaloneRuntime

from .bench_pipeline import detect_every_frame, read_clip_frames


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("models", "frames", "speech", "boxes", "out", "png_dir"):
        parser.add_argument(name)
    parser.add_argument("--sources", type=int, required=True, help="source frames in FRAMES (0.png ...)")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)

    models = MuseTalkModels("v1.5", ModelFiles([args.models]), StandaloneRuntime("cpu"), "fp32")
    start = time.perf_counter()
    detect_every_frame(models, read_clip_frames(args.frames, args.sources))
    detection = time.perf_counter() - start
    with open(args.boxes) as f:
        options = pipeline.LipSyncOptions(batch_size=args.batch, bboxes=f.read())
    start = time.perf_counter()
    written = pipeline.lipsync(models, args.frames, args.speech, args.out, options, frames_dir=args.png_dir,
                               log=lambda *a: None)
    print(json.dumps({"detection_s": detection, "lipsync_s": time.perf_counter() - start, "frames": written}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
