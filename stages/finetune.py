"""DVC stage `finetune`: E_ID and E_F from pretrain's encoder, F frozen, at a lower lr (Sec. 4, Training)."""
from __future__ import annotations

from pipeline.paths import ENCODER_CHECKPOINT
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.train import encoder_stage, stage_assets, stage_main


def run(ctx: StageContext) -> StageResult:
    return encoder_stage(ctx, ENCODER_CHECKPOINT)


STAGE = Stage("finetune", run, sections=("seed", "model", "analysis", "loss", "finetune", "assets"),
              assets=lambda params: stage_assets(params))

if __name__ == "__main__":
    stage_main(STAGE)
