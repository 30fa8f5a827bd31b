"""Face analysis: one interface, several backends (toy | arcface | dlib | pyfeat).

Every backend is a `FaceAnalyzer` with two questions it may answer about ALIGNED FACE CROPS (the frames of
the `prepare` store, or generator outputs; `reenact analyze` finds and crops faces first):

- `identity(images) -> embeddings [N, D]` (torch). Differentiable w.r.t. the images when `differentiable`
  is True (toy, arcface: usable as the training ID loss); `distance(a, b)` is the backend's own identity
  distance (cosine distance for the ArcFace-style embeddings, Euclidean for dlib's descriptor).
- `motion(images) -> MotionFeatures`: per-frame head pose, gaze and an expression / AU vector, each with
  the names of its channels (the names say what a channel is: the toy network's are the renderer's
  channels, dlib's are landmark geometry, py-feat's are AUs). Frames where the backend finds no face are
  NaN with `found` False.

Images are torch float [N, 3, H, W] in [-1, 1] (the generator's range) or numpy uint8 [N, H, W, 3]
(stored frames); both are accepted everywhere. A backend that cannot answer a question raises
`BackendError` naming the backends that can.

`describe()` names the backend and the sha256 of every weights file it loaded, so that a number is
never reported without the network that made it (stages log it to MLflow and write it to their metrics).

Which backend serves which use is chosen in params.yaml, section `analysis`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from pipeline.config import Params

from pipeline.errors import UserError

BACKENDS = ("toy", "arcface", "dlib", "pyfeat")
IDENTITY_BACKENDS = ("toy", "arcface", "dlib")  # pyfeat's identity model is not offered (see pyfeat.py)
MOTION_BACKENDS = ("toy", "dlib", "pyfeat")
DIFFERENTIABLE_BACKENDS = ("toy", "arcface")  # torch networks: usable as the training ID loss


class BackendError(UserError, ValueError):
    """A backend cannot be built or cannot answer a question; the message names the fix."""


@dataclass
class MotionFeatures:
    """Per-frame motion of N frames; channels named by the backend. Rows with found=False are NaN."""

    pose: np.ndarray  # float32 [N, len(pose_names)]: head pose in degrees (yaw, pitch, roll)
    gaze: np.ndarray  # float32 [N, len(gaze_names)]
    expression: np.ndarray  # float32 [N, len(expression_names)]: expression features or AU intensities
    pose_names: tuple[str, ...]
    gaze_names: tuple[str, ...]
    expression_names: tuple[str, ...]
    found: np.ndarray = field(default=None)  # bool [N]: a face was analysed in this frame

    def __post_init__(self) -> None:
        n = len(self.pose)
        for name in ("pose", "gaze", "expression"):
            values = np.asarray(getattr(self, name), dtype=np.float32)
            names = getattr(self, f"{name}_names")
            if values.shape != (n, len(names)):
                raise ValueError(f"MotionFeatures.{name}: expected shape {(n, len(names))}, got {values.shape}")
            setattr(self, name, values)
        self.found = np.ones(n, dtype=bool) if self.found is None else np.asarray(self.found, dtype=bool).reshape(n)

    def __len__(self) -> int:
        return len(self.pose)

    def row(self, i: int) -> dict[str, Any]:
        """Frame i as JSON-ready nested dicts of plain floats (None for NaN)."""
        def named(values, names):
            return {n: (None if not np.isfinite(v) else float(v)) for n, v in zip(names, values[i])}

        return {
            "found": bool(self.found[i]),
            "pose": named(self.pose, self.pose_names),
            "gaze": named(self.gaze, self.gaze_names),
            "expression": named(self.expression, self.expression_names),
        }


def as_images(images) -> torch.Tensor:
    """float [N, 3, H, W] in [-1, 1]; uint8 [N, H, W, 3] (numpy or torch) is converted, a float tensor kept as is."""
    if isinstance(images, np.ndarray) or (isinstance(images, torch.Tensor) and images.dtype == torch.uint8):
        frames = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames [N, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W] in [-1, 1] or uint8 frames [N, H, W, 3], got "
                         f"{type(images).__name__} {list(getattr(images, 'shape', []))}")
    return images


def as_frames(images) -> np.ndarray:
    """uint8 [N, H, W, 3] numpy; float images [N, 3, H, W] in [-1, 1] are clamped, scaled and rounded."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [N, H, W, 3], got {list(images.shape)}")
        return images
    x = as_images(images)
    return x.detach().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class FaceAnalyzer:
    """The interface every backend implements (see the module docstring). Subclasses set the class
    attributes and override what they can answer."""

    name: str = ""
    differentiable: bool = False  # identity() keeps the autograd graph to the images
    distance_name: str = "cosine"  # how distance() compares embeddings: cosine | euclidean
    threshold: float | None = None  # same-person decision threshold on distance(), when the backend has one
    input_size: int = 256  # side of the square face crop the backend reads best (`reenact analyze` crops to it)

    @property
    def has_identity(self) -> bool:
        return type(self).identity is not FaceAnalyzer.identity

    @property
    def has_motion(self) -> bool:
        return type(self).motion is not FaceAnalyzer.motion

    def identity(self, images) -> torch.Tensor:
        raise BackendError(f"backend '{self.name}' has no identity network; identity backends: {', '.join(IDENTITY_BACKENDS)}")

    def motion(self, images) -> MotionFeatures:
        raise BackendError(f"backend '{self.name}' has no motion analyser; motion backends: {', '.join(MOTION_BACKENDS)}")

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Identity distance [N] between embeddings a [N, D] and b [N, D] (or broadcastable)."""
        if self.distance_name == "cosine":
            return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1)
        return torch.linalg.vector_norm(a - b, dim=-1)

    def weights(self) -> dict[str, str]:
        """{file path: sha256} of every weights file this backend loaded."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "weights": self.weights()}


def identity_loss(analyzer: FaceAnalyzer, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The ID loss of Eq. 8-9 as pSp computes it: batch mean of 1 - cos(emb(y_hat), emb(y)), the target's
    embedding detached (gradients reach y_hat only). Needs a differentiable backend with cosine distance."""
    if not analyzer.differentiable or analyzer.distance_name != "cosine":
        raise BackendError(f"backend '{analyzer.name}' cannot serve the ID loss (it needs a differentiable network "
                           f"with cosine distance): use one of {', '.join(DIFFERENTIABLE_BACKENDS)}")
    if y_hat.shape[0] != y.shape[0]:
        raise ValueError(f"batch sizes differ: y_hat {y_hat.shape[0]}, y {y.shape[0]}")
    return analyzer.distance(analyzer.identity(y_hat), analyzer.identity(y).detach()).mean()


def backend_tags(use: str, described: dict[str, Any]) -> dict[str, str]:
    """MLflow tags naming the backend that served `use` (e.g. identity_metric) and its weights' sha256, from
    `FaceAnalyzer.describe()`: {'backend.<use>': name, 'backend.<use>.weights': 'file=sha256; ...'}."""
    weights = "; ".join(f"{path}={sha}" for path, sha in sorted(described["weights"].items())) or "(none)"
    return {f"backend.{use}": described["backend"], f"backend.{use}.weights": weights}


def load_analyzer(name: str, params: "Params", root: Path | None = None, device: str | torch.device = "cpu") -> FaceAnalyzer:
    """Build backend `name` with the files params.yaml names (checked; a missing file names how to get it).

    toy: the `analyzer` stage's models/analyzer.pt | arcface: assets.arcface_ir_se50 | dlib: the dlib model
    files in assets | pyfeat: py-feat's model files (assets.pyfeat_*)."""
    from pipeline.paths import workspace

    root = Path(root) if root is not None else workspace()
    if name == "toy":
        from pipeline.analysis.toy import ToyAnalyzer

        return ToyAnalyzer.load(root / ToyAnalyzer.CHECKPOINT, device=device, root=root)
    if name == "arcface":
        from pipeline.analysis.arcface import ArcFaceAnalyzer

        return ArcFaceAnalyzer.from_params(params, device=device)
    if name == "dlib":
        from pipeline.analysis.dlib_features import DlibAnalyzer

        return DlibAnalyzer.from_params(params)
    if name == "pyfeat":
        from pipeline.analysis.pyfeat import PyFeatAnalyzer

        return PyFeatAnalyzer.from_params(params, device=device)
    raise BackendError(f"unknown face analysis backend {name!r}; backends: {', '.join(BACKENDS)}")
