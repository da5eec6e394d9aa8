"""Faithful emulations, on ComfyUI 0.3.75, of behaviours of the newest ComfyUI (0.38.x) that the pack depends on.

Only 0.3.75 can be installed on our machines. Each module here reproduces one newer behaviour, written from the newest
source (the file and function are cited in each module), so the forward-compatibility tests can run the real loaders,
graphs, renderer and converter under it. Each emulation is applied for one test only and undone afterwards.
"""
