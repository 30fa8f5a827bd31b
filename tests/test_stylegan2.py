"""StyleGAN2 generator and its checkpoint formats, against hand-built cases of the documented semantics.

Small resolutions and widths keep this fast; the 1024 layer table is checked without a forward pass.
"""
from __future__ import annotations

import argparse
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d
from torch.nn import functional as F

from pipeline.models.stylegan2 import (
    Blur,
    Generator,
    ModulatedConv2d,
    ToRGB,
    Upsample,
    channel_widths,
    make_kernel,
    ss_layer_table,
    upfirdn2d,
)
from pipeline.models.stylegan2_formats import (
    CheckpointError,
    generator_from_rosinality_state,
    load_generator,
    render,
    save_native,
    styles_to_dict,
    to_rosinality_checkpoint,
)

SMALL = dict(style_dim=16, n_mlp=2, channel_max=16)


def small(resolution: int = 16, seed: int = 0, **kw) -> Generator:
    """A tiny generator with every parameter random (noise weights and biases too, which init at zero)."""
    torch.manual_seed(seed)
    G = Generator(resolution, **{**SMALL, **kw})
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight") or name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p) + (1.0 if name.endswith("modulation.bias") else 0.0))
        G.latent_avg.copy_(G.mean_latent(256)[0])
    return G


def wplus_for(G: Generator, n: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return G.map(torch.randn(n * G.n_latent, G.style_dim, generator=g)).reshape(n, G.n_latent, G.style_dim)


# ---------------------------------------------------------------------------------------------------------
# Layer table and shapes


def test_layer_table_1024_config_f():
    table = ss_layer_table(1024, channel_multiplier=2)
    assert len(table) == 26
    assert sum(layer.kind == "conv" for layer in table) == 17
    assert sum(layer.kind == "torgb" for layer in table) == 9
    assert sum(layer.channels for layer in table) == 9088
    assert [layer.name for layer in table[:8]] == [
        "conv1", "to_rgb1", "convs.0", "convs.1", "to_rgbs.0", "convs.2", "convs.3", "to_rgbs.1",
    ]
    assert table[-1].name == "to_rgbs.7" and table[-1].resolution == 1024 and table[-1].wplus_row == 17
    # W+ rows (DESIGN.md): conv1 w0, to_rgb1 w1; block k: convs[2k] w[2k+1], convs[2k+1] w[2k+2], to_rgbs[k] w[2k+3]
    rows = {layer.name: layer.wplus_row for layer in table}
    assert rows["conv1"] == 0 and rows["to_rgb1"] == 1
    for k in range(8):
        assert (rows[f"convs.{2 * k}"], rows[f"convs.{2 * k + 1}"], rows[f"to_rgbs.{k}"]) == (2 * k + 1, 2 * k + 2, 2 * k + 3)
    assert channel_widths(1024, 2, 512) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}
    assert channel_widths(1024, 1, 512) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    assert channel_widths(256, 2, 128) == {4: 128, 8: 128, 16: 128, 32: 128, 64: 128, 128: 128, 256: 128}
    assert [layer.conv_index for layer in table if layer.kind == "conv"] == list(range(17))

    G = Generator(1024)  # the real config-f module (no forward pass): its affine widths are the table's
    assert G.n_latent == 18 and G.num_layers == 17
    assert [m.conv.modulation.weight.shape[0] for m in G._ss_modules()] == [layer.channels for layer in table]
    keys = G.state_dict().keys()
    assert "convs.15.conv.weight" in keys and "convs.16.conv.weight" not in keys
    assert "to_rgbs.7.upsample.kernel" in keys and "noises.noise_16" in keys and "style.8.weight" in keys
    assert "latent_avg" not in keys  # non-persistent: rosinality's g_ema loads strictly
    assert G.ss_indices("all", 10) == list(range(10))
    assert G.ss_indices("conv", 10) == [0, 2, 3, 5, 6, 8, 9, 11, 12, 14]
    assert all(table[i].channels == 512 for i in G.ss_indices("all", 10) + G.ss_indices("conv", 10))
    with pytest.raises(ValueError, match="order"):
        G.ss_indices("rgb", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="0..17"):
        G.ss_indices("conv", 18)


@pytest.mark.parametrize("resolution", [8, 64, 256])
def test_shapes_and_table(resolution):
    kw = dict(style_dim=8, n_mlp=1, channel_max=8) if resolution == 256 else {}
    G = small(resolution, **kw)
    n_blocks = int(math.log2(resolution)) - 2
    assert G.n_latent == 2 * int(math.log2(resolution)) - 2
    assert len(G.ss_layers) == 2 + 3 * n_blocks
    w = wplus_for(G, n=2)
    styles = G.A(w)
    assert [tuple(s.shape) for s in styles] == [(2, layer.channels) for layer in G.ss_layers]
    with torch.no_grad():
        img = G.synthesis(w)
    assert img.shape == (2, 3, resolution, resolution) and img.dtype == torch.float32
    assert torch.isfinite(img).all()
    with pytest.raises(ValueError, match=rf"wplus: expected shape \[N, {G.n_latent}, {G.style_dim}\], got \[2, {G.n_latent + 1}"):
        G.A(torch.zeros(2, G.n_latent + 1, G.style_dim))
    with pytest.raises(ValueError, match="styles"):
        G.synthesis_ss(styles[:-1])
    with pytest.raises(ValueError, match=r"styles\[1\] \(to_rgb1\)"):
        G.synthesis_ss([styles[0], styles[1][:, :-1], *styles[2:]])


def test_bad_constructor_arguments():
    for bad in (12, 4, 2048):
        with pytest.raises(ValueError, match="power of two"):
            Generator(bad, **SMALL)
    with pytest.raises(ValueError, match="channel_multiplier"):
        Generator(16, channel_multiplier=0, **SMALL)


# ---------------------------------------------------------------------------------------------------------
# Entry points agree


def test_z_path_equals_wplus_path_and_mapping_by_hand():
    G = small(16)
    z = torch.randn(3, G.style_dim)
    with torch.no_grad():
        w = G.map(z)
        # mapping network by hand: PixelNorm, then lrelu(x W^T * lr/sqrt(in) + b * lr, 0.2) * sqrt(2)
        x = z / torch.sqrt((z**2).mean(1, keepdim=True) + 1e-8)
        for layer in list(G.style)[1:]:
            x = F.leaky_relu(x @ (layer.weight * 0.01 / math.sqrt(G.style_dim)).t() + layer.bias * 0.01, 0.2) * math.sqrt(2)
        assert torch.allclose(w, x, atol=1e-5)
        assert torch.equal(G(z), G.synthesis(G.broadcast(w)))
        assert torch.equal(G(z), G.synthesis(w))  # a [N, style_dim] w is broadcast
        assert torch.equal(G(z, truncation=0.6), G.synthesis(G.broadcast(G.map(z, truncation=0.6))))
        assert not torch.allclose(G(z, truncation=0.6), G(z))


def test_ss_path_equals_wplus_path():
    G = small(32)
    w = wplus_for(G, n=2)
    with torch.no_grad():
        styles = G.A(w)
        assert torch.equal(G.synthesis_ss(styles), G.synthesis(w))
        # A reads the right rows: changing W+ row r changes exactly the SS layers that read row r
        w2 = w.clone()
        w2[:, 5] += 1.0
        changed = [i for i, (a, b) in enumerate(zip(styles, G.A(w2))) if not torch.equal(a, b)]
        assert changed == [layer.index for layer in G.ss_layers if layer.wplus_row == 5]
        # an SS offset on one layer changes the image (Eq. 3)
        styles[3] = styles[3] + 0.5
        assert not torch.allclose(G.synthesis_ss(styles), G.synthesis(w))


def test_truncation_zero_gives_the_truncation_latent_image():
    G = small(16)
    z = torch.randn(2, G.style_dim)
    centre = torch.randn(1, G.style_dim)
    with torch.no_grad():
        img = G(z, truncation=0.0, truncation_latent=centre)
        assert torch.equal(img, G.synthesis(centre.expand(2, -1)))
        # default centre: latent_avg
        assert torch.equal(G(z, truncation=0.0), G.synthesis(G.latent_avg.expand(2, -1)))


def test_noise_determinism_and_randomize():
    G = small(16)
    w = wplus_for(G)
    with torch.no_grad():
        a, b = G.synthesis(w), G.synthesis(w)
        assert torch.equal(a, b)
        assert torch.equal(a, G.synthesis(w, noise=G.noise_buffers()))
        r1, r2 = G.synthesis(w, randomize_noise=True), G.synthesis(w, randomize_noise=True)
        assert not torch.allclose(r1, r2) and not torch.allclose(r1, a)
        fresh = G.make_noise(generator=torch.Generator().manual_seed(3))
        assert [tuple(t.shape) for t in fresh] == [tuple(t.shape) for t in G.noise_buffers()]
        assert torch.equal(G.synthesis(w, noise=fresh), G.synthesis(w, noise=fresh))
        assert not torch.allclose(G.synthesis(w, noise=fresh), a)
        with pytest.raises(ValueError, match=r"noise\[2\]: expected shape \[N, 1, 8, 8\], got \[1, 1, 4, 4\]"):
            G.synthesis(w, noise=[fresh[0], fresh[1], fresh[0], *fresh[3:]])
        with pytest.raises(ValueError, match="expected 5 maps"):
            G.synthesis(w, noise=fresh[:-1])


def test_gradients_flow_to_wplus_ss_codes_and_weights():
    G = small(16)
    w = wplus_for(G).requires_grad_(True)
    G.synthesis(w).square().mean().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    styles = [s.detach().requires_grad_(True) for s in G.A(w)]
    G.zero_grad()
    G.synthesis_ss(styles).square().mean().backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in styles)
    G.zero_grad()
    G(torch.randn(2, G.style_dim)).square().mean().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------------------
# Building blocks by hand


def _upfirdn_reference(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int, int, int]) -> np.ndarray:
    """Zero insertion, padding (negative crops), true 2-D convolution (scipy), decimation."""
    px0, px1, py0, py1 = pad
    h, w = x.shape
    u = np.zeros((h * up, w * up))
    u[::up, ::up] = x
    u = np.pad(u, ((max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    u = u[max(-py0, 0) : u.shape[0] - max(-py1, 0), max(-px0, 0) : u.shape[1] - max(-px1, 0)]
    return convolve2d(u, k, mode="valid")[::down, ::down]


def test_blur_of_an_impulse_is_the_normalised_kernel():
    x = torch.zeros(1, 2, 8, 8)
    x[:, :, 4, 4] = 1.0
    out = Blur([1, 3, 3, 1], pad=(2, 1))(x)
    assert out.shape == (1, 2, 8, 8)
    expected = torch.tensor([1.0, 3, 3, 1])
    expected = torch.outer(expected, expected) / 64
    assert torch.allclose(out[0, 1, 3:7, 3:7], expected, atol=1e-7)
    assert torch.allclose(out.sum(), torch.tensor(2.0))
    # an asymmetric kernel shows the convolution is true (impulse response = kernel, not its mirror)
    out = upfirdn2d(x, make_kernel([1, 2, 3, 4]), pad=(2, 1))
    k = torch.tensor([1.0, 2, 3, 4])
    assert torch.allclose(out[0, 0, 3:7, 3:7], torch.outer(k, k) / 100, atol=1e-7)


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 1, 1, 1)), (2, 1, (2, 1, 2, 1)), (2, 1, (1, 1, 1, 1)), (1, 2, (1, 1, 2, 0)), (2, 2, (-1, 2, 0, -1))])
def test_upfirdn2d_against_scipy(up, down, pad):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 7, 6))
    k = rng.normal(size=(4, 3))
    out = upfirdn2d(torch.tensor(x, dtype=torch.float64), torch.tensor(k), up=up, down=down, pad=pad).numpy()
    ref = np.stack([np.stack([_upfirdn_reference(c, k, up, down, pad) for c in img]) for img in x])
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-12)


def test_upsample_keeps_constants_and_matches_upfirdn():
    up = Upsample([1, 3, 3, 1])
    x = torch.ones(1, 3, 8, 8)
    out = up(x)
    assert out.shape == (1, 3, 16, 16)
    assert torch.allclose(out[:, :, 2:-2, 2:-2], torch.ones(1, 3, 12, 12))  # gain 4 undoes the zero insertion
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    k = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64 * 4
    ref = _upfirdn_reference(x[0, 0].numpy(), k, up=2, down=1, pad=(2, 1, 2, 1))
    np.testing.assert_allclose(up.double()(x)[0, 0].numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("upsample,demodulate", [(False, True), (True, True), (False, False)])
def test_modulated_conv_equals_explicit_per_sample_conv(upsample, demodulate):
    torch.manual_seed(0)
    conv = ModulatedConv2d(5, 4, 3, style_dim=6, upsample=upsample, demodulate=demodulate)
    x = torch.randn(3, 5, 6, 6)
    s = torch.randn(3, 5) + 1
    outs = []
    for i in range(3):  # explicit: weight * s / sqrt(in*k*k), demodulated, one conv per sample
        wi = conv.weight[0] * s[i].view(1, 5, 1, 1) / math.sqrt(5 * 9)
        if demodulate:
            wi = wi / torch.sqrt(wi.square().sum([1, 2, 3], keepdim=True) + 1e-8)
        if upsample:  # stride-2 transposed conv (padding 0), then the blur (kernel*4, pad (1, 1))
            o = F.conv_transpose2d(x[i : i + 1], wi.transpose(0, 1), stride=2)
            o = upfirdn2d(o, make_kernel([1, 3, 3, 1]) * 4, pad=(1, 1))
        else:
            o = F.conv2d(x[i : i + 1], wi, padding=1)
        outs.append(o)
    expected = torch.cat(outs)
    with torch.no_grad():
        for fused in (True, False):
            out = conv(x, s, fused=fused)
            assert out.shape == ((3, 4, 12, 12) if upsample else (3, 4, 6, 6))
            assert torch.allclose(out, expected, atol=1e-5), (fused, (out - expected).abs().max())
        if demodulate:  # unit L2 norm per output channel
            norms = conv.modulated_weight(s).square().sum([2, 3, 4])
            assert torch.allclose(norms, torch.ones(3, 4), atol=1e-5)


def test_to_rgb_is_modulated_1x1_without_demod_plus_bias_plus_upsampled_skip():
    torch.manual_seed(0)
    rgb = ToRGB(6, style_dim=4)
    with torch.no_grad():
        rgb.bias.normal_()
    x, s, skip = torch.randn(2, 6, 8, 8), torch.randn(2, 6), torch.randn(2, 3, 4, 4)
    w = rgb.conv.weight[0, :, :, 0, 0] / math.sqrt(6)  # [3, 6]
    expected = torch.einsum("oi,ni,nihw->nohw", w, s, x) + rgb.bias + Upsample([1, 3, 3, 1])(skip)
    with torch.no_grad():
        assert torch.allclose(rgb(x, s, skip), expected, atol=1e-5)


def test_conv_clamp_bounds_every_layer_output():
    G = small(16, conv_clamp=0.05)
    w = wplus_for(G)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.abs().max().item())) for m in G.convs]
    hooks.append(G.to_rgb1.register_forward_hook(lambda m, i, o: seen.append(o.abs().max().item())))
    with torch.no_grad():
        clamped = G.synthesis(w)
    for h in hooks:
        h.remove()
    assert len(seen) == len(G.convs) + 1 and max(seen) <= 0.05 + 1e-7
    free = Generator(16, **SMALL)
    free.load_state_dict(G.state_dict())
    with torch.no_grad():
        assert not torch.allclose(free.synthesis(w), clamped)


def test_channels_last_shared_modconv_and_bf16_autocast():
    G = small(32)
    w = wplus_for(G, n=2)
    with torch.no_grad():
        ref = G.synthesis(w)
        G.fused_modconv = False
        assert torch.allclose(G.synthesis(w), ref, atol=1e-4)
        G.fused_modconv = None
        G.channels_last = True
        out = G.synthesis(w)
        assert torch.allclose(out, ref, atol=1e-4)
        G.channels_last = False
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = G.synthesis(w)
        assert torch.isfinite(low).all()
        err = (low.float() - ref).abs().max() / ref.abs().max()
        assert 0 < err < 0.05, err


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def _same_weights(a: Generator, b: Generator) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa) and torch.equal(a.latent_avg, b.latent_avg)


def test_rosinality_round_trip_is_bit_exact(tmp_path):
    G = small(32, channel_multiplier=1, channel_max=512, style_dim=16)  # widths 512 up to 32 px
    ckpt = to_rosinality_checkpoint(G)
    assert set(ckpt) == {"g_ema", "latent_avg"}
    torch.save(ckpt, tmp_path / "g.pt")
    H = load_generator(tmp_path / "g.pt", "rosinality")
    assert _same_weights(G, H)
    assert H.checkpoint_info["latent_avg_source"] == "stored"
    w = wplus_for(G)
    with torch.no_grad():
        assert torch.equal(G.synthesis(w), H.synthesis(w))
    # a training checkpoint (with argparse "args") and a bare g_ema state dict load too
    torch.save({"g_ema": ckpt["g_ema"], "args": argparse.Namespace(size=32), "latent_avg": ckpt["latent_avg"]}, tmp_path / "t.pt")
    assert _same_weights(G, load_generator(tmp_path / "t.pt", "rosinality"))
    torch.save(ckpt["g_ema"], tmp_path / "bare.pt")
    bare = load_generator(tmp_path / "bare.pt", "rosinality")
    assert bare.checkpoint_info["latent_avg_source"].startswith("estimated")
    assert torch.equal(bare.latent_avg, load_generator(tmp_path / "bare.pt", "rosinality").latent_avg)  # seeded


def test_rosinality_state_infers_the_architecture():
    G = small(128, channel_multiplier=1, channel_max=512, style_dim=8, n_mlp=3)  # widths 512 .. 64: 256, 128: 128
    H = generator_from_rosinality_state(G.state_dict(), G.latent_avg)
    assert H.config == G.config
    assert _same_weights(G, H)
    T = small(16, channel_max=16)  # toy: all widths capped
    assert generator_from_rosinality_state(T.state_dict()).config["channel_max"] == 16
    with pytest.raises(CheckpointError, match="fit no"):
        generator_from_rosinality_state(G.state_dict(), channel_multiplier=2)
    with pytest.raises(CheckpointError, match="found n_mlp=3, expected 8"):
        generator_from_rosinality_state(G.state_dict(), n_mlp=8)


def test_channel_base_width_rule(tmp_path):
    # NVIDIA's rule min(channel_max, channel_base // res); config-f (32768, 512) equals rosinality's table
    assert channel_widths(64, channel_max=256, channel_base=2048) == {4: 256, 8: 256, 16: 128, 32: 64, 64: 32}
    assert channel_widths(1024, 2, 512, channel_base=32768) == channel_widths(1024, 2, 512)
    G = small(32, channel_base=256, channel_max=32)
    assert G.channels == {4: 32, 8: 32, 16: 16, 32: 8} and G.config["channel_base"] == 256
    assert [layer.channels for layer in G.ss_layers] == [32, 32, 32, 32, 32, 32, 16, 16, 16, 8, 8]
    assert G.synthesis(wplus_for(G)).shape == (2, 3, 32, 32)
    assert "channel_base" not in small(16).config  # files written without the option stay as they were
    save_native(G, tmp_path / "g.ckpt")
    H = load_generator(tmp_path / "g.ckpt", "native")
    assert H.config == G.config and _same_weights(G, H)
    with pytest.raises(ValueError, match="channel_base"):
        Generator(16, **SMALL, channel_base=2)


def test_native_round_trip(tmp_path):
    G = small(16, conv_clamp=256.0)
    G.fused_modconv = False  # runtime switches are not saved
    save_native(G, tmp_path / "g.ckpt", extra={"step": 7, "note": "toy", "ema": [0.5, torch.ones(2)]})
    H = load_generator(tmp_path / "g.ckpt", "native")
    assert H.config == G.config and H.config["conv_clamp"] == 256.0
    assert _same_weights(G, H)
    assert H.checkpoint_info["extra"]["step"] == 7 and torch.equal(H.checkpoint_info["extra"]["ema"][1], torch.ones(2))
    assert H.fused_modconv is None
    obj = torch.load(tmp_path / "g.ckpt", weights_only=True)
    assert obj["format"] == "reenact-checkpoint" and obj["version"] == 1 and obj["kind"] == "stylegan2"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary left behind
    with pytest.raises(CheckpointError, match="conv_clamp"):
        to_rosinality_checkpoint(G)
    with pytest.raises(TypeError, match="not plain data"):
        save_native(G, tmp_path / "bad.ckpt", extra={"path": Path("x")})
    with pytest.raises(CheckpointError, match="load it with format 'native'"):
        load_generator(tmp_path / "g.ckpt", "rosinality")


def test_nvidia_format_goes_through_the_reader(tmp_path, monkeypatch):
    G = small(16, conv_clamp=256.0)
    ckpt = to_rosinality_checkpoint(G, allow_lossy=True)
    (tmp_path / "g.pkl").write_bytes(b"stand-in")
    calls = []

    def read_nvidia_pickle(path):
        calls.append(Path(path))
        if Path(path).name == "bad.pkl":
            raise ValueError(f"{path}: malformed")
        return dict(G.config), ckpt["g_ema"], ckpt["latent_avg"]

    fake = types.ModuleType("pipeline.models.stylegan2_nvidia")
    fake.read_nvidia_pickle = read_nvidia_pickle  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pipeline.models.stylegan2_nvidia", fake)
    H = load_generator(tmp_path / "g.pkl", "nvidia")
    assert calls == [tmp_path / "g.pkl"] and H.config == G.config and _same_weights(G, H)
    with pytest.raises(CheckpointError, match=r"found a 16 px generator, expected 32 px"):
        load_generator(tmp_path / "g.pkl", "nvidia", resolution=32)
    (tmp_path / "bad.pkl").write_bytes(b"stand-in")
    with pytest.raises(CheckpointError, match=r"bad\.pkl: malformed"):
        load_generator(tmp_path / "bad.pkl", "nvidia")


class _CodeExecutingPayload:
    """Unpickling this runs _touch(marker): the kind of pickle a weights_only load must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


def _touch(path: str) -> None:
    Path(path).write_text("unpickling ran code")


def test_loader_errors(tmp_path):
    G = small(32)
    torch.save(to_rosinality_checkpoint(G), tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match=r"no such file") as e:
        load_generator(tmp_path / "missing.pt", "rosinality")
    assert "missing.pt" in str(e.value)
    with pytest.raises(CheckpointError, match=r"unknown checkpoint format 'stylegan3'"):
        load_generator(tmp_path / "g.pt", "stylegan3")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"found 6 convs \(32 px\), expected 16 \(1024 px\)"):
        load_generator(tmp_path / "g.pt", "rosinality", resolution=1024)
    # truncated file
    data = (tmp_path / "g.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: cannot be read as a torch checkpoint \(truncated or corrupt\?\)"):
        load_generator(tmp_path / "cut.pt", "rosinality")
    # missing and unexpected keys, shape mismatch
    state = G.state_dict()
    del state["convs.3.noise.weight"], state["to_rgbs.1.bias"]
    state["convs.0.activate.bias"] = torch.zeros(3)
    state["mystery.weight"] = torch.zeros(1)
    torch.save({"g_ema": state, "latent_avg": G.latent_avg}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as e:
        load_generator(tmp_path / "broken.pt", "rosinality")
    msg = str(e.value)
    assert "broken.pt" in msg and "2 missing keys (convs.3.noise.weight, to_rgbs.1.bias)" in msg
    assert "1 unexpected keys (mystery.weight)" in msg and "convs.0.activate.bias: found [3], expected [16]" in msg
    # a pickle that needs code execution is refused, and its payload never runs
    marker = tmp_path / "ran.txt"
    torch.save({"g_ema": _CodeExecutingPayload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a plain state-dict checkpoint.*--format nvidia"):
        load_generator(tmp_path / "evil.pt", "rosinality")
    with pytest.raises(CheckpointError, match="not a plain state-dict"):
        load_generator(tmp_path / "evil.pt", "native")
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.exists()


# ---------------------------------------------------------------------------------------------------------
# render


def test_render_matches_synthesis_and_eq3():
    G = small(16)
    w = wplus_for(G, n=5)
    with torch.no_grad():
        ref = G.synthesis(w).numpy()
        styles = G.A(w)
    out = render(G, wplus=w.numpy(), batch_size=2)
    assert out.dtype == np.float32 and out.shape == (5, 3, 16, 16)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(render(G, sspace=styles_to_dict(styles), batch_size=3), ref, atol=1e-5)
    delta = np.full((5, G.ss_layers[3].channels), 0.5, np.float32)
    eq3 = render(G, wplus=w.numpy(), sspace={"s_3": delta})
    styles[3] = styles[3] + torch.from_numpy(delta)
    with torch.no_grad():
        np.testing.assert_allclose(eq3, G.synthesis_ss(styles).numpy(), atol=1e-5)
    noise = {f"noise_{j}": t.numpy() for j, t in enumerate(G.make_noise(torch.Generator().manual_seed(1)))}
    with torch.no_grad():
        expected = G.synthesis(w, noise=[torch.from_numpy(noise[f"noise_{j}"]) for j in range(G.num_layers)]).numpy()
    np.testing.assert_allclose(render(G, wplus=w.numpy(), noise=noise), expected, atol=1e-5)


def test_render_validates_shapes():
    G = small(16)
    w = wplus_for(G, n=2).numpy()
    ss = styles_to_dict(G.A(torch.from_numpy(w)))
    with pytest.raises(ValueError, match=r"wplus: expected shape \[N, 6, 16\], got \[2, 5, 16\]"):
        render(G, wplus=w[:, :5])
    with pytest.raises(ValueError, match="give wplus, sspace or both"):
        render(G)
    partial = {k: v for k, v in ss.items() if k != "s_4"}
    with pytest.raises(ValueError, match="missing s_4"):
        render(G, sspace=partial)
    with pytest.raises(ValueError, match=r"sspace\['s_2'\] \(convs.0\): expected shape \[2, 16\], got \[2, 15\]"):
        render(G, wplus=w, sspace={"s_2": ss["s_2"][:, :15]})
    with pytest.raises(ValueError, match=r"unknown keys s_99"):
        render(G, wplus=w, sspace={"s_99": ss["s_2"]})
    noise = {f"noise_{j}": t.numpy() for j, t in enumerate(G.make_noise())}
    bad = {**noise, "noise_1": np.zeros((1, 1, 4, 4), np.float32)}
    with pytest.raises(ValueError, match=r"noise\['noise_1'\]: expected shape \[1, 1, 8, 8\].*got \[1, 1, 4, 4\]"):
        render(G, wplus=w, noise=bad)
    with pytest.raises(ValueError, match="missing noise_4"):
        render(G, wplus=w, noise={k: v for k, v in noise.items() if k != "noise_4"})
