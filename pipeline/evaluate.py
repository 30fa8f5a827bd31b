"""The `evaluate` stage's library call: the evaluation harness (pipeline/evaluation) over the `reenact` stage's
videos, one evaluation per protocol x adaptation, and what the stage writes and logs.

Input: data/reenacted/index.csv (the `reenact` stage's contract), one row per re-enacted video:

    protocol,adaptation,name,pred,driving,source,target,landmarks     (paths relative to data/reenacted; empty: none)

protocol in same | cross | robustness; adaptation in cma | none | pti (which exist follows reenact.adaptations).
Pairs are built from the index (not by listing folders, which also hold .mp4 copies for viewing).

Per protocol the metrics are params' `evaluate.metrics.<protocol>`; the model-free reference rows (copy the source
frame; same identity: copy the driving frame) do not depend on the adaptation and are scored once, with the first
adaptation (cma when present). Where the `oracle` stage's data/oracle/index.csv lists videos of a protocol (same,
cross; layout: pipeline/oracle.py), they are scored against the same driving videos, sources and targets as the
reference row `oracle`: Eq. 3's space fitted per frame with G fixed, the ceiling of any encoder with this G.
Outputs (all byte-reproducible: no timings, dates or absolute paths):

- metrics/eval_same_id.json, eval_cross_id.json, eval_robustness.json: per adaptation and reference row, per
  metric: mean and its bootstrap 95% CI (lo, hi); robustness also the std over the 25 combinations (Table 3);
- reports/evaluate/<same_id|cross_id|robustness>.json: the harness's whole results (per-video values, networks,
  missing metrics, skipped videos, settings) per adaptation, for the `report` stage;
- reports/evaluate/per_video.csv: one row per (protocol, adaptation or reference row, video).

MLflow (pipeline/ablation.py has the scheme): the stage run gets every mean / CI as `<protocol>.<adaptation>.<metric>
.{mean,lo,hi}`, the per-video table, and tags (ablation, params_hash, grid_hash, network.<metric>, setting); and one
nested row run per adaptation (tag kind=eval_row, ablation=<row name>, seed, adaptation, the hashes), whose metrics
are `<protocol>.<metric>` (mean) with `.lo` / `.hi`, and whose artifact per_video.json is its per-video table.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.ablation import grid_hash, params_hash, row_name
from pipeline.errors import UserError
from pipeline.paths import METRICS, REPORTS

INDEX = "index.csv"
INDEX_COLUMNS = ("protocol", "adaptation", "name", "pred", "driving", "source", "target", "landmarks")
EVALUATE_REPORTS = REPORTS / "evaluate"
PROTOCOL_KEYS = {"same": "same_id", "cross": "cross_id", "robustness": "robustness"}  # file names: eval_<key>.json
ADAPTATION_ORDER = ("cma", "none", "pti")
REFERENCE_ROWS = {"copy_source": "copy source", "copy_driving": "copy driving",
                  "ground_truth": "ground-truth cross render", "oracle": "oracle"}
ORACLE_ROW = "oracle"  # the reference row of the `oracle` stage's videos (pipeline/oracle.py)
ORACLE_INDEX_COLUMNS = ("protocol", "name", "pred", "fitted_to")
SIGNIFICANT_DIGITS = 6  # metrics/eval_*.json: enough for any table, short enough for `dvc exp show`


class ReenactedError(UserError, FileNotFoundError):
    """data/reenacted is missing or inconsistent: the message names the file and the stage to run."""


def metrics_path(protocol: str) -> Path:
    return METRICS / f"eval_{PROTOCOL_KEYS[protocol]}.json"


def report_path(protocol: str) -> Path:
    return EVALUATE_REPORTS / f"{PROTOCOL_KEYS[protocol]}.json"


def read_index(reenacted: Path) -> pd.DataFrame:
    """index.csv of a reenacted folder, checked (ReenactedError naming the file and `dvc repro reenact`)."""
    path = Path(reenacted) / INDEX
    if not path.is_file():
        raise ReenactedError(f"{path}: not found; the `evaluate` stage scores the `reenact` stage's videos: run "
                             f"`dvc repro reenact` first")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in INDEX_COLUMNS if c not in table.columns]
    if missing:
        raise ReenactedError(f"{path}: columns {missing} missing (expected {', '.join(INDEX_COLUMNS)}); re-run "
                             f"`dvc repro reenact`")
    if table.empty:
        raise ReenactedError(f"{path}: no videos; re-run `dvc repro reenact`")
    from pipeline.evaluation.registry import PROTOCOLS

    bad = sorted(set(table["protocol"]) - set(PROTOCOLS))
    if bad:
        raise ReenactedError(f"{path}: unknown protocol(s) {bad}; protocols: {', '.join(PROTOCOLS)}")
    dup = table[table.duplicated(["protocol", "adaptation", "name"], keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        raise ReenactedError(f"{path}: {first['protocol']}/{first['adaptation']}/{first['name']} is listed twice")
    return table


def adaptations_in(table: pd.DataFrame) -> list[str]:
    """The adaptations of an index, cma, none, pti first."""
    found = set(table["adaptation"])
    return [a for a in ADAPTATION_ORDER if a in found] + sorted(found - set(ADAPTATION_ORDER))


def pairs_of(table: pd.DataFrame, reenacted: Path, protocol: str, adaptation: str) -> list:
    """The harness's Pairs of one protocol x adaptation, from the index (files checked)."""
    from pipeline.evaluation.robustness import driving_of
    from pipeline.evaluation.sources import Pair

    rows = table[(table["protocol"] == protocol) & (table["adaptation"] == adaptation)].sort_values("name")
    pairs = []
    for rec in rows.itertuples(index=False):
        def path(rel: str, what: str, required: bool = False) -> Path | None:
            if not rel:
                if required:
                    raise ReenactedError(f"{reenacted / INDEX}: {protocol}/{adaptation}/{rec.name} has no {what}; re-run "
                                         f"`dvc repro reenact`")
                return None
            p = reenacted / rel
            if not p.is_file():
                raise ReenactedError(f"{p}: listed in {reenacted / INDEX} ({what} of {protocol}/{adaptation}/{rec.name}) "
                                     f"but missing; re-run `dvc repro reenact`")
            return p

        pred, driving = path(rec.pred, "prediction", True), path(rec.driving, "driving video", True)
        source = path(rec.source, "source frame", protocol != "same")
        target, marks = path(rec.target, "target"), path(rec.landmarks, "landmarks")
        group = driving_of(rec.name) if protocol == "robustness" else rec.name
        pairs.append(Pair(rec.name, pred, driving, source, target, np.load(marks) if marks is not None else None,
                          group=group))
    return pairs


def read_oracle(oracle: Path | None) -> pd.DataFrame | None:
    """data/oracle/index.csv, checked; None when there is none (no oracle row)."""
    if oracle is None or not (Path(oracle) / INDEX).is_file():
        return None
    path = Path(oracle) / INDEX
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ORACLE_INDEX_COLUMNS if c not in table.columns]
    if missing:
        raise ReenactedError(f"{path}: columns {missing} missing (expected {', '.join(ORACLE_INDEX_COLUMNS)}); re-run "
                             f"`dvc repro oracle`")
    return table


def oracle_pairs(table: pd.DataFrame, reenacted: Path, oracle_table: pd.DataFrame, oracle: Path, protocol: str,
                 adaptation: str) -> list:
    """The oracle's Pairs of one protocol: the adaptation's pairs with the oracle's frames as the prediction (none
    when the oracle has no video of this protocol); ReenactedError when its videos are not reenact's."""
    from dataclasses import replace

    mine = oracle_table[oracle_table["protocol"] == protocol]
    if mine.empty:
        return []
    pairs = pairs_of(table, reenacted, protocol, adaptation)
    preds = dict(zip(mine["name"], mine["pred"]))
    index = Path(oracle) / INDEX
    if set(preds) != {p.name for p in pairs}:
        extra, lacking = sorted(set(preds) - {p.name for p in pairs}), sorted({p.name for p in pairs} - set(preds))
        raise ReenactedError(f"{index}: its {protocol} videos are not those of {reenacted / INDEX} (only in the oracle: "
                             f"{extra[:3]}, missing there: {lacking[:3]}); re-run `dvc repro oracle`")
    out = []
    for pair in pairs:
        path = Path(oracle) / preds[pair.name]
        if not path.is_file():
            raise ReenactedError(f"{path}: listed in {index} but missing; re-run `dvc repro oracle`")
        n, m = len(np.load(path, mmap_mode="r")), len(np.load(pair.pred, mmap_mode="r"))
        if n != m:
            raise ReenactedError(f"{path}: {n} frames, but {pair.pred} has {m}; re-run `dvc repro oracle`")
        out.append(replace(pair, pred=path))
    return out


@dataclass
class Evaluation:
    """Every protocol x adaptation evaluated: results[protocol][adaptation] is the harness's result (JSON-ready,
    paths relative to data/reenacted, no timings); references[protocol] the reference rows."""

    results: dict[str, dict[str, dict]] = field(default_factory=dict)
    references: dict[str, dict[str, dict]] = field(default_factory=dict)
    rows: dict[str, str] = field(default_factory=dict)  # adaptation -> ablation row name
    setting: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def evaluate_reenacted(
    reenacted: Path,  # data/reenacted of the workspace
    params: Any,  # Params or the stage's ParamsView (seed, evaluate, analysis, assets, model, loss, data)
    progress: bool = True,
    log: Callable[[str], Any] = lambda s: None,
    oracle: Path | None = None,  # data/oracle of the workspace: its videos become the reference row `oracle`
) -> Evaluation:
    """Run the harness on every protocol x adaptation of the index, and on the oracle's videos (module docstring)."""
    from pipeline.evaluation.api import settings_from_params
    from pipeline.evaluation.engine import evaluate_pairs
    from pipeline.evaluation.registry import PROTOCOLS

    reenacted = Path(reenacted)
    table = read_index(reenacted)
    oracle_table = read_oracle(oracle)
    out = Evaluation()
    for adaptation in adaptations_in(table):
        out.rows[adaptation] = row_name(bool(params.loss.id_reg), bool(params.model.hybrid), adaptation)
    for protocol in PROTOCOLS:
        sub = table[table["protocol"] == protocol]
        if sub.empty:
            continue
        out.results[protocol] = {}
        for i, adaptation in enumerate(adaptations_in(sub)):
            pairs = pairs_of(table, reenacted, protocol, adaptation)
            settings = settings_from_params(params, protocol, references=bool(params.evaluate.references and i == 0),
                                            progress=progress)
            start = time.perf_counter()
            result = evaluate_pairs(pairs, params, settings)
            out.timings[f"{protocol}.{adaptation}"] = round(time.perf_counter() - start, 2)
            log(f"evaluate: {protocol} / {adaptation}: {len(pairs)} videos, {out.timings[f'{protocol}.{adaptation}']} s")
            references = result.pop("references", {})
            if references:
                out.references[protocol] = references
            out.results[protocol][adaptation] = _portable(result, sub[sub["adaptation"] == adaptation])
            if i == 0 and oracle_table is not None:
                pairs = oracle_pairs(table, reenacted, oracle_table, Path(oracle), protocol, adaptation)
                if pairs:
                    settings = settings_from_params(params, protocol, references=False, progress=progress)
                    start = time.perf_counter()
                    result = evaluate_pairs(pairs, params, settings)
                    out.timings[f"{protocol}.{ORACLE_ROW}"] = round(time.perf_counter() - start, 2)
                    log(f"evaluate: {protocol} / {ORACLE_ROW}: {len(pairs)} videos, "
                        f"{out.timings[f'{protocol}.{ORACLE_ROW}']} s")
                    out.references.setdefault(protocol, {})[ORACLE_ROW] = {"aggregate": result["aggregate"],
                                                                           "per_video": result["per_video"]}
    out.setting = describe_setting(params, out)
    return out


def _portable(result: dict, rows: pd.DataFrame) -> dict:
    """The result without timings and with the index's relative paths instead of absolute ones."""
    result = dict(result)
    result.pop("seconds", None)
    by_name = {r.name: r for r in rows.itertuples(index=False)}
    videos = {}
    for name, info in result.get("videos", {}).items():
        info = dict(info)
        rec = by_name.get(name)
        for key in ("pred", "driving", "source", "target"):
            if key in info and rec is not None:
                info[key] = getattr(rec, key) or "first driving frame"
        videos[name] = info
    result["videos"] = videos
    result["skipped"] = {_relative(k, rows): v for k, v in result.get("skipped", {}).items()}
    return result


def _relative(path: str, rows: pd.DataFrame) -> str:
    """An absolute file path of the index, shown relative to data/reenacted (other keys as they are)."""
    for col in ("pred", "driving", "source", "target"):
        for rel in rows[col]:
            if rel and str(path).endswith(rel):
                return rel
    return Path(path).name if Path(path).is_absolute() else path


def describe_setting(params: Any, ev: Evaluation) -> str:
    """Where the numbers come from, in words: the data (synthetic world or your videos), the resolution, and the
    networks behind the metrics (the `setting` column of the report's tables)."""
    data = params.data
    if data.source == "synthetic":
        what = f"synthetic world ({data.n_identities} identities, seed {params.seed})"
    else:
        what = "your videos (data.source: folder)"
    sizes, backends = set(), {}
    for per_adaptation in ev.results.values():
        for result in per_adaptation.values():
            sizes.update(tuple(s) for s in result.get("resolution", {}).get("sizes", []))
            for metric, net in result.get("networks", {}).items():
                backends.setdefault(net.get("backend", "?"), []).append(metric)
    res = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)) or "?"
    nets = "; ".join(f"{b}: {', '.join(sorted(set(ms)))}" for b, ms in sorted(backends.items()) if b != "pixels")
    return f"{what}, {res} px" + (f"; networks: {nets}" if nets else "")


# -- outputs ------------------------------------------------------------------------------------------------

def _round(x: Any) -> Any:
    if isinstance(x, float) and math.isfinite(x):
        return float(f"{x:.{SIGNIFICANT_DIGITS}g}")
    return x


def _cell(agg: dict, with_std: bool) -> dict:
    ci = agg.get("ci95") or [None, None]
    out = {"mean": _round(agg.get("mean")), "lo": _round(ci[0]), "hi": _round(ci[1])}
    if with_std:
        out["std"] = _round(agg.get("std"))
    return out


def compact_metrics(ev: Evaluation, protocol: str) -> dict:
    """metrics/eval_<protocol>.json: {"videos": n, <adaptation | reference row>: {metric: {mean, lo, hi[, std]}}}."""
    with_std = protocol == "robustness"  # Table 3 reports mean and std over the combinations
    per = ev.results[protocol]
    first = next(iter(per.values()))
    out: dict[str, Any] = {"videos": len(first.get("per_video", {}))}
    for adaptation, result in per.items():
        out[adaptation] = {m: _cell(a, with_std) for m, a in result["aggregate"].items()}
    for ref, rows in ev.references.get(protocol, {}).items():
        out[ref] = {m: _cell(a, with_std) for m, a in rows["aggregate"].items()}
    return out


def full_report(ev: Evaluation, protocol: str) -> dict:
    """reports/evaluate/<protocol>.json: the whole results of one protocol, per adaptation, for `report`."""
    per = ev.results[protocol]
    first = next(iter(per.values()))
    return {
        "protocol": protocol,
        "setting": ev.setting,
        "metrics": first["metrics"],
        "networks": first["networks"],
        "rows": {a: {"ablation": ev.rows[a], "aggregate": r["aggregate"], "per_video": r["per_video"],
                     "missing": r["missing"], "skipped": r["skipped"]} for a, r in per.items()},
        "references": ev.references.get(protocol, {}),
        "videos": first["videos"],
        "resolution": first["resolution"],
        "settings": first["settings"],
        "frames": first["frames"],
    }


def per_video_table(ev: Evaluation) -> pd.DataFrame:
    """One row per (protocol, adaptation or reference row, video): protocol, adaptation, row, video, group, metrics."""
    records = []
    for protocol, per in ev.results.items():
        first = next(iter(per.values()))
        groups = {name: info.get("group", name) for name, info in first.get("videos", {}).items()}
        candidates = [(a, ev.rows[a], r["per_video"]) for a, r in per.items()]
        candidates += [(ref, REFERENCE_ROWS.get(ref, ref), rows["per_video"])
                       for ref, rows in ev.references.get(protocol, {}).items()]
        for adaptation, row, per_video in candidates:
            for video in sorted(per_video):
                records.append({"protocol": protocol, "adaptation": adaptation, "row": row, "video": video,
                                "group": groups.get(video, video), **per_video[video]})
    table = pd.DataFrame.from_records(records)
    fixed = ["protocol", "adaptation", "row", "video", "group"]
    metrics = [c for c in table.columns if c not in fixed]
    return table[fixed + metrics]


def per_video_csv(ev: Evaluation) -> str:
    return per_video_table(ev).to_csv(index=False, lineterminator="\n", float_format="%.8g")


def summary(ev: Evaluation) -> dict:
    """metrics/evaluate.json (the runner's): videos per protocol, the rows, what is missing (numbers: the eval_*
    files)."""
    missing = {}
    for protocol, per in ev.results.items():
        for result in per.values():
            for m, reason in result.get("missing", {}).items():
                missing.setdefault(f"{protocol}.{m}", reason)
    return {
        "videos": {p: len(next(iter(per.values())).get("per_video", {})) for p, per in ev.results.items()},
        "rows": dict(ev.rows),
        "setting": ev.setting,
        "missing": missing,
    }


# -- MLflow ---------------------------------------------------------------------------------------------------

def network_tags(ev: Evaluation) -> dict[str, str]:
    """network.<metric>: the backend and the first 12 hex digits of each weight file's sha256."""
    tags = {}
    for per in ev.results.values():
        for result in per.values():
            for metric, net in result.get("networks", {}).items():
                weights = net.get("weights_sha256") or {}
                files = ", ".join(f"{k}={str(v)[:12]}" for k, v in sorted(weights.items()))
                tags[f"network.{metric}"] = net.get("backend", "?") + (f" ({files})" if files else "")
    return tags


def stage_metrics(ev: Evaluation) -> dict:
    """The stage run's MLflow metrics: {protocol: {adaptation | reference: {metric: {mean, lo, hi}}}}."""
    return {p: {k: v for k, v in compact_metrics(ev, p).items() if k != "videos"} for p in ev.results}


def row_metrics(ev: Evaluation, adaptation: str) -> dict[str, float]:
    """A row run's metrics: '<protocol>.<metric>' (mean), '<protocol>.<metric>.lo' / '.hi' (and '.std' for
    robustness), finite values only."""
    out = {}
    for protocol, per in ev.results.items():
        if adaptation not in per:
            continue
        for metric, cell in compact_metrics(ev, protocol)[adaptation].items():
            for key, value in cell.items():
                name = f"{protocol}.{metric}" if key == "mean" else f"{protocol}.{metric}.{key}"
                if isinstance(value, float) and math.isfinite(value):
                    out[name] = value
    return out


def write_outputs(ev: Evaluation, root: Path) -> list[Path]:
    """The stage's DVC outputs under `root` (atomically); returns the report folder (an MLflow artifact)."""
    from pipeline.io import write_json, write_text

    for protocol in ev.results:
        write_json(root / metrics_path(protocol), compact_metrics(ev, protocol))
        write_json(root / report_path(protocol), full_report(ev, protocol))
    write_text(root / EVALUATE_REPORTS / "per_video.csv", per_video_csv(ev))
    return [root / EVALUATE_REPORTS]


def _table_for_mlflow(table: pd.DataFrame):
    return table.astype(object).where(table.notna(), None)  # NaN -> null in MLflow's table JSON


def log_runs(ev: Evaluation, tree: dict, seed: int) -> dict[str, str]:
    """Under the active MLflow run (the stage's): its metrics and per-video table, then one nested row run per
    adaptation (module docstring). `tree`: the whole params as plain data (the hashes name the run's grid).
    Returns the stage run's extra tags."""
    import mlflow

    from pipeline.tracking import StageRun

    parent = mlflow.active_run()
    StageRun(mlflow).log_metrics(stage_metrics(ev))
    table = per_video_table(ev)
    mlflow.log_table(_table_for_mlflow(table), artifact_file="per_video.json")
    inherited = {k: v for k, v in mlflow.get_run(parent.info.run_id).data.tags.items()
                 if k in ("dvc_exp_name", "git_revision", "workdir")}
    hashes = {"params_hash": params_hash(tree), "grid_hash": grid_hash(tree)}
    log_row_runs(ev, tree, seed, inherited)
    return {**network_tags(ev), **hashes, "setting": ev.setting}


def log_row_runs(ev: Evaluation, tree: dict, seed: int, extra_tags: dict[str, str] | None = None) -> dict[str, str]:
    """One nested MLflow run per adaptation under the active (stage) run; returns {adaptation: run id}."""
    import mlflow

    table = per_video_table(ev)
    hashes = {"params_hash": params_hash(tree), "grid_hash": grid_hash(tree)}
    experiment = mlflow.active_run().info.experiment_id  # nested runs would otherwise land in the default experiment
    ids = {}
    for adaptation, row in ev.rows.items():
        tags = {**(extra_tags or {}), **network_tags(ev), **hashes, "kind": "eval_row", "ablation": row,
                "adaptation": adaptation, "seed": str(seed), "setting": ev.setting}
        with mlflow.start_run(experiment_id=experiment, run_name=f"{row} [seed {seed}]", nested=True,
                              tags=tags) as run:
            mlflow.log_params({"seed": seed, "adaptation": adaptation, "loss.id_reg": tree["loss"]["id_reg"],
                               "model.hybrid": tree["model"]["hybrid"], "params_hash": hashes["params_hash"]})
            mlflow.log_metrics(row_metrics(ev, adaptation))
            mine = table[table["adaptation"] == adaptation].drop(columns=["adaptation", "row"])
            mlflow.log_table(_table_for_mlflow(mine), artifact_file="per_video.json")
            ids[adaptation] = run.info.run_id
    return ids
