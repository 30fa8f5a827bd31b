"""Statistics over videos: summaries with bootstrap 95% confidence intervals, and a paired test of two methods.

The unit of resampling is the video (or, in the robustness protocol, the driving video with all its source
frames: a cluster bootstrap), never the frame: frames of one video are strongly correlated, and resampling
them would give intervals far too narrow.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95  # fixed: the output key is "ci95"


def summarize(
    values: Sequence[float],  # one value per video (NaN: the metric is undefined for that video, left out)
    resamples: int = 2000,  # bootstrap resamples for the CI
    seed: int = 0,
    groups: Sequence[str] | None = None,  # cluster labels (robustness: the driving video); None: each value alone
) -> dict:
    """{"mean", "std" (over videos, ddof 1), "ci95": [lo, hi] (percentile bootstrap of the mean), "n"}.
    Non-finite values other than +-inf are left out (n counts the rest); an infinite value (PSNR of identical
    frames) makes the mean infinite, as it is."""
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(v)
    g = None if groups is None else np.asarray(groups, dtype=object)[keep]
    v = v[keep]
    n = int(len(v))
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    with np.errstate(invalid="ignore"):
        mean = float(v.mean())
        std = float(v.std(ddof=1)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "ci95": bootstrap_ci(v, np.mean, resamples, seed, g), "n": n}


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    resamples: int = 2000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    confidence: float = CONFIDENCE,
) -> list[float]:
    """Percentile bootstrap interval of statistic(values): resample the values (or, with `groups`, whole
    groups) with replacement `resamples` times; the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return [float("nan"), float("nan")]
    if len(v) < 2 or resamples <= 0:  # one video: no interval (not a zero-width one)
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    if groups is None:
        idx = rng.integers(0, len(v), size=(resamples, len(v)))
        for i in range(resamples):
            stats[i] = statistic(v[idx[i]])
    else:
        members = _members(groups)
        for i in range(resamples):
            chosen = rng.integers(0, len(members), size=len(members))
            stats[i] = statistic(v[np.concatenate([members[k] for k in chosen])])
    return _quantiles(stats, confidence)


def bootstrap_indices(n_items: int, resamples: int, seed: int, groups: Sequence[str] | None = None) -> list[np.ndarray]:
    """The resampled item indices of each bootstrap replicate (for statistics of pooled features, which are
    recomputed per replicate by the caller): items, or whole groups of items, drawn with replacement."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return [rng.integers(0, n_items, size=n_items) for _ in range(resamples)]
    members = _members(np.asarray(groups, dtype=object))
    return [np.concatenate([members[k] for k in rng.integers(0, len(members), size=len(members))]) for _ in range(resamples)]


def percentile_interval(stats: Sequence[float], confidence: float = CONFIDENCE) -> list[float]:
    return _quantiles(np.asarray(stats, dtype=np.float64), confidence)


def bias_corrected_interval(
    replicates: Sequence[float],  # the statistic recomputed on each bootstrap replicate (NaN: left out)
    estimate: float,  # the statistic on the full sample: the reported value
    confidence: float = CONFIDENCE,
    lower_bound: float | None = None,  # a value the statistic cannot go below (0 for a distance); None: no bound
) -> list[float]:
    """Percentile interval of the replicates shifted by their median bias: [estimate + q_lo - m, estimate + q_hi - m]
    with q_lo, q_hi the (1 -+ confidence) / 2 quantiles and m the median of the replicates.

    Why (for pooled FID / FVD): a Frechet distance of a finite sample is biased upward, and a bootstrap replicate
    (videos drawn with replacement: duplicates, fewer distinct videos) is biased further, so the replicates sit at
    estimate + b + noise with b the bootstrap's estimate of that bias; their plain percentiles can miss the
    estimate altogether when b exceeds the noise. By the bootstrap principle, replicate - m mimics the estimate's
    own sampling error around its centre, so the interval is that spread put around the estimate: a CI for what
    the estimator measures at this sample size (FID / FVD are compared at a fixed size, their bias is part of the
    metric), not for the infinite-sample distance. The median, not the mean, estimates b: q_lo <= m <= q_hi
    always, so the interval contains the estimate by construction (a skewed set of replicates can put its mean
    beyond a quantile). Not the basic interval 2 * estimate - q: it corrects for the bias relative to the
    infinite-sample distance, and excludes the estimate as the plain percentiles do when b exceeds the noise.
    With `lower_bound`, lo is raised to min(lower_bound, estimate), which keeps the estimate inside."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[~np.isnan(r)]
    if len(r) == 0 or not np.isfinite(estimate):
        return [float("nan"), float("nan")]
    alpha = (1.0 - confidence) / 2.0
    q_lo, m, q_hi = np.quantile(r, [alpha, 0.5, 1.0 - alpha])  # non-decreasing in the level: q_lo <= m <= q_hi
    lo, hi = estimate + (q_lo - m), estimate + (q_hi - m)
    if lower_bound is not None:
        lo = max(lo, min(lower_bound, estimate))
    return [float(lo), float(hi)]


def paired_test(
    a: Mapping[str, float],  # per-video values of method A, by video name
    b: Mapping[str, float],  # of method B
    resamples: int = 10000,
    seed: int = 0,
) -> dict:
    """Compare two methods on the videos both have a finite value for.

    Returns {"n", "mean_a", "mean_b", "mean_difference" (a - b), "ci95" (percentile bootstrap of the mean
    difference over videos), "p_value" (two-sided sign-flip permutation test of the paired differences: exact
    enumeration of all 2^n sign patterns for n <= 16, else `resamples` random patterns; the observed pattern
    counts, so p >= 1 / (patterns)), "wilcoxon_p" (scipy's signed-rank test, a second opinion; NaN when all
    differences are zero), "videos" (the names used)}."""
    from scipy.stats import wilcoxon

    names = sorted(k for k in a if k in b and np.isfinite(a[k]) and np.isfinite(b[k]))
    n = len(names)
    out = {"n": n, "videos": names}
    if n == 0:
        return {**out, "mean_a": float("nan"), "mean_b": float("nan"), "mean_difference": float("nan"),
                "ci95": [float("nan"), float("nan")], "p_value": float("nan"), "wilcoxon_p": float("nan")}
    x = np.array([a[k] for k in names], dtype=np.float64)
    y = np.array([b[k] for k in names], dtype=np.float64)
    d = x - y
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, observed)  # ties with the observed statistic count as at least as extreme
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        p = float(np.mean(np.abs(signs @ d / n) >= observed - tol))
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(resamples, n))
        p = float((np.sum(np.abs(signs @ d / n) >= observed - tol) + 1) / (resamples + 1))
    if np.all(d == 0):
        w = float("nan")
    else:
        w = float(wilcoxon(x, y).pvalue)
    return {**out, "mean_a": float(x.mean()), "mean_b": float(y.mean()), "mean_difference": float(d.mean()),
            "ci95": bootstrap_ci(d, np.mean, min(resamples, 10000), seed), "p_value": p, "wilcoxon_p": w}


def _members(groups: np.ndarray) -> list[np.ndarray]:
    labels = list(dict.fromkeys(groups.tolist()))
    return [np.flatnonzero(groups == label) for label in labels]


def _quantiles(stats: np.ndarray, confidence: float) -> list[float]:
    stats = stats[~np.isnan(stats)]
    if len(stats) == 0:
        return [float("nan"), float("nan")]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def json_number(x):
    """A float for JSON: NaN -> None (null), +-inf -> "inf" / "-inf" (strict JSON has no infinities)."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x
