"""Figures rendered to PNG by us (`dvc plots show` needs a CDN, which offline machines cannot reach)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.io import atomic_path  # noqa: E402


def image_grid(
    path: str | os.PathLike,
    images: Sequence[np.ndarray],  # RGB uint8 [H, W, 3], any sizes
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    points: Sequence[np.ndarray | None] | None = None,  # optional [K, 2] x, y to scatter on each image
    suptitle: str | None = None,
) -> Path:
    """Save a grid of images (with optional titles and landmark dots) as a PNG, atomically."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.75 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k], interpolation="nearest")
        if points is not None and points[k] is not None:
            ax.scatter(points[k][:, 0], points[k][:, 1], s=2, c="cyan", linewidths=0)
        if titles is not None:
            ax.set_title(titles[k], fontsize=6)
    if suptitle:
        fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def overlay_mask(image: np.ndarray, mask: np.ndarray, colour=(255, 0, 255), alpha: float = 0.45) -> np.ndarray:
    """Tint the masked pixels of an RGB uint8 image."""
    out = image.astype(np.float32)
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, np.float32)
    return out.clip(0, 255).astype(np.uint8)
