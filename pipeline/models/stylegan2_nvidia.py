"""Read NVIDIA stylegan2-ada-pytorch network pickles without running any code from them.

NVIDIA's snapshots (``network-snapshot-*.pkl``, the ``stylegan2-*.pkl`` transfer-learning nets)
are plain ``pickle.dump`` of ``dict(G=..., D=..., G_ema=..., augment_pipe=...,
training_set_kwargs=...)``. Each network is a ``torch_utils.persistence`` object, pickled as a
call ``_reconstruct_persistent_obj(meta)`` whose ``meta`` holds the *source code* of its module,
the class name and the object's ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``,
``_init_kwargs``, plain attributes). Unpickled normally, that source is ``exec``-ed: a network
pickle is a program. Here it is read with a restricted unpickler instead; the stand-in for
``_reconstruct_persistent_obj`` just returns ``meta`` as data, and the source is never looked at.

What the unpickler admits (``module.name`` as written in the pickle; everything else, and any
persistent id, raises :class:`NvidiaPickleError` naming the refused global before anything runs):

- tensors: ``torch._utils._rebuild_tensor_v2``, ``_rebuild_tensor``, ``_rebuild_parameter``,
  ``_rebuild_parameter_with_state``, ``torch._tensor._rebuild_from_type_v2``,
  ``torch._utils._rebuild_from_type`` and the type tokens ``torch.Tensor`` /
  ``torch.nn.parameter.Parameter`` -- all replaced by local functions that build a plain CPU
  tensor, drop hooks and Python state, and accept only storages made below;
- storages: ``torch.storage._load_from_bytes``. PyTorch's own version calls
  ``torch.load(..., weights_only=False)`` on the embedded bytes, i.e. a second, unrestricted
  unpickler; ours calls ``torch.load(..., weights_only=True, map_location="cpu")`` and insists
  that the result is a storage;
- numpy: ``numpy{._core,.core}.multiarray._reconstruct`` / ``scalar``,
  ``numpy{._core,.core}.numeric._frombuffer``, ``numpy.dtype``, ``numpy.ndarray``
  (NVIDIA keeps gains such as ``weight_gain`` as numpy float64 attributes);
- ``collections.OrderedDict``; ``builtins`` (or ``__builtin__``) ``set``, ``frozenset``,
  ``bytearray``, ``list``, ``tuple``, ``dict``; ``_codecs.encode`` with the latin-1 codec only
  (how protocol 2 writes bytes);
- NVIDIA: ``torch_utils.persistence._reconstruct_persistent_obj`` -> the meta dict
  (:class:`PersistentMeta`), ``dnnlib.util.EasyDict`` / ``dnnlib.EasyDict`` -> a dict.
  ``dnnlib.tflib.network.Network`` (the old TensorFlow pickles) is refused with a pointer to
  NVIDIA's converter.

Python-level callables are created afresh for every read, so a pickle that BUILDs attributes
onto a global it fetched cannot change anything that outlives its own load.

Mapping onto rosinality names (``pipeline/models/stylegan2.py`` mirrors rosinality exactly):
``mapping.fc{i}`` -> ``style.{i+1}``; ``mapping.w_avg`` -> latent_avg; ``synthesis.b4.const``
[C,4,4] -> ``input.input`` [1,C,4,4]; ``b4.conv1`` -> ``conv1``, ``b4.torgb`` -> ``to_rgb1``;
for r = 8, 16, ... with k = log2(r) - 3: ``b{r}.conv0`` -> ``convs.{2k}``, ``b{r}.conv1`` ->
``convs.{2k+1}``, ``b{r}.torgb`` -> ``to_rgbs.{k}``; per layer ``weight`` [O,I,k,k] ->
``conv.weight`` [1,O,I,k,k], ``affine.{weight,bias}`` -> ``conv.modulation.{weight,bias}``,
``noise_strength`` [] -> ``noise.weight`` [1], ``bias`` -> ``activate.bias`` (convs) or ``bias``
[1,3,1,1] (toRGB), ``noise_const`` [r,r] -> ``noises.noise_{j}`` [1,1,r,r] in execution order.
rosinality's fixed buffers are added: ``convs.{2k}.conv.blur.kernel`` and
``to_rgbs.{k}.upsample.kernel`` both equal ``outer([1,3,3,1], [1,3,3,1]) / 64 * 4`` (make_kernel
normalises to sum 1; Blur with upsample_factor 2 and Upsample multiply by factor**2 = 4).
NVIDIA's ``resample_filter`` buffers (the same filter, normalised, gain applied at run time) are
checked and dropped.

**The toRGB scale question.** NVIDIA's ``ToRGBLayer`` computes ``styles = affine(w) *
weight_gain`` with ``weight_gain = 1/sqrt(in_channels)`` (1x1 kernel) and then a modulated conv
without demodulation on the *raw* weight: ``y_o = sum_i W[o,i] * (s_i / sqrt(I)) * x_i + b_o``.
rosinality's ``ToRGB`` runs ``ModulatedConv2d(demodulate=False)``, whose weight is ``scale *
W * s`` with ``scale = 1/sqrt(fan_in) = 1/sqrt(I * 1 * 1)``: ``y_o = sum_i (W[o,i] / sqrt(I)) *
s_i * x_i + b_o``. Both multiply the same three factors, so the images agree with the weights
copied unchanged; no rescaling of the toRGB weight or of the affine parameters is needed or
allowed. The style ``s = affine(w)`` is in both codebases the output of the affine layer
*before* the 1/sqrt(I) factor (NVIDIA's affine has ``bias_init=1``, weight gain 1/sqrt(w_dim),
exactly rosinality's ``EqualLinear(style_dim, in_channel, bias_init=1)``), so StyleSpace codes
read from our Generator equal NVIDIA's ``affine`` outputs. Had the factor been folded into the
affine (``affine * 1/sqrt(I)``), the images would still match but StyleSpace channels of toRGB
layers would be scaled by 1/sqrt(I); we do not do that. For the demodulated convs NVIDIA never
applies 1/sqrt(fan_in) and rosinality does, but demodulation divides it out again (only the
1e-8 epsilon sees it, a relative effect far below float32 resolution for real weights).

Other checked equivalences: mapping ``FullyConnectedLayer(lr_multiplier)`` = ``EqualLinear(
lr_mul)`` (weight gain lr/sqrt(in), bias gain lr; ``lr_mlp`` is read from the layers'
``bias_gain``), ``normalize_2nd_moment`` = ``PixelNorm`` (eps 1e-8 both), ``bias_act`` lrelu
(alpha 0.2, gain sqrt(2)) = ``fused_leaky_relu``; noise is added after the conv and before
bias + activation in both; the up-convs use the same unflipped transposed-conv weight and the
same [1,1] blur padding; skip upsampling pads (2,1) in both. ``conv_clamp`` (256 in every
ada ``train.py`` config, None in nets converted from TensorFlow) is reported in the config: it
clamps after the activation gain in convs and after the bias in toRGB, as our Generator does.

Refused, with the file named: not a pickle / truncated, no ``key`` entry (the keys found are
listed), anything but the 'skip' synthesis of config-f (``architecture`` 'orig'/'resnet'),
conditional generators (``c_dim > 0``), ``img_channels != 3``, a non-lrelu activation, another
resample filter, ``z_dim != w_dim``, and tensors left over that the mapping does not know.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import re
import warnings
from typing import Any

import numpy as np
import torch

from pipeline.errors import UserError

__all__ = ["NvidiaPickleError", "PersistentMeta", "read_nvidia_pickle"]

_ROSINALITY_BASE_CHANNELS = 16384  # rosinality: channels[r] = 16384 * channel_multiplier / r (r >= 64)
_BLUR = (1.0, 3.0, 3.0, 1.0)


class NvidiaPickleError(UserError, ValueError):
    """An NVIDIA network pickle that cannot be read safely or mapped; the message names the file."""


class PersistentMeta(dict):
    """What ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` received, kept as data.

    Keys as NVIDIA writes them: ``type``, ``version``, ``module_src`` (never executed),
    ``class_name``, ``state`` (the object's ``__dict__``).
    """


class _Refused(Exception):
    """Raised inside the unpickler; turned into NvidiaPickleError with the file name."""


# ---------------------------------------------------------------------------------------------
# The restricted unpickler.


def _load_storage_bytes(data: Any):
    """Safe replacement for ``torch.storage._load_from_bytes`` (legacy torch.save of one storage)."""
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused(f"torch.storage._load_from_bytes called with {type(data).__name__}, not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except Exception as exc:  # the safe loader refused or the bytes are damaged
        msg = str(exc)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
        why = f"it references {found.group(1)}" if found else (msg.strip().splitlines() or [type(exc).__name__])[0]
        raise _Refused(f"an embedded tensor storage could not be read safely (torch.load weights_only=True): {why}") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise _Refused(f"an embedded tensor storage decoded to {type(storage).__name__}, not a storage")
    return storage


def _make_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise _Refused(f"a tensor was rebuilt from {type(storage).__name__}, not from a storage")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = torch.empty((0,), dtype=storage.dtype)
            return t.set_(storage.untyped(), int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))
    except Exception as exc:
        raise _Refused(f"a tensor does not fit its storage: {exc}") from None


def _safe_globals() -> dict[tuple[str, str], Any]:
    """The allow-list, with fresh Python-level stand-ins for one load."""

    class TensorType:  # token for torch.Tensor in _rebuild_from_type_v2
        pass

    class ParameterType:  # token for torch.nn.parameter.Parameter
        pass

    class EasyDict(dict):
        pass

    def rebuild_tensor(storage, storage_offset, size, stride):
        return _make_tensor(storage, storage_offset, size, stride)

    def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
        return _make_tensor(storage, storage_offset, size, stride)  # hooks and grad flags dropped

    def rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
        if not isinstance(data, torch.Tensor):
            raise _Refused(f"a parameter was rebuilt from {type(data).__name__}, not a tensor")
        return data

    tensor_rebuilders = {rebuild_tensor, rebuild_tensor_v2, rebuild_parameter}

    def rebuild_from_type(func, new_type, args, state=None):
        if func not in tensor_rebuilders or new_type not in (TensorType, ParameterType) or not isinstance(args, tuple):
            raise _Refused("_rebuild_from_type called with something other than a tensor rebuild")
        return func(*args)

    def load_from_bytes(data):
        return _load_storage_bytes(data)

    def reconstruct_persistent_obj(meta):
        if not isinstance(meta, dict):
            raise _Refused(f"_reconstruct_persistent_obj called with {type(meta).__name__}, not a meta dict")
        return PersistentMeta(meta)

    def codecs_encode(obj, encoding="latin1"):
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
            raise _Refused(f"_codecs.encode called with encoding {encoding!r}")
        return obj.encode("latin1")

    def frombuffer(buf, dtype, shape, order):
        return _np_numeric._frombuffer(buf, dtype, shape, order)

    allowed: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
        ("torch._utils", "_rebuild_from_type"): rebuild_from_type,
        ("torch._tensor", "_rebuild_from_type_v2"): rebuild_from_type,
        ("torch", "Tensor"): TensorType,
        ("torch._tensor", "Tensor"): TensorType,
        ("torch.nn.parameter", "Parameter"): ParameterType,
        ("torch.storage", "_load_from_bytes"): load_from_bytes,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
        ("_codecs", "encode"): codecs_encode,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = _np_multiarray._reconstruct
        allowed[(mod, "scalar")] = _np_multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = frombuffer
    for name, obj in (("set", set), ("frozenset", frozenset), ("bytearray", bytearray),
                      ("list", list), ("tuple", tuple), ("dict", dict)):
        allowed[("builtins", name)] = obj
    return allowed


try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; refuses everything else before it can run."""

    def __init__(self, file: Any):
        super().__init__(file)
        self._allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol 2 spelling; the C unpickler maps it only in its own find_class
            module = "builtins"
        if module == "dnnlib.tflib.network" and name == "Network":
            raise _Refused(
                "this is a TensorFlow StyleGAN2 pickle (dnnlib.tflib.network.Network); convert it first "
                "with stylegan2-ada-pytorch's legacy.py (or rosinality's convert_weight.py)")
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"refused global {module}.{name}: not on the allow-list of tensor, numpy and "
                           "NVIDIA persistence names (nothing from the file was executed)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"refused persistent id {str(pid)[:80]!r}: NVIDIA network pickles do not use them")


def _unpickle(path: str) -> Any:
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise NvidiaPickleError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with f:
        head = f.read(4)
        if not head:
            raise NvidiaPickleError(f"{path}: empty file, not a network pickle")
        if head == b"PK\x03\x04":
            raise NvidiaPickleError(
                f"{path}: a torch.save zip archive, not an NVIDIA network pickle "
                "(rosinality .pt checkpoints are read by pipeline.models.stylegan2_formats)")
        f.seek(0)
        try:
            return _RestrictedUnpickler(f).load()
        except _Refused as exc:
            raise NvidiaPickleError(f"{path}: {exc}") from None
        except (pickle.UnpicklingError, EOFError) as exc:
            raise NvidiaPickleError(f"{path}: not a valid pickle or truncated ({exc or type(exc).__name__})") from None
        except (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError,
                RuntimeError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
            raise NvidiaPickleError(f"{path}: damaged pickle ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------------
# Walking the G_ema meta tree.


def _state(meta: PersistentMeta, where: str, path: str) -> dict:
    state = meta.get("state")
    if not isinstance(state, dict):
        raise NvidiaPickleError(f"{path}: persistent object {where} has no state dict")
    return state


def _flatten(meta: PersistentMeta, prefix: str, path: str, tensors: dict[str, torch.Tensor],
             metas: dict[str, PersistentMeta], seen: set[int] | None = None) -> None:
    """NVIDIA state_dict names -> tensors, and module path -> meta, for one persistent module tree."""
    where = prefix.rstrip(".") or "<root>"
    metas[prefix.rstrip(".")] = meta
    state = _state(meta, where, path)
    seen = set() if seen is None else seen
    if id(state) in seen or prefix.count(".") > 16:
        raise NvidiaPickleError(f"{path}: the module tree loops back on itself at {where}")
    seen.add(id(state))
    for group in ("_parameters", "_buffers"):
        entries = state.get(group) or {}
        if not isinstance(entries, dict):
            raise NvidiaPickleError(f"{path}: {where}.{group} is {type(entries).__name__}, not a dict")
        for name, value in entries.items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise NvidiaPickleError(f"{path}: {prefix}{name} is {type(value).__name__}, not a tensor")
            tensors[prefix + name] = value
    children = state.get("_modules") or {}
    if not isinstance(children, dict):
        raise NvidiaPickleError(f"{path}: {where}._modules is {type(children).__name__}, not a dict")
    for name, child in children.items():
        if child is None:
            continue
        if not isinstance(child, PersistentMeta):
            raise NvidiaPickleError(f"{path}: submodule {prefix}{name} is not an NVIDIA persistent object")
        _flatten(child, f"{prefix}{name}.", path, tensors, metas, seen)


def _init_kwargs(meta: PersistentMeta, names: tuple[str, ...]) -> dict:
    """The constructor arguments a persistent object recorded (positional ones by `names`)."""
    state = meta.get("state") or {}
    kwargs = dict(state.get("_init_kwargs") or {})
    for name, value in zip(names, state.get("_init_args") or ()):
        kwargs.setdefault(name, value)
    return kwargs


def _attr(meta: PersistentMeta | None, name: str, default: Any = None) -> Any:
    if meta is None:
        return default
    return (meta.get("state") or {}).get(name, default)


def _as_number(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _blur_kernel(gain: float) -> torch.Tensor:
    k = torch.tensor(_BLUR, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum() * gain


def read_nvidia_pickle(path: str | os.PathLike, key: str = "G_ema") -> tuple[dict, dict[str, torch.Tensor], torch.Tensor]:
    """Read one generator from an NVIDIA stylegan2-ada-pytorch pickle, safely, in rosinality naming.

    Args:
        path: the ``.pkl`` (a training snapshot or one of NVIDIA's published networks).
        key: which entry of the snapshot dict to read; ``"G_ema"`` (the averaged generator
            everyone samples from) or ``"G"``.

    Returns:
        ``(config, state_dict, latent_avg)``: ``config`` has ``resolution``, ``style_dim``,
        ``n_mlp``, ``channel_multiplier``, ``channel_max``, ``lr_mlp``, ``conv_clamp`` (the
        keyword arguments of ``pipeline.models.stylegan2.Generator``); ``state_dict`` holds
        float32 contiguous CPU tensors under rosinality's names, blur kernels and
        ``noises.noise_*`` included; ``latent_avg`` is ``mapping.w_avg`` [style_dim].

    Raises:
        NvidiaPickleError: the file is not a readable pickle, asks for a global outside the
            allow-list, lacks ``key``, or holds a generator other than the unconditional
            3-channel 'skip' StyleGAN2 of config-f.
    """
    path = os.fspath(path)
    data = _unpickle(path)

    if isinstance(data, PersistentMeta):
        raise NvidiaPickleError(
            f"{path}: holds a single {data.get('class_name', '?')} object, not a snapshot dict with {key!r}")
    if not isinstance(data, dict):
        raise NvidiaPickleError(f"{path}: holds a {type(data).__name__}, not a snapshot dict with {key!r}")
    if key not in data:
        raise NvidiaPickleError(f"{path}: no {key!r} entry; keys found: {sorted(map(str, data))}")
    root = data[key]
    if not isinstance(root, PersistentMeta):
        raise NvidiaPickleError(f"{path}: {key!r} is a {type(root).__name__}, not an NVIDIA network")
    if root.get("type") != "class" or root.get("class_name") != "Generator":
        raise NvidiaPickleError(f"{path}: {key!r} is a {root.get('class_name')!r}, not a stylegan2-ada Generator")

    tensors: dict[str, torch.Tensor] = {}
    metas: dict[str, PersistentMeta] = {}
    try:
        _flatten(root, "", path, tensors, metas)
        return _to_rosinality(path, key, root, tensors, metas)
    except NvidiaPickleError:
        raise
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, RuntimeError) as exc:
        raise NvidiaPickleError(f"{path}: {key}: malformed network state ({type(exc).__name__}: {exc})") from None


def _to_rosinality(path: str, key: str, root: PersistentMeta, tensors: dict[str, torch.Tensor],
                   metas: dict[str, PersistentMeta]) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor]:
    def fail(msg: str) -> NvidiaPickleError:
        return NvidiaPickleError(f"{path}: {key}: {msg}")

    g_kwargs = _init_kwargs(root, ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels",
                                   "mapping_kwargs", "synthesis_kwargs"))
    mapping_kwargs = dict(g_kwargs.get("mapping_kwargs") or {})
    synthesis_kwargs = dict(g_kwargs.get("synthesis_kwargs") or {})

    def g_value(name: str) -> Any:
        return _as_number(g_kwargs.get(name, _attr(root, name)))

    if "mapping" not in metas or "synthesis" not in metas:
        raise fail(f"not a stylegan2-ada Generator: submodules {sorted(k for k in metas if k and '.' not in k)}")

    # Unsupported variants, refused with the reason.
    c_dim = g_value("c_dim") or 0
    if c_dim or "mapping.embed.weight" in tensors:
        raise fail(f"conditional generator (c_dim={c_dim}); only unconditional generators are supported")
    img_channels = g_value("img_channels")
    if img_channels is not None and img_channels != 3:
        raise fail(f"img_channels={img_channels}; only RGB generators (3 channels) are supported")
    architectures = {synthesis_kwargs.get("architecture", "skip")}
    architectures |= {_attr(m, "architecture") for n, m in metas.items()
                      if re.fullmatch(r"synthesis\.b\d+", n) and _attr(m, "architecture") is not None}
    if architectures != {"skip"}:
        raise fail(f"synthesis architecture {sorted(architectures)}; only the skip generator of config-f is supported")
    resample = synthesis_kwargs.get("resample_filter", [1, 3, 3, 1])
    if resample is None or [float(v) for v in resample] != list(_BLUR):
        raise fail(f"resample_filter {resample}; only [1, 3, 3, 1] is supported")
    activations = {synthesis_kwargs.get("activation", "lrelu"), mapping_kwargs.get("activation", "lrelu")}
    activations |= {_attr(m, "activation") for n, m in metas.items()
                    if re.fullmatch(r"mapping\.fc\d+|synthesis\.b\d+\.conv[01]", n)}
    if activations != {"lrelu"}:
        raise fail(f"activations {sorted(map(str, activations))}; only lrelu is supported")

    # Sizes, from the tensors (the kwargs are cross-checked).
    n_mlp = 0
    while f"mapping.fc{n_mlp}.weight" in tensors:
        n_mlp += 1
    if n_mlp == 0:
        raise fail("no mapping.fc0.weight: not a stylegan2-ada Generator")
    if "mapping.w_avg" not in tensors:
        raise fail("no mapping.w_avg (trained with w_avg_beta=None?); latent_avg is required")
    style_dim = int(tensors["mapping.w_avg"].shape[0])
    for i in range(n_mlp):
        shape = tuple(tensors[f"mapping.fc{i}.weight"].shape)
        if shape != (style_dim, style_dim):
            raise fail(f"mapping.fc{i}.weight has shape {list(shape)}; rosinality's mapping needs "
                       f"z_dim = layer_features = w_dim = {style_dim}")
    for name, value in (("z_dim", g_value("z_dim")), ("w_dim", g_value("w_dim"))):
        if value is not None and value != style_dim:
            raise fail(f"{name}={value} but the mapping is {style_dim} wide; z_dim must equal w_dim")
    if mapping_kwargs.get("num_layers", n_mlp) != n_mlp:
        raise fail(f"mapping_kwargs.num_layers={mapping_kwargs['num_layers']} but {n_mlp} mapping layers found")

    gains = {_as_number(_attr(metas[f"mapping.fc{i}"], "bias_gain")) for i in range(n_mlp)} - {None}
    if len(gains) > 1:
        raise fail(f"mapping layers disagree on lr_multiplier: {sorted(gains)}")
    lr_mlp = float(gains.pop()) if gains else float(mapping_kwargs.get("lr_multiplier", 0.01))

    if "synthesis.b4.const" not in tensors:
        raise fail("no synthesis.b4.const: not a stylegan2-ada synthesis network")
    resolutions = []
    r = 4
    while f"synthesis.b{r}.conv1.weight" in tensors:
        resolutions.append(r)
        r *= 2
    resolution = resolutions[-1]
    for name, value in (("img_resolution", g_value("img_resolution")),
                        ("synthesis.img_resolution", _attr(metas["synthesis"], "img_resolution"))):
        if value is not None and value != resolution:
            raise fail(f"{name}={value} but synthesis blocks run up to b{resolution}")
    channels = {r: int(tensors[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in resolutions}
    channel_base = int(_as_number(synthesis_kwargs.get("channel_base", 32768)))
    channel_max = int(_as_number(synthesis_kwargs.get("channel_max", 512)))
    expected = {r: min(channel_base // r, channel_max) for r in resolutions}
    if channels != expected:
        raise fail(f"channels per resolution {channels} do not follow channel_base={channel_base}, "
                   f"channel_max={channel_max} ({expected})")
    # Our Generator (like rosinality) has 512 channels up to 32 px and 16384 * channel_multiplier / r
    # above, capped at channel_max; NVIDIA has min(channel_base // r, channel_max). They agree when
    # channel_base = 16384 * channel_multiplier (every ada config: 16384 or 32768) and channel_max <= 512.
    channel_multiplier = max(1, round(channel_base / _ROSINALITY_BASE_CHANNELS))
    table = {r: min(channel_max, 512 if r <= 32 else _ROSINALITY_BASE_CHANNELS * channel_multiplier // r)
             for r in resolutions}
    if table != channels:
        raise fail(f"channel widths {channels} (channel_base={channel_base}, channel_max={channel_max}) "
                   "cannot be expressed as rosinality's table (512 up to 32 px, 16384 * channel_multiplier / r "
                   "above, capped at channel_max)")

    layer_clamps = {_as_number(_attr(m, "conv_clamp")) for n, m in metas.items()
                    if re.fullmatch(r"synthesis\.b\d+\.(conv[01]|torgb)", n) and "conv_clamp" in (m.get("state") or {})}
    if "conv_clamp" in synthesis_kwargs:
        layer_clamps.add(_as_number(synthesis_kwargs["conv_clamp"]))
    if len(layer_clamps) > 1:
        raise fail(f"layers disagree on conv_clamp: {sorted(map(str, layer_clamps))}")
    conv_clamp = layer_clamps.pop() if layer_clamps else None
    if conv_clamp is not None:
        conv_clamp = float(conv_clamp)

    # The tensors, renamed.
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise fail(f"missing tensor {name}")
        used.add(name)
        return tensors[name].detach().to(dtype=torch.float32).contiguous().clone()

    def expect_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if tuple(t.shape) != shape:
            raise fail(f"{name} has shape {list(t.shape)}, expected {list(shape)}")
        return t

    out: dict[str, torch.Tensor] = {}
    for i in range(n_mlp):
        out[f"style.{i + 1}.weight"] = take(f"mapping.fc{i}.weight")
        out[f"style.{i + 1}.bias"] = expect_shape(f"mapping.fc{i}.bias", take(f"mapping.fc{i}.bias"), (style_dim,))
    latent_avg = take("mapping.w_avg")

    const = expect_shape("synthesis.b4.const", take("synthesis.b4.const"), (channels[4], 4, 4))
    out["input.input"] = const.unsqueeze(0)

    blur = _blur_kernel(4.0)
    filt = _blur_kernel(1.0)
    for name in [n for n in tensors if n.endswith("resample_filter")]:
        if not re.fullmatch(r"synthesis\.b\d+(\.conv[01])?\.resample_filter", name):
            continue
        f = tensors[name].detach().float()
        if tuple(f.shape) != (4, 4) or not torch.allclose(f, filt, atol=1e-6):
            raise fail(f"{name} is not the normalised [1, 3, 3, 1] filter")
        used.add(name)

    convs = [("synthesis.b4.conv1", "conv1", 4, channels[4], channels[4])]
    torgbs = [("synthesis.b4.torgb", "to_rgb1", channels[4])]
    for k, r in enumerate(resolutions[1:]):
        convs.append((f"synthesis.b{r}.conv0", f"convs.{2 * k}", r, channels[r // 2], channels[r]))
        convs.append((f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}", r, channels[r], channels[r]))
        torgbs.append((f"synthesis.b{r}.torgb", f"to_rgbs.{k}", channels[r]))
        out[f"convs.{2 * k}.conv.blur.kernel"] = blur.clone()
        out[f"to_rgbs.{k}.upsample.kernel"] = blur.clone()

    for j, (src, dst, r, cin, cout) in enumerate(convs):
        out[f"{dst}.conv.weight"] = expect_shape(f"{src}.weight", take(f"{src}.weight"), (cout, cin, 3, 3)).unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = expect_shape(
            f"{src}.affine.weight", take(f"{src}.affine.weight"), (cin, style_dim))
        out[f"{dst}.conv.modulation.bias"] = expect_shape(f"{src}.affine.bias", take(f"{src}.affine.bias"), (cin,))
        out[f"{dst}.activate.bias"] = expect_shape(f"{src}.bias", take(f"{src}.bias"), (cout,))
        if f"{src}.noise_strength" in tensors:  # use_noise=True (every published config)
            out[f"{dst}.noise.weight"] = expect_shape(
                f"{src}.noise_strength", take(f"{src}.noise_strength"), ()).reshape(1)
            noise = expect_shape(f"{src}.noise_const", take(f"{src}.noise_const"), (r, r))
            out[f"noises.noise_{j}"] = noise.reshape(1, 1, r, r)
        else:  # use_noise=False: a zero noise weight gives the same images
            out[f"{dst}.noise.weight"] = torch.zeros(1)
            out[f"noises.noise_{j}"] = torch.zeros(1, 1, r, r)

    for src, dst, cin in torgbs:
        out[f"{dst}.conv.weight"] = expect_shape(f"{src}.weight", take(f"{src}.weight"), (3, cin, 1, 1)).unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = expect_shape(
            f"{src}.affine.weight", take(f"{src}.affine.weight"), (cin, style_dim))
        out[f"{dst}.conv.modulation.bias"] = expect_shape(f"{src}.affine.bias", take(f"{src}.affine.bias"), (cin,))
        out[f"{dst}.bias"] = expect_shape(f"{src}.bias", take(f"{src}.bias"), (3,)).reshape(1, 3, 1, 1)

    left = sorted(set(tensors) - used)
    if left:
        raise fail(f"tensors the rosinality layout has no place for: {left[:8]}{' ...' if len(left) > 8 else ''}")

    config = {
        "resolution": resolution,
        "style_dim": style_dim,
        "n_mlp": n_mlp,
        "channel_multiplier": channel_multiplier,
        "channel_max": channel_max,
        "lr_mlp": lr_mlp,
        "conv_clamp": conv_clamp,
    }
    return config, out, latent_avg
