"""StyleGAN2 generator (config-f semantics) in pure PyTorch, with W+ and StyleSpace entry points.

The paper's generator G and its affine maps A(.) (Eq. 3: frame = G(A(W_ID) + S_F)). No CUDA extension and no
compile step: the FIR filtering (upfirdn2d) is F.pad + a depthwise conv2d, the fused bias + leaky ReLU is plain
element-wise ops. The math is that of rosinality/stylegan2-pytorch (its CPU fallbacks `upfirdn2d_native` and
`fused_leaky_relu`, and its default fused modulated convolution), so that its checkpoints give the same images.

Names
-----
Module, parameter and buffer names are those of rosinality's `Generator`, so a rosinality `g_ema` state dict
loads with `load_state_dict(strict=True)`: `style.1..style.{n_mlp}` (style.0 is the PixelNorm),
`input.input` [1,C,4,4], `conv1.{conv.weight, conv.modulation.*, noise.weight, activate.bias}`,
`to_rgb1.{conv.*, bias}`, `convs.{i}.*` (upsampling convs carry the `conv.blur.kernel` buffer),
`to_rgbs.{k}.*` (with the `upsample.kernel` buffer), `noises.noise_{j}` [1,1,r,r]. The generator's
`latent_avg` [style_dim] is a non-persistent buffer: it is not in `state_dict()` (rosinality keeps it beside
`g_ema` in its checkpoints) and the loaders in `stylegan2_formats` fill it.

Latent spaces and entry points
------------------------------
- Z -> W: `G.map(z, truncation, truncation_latent)`; W+ is [N, n_latent, style_dim], n_latent =
  2*log2(resolution) - 2 (18 at 1024). W+ rows: conv1 w0, to_rgb1 w1; block k (resolution 2**(k+3)):
  convs[2k] w[2k+1], convs[2k+1] w[2k+2], to_rgbs[k] w[2k+3].
- W+ -> image: `G.synthesis(wplus)`; StyleSpace -> image: `G.synthesis_ss(styles)`; W+ -> StyleSpace:
  `G.A(wplus)`. `G.synthesis(w) == G.synthesis_ss(G.A(w))` exactly (the former is implemented as the latter).
- `G(z, truncation=...)`: synthesis of the broadcast mapped w.

StyleSpace convention
---------------------
An SS code of a layer is the output of that layer's affine map (rosinality's `modulation(w)`, NVIDIA's
`affine(w)`), taken BEFORE the 1/sqrt(fan_in) weight scale; its width is the layer's input channels.
NVIDIA's stylegan2-ada-pytorch multiplies its toRGB styles by weight_gain = 1/sqrt(in_channels) (it folds
the 1x1 conv's scale into the style): NVIDIA toRGB style = ours / sqrt(in_channels). Its conv-layer styles
equal ours. The NVIDIA reader only renames parameters (the images are identical); SS codes computed here
follow our convention whatever the checkpoint's origin.

Layer orders ("the first 10 SS layers")
---------------------------------------
`G.ss_layers` lists the SS layers in rosinality's forward order: conv1, to_rgb1, then per block convs[2k],
convs[2k+1], to_rgbs[k] (26 layers at 1024: 17 conv + 9 toRGB, 9088 channels at channel_multiplier 2).
The paper puts S_F in "the first 10 SS layers", which reads two ways (`G.ss_indices(order, n)`):
- "all": the first 10 of the 26-layer order, toRGB included: 7 convs + 3 toRGBs, resolutions 4..32.
- "conv": the first 10 conv layers: conv1 and convs[0..8], resolutions 4..64 (convs[8] upsamples to 64).
All 10 are 512 wide at 1024 in both readings. Recommended default: "all". The paper grounds the choice in
StyleSpace [40], whose layer numbering counts the tRGB layers (its channels are named layer_channel with
layer in 0..25, and the conv layers sit at 0, 2, 3, 5, 6, 8, 9, ...), so "the first 10 layers" in that
numbering is the 26-layer order; it also keeps the motion codes off the 64 px features, in line with the
paper's wish to avoid edits on high-resolution layers.

conv_clamp
----------
NVIDIA's stylegan2-ada clamps each layer's output after bias, activation and gain: a conv layer's output
sqrt(2) * lrelu(x + b) and a toRGB output x + b are both clamped to [-conv_clamp, conv_clamp] (its
`bias_act(..., gain=sqrt(2), clamp=conv_clamp)`: the clamp comes after the gain and is not scaled by it).
None (the default) is rosinality: no clamp.

Speed
-----
Two runtime switches (attributes, not config). `G.channels_last` (default False) runs the synthesis in
channels-last memory format. `G.fused_modconv`: True runs each modulated conv as one grouped conv with the
batch folded into the groups, as rosinality does (the reference numerics); False scales the activations by
the styles and runs one shared conv (NVIDIA's `fused_modconv=False` path: the same math to ~1e-5, better for
large batches and training, and the only path that keeps channels-last, since folding the batch into the
channels forces a contiguous copy); None (default) picks True, or False when `channels_last` is set.
Both paths work under bf16/fp16 autocast (the convolutions run in the low precision; the mapping network,
the affines, hence the SS codes, and the demodulation stay in fp32); neither loops over samples in Python.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

SQRT2 = 2**0.5
MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024


# ---------------------------------------------------------------------------------------------------------
# Layer table (no module needed)


def channel_widths(resolution: int, channel_multiplier: int = 2, channel_max: int = 512,
                   channel_base: int | None = None) -> dict[int, int]:
    """Feature width at each resolution 4..`resolution`: rosinality's table capped at `channel_max`, or,
    with `channel_base`, NVIDIA's rule min(channel_max, channel_base // res) (channel_multiplier unused).

    rosinality: {4..32: 512, 64: 256*cm, 128: 128*cm, 256: 64*cm, 512: 32*cm, 1024: 16*cm}, i.e.
    512 up to 32 px and 16384*cm/res above; every entry is min(channel_max, that).
    NVIDIA (stylegan2-ada): channel_base 32768 = config-f at 1024 px. Small generators on a CPU want wide
    low-resolution layers (cheap: few pixels) and narrow high-resolution ones, which only this rule gives:
    e.g. channel_base 2048, channel_max 256 at 64 px = {4: 256, 8: 256, 16: 128, 32: 64, 64: 32}.
    """
    _check_resolution(resolution)
    if channel_base is not None and channel_base < 4:
        raise ValueError(f"channel_base must be >= 4 or None, got {channel_base!r}")
    out = {}
    res = 4
    while res <= resolution:
        if channel_base is not None:
            base = max(1, channel_base // res)
        else:
            base = 512 if res <= 32 else (16384 * channel_multiplier) // res
        out[res] = min(channel_max, base)
        res *= 2
    return out


@dataclass(frozen=True)
class SSLayer:
    """One StyleSpace layer: a modulated conv whose affine map turns one W+ row into its style code."""

    index: int  # position in the 26-layer order (toRGB included)
    name: str  # module name: 'conv1', 'to_rgb1', 'convs.{i}', 'to_rgbs.{k}'
    kind: Literal["conv", "torgb"]
    resolution: int  # side in px of the layer's output
    channels: int  # width of the SS code = the layer's input channels
    wplus_row: int  # W+ row the affine map reads
    conv_index: int | None  # position in the conv-only order; None for toRGB layers


def ss_layer_table(resolution: int, channel_multiplier: int = 2, channel_max: int = 512,
                   channel_base: int | None = None) -> tuple[SSLayer, ...]:
    """The StyleSpace layers of a generator with these settings, in rosinality's forward order."""
    ch = channel_widths(resolution, channel_multiplier, channel_max, channel_base)
    rows: list[tuple[str, str, int, int, int]] = [("conv1", "conv", 4, ch[4], 0), ("to_rgb1", "torgb", 4, ch[4], 1)]
    in_ch = ch[4]
    for k in range(int(math.log2(resolution)) - 2):
        res = 2 ** (k + 3)
        rows.append((f"convs.{2 * k}", "conv", res, in_ch, 2 * k + 1))
        rows.append((f"convs.{2 * k + 1}", "conv", res, ch[res], 2 * k + 2))
        rows.append((f"to_rgbs.{k}", "torgb", res, ch[res], 2 * k + 3))
        in_ch = ch[res]
    table, n_conv = [], 0
    for i, (name, kind, res, c, row) in enumerate(rows):
        table.append(SSLayer(i, name, kind, res, c, row, n_conv if kind == "conv" else None))  # type: ignore[arg-type]
        n_conv += kind == "conv"
    return tuple(table)


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, int) or resolution < MIN_RESOLUTION or resolution > MAX_RESOLUTION or (
        resolution & (resolution - 1)
    ):
        raise ValueError(f"resolution must be a power of two in {MIN_RESOLUTION}..{MAX_RESOLUTION}, got {resolution!r}")


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _check_shape(t: Tensor, expected: Sequence[int | None], what: str) -> None:
    """Raise ValueError unless `t` has `expected` shape (None matches any size)."""
    ok = t.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        shown = "[" + ", ".join("N" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{what}: expected shape {shown}, got {list(t.shape)}")


# ---------------------------------------------------------------------------------------------------------
# FIR filtering


def make_kernel(k: Sequence[float] | Tensor) -> Tensor:
    """2-D FIR kernel normalised to sum 1: the outer product of a 1-D kernel with itself, or a 2-D kernel."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: Sequence[int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, convolve with the FIR `kernel`, downsample: rosinality's upfirdn2d.

    `pad` is (p0, p1) for both axes or (x0, x1, y0, y1); negative pads crop. The kernel is applied as a true
    convolution (flipped, then correlated), per channel (depthwise), so the result equals rosinality's
    `upfirdn2d_native` up to float rounding. Output side: (in*up + p0 + p1 - k) // down + 1.
    """
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    if up > 1:  # zero insertion: each sample followed by up-1 zeros, along both axes
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if min(pad) < 0:
        x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    weight = torch.flip(kernel, [0, 1]).to(dtype=x.dtype, device=x.device)
    weight = weight.reshape(1, 1, kh, kw).repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


class Blur(nn.Module):
    """FIR low-pass filter (kernel normalised, times up**2 after an upsampling), with padding `pad`."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * (upsample_factor**2)
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x upsampling by zero insertion + FIR filter (kernel * factor**2), as used on the toRGB skip."""

    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        k = make_kernel(kernel) * (factor**2)
        self.register_buffer("kernel", k)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


# ---------------------------------------------------------------------------------------------------------
# Layers


class PixelNorm(nn.Module):
    """Normalise each vector to unit mean square over dim 1."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weight ~ N(0, 1/lr_mul^2), used as weight * lr_mul/sqrt(in).

    With `activation`, the output is the fused leaky ReLU: lrelu(x W^T + b*lr_mul, 0.2) * sqrt(2).
    """

    def __init__(
        self,
        in_dim: int,  # input features
        out_dim: int,  # output features
        bias_init: float = 0.0,  # initial bias (1 for the style affines: styles start around 1)
        lr_mul: float = 1.0,  # learning-rate multiplier (0.01 in the mapping network)
        activation: bool = False,  # fused leaky ReLU after the bias
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init))
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        if _autocast_on(x.device.type):
            # the mapping network and the style affines are cheap: keep them (and the SS codes) in fp32
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.float())
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return F.leaky_relu(out + (self.bias * self.lr_mul).view(1, -1), 0.2) * SQRT2
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class BiasLeakyReLU(nn.Module):
    """Per-channel bias, leaky ReLU (0.2), gain sqrt(2); optional clamp of the result to +-clamp (NVIDIA)."""

    def __init__(self, channels: int, clamp: float | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = clamp

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2) * SQRT2
        if self.clamp is not None:
            out = out.clamp(-self.clamp, self.clamp)
        return out


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution. `forward` takes the SS code; `modulation` is the affine map A.

    weight' = s * weight / sqrt(in*k*k) (s: the SS code, per input channel), demodulated per output
    channel by rsqrt(sum(weight'^2) + 1e-8). With `upsample`, a stride-2 transposed conv (padding 0)
    followed by the FIR blur (kernel * 4, pad (1, 1) for [1,3,3,1]).
    """

    def __init__(
        self,
        in_channel: int,  # input feature channels = SS code width
        out_channel: int,  # output feature channels
        kernel_size: int,  # square kernel side (3 for convs, 1 for toRGB)
        style_dim: int,  # width of the W+ row fed to the affine map
        demodulate: bool = True,  # False for toRGB
        upsample: bool = False,  # 2x upsampling conv (first conv of each block)
        blur_kernel: Sequence[float] = (1, 3, 3, 1),  # FIR kernel of the blur after upsampling
    ):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channel}, {self.out_channel}, {self.kernel_size}, upsample={self.upsample}, "
            f"demodulate={self.demodulate}"
        )

    def forward(self, x: Tensor, style: Tensor, fused: bool = True) -> Tensor:
        """x [N, in, H, W], style (SS code) [N, in] -> [N, out, H', W'] (H' = 2H when upsampling)."""
        if fused:
            return self._forward_grouped(x, style)
        return self._forward_shared(x, style)

    def modulated_weight(self, style: Tensor) -> Tensor:
        """Per-sample weights [N, out, in, k, k]: scale * weight * s, demodulated (unit L2 norm per output
        channel, up to the 1e-8 epsilon) when `demodulate`."""
        n = style.shape[0]
        weight = self.scale * self.weight * style.reshape(n, 1, self.in_channel, 1, 1)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.reshape(n, self.out_channel, 1, 1, 1)
        return weight

    def _forward_grouped(self, x: Tensor, style: Tensor) -> Tensor:
        # One grouped conv, the batch folded into the groups: per-sample weights, rosinality's fused path.
        n, c_in, h, w = x.shape
        k, c_out = self.kernel_size, self.out_channel
        weight = self.modulated_weight(style)
        x = x.reshape(1, n * c_in, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * c_in, c_out, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=n)
            out = out.reshape(n, c_out, out.shape[2], out.shape[3])
            return self.blur(out)
        out = F.conv2d(x, weight.reshape(n * c_out, c_in, k, k), padding=self.padding, groups=n)
        return out.reshape(n, c_out, h, w)

    def _forward_shared(self, x: Tensor, style: Tensor) -> Tensor:
        # Scale the input by the style, one conv with the shared weight, scale the output by the
        # demodulation coefficients: the same math as the grouped path (NVIDIA's fused_modconv=False).
        n, c_in = x.shape[:2]
        weight = self.scale * self.weight[0]  # [out, in, k, k]
        x = x * style.reshape(n, c_in, 1, 1).to(x.dtype)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), padding=0, stride=2)
            out = self.blur(out)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum over (in, k, k) of (s_i W_oi)^2 = s^2 @ (sum_kk W^2)^T, in fp32 even under autocast
            with torch.autocast(x.device.type, enabled=False):
                dcoefs = torch.rsqrt(style.float().square() @ weight.float().square().sum([2, 3]).t() + 1e-8)
            out = out * dcoefs.reshape(n, self.out_channel, 1, 1).to(out.dtype)
        return out


class NoiseInjection(nn.Module):
    """x + weight * noise, with one learned scalar weight per layer (noise [1 or N, 1, H, W])."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            n, _, h, w = x.shape
            noise = x.new_empty(n, 1, h, w).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 input, repeated over the batch."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally upsampling) + noise + bias + leaky ReLU * sqrt(2) [+ clamp]."""

    def __init__(
        self,
        in_channel: int,  # input feature channels
        out_channel: int,  # output feature channels
        kernel_size: int,  # 3 in StyleGAN2
        style_dim: int,  # width of a W+ row
        upsample: bool = False,  # 2x upsampling conv
        blur_kernel: Sequence[float] = (1, 3, 3, 1),  # FIR kernel
        conv_clamp: float | None = None,  # clamp of the activated output; None = none (rosinality)
    ):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = BiasLeakyReLU(out_channel, clamp=conv_clamp)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None, fused: bool = True) -> Tensor:
        """x [N, in, H, W], style (SS code) [N, in], noise [1|N, 1, H', W'] or None (fresh) -> [N, out, H', W']."""
        return self.activate(self.noise(self.conv(x, style, fused), noise=noise))


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation, + bias [+ clamp], + the 2x-upsampled previous RGB."""

    def __init__(
        self,
        in_channel: int,  # input feature channels
        style_dim: int,  # width of a W+ row
        upsample: bool = True,  # False for to_rgb1 (no skip to add)
        blur_kernel: Sequence[float] = (1, 3, 3, 1),  # FIR kernel of the skip upsampling
        conv_clamp: float | None = None,  # clamp of conv + bias; None = none (rosinality)
    ):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.conv_clamp = conv_clamp

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None, fused: bool = True) -> Tensor:
        """x [N, in, H, W], style [N, in], skip [N, 3, H/2, W/2] or None -> RGB [N, 3, H, W]."""
        out = self.conv(x, style, fused) + self.bias
        if self.conv_clamp is not None:
            out = out.clamp(-self.conv_clamp, self.conv_clamp)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# ---------------------------------------------------------------------------------------------------------
# Generator


class Generator(nn.Module):
    """StyleGAN2 generator (config-f) with Z, W+ and StyleSpace entry points; see the module docstring.

    Runtime switches (attributes, not part of `config`): `channels_last` (run the synthesis in channels-last
    memory format) and `fused_modconv` (True: grouped conv per sample, rosinality's numerics; False: shared
    conv on style-scaled inputs; None: True unless `channels_last`). `latent_avg` [style_dim] is the truncation centre (a non-persistent
    buffer, zero until loaded from a checkpoint or set, e.g. `G.latent_avg.copy_(G.mean_latent(4096)[0])`).
    """

    def __init__(
        self,
        resolution: int,  # output image side in px, a power of two in 8..1024
        style_dim: int = 512,  # width of z, w and of each W+ row
        n_mlp: int = 8,  # EqualLinear layers in the mapping network (after the PixelNorm)
        channel_multiplier: int = 2,  # width factor above 32 px: 2 = config-f (rosinality's FFHQ), 1 = config-e
        channel_max: int = 512,  # cap on every layer's width (toy models: e.g. 128); 512 = rosinality
        lr_mlp: float = 0.01,  # learning-rate multiplier of the mapping network (equalised lr)
        blur_kernel: Sequence[int] = (1, 3, 3, 1),  # FIR kernel of the upsampling filters
        conv_clamp: float | None = None,  # NVIDIA's clamp of every layer's output to +-conv_clamp; None = off
        channel_base: int | None = None,  # NVIDIA's width rule min(channel_max, channel_base // res); None = rosinality's
    ):
        super().__init__()
        _check_resolution(resolution)
        if not isinstance(channel_multiplier, int) or channel_multiplier < 1:
            raise ValueError(f"channel_multiplier must be an integer >= 1, got {channel_multiplier!r}")
        if channel_max < 1 or style_dim < 1 or n_mlp < 1:
            raise ValueError(f"channel_max, style_dim and n_mlp must be >= 1, got {channel_max}, {style_dim}, {n_mlp}")
        if conv_clamp is not None and conv_clamp <= 0:
            raise ValueError(f"conv_clamp must be positive or None, got {conv_clamp}")
        self.config = dict(
            resolution=resolution,
            style_dim=style_dim,
            n_mlp=n_mlp,
            channel_multiplier=channel_multiplier,
            channel_max=channel_max,
            lr_mlp=lr_mlp,
            blur_kernel=[int(v) if float(v).is_integer() else float(v) for v in blur_kernel],
            conv_clamp=None if conv_clamp is None else float(conv_clamp),
        )
        if channel_base is not None:  # only then: native files written before this option stay identical
            self.config["channel_base"] = int(channel_base)
        self.resolution = self.size = resolution
        self.style_dim = style_dim
        self.log_size = int(math.log2(resolution))
        self.n_latent = self.log_size * 2 - 2
        self.num_layers = (self.log_size - 2) * 2 + 1  # noise inputs = conv layers
        self.channels = channel_widths(resolution, channel_multiplier, channel_max, channel_base)
        self.fused_modconv: bool | None = None
        self.channels_last = False

        self.style = nn.Sequential(
            PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)]
        )
        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, style_dim, blur_kernel=blur_kernel, conv_clamp=conv_clamp)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False, conv_clamp=conv_clamp)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for j in range(self.num_layers):
            r = 2 ** ((j + 5) // 2)
            self.noises.register_buffer(f"noise_{j}", torch.randn(1, 1, r, r))
        in_ch = c4
        for i in range(3, self.log_size + 1):
            out_ch = self.channels[2**i]
            self.convs.append(
                StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel, conv_clamp=conv_clamp)
            )
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel, conv_clamp=conv_clamp))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel, conv_clamp=conv_clamp))
            in_ch = out_ch
        self.register_buffer("latent_avg", torch.zeros(style_dim), persistent=False)
        self._ss_layers = ss_layer_table(resolution, channel_multiplier, channel_max, channel_base)

    # -- layer table ---------------------------------------------------------------------------------

    @property
    def ss_layers(self) -> list[SSLayer]:
        """StyleSpace layers in rosinality's forward order (conv1, to_rgb1, convs[2k], convs[2k+1], to_rgbs[k])."""
        return list(self._ss_layers)

    def ss_indices(self, order: Literal["all", "conv"], n: int) -> list[int]:
        """Indices (into `ss_layers`) of the first `n` SS layers of the 26-layer order ("all", toRGB included)
        or of the conv-only order ("conv"); see the module docstring for which reading of the paper each is."""
        if order == "all":
            pool = [layer.index for layer in self._ss_layers]
        elif order == "conv":
            pool = [layer.index for layer in self._ss_layers if layer.kind == "conv"]
        else:
            raise ValueError(f"order must be 'all' or 'conv', got {order!r}")
        if not 0 <= n <= len(pool):
            raise ValueError(f"n must be in 0..{len(pool)} for order {order!r} at {self.resolution} px, got {n}")
        return pool[:n]

    def _ss_modules(self) -> list[nn.Module]:
        """The StyledConv / ToRGB module of each SS layer, in `ss_layers` order."""
        mods: list[nn.Module] = [self.conv1, self.to_rgb1]
        for k in range(len(self.to_rgbs)):
            mods += [self.convs[2 * k], self.convs[2 * k + 1], self.to_rgbs[k]]
        return mods

    # -- Z -> W -> W+ -> S ----------------------------------------------------------------------------

    def map(self, z: Tensor, truncation: float = 1.0, truncation_latent: Tensor | None = None) -> Tensor:
        """Mapping network: z [N, style_dim] -> w [N, style_dim], optionally truncated towards
        `truncation_latent` ([style_dim] or [1, style_dim]; default: `latent_avg`):
        w' = t_latent + truncation * (w - t_latent)."""
        _check_shape(z, [None, self.style_dim], "z")
        w = self.style(z)
        if truncation != 1:
            centre = self.latent_avg if truncation_latent is None else truncation_latent
            w = centre + truncation * (w - centre)
        return w

    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> Tensor:
        """Mean of the mapped w of `n` random z: [1, style_dim] (rosinality's shape; no gradient)."""
        device = self.input.input.device
        z = torch.randn(n, self.style_dim, device=device, generator=generator)
        with torch.no_grad():
            return self.style(z).mean(0, keepdim=True)

    def broadcast(self, w: Tensor) -> Tensor:
        """w [N, style_dim] -> W+ [N, n_latent, style_dim] (the same w on every row)."""
        _check_shape(w, [None, self.style_dim], "w")
        return w.unsqueeze(1).repeat(1, self.n_latent, 1)

    def A(self, wplus: Tensor) -> list[Tensor]:
        """The paper's A(.): each SS layer's affine map applied to its W+ row -> list of [N, C_l] SS codes."""
        _check_shape(wplus, [None, self.n_latent, self.style_dim], "wplus")
        return [mod.conv.modulation(wplus[:, layer.wplus_row]) for layer, mod in zip(self._ss_layers, self._ss_modules())]

    # -- synthesis ------------------------------------------------------------------------------------

    def make_noise(self, generator: torch.Generator | None = None) -> list[Tensor]:
        """A fresh set of noise maps [1, 1, r, r], one per conv layer (rosinality's order and shapes)."""
        device = self.input.input.device
        return [torch.randn(1, 1, 2 ** ((j + 5) // 2), 2 ** ((j + 5) // 2), device=device, generator=generator) for j in range(self.num_layers)]

    def noise_buffers(self) -> list[Tensor]:
        """The fixed noise maps (buffers `noises.noise_j`) used when `randomize_noise` is False."""
        return [getattr(self.noises, f"noise_{j}") for j in range(self.num_layers)]

    def _resolve_noise(self, noise: Sequence[Tensor | None] | None, randomize_noise: bool, n: int) -> list[Tensor | None]:
        if noise is None:
            return [None] * self.num_layers if randomize_noise else self.noise_buffers()
        noise = list(noise)
        if len(noise) != self.num_layers:
            raise ValueError(f"noise: expected {self.num_layers} maps (one per conv layer), got {len(noise)}")
        for j, t in enumerate(noise):
            if t is not None:
                r = 2 ** ((j + 5) // 2)
                _check_shape(t, [None, 1, r, r], f"noise[{j}]")
                if t.shape[0] not in (1, n):
                    raise ValueError(f"noise[{j}]: batch must be 1 or {n}, got {t.shape[0]}")
        return noise

    def synthesis(self, wplus: Tensor, noise: Sequence[Tensor | None] | None = None, randomize_noise: bool = False) -> Tensor:
        """W+ [N, n_latent, style_dim] (or w [N, style_dim], broadcast) -> image [N, 3, R, R] (about [-1, 1]).

        noise: list of `num_layers` maps [1|N, 1, r, r] (None entries: fresh noise), or None: the fixed
        buffers, or fresh noise when `randomize_noise`.
        """
        if wplus.ndim == 2:
            wplus = self.broadcast(wplus)
        return self.synthesis_ss(self.A(wplus), noise=noise, randomize_noise=randomize_noise)

    def synthesis_ss(self, styles: Sequence[Tensor], noise: Sequence[Tensor | None] | None = None, randomize_noise: bool = False) -> Tensor:
        """StyleSpace codes (list of [N, C_l], one per `ss_layers` entry) -> image [N, 3, R, R]; noise as in
        `synthesis`."""
        styles = list(styles)
        if len(styles) != len(self._ss_layers):
            raise ValueError(f"styles: expected {len(self._ss_layers)} SS codes at {self.resolution} px, got {len(styles)}")
        n = styles[0].shape[0]
        for layer, s in zip(self._ss_layers, styles):
            _check_shape(s, [n, layer.channels], f"styles[{layer.index}] ({layer.name})")
        noise = self._resolve_noise(noise, randomize_noise, n)
        fused = (not self.channels_last) if self.fused_modconv is None else bool(self.fused_modconv)

        x = self.input(n)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.conv1(x, styles[0], noise[0], fused)
        skip = self.to_rgb1(x, styles[1], None, fused)
        assert x.shape == (n, self.channels[4], 4, 4) and skip.shape == (n, 3, 4, 4), (x.shape, skip.shape)
        for k, to_rgb in enumerate(self.to_rgbs):
            res, s = 2 ** (k + 3), 3 * k + 2
            x = self.convs[2 * k](x, styles[s], noise[2 * k + 1], fused)
            x = self.convs[2 * k + 1](x, styles[s + 1], noise[2 * k + 2], fused)
            skip = to_rgb(x, styles[s + 2], skip, fused)
            assert x.shape == (n, self.channels[res], res, res), f"block {res}px: features {tuple(x.shape)}"
            assert skip.shape == (n, 3, res, res), f"block {res}px: rgb {tuple(skip.shape)}"
        return skip.contiguous()

    def forward(
        self,
        z: Tensor,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        noise: Sequence[Tensor | None] | None = None,
        randomize_noise: bool = False,
    ) -> Tensor:
        """z [N, style_dim] -> image [N, 3, R, R]: synthesis of the broadcast (truncated) mapped w."""
        w = self.map(z, truncation=truncation, truncation_latent=truncation_latent)
        return self.synthesis(self.broadcast(w), noise=noise, randomize_noise=randomize_noise)
