"""The paper's ablation grid (Tables 1-2, bottom) as DVC experiments, and its table from the MLflow store.

Rows. Three of the five rows need their own training; two reuse the full model's encoder at re-enactment time:

    full          loss.id_reg true,  model.hybrid true,  adaptation cma
    w/o ID reg    loss.id_reg false  (Eq. 9 off)
    w/o Hybrid    model.hybrid false (S_F a W+ offset instead of a StyleSpace code)
    w/o CMA       the full model, adaptation none
    CMA -> PTI    the full model, adaptation pti

`row_name` is the one place a row's name comes from (the `evaluate` stage tags its MLflow runs with it).

Which runs make one table. Every `evaluate` row run carries `params_hash` (all of params.yaml, defaults filled) and
`grid_hash` (the same without what the grid varies: `seed`, the two switches, `reenact.adaptations`, and the
`report` section). A table is the runs of one grid_hash: its rows, each over the seeds found; for a (row, seed)
seen more than once, the newest finished run counts. The grid of the workspace's params.yaml (plus any `-S`
overrides) is the default, so a table never mixes settings.

Spread and significance. Per row: the mean over seeds of each seed's aggregate, and the standard deviation over
seeds (ddof 1; one seed: that run's bootstrap 95% CI instead). A row differs significantly from `full` when the
harness's paired test (pipeline/evaluation/stats.py: two-sided sign-flip permutation test of paired differences)
gives p < alpha, paired on (seed, video): the same seed renders the same world and the same held-out videos for
every row. Set metrics (FID / FVD in the same and cross protocols) have no per-video values: they pair on seeds.

Reference rows (copy source, copy driving, ground truth, oracle, ...: whatever the `evaluate` results' `references`
dict holds, read generically): from the `evaluate` stage runs behind `full`'s row runs (their artifact
<protocol>.json), mean over those seeds and the same spread; no test. A reference the runs lack is absent.

What each row re-ran (`row_plan`): the keys its switches change against the grid's own params (params.yaml with the
grid's -S / profile overrides), mapped through dvc.yaml to the stages whose `params` include them, their
downstream stages, restricted to the stages `evaluate`'s numbers come from. A row whose switch the shipped
pre-trained encoder cannot honour (`pretrain.source: native` and a changed `model` key: its heads do not fit)
is queued with `pretrain.source=train` and says so; a loss switch under a shipped pretrain acts from `finetune`.

Outputs (beside each other, atomically): ablations.md, ablations.html and ablations.json (`table_json`: every row,
reference row, protocol and metric with mean / spread / paired test, the stages of each row; sorted keys, numbers
rounded to 6 significant digits, no timing, date or path; `read_ablations_json` checks one).

The MLflow view: one summary run per row (tag kind=ablation_summary, run name = the row), under a table run
(kind=ablation_table), whose metrics are the table's cells; `compare_url` gives MLflow's compare-runs page of
those runs, where the metric values are rows of a table (the experiment page hides metric columns by default).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pipeline.errors import UserError

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # reading a table downloads one small file per run

# -- rows ---------------------------------------------------------------------------------------------------

# the model rows: each needs its own trained encoder (params overrides of one DVC experiment)
MODEL_ROWS: dict[str, dict[str, Any]] = {
    "full": {"loss.id_reg": True, "model.hybrid": True},
    "w/o ID reg": {"loss.id_reg": False, "model.hybrid": True},
    "w/o Hybrid": {"loss.id_reg": True, "model.hybrid": False},
}
ADAPTATION_SUFFIX = {"cma": None, "none": "w/o CMA", "pti": "CMA -> PTI"}  # rows that reuse a model's encoder
ROW_ORDER = ("full", "w/o ID reg", "w/o Hybrid", "w/o CMA", "CMA -> PTI")
FULL = "full"
# what a grid varies (left out of grid_hash); `report` changes no number; `pretrain.source`: a row the shipped
# pre-trained encoder cannot serve is queued with `train` (forced_overrides) and stays in its grid
GRID_VARIES = ("seed", "loss.id_reg", "model.hybrid", "reenact.adaptations", "report", "pretrain.source")
# what each switch means, for the table's "re-trained / re-ran" column
SWITCH_NOTES = {"loss.id_reg": "Eq. 9 off",
                "model.hybrid": "E_F's output space changes: S_F a W+ offset instead of a StyleSpace code"}


class AblationError(UserError, ValueError):
    """No runs for a table, a bad row name, a failed `dvc exp run`: the message says what to run."""


def row_name(id_reg: bool, hybrid: bool, adaptation: str = "cma") -> str:
    """The ablation row of a configuration: 'full', 'w/o ID reg', 'w/o Hybrid', 'w/o CMA', 'CMA -> PTI', or their
    combinations joined by ', ' (e.g. 'w/o ID reg, w/o CMA': the w/o-ID-reg model without adaptation)."""
    parts = []
    if not id_reg:
        parts.append("w/o ID reg")
    if not hybrid:
        parts.append("w/o Hybrid")
    if adaptation in ADAPTATION_SUFFIX:
        if ADAPTATION_SUFFIX[adaptation]:
            parts.append(ADAPTATION_SUFFIX[adaptation])
    else:
        parts.append(f"adaptation {adaptation}")
    return ", ".join(parts) or FULL


def row_config(name: str) -> tuple[bool, bool, str]:
    """The inverse of row_name: (id_reg, hybrid, adaptation) of a row's name."""
    parts = [p.strip() for p in name.split(",")]
    suffix = {v: k for k, v in ADAPTATION_SUFFIX.items() if v}
    adaptation = "cma"
    for part in parts:
        if part in suffix:
            adaptation = suffix[part]
        elif part.startswith("adaptation "):
            adaptation = part[len("adaptation "):]
    return "w/o ID reg" not in parts, "w/o Hybrid" not in parts, adaptation


def row_of_params(params: Any, adaptation: str = "cma") -> str:
    """row_name from a validated Params (or a ParamsView declaring `loss` and `model`)."""
    return row_name(bool(params.loss.id_reg), bool(params.model.hybrid), adaptation)


def row_sort_key(name: str) -> tuple[int, str]:
    return (ROW_ORDER.index(name), "") if name in ROW_ORDER else (len(ROW_ORDER), name)


# -- which runs belong together -------------------------------------------------------------------------------

def _canonical(tree: Mapping[str, Any]) -> str:
    return json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)


def _drop(tree: Mapping[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for key in parents:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    if isinstance(node, dict):
        node.pop(leaf, None)


def params_hash(tree: Mapping[str, Any]) -> str:
    """12 hex digits of sha256 over the whole params tree (plain data, defaults filled), key order ignored."""
    return hashlib.sha256(_canonical(tree).encode()).hexdigest()[:12]


def grid_hash(tree: Mapping[str, Any]) -> str:
    """params_hash without what the ablation grid varies (GRID_VARIES): the same for every row and seed of a grid."""
    rest = json.loads(_canonical(tree))
    for key in GRID_VARIES:
        _drop(rest, key)
    return params_hash(rest)


def params_tree(params: Any) -> dict[str, Any]:
    """A validated Params as plain data (what the hashes are taken over)."""
    return params.model_dump(mode="json")


# -- what each row re-trains / re-runs (from dvc.yaml) ---------------------------------------------------------

NUMBERS_STAGE = "evaluate"  # the stage the table's numbers come from: a row's stages are it and its ancestors
# stages that train a network, and the params key that can make them load a shipped one instead (None: always train)
TRAINING_SOURCE = {"generator": "generator.source", "analyzer": "analyzer.source", "pretrain": "pretrain.source",
                   "finetune": None}
SHIPPED_NOUN = {"pretrain": "pre-trained encoder", "analyzer": "analyzer", "generator": "generator"}
SHIPPED_ENCODER_FITS_NOT = ("model",)  # sections the shipped pre-trained encoder is checked against (its heads)


def get_dotted(tree: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def _key_overlap(a: str, b: str) -> bool:
    """Dotted params keys that touch: equal, or one a section of the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _path_overlap(a: str, b: str) -> bool:
    a, b = a.strip("/").removeprefix("./"), b.strip("/").removeprefix("./")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


@dataclass(frozen=True)
class StageSpec:
    """One stage of dvc.yaml: the params keys it declares, its deps and its outputs (interpolated)."""

    name: str
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]


def read_stages(dvc_yaml: str | os.PathLike, tree: Mapping[str, Any]) -> dict[str, StageSpec]:
    """The stages of dvc.yaml in file order, `${a.b}` filled from the params tree."""
    import yaml

    def fill(text: str) -> str:
        return re.sub(r"\$\{\s*([^}]+?)\s*\}", lambda m: str(get_dotted(tree, m.group(1), m.group(0))), str(text))

    def first(entry: Any) -> str:
        return fill(next(iter(entry)) if isinstance(entry, Mapping) else entry)

    data = yaml.safe_load(Path(dvc_yaml).read_text()) or {}
    out = {}
    for name, stage in (data.get("stages") or {}).items():
        stage = stage or {}
        params: list[str] = []
        for entry in stage.get("params") or []:
            if isinstance(entry, Mapping):  # {file: [keys]}: keys of params.yaml only
                params += [fill(k) for f, keys in entry.items() if f == "params.yaml" for k in keys or []]
            else:
                params.append(fill(entry))
        outs = [first(o) for key in ("outs", "metrics", "plots") for o in stage.get(key) or []]
        out[name] = StageSpec(name, tuple(params), tuple(first(d) for d in stage.get("deps") or []), tuple(outs))
    return out


def stages_affected(changed: Iterable[str], stages: Mapping[str, StageSpec], target: str = NUMBERS_STAGE) -> list[str]:
    """The stages that re-run when these params keys change: those declaring them and everything downstream
    (a dep under another affected stage's output), restricted to `target` and its ancestors; dvc.yaml order."""
    changed = list(changed)
    affected = {n for n, st in stages.items() if any(_key_overlap(k, p) for k in changed for p in st.params)}
    grew = True
    while grew:
        grew = False
        for name, st in stages.items():
            if name not in affected and any(_path_overlap(d, o) for d in st.deps for a in affected
                                            for o in stages[a].outs):
                affected.add(name)
                grew = True
    keep = set(stages)
    if target in stages:
        keep, todo = {target}, [target]
        while todo:
            st = stages[todo.pop()]
            for name, other in stages.items():
                if name not in keep and any(_path_overlap(d, o) for d in st.deps for o in other.outs):
                    keep.add(name)
                    todo.append(name)
    return [n for n in stages if n in affected and n in keep]


def forced_overrides(base: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """What a row must set beyond its switches so that it runs at all: with `pretrain.source: native` the shipped
    encoder is checked against the `model` section, so a row changing a model key trains its own
    (`pretrain.source=train`). `settings`: the row's dotted keys that differ from `base`."""
    if get_dotted(base, "pretrain.source") == "native" and \
            any(_key_overlap(k, s) for k in settings for s in SHIPPED_ENCODER_FITS_NOT):
        return {"pretrain.source": "train"}
    return {}


@dataclass
class RowPlan:
    """What one row re-trained / re-ran beyond the grid's own pipeline at the same seed."""

    row: str
    encoder_of: str  # the model row whose trained encoder the row re-enacts with
    adaptation: str
    changes: dict[str, Any]  # dotted params key -> the row's value, where it differs from the grid's params
    forced: dict[str, Any]  # of those, what the row must set to run at all (forced_overrides)
    rerun: list[str]  # stages, dvc.yaml order
    retrained: list[str]  # of those, the ones that train a network
    text: str

    def as_json(self) -> dict[str, Any]:
        return {"encoder_of": self.encoder_of, "adaptation": self.adaptation, "changes": dict(self.changes),
                "forced": dict(self.forced), "rerun": list(self.rerun), "retrained": list(self.retrained),
                "text": self.text}


def _setting(key: str, value: Any) -> str:
    return f"{key}={_yaml_value(value)}"


def row_plan(row: str, base: Mapping[str, Any], stages: Mapping[str, StageSpec]) -> RowPlan:
    """The stages a row re-trains / re-runs (module docstring), with its text for the table."""
    id_reg, hybrid, adaptation = row_config(row)
    encoder_of = row_name(id_reg, hybrid)
    switches = {"loss.id_reg": id_reg, "model.hybrid": hybrid}
    changes = {k: v for k, v in switches.items() if get_dotted(base, k) != v}
    forced = forced_overrides(base, changes)
    changes.update(forced)
    rerun = stages_affected(changes, stages)
    effective = json.loads(_canonical(base))
    from pipeline.config import set_dotted

    for k, v in changes.items():
        set_dotted(effective, k, v)
    retrained = [s for s in rerun if s in TRAINING_SOURCE
                 and (TRAINING_SOURCE[s] is None or get_dotted(effective, TRAINING_SOURCE[s]) == "train")]
    labels = []
    for s in rerun:
        key = TRAINING_SOURCE.get(s)
        if s in TRAINING_SOURCE and s not in retrained:
            declared = [_setting(k, v) for k, v in changes.items() if any(_key_overlap(k, p) for p in stages[s].params)]
            later = next((t for t in retrained if rerun.index(t) > rerun.index(s)), None)
            note = (f"{_setting(key, get_dotted(effective, key))}: the shipped {SHIPPED_NOUN.get(s, s)} reloaded, not "
                    f"re-trained")
            if declared and later:
                note += f"; {', '.join(declared)} acts from {later} on"
            labels.append(f"{s} ({note})")
        elif key and key in forced:
            fits = ", ".join(_setting(k, v) for k, v in changes.items() if k not in forced)
            labels.append(f"{s} (re-trained: {_setting(key, forced[key])}, the shipped encoder does not fit {fits})")
        else:
            labels.append(s)
    why = "; ".join(_setting(k, v) + (f": {SWITCH_NOTES[k]}" if k in SWITCH_NOTES else "")
                    for k, v in changes.items() if k not in forced)
    model_text = ", ".join(labels) + (f" ({why})" if why else "")
    if adaptation == "cma":
        text = model_text or "none beyond the default"
        if not rerun and get_dotted(base, "pretrain.source") == "native":  # a row that trains its own differs
            text += " (pretrain.source=native: the shipped pre-trained encoder, not trained here, for every seed)"
    elif not rerun:
        text = (f"no re-training: another adaptation ({adaptation}) of {encoder_of}'s encoder, re-enacted and scored "
                f"in {encoder_of}'s reenact / evaluate runs")
    else:
        text = f"as {encoder_of}: {model_text}; adaptation {adaptation}"
    return RowPlan(row, encoder_of, adaptation, changes, forced, rerun, retrained, text)


def row_plans(rows: Iterable[str], base: Mapping[str, Any], dvc_yaml: str | os.PathLike) -> dict[str, RowPlan]:
    """row_plan of each row, the stages read from dvc.yaml with the grid's params `base` (a plain params tree)."""
    stages = read_stages(dvc_yaml, base)
    return {row: row_plan(row, base, stages) for row in rows}


# -- queueing the grid as DVC experiments ----------------------------------------------------------------------

def _yaml_value(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
    if text.endswith("..."):
        text = text[:-3].strip()
    return text.replace(", ", ",").replace(": ", ":")


def grid_commands(
    rows: Sequence[str] = tuple(MODEL_ROWS),  # model rows to train (the adaptation rows come with `full`)
    seeds: Sequence[int] = (0, 1),
    overrides: Mapping[str, Any] | None = None,  # extra -S key=value for every experiment (a profile, ...)
    adaptations: Mapping[str, Sequence[str]] | None = None,  # reenact.adaptations of the grid's params: given, the
    # rows other than full re-enact with cma only where a protocol has it (w/o CMA and CMA -> PTI come from full)
    base: Mapping[str, Any] | None = None,  # the grid's params tree (params.yaml + overrides): given, a row the
    # shipped pre-trained encoder cannot serve also gets forced_overrides (pretrain.source=train)
) -> list[list[str]]:
    """The `dvc exp run --queue -S ...` commands of the grid, one per (model row, seed)."""
    unknown = [r for r in rows if r not in MODEL_ROWS]
    if unknown:
        raise AblationError(f"unknown ablation row(s) {unknown}; rows that need training: {', '.join(MODEL_ROWS)} "
                            f"(w/o CMA and CMA -> PTI come with `full`)")
    if not seeds:
        raise AblationError("give at least one seed")
    overrides = dict(overrides or {})
    clash = sorted(set(overrides) & ({"seed"} | {k for r in MODEL_ROWS.values() for k in r}))
    if clash:
        raise AblationError(f"-S {', '.join(clash)}: set by the grid itself (use --row / --seed)")
    commands = []
    for row in rows:
        for seed in seeds:
            settings = {**overrides, **MODEL_ROWS[row], "seed": int(seed)}
            if base is not None:
                changed = {k: v for k, v in MODEL_ROWS[row].items() if get_dotted(base, k) != v}
                settings.update(forced_overrides(base, changed))  # over a -S too: the row could not run
            if adaptations and row != FULL:
                for protocol, names in adaptations.items():
                    if "cma" in names and list(names) != ["cma"]:
                        settings[f"reenact.adaptations.{protocol}"] = ["cma"]
            cmd = ["dvc", "exp", "run", "--queue"]
            for key, value in settings.items():
                cmd += ["-S", f"{key}={_yaml_value(value)}"]
            commands.append(cmd)
    return commands


def run_grid(commands: list[list[str]], jobs: int = 1, cwd: str | os.PathLike | None = None, echo=print) -> None:
    """Queue the commands, then `dvc exp run --run-all --jobs N`; AblationError with DVC's output on a failure."""
    for cmd in [*commands, ["dvc", "exp", "run", "--run-all", "--jobs", str(int(jobs))]]:
        echo("$ " + " ".join(shlex.quote(c) for c in cmd))
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if done.returncode != 0:
            raise AblationError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{done.stdout[-2000:]}"
                                f"{done.stderr[-2000:]}")


# -- the table ----------------------------------------------------------------------------------------------

PROTOCOL_PREFIX = {"same": "same", "cross": "cross", "robustness": "robustness"}


@dataclass
class RowRun:
    """One `evaluate` row run: a row of one seed."""

    run_id: str
    row: str
    seed: int
    aggregate: dict[str, dict[str, float]]  # "<protocol>.<metric>" -> {"mean", "lo", "hi"}
    per_video: dict[str, dict[str, float]]  # "<protocol>.<metric>" -> {video: value}
    start_time: int = 0
    parent_id: str = ""  # the `evaluate` stage run it is nested under (its artifacts hold the reference rows)


@dataclass
class ReferenceRun:
    """The reference rows of one seed's `evaluate` results (references_from_results)."""

    run_id: str  # the evaluate stage run (or a label)
    seed: int
    rows: dict[str, dict[str, dict[str, float]]]  # reference key -> "<protocol>.<metric>" -> {"mean", "lo", "hi"}


def references_from_results(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{protocol: the evaluate stage's results of it (reports/evaluate/<protocol>.json)} -> {reference key:
    {"<protocol>.<metric>": {"mean", "lo", "hi"}}}, every key of each result's `references` dict (copy_source,
    copy_driving, ground_truth, oracle, ...) in the results' order, finite means only."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for protocol, result in results.items():
        for ref, rows in (result.get("references") or {}).items():
            for metric, agg in ((rows or {}).get("aggregate") or {}).items():
                if not isinstance(agg, Mapping) or not _finite(agg.get("mean")):
                    continue
                ci = agg.get("ci95") or [None, None]
                cell = {"mean": float(agg["mean"])}
                if len(ci) == 2 and _finite(ci[0]) and _finite(ci[1]):
                    cell.update(lo=float(ci[0]), hi=float(ci[1]))
                out.setdefault(str(ref), {})[f"{protocol}.{metric}"] = cell
    return out


@dataclass
class Cell:
    mean: float
    spread: float  # sd over seeds (n_seeds >= 2), else nan
    lo: float  # the single run's CI (n_seeds == 1), else nan
    hi: float
    n_seeds: int
    p_value: float = float("nan")  # vs full (paired); nan for full itself or when nothing pairs
    difference: float = float("nan")  # mean difference row - full over the paired units
    n_pairs: int = 0
    significant: bool = False


@dataclass
class AblationTable:
    grid_hash: str
    alpha: float
    rows: dict[str, dict[str, Cell]]  # row -> "<protocol>.<metric>" -> Cell
    seeds: dict[str, list[int]]  # row -> seeds
    runs: dict[str, list[str]]  # row -> run ids used
    metrics: list[str] = field(default_factory=list)  # "<protocol>.<metric>", in table order
    references: dict[str, dict[str, Cell]] = field(default_factory=dict)  # reference key -> metric -> Cell
    reference_seeds: dict[str, list[int]] = field(default_factory=dict)
    reference_runs: dict[str, list[str]] = field(default_factory=dict)
    plans: dict[str, RowPlan] = field(default_factory=dict)  # row -> what it re-ran (ablation_report fills it)
    overrides: dict[str, Any] = field(default_factory=dict)  # the grid's -S / profile overrides

    def key(self) -> str:
        """What identifies the table's content (the runs used and alpha): reused MLflow summary runs match it."""
        content: dict[str, Any] = {"grid": self.grid_hash, "alpha": self.alpha, "runs": self.runs}
        if self.reference_runs:
            content["references"] = self.reference_runs
        return params_hash(content)


def _higher_is_better(metric: str) -> bool | None:
    from pipeline.evaluation.registry import METRICS

    spec = METRICS.get(metric.split(".", 1)[-1])
    return None if spec is None else spec.higher_is_better


def latest_runs(runs: Sequence[RowRun]) -> dict[str, list[RowRun]]:
    """row -> its runs, one per seed (the newest by start_time, then run id), rows in the paper's order."""
    latest: dict[tuple[str, int], RowRun] = {}
    for r in sorted(runs, key=lambda r: (r.start_time, r.run_id)):
        latest[(r.row, r.seed)] = r
    by_row: dict[str, list[RowRun]] = {}
    for (row, _), r in sorted(latest.items(), key=lambda kv: (row_sort_key(kv[0][0]), kv[0][1])):
        by_row.setdefault(row, []).append(r)
    return by_row


def reference_source(by_row: Mapping[str, list[RowRun]]) -> list[RowRun]:
    """The row runs whose evaluate results give the reference rows: `full`'s (else the first row's)."""
    return list(by_row.get(FULL) or next(iter(by_row.values()), []))


def _spread_cell(aggregates: list[Mapping[str, float]]) -> Cell:
    """Mean over seeds of each seed's mean, sd over seeds (>= 2 seeds) or the one seed's CI."""
    vals = [a["mean"] for a in aggregates]
    n = len(vals)
    mean = float(sum(vals) / n) if n else float("nan")
    spread = _sd(vals) if n >= 2 else float("nan")
    lo = hi = float("nan")
    if n == 1:
        lo, hi = _num(aggregates[0].get("lo")), _num(aggregates[0].get("hi"))
    return Cell(mean, spread, lo, hi, n)


def build_table(runs: Sequence[RowRun], alpha: float = 0.05, grid: str = "", resamples: int = 10000,
                seed: int = 0, references: Sequence[ReferenceRun] = ()) -> AblationTable:
    """The ablation table of these runs (module docstring): per row, mean and spread over seeds, and the paired
    test against `full` per metric. For a (row, seed) with several runs the newest (start_time, then run id) is used.
    `references`: the reference rows of the seeds (one ReferenceRun per seed; the last given counts), tabulated
    over the table's metrics like a row, without a test."""
    from pipeline.evaluation.stats import paired_test

    if not runs:
        raise AblationError("no evaluate runs to tabulate")
    by_row = latest_runs(runs)
    metrics: list[str] = []
    for rr in by_row.values():
        for r in rr:
            metrics += [m for m in r.aggregate if m not in metrics]
    order = {p: i for i, p in enumerate(PROTOCOL_PREFIX)}
    metrics.sort(key=lambda m: order.get(m.split(".", 1)[0], 99))  # stable: each protocol's own order kept
    table: dict[str, dict[str, Cell]] = {}
    full = {r.seed: r for r in by_row.get(FULL, [])}
    for row, rr in by_row.items():
        cells = {}
        for m in metrics:
            cell = _spread_cell([r.aggregate[m] for r in rr if m in r.aggregate
                                 and _finite(r.aggregate[m].get("mean"))])
            if row != FULL and full:
                a, b = _paired_units(rr, full, m)
                if a:
                    test = paired_test(a, b, resamples=resamples, seed=seed)
                    cell.p_value, cell.difference, cell.n_pairs = test["p_value"], test["mean_difference"], test["n"]
                    cell.significant = bool(_finite(cell.p_value) and cell.p_value < alpha)
            cells[m] = cell
        table[row] = cells
    out = AblationTable(grid, alpha, table, {row: [r.seed for r in rr] for row, rr in by_row.items()},
                        {row: [r.run_id for r in rr] for row, rr in by_row.items()}, metrics)
    per_seed = {ref.seed: ref for ref in references}
    keys = list(dict.fromkeys(k for s in sorted(per_seed) for k in per_seed[s].rows))  # the results' order
    for key in keys:
        have = [per_seed[s] for s in sorted(per_seed) if key in per_seed[s].rows]
        cells = {m: _spread_cell([ref.rows[key][m] for ref in have if m in ref.rows[key]
                                  and _finite(ref.rows[key][m].get("mean"))]) for m in metrics}
        if any(c.n_seeds for c in cells.values()):
            out.references[key] = cells
            out.reference_seeds[key] = [ref.seed for ref in have]
            out.reference_runs[key] = [ref.run_id for ref in have]
    return out


def reference_label(key: str) -> str:
    """A reference row's name in the tables: its key in words (copy_source -> copy source)."""
    return key.replace("_", " ")


def _paired_units(rows: list[RowRun], full: dict[int, RowRun], metric: str) -> tuple[dict, dict]:
    """{unit: value} of the row and of full on the same units: (seed, video) where per-video values exist on both
    sides, else seeds (set metrics)."""
    a, b = {}, {}
    for r in rows:
        f = full.get(r.seed)
        if f is None:
            continue
        va, vb = r.per_video.get(metric) or {}, f.per_video.get(metric) or {}
        if va and vb:
            for video in sorted(set(va) & set(vb)):
                a[f"{r.seed}:{video}"], b[f"{r.seed}:{video}"] = va[video], vb[video]
        elif metric in r.aggregate and metric in f.aggregate:
            a[f"{r.seed}"], b[f"{r.seed}"] = _num(r.aggregate[metric]["mean"]), _num(f.aggregate[metric]["mean"])
    keep = [k for k in a if _finite(a[k]) and _finite(b[k])]
    return {k: a[k] for k in keep}, {k: b[k] for k in keep}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any) -> float:
    if isinstance(x, str) and x in ("inf", "-inf"):
        return float(x)
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else float("nan")


def _sd(values: Sequence[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


# -- formatting -------------------------------------------------------------------------------------------

def fmt(x: float, digits: int = 3) -> str:
    """A number with `digits` significant digits (0.0812, 17.6, 1.23e-05); '—' for NaN / None."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(float(f"{x:.{digits - 1}e}"))))  # of the rounded value: 0.99995 -> 1.00
    if magnitude < -4 or magnitude >= 6:
        return f"{x:.{digits - 1}e}"
    decimals = max(0, digits - 1 - magnitude)
    return f"{x:.{decimals}f}"


def cell_text(cell: Cell) -> str:
    """'mean ± sd' (several seeds) or 'mean [lo, hi]' (one seed), with '*' when significantly different from full."""
    if cell.n_seeds == 0:
        return "—"
    text = fmt(cell.mean)
    if cell.n_seeds >= 2:
        text += f" ± {fmt(cell.spread, 2)}"
    elif _finite(cell.lo) and _finite(cell.hi):
        text += f" [{fmt(cell.lo)}, {fmt(cell.hi)}]"
    return text + (" *" if cell.significant else "")


PROTOCOL_TITLE = {"same": "same identity (Table 1)", "cross": "cross identity (Table 2)",
                  "robustness": "one-shot robustness (Table 3)"}


def _protocol_rows(table: AblationTable, metrics: list[str]) -> dict[str, dict[str, Cell]]:
    """The rows with a value in one of these metrics: a protocol re-enacted only without CMA (robustness by
    default) has no `full` row, and the rows of the other protocols would be lines of dashes there."""
    return {row: cells for row, cells in table.rows.items() if any(cells[m].n_seeds for m in metrics)}


def _protocol_references(table: AblationTable, metrics: list[str]) -> dict[str, dict[str, Cell]]:
    """The reference rows with a value in one of these metrics, labelled as in the tables."""
    return {f"{reference_label(k)} (reference)": cells for k, cells in table.references.items()
            if any(cells[m].n_seeds for m in metrics)}


PLAN_HEADER = "re-trained / re-ran"


def _intro(table: AblationTable) -> list[str]:
    lines = [f"Grid `{table.grid_hash}`; rows: mean over seeds ± standard deviation over seeds (one seed: the "
             f"bootstrap 95% CI over videos in brackets). `*`: differs from `full` at p < {table.alpha} (two-sided "
             f"sign-flip permutation test, paired on (seed, video); set metrics such as FID / FVD pair on seeds)."]
    if table.references:
        lines.append("Reference rows (no model, no test): from the `evaluate` results of the runs behind `full`, "
                     "the same mean and spread over their seeds.")
    if table.plans:
        lines.append(f"`{PLAN_HEADER}`: the stages each row ran beyond the grid's own pipeline at the same seed "
                     f"(params.yaml with the grid's -S / profile overrides; each seed is its own world, where every "
                     f"stage runs once), from the keys its switches change and the stages of dvc.yaml that declare "
                     f"them, up to `{NUMBERS_STAGE}`.")
    return lines


def table_markdown(table: AblationTable, title: str = "Ablations") -> str:
    """reports/ablations.md: one table per protocol, rows in the paper's order, then the reference rows, and the
    significant differences."""
    lines = [f"# {title}", "", " ".join(_intro(table)), ""]
    plans = bool(table.plans)
    lines.append("| row | seeds | runs |" + (f" {PLAN_HEADER} |" if plans else ""))
    lines.append("|---|---|---|" + ("---|" if plans else ""))
    for row in table.rows:
        plan = table.plans.get(row)
        lines.append(f"| {row} | {', '.join(str(s) for s in table.seeds[row])} | "
                     f"{', '.join(r[:8] for r in table.runs[row])} |"
                     + (f" {plan.text if plan else '—'} |" if plans else ""))
    lines.append("")
    for protocol in PROTOCOL_PREFIX:
        ms = [m for m in table.metrics if m.split(".", 1)[0] == protocol]
        if not ms:
            continue
        lines += [f"## {PROTOCOL_TITLE[protocol]}", ""]
        lines.append("| row | " + " | ".join(_metric_header(m) for m in ms) + " |")
        lines.append("|---|" + "---|" * len(ms))
        for row, cells in {**_protocol_rows(table, ms), **_protocol_references(table, ms)}.items():
            lines.append(f"| {row} | " + " | ".join(cell_text(cells[m]) for m in ms) + " |")
        lines.append("")
    tested = significant_differences(table)
    sig = [t for t in tested if t[2].significant]
    lines += ["## Significant differences from `full`", ""]
    if not tested:
        lines.append("No paired comparison with `full` (no `full` row, or no seed shared with it).")
    elif not sig:
        lines.append(f"None of the {len(tested)} paired comparisons with `full` has p < {table.alpha}.")
    else:
        lines.append("| row | metric | row - full | p | paired units | verdict |")
        lines.append("|---|---|---|---|---|---|")
        for row, m, cell in sig:
            lines.append(f"| {row} | {m} | {fmt(cell.difference)} | {fmt(cell.p_value, 2)} | {cell.n_pairs} | "
                         f"{_verdict(m, cell)} |")
        lines += ["", f"The other {len(tested) - len(sig)} of {len(tested)} paired comparisons have p >= {table.alpha} "
                      f"(every p-value: ablations.json, and the summary runs' `<metric>.p` in MLflow)."]
    lines.append("")
    return "\n".join(lines)


def significant_differences(table: AblationTable) -> list[tuple[str, str, Cell]]:
    """(row, metric, cell) of every tested difference from full, in table order."""
    return [(row, m, cells[m]) for row, cells in table.rows.items() if row != FULL for m in table.metrics
            if cells[m].n_pairs > 0]


def _verdict(metric: str, cell: Cell) -> str:
    if not cell.significant:
        return "not significant"
    better = _higher_is_better(metric)
    if better is None or cell.difference == 0:
        return "significant"
    return "significantly " + ("better" if (cell.difference > 0) == better else "worse") + " than full"


def _metric_header(metric: str) -> str:
    name = metric.split(".", 1)[-1]
    better = _higher_is_better(metric)
    return name + ("" if better is None else (" ↑" if better else " ↓"))


def table_html(table: AblationTable, title: str = "Ablations") -> str:
    """The same tables as HTML (a standalone page)."""
    import html

    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}td:first-child{text-align:left}"
             "td.plan{text-align:left}</style></head><body>", f"<h1>{esc(title)}</h1>",
             "<p>" + esc(" ".join(_intro(table))).replace("`", "") + "</p>"]
    if table.plans:
        parts.append(f"<table><tr><th>row</th><th>seeds</th><th>{esc(PLAN_HEADER)}</th></tr>")
        for row in table.rows:
            plan = table.plans.get(row)
            parts.append(f"<tr><td>{esc(row)}</td><td>{esc(', '.join(str(s) for s in table.seeds[row]))}</td>"
                         f"<td class='plan'>{esc(plan.text if plan else '—')}</td></tr>")
        parts.append("</table>")
    for protocol in PROTOCOL_PREFIX:
        ms = [m for m in table.metrics if m.split(".", 1)[0] == protocol]
        if not ms:
            continue
        parts.append(f"<h2>{esc(PROTOCOL_TITLE[protocol])}</h2><table><tr><th>row</th>"
                     + "".join(f"<th>{esc(_metric_header(m))}</th>" for m in ms) + "</tr>")
        for row, cells in {**_protocol_rows(table, ms), **_protocol_references(table, ms)}.items():
            parts.append(f"<tr><td>{esc(row)}</td>"
                         + "".join(f"<td>{esc(cell_text(cells[m]))}</td>" for m in ms) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- ablations.json -----------------------------------------------------------------------------------------

JSON_SCHEMA = "reenact.ablations/1"
JSON_DIGITS = 6  # significant digits of every number in ablations.json
SPREAD_KEYS = {"mean": "mean over seeds of each seed's mean (over videos; set metrics: pooled over videos)",
               "sd_seeds": "standard deviation over seeds (ddof 1), with 2 or more seeds",
               "ci95": "[lo, hi]: the one seed's bootstrap 95% CI over videos, with 1 seed",
               "n_seeds": "seeds with a value"}
TEST_TEXT = ("vs_full: two-sided sign-flip permutation test of the paired differences row - full "
             "(pipeline/evaluation/stats.py), paired on (seed, video); set metrics (FID / FVD) pair on seeds")


def _round(x: float) -> float:
    out = float(f"{x:.{JSON_DIGITS}g}")
    return 0.0 if out == 0 else out  # no -0.0


def _cell_json(metric: str, cell: Cell, tested: bool) -> dict[str, Any]:
    """A cell's numbers, finite values only (an absent key: no value, never null)."""
    out: dict[str, Any] = {"n_seeds": cell.n_seeds}
    if _finite(cell.mean):
        out["mean"] = _round(cell.mean)
    if cell.n_seeds >= 2 and _finite(cell.spread):
        out["sd_seeds"] = _round(cell.spread)
    if cell.n_seeds == 1 and _finite(cell.lo) and _finite(cell.hi):
        out["ci95"] = [_round(cell.lo), _round(cell.hi)]
    if tested and cell.n_pairs > 0:
        vs = {"n_pairs": cell.n_pairs, "significant": bool(cell.significant), "verdict": _verdict(metric, cell)}
        if _finite(cell.difference):
            vs["difference"] = _round(cell.difference)
        if _finite(cell.p_value):
            vs["p_value"] = _round(cell.p_value)
        out["vs_full"] = vs
    return out


def _metrics_json(table: AblationTable, cells: Mapping[str, Cell], tested: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in table.metrics:
        cell = cells.get(m)
        if cell is not None and cell.n_seeds:
            protocol, name = m.split(".", 1)
            out.setdefault(protocol, {})[name] = _cell_json(m, cell, tested)
    return out


def table_data(table: AblationTable, title: str = "Ablations") -> dict[str, Any]:
    """ablations.json as plain data (module docstring; `read_ablations_json` checks it)."""
    protocols = {}
    for protocol in PROTOCOL_PREFIX:
        ms = [m for m in table.metrics if m.split(".", 1)[0] == protocol]
        if ms:
            better = {m.split(".", 1)[1]: _higher_is_better(m) for m in ms}
            protocols[protocol] = {"title": PROTOCOL_TITLE[protocol], "metrics": [m.split(".", 1)[1] for m in ms],
                                   "higher_is_better": {k: v for k, v in better.items() if v is not None}}
    rows = {}
    for row, cells in table.rows.items():
        entry: dict[str, Any] = {"seeds": list(table.seeds[row]), "runs": list(table.runs[row]),
                                 "metrics": _metrics_json(table, cells, row != FULL)}
        if row in table.plans:
            entry["stages"] = table.plans[row].as_json()
        rows[row] = entry
    references = {key: {"label": reference_label(key), "seeds": list(table.reference_seeds.get(key, [])),
                        "runs": list(table.reference_runs.get(key, [])),
                        "metrics": _metrics_json(table, cells, False)} for key, cells in table.references.items()}
    return {"schema": JSON_SCHEMA, "title": title, "grid_hash": table.grid_hash, "alpha": table.alpha,
            "overrides": json.loads(_canonical(table.overrides)), "spread": dict(SPREAD_KEYS), "test": TEST_TEXT,
            "protocols": protocols, "row_order": list(table.rows), "rows": rows,
            "reference_order": list(table.references), "references": references}


def table_json(table: AblationTable, title: str = "Ablations") -> str:
    """reports/ablations.json: table_data with sorted keys, 2-space indent, ASCII, one trailing newline."""
    return json.dumps(table_data(table, title), indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"


def read_ablations_json(path: str | os.PathLike) -> dict[str, Any]:
    """An ablations.json, checked (AblationError naming the first problem): the schema, every row of row_order and
    reference of reference_order present, each metric of a row or reference a known protocol's with a finite mean
    and n_seeds, spread keys as SPREAD_KEYS names them, and no null anywhere."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AblationError(f"{path}: not readable JSON ({e}); rebuild it: reenact ablate --table-only") from None

    def bad(what: str) -> AblationError:
        return AblationError(f"{path}: {what}; rebuild it: reenact ablate --table-only")

    def no_null(node: Any, where: str) -> None:
        if node is None:
            raise bad(f"{where} is null (a missing value is an absent key)")
        if isinstance(node, dict):
            for k, v in node.items():
                no_null(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                no_null(v, f"{where}[{i}]")

    no_null(data, "(top)")
    if data.get("schema") != JSON_SCHEMA:
        raise bad(f"schema {data.get('schema')!r}, expected {JSON_SCHEMA!r}")
    for key in ("grid_hash", "alpha", "protocols", "row_order", "rows", "reference_order", "references"):
        if key not in data:
            raise bad(f"no {key!r}")
    for kind, order in (("rows", "row_order"), ("references", "reference_order")):
        if sorted(data[order]) != sorted(data[kind]):
            raise bad(f"{order} {data[order]} does not list the {kind} {sorted(data[kind])}")
        for name, entry in data[kind].items():
            if not isinstance(entry.get("seeds"), list) or not isinstance(entry.get("metrics"), dict):
                raise bad(f"{kind}[{name!r}] has no seeds / metrics")
            for protocol, metrics in entry["metrics"].items():
                known = data["protocols"].get(protocol, {}).get("metrics")
                if known is None:
                    raise bad(f"{kind}[{name!r}]: protocol {protocol!r} not in protocols")
                for metric, cell in metrics.items():
                    where = f"{kind}[{name!r}].{protocol}.{metric}"
                    if metric not in known:
                        raise bad(f"{where}: not a metric of protocols.{protocol}")
                    if not _finite(cell.get("mean")) or not isinstance(cell.get("n_seeds"), int):
                        raise bad(f"{where}: no finite mean / n_seeds")
                    extra = set(cell) - set(SPREAD_KEYS) - {"vs_full"}
                    if extra:
                        raise bad(f"{where}: unknown keys {sorted(extra)}")
    return data


# -- MLflow: reading the row runs, writing the summary runs, the compare-runs URL ----------------------------

def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _find_experiment(client) -> str | None:
    from pipeline.tracking import EXPERIMENT

    exp = client.get_experiment_by_name(EXPERIMENT)
    return exp.experiment_id if exp is not None else None


def find_row_runs(tracking_uri: str, grid: str | None = None) -> list[RowRun]:
    """The finished `evaluate` row runs (tag kind=eval_row) of one grid (None: all), with their per-video tables."""
    client = _client(tracking_uri)
    exp_id = _find_experiment(client)
    if exp_id is None:
        return []
    query = "tags.kind = 'eval_row' and attributes.status = 'FINISHED'"
    if grid:
        query += f" and tags.grid_hash = '{grid}'"
    out = []
    for run in _search_all(client, exp_id, query):
        tags = run.data.tags
        out.append(RowRun(run_id=run.info.run_id, row=tags.get("ablation", "?"), seed=int(tags.get("seed", 0)),
                          aggregate=_aggregate_from_metrics(run.data.metrics), per_video=_per_video(client, run),
                          start_time=int(run.info.start_time or 0), parent_id=tags.get("mlflow.parentRunId", "")))
    return out


def find_reference_runs(tracking_uri: str, runs: Sequence[RowRun]) -> list[ReferenceRun]:
    """The reference rows of these row runs' seeds: each run's parent `evaluate` stage run's results (its JSON
    artifacts with a `protocol` and a `references` key: reports/evaluate/<protocol>.json as the stage logs them),
    read by references_from_results. A parent without them (an older run) gives none."""
    import tempfile

    client = _client(tracking_uri)
    out = []
    for r in runs:
        if not r.parent_id:
            continue
        results: dict[str, Any] = {}
        try:
            names = sorted(a.path for a in client.list_artifacts(r.parent_id) if not a.is_dir
                           and a.path.endswith(".json") and a.path != PER_VIDEO_ARTIFACT)
        except Exception:  # no artifacts
            names = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                try:
                    data = json.loads(Path(client.download_artifacts(r.parent_id, name, tmp)).read_text())
                except Exception:  # unreadable: no reference rows from it
                    continue
                if isinstance(data, dict) and isinstance(data.get("references"), dict) and data.get("protocol"):
                    results[str(data["protocol"])] = data
        rows = references_from_results({p: results[p] for p in PROTOCOL_PREFIX if p in results})
        if rows:
            out.append(ReferenceRun(run_id=r.parent_id, seed=r.seed, rows=rows))
    return out


def _search_all(client, exp_id: str, query: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _aggregate_from_metrics(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Row run metrics '<protocol>.<metric>' (mean), '.lo', '.hi' -> {"<protocol>.<metric>": {mean, lo, hi}}."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        base, _, suffix = key.rpartition(".")
        if suffix in ("lo", "hi", "std") and base.count(".") == 1:
            out.setdefault(base, {})[suffix] = value
        elif key.count(".") == 1 and key.split(".", 1)[0] in PROTOCOL_PREFIX:
            out.setdefault(key, {})["mean"] = value
    return {k: v for k, v in out.items() if "mean" in v}


PER_VIDEO_ARTIFACT = "per_video.json"


def _per_video(client, run) -> dict[str, dict[str, float]]:
    """The row run's per-video table (artifact per_video.json, MLflow's table format) as
    {"<protocol>.<metric>": {video: value}}."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.info.run_id, PER_VIDEO_ARTIFACT, tmp)
            data = json.loads(Path(path).read_text())
    except Exception:  # no table (an older run): the metric pairs on seeds only
        return {}
    columns, rows = data.get("columns", []), data.get("data", [])
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        rec = dict(zip(columns, row))
        protocol, video = rec.get("protocol"), rec.get("video")
        for col, value in rec.items():
            if col in ("protocol", "video", "adaptation", "row", "group") or not _finite(value):
                continue
            out.setdefault(f"{protocol}.{col}", {})[str(video)] = float(value)
    return out


def log_summary_runs(table: AblationTable, tracking_uri: str) -> tuple[str, list[str]]:
    """The table in MLflow: a table run (kind=ablation_table) and, nested under it, one summary run per row
    (kind=ablation_summary, run name = the row) whose metrics are the cells: '<protocol>.<metric>' (mean over seeds),
    '.sd' (over seeds), '.p' (vs full). A table with the same key (same runs, alpha) is reused, not logged twice.
    Returns (experiment id, the summary run ids in row order)."""
    import mlflow

    from pipeline.tracking import ensure_experiment

    client = _client(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    root = Path(urllib.parse.urlparse(tracking_uri).path).parent if tracking_uri.startswith("sqlite:") else Path.cwd()
    exp_id = ensure_experiment(mlflow, root)
    key = table.key()
    found = client.search_runs([exp_id], filter_string=f"tags.kind = 'ablation_table' and tags.table_key = '{key}' "
                                                       f"and attributes.status = 'FINISHED'", max_results=1)
    if found:
        children = client.search_runs([exp_id], filter_string=f"tags.kind = 'ablation_summary' and "
                                                              f"tags.table_key = '{key}'", max_results=1000)
        by_row = {r.data.tags.get("ablation"): r.info.run_id for r in children}
        if set(by_row) == set(table.rows):
            return exp_id, [by_row[row] for row in table.rows]
    ids = []
    with mlflow.start_run(experiment_id=exp_id, run_name=f"ablation table {table.grid_hash}",
                          tags={"kind": "ablation_table", "table_key": key, "grid_hash": table.grid_hash,
                                "rows": " | ".join(table.rows)}):
        mlflow.log_text(table_markdown(table), "ablations.md")
        mlflow.log_text(table_json(table), "ablations.json")
        for row, cells in table.rows.items():
            with mlflow.start_run(experiment_id=exp_id, run_name=row, nested=True,
                                  tags={"kind": "ablation_summary", "ablation": row, "table_key": key,
                                        "grid_hash": table.grid_hash,
                                        "seeds": ",".join(str(s) for s in table.seeds[row]),
                                        "source_runs": ",".join(table.runs[row]),
                                        "significant": ", ".join(m for m in table.metrics if cells[m].significant)
                                        or "none"}) as run:
                mlflow.log_param("n_seeds", len(table.seeds[row]))
                values: dict[str, float] = {}
                for m, cell in cells.items():
                    if _finite(cell.mean):
                        values[m] = cell.mean
                    if _finite(cell.spread):
                        values[f"{m}.sd"] = cell.spread
                    if _finite(cell.p_value):
                        values[f"{m}.p"] = cell.p_value
                if values:
                    mlflow.log_metrics(values)
                ids.append(run.info.run_id)
    return exp_id, ids


def compare_url(base_url: str, experiment_id: str, run_ids: Iterable[str]) -> str:
    """MLflow UI's compare-runs page of these runs (the metric values are rows of a table there), the route its own
    'Compare' button opens: <base>/#/compare-runs?runs=[...]&experiments=[...]."""
    runs = urllib.parse.quote(json.dumps(list(run_ids), separators=(",", ":")), safe="")
    exps = urllib.parse.quote(json.dumps([str(experiment_id)], separators=(",", ":")), safe="")
    return f"{base_url.rstrip('/')}/#/compare-runs?runs={runs}&experiments={exps}"


def ablation_report(
    tracking_uri: str,
    out_dir: str | os.PathLike,  # reports/: ablations.md, ablations.html and ablations.json are written there
    grid: str | None,  # the grid_hash to tabulate (None: every row run in the store, one table per grid is safer)
    alpha: float = 0.05,
    base_url: str = "http://127.0.0.1:5000",
    log_mlflow: bool = True,
    base: Mapping[str, Any] | None = None,  # the grid's params tree: given with dvc_yaml, each row's re-run stages
    dvc_yaml: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,  # the grid's -S / profile overrides (recorded in the JSON)
) -> dict[str, Any]:
    """Build the ablation table from the store's row runs (nothing is run): ablations.md, .html and .json, the
    MLflow summary runs, and the compare-runs URL. AblationError naming what to run when there is nothing."""
    from pipeline.io import write_text

    runs = find_row_runs(tracking_uri, grid)
    if not runs:
        where = f"grid {grid}" if grid else "the store"
        raise AblationError(f"no finished `evaluate` runs of {where} in {tracking_uri}: run `reenact ablate` (or "
                            f"`dvc repro evaluate` for the workspace's own rows), with the same params and -S overrides")
    references = find_reference_runs(tracking_uri, reference_source(latest_runs(runs)))
    table = build_table(runs, alpha=alpha, grid=grid or "(all)", references=references)
    table.overrides = dict(overrides or {})
    if base is not None and dvc_yaml is not None and Path(dvc_yaml).is_file():
        table.plans = row_plans(table.rows, base, dvc_yaml)
    out_dir = Path(out_dir)
    paths = {"markdown": out_dir / "ablations.md", "html": out_dir / "ablations.html",
             "json": out_dir / "ablations.json"}
    write_text(paths["markdown"], table_markdown(table))
    write_text(paths["html"], table_html(table))
    write_text(paths["json"], table_json(table))
    result: dict[str, Any] = {"table": table, **paths, "tracking_uri": tracking_uri}
    if log_mlflow:
        exp_id, ids = log_summary_runs(table, tracking_uri)
        result.update(experiment_id=exp_id, summary_runs=ids, url=compare_url(base_url, exp_id, ids))
    return result


# -- the commands' glue (`reenact ablate`, `reenact report`) ---------------------------------------------------

def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """['key=value', ...] as `dvc exp run -S` takes them (values read as YAML) -> {key: value}."""
    import yaml

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise AblationError(f"-S {item!r}: expected key=value (e.g. -S pretrain.iters=1000)")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise AblationError(f"-S {item!r}: the value is not valid YAML ({e})") from None
    return out


def workspace_grid(params_path: str | os.PathLike | None, overrides: Mapping[str, Any]) -> tuple[str, Any]:
    """The grid_hash of params.yaml with the overrides (checked: a bad key fails naming it), and those params."""
    from pipeline.config import load_params

    params = load_params(params_path, dict(overrides))
    return grid_hash(params_tree(params)), params


def ablate(
    workspace: Path,  # the DVC repository (its mlflow.db holds the runs)
    overrides: Mapping[str, Any],  # -S for every experiment (profile overrides included)
    rows: Sequence[str],
    seeds: Sequence[int],
    jobs: int,
    alpha: float,
    base_url: str,
    table_only: bool = False,  # only build the table from the store's runs
    dry_run: bool = False,  # print the commands, run nothing
    all_adaptations: bool = False,  # the non-full rows also re-enact with every adaptation of params
    echo=print,
    out_dir: str | os.PathLike | None = None,  # where the table goes (None: <workspace>/reports)
) -> dict[str, Any] | None:
    """`reenact ablate`: queue and run the grid (unless table_only), then build the table of its grid."""
    from pipeline.tracking import store_root, tracking_uri

    grid, params = workspace_grid(workspace / "params.yaml", overrides)
    base = params_tree(params)
    if not table_only:
        adaptations = None if all_adaptations else params.reenact.adaptations.model_dump()
        commands = grid_commands(rows, seeds, overrides, adaptations, base=base)
        if dry_run:
            for cmd in [*commands, ["dvc", "exp", "run", "--run-all", "--jobs", str(int(jobs))]]:
                echo(" ".join(shlex.quote(c) for c in cmd))
            return None
        run_grid(commands, jobs, cwd=workspace, echo=echo)
    uri = tracking_uri(store_root(workspace))
    return ablation_report(uri, Path(out_dir) if out_dir is not None else workspace / "reports", grid, alpha=alpha,
                           base_url=base_url, base=base, dvc_yaml=workspace / "dvc.yaml", overrides=overrides)
