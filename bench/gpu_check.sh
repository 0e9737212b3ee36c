#!/usr/bin/env bash
# The one device check: run from the repository root on a machine with one NVIDIA GPU.
#
#   bash bench/gpu_check.sh [--device cuda|cpu] [--quick] [--wheels DIR] [--work DIR]
#
# 1. Python: the first of python3/python that imports torch is used, its torch kept whatever its build; the
#    requirements it lacks are installed beside it into bench/.pydeps. Without any torch a venv (bench/.venv-gpu)
#    gets all of requirements.txt. Installs come from --wheels DIR on a machine without network access (a folder of
#    wheels made elsewhere with `pip download -r requirements.txt -d DIR --python-version 3.12 --only-binary :all:`),
#    else from the package index.
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

# the requirement lines whose distribution the given Python lacks
missing() { "$1" - <<'PY'
import importlib.metadata as metadata, re
for line in open("requirements.txt"):
    line = line.split("#")[0].strip()
    if line:
        try:
            metadata.version(re.split(r"[<>=!~ \[]", line)[0])
        except metadata.PackageNotFoundError:
            print(line)
PY
}
pip_from() { if [ -n "$wheels" ]; then echo "--no-index --find-links $wheels"; fi; }
python=""
for candidate in python3 python; do
  if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then python="$candidate"; break; fi
done
if [ -z "$python" ]; then  # no torch at all: a venv with everything
  venv=bench/.venv-gpu
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q $(pip_from) -r requirements.txt
  python="$venv/bin/python"
fi
needed=$(missing "$python")
"$python" -c "import cv2" 2>/dev/null || needed="$needed opencv-python-headless"  # install.py's pick
if [ -n "$needed" ]; then  # torch is there (keep it, whatever its build): only the missing packages, beside it
  echo "installing into bench/.pydeps: $needed"
  "$python" -m pip install -q $(pip_from) --target bench/.pydeps $needed
  export PYTHONPATH="$PWD/bench/.pydeps${PYTHONPATH:+:$PYTHONPATH}"
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
