"""DVC stage `generator`: convert a user StyleGAN2 checkpoint, or train the embedded default's small one."""
from __future__ import annotations

import shutil

import pandas as pd
import torch

from pipeline.assets import require
from pipeline.config import GeneratorParams, load_params
from pipeline.io import write_json, write_text
from pipeline.paths import METRICS, MODELS, PREPARED, REPORTS, workspace
from pipeline.plots import image_grid
from pipeline.tracking import stage_run


def main(dry_run: bool = False, progress: bool = True) -> dict:
    params = load_params()
    section = params.generator
    logged = {"seed": params.seed, "generator": section.model_dump(mode="json")}
    if section.source != "train":
        logged["assets"] = {section.checkpoint: params.assets[section.checkpoint].model_dump()
                            if section.checkpoint in params.assets else None}
    if dry_run:
        print(logged)
        return logged
    root = workspace()
    shutil.rmtree(root / REPORTS / "generator", ignore_errors=True)  # no figure left from another source
    with stage_run("generator", logged) as run:
        if section.source == "train":
            metrics, history = _train(section, params.seed, root, progress)
            write_text(root / METRICS / "generator_history.csv", pd.DataFrame(history).to_csv(index=False))
        else:
            metrics = _convert(section, require(section.checkpoint, params.assets), params.seed, root)
            write_text(root / METRICS / "generator_history.csv", "step,phase\n")  # nothing trained
        write_json(root / METRICS / "generator.json", metrics)
        run.log_metrics(metrics)
        run.log_artifact(root / REPORTS / "generator", "generator")
    return metrics


def _train(section: GeneratorParams, seed: int, root, progress: bool) -> tuple[dict, list[dict]]:
    from pipeline.dataset import load_split
    from pipeline.generator import (WarmupConfig, WarmupEncoder, encode_all, evaluate_reconstruction, fit_mapping,
                                    latent_average, mmd_to_codes, sample, sample_statistics, train_autoencoder)
    from pipeline.models.stylegan2 import Generator
    from pipeline.models.stylegan2_formats import save_native

    train = load_split(root / PREPARED, "train")
    test = load_split(root / PREPARED, "test")
    resolution = train.frames.shape[1]
    torch.manual_seed(seed)
    G = Generator(resolution=resolution, style_dim=section.style_dim, n_mlp=section.n_mlp,
                  channel_multiplier=section.channel_multiplier, channel_max=section.channel_max)
    E = WarmupEncoder(resolution, section.style_dim, G.n_latent)
    warmup = WarmupConfig(iters=section.iters, batch_size=section.batch_size, lr=section.lr,
                          feature_weight=section.feature_weight, offset_weight=section.offset_weight, seed=seed,
                          encoder_lr_ratio=section.encoder_lr_ratio)
    warmup_log = train_autoencoder(G, E, train, warmup, progress=progress)
    codes, _ = encode_all(E, train)
    mmd_before = mmd_to_codes(G, codes, seed)
    history = warmup_log + fit_mapping(G, codes, section.mapping_iters, 256, section.mapping_lr, seed, progress=progress)
    G.latent_avg.copy_(latent_average(G, seed=seed))
    recon = evaluate_reconstruction(G, E, test, section.eval_frames, section.refine_steps, 0.05,
                                    section.feature_weight, seed)
    metrics = {
        "source": "train",
        "resolution": resolution,
        "parameters": sum(p.numel() for p in G.parameters()),
        "train_frames": len(train),
        "warmup_seconds": warmup_log[-1]["seconds"],
        "warmup_final_loss": round(warmup_log[-1]["rec"], 5),
        "heldout": recon.metrics,
        "mapping": {"mmd_before": mmd_before, "mmd_after": mmd_to_codes(G, codes, seed)},
        "samples": sample_statistics(G, seed=seed),
    }
    save_native(G, root / MODELS / "generator.pt", extra={"source": "train", "metrics": metrics,
                                                         "params": section.model_dump(mode="json"), "seed": seed})
    n = min(8, len(recon.targets))
    image_grid(root / REPORTS / "generator" / "reconstructions.png",
               [*recon.targets[:n], *recon.encoded[:n], *recon.refined[:n]],
               [*(["held-out"] * n), *(["encoder"] * n), *([f"+{section.refine_steps} steps"] * n)], ncols=n,
               suptitle="generator: held-out identities, reconstructed (rows: target, encoder, refined W+)")
    image_grid(root / REPORTS / "generator" / "samples.png", list(sample(G, 32, section.truncation, seed)), ncols=8,
               suptitle=f"generator: random samples, truncation {section.truncation}")
    return metrics, history


def _convert(section: GeneratorParams, checkpoint, seed: int, root) -> dict:
    from pipeline.generator import sample, sample_statistics
    from pipeline.models.stylegan2_formats import load_generator, save_native

    G = load_generator(checkpoint, section.source)
    stats = sample_statistics(G, n=8, seed=seed)
    if not stats["finite"] or stats["per_image_std_min"] < 1e-3:
        raise ValueError(f"{checkpoint}: the converted generator renders {'non-finite values' if not stats['finite'] else 'flat images'} "
                         f"({stats}); is it the right file and format (generator.source={section.source})?")
    metrics = {"source": section.source, "checkpoint": str(checkpoint), "resolution": G.resolution,
               "parameters": sum(p.numel() for p in G.parameters()), "samples": stats}
    save_native(G, root / MODELS / "generator.pt", extra={"source": section.source, "checkpoint": str(checkpoint),
                                                         "metrics": metrics, "seed": seed})
    images = sample(G, 8, section.truncation, seed)
    image_grid(root / REPORTS / "generator" / "samples.png", list(images), ncols=4,
               suptitle=f"generator: {section.source} checkpoint, truncation {section.truncation}")
    return metrics


if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main(main)
