"""Re-enactment (Eq. 3) and attribute-edited re-enactment (Eq. 4), streamed over the driving video.

    models = load_models(root / GENERATOR_CHECKPOINT, root / ENCODER_CHECKPOINT)   # G + E, checked to fit
    engine = Reenactor(models)                       # or Reenactor(models, G=adapted) after CMA / PTI
    source = engine.source(frame)                    # W_ID^S, S_F^S of the one-shot source frame (Eq. 1)
    for chunk in engine.stream(source, driving_frames, batch_size=16):   # uint8 [B, S, S, 3] per chunk
        ...

Eq. 3: I_t^{S->D} = G(A(W_ID^S) + S_F^D_t). The source is encoded once; the driving frames are encoded and
rendered `batch_size` at a time (one E call and one G call per chunk), so memory holds one chunk whatever the
video's length: `driving` may be any iterable of frames (a memory-mapped array, a generator reading a video).
Eq. 4: I_edit,t^{S->D} = G(A(W_ID^S + W_edit,t) + S_F^D_t), W_edit,t from pipeline.edits (constant or ramped).

Frames are the crops the encoder reads (uint8 [S, S, 3], S = the encoder's input size; pipeline/crop.py makes
them from any video); outputs are the same size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.assets import sha256_of
from pipeline.checkpoint import CheckpointError, load_checkpoint, load_state
from pipeline.errors import UserError
from pipeline.models.encoder import HybridDecoder, HybridEncoder
from pipeline.models.stylegan2 import Generator
from pipeline.store import to_image
from pipeline.train import ENCODER_KIND, resolve_device


class ReenactError(UserError, ValueError):
    """Re-enactment cannot run on these inputs; the message names the input and the fix."""


def to_uint8(x: Tensor) -> np.ndarray:
    """Images [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (clamped, rounded)."""
    return x.detach().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Models:
    """The frozen networks of re-enactment: the shared generator and the trained encoder."""

    G: Generator  # the shared pre-trained generator (never modified here; CMA / PTI adapt copies of it)
    encoder: HybridEncoder  # E = F + E_ID + E_F, eval mode, frozen
    layers: list[int]  # indices into G.ss_layers of the S_F layers (the encoder's checkpoint says which)
    hybrid: bool  # S_F in StyleSpace (True) or W+ offsets ("w/o Hybrid")
    size: int  # S: the side of the frames the encoder reads and re-enactment writes
    device: torch.device
    inputs: dict[str, str] = field(default_factory=dict)  # file -> sha256 of the loaded checkpoints

    def decoder(self, G: Generator | None = None) -> HybridDecoder:
        """Eq. 3's renderer over G (default: the shared generator)."""
        return HybridDecoder(G if G is not None else self.G, self.layers, self.hybrid, self.size)


def load_models(generator: str | os.PathLike, encoder: str | os.PathLike, device: str | torch.device = "cpu") -> Models:
    """The generator (native format) and the encoder trained for it; CheckpointError naming the file and the
    fix when either is missing, unreadable or when the encoder was trained for another generator."""
    from pipeline.models.stylegan2_formats import load_generator

    device = resolve_device(device) if isinstance(device, str) else device
    generator, encoder = Path(generator), Path(encoder)
    G = load_generator(generator, "native", map_location=device)
    ck = load_checkpoint(encoder, ENCODER_KIND, hint="train one with the `pretrain` and `finetune` stages "
                                                     "(dvc repro finetune)")
    trained_for = ck.config.get("generator")
    if trained_for != dict(G.config):
        diff = sorted(k for k in set(trained_for or {}) | set(G.config)
                      if (trained_for or {}).get(k) != G.config.get(k))
        raise CheckpointError(f"{encoder}: this encoder was trained for another generator than {generator} "
                              f"(config differs in: {', '.join(diff) or 'everything'}); give the generator it was "
                              f"trained with, or re-train the encoder for this one (dvc repro pretrain finetune)")
    try:
        net = HybridEncoder(**ck.config["encoder"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{encoder}: its encoder config cannot build an encoder ({e}); re-train it "
                              f"(dvc repro pretrain finetune)") from None
    load_state(net, ck, "encoder", str(encoder))
    layers = [int(i) for i in ck.config.get("layers", [])]
    table = G.ss_layers
    if not layers or max(layers) >= len(table) or len(layers) != net.n_motion:
        raise CheckpointError(f"{encoder}: its S_F layers {layers} do not fit the encoder's {net.n_motion} motion "
                              f"heads or the {len(table)}-layer generator; re-train it (dvc repro pretrain finetune)")
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    G.fused_modconv = False  # one shared conv on style-scaled inputs: faster than grouped convs on the CPU
    return Models(G, net, layers, bool(ck.config.get("hybrid", True)), int(net.input_size), device,
                  {generator.name: sha256_of(generator), encoder.name: sha256_of(encoder)})


@dataclass
class Source:
    """The one-shot source, encoded once (Eq. 1)."""

    frame: Tensor  # [1, 3, S, S] in [-1, 1]
    w_id: Tensor  # W_ID^S [1, n_latent, style_dim]
    motion: list[Tensor]  # S_F^S, one [1, C_l] per S_F layer


def check_frames(frames: np.ndarray, size: int, what: str) -> np.ndarray:
    """uint8 [N, S, S, 3] frames of the encoder's size, or ReenactError naming `what` and the fix."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1:] != (size, size, 3) or frames.dtype != np.uint8:
        raise ReenactError(f"{what}: expected uint8 face crops [N, {size}, {size}, 3] (the encoder's input size), got "
                           f"{frames.dtype} {list(frames.shape)}; crop them first (pipeline/crop.py, `reenact crop "
                           f"--size {size}`)")
    return frames


class Reenactor:
    """Eq. 3 / Eq. 4 with the frozen encoder and a generator (the shared one, or a CMA / PTI-adapted copy)."""

    def __init__(self, models: Models, G: Generator | None = None):
        self.models = models
        self.decoder = models.decoder(G)

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> tuple[Tensor, list[Tensor]]:
        """Eq. 1 on uint8 crops [N, S, S, 3]: (W_ID [N, n_latent, D], S_F list of [N, C_l])."""
        frames = check_frames(frames, self.models.size, "frames")
        if not frames.flags.writeable:  # a memory-mapped video: torch wants its own copy of the chunk
            frames = np.array(frames)
        x = to_image(frames).to(self.models.device)
        return self.models.encoder(x)

    def source(self, frame: np.ndarray) -> Source:
        """Encode the one-shot source frame uint8 [S, S, 3]."""
        frame = check_frames(np.asarray(frame)[None], self.models.size, "the source frame")
        w, motion = self.encode(frame)
        return Source(to_image(frame).to(self.models.device), w, motion)

    @torch.no_grad()
    def render(self, w_id: Tensor, motion: Sequence[Tensor]) -> Tensor:
        """G(A(W_ID) + S_F) [N, 3, S, S] in [-1, 1]."""
        return self.decoder(w_id, motion)

    def stream(self, source: Source, driving: Iterable[np.ndarray], batch_size: int = 16,
               edit: Callable[[np.ndarray], Tensor] | None = None) -> Iterator[np.ndarray]:
        """Re-enacted frames, uint8 [B, S, S, 3] per chunk of `batch_size` driving frames (Eq. 3; Eq. 4 with
        `edit`: frame indices int [B] -> W_edit [B, n_latent, style_dim]). `driving` is any iterable of uint8
        [S, S, 3] frames (or of chunks [B, S, S, 3]); only one chunk is ever in memory."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        start = 0
        for chunk in _chunks(driving, batch_size):
            w_d, s_d = self.encode(chunk)  # W_ID^D is not used by Eq. 3
            n = len(chunk)
            w = source.w_id.expand(n, -1, -1)
            if edit is not None:
                w = w + edit(np.arange(start, start + n)).to(w)  # Eq. 4: A(W_ID^S + W_edit,t)
            yield to_uint8(self.render(w, s_d))  # Eq. 3: G(A(W_ID^S) + S_F^D_t)
            start += n
        if start == 0:
            raise ReenactError("the driving video has no frames")


def _chunks(frames: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Regroup frames [S, S, 3] or chunks [B, S, S, 3] into chunks of at most batch_size frames."""
    if isinstance(frames, np.ndarray) and frames.ndim == 4:  # an array (memory-mapped or not): slice it
        for s in range(0, len(frames), batch_size):
            yield np.ascontiguousarray(frames[s:s + batch_size])
        return
    buf: list[np.ndarray] = []
    for item in frames:
        item = np.asarray(item)
        for frame in (item if item.ndim == 4 else item[None]):
            buf.append(frame)
            if len(buf) == batch_size:
                yield np.stack(buf)
                buf = []
    if buf:
        yield np.stack(buf)


# ------------------------------------------------------------------------------ the evaluation protocols

PROTOCOLS = ("same", "cross", "robustness")


@dataclass(frozen=True)
class Job:
    """One prediction of an evaluation protocol (names as pipeline/evaluation/sources.find_pairs pairs them)."""

    protocol: str  # same | cross | robustness
    name: str  # the prediction's name: same / cross: its driving file's name; robustness: <driving>__<tag>
    driving: str  # the name of the driving file (robustness: shared by its sources)
    driving_clip: str  # the prepared clip whose frames drive
    source_clip: str  # the prepared clip the one-shot source frame comes from
    source_frame: int  # index of the source frame among that clip's stored frames
    target_clip: str | None = None  # cross: the ground-truth cross render (identity X with motion_from's motion)


def _pick(ids: Sequence[str], k: int, rng: np.random.Generator) -> list[str]:
    ids = sorted(ids)
    if k >= len(ids):
        return ids
    return sorted(ids[i] for i in rng.choice(len(ids), size=k, replace=False))


def plan_jobs(
    store,  # pipeline.store.PreparedStore
    protocols: Sequence[str],  # which protocols (PROTOCOLS)
    max_videos: int,  # same / cross: at most this many videos (a seeded draw among the held-out ones)
    seed: int,
    n_driving: int = 5,  # robustness: driving videos ...
    n_sources: int = 5,  # ... x diverse source frames of each
    selection: str = "farthest",  # pipeline.evaluation.robustness.select_diverse_frames
    features: Callable[[str, int], np.ndarray | None] | None = None,  # (clip, n frames) -> [n, C] for "farthest"
    max_frames: int | None = None,  # frames of a driving video that count (robustness sources come from them)
) -> list[Job]:
    """The predictions each protocol needs from the test split (see pipeline/reenact.py's Job):

    same: source = the video's first stored frame (FOMM's convention), driving = the video.
    cross: one per cross render (clip of kind `cross`: identity X with the motion of clip `motion_from`):
        driving = motion_from's clip, target = the cross render, source = a seeded random frame of a seeded random
        held-out clip of X itself (never the cross render).
    robustness: n_driving videos x n_sources source frames of each, chosen among its frames by
        select_diverse_frames (pipeline/evaluation/robustness.py); named robustness_name(driving, f<frame>)."""
    from pipeline.evaluation.robustness import robustness_name, select_diverse_frames

    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; protocols: {', '.join(PROTOCOLS)}")
    clips = store.clips("test", "clip")
    if clips.empty:
        raise ReenactError(f"{store.root}: no held-out clips to re-enact (the test split is empty); re-run `prepare`")
    jobs: list[Job] = []
    stored = dict(zip(clips["clip_id"], clips["stored_frames"].astype(int)))

    def n_frames(clip: str) -> int:
        return stored[clip] if max_frames is None else min(stored[clip], max_frames)

    if "same" in protocols:
        rng = np.random.default_rng([seed, 0])
        for cid in _pick(list(clips["clip_id"]), max_videos, rng):
            jobs.append(Job("same", cid, cid, cid, cid, 0))
    if "cross" in protocols:
        rng = np.random.default_rng([seed, 1])
        cross = store.clips("test", "cross")
        if cross.empty:
            raise ReenactError(f"{store.root}: no cross renders in the test split, which the cross protocol needs here "
                               f"(the synthetic world renders them: data.cross_per_clip > 0); or drop it: "
                               f"reenact.adaptations.cross: []")
        by_clip = {c: cid for c, cid in zip(clips["clip"], clips["clip_id"])}
        rows = {r["clip_id"]: r for r in cross.to_dict("records")}
        for cid in _pick(list(rows), max_videos, rng):
            row = rows[cid]
            own = sorted(clips.loc[clips["identity"] == row["identity"], "clip_id"])
            if row["motion_from"] not in by_clip or not own:
                raise ReenactError(f"{store.root}: cross render {cid} lacks its driving clip {row['motion_from']!r} or a "
                                   f"held-out clip of its identity {row['identity']!r}; re-run `prepare`")
            src = own[int(rng.integers(len(own)))]
            jobs.append(Job("cross", cid, cid, by_clip[row["motion_from"]], src, int(rng.integers(stored[src])), cid))
    if "robustness" in protocols:
        rng = np.random.default_rng([seed, 2])
        for cid in _pick(list(clips["clip_id"]), n_driving, rng):
            n = n_frames(cid)
            feats = features(cid, n) if features is not None and selection == "farthest" else None
            k = min(n_sources, n)
            picked = select_diverse_frames(feats, k, selection if feats is not None or selection != "farthest"
                                           else "uniform", n_frames=n, seed=seed)
            for i in picked:
                jobs.append(Job("robustness", robustness_name(cid, f"f{int(i):04d}"), cid, cid, cid, int(i)))
    return jobs
