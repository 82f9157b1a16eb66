"""What the jobs share: the ``--set`` check, component and backbone resolution, stage timing, peak
memory."""

from __future__ import annotations

import contextlib
import os
import resource
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ipfacediff.catalog import get_catalog
from ipfacediff.errors import EditWarning, ParameterError
from ipfacediff.interfaces import Backbone
from ipfacediff.registry import Registry

SD_HUB_IDS = (
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "runwayml/stable-diffusion-v1-5",
    "CompVis/stable-diffusion-v1-4",
)


def check_sets(sets: dict[str, Any], entry, what: str, extra: tuple[str, ...] = ("settings", "backbone")) -> None:
    """``--set SLOT.KEY=VALUE``: every SLOT is a slot of the pipeline / recipe ``entry`` (or one of
    ``extra``) and is given parameters, not a value."""
    allowed = [*entry.components, *extra]
    for slot, values in sets.items():
        if slot not in allowed:
            raise ParameterError(
                f"--set {slot}...: the {what} {entry.name!r} has no {slot!r} (has: {', '.join(allowed)})"
            )
        if not isinstance(values, dict):
            raise ParameterError(f"--set {slot}={values!r}: give a parameter, e.g. {slot}.NAME=VALUE")


def build_slot(entry, slot: str, sets: dict[str, Any], device: str | torch.device = "cpu"):
    """The component in ``slot`` of a pipeline / recipe, its registry parameters overridden by ``--set``."""
    ref = entry.components[slot]
    return get_catalog().build(ref.kind, ref.name, {**ref.raw_params(), **sets.get(slot, {})}, ref.where).to(device)


def find_stable_diffusion(registry: Registry) -> tuple[dict[str, Any], str] | None:
    """The Stable Diffusion checkpoint ``--backbone auto`` would use, and where it was found:
    ``$IPFACEDIFF_SD_MODEL``, else a registry backbone of the ``stable-diffusion`` component whose path
    exists, else SD 1.5/1.4 in the local Hugging Face cache; ``None`` when there is none."""
    if os.environ.get("IPFACEDIFF_SD_MODEL"):
        return {"path": os.environ["IPFACEDIFF_SD_MODEL"]}, "$IPFACEDIFF_SD_MODEL"
    for name, entry in registry.backbones.items():
        path = entry.component.raw_params().get("path")
        if entry.component.name == "stable-diffusion" and path and Path(path).expanduser().exists():
            return entry.component.raw_params(), f"registry backbone {name!r}"
    from ipfacediff.runtime.models import resolve_sd_checkpoint

    for hub_id in SD_HUB_IDS:
        try:
            resolve_sd_checkpoint(hub_id)
            return {"path": hub_id}, "the Hugging Face cache"
        except Exception:  # noqa: BLE001 - not cached
            continue
    return None


def resolve_backbone(
    name: str, sets: dict[str, Any], registry: Registry, default: str = "auto"
) -> tuple[Backbone, list[str]]:
    """``auto``: ``default`` (the pipeline's or recipe's backbone) unless that is ``auto`` too, then a
    configured or locally cached Stable Diffusion, else ``tiny`` (with a warning); otherwise a
    backbone entry of the registry or a registered backbone component. ``sets["backbone"]``
    overrides parameters."""
    catalog = get_catalog()
    warnings: list[str] = []
    extra = sets.get("backbone", {})
    if not isinstance(extra, dict):
        raise ParameterError(f"--set backbone={extra!r}: give a parameter, e.g. backbone.NAME=VALUE")
    if name == "auto":
        name = default
    if name == "auto":
        sd = find_stable_diffusion(registry)
        found = ("stable-diffusion", sd[0]) if sd else None
        if found is None:
            warnings.append(
                "no Stable Diffusion checkpoint configured or cached: using the tiny backbone (`ipfacediff doctor` "
                "says how to get one)"
            )
            found = ("tiny", {})
        comp, params = found
        return catalog.build("backbone", comp, {**params, **extra}, "--backbone auto"), warnings
    if name in registry.backbones:
        entry = registry.backbones[name]
        return catalog.build(
            "backbone", entry.component.name, {**entry.component.raw_params(), **extra}, entry.component.where
        ), warnings
    return catalog.build("backbone", name, extra, "--backbone"), warnings


class Timings(dict):
    """Wall time per stage (seconds, summed over repeated blocks)."""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - t0


def count_vae(backbone: Backbone) -> dict[str, int]:
    """From now on count the images ``backbone``'s VAE encodes and decodes, in ``backbone.vae_evals``
    (``{"encode": n, "decode": n}``, the edit report's ``vae_evaluations``): its two VAE methods are
    wrapped on the instance, once; a second call resets the counts."""
    if "vae_evals" not in vars(backbone):
        encode, decode = backbone.encode_images, backbone.decode_latents

        def encode_images(images: torch.Tensor) -> torch.Tensor:
            backbone.vae_evals["encode"] += int(images.shape[0])
            return encode(images)

        def decode_latents(latents: torch.Tensor, grad: bool = False) -> torch.Tensor:
            backbone.vae_evals["decode"] += int(latents.shape[0])
            return decode(latents, grad)

        backbone.encode_images, backbone.decode_latents = encode_images, decode_latents
    backbone.vae_evals = {"encode": 0, "decode": 0}
    return backbone.vae_evals


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def collect_warnings(into: list[str]) -> Iterator[None]:
    """The messages of the :class:`~ipfacediff.errors.EditWarning` s raised inside the block,
    appended to ``into`` once each; other warnings are shown as usual after the block."""
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EditWarning)
            yield
    finally:
        for w in caught:
            if issubclass(w.category, EditWarning):
                if str(w.message) not in into:
                    into.append(str(w.message))
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
