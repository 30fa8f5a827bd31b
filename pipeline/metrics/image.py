"""Per-image reconstruction metrics on uint8 RGB images [..., H, W, 3].

PSNR over a mask has no library implementation (scikit-image's PSNR takes whole images), so it is
written here; whole-image PSNR and SSIM are scikit-image's.
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean over images of scikit-image's PSNR (data range 255)."""
    ref, out = _batched(reference), _batched(test)
    return float(np.mean([peak_signal_noise_ratio(r, t, data_range=255) for r, t in zip(ref, out)]))


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean over images of scikit-image's SSIM (Gaussian-free 7x7 window, colour channels averaged)."""
    ref, out = _batched(reference), _batched(test)
    return float(np.mean([structural_similarity(r, t, data_range=255, channel_axis=-1) for r, t in zip(ref, out)]))


def masked_psnr(reference: np.ndarray, test: np.ndarray, masks: np.ndarray) -> float:
    """Mean over images of the PSNR of the pixels inside each mask ([N, H, W], nonzero = inside):
    10 log10(255^2 / MSE over the masked pixels and their 3 channels). Images with an empty mask are skipped."""
    ref, out = _batched(reference).astype(np.float64), _batched(test).astype(np.float64)
    masks = np.asarray(masks).reshape(len(ref), *ref.shape[1:3]).astype(bool)
    values = []
    for r, t, m in zip(ref, out, masks):
        if not m.any():
            continue
        mse = np.mean((r[m] - t[m]) ** 2)
        values.append(np.inf if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return float(np.mean(values)) if values else float("nan")


def _batched(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images[None] if images.ndim == 3 else images
