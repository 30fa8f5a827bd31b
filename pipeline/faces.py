"""Face detection and 68-point landmarks with dlib (HOG frontal detector + iBUG 300-W shape predictor).

The model files ship inside the `face_recognition_models` pip package; they are located without
importing it (its import needs pkg_resources, i.e. setuptools<81). Nothing is ever downloaded.

Coordinate conventions
- Boxes are float32 `x0, y0, x1, y1` in continuous pixel coordinates of the ORIGINAL frame: pixel
  (i, j) covers [i, i+1) x [j, j+1), so x1/y1 are exclusive and width = x1 - x0. (dlib's rectangles
  are inclusive: right = x1 - 1.) Boxes may extend past the frame border when the face does.
- Landmarks are float32 (x, y) pixel indices (pixel centres at integers), as dlib returns them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"


def dlib_model_path(name: str) -> Path:
    """Path of a dlib model file shipped in `face_recognition_models/models/` (the package is not imported).

    The pipeline's stages take the file from params.yaml's assets (checksum-verified); this default is for
    library use."""
    from pipeline.assets import resolve_path

    path = resolve_path(f"pkg:face_recognition_models/models/{name}")
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"dlib model file {name!r} not found{f' at {path}' if path else ''}: it ships in the "
            "face_recognition_models package, install it with `pip install face_recognition_models` (importing "
            "that package needs setuptools<81; this pipeline only reads its files)"
        )
    return path


def as_rgb_uint8(frame: np.ndarray) -> np.ndarray:
    """An RGB uint8 [H, W, 3] C-contiguous view/copy of `frame`; accepts gray [H, W] / [H, W, 1] and RGBA."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {frame.dtype}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        frame = frame[..., :3]
    elif not (frame.ndim == 3 and frame.shape[2] == 3):
        raise ValueError(f"expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {frame.shape}")
    return np.ascontiguousarray(frame)


def largest_box(boxes: np.ndarray) -> np.ndarray:
    """The box of largest area among boxes [K, 4] (x0, y0, x1, y1), K >= 1."""
    return boxes[int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))]


class DlibDetector:
    """dlib's HOG frontal face detector, run on the frame downscaled to <= `max_side` px (as FOMM does).

    upsample=1 (dlib upsamples the downscaled frame once) is the default because with upsample=0 the
    HOG window (~80 px) misses faces smaller than ~1/8 of the frame's longer side: the full-body shot
    `wide/lp_s13.mp4` (face ~52 px at 640 px) is found in 3/103 frames with 0 and in 103/103 with 1.
    Cost on 2 cores: ~90 ms per 640 px frame with upsample=1, ~20 ms with 0 (use 0 for footage where
    the face fills the frame, e.g. already-cropped talking heads).
    """

    def __init__(self, max_side: int = 640, upsample: int = 1):
        import dlib

        if max_side < 32:
            raise ValueError(f"max_side must be >= 32 px, got {max_side}")
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        self.max_side = int(max_side)
        self.upsample = int(upsample)
        self._detector = dlib.get_frontal_face_detector()

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Face boxes float32 [K, 4] (x0, y0, x1, y1) in original-frame pixels, in dlib's order."""
        frame = as_rgb_uint8(frame)
        h, w = frame.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
            small = np.asarray(Image.fromarray(frame).resize((sw, sh), Image.BILINEAR))  # PIL antialiases downscales
            fx, fy = w / sw, h / sh
        else:
            small, fx, fy = frame, 1.0, 1.0
        rects = self._detector(small, self.upsample)
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], dtype=np.float64).reshape(-1, 4)
        boxes *= np.array([fx, fy, fx, fy])
        return boxes.astype(np.float32)

    __call__ = detect


def dlib_rectangle(box):
    """Our box (x0, y0, x1, y1, exclusive ends) as dlib's inclusive integer rectangle."""
    import dlib

    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    return dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)


class DlibLandmarks:
    """dlib's 68-point shape predictor (iBUG 300-W markup) for a face box."""

    def __init__(self, model_path: Path | None = None):
        import dlib

        path = Path(model_path) if model_path is not None else dlib_model_path(LANDMARKS_68)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such landmark model file")
        self.model_path = path
        self._predictor = dlib.shape_predictor(str(path))

    def __call__(self, frame: np.ndarray, box) -> np.ndarray:
        """Landmarks float32 [68, 2] (x, y) in frame pixels for the face in `box` (x0, y0, x1, y1)."""
        frame = as_rgb_uint8(frame)
        shape = self._predictor(frame, dlib_rectangle(box))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
