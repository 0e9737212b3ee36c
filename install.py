"""ComfyUI-Manager runs this after installing requirements.txt. It downloads nothing unless asked to.

Opt in with the environment variable MUSETALK_DOWNLOAD=v1.5 (or v1.0, or all) before installing or updating the pack:
the weights then go to ComfyUI/models/musetalk ($MUSETALK_MODELS if set; the pack's own models/ outside ComfyUI),
checked against the sha256 in models/manifest.json. `python -m musetalk download` does the same at any later time.
"""
import os
import subprocess
import sys

PACK_DIR = os.path.dirname(os.path.abspath(__file__))
CHOICES = ("v1.5", "v1.0", "all")


def main():
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


if __name__ == "__main__":
    sys.exit(main())
