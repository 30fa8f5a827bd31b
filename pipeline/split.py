"""The identity-disjoint train/test split, shared by `data` (cross renders are made for held-out identities)
and `prepare` (which stores training and evaluation frames): one function, so both always agree."""
from __future__ import annotations

import numpy as np

from pipeline.errors import UserError


class SplitError(UserError, ValueError):
    """Too few identities to split."""


def split_identities(identities: list[str], test_fraction: float, seed: int) -> dict[str, str]:
    """{identity: 'train' | 'test'}: a seeded permutation of the sorted identities, the first
    round(test_fraction * n) held out; at least one identity on each side."""
    names = sorted(set(identities))
    if len(names) < 2:
        raise SplitError(f"an identity-disjoint split needs at least 2 identities, found {len(names)}: {names}")
    order = np.random.default_rng(seed).permutation(len(names))
    n_test = min(max(1, round(test_fraction * len(names))), len(names) - 1)
    test = {names[i] for i in order[:n_test]}
    return {name: ("test" if name in test else "train") for name in names}


def held_out(identities: list[str], test_fraction: float, seed: int) -> list[str]:
    return sorted(i for i, s in split_identities(identities, test_fraction, seed).items() if s == "test")
