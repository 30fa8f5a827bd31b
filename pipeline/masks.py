"""The Eq. 13 mask M: mouth, eyes and brows from the 68 landmarks, dilated.

L_f compares generated and real frames only inside M, to weigh the fine motion carriers.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import draw

# iBUG 68-point indices (DESIGN.md: brows 17-26, eyes 36-47, mouth 48-67).
CLOSED_REGIONS = {"eye_right": range(36, 42), "eye_left": range(42, 48), "mouth": range(48, 60)}
OPEN_REGIONS = {"brow_right": range(17, 22), "brow_left": range(22, 27)}  # polylines, not contours


def feature_mask(
    landmarks: np.ndarray,  # [68, 2] x, y in pixels of the image the mask is for
    size: int,  # image side (square) in pixels
    dilation: float,  # dilation radius in pixels (Euclidean: a pixel is in M iff within this of a region)
) -> np.ndarray:
    """Binary mask [size, size] of the dilated mouth, eye and brow regions."""
    assert landmarks.shape == (68, 2), landmarks.shape
    region = np.zeros((size, size), dtype=bool)
    for idx in CLOSED_REGIONS.values():
        pts = landmarks[list(idx)]
        rr, cc = draw.polygon(pts[:, 1], pts[:, 0], shape=region.shape)
        region[rr, cc] = True
        _polyline(region, np.vstack([pts, pts[:1]]))  # the outline itself, for slivers thinner than a pixel
    for idx in OPEN_REGIONS.values():
        _polyline(region, landmarks[list(idx)])
    if dilation <= 0 or not region.any():
        return region
    # Distance to the nearest region pixel, thresholded: exact Euclidean dilation by a disc of radius `dilation`.
    return ndimage.distance_transform_edt(~region) <= dilation


def feature_masks(landmarks: np.ndarray, size: int, dilation: float) -> np.ndarray:
    """Masks for a batch of frames: landmarks [T, 68, 2] -> uint8 [T, size, size] in {0, 1}."""
    return np.stack([feature_mask(lm, size, dilation) for lm in landmarks]).astype(np.uint8)


def _polyline(mask: np.ndarray, pts: np.ndarray) -> None:
    h, w = mask.shape
    p = np.rint(pts).astype(int)
    for (x0, y0), (x1, y1) in zip(p[:-1], p[1:]):
        rr, cc = draw.line(y0, x0, y1, x1)
        keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        mask[rr[keep], cc[keep]] = True


FACE_OUTLINE = list(range(0, 17)) + list(range(26, 16, -1))  # jaw left to right, then brows right to left


def face_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Binary mask [size, size] of the face: the polygon of the jaw line closed over the brows.

    Used to score reconstructions where the face is, since a flat background alone already scores
    high PSNR."""
    assert landmarks.shape == (68, 2), landmarks.shape
    pts = landmarks[FACE_OUTLINE]
    mask = np.zeros((size, size), dtype=bool)
    rr, cc = draw.polygon(pts[:, 1], pts[:, 0], shape=mask.shape)
    mask[rr, cc] = True
    return mask
