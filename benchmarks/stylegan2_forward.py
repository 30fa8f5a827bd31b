"""StyleGAN2 generator forward time per image (config-f widths, random weights, W+ input, fixed noise).

Each figure is a ratio against a reference measured in the same run on the same machine:
- batch B, default path: per-image time / the batch-1 per-image time (how much batching buys);
- channels-last (which runs the shared-weight modulated conv) and the shared-weight path alone:
  per-image time / the default path's at the same batch;
- on GPU (when CUDA is available): bf16 / fp16 autocast, alone and with channels-last, against fp32.

    python -m benchmarks.stylegan2_forward [--resolutions 256 1024] [--batches 1 4] [--repeats 1]

CPU at 1024 takes seconds per image: expect a few minutes in all.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from pipeline.models.stylegan2 import Generator


def _time(G: Generator, w: torch.Tensor, repeats: int, sync) -> float:
    """Best wall time of `repeats` forwards, seconds per image."""
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        G.synthesis(w)
        sync()
        best = min(best, time.perf_counter() - start)
    return best / w.shape[0]


def _variants(device: str) -> list[tuple[str, dict, torch.dtype | None]]:
    """(name, runtime switches, autocast dtype) of each variant; the first is the reference."""
    out = [
        ("fp32 default (grouped modconv)", dict(fused_modconv=None, channels_last=False), None),
        ("fp32 channels-last", dict(fused_modconv=None, channels_last=True), None),
        ("fp32 shared-weight modconv", dict(fused_modconv=False, channels_last=False), None),
    ]
    if device == "cuda":
        out += [
            ("bf16 autocast", dict(fused_modconv=None, channels_last=False), torch.bfloat16),
            ("bf16 autocast + channels-last", dict(fused_modconv=None, channels_last=True), torch.bfloat16),
            ("fp16 autocast", dict(fused_modconv=None, channels_last=False), torch.float16),
            ("fp16 autocast + channels-last", dict(fused_modconv=None, channels_last=True), torch.float16),
        ]
    return out


def run(device: str, resolutions: list[int], batches: list[int], repeats: int) -> None:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    print(f"\n== {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else f" ({torch.get_num_threads()} threads)"))
    print(f"{'res':>5} {'batch':>5}  {'variant':34} {'ms/img':>9}  ratio")
    for res in resolutions:
        torch.manual_seed(0)
        G = Generator(res).to(device).eval()
        G.requires_grad_(False)
        ref_b1 = None
        for batch in batches:
            w = torch.randn(batch, G.n_latent, G.style_dim, device=device)
            ref = None
            for name, switches, dtype in _variants(device):
                for key, value in switches.items():
                    setattr(G, key, value)
                ctx = torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()
                with torch.no_grad(), ctx:
                    _time(G, w[:1], 1, sync)  # warm-up (kernel selection, allocator)
                    if device == "cuda":
                        _time(G, w, 2, sync)
                    t = _time(G, w, repeats, sync)
                if ref is None:
                    ref = t
                    if batch == batches[0]:
                        ref_b1 = t
                    ratio = f"{t / ref_b1:.2f} x batch-{batches[0]} per image" if batch != batches[0] else "1.00 (reference)"
                else:
                    ratio = f"{t / ref:.2f} x default at batch {batch}"
                print(f"{res:>5} {batch:>5}  {name:34} {1000 * t:9.1f}  {ratio}", flush=True)
        del G
        if device == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=1, help="timed forwards per setting on CPU (best is kept)")
    ap.add_argument("--gpu-batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--gpu-repeats", type=int, default=10)
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU part (GPU boxes)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}; config-f widths (channel_multiplier 2, channel_max 512), W+ input, fixed noise")
    if not args.no_cpu:
        run("cpu", args.resolutions, args.batches, args.repeats)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        run("cuda", args.resolutions, args.gpu_batches, args.gpu_repeats)
    else:
        print("\n(no CUDA device: GPU figures skipped)")


if __name__ == "__main__":
    main()
