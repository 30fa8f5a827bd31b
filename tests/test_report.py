"""The `report` stage: Tables 1-3 from hand-made evaluation results (known numbers give known cells, significance
marks agree with scipy's exact paired permutation test), the paper's numbers beside ours, figures and samples,
byte-identical outputs in two workspaces, and the error that names the stage to run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

VIDEOS = [f"v{i}" for i in range(6)]
FULL_L1 = [0.080, 0.082, 0.078, 0.085, 0.079, 0.083]
NONE_L1 = [v + 0.010 for v in FULL_L1]  # worse on every video: exact sign-flip p = 2 / 2^6
FULL_ID = [0.10, 0.12, 0.09, 0.11, 0.10, 0.13]
NONE_ID = [0.11, 0.11, 0.10, 0.10, 0.11, 0.12]  # +-0.01 alternating: not significant


def _agg(mean, lo, hi, std=None):
    return {"mean": mean, "std": std, "ci95": [lo, hi], "n": 6}


def same_result() -> dict:
    """A reports/evaluate/same_id.json with known aggregates and per-video values."""
    per = {"cma": {v: {"l1": a, "l_id": b} for v, a, b in zip(VIDEOS, FULL_L1, FULL_ID)},
           "none": {v: {"l1": a, "l_id": b} for v, a, b in zip(VIDEOS, NONE_L1, NONE_ID)}}
    return {
        "protocol": "same", "setting": "synthetic world (64 identities, seed 0), 64x64 px; networks: toy: l_id",
        "metrics": ["l1", "l_id", "fid_toy"],
        "networks": {"l1": {"backend": "pixels"}, "l_id": {"backend": "toy"}, "fid_toy": {"backend": "toy analyzer"}},
        "rows": {"cma": {"ablation": "full", "aggregate": {"l1": _agg(0.0812, 0.07, 0.09), "l_id": _agg(0.108, 0.1, 0.12),
                                                             "fid_toy": _agg(1.23456, 1.1, 1.4)},
                         "per_video": per["cma"], "missing": {}, "skipped": {}},
                 "none": {"ablation": "w/o CMA", "aggregate": {"l1": _agg(0.0912, 0.08, 0.1), "l_id": _agg(0.108, 0.1, 0.12),
                                                                "fid_toy": _agg(2.0, 1.8, 2.2)},
                          "per_video": per["none"], "missing": {}, "skipped": {}}},
        "references": {"copy_source": {"aggregate": {"l1": _agg(0.0880, 0.078, 0.0968), "l_id": _agg(1e-17, 0, 0),
                                                     "fid_toy": _agg(-3e-9, -1e-8, 1e-9)}, "per_video": {}},
                       "copy_driving": {"aggregate": {"l1": _agg(0.0, 0.0, 0.0), "l_id": _agg(0.09, 0.06, 0.11),
                                                      "fid_toy": _agg(0.0, 0.0, 0.0)}, "per_video": {}}},
        "videos": {v: {"group": v} for v in VIDEOS}, "resolution": {"sizes": [[64, 64]]}, "settings": {}, "frames": 384,
    }


def robustness_result() -> dict:
    r = same_result()
    r.update(protocol="robustness", metrics=["lpips_toy", "l1"])
    r["rows"] = {"none": {"ablation": "w/o CMA", "aggregate": {"lpips_toy": _agg(0.0291, 0.027, 0.031, std=0.0023),
                                                               "l1": _agg(0.05, 0.04, 0.06, std=0.01)},
                          "per_video": {}, "missing": {}, "skipped": {}}}
    r["references"] = {}
    return r


def test_known_numbers_give_known_cells_and_the_paper_beside():
    from pipeline.report import paper_table, tables_markdown

    table = paper_table("same", same_result(), alpha=0.05)
    header, rows = table.header, {r[0]: r for r in table.rows}
    assert header[:4] == ["row", "setting", "L1 ↓", "LPIPS ↓ (not evaluated)"]
    col = {h.split(" ")[0]: i for i, h in enumerate(header)}
    full, none = rows["ours: full (cma)"], rows["ours: w/o CMA (none)"]
    assert full[col["L1"]] == "0.0812 [0.0700, 0.0900]"
    assert full[col["FID"]] == "1.23 [1.10, 1.40]" and header[col["FID"]] == "FID ↓ (fid_toy)"
    assert none[col["L1"]] == "0.0912 [0.0800, 0.100] *"  # every video worse: p = 1/32 < 0.05
    assert none[col["L_ID"]] == "0.108 [0.100, 0.120]"  # no mark: alternating differences
    assert none[col["FID"]] == "2.00 [1.80, 2.20]"  # pooled: no per-video values, never marked
    assert rows["copy source (reference)"][col["L_ID"]] == "0 [0, 0]"  # float noise shows as 0
    assert rows["copy source (reference)"][col["FID"]] == "0 [0, 0]"
    assert full[1] == "synthetic world, 64², toy networks"
    paper = rows["paper: Ours (1024²)"]
    assert paper[1] == "HDTF, paper networks" and paper[col["L1"]] == "2.28" and paper[col["ρ_pose"]] == "0.952"
    assert rows["paper: FOMM (256²)"][col["FVD"]] == "102.1"
    ordered = [r[0] for r in table.rows]
    assert ordered[:4] == ["copy source (reference)", "copy driving (reference)", "ours: full (cma)",
                           "ours: w/o CMA (none)"]
    md = tables_markdown([table])
    assert "| ours: w/o CMA (none) | synthetic world, 64², toy networks | 0.0912 [0.0800, 0.100] * |" in md
    assert md.count("| paper: ") == 8


def test_table3_in_the_papers_units_with_std():
    from pipeline.report import paper_table

    table = paper_table("robustness", robustness_result(), alpha=0.05)
    col = {h.split(" ")[0]: i for i, h in enumerate(table.header)}
    rows = {r[0]: r for r in table.rows}
    assert table.header[col["LPIPS"]] == "LPIPS ×10⁻² ↓ (lpips_toy)"
    assert rows["ours: w/o CMA (none)"][col["LPIPS"]] == "2.91 ± 0.23 [2.70, 3.10]"
    assert rows["ours: w/o CMA (none)"][col["l1"]] == "0.0500 ± 0.010 [0.0400, 0.0600]"  # beyond the paper: unscaled
    assert rows["paper: Ours"][col["LPIPS"]] == "2.9 ± 0.2" and rows["paper: Ours"][col["l1"]] == "—"


def test_significance_matches_scipys_exact_paired_permutation_test():
    from scipy.stats import permutation_test

    from pipeline.report import significance

    tests = significance(same_result(), alpha=0.05)["none"]
    for metric, a, b in (("l1", NONE_L1, FULL_L1), ("l_id", NONE_ID, FULL_ID)):
        d = np.array(a) - np.array(b)
        ref = permutation_test((np.array(a), np.array(b)), lambda x, y: np.mean(x - y), permutation_type="samples",
                               n_resamples=np.inf, alternative="two-sided")
        assert tests[metric]["p_value"] == pytest.approx(ref.pvalue), metric
        assert tests[metric]["significant"] == (ref.pvalue < 0.05)
        assert tests[metric]["mean_difference"] == pytest.approx(d.mean())
    assert tests["l1"]["significant"] and not tests["l_id"]["significant"]
    assert "fid_toy" not in tests


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The stage run in two workspaces (one shared MLflow store) on the same inputs: (first, second, metrics)."""
    import os

    from pipeline.config import validate_params
    from stages.report import STAGE
    from tests.conftest import REPO
    from tests.test_evaluate_stage import make_reenacted
    import yaml

    base = tmp_path_factory.mktemp("report")
    params = validate_params(yaml.safe_load((REPO / "params.yaml").read_text()) | {"report": {"samples": 2, "grid_frames": 3, "videos": 1}})
    first = base / "a"
    make_reenacted(first)
    ev = first / "reports" / "evaluate"
    ev.mkdir(parents=True)
    result = same_result()
    result["rows"]["cma"]["per_video"] = {f"v{i}": {"l1": FULL_L1[i], "l_id": FULL_ID[i]} for i in range(3)}
    result["rows"]["none"]["per_video"] = {f"v{i}": {"l1": NONE_L1[i], "l_id": NONE_ID[i]} for i in range(3)}
    (ev / "same_id.json").write_text(json.dumps(result))
    (ev / "robustness.json").write_text(json.dumps(robustness_result()))
    (first / "metrics").mkdir()
    (first / "metrics" / "pretrain_history.csv").write_text("step,train/loss,train/loss_id\n1,2.0,0.5\n2,1.5,0.4\n")
    (first / "metrics" / "finetune_history.csv").write_text("step,train/loss,train/loss_id\n1,1.2,0.3\n2,1.1,0.2\n")
    second = base / "b"
    shutil.copytree(first, second)
    from tests.test_ablation import fresh_store

    fresh_store(base)
    old = os.environ.get("DVC_ROOT")
    os.environ["DVC_ROOT"] = str(base)
    try:
        metrics = STAGE.execute(params=params, root=first, progress=False)
        STAGE.execute(params=params, root=second, progress=False)
    finally:
        if old is None:
            os.environ.pop("DVC_ROOT", None)
        else:
            os.environ["DVC_ROOT"] = old
    return first, second, metrics


def test_stage_writes_tables_figures_samples(reported):
    first, _, metrics = reported
    assert metrics["tables"] == {"same_id": 12, "robustness": 7}
    assert metrics["figures"] == ["loss_curves.png", "metrics_same_id.png", "metrics_robustness.png"]
    assert metrics["samples"] == ["same_id_grid.png", "same_id_v0.mp4", "robustness_grid.png"]
    md = (first / "reports" / "tables.md").read_text()
    assert "## Table 1: one-shot same-identity re-enactment" in md and "## Table 3" in md and "## Table 2" not in md
    assert "0.0912 [0.0800, 0.100]" in md and "reports/ablations.md" in md
    html = (first / "reports" / "tables.html").read_text()
    assert "<tr class='paper'><td>paper: Ours (1024²)</td>" in html and "0.0812 [0.0700, 0.0900]" in html
    for png in ("figures/loss_curves.png", "figures/metrics_same_id.png", "samples/same_id_grid.png"):
        assert (first / "reports" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from pipeline.video import iter_frames

    frames = [f for _, f in iter_frames(first / "reports" / "samples" / "same_id_v0.mp4")]
    assert len(frames) == 8 and frames[0].shape == (32, 32 * 5, 3)  # source | driving | full | w/o CMA | CMA -> PTI


def test_outputs_are_byte_identical_in_two_workspaces(reported):
    first, second, _ = reported
    outputs = sorted(p.relative_to(first) for p in (first / "reports").rglob("*")
                     if p.is_file() and "evaluate" not in p.parts)
    assert len(outputs) == 2 + 3 + 3
    for rel in outputs + [Path("metrics/report.json")]:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    assert str(first) not in (first / "reports" / "tables.md").read_text()


def test_report_before_evaluate_names_the_stage_to_run(tmp_path):
    from pipeline.report import ReportError, load_results

    with pytest.raises(ReportError, match=r"no evaluation results; run the `evaluate` stage first \(dvc repro evaluate\)"):
        load_results(tmp_path)
