"""The evaluation's networks on stand-in weights in the real file formats (the real files cannot be downloaded
here): torchvision's AlexNet state dict named alexnet-owt-<sha256[:8]>.pth, pytorch-fid's FID Inception state
dict named pt_inception-2015-12-05-<sha256[:8]>.pth, a TorchScript I3D with StyleGAN-V's call signature, and
the toy analyzer checkpoint. Checked against the `lpips` and `pytorch-fid` packages' own code on the same
tensors. The builders are imported by tests/test_evaluation.py."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.assets import AssetError
from pipeline.evaluation.networks import (
    I3DFeatures, InceptionFeatures, LPIPSMetric, ToyFeatures, alexnet_slices, check_name_prefix,
)

# -- stand-in builders ---------------------------------------------------------------------------------------


def _named_by_sha(tmp: Path, stem: str, ext: str) -> Path:
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    final = tmp.with_name(f"{stem}-{digest[:8]}{ext}")
    tmp.rename(final)
    return final


def make_alexnet_file(folder: Path) -> Path:
    """A random torchvision AlexNet state dict, saved and named as torchvision names its download."""
    import torchvision

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "alexnet.tmp"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp)
    return _named_by_sha(tmp, "alexnet-owt", ".pth")


def make_inception_file(folder: Path) -> Path:
    """pytorch-fid's FID Inception (built by the package's own fid_inception_v3 with nothing loaded), random
    weights, its state dict saved and named as pytorch-fid's release file."""
    from pytorch_fid import inception as pf

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    with mock.patch.object(pf, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None):
        net = pf.fid_inception_v3()
    tmp = folder / "inception.tmp"
    torch.save(net.state_dict(), tmp)
    return _named_by_sha(tmp, "pt_inception-2015-12-05", ".pth")


class StandInI3D(nn.Module):
    """StyleGAN-V's I3D TorchScript interface: forward(x [B, 3, T, H, W], rescale, resize, return_features),
    rescale: 0..255 -> [-1, 1]; resize: every frame to 224 x 224 (trilinear, time kept); 400 features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, kernel_size=(3, 7, 7), stride=(2, 8, 8))
        self.fc = nn.Linear(8 * 2, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        h = torch.relu(self.conv(x))
        f = self.fc(torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], 1))
        return f if return_features else torch.softmax(f, 1)


def make_i3d_file(folder: Path) -> Path:
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "i3d_torchscript.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export; the real file is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(StandInI3D().eval()), str(path))
    return path


def make_toy_workspace(folder: Path, resolution: int = 32) -> Path:
    """A workspace (dvc.yaml marks it) with a small random toy analyzer at models/analyzer.pt."""
    from pipeline.analysis.toy import N_TARGETS, ToyAnalyzer, ToyFaceNet, save_checkpoint

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dvc.yaml").write_text("stages: {}\n")
    net = ToyFaceNet(resolution, width=4, embedding_dim=16).eval()
    facts = {"target_mean": np.zeros(N_TARGETS).tolist(), "target_std": np.ones(N_TARGETS).tolist(),
             "train_identities": ["a", "b"]}
    save_checkpoint(folder / ToyAnalyzer.CHECKPOINT, net, facts, threshold=0.4, params={}, seed=0)
    return folder


def params_with(real_params: dict, **paths: Path):
    """The real params.yaml with asset paths replaced (lpips_alexnet=..., fid_inception=..., fvd_i3d=...)."""
    from pipeline.config import validate_params

    for name, path in paths.items():
        real_params["assets"][name]["path"] = str(path)
    return validate_params(real_params)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("standins")
    return {"lpips_alexnet": make_alexnet_file(folder), "fid_inception": make_inception_file(folder),
            "fvd_i3d": make_i3d_file(folder)}


def _frames(n=3, h=40, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# -- asset checks ----------------------------------------------------------------------------------------------


def test_name_prefix_is_the_files_sha256(standins, tmp_path):
    path = standins["lpips_alexnet"]
    assert check_name_prefix(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    wrong = tmp_path / "alexnet-owt-7be5be79.pth"  # torchvision's real name on another file
    wrong.write_bytes(path.read_bytes())
    with pytest.raises(AssetError, match="does not start with 7be5be79"):
        check_name_prefix(wrong)
    plain = tmp_path / "weights.pth"
    plain.write_bytes(b"x")
    check_name_prefix(plain)  # no prefix in the name: nothing to check


def test_params_declare_the_real_file_names():
    from pipeline.config import load_params

    assets = load_params().assets
    assert Path(assets["lpips_alexnet"].path).name == "alexnet-owt-7be5be79.pth"
    assert Path(assets["fid_inception"].path).name == "pt_inception-2015-12-05-6726825d.pth"
    assert Path(assets["fvd_i3d"].path).name == "i3d_torchscript.pt"
    for name in ("lpips_alexnet", "fid_inception", "fvd_i3d"):
        assert assets[name].used_by == ["evaluate"] and assets[name].source


# -- LPIPS -------------------------------------------------------------------------------------------------------


def test_alexnet_slices_cover_lpips_backbone():
    import lpips
    import torchvision

    state = torchvision.models.alexnet(weights=None).state_dict()
    mapped = alexnet_slices(state)
    assert set(mapped) == set(lpips.pn.alexnet(pretrained=False).state_dict())
    with pytest.raises(KeyError, match="AlexNet"):
        alexnet_slices({"conv.weight": torch.zeros(1)})


def test_lpips_equals_the_packages_own_construction(standins):
    """lpips.LPIPS(net='alex') as the package builds it when torchvision hands it these ImageNet weights
    (torchvision's constructor patched to load the file instead of downloading), on the same tensors."""
    import lpips
    import torchvision

    path = standins["lpips_alexnet"]
    ours = LPIPSMetric(path)
    real_alexnet = torchvision.models.alexnet

    def alexnet_from_file(pretrained=False, **kwargs):
        net = real_alexnet(weights=None)
        if pretrained:
            net.load_state_dict(torch.load(path, weights_only=True))
        return net

    with mock.patch.object(torchvision.models, "alexnet", alexnet_from_file):
        reference = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()
    a, b = _frames(seed=1), _frames(seed=2)
    ta = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    tb = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        expected = reference(ta, tb).reshape(-1).double().numpy()
    np.testing.assert_allclose(ours(a, b), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours(a, a), 0.0, atol=1e-7)
    assert set(ours.describe()["weights_sha256"]) == {path.name, "lpips/weights/v0.1/alex.pth"}


def test_lpips_never_downloads(standins, monkeypatch):
    import torch.hub

    def no_download(*a, **k):
        raise AssertionError("download attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    LPIPSMetric(standins["lpips_alexnet"])


# -- FID Inception ---------------------------------------------------------------------------------------------


def test_inception_features_and_fid_equal_pytorch_fid(standins):
    from pytorch_fid import inception as pf
    from pytorch_fid.fid_score import calculate_frechet_distance

    from pipeline.evaluation.frechet import frechet_of_features

    path = standins["fid_inception"]
    ours = InceptionFeatures(path)
    with mock.patch.object(pf, "load_state_dict_from_url", lambda *a, **k: torch.load(path, weights_only=True)):
        reference = pf.InceptionV3([3]).eval()
    a, b = _frames(4, 40, 40, seed=3), _frames(4, 40, 40, seed=4)
    with torch.no_grad():
        ref_a = reference(torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0)[0].squeeze(-1).squeeze(-1).double().numpy()
        ref_b = reference(torch.from_numpy(b).permute(0, 3, 1, 2).float() / 255.0)[0].squeeze(-1).squeeze(-1).double().numpy()
    fa, fb = ours(a), ours(b)
    assert fa.shape == (4, 2048)
    np.testing.assert_allclose(fa, ref_a, rtol=1e-5, atol=1e-6)
    # the distance on a few dimensions (a 2048-D sqrtm takes ~10 s here; frechet.py is tested at full rank in
    # test_evaluation_metrics.py): pytorch-fid's own statistics (np.cov) and function
    d = slice(0, 3)
    expected = calculate_frechet_distance(ref_a[:, d].mean(0), np.cov(ref_a[:, d], rowvar=False),
                                          ref_b[:, d].mean(0), np.cov(ref_b[:, d], rowvar=False))
    assert frechet_of_features(fa[:, d], fb[:, d], ddof=1) == pytest.approx(expected, rel=1e-4, abs=1e-6)


# -- FVD I3D -----------------------------------------------------------------------------------------------------


def test_i3d_is_called_with_stylegan_v_convention(standins):
    """Our call = StyleGAN-V's: uint8 values as float [B, 3, T, H, W], rescale and resize inside the script;
    the same as scaling to [-1, 1] and resizing to 224 ourselves and calling with both flags off."""
    from scipy import linalg

    path = standins["fvd_i3d"]
    ours = I3DFeatures(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        script = torch.jit.load(str(path))
    clips = np.random.default_rng(5).integers(0, 256, (2, 16, 32, 40, 3), dtype=np.uint8)
    x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float()
    manual = F.interpolate(2 * x / 255 - 1, size=(16, 224, 224), mode="trilinear", align_corners=False)
    with torch.no_grad():
        expected = script(manual, rescale=False, resize=False, return_features=True).double().numpy()
    got = ours(clips)
    assert got.shape == (2, 400)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # FVD: population covariance (StyleGAN-V's FeatureStats), scipy's sqrtm
    from pipeline.evaluation.frechet import frechet_of_features

    more = ours(np.random.default_rng(6).integers(0, 256, (3, 16, 32, 40, 3), dtype=np.uint8))
    a, b = got, more
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = a.T @ a / len(a) - np.outer(mu_a, mu_a), b.T @ b / len(b) - np.outer(mu_b, mu_b)
    ref = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
    assert frechet_of_features(a, b, ddof=0) == pytest.approx(ref, rel=1e-5, abs=1e-6)


# -- toy features ------------------------------------------------------------------------------------------------


def test_toy_features_lpips_formula_and_clip_statistics(tmp_path):
    from pipeline.analysis.toy import ToyAnalyzer

    ws = make_toy_workspace(tmp_path)
    toy = ToyFeatures(ToyAnalyzer.load(ws / ToyAnalyzer.CHECKPOINT))
    a, b = _frames(2, 32, 32, seed=7), _frames(2, 32, 32, seed=8)
    # by hand: per block, unit-normalise over channels, squared difference, channel sum, spatial mean; summed
    expected = np.zeros(2)
    for fa, fb in zip(toy.maps(a), toy.maps(b)):
        na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
        nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        expected += ((na - nb) ** 2).sum(1).mean(dim=(1, 2)).double().numpy()
    np.testing.assert_allclose(toy.lpips(a, b), expected, rtol=1e-5)
    np.testing.assert_allclose(toy.lpips(a, a), 0.0, atol=1e-6)
    pooled = toy.pooled(a)
    assert pooled.shape == (2, 32)  # 8 x width 4
    g = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)  # 2 clips, 3 frames, 2 dims
    clip = ToyFeatures.clip_features(g)
    np.testing.assert_allclose(clip[0], np.r_[g[0].mean(0), g[0].std(0), np.abs(np.diff(g[0], axis=0)).mean(0)])
