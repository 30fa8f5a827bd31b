"""Stage `generator`: the StyleGAN2 decoder G that every later stage drives.

- source `rosinality` | `nvidia`: a user checkpoint (an asset) is converted to our native format and
  verified (a forward pass, statistics of a batch of samples).
- source `train` (the embedded default): a small StyleGAN2 trained on the prepared frames of the
  synthetic world, on a CPU, in minutes. Adversarial training is too slow for that budget (measured
  before this stage existed: ~290 GAN iterations in 5 minutes gave colour blobs), so G is warmed up as
  the decoder of an autoencoder (a small conv encoder predicts W+ = w + per-layer offsets, penalised so
  that a single w already renders the face), then the mapping network is fitted so that w = mapping(z)
  follows the distribution of the encoder's codes (an MMD fit), because later stages sample W
  (latent discriminator, latent_avg, edit directions).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.config import GeneratorParams
from pipeline.errors import UserError
from pipeline.metrics.image import masked_psnr, psnr, ssim
from pipeline.store import SplitArrays, to_image


to_tensor = to_image  # uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1] (G's output range)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    return images.detach().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class WarmupEncoder(nn.Module):
    """A small conv encoder for G's warm-up: image -> (w [N, D], offsets [N, n_latent, D]), W+ = w + offsets."""

    def __init__(
        self,
        resolution: int,  # input side in px (power of two >= 8)
        style_dim: int,  # D, the width of W
        n_latent: int,  # rows of W+
        width: int = 32,  # channels of the first conv; doubles per halving of the resolution, capped at 256
    ):
        super().__init__()
        self.resolution, self.style_dim, self.n_latent, self.width = resolution, style_dim, n_latent, width
        layers, channels, size = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)], width, resolution
        while size > 4:
            out = min(channels * 2, 256)
            layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels, size = out, size // 2
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 16, 512), nn.LeakyReLU(0.2))
        self.to_w = nn.Linear(512, style_dim)
        self.to_offsets = nn.Linear(512, n_latent * style_dim)
        nn.init.zeros_(self.to_offsets.weight)  # start from W (offsets 0): the warm-up keeps them small
        nn.init.zeros_(self.to_offsets.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.to_w(h), self.to_offsets(h).view(-1, self.n_latent, self.style_dim)


def reconstruction_loss(y: torch.Tensor, x: torch.Tensor, masks: torch.Tensor, feature_weight: float) -> torch.Tensor:
    """L1 over the image plus `feature_weight` x L1 inside the Eq. 13 mask (eyes, brows, mouth: small
    regions that carry the motion and that a plain L1 under-weights)."""
    err = (y - x).abs()
    inside = (err * masks).sum() / (masks.sum() * 3).clamp_min(1.0)
    return err.mean() + feature_weight * inside


def _batch(data: SplitArrays, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return to_tensor(data.frames[idx]), torch.from_numpy(data.masks[idx]).float()[:, None]


def train_autoencoder(G: nn.Module, E: WarmupEncoder, train: SplitArrays, cfg: GeneratorParams, seed: int,
                      progress: bool = True, log_every: int = 25) -> list[dict]:
    """Train G and E jointly to reconstruct the training frames (params: iters, batch_size, lr, encoder_lr_ratio,
    feature_weight, offset_weight, ema_half_life_images); returns the loss history, steps 1 ... iters. With an EMA
    half-life, G and E end as the exponential moving averages of their weights (StyleGAN2's G_ema), which
    reconstruct held-out faces better than the last step's weights."""
    import copy

    rng = np.random.default_rng([seed, 10])
    torch.manual_seed(seed)
    # The encoder learns at a fraction of G's rate: at G's rate it destabilised the warm-up (measured on the
    # default world, 200 steps: reconstruction loss 0.85 at 1x, 0.69 at 0.25x).
    opt = torch.optim.Adam([{"params": G.parameters()}, {"params": E.parameters(), "lr": cfg.lr * cfg.encoder_lr_ratio}],
                           lr=cfg.lr, betas=(0.9, 0.99))
    beta = 0.5 ** (cfg.batch_size / cfg.ema_half_life_images) if cfg.ema_half_life_images > 0 else 0.0
    G_ema, E_ema = copy.deepcopy(G).eval(), copy.deepcopy(E).eval()
    live, averaged = [*G.parameters(), *E.parameters()], [*G_ema.parameters(), *E_ema.parameters()]
    history = []
    fused = G.fused_modconv
    G.fused_modconv = False  # unfused modulated convs train faster on CPU (0.66 vs 0.77 s per step, issue 9)
    G.train()
    E.train()
    for step in tqdm(range(1, cfg.iters + 1), desc="generator warm-up", disable=not progress):
        x, m = _batch(train, rng.integers(len(train), size=cfg.batch_size))
        w, offsets = E(x)
        y = G.synthesis(w[:, None] + offsets, randomize_noise=True)
        rec = reconstruction_loss(y, x, m, cfg.feature_weight)
        reg = offsets.pow(2).mean()
        loss = rec + cfg.offset_weight * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for a, b in zip(averaged, live):
                a.lerp_(b, 1.0 - beta)
        if step % log_every == 0 or step == cfg.iters:
            history.append({"step": step, "phase": "warmup", "loss": loss.item(), "rec": rec.item(),
                            "offsets": reg.item()})
    G.load_state_dict(G_ema.state_dict())
    E.load_state_dict(E_ema.state_dict())
    G.fused_modconv = fused
    G.eval()
    E.eval()
    return history


@torch.no_grad()
def encode_all(E: WarmupEncoder, data: SplitArrays, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    ws, offsets = [], []
    for i in range(0, len(data), batch_size):
        w, o = E(to_tensor(data.frames[i : i + batch_size]))
        ws.append(w)
        offsets.append(o)
    return torch.cat(ws), torch.cat(offsets)


def mmd(a: torch.Tensor, b: torch.Tensor, bandwidths: torch.Tensor) -> torch.Tensor:
    """Squared maximum mean discrepancy with a sum of Gaussian kernels (biased estimator)."""
    def k(x, y):
        d2 = torch.cdist(x, y).pow(2)
        return sum(torch.exp(-d2 / (2 * s * s)) for s in bandwidths)

    return k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()


def fit_mapping(G: nn.Module, codes: torch.Tensor, iters: int, batch_size: int, lr: float, seed: int,
                progress: bool = True, log_every: int = 25, first_step: int = 1) -> list[dict]:
    """Fit G's mapping network so that mapping(z), z ~ N(0, I), matches the distribution of `codes` [M, D]
    (MMD over kernels at 0.5x, 1x and 2x the median pairwise distance of the codes). `lr` is the
    effective step on the mapping weights (the optimiser's step times the layers' lr multiplier). The history's
    steps count from `first_step`, so that a stage's phases share one global step."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sub = codes[torch.randperm(len(codes), generator=gen)[:512]]
        median = torch.cdist(sub, sub).median()
    bandwidths = median * torch.tensor([0.5, 1.0, 2.0])
    params = list(G.style.parameters())
    # The mapping layers scale their weights by lr_mul (0.01, equalised lr), so a raw Adam step of size a
    # moves the effective weights by a * lr_mul: divide to make `lr` the effective step.
    opt = torch.optim.Adam(params, lr=lr / G.config["lr_mlp"], betas=(0.9, 0.99))
    history = []
    for step in tqdm(range(1, iters + 1), desc="mapping fit", disable=not progress):
        z = torch.randn(batch_size, codes.shape[1], generator=gen)
        target = codes[torch.randint(len(codes), (batch_size,), generator=gen)]
        loss = mmd(G.map(z), target, bandwidths)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == iters:
            history.append({"step": first_step + step - 1, "phase": "mapping", "mmd": loss.item()})
    return history


def refine_wplus(G: nn.Module, wplus: torch.Tensor, x: torch.Tensor, m: torch.Tensor, steps: int, lr: float,
                 feature_weight: float) -> torch.Tensor:
    """A short per-image optimisation of W+ from the encoder's estimate (G frozen)."""
    wplus = wplus.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([wplus], lr=lr)
    fused, G.fused_modconv = G.fused_modconv, False  # faster with gradients on CPU (see train_autoencoder)
    for _ in range(steps):
        loss = reconstruction_loss(G.synthesis(wplus, randomize_noise=False), x, m, feature_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    G.fused_modconv = fused
    return wplus.detach()


def reconstruction_metrics(targets: np.ndarray, outputs: np.ndarray, face: np.ndarray, feature: np.ndarray) -> dict:
    return {
        "psnr": round(psnr(targets, outputs), 3),
        "ssim": round(ssim(targets, outputs), 4),
        "psnr_face": round(masked_psnr(targets, outputs, face), 3),
        "psnr_features": round(masked_psnr(targets, outputs, feature), 3),
    }


def mean_colour_baseline(targets: np.ndarray, face: np.ndarray) -> dict:
    """What a flat image of each frame's mean colour scores: the floor a reconstruction must clear."""
    flat = np.broadcast_to(targets.reshape(len(targets), -1, 3).mean(1)[:, None, None, :], targets.shape)
    flat = flat.round().astype(np.uint8)
    return {"psnr": round(psnr(targets, flat), 3), "psnr_face": round(masked_psnr(targets, flat, face), 3)}


@dataclass
class Reconstructions:
    metrics: dict = field(default_factory=dict)
    indices: np.ndarray | None = None  # which frames of the split
    targets: np.ndarray | None = None
    encoded: np.ndarray | None = None
    refined: np.ndarray | None = None


def evaluate_reconstruction(G: nn.Module, E: WarmupEncoder, test: SplitArrays, n: int, refine_steps: int,
                            refine_lr: float, feature_weight: float, seed: int) -> Reconstructions:
    """Held-out reconstruction (identities never seen in training): encoder only, and after a short W+
    refinement; PSNR / SSIM over the image, PSNR inside the face outline and inside the Eq. 13 mask."""
    from pipeline.masks import face_mask

    idx = np.sort(np.random.default_rng([seed, 11]).choice(len(test), size=min(n, len(test)), replace=False))
    x, m = _batch(test, idx)
    targets = test.frames[idx]
    face = np.stack([face_mask(lm, targets.shape[1]) for lm in test.landmarks[idx]])
    feature = test.masks[idx]
    with torch.no_grad():
        w, offsets = E(x)
        wplus = w[:, None] + offsets
        encoded = to_uint8(G.synthesis(wplus, randomize_noise=False))
    refined_w = refine_wplus(G, wplus, x, m, refine_steps, refine_lr, feature_weight)
    with torch.no_grad():
        refined = to_uint8(G.synthesis(refined_w, randomize_noise=False))
    metrics = {
        "frames": int(len(idx)),
        "encoder": reconstruction_metrics(targets, encoded, face, feature),
        "refined": reconstruction_metrics(targets, refined, face, feature),
        "mean_colour_baseline": mean_colour_baseline(targets, face),
        "refine_steps": refine_steps,
    }
    return Reconstructions(metrics, idx, targets, encoded, refined)


@torch.no_grad()
def sample(G: nn.Module, n: int, truncation: float, seed: int) -> np.ndarray:
    """n images from random z (fixed noise), with truncation towards G.latent_avg."""
    z = torch.randn(n, G.style_dim, generator=torch.Generator().manual_seed(seed))
    w = G.map(z, truncation=truncation, truncation_latent=G.latent_avg[None])
    return to_uint8(G.synthesis(w[:, None].expand(-1, G.n_latent, -1), randomize_noise=False))


@torch.no_grad()
def sample_statistics(G: nn.Module, n: int = 64, seed: int = 0) -> dict:
    """Statistics of a batch of samples: a converted checkpoint that renders noise or constants shows here."""
    z = torch.randn(n, G.style_dim, generator=torch.Generator().manual_seed(seed))
    images = torch.cat([G.synthesis(G.map(zb)[:, None].expand(-1, G.n_latent, -1), randomize_noise=False)
                        for zb in z.split(8)])
    per_image_std = images.flatten(1).std(1)
    return {
        "finite": bool(torch.isfinite(images).all()),
        "mean": round(float(images.mean()), 4),
        "std": round(float(images.std()), 4),
        "min": round(float(images.min()), 4),
        "max": round(float(images.max()), 4),
        "per_image_std_min": round(float(per_image_std.min()), 4),
        "pairwise_l1_mean": round(float((images[: n // 2] - images[n // 2 :]).abs().mean()), 4),
    }


def latent_average(G: nn.Module, n: int = 4096, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        z = torch.randn(n, G.style_dim, generator=torch.Generator().manual_seed(seed))
        return G.map(z).mean(0)


def mmd_to_codes(G: nn.Module, codes: torch.Tensor, seed: int, n: int = 1024) -> float:
    """MMD between mapped samples and the encoder's codes, at the median-distance bandwidths."""
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        sub = codes[torch.randperm(len(codes), generator=gen)[:n]]
        median = torch.cdist(sub, sub).median()
        w = G.map(torch.randn(len(sub), codes.shape[1], generator=gen))
        return round(float(mmd(w, sub, median * torch.tensor([0.5, 1.0, 2.0]))), 5)


# The quality gates of the toy generator (issue 9), read through the toy analyzer on held-out reconstructions:
# (metric, direction, must reach, aim).
GATES = (("mouth_open_r", "min", 0.6, 0.8), ("yaw_mae_deg", "max", 7.0, 5.0), ("id_verified", "min", 0.8, 0.9),
         ("psnr_face_db", "min", 24.0, 26.0))


def motion_gates(recon: Reconstructions, truth: dict[str, np.ndarray], analyzer) -> dict:
    """Does the generator carry the motion? The toy analyzer on the refined reconstructions of held-out frames
    against the renderer's truth (mouth_open Pearson r, yaw MAE), the same person as the original frame
    (analyzer distance under its threshold), face-region PSNR; each with the analyzer's reading of the original
    frames as the ceiling, and pass / fail against GATES."""
    from pipeline.metrics.motion import mean_angular_error_deg, pearson_per_channel

    idx = recon.indices

    def read(frames: np.ndarray) -> dict:
        m = analyzer.motion(frames)
        mouth = m.expression_names.index("mouth_open")
        return {"mouth_open_r": float(pearson_per_channel(m.expression[:, [mouth]], truth["expression"][idx][:, [mouth]])[0]),
                "yaw_mae_deg": float(mean_angular_error_deg(m.pose[:, [0]], truth["pose"][idx][:, [0]])[0])}

    with torch.no_grad():
        d = analyzer.distance(analyzer.identity(recon.refined), analyzer.identity(recon.targets)).cpu().numpy()
    values = {**read(recon.refined), "id_verified": float((d <= analyzer.threshold).mean()),
              "psnr_face_db": float(recon.metrics["refined"]["psnr_face"])}
    gates = {name: {"value": round(values[name], 4), "must": must, "aim": aim,
                    "pass": bool(values[name] >= must if kind == "min" else values[name] <= must)}
             for name, kind, must, aim in GATES}
    return {"gates": gates, "all_pass": all(g["pass"] for g in gates.values()),
            "analyzer_on_originals": {k: round(v, 4) for k, v in read(recon.targets).items()}}


ENCODER_STATE = "E"  # the warm-up encoder inside a toy generator checkpoint (its architecture in extra["encoder"])


def save_toy_generator(G: nn.Module, E: WarmupEncoder, path, extra: dict) -> None:
    """G (with latent_avg) and its warm-up encoder in the project's checkpoint format (kind stylegan2, readable by
    load_generator(path, "native")); the encoder lets the generator stage re-measure the quality gates."""
    from pipeline.checkpoint import Checkpoint, save_checkpoint
    from pipeline.models.stylegan2_formats import NATIVE_KIND

    # The encoder is stored in float16: it only measures the gates (read back as float32, so the stage measures
    # what the file holds), and it would otherwise make the file larger than G itself (4.4M vs 2.5M parameters).
    half = {k: v.half() if v.is_floating_point() else v for k, v in E.state_dict().items()}
    state = {"G": G.state_dict(), "latent_avg": {"latent_avg": G.latent_avg}, ENCODER_STATE: half}
    encoder = {"resolution": E.resolution, "style_dim": E.style_dim, "n_latent": E.n_latent, "width": E.width}
    save_checkpoint(path, Checkpoint(kind=NATIVE_KIND, config=dict(G.config), state=state,
                                     extra={**extra, "encoder": encoder}))


def load_warmup_encoder(path) -> WarmupEncoder | None:
    """The warm-up encoder stored with a toy generator, or None (a converted FFHQ checkpoint has none)."""
    from pipeline.checkpoint import load_checkpoint, load_state
    from pipeline.models.stylegan2_formats import NATIVE_KIND

    ckpt = load_checkpoint(path, NATIVE_KIND)
    if ENCODER_STATE not in ckpt.state:
        return None
    arch = ckpt.extra["encoder"]
    E = WarmupEncoder(arch["resolution"], arch["style_dim"], arch["n_latent"], width=arch["width"])
    load_state(E, ckpt, ENCODER_STATE, str(path))
    return E.eval()


class GeneratorWorldError(UserError, ValueError):
    """The generator was trained on faces the evaluation holds out."""


def world_record(store, train: SplitArrays) -> dict:
    """What a trained toy generator records of the world it saw: its training identities' fingerprints."""
    from pipeline.store import identity_fingerprints

    seen = identity_fingerprints(store, "train")
    return {"identity_fingerprints": sorted(seen[i] for i in np.unique(train.identities) if i in seen)}


def check_world(extra: dict | None, store, path) -> None:
    """GeneratorWorldError when a held-out identity of this world is among the generator's training identities
    (a generator that has seen the test faces would flatter every re-enactment metric)."""
    from pipeline.store import identity_fingerprints

    seen = set(((extra or {}).get("world") or {}).get("identity_fingerprints") or [])
    if not seen:  # a converted checkpoint records no world
        return
    shared = sorted(i for i, f in identity_fingerprints(store, "test").items() if f in seen)
    if shared:
        raise GeneratorWorldError(
            f"{path}: the generator was trained on {len(shared)} identities that this world holds out for evaluation "
            f"({', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''}): a different seed or split than it was "
            f"trained for. Train one that matches: dvc exp run -S generator.source=train")


@dataclass
class TrainedGenerator:
    G: nn.Module
    metrics: dict  # what training or conversion measured (the `trained` part of metrics/generator.json)
    E: WarmupEncoder | None = None  # the warm-up encoder (toy generators), for the quality gates
    history: list[dict] = field(default_factory=list)  # one global step: warm-up 1..iters, then the mapping fit
    timings: dict = field(default_factory=dict)  # seconds per phase (MLflow only)


def train_generator(params: GeneratorParams, seed: int, train: SplitArrays, progress: bool = True) -> TrainedGenerator:
    """The embedded default's toy StyleGAN2 (see the module docstring): warm-up as an autoencoder's decoder,
    mapping fit, latent_avg."""
    from pipeline.models.stylegan2 import Generator

    resolution = train.frames.shape[1]
    torch.manual_seed(seed)
    G = Generator(resolution=resolution, style_dim=params.style_dim, n_mlp=params.n_mlp,
                  channel_multiplier=params.channel_multiplier, channel_max=params.channel_max,
                  channel_base=params.channel_base)
    E = WarmupEncoder(resolution, params.style_dim, G.n_latent)
    start = time.perf_counter()
    warmup = train_autoencoder(G, E, train, params, seed, progress=progress)
    warmup_seconds = time.perf_counter() - start
    codes, _ = encode_all(E, train)
    mmd_before = mmd_to_codes(G, codes, seed)
    mapping = fit_mapping(G, codes, params.mapping_iters, params.mapping_batch_size, params.mapping_lr, seed,
                          progress=progress, first_step=params.iters + 1)
    G.latent_avg.copy_(latent_average(G, seed=seed))
    metrics = {
        "train_frames": len(train),
        "warmup_final_loss": round(warmup[-1]["rec"], 5),
        "mapping": {"mmd_before": mmd_before, "mmd_after": mmd_to_codes(G, codes, seed)},
    }
    return TrainedGenerator(G, metrics, E, warmup + mapping,
                            {"warmup_seconds": round(warmup_seconds, 2),
                             "total_seconds": round(time.perf_counter() - start, 2)})


def convert_generator(checkpoint, source: str, seed: int) -> TrainedGenerator:
    """A user's rosinality / NVIDIA checkpoint, converted and checked (finite, non-flat samples)."""
    from pipeline.models.stylegan2_formats import load_generator

    G = load_generator(checkpoint, source)
    stats = sample_statistics(G, n=8, seed=seed)  # a quick look before writing anything
    if not stats["finite"] or stats["per_image_std_min"] < 1e-3:
        raise ValueError(f"{checkpoint}: the converted generator renders {'non-finite values' if not stats['finite'] else 'flat images'} "
                         f"({stats}); is it the right file and format (generator.source={source})?")
    return TrainedGenerator(G, {"checkpoint": Path(checkpoint).name})


def score_generator(G: nn.Module, E: WarmupEncoder | None, test: SplitArrays | None, analyzer, params: GeneratorParams,
                    seed: int) -> tuple[dict, Reconstructions | None]:
    """What the generator stage reports for any generator: size, sample statistics and, where a warm-up encoder
    and the renderer's truth exist (the toy world), held-out reconstruction quality and the motion gates."""
    metrics = {"resolution": G.resolution, "parameters": sum(p.numel() for p in G.parameters()),
               "samples": sample_statistics(G, n=64 if G.resolution <= 128 else 8, seed=seed)}
    if E is None:
        return metrics, None
    recon = evaluate_reconstruction(G, E, test, params.eval_frames, params.refine_steps, params.refine_lr,
                                    params.feature_weight, seed)
    metrics["heldout"] = recon.metrics
    if test.truth is not None and analyzer is not None:
        metrics["heldout"].update(motion_gates(recon, test.truth, analyzer))
    return metrics, recon


__all__ = ["WarmupEncoder", "train_generator", "convert_generator", "score_generator", "motion_gates", "GATES",
           "save_toy_generator", "load_warmup_encoder", "TrainedGenerator", "train_autoencoder", "fit_mapping", "evaluate_reconstruction",
           "sample", "sample_statistics", "latent_average", "mmd", "mmd_to_codes", "encode_all", "to_tensor",
           "to_uint8", "reconstruction_loss", "mean_colour_baseline"]
