"""Shared fixtures: the real params.yaml shrunk to a tiny configuration, and the real media folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# The smallest world the pipeline still runs end to end on (seconds, not minutes).
TINY = {
    "data.n_identities": 5,
    "data.clips_per_identity": 2,
    "data.frames_per_clip": 12,
    "data.resolution": 96,
    "data.cross_per_clip": 1,
    "prepare.size": 32,
    "prepare.min_frames": 4,
    "prepare.train_frames": 6,
    "prepare.eval_frames": 10,
    "split.test_fraction": 0.4,
    "prepare.workers": 1,
    "generator.source": "train",
    "generator.style_dim": 16,
    "generator.channel_base": None,
    "generator.n_mlp": 2,
    "generator.channel_max": 16,
    "generator.iters": 4,
    "generator.batch_size": 4,
    "generator.mapping_iters": 3,
    "generator.eval_frames": 4,
    "generator.refine_steps": 2,
    "generator.ema_half_life_images": 0,
    "analyzer.source": "train",
    "analyzer.world.n_identities": 6,
    "analyzer.world.frames_per_clip": 12,
    "analyzer.world.validation_fraction": 0.34,
    "analyzer.width": 4,
    "analyzer.embedding_dim": 16,
    "analyzer.iters": 4,
    "analyzer.batch_size": 8,
    "analyzer.eval_pairs": 20,
    "model.encoder.units": [1, 1, 1, 1],
    "model.encoder.widths": [16, 16, 16, 16],
    "loss.gv_patch": 4,
    "pretrain.source": "train",  # the shipped encoder fits the embedded default's generator, not the tiny one
    "pretrain.world": None,  # train on the tiny world itself (the default renders a 400-identity world of its own)
    "pretrain.iters": 4,
    "pretrain.batch_size": 4,
    "pretrain.checkpoint_every": 2,
    "pretrain.log_every": 1,
    "pretrain.eval_triples": 4,
    "finetune.iters": 3,
    "finetune.batch_size": 4,
    "finetune.checkpoint_every": 2,
    "finetune.log_every": 1,
    "finetune.eval_triples": 4,
    "reenact.max_videos": 2,
    "reenact.max_frames": 6,
    "reenact.batch_size": 4,
    "reenact.cma.steps": 2,
    "reenact.cma.frames_per_step": 2,
    "reenact.pti.w_steps": 2,
    "reenact.pti.steps": 2,
    "reenact.edits.components": 3,
    "reenact.edits.samples": 64,
    "reenact.edits.frames_per_clip": 2,
}


def tiny_raw(**overrides) -> dict:
    """The repo's params.yaml as a dict with TINY and then `overrides` (dotted keys) applied."""
    from pipeline.config import set_dotted

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {**TINY, **overrides}.items():
        set_dotted(raw, key, value)
    return raw


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip with a reason on machines without CUDA (the CI machine, these 2-core boxes)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def real_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def tiny_params(real_params) -> dict:
    from pipeline.config import set_dotted

    for key, value in TINY.items():
        set_dotted(real_params, key, value)
    return real_params


@pytest.fixture(scope="session")
def detector():
    """dlib's HOG face detector (pipeline.faces), built once."""
    from pipeline.faces import DlibDetector

    return DlibDetector()


@pytest.fixture(scope="session")
def landmarks():
    """dlib's 68-point predictor (pipeline.faces), built once."""
    from pipeline.faces import DlibLandmarks

    return DlibLandmarks()


@pytest.fixture
def media() -> Path:
    if not MEDIA.is_dir():
        pytest.skip(f"real footage not found at {MEDIA} (it sits in ../shared/media beside the repo)")
    return MEDIA
