"""Fitting a state dict to a model, in one place: resample position embeddings to the model's
grid (paper §3.2), give a new class count a fresh zero head, and account for every key."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models import Network
from ..models.embed import resample_pos_embed


@dataclass
class LoadReport:
    """What happened to each key of a loaded state dict."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"adapted {k}: {why}" for k, why in self.adapted.items()]
        lines += [f"missing (left as initialised) {k}" for k in self.missing]
        lines += [f"unexpected (ignored) {k}" for k in self.unexpected]
        return "\n".join(lines) or "all keys matched"


# Tensors that may be absent or left over without the weights being for another model: the
# classifier and the pre-training head, which fine-tuning replaces (paper §3.1).
_REPLACEABLE = ("head.", "pre_logits.")


def load_state_into(model: Network, state: dict[str, torch.Tensor], *, source: str = "the weights") -> LoadReport:
    """Load ``state`` into ``model``, adapting what the paper adapts when fine-tuning:

    - ``pos_embed`` of another grid is 2-D interpolated to the model's grid;
    - a classifier (``head.*``) or pre-training layer (``pre_logits.*``) of another shape or
      absent is left as the model's zero-initialised head; one the model lacks is dropped;
    - any other shape mismatch, any other missing tensor and any other tensor that has no place
      in the model is an error naming them (the weights are for another model): weights that
      match little never load "successfully".
    """
    report = LoadReport()
    own = model.state_dict()
    fitted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if value.shape != target.shape:
            if key == "pos_embed":
                prefix = model.config.num_prefix_tokens
                value = resample_pos_embed(
                    value, model.config.grid, num_prefix_tokens=prefix, mode=model.config.pos_embed_interp
                )
                report.adapted[key] = f"resampled {tuple(state[key].shape)} → {tuple(value.shape)}"
            elif key.startswith(_REPLACEABLE):
                report.adapted[key] = f"dropped {tuple(value.shape)}: new zero-initialised head {tuple(target.shape)}"
                continue
            else:
                raise ValueError(
                    f"cannot load {key}: the weights have shape {tuple(value.shape)} but the model needs "
                    f"{tuple(target.shape)}; are the weights for another model variant?"
                )
        fitted[key] = value.to(target.dtype)
    report.missing = [k for k in own if k not in fitted and k not in report.adapted]
    missing = [k for k in report.missing if not k.startswith(_REPLACEABLE)]
    unexpected = [k for k in report.unexpected if not k.startswith(_REPLACEABLE)]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} of the model's {len(own)} tensors are not in them (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} of theirs have no place in the model (e.g. {unexpected[0]})")
        raise ValueError(
            f"cannot load {source}: {'; '.join(problems)}. Are they weights for another model, or "
            "another layout? vitkit reads vitkit, timm, transformers and Google checkpoints"
        )
    model.load_state_dict(fitted, strict=False)
    return report
