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


def rename_keys(state: dict[str, Tensor], rules: list[tuple[str, str]]) -> dict[str, Tensor]:
    return {rename_key(key, rules): value for key, value in state.items()}
