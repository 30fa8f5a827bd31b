"""Face-verification metrics on pair distances (smaller distance = more alike).

`same` marks same-identity pairs. The protocol is LFW's (Huang et al. 2007): balanced pairs, 10-fold
cross-validated threshold accuracy; AUC and EER are threshold-free summaries of the same distances.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def verification_pairs(identities, groups, n_pairs: int, seed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample n_pairs // 2 same-identity and n_pairs - n_pairs // 2 different-identity pairs of rows.

    Valid same pair {a, b}: identity[a] == identity[b] and group[a] != group[b] (frames of one clip are
    too alike to test anything). Valid different pair: identity[a] != identity[b]. Each kind is drawn
    uniformly without replacement from its valid unordered pairs with np.random.default_rng(seed). If
    a kind has fewer valid pairs C than requested n, every pair is used n // C times and n % C of them
    once more (chosen uniformly), i.e. repeats are as even as possible.

    Returns int64 arrays i, j (i < j, row indices) and bool `same`, same pairs first, each part in random order.
    """
    ids, grp = np.asarray(identities), np.asarray(groups)
    if ids.ndim != 1 or grp.shape != ids.shape:
        raise ValueError(f"identities and groups must be 1-D of one length, got shapes {ids.shape} and {grp.shape}")
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, (int, np.integer)) or n_pairs < 1:
        raise ValueError(f"n_pairs must be a positive integer, got {n_pairs!r}")
    n = len(ids)
    # Sort rows by (identity, group): then the rows of one identity, and of one group within it, are contiguous.
    id_code = np.unique(ids, return_inverse=True)[1].ravel()
    grp_code = np.unique(grp, return_inverse=True)[1].ravel()
    order = np.lexsort((grp_code, id_code))
    id_start, id_end = _block_bounds(id_code[order])
    grp_start, grp_end = _block_bounds(id_code[order] * (grp_code.max(initial=0) + 1) + grp_code[order])

    # Partners of sorted row a that come later in the order: same identity, later group -> [grp_end, id_end);
    # different identity, later identity -> [id_end, n). Counting and listing later partners only gives each
    # unordered pair once.
    same_lo, same_hi = grp_end, id_end
    diff_lo, diff_hi = id_end, np.full(n, n)
    n_same_valid, n_diff_valid = int(np.sum(same_hi - same_lo)), int(np.sum(diff_hi - diff_lo))
    if n_same_valid == 0:
        raise ValueError("no valid same-identity pairs: every identity has rows in only one group")
    if n_diff_valid == 0:
        raise ValueError("no different-identity pairs: all rows have one identity")

    rng = np.random.default_rng(seed)
    n_same = n_pairs // 2
    # For the sampler, all partners of sorted row a (either side): its identity minus its own group ...
    def same_partner(a, r):
        return id_start[a] + r + np.where(r >= grp_start[a] - id_start[a], grp_end[a] - grp_start[a], 0)

    # ... and every other identity.
    def diff_partner(a, r):
        return r + np.where(r >= id_start[a], id_end[a] - id_start[a], 0)

    same_ab = _sample(rng, n_same, n_same_valid, same_lo, same_hi, same_partner,
                      (id_end - id_start) - (grp_end - grp_start))
    diff_ab = _sample(rng, n_pairs - n_same, n_diff_valid, diff_lo, diff_hi, diff_partner, n - (id_end - id_start))
    ab = order[np.concatenate([same_ab, diff_ab])]
    i, j = ab.min(axis=1), ab.max(axis=1)
    same = np.repeat([True, False], [len(same_ab), len(diff_ab)])
    return i.astype(np.int64), j.astype(np.int64), same


def verification_accuracy(distances, same, folds: int = 10, seed=0) -> dict:
    """LFW-protocol accuracy: shuffle the pairs (default_rng(seed)), split them into `folds` near-equal folds;
    for each fold pick the threshold t maximising accuracy on the other folds, predict same iff d <= t, and
    score the held-out fold: acc_k = mean([d <= t_k] == same) over fold k.

    Candidates for t: midpoints between consecutive sorted unique training distances, plus min - 1 and
    max + 1 (all "different" / all "same"); ties in training accuracy go to the smallest t.
    Returns dict(accuracy=mean_k acc_k, accuracy_std=std_k acc_k, threshold=mean_k t_k). The std has ddof 0, as in
    the usual facenet/insightface evaluation code; LFW's own standard error is std(ddof=1) / sqrt(folds).
    """
    d, s = _pairs(distances, same)
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 2 <= folds <= len(d):
        raise ValueError(f"folds must be an integer in [2, number of pairs = {len(d)}], got {folds!r}")
    parts = np.array_split(np.random.default_rng(seed).permutation(len(d)), folds)
    accuracies, thresholds = [], []
    for k, test in enumerate(parts):
        train = np.concatenate(parts[:k] + parts[k + 1:])
        t = _best_threshold(d[train], s[train])
        accuracies.append(np.mean((d[test] <= t) == s[test]))
        thresholds.append(t)
    return {"accuracy": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
            "threshold": float(np.mean(thresholds))}


def roc_auc(distances, same) -> float:
    """AUC = P(d_diff > d_same) + 1/2 P(d_diff = d_same) over all (different, same) pairs of pairs,
    computed by ranks (Mann-Whitney): AUC = (R_diff - n_diff (n_diff + 1) / 2) / (n_diff n_same),
    R_diff the sum of the different pairs' mid-ranks among all distances."""
    d, s = _pairs(distances, same)
    n_same, n_diff = int(s.sum()), int((~s).sum())
    if n_same == 0 or n_diff == 0:
        raise ValueError(f"AUC needs both same and different pairs, got {n_same} same and {n_diff} different")
    rank_sum = rankdata(d)[~s].sum()
    return float((rank_sum - n_diff * (n_diff + 1) / 2) / (n_diff * n_same))


def equal_error_rate(distances, same) -> float:
    """The rate where FAR(t) = FRR(t), FAR(t) = P(d <= t | different), FRR(t) = P(d > t | same):
    the crossing of the ROC polyline through the points t in {-inf} + sorted unique distances with the
    line FAR = FRR, interpolating linearly between the two points that bracket it."""
    d, s = _pairs(distances, same)
    n_same, n_diff = int(s.sum()), int((~s).sum())
    if n_same == 0 or n_diff == 0:
        raise ValueError(f"EER needs both same and different pairs, got {n_same} same and {n_diff} different")
    t = np.unique(d)
    far = np.concatenate([[0.0], np.searchsorted(np.sort(d[~s]), t, side="right") / n_diff])
    frr = np.concatenate([[1.0], 1 - np.searchsorted(np.sort(d[s]), t, side="right") / n_same])
    gap = far - frr  # nondecreasing, -1 at -inf, +1 at the largest distance
    k = int(np.argmax(gap >= 0))
    alpha = -gap[k - 1] / (gap[k] - gap[k - 1])
    return float(far[k - 1] + alpha * (far[k] - far[k - 1]))


def _pairs(distances, same) -> tuple[np.ndarray, np.ndarray]:
    d, s = np.asarray(distances), np.asarray(same)
    if d.ndim != 1 or s.shape != d.shape:
        raise ValueError(f"distances and same must be 1-D of one length, got shapes {d.shape} and {s.shape}")
    if len(d) == 0:
        raise ValueError("no pairs")
    if s.dtype != bool:
        if not np.isin(s, [0, 1]).all():
            raise ValueError("same must be boolean (or 0/1)")
        s = s.astype(bool)
    d = d.astype(np.float64)
    if not np.isfinite(d).all():
        raise ValueError(f"distances must be finite, got {int((~np.isfinite(d)).sum())} non-finite values")
    return d, s


def _best_threshold(d: np.ndarray, s: np.ndarray) -> float:
    u = np.unique(d)
    candidates = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    same_accepted = np.searchsorted(np.sort(d[s]), candidates, side="right")
    diff_rejected = (~s).sum() - np.searchsorted(np.sort(d[~s]), candidates, side="right")
    return float(candidates[np.argmax(same_accepted + diff_rejected)])  # argmax: first, i.e. smallest, of ties


def _block_bounds(sorted_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position of a sorted code array, the [start, end) of the run of its code."""
    _, first, counts = np.unique(sorted_codes, return_index=True, return_counts=True)
    run = np.repeat(np.arange(len(first)), counts)
    return first[run], (first + counts)[run]


def _sample(rng, n, n_valid, lo, hi, partner, n_partners) -> np.ndarray:
    """n distinct unordered pairs [n, 2] (sorted-row positions), uniform among the n_valid valid ones.

    Few valid pairs (< 4 n): list them all, each sorted row a with later partners [lo[a], hi[a]).
    Many: draw ordered pairs (a with probability n_partners[a] / sum, then its r-th partner via `partner`),
    which is uniform over ordered and hence unordered pairs, and reject repeats (rare at this density)."""
    if n == 0:
        return np.zeros((0, 2), np.int64)
    if n_valid < 4 * n:
        length = hi - lo
        a = np.repeat(np.arange(len(lo)), length)
        b = lo[a] + np.arange(len(a)) - np.repeat(np.cumsum(length) - length, length)
        pick = np.concatenate([np.tile(np.arange(n_valid), n // n_valid),
                               rng.choice(n_valid, n % n_valid, replace=False)]) if n >= n_valid \
            else rng.choice(n_valid, n, replace=False)
        pick = rng.permutation(pick)
        return np.stack([a[pick], b[pick]], 1)
    p = n_partners / n_partners.sum()
    chosen, seen = [], set()
    while len(chosen) < n:
        a = rng.choice(len(p), 2 * (n - len(chosen)), p=p)
        b = partner(a, rng.integers(0, n_partners[a]))
        for x, y in zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()):
            if (x, y) not in seen and len(chosen) < n:
                seen.add((x, y))
                chosen.append((x, y))
    return np.array(chosen, np.int64)
