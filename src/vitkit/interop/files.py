"""Reading one weight file without ever executing code from it.

safetensors is plain data; ``.pth``/``.pt``/``.bin`` files go through
``torch.load(weights_only=True)``, which refuses anything but tensors and containers.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor


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


def _model_of_checkpoint(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A vitkit training checkpoint holds the model under ``model.`` (and its moving average,
    which the run saves as its model, under ``ema.module.``) beside optimiser and RNG state: return
    those weights. Other files are returned as they are."""
    if "rng.cpu" not in tensors or not any(k.startswith("model.") for k in tensors):
        return tensors
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in tensors) else "model."
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def read_weight_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of one weight file, with the file's own key names."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return _model_of_checkpoint(load_file(str(path)))
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
    raise ValueError(
        f"{path}: unknown weight format {suffix!r}; use .safetensors, .pth/.pt/.bin, or a vitkit or Hugging Face folder"
    )
