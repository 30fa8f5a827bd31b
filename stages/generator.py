"""DVC stage `generator`: the StyleGAN2 every later stage drives. The embedded default loads the shipped toy
generator (source: native, the synthetic world's FFHQ StyleGAN2), checks that it never saw a held-out identity,
and re-measures its quality gates; `train` re-trains it; `rosinality` / `nvidia` convert a user checkpoint."""
from __future__ import annotations

import shutil

from pipeline.analysis.toy import ToyAnalyzer
from pipeline.generator import (check_world, convert_generator, load_warmup_encoder, sample, save_toy_generator,
                                score_generator, train_generator, world_record)
from pipeline.io import atomic_path
from pipeline.models.stylegan2_formats import load_generator, save_native
from pipeline.paths import ANALYZER_CHECKPOINT, GENERATOR_CHECKPOINT, PREPARED, REPORTS
from pipeline.plots import image_grid
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.store import PreparedStore, load_split


def run(ctx: StageContext) -> StageResult:
    section, seed, path = ctx.section, ctx.params.seed, ctx.root / GENERATOR_CHECKPOINT
    store = PreparedStore(ctx.root / PREPARED)
    out = None
    if section.source == "train":
        train = load_split(store.root, "train")
        out = train_generator(section, seed, train, progress=ctx.progress)
        save_toy_generator(out.G, out.E, path, extra={"params": section.model_dump(mode="json"), "seed": seed,
                                                     "trained": out.metrics, "world": world_record(store, train)})
    elif section.source == "native":
        with atomic_path(path) as tmp:
            shutil.copyfile(ctx.asset(section.checkpoint), tmp)
    else:
        out = convert_generator(ctx.asset(section.checkpoint), section.source, seed)
        save_native(out.G, path, extra={"source": section.source, "checkpoint": section.checkpoint, "seed": seed})
    G = load_generator(path, "native")
    check_world(G.checkpoint_info["extra"], store, path)
    E = load_warmup_encoder(path)
    test, analyzer = None, None
    if E is not None:  # a toy generator: score it on the held-out identities (through the analyzer where labels exist)
        test = load_split(store.root, "test", with_truth=store.has_truth(store.clips("test")["clip_id"].iloc[0]))
        analyzer = ToyAnalyzer.load(ctx.root / ANALYZER_CHECKPOINT, root=ctx.root) if test.truth is not None else None
    metrics, recon = score_generator(G, E, test, analyzer, section, seed)
    figures = ctx.root / REPORTS / "generator"
    shutil.rmtree(figures, ignore_errors=True)  # no figure left from another source
    if recon is not None:
        n = min(8, len(recon.targets))
        image_grid(figures / "reconstructions.png", [*recon.targets[:n], *recon.encoded[:n], *recon.refined[:n]],
                   [*(["held-out"] * n), *(["encoder"] * n), *([f"+{section.refine_steps} steps"] * n)], ncols=n,
                   suptitle="generator: held-out identities, reconstructed (rows: target, encoder, refined W+)")
    image_grid(figures / "samples.png", list(sample(G, 32 if G.resolution <= 128 else 8, section.truncation, seed)),
               ncols=8, suptitle=f"generator ({section.source}): random samples, truncation {section.truncation}")
    trained = (G.checkpoint_info["extra"] or {}).get("trained")
    metrics = {"source": section.source, **({"checkpoint": section.checkpoint} if section.source != "train" else {}),
               **metrics, **({"trained": trained} if trained else {})}
    return StageResult(metrics=metrics, history=out.history if out else None, artifacts=[figures],
                       timings=out.timings if out else {})


STAGE = Stage("generator", run, sections=("seed", "generator", "assets"), history=True,
              assets=lambda params: [params.generator.checkpoint] if params.generator.source != "train" else [])

if __name__ == "__main__":
    STAGE.main()
