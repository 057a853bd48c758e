"""Fitting a state dict to a model, in one place: resample position embeddings to the model's
grid (paper §3.2), give a new class count a fresh zero head, and account for every key."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models import VisionTransformer
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


def load_state_into(model: VisionTransformer, state: dict[str, torch.Tensor]) -> LoadReport:
    """Load ``state`` into ``model``, adapting what the paper adapts when fine-tuning:

    - ``pos_embed.weight`` of another grid is 2-D interpolated to the model's grid;
    - a classifier (``head.*``) or pre-training layer (``pre_logits.*``) of another shape is
      dropped, leaving the model's zero-initialised head;
    - any other shape mismatch is an error naming the tensor and both shapes (wrong variant).
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
            if key == "pos_embed.weight":
                prefix = model.config.num_prefix_tokens
                value = resample_pos_embed(
                    value, model.config.grid, num_prefix_tokens=prefix, mode=model.config.pos_embed_interp
                )
                report.adapted[key] = f"resampled {tuple(state[key].shape)} → {tuple(value.shape)}"
            elif key.startswith(("head.", "pre_logits.")):
                report.adapted[key] = f"dropped {tuple(value.shape)}: new zero-initialised head {tuple(target.shape)}"
                continue
            else:
                raise ValueError(
                    f"cannot load {key}: the weights have shape {tuple(value.shape)} but the model needs "
                    f"{tuple(target.shape)}; are the weights for another model variant?"
                )
        fitted[key] = value.to(target.dtype)
    report.missing = [k for k in own if k not in fitted and k not in report.adapted]
    model.load_state_dict(fitted, strict=False)
    return report
