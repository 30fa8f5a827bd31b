"""Face motion and identity features from dlib's 68 landmarks and its face-recognition ResNet.

These are GEOMETRIC features computed from the iBUG 300-W 68-point markup (and a dark-blob pupil
finder); they are NOT OpenFace action units, gaze vectors or head poses, and they are not calibrated
against any ground truth. Use them to compare clips with each other (motion, blinks, head turns),
not as absolute measurements.

Coordinates follow `pipeline.faces`: landmarks are (x, y) pixel indices, x to the image right, y down.
"Left"/"right" below always mean IMAGE left/right (landmarks 36-41 are the image-left eye, i.e. the
subject's right eye).

Head pose (`head_pose`, `POSE_NAMES`, degrees)
  A rigid generic 3D face (`REFERENCE_3D`, arbitrary units, symmetric about its x = 0 plane) is fitted
  to 12 rigid landmarks (eye corners, nose, mouth corners, chin) by non-linear least squares on the
  reprojection error of a pinhole camera with focal length = image width and principal point at the
  image centre ((w - 1) / 2, (h - 1) / 2) in pixel-index coordinates, so that mirroring x -> w - 1 - x
  is an exact symmetry. Camera frame: x image right, y image down, z away from the camera. The object
  rotation is R = Rz(roll) @ Rx(pitch) @ Ry(-yaw) (yaw applied first), with
    yaw   > 0: the face turns towards the image right (the nose tip moves to +x),
    pitch > 0: the face looks down (the nose tip moves to +y),
    roll  > 0: the face rotates clockwise in the image (the eye line's right end goes down).
  Mirroring the image (with landmark indices remapped by `MIRROR_68`) gives (-yaw, pitch, -roll).
  The generic shape is not the subject's, so a frontal face typically reads a few degrees off zero
  (mostly in pitch); differences between frames are more meaningful than absolute values.

Gaze (`gaze`, `GAZE_NAMES`)
  In each eye polygon (landmarks 36-41, 42-47) the pupil is the centroid of the darkest pixels
  (grayscale at or below the `percentile`-th percentile inside the polygon, eye region upsampled so
  that the eye is >= 40 px wide). gaze_x, gaze_y = (pupil - eye centre) / eye width, with eye centre
  the midpoint of the two eye corners and eye width their distance, averaged over both eyes;
  positive = image right / down. About +-0.15 is a strong sideways look; vertical values are small
  because the eyelids crop the iris.

Expression (`expression`, `EXPRESSION_NAMES`)
  The landmarks are first put in a face frame: origin at the midpoint of the two eye centres (means
  of 36-41 and 42-47), x along the line joining them, lengths divided by the inter-ocular distance
  IOD = distance between those eye centres (so in-plane rotation and scale drop out).
    mouth_open   mean inner-lip gap |61-67|, |62-66|, |63-65| / IOD (0 with closed lips, ~0.3-0.5 open)
    mouth_width  |48-54| / IOD (outer mouth corners)
    smile        (y of the inner-lip centre, mean of 62 and 66) - (mean y of the mouth corners 48, 54),
                 / IOD: positive when the corners are raised above the lip centre
    brow_raise   mean over both sides of (mean y of the eye, 36-41 / 42-47) - (mean y of the brow,
                 17-21 / 22-26), / IOD: grows when the brows go up
    eye_aspect_left / eye_aspect_right
                 eye aspect ratio (Soukupova & Cech 2016) of the image-left (36-41) / image-right
                 (42-47) eye: (|p2-p6| + |p3-p5|) / (2 |p1-p4|) with p1..p6 the eye's six points in
                 order. It is already scale-free (no IOD); ~0.25-0.35 open, < ~0.15 during a blink.

Identity (`DlibFaceDescriptor`)
  dlib's 128-D face descriptor (dlib_face_recognition_resnet_model_v1, aligned with the 68-point
  shape); same-person pairs are usually < 0.6 apart in Euclidean distance (dlib's documented threshold).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.analysis import FaceAnalyzer, MotionFeatures, as_frames
from pipeline.faces import (LANDMARKS_68, DlibDetector, DlibLandmarks, as_rgb_uint8, dlib_model_path, dlib_rectangle,
                           largest_box)

POSE_NAMES = ("yaw", "pitch", "roll")
GAZE_NAMES = ("gaze_x", "gaze_y")
EXPRESSION_NAMES = ("mouth_open", "mouth_width", "smile", "brow_raise", "eye_aspect_left", "eye_aspect_right")
FACE_DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"

# iBUG 300-W left/right symmetry: the landmark index that point i becomes when the image is mirrored.
MIRROR_68 = np.array(
    list(range(16, -1, -1))  # jaw 0..16
    + list(range(26, 21, -1))  # brow 17..21 <- 26..22
    + list(range(21, 16, -1))  # brow 22..26 <- 21..17
    + [27, 28, 29, 30]  # nose bridge
    + [35, 34, 33, 32, 31]  # nose base
    + [45, 44, 43, 42, 47, 46]  # eye 36..41
    + [39, 38, 37, 36, 41, 40]  # eye 42..47
    + [54, 53, 52, 51, 50, 49, 48]  # outer lip top 48..54
    + [59, 58, 57, 56, 55]  # outer lip bottom 55..59
    + [64, 63, 62, 61, 60]  # inner lip top 60..64
    + [67, 66, 65],  # inner lip bottom 65..67
    dtype=np.intp,
)

# Generic rigid 3D face, camera-like axes (x image right, y down, z away from the camera), nose tip at
# the origin; after the classic 6-point model (eye outer corners +-225, mouth corners +-150, chin) with
# inner eye corners and the nose base added. Symmetric: REFERENCE_3D mirrored in x equals itself with
# its indices remapped by MIRROR_68 (checked in the tests).
REFERENCE_3D: dict[int, tuple[float, float, float]] = {
    30: (0.0, 0.0, 0.0),  # nose tip
    8: (0.0, 330.0, 65.0),  # chin
    36: (-225.0, -170.0, 135.0),  # image-left eye, outer corner
    39: (-80.0, -165.0, 110.0),  # image-left eye, inner corner
    42: (80.0, -165.0, 110.0),  # image-right eye, inner corner
    45: (225.0, -170.0, 135.0),  # image-right eye, outer corner
    27: (0.0, -185.0, 80.0),  # nose bridge between the eyes
    31: (-60.0, 35.0, 70.0),  # nose base, image-left wing
    33: (0.0, 40.0, 45.0),  # subnasale
    35: (60.0, 35.0, 70.0),  # nose base, image-right wing
    48: (-150.0, 150.0, 125.0),  # mouth corner, image left
    54: (150.0, 150.0, 125.0),  # mouth corner, image right
}
_REF_IDX = np.array(sorted(REFERENCE_3D), dtype=np.intp)
_REF_PTS = np.array([REFERENCE_3D[i] for i in _REF_IDX], dtype=np.float64)


def _check_landmarks(landmarks) -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks [68, 2], got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("landmarks contain NaN or inf")
    return pts


# ------------------------------------------------------------------------------------------ head pose


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) @ Rx(pitch) @ Ry(-yaw), angles in degrees, conventions of the module docstring."""
    a, b, c = np.radians([-yaw, pitch, roll])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ rx @ ry


def _camera(image_size) -> tuple[float, float, float]:
    h, w = (float(v) for v in image_size[:2])
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive (h, w), got {image_size}")
    return w, (w - 1.0) / 2.0, (h - 1.0) / 2.0  # focal length, cx, cy


def project(points_3d: np.ndarray, yaw: float, pitch: float, roll: float, t, image_size) -> np.ndarray:
    """Pixel (x, y) [N, 2] of object points [N, 3] rotated by the pose (degrees) and translated by t."""
    f, cx, cy = _camera(image_size)
    cam = np.asarray(points_3d, dtype=np.float64) @ rotation_matrix(yaw, pitch, roll).T + np.asarray(t, dtype=np.float64)
    return np.stack([f * cam[:, 0] / cam[:, 2] + cx, f * cam[:, 1] / cam[:, 2] + cy], axis=1)


def head_pose(landmarks, image_size) -> np.ndarray:
    """(yaw, pitch, roll) float64 [3] in degrees for 68 landmarks in an image of size (h, w).

    Conventions in the module docstring. Fitted by scipy least squares (6 parameters: three angles and
    the translation) from a frontal start at the right distance; angles are kept in (-90, 90)."""
    from scipy.optimize import least_squares

    pts = _check_landmarks(landmarks)
    f, cx, cy = _camera(image_size)
    obs = pts[_REF_IDX]
    # start: frontal, eye-line roll, depth from the outer-eye-corner span, nose tip on its ray
    span_img = np.linalg.norm(pts[45] - pts[36])
    span_3d = np.linalg.norm(_REF_PTS[list(_REF_IDX).index(45)] - _REF_PTS[list(_REF_IDX).index(36)])
    tz = f * span_3d / max(span_img, 1e-6)
    roll0 = np.degrees(np.arctan2(pts[45, 1] - pts[36, 1], pts[45, 0] - pts[36, 0]))
    x0 = np.array([0.0, 0.0, roll0, (pts[30, 0] - cx) * tz / f, (pts[30, 1] - cy) * tz / f, tz])
    scale = max(span_img, 1e-6)

    def residuals(p):
        return ((project(_REF_PTS, p[0], p[1], p[2], p[3:], image_size) - obs) / scale).ravel()

    lo = np.array([-89.0, -89.0, -180.0, -np.inf, -np.inf, tz * 0.05])
    hi = np.array([89.0, 89.0, 180.0, np.inf, np.inf, np.inf])
    x0[2] = np.clip(x0[2], -179.0, 179.0)
    fit = least_squares(residuals, x0, bounds=(lo, hi), x_scale=np.array([10, 10, 10, tz / 10, tz / 10, tz / 10]), xtol=1e-10, ftol=1e-12)
    return fit.x[:3].copy()


# ---------------------------------------------------------------------------------------------- gaze


def _pupil_offset(gray: np.ndarray, eye: np.ndarray, percentile: float) -> np.ndarray | None:
    """(pupil - eye centre) / eye width for one eye polygon [6, 2]; None when the eye is degenerate."""
    from skimage.draw import polygon
    from skimage.transform import rescale

    p1, p4 = eye[0], eye[3]
    width = float(np.linalg.norm(p4 - p1))
    if width < 2.0:
        return None
    centre = (p1 + p4) / 2.0
    h, w = gray.shape
    x0 = int(max(0, np.floor(eye[:, 0].min()) - 2))
    x1 = int(min(w, np.ceil(eye[:, 0].max()) + 3))
    y0 = int(max(0, np.floor(eye[:, 1].min()) - 2))
    y1 = int(min(h, np.ceil(eye[:, 1].max()) + 3))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    patch = gray[y0:y1, x0:x1].astype(np.float64)
    up = max(1.0, 40.0 / width)
    if up > 1.0:
        patch = rescale(patch, up, order=1, mode="edge", anti_aliasing=False)
    # pixel centres of the upsampled patch in original coordinates: x = x0 + (j + 0.5) / up - 0.5
    poly = (eye - np.array([x0, y0]) + 0.5) * up - 0.5
    rr, cc = polygon(poly[:, 1], poly[:, 0], shape=patch.shape)
    if rr.size < 4:
        return None
    vals = patch[rr, cc]
    dark = vals <= np.percentile(vals, percentile)
    py = (rr[dark].mean() + 0.5) / up - 0.5 + y0
    px = (cc[dark].mean() + 0.5) / up - 0.5 + x0
    return (np.array([px, py]) - centre) / width


def gaze(frame: np.ndarray, landmarks, percentile: float = 15.0) -> np.ndarray:
    """(gaze_x, gaze_y) float64 [2]: pupil offset in the eye / eye width, mean of both eyes (NaN if none)."""
    pts = _check_landmarks(landmarks)
    gray = as_rgb_uint8(frame).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    offsets = [o for o in (_pupil_offset(gray, pts[36:42], percentile), _pupil_offset(gray, pts[42:48], percentile)) if o is not None]
    if not offsets:
        return np.full(2, np.nan)
    return np.mean(offsets, axis=0)


# ---------------------------------------------------------------------------------------- expression


def eye_aspect_ratio(eye) -> float:
    """Soukupova & Cech's EAR of six eye points p1..p6: (|p2-p6| + |p3-p5|) / (2 |p1-p4|)."""
    e = np.asarray(eye, dtype=np.float64).reshape(6, 2)
    d = np.linalg.norm
    return float((d(e[1] - e[5]) + d(e[2] - e[4])) / (2.0 * max(d(e[0] - e[3]), 1e-9)))


def expression(landmarks) -> np.ndarray:
    """EXPRESSION_NAMES features float64 [6] (definitions in the module docstring)."""
    pts = _check_landmarks(landmarks)
    el, er = pts[36:42].mean(axis=0), pts[42:48].mean(axis=0)
    axis = er - el
    iod = float(np.linalg.norm(axis))
    if iod < 1e-6:
        raise ValueError("degenerate landmarks: the eye centres coincide")
    ux = axis / iod
    uy = np.array([-ux[1], ux[0]])  # x right -> y down (image convention)
    q = np.stack([(pts - (el + er) / 2) @ ux, (pts - (el + er) / 2) @ uy], axis=1) / iod
    d = lambda i, j: float(np.linalg.norm(q[i] - q[j]))  # noqa: E731
    mouth_open = (d(61, 67) + d(62, 66) + d(63, 65)) / 3.0
    mouth_width = d(48, 54)
    smile = (q[62, 1] + q[66, 1]) / 2.0 - (q[48, 1] + q[54, 1]) / 2.0
    brow_raise = ((q[36:42, 1].mean() - q[17:22, 1].mean()) + (q[42:48, 1].mean() - q[22:27, 1].mean())) / 2.0
    return np.array([mouth_open, mouth_width, smile, brow_raise, eye_aspect_ratio(pts[36:42]), eye_aspect_ratio(pts[42:48])])


# ------------------------------------------------------------------------------------------ identity


class DlibFaceDescriptor:
    """dlib's 128-D face descriptor for a face box (the 68-point shape is predicted here for the alignment)."""

    def __init__(self, model_path: Path | None = None, landmarks_path: Path | None = None, num_jitters: int = 0):
        import dlib

        path = Path(model_path) if model_path is not None else dlib_model_path(FACE_DESCRIPTOR)
        lpath = Path(landmarks_path) if landmarks_path is not None else dlib_model_path(LANDMARKS_68)
        for p in (path, lpath):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such dlib model file")
        self.model_path, self.landmarks_path = path, lpath
        self.num_jitters = int(num_jitters)
        self._net = dlib.face_recognition_model_v1(str(path))
        self._predictor = dlib.shape_predictor(str(lpath))

    def __call__(self, frame: np.ndarray, box) -> np.ndarray:
        """Descriptor float32 [128] of the face in `box` (x0, y0, x1, y1, exclusive ends as in pipeline.faces)."""
        frame = as_rgb_uint8(frame)
        shape = self._predictor(frame, dlib_rectangle(box))
        return np.asarray(self._net.compute_face_descriptor(frame, shape, self.num_jitters), dtype=np.float32)


# --------------------------------------------------------------------------------------------- frames


def analyze_frames(frames, detector: DlibDetector | None = None, landmarks: DlibLandmarks | None = None) -> list[dict | None]:
    """Per frame: None when no face is found, else for the largest detected face
    {"box": [x0, y0, x1, y1], "pose": {yaw, pitch, roll}, "gaze": {gaze_x, gaze_y},
     "expression": {mouth_open, ...}} with plain Python floats keyed by the *_NAMES above."""
    detector = detector if detector is not None else DlibDetector()
    landmarks = landmarks if landmarks is not None else DlibLandmarks()
    out: list[dict | None] = []
    for frame in frames:
        frame = as_rgb_uint8(frame)
        boxes = detector(frame)
        if len(boxes) == 0:
            out.append(None)
            continue
        box = largest_box(boxes)
        pts = landmarks(frame, box)
        out.append(
            {
                "box": [float(v) for v in box],
                "pose": dict(zip(POSE_NAMES, map(float, head_pose(pts, frame.shape[:2])))),
                "gaze": dict(zip(GAZE_NAMES, map(float, gaze(frame, pts)))),
                "expression": dict(zip(EXPRESSION_NAMES, map(float, expression(pts)))),
            }
        )
    return out


# ------------------------------------------------------------------------------ the analysis backend


def _dlib_model(kind: str, path: Path):
    """dlib model objects are read-only once loaded and loading takes ~1 s, so analyzers share them (keyed
    by size and mtime too: a file replaced in place is loaded again)."""
    stat = path.stat()
    return _load_dlib_model(kind, path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _load_dlib_model(kind: str, path: Path, size: int, mtime_ns: int):
    import dlib

    return getattr(dlib, kind)(str(path))


@lru_cache(maxsize=4)
def _crop_detector(upsample: int) -> DlibDetector:
    # stateless between calls, ~0.4 s to build: shared by all analyzers
    return DlibDetector(max_side=4096, upsample=upsample)  # crops are small: never downscale them


class DlibAnalyzer(FaceAnalyzer):
    """The `dlib` backend of pipeline.analysis: 128-D descriptors (identity) and the geometric features of
    this module (motion) on aligned face crops.

    Detection on a crop: dlib's HOG window is 80 px, so the crop is upsampled (dlib's pyramid, `upsample`
    0 / 1 / 2 for crops of >= 160 / 80 / 40 px) until a face spanning half the crop reaches it (FOMM-style
    crops of the 9 stills and of frames 0, 12, 24 of the 6 talking clips in ../shared/media: 27 / 27
    found at 64, 128 and 256 px without the retry). When
    nothing is found (a tight crop where the face touches the border), the crop is edge-padded by `pad` of
    its side on every side and detection is retried: measured on the 9 stills cut 10 % inside dlib's own
    face box, 7 / 7 / 8 of 9 are found on the crop alone at 64 / 128 / 256 px, 8 / 9 / 9 with the retry. There is deliberately NO blind fallback to
    a box covering the crop: the landmark predictor returns 68 points on anything (a blank frame, a broken
    generator output), and `found` would then mean nothing. Landmarks, pose, gaze and expression are in
    the crop's own pixels (the padded image only serves detection, landmarks and the descriptor chip).

    Not differentiable: the images go through uint8 (`as_frames`). identity() and motion() on the same
    batch share one detection (the last batch's faces are cached by content)."""

    name = "dlib"
    differentiable = False
    distance_name = "euclidean"
    threshold = 0.6  # dlib's documented same-person threshold for this descriptor
    input_size = 256

    def __init__(
        self,
        landmarks_path: Path | None = None,  # shape_predictor_68_face_landmarks.dat (None: the installed package's)
        descriptor_path: Path | None = None,  # dlib_face_recognition_resnet_model_v1.dat (idem)
        weights: dict[str, str] | None = None,  # {path: sha256} to report (from_params fills it)
        pad: float = 0.25,  # border added per side, as a fraction of the crop side, for the retry
        num_jitters: int = 0,  # dlib's descriptor jittering (0: one pass, as DlibFaceDescriptor)
    ):
        self.landmarks_path = Path(landmarks_path) if landmarks_path is not None else dlib_model_path(LANDMARKS_68)
        self.descriptor_path = Path(descriptor_path) if descriptor_path is not None else dlib_model_path(FACE_DESCRIPTOR)
        for p in (self.landmarks_path, self.descriptor_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such dlib model file (pip install face_recognition_models ships it)")
        self._weights = dict(weights) if weights is not None else None
        self.pad = float(pad)
        self.num_jitters = int(num_jitters)
        self._predictor = _dlib_model("shape_predictor", self.landmarks_path)
        self._net = _dlib_model("face_recognition_model_v1", self.descriptor_path)
        self._cache: tuple[bytes, list] | None = None

    @classmethod
    def from_params(cls, params) -> "DlibAnalyzer":
        """Both model files from params.yaml's assets (checksum-verified; a missing one names how to get it)."""
        from pipeline.assets import require, sha256_of

        lpath = require("dlib_landmarks68", params.assets)
        dpath = require("dlib_face_descriptor", params.assets)
        return cls(lpath, dpath, weights={str(lpath): sha256_of(lpath), str(dpath): sha256_of(dpath)})

    # -- the interface (pipeline.analysis.FaceAnalyzer)

    def weights(self) -> dict[str, str]:
        if self._weights is None:
            from pipeline.assets import sha256_of

            self._weights = {str(p): sha256_of(p) for p in (self.landmarks_path, self.descriptor_path)}
        return dict(self._weights)

    def identity(self, images):
        """Descriptors torch float32 [N, 128]; NaN rows where no face is found."""
        import torch

        frames = _frames(images)
        out = np.full((len(frames), 128), np.nan, dtype=np.float32)
        for i, face in enumerate(self._faces(frames)):
            if face is not None:
                image, shape, _ = face
                out[i] = np.asarray(self._net.compute_face_descriptor(image, shape, self.num_jitters), dtype=np.float32)
        return torch.from_numpy(out)

    def motion(self, images):
        """MotionFeatures with POSE_NAMES / GAZE_NAMES / EXPRESSION_NAMES; found=False and NaN where no face."""
        frames = _frames(images)
        n = len(frames)
        pose = np.full((n, len(POSE_NAMES)), np.nan)
        gz = np.full((n, len(GAZE_NAMES)), np.nan)
        expr = np.full((n, len(EXPRESSION_NAMES)), np.nan)
        found = np.zeros(n, dtype=bool)
        for i, (frame, face) in enumerate(zip(frames, self._faces(frames))):
            if face is None:
                continue
            pts = face[2]
            pose[i] = head_pose(pts, frame.shape[:2])
            gz[i] = gaze(frame, pts)
            expr[i] = expression(pts)
            found[i] = True
        return MotionFeatures(pose, gz, expr, POSE_NAMES, GAZE_NAMES, EXPRESSION_NAMES, found)

    # -- detection on crops

    def _face(self, frame: np.ndarray):
        """(image the shape lives in, dlib shape, landmarks [68, 2] in crop pixels) or None."""
        side = min(frame.shape[:2])
        upsample = 0 if side >= 160 else 1 if side >= 80 else 2
        boxes = _crop_detector(upsample)(frame)
        image, offset = frame, 0
        if len(boxes) == 0 and self.pad > 0:
            offset = int(round(self.pad * side))
            image = np.ascontiguousarray(np.pad(frame, ((offset, offset), (offset, offset), (0, 0)), mode="edge"))
            boxes = _crop_detector(upsample)(image)
        if len(boxes) == 0:
            return None
        shape = self._predictor(image, dlib_rectangle(largest_box(boxes)))
        pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64) - offset
        return image, shape, pts

    def _faces(self, frames: np.ndarray) -> list:
        import hashlib

        # identity() and motion() of one batch (what `reenact analyze` does) detect once
        key = hashlib.blake2b(frames.tobytes(), digest_size=16).digest() + repr(frames.shape).encode()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, [self._face(f) for f in frames])
        return self._cache[1]


def _frames(images) -> np.ndarray:
    return np.ascontiguousarray(as_frames(images))
