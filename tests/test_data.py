import pandas as pd
import pytest

from pipeline.config import DataParams
from pipeline.data import DataError, index_folder


def _params(**folder):
    return DataParams(source="folder", folder=folder)


def test_tree_layout_is_indexed(tmp_path):
    for ident, clip in [("alice", "a1"), ("alice", "a2"), ("bob", "b1")]:
        (tmp_path / "videos" / ident).mkdir(parents=True, exist_ok=True)
        (tmp_path / "videos" / ident / f"{clip}.mp4").write_bytes(b"x")
    (tmp_path / "videos" / "bob" / "notes.txt").write_text("not a video")
    summary = index_folder(tmp_path / "raw", _params(root=tmp_path / "videos"), tmp_path)
    assert summary == {"source": "folder", "videos": 3, "identities": 2, "missing_files": 0}
    index = pd.read_csv(tmp_path / "raw" / "index.csv", keep_default_na=False)
    assert list(index["identity"]) == ["alice", "alice", "bob"]
    assert list(index["clip"]) == ["a1", "a2", "b1"]
    assert (index["bytes"] == 1).all()


def test_manifest_with_ranges_and_relative_paths(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"xy")
    (tmp_path / "m.csv").write_text("path,identity,start,end\nv.mp4,p1,1.5,4\nv.mp4,p1,,\nmissing.mp4,p2,,\n")
    summary = index_folder(tmp_path / "raw", _params(manifest=tmp_path / "m.csv"), tmp_path)
    assert summary["videos"] == 3 and summary["missing_files"] == 1
    index = pd.read_csv(tmp_path / "raw" / "index.csv", keep_default_na=False)
    assert float(index.loc[0, "start"]) == 1.5 and float(index.loc[0, "end"]) == 4
    assert index.loc[0, "clip"] != index.loc[1, "clip"]
    # inside the workspace: relative to the raw folder (two checkouts write the same index); outside: absolute
    assert index.loc[0, "path"] == "../v.mp4" and (tmp_path / "raw" / index.loc[0, "path"]).resolve() == tmp_path / "v.mp4"
    elsewhere = tmp_path / "workspace"
    elsewhere.mkdir()
    index_folder(elsewhere / "raw", _params(manifest=tmp_path / "m.csv"), elsewhere)
    assert pd.read_csv(elsewhere / "raw" / "index.csv").loc[0, "path"] == str(tmp_path / "v.mp4")


@pytest.mark.parametrize("content, message", [
    ("file,who\nv.mp4,p1\n", "lacks column"),
    ("path,identity,start,end\nv.mp4,p1,5,2\n", "end .* must be after start"),
    ("path,identity,start\nv.mp4,p1,soon\n", "not a number of seconds"),
])
def test_bad_manifests(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        index_folder(tmp_path / "raw", _params(manifest=tmp_path / "m.csv"), tmp_path)
    assert not (tmp_path / "raw").exists()


def test_empty_or_missing_root(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        index_folder(tmp_path / "raw", _params(root=tmp_path / "nowhere"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no videos"):
        index_folder(tmp_path / "raw", _params(root=tmp_path / "empty"), tmp_path)
