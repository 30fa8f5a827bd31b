"""DVC stage `prepare`: FOMM-style crops, landmarks, Eq. 13 masks, identity-disjoint split, frame sampling."""
from __future__ import annotations

from pipeline.io import write_text
from pipeline.paths import PREPARED, RAW, REPORTS
from pipeline.plots import prepare_sheet
from pipeline.prepare import needs_landmarks, prepare, report_markdown, summarize
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.store import PreparedStore, read_raw_index

LANDMARKS_ASSET = "dlib_landmarks68"


def run(ctx: StageContext) -> StageResult:
    section, raw, prepared = ctx.section, ctx.root / RAW, ctx.root / PREPARED
    landmarks_model = ctx.asset(LANDMARKS_ASSET) if needs_landmarks(read_raw_index(raw), section) else None
    manifest, outcomes = prepare(raw, prepared, section, ctx.params.seed, ctx.params.split.test_fraction,
                                 landmarks_model, progress=ctx.progress)
    metrics = summarize(manifest, outcomes, PreparedStore(prepared))
    report = ctx.root / REPORTS / "prepare.md"
    write_text(report, report_markdown(metrics, outcomes))
    sheet = prepare_sheet(PreparedStore(prepared), ctx.root / REPORTS / "prepare_samples.png")
    return StageResult(metrics=metrics, artifacts=[report, sheet])


STAGE = Stage("prepare", run, sections=("seed", "split", "prepare", "assets"),
              assets=lambda params: [LANDMARKS_ASSET])

if __name__ == "__main__":
    STAGE.main()
