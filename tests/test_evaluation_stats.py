"""The bootstrap CI of pooled set metrics (FID / FVD): the replicates' percentiles shifted by their median bias
(stats.bias_corrected_interval), which contains the point estimate; the plain percentiles it replaces do not."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from pipeline.evaluation import engine
from pipeline.evaluation import stats as st


def _frechet_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance from its definition (np.cov, ddof 1, and scipy's sqrtm): independent of frechet.py."""
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(linalg.sqrtm(s1 @ s2))
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * root))


def _videos(seed: int, n_videos: int = 8, frames: int = 20, dim: int = 4, shift: float = 0.0, spread: float = 0.5):
    """Gaussian features of generated and driving frames, per video: both sides share the video's centre (the
    generated video follows its driving video), frames scatter around it; `shift` moves the generated side."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(n_videos, 1, dim))
    gen = centre + shift + spread * rng.normal(size=(n_videos, frames, dim))
    drv = centre + spread * rng.normal(size=(n_videos, frames, dim))
    return list(gen.astype(np.float32)), list(drv.astype(np.float32))


def _results(gen: list[np.ndarray], drv: list[np.ndarray]) -> list[engine.PairResult]:
    return [engine.PairResult(f"v{i}", f"v{i}", len(g), (8, 8),
                              {"method": engine.VideoRecord(features={"fid_toy": g})}, {"fid_toy": d}, {})
            for i, (g, d) in enumerate(zip(gen, drv))]


def _replicates(gen, drv, resamples: int, seed: int) -> np.ndarray:
    """The engine's replicates recomputed from the definition: videos drawn with replacement, concatenated."""
    reps = []
    for idx in st.bootstrap_indices(len(gen), resamples, seed):
        reps.append(_frechet_sqrtm(np.concatenate([gen[i] for i in idx]).astype(np.float64),
                                   np.concatenate([drv[i] for i in idx]).astype(np.float64)))
    return np.array(reps)


def test_the_bootstrap_bias_is_real_and_the_interval_contains_the_estimate():
    gen, drv = _videos(0)
    settings = engine.Settings(set_resamples=200, seed=0)
    agg = engine._set_aggregate(_results(gen, drv), "method", "fid_toy", settings)
    value = agg["mean"]
    assert value == pytest.approx(_frechet_sqrtm(np.concatenate(gen).astype(np.float64),
                                                 np.concatenate(drv).astype(np.float64)), rel=1e-6)
    reps = _replicates(gen, drv, 200, 0)
    # the upward bias of a replicate (duplicated videos): most replicates, and the plain percentile interval
    # (the old CI), lie above the estimate
    assert np.median(reps) > 2 * value and (reps > value).mean() > 0.975
    old_lo, old_hi = st.percentile_interval(reps)
    assert value < old_lo < old_hi
    # the basic (reverse percentile) interval 2 * value - q does not help: it lies below the estimate
    assert 2 * value - old_lo < value
    lo, hi = agg["ci95"]
    assert lo <= value <= hi and lo >= 0
    # the engine's interval is the formula's on the replicates from the definition (eigh vs sqrtm: round-off)
    expected = st.bias_corrected_interval(reps, value, lower_bound=0.0)
    assert [lo, hi] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert "median bias" in agg["note"]


@pytest.mark.parametrize("n_videos,frames,shift", [(3, 10, 0.0), (5, 20, 0.3), (8, 20, 0.0), (12, 8, 1.0)])
def test_the_interval_contains_the_estimate_for_every_seed_and_size(n_videos, frames, shift):
    for seed in range(4):
        gen, drv = _videos(seed, n_videos=n_videos, frames=frames, shift=shift)
        agg = engine._set_aggregate(_results(gen, drv), "method", "fid_toy", engine.Settings(set_resamples=40, seed=seed))
        lo, hi = agg["ci95"]
        assert 0 <= lo <= agg["mean"] <= hi, (seed, agg)
        again = engine._set_aggregate(_results(gen, drv), "method", "fid_toy", engine.Settings(set_resamples=40, seed=seed))
        assert again["ci95"] == [lo, hi]  # deterministic given the seed


def test_the_formula_by_hand():
    # 5 replicates: quantiles (linear interpolation) 2.5%: 1 + 0.1 * (2 - 1) = 1.1, median 3, 97.5%: 7 + 0.9 * 3 = 9.7
    reps = [1.0, 2.0, 3.0, 7.0, 10.0]
    assert st.percentile_interval(reps) == pytest.approx([1.1, 9.7])
    # shifted by the median bias 3 - 0.5 = 2.5: [0.5 - 1.9, 0.5 + 6.7]
    assert st.bias_corrected_interval(reps, 0.5) == pytest.approx([-1.4, 7.2])
    # a distance cannot be negative: lo is raised to the bound, never above the estimate
    assert st.bias_corrected_interval(reps, 0.5, lower_bound=0.0) == pytest.approx([0.0, 7.2])
    assert st.bias_corrected_interval(reps, -1e-12, lower_bound=0.0) == pytest.approx([-1e-12, 6.7 - 1e-12])
    # NaN replicates are left out; none left, or no estimate: no interval
    assert st.bias_corrected_interval(reps + [float("nan")], 3.0) == pytest.approx([1.1, 9.7])
    assert all(np.isnan(st.bias_corrected_interval([float("nan")], 3.0)))
    assert all(np.isnan(st.bias_corrected_interval(reps, float("nan"))))
    # a skewed set whose mean lies above its upper quantile: a mean shift would exclude the estimate, the median's not
    skewed = [0.0] * 99 + [1000.0]
    assert np.mean(skewed) > st.percentile_interval(skewed)[1]
    lo, hi = st.bias_corrected_interval(skewed, 2.0)
    assert lo <= 2.0 <= hi
