"""The one stage runner: what every DVC stage shares, so that `stages/<name>.py` is an I/O shell around one
library call.

    STAGE = Stage("data", run, sections=("seed", "split", "data"))   # in stages/data.py
    STAGE.execute()                # params.yaml of the workspace, validated; the MLflow run; outputs
    STAGE.execute(params=p, root=tmp, progress=False)   # a test: shrunk params, its own folder
    python -m stages.data [--dry-run]                     # what dvc.yaml runs

The runner loads and validates params (or takes a `Params` object), hands the stage a `StageContext` whose
`params` exposes only the sections the stage declares (the same list as its `params:` in dvc.yaml: a test checks
both), logs the resolved sections, handles `--dry-run`, opens the MLflow run, writes `metrics/<name>.json` and
`metrics/<name>_history.csv` (one global `step`), logs metrics, artifacts and tags, and turns user errors into one
message and exit status 2. Timings go to MLflow only: DVC outputs must be byte-reproducible.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from pipeline.config import Params, load_params
from pipeline.io import write_json, write_text
from pipeline.paths import METRICS, workspace


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that are the user's to fix (bad params, missing asset or data, bad input): one message, exit 2."""
    from pipeline.errors import UserError

    return UserError, FileNotFoundError, ValueError, MemoryError


class UndeclaredParams(AttributeError):
    """A stage read a params section it does not declare (DVC would not re-run it when that section changes)."""


class ParamsView:
    """A `Params` that answers only for the sections a stage declares."""

    def __init__(self, params: Params, sections: Iterable[str], stage: str):
        self._params, self._sections, self._stage = params, frozenset(sections), stage

    def whole_for_tags(self) -> Params:
        """Every section, for MLflow tags that name a run's configuration (e.g. its ablation grid) only: what a
        stage writes must depend on its declared sections alone, or DVC would not re-run it when the rest changes."""
        return self._params

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if key not in self._sections:
            raise UndeclaredParams(
                f"stage `{self._stage}` reads params section {key!r} but does not declare it: add it to the stage's "
                f"`sections` (stages/{self._stage}.py) and to its `params:` in dvc.yaml")
        return getattr(self._params, key)


@dataclass
class StageResult:
    metrics: dict[str, Any]  # -> metrics/<stage>.json (a DVC metric) and MLflow
    history: list[dict] | None = None  # per-step rows with a global `step` -> metrics/<stage>_history.csv, MLflow
    artifacts: list[Path] = field(default_factory=list)  # files / folders logged to MLflow
    tags: dict[str, Any] = field(default_factory=dict)  # MLflow tags (the networks behind the numbers, ...)
    timings: dict[str, float] = field(default_factory=dict)  # MLflow only: never in a DVC output


@dataclass
class StageContext:
    name: str
    params: ParamsView  # only the declared sections
    root: Path  # the workspace: every output path is relative to it
    progress: bool  # progress bars

    @property
    def section(self) -> Any:
        """The stage's own params section (params.<name>)."""
        return getattr(self.params, self.name)

    def asset(self, name: str) -> Path:
        """The verified path of a declared asset (AssetError naming the file and how to get it)."""
        from pipeline.assets import require

        return require(name, self.params.assets)


@dataclass(frozen=True)
class Stage:
    name: str  # = the dvc.yaml stage = stages/<name>.py = the params.yaml section
    run: Callable[[StageContext], StageResult]
    sections: tuple[str, ...]  # params sections read (assets included, if any): dvc.yaml's `params:` of the stage
    assets: Callable[[Params], list[str]] = lambda params: []  # asset names it uses under these params
    history: bool = False  # it declares metrics/<name>_history.csv (written empty when nothing was trained)

    def resolved(self, params: Params) -> dict[str, Any]:
        """What the stage runs with: its declared sections (assets: only those it uses), as plain data."""
        out: dict[str, Any] = {}
        for key in self.sections:
            if key == "assets":
                used = self.assets(params)
                out[key] = {a: params.assets[a].model_dump(mode="json") if a in params.assets else None for a in used}
            else:
                value = getattr(params, key)
                out[key] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
        return out

    def execute(self, params: Params | None = None, root: str | os.PathLike | None = None, dry_run: bool = False,
                progress: bool = True) -> dict[str, Any]:
        """Run the stage (see the module docstring); returns its metrics (the resolved sections for a dry run)."""
        from pipeline.tracking import stage_run

        root = Path(root) if root is not None else workspace()
        params = params if params is not None else load_params(root / "params.yaml")
        logged = self.resolved(params)
        if dry_run:
            print(yaml.safe_dump(logged, sort_keys=False), end="")
            return logged
        ctx = StageContext(self.name, ParamsView(params, self.sections, self.name), root, progress)
        with stage_run(self.name, logged, root) as run:
            start = time.perf_counter()
            result = self.run(ctx)
            write_json(root / METRICS / f"{self.name}.json", result.metrics)
            if result.history is not None or self.history:
                write_text(root / METRICS / f"{self.name}_history.csv", history_csv(result.history or []))
                for row in result.history or []:
                    run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
            run.log_metrics(result.metrics)
            run.log_metrics({"time": {**result.timings, "stage_seconds": round(time.perf_counter() - start, 2)}})
            run.set_tags(result.tags)
            for path in result.artifacts:
                run.log_artifact(path)
        return result.metrics

    def main(self, argv: list[str] | None = None) -> None:
        """`python -m stages.<name> [--dry-run]`: user errors print one line and exit with status 2."""
        argv = sys.argv[1:] if argv is None else argv
        unknown = [a for a in argv if a != "--dry-run"]
        if unknown:
            print(f"error: unknown argument(s) {' '.join(unknown)}; usage: python -m stages.{self.name} [--dry-run]",
                  file=sys.stderr)
            raise SystemExit(2)
        try:
            self.execute(dry_run="--dry-run" in argv)
        except user_errors() as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None


def history_csv(rows: list[dict]) -> str:
    """The per-step history as CSV; `step` must strictly increase (one global step per stage, so plots don't fold)."""
    import pandas as pd

    steps = [int(r["step"]) for r in rows]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"history steps must strictly increase (one global step per stage), got {steps[:10]}...")
    return pd.DataFrame(rows).to_csv(index=False, lineterminator="\n") if rows else "step\n"


def load_stage(name: str) -> Stage:
    """The `Stage` defined in stages/<name>.py (the CLI finds stages by name, so it imports none of them)."""
    import importlib

    try:
        module = importlib.import_module(f"stages.{name}")
    except ModuleNotFoundError as e:
        raise ValueError(f"no stage {name!r} (no stages/{name}.py)") from e
    return module.STAGE
