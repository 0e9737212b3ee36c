"""Prepared avatars: everything lip sync needs that depends only on the video, computed once and kept in a file.

An `Avatar` holds a clip's FaceTrack (boxes and crop-sized blend masks), its 256x256 network crops, the VAE latents
of those crops and the source frames, plus the frame rate. With it, a new audio costs one UNet step, one VAE decode
and one paste per output frame: the idea of the official realtime_inference.py (spec §6). The lip sync itself runs
through the normal stages of lipsync.py, so none of that script's faults come along (spec §7): no console prompts
and any precision (Q10), no dropped last frame (Q9), crop-sized 2-D masks pasted like PIL (Q13), every batch on the
runtime's device (Q24), no blending thread that can hang (Q25).

The file is a `torch.save` of plain data (tensors, numbers, strings, lists, dicts, None), so
`torch.load(..., weights_only=True)` reads it without running pickled code. FORMAT_VERSION changes with the layout.
"""
import logging
import math
import os
import pickle
from dataclasses import asdict, dataclass

import torch

from .face import FaceSettings, FaceTrack, as_rgb_uint8
from .inpaint import CROP_SIZE, crops_tensor
from .lipsync import SourceLatents, encoder_key
from .models import VERSIONS, comfyui_folder
from .outputs import atomic_file
from .pipeline import PreparedVideo
from .video import FrameSource
from .weights import WeightsError

FORMAT = "musetalk-avatar"
FORMAT_VERSION = 1
SUFFIX = ".musetalk-avatar"
PACK_AVATAR_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "output", "avatars")
AVATAR_SUBFOLDER = os.path.join("musetalk", "avatars")  # inside ComfyUI's output folder
# characters that name folders, drives or devices on some system
_NOT_IN_NAMES = set('/\\:*?"<>|')
MAX_NAME_LENGTH = 120

log = logging.getLogger("musetalk")

EXPECTED = f"a MuseTalk avatar file (avatar format {FORMAT_VERSION})"
PREPARE_AGAIN = "prepare the avatar again from its video, under the same name"


class AvatarError(WeightsError):
    """An avatar file is missing, damaged, or was written for another format or MuseTalk version."""


@dataclass
class Avatar:
    """Everything about one clip that does not depend on the audio.

    faces: FaceTrack of the N source frames; crops: uint8 RGB [N,256,256,3] CPU tensor; sources: SourceLatents of
    the frames with a face (float32 [F,8,32,32]); frames: uint8 RGB [N,H,W,3] CPU tensor; fps: the clip's frame rate;
    version: the MuseTalk version the faces and latents were made with; latent_dtype: the VAE dtype the latents were
    computed in ('float32', 'float16' or 'bfloat16'); vae: the VAE's folder or file name (`lipsync.vae_name`).
    """

    faces: FaceTrack
    crops: torch.Tensor
    sources: SourceLatents
    frames: torch.Tensor
    fps: float
    version: str
    latent_dtype: str
    vae: str

    @property
    def encoder(self):
        """The `lipsync.encoder_key` of the models the latents were made with."""
        return self.version, self.latent_dtype, self.vae


def prepare_avatar(models, faces, crops, frames, fps):
    """Encode the crops (unless `faces` already holds their latents) and bundle them with the clip.

    models: a MuseTalkModels of the version `faces` was made with; faces: FaceTrack; crops: uint8 RGB [N,256,256,3];
    frames: uint8 [N,H,W,C] (numpy or torch; see `as_rgb_uint8`), the frames `faces` was found in; fps: float > 0.
    """
    if faces.version != models.version:
        raise ValueError(f"the faces were found for MuseTalk {faces.version} but the model is MuseTalk "
                         f"{models.version}: use the same models for both")
    frames = as_rgb_uint8(frames)
    if len(frames) != len(faces) or tuple(frames.shape[1:3]) != tuple(faces.frame_size):
        raise ValueError(f"images are {len(frames)} frames of {tuple(frames.shape[1:3])} but faces were found in "
                         f"{len(faces)} frames of {tuple(faces.frame_size)}: give the frames the faces were found in")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}: give the video's frame rate")
    sources = SourceLatents.encode(models, faces, crops)
    return Avatar(faces, crops_tensor(crops).cpu(), sources, torch.from_numpy(frames), float(fps),
                  *encoder_key(models))


def save_avatar(avatar, path, new_buffer=None):
    """Write `avatar` to `path` (folders are created). A crash or a full disk never leaves a half-written file
    under that name: the data goes to a temporary file beside it, which then replaces `path` in one step.

    The blend masks, kept compressed in the FaceTrack, are unpacked into one uint8 buffer of `new_buffer(nbytes)`
    (default: memory) that torch.save writes as a single storage; a file-backed buffer keeps them out of memory.
    """
    # The latents keep the memory layout the VAE gave them (channels-last on the CPU), which torch.save records:
    # the UNet's convolutions pick their kernels, and so their rounding, by layout, and a loaded avatar must give
    # the very numbers of a fresh run.
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "musetalk_version": avatar.version,
            "latent_dtype": avatar.latent_dtype, "vae": avatar.vae, "fps": float(avatar.fps),
            "faces": _track_data(avatar.faces, new_buffer or _memory_buffer),
            "crops": avatar.crops.cpu().contiguous(), "frames": avatar.frames.cpu().contiguous(),
            "latents": avatar.sources.latents.cpu()}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_file(path) as temp, open(temp, "xb") as f:
            torch.save(data, f)
    except (OSError, RuntimeError) as error:  # torch's zip writer reports a failed write as RuntimeError
        raise AvatarError(path, f"cannot be written ({type(error).__name__}: {error})", EXPECTED,
                          "free disk space (an avatar takes about 7 MB per 1080p frame) or save it to a folder you "
                          "can write to") from error


def load_avatar(path, models=None, mapped=False):
    """Read an avatar file written by `save_avatar`; raises AvatarError (what, where, fix) for anything else.

    With `models` the avatar must belong to `models.version`; when `models` encodes with the VAE (by name) and dtype
    the latents were made with, the stored latents stand in for encoding the crops (`SourceLatents.remember`);
    otherwise the first lip sync encodes the stored crops once again, which gives the latents of a fresh run.
    `mapped`: the tensors are mapped from the file instead of read (`torch.load(mmap=True)`), so frames and crops
    are only read where they are used (`AvatarFrames`, `avatar_sources`); nothing is remembered then.
    """
    if not os.path.isfile(path):
        raise AvatarError(path, "file not found", EXPECTED,
                          "prepare and save the avatar first, or pick one that exists")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except Exception as error:  # torch raises many types for a damaged file
        raise AvatarError(path, f"cannot be read ({_reason(error)}); the file is damaged, truncated or not an "
                                "avatar", EXPECTED, f"delete it and {PREPARE_AGAIN}") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise AvatarError(path, "is not a MuseTalk avatar file", EXPECTED,
                          f"pick a {SUFFIX} file saved by this pack")
    if data.get("format_version") != FORMAT_VERSION:
        raise AvatarError(path, f"uses avatar format {data.get('format_version')!r}; this version of the pack reads "
                                f"format {FORMAT_VERSION}", EXPECTED, PREPARE_AGAIN)
    if models is not None:
        check_version(path, data.get("musetalk_version"), models)
    try:
        avatar = _avatar_from_data(data)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise AvatarError(path, f"holds inconsistent data ({error}); the file is damaged", EXPECTED,
                          f"delete it and {PREPARE_AGAIN}") from error
    if models is not None and not mapped and avatar.encoder == encoder_key(models):  # mapped: the digest would
        avatar.sources.remember(models, avatar.faces, avatar.crops)                   # read every crop
    return avatar


def check_version(path, version, models):
    """AvatarError unless the avatar at `path`, made with MuseTalk `version`, can be lip-synced with `models`."""
    if version != models.version:
        raise AvatarError(path, f"was prepared for MuseTalk {version}, but the model is MuseTalk {models.version}",
                          f"an avatar prepared with MuseTalk {models.version}",
                          f"select {version}, or prepare the avatar again from its video with {models.version}")


def avatar_sources(models, avatar):
    """The source latents to lip-sync `avatar` with `models`: the stored ones when `models` encodes as they were
    made (VAE and dtype), else the stored crops encoded once again."""
    _, dtype, vae = current = encoder_key(models)
    if avatar.encoder == current:
        return avatar.sources
    log.info("MuseTalk: the avatar holds latents of VAE %s in %s, the model encodes with %s in %s; the crops are "
             "encoded once again", avatar.vae, avatar.latent_dtype, vae, dtype)
    return SourceLatents.encode(models, avatar.faces, avatar.crops)


def lipsync_input(path, avatar, models):
    """The avatar file at `path`, loaded as `avatar` (`load_avatar(path, ..., mapped=True)`), as the input of
    `pipeline.lipsync_stream` with `models`: (its frames as a FrameSource, read from the file a run at a time,
    PreparedVideo). Raises AvatarError for an avatar of another MuseTalk version."""
    check_version(path, avatar.version, models)
    return AvatarFrames(path, avatar), PreparedVideo(avatar.faces, avatar_sources(models, avatar))


class AvatarFrames(FrameSource):
    """The frames of an avatar as a FrameSource: slices of its frames tensor (read from the file when they are
    touched if the avatar was loaded `mapped`)."""

    def __init__(self, path, avatar):
        super().__init__(path, avatar.fps, len(avatar.frames), tuple(avatar.frames.shape[1:3]))
        self._tensor = avatar.frames

    def frames(self, start, stop):
        return self._tensor[start:stop].numpy()


def avatar_file_name(name):
    """The file name of the avatar called `name`: `name` + SUFFIX; ValueError unless `name` is a plain file name."""
    name = str(name).strip()
    if name.endswith(SUFFIX):
        name = name[:-len(SUFFIX)]
    problem = None
    if not name:
        problem = "is empty"
    elif any(c in _NOT_IN_NAMES or ord(c) < 32 for c in name) or ".." in name:
        problem = "contains a path separator, '..' or a character that file names cannot hold"
    elif name.startswith("."):
        problem = "starts with '.' (a hidden file)"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"is longer than {MAX_NAME_LENGTH} characters"
    if problem:
        raise ValueError(f"avatar name {name!r} {problem}: give a plain name such as 'anna-studio' (letters, digits, "
                         "spaces, '-', '_'); avatars are always saved in the avatars folder")
    return name + SUFFIX


def list_avatars(folder):
    """Names of the avatar files in `folder` (sorted, without SUFFIX); none are opened. [] if it does not exist."""
    try:
        files = os.listdir(folder)
    except OSError:
        return []
    return sorted(f[:-len(SUFFIX)] for f in files if f.endswith(SUFFIX) and not f.startswith(".")
                  and os.path.isfile(os.path.join(folder, f)))


def standalone_avatar_dir(pack_dir=None):
    """Where avatars go outside a running ComfyUI (the command line): $MUSETALK_AVATARS, else
    <ComfyUI>/output/musetalk/avatars when the pack (`pack_dir`, default this one) is installed in
    ComfyUI/custom_nodes, where its nodes save and list them, else the pack's output/avatars folder."""
    comfy_output = comfyui_folder("output", pack_dir)
    return (os.environ.get("MUSETALK_AVATARS") or (comfy_output and os.path.join(comfy_output, AVATAR_SUBFOLDER))
            or PACK_AVATAR_DIR)


def _track_data(track, new_buffer):
    """A FaceTrack as plain data (weights_only-loadable); `memo` is left out, it is rebuilt on use. The masks become
    views of one buffer from `new_buffer(nbytes)`, unpacked into it one at a time."""
    shapes = track.blend.shapes
    buffer = new_buffer(sum(h * w for h, w in filter(None, shapes)))
    masks, crop_boxes, offset = [], [], 0
    for shape, blend in zip(shapes, track.blend):
        mask = crop_box = None
        if blend is not None:
            mask = buffer[offset:offset + shape[0] * shape[1]].view(shape)
            mask.copy_(torch.from_numpy(blend[0]))
            crop_box = _ints(blend[1])
            offset += mask.numel()
        masks.append(mask)
        crop_boxes.append(crop_box)
    return {"frame_size": [int(v) for v in track.frame_size], "version": track.version,
            "face_boxes": [_ints(box) for box in track.face_boxes],
            "paste_boxes": [_ints(box) for box in track.paste_boxes], "masks": masks, "crop_boxes": crop_boxes,
            "settings": asdict(track.settings), "bbox_shift_range": track.bbox_shift_range}


def _memory_buffer(nbytes):
    return torch.empty(nbytes, dtype=torch.uint8)


def _avatar_from_data(data):
    track = data["faces"]
    version = data["musetalk_version"]
    _require(version in VERSIONS and track["version"] == version, f"MuseTalk version {version!r}")
    height, width = (int(v) for v in track["frame_size"])
    paste_boxes = [_box(box) for box in track["paste_boxes"]]
    count = len(paste_boxes)
    face_boxes = [_box(box) for box in track["face_boxes"]]
    masks, crop_boxes = track["masks"], track["crop_boxes"]
    _require(len(face_boxes) == len(masks) == len(crop_boxes) == count, "per-frame lists of different lengths")
    blend = [_blend(mask, box, paste_box, i) for i, (mask, box, paste_box) in
             enumerate(zip(masks, crop_boxes, paste_boxes))]
    faces = FaceTrack((height, width), version, face_boxes, paste_boxes, blend, FaceSettings(**track["settings"]),
                      str(track["bbox_shift_range"]))
    crops, frames, latents = data["crops"], data["frames"], data["latents"]
    _require_tensor(crops, "crops", torch.uint8, (count, CROP_SIZE, CROP_SIZE, 3))
    _require_tensor(frames, "frames", torch.uint8, (count, height, width, 3))
    _require_tensor(latents, "latents", torch.float32, None)
    fps = data["fps"]
    _require(isinstance(fps, float) and math.isfinite(fps) and fps > 0, f"fps {fps!r}")
    return Avatar(faces, crops, SourceLatents.of_faces(faces, latents), frames, fps, version,
                  str(data["latent_dtype"]), str(data["vae"]))


def _blend(mask, crop_box, paste_box, index):
    if paste_box is None:
        _require(mask is None and crop_box is None, f"frame {index} has a mask but no face")
        return None
    x1, y1, x2, y2 = _box(crop_box)
    _require_tensor(mask, f"mask of frame {index}", torch.uint8, (y2 - y1, x2 - x1))
    return mask.numpy(), [x1, y1, x2, y2]


def _ints(box):
    return None if box is None else [int(v) for v in box]


def _box(box):
    if box is None:
        return None
    _require(isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box), f"box {box!r}")
    return tuple(box)


def _require_tensor(value, what, dtype, shape):
    right_shape = shape is None or tuple(getattr(value, "shape", ())) == shape
    _require(isinstance(value, torch.Tensor) and value.dtype == dtype and right_shape,
             f"{what} is {type(value).__name__} {getattr(value, 'dtype', '')} {tuple(getattr(value, 'shape', ()))}, "
             f"{dtype} {shape} expected")


def _require(condition, problem):
    if not condition:
        raise ValueError(problem)


def _reason(error):
    # torch's weights-only refusal goes on to suggest weights_only=False, which must never be done with such a file
    if isinstance(error, pickle.UnpicklingError):
        return "it does not load as plain tensors and values"
    first_line = (str(error).splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line[:200]}"
