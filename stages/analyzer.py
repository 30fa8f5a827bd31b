"""DVC stage `analyzer`: the toy world's face analysis network (the embedded default's ArcFace and OpenFace):
the shipped asset (source: native) or trained on a world of its own (source: train), checked to share no
identity with the evaluation world, and scored on the evaluation world's held-out identities."""
from __future__ import annotations

import shutil
import tempfile

from pipeline.analysis import backend_tags
from pipeline.analysis.toy import ToyAnalyzer, check_disjoint, save_checkpoint, score_analyzer
from pipeline.analysis.toy_world import train_on_own_world
from pipeline.io import atomic_path
from pipeline.paths import ANALYZER_CHECKPOINT, PREPARED, REPORTS
from pipeline.plots import analyzer_figure
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.store import PreparedStore, identity_fingerprints, load_split


def run(ctx: StageContext) -> StageResult:
    section, path = ctx.section, ctx.root / ANALYZER_CHECKPOINT
    history, train = None, {}
    if section.source == "train":
        with tempfile.TemporaryDirectory(prefix=".analyzer-world-", dir=ctx.root) as scratch:
            out = train_on_own_world(section, ctx.params.data, ctx.params.prepare, ctx.root / scratch, ctx.progress)
        save_checkpoint(path, out.analyzer.net, out.facts, out.analyzer.threshold, section.model_dump(mode="json"),
                        section.world.seed)
        history, train = out.history, out.metrics
    else:
        with atomic_path(path) as tmp:
            shutil.copyfile(ctx.asset(section.checkpoint), tmp)
    analyzer = ToyAnalyzer.load(path, root=ctx.root)
    check_disjoint(analyzer, identity_fingerprints(PreparedStore(ctx.root / PREPARED)), path)
    test = load_split(ctx.root / PREPARED, "test", with_truth=True)
    score = score_analyzer(analyzer, test, section.eval_pairs, ctx.params.seed)
    figure = analyzer_figure(ctx.root / REPORTS / "analyzer.png", score.predicted, test.truth, score.distances,
                             score.metrics["verification"]["threshold"])
    backend = analyzer.describe()
    metrics = {**backend, "source": section.source, "world": analyzer.facts.get("world"),
               **({"train": train} if train else {}), "heldout": score.metrics}
    return StageResult(metrics=metrics, history=history, artifacts=[figure], tags=backend_tags("analyzer", backend))


STAGE = Stage("analyzer", run, sections=("seed", "data", "prepare", "analyzer", "assets"),
              history=True, assets=lambda params: [params.analyzer.checkpoint] if params.analyzer.source == "native" else [])

if __name__ == "__main__":
    STAGE.main()
