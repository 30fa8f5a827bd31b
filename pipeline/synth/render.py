"""Rasteriser: project the 3D face parts, fill them in painter's order at 2x with PIL, downsample, shade.

Shading is Lambertian on the head ellipsoid with a light fixed in the camera frame (upper left, in
front), so the shading moves across the face as the head turns. Background, neck and shirt are not shaded.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pipeline.synth.face import N_LANDMARKS, REFERENCE_FACE_HEIGHT, FaceModel, Identity
from pipeline.synth.motion import Motion

SUPERSAMPLE = 2
FOCAL = 10.0  # perspective: camera at z = FOCAL head units in front of the pivot
LIGHT = np.array([-0.5, -0.6, 1.0]) / np.linalg.norm([-0.5, -0.6, 1.0])
AMBIENT, DIFFUSE = 0.58, 0.5
HULL_DIRECTIONS = 72

# painter's order: (geometry key, colour key, kind, in the shading mask?)
# kinds: "poly" filled polygon, "hull" filled convex hull of the points, "outline" closed polyline, "line"
_ORDER = (
    ("torso", "shirt", "poly", False),
    ("neck", "neck", "poly", False),
    ("hair_back", "hair_back", "hull", True),
    ("glasses_arm_l", "glasses", "line", False),  # behind the face: only the part beyond the silhouette shows
    ("glasses_arm_r", "glasses", "line", False),
    ("ear_0", "ear", "poly", True),
    ("ear_1", "ear", "poly", True),
    ("face", "skin", "hull", True),
    ("hair_cap", "hair", "hull", True),
    ("forehead", "skin", "poly", False),
    ("beard", "beard", "poly", False),
    ("eye_l_sclera", "sclera", "poly", False),
    ("eye_l_iris", "iris", "poly", False),
    ("eye_l_pupil", "pupil", "poly", False),
    ("eye_l_highlight", "highlight", "poly", False),
    ("eye_l_lid", "lid_line", "poly", False),
    ("eye_l_lash", "lash", "poly", False),
    ("eye_r_sclera", "sclera", "poly", False),
    ("eye_r_iris", "iris", "poly", False),
    ("eye_r_pupil", "pupil", "poly", False),
    ("eye_r_highlight", "highlight", "poly", False),
    ("eye_r_lid", "lid_line", "poly", False),
    ("eye_r_lash", "lash", "poly", False),
    ("nose", "skin_shadow", "poly", False),
    ("nostril_l", "nostril", "poly", False),
    ("nostril_r", "nostril", "poly", False),
    ("brow_l", "brow", "poly", False),
    ("brow_r", "brow", "poly", False),
    ("lips", "lip", "poly", False),
    ("mouth", "mouth", "poly", False),
    ("lip_line", "lip_line", "poly", False),
    ("teeth", "teeth", "poly", False),
    ("glasses_rim_l", "glasses", "outline", False),
    ("glasses_rim_r", "glasses", "outline", False),
    ("glasses_bridge", "glasses", "line", False),
    ("hair_fringe", "hair", "poly", True),
)
_BODY_PARTS = {"torso": 0.2, "neck": 0.5}  # fraction of the head rotation the part follows


def rotation_matrices(pose_deg: np.ndarray) -> np.ndarray:
    """[T, 3] (yaw, pitch, roll) degrees -> [T, 3, 3] = Rz(roll) Rx(pitch) Ry(yaw) (see face.py for signs)."""
    yaw, pitch, roll = np.radians(np.asarray(pose_deg, dtype=np.float64)).T
    T = len(yaw)
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    one, zero = np.ones(T), np.zeros(T)
    Ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], 1)
    Rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, sp], -1), np.stack([zero, -sp, cp], -1)], 1)
    Rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], 1)
    return Rz @ Rx @ Ry


class Camera:
    """Head frame -> frame pixels (x, y with pixel centres at integers) for every frame of a motion."""

    def __init__(self, model: FaceModel, motion: Motion, resolution: int):
        self.resolution = resolution
        self.pivot = model.pivot
        self.R = rotation_matrices(motion.pose)
        self.pose = np.asarray(motion.pose, dtype=np.float64)
        self.px_per_unit = np.asarray(motion.scale, dtype=np.float64) * resolution / REFERENCE_FACE_HEIGHT  # [T]
        self.centre = np.asarray(motion.center, dtype=np.float64) * resolution  # continuous coordinates [T, 2]

    def rotate(self, points: np.ndarray, R: np.ndarray | None = None) -> np.ndarray:
        R = self.R if R is None else R
        return np.einsum("tij,tnj->tni", R, points - self.pivot)

    def project(self, points: np.ndarray, R: np.ndarray | None = None) -> np.ndarray:
        """[T, n, 3] head-frame points -> [T, n, 2] pixel coordinates."""
        r = self.rotate(points, R)
        persp = FOCAL / (FOCAL - r[..., 2:3])
        return r[..., :2] * persp * self.px_per_unit[:, None, None] + self.centre[:, None, :] - 0.5


def support_hull(points: np.ndarray, n_dirs: int = HULL_DIRECTIONS) -> np.ndarray:
    """Convex hull of [T, n, 2] point sets as [T, n_dirs, 2] polygons (extreme point in each direction)."""
    angle = np.linspace(0.0, 2.0 * np.pi, n_dirs, endpoint=False)
    dirs = np.stack([np.cos(angle), np.sin(angle)], 0)  # [2, K]
    best = np.argmax(points @ dirs, axis=1)  # [T, K]
    return np.take_along_axis(points, best[..., None], axis=1)


def _shading(model: FaceModel, cam: Camera, res: int, step: int = 2) -> np.ndarray:
    """Lambertian shading factor of the head ellipsoid, [T, res, res] (outside it: the rim's value).

    Evaluated once per step x step block (the factor varies slowly) and repeated."""
    T = len(cam.R)
    D = np.diag([1.0 / (model.a + 0.03) ** 2, 1.0 / (model.b + 0.03) ** 2, 1.0 / model.c**2])
    M = cam.R @ D @ np.transpose(cam.R, (0, 2, 1))  # [T, 3, 3]
    m = cam.rotate(np.array([[[0.0, model.y0, 0.0]]]).repeat(T, 0))[:, 0]  # ellipsoid centre [T, 3]
    grid = (np.arange(res // step, dtype=np.float32) + 0.5) * step
    s = cam.px_per_unit.astype(np.float32)[:, None, None]
    dx = (grid[None, None, :] - cam.centre[:, 0, None, None].astype(np.float32)) / s - m[:, 0, None, None].astype(np.float32)
    dy = (grid[None, :, None] - cam.centre[:, 1, None, None].astype(np.float32)) / s - m[:, 1, None, None].astype(np.float32)
    M = M.astype(np.float32)
    e = lambda i, j: M[:, i, j][:, None, None]  # noqa: E731
    A = e(2, 2)
    B = e(0, 2) * dx + e(1, 2) * dy
    C = e(0, 0) * dx * dx + 2 * e(0, 1) * dx * dy + e(1, 1) * dy * dy - 1.0
    dz = (-B + np.sqrt(np.maximum(B * B - A * C, 0.0))) / A
    nx = e(0, 0) * dx + e(0, 1) * dy + e(0, 2) * dz
    ny = e(1, 0) * dx + e(1, 1) * dy + e(1, 2) * dz
    nz = e(2, 0) * dx + e(2, 1) * dy + e(2, 2) * dz
    lam = (nx * LIGHT[0] + ny * LIGHT[1] + nz * LIGHT[2]) / np.sqrt(nx * nx + ny * ny + nz * nz + 1e-12)
    shade = AMBIENT + DIFFUSE * np.clip(lam, 0.0, 1.0)
    return shade.repeat(step, 1).repeat(step, 2)


def _background(colour: np.ndarray, size: int) -> Image.Image:
    y = np.linspace(-1.0, 1.0, size)[:, None, None]
    x = np.linspace(-1.0, 1.0, size)[None, :, None]
    light = 1.08 - 0.16 * (y + 1.0) / 2.0 - 0.06 * (x * x + y * y)
    img = np.clip(colour[None, None, :] * light * 255.0, 0, 255).astype(np.uint8)
    img = np.broadcast_to(img, (size, size, 3))
    return Image.fromarray(np.ascontiguousarray(img), "RGB")


def render_clip(identity: Identity, motion: Motion, resolution: int) -> tuple[np.ndarray, dict]:
    """Render `identity` moving with `motion`: frames uint8 [T, res, res, 3] and the truth dict."""
    resolution = int(resolution)
    if resolution % 2 or resolution < 16:
        raise ValueError(f"resolution must be even and >= 16, got {resolution}")
    model = FaceModel(identity)
    T = motion.n_frames
    if T < 1:
        raise ValueError("the motion has no frames")
    cam = Camera(model, motion, resolution)
    geo = model.geometry(motion.expression, motion.gaze)
    body = model.body()
    ss = SUPERSAMPLE
    size = resolution * ss

    # project everything, at the drawing resolution
    polys: list[tuple[np.ndarray, tuple, str, bool, int]] = []
    for key, colour, kind, in_mask in _ORDER:
        if key in _BODY_PARTS:
            R = rotation_matrices(cam.pose * _BODY_PARTS[key])
            pts = cam.project(np.broadcast_to(body[key], (T,) + body[key].shape), R)
        elif key in geo:
            pts = cam.project(geo[key])
        else:
            continue
        if kind == "hull":
            pts = support_hull(pts)
        pts = (pts + 0.5) * ss - 0.5
        rgb = tuple(int(v) for v in np.clip(np.round(model.colours[colour] * 255.0), 0, 255))
        width = max(1, int(round(0.035 * float(np.mean(cam.px_per_unit)) * ss))) if kind in ("line", "outline") else 0
        polys.append((pts.astype(np.float32), rgb, kind, in_mask, width))

    background = _background(model.colours["background"], size)
    frames = np.empty((T, resolution, resolution, 3), dtype=np.uint8)
    masks = np.empty((T, resolution, resolution), dtype=np.uint8)
    for t in range(T):
        img = background.copy()
        mask = Image.new("L", (size, size), 0)
        draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
        for pts, rgb, kind, in_mask, width in polys:
            xy = pts[t].ravel().tolist()
            if kind == "line":
                draw.line(xy, fill=rgb, width=width)
            elif kind == "outline":
                draw.line(xy + xy[:2], fill=rgb, width=width, joint="curve")
            else:
                draw.polygon(xy, fill=rgb)
                if in_mask:
                    mdraw.polygon(xy, fill=255)
        frames[t] = np.asarray(img.reduce(ss))
        masks[t] = np.asarray(mask.reduce(ss))

    shade = _shading(model, cam, resolution)
    factor = 1.0 + (shade - 1.0) * (masks.astype(np.float32) * (1.0 / 255.0))
    frames = np.clip(frames * factor[..., None] + 0.5, 0, 255).astype(np.uint8)

    landmarks = cam.project(geo["landmarks"]).astype(np.float32)
    hairline = cam.project(geo["hairline"])
    bbox = np.stack([
        landmarks[..., 0].min(1), np.minimum(landmarks[..., 1].min(1), hairline[..., 1].min(1)),
        landmarks[..., 0].max(1), landmarks[..., 1].max(1),
    ], 1).astype(np.float32)
    assert landmarks.shape == (T, N_LANDMARKS, 2)
    truth = {
        "landmarks": landmarks,
        "bbox": bbox,
        "expression": motion.expression.copy(),
        "pose": motion.pose.copy(),
        "gaze": motion.gaze.copy(),
        "center": motion.center.copy(),
        "scale": motion.scale.copy(),
        "identity_vector": identity.vector.copy(),
    }
    return frames, truth
