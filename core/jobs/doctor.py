"""What a real edit would use, for ``ipfacediff doctor``: the Stable Diffusion checkpoint (configured,
found in the local cache, or none), the CLIP weights of the directional loss and the CLIP metrics,
the insightface ArcFace model of the identity loss, and the LoRA adapters the registry points to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ipfacediff.jobs.common import find_stable_diffusion
from ipfacediff.registry import ComponentRef, Registry
from ipfacediff.runtime.models import find_arcface

SD_HOW = (
    "on a machine with internet: `huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5` (then it is "
    "in the "
    "Hugging Face cache), or point IPFACEDIFF_SD_MODEL at a diffusers folder or a .safetensors file"
)
CLIP_HOW = (
    "download open_clip weights for the model (e.g. ViT-B-32 laion2b_s34b_b79k, open_clip_pytorch_model.bin) and set "
    "its path: "
    "--set localization_loss.weights=FILE (fine-tuning) / a registry entry's weights param"
)
ARCFACE_HOW = (
    "insightface's buffalo_l pack (w600k_r50.onnx) from the insightface releases: unpack it under "
    "~/.insightface/models/ or set IPFACEDIFF_ARCFACE=FILE; fine-tuning's identity loss then uses it instead of "
    "MobileFaceNet"
)


def _components(registry: Registry) -> Iterator[tuple[str, ComponentRef]]:
    """(where, component) for every component of every pipeline and recipe (metrics included)."""
    for kind, entries in (("pipeline", registry.pipelines), ("recipe", registry.recipes)):
        for name, entry in entries.items():
            for slot, ref in entry.components.items():
                yield f"{kind} {name}: {slot}", ref
            for ref in entry.metrics:
                yield f"{kind} {name}: metric", ref


def _exists(path: Any) -> bool:
    return bool(path) and Path(str(path)).expanduser().exists()


def real_edit_status(registry: Registry) -> dict[str, Any]:
    """A dict per resource: what is configured where, whether it exists, and how to get it if not."""
    sd = find_stable_diffusion(registry)
    clip: dict[str, dict[str, Any]] = {}
    arcface: dict[str, dict[str, Any]] = {}
    found_arcface = find_arcface()
    if found_arcface is not None:
        arcface["$IPFACEDIFF_ARCFACE / ~/.insightface (used by finetune's identity loss)"] = {
            "model_path": str(found_arcface),
            "found": True,
        }
    for where, ref in _components(registry):
        p = ref.raw_params()
        if ref.name.startswith("clip-") and p.get("model") != "tiny":
            clip[where] = {
                "component": ref.name,
                "model": p.get("model"),
                "weights": p.get("weights") or None,
                "found": _exists(p.get("weights")),
            }
        if ref.name == "insightface-arcface":
            arcface[where] = {"model_path": p.get("model_path"), "found": _exists(p.get("model_path"))}
    adapters = {}
    for name, b in registry.backbones.items():
        for adapter, path in (b.component.raw_params().get("adapters") or {}).items():
            adapters[f"backbone {name}: {adapter}"] = {"path": str(path), "found": _exists(path)}
    return {
        "stable_diffusion": {
            "found": str(sd[0]["path"]) if sd else None,
            "from": sd[1] if sd else None,
            "how_to_get": None if sd else SD_HOW,
        },
        "clip": {
            "configured": clip,
            "ready": any(c["found"] for c in clip.values()),
            "how_to_get": None if any(c["found"] for c in clip.values()) else CLIP_HOW,
        },
        "arcface": {
            "configured": arcface,
            "ready": any(a["found"] for a in arcface.values()),
            "how_to_get": None if any(a["found"] for a in arcface.values()) else ARCFACE_HOW,
        },
        "adapters": {
            "configured": adapters,
            "how_to_get": None
            if adapters
            else "train them (`ipfacediff finetune identity ...`, `ipfacediff finetune edit ...`) and load them with "
            "--set backbone.adapters.identity=DIR --set backbone.adapters.edit=DIR, or list them under a registry "
            "backbone's adapters",
        },
    }
