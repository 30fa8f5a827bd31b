"""DVC stage `pretrain`: the whole hybrid-latent encoder, self-supervised on the prepared triples (Sec. 3.2)."""
from __future__ import annotations

from pipeline.paths import ENCODER_PRETRAIN
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.train import encoder_stage, stage_assets, stage_main


def run(ctx: StageContext) -> StageResult:
    return encoder_stage(ctx, ENCODER_PRETRAIN)


STAGE = Stage("pretrain", run, sections=("seed", "model", "analysis", "loss", "pretrain", "assets"),
              assets=lambda params: stage_assets(params))

if __name__ == "__main__":
    stage_main(STAGE)
