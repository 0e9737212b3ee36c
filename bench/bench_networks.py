"""Per-network cost of MuseTalk at the official sizes: ms per frame, GFLOP per frame, achieved rate, peak memory.

    python -m bench.bench_networks [--models DIR] [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--batch 8]
                                   [--only unet,vae_decode,...] [--repeats 3] [--threads N]
                                   [--channels-last]

Run from the repository root. The weights are random (the documented generator, official shapes), which changes
nothing about the cost. If DIR lacks a checkpoint, the full-size set (~7.5 GB, a few minutes) is written there first.

Frames: the UNet, the VAE decoder and paste-back run once per output frame; BiSeNet, the masks, DWPose and two VAE
encodes (masked and reference) once per source frame. "VAE encode" is reported per image.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from musetalk.models import MuseTalkModels, ModelFiles
from musetalk.runtime import StandaloneRuntime

from .measure import format_table, gemm_rate, load_average, measure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# full-size checkpoints are 7.5 GB: keep them out of the repository, reused across runs
DEFAULT_MODELS = os.environ.get("MUSETALK_BENCH_MODELS", os.path.join(tempfile.gettempdir(), "musetalk-bench-models"))
NETWORKS = ("unet", "vae_encode", "vae_decode", "bisenet", "masks", "dwpose", "paste")
_COMPONENTS = {"unet": "unet", "vae_encode": "vae", "vae_decode": "vae", "bisenet": "face_parsing",
               "masks": "face_parsing", "dwpose": "dwpose"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FRAME_HW = (1080, 1920)
FACE_BOX = (860, 330, 1160, 690)  # a 300x360 face in a 1080p frame


def ensure_models(models_dir, version="v1.5"):
    """Write the full-size random-weight checkpoints into `models_dir` unless every needed file is there."""
    if not ModelFiles([models_dir]).missing(version):
        return
    print(f"writing full-size random-weight checkpoints to {models_dir} (~7.5 GB) ...", flush=True)
    generator = os.path.join(REPO, "tests", "checkpoint_generator.py")
    subprocess.run([sys.executable, generator, models_dir, "--size", "full"], check=True)


def prepare(module, channels_last):
    """Apply the layout choice to the UNet or the VAE."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def _layout(x, channels_last):
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def stage_inputs(name, models, batch, options):
    """(callable, frames per call, count FLOPs) for one network; builds the network on first use."""
    device, channels_last = models.runtime.device, options.channels_last
    gen = torch.Generator().manual_seed(0)
    if name == "unet":
        from musetalk.networks.unet import audio_positional_encoding

        unet = models.unet()
        models.runtime.load(unet)
        net = prepare(unet.module, channels_last)
        latents = _layout(torch.randn(batch, 8, 32, 32, generator=gen), channels_last).to(device, unet.dtype)
        audio = (torch.randn(batch, 50, 384, generator=gen) + audio_positional_encoding()).to(device, unet.dtype)
        timestep = torch.tensor([0], device=device)
        return lambda: net(latents, timestep, audio), batch, True
    if name in ("vae_encode", "vae_decode"):
        vae = models.vae()
        models.runtime.load(vae)
        net = prepare(vae.module, channels_last)
        if name == "vae_encode":
            images = _layout(torch.rand(batch, 3, 256, 256, generator=gen) * 2 - 1, channels_last).to(device, vae.dtype)
            return lambda: net.encode(images), batch, True
        latents = _layout(torch.randn(batch, 4, 32, 32, generator=gen), channels_last).to(device, vae.dtype)
        return lambda: net.decode(latents), batch, True
    if name == "bisenet":
        parser = models.face_parser()
        models.runtime.load(parser)
        images = torch.randn(batch, 3, 512, 512, generator=gen).to(device, parser.dtype)
        return lambda: parser.module(images), batch, True
    frames = np.random.default_rng(0).integers(0, 256, (batch,) + FRAME_HW + (3,), dtype=np.uint8)
    if name == "masks":
        from musetalk.masks import blend_masks

        parser = models.face_parser()
        return lambda: blend_masks(parser, models.runtime, frames, [FACE_BOX] * batch, "jaw", batch_size=batch), \
            batch, True
    if name == "dwpose":
        from musetalk.networks.rtmpose import estimate_keypoints

        pose = models.dwpose()
        return lambda: estimate_keypoints(pose, models.runtime, frames, batch_size=batch), batch, True
    if name == "paste":
        from musetalk.blend import paste_faces
        from musetalk.masks import CROP_EXPAND, crop_box

        box = crop_box(FACE_BOX, CROP_EXPAND["jaw"])
        side = box[2] - box[0]
        target = torch.from_numpy(frames).to(device)
        faces = torch.randint(0, 256, (batch, 256, 256, 3), dtype=torch.uint8, generator=gen).to(device)
        masks = [torch.randint(0, 256, (side, side), dtype=torch.uint8, generator=gen).to(device)] * batch
        return lambda: paste_faces(target, faces, [FACE_BOX] * batch, masks, [box] * batch), batch, False
    raise ValueError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")


def run(options):
    ensure_models(options.models)
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    runtime = StandaloneRuntime(device)
    gemm_dtype = torch.float32 if device.type == "cpu" else DTYPES[options.dtype]
    rate_before = gemm_rate(device, gemm_dtype)
    stages = []
    for name in options.only:
        # a fresh bundle per network, dropped afterwards, so each stage's memory figure holds only its own weights
        models = MuseTalkModels("v1.5", ModelFiles([options.models]), runtime, options.dtype)
        fn, frames, count = stage_inputs(name, models, options.batch, options)
        with torch.inference_mode():
            stages.append(measure(name, fn, frames, device, options.repeats, count))
        print(format_table(stages[-1:], None), flush=True)
        del models, fn
    # measured before and after: on a shared machine either may have lost a core to other work; keep the better
    rate = max(rate_before, gemm_rate(device, gemm_dtype))
    load = load_average()
    title = (f"{device} {options.dtype} batch {options.batch}, {torch.get_num_threads()} threads, "
             f"channels_last={options.channels_last}; dense GEMM "
             f"{rate:.0f} GFLOP/s; load average {load if load is None else round(load, 1)}")
    print()
    print(format_table(stages, rate, title))
    return stages


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="full-size models folder (generated if missing)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=tuple(DTYPES),
                        help="UNet/VAE precision (BiSeNet and DWPose always run fp32)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--only", default=",".join(NETWORKS), type=lambda s: [n for n in s.split(",") if n])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--channels-last", action="store_true", help="UNet/VAE weights and inputs channels-last")
    options = parser.parse_args(argv)
    unknown = [n for n in options.only if n not in NETWORKS]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(NETWORKS)}")
    return options


if __name__ == "__main__":
    run(parse_args())
