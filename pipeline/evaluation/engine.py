"""The evaluation engine: stream each pair of videos once, feed every requested metric, aggregate over videos.

For each pair the prediction is scored, and, when `references` is on, rows that need no model and give
every number a scale: "copy the source frame" (the source frame repeated: the motion floor) and, in the
same-identity protocols, "copy the driving frame" (the ceiling); cross-identity with ground-truth renders
(the synthetic world), the ground truth itself (what a perfect re-enactment scores, e.g. on l_id_driver). The
reference rows share the driving video's and the target's features (computed once per chunk).

Per-video values: frame metrics are the mean over the video's frames (frames without a face are left out of
l_id, and counted); rho_* come from pipeline.metrics.motion.video_correlation (one video at a time; the
constant-channel rule is documented there). Aggregates: mean over videos (each video weighs the same), std
over videos (ddof 1), a percentile-bootstrap 95% CI over videos (stats.py).

Set metrics (fid, fvd, their mouth and toy variants) are distances between two feature distributions. In the
same and cross protocols (Tables 1-2) they are computed once on the features pooled over all videos
(generated vs driving), with a bootstrap CI over videos (`set_resamples`, recomputing the distance per
replicate): the replicates' percentiles shifted by their median bias (a replicate duplicates videos, which
biases a Frechet distance upward), so the interval is the replicates' spread around the estimate and always
contains it (stats.bias_corrected_interval); per_video holds no value for them. In the robustness protocol
(Table 3: mean and standard deviation over the 25 source-driving combinations) each combination gets its own
distance (its frames, or its 16-frame clips, against its driving video's) and those are summarised like the
other metrics, with a cluster bootstrap over driving videos.

FVD clips: consecutive, non-overlapping `clip_frames`-frame windows from frame 0 (16, StyleGAN-V's
convention), the remainder dropped; the same windows on both sides.

Sharding: under `torchrun` (torch.distributed initialised), rank r takes the pairs r, r + W, ... of the
name-sorted list; every rank's per-video results (with their features) are gathered, and every rank then
aggregates the same, name-ordered data: the result equals one process's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from pipeline.evaluation import stats as st
from pipeline.evaluation.frechet import feature_stats, frechet_distance, frechet_distance_eigh
from pipeline.evaluation.mouth import crop_boxes, mouth_boxes
from pipeline.evaluation.registry import METRICS, check_metrics
from pipeline.evaluation.sources import RESIZE_NOTE, EvaluationError, Pair, count_frames, describe, iter_chunks, read_still, resize

PSNR_CAP_DB = 60.0  # per-frame PSNR cap (libvmaf's for 8-bit video): identical frames (the copy-driving ceiling, frame 0
# of copy-source when the source is the first driving frame) would otherwise make a video's mean infinite; a real
# method's frames never reach it (MSE 0.065: one value in 15 off by 1)
FRECHET_DDOF = {"fid": 1, "fid_toy": 1, "fvd": 0, "fvd_m": 0, "fvd_toy": 0, "fvd_m_toy": 0}  # see frechet.py
NETWORKS_OF = {
    "lpips": ("lpips",), "lpips_toy": ("toy",), "l_id": ("identity",), "l_id_gt": ("identity",), "l_id_driver": ("identity",),
    "l_id_dlib": ("dlib_identity",), "fid": ("inception",), "fid_toy": ("toy",), "fvd": ("i3d",),
    "fvd_m": ("i3d", "landmarks"), "fvd_toy": ("toy",), "fvd_m_toy": ("toy", "landmarks"),
    "rho_au": ("motion",), "rho_gz": ("motion",), "rho_pose": ("motion",), "rho_au_gz": ("motion",),
}
RHO_GROUPS = {"rho_au": ("expression",), "rho_gz": ("gaze",), "rho_pose": ("pose",), "rho_au_gz": ("expression", "gaze")}
MOTION_NOTES = {
    "pyfeat": "expression channels are py-feat's AU presence probabilities (0-1), not OpenFace's AU intensities: "
              "rho_au is not the paper's Table 1 column",
    "dlib": "expression channels are landmark geometry (mouth opening, smile, brow raise, eye aspect ratios), not AUs",
    "toy": "channels are the synthetic renderer's (pose, gaze, 7 expressions), read by the toy analyzer",
}


@dataclass
class Settings:
    protocol: str = "same"  # same | cross | robustness
    metrics: tuple[str, ...] = ("l1", "psnr", "ssim")
    batch_size: int = 16  # frames per network call
    max_frames: int | None = None  # first N frames per video (the paper: 500)
    device: str = "auto"  # auto | cpu | cuda[:i]
    references: bool = True  # also score "copy the source frame" (and, same identity, "copy the driving frame")
    resamples: int = 2000  # bootstrap resamples for per-video metrics
    set_resamples: int = 100  # bootstrap resamples for pooled set metrics (each recomputes a Frechet distance)
    seed: int = 0
    clip_frames: int = 16  # FVD clip length
    mouth_scale: float = 1.5  # FVD_M crop side / largest mouth extent of the clip
    mouth_size: int = 96  # FVD_M crop side in px, before the I3D's own resize to 224
    identity_backend: str = "arcface"  # l_id / l_id_gt: toy | arcface | dlib
    motion_backend: str = "pyfeat"  # rho_*: toy | dlib | pyfeat
    progress: bool = True

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class Unavailable(Exception):
    """A network the metric needs cannot be loaded; the message says which file to provide."""


class Networks:
    """The networks the requested metrics need, loaded once, lazily; a failure is remembered as the reason."""

    def __init__(self, params, settings: Settings, landmarks_needed: bool):
        self.params = params
        self.settings = settings
        self.device = settings.resolved_device()
        self.landmarks_needed = landmarks_needed
        self._loaded: dict[str, Any] = {}
        self._failed: dict[str, str] = {}

    def get(self, key: str):
        if key in self._failed:
            raise Unavailable(self._failed[key])
        if key not in self._loaded:
            try:
                self._loaded[key] = self._load(key)
            except Exception as e:  # asset missing / wrong file / backend unusable: the metric is missing
                from pipeline.analysis import BackendError
                from pipeline.assets import AssetError

                if not isinstance(e, (AssetError, BackendError, FileNotFoundError, KeyError, RuntimeError, ImportError)):
                    raise
                self._failed[key] = f"{key} network unavailable: {e}"
                raise Unavailable(self._failed[key]) from None
        return self._loaded[key]

    def _load(self, key: str):
        from pipeline.analysis import load_analyzer
        from pipeline.evaluation import networks as nw

        assets = self.params.assets
        if key == "lpips":
            return nw.LPIPSMetric.from_assets(assets, self.device)
        if key == "inception":
            return nw.InceptionFeatures.from_assets(assets, self.device)
        if key == "i3d":
            return nw.I3DFeatures.from_assets(assets, self.device)
        if key == "toy":
            return nw.ToyFeatures(load_analyzer("toy", self.params, device=self.device))
        if key == "identity":
            analyzer = load_analyzer(self.settings.identity_backend, self.params, device=self.device)
            if not analyzer.has_identity:
                raise RuntimeError(f"backend {analyzer.name!r} has no identity network")
            return analyzer
        if key == "dlib_identity":
            return load_analyzer("dlib", self.params)
        if key == "motion":
            analyzer = load_analyzer(self.settings.motion_backend, self.params, device=self.device)
            if not analyzer.has_motion:
                raise RuntimeError(f"backend {analyzer.name!r} has no motion analyser")
            return analyzer
        if key == "landmarks":
            from pipeline.assets import require
            from pipeline.evaluation.mouth import DlibMouthLandmarks

            return DlibMouthLandmarks(require("dlib_landmarks68", assets))
        raise KeyError(key)

    def describe(self, metric: str) -> dict[str, Any]:
        keys = [k for k in NETWORKS_OF.get(metric, ()) if k != "landmarks"]
        if not keys:
            return {"backend": "pixels", "weights_sha256": {}}
        net = self._loaded[keys[0]]
        if hasattr(net, "describe") and not hasattr(net, "has_identity"):
            out = dict(net.describe())
        else:  # a FaceAnalyzer
            out = {"backend": net.name, "weights_sha256": dict(net.weights())}
        if metric in RHO_GROUPS:
            out["note"] = MOTION_NOTES.get(net.name, "")
        if metric.startswith("l_id"):
            out["note"] = "1 - cosine similarity of the backend's identity embeddings"
        if metric in ("fvd_m", "fvd_m_toy"):
            out["landmarks"] = "given per video" if "landmarks" not in self._loaded else "dlib 68-point (driving frames)"
        return out


@dataclass
class VideoRecord:
    """One candidate's results on one video: values {metric: float} and, for set metrics, features."""

    values: dict[str, float] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)  # set metric -> float32 [N, D] of the candidate
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PairResult:
    name: str
    group: str
    frames: int
    size: tuple[int, int]  # prediction (height, width)
    candidates: dict[str, VideoRecord]
    reference: dict[str, np.ndarray]  # set metric -> the driving side's features
    files: dict[str, str]


class _VideoState:
    """Accumulators of one pair (all candidates), fed chunk by chunk."""

    def __init__(self, metrics: list[str], candidates: list[str], clip_frames: int):
        self.metrics = metrics
        self.candidates = candidates
        self.clip_frames = clip_frames
        self.frame_values = {c: {m: [] for m in metrics} for c in candidates}
        self.motion = {c: [] for c in candidates + ["driving"]}
        self.feats = {c: {m: [] for m in metrics} for c in candidates + ["driving"]}
        self.clip_buf: dict[str, list[np.ndarray]] = {c: [] for c in candidates + ["driving"]}
        self.lm_buf: list[np.ndarray] = []
        self.info: dict[str, Any] = {"frames_without_face": {}, "mouth_clips_without_landmarks": 0}


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - num / den


def _repeat(result, n: int):
    """A per-frame result of one frame, repeated n times (arrays, or MotionFeatures)."""
    from pipeline.analysis import MotionFeatures

    if isinstance(result, MotionFeatures):
        return MotionFeatures(np.repeat(result.pose, n, 0), np.repeat(result.gaze, n, 0), np.repeat(result.expression, n, 0),
                              result.pose_names, result.gaze_names, result.expression_names, np.repeat(result.found, n, 0))
    return np.repeat(result, n, axis=0)


def _embed(analyzer, frames: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return analyzer.identity(frames).detach().double().cpu().numpy()


def evaluate_pairs(
    pairs: list[Pair],
    params,  # the validated pipeline.config.Params (assets, backends' files)
    settings: Settings,
    skip_bad: bool = False,
    paired_with: dict | None = None,  # another evaluation's JSON: paired tests against it
) -> dict:
    """Evaluate the pairs and return the JSON-ready result (module docstring; the schema is in
    pipeline/evaluation/__init__.py)."""
    metrics = check_metrics(settings.metrics, settings.protocol)
    if not pairs:
        raise EvaluationError("no videos to evaluate")
    t0 = time.time()
    landmarks_needed = any(m in ("fvd_m", "fvd_m_toy") for m in metrics) and any(p.landmarks is None for p in pairs)
    nets = Networks(params, settings, landmarks_needed)
    active, missing = [], {}
    for m in metrics:
        try:
            for key in NETWORKS_OF.get(m, ()):
                if key == "landmarks" and not landmarks_needed:
                    continue
                nets.get(key)
            if METRICS[m].reference == "target" and any(p.target is None for p in pairs):
                raise Unavailable(f"{m} compares with the ground-truth cross render: give --target (videos named like the "
                                  f"predictions)")
            active.append(m)
        except Unavailable as e:
            missing[m] = str(e)
    candidates = ["method"]
    if settings.references:
        candidates.append("copy_source")
        if settings.protocol in ("same", "robustness"):
            candidates.append("copy_driving")
        elif all(p.target is not None for p in pairs):  # the synthetic world: what a perfect re-enactment scores
            candidates.append("ground_truth")

    pairs = sorted(pairs, key=lambda p: p.name)
    rank, world = _dist_rank_world()
    mine = pairs[rank::world]
    results, skipped = _evaluate_shard(mine, active, candidates, nets, settings, skip_bad)
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, (results, skipped))
        results = [r for part in gathered for r in part[0]]
        skipped = {k: v for part in gathered for k, v in part[1].items()}
    results.sort(key=lambda r: r.name)
    if not results:
        raise EvaluationError("no video could be evaluated: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    out = _assemble(results, active, candidates, missing, skipped, nets, settings)
    out["seconds"] = round(time.time() - t0, 2)
    if paired_with is not None:
        out["paired"] = paired_against(out, paired_with, settings.resamples, settings.seed)
    return out


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _evaluate_shard(pairs, metrics, candidates, nets, settings, skip_bad) -> tuple[list[PairResult], dict[str, str]]:
    from tqdm import tqdm

    counts = [count_frames(p.pred, settings.max_frames) for p in pairs]
    total = sum(counts) if all(c is not None for c in counts) else None
    bar = tqdm(total=total, unit="frame", desc="evaluate", disable=not settings.progress, dynamic_ncols=True)
    results, skipped = [], {}
    try:
        for pair in pairs:
            bar.set_postfix_str(pair.name, refresh=False)
            try:
                results.append(evaluate_pair(pair, metrics, candidates, nets, settings, bar.update))
            except EvaluationError as e:
                if not skip_bad:
                    raise
                skipped[pair.name] = str(e)
    finally:
        bar.close()
    return results, skipped


def evaluate_pair(pair: Pair, metrics: list[str], candidates: list[str], nets: Networks, settings: Settings,
                  progress: Callable[[int], Any] = lambda n: None) -> PairResult:
    """Stream one pair once and compute every metric for every candidate (the prediction and the references)."""
    state = _VideoState(metrics, candidates, settings.clip_frames)
    source_raw = read_still(pair.source) if pair.source is not None else None
    source = None
    ref_embedding: dict[str, np.ndarray] = {}
    frames, size = 0, None
    for chunk in iter_chunks(pair, settings.batch_size, settings.max_frames):
        pred, driving, target = chunk["pred"], chunk["driving"], chunk["target"]
        size = pred.shape[1:3]
        if source is None:  # the source frame at the prediction's resolution (default: the first driving frame)
            source = resize(source_raw, size) if source_raw is not None else driving[0].copy()
        batch = {"method": pred, "copy_source": np.repeat(source[None], len(pred), 0), "copy_driving": driving,
                 "ground_truth": target}
        batch = {c: batch[c] for c in candidates}
        _feed(state, batch, driving, target, source, chunk["landmarks"], nets, settings, ref_embedding)
        frames += len(pred)
        progress(len(pred))
    return _finish_pair(pair, state, frames, size, settings)


def _feed(state: _VideoState, batch: dict[str, np.ndarray], driving: np.ndarray, target, source: np.ndarray,
          landmarks, nets: Networks, settings: Settings, ref_embedding: dict) -> None:
    from pipeline.metrics import image as im

    ms = set(state.metrics)
    cache: dict[tuple[str, str], Any] = {}

    def once(kind: str, role: str, x: np.ndarray, fn):
        """fn(frames) for a role's frames, once per chunk. copy_driving IS the driving video (its features are
        the driving's), ground_truth the target; copy_source is one frame repeated (computed on one frame, repeated)."""
        key = (kind, {"copy_driving": "driving", "ground_truth": "target"}.get(role, role))
        if key not in cache:
            if role == "copy_source":
                cache[key] = _repeat(fn(np.array(x[:1])), len(x))
            else:
                cache[key] = fn(np.ascontiguousarray(x))
        return cache[key]

    frames_of = {**batch, "driving": driving}
    for c, x in batch.items():
        v = state.frame_values[c]
        if "l1" in ms:
            v["l1"].append(im.l1_per_image(driving, x))
        if "psnr" in ms:
            v["psnr"].append(np.minimum(im.psnr_per_image(driving, x), PSNR_CAP_DB))
        if "ssim" in ms:
            v["ssim"].append(im.ssim_per_image(driving, x))
        if target is not None:
            if "l1_gt" in ms:
                v["l1_gt"].append(im.l1_per_image(target, x))
            if "psnr_gt" in ms:
                v["psnr_gt"].append(np.minimum(im.psnr_per_image(target, x), PSNR_CAP_DB))
            if "ssim_gt" in ms:
                v["ssim_gt"].append(im.ssim_per_image(target, x))
        if "lpips" in ms:
            v["lpips"].append(nets.get("lpips")(driving, x))
        if "lpips_toy" in ms:
            v["lpips_toy"].append(nets.get("toy").lpips(driving, x))
        for metric, key, ref_fn in (("l_id", "identity", None), ("l_id_dlib", "dlib_identity", None),
                                    ("l_id_gt", "identity", "target"), ("l_id_driver", "identity", "driving")):
            if metric not in ms:
                continue
            net = nets.get(key)
            emb = once(key, c, x, lambda f: _embed(net, f))
            if ref_fn == "target":
                ref = once(key, "target", target, lambda f: _embed(net, f))
            elif ref_fn == "driving":  # per frame: the driver's identity in the frame the motion came from
                ref = once(key, "driving", driving, lambda f: _embed(net, f))
            else:
                if key not in ref_embedding:
                    ref_embedding[key] = _embed(net, source[None])[0]
                ref = ref_embedding[key][None]
            d = _cosine_distance(emb, ref)
            v[metric].append(d)
            if not np.isfinite(ref).all():
                state.info["frames_without_face"][ref_fn or "source"] = "no face in the reference"
    if any(m in ms for m in RHO_GROUPS):
        net = nets.get("motion")
        for role, x in frames_of.items():
            if role != "copy_driving":
                state.motion[role].append(once("motion", role, x, net.motion))
    for metric in ("fid", "fid_toy"):
        if metric not in ms:
            continue
        for role, x in frames_of.items():
            if role == "copy_driving":
                continue
            if metric == "fid":
                f = once("inception", role, x, nets.get("inception"))
            else:
                f = once("toy_pooled", role, x, nets.get("toy").pooled)
            state.feats[role][metric].append(f.astype(np.float32))
    # FVD: buffer frames into clips (only what one clip needs)
    if any(m in ms for m in ("fvd", "fvd_toy", "fvd_m", "fvd_m_toy")):
        if any(m in ms for m in ("fvd_m", "fvd_m_toy")):
            lm = landmarks if landmarks is not None else nets.get("landmarks")(driving)
            state.lm_buf.extend(list(lm))
        for role, x in frames_of.items():
            if role != "copy_driving":
                state.clip_buf[role].extend(list(np.asarray(x)))
        while len(state.clip_buf["driving"]) >= settings.clip_frames:
            _clip(state, nets, settings)


def _clip(state: _VideoState, nets: Networks, settings: Settings) -> None:
    n = settings.clip_frames
    clips = {role: np.stack(buf[:n]) for role, buf in state.clip_buf.items() if buf}
    for role in clips:
        del state.clip_buf[role][:n]
    lms = None
    if state.lm_buf:
        lms = np.stack(state.lm_buf[:n])
        del state.lm_buf[:n]
    ms = set(state.metrics)
    boxes = mouth_boxes(lms, settings.mouth_scale) if lms is not None else None
    if lms is not None and boxes is None:
        state.info["mouth_clips_without_landmarks"] += 1
    for role, clip in clips.items():
        if "fvd" in ms:
            state.feats[role]["fvd"].append(nets.get("i3d")(clip[None]).astype(np.float32))
        if "fvd_toy" in ms:
            toy = nets.get("toy")
            state.feats[role]["fvd_toy"].append(toy.clip_features(toy.pooled(clip)[None]).astype(np.float32))
        if boxes is not None:
            mouth = crop_boxes(clip, boxes, settings.mouth_size)
            if "fvd_m" in ms:
                state.feats[role]["fvd_m"].append(nets.get("i3d")(mouth[None]).astype(np.float32))
            if "fvd_m_toy" in ms:
                toy = nets.get("toy")
                state.feats[role]["fvd_m_toy"].append(toy.clip_features(toy.pooled(mouth)[None]).astype(np.float32))


def _finish_pair(pair: Pair, state: _VideoState, frames: int, size, settings: Settings) -> PairResult:
    from pipeline.metrics.motion import video_correlation

    records = {c: VideoRecord() for c in state.candidates}
    reference: dict[str, np.ndarray] = {}
    set_metrics = [m for m in state.metrics if METRICS[m].kind == "set"]
    for m in set_metrics:
        parts = state.feats["driving"][m]
        reference[m] = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    for c in state.candidates:
        rec = records[c]
        for m in state.metrics:
            kind = METRICS[m].kind
            if kind == "frame":
                vals = np.concatenate(state.frame_values[c][m]) if state.frame_values[c][m] else np.array([])
                finite = ~np.isnan(vals)
                if m.startswith("l_id") and (~finite).any():
                    rec.info.setdefault("frames_without_face", {})[m] = int((~finite).sum())
                rec.values[m] = float(vals[finite].mean()) if finite.any() else float("nan")
            elif kind == "video":
                role = "driving" if c == "copy_driving" else c
                gen, drv = _motion_channels(state.motion[role], m), _motion_channels(state.motion["driving"], m)
                r, used, left_out = video_correlation(gen, drv)
                rec.values[m] = r
                rec.info.setdefault("rho_channels", {})[m] = {"used": used, "left_out": left_out}
            else:
                role = "driving" if c == "copy_driving" else c
                parts = state.feats[role][m]
                rec.features[m] = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
                if settings.protocol == "robustness":
                    rec.values[m] = _frechet_or_nan(rec.features[m], reference[m], FRECHET_DDOF[m])
        rec.info.update({k: v for k, v in state.info.items() if v})
    files = {"pred": describe(pair.pred), "driving": describe(pair.driving),
             "source": describe(pair.source) if pair.source is not None else "first driving frame"}
    if pair.target is not None:
        files["target"] = describe(pair.target)
    return PairResult(pair.name, pair.group, frames, tuple(int(s) for s in size), records, reference, files)


def _motion_channels(parts: list, metric: str) -> np.ndarray:
    if not parts:
        return np.zeros((0, 0))
    groups = RHO_GROUPS[metric]
    cols = [np.concatenate([getattr(p, g) for p in parts]) for g in groups]
    return np.concatenate(cols, axis=1)


def _frechet_or_nan(a: np.ndarray, b: np.ndarray, ddof: int, wa=None, wb=None) -> float:
    if len(a) - ddof < 1 or len(b) - ddof < 1 or a.size == 0:
        return float("nan")
    return frechet_distance(*feature_stats(a, ddof, wa), *feature_stats(b, ddof, wb))


def _set_aggregate(results: list[PairResult], candidate: str, metric: str, settings: Settings, device="cpu") -> dict:
    """The pooled distance over all videos, and its bootstrap CI over videos (replicates reweight the rows of
    each resampled video by how often it was drawn; the interval: stats.bias_corrected_interval)."""
    ddof = FRECHET_DDOF[metric]
    a_parts = [r.candidates[candidate].features[metric] for r in results]
    b_parts = [r.reference[metric] for r in results]
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    value = _frechet_or_nan(a, b, ddof)
    ci = [float("nan"), float("nan")]
    if settings.set_resamples > 0 and len(results) > 1 and np.isfinite(value):
        reps = []
        ia = np.repeat(np.arange(len(results)), [len(p) for p in a_parts])
        ib = np.repeat(np.arange(len(results)), [len(p) for p in b_parts])
        for idx in st.bootstrap_indices(len(results), settings.set_resamples, settings.seed):
            w = np.bincount(idx, minlength=len(results)).astype(np.float64)
            reps.append(frechet_distance_eigh(a, b, ddof, w[ia], w[ib], device=device))
        # not the replicates' plain percentiles: duplicated videos bias a replicate's distance upward, so those
        # can lie above the estimate; their spread around their median, put around the estimate (stats.py)
        ci = st.bias_corrected_interval(reps, value, lower_bound=0.0)
    return {"mean": value, "std": float("nan"), "ci95": ci, "n": len(results),
            "features": [int(len(a)), int(len(b))],
            "note": "pooled over all videos (generated vs driving); ci95: bootstrap over videos, "
                    "percentiles shifted by the replicates' median bias"}


def _assemble(results: list[PairResult], metrics, candidates, missing, skipped, nets: Networks, settings: Settings) -> dict:
    groups = [r.group for r in results] if settings.protocol == "robustness" else None
    rows = {}
    for c in candidates:
        per_video = {r.name: {m: r.candidates[c].values[m] for m in metrics if m in r.candidates[c].values} for r in results}
        aggregate = {}
        for m in metrics:
            if METRICS[m].kind == "set" and settings.protocol != "robustness":
                aggregate[m] = _set_aggregate(results, c, m, settings, nets.device)
            else:
                aggregate[m] = st.summarize([per_video[r.name].get(m, float("nan")) for r in results],
                                            settings.resamples, settings.seed, groups)
        rows[c] = {"aggregate": aggregate, "per_video": per_video}
    sizes = sorted({r.size for r in results})
    out = {
        "protocol": settings.protocol,
        "metrics": list(metrics),
        "aggregate": _json_tree(rows["method"]["aggregate"]),
        "per_video": _json_tree(rows["method"]["per_video"]),
        "networks": {m: nets.describe(m) for m in metrics},
        "missing": dict(missing),
        "skipped": dict(skipped),
        "references": {c: _json_tree(rows[c]) for c in candidates if c != "method"},
        "videos": {r.name: {"frames": r.frames, "height": r.size[0], "width": r.size[1], "group": r.group, **r.files,
                            **({"info": _json_tree(r.candidates["method"].info)} if r.candidates["method"].info else {})}
                   for r in results},
        "resolution": {"sizes": [list(s) for s in sizes], "note": RESIZE_NOTE},
        "settings": {"protocol": settings.protocol, "max_frames": settings.max_frames, "batch_size": settings.batch_size,
                     "device": str(nets.device), "references": settings.references, "bootstrap_resamples": settings.resamples,
                     "set_bootstrap_resamples": settings.set_resamples, "seed": settings.seed,
                     "fvd_clip_frames": settings.clip_frames, "psnr_cap_db": PSNR_CAP_DB, "mouth_scale": settings.mouth_scale,
                     "mouth_size": settings.mouth_size, "identity_backend": settings.identity_backend,
                     "motion_backend": settings.motion_backend,
                     "aggregation": "mean of per-video values (each video weighs the same); std over videos (ddof 1); "
                                    "ci95 percentile bootstrap over videos" +
                                    (" (clustered by driving video)" if groups else "")},
        "frames": int(sum(r.frames for r in results)),
    }
    return out


def paired_against(result: dict, other: dict, resamples: int = 10000, seed: int = 0) -> dict:
    """Paired tests (stats.paired_test) of this evaluation's per-video values against another's, per metric
    both have, on the videos both scored. Positive mean_difference: this method's value is higher."""
    out = {}
    mine, theirs = result.get("per_video", {}), other.get("per_video", {})
    names = sorted(set(result.get("metrics", [])) & set(other.get("metrics", [])))
    for m in names:
        a = {k: v[m] for k, v in mine.items() if isinstance(v.get(m), (int, float))}
        b = {k: v[m] for k, v in theirs.items() if isinstance(v.get(m), (int, float))}
        if a and b:
            res = st.paired_test(a, b, resamples=resamples, seed=seed)
            res["higher_is_better"] = METRICS[m].higher_is_better if m in METRICS else None
            out[m] = _json_tree(res)
    return out


def _json_tree(obj):
    if isinstance(obj, dict):
        return {k: _json_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_tree(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return st.json_number(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def with_settings(settings: Settings, **changes) -> Settings:
    return replace(settings, **changes)
