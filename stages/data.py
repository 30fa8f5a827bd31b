"""DVC stage `data`: render the synthetic talking-head world, or index the user's videos."""
from __future__ import annotations

from pipeline.config import load_params
from pipeline.data import index_folder, make_synthetic, sample_sheet
from pipeline.io import write_json
from pipeline.paths import METRICS, RAW, REPORTS, workspace
from pipeline.tracking import stage_run


def main(dry_run: bool = False, progress: bool = True) -> dict:
    params = load_params()
    section = params.data
    logged = {"seed": params.seed, "split": params.split.model_dump(), "data": section.model_dump(mode="json")}
    if dry_run:
        print(logged)
        return logged
    root = workspace()
    with stage_run("data", logged) as run:
        if section.source == "synthetic":
            metrics = make_synthetic(root / RAW, section, params.seed, params.split.test_fraction, progress=progress)
        else:
            metrics = index_folder(root / RAW, section)
        write_json(root / METRICS / "data.json", metrics)
        sheet = sample_sheet(root / RAW, root / REPORTS / "data_samples.png")
        run.log_metrics(metrics)
        if sheet is not None:
            run.log_artifact(sheet)
    return metrics


if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main(main)
