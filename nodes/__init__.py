"""ComfyUI adapters: each node converts ComfyUI types, calls the engine in ../musetalk, and converts back."""
from . import audio, avatar, face, lipsync, loaders, video

NODE_MODULES = [loaders, audio, face, lipsync, avatar, video]

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in NODE_MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
