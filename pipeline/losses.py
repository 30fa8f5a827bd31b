"""The training losses of Sec. 3.2, Eq. 5-14, one function per term.

Images are float [N, 3, H, W] in [-1, 1] (the generator's range); every function returns a scalar (the batch
mean) unless it says otherwise. The weights are params.yaml's `loss` section (pipeline.config.LossParams); a
term whose weight is 0 is never computed (`Objective` in pipeline/train.py assembles Eq. 14).

- Eq. 7  `reconstruction`: L_rec = l2 * MSE + lpips * LPIPS + gv * gradient variance, each computed only when
  its weight is > 0. The perceptual distance is any callable (x, y) -> [N] with gradients to x: the LPIPS
  network of the evaluation harness (`lpips`, AlexNet, pipeline/evaluation/networks.py) or, on the synthetic
  world, the same formula on the toy analyzer's conv blocks (`lpips_toy`, `ToyPerceptual`).
- `gradient_variance`: Abrahamyan et al. 2022, "Gradient Variance Loss for Structure-Enhanced Image
  Super-Resolution", from its definition: both images to grey (ITU-R BT.601 luma), 3x3 Sobel gradient maps
  G_x, G_y (zero padding), each map cut into non-overlapping n x n patches, the variance of each patch
  (unbiased, over its n^2 values) forms a variance map; the loss is MSE(v_x(out), v_x(target)) +
  MSE(v_y(out), v_y(target)).
- Eq. 5, 6 (L_self, L_reenact) and Eq. 13 (L_f, masked) are `reconstruction` on the right image pairs.
- Eq. 8-9  `identity`: 1 - cos(phi(I^S), phi(G(A(W_ID^S)))) [+ 1 - cos(phi(I^S), phi(I^{S->D2}))], through
  pipeline.analysis.identity_loss (pSp's form: batch mean, the target's embedding detached).
- Eq. 10 `latent_consistency`: ||W_ID^S - E_ID(I^{S->D2})||_2, the L2 norm over the whole W+ code per sample.
- Eq. 11-12 `regularisation`: sum_i ||W_ID^S[i] - W_ID^S[1]||_2 + lambda_S sum_j ||S_F^D1[j]||_2 per sample.
- L_d and the latent discriminator (e4e): `adversarial` (the encoder's non-saturating loss softplus(-D(W_ID))),
  `discriminator_loss` (softplus(-D(real)) + softplus(D(fake))) and `r1_penalty` (||grad_w D(w_real)||^2).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

Perceptual = Callable[[Tensor, Tensor], Tensor]  # (x, y) -> per-sample distance [N], differentiable w.r.t. x

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))  # d/dx (columns); its transpose is d/dy


def l2(x: Tensor, y: Tensor) -> Tensor:
    """L_L2: the mean squared error over every pixel and channel."""
    return F.mse_loss(x, y)


def grey(x: Tensor) -> Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luma."""
    r, g, b = LUMA
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def sobel(x: Tensor) -> tuple[Tensor, Tensor]:
    """3x3 Sobel gradient maps (G_x, G_y) of a one-channel image [N, 1, H, W] (zero padding, same size)."""
    kx = torch.tensor(SOBEL_X, dtype=x.dtype, device=x.device)
    return F.conv2d(x, kx[None, None], padding=1), F.conv2d(x, kx.t()[None, None], padding=1)


def patch_variance(g: Tensor, patch: int) -> Tensor:
    """Variance (unbiased) of each non-overlapping patch x patch block of g [N, 1, H, W] -> [N, H/p, W/p]."""
    n, _, h, w = g.shape
    if h % patch or w % patch:
        raise ValueError(f"gradient variance: the image side ({h}x{w}) must be a multiple of the patch size {patch}")
    blocks = g.reshape(n, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4)
    return blocks.reshape(n, h // patch, w // patch, patch * patch).var(dim=-1, unbiased=True)


def gradient_variance(x: Tensor, y: Tensor, patch: int = 8) -> Tensor:
    """L_GV (Abrahamyan et al. 2022; see the module docstring) of output x against target y."""
    gx_x, gy_x = sobel(grey(x))
    gx_y, gy_y = sobel(grey(y))
    return F.mse_loss(patch_variance(gx_x, patch), patch_variance(gx_y, patch)) + \
        F.mse_loss(patch_variance(gy_x, patch), patch_variance(gy_y, patch))


def reconstruction(x: Tensor, y: Tensor, l2_weight: float, lpips_weight: float, gv_weight: float,
                   perceptual: Perceptual | None = None, gv_patch: int = 8) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 7, L_rec(y, x) of output x against target y: (weighted sum, {"l2", "lpips", "gv": unweighted terms}),
    each term computed only when its weight is > 0."""
    parts: dict[str, Tensor] = {}
    total = x.new_zeros(())
    if l2_weight > 0:
        parts["l2"] = l2(x, y)
        total = total + l2_weight * parts["l2"]
    if lpips_weight > 0:
        if perceptual is None:
            raise ValueError("loss.lambda_lpips > 0 needs a perceptual network")
        parts["lpips"] = perceptual(x, y).mean()
        total = total + lpips_weight * parts["lpips"]
    if gv_weight > 0:
        parts["gv"] = gradient_variance(x, y, gv_patch)
        total = total + gv_weight * parts["gv"]
    return total, parts


def masked(images: Tensor, masks: Tensor) -> Tensor:
    """M (.) I of Eq. 13: masks [N, 1, H, W] in {0, 1} broadcast over the channels."""
    return images * masks


def identity(analyzer, source: Tensor, id_image: Tensor, cross: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 8 (+ Eq. 9 when `cross` is given): (sum, {"source": Eq. 8, "cross": Eq. 9}).

    source: I^S; id_image: G(A(W_ID^S)), the source identity with no S_F; cross: I^{S->D2} = G(A(W_ID^S) + S_F^D2).
    `analyzer` is a differentiable FaceAnalyzer with cosine distance (pipeline.analysis)."""
    from pipeline.analysis import identity_loss

    parts = {"source": identity_loss(analyzer, id_image, source)}
    if cross is not None:
        parts["cross"] = identity_loss(analyzer, cross, source)
    return sum(parts.values()), parts


def latent_consistency(w_source: Tensor, w_cross: Tensor) -> Tensor:
    """Eq. 10: batch mean of ||W_ID^S - W_ID^{S->D2}||_2 over each sample's whole [n_latent, style_dim] code."""
    return torch.linalg.vector_norm((w_source - w_cross).flatten(1), dim=1).mean()


def regularisation(w_id: Tensor, motion: Sequence[Tensor], lambda_s: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 11-12: (sum_i ||W_ID[i] - W_ID[1]||_2 + lambda_S sum_j ||S_F[j]||_2, {"w": first sum, "s": second}),
    per-sample sums, batch mean. w_id [N, n_latent, D] (W_ID^S), motion: S_F^D1, a list of [N, C_j]."""
    delta = w_id - w_id[:, :1]
    parts = {"w": torch.linalg.vector_norm(delta, dim=2).sum(dim=1).mean()}
    total = parts["w"]
    if lambda_s > 0:
        parts["s"] = torch.stack([torch.linalg.vector_norm(s, dim=1) for s in motion], dim=1).sum(dim=1).mean()
        total = total + lambda_s * parts["s"]
    return total, parts


def adversarial(d_fake: Tensor) -> Tensor:
    """L_d for the encoder (non-saturating): mean softplus(-D(W_ID rows))."""
    return F.softplus(-d_fake).mean()


def discriminator_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """The latent discriminator's loss: mean softplus(-D(real w)) + mean softplus(D(W_ID rows))."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def r1_penalty(d_real: Tensor, w_real: Tensor) -> Tensor:
    """R1: batch mean of ||grad_w D(w)||^2 at the real samples (w_real must require grad; the graph is kept so
    that the penalty trains D)."""
    (grad,) = torch.autograd.grad(d_real.sum(), w_real, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()


# ------------------------------------------------------------------------------------ perceptual distances


class ToyPerceptual:
    """`lpips_toy` as a differentiable training loss: LPIPS's formula without learned weights on the toy
    analyzer's four conv blocks (the same numbers as the evaluation's `ToyFeatures.lpips`): the sum over blocks
    of the spatial mean of the channel sum of (f_x / |f_x| - f_y / |f_y|)^2, the unit normalisation over channels
    per pixel. Frozen network, gradients to the images."""

    name = "lpips_toy"

    def __init__(self, analyzer):
        self.analyzer = analyzer  # pipeline.analysis.toy.ToyAnalyzer (eval mode, frozen)
        self.net = analyzer.net

    def maps(self, x: Tensor) -> list[Tensor]:
        s = self.net.resolution
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        out = []
        for block in self.net.features:
            x = block(x)
            out.append(x)
        return out

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        total = x.new_zeros(x.shape[0])
        with torch.no_grad():
            target = self.maps(y.float())
        for fx, fy in zip(self.maps(x.float()), target):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (nx - ny).pow(2).sum(1).mean(dim=(1, 2))
        return total

    def describe(self) -> dict:
        return {"backend": "lpips_toy: LPIPS formula on the toy analyzer's conv blocks", "weights": self.analyzer.weights()}


class LPIPSPerceptual:
    """`lpips`: the evaluation harness's LPIPS network (lpips 0.1, AlexNet backbone from the `lpips_alexnet`
    asset) as a differentiable training loss on images in [-1, 1]."""

    name = "lpips"

    def __init__(self, metric):
        self.metric = metric  # pipeline.evaluation.networks.LPIPSMetric (frozen, eval mode)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.metric.model(x.float(), y.float().detach()).reshape(-1)

    def describe(self) -> dict:
        return self.metric.describe()


def perceptual_network(name: str, analyzer=None, assets=None, device: str | torch.device = "cpu"):
    """The L_rec perceptual distance named by `loss.lpips_net`: `lpips_toy` (needs the toy analyzer) or `lpips`
    (the `lpips_alexnet` asset; a missing file stops with its path and how to obtain it)."""
    if name == "lpips_toy":
        if analyzer is None or not hasattr(analyzer, "net") or not hasattr(analyzer.net, "features"):
            raise ValueError("loss.lpips_net 'lpips_toy' needs the toy analyzer (analysis.identity_loss: toy, "
                             "models/analyzer.pt from the `analyzer` stage)")
        return ToyPerceptual(analyzer)
    if name == "lpips":
        from pipeline.evaluation.networks import LPIPSMetric

        return LPIPSPerceptual(LPIPSMetric.from_assets(assets or {}, device))
    raise ValueError(f"loss.lpips_net: unknown network {name!r}; networks: lpips, lpips_toy")
