"""Stage `prepare`: FOMM-style face crops, landmarks and Eq. 13 masks, an identity-disjoint split and
frame sampling, written to the prepared store (layout: pipeline/store.py), so that training reads random frames
fast. The whole store is written in a temporary folder that replaces the old one at the end. Videos are decoded
twice (detect, then crop) instead of held in memory: real videos run to minutes.
"""
from __future__ import annotations

import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.errors import UserError
from pipeline import crop as fomm
from pipeline.config import PrepareParams
from pipeline.io import atomic_dir
from pipeline.masks import feature_masks
from pipeline.split import SplitError, split_identities
from pipeline.store import TRUTH_KEYS, PreparedStore, raw_index_path, read_raw_index, write_clip, write_tables
from pipeline.video import VideoError

MANIFEST_COLUMNS = [
    "clip_id", "identity", "clip", "kind", "motion_from", "split", "video", "track", "start", "end",
    "track_frames", "stored_frames", "x0", "y0", "x1", "y1", "fps", "detector",
]


class PrepareError(UserError, RuntimeError):
    """Nothing usable is left after preparing; the message lists why each video was rejected."""


@dataclass
class VideoOutcome:
    video: str
    identity: str
    clip: str
    kind: str
    status: str = "kept"  # kept | rejected | skipped (a cross render outside the test split)
    reason: str = ""  # why rejected or skipped, for people
    reason_kind: str = ""  # unreadable | zero_frames | grayscale | no_face | short_tracks | no_truth | outside_test
    notes: list[str] = field(default_factory=list)  # kept, but worth knowing (variable frame rate, ...)
    clips: list[dict] = field(default_factory=list)  # manifest rows


def needs_landmarks(index: pd.DataFrame, params: PrepareParams) -> bool:
    """Whether some video of the raw index will be detected with dlib (and so needs the landmark model)."""
    return params.detector == "dlib" or (params.detector == "auto" and (index.get("truth", "") == "").any())


def sample_frames(n_track: int, split: str, params: PrepareParams, rng: np.random.Generator) -> np.ndarray:
    """Offsets into a track: training samples `train_frames` at random (sorted), evaluation takes the first
    `eval_frames` (the paper: 50 per video for training, the first 500 for evaluation)."""
    if split == "test":
        return np.arange(min(n_track, params.eval_frames))
    if n_track <= params.train_frames:
        return np.arange(n_track)
    return np.sort(rng.choice(n_track, size=params.train_frames, replace=False))


def prepare(
    raw_dir: Path,  # the `data` stage's folder, with its index (pipeline.store.RAW_INDEX)
    out_dir: Path,  # the prepared store, replaced whole at the end
    params: PrepareParams,
    seed: int,
    test_fraction: float,  # params `split.test_fraction`: share of identities held out
    landmarks_model: Path | None,  # dlib 68-point predictor; None when every video has ground truth
    progress: bool = True,
) -> tuple[pd.DataFrame, list[VideoOutcome]]:
    """Prepare every video of the index; returns the manifest and each video's outcome."""
    index = read_raw_index(raw_dir)
    base = Path(raw_dir)
    identities = index.loc[index["kind"] == "clip", "identity"].astype(str).tolist()
    try:
        split = split_identities(identities, test_fraction, seed)
    except SplitError as e:
        raise PrepareError(f"{raw_index_path(raw_dir)}: {e}") from None
    clip_identity = dict(zip(index["clip"].astype(str), index["identity"].astype(str)))
    jobs = []
    for rec in index.to_dict("records"):
        path = Path(str(rec["path"]))
        truth = str(rec.get("truth", "") or "")
        jobs.append(dict(
            video=str(path if path.is_absolute() else base / path),  # opened
            name=str(rec["path"]),  # recorded: as the index has it (relative to the raw folder, or the user's path)
            identity=str(rec["identity"]),
            clip=str(rec["clip"]),
            kind=str(rec.get("kind", "clip") or "clip"),
            motion_from=str(rec.get("motion_from", "") or ""),
            motion_identity=clip_identity.get(str(rec.get("motion_from", "") or ""), ""),
            truth=str(base / truth) if truth else "",
            start=_optional_float(rec.get("start")),
            end=_optional_float(rec.get("end")),
        ))
    with atomic_dir(out_dir) as tmp:
        work = dict(out_dir=tmp, params=params, seed=seed, split=split, landmarks_model=landmarks_model)
        outcomes = _run_all(jobs, work, params.workers, progress)
        rows = [row for o in outcomes for row in o.clips]
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        usable = manifest[manifest["kind"] == "clip"]
        if usable.empty or set(usable["split"]) != {"train", "test"}:
            have = dict(Counter(usable["split"])) if not usable.empty else {}
            raise PrepareError(
                "nothing usable is left after preparing (clips per split: "
                f"{have or 'none'}); rejected videos:\n"
                + "\n".join(f"  {o.video}: {o.reason}" for o in outcomes if o.status == "rejected")
            )
        write_tables(tmp, manifest, videos_table(outcomes))
    return manifest, outcomes


def videos_table(outcomes: list[VideoOutcome]) -> pd.DataFrame:
    return pd.DataFrame([
        {"video": o.video, "identity": o.identity, "clip": o.clip, "kind": o.kind, "status": o.status,
         "reason": o.reason, "notes": "; ".join(o.notes), "clips": len(o.clips)}
        for o in outcomes
    ])


def summarize(manifest: pd.DataFrame, outcomes: list[VideoOutcome], store: PreparedStore) -> dict:
    """The stage's metrics: counts per split, why videos were rejected, and mask coverage."""
    clips = manifest[manifest["kind"] == "clip"]
    cross = manifest[manifest["kind"] == "cross"]
    rejected = [o for o in outcomes if o.status == "rejected"]
    coverage = [float(store.masks(cid)[:8].mean()) for cid in clips["clip_id"][:32]]
    return {
        "videos": {
            "total": len(outcomes),
            "kept": sum(o.status == "kept" for o in outcomes),
            "rejected": len(rejected),
            "skipped": sum(o.status == "skipped" for o in outcomes),
        },
        "identities": {s: int(clips.loc[clips["split"] == s, "identity"].nunique()) for s in ("train", "test")},
        "clips": {"train": int((clips["split"] == "train").sum()), "test": int((clips["split"] == "test").sum()),
                  "cross_test": int(len(cross))},
        "frames": {s: int(clips.loc[clips["split"] == s, "stored_frames"].sum()) for s in ("train", "test")},
        "mask_fraction": round(float(np.mean(coverage)), 4) if coverage else 0.0,
        "reasons": dict(Counter(o.reason_kind for o in rejected)),
        "rejected": {o.video: o.reason for o in rejected},
    }


def _optional_float(value) -> float | None:
    if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
        return None
    return float(value)


def _run_all(jobs: list[dict], work: dict, workers: int, progress: bool) -> list[VideoOutcome]:
    bar = tqdm(total=len(jobs), desc="prepare", unit="video", disable=not progress)
    outcomes: list[VideoOutcome] = []
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            outcomes.append(prepare_video(job, **work))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
            for outcome in pool.map(_prepare_job, [(job, work) for job in jobs], chunksize=4):
                outcomes.append(outcome)
                bar.update()
    bar.close()
    return outcomes


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one video per core; intra-op threads would oversubscribe


def _prepare_job(args: tuple[dict, dict]) -> VideoOutcome:
    job, work = args
    return prepare_video(job, **work)


_PREDICTORS: dict[Path, object] = {}


def _landmark_predictor(model: Path) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from pipeline.faces import DlibLandmarks

    if model not in _PREDICTORS:
        _PREDICTORS[model] = DlibLandmarks(model)
    return _PREDICTORS[model]


_DETECTORS: dict[int, object] = {}


def _dlib_detector(upsample: int):
    if upsample not in _DETECTORS:  # one per process: workers build their own
        from pipeline.faces import DlibDetector

        _DETECTORS[upsample] = DlibDetector(upsample=upsample)
    return _DETECTORS[upsample]


class _TruthBoxes:
    """The renderer's face box of each frame, as a detector (prepare.detector: ground_truth)."""

    def __init__(self, bbox: np.ndarray):
        self.bbox = bbox

    def detect_at(self, i: int, frame: np.ndarray) -> np.ndarray:
        return self.bbox[i : i + 1] if i < len(self.bbox) else np.zeros((0, 4), np.float32)


def prepare_video(job: dict, *, out_dir: Path, params: PrepareParams, seed: int, split: dict[str, str],
                  landmarks_model: Path | None) -> VideoOutcome:
    """Detect, track, crop and store one video; a bad video yields a reason instead of an exception."""
    outcome = VideoOutcome(job["name"], job["identity"], job["clip"], job["kind"])
    if job["kind"] == "cross":
        both_test = split.get(job["identity"]) == "test" and split.get(job["motion_identity"]) == "test"
        if not both_test:
            return _reject(outcome, "outside_test", "cross render whose identities are not both held out", "skipped")
        clip_split = "test"
    else:
        clip_split = split[job["identity"]]
    use_truth = params.detector == "ground_truth" or (params.detector == "auto" and job["truth"])
    if use_truth and not job["truth"]:
        return _reject(outcome, "no_truth", "prepare.detector is ground_truth but the video has no renderer "
                       "ground truth (a real video): use detector auto or dlib")
    truth = dict(np.load(job["truth"])) if use_truth else None
    if not use_truth and landmarks_model is None:
        return _reject(outcome, "no_truth", "real video but no dlib landmark model configured (assets.dlib_landmarks68)")

    # Pass 1: detect a face in every frame, track.
    detector = _TruthBoxes(truth["bbox"]) if use_truth else _dlib_detector(params.upsample)
    try:
        video = fomm.detect_tracks(job["video"], detector, iou_with_initial=params.iou_with_initial,
                                   max_gap=params.max_gap, start_s=job["start"], end_s=job["end"])
    except VideoError as e:
        return _reject(outcome, "unreadable", str(e))
    if video.n_frames == 0:
        return _reject(outcome, "zero_frames", "zero frames decoded" + (" in the manifest's start/end range" if job["start"] or job["end"] else ""))
    if not video.colour:
        return _reject(outcome, "grayscale", "grayscale video: the generator and metrics are RGB; use a colour version")
    if video.variable_frame_rate:
        outcome.notes.append(f"variable frame rate (average {video.fps} fps): frames kept as decoded")
    if video.frame_hw[0] % 2 or video.frame_hw[1] % 2:
        outcome.notes.append(f"odd frame size {video.frame_hw[1]}x{video.frame_hw[0]}: cropped as is")
    if not video.tracks:
        return _reject(outcome, "no_face", f"no face detected in any of its {video.n_frames} frames")
    kept = video.kept(params.min_frames, params.increase)
    if not kept:
        longest = max(video.tracks, key=lambda t: t.n_frames)
        return _reject(outcome, "short_tracks", f"only face tracks spanning prepare.min_frames={params.min_frames} "
                       f"frames or fewer (FOMM keeps end - start > min_frames; longest: frames {longest.start}-"
                       f"{longest.end} of {video.n_frames})")

    # Which frames each kept track stores, then pass 2: crop them.
    clip_ids, indices, plans = [], [], []
    for k, (track, box) in enumerate(kept):
        clip_id = f"{job['clip']}_t{k}"
        rng = np.random.default_rng([seed, zlib.crc32(clip_id.encode())])
        frame_index = track.start + sample_frames(track.n_frames, clip_split, params, rng)
        clip_ids.append(clip_id)
        indices.append(frame_index)
        plans.append(fomm.CropPlan(track, box, set(frame_index.tolist())))
    crops: list[list[np.ndarray]] = [[] for _ in plans]
    landmarks: list[list[np.ndarray]] = [[] for _ in plans]
    predictor = None if use_truth else _landmark_predictor(landmarks_model)
    try:
        for k, i, crop, frame in fomm.track_crops(video, plans, params.size):
            points = truth["landmarks"][i] if use_truth else predictor(frame, plans[k].track.nearest_box(i))
            crops[k].append(crop)
            landmarks[k].append(fomm.to_crop_coords(points, plans[k].box, params.size))
    except VideoError as e:
        return _reject(outcome, "unreadable", str(e))

    for k, (clip_id, plan, frame_index) in enumerate(zip(clip_ids, plans, indices)):
        frames = np.stack(crops[k])
        points = np.stack(landmarks[k]).astype(np.float32)
        labels = None
        if truth is not None:
            labels = {key: truth[key][frame_index] for key in TRUTH_KEYS}
            labels["identity_vector"] = truth["identity_vector"]
        write_clip(out_dir, clip_id, frames=frames, landmarks=points, frame_index=frame_index, truth=labels,
                   masks=feature_masks(points, params.size, params.mask_dilation * params.size))
        track, box = plan.track, plan.box
        outcome.clips.append({
            "clip_id": clip_id, "identity": job["identity"], "clip": job["clip"], "kind": job["kind"],
            "motion_from": job["motion_from"], "split": clip_split, "video": job["name"], "track": k,
            "start": track.start, "end": track.end, "track_frames": track.n_frames,
            "stored_frames": len(frames), "x0": int(box[0]), "y0": int(box[1]), "x1": int(box[2]), "y1": int(box[3]),
            "fps": video.fps, "detector": "ground_truth" if use_truth else "dlib",
        })
    return outcome


def _reject(outcome: VideoOutcome, kind: str, reason: str, status: str = "rejected") -> VideoOutcome:
    outcome.status, outcome.reason_kind, outcome.reason = status, kind, reason
    return outcome


def report_markdown(metrics: dict, outcomes: list[VideoOutcome]) -> str:
    """The human-readable account of the stage: counts, then every video that was not kept, and why."""
    lines = [
        "# prepare",
        "",
        f"Videos: {metrics['videos']['total']} in, {metrics['videos']['kept']} kept, "
        f"{metrics['videos']['rejected']} rejected, {metrics['videos']['skipped']} skipped.",
        f"Clips: {metrics['clips']['train']} train / {metrics['clips']['test']} test "
        f"(+{metrics['clips']['cross_test']} cross-identity ground-truth clips in test); identities "
        f"{metrics['identities']['train']} train / {metrics['identities']['test']} test; frames stored "
        f"{metrics['frames']['train']} train / {metrics['frames']['test']} test.",
        "",
    ]
    rejected = [o for o in outcomes if o.status == "rejected"]
    if rejected:
        lines += ["## Rejected videos", "", "| video | reason |", "|---|---|"]
        lines += [f"| {o.video} | {o.reason} |" for o in rejected]
        lines.append("")
    noted = [o for o in outcomes if o.notes]
    if noted:
        lines += ["## Kept with notes", "", "| video | notes |", "|---|---|"]
        lines += [f"| {o.video} | {'; '.join(o.notes)} |" for o in noted]
        lines.append("")
    return "\n".join(lines)


__all__ = ["prepare", "prepare_video", "sample_frames", "summarize", "report_markdown",
           "videos_table", "needs_landmarks", "PrepareError", "VideoOutcome", "MANIFEST_COLUMNS"]
