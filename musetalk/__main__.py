"""`python -m musetalk COMMAND` from the pack folder: download and check the weights.

Each command is a `_add_<name>(commands)` function in COMMANDS that adds its subparser and sets `run`; a new command
(lipsync, ...) is one more such function. Exit status: 0 success, 1 failure with a message on stderr.
"""
import argparse
import sys

from .download import DownloadError, download, verify
from .models import VERSIONS, standalone_models_dir

VERSION_CHOICES = (*VERSIONS, "all")
DEFAULT_DIR_HELP = ("$MUSETALK_MODELS, else ComfyUI/models/musetalk when the pack is installed in ComfyUI, "
                    "else the pack's models/")


def _add_download(commands):
    parser = commands.add_parser(
        "download", help="fetch and verify the weights of a MuseTalk version",
        description="Fetch the files MuseTalk needs, one by one, check each against the sha256 in "
                    "models/manifest.json, and keep the ones already present and valid. Hugging Face files honour "
                    "HF_ENDPOINT (mirrors) and HF_TOKEN. An interrupted run resumes where it stopped.")
    parser.add_argument("--version", choices=VERSION_CHOICES, default="v1.5", help="default: v1.5")
    parser.add_argument("--to", metavar="DIR", help=f"models folder (default: {DEFAULT_DIR_HELP})")
    parser.set_defaults(run=_run_download)


def _run_download(args):
    download(args.version, args.to)
    return 0


def _add_check(commands):
    parser = commands.add_parser(
        "check", help="list missing or damaged weight files",
        description="Check every file a MuseTalk version needs for presence, size and sha256 (a few seconds per GB).")
    parser.add_argument("--version", choices=VERSION_CHOICES, default="v1.5", help="default: v1.5")
    parser.add_argument("--models", metavar="DIR", help=f"models folder (default: {DEFAULT_DIR_HELP})")
    parser.set_defaults(run=_run_check)


def _run_check(args):
    root = standalone_models_dir(args.models)
    print(f"checking the MuseTalk {args.version} files in {root} (hashing takes a few seconds per GB)")
    checks = verify(root, args.version)
    for check in checks:
        print(f"{check.state:10} {check.path}" + (f"  ({check.detail})" if check.detail else ""))
    failed = [c for c in checks if c.state in ("missing", "bad")]
    if failed:
        print(f"{len(failed)} of {len(checks)} files missing or damaged in {root}\n"
              f"  fix: python -m musetalk download --version {args.version} --to {root}", file=sys.stderr)
        return 1
    print(f"MuseTalk {args.version}: all {len(checks)} files present in {root}")
    return 0


COMMANDS = (_add_download, _add_check)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m musetalk", description="MuseTalk weights and tools.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv=None):
    """Run one command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (DownloadError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
