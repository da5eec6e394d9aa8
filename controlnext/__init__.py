"""Plain torch model code for ControlNeXt-SVD v2; it never imports ComfyUI's node layer."""

VERSION = "0.1.0"  # kept equal to pyproject.toml's [project] version (a test checks it)
