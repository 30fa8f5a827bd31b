"""DVC stage `analyzer`: train the toy world's face analysis network and score it on held-out identities."""
from __future__ import annotations

from pipeline.analysis import backend_tags
from pipeline.analysis.toy import ToyAnalyzer, save_checkpoint, train_analyzer
from pipeline.paths import ANALYZER_CHECKPOINT, PREPARED, REPORTS
from pipeline.plots import analyzer_figure
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.store import load_split


def run(ctx: StageContext) -> StageResult:
    section, seed = ctx.section, ctx.params.seed
    test = load_split(ctx.root / PREPARED, "test", with_truth=True)
    out = train_analyzer(section, seed, load_split(ctx.root / PREPARED, "train", with_truth=True), test,
                         progress=ctx.progress)
    path = ctx.root / ANALYZER_CHECKPOINT
    save_checkpoint(path, out.analyzer.net, out.facts, out.analyzer.threshold, section.model_dump(mode="json"), seed)
    backend = ToyAnalyzer.load(path, root=ctx.root).describe()  # name + sha256 of the file just written
    figure = analyzer_figure(ctx.root / REPORTS / "analyzer.png", out.predicted, test.truth, out.distances,
                             out.analyzer.threshold)
    return StageResult(metrics={**backend, **out.metrics}, history=out.history, artifacts=[figure],
                       tags=backend_tags("analyzer", backend))


STAGE = Stage("analyzer", run, sections=("seed", "analyzer"))

if __name__ == "__main__":
    STAGE.main()
