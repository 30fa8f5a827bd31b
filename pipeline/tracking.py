"""MLflow for every stage: one sqlite store at the DVC root, one experiment, runs tagged with their origin.

DVC sets DVC_ROOT for stage commands to the user's repository, also for queued experiments that run
in a temporary copy under .dvc/tmp/exps, so every run (repro, exp run, queued) lands in one store.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline.paths import REPO_ROOT

EXPERIMENT = "reenact"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def store_root(workspace: Path | None = None) -> Path:
    """Where mlflow.db lives: DVC's root (also for queued experiments), else the stage's workspace, else the repo."""
    return Path(os.environ.get("DVC_ROOT") or workspace or REPO_ROOT).resolve()


def tracking_uri(root: Path | None = None) -> str:
    return f"sqlite:///{(root or store_root()) / 'mlflow.db'}"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their string form."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def git_revision(cwd: Path | None = None) -> str:
    baseline = os.environ.get("DVC_EXP_BASELINE_REV")
    if baseline:
        return baseline
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ensure_experiment(mlflow: Any, root: Path) -> str:
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri())
    except MlflowException:  # created meanwhile by a parallel experiment
        return mlflow.get_experiment_by_name(EXPERIMENT).experiment_id


class StageRun:
    """What a stage logs while its run is open: metrics (flattened, numeric only) and artifacts."""

    def __init__(self, mlflow: Any):
        self._mlflow = mlflow

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self._mlflow.log_metrics(numeric, step=step)

    def log_artifact(self, path: str | os.PathLike, folder: str | None = None) -> None:
        if Path(path).is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=folder)
        elif Path(path).exists():
            self._mlflow.log_artifact(str(path), artifact_path=folder)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, Any], workspace: Path | None = None) -> Iterator[StageRun]:
    """Open an MLflow run for `stage`, tagged with the stage, the DVC experiment and the git revision,
    with `params` logged flattened. The run is marked FAILED if the stage raises."""
    import mlflow

    root = store_root(workspace)
    mlflow.set_tracking_uri(tracking_uri(root))
    experiment_id = ensure_experiment(mlflow, root)
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    tags = {
        "stage": stage,
        "dvc_exp_name": exp_name or "(workspace)",
        "git_revision": git_revision(),
        "workdir": str(Path.cwd()),
    }
    run_name = f"{stage}:{exp_name}" if exp_name else stage
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags):
        flat = {k: (str(v) if isinstance(v, (list, tuple, dict)) or v is None else v) for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            mlflow.log_params(dict(items[i : i + 100]))
        yield StageRun(mlflow)
