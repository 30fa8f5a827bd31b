"""The `arcface` backend of pipeline.analysis: pSp's ArcFace IR-SE50 as an identity embedder.

Identity only (motion is not offered: the base class names the backends that have it). The embedding is
`pipeline.models.arcface.IdentityEncoder`, i.e. exactly what pSp's ID loss sees: a 256x256 aligned face in
[-1, 1], cropped to rows 35..222 / cols 32..219, pooled to 112x112, unit-norm 512-D output; other sizes are
resized to 256 first. Differentiable w.r.t. float images (the network is frozen, the graph to the images is
kept), so the same object serves the training ID loss and the evaluation's L_ID on real faces. No
same-person threshold is set: pSp publishes none for this network.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pipeline.analysis import FaceAnalyzer, as_images
from pipeline.models.arcface import ASSET_NAME, IRSE50, IdentityEncoder, load_irse50

if TYPE_CHECKING:
    from pipeline.config import Params


class ArcFaceAnalyzer(FaceAnalyzer):
    name = "arcface"
    differentiable = True
    distance_name = "cosine"
    threshold = None
    input_size = 256  # pSp's crop indices are defined on 256x256 aligned faces

    def __init__(
        self,
        encoder: IdentityEncoder | IRSE50 | None = None,  # None: a randomly initialised IR-SE50 (tests only)
        weights: dict[str, str] | None = None,  # {path: sha256} of the loaded file; {} for random weights
        device: str | torch.device = "cpu",
        batch_size: int = 32,  # images per forward pass (memory bound; the graph spans all batches)
    ):
        if encoder is None or isinstance(encoder, IRSE50):
            encoder = IdentityEncoder(encoder)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device)
        self.batch_size = int(batch_size)
        self._weights = dict(weights or {})

    @classmethod
    def from_params(cls, params: "Params", device: str | torch.device = "cpu", **kwargs) -> "ArcFaceAnalyzer":
        """pSp's model_ir_se50.pth from params.yaml assets.arcface_ir_se50 (a missing file names how to get it)."""
        from pipeline.assets import require, sha256_of

        path: Path = require(ASSET_NAME, params.assets)
        return cls(load_irse50(path), weights={str(path): sha256_of(path)}, device=device, **kwargs)

    def weights(self) -> dict[str, str]:
        return dict(self._weights)

    def identity(self, images) -> torch.Tensor:
        """Unit-norm embeddings [N, 512] on the analyzer's device; keeps the autograd graph to float images."""
        x = as_images(images)
        if x.shape[0] == 0:
            return torch.zeros(0, 512, device=self.device)
        # No graph is built unless the caller asks for gradients: evaluation over long videos stays cheap.
        grad = x.requires_grad and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            parts = [self.encoder.embed(x[s : s + self.batch_size].to(self.device, torch.float32))
                     for s in range(0, x.shape[0], self.batch_size)]
        return torch.cat(parts)
