"""Plain numpy/torch DWPose code (pose extraction, alignment, rendering); it never imports ComfyUI's node layer."""
