"""Input sockets several nodes share, declared once so their types and tooltips cannot drift apart."""
from ..musetalk.audio import MAX_FPS
from ..musetalk.audio_offset import MAX_OFFSET_MS
from ..musetalk.inpaint import CYCLE_MODES
from ..musetalk.silence import DEFAULT_THRESHOLD_DBFS, MIN_PAUSE_SECONDS, SILENCE_MODES

MODEL = ("MUSETALK_MODEL",)
FACES = ("MUSETALK_FACES",)
CROPS = ("IMAGE", {"tooltip": "The crops output of the same FaceDetectAndParse node."})
SOURCE_FRAMES = ("IMAGE", {"tooltip": "The same frames that went into FaceDetectAndParse."})
BATCH_SIZE = ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": (
    "Frames per network call. Larger is faster on a GPU with memory to spare; results do not change.")})
CYCLE = (list(CYCLE_MODES), {"default": "pingpong", "tooltip": (
    "How the video covers the audio. pingpong (official): forwards then backwards, repeated; "
    "loop: restart from the first frame; once: stop at the shorter of video and audio.")})
FIT_AUDIO = ("AUDIO", {"tooltip": "The speech; it comes back trimmed or padded to the video's length."})


def fps(tooltip):
    """A video frame rate input; fractional rates (29.97) are kept as they are."""
    return ("FLOAT", {"default": 25.0, "min": 1.0, "max": MAX_FPS, "step": 0.001, "tooltip": tooltip})


AUDIO_OFFSET_MS = ("FLOAT", {"default": 0.0, "min": -MAX_OFFSET_MS, "max": MAX_OFFSET_MS, "step": 1.0, "tooltip": (
    "Moves the mouth against the sound, in ms. Positive: the mouth moves later (use it when the lips lead the "
    "sound); negative: earlier (lips lag). Multiples of one frame (40 ms at 25 fps) shift whole frames exactly; "
    "other values shift the audio before the features are computed. 0 keeps the official timing.")})
SILENCE = (list(SILENCE_MODES), {"default": "generate", "tooltip": (
    "generate (official): a generated mouth on every frame, so it keeps moving a little in pauses. source: where "
    f"the speech is silent for at least {MIN_PAUSE_SECONDS:g} s, the frames keep the source video's own mouth "
    "(no UNet, no decode: faster), fading in and out over 0.12 s at each edge. Use it for a still mouth in pauses.")})
SILENCE_THRESHOLD_DB = ("FLOAT", {"default": DEFAULT_THRESHOLD_DBFS, "min": -120.0, "max": 0.0, "step": 0.5,
                                  "tooltip": (
    "With silence = source: frames whose audio is quieter than this (RMS in dBFS over the frame's time; a "
    "full-scale sine is -3, speech about -15 to -35) count as silent. Raise it (e.g. -40) for a noisy recording "
    "whose pauses are not detected, lower it if soft speech keeps the source mouth.")})
