import hashlib

import pytest

from pipeline.assets import AssetError, check, require, resolve_path
from pipeline.config import Asset


def _asset(path, sha=None):
    return Asset(path=str(path), sha256=sha, source="copy it from the lab share", used_by=["prepare"])


def test_present_missing_mismatch_unverified(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    assert check("w", _asset(f, good)).status == "present"
    assert check("w", _asset(f, "0" * 64)).status == "checksum-mismatch"
    assert check("w", _asset(f)).status == "unverified"
    assert check("w", _asset(tmp_path / "absent.pt", good)).status == "missing"


def test_require_errors_name_the_file_and_the_fix(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"other weights")
    with pytest.raises(AssetError, match=r"asset 'w' is missing: expected .*absent.pt\. Get it: copy it from the lab share"):
        require("w", {"w": _asset(tmp_path / "absent.pt", "0" * 64)})
    with pytest.raises(AssetError, match="different file"):
        require("w", {"w": _asset(f, "0" * 64)})
    with pytest.raises(AssetError, match="assets.nope is not declared"):
        require("nope", {})
    assert require("w", {"w": _asset(f, hashlib.sha256(b"other weights").hexdigest())}) == f


def test_package_paths_resolve_without_import():
    path = resolve_path("pkg:face_recognition_models/models/shape_predictor_68_face_landmarks.dat")
    assert path is not None and path.name == "shape_predictor_68_face_landmarks.dat"
    assert resolve_path("pkg:no_such_package_xyz/model.dat") is None


def test_the_declared_dlib_asset_is_present(real_params):
    from pipeline.config import validate_params

    assets = validate_params(real_params).assets
    assert check("dlib_landmarks68", assets["dlib_landmarks68"]).status == "present"
