"""ArcFace IR-SE50 (pSp's ID-loss network): names, crop, state-dict loading, ID loss, errors.

pSp's model_ir_se50.pth is not available here: every state dict is built from a randomly initialised IRSE50.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.analysis import FaceAnalyzer, identity_loss
from pipeline.models.arcface import (
    CROP_COLS,
    CROP_ROWS,
    IdentityEncoder,
    IRSE50,
    crop_face,
    load_irse50,
)


def _randomise(net: IRSE50, seed: int) -> IRSE50:
    """Random weights AND non-default BatchNorm statistics / PReLU slopes, so a state dict that failed to
    load (defaults kept) could not pass for one that loaded."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p + 0.01 * torch.randn(p.shape, generator=gen))
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(0.05 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return net.eval()


@pytest.fixture(scope="module")
def net() -> IRSE50:
    torch.manual_seed(0)
    return _randomise(IRSE50(), seed=1)


@pytest.fixture(scope="module")
def encoder(net) -> IdentityEncoder:
    return IdentityEncoder(net)


@pytest.fixture(scope="module")
def saved(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("arcface") / "model_ir_se50.pth"
    torch.save(net.state_dict(), path)
    return path


def _images(n: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen) * 2 - 1


def test_embedding_shape_unit_norm_and_deterministic(encoder):
    x = _images(2)
    with torch.no_grad():
        e1 = encoder.embed(x)
        assert e1.shape == (2, 512)
        torch.testing.assert_close(e1.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
        assert not torch.allclose(e1[0], e1[1], atol=1e-3)
        encoder.train()  # a parent's .train() must not switch on dropout / batch statistics
        assert not encoder.training and not encoder.net.training
        # Deterministic and batch-independent (eval BatchNorm): the first image alone embeds the same.
        torch.testing.assert_close(encoder.embed(x[:1]), e1[:1], atol=1e-5, rtol=1e-5)
    assert all(not p.requires_grad for p in encoder.parameters())


def test_crop_indices_on_a_position_ramp():
    rows = torch.arange(256).view(1, 1, 256, 1).float()
    cols = torch.arange(256).view(1, 1, 1, 256).float()
    ramp = (1000 * rows + cols).expand(2, 3, 256, 256)
    c = crop_face(ramp)
    assert c.shape == (2, 3, 188, 188)
    assert c[0, 0, 0, 0] == 35 * 1000 + 32
    assert c[0, 0, 0, -1] == 35 * 1000 + 219
    assert c[0, 0, -1, 0] == 222 * 1000 + 32
    assert c[0, 0, -1, -1] == 222 * 1000 + 219
    assert (CROP_ROWS, CROP_COLS) == ((35, 223), (32, 220))


def test_only_the_crop_window_matters(encoder):
    x = _images(1, seed=3)
    outside = torch.ones(1, 3, 256, 256, dtype=torch.bool)
    outside[:, :, 35:223, 32:220] = False
    y = torch.where(outside, _images(1, seed=4), x)  # differs from x only outside the window
    pre = encoder.preprocess(x)
    assert pre.shape == (1, 3, 112, 112)
    assert torch.equal(pre, encoder.preprocess(y))
    z = x.clone()
    z[:, :, 35, 32] += 0.5  # the window's first pixel
    z[:, :, 222, 219] -= 0.5  # and its last
    assert not torch.equal(pre, encoder.preprocess(z))


def test_other_sizes_are_resized_to_256(encoder):
    # A constant image stays constant under resizing: at 512 and 96 it must reach the network as at 256.
    colour = torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    p256 = encoder.preprocess(colour.expand(1, 3, 256, 256))
    for size in (512, 96):
        torch.testing.assert_close(encoder.preprocess(colour.expand(1, 3, size, size)), p256, atol=1e-6, rtol=0)
    # The resize happens before the crop: a 512 image whose left half is +1 and right half -1 keeps its
    # edge at column 128 of the 256 frame, i.e. column 96 of the crop (32..219): mean +1/3 -> 188 -> 112.
    half = torch.ones(1, 3, 512, 512)
    half[..., 256:] = -1
    p = encoder.preprocess(half)
    assert p.shape == (1, 3, 112, 112)
    torch.testing.assert_close(p.mean(), torch.tensor((96 - 92) / 188), atol=2e-3, rtol=0)
    with torch.no_grad():
        assert encoder.embed(_images(1, size=200)).shape == (1, 512)


def test_psp_names_and_structure(net):
    sd = net.state_dict()
    for key in (
        "input_layer.0.weight", "input_layer.1.running_var", "input_layer.2.weight",
        "body.0.res_layer.0.weight", "body.0.res_layer.1.weight", "body.0.res_layer.2.weight",
        "body.0.res_layer.3.weight", "body.0.res_layer.4.running_mean",
        "body.0.res_layer.5.fc1.weight", "body.0.res_layer.5.fc2.weight",
        "body.23.res_layer.5.fc2.weight",
        "output_layer.0.weight", "output_layer.3.weight", "output_layer.3.bias",
        "output_layer.4.weight", "output_layer.4.bias", "output_layer.4.running_var",
    ):
        assert key in sd, key
    # 50 layers = [3, 4, 14, 3] units: 24 bottlenecks; a conv shortcut only where the width changes.
    units = {int(k.split(".")[1]) for k in sd if k.startswith("body.")}
    assert units == set(range(24))
    conv_shortcuts = {int(k.split(".")[1]) for k in sd if ".shortcut_layer.0.weight" in k}
    assert conv_shortcuts == {3, 7, 21}
    assert sd["body.0.res_layer.5.fc1.weight"].shape == (4, 64, 1, 1)  # SE reduction 16
    assert sd["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert not any(k.startswith("output_layer.1") or k.startswith("output_layer.2") for k in sd)
    assert sum(p.numel() for p in net.parameters()) == 43_797_696  # pSp's IR-SE50: ~43.8M


def test_state_dict_roundtrip_through_load_irse50(net, saved):
    loaded = load_irse50(saved)
    assert isinstance(loaded, IRSE50) and not loaded.training
    x = _images(1, size=112, seed=5)
    with torch.no_grad():
        ref = net(x)
        torch.testing.assert_close(loaded(x), ref, atol=0, rtol=0)
        assert not torch.allclose(IRSE50().eval()(x), ref, atol=1e-3)  # a fresh net is different


def test_state_dict_without_num_batches_tracked_loads(net, tmp_path):
    # Pre-0.4.1 PyTorch files lack the BatchNorm counters; PyTorch's strict load tolerates that, so must we.
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    loaded = load_irse50(path)
    torch.testing.assert_close(loaded.state_dict()["output_layer.3.weight"], net.state_dict()["output_layer.3.weight"])


class _Unit(FaceAnalyzer):
    """A differentiable cosine backend whose embedding is the flattened image, L2-normalised (exact, instant)."""

    name, differentiable, distance_name = "unit", True, "cosine"

    def identity(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(1)
        return flat / flat.norm(dim=1, keepdim=True)


def test_id_loss_is_psp_definition():
    gen = torch.Generator().manual_seed(8)
    y_hat = torch.randn(3, 2, 4, 4, generator=gen, requires_grad=True)
    y = torch.randn(3, 2, 4, 4, generator=gen, requires_grad=True)
    loss = identity_loss(_Unit(), y_hat, y)
    a, b = y_hat.detach().flatten(1), y.detach().flatten(1)
    expected = (1 - torch.nn.functional.cosine_similarity(a, b, dim=1)).mean()
    assert loss.shape == ()
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    loss.backward()
    assert y_hat.grad.abs().sum() > 0 and y.grad is None  # pSp detaches the target embedding
    assert identity_loss(_Unit(), y, 2 * y).abs().item() < 1e-6  # same direction: zero


def test_id_loss_zero_for_same_positive_for_different_and_differentiable(encoder):
    from pipeline.analysis.arcface import ArcFaceAnalyzer

    arcface = ArcFaceAnalyzer(encoder, weights={})
    y = _images(1, seed=6)
    with torch.no_grad():
        assert abs(identity_loss(arcface, y, y.clone()).item()) < 1e-5
    y_hat = _images(1, seed=7).requires_grad_(True)
    loss = identity_loss(arcface, y_hat, y)
    assert loss.item() > 1e-4
    loss.backward()
    assert y_hat.grad is not None and torch.isfinite(y_hat.grad).all() and y_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())  # frozen


def test_id_loss_refuses_a_backend_that_cannot_serve_it():
    from pipeline.analysis import BackendError

    class Descriptor(_Unit):
        name, differentiable, distance_name = "descriptor", False, "euclidean"

    with pytest.raises(BackendError, match="cannot serve the ID loss.*toy, arcface"):
        identity_loss(Descriptor(), torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="batch sizes differ"):
        identity_loss(_Unit(), torch.ones(2, 3, 4, 4), torch.ones(1, 3, 4, 4))


def test_missing_file_error(tmp_path):
    path = tmp_path / "nowhere" / "model_ir_se50.pth"
    with pytest.raises(FileNotFoundError) as err:
        load_irse50(path)
    msg = str(err.value)
    assert str(path) in msg and "model_ir_se50.pth" in msg
    assert "pixel2style2pixel" in msg and "assets.arcface_ir_se50" in msg


def test_wrong_state_dict_errors(saved, tmp_path):
    # Right names, empty tensors (a small file): also every shape mismatches, which is reported too.
    sd = {k: torch.zeros(0) for k in torch.load(saved, weights_only=True)}
    bad = dict(sd)
    del bad["body.5.res_layer.5.fc1.weight"]
    bad["head.kernel"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError) as err:
        load_irse50(path)
    msg = str(err.value)
    assert "missing" in msg and "body.5.res_layer.5.fc1.weight" in msg
    assert "unexpected" in msg and "head.kernel" in msg

    # An IR-SE50 built for 224 px (Linear over 512*14*14) has the right names but a wrong shape.
    torch.save({"output_layer.3.weight": torch.zeros(512, 512 * 14 * 14)}, path)
    with pytest.raises(ValueError, match=r"shape mismatches \(output_layer\.3\.weight: found \[512, 100352\], expected \[512, 25088\]"):
        load_irse50(path)

    torch.save([1, 2, 3], path)  # not a dict at all
    with pytest.raises(ValueError, match="state dict"):
        load_irse50(path)


# --------------------------------------------------------------------- the `arcface` analysis backend


@pytest.fixture(scope="module")
def analyzer(encoder):
    from pipeline.analysis.arcface import ArcFaceAnalyzer

    return ArcFaceAnalyzer(encoder, weights={}, batch_size=1)  # batch 1: every 2-image call spans two batches


def test_analyzer_shapes_unit_norm_deterministic_and_batch_independent(analyzer, encoder):
    x = _images(2, seed=11)
    e = analyzer.identity(x)  # two batches of one image
    assert e.shape == (2, 512) and e.dtype == torch.float32 and not e.requires_grad
    torch.testing.assert_close(e.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    # the same numbers from one batch of two through the ID-loss embedding itself: deterministic, batch-independent
    with torch.no_grad():
        torch.testing.assert_close(e, encoder.embed(x), atol=1e-5, rtol=1e-5)
    d = analyzer.distance(e[:1], e)
    assert d[0].abs() < 1e-5 and d[1] > 1e-4  # cosine distance: 0 to itself


def test_analyzer_gradient_flows_to_float_images(analyzer):
    x = _images(2, seed=12).requires_grad_(True)
    e = analyzer.identity(x)
    assert e.requires_grad
    target = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(0)), dim=0)
    (1 - e[1] @ target).backward()  # the loss reads the second batch only
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad[1].abs().sum() > 0 and x.grad[0].abs().sum() == 0
    assert analyzer.differentiable


def test_analyzer_accepts_uint8_frames(analyzer):
    import numpy as np

    from pipeline.analysis import as_images

    frames = np.random.default_rng(3).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    e = analyzer.identity(frames)
    assert e.shape == (1, 512)
    torch.testing.assert_close(e, analyzer.identity(as_images(frames)), atol=1e-6, rtol=0)


def test_analyzer_has_no_motion_and_describes_itself(analyzer, encoder):
    from pipeline.analysis import BackendError
    from pipeline.analysis.arcface import ArcFaceAnalyzer

    with pytest.raises(BackendError, match="motion backends: toy, dlib, pyfeat"):
        analyzer.motion(_images(1))
    assert analyzer.describe() == {"backend": "arcface", "weights": {}}
    named = ArcFaceAnalyzer(encoder, weights={"/x/model_ir_se50.pth": "ab" * 32})
    assert named.describe() == {"backend": "arcface", "weights": {"/x/model_ir_se50.pth": "ab" * 32}}
    assert (analyzer.name, analyzer.distance_name, analyzer.input_size, analyzer.threshold) == ("arcface", "cosine", 256, None)


def test_missing_asset_names_the_file_and_how_to_get_it(real_params, tmp_path):
    from pipeline.analysis import load_analyzer
    from pipeline.analysis.arcface import ArcFaceAnalyzer
    from pipeline.assets import AssetError
    from pipeline.config import validate_params

    missing = tmp_path / "assets" / "model_ir_se50.pth"
    real_params["assets"]["arcface_ir_se50"]["path"] = str(missing)
    params = validate_params(real_params)
    for build in (lambda: ArcFaceAnalyzer.from_params(params), lambda: load_analyzer("arcface", params)):
        with pytest.raises(AssetError) as err:
            build()
        msg = str(err.value)
        assert str(missing) in msg and "model_ir_se50.pth" in msg
        assert "pixel2style2pixel README" in msg and "IR-SE50 Model" in msg


def test_from_params_loads_the_asset_and_reports_its_sha256(net, saved, real_params):
    import hashlib

    from pipeline.analysis.arcface import ArcFaceAnalyzer
    from pipeline.config import validate_params

    real_params["assets"]["arcface_ir_se50"]["path"] = str(saved)
    a = ArcFaceAnalyzer.from_params(validate_params(real_params))
    assert a.weights() == {str(saved): hashlib.sha256(saved.read_bytes()).hexdigest()}
    loaded, expected = a.encoder.net.state_dict(), net.state_dict()  # the file's weights, not a fresh net's
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
