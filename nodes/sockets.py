"""Input sockets several nodes share, declared once so their types and tooltips cannot drift apart."""
from ..musetalk.audio import MAX_FPS

MODEL = ("MUSETALK_MODEL",)
FACES = ("MUSETALK_FACES",)
CROPS = ("IMAGE", {"tooltip": "The crops output of the same FaceDetectAndParse node."})
SOURCE_FRAMES = ("IMAGE", {"tooltip": "The same frames that went into FaceDetectAndParse."})
BATCH_SIZE = ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": (
    "Frames per network call. Larger is faster on a GPU with memory to spare; results do not change.")})


def fps(tooltip):
    """A video frame rate input; fractional rates (29.97) are kept as they are."""
    return ("FLOAT", {"default": 25.0, "min": 1.0, "max": MAX_FPS, "step": 0.001, "tooltip": tooltip})
