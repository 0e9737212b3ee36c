"""Input sockets several nodes share, declared once so their types and tooltips cannot drift apart."""
MODEL = ("MUSETALK_MODEL",)
FACES = ("MUSETALK_FACES",)
CROPS = ("IMAGE", {"tooltip": "The crops output of the same FaceDetectAndParse node."})
SOURCE_FRAMES = ("IMAGE", {"tooltip": "The same frames that went into FaceDetectAndParse."})
