"""DVC stage `analyzer`: train the toy world's face analysis network and score it on held-out identities."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.config import load_params
from pipeline.io import write_json, write_text
from pipeline.paths import METRICS, PREPARED, REPORTS, workspace
from pipeline.tracking import stage_run


def main(dry_run: bool = False, progress: bool = True) -> dict:
    params = load_params()
    section = params.analyzer
    logged = {"seed": params.seed, "analyzer": section.model_dump(mode="json")}
    if dry_run:
        print(logged)
        return logged
    from pipeline.analysis import backend_tags
    from pipeline.analysis.quality import identity_quality, motion_quality
    from pipeline.analysis.toy import TARGET_GROUPS, ToyAnalyzer, ToyFaceNet, TrainConfig, save_checkpoint, train
    from pipeline.dataset import load_split

    root = workspace()
    with stage_run("analyzer", logged) as run:
        data = load_split(root / PREPARED, "train", with_truth=True)
        test = load_split(root / PREPARED, "test", with_truth=True)
        torch.manual_seed(params.seed)
        net = ToyFaceNet(data.frames.shape[1], section.width, section.embedding_dim)
        cfg = TrainConfig(iters=section.iters, batch_size=section.batch_size, lr=section.lr, margin=section.margin,
                          scale=section.scale, motion_weight=section.motion_weight, augment=section.augment, seed=params.seed)
        facts, history = train(data.frames, data.identities, data.truth, net, cfg, progress=progress)

        analyzer = ToyAnalyzer(net, facts["target_mean"], facts["target_std"])
        verification, distances = identity_quality(analyzer, test.frames, test.identities, test.clip_ids,
                                                   section.eval_pairs, params.seed)
        predicted = analyzer.motion(test.frames)
        mean = np.asarray(facts["target_mean"], dtype=np.float32)
        offsets = np.cumsum([0] + [len(names) for _, names in TARGET_GROUPS])
        train_mean = {group: mean[a:b] for (group, _), a, b in zip(TARGET_GROUPS, offsets[:-1], offsets[1:])}
        motion = motion_quality(predicted, test.truth, train_mean)

        path = root / ToyAnalyzer.CHECKPOINT
        save_checkpoint(path, net, facts, verification["threshold"],
                        {"seed": params.seed, "params": section.model_dump(mode="json")})
        backend = ToyAnalyzer.load(path).describe()  # name + sha256 of the file just written
        metrics = {
            **backend,
            "train": {"identities": len(facts["train_identities"]), "frames": len(data), "iters": section.iters,
                      "seconds": history[-1]["seconds"], "final_loss_identity": history[-1]["loss_identity"],
                      "final_loss_motion": history[-1]["loss_motion"]},
            "heldout": {"identities": int(len(np.unique(test.identities))), "frames": len(test),
                        "verification": verification, **motion},
        }
        write_json(root / METRICS / "analyzer.json", metrics)
        write_text(root / METRICS / "analyzer_history.csv", pd.DataFrame(history).to_csv(index=False))
        _figure(root / REPORTS / "analyzer.png", predicted, test.truth, distances, verification["threshold"])
        run.set_tags(backend_tags("analyzer", backend))
        run.log_metrics({k: v for k, v in metrics.items() if k in ("train", "heldout")})
        run.log_artifact(root / REPORTS / "analyzer.png", "analyzer")
    return metrics


def _figure(path, predicted, truth: dict, distances: dict, threshold: float) -> None:
    """Predicted vs true pose / gaze / two expression channels on held-out identities, and the pair distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_path

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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main(main)
