"""Per-video generator adaptation at inference: Cyclic Manifold Adjustment (Sec. 3.3, Eq. 15-18) and PTI, its
ablation baseline ("Ours - CMA + PTI", Table 2). Both fine-tune a COPY of G; the shared generator is never
modified, so an adapted G belongs to one (source, driving video) pair (CMA) or one source (PTI) only.

CMA, one step (the encoder E frozen; its gradients pass through to G in Eq. 16):
    k driving frames I^D sampled from the driving video (seeded), W_ID^D, S_F^D = E(I^D)      (Eq. 1)
    I^{S->D} = G(A(W_ID^S) + S_F^D)                                                             (Eq. 3)
    W_ID_cyc^S, S_F_cyc^D = E(I^{S->D})                                                         (Eq. 16)
    I_cyc^S = G(A(W_ID_cyc^S) + S_F^S)                                                          (Eq. 17)
    I_cyc^D = G(A(W_ID^D) + S_F_cyc^D)                                                          (Eq. 18)
    loss = L(I_cyc^S, I^S) + L(I_cyc^D, I^D),  L = lambda_l2 * MSE + lambda_lpips * LPIPS        (Eq. 15)
and an Adam step on the G parameters `layers` names. It stops after `steps` steps, or earlier when a step's
loss falls below `stop_below`, or when `patience` steps pass without a new lowest loss.

PTI (Roich et al. 2022, as its reference implementation's defaults: 450 W-projection steps at lr 5e-3, 350
tuning steps at lr 3e-4, L2 + LPIPS with weights 1 and 1, stop when LPIPS <= 0.06): the source is projected
into W (one w from the mean w, Adam on L2 + LPIPS of G(w) against the source, G frozen), then G is tuned so
that G(w_pivot) reconstructs the source (the source only: no driving frame is seen). Re-enactment then renders
Eq. 3 (the encoder's W_ID^S and S_F^D) through the tuned G: only G changes, as in the paper's ablation.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pipeline import losses as L
from pipeline.models.encoder import HybridDecoder, concat_styles
from pipeline.models.stylegan2 import Generator
from pipeline.reenact import Models, ReenactError, Source
from pipeline.store import to_image

ALL = "all"  # `layers: [all]`: every synthesis parameter of G


@dataclass
class Adapted:
    """An adapted copy of G and how it got there."""

    G: Generator  # the fine-tuned copy (the shared G is untouched)
    steps: int  # optimisation steps taken (CMA; PTI: tuning steps)
    stopped: str  # why it stopped: "steps" | "stop_below" | "patience" | "lpips_threshold"
    history: list[dict] = field(default_factory=list)  # per step: step, loss and its terms
    seconds: float = 0.0  # wall time (MLflow only: never in a DVC output)
    extra: dict = field(default_factory=dict)  # PTI: projection steps and final projection loss

    @property
    def final(self) -> dict[str, float]:
        """The last step's loss terms (empty when no step ran)."""
        return {k: v for k, v in self.history[-1].items() if k != "step"} if self.history else {}


def synthesis_modules(G: Generator) -> list[str]:
    """Names of G's synthesis modules that hold parameters, in forward order (what `layers` may name)."""
    names = ["input", "conv1", "to_rgb1"]
    for k in range(len(G.to_rgbs)):
        names += [f"convs.{2 * k}", f"convs.{2 * k + 1}", f"to_rgbs.{k}"]
    return names


def tunable_parameters(G: Generator, layers: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the G modules `layers` names ([all]: every synthesis module; the mapping network
    never renders a frame here and never moves); ValueError naming the valid names for an unknown one."""
    valid = synthesis_modules(G)
    chosen = valid if ALL in layers else list(layers)
    unknown = [n for n in chosen if n not in valid]
    if unknown or not chosen:
        raise ValueError(f"G layers {unknown or list(layers)} not found; name some of: all, {', '.join(valid)}")
    prefixes = tuple(f"{n}." for n in chosen)
    return [(n, p) for n, p in G.named_parameters() if n.startswith(prefixes)]


def adaptable_copy(models: Models, layers: Sequence[str]) -> tuple[Generator, HybridDecoder, list[nn.Parameter]]:
    """A deep copy of the shared G, its Eq. 3 decoder, and the copy's parameters that move (requires_grad)."""
    G = copy.deepcopy(models.G)
    decoder = models.decoder(G)  # freezes every parameter of the copy ...
    params = [p for _, p in tunable_parameters(G, layers)]
    for p in params:  # ... then the chosen ones move
        p.requires_grad_(True)
    return G, decoder, params


def rec_loss(x: Tensor, y: Tensor, lambda_l2: float, lambda_lpips: float, perceptual) -> tuple[Tensor, dict[str, Tensor]]:
    """L of Eq. 15: lambda_l2 * MSE + lambda_lpips * LPIPS (pipeline.losses.reconstruction, no gradient variance)."""
    return L.reconstruction(x, y, lambda_l2, lambda_lpips, 0.0, perceptual)


def cma_objective(decoder: HybridDecoder, encoder: nn.Module, source: Source, driving: Tensor, lambda_l2: float,
                  lambda_lpips: float, perceptual=None) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 15-18 on a batch of driving frames [k, 3, S, S] in [-1, 1]: (loss, {"loss", "source", "driving",
    "source_l2", ...: the terms, detached}). The encoder is frozen (eval mode); gradients reach G only."""
    k = driving.shape[0]
    with torch.no_grad():
        w_d, s_d = encoder(driving)  # Eq. 1 on the driving frames (constants: real frames, frozen E)
    reenacted = decoder(source.w_id.expand(k, -1, -1), s_d)  # Eq. 3: I^{S->D} = G(A(W_ID^S) + S_F^D)
    w_cyc, s_cyc = encoder(reenacted)  # Eq. 16: W_ID_cyc^S, S_F_cyc^D = E(I^{S->D})
    s_src = [s.expand(k, -1) for s in source.motion]
    cyc = decoder.render_styles(concat_styles([
        decoder.styles(w_cyc, s_src),  # Eq. 17: I_cyc^S = G(A(W_ID_cyc^S) + S_F^S)
        decoder.styles(w_d, s_cyc),  # Eq. 18: I_cyc^D = G(A(W_ID^D) + S_F_cyc^D)
    ]))
    cyc_s, cyc_d = cyc[:k], cyc[k:]
    loss_s, parts_s = rec_loss(cyc_s, source.frame.expand(k, -1, -1, -1), lambda_l2, lambda_lpips, perceptual)
    loss_d, parts_d = rec_loss(cyc_d, driving, lambda_l2, lambda_lpips, perceptual)
    loss = loss_s + loss_d  # Eq. 15
    terms = {"loss": loss.detach(), "source": loss_s.detach(), "driving": loss_d.detach(),
             **{f"source_{k_}": v.detach() for k_, v in parts_s.items()},
             **{f"driving_{k_}": v.detach() for k_, v in parts_d.items()}}
    return loss, terms


def _row(step: int, terms: dict[str, Tensor]) -> dict:
    return {"step": step, **{k: round(float(v.detach()), 6) for k, v in terms.items()}}


def cyclic_manifold_adjustment(
    models: Models,
    source: Source,  # the encoded one-shot source (pipeline.reenact.Reenactor.source)
    driving: np.ndarray,  # uint8 [T, S, S, 3] driving frames (a memory-mapped array is fine: k are read per step)
    *,
    steps: int,  # at most this many Adam steps
    lr: float,  # Adam's learning rate on G
    frames_per_step: int,  # k driving frames per step
    layers: Sequence[str] = (ALL,),  # G modules that move (tunable_parameters)
    lambda_l2: float = 1.0,  # Eq. 15's L: MSE weight
    lambda_lpips: float = 1.0,  # Eq. 15's L: LPIPS weight (needs `perceptual`)
    perceptual=None,  # (x, y) -> [N] differentiable perceptual distance (pipeline.losses.perceptual_network)
    stop_below: float = 0.0,  # stop when a step's loss is below this (0: off)
    patience: int = 0,  # stop after this many steps without a new lowest loss (0: off)
    seed: int = 0,  # the frame draws
) -> Adapted:
    """Fine-tune a copy of G for this (source, driving video) pair with Eq. 15-18; see the module docstring."""
    if frames_per_step < 1 or steps < 0 or lr <= 0:
        raise ValueError(f"CMA needs frames_per_step >= 1, steps >= 0, lr > 0; got {frames_per_step}, {steps}, {lr}")
    if len(driving) == 0:
        raise ReenactError("CMA: the driving video has no frames")
    start = time.perf_counter()
    G, decoder, params = adaptable_copy(models, layers)
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(int(seed))
    history: list[dict] = []
    best, since_best, stopped, step = float("inf"), 0, "steps", 0
    k = min(frames_per_step, len(driving))
    for step in range(1, steps + 1):
        idx = np.sort(torch.randperm(len(driving), generator=gen)[:k].numpy())
        x_d = to_image(np.array(driving[idx])).to(models.device)  # a copy: the video may be memory-mapped
        loss, terms = cma_objective(decoder, models.encoder, source, x_d, lambda_l2, lambda_lpips, perceptual)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(terms["loss"])
        if not np.isfinite(value):
            raise ReenactError(f"CMA: the loss became non-finite at step {step}; lower reenact.cma.lr")
        history.append(_row(step, terms))
        if value < best:
            best, since_best = value, 0
        else:
            since_best += 1
        if stop_below > 0 and value < stop_below:
            stopped = "stop_below"
            break
        if patience > 0 and since_best >= patience:
            stopped = "patience"
            break
    _freeze(G)
    return Adapted(G, len(history), stopped, history, time.perf_counter() - start)


def project_w(models: Models, source: Source, *, steps: int, lr: float, lambda_l2: float = 1.0,
              lambda_lpips: float = 1.0, perceptual=None) -> tuple[Tensor, list[dict]]:
    """PTI's first step: one w [1, style_dim] with G(w) ~ the source (Adam from the mean w; G frozen)."""
    G = models.G
    decoder = models.decoder()
    w = G.latent_avg.detach().clone().reshape(1, -1).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr, betas=(0.9, 0.999))
    history = []
    for step in range(1, steps + 1):
        image = decoder(G.broadcast(w), None)  # G(A(w broadcast to W+))
        loss, parts = rec_loss(image, source.frame, lambda_l2, lambda_lpips, perceptual)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(_row(step, {"loss": loss.detach(), **parts}))
    return w.detach(), history


def pivotal_tuning(
    models: Models,
    source: Source,
    *,
    w_steps: int,  # W projection steps (PTI: 450)
    w_lr: float,  # (PTI: 5e-3)
    steps: int,  # pivotal tuning steps at most (PTI: 350)
    lr: float,  # (PTI: 3e-4)
    layers: Sequence[str] = (ALL,),
    lambda_l2: float = 1.0,  # (PTI: 1)
    lambda_lpips: float = 1.0,  # (PTI: 1)
    lpips_threshold: float = 0.06,  # stop when the step's LPIPS <= this (PTI: 0.06 with AlexNet LPIPS; 0: off)
    perceptual=None,
) -> Adapted:
    """PTI on the source only: W projection, then G tuned so that G(w_pivot) reconstructs the source."""
    start = time.perf_counter()
    pivot, projection = project_w(models, source, steps=w_steps, lr=w_lr, lambda_l2=lambda_l2,
                                  lambda_lpips=lambda_lpips, perceptual=perceptual)
    G, decoder, params = adaptable_copy(models, layers)
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    wplus = G.broadcast(pivot)
    history, stopped = [], "steps"
    for step in range(1, steps + 1):
        image = decoder(wplus, None)
        loss, parts = rec_loss(image, source.frame, lambda_l2, lambda_lpips, perceptual)
        if lpips_threshold > 0 and "lpips" in parts and float(parts["lpips"].detach()) <= lpips_threshold:
            stopped = "lpips_threshold"  # PTI checks before the step: G is already good enough
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not np.isfinite(float(loss.detach())):
            raise ReenactError(f"PTI: the loss became non-finite at step {step}; lower reenact.pti.lr")
        history.append(_row(step, {"loss": loss.detach(), **parts}))
    _freeze(G)
    extra = {"projection_steps": len(projection), "projection_loss": projection[-1]["loss"] if projection else None}
    return Adapted(G, len(history), stopped, history, time.perf_counter() - start, extra)


def _freeze(G: Generator) -> None:
    for p in G.parameters():
        p.requires_grad_(False)
    G.eval()
