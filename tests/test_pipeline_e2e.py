"""End to end: the DVC pipeline on a tiny configuration in a temporary git repo.

`dvc repro`, `dvc exp run -S ...`, the queued ablation grid (`reenact ablate`) and torchrun must all land their MLflow runs
in the one store at the repo root (queued experiments run in a temporary copy under .dvc/tmp/exps).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY, tiny_raw

pytestmark = pytest.mark.slow

PROJECT_FILES = ["pipeline", "stages", "params.yaml", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore"]


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("repo")
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_raw(), sort_keys=False))
    # PYTHONDONTWRITEBYTECODE dropped: the stages write __pycache__ into their code deps, as on a user's machine
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DVC_", "MLFLOW_TRACKING")) and k != "PYTHONDONTWRITEBYTECODE"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@localhost")
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "tiny"], repo, env)
    return repo, env


def _runs(repo: Path):
    """The stages' MLflow runs (the evaluate stage's per-row runs and the ablation tables carry `kind`, not `stage`)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["reenact"])
    return runs[runs["tags.stage"].notna()] if "tags.stage" in runs else runs


STAGES = ["analyzer", "data", "evaluate", "finetune", "generator", "oracle", "prepare", "pretrain", "reenact", "report"]
AFTER_LOSS = ["evaluate", "finetune", "pretrain", "reenact", "report"]  # what reads `loss` and what depends on it
AFTER_HYBRID = sorted(AFTER_LOSS + ["oracle"])  # model.hybrid also shapes the oracle's space (not the encoder's file)


def test_repro_then_experiments_land_in_one_store(tiny_repo):
    repo, env = tiny_repo
    _run(["dvc", "repro"], repo, env)
    data = json.loads((repo / "metrics" / "data.json").read_text())
    prep = json.loads((repo / "metrics" / "prepare.json").read_text())
    gen = json.loads((repo / "metrics" / "generator.json").read_text())
    analyzer = json.loads((repo / "metrics" / "analyzer.json").read_text())
    assert data["identities"] == 5 and data["clips"] == 10
    assert prep["videos"]["rejected"] == 0
    assert prep["clips"]["train"] > 0 and prep["clips"]["test"] > 0 and prep["clips"]["cross_test"] > 0
    assert gen["resolution"] == 32 and gen["samples"]["finite"]
    assert analyzer["backend"] == "toy" and 0 <= analyzer["heldout"]["verification"]["accuracy"] <= 1
    assert set(analyzer["heldout"]["pose_mae_deg"]) == {"yaw", "pitch", "roll", "mean"}
    assert (repo / "models" / "generator.pt").is_file() and (repo / "models" / "analyzer.pt").is_file()
    assert (repo / "models" / "encoder.pt").is_file() and (repo / "data" / "reenacted" / "index.csv").is_file()
    for name in ("eval_same_id", "eval_cross_id", "eval_robustness"):
        assert json.loads((repo / "metrics" / f"{name}.json").read_text()), name
    tables = (repo / "reports" / "tables.md").read_text()
    assert "Table 1" in tables and "Table 2" in tables and "Table 3" in tables
    for png in ("analyzer.png", "data_samples.png", "prepare_samples.png", "generator/samples.png",
                "generator/reconstructions.png", "pretrain/losses.png", "finetune/losses.png"):
        assert (repo / "reports" / png).stat().st_size > 1000
    runs = _runs(repo)
    assert sorted(runs["tags.stage"]) == STAGES
    assert set(runs["status"]) == {"FINISHED"}
    # the baseline with its lock, as a user commits it: queued experiments start from it
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "repro"], repo, env)

    # nothing changed: nothing re-runs, no new runs
    _run(["dvc", "repro"], repo, env)
    assert len(_runs(repo)) == len(STAGES)
    # a fresh clone, or a queued experiment's copy, has no bytecode caches: the code deps must still match the lock
    caches = list(repo.rglob("__pycache__"))
    assert any(c.parent.name == "models" for c in caches), "the stages should have written bytecode"
    for cache in caches:
        shutil.rmtree(cache)
    assert json.loads(_run(["dvc", "status", "--json"], repo, env)) == {}

    # the user's knob: a loss weight re-runs the training stages and what follows them, nothing upstream
    _run(["dvc", "exp", "run", "-S", "loss.lambda_id=0.5"], repo, env)
    runs = _runs(repo)
    assert sorted(runs["tags.stage"]) == sorted(STAGES + AFTER_LOSS)

    # the ablation grid: a queued experiment (run in a temporary copy under .dvc/tmp/exps) that still logs here,
    # then the table in reports/ and in MLflow, with the workspace's run as the full model's row
    out = _run(["reenact", "ablate", "--seed", "0", "--row", "w/o Hybrid"], repo, env)
    runs = _runs(repo)
    assert sorted(runs["tags.stage"]) == sorted(STAGES + AFTER_LOSS + AFTER_HYBRID), runs[["tags.stage", "tags.dvc_exp_name"]]
    queued = runs[runs["tags.workdir"].str.contains(".dvc/tmp/exps", regex=False)]
    assert sorted(queued["tags.stage"]) == AFTER_HYBRID
    assert set(queued["params.model.hybrid"].dropna()) == {"False"}  # the stages that read `model`
    assert not list(repo.glob(".dvc/tmp/exps/**/mlflow.db"))
    names = set(runs["tags.dvc_exp_name"]) - {"(workspace)"}
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo, env))
    experiments = {e["name"] for base in shown for e in (base.get("experiments") or []) if e.get("name")}
    assert len(names) == 2 and names <= experiments, (names, experiments)
    table = (repo / "reports" / "ablations.md").read_text()
    for row in ("full", "w/o CMA", "CMA -> PTI", "w/o Hybrid"):
        assert f"| {row}" in table, (row, table)
    assert "compare-runs" in out

    # several processes: torchrun through the stage's own entry point; rank 0 alone writes and logs
    before = len(_runs(repo))
    _run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "stages.finetune"],
         repo, env)
    runs = _runs(repo)
    assert len(runs) == before + 1 and set(runs["status"]) == {"FINISHED"}
    assert json.loads((repo / "metrics" / "finetune.json").read_text())["steps"] == TINY["finetune.iters"]
