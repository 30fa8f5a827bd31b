"""Issue 18's gates on the committed metrics of the embedded default (`dvc repro`, one seed): the full model
(CMA) on held-out cross-identity videos against the reference rows the same evaluation scored (copy the source,
the ground-truth cross render, the oracle). A gate the shipped recipe does not reach yet is marked xfail(strict):
it fails the day it is reached, so that the mark is lifted (docs/encoder_recipe.md, "Gates"). toy-full's gates (2 seeds)
have no committed metrics yet: they are not tested here."""
from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

CROSS = REPO / "metrics" / "eval_cross_id.json"
SAME = REPO / "metrics" / "eval_same_id.json"


def _mean(path, row: str, metric: str) -> float:
    data = json.loads(path.read_text())
    assert row in data, f"{path.name} has no row {row!r} (rows: {sorted(k for k in data if k != 'videos')})"
    return float(data[row][metric]["mean"])


REACHED = {"l1_gt", "rho_pose", "rho_au_gz"}  # every embedded-default gate, with the shipped encoder


def _gate(name: str):
    return pytest.mark.xfail(name not in REACHED, strict=True, reason="not reached by the shipped recipe yet "
                             "(docs/encoder_recipe.md, Gates)")


@_gate("l1_gt")
def test_cross_l1_to_the_ground_truth_is_at_most_0_9_of_copying_the_source():
    assert _mean(CROSS, "cma", "l1_gt") <= 0.90 * _mean(CROSS, "copy_source", "l1_gt")


@_gate("rho_pose")
def test_cross_head_pose_follows_the_driver_at_0_8_of_the_ground_truth():
    assert _mean(CROSS, "cma", "rho_pose") >= 0.80 * _mean(CROSS, "ground_truth", "rho_pose")


@_gate("rho_au_gz")
def test_cross_expression_and_gaze_follow_the_driver_at_0_45_of_the_ground_truth():
    assert _mean(CROSS, "cma", "rho_au_gz") >= 0.45 * _mean(CROSS, "ground_truth", "rho_au_gz")


def test_the_oracle_row_shows_every_gate_within_eq3s_reach():
    """The ceiling: Eq. 3's space fitted per frame with G fixed passes every gate, so the gap is the encoder's."""
    assert _mean(CROSS, "oracle", "l1_gt") <= 0.90 * _mean(CROSS, "copy_source", "l1_gt")
    assert _mean(CROSS, "oracle", "rho_pose") >= 0.80 * _mean(CROSS, "ground_truth", "rho_pose")
    assert _mean(CROSS, "oracle", "rho_au_gz") >= 0.45 * _mean(CROSS, "ground_truth", "rho_au_gz")
    assert _mean(SAME, "oracle", "psnr") >= 21.0


def test_the_shipped_encoder_moves_the_full_model_towards_the_oracle():
    """Regression guard at the level this commit reached: cross rho_pose closes at least 0.9 of the distance
    from copying the source (0) to the oracle (this commit: 1.01)."""
    closed = _mean(CROSS, "cma", "rho_pose") / _mean(CROSS, "oracle", "rho_pose")
    assert closed >= 0.9, closed
