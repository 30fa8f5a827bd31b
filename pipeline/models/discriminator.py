"""The latent discriminator of Sec. 3.2 (as in e4e): tells W_ID rows from the generator's mapped w.

e4e's LatentCodesDiscriminator: 3 x [Linear(style_dim, style_dim) + LeakyReLU 0.2] + Linear(style_dim, 1), applied
to each W+ row as one sample. Its losses (non-saturating, softplus) and the R1 penalty are in pipeline/losses.py.
"""
from __future__ import annotations

from torch import Tensor, nn


class LatentDiscriminator(nn.Module):
    """w [..., style_dim] -> logit [..., 1] (real: a mapped w = G.map(z); fake: an encoder's W_ID row)."""

    def __init__(
        self,
        style_dim: int,  # width of a W+ row
        n_layers: int = 4,  # linear layers (e4e: 4, i.e. 3 hidden + the output)
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        layers: list[nn.Module] = []
        for _ in range(n_layers - 1):
            layers += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(style_dim, 1))
        self.net = nn.Sequential(*layers)
        self.style_dim = style_dim

    def forward(self, w: Tensor) -> Tensor:
        if w.shape[-1] != self.style_dim:
            raise ValueError(f"latent discriminator: expected [..., {self.style_dim}], got {list(w.shape)}")
        return self.net(w)
