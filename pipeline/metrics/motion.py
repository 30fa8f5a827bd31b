"""Motion-transfer metrics: per-channel agreement between predicted and true signals (pose angles,
expression coefficients, ...) as arrays [N rows, C channels] or [N].

Missing values are NaN (e.g. a frame where the tracker failed). They are skipped per channel: row n
counts for channel c when both pred[n, c] and true[n, c] are valid, so a gap in one channel does not
drop the others. Results for an [N] input are 0-d arrays (use float()).
"""
from __future__ import annotations

import warnings

import numpy as np


def mean_absolute_error(pred, true) -> np.ndarray:
    """MAE_c = mean_n |pred[n, c] - true[n, c]| over the rows where neither is NaN; NaN for a channel
    with no such rows. (inf is not skipped: an infinite prediction is an error, and MAE becomes inf.)"""
    p, t = _signals(pred, true)
    return _nanmean_rows(np.abs(p - t))


def angular_error_deg(pred, true) -> np.ndarray:
    """Elementwise |pred - true| in degrees wrapped onto the circle, in [0, 180]:
    e = |((pred - true + 180) mod 360) - 180|, so 179 vs -179 is 2 and 0 vs 360 is 0. NaN stays NaN."""
    p, t = _signals(pred, true)
    return np.abs(np.mod(p - t + 180.0, 360.0) - 180.0)


def mean_angular_error_deg(pred, true) -> np.ndarray:
    """Per-channel mean of angular_error_deg over the rows where neither angle is NaN (as mean_absolute_error)."""
    return _nanmean_rows(angular_error_deg(pred, true))


def pearson_per_channel(pred, true) -> np.ndarray:
    """r_c = sum_n (x_n - x̄)(y_n - ȳ) / sqrt(sum_n (x_n - x̄)^2 sum_n (y_n - ȳ)^2), x = pred[:, c], y = true[:, c],
    over the rows where both are finite. NaN for a channel with fewer than 3 such rows or where either
    side is constant over them (r undefined)."""
    p, t = _signals(pred, true)
    p2, t2 = (p, t) if p.ndim == 2 else (p[:, None], t[:, None])
    r = np.full(p2.shape[1], np.nan)
    for c in range(p2.shape[1]):
        ok = np.isfinite(p2[:, c]) & np.isfinite(t2[:, c])
        x, y = p2[ok, c], t2[ok, c]
        # exact constancy test (as scipy's): a float mean of equal values may leave tiny nonzero residuals
        if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
            continue
        x, y = x - x.mean(), y - y.mean()
        # normalise first so huge values cannot overflow the products
        r[c] = np.clip(np.dot(x / np.linalg.norm(x), y / np.linalg.norm(y)), -1.0, 1.0)
    return r.reshape(p.shape[1:])


def mean_ignoring_nan(values) -> float:
    """mean of the non-NaN values (np.nanmean), NaN without a warning when there are none."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.mean(v[~np.isnan(v)])) if (~np.isnan(v)).any() else float("nan")


def _nanmean_rows(e: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # an all-NaN channel is reported as NaN, not warned about
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmean(e, axis=0))


def _signals(pred, true) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred), np.asarray(true)
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have one shape, got {p.shape} and {t.shape}")
    if p.ndim not in (1, 2):
        raise ValueError(f"expected [N] or [N, C] arrays, got shape {p.shape}")
    for name, a in (("pred", p), ("true", t)):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
            raise ValueError(f"{name} must be real numbers, got dtype {a.dtype}")
    return p.astype(np.float64), t.astype(np.float64)
