"""Google's ViT checkpoints (``.npz``, read and written with numpy alone, no JAX).

Layouts read: vit_jax / AugReg (``Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1``),
the older ``opt/target/`` prefix, big_vision (``params/`` prefix, ``..._0`` / ``LayerNorm_1``
names, ``pos_embedding`` without a class row, "scan" checkpoints with the blocks stacked on a
leading axis), hybrid ResNet stems, ``pre_logits`` and arrays stored as raw bfloat16.
Written: the vit_jax layout (plain and hybrid), which vit_jax and timm read.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..fileio import atomic_write
from ..models import ViTConfig

_ATTN = "MultiHeadDotProductAttention"


def _to_float32(array: np.ndarray) -> np.ndarray:
    """bfloat16 has no numpy dtype: such arrays arrive as 2-byte voids holding the top half of a float32."""
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:
        return (array.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a Google checkpoint with prefixes removed and scanned blocks unstacked, in the
    vit_jax naming (``encoderblock_{i}``, ``LayerNorm_0/2``, ``MultiHeadDotProductAttention_1``,
    ``MlpBlock_3``). Never unpickles (``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            raw = {name: _to_float32(archive[name]) for name in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path} is not a readable .npz file: {error}") from error
    except MemoryError as error:  # a header that claims far more data than the file holds
        raise ValueError(f"{path} is not a readable .npz file: an array claims more memory than there is") from error
    arrays: dict[str, np.ndarray] = {}
    big_vision = any(k.startswith("params/") for k in raw)
    for name, array in raw.items():
        for prefix in ("opt/target/", "params/img/", "params/"):
            name = name.removeprefix(prefix)
        if big_vision:  # big_vision numbers the sub-modules of a block differently
            name = re.sub(rf"/{_ATTN}_0/", f"/{_ATTN}_1/", name)
            name = name.replace("/LayerNorm_1/", "/LayerNorm_2/").replace("/MlpBlock_0/", "/MlpBlock_3/")
        if "/encoderblock/" in name:  # "scan": one array per parameter, blocks along axis 0
            for index, block in enumerate(array):
                arrays[name.replace("/encoderblock/", f"/encoderblock_{index}/")] = block
        else:
            arrays[name] = array
    return arrays


def _conv(kernel: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))  # HWIO → OIHW


def _dense(kernel: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(kernel.T))


def _vector(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.reshape(-1)))


def npz_to_vitkit(arrays: dict[str, np.ndarray], *, hybrid: bool = False) -> dict[str, Tensor]:
    """vit_jax-named arrays (see :func:`read_npz`) → a vitkit state dict."""
    state: dict[str, Tensor] = {}
    embed = "patch_embed.patch.proj" if hybrid else "patch_embed.proj"
    for name, array in arrays.items():
        if name == "embedding/kernel":
            state[f"{embed}.weight"] = _conv(array)
        elif name == "embedding/bias":
            state[f"{embed}.bias"] = _vector(array)
        elif name == "cls":
            state["cls_token"] = torch.from_numpy(array.reshape(1, 1, -1).copy())
        elif name == "Transformer/posembed_input/pos_embedding":
            pos = torch.from_numpy(array.reshape(1, -1, array.shape[-1]).copy())
            side = math.isqrt(pos.shape[1])
            if side * side == pos.shape[1] and "cls" in arrays:  # big_vision: no class row; add a zero one
                pos = torch.cat([torch.zeros(1, 1, pos.shape[-1]), pos], dim=1)
            state["pos_embed"] = pos
        elif name.startswith("Transformer/encoder_norm/"):
            state[f"norm.{'weight' if name.endswith('scale') else 'bias'}"] = _vector(array)
        elif name.startswith(("pre_logits/", "head/")):
            module = "pre_logits.0" if name.startswith("pre_logits/") else "head"
            state[f"{module}.{'weight' if name.endswith('kernel') else 'bias'}"] = (
                _dense(array) if name.endswith("kernel") else _vector(array)
            )
        elif name.startswith("Transformer/encoderblock_"):
            _block_entry(state, name, array)
        elif name.startswith(("conv_root/", "gn_root/", "block")):
            _resnet_entry(state, name, array)
    _fuse_qkv(state)
    return state


def _block_entry(state: dict[str, Tensor], name: str, array: np.ndarray) -> None:
    index, rest = re.match(r"Transformer/encoderblock_(\d+)/(.*)", name).groups()
    prefix = f"blocks.{index}"
    kind = "weight" if rest.endswith(("kernel", "scale")) else "bias"
    if rest.startswith("LayerNorm_0/"):
        state[f"{prefix}.norm1.{kind}"] = _vector(array)
    elif rest.startswith("LayerNorm_2/"):
        state[f"{prefix}.norm2.{kind}"] = _vector(array)
    elif rest.startswith("MlpBlock_3/Dense_"):
        fc = "fc1" if "Dense_0" in rest else "fc2"
        state[f"{prefix}.mlp.{fc}.{kind}"] = _dense(array) if kind == "weight" else _vector(array)
    elif rest.startswith(f"{_ATTN}_1/out/"):
        if kind == "weight":  # (heads, head_dim, D) → (D, D) in (out, in)
            state[f"{prefix}.attn.proj.weight"] = _dense(array.reshape(-1, array.shape[-1]))
        else:
            state[f"{prefix}.attn.proj.bias"] = _vector(array)
    elif rest.startswith(f"{_ATTN}_1/"):
        which = rest.split("/")[1]  # query, key or value
        if kind == "weight":  # (D, heads, head_dim) → (D, D) in (out, in)
            state[f"{prefix}.attn.{which}.weight"] = _dense(array.reshape(array.shape[0], -1))
        else:
            state[f"{prefix}.attn.{which}.bias"] = _vector(array)


def _fuse_qkv(state: dict[str, Tensor]) -> None:
    for key in [k for k in state if k.endswith(".attn.query.weight") or k.endswith(".attn.query.bias")]:
        prefix, kind = key.rsplit(".attn.query.", 1)
        parts = [state.pop(f"{prefix}.attn.{w}.{kind}") for w in ("query", "key", "value")]
        state[f"{prefix}.attn.qkv.{kind}"] = torch.cat(parts)


def _resnet_entry(state: dict[str, Tensor], name: str, array: np.ndarray) -> None:
    root = "patch_embed.backbone"
    match = re.match(r"block(\d+)/unit(\d+)/(conv\d|gn\d|conv_proj|gn_proj)/(kernel|scale|bias)", name)
    if name.startswith(("conv_root/", "gn_root/")):
        module, leaf = name.split("/")
        target = f"{root}.{module}"
    elif match:
        stage, unit, module, leaf = match.groups()
        module = {"conv_proj": "proj.0", "gn_proj": "proj.1"}.get(module, module)
        target = f"{root}.stages.{int(stage) - 1}.{int(unit) - 1}.{module}"
    else:
        return
    if leaf == "kernel":
        state[f"{target}.weight"] = _conv(array)
    else:
        state[f"{target}.{'weight' if leaf == 'scale' else 'bias'}"] = _vector(array)


def vitkit_to_npz(state: dict[str, Tensor], num_heads: int) -> dict[str, np.ndarray]:
    """A plain vitkit ViT's state dict → vit_jax-layout arrays (the inverse of :func:`npz_to_vitkit`)."""
    arrays: dict[str, np.ndarray] = {}

    def numpy(tensor: Tensor) -> np.ndarray:
        return tensor.detach().float().cpu().numpy()

    for key, tensor in state.items():
        value = numpy(tensor)
        if key in ("patch_embed.proj.weight", "patch_embed.patch.proj.weight"):
            arrays["embedding/kernel"] = value.transpose(2, 3, 1, 0)
        elif key in ("patch_embed.proj.bias", "patch_embed.patch.proj.bias"):
            arrays["embedding/bias"] = value
        elif key == "cls_token":
            arrays["cls"] = value
        elif key == "pos_embed":
            arrays["Transformer/posembed_input/pos_embedding"] = value
        elif key.startswith("norm."):
            arrays[f"Transformer/encoder_norm/{'scale' if key.endswith('weight') else 'bias'}"] = value
        elif key.startswith(("head.", "pre_logits.0.")):
            module = "head" if key.startswith("head.") else "pre_logits"
            arrays[f"{module}/{'kernel' if key.endswith('weight') else 'bias'}"] = value.T if value.ndim == 2 else value
        elif key.startswith("blocks."):
            _write_block(arrays, key, value, num_heads)
        elif key.startswith("patch_embed.backbone."):
            _write_resnet(arrays, key, value)
        else:
            raise ValueError(f"{key} has no place in a vit_jax checkpoint")
    return arrays


def _write_block(arrays: dict[str, np.ndarray], key: str, value: np.ndarray, num_heads: int) -> None:
    index, rest = re.match(r"blocks\.(\d+)\.(.*)", key).groups()
    block = f"Transformer/encoderblock_{index}"
    leaf_norm = "scale" if rest.endswith("weight") else "bias"
    leaf_dense = "kernel" if rest.endswith("weight") else "bias"
    if rest.startswith("norm1."):
        arrays[f"{block}/LayerNorm_0/{leaf_norm}"] = value
    elif rest.startswith("norm2."):
        arrays[f"{block}/LayerNorm_2/{leaf_norm}"] = value
    elif rest.startswith("mlp.fc"):
        dense = "Dense_0" if rest.startswith("mlp.fc1") else "Dense_1"
        arrays[f"{block}/MlpBlock_3/{dense}/{leaf_dense}"] = value.T if value.ndim == 2 else value
    elif rest.startswith("attn.qkv."):
        dim = value.shape[0] // 3
        for which, part in zip(("query", "key", "value"), np.split(value, 3), strict=True):
            name = f"{block}/{_ATTN}_1/{which}/{leaf_dense}"
            arrays[name] = part.T.reshape(dim, num_heads, -1) if part.ndim == 2 else part.reshape(num_heads, -1)
    elif rest.startswith("attn.proj."):
        dim = value.shape[0]
        name = f"{block}/{_ATTN}_1/out/{leaf_dense}"
        arrays[name] = value.T.reshape(num_heads, dim // num_heads, dim) if value.ndim == 2 else value


def _write_resnet(arrays: dict[str, np.ndarray], key: str, value: np.ndarray) -> None:
    rest = key.removeprefix("patch_embed.backbone.")
    module, leaf = rest.rsplit(".", 1)
    match = re.match(r"stages\.(\d+)\.(\d+)\.(.*)", module)
    if match:
        stage, unit, part = match.groups()
        part = {"proj.0": "conv_proj", "proj.1": "gn_proj"}.get(part, part)
        module = f"block{int(stage) + 1}/unit{int(unit) + 1}/{part}"
    if value.ndim == 4:
        arrays[f"{module}/kernel"] = value.transpose(2, 3, 1, 0)
    else:
        arrays[f"{module}/{'scale' if leaf == 'weight' else 'bias'}"] = value


def save_npz(path: str | Path, state: dict[str, Tensor], num_heads: int) -> Path:
    """Write a plain ViT as a vit_jax ``.npz`` (atomically)."""
    path = Path(path)
    arrays = vitkit_to_npz(state, num_heads)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)
    return path


def config_from_npz(arrays: dict[str, np.ndarray]) -> ViTConfig:
    """The architecture a Google checkpoint holds, read off its arrays (vit_jax names, see
    :func:`read_npz`): a ``.npz`` is self-describing apart from the LayerNorm epsilon (1e-6 in
    vit_jax and big_vision)."""
    try:
        patch, _, in_chans, dim = arrays["embedding/kernel"].shape
        depth = len({name.split("/")[1] for name in arrays if name.startswith("Transformer/encoderblock_")})
        heads = arrays[f"Transformer/encoderblock_0/{_ATTN}_1/query/kernel"].shape[1]
        mlp = arrays["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape[1]
        tokens = arrays["Transformer/posembed_input/pos_embedding"].shape[-2]
    except KeyError as error:
        raise ValueError(f"this .npz is not a ViT checkpoint in a layout vitkit reads (no {error})") from error
    class_token = "cls" in arrays
    if "conv_root/kernel" in arrays:  # a hybrid: the patch embedding reads the CNN's feature map
        in_chans = arrays["conv_root/kernel"].shape[2]
    units = [
        len({n.split("/")[1] for n in arrays if n.startswith(f"block{stage}/")})
        for stage in range(1, 5)
        if any(n.startswith(f"block{stage}/") for n in arrays)
    ]
    # vit_jax stores a class row in the table, big_vision does not
    side = math.isqrt(tokens) if math.isqrt(tokens) ** 2 == tokens else math.isqrt(tokens - 1)
    config = ViTConfig(
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_dim=mlp,
        qkv_bias=f"Transformer/encoderblock_0/{_ATTN}_1/query/bias" in arrays,
        class_token=class_token,
        pool="token" if class_token else "avg",
        hybrid_layers=tuple(units),
        num_classes=arrays["head/kernel"].shape[-1] if "head/kernel" in arrays else 0,
        representation_size=arrays["pre_logits/kernel"].shape[-1] if "pre_logits/kernel" in arrays else None,
        dynamic_img_pad=True,  # the default img_size may not fit the stride; the real one is set below
    )
    return config.replace(img_size=side * config.stride, dynamic_img_pad=False)
