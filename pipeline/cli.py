"""`reenact`: one subcommand per DVC stage, plus tools (assets, crop, params)."""
from __future__ import annotations

import os
import sys
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


generator_app = typer.Typer(help="Stage `generator` (no subcommand) and StyleGAN2 tools.", invoke_without_command=True)
app.add_typer(generator_app, name="generator")


@generator_app.callback()
def generator(ctx: typer.Context, dry_run: bool = DRY_RUN) -> None:
    """Stage `generator`: convert a rosinality / NVIDIA StyleGAN2 checkpoint, or train the toy world's small one."""
    if ctx.invoked_subcommand is None:
        from stages import generator as stage

        _run(stage.main, dry_run=dry_run)


FORMAT = typer.Option(..., "--format", help="checkpoint format: rosinality | nvidia | native")


@generator_app.command("render")
def generator_render(
    checkpoint: Path = typer.Option(..., help="StyleGAN2 checkpoint file"),
    format: str = FORMAT,
    wplus: Optional[Path] = typer.Option(None, help="W+ codes: .npy float32 [N, n_latent, style_dim]"),
    sspace: Optional[Path] = typer.Option(None, help="StyleSpace codes: .npz with s_0 ... s_{L-1}, each [N, C_l]"),
    noise: Optional[Path] = typer.Option(None, help=".npz with noise_0 ... noise_k [1, 1, r, r] (rosinality order); "
                                                    "default: the checkpoint's fixed noise buffers"),
    out: Path = typer.Option(..., help="output .npy: float32 [N, 3, H, W] in the generator's output range"),
    batch_size: int = typer.Option(8, help="images per forward pass"),
) -> None:
    """Render W+ or StyleSpace codes with a checkpoint, for checks and debugging."""
    import numpy as np

    from pipeline.io import save_npy
    from pipeline.models.stylegan2_formats import load_generator, render

    if (wplus is None) == (sspace is None):
        console.print("error: give exactly one of --wplus and --sspace", style="red")
        raise typer.Exit(2)
    G = _run(load_generator, checkpoint, format)
    codes_w = _run(np.load, wplus) if wplus else None
    codes_s = dict(_run(np.load, sspace)) if sspace else None
    noises = dict(_run(np.load, noise)) if noise else None
    images = _run(render, G, codes_w, codes_s, noises, batch_size=batch_size)
    save_npy(out, images.astype(np.float32))
    typer.echo(f"{out}: {images.shape[0]} image(s) {images.shape[2]}x{images.shape[3]}")


@generator_app.command("layers")
def generator_layers(
    resolution: int = typer.Option(1024, help="generator resolution (power of two, 8 ... 1024)"),
    channel_multiplier: int = typer.Option(2, help="StyleGAN2 channel multiplier (config-f: 2)"),
    path: Optional[Path] = typer.Option(None, help="params file (default: the workspace's params.yaml)"),
) -> None:
    """Print the StyleSpace layer table, marking the layers that carry S_F (params: model.sf_layers)."""
    from pipeline.config import load_params
    from pipeline.models.stylegan2 import Generator

    sf_layers = _run(load_params, path).model.sf_layers
    with _meta_device():
        G = Generator(resolution=resolution, channel_multiplier=channel_multiplier)
    sf = set(G.ss_indices(sf_layers.order, sf_layers.count))
    table = Table(title=f"StyleSpace layers at {resolution} px (S_F: first {sf_layers.count}, order '{sf_layers.order}')")
    for column in ("index", "name", "kind", "resolution", "channels", "W+ row", "S_F"):
        table.add_column(column)
    for layer in G.ss_layers:
        table.add_row(str(layer.index), layer.name, layer.kind, str(layer.resolution), str(layer.channels),
                      str(layer.wplus_row), "yes" if layer.index in sf else "")
    Console().print(table)
    typer.echo(f"{len(G.ss_layers)} layers, {sum(layer.channels for layer in G.ss_layers)} channels")


def _meta_device():
    import torch

    return torch.device("meta")  # shapes only: no memory for a 1024 px generator's weights


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
    for column in ("name", "status"):
        table.add_column(column, no_wrap=True)
    for column in ("used by", "path", "how to obtain"):
        table.add_column(column, overflow="fold")
    colours = {"present": "green", "unverified": "yellow", "missing": "red", "checksum-mismatch": "red"}
    bad = 0
    for name, asset in resolved.assets.items():
        status = check(name, asset)
        bad += status.status in ("missing", "checksum-mismatch")
        table.add_row(name, f"[{colours[status.status]}]{status.status}[/]", ", ".join(status.used_by),
                      str(status.path or asset.path), asset.source)
    # Piped or captured output gets full lines (grep-able) instead of a table folded to 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(table)
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
