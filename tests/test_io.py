import numpy as np
import pytest

from pipeline.io import atomic_dir, atomic_path, save_npy, write_json


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
