"""ArcFace IR-SE50, the identity network of the paper's ID loss, as pixel2style2pixel (pSp) uses it.

The paper measures identity with the ArcFace IR-SE50 that pSp uses for its ID loss (pSp took the network and
its weights from TreB1eN/InsightFace_Pytorch). This module rebuilds that network in plain PyTorch so that
pSp's `model_ir_se50.pth` (a user-provided asset; see `load_irse50`) loads with `strict=True`.

Names
-----
Module and parameter names are pSp's `Backbone(input_size=112, num_layers=50, mode='ir_se')`:
- `input_layer.{0,1,2}`: Conv2d(3, 64, 3x3, no bias), BatchNorm2d(64), PReLU(64).
- `body.{i}`, i = 0..23 for 50 layers (stages of [3, 4, 14, 3] units, depths 64/128/256/512, the first unit
  of each stage has stride 2): `shortcut_layer` is MaxPool2d(1, stride) (no parameters) when the unit keeps
  its channel count, else `shortcut_layer.{0,1}` = Conv2d 1x1 (no bias), BatchNorm2d; `res_layer.{0..5}` =
  BatchNorm2d, Conv2d 3x3, PReLU, Conv2d 3x3 (stride), BatchNorm2d, SE module with `fc1`/`fc2` 1x1 convs
  (no bias, reduction 16), i.e. `body.{i}.res_layer.5.fc1.weight`.
- `output_layer.{0..4}`: BatchNorm2d(512), Dropout, Flatten, Linear(512*7*7, 512), BatchNorm1d(512)
  (affine, as pSp's IDLoss builds it: `output_layer.4.weight/bias` exist).
The forward returns L2-normalised 512-D embeddings (pSp's `l2_norm`).

Identity embedding and loss
---------------------------
`IdentityEncoder` does what pSp's `IDLoss.extract_feats` does to a 256x256 image in [-1, 1]: crop rows
35..222 and cols 32..219 (`x[:, :, 35:223, 32:220]`), AdaptiveAvgPool2d to 112x112, IR-SE50. The ID loss
itself (pSp's batch mean of 1 - <emb(y_hat), emb(y)>, target detached) is `pipeline.analysis.identity_loss`,
shared by every differentiable backend (pipeline/analysis/arcface.py wraps this network).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoint import state_dict_problems

EMBED_DIM = 512
# pSp's crop of a 256x256 aligned face (IDLoss.extract_feats: x[:, :, 35:223, 32:220]): 188x188 pixels.
CROP_SIZE = 256
CROP_ROWS = (35, 223)  # rows 35..222
CROP_COLS = (32, 220)  # cols 32..219
FACE_SIZE = 112  # the network's input size

# Bottleneck units per stage (pSp's get_blocks); stage depths are 64, 128, 256, 512.
_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
_DEPTHS = (64, 128, 256, 512)

ASSET_NAME = "arcface_ir_se50"


class Flatten(nn.Module):
    """[N, C, H, W] -> [N, C*H*W] (pSp's Flatten; it has no parameters, only its index in output_layer matters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


def l2_norm(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x / ||x||_2 along `dim` (pSp's l2_norm; the tiny floor only guards an all-zero vector)."""
    return x / torch.linalg.vector_norm(x, ord=2, dim=dim, keepdim=True).clamp_min(1e-12)


class SEModule(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc2(relu(fc1(avgpool(x))))) with 1x1 convs, no biases."""

    def __init__(
        self,
        channels: int,  # channels of the gated feature map
        reduction: int,  # bottleneck ratio of the gate (16 in IR-SE)
    ):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class BottleneckIR(nn.Module):
    """One IR unit: res_layer(x) + shortcut_layer(x); with `se`, the residual branch ends in an SE module."""

    def __init__(
        self,
        in_channel: int,  # input channels
        depth: int,  # output channels
        stride: int,  # spatial stride of the unit (2 on the first unit of a stage, else 1)
        se: bool = True,  # IR-SE (True) or plain IR (False)
    ):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)  # a strided subsample, no parameters
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        layers = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """ArcFace IR-SE backbone with pSp's parameter names; [N, 3, 112, 112] -> unit-norm [N, 512].

    The defaults build pSp's ID-loss network, `Backbone(112, 50, mode='ir_se', drop_ratio=0.6)`, whose
    state dict is `model_ir_se50.pth`. Input: RGB in [-1, 1] (what pSp feeds it: generator outputs).
    """

    def __init__(
        self,
        input_size: int = 112,  # input side in pixels: 112 (pSp) or 224
        num_layers: int = 50,  # depth: 50 (pSp), 100 or 152
        mode: str = "ir_se",  # 'ir_se' (with SE modules, pSp) or 'ir'
        drop_ratio: float = 0.6,  # dropout before the embedding Linear (pSp's IDLoss: 0.6; inactive in eval)
        affine: bool = True,  # learnable affine in the final BatchNorm1d (pSp's IDLoss: True)
    ):
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError(f"input_size must be 112 or 224, got {input_size}")
        if num_layers not in _UNITS:
            raise ValueError(f"num_layers must be one of {sorted(_UNITS)}, got {num_layers}")
        if mode not in ("ir", "ir_se"):
            raise ValueError(f"mode must be 'ir' or 'ir_se', got {mode!r}")
        self.input_size = input_size
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.PReLU(64),
        )
        units = []
        in_channel = 64
        for depth, n_units in zip(_DEPTHS, _UNITS[num_layers]):
            units.append(BottleneckIR(in_channel, depth, 2, se=mode == "ir_se"))
            units.extend(BottleneckIR(depth, depth, 1, se=mode == "ir_se") for _ in range(n_units - 1))
            in_channel = depth
        self.body = nn.Sequential(*units)
        side = input_size // 16  # four stride-2 stages: 112 -> 7, 224 -> 14
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_ratio),
            Flatten(),
            nn.Linear(512 * side * side, EMBED_DIM),
            nn.BatchNorm1d(EMBED_DIM, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"IRSE50 expects [N, 3, {self.input_size}, {self.input_size}], got {list(x.shape)}")
        x = self.output_layer(self.body(self.input_layer(x)))
        return l2_norm(x)


def crop_face(images: torch.Tensor) -> torch.Tensor:
    """pSp's crop of a 256x256 aligned face: rows 35..222, cols 32..219 -> [N, C, 188, 188]."""
    if images.shape[-2:] != (CROP_SIZE, CROP_SIZE):
        raise ValueError(f"crop_face expects {CROP_SIZE}x{CROP_SIZE} images, got {list(images.shape)}")
    return images[:, :, CROP_ROWS[0]:CROP_ROWS[1], CROP_COLS[0]:CROP_COLS[1]]


class IdentityEncoder(nn.Module):
    """Frozen identity embedder for generator outputs: [N, 3, H, W] in [-1, 1] -> unit-norm [N, 512].

    As pSp's IDLoss.extract_feats: a 256x256 image is cropped to rows 35..222, cols 32..219 (`crop_face`),
    average-pooled to 112x112 (AdaptiveAvgPool2d) and embedded by IR-SE50. Images of any other size are
    first resized to 256x256 (bilinear, antialias=True, align_corners=False; a non-square image is
    stretched), so the crop picks the same face region of an FFHQ-aligned frame at any resolution; pSp itself
    only ever sees 256x256 here.

    The network is in eval mode and frozen (requires_grad False on every parameter) and stays in eval mode
    even if a parent module calls `.train()`; the embedding is still differentiable w.r.t. the images.
    """

    def __init__(
        self,
        net: IRSE50 | None = None,  # the IR-SE50 to wrap (e.g. from load_irse50); None: randomly initialised
    ):
        super().__init__()
        self.net = net if net is not None else IRSE50()
        self.face_pool = nn.AdaptiveAvgPool2d((FACE_SIZE, FACE_SIZE))
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "IdentityEncoder":
        return super().train(False)  # always eval: BatchNorm running stats and no dropout

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, 3, 112, 112]: resize to 256 if needed, pSp's crop, adaptive average pool."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {list(images.shape)}")
        if images.shape[-2:] != (CROP_SIZE, CROP_SIZE):
            images = F.interpolate(
                images, size=(CROP_SIZE, CROP_SIZE), mode="bilinear", align_corners=False, antialias=True
            )
        return self.face_pool(crop_face(images))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm identity embeddings [N, 512] of images [N, 3, H, W] in [-1, 1]."""
        return self.net(self.preprocess(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)


def load_irse50(path: str | Path) -> IRSE50:
    """An IRSE50 in eval mode with pSp's `model_ir_se50.pth` state dict loaded strictly (on the CPU).

    Raises FileNotFoundError when the file is missing and ValueError when its state dict does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ArcFace IR-SE50 weights not found: {path}. This is pSp's 'model_ir_se50.pth' (the 'IR-SE50 Model' "
            f"row of the pretrained models table in the eladrich/pixel2style2pixel README; TreB1eN's "
            f"InsightFace_Pytorch IR-SE50). Download it yourself (nothing is downloaded at run time) and put it "
            f"at the path given in params.yaml assets.{ASSET_NAME}."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(state).__name__}")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from a DataParallel wrapper
    with torch.device("meta"):  # names and shapes only: no memory, no random init
        net = IRSE50()
    expected = net.state_dict()
    # Files saved before PyTorch 0.4.1 have no BatchNorm `num_batches_tracked` counters (PyTorch's own
    # load_state_dict tolerates that; the counter is unused in eval mode): fill them rather than reject.
    state = dict(state)
    for k in expected:
        if k.endswith(".num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)
    problems = state_dict_problems(state, expected)
    if problems:
        raise ValueError(f"{path} is not an IR-SE50 (pSp model_ir_se50.pth) state dict: " + "; ".join(problems))
    net = net.to_empty(device="cpu")  # every parameter and buffer is overwritten by the strict load below
    net.load_state_dict(state, strict=True)
    return net.eval()
