"""How well a face analysis backend reads the synthetic world: scored against the renderer's ground truth.

Used by the `analyzer` stage on the held-out identities (identity-disjoint from training):
- identity: verification of same- vs different-identity frame pairs (same pairs from different clips),
  LFW protocol (10-fold threshold cross-validation) accuracy, and ROC AUC;
- pose and gaze: mean absolute error in degrees per channel (angles wrapped);
- expression: Pearson correlation per channel.
Each number comes with the "predict the training mean" baseline, so a reader sees what was learned.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.analysis import FaceAnalyzer, MotionFeatures
from pipeline.metrics.identity import roc_auc, verification_accuracy, verification_pairs
from pipeline.metrics.motion import mean_angular_error_deg, pearson_per_channel


def _named(values: np.ndarray, names) -> dict[str, float | None]:
    out = {n: (round(float(v), 4) if np.isfinite(v) else None) for n, v in zip(names, values)}
    finite = values[np.isfinite(values)]
    out["mean"] = round(float(finite.mean()), 4) if finite.size else None
    return out


def identity_quality(analyzer: FaceAnalyzer, frames, identities, groups, n_pairs: int, seed: int) -> tuple[dict, dict]:
    """(verification metrics, the pair distances by kind for plots) on frames with identity and clip labels."""
    with torch.no_grad():
        emb = analyzer.identity(frames)
    i, j, same = verification_pairs(np.asarray(identities), np.asarray(groups), n_pairs, seed)
    dist = analyzer.distance(emb[torch.as_tensor(i)], emb[torch.as_tensor(j)]).cpu().numpy()
    result = verification_accuracy(dist, same, folds=10, seed=seed)
    metrics = {"pairs": int(len(same)), "accuracy": round(float(result["accuracy"]), 4),
               "accuracy_std": round(float(result["accuracy_std"]), 4), "threshold": round(float(result["threshold"]), 4),
               "roc_auc": round(float(roc_auc(dist, same)), 4), "distance": analyzer.distance_name}
    return metrics, {"same": dist[same], "different": dist[~same]}


def motion_quality(predicted: MotionFeatures, truth: dict[str, np.ndarray], train_mean: dict[str, np.ndarray]) -> dict[str, Any]:
    """Pose / gaze MAE (degrees) and expression correlation of `predicted` against the renderer's `truth`,
    with the MAE of always predicting the training mean (`train_mean[group]`) as the baseline."""
    def baseline(group: str) -> np.ndarray:
        return mean_angular_error_deg(np.broadcast_to(train_mean[group], truth[group].shape), truth[group])

    return {
        "pose_mae_deg": _named(mean_angular_error_deg(predicted.pose, truth["pose"]), predicted.pose_names),
        "gaze_mae_deg": _named(mean_angular_error_deg(predicted.gaze, truth["gaze"]), predicted.gaze_names),
        "expression_correlation": _named(pearson_per_channel(predicted.expression, truth["expression"]), predicted.expression_names),
        "baseline_train_mean": {
            "pose_mae_deg": _named(baseline("pose"), predicted.pose_names)["mean"],
            "gaze_mae_deg": _named(baseline("gaze"), predicted.gaze_names)["mean"],
        },
    }
