"""Measuring helpers for the benchmarks: the machine's dense GEMM rate, stage timing with FLOP counts, peak memory.

A stage's FLOPs are counted once, on one call under `torch.utils.flop_counter.FlopCounterMode` (which counts matrix
products, convolutions and attention: the arithmetic that matters), then the stage is timed without the counter,
whose Python hooks would slow it down. Times are the best of the repeats: on a shared machine the best run is the
one least disturbed by other work, and it is what the hardware can do; the median is kept for the record. The
process CPU time of each call is kept too: when other processes compete for the cores, wall time grows with their
load while CPU time mostly does not (it still grows a little: OpenMP threads spin while they wait for a core), so it
is the steadier figure for comparing variants on a busy machine.

Peak host memory: `ru_maxrss` is a process-wide high-water mark that never goes down, so on Linux the peak is reset
before each stage through /proc/self/clear_refs ("5" resets VmHWM) and read back from /proc/self/status. Where that
is not possible the process-wide mark is reported and `Stage.rss_is_process_peak` says so.
"""
import contextlib
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

GIB = 1024 ** 3


def synchronize(device):
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rate(device="cpu", dtype=torch.float32, size=None, repeats=5):
    """Best measured dense matrix-product rate in GFLOP/s: `torch.mm` of two [size,size] matrices.

    The default size (2048 on the CPU, 8192 on a GPU) is large enough to saturate the BLAS on every core; the rate
    is what a network made only of large GEMMs could reach, the ceiling the stage figures are compared with.
    """
    device = torch.device(device)
    size = size or (2048 if device.type == "cpu" else 8192)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, BLAS kernels, GPU clocks
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def count_flops(fn):
    """(result, FLOPs) of one call of `fn()`, counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        result = fn()
    return result, counter.get_total_flops()


def _status_bytes(name):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss():
    """Resident set size of this process now, in bytes (None where /proc is missing)."""
    return _status_bytes("VmRSS")


def reset_peak_rss():
    """Restart the host-memory high-water mark; False where the OS does not allow it (then peaks are process-wide)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss():
    """Host-memory high-water mark in bytes: VmHWM since the last reset, else the process-wide ru_maxrss."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


@dataclass
class Stage:
    """One measured stage. `frames` is how many output frames one call serves (the batch for most stages)."""

    name: str
    frames: int
    seconds: list = field(default_factory=list)
    cpu_seconds: list = field(default_factory=list)
    flops: float = 0.0
    rss_before: int = None
    rss_peak: int = None
    rss_is_process_peak: bool = False
    cuda_peak: int = None

    @property
    def best(self):
        return min(self.seconds)

    @property
    def median(self):
        return statistics.median(self.seconds)

    @property
    def cpu_ms_per_frame(self):
        return min(self.cpu_seconds) / self.frames * 1e3

    @property
    def ms_per_frame(self):
        return self.best / self.frames * 1e3

    @property
    def gflop_per_frame(self):
        return self.flops / self.frames / 1e9

    @property
    def gflops(self):
        return self.flops / self.best / 1e9


def timed(fn, device="cpu"):
    """(wall seconds, process CPU seconds) of one call of `fn()`, synchronised on `device`."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def measure(name, fn, frames, device="cpu", repeats=3, count=True):
    """Run `fn()` once under the FLOP counter (also the warm-up), then `repeats` timed times; returns a Stage.

    device: where `fn` computes (synchronised around each timed call; its CUDA peak memory is recorded).
    count: False for stages with no tensor arithmetic worth counting (the warm-up call still happens).
    """
    device = torch.device(device)
    stage = Stage(name, frames)
    stage.rss_before = current_rss()
    stage.rss_is_process_peak = not reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if count:
        _, stage.flops = count_flops(fn)
    else:
        fn()
    for _ in range(repeats):
        seconds, cpu = timed(fn, device)
        stage.seconds.append(seconds)
        stage.cpu_seconds.append(cpu)
    stage.rss_peak = peak_rss()
    if device.type == "cuda":
        stage.cuda_peak = torch.cuda.max_memory_allocated(device)
    return stage


@contextlib.contextmanager
def threads(count):
    """Run the block with `count` intra-op CPU threads, restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_average():
    """The 1-minute load average, or None where the OS has none (the CPU figures mean little under heavy load)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def format_table(stages, gemm_gflops, title=None):
    """A plain-text table: stage | ms/frame (best) | median | CPU ms | GFLOP/frame | GFLOP/s | % of GEMM | memory."""
    header = ["stage", "ms/frame", "median", "CPU ms/frame", "GFLOP/frame", "GFLOP/s", "% GEMM", "peak RSS GiB (+stage)", "CUDA GiB"]
    rows = []
    for s in stages:
        rss = "-"
        if s.rss_peak is not None:
            rss = f"{s.rss_peak / GIB:.2f}"
            if s.rss_before is not None and not s.rss_is_process_peak:
                rss += f" (+{max(s.rss_peak - s.rss_before, 0) / GIB:.2f})"
            elif s.rss_is_process_peak:
                rss += " (process)"
        counted = s.flops > 0
        rows.append([
            s.name,
            f"{s.ms_per_frame:.1f}",
            f"{s.median / s.frames * 1e3:.1f}",
            f"{s.cpu_ms_per_frame:.1f}",
            f"{s.gflop_per_frame:.1f}" if counted else "-",
            f"{s.gflops:.1f}" if counted else "-",
            f"{100 * s.gflops / gemm_gflops:.0f}%" if counted and gemm_gflops else "-",
            rss,
            f"{s.cuda_peak / GIB:.2f}" if s.cuda_peak is not None else "-",
        ])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        return " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [title] if title else []
    out += [line(header), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out)
