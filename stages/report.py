"""DVC stage `report`: Tables 1-3 in the paper's layout with the paper's numbers beside ours (reports/tables.md and
.html), loss curves and metric plots (reports/figures/), sample grids and side-by-side mp4s (reports/samples/).
The tables and plots: pipeline/report.py; the ablation table across experiments: pipeline/ablation.py."""
from __future__ import annotations

from pipeline.evaluate import PROTOCOL_KEYS, read_index
from pipeline.io import atomic_dir, write_text
from pipeline.paths import METRICS, REENACTED, REPORTS
from pipeline.report import (load_results, loss_curves, metric_plot, paper_table, sample_grid,
                             sample_names, sample_video, tables_html, tables_markdown)
from pipeline.stage import Stage, StageContext, StageResult

TABLES_MD, TABLES_HTML = REPORTS / "tables.md", REPORTS / "tables.html"
FIGURES, SAMPLES = REPORTS / "figures", REPORTS / "samples"
HISTORIES = {"pretrain": METRICS / "pretrain_history.csv", "finetune": METRICS / "finetune_history.csv"}
ABLATIONS_NOTE = ("Rows of other DVC experiments (w/o ID reg, w/o Hybrid; several seeds, mean ± spread and paired "
                  "tests against full): reports/ablations.md, built from the MLflow store by `reenact ablate` "
                  "(or, from existing runs, `reenact ablate --table-only`).")


def run(ctx: StageContext) -> StageResult:
    import pandas as pd

    section = ctx.section
    results = load_results(ctx.root)
    tables = [paper_table(p, results[p], section.alpha) for p in results]
    write_text(ctx.root / TABLES_MD, tables_markdown(tables, ABLATIONS_NOTE))
    write_text(ctx.root / TABLES_HTML, tables_html(tables, ABLATIONS_NOTE))
    histories = {}
    for stage, rel in HISTORIES.items():
        path = ctx.root / rel
        histories[stage] = pd.read_csv(path) if path.is_file() and path.stat().st_size > 5 else None
    figures, samples = [], []
    with atomic_dir(ctx.root / FIGURES) as out:
        if loss_curves(out / "loss_curves.png", histories) is not None:
            figures.append("loss_curves.png")
        for p in results:
            figures.append(metric_plot(out / f"metrics_{PROTOCOL_KEYS[p]}.png", p, results[p]).name)
    reenacted = ctx.root / REENACTED
    index = read_index(reenacted)
    with atomic_dir(ctx.root / SAMPLES) as out:
        for p in ("same", "cross", "robustness"):
            if p not in results:
                continue
            rows = {a: r["ablation"] for a, r in results[p]["rows"].items()}
            names = sample_names(index, p, section.samples)
            if names and sample_grid(out / f"{PROTOCOL_KEYS[p]}_grid.png", index, reenacted, p, names, rows,
                                     section.grid_frames) is not None:
                samples.append(f"{PROTOCOL_KEYS[p]}_grid.png")
            if p != "robustness":
                for name in names[: section.videos]:
                    samples.append(sample_video(out / f"{PROTOCOL_KEYS[p]}_{name}.mp4", index, reenacted, p, name,
                                                rows).name)
    metrics = {"tables": {PROTOCOL_KEYS[p]: len(t.rows) for p, t in zip(results, tables)},
               "figures": figures, "samples": samples}
    return StageResult(metrics, artifacts=[ctx.root / TABLES_MD, ctx.root / TABLES_HTML, ctx.root / FIGURES,
                                           ctx.root / SAMPLES])


STAGE = Stage("report", run, sections=("report",))

if __name__ == "__main__":
    STAGE.main()
