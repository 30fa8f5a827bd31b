"""DVC stage `generator`: convert a user StyleGAN2 checkpoint, or train the embedded default's small one."""
from __future__ import annotations

import shutil

from pipeline.generator import convert_generator, sample, train_generator
from pipeline.models.stylegan2_formats import save_native
from pipeline.paths import GENERATOR_CHECKPOINT, PREPARED, REPORTS
from pipeline.plots import image_grid
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.store import load_split


def run(ctx: StageContext) -> StageResult:
    section, seed = ctx.section, ctx.params.seed
    figures = ctx.root / REPORTS / "generator"
    shutil.rmtree(figures, ignore_errors=True)  # no figure left from another source
    if section.source == "train":
        out = train_generator(section, seed, load_split(ctx.root / PREPARED, "train"),
                              load_split(ctx.root / PREPARED, "test"), progress=ctx.progress)
        recon, n = out.reconstructions, min(8, len(out.reconstructions.targets))
        image_grid(figures / "reconstructions.png",
                   [*recon.targets[:n], *recon.encoded[:n], *recon.refined[:n]],
                   [*(["held-out"] * n), *(["encoder"] * n), *([f"+{section.refine_steps} steps"] * n)], ncols=n,
                   suptitle="generator: held-out identities, reconstructed (rows: target, encoder, refined W+)")
        image_grid(figures / "samples.png", list(sample(out.G, 32, section.truncation, seed)), ncols=8,
                   suptitle=f"generator: random samples, truncation {section.truncation}")
    else:
        out = convert_generator(ctx.asset(section.checkpoint), section.source, seed)
        image_grid(figures / "samples.png", list(sample(out.G, 8, section.truncation, seed)), ncols=4,
                   suptitle=f"generator: {section.source} checkpoint, truncation {section.truncation}")
    save_native(out.G, ctx.root / GENERATOR_CHECKPOINT,
                extra={"source": section.source, "metrics": out.metrics, "params": section.model_dump(mode="json"),
                       "seed": seed})
    return StageResult(metrics=out.metrics, history=out.history, artifacts=[figures], timings=out.timings)


STAGE = Stage("generator", run, sections=("seed", "generator", "assets"),
              history=True, assets=lambda params: [params.generator.checkpoint] if params.generator.source != "train" else [])

if __name__ == "__main__":
    STAGE.main()
