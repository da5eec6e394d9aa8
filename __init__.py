"""ControlNeXt-SVD v2 for ComfyUI: animate a reference photo with a pose or dance video.

ComfyUI imports this package from ``custom_nodes/`` and calls :func:`comfy_entrypoint`. Importing it does no work
beyond defining the node classes (no model loading, no onnxruntime session, no network).
"""

if __package__:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
# else: loaded as a plain module, not as the pack (pytest collects the checkout's root __init__.py, and a checkout
# folder whose name has a dot cannot be a package name); there is nothing to import relatively then.
