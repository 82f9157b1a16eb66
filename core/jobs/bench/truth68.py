"""An independent ground truth for propagation: synthetic edits that move by **dlib's 68-point
landmarks**, a model that no propagator and no default component of ipfacediff uses (the propagators
follow optical flow and FaceMesh; detection is RetinaFace), trained on another data set (iBUG 300-W).
A propagator is therefore not graded against its own motion model here.

The edit is drawn on the reference keyframe (the clip's first frame) in layers that move differently,
each carried to every frame by its own motion:

* ``paint`` (surface): a textured face paint over the cheeks, chin and nose, carried by a thin-plate
  spline through the 68 landmarks (reference -> frame); it is never on the lips, and never inside
  the frame's own open mouth (teeth and tongue show through);
* ``glasses`` (rigid): eyeglass rims and bridge, carried by the similarity fitted to the stable
  points (eye corners and nose bridge), so they do not bend when the eyes close;
* ``sunglasses`` (rigid): tinted lenses (a dark tint over each eye, filled: the eye shows through
  faintly), their rims and a bridge, carried as ``glasses`` are;
* ``lips`` (surface): lip colour, carried by the spline and kept on the frame's own lips (outer lip
  minus the open mouth);
* ``hair`` (a recolour of the frame's own pixels): blonde hair. The reference frame's hair is found
  by GrabCut (the head told from the background) less the face and the skin's colour
  (:func:`hair_model`); it is carried by the head's similarity, as ``glasses`` are, and in each frame
  recoloured (:func:`blonde`: the pixel's brightness on a golden ramp, the texture kept) where the
  frame's own pixel has hair's colour (a colour model of the reference frame's hair against the rest
  of the zone round the head), so background the head uncovers stays as it is;
* ``hat`` (rigid, off the face): an opaque felt hat, its brim at the top of the forehead and its crown
  over the hair and the background, carried as ``glasses`` are (:func:`_hat`);
* ``smile`` (geometric): no colour at all: the mouth corners pulled out and up by a displacement field
  built on each frame's own landmarks; the truth is each source frame warped by it.

An edit is one layer or several joined with ``+`` (``paint+glasses``). The landmarks are fitted in the
box dlib's own face detector draws (:func:`dlib_boxes`), smoothed in time where the head is still
(:func:`smooth_landmarks`: dlib's jitter would otherwise be part of the truth) and kept as they are where
it moves.
"""

from __future__ import annotations

import cv2
import numpy as np

LAYERS = ("paint", "glasses", "sunglasses", "lips", "smile", "hair", "hat")
JAW, BROWS, NOSE_BRIDGE = list(range(0, 17)), list(range(17, 27)), [27, 28, 29, 30]
EYES = (list(range(36, 42)), list(range(42, 48)))
OUTER_LIPS, INNER_LIPS = list(range(48, 60)), list(range(60, 68))
STABLE = [27, 28, 29, 30, 31, 35, 36, 39, 42, 45]  # nose bridge, nostrils, eye corners: the rigid frame
HAIR_ALPHA = 0.85  # how much of the recolour the hair takes
# dlib's detector box in the tracker's (RetinaFace's) box, for a clip where the detector never finds the face
# (x0, y0, x1, y1 as shares of the tracker's width and height: the median of the six shared clips' medians)
DLIB_BOX = (-0.05, 0.17, 1.06, 0.97)
DLIB_SMALLEST = 80  # px: the smallest face dlib's detector finds without upsampling
DLIB_PROBES = 32  # frames the detector's box is measured on


def parse_edit(edit: str) -> list[str]:
    layers = [x.strip() for x in edit.split("+") if x.strip()]
    bad = [x for x in layers if x not in LAYERS]
    if not layers or bad:
        raise ValueError(f"ground truth: unknown layer {bad[0] if bad else edit!r} ({', '.join(LAYERS)})")
    return layers


# ------------------------------------------------------------------------------------ landmarks
def dlib68_landmarks(frames: np.ndarray, track, smooth: int = 7, sigma: float = 0.02, boxes=None) -> np.ndarray:
    """``float32 [T, 68, 2]``: dlib's 68 landmarks of the tracked face in each frame (fitted in the box
    :func:`dlib_boxes` gives, or in ``boxes``, one per frame or None; a frame without a box takes the
    previous frame's), smoothed by :func:`smooth_landmarks`."""
    import dlib

    from ipfacediff.runtime import models

    predictor = dlib.shape_predictor(str(models.resolve("dlib-68-landmarks")))
    out, last = [], None
    for f, box in zip(frames, dlib_boxes(frames, track) if boxes is None else boxes):
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            shape = predictor(np.ascontiguousarray(f), dlib.rectangle(x0, y0, x1, y1))
            last = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
        if last is None:
            raise ValueError("ground truth: no face in the first frame")
        out.append(last)
    return smooth_landmarks(np.stack(out), smooth, sigma)


def dlib_boxes(frames: np.ndarray, track, probes: int = DLIB_PROBES) -> list[np.ndarray | None]:
    """Per frame, the box ``(x0, y0, x1, y1)`` to fit dlib's landmarks in (None where the track has no face):
    the tracker's box reshaped to the box dlib's own face detector draws round that face, the box its
    shape predictor was trained on. The shape is the median, over up to ``probes`` frames spread over the
    clip, of the detector's box relative to the tracker's (``DLIB_BOX`` where the detector never finds
    the face); the place follows the tracker, which is smooth in time.

    Measured on the six shared clips (benchmarks/README.md): fitted in the tracker's box as it is
    (RetinaFace's, taller: from the hairline), the landmarks slid up, on d12 the brows into the hair
    (frames 38-48, the stable points 5-17 px off those fitted in the detector's box); the glasses the
    truth moves by them then lay 1.19 px (mean over the clips) from where the head's motion by optical
    flow puts them, 0.92 px with this box, and 1.07 px in the detector's own box per frame (found in
    8 px cells, it steps from frame to frame)."""
    import dlib

    from ipfacediff.runtime.face import box_iou

    detector = dlib.get_frontal_face_detector()
    have = [t for t, d in enumerate(track) if d is not None]
    rel = []
    for t in [have[i] for i in np.unique(np.linspace(0, len(have) - 1, min(probes, len(have))).astype(int))]:
        x0, y0, x1, y1 = (float(v) for v in track[t].box)
        up = 1 if x1 - x0 < 2 * DLIB_SMALLEST else 0  # the detector finds faces from 80 px; upsampled, 40
        best, overlap = None, 0.0
        for r in detector(np.ascontiguousarray(frames[t]), up):
            b = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64)
            if not (x0 <= (b[0] + b[2]) / 2 <= x1 and y0 <= (b[1] + b[3]) / 2 <= y1):
                continue  # another face
            iou = box_iou(b, track[t].box)
            if iou > overlap:
                best, overlap = (b - [x0, y0, x0, y0]) / [x1 - x0, y1 - y0, x1 - x0, y1 - y0], iou
        if best is not None:
            rel.append(best)
    shape = np.median(rel, 0) if rel else np.asarray(DLIB_BOX, np.float64)
    out: list[np.ndarray | None] = []
    for d in track:
        if d is None:
            out.append(None)
            continue
        x0, y0, x1, y1 = (float(v) for v in d.box)
        out.append(np.array([x0, y0, x0, y0]) + shape * [x1 - x0, y1 - y0, x1 - x0, y1 - y0])
    return out


def smooth_landmarks(lms: np.ndarray, window: int = 7, sigma: float = 0.02) -> np.ndarray:
    """dlib's frame-to-frame jitter taken out, not the face's motion: each frame's landmarks averaged
    with those of the frames within ``window`` whose stable points lie close to its own (a weight
    ``exp(-d^2 / 2 s^2)``, ``d`` the stable points' mean distance, ``s`` = ``sigma`` eye widths). A
    head at rest is averaged over the window; a fast move, a cut or a repeated frame (clips converted
    from another frame rate) is kept as it is. Measured (benchmarks/README.md): on a clip with
    repeated frames a plain 3-frame average made the truth's warp error 18.1 grey levels (the source's
    own: 1.2; this filter: 5.4); on the still clips it took 2.4 -> 1.8 and 1.8 -> 1.3."""
    if window <= 1 or len(lms) < 2:
        return lms
    eye = float(np.linalg.norm(lms[:, 45] - lms[:, 36], axis=-1).mean())
    s2 = 2 * max(sigma * eye, 1e-3) ** 2
    stable = lms[:, STABLE]
    out = np.empty_like(lms)
    for t in range(len(lms)):
        idx = np.arange(max(0, t - window // 2), min(len(lms), t + window // 2 + 1))
        d2 = ((stable[idx] - stable[t]) ** 2).sum(-1).mean(-1)
        w = np.exp(-d2 / s2)
        out[t] = np.tensordot(w / w.sum(), lms[idx], 1)
    return out.astype(np.float32)


def _poly(points: np.ndarray, shape) -> np.ndarray:
    m = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(m, [np.rint(points * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return m.astype(bool)


def face_mask(lms: np.ndarray, shape) -> np.ndarray:
    """The face of one frame: the hull of the jaw and the brows (lifted by a fifth of the nose's length
    to take in the forehead above them)."""
    lift = 0.2 * np.linalg.norm(lms[30] - lms[27])
    up = lms[BROWS] - [0, lift]
    return _poly(cv2.convexHull(np.concatenate([lms[JAW], up]).astype(np.float32))[:, 0], shape)


def mouth_opening(lms: np.ndarray, shape) -> np.ndarray:
    """Inside the inner lips: teeth, tongue, the dark of the mouth."""
    return _poly(lms[INNER_LIPS], shape)


def lips_mask(lms: np.ndarray, shape) -> np.ndarray:
    return _poly(lms[OUTER_LIPS], shape) & ~mouth_opening(lms, shape)


# ------------------------------------------------------------------------------------ motion
def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    m, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS)
    return m if m is not None else np.float32([[1, 0, 0], [0, 1, 0]])


def tps_map(at: np.ndarray, ref: np.ndarray, shape, step: int = 4, smoothing: float = 1e-3) -> np.ndarray:
    """``float32 [h, w, 2]``: for every pixel of the frame whose landmarks are ``at``, where it lies in
    the frame whose landmarks are ``ref``: a thin-plate spline through the landmark pairs, with the
    frame's border moved by the similarity of the two (so the warp stays bounded far from the face).
    Solved in coordinates scaled to the frame, evaluated every ``step`` pixels and interpolated."""
    h, w = shape[:2]
    m = _similarity(at, ref)
    bx = np.linspace(0, w - 1, 6)
    by = np.linspace(0, h - 1, 6)
    border = np.array(
        [(x, 0) for x in bx] + [(x, h - 1) for x in bx] + [(0, y) for y in by[1:-1]] + [(w - 1, y) for y in by[1:-1]],
        np.float32,
    )
    src = np.concatenate([at, border])
    dst = np.concatenate([ref, border @ m[:, :2].T + m[:, 2]])
    scale = float(max(h, w))
    p, q = src / scale, dst / scale

    def kernel(a, b):
        r2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.where(r2 > 0, r2 * np.log(r2 + 1e-20), 0.0)

    n = len(p)
    mat = np.zeros((n + 3, n + 3))
    mat[:n, :n] = kernel(p, p) + smoothing * np.eye(n)
    mat[:n, n] = 1
    mat[:n, n + 1 :] = p
    mat[n, :n] = 1
    mat[n + 1 :, :n] = p.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = q
    coef = np.linalg.solve(mat, rhs)
    gy, gx = np.mgrid[0 : h + step : step, 0 : w + step : step].astype(np.float64)
    g = np.stack([gx.ravel(), gy.ravel()], -1) / scale
    out = kernel(g, p) @ coef[:n] + coef[n] + g @ coef[n + 1 :]
    coarse = (out * scale).reshape(gx.shape + (2,)).astype(np.float32)
    up = np.float32([[1 / step, 0, 0], [0, 1 / step, 0]])  # pixel (x, y) reads the grid at (x, y) / step
    full = cv2.warpAffine(coarse, up, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return np.ascontiguousarray(full)


def similarity_map(at: np.ndarray, ref: np.ndarray, shape) -> np.ndarray:
    """Like :func:`tps_map`, by the similarity fitted to the stable points alone (a rigid accessory)."""
    h, w = shape[:2]
    m = _similarity(at[STABLE], ref[STABLE])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([m[0, 0] * xs + m[0, 1] * ys + m[0, 2], m[1, 0] * xs + m[1, 1] * ys + m[1, 2]], -1).astype(
        np.float32
    )


def smile_field(lms: np.ndarray, shape, strength: float = 0.12) -> np.ndarray:
    """The backward map of the smile on one frame: each pixel near a mouth corner reads from further in
    and lower down, so the corners move out and up by ``strength`` mouth widths (a smooth falloff that
    reaches zero a mouth width from each corner: the rest of the face stays as it is)."""
    h, w = shape[:2]
    left, right = lms[48], lms[54]
    width = float(np.linalg.norm(right - left))
    across = (right - left) / max(width, 1e-6)
    up = np.array([across[1], -across[0]])  # perpendicular, pointing up the face
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    mp = np.stack([xs, ys], -1).astype(np.float32)
    sigma = 0.5 * width  # the falloff's radius is 2 sigma
    for corner, out in ((left, -across), (right, across)):
        move = strength * width * (out + 0.6 * up)
        r2 = ((xs - corner[0] - move[0]) ** 2 + (ys - corner[1] - move[1]) ** 2) / (2 * sigma) ** 2
        fall = np.clip(1 - r2, 0, None) ** 2  # smooth, and zero a mouth width from the corner: the mouth alone
        mp -= (fall[..., None] * move).astype(np.float32)
    return np.ascontiguousarray(mp)


# ------------------------------------------------------------------------------------ layers
def paint_texture(u: np.ndarray, v: np.ndarray, shape, seed: int) -> np.ndarray:
    """``float32 [h, w, 3]`` RGB: the synthetic face paint's colour at texture coordinates ``(u, v)``
    (in stripes' periods): hue bands with steps and a smooth random tint (both truths draw it)."""
    h, w = shape[:2]
    rng = np.random.default_rng(seed)
    hue = (np.sin(u * 2.1 + v * 1.3) * 0.5 + 0.5) * 120 + (np.sin(v * 3.7) > 0.2) * 40
    noise = cv2.resize(rng.random((16, 16)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    hsv = np.stack([(hue + 30 * noise) % 180, np.full_like(hue, 200), 150 + 80 * noise], -1).clip(0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)


def rgba(color, alpha: np.ndarray) -> np.ndarray:
    """``float32 [h, w, 4]``: a colour (an RGB image or one RGB triple) with ``alpha``."""
    rgb = np.empty((*alpha.shape, 3), np.float32)
    rgb[:] = color
    return np.concatenate([rgb, alpha[..., None].astype(np.float32)], -1)


def _paint(lms: np.ndarray, shape, seed: int) -> np.ndarray:
    """RGBA: a textured paint over the lower face (below the eyes), off the lips and the eyes."""
    h, w = shape[:2]
    eye_w = float(np.linalg.norm(lms[45] - lms[36]))
    eyes_y = max(lms[EYES[0]][:, 1].max(), lms[EYES[1]][:, 1].max()) + 0.15 * eye_w
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    region = face_mask(lms, shape) & (ys > eyes_y)
    region &= ~cv2.dilate(_poly(lms[OUTER_LIPS], shape).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    period = eye_w / 3.0
    color = paint_texture(xs / period, ys / period, shape, seed)
    return rgba(color, cv2.GaussianBlur(region.astype(np.float32), (0, 0), max(1.0, eye_w / 40)) * 0.75)


def _glasses(lms: np.ndarray, shape, lenses: bool = False) -> np.ndarray:
    """RGBA: thin dark rims around both eyes and a bridge, anti-aliased; with ``lenses``, the rims filled
    with a dark tint (sunglasses: alpha 0.85 at the lens's top to 0.7 at its bottom)."""
    h, w = shape[:2]
    ss = 4
    canvas = np.zeros((h * ss, w * ss), np.float32)
    d = lms[45] - lms[36]
    eye_w = float(np.linalg.norm(d))
    ang = float(np.degrees(np.arctan2(d[1], d[0])))
    thick = max(1, int(round(eye_w * 0.035 * ss)))
    u = d / max(eye_w, 1e-6)
    ends = []
    for eye in EYES:
        c = lms[eye].mean(0)
        half = 0.95 * float(np.linalg.norm(lms[eye[3]] - lms[eye[0]]))
        axes = (half, half * 0.72)
        ends.append((c, half))
        pt = tuple(int(round(x * ss)) for x in c)
        cv2.ellipse(canvas, pt, tuple(int(round(a * ss)) for a in axes), ang, 0, 360, 1.0, thick, cv2.LINE_AA)
        if lenses:
            lens = np.zeros_like(canvas)
            cv2.ellipse(lens, pt, tuple(int(round(a * ss)) for a in axes), ang, 0, 360, 1.0, -1, cv2.LINE_AA)
            top = (c[1] - axes[1]) * ss  # a gradient tint: 0.85 at the lens's top, 0.7 at its bottom
            fall = np.clip((np.arange(h * ss, dtype=np.float32) - top) / (2 * axes[1] * ss), 0, 1)
            canvas = np.maximum(canvas, lens * (0.85 - 0.15 * fall)[:, None] / 0.95)
    a_in, b_in = ends[0][0] + u * ends[0][1], ends[1][0] - u * ends[1][1]
    cv2.line(
        canvas,
        tuple(int(round(x * ss)) for x in a_in),
        tuple(int(round(x * ss)) for x in b_in),
        1.0,
        thick,
        cv2.LINE_AA,
    )
    return rgba((22, 20, 24), cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA) * 0.95)


def _hat(lms: np.ndarray, shape) -> np.ndarray:
    """RGBA: an opaque felt hat square to the face (tilted with the line of the eye corners). Its brim, 1.5
    jaw widths wide, sits 0.38 face heights (brows to chin) above the brows, about the top of the forehead;
    its crown rises 0.55 face heights above it, a dark band at its foot. Anti-aliased edges (drawn at twice
    the size)."""
    h, w = shape[:2]
    ss = 2
    d = lms[45] - lms[36]
    right = d / max(float(np.linalg.norm(d)), 1e-6)
    up = np.array([right[1], -right[0]])
    jaw_w = float(np.linalg.norm(lms[16] - lms[0]))
    brows = lms[BROWS]
    height = float(np.linalg.norm(lms[8] - brows.mean(0)))
    base = brows.mean(0) + up * 0.38 * height  # the brim's middle

    def at(x: float, y: float) -> np.ndarray:  # px from the brim's middle: x along the eyes, y up
        return np.rint((base + right * x + up * y) * ss).astype(np.int32)

    alpha = np.zeros((h * ss, w * ss), np.float32)
    paint = np.zeros((h * ss, w * ss, 3), np.float32)  # premultiplied by alpha
    shapes = [  # back to front: crown, band, brim
        ([(-0.47, 0.0), (0.47, 0.0), (0.42, 0.55), (-0.42, 0.55)], (128, 32, 38)),
        ([(-0.47, 0.0), (0.47, 0.0), (0.465, 0.08), (-0.465, 0.08)], (34, 26, 28)),
        ([(-0.75, -0.04), (0.75, -0.04), (0.75, 0.03), (-0.75, 0.03)], (112, 28, 34)),
    ]
    for corners, colour in shapes:
        poly = np.stack([at(x * jaw_w, y * height) for x, y in corners])
        mask = np.zeros_like(alpha)
        cv2.fillPoly(mask, [poly], 1.0, cv2.LINE_AA)
        paint = paint * (1 - mask[..., None]) + np.float32(colour) * mask[..., None]
        alpha = alpha * (1 - mask) + mask
    small = cv2.resize(np.concatenate([paint, alpha[..., None]], -1), (w, h), interpolation=cv2.INTER_AREA)
    a = small[..., 3]
    return np.concatenate([small[..., :3] / np.maximum(a, 1e-6)[..., None], a[..., None]], -1).astype(np.float32)


def head_zone(lms: np.ndarray, shape) -> np.ndarray:
    """Where hair can be round one face: an ellipse over the top and the sides of the head (as wide as
    1.7 jaw widths, reaching 0.9 face heights above the brows and down to the chin), less the face."""
    h, w = shape[:2]
    jaw_w = float(np.linalg.norm(lms[16] - lms[0]))
    brow_y = float(lms[BROWS][:, 1].min())
    height = float(lms[8, 1]) - brow_y
    cx = float(lms[JAW][:, 0].mean())
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = brow_y + 0.2 * height
    inside = ((xs - cx) / (0.85 * jaw_w)) ** 2 + ((ys - cy) / (1.1 * height)) ** 2 <= 1
    return inside & (ys <= lms[8, 1]) & ~face_mask(lms, shape)


def hair_model(frame: np.ndarray, lms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hair of one frame (``float32 [h, w]`` in 0..1) and a colour model (``float32 [16, 16, 16]``:
    the chance that a pixel of an RGB bin is hair). The head (face and hair) is told from the background
    by GrabCut (OpenCV; seeded with the face as the head, the frame's edge as background) inside
    :func:`head_zone`; hair is the head less the face and less pixels of the skin's colour (the
    forehead, ears, neck) and less islands under 5% of its largest part (a highlight on the forehead).
    The colour model: hair's colour histogram against that of the rest of the zone (background and
    skin)."""
    h, w = frame.shape[:2]
    zone = head_zone(lms, frame.shape)
    face = face_mask(lms, frame.shape)
    ys, xs = np.nonzero(zone | face)
    pad = int(0.1 * (xs.max() - xs.min() + 1))
    x0, y0 = max(0, xs.min() - pad), max(0, ys.min() - pad)
    x1, y1 = min(w, xs.max() + pad + 1), min(h, ys.max() + pad + 1)
    s = min(1.0, 200.0 / max(x1 - x0, y1 - y0))
    small = (max(8, round((x1 - x0) * s)), max(8, round((y1 - y0) * s)))

    def shrink(m: np.ndarray) -> np.ndarray:
        return cv2.resize(m[y0:y1, x0:x1].astype(np.uint8), small, interpolation=cv2.INTER_NEAREST) > 0

    img = cv2.resize(np.ascontiguousarray(frame[y0:y1, x0:x1]), small, interpolation=cv2.INTER_AREA)
    seed = np.full(img.shape[:2], cv2.GC_PR_BGD, np.uint8)
    seed[shrink(zone)] = cv2.GC_PR_FGD
    seed[cv2.erode(shrink(face).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0] = cv2.GC_FGD
    edge = np.zeros(img.shape[:2], bool)
    edge[:3], edge[:, :3], edge[:, -3:] = True, True, True
    seed[edge & ~shrink(zone)] = cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut starts its colour models from k-means on OpenCV's shared generator
    cv2.grabCut(img[..., ::-1].copy(), seed, None, bgd, fgd, 5, cv2.GC_INIT_WITH_MASK)
    head = np.zeros((h, w), bool)
    head[y0:y1, x0:x1] = (
        cv2.resize(
            ((seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD)).astype(np.uint8), (x1 - x0, y1 - y0), cv2.INTER_NEAREST
        )
        > 0
    )
    lab = cv2.cvtColor(frame, cv2.COLOR_RGB2LAB).astype(np.float32)
    skin = np.median(lab[face], 0)
    skin_like = (np.linalg.norm((lab - skin)[..., 1:], axis=-1) < 10) & (np.abs(lab[..., 0] - skin[0]) < 50)
    hair = head & zone & ~skin_like
    hair = cv2.morphologyEx(hair.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hair, connectivity=8)
    if n > 1:  # islands (a highlight on the forehead, a strand of background) are not the hair
        area = stats[1:, cv2.CC_STAT_AREA]
        hair = np.isin(labels, 1 + np.flatnonzero(area >= 0.05 * area.max()))
    hair = hair.astype(bool)
    bins = (frame // 16).astype(np.int64)
    idx = bins[..., 0] * 256 + bins[..., 1] * 16 + bins[..., 2]
    hist_h = np.bincount(idx[hair], minlength=4096).reshape(16, 16, 16).astype(np.float32)
    hist_o = np.bincount(idx[zone & ~hair], minlength=4096).reshape(16, 16, 16).astype(np.float32)
    hist_h = cv2.GaussianBlur(hist_h / max(hist_h.sum(), 1), (0, 0), 0.7)
    hist_o = cv2.GaussianBlur(hist_o / max(hist_o.sum(), 1), (0, 0), 0.7)
    chance = hist_h / np.maximum(hist_h + hist_o, 1e-9)
    return cv2.GaussianBlur(hair.astype(np.float32), (0, 0), 1.0), chance.astype(np.float32)


def hair_chance(frame: np.ndarray, chance: np.ndarray) -> np.ndarray:
    """``float32 [h, w]``: how likely each pixel of ``frame`` is hair by its colour (:func:`hair_model`)."""
    b = (frame // 16).astype(np.int64)
    return chance[b[..., 0], b[..., 1], b[..., 2]]


def blonde(img: np.ndarray) -> np.ndarray:
    """The recolour of the ``hair`` layer: each pixel's brightness mapped onto a golden ramp (dark gold to
    pale straw), so the hair's own texture stays and its colour changes."""
    y = (img @ np.float32([0.299, 0.587, 0.114]) / 255.0)[..., None] ** 0.6
    lo, hi = np.float32([95, 62, 25]), np.float32([250, 226, 160])
    return lo + (hi - lo) * y


def _lips(lms: np.ndarray, shape) -> np.ndarray:
    """RGBA: a red lip colour on the lips (alpha 0.6, soft edge)."""
    return rgba((190, 20, 60), cv2.GaussianBlur(lips_mask(lms, shape).astype(np.float32), (0, 0), 1.0) * 0.6)


def ground_truth(
    frames: np.ndarray, lms: np.ndarray, edit: str, ref: int = 0, seed: int = 0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The edited clip (``uint8 [T, H, W, 3]``) and, per layer, where it is in each frame (``bool
    [T, H, W]``): the layers drawn on frame ``ref``, each carried by its motion, composited in the
    order hair, paint, lips, glasses, sunglasses, hat (eyewear and the hat on top); ``smile`` warps each
    source frame first."""
    shape = frames.shape[1:3]
    layers = parse_edit(edit)
    hair = None
    if "hair" in layers:  # the reference frame's hair, a little wider (the head's similarity is not exact)
        hair, chance = hair_model(frames[ref], lms[ref])
        grow = max(3, int(round(0.04 * float(np.linalg.norm(lms[ref][16] - lms[ref][0])))) | 1)
        hair = cv2.dilate(hair, np.ones((grow, grow), np.uint8))
        chin, top = float(lms[ref][8, 1]), float(lms[ref][BROWS][:, 1].min())
        ys = np.arange(shape[0], dtype=np.float32)[:, None]
        hair *= np.clip((chin - ys) / (0.3 * (chin - top)), 0, 1)  # long hair fades out towards the chin
    drawn = {
        "paint": _paint(lms[ref], shape, seed) if "paint" in layers else None,
        "lips": _lips(lms[ref], shape) if "lips" in layers else None,
        "glasses": _glasses(lms[ref], shape) if "glasses" in layers else None,
        "sunglasses": _glasses(lms[ref], shape, lenses=True) if "sunglasses" in layers else None,
        "hat": _hat(lms[ref], shape) if "hat" in layers else None,
    }
    out = np.empty_like(frames)
    where = {name: np.zeros(frames.shape[:3], bool) for name in layers}
    for t, f in enumerate(frames):
        img = f.astype(np.float32)
        if "smile" in layers:
            mp = smile_field(lms[t], shape)
            img = cv2.remap(img, mp, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            moved = np.linalg.norm(mp - np.stack(np.mgrid[0 : shape[0], 0 : shape[1]][::-1], -1), axis=-1)
            where["smile"][t] = moved > 0.25
        if hair is not None:  # the frame's own hair-coloured pixels where the head carries the hair
            moved = cv2.remap(
                hair, similarity_map(lms[t], lms[ref], shape), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
            )
            a = (HAIR_ALPHA * moved * cv2.GaussianBlur(hair_chance(f, chance), (0, 0), 1.0))[..., None]
            img = img * (1 - a) + blonde(img) * a
            where["hair"][t] = a[..., 0] > 0.02
        surface = tps_map(lms[t], lms[ref], shape) if drawn["paint"] is not None or drawn["lips"] is not None else None
        for name in ("paint", "lips", "glasses", "sunglasses", "hat"):
            layer = drawn[name]
            if layer is None:
                continue
            mp = similarity_map(lms[t], lms[ref], shape) if name in ("glasses", "sunglasses", "hat") else surface
            lt = cv2.remap(
                layer, np.ascontiguousarray(mp, np.float32), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
            )
            a = lt[..., 3]
            if name == "paint":  # never on the lips or in the open mouth of this frame
                a = a * ~cv2.dilate(_poly(lms[t][OUTER_LIPS], shape).astype(np.uint8), np.ones((3, 3))).astype(bool)
            if name == "lips":
                a = a * lips_mask(lms[t], shape)
            img = img * (1 - a[..., None]) + lt[..., :3] * a[..., None]
            where[name][t] = a > 0.02
        out[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out, where
