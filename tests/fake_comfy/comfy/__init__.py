"""Fake ComfyUI `comfy` package for offline tests (see ../README.md)."""
