"""A synthetic world of a network's own: identities the evaluation world never shows (as ArcFace's, OpenFace's and
CelebV-HQ's faces are not HDTF's). The toy analyzer trains on one (analyzer.world), the encoder can pretrain on
one (pretrain.world)."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from pipeline.config import DataParams

MANIFEST = "manifest.csv"


def render_own_world(out: Path, data: DataParams, prepare_params, seed: int, n_identities: int, clips_per_identity: int,
                     frames_per_clip: int, test_fraction: float, progress: bool = True) -> Path:
    """Render the world as `data` does (its own seed) and crop it as `prepare` does (renderer boxes) into out/raw
    and out/prepared; returns the prepared store. No cross renders (they are evaluation ground truth)."""
    from pipeline.data import make_synthetic
    from pipeline.prepare import prepare

    settings = data.model_copy(update={"n_identities": n_identities, "clips_per_identity": clips_per_identity,
                                       "frames_per_clip": frames_per_clip, "cross_per_clip": 0})
    make_synthetic(out / "raw", settings, seed, test_fraction, progress=progress)
    crops = prepare_params.model_copy(update={"detector": "ground_truth", "min_frames": 0,
                                              "train_frames": frames_per_clip})
    prepare(out / "raw", out / "prepared", crops, seed, test_fraction, None, progress=progress)
    return out / "prepared"


def cached_world(folder: Path, params, world, main: bool = True, progress: bool = True, wait_s: float = 3600) -> Path:
    """The prepared store of `world` (a PretrainWorld) rendered with params.data / params.prepare under
    folder/world-<key>/ (key: the settings), rendered once, atomically, and re-used by resumed runs. Processes
    other than the main one wait for it (torchrun)."""
    spec = {"world": world.model_dump(mode="json"), "data": params.data.model_dump(mode="json"),
            "prepare": params.prepare.model_dump(mode="json")}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    out = folder / f"world-{key}"
    done = out / "prepared" / MANIFEST
    if main and not done.is_file():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        render_own_world(tmp, params.data, params.prepare, world.seed, world.n_identities, world.clips_per_identity,
                         world.frames_per_clip, world.validation_fraction, progress)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    start = time.monotonic()
    while not done.is_file():
        if time.monotonic() - start > wait_s:
            raise TimeoutError(f"{done}: the main process did not render the pretraining world in {wait_s:.0f} s")
        time.sleep(2)
    return out / "prepared"
