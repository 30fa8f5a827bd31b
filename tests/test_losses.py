"""Each loss of Eq. 5-14 against a hand-computed value or an independent definition."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pipeline import losses as L


def _gv_reference(x: np.ndarray, y: np.ndarray, patch: int) -> float:
    """Gradient variance loss written out with loops (Abrahamyan et al. 2022): luma, 3x3 Sobel with zero padding,
    per-patch unbiased variance, MSE of the variance maps, x plus y."""
    def grey(a):
        return 0.299 * a[:, 0] + 0.587 * a[:, 1] + 0.114 * a[:, 2]

    def sobel(g):
        n, h, w = g.shape
        p = np.zeros((n, h + 2, w + 2))
        p[:, 1:-1, 1:-1] = g
        gx, gy = np.zeros_like(g), np.zeros_like(g)
        for i in range(h):
            for j in range(w):
                win = p[:, i:i + 3, j:j + 3]  # rows i-1..i+1, cols j-1..j+1 of the image
                gx[:, i, j] = (win[:, :, 2] - win[:, :, 0]) @ np.array([1.0, 2.0, 1.0])
                gy[:, i, j] = (win[:, 2, :] - win[:, 0, :]) @ np.array([1.0, 2.0, 1.0])
        return gx, gy

    def varmap(g):
        n, h, w = g.shape
        out = np.zeros((n, h // patch, w // patch))
        for a in range(h // patch):
            for b in range(w // patch):
                out[:, a, b] = g[:, a * patch:(a + 1) * patch, b * patch:(b + 1) * patch].reshape(n, -1).var(axis=1, ddof=1)
        return out

    (xx, xy), (yx, yy) = sobel(grey(x)), sobel(grey(y))
    return float(np.mean((varmap(xx) - varmap(yx)) ** 2) + np.mean((varmap(xy) - varmap(yy)) ** 2))


def test_l2_is_the_mean_squared_error():
    x = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])
    y = torch.zeros_like(x)
    assert L.l2(x, y).item() == pytest.approx((1 + 1 + 0.25 + 0) / 4)


@pytest.mark.parametrize("patch", [4, 8])
def test_gradient_variance_matches_its_definition(patch):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (2, 3, 16, 16)), rng.uniform(-1, 1, (2, 3, 16, 16))
    ours = L.gradient_variance(torch.from_numpy(x), torch.from_numpy(y), patch).item()
    assert ours == pytest.approx(_gv_reference(x, y, patch), rel=1e-10)


def test_gradient_variance_by_hand():
    """One 4x4 patch: a vertical step edge (columns 0-1 at 0, columns 2-3 at 1, in every channel, so luma = the
    same) against a flat 0 image, whose gradient maps are 0. The Sobel maps with zero padding, by hand:
    x: inner rows (p[j+1] - p[j-1]) * (1 + 2 + 1) = 0, 4, 4, -4; border rows lose one padded row: 0, 3, 3, -3.
    y: inner rows cancel; row 0 is the row below minus the padding, weighted 1-2-1 across columns: 0, 1, 3, 3;
    row 3 is the negative of that."""
    x = torch.zeros(1, 3, 4, 4)
    x[..., 2:] = 1.0
    gx, gy = L.sobel(L.grey(x))
    assert gx[0, 0].tolist() == [[0, 3, 3, -3], [0, 4, 4, -4], [0, 4, 4, -4], [0, 3, 3, -3]]
    col = [0 + 2 * 0 + 0, 0 + 2 * 0 + 1, 0 + 2 * 1 + 1, 1 + 2 * 1 + 0]  # 1-2-1 sums of the row [0, 0, 1, 1], padded
    assert gy[0, 0, 0].tolist() == pytest.approx(col)  # the row below minus the zero padding above
    assert gy[0, 0, 3].tolist() == pytest.approx([-c for c in col])
    assert gy[0, 0, 1:3].abs().sum().item() == 0
    vx = np.var([0, 3, 3, -3, 0, 4, 4, -4, 0, 4, 4, -4, 0, 3, 3, -3], ddof=1)
    vy = np.var(col + [0] * 8 + [-c for c in col], ddof=1)
    flat = torch.zeros_like(x)  # its gradient maps are all 0: variances 0
    assert L.gradient_variance(x, flat, 4).item() == pytest.approx(vx ** 2 + vy ** 2)
    assert L.gradient_variance(x, x, 4).item() == 0.0


def test_gradient_variance_needs_whole_patches():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        L.gradient_variance(torch.zeros(1, 3, 10, 10), torch.zeros(1, 3, 10, 10), 8)


def test_reconstruction_is_eq7_and_skips_zero_weights():
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    dist = lambda a, b: (a - b).abs().mean(dim=(1, 2, 3))  # noqa: E731 - any per-sample perceptual distance
    total, parts = L.reconstruction(x, y, 1.0, 0.5, 2.0, dist, gv_patch=4)
    expected = F.mse_loss(x, y) + 0.5 * dist(x, y).mean() + 2.0 * L.gradient_variance(x, y, 4)
    assert total.item() == pytest.approx(expected.item())
    assert set(parts) == {"l2", "lpips", "gv"}

    def never(a, b):
        raise AssertionError("a term with weight 0 must not be computed")

    total, parts = L.reconstruction(x, y, 1.0, 0.0, 0.0, never)
    assert set(parts) == {"l2"} and total.item() == pytest.approx(F.mse_loss(x, y).item())


def test_feature_reconstruction_masks_both_images():
    x, y = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1  # half the pixels
    total, _ = L.reconstruction(L.masked(x, m), L.masked(y, m), 1.0, 0.0, 0.0)
    assert total.item() == pytest.approx(0.5)  # Eq. 13: the MSE of M.I vs M.I' over all pixels


class _Embed:
    """A differentiable 'identity network': a fixed linear map of the pixel means, cosine distance."""

    name, differentiable, distance_name = "test", True, "cosine"

    def identity(self, images):
        return images.mean(dim=(2, 3)) @ torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])

    def distance(self, a, b):
        return 1 - F.cosine_similarity(a, b, dim=-1)


def test_identity_loss_is_eq8_plus_eq9():
    src = torch.zeros(1, 3, 2, 2)
    src[:, 0] = 1.0  # channel means (1, 0, 0): embedding (1, 0)
    idimg = torch.zeros(1, 3, 2, 2)
    idimg[:, 1] = 1.0  # embedding (0, 1)
    cross = src.clone()  # identical identity: term 0
    e_src = torch.tensor([1.0, 0.0])
    e_id = torch.tensor([0.0, 1.0])
    expected8 = 1 - float(e_src @ e_id / (e_src.norm() * e_id.norm()))
    total, parts = L.identity(_Embed(), src, idimg.requires_grad_(True), cross)
    assert parts["source"].item() == pytest.approx(expected8)  # Eq. 8: 1 - cos = 1 here
    assert parts["cross"].item() == pytest.approx(0.0, abs=1e-7)  # Eq. 9
    assert total.item() == pytest.approx(expected8)
    total.backward()
    assert idimg.grad is not None and idimg.grad.abs().sum() > 0
    total, parts = L.identity(_Embed(), src, idimg.detach(), None)  # Eq. 9 switched off (w/o ID reg)
    assert set(parts) == {"source"}


def test_identity_loss_detaches_the_source():
    src = torch.rand(2, 3, 4, 4, requires_grad=True)
    out = torch.rand(2, 3, 4, 4, requires_grad=True)
    total, _ = L.identity(_Embed(), src, out, out)
    total.backward()
    assert src.grad is None and out.grad is not None


def test_latent_consistency_is_eq10():
    w_s = torch.zeros(2, 3, 2)
    w_c = torch.zeros(2, 3, 2)
    w_c[0, 0] = torch.tensor([3.0, 4.0])  # sample 0: ||.|| = 5 over the whole code
    w_c[1, 1, 0], w_c[1, 2, 1] = 6.0, 8.0  # sample 1: sqrt(36 + 64) = 10
    assert L.latent_consistency(w_s, w_c).item() == pytest.approx(7.5)


def test_regularisation_is_eq11_12():
    w = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]])  # deltas to row 1: 0, 5, 10
    s_f = [torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 1.0, 0.0]])]  # norms 5 and 1
    total, parts = L.regularisation(w, s_f, lambda_s=0.5)
    assert parts["w"].item() == pytest.approx(15.0)
    assert parts["s"].item() == pytest.approx(6.0)
    assert total.item() == pytest.approx(15.0 + 0.5 * 6.0)
    total, parts = L.regularisation(w.expand(4, -1, -1), [s.expand(4, -1) for s in s_f], lambda_s=0.0)
    assert set(parts) == {"w"} and total.item() == pytest.approx(15.0)  # batch mean of per-sample sums


def test_adversarial_losses_are_softplus():
    real, fake = torch.tensor([[2.0], [0.0]]), torch.tensor([[-1.0], [3.0]])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert L.adversarial(fake).item() == pytest.approx((sp(1.0) + sp(-3.0)) / 2)
    assert L.discriminator_loss(real, fake).item() == pytest.approx((sp(-2.0) + sp(0.0)) / 2 + (sp(-1.0) + sp(3.0)) / 2)


def test_r1_is_the_squared_gradient_norm_at_real_samples():
    d = torch.nn.Linear(3, 1)
    with torch.no_grad():
        d.weight.copy_(torch.tensor([[1.0, 2.0, 2.0]]))
    w = torch.randn(5, 3, requires_grad=True)
    r1 = L.r1_penalty(d(w), w)
    assert r1.item() == pytest.approx(9.0)  # D linear: grad = weight for every sample, |weight|^2 = 9
    r1.backward()  # the graph is kept: R1 trains D
    assert d.weight.grad is not None and torch.allclose(d.weight.grad, 2 * d.weight.detach())


def test_lpips_toy_matches_the_evaluation_harness_and_is_differentiable():
    from pipeline.analysis.toy import ToyAnalyzer, ToyFaceNet
    from pipeline.evaluation.networks import ToyFeatures

    torch.manual_seed(0)
    net = ToyFaceNet(32, width=4, embedding_dim=8)
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    analyzer = ToyAnalyzer(net, np.zeros(12), np.ones(12))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    reference = ToyFeatures(analyzer).lpips(a, b)
    ours = L.ToyPerceptual(analyzer)
    from pipeline.store import to_image

    x = to_image(a).requires_grad_(True)
    value = ours(x, to_image(b))
    assert np.allclose(value.detach().numpy(), reference, rtol=1e-5)
    value.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert ours(to_image(a), to_image(a)).abs().max().item() < 1e-6


def test_lpips_training_loss_is_the_harness_network(tmp_path):
    pytest.importorskip("lpips")
    import torchvision

    from pipeline.evaluation.networks import LPIPSMetric

    torch.manual_seed(0)
    path = tmp_path / "alexnet.pth"  # random AlexNet weights in torchvision's format (the real file is an asset)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    metric = LPIPSMetric(path)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    from pipeline.store import to_image

    x = to_image(a).requires_grad_(True)
    value = L.LPIPSPerceptual(metric)(x, to_image(b))
    assert np.allclose(value.detach().numpy(), metric(a, b), rtol=1e-5)
    value.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_missing_lpips_asset_names_the_file(tmp_path):
    from pipeline.assets import AssetError
    from pipeline.config import Asset

    assets = {"lpips_alexnet": Asset(path=str(tmp_path / "alexnet-owt-7be5be79.pth"), source="torchvision's AlexNet")}
    with pytest.raises(AssetError, match="alexnet-owt-7be5be79.pth"):
        L.perceptual_network("lpips", assets=assets)
    with pytest.raises(ValueError, match="unknown network"):
        L.perceptual_network("vgg")
