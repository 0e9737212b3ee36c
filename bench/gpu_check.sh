#!/usr/bin/env bash
# The one device check: run from the repository root on a machine with one NVIDIA GPU.
#
#   bash bench/gpu_check.sh [--device cuda|cpu] [--quick] [--wheels DIR] [--work DIR]
#
# 1. Python: the first of python3/python that imports torch and the pack's requirements is used as it is. Otherwise a
#    venv (bench/.venv-gpu, with the system's packages visible, so a preinstalled CUDA torch is kept) gets
#    requirements.txt installed: from --wheels DIR without any network (a folder of wheels made elsewhere with
#    `pip download -r requirements.txt -d DIR --python-version 3.12 --only-binary :all:`), else from the package index.
# 2. Checkpoints: the fixture-seed small set (parity with the golden outputs) and the full-size set (speed) are
#    generated under --work (default: $TMPDIR/musetalk-gpu-check) unless present: ~0.6 + ~7.5 GB.
# 3. bench/gpu_check.py prints one table: parity against the CPU and the goldens, prepared-avatar frames per second
#    per precision and batch size, the share of time beyond UNet + decode, peak device memory, end-to-end frames per
#    second on a 1080p clip. --quick uses tiny sizes (a dry run on a CPU: `--device cpu --quick`).
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda quick="" wheels="" work="${TMPDIR:-/tmp}/musetalk-gpu-check"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --quick) quick="--quick"; shift ;;
    --wheels) wheels="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown option $1 (see the header of bench/gpu_check.sh)" >&2; exit 2 ;;
  esac
done

ready() { "$1" -c "import torch, numpy, diffusers, safetensors, cv2, PIL, av, soxr" 2>/dev/null; }
python=""
for candidate in python3 python; do
  if command -v "$candidate" >/dev/null && ready "$candidate"; then python="$candidate"; break; fi
done
if [ -z "$python" ]; then
  venv=bench/.venv-gpu
  [ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
  if [ -n "$wheels" ]; then
    "$venv/bin/python" -m pip install -q --no-index --find-links "$wheels" -r requirements.txt
  else
    "$venv/bin/python" -m pip install -q -r requirements.txt
  fi
  python="$venv/bin/python"
fi
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

size=full
[ -n "$quick" ] && size=small  # the dry run's "full" set is the small one
for set in small "$size"; do
  if [ ! -f "$work/$set/done" ]; then
    echo "writing the $set random-weight checkpoints to $work/$set ..."
    "$python" tests/checkpoint_generator.py "$work/$set" --size "$set"
    touch "$work/$set/done"
  fi
done
PYTHONUNBUFFERED=1 exec "$python" -m bench.gpu_check --small "$work/small" --full "$work/$size" --device "$device" $quick
