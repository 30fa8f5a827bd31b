"""DVC stage `prepare`: FOMM-style crops, landmarks, Eq. 13 masks, identity-disjoint split, frame sampling."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.assets import require
from pipeline.config import load_params
from pipeline.io import write_json, write_text
from pipeline.paths import METRICS, PREPARED, RAW, REPORTS, workspace
from pipeline.plots import image_grid, overlay_mask
from pipeline.prepare import clips_dir, prepare, report_markdown, summarize
from pipeline.tracking import stage_run

LANDMARKS_ASSET = "dlib_landmarks68"


def main(dry_run: bool = False, progress: bool = True) -> dict:
    params = load_params()
    section = params.prepare
    logged = {"seed": params.seed, "split": params.split.model_dump(), "prepare": section.model_dump(mode="json")}
    if dry_run:
        print(logged)
        return logged
    root = workspace()
    index = pd.read_csv(root / RAW / "index.csv", keep_default_na=False)
    needs_dlib = section.detector == "dlib" or (section.detector == "auto" and (index.get("truth", "") == "").any())
    landmarks_model = require(LANDMARKS_ASSET, params.assets) if needs_dlib else None
    with stage_run("prepare", logged) as run:
        manifest, outcomes = prepare(root / RAW / "index.csv", root / PREPARED, section, params.seed,
                                     params.split.test_fraction, landmarks_model, progress=progress)
        metrics = summarize(manifest, outcomes, clips_dir(root / PREPARED))
        write_json(root / METRICS / "prepare.json", metrics)
        report = root / REPORTS / "prepare.md"
        write_text(report, report_markdown(metrics, outcomes))
        sheet = _sample_sheet(manifest, root / PREPARED, root / REPORTS / "prepare_samples.png")
        run.log_metrics(metrics)
        run.log_artifact(report)
        run.log_artifact(sheet)
    return metrics


def _sample_sheet(manifest: pd.DataFrame, prepared, path):
    """Crops with the Eq. 13 mask tinted and the landmarks dotted, a few per split."""
    images, titles, points = [], [], []
    for split in ("train", "test"):
        rows = manifest[(manifest["split"] == split) & (manifest["kind"] == "clip")].head(8)
        for rec in rows.to_dict("records"):
            folder = clips_dir(prepared) / rec["clip_id"]
            frames = np.load(folder / "frames.npy", mmap_mode="r")
            masks = np.load(folder / "masks.npy", mmap_mode="r")
            lms = np.load(folder / "landmarks.npy")
            k = len(frames) // 2
            images.append(overlay_mask(np.asarray(frames[k]), masks[k]))
            points.append(lms[k])
            titles.append(f"{split} {rec['clip_id']}")
    return image_grid(path, images, titles, ncols=8, points=points, suptitle="prepare: crops, Eq. 13 masks, landmarks")


if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main(main)
