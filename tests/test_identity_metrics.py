import itertools
from collections import Counter

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import mannwhitneyu

from pipeline.metrics.identity import equal_error_rate, roc_auc, verification_accuracy, verification_pairs


def _noisy_pairs(seed, n=300):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    d = np.round(rng.normal(size=n) - 2.0 * same, 1)  # rounded: many ties
    return d, same


# ---------------------------------------------------------------- AUC


def test_auc_hand_computed_and_extremes():
    # (different, same) comparisons: 2>1, 2<3, 4>1, 4>3 -> 3/4
    assert roc_auc([1, 3, 2, 4], [True, True, False, False]) == pytest.approx(0.75)
    # a tie counts 1/2: 2>1, 2=2, 3>1, 3>2 -> 3.5/4
    assert roc_auc([1, 2, 2, 3], [1, 1, 0, 0]) == pytest.approx(0.875)
    same = np.array([True] * 5 + [False] * 7)
    d = np.arange(12.0)
    assert roc_auc(d, same) == 1.0
    assert roc_auc(-d, same) == 0.0
    assert roc_auc(np.ones(12), same) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_is_mann_whitney_u_over_n1_n2(seed):
    d, same = _noisy_pairs(seed)
    u = mannwhitneyu(d[~same], d[same]).statistic  # U of the different pairs: # (diff > same) + ties / 2
    assert roc_auc(d, same) == pytest.approx(u / (np.sum(~same) * np.sum(same)))


def test_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="both same and different"):
        roc_auc([1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        roc_auc([1.0, 2.0, 3.0], [True, False])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([1.0, np.nan], [True, False])
    with pytest.raises(ValueError, match="boolean"):
        roc_auc([1.0, 2.0], [2, 0])


# ---------------------------------------------------------------- EER


def _eer_reference(d, same):
    """Brute-force ROC (FAR, 1 - FRR) at every threshold, then the crossing with FAR = FRR by root finding."""
    ts = np.concatenate([[-np.inf], np.unique(d)])
    far = np.array([np.mean(d[~same] <= t) for t in ts])
    tar = np.array([np.mean(d[same] <= t) for t in ts])
    return brentq(lambda x: 1 - x - np.interp(x, far, tar), 0, 1)


def test_eer_hand_computed_and_extremes():
    # t = 2: FAR = 1/2 (2 of {2, 4} accepted), FRR = 1/2 (3 of {1, 3} rejected)
    assert equal_error_rate([1, 3, 2, 4], [True, True, False, False]) == pytest.approx(0.5)
    same = np.array([True] * 5 + [False] * 7)
    assert equal_error_rate(np.arange(12.0), same) == 0.0
    assert equal_error_rate(-np.arange(12.0), same) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_matches_brute_force_roc_crossing(seed):
    d, same = _noisy_pairs(seed)
    assert equal_error_rate(d, same) == pytest.approx(_eer_reference(d, same), abs=1e-9)


# ---------------------------------------------------------------- LFW accuracy


def _accuracy_reference(d, same, folds, seed):
    """The protocol written out: brute-force threshold search (accuracy evaluated at every candidate)."""
    parts = np.array_split(np.random.default_rng(seed).permutation(len(d)), folds)
    accs, ts = [], []
    for k in range(folds):
        train = np.concatenate([p for m, p in enumerate(parts) if m != k])
        u = np.unique(d[train])
        candidates = [u[0] - 1] + [(a + b) / 2 for a, b in zip(u[:-1], u[1:])] + [u[-1] + 1]
        train_acc = [np.mean((d[train] <= t) == same[train]) for t in candidates]
        t = candidates[train_acc.index(max(train_acc))]  # first maximum = smallest threshold
        accs.append(np.mean((d[parts[k]] <= t) == same[parts[k]]))
        ts.append(t)
    return np.mean(accs), np.std(accs), np.mean(ts)


def test_accuracy_leave_one_out_by_hand():
    # Leave-one-out (folds = n) does not depend on the shuffle. Held out -> threshold from the other three:
    # 1 -> 2.5 (right), 2 -> 2 (right: d <= t is same), 3 -> 3 (wrong: 3 <= 3 says same), 4 -> 2.5 (right).
    out = verification_accuracy([1, 2, 3, 4], [True, True, False, False], folds=4)
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["accuracy_std"] == pytest.approx(np.std([1, 1, 0, 1]))
    assert out["threshold"] == pytest.approx((2.5 + 2 + 3 + 2.5) / 4)
    # held out 2 -> threshold 2 from {1 same, 3, 3.5 different}: right only because d <= t counts as same
    out = verification_accuracy([1, 2, 3, 3.5], [True, True, False, False], folds=4)
    assert out["accuracy"] == 1.0 and out["accuracy_std"] == 0.0
    assert out["threshold"] == pytest.approx((2.5 + 2 + 2.75 + 2.5) / 4)


def test_accuracy_separable_is_one():
    d = np.concatenate([np.linspace(0, 1, 20), np.linspace(2, 3, 20)])
    same = np.arange(40) < 20
    out = verification_accuracy(d, same)
    assert out == {"accuracy": 1.0, "accuracy_std": 0.0, "threshold": pytest.approx(1.5, abs=0.03)}


@pytest.mark.parametrize("seed,folds", [(0, 10), (1, 10), (2, 3), (3, 7)])
def test_accuracy_matches_brute_force_protocol(seed, folds):
    d, same = _noisy_pairs(seed, n=101)  # 101: unequal folds
    out = verification_accuracy(d, same, folds=folds, seed=seed)
    acc, std, t = _accuracy_reference(d, same, folds, seed)
    assert out["accuracy"] == pytest.approx(acc)
    assert out["accuracy_std"] == pytest.approx(std)
    assert out["threshold"] == pytest.approx(t)
    assert 0.7 < out["accuracy"] < 0.95  # a shift of 2 sd separates the classes partly (0.84 at best)


def test_accuracy_rejects_bad_folds():
    with pytest.raises(ValueError, match="folds"):
        verification_accuracy([1.0, 2.0, 3.0], [True, False, True], folds=4)
    with pytest.raises(ValueError, match="folds"):
        verification_accuracy([1.0, 2.0, 3.0], [True, False, True], folds=1)


# ---------------------------------------------------------------- pair sampling


def _clips(seed, n_ids=6, clips=3, frames=10):
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_ids), clips * frames)
    groups = np.repeat(np.arange(n_ids * clips), frames)
    perm = rng.permutation(len(ids))  # rows in no particular order
    return ids[perm], groups[perm]


def _check_valid(ids, groups, i, j, same):
    assert np.all(i < j)
    assert np.all(ids[i][same] == ids[j][same])
    assert np.all(groups[i][same] != groups[j][same])  # never two frames of one clip
    assert np.all(ids[i][~same] != ids[j][~same])


# 1800 valid same pairs, 13500 different: 2000 pairs lists the same ones (1000 > 1800 / 4), draws the others
@pytest.mark.parametrize("n_pairs", [7, 200, 2000])
def test_pairs_valid_balanced_distinct(n_pairs):
    ids, groups = _clips(0)
    i, j, same = verification_pairs(ids, groups, n_pairs, seed=3)
    assert i.dtype == j.dtype == np.int64 and same.dtype == bool
    assert len(i) == len(j) == len(same) == n_pairs
    assert same.sum() == n_pairs // 2 and (~same).sum() == n_pairs - n_pairs // 2
    _check_valid(ids, groups, i, j, same)
    assert len(set(zip(i.tolist(), j.tolist()))) == n_pairs


def test_pairs_deterministic_per_seed():
    ids, groups = _clips(1)
    a, b = verification_pairs(ids, groups, 100, seed=5), verification_pairs(ids, groups, 100, seed=5)
    c = verification_pairs(ids, groups, 100, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


# 4 valid same pairs, 26 different: 2 -> both drawn; 10 -> same: all + 1 more, different drawn; 14 -> different listed
@pytest.mark.parametrize("n_pairs", [2, 10, 14])
def test_pairs_uniform_over_valid_pairs(n_pairs):
    # uneven on purpose: identity 0 holds 3 same pairs (all through row 0), identity 1 one; identity 2 has one clip
    ids = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    groups = np.array([0, 1, 1, 1, 2, 3, 4, 4, 4])
    valid_same = {(a, b) for a, b in itertools.combinations(range(9), 2) if ids[a] == ids[b] and groups[a] != groups[b]}
    valid_diff = {(a, b) for a, b in itertools.combinations(range(9), 2) if ids[a] != ids[b]}
    counts_same, counts_diff, runs = Counter(), Counter(), 3000
    for seed in range(runs):
        i, j, same = verification_pairs(ids, groups, n_pairs, seed)
        counts_same.update(zip(i[same].tolist(), j[same].tolist()))
        counts_diff.update(zip(i[~same].tolist(), j[~same].tolist()))
    assert set(counts_same) == valid_same and set(counts_diff) == valid_diff
    for counts, valid in ((counts_same, valid_same), (counts_diff, valid_diff)):
        expected = runs * (n_pairs // 2) / len(valid)
        assert max(abs(c - expected) for c in counts.values()) < 5 * np.sqrt(expected)


def test_pairs_repeat_evenly_when_too_few():
    ids, groups = np.array(["a", "a", "b", "c"]), np.array(["c1", "c2", "c3", "c4"])  # 1 same pair, 5 different
    for seed in range(20):
        i, j, same = verification_pairs(ids, groups, 16, seed)
        assert Counter(zip(i[same].tolist(), j[same].tolist())) == {(0, 1): 8}
        # 8 different pairs: all 5 once, 3 of them (distinct) twice
        assert sorted(Counter(zip(i[~same].tolist(), j[~same].tolist())).values()) == [1, 1, 2, 2, 2]


def test_pairs_group_labels_are_per_identity():
    # clip "0" of identity 0 and clip "0" of identity 1 are different clips; within identity 0, different labels
    ids, groups = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    i, j, same = verification_pairs(ids, groups, 4, seed=0)
    _check_valid(ids, groups, i, j, same)
    assert set(zip(i[same].tolist(), j[same].tolist())) == {(0, 1), (2, 3)}


def test_pairs_errors():
    with pytest.raises(ValueError, match="no valid same-identity pairs"):
        verification_pairs([0, 0, 1, 1], [5, 5, 6, 6], 4, seed=0)  # each identity a single clip
    with pytest.raises(ValueError, match="no different-identity pairs"):
        verification_pairs([0, 0, 0], [1, 2, 3], 4, seed=0)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        verification_pairs([0, 0, 1], [1, 2], 4, seed=0)
    with pytest.raises(ValueError, match="n_pairs"):
        verification_pairs([0, 0, 1], [1, 2, 3], 0, seed=0)
