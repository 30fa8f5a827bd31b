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
    return save_png(fig, path, dpi=110)


def save_png(fig, path: str | os.PathLike, dpi: int) -> Path:
    """Lay out, write atomically as PNG, close."""
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def overlay_mask(image: np.ndarray, mask: np.ndarray, colour=(255, 0, 255), alpha: float = 0.45) -> np.ndarray:
    """Tint the masked pixels of an RGB uint8 image."""
    out = image.astype(np.float32)
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, np.float32)
    return out.clip(0, 255).astype(np.uint8)


def prepare_sheet(store, path: str | os.PathLike, per_split: int = 8) -> Path:
    """Prepared crops (pipeline.store.PreparedStore) with the Eq. 13 mask tinted and the landmarks dotted."""
    images, titles, points = [], [], []
    for split in ("train", "test"):
        for clip_id in store.clips(split)["clip_id"].head(per_split):
            frames, masks, lms = store.frames(clip_id), store.masks(clip_id), store.landmarks(clip_id)
            k = len(frames) // 2
            images.append(overlay_mask(np.asarray(frames[k]), masks[k]))
            points.append(lms[k])
            titles.append(f"{split} {clip_id}")
    return image_grid(path, images, titles, ncols=8, points=points, suptitle="prepare: crops, Eq. 13 masks, landmarks")


def analyzer_figure(path: str | os.PathLike, predicted, truth: dict, distances: dict, threshold: float) -> Path:
    """The toy analyzer on held-out identities: predicted vs renderer truth for pose, gaze and two expression
    channels (`predicted`: pipeline.analysis.MotionFeatures), and the same / different identity distances."""
    panels = [("pose", i, n) for i, n in enumerate(predicted.pose_names)] + \
             [("gaze", i, n) for i, n in enumerate(predicted.gaze_names)] + \
             [("expression", predicted.expression_names.index(n), n) for n in ("mouth_open", "blink_left")]
    fig, axes = plt.subplots(2, 4, figsize=(14, 7))
    for ax, (group, i, name) in zip(axes.flat, panels):
        t, p = truth[group][:, i], getattr(predicted, group)[:, i]
        ax.scatter(t, p, s=3, alpha=0.4)
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(f"{name} ({'deg' if group != 'expression' else '0-1'})")
        ax.set_xlabel("renderer truth")
        ax.set_ylabel("toy analyzer")
    ax = axes.flat[-1]
    bins = np.linspace(0, max(distances["different"].max(), distances["same"].max()), 40)
    ax.hist(distances["same"], bins=bins, alpha=0.6, label="same identity")
    ax.hist(distances["different"], bins=bins, alpha=0.6, label="different identity")
    ax.axvline(threshold, color="k", ls="--", lw=0.8, label="threshold")
    ax.set_title("identity distance, held-out pairs")
    ax.legend(fontsize=8)
    fig.suptitle("analyzer: held-out identities")
    return save_png(fig, path, dpi=80)
