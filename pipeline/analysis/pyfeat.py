"""The `pyfeat` backend of pipeline.analysis: head pose, gaze and action units from py-feat 2.x.

The paper measured AU / gaze / pose temporal correlations with OpenFace; this backend answers the same
questions with py-feat (`pip install -e '.[pyfeat]'`; an extra, see pyproject.toml). It runs py-feat's
`Detectorv1` pipeline with the emotion and identity heads off, built ONLY from the model files declared in
params.yaml (one asset per file, so each can carry a checksum):

  asset                    Hugging Face repo / file py-feat asks for                  role
  pyfeat_retinaface        py-feat/retinaface_r34 / model.safetensors                 face detection (RetinaFace, ResNet-34)
  pyfeat_mobilefacenet     py-feat/mobilefacenet / mobilefacenet_model_best.pth.tar   68 landmarks (input to AUs and pose)
  pyfeat_xgb_au            py-feat/xgb_au / xgb_au_classifier_v2.skops                20 AUs: XGBoost on HOG + landmarks
  pyfeat_pose_mlp          py-feat/pose_mlp_v2 / pose_mlp_v2.safetensors              head pose: MLP on the 68 landmarks,
  pyfeat_pose_mlp_config   py-feat/pose_mlp_v2 / pose_mlp_v2.json                     distilled from img2pose (+ its config)
  pyfeat_l2cs              py-feat/l2cs / l2cs_gaze360_resnet50.safetensors           gaze (L2CS-Net, trained on Gaze360)

Nothing is ever downloaded. py-feat 2.1 fetches every model with `huggingface_hub.hf_hub_download(repo, file,
cache_dir=<site-packages>/feat/resources)` and has no argument for local files, so while py-feat builds and
runs, `_local_hub` answers those calls with the declared files (a request for anything else is an error, not a
download), and the process is put in Hugging Face offline mode (HF_HUB_OFFLINE=1, set before py-feat is
imported). The pose MLP is loaded lazily by py-feat and silently left out (pose = NaN) when its files are
missing; the build therefore loads it up front and fails loudly instead.

Output (`motion`), per frame; one face per frame (the largest box when py-feat finds several):
- pose ("yaw", "pitch", "roll"), degrees, OUR convention (pipeline/synth/face.py, dlib_features.py): yaw > 0
  the face turns towards the image right, pitch > 0 it looks down, roll > 0 it rotates clockwise on screen.
  py-feat's Fex columns Pitch / Roll / Yaw are RADIANS (components of img2pose's rotation vector, re-labelled)
  in the convention its detector code states: +Pitch = up, +Yaw = turn to the subject's right (= image left),
  +Roll = tilt to the subject's right (the top of the head moves to the image left: counter-clockwise on
  screen). It derives them from img2pose's rotation vector r (OpenCV camera frame: x right, y down, z forward) as
  Pitch = -r_x, Yaw = r_y, Roll = -r_z, so: yaw = -deg(Yaw), pitch = -deg(Pitch), roll = -deg(Roll).
- gaze ("gaze_yaw", "gaze_pitch"), degrees, our convention as the toy world's: gaze_yaw > 0 looks towards
  the image right, gaze_pitch > 0 looks down. py-feat's gaze_yaw / gaze_pitch are L2CS-Net's outputs in
  RADIANS, +gaze_pitch = up, +gaze_yaw = the subject's right (= image left) (py-feat 2.1's stated Fex
  convention; its plotting / geometric-gaze helpers say the opposite for yaw: the least certain sign here), so
  gaze_yaw = -deg(gaze_yaw), gaze_pitch = -deg(gaze_pitch). py-feat calls these angles head-centric; L2CS-Net
  is trained on Gaze360's camera-frame labels, so they may include the head's rotation (unsettled by the source).
- expression: the 20 AUs under py-feat's names ("AU01" ... "AU43"), each the XGBoost classifier's
  probability that the AU is present, in [0, 1]: NOT OpenFace's 0-5 intensities (AU*_r). AU11, AU24 and AU43
  have no OpenFace counterpart, AU28 only OpenFace's presence output; OpenFace's AU45 (blink) is not here.
Frames where py-feat finds no face are NaN with found False.

Not tested here: the real py-feat models cannot be downloaded on the machine this was written on, so real
inference (and with it the sign conventions above, which come from reading py-feat's source) is unverified.
tests/test_pyfeat_backend.py runs the whole py-feat pipeline on stand-in weights of the right format
(plumbing, units and sign mapping), not the real networks.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np
import torch

from pipeline.analysis import BackendError, FaceAnalyzer, MotionFeatures, as_frames

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.config import Asset, Params


@dataclass(frozen=True)
class ModelFile:
    asset: str  # name under params.yaml `assets:`
    repo: str  # Hugging Face repo id py-feat asks for
    filename: str  # file name inside that repo
    role: str

    @property
    def fetch(self) -> str:
        """The command that fetches it (on a machine with internet) to the default path of params.yaml."""
        return f"hf download {self.repo} {self.filename} --local-dir assets/py-feat/{self.repo.split('/')[1]}"


MODEL_FILES = (
    ModelFile("pyfeat_retinaface", "py-feat/retinaface_r34", "model.safetensors", "face detection (RetinaFace ResNet-34)"),
    ModelFile("pyfeat_mobilefacenet", "py-feat/mobilefacenet", "mobilefacenet_model_best.pth.tar", "68 landmarks"),
    ModelFile("pyfeat_xgb_au", "py-feat/xgb_au", "xgb_au_classifier_v2.skops", "AU classifiers (XGBoost)"),
    ModelFile("pyfeat_pose_mlp", "py-feat/pose_mlp_v2", "pose_mlp_v2.safetensors", "head pose MLP weights"),
    ModelFile("pyfeat_pose_mlp_config", "py-feat/pose_mlp_v2", "pose_mlp_v2.json", "head pose MLP config"),
    ModelFile("pyfeat_l2cs", "py-feat/l2cs", "l2cs_gaze360_resnet50.safetensors", "gaze (L2CS-Net ResNet-50)"),
)

# py-feat 2.1's Fex column names (feat.pretrained.AU_LANDMARK_MAP["Feat"], feat.utils.FEAT_*_COLUMNS);
# checked against the installed py-feat when the detector is built, so a renamed column fails loudly.
AU_NAMES = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU11", "AU12",
            "AU14", "AU15", "AU17", "AU20", "AU23", "AU24", "AU25", "AU26", "AU28", "AU43")
FACEBOX_COLUMNS = ("FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight", "FaceScore")
# (our channel, py-feat column, factor): ours = factor * degrees(py-feat's radians); signs derived in the docstring
POSE_FROM_PYFEAT = (("yaw", "Yaw", -1.0), ("pitch", "Pitch", -1.0), ("roll", "Roll", -1.0))
GAZE_FROM_PYFEAT = (("gaze_yaw", "gaze_yaw", -1.0), ("gaze_pitch", "gaze_pitch", -1.0))
POSE_NAMES = tuple(ours for ours, _, _ in POSE_FROM_PYFEAT)
GAZE_NAMES = tuple(ours for ours, _, _ in GAZE_FROM_PYFEAT)

INSTALL_HINT = "pip install -c requirements.lock -e '.[pyfeat]' (py-feat is an optional extra)"
# py-feat reads these to load a model from elsewhere than the hub; cleared while it runs so that only the
# declared files are used (weights() must name what produced the numbers)
_PYFEAT_PATH_OVERRIDES = ("FEAT_POSE_MLP_PATH", "FEAT_MULTITASK_WEIGHTS", "FEAT_ARCFACE_R50_PATH")
_HUB_LOCK = threading.RLock()  # _local_hub patches module attributes: one py-feat call at a time


def missing_models_message(problems: list[str]) -> str:
    return (
        f"py-feat backend: {len(problems)} of {len(MODEL_FILES)} model files not usable (nothing is downloaded at "
        "run time; fetch them on a machine with internet, or point the asset paths in params.yaml at a Hugging "
        "Face cache that has them, e.g. <site-packages>/feat/resources/models--py-feat--<repo>/snapshots/<rev>/):\n"
        + "\n".join(f"  - {p}" for p in problems)
    )


def resolve_model_files(assets: Mapping[str, "Asset"]) -> dict[str, Path]:
    """{asset name: verified path} of every py-feat model file, or BackendError naming EVERY unusable one."""
    from pipeline.assets import check, sha256_of

    found: dict[str, Path] = {}
    problems: list[str] = []
    for model in MODEL_FILES:
        what = f"assets.{model.asset} ({model.repo}/{model.filename}, {model.role})"
        if model.asset not in assets:
            problems.append(f"{what}: not declared in params.yaml; declare it with path, sha256, source. "
                            f"Get it: {model.fetch}")
            continue
        status = check(model.asset, assets[model.asset])
        where = status.path or assets[model.asset].path
        if status.status == "missing":
            problems.append(f"{what}: missing, expected {where}. Get it: {status.source}")
        elif status.status == "checksum-mismatch":
            problems.append(f"{what}: {where} has sha256 {sha256_of(status.path)}, expected "
                            f"{assets[model.asset].sha256}. Get the right one: {status.source}")
        else:
            found[model.asset] = status.path
    if problems:
        raise BackendError(missing_models_message(problems))
    return found


def enable_hub_offline() -> None:
    """Hugging Face offline mode for this process: huggingface_hub reads HF_HUB_OFFLINE once, at import, so the
    module constant is set too in case something imported it already."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def _import_feat():
    """import feat, offline, keeping the process's thread settings (py-feat sets OMP_NUM_THREADS=1 at import to
    dodge a libomp clash that only exists on macOS; elsewhere it would make later torch / BLAS single-threaded)."""
    if "feat" in sys.modules:
        enable_hub_offline()
        return sys.modules["feat"]
    if importlib.util.find_spec("feat") is None:
        raise BackendError(f"py-feat is not installed: {INSTALL_HINT}")
    enable_hub_offline()
    had_omp, threads = "OMP_NUM_THREADS" in os.environ, torch.get_num_threads()
    import feat  # noqa: PLC0415  (slow, optional: only when the backend is used)

    enable_hub_offline()
    if sys.platform != "darwin" and not had_omp:
        os.environ.pop("OMP_NUM_THREADS", None)
        torch.set_num_threads(threads)
    return feat


@contextlib.contextmanager
def _local_hub(files: Mapping[tuple[str, str], Path], served: set | None = None) -> Iterator[None]:
    """While active, every `hf_hub_download(repo_id, filename, ...)` that py-feat makes returns the declared local
    file for (repo_id, filename) and records it in `served`; any other request raises BackendError. Also clears
    py-feat's env overrides for model paths."""
    def hf_hub_download(repo_id=None, filename=None, *args, **kwargs):
        path = files.get((repo_id, filename))
        if path is None:
            raise BackendError(
                f"py-feat asked for {repo_id}/{filename}, which is not a declared model file of the pyfeat "
                f"backend (declared: {', '.join(f'{r}/{f}' for r, f in files)}); nothing is downloaded. The "
                "installed py-feat may differ from the one this backend was written for (2.1)."
            )
        if served is not None:
            served.add((repo_id, filename))
        return str(path)

    import huggingface_hub
    import huggingface_hub.file_download

    # `from huggingface_hub import hf_hub_download` happens both at py-feat's module level and inside its
    # functions, so patch the package, its defining module and every loaded feat module that holds a copy
    original = huggingface_hub.file_download.hf_hub_download
    targets = [huggingface_hub, huggingface_hub.file_download] + [
        module for name, module in list(sys.modules.items())
        if (name == "feat" or name.startswith("feat.")) and getattr(module, "hf_hub_download", None) is original
    ]
    with _HUB_LOCK:
        saved_env = {k: os.environ.pop(k) for k in _PYFEAT_PATH_OVERRIDES if k in os.environ}
        for module in targets:
            module.hf_hub_download = hf_hub_download
        try:
            yield
        finally:
            for module in targets:
                module.hf_hub_download = original
            os.environ.update(saved_env)


def motion_from_fex(fex: "pd.DataFrame", n_frames: int) -> MotionFeatures:
    """py-feat's result table (a Fex: one row per detected face, a NaN-box row for a frame without a face, column
    `frame` = 0-based index of the input frame) -> MotionFeatures of n_frames in our names, units and signs.
    Several faces in a frame: the largest box is the subject (the frames are aligned crops of one face)."""
    needed = ("frame",) + FACEBOX_COLUMNS + tuple(c for _, c, _ in POSE_FROM_PYFEAT + GAZE_FROM_PYFEAT) + AU_NAMES
    absent = [c for c in needed if c not in fex.columns]
    if absent:
        raise BackendError(f"py-feat's result lacks columns {absent}; the installed py-feat differs from 2.1")
    frame = fex["frame"].to_numpy()
    if len(frame) and (np.any(frame < 0) or np.any(frame >= n_frames) or np.any(frame != np.round(frame))):
        raise BackendError(f"py-feat's result has frame indices outside 0..{n_frames - 1}")
    frame = frame.astype(np.int64)
    width = fex["FaceRectWidth"].to_numpy(dtype=np.float64)
    height = fex["FaceRectHeight"].to_numpy(dtype=np.float64)
    score = fex["FaceScore"].to_numpy(dtype=np.float64)
    area = width * height
    face = np.isfinite(area)  # no-face rows carry a NaN box

    pose = np.full((n_frames, len(POSE_NAMES)), np.nan, dtype=np.float32)
    gaze = np.full((n_frames, len(GAZE_NAMES)), np.nan, dtype=np.float32)
    expression = np.full((n_frames, len(AU_NAMES)), np.nan, dtype=np.float32)
    found = np.zeros(n_frames, dtype=bool)
    if face.any():
        rows = np.flatnonzero(face)
        # per frame, the row with the largest box (ties: the higher detection score): sort, keep each frame's last
        order = rows[np.lexsort((np.nan_to_num(score[rows], nan=-np.inf), area[rows], frame[rows]))]
        last = np.append(frame[order][1:] != frame[order][:-1], True)
        pick, at = order[last], frame[order][last]
        for i, (_, column, factor) in enumerate(POSE_FROM_PYFEAT):
            pose[at, i] = factor * np.degrees(fex[column].to_numpy(dtype=np.float64)[pick])
        for i, (_, column, factor) in enumerate(GAZE_FROM_PYFEAT):
            gaze[at, i] = factor * np.degrees(fex[column].to_numpy(dtype=np.float64)[pick])
        expression[at] = fex[list(AU_NAMES)].to_numpy(dtype=np.float64)[pick]
        found[at] = True
    return MotionFeatures(pose, gaze, expression, POSE_NAMES, GAZE_NAMES, AU_NAMES, found)


class PyFeatAnalyzer(FaceAnalyzer):
    """py-feat's AUs, gaze and head pose on aligned face crops (see the module docstring). No identity: py-feat's
    identity heads are not offered (arcface / dlib serve identity). py-feat's Detector is built on first use."""

    name = "pyfeat"
    differentiable = False
    input_size = 256

    def __init__(
        self,
        files: Mapping[str, str | Path],  # {asset name (MODEL_FILES) : path of that model file}
        device: str | torch.device = "cpu",
        batch_size: int = 16,  # frames per py-feat forward pass
        face_threshold: float = 0.5,  # RetinaFace score above which a detection is a face (py-feat's default)
        weights: Mapping[str, str] | None = None,  # {path: sha256} to report (from_params fills it)
    ):
        missing = [f"{m.asset} ({m.repo}/{m.filename}): {'not given' if m.asset not in files else files[m.asset]}. "
                   f"Get it: {m.fetch}"
                   for m in MODEL_FILES if m.asset not in files or not Path(files[m.asset]).is_file()]
        if missing:
            raise BackendError(missing_models_message(missing))
        self.files = {m.asset: Path(files[m.asset]) for m in MODEL_FILES}
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.face_threshold = float(face_threshold)
        self._weights = dict(weights) if weights is not None else None
        self._detector = None

    @classmethod
    def from_params(cls, params: "Params", device: str | torch.device = "cpu") -> "PyFeatAnalyzer":
        """The model files from params.yaml's assets (checksums verified where given); BackendError naming every
        missing file and how to fetch it, or how to install py-feat."""
        problems = []
        if importlib.util.find_spec("feat") is None:
            problems.append(f"py-feat is not installed: {INSTALL_HINT}")
        try:
            files = resolve_model_files(params.assets)
        except BackendError as e:
            problems.append(str(e))
        if problems:
            raise BackendError("\n".join(problems))
        from pipeline.assets import sha256_of

        return cls(files, device=device, weights={str(p): sha256_of(p) for p in files.values()})

    def weights(self) -> dict[str, str]:
        if self._weights is None:
            from pipeline.assets import sha256_of

            self._weights = {str(p): sha256_of(p) for p in self.files.values()}
        return dict(self._weights)

    def _hub_files(self) -> dict[tuple[str, str], Path]:
        return {(m.repo, m.filename): self.files[m.asset] for m in MODEL_FILES}

    def detector(self):
        """py-feat's Detectorv1, built once from the declared files only."""
        if self._detector is not None:
            return self._detector
        _import_feat()
        from feat.detector import Detectorv1
        from feat.pretrained import AU_LANDMARK_MAP
        from feat.utils import FEAT_FACEBOX_COLUMNS, FEAT_FACEPOSE_COLUMNS_6D, FEAT_GAZE_COLUMNS
        from feat.utils import face_pose_mlp

        expected = {"AU": AU_NAMES, "facebox": FACEBOX_COLUMNS, "pose": ("Pitch", "Roll", "Yaw"),
                    "gaze": ("gaze_pitch", "gaze_yaw")}
        actual = {"AU": tuple(AU_LANDMARK_MAP["Feat"]), "facebox": tuple(FEAT_FACEBOX_COLUMNS),
                  "pose": tuple(FEAT_FACEPOSE_COLUMNS_6D[:3]), "gaze": tuple(FEAT_GAZE_COLUMNS[:2])}
        if actual != expected:
            raise BackendError(f"the installed py-feat names its outputs {actual}, this backend expects {expected}")

        served: set = set()
        # torch.no_grad() as a context restores the caller's grad mode on exit: py-feat's RetinaFace constructor
        # calls torch.set_grad_enabled(False) for the whole process, which would silently stop training elsewhere
        with _local_hub(self._hub_files(), served), warnings.catch_warnings(), torch.no_grad():
            # its "retinaface does not regress pose, pose comes from the landmark MLP" notice: known, handled below
            warnings.filterwarnings("ignore", message="face_model='retinaface'", category=UserWarning)
            detector = Detectorv1(
                face_model="retinaface", landmark_model="mobilefacenet", au_model="xgb",
                emotion_model=None, identity_model=None, gaze_model="l2cs", device=self.device,
            )
            # py-feat loads the pose MLP at the first frame and returns NaN pose if that fails: load it now, under
            # the key py-feat will look up (the landmarks' device), and fail loudly instead
            key = str(torch.empty(0, device=self.device).device)
            getattr(face_pose_mlp, "_CACHE", {}).pop(key, None)  # a model cached from other files would bypass ours
            probe = face_pose_mlp.pose_from_landmarks_mlp(torch.rand(1, 68, 2, device=self.device))
        unused = sorted(f"{r}/{f}" for r, f in set(self._hub_files()) - served)
        if probe is None or unused:
            raise BackendError(f"py-feat did not load the declared model files {unused or 'of the pose MLP'}: it found "
                               f"them elsewhere or failed to read them ({', '.join(str(p) for p in self.files.values())})")
        self._detector = detector
        return detector

    def motion(self, images) -> MotionFeatures:
        frames = as_frames(images)
        n = len(frames)
        if n == 0:
            return MotionFeatures(np.zeros((0, len(POSE_NAMES))), np.zeros((0, len(GAZE_NAMES))),
                                  np.zeros((0, len(AU_NAMES))), POSE_NAMES, GAZE_NAMES, AU_NAMES)
        detector = self.detector()
        # py-feat's tensor input: uint8 RGB [N, 3, H, W] in 0..255 (a numpy array would be taken as BGR)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
        with _local_hub(self._hub_files()), torch.no_grad():  # no_grad: restores the caller's grad mode
            fex = detector.detect(x, data_type="tensor", batch_size=self.batch_size,
                                  face_detection_threshold=self.face_threshold, progress_bar=False)
        return motion_from_fex(fex, n)
