"""The evaluation's networks, each from a checked file (params.yaml assets), never downloaded.

- LPIPS (the `lpips` package, v0.1, AlexNet): the package ships its linear layers (lpips/weights/v0.1/alex.pth);
  its backbone is torchvision's ImageNet AlexNet, which `lpips.LPIPS()` would download at construction. It is
  built with `pnet_rand=True` (no download) and torchvision's file, asset `lpips_alexnet`
  (`alexnet-owt-7be5be79.pth`), is loaded into it.
- FID: pytorch-fid's `InceptionV3` (the FID Inception, pool3, 2048-D), whose constructor downloads
  `pt_inception-2015-12-05-6726825d.pth`; the download function it calls is replaced, for the construction only,
  by one returning the checked file, asset `fid_inception`. The network is the package's own code.
- FVD: StyleGAN-V's I3D TorchScript (`i3d_torchscript.pt`, asset `fvd_i3d`), called exactly as StyleGAN-V's
  `compute_fvd` does (see I3DFeatures).
- The toy analyzer's conv blocks (ToyFeatures) for the `*_toy` metrics on the synthetic world.

torchvision and pytorch-fid name their files with the first 8 hex digits of the file's sha256 (torch.hub
checks it on download): `check_name_prefix` verifies that prefix, so a file renamed into place but different
is refused even where params.yaml has no full checksum for it.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.assets import AssetError, require, sha256_of

if TYPE_CHECKING:
    from pipeline.analysis.toy import ToyAnalyzer
    from pipeline.config import Asset

LPIPS_ASSET = "lpips_alexnet"
INCEPTION_ASSET = "fid_inception"
I3D_ASSET = "fvd_i3d"
_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def check_name_prefix(path: Path, expected_name: str | None = None) -> str:
    """The file's sha256, after checking that it starts with the hex digits after the last '-' of
    `expected_name` (default: the file's own name), as torch.hub does. AssetError if it does not; names
    without such a suffix are not checked."""
    path = Path(path)
    digest = sha256_of(path)
    m = _PREFIX.search(expected_name or path.name)
    if m and not digest.startswith(m.group(1)):
        raise AssetError(f"{path}: sha256 {digest[:16]}... does not start with {m.group(1)}, the checksum prefix in "
                         f"its name {expected_name or path.name!r}: a different file under the expected name")
    return digest


def _checked(name: str, assets: dict[str, "Asset"]) -> tuple[Path, str]:
    path = require(name, assets)  # missing / full-checksum mismatch -> AssetError naming the file and the source
    return path, check_name_prefix(path, Path(assets[name].path).name)


# -- LPIPS -------------------------------------------------------------------------------------------------

class LPIPSMetric:
    """lpips.LPIPS(net='alex', version='0.1') with the backbone from a local torchvision file."""

    def __init__(self, alexnet_path: Path, device: str | torch.device = "cpu", expected_name: str | None = None):
        import lpips

        alexnet_sha = check_name_prefix(alexnet_path, expected_name)
        with warnings.catch_warnings():  # lpips 0.1.4 calls torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
        state = torch.load(alexnet_path, map_location="cpu", weights_only=True)
        self.model.net.load_state_dict(alexnet_slices(state), strict=True)
        self.model = self.model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        linear = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
        self.weights = {Path(alexnet_path).name: alexnet_sha, f"lpips/{linear.relative_to(linear.parents[2])}": sha256_of(linear)}

    @classmethod
    def from_assets(cls, assets: dict[str, "Asset"], device: str | torch.device = "cpu") -> "LPIPSMetric":
        path, _ = _checked(LPIPS_ASSET, assets)
        return cls(path, device, Path(assets[LPIPS_ASSET].path).name)

    @torch.no_grad()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """LPIPS per image pair, float64 [N], of uint8 frames [N, H, W, 3] (scaled to [-1, 1] as lpips expects)."""
        x, y = _to_pm1(a, self.device), _to_pm1(b, self.device)
        return self.model(x, y).reshape(-1).double().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        import lpips

        return {"backend": f"lpips {getattr(lpips, '__version__', '0.1.4')} (net alex, version 0.1)", "weights_sha256": self.weights}


def alexnet_slices(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision AlexNet `features.{i}.*` -> lpips' `slice{k}.{i}.*` (slices: layers 0-1, 2-4, 5-7, 8-9,
    10-11; the classifier is unused). KeyError naming the key if the file is not an AlexNet state dict."""
    bounds = [(1, 0, 2), (2, 2, 5), (3, 5, 8), (4, 8, 10), (5, 10, 12)]
    out = {}
    for key in ("features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias", "features.6.weight",
                "features.6.bias", "features.8.weight", "features.8.bias", "features.10.weight", "features.10.bias"):
        if key not in state:
            raise KeyError(f"not a torchvision AlexNet state dict: {key!r} missing")
        i = int(key.split(".")[1])
        k = next(s for s, lo, hi in bounds if lo <= i < hi)
        out[f"slice{k}.{i}.{key.split('.')[2]}"] = state[key]
    return out


# -- FID Inception -----------------------------------------------------------------------------------------

class InceptionFeatures:
    """pytorch-fid's InceptionV3([pool3]) with the FID weights from a local file: 2048-D features per frame,
    frames given as uint8 [N, H, W, 3] and fed in [0, 1] (the package resizes to 299 bilinearly and scales to
    [-1, 1] itself, as in its own `get_activations`)."""

    dims = 2048

    def __init__(self, path: Path, device: str | torch.device = "cpu", expected_name: str | None = None):
        from pytorch_fid import inception as pf

        self.sha256 = check_name_prefix(path, expected_name)
        state = torch.load(path, map_location="cpu", weights_only=True)
        wanted = Path(pf.FID_WEIGHTS_URL).name

        def local_file(url, *args, **kwargs):  # what pytorch-fid would have downloaded, from the checked file
            if Path(url).name != wanted:
                raise RuntimeError(f"pytorch-fid asked for {url}, expected {wanted}")
            return state

        with mock.patch.object(pf, "load_state_dict_from_url", local_file):
            model = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[self.dims]])
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.name = Path(path).name

    @classmethod
    def from_assets(cls, assets: dict[str, "Asset"], device: str | torch.device = "cpu") -> "InceptionFeatures":
        path, _ = _checked(INCEPTION_ASSET, assets)
        return cls(path, device, Path(assets[INCEPTION_ASSET].path).name)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float().div(255.0)
        return self.model(x)[0].squeeze(-1).squeeze(-1).double().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        import pytorch_fid

        return {"backend": f"pytorch-fid {pytorch_fid.__version__} InceptionV3 pool3", "weights_sha256": {self.name: self.sha256}}


# -- FVD I3D -----------------------------------------------------------------------------------------------

class I3DFeatures:
    """StyleGAN-V's FVD detector: the I3D TorchScript (Kinetics-400, the tf.hub model of the original FVD).

    The convention, from StyleGAN-V's src/metrics/frechet_video_distance.py and metric_utils.py (read, not
    copied): clips of 16 consecutive frames as uint8 values [B, 3, T, H, W] (channels first, time second),
    passed as float 0..255 with `rescale=True, resize=True, return_features=True`, so the script itself scales
    to [-1, 1] (2 x / 255 - 1, as the TensorFlow original) and resizes every frame to 224 x 224; the output is
    the 400 logits before the softmax. Their statistics use the population covariance (frechet.py).
    Loading a TorchScript runs the script's own (TorchScript) code: use the published file only."""

    dims = 400
    kwargs = {"rescale": True, "resize": True, "return_features": True}

    def __init__(self, path: Path, device: str | torch.device = "cpu", expected_name: str | None = None):
        self.sha256 = check_name_prefix(path, expected_name)
        with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export; the file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            self.model = torch.jit.load(str(path), map_location=device).eval()
        self.device = torch.device(device)
        self.name = Path(path).name

    @classmethod
    def from_assets(cls, assets: dict[str, "Asset"], device: str | torch.device = "cpu") -> "I3DFeatures":
        path, _ = _checked(I3D_ASSET, assets)
        return cls(path, device, Path(assets[I3D_ASSET].path).name)

    @torch.no_grad()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        """clips uint8 [B, T, H, W, 3] -> features float64 [B, 400]."""
        x = torch.from_numpy(np.ascontiguousarray(clips)).to(self.device).permute(0, 4, 1, 2, 3).float()
        return self.model(x, **self.kwargs).double().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"backend": "StyleGAN-V I3D TorchScript (rescale, resize to 224, logits)", "weights_sha256": {self.name: self.sha256}}


# -- the toy analyzer's features ---------------------------------------------------------------------------

class ToyFeatures:
    """Features of the toy world's analyzer network (pipeline/analysis/toy.py, ToyFaceNet's four conv blocks)
    for the `*_toy` metrics: real networks do not understand the synthetic faces. Never reported under the
    paper's names.

    - per image: the four blocks' maps (for lpips_toy) and the global average of the last block, 8 x width
      dims (for fid_toy);
    - per clip of T frames: [mean_t g_t, std_t g_t, mean_t |g_t+1 - g_t|] of the pooled features g (for
      fvd_toy): appearance, its spread and its frame-to-frame change, 3 x 8 x width dims."""

    def __init__(self, analyzer: "ToyAnalyzer"):
        self.analyzer = analyzer
        self.net = analyzer.net
        self.device = analyzer.device

    def _input(self, frames: np.ndarray) -> torch.Tensor:
        from pipeline.analysis import as_images

        x = as_images(frames).to(self.device, torch.float32)
        s = self.net.resolution
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x

    @torch.no_grad()
    def maps(self, frames: np.ndarray) -> list[torch.Tensor]:
        h, out = self._input(frames), []
        for block in self.net.features:
            h = block(h)
            out.append(h)
        return out

    @torch.no_grad()
    def pooled(self, frames: np.ndarray) -> np.ndarray:
        return self.maps(frames)[-1].mean(dim=(2, 3)).double().cpu().numpy()

    @torch.no_grad()
    def lpips(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """LPIPS's formula without learned weights on the toy blocks: sum over blocks of the spatial mean of
        the channel sum of (f_a / |f_a| - f_b / |f_b|)^2, the unit normalisation over channels per pixel."""
        total = 0.0
        for fa, fb in zip(self.maps(a), self.maps(b)):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (na - nb).pow(2).sum(1).mean(dim=(1, 2))
        return total.double().cpu().numpy()

    @staticmethod
    def clip_features(pooled_clips: np.ndarray) -> np.ndarray:
        """[B, T, D] pooled per-frame features -> [B, 3 D] clip statistics (class docstring)."""
        g = np.asarray(pooled_clips, dtype=np.float64)
        return np.concatenate([g.mean(1), g.std(1), np.abs(np.diff(g, axis=1)).mean(1)], axis=1)

    def describe(self) -> dict[str, Any]:
        return {"backend": "toy analyzer conv features (not a paper network)", "weights_sha256": self.analyzer.weights()}


def _to_pm1(frames: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
