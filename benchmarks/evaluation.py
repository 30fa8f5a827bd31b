"""Evaluation speed per metric, frames/s on this machine, next to the reference library's own call on the same
frames; and the SSIM window gap (Wang et al.'s Gaussian vs scikit-image's default uniform window).

    python -m benchmarks.evaluation [--frames 32] [--size 256]

Frames: the real talking head ../shared/media/talking/lp_d0.mp4 when present (else a synthetic moving blob),
resized to `size`; "predictions" are the same frames blurred (sigma 1.5) with Gaussian noise (sigma 6).
Networks run on random weights in their real architectures (the real files are assets that may be absent):
speed does not depend on the weights. CPU unless a GPU is present.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media" / "talking" / "lp_d0.mp4"


def _frames(n: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    if MEDIA.is_file():
        from pipeline.video import iter_frames

        out = []
        for i, (_, f) in enumerate(iter_frames(MEDIA)):
            if i == n:
                break
            out.append(np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)))
        ref, what = np.stack(out), f"{MEDIA.name} (real footage)"
    else:
        yy, xx = np.mgrid[:size, :size]
        ref = np.stack([np.clip(255 * np.exp(-((xx - size / 2 - 20 * np.sin(t / 3)) ** 2 + (yy - size / 2) ** 2)
                                              / (2 * (size / 6) ** 2)), 0, 255)[..., None].repeat(3, -1)
                        for t in range(n)]).astype(np.uint8)
        what = "synthetic blob (../shared/media absent)"
    rng = np.random.default_rng(0)
    test = gaussian_filter(ref.astype(float), (0, 1.5, 1.5, 0)) + rng.normal(0, 6, ref.shape)
    return ref, np.clip(test, 0, 255).astype(np.uint8), what


def _rate(fn, n_frames: int, repeat: int = 2) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return n_frames * repeat / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from pipeline.metrics import image as im

    ref, test, what = _frames(args.frames, args.size)
    n = len(ref)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"evaluation benchmark: {n} frames of {args.size} px from {what}; device {device}, "
          f"torch threads {torch.get_num_threads()}")
    rows = []
    gauss = dict(data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    rows.append(("l1", _rate(lambda: im.l1_per_image(ref, test), n),
                 "numpy mean |a - b| / 255 (FOMM)", _rate(lambda: [np.mean(np.abs(r / 255.0 - t / 255.0)) for r, t in zip(ref, test)], n)))
    rows.append(("psnr", _rate(lambda: im.psnr_per_image(ref, test), n),
                 "skimage peak_signal_noise_ratio", _rate(lambda: [peak_signal_noise_ratio(r, t, data_range=255) for r, t in zip(ref, test)], n)))
    rows.append(("ssim", _rate(lambda: im.ssim_per_image(ref, test), n, 1),
                 "skimage structural_similarity (Gaussian)", _rate(lambda: [structural_similarity(r, t, **gauss) for r, t in zip(ref, test)], n, 1)))

    import torchvision

    with tempfile.TemporaryDirectory() as tmp:
        from pipeline.evaluation.networks import InceptionFeatures, LPIPSMetric

        alex = Path(tmp) / "alexnet.pth"
        torch.save(torchvision.models.alexnet(weights=None).state_dict(), alex)
        ours = LPIPSMetric(alex, device)
        ta = torch.from_numpy(ref).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
        tb = torch.from_numpy(test).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
        with torch.no_grad():
            rows.append(("lpips", _rate(lambda: [ours(ref[i:i + 16], test[i:i + 16]) for i in range(0, n, 16)], n),
                         "lpips.LPIPS(net='alex') forward", _rate(lambda: [ours.model(ta[i:i + 16], tb[i:i + 16]) for i in range(0, n, 16)], n)))

        from unittest import mock

        from pytorch_fid import inception as pf

        with mock.patch.object(pf, "load_state_dict_from_url", lambda *a, **k: {}), \
                mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None):
            state = pf.fid_inception_v3().state_dict()
        inc_path = Path(tmp) / "inception.pth"
        torch.save(state, inc_path)
        inc = InceptionFeatures(inc_path, device)
        x01 = torch.from_numpy(ref).permute(0, 3, 1, 2).float().div(255).to(device)
        with torch.no_grad():
            rows.append(("fid features", _rate(lambda: [inc(ref[i:i + 16]) for i in range(0, n, 16)], n, 1),
                         "pytorch-fid InceptionV3 forward", _rate(lambda: [inc.model(x01[i:i + 16]) for i in range(0, n, 16)], n, 1)))

    print(f"\n{'metric':14s} {'ours frames/s':>14s}   {'reference call':42s} {'frames/s':>9s}")
    for name, ours_rate, ref_name, ref_rate in rows:
        print(f"{name:14s} {ours_rate:14.1f}   {ref_name:42s} {ref_rate:9.1f}")

    # the SSIM window: the paper's definition vs scikit-image's default
    g, u = im.ssim(ref, test), im.ssim(ref, test, window="uniform")
    print(f"\nSSIM on these {n} blurred + noisy frames: Gaussian (Wang et al., sigma 1.5) {g:.4f}, "
          f"scikit-image default 7x7 uniform {u:.4f} (gap {u - g:+.4f})")

    # Frechet distance: scipy's sqrtm (reported values) vs the eigh form (bootstrap replicates); 1024-D to keep
    # `make bench` short (both are O(D^3): FID's 2048-D takes ~8x longer)
    from pipeline.evaluation.frechet import feature_stats, frechet_distance, frechet_distance_eigh

    rng = np.random.default_rng(0)
    fa, fb = rng.normal(size=(3000, 1024)), rng.normal(0.1, 1.1, size=(3000, 1024))
    t = time.perf_counter()
    exact = frechet_distance(*feature_stats(fa, 1), *feature_stats(fb, 1))
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    fast = frechet_distance_eigh(fa, fb, 1, device=device)
    t_fast = time.perf_counter() - t
    print(f"Frechet distance, 1024-D, 3000 + 3000 features: sqrtm {t_exact:.1f} s, eigh form {t_fast:.1f} s "
          f"(relative difference {abs(fast - exact) / exact:.1e})")

    # the whole harness, streaming a video file
    with tempfile.TemporaryDirectory() as tmp:
        from pipeline.config import validate_params
        from pipeline.evaluation import evaluate_videos
        from pipeline.video import write_video

        pred, drv = Path(tmp) / "pred", Path(tmp) / "drv"
        pred.mkdir(), drv.mkdir()
        write_video(drv / "clip.mp4", ref, fps=25)
        np.save(pred / "clip.npy", test)
        t = time.perf_counter()
        evaluate_videos(pred, drv, metrics=["l1", "psnr", "ssim"], params=validate_params({}), progress=False,
                        references=False, resamples=200)
        dt = time.perf_counter() - t
        print(f"evaluate_videos (l1, psnr, ssim; mp4 decode included): {n / dt:.1f} frames/s")


if __name__ == "__main__":
    main()
