"""`python -m musetalk COMMAND` from the pack folder: lip-sync a video, prepare an avatar and lip-sync it, download
and check the weights.

Each command is a `_add_<name>(commands)` function in COMMANDS that adds its subparser and sets `run`; a new command
(lipsync, ...) is one more such function. Options that several commands share are added by one `_add_*_options`
function each. Exit status: 0 success, 1 failure with a message on stderr.
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
AVATARS_DIR_HELP = ("$MUSETALK_AVATARS, else ComfyUI/output/musetalk/avatars when the pack is installed in ComfyUI "
                    "(where its nodes find them), else the pack's output/avatars")


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
    download(args.version, args.to, log=print)
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
    parser = commands.add_parser(
        "lipsync", help="lip-sync a video to a speech file", **HELP_FORMAT,
        description="Writes an H.264 mp4 with the speech as AAC, at the source frame rate, as long as the audio "
                    "(see --cycle). Missing weights are downloaded first (see `download`).")
    _add_video_options(parser)
    _add_speech_options(parser)
    _add_versioned_options(parser)
    parser.set_defaults(run=_run_lipsync)


def _add_avatar(commands):
    parser = commands.add_parser(
        "avatar", help="prepare a video once, then lip-sync it to any speech quickly", **HELP_FORMAT,
        description="A prepared avatar holds everything of a video that does not depend on the speech (faces, "
                    "masks, crops, VAE latents, frames), so that a new speech costs only the UNet, the decode and "
                    "the paste per frame. Avatars are the files that the ComfyUI nodes save and load, kept in "
                    f"{AVATARS_DIR_HELP}.")
    steps = parser.add_subparsers(dest="step", metavar="STEP", required=True,
                                  help="prepare (analyse a video and save it) or speak (lip-sync it to a speech)")
    _add_avatar_step(
        steps, "prepare", "analyse a video and save it as an avatar",
        "Finds the faces, builds the masks and VAE-encodes the crops of every frame of the video and saves them "
        "with the frames as an avatar (replacing one of the same name). Takes the face options of `lipsync`. "
        "Missing weights are downloaded first.",
        "the avatar's name, a plain file name such as anna-studio", (_add_video_options, _add_versioned_options),
        _run_avatar_prepare)
    _add_avatar_step(
        steps, "speak", "lip-sync a prepared avatar to a speech file",
        "Writes the avatar's video lip-synced to the speech, as `lipsync` does for the same video, frames and "
        "options (the avatar's face options were set by `prepare`), writing the frames as they are made; prints "
        "the frames per second reached. The MuseTalk version is the avatar's.",
        "the avatar's name, as given to `avatar prepare`", (_add_speech_options, _add_network_options),
        _run_avatar_speak)


def _add_avatar_step(steps, name, summary, description, name_help, option_groups, run):
    parser = steps.add_parser(name, help=summary, description=description, **HELP_FORMAT)
    parser.add_argument("--name", required=True, help=name_help)
    for add in option_groups:
        add(parser)
    parser.set_defaults(run=run)


def _add_video_options(parser):
    """--video and the face options: what `lipsync` and `avatar prepare` take to analyse a video."""
    from .face import FaceSettings
    from .masks import PARSING_MODES
    from .pipeline import LipSyncOptions

    face = FaceSettings()
    parser.add_argument("--video", required=True, help="a video file, an image, or a folder of frames")
    parser.add_argument("--fps", type=float, default=LipSyncOptions().fps,
                        help="frame rate of image or folder input (a video keeps its own)")
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
    parser.add_argument("--bboxes", metavar="JSON_FILE",
                        help="face boxes to use instead of detection: a JSON list with one [x1,y1,x2,y2] (pixels) or "
                             "null (no face) per frame, e.g. [[133,44,195,132], null]; or a single [x1,y1,x2,y2] "
                             "used for every frame (default: detect the faces)")


def _add_speech_options(parser):
    """--audio, --out and the options of the mouth's timing: what `lipsync` and `avatar speak` take."""
    from .inpaint import CYCLE_MODES
    from .pipeline import LipSyncOptions
    from .silence import MIN_PAUSE_SECONDS, SILENCE_MODES

    defaults = LipSyncOptions()
    parser.add_argument("--audio", required=True, help="the speech: wav, mp3, flac, or a video's audio track")
    parser.add_argument("--out", required=True,
                        help="the video to write: .mp4 (or .mov, .mkv, .m4v); its folder must exist. Written under a "
                             "temporary name and renamed when whole, so an interrupted run keeps an earlier file")
    parser.add_argument("--cycle", choices=CYCLE_MODES, default=defaults.cycle,
                        help="how the video covers the audio: pingpong (official: forwards, backwards, ...), loop, "
                             "or once (stop at the shorter)")
    parser.add_argument("--silence", choices=SILENCE_MODES, default=defaults.silence.mode,
                        help="generate (official: a generated mouth on every frame) or source (pauses of at least "
                             f"{MIN_PAUSE_SECONDS:g} s keep the source mouth, faded at the edges; faster)")
    parser.add_argument("--silence-threshold-db", type=float, default=defaults.silence.threshold_dbfs,
                        help="with --silence source: frames quieter than this RMS dBFS are silent")
    parser.add_argument("--audio-offset-ms", type=float, default=defaults.audio_offset_ms,
                        help="move the mouth later (positive, when the lips lead the sound) or earlier (negative)")
    parser.add_argument("--frames-dir", metavar="DIR",
                        help="also write every output frame there as PNG; an existing folder is replaced when the "
                             "run finishes (default: none)")


def _add_versioned_options(parser):
    """--version and the network options: for the commands that choose the MuseTalk version."""
    parser.add_argument("--version", choices=VERSIONS, default="v1.5",
                        help="v1.5: better teeth and identity; v1.0: the original release")
    _add_network_options(parser)


def _add_network_options(parser):
    """Which weights, where and how the networks run."""
    from .pipeline import LipSyncOptions

    parser.add_argument("--models", metavar="DIR",
                        help=f"models folder; it must exist (default: {DEFAULT_DIR_HELP})")
    parser.add_argument("--batch-size", type=int, default=LipSyncOptions().batch_size,
                        help="frames per network call; results do not depend on it")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: fp16 on a GPU, fp32 on the CPU")
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the first available)")


def _video_settings(args):
    """The LipSyncOptions fields of the --video options (the face settings and boxes); the boxes file is read."""
    from .face import FaceSettings

    face = FaceSettings(args.bbox_shift, args.extra_margin, args.parsing_mode, args.left_cheek_width,
                        args.right_cheek_width, args.face_select, args.smooth_boxes)
    bboxes = _read_bboxes_file(args.bboxes) if args.bboxes else ""
    return {"face": face, "fps": args.fps, "bboxes": bboxes, "bboxes_name": f"--bboxes {args.bboxes}"}


def _speech_settings(args):
    """The LipSyncOptions fields of the speech options."""
    from .silence import SilenceSettings

    return {"cycle": args.cycle, "silence": SilenceSettings(args.silence, args.silence_threshold_db),
            "audio_offset_ms": args.audio_offset_ms}


def _models(args, version, check_inputs):
    """The MuseTalkModels of `version` per the network options; missing weights are downloaded first, once
    `check_inputs()` has found the inputs readable (a typo must not cost a 4 GB download)."""
    from .runtime import StandaloneRuntime, check_device

    device = check_device(args.device) if args.device else None
    if args.models and not os.path.isdir(args.models):
        raise ValueError(f"--models {args.models}: no such folder\n  fix: correct the path, or create the folder and "
                         f"fill it with `python -m musetalk download --version {version} --to {args.models}`")
    root = standalone_models_dir(args.models)
    files = ModelFiles([root])
    missing = files.missing(version)
    if missing:
        check_inputs()
        print(f"MuseTalk {version} weights are missing in {root} ({', '.join(missing)}): downloading them")
        download(version, root, log=print)
    return MuseTalkModels(version, files, StandaloneRuntime(device, report=print), args.precision)


def _run_lipsync(args):
    from .pipeline import LipSyncOptions, check_lipsync_outputs, lipsync

    # everything that can be checked without the networks is, before any download or network runs
    check_lipsync_outputs(args.out, args.frames_dir, args.video, args.audio)
    options = LipSyncOptions(batch_size=args.batch_size, **_video_settings(args), **_speech_settings(args))
    models = _models(args, args.version, lambda: (open_frames(args.video, args.fps), read_audio(args.audio)))
    count = lipsync(models, args.video, args.audio, args.out, options, args.frames_dir, log=print)
    print(f"wrote {args.out}: {count} frames")
    return 0


def _run_avatar_prepare(args):
    from .avatar import avatar_file_name, standalone_avatar_dir
    from .avatar_job import check_avatar_output, prepare_avatar_file
    from .face_boxes import parse_bboxes
    from .pipeline import LipSyncOptions

    path = os.path.join(standalone_avatar_dir(), avatar_file_name(args.name))
    options = LipSyncOptions(batch_size=args.batch_size, **_video_settings(args))
    source = open_frames(args.video, options.fps)
    boxes = parse_bboxes(options.bboxes, source.count, source.size, options.bboxes_name)
    check_avatar_output(path, source)
    models = _models(args, args.version, lambda: None)
    print(f"{args.video}: {source.count} frames of {source.size[1]}x{source.size[0]} at {source.fps:g} fps")
    faces = prepare_avatar_file(models, source, path, options, boxes, report=print)
    print(f"wrote the avatar {args.name!r} to {path}: {len(faces)} frames, {sum(faces.has_face)} with a face")
    return 0


def _run_avatar_speak(args):
    import time

    from .avatar import lipsync_input, load_avatar
    from .pipeline import LipSyncOptions, check_lipsync_outputs, lipsync_stream

    path = _existing_avatar(args.name)
    check_lipsync_outputs(args.out, args.frames_dir, path, args.audio)
    speech = read_audio(args.audio)
    avatar = load_avatar(path, mapped=True)
    models = _models(args, avatar.version, lambda: None)
    options = LipSyncOptions(batch_size=args.batch_size, **_speech_settings(args))
    print(f"avatar {args.name!r}: {len(avatar.faces)} frames of {avatar.frames.shape[2]}x{avatar.frames.shape[1]} "
          f"at {avatar.fps:g} fps, MuseTalk {avatar.version}; {args.audio}: {speech[0].shape[1] / speech[1]:.2f} s")
    start = time.perf_counter()
    for network in (models.whisper, models.unet, models.vae):
        models.runtime.load(network())
    loaded = time.perf_counter()
    source, prepared = lipsync_input(path, avatar, models)
    count = lipsync_stream(models, source, speech, args.out, options, prepared=prepared, frames_dir=args.frames_dir,
                           log=print)
    seconds = time.perf_counter() - loaded
    print(f"wrote {args.out}: {count} frames in {seconds:.2f} s, {count / seconds:.2f} frames/s (audio features, "
          f"UNet, decode, paste and writing; loading the networks took {loaded - start:.2f} s before)")
    return 0


def _existing_avatar(name):
    """The file of the saved avatar `name`; ValueError naming the folder and the avatars in it when there is none."""
    from .avatar import avatar_file_name, list_avatars, standalone_avatar_dir

    folder = standalone_avatar_dir()
    path = os.path.join(folder, avatar_file_name(name))
    if not os.path.isfile(path):
        names = list_avatars(folder)
        held = f"it holds {', '.join(names)}" if names else "it holds no avatar"
        raise ValueError(f"--name {name}: there is no avatar {name!r} in {folder} ({held})\n  fix: prepare it with "
                         f"`python -m musetalk avatar prepare --video VIDEO --name {name}`, or give the name of one "
                         "there (MUSETALK_AVATARS chooses the folder)")
    return path


def _read_bboxes_file(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as error:
        raise ValueError(f"--bboxes {path}: the boxes file cannot be read ({error.strerror or error})\n"
                         "  fix: give the path of a JSON file with one [x1, y1, x2, y2] or null per frame") from error


COMMANDS = (_add_lipsync, _add_avatar, _add_download, _add_check)


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
