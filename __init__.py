"""ComfyUI-MuseTalk: MuseTalk v1.0 / v1.5 lip sync as ComfyUI nodes.

Import is deliberately light: no weights are read, no device is queried and nothing is downloaded here.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.comfy_runtime import register_model_folder

register_model_folder()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
