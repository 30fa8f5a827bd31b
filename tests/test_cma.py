"""Cyclic Manifold Adjustment (Eq. 15-18) and PTI: the objective against a hand-written reading of the equations,
what moves and what never does (the shared generator, the encoder), early stopping, and PTI's two phases."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.cma import cma_objective, cyclic_manifold_adjustment, pivotal_tuning, synthesis_modules, \
    tunable_parameters
from pipeline.reenact import Reenactor, to_uint8
from pipeline.store import to_image
from tests.test_reenact import random_frames, tiny_models


def pooled_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A stand-in perceptual distance [N] (differentiable): mean absolute difference of 4x4-pooled images."""
    return (F.avg_pool2d(x, 4) - F.avg_pool2d(y, 4)).abs().mean(dim=(1, 2, 3))


def _render(G, w, motion, layers):
    """G(A(w) + S_F) by hand: every layer's affine map on its W+ row, S_F added on the motion layers."""
    mods = [G.conv1, G.to_rgb1] + [m for k in range(len(G.to_rgbs))
                                   for m in (G.convs[2 * k], G.convs[2 * k + 1], G.to_rgbs[k])]
    styles = [mod.conv.modulation(w[:, layer.wplus_row]) for layer, mod in zip(G.ss_layers, mods)]
    for i, s in zip(layers, motion):
        styles[i] = styles[i] + s
    return G.synthesis_ss(styles)


def test_objective_is_eq15_to_18():
    models = tiny_models()
    G, E, layers = models.G, models.encoder, models.layers
    engine = Reenactor(models)
    source = engine.source(random_frames(1, 1)[0])
    x_d = to_image(random_frames(3, 2))
    loss, terms = cma_objective(engine.decoder, E, source, x_d, 0.7, 0.3, pooled_distance)
    # by hand
    w_s, s_s = E(source.frame)
    w_d, s_d = E(x_d)
    reenacted = _render(G, w_s.repeat(3, 1, 1), s_d, layers)  # Eq. 3
    w_cyc, s_cyc = E(reenacted)  # Eq. 16
    cyc_s = _render(G, w_cyc, [s.repeat(3, 1) for s in s_s], layers)  # Eq. 17
    cyc_d = _render(G, w_d, s_cyc, layers)  # Eq. 18
    target_s = source.frame.repeat(3, 1, 1, 1)

    def L(x, y):
        return 0.7 * ((x - y) ** 2).mean() + 0.3 * pooled_distance(x, y).mean()

    expected = L(cyc_s, target_s) + L(cyc_d, x_d)  # Eq. 15
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(terms["source"], L(cyc_s, target_s), rtol=1e-5)
    assert torch.allclose(terms["driving_l2"], ((cyc_d - x_d) ** 2).mean(), rtol=1e-5)
    assert float(terms["source_lpips"]) > 0 and float(terms["driving_lpips"]) > 0


def test_cycle_reaches_g_through_the_frozen_encoder():
    """Eq. 16 re-encodes the re-enacted frame: G gets a gradient through E (E itself gets none)."""
    models = tiny_models()
    G = models.G
    import copy

    G2 = copy.deepcopy(G)
    decoder = models.decoder(G2)
    for p in G2.parameters():
        p.requires_grad_(True)
    engine = Reenactor(models)
    source = engine.source(random_frames(1, 1)[0])
    loss, _ = cma_objective(decoder, models.encoder, source, to_image(random_frames(2, 2)), 1.0, 0.0)
    loss.backward()
    assert G2.convs[0].conv.weight.grad is not None and G2.convs[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in models.encoder.parameters())


def _state_bytes(module: torch.nn.Module) -> str:
    buf = io.BytesIO()
    torch.save({k: v.clone() for k, v in module.state_dict().items()}, buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def test_adaptation_moves_only_the_chosen_layers_of_a_copy():
    models = tiny_models()
    shared, encoder = _state_bytes(models.G), _state_bytes(models.encoder)
    source = Reenactor(models).source(random_frames(1, 1)[0])
    result = cyclic_manifold_adjustment(models, source, random_frames(8, 2), steps=3, lr=1e-2, frames_per_step=2,
                                        layers=["convs.0", "to_rgbs.1"], lambda_l2=1.0, lambda_lpips=0.0, seed=0)
    assert _state_bytes(models.G) == shared and _state_bytes(models.encoder) == encoder  # never modified
    assert result.G is not models.G and result.steps == 3 and result.stopped == "steps"
    before, after = models.G.state_dict(), result.G.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("convs.0.", "to_rgbs.1.")) for k in moved)
    assert not any(p.requires_grad for p in result.G.parameters())
    pti = pivotal_tuning(models, source, w_steps=2, w_lr=0.01, steps=2, lr=1e-2, lambda_lpips=0.0,
                         lpips_threshold=0.0)
    assert _state_bytes(models.G) == shared and pti.G is not models.G


def test_unknown_layers_are_refused_naming_the_valid_ones():
    models = tiny_models()
    with pytest.raises(ValueError, match=r"\['convs.99'\] not found; name some of: all, input, conv1, to_rgb1, convs.0"):
        tunable_parameters(models.G, ["convs.99"])
    names = {n for n, _ in tunable_parameters(models.G, ["all"])}
    assert not any(n.startswith("style.") for n in names)  # the mapping network renders nothing here
    assert synthesis_modules(models.G)[-1] == f"to_rgbs.{len(models.G.to_rgbs) - 1}"


def test_cma_lowers_its_objective_on_a_fixed_batch():
    models = tiny_models()
    source = Reenactor(models).source(random_frames(1, 1)[0])
    driving = random_frames(4, 2)
    result = cyclic_manifold_adjustment(models, source, driving, steps=20, lr=3e-3, frames_per_step=4,
                                        lambda_l2=1.0, lambda_lpips=1.0, perceptual=pooled_distance)
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 20 and [r["step"] for r in result.history] == list(range(1, 21))
    assert losses[-1] < 0.8 * losses[0]
    assert set(result.final) >= {"loss", "source", "driving", "source_l2", "driving_lpips"}


def test_early_stopping():
    models = tiny_models()
    source = Reenactor(models).source(random_frames(1, 1)[0])
    driving = random_frames(4, 2)
    below = cyclic_manifold_adjustment(models, source, driving, steps=10, lr=1e-3, frames_per_step=2,
                                       lambda_lpips=0.0, stop_below=1e6)
    assert below.steps == 1 and below.stopped == "stop_below"
    # a learning rate too small to change the loss: no new best, stop after `patience` more steps
    flat = cyclic_manifold_adjustment(models, source, driving, steps=10, lr=1e-12, frames_per_step=4,
                                      lambda_lpips=0.0, patience=2)
    assert flat.steps == 3 and flat.stopped == "patience"


def test_pti_projects_then_tunes_g_on_the_source_only():
    models = tiny_models()
    source = Reenactor(models).source(random_frames(1, 1)[0])
    result = pivotal_tuning(models, source, w_steps=30, w_lr=0.05, steps=15, lr=3e-3, lambda_lpips=1.0,
                            perceptual=pooled_distance, lpips_threshold=0.0)
    assert result.extra["projection_steps"] == 30 and result.steps == 15 and result.stopped == "steps"
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0]  # G(w_pivot) moves towards the source
    # the projection found a better w than PTI's starting point, the mean w (the first tuning step renders the pivot)
    with torch.no_grad():
        mean_w = models.G.latent_avg.reshape(1, -1)
        start = _render(models.G, models.G.broadcast(mean_w), [], [])
        start_loss = float(((start - source.frame) ** 2).mean() + pooled_distance(start, source.frame).mean())
    assert losses[0] < start_loss
    # PTI's early stop: LPIPS already below the threshold -> no step at all
    done = pivotal_tuning(models, source, w_steps=1, w_lr=0.01, steps=5, lr=1e-3, perceptual=pooled_distance,
                          lpips_threshold=1e6)
    assert done.steps == 0 and done.stopped == "lpips_threshold"


def test_cma_improves_its_own_re_enactment_of_the_source():
    """Eq. 17 asks the adapted G to rebuild the source from the cyclic identity: after CMA, re-enacting the source
    with its own motion reconstructs it better than the shared G does (same frames, same encoder)."""
    models = tiny_models()
    frames = random_frames(6, 3)
    engine = Reenactor(models)
    source = engine.source(frames[0])
    result = cyclic_manifold_adjustment(models, source, frames, steps=25, lr=3e-3, frames_per_step=3,
                                        lambda_lpips=0.0)

    def error(G) -> float:
        e = Reenactor(models, G)
        out = to_uint8(e.render(source.w_id, source.motion))[0].astype(float)
        return float(np.abs(out - frames[0]).mean())

    assert error(result.G) < error(models.G)
