"""Stages `pretrain` and `finetune`: the hybrid-latent encoder trained self-supervised (Sec. 3.2, Eq. 5-14).

One step draws a global batch of Sec. 3.2 triples (pipeline.store.TripletDataset: a source frame I^S, a driving
frame of the same identity I^D1 and one of another identity I^D2), encodes the three (Eq. 1), renders
I^{S->S}, I^{S->D1}, G(A(W_ID^S)) and I^{S->D2} with the frozen generator in one call (Eq. 3,
pipeline.models.encoder.HybridDecoder), and minimises Eq. 14 (pipeline.losses); the e4e latent discriminator
takes one step on the same batch (softplus losses, lazy R1). `pretrain` trains the whole encoder; `finetune`
starts from pretrain's encoder and discriminator and trains E_ID and E_F only (F frozen, its BatchNorm in eval
mode) at its own lr for its own iterations. Each stage reads the prepared store its section names (`data`).

Distribution. The same entry point runs in one process or under `torchrun` (DDP; NCCL on GPU, gloo on CPU). The
global batch is fixed by `batch_size`: with W processes and `grad_accum` A, it is cut into W x A micro-batches,
micro-batch m of rank r being replica v = r A + m of a DistributedSampler over W x A replicas. So 2 processes
see exactly the micro-batches of one process with grad_accum 2, and the two runs agree to float rounding
(BatchNorm statistics are per micro-batch in both; SyncBatchNorm, on GPU, makes them global). Every random
draw of a step (the discriminator's z) comes from a generator seeded by (seed, stage, step, replica): nothing
depends on the history of the process, so a resumed run repeats an uninterrupted one bit for bit (same machine,
same thread count).

Checkpoints (pipeline.checkpoint's format, kind "encoder-training"): encoder, discriminator, both optimizers,
the fp16 grad scaler, RNG states, step and the history so far, written atomically every `checkpoint_every`
steps to checkpoints/<stage>/last.pt. A re-run of the stage resumes from it when it was made by the same
settings and inputs (its fingerprint: the resolved sections but `iters` and the I/O knobs, the sha256 of the
generator, analyzer, prepared manifest and, for finetune, pretrain's encoder); otherwise it starts afresh and
says why. Raising `iters` therefore continues a finished run.

Logging: every `log_every` steps a history row (each loss term, averaged over the steps since the last row and
over the processes; lr) and, when an MLflow run is active (the stage runner's), the same row plus images/s
(timings are MLflow-only: DVC outputs stay byte-reproducible). A progress bar on rank 0.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import record_function as record  # labels for benchmarks/train_step.py (free when not profiling)

from pipeline import losses as L
from pipeline.assets import sha256_of
from pipeline.checkpoint import Checkpoint, load_checkpoint, load_state, restore_rng, rng_state, save_checkpoint
from pipeline.errors import UserError
from pipeline.models.discriminator import LatentDiscriminator
from pipeline.models.encoder import HybridDecoder, HybridEncoder, concat_styles, encoder_config, load_backbone, \
    motion_layers
from pipeline.paths import ANALYZER_CHECKPOINT, GENERATOR_CHECKPOINT, TRAIN_STATE
from pipeline.store import MANIFEST, TripletDataset

TRAINING_KIND = "encoder-training"  # the resumable state of a training stage
ENCODER_KIND = "hybrid-encoder"  # a trained encoder (+ its latent discriminator): pretrain's and finetune's output
STAGES = ("pretrain", "finetune")
NOT_IN_FINGERPRINT = ("iters", "checkpoint_every", "workers", "grid_every", "eval_triples", "device", "source",
                      "checkpoint")


class TrainingError(UserError, ValueError):
    """Training cannot start with these settings or inputs; the message names the key or file to fix."""


# ------------------------------------------------------------------------------------------- distribution


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def setup_distributed(device: torch.device) -> Dist:
    """torch.distributed from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT): NCCL on
    GPU, gloo on CPU. One process: nothing to set up."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env_rank(), world_size=world)
        here = True
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), here)


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {setting!r}: no CUDA device here; use device: auto or cpu")
    return torch.device(setting)


def step_generator(seed: int, stage: str, step: int, replica: int) -> torch.Generator:
    """A CPU generator seeded by (seed, stage, step, replica) only: the randomness of a step never depends on the
    process's history (exact resume, any number of processes)."""
    state = np.random.SeedSequence([seed, STAGES.index(stage), step, replica]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# --------------------------------------------------------------------------------------------------- data


class TripletBatches:
    """The micro-batches of each step for one process (see the module docstring): step s (1-based) of epoch
    e = (s - 1) // steps_per_epoch takes position (s - 1) % steps_per_epoch of replica v's DistributedSampler
    list, for v = rank * accum + m, m = 0 .. accum - 1."""

    def __init__(self, dataset: TripletDataset, batch_size: int, world: int, rank: int, accum: int, seed: int,
                 workers: int = 0):
        from torch.utils.data import DistributedSampler

        replicas = world * accum
        if batch_size % replicas:
            raise TrainingError(f"batch_size {batch_size} is not divisible by processes x grad_accum = {world} x "
                                f"{accum}: choose a batch that is")
        self.dataset, self.micro, self.accum, self.workers = dataset, batch_size // replicas, accum, workers
        self.steps_per_epoch = len(dataset) // batch_size
        if self.steps_per_epoch < 1:
            raise TrainingError(f"the training split has {len(dataset)} frames, fewer than one batch ({batch_size}); "
                                f"lower batch_size")
        self.samplers = [DistributedSampler(dataset, num_replicas=replicas, rank=rank * accum + m, shuffle=True,
                                            seed=seed, drop_last=True) for m in range(accum)]

    def _epoch_batches(self, epoch: int, start: int) -> list[list[int]]:
        lists = []
        for sampler in self.samplers:
            sampler.set_epoch(epoch)
            lists.append(list(sampler))
        return [lists[m][p * self.micro:(p + 1) * self.micro] for p in range(start, self.steps_per_epoch)
                for m in range(self.accum)]

    def steps(self, first: int, last: int) -> Iterator[tuple[int, list[dict]]]:
        """(step, [micro-batch dicts]) for steps first..last."""
        from torch.utils.data import DataLoader

        step = first
        while step <= last:
            epoch, pos = divmod(step - 1, self.steps_per_epoch)
            self.dataset.set_epoch(epoch)  # before the loader copies the dataset into its workers
            batches = self._epoch_batches(epoch, pos)[: (last - step + 1) * self.accum]
            loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers)
            group: list[dict] = []
            for micro in loader:
                group.append(micro)
                if len(group) == self.accum:
                    yield step, group
                    step, group = step + 1, []


# ------------------------------------------------------------------------------------------------ networks


@dataclass
class Frozen:
    """The frozen networks around the encoder: G (via the decoder), the ID-loss analyzer, the perceptual net."""

    decoder: HybridDecoder
    analyzer: Any  # FaceAnalyzer or None (lambda_id 0)
    perceptual: Any  # callable (x, y) -> [N] or None
    inputs: dict[str, str]  # file -> sha256 of every input network, for the fingerprint and the metrics


def rec_uses_lpips(loss) -> bool:
    return loss.lambda_lpips > 0 and (loss.lambda_self > 0 or loss.lambda_reenact > 0 or loss.lambda_f > 0)


def load_frozen(root: Path, params, loss, model, frame_size: int, device: torch.device) -> Frozen:
    """Load G (models/generator.pt), the ID-loss backend (analysis.identity_loss) and the perceptual network
    (loss.lpips_net) that the weights > 0 need."""
    from pipeline.analysis import load_analyzer
    from pipeline.models.stylegan2_formats import load_generator

    g_path = root / GENERATOR_CHECKPOINT
    G = load_generator(g_path, "native", map_location=device)
    G.fused_modconv = False  # one shared conv on style-scaled inputs: ~20% faster than grouped convs at batch 32 (CPU)
    try:
        layers = motion_layers(G, model.sf_layers.order, model.sf_layers.count)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    inputs = {GENERATOR_CHECKPOINT.as_posix(): sha256_of(g_path)}
    analyzer = None
    if loss.lambda_id > 0:
        analyzer = load_analyzer(params.analysis.identity_loss, params, root=root, device=device)
        inputs.update(analyzer.weights())
    perceptual = None
    if rec_uses_lpips(loss):
        toy = None
        if loss.lpips_net == "lpips_toy":
            toy = analyzer if analyzer is not None and analyzer.name == "toy" else load_analyzer("toy", params, root, device)
            inputs.setdefault(ANALYZER_CHECKPOINT.as_posix(), sha256_of(root / ANALYZER_CHECKPOINT))
        perceptual = L.perceptual_network(loss.lpips_net, toy, params.assets if loss.lpips_net == "lpips" else None, device)
        if loss.lpips_net == "lpips":
            inputs.update({f"lpips:{k}": v for k, v in perceptual.metric.weights.items()})
    return Frozen(HybridDecoder(G, layers, model.hybrid, frame_size), analyzer, perceptual, inputs)


# ----------------------------------------------------------------------------------------------- objective


def _images(micro: dict, key: str, device: torch.device, channels_last: bool) -> Tensor:
    x = micro[key]["image"].to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class Objective:
    """Eq. 14 for one micro-batch of triples: the encoder's loss and every term (unweighted, detached)."""

    def __init__(self, loss, frozen: Frozen):
        self.p, self.f = loss, frozen
        p = loss
        self.need_self = p.lambda_self > 0 or p.lambda_f > 0
        self.need_reenact = p.lambda_reenact > 0 or p.lambda_f > 0
        self.need_id = p.lambda_id > 0
        self.need_cross = (p.lambda_id > 0 and p.id_reg) or p.lambda_w_id > 0

    def uses_motion(self) -> bool:
        """Whether any term reads S_F (else the motion heads get no gradient: DDP must be told)."""
        p = self.p
        return self.need_self or self.need_reenact or self.need_cross or (p.lambda_reg > 0 and p.lambda_s > 0)

    def rec(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        p = self.p
        return L.reconstruction(x, y, p.lambda_l2, p.lambda_lpips, p.lambda_gv, self.f.perceptual, p.gv_patch)

    def __call__(self, encoder: nn.Module, encode_identity, discriminator: nn.Module | None, micro: dict,
                 device: torch.device, channels_last: bool = False) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """(total loss, {term: value}, W_ID^S detached). `encoder` is called once on the three frames (the DDP
        forward), `encode_identity` re-encodes I^{S->D2} (Eq. 10); `discriminator` is the raw module (its
        parameters frozen by the caller)."""
        p, dec = self.p, self.f.decoder
        xs, xd1, xd2 = (_images(micro, k, device, channels_last) for k in ("source", "driving_same", "driving_other"))
        n = xs.shape[0]
        with record("encode"):
            w, motion = encoder(torch.cat([xs, xd1, xd2]))
        w_s = w[:n]
        m_s, m_d1, m_d2 = ([m[i * n:(i + 1) * n] for m in motion] for i in range(3))
        parts: list[tuple[str, list[Tensor]]] = []
        if self.need_self:
            parts.append(("self", dec.styles(w_s, m_s)))
        if self.need_reenact:
            parts.append(("reenact", dec.styles(w_s, m_d1)))
        if self.need_id:
            parts.append(("id", dec.styles(w_s, None)))
        if self.need_cross:
            parts.append(("cross", dec.styles(w_s, m_d2)))
        rendered = {}
        if parts:
            with record("render"):
                out = dec.render_styles(concat_styles([s for _, s in parts])).float()
            rendered = {name: out[i * n:(i + 1) * n] for i, (name, _) in enumerate(parts)}
        terms: dict[str, Tensor] = {}
        total = xs.new_zeros((), dtype=torch.float32)
        xs_f, xd1_f = xs.float(), xd1.float()

        def add(name: str, weight: float, compute: Callable[[], Any]) -> None:
            """Add weight x term to the total; `compute` returns the term or (term, {sub-term: value})."""
            nonlocal total
            with record(f"loss.{name}"):
                value = compute()
            value, sub = value if isinstance(value, tuple) else (value, {})
            total = total + weight * value
            terms[name] = value.detach()
            for k, v in sub.items():
                terms[f"{name}_{k}"] = v.detach()

        if p.lambda_self > 0:
            add("self", p.lambda_self, lambda: self.rec(rendered["self"], xs_f))
        if p.lambda_reenact > 0:
            add("reenact", p.lambda_reenact, lambda: self.rec(rendered["reenact"], xd1_f))
        if p.lambda_id > 0:
            add("id", p.lambda_id, lambda: L.identity(self.f.analyzer, xs_f, rendered["id"],
                                                      rendered["cross"] if p.id_reg else None))
        if p.lambda_w_id > 0:
            add("w_id", p.lambda_w_id, lambda: L.latent_consistency(
                w_s.float(), encode_identity(rendered["cross"].to(xs.dtype)).float()))
        if p.lambda_reg > 0:
            add("reg", p.lambda_reg, lambda: L.regularisation(w_s.float(), [m.float() for m in m_d1], p.lambda_s))
        if p.lambda_f > 0:
            def masked_rec() -> Tensor:
                ms = micro["source"]["mask"].to(device)
                md1 = micro["driving_same"]["mask"].to(device)
                a, _ = self.rec(L.masked(rendered["self"], ms), L.masked(xs_f, ms))
                b, _ = self.rec(L.masked(rendered["reenact"], md1), L.masked(xd1_f, md1))
                return a + b
            add("f", p.lambda_f, masked_rec)
        if p.lambda_d > 0 and discriminator is not None:
            add("d", p.lambda_d, lambda: L.adversarial(discriminator(w_s.float())))
        terms["total"] = total.detach()
        return total, terms, w_s.detach().float()


# ------------------------------------------------------------------------------------------- the training


@dataclass
class TrainOutput:
    checkpoint: Checkpoint | None  # the trained encoder + discriminator (None on ranks > 0)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # held-out grid images, uint8 [N, H, W, 3] each
    resumed_from: int = 0  # the step the run resumed after (0: a fresh start)
    tags: dict[str, str] = field(default_factory=dict)
    state: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # final encoder / discriminator (every rank)


def fingerprint(stage: str, resolved: dict[str, Any], inputs: dict[str, str]) -> str:
    """What a resumable checkpoint must match: the resolved sections (but iters and the I/O knobs) and inputs."""
    res = json.loads(json.dumps(resolved))
    for key in NOT_IN_FINGERPRINT:
        res.get(stage, {}).pop(key, None)
    return hashlib.sha256(json.dumps({"stage": stage, "sections": res, "inputs": inputs}, sort_keys=True).encode()).hexdigest()


def _autocast(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext(), "fp32"
    if device.type != "cuda":
        raise TrainingError(f"precision {precision!r} needs a GPU; use precision: auto or fp32 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype), precision


def learning_rate(section, step: int) -> float:
    """The encoder's lr at `step` (1-based): `warmup` steps of linear ramp, then constant or a cosine from `lr` to
    `lr * lr_final` at `iters`. A function of the step alone, so a resumed run repeats an uninterrupted one
    (with cosine, `iters` sets the schedule: raising it re-shapes the remaining steps)."""
    lr = section.lr
    if section.warmup and step <= section.warmup:
        return lr * step / section.warmup
    if section.lr_schedule == "cosine":
        span = max(section.iters - section.warmup, 1)
        t = min(max(step - section.warmup, 0) / span, 1.0)
        return lr * (section.lr_final + (1 - section.lr_final) * 0.5 * (1 + math.cos(math.pi * t)))
    return lr


def train_encoder(
    stage: str,  # "pretrain" | "finetune"
    params,  # the stage's params view: seed, model, analysis, loss, <stage>, assets
    root: Path,  # the workspace
    init: Checkpoint | None = None,  # finetune: pretrain's output (ENCODER_KIND)
    progress: bool = True,
    on_samples: Callable[[int, dict[str, np.ndarray]], None] | None = None,  # every grid_every steps (rank 0)
    on_step: Callable[[int, Callable[[], Checkpoint]], None] | None = None,  # after every step (rank 0), with a
    # function that returns the current encoder as a checkpoint (benchmarks/encoder_trajectory.py's snapshots)
    store: Path | None = None,  # the prepared store to train on (default: root / <stage>.data; pretrain.world's)
) -> TrainOutput:
    """Train the encoder (see the module docstring); returns its final checkpoint (rank 0), metrics, history."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if stage == "finetune" and init is None:
        raise TrainingError("finetune starts from pretrain's encoder: run the `pretrain` stage first")
    section, loss, model, seed = getattr(params, stage), params.loss, params.model, int(params.seed)
    resolved = {key: (value.model_dump(mode="json") if hasattr(value, "model_dump") else value)
                for key in ("seed", "model", "analysis", "loss", stage) for value in [getattr(params, key)]}
    root = Path(root)
    device = resolve_device(section.device)
    dist = setup_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    autocast, precision = _autocast(device, section.precision)
    channels_last = bool(section.channels_last and device.type == "cuda")
    start_time = time.perf_counter()

    store = Path(store) if store is not None else root / section.data
    if not (store / MANIFEST).is_file():
        raise TrainingError(f"{store}: no prepared store ({stage}.data); run the `prepare` stage, or point "
                            f"{stage}.data at a prepared folder")
    dataset = TripletDataset(store, "train", seed)
    frame_size = int(dataset.frames[0]["image"].shape[-1])
    frozen = load_frozen(root, params, loss, model, frame_size, device)
    G = frozen.decoder.G
    if channels_last:
        G.channels_last = True
    inputs = dict(frozen.inputs)
    inputs[f"{store.relative_to(root).as_posix() if store.is_relative_to(root) else section.data}/{MANIFEST}"] = \
        sha256_of(store / MANIFEST)

    # the networks
    torch.manual_seed(seed)
    cfg = encoder_config(G, frozen.decoder.layers, model.hybrid, frame_size, model.encoder.units, model.encoder.widths)
    encoder = HybridEncoder(**cfg)
    encoder.latent_avg.copy_(G.latent_avg.detach().cpu())
    disc = LatentDiscriminator(G.style_dim)
    if init is not None:
        if init.config.get("encoder") != cfg:
            raise TrainingError("pretrain's encoder was built for another model section or generator than finetune's "
                                "(its config differs): re-run `dvc repro pretrain`")
        inputs["init"] = init.extra.get("sha256", "")
        load_state(encoder, init, "encoder", "pretrain's encoder")
        load_state(disc, init, "discriminator", "pretrain's encoder")
    elif model.encoder.init == "arcface":
        from pipeline.assets import require
        from pipeline.models.arcface import load_irse50

        path = require("arcface_ir_se50", params.assets)
        load_backbone(encoder, load_irse50(path).state_dict())
        inputs["arcface_ir_se50"] = sha256_of(path)
    frozen_f = stage == "finetune"
    if frozen_f:
        for m in encoder.feature_modules():
            for p in m.parameters():
                p.requires_grad_(False)
    encoder.to(device)
    disc.to(device)
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    objective = Objective(loss, frozen)
    use_d = loss.lambda_d > 0
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    opt_e = torch.optim.Adam(trainable, lr=section.lr, betas=(0.9, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=section.d_lr, betas=(0.9, 0.999))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    # resume
    fp = fingerprint(stage, resolved, inputs)
    state_path = root / TRAIN_STATE / stage / "last.pt"
    history: list[dict] = []
    first = 1
    resumed_from = 0
    if state_path.is_file():
        why = None
        try:
            ck = load_checkpoint(state_path, TRAINING_KIND)
            if ck.config.get("fingerprint") != fp:
                why = "it was made with other settings or inputs"
            elif ck.step > section.iters:
                why = f"it is at step {ck.step}, beyond {stage}.iters = {section.iters}"
        except UserError as e:
            why = f"it cannot be read ({e})"
        if why is None:
            load_state(encoder, ck, "encoder", str(state_path))
            load_state(disc, ck, "discriminator", str(state_path))
            opt_e.load_state_dict(ck.optimizers["encoder"])
            opt_d.load_state_dict(ck.optimizers["discriminator"])
            if ck.extra.get("scaler"):
                scaler.load_state_dict(ck.extra["scaler"])
            if ck.rng is not None:
                restore_rng(ck.rng)
            history = list(ck.extra.get("history", []))
            resumed_from, first = ck.step, ck.step + 1
            if dist.main:
                print(f"{stage}: resuming from step {ck.step} ({state_path})", file=sys.stderr)
        elif dist.main:
            print(f"{stage}: not resuming from {state_path}: {why}; starting afresh", file=sys.stderr)

    # distribution wrappers
    enc_fwd, disc_fwd = encoder, disc
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if section.sync_batchnorm and device.type == "cuda":
            encoder = nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
        ids = [device.index] if device.type == "cuda" else None
        enc_fwd = DDP(encoder, device_ids=ids, find_unused_parameters=not objective.uses_motion())
        disc_fwd = DDP(disc, device_ids=ids)

    batches = TripletBatches(dataset, section.batch_size, dist.world, dist.rank, section.grad_accum, seed,
                             section.workers)

    def encoder_checkpoint(step: int, encoder_state: dict[str, Tensor], metrics: dict) -> Checkpoint:
        """The trained encoder (ENCODER_KIND) as `reenact` and `finetune` load it."""
        config = {"encoder": cfg, "layers": list(frozen.decoder.layers), "hybrid": bool(model.hybrid),
                  "generator": dict(G.config), "stage": stage, "sections": resolved, "seed": seed}
        return Checkpoint(kind=ENCODER_KIND, config=config,
                          state={"encoder": encoder_state, "discriminator": _unwrapped_state(disc)},
                          step=step, extra={"metrics": metrics})
    log_sums: dict[str, float] = {}
    log_count = 0
    t_log = time.perf_counter()
    mlflow = _active_mlflow() if dist.main else None
    bar = None
    if progress and dist.main:
        from tqdm import tqdm

        bar = tqdm(total=section.iters, initial=first - 1, desc=stage)

    def set_train_modes() -> None:
        encoder.train()
        if frozen_f:
            for m in encoder.feature_modules():
                m.eval()
        disc.train()

    for step, group in batches.steps(first, section.iters):
        set_train_modes()
        lr = learning_rate(section, step)
        for g in opt_e.param_groups:
            g["lr"] = lr
        step_terms: dict[str, Tensor] = {}
        for m, micro in enumerate(group):
            replica = dist.rank * section.grad_accum + m
            sync_now = m == len(group) - 1
            # encoder step (the discriminator frozen inside it)
            disc.requires_grad_(False)
            with (contextlib.nullcontext() if sync_now or dist.world == 1 else enc_fwd.no_sync()):
                with autocast:
                    total, terms, w_s = objective(enc_fwd, encoder.encode_identity, disc if use_d else None, micro,
                                                  device, channels_last)
                with record("backward"):
                    scaler.scale(total / len(group)).backward()
            disc.requires_grad_(True)
            # latent discriminator step (e4e): real w = mapping(z), fake = W_ID^S rows
            if use_d:
                with record("discriminator"):
                    gen = step_generator(seed, stage, step, replica)
                    z = torch.randn(w_s.shape[0] * w_s.shape[1], G.style_dim, generator=gen).to(device)
                    with torch.no_grad():
                        real = G.map(z)
                    fake = w_s.reshape(-1, w_s.shape[-1])
                    r1_step = loss.r1_gamma > 0 and step % loss.r1_every == 0
                    real.requires_grad_(r1_step)
                    with (contextlib.nullcontext() if sync_now or dist.world == 1 else disc_fwd.no_sync()):
                        pred = disc_fwd(torch.cat([real, fake]))
                        d_real, d_fake = pred[: len(real)], pred[len(real):]
                        d_loss = L.discriminator_loss(d_real, d_fake)
                        terms["disc"] = d_loss.detach()
                        if r1_step:
                            r1 = L.r1_penalty(d_real, real)
                            terms["r1"] = r1.detach()
                            d_loss = d_loss + loss.r1_gamma / 2 * r1 * loss.r1_every
                        (d_loss / len(group)).backward()
            for k, v in terms.items():
                step_terms[k] = step_terms.get(k, 0.0) + v.float() / len(group)
        with record("optimizer"):
            scaler.step(opt_e)
            scaler.update()
            opt_e.zero_grad(set_to_none=True)
            if use_d:
                opt_d.step()
                opt_d.zero_grad(set_to_none=True)
        # bookkeeping: terms averaged over the processes
        names = sorted(step_terms)
        vec = torch.stack([step_terms[k] for k in names]).detach()
        if dist.world > 1:
            import torch.distributed as tdist

            tdist.all_reduce(vec)
            vec /= dist.world
        if not torch.isfinite(vec).all():
            bad = [k for k, v in zip(names, vec.tolist()) if not math.isfinite(v)]
            raise TrainingError(f"{stage}: loss terms {bad} became non-finite at step {step}; lower {stage}.lr")
        for k, v in zip(names, vec.tolist()):
            log_sums[k] = log_sums.get(k, 0.0) + v
        log_count += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{vec[names.index('total')].item():.4f}")
        if step % section.log_every == 0 or step == section.iters:
            row = {"step": step, **{f"train/loss_{k}" if k != "total" else "train/loss": round(v / log_count, 6)
                                    for k, v in sorted(log_sums.items())}, "train/lr": lr}
            history.append(row)
            if mlflow is not None:
                now = time.perf_counter()
                mlflow.log_metrics({**{k: v for k, v in row.items() if k != "step"},
                                    "time/images_per_second": 3 * section.batch_size * log_count / max(now - t_log, 1e-9)},
                                   step=step)
                t_log = now
            log_sums, log_count = {}, 0
        if dist.main and on_samples is not None and section.grid_every and step % section.grid_every == 0 \
                and step < section.iters:
            on_samples(step, evaluate_heldout(encoder, frozen, store, seed, 8, device)["samples"])
        if dist.main and on_step is not None:
            on_step(step, lambda: encoder_checkpoint(step, _unwrapped_state(encoder), {}))
        if dist.main and (step % section.checkpoint_every == 0 or step == section.iters):
            save_checkpoint(state_path, Checkpoint(
                kind=TRAINING_KIND, config={"fingerprint": fp, "encoder": cfg},
                state={"encoder": _unwrapped_state(encoder), "discriminator": disc.state_dict()},
                optimizers={"encoder": opt_e.state_dict(), "discriminator": opt_d.state_dict()},
                step=step, rng=rng_state(), extra={"history": history, "scaler": scaler.state_dict()}))
            _gitignore(root / TRAIN_STATE)
    if bar is not None:
        bar.close()
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
    seconds = time.perf_counter() - start_time
    steps_run = section.iters - first + 1
    timings = {"train_seconds": round(seconds, 2), "steps_run": steps_run,
               "seconds_per_step": round(seconds / max(steps_run, 1), 4),
               "images_per_second": round(3 * section.batch_size * steps_run / max(seconds, 1e-9), 2)}
    encoder_state = _unwrapped_state(encoder)
    out = TrainOutput(None, history=history, timings=timings, resumed_from=resumed_from,
                      state={"encoder": encoder_state, "discriminator": _unwrapped_state(disc)})
    if dist.main:
        base = HybridEncoder(**cfg)
        base.load_state_dict(encoder_state)
        # held-out identities of the evaluation world (`data`), also when pretraining on a world of its own
        scored = root / section.data if (root / section.data / MANIFEST).is_file() else store
        evaluation = evaluate_heldout(base.to(device), frozen, scored, seed, section.eval_triples, device)
        out.samples = evaluation.pop("samples")
        out.metrics = {"steps": section.iters, "final": _final_losses(history), "heldout": evaluation,
                       "inputs": inputs}
        out.checkpoint = encoder_checkpoint(section.iters, encoder_state, out.metrics)
        out.tags = {"resumed_from_step": str(resumed_from), "precision": precision,
                    "world_size": str(dist.world), "device": str(device)}
    if dist.initialised_here:
        import torch.distributed as tdist

        tdist.destroy_process_group()
    return out


def world_record(store: Path) -> dict:
    """What a shipped encoder records of the world it was trained on: its training identities' fingerprints
    (synthetic world) and the prepared manifest's sha256."""
    from pipeline.store import PreparedStore, identity_fingerprints

    return {"identity_fingerprints": sorted(identity_fingerprints(PreparedStore(store), "train").values()),
            "manifest_sha256": sha256_of(store / MANIFEST)}


def shipped_encoder(ck: Checkpoint, store: Path, trained: dict, history: list[dict]) -> Checkpoint:
    """A trained encoder checkpoint made ready to ship as the `pretrain.source: native` asset: with the world it
    saw (world_record), how it was trained (`trained`: steps, recipe, compute) and its loss history."""
    extra = {**ck.extra, "world": world_record(store), "trained": trained, "history": history}
    return Checkpoint(kind=ENCODER_KIND, config=ck.config, state=ck.state, step=ck.step, extra=extra)


def load_native_encoder(params, root: Path, path: Path, name: str) -> TrainOutput:
    """`pretrain.source: native`: the shipped pre-trained encoder (asset `name` at `path`), checked to fit this
    generator and model section and never to have seen a held-out identity of this world, re-scored on the
    held-out triples in seconds. The loss section is not checked: with a shipped pretrain, a changed loss
    takes effect in `finetune` (pretrain.source: train re-trains the whole encoder with it)."""
    section, model, seed = params.pretrain, params.model, int(params.seed)
    hint = "train it instead: dvc exp run -S pretrain.source=train"
    ck = load_checkpoint(path, ENCODER_KIND, hint=hint)
    device = resolve_device(section.device)
    store = root / section.data
    if not (store / MANIFEST).is_file():
        raise TrainingError(f"{store}: no prepared store (pretrain.data); run the `prepare` stage")
    from pipeline.store import PreparedStore, identity_fingerprints

    frame_size = int(TripletDataset(store, "test", seed).frames[0]["image"].shape[-1])
    frozen = load_frozen(root, params, params.loss, model, frame_size, device)
    G = frozen.decoder.G
    if ck.config.get("generator") != dict(G.config):
        raise TrainingError(f"{path}: the shipped encoder was trained for another generator than "
                            f"{GENERATOR_CHECKPOINT} (generator.source / checkpoint); {hint}")
    cfg = encoder_config(G, frozen.decoder.layers, model.hybrid, frame_size, model.encoder.units, model.encoder.widths)
    if ck.config.get("encoder") != cfg or ck.config.get("hybrid") != bool(model.hybrid):
        theirs = (ck.config.get("sections") or {}).get("model") or {}
        ours = model.model_dump(mode="json")
        diff = sorted(_dotted_diff(theirs, ours, "model"))
        raise TrainingError(f"{path}: the shipped encoder was built with other model settings than params.yaml's "
                            f"({', '.join(diff) or 'its architecture'}): its heads do not fit; {hint}")
    seen = set((ck.extra.get("world") or {}).get("identity_fingerprints") or [])
    shared = sorted(i for i, f in identity_fingerprints(PreparedStore(store), "test").items() if f in seen)
    if shared:
        raise TrainingError(f"{path}: the shipped encoder was trained on {len(shared)} identities that this world holds "
                            f"out for evaluation ({', '.join(shared[:5])}): another data seed or split than it was "
                            f"trained for; {hint}")
    encoder = HybridEncoder(**cfg)
    load_state(encoder, ck, "encoder", str(path))
    evaluation = evaluate_heldout(encoder.to(device), frozen, store, seed, section.eval_triples, device)
    out = TrainOutput(ck, history=list(ck.extra.get("history") or []))
    out.samples = evaluation.pop("samples")
    out.metrics = {"source": "native", "checkpoint": name, "steps": ck.step, "trained": ck.extra.get("trained", {}),
                   "heldout": evaluation, "inputs": {**frozen.inputs, name: sha256_of(path)}}
    out.tags = {"source": "native", "device": str(device)}
    return out


def _dotted_diff(a: dict, b: dict, prefix: str) -> list[str]:
    """The dotted keys whose values differ between two nested dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _dotted_diff(x, y, f"{prefix}.{k}")
        elif x != y:
            out.append(f"{prefix}.{k}: {x!r} there, {y!r} here")
    return out


def _unwrapped_state(encoder: nn.Module) -> dict[str, Tensor]:
    """The encoder's state dict with plain BatchNorm names (SyncBatchNorm has the same keys)."""
    return {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}


def _final_losses(history: list[dict]) -> dict[str, float]:
    """Mean of each logged term over the last quarter of the rows (at least one)."""
    if not history:
        return {}
    tail = history[-max(1, len(history) // 4):]
    keys = [k for k in tail[-1] if k.startswith("train/loss")]
    return {k.removeprefix("train/"): round(float(np.mean([r[k] for r in tail if k in r])), 6) for k in keys}


def _active_mlflow():
    try:
        import mlflow
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return None
    return mlflow if mlflow.active_run() is not None else None


def _gitignore(folder: Path) -> None:
    """Keep the resumable checkpoints out of git (they are neither code nor a DVC output)."""
    path = folder / ".gitignore"
    if not path.is_file():
        path.write_text("*\n")


# ------------------------------------------------------------------------------------ held-out quality


@torch.no_grad()
def evaluate_heldout(encoder: HybridEncoder, frozen: Frozen, store: Path, seed: int, n: int,
                     device: torch.device) -> dict[str, Any]:
    """Quick numbers on held-out identities (the test split's triples, a fixed draw): self-reconstruction PSNR,
    same-identity re-enactment L1 against copying the source frame, and, for cross-identity re-enactment,
    the identity similarity to the source and to the driver (and the toy analyzer's mouth_open / yaw
    correlation with the driver when the ID backend has motion). Also the images of the first 8 triples."""
    from pipeline.store import TripletDataset as Triplets

    encoder.eval()
    try:
        test = Triplets(store, "test", seed)
    except ValueError as e:
        return {"skipped": str(e), "samples": {}}
    idx = np.random.default_rng(seed).choice(len(test), size=min(n, len(test)), replace=False)  # many identities
    items = [test[int(i)] for i in idx]

    def stack(key: str) -> Tensor:
        return torch.stack([it[key]["image"] for it in items]).to(device)

    xs, xd1, xd2 = stack("source"), stack("driving_same"), stack("driving_other")
    dec = frozen.decoder
    outs: dict[str, list[Tensor]] = {"self": [], "reenact": [], "cross": []}
    for a in range(0, len(xs), 32):
        b = slice(a, a + 32)
        w, motion = encoder(torch.cat([xs[b], xd1[b], xd2[b]]))
        k = xs[b].shape[0]
        w_s = w[:k]
        ms, md1, md2 = ([m[i * k:(i + 1) * k] for m in motion] for i in range(3))
        outs["self"].append(dec(w_s, ms).float())
        outs["reenact"].append(dec(w_s, md1).float())
        outs["cross"].append(dec(w_s, md2).float())
    y = {k: torch.cat(v).clamp(-1, 1) for k, v in outs.items()}

    def l1(a: Tensor, b: Tensor) -> float:
        return round(float((a - b).abs().mean() / 2), 5)  # on the [0, 1] scale

    mse = ((y["self"] - xs) / 2).pow(2).mean(dim=(1, 2, 3))
    res: dict[str, Any] = {
        "triples": len(xs),
        "self_psnr": round(float((-10 * torch.log10(mse.clamp_min(1e-10))).mean()), 3),
        "reenact_l1": l1(y["reenact"], xd1),
        "copy_source_l1": l1(xs, xd1),
        "cross_l1_to_driver": l1(y["cross"], xd2),
    }
    an = frozen.analyzer
    if an is not None and an.has_identity:
        e_s, e_d, e_c = an.identity(xs), an.identity(xd2), an.identity(y["cross"])
        res["cross_id_to_source"] = round(float(torch.cosine_similarity(e_c, e_s).mean()), 4)
        res["cross_id_to_driver"] = round(float(torch.cosine_similarity(e_c, e_d).mean()), 4)
        res["source_id_to_driver"] = round(float(torch.cosine_similarity(e_s, e_d).mean()), 4)
        if an.has_motion and len(xs) >= 3:
            mc, md = an.motion(y["cross"]), an.motion(xd2)
            for group, name in (("expression", "mouth_open"), ("pose", "yaw")):
                names = getattr(mc, f"{group}_names")
                if name in names:
                    j = names.index(name)
                    a, b = getattr(mc, group)[:, j], getattr(md, group)[:, j]
                    r = np.corrcoef(a, b)[0, 1] if a.std() > 0 and b.std() > 0 else float("nan")
                    res[f"cross_corr_{name}"] = None if not np.isfinite(r) else round(float(r), 4)
    k = min(8, len(xs))

    def u8(t: Tensor) -> np.ndarray:
        return t[:k].clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    res["samples"] = {"source": u8(xs), "driving_same": u8(xd1), "self": u8(y["self"]), "reenact": u8(y["reenact"]),
                      "driving_other": u8(xd2), "cross": u8(y["cross"])}
    return res


# ----------------------------------------------------------------------------------------- figures


def sample_grid(path: Path, samples: dict[str, np.ndarray], stage: str) -> Path:
    """Rows: source, same-identity driving, self-reconstruction, same-identity re-enactment, other-identity
    driving, cross-identity re-enactment (held-out identities)."""
    from pipeline.plots import image_grid

    rows = ("source", "driving_same", "self", "reenact", "driving_other", "cross")
    titles = {"source": "source", "driving_same": "driving (same id)", "self": "self-rec", "reenact": "re-enacted",
              "driving_other": "driving (other id)", "cross": "cross re-enacted"}
    k = len(samples["source"])
    return image_grid(path, [img for r in rows for img in samples[r]], [titles[r] for r in rows for _ in range(k)],
                      ncols=k, suptitle=f"{stage}: held-out identities")


def loss_curves(path: Path, history: list[dict], stage: str) -> Path:
    """Every logged loss term against the step (log scale), one panel per term."""
    from pipeline.plots import plt, save_png

    keys = [k for k in history[0] if k.startswith("train/loss")] if history else []
    cols = 4
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    steps = [r["step"] for r in history]
    for ax, key in zip(axes.flat, keys):
        values = [r.get(key, float("nan")) for r in history]
        ax.plot(steps, values, lw=1)
        if all(v > 0 for v in values if v == v):
            ax.set_yscale("log")
        ax.set_title(key.removeprefix("train/"), fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{stage}: training losses")
    return save_png(fig, path, dpi=90)


# ---------------------------------------------------------------------------------------- entry point


def stage_assets(params) -> list[str]:
    """The assets a training stage uses under these params (checked before training starts)."""
    used = []
    if (params.loss.lambda_id > 0 and params.analysis.identity_loss == "arcface") or params.model.encoder.init == "arcface":
        used.append("arcface_ir_se50")
    if rec_uses_lpips(params.loss) and params.loss.lpips_net == "lpips":
        used.append("lpips_alexnet")
    return used


def encoder_stage(ctx, output: Path, store: Path | None = None):
    """The body of stages `pretrain` and `finetune` (stages/<name>.py): train, then write the encoder checkpoint
    (`output`), metrics/<stage>_history.csv, reports/<stage>/ (held-out sample grids, loss curves)."""
    import shutil

    from pipeline.io import write_text
    from pipeline.paths import ENCODER_PRETRAIN, METRICS, REPORTS
    from pipeline.stage import StageResult, history_csv

    stage = ctx.name
    for name in stage_assets(ctx.params):
        ctx.asset(name)  # a missing asset stops here, naming the file and how to get it
    init = None
    if stage == "finetune":
        path = ctx.root / ENCODER_PRETRAIN
        init = load_checkpoint(path, ENCODER_KIND, hint="run the `pretrain` stage first (dvc repro pretrain)")
        init.extra["sha256"] = sha256_of(path)
    figures = ctx.root / REPORTS / stage
    main = env_rank() == 0
    if main:
        shutil.rmtree(figures, ignore_errors=True)

    def on_samples(step: int, samples: dict[str, np.ndarray]) -> None:
        sample_grid(figures / f"samples_step{step:06d}.png", samples, f"{stage}, step {step}")

    native = stage == "pretrain" and ctx.section.source == "native"
    if native and not main:  # torchrun on a shipped encoder: nothing to train, rank 0 writes it
        return StageResult(metrics={})
    if native:
        from pipeline.io import atomic_path

        asset = ctx.asset(ctx.section.checkpoint)
        out = load_native_encoder(ctx.params, ctx.root, asset, ctx.section.checkpoint)
        with atomic_path(ctx.root / output) as tmp:  # the shipped file itself, byte for byte
            shutil.copyfile(asset, tmp)
    else:
        out = train_encoder(stage, ctx.params, ctx.root, init, ctx.progress and main, on_samples, store=store)
        if out.checkpoint is None:  # a rank > 0 under torchrun: rank 0 writes everything
            return StageResult(metrics={})
        save_checkpoint(ctx.root / output, out.checkpoint)
    history_file = ctx.root / METRICS / f"{stage}_history.csv"
    write_text(history_file, history_csv(out.history))  # logged to MLflow while training (not again by the runner)
    artifacts = [loss_curves(figures / "losses.png", out.history, stage), history_file]
    if out.samples:
        artifacts.append(sample_grid(figures / "samples.png", out.samples, stage))
    artifacts += sorted(figures.glob("samples_step*.png"))
    return StageResult(metrics=out.metrics, history=None, artifacts=artifacts, tags=out.tags, timings=out.timings)


def stage_main(stage) -> None:
    """`python -m stages.<pretrain|finetune>`: rank 0 runs the stage (params, MLflow, outputs); under torchrun
    the other ranks only train (no MLflow run, no outputs)."""
    if env_rank() == 0:
        stage.main()
        return
    from pipeline.config import load_params
    from pipeline.paths import workspace
    from pipeline.stage import ParamsView, StageContext

    root = workspace()
    params = load_params(root / "params.yaml")
    stage.run(StageContext(stage.name, ParamsView(params, stage.sections, stage.name), root, progress=False))
