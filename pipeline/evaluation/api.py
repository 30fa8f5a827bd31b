"""`evaluate_videos`: score any method's videos (the library call behind `reenact evaluate`)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from pipeline.evaluation.engine import Settings, evaluate_pairs
from pipeline.evaluation.registry import PAPER_METRICS, check_metrics
from pipeline.evaluation.sources import EvaluationError, find_pairs


def settings_from_params(params, protocol: str, **overrides) -> Settings:
    """Settings from params.yaml's `evaluate` and `analysis` sections (metrics: evaluate.metrics.<protocol>),
    then `overrides` (None values are ignored)."""
    ev = params.evaluate
    base = dict(
        protocol=protocol,
        metrics=tuple(getattr(ev.metrics, protocol)),
        batch_size=ev.batch_size,
        max_frames=ev.max_frames,
        device=ev.device,
        references=ev.references,
        resamples=ev.bootstrap.resamples,
        set_resamples=ev.bootstrap.set_resamples,
        seed=params.seed,
        clip_frames=ev.fvd.clip_frames,
        mouth_scale=ev.mouth.scale,
        mouth_size=ev.mouth.size,
        identity_backend=params.analysis.identity_metric,
        motion_backend=params.analysis.motion_metric,
    )
    base.update({k: v for k, v in overrides.items() if v is not None})
    if base["max_frames"] is not None and base["max_frames"] <= 0:  # 0: every frame (params' null)
        base["max_frames"] = None
    if isinstance(base["metrics"], list):
        base["metrics"] = tuple(base["metrics"])
    return Settings(**base)


def evaluate_videos(
    pred: str | os.PathLike,  # folder of the method's output videos (or .npy frame arrays)
    driving: str | os.PathLike,  # folder of the driving videos, named like the predictions
    *,
    source: str | os.PathLike | None = None,  # folder of source frames (images or videos: first frame)
    target: str | os.PathLike | None = None,  # folder of ground-truth cross renders (synthetic world; *_gt metrics)
    landmarks: str | os.PathLike | None = None,  # folder of <driving>.npy [T, 68, 2] landmarks (FVD_M; else dlib)
    protocol: str = "same",  # same | cross | robustness
    metrics: Sequence[str] | str = "paper",  # "paper" (the protocol's table), "params" (evaluate.metrics), or names
    params=None,  # validated Params (default: the workspace's params.yaml)
    skip_bad: bool = False,  # record unusable videos as skipped instead of failing
    paired_with: str | os.PathLike | dict | None = None,  # another evaluation's JSON: paired tests against it
    **overrides,  # any Settings field (batch_size, max_frames, device, references, identity_backend, ...)
) -> dict:
    """Pair the videos by name, evaluate every metric with confidence intervals, and return the result:

        {"aggregate": {metric: {"mean", "std", "ci95": [lo, hi], "n"}},
         "per_video": {name: {metric: value}},
         "networks": {metric: {"backend", "weights_sha256"}},
         "missing": {metric: reason and the file to provide},
         "skipped": {file or video: reason},
         "references": {"copy_source" | "copy_driving" | "ground_truth": {"aggregate", "per_video"}},
         "videos", "resolution", "settings", "protocol", "metrics", "frames", "seconds", ["paired"]}

    Non-finite numbers are written as null (NaN) or "inf" / "-inf" (PSNR of identical frames)."""
    from pipeline.config import load_params

    params = params if params is not None else load_params()
    if isinstance(metrics, str) and metrics == "paper":
        names = PAPER_METRICS[protocol] if protocol in PAPER_METRICS else []
    elif isinstance(metrics, str) and metrics == "params":
        names = list(getattr(params.evaluate.metrics, protocol))
    elif isinstance(metrics, str):
        names = [m.strip() for m in metrics.split(",") if m.strip()]
    else:
        names = list(metrics)
    check_metrics(names, protocol)  # before looking at any file: a typo fails at once
    settings = settings_from_params(params, protocol, metrics=tuple(names), **overrides)
    pairs, problems = find_pairs(pred, driving, source, target, landmarks, protocol)
    if problems and not skip_bad:
        first = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EvaluationError(f"{first[0]}: {first[1]}{more}; fix the names or pass --skip-bad to skip")
    other = None
    if paired_with is not None:
        other = paired_with if isinstance(paired_with, dict) else _read_json(Path(paired_with))
    result = evaluate_pairs(pairs, params, settings, skip_bad=skip_bad, paired_with=other)
    result["skipped"] = {**problems, **result["skipped"]}
    return result


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EvaluationError(f"{path}: not a readable evaluation JSON ({e})") from None
