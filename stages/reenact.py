"""DVC stage `reenact`: the evaluation protocols' re-enacted videos (same identity, cross identity, robustness),
with and without per-video adaptation of G (CMA, PTI), and the attribute edit directions. Output layout and
metrics: pipeline/protocols.py."""
from __future__ import annotations

from pipeline.protocols import reenact_protocols, stage_assets
from pipeline.stage import Stage

STAGE = Stage("reenact", reenact_protocols, sections=("seed", "analysis", "evaluate", "reenact", "assets"),
              assets=stage_assets)

if __name__ == "__main__":
    STAGE.main()
