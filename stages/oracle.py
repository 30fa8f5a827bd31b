"""DVC stage `oracle`: the ceiling row of Tables 1-2, Eq. 3's own space fitted per frame with G fixed (no encoder),
on the same- and cross-identity videos `reenact` writes. Output layout and metrics: pipeline/oracle.py."""
from __future__ import annotations

from pipeline.oracle import oracle_protocols, stage_assets
from pipeline.stage import Stage

# model: only sf_layers and hybrid; reenact: only max_videos and max_frames (dvc.yaml lists exactly those keys)
STAGE = Stage("oracle", oracle_protocols, sections=("seed", "model", "reenact", "oracle", "assets"),
              assets=stage_assets)

if __name__ == "__main__":
    STAGE.main()
