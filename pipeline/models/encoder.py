"""The hybrid-latent encoder E = F + E_ID + E_F (Sec. 3.1, Eq. 1) and the hybrid latent's decoder (Eq. 2-3).

Encoder
-------
- F: an IR-SE backbone (`pipeline.models.arcface.BottleneckIR` units; module names `input_layer`, `body.{i}` as
  in pSp, so that the ArcFace IR-SE50 weights load into it) extended with pSp's feature pyramid: taps c1, c2, c3
  at the ends of stages 2, 3, 4 (64x64x128, 32x32x256, 16x16x512 at 256 px with IR-SE50), p2 = up(c3) +
  lat(c2), p1 = up(p2) + lat(c1) (bilinear, align_corners=True; laterals 1x1 convs to the last stage's width).
  Depth (`units` per stage) and `widths` are parameters, so the synthetic world can use a small F.
- E_ID: one map2style head per W+ row -> W_ID [N, n_latent, style_dim], started from the generator's
  `latent_avg` (W_ID = latent_avg + head outputs, as pSp and e4e do).
- E_F: one map2style head per motion layer (`model.sf_layers`) -> S_F, a list of [N, C_l] StyleSpace codes
  (or, with `hybrid=False`, W+ offsets [N, style_dim] on the same layers: the paper's "w/o Hybrid" ablation).
  Its last linear starts at zero, so training starts from S_F = 0.
- map2style (pSp's GradualStyleBlock): log2(spatial) x [3x3 conv, stride 2, LeakyReLU 0.01], then an equalised
  linear layer. Each head reads the pyramid level of its layer's resolution: <= 8 px coarse (c3), 16-32 px
  medium (p2), >= 64 px fine (p1); for 18 W+ rows this is pSp's split (rows 0-2, 3-6, 7-17).

Decoder (Eq. 2-3)
-----------------
`HybridDecoder(G, layers, hybrid, size)` renders G(A(W_ID) + S_F) in torch, gradients reaching W_ID and S_F:
`G.A(W_ID)` gives every StyleSpace layer's code and S_F is added on `layers`; with S_F None it renders
G(A(W_ID)) (Eq. 8's source-identity image). With `hybrid=False` the motion code is a W+ offset: layer l gets
A_l(W_ID[row_l] + offset_l). G's noise is its fixed buffers (no per-call randomness); outputs are resized to
`size` (the frames' side) by area averaging, as pSp's face_pool does.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.models.arcface import BottleneckIR
from pipeline.models.stylegan2 import EqualLinear, Generator

LEVELS = ("coarse", "medium", "fine")  # c3, p2, p1


def level_of(resolution: int) -> str:
    """The pyramid level that feeds a layer of this resolution (pSp: coarse 4-8 px, medium 16-32, fine >= 64)."""
    return "coarse" if resolution <= 8 else "medium" if resolution <= 32 else "fine"


def wplus_row_resolution(row: int, resolution: int) -> int:
    """Resolution of the conv layers a W+ row drives: row 0 -> 4 px, rows 2k+1 and 2k+2 -> 2**(k+3) (the last
    row drives only the last toRGB: capped at the output resolution)."""
    return 4 if row == 0 else min(2 ** ((row + 1) // 2 + 2), resolution)


class Map2Style(nn.Module):
    """pSp's map2style: a feature map [N, C, s, s] -> a code [N, out_dim]."""

    def __init__(
        self,
        channels: int,  # input channels, also the width of every conv of the head
        out_dim: int,  # code width (style_dim for W+ rows, C_l for StyleSpace layers)
        spatial: int,  # side of the input map (a power of two): log2(spatial) stride-2 convs bring it to 1x1
        zero_init: bool = False,  # start the output at zero (the motion heads: S_F starts at 0)
    ):
        super().__init__()
        if spatial < 1 or spatial & (spatial - 1):
            raise ValueError(f"map2style needs a power-of-two input side, got {spatial}")
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, out_dim)
        if zero_init:
            nn.init.zeros_(self.linear.weight)
        self.channels, self.spatial = channels, spatial

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[1:] == (self.channels, self.spatial, self.spatial), (tuple(x.shape), self.channels, self.spatial)
        return self.linear(self.convs(x).reshape(x.shape[0], self.channels))


class HybridEncoder(nn.Module):
    """E = F + E_ID + E_F: image [N, 3, S, S] in [-1, 1] -> (W_ID [N, n_latent, style_dim], S_F list of [N, C_k]).

    Build it from a generator with `encoder_config` (which also goes into the checkpoint); see the module
    docstring for the architecture."""

    def __init__(
        self,
        input_size: int,  # S, the side of the frames it reads (a power of two >= 16)
        style_dim: int,  # width of a W+ row (the generator's)
        wplus_levels: Sequence[str],  # pyramid level of each W+ row (n_latent entries)
        motion_levels: Sequence[str],  # pyramid level of each motion layer
        motion_dims: Sequence[int],  # width of each motion code: C_l (hybrid) or style_dim (W+ offsets)
        units: Sequence[int] = (3, 4, 14, 3),  # IR-SE units per stage (IR-SE50: 3, 4, 14, 3)
        widths: Sequence[int] = (64, 128, 256, 512),  # channels per stage; the last is the pyramid's width
        se: bool = True,  # squeeze-excitation in every unit (IR-SE) or plain IR
    ):
        super().__init__()
        if len(units) != 4 or len(widths) != 4:
            raise ValueError(f"F has four stages: got units {list(units)}, widths {list(widths)}")
        if se and min(widths) < 16:
            raise ValueError(f"IR-SE widths must be >= 16 (the SE gates reduce channels by 16), got {list(widths)}")
        if input_size < 16 or input_size & (input_size - 1):
            raise ValueError(f"the encoder reads square frames of a power-of-two side >= 16, got {input_size}")
        if len(motion_levels) != len(motion_dims):
            raise ValueError("motion_levels and motion_dims must have one entry per motion layer")
        self.input_size, self.style_dim = input_size, style_dim
        self.n_latent, self.n_motion = len(wplus_levels), len(motion_levels)
        width = widths[-1]
        self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                         nn.PReLU(widths[0]))
        body, in_channel, ends = [], widths[0], []
        for depth, n in zip(widths, units):
            body.append(BottleneckIR(in_channel, depth, 2, se=se))
            body.extend(BottleneckIR(depth, depth, 1, se=se) for _ in range(n - 1))
            in_channel = depth
            ends.append(len(body) - 1)
        self.body = nn.Sequential(*body)
        self.taps = tuple(ends[1:])  # ends of stages 2, 3, 4: c1, c2, c3
        for lv in (*wplus_levels, *motion_levels):
            if lv not in LEVELS:
                raise ValueError(f"unknown pyramid level {lv!r}; levels: {', '.join(LEVELS)}")
        # the pyramid up to the finest level a head reads (a small generator may use no 'fine' layer: no p1, whose
        # lateral conv would get no gradient)
        self.depth = max(LEVELS.index(lv) for lv in (*wplus_levels, *motion_levels))
        if self.depth >= 1:
            self.latlayer1 = nn.Conv2d(widths[2], width, 1)  # c2 -> p2
        if self.depth >= 2:
            self.latlayer2 = nn.Conv2d(widths[1], width, 1)  # c1 -> p1
        side = {"coarse": input_size // 16, "medium": input_size // 8, "fine": input_size // 4}
        self.wplus_levels, self.motion_levels = tuple(wplus_levels), tuple(motion_levels)
        self.id_heads = nn.ModuleList(Map2Style(width, style_dim, side[lv]) for lv in wplus_levels)
        self.motion_heads = nn.ModuleList(Map2Style(width, d, side[lv], zero_init=True)
                                          for lv, d in zip(motion_levels, motion_dims))
        self.register_buffer("latent_avg", torch.zeros(style_dim))

    def feature_modules(self) -> list[nn.Module]:
        """F: the backbone and the pyramid's lateral convs (frozen in the fine-tuning stage)."""
        return [self.input_layer, self.body] + [getattr(self, f"latlayer{i}") for i in (1, 2) if i <= self.depth]

    def head_modules(self) -> list[nn.Module]:
        """E_ID and E_F."""
        return [self.id_heads, self.motion_heads]

    def pyramid(self, x: Tensor) -> dict[str, Tensor]:
        """F(I): {"coarse": c3, "medium": p2, "fine": p1} (up to the finest level a head reads)."""
        if x.ndim != 4 or x.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(f"encoder input: expected [N, 3, {self.input_size}, {self.input_size}], got {list(x.shape)}")
        x = self.input_layer(x)
        taps = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.taps:
                taps.append(x)
        c1, c2, c3 = taps
        out = {"coarse": c3}
        if self.depth >= 1:
            out["medium"] = F.interpolate(c3, size=c2.shape[-2:], mode="bilinear", align_corners=True) + self.latlayer1(c2)
        if self.depth >= 2:
            out["fine"] = F.interpolate(out["medium"], size=c1.shape[-2:], mode="bilinear", align_corners=True) + \
                self.latlayer2(c1)
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Eq. 1: (W_ID, S_F) of frames x."""
        feats = self.pyramid(x)
        w_id = torch.stack([head(feats[lv]) for head, lv in zip(self.id_heads, self.wplus_levels)], dim=1)
        w_id = w_id + self.latent_avg.to(w_id.dtype)
        motion = [head(feats[lv]) for head, lv in zip(self.motion_heads, self.motion_levels)]
        return w_id, motion

    def encode_identity(self, x: Tensor) -> Tensor:
        """W_ID only (E_ID(F(x)): Eq. 10's re-encoding needs no motion heads)."""
        feats = self.pyramid(x)
        w_id = torch.stack([head(feats[lv]) for head, lv in zip(self.id_heads, self.wplus_levels)], dim=1)
        return w_id + self.latent_avg.to(w_id.dtype)


def motion_layers(G: Generator, order: Literal["all", "conv"], count: int) -> list[int]:
    """Indices into `G.ss_layers` of the layers that carry S_F (`model.sf_layers`); ValueError naming the params
    key when the generator has fewer such layers."""
    try:
        return G.ss_indices(order, count)
    except ValueError:
        pool = sum(1 for layer in G.ss_layers if order == "all" or layer.kind == "conv")
        raise ValueError(f"model.sf_layers: order {order!r}, count {count} needs {count} layers, but this "
                         f"{G.resolution} px generator has {pool} in that order; lower model.sf_layers.count or "
                         f"use order 'all'") from None


def encoder_config(G: Generator, layers: Sequence[int], hybrid: bool, input_size: int, units: Sequence[int],
                   widths: Sequence[int]) -> dict:
    """The HybridEncoder arguments for generator G, motion layers `layers` and the architecture settings (plain
    data: it is stored in checkpoints and rebuilds the encoder)."""
    table = G.ss_layers
    return {
        "input_size": int(input_size),
        "style_dim": int(G.style_dim),
        "wplus_levels": [level_of(wplus_row_resolution(r, G.resolution)) for r in range(G.n_latent)],
        "motion_levels": [level_of(table[i].resolution) for i in layers],
        "motion_dims": [int(table[i].channels) if hybrid else int(G.style_dim) for i in layers],
        "units": [int(u) for u in units],
        "widths": [int(w) for w in widths],
    }


def load_backbone(encoder: HybridEncoder, irse50_state: dict[str, Tensor]) -> int:
    """Initialise F from the ArcFace IR-SE50 (pSp's initialisation): its `input_layer.*` and `body.*` weights
    (strict for those keys). Returns the number of tensors loaded; ValueError when F is not IR-SE50 sized."""
    own = {k: v for k, v in encoder.state_dict().items() if k.startswith(("input_layer.", "body."))}
    theirs = {k: v for k, v in irse50_state.items() if k.startswith(("input_layer.", "body."))}
    missing = sorted(set(own) - set(theirs))
    wrong = sorted(k for k in own if k in theirs and own[k].shape != theirs[k].shape)
    if missing or wrong or set(theirs) - set(own):
        raise ValueError(f"the encoder's F is not IR-SE50 sized (model.encoder.units 3,4,14,3, widths 64,128,256,512), "
                         f"so the ArcFace weights do not fit: {len(missing)} missing, {len(wrong)} of another shape")
    encoder.load_state_dict(theirs, strict=False)
    return len(theirs)


class HybridDecoder:
    """Eq. 2-3 in torch: frames G(A(W_ID) + S_F) with gradients to W_ID and S_F (G itself frozen)."""

    def __init__(
        self,
        G: Generator,  # the pre-trained generator (its weights are not trained here)
        layers: Sequence[int],  # indices into G.ss_layers of the layers that carry S_F
        hybrid: bool = True,  # S_F in StyleSpace (the paper) | W+ offsets on the same layers ("w/o Hybrid")
        size: int | None = None,  # side of the returned frames (None: G's resolution)
    ):
        self.G, self.layers, self.hybrid = G, list(layers), bool(hybrid)
        self.size = int(size or G.resolution)
        table = G.ss_layers
        self.rows = [table[i].wplus_row for i in self.layers]
        # the affine map A_l of each motion layer (the W+ ablation adds its offsets before it)
        self.affines = [G.get_submodule(f"{table[i].name}.conv.modulation") for i in self.layers]
        for p in G.parameters():
            p.requires_grad_(False)
        G.eval()

    def styles(self, w_id: Tensor, motion: Sequence[Tensor] | None = None) -> list[Tensor]:
        """A(W_ID) + S_F as the list of per-layer StyleSpace codes (motion None: A(W_ID))."""
        styles = list(self.G.A(w_id))
        if motion is None:
            return styles
        if len(motion) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} motion codes (one per S_F layer), got {len(motion)}")
        for k, (i, m) in enumerate(zip(self.layers, motion)):
            if self.hybrid:
                styles[i] = styles[i] + m
            else:
                styles[i] = self.affines[k](w_id[:, self.rows[k]] + m)
        return styles

    def render_styles(self, styles: Sequence[Tensor]) -> Tensor:
        """StyleSpace codes -> frames [N, 3, size, size] (fixed noise; area-resized to `size`)."""
        out = self.G.synthesis_ss(styles)
        if out.shape[-1] != self.size:
            out = F.adaptive_avg_pool2d(out, self.size) if out.shape[-1] > self.size else \
                F.interpolate(out, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return out

    def __call__(self, w_id: Tensor, motion: Sequence[Tensor] | None = None) -> Tensor:
        """Eq. 3: G(A(W_ID) + S_F); with motion None, G(A(W_ID))."""
        return self.render_styles(self.styles(w_id, motion))


def concat_styles(parts: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """Several batches of StyleSpace codes as one (one generator call renders them all)."""
    return [torch.cat(layer, dim=0) for layer in zip(*parts)]
