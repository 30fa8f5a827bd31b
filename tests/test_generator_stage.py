"""The toy generator's training pieces: warm-up encoder, losses, MMD mapping fit, quality gate."""
import numpy as np
import pytest
import torch

from pipeline.config import GeneratorParams
from pipeline.generator import (WarmupEncoder, evaluate_reconstruction, fit_mapping, mean_colour_baseline,
                                mmd, reconstruction_loss, sample, sample_statistics, to_tensor, to_uint8,
                                train_autoencoder)
from pipeline.models.stylegan2 import Generator
from pipeline.store import SplitArrays


def _tiny_generator():
    torch.manual_seed(0)
    return Generator(resolution=16, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16)


def _blobs(n=24, size=16, seed=0) -> SplitArrays:
    """Coloured squares on a plain background, with a 'feature' mask on the square."""
    rng = np.random.default_rng(seed)
    frames = np.full((n, size, size, 3), 40, np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        x, y = rng.integers(2, size - 8, 2)
        frames[i, y : y + 6, x : x + 6] = rng.integers(120, 255, 3)
        masks[i, y : y + 6, x : x + 6] = 1
    theta = np.linspace(np.pi, 2 * np.pi, 17)
    lm = np.zeros((n, 68, 2), np.float32)
    lm[:, :17] = np.stack([8 - 6 * np.cos(theta), 8 - 6 * np.sin(theta)], 1)
    lm[:, 17:27] = np.stack([np.linspace(2, 14, 10), np.full(10, 3.0)], 1)
    return SplitArrays(frames, masks, lm, np.array(["c"] * n), np.array(["p"] * n))


def test_uint8_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = to_tensor(frames)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert (to_uint8(x) == frames).all()


def test_encoder_starts_on_w_and_has_the_right_shapes():
    E = WarmupEncoder(16, 16, n_latent=6, width=8)
    w, offsets = E(torch.randn(3, 3, 16, 16))
    assert w.shape == (3, 16) and offsets.shape == (3, 6, 16)
    assert (offsets == 0).all()  # zero-initialised: W+ starts as the broadcast w


def test_reconstruction_loss_hand_computed():
    x = torch.zeros(1, 3, 2, 2)
    y = torch.zeros(1, 3, 2, 2)
    y[0, :, 0, 0] = 0.5  # one pixel off by 0.5 in all channels: L1 mean = 0.5 * 3 / 12
    m = torch.zeros(1, 1, 2, 2)
    m[0, 0, 0, :] = 1  # mask on 2 pixels: masked L1 = 0.5 * 3 / (2 * 3)
    assert float(reconstruction_loss(y, x, m, feature_weight=2.0)) == pytest.approx(0.125 + 2 * 0.25)


def test_mmd_is_zero_for_the_same_sample_and_grows_with_a_shift():
    a = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    bw = torch.tensor([1.0])
    assert float(mmd(a, a, bw)) == pytest.approx(0.0, abs=1e-6)
    assert 0 < float(mmd(a, a + 0.5, bw)) < float(mmd(a, a + 2.0, bw))
    # one point each, hand-computed: k(a,a) = k(b,b) = 1, k(a,b) = exp(-d^2 / 2)
    p, q = torch.zeros(1, 2), torch.tensor([[3.0, 4.0]])
    assert float(mmd(p, q, bw)) == pytest.approx(2 - 2 * np.exp(-25 / 2))


def test_mapping_fit_moves_samples_towards_the_codes():
    G = _tiny_generator()
    codes = torch.randn(512, 16, generator=torch.Generator().manual_seed(1)) * 0.3 + 2.0
    history = fit_mapping(G, codes, iters=60, batch_size=128, lr=0.03, seed=0, progress=False, log_every=10)
    assert history[-1]["mmd"] < 0.2 * history[0]["mmd"]
    with torch.no_grad():
        w = G.map(torch.randn(512, 16))
    assert abs(float(w.mean()) - 2.0) < 0.2


def test_warmup_reduces_the_reconstruction_loss():
    G = _tiny_generator()
    E = WarmupEncoder(16, 16, G.n_latent, width=8)
    cfg = GeneratorParams(iters=40, batch_size=8, lr=0.005, feature_weight=1.0, offset_weight=1.0)
    history = train_autoencoder(G, E, _blobs(), cfg, seed=0, progress=False, log_every=5)
    assert history[-1]["rec"] < 0.7 * history[0]["rec"]


def test_quality_gate_reports_encoder_refined_and_baseline():
    G = _tiny_generator()
    E = WarmupEncoder(16, 16, G.n_latent, width=8)
    test = _blobs(seed=3)
    result = evaluate_reconstruction(G, E, test, n=6, refine_steps=10, refine_lr=0.05, feature_weight=1.0, seed=0)
    m = result.metrics
    assert m["frames"] == 6 and result.refined.shape == (6, 16, 16, 3)
    assert set(m["encoder"]) == {"psnr", "ssim", "psnr_face", "psnr_features"}
    # refinement optimises W+ on these very frames, so it cannot be worse than the encoder's start
    assert m["refined"]["psnr"] >= m["encoder"]["psnr"] - 0.1
    assert m["mean_colour_baseline"]["psnr"] > 0


def test_mean_colour_baseline_of_a_flat_image_is_perfect():
    flat = np.full((2, 8, 8, 3), 77, np.uint8)
    assert mean_colour_baseline(flat, np.ones((2, 8, 8)))["psnr"] == float("inf")


def test_sample_statistics_flag_flat_generators():
    G = _tiny_generator()
    stats = sample_statistics(G, n=8)
    assert stats["finite"] and stats["per_image_std_min"] > 0
    with torch.no_grad():
        for conv in [G.conv1, *G.convs]:
            conv.conv.weight.zero_()
        for rgb in [G.to_rgb1, *G.to_rgbs]:
            rgb.conv.weight.zero_()
    assert sample_statistics(G, n=8)["per_image_std_min"] < 1e-6
    assert sample(G, 2, truncation=0.7, seed=0).shape == (2, 16, 16, 3)


def test_stage_converts_a_rosinality_checkpoint(tmp_path, monkeypatch, real_params):
    """source: rosinality -> models/generator.pt in our format, rendering exactly what the checkpoint renders."""
    import hashlib
    import json

    from pipeline.config import validate_params
    from pipeline.models.stylegan2_formats import load_generator, to_rosinality_checkpoint
    from stages.generator import STAGE

    G = _tiny_generator()
    G.latent_avg.copy_(G.mean_latent(256)[0])
    ckpt = tmp_path / "g.pt"
    torch.save(to_rosinality_checkpoint(G), ckpt)
    real_params["assets"]["tiny_rosinality"] = {"path": str(ckpt), "source": "made by the test", "used_by": ["generator"],
                                                "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    real_params["generator"].update(source="rosinality", checkpoint="tiny_rosinality")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    metrics = STAGE.execute(params=validate_params(real_params), root=tmp_path, progress=False)
    assert metrics["source"] == "rosinality" and metrics["resolution"] == 16 and metrics["samples"]["finite"]
    assert json.loads((tmp_path / "metrics" / "generator.json").read_text())["checkpoint"] == "tiny_rosinality"
    assert (tmp_path / "reports" / "generator" / "samples.png").is_file()
    converted = load_generator(tmp_path / "models" / "generator.pt", "native")
    w = torch.randn(2, G.n_latent, 16)
    with torch.no_grad():
        assert torch.equal(converted.synthesis(w), G.synthesis(w))
    assert torch.equal(converted.latent_avg, G.latent_avg)
    # a checkpoint that is not what params say it is: refused, nothing written
    ckpt.write_bytes(b"not a checkpoint")
    (tmp_path / "models" / "generator.pt").unlink()
    from pipeline.assets import AssetError

    with pytest.raises(AssetError, match="different file"):
        STAGE.execute(params=validate_params(real_params), root=tmp_path, progress=False)
    assert not (tmp_path / "models" / "generator.pt").exists()
