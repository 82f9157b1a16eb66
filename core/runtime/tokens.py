"""Nearest-token propagation in latent space (the paper's method), shared by the ``latent-nn`` and
``exact-nn`` propagators.

Raw 4-channel latent tokens match poorly (measured: worse than copying the nearest keyframe), so the
default token feature is the 3x3 neighbourhood patch of the source features plus a weighted position
term that keeps matches local.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ipfacediff.interfaces import PropagationInput, Propagator


def token_features(
    source: torch.Tensor, patch: int, pos_weight: float, stats: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """``[T, C, h, w]`` -> ``[T, h*w, D]``: per-token neighbourhood patches (standardised per channel
    by ``stats`` = (mean, std) ``[C]``, or by ``source``'s own) plus ``pos_weight`` x normalised (x, y)."""
    t, c, h, w = source.shape
    x = source.float()
    if stats is None:
        mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    else:
        mean, std = (s.float().view(1, c, 1, 1) for s in stats)
    x = (x - mean) / (std + 1e-6)
    if patch > 1:
        x = F.unfold(F.pad(x, [patch // 2] * 4, mode="replicate"), patch).view(t, c * patch * patch, h, w) / patch
    feats = x.flatten(2).transpose(1, 2)  # [T, hw, D]
    if pos_weight > 0:
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        pos = torch.stack([xs, ys], -1).view(1, h * w, 2).expand(t, -1, -1) * pos_weight * (feats.shape[-1] ** 0.5)
        feats = torch.cat([feats, pos], -1)
    return feats.contiguous()


def neighbour_keys(i: int, keys: Sequence[int], mode: str) -> list[tuple[int, float]]:
    """(row in keys, weight) of the keyframes frame ``i`` takes its values from."""
    before = [j for j, k in enumerate(keys) if k <= i]
    after = [j for j, k in enumerate(keys) if k >= i]
    if mode == "nearest" or not before or not after:
        j = min(range(len(keys)), key=lambda j: (abs(keys[j] - i), keys[j]))
        return [(j, 1.0)]
    a, b = before[-1], after[0]
    if a == b:
        return [(a, 1.0)]
    wb = (i - keys[a]) / (keys[b] - keys[a])
    return [(a, 1.0 - wb), (b, wb)]


class NearestTokenPropagator(Propagator):
    """Every token (latent pixel) of a non-key frame takes the edited value of its nearest neighbour
    among the tokens of the two temporally nearest keyframes, found in a token feature space built
    from the *source* features, blended by temporal distance. Subclasses implement :meth:`match`."""

    space = "latents"
    needs = ("features", "edited_latents")

    @dataclass
    class Params:
        features: Literal["patch", "raw"] = field(
            default="patch", metadata={"help": "token features: 3x3 patches or raw channels"}
        )
        patch: int = field(default=3, metadata={"range": (1, 9)})
        pos_weight: float = field(
            default=0.3, metadata={"range": (0.0, 10.0), "help": "weight of the token position in matching"}
        )
        keyframes: Literal["two-nearest", "nearest"] = field(
            default="two-nearest", metadata={"help": "blend the keyframes on both sides, or copy from the nearest"}
        )

    def _features(self, source: torch.Tensor, stats=None) -> torch.Tensor:
        p = self.params
        return token_features(source, p.patch if p.features == "patch" else 1, p.pos_weight, stats)

    @abc.abstractmethod
    def match(self, feats: torch.Tensor, key_row: int) -> torch.Tensor:
        """Index of the nearest token of keyframe ``key_row`` for each token feature in ``feats``."""

    def propagate(self, inp: PropagationInput) -> torch.Tensor:
        source, edited_keys, stats = inp.features, inp.edited_latents, inp.stats
        keys = list(inp.key_rows)
        at = list(inp.frames)  # time of each row
        key_times = [at[k] for k in keys]
        t = source.shape[0]
        k, c2, h, w = edited_keys.shape
        if source.shape[-2:] != (h, w) or source.shape[0] <= max(keys, default=-1):
            raise ValueError(
                f"{self.name}: source features {tuple(source.shape)} do not fit edited keyframes "
                f"{tuple(edited_keys.shape)} "
                f"at frames {keys}"
            )
        feats = self._features(source, stats)
        self._prepare(feats, keys)
        values = edited_keys.flatten(2).transpose(1, 2)  # [K, hw, C2]
        out = torch.empty((t, h * w, c2), dtype=edited_keys.dtype)
        for i in range(t):
            if i in keys:
                out[i] = values[keys.index(i)]
                continue
            acc = 0.0
            for j, wgt in neighbour_keys(at[i], key_times, self.params.keyframes):
                idx = self.match(feats[i], j)
                acc = acc + wgt * values[j][idx]
            out[i] = acc
        return out.transpose(1, 2).reshape(t, c2, h, w)

    def nearest(self, source: torch.Tensor, key_indices: Sequence[int]) -> dict[tuple[int, int], torch.Tensor]:
        """(frame, keyframe row) -> nearest token index for every token of the frame (for recall tests)."""
        keys = list(key_indices)
        feats = self._features(source)
        self._prepare(feats, keys)
        return {
            (i, j): self.match(feats[i], j)
            for i in range(source.shape[0])
            if i not in keys
            for j, _ in neighbour_keys(i, keys, "two-nearest")
        }

    def _prepare(self, feats: torch.Tensor, keys: list[int]) -> None:
        self._keys_feats = [feats[k] for k in keys]
