"""`reenact`: one subcommand per DVC stage, plus tools (assets, crop, params)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

app = typer.Typer(
    help="One-shot face video re-enactment with StyleGAN2's hybrid latent space: pipeline stages and tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _user_errors() -> tuple[type[Exception], ...]:
    from pipeline.assets import AssetError
    from pipeline.config import ParamsError
    from pipeline.data import DataError
    from pipeline.prepare import PrepareError
    from pipeline.video import VideoError

    return ParamsError, AssetError, DataError, PrepareError, VideoError, FileNotFoundError, ValueError


def _run(fn, *args, **kwargs):
    """Run a command; a user-facing error prints its message (no traceback) and exits with status 2."""
    try:
        return fn(*args, **kwargs)
    except _user_errors() as e:
        console.print(f"error: {e}", style="red", highlight=False, markup=False)
        raise typer.Exit(2) from None


def stage_main(fn) -> None:
    """What `python -m stages.<name>` (the DVC command) runs: user errors print one message and exit 2."""
    try:
        _run(fn)
    except typer.Exit as e:
        raise SystemExit(e.exit_code) from None


DRY_RUN = typer.Option(False, "--dry-run", help="Validate params and print the resolved section; run nothing.")


@app.command()
def data(dry_run: bool = DRY_RUN) -> None:
    """Stage `data`: render the synthetic talking-head world, or index your videos (data.source: folder)."""
    from stages import data as stage

    _run(stage.main, dry_run=dry_run)


@app.command()
def prepare(dry_run: bool = DRY_RUN) -> None:
    """Stage `prepare`: FOMM-style face crops, landmarks, Eq. 13 masks, identity-disjoint split, sampling."""
    from stages import prepare as stage

    _run(stage.main, dry_run=dry_run)


@app.command()
def params(path: Optional[Path] = typer.Option(None, help="params file (default: the workspace's params.yaml)")) -> None:
    """Validate params.yaml and print it with every default filled in."""
    import yaml

    from pipeline.config import load_params

    resolved = _run(load_params, path)
    typer.echo(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False))


@app.command()
def assets(path: Optional[Path] = typer.Option(None, help="params file (default: the workspace's params.yaml)")) -> None:
    """List every pre-trained asset named in params.yaml: present / missing / checksum-mismatch, and how to get it."""
    from pipeline.assets import check
    from pipeline.config import load_params

    resolved = _run(load_params, path)
    table = Table(title="assets (params.yaml: assets)")
    for column in ("name", "status", "used by", "path", "how to obtain"):
        table.add_column(column, overflow="fold")
    colours = {"present": "green", "unverified": "yellow", "missing": "red", "checksum-mismatch": "red"}
    bad = 0
    for name, asset in resolved.assets.items():
        status = check(name, asset)
        bad += status.status in ("missing", "checksum-mismatch")
        table.add_row(name, f"[{colours[status.status]}]{status.status}[/]", ", ".join(status.used_by),
                      str(status.path or asset.path), asset.source)
    Console().print(table)
    if bad:
        console.print(f"{bad} asset(s) missing or wrong: stages that use them will stop with this message.")


@app.command()
def crop(
    input: Path = typer.Argument(..., help="a video, or a folder of videos (mp4, mov, avi, mkv, webm)"),
    out: Path = typer.Option(..., "--out", help="output folder: <video-stem>_<track>.mp4 per face track + crops.json"),
    size: int = typer.Option(256, help="crop side in pixels (even)"),
    min_frames: int = typer.Option(25, help="keep face tracks with more frames than this (FOMM: 150)"),
    increase: float = typer.Option(0.1, help="enlarge the track's union box by this fraction per side"),
    iou_with_initial: float = typer.Option(0.25, help="IoU with a track's first box that continues the track"),
    max_gap: int = typer.Option(5, help="frames a track survives without a detection (0: FOMM exactly)"),
    upsample: int = typer.Option(1, help="dlib HOG upsampling: 1 finds small faces, 0 is 4x faster"),
) -> None:
    """FOMM-style cropping of any videos: detect (dlib HOG), track by IoU, one square crop per face track."""
    from pipeline.crop import crop_command_inputs, crop_videos
    from pipeline.faces import DlibDetector

    inputs = _run(crop_command_inputs, input)
    result = _run(crop_videos, inputs, out, size=size, min_frames=min_frames, increase=increase,
                  iou_with_initial=iou_with_initial, max_gap=max_gap, detector=DlibDetector(upsample=upsample))
    for entry in result.values():
        if entry["tracks"]:
            typer.echo(f"{entry['video']}: {len(entry['tracks'])} track(s)")
        else:
            typer.echo(f"{entry['video']}: none ({entry['reason']})")
    kept = sum(len(entry["tracks"]) for entry in result.values())
    typer.echo(f"{kept} track(s) cropped from {len(inputs)} video(s); see {out / 'crops.json'}")


if __name__ == "__main__":
    app()
