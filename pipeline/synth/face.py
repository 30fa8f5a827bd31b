"""The procedural 3D cartoon face: identity parameters, their sampling, and the per-frame 3D geometry.

Canonical head frame: origin near the head centre, x right (image right), y down, z towards the camera,
units of roughly half a face width. The neutral face spans y = -0.86 k (hairline) .. 1.0 k (chin), where
k = 1 + 0.07 * face_height. Every drawable part is a set of 3D points that `render` rotates (pose),
projects and fills as polygons; the 68 landmarks (iBUG order) are 3D points of the same parts.

Conventions (shared with `render` and the truth files):
- "left"/"right" mean image left/right: landmarks 36-41 are the image-left eye, `blink_left` closes it.
- yaw > 0 turns the face towards image right (the nose tip moves right), pitch > 0 tilts the face down
  (the nose tip moves down), roll > 0 rotates the face clockwise on screen.
- gaze_yaw > 0 moves the pupils right, gaze_pitch > 0 moves them down (degrees, +-20 spans the eye).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

EXPRESSION_NAMES = ("mouth_open", "smile", "pucker", "brow_raise", "brow_frown", "blink_left", "blink_right")
POSE_NAMES = ("yaw", "pitch", "roll")
GAZE_NAMES = ("gaze_yaw", "gaze_pitch")

SHAPE_NAMES = (
    "face_width", "face_height", "jaw_width", "jaw_roundness", "eye_spacing", "eye_size",
    "nose_length", "nose_width", "lip_width", "lip_thickness", "brow_height", "brow_thickness",
)  # each in [-1, 1]
IDENTITY_NAMES = SHAPE_NAMES + (
    "skin_r", "skin_g", "skin_b",  # colours in [0, 1]
    "hair_r", "hair_g", "hair_b",
    "iris_r", "iris_g", "iris_b",
    "hair_style",  # categorical 0..3, see HAIR_STYLES
    "hair_volume",  # [0, 1]
    "background_r", "background_g", "background_b",
    "shirt_r", "shirt_g", "shirt_b",
    "glasses",  # 0 / 1
    "beard",  # 0 / 1
)
HAIR_STYLES = ("crop", "bangs", "swept", "long")

N_LANDMARKS = 68
REFERENCE_FACE_HEIGHT = 1.86  # hairline-to-chin height of the k = 1 face; `Motion.scale` is relative to it


@dataclass(frozen=True, eq=False)
class Identity:
    """One synthetic person: an id and the parameter vector in IDENTITY_NAMES order."""

    id: str
    vector: np.ndarray

    def __post_init__(self) -> None:
        vector = np.array(self.vector, dtype=np.float32).reshape(-1)
        if vector.shape != (len(IDENTITY_NAMES),):
            raise ValueError(f"identity {self.id}: vector has {vector.size} values, expected {len(IDENTITY_NAMES)}")
        vector.setflags(write=False)
        object.__setattr__(self, "vector", vector)

    def as_dict(self) -> dict[str, float]:
        return {name: float(v) for name, v in zip(IDENTITY_NAMES, self.vector)}

    def __getitem__(self, name: str) -> float:
        return float(self.vector[IDENTITY_NAMES.index(name)])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and self.id == other.id and np.array_equal(self.vector, other.vector)

    def __hash__(self) -> int:
        return hash((self.id, self.vector.tobytes()))

    @classmethod
    def from_dict(cls, identity_id: str, params: dict[str, float]) -> "Identity":
        return cls(identity_id, np.array([params[n] for n in IDENTITY_NAMES], dtype=np.float32))


# ----------------------------------------------------------------------------------------------- sampling
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


_SKIN_RAMP = np.array([[0.99, 0.87, 0.78], [0.93, 0.74, 0.60], [0.78, 0.56, 0.40], [0.58, 0.39, 0.26], [0.40, 0.26, 0.18]])
_HAIR_PALETTE = np.array([
    [0.08, 0.07, 0.07], [0.22, 0.14, 0.08], [0.42, 0.28, 0.16], [0.55, 0.24, 0.11], [0.85, 0.45, 0.18],
    [0.90, 0.77, 0.48], [0.94, 0.91, 0.80], [0.62, 0.62, 0.64], [0.30, 0.30, 0.32],
])
_IRIS_PALETTE = np.array([
    [0.55, 0.32, 0.14], [0.45, 0.26, 0.12], [0.58, 0.48, 0.20], [0.28, 0.62, 0.32], [0.25, 0.50, 0.90],
    [0.45, 0.65, 0.85], [0.55, 0.60, 0.66], [0.82, 0.55, 0.12],
])


def _sample_skin(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.12:  # cartoon skin: pastel of any hue
        return _hsv(rng.random(), rng.uniform(0.25, 0.5), rng.uniform(0.65, 0.92))
    t = rng.random() * (len(_SKIN_RAMP) - 1)
    i = min(int(t), len(_SKIN_RAMP) - 2)
    base = _SKIN_RAMP[i] + (t - i) * (_SKIN_RAMP[i + 1] - _SKIN_RAMP[i])
    return np.clip(base + rng.uniform(-0.035, 0.035, 3), 0.0, 1.0)


def _sample_hair(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.2:  # dyed: any saturated hue
        return _hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.45, 0.95))
    base = _HAIR_PALETTE[rng.integers(len(_HAIR_PALETTE))]
    return np.clip(base + rng.uniform(-0.05, 0.05, 3), 0.0, 1.0)


def _sample_iris(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.2:
        rgb = _hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.55, 0.9))
    else:
        rgb = np.clip(_IRIS_PALETTE[rng.integers(len(_IRIS_PALETTE))] + rng.uniform(-0.05, 0.05, 3), 0.0, 1.0)
    # keep the iris between the black pupil and the white sclera in brightness
    lum = _luminance(rgb)
    if lum < 0.3:
        rgb = np.clip(rgb * (0.3 / max(lum, 1e-3)), 0.0, 1.0)
    elif lum > 0.68:
        rgb = rgb * (0.68 / lum)
    return rgb


def _sample_background(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    for _ in range(50):
        rgb = _hsv(rng.random(), rng.uniform(0.1, 0.85), rng.uniform(0.25, 0.95))
        if all(np.linalg.norm(rgb - other) > 0.3 for other in avoid):
            return rgb
    return rgb


def sample_identity(rng: np.random.Generator, identity_id: str) -> Identity:
    """Draw one identity; the same generator state always gives the same identity."""
    shape = rng.uniform(-1.0, 1.0, len(SHAPE_NAMES))
    skin = _sample_skin(rng)
    hair = _sample_hair(rng)
    iris = _sample_iris(rng)
    style = float(rng.integers(len(HAIR_STYLES)))
    volume = float(rng.random())
    background = _sample_background(rng, [skin, hair])
    shirt = _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.9))
    glasses = float(rng.random() < 0.2)
    beard = float(rng.random() < 0.2)
    vector = np.concatenate([shape, skin, hair, iris, [style, volume], background, shirt, [glasses, beard]])
    return Identity(identity_id, vector.astype(np.float32))


# ----------------------------------------------------------------------------------------------- geometry
def _stack(x, y, z) -> np.ndarray:
    x, y, z = np.broadcast_arrays(x, y, z)
    return np.stack([x, y, z], axis=-1)


def _ellipse_ring(n: int) -> tuple[np.ndarray, np.ndarray]:
    angle = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.cos(angle), np.sin(angle)


class FaceModel:
    """The 3D face of one identity. `geometry(expression, gaze)` gives every part's points for T frames."""

    EYE_T = np.linspace(0.0, 1.0, 13)  # lid samples; landmarks at t = 0, 1/3, 2/3, 1 (indices 0, 4, 8, 12)
    BROW_U = np.linspace(0.0, 1.0, 9)  # brow samples, outer (0) to inner (1); landmarks at every second
    MOUTH_U = np.linspace(-1.0, 1.0, 17)
    JAW_THETA = np.linspace(0.0, np.pi, 17)  # landmarks 0-16
    JAW_DENSE = np.linspace(0.0, np.pi, 41)

    def __init__(self, identity: Identity):
        self.identity = identity
        p = identity.as_dict()
        self.p = p
        k = self.k = 1.0 + 0.07 * p["face_height"]
        self.a = 0.80 + 0.07 * p["face_width"]  # half face width
        self.c = 0.9 * self.a  # head depth
        self.y0, self.b = -0.12 * k, 1.06 * k  # head ellipsoid centre (y) and vertical half axis
        self.hairline_y = -0.86 * k
        self.chin_y = 1.0 * k
        self.pivot = np.array([0.0, 0.5 * (self.hairline_y + self.chin_y), 0.0])
        # jaw outline: tapered superellipse from eye level to chin
        self.jaw_top = -0.13 * k
        self.jaw_taper = 0.80 + 0.10 * p["jaw_width"]
        self.jaw_power = 2.6 - 0.7 * p["jaw_roundness"]  # 1.9 round .. 3.3 square
        # eyes
        self.eye_w = 0.47 + 0.06 * p["eye_size"]
        self.eye_dx = max(0.37 + 0.035 * p["eye_spacing"], self.eye_w / 2 + 0.06)
        self.eye_y = -0.12 * k
        self.eye_up, self.eye_lo = 0.36 * self.eye_w, 0.26 * self.eye_w
        self.iris_r = 0.28 * self.eye_w
        # brows
        self.brow_y = -0.45 * k - 0.04 * p["brow_height"]
        self.brow_th = 0.115 + 0.03 * p["brow_thickness"]
        # nose
        self.nose_top = self.eye_y - 0.02 * k
        self.nose_tip = (0.20 + 0.05 * p["nose_length"]) * k
        self.nose_w = 0.13 + 0.035 * p["nose_width"]
        self.nose_pz = 0.20 + 0.04 * p["nose_length"]
        # mouth
        self.mouth_y = 0.53 * k
        self.mouth_w = 0.30 + 0.05 * p["lip_width"]
        self.lip_up = 0.085 + 0.02 * p["lip_thickness"]
        self.lip_lo = 0.10 + 0.025 * p["lip_thickness"]
        # hair
        self.style = HAIR_STYLES[int(round(np.clip(p["hair_style"], 0, len(HAIR_STYLES) - 1)))]
        v = p["hair_volume"]
        self.hair_e = 0.03 + 0.04 * v if self.style == "crop" else 0.05 + 0.17 * v
        self.glasses = p["glasses"] > 0.5
        self.beard = p["beard"] > 0.5
        self.colours = self._colours()

    # -- colours -------------------------------------------------------------------------------------
    def _colours(self) -> dict[str, np.ndarray]:
        p = self.p
        skin = np.array([p["skin_r"], p["skin_g"], p["skin_b"]])
        hair = np.array([p["hair_r"], p["hair_g"], p["hair_b"]])
        iris = np.array([p["iris_r"], p["iris_g"], p["iris_b"]])
        brow = np.minimum(hair * 0.4, skin * 0.28)
        lip = np.clip(skin * np.array([0.80, 0.50, 0.52]) + np.array([0.12, 0.02, 0.03]), 0, 1)
        return {
            "skin": skin,
            "skin_shadow": skin * 0.8,
            "ear": skin * 0.93,
            "neck": skin * 0.74,
            "nostril": skin * 0.38,
            "lid_line": skin * 0.62,
            "hair": hair,
            "hair_back": hair * 0.72,
            "beard": hair * 0.85,
            "brow": brow,
            "lash": np.minimum(brow, 0.12),
            "sclera": np.array([0.98, 0.98, 0.96]),
            "iris": iris,
            "pupil": np.array([0.04, 0.03, 0.03]),
            "highlight": np.array([1.0, 1.0, 1.0]),
            "lip": lip,
            "lip_line": lip * 0.45,
            "mouth": np.array([0.22, 0.04, 0.07]),
            "teeth": np.array([0.96, 0.95, 0.90]),
            "glasses": np.array([0.10, 0.10, 0.12]),
            "shirt": np.array([p["shirt_r"], p["shirt_g"], p["shirt_b"]]),
            "background": np.array([p["background_r"], p["background_g"], p["background_b"]]),
        }

    # -- surfaces ------------------------------------------------------------------------------------
    def surface_z(self, x, y) -> np.ndarray:
        """Depth of the face surface (the head ellipsoid, kept a little in front near its rim)."""
        u = 1.0 - (np.asarray(x) / self.a) ** 2 - ((np.asarray(y) - self.y0) / self.b) ** 2
        return self.c * np.sqrt(np.clip(u, 0.04, 1.0))

    def _jaw_halfwidth(self, s):
        taper = 1.0 - (1.0 - self.jaw_taper) * s
        return 0.99 * self.a * taper

    def _jaw(self, theta: np.ndarray, open_d: np.ndarray) -> np.ndarray:
        """Front outline from the image-left ear (theta 0) over the chin (pi/2) to the right ear (pi)."""
        p = self.jaw_power
        cos, sin = np.cos(theta), np.abs(np.sin(theta))
        s = sin ** (2.0 / p)
        x = -self._jaw_halfwidth(s) * np.sign(cos) * np.abs(cos) ** (2.0 / p)
        y = self.jaw_top + s * (self.chin_y - self.jaw_top)
        z = self.c * (0.05 + 0.5 * sin**2)
        drop = 0.8 * np.clip((s - 0.3) / 0.6, 0.0, 1.0)
        return _stack(x, y + drop * open_d, z)

    def _lower_head(self, open_d: np.ndarray) -> np.ndarray:
        """Rings around the lower face (for the silhouette under yaw and pitch)."""
        levels = np.linspace(0.0, 1.0, 8)
        cos, sin = _ellipse_ring(16)
        s = levels[:, None]
        w = self._jaw_halfwidth(s) * (1.0 - s**self.jaw_power) ** (1.0 / self.jaw_power)
        depth = self.c * (0.95 - 0.4 * s)
        x = (w * cos[None, :]).ravel()
        z = (-0.05 * self.c + depth * sin[None, :]).ravel()
        y = np.broadcast_to(self.jaw_top + s * (self.chin_y - self.jaw_top), (8, 16)).ravel()
        drop = 0.8 * np.clip((np.broadcast_to(s, (8, 16)).ravel() - 0.3) / 0.6, 0.0, 1.0)
        return _stack(x, y + drop * open_d, z)

    def _cranium(self, extra: float = 0.0, ymax: float | None = None, zmin: float = -2.0) -> np.ndarray:
        az = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
        el = np.linspace(-np.pi / 2, np.pi / 2, 15)
        A, E = np.meshgrid(az, el)
        x = (self.a + extra) * np.cos(E) * np.sin(A)
        y = self.y0 - (self.b + extra) * np.sin(E)
        z = (self.c + extra) * np.cos(E) * np.cos(A)
        pts = np.stack([x.ravel(), y.ravel(), z.ravel()], -1)
        keep = pts[:, 2] >= zmin
        if ymax is not None:
            keep &= pts[:, 1] <= ymax
        return pts[keep]

    def hairline(self, n: int = 15, u: np.ndarray | None = None) -> np.ndarray:
        """The anatomical hairline on the forehead (it bounds the face box at the top)."""
        u = np.linspace(-1.0, 1.0, n) if u is None else u
        x = 0.92 * self.a * u
        y = self.hairline_y + 0.32 * self.k * np.abs(u) ** 2.5
        return _stack(x, y, self.surface_z(x, y) + 0.01)

    # -- eyes ----------------------------------------------------------------------------------------
    def _lids(self, t, blink, raise_, smile):
        prof_u = np.sin(np.pi * np.clip(t, 0, 1)) ** 0.75
        prof_l = np.sin(np.pi * np.clip(t, 0, 1)) ** 0.9
        y_lo = self.eye_y + self.eye_lo * (1.0 - 0.25 * smile) * prof_l
        y_open = self.eye_y - self.eye_up * (1.0 + 0.18 * raise_ - 0.1 * smile) * prof_u
        y_up = y_lo + (y_open - y_lo) * (1.0 - blink)
        return y_up, y_lo

    def _eye(self, side: int, blink, raise_, smile, gaze) -> dict[str, np.ndarray]:
        cx, w = side * self.eye_dx, self.eye_w
        x0 = cx - w / 2
        t = self.EYE_T
        x = x0 + w * t
        y_up, y_lo = self._lids(t, blink, raise_, smile)

        def on_eye(x, y, dz=0.03):
            return _stack(x, y, self.surface_z(x, y) + dz)

        upper, lower = on_eye(x, y_up), on_eye(x, y_lo)
        lash_th = 0.05 * (0.35 + 0.65 * np.sin(np.pi * t) ** 0.6)
        lash = on_eye(x, y_up - lash_th, 0.035)
        wing_x = x0 - 0.045 if side < 0 else x0 + w + 0.045
        wing = on_eye(np.array([wing_x]), np.full_like(y_up[..., :1], self.eye_y - 0.045), 0.035)
        lid_line = on_eye(x, y_lo + 0.022, 0.03)

        def disc(cx_, cy_, r, n, dz):
            cos, sin = _ellipse_ring(n)
            px = np.clip(cx_ + r * cos, x0, x0 + w)
            py = cy_ + r * sin
            yu, yl = self._lids((px - x0) / w, blink, raise_, smile)
            return on_eye(px, np.clip(py, yu, yl), dz)

        gx = np.clip(gaze[:, :1] / 20.0, -1.2, 1.2)
        gy = np.clip(gaze[:, 1:2] / 20.0, -1.2, 1.2)
        icx = cx + gx * 0.25 * w
        icy = self.eye_y - 0.045 * w + gy * 0.11 * w
        parts = {
            "sclera": np.concatenate([upper, lower[:, ::-1][:, 1:-1]], 1),
            "iris": disc(icx, icy, self.iris_r, 20, 0.04),
            "pupil": disc(icx, icy, 0.5 * self.iris_r, 14, 0.045),
            "highlight": disc(icx - 0.35 * self.iris_r, icy - 0.38 * self.iris_r, 0.17 * self.iris_r, 8, 0.05),
            # the wing sits at the outer corner: t = 0 for the left eye, t = 1 for the right one
            "lash": np.concatenate([upper, lash[:, ::-1], wing], 1) if side < 0 else np.concatenate([upper, wing, lash[:, ::-1]], 1),
            "lid": np.concatenate([lower, lid_line[:, ::-1]], 1),
            "landmarks": np.concatenate([upper[:, [0, 4, 8, 12]], lower[:, [8, 4]]], 1),
        }
        return parts

    # -- brows ---------------------------------------------------------------------------------------
    def _brow(self, side: int, raise_, frown) -> tuple[np.ndarray, np.ndarray]:
        u = self.BROW_U
        inner, outer = self.eye_dx - 0.42 * self.eye_w, self.eye_dx + 0.55 * self.eye_w
        x = side * (outer + (inner - outer) * u) - side * 0.05 * frown * u**2
        y = (self.brow_y - 0.045 * np.sin(np.pi * (0.15 + 0.7 * u)) + 0.015 * u
             - 0.11 * raise_ * (0.8 + 0.3 * u) + 0.085 * frown * u**2 - 0.02 * frown * (1 - u))
        half = 0.5 * self.brow_th * (0.5 + 0.5 * np.sqrt(u))
        z = self.surface_z(x, y) + 0.04
        top, bottom, centre = _stack(x, y - half, z), _stack(x, y + half, z), _stack(x, y, z)
        poly = np.concatenate([top, bottom[:, ::-1]], 1)
        marks = centre[:, ::2]  # outer .. inner
        if side > 0:
            marks = marks[:, ::-1]  # landmarks 22-26 run inner .. outer (left to right)
        return poly, marks

    # -- nose ----------------------------------------------------------------------------------------
    def _nose(self, T: int) -> dict[str, np.ndarray]:
        top, tip, nw, k = self.nose_top, self.nose_tip, self.nose_w, self.k
        base = tip + 0.05 * k

        def pt(x, y, f):  # f: protrusion fraction
            x = np.asarray(x, float)
            return _stack(x, y, self.surface_z(x, y) + self.nose_pz * np.asarray(f))

        ridge_y = top + (tip - top) * np.array([0.0, 1 / 3, 2 / 3, 1.0])
        ridge = pt(np.zeros(4), ridge_y, ((ridge_y - top) / (tip - top)) ** 1.3)
        nostril_x = nw * np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
        nostrils = pt(nostril_x, base + np.array([-0.02, 0.0, 0.005, 0.0, -0.02]), np.array([0.3, 0.55, 0.75, 0.55, 0.3]))
        outline = np.concatenate([
            pt([-0.065, -0.08, -0.85 * nw], [top, top + 0.6 * (tip - top), tip - 0.03], [0.0, 0.45, 0.3]),
            nostrils,
            pt([0.85 * nw, 0.08, 0.065], [tip - 0.03, top + 0.6 * (tip - top), top], [0.3, 0.45, 0.0]),
        ])
        holes = []
        for side in (-1, 1):
            cos, sin = _ellipse_ring(10)
            hx = side * 0.5 * nw + (0.045 + 0.012 * self.p["nose_width"]) * cos
            hy = base - 0.012 + 0.026 * sin
            holes.append(pt(hx, hy, 0.5))
        rep = lambda a: np.broadcast_to(a, (T,) + a.shape)  # noqa: E731
        return {"nose": rep(outline), "nostril_l": rep(holes[0]), "nostril_r": rep(holes[1]),
                "landmarks": rep(np.concatenate([ridge, nostrils]))}

    # -- mouth ---------------------------------------------------------------------------------------
    def _mouth(self, mouth_open, smile, pucker) -> dict[str, np.ndarray]:
        mw = self.mouth_w * (1.0 - 0.38 * pucker) * (1.0 + 0.14 * smile)
        od = 0.34 * self.k * mouth_open * (1.0 - 0.3 * pucker)
        lift = 0.085 * smile
        th_u = self.lip_up * (1.0 + 0.35 * pucker) * (1.0 - 0.25 * smile)
        th_l = self.lip_lo * (1.0 + 0.35 * pucker) * (1.0 - 0.2 * smile)
        expo = 0.7 - 0.35 * pucker
        ym = self.mouth_y

        def inner_up(u):
            return ym - lift * u**2 - 0.12 * od * (1 - u**2)

        def inner_lo(u):
            return ym - lift * u**2 + od * np.clip(1 - u**2, 0, 1) ** expo

        def outer_up(u):
            bow = np.sqrt(np.clip(1 - u**2, 0, 1)) * (1.0 - 0.2 * np.exp(-((u / 0.16) ** 2)))
            return inner_up(u) - th_u * bow

        def outer_lo(u):
            return inner_lo(u) + th_l * np.sqrt(np.clip(1 - u**2, 0, 1))

        def pts(xs, ys, u):
            z = self.surface_z(xs, ys) + 0.04 + 0.1 * pucker * np.clip(1 - u**2, 0, 1)
            return _stack(xs, ys, z)

        u = self.MOUTH_U
        xo, xi = mw * u, 0.86 * mw * u
        o_up, o_lo = pts(xo, outer_up(u), u), pts(xo, outer_lo(u), u)
        i_up, i_lo = pts(xi, inner_up(u), u), pts(xi, inner_lo(u), u)
        line = pts(xi, inner_up(u) + 0.024, u)
        tu = u[2:-2]
        xt = 0.86 * mw * tu
        t_top = pts(xt, inner_up(tu), tu)
        t_bot = pts(xt, np.minimum(inner_up(tu) + 0.07 * self.k, inner_lo(tu)), tu)
        # landmarks 48-59 (outer) and 60-67 (inner)
        uo_up = np.array([-1.0, -0.62, -0.28, 0.0, 0.28, 0.62, 1.0])
        uo_lo = np.array([0.62, 0.28, 0.0, -0.28, -0.62])
        ui_up = np.array([-1.0, -0.45, 0.0, 0.45, 1.0])
        ui_lo = np.array([0.45, 0.0, -0.45])
        marks = np.concatenate([
            pts(mw * uo_up, outer_up(uo_up), uo_up), pts(mw * uo_lo, outer_lo(uo_lo), uo_lo),
            pts(0.86 * mw * ui_up, inner_up(ui_up), ui_up), pts(0.86 * mw * ui_lo, inner_lo(ui_lo), ui_lo),
        ], 1)
        # beard outline around the mouth (moustache line above the upper lip)
        moustache = pts(1.2 * mw * u[::-1], outer_up(u[::-1]) - 0.075, u)
        return {
            "lips": np.concatenate([o_up, o_lo[:, ::-1][:, 1:-1]], 1),
            "mouth": np.concatenate([i_up, i_lo[:, ::-1][:, 1:-1]], 1),
            "lip_line": np.concatenate([i_up, line[:, ::-1]], 1),
            "teeth": np.concatenate([t_top, t_bot[:, ::-1]], 1),
            "moustache": moustache,
            "landmarks": marks,
            "open_d": od,
        }

    # -- hair, ears, glasses, body (static) ----------------------------------------------------------
    def _hair(self) -> dict[str, np.ndarray]:
        e, a, k = self.hair_e, self.a, self.k
        out = {}
        cut = self.brow_y - 0.06
        cap = self._cranium(e, ymax=cut, zmin=-0.3 * self.c)
        out["hair_cap"] = cap
        # forehead skin patch: hairline down to below the eyes, re-covers the cap's convex hull
        fore_u = np.linspace(-1.0, 1.0, 15)
        hl = self.hairline(u=fore_u)
        low_x = np.array([0.97 * a, 0.5 * a, -0.5 * a, -0.97 * a])
        low_y = np.full(4, self.eye_y + 0.12)
        out["forehead"] = np.concatenate([hl, _stack(low_x, low_y, self.surface_z(low_x, low_y))])
        if self.style != "crop":
            drape = {"bangs": (0.05 * k, 0.0), "swept": (0.7 * k, 0.06), "long": (1.9 * k, 0.22)}[self.style]
            back = self._cranium(e + 0.03, ymax=drape[0], zmin=-2.0)
            side_x = a + e + drape[1]
            extra = _stack(np.array([-side_x, side_x, -side_x * 0.9, side_x * 0.9]),
                           np.array([drape[0], drape[0], drape[0] * 0.6, drape[0] * 0.6]), -0.3 * self.c)
            out["hair_back"] = np.concatenate([back, extra])
        # fringe over the forehead
        u = np.linspace(-1.0, 1.0, 17)
        hl_y = self.hairline_y + 0.32 * k * np.abs(u) ** 2.5
        top_y = hl_y - 0.18
        if self.style == "bangs":
            zig = 0.035 * (np.arange(17) % 2)
            bottom_y = np.maximum(hl_y, self.hairline_y + 0.12 * k + zig)
        elif self.style == "swept":
            bottom_y = np.maximum(hl_y, self.hairline_y + 0.2 * k * np.clip((0.6 - u) / 1.6, 0, 1) ** 0.7)
        elif self.style == "long":
            bottom_y = np.maximum(hl_y, self.hairline_y + 0.11 * k * np.abs(u) ** 1.2)
        else:
            bottom_y = hl_y
        if self.style != "crop":
            x = 0.95 * a * u
            fz = lambda y: self.surface_z(x, y) + 0.02 + 0.5 * e  # noqa: E731
            out["hair_fringe"] = np.concatenate([_stack(x, top_y, fz(top_y)), _stack(x, bottom_y, fz(bottom_y))[::-1]])
        return out

    def _ears(self) -> list[np.ndarray]:
        if self.style in ("swept", "long"):
            return []
        ears = []
        cos, sin = _ellipse_ring(12)
        for side in (-1, 1):
            h = np.array([side * 0.75, 0.0, -0.66])
            centre = np.array([side * 0.97 * self.a, -0.02 * self.k, -0.12 * self.c])
            pts = centre + (0.11 * cos)[:, None] * h + (0.2 * self.k * sin)[:, None] * np.array([0, 1.0, 0])
            ears.append(pts)
        return ears

    def _glasses(self) -> dict[str, np.ndarray]:
        cos, sin = _ellipse_ring(18)
        out = {}
        for name, side in (("rim_l", -1), ("rim_r", 1)):
            cx, cy = side * self.eye_dx, self.eye_y - 0.03
            z = self.surface_z(cx, cy) + 0.09
            out[name] = _stack(cx + 0.62 * self.eye_w * cos, cy + 0.42 * self.eye_w * sin, z)
        inner = self.eye_dx - 0.62 * self.eye_w
        z_in = self.surface_z(inner, self.eye_y) + 0.09
        out["bridge"] = _stack(np.array([-inner, -0.3 * inner, 0.3 * inner, inner]),
                               self.eye_y - np.array([0.06, 0.09, 0.09, 0.06]), z_in)
        outer = self.eye_dx + 0.62 * self.eye_w
        for name, side in (("arm_l", -1), ("arm_r", 1)):
            out[name] = _stack(np.array([side * outer, side * 0.99 * self.a]), np.array([self.eye_y - 0.05, self.eye_y - 0.07]),
                               np.array([self.surface_z(outer, self.eye_y) + 0.09, -0.15 * self.c]))
        return out

    def body(self) -> dict[str, np.ndarray]:
        a, k = self.a, self.k
        neck = _stack(np.array([-0.36, 0.36, 0.42, -0.42]) * a, np.array([0.45, 0.45, 1.7, 1.7]) * k, -0.3 * self.c)
        tx = np.array([-0.45, -1.15, -1.75, -2.05, -2.2, 2.2, 2.05, 1.75, 1.15, 0.45])
        ty = np.array([1.32, 1.5, 1.8, 2.4, 5.0, 5.0, 2.4, 1.8, 1.5, 1.32]) * k
        torso = _stack(tx * a / 0.78, ty, -0.45 * self.c)
        return {"neck": neck, "torso": torso}

    # -- all parts -----------------------------------------------------------------------------------
    def geometry(self, expression: np.ndarray, gaze: np.ndarray) -> dict[str, np.ndarray]:
        """Head-frame 3D points [T, n, 3] of every part, plus "landmarks" [T, 68, 3] and "hairline"."""
        expression = np.asarray(expression, dtype=np.float64)
        gaze = np.asarray(gaze, dtype=np.float64)
        T = len(expression)
        col = {n: expression[:, i : i + 1] for i, n in enumerate(EXPRESSION_NAMES)}
        mouth = self._mouth(col["mouth_open"], col["smile"], col["pucker"])
        od = mouth.pop("open_d")
        g: dict[str, np.ndarray] = {}
        rep = lambda a: np.broadcast_to(a, (T,) + a.shape)  # noqa: E731
        jaw_marks = self._jaw(self.JAW_THETA, od)
        g["face"] = np.concatenate([self._jaw(self.JAW_DENSE, od), self._lower_head(od), rep(self._cranium(ymax=self.jaw_top))], 1)
        g.update({k: rep(v) for k, v in self._hair().items()})
        for i, ear in enumerate(self._ears()):
            g[f"ear_{i}"] = rep(ear)
        if self.beard:
            theta = np.linspace(0.25 * np.pi, 0.75 * np.pi, 21)
            jaw = self._jaw(theta, od)
            jaw = jaw * np.array([1.04, 1.0, 1.0]) + np.array([0.0, 0.02, 0.0])
            cheek_y = self.mouth_y - 0.16
            cheek = lambda x: _stack(np.full((T, 1), x), np.full((T, 1), cheek_y), self.surface_z(x, cheek_y))  # noqa: E731
            cx = 0.8 * self._jaw_halfwidth(0.3)
            g["beard"] = np.concatenate([jaw, cheek(cx), mouth["moustache"], cheek(-cx)], 1)
        eyes = {}
        for name, side, blink in (("l", -1, col["blink_left"]), ("r", 1, col["blink_right"])):
            eyes[name] = self._eye(side, blink, col["brow_raise"], col["smile"], gaze)
            for part in ("sclera", "iris", "pupil", "highlight", "lid", "lash"):
                g[f"eye_{name}_{part}"] = eyes[name][part]
        nose = self._nose(T)
        g.update({k: v for k, v in nose.items() if k != "landmarks"})
        brows = {}
        for name, side in (("l", -1), ("r", 1)):
            poly, marks = self._brow(side, col["brow_raise"], col["brow_frown"])
            g[f"brow_{name}"] = poly
            brows[name] = marks
        for part in ("lips", "mouth", "lip_line", "teeth"):
            g[part] = mouth[part]
        if self.glasses:
            g.update({f"glasses_{k}": rep(v) for k, v in self._glasses().items()})
        g["landmarks"] = np.concatenate([
            jaw_marks, brows["l"], brows["r"], nose["landmarks"], eyes["l"]["landmarks"], eyes["r"]["landmarks"],
            mouth["landmarks"],
        ], 1)
        g["hairline"] = rep(self.hairline())
        return {k: np.broadcast_to(v, (T,) + v.shape[1:]) for k, v in g.items()}
