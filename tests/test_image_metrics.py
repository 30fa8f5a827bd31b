import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.masks import face_mask
from pipeline.metrics.image import masked_psnr, psnr, ssim


def test_psnr_hand_computed():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[:, 0, 0, 0] = 16  # one of 48 values off by 16 -> MSE = 256/48
    expected = 10 * np.log10(255**2 / (256 / 48))
    assert psnr(a, b) == pytest.approx(expected)
    assert psnr(a[0], b[0]) == pytest.approx(peak_signal_noise_ratio(a[0], b[0], data_range=255))


def test_masked_psnr_counts_only_masked_pixels():
    a = np.zeros((1, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 3, 3] = 200  # outside the mask
    b[0, 0, 0, 0] = 10  # inside: 1 of 2 px x 3 ch off by 10 -> MSE 100/6
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, :2] = True
    assert masked_psnr(a, b, mask) == pytest.approx(10 * np.log10(255**2 / (100 / 6)))
    # the full mask equals plain PSNR
    assert masked_psnr(a, b, np.ones((1, 4, 4))) == pytest.approx(psnr(a, b))
    assert np.isnan(masked_psnr(a, b, np.zeros((1, 4, 4))))


def test_ssim_identity_and_degradation():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    assert ssim(img, img) == pytest.approx(1.0)
    small, big = (np.clip(img.astype(int) + rng.integers(-a, a + 1, img.shape), 0, 255).astype(np.uint8) for a in (10, 80))
    assert 1.0 > ssim(img, small) > ssim(img, big)
    # colour images: the mean of per-channel SSIMs; default window: Wang et al.'s Gaussian (the paper's [38])
    gaussian = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    per_channel = np.mean([structural_similarity(img[0, ..., c], big[0, ..., c], data_range=255, **gaussian) for c in range(3)])
    assert ssim(img[0], big[0]) == pytest.approx(per_channel)
    uniform = np.mean([structural_similarity(img[0, ..., c], big[0, ..., c], data_range=255) for c in range(3)])
    assert ssim(img[0], big[0], window="uniform") == pytest.approx(uniform)
    with pytest.raises(TypeError):
        ssim(img.astype(np.float32), img)


def test_face_mask_is_inside_the_jaw_and_brows():
    theta = np.linspace(np.pi, 2 * np.pi, 17)  # jaw: lower half circle centred (16, 16), radius 10
    lm = np.zeros((68, 2))
    lm[:17] = np.stack([16 - 10 * np.cos(theta), 16 - 10 * np.sin(theta)], 1)
    lm[17:27] = np.stack([np.linspace(7, 25, 10), np.full(10, 8.0)], 1)  # brows: a line at y = 8
    mask = face_mask(lm, 32)
    assert mask[16, 16] and mask[10, 16] and mask[24, 16]
    assert not mask[4, 16] and not mask[16, 2] and not mask[30, 16]
