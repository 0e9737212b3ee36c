"""The device check behind bench/gpu_check.sh: parity with the CPU, prepared-avatar and end-to-end frame rates, peak
device memory, the share of time beyond UNet + decode, and whether channels-last, torch.compile or CUDA graphs make
the UNet and the decoder faster, printed as one table.

    python -m bench.gpu_check --small DIR --full DIR [--device cuda] [--quick]

--small: the fixture-seed checkpoints the golden outputs were made with (parity); --full: the full-size random
checkpoints (speed). --quick shrinks every size (tiny clip, batch sizes 1 and 2, fp32 only on the CPU) so that the
whole script can be tried on a machine without a GPU before it is taken to one.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from musetalk import inpaint
from musetalk.audio import extract_features
from musetalk.models import ModelFiles, MuseTalkModels
from musetalk.networks.s3fd import detect_faces
from musetalk.pipeline import LipSyncOptions, lipsync
from musetalk.runtime import StandaloneRuntime

from . import bench_avatar
from .bench_pipeline import write_clip
from .measure import synchronize, timed

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "fixtures")
# fixtures/README.md: fp32 latents 1e-4; fp16 UNet prediction 2e-3 relative, decoded faces 3 LSB
TOLERANCES = {"fp32": (1e-4, 1), "fp16": (2e-3, 3), "bf16": (1.6e-2, 24)}


def fixture(name):
    return dict(np.load(os.path.join(FIXTURES, name + ".npz")))


def parity(small, device, precisions):
    """Rows (check, precision, measured, tolerance, ok) of the device against the CPU's fp32 and the goldens."""
    rows = []
    arrays = fixture("b_vae_unet_v15")
    reference = torch.from_numpy(arrays["pred_latents"])
    recon = arrays["recon_bgr"][..., ::-1].astype(np.int16)
    for precision in precisions:
        models = MuseTalkModels("v1.5", ModelFiles([small]), StandaloneRuntime(device), precision)
        predicted = inpaint.inpaint_latents(models, torch.from_numpy(arrays["latents"]),
                                            torch.from_numpy(arrays["in_audio"]), [0, 0, 0, 0], batch_size=4)
        relative = float((predicted - reference).abs().max() / reference.abs().max())
        vae = models.vae()
        models.runtime.load(vae)
        faces = inpaint.decode_batch(vae, inpaint.unscale(reference, vae.dtype)).cpu().numpy().astype(np.int16)
        lsb = int(np.abs(faces - recon).max())
        unet_tol, face_tol = TOLERANCES[precision]
        rows.append(("UNet prediction, max rel. error", precision, f"{relative:.2e}", f"{unet_tol:g}",
                     relative <= unet_tol))
        rows.append(("decoded faces, max LSB", precision, str(lsb), str(face_tol), lsb <= face_tol))
    # the face networks always run in fp32, TF32 off: the boxes must be the CPU's
    frames = np.ascontiguousarray(fixture("inputs")["astronaut400_bgr"][None, :384, :384, ::-1])
    boxes = {}
    for where in ("cpu", device):
        models = MuseTalkModels("v1.5", ModelFiles([small]), StandaloneRuntime(where), "auto")
        boxes[where] = detect_faces(models.face_detector(), models.runtime, frames)[0][:1]
    shift = float(np.abs(boxes["cpu"] - boxes[device]).max()) if len(boxes["cpu"]) else 0.0
    rows.append(("S3FD first box vs CPU, max px", "fp32", f"{shift:.2e}", "1e-3", shift <= 1e-3))
    speech = fixture("inputs")["audio_a16"].astype(np.float32)[None] / 32768.0
    features = {}
    for where in ("cpu", device):
        models = MuseTalkModels("v1.5", ModelFiles([small]), StandaloneRuntime(where), "fp32")
        features[where] = extract_features(models, torch.from_numpy(speech), 16000, 25).features
    gap = float((features["cpu"] - features[device]).abs().max())
    rows.append(("whisper features vs CPU, max abs", "fp32", f"{gap:.2e}", "1e-4", gap <= 1e-4))
    return rows


def avatar_rates(full, device, precisions, batches, sources, seconds):
    """Rows (precision, batch, frames, fps, share beyond UNet + decode, peak device GiB) of a prepared avatar."""
    rows = []
    for precision in precisions:
        models = MuseTalkModels("v1.5", ModelFiles([full]), StandaloneRuntime(device), precision)
        with tempfile.TemporaryDirectory() as folder:
            prepared = bench_avatar.prepare(models, folder, sources, seconds)
            for batch in batches:
                bench_avatar.new_audio(models, *prepared, batch)  # kernel choice, allocator
                reset_peak(device)
                count, wall = bench_avatar.timed_run(models, *prepared, batch)
                with bench_avatar.instrumented(models.runtime.device, ()) as totals:
                    _, instrumented_wall = bench_avatar.timed_run(models, *prepared, batch)
                networks = totals["UNet"][0] + totals["VAE decode"][0]
                rows.append((precision, batch, count, count / wall, 1 - networks / instrumented_wall,
                             peak_gib(device)))
    return rows


def offline_rate(full, device, precision, size, sources, seconds, batch):
    """(frames, fps, peak device GiB) of the whole command-line job on a clip of `size` (w, h), detection included,
    process start and model loading not."""
    models = MuseTalkModels("v1.5", ModelFiles([full]), StandaloneRuntime(device), precision)
    with tempfile.TemporaryDirectory() as folder:
        frames_dir, speech, _ = write_clip(folder, sources, seconds)
        big = os.path.join(folder, "big")
        os.makedirs(big)
        for i in range(sources):
            frame = Image.open(os.path.join(frames_dir, f"{i}.png"))
            canvas = Image.new("RGB", size, (40, 40, 40))
            canvas.paste(frame.resize((size[1] // 2, size[1] // 2)), (size[0] // 3, size[1] // 4))
            canvas.save(os.path.join(big, f"{i:05d}.png"))
        out = os.path.join(folder, "out.mp4")
        options = LipSyncOptions(batch_size=batch)
        lipsync(models, big, speech, os.path.join(folder, "warm.mp4"), options, log=lambda *_: None)
        reset_peak(device)
        synchronize(models.runtime.device)
        start = time.perf_counter()
        count = lipsync(models, big, speech, out, options, log=lambda *_: None)
        synchronize(models.runtime.device)
        return count, count / (time.perf_counter() - start), peak_gib(device)


def layout_variants(unet, vae, device):
    """(name, UNet call, decode call) for each way of running the two per-frame networks this check compares; the
    engine runs the first. Channels-last comes last because it converts the loaded weights in place."""
    yield "default", unet, vae.decode
    yield "torch.compile", torch.compile(unet), torch.compile(vae.decode)
    if torch.device(device).type == "cuda":  # CUDA graphs replay the whole network without launch overhead
        yield "compile + CUDA graphs", torch.compile(unet, mode="reduce-overhead"), \
            torch.compile(vae.decode, mode="reduce-overhead")
    unet.to(memory_format=torch.channels_last)
    vae.to(memory_format=torch.channels_last)
    yield "channels_last", unet, vae.decode


def layout_rates(full, device, precision, batch, repeats=3):
    """Rows (variant, first call s, UNet ms per frame, decode ms per frame, max |diff| of the decoded faces against
    the default) for the UNet and the VAE decoder, which every output frame runs: whether channels-last,
    `torch.compile` or CUDA graphs pay, and what compiling costs at the start. A variant that fails is reported with
    its error instead of its figures."""
    from musetalk.networks.unet import audio_positional_encoding

    models = MuseTalkModels("v1.5", ModelFiles([full]), StandaloneRuntime(device), precision)
    unet, vae = models.unet(), models.vae()
    models.runtime.load(unet)
    models.runtime.load(vae)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 8, 32, 32, generator=generator).to(device, unet.dtype)
    audio = (torch.randn(batch, 50, 384, generator=generator) + audio_positional_encoding()).to(device, unet.dtype)
    timestep = torch.tensor([0], device=device)
    face_latents = torch.randn(batch, 4, 32, 32, generator=generator).to(device, vae.dtype)
    rows, reference = [], None
    with torch.inference_mode():
        for name, run_unet, run_decode in layout_variants(unet.module, vae.module, device):
            try:
                first = timed(lambda: (run_unet(latents, timestep, audio), run_decode(face_latents)), device)[0]
                unet_s = min(timed(lambda: run_unet(latents, timestep, audio), device)[0] for _ in range(repeats))
                decode_s = min(timed(lambda: run_decode(face_latents), device)[0] for _ in range(repeats))
                faces = run_decode(face_latents).float()
            except Exception as error:  # a variant the installed torch cannot run is a finding, not a stop
                rows.append((name, f"failed: {type(error).__name__}: {str(error).splitlines()[0][:60]}"))
                continue
            reference = faces if reference is None else reference
            rows.append((name, first, 1000 * unet_s / batch, 1000 * decode_s / batch,
                         float((faces - reference).abs().max())))
    return rows


def reset_peak(device):
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device):
    return torch.cuda.max_memory_allocated() / 2 ** 30 if torch.device(device).type == "cuda" else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", required=True, help="fixture-seed checkpoints (tests/checkpoint_generator.py)")
    parser.add_argument("--full", required=True, help="full-size checkpoints (--size full)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a dry run without a GPU")
    args = parser.parse_args(argv)

    if args.quick:
        precisions, batches, sources, seconds, size, offline_seconds = ["fp32"], [1, 2], 2, 0.2, (320, 180), 0.2
    else:
        precisions, batches, sources, seconds, size, offline_seconds = (["fp16", "bf16"], [8, 16, 32, 64], 12, 8.0,
                                                                          (1920, 1080), 4.0)
    began = time.perf_counter()
    def emit(line):  # line by line: a run cut short at its time limit still shows what it measured
        print(line, flush=True)

    emit(f"MuseTalk v1.5 device check on {args.device} "
             f"({torch.cuda.get_device_name() if torch.device(args.device).type == 'cuda' else 'CPU'}), "
             f"torch {torch.__version__}")
    emit("part    | what                                   | precision | batch | measured   | goal / tol. | ok")
    parity_precisions = ["fp32"] if args.quick else ["fp32", "fp16", "bf16"]
    for check, precision, measured, tolerance, ok in parity(args.small, args.device, parity_precisions):
        emit(f"parity  | {check:38} | {precision:9} |     - | {measured:10} | {tolerance:11} | "
                     f"{'yes' if ok else 'NO'}")
    for precision, batch, count, fps, beyond, gib in avatar_rates(args.full, args.device, precisions, batches,
                                                                  sources, seconds):
        emit(f"avatar  | prepared avatar fps ({count} frames)        | {precision:9} | {batch:5d} | "
                     f"{fps:10.1f} | >= 500      | {'yes' if fps >= 500 else 'NO'}")
        emit(f"avatar  | share beyond UNet + decode             | {precision:9} | {batch:5d} | "
                     f"{100 * beyond:9.1f}% | < 10%       | {'yes' if beyond < 0.1 else 'NO'}")
        emit(f"avatar  | peak device memory, GiB                | {precision:9} | {batch:5d} | "
                     f"{gib:10.2f} | -           | -")
    offline_precision = precisions[0]
    count, fps, gib = offline_rate(args.full, args.device, offline_precision, size, sources, offline_seconds,
                                   batches[-1] if args.quick else 16)
    emit(f"offline | end to end fps, {size[0]}x{size[1]} ({count} frames)    | {offline_precision:9} | "
                 f"{batches[-1] if args.quick else 16:5d} | {fps:10.2f} | 5x official | see README")
    emit(f"offline | peak device memory, GiB                | {offline_precision:9} |     - | {gib:10.2f} | "
                 "-           | -")
    layout_precision, layout_batch = precisions[0], batches[-1] if args.quick else 16
    for row in layout_rates(args.full, args.device, layout_precision, layout_batch):
        if len(row) == 2:
            emit(f"layout  | {row[0]:38} | {layout_precision:9} | {layout_batch:5d} | {row[1]}")
            continue
        name, first, unet_ms, decode_ms, diff = row
        emit(f"layout  | {name + ', UNet + decode ms/frame':38} | {layout_precision:9} | {layout_batch:5d} | "
             f"{unet_ms + decode_ms:10.2f} | -           | -")
        emit(f"layout  | {name + ', first call s / max diff':38} | {layout_precision:9} | {layout_batch:5d} | "
             f"{first:10.1f} | {diff:.1e}     | -")
    emit(f"(check took {time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
