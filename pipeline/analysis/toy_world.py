"""The toy analyzer's own training world: rendered with its own seed (identities the evaluation world never
shows, as ArcFace's and OpenFace's training faces are not HDTF's), cropped as `prepare` does, trained on."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.analysis.toy import TrainedAnalyzer, train_analyzer

if TYPE_CHECKING:
    from pipeline.config import AnalyzerParams, DataParams, PrepareParams


def train_on_own_world(params: "AnalyzerParams", data: "DataParams", prepare_params: "PrepareParams",
                       scratch: Path, progress: bool = True) -> TrainedAnalyzer:
    """Render the analyzer's own world (params.world: its own seed, so identities disjoint from the evaluation
    world's), crop it as `prepare` does (renderer boxes), train on its training identities, choose the threshold
    on its validation identities. `scratch` is a folder for the world, left to the caller to delete."""
    from pipeline.own_world import render_own_world
    from pipeline.store import PreparedStore, identity_fingerprints, load_split

    world = params.world
    render_own_world(scratch, data, prepare_params, world.seed, world.n_identities, world.clips_per_identity,
                     world.frames_per_clip, world.validation_fraction, progress)
    train_split = load_split(scratch / "prepared", "train", with_truth=True)
    trained = train_analyzer(params, world.seed, train_split, load_split(scratch / "prepared", "test", with_truth=True),
                             progress)
    fingerprints = identity_fingerprints(PreparedStore(scratch / "prepared"))
    trained.facts["world"] = {**world.model_dump(mode="json"), "resolution": data.resolution, "fps": data.fps}
    trained.facts["identity_fingerprints"] = sorted(fingerprints[i] for i in np.unique(train_split.identities))
    return trained
