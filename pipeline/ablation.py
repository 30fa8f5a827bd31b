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

The MLflow view: one summary run per row (tag kind=ablation_summary, run name = the row), under a table run
(kind=ablation_table), whose metrics are the table's cells; `compare_url` gives MLflow's compare-runs page of
those runs, where the metric values are rows of a table (the experiment page hides metric columns by default).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
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
# what a grid varies (left out of grid_hash); `report` changes no number
GRID_VARIES = ("seed", "loss.id_reg", "model.hybrid", "reenact.adaptations", "report")


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

    def key(self) -> str:
        """What identifies the table's content (the runs used and alpha): reused MLflow summary runs match it."""
        return params_hash({"grid": self.grid_hash, "alpha": self.alpha, "runs": self.runs})


def _higher_is_better(metric: str) -> bool | None:
    from pipeline.evaluation.registry import METRICS

    spec = METRICS.get(metric.split(".", 1)[-1])
    return None if spec is None else spec.higher_is_better


def build_table(runs: Sequence[RowRun], alpha: float = 0.05, grid: str = "", resamples: int = 10000,
                seed: int = 0) -> AblationTable:
    """The ablation table of these runs (module docstring): per row, mean and spread over seeds, and the paired
    test against `full` per metric. For a (row, seed) with several runs the newest (start_time, then run id) is used."""
    from pipeline.evaluation.stats import paired_test

    if not runs:
        raise AblationError("no evaluate runs to tabulate")
    latest: dict[tuple[str, int], RowRun] = {}
    for r in sorted(runs, key=lambda r: (r.start_time, r.run_id)):
        latest[(r.row, r.seed)] = r
    by_row: dict[str, list[RowRun]] = {}
    for (row, _), r in sorted(latest.items(), key=lambda kv: (row_sort_key(kv[0][0]), kv[0][1])):
        by_row.setdefault(row, []).append(r)
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
            vals = [r.aggregate[m]["mean"] for r in rr if m in r.aggregate and _finite(r.aggregate[m].get("mean"))]
            n = len(vals)
            mean = float(sum(vals) / n) if n else float("nan")
            spread = _sd(vals) if n >= 2 else float("nan")
            lo = hi = float("nan")
            if n == 1:
                one = next(r.aggregate[m] for r in rr if m in r.aggregate and _finite(r.aggregate[m].get("mean")))
                lo, hi = _num(one.get("lo")), _num(one.get("hi"))
            cell = Cell(mean, spread, lo, hi, n)
            if row != FULL and full:
                a, b = _paired_units(rr, full, m)
                if a:
                    test = paired_test(a, b, resamples=resamples, seed=seed)
                    cell.p_value, cell.difference, cell.n_pairs = test["p_value"], test["mean_difference"], test["n"]
                    cell.significant = bool(_finite(cell.p_value) and cell.p_value < alpha)
            cells[m] = cell
        table[row] = cells
    return AblationTable(grid, alpha, table, {row: [r.seed for r in rr] for row, rr in by_row.items()},
                         {row: [r.run_id for r in rr] for row, rr in by_row.items()}, metrics)


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


def table_markdown(table: AblationTable, title: str = "Ablations") -> str:
    """reports/ablations.md: one table per protocol, rows in the paper's order, and the significant differences."""
    lines = [f"# {title}", "",
             f"Grid `{table.grid_hash}`; rows: mean over seeds ± standard deviation over seeds (one seed: the "
             f"bootstrap 95% CI over videos in brackets). `*`: differs from `full` at p < {table.alpha} (two-sided "
             f"sign-flip permutation test, paired on (seed, video); set metrics such as FID / FVD pair on seeds).",
             ""]
    lines.append("| row | seeds | runs |")
    lines.append("|---|---|---|")
    for row in table.rows:
        lines.append(f"| {row} | {', '.join(str(s) for s in table.seeds[row])} | "
                     f"{', '.join(r[:8] for r in table.runs[row])} |")
    lines.append("")
    for protocol in PROTOCOL_PREFIX:
        ms = [m for m in table.metrics if m.split(".", 1)[0] == protocol]
        if not ms:
            continue
        lines += [f"## {PROTOCOL_TITLE[protocol]}", ""]
        lines.append("| row | " + " | ".join(_metric_header(m) for m in ms) + " |")
        lines.append("|---|" + "---|" * len(ms))
        for row, cells in _protocol_rows(table, ms).items():
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
                      f"(every p-value: the summary runs' `<metric>.p` in MLflow)."]
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

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}td:first-child{text-align:left}"
             "</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p>Grid <code>{table.grid_hash}</code>. Mean over seeds ± sd over seeds (one seed: bootstrap 95% CI). "
             f"* : differs from full at p &lt; {table.alpha} (paired sign-flip test).</p>"]
    for protocol in PROTOCOL_PREFIX:
        ms = [m for m in table.metrics if m.split(".", 1)[0] == protocol]
        if not ms:
            continue
        parts.append(f"<h2>{html.escape(PROTOCOL_TITLE[protocol])}</h2><table><tr><th>row</th>"
                     + "".join(f"<th>{html.escape(_metric_header(m))}</th>" for m in ms) + "</tr>")
        for row, cells in _protocol_rows(table, ms).items():
            parts.append(f"<tr><td>{html.escape(row)}</td>"
                         + "".join(f"<td>{html.escape(cell_text(cells[m]))}</td>" for m in ms) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


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
                          start_time=int(run.info.start_time or 0)))
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
    out_dir: str | os.PathLike,  # reports/: ablations.md and ablations.html are written there
    grid: str | None,  # the grid_hash to tabulate (None: every row run in the store, one table per grid is safer)
    alpha: float = 0.05,
    base_url: str = "http://127.0.0.1:5000",
    log_mlflow: bool = True,
) -> dict[str, Any]:
    """Build the ablation table from the store's row runs (nothing is run): reports/ablations.md and .html, the
    MLflow summary runs, and the compare-runs URL. AblationError naming what to run when there is nothing."""
    from pipeline.io import write_text

    runs = find_row_runs(tracking_uri, grid)
    if not runs:
        where = f"grid {grid}" if grid else "the store"
        raise AblationError(f"no finished `evaluate` runs of {where} in {tracking_uri}: run `reenact ablate` (or "
                            f"`dvc repro evaluate` for the workspace's own rows), with the same params and -S overrides")
    table = build_table(runs, alpha=alpha, grid=grid or "(all)")
    out_dir = Path(out_dir)
    write_text(out_dir / "ablations.md", table_markdown(table))
    write_text(out_dir / "ablations.html", table_html(table))
    result: dict[str, Any] = {"table": table, "markdown": out_dir / "ablations.md", "html": out_dir / "ablations.html",
                              "tracking_uri": tracking_uri}
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
) -> dict[str, Any] | None:
    """`reenact ablate`: queue and run the grid (unless table_only), then build the table of its grid."""
    from pipeline.tracking import store_root, tracking_uri

    grid, params = workspace_grid(workspace / "params.yaml", overrides)
    if not table_only:
        adaptations = None if all_adaptations else params.reenact.adaptations.model_dump()
        commands = grid_commands(rows, seeds, overrides, adaptations)
        if dry_run:
            for cmd in [*commands, ["dvc", "exp", "run", "--run-all", "--jobs", str(int(jobs))]]:
                echo(" ".join(shlex.quote(c) for c in cmd))
            return None
        run_grid(commands, jobs, cwd=workspace, echo=echo)
    uri = tracking_uri(store_root(workspace))
    return ablation_report(uri, workspace / "reports", grid, alpha=alpha, base_url=base_url)
