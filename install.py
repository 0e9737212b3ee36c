"""ComfyUI-Manager runs this after installing requirements.txt: it adds OpenCV where none is installed, and downloads
no weights unless asked to.

requirements.txt names no OpenCV distribution, because the one it named would be installed beside the one the
environment has (opencv-python, opencv-python-headless and the contrib builds all write the same `cv2/` files), so
OpenCV is added here, only where no distribution of it is installed (README, "Why no OpenCV in requirements.txt").

Opt in to the weights with the environment variable MUSETALK_DOWNLOAD=v1.5 (or v1.0, or all) before installing or
updating the pack: they then go to ComfyUI/models/musetalk ($MUSETALK_MODELS if set; the pack's own models/ outside
ComfyUI), checked against the sha256 in models/manifest.json. `python -m musetalk download` does the same at any later
time.
"""
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

PACK_DIR = os.path.dirname(os.path.abspath(__file__))
CHOICES = ("v1.5", "v1.0", "all")
OPENCV_DISTRIBUTIONS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                        "opencv-contrib-python-headless")
FRESH_OPENCV = "opencv-python-headless>=4.8"


def installed_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def opencv_install_command():
    """The pip command that adds OpenCV, or None where the environment has one (a pip distribution, or a `cv2`
    installed some other way, e.g. by conda)."""
    present = [name for name in OPENCV_DISTRIBUTIONS if installed_version(name)]
    if present or importlib.util.find_spec("cv2") is not None:
        return None
    command = [sys.executable, "-m", "pip", "install", FRESH_OPENCV]
    numpy = installed_version("numpy")
    if numpy:  # held where it is: pip then picks an OpenCV build made for it instead of replacing it
        command.append(f"numpy=={numpy}")
    return command


def ensure_opencv():
    command = opencv_install_command()
    if command is None:
        print("[MuseTalk] OpenCV is installed; none added")
        return 0
    print(f"[MuseTalk] No OpenCV installed; adding it: {' '.join(command[2:])}")
    status = subprocess.call(command)
    if status != 0:
        print(f"[MuseTalk] Installing OpenCV failed; install one OpenCV distribution with this Python "
              f"({sys.executable} -m pip install opencv-python-headless) before using the pack", file=sys.stderr)
    return status


def download_weights():
    version = os.environ.get("MUSETALK_DOWNLOAD", "").strip()
    if not version:
        print("[MuseTalk] No weights downloaded: set MUSETALK_DOWNLOAD=v1.5 (or v1.0, all) to fetch them on install, "
              f"or later run: cd {PACK_DIR} && python -m musetalk download --version v1.5")
        return 0
    if version not in CHOICES:
        print(f"[MuseTalk] MUSETALK_DOWNLOAD={version!r} is not one of {', '.join(CHOICES)}; nothing downloaded.",
              file=sys.stderr)
        return 1
    print(f"[MuseTalk] Downloading the MuseTalk {version} weights")
    # the interpreter running this script is ComfyUI's, the one requirements.txt was just installed into; the
    # command picks the models folder itself (musetalk.models.standalone_models_dir)
    return subprocess.call([sys.executable, "-m", "musetalk", "download", "--version", version], cwd=PACK_DIR)


def main():
    return ensure_opencv() or download_weights()


if __name__ == "__main__":
    sys.exit(main())
