"""pipeline/analysis/quality.py: scoring a backend against the renderer's ground truth."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.analysis import FaceAnalyzer, MotionFeatures
from pipeline.analysis.quality import identity_quality, motion_quality
from pipeline.synth.face import EXPRESSION_NAMES, GAZE_NAMES, POSE_NAMES


class _Oracle(FaceAnalyzer):
    """Embeds each frame as its identity's one-hot vector, read from the frame's first pixel."""

    name = "oracle"

    def identity(self, images):
        ids = torch.as_tensor(np.asarray(images)[:, 0, 0, 0].astype(np.int64))
        return torch.nn.functional.one_hot(ids, 4).float()


def _frames(identities):
    frames = np.zeros((len(identities), 8, 8, 3), np.uint8)
    frames[:, 0, 0, 0] = identities
    return frames


def test_identity_quality_of_a_perfect_and_a_blind_embedding():
    who = np.repeat([0, 1, 2, 3], 10)
    clips = np.array([f"{w}_{k % 2}" for w, k in zip(who, range(40))])
    metrics, dist = identity_quality(_Oracle(), _frames(who), who, clips, n_pairs=200, seed=0)
    assert metrics["accuracy"] == 1.0 and metrics["roc_auc"] == 1.0 and metrics["pairs"] == 200
    assert np.allclose(dist["same"], 0) and np.allclose(dist["different"], 1)  # cosine distance of one-hots
    blind, _ = identity_quality(_Oracle(), _frames(np.zeros(40, int)), who, clips, n_pairs=200, seed=0)
    assert blind["roc_auc"] == 0.5 and blind["accuracy"] <= 0.6  # every distance 0: chance


def _truth(n, rng):
    return {"pose": rng.uniform(-30, 30, (n, 3)), "gaze": rng.uniform(-15, 15, (n, 2)),
            "expression": rng.uniform(0, 1, (n, 7))}


def test_motion_quality_perfect_prediction_and_baseline():
    rng = np.random.default_rng(0)
    truth = _truth(50, rng)
    perfect = MotionFeatures(truth["pose"], truth["gaze"], truth["expression"], POSE_NAMES, GAZE_NAMES, EXPRESSION_NAMES)
    zero = {"pose": np.zeros(3), "gaze": np.zeros(2)}
    q = motion_quality(perfect, truth, zero)
    assert q["pose_mae_deg"]["mean"] == pytest.approx(0, abs=1e-3) and q["gaze_mae_deg"]["mean"] == pytest.approx(0, abs=1e-3)
    assert q["expression_correlation"]["mean"] == pytest.approx(1, abs=1e-4)
    assert q["baseline_train_mean"]["pose_mae_deg"] == pytest.approx(np.abs(truth["pose"]).mean(), abs=1e-3)
    assert set(q["pose_mae_deg"]) == {*POSE_NAMES, "mean"}


def test_motion_quality_constant_channel_is_reported_as_none():
    rng = np.random.default_rng(1)
    truth = _truth(30, rng)
    truth["expression"][:, 2] = 0.0  # a channel the world never moved
    noisy = MotionFeatures(truth["pose"] + 2.0, truth["gaze"] - 1.0, truth["expression"] + rng.normal(0, 0.01, (30, 7)),
                           POSE_NAMES, GAZE_NAMES, EXPRESSION_NAMES)
    q = motion_quality(noisy, truth, {"pose": np.zeros(3), "gaze": np.zeros(2)})
    assert q["pose_mae_deg"]["mean"] == pytest.approx(2.0, abs=1e-3)
    assert q["gaze_mae_deg"]["mean"] == pytest.approx(1.0, abs=1e-3)
    assert q["expression_correlation"][EXPRESSION_NAMES[2]] is None
    assert 0.9 < q["expression_correlation"]["mean"] <= 1.0  # the mean skips the undefined channel
