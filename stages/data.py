"""DVC stage `data`: render the synthetic talking-head world, or index the user's videos (data.source: folder)."""
from __future__ import annotations

from pipeline.data import index_folder, make_synthetic, sample_sheet
from pipeline.paths import RAW, REPORTS
from pipeline.stage import Stage, StageContext, StageResult

TIMINGS = ("seconds", "frames_per_second")  # the renderer's speed: MLflow only


def run(ctx: StageContext) -> StageResult:
    section, raw = ctx.section, ctx.root / RAW
    if section.source == "synthetic":
        summary = make_synthetic(raw, section, ctx.params.seed, ctx.params.split.test_fraction, progress=ctx.progress)
    else:
        summary = index_folder(raw, section, ctx.root)
    sheet = sample_sheet(raw, ctx.root / REPORTS / "data_samples.png")
    return StageResult(metrics={k: v for k, v in summary.items() if k not in TIMINGS},
                       timings={k: v for k, v in summary.items() if k in TIMINGS},
                       artifacts=[sheet] if sheet is not None else [])


STAGE = Stage("data", run, sections=("seed", "split", "data"))

if __name__ == "__main__":
    STAGE.main()
