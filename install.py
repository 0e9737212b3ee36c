"""ComfyUI-Manager runs this after installing requirements.txt. It downloads nothing unless asked to.

Opt in with the environment variable MUSETALK_DOWNLOAD=v1.5 (or v1.0, or all) before installing or updating the pack:
the weights then go to ComfyUI/models/musetalk (the pack's own models/ folder outside ComfyUI), checked against the
sha256 in models/manifest.json. Without it, `python -m musetalk download` does the same at any later time.
"""
import os
import subprocess
import sys

PACK_DIR = os.path.dirname(os.path.abspath(__file__))
CHOICES = ("v1.5", "v1.0", "all")


def models_dir():
    """ComfyUI/models/musetalk when the pack sits in ComfyUI/custom_nodes/<pack>, else the pack's models/."""
    custom_nodes = os.path.dirname(PACK_DIR)
    comfy_models = os.path.join(os.path.dirname(custom_nodes), "models")
    if os.path.basename(custom_nodes) == "custom_nodes" and os.path.isdir(comfy_models):
        return os.path.join(comfy_models, "musetalk")
    return os.path.join(PACK_DIR, "models")


def main():
    version = os.environ.get("MUSETALK_DOWNLOAD", "").strip()
    target = models_dir()
    if not version:
        print(f"[MuseTalk] No weights downloaded (set MUSETALK_DOWNLOAD=v1.5, v1.0 or all to fetch them on install). "
              f"Later: cd {PACK_DIR} && python -m musetalk download --version v1.5 --to {target}")
        return 0
    if version not in CHOICES:
        print(f"[MuseTalk] MUSETALK_DOWNLOAD={version!r} is not one of {', '.join(CHOICES)}; nothing downloaded.",
              file=sys.stderr)
        return 1
    print(f"[MuseTalk] Downloading the MuseTalk {version} weights into {target}")
    # the interpreter that runs this script is ComfyUI's, the one whose packages requirements.txt just went into
    command = [sys.executable, "-m", "musetalk", "download", "--version", version, "--to", target]
    return subprocess.call(command, cwd=PACK_DIR)


if __name__ == "__main__":
    sys.exit(main())
