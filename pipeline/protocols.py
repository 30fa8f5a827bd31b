"""The `reenact` stage's library (stages/reenact.py): the evaluation protocols' re-enacted videos, with and
without per-video adaptation of G, and the attribute edit directions.

Output folder data/reenacted/ (what the `evaluate` stage reads; paths in index.csv relative to it):
    index.csv                            protocol,adaptation,name,pred,driving,source,target,landmarks (LF)
    <protocol>/driving/<driving>.npy     uint8 [T, S, S, 3]: the driving frames as stored (test split)
    <protocol>/source/<name>.png         the one-shot source frame
    <protocol>/target/<name>.npy         cross only: the ground-truth cross render
    <protocol>/landmarks/<driving>.npy   [T, 68, 2] landmarks of the driving frames (from the prepared store)
    <protocol>/<adaptation>/<name>.npy   uint8 [T, S, S, 3] re-enacted frames (exact: what `evaluate` scores)
    <protocol>/<adaptation>/<name>.mp4   the same frames for viewing (pipeline/video.py)
protocol: same | cross | robustness (pipeline.reenact.plan_jobs); adaptation: cma | none | pti
(params reenact.adaptations). Also models/edits.pt (pipeline/edits.py), metrics/reenact.json and
reports/reenact/samples.png (driving frames, each adaptation's re-enactment and the ground truth, two videos).

metrics/reenact.json holds counts, each adapted video's step count, why it stopped and its final losses, and a
quick L1 per protocol and adaptation; the seconds CMA and PTI take per video go to MLflow only (time.*; timings
are not byte-reproducible, DVC outputs are), as do their loss curves (cma_loss/<protocol>/<name>, ...).
"""
from __future__ import annotations

import time

import numpy as np

from pipeline.io import atomic_dir, write_text
from pipeline.paths import ANALYZER_CHECKPOINT, EDIT_DIRECTIONS, ENCODER_CHECKPOINT, GENERATOR_CHECKPOINT, \
    PREPARED, REENACTED, REPORTS
from pipeline.stage import StageContext, StageResult

INDEX_COLUMNS = ("protocol", "adaptation", "name", "pred", "driving", "source", "target", "landmarks")


def reenact_protocols(ctx: StageContext) -> StageResult:
    """The body of stage `reenact`: every protocol's videos, per adaptation, into data/reenacted; models/edits.pt."""
    import pandas as pd
    from PIL import Image

    from pipeline.cma import cyclic_manifold_adjustment, pivotal_tuning
    from pipeline.reenact import Reenactor, load_models, plan_jobs
    from pipeline.store import PreparedStore
    from pipeline.video import write_video

    section, seed = ctx.section, int(ctx.params.seed)
    rob = ctx.params.evaluate.robustness
    for name in stage_assets(ctx.params):
        ctx.asset(name)
    models = load_models(ctx.root / GENERATOR_CHECKPOINT, ctx.root / ENCODER_CHECKPOINT, section.device)
    store = PreparedStore(ctx.root / PREPARED)
    manifest = store.manifest().set_index("clip_id")
    adaptations = section.adaptations.model_dump()
    protocols = [p for p, a in adaptations.items() if a]
    perceptual = _perceptual(ctx, models.device) if _uses_lpips(section) else None
    jobs = plan_jobs(store, protocols, section.max_videos, seed, rob.n_driving, rob.n_sources, rob.selection,
                     _features(ctx, store, list(rob.features)), section.max_frames)
    engine = Reenactor(models)
    rows, adapted, timings, curves, l1 = [], {}, {}, {}, {}
    bar = _progress(ctx, len(jobs))
    with atomic_dir(ctx.root / REENACTED) as out:
        for job in jobs:
            driving = store.frames(job.driving_clip)
            n = len(driving) if section.max_frames is None else min(len(driving), section.max_frames)
            target = store.frames(job.target_clip) if job.target_clip else None
            if target is not None:
                n = min(n, len(target))
            driving = driving[:n]
            rel = {"driving": f"{job.protocol}/driving/{job.driving}.npy",
                   "landmarks": f"{job.protocol}/landmarks/{job.driving}.npy",
                   "source": f"{job.protocol}/source/{job.name}.png",
                   "target": f"{job.protocol}/target/{job.name}.npy" if target is not None else ""}
            if not (out / rel["driving"]).exists():  # robustness: one driving video for its five sources
                _save_npy(out / rel["driving"], driving)
                _save_npy(out / rel["landmarks"], store.landmarks(job.driving_clip)[:n].astype(np.float32))
            if target is not None:
                _save_npy(out / rel["target"], target[:n])
            source_frame = np.array(store.frames(job.source_clip)[job.source_frame])
            (out / rel["source"]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source_frame).save(out / rel["source"])
            source = engine.source(source_frame)
            for adaptation in adaptations[job.protocol]:
                G, key = None, f"{job.protocol}/{job.name}"
                if adaptation == "cma":
                    c = section.cma
                    result = cyclic_manifold_adjustment(
                        models, source, driving, steps=c.steps, lr=c.lr, frames_per_step=c.frames_per_step,
                        layers=c.layers, lambda_l2=c.lambda_l2, lambda_lpips=c.lambda_lpips, perceptual=perceptual,
                        stop_below=c.stop_below, patience=c.patience, seed=seed)
                elif adaptation == "pti":
                    p = section.pti
                    result = pivotal_tuning(
                        models, source, w_steps=p.w_steps, w_lr=p.w_lr, steps=p.steps, lr=p.lr, layers=p.layers,
                        lambda_l2=p.lambda_l2, lambda_lpips=p.lambda_lpips, lpips_threshold=p.lpips_threshold,
                        perceptual=perceptual)
                else:
                    result = None
                if result is not None:
                    G = result.G
                    adapted.setdefault(adaptation, {})[key] = {
                        "steps": result.steps, "stopped": result.stopped, "final": result.final, **result.extra}
                    timings[f"{adaptation}_seconds/{key}"] = round(result.seconds, 3)
                    curves[f"{adaptation}_loss/{key}"] = result.history
                pred = f"{job.protocol}/{adaptation}/{job.name}.npy"
                frames = _render(Reenactor(models, G) if G is not None else engine, source, driving,
                                 section.batch_size, out / pred)
                write_video(out / pred.replace(".npy", ".mp4"), frames, float(manifest.loc[job.driving_clip, "fps"]))
                reference = target[:n] if target is not None else driving
                l1.setdefault(job.protocol, {}).setdefault(adaptation, []).append(
                    float(np.abs(frames.astype(np.float32) - reference).mean() / 255))
                rows.append({"protocol": job.protocol, "adaptation": adaptation, "name": job.name, "pred": pred, **rel})
                del frames, G
            if bar is not None:
                bar.update(1)
        table = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
        write_text(out / "index.csv", table.to_csv(index=False, lineterminator="\n"))
    if bar is not None:
        bar.close()
    figure = _sample_grid(ctx.root / REPORTS / "reenact" / "samples.png", ctx.root / REENACTED, rows)
    directions = _edit_directions(ctx, models, store)
    _log_curves(curves)
    for adaptation in adapted:
        seconds = [v for k, v in timings.items() if k.startswith(f"{adaptation}_seconds/")]
        timings[f"{adaptation}_seconds_per_video"] = round(float(np.mean(seconds)), 3)
    counts = {p: {a: sum(1 for r in rows if r["protocol"] == p and r["adaptation"] == a) for a in adaptations[p]}
              for p in protocols}
    metrics = {
        "videos": counts,
        "frames": int(sum(len(np.load(ctx.root / REENACTED / r["pred"], mmap_mode="r")) for r in rows)),
        # quick L1 on the [0, 1] scale against the driving video (same, robustness) or the ground-truth cross render
        # (cross); the `evaluate` stage scores these videos with every metric
        "l1": {p: {a: round(float(np.mean(v)), 5) for a, v in by.items()} for p, by in l1.items()},
        # per adapted video: steps taken, why it stopped, final losses (its seconds are in MLflow: time.*)
        "adapted": adapted,
        "edits": [{"name": d.name, "kind": d.kind, **({"r_heldout": d.r_heldout} if d.kind == "supervised" else {})}
                  for d in directions],
        "inputs": models.inputs,
    }
    return StageResult(metrics=metrics, timings=timings, tags={"device": str(models.device)},
                       artifacts=[figure] if figure else [])


def _save_npy(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array))


def _render(engine, source, driving, batch_size: int, path) -> np.ndarray:
    """Stream Eq. 3 into a memory-mapped .npy (inside the stage's atomic folder); returns it, memory-mapped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    s = engine.models.size
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(driving), s, s, 3))
    start = 0
    for chunk in engine.stream(source, driving, batch_size):
        out[start:start + len(chunk)] = chunk
        start += len(chunk)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def _sample_grid(path, reenacted, rows: list[dict], columns: int = 6):
    """The first same- and cross-identity videos: driving frames, each adaptation's re-enactment (and the ground
    truth of the cross render) at `columns` evenly spaced frames."""
    import shutil

    from pipeline.plots import image_grid

    shutil.rmtree(path.parent, ignore_errors=True)
    images, titles = [], []
    for protocol in ("same", "cross"):
        mine = [r for r in rows if r["protocol"] == protocol]
        if not mine:
            continue
        first = [r for r in mine if r["name"] == mine[0]["name"]]
        driving = np.load(reenacted / first[0]["driving"], mmap_mode="r")
        t = np.linspace(0, len(driving) - 1, columns).round().astype(int)
        series = [(f"{protocol}: driving", first[0]["driving"])] + \
            [(f"{protocol}: {r['adaptation']}", r["pred"]) for r in first] + \
            ([(f"{protocol}: ground truth", first[0]["target"])] if first[0]["target"] else [])
        for label, rel in series:
            frames = np.load(reenacted / rel, mmap_mode="r")
            images += [np.array(frames[i]) for i in t]
            titles += [f"{label}, t={i}" for i in t]
    if not images:
        return None
    return image_grid(path, images, titles, ncols=columns, suptitle="reenact: held-out videos (rows: driving, "
                                                                    "re-enactments, ground truth)")


def _uses_lpips(section) -> bool:
    used = {a for v in section.adaptations.model_dump().values() for a in v}
    return ("cma" in used and section.cma.lambda_lpips > 0) or ("pti" in used and section.pti.lambda_lpips > 0)


def _perceptual(ctx: StageContext, device):
    from pipeline.losses import perceptual_network

    name = ctx.section.lpips_net
    toy = None
    if name == "lpips_toy":
        from pipeline.analysis.toy import ToyAnalyzer

        toy = ToyAnalyzer.load(ctx.root / ANALYZER_CHECKPOINT, device=device, root=ctx.root)
    return perceptual_network(name, toy, ctx.params.assets if name == "lpips" else None, device)


def _features(ctx: StageContext, store, names: list[str]):
    """(clip, n) -> per-frame features [n, C] of the robustness selection (evaluate.robustness.features): the
    renderer's ground truth where the store has it, else the analysis.motion_metric backend on the frames."""
    analyzer = []

    def features(clip: str, n: int) -> np.ndarray:
        if store.has_truth(clip):
            truth = store.truth(clip)
            return np.concatenate([np.asarray(truth[k], dtype=np.float64)[:n] for k in names], axis=1)
        if not analyzer:
            from pipeline.analysis import load_analyzer

            analyzer.append(load_analyzer(ctx.params.analysis.motion_metric, ctx.params, root=ctx.root))
        m = analyzer[0].motion(np.asarray(store.frames(clip)[:n]))
        return np.concatenate([getattr(m, k) for k in names], axis=1)

    return features


def _edit_directions(ctx: StageContext, models, store) -> list:
    """GANSpace directions of G, plus (synthetic world) named ones fitted to the renderer's identity attributes;
    written to models/edits.pt."""
    from pipeline.edits import ganspace_directions, save_directions, supervised_directions
    from pipeline.reenact import Reenactor

    e = ctx.section.edits
    directions = ganspace_directions(models.G, e.components, e.samples, int(ctx.params.seed))
    first = store.clips("train")["clip_id"].iloc[0] if not store.clips("train").empty else None
    if e.supervised and first is not None and store.has_truth(first):
        from pipeline.synth.face import IDENTITY_NAMES

        names = [n for n in IDENTITY_NAMES if n != "hair_style"]
        keep = [IDENTITY_NAMES.index(n) for n in names]
        engine = Reenactor(models)

        def codes(split: str) -> tuple[np.ndarray, np.ndarray]:
            ws, ys = [], []
            for cid in store.clips(split)["clip_id"]:
                frames = np.asarray(store.frames(cid)[: e.frames_per_clip])
                ws.append(engine.encode(frames)[0].cpu().numpy())
                ys.append(np.repeat(store.truth(cid)["identity_vector"][keep][None], len(frames), axis=0))
            return np.concatenate(ws), np.concatenate(ys)

        directions += supervised_directions(*codes("train"), names, e.ridge, heldout=codes("test"))
    save_directions(ctx.root / EDIT_DIRECTIONS, directions, models.inputs)
    return directions


def _progress(ctx: StageContext, total: int):
    if not ctx.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="reenact", unit="video")


def _log_curves(curves: dict[str, list[dict]]) -> None:
    """CMA's and PTI's loss curves to the active MLflow run (one series per video)."""
    try:
        import mlflow
        from mlflow.entities import Metric
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return
    run = mlflow.active_run()
    if run is None:
        return
    now = int(time.time() * 1000)
    batch = [Metric(key, float(row["loss"]), now, int(row["step"])) for key, rows in curves.items() for row in rows]
    client = mlflow.tracking.MlflowClient()
    for i in range(0, len(batch), 1000):
        client.log_batch(run.info.run_id, metrics=batch[i:i + 1000])


def stage_assets(params) -> list[str]:
    """The assets the stage uses under these params (the AlexNet LPIPS when CMA / PTI use it)."""
    return ["lpips_alexnet"] if params.reenact.lpips_net == "lpips" and _uses_lpips(params.reenact) else []
