"""MuseTalkSaveAvatar and MuseTalkLoadAvatar: keep a prepared video in a file so a new audio costs only the lip sync.

Saved avatars live in <ComfyUI output>/musetalk/avatars/<name>.musetalk-avatar. Loading attaches the stored
latents to the faces, so LatentLipInpaint skips the VAE encoder and FaceDetectAndParse does not run at all.
"""
import logging
import os

from ..musetalk.avatar import SUFFIX, list_avatars, load_avatar, prepare_avatar, save_avatar
from . import comfy_runtime, inputs, sockets
from .images import to_image, to_uint8

log = logging.getLogger("musetalk")

# (types, names) of what Save Avatar passes through and Load Avatar gives
AVATAR_OUTPUTS = ("MUSETALK_FACES", "IMAGE", "IMAGE", "FLOAT"), ("faces", "crops", "images", "fps")


class MuseTalkSaveAvatar:
    DESCRIPTION = ("Saves everything the lip sync needs from this video (face boxes, crops, masks, VAE latents, "
                   "frames, fps) as <ComfyUI output>/musetalk/avatars/<name>" + SUFFIX + ", to be reused with "
                   "MuseTalk Load Avatar for any new audio. Passes its inputs through so it can sit inline.")
    CATEGORY = "MuseTalk"
    OUTPUT_NODE = True
    RETURN_TYPES, RETURN_NAMES = AVATAR_OUTPUTS
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": sockets.MODEL,
            "faces": sockets.FACES,
            "crops": sockets.CROPS,
            "images": sockets.SOURCE_FRAMES,
            "fps": sockets.fps("The video's frame rate (from GetVideoComponents)."),
            "name": ("STRING", {"default": "avatar", "tooltip": "File name of the avatar (no folders); an avatar "
                                                                "of the same name is replaced."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name=None):
        return _name_problem(name) or True

    def save(self, model, faces, crops, images, fps, name):
        crop_frames = to_uint8(inputs.image(crops, "MuseTalkSaveAvatar", "crops"))
        frames = inputs.source_frames(images, faces, "MuseTalkSaveAvatar")
        if faces.version != model.version:
            raise ValueError(f"the faces were found for MuseTalk {faces.version} but the model is MuseTalk "
                             f"{model.version}: use the same MuseTalk Load Models node for both")
        path = comfy_runtime.avatar_path(name)
        avatar = prepare_avatar(model, faces, crop_frames, to_uint8(frames), fps)
        save_avatar(avatar, path)
        log.info("MuseTalk: saved avatar %s (%d frames)", path, len(faces))
        return {"ui": {"text": [path]}, "result": (faces, crops, images, fps)}


class ReadsSavedAvatar:
    """The `model` and `avatar` inputs of the nodes that read a saved avatar, and the checks ComfyUI asks them for."""

    @staticmethod
    def avatar_inputs():
        return {
            "model": ("MUSETALK_MODEL", {"tooltip": "Must be the MuseTalk version the avatar was saved with."}),
            "avatar": (list_avatars(comfy_runtime.avatar_dir()), {"tooltip": "Avatars in <ComfyUI output>/musetalk/"
                                                                             "avatars (refresh the page after saving "
                                                                             "a new one)."}),
        }

    @classmethod
    def VALIDATE_INPUTS(cls, avatar=None):
        # replaces ComfyUI's combo check, which would only say "value not in list"
        if avatar is None:
            return True
        problem = _name_problem(avatar)
        if problem:
            return problem
        path = comfy_runtime.avatar_path(avatar)
        if not os.path.isfile(path):
            return (f"no avatar named {avatar!r} in {comfy_runtime.avatar_dir()}: save it with MuseTalk Save Avatar "
                    "first")
        return True

    @classmethod
    def IS_CHANGED(cls, avatar=None, **_linked):
        # an avatar saved again under the same name must be read again; its size and time tell without reading it
        try:
            stat = os.stat(comfy_runtime.avatar_path(avatar))
        except (OSError, ValueError):
            return ""
        return f"{stat.st_mtime_ns}:{stat.st_size}"


class MuseTalkLoadAvatar(ReadsSavedAvatar):
    DESCRIPTION = ("Loads an avatar saved by MuseTalk Save Avatar: faces, crops, frames and fps of the video, with "
                   "the VAE latents already attached, so LatentLipInpaint runs only the UNet for a new audio.")
    CATEGORY = "MuseTalk"
    RETURN_TYPES, RETURN_NAMES = AVATAR_OUTPUTS
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": cls.avatar_inputs()}

    def load(self, model, avatar):
        with inputs.advice("MuseTalk Save Avatar writes avatars; the MuseTalk version is chosen in MuseTalk Load "
                           "Models"):
            loaded = load_avatar(comfy_runtime.avatar_path(avatar), model)
        return loaded.faces, to_image(loaded.crops), to_image(loaded.frames), loaded.fps


def _name_problem(name):
    if name is None:  # linked from another node: checked when the node runs
        return None
    try:
        comfy_runtime.avatar_path(name)
    except ValueError as error:
        return str(error)
    return None


NODE_CLASS_MAPPINGS = {"MuseTalkSaveAvatar": MuseTalkSaveAvatar, "MuseTalkLoadAvatar": MuseTalkLoadAvatar}
NODE_DISPLAY_NAME_MAPPINGS = {"MuseTalkSaveAvatar": "MuseTalk Save Avatar",
                              "MuseTalkLoadAvatar": "MuseTalk Load Avatar"}
