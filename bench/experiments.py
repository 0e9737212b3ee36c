"""Speed-up experiments on the full-size UNet and VAE, each with its effect on the results.

    python -m bench.experiments [--models DIR] [--batch 1] [--repeats 2] [--only threads,layout,...]

threads       dense GEMM and UNet time with 1 and 2 intra-op threads
layout        UNet, VAE encoder and decoder: default vs channels_last: time and max |diff|
time_embed    the t=0 time embedding precomputed: FLOPs it saves and whether the UNet output stays bit-identical
bf16          UNet in bf16 vs fp32: time and error of the predicted latents
bf16_vae      VAE decoder in bf16 vs fp32 on a 16x16 latent: time and error of the decoded uint8
decode_rows   decode only the latent rows the blend mask can reach (plus a halo) vs a full decode

The weights are random (official shapes). Timings are what they would be with the real weights; error figures only
bound what real weights would give where the networks' receptive fields behave alike.
"""
import argparse
import os
import time

import numpy as np
import torch

from musetalk.models import MuseTalkModels, ModelFiles
from musetalk.networks.unet import LATENT_SCALE, audio_positional_encoding, timestep_sinusoid
from musetalk.runtime import StandaloneRuntime

from .bench_networks import DEFAULT_MODELS, REPO, ensure_models
from .measure import count_flops, gemm_rate, load_average, threads, timed

EXPERIMENTS = ("threads", "layout", "time_embed", "bf16", "bf16_vae", "decode_rows")
#: latent row from which the blend masks can be non-zero: the mask is cut above the face's centre line (pixel row 128
#: of the 256 crop) and then blurred by at most 0.1 of a 1.5x crop, which reaches ~19 rows higher: pixel row ~109
MASK_FIRST_LATENT_ROW = 12


def best_time(fn, repeats):
    """Best wall seconds of `repeats` calls (see `measure.timed` for the CPU-time figure of the layout runs)."""
    return min(timed(fn)[0] for _ in range(repeats))


def to_u8(decoded):
    """The official decode_latents output step: [B,3,H,W] in -1..1 -> uint8 [B,H,W,3]."""
    return ((decoded.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)


def u8_diff(a, b):
    d = (a.to(torch.int16) - b.to(torch.int16)).abs()
    return f"max {int(d.max())}, >1 on {100 * (d > 1).float().mean():.3f}%, >0 on {100 * (d > 0).float().mean():.2f}%"


class Bench:
    def __init__(self, options):
        self.options = options
        self.models = MuseTalkModels("v1.5", ModelFiles([options.models]), StandaloneRuntime("cpu"), "fp32")
        gen = torch.Generator().manual_seed(0)
        b = options.batch
        self.latents = torch.randn(b, 8, 32, 32, generator=gen)
        self.audio = torch.randn(b, 50, 384, generator=gen) + audio_positional_encoding()
        self.timestep = torch.tensor([0])

    def unet(self):
        return self.models.unet().module

    def vae(self):
        return self.models.vae().module

    def run_unet(self, net, dtype=torch.float32, channels_last=False):
        x = self.latents.to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return net(x, self.timestep, self.audio.to(dtype))

    def face_latents(self):
        """Scaled latents of a real photo crop (the public-domain fixture image), batch-sized, as decode input."""
        import cv2

        photo = np.load(os.path.join(REPO, "tests", "data", "fixtures", "inputs.npz"))["astronaut400_bgr"]
        frame = cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA)
        rgb = torch.from_numpy(frame[..., ::-1].copy()).permute(2, 0, 1).float() / 255 * 2 - 1
        with torch.inference_mode():
            mean = self.vae().encode(rgb[None])
        return (mean * LATENT_SCALE).repeat(self.options.batch, 1, 1, 1)


def exp_threads(bench, repeats):
    for count in (1, 2):
        with threads(count):
            print(f"  {count} thread(s): GEMM {gemm_rate():.0f} GFLOP/s", flush=True)
    net = bench.unet()
    with torch.inference_mode():
        times = {}
        for _ in range(repeats):
            for count in (1, 2):
                with threads(count):
                    t = best_time(lambda: bench.run_unet(net), 1)
                times[count] = min(times.get(count, t), t)
    for count, t in times.items():
        print(f"  UNet batch {bench.options.batch}, {count} thread(s): {t / bench.options.batch * 1e3:.0f} ms/frame")


def _compare_layouts(name, net, run, batch, repeats):
    """Time `run(channels_last)` in the default layout and channels-last; max |diff| against the first.

    The variants take turns within each round (switching costs one weight copy at most), so a burst of other work
    on a shared machine slows all of them rather than one.
    """
    def configure(channels_last):
        net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    variants = {"default": False, "channels_last": True}
    best, cpu, diff = {}, {}, {}
    with torch.inference_mode():
        reference = run(False)
        for round_ in range(repeats + 1):  # round 0 warms every variant up and measures its difference
            for label, channels_last in variants.items():
                configure(channels_last)
                if round_ == 0:
                    diff[label] = (run(channels_last) - reference).abs().max().item()
                else:
                    seconds, cpu_seconds = timed(lambda: run(channels_last))
                    best[label] = min(best.get(label, seconds), seconds)
                    cpu[label] = min(cpu.get(label, cpu_seconds), cpu_seconds)
        configure(False)
    cells = [f"{label} {best[label] / batch * 1e3:.0f} ms/frame, CPU {cpu[label] / batch * 1e3:.0f} ms/frame "
             f"(max |diff| {diff[label]:.1e})" for label in variants]
    print(f"  {name} batch {batch}: " + " | ".join(cells) + f"; output |max| {reference.abs().max().item():.2f}",
          flush=True)


def exp_layout(bench, repeats):
    b = bench.options.batch
    unet = bench.unet()
    _compare_layouts("UNet", unet, lambda cl: bench.run_unet(unet, channels_last=cl), b, repeats)
    vae = bench.vae()
    x = torch.rand(b, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    _compare_layouts("VAE encode", vae,
                     lambda cl: vae.encode(x.contiguous(memory_format=torch.channels_last) if cl else x),
                     b, repeats)
    z = torch.randn(b, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    _compare_layouts("VAE decode", vae,
                     lambda cl: vae.decode(z.contiguous(memory_format=torch.channels_last) if cl else z),
                     b, repeats)


class _ConstantEmbedding(torch.nn.Module):
    """Stands in for `time_embedding`: returns the precomputed t=0 vector, broadcast to the batch."""

    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, sinusoid):
        return self.embedding.expand(sinusoid.shape[0], -1)


def exp_time_embed(bench, repeats):
    net = bench.unet()
    with torch.inference_mode():
        c = net.config
        t_emb = timestep_sinusoid(bench.timestep, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
        _, path_flops = count_flops(lambda: net.time_embedding(t_emb))
        embedding = net.time_embedding(t_emb)
        _, total = count_flops(lambda: bench.run_unet(net))
        reference = bench.run_unet(net)
        original = net.time_embedding
        net.time_embedding = _ConstantEmbedding(embedding)
        try:
            cached = bench.run_unet(net)
        finally:
            net.time_embedding = original
    # every ResNet block still projects the (constant) embedding to its channels: count those linear layers too
    proj = sum(2 * m.in_features * m.out_features for n, m in net.named_modules() if n.endswith("time_emb_proj"))
    b = bench.options.batch
    print(f"  time_embedding MLP: {path_flops / 1e6:.1f} MFLOP per call; all ResNet time projections "
          f"{proj / 1e6:.1f} MFLOP per frame; whole UNet {total / b / 1e9:.1f} GFLOP per frame -> "
          f"precomputing both saves {100 * (path_flops + proj * b) / total:.3f}%")
    print(f"  output with the precomputed embedding bit-identical: {torch.equal(reference, cached)} "
          f"(max |diff| {(reference - cached).abs().max().item():.2e})")


def exp_bf16(bench, repeats):
    b = bench.options.batch
    net = bench.unet()
    with torch.inference_mode():
        pred32 = bench.run_unet(net)
        t32 = best_time(lambda: bench.run_unet(net), repeats)
        torch.nn.Module.to(net, torch.bfloat16)
        start = time.perf_counter()  # one call: without native bf16 a call takes minutes, warm-up is noise
        pred16 = bench.run_unet(net, torch.bfloat16).float()
        t16 = time.perf_counter() - start
        torch.nn.Module.to(net, torch.float32)
    err = (pred16 - pred32).abs()
    print(f"  UNet batch {b}: fp32 {t32 / b * 1e3:.0f} ms/frame, bf16 {t16 / b * 1e3:.0f} ms/frame; pred latents "
          f"max |diff| {err.max().item():.3e}, mean {err.mean().item():.3e} (fp32 |pred| mean "
          f"{pred32.abs().mean().item():.3f})", flush=True)


def exp_bf16_vae(bench, repeats):
    b = bench.options.batch
    vae = bench.vae()
    # a 16x16 latent window (the lower-middle face, a 128x128 image): bf16 convolutions without native CPU support
    # are so slow that a full 32x32 decode takes minutes; the per-pixel error is of the same kind
    z = bench.face_latents()[:, :, 16:, 8:24] / LATENT_SCALE
    with torch.inference_mode():
        img32 = vae.decode(z)
        t32 = best_time(lambda: vae.decode(z), repeats)
        torch.nn.Module.to(vae, torch.bfloat16)
        start = time.perf_counter()
        img16 = vae.decode(z.to(torch.bfloat16)).float()
        t16 = time.perf_counter() - start
        torch.nn.Module.to(vae, torch.float32)
    unsaturated = ((img32 > -1) & (img32 < 1)).float().mean().item()
    print(f"  VAE decode of a 16x16 latent, batch {b}: fp32 {t32 / b * 1e3:.0f} ms/frame, bf16 {t16 / b * 1e3:.0f} ms/frame; "
          f"decoded uint8 {u8_diff(to_u8(img16), to_u8(img32))} ({100 * unsaturated:.0f}% of fp32 values "
          f"unclipped)")


def exp_decode_rows(bench, repeats):
    vae = bench.vae()
    b = bench.options.batch
    z = bench.face_latents() / LATENT_SCALE
    r0 = MASK_FIRST_LATENT_ROW
    with torch.inference_mode():
        full = vae.decode(z)
        t_full = best_time(lambda: vae.decode(z), repeats)
        kept_full = full[:, :, 8 * r0:]
        unclipped = ((kept_full > -1) & (kept_full < 1)).float().mean().item()
        print(f"  full decode: {t_full / b * 1e3:.0f} ms/frame; kept pixel rows {8 * r0}..255 "
              f"({100 * unclipped:.0f}% of values unclipped, std {kept_full.std().item():.3f})", flush=True)
        for halo in (0, 2, 4, 8, r0):
            start = r0 - halo
            part = vae.decode(z[:, :, start:])
            t_part = best_time(lambda: vae.decode(z[:, :, start:]), repeats)
            kept = part[:, :, 8 * halo:]
            diff = (kept - kept_full).abs()
            print(f"  latent rows {start}..31 (halo {halo}): {t_part / b * 1e3:.0f} ms/frame "
                  f"({100 * (1 - t_part / t_full):.0f}% saved); kept region float max |diff| {diff.max().item():.3e}, "
                  f"mean {diff.mean().item():.3e}; uint8 {u8_diff(to_u8(kept), to_u8(kept_full))}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default=",".join(EXPERIMENTS), type=lambda s: [n for n in s.split(",") if n])
    options = parser.parse_args(argv)
    ensure_models(options.models)
    bench = Bench(options)
    for name in options.only:
        load = load_average()
        print(f"{name} (load average {load:.1f}):", flush=True)
        globals()[f"exp_{name}"](bench, options.repeats)


if __name__ == "__main__":
    main()
