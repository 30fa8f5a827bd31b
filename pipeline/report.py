"""The `report` stage's library: the paper's Tables 1-3 with our rows beside the paper's, figures, samples.

Ours come from the `evaluate` stage's reports/evaluate/<same_id|cross_id|robustness>.json (the numbers it also
logged to MLflow, read from the DVC outputs so that the report is a function of its declared inputs and
byte-identical in every clone; MLflow's store is not a DVC input). Rows of other DVC experiments (w/o ID reg,
w/o Hybrid, and several seeds) are the ablation table's (pipeline/ablation.py, reports/ablations.md), which
`reenact ablate` / `reenact report --ablations` build from the MLflow store.

Each table has a `setting` column (the synthetic world or HDTF, and the networks behind the numbers), the
model-free reference rows (copy the source frame; same identity: copy the driving frame; cross identity in the
synthetic world: the ground-truth cross render), the `oracle` reference row where the `oracle` stage ran (Eq. 3's
space fitted per frame with G fixed: what this G and these S_F layers allow without an encoder), our rows with their bootstrap 95% CIs over videos (Table 3: mean ± std over the source-driving combinations, as the paper, then the
CI of the mean), the paper's printed numbers, and the metrics the paper has no column for ("beyond the paper").
A `*` marks a row of this experiment whose per-video values differ from `full` at p < alpha (the harness's paired
sign-flip test; pooled set metrics have no per-video values and are not tested).
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.ablation import FULL, fmt as _fmt, row_sort_key
from pipeline.errors import UserError
from pipeline.evaluate import PROTOCOL_KEYS, REFERENCE_ROWS, report_path

PAPER_SETTING = ("HDTF, 75 test videos of 500 frames, 1024 px; ArcFace IR-SE50 (L_ID), OpenFace (ρ), pytorch-fid "
                 "Inception (FID), I3D (FVD), AlexNet LPIPS")
PAPER_SETTING_SHORT = "HDTF, paper networks"  # the row label gives its output resolution
ZERO = 1e-5  # |value| below this shows as 0 in the tables (Frechet distances of identical sets come out at ~1e-7)
PAPER_ROW_OF = {"full": "Ours", "w/o ID reg": "Ours w/o ID reg", "w/o Hybrid": "Ours w/o Hybrid",
                "w/o CMA": "Ours w/o CMA", "CMA -> PTI": "Ours – CMA + PTI"}


@dataclass(frozen=True)
class Column:
    title: str  # the paper's column
    metrics: tuple[str, ...]  # our metric names that fill it, first found wins (the paper's network, then the toy one)
    higher_is_better: bool
    scale: float = 1.0  # Table 3: the paper prints value / scale (LPIPS x10^-2 -> scale 1e-2)


TABLES: dict[str, dict[str, Any]] = {
    "same": {
        "title": "Table 1: one-shot same-identity re-enactment",
        "columns": [Column("L1", ("l1",), False), Column("LPIPS", ("lpips", "lpips_toy"), False),
                    Column("L_ID", ("l_id",), False), Column("PSNR", ("psnr",), True), Column("SSIM", ("ssim",), True),
                    Column("FID", ("fid", "fid_toy"), False), Column("FVD", ("fvd", "fvd_toy"), False),
                    Column("FVD_M", ("fvd_m", "fvd_m_toy"), False), Column("ρ_AU", ("rho_au",), True),
                    Column("ρ_GZ", ("rho_gz",), True), Column("ρ_pose", ("rho_pose",), True)],
        "paper": [  # as printed, one string per row (its L1 is presumably x10^-2: FOMM's L1 on [0, 1] frames is a few
            # hundredths)
            ("FOMM", "256²", "2.37 0.042 0.095 32.8 0.959 22.3 102.1 19.9 0.808 0.737 0.948"),
            ("PIRenderer", "256²", "3.52 0.053 0.118 29.1 0.932 28.0 145.1 26.8 0.748 0.770 0.906"),
            ("LIA", "256²", "2.72 0.049 0.102 31.5 0.951 26.4 105.0 19.6 0.822 0.732 0.944"),
            ("FS-Vid2Vid", "512²", "4.38 0.065 0.151 27.4 0.919 31.6 255.0 45.0 0.572 0.635 0.822"),
            ("StyleHEAT", "1024²", "3.59 0.059 0.133 28.8 0.934 38.8 171.0 31.4 0.745 0.850 0.921"),
            ("Ours", "1024²", "2.28 0.027 0.097 33.1 0.967 19.3 101.0 16.6 0.829 0.872 0.952"),
            ("Ours w/o ID reg", "1024²", "2.34 0.028 0.111 32.8 0.953 20.3 115.4 20.7 0.810 0.857 0.948"),
            ("Ours w/o Hybrid", "1024²", "2.52 0.031 0.114 31.7 0.950 20.6 116.9 23.6 0.746 0.798 0.923"),
        ],
        "note": "The paper prints L1 presumably x10^-2 (2.28 for Ours); ours is on [0, 1] frames.",
    },
    "cross": {
        "title": "Table 2: one-shot cross-identity re-enactment",
        "columns": [Column("FID", ("fid", "fid_toy"), False), Column("FVD", ("fvd", "fvd_toy"), False),
                    Column("FVD_M", ("fvd_m", "fvd_m_toy"), False), Column("ρ_AU+GZ", ("rho_au_gz",), True),
                    Column("ρ_pose", ("rho_pose",), True)],
        "paper": [
            ("FOMM", "256²", "94.0 529.4 78.4 0.450 0.782"),
            ("PIRenderer", "256²", "84.8 417.3 54.2 0.668 0.880"),
            ("LIA", "256²", "94.8 536.2 76.7 0.404 0.788"),
            ("FS-Vid2Vid", "512²", "90.6 532.7 86.7 0.493 0.745"),
            ("StyleHEAT", "1024²", "97.2 408.8 58.9 0.645 0.875"),
            ("Ours", "1024²", "74.3 375.4 50.2 0.718 0.915"),
            ("Ours w/o ID reg", "1024²", "85.6 399.8 53.1 0.685 0.894"),
            ("Ours w/o Hybrid", "1024²", "93.0 427.3 60.8 0.649 0.878"),
            ("Ours w/o CMA", "1024²", "86.9 388.1 52.4 0.646 0.896"),
            ("Ours – CMA + PTI", "1024²", "84.8 421.2 56.8 0.627 0.890"),
        ],
        "note": "The *_gt columns compare with the synthetic world's ground-truth cross render (no real dataset has one).",
    },
    "robustness": {
        "title": "Table 3: one-shot robustness (mean ± std over the source-driving combinations)",
        "columns": [Column("LPIPS ×10⁻²", ("lpips", "lpips_toy"), False, 1e-2),
                    Column("L_ID ×10⁻¹", ("l_id",), False, 1e-1), Column("FID ×10¹", ("fid", "fid_toy"), False, 1e1),
                    Column("FVD ×10²", ("fvd", "fvd_toy"), False, 1e2)],
        "paper": [  # mean±std as printed
            ("FOMM", "", "7.5±2.1 2.3±1.1 3.2±1.0 2.0±0.7"),
            ("PIRenderer", "", "5.7±0.4 1.2±0.2 2.2±0.2 1.5±0.3"),
            ("LIA", "", "7.8±2.0 2.3±1.0 3.4±1.0 2.0±0.8"),
            ("FS-Vid2Vid", "", "7.5±1.1 1.8±0.5 3.3±0.6 2.2±0.5"),
            ("StyleHEAT", "", "6.0±0.4 1.4±0.2 3.3±0.5 1.5±0.2"),
            ("Ours", "", "2.9±0.2 1.1±0.1 1.5±0.2 0.8±0.1"),
        ],
        "note": "Values in the units of the column (e.g. LPIPS ×10⁻²: 2.9 means 0.029); ours scaled the same way.",
    },
}


class ReportError(UserError, FileNotFoundError):
    """An input of the report is missing: the message names it and the stage to run."""


def load_results(root: Path) -> dict[str, dict]:
    """reports/evaluate/<protocol>.json of every protocol the `evaluate` stage wrote (ReportError when none)."""
    out = {}
    for protocol in PROTOCOL_KEYS:
        path = root / report_path(protocol)
        if path.is_file():
            out[protocol] = json.loads(path.read_text())
    if not out:
        raise ReportError(f"{root / report_path('same').parent}: no evaluation results; run the `evaluate` stage "
                          f"first (dvc repro evaluate)")
    return out


# -- tables -----------------------------------------------------------------------------------------------

def _num(x: Any) -> float:
    if isinstance(x, str) and x in ("inf", "-inf"):
        return float(x)
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else float("nan")


def _fmt_cell(agg: dict | None, scale: float = 1.0, with_std: bool = False) -> str:
    """'mean [lo, hi]', or with_std 'mean ± std [lo, hi]', in the column's units."""
    if not agg:
        return "—"

    def fmt(x, digits=3):  # the shared formatter, with Frechet / float noise around 0 shown as 0
        return _fmt(0.0 if math.isfinite(x) and abs(x) < ZERO / scale else x, digits)

    mean = _num(agg.get("mean")) / scale
    if not math.isfinite(mean):
        return fmt(mean)
    text = fmt(mean)
    if with_std:
        std = _num(agg.get("std")) / scale
        text += f" ± {fmt(std, 2)}" if math.isfinite(std) else ""
    lo, hi = (_num(v) / scale for v in (agg.get("ci95") or [None, None]))
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{fmt(lo)}, {fmt(hi)}]"
    return text


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]


def _pick(column: Column, metrics: Sequence[str]) -> str | None:
    return next((m for m in column.metrics if m in metrics), None)


def significance(result: dict, alpha: float, resamples: int = 10000, seed: int = 0) -> dict[str, dict[str, dict]]:
    """{adaptation: {metric: paired_test result}} of each adaptation's per-video values against the full model's
    (cma), for every metric with per-video values."""
    from pipeline.evaluation.stats import paired_test

    rows = result["rows"]
    full = next((a for a, r in rows.items() if r["ablation"] == FULL), None)
    if full is None:
        return {}
    out: dict[str, dict[str, dict]] = {}
    for adaptation, row in rows.items():
        if adaptation == full:
            continue
        for metric in result["metrics"]:
            a = {v: _num(m.get(metric)) for v, m in row["per_video"].items() if metric in m}
            b = {v: _num(m.get(metric)) for v, m in rows[full]["per_video"].items() if metric in m}
            if a and b and any(math.isfinite(x) for x in a.values()):
                test = paired_test(a, b, resamples=resamples, seed=seed)
                test["significant"] = bool(math.isfinite(test["p_value"]) and test["p_value"] < alpha)
                out.setdefault(adaptation, {})[metric] = test
    return out


def paper_table(protocol: str, result: dict, alpha: float) -> Table:
    """One of Tables 1-3: our rows (references, then the adaptations in the paper's order), the paper's rows."""
    spec = TABLES[protocol]
    metrics = result["metrics"]
    with_std = protocol == "robustness"
    columns: list[Column] = spec["columns"]
    used = {m for c in columns for m in c.metrics}
    extras = [m for m in metrics if m not in used]
    header = ["row", "setting"] + [_column_title(c, _pick(c, metrics)) for c in columns] + \
             [f"{m} {'↑' if _higher(m) else '↓'} (beyond the paper)" for m in extras]
    setting = _short_setting(result)
    tests = significance(result, alpha)
    missing = result["rows"][next(iter(result["rows"]))].get("missing", {})

    def our_cells(agg: dict, adaptation: str | None) -> list[str]:
        cells = []
        for c in columns:
            m = _pick(c, metrics)
            cells.append("missing" if m in missing else _fmt_cell(agg.get(m), c.scale, with_std) + _mark(tests, adaptation, m))
        for m in extras:
            cells.append("missing" if m in missing else _fmt_cell(agg.get(m), 1.0, with_std) + _mark(tests, adaptation, m))
        return cells

    rows = []
    for ref, label in REFERENCE_ROWS.items():
        if ref in result.get("references", {}):
            rows.append([f"{label} (reference)", setting] + our_cells(result["references"][ref]["aggregate"], None))
    ordered = sorted(result["rows"].items(), key=lambda kv: row_sort_key(kv[1]["ablation"]))
    for adaptation, row in ordered:
        rows.append([f"ours: {row['ablation']} ({adaptation})", setting] + our_cells(row["aggregate"], adaptation))
    for name, res, printed in spec["paper"]:
        cells = [v.replace("±", " ± ") for v in printed.split()]
        rows.append([f"paper: {name}" + (f" ({res})" if res else ""), PAPER_SETTING_SHORT] + cells +
                    ["—"] * len(extras))
    notes = [spec["note"], f"setting of ours: {result.get('setting', '')}", f"setting of the paper's rows: {PAPER_SETTING}"]
    if tests:
        notes.append(f"`*`: differs from ours: full at p < {alpha} (paired sign-flip test over videos; pooled FID / FVD "
                     f"have no per-video values and are not tested).")
    for m, reason in sorted(missing.items()):
        notes.append(f"{m} missing: {reason.splitlines()[0]}")
    return Table(spec["title"], header, rows, notes)


def _mark(tests: dict, adaptation: str | None, metric: str | None) -> str:
    if adaptation is None or metric is None:
        return ""
    return " *" if tests.get(adaptation, {}).get(metric, {}).get("significant") else ""


def _higher(metric: str) -> bool:
    from pipeline.evaluation.registry import METRICS

    return METRICS[metric].higher_is_better if metric in METRICS else True


def _column_title(column: Column, metric: str | None) -> str:
    arrow = "↑" if column.higher_is_better else "↓"
    return f"{column.title} {arrow}" + (f" ({metric})" if metric and metric != column.metrics[0] else "") + \
        ("" if metric else " (not evaluated)")


def _short_setting(result: dict) -> str:
    """'synthetic world, 64 px, toy networks' / 'your videos, 256 px, paper networks' (the notes give them whole)."""
    full = result.get("setting", "")
    world = "synthetic world" if full.startswith("synthetic") else "your videos"
    sizes = result.get("resolution", {}).get("sizes", [])
    px = ", ".join(sorted({f"{h}²" if h == w else f"{h}x{w}" for h, w in sizes}))
    backends = [str(n.get("backend", "")) for n in result.get("networks", {}).values() if n.get("backend") != "pixels"]
    nets = "toy networks" if any("toy" in b for b in backends) else ("paper networks" if backends else "pixels only")
    return ", ".join(x for x in (world, px, nets) if x)


def tables_markdown(tables: Sequence[Table], extra: str = "") -> str:
    lines = ["# Tables 1-3: ours beside the paper's", "",
             "Generated by the `report` stage from the `evaluate` stage's results (reports/evaluate/). Ours: mean "
             "[bootstrap 95% CI over videos]; Table 3: mean ± std over the combinations [CI of the mean]. The paper's "
             "numbers as printed.", ""]
    if extra:
        lines += [extra, ""]
    for t in tables:
        lines += [f"## {t.title}", "", "| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
        lines.append("")
        lines += [f"- {n}" for n in t.notes if n]
        lines.append("")
    return "\n".join(lines)


def tables_html(tables: Sequence[Table], extra: str = "") -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Tables 1-3</title><style>"
             "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin:.5em 0 1.5em}"
             "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right;font-size:13px}"
             "td:nth-child(-n+2){text-align:left}tr.paper td{color:#555;background:#f4f4f4}</style></head><body>",
             "<h1>Tables 1-3: ours beside the paper's</h1>",
             "<p>Ours: mean [bootstrap 95% CI over videos]; Table 3: mean ± std over the combinations [CI of the mean]. "
             "The paper's numbers as printed (grey rows).</p>"]
    if extra:
        parts.append(f"<p>{html.escape(extra)}</p>")
    for t in tables:
        parts.append(f"<h2>{html.escape(t.title)}</h2><table><tr>" +
                     "".join(f"<th>{html.escape(h)}</th>" for h in t.header) + "</tr>")
        for row in t.rows:
            cls = " class='paper'" if row[0].startswith("paper:") else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in t.notes if n) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- figures ------------------------------------------------------------------------------------------------

def loss_curves(path: Path, histories: dict[str, Any]) -> Path | None:
    """Training losses of pretrain then finetune on one step axis (finetune's steps after pretrain's)."""
    from pipeline.plots import plt, save_png

    frames = {k: v for k, v in histories.items() if v is not None and len(v)}
    if not frames:
        return None
    keys = sorted({c for df in frames.values() for c in df.columns if c.startswith("train/loss")})
    total = [k for k in keys if k == "train/loss"]
    terms = [k for k in keys if k != "train/loss"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    style = {k: (f"C{i % 10}", ("-", "--", ":")[i // 10 % 3]) for i, k in enumerate(terms)}  # one look per term
    offset, labelled = 0, set()
    for stage, df in frames.items():
        steps = df["step"].to_numpy() + offset
        for k in total:
            if k in df:
                axes[0].plot(steps, df[k].to_numpy(), label=f"{stage}")
        for k in terms:
            if k in df and df[k].notna().any():
                colour, dash = style[k]
                axes[1].plot(steps, df[k].to_numpy(), lw=0.9, color=colour, ls=dash,
                             label=None if k in labelled else k.split("/", 1)[1])
                labelled.add(k)
        for ax in axes:
            ax.axvline(offset, color="k", ls=":", lw=0.6)
        offset = int(steps.max()) if len(steps) else offset
    axes[0].set_title("total loss (Eq. 14): pretrain, then finetune")
    axes[1].set_title("loss terms (dotted line: finetune starts)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=5, ncol=3)
    return save_png(fig, path, dpi=90)


def metric_plot(path: Path, protocol: str, result: dict) -> Path:
    """One panel per metric: each row (references, adaptations) with its 95% CI."""
    from pipeline.plots import plt, save_png

    candidates = [(REFERENCE_ROWS[k] , v["aggregate"]) for k, v in result.get("references", {}).items()]
    candidates += [(r["ablation"], r["aggregate"]) for _, r in sorted(result["rows"].items(),
                                                                      key=lambda kv: row_sort_key(kv[1]["ablation"]))]
    metrics = result["metrics"]
    ncols = min(4, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for i, (label, agg) in enumerate(candidates):
            a = agg.get(m) or {}
            mean = _num(a.get("mean"))
            lo, hi = (_num(v) for v in (a.get("ci95") or [None, None]))
            if not math.isfinite(mean):
                continue
            colour = "grey" if label in REFERENCE_ROWS.values() else f"C{i}"
            if math.isfinite(lo) and math.isfinite(hi):  # a bootstrap CI of a pooled distance may not hold the mean
                ax.vlines(i, lo, hi, color=colour)
                ax.hlines([lo, hi], i - 0.12, i + 0.12, color=colour)
            ax.plot([i], [mean], "o", color=colour)
        ax.set_xticks(range(len(candidates)))
        ax.set_xticklabels([c[0] for c in candidates], rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{m} {'↑' if _higher(m) else '↓'}", fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"{TABLES[protocol]['title']}: mean and 95% CI", fontsize=10)
    return save_png(fig, path, dpi=80)


# -- samples ------------------------------------------------------------------------------------------------

def _frames(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def _still(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def sample_names(index, protocol: str, n: int) -> list[str]:
    """The first n names (sorted) that have both the full model's and the w/o CMA prediction when both exist."""
    sub = index[index["protocol"] == protocol]
    names = sorted(set(sub["name"]))
    both = [x for x in names if {"cma", "none"} <= set(sub.loc[sub["name"] == x, "adaptation"])]
    return (both or names)[:n]


def _columns_of(index, reenacted: Path, protocol: str, name: str, rows: dict[str, str]) -> list[tuple[str, np.ndarray]]:
    """(label, frames [T, H, W, 3]) of one video: driving, ours (cma), w/o CMA (none), the other adaptations, target."""
    sub = index[(index["protocol"] == protocol) & (index["name"] == name)].set_index("adaptation")
    first = sub.iloc[0]
    out = [("driving", _frames(reenacted / first["driving"]))]
    for adaptation in sorted(sub.index, key=lambda a: row_sort_key(rows.get(a, a))):
        out.append((rows.get(adaptation, adaptation), _frames(reenacted / sub.loc[adaptation, "pred"])))
    if first["target"]:
        out.append(("ground truth", _frames(reenacted / first["target"])))
    return out


def _resized(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if frame.shape[:2] == hw:
        return np.asarray(frame)
    return np.asarray(Image.fromarray(np.asarray(frame)).resize((hw[1], hw[0]), Image.BILINEAR))


def sample_grid(path: Path, index, reenacted: Path, protocol: str, names: Sequence[str], rows: dict[str, str],
                n_frames: int) -> Path | None:
    """Per video a mosaic: the source frame, then rows driving / ours / w/o CMA / ... / ground truth at n_frames
    evenly spaced times (one image per video, labelled rows)."""
    from pipeline.plots import plt, save_png

    gap = 2
    mosaics = []
    for name in names:
        sub = index[(index["protocol"] == protocol) & (index["name"] == name)].iloc[0]
        cols = _columns_of(index, reenacted, protocol, name, rows)
        h, w = cols[0][1].shape[1:3]
        t_idx = np.unique(np.linspace(0, min(len(f) for _, f in cols) - 1, n_frames).round().astype(int))
        canvas = np.full((len(cols) * (h + gap), (len(t_idx) + 1) * (w + gap) + gap, 3), 255, np.uint8)
        if sub["source"]:
            canvas[:h, :w] = _resized(_still(reenacted / sub["source"]), (h, w))
        for r, (_, frames) in enumerate(cols):
            for c, t in enumerate(t_idx):
                x = (c + 1) * (w + gap) + gap
                canvas[r * (h + gap): r * (h + gap) + h, x: x + w] = _resized(np.asarray(frames[t]), (h, w))
        mosaics.append((name, canvas, [label for label, _ in cols], h, w, t_idx))
    if not mosaics:
        return None
    inch = 1 / 64  # a 64 px frame is one inch wide
    heights = [m[1].shape[0] for m in mosaics]
    width = max(m[1].shape[1] for m in mosaics)
    fig, axes = plt.subplots(len(mosaics), 1, figsize=(width * inch + 1.4, sum(heights) * inch + 0.45 * len(mosaics)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (name, canvas, labels, h, w, t_idx) in zip(axes[:, 0], mosaics):
        ax.imshow(canvas, interpolation="nearest")
        ax.set_yticks([r * (h + gap) + h / 2 for r in range(len(labels))])
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xticks([w / 2] + [(c + 1) * (w + gap) + gap + w / 2 for c in range(len(t_idx))])
        ax.set_xticklabels(["source"] + [f"t={t}" for t in t_idx], fontsize=6)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(f"{TABLES[protocol]['title'].split(':')[0]}, {name}: source | driving | ours | w/o CMA | ...",
                     fontsize=7)
    return save_png(fig, path, dpi=100)


def sample_video(path: Path, index, reenacted: Path, protocol: str, name: str, rows: dict[str, str]) -> Path:
    """source | driving | ours | w/o CMA | ... side by side as an mp4 (pipeline/video.py, reproducible x264)."""
    from pipeline.video import write_video

    sub = index[(index["protocol"] == protocol) & (index["name"] == name)].iloc[0]
    cols = _columns_of(index, reenacted, protocol, name, rows)
    hw = cols[0][1].shape[1:3]
    hw = (hw[0] + hw[0] % 2, hw[1] + hw[1] % 2)
    source = _resized(_still(reenacted / sub["source"]), hw) if sub["source"] else _resized(cols[0][1][0], hw)
    n = min(len(f) for _, f in cols)
    fps = 25.0

    def frames():
        for t in range(n):
            yield np.concatenate([source] + [_resized(np.asarray(f[t]), hw) for _, f in cols], axis=1)

    write_video(path, frames(), fps)
    return path
