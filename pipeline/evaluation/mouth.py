"""Mouth crops for FVD_M ("FVD over the mouth"), placed by the driving frames' 68 landmarks.

The paper does not say how its mouth crops were taken; our choice, made once here:
- the box of a frame is centred on the mean of its mouth landmarks (iBUG points 48-67);
- its side is fixed per clip (so a clip is one zoom, and the I3D sees motion, not a zoom change): `scale` x
  the largest mouth extent (max of width and height of points 48-67) over the clip's frames;
- the SAME boxes crop the generated clip and the driving clip: the generated frame follows the driving
  motion, and its own landmarks would make the crop depend on the method's errors;
- a frame without landmarks takes the box centre of the nearest frame of the clip that has them; a clip
  with none is left out (of both sides) and counted;
- crops past the frame border are edge-padded, then resized to `size` x `size` (PIL bilinear, antialiased).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

MOUTH = slice(48, 68)


def mouth_boxes(landmarks: np.ndarray, scale: float) -> np.ndarray | None:
    """Boxes float [T, 4] (x0, y0, x1, y1) for one clip from landmarks [T, 68, 2] (NaN rows: no face), or None
    when no frame of the clip has landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be [T, 68, 2], got {lm.shape}")
    mouth = lm[:, MOUTH]
    valid = np.isfinite(mouth).all(axis=(1, 2))
    if not valid.any():
        return None
    extent = np.max(np.concatenate([np.ptp(mouth[valid, :, 0], axis=1), np.ptp(mouth[valid, :, 1], axis=1)]))
    side = max(2.0, scale * float(extent))
    centres = np.full((len(lm), 2), np.nan)
    centres[valid] = mouth[valid].mean(axis=1)
    good = np.flatnonzero(valid)
    for t in np.flatnonzero(~valid):
        centres[t] = centres[good[np.argmin(np.abs(good - t))]]
    half = side / 2.0
    return np.concatenate([centres - half, centres + half], axis=1)


def crop_boxes(frames: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T, size, size, 3]: each frame [T, H, W, 3] cut at its box (edge-padded past the border) and resized."""
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for t, (frame, box) in enumerate(zip(frames, boxes)):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        h, w = frame.shape[:2]
        pad = max(0, -x0, -y0, x1 - w, y1 - h)
        src = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else frame
        patch = src[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
        out[t] = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.BILINEAR))
    return out


class DlibMouthLandmarks:
    """68 landmarks per frame with dlib (HOG detector, largest face, iBUG predictor; pipeline.faces), for
    videos without stored landmarks. NaN rows where no face is found. The detector's upsampling follows the
    frame size (faces filling a 64 px frame are below dlib's 80 px window)."""

    def __init__(self, landmarks_path=None):
        from pipeline.faces import DlibLandmarks

        self._landmarks = DlibLandmarks(landmarks_path)
        self._detectors: dict[int, object] = {}

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        from pipeline.faces import DlibDetector, largest_box

        out = np.full((len(frames), 68, 2), np.nan, dtype=np.float64)
        for i, frame in enumerate(frames):
            side = min(frame.shape[:2])
            up = 0 if side >= 160 else 1 if side >= 80 else 2
            if up not in self._detectors:
                self._detectors[up] = DlibDetector(max_side=4096, upsample=up)
            boxes = self._detectors[up](frame)
            if len(boxes):
                out[i] = self._landmarks(frame, largest_box(boxes))
        return out
