"""The `oracle` stage's library (stages/oracle.py): a ceiling row for Tables 1-2, Eq. 3's own latent space fitted
per frame with G fixed, no encoder involved.

    fit = oracle_video(G, layers, hybrid, source, targets, Settings(...))   # layers: motion_layers(G, ...)
    fit.frames                      # uint8 [T, S, S, 3]: G(A(W_ID) + S_F_t) with the fitted codes

Step 1 (`fit_identity`, `identity_codes` for several sources at once): W_ID in W+ fitted to the one-shot source
frame alone (Adam from G.latent_avg on every row, so nothing of the trained encoder enters), on lambda_l2 MSE +
lambda_lpips LPIPS of G(A(W_ID)) against it. Step 2 (`fit_motion`): W_ID fixed, one S_F per target frame (one code
per S_F layer, `model.sf_layers`; W+ offsets on the same layers with `hybrid=False`, the "w/o Hybrid" space) fitted
to the frame with the same loss: first the key frames alone (every `key_every`-th frame and the last, from S_F = 0),
their codes interpolated linearly in time, then every frame of the video from there (at equal cost this reaches
~3 dB more than fitting every frame from 0: the motion of a video is smooth). Each pass is one Adam optimisation
over chunks of `batch_size` frames; the loss is the SUM of per-frame losses, so each frame's codes follow their own
gradient and chunking does not change the fit. Targets: the driving frames (same identity) or the ground-truth cross
render (cross identity). It says how much of the gap between a re-enactment and its target is the encoder's and how
much is G's / Eq. 3's: converged, no encoder with this G and these S_F layers could do better (CMA, which changes
G, aside); at a finite budget it is a lower bound of that ceiling (params.yaml's `oracle` comment has the figures).

Deterministic: G's noise is its fixed buffers, the codes start from fixed values, nothing is sampled.

Output folder data/oracle/ (read by the `evaluate` stage, which scores it as the reference row `oracle`):
    index.csv                        protocol,name,pred,fitted_to (LF; pred relative to data/oracle)
    <protocol>/oracle/<name>.npy     uint8 [T, S, S, 3]; the same names and frame counts as data/reenacted
metrics/oracle.json: per protocol the mean PSNR / L1 of the oracle frames to what they were fitted to and the PSNR
of step 1's G(A(W_ID)) to its source; per video those and step 2's first and last losses (seconds: MLflow only).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.errors import UserError
from pipeline.io import atomic_dir, write_text
from pipeline.models.encoder import HybridDecoder
from pipeline.paths import ANALYZER_CHECKPOINT, GENERATOR_CHECKPOINT, ORACLE, PREPARED
from pipeline.stage import StageContext, StageResult

INDEX_COLUMNS = ("protocol", "name", "pred", "fitted_to")
ROW = "oracle"  # the reference row's name in the evaluate stage's results
Perceptual = Callable[[Tensor, Tensor], Tensor]  # (x, y) -> [N], differentiable w.r.t. x (pipeline.losses)


class OracleError(UserError, ValueError):
    """The oracle cannot fit these inputs; the message names the input and the fix."""


@dataclass
class OracleFit:
    """One video's oracle: the rendered frames, the fitted codes and how the fits went."""

    frames: np.ndarray  # uint8 [T, S, S, 3]: G(A(W_ID) + S_F_t)
    w_id: Tensor  # [1, n_latent, style_dim], fitted to the source
    motion: list[Tensor]  # one [T, C_l] per S_F layer (W+ offsets [T, style_dim] with hybrid=False)
    w_history: list[float] = field(default_factory=list)  # per step: the source loss
    s_history: list[float] = field(default_factory=list)  # per step: the mean per-frame loss over the video
    seconds: dict[str, float] = field(default_factory=dict)  # "w", "s" (MLflow only)


def check_frames(frames: np.ndarray, what: str, size: int | None = None) -> np.ndarray:
    """uint8 [N, S, S, 3] (S = `size` when given), or OracleError naming `what`."""
    frames = np.asarray(frames)
    ok = frames.ndim == 4 and frames.shape[3] == 3 and frames.shape[1] == frames.shape[2] and frames.dtype == np.uint8
    if not ok or (size is not None and frames.shape[1] != size) or len(frames) == 0:
        want = f"[N >= 1, {size}, {size}, 3]" if size is not None else "[N >= 1, S, S, 3] (square)"
        raise OracleError(f"oracle: {what}: expected uint8 frames {want}, got {frames.dtype} {list(frames.shape)}; "
                          f"the source and the target frames must be crops of one size (pipeline/crop.py)")
    return frames


def _image(frames: np.ndarray, device) -> Tensor:
    from pipeline.store import to_image

    return to_image(np.array(frames)).to(device)


def frame_losses(x: Tensor, y: Tensor, lambda_l2: float, lambda_lpips: float, perceptual: Perceptual | None) -> Tensor:
    """Per-frame lambda_l2 MSE + lambda_lpips LPIPS of x against y: [N] (the terms with weight 0 not computed)."""
    loss = x.new_zeros(x.shape[0])
    if lambda_l2 > 0:
        loss = loss + lambda_l2 * (x - y).pow(2).flatten(1).mean(1)
    if lambda_lpips > 0:
        if perceptual is None:
            raise ValueError("oracle: lambda_lpips > 0 needs a perceptual network")
        loss = loss + lambda_lpips * perceptual(x, y).reshape(-1)
    return loss


def fit_identity(decoder: HybridDecoder, sources: Tensor, *, steps: int, lr: float, lambda_l2: float = 1.0,
                 lambda_lpips: float = 0.0, perceptual: Perceptual | None = None,
                 batch_size: int | None = None) -> tuple[Tensor, list[float]]:
    """Step 1: W_ID [N, n_latent, style_dim] with G(A(W_ID[i])) ~ sources[i] ([N, 3, S, S]): Adam from latent_avg
    on every W+ row, chunks of `batch_size` sources, the sum of per-source losses (each source its own fit).
    Returns (W_ID, per-step mean loss per source)."""
    G = decoder.G
    n = sources.shape[0]
    batch_size = n if batch_size is None else int(batch_size)
    start_w = G.broadcast(G.latent_avg.detach().reshape(1, -1).to(sources))
    fitted, totals = [], np.zeros(steps)
    for start in range(0, n, batch_size):
        x = sources[start:start + batch_size]
        w = start_w.expand(x.shape[0], -1, -1).clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr, betas=(0.9, 0.999))
        for step in range(steps):
            loss = frame_losses(decoder(w, None), x, lambda_l2, lambda_lpips, perceptual).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            totals[step] += float(loss.detach())
        fitted.append(w.detach())
    if steps and not np.isfinite(totals[-1]):
        raise OracleError("oracle: the W_ID fit diverged (non-finite loss); lower oracle.lr_w")
    return torch.cat(fitted), [float(v) for v in totals / n]


def motion_dims(decoder: HybridDecoder) -> list[int]:
    """The width of each S_F code: C_l (StyleSpace) or style_dim (W+ offsets, hybrid=False)."""
    table = decoder.G.ss_layers
    return [int(table[i].channels) if decoder.hybrid else int(decoder.G.style_dim) for i in decoder.layers]


def keyframes(n: int, every: int) -> np.ndarray:
    """Indices of the key frames of an n-frame video: every `every`-th frame from 0, the last frame included."""
    if every <= 1 or n <= 2:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, -(-(n - 1) // every) + 1).round().astype(int))


def interpolate(codes: Sequence[Tensor], keys: np.ndarray, n: int) -> list[Tensor]:
    """Codes [K, C] at frames `keys` -> [n, C] at every frame, linear in time between neighbouring keys."""
    t = torch.arange(n, dtype=torch.float64)
    k = torch.as_tensor(keys, dtype=torch.float64)
    hi = torch.searchsorted(k, t, right=False).clamp(1, len(keys) - 1) if len(keys) > 1 else torch.zeros(n, dtype=torch.long)
    lo = (hi - 1).clamp(min=0)
    span = (k[hi] - k[lo]).clamp(min=1)
    f = ((t - k[lo]) / span).clamp(0, 1).to(codes[0].dtype)[:, None].to(codes[0].device)
    return [c[lo] * (1 - f) + c[hi] * f for c in codes]


def _adam(decoder: HybridDecoder, w_id: Tensor, targets: Tensor, init: Sequence[Tensor], steps: int, lr: float,
          lambda_l2: float, lambda_lpips: float, perceptual, batch_size: int) -> tuple[list[Tensor], np.ndarray]:
    """Adam on the per-frame codes from `init`, chunks of `batch_size` frames, the sum of per-frame losses."""
    n = targets.shape[0]
    codes: list[list[Tensor]] = []
    totals = np.zeros(steps)
    for start in range(0, n, batch_size):
        y = targets[start:start + batch_size]
        s = [c[start:start + batch_size].detach().clone().requires_grad_(True) for c in init]
        opt = torch.optim.Adam(s, lr=lr, betas=(0.9, 0.999))
        w = w_id.expand(y.shape[0], -1, -1)
        for step in range(steps):
            loss = frame_losses(decoder(w, s), y, lambda_l2, lambda_lpips, perceptual).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            totals[step] += float(loss.detach())
        codes.append([c.detach() for c in s])
    if steps and not np.isfinite(totals[-1]):
        raise OracleError("oracle: the S_F fit diverged (non-finite loss); lower oracle.lr_s / oracle.keyframes.lr")
    return [torch.cat(layer, dim=0) for layer in zip(*codes)], totals / n


def fit_motion(decoder: HybridDecoder, w_id: Tensor, targets: Tensor, *, steps: int, lr: float, lambda_l2: float = 1.0,
               lambda_lpips: float = 0.0, perceptual: Perceptual | None = None, batch_size: int | None = None,
               key_every: int = 1, key_steps: int = 0, key_lr: float | None = None) -> tuple[list[Tensor], list[float]]:
    """Step 2: with W_ID [1, n_latent, D] fixed, S_F codes (one [T, C_l] per layer) with G(A(W_ID) + S_F_t) ~
    targets[t] ([T, 3, S, S]). With key_every > 1 and key_steps > 0, first `key_steps` Adam steps (lr `key_lr`)
    fit the key frames alone from S_F = 0 (every key_every-th frame and the last), their codes are interpolated
    linearly in time to every frame, and `steps` Adam steps (lr `lr`) then fit every frame from there; else every
    frame from S_F = 0. Chunks of `batch_size` frames (None: all at once), each its own Adam on the sum of its
    per-frame losses. Returns (codes, per-step mean per-frame loss: the key frames' steps, then every frame's)."""
    w_id = w_id.detach()
    n = targets.shape[0]
    batch_size = n if batch_size is None else int(batch_size)
    zeros = [targets.new_zeros(n, d) for d in motion_dims(decoder)]
    history: list[float] = []
    init = zeros
    if key_every > 1 and key_steps > 0 and n > 2:
        keys = keyframes(n, key_every)
        fitted, h = _adam(decoder, w_id, targets[keys], [z[keys] for z in zeros], key_steps,
                          key_lr if key_lr is not None else lr, lambda_l2, lambda_lpips, perceptual, batch_size)
        init = interpolate(fitted, keys, n)
        history += [float(v) for v in h]
    codes, h = _adam(decoder, w_id, targets, init, steps, lr, lambda_l2, lambda_lpips, perceptual, batch_size)
    return codes, history + [float(v) for v in h]


@torch.no_grad()
def render(decoder: HybridDecoder, w_id: Tensor, motion: Sequence[Tensor], batch_size: int | None = None) -> np.ndarray:
    """Eq. 3, G(A(W_ID) + S_F_t) for every t: uint8 [T, S, S, 3]."""
    from pipeline.reenact import to_uint8

    n = motion[0].shape[0]
    step = n if batch_size is None else int(batch_size)
    out = [to_uint8(decoder(w_id.expand(min(step, n - s), -1, -1), [m[s:s + step] for m in motion]))
           for s in range(0, n, step)]
    return np.concatenate(out)


@dataclass(frozen=True)
class Settings:
    """How hard the oracle fits (params.yaml's `oracle` section; see its comments for the costs)."""

    steps_w: int = 100  # step 1: Adam steps on W_ID (the source)
    lr_w: float = 0.05
    key_every: int = 8  # step 2: key frames every N frames (1: no key-frame pass, every frame from S_F = 0)
    key_steps: int = 32  # Adam steps on the key frames' S_F
    key_lr: float = 0.05
    steps_s: int = 4  # Adam steps on every frame's S_F (from the key frames' interpolation)
    lr_s: float = 0.02
    lambda_l2: float = 1.0  # loss = lambda_l2 MSE + lambda_lpips LPIPS (per frame)
    lambda_lpips: float = 0.0
    batch_size: Optional[int] = None  # frames (sources) per optimisation chunk; None: all at once

    def __post_init__(self):
        bad = [k for k in ("steps_w", "key_steps", "steps_s") if getattr(self, k) < 0] + \
              [k for k in ("lr_w", "key_lr", "lr_s") if not getattr(self, k) > 0] + \
              (["key_every"] if self.key_every < 1 else []) + \
              (["batch_size"] if self.batch_size is not None and self.batch_size < 1 else [])
        if bad:
            raise ValueError(f"oracle settings out of range: {', '.join(f'{k}={getattr(self, k)}' for k in bad)} "
                             f"(steps >= 0, lr > 0, key_every >= 1, batch_size >= 1)")

    @classmethod
    def from_section(cls, section) -> "Settings":
        """From params' `oracle` section (pipeline.config.OracleParams)."""
        k = section.keyframes
        return cls(section.steps_w, section.lr_w, k.every, k.steps, k.lr, section.steps_s, section.lr_s,
                   section.lambda_l2, section.lambda_lpips, section.batch_size)


def identity_codes(G, layers: Sequence[int], hybrid: bool, sources: np.ndarray, settings: Settings,
                   perceptual: Perceptual | None = None, device: str | torch.device = "cpu") -> tuple[Tensor, list[float]]:
    """Step 1 for several one-shot sources at once (uint8 [N, S, S, 3]): (W_ID [N, n_latent, D], loss history)."""
    sources = check_frames(sources, "the source frames")
    decoder = HybridDecoder(G, layers, hybrid, sources.shape[1])
    s = settings
    return fit_identity(decoder, _image(sources, torch.device(device)), steps=s.steps_w, lr=s.lr_w,
                        lambda_l2=s.lambda_l2, lambda_lpips=s.lambda_lpips, perceptual=perceptual,
                        batch_size=s.batch_size)


def oracle_video(
    G,  # pipeline.models.stylegan2.Generator, frozen (its latent_avg set); never modified
    layers: Sequence[int],  # indices into G.ss_layers of the S_F layers (pipeline.models.encoder.motion_layers)
    hybrid: bool,  # S_F in StyleSpace (True) or W+ offsets (the "w/o Hybrid" space)
    source: np.ndarray,  # uint8 [S, S, 3]: the one-shot source frame
    targets: np.ndarray,  # uint8 [T, S, S, 3]: the frames to fit (driving frames, or the ground-truth cross render)
    settings: Settings = Settings(),
    perceptual: Perceptual | None = None,  # (x, y) -> [N] (pipeline.losses.perceptual_network); lambda_lpips > 0
    device: str | torch.device = "cpu",
    w_id: Tensor | None = None,  # step 1's W_ID [1, n_latent, D] when already fitted (identity_codes)
) -> OracleFit:
    """Both steps on one video (module docstring)."""
    source = check_frames(np.asarray(source)[None], "the source frame")
    size = source.shape[1]
    targets = check_frames(targets, "the target frames", size)
    device, s = torch.device(device), settings
    decoder = HybridDecoder(G, layers, hybrid, size)
    t0 = time.perf_counter()
    w_history: list[float] = []
    if w_id is None:
        w_id, w_history = identity_codes(G, layers, hybrid, source, s, perceptual, device)
    elif tuple(w_id.shape) != (1, G.n_latent, G.style_dim):
        raise OracleError(f"oracle: w_id must be [1, {G.n_latent}, {G.style_dim}], got {list(w_id.shape)}")
    t1 = time.perf_counter()
    motion, s_history = fit_motion(decoder, w_id.to(device), _image(targets, device), steps=s.steps_s, lr=s.lr_s,
                                   lambda_l2=s.lambda_l2, lambda_lpips=s.lambda_lpips, perceptual=perceptual,
                                   batch_size=s.batch_size, key_every=s.key_every, key_steps=s.key_steps,
                                   key_lr=s.key_lr)
    frames = render(decoder, w_id, motion, s.batch_size)
    return OracleFit(frames, w_id, motion, w_history, s_history, {"w": t1 - t0, "s": time.perf_counter() - t1})


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the per-frame PSNR (dB, 8-bit, capped at 60 dB as the evaluation's)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(np.minimum(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)), 60.0)))


# ------------------------------------------------------------------------------------------------ the stage

def oracle_protocols(ctx: StageContext) -> StageResult:
    """The body of stage `oracle`: the same and cross videos `reenact` writes (its job plan: reenact.max_videos,
    reenact.max_frames, seed), each fitted per frame, into data/oracle; fidelity figures into metrics/oracle.json."""
    import pandas as pd

    from pipeline.models.encoder import motion_layers
    from pipeline.models.stylegan2_formats import load_generator
    from pipeline.reenact import plan_jobs, to_uint8
    from pipeline.store import PreparedStore
    from pipeline.train import resolve_device

    section, seed = ctx.section, int(ctx.params.seed)
    # of the shared sections only what dvc.yaml lists: reenact.max_videos / max_frames, model.sf_layers / hybrid
    max_videos, max_frames = ctx.params.reenact.max_videos, ctx.params.reenact.max_frames
    sf, hybrid = ctx.params.model.sf_layers, bool(ctx.params.model.hybrid)
    for name in stage_assets(ctx.params):
        ctx.asset(name)
    settings = Settings.from_section(section)
    device = resolve_device(section.device)
    rows, per_video, timings = [], {}, {}
    with atomic_dir(ctx.root / ORACLE) as out:
        if section.protocols:
            G = load_generator(ctx.root / GENERATOR_CHECKPOINT, "native", map_location=device)
            G.fused_modconv = False  # as pipeline.reenact.load_models: faster on the CPU
            layers = motion_layers(G, sf.order, sf.count)
            perceptual = _perceptual(ctx, device) if section.lambda_lpips > 0 else None
            store = PreparedStore(ctx.root / PREPARED)
            jobs = plan_jobs(store, list(section.protocols), max_videos, seed, max_frames=max_frames)
            sources = np.stack([np.array(store.frames(j.source_clip)[j.source_frame]) for j in jobs])
            start = time.perf_counter()
            w_ids, _ = identity_codes(G, layers, hybrid, sources, settings, perceptual, device)  # step 1, batched
            timings["w_seconds"] = round(time.perf_counter() - start, 3)
            decoder = HybridDecoder(G, layers, hybrid, sources.shape[1])
            with torch.no_grad():
                rebuilt = to_uint8(decoder(w_ids, None))  # G(A(W_ID)): how well step 1 found each source
            bar = _progress(ctx, len(jobs))
            for i, job in enumerate(jobs):
                driving = store.frames(job.driving_clip)
                n = len(driving) if max_frames is None else min(len(driving), max_frames)
                target = store.frames(job.target_clip) if job.target_clip else None
                if target is not None:
                    n = min(n, len(target))
                fitted_to = "ground_truth" if target is not None else "driving"
                targets = np.array((target if target is not None else driving)[:n])
                fit = oracle_video(G, layers, hybrid, sources[i], targets, settings, perceptual, device,
                                   w_id=w_ids[i:i + 1])
                pred = f"{job.protocol}/{ROW}/{job.name}.npy"
                (out / pred).parent.mkdir(parents=True, exist_ok=True)
                np.save(out / pred, np.ascontiguousarray(fit.frames))
                rows.append({"protocol": job.protocol, "name": job.name, "pred": pred, "fitted_to": fitted_to})
                per_video.setdefault(job.protocol, {})[job.name] = {
                    "frames": int(n), "fitted_to": fitted_to,
                    "psnr": round(psnr(fit.frames, targets), 3),
                    "l1": round(float(np.abs(fit.frames.astype(np.float32) - targets).mean() / 255), 5),
                    "source_psnr": round(psnr(rebuilt[i:i + 1], sources[i:i + 1]), 3),
                    "s_loss": _ends(fit.s_history)}
                timings[f"s_seconds/{job.protocol}/{job.name}"] = round(fit.seconds["s"], 3)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
        table = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
        write_text(out / "index.csv", table.to_csv(index=False, lineterminator="\n"))
    fidelity = {p: {k: round(float(np.mean([v[k] for v in videos.values()])), 5 if k == "l1" else 3)
                    for k in ("psnr", "l1", "source_psnr")} for p, videos in per_video.items()}
    if rows:
        s_seconds = [v for k, v in timings.items() if k.startswith("s_seconds/")]
        timings["seconds_per_video"] = round((timings["w_seconds"] + sum(s_seconds)) / len(rows), 3)
    metrics = {"videos": {p: len(v) for p, v in per_video.items()},
               # mean over videos of the oracle's PSNR (dB) / L1 ([0, 1]) to the frames it was fitted to, and of
               # step 1's reconstruction of the source
               "fidelity": fidelity, "per_video": per_video}
    return StageResult(metrics=metrics, timings=timings, tags={"device": str(device)})


def _ends(history: list[float]) -> dict[str, float | None]:
    return {"first": round(history[0], 6) if history else None, "last": round(history[-1], 6) if history else None}


def _perceptual(ctx: StageContext, device):
    from pipeline.losses import perceptual_network

    name, toy = ctx.section.lpips_net, None
    if name == "lpips_toy":
        from pipeline.analysis.toy import ToyAnalyzer

        toy = ToyAnalyzer.load(ctx.root / ANALYZER_CHECKPOINT, device=device, root=ctx.root)
    return perceptual_network(name, toy, ctx.params.assets if name == "lpips" else None, device)


def _progress(ctx: StageContext, total: int):
    if not ctx.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="oracle", unit="video")


def stage_assets(params) -> list[str]:
    """The AlexNet LPIPS when the oracle's loss uses it."""
    o = params.oracle
    return ["lpips_alexnet"] if o.protocols and o.lpips_net == "lpips" and o.lambda_lpips > 0 else []
