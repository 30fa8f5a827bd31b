"""The one checkpoint format for everything this project trains (generator, analyzer, encoder, ...).

A checkpoint is plain data, read with `torch.load(weights_only=True)` (no pickled classes, no code):

    {"format": "reenact-checkpoint", "version": 1, "kind": "stylegan2" | "toy-analyzer" | ...,
     "config": the resolved config the modules were built from (what the loader needs to rebuild them),
     "state": {module name: state dict}, "optimizers": {name: state dict}, "schedulers": {name: state dict},
     "step": int, "rng": the RNG states (torch, numpy, python) at `step`, or None, "extra": plain data}

`state_dict_problems` checks a state dict against a module before a strict load, so the error says what does not
fit (used here and by the loaders of foreign formats: rosinality / NVIDIA StyleGAN2, pSp's ArcFace).

Written atomically and byte-reproducibly (pipeline.io.save_torch): equal contents give equal files, so a DVC
output that is a checkpoint changes only when its numbers do. Resume = load, `load_state` each module,
optimizer and scheduler, `restore_rng`, continue from `step + 1`.
"""
from __future__ import annotations

import os
import pickle
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.errors import UserError
from pipeline.io import save_torch

FORMAT = "reenact-checkpoint"
VERSION = 1


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be used; the message names the file, what was found and what was expected."""


@dataclass
class Checkpoint:
    kind: str  # what was trained: the loader of that kind refuses any other
    config: dict[str, Any]  # the resolved config (architecture and the params section it was trained with)
    state: dict[str, Mapping[str, Tensor]]  # module name -> state dict
    optimizers: dict[str, Any] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    step: int = 0  # the last completed step
    rng: dict[str, Any] | None = None  # rng_state() at `step`; None for a final (non-resumable) model
    extra: dict[str, Any] = field(default_factory=dict)  # plain data: metrics, the world it was trained on, ...


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy's legacy global, python's `random`) as plain data."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write `ckpt` atomically; its config and extra must be plain data (so that weights_only can read it)."""
    _check_plain(ckpt.config, "config")
    _check_plain(ckpt.extra, "extra")
    obj = {
        "format": FORMAT, "version": VERSION, "kind": ckpt.kind, "config": ckpt.config,
        "state": {name: {k: v.detach().cpu().clone() for k, v in sd.items()} for name, sd in ckpt.state.items()},
        "optimizers": ckpt.optimizers, "schedulers": ckpt.schedulers, "step": int(ckpt.step), "rng": ckpt.rng,
        "extra": ckpt.extra,
    }
    save_torch(path, obj)


def load_checkpoint(path: str | os.PathLike, kind: str, hint: str = "") -> Checkpoint:
    """Read a checkpoint of `kind`; CheckpointError naming the file (and `hint`, how to make a good one) when it
    is missing, corrupt, of another format or kind, or newer than this code."""
    path = Path(path)
    fix = f"; {hint}" if hint else ""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint{fix}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        foreign = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if foreign:
            raise CheckpointError(f"{path}: not a plain-data checkpoint: it references {foreign.group(1)}, and a file "
                                  f"that needs foreign classes or code is never run here{fix}") from None
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint (truncated or corrupt?){fix}") from None
    except Exception as e:  # torch.load fails on damaged files in many ways (struct.error, RuntimeError, EOFError...)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint (truncated or corrupt?): {first}{fix}") from None
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint (found {found!r}){fix}")
    if not isinstance(obj.get("version"), int) or obj["version"] > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {obj.get('version')!r}, this code reads versions <= {VERSION}{fix}")
    if obj.get("kind") != kind:
        raise CheckpointError(f"{path}: a checkpoint of kind {obj.get('kind')!r}, expected {kind!r}{fix}")
    return Checkpoint(kind=obj["kind"], config=dict(obj.get("config") or {}), state=dict(obj.get("state") or {}),
                      optimizers=dict(obj.get("optimizers") or {}), schedulers=dict(obj.get("schedulers") or {}),
                      step=int(obj.get("step", 0)), rng=obj.get("rng"), extra=dict(obj.get("extra") or {}))


def load_state(module: nn.Module, ckpt: Checkpoint, name: str, where: str) -> None:
    """Load `ckpt.state[name]` strictly into `module`; CheckpointError saying what does not fit."""
    if name not in ckpt.state:
        raise CheckpointError(f"{where}: no state for {name!r} (has: {few(sorted(ckpt.state))})")
    problems = state_dict_problems(ckpt.state[name], module.state_dict())
    if problems:
        raise CheckpointError(f"{where}: the {name!r} weights do not fit the architecture in its config: "
                              + "; ".join(problems))
    module.load_state_dict(ckpt.state[name], strict=True)


def few(items: Sequence[str], n: int = 4) -> str:
    """The first `n` items, and how many more there are."""
    items = list(items)
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def state_dict_problems(state: Mapping[str, Any], expected: Mapping[str, Tensor]) -> list[str]:
    """Why `state` cannot load strictly into a module whose state dict is `expected` (empty: it can):
    missing and unexpected keys, entries that are not tensors, shape mismatches."""
    missing = [k for k in expected if k not in state]
    unexpected = [str(k) for k in state if k not in expected]
    not_tensor = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    mismatched = [
        f"{k}: found {list(state[k].shape)}, expected {list(v.shape)}"
        for k, v in expected.items()
        if isinstance(state.get(k), Tensor) and state[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("entries that are not tensors", not_tensor), ("shape mismatches", mismatched)):
        if keys:
            problems.append(f"{len(keys)} {label} ({few(keys)})")
    return problems


def _check_plain(obj: Any, where: str) -> None:
    if obj is None or isinstance(obj, (bool, int, float, str, Tensor)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, found {type(k).__name__} {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where}: {type(obj).__name__} is not plain data (tensors, numbers, strings, lists, dicts)")
