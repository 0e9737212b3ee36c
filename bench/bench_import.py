"""Time ComfyUI's import of the pack, beyond torch and numpy (which ComfyUI has imported long before).

    python -m bench.bench_import [--repeats 5]

Each repeat is a fresh interpreter that imports torch and numpy, then loads the pack's `__init__.py` by file location
under a folder named `ComfyUI-MuseTalk`, as ComfyUI does, and reports the seconds that took. The goal is under a second:
the pack must not import diffusers-sized libraries, read weights or query devices at import (the tests check those
directly; the time depends on the machine and its load, so it is measured here rather than asserted).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from bench.measure import load_average

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import importlib.util, os, sys, time
import numpy, torch
pack_dir = sys.argv[1]
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("ComfyUI-MuseTalk", os.path.join(pack_dir, "__init__.py"),
                                              submodule_search_locations=[pack_dir])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
print(time.perf_counter() - start)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        pack_dir = os.path.join(folder, "ComfyUI-MuseTalk")
        os.symlink(REPO, pack_dir, target_is_directory=True)
        seconds = [float(subprocess.run([sys.executable, "-c", PROBE, pack_dir], check=True, capture_output=True,
                                        text=True).stdout.split()[-1]) for _ in range(args.repeats)]
    print(f"pack import beyond torch: median {statistics.median(seconds):.3f} s, min {min(seconds):.3f} s, "
          f"max {max(seconds):.3f} s over {args.repeats} fresh interpreters (load average {load_average():.2f})")


if __name__ == "__main__":
    main()
