"""The evaluation's metric definitions against independent ones: scikit-image (SSIM, PSNR), scipy (Pearson,
sqrtm, bootstrap, permutation test), pytorch-fid's Frechet distance, and hand-computed cases."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import linalg, stats
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.evaluation import check_metrics, is_valid_metric
from pipeline.evaluation.frechet import feature_stats, frechet_distance, frechet_of_features
from pipeline.evaluation.mouth import crop_boxes, mouth_boxes
from pipeline.evaluation.registry import METRICS, PAPER_METRICS, TOY_METRICS
from pipeline.evaluation.robustness import driving_of, select_diverse_frames
from pipeline.evaluation.stats import bootstrap_ci, json_number, paired_test, summarize
from pipeline.metrics.image import gaussian_kernel, l1_per_image, psnr_per_image, ssim, ssim_per_image
from pipeline.metrics.motion import temporal_correlation, video_correlation


def _degraded(seed=0, n=3, h=40, w=52):
    """Smooth images plus blurred-and-noisy copies: the regime where the SSIM window matters."""
    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.uniform(0, 255, (n, h, w, 3)), sigma=(0, 2, 2, 0))
    base = np.clip((base - base.min()) / (base.max() - base.min()) * 255, 0, 255).astype(np.uint8)
    test = gaussian_filter(base.astype(float), sigma=(0, 1, 1, 0)) + rng.normal(0, 8, base.shape)
    return base, np.clip(test, 0, 255).astype(np.uint8)


# -- image metrics


def test_ssim_gaussian_matches_scikit_image_wang_definition():
    ref, test = _degraded()
    ours = ssim_per_image(ref, test)
    theirs = [structural_similarity(r, t, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False) for r, t in zip(ref, test)]
    np.testing.assert_allclose(ours, theirs, atol=1e-10)
    assert ssim_per_image(ref, ref) == pytest.approx([1.0] * len(ref))
    # the torch path (used for CUDA tensors), run here on CPU tensors
    import torch

    from pipeline.metrics.image import _ssim_torch

    t = _ssim_torch(torch.from_numpy(ref).double(), torch.from_numpy(test).double(), "gaussian")
    np.testing.assert_allclose(t, theirs, atol=1e-10)
    np.testing.assert_allclose(ssim_per_image(torch.from_numpy(ref), torch.from_numpy(test)), theirs, atol=1e-10)


def test_ssim_uniform_matches_scikit_image_default_and_differs_from_gaussian():
    ref, test = _degraded(seed=1)
    theirs = [structural_similarity(r, t, data_range=255, channel_axis=-1) for r, t in zip(ref, test)]
    np.testing.assert_allclose(ssim_per_image(ref, test, window="uniform"), theirs, atol=1e-10)
    # the two windows differ by more than the gaps between methods in the paper's Table 1
    assert abs(ssim(ref, test, "uniform") - ssim(ref, test)) > 0.003
    with pytest.raises(ValueError, match="window"):
        ssim(ref, test, window="box")


def test_gaussian_kernel_is_scipys():
    impulse = np.zeros(31)
    impulse[15] = 1.0
    k = gaussian_kernel()
    assert len(k) == 11  # radius int(3.5 * 1.5 + 0.5) = 5
    np.testing.assert_allclose(gaussian_filter(impulse, 1.5, truncate=3.5)[10:21], k, atol=1e-15)


def test_l1_and_psnr_hand_computed_and_scikit_image():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 51  # one of 48 values off by 51/255 = 0.2
    np.testing.assert_allclose(l1_per_image(a, b), [0.2 / 48, 0.0])
    p = psnr_per_image(a, b)
    assert p[0] == pytest.approx(10 * np.log10(255**2 / (51**2 / 48)))
    assert p[0] == pytest.approx(peak_signal_noise_ratio(a[0], b[0], data_range=255))
    assert np.isinf(p[1])
    with pytest.raises(ValueError, match="one shape"):
        l1_per_image(a, b[:, :3])


# -- rho: per-video temporal correlation


def test_temporal_correlation_matches_scipy_per_channel():
    rng = np.random.default_rng(0)
    drv = rng.normal(size=(50, 4))
    gen = drv * [1.0, -0.5, 0.2, 0.0] + rng.normal(size=(50, 4)) * 0.5
    gen[[3, 7], 1] = np.nan  # frames without a face: left out for that channel only
    r = temporal_correlation(gen, drv)
    for c in range(4):
        ok = np.isfinite(gen[:, c])
        assert r[c] == pytest.approx(stats.pearsonr(gen[ok, c], drv[ok, c]).statistic)


def test_constant_channels_driving_undefined_generated_zero():
    t = np.linspace(0, 1, 20)
    drv = np.stack([np.sin(6 * t), np.full(20, 0.3), np.cos(5 * t)], 1)
    gen = np.stack([np.full(20, 2.0), np.sin(3 * t), np.cos(5 * t)], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = temporal_correlation(gen, drv)
    assert r[0] == 0.0  # the driving moves, the output is frozen: no motion transferred
    assert np.isnan(r[1])  # nothing to follow: left out
    assert r[2] == pytest.approx(1.0)
    mean, used, left_out = video_correlation(gen, drv)
    assert (mean, used, left_out) == (pytest.approx(0.5), 2, 1)
    assert np.isnan(video_correlation(np.zeros((5, 2)), np.ones((5, 2)))[0])


def test_per_video_correlation_is_not_inflated_by_concatenation():
    # two videos whose channel offsets differ: pooled rows correlate through the offsets alone
    rng = np.random.default_rng(1)
    videos = [(rng.normal(size=30) + off, rng.normal(size=30) + off) for off in (0.0, 10.0)]
    pooled = temporal_correlation(np.concatenate([g for g, _ in videos]), np.concatenate([d for _, d in videos]))
    per_video = np.mean([float(temporal_correlation(g, d)) for g, d in videos])
    assert pooled > 0.9 and abs(per_video) < 0.4


# -- statistics


def test_summarize_mean_std_and_n_skip_nan():
    out = summarize([1.0, 2.0, np.nan, 4.0], resamples=500)
    assert out["mean"] == pytest.approx(7 / 3) and out["n"] == 3
    assert out["std"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert out["ci95"][0] <= out["mean"] <= out["ci95"][1]
    assert summarize([5.0, 5.0, 5.0])["ci95"] == [5.0, 5.0]
    assert summarize([])["n"] == 0


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap():
    v = np.random.default_rng(2).gamma(2.0, 1.0, size=40)
    ours = bootstrap_ci(v, np.mean, resamples=20000, seed=0)
    ref = stats.bootstrap((v,), np.mean, n_resamples=20000, method="percentile", random_state=1).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.03) and ours[1] == pytest.approx(ref.high, abs=0.03)


def test_cluster_bootstrap_resamples_whole_groups():
    # two clusters of identical values: every replicate mean is one of 0, 0.5 or 1 (never a frame-level mix)
    v = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    ci = bootstrap_ci(v, np.mean, resamples=400, seed=0, groups=np.array(list("aaabbb")))
    assert set(ci) <= {0.0, 0.5, 1.0} and ci == [0.0, 1.0]


def test_paired_test_exact_permutation_matches_scipy():
    rng = np.random.default_rng(3)
    a = {f"v{i}": float(x) for i, x in enumerate(rng.normal(0.3, 1.0, 9))}
    b = {f"v{i}": float(x) for i, x in enumerate(rng.normal(0.0, 1.0, 9))}
    b["only_b"] = 1.0
    out = paired_test(a, b)
    x = np.array([a[k] for k in sorted(a)])
    y = np.array([b[k] for k in sorted(a)])
    ref = stats.permutation_test((x, y), lambda p, q: np.mean(p - q), permutation_type="samples",
                                 alternative="two-sided", n_resamples=np.inf)
    assert out["n"] == 9 and out["p_value"] == pytest.approx(ref.pvalue)
    assert out["mean_difference"] == pytest.approx(np.mean(x - y))
    assert out["wilcoxon_p"] == pytest.approx(stats.wilcoxon(x, y).pvalue)
    # a consistent improvement on 20 videos is significant; identical methods are not
    same = {f"v{i}": float(i) for i in range(20)}
    better = {k: v + 0.1 + 0.01 * (i % 3) for i, (k, v) in enumerate(same.items())}
    assert paired_test(better, same)["p_value"] < 0.001
    assert paired_test(same, same)["p_value"] == 1.0


def test_json_number():
    assert json_number(float("nan")) is None and json_number(float("inf")) == "inf" and json_number(2) == 2.0


# -- Frechet distance


def test_frechet_matches_pytorch_fid_and_hand_computed_1d():
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 6)), rng.normal(0.5, 1.5, size=(200, 6)) @ rng.normal(size=(6, 6))
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    assert frechet_of_features(a, b, ddof=1) == pytest.approx(calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-9)
    # by the definition, with scipy's sqrtm
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # 1-D: (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2)
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 4 + 9 - 2 * 6)
    assert frechet_of_features(a, a, ddof=0) == pytest.approx(0.0, abs=1e-8)


def test_eigh_formula_for_bootstrap_replicates_equals_sqrtm():
    from pipeline.evaluation.frechet import frechet_distance_eigh

    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(80, 10)), rng.normal(0.3, 2.0, size=(60, 10)) @ rng.normal(size=(10, 10))
    wa, wb = rng.integers(0, 3, 80), rng.integers(0, 3, 60)
    for ddof in (0, 1):
        exact = frechet_distance(*feature_stats(a, ddof, wa), *feature_stats(b, ddof, wb))
        assert frechet_distance_eigh(a, b, ddof, wa, wb) == pytest.approx(exact, rel=1e-8)
    few = a[:5]  # rank-deficient covariances (fewer samples than dimensions), as one video's FVD clips
    assert frechet_distance_eigh(few, b[:7], 0) == pytest.approx(frechet_of_features(few, b[:7], 0), rel=1e-5)


def test_feature_stats_conventions_and_weights():
    x = np.random.default_rng(5).normal(size=(10, 3))
    _, pop = feature_stats(x, ddof=0)  # StyleGAN-V: sum x x^T / n - mu mu^T
    np.testing.assert_allclose(pop, x.T @ x / 10 - np.outer(x.mean(0), x.mean(0)), atol=1e-12)
    np.testing.assert_allclose(feature_stats(x, ddof=1)[1], np.cov(x, rowvar=False), atol=1e-12)
    w = np.array([2, 0, 1, 1, 1, 1, 1, 1, 1, 1])  # row 0 twice, row 1 dropped
    rep = np.concatenate([x[:1], x[2:], x[:1]])
    for ddof in (0, 1):
        for got, want in zip(feature_stats(x, ddof, w), feature_stats(rep, ddof)):
            np.testing.assert_allclose(got, want, atol=1e-12)
    with pytest.raises(ValueError, match="too few"):
        feature_stats(x[:1], ddof=1)


# -- registry, robustness selection, mouth crops


def test_registry_names_and_protocols():
    assert is_valid_metric("fvd_m") and not is_valid_metric("fvd_mouth")
    with pytest.raises(ValueError, match="did you mean 'lpips'"):
        check_metrics(["lpip"])
    with pytest.raises(ValueError, match="not meaningful in the 'cross'"):
        check_metrics(["ssim"], "cross")
    with pytest.raises(ValueError, match="twice"):
        check_metrics(["l1", "l1"])
    # the toy variants never carry the paper's names, and the paper's lists never use toy features
    for lists in (PAPER_METRICS, TOY_METRICS):
        for names in lists.values():
            check_metrics(names)
    assert not any(METRICS[m].network == "toy" for names in PAPER_METRICS.values() for m in names)
    assert all(m.endswith("_toy") for m, spec in METRICS.items() if spec.network == "toy")


def test_params_metric_lists_are_validated(real_params):
    from pipeline.config import ParamsError, validate_params

    real_params["evaluate"]["metrics"]["same"] = ["l1", "fid_tyo"]
    with pytest.raises(ParamsError, match=r"evaluate\.metrics.*'same'.*did you mean 'fid_toy'"):
        validate_params(real_params)


def test_select_diverse_frames():
    # poses on a line plus a cluster: farthest-point picks both ends, then the middle
    f = np.array([[0.0], [0.1], [0.2], [5.0], [10.0], [9.9], [np.nan]])
    assert select_diverse_frames(f, 3).tolist() == [0, 3, 4]
    assert select_diverse_frames(None, 3, "uniform", n_frames=9).tolist() == [0, 4, 8]
    r = select_diverse_frames(None, 4, "random", n_frames=50, seed=1)
    assert r.tolist() == select_diverse_frames(None, 4, "random", n_frames=50, seed=1).tolist() and len(set(r)) == 4
    with pytest.raises(ValueError, match="only 6 frame"):
        select_diverse_frames(f, 7)  # one row has no face
    with pytest.raises(ValueError, match="cannot choose 5 frames"):
        select_diverse_frames(f[:3], 5)
    assert driving_of("clip_a__s3") == "clip_a"


def test_mouth_boxes_centre_side_and_missing_frames():
    lm = np.zeros((3, 68, 2))
    mouth = np.array([[10.0, 20.0], [30.0, 20.0], [20.0, 25.0]])  # extent 20 (x), 5 (y)
    lm[0, 48:51] = mouth
    lm[0, 51:68] = mouth.mean(0)
    lm[2] = lm[0] + [4.0, 0.0]
    lm[1] = np.nan  # no face: takes the nearest frame's centre
    boxes = mouth_boxes(lm, scale=1.5)
    c = lm[0, 48:68].mean(0)
    np.testing.assert_allclose(boxes[0], [c[0] - 15, c[1] - 15, c[0] + 15, c[1] + 15])
    np.testing.assert_allclose(boxes[1], boxes[0])
    np.testing.assert_allclose(boxes[2], boxes[0] + [4, 0, 4, 0])
    assert mouth_boxes(np.full((2, 68, 2), np.nan), 1.5) is None
    frames = np.arange(3 * 40 * 40 * 3, dtype=np.uint64).reshape(3, 40, 40, 3).astype(np.uint8)
    crops = crop_boxes(frames, np.array([[-5, -5, 15, 15]] * 3), 8)  # past the border: edge-padded
    assert crops.shape == (3, 8, 8, 3) and crops.dtype == np.uint8
