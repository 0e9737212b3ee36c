"""Preparing an avatar from a video (`python -m musetalk avatar prepare`): the file MuseTalk Save Avatar writes,
made with memory flat in the video's length.

An avatar holds every frame (6 MB per 1080p frame), its 256x256 crop and its blend mask uncompressed, which would
not fit in memory for a long clip. So these go into scratch files beside the avatar, mapped as tensors
(`torch.from_file`): the frames are decoded into one a run at a time, the face analysis reads them back from it,
and torch.save copies all three into the avatar file. The kernel writes mapped pages out and drops them when it
needs the memory, so what stays in memory is one run of decoded frames, the analysis' batches and the small
per-frame data (boxes, compressed masks, 32 KB of latents per frame). The price is disk space: the scratch files
take about as much as the avatar until it is written. They lose their name as soon as they are mapped where the
system allows it (Linux, macOS), so even a killed process leaves none behind; elsewhere they are deleted when the
avatar is written.
"""
import logging
import math
import os
import shutil

import torch

from .avatar import Avatar, save_avatar
from .face import FrameReader
from .face_boxes import CROP_SIZE
from .lipsync import encoder_key
from .outputs import OutputError, check_writable_folder, remove_file, temporary_name
from .pipeline import WINDOW_BYTES, analyse

log = logging.getLogger("musetalk")

SPACE_FIX = "free disk space, or set MUSETALK_AVATARS to a folder on a disk with more room"


def check_avatar_output(path, source):
    """Before any work: the folder of the avatar file `path` exists (it is created) and takes files, and its disk
    holds the avatar of `source` (a video.FrameSource) twice over, the scratch files beside it."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{path}: the avatars folder {folder} cannot be created ({error.strerror or error})\n"
                          "  fix: set MUSETALK_AVATARS to a folder you can write to") from error
    check_writable_folder(folder, path)
    height, width = source.size
    needed = 2 * source.count * (height * width + CROP_SIZE * CROP_SIZE) * 3
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OutputError(f"{path}: an avatar of {source.count} frames of {width}x{height} needs about "
                          f"{needed / 2 ** 30:.1f} GiB free while it is written (the file and as much again of scratch "
                          f"space), but {folder} has {free / 2 ** 30:.1f} GiB free\n  fix: {SPACE_FIX}")


def prepare_avatar_file(models, source, path, options, boxes=None, report=log.info):
    """Analyse and encode every frame of `source` (a video.FrameSource) and save the avatar to `path`.

    options: a pipeline.LipSyncOptions (its face settings and batch size apply); boxes: per-frame face boxes
    replacing detection (`face_boxes.parse_bboxes`) or None. The avatar is the one MuseTalk Save Avatar writes for
    the same frames, settings and models, written under a temporary name and renamed when whole. Returns its
    FaceTrack.
    """
    with ScratchTensors(path) as scratch:
        return _prepare(models, source, path, options, boxes, scratch, report)


def _prepare(models, source, path, options, boxes, scratch, report):
    # a function of its own, so that no tensor of the scratch files outlives it (ScratchTensors deletes them)
    height, width = source.size
    frames = scratch.new((source.count, height, width, 3))
    run = max(1, WINDOW_BYTES // (height * width * 3))
    report(f"reading {source.count} frames")
    for start in range(0, source.count, run):
        models.runtime.check_interrupt()
        stop = min(start + run, source.count)
        frames[start:stop] = torch.from_numpy(source.frames(start, stop))
    crops = scratch.new((source.count, CROP_SIZE, CROP_SIZE, 3))  # black where a frame has no face

    def keep(indices, batch):
        crops[indices] = torch.from_numpy(batch)

    report(f"faces of {source.count} frames: {'crops' if boxes else 'detection, crops'}, masks and VAE encoding")
    reader = FrameReader(lambda start, stop: frames[start:stop].numpy().copy(), source.count, source.size)
    prepared = analyse(models, reader, options, boxes, keep)
    report(prepared.faces.bbox_shift_range)
    report(f"writing {path}")
    avatar = Avatar(prepared.faces, crops, prepared.sources, frames, source.fps, *encoder_key(models))
    save_avatar(avatar, path, scratch.new)
    return prepared.faces


class ScratchTensors:
    """uint8 CPU tensors mapped from hidden files beside `path` (`new(shape)`); the files go when the block ends."""

    def __init__(self, path):
        self._path = path
        self._named = []  # files that could not lose their name while mapped (Windows)

    def __enter__(self):
        return self

    def __exit__(self, *_exception):
        for name in self._named:
            remove_file(name)

    def new(self, shape):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        nbytes = math.prod(shape)
        if nbytes == 0:
            return torch.zeros(shape, dtype=torch.uint8)
        name = temporary_name(self._path)
        try:
            with open(name, "xb") as f:
                _reserve(f, nbytes)  # a full disk fails here, not later as a crash while writing the mapping
            tensor = torch.from_file(name, shared=True, size=nbytes, dtype=torch.uint8)
        except OSError as error:
            remove_file(name)
            raise OutputError(f"{self._path}: no room for {nbytes / 2 ** 30:.2f} GiB of scratch space beside it "
                              f"({error.strerror or error})\n  fix: {SPACE_FIX}") from error
        except RuntimeError as error:  # a system where torch cannot map files: the memory then holds them
            remove_file(name)
            log.warning("MuseTalk: cannot map scratch files here (%s); the avatar's frames are held in memory", error)
            return torch.zeros(shape, dtype=torch.uint8)
        try:
            os.remove(name)  # the mapping stays valid without a name on POSIX systems
        except OSError:
            self._named.append(name)
        return tensor.view(shape)


def _reserve(file, nbytes):
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(file.fileno(), 0, nbytes)
    else:
        file.truncate(nbytes)
