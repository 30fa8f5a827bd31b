"""The hybrid-latent encoder (Eq. 1), its decoder in torch (Eq. 2-3), the latent discriminator, and the params
boundary for the motion layers."""
from __future__ import annotations

import pytest
import torch
import yaml

from pipeline.config import ParamsError, ss_layer_count, validate_params
from pipeline.models.discriminator import LatentDiscriminator
from pipeline.models.encoder import HybridDecoder, HybridEncoder, encoder_config, level_of, load_backbone, \
    motion_layers, wplus_row_resolution
from pipeline.models.stylegan2 import Generator, ss_layer_table
from tests.conftest import REPO


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    g = Generator(32, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16)
    g.latent_avg.copy_(g.mean_latent(256)[0])
    return g.eval()


def _encoder(G, hybrid=True, order="all", count=10):
    layers = motion_layers(G, order, count)
    cfg = encoder_config(G, layers, hybrid, 32, [1, 1, 1, 1], [16, 16, 16, 16])
    torch.manual_seed(1)
    enc = HybridEncoder(**cfg)
    enc.latent_avg.copy_(G.latent_avg)
    return enc, layers, cfg


def test_heads_read_psps_pyramid_levels_for_18_rows():
    levels = [level_of(wplus_row_resolution(r, 1024)) for r in range(18)]
    assert levels == ["coarse"] * 3 + ["medium"] * 4 + ["fine"] * 11  # pSp: styles 0-2 c3, 3-6 p2, 7-17 p1
    table = ss_layer_table(1024)
    first10 = [table[i] for i in range(10)]  # order "all": resolutions 4..32
    assert [level_of(t.resolution) for t in first10] == ["coarse"] * 5 + ["medium"] * 5


def test_encoder_outputs_w_id_in_wplus_and_s_f_in_stylespace(G):
    enc, layers, cfg = _encoder(G)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    w, motion = enc(x)
    assert w.shape == (2, G.n_latent, G.style_dim)
    assert [m.shape for m in motion] == [(2, G.ss_layers[i].channels) for i in layers]
    assert all(torch.equal(m, torch.zeros_like(m)) for m in motion)  # E_F starts at S_F = 0
    assert torch.allclose(enc.encode_identity(x), w)
    enc_w, layers_w, cfg_w = _encoder(G, hybrid=False)
    assert [m.shape[1] for m in enc_w(x)[1]] == [G.style_dim] * len(layers_w)  # W+ offsets in the ablation


def test_irse50_feature_pyramid_has_psps_taps_at_256px():
    with torch.device("meta"):  # shapes only
        table = ss_layer_table(1024)
        enc = HybridEncoder(256, 512, [level_of(wplus_row_resolution(r, 1024)) for r in range(18)],
                            [level_of(table[i].resolution) for i in range(10)], [512] * 10)
        feats = enc.pyramid(torch.empty(1, 3, 256, 256))
    assert feats["coarse"].shape == (1, 512, 16, 16)  # c3
    assert feats["medium"].shape == (1, 512, 32, 32)  # p2 = up(c3) + lat(c2)
    assert feats["fine"].shape == (1, 512, 64, 64)  # p1 = up(p2) + lat(c1)
    assert enc.taps == (6, 20, 23)  # pSp's body indices of c1, c2, c3
    # map2style inputs: pSp's spatial 16 (coarse), 32 (medium), 64 (fine)
    assert [h.spatial for h in enc.id_heads] == [16] * 3 + [32] * 4 + [64] * 11
    assert [h.spatial for h in enc.motion_heads] == [16] * 5 + [32] * 5


def test_arcface_weights_initialise_f():
    from pipeline.models.arcface import IRSE50

    torch.manual_seed(0)
    arc = IRSE50().state_dict()
    table = ss_layer_table(256)
    enc = HybridEncoder(256, 512, ["coarse"] * 14, [level_of(table[i].resolution) for i in range(10)], [512] * 10)
    n = load_backbone(enc, arc)
    own = enc.state_dict()
    assert n == sum(k.startswith(("input_layer.", "body.")) for k in arc)
    assert all(torch.equal(own[k], v) for k, v in arc.items() if k.startswith(("input_layer.", "body.")))
    small = HybridEncoder(32, 16, ["coarse"] * 8, ["coarse"], [16], units=[1, 1, 1, 1], widths=[16, 16, 16, 16])
    with pytest.raises(ValueError, match="not IR-SE50 sized"):
        load_backbone(small, arc)


def test_eq3_in_torch_matches_the_generator_and_gradients_reach_w_id_and_s_f(G):
    layers = motion_layers(G, "all", 10)
    dec = HybridDecoder(G, layers, hybrid=True)
    torch.manual_seed(3)
    w = (G.latent_avg + 0.3 * torch.randn(2, G.n_latent, G.style_dim)).requires_grad_(True)
    s_f = [(0.2 * torch.randn(2, G.ss_layers[i].channels)).requires_grad_(True) for i in layers]
    out = dec(w, s_f)
    styles = G.A(w.detach())
    for k, i in enumerate(layers):
        styles[i] = styles[i] + s_f[k].detach()
    with torch.no_grad():
        assert torch.allclose(out, G.synthesis_ss(styles), atol=1e-6)  # G(A(W_ID) + S_F)
        assert torch.allclose(dec(w), G.synthesis(w), atol=1e-6)  # Eq. 8's G(A(W_ID))
        zero = [torch.zeros_like(s) for s in s_f]
        assert torch.allclose(dec(w, zero), G.synthesis(w), atol=1e-6)
    out.square().mean().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in s_f)
    assert all(p.grad is None and not p.requires_grad for p in G.parameters())  # G frozen


def test_the_wplus_ablation_offsets_the_rows_of_the_same_layers(G):
    layers = motion_layers(G, "all", 10)
    dec = HybridDecoder(G, layers, hybrid=False)
    torch.manual_seed(4)
    w = G.latent_avg + 0.3 * torch.randn(1, G.n_latent, G.style_dim)
    offsets = [0.5 * torch.randn(1, G.style_dim) for _ in layers]
    styles = dec.styles(w, offsets)
    for k, i in enumerate(layers):
        row = G.ss_layers[i].wplus_row
        moved = w.clone()
        moved[:, row] += offsets[k]
        assert torch.allclose(styles[i], G.A(moved)[i], atol=1e-6)  # A_l(W_ID[row_l] + offset_l)
    others = [i for i in range(len(G.ss_layers)) if i not in layers]
    base = G.A(w)
    assert all(torch.equal(styles[i], base[i]) for i in others)
    with torch.no_grad():
        assert torch.allclose(dec(w, [torch.zeros_like(o) for o in offsets]), G.synthesis(w), atol=1e-6)


def test_output_is_resized_to_the_frame_size(G):
    dec = HybridDecoder(G, motion_layers(G, "all", 4), size=16)
    with torch.no_grad():
        out = dec(G.latent_avg.expand(2, G.n_latent, -1))
        full = G.synthesis(G.latent_avg.expand(2, G.n_latent, -1))
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, torch.nn.functional.avg_pool2d(full, 2), atol=1e-6)  # area averaging


def test_motion_layers_reject_more_layers_than_the_generator_has(G):
    assert len(motion_layers(G, "conv", 7)) == 7
    with pytest.raises(ValueError, match=r"model.sf_layers.*order 'conv', count 8.*has 7"):
        motion_layers(G, "conv", 8)


@pytest.mark.parametrize("resolution", [8, 16, 32, 64, 128, 256, 512, 1024])
def test_the_params_layer_count_is_the_generators(resolution):
    table = ss_layer_table(resolution)
    assert ss_layer_count(resolution, "all") == len(table)
    assert ss_layer_count(resolution, "conv") == sum(t.kind == "conv" for t in table)


def test_params_reject_order_conv_count_10_at_64px():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.setdefault("prepare", {})["size"] = 64
    raw.setdefault("generator", {})["source"] = "train"
    raw["model"]["sf_layers"] = {"order": "conv", "count": 10}
    with pytest.raises(ParamsError, match=r"model.sf_layers: order 'conv', count 10 .* has 9"):
        validate_params(raw)
    raw["model"]["sf_layers"] = {"order": "conv", "count": 9}
    assert validate_params(raw).model.sf_layers.count == 9
    raw["model"]["sf_layers"] = {"order": "all", "count": 15}
    with pytest.raises(ParamsError, match="has 14"):
        validate_params(raw)
    raw["prepare"]["size"] = 256  # the paper's crops: conv 10 exists (13 conv layers)
    raw["model"]["sf_layers"] = {"order": "conv", "count": 10}
    assert validate_params(raw).model.sf_layers.order == "conv"


def test_encoder_params_validate_arcface_sizes():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["encoder"] = {"units": [1, 1, 2, 1], "widths": [16, 32, 64, 128], "init": "arcface"}
    with pytest.raises(ParamsError, match="init 'arcface' loads the IR-SE50 weights"):
        validate_params(raw)
    raw["model"]["encoder"] = {"units": [1, 1, 2], "widths": [16, 32, 64, 128]}
    with pytest.raises(ParamsError, match="model.encoder.units"):
        validate_params(raw)


def test_latent_discriminator_is_e4es():
    d = LatentDiscriminator(16)
    kinds = [type(m).__name__ for m in d.net]
    assert kinds == ["Linear", "LeakyReLU"] * 3 + ["Linear"]
    assert all(m.negative_slope == 0.2 for m in d.net if isinstance(m, torch.nn.LeakyReLU))
    assert d(torch.randn(5, 7, 16)).shape == (5, 7, 1)
    with pytest.raises(ValueError, match="expected"):
        d(torch.randn(2, 8))
