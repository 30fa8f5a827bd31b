"""Smooth random motion of one clip: talking mouth, blinks, brows, smiles, head sway, gaze, drift in frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.face import EXPRESSION_NAMES, GAZE_NAMES, POSE_NAMES

POSE_LIMITS = np.array([30.0, 20.0, 15.0])  # |yaw|, |pitch|, |roll| stay below these (degrees)
GAZE_LIMIT = 20.0
SCALE_RANGE = (0.38, 0.57)  # face height (hairline to chin of the reference face) / frame height


def center_margin(scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest |center - 0.5| (x, y) that keeps a face of this scale inside the frame at any pose/expression."""
    scale = np.asarray(scale, dtype=np.float64)
    return 0.5 - 0.56 * scale - 0.015, 0.5 - 0.72 * scale - 0.015


@dataclass(eq=False)
class Motion:
    """Per-frame motion of a clip (float32): expression [T,7] in [0,1], pose [T,3] and gaze [T,2] in degrees,
    center [T,2] (x, y as frame fractions) and scale [T] (face height / frame height)."""

    expression: np.ndarray
    pose: np.ndarray
    gaze: np.ndarray
    center: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        self.expression = np.asarray(self.expression, dtype=np.float32).reshape(-1, len(EXPRESSION_NAMES))
        T = len(self.expression)
        self.pose = np.asarray(self.pose, dtype=np.float32).reshape(T, len(POSE_NAMES))
        self.gaze = np.asarray(self.gaze, dtype=np.float32).reshape(T, len(GAZE_NAMES))
        self.center = np.asarray(self.center, dtype=np.float32).reshape(T, 2)
        self.scale = np.asarray(self.scale, dtype=np.float32).reshape(T)

    @property
    def n_frames(self) -> int:
        return len(self.expression)

    def __len__(self) -> int:
        return self.n_frames

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"expression": self.expression, "pose": self.pose, "gaze": self.gaze, "center": self.center, "scale": self.scale}

    def __getitem__(self, index) -> "Motion":
        """Frames `index` (a slice or an index array) of this motion."""
        return Motion(**{k: v[index] for k, v in self.as_dict().items()})

    @classmethod
    def static(cls, n_frames: int = 1, *, expression=None, pose=None, gaze=None, center=(0.5, 0.5), scale=0.48, **named) -> "Motion":
        """A motion that holds still; `named` sets single channels by name, e.g. static(4, blink_left=1, yaw=20).

        Values may be scalars or length-n_frames sequences."""
        T = int(n_frames)
        expr = np.zeros((T, len(EXPRESSION_NAMES))) if expression is None else np.broadcast_to(expression, (T, len(EXPRESSION_NAMES))).copy()
        pose = np.zeros((T, 3)) if pose is None else np.broadcast_to(pose, (T, 3)).copy()
        gaze = np.zeros((T, 2)) if gaze is None else np.broadcast_to(gaze, (T, 2)).copy()
        for name, value in named.items():
            for names, array in ((EXPRESSION_NAMES, expr), (POSE_NAMES, pose), (GAZE_NAMES, gaze)):
                if name in names:
                    array[:, names.index(name)] = value
                    break
            else:
                raise TypeError(f"unknown motion channel {name!r}")
        return cls(expr, pose, gaze, np.broadcast_to(center, (T, 2)), np.broadcast_to(scale, (T,)))


# ----------------------------------------------------------------------------------------------- helpers
def _sines(rng: np.random.Generator, t: np.ndarray, n: int, f_lo: float, f_hi: float) -> np.ndarray:
    """Sum of n random sinusoids, normalised to unit standard deviation."""
    freqs = rng.uniform(f_lo, f_hi, n)
    amps = rng.uniform(0.5, 1.0, n)
    phases = rng.uniform(0.0, 2.0 * np.pi, n)
    x = (amps[:, None] * np.sin(2.0 * np.pi * freqs[:, None] * t[None, :] + phases[:, None])).sum(0)
    return x / np.sqrt((amps**2).sum() / 2.0)


def _ramp(x: np.ndarray) -> np.ndarray:
    """Raised-cosine step: 0 for x <= 0, 1 for x >= 1."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


def _episodes(rng, t, rate, hold, ramp, amp) -> np.ndarray:
    """Smooth on/off episodes (a Poisson process of trapezoids with raised-cosine ramps), max-combined."""
    duration = t[-1] + 1.0 / max(len(t), 1) if len(t) else 0.0
    out = np.zeros_like(t)
    start = -rng.uniform(0.0, hold[1] + 2 * ramp[1])  # an episode may already be under way at t = 0
    start += rng.exponential(1.0 / rate)
    while start < duration:
        h, r_in, r_out, a = rng.uniform(*hold), rng.uniform(*ramp), rng.uniform(*ramp), rng.uniform(*amp)
        rise = _ramp((t - start) / r_in)
        fall = 1.0 - _ramp((t - start - r_in - h) / r_out)
        out = np.maximum(out, a * rise * fall)
        start += r_in + h + r_out + rng.exponential(1.0 / rate)
    return out


def _talking(rng, t, fps) -> np.ndarray:
    """Speech: bursts of syllables at 3-5 Hz (one opening bump each) separated by pauses."""
    duration = len(t) / fps
    out = np.zeros_like(t)
    now = -rng.uniform(0.0, 1.5)
    speaking = rng.random() < 0.8
    while now < duration:
        if speaking:
            end = now + rng.uniform(0.8, 3.0)
            rate = rng.uniform(3.0, 5.0)
            while now < end:
                length = rng.uniform(0.75, 1.3) / rate
                amp = rng.uniform(0.25, 1.0)
                phase = (t - now) / length
                inside = (phase > 0) & (phase < 1)
                out[inside] = np.maximum(out[inside], amp * np.sin(np.pi * phase[inside]) ** 2)
                now += length
        else:
            now += rng.uniform(0.25, 1.2)
        speaking = not speaking
    return np.clip(out, 0.0, 1.0)


def _blinks(rng, t) -> tuple[np.ndarray, np.ndarray]:
    left, right = np.zeros_like(t), np.zeros_like(t)
    now = rng.uniform(-0.5, 2.5)
    duration = t[-1] + 1.0 if len(t) else 0.0
    while now < duration:
        length = rng.uniform(0.22, 0.38)
        closing = 0.35 * length
        amp = 1.0 if rng.random() < 0.85 else rng.uniform(0.6, 0.95)
        shape = np.where(t < now + closing, _ramp((t - now) / closing), 1.0 - _ramp((t - now - closing) / (length - closing)))
        shape = np.where((t >= now) & (t <= now + length), shape, 0.0) * amp
        kind = rng.random()
        if kind < 0.06:  # wink, left
            left = np.maximum(left, shape)
        elif kind < 0.12:  # wink, right
            right = np.maximum(right, shape)
        else:
            other = shape * (rng.uniform(0.85, 1.0) if kind < 0.25 else 1.0)
            left, right = np.maximum(left, shape), np.maximum(right, other)
        now += length + rng.uniform(2.0, 5.0)
    return left, right


def _gaze(rng, t) -> np.ndarray:
    """Fixations (0.3-1.5 s) joined by fast saccades (~0.06 s)."""
    out = np.zeros((len(t), 2))
    target = np.clip(rng.normal(0.0, [9.0, 6.0]), -GAZE_LIMIT, GAZE_LIMIT)
    out[:] = target
    now = rng.uniform(0.0, 1.0)
    duration = t[-1] + 1.0 if len(t) else 0.0
    while now < duration:
        new = np.clip(rng.normal(0.0, [9.0, 6.0]), -GAZE_LIMIT, GAZE_LIMIT)
        w = _ramp((t - now) / 0.06)[:, None]
        out = out * (1 - w) + new * w
        now += 0.06 + rng.uniform(0.3, 1.5)
    return out


def sample_motion(rng: np.random.Generator, n_frames: int, fps: float) -> Motion:
    """A random, smooth motion of n_frames at fps; the same generator state gives the same motion."""
    T = int(n_frames)
    t = np.arange(T) / float(fps)
    expr = np.zeros((T, len(EXPRESSION_NAMES)))
    expr[:, 0] = _talking(rng, t, fps)
    smile = _episodes(rng, t, rate=0.35, hold=(0.5, 2.5), ramp=(0.2, 0.6), amp=(0.4, 1.0))
    pucker = _episodes(rng, t, rate=0.15, hold=(0.3, 1.2), ramp=(0.15, 0.4), amp=(0.4, 1.0)) * (1.0 - smile)
    raise_ = _episodes(rng, t, rate=0.4, hold=(0.2, 1.2), ramp=(0.1, 0.35), amp=(0.3, 1.0))
    frown = _episodes(rng, t, rate=0.25, hold=(0.3, 1.5), ramp=(0.15, 0.4), amp=(0.3, 1.0)) * (1.0 - raise_)
    expr[:, 1], expr[:, 2], expr[:, 3], expr[:, 4] = smile, pucker, raise_, frown
    expr[:, 5], expr[:, 6] = _blinks(rng, t)
    expr = np.clip(expr, 0.0, 1.0)

    pose = np.zeros((T, 3))
    for i, limit in enumerate(POSE_LIMITS):
        offset = rng.uniform(-0.6, 0.6)
        pose[:, i] = limit * np.tanh(offset + 0.6 * _sines(rng, t, 3, 0.05, 0.35))
    gaze = _gaze(rng, t)

    scale = rng.uniform(0.40, 0.55) + 0.02 * _sines(rng, t, 2, 0.03, 0.2)
    scale = np.clip(scale, *SCALE_RANGE)
    mx, my = center_margin(scale)
    base = rng.uniform(-1.0, 1.0, 2) * 0.75
    cx = 0.5 + mx * np.clip(base[0] + 0.2 * _sines(rng, t, 2, 0.03, 0.25), -1.0, 1.0)
    cy = 0.5 + my * np.clip(base[1] + 0.2 * _sines(rng, t, 2, 0.03, 0.25), -1.0, 1.0)
    return Motion(expr, pose, gaze, np.stack([cx, cy], 1), scale)
