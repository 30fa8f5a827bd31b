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


def temporal_correlation(generated, driving, min_frames: int = 3) -> np.ndarray:
    """Per-channel Pearson correlation over the frames of ONE video (the paper's rho_AU, rho_GZ, rho_pose before
    averaging): generated and driving are [T, C] (or [T]) analyser channels of the same T frames. Frames where
    either value is not finite are left out for that channel (a frame without a face).

    Concatenating several videos before correlating would add the between-video variance to both sides and
    inflate r, so this takes one video; `video_correlation` averages over channels, the caller over videos.

    What a channel that does not vary counts as (decided here, once):
    - the DRIVING channel is constant (or has fewer than `min_frames` valid frames): NaN, left out of the
      channel mean. There is no motion to follow: counting it as 0 would punish a method for a channel the
      driving video never exercised, counting it as 1 would reward it for nothing.
    - the GENERATED channel is constant while the driving one varies: 0, not NaN. The method transferred none
      of that motion (the covariance is zero); dropping it, as a bare Pearson would (undefined), biases the
      mean upwards and would leave the "copy the source frame" floor with no value at all instead of ~0.
    Constancy is exact equality of the valid values (as scipy tests it): centring a constant in floating
    point leaves residuals of 1e-17 that would otherwise give a meaningless r."""
    g, d = _signals(generated, driving)
    g2, d2 = (g, d) if g.ndim == 2 else (g[:, None], d[:, None])
    r = np.full(g2.shape[1], np.nan)
    for c in range(g2.shape[1]):
        ok = np.isfinite(g2[:, c]) & np.isfinite(d2[:, c])
        x, y = g2[ok, c], d2[ok, c]
        if len(y) < max(2, min_frames) or np.all(y == y[0]):
            continue  # nothing to follow: undefined, left out
        if np.all(x == x[0]):
            r[c] = 0.0  # the driving moves, the generated video does not
            continue
        x, y = x - x.mean(), y - y.mean()
        r[c] = np.clip(np.dot(x / np.linalg.norm(x), y / np.linalg.norm(y)), -1.0, 1.0)
    return r.reshape(g.shape[1:])


def video_correlation(generated, driving, min_frames: int = 3) -> tuple[float, int, int]:
    """(mean over channels of temporal_correlation, channels used, channels left out because the driving
    channel is constant or has too few valid frames); the mean is NaN when every channel is left out."""
    r = np.atleast_1d(temporal_correlation(generated, driving, min_frames))
    used = ~np.isnan(r)
    return (float(r[used].mean()) if used.any() else float("nan")), int(used.sum()), int((~used).sum())


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
