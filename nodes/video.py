"""MuseTalkLipSyncVideo and MuseTalkAvatarLipSyncVideo: a core VIDEO (or a saved avatar) and speech in, a core VIDEO
out, streamed through the engine loop of the command line, so memory stays flat in the video's length."""
from ..musetalk.audio import check_waveform
from ..musetalk.avatar import lipsync_input, load_avatar
from ..musetalk.face import FaceSettings
from ..musetalk.face_boxes import parse_bboxes
from ..musetalk.pipeline import LipSyncOptions, lipsync_stream
from ..musetalk.silence import SilenceSettings
from ..musetalk.video import FrameSource, VideoFrames
from . import comfy_runtime, sockets
from .avatar import ReadsSavedAvatar
from .face import FaceDetectAndParse, face_settings
from .images import to_uint8

# the options of Latent Lip Inpaint and Audio To Whisper Features that set the mouth's timing
TIMING_INPUTS = {"silence": sockets.SILENCE, "silence_threshold_db": sockets.SILENCE_THRESHOLD_DB,
                 "audio_offset_ms": sockets.AUDIO_OFFSET_MS}


class ImageBatchFrames(FrameSource):
    """The frames of a ComfyUI IMAGE batch [N,H,W,C] (a VIDEO made of components), made uint8 a slice at a time."""

    def __init__(self, images, fps):
        super().__init__("the VIDEO input", float(fps), images.shape[0], tuple(images.shape[1:3]))
        self._images = images

    def frames(self, start, stop):
        return to_uint8(self._images[start:stop]).numpy()


def video_frames(video):
    """The frames of a core VIDEO as a FrameSource: decoded from its file in runs, or sliced from its images."""
    stream = comfy_runtime.video_stream_source(video)
    if stream is not None:
        return VideoFrames(stream)
    components = video.get_components()
    return ImageBatchFrames(components.images, components.frame_rate)


def speech(audio):
    """ComfyUI AUDIO (one clip) -> (float32 [C,T] numpy, sample rate), checked."""
    return check_waveform(audio["waveform"], audio["sample_rate"])


def lipsync_to_video(model, source, audio, options, boxes=None, prepared=None):
    out = comfy_runtime.temp_video_path()
    lipsync_stream(model, source, speech(audio), out, options, boxes, prepared)
    return (comfy_runtime.video_from_file(out),)


def lipsync_options(batch_size, cycle, silence, silence_threshold_db, audio_offset_ms, face=None):
    """The engine's LipSyncOptions from the inputs the two video nodes share; ComfyUI keeps the networks loaded."""
    return LipSyncOptions(face or FaceSettings(), batch_size, cycle, release_networks=False,
                          silence=SilenceSettings(silence, silence_threshold_db), audio_offset_ms=audio_offset_ms)


class WritesVideo:
    """What the two nodes that write a lip-synced VIDEO share: the output and where they sit."""

    CATEGORY = "MuseTalk"
    RETURN_TYPES = ("VIDEO",)
    RETURN_NAMES = ("video",)
    OUTPUT_TOOLTIPS = ("The lip-synced video with the speech as its sound, one frame per audio frame (per cycle), "
                       "written to ComfyUI's temp folder: connect Save Video to keep it.",)
    FUNCTION = "lipsync"


class MuseTalkLipSyncVideo(WritesVideo):
    DESCRIPTION = ("The whole lip sync in one node, for videos of any length: reads the video a batch of frames at a "
                   "time, finds the faces, repaints the mouths to the speech and writes the result as a video file, "
                   "so memory stays flat in the video's length. Its options are those of Face Detect And Parse and "
                   "Latent Lip Inpaint, and its frames equal those of the five-node graph.")

    @classmethod
    def INPUT_TYPES(cls):
        face = FaceDetectAndParse.INPUT_TYPES()
        required = {
            "model": sockets.MODEL,
            "video": ("VIDEO", {"tooltip": "The video to lip-sync (Load Video); its own sound is not used."}),
            "audio": ("AUDIO", {"tooltip": "The speech."}),
        }
        required.update((name, spec) for name, spec in face["required"].items() if name not in ("model", "images"))
        required["batch_size"] = sockets.BATCH_SIZE
        required["cycle"] = sockets.CYCLE
        return {"required": required, "optional": {**face["optional"], **TIMING_INPUTS}}

    def lipsync(self, model, video, audio, bbox_shift, extra_margin, parsing_mode, left_cheek_width,
                right_cheek_width, batch_size, cycle, bboxes="", face_select="first", face_index=0, smooth_boxes=0.0,
                silence="generate", silence_threshold_db=SilenceSettings.threshold_dbfs, audio_offset_ms=0.0):
        source = video_frames(video)
        boxes = parse_bboxes(bboxes, source.count, source.size)
        face = face_settings(bbox_shift, extra_margin, parsing_mode, left_cheek_width, right_cheek_width,
                             face_select, face_index, smooth_boxes)
        options = lipsync_options(batch_size, cycle, silence, silence_threshold_db, audio_offset_ms, face)
        return lipsync_to_video(model, source, audio, options, boxes)


class MuseTalkAvatarLipSyncVideo(ReadsSavedAvatar, WritesVideo):
    DESCRIPTION = ("Lip-syncs a saved avatar (MuseTalk Save Avatar) to a new speech and writes a video file: only the "
                   "UNet, the decode and the paste run, and the avatar's frames are read from its file a batch at a "
                   "time, so memory stays flat in the avatar's length.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **cls.avatar_inputs(),
            "audio": ("AUDIO", {"tooltip": "The new speech."}),
            "batch_size": sockets.BATCH_SIZE,
            "cycle": sockets.CYCLE,
        }, "optional": TIMING_INPUTS}

    def lipsync(self, model, avatar, audio, batch_size, cycle, silence="generate",
                silence_threshold_db=SilenceSettings.threshold_dbfs, audio_offset_ms=0.0):
        path = comfy_runtime.avatar_path(avatar)
        # lipsync_input checks the avatar's MuseTalk version against the model
        source, prepared = lipsync_input(path, load_avatar(path, mapped=True), model)
        options = lipsync_options(batch_size, cycle, silence, silence_threshold_db, audio_offset_ms)
        return lipsync_to_video(model, source, audio, options, prepared=prepared)


NODE_CLASS_MAPPINGS = {"MuseTalkLipSyncVideo": MuseTalkLipSyncVideo,
                       "MuseTalkAvatarLipSyncVideo": MuseTalkAvatarLipSyncVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"MuseTalkLipSyncVideo": "MuseTalk Lip Sync Video",
                              "MuseTalkAvatarLipSyncVideo": "MuseTalk Avatar Lip Sync Video"}
