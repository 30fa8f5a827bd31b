import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr

from pipeline.metrics.motion import (
    angular_error_deg,
    mean_absolute_error,
    mean_angular_error_deg,
    mean_ignoring_nan,
    pearson_per_channel,
)


def test_mae_hand_computed_skips_nan_per_channel():
    pred = np.array([[1.0, 2.0], [3.0, 4.0], [np.nan, 0.0]])
    true = np.array([[2.0, 2.0], [1.0, 8.0], [0.0, 1.0]])
    # channel 0: rows 0, 1 -> (1 + 2) / 2; channel 1 keeps row 2 -> (0 + 4 + 1) / 3
    np.testing.assert_allclose(mean_absolute_error(pred, true), [1.5, 5 / 3])
    np.testing.assert_allclose(mean_absolute_error(true, pred), [1.5, 5 / 3])  # NaN on either side
    one = mean_absolute_error(pred[:, 1], true[:, 1])
    assert one.shape == () and float(one) == pytest.approx(5 / 3)


def test_mae_all_nan_channel_is_nan_without_warning():
    pred = np.array([[np.nan, 1.0], [np.nan, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = mean_absolute_error(pred, np.zeros((2, 2)))
    assert np.isnan(out[0]) and out[1] == pytest.approx(1.5)


def test_shape_mismatch_names_both_shapes():
    for f in (mean_absolute_error, angular_error_deg, pearson_per_channel):
        with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
            f(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\[N\] or \[N, C\]"):
        mean_absolute_error(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="real numbers"):
        mean_absolute_error(np.array(["a"]), np.array(["b"]))


def test_angular_error_wraps_around():
    pred = np.array([179.0, 0.0, 10.0, -170.0, 725.0, 30.0, np.nan])
    true = np.array([-179.0, 360.0, 190.0, 170.0, 0.0, 30.0, 0.0])
    out = angular_error_deg(pred, true)
    np.testing.assert_allclose(out[:6], [2.0, 0.0, 180.0, 20.0, 5.0, 0.0], atol=1e-12)
    assert np.isnan(out[6])
    # 180 either way is 180, not -180 or 0
    assert angular_error_deg(np.array([0.0, 180.0]), np.array([180.0, 0.0])).tolist() == [180.0, 180.0]


def test_angular_error_is_the_shortest_arc():
    rng = np.random.default_rng(0)
    pred, true = rng.uniform(-720, 720, (500, 3)), rng.uniform(-720, 720, (500, 3))
    # the smallest |pred - true - 360 k| over k, by brute force
    k = np.arange(-5, 6)
    reference = np.min(np.abs((pred - true)[..., None] - 360.0 * k), axis=-1)
    np.testing.assert_allclose(angular_error_deg(pred, true), reference, atol=1e-9)
    out = mean_angular_error_deg(pred, true)
    assert out.shape == (3,)
    np.testing.assert_allclose(out, reference.mean(0))


def test_mean_angular_error_skips_nan():
    pred = np.array([[179.0, np.nan], [10.0, 5.0]])
    true = np.array([[-179.0, 0.0], [20.0, 0.0]])
    np.testing.assert_allclose(mean_angular_error_deg(pred, true), [6.0, 5.0])


@pytest.mark.parametrize("seed", [0, 1])
def test_pearson_matches_scipy_on_finite_rows(seed):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(60, 4))
    pred = true * [1.0, -1.0, 0.0, 2.0] + rng.normal(size=(60, 4))
    pred[rng.random((60, 4)) < 0.1] = np.nan
    true[rng.random((60, 4)) < 0.1] = np.inf  # non-finite on either side: row skipped for that channel
    out = pearson_per_channel(pred, true)
    for c in range(4):
        ok = np.isfinite(pred[:, c]) & np.isfinite(true[:, c])
        assert out[c] == pytest.approx(pearsonr(pred[ok, c], true[ok, c]).statistic)
    assert out[0] > 0.5 and out[1] < -0.4


def test_pearson_exact_lines_and_three_rows():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(pearson_per_channel(np.stack([x, x], 1), np.stack([3 * x + 1, -x], 1)), [1.0, -1.0])
    # three valid rows are enough
    a, b = np.array([1.0, 2.0, 4.0, np.nan]), np.array([1.0, 3.0, 2.0, 5.0])
    assert float(pearson_per_channel(a, b)) == pytest.approx(pearsonr(a[:3], b[:3]).statistic)


def test_pearson_nan_for_constant_or_too_few_rows():
    pred = np.array([[1.0, 0.1, 1.0, 1.0], [2.0, 0.1, 2.0, 2.0], [3.0, 0.1, np.nan, 3.0]])
    true = np.array([[5.0, 1.0, 1.0, 7.0], [6.0, 2.0, 2.0, 7.0], [8.0, 3.0, 3.0, 7.0]])
    assert np.mean(pred[:, 1]) != 0.1  # the trap: centring leaves residuals of 1e-17, not zeros
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pearson_per_channel(pred, true)
    # channel 1: pred constant; 2: two valid rows; 3: true constant
    assert np.isfinite(out[0]) and np.isnan(out[1:]).all()


def test_mean_ignoring_nan():
    assert mean_ignoring_nan([1.0, np.nan, 3.0]) == 2.0
    assert mean_ignoring_nan(np.array([[1.0, 2.0], [np.nan, 6.0]])) == 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(mean_ignoring_nan([np.nan, np.nan]))
        assert np.isnan(mean_ignoring_nan([]))
