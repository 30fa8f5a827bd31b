"""The evaluation harness: every metric of the paper's Tables 1-3, for any method's videos, with confidence intervals.

- registry.py: the metrics by name (METRICS, register_metric, check_metrics; PAPER_METRICS, TOY_METRICS)
- engine.py: streaming evaluation of video pairs, reference rows, aggregation, torchrun sharding
- api.py: evaluate_videos(pred_dir, driving_dir, ...), the call behind `reenact evaluate`
- stats.py: summaries with bootstrap 95% CIs over videos, paired_test between two methods
- frechet.py: the Frechet distance of FID / FVD (pytorch-fid's and StyleGAN-V's conventions)
- networks.py: LPIPS, FID Inception, FVD I3D from checked asset files; the toy analyzer's features
- mouth.py: mouth crops for FVD_M; robustness.py: Table 3's diverse source frames; sources.py: pairing, streaming

Importing this package is cheap (no torch): pipeline/config.py validates params against the registry.
"""
from __future__ import annotations

from pipeline.evaluation.registry import METRICS, PAPER_METRICS, PROTOCOLS, TOY_METRICS, check_metrics, is_valid_metric, register_metric

_LAZY = {
    "evaluate_videos": "pipeline.evaluation.api",
    "settings_from_params": "pipeline.evaluation.api",
    "evaluate_pairs": "pipeline.evaluation.engine",
    "evaluate_pair": "pipeline.evaluation.engine",
    "paired_against": "pipeline.evaluation.engine",
    "Settings": "pipeline.evaluation.engine",
    "summarize": "pipeline.evaluation.stats",
    "bootstrap_ci": "pipeline.evaluation.stats",
    "paired_test": "pipeline.evaluation.stats",
    "frechet_distance": "pipeline.evaluation.frechet",
    "feature_stats": "pipeline.evaluation.frechet",
    "select_diverse_frames": "pipeline.evaluation.robustness",
    "Pair": "pipeline.evaluation.sources",
    "find_pairs": "pipeline.evaluation.sources",
    "EvaluationError": "pipeline.evaluation.sources",
}

__all__ = ["METRICS", "PAPER_METRICS", "PROTOCOLS", "TOY_METRICS", "check_metrics", "is_valid_metric", "register_metric",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline.evaluation' has no attribute {name!r}")
