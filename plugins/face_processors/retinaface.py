"""RetinaFace (MobileNet-0.25) face detector: boxes and five landmarks.

The architecture follows biubug6/Pytorch_Retinaface with ``cfg_mnet`` (MobileNetV1 x0.25 body,
FPN, SSH, class/box/landmark heads on three levels) so that the released
``mobilenet0.25_Final.pth`` loads with ``strict=True``. RetinaFace alone fires on some animal and
cartoon faces with high scores, so by default each detection is confirmed by MTCNN (whose bundled
model separates human faces from those much better); ``verify: none`` turns that off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

#: mean grey-level change of a 32x32 thumbnail between two frames above which tracking takes a scene cut
#: (the face is then searched in the whole frame and confirmed again)
SCENE_CUT = 30.0


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
        """The anchors ``[N, 4]`` (centre x, y, width, height, as fractions of the image) of an ``h`` x ``w``
        input, level by level, row by row, then by anchor size (the order of the heads' outputs)."""
        levels = []
        for k, step in enumerate(self.steps):
            fh, fw = -(-h // step), -(-w // step)
            sizes = np.asarray(self.min_sizes[k], np.float64)
            i, j, ms = np.meshgrid(np.arange(fh), np.arange(fw), sizes, indexing="ij")
            levels.append(np.stack([(j + 0.5) * step / w, (i + 0.5) * step / h, ms / w, ms / h], -1).reshape(-1, 4))
        return torch.from_numpy(np.concatenate(levels).astype(np.float32))


def _nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """Greedy non-maximum suppression: the boxes kept, best score first (a box is dropped when it
    overlaps a better kept one by more than ``thresh`` IoU)."""
    order = list(np.argsort(-scores, kind="stable"))
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    keep: list[int] = []
    while order:
        i, rest = order[0], np.asarray(order[1:], int)
        keep.append(int(i))
        if not len(rest):
            break
        w = (np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])).clip(0)
        h = (np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])).clip(0)
        iou = w * h / np.maximum(area[i] + area[rest] - w * h, 1e-9)
        order = [int(j) for j in rest[iou <= thresh]]
    return keep


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
        confirm: Literal["track", "frame"] = field(
            default="track",
            metadata={
                "help": "when tracking a clip, confirm a face with the verifier when its track starts or is lost "
                "(track; a face that continues the track is not confirmed again) or on every frame (frame)"
            },
        )
        reconfirm: int = field(
            default=50,
            metadata={
                "range": (0, 100000),
                "help": "confirm=track: confirm the tracked face again every this many frames (0: never)",
            },
        )
        track_region: float = field(
            default=2.0,
            metadata={
                "range": (0.0, 10.0),
                "help": "when tracking, search the next frame in a square this many face sizes wide around the "
                "previous face (0: the whole frame)",
            },
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
        self._unconfirmed = 0  # frames tracked since the last confirmation
        self._thumb: np.ndarray | None = None  # the last tracked frame, 32x32 grey (a scene cut confirms afresh)

    def _raw_detect(self, frame: np.ndarray, scale: float | None = None) -> list[FaceDetection]:
        """RetinaFace's faces in ``frame`` downscaled by ``scale`` (default: to ``max_side``)."""
        h0, w0 = frame.shape[:2]
        scale = min(1.0, self.params.max_side / max(h0, w0)) if scale is None else min(1.0, scale)
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
            if len(self._prior_cache) >= 64:  # tracked squares come in many sizes
                self._prior_cache.clear()
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

    def detect_next(self, frame: np.ndarray, previous: FaceDetection | None) -> list[FaceDetection]:
        """Tracking: the face that continues ``previous``, searched in a square around it (``track_region``)
        and not confirmed again (``confirm=track``, until ``reconfirm`` frames have passed); the whole
        frame, confirmed, when a track starts, after a scene cut (the frame, 32x32 grey, differs from the
        last one by more than ``SCENE_CUT`` grey levels on average) or when the face is not found there."""
        import cv2

        p = self.params
        thumb = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
        thumb, last = thumb.astype(np.float32), self._thumb
        self._thumb = thumb
        cut = last is None or float(np.abs(thumb - last).mean()) > SCENE_CUT
        due = p.verify != "none" and (
            cut or p.confirm == "frame" or (p.reconfirm and self._unconfirmed >= p.reconfirm)
        )
        if previous is None or p.track_region <= 0 or due:
            self._unconfirmed = 0
            return self.detect(frame)
        h, w = frame.shape[:2]
        x0, y0, x1, y1 = np.asarray(previous.box, np.float64)
        half = 0.5 * p.track_region * max(x1 - x0, y1 - y0)
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        rx0, ry0 = int(max(0, np.floor(cx - half))), int(max(0, np.floor(cy - half)))
        rx1, ry1 = int(min(w, np.ceil(cx + half))), int(min(h, np.ceil(cy + half)))
        found = []
        if rx1 - rx0 >= 16 and ry1 - ry0 >= 16:
            scale = min(1.0, p.max_side / max(h, w))  # the whole frame's detection scale: the same landmarks
            for d in self._raw_detect(np.ascontiguousarray(frame[ry0:ry1, rx0:rx1]), scale):
                moved = FaceDetection(d.box + [rx0, ry0, rx0, ry0], d.score, d.landmarks + [rx0, ry0], d.source)
                if box_iou(moved.box, previous.box) > 0.3:
                    found.append(moved)
        if not found:  # lost: the whole frame, confirmed
            self._unconfirmed = 0
            return self.detect(frame)
        self._unconfirmed += 1
        return found

    def to(self, device):  # type: ignore[override]
        """Also builds the verifier (with the models: a job's ``load_models``, not its first frame)."""
        super().to(device)
        if self._verifier is None and self.params.verify != "none" and self._build is not None:
            self._verifier = self.component(
                "face_processor", self.params.verify, {"threshold": self.params.verify_threshold}
            )
        if self._verifier is not None:
            self._verifier.to(device)
        return self


@ipfacediff.hookimpl
def register_face_processors(register):
    register(RetinaFace, name="retinaface")
