"""One loader for every weight file: detect the format, rename to vitkit's keys, adapt, load.

Never executes code from a file: safetensors is plain data, and ``.pth``/``.bin`` files go
through ``torch.load(weights_only=True)``, which refuses anything but tensors and containers.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..models import VisionTransformer
from .adapt import LoadReport, load_state_into
from .folder import WEIGHTS_NAME, read_model_config
from .timm import is_timm_state, timm_to_vitkit


def _unwrap(checkpoint: object, path: Path) -> dict[str, Tensor]:
    """Training scripts often nest the weights: {"state_dict": ...}, {"model": ...}, {"module." keys}."""
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weight file or vitkit model folder, with the file's own key names."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if path.is_dir():
        read_model_config(path)  # a vitkit folder, or a clear error saying it is not one
        return read_state_dict(path / WEIGHTS_NAME)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"refused to load {path}: it holds Python objects other than tensors, and unpickling them "
                "could run code. Re-save the weights as a plain state dict or as .safetensors"
            ) from error
        except (RuntimeError, EOFError, OSError) as error:
            raise ValueError(
                f"{path} is not a readable PyTorch weight file (truncated or corrupt?): {error}"
            ) from error
        return _unwrap(checkpoint, path)
    raise ValueError(f"{path}: unknown weight format {suffix!r}; use .safetensors, .pth/.pt/.bin or a vitkit folder")


def to_vitkit_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a state dict from whichever layout it is in (timm, vitkit) to vitkit's."""
    return timm_to_vitkit(state) if is_timm_state(state) else state


def load_weights(model: VisionTransformer, path: str | Path) -> LoadReport:
    """Load any supported weight file into ``model``, adapting position embeddings and the head
    (see :func:`vitkit.interop.adapt.load_state_into`). Returns what happened to each key."""
    return load_state_into(model, to_vitkit_keys(read_state_dict(path)))
