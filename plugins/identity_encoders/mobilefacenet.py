"""MobileFaceNet identity encoder (ArcFace-trained, 128-d), differentiable.

Layout of foamliu/MobileFaceNet so the released weights load with ``strict=True``. The embedding is
``normalise(f(crop) + f(flip(crop)))`` on 112x112 ArcFace-aligned crops, ImageNet-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import ipfacediff
from ipfacediff.plugins.identity_encoders._embed import CropEncoder
from ipfacediff.runtime import models


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class _DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.pointwise(F.relu(self.bn1(self.depthwise(x))))))


class _GDConv(nn.Module):
    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c, c, k, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.depthwise(x))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [] if expand == 1 else [_ConvBNReLU(cin, hidden, k=1)]
        layers += [
            _ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileFaceNetNet(nn.Module):
    SETTING = [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]  # t, c, n, s

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _ConvBNReLU(3, 64, stride=2)
        self.dw_conv = _DepthwiseSeparable(64, 64)
        blocks, cin = [], 64
        for t, c, n, s in self.SETTING:
            for i in range(n):
                blocks.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*blocks)
        self.conv2 = _ConvBNReLU(cin, 512, k=1)
        self.gdconv = _GDConv(512, 7)
        self.conv3 = nn.Conv2d(512, 128, 1)
        self.bn = nn.BatchNorm2d(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.features(self.dw_conv(self.conv1(x))))
        return self.bn(self.conv3(self.gdconv(x))).flatten(1)


_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class MobileFaceNet(CropEncoder):
    """MobileFaceNet (ArcFace loss, refined MS-Celeb-1M), 128-d embeddings."""

    description = "MobileFaceNet (ArcFace-trained, 128-d) on 112x112 aligned crops; differentiable"
    input_size = 112
    embedding_dim = 128

    @dataclass
    class Params:
        flip: bool = field(default=True, metadata={"help": "add the embedding of the mirrored crop"})
        weights: str | None = field(default=None, metadata={"help": "explicit path of mobilefacenet.pt"})

    def __init__(self, params: MobileFaceNet.Params | None = None) -> None:
        super().__init__(params)
        self.net = MobileFaceNetNet()
        sd = torch.load(models.resolve("mobilefacenet", self.params.weights), map_location="cpu", weights_only=True)
        self.net.load_state_dict(sd, strict=True)
        self.net.eval().requires_grad_(False)
        self.mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(_STD).view(1, 3, 1, 1)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


@ipfacediff.hookimpl
def register_identity_encoders(register):
    register(MobileFaceNet, name="mobilefacenet")
