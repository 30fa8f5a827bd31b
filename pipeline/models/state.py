"""Checking a state dict against a module before a strict load, so the error says what does not fit."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import Tensor


def few(items: Sequence[str], n: int = 4) -> str:
    """The first `n` items, and how many more there are."""
    items = list(items)
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def state_dict_problems(state: Mapping[str, Any], expected: Mapping[str, Tensor]) -> list[str]:
    """Why `state` cannot load strictly into a module whose state dict is `expected` (empty: it can):
    missing and unexpected keys, entries that are not tensors, shape mismatches."""
    missing = [k for k in expected if k not in state]
    unexpected = [str(k) for k in state if k not in expected]
    not_tensor = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    mismatched = [
        f"{k}: found {list(state[k].shape)}, expected {list(v.shape)}"
        for k, v in expected.items()
        if isinstance(state.get(k), Tensor) and state[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("entries that are not tensors", not_tensor), ("shape mismatches", mismatched)):
        if keys:
            problems.append(f"{len(keys)} {label} ({few(keys)})")
    return problems
