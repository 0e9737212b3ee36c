"""Run the official MuseTalk `scripts/inference.py` on a benchmark clip, in the official environment.

    OFFICIAL_PYTHON bench/official_run.py CHECKOUT BOXES KEEP -- [scripts/inference.py arguments]

Executed by the official environment's python (see bench/README.md), not ours: it imports nothing from this
repository but `official_imports` (that environment's import fixes for mmcv-lite and torchvision). The script runs
unchanged, as `__main__` from CHECKOUT (its model paths are relative to it), with its own argument parser; three
functions are patched first, none of which removes official work:

* `get_landmark_and_bbox` (as `scripts/inference.py` imports it): random-weight detectors give no usable face box,
  so the real function runs in full (DWPose + S3FD on every frame, paid as the official script pays it) and its
  coordinates are then replaced by the clip's known boxes (BOXES: JSON list of [x1, y1, x2, y2] per frame, the
  official format).
* `DiagonalGaussianDistribution.sample` returns the posterior mean: the official encoder samples the VAE posterior
  where our pipeline (and the golden fixtures) take the mean (README, "What differs"); without this the frames could not
  be compared. It only skips drawing one [1,4,32,32] noise tensor per encode.
* `shutil.rmtree` of a folder under `--result_dir`: the script deletes its result PNGs at the end; they are moved
  into KEEP instead, for the frame comparison.
"""
import argparse
import json
import os
import runpy
import shutil
import sys

import official_imports  # bench/official_imports.py: this script's folder is the first entry of sys.path


def patch_detection(boxes):
    import musetalk.utils.preprocessing as preprocessing

    detect = preprocessing.get_landmark_and_bbox

    def detect_then_use_known_boxes(img_list, upperbondrange=0):
        _, frames = detect(img_list, upperbondrange)
        if len(frames) != len(boxes):
            raise ValueError(f"{len(boxes)} known boxes for {len(frames)} frames")
        return boxes, frames

    # scripts/inference.py does `from musetalk.utils.preprocessing import get_landmark_and_bbox` when it runs,
    # after this, so it picks up the replacement
    preprocessing.get_landmark_and_bbox = detect_then_use_known_boxes


def patch_posterior_mean():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mean


def patch_keep_results(result_dir, keep):
    remove = shutil.rmtree
    result_dir = os.path.abspath(result_dir) + os.sep

    def keep_results(path, *args, **kwargs):
        if os.path.abspath(path).startswith(result_dir):
            shutil.move(path, os.path.join(keep, os.path.basename(path)))
        else:
            remove(path, *args, **kwargs)

    shutil.rmtree = keep_results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", help="official MuseTalk checkout")
    parser.add_argument("boxes", help="JSON file: [x1, y1, x2, y2] per frame")
    parser.add_argument("keep", help="folder that receives the result PNG folder")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="-- then the arguments of inference.py")
    args = parser.parse_args()
    script_args = args.script_args[1:] if args.script_args[:1] == ["--"] else args.script_args
    if "--result_dir" not in script_args:
        parser.error("give the script's --result_dir (the PNGs are kept from there)")
    with open(args.boxes) as f:
        boxes = [tuple(int(v) for v in box) for box in json.load(f)]
    result_dir = script_args[script_args.index("--result_dir") + 1]
    keep = os.path.abspath(args.keep)
    official_imports.install()
    os.chdir(args.checkout)
    sys.path.insert(0, os.getcwd())
    patch_detection(boxes)
    patch_posterior_mean()
    patch_keep_results(result_dir, keep)
    sys.argv = ["scripts/inference.py", *script_args]
    runpy.run_path("scripts/inference.py", run_name="__main__")


if __name__ == "__main__":
    main()
