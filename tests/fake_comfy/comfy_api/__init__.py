"""Fake comfy_api package (see ../README.md)."""
