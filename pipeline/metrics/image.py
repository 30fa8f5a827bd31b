"""Per-image reconstruction metrics on uint8 RGB images [..., H, W, 3]: L1, PSNR, SSIM, masked PSNR.

Definitions (each tested against an independent implementation in tests/test_evaluation_image.py):

- L1 as FOMM computes it: mean absolute difference of the images scaled to [0, 1], over pixels and channels.
- PSNR: 10 log10(255^2 / MSE) per image (inf for identical images), as scikit-image's
  `peak_signal_noise_ratio(data_range=255)`.
- SSIM as Wang et al. (2004) define it, the paper's [38]: an 11x11 Gaussian window (sigma 1.5, truncated at
  3.5 sigma), population (co)variances, K1 0.01, K2 0.03, L 255, the mean of the SSIM map over the pixels whose
  window lies inside the image, averaged over the colour channels: scikit-image's
  `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
  channel_axis=-1)`. `window="uniform"` gives scikit-image's default instead (7x7 uniform window, sample
  covariance), which older code bases report: on blurred and noisy frames it reads about 0.01 higher, a gap
  as large as the differences between methods in the paper's Table 1, so never compare the two.

The per-image functions are batched, in float64, on CPU (numpy / scipy) or on the GPU for CUDA tensors: the
evaluation streams tens of thousands of frames through them. scikit-image computes SSIM one image at a time.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import correlate1d

SSIM_K1, SSIM_K2 = 0.01, 0.03
GAUSSIAN_SIGMA, GAUSSIAN_TRUNCATE = 1.5, 3.5  # scipy.ndimage.gaussian_filter's truncate, as scikit-image uses
UNIFORM_SIZE = 7  # scikit-image's default window


def l1(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean over images of l1_per_image."""
    return float(np.mean(l1_per_image(reference, test)))


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean over images of scikit-image's PSNR (data range 255)."""
    return float(np.mean(psnr_per_image(reference, test)))


def ssim(reference: np.ndarray, test: np.ndarray, window: str = "gaussian") -> float:
    """Mean over images of ssim_per_image (the module docstring defines it)."""
    return float(np.mean(ssim_per_image(reference, test, window=window)))


def l1_per_image(reference, test) -> np.ndarray:
    """float64 [N]: mean |a - b| / 255 over each image's pixels and channels (FOMM's L1 on [0, 1] frames)."""
    d = _difference(reference, test)
    return np.abs(d).mean(axis=(1, 2, 3), dtype=np.float64) / 255.0


def psnr_per_image(reference, test) -> np.ndarray:
    """float64 [N]: 10 log10(255^2 / MSE) of each image; inf where the images are identical."""
    d = _difference(reference, test).astype(np.int32)
    mse = (d * d).mean(axis=(1, 2, 3), dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)  # mse 0 -> inf, as scikit-image


def _difference(reference, test) -> np.ndarray:
    """int16 [N, H, W, 3]: test - reference, exact (uint8 differences fit in int16)."""
    if isinstance(reference, torch.Tensor) or isinstance(test, torch.Tensor):
        a, b = _pair(reference, test)
        return (b - a).cpu().numpy().astype(np.int16)
    a, b = _batched(reference), _batched(test)
    if a.shape != b.shape:
        raise ValueError(f"reference and test images must have one shape, got {a.shape} and {b.shape}")
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected RGB images [N, H, W, 3] or [H, W, 3], got shape {a.shape}")
    return b.astype(np.int16) - a.astype(np.int16)


def ssim_per_image(reference, test, window: str = "gaussian") -> np.ndarray:
    """float64 [N]: SSIM of each image pair (module docstring), colour channels averaged. CPU inputs are filtered
    with scipy's correlate1d (10x faster than torch's float64 convolution on CPU), CUDA tensors with torch."""
    a, b = _pair(reference, test, cpu_numpy=True)
    kernel, cov_norm = _window(window)
    radius = len(kernel) // 2
    if min(a.shape[1:3]) < len(kernel):
        raise ValueError(f"SSIM needs images of at least {len(kernel)}x{len(kernel)} px, got {tuple(a.shape[1:3])}")
    if isinstance(a, np.ndarray):
        x, y = a, b

        def filt(z):
            # separable filter, then only the pixels whose window lies inside the image: exactly what
            # scikit-image keeps after cropping by the window radius, so the padding mode never matters
            z = correlate1d(correlate1d(z, kernel, axis=1, mode="reflect"), kernel, axis=2, mode="reflect")
            return z[:, radius:-radius, radius:-radius]
    elif a.device.type == "cpu":
        return ssim_per_image(a.numpy().astype(np.uint8), b.numpy().astype(np.uint8), window)
    else:
        return _ssim_torch(a, b, window)
    return _ssim_formula(x, y, filt, cov_norm)


def _ssim_torch(a: torch.Tensor, b: torch.Tensor, window: str) -> np.ndarray:
    """ssim_per_image for float64 tensors [N, H, W, 3] (the GPU path): torch's "valid" convolution keeps the
    same pixels as the scipy path."""
    kernel, cov_norm = _window(window)
    radius = len(kernel) // 2
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)  # [N, 3, H, W]
    k = torch.as_tensor(kernel, dtype=torch.float64, device=a.device)

    def filt(z):
        n, c, h, w = z.shape
        z = F.conv2d(F.conv2d(z.reshape(n * c, 1, h, w), k.view(1, 1, -1, 1)), k.view(1, 1, 1, -1))
        return z.reshape(n, c, h - 2 * radius, w - 2 * radius)

    return _ssim_formula(x, y, filt, cov_norm)


def _ssim_formula(x, y, filt, cov_norm: float) -> np.ndarray:
    """Wang et al.'s SSIM map from local statistics, averaged over pixels, then channels (numpy [N, H, W, 3]
    or torch [N, 3, H, W])."""
    c1, c2 = (SSIM_K1 * 255.0) ** 2, (SSIM_K2 * 255.0) ** 2
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    if isinstance(s, torch.Tensor):
        return s.mean(dim=(2, 3)).mean(dim=1).cpu().numpy()
    return s.mean(axis=(1, 2)).mean(axis=1)


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


def gaussian_kernel(sigma: float = GAUSSIAN_SIGMA, truncate: float = GAUSSIAN_TRUNCATE) -> np.ndarray:
    """The 1-D kernel scipy.ndimage.gaussian_filter applies: radius int(truncate * sigma + 0.5), normalised."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _window(window: str) -> tuple[np.ndarray, float]:
    if window == "gaussian":
        return gaussian_kernel(), 1.0  # population covariance
    if window == "uniform":
        n = UNIFORM_SIZE
        return np.full(n, 1.0 / n), (n * n) / (n * n - 1.0)  # scikit-image's sample covariance for the uniform window
    raise ValueError(f"unknown SSIM window {window!r}; use 'gaussian' (Wang et al., the paper) or 'uniform'")


def _pair(reference, test, cpu_numpy: bool = False):
    """Both as float64 [N, H, W, 3] (values 0..255): tensors on the device of a torch input, else (cpu_numpy)
    numpy arrays or CPU tensors."""
    if cpu_numpy and not isinstance(reference, torch.Tensor) and not isinstance(test, torch.Tensor):
        a, b = _batched(reference), _batched(test)
        if a.shape != b.shape:
            raise ValueError(f"reference and test images must have one shape, got {a.shape} and {b.shape}")
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"expected RGB images [N, H, W, 3] or [H, W, 3], got shape {a.shape}")
        return a.astype(np.float64), b.astype(np.float64)
    a, b = _as_tensor(reference), _as_tensor(test)
    if a.shape != b.shape:
        raise ValueError(f"reference and test images must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b.to(a.device)


def _as_tensor(images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images, got {images.dtype}")
        t = images
    else:
        t = torch.from_numpy(np.ascontiguousarray(_batched(images)))
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected RGB images [N, H, W, 3] or [H, W, 3], got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def _batched(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images[None] if images.ndim == 3 else images

