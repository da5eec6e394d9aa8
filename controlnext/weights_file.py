"""Reading a weights file safely: safetensors, or a torch pickle with weights_only=True, memory-mapped if possible."""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping

import comfy.utils
import safetensors
import torch

log = logging.getLogger(__name__)

SAFETENSORS_EXTS = (".safetensors", ".sft")


def read_state_dict(path: str, name: str, error: type[Exception], hint: str) -> dict[str, torch.Tensor]:
    """The file's tensors; an unreadable file raises `error` naming `name` and ending with `hint` (what to use).

    weights_only: no code ever runs from a pickle. mmap (safetensors, zip-format pickles): tensors stay in the page
    cache, so a 6 GB fp32 file is not held twice in RAM while it is copied into the model.
    """
    if path.lower().endswith(SAFETENSORS_EXTS):
        try:
            return comfy.utils.load_torch_file(path)
        except (safetensors.SafetensorError, ValueError, OSError) as e:
            raise error(f"{name} could not be read as a safetensors file (corrupt or incomplete download, or another "
                        f"format renamed .safetensors?). {hint}\n({e})") from e
    mmap = zipfile.is_zipfile(path)
    if not mmap:
        log.warning("%s is not a zip-format torch file (old torch.save format?): it cannot be memory-mapped and is "
                    "read fully into RAM", name)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise error(f"{name} is not a plain tensor file: torch refused to load it with weights_only=True (it "
                    f"contains Python objects, which this pack never unpickles, or it is not a torch file). "
                    f"{hint}\n({e})") from e
    except (RuntimeError, EOFError, ValueError) as e:
        raise error(f"{name} could not be read as a torch file (corrupt or incomplete download?). {hint}\n({e})") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise error(f"{name} holds a {type(obj).__name__} that is not a state dict of tensors. {hint}")
    return dict(obj)
