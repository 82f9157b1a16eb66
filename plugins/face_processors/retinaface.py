"""RetinaFace (MobileNet-0.25) face detector: boxes and five landmarks.

The architecture follows biubug6/Pytorch_Retinaface with ``cfg_mnet`` (MobileNetV1 x0.25 body,
FPN, SSH, class/box/landmark heads on three levels) so that the released
``mobilenet0.25_Final.pth`` loads with ``strict=True``. RetinaFace alone fires on some animal and
cartoon faces with high scores, so by default each detection is confirmed by MTCNN (whose bundled
model separates human faces from those much better); ``verify: none`` turns that off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import ipfacediff
from ipfacediff.interfaces import FaceDetection
from ipfacediff.plugins.face_processors._landmarks import LandmarkFaceProcessor
from ipfacediff.runtime import models
from ipfacediff.runtime.face import box_iou


def _conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True)
    )


def _conv_bn_no_relu(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, 1, 1, bias=False), nn.BatchNorm2d(oup))


def _conv_bn1x1(inp: int, oup: int, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True)
    )


def _conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(leaky, inplace=True),
    )


class _MobileNetV1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1),
            _conv_dw(8, 16, 1),
            _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2),
            _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class _SSH(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        leaky = 0.1 if cout <= 64 else 0.0
        self.conv3X3 = _conv_bn_no_relu(cin, cout // 2)
        self.conv5X5_1 = _conv_bn(cin, cout // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn_no_relu(cout // 4, cout // 4)
        self.conv7X7_2 = _conv_bn(cout // 4, cout // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn_no_relu(cout // 4, cout // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv3X3(x)
        b1 = self.conv5X5_1(x)
        b = self.conv5X5_2(b1)
        c = self.conv7x7_3(self.conv7X7_2(b1))
        return F.relu(torch.cat([a, b, c], 1))


class _FPN(nn.Module):
    def __init__(self, cins: list[int], cout: int) -> None:
        super().__init__()
        leaky = 0.1 if cout <= 64 else 0.0
        self.output1 = _conv_bn1x1(cins[0], cout, leaky)
        self.output2 = _conv_bn1x1(cins[1], cout, leaky)
        self.output3 = _conv_bn1x1(cins[2], cout, leaky)
        self.merge1 = _conv_bn(cout, cout, leaky=leaky)
        self.merge2 = _conv_bn(cout, cout, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))
        return [o1, o2, o3]


class _Head(nn.Module):
    def __init__(self, cin: int, k: int, anchors: int = 2) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(cin, anchors * k, 1)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.k)


class RetinaFaceNet(nn.Module):
    """RetinaFace with a MobileNet-0.25 body (cfg_mnet)."""

    min_sizes = [[16, 32], [64, 128], [256, 512]]
    steps = [8, 16, 32]
    variance = (0.1, 0.2)

    def __init__(self) -> None:
        super().__init__()
        self.body = _MobileNetV1()
        self.fpn = _FPN([64, 128, 256], 64)
        self.ssh1, self.ssh2, self.ssh3 = _SSH(64, 64), _SSH(64, 64), _SSH(64, 64)
        self.ClassHead = nn.ModuleList([_Head(64, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(64, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(64, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.fpn(self.body(x))
        feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], 1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], 1)
        lm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], 1)
        return loc, F.softmax(conf, -1), lm

    def priors(self, h: int, w: int) -> torch.Tensor:
        anchors = []
        for k, step in enumerate(self.steps):
            fh, fw = -(-h // step), -(-w // step)
            for i, j in product(range(fh), range(fw)):
                for ms in self.min_sizes[k]:
                    anchors.append([(j + 0.5) * step / w, (i + 0.5) * step / h, ms / w, ms / h])
        return torch.tensor(anchors, dtype=torch.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    import torchvision

    keep = torchvision.ops.nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(), thresh)
    return keep.tolist()


class RetinaFace(LandmarkFaceProcessor):
    """RetinaFace MobileNet-0.25 (boxes + 5 landmarks), MTCNN-verified by default."""

    description = "RetinaFace MobileNet-0.25: boxes + 5 landmarks; detections confirmed by MTCNN unless verify=none"

    @dataclass
    class Params:
        threshold: float = field(default=0.9, metadata={"range": (0.0, 1.0), "help": "minimum RetinaFace score"})
        nms_threshold: float = field(default=0.4, metadata={"range": (0.0, 1.0)})
        max_side: int = field(
            default=640,
            metadata={"range": (64, 4096), "help": "frames are downscaled to this longest side for detection"},
        )
        verify: Literal["mtcnn", "none"] = field(
            default="mtcnn", metadata={"help": "confirm each face with MTCNN (rejects animals and cartoons)"}
        )
        verify_threshold: float = field(
            default=0.99, metadata={"range": (0.0, 1.0), "help": "minimum MTCNN probability when verifying"}
        )
        zoom: float = field(default=0.45, metadata={"range": (0.1, 1.0), "help": "face size in the editing crop"})
        feather: float = field(
            default=0.1, metadata={"range": (0.0, 0.5), "help": "paste-back border feather, fraction of the crop"}
        )
        weights: str | None = field(default=None, metadata={"help": "explicit path of mobilenet0.25_Final.pth"})

    test_params = {"verify": "none"}

    def __init__(self, params: RetinaFace.Params | None = None) -> None:
        super().__init__(params)
        self.net = RetinaFaceNet()
        sd = torch.load(models.resolve("retinaface", self.params.weights), map_location="cpu", weights_only=True)
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        self.net.load_state_dict(sd, strict=True)
        self.net.eval()
        self._verifier = None
        self._prior_cache: dict[tuple[int, int], torch.Tensor] = {}

    def _raw_detect(self, frame: np.ndarray) -> list[FaceDetection]:
        h0, w0 = frame.shape[:2]
        scale = min(1.0, self.params.max_side / max(h0, w0))
        img = frame
        if scale < 1.0:
            import cv2

            img = cv2.resize(
                frame, (max(1, round(w0 * scale)), max(1, round(h0 * scale))), interpolation=cv2.INTER_AREA
            )
        h, w = img.shape[:2]
        x = torch.from_numpy(img[..., ::-1].astype(np.float32) - np.array([104, 117, 123], np.float32)).permute(
            2, 0, 1
        )[None]
        x = x.to(self.device)
        with torch.inference_mode():
            loc, conf, lms = self.net(x)
        if (h, w) not in self._prior_cache:
            self._prior_cache[(h, w)] = self.net.priors(h, w)
        pri = self._prior_cache[(h, w)]
        loc, conf, lms = loc[0].cpu(), conf[0, :, 1].cpu(), lms[0].cpu()
        v0, v1 = self.net.variance
        centres = pri[:, :2] + loc[:, :2] * v0 * pri[:, 2:]
        sizes = pri[:, 2:] * torch.exp(loc[:, 2:] * v1)
        boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1) * torch.tensor([w, h, w, h]) / scale
        lm = (pri[:, None, :2] + lms.reshape(-1, 5, 2) * v0 * pri[:, None, 2:]) * torch.tensor([w, h]) / scale
        keep = conf > self.params.threshold
        boxes, scores, lm = boxes[keep].numpy(), conf[keep].numpy(), lm[keep].numpy()
        if len(scores) == 0:
            return []
        order = _nms(boxes, scores, self.params.nms_threshold)
        return [FaceDetection(boxes[i], float(scores[i]), lm[i], "retinaface") for i in order]

    def detect(self, frame: np.ndarray) -> list[FaceDetection]:
        dets = self._raw_detect(frame)
        if not dets or self.params.verify == "none":
            return dets
        if self._verifier is None:
            self._verifier = self.component(
                "face_processor", self.params.verify, {"threshold": self.params.verify_threshold}
            )
            self._verifier.to(self.device)
        confirmed = self._verifier.detect(frame)
        return [d for d in dets if any(box_iou(d.box, c.box) > 0.3 for c in confirmed)]

    def to(self, device):  # type: ignore[override]
        super().to(device)
        if self._verifier is not None:
            self._verifier.to(device)
        return self


@ipfacediff.hookimpl
def register_face_processors(register):
    register(RetinaFace, name="retinaface")
