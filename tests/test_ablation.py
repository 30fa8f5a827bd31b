"""The ablation grid: row names from params, the grid hash, the `dvc exp run` commands (run through a stand-in dvc),
and the table built from MLflow row runs logged by the evaluate stage's own code: means and spread over seeds,
significance marks that agree with scipy's exact paired permutation test, the MLflow summary runs, the URL."""
from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO

@functools.lru_cache(maxsize=None)
def _template_store() -> Path:
    import atexit
    import tempfile

    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    atexit.register(shutil.rmtree, folder, True)
    MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()  # creates and migrates
    return folder / "mlflow.db"


def fresh_store(folder: Path) -> Path:
    """An empty, migrated mlflow.db in `folder`, copied from one made once per test session (MLflow's migrations
    of a new sqlite store take seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(_template_store(), folder / "mlflow.db")
    return folder / "mlflow.db"


VIDEOS = ["v0", "v1", "v2", "v3"]
# per (row, seed): the same-identity L1 per video, and the pooled fid_toy (a set metric: no per-video values)
L1 = {
    ("full", 0): [0.080, 0.082, 0.078, 0.085], ("full", 1): [0.081, 0.080, 0.079, 0.084],
    ("w/o ID reg", 0): [0.090, 0.091, 0.089, 0.095], ("w/o ID reg", 1): [0.089, 0.092, 0.088, 0.094],  # worse, 8/8
    ("w/o CMA", 0): [0.081, 0.081, 0.079, 0.084], ("w/o CMA", 1): [0.080, 0.081, 0.078, 0.085],  # +-0.001: noise
}
FID = {("full", 0): 1.0, ("full", 1): 1.2, ("w/o ID reg", 0): 1.5, ("w/o ID reg", 1): 1.6, ("w/o CMA", 0): 1.1,
       ("w/o CMA", 1): 1.3}
CONFIG = {"full": (True, True, "cma"), "w/o ID reg": (False, True, "cma"), "w/o CMA": (True, True, "none")}
# the reference rows of each seed's evaluate results (the same for every experiment of a seed); `oracle` only in
# seed 0's, so it is a one-seed reference row
REFERENCES = {0: {"copy_source": {"l1": 0.085}, "copy_driving": {"l1": 0.0}, "oracle": {"l1": 0.05}},
              1: {"copy_source": {"l1": 0.087}, "copy_driving": {"l1": 0.0}}}


def reference_results(seed: int) -> dict:
    """reports/evaluate/<protocol>.json's `references` part as the evaluate stage writes it (full_report)."""
    return {"same": {"protocol": "same", "references": {
        ref: {"aggregate": {m: {"mean": v, "std": None, "ci95": [v - 0.004, v + 0.004], "n": 4} for m, v in ms.items()},
              "per_video": {}} for ref, ms in REFERENCES[seed].items()}}}


def test_row_names_come_from_params_in_one_function():
    from pipeline.ablation import row_name, row_of_params
    from pipeline.config import validate_params

    assert row_name(True, True, "cma") == "full"
    assert row_name(True, True, "none") == "w/o CMA"
    assert row_name(True, True, "pti") == "CMA -> PTI"
    assert row_name(False, True, "cma") == "w/o ID reg"
    assert row_name(True, False, "cma") == "w/o Hybrid"
    assert row_name(False, True, "none") == "w/o ID reg, w/o CMA"
    assert row_name(False, False, "pti") == "w/o ID reg, w/o Hybrid, CMA -> PTI"
    assert row_name(True, True, "other") == "adaptation other"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["loss"]["id_reg"] = False
    assert row_of_params(validate_params(raw), "cma") == "w/o ID reg"


def test_grid_hash_ignores_what_the_grid_varies_only():
    from pipeline.ablation import grid_hash, params_hash, params_tree
    from pipeline.config import validate_params

    def tree(**changes):
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        from pipeline.config import set_dotted

        for k, v in changes.items():
            set_dotted(raw, k.replace("__", "."), v)
        return params_tree(validate_params(raw))

    base = tree()
    same_grid = [tree(seed=3), tree(loss__id_reg=False), tree(model__hybrid=False), tree(report__alpha=0.01),
                 tree(reenact__adaptations__same=["cma"])]
    assert {grid_hash(t) for t in same_grid} == {grid_hash(base)}
    assert len({params_hash(t) for t in [base, *same_grid]}) == 6
    assert grid_hash(tree(pretrain__iters=7)) != grid_hash(base)
    assert grid_hash(tree(loss__lambda_id=0.5)) != grid_hash(base)


def test_grid_commands():
    from pipeline.ablation import AblationError, grid_commands

    cmds = grid_commands(["full", "w/o Hybrid"], [0, 1], {"pretrain.iters": 20},
                         {"same": ["cma", "none"], "cross": ["cma"], "robustness": ["none"]})
    assert [" ".join(c) for c in cmds] == [
        "dvc exp run --queue -S pretrain.iters=20 -S loss.id_reg=true -S model.hybrid=true -S seed=0",
        "dvc exp run --queue -S pretrain.iters=20 -S loss.id_reg=true -S model.hybrid=true -S seed=1",
        "dvc exp run --queue -S pretrain.iters=20 -S loss.id_reg=true -S model.hybrid=false -S seed=0 "
        "-S reenact.adaptations.same=[cma]",
        "dvc exp run --queue -S pretrain.iters=20 -S loss.id_reg=true -S model.hybrid=false -S seed=1 "
        "-S reenact.adaptations.same=[cma]",
    ]
    with pytest.raises(AblationError, match="unknown ablation row"):
        grid_commands(["w/o CMA"], [0])
    with pytest.raises(AblationError, match="-S seed: set by the grid itself"):
        grid_commands(["full"], [0], {"seed": 3})


def test_run_grid_queues_then_runs_all_with_jobs(tmp_path, monkeypatch):
    """A stand-in `dvc` on PATH records its arguments: the grid is queued, then run with --run-all --jobs."""
    from pipeline.ablation import AblationError, grid_commands, run_grid

    log = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "dvc"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport sys\nopen({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
                    f"sys.exit(3 if 'boom=1' in sys.argv else 0)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    run_grid(grid_commands(["full"], [0, 5]), jobs=2, cwd=tmp_path, echo=lambda s: None)
    assert log.read_text().splitlines() == [
        "exp run --queue -S loss.id_reg=true -S model.hybrid=true -S seed=0",
        "exp run --queue -S loss.id_reg=true -S model.hybrid=true -S seed=5",
        "exp run --run-all --jobs 2"]
    with pytest.raises(AblationError, match=r"failed \(exit 3\)"):
        run_grid(grid_commands(["full"], [0], {"boom": 1}), jobs=1, cwd=tmp_path, echo=lambda s: None)


def log_grid(store: Path, values=L1, fid=FID, references: bool = True) -> str:
    """Row runs as the `evaluate` stage logs them (pipeline.evaluate.log_row_runs under a stage run), one stage run
    per (model configuration, seed), the stage run with its results folder as artifacts (the reference rows:
    REFERENCES) as pipeline/stage.py logs reports/evaluate; returns the grid hash."""
    import tempfile

    from pipeline.ablation import grid_hash, params_tree
    from pipeline.config import validate_params
    from pipeline.evaluate import PROTOCOL_KEYS, Evaluation, log_row_runs
    from pipeline.io import write_json
    from pipeline.tracking import stage_run

    grid = None
    experiments: dict[tuple, dict[str, str]] = {}
    for (row, seed) in values:
        id_reg, hybrid, adaptation = CONFIG[row]
        experiments.setdefault((id_reg, hybrid, seed), {})[adaptation] = row
    for (id_reg, hybrid, seed), adaptations in sorted(experiments.items()):
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw["loss"]["id_reg"], raw["model"]["hybrid"], raw["seed"] = id_reg, hybrid, seed
        tree = params_tree(validate_params(raw))
        grid = grid_hash(tree)
        ev = Evaluation(rows=dict(adaptations), setting="synthetic world")
        ev.results["same"] = {}
        for adaptation, row in adaptations.items():
            vals = values[(row, seed)]
            ev.results["same"][adaptation] = {
                "metrics": ["l1", "fid_toy"],
                "aggregate": {"l1": {"mean": float(np.mean(vals)), "std": None, "ci95": [min(vals), max(vals)], "n": 4},
                              "fid_toy": {"mean": fid[(row, seed)], "std": None, "ci95": [0.5, 2.0], "n": 4}},
                "per_video": {v: {"l1": x} for v, x in zip(VIDEOS, vals)},
                "networks": {"l1": {"backend": "pixels"}, "fid_toy": {"backend": "toy", "weights_sha256": {"a": "ff" * 32}}},
                "videos": {v: {"group": v} for v in VIDEOS},
            }
        with stage_run("evaluate", {"seed": seed}, store) as run:
            log_row_runs(ev, tree, seed)
            if references:
                with tempfile.TemporaryDirectory() as tmp:
                    for protocol, result in reference_results(seed).items():
                        write_json(Path(tmp) / "evaluate" / f"{PROTOCOL_KEYS[protocol]}.json", result)
                    run.log_artifact(Path(tmp) / "evaluate")
    return grid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A workspace whose mlflow.db holds the grid's row runs (DVC_ROOT points there while logging)."""
    ws = tmp_path_factory.mktemp("ablation")
    fresh_store(ws)
    old = os.environ.get("DVC_ROOT")
    os.environ["DVC_ROOT"] = str(ws)
    try:
        grid = log_grid(ws)
    finally:
        if old is None:
            os.environ.pop("DVC_ROOT", None)
        else:
            os.environ["DVC_ROOT"] = old
    return ws, grid


def test_table_means_spread_and_significance_against_scipy(store):
    from scipy.stats import permutation_test

    from pipeline.ablation import build_table, find_row_runs

    ws, grid = store
    runs = find_row_runs(f"sqlite:///{ws / 'mlflow.db'}", grid)
    assert sorted((r.row, r.seed) for r in runs) == sorted(L1)
    table = build_table(runs, alpha=0.05, grid=grid)
    assert list(table.rows) == ["full", "w/o ID reg", "w/o CMA"]
    assert table.metrics == ["same.l1", "same.fid_toy"]
    for row in table.rows:
        seed_means = [np.mean(L1[(row, s)]) for s in (0, 1)]
        cell = table.rows[row]["same.l1"]
        assert cell.mean == pytest.approx(np.mean(seed_means)) and cell.n_seeds == 2
        assert cell.spread == pytest.approx(np.std(seed_means, ddof=1))
        if row == "full":
            continue
        a = np.concatenate([L1[(row, s)] for s in (0, 1)])
        b = np.concatenate([L1[("full", s)] for s in (0, 1)])
        ref = permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples", n_resamples=np.inf)
        assert cell.n_pairs == 8 and cell.p_value == pytest.approx(ref.pvalue), row
        assert cell.significant == (ref.pvalue < 0.05)
        fid = table.rows[row]["same.fid_toy"]  # pooled: pairs on the 2 seeds (both higher than full: p = 2/4)
        assert fid.n_pairs == 2 and fid.p_value == pytest.approx(0.5)
        assert not fid.significant
    assert table.rows["w/o ID reg"]["same.l1"].significant
    assert not table.rows["w/o CMA"]["same.l1"].significant


def test_newest_run_of_a_row_and_seed_counts_and_other_grids_are_left_out(store):
    from pipeline.ablation import build_table, find_row_runs

    ws, grid = store
    runs = find_row_runs(f"sqlite:///{ws / 'mlflow.db'}", grid)
    old = next(r for r in runs if (r.row, r.seed) == ("full", 0))
    stale = type(old)(run_id="0" * 32, row="full", seed=0, aggregate={"same.l1": {"mean": 9.0}}, per_video={},
                      start_time=old.start_time - 1)
    table = build_table([stale, *runs], grid=grid)
    assert table.rows["full"]["same.l1"].mean == pytest.approx(np.mean([np.mean(L1[("full", s)]) for s in (0, 1)]))
    assert find_row_runs(f"sqlite:///{ws / 'mlflow.db'}", "f" * 12) == []


def test_report_markdown_html_summary_runs_and_url(store, tmp_path):
    import mlflow

    from pipeline.ablation import ablation_report

    ws, grid = store
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    result = ablation_report(uri, tmp_path / "reports", grid, base_url="http://127.0.0.1:5001")
    md = (tmp_path / "reports" / "ablations.md").read_text()
    # by hand: full's seed means 0.08125 and 0.081 -> 0.081125 ± 0.000177; w/o ID reg's 0.09125, 0.09075; fid 1.0, 1.2
    assert "| full | 0.0811 ± 0.00018 | 1.10 ± 0.14 |" in md
    assert "| w/o ID reg | 0.0910 ± 0.00035 * | 1.55 ± 0.071 |" in md
    assert "| w/o CMA | 0.0811 ± 0.00018 | 1.20 ± 0.14 |" in md  # seed means 0.08125, 0.081
    assert "| w/o ID reg | same.l1 | 0.00987 | 0.0078 | 8 | significantly worse than full |" in md  # p = 2/2^8
    assert "| w/o CMA | same.l1 |" not in md and "The other 3 of 4 paired comparisons have p >= 0.05" in md
    assert "<td>w/o ID reg</td>" in (tmp_path / "reports" / "ablations.html").read_text()
    ids = result["summary_runs"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = [client.get_run(i) for i in ids]
    assert [r.info.run_name for r in runs] == ["full", "w/o ID reg", "w/o CMA"]
    assert runs[1].data.tags["kind"] == "ablation_summary" and runs[1].data.tags["significant"] == "same.l1"
    assert runs[1].data.metrics["same.l1"] == pytest.approx(result["table"].rows["w/o ID reg"]["same.l1"].mean)
    assert "same.l1.p" in runs[1].data.metrics and "same.l1.p" not in runs[0].data.metrics
    url = result["url"]
    assert url.startswith("http://127.0.0.1:5001/#/compare-runs?runs=")
    query = urllib.parse.parse_qs(url.split("?", 1)[1])
    assert json.loads(query["runs"][0]) == ids and json.loads(query["experiments"][0]) == [result["experiment_id"]]
    # the reference rows, from the evaluate stage runs behind full's row runs: mean ± sd over seeds; oracle: one seed
    assert "| copy source (reference) | 0.0860 ± 0.0014 | — |" in md
    assert "| copy driving (reference) | 0 ± 0 | — |" in md and "| oracle (reference) | 0.0500 [0.0460, 0.0540] | — |" in md
    data = json.loads((tmp_path / "reports" / "ablations.json").read_text())
    assert data["row_order"] == ["full", "w/o ID reg", "w/o CMA"]
    assert data["reference_order"] == ["copy_source", "copy_driving", "oracle"]
    assert data["references"]["copy_source"]["metrics"]["same"]["l1"] == {"mean": 0.086, "n_seeds": 2,
                                                                         "sd_seeds": pytest.approx(0.00141421, rel=1e-5)}
    assert data["references"]["oracle"]["seeds"] == [0]
    assert data["rows"]["w/o ID reg"]["metrics"]["same"]["l1"]["vs_full"]["significant"] is True
    assert "<td>oracle (reference)</td>" in (tmp_path / "reports" / "ablations.html").read_text()
    json_text = (tmp_path / "reports" / "ablations.json").read_text()
    again = ablation_report(uri, tmp_path / "reports", grid)  # same runs: the summary runs are reused
    assert again["summary_runs"] == ids
    assert (tmp_path / "reports" / "ablations.md").read_text() == md
    assert (tmp_path / "reports" / "ablations.json").read_text() == json_text  # byte-identical
    assert str(tmp_path) not in json_text and str(ws) not in json_text


def test_ablate_table_only_says_what_each_row_ran_and_writes_the_json(store, tmp_path, monkeypatch):
    """`reenact ablate --table-only` in a workspace: the row plans come from its dvc.yaml and params.yaml."""
    from pipeline.ablation import ablate, read_ablations_json

    ws, grid = store
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (ws / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (ws / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    result = ablate(ws, {}, [], [0, 1], 1, 0.05, "http://127.0.0.1:5000", table_only=True, out_dir=tmp_path / "out")
    assert result["table"].grid_hash == grid
    data = read_ablations_json(tmp_path / "out" / "ablations.json")
    plans = {row: data["rows"][row]["stages"] for row in data["row_order"]}
    assert plans["full"]["rerun"] == [] and plans["full"]["text"].startswith("none beyond the default")
    assert plans["w/o ID reg"]["changes"] == {"loss.id_reg": False}
    assert {"pretrain", "finetune", "reenact", "evaluate"} <= set(plans["w/o ID reg"]["rerun"])
    assert plans["w/o CMA"]["rerun"] == [] and plans["w/o CMA"]["text"].startswith("no re-training")
    md = (tmp_path / "out" / "ablations.md").read_text()
    assert "| row | seeds | runs | re-trained / re-ran |" in md and plans["w/o ID reg"]["text"] in md


def test_no_runs_says_what_to_run(store, tmp_path):
    from pipeline.ablation import AblationError, ablation_report

    ws, _ = store
    with pytest.raises(AblationError, match=r"no finished `evaluate` runs of grid ffffffffffff .*run `reenact ablate`"):
        ablation_report(f"sqlite:///{ws / 'mlflow.db'}", tmp_path, "f" * 12)


def test_cli_ablate_dry_run_prints_the_grid_and_bad_input_exits_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    done = runner.invoke(app, ["ablate", "--dry-run", "--seed", "0", "--seed", "2", "--row", "full", "--row",
                               "w/o Hybrid", "-S", "pretrain.iters=20", "--jobs", "2"])
    assert done.exit_code == 0, done.output
    lines = done.output.strip().splitlines()
    assert lines[0] == "dvc exp run --queue -S pretrain.iters=20 -S loss.id_reg=true -S model.hybrid=true -S seed=0"
    assert lines[2].startswith("dvc exp run --queue -S pretrain.iters=20 -S loss.id_reg=true -S model.hybrid=false "
                               "-S seed=0 -S pretrain.source=train -S 'reenact.adaptations.same=[cma]'")  # the shipped
    # pre-trained encoder does not fit model.hybrid=false: the row re-trains it
    assert len(lines) == 5 and lines[-1] == "dvc exp run --run-all --jobs 2"
    bad = runner.invoke(app, ["ablate", "--dry-run", "-S", "pretrain.iterz=20"])
    assert bad.exit_code == 2 and "pretrain.iterz: unknown key; did you mean 'pretrain.iters'?" in bad.output
    seed = runner.invoke(app, ["ablate", "--dry-run", "-S", "seed=3"])
    assert seed.exit_code == 2 and "set by the grid itself" in seed.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc.yaml", "params.yaml"]  # nothing run, nothing written


def test_installed_cli_finds_the_profiles_from_any_folder(tmp_path):
    """`reenact ablate --profile toy-full`, as a user types it in a workspace (not the repo's folder on sys.path)."""
    import subprocess

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    cli = shutil.which("reenact", path=str(Path(sys.executable).parent))
    assert cli, "the `reenact` console script is not installed beside this Python"
    done = subprocess.run([cli, "ablate", "--profile", "toy-full", "--dry-run", "--seed", "0", "--row", "full"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "-S finetune.iters=300" in done.stdout and "-S seed=0" in done.stdout


def test_a_protocol_lists_only_the_rows_it_has_values_for():
    """Robustness re-enacted without CMA only (the default) has no `full` row, and the other models' rows that exist
    only there ('w/o Hybrid, w/o CMA') are not lines of dashes in the same- and cross-identity tables."""
    from pipeline.ablation import RowRun, build_table, table_html, table_markdown

    def run(row, aggregate):
        return RowRun(run_id=row, row=row, seed=0, aggregate={k: {"mean": v} for k, v in aggregate.items()},
                      per_video={})

    table = build_table([run("full", {"same.l1": 0.08}), run("w/o CMA", {"same.l1": 0.09, "robustness.l1": 0.1}),
                         run("w/o Hybrid, w/o CMA", {"robustness.l1": 0.11})], grid="g")
    md = table_markdown(table)
    same, robustness = md.split("## one-shot robustness")[0].split("## same identity")[1], md.split("## one-shot robustness")[1]
    assert "| full | 0.0800 |" in same and "| w/o CMA | 0.0900 |" in same and "w/o Hybrid, w/o CMA" not in same
    assert "| w/o CMA | 0.100 |" in robustness and "| w/o Hybrid, w/o CMA | 0.110 |" in robustness
    assert "| full |" not in robustness.split("## Significant")[0]
    html = table_html(table)
    assert html.count("<td>w/o Hybrid, w/o CMA</td>") == 1 and html.count("<td>full</td>") == 1
