"""Where results are written: output checks made before any work starts, and files that appear only when whole.

Every output (video, PNG frames folder, avatar) is written under a hidden temporary name beside its destination and
renamed over it once complete, so an error, a crash or Ctrl-C keeps the earlier file and leaves nothing behind.
The temporary name sits in the same folder because a rename is only atomic within one filesystem.

    check_video_output(path, inputs)    -> container name; raises OutputError (what, where, fix)
    check_output_folder(path, inputs)   for a folder of output frames
    with atomic_file(path) as temp:     write temp; it replaces `path` when the block ends without an exception
    PendingFile(path) / PendingFolder(path): the same with explicit commit() / discard(), for writers that stay open
"""
import os
import secrets
import shutil
from contextlib import contextmanager

# containers that take H.264 video with an AAC track, by extension -> the FFmpeg muxer that writes them
VIDEO_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
VIDEO_FIX = "give a file name ending in .mp4 (or .mov, .mkv, .m4v)"


class OutputError(ValueError):
    """An output path cannot be written or would destroy an input; the message says which and how to fix it."""


def check_video_output(path, inputs=()):
    """Check before any work that a video with H.264 + AAC can be written to `path`; returns the container name.

    `inputs` are the files the job reads: writing over one of them is refused.
    """
    path = os.fspath(path)
    _refuse_inputs(path, inputs)
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a folder, not a video file\n  fix: {VIDEO_FIX}, e.g. {os.path.join(path, 'out.mp4')}")
    extension = os.path.splitext(path)[1].lower()
    if extension not in VIDEO_CONTAINERS:
        problem = ("has no file extension, so the video format is unknown" if not extension
                   else f"{extension} files cannot hold H.264 video with AAC audio")
        raise OutputError(f"{path}: {problem}\n  fix: {VIDEO_FIX}")
    check_writable_folder(os.path.dirname(os.path.abspath(path)), path)
    return VIDEO_CONTAINERS[extension]


def check_output_folder(path, inputs=()):
    """Check before any work that the folder `path` can be made (or replaced) and filled with files."""
    path = os.fspath(path)
    _refuse_inputs(path, inputs)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{path}: exists and is not a folder\n  fix: give the name of a folder to write the frames "
                          "into (it is created, or replaced when it exists)")
    check_writable_folder(os.path.dirname(os.path.abspath(path)), path)


def check_writable_folder(folder, path):
    """Raise OutputError unless files can be created in `folder` (the folder of the output `path`)."""
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: the folder {folder} does not exist\n"
                          f"  fix: create it first (mkdir -p {folder}) or correct the path")
    probe = os.path.join(folder, f".musetalk-write-test-{secrets.token_hex(4)}")
    try:  # really creating a file also catches read-only mounts and rights that os.access cannot see
        with open(probe, "xb"):
            pass
    except OSError as error:
        raise OutputError(f"{path}: cannot write to the folder {folder} ({error.strerror or error})\n"
                          "  fix: write to a folder you have write access to, or change its permissions") from error
    os.remove(probe)


def _refuse_inputs(path, inputs):
    for source in inputs:
        if source is not None and _same_file(path, os.fspath(source)):
            raise OutputError(f"{path}: is the input {source}; writing there would destroy the input\n"
                              "  fix: give another output name")


def _same_file(a, b):
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def temporary_name(path):
    """A hidden name beside `path`, unique per call, keeping its extension (`dir/.name.1a2b3c4d.partial.mp4`)."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, extension = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.{secrets.token_hex(4)}.partial{extension}")


class PendingFile:
    """A file written as `temp` (beside `path`) that becomes `path` on `commit()`; `discard()` removes it.

    `discard()` after `commit()` does nothing, so `try: ... commit() finally: discard()` is the whole protocol."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.temp = temporary_name(self.path)
        self.committed = False

    def commit(self):
        with open(self.temp, "rb+") as f:  # the data reaches the disk before the name points at it
            os.fsync(f.fileno())
        os.replace(self.temp, self.path)
        self.committed = True

    def discard(self):
        if not self.committed:
            remove_file(self.temp)


class PendingFolder(PendingFile):
    """A folder filled as `temp` that replaces the folder `path` (and everything in it) on `commit()`."""

    def __init__(self, path):
        super().__init__(path)
        os.makedirs(self.temp)

    def commit(self):
        old = None
        if os.path.isdir(self.path):
            old = temporary_name(self.path)
            os.replace(self.path, old)  # a folder cannot be renamed over a non-empty one: move the old one aside
        os.replace(self.temp, self.path)
        self.committed = True
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self):
        if not self.committed:
            shutil.rmtree(self.temp, ignore_errors=True)


@contextmanager
def atomic_file(path):
    """Yield a temporary path beside `path`; it replaces `path` when the block ends normally, and is removed when
    it ends with any exception (KeyboardInterrupt included), leaving an earlier `path` untouched."""
    pending = PendingFile(path)
    try:
        yield pending.temp
        pending.commit()
    finally:
        pending.discard()


def remove_file(path):
    """Delete the file `path` if it can be; nothing happens if it is not there."""
    try:
        os.remove(path)
    except OSError:
        pass
