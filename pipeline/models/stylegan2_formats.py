"""Checkpoint I/O of the StyleGAN2 generator: the one loader (`load_generator`) for every caller, writers of
our native format and of rosinality's, and `render`, the array-in / array-out helper behind the CLI.

Formats
-------
- "rosinality": a `.pt` from rosinality/stylegan2-pytorch: `{"g_ema": state_dict, "latent_avg": [style_dim],
  ...}` (its converted official weights) or a training checkpoint `{"g", "d", "g_ema", ..., "args"}`; also a
  bare g_ema state dict. Read with `torch.load(weights_only=True)` (`argparse.Namespace`, which training
  checkpoints carry as "args", is the one class allowed). The architecture is inferred from the keys and
  shapes (`infer_rosinality_config`). Without a stored latent_avg it is estimated as the mean mapped w of
  4096 z drawn with seed 0 (rosinality's generate.py does the same at 4096 samples, unseeded).
- "nvidia": a stylegan2-ada-pytorch pickle, converted by `pipeline.models.stylegan2_nvidia.read_nvidia_pickle`
  (a restricted unpickler, no foreign code) into (config, rosinality-style state dict, latent_avg), then
  loaded by `generator_from_rosinality_state` like a rosinality checkpoint.
- "native": the project's one checkpoint format (pipeline.checkpoint) of kind "stylegan2": config = G.config,
  state = {"G": state dict, "latent_avg": {"latent_avg": tensor}}, extra = the caller's plain data; written
  atomically by `save_native`, read with weights_only=True.

Every failure is a `CheckpointError` (a ValueError) whose message names the file and says what was found and
what was expected.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.checkpoint import FORMAT as CHECKPOINT_FORMAT
from pipeline.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from pipeline.checkpoint import few as _few
from pipeline.checkpoint import state_dict_problems
from pipeline.models.stylegan2 import (
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    Generator,
    channel_widths,
    make_kernel,
)

FORMATS = ("rosinality", "nvidia", "native")
NATIVE_KIND = "stylegan2"  # the kind of our native generator checkpoints (pipeline.checkpoint)
CONFIG_KEYS = tuple(p for p in inspect.signature(Generator.__init__).parameters if p != "self")
CONFIG_DEFAULTS = {
    k: p.default for k, p in inspect.signature(Generator.__init__).parameters.items() if p.default is not inspect.Parameter.empty
}
LATENT_AVG_SAMPLES = 4096  # z samples for the latent_avg estimate when a checkpoint has none


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_generator(
    path: str | os.PathLike,
    format: Literal["rosinality", "nvidia", "native"],
    map_location: str | torch.device = "cpu",
    resolution: int | None = None,
) -> Generator:
    """Load a generator from `path` in the given `format` onto `map_location` (see the module docstring).

    `resolution`, when given, is checked against the checkpoint's. The returned generator has its
    `latent_avg` set and carries `checkpoint_info` = {"path", "format", "extra", "latent_avg_source"}
    ("extra" is the native checkpoint's extra dict, else None).
    """
    if format not in FORMATS:
        raise CheckpointError(f"{path}: unknown checkpoint format {format!r}; expected one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    where = str(path)
    extra = None
    if format == "native":
        G, extra = _load_native(path, resolution)
        source = "stored"
    elif format == "rosinality":
        obj = _torch_load(path)
        state, latent_avg = _rosinality_parts(obj, where)
        source = "stored" if latent_avg is not None else f"estimated ({LATENT_AVG_SAMPLES} samples, seed 0)"
        G = generator_from_rosinality_state(state, latent_avg, _where=where, **({} if resolution is None else {"resolution": resolution}))
    else:
        try:
            from pipeline.models.stylegan2_nvidia import read_nvidia_pickle
        except ImportError as e:
            raise CheckpointError(f"{path}: the NVIDIA pickle reader is not available ({e})") from e
        try:
            config, state, latent_avg = read_nvidia_pickle(path)
        except CheckpointError:
            raise
        except ValueError as e:  # the reader's own errors name the file
            raise CheckpointError(str(e)) from e
        config = dict(config)
        if resolution is not None:
            found = config.get("resolution")
            if found is not None and found != resolution:
                raise CheckpointError(f"{path}: found a {found} px generator, expected {resolution} px")
            config["resolution"] = resolution
        source = "stored" if latent_avg is not None else f"estimated ({LATENT_AVG_SAMPLES} samples, seed 0)"
        G = generator_from_rosinality_state(state, latent_avg, _where=where, **config)
    if isinstance(map_location, (str, torch.device)):
        G = G.to(torch.device(map_location))
    G.checkpoint_info = {"path": where, "format": format, "extra": extra, "latent_avg_source": source}
    return G


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True) on CPU, with every failure turned into a CheckpointError naming `path`."""
    try:
        with _allow(argparse.Namespace), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a foreign pickle: refused below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "weights only" in msg.lower() or "weights_only" in msg:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
            other = re.search(r"(Unsupported[^\n]*)", msg)
            what = f" (it references {found.group(1)})" if found else f" ({other.group(1).strip()})" if other else ""
            raise CheckpointError(
                f"{path}: not a plain state-dict checkpoint: the weights-only unpickler refuses it{what}; a pickle "
                "that needs foreign classes or code is never run here. NVIDIA stylegan2-ada pickles (.pkl) need "
                "format 'nvidia' (--format nvidia)."
            ) from None
        raise CheckpointError(f"{path}: corrupt or not a torch checkpoint ({msg.splitlines()[0] if msg else e!r})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint (truncated or corrupt?): {first}") from None


def _allow(*classes: type):
    """Allow `classes` in weights_only loads (rosinality training checkpoints carry argparse.Namespace)."""
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if scoped is not None:
        return scoped(list(classes))
    torch.serialization.add_safe_globals(list(classes))
    return contextlib.nullcontext()


def _rosinality_parts(obj: Any, where: str) -> tuple[dict, Tensor | None]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a dict with 'g_ema' (a rosinality checkpoint), found {type(obj).__name__}")
    if "g_ema" in obj:
        state, latent_avg = obj["g_ema"], obj.get("latent_avg")
    elif "style.1.weight" in obj:  # a bare g_ema state dict
        state, latent_avg = obj, None
    elif obj.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where}: this is a native checkpoint of this project; load it with format 'native'")
    else:
        raise CheckpointError(f"{where}: no 'g_ema' in the checkpoint (keys found: {_few(sorted(map(str, obj)))})")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: 'g_ema' is a {type(state).__name__}, expected a state dict")
    if latent_avg is not None and not isinstance(latent_avg, Tensor):
        raise CheckpointError(f"{where}: 'latent_avg' is a {type(latent_avg).__name__}, expected a tensor")
    return dict(state), latent_avg


def _load_native(path: Path, resolution: int | None) -> tuple[Generator, Any]:
    try:
        ckpt = load_checkpoint(path, NATIVE_KIND, hint="write one with the `generator` stage (dvc repro generator) "
                               "or give the format the file is in (rosinality | nvidia)")
    except CheckpointError:
        obj = _torch_load(path)  # say what the file is when it is a rosinality checkpoint
        if isinstance(obj, Mapping) and "g_ema" in obj:
            raise CheckpointError(f"{path}: not a native checkpoint; it looks like a rosinality checkpoint: use "
                                  f"format 'rosinality'") from None
        raise
    config = ckpt.config
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise CheckpointError(f"{path}: unknown generator config keys {unknown}; known: {', '.join(CONFIG_KEYS)}")
    if "resolution" not in config:
        raise CheckpointError(f"{path}: native checkpoint config has no 'resolution'")
    if resolution is not None and config["resolution"] != resolution:
        raise CheckpointError(f"{path}: found a {config['resolution']} px generator, expected {resolution} px")
    try:
        G = Generator(**{**CONFIG_DEFAULTS, **config})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid generator config {dict(config)}: {e}") from None
    _load_state(G, ckpt.state.get("G"), str(path))
    latent_avg = ckpt.state.get("latent_avg", {}).get("latent_avg")
    if latent_avg is not None:
        _set_latent_avg(G, latent_avg, str(path))
    return G, ckpt.extra or None


def infer_rosinality_config(state_dict: Mapping[str, Any], where: str = "state dict") -> dict:
    """Architecture of a rosinality-style generator state dict: resolution (from the number of convs,
    to_rgbs and noises), style_dim and n_mlp (style.* keys) and the channel widths (input.input and the
    convs' weights), returned as {"resolution", "style_dim", "n_mlp", "widths": {res: width}}."""
    keys = [str(k) for k in state_dict]
    missing = [k for k in ("style.1.weight", "input.input", "conv1.conv.weight") if k not in state_dict]
    if missing:
        raise CheckpointError(
            f"{where}: not a StyleGAN2 generator state dict: missing {', '.join(missing)} (keys found: {_few(sorted(keys))})"
        )

    def indices(prefix: str) -> list[int]:
        return sorted({int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}(\d+)\b", k))})

    convs, rgbs, noises = indices("convs."), indices("to_rgbs."), indices("noises.noise_")
    for name, idx in (("convs", convs), ("to_rgbs", rgbs), ("noises", noises)):
        if idx != list(range(len(idx))):
            raise CheckpointError(f"{where}: {name} indices are not 0..{len(idx) - 1}: found {idx}")
    n_conv = len(convs)
    if n_conv < 2 or n_conv % 2:
        raise CheckpointError(f"{where}: found {n_conv} convs; a generator has 2 per block above 4 px (2, 4, ..., 16)")
    resolution = 2 ** (n_conv // 2 + 2)
    if len(rgbs) != n_conv // 2 or len(noises) != n_conv + 1:
        raise CheckpointError(
            f"{where}: found {n_conv} convs ({resolution} px), {len(rgbs)} to_rgbs "
            f"({2 ** (len(rgbs) + 2)} px) and {len(noises)} noises ({2 ** ((len(noises) - 1) // 2 + 2)} px): they disagree"
        )
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise CheckpointError(f"{where}: found {n_conv} convs ({resolution} px), outside {MIN_RESOLUTION}..{MAX_RESOLUTION} px")
    mlp = indices("style.")
    if mlp != list(range(1, len(mlp) + 1)):
        raise CheckpointError(f"{where}: mapping layers style.N are not 1..{len(mlp)}: found {mlp}")
    style_dim = int(state_dict["style.1.weight"].shape[1])
    widths = {4: int(state_dict["input.input"].shape[1])}
    for k in range(n_conv // 2):
        key = f"convs.{2 * k}.conv.weight"
        if key not in state_dict:
            raise CheckpointError(f"{where}: missing {key}")
        widths[2 ** (k + 3)] = int(state_dict[key].shape[1])
    return {"resolution": resolution, "style_dim": style_dim, "n_mlp": len(mlp), "widths": widths}


def _fit_widths(widths: dict[int, int], resolution: int, where: str, cm: int | None, cmax: int | None) -> tuple[int, int]:
    """(channel_multiplier, channel_max) reproducing `widths`; prefers rosinality's (2, 512)."""
    cands = []
    for m in range(1, 65):
        for c in sorted(set(widths.values()) | {512}):
            if channel_widths(resolution, m, c) == widths:
                cands.append((m, c))
    if cm is not None:
        cands = [x for x in cands if x[0] == cm]
    if cmax is not None:
        cands = [x for x in cands if x[1] == cmax]
    if not cands:
        asked = ", ".join(f"{k}={v}" for k, v in (("channel_multiplier", cm), ("channel_max", cmax)) if v is not None)
        raise CheckpointError(
            f"{where}: channel widths {widths} fit no (channel_multiplier, channel_max)"
            + (f" with {asked}" if asked else "")
            + f"; expected min(channel_max, 512 up to 32 px, 16384*channel_multiplier/res above), e.g. "
            f"{channel_widths(resolution, 2, 512)} for config-f"
        )
    cands.sort(key=lambda x: (x[1] != 512, x[0] != 2, x[0], x[1]))
    return cands[0]


def generator_from_rosinality_state(
    state_dict: Mapping[str, Any],
    latent_avg: Tensor | None = None,
    _where: str = "state dict",
    **config_overrides: Any,
) -> Generator:
    """A Generator holding a rosinality-style state dict: the architecture is inferred (see
    `infer_rosinality_config`), `config_overrides` pin settings the weights cannot show (lr_mlp, conv_clamp,
    blur_kernel) or check inferred ones (resolution, style_dim, n_mlp, channel_multiplier, channel_max);
    then `load_state_dict(strict=True)`. Without `latent_avg` it is estimated (4096 samples, seed 0).
    Any mismatch raises CheckpointError saying what was found and what was expected."""
    where = _where
    unknown = sorted(set(config_overrides) - set(CONFIG_KEYS))
    if unknown:
        raise CheckpointError(f"{where}: unknown generator config keys {unknown}; known: {', '.join(CONFIG_KEYS)}")
    found = infer_rosinality_config(state_dict, where)
    res = found["resolution"]
    want = config_overrides.get("resolution")
    if want is not None and want != res:
        n_conv = 2 * (int(np.log2(res)) - 2)
        n_want = 2 * (int(np.log2(want)) - 2) if want >= 4 else "?"
        raise CheckpointError(f"{where}: found {n_conv} convs ({res} px), expected {n_want} ({want} px)")
    for key in ("style_dim", "n_mlp"):
        if key in config_overrides and config_overrides[key] != found[key]:
            raise CheckpointError(f"{where}: found {key}={found[key]}, expected {config_overrides[key]}")
    cm, cmax = _fit_widths(
        found["widths"], res, where, config_overrides.get("channel_multiplier"), config_overrides.get("channel_max")
    )
    config = {
        **CONFIG_DEFAULTS,
        **config_overrides,
        "resolution": res,
        "style_dim": found["style_dim"],
        "n_mlp": found["n_mlp"],
        "channel_multiplier": cm,
        "channel_max": cmax,
    }
    try:
        G = Generator(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: invalid generator config {config}: {e}") from None
    blur = state_dict.get("convs.0.conv.blur.kernel")
    expected_blur = make_kernel(config["blur_kernel"]) * 4
    if isinstance(blur, Tensor) and (blur.shape != expected_blur.shape or not torch.allclose(blur.float(), expected_blur, atol=1e-6)):
        raise CheckpointError(
            f"{where}: the blur kernel in the checkpoint (convs.0.conv.blur.kernel, {list(blur.shape)}) is not that of "
            f"blur_kernel={config['blur_kernel']}; pass the matching blur_kernel"
        )
    _load_state(G, state_dict, where)
    if latent_avg is None:
        gen = torch.Generator().manual_seed(0)
        latent_avg = G.mean_latent(LATENT_AVG_SAMPLES, generator=gen)[0]
    _set_latent_avg(G, latent_avg, where)
    return G


def _load_state(G: Generator, state: Any, where: str) -> None:
    """load_state_dict(strict=True) after a check that reports missing / unexpected keys and shape mismatches."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: state dict is a {type(state).__name__}, expected a dict of tensors")
    problems = state_dict_problems(state, G.state_dict())
    if problems:
        cfg = G.config
        raise CheckpointError(
            f"{where}: does not fit a {cfg['resolution']} px generator (style_dim {cfg['style_dim']}, n_mlp {cfg['n_mlp']}, "
            f"channel_multiplier {cfg['channel_multiplier']}, channel_max {cfg['channel_max']}): " + "; ".join(problems)
        )
    G.load_state_dict(state, strict=True)


def _set_latent_avg(G: Generator, latent_avg: Tensor, where: str) -> None:
    if not isinstance(latent_avg, Tensor) or latent_avg.numel() != G.style_dim:
        shape = list(latent_avg.shape) if isinstance(latent_avg, Tensor) else type(latent_avg).__name__
        raise CheckpointError(f"{where}: latent_avg has shape {shape}, expected [{G.style_dim}]")
    with torch.no_grad():
        G.latent_avg.copy_(latent_avg.detach().reshape(G.style_dim))


# ---------------------------------------------------------------------------------------------------------
# Writing


def to_rosinality_checkpoint(G: Generator, allow_lossy: bool = False) -> dict:
    """{"g_ema": state_dict, "latent_avg": tensor}, loadable by rosinality's code and by `load_generator`
    (bit-exactly). Settings that format cannot carry (conv_clamp, lr_mlp other than 0.01) raise
    CheckpointError unless `allow_lossy`; use `save_native` to keep them."""
    lossy = []
    if G.config["conv_clamp"] is not None:
        lossy.append(f"conv_clamp={G.config['conv_clamp']}")
    if G.config["lr_mlp"] != 0.01:
        lossy.append(f"lr_mlp={G.config['lr_mlp']}")
    if lossy and not allow_lossy:
        raise CheckpointError(f"the rosinality format cannot carry {', '.join(lossy)}; use save_native (or allow_lossy=True)")
    state = {k: v.detach().cpu().clone() for k, v in G.state_dict().items()}
    return {"g_ema": state, "latent_avg": G.latent_avg.detach().cpu().clone()}


def save_native(G: Generator, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write G atomically in the project's checkpoint format (kind "stylegan2", see the module docstring).
    `extra` must hold only plain data (tensors, numbers, strings, bools, None, lists, tuples, dicts with
    string keys) so that the file loads with weights_only=True."""
    state = {"G": G.state_dict(), "latent_avg": {"latent_avg": G.latent_avg}}
    save_checkpoint(path, Checkpoint(kind=NATIVE_KIND, config=dict(G.config), state=state, extra=extra or {}))


# ---------------------------------------------------------------------------------------------------------
# Rendering arrays


def styles_to_dict(styles: Sequence[Tensor]) -> dict[str, np.ndarray]:
    """SS codes (list of [N, C_l]) -> {"s_0": array, ...}, the layout `render` reads."""
    return {f"s_{i}": s.detach().float().cpu().numpy() for i, s in enumerate(styles)}


def render(
    G: Generator,
    wplus: np.ndarray | None = None,
    sspace: Mapping[str, np.ndarray] | None = None,
    noise: Mapping[str, np.ndarray] | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Render images as float32 [N, 3, R, R] in the generator's output range (about [-1, 1]).

    - `wplus` only: [N, n_latent, style_dim] -> G.synthesis.
    - `sspace` only: the full set of SS codes {"s_0".."s_{L-1}": [N, C_l]} -> G.synthesis_ss.
    - both: Eq. 3, A(wplus) + sspace, where `sspace` holds offsets for any subset of the layers.
    - `noise`: {"noise_0".."noise_{k}": [1 or N, 1, r, r]} (all conv layers, rosinality order); None: the
      generator's fixed noise buffers.
    Shapes are checked up front; a mismatch raises ValueError naming the key, the expected and the found shape.
    """
    if wplus is None and sspace is None:
        raise ValueError("render: give wplus, sspace or both")
    if batch_size < 1:
        raise ValueError(f"render: batch_size must be >= 1, got {batch_size}")
    layers = G.ss_layers
    n = None
    if wplus is not None:
        wplus = np.asarray(wplus)
        if wplus.ndim != 3 or wplus.shape[1:] != (G.n_latent, G.style_dim):
            raise ValueError(f"wplus: expected shape [N, {G.n_latent}, {G.style_dim}], got {list(wplus.shape)}")
        n = wplus.shape[0]
    ss: dict[int, np.ndarray] = {}
    if sspace is not None:
        names = {f"s_{layer.index}": layer for layer in layers}
        unknown = [k for k in sspace if k not in names]
        if unknown:
            raise ValueError(f"sspace: unknown keys {_few(sorted(unknown))}; expected s_0..s_{len(layers) - 1}")
        missing = [k for k in names if k not in sspace]
        if wplus is None and missing:
            raise ValueError(f"sspace: without wplus every SS layer is needed; missing {_few(missing)}")
        for key, layer in names.items():
            if key not in sspace:
                continue
            arr = np.asarray(sspace[key])
            if arr.ndim != 2 or arr.shape[1] != layer.channels or (n is not None and arr.shape[0] != n):
                want = f"[{n if n is not None else 'N'}, {layer.channels}]"
                raise ValueError(f"sspace[{key!r}] ({layer.name}): expected shape {want}, got {list(arr.shape)}")
            n = arr.shape[0] if n is None else n
            ss[layer.index] = arr
    noise_list = None
    if noise is not None:
        names = [f"noise_{j}" for j in range(G.num_layers)]
        unknown = [k for k in noise if k not in names]
        missing = [k for k in names if k not in noise]
        if unknown or missing:
            raise ValueError(
                f"noise: expected keys noise_0..noise_{G.num_layers - 1}"
                + (f"; unknown {_few(sorted(unknown))}" if unknown else "")
                + (f"; missing {_few(missing)}" if missing else "")
            )
        noise_list = []
        for j, key in enumerate(names):
            arr = np.asarray(noise[key])
            r = 2 ** ((j + 5) // 2)
            if arr.ndim != 4 or arr.shape[1:] != (1, r, r) or arr.shape[0] not in (1, n):
                raise ValueError(f"noise[{key!r}]: expected shape [1, 1, {r}, {r}] (or [{n}, 1, {r}, {r}]), got {list(arr.shape)}")
            noise_list.append(arr)

    device = G.latent_avg.device
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)

            def t(a: np.ndarray) -> Tensor:
                return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)

            nz = None
            if noise_list is not None:
                nz = [t(a if a.shape[0] == 1 else a[start:stop]) for a in noise_list]
            if wplus is not None:
                styles = G.A(t(wplus[start:stop]))
                for i, arr in ss.items():
                    styles[i] = styles[i] + t(arr[start:stop])
            else:
                styles = [t(ss[layer.index][start:stop]) for layer in layers]
            out.append(G.synthesis_ss(styles, noise=nz).float().cpu().numpy())
    return np.concatenate(out, axis=0).astype(np.float32, copy=False)
