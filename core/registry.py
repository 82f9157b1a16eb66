"""The YAML registry: named backbones, pipelines and fine-tuning recipes.

The built-in ``registry.yaml`` is loaded first; a user file (``--registry FILE``) is merged over it
entry by entry (a user pipeline with a built-in's name replaces it). Every component reference is a
registered name plus parameters, validated against the component's declared ``Params`` when the file
is loaded, before any model is built. There are no dotted-path imports: a registry file cannot run
code. See docs/user-guide.md for the format.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ipfacediff.catalog import Catalog, get_catalog
from ipfacediff.errors import RegistryError
from ipfacediff.params import validate_params

SCHEMA_VERSION = 1

# slot name -> component kind, for pipelines and recipes
PIPELINE_SLOTS: dict[str, str] = {
    "strategy": "strategy",
    "face_processor": "face_processor",
    "identity_encoder": "identity_encoder",
    "inverter": "inverter",
    "editor": "editor",
    "propagator": "propagator",
}
RECIPE_SLOTS: dict[str, str] = {
    "objective": "objective",
    "face_processor": "face_processor",
    "identity_encoder": "identity_encoder",
    "localization_loss": "localization_loss",
}


@dataclass
class PipelineSettings:
    """Pipeline-level settings (``settings:`` of a pipeline)."""

    crop_size: int = field(
        default=512,
        metadata={
            "range": (64, 2048),
            "help": "side of the aligned face crop of the faces job (edits use the backbone's resolution)",
        },
    )
    landmark_smoothing: int = field(
        default=5, metadata={"range": (1, 61), "help": "frames in the temporal landmark smoothing window"}
    )
    min_face_frames: float = field(
        default=0.0, metadata={"range": (0.0, 1.0), "help": "fraction of frames that must show a face"}
    )
    keyframe_method: Literal["uniform", "count", "pose"] = field(
        default="uniform", metadata={"help": "every N frames, N evenly spaced, or the most diverse head poses"}
    )
    keyframe_interval: int = field(
        default=8, metadata={"range": (1, None), "help": "uniform: a keyframe every N frames"}
    )
    keyframe_count: int = field(default=5, metadata={"range": (1, None), "help": "count / pose: number of keyframes"})
    keyframes: Literal["fixed", "adaptive"] = field(
        default="fixed",
        metadata={
            "help": (
                "adaptive: start from keyframe_method's keyframes, then edit one more in the middle of each keyframe "
                "interval whose self-check PSNR is below keyframe_threshold (up to keyframe_rounds times)"
            )
        },
    )
    keyframe_threshold: float = field(
        default=28.0,
        metadata={
            "range": (0.0, 100.0),
            "help": (
                "adaptive: the self-check PSNR (dB) of a keyframe interval below which it gets a keyframe (on the "
                "dlib truth, intervals below 28 dB gained the most when split: benchmarks/README.md)"
            ),
        },
    )
    keyframe_rounds: int = field(
        default=2, metadata={"range": (1, 8), "help": "adaptive: rounds of added keyframes at most"}
    )
    source_prompt: str = field(
        default="a photo of a face",
        metadata={"help": "describes the source; the target prompt is '<source>, <edits>'"},
    )
    guidance_prompt: str = field(
        default="", metadata={"help": "the unconditional (negative) prompt of classifier-free guidance"}
    )
    propagation_source: Literal["latents", "eps1"] = field(
        default="latents",
        metadata={
            "help": (
                "token features the propagator matches on: the source latents, or eps1's last decoder features (one "
                "more UNet pass per frame)"
            )
        },
    )
    propagation_timestep: int = field(
        default=100, metadata={"range": (0, 999), "help": "eps1 source: noise level the features are taken at"}
    )
    refine_steps: int = field(
        default=0, metadata={"range": (0, 50), "help": "low-noise denoising steps on propagated frames (0: none)"}
    )
    refine_strength: float = field(
        default=0.2, metadata={"range": (0.0, 1.0), "help": "noise level of the refinement, fraction of the schedule"}
    )
    batch_size: int = field(
        default=8, metadata={"range": (1, 1024), "help": "frames per VAE / UNet batch outside joint keyframe editing"}
    )
    max_input_side: int = field(
        default=8192,
        metadata={
            "range": (64, 65536),
            "help": "inputs larger than this on the longest side are refused (8K UHD fits)",
        },
    )
    video_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"] = field(
        default="veryfast",
        metadata={"help": "x264 preset of a video output (slower: smaller files at the same quality, more CPU time)"},
    )
    video_crf: int = field(
        default=17,
        metadata={"range": (0, 51), "help": "x264 constant rate factor of a video output (lower: better, larger)"},
    )
    chunk_frames: int = field(
        default=64,
        metadata={
            "range": (1, None),
            "help": "frames propagated, decoded and written per chunk "
            "(memory is bounded by this, not the clip length)",
        },
    )
    keyframe_group: int = field(
        default=16,
        metadata={
            "range": (2, 1024),
            "help": (
                "keyframes edited jointly at most; longer clips edit groups that share one keyframe with the previous "
                "group"
            ),
        },
    )


@dataclass
class RecipeSettings:
    """Fine-tuning settings (``settings:`` of a recipe)."""

    adapter: str = field(
        default="identity",
        metadata={"help": "name of the LoRA adapter trained (the edit pipeline uses identity and edit)"},
    )
    steps: int = field(default=500, metadata={"range": (1, None), "help": "optimizer steps (--max-steps overrides)"})
    learning_rate: float = field(default=1e-4, metadata={"range": (0.0, 1.0)})
    lora_rank: int = field(default=4, metadata={"range": (1, 512)})
    lora_alpha: float = field(
        default=0.0, metadata={"range": (0.0, 4096.0), "help": "LoRA alpha (0: equal to the rank, scale 1)"}
    )
    lora_targets: list = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        metadata={"help": "UNet module names that get LoRA"},
    )
    batch_size: int = field(default=1, metadata={"range": (1, None)})
    gradient_accumulation: int = field(default=1, metadata={"range": (1, 1024)})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory in the UNet"})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(
        default="no", metadata={"help": "accelerate mixed precision (GPU)"}
    )
    resolution: int = field(
        default=0, metadata={"range": (0, 2048), "help": "face crop size (0: the backbone's resolution)"}
    )
    loss_weights: dict = field(
        default_factory=dict, metadata={"help": "loss term -> weight (noise, identity, directional, locality)"}
    )
    loss_warmup: dict = field(
        default_factory=dict, metadata={"help": "loss term -> steps over which its weight ramps up from 0"}
    )
    timestep_range: list = field(default_factory=lambda: [1, 999], metadata={"help": "[low, high] training timesteps"})
    identity_max_timestep: int = field(
        default=600, metadata={"range": (0, 999), "help": "the identity term only where t <= this (x0_hat is a face)"}
    )
    prompts: str = field(
        default="",
        metadata={"help": "edit: prompt list file, one per line, optional ' | part' (empty: built-in list)"},
    )
    reference_prompt: str = field(
        default="a photo of a face", metadata={"help": "edit: p_ref of the directional loss"}
    )
    frames_per_video: int = field(
        default=16, metadata={"range": (1, 10000), "help": "frames sampled from each training video"}
    )
    checkpoint_every: int = field(
        default=100, metadata={"range": (1, None), "help": "steps between checkpoints (and one at the end)"}
    )
    eval_samples: int = field(
        default=4,
        metadata={"range": (1, 64), "help": "fixed samples the loss terms are evaluated on at start and end"},
    )


@dataclass
class ComponentRef:
    """A registered component name plus its validated parameters."""

    kind: str
    name: str
    params: Any
    where: str

    def raw_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    def build(self, catalog: Catalog | None = None) -> Any:
        catalog = catalog or get_catalog()
        return catalog.build(self.kind, self.name, self.raw_params(), self.where)

    def to_json(self) -> dict[str, Any]:
        return {"component": self.name, "params": self.raw_params()}


@dataclass
class BackboneEntry:
    name: str
    component: ComponentRef
    description: str
    source: str


@dataclass
class PipelineEntry:
    """A named pipeline (or, as :class:`RecipeEntry`, a fine-tuning recipe): components by slot,
    settings, the backbone it defaults to, and the file that defined it."""

    name: str
    description: str
    backbone: str
    components: dict[str, ComponentRef]
    settings: Any
    source: str
    metrics: list[ComponentRef] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "description": self.description,
            "backbone": self.backbone,
            "components": {k: v.to_json() for k, v in self.components.items()},
            "metrics": [m.to_json() for m in self.metrics],
            "settings": dataclasses.asdict(self.settings),
            "source": self.source,
        }
        if isinstance(self, RecipeEntry):
            del out["metrics"]
        return out


@dataclass
class RecipeEntry(PipelineEntry):
    """A named fine-tuning recipe."""


@dataclass
class Registry:
    backbones: dict[str, BackboneEntry] = field(default_factory=dict)
    pipelines: dict[str, PipelineEntry] = field(default_factory=dict)
    recipes: dict[str, RecipeEntry] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    raw: dict[tuple[str, str], dict[str, Any]] = field(
        default_factory=dict, repr=False
    )  # entries as written (for ``extends``)

    def pipeline(self, name: str) -> PipelineEntry:
        return self._get("pipeline", self.pipelines, name)

    def recipe(self, name: str) -> RecipeEntry:
        return self._get("recipe", self.recipes, name)

    def backbone(self, name: str) -> BackboneEntry:
        return self._get("backbone", self.backbones, name)

    def _get(self, what: str, table: dict[str, Any], name: str) -> Any:
        if name in table:
            return table[name]
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RegistryError(
            f"unknown {what} {name!r}{hint} (defined: {', '.join(sorted(table)) or 'none'}; files: "
            f"{', '.join(self.files)})"
        )


def builtin_registry_path() -> Path:
    """The built-in registry.yaml: next to the source tree, or installed under share/ipfacediff."""
    here = Path(__file__).resolve().parent.parent / "registry.yaml"
    if here.is_file():
        return here
    installed = Path(sys.prefix) / "share" / "ipfacediff" / "registry.yaml"
    if installed.is_file():
        return installed
    raise RegistryError(
        f"the built-in registry.yaml is missing (looked in {here} and {installed}); reinstall ipfacediff"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise RegistryError(f"registry file {path} does not exist")
    if not path.is_file():
        raise RegistryError(f"registry file {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"registry file {path} cannot be read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RegistryError(f"{path}: invalid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RegistryError(
            f"{path}: the top level must be a mapping with keys version, backbones, pipelines, recipes; got "
            f"{type(data).__name__}"
        )
    return data


def _check_keys(mapping: dict[str, Any], allowed: list[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RegistryError(f"{where}: unknown key {key!r}{hint} (valid: {', '.join(allowed)})")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RegistryError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _str(value: Any, where: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise RegistryError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
    return value


def parse_component_ref(catalog: Catalog, kind: str, raw: Any, where: str) -> ComponentRef:
    """``name`` or ``{component: name, params: {...}}`` -> a validated :class:`ComponentRef`."""
    if isinstance(raw, str):
        name, params = raw, {}
    elif isinstance(raw, dict):
        _check_keys(raw, ["component", "params"], where)
        if "component" not in raw:
            raise RegistryError(
                f"{where}: missing key 'component' (the registered name of a {kind.replace('_', ' ')})"
            )
        name = _str(raw["component"], f"{where}.component")
        params = _mapping(raw.get("params"), f"{where}.params")
    else:
        raise RegistryError(f"{where}: expected a component name or {{component: NAME, params: {{...}}}}, got {raw!r}")
    spec = catalog.get(kind, name, where)
    validated = validate_params(spec.cls.Params, params, f"{where}.params")
    return ComponentRef(kind, name, validated, where)


def _parse_file(catalog: Catalog, path: Path, data: dict[str, Any], registry: Registry) -> None:
    f = str(path)
    _check_keys(data, ["version", "backbones", "pipelines", "recipes"], f)
    version = data.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RegistryError(
            f"{f}: version: {version!r} is not supported (this ipfacediff reads version {SCHEMA_VERSION})"
        )

    for name, raw in _mapping(data.get("backbones"), f"{f}: backbones").items():
        where = f"{f}: backbones.{name}"
        raw = _mapping(raw, where)
        _check_keys(raw, ["component", "params", "description"], where)
        ref = parse_component_ref(catalog, "backbone", {k: v for k, v in raw.items() if k != "description"}, where)
        registry.backbones[str(name)] = BackboneEntry(
            str(name), ref, _str(raw.get("description"), f"{where}.description"), f
        )

    for table, slots, settings_cls, entry_cls in (
        ("pipelines", PIPELINE_SLOTS, PipelineSettings, PipelineEntry),
        ("recipes", RECIPE_SLOTS, RecipeSettings, RecipeEntry),
    ):
        raws = _mapping(data.get(table), f"{f}: {table}")
        for name in raws:
            where = f"{f}: {table}.{name}"
            raw = _extended(raws, str(name), table, registry, where)
            _check_keys(
                raw,
                ["description", "backbone", "settings", *(["metrics"] if table == "pipelines" else []), *slots],
                where,
            )
            if "strategy" in (raw.get("settings") or {}) and table == "pipelines":
                raise RegistryError(
                    f"{where}.settings.strategy: the strategy is a slot now; write `strategy: "
                    f"{raw['settings']['strategy']}` "
                    f"beside face_processor (not under settings)"
                )
            comps = {
                slot: parse_component_ref(catalog, kind, raw[slot], f"{where}.{slot}")
                for slot, kind in slots.items()
                if slot in raw
            }
            _check_required(catalog, comps, where)
            settings = validate_params(
                settings_cls, _mapping(raw.get("settings"), f"{where}.settings"), f"{where}.settings"
            )
            extra = {"metrics": _metrics(catalog, raw.get("metrics"), where)} if table == "pipelines" else {}
            entry = entry_cls(
                name=str(name),
                description=_str(raw.get("description"), f"{where}.description"),
                backbone=_str(raw.get("backbone"), f"{where}.backbone", "auto"),
                components=comps,
                settings=settings,
                source=f,
                **extra,
            )
            getattr(registry, table)[str(name)] = entry
            registry.raw[(table, str(name))] = raw


def _extended(
    raws: dict[str, Any], name: str, table: str, registry: Registry, where: str, seen: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The raw entry with ``extends: OTHER`` resolved: OTHER's keys (from this file, else an entry
    loaded before), overridden key by key (``settings`` merged key by key)."""
    raw = dict(_mapping(raws[name], where))
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    parent = _str(parent, f"{where}.extends")
    if parent in seen or parent == name and (table, name) not in registry.raw:
        raise RegistryError(
            f"{where}.extends: {parent!r} extends itself (cycle: {' -> '.join([*seen, name, parent])})"
        )
    if parent in raws and parent != name:
        base = _extended(raws, parent, table, registry, where.rsplit(".", 1)[0] + f".{parent}", (*seen, name))
    elif (table, parent) in registry.raw:
        base = registry.raw[(table, parent)]
    else:
        known = sorted({*raws, *(n for t, n in registry.raw if t == table)} - {name})
        close = difflib.get_close_matches(parent, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RegistryError(
            f"{where}.extends: unknown {table[:-1]} {parent!r}{hint} (defined: {', '.join(known) or 'none'})"
        )
    merged = {**base, **raw}
    if isinstance(base.get("settings"), dict) and isinstance(raw.get("settings"), dict):
        merged["settings"] = {**base["settings"], **raw["settings"]}
    return merged


def _metrics(catalog: Catalog, raw: Any, where: str) -> list[ComponentRef]:
    raw = raw or []
    if not isinstance(raw, list):
        raise RegistryError(f"{where}.metrics: expected a list of metric names, got {raw!r}")
    return [parse_component_ref(catalog, "metric", m, f"{where}.metrics[{i}]") for i, m in enumerate(raw)]


def _check_required(catalog: Catalog, comps: dict[str, ComponentRef], where: str) -> None:
    """The slots the entry's strategy / objective requires are all there."""
    for slot in ("strategy", "objective"):
        if slot in comps:
            cls = catalog.get(slot, comps[slot].name).cls
            missing = [r for r in cls.requires if r not in comps]
            if missing:
                raise RegistryError(
                    f"{where}: the {slot} {comps[slot].name!r} requires {', '.join(missing)} "
                    f"(add {'them' if len(missing) > 1 else 'it'} beside the {slot})"
                )


def _check_backbone_refs(registry: Registry) -> None:
    for table, what in ((registry.pipelines, "pipelines"), (registry.recipes, "recipes")):
        for entry in table.values():
            if entry.backbone != "auto" and entry.backbone not in registry.backbones:
                names = ["auto", *sorted(registry.backbones)]
                close = difflib.get_close_matches(entry.backbone, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise RegistryError(
                    f"{entry.source}: {what}.{entry.name}.backbone: unknown backbone {entry.backbone!r}{hint} "
                    f"(defined: {', '.join(names)})"
                )


def load_registry(
    user_file: str | Path | None = None, catalog: Catalog | None = None, include_builtin: bool = True
) -> Registry:
    """Load and validate the built-in registry, then ``user_file`` merged over it."""
    catalog = catalog or get_catalog()
    registry = Registry()
    paths = []
    if include_builtin:
        paths.append(builtin_registry_path())
    if user_file is not None:
        paths.append(Path(user_file))
    for path in paths:
        data = _read_yaml(path)
        _parse_file(catalog, path, data, registry)
        registry.files.append(str(path))
    _check_backbone_refs(registry)
    return registry
