"""The `evaluate` stage on a tiny data/reenacted (the `reenact` stage's layout, written here): the metric files with
hand-computed values, the per-video table, byte-identical re-runs, the MLflow stage run and its row runs, errors
that name the stage to run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import REPO

SIZE, FRAMES = 32, 8
NOISE = {"cma": 4.0, "none": 20.0}  # pti: the source frame copied (a known, bad row)
FAST = {"evaluate.bootstrap.resamples": 200, "evaluate.bootstrap.set_resamples": 8, "evaluate.fvd.clip_frames": 4}


def _video(seed: int, n: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """A smooth background with a moving bright blob (frames that vary in time, as a talking head does)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    base = rng.uniform(40, 200, 3)
    frames = []
    for t in range(n):
        cx, cy = size / 2 + size / 5 * np.sin(t / 2 + seed), size / 2 + size / 6 * np.cos(t / 3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (size / 7) ** 2))[..., None]
        frames.append(base * (1 - blob) + blob * np.array([235, 190, 160]))
    return np.clip(frames, 0, 255).astype(np.uint8)


def _noisy(frames: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames.astype(float) + rng.normal(0, sigma, frames.shape), 0, 255).round().astype(np.uint8)


def _landmarks(n: int) -> np.ndarray:
    lm = np.full((n, 68, 2), SIZE / 2.0)
    lm[:, 48:68, 0] += np.linspace(-SIZE / 8, SIZE / 8, 20)
    lm[:, 48:68, 1] += SIZE / 5
    return lm


def make_reenacted(root: Path, adaptations=("cma", "none", "pti"), robustness=("cma", "none")) -> Path:
    """data/reenacted under `root` in the `reenact` stage's layout (index.csv + arrays + .mp4 copies beside the
    predictions, which pairing must ignore): same v0-v2, cross c0-c1 (with targets), robustness r0, r1 x 2 sources.
    Predictions: the reference (driving, or the cross target) + Gaussian noise (NOISE), pti: the source frame."""
    from pipeline.video import write_video

    out = root / "data" / "reenacted"
    rows = []

    def save(rel: str, arr) -> str:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".png"):
            Image.fromarray(arr).save(out / rel)
        else:
            np.save(out / rel, arr)
        return rel

    def preds(protocol, name, reference, source, adapts, seed):
        for a in adapts:
            pred = np.repeat(source[None], len(reference), 0) if a == "pti" else _noisy(reference, NOISE[a], seed)
            rel = save(f"{protocol}/{a}/{name}.npy", pred)
            write_video(out / f"{protocol}/{a}/{name}.mp4", pred, fps=25)
            yield a, rel

    for i, name in enumerate(["v0", "v1", "v2"]):
        drv = _video(i)
        d, s = save(f"same/driving/{name}.npy", drv), save(f"same/source/{name}.png", drv[0])
        lm = save(f"same/landmarks/{name}.npy", _landmarks(FRAMES))
        for a, p in preds("same", name, drv, drv[0], adaptations, 10 + i):
            rows.append(("same", a, name, p, d, s, "", lm))
    for i, name in enumerate(["c0", "c1"]):
        drv, target, src = _video(20 + i), _video(30 + i), _video(40 + i)[3]
        d, s = save(f"cross/driving/{name}.npy", drv), save(f"cross/source/{name}.png", src)
        t, lm = save(f"cross/target/{name}.npy", target), save(f"cross/landmarks/{name}.npy", _landmarks(FRAMES))
        for a, p in preds("cross", name, target, src, adaptations, 50 + i):
            rows.append(("cross", a, name, p, d, s, t, lm))
    for i, drv_name in enumerate(["r0", "r1"]):
        drv = _video(60 + i)
        d, lm = save(f"robustness/driving/{drv_name}.npy", drv), save(f"robustness/landmarks/{drv_name}.npy", _landmarks(FRAMES))
        for k in range(2):
            name = f"{drv_name}__s{k}"
            s = save(f"robustness/source/{name}.png", drv[3 * k + 1])
            for a, p in preds("robustness", name, drv, drv[3 * k + 1], robustness, 70 + 2 * i + k):
                rows.append(("robustness", a, name, p, d, s, "", lm))
    pd.DataFrame(rows, columns=["protocol", "adaptation", "name", "pred", "driving", "source", "target", "landmarks"]) \
        .to_csv(out / "index.csv", index=False, lineterminator="\n")
    return out


def tiny_evaluate_params(real_params: dict, **overrides):
    """The real params.yaml, TINY, FAST, plus overrides (dotted keys)."""
    from pipeline.config import set_dotted, validate_params
    from tests.conftest import TINY

    for key, value in {**TINY, **FAST, **overrides}.items():
        set_dotted(real_params, key, value)
    return validate_params(real_params)


def make_workspace(folder: Path) -> Path:
    """A workspace with a random toy analyzer (models/analyzer.pt) and a dvc.yaml that marks it."""
    from tests.test_evaluation_networks import make_toy_workspace

    from tests.test_ablation import fresh_store

    make_toy_workspace(folder, resolution=SIZE)
    make_reenacted(folder)
    fresh_store(folder)
    return folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The stage run once on the tiny workspace: (workspace, params, metrics)."""
    import os

    import yaml

    from stages.evaluate import STAGE

    ws = make_workspace(tmp_path_factory.mktemp("ws"))
    params = tiny_evaluate_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    old_cwd, old_root = os.getcwd(), os.environ.pop("DVC_ROOT", None)
    os.chdir(ws)  # the toy analyzer is found in the workspace (pipeline.paths.workspace)
    try:
        metrics = STAGE.execute(params=params, root=ws, progress=False)
    finally:
        os.chdir(old_cwd)
        if old_root is not None:
            os.environ["DVC_ROOT"] = old_root
    return ws, params, metrics


def _read(ws: Path, name: str) -> dict:
    return json.loads((ws / name).read_text())


def test_metric_files_hold_every_adaptation_and_reference_with_known_values(evaluated):
    ws, _, metrics = evaluated
    same, cross, rob = (_read(ws, f"metrics/eval_{k}.json") for k in ("same_id", "cross_id", "robustness"))
    assert metrics["videos"] == {"same": 3, "cross": 2, "robustness": 4}
    assert metrics["rows"] == {"cma": "full", "none": "w/o CMA", "pti": "CMA -> PTI"}
    assert set(same) == {"videos", "cma", "none", "pti", "copy_source", "copy_driving"}
    # no copy-driving ceiling across identities: the ground-truth cross render is the reference there
    assert set(cross) == {"videos", "cma", "none", "pti", "copy_source", "ground_truth"}
    assert cross["ground_truth"]["l1_gt"]["mean"] == 0
    assert set(rob) == {"videos", "cma", "none", "copy_source", "copy_driving"}
    assert same["videos"] == 3 and set(same["cma"]["l1"]) == {"mean", "lo", "hi"}
    assert set(rob["cma"]["l1"]) == {"mean", "lo", "hi", "std"}
    # hand-computed: L1 = mean over videos of mean |pred - driving| / 255
    reenacted = ws / "data" / "reenacted"
    expected = np.mean([np.abs(np.load(reenacted / f"same/cma/{n}.npy").astype(float)
                               - np.load(reenacted / f"same/driving/{n}.npy")).mean() / 255 for n in ("v0", "v1", "v2")])
    assert same["cma"]["l1"]["mean"] == pytest.approx(expected, rel=1e-5)
    assert same["cma"]["l1"]["lo"] <= same["cma"]["l1"]["mean"] <= same["cma"]["l1"]["hi"]
    gt = np.mean([np.abs(np.load(reenacted / f"cross/none/{n}.npy").astype(float)
                         - np.load(reenacted / f"cross/target/{n}.npy")).mean() / 255 for n in ("c0", "c1")])
    assert cross["none"]["l1_gt"]["mean"] == pytest.approx(gt, rel=1e-5)
    # the ordering the fixture builds in: less noise, lower error; copying the driving video is exact
    assert same["cma"]["l1"]["mean"] < min(same["none"]["l1"]["mean"], same["pti"]["l1"]["mean"])
    assert same["copy_driving"]["l1"]["mean"] == 0
    assert cross["cma"]["l1_gt"]["mean"] < cross["none"]["l1_gt"]["mean"]


def test_per_video_table_and_full_reports(evaluated):
    ws, _, _ = evaluated
    table = pd.read_csv(ws / "reports/evaluate/per_video.csv")
    assert list(table.columns[:5]) == ["protocol", "adaptation", "row", "video", "group"]
    counts = table.groupby(["protocol", "adaptation"]).size().to_dict()
    assert counts == {("cross", "cma"): 2, ("cross", "copy_source"): 2, ("cross", "ground_truth"): 2,
                      ("cross", "none"): 2, ("cross", "pti"): 2,
                      ("robustness", "cma"): 4, ("robustness", "copy_driving"): 4, ("robustness", "copy_source"): 4,
                      ("robustness", "none"): 4, ("same", "cma"): 3, ("same", "copy_driving"): 3,
                      ("same", "copy_source"): 3, ("same", "none"): 3, ("same", "pti"): 3}
    rob = table[table["protocol"] == "robustness"]
    assert set(rob["group"]) == {"r0", "r1"}
    full = _read(ws, "reports/evaluate/same_id.json")
    v0 = table[(table["protocol"] == "same") & (table["adaptation"] == "cma") & (table["video"] == "v0")].iloc[0]
    assert v0["l1"] == pytest.approx(full["rows"]["cma"]["per_video"]["v0"]["l1"], rel=1e-6)
    assert full["rows"]["none"]["ablation"] == "w/o CMA" and "synthetic world" in full["setting"]
    text = "".join((ws / p).read_text() for p in ("reports/evaluate/same_id.json", "reports/evaluate/cross_id.json",
                                                   "reports/evaluate/robustness.json", "metrics/evaluate.json"))
    assert str(ws) not in text and '"seconds"' not in text  # no absolute path, no timing in a DVC output
    assert full["videos"]["v0"]["pred"] == "same/cma/v0.npy"


def test_stage_run_and_one_row_run_per_adaptation_in_mlflow(evaluated):
    import mlflow

    from pipeline.ablation import grid_hash, params_hash, params_tree

    ws, params, _ = evaluated
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["reenact"])
    stage = runs[runs["tags.stage"] == "evaluate"]
    rows = runs[runs["tags.kind"] == "eval_row"]
    assert len(stage) == 1 and len(rows) == 3
    parent = stage.iloc[0]
    assert parent["tags.ablation"] == "full" and parent["status"] == "FINISHED"
    assert parent["tags.params_hash"] == params_hash(params_tree(params))
    assert parent["tags.grid_hash"] == grid_hash(params_tree(params))
    assert parent["tags.network.l_id"].startswith("toy") and "analyzer.pt=" in parent["tags.network.l_id"]
    assert parent["tags.network.l1"] == "pixels"
    same = _read(ws, "metrics/eval_same_id.json")
    assert parent["metrics.same.cma.l1.mean"] == pytest.approx(same["cma"]["l1"]["mean"])
    assert set(rows["tags.mlflow.parentRunId"]) == {parent["run_id"]}
    assert sorted(rows["tags.ablation"]) == ["CMA -> PTI", "full", "w/o CMA"]
    assert set(rows["tags.grid_hash"]) == {parent["tags.grid_hash"]} and set(rows["tags.seed"]) == {"0"}
    none = rows[rows["tags.ablation"] == "w/o CMA"].iloc[0]
    assert none["metrics.same.l1"] == pytest.approx(same["none"]["l1"]["mean"])
    assert none["metrics.same.l1.lo"] == pytest.approx(same["none"]["l1"]["lo"])
    assert none["tags.adaptation"] == "none" and none["tags.mlflow.runName"] == "w/o CMA [seed 0]"
    # the per-video table of the row run, as MLflow stores tables
    path = mlflow.MlflowClient().download_artifacts(none["run_id"], "per_video.json", str(ws / "tmp_download"))
    data = json.loads(Path(path).read_text())
    table = pd.DataFrame(data["data"], columns=data["columns"])
    assert sorted(table.loc[table["protocol"] == "same", "video"]) == ["v0", "v1", "v2"]
    assert set(table["protocol"]) == {"same", "cross", "robustness"} and "row" not in table.columns
    v1 = table[(table["protocol"] == "same") & (table["video"] == "v1")].iloc[0]
    assert v1["l1"] == pytest.approx(_read(ws, "reports/evaluate/same_id.json")["rows"]["none"]["per_video"]["v1"]["l1"])
    shutil.rmtree(ws / "tmp_download")


def test_rerun_is_byte_identical(evaluated, tmp_path, monkeypatch):
    from stages.evaluate import STAGE

    ws, params, _ = evaluated
    other = tmp_path / "clone"
    shutil.copytree(ws, other, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "metrics", "reports"))
    from tests.test_ablation import fresh_store

    fresh_store(other)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(other)
    STAGE.execute(params=params, root=other, progress=False)
    for rel in ["metrics/eval_same_id.json", "metrics/eval_cross_id.json", "metrics/eval_robustness.json",
                "metrics/evaluate.json", "reports/evaluate/per_video.csv", "reports/evaluate/same_id.json",
                "reports/evaluate/cross_id.json", "reports/evaluate/robustness.json"]:
        assert (other / rel).read_bytes() == (ws / rel).read_bytes(), rel


def test_missing_reenacted_names_the_stage_to_run(tmp_path, monkeypatch):
    from pipeline.evaluate import ReenactedError, evaluate_reenacted
    from pipeline.config import validate_params
    import yaml

    params = validate_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    with pytest.raises(ReenactedError, match=r"index.csv: not found.*dvc repro reenact"):
        evaluate_reenacted(tmp_path / "data" / "reenacted", params)
    out = make_reenacted(tmp_path)
    (out / "same" / "none" / "v1.npy").unlink()
    with pytest.raises(ReenactedError, match=r"same/none/v1.npy: listed in .*index.csv .*missing; re-run `dvc repro reenact`"):
        evaluate_reenacted(out, params)
    table = pd.read_csv(out / "index.csv", dtype=str, keep_default_na=False)
    pd.concat([table, table.iloc[:1]]).to_csv(out / "index.csv", index=False)
    with pytest.raises(ReenactedError, match="listed twice"):
        evaluate_reenacted(out, params)


def test_stage_main_prints_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    from stages.evaluate import STAGE

    from tests.test_ablation import fresh_store

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    fresh_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        STAGE.main([])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "mlflow" not in line]  # MLflow's own log lines
    assert len(err) == 1 and err[0].startswith("error: ") and "run `dvc repro reenact` first" in err[0]


def test_declared_assets_follow_the_metrics_and_backends(real_params):
    from pipeline.config import set_dotted, validate_params
    from stages.evaluate import STAGE

    assert STAGE.assets(validate_params(real_params)) == ["dlib_landmarks68"]  # toy metrics: only FVD_M's fallback
    set_dotted(real_params, "evaluate.metrics.same", ["l1", "lpips", "l_id", "fid", "fvd"])
    set_dotted(real_params, "analysis.identity_metric", "arcface")
    assert STAGE.assets(validate_params(real_params)) == ["arcface_ir_se50", "dlib_landmarks68", "fid_inception", "fvd_i3d",
                                                          "lpips_alexnet"]  # fvd_m_toy in cross: dlib landmarks
