"""Ground truth for propagation: a synthetic edit that moves with the face, so the edited video is
known on every frame.

The edit is drawn once on the reference keyframe (the clip's first frame) in face coordinates
(positions taken from that frame's 468 FaceMesh landmarks) as an RGBA layer, and carried to every
frame by the piecewise-affine warp of the reference landmarks onto that frame's own landmarks
(triangles drawn far to near, so a turned head hides the far side). Two kinds:

* ``paint``: a coloured, textured face paint on the cheeks and chin (alpha 0.75, soft edge);
* ``glasses``: thin dark eyeglass rims, bridge and temples (alpha 0.95, anti-aliased).

A propagator given the source frames and the ground truth's keyframes should rebuild the other
frames; it is scored over the face (the landmarks' hull), over the edit alone and over each of its
layers, and by its temporal error against the truth.

This FaceMesh truth moves by the landmarks ``mesh-flow`` follows, so that propagator grades itself on
it (marked in every table). The default truth is the independent one of :mod:`.truth68`, which moves
by dlib's 68 landmarks (``--truth dlib68``; ``--truth dlib68,facemesh`` runs both).
"""

from __future__ import annotations

import time

import cv2
import numpy as np

import ipfacediff.jobs.bench.truth68 as truth68
from ipfacediff.jobs.bench.truth68 import paint_texture, rgba
from ipfacediff.runtime.facemesh import face_mesh, load_facemesh, piecewise_affine_map, triangulate

EDITS = ("paint", "glasses")
TRUTHS = {"dlib68": "dlib's 68 landmarks (independent)", "facemesh": "FaceMesh's 468 landmarks"}
TRUTH_MODEL = {"dlib68": "dlib68", "facemesh": "facemesh"}  # a propagator following it grades itself
NOSE_TIP, MOUTH_CORNERS, INNER_LIPS = 1, (61, 291), (13, 14)
EYES = ((33, 133), (263, 362))  # (outer, inner) corner of each eye


def track_landmarks(frames: np.ndarray, track, net=None) -> np.ndarray:
    """``[T, 468, 3]`` FaceMesh landmarks of the tracked face in each frame (frames without a
    detection take the previous frame's landmarks)."""
    net = net or load_facemesh()
    out, last = [], None
    for f, d in zip(frames, track):
        if d is not None:
            eyes = d.landmarks[:2] if d.landmarks is not None else None
            last = face_mesh(net, f, d.box, eyes)[0]
        if last is None:
            raise ValueError("ground truth: no face in the first frame")
        out.append(last)
    return np.stack(out)


def _hull_mask(points: np.ndarray, shape) -> np.ndarray:
    m = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(
        m, np.rint(cv2.convexHull(points[:, :2].astype(np.float32))[:, 0] * 16).astype(np.int32), 1, cv2.LINE_8, 4
    )
    return m.astype(bool)


def face_mask(lms: np.ndarray, shape) -> np.ndarray:
    """The face region of one frame: the convex hull of its landmarks."""
    return _hull_mask(lms, shape)


def _paint_layer(lms: np.ndarray, shape, seed: int) -> np.ndarray:
    h, w = shape[:2]
    pts = lms[:, :2]
    d = pts[EYES[1][0]] - pts[EYES[0][0]]
    ang = np.arctan2(d[1], d[0])
    rot = np.array([[np.cos(ang), np.sin(ang)], [-np.sin(ang), np.cos(ang)]])  # frame -> face-upright
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    up = np.stack([xs, ys], -1) @ rot.T.astype(np.float32)
    nose_y = (pts[NOSE_TIP] @ rot.T)[1]
    eye_w = float(np.linalg.norm(d))
    region = face_mask(lms, shape) & (up[..., 1] > nose_y)
    mouth = (pts[MOUTH_CORNERS[0]] + pts[MOUTH_CORNERS[1]]) / 2
    mw = np.linalg.norm(pts[MOUTH_CORNERS[1]] - pts[MOUTH_CORNERS[0]]) * 0.65
    mh = max(np.linalg.norm(pts[INNER_LIPS[0]] - pts[INNER_LIPS[1]]), 0.15 * mw) + 0.3 * mw
    mu = mouth @ rot.T
    region &= ((up[..., 0] - mu[0]) / mw) ** 2 + ((up[..., 1] - mu[1]) / mh) ** 2 > 1.0
    period = eye_w / 3.0
    color = paint_texture(up[..., 0] / period, up[..., 1] / period, shape, seed)
    return rgba(color, cv2.GaussianBlur(region.astype(np.float32), (0, 0), max(1.0, eye_w / 40)) * 0.75)


def _glasses_layer(lms: np.ndarray, shape) -> np.ndarray:
    h, w = shape[:2]
    ss = 4  # drawn 4x larger, then averaged down: anti-aliased rims
    pts = lms[:, :2]
    canvas = np.zeros((h * ss, w * ss), np.float32)
    eye_w = float(np.linalg.norm(pts[EYES[1][0]] - pts[EYES[0][0]]))
    thick = max(1, int(round(eye_w * 0.035 * ss)))
    d = pts[EYES[1][0]] - pts[EYES[0][0]]
    ang = float(np.degrees(np.arctan2(d[1], d[0])))
    rims = []
    for outer, inner in EYES:
        c = (pts[outer] + pts[inner]) / 2
        width = np.linalg.norm(pts[outer] - pts[inner]) * 1.9
        axes = (width / 2, width * 0.36)
        rims.append((c, axes))
        cv2.ellipse(
            canvas,
            tuple(int(round(x * ss)) for x in c),
            tuple(int(round(a * ss)) for a in axes),
            ang,
            0,
            360,
            1.0,
            thick,
            cv2.LINE_AA,
        )
    u = d / (np.linalg.norm(d) + 1e-9)
    a_in = rims[0][0] + u * rims[0][1][0]
    b_in = rims[1][0] - u * rims[1][1][0]
    cv2.line(
        canvas,
        tuple(int(round(x * ss)) for x in a_in),
        tuple(int(round(x * ss)) for x in b_in),
        1.0,
        thick,
        cv2.LINE_AA,
    )
    hull = cv2.convexHull(pts.astype(np.float32))[:, 0]
    for c, axes, sign in ((rims[0][0], rims[0][1], -1), (rims[1][0], rims[1][1], 1)):
        start = c + sign * u * axes[0]
        side = hull[np.argmax((hull - c) @ (sign * u))]
        end = start + (side - start) * 0.95
        cv2.line(
            canvas,
            tuple(int(round(x * ss)) for x in start),
            tuple(int(round(x * ss)) for x in end),
            1.0,
            thick,
            cv2.LINE_AA,
        )
    return rgba((22, 20, 24), cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA) * 0.95)


def edit_layer(lms: np.ndarray, shape, kind: str, seed: int = 0) -> np.ndarray:
    """``float32 [h, w, 4]`` RGBA layer of the synthetic edit ``kind`` on the frame whose landmarks are ``lms``."""
    if kind == "paint":
        return _paint_layer(lms, shape, seed)
    if kind == "glasses":
        return _glasses_layer(lms, shape)
    raise ValueError(f"ground truth: unknown edit {kind!r} ({', '.join(EDITS)})")


def ground_truth(
    frames: np.ndarray, lms: np.ndarray, kind: str, ref: int = 0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The edited clip (``uint8 [T, H, W, 3]``) and the edit's alpha per frame (``[T, H, W]``): the
    layer drawn on frame ``ref`` carried to each frame by the piecewise-affine landmark warp."""
    shape = frames.shape[1:3]
    layer = edit_layer(lms[ref], shape, kind, seed)
    tris = triangulate(lms[ref])
    out, alphas = np.empty_like(frames), np.zeros(frames.shape[:3], np.float32)
    for t, f in enumerate(frames):
        mp, inside = piecewise_affine_map(lms[t], lms[ref], tris, shape, depth=lms[t][:, 2])
        lt = cv2.remap(layer, mp[..., 0], mp[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        a = np.where(inside, lt[..., 3], 0.0).astype(np.float32)
        out[t] = np.clip(
            np.rint(f.astype(np.float32) * (1 - a[..., None]) + lt[..., :3] * a[..., None]), 0, 255
        ).astype(np.uint8)
        alphas[t] = a
    return out, alphas


# ------------------------------------------------------------------------------ the benchmark job
BASELINES = ("source", "copy-nearest", "flow-warp-edited", "taesd-roundtrip", "truth-resmoothed")
#: ``truth-resmoothed``: the dlib truth drawn again with its landmarks smoothed over this many frames instead
#: of :func:`truth68.smooth_landmarks`' default: how precisely the truth itself is defined (dlib truth only)
RESMOOTH_WINDOW = 5
DEFAULT_PROPAGATORS = ("flow-residual", "mesh-flow", "layered")
INTERVALS = (8, 16)
SCORES = ("face_psnr", "face_ssim", "edit_psnr", "edit_ssim", "temporal_error", "warp_error")


def keyframes_of(interval: int, n: int) -> list[int]:
    """The keyframes of a scenario: every ``interval``-th frame from 0; interval 0: the first frame only."""
    return [0] if interval == 0 else list(range(0, n, interval))


def temporal_error(out: np.ndarray, gt: np.ndarray, masks: list[np.ndarray]) -> float:
    """Mean absolute difference (grey levels) between the output's frame-to-frame change and the
    truth's, over the face: flicker or lag the truth does not have."""
    errs = []
    for t in range(len(out) - 1):
        d = (out[t + 1].astype(np.float32) - out[t]) - (gt[t + 1].astype(np.float32) - gt[t])
        if masks[t].any():
            errs.append(float(np.abs(d)[masks[t]].mean()))
    return float(np.mean(errs)) if errs else float("nan")


def _masked_scores(out: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM (luminance, Gaussian window) of ``out`` against ``gt`` over ``mask``."""
    from skimage.metrics import structural_similarity

    if not mask.any():
        return float("nan"), float("nan")
    d = (out.astype(np.float64) - gt.astype(np.float64))[mask]
    mse = float((d**2).mean())
    psnr = 100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if min(y1 - y0, x1 - x0) < 7:
        return psnr, float("nan")
    ga = cv2.cvtColor(np.ascontiguousarray(out[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    gb = cv2.cvtColor(np.ascontiguousarray(gt[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    _, smap = structural_similarity(ga, gb, data_range=255, gaussian_weights=True, full=True)
    return psnr, float(smap[mask[y0:y1, x0:x1]].mean())


def source_motion(source: np.ndarray, masks: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each pair of consecutive source frames: the flow from frame t to t+1, and where it can be
    trusted (forward-backward test, inside the face). Computed once per clip, used for every method."""
    from ipfacediff.runtime.flow import optical_flow, valid_mask

    out = []
    for t in range(len(source) - 1):
        fwd, bwd = optical_flow(source[t], source[t + 1]), optical_flow(source[t + 1], source[t])
        out.append((fwd, valid_mask(fwd, bwd) & masks[t]))
    return out


def warp_error(frames: np.ndarray, motion: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean absolute difference (grey levels) between each output frame and the next one brought back
    by the *source*'s optical flow (:func:`source_motion`), where that flow is trusted."""
    from ipfacediff.runtime.flow import warp_back

    errs = [
        float(np.abs(warp_back(frames[t + 1], fwd).astype(np.float32) - frames[t])[m].mean())
        for t, (fwd, m) in enumerate(motion)
        if m.any()
    ]
    return float(np.mean(errs)) if errs else float("nan")


def _roundtrip(gt: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """The ground truth through TAESD (encode, decode) in a window around the face: the best a
    latent-space propagator could give back."""
    import torch

    from ipfacediff.runtime.diffusers_backbone import load_taesd

    vae = load_taesd()
    ys, xs = np.nonzero(np.any(np.stack(masks), 0))
    h, w = gt.shape[1:3]
    y0, x0 = max(0, ys.min() - 16) // 8 * 8, max(0, xs.min() - 16) // 8 * 8
    y1, x1 = min(h, -(-(ys.max() + 17) // 8) * 8), min(w, -(-(xs.max() + 17) // 8) * 8)
    out = gt.copy()
    with torch.no_grad():
        for t in range(len(gt)):
            x = torch.from_numpy(np.ascontiguousarray(gt[t, y0:y1, x0:x1])).permute(2, 0, 1)[None].float() / 127.5 - 1
            y = vae.decode(vae.encode(x).latents).sample
            out[t, y0:y1, x0:x1] = (
                ((y[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()[: y1 - y0, : x1 - x0]
            )
    return out


def _truth(job: dict, frames: np.ndarray, track) -> dict:
    """The job's ground truth: the edited clip, the face and edit masks per frame, and each layer's."""
    shape = frames.shape[1:3]

    def grow(mask: np.ndarray, face: np.ndarray) -> np.ndarray:  # a layer's pixels, 2 px wider, in the face
        return cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & face

    raw = None
    if job.get("truth", "facemesh") == "dlib68":
        raw = truth68.dlib68_landmarks(frames, track, smooth=1)
        lms = truth68.smooth_landmarks(raw)
        gt, where = truth68.ground_truth(frames, lms, job["edit"], seed=job["seed"])
        faces = [truth68.face_mask(lm, shape) for lm in lms]
        for off in ("hair", "hat"):  # they lie round the face: scored over the face and them
            if off in where:
                faces = [f | grow(h, np.ones_like(f)) for f, h in zip(faces, where[off])]
        layers = {name: [grow(m, f) for m, f in zip(w, faces)] for name, w in where.items()}
    else:
        lms = track_landmarks(frames, track)
        gt, alpha = ground_truth(frames, lms, job["edit"], seed=job["seed"])
        faces = [face_mask(lm, shape) for lm in lms]
        layers = {job["edit"]: [grow(a > 0.02, f) for a, f in zip(alpha, faces)]}
    edits = [np.any([layers[k][t] for k in layers], 0) for t in range(len(frames))]
    return {"gt": gt, "faces": faces, "edits": edits, "layers": layers, "raw_landmarks": raw}


def run_groundtruth_job(job: dict, job_dir) -> dict:
    """One clip, one truth and one synthetic edit: the truth, then every method at every keyframe
    interval (0: the first frame only), scored on the non-key frames."""
    from pathlib import Path

    from ipfacediff.catalog import get_catalog
    from ipfacediff.runtime.face import detect_track
    from ipfacediff.runtime.video import open_frames

    catalog = get_catalog()
    processor = catalog.build(
        "face_processor", job["face_processor"] or "retinaface", job["sets"].get("face_processor", {})
    )
    src = open_frames(job["clip"])
    try:
        n = min(len(src), job["max_frames"] or 33)
        frames = src.get(list(range(n)))
        track = detect_track(processor, src, n, 3, False)
    finally:
        src.close()
    if track[0] is None:
        raise ValueError(f"{job['clip']}: no face in the first frame; the ground truth is drawn there")
    truth = _truth(job, frames, track)
    gt, faces, edits, layers = truth["gt"], truth["faces"], truth["edits"], truth["layers"]
    motion = source_motion(frames, faces)
    rows: list[dict] = []
    methods = list(job.get("baselines", BASELINES)) + list(job["propagators"])
    if truth["raw_landmarks"] is None:  # the truth drawn again needs the dlib truth's own landmarks
        methods = [m for m in methods if m != "truth-resmoothed"]
    shown: dict[str, np.ndarray] = {}
    model = TRUTH_MODEL.get(job.get("truth", "facemesh"))
    for interval in job["intervals"]:
        keys = keyframes_of(interval, n)
        others = [t for t in range(n) if t not in keys]
        for m in methods:
            t0 = time.perf_counter()
            out, follows = _method_output(m, job, catalog, frames, truth, keys, track, processor, shown)
            fs = [_masked_scores(out[t], gt[t], faces[t]) for t in others]
            es = [_masked_scores(out[t], gt[t], edits[t]) for t in others]
            by_layer = {}
            for name, masks in layers.items():
                ls = [_masked_scores(out[t], gt[t], masks[t]) for t in others if masks[t].any()]
                by_layer[name] = {
                    "psnr": float(np.nanmean([a for a, _ in ls])) if ls else float("nan"),
                    "ssim": float(np.nanmean([b for _, b in ls])) if ls else float("nan"),
                }
            rows.append(
                {
                    "method": m,
                    "interval": interval,
                    "self_graded": follows is not None and follows == model,
                    "face_psnr": float(np.nanmean([a for a, _ in fs])),
                    "face_ssim": float(np.nanmean([b for _, b in fs])),
                    "edit_psnr": float(np.nanmean([a for a, _ in es])),
                    "edit_ssim": float(np.nanmean([b for _, b in es])),
                    "layers": by_layer,
                    "temporal_error": temporal_error(out, gt, faces),
                    "warp_error": warp_error(out, motion),
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
            if interval == job["intervals"][-1]:
                shown[m] = out
    rows.append(
        {"method": "ground truth", "interval": None, "self_graded": False, "warp_error": warp_error(gt, motion)}
    )
    last = job["intervals"][-1]
    strip = _strip(frames, gt, shown, faces, last if last else min(16, n - 1), n)
    cv2.imwrite(str(Path(job_dir) / "strip.png"), strip[..., ::-1])
    return {
        "scores": rows,
        "frames": n,
        "truth": job.get("truth", "facemesh"),
        "strip": str(Path(job_dir) / "strip.png"),
    }


def _method_output(
    m: str, job: dict, catalog, frames, truth, keys, track, processor, shown
) -> tuple[np.ndarray, bool]:
    """One method's output clip given the ground truth's keyframes, and the landmark model it follows."""
    from ipfacediff.jobs.propagate import carry_edits

    n = len(frames)
    gt, faces = truth["gt"], truth["faces"]
    if m == "source":
        return frames, None
    if m == "truth-resmoothed":  # the same truth from the same landmarks, smoothed over fewer frames
        if "_resmoothed" not in shown:
            lms = truth68.smooth_landmarks(truth["raw_landmarks"], RESMOOTH_WINDOW)
            shown["_resmoothed"] = truth68.ground_truth(frames, lms, job["edit"], seed=job["seed"])[0]
        return shown["_resmoothed"], None
    if m == "taesd-roundtrip":  # independent of the keyframes: computed once per job
        if "_rt" not in shown:
            shown["_rt"] = _roundtrip(gt, faces)
        return shown["_rt"], None
    if m == "copy-nearest":
        return np.stack([gt[min(keys, key=lambda k: (abs(k - t), k))] for t in range(n)]), None
    name, params = (
        ("flow-residual", {"carry": "pixels"})
        if m == "flow-warp-edited"
        else (m, job["sets"].get("propagators", {}).get(m, {}))
    )
    prop = catalog.build("propagator", name, params, f"--propagators {m}")
    chunks: list[np.ndarray] = []
    carry_edits(
        lambda idx: frames[idx],
        n,
        {k: gt[k] for k in keys},
        track,
        processor,
        prop,
        on_frames=lambda first, f: chunks.append(f),
    )
    return np.concatenate(chunks), prop.landmark_model


def _strip(frames, gt, shown, faces, interval, n) -> np.ndarray:
    """The middle frame between the first two keyframes, cropped to the face: ground truth, then each
    method above its error (x4)."""
    t = min(max(interval // 2, 1), n - 1)
    ys, xs = np.nonzero(faces[t])
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = 160 / max(1, y1 - y0)

    def cell(img, label):
        c = cv2.resize(np.ascontiguousarray(img[y0:y1, x0:x1]), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        c = np.ascontiguousarray(c)
        cv2.putText(c, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
        return c

    top, bottom = [cell(gt[t], "ground truth")], [cell(frames[t], "source")]
    for m, out in shown.items():
        if m.startswith("_") or m == "source":
            continue
        err = np.repeat(
            np.clip(np.abs(out[t].astype(np.int16) - gt[t]).max(-1) * 4, 0, 255).astype(np.uint8)[..., None], 3, -1
        )
        top.append(cell(out[t], m))
        bottom.append(cell(err, "error x4"))
    return np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)
