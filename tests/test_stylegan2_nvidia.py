"""The NVIDIA stylegan2-ada-pytorch pickle reader, on pickles crafted here in NVIDIA's format.

No NVIDIA code is needed: throwaway modules named `torch_utils.persistence` and `dnnlib.util` exist in
`sys.modules` only while a test pickle is written (so that pickle records the same globals NVIDIA's files
do), and are gone before it is read. Each network is pickled as NVIDIA's persistence does it: a call
`_reconstruct_persistent_obj(meta)` with meta = {type, version, module_src, class_name, state}.
"""
from __future__ import annotations

import collections
import contextlib
import fractions
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.models.stylegan2_nvidia import NvidiaPickleError, read_nvidia_pickle

FAKE_MODULES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
FILTER = torch.tensor([1.0, 3.0, 3.0, 1.0])
FILTER = FILTER[None, :] * FILTER[:, None] / 64  # NVIDIA's setup_filter([1,3,3,1]): normalised to sum 1


# ---------------------------------------------------------------------------------------------
# Writing pickles in NVIDIA's format without NVIDIA's code.


@contextlib.contextmanager
def nvidia_names():
    """Throwaway `torch_utils.persistence._reconstruct_persistent_obj` and `dnnlib.util.EasyDict`."""
    saved = {name: sys.modules.get(name) for name in FAKE_MODULES}

    def _reconstruct_persistent_obj(meta):  # what the reader must never call
        raise AssertionError("the reader called the pickled reconstruct function")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = EasyDict.__name__ = "EasyDict"

    mods = {name: types.ModuleType(name) for name in FAKE_MODULES}
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["torch_utils"].persistence = mods["torch_utils.persistence"]
    mods["dnnlib.util"].EasyDict = EasyDict
    mods["dnnlib"].util = mods["dnnlib.util"]
    mods["dnnlib"].EasyDict = EasyDict
    sys.modules.update(mods)
    try:
        yield types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


class Persistent:
    """Pickles exactly as an NVIDIA `@persistent_class` instance does."""

    def __init__(self, ns, class_name: str, state: dict, module_src: str = "raise SystemExit('never run')"):
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)
        self.reconstruct = ns.reconstruct

    def __reduce__(self):
        return (self.reconstruct, (self.meta,))


def module_state(ns, params=(), buffers=(), modules=(), init_kwargs=None, **attrs) -> dict:
    """An nn.Module __dict__ as NVIDIA pickles it (Parameters, hook dicts, numpy gains ...)."""
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(
            (k, torch.nn.Parameter(v, requires_grad=False)) for k, v in dict(params).items()),
        "_buffers": collections.OrderedDict(buffers),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_forward_pre_hooks": collections.OrderedDict(),
        "_state_dict_hooks": collections.OrderedDict(),
        "_load_state_dict_pre_hooks": collections.OrderedDict(),
        "_modules": collections.OrderedDict(modules),
        "_init_args": (),
        "_init_kwargs": ns.EasyDict(init_kwargs or {}),
    }
    state.update(attrs)
    return state


def nvidia_generator(ns, *, res=16, w_dim=32, n_mlp=2, channel_base=16384, channel_max=16, conv_clamp=256,
                     architecture=None, c_dim=0, seed=0, module_src="raise SystemExit('never run')"):
    """A random stylegan2-ada Generator in NVIDIA's pickled form -> (Persistent, {nvidia name: tensor})."""
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def rnd(name, *shape, scale=1.0, offset=0.0):
        t = torch.randn(shape, generator=g) * scale + offset
        tensors[name] = t
        return t

    def fc(name, fin, fout, lr=1.0, bias_init=0.0, activation="linear"):
        return Persistent(ns, "FullyConnectedLayer", module_state(
            ns, params={"weight": rnd(f"{name}.weight", fout, fin, scale=1 / lr),
                        "bias": rnd(f"{name}.bias", fout, scale=0.3, offset=bias_init)},
            init_kwargs=dict(in_features=fin, out_features=fout, activation=activation, lr_multiplier=lr,
                             bias_init=bias_init),
            activation=activation, weight_gain=np.float64(lr / np.sqrt(fin)), bias_gain=lr), module_src)

    widths = {r: min(channel_base // r, channel_max) for r in [2**i for i in range(2, int(math.log2(res)) + 1)]}

    def layer(name, cin, cout, r, up):
        return Persistent(ns, "SynthesisLayer", module_state(
            ns, params={"weight": rnd(f"{name}.weight", cout, cin, 3, 3),
                        "noise_strength": rnd(f"{name}.noise_strength", scale=0.5),
                        "bias": rnd(f"{name}.bias", cout, scale=0.2)},
            buffers={"resample_filter": FILTER.clone(), "noise_const": rnd(f"{name}.noise_const", r, r)},
            modules={"affine": fc(f"{name}.affine", w_dim, cin, bias_init=1.0)},
            init_kwargs=dict(in_channels=cin, out_channels=cout, w_dim=w_dim, resolution=r, up=up,
                             conv_clamp=conv_clamp),
            resolution=r, up=up, use_noise=True, activation="lrelu", conv_clamp=conv_clamp, padding=1,
            act_gain=np.float64(np.sqrt(2))), module_src)

    def torgb(name, cin):
        return Persistent(ns, "ToRGBLayer", module_state(
            ns, params={"weight": rnd(f"{name}.weight", 3, cin, 1, 1), "bias": rnd(f"{name}.bias", 3, scale=0.2)},
            modules={"affine": fc(f"{name}.affine", w_dim, cin, bias_init=1.0)},
            init_kwargs=dict(in_channels=cin, out_channels=3, w_dim=w_dim, conv_clamp=conv_clamp),
            conv_clamp=conv_clamp, weight_gain=np.float64(1 / np.sqrt(cin))), module_src)

    blocks = {}
    for r, cout in widths.items():
        name = f"synthesis.b{r}"
        cin = widths.get(r // 2, 0)
        params, modules = {}, {}
        if r == 4:
            params["const"] = rnd(f"{name}.const", cout, 4, 4)
        else:
            modules["conv0"] = layer(f"{name}.conv0", cin, cout, r, 2)
        modules["conv1"] = layer(f"{name}.conv1", cout, cout, r, 1)
        modules["torgb"] = torgb(f"{name}.torgb", cout)
        blocks[f"b{r}"] = Persistent(ns, "SynthesisBlock", module_state(
            ns, params=params, buffers={"resample_filter": FILTER.clone()}, modules=modules,
            init_kwargs=dict(in_channels=cin, out_channels=cout, w_dim=w_dim, resolution=r, img_channels=3,
                             is_last=r == res, use_fp16=False, conv_clamp=conv_clamp),
            in_channels=cin, w_dim=w_dim, resolution=r, img_channels=3, is_last=r == res,
            architecture=architecture or "skip", use_fp16=False, channels_last=False,
            num_conv=1 if r == 4 else 2, num_torgb=1), module_src)
    num_ws = 2 * int(math.log2(res)) - 2
    synthesis = Persistent(ns, "SynthesisNetwork", module_state(
        ns, modules=blocks, w_dim=w_dim, img_resolution=res, img_resolution_log2=int(math.log2(res)),
        img_channels=3, block_resolutions=list(widths), num_ws=num_ws,
        layer_widths=np.array(list(widths.values()), dtype=np.int64)), module_src)

    fcs = {f"fc{i}": fc(f"mapping.fc{i}", w_dim, w_dim, lr=0.01, activation="lrelu") for i in range(n_mlp)}
    if c_dim:
        fcs = {"embed": fc("mapping.embed", c_dim, w_dim), **fcs}
    mapping = Persistent(ns, "MappingNetwork", module_state(
        ns, modules=fcs, buffers={"w_avg": rnd("mapping.w_avg", w_dim)},
        z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=n_mlp, w_avg_beta=0.995), module_src)

    synthesis_kwargs = ns.EasyDict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=4,
                                   conv_clamp=conv_clamp)
    if architecture is not None:
        synthesis_kwargs.architecture = architecture
    init = dict(z_dim=w_dim, w_dim=w_dim, mapping_kwargs=ns.EasyDict(num_layers=n_mlp),
                synthesis_kwargs=synthesis_kwargs, c_dim=c_dim, img_resolution=res, img_channels=3)
    G = Persistent(ns, "Generator", module_state(
        ns, modules={"synthesis": synthesis, "mapping": mapping}, init_kwargs=init,
        z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=res, img_channels=3, num_ws=num_ws), module_src)
    return G, tensors


def write_snapshot(path: Path, protocol=pickle.DEFAULT_PROTOCOL, keys=("G", "D", "G_ema", "augment_pipe", "training_set_kwargs"),
                   **gen_kwargs) -> dict[str, torch.Tensor]:
    """An NVIDIA training snapshot at `path`; returns G_ema's tensors in NVIDIA naming."""
    with nvidia_names() as ns:
        G_ema, tensors = nvidia_generator(ns, **gen_kwargs)
        G, _ = nvidia_generator(ns, **{**gen_kwargs, "seed": gen_kwargs.get("seed", 0) + 1})
        snapshot = {"G": G, "D": None, "G_ema": G_ema, "augment_pipe": None,
                    "training_set_kwargs": ns.EasyDict(path="data.zip", resolution=gen_kwargs.get("res", 16))}
        with open(path, "wb") as f:
            pickle.dump({k: snapshot[k] for k in keys}, f, protocol=protocol)
    assert not any(name in sys.modules for name in FAKE_MODULES)
    return tensors


@pytest.fixture
def snapshot(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path / "network-snapshot-000000.pkl"
    return path, write_snapshot(path)


# ---------------------------------------------------------------------------------------------
# Reading and renaming.


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_reads_config_and_rosinality_tensors(tmp_path, protocol):
    path = tmp_path / "g.pkl"
    nv = write_snapshot(path, protocol=protocol)
    config, sd, latent_avg = read_nvidia_pickle(path)

    assert config == {"resolution": 16, "style_dim": 32, "n_mlp": 2, "channel_multiplier": 1, "channel_max": 16,
                      "lr_mlp": 0.01, "conv_clamp": 256.0}
    assert not any(name in sys.modules for name in FAKE_MODULES)  # nothing of NVIDIA's was imported
    torch.testing.assert_close(latent_avg, nv["mapping.w_avg"], rtol=0, atol=0)

    expected = {"input.input", "style.1.weight", "style.1.bias", "style.2.weight", "style.2.bias"}
    for dst in ("conv1", "convs.0", "convs.1", "convs.2", "convs.3"):
        expected |= {f"{dst}.conv.weight", f"{dst}.conv.modulation.weight", f"{dst}.conv.modulation.bias",
                     f"{dst}.noise.weight", f"{dst}.activate.bias"}
    for dst in ("to_rgb1", "to_rgbs.0", "to_rgbs.1"):
        expected |= {f"{dst}.conv.weight", f"{dst}.conv.modulation.weight", f"{dst}.conv.modulation.bias", f"{dst}.bias"}
    expected |= {"convs.0.conv.blur.kernel", "convs.2.conv.blur.kernel", "to_rgbs.0.upsample.kernel",
                 "to_rgbs.1.upsample.kernel"} | {f"noises.noise_{j}" for j in range(5)}
    assert set(sd) == expected
    assert all(t.dtype == torch.float32 and t.is_contiguous() and not t.requires_grad for t in sd.values())

    def same(a, b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    same(sd["style.1.weight"], nv["mapping.fc0.weight"])
    same(sd["style.2.bias"], nv["mapping.fc1.bias"])
    same(sd["input.input"], nv["synthesis.b4.const"][None])
    assert sd["input.input"].shape == (1, 16, 4, 4)
    # Layer order: conv1 = b4.conv1; convs[2k] / [2k+1] = b{2**(k+3)}.conv0 / conv1; noise j in that order.
    order = ["synthesis.b4.conv1", "synthesis.b8.conv0", "synthesis.b8.conv1", "synthesis.b16.conv0", "synthesis.b16.conv1"]
    for j, (src, dst) in enumerate(zip(order, ["conv1", "convs.0", "convs.1", "convs.2", "convs.3"])):
        same(sd[f"{dst}.conv.weight"], nv[f"{src}.weight"][None])
        same(sd[f"{dst}.conv.modulation.weight"], nv[f"{src}.affine.weight"])
        same(sd[f"{dst}.conv.modulation.bias"], nv[f"{src}.affine.bias"])
        same(sd[f"{dst}.activate.bias"], nv[f"{src}.bias"])
        same(sd[f"{dst}.noise.weight"], nv[f"{src}.noise_strength"].reshape(1))
        r = nv[f"{src}.noise_const"].shape[0]
        same(sd[f"noises.noise_{j}"], nv[f"{src}.noise_const"].reshape(1, 1, r, r))
    assert [sd[f"noises.noise_{j}"].shape[-1] for j in range(5)] == [4, 8, 8, 16, 16]
    # toRGB: weights copied unscaled (see the module docstring), bias [3] -> [1, 3, 1, 1].
    for src, dst in (("synthesis.b4.torgb", "to_rgb1"), ("synthesis.b8.torgb", "to_rgbs.0"),
                     ("synthesis.b16.torgb", "to_rgbs.1")):
        same(sd[f"{dst}.conv.weight"], nv[f"{src}.weight"][None])
        same(sd[f"{dst}.conv.modulation.weight"], nv[f"{src}.affine.weight"])
        same(sd[f"{dst}.conv.modulation.bias"], nv[f"{src}.affine.bias"])
        assert sd[f"{dst}.bias"].shape == (1, 3, 1, 1)
        same(sd[f"{dst}.bias"].flatten(), nv[f"{src}.bias"])
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    for name in ("convs.0.conv.blur.kernel", "to_rgbs.1.upsample.kernel"):
        torch.testing.assert_close(sd[name], torch.outer(k, k) / 16)  # make_kernel (sum 1) * factor**2


def test_reads_G_instead_of_G_ema(snapshot):
    path, nv = snapshot
    _, sd_ema, _ = read_nvidia_pickle(path)
    _, sd_g, _ = read_nvidia_pickle(path, key="G")
    assert set(sd_g) == set(sd_ema)
    assert not torch.equal(sd_g["style.1.weight"], sd_ema["style.1.weight"])


def test_module_source_is_never_executed(tmp_path):
    marker = tmp_path / "source-ran"
    path = tmp_path / "g.pkl"
    write_snapshot(path, module_src=f"open({str(marker)!r}, 'w').write('ran')\n")
    config, _, _ = read_nvidia_pickle(path)
    assert config["resolution"] == 16
    assert not marker.exists()


def test_conv_clamp_none_and_channel_multiplier_2(tmp_path):
    path = tmp_path / "g.pkl"
    write_snapshot(path, res=64, channel_base=32768, channel_max=8, conv_clamp=None, w_dim=16)
    config, sd, _ = read_nvidia_pickle(path)
    assert config["conv_clamp"] is None and config["channel_multiplier"] == 2 and config["resolution"] == 64
    assert sd["noises.noise_8"].shape == (1, 1, 64, 64) and "to_rgbs.3.upsample.kernel" in sd


# ---------------------------------------------------------------------------------------------
# Code in the file never runs.


class _Call:
    """Pickles as a call of `func(*args)`: how a malicious pickle runs code."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class Arbitrary:
    pass


def _payloads(marker: Path):
    py = f"open({str(marker)!r}, 'w').write('ran')"
    return {
        "os.system": _Call(os.system, f"touch {marker}"),
        "builtins.exec": _Call(exec, py),
        "builtins.eval": _Call(eval, py),
        "subprocess.Popen": _Call(subprocess.Popen, ["touch", str(marker)]),
        "builtins.getattr": _Call(getattr, marker, "touch"),
        "arbitrary class": Arbitrary(),
        "collections.Counter": collections.Counter(a=1),
    }


@pytest.mark.parametrize("kind", list(_payloads(Path("x"))))
@pytest.mark.parametrize("where", ["top", "nested"])
def test_malicious_globals_are_refused_and_never_run(tmp_path, kind, where):
    marker = tmp_path / "payload-ran"
    payload = _payloads(marker)[kind]
    path = tmp_path / "evil.pkl"
    with nvidia_names() as ns:
        G, _ = nvidia_generator(ns)
        if where == "nested":  # deep inside G_ema's state, after many tensors
            G.meta["state"]["_init_kwargs"]["synthesis_kwargs"]["extra"] = payload
            obj = {"G_ema": G}
        else:
            obj = {"training_set_kwargs": payload, "G_ema": G}
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    with pytest.raises(NvidiaPickleError, match="refused global") as err:
        read_nvidia_pickle(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_refused_message_names_the_global(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"cos\nsystem\n(Vtouch /nonexistent/should-not-run\ntR.")  # protocol 0, by hand
    with pytest.raises(NvidiaPickleError, match=r"refused global os\.system"):
        read_nvidia_pickle(path)
    path.write_bytes(b"cbuiltins\nexec\n(Vraise SystemExit\ntR.")
    with pytest.raises(NvidiaPickleError, match=r"refused global builtins\.exec"):
        read_nvidia_pickle(path)


def _legacy_torch_stream(obj) -> bytes:
    """Bytes in the legacy torch.save layout that torch.storage._load_from_bytes reads, holding `obj`."""
    b = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, b, protocol=2)  # torch's legacy magic number
    pickle.dump(1001, b, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, b, protocol=2)
    pickle.dump(obj, b, protocol=2)
    pickle.dump([], b, protocol=2)  # the storage keys (none)
    return b.getvalue()


def test_storage_bytes_are_loaded_weights_only(tmp_path):
    # The stream is valid: an unrestricted torch.load would return (or run) what it holds ...
    benign = _legacy_torch_stream(fractions.Fraction(1, 3))
    assert torch.load(io.BytesIO(benign), weights_only=False) == fractions.Fraction(1, 3)
    # ... but inside an NVIDIA pickle it is read with weights_only=True and refused.
    marker = tmp_path / "payload-ran"
    for inner in (fractions.Fraction(1, 3), _Call(exec, f"open({str(marker)!r}, 'w').write('ran')")):
        path = tmp_path / "evil.pkl"
        with open(path, "wb") as f:
            pickle.dump({"G_ema": _Call(torch.storage._load_from_bytes, _legacy_torch_stream(inner))}, f)
        with pytest.raises(NvidiaPickleError, match="storage could not be read safely"):
            read_nvidia_pickle(path)
        assert not marker.exists()


def test_tensorflow_pickle_is_refused_with_a_pointer(tmp_path):
    path = tmp_path / "tf.pkl"
    path.write_bytes(b"cdnnlib.tflib.network\nNetwork\n)\x81.")
    with pytest.raises(NvidiaPickleError, match="TensorFlow"):
        read_nvidia_pickle(path)


# ---------------------------------------------------------------------------------------------
# Broken and unsupported files.


def test_truncated_file(snapshot, tmp_path):
    path, _ = snapshot
    data = path.read_bytes()
    for cut in (len(data) // 2, 5):
        bad = tmp_path / f"cut{cut}.pkl"
        bad.write_bytes(data[:cut])
        with pytest.raises(NvidiaPickleError, match="truncated") as err:
            read_nvidia_pickle(bad)
        assert str(bad) in str(err.value)


def test_not_a_pickle(tmp_path):
    text = tmp_path / "notes.pkl"
    text.write_text("hello, not a pickle\n")
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    zipped = tmp_path / "model.pt"
    torch.save({"g_ema": {}}, zipped)
    for path, pattern in ((text, "not a valid pickle|damaged"), (empty, "empty"), (zipped, "zip"),
                          (tmp_path / "missing.pkl", "cannot open")):
        with pytest.raises(NvidiaPickleError, match=pattern) as err:
            read_nvidia_pickle(path)
        assert str(path) in str(err.value)


def test_missing_key_lists_the_keys_found(tmp_path):
    path = tmp_path / "g.pkl"
    write_snapshot(path, keys=("G", "D", "training_set_kwargs"))
    with pytest.raises(NvidiaPickleError, match=r"no 'G_ema' entry; keys found: \['D', 'G', 'training_set_kwargs'\]") as err:
        read_nvidia_pickle(path)
    assert str(path) in str(err.value)
    with pytest.raises(NvidiaPickleError, match="'D' is a NoneType"):
        read_nvidia_pickle(tmp_path / "g.pkl", key="D")


@pytest.mark.parametrize("architecture", ["resnet", "orig"])
def test_non_skip_architecture_is_refused(tmp_path, architecture):
    path = tmp_path / "g.pkl"
    write_snapshot(path, architecture=architecture)
    with pytest.raises(NvidiaPickleError, match="only the skip generator of config-f"):
        read_nvidia_pickle(path)


def test_block_architecture_is_checked_without_kwargs(tmp_path):
    path = tmp_path / "g.pkl"
    with nvidia_names() as ns:
        G, _ = nvidia_generator(ns)
        G.meta["state"]["_modules"]["synthesis"].meta["state"]["_modules"]["b8"].meta["state"]["architecture"] = "resnet"
        with open(path, "wb") as f:
            pickle.dump({"G_ema": G}, f)
    with pytest.raises(NvidiaPickleError, match=r"\['resnet', 'skip'\]"):
        read_nvidia_pickle(path)


def test_conditional_generator_is_refused(tmp_path):
    path = tmp_path / "g.pkl"
    write_snapshot(path, c_dim=10)
    with pytest.raises(NvidiaPickleError, match="conditional"):
        read_nvidia_pickle(path)


def test_widths_our_generator_cannot_express_are_refused(tmp_path):
    path = tmp_path / "g.pkl"
    write_snapshot(path, res=32, channel_base=256, channel_max=16)  # 16, 16, 16, 8 wide
    with pytest.raises(NvidiaPickleError, match="channel widths"):
        read_nvidia_pickle(path)


# ---------------------------------------------------------------------------------------------
# Images: the converted weights in our Generator against NVIDIA's math (written out below from
# stylegan2-ada-pytorch's networks.py, in NVIDIA's parameter naming).


def _fir(x, gain, pad0, pad1, up=1):
    n, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros(n, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    k = (FILTER * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def _nvidia_reference(nv, ws, z, conv_clamp, n_mlp, res):
    """NVIDIA's Generator (noise_mode='const', fp32) as plain tensor math on NVIDIA-named weights."""
    sqrt2 = math.sqrt(2)

    def linear(x, name, lr=1.0):
        w, b = nv[f"{name}.weight"], nv[f"{name}.bias"]
        return x @ (w * (lr / math.sqrt(w.shape[1]))).t() + b * lr

    def clamp(x):
        return x if conv_clamp is None else x.clamp(-conv_clamp, conv_clamp)

    def modconv(x, weight, styles, demodulate, up=1):
        w = weight[None] * styles[:, None, :, None, None]
        if demodulate:
            w = w * (w.square().sum([2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
        outs = []
        for i in range(x.shape[0]):
            if up == 1:
                outs.append(F.conv2d(x[i:i + 1], w[i], padding=weight.shape[-1] // 2))
            else:  # transposed conv with the unflipped weight, then the [1,3,3,1] filter, pad 1/1, gain 4
                outs.append(_fir(F.conv_transpose2d(x[i:i + 1], w[i].transpose(0, 1), stride=2), 4, 1, 1))
        return torch.cat(outs)

    def synthesis_layer(x, name, w, up=1):
        styles = linear(w, f"{name}.affine")
        x = modconv(x, nv[f"{name}.weight"], styles, True, up) + nv[f"{name}.noise_const"] * nv[f"{name}.noise_strength"]
        return clamp(F.leaky_relu(x + nv[f"{name}.bias"][None, :, None, None], 0.2) * sqrt2)

    def torgb(x, name, w):
        styles = linear(w, f"{name}.affine") * (1 / math.sqrt(nv[f"{name}.weight"].shape[1]))  # weight_gain
        return clamp(modconv(x, nv[f"{name}.weight"], styles, False) + nv[f"{name}.bias"][None, :, None, None])

    x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()  # normalize_2nd_moment
    for i in range(n_mlp):
        x = F.leaky_relu(linear(x, f"mapping.fc{i}", lr=0.01), 0.2) * sqrt2
    mapped = x

    n = ws.shape[0]
    x = nv["synthesis.b4.const"][None].repeat(n, 1, 1, 1)
    x = synthesis_layer(x, "synthesis.b4.conv1", ws[:, 0])
    img = torgb(x, "synthesis.b4.torgb", ws[:, 1])
    r, i = 8, 1
    while r <= res:
        x = synthesis_layer(x, f"synthesis.b{r}.conv0", ws[:, i], up=2)
        x = synthesis_layer(x, f"synthesis.b{r}.conv1", ws[:, i + 1])
        img = _fir(img, 4, 2, 1, up=2) + torgb(x, f"synthesis.b{r}.torgb", ws[:, i + 2])
        r, i = r * 2, i + 2
    return mapped, img


@pytest.mark.parametrize("conv_clamp", [None, 1.5])
def test_generator_reproduces_nvidia_images(tmp_path, conv_clamp):
    stylegan2 = pytest.importorskip("pipeline.models.stylegan2", reason="pipeline.models.stylegan2 not available")
    path = tmp_path / "g.pkl"
    nv = write_snapshot(path, res=16, w_dim=32, n_mlp=2, channel_max=16, conv_clamp=conv_clamp)
    config, sd, latent_avg = read_nvidia_pickle(path)
    G = stylegan2.Generator(**config).eval()
    G.load_state_dict(sd, strict=True)

    gen = torch.Generator().manual_seed(3)
    z = torch.randn(3, 32, generator=gen)
    ws = torch.randn(3, 6, 32, generator=gen) * 0.7 + latent_avg  # a W+ with distinct rows
    with torch.no_grad():
        mapped, img = _nvidia_reference(nv, ws, z, conv_clamp, n_mlp=2, res=16)
        ours_w = G.map(z)
        ours = G.synthesis(ws, randomize_noise=False)
    assert ours.shape == img.shape == (3, 3, 16, 16)
    torch.testing.assert_close(ours_w, mapped, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, img, rtol=0, atol=1e-4)
    if conv_clamp is not None:  # the clamp is active here, so this case tests it
        with torch.no_grad():
            _, unclamped = _nvidia_reference(nv, ws, z, None, n_mlp=2, res=16)
        assert (unclamped - img).abs().max() > 0.1


def test_generator_from_rosinality_state_runs(snapshot):
    formats = pytest.importorskip("pipeline.models.stylegan2_formats",
                                  reason="pipeline.models.stylegan2_formats not available")
    if not hasattr(formats, "generator_from_rosinality_state"):
        pytest.skip("generator_from_rosinality_state not available")
    path, nv = snapshot
    config, sd, latent_avg = read_nvidia_pickle(path)
    G = formats.generator_from_rosinality_state(sd, latent_avg, **config).eval()
    assert {k: G.config[k] for k in config} == config
    torch.testing.assert_close(G.latent_avg, nv["mapping.w_avg"], rtol=0, atol=0)
    with torch.no_grad():
        img = G(torch.randn(2, 32), truncation=0.7)
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()


def test_module_tree_that_loops_is_refused(tmp_path):
    # Hand-written opcodes (protocol 2): G's submodule dict, filled after G exists, holds G itself.
    def u(text):
        return b"X" + struct.pack("<I", len(text)) + text.encode()

    data = (
        b"\x80\x02" + b"}q\x00" + b"0"                                  # M = {}            (memo 0)
        + b"}q\x01(" + u("type") + u("class") + u("class_name") + u("Generator")
        + u("state") + b"}(" + u("_modules") + b"h\x00u" + b"u0"         # meta = {..., state: {_modules: M}}
        + b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n"
        + b"h\x01\x85Rq\x02" + b"0"                                     # P = reconstruct(meta)  (memo 2)
        + b"h\x00(" + u("loop") + b"h\x02u0"                            # M["loop"] = P
        + b"}(" + u("G_ema") + b"h\x02u."                               # {"G_ema": P}
    )
    path = tmp_path / "loop.pkl"
    path.write_bytes(data)
    with pytest.raises(NvidiaPickleError, match="loops back"):
        read_nvidia_pickle(path)


def test_malformed_tensors_are_reported(tmp_path):
    path = tmp_path / "bad.pkl"
    with nvidia_names() as ns:
        G, _ = nvidia_generator(ns)
        G.meta["state"]["_modules"]["mapping"].meta["state"]["_buffers"]["w_avg"] = torch.zeros(())
        with open(path, "wb") as f:
            pickle.dump({"G_ema": G}, f)
    with pytest.raises(NvidiaPickleError, match="malformed|shape") as err:
        read_nvidia_pickle(path)
    assert str(path) in str(err.value)
