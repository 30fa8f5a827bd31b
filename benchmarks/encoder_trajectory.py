"""How the encoder's held-out quality grows with training compute: one long, resumable `pretrain` run with
snapshots at fixed CPU-minutes, each scored by the evaluation harness (reenact + evaluate, no per-video
adaptation, so the numbers are the encoder's alone).

    OMP_NUM_THREADS=1 python -m benchmarks.encoder_trajectory train --out checkpoints/trajectory \
        [--minutes 15 30 60 120] [--set pretrain.lr=0.001 ...]
    OMP_NUM_THREADS=1 python -m benchmarks.encoder_trajectory score --out checkpoints/trajectory [--videos 12]

`train` works in its own workspace (`--out`: symlinks to the repo's models/generator.pt, models/analyzer.pt and
data/prepared, its own params.yaml with the overrides), so the repo's runs are never touched. CPU-minutes are the
training process's CPU time (time.process_time, summed over threads and over resumed runs), which does not count
waiting on a busy machine; the snapshot records the step and triples seen. Killed, it resumes from the last
checkpoint (pretrain's exact resume) and keeps counting from the CPU time saved with it. `score` runs the
`reenact` and `evaluate` stages on each snapshot (`--videos` held-out same- and cross-identity videos) and
writes trajectory.json and trajectory.md beside the snapshots. `export --snapshot cpu30min [--world ...]` ships one as the
`pretrain.source: native` asset (assets/toy/encoder_pretrain.pt).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

LINKED = ("models/generator.pt", "models/analyzer.pt", "data/prepared")
# the harness columns the trajectory reports: (protocol, metric)
COLUMNS = (("same", "psnr"), ("same", "l1"), ("same", "rho_pose"), ("same", "rho_au"),
           ("cross", "l1_gt"), ("cross", "rho_pose"), ("cross", "rho_au_gz"), ("cross", "l_id"),
           ("cross", "l_id_driver"))


class _Done(Exception):
    pass


def _workspace(repo: Path, out: Path, overrides: dict, extra_links: dict[str, Path] | None = None) -> Path:
    from pipeline.config import set_dotted

    out.mkdir(parents=True, exist_ok=True)
    links = {rel: repo / rel for rel in LINKED} | (extra_links or {})
    for rel, target in links.items():
        if not target.exists():
            raise SystemExit(f"{target} is missing: run `dvc repro prepare generator analyzer` first")
        link = out / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve())
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    (out / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def train(repo: Path, out: Path, minutes: list[float], overrides: dict, world: list[int] | None = None) -> None:
    from pipeline.checkpoint import save_checkpoint
    from pipeline.config import load_params
    from pipeline.train import train_encoder

    over = {**overrides, "pretrain.iters": 10_000_000, "pretrain.checkpoint_every": 50, "pretrain.log_every": 50}
    links = None
    if world:  # a pretraining world of its own: seed, identities, clips per identity, frames per clip
        store = out / "world" / "prepared"
        if not (store / "manifest.csv").is_file():
            from pipeline.own_world import render_own_world

            params = load_params(repo / "params.yaml")
            seed, n, clips, frames = world
            render_own_world(out / "world", params.data, params.prepare, seed, n, clips, frames, 0.05)
        links = {"data/prepared": store}
    root = _workspace(repo, out, over, links)
    params = load_params(root / "params.yaml")
    clock = out / "cpu_seconds.json"  # CPU seconds at the last resumable checkpoint
    saved = json.loads(clock.read_text()) if clock.is_file() else {"step": 0, "cpu_seconds": 0.0}
    marks = sorted(m for m in minutes if not (out / "snapshots" / f"cpu{m:g}min.pt").is_file())
    if not marks:
        print("every snapshot exists; nothing to train")
        return
    t0 = [0.0]  # set at the first step: set-up (loading networks and frames) is not training
    batch = params.pretrain.batch_size
    first_step: list[int] = []

    def on_step(step: int, snapshot) -> None:
        if not first_step:
            first_step.append(step)
            t0[0] = time.process_time()
            if step - 1 != saved["step"]:  # resumed from another checkpoint than the clock's: count from there
                print(f"note: resumed at step {step - 1}, the CPU clock was saved at step {saved['step']}")
        cpu = saved["cpu_seconds"] + time.process_time() - t0[0]
        if step % params.pretrain.checkpoint_every == 0:  # the training loop checkpoints this step right after
            clock.write_text(json.dumps({"step": step, "cpu_seconds": round(cpu, 2)}))
        while marks and cpu >= marks[0] * 60:
            m = marks.pop(0)
            path = out / "snapshots" / f"cpu{m:g}min.pt"
            ck = snapshot()
            ck.extra["trajectory"] = {"cpu_minutes": m, "step": step, "triples_seen": step * batch,
                                      "images_seen": 3 * step * batch, "overrides": overrides}
            save_checkpoint(path, ck)
            print(f"snapshot {path}: {m:g} CPU-minutes, step {step}, {step * batch} triples", flush=True)
        if not marks:
            raise _Done

    try:
        train_encoder("pretrain", params, root, progress=False, on_step=on_step)
    except _Done:
        pass


def score(repo: Path, out: Path, videos: int) -> dict:
    import shutil

    from pipeline.checkpoint import load_checkpoint
    from pipeline.config import load_params
    from pipeline.stage import load_stage
    from pipeline.train import ENCODER_KIND

    rows = []
    snaps = sorted((out / "snapshots").glob("cpu*min.pt"), key=lambda p: float(p.stem[3:-3]))
    for snap in snaps:
        info = load_checkpoint(snap, ENCODER_KIND).extra["trajectory"]
        ws = out / "scored" / snap.stem
        result = ws / "result.json"
        if not result.is_file():
            over = {"reenact.max_videos": videos, "reenact.adaptations.same": ["none"],
                    "reenact.adaptations.cross": ["none"], "reenact.adaptations.robustness": [],
                    "reenact.edits.supervised": False, "reenact.edits.samples": 1000,
                    "evaluate.bootstrap.set_resamples": 20}
            root = _workspace(repo, ws, over, {"models/encoder.pt": snap})
            params = load_params(root / "params.yaml")
            for name in ("reenact", "evaluate"):
                load_stage(name).execute(params, root, progress=False)
            got = {}
            for protocol in ("same", "cross"):
                res = json.loads((root / "metrics" / f"eval_{protocol}_id.json").read_text())
                # metrics/eval_<protocol>_id.json: {"videos": n, <adaptation or reference row>: {metric: {mean, lo, hi}}}
                rows_of = {k: {m: v[m]["mean"] for _, m in COLUMNS if m in v} for k, v in res.items() if k != "videos"}
                got[protocol] = {"none": rows_of.pop("none", {}), "references": rows_of}
            result.write_text(json.dumps(got, indent=1, sort_keys=True))
            shutil.rmtree(root / "data" / "reenacted", ignore_errors=True)  # keep the scores, not the videos
        rows.append({**info, "scores": json.loads(result.read_text())})
    (out / "trajectory.json").write_text(json.dumps(rows, indent=1, sort_keys=True))
    lines = ["| CPU-min | step | triples | " + " | ".join(f"{p} {m}" for p, m in COLUMNS) + " |",
             "|" + "---|" * (3 + len(COLUMNS))]
    for r in rows:
        cells = [r["scores"][p]["none"].get(m) for p, m in COLUMNS]
        lines.append(f"| {r['cpu_minutes']:g} | {r['step']} | {r['triples_seen']} | " +
                     " | ".join("" if c is None else f"{c:.4g}" for c in cells) + " |")
    if rows:
        for ref in ("copy_source", "ground_truth", "copy_driving", "oracle"):
            cells = [rows[-1]["scores"][p]["references"].get(ref, {}).get(m) for p, m in COLUMNS]
            if any(c is not None for c in cells):
                lines.append(f"| {ref} | | | " + " | ".join("" if c is None else f"{c:.4g}" for c in cells) + " |")
    (out / "trajectory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"rows": rows}


def export(repo: Path, out: Path, snapshot: str, to: Path, world: list[int] | None = None) -> None:
    """Ship a snapshot as the `pretrain.source: native` asset: with the world it saw, its recipe and compute, and
    the loss history up to its step; prints the sha256 for params.yaml."""
    from pipeline.assets import sha256_of
    from pipeline.checkpoint import load_checkpoint, save_checkpoint
    from pipeline.train import ENCODER_KIND, TRAINING_KIND, shipped_encoder

    ck = load_checkpoint(out / "snapshots" / f"{snapshot}.pt", ENCODER_KIND)
    info = ck.extra.pop("trajectory")
    last = out / "checkpoints" / "pretrain" / "last.pt"
    state = load_checkpoint(last, TRAINING_KIND).extra if last.is_file() else {}
    history = [r for r in state.get("history", []) if r["step"] <= ck.step]
    ck.config["sections"]["pretrain"]["iters"] = ck.step  # the steps it ran, not the open-ended run's bound
    trained = {"steps": ck.step, "triples_seen": info["triples_seen"], "cpu_minutes": info["cpu_minutes"],
               "recipe_overrides": info["overrides"], "by": "benchmarks/encoder_trajectory.py (one CPU thread)"}
    if world:  # the --world it was trained with: pretrain.world's keys
        trained["world"] = dict(zip(("seed", "n_identities", "clips_per_identity", "frames_per_clip"), world),
                                validation_fraction=0.05)
    save_checkpoint(to, shipped_encoder(ck, out / "data" / "prepared", trained, history))
    print(f"{to}: sha256 {sha256_of(to)}, step {ck.step}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("train", "score", "export"))
    ap.add_argument("--snapshot", default="cpu60min", help="export: the snapshot's name (cpu<M>min)")
    ap.add_argument("--to", type=Path, default=Path("assets/toy/encoder_pretrain.pt"), help="export: where")
    ap.add_argument("--out", type=Path, default=Path("checkpoints/trajectory"))
    ap.add_argument("--minutes", type=float, nargs="+", default=[15, 30, 60, 120])
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--world", type=int, nargs=4, metavar=("SEED", "IDENTITIES", "CLIPS", "FRAMES"),
                    help="train: on a pretraining world of its own instead of data/prepared")
    ap.add_argument("--set", nargs="*", default=[], help="params overrides key=value (YAML values)")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    out = args.out if args.out.is_absolute() else repo / args.out
    if args.command == "train":
        overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
        train(repo, out, args.minutes, overrides, args.world)
    elif args.command == "score":
        score(repo, out, args.videos)
    else:
        export(repo, out, args.snapshot, args.to if args.to.is_absolute() else repo / args.to, args.world)


if __name__ == "__main__":
    main()
