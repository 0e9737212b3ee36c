"""`python -m musetalk COMMAND` from the pack folder: lip-sync a video, download and check the weights.

Each command is a `_add_<name>(commands)` function in COMMANDS that adds its subparser and sets `run`; a new command
(lipsync, ...) is one more such function. Exit status: 0 success, 1 failure with a message on stderr.
"""
import argparse
import os
import sys

from .download import DownloadError, download, verify
from .models import VERSIONS, ModelFiles, MuseTalkModels, standalone_models_dir
from .runtime import PRECISIONS
from .video import MediaError, open_frames, read_audio
from .weights import WeightsError

VERSION_CHOICES = (*VERSIONS, "all")


class _DefaultsShown(argparse.HelpFormatter):
    """Ends every option's help with its default, "(default: v1.5)"; options whose default is no value (None)
    describe it in their own words."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


HELP_FORMAT = {"formatter_class": _DefaultsShown}
DEFAULT_DIR_HELP = ("$MUSETALK_MODELS, else ComfyUI/models/musetalk when the pack is installed in ComfyUI, "
                    "else the pack's models/")


def _add_download(commands):
    parser = commands.add_parser(
        "download", help="fetch and verify the weights of a MuseTalk version", **HELP_FORMAT,
        description="Fetch the files MuseTalk needs, one by one, check each against the sha256 in "
                    "models/manifest.json, and keep the ones already present and valid. Hugging Face files honour "
                    "HF_ENDPOINT (mirrors) and HF_TOKEN. An interrupted run resumes where it stopped.")
    parser.add_argument("--version", choices=VERSION_CHOICES, default="v1.5",
                        help="the MuseTalk version whose files to fetch (all: both)")
    parser.add_argument("--to", metavar="DIR", help=f"models folder (default: {DEFAULT_DIR_HELP})")
    parser.set_defaults(run=_run_download)


def _run_download(args):
    download(args.version, args.to)
    return 0


def _add_check(commands):
    parser = commands.add_parser(
        "check", help="list missing or damaged weight files", **HELP_FORMAT,
        description="Check every file a MuseTalk version needs for presence, size and sha256 (a few seconds per GB).")
    parser.add_argument("--version", choices=VERSION_CHOICES, default="v1.5",
                        help="the MuseTalk version whose files to check (all: both)")
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


def _add_lipsync(commands):
    from .face import FaceSettings
    from .inpaint import CYCLE_MODES
    from .masks import PARSING_MODES
    from .pipeline import LipSyncOptions
    from .silence import MIN_PAUSE_SECONDS, SILENCE_MODES

    defaults, face = LipSyncOptions(), FaceSettings()
    parser = commands.add_parser(
        "lipsync", help="lip-sync a video to a speech file", **HELP_FORMAT,
        description="Writes an H.264 mp4 with the speech as AAC, at the source frame rate, as long as the audio "
                    "(see --cycle). Missing weights are downloaded first (see `download`).")
    parser.add_argument("--video", required=True, help="a video file, an image, or a folder of frames")
    parser.add_argument("--audio", required=True, help="the speech: wav, mp3, flac, or a video's audio track")
    parser.add_argument("--out", required=True,
                        help="the video to write: .mp4 (or .mov, .mkv, .m4v); its folder must exist. Written under a "
                             "temporary name and renamed when whole, so an interrupted run keeps an earlier file")
    parser.add_argument("--version", choices=VERSIONS, default="v1.5",
                        help="v1.5: better teeth and identity; v1.0: the original release")
    parser.add_argument("--models", metavar="DIR",
                        help=f"models folder; it must exist (default: {DEFAULT_DIR_HELP})")
    parser.add_argument("--bbox-shift", type=int, default=face.bbox_shift,
                        help="px to move the face box top (v1.0 semantics; v1.5 is trained for 0); the run prints "
                             "the useful range")
    parser.add_argument("--extra-margin", type=int, default=face.extra_margin,
                        help="v1.5: px added below the chin so the jaw can move")
    parser.add_argument("--parsing-mode", choices=PARSING_MODES, default=face.parsing_mode,
                        help="blend mask: jaw (v1.5), raw, neck, or v1.0 (the original v1.0 mask)")
    parser.add_argument("--left-cheek-width", type=int, default=face.left_cheek_width,
                        help="jaw mode: width of the left cheek band where the mask is not grown (px of the 512 "
                             "parsing map)")
    parser.add_argument("--right-cheek-width", type=int, default=face.right_cheek_width,
                        help="jaw mode: the same for the right cheek")
    parser.add_argument("--face-select", default=face.face_select,
                        help="which face with several people: first (official), largest, left-most, right-most, "
                             "or index:N (counted from the left)")
    parser.add_argument("--smooth-boxes", type=float, default=face.smooth,
                        help="Gaussian smoothing of the boxes over time, sigma in frames (0: the official boxes)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="frames per network call; results do not depend on it")
    parser.add_argument("--cycle", choices=CYCLE_MODES, default=defaults.cycle,
                        help="how the video covers the audio: pingpong (official: forwards, backwards, ...), loop, "
                             "or once (stop at the shorter)")
    parser.add_argument("--fps", type=float, default=defaults.fps,
                        help="frame rate of image or folder input (a video keeps its own)")
    parser.add_argument("--silence", choices=SILENCE_MODES, default=defaults.silence.mode,
                        help="generate (official: a generated mouth on every frame) or source (pauses of at least "
                             f"{MIN_PAUSE_SECONDS:g} s keep the source mouth, faded at the edges; faster)")
    parser.add_argument("--silence-threshold-db", type=float, default=defaults.silence.threshold_dbfs,
                        help="with --silence source: frames quieter than this RMS dBFS are silent")
    parser.add_argument("--audio-offset-ms", type=float, default=defaults.audio_offset_ms,
                        help="move the mouth later (positive, when the lips lead the sound) or earlier (negative)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: fp16 on a GPU, fp32 on the CPU")
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the first available)")
    parser.add_argument("--bboxes", metavar="JSON_FILE",
                        help="face boxes to use instead of detection: a JSON list with one [x1,y1,x2,y2] (pixels) or "
                             "null (no face) per frame, e.g. [[133,44,195,132], null]; or a single [x1,y1,x2,y2] "
                             "used for every frame (default: detect the faces)")
    parser.add_argument("--frames-dir", metavar="DIR",
                        help="also write every output frame there as PNG; an existing folder is replaced when the "
                             "run finishes (default: none)")
    parser.set_defaults(run=_run_lipsync)


def _run_lipsync(args):
    from .face import FaceSettings
    from .pipeline import LipSyncOptions, check_lipsync_outputs, lipsync
    from .runtime import StandaloneRuntime, check_device
    from .silence import SilenceSettings

    # everything that can be checked without the networks is, before any download or network runs
    check_lipsync_outputs(args.out, args.frames_dir, args.video, args.audio)
    device = check_device(args.device) if args.device else None
    bboxes = _read_bboxes_file(args.bboxes) if args.bboxes else ""
    if args.models and not os.path.isdir(args.models):
        raise ValueError(f"--models {args.models}: no such folder\n  fix: correct the path, or create the folder and "
                         f"fill it with `python -m musetalk download --version {args.version} --to {args.models}`")
    root = standalone_models_dir(args.models)
    files = ModelFiles([root])
    missing = files.missing(args.version)
    if missing:
        open_frames(args.video, args.fps), read_audio(args.audio)  # a typo here must not cost a 4 GB download
        print(f"MuseTalk {args.version} weights are missing in {root} ({', '.join(missing)}): downloading them")
        download(args.version, root)
    face = FaceSettings(args.bbox_shift, args.extra_margin, args.parsing_mode, args.left_cheek_width,
                        args.right_cheek_width, args.face_select, args.smooth_boxes)
    options = LipSyncOptions(face, args.batch_size, args.cycle, args.fps, bboxes, f"--bboxes {args.bboxes}",
                             silence=SilenceSettings(args.silence, args.silence_threshold_db),
                             audio_offset_ms=args.audio_offset_ms)
    models = MuseTalkModels(args.version, files, StandaloneRuntime(device, report=print), args.precision)
    count = lipsync(models, args.video, args.audio, args.out, options, args.frames_dir)
    print(f"wrote {args.out}: {count} frames")
    return 0


def _read_bboxes_file(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as error:
        raise ValueError(f"--bboxes {path}: the boxes file cannot be read ({error.strerror or error})\n"
                         "  fix: give the path of a JSON file with one [x1, y1, x2, y2] or null per frame") from error


COMMANDS = (_add_lipsync, _add_download, _add_check)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m musetalk", description="MuseTalk lip sync, and its weights.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv=None):
    """Run one command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (DownloadError, WeightsError, MediaError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (a download resumes where it stopped when run again)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
