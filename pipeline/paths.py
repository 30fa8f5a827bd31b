"""Every path the pipeline uses has its one home here (dvc.yaml names the same paths)."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def workspace() -> Path:
    """The working copy a stage runs in: the current directory under DVC (queued experiments run in a
    temporary copy), else the repo root."""
    return Path.cwd() if (Path.cwd() / "dvc.yaml").is_file() else REPO_ROOT


# Stage outputs, relative to the workspace (the same strings as in dvc.yaml).
RAW = Path("data/raw")
PREPARED = Path("data/prepared")
METRICS = Path("metrics")
REPORTS = Path("reports")
MODELS = Path("models")

# Trained networks (the toy world's counterparts of the paper's pre-trained FFHQ StyleGAN2 and face analysers).
GENERATOR_CHECKPOINT = MODELS / "generator.pt"
ANALYZER_CHECKPOINT = MODELS / "analyzer.pt"

# The hybrid-latent encoder (stages `pretrain` and `finetune`): each stage's trained encoder + latent discriminator,
# and the resumable training state (not a DVC output: it survives a killed run; see pipeline/train.py).
ENCODER_PRETRAIN = MODELS / "encoder_pretrain.pt"
ENCODER_CHECKPOINT = MODELS / "encoder.pt"
TRAIN_STATE = Path("checkpoints")

# Stage `reenact`: the evaluation protocols' re-enacted videos (layout: pipeline/protocols.py; read by `evaluate`) and
# the attribute edit directions of Eq. 4 (pipeline/edits.py).
REENACTED = Path("data/reenacted")
EDIT_DIRECTIONS = MODELS / "edits.pt"

# Stage `oracle`: Eq. 3's own space fitted per frame with G fixed (no encoder), the ceiling row of Tables 1-2
# (layout: pipeline/oracle.py; read by `evaluate`).
ORACLE = Path("data/oracle")
