import numpy as np
import pytest

from pipeline.io import atomic_dir, atomic_path, save_npy, save_torch, write_json


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text().strip().startswith("{")  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "prepared"
    with atomic_dir(target) as tmp:
        save_npy(tmp / "a.npy", np.arange(3))
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            save_npy(tmp / "b.npy", np.arange(3))
            raise ValueError("failed midway")
    assert sorted(p.name for p in target.iterdir()) == ["a.npy"]
    with atomic_dir(target) as tmp:
        save_npy(tmp / "c.npy", np.arange(2))
    assert sorted(p.name for p in target.iterdir()) == ["c.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_write_json_numpy_values(tmp_path):
    write_json(tmp_path / "m.json", {"x": np.float32(0.5), "n": np.int64(3), "v": np.arange(2)})
    assert (tmp_path / "m.json").read_text().count("0.5") == 1


def test_save_torch_is_byte_reproducible_and_loads(tmp_path):
    import torch

    obj = {"w": torch.arange(6.0).reshape(2, 3), "name": "x"}
    save_torch(tmp_path / "a.pt", obj)
    save_torch(tmp_path / "b.pt", obj)  # a different temporary file name each time: same bytes anyway
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(loaded["w"], obj["w"]) and loaded["name"] == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]

