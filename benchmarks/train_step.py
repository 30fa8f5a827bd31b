"""Where a training step of the encoder spends its time (stage `pretrain` on the repo's prepared store).

Runs `pipeline.train.train_encoder` for a few steps under torch.profiler in a scratch workspace (symlinks to
the repo's models/ and data/, so the real run's resumable checkpoint is never touched) and prints, for each
labelled part of a step (encode, render, each loss term, backward, discriminator, optimizer; labels in
pipeline/train.py), its share of the step's wall time, and images/s (3 frames per triple). The ratios are
against the whole step measured in the same run; `--batch` compares batch sizes, each line's images/s as a
ratio against the first batch's.

    OMP_NUM_THREADS=1 python -m benchmarks.train_step [--steps 20] [--batch 4 16] [--set loss.lambda_f=0]

Needs `dvc repro prepare generator analyzer` first (models/generator.pt, models/analyzer.pt, data/prepared).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

LABELS = ("encode", "render", "loss.self", "loss.reenact", "loss.id", "loss.w_id", "loss.reg", "loss.f", "loss.d",
          "backward", "discriminator", "optimizer")


def _workspace(repo: Path, tmp: Path, overrides: dict) -> Path:
    from pipeline.config import set_dotted

    for rel in ("models/generator.pt", "models/analyzer.pt", "data/prepared"):
        if not (repo / rel).exists():
            raise SystemExit(f"{repo / rel} is missing: run `dvc repro prepare generator analyzer` first")
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).symlink_to(repo / rel)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp


def profile(repo: Path, batch: int, steps: int, overrides: dict) -> dict:
    from pipeline.config import load_params
    from pipeline.train import train_encoder

    with tempfile.TemporaryDirectory() as d:
        over = {**overrides, "pretrain.batch_size": batch, "pretrain.iters": steps + 2,
                "pretrain.checkpoint_every": 10_000, "pretrain.log_every": 10_000, "pretrain.eval_triples": 8}
        root = _workspace(repo, Path(d), over)
        params = load_params(root / "params.yaml")
        from torch.profiler import ProfilerActivity, profile as torch_profile, schedule

        # the first two steps warm up (allocations, lazy init); the profile covers the next `steps`
        sched = schedule(wait=0, warmup=2, active=steps, repeat=1)
        marks: list[float] = []

        with torch_profile(activities=[ProfilerActivity.CPU], schedule=sched) as prof:
            import pipeline.train as T

            real_steps = T.TripletBatches.steps

            def steps_hook(self, first, last):
                for item in real_steps(self, first, last):
                    marks.append(time.perf_counter())
                    yield item
                    prof.step()

            T.TripletBatches.steps = steps_hook
            try:
                train_encoder("pretrain", params, root, progress=False)
            finally:
                T.TripletBatches.steps = real_steps
    # marks[i] is when step i+1's batch was ready; steps 3..steps+2 are profiled
    wall = marks[-1] - marks[1] if len(marks) > 2 else float("nan")
    per_step = wall / (len(marks) - 2)
    totals = {k: 0.0 for k in LABELS}
    for evt in prof.key_averages():
        if evt.key in totals:
            totals[evt.key] = evt.cpu_time_total / 1e6 / steps
    return {"batch": batch, "seconds_per_step": per_step, "images_per_second": 3 * batch / per_step, "parts": totals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, nargs="+", default=[4])
    ap.add_argument("--set", nargs="*", default=[], help="params overrides key=value (YAML values)")
    args = ap.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    repo = Path(__file__).resolve().parents[1]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, overrides {overrides or 'none'}")
    results = [profile(repo, b, args.steps, overrides) for b in args.batch]
    ref = results[0]["images_per_second"]
    for r in results:
        print(f"\nbatch {r['batch']}: {r['seconds_per_step'] * 1000:.0f} ms/step, {r['images_per_second']:.1f} images/s "
              f"(x{r['images_per_second'] / ref:.2f} the first batch's)")
        step = r["seconds_per_step"]
        for k, v in r["parts"].items():
            if v > 0:
                print(f"  {k:14} {v * 1000:8.1f} ms  {v / step:6.1%}")
        covered = sum(v for k, v in r["parts"].items())
        print(f"  {'(rest: data, bookkeeping)':14} {(step - covered) * 1000:8.1f} ms  {(step - covered) / step:6.1%}")


if __name__ == "__main__":
    main()
