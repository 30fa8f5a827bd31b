"""Random frame reads from the `prepare` store (.npy, memory-mapped) against the usual alternatives:
one PNG per frame (FOMM's datasets) and decoding the mp4 up to the frame. Ratios are against the
store, measured in the same run on the same frames.

    python -m benchmarks.frame_store [--size 256] [--clips 16] [--frames 50] [--reads 400]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.video import iter_frames, write_video


def _timed(fn, picks) -> float:
    start = time.perf_counter()
    for clip, k in picks:
        frame = fn(clip, k)
        assert frame.shape[-1] == 3
    return (time.perf_counter() - start) / len(picks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--reads", type=int, default=400)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for c in range(args.clips):
            # smooth images (compress like faces, unlike noise)
            base = rng.integers(0, 255, (args.frames, 8, 8, 3)).astype(np.uint8)
            frames = np.asarray([np.asarray(Image.fromarray(f).resize((args.size,) * 2, Image.BICUBIC)) for f in base])
            np.save(root / f"c{c}.npy", frames)
            write_video(root / f"c{c}.mp4", frames, fps=25)
            (root / f"png{c}").mkdir()
            for k, f in enumerate(frames):
                Image.fromarray(f).save(root / f"png{c}" / f"{k:05d}.png")
        picks = [(int(rng.integers(args.clips)), int(rng.integers(args.frames))) for _ in range(args.reads)]
        stores = {c: np.load(root / f"c{c}.npy", mmap_mode="r") for c in range(args.clips)}

        def npy(c, k):
            return np.array(stores[c][k])  # copy out of the map, as a DataLoader would

        def png(c, k):
            return np.asarray(Image.open(root / f"png{c}" / f"{k:05d}.png").convert("RGB"))

        def mp4(c, k):
            for i, (_, f) in enumerate(iter_frames(root / f"c{c}.mp4")):
                if i == k:
                    return f

        t_npy = _timed(npy, picks)
        t_png = _timed(png, picks)
        t_mp4 = _timed(mp4, picks[: max(20, args.reads // 10)])
    print(f"random {args.size}x{args.size} frame reads ({args.reads} reads over {args.clips} clips x {args.frames} frames)")
    print(f"  npy store (ours): {t_npy * 1e6:9.1f} us/frame  {1 / t_npy:9.0f} frames/s  ratio 1.00")
    print(f"  png per frame   : {t_png * 1e6:9.1f} us/frame  {1 / t_png:9.0f} frames/s  ratio {t_png / t_npy:.1f}x slower")
    print(f"  mp4 decode      : {t_mp4 * 1e6:9.1f} us/frame  {1 / t_mp4:9.0f} frames/s  ratio {t_mp4 / t_npy:.1f}x slower")


if __name__ == "__main__":
    main()
