"""Renaming state-dict keys with ordered regular-expression rules."""

from __future__ import annotations

import re

from torch import Tensor


def rename_key(key: str, rules: list[tuple[str, str]]) -> str:
    """Apply the first rule whose pattern matches ``key``; keys no rule matches stay as they are."""
    for pattern, replacement in rules:
        new_key, count = re.subn(pattern, replacement, key)
        if count:
            return new_key
    return key


# vitkit 0.1's own names that have changed since: the learned table lived in a module then.
_EARLIER_VITKIT = [
    (r"(^|\.)pos_embed\.weight$", r"\1pos_embed"),
    (r"(^|\.)pos_embed\.(row|col)$", r"\1pos_embed2d.\2"),
]


def upgrade_vitkit_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict written by an earlier vitkit, with today's names (others pass unchanged)."""
    return rename_keys(state, _EARLIER_VITKIT)


def rename_keys(state: dict[str, Tensor], rules: list[tuple[str, str]]) -> dict[str, Tensor]:
    return {rename_key(key, rules): value for key, value in state.items()}
