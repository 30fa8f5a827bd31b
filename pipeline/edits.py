"""Attribute edit directions in W+ for Eq. 4: I_edit,t = G(A(W_ID^S + W_edit,t) + S_F^D_t).

Two kinds, each a W+ offset [n_latent, style_dim] for one unit of strength:
- unsupervised (`pc0`, `pc1`, ...), as GANSpace (Haerkoenen et al. 2020) finds them: the principal components
  of W = mapping(z) over random z; unit = one standard deviation of W along the component, the same offset on
  every W+ row. They exist for any generator; what each one does must be looked at.
- supervised (named knobs: `glasses`, `beard`, `hair_r`, `face_width`, ...), where labels exist: on the
  synthetic world, ridge regressions of the renderer's ground-truth identity attributes (pipeline/synth/face.py
  IDENTITY_NAMES; the categorical hair_style is left out) on the encoder's W_ID of training frames. For an
  attribute a (standardised over the frames) with coefficients beta (a ~ x . beta, x the flattened centred
  W_ID), the direction is beta / |beta|^2: the smallest W+ step that raises the fitted attribute by one standard
  deviation. `r_heldout` (correlation of the fit with the truth on held-out identities) says how far to trust it.

`--edit NAME=STRENGTH` (constant) or `NAME=A:B` (ramped linearly from A at the first frame to B at the last).
Directions are saved in the project's checkpoint format (kind "edit-directions") with the sha256 of the
generator and encoder they belong to.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from pipeline.errors import UserError

KIND = "edit-directions"
EDIT_SYNTAX = "NAME=STRENGTH (constant) or NAME=A:B (ramped from A at the first frame to B at the last)"


class EditError(UserError, ValueError):
    """An --edit that cannot be applied; the message names it and the valid choices."""


@dataclass
class Direction:
    name: str
    vector: Tensor  # [n_latent, style_dim]: the W+ offset of strength 1
    kind: str  # "pca" | "supervised"
    unit: str  # what strength 1 means
    r_heldout: float | None = None  # supervised: correlation of the fitted attribute with the truth on held-out ids


def ganspace_directions(G, n_components: int = 10, samples: int = 10_000, seed: int = 0) -> list[Direction]:
    """The first `n_components` principal components of W (GANSpace), one std of W each, on every W+ row."""
    if not 1 <= n_components <= G.style_dim:
        raise ValueError(f"n_components must be in 1..{G.style_dim}, got {n_components}")
    if samples <= n_components:
        raise ValueError(f"samples ({samples}) must exceed n_components ({n_components})")
    gen = torch.Generator().manual_seed(int(seed))
    device = G.input.input.device
    with torch.no_grad():
        w = torch.cat([G.map(torch.randn(min(4096, samples - s), G.style_dim, generator=gen).to(device))
                       for s in range(0, samples, 4096)]).double().cpu()
    centred = w - w.mean(0)
    _, sv, vt = torch.linalg.svd(centred, full_matrices=False)
    std = sv / np.sqrt(len(w) - 1)
    out = []
    for k in range(n_components):
        u = vt[k] * _sign(vt[k])  # a fixed sign: the largest-magnitude entry positive (SVD's sign is arbitrary)
        out.append(Direction(f"pc{k}", (std[k] * u).float().expand(G.n_latent, -1).clone(), "pca",
                             f"one standard deviation of W along its principal component {k}"))
    return out


def _sign(v: Tensor) -> float:
    return 1.0 if float(v[int(v.abs().argmax())]) >= 0 else -1.0


def supervised_directions(w_id: np.ndarray, attributes: np.ndarray, names: Sequence[str], ridge: float = 1.0,
                          heldout: tuple[np.ndarray, np.ndarray] | None = None) -> list[Direction]:
    """Named directions from W_ID codes [N, n_latent, D] and their attributes [N, A] (see the module docstring);
    attributes constant over the frames are skipped. heldout: (W_ID, attributes) of other identities, for
    r_heldout."""
    w_id = np.asarray(w_id, dtype=np.float64)
    y = np.asarray(attributes, dtype=np.float64)
    if w_id.ndim != 3 or y.ndim != 2 or len(w_id) != len(y) or y.shape[1] != len(names):
        raise ValueError(f"expected W_ID [N, L, D] and attributes [N, {len(names)}], got {w_id.shape}, {y.shape}")
    x = w_id.reshape(len(w_id), -1)
    mean = x.mean(0)
    xc = x - mean
    # ridge in its dual form (N frames < L x D dims at most): beta = X^T (X X^T + ridge I)^-1 y
    gram = xc @ xc.T + ridge * np.eye(len(xc))
    out = []
    for j, name in enumerate(names):
        std = y[:, j].std()
        if std == 0:
            continue
        target = (y[:, j] - y[:, j].mean()) / std
        beta = xc.T @ np.linalg.solve(gram, target)
        norm2 = float(beta @ beta)
        if norm2 == 0:
            continue
        r = None
        if heldout is not None:
            hx = np.asarray(heldout[0], dtype=np.float64).reshape(len(heldout[0]), -1) - mean
            pred, truth = hx @ beta, np.asarray(heldout[1], dtype=np.float64)[:, j]
            r = float(np.corrcoef(pred, truth)[0, 1]) if pred.std() > 0 and truth.std() > 0 else None
        vector = torch.from_numpy(beta / norm2).float().reshape(w_id.shape[1:])
        out.append(Direction(name, vector, "supervised", f"+1 standard deviation of {name} (std {std:.4g}), "
                                                         f"as fitted on W_ID", None if r is None else round(r, 4)))
    return out


def save_directions(path: str | os.PathLike, directions: Sequence[Direction], inputs: dict[str, str]) -> None:
    """Save directions (checkpoint kind "edit-directions") with `inputs`: file -> sha256 of G and E."""
    save_checkpoint(path, Checkpoint(
        kind=KIND, config={"inputs": dict(inputs)},
        state={"directions": {d.name: d.vector for d in directions}},
        extra={"directions": [{"name": d.name, "kind": d.kind, "unit": d.unit, "r_heldout": d.r_heldout}
                              for d in directions]}))


def load_directions(path: str | os.PathLike, inputs: dict[str, str] | None = None) -> list[Direction]:
    """Directions saved by save_directions; CheckpointError when they belong to other networks than `inputs`."""
    ck = load_checkpoint(path, KIND, hint="the `reenact` stage writes it (dvc repro reenact)")
    if inputs is not None and ck.config.get("inputs") != inputs:
        raise CheckpointError(f"{path}: these edit directions were fitted for other generator / encoder files "
                              f"({ck.config.get('inputs')}); re-run the `reenact` stage for these networks")
    vectors = ck.state.get("directions", {})
    return [Direction(m["name"], vectors[m["name"]], m["kind"], m["unit"], m.get("r_heldout"))
            for m in ck.extra.get("directions", [])]


_EDIT = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*=\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*(?::\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?))?\s*$")


def parse_edit(text: str) -> tuple[str, float, float]:
    """'NAME=S' -> (NAME, S, S); 'NAME=A:B' -> (NAME, A, B); EditError otherwise."""
    m = _EDIT.match(text)
    if not m:
        raise EditError(f"--edit {text!r}: expected {EDIT_SYNTAX}, e.g. glasses=1.5 or pc0=-2:2")
    try:
        a = float(m.group(2))
        b = float(m.group(3)) if m.group(3) is not None else a
    except ValueError:
        raise EditError(f"--edit {text!r}: strengths must be numbers ({EDIT_SYNTAX})") from None
    return m.group(1), a, b


class EditSchedule:
    """W_edit,t of Eq. 4 for frame indices t of a video of `n_frames`: the sum over the edits of strength(t) x
    direction, strength(t) = A + (B - A) t / (n_frames - 1)."""

    def __init__(self, edits: Sequence[tuple[Direction, float, float]], n_frames: int):
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        self.edits, self.n_frames = list(edits), int(n_frames)

    @classmethod
    def parse(cls, texts: Sequence[str], directions: Sequence[Direction], n_frames: int) -> "EditSchedule":
        """From --edit texts; EditError naming the unknown direction and the valid names."""
        table = {d.name: d for d in directions}
        edits = []
        for text in texts:
            name, a, b = parse_edit(text)
            if name not in table:
                raise EditError(f"--edit {text!r}: no direction {name!r}; directions: {', '.join(table) or '(none)'}")
            edits.append((table[name], a, b))
        return cls(edits, n_frames)

    def strength(self, a: float, b: float, t: np.ndarray) -> np.ndarray:
        return a + (b - a) * np.asarray(t, dtype=np.float64) / max(self.n_frames - 1, 1)

    def __call__(self, t: np.ndarray) -> Tensor:
        """[len(t), n_latent, style_dim] offsets for the frame indices t."""
        if not self.edits:
            raise ValueError("an EditSchedule without edits")
        out = None
        for d, a, b in self.edits:
            s = torch.from_numpy(self.strength(a, b, t)).float()[:, None, None] * d.vector[None]
            out = s if out is None else out + s
        return out
