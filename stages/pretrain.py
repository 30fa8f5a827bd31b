"""DVC stage `pretrain`: the whole hybrid-latent encoder, self-supervised on the prepared triples (Sec. 3.2)."""
from __future__ import annotations

from pipeline.paths import ENCODER_PRETRAIN
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.train import encoder_stage, env_rank, stage_assets, stage_main


def run(ctx: StageContext) -> StageResult:
    store = None
    if ctx.section.source == "train" and ctx.section.world is not None:  # a pretraining world of its own
        from pipeline.own_world import cached_world
        from pipeline.paths import TRAIN_STATE

        for name in stage_assets(ctx.params):
            ctx.asset(name)  # a missing asset stops before the world is rendered
        store = cached_world(ctx.root / TRAIN_STATE / "pretrain", ctx.params, ctx.section.world, env_rank() == 0,
                             ctx.progress)
    return encoder_stage(ctx, ENCODER_PRETRAIN, store)


STAGE = Stage("pretrain", run, sections=("seed", "data", "prepare", "model", "analysis", "loss", "pretrain", "assets"),
              assets=lambda params: stage_assets(params))

if __name__ == "__main__":
    stage_main(STAGE)
