"""`reenact`: one subcommand per DVC stage (run through pipeline.stage, which finds stages/<name>.py by name),
plus tools (assets, crop, analyze, params)."""
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


def _run(fn, *args, **kwargs):
    """Run a command; a user-facing error prints its message (no traceback) and exits with status 2."""
    from pipeline.stage import user_errors

    try:
        return fn(*args, **kwargs)
    except user_errors() as e:
        console.print(f"error: {e}", style="red", highlight=False, markup=False)
        raise typer.Exit(2) from None


DRY_RUN = typer.Option(False, "--dry-run", help="Validate params and print the resolved sections; run nothing.")


def _stage(name: str, dry_run: bool) -> None:
    from pipeline.stage import load_stage

    _run(load_stage(name).execute, dry_run=dry_run)


@app.command()
def data(dry_run: bool = DRY_RUN) -> None:
    """Stage `data`: render the synthetic talking-head world, or index your videos (data.source: folder)."""
    _stage("data", dry_run)


@app.command()
def prepare(dry_run: bool = DRY_RUN) -> None:
    """Stage `prepare`: FOMM-style face crops, landmarks, Eq. 13 masks, identity-disjoint split, sampling."""
    _stage("prepare", dry_run)


@app.command()
def analyzer(dry_run: bool = DRY_RUN) -> None:
    """Stage `analyzer`: train the toy world's face analysis network (identity, pose, gaze, expression) and score it."""
    _stage("analyzer", dry_run)


@app.command()
def pretrain(dry_run: bool = DRY_RUN) -> None:
    """Stage `pretrain`: train the hybrid-latent encoder (F + E_ID + E_F) on the prepared triples (Eq. 5-14); resumes."""
    _stage("pretrain", dry_run)


@app.command()
def finetune(dry_run: bool = DRY_RUN) -> None:
    """Stage `finetune`: fine-tune E_ID and E_F of pretrain's encoder, F frozen, at a lower lr; resumes."""
    _stage("finetune", dry_run)


generator_app = typer.Typer(help="Stage `generator` (no subcommand) and StyleGAN2 tools.", invoke_without_command=True)
app.add_typer(generator_app, name="generator")


@generator_app.callback()
def generator(ctx: typer.Context, dry_run: bool = DRY_RUN) -> None:
    """Stage `generator`: convert a rosinality / NVIDIA StyleGAN2 checkpoint, or train the toy world's small one."""
    if ctx.invoked_subcommand is None:
        _stage("generator", dry_run)


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
    size: Optional[int] = typer.Option(None, help="crop side in pixels, even (default: prepare.size; 256 for real data)"),
    min_frames: Optional[int] = typer.Option(None, help="keep tracks with end - start > this, FOMM's rule (default: prepare.min_frames; FOMM: 150)"),
    increase: Optional[float] = typer.Option(None, help="enlarge the track's union box by this fraction per side (default: prepare.increase)"),
    iou_with_initial: Optional[float] = typer.Option(None, help="IoU with a track's first box that continues the track (default: prepare.iou_with_initial)"),
    max_gap: Optional[int] = typer.Option(None, help="frames a track survives without a detection, 0: FOMM exactly (default: prepare.max_gap)"),
    upsample: Optional[int] = typer.Option(None, help="dlib HOG upsampling: 1 finds small faces, 0 is 4x faster (default: prepare.upsample)"),
    params_path: Optional[Path] = typer.Option(None, "--params", help="params file whose `prepare` section gives the defaults (default: the workspace's params.yaml)"),
) -> None:
    """FOMM-style cropping of any videos: detect (dlib HOG), track by IoU, one square crop per face track."""
    from pipeline.config import load_params
    from pipeline.crop import crop_command_inputs, crop_videos
    from pipeline.faces import DlibDetector

    given = {"size": size, "min_frames": min_frames, "increase": increase, "iou_with_initial": iou_with_initial,
             "max_gap": max_gap, "upsample": upsample}
    section = _run(load_params, params_path).prepare
    settings = _run(type(section).model_validate, {**section.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    inputs = _run(crop_command_inputs, input)
    result = _run(crop_videos, inputs, out, size=settings.size, min_frames=settings.min_frames,
                  increase=settings.increase, iou_with_initial=settings.iou_with_initial, max_gap=settings.max_gap,
                  detector=DlibDetector(upsample=settings.upsample))
    for entry in result.values():
        if entry["tracks"]:
            typer.echo(f"{entry['video']}: {len(entry['tracks'])} track(s)")
        else:
            typer.echo(f"{entry['video']}: none ({entry['reason']})")
    kept = sum(len(entry["tracks"]) for entry in result.values())
    typer.echo(f"{kept} track(s) cropped from {len(inputs)} video(s) at {settings.size} px; see {out / 'crops.json'}")


@app.command()
def analyze(
    input: Optional[Path] = typer.Argument(None, help="an image (jpg, png, ...) or a video (mp4, ...) to analyse"),
    backend: str = typer.Option(..., "--backend", help="face analysis backend: toy | arcface | dlib | pyfeat"),
    out: Optional[Path] = typer.Option(None, "--out", help="output .jsonl: one JSON line per analysed frame"),
    compare: Optional[tuple[Path, Path]] = typer.Option(
        None, "--compare", metavar="A B", help="print the identity distance between two images / videos instead"),
    crop: bool = typer.Option(True, "--crop/--no-crop",
                              help="find and crop the face as `prepare` does (--no-crop: inputs are aligned face crops)"),
    params_path: Optional[Path] = typer.Option(None, "--params", help="params file (default: the workspace's params.yaml)"),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="face crops per backend call"),
) -> None:
    """Face analysis of an image or video (identity embedding, head pose, gaze, expression), or --compare A B."""
    if input is not None and compare is not None:
        console.print("error: give either INPUT (with --out) or --compare A B, not both", style="red")
        raise typer.Exit(2)
    if input is None and compare is None:
        console.print("error: give an INPUT to analyse (with --out OUT.jsonl) or --compare A B", style="red")
        raise typer.Exit(2)
    if input is not None and out is None:
        console.print(f"error: --out OUT.jsonl is required to analyse {input}", style="red")
        raise typer.Exit(2)
    if compare is not None and out is not None:
        console.print("error: --compare prints its result; --out is only for analysing an INPUT", style="red")
        raise typer.Exit(2)
    if input is not None:
        n = _run(_analyze_to_jsonl, backend, input, out, crop, params_path, batch_size)
        typer.echo(f"{out}: {n} frame(s) of {input} analysed by backend '{backend}'")
    else:
        for line in _run(_analyze_compare, backend, compare[0], compare[1], crop, params_path, batch_size):
            typer.echo(line)


def _analysis_setup(backend: str, params_path: Optional[Path]):
    from pipeline.analysis import load_analyzer
    from pipeline.config import load_params

    return load_analyzer(backend, load_params(params_path))


def _identity_rows(analyzer, frames, batch_size: int):
    """Identity embeddings float [N, D] numpy (BackendError, naming the backends that can, if it has none)."""
    import numpy as np
    import torch

    with torch.no_grad():
        return np.concatenate([analyzer.identity(frames[s : s + batch_size]).detach().float().cpu().numpy()
                               for s in range(0, len(frames), batch_size)])


def _analyze_to_jsonl(backend: str, input: Path, out: Path, crop: bool, params_path: Optional[Path],
                      batch_size: int) -> int:
    import json

    import numpy as np

    from pipeline.analysis.inputs import load_faces
    from pipeline.io import atomic_path

    analyzer = _analysis_setup(backend, params_path)
    faces = load_faces(input, analyzer.input_size, crop=crop)
    weights = analyzer.weights()
    no_motion = {"found": None, "pose": None, "gaze": None, "expression": None}
    n = 0
    with atomic_path(out) as tmp, open(tmp, "w") as f:  # an error leaves no half-written output
        for s in range(0, len(faces), batch_size):
            batch = faces.frames[s : s + batch_size]
            ids = _identity_rows(analyzer, batch, batch_size) if analyzer.has_identity else None
            motion = analyzer.motion(batch) if analyzer.has_motion else None
            for i in range(len(batch)):
                row = motion.row(i) if motion is not None else no_motion
                emb = ids[i] if ids is not None else None
                emb_ok = emb is not None and bool(np.all(np.isfinite(emb)))
                found = row["found"] if row["found"] is not None else emb_ok
                record = {"input": str(input), "frame": int(faces.indices[s + i]), "backend": analyzer.name,
                          "weights": weights, "found": bool(found), "pose": row["pose"], "gaze": row["gaze"],
                          "expression": row["expression"],
                          "identity": [float(v) for v in emb] if emb_ok else None}
                f.write(json.dumps(record) + "\n")
                n += 1
    return n


def _analyze_compare(backend: str, a: Path, b: Path, crop: bool, params_path: Optional[Path],
                     batch_size: int) -> list[str]:
    import numpy as np
    import torch

    from pipeline.analysis.inputs import load_faces

    analyzer = _analysis_setup(backend, params_path)
    means, lines = [], []
    for path in (a, b):
        faces = load_faces(path, analyzer.input_size, crop=crop)
        emb = _identity_rows(analyzer, faces.frames, batch_size)
        ok = np.all(np.isfinite(emb), axis=1)
        if not ok.any():
            raise ValueError(f"{path}: backend '{backend}' found no face in any of the {len(emb)} crop(s); "
                             f"try another backend or a clearer, more frontal view")
        # a video's identity: the mean embedding over the frames where the backend saw a face
        means.append(torch.from_numpy(emb[ok].mean(axis=0)))
        lines.append(f"{path}: {len(emb)} frame(s), {int(ok.sum())} with a face")
    d = float(analyzer.distance(means[0][None], means[1][None])[0])
    lines.append(f"identity distance ({analyzer.distance_name}, backend {analyzer.name}): {d:.4f}")
    if analyzer.threshold is not None:
        same = "yes" if d <= analyzer.threshold else "no"
        lines.append(f"same person: {same} (threshold {analyzer.threshold})")
    else:
        lines.append(f"same person: undecided (backend {analyzer.name} has no same-person threshold)")
    return lines


@app.command()
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="folder of the method's output videos (mp4, ... or .npy frame arrays)"),
    driving: Path = typer.Option(..., "--driving", help="folder of the driving videos, named like the predictions"),
    out: Path = typer.Option(..., "--out", help="output JSON: aggregate (mean, std, ci95, n), per_video, networks, missing"),
    source: Optional[Path] = typer.Option(
        None, "--source", help="folder of source frames (images, or videos: their first frame), named like the "
                               "predictions; default for --protocol same: the first driving frame"),
    protocol: str = typer.Option("same", "--protocol", help="same | cross | robustness (preds named <driving>__<tag>)"),
    metrics: str = typer.Option("paper", "--metrics",
                                help="paper (the protocol's table in the paper) | params (params.yaml evaluate.metrics) | "
                                     "a comma list of names"),
    target: Optional[Path] = typer.Option(None, "--target", help="folder of ground-truth cross renders (*_gt metrics)"),
    landmarks: Optional[Path] = typer.Option(None, "--landmarks",
                                             help="folder of <driving>.npy [T, 68, 2] landmarks for FVD_M (default: dlib)"),
    identity_backend: Optional[str] = typer.Option(
        None, "--identity-backend", help="l_id network: arcface | dlib | toy (default: arcface for --metrics paper, "
                                         "else params analysis.identity_metric)"),
    motion_backend: Optional[str] = typer.Option(
        None, "--motion-backend", help="rho_* analyser: pyfeat | dlib | toy (default: pyfeat for --metrics paper, else "
                                       "params analysis.motion_metric)"),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="first N frames per video (default: params)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="frames per network call"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda[:N] (default: params)"),
    references: Optional[bool] = typer.Option(None, "--references/--no-references",
                                              help="also score copy-the-source / copy-the-driving rows"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip unusable videos (recorded with the reason) instead of failing"),
    paired_with: Optional[Path] = typer.Option(None, "--paired-with", help="another method's evaluation JSON: paired tests"),
    params_path: Optional[Path] = typer.Option(None, "--params", help="params file (default: the workspace's params.yaml)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
) -> None:
    """Score any method's re-enactment videos with the paper's metrics (Tables 1-3), with bootstrap 95% CIs."""
    from pipeline.config import load_params
    from pipeline.evaluation.api import evaluate_videos
    from pipeline.io import write_json

    params = _run(load_params, params_path)
    paper = metrics == "paper"
    result = _run(
        evaluate_videos, pred, driving, source=source, target=target, landmarks=landmarks, protocol=protocol,
        metrics=metrics, params=params, skip_bad=skip_bad, paired_with=paired_with,
        identity_backend=identity_backend or ("arcface" if paper else None),
        motion_backend=motion_backend or ("pyfeat" if paper else None),
        max_frames=max_frames, batch_size=batch_size, device=device, references=references, progress=progress,
    )
    write_json(out, result)
    for name, agg in result["aggregate"].items():
        ci = agg["ci95"]
        typer.echo(f"{name:10s} {agg['mean']}  ci95 [{ci[0]}, {ci[1]}]  n={agg['n']}")
    for name, reason in result["missing"].items():  # the first line; the whole reason is in the JSON
        first = reason.splitlines()[0]
        more = " ..." if len(first) > 200 or len(reason.splitlines()) > 1 else ""
        typer.echo(f"{name:10s} missing: {first[:200]}{more}")
    if result["skipped"]:
        typer.echo(f"{len(result['skipped'])} skipped (see 'skipped' in {out})")
    typer.echo(f"{out}: {len(result['per_video'])} video(s), {result['frames']} frame(s), protocol {protocol}")


@app.command()
def reenact(dry_run: bool = DRY_RUN) -> None:
    """Stage `reenact`: the evaluation protocols' re-enacted videos (with / without CMA, PTI) and edit directions."""
    _stage("reenact", dry_run)


from pipeline.paths import EDIT_DIRECTIONS as EDITS_FILE, ENCODER_CHECKPOINT, GENERATOR_CHECKPOINT  # noqa: E402


@app.command()
def animate(
    source: Path = typer.Option(..., "--source", help="the portrait: an image (jpg, png, ...) or a video (its first tracked face)"),
    driving: Path = typer.Option(..., "--driving", help="the driving video (mp4, mov, avi, mkv, webm)"),
    out: Path = typer.Option(..., "--out", help="output .mp4 (the driving video's frame rate and audio)"),
    cma: bool = typer.Option(False, "--cma", help="Cyclic Manifold Adjustment: fine-tune a copy of G for this pair "
                                                  "(settings: params reenact.cma)"),
    edit: list[str] = typer.Option([], "--edit", help="NAME=STRENGTH or NAME=A:B (ramped over the video), repeatable; "
                                                      "names: pc0, pc1, ... and, with the stage's edits file, glasses, beard, ..."),
    side_by_side: bool = typer.Option(False, "--side-by-side", help="write source | driving | result"),
    crop: bool = typer.Option(True, "--crop/--no-crop", help="find and crop the faces as `prepare` does (--no-crop: "
                                                            "the inputs already are aligned face crops)"),
    generator: Path = typer.Option(GENERATOR_CHECKPOINT, "--generator", help="generator checkpoint (native format)"),
    encoder: Path = typer.Option(ENCODER_CHECKPOINT, "--encoder", help="encoder checkpoint trained for it"),
    edits_file: Path = typer.Option(EDITS_FILE, "--edits-file",
                                    help="edit directions of the `reenact` stage (if absent: GANSpace ones from G)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]"),
    params_path: Optional[Path] = typer.Option(None, "--params", help="params file (default: the workspace's params.yaml)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bars on stderr"),
) -> None:
    """Animate one portrait with a driving video: crop both faces, re-enact (Eq. 3), optionally CMA and edits."""
    result = _run(_animate, source, driving, out, cma, edit, side_by_side, crop, generator, encoder, edits_file,
                  device, params_path, progress)
    extra = f", CMA {result.cma_steps} steps" if result.cma_steps is not None else ""
    typer.echo(f"{result.out}: {result.frames} frame(s) at {float(result.fps):g} fps, "
               f"{'audio kept' if result.audio else 'no audio in the driving video'}{extra}")


def _animate(source, driving, out, cma, edits, side_by_side, crop, generator, encoder, edits_file, device,
             params_path, progress):
    from pipeline.animate import animate as run_animate
    from pipeline.config import load_params
    from pipeline.reenact import load_models

    params = load_params(params_path)
    models = load_models(generator, encoder, device)
    directions = None
    if edits:
        from pipeline.edits import ganspace_directions, load_directions

        from pipeline.checkpoint import CheckpointError

        e = params.reenact.edits
        directions = None
        if edits_file.is_file():
            try:
                directions = load_directions(edits_file, models.inputs)
            except CheckpointError:
                if edits_file != EDITS_FILE:  # the user named it: it must fit
                    raise
                console.print(f"note: {edits_file} belongs to other networks; using GANSpace directions of "
                              f"{generator} (pc0 ... pc{e.components - 1})", highlight=False, markup=False)
        if directions is None:
            directions = ganspace_directions(models.G, e.components, e.samples, params.seed)
    settings, perceptual = None, None
    if cma:
        from pipeline.losses import perceptual_network

        c = params.reenact.cma
        settings = {"steps": c.steps, "lr": c.lr, "frames_per_step": c.frames_per_step, "layers": c.layers,
                    "lambda_l2": c.lambda_l2, "lambda_lpips": c.lambda_lpips, "stop_below": c.stop_below,
                    "patience": c.patience}
        if c.lambda_lpips > 0:
            toy = None
            if params.reenact.lpips_net == "lpips_toy":
                from pipeline.analysis.toy import ToyAnalyzer

                from pipeline.paths import ANALYZER_CHECKPOINT, workspace

                toy = ToyAnalyzer.load(workspace() / ANALYZER_CHECKPOINT, device=models.device)
            perceptual = perceptual_network(params.reenact.lpips_net, toy, params.assets, models.device)
    prep = params.prepare
    return run_animate(models, source, driving, out, crop=crop, upsample=prep.upsample, increase=prep.increase,
                       iou_with_initial=prep.iou_with_initial, max_gap=prep.max_gap, cma=settings,
                       perceptual=perceptual, edits=edits, directions=directions, side_by_side=side_by_side,
                       batch_size=params.reenact.batch_size, seed=params.seed, progress=progress)


SET_PARAM = typer.Option([], "-S", "--set-param", help="key=value for every experiment of the grid, as `dvc exp run -S` "
                                                     "(repeatable; e.g. -S pretrain.iters=1000)")


@app.command()
def ablate(
    set_param: list[str] = SET_PARAM,
    profile: Optional[str] = typer.Option(None, "--profile", help="a params profile's overrides too (profiles/<name>.yaml, "
                                                                  "e.g. toy-full)"),
    seeds: Optional[list[int]] = typer.Option(None, "--seed", help="seeds, repeatable (default: params report.ablate.seeds)"),
    rows: Optional[list[str]] = typer.Option(None, "--row", help="model rows to train, repeatable: full, 'w/o ID reg', "
                                                                 "'w/o Hybrid' (default: all three; w/o CMA and "
                                                                 "CMA -> PTI come with full)"),
    jobs: Optional[int] = typer.Option(None, "--jobs", min=1, help="experiments run in parallel (default: params "
                                                                    "report.ablate.jobs)"),
    all_adaptations: bool = typer.Option(False, "--all-adaptations", help="re-enact the w/o ID reg and w/o Hybrid rows "
                                                                          "with every adaptation, not only cma"),
    table_only: bool = typer.Option(False, "--table-only", help="run nothing: build the table from the runs in mlflow.db"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the dvc commands, run nothing"),
    url: Optional[str] = typer.Option(None, "--url", help="MLflow UI address for the printed link (default: params "
                                                          "report.ablate.mlflow_url)"),
) -> None:
    """The paper's ablation grid as DVC experiments (full, w/o ID reg, w/o Hybrid x seeds; w/o CMA and CMA -> PTI
    from the full model), then its table: reports/ablations.md and .html, and its MLflow view (a URL)."""
    from pipeline.ablation import MODEL_ROWS

    result = _run(_ablate, set_param, profile, seeds, rows or list(MODEL_ROWS), jobs, all_adaptations, table_only,
                  dry_run, url)
    if result is not None:
        _print_ablation(result)


def _ablate(set_param, profile, seeds, rows, jobs, all_adaptations, table_only, dry_run, url):
    from pipeline.ablation import ablate as run_ablate, parse_overrides
    from pipeline.config import load_params
    from pipeline.paths import workspace

    overrides = {}
    if profile:
        from profiles import overrides as profile_overrides

        overrides.update(profile_overrides(profile))
    overrides.update(parse_overrides(set_param))
    root = workspace()
    settings = load_params(root / "params.yaml").report
    return run_ablate(root, overrides, rows, seeds or settings.ablate.seeds, jobs or settings.ablate.jobs,
                      settings.alpha, url or settings.ablate.mlflow_url, table_only=table_only, dry_run=dry_run,
                      all_adaptations=all_adaptations, echo=typer.echo)


def _print_ablation(result: dict) -> None:
    table = result["table"]
    for row in table.rows:
        typer.echo(f"{row:<32s} seeds {', '.join(str(s) for s in table.seeds[row])}")
    typer.echo(f"{result['markdown']}, {result['html']}")
    if "url" in result:
        typer.echo(f"MLflow view (serve the store with: mlflow ui --backend-store-uri {result['tracking_uri']}):")
        typer.echo(result["url"])


report_app = typer.Typer(help="Stage `report` (Tables 1-3, figures, samples), then the ablation table.",
                         invoke_without_command=True)
app.add_typer(report_app, name="report")


@report_app.callback()
def report(
    dry_run: bool = DRY_RUN,
    ablations: bool = typer.Option(True, "--ablations/--no-ablations",
                                   help="also build reports/ablations.md and its MLflow view from the store's runs of "
                                        "this workspace's grid (when there are any)"),
    set_param: list[str] = SET_PARAM,
    url: Optional[str] = typer.Option(None, "--url", help="MLflow UI address for the printed link"),
) -> None:
    """Stage `report`, then (with runs in mlflow.db) the ablation table of the workspace's grid and its MLflow URL."""
    _stage("report", dry_run)
    if dry_run or not ablations:
        return
    from pipeline.ablation import AblationError

    try:
        result = _ablate(set_param, None, None, [], None, False, True, False, url)
    except AblationError as e:
        typer.echo(f"no ablation table: {e}")
        return
    _print_ablation(result)

if __name__ == "__main__":
    app()
