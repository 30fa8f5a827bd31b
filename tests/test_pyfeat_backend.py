"""The py-feat backend (pipeline/analysis/pyfeat.py).

py-feat's real models cannot be downloaded here, so real inference is not tested. Instead the end-to-end test
writes stand-in weights in py-feat's own file formats (constant-output landmark / pose / gaze heads, tiny
XGBoost AU classifiers) and runs the real py-feat Detector on them through the backend: that checks the
plumbing (only declared files are loaded, nothing is downloaded), the units and our sign mapping, not accuracy.
"""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from pipeline.analysis import BackendError, MotionFeatures
from pipeline.analysis.pyfeat import (
    AU_NAMES, GAZE_NAMES, MODEL_FILES, POSE_NAMES, PyFeatAnalyzer, _local_hub, motion_from_fex,
)
from pipeline.config import load_params, validate_params


@pytest.fixture(scope="module")
def feat():
    return pytest.importorskip("feat", reason="py-feat is not installed (the `pyfeat` extra; `make install` installs it)")


def _params_with_pyfeat_paths(real_params: dict, folder) -> object:
    for m in MODEL_FILES:
        real_params["assets"][m.asset]["path"] = str(folder / m.repo.split("/")[1] / m.filename)
    return validate_params(real_params)


# -- installation and declarations


def test_import_feat_works(feat):
    from feat.detector import Detectorv1

    assert feat.__version__.split(".")[0] == "2"
    assert "gaze_model" in Detectorv1.SUPPORTED_MODELS  # the 2.x Detector with L2CS gaze that the backend drives


def test_params_declare_every_model_file_with_its_fetch_command():
    assets = load_params().assets
    for m in MODEL_FILES:
        asset = assets[m.asset]
        assert asset.path.endswith(f"/{m.filename}"), m.asset
        assert f"hf download {m.repo} {m.filename} --local-dir" in asset.source, m.asset
        assert {"evaluate", "analyze"} <= set(asset.used_by), m.asset


def test_backend_names_match_installed_pyfeat(feat):
    from feat.pretrained import AU_LANDMARK_MAP
    from feat.utils import FEAT_FACEPOSE_COLUMNS_6D, FEAT_GAZE_COLUMNS

    assert tuple(AU_LANDMARK_MAP["Feat"]) == AU_NAMES
    assert set(FEAT_FACEPOSE_COLUMNS_6D[:3]) == {"Pitch", "Roll", "Yaw"}
    assert set(FEAT_GAZE_COLUMNS[:2]) == {"gaze_pitch", "gaze_yaw"}


# -- missing models


def test_missing_models_error_names_every_file_and_how_to_fetch_it(real_params, tmp_path):
    params = _params_with_pyfeat_paths(real_params, tmp_path / "nowhere")
    with pytest.raises(BackendError) as err:
        PyFeatAnalyzer.from_params(params)
    message = str(err.value)
    assert f"{len(MODEL_FILES)} of {len(MODEL_FILES)} model files" in message
    for m in MODEL_FILES:
        assert f"assets.{m.asset} ({m.repo}/{m.filename}" in message
        assert str(tmp_path / "nowhere" / m.repo.split("/")[1] / m.filename) in message
        assert f"hf download {m.repo} {m.filename} --local-dir" in message


def test_missing_models_error_lists_only_the_missing_ones(real_params, tmp_path):
    params = _params_with_pyfeat_paths(real_params, tmp_path)
    present = MODEL_FILES[0]
    target = tmp_path / present.repo.split("/")[1] / present.filename
    target.parent.mkdir(parents=True)
    target.write_bytes(b"stand-in")
    with pytest.raises(BackendError) as err:
        PyFeatAnalyzer.from_params(params)
    message = str(err.value)
    assert f"{len(MODEL_FILES) - 1} of {len(MODEL_FILES)} model files" in message
    assert f"assets.{present.asset} " not in message
    assert all(f"assets.{m.asset} " in message for m in MODEL_FILES[1:])


def test_undeclared_model_assets_are_named(real_params):
    for m in MODEL_FILES:
        real_params["assets"].pop(m.asset)
    with pytest.raises(BackendError) as err:
        PyFeatAnalyzer.from_params(validate_params(real_params))
    for m in MODEL_FILES:
        assert f"assets.{m.asset} ({m.repo}/{m.filename}, {m.role}): not declared" in str(err.value)


def test_pyfeat_not_installed_says_how_to_install(real_params, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "feat" else real_find_spec(name, *a))
    with pytest.raises(BackendError, match=r"py-feat is not installed: .*\.\[pyfeat\]"):
        PyFeatAnalyzer.from_params(_params_with_pyfeat_paths(real_params, tmp_path))


# -- nothing is downloaded


def test_hub_requests_are_answered_locally_or_refused(feat, tmp_path):
    import huggingface_hub
    import feat.utils

    local = tmp_path / "model.safetensors"
    local.write_bytes(b"x")
    served: set = set()
    with _local_hub({("py-feat/retinaface_r34", "model.safetensors"): local}, served):
        # py-feat's own helper, which imports hf_hub_download inside the function
        got = feat.utils.hf_hub_download_with_fallback("py-feat/retinaface_r34", "model.safetensors", "x", cache_dir="c")
        assert got == str(local)
        with pytest.raises(BackendError, match="py-feat/img2pose/config.json, which is not a declared model file"):
            huggingface_hub.hf_hub_download(repo_id="py-feat/img2pose", filename="config.json")
    assert served == {("py-feat/retinaface_r34", "model.safetensors")}
    assert huggingface_hub.hf_hub_download is huggingface_hub.file_download.hf_hub_download  # restored


def test_hub_is_offline_once_feat_is_imported(feat, monkeypatch, tmp_path):
    import huggingface_hub.constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from pipeline.analysis.pyfeat import _import_feat

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    _import_feat()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    # outside the backend's resolver too, a model not in the cache fails without any request
    with pytest.raises(LocalEntryNotFoundError):
        huggingface_hub.hf_hub_download("py-feat/l2cs", "l2cs_gaze360_resnet50.safetensors", cache_dir=str(tmp_path))


# -- py-feat's result table -> MotionFeatures


def _fex(feat, rows: list[dict]):
    """A py-feat result with its real columns (feat.utils / feat.pretrained), as Detectorv1.detect builds it."""
    import pandas as pd
    from feat.pretrained import AU_LANDMARK_MAP
    from feat.utils import FEAT_FACEBOX_COLUMNS, FEAT_FACEPOSE_COLUMNS_6D, FEAT_GAZE_COLUMNS

    columns = (list(FEAT_FACEBOX_COLUMNS) + list(FEAT_FACEPOSE_COLUMNS_6D) + list(AU_LANDMARK_MAP["Feat"])
               + list(FEAT_GAZE_COLUMNS) + ["input", "frame"])
    df = pd.DataFrame([{c: r.get(c, np.nan) for c in columns} for r in rows], columns=columns)
    return feat.Fex(df, au_columns=AU_LANDMARK_MAP["Feat"], facebox_columns=FEAT_FACEBOX_COLUMNS,
                    facepose_columns=FEAT_FACEPOSE_COLUMNS_6D, gaze_columns=FEAT_GAZE_COLUMNS, detector="Feat")


def _face(frame, x, w, score, pitch, roll, yaw, gaze_pitch, gaze_yaw, au):
    row = {"frame": frame, "input": "tensor", "FaceRectX": x, "FaceRectY": x, "FaceRectWidth": w,
           "FaceRectHeight": w, "FaceScore": score, "Pitch": pitch, "Roll": roll, "Yaw": yaw, "X": 0.0, "Y": 0.0,
           "Z": 0.0, "gaze_pitch": gaze_pitch, "gaze_yaw": gaze_yaw, "gaze_angle": 0.0}
    row.update({name: au + 0.01 * i for i, name in enumerate(AU_NAMES)})
    return row


def test_fex_to_motion_features_names_units_signs_and_missing_faces(feat):
    rows = [
        # frame 0: py-feat Pitch +0.1 rad (up), Yaw +0.2 (turn to subject's right), Roll +0.3 (tilt to subject's right)
        _face(0, 10, 200, 0.99, 0.1, 0.3, 0.2, 0.05, -0.1, 0.2),
        # frame 1: no face: py-feat's placeholder row (NaN box, score 0, NaN predictions)
        {"frame": 1, "input": "tensor", "FaceScore": 0.0},
        # frame 2: two faces; the small one has the higher score, the large one is the subject
        _face(2, 5, 40, 0.999, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9),
        _face(2, 20, 180, 0.9, -0.2, 0.0, -0.4, -0.15, 0.25, 0.1),
        # frame 3 has no row at all
    ]
    m = motion_from_fex(_fex(feat, rows), 4)
    assert isinstance(m, MotionFeatures) and len(m) == 4
    assert m.pose_names == POSE_NAMES == ("yaw", "pitch", "roll")
    assert m.gaze_names == GAZE_NAMES == ("gaze_yaw", "gaze_pitch")
    assert m.expression_names == AU_NAMES and m.expression_names[0] == "AU01" and len(AU_NAMES) == 20
    assert m.found.tolist() == [True, False, True, False]
    deg = math.degrees
    # ours: yaw > 0 towards image right (= subject's left), pitch > 0 down, roll > 0 clockwise on screen
    np.testing.assert_allclose(m.pose[0], [-deg(0.2), -deg(0.1), -deg(0.3)], rtol=1e-6)
    np.testing.assert_allclose(m.pose[2], [deg(0.4), deg(0.2), 0.0], rtol=1e-6, atol=1e-6)
    # gaze: py-feat gaze_yaw > 0 = subject's right (image left), gaze_pitch > 0 = up; ours image right / down
    np.testing.assert_allclose(m.gaze[0], [deg(0.1), -deg(0.05)], rtol=1e-6)
    np.testing.assert_allclose(m.gaze[2], [-deg(0.25), deg(0.15)], rtol=1e-6)
    np.testing.assert_allclose(m.expression[0], 0.2 + 0.01 * np.arange(20), rtol=1e-6)
    np.testing.assert_allclose(m.expression[2], 0.1 + 0.01 * np.arange(20), rtol=1e-6)  # the large face
    for i in (1, 3):
        assert np.isnan(m.pose[i]).all() and np.isnan(m.gaze[i]).all() and np.isnan(m.expression[i]).all()
    assert m.row(1) == {"found": False, "pose": dict.fromkeys(POSE_NAMES), "gaze": dict.fromkeys(GAZE_NAMES),
                        "expression": dict.fromkeys(AU_NAMES)}


def test_fex_with_foreign_frames_or_columns_is_rejected(feat):
    fex = _fex(feat, [_face(5, 0, 10, 0.9, 0, 0, 0, 0, 0, 0)])
    with pytest.raises(BackendError, match="frame indices outside 0..2"):
        motion_from_fex(fex, 3)
    with pytest.raises(BackendError, match="lacks columns"):
        motion_from_fex(fex.drop(columns=["gaze_yaw"]), 6)


# -- the whole py-feat pipeline on stand-in weights


RAW_POSE = (0.1, 0.2, 0.3)  # img2pose camera-frame rotation vector (x right, y down, z forward), radians
GAZE_YAW_DEG, GAZE_PITCH_DEG = 20.0, -12.0  # L2CS outputs, on its 4-degree bins


def _write_standin_weights(feat, folder) -> dict:
    """Every model file the backend declares, in py-feat's format, with heads that output known constants."""
    import xgboost as xgb
    from feat.au_detectors.StatLearning.SL_test import XGBClassifier
    from feat.face_detectors.Retinaface.Retinaface_test import Retinaface
    from feat.gaze_detectors.l2cs import l2cs_resnet50
    from feat.landmark_detectors.mobilefacenet_test import MobileFaceNet
    from feat.utils.face_mask import extract_hog_features_batched
    from feat.utils.face_pose_mlp import PoseMLP
    from feat.utils.image_operations import HOGLayer
    from safetensors.torch import save_file
    from skops.io import dump
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    paths = {m.asset: folder / m.repo.split("/")[1] / m.filename for m in MODEL_FILES}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    half = lambda sd: {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}  # noqa: E731
    torch.manual_seed(0)
    with torch.no_grad():  # RetinaFace's constructor turns autograd off process-wide; the context restores it
        save_file(half(Retinaface(device="cpu", pretrained=None).net.state_dict()), paths["pyfeat_retinaface"])

    # landmarks: a neutral face layout (py-feat's own resource) whatever the input, via the output BatchNorm's bias
    xy = np.loadtxt(os.path.join(feat.__path__[0], "resources", "neutral_face_coordinates.csv"), delimiter=",", skiprows=1)
    xy = 0.2 + 0.6 * (xy - xy.min(0)) / (xy.max(0) - xy.min(0))
    template = torch.tensor(np.concatenate([xy[:, 0], xy[:, 1]]).reshape(2, 68).T.reshape(-1), dtype=torch.float32)
    lm = MobileFaceNet([112, 112], 136, device="cpu")
    with torch.no_grad():
        lm.output_layer.linear.weight.zero_()
        lm.output_layer.bn.running_mean.zero_(), lm.output_layer.bn.running_var.fill_(1.0)
        lm.output_layer.bn.bias.copy_(template)
    torch.save({"state_dict": lm.state_dict()}, paths["pyfeat_mobilefacenet"])

    pose = PoseMLP()
    with torch.no_grad():
        pose.net[-1].weight.zero_()
        pose.net[-1].bias.copy_(torch.tensor([*RAW_POSE, 0.0, 0.0, 0.0]))
    save_file(pose.state_dict(), paths["pyfeat_pose_mlp"])
    paths["pyfeat_pose_mlp_config"].write_text(json.dumps({"architecture": {
        "hidden": [512, 256, 128], "dropout": 0.15, "output_normalization": {"mean": [0.0] * 6, "std": [1.0] * 6}}}))

    gaze = l2cs_resnet50()
    with torch.no_grad():
        for head, degrees in ((gaze.fc_yaw_gaze, GAZE_YAW_DEG), (gaze.fc_pitch_gaze, GAZE_PITCH_DEG)):
            head.weight.zero_(), head.bias.zero_()
            head.bias[int((degrees + 180.0) / 4.0)] = 60.0  # bin k is centred on 4k - 180 degrees
    save_file(half(gaze.state_dict()), paths["pyfeat_l2cs"])

    # AUs: 20 two-tree classifiers on random data, over a PCA of py-feat's HOG features of a 112 px crop
    hog, _ = extract_hog_features_batched(torch.rand(1, 3, 112, 112), template[None], hog_layer=HOGLayer(
        orientations=8, pixels_per_cell=8, cells_per_block=2, block_normalization="L2-Hys", feature_vector=True))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, hog.shape[1]))
    scaler = StandardScaler().fit(X)
    pca = PCA(n_components=3).fit(scaler.transform(X))
    au = XGBClassifier()
    classifiers = {k: xgb.XGBClassifier(n_estimators=2, max_depth=2).fit(rng.normal(size=(30, 3 + 136)), np.arange(30) % 2)
                   for k in au.au_keys}
    au.load_weights(scaler, pca, scaler, pca, scaler, pca, classifiers)
    dump(au, paths["pyfeat_xgb_au"])
    return paths


@pytest.fixture(scope="module")
def standin_analyzer(feat, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pyfeat_models")
    paths = _write_standin_weights(feat, folder)
    params = load_params()
    assets = {**params.assets}
    for name, path in paths.items():
        assets[name] = assets[name].model_copy(update={"path": str(path)})
    return PyFeatAnalyzer.from_params(params.model_copy(update={"assets": assets}), device="cpu"), paths


def test_pyfeat_detector_runs_on_declared_files_only(standin_analyzer):
    analyzer, paths = standin_analyzer
    analyzer._detector = None  # rebuild here: the build verifies every declared file was served
    detector = analyzer.detector()
    assert torch.is_grad_enabled()  # py-feat's RetinaFace turns autograd off process-wide: the build restores it
    assert detector.info["gaze_model"] == "l2cs" and detector.info["au_model"] == "xgb"
    assert detector.emotion_detector is None and detector.identity_detector is None
    weights = analyzer.weights()
    assert set(weights) == {str(p) for p in paths.values()}
    assert all(len(h) == 64 for h in weights.values())
    assert analyzer.describe()["backend"] == "pyfeat"
    with pytest.raises(BackendError, match="no identity network"):
        analyzer.identity(np.zeros((1, 256, 256, 3), np.uint8))


def test_pyfeat_pipeline_end_to_end_on_standin_weights(standin_analyzer, monkeypatch):
    analyzer, _ = standin_analyzer
    detector = analyzer.detector()
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 256, 256, 3), dtype=np.uint8)
    frames[1] = 0  # the stand-in face detector finds nothing in a black frame

    def faces(img):  # RetinaFace's output format: per image, [x1, y1, x2, y2, score] per face
        return [[] if int(im.max()) == 0 else [[40.0, 40.0, 216.0, 216.0, 0.99], [0.0, 0.0, 30.0, 30.0, 0.995]]
                for im in img]

    monkeypatch.setattr(detector.facepose_detector, "forward", faces)
    analyzer.batch_size = 2  # two py-feat batches: frame indices must carry over
    m = analyzer.motion(torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0))
    assert m.found.tolist() == [True, False, True]
    rx, ry, rz = RAW_POSE  # r_x > 0: nose down; r_y > 0: turns to image left; r_z > 0: clockwise on screen
    for i in (0, 2):
        np.testing.assert_allclose(m.pose[i], np.degrees([-ry, rx, rz]), rtol=1e-4)
        np.testing.assert_allclose(m.gaze[i], [-GAZE_YAW_DEG, -GAZE_PITCH_DEG], atol=1e-3)
        assert np.all((m.expression[i] >= 0) & (m.expression[i] <= 1))
    assert np.isnan(m.pose[1]).all() and np.isnan(m.gaze[1]).all() and np.isnan(m.expression[1]).all()
    assert torch.is_grad_enabled()  # analysing frames leaves the caller's autograd as it was
    assert "feat" in sys.modules and os.environ["HF_HUB_OFFLINE"] == "1"


def test_empty_batch_needs_no_detector(standin_analyzer):
    analyzer, _ = standin_analyzer
    m = PyFeatAnalyzer(analyzer.files).motion(np.zeros((0, 256, 256, 3), np.uint8))
    assert len(m) == 0 and m.expression_names == AU_NAMES
