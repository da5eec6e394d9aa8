"""ControlNeXt-SVD v2 for ComfyUI: animate a reference photo with a pose or dance video.

ComfyUI imports this package from ``custom_nodes/`` and calls :func:`comfy_entrypoint`. Importing it does no work
beyond defining the node classes (no model loading, no onnxruntime session, no network).
"""

from .nodes import comfy_entrypoint

# ComfyUI serves this folder at /extensions/<pack folder>/; the frontend reads node help pages from web/docs/.
WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
