"""One loader for every weight source: detect the format, rename to vitkit's keys, adapt, load.

Sources: a vitkit model folder, a Hugging Face ViT folder, a Google ``.npz``, or a single weight
file (``.safetensors``, ``.pth``/``.pt``/``.bin``) in timm's, transformers' or vitkit's layout.
Nothing is ever unpickled beyond plain tensors (see :mod:`vitkit.interop.files`).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..models import VisionTransformer
from .adapt import LoadReport, load_state_into
from .files import read_weight_file
from .folder import folder_weights_path
from .hf import hf_to_vitkit, is_hf_state
from .npz import npz_to_vitkit, read_npz
from .timm import is_timm_state, timm_to_vitkit


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weight file or a model folder (vitkit or Hugging Face), with the
    source's own key names."""
    path = Path(path)
    if path.is_dir():
        return read_weight_file(folder_weights_path(path))
    return read_weight_file(path)


def to_vitkit_keys(state: dict[str, Tensor], *, keep_pre_logits: bool = False) -> dict[str, Tensor]:
    """Rename a state dict from whichever layout it is in (timm, transformers, vitkit) to vitkit's."""
    if is_timm_state(state):
        return timm_to_vitkit(state)
    if is_hf_state(state):
        return hf_to_vitkit(state, keep_pooler=keep_pre_logits)
    return state


def read_vitkit_state(path: str | Path, *, keep_pre_logits: bool = True) -> dict[str, Tensor]:
    """Any supported source as a state dict with vitkit's keys: Google ``.npz`` files, weight
    files in timm's, transformers' or vitkit's layout, and model folders."""
    if Path(path).suffix.lower() == ".npz":
        arrays = read_npz(path)
        state = npz_to_vitkit(arrays, hybrid="conv_root/kernel" in arrays)
        return state if keep_pre_logits else {k: v for k, v in state.items() if not k.startswith("pre_logits.")}
    return to_vitkit_keys(read_state_dict(path), keep_pre_logits=keep_pre_logits)


def load_weights(model: VisionTransformer, path: str | Path, *, keep_pre_logits: bool = False) -> LoadReport:
    """Load any supported weights into ``model``, adapting position embeddings and the head (see
    :func:`vitkit.interop.adapt.load_state_into`). A pre-logits layer (Google's ``pre_logits``,
    transformers' pooler) is dropped unless ``keep_pre_logits``. Returns what happened to each key."""
    return load_state_into(model, read_vitkit_state(path, keep_pre_logits=keep_pre_logits))
