"""The toy world's face analysis network: identity embedding + pose / gaze / expression regression.

Real face networks (ArcFace, dlib, py-feat) do not understand the synthetic world's faces, so the embedded
default trains its own in the `analyzer` stage, on the prepared training frames with the renderer's
ground truth as labels. It then serves as the default's ID-loss network and motion analyser.

Architecture (`ToyFaceNet`): four stride-2 conv blocks (conv3x3-BN-ReLU twice, channels width x 1, 2, 4, 8)
take a crop of side S to S/16, average-pooled to 4x4 (a no-op at the default S = 64); the flattened map feeds
- the identity embedding: Linear -> BatchNorm1d -> L2 normalisation (unit-norm [N, embedding_dim]), trained
  with an ArcFace head (`ArcMarginHead`, Deng et al. 2019, additive angular margin) over the training
  identities; and
- the motion head: Linear -> ReLU -> Linear to the renderer's channels (pose 3, gaze 2, expression 7),
  regressed in units of the training labels' standard deviation (mean squared error).
The flattened map (not a global pool) keeps where things are, which pose and gaze need.

ArcFace logit for class j of an embedding x (both unit norm, theta_j the angle between x and W_j):
    s * cos(theta_y + m)   for the true class y,   s * cos(theta_j)   for the others,
trained with cross-entropy. Where theta_y + m > pi, cos(theta + m) stops decreasing in theta, so (as in
InsightFace) the target logit continues linearly there: s * (cos(theta_y) - m * sin(m)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.analysis import BackendError, FaceAnalyzer, MotionFeatures, as_images
from pipeline.checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_state
from pipeline.paths import ANALYZER_CHECKPOINT

if TYPE_CHECKING:
    from pipeline.config import AnalyzerParams
from pipeline.checkpoint import save_checkpoint as save_checkpoint_file
from pipeline.synth.face import EXPRESSION_NAMES, GAZE_NAMES, POSE_NAMES

CHECKPOINT_KIND = "toy-analyzer"  # in the project's one checkpoint format (pipeline.checkpoint)
TARGET_GROUPS = (("pose", POSE_NAMES), ("gaze", GAZE_NAMES), ("expression", EXPRESSION_NAMES))
N_TARGETS = sum(len(names) for _, names in TARGET_GROUPS)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class ToyFaceNet(nn.Module):
    """Crop [N, 3, S, S] in [-1, 1] -> (unit-norm identity embedding [N, D], standardised motion [N, 12])."""

    def __init__(
        self,
        resolution: int,  # crop side S the network is trained at (>= 16)
        width: int = 16,  # channels of the first block; doubled per block
        embedding_dim: int = 128,
    ):
        super().__init__()
        if resolution < 16:
            raise ValueError(f"ToyFaceNet needs crops of at least 16 px, got {resolution}")
        self.resolution, self.width, self.embedding_dim = resolution, width, embedding_dim
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.features = nn.Sequential(*(_block(c_in, c_out) for c_in, c_out in zip([3, *widths[:-1]], widths)))
        self.pool = nn.AdaptiveAvgPool2d(4)  # any crop size -> a 4x4 map
        flat = widths[-1] * 16
        self.embedding = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(flat, embedding_dim), nn.BatchNorm1d(embedding_dim))
        self.motion = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(flat, 256), nn.ReLU(inplace=True),
                                    nn.Linear(256, N_TARGETS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.pool(self.features(x))
        return F.normalize(self.embedding(h), dim=1), self.motion(h)


class ArcMarginHead(nn.Module):
    """ArcFace logits (module docstring) of unit-norm embeddings against `n_classes` learned class centres."""

    def __init__(self, embedding_dim: int, n_classes: int, margin: float = 0.5, scale: float = 30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, embedding_dim) * 0.01)
        self.margin, self.scale = float(margin), float(scale)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(embeddings, F.normalize(self.weight, dim=1)).clamp(-1.0, 1.0)
        m = self.margin
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(0.0))
        cos_margin = cos * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
        # beyond theta = pi - m, continue linearly so that the target logit keeps decreasing with theta
        cos_margin = torch.where(cos > math.cos(math.pi - m), cos_margin, cos - m * math.sin(m))
        target = F.one_hot(labels, cos.shape[1]).bool()
        return self.scale * torch.where(target, cos_margin, cos)


def _mirror_map() -> tuple[torch.Tensor, torch.Tensor]:
    """(permutation, sign) of the 12 target channels under a left-right image mirror: yaw, roll and gaze_yaw
    change sign, blink_left and blink_right (image-left / -right eye) swap; the rest stay."""
    names = [n for _, group in TARGET_GROUPS for n in group]
    swap = {"blink_left": "blink_right", "blink_right": "blink_left"}
    perm = torch.tensor([names.index(swap.get(n, n)) for n in names])
    sign = torch.tensor([-1.0 if n in ("yaw", "roll", "gaze_yaw") else 1.0 for n in names])
    return perm, sign


MIRROR_PERM, MIRROR_SIGN = _mirror_map()


def mirror_targets(targets: torch.Tensor) -> torch.Tensor:
    """Raw targets [N, 12] of the left-right mirrored images."""
    return targets[:, MIRROR_PERM] * MIRROR_SIGN


def augment(x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Jitter for images [N, 3, S, S] in [-1, 1] and their raw targets [N, 12]: a left-right mirror of half the
    batch (with the targets mirrored: `mirror_targets`; it doubles the poses seen, which is what lets pose
    generalise to unseen identities), an integer shift (up to S/16 px each way, edge padded), blur on half the
    batch (a 3x3 box blur blended in at a random strength: generator outputs are blurrier than renders),
    brightness / contrast (+-10%) and pixel noise. No rotation or scaling: they would change roll and the
    face size. (Cheap on purpose: it runs on every step on 2 cores.)"""
    n, _, size, _ = x.shape
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    flip = u(n) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    targets = torch.where(flip.view(n, 1), mirror_targets(targets), targets)
    pad = max(1, size // 16)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).tolist()
    x = torch.stack([padded[i, :, dy[i]:dy[i] + size, dx[i]:dx[i] + size] for i in range(n)])
    half = torch.randperm(n, generator=generator)[: n // 2]
    strength = u(len(half), 1, 1, 1)
    x[half] = torch.lerp(x[half], F.avg_pool2d(x[half], 3, stride=1, padding=1, count_include_pad=False), strength)
    contrast = 0.9 + 0.2 * u(n, 1, 1, 1)
    brightness = (u(n, 1, 1, 1) - 0.5) * 0.2
    noise = torch.randn(x.shape, generator=generator) * 0.02
    return (x * contrast + brightness + noise).clamp(-1.0, 1.0), targets


def targets_of(truth: dict[str, np.ndarray]) -> np.ndarray:
    """The renderer's labels as one float32 [N, 12] matrix in TARGET_GROUPS order."""
    return np.concatenate([np.asarray(truth[group], dtype=np.float32).reshape(len(truth[group]), len(names))
                           for group, names in TARGET_GROUPS], axis=1)


def train(
    frames: np.ndarray,  # uint8 [N, S, S, 3]
    identities: np.ndarray,  # [N] identity labels
    truth: dict[str, np.ndarray],  # renderer labels: pose [N, 3], gaze [N, 2], expression [N, 7]
    net: ToyFaceNet,
    params: "AnalyzerParams",  # params.yaml `analyzer` (iters, batch_size, lr, margin, scale, motion_weight, augment)
    seed: int,
    progress: bool = True,
) -> tuple[dict[str, Any], list[dict]]:
    """Train `net` in place; returns (normalisation and class facts for the checkpoint, per-step history)."""
    cfg = params
    classes, labels = np.unique(identities, return_inverse=True)
    targets = targets_of(truth)
    mean, std = targets.mean(axis=0), targets.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)  # a constant channel is left unscaled
    x_all = torch.from_numpy(np.ascontiguousarray(frames))
    y_id = torch.from_numpy(labels.astype(np.int64))
    y_raw = torch.from_numpy(targets)
    t_mean, t_std = torch.from_numpy(mean), torch.from_numpy(std)
    head = ArcMarginHead(net.embedding_dim, len(classes), cfg.margin, cfg.scale)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.iters, pct_start=0.1)
    net.train()
    history: list[dict] = []
    steps = tqdm(range(cfg.iters), desc="analyzer", disable=not progress, mininterval=2.0)
    for step in steps:
        idx = torch.randint(len(x_all), (cfg.batch_size,), generator=generator)
        x = x_all[idx].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        raw = y_raw[idx]
        if cfg.augment:
            x, raw = augment(x, raw, generator)
        emb, motion = net(x)
        logits = head(emb, y_id[idx])
        loss_id = F.cross_entropy(logits, y_id[idx])
        loss_motion = F.mse_loss(motion, (raw - t_mean) / t_std)
        loss = loss_id + cfg.motion_weight * loss_motion
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == cfg.iters - 1:
            with torch.no_grad():
                accuracy = (logits.argmax(1) == y_id[idx]).float().mean().item()  # with the margin: a lower bound
            history.append({"step": step, "loss_identity": round(loss_id.item(), 5), "loss_motion": round(loss_motion.item(), 5),
                            "train_accuracy_with_margin": round(accuracy, 4)})
            steps.set_postfix(id=f"{loss_id.item():.3f}", motion=f"{loss_motion.item():.3f}")
    net.eval()
    facts = {"target_mean": mean.tolist(), "target_std": std.tolist(), "train_identities": classes.tolist()}
    return facts, history


class ToyAnalyzer(FaceAnalyzer):
    """Backend "toy": the `analyzer` stage's ToyFaceNet (frozen, eval mode; identity differentiable)."""

    CHECKPOINT = ANALYZER_CHECKPOINT  # written by the `analyzer` stage, relative to the workspace
    name = "toy"
    differentiable = True
    distance_name = "cosine"

    def __init__(self, net: ToyFaceNet, target_mean, target_std, threshold: float | None = None,
                 weights: dict[str, str] | None = None, device: str | torch.device = "cpu"):
        self.net = net.to(device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        self.input_size = net.resolution
        self.threshold = threshold
        self.facts: dict[str, Any] = {}  # what the checkpoint says of its training (world, identity fingerprints)
        self._mean = torch.as_tensor(target_mean, dtype=torch.float32, device=self.device)
        self._std = torch.as_tensor(target_std, dtype=torch.float32, device=self.device)
        self._weights = dict(weights or {})

    def _prepare(self, images) -> torch.Tensor:
        x = as_images(images).to(self.device, torch.float32)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def identity(self, images, batch_size: int = 256) -> torch.Tensor:
        x = self._prepare(images)
        return torch.cat([self.net(x[i : i + batch_size])[0] for i in range(0, len(x), batch_size)])

    def motion(self, images, batch_size: int = 256) -> MotionFeatures:
        x = self._prepare(images)
        with torch.no_grad():
            raw = torch.cat([self.net(x[i : i + batch_size])[1] for i in range(0, len(x), batch_size)])
        values = (raw * self._std + self._mean).cpu().numpy()
        split = np.cumsum([len(names) for _, names in TARGET_GROUPS])[:-1]
        pose, gaze, expression = np.split(values, split, axis=1)
        return MotionFeatures(pose, gaze, expression, POSE_NAMES, GAZE_NAMES, EXPRESSION_NAMES)

    def weights(self) -> dict[str, str]:
        return dict(self._weights)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", root: str | Path | None = None) -> "ToyAnalyzer":
        """The analyzer in `path`; its weights are described by the path relative to `root` (the workspace)."""
        from pipeline.assets import sha256_of
        from pipeline.paths import workspace

        path = Path(path)
        if not path.is_file():
            raise BackendError(f"toy analyzer weights not found: {path}. They are trained by the `analyzer` stage: "
                               f"run `dvc repro analyzer` (or `reenact analyzer`) in the workspace first")
        try:
            ckpt = load_checkpoint(path, CHECKPOINT_KIND, hint="re-run `dvc repro analyzer`")
        except CheckpointError as e:
            raise BackendError(str(e)) from None
        arch = ckpt.config["architecture"]
        net = ToyFaceNet(arch["resolution"], arch["width"], arch["embedding_dim"])
        try:
            load_state(net, ckpt, "net", str(path))
        except CheckpointError as e:
            raise BackendError(f"{e}; re-run `dvc repro analyzer`") from None
        facts = ckpt.extra
        try:
            shown = path.resolve().relative_to(Path(root or workspace()).resolve()).as_posix()
        except ValueError:
            shown = str(path)
        analyzer = cls(net, facts["target_mean"], facts["target_std"], facts.get("threshold"), {shown: sha256_of(path)},
                       device)
        analyzer.facts = facts
        return analyzer


def save_checkpoint(path: Path, net: ToyFaceNet, facts: dict[str, Any], threshold: float | None,
                    params: dict[str, Any], seed: int) -> None:
    """models/analyzer.pt in the project's checkpoint format: weights, architecture and the `analyzer` params it
    was trained with (config), label normalisation, training identities and decision threshold (extra)."""
    config = {"architecture": {"resolution": net.resolution, "width": net.width, "embedding_dim": net.embedding_dim},
              "params": params, "seed": seed}
    save_checkpoint_file(path, Checkpoint(kind=CHECKPOINT_KIND, config=config, state={"net": net.state_dict()},
                                          extra={**facts, "threshold": threshold}))


def check_disjoint(analyzer: "ToyAnalyzer", world: dict[str, str], where: Path) -> None:
    """BackendError when an identity of the evaluation world (identity -> fingerprint, pipeline.store) is among the
    analyzer's training identities: an instrument must never have seen the faces it measures."""
    seen = set(analyzer.facts.get("identity_fingerprints") or [])
    shared = sorted(i for i, f in world.items() if f in seen)
    if shared:
        raise BackendError(
            f"{where}: the toy analyzer was trained on {len(shared)} identities of this world ({', '.join(shared[:5])}"
            f"{', ...' if len(shared) > 5 else ''}): it would measure faces it has seen. Train one on a world of its "
            f"own: dvc exp run -S analyzer.source=train -S analyzer.world.seed=<a seed other than data's>")


@dataclass
class AnalyzerScore:
    metrics: dict[str, Any]  # the `heldout` part of metrics/analyzer.json
    predicted: MotionFeatures  # on the held-out frames, for the figure
    distances: dict[str, np.ndarray]  # same / different identity pair distances, for the figure


def score_analyzer(analyzer: "ToyAnalyzer", test_split, eval_pairs: int, seed: int) -> AnalyzerScore:
    """Verification accuracy, pose / gaze MAE and expression correlations of `analyzer` on held-out identities
    (pipeline.store.SplitArrays with truth), with the training-mean baseline (pipeline.analysis.quality)."""
    from pipeline.analysis.quality import identity_quality, motion_quality

    verification, distances = identity_quality(analyzer, test_split.frames, test_split.identities,
                                               test_split.clip_ids, eval_pairs, seed)
    predicted = analyzer.motion(test_split.frames)
    mean = analyzer._mean.cpu().numpy()
    offsets = np.cumsum([0] + [len(names) for _, names in TARGET_GROUPS])
    train_mean = {group: mean[a:b] for (group, _), a, b in zip(TARGET_GROUPS, offsets[:-1], offsets[1:])}
    metrics = {"identities": int(len(np.unique(test_split.identities))), "frames": len(test_split),
               "verification": verification, **motion_quality(predicted, test_split.truth, train_mean)}
    return AnalyzerScore(metrics, predicted, distances)


@dataclass
class TrainedAnalyzer:
    analyzer: "ToyAnalyzer"  # with the decision threshold chosen on the validation identities
    facts: dict[str, Any]  # label normalisation, training identities and their fingerprints, the world (checkpoint extra)
    history: list[dict]
    metrics: dict[str, Any]  # the `train` part of metrics/analyzer.json


def train_analyzer(params: "AnalyzerParams", seed: int, train_split, validation_split,
                   progress: bool = True) -> TrainedAnalyzer:
    """Train a ToyFaceNet on `train_split` (pipeline.store.SplitArrays with truth); the same-person threshold is
    chosen on `validation_split` (other identities of the same world)."""
    torch.manual_seed(seed)
    net = ToyFaceNet(train_split.frames.shape[1], params.width, params.embedding_dim)
    facts, history = train(train_split.frames, train_split.identities, train_split.truth, net, params, seed, progress)
    analyzer = ToyAnalyzer(net, facts["target_mean"], facts["target_std"])
    validation = score_analyzer(analyzer, validation_split, params.eval_pairs, seed)
    analyzer.threshold = validation.metrics["verification"]["threshold"]
    metrics = {"identities": len(facts["train_identities"]), "frames": len(train_split), "iters": params.iters,
               "final_loss_identity": history[-1]["loss_identity"], "final_loss_motion": history[-1]["loss_motion"],
               "validation": validation.metrics}
    return TrainedAnalyzer(analyzer, facts, history, metrics)
