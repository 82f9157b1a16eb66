"""Propagator ``layered``: the keyframes' edit split into parts that move differently, each carried
by its own motion, on the source frames' motion.

Each keyframe's edit is decomposed into

* a **geometric** part: where the edit displaces the face rather than recolouring it (a smile, a
  slimmer jaw), the displacement field from the unedited to the edited keyframe (optical flow between
  the two), kept where warping the unedited keyframe by it explains the edit; it is carried to every
  frame as a field and applied to that frame's own pixels, so a frame keeps its own teeth, eyes and
  light under the edited shape;
* what remains, an intensity **residual**, split per connected part into
  - **rigid** parts (an accessory: eyeglasses, a hat, an earring): moved by the head's similarity
    motion, fitted robustly (RANSAC) to the optical flow over the face, so they do not bend when the
    eyes close or the mouth opens, and not hidden where the skin under them changes;
  - **surface** parts (paint, make-up, lip colour, skin, beard): moved by the skin, a confidence-weighted
    smoothing of the optical flow around the head's motion (flow noise on smooth skin is averaged out,
    the motion of the jaw and lips is kept); where the frame shows what no keyframe saw (a mouth or
    eyes opening, a turning head: the source motion does not explain the source pixels) the frame
    keeps its own source pixels. With a keyframe on each side, the one whose motion explains a pixel
    worse counts less there (``compete``): lips that part over teeth the other keyframe saw keep no
    lip colour even where lips and teeth are too alike for the photometric test alone.

Each part is carried as the local linear change the keyframe's edit makes to its source
(``opacity``): how much of the source shows through each edited pixel is fitted over the edited pixels
around it (a tint or a lip colour keeps the skin's texture, an opaque rim or paint replaces it), and a
frame gets the edit's colour where the edit hides the source, not the keyframe's difference added to
its own pixel: a shadow or light that passes over the skin shows through a lip colour only as much as
the skin does.

With a keyframe on each side, a frame weighs them by time and by how well its motion to each explains
it (``trust``): a keyframe the frame cannot be matched to (a fast move, a blur) gives way to the other.

Which parts are rigid is learnt from the keyframes: with a keyframe on each side, each keyframe's edit is
predicted from the other keyframe both ways (rigid and surface), and each connected part of it takes the
motion that predicts it better (by more than ``decide`` grey levels); a part the keyframes cannot tell
apart takes ``prior``, except that (with one keyframe, and with two unless the skin predicts it better by
more than ``EYEWEAR_DOUBT``) an edit that goes all the way round an eye in thin strokes (eyeglasses' rims
and bridge; or most of the way, where the rims run into a paint that closes the ring), or that fills the
eye out to a lens that ends round it (sunglasses; make-up leaves the open eye clear), moves with the head
near the eye (``eyewear``). With ``region``, each neighbourhood of that many face widths chooses instead
(eyeglasses that touch a skin paint are then not one part with it). Motion is estimated directly from
each frame to its keyframes (a frame's result depends on it and its keyframes alone, so chunked
propagation equals whole-clip). Where nothing was edited the output is the source, byte for byte. It
follows no landmark model: the face box bounds the head-motion fit, and where the face processor's
landmarks (RetinaFace's five points) say the face moved by more than ``PRIOR_MOTION`` face widths, the
flow is also found after that similarity, and the one that explains the face's pixels better is used (a
head that rises by most of its size between a frame and its keyframe). The motion is estimated over the
face and its surroundings; the edit is moved and blended only in the window its keyframes' edits can
land in (:meth:`_Motion.reach`), the rest of the frame is its source.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

import ipfacediff
from ipfacediff.interfaces import PropagationInput, Propagator
from ipfacediff.runtime.flow import grid, optical_flow, warp_back
from ipfacediff.runtime.tokens import neighbour_keys

#: grey levels below which a residual pixel counts as unedited (parts are the connected rest)
EDITED_LEVEL = 6.0

#: grey levels of photometric error under which a pixel's flow is trusted (head-motion fit, skin smoothing)
TRUSTED_LEVEL = 8.0

#: the box a frame is worked in: where its keyframes' edits land, padded by this many face widths
LANDING_PAD = 0.5

#: grey levels by which one motion must predict a pixel's close neighbourhood (1.5 px) better for that
#: neighbourhood to choose its motion, whatever its region says
CLEAR_GAIN = 24.0

#: face widths the landmarks must say the face moved by for the flow to be found after that motion
PRIOR_MOTION = 0.1

#: mean photometric error over the face (grey levels) above which the flow found after the landmarks'
#: motion is checked against the flow found without it (landmarks that went wrong)
PRIOR_DOUBT = TRUSTED_LEVEL

#: eye distances: the ring around an eye's landmark that an edit must go all the way round (from this
#: radius to ``EYEWEAR_REACH``) to be taken for eyewear with one keyframe; eye make-up stays on the lid
EYEWEAR_RING = 0.15

#: eye distances from an eye's landmark within which eyewear's edit moves with the head (with ``eyewear``)
EYEWEAR_REACH = 0.8

#: eye distances: the widest edit stroke counted as eyewear's rims (a paint is wider)
EYEWEAR_THIN = 0.06

#: the least share of the edit within ``EYEWEAR_REACH`` of an eye that its thin strokes must make (else it is
#: a wide edit, whose edges ring the eye)
EYEWEAR_SHARE = 0.5

#: the least share of the rays round an eye that thin strokes must cross where the rest of the ring is a wide
#: edit that the rims run into (eyeglasses over a painted cheek or a beard: the rims' bottoms merge into the
#: paint, which is no longer thin there, and the paint is most of the edit near the eye); with the eye itself
#: clear of any edit, such strokes are eyewear too (a rim with its bottom quarter in the paint crosses about
#: three quarters of the rays; the shared clips' paint+glasses, 0.73-0.83). 0: not
EYEWEAR_MERGED = 0.7

#: grey levels: with two keyframes, eyewear (``eyewear``) moves with the head unless moving the other
#: keyframe's edit with the skin predicts it better by more than this (where both keyframes have the eyes open
#: and the head still, both motions predict it about as well: the choice would be noise). Below 0: the
#: keyframes choose, as for any part
EYEWEAR_DOUBT = 1.0

#: eye distances from an eye's landmark that a filled lens (sunglasses: the edit covers the eye) must cover on
#: every ray (98% of them); an edit of the eye alone (its colour, the iris) is smaller. 0: filled lenses are
#: not eyewear
EYEWEAR_LENS = 0.2

#: eye distances: half the widest hole in a filled lens that is closed before the lens is looked for (a dark
#: pupil that a dark tint hardly changes, about 0.1 wide); an open eye ringed by make-up (0.15-0.2 high) is a
#: wider hole, and stays one
EYEWEAR_HOLE = 0.05

#: the least share of the rays round an eye on which a filled lens must end within ``EYEWEAR_REACH`` (the edit
#: stops and stays clear out to it); an edit of the whole face goes on past it on most rays, the lens's bottom
#: may run into a paint
EYEWEAR_BOUNDED = 0.5

#: headwear (a hat, a headband, earrings: ``headwear``): the least share of a connected part's pixels that lie off
#: the face (outside the ellipse inscribed in the face box), and the most that the part's fine detail may follow
#: the source's under it (the correlation of the two, luma less its blur: a hair colour keeps the hair's strands,
#: near 1; an object drawn over the frame has its own, near 0)
HEADWEAR_OFF = 0.5
HEADWEAR_KEEPS = 0.5
#: headwear: the most pixels a part may change, in face boxes (a wide hat, about 1; a new background, many)
HEADWEAR_AREA = 1.5

#: face widths: the neighbourhood over which a displacement must explain most of what the edit changed to be
#: carried as one (``geometric``); 0: wherever it explains the pixel
GEOMETRIC_AREA = 0.08

#: the least share of the changed pixels around (``GEOMETRIC_AREA``) that a displacement must explain: a smile
#: explains nearly all of them (a smile with lip colour, 0.98 and more); a dark lens, whose top a brow pulled
#: down matches, 0.2-0.25
GEOMETRIC_SHARE = 0.5

#: px (and a quarter of the displacement's length, times this): how far the flow from the unedited keyframe into
#: the edited one, taken where a displacement points, may miss the pixel it started from for the displacement to
#: count. A shape edit moves the face's content, so the flow back returns; a recolour that a shifted neighbour
#: happens to match (blonde hair that the pale background beside it resembles) points at pixels that match
#: themselves in the edited keyframe (flow back near 0). 0: no such test
GEOMETRIC_RETURN = 2.0

#: px: the width of the neighbourhood over which an edited pixel's opacity is estimated (``opacity``)
OPACITY_SIGMA = 2.0

#: grey levels squared: how much source texture a neighbourhood needs before its opacity is believed
#: (below it the edit counts as a fixed difference: the estimate leans towards no opacity)
OPACITY_EPS = 16.0

#: eye distances: the upper face, whose flow the head's similarity (what rigid parts follow) is also fitted
#: to: this far beside the eyes, above them and below the nose tip. The skull's rigid part, where eyeglasses
#: rest; the jaw and the mouth, which move on their own when a face talks or grimaces, are left out.
HEAD_BAND = (0.7, 0.6, 0.2)

#: px (full size): the upper face's fit keeps the flow within this of it (RANSAC); 0: the whole face's fit
HEAD_INLIER = 2.0

#: px (full size): the upper face's similarity replaces the whole face's where the two put the eyes or the
#: nose further apart than this (the lower face moved on its own); closer, the whole face's, fitted to more
#: of the flow, is steadier
HEAD_GAP = 2.0

#: face widths: the scale over which a change of light is taken out of the photometric error before it
#: tells which pixels a keyframe saw (``disocclusion``); 0: not
LIGHT_SIGMA = 0.15

#: the largest change of light taken out (a factor)
LIGHT_GAIN = 2.0


def _peak(x: np.ndarray) -> np.ndarray:
    """``|x|`` largest over the channels (the last axis): what ``np.abs(x).max(-1)`` gives, faster."""
    a = np.abs(x)
    return np.maximum.reduce([a[..., c] for c in range(a.shape[-1])])


def _mean_abs(x: np.ndarray) -> np.ndarray:
    """``|x|`` averaged over the channels (the last axis), float32."""
    a = np.abs(x.astype(np.float32, copy=False))
    return sum(a[..., c] for c in range(a.shape[-1])) / np.float32(a.shape[-1])


def _crossed(mask: np.ndarray, px: np.ndarray, py: np.ndarray, inside: np.ndarray) -> float:
    """The share of the rays (rows of the pixel positions ``px``, ``py``; ``inside``: those in the image) that
    cross ``mask``."""
    hit = np.zeros_like(inside)
    hit[inside] = mask[py[inside], px[inside]]
    return float(hit.any(1).mean())


def _over(part: tuple, frame: np.ndarray) -> np.ndarray:
    """What a carried part (the edit, and how much of the source it hides or None) changes on ``frame``."""
    edit, hides = part
    return edit if hides is None else edit - hides * frame


def _blur_wide(x: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of the 2-d ``x`` at a ``sigma`` of many pixels, worked out on a grid coarse enough that
    the blur there spans about 2 cells, then brought back by linear interpolation: what the blur keeps is
    smooth at that scale, and a direct blur at 20-30 px cost a fifth of the whole carry at 720p."""
    step = int(sigma // 2)
    if step < 2:
        return cv2.GaussianBlur(x, (0, 0), sigma)
    h, w = x.shape[:2]
    coarse = cv2.resize(x, (max(1, round(w / step)), max(1, round(h / step))), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(coarse, (0, 0), sigma / step), (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass
class _Motion:
    """Motion from one frame to one keyframe (pixel -> its place in the keyframe)."""

    rigid: np.ndarray  # the head's similarity, ``[2, 3]``
    surface: np.ndarray  # smoothed flow around the similarity, ``[H, W, 2]``
    seen: np.ndarray  # float [H, W]: 1 where the keyframe sees this pixel, 0 where it is disoccluded
    err: np.ndarray | None = None  # float [H, W]: the flow's photometric error (grey levels; None: not known)

    def move_rigidly(self, img: np.ndarray, window=None, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
        """``img`` (in the keyframe; ``origin``: its corner there) sampled where the head's similarity puts
        each pixel of the frame (of its ``window`` ``(x0, y0, x1, y1)`` alone, if given)."""
        h, w = self.seen.shape
        m = self.rigid
        if window is not None or origin != (0, 0):
            x0, y0, x1, y1 = (0, 0, w, h) if window is None else window
            m = np.hstack([m[:, :2], (m[:, :2] @ [x0, y0] + m[:, 2] - origin)[:, None]])
            w, h = x1 - x0, y1 - y0
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        return cv2.warpAffine(img, m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)

    def reach(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
        """The box of the frame's pixels that either motion fetches from the keyframe's ``box`` (``x0, y0,
        x1, y1``, where an edit is): outside it, moving that edit changes nothing. A side of ``box`` on
        the keyframe's edge reaches past it (warps replicate the border). None where nothing lands."""
        h, w = self.seen.shape
        x0, y0, x1, y1 = box
        big = 4.0 * (w + h)
        # a bilinear sample at t reads pixels floor(t) and floor(t) + 1: a pixel of [x0, x1) is read for
        # t in (x0 - 1, x1), widened by a pixel for the warps' fixed-point coordinates
        lo_x, hi_x = (-big if x0 <= 0 else x0 - 2.0), (big if x1 >= w else x1 + 1.0)
        lo_y, hi_y = (-big if y0 <= 0 else y0 - 2.0), (big if y1 >= h else y1 + 1.0)
        g = grid(h, w)
        tx, ty = g[..., 0] + self.surface[..., 0], g[..., 1] + self.surface[..., 1]
        hit = (tx > lo_x) & (tx < hi_x) & (ty > lo_y) & (ty < hi_y)
        cols, rows = np.flatnonzero(hit.any(0)), np.flatnonzero(hit.any(1))
        boxes = [] if not len(cols) else [(cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)]
        inv = cv2.invertAffineTransform(self.rigid)
        corners = np.array([[lo_x, lo_y], [hi_x, lo_y], [lo_x, hi_y], [hi_x, hi_y]]).clip(-big, big)
        back = corners @ inv[:, :2].T + inv[:, 2]
        bx0, by0 = np.floor(back.min(0)).astype(int) - 1
        bx1, by1 = np.ceil(back.max(0)).astype(int) + 2
        if bx1 > 0 and by1 > 0 and bx0 < w and by0 < h:
            boxes.append((bx0, by0, bx1, by1))
        if not boxes:
            return None
        b = np.array(boxes)
        return (
            max(0, int(b[:, 0].min())),
            max(0, int(b[:, 1].min())),
            min(w, int(b[:, 2].max())),
            min(h, int(b[:, 3].max())),
        )


class Layered(Propagator):
    """Geometric, rigid and surface parts of each keyframe's edit, each carried by its own motion."""

    description = (
        "edit split into a displacement field, rigid accessories (head similarity) and surface parts "
        "(smoothed optical flow, disocclusions left as the source); chosen per part from the keyframes"
    )
    space = "pixels"
    needs = ("source_pixels", "edited_pixels", "reconstructed_pixels")

    @dataclass
    class Params:
        flow: Literal["dis", "dis-fast", "farneback"] = field(
            default="dis", metadata={"help": "OpenCV optical flow on the source frames (dis-fast: DIS's fast preset)"}
        )
        prior: Literal["surface", "rigid"] = field(
            default="surface",
            metadata={"help": "motion of a part the keyframes cannot tell apart (or with one keyframe)"},
        )
        decide: float = field(
            default=0.0,
            metadata={
                "range": (0.0, 255.0),
                "help": "grey levels one motion must predict a keyframe's part better by to be chosen",
            },
        )
        region: float = field(
            default=0.0,
            metadata={
                "range": (0.0, 1.0),
                "help": "0: each connected part of a keyframe's edit chooses its motion; else each neighbourhood of "
                "this many face widths does (eyeglasses that touch a skin paint are told apart; on the dlib truth "
                "0.1 gained 0.12 dB at keyframes every 8 and lost 0.10 every 16: benchmarks/README.md)",
            },
        )
        region_decide: float = field(
            default=1.0,
            metadata={
                "range": (0.0, 255.0),
                "help": "with region: grey levels one motion must predict a neighbourhood better by to be chosen "
                "(else it takes prior)",
            },
        )
        smooth: float = field(
            default=0.03,
            metadata={
                "range": (0.0, 1.0),
                "help": "width of the surface motion's smoothing, as a fraction of the face size (0: raw flow)",
            },
        )
        disocclusion: float = field(
            default=24.0,
            metadata={
                "range": (0.0, 255.0),
                "help": "grey levels of photometric error above which the keyframe is taken not to see "
                "a pixel (the frame keeps its source there), after taking out a change of light smooth over the face",
            },
        )
        compete: float = field(
            default=8.0,
            metadata={
                "range": (0.0, 255.0),
                "help": "with a keyframe on each side: a keyframe's surface parts count less by exp(-excess / this) "
                "where its flow explains the frame's pixel worse than the other's by excess grey levels "
                "(0: both count as their visibility says; 8 gained 0.1-0.3 dB of lip PSNR on the dlib truth: "
                "benchmarks/README.md)",
            },
        )
        trust: float = field(
            default=3.0,
            metadata={
                "range": (0.0, 255.0),
                "help": "with a keyframe on each side: each one's weight in a frame times exp(-excess / this), "
                "excess: the grey levels by which its motion explains the frame worse on average than the other's "
                "(a keyframe the frame cannot be matched to, a fast move or a blur, gives way; 0: time alone)",
            },
        )
        align: float = field(
            default=0.05,
            metadata={
                "range": (0.0, 1.0),
                "help": "largest shift, as a fraction of the edit's size, by which the two keyframes' carried "
                "edits are moved onto each other before blending (0: blend as they land)",
            },
        )
        eyewear: bool = field(
            default=True,
            metadata={
                "help": "with one keyframe (the part's motion cannot be learnt), and with two unless they tell "
                "clearly that it moves with the skin: thin strokes that go all the way "
                "round an eye and make most of the edit there (eyeglasses' rims), or most of the way where a paint "
                "they run into closes the ring, and filled lenses that cover an eye and end round it (sunglasses), "
                "move with the head, whatever prior says, so they do not bend when the eyes close"
            },
        )
        headwear: bool = field(
            default=True,
            metadata={
                "help": "as eyewear: a part of the edit that lies mostly off the face (outside the ellipse in the "
                "face box), above the mouth, with fine detail of its own rather than the source's under it (a hat, a "
                "headband, earrings; a hair colour keeps the strands) moves with the head and hides the frame under "
                "it; the skin's motion there is the hair's or the background's, which bends it"
            },
        )
        opacity: bool = field(
            default=True,
            metadata={
                "help": "carry each edited pixel as a local linear change of the frame's own pixel (how much of the "
                "source shows through the edit, estimated around it in the keyframe) instead of a fixed difference: "
                "an opaque rim stays the rim's colour where the skin under it changes"
            },
        )
        geometric: bool = field(default=True, metadata={"help": "carry displacement edits as a displacement field"})
        motion_size: int = field(
            default=160,
            metadata={
                "range": (0, 4096),
                "help": "face width in px at which the motion is estimated (frames are downscaled to it, the "
                "motion brought back to full size; the edit is always moved at full size); 0: full size",
            },
        )
        threads: int = field(
            default=0,
            metadata={
                "range": (0, 64),
                "help": "frames worked on at once (each frame's result is the same either way); 0: one per CPU core",
            },
        )

    # ------------------------------------------------------------------------------ motion
    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return optical_flow(a, b, self.params.flow)

    @staticmethod
    def _window(shape, box) -> tuple[int, int, int, int]:
        h, w = shape[:2]
        if box is None:
            return 0, 0, w, h
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0 = min(max(0, x0), w - 1), min(max(0, y0), h - 1)  # the box may reach past the frame
        return x0, y0, max(min(w, x1), x0 + 1), max(min(h, y1), y0 + 1)

    @classmethod
    def _similarity(cls, flow: np.ndarray, ok: np.ndarray, box, scale: float = 1.0) -> np.ndarray:
        """The similarity ``[2, 3]`` fitted by RANSAC to ``flow`` at grid points inside ``box`` (inliers within
        a pixel of the full-size frame: ``scale`` px of ``flow``'s, which is downscaled by ``scale``)."""
        x0, y0, x1, y1 = cls._window(flow.shape, box)
        step = max(2, int(max(x1 - x0, y1 - y0) / 48))
        ys, xs = np.mgrid[y0:y1:step, x0:x1:step]
        keep = ok[ys, xs]
        if keep.sum() < 12:
            keep = np.ones_like(keep)
        p = np.stack([xs[keep], ys[keep]], -1).astype(np.float32)
        q = p + flow[ys[keep], xs[keep]]
        m = None
        if len(p) >= 3:
            m, _ = cv2.estimateAffinePartial2D(
                p, q, method=cv2.RANSAC, ransacReprojThreshold=scale, maxIters=2000, confidence=0.995
            )
        return np.float64([[1, 0, 0], [0, 1, 0]]) if m is None else m.astype(np.float64)

    @staticmethod
    def _as_flow(m: np.ndarray, shape) -> np.ndarray:
        g = grid(*shape[:2])
        return (g @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32) - g).astype(np.float32)

    def _surface(self, flow: np.ndarray, rigid: np.ndarray, ok: np.ndarray, size: float) -> np.ndarray:
        """The flow's departure from the head's motion, smoothed where the flow is trustworthy."""
        sigma = self.params.smooth * size
        if sigma < 0.5:
            return flow
        wgt = ok.astype(np.float32) + 1e-3
        num = cv2.GaussianBlur((flow - rigid) * wgt[..., None], (0, 0), sigma)
        den = cv2.GaussianBlur(wgt, (0, 0), sigma)
        return (rigid + num / den[..., None]).astype(np.float32)

    def _fit(
        self, a: np.ndarray, b: np.ndarray, fwd: np.ndarray, size: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """How well the flow explains the pixels: where it is trusted (photometric error under
        ``TRUSTED_LEVEL`` grey levels and landing inside ``b``: the head-motion fit and the skin smoothing
        use those pixels) and the soft visibility in ``b`` of each pixel of ``a`` (1 where the flow explains
        it, falling to 0 where the error exceeds twice ``disocclusion``: teeth where the keyframe had lips).
        With ``size`` (the face's width), visibility is told after taking out a change of light smooth over
        ``LIGHT_SIGMA`` face widths, so a face that darkens is not taken for one the keyframe did not see (the
        error that trusts pixels and weighs keyframes keeps the light: taken out there too, it scored 0.07 dB
        lower on the dlib truth, whose clips keep their light: benchmarks/README.md). A forward-backward
        test is not used: it fails on fast but visible motion, and on faces it chose the same pixels as this
        test (the same PSNR on the dlib truth, at twice the optical flow)."""
        h, w = a.shape[:2]
        moved, here = warp_back(b, fwd).astype(np.float32), a.astype(np.float32)
        err = cv2.GaussianBlur(_mean_abs(moved - here), (0, 0), 1.5)
        to = grid(h, w) + fwd
        inside = (to[..., 0] >= 0) & (to[..., 0] <= w - 1) & (to[..., 1] >= 0) & (to[..., 1] <= h - 1)
        lim = self.params.disocclusion
        if lim <= 0:
            return (err < TRUSTED_LEVEL) & inside, np.ones((h, w), np.float32), err
        lit = err  # the error that tells what the keyframe saw: with the light's change taken out
        sigma = LIGHT_SIGMA * size
        if sigma >= 1.0:
            num = _blur_wide(_mean_abs(here), sigma)
            den = _blur_wide(_mean_abs(moved), sigma)
            moved *= np.clip(num / np.maximum(den, 1.0), 1 / LIGHT_GAIN, LIGHT_GAIN)[..., None]
            lit = cv2.GaussianBlur(_mean_abs(moved - here), (0, 0), 1.5)
        seen = np.clip((2 * lim - lit) / lim, 0, 1).astype(np.float32)
        return (err < TRUSTED_LEVEL) & inside, seen, err

    def _scale(self, box) -> float:
        """The factor frames are downscaled by to estimate motion to a keyframe whose face is ``box``."""
        size = self.params.motion_size
        if not size or box is None:
            return 1.0
        return min(1.0, size / max(float(box[2] - box[0]), 1.0))

    @staticmethod
    def _landmark_prior(a_face, b_face, offset) -> np.ndarray | None:
        """The similarity ``[2, 3]`` taking the face's landmarks in frame ``a`` to those in ``b`` (least
        squares; coordinates less ``offset``, the working box's corner), or None without landmarks on
        both or where it moves no corner of the face box by ``PRIOR_MOTION`` face widths (the flow alone
        finds such motion, and more precisely)."""
        if a_face is None or b_face is None or a_face.landmarks is None or b_face.landmarks is None:
            return None
        p = np.asarray(a_face.landmarks, np.float64) - offset
        q = np.asarray(b_face.landmarks, np.float64) - offset
        if len(p) < 2 or p.shape != q.shape:
            return None
        pc, qc = p - p.mean(0), q - q.mean(0)
        den = float((pc**2).sum())
        if den <= 1e-9:
            return None
        a = float((pc * qc).sum()) / den
        b = float((pc[:, 0] * qc[:, 1] - pc[:, 1] * qc[:, 0]).sum()) / den
        m = np.array([[a, -b, 0.0], [b, a, 0.0]])
        m[:, 2] = q.mean(0) - m[:, :2] @ p.mean(0)
        box = np.asarray(a_face.box, np.float64) - np.tile(offset, 2)
        corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]])
        if np.abs(corners @ m[:, :2].T + m[:, 2] - corners).max() < max(1.0, PRIOR_MOTION * (box[2] - box[0])):
            return None
        return m

    @staticmethod
    def _landmarks(face, offset=(0, 0)) -> np.ndarray | None:
        """``face``'s landmarks less ``offset`` (None without them)."""
        if face is None or face.landmarks is None:
            return None
        return np.asarray(face.landmarks, np.float64) - np.asarray(offset, np.float64)

    @staticmethod
    def _head_band(landmarks, box, scale: tuple[float, float]):
        """The box ``(x0, y0, x1, y1)`` (frame downscaled by ``scale``) of the upper face whose flow gives the
        head's similarity: around the eyes and down to the nose (``landmarks``: the face's, eyes then nose,
        full size), within the face ``box`` (downscaled); ``box`` itself without landmarks."""
        if landmarks is None or len(landmarks) < 3:
            return box
        lm = np.asarray(landmarks, np.float64)[:3] * scale
        dist = float(np.linalg.norm(lm[1] - lm[0]))
        if dist < 2:
            return box
        side, above, below = HEAD_BAND
        band = [
            lm[:2, 0].min() - side * dist,
            lm[:2, 1].min() - above * dist,
            lm[:2, 0].max() + side * dist,
            lm[2, 1] + below * dist,
        ]
        if box is not None:
            band = [max(band[0], box[0]), max(band[1], box[1]), min(band[2], box[2]), min(band[3], box[3])]
        return box if band[2] - band[0] < 4 or band[3] - band[1] < 4 else band

    def _motion(self, a: np.ndarray, b: np.ndarray, box, scale: float = 1.0, prior=None, landmarks=None) -> _Motion:
        """Motion from frame ``a`` to keyframe ``b``, direct: a frame's result depends on that frame and its
        keyframes alone, so chunked propagation equals whole-clip propagation. Estimated on the frames
        downscaled by ``scale`` and brought back to full size. ``prior``: the face's similarity from ``a``
        to ``b`` by the face processor's landmarks (:meth:`_landmark_prior`); then the flow is found after
        moving ``b`` by it (what is left of the motion), so a face that moved by most of its size between
        the two (a head rising in the frame, a fast turn) is still matched. Only where that flow explains
        the face's pixels worse than ``PRIOR_DOUBT`` on average (landmarks that went wrong) is the flow
        without it found too, and the better of the two used. (Both on every such frame, the better kept,
        scored lower on the dlib truth and cost a second flow: benchmarks/README.md.) ``landmarks``: ``a``'s
        face's (eyes, then nose); with them, the head's similarity (what rigid parts follow) is the upper
        face's where the lower face moved on its own (``HEAD_GAP``); the surface motion's base stays the
        whole face's."""
        h, w = a.shape[:2]
        small = (max(8, round(w * scale)), max(8, round(h * scale)))
        if scale < 1.0:
            a, b = (cv2.resize(x, small, interpolation=cv2.INTER_AREA) for x in (a, b))
        sx, sy = small[0] / w if scale < 1.0 else 1.0, small[1] / h if scale < 1.0 else 1.0
        low_box = None if box is None else np.asarray(box, np.float64) * [sx, sy, sx, sy]
        if prior is None:
            fwd = self._flow(a, b)
        else:  # the prior at the small frame's scale (pixel centres: p_low = S p + c)
            s = np.diag([sx, sy])
            c = 0.5 * np.array([sx, sy]) - 0.5 if scale < 1.0 else np.zeros(2)
            a_low = s @ prior[:, :2] @ np.linalg.inv(s)
            m = np.hstack([a_low, (s @ prior[:, 2] + c - a_low @ c)[:, None]]).astype(np.float32)
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            moved = cv2.warpAffine(b, m, (a.shape[1], a.shape[0]), flags=flags, borderMode=cv2.BORDER_REPLICATE)
            g = grid(*a.shape[:2])
            guided = ((g + self._flow(a, moved)) @ m[:, :2].T + m[:, 2] - g).astype(np.float32)
            x0, y0, x1, y1 = self._window(a.shape, low_box)
            face = np.s_[y0:y1, x0:x1]

            def error(f: np.ndarray) -> float:
                return float(_mean_abs(warp_back(b, f)[face].astype(np.float32) - a[face]).mean())

            fwd, doubt = guided, error(guided)
            if doubt > PRIOR_DOUBT:
                direct = self._flow(a, b)
                if error(direct) < doubt:
                    fwd = direct
        size = float(low_box[2] - low_box[0]) if low_box is not None else float(max(a.shape[:2])) / 2
        ok, seen, err = self._fit(a, b, fwd, size)
        sim = self._similarity(fwd, ok, low_box, min(sx, sy))
        surface = self._surface(fwd, self._as_flow(sim, a.shape), ok, size)
        head = self._head_band(landmarks, low_box, (sx, sy)) if HEAD_INLIER > 0 else low_box
        if head is not low_box:  # the upper face's own similarity, where it moves the eyes and nose elsewhere
            upper = self._similarity(fwd, ok, head, HEAD_INLIER * min(sx, sy))
            at = np.asarray(landmarks, np.float64)[:3] * [sx, sy]
            gap = np.abs((at @ upper[:, :2].T + upper[:, 2]) - (at @ sim[:, :2].T + sim[:, 2])) / [sx, sy]
            if float(np.linalg.norm(gap, axis=1).max()) > HEAD_GAP:
                sim = upper
        if scale < 1.0:
            # a full-size pixel p is at p_low = S p + c in the small frame (pixel centres), so the small
            # frame's similarity q = A p_low + t is, at full size, A p + S^-1 (A c + t - c)
            s = np.diag([sx, sy])
            c = 0.5 * np.array([sx, sy]) - 0.5
            a_full = np.linalg.inv(s) @ sim[:, :2] @ s
            t_full = np.linalg.inv(s) @ (sim[:, :2] @ c + sim[:, 2] - c)
            sim = np.hstack([a_full, t_full[:, None]])
            surface = cv2.resize(surface, (w, h), interpolation=cv2.INTER_LINEAR) * np.float32([1 / sx, 1 / sy])
            seen = cv2.resize(seen, (w, h), interpolation=cv2.INTER_LINEAR)
            err = cv2.resize(err, (w, h), interpolation=cv2.INTER_LINEAR)
        return _Motion(sim, surface.astype(np.float32), seen, err)

    # ------------------------------------------------------------------------------ the edit's parts
    def _geometric(self, recon: np.ndarray, edited: np.ndarray, size: float) -> np.ndarray | None:
        """The displacement (flow from the edited keyframe into the unedited one) where it explains the edit,
        and explains most of it around (``GEOMETRIC_SHARE`` of the changed pixels within ``GEOMETRIC_AREA``
        face widths; ``size``: the face's width): a dark fill that a shifted brow happens to match at its
        edge is a recolouring, not a displacement. And only where the flow back returns to the pixel
        (``GEOMETRIC_RETURN``): blonde hair that the pale wall beside it matches is a recolouring too."""
        if not self.params.geometric:
            return None
        disp = self._flow(edited, recon)
        before = cv2.GaussianBlur(_mean_abs(edited.astype(np.float32) - recon), (0, 0), 2.0)
        after = cv2.GaussianBlur(_mean_abs(edited.astype(np.float32) - warp_back(recon, disp)), (0, 0), 2.0)
        changed = before > 2.0
        fits = (after < 0.5 * before) & changed & (np.linalg.norm(disp, axis=-1) > 0.3)
        if fits.any() and GEOMETRIC_RETURN > 0:  # the flow back from where each pixel came must return to it
            back = warp_back(self._flow(recon, edited), disp)
            gap = np.linalg.norm(disp + back, axis=-1)
            fits &= gap < GEOMETRIC_RETURN * (1.0 + 0.25 * np.linalg.norm(disp, axis=-1))
        if fits.any() and GEOMETRIC_AREA > 0:
            sigma = GEOMETRIC_AREA * size
            share = _blur_wide(fits.astype(np.float32), sigma)
            fits &= share >= GEOMETRIC_SHARE * _blur_wide(changed.astype(np.float32), sigma)
        w = cv2.GaussianBlur(fits.astype(np.float32), (0, 0), 2.0) * fits
        if w.max() <= 0:
            return None
        return (disp * w[..., None]).astype(np.float32)

    def _opacity(self, base: np.ndarray, edited: np.ndarray, residual: np.ndarray) -> np.ndarray | None:
        """Per edited pixel and channel, how much of the source the edit hides (0: a difference added to the
        source, 1: a colour painted over it), from the local linear fit ``edited = (1 - a) base + a c``
        over the edited pixels around it (a tint keeps the source's texture, an overlay replaces it);
        None with nothing edited or ``opacity`` off."""
        if not self.params.opacity:
            return None
        mask = _peak(residual) > EDITED_LEVEL
        ys, xs = np.nonzero(mask)
        if not len(ys):
            return None
        pad = int(np.ceil(3 * OPACITY_SIGMA)) + 1
        h, w = mask.shape
        box = np.s_[
            max(0, ys.min() - pad) : min(h, ys.max() + pad + 1), max(0, xs.min() - pad) : min(w, xs.max() + pad + 1)
        ]
        wt = mask[box].astype(np.float32)
        x, y = base[box].astype(np.float32), edited[box].astype(np.float32)

        def mean(z: np.ndarray) -> np.ndarray:
            return cv2.GaussianBlur(z * wt[..., None], (0, 0), OPACITY_SIGMA)

        mw = np.maximum(cv2.GaussianBlur(wt, (0, 0), OPACITY_SIGMA), 1e-6)[..., None]
        mx, my = mean(x) / mw, mean(y) / mw
        var = np.maximum(mean(x * x) / mw - mx * mx, 0)
        cov = mean(x * y) / mw - mx * my
        slope = (cov + OPACITY_EPS) / (var + OPACITY_EPS)
        out = np.zeros(base.shape, np.float32)
        out[box] = np.clip(1 - slope, 0, 1) * wt[..., None]
        return out

    @staticmethod
    def _parts(residual: np.ndarray) -> tuple[np.ndarray, int]:
        edited = (_peak(residual) > EDITED_LEVEL).astype(np.uint8)
        edited = cv2.dilate(edited, np.ones((7, 7), np.uint8))
        n, labels = cv2.connectedComponents(edited, connectivity=8)
        return labels, n

    def _eyewear(self, edited: np.ndarray, residual: np.ndarray, face) -> np.ndarray | None:
        """Where ``edited`` (a keyframe's edited pixels, bool; ``residual``: its edit) is eyewear: its thin
        strokes (what an opening by a disc of ``EYEWEAR_THIN`` eye distances removes) within ``EYEWEAR_REACH``
        eye distances of an eye (by ``face``'s landmarks) that they go all the way round (on nearly every ray
        from the eye between ``EYEWEAR_RING`` and ``EYEWEAR_REACH`` eye distances, not over the eye itself)
        and that they make most of the edit around (not the edges of an edit of the whole face); or that they
        go most of the way round (``EYEWEAR_MERGED``) where the edit as a whole closes the ring and leaves the
        eye clear (rims whose bottoms run into a paint: those bottoms, no longer thin, go with the prior).
        None where no eye is ringed so, without landmarks, or with ``eyewear`` off."""
        if not self.params.eyewear or face is None or face.landmarks is None or len(face.landmarks) < 2:
            return None
        eyes = np.asarray(face.landmarks, np.float64)[:2]
        dist = float(np.linalg.norm(eyes[1] - eyes[0]))
        if dist < 4:
            return None
        r = max(1, int(round(EYEWEAR_THIN * dist)))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        strokes = (_peak(residual) > EDITED_LEVEL).astype(np.uint8)
        thin = strokes & ~cv2.morphologyEx(strokes, cv2.MORPH_OPEN, disc)
        thin = (cv2.dilate(thin, np.ones((7, 7), np.uint8)) > 0) & edited  # as the parts are: with their edges
        h, w = edited.shape
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        radii = np.linspace(EYEWEAR_RING, EYEWEAR_REACH, 24) * dist
        ys, xs = np.mgrid[0:h, 0:w]
        lenses = [self._lens(strokes > 0, edited, eye, dist) for eye in eyes] if EYEWEAR_LENS > 0 else [None, None]
        out = None
        for eye, lens in zip(eyes, lenses):
            if lens is not None:  # a filled lens: the lens is eyewear, and a bridge to the other one
                out = lens if out is None else out | lens
                continue
            px = np.rint(eye[0] + np.cos(angles)[:, None] * radii).astype(int)
            py = np.rint(eye[1] + np.sin(angles)[:, None] * radii).astype(int)
            inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
            d2 = (xs - eye[0]) ** 2 + (ys - eye[1]) ** 2
            near, over = d2 <= (EYEWEAR_REACH * dist) ** 2, d2 <= (EYEWEAR_RING * dist) ** 2
            if thin[over].mean() > 0.25:  # strokes over the eye too: not a rim
                continue
            rays_thin, rays_edited = _crossed(thin, px, py, inside), _crossed(edited, px, py, inside)
            # rims alone: thin strokes all the way round, most of the edit there (a wide edit's edges ring it too)
            alone = rays_thin >= 0.9 and thin[near].sum() >= EYEWEAR_SHARE * edited[near].sum()
            # rims run into a wide edit (a paint below them): thin strokes most of the way, the edit all of it,
            # the eye clear
            merged = 0 < EYEWEAR_MERGED <= rays_thin and rays_edited >= 0.9 and edited[over].mean() <= 0.1
            if not (alone or merged):  # make-up on a lid, a paint below the eye, an edit of the whole face
                continue
            out = near & thin if out is None else out | (near & thin)
        if out is not None and lenses[0] is not None and lenses[1] is not None:  # the bridge between two lenses
            mid = eyes.mean(0)
            out |= thin & ((xs - mid[0]) ** 2 + (ys - mid[1]) ** 2 <= (0.5 * dist) ** 2)
        return out

    @staticmethod
    def _lens(strokes: np.ndarray, edited: np.ndarray, eye: np.ndarray, dist: float) -> np.ndarray | None:
        """Where ``edited`` (a keyframe's edited pixels with their edges, bool) is a filled lens over the eye at
        ``eye`` (``dist``: the eye distance): the edit's ``strokes`` (bool: the pixels it changed; holes
        narrower than twice ``EYEWEAR_HOLE`` closed) cover every ray (98%) from the eye out to ``EYEWEAR_LENS`` eye
        distances, and end within ``EYEWEAR_REACH`` (clear from there out) on at least ``EYEWEAR_BOUNDED``
        of them. The lens is the polygon of where each ray leaves the edit; a ray that does not (the lens's
        bottom in a paint) takes the radius of its mirror image across the eye's horizontal, else of the
        nearest ray that does. None where the edit is no such lens."""
        h, w = edited.shape
        n_rays, n_radii = 48, 32
        angles = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
        radii = np.linspace(0, EYEWEAR_REACH, n_radii) * dist
        px = np.rint(eye[0] + np.cos(angles)[:, None] * radii).astype(int)
        py = np.rint(eye[1] + np.sin(angles)[:, None] * radii).astype(int)
        if px.min() < 0 or py.min() < 0 or px.max() >= w or py.max() >= h:
            return None  # the lens would be cut by the frame's edge: not told
        x0, y0, x1, y1 = px.min(), py.min(), px.max() + 1, py.max() + 1
        r = max(1, int(round(EYEWEAR_HOLE * dist)))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        box = np.pad(strokes[y0:y1, x0:x1].astype(np.uint8), r, constant_values=0)
        filled = cv2.morphologyEx(box, cv2.MORPH_CLOSE, disc)[r:-r, r:-r] > 0  # a pupil the tint left alone
        prof = filled[py - y0, px - x0]
        if not prof[:, radii <= EYEWEAR_LENS * dist].all(1).mean() >= 0.98:
            return None
        last = n_radii - 1 - np.argmax(prof[:, ::-1], axis=1)  # the last edited sample on each ray
        ends = last < n_radii - 1
        first_out = np.argmin(prof, axis=1)  # the first clear sample (0 where the ray never leaves the edit)
        ends &= first_out > last  # clear from where it leaves out to the reach
        if ends.mean() < EYEWEAR_BOUNDED:
            return None
        r = np.where(ends, radii[np.minimum(first_out, n_radii - 1)], np.nan)
        mirror = (n_rays - np.arange(n_rays)) % n_rays  # the angle reflected across the horizontal
        r = np.where(np.isnan(r), r[mirror], r)
        good = np.flatnonzero(~np.isnan(r))
        gap = np.abs(np.arange(n_rays)[:, None] - good[None])
        r = r[good[np.argmin(np.minimum(gap, n_rays - gap), axis=1)]]
        poly = np.stack([eye[0] + np.cos(angles) * r, eye[1] + np.sin(angles) * r], -1)
        lens = np.zeros((h, w), np.uint8)
        cv2.fillPoly(lens, [np.rint(poly).astype(np.int32)], 1)
        return (cv2.dilate(lens, np.ones((9, 9), np.uint8)) > 0) & edited  # with the edges the parts have

    def _rigidity(
        self,
        residual: np.ndarray,
        other: np.ndarray,
        to_other: _Motion,
        labels: np.ndarray,
        n: int,
        size: float,
        face=None,
        headwear: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per region of ``residual`` (a keyframe's; ``size``: its face's width), 1 where moving ``other`` (the
        other keyframe's) rigidly predicts it better than moving it with the skin, 0 where the skin does,
        else the prior; on eyewear by ``face``'s landmarks and on ``headwear`` (:meth:`_headwear`) 1 unless
        the skin predicts it better by more than ``EYEWEAR_DOUBT`` (with no ``other``: the prior, and 1 on
        eyewear and headwear). A region is the whole connected part, or with ``region`` the neighbourhood of
        ``region`` face widths around each pixel, overruled where the pixel's own 1.5 px neighbourhood tells
        by more than ``CLEAR_GAIN`` grey levels (a thin rim beside a large paint)."""
        prior = 1.0 if self.params.prior == "rigid" else 0.0
        rho = np.full(residual.shape[:2], prior, np.float32)
        if other is None:
            for worn in (self._eyewear(labels > 0, residual, face), headwear):
                if worn is not None:
                    rho[worn] = 1.0
            return cv2.GaussianBlur(rho, (0, 0), 1.5) if 0 < rho.max() and rho.min() < 1 else rho
        e_r = _mean_abs(to_other.move_rigidly(other) - residual)
        e_s = _mean_abs(warp_back(other, to_other.surface) - residual)
        sigma = self.params.region * size
        if sigma >= 0.5:  # the gain of rigid over surface, averaged over the region around each edited pixel
            edited = (labels > 0).astype(np.float32)

            def around(sig: float) -> np.ndarray:
                num = cv2.GaussianBlur((e_s - e_r) * edited, (0, 0), sig)
                return num / np.maximum(cv2.GaussianBlur(edited, (0, 0), sig), 1e-6)

            # where the pixel's own neighbourhood tells clearly (a rim next to a paint), it decides
            gain, near = around(sigma), around(1.5)
            clear = np.abs(near) > CLEAR_GAIN
            gain[clear] = near[clear]
            told = (labels > 0) & (np.abs(gain) > self.params.region_decide)
            rho[told] = (gain[told] > 0).astype(np.float32)
            skin = (labels > 0) & (gain < -EYEWEAR_DOUBT)
        else:  # over each connected part
            skin = np.zeros(residual.shape[:2], bool)
            for part in range(1, n):
                where = labels == part
                gain = float((e_s[where] - e_r[where]).mean())
                if abs(gain) > self.params.decide:
                    rho[where] = float(gain > 0)
                if gain < -EYEWEAR_DOUBT:
                    skin |= where
        if EYEWEAR_DOUBT >= 0 and not skin[labels > 0].all():  # eyewear, unless the keyframes say skin
            for worn in (self._eyewear(labels > 0, residual, face), headwear):
                if worn is not None:
                    rho[worn & ~skin] = 1.0
        return cv2.GaussianBlur(rho, (0, 0), 1.5) if 0 < rho.max() and rho.min() < 1 else rho

    def _headwear(self, labels: np.ndarray, n: int, residual: np.ndarray, base: np.ndarray, face) -> np.ndarray | None:
        """Where a keyframe's edit (``labels``: its ``n - 1`` connected parts; ``residual``: the edit, over
        ``base``, the keyframe's source) is headwear: the parts that lie mostly off the face (``HEADWEAR_OFF``
        of the pixels they changed outside the ellipse inscribed in ``face``'s box), whose fine detail is
        their own, not the source's under them (``HEADWEAR_KEEPS``), that lie above the mouth (their centre,
        along the line from the eyes to the mouth by ``face``'s landmarks) and that change no more than
        ``HEADWEAR_AREA`` face boxes of pixels: a hat, a headband, earrings, not a new background. A beard or
        a paint is on the face or below the mouth, a hair colour keeps the hair's strands. None where no part
        is, without a face box and landmarks, or with ``headwear`` off. Headwear moves with the head and
        hides the frame under it where it changed it (its opacity 1: a flat colour over a smooth background
        tells no opacity)."""
        if not self.params.headwear or face is None or face.landmarks is None or n < 2:
            return None
        lm = np.asarray(face.landmarks, np.float64)
        if len(lm) < 5:
            return None
        x0, y0, x1, y1 = np.asarray(face.box, np.float64)
        half = np.array([x1 - x0, y1 - y0]) / 2
        if half.min() < 2:
            return None
        changed = cv2.erode((_peak(residual) > EDITED_LEVEL).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        ys, xs = np.nonzero((labels > 0) & changed)  # judged inside, off the parts' edges
        off = ((xs - (x0 + half[0])) / half[0]) ** 2 + ((ys - (y0 + half[1])) / half[1]) ** 2 > 1
        eyes, mouth = lm[:2].mean(0), lm[3:5].mean(0)
        axis = mouth - eyes
        if np.linalg.norm(axis) < 1:
            return None
        down = ((xs - eyes[0]) * axis[0] + (ys - eyes[1]) * axis[1]) / float(axis @ axis)  # 0 at the eyes, 1 the mouth
        src = base.astype(np.float32).mean(-1)
        out = src + residual.mean(-1)

        def detail(x: np.ndarray) -> np.ndarray:
            return (x - cv2.GaussianBlur(x, (0, 0), 2.0))[ys, xs].astype(np.float64)

        a, b = detail(src), detail(out)
        part = labels[ys, xs]

        def mean(v: np.ndarray) -> np.ndarray:
            return np.bincount(part, v, n) / np.maximum(np.bincount(part, minlength=n), 1)

        ma, mb = mean(a), mean(b)
        cov = mean(a * b) - ma * mb
        va, vb = np.maximum(mean(a * a) - ma * ma, 0), np.maximum(mean(b * b) - mb * mb, 0)
        keeps = cov / np.sqrt(np.maximum(va * vb, 1e-6))  # a flat source under a flat edit: 0 (told by neither)
        worn = (mean(off.astype(np.float64)) >= HEADWEAR_OFF) & (keeps < HEADWEAR_KEEPS) & (mean(down) < 1.0)
        count = np.bincount(part, minlength=n)
        worn &= (count > 0) & (count <= HEADWEAR_AREA * 4 * half[0] * half[1])  # a new background is no hat
        worn[0] = False
        if not worn.any():
            return None
        return worn[labels]

    def _aligned(self, frame: np.ndarray, carried: list, scale: float = 1.0) -> list:
        """The two keyframes' edits carried to ``frame``, moved onto each other in proportion to the
        temporal weights where they disagree (a rim a few pixels apart), so the blend has no double edges.
        The shift between them is estimated on the frames downscaled by ``scale``. The edits move, the
        frame under them does not (a tint's share of the frame is taken out where the tint lands)."""
        (wa, ra, sa, na), (wb, rb, sb, nb) = carried
        base = frame.astype(np.float32)
        la = _over(ra, base) + _over(sa, base) * na[..., None]
        lb = _over(rb, base) + _over(sb, base) * nb[..., None]
        support = (_peak(la) > EDITED_LEVEL) | (_peak(lb) > EDITED_LEVEL)
        if not support.any():
            return carried
        h, w = frame.shape[:2]
        img_a = np.clip(base + la, 0, 255).astype(np.uint8)
        img_b = np.clip(base + lb, 0, 255).astype(np.uint8)
        if scale < 1.0:
            small = (max(8, round(w * scale)), max(8, round(h * scale)))
            img_a, img_b = (cv2.resize(x, small, interpolation=cv2.INTER_AREA) for x in (img_a, img_b))
            support = cv2.resize(support.astype(np.uint8), small, interpolation=cv2.INTER_NEAREST) > 0
        delta = self._flow(img_b, img_a)  # b's edit at x is a's at x + delta
        ys, xs = np.nonzero(support)
        if not len(ys):
            return carried
        size = float(max(ys.max() - ys.min(), xs.max() - xs.min(), 1))
        wgt = cv2.dilate(support.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(np.float32)
        sigma = max(1.0, 0.01 * size)
        delta = (
            cv2.GaussianBlur(delta * wgt[..., None], (0, 0), sigma)
            / np.maximum(cv2.GaussianBlur(wgt, (0, 0), sigma), 1e-3)[..., None]
        )
        cap = self.params.align * size
        norm = np.linalg.norm(delta, axis=-1, keepdims=True)
        delta = (delta * np.minimum(1.0, cap / np.maximum(norm, 1e-6)) * wgt[..., None]).astype(np.float32)
        if delta.shape[:2] != (h, w):
            fx, fy = w / delta.shape[1], h / delta.shape[0]
            delta = cv2.resize(delta, (w, h), interpolation=cv2.INTER_LINEAR) * np.float32([fx, fy])

        def moved(part: tuple, by: np.ndarray) -> tuple:
            return tuple(None if x is None else warp_back(x, by) for x in part)

        to_a, to_b = wb * delta, -wa * delta
        return [
            (wa, moved(ra, to_a), moved(sa, to_a), warp_back(na, to_a)),
            (wb, moved(rb, to_b), moved(sb, to_b), warp_back(nb, to_b)),
        ]

    # ------------------------------------------------------------------------------ propagate
    def propagate(self, inp: PropagationInput) -> np.ndarray:
        src, edited = np.asarray(inp.source_pixels), np.asarray(inp.edited_pixels)
        recon = np.asarray(inp.reconstructed_pixels) if inp.reconstructed_pixels is not None else None
        keys, at = list(inp.key_rows), list(inp.frames)
        recon = src[keys] if recon is None else recon
        if edited.shape != (len(keys), *src.shape[1:]) or recon.shape != edited.shape:
            raise ValueError(
                f"{self.name}: edited {edited.shape} / reconstructed {recon.shape} keyframes do not fit source "
                f"{src.shape} at rows {keys}"
            )
        faces = inp.faces or [None] * len(src)
        boxes = [None if f is None else np.asarray(f.box, np.float32) for f in faces]
        out = src.copy()
        out[keys] = edited
        if np.array_equal(edited, recon):
            return out
        todo = [i for i in range(len(src)) if i not in keys]
        workers = max(1, min(max(len(todo), len(keys)), self.params.threads or os.cpu_count() or 1))
        # OpenCV and numpy release the GIL: keyframes and frames worked on side by side use the cores
        pool = ThreadPoolExecutor(workers) if workers > 1 else None
        each = pool.map if pool is not None else map
        try:
            return self._propagate(src, edited, recon, keys, at, faces, boxes, out, todo, each)
        finally:
            if pool is not None:
                pool.shutdown()

    def _propagate(self, src, edited, recon, keys, at, faces, boxes, out, todo, each) -> np.ndarray:
        def width(k: int) -> float:
            face = boxes[k]
            return float(face[2] - face[0]) if face is not None else float(max(src.shape[1:3])) / 2

        disp = list(each(lambda j: self._geometric(recon[j], edited[j], width(keys[j])), range(len(keys))))
        base = [recon[j] if d is None else warp_back(recon[j], d) for j, d in enumerate(disp)]
        resid = [edited[j].astype(np.float32) - b for j, b in enumerate(base)]
        parts = [self._parts(r) for r in resid]
        opacity = list(each(lambda j: self._opacity(base[j], edited[j], resid[j]), range(len(keys))))
        worn = [self._headwear(*parts[j], resid[j], base[j], faces[keys[j]]) for j in range(len(keys))]
        for j, (a, w) in enumerate(zip(opacity, worn)):
            if a is not None and w is not None:  # an object drawn over the frame hides it, however flat it was
                a[w & (_peak(resid[j]) > EDITED_LEVEL)] = 1.0
        # what is carried per keyframe: the residual plus, where the edit hides the source, the hidden part
        # (so a frame gets residual + a (keyframe's source - its own): the edit's colour, not the difference)
        lifted = [r if a is None else r + a * b for r, a, b in zip(resid, opacity, base)]
        rigidity: dict[tuple[int, int | None], np.ndarray] = {}

        def rho(j: int, o: int | None) -> np.ndarray:
            """Keyframe ``j``'s parts, rigid (1) or surface (0), told by keyframe ``o`` (None: the prior).
            Per pair, so a run between two keyframes is the same whether propagated alone or in a clip."""
            if (j, o) not in rigidity:
                k, ko = keys[j], None if o is None else keys[o]
                move = None
                if o is not None:
                    prior = self._landmark_prior(faces[k], faces[ko], np.zeros(2))
                    points = self._landmarks(faces[k])
                    move = self._motion(src[k], src[ko], boxes[k], self._scale(boxes[ko]), prior, points)
                rigidity[(j, o)] = self._rigidity(
                    resid[j], None if o is None else resid[o], move, *parts[j], width(k), faces[k], worn[j]
                )
            return rigidity[(j, o)]

        key_times = [at[k] for k in keys]
        support = [self._support(r, d) for r, d in zip(resid, disp)]
        near = {i: neighbour_keys(at[i], key_times, "two-nearest") for i in todo}
        pairs = sorted({(j, next((o for o, _ in near[i] if o != j), None)) for i in todo for j, _ in near[i]}, key=str)
        list(each(lambda pair: rho(*pair), pairs))  # each pair's rigidity once, before the frames

        def carry(i: int) -> None:
            """Frame ``i`` of ``out``: its keyframes' parts carried to it (frames are independent)."""
            box = self._landing(src.shape, [(support[j], boxes[keys[j]]) for j, _ in near[i]], boxes[i])
            if box is None:  # nothing edited near this frame's keyframes
                return
            x0, y0, x1, y1 = box
            crop = np.s_[y0:y1, x0:x1]
            here = None if boxes[i] is None else boxes[i] - [x0, y0, x0, y0]
            motions = []  # per keyframe: (row, weight, motion, its edit's box in the crop or None)
            for j, wt in near[i]:
                k = keys[j]
                there = None if boxes[k] is None else boxes[k] - [x0, y0, x0, y0]
                m = self._motion(
                    src[i][crop],
                    src[k][crop],
                    here if here is not None else there,
                    self._scale(boxes[k]),
                    self._landmark_prior(faces[i], faces[k], np.array([x0, y0], np.float64)),
                    self._landmarks(faces[i], (x0, y0)),
                )
                part = None
                if support[j] is not None:  # the edit's box, padded by the bilinear footprint, in the crop
                    sx0, sy0, sx1, sy1 = support[j]
                    part = (max(sx0 - 2, x0) - x0, max(sy0 - 2, y0) - y0, min(sx1 + 2, x1) - x0, min(sy1 + 2, y1) - y0)
                    part = part if part[2] > part[0] and part[3] > part[1] else None
                motions.append((j, wt, m, part))
            # the window of the crop the edits land in: outside it the frame stays its source
            reached = [r for _, _, m, part in motions if part is not None and (r := m.reach(part)) is not None]
            if not reached:
                return
            two = len(motions) == 2 and bool(self.params.align)
            scale = min(self._scale(boxes[keys[j]]) for j, _ in near[i])
            pad = int(np.ceil(8.0 / scale)) + 2 if two else 1  # the alignment's shift field reaches past the edit
            r_box = np.array(reached)
            ex0, ey0 = np.maximum(0, r_box[:, :2].min(0) - pad)
            ex1, ey1 = np.minimum([x1 - x0, y1 - y0], r_box[:, 2:].max(0) + pad)
            win, sub = (ex0, ey0, ex1, ey1), np.s_[ey0:ey1, ex0:ex1]
            carried = []  # per keyframe: (weight, rigid part, surface part, where it sees the pixel)
            vis = self._visibility([m for _, _, m, _ in motions], sub)
            motions = self._weighed(motions, sub)
            dacc = np.zeros((ey1 - ey0, ex1 - ex0, 2), np.float32)
            dw = 0.0
            # per keyframe: its edit's box in the frame and the output window's corner in that box
            placed = [
                None
                if part is None
                else (
                    np.s_[y0 + part[1] : y0 + part[3], x0 + part[0] : x0 + part[2]],
                    (int(ex0 - part[0]), int(ey0 - part[1])),
                )
                for _, _, _, part in motions
            ]
            for (j, wt, m, _), at_box in zip(motions, placed):  # the displacements carried: the frame's new shape
                if at_box is not None and disp[j] is not None:
                    dacc += wt * warp_back(disp[j][at_box[0]], m.surface[sub], at_box[1])
                    dw += wt
            frame = src[i][crop][sub] if not dw else warp_back(src[i][crop], dacc / dw, (int(ex0), int(ey0)))
            zero = np.zeros((ey1 - ey0, ex1 - ex0, 3), np.float32)  # (never written to: parts are new arrays)
            # per keyframe: weight, rigid part, surface part, where it sees the pixel; a part is the edit carried
            # and, where the edit hides the source, how much it hides (None: nowhere), so the frame's own pixel
            # under it is taken out where the part lands (after the alignment, which moves the edit, not the frame)
            for (j, wt, m, part), at_box in zip(motions, placed):
                if at_box is None:
                    carried.append((wt, (zero, None), (zero, None), vis[len(carried)]))
                    continue
                other = next((o for o, _ in near[i] if o != j), None)
                bx0, by0 = part[:2]
                there, origin = at_box
                r = rho(j, other)[there][..., None]
                a = None if opacity[j] is None else opacity[j][there]
                rigid, surface = (zero, None), (zero, None)
                if r.max() > 0:  # (most edits have no rigid part: nothing to move)
                    rigid = (
                        m.move_rigidly(lifted[j][there] * r, win, (bx0, by0)),
                        None if a is None else m.move_rigidly(a * r, win, (bx0, by0)),
                    )
                if r.min() < 1:
                    surface = (
                        warp_back(lifted[j][there] * (1 - r), m.surface[sub], origin),
                        None if a is None else warp_back(a * (1 - r), m.surface[sub], origin),
                    )
                carried.append((wt, rigid, surface, vis[len(carried)]))
            if two:
                carried = self._aligned(src[i][crop][sub], carried, scale)
            base = frame.astype(np.float32)
            wsum = sum(wt * seen for wt, _, _, seen in carried)
            seen = np.maximum.reduce([c[3] for c in carried])
            rigid = sum(wt * _over(rp, base) for wt, rp, _, _ in carried)
            surface = sum((wt * sn)[..., None] * _over(sp, base) for wt, _, sp, sn in carried)
            # surface parts: blended over the keyframes that see the pixel, faded where none does
            surface = surface * (seen / np.maximum(wsum, 1e-6))[..., None]
            out[i][crop][sub] = np.clip(np.rint(base + rigid + surface), 0, 255).astype(np.uint8)

        list(each(carry, todo))
        return out

    def _weighed(self, motions: list, sub) -> list:
        """``motions`` (per keyframe: row, temporal weight, motion, edit box) with the weights of two
        keyframes moved towards the one whose motion explains the frame's window ``sub`` better
        (``trust``): where the two disagree (a fast move, a blur on one side), the rims and the paint come
        from the one that matches, not from a blend of both (a double rim)."""
        tau = self.params.trust
        if tau <= 0 or len(motions) != 2 or any(m.err is None for _, _, m, _ in motions):
            return motions
        errs = [float(m.err[sub].mean()) for _, _, m, _ in motions]
        w = [float(wt * np.exp((min(errs) - e) / tau)) for (_, wt, _, _), e in zip(motions, errs)]
        return [(j, wj / sum(w), m, part) for (j, _, m, part), wj in zip(motions, w)]

    def _visibility(self, motions: list[_Motion], sub) -> list[np.ndarray]:
        """How much each keyframe's surface parts count at each pixel of the window ``sub``: where it sees
        the pixel, and with ``compete``, less where the other keyframe's motion explains the pixel better
        (lips that part over teeth the other keyframe saw: a photometric test alone, lips against teeth, is
        not sure enough to hide the lip colour)."""
        vis = [m.seen[sub] for m in motions]
        tau = self.params.compete
        if tau <= 0 or len(motions) != 2 or any(m.err is None for m in motions):
            return vis
        ea, eb = (m.err[sub] for m in motions)
        best = np.minimum(ea, eb)
        return [v * np.exp((best - e) / np.float32(tau)) for v, e in zip(vis, (ea, eb))]

    @staticmethod
    def _support(residual: np.ndarray, disp: np.ndarray | None) -> tuple[int, int, int, int] | None:
        """The box ``(x0, y0, x1, y1)`` of a keyframe's edit: where its residual could change a pixel
        (half a grey level or more) or its displacement moves one; None when it changes nothing."""
        where = _peak(residual) >= 0.5
        if disp is not None:
            where |= _peak(disp) > 0
        ys, xs = np.nonzero(where)
        if not len(xs):
            return None
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

    @staticmethod
    def _landing(shape, keyframes, face) -> tuple[int, int, int, int] | None:
        """The box of a frame in which its keyframes' edits land: each edit's box (``keyframes``: pairs of
        the box and the keyframe's face) where it is and moved and scaled as the face moved from the
        keyframe to this frame (``face``), and both faces (an edit on a small part, the lips, still gets the
        face's motion around it: a crop of the lips alone lost 1.5 dB of lip PSNR at keyframes every 16),
        padded by ``LANDING_PAD`` face widths; None when nothing was edited."""
        h, w = shape[1:3]
        corners, pad = [], 8.0
        for sup, key_face in keyframes:
            if sup is None:
                continue
            b = np.asarray(sup, np.float64)
            corners.append(b)
            if key_face is not None and face is not None:
                k, f = np.asarray(key_face, np.float64), np.asarray(face, np.float64)
                zoom = (f[2] - f[0]) / max(k[2] - k[0], 1.0)
                kc, fc = 0.5 * (k[:2] + k[2:]), 0.5 * (f[:2] + f[2:])
                corners.append(np.concatenate([fc + zoom * (b[:2] - kc), fc + zoom * (b[2:] - kc)]))
                corners += [k, f]  # the whole face in both frames: its motion is estimated with its context
                pad = max(pad, 8.0 + LANDING_PAD * max(f[2] - f[0], k[2] - k[0]))
            else:
                pad = max(pad, 0.25 * max(h, w))
        if not corners:
            return None
        c = np.stack(corners)
        x0, y0 = np.floor(c[:, :2].min(0) - pad).astype(int)
        x1, y1 = np.ceil(c[:, 2:].max(0) + pad).astype(int)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        return (x0, y0, x1, y1) if x1 - x0 >= 8 and y1 - y0 >= 8 else None


@ipfacediff.hookimpl
def register_propagators(register):
    register(Layered, name="layered")
