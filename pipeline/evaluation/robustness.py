"""The one-shot robustness protocol (the paper's Table 3): 5 driving videos x 5 diverse source frames.

"Diverse source frames" are chosen from a video's frames by their analyser features (head pose and expression
by default; params `evaluate.robustness`):
- farthest (default): greedy farthest-point sampling on the features standardised per channel (z-scores over
  the video): the first pick is the frame farthest from the video's mean, each next one the frame whose
  nearest already-picked frame is farthest. Deterministic; maximises the spread the protocol is about.
- uniform: frames evenly spaced in time (no features needed).
- random: a seeded uniform draw without replacement.
Rows with non-finite features (no face found) are never picked by `farthest`.
"""
from __future__ import annotations

import numpy as np

SEPARATOR = "__"  # robustness predictions are named <driving video>__<source tag>


def select_diverse_frames(features: np.ndarray | None, k: int, method: str = "farthest", n_frames: int | None = None,
                          seed: int = 0) -> np.ndarray:
    """Indices (sorted, int [k]) of k frames of one video. features: [T, C] per-frame pose / expression
    (may be None for 'uniform' and 'random', then n_frames gives T)."""
    if features is not None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2:
            raise ValueError(f"features must be [T, C], got shape {f.shape}")
        n = len(f)
    elif n_frames is None or method == "farthest":
        raise ValueError("select_diverse_frames: 'farthest' needs features; the others need features or n_frames")
    else:
        n = int(n_frames)
    if not 1 <= k <= n:
        raise ValueError(f"cannot choose {k} frames from a video of {n}")
    if method == "uniform":
        return np.unique(np.linspace(0, n - 1, k).round().astype(int)) if k > 1 else np.array([0])
    if method == "random":
        return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    if method != "farthest":
        raise ValueError(f"unknown source selection {method!r}; use farthest | uniform | random")
    ok = np.isfinite(f).all(axis=1)
    if ok.sum() < k:
        raise ValueError(f"only {int(ok.sum())} frame(s) have features (a face was found); {k} needed")
    z = f[ok]
    std = z.std(axis=0)
    z = (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)
    index = np.flatnonzero(ok)
    chosen = [int(np.argmax(np.linalg.norm(z, axis=1)))]
    nearest = np.linalg.norm(z - z[chosen[0]], axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(z - z[nxt], axis=1))
    return np.sort(index[chosen])


def robustness_name(driving: str, tag: str) -> str:
    return f"{driving}{SEPARATOR}{tag}"


def driving_of(name: str) -> str:
    """The driving video a robustness prediction belongs to: the part of its name before the last '__'."""
    if SEPARATOR not in name:
        raise ValueError(f"{name!r}: robustness predictions are named <driving>{SEPARATOR}<source tag>")
    return name.rsplit(SEPARATOR, 1)[0]
