"""Edit directions (Eq. 4): GANSpace components against an independent PCA, supervised directions against a known
linear attribute, the --edit syntax and its ramp, and the saved file's checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.checkpoint import CheckpointError
from pipeline.edits import Direction, EditError, EditSchedule, ganspace_directions, load_directions, parse_edit, \
    save_directions, supervised_directions
from tests.test_reenact import tiny_networks


def test_ganspace_directions_are_the_principal_axes_of_w():
    G = tiny_networks()[0]
    dirs = ganspace_directions(G, n_components=3, samples=4000, seed=0)
    assert [d.name for d in dirs] == ["pc0", "pc1", "pc2"] and all(d.kind == "pca" for d in dirs)
    vectors = torch.stack([d.vector[0] for d in dirs]).double()
    assert all(torch.equal(d.vector, d.vector[:1].expand_as(d.vector)) for d in dirs)  # every W+ row alike
    # an independent sample of W and numpy's eigen-decomposition of its covariance
    with torch.no_grad():
        w = G.map(torch.randn(20000, G.style_dim, generator=torch.Generator().manual_seed(123))).double().numpy()
    values, axes = np.linalg.eigh(np.cov(w, rowvar=False))
    order = np.argsort(values)[::-1]
    for k, d in enumerate(vectors.numpy()):
        std = np.linalg.norm(d)
        assert abs(std - np.sqrt(values[order[k]])) / np.sqrt(values[order[k]]) < 0.1  # one std of W along it
        assert abs(np.dot(d / std, axes[:, order[k]])) > 0.95  # the same axis (sign aside)
    gram = (vectors / vectors.norm(dim=1, keepdim=True)) @ (vectors / vectors.norm(dim=1, keepdim=True)).T
    assert torch.allclose(gram, torch.eye(3, dtype=gram.dtype), atol=1e-6)


def test_supervised_direction_recovers_a_known_linear_attribute():
    rng = np.random.default_rng(0)
    L, D, N = 3, 8, 600
    u = rng.normal(size=L * D)
    w = rng.normal(size=(N, L, D))
    attr = w.reshape(N, -1) @ u * 0.5 + 2.0
    noise_attr = rng.normal(size=N)  # unrelated to W
    ys = np.stack([attr, noise_attr, np.ones(N)], axis=1)  # the third is constant: skipped
    wh = rng.normal(size=(200, L, D))
    held = np.stack([wh.reshape(200, -1) @ u * 0.5 + 2.0, rng.normal(size=200), np.ones(200)], axis=1)
    dirs = supervised_directions(w, ys, ["a", "noise", "const"], ridge=1e-3, heldout=(wh, held))
    assert [d.name for d in dirs] == ["a", "noise"]
    a = dirs[0]
    assert a.vector.shape == (L, D) and a.kind == "supervised"
    d = a.vector.double().numpy().reshape(-1)
    assert abs(np.dot(d, u) / np.linalg.norm(d) / np.linalg.norm(u)) > 0.99  # along the true axis
    # strength 1 raises the TRUE attribute by one standard deviation (of the training frames)
    assert np.dot(d, u) * 0.5 == pytest.approx(attr.std(), rel=0.02)
    assert a.r_heldout > 0.99 and abs(dirs[1].r_heldout) < 0.3


def test_edit_syntax_and_ramp():
    assert parse_edit("glasses=1.5") == ("glasses", 1.5, 1.5)
    assert parse_edit(" pc0 = -2:2 ") == ("pc0", -2.0, 2.0)
    assert parse_edit("hair_r=+1e-1") == ("hair_r", 0.1, 0.1)
    for bad in ("glasses", "glasses=", "=1", "glasses=a", "glasses=1:2:3"):
        with pytest.raises(EditError, match="NAME=STRENGTH"):
            parse_edit(bad)
    d = Direction("pc0", torch.ones(2, 3), "pca", "")
    s = EditSchedule.parse(["pc0=-2:2"], [d], n_frames=5)
    out = s(np.arange(5))
    assert out.shape == (5, 2, 3)
    assert out[:, 0, 0].tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    two = EditSchedule.parse(["pc0=1", "pc0=0.5"], [d], n_frames=3)(np.array([0, 2]))
    assert torch.equal(two, torch.full((2, 2, 3), 1.5))
    with pytest.raises(EditError, match=r"no direction 'glasses'; directions: pc0"):
        EditSchedule.parse(["glasses=1"], [d], n_frames=3)


def test_saved_directions_belong_to_their_networks(tmp_path):
    d = [Direction("pc0", torch.randn(2, 3), "pca", "one std"), Direction("beard", torch.randn(2, 3), "supervised",
                                                                         "+1 std", 0.8)]
    inputs = {"generator.pt": "a" * 64, "encoder.pt": "b" * 64}
    save_directions(tmp_path / "edits.pt", d, inputs)
    back = load_directions(tmp_path / "edits.pt", inputs)
    assert [(x.name, x.kind, x.r_heldout) for x in back] == [("pc0", "pca", None), ("beard", "supervised", 0.8)]
    assert torch.equal(back[1].vector, d[1].vector)
    with pytest.raises(CheckpointError, match="fitted for other generator / encoder files"):
        load_directions(tmp_path / "edits.pt", {**inputs, "encoder.pt": "c" * 64})
