"""End to end: the DVC pipeline on a tiny configuration in a temporary git repo.

`dvc repro`, `dvc exp run -S ...` and a queued pair of experiments must all land their MLflow runs
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

from tests.conftest import REPO, TINY

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
    params = yaml.safe_load((repo / "params.yaml").read_text())
    from pipeline.config import set_dotted

    for key, value in TINY.items():
        set_dotted(params, key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_TRACKING"))}
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
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["reenact"])


def test_repro_then_experiments_land_in_one_store(tiny_repo):
    repo, env = tiny_repo
    stages = ["analyzer", "data", "finetune", "generator", "prepare", "pretrain"]
    after_prepare = ["analyzer", "finetune", "generator", "prepare", "pretrain"]  # everything downstream of `prepare`
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
    assert (repo / "data" / "prepared" / "manifest.csv").is_file()
    assert (repo / "models" / "generator.pt").is_file() and (repo / "models" / "analyzer.pt").is_file()
    for png in ("analyzer.png", "data_samples.png", "prepare_samples.png", "generator/samples.png", "generator/reconstructions.png"):
        assert (repo / "reports" / png).stat().st_size > 1000
    runs = _runs(repo)
    assert sorted(runs["tags.stage"]) == stages
    assert set(runs["status"]) == {"FINISHED"}

    # nothing changed: nothing re-runs, no new runs
    _run(["dvc", "repro"], repo, env)
    assert len(_runs(repo)) == 6

    # a changed `prepare` param re-runs `prepare` and what depends on its output, not `data`
    _run(["dvc", "exp", "run", "-S", "prepare.mask_dilation=0.1"], repo, env)
    runs = _runs(repo)
    assert sorted(runs["tags.stage"]) == sorted(stages + after_prepare)

    # the user's knob: a loss weight re-runs the two training stages and nothing upstream
    _run(["dvc", "exp", "run", "-S", "loss.lambda_id=0.5"], repo, env)
    runs = _runs(repo)
    assert sorted(runs["tags.stage"]) == sorted(stages + after_prepare + ["finetune", "pretrain"])

    _run(["dvc", "exp", "run", "-S", "data.n_identities=6"], repo, env)
    _run(["dvc", "exp", "run", "--queue", "-S", "data.n_identities=4"], repo, env)
    _run(["dvc", "exp", "run", "--queue", "-S", "data.n_identities=7"], repo, env)
    _run(["dvc", "exp", "run", "--run-all"], repo, env)

    runs = _runs(repo)
    assert len(runs) == 6 + 5 + 2 + 3 * 6, runs[["tags.stage", "tags.dvc_exp_name"]]
    assert set(runs["status"]) == {"FINISHED"}
    names = set(runs["tags.dvc_exp_name"]) - {"(workspace)"}
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], repo, env))
    experiments = {e["name"] for base in shown for e in (base.get("experiments") or []) if e.get("name")}
    assert len(names) == 5 and names <= experiments, (names, experiments)
    stage_sets = sorted(tuple(sorted(runs.loc[runs["tags.dvc_exp_name"] == name, "tags.stage"])) for name in names)
    assert stage_sets == sorted([tuple(after_prepare), ("finetune", "pretrain"), *[tuple(stages)] * 3])
    identities = sorted(float(v) for v in runs.loc[runs["tags.stage"] == "data", "params.data.n_identities"])
    assert identities == [4, 5, 6, 7]
    queued = runs[runs["tags.workdir"].str.contains(".dvc/tmp/exps", regex=False)]
    assert len(queued) == 12  # the queued pair ran in temporary copies and still logged here
    assert not list(repo.glob(".dvc/tmp/exps/**/mlflow.db"))
