"""Propagator ``mesh-flow``: the edit carried by the face's own motion where the pixels allow it.

Two motions are estimated from each frame to each of its keyframes, both on the *source* frames:
the face-model motion (the piecewise-affine warp of the frame's 468 FaceMesh landmarks onto the
keyframe's) and the dense optical flow (OpenCV DIS). Per pixel, the face-model motion is kept where
it explains the pixels nearly as well as the flow (its photometric error at most ``tolerance`` grey
levels above the flow's): on smooth skin, where flow is ambiguous and drifts, the face model holds
the edit in place; where the pixels clearly move otherwise (mouth interior, hair, hands, outside
the face) the flow wins. The chosen motion then carries each keyframe's edit residual as
``flow-residual`` does (forward-backward occlusion test, the two keyframes blended).

It follows FaceMesh landmarks, so the ground-truth benchmark (whose synthetic edits move by the
same landmarks) marks its rows: it grades itself there. Frames without a tracked face use the flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

import ipfacediff
from ipfacediff.interfaces import PropagationInput, Propagator
from ipfacediff.plugins.propagators._flow_params import FlowParams
from ipfacediff.runtime.flow import carry_keyframes, grid, optical_flow, photometric_error


class MeshFlow(Propagator):
    """Face-model (FaceMesh) motion where it fits the pixels, optical flow elsewhere; edit residuals carried by it."""

    description = (
        "edit residual carried by the face's FaceMesh motion where it fits the pixels, DIS optical flow elsewhere"
    )
    space = "pixels"
    needs = ("source_pixels", "edited_pixels", "reconstructed_pixels", "faces")
    landmark_model = "facemesh"

    @dataclass
    class Params(FlowParams):
        tolerance: float = field(
            default=2.0,
            metadata={
                "range": (0.0, 255.0),
                "help": "grey levels of photometric error the face-model motion may exceed the flow's by "
                "and still be used",
            },
        )
        weights: str | None = field(default=None, metadata={"help": "facemesh.pth (default: the model resolver's)"})

    def _landmarks(self, src: np.ndarray, faces) -> list[np.ndarray | None]:
        from ipfacediff.runtime.facemesh import face_mesh, load_facemesh

        if faces is None:
            return [None] * len(src)
        net = load_facemesh(self.params.weights)
        out: list[np.ndarray | None] = []
        for f, d in zip(src, faces):
            eyes = d.landmarks[:2] if d is not None and d.landmarks is not None else None
            out.append(None if d is None else face_mesh(net, f, d.box, eyes)[0])
        return out

    def _face_motion(self, lm_a: np.ndarray, lm_b: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
        """Motion from a frame with landmarks ``lm_a`` to one with ``lm_b``, and where it is defined (soft)."""
        from ipfacediff.runtime.facemesh import piecewise_affine_map, triangulate

        mp, inside = piecewise_affine_map(lm_a, lm_b, triangulate(lm_b), shape, depth=lm_a[:, 2])
        soft = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 2.0) * inside
        return mp - grid(*shape), soft

    def _motion(self, a: np.ndarray, b: np.ndarray, lm_a, lm_b) -> np.ndarray:
        flow = optical_flow(a, b, self.params.flow)
        if lm_a is None or lm_b is None:
            return flow
        face, inside = self._face_motion(lm_a, lm_b, a.shape[:2])
        fits = photometric_error(a, b, face) <= photometric_error(a, b, flow) + self.params.tolerance
        w = cv2.GaussianBlur(fits.astype(np.float32), (0, 0), 1.5) * inside
        return (w[..., None] * face + (1 - w[..., None]) * flow).astype(np.float32)

    def propagate(self, inp: PropagationInput) -> np.ndarray:
        src, edited = np.asarray(inp.source_pixels), np.asarray(inp.edited_pixels)
        recon = inp.reconstructed_pixels
        keys = list(inp.key_rows)
        lms = self._landmarks(src, inp.faces)

        def flows(i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
            k = keys[j]
            return self._motion(src[i], src[k], lms[i], lms[k]), self._motion(src[k], src[i], lms[k], lms[i])

        try:
            return carry_keyframes(
                src, edited, recon, keys, inp.frames, flows, self.params.keyframes, self.params.occluded_weight
            )
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None


@ipfacediff.hookimpl
def register_propagators(register):
    register(MeshFlow, name="mesh-flow")
