"""The pack's example workflows, written in the format ComfyUI's frontend saves and reads (workflow
``version`` 0.4, as frontend 1.35 writes it), so that loading one in the frontend puts every value on
the input it was meant for.

The frontend's rule for ``widgets_values`` (read from its source, ``useIntWidget`` and
``migrateWidgetsValues``): one value per widget input (INT, FLOAT, STRING, BOOLEAN and combo lists;
not ``forceInput`` ones), in declaration order (required, then optional), whether linked or not; an
INT input named ``seed`` or ``noise_seed``, or any INT or FLOAT input declaring
``control_after_generate``, is followed by the value of its control widget (``fixed``,
``increment``, ``decrement`` or ``randomize``). :func:`widgets_values` applies it.

``python integrations/comfyui/workflows.py`` rewrites ``example_workflows/*.json`` from
:data:`EXAMPLES` (the thumbnails beside them are pictures of their outputs: the pack's tests write
them with ``IPFACEDIFF_UI_SHOTS=DIR``).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
FRONTEND_VERSION = "1.35.9"  # the frontend whose saved format these follow (ComfyUI's requirements pin it)
PACK_ID = "comfyui-ipfacediff"

# ComfyUI's own nodes used by the examples: inputs as ComfyUI declares them (names, types, options in
# order; checked against a real ComfyUI server's /object_info) and outputs (name, type)
STOCK_NODES: dict[str, dict[str, Any]] = {
    "ImageFromBatch": {
        "inputs": {
            "required": {
                "image": ("IMAGE",),
                "batch_index": ("INT", {"default": 0, "min": 0, "max": 4095}),
                "length": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        },
        "outputs": [("IMAGE", "IMAGE")],
    },
    "EmptyImage": {
        "inputs": {
            "required": {
                "width": ("INT", {"default": 512, "min": 1, "max": 16384}),
                "height": ("INT", {"default": 512, "min": 1, "max": 16384}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF}),
            }
        },
        "outputs": [("IMAGE", "IMAGE")],
    },
    "ImageCompositeMasked": {
        "inputs": {
            "required": {
                "destination": ("IMAGE",),
                "source": ("IMAGE",),
                "x": ("INT", {"default": 0, "min": 0, "max": 16384}),
                "y": ("INT", {"default": 0, "min": 0, "max": 16384}),
                "resize_source": ("BOOLEAN", {"default": False}),
            },
            "optional": {"mask": ("MASK",)},
        },
        "outputs": [("IMAGE", "IMAGE")],
    },
    "CreateVideo": {
        "inputs": {
            "required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0})},
            "optional": {"audio": ("AUDIO",)},
        },
        "outputs": [("VIDEO", "VIDEO")],
    },
    "SaveVideo": {
        "inputs": {
            "required": {
                "video": ("VIDEO",),
                "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                "format": (["auto", "mp4"], {"default": "auto"}),
                "codec": (["auto", "h264"], {"default": "auto"}),
            }
        },
        "outputs": [],
    },
    "SaveImage": {
        "inputs": {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}},
        "outputs": [],
    },
    "PreviewImage": {"inputs": {"required": {"images": ("IMAGE",)}}, "outputs": []},
}


# ------------------------------------------------------------------------------------ the rule
def spec_parts(spec: tuple) -> tuple[Any, dict[str, Any]]:
    return spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})


def is_widget(spec: tuple) -> bool:
    kind, opts = spec_parts(spec)
    return not opts.get("forceInput") and (isinstance(kind, list) or kind in WIDGET_TYPES)


def has_control(name: str, spec: tuple) -> bool:
    """Whether the frontend adds a ``control_after_generate`` widget after this input."""
    kind, opts = spec_parts(spec)
    if kind == "INT":
        flag = opts.get("control_after_generate")
        return bool(name in ("seed", "noise_seed") if flag is None else flag)
    return kind == "FLOAT" and bool(opts.get("control_after_generate"))


def declared(input_types: dict[str, Any]) -> list[tuple[str, tuple]]:
    """Inputs in declaration order: required, then optional."""
    return [*input_types.get("required", {}).items(), *input_types.get("optional", {}).items()]


def default_of(spec: tuple) -> Any:
    kind, opts = spec_parts(spec)
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def widgets_values(input_types: dict[str, Any], values: dict[str, Any]) -> list[Any]:
    """A node's ``widgets_values`` as the frontend saves them: ``values`` by input name (a seed's
    control under ``NAME.control``, ``fixed`` unless given), defaults for the rest."""
    names = {n for n, s in declared(input_types) if is_widget(s)}
    unknown = sorted(set(values) - names - {f"{n}.control" for n in names})
    if unknown:
        raise ValueError(f"no widget input {unknown[0]!r} (widget inputs: {', '.join(sorted(names))})")
    out = []
    for name, spec in declared(input_types):
        if not is_widget(spec):
            continue
        out.append(values.get(name, default_of(spec)))
        if has_control(name, spec):
            out.append(values.get(f"{name}.control", "fixed"))
    return out


# ------------------------------------------------------------------------------------ building
def definitions() -> dict[str, dict[str, Any]]:
    """Inputs and outputs of the pack's nodes and of the stock nodes the examples use."""
    from . import nodes

    out = dict(STOCK_NODES)
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        out[name] = {"inputs": cls.INPUT_TYPES(), "outputs": list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES))}
    return out


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """A saved workflow from ``spec``: ``nodes`` (``id``, ``type``, ``pos``, optional ``size``,
    ``title`` and widget ``values`` by name) and ``links`` (``[from_id, output_name, to_id,
    input_name]``)."""
    defs = definitions()
    nodes = {n["id"]: n for n in spec["nodes"]}
    links = []
    for i, (src, out_name, dst, in_name) in enumerate(spec["links"], start=1):
        outs = [o for o, _ in defs[nodes[src]["type"]]["outputs"]]
        ins = [n for n, _ in declared(defs[nodes[dst]["type"]]["inputs"])]
        out_slot, in_slot = outs.index(out_name), ins.index(in_name)
        links.append([i, src, out_slot, dst, in_slot, defs[nodes[src]["type"]]["outputs"][out_slot][1]])
    order = _order(nodes, links)
    saved = []
    for n in spec["nodes"]:
        d = defs[n["type"]]
        inputs = []
        for name, s in declared(d["inputs"]):
            kind, _ = spec_parts(s)
            entry: dict[str, Any] = {"name": name, "type": "COMBO" if isinstance(kind, list) else kind}
            if is_widget(s):
                entry["widget"] = {"name": name}
            entry["link"] = next((lk[0] for lk in links if lk[3] == n["id"] and lk[4] == len(inputs)), None)
            inputs.append(entry)
        outputs = [
            {
                "name": name,
                "type": kind,
                "links": [lk[0] for lk in links if lk[1] == n["id"] and lk[2] == slot],
                "slot_index": slot,
            }
            for slot, (name, kind) in enumerate(d["outputs"])
        ]
        node = {
            "id": n["id"],
            "type": n["type"],
            "pos": list(n["pos"]),
            "size": list(n.get("size", (320, 60 + 26 * len(inputs)))),
            "flags": {},
            "order": order[n["id"]],
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": {"Node name for S&R": n["type"]}
            | ({"cnr_id": PACK_ID} if n["type"] not in STOCK_NODES else {"cnr_id": "comfy-core"}),
            "widgets_values": widgets_values(d["inputs"], n.get("values", {})),
        }
        if n.get("title"):
            node["title"] = n["title"]
        saved.append(node)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PACK_ID}/{spec['name']}")),
        "revision": 0,
        "last_node_id": max(nodes),
        "last_link_id": len(links),
        "nodes": saved,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [30, 40]}, "frontendVersion": FRONTEND_VERSION},
        "version": 0.4,
    }


def _order(nodes: dict[int, dict], links: list[list]) -> dict[int, int]:
    """Execution order of the nodes (the frontend's ``order``): each after the nodes feeding it."""
    done: list[int] = []
    while len(done) < len(nodes):
        for nid in nodes:
            if nid not in done and all(lk[1] in done for lk in links if lk[3] == nid):
                done.append(nid)
    return {nid: i for i, nid in enumerate(done)}


# ------------------------------------------------------------------------------------ examples
EXAMPLES: dict[str, dict[str, Any]] = {
    "ipfacediff_edit_video": {
        "name": "ipfacediff_edit_video",
        "nodes": [
            {"id": 1, "type": "IPFaceDiffLoadVideo", "pos": (40, 80), "values": {"path": "", "max_frames": 48}},
            {"id": 2, "type": "IPFaceDiffLoadBackbone", "pos": (40, 320), "values": {"backbone": "tiny"}},
            {"id": 3, "type": "IPFaceDiffDetectAlignFaces", "pos": (400, 80), "values": {"max_frames": 240}},
            {"id": 4, "type": "IPFaceDiffPickKeyframes", "pos": (400, 320), "values": {"interval": 8}},
            {
                "id": 5,
                "type": "IPFaceDiffEditKeyframes",
                "pos": (760, 80),
                "size": (360, 300),
                "values": {
                    "prompt": "eyeglasses",
                    "steps": 20,
                    "guidance": 7.5,
                    "seed": 0,
                    "seed.control": "fixed",
                    "source_prompt": "a photo of a face",
                },
            },
            {"id": 6, "type": "IPFaceDiffPropagate", "pos": (1160, 80), "values": {"chunk": 32}},
            {"id": 7, "type": "IPFaceDiffPasteBack", "pos": (1160, 320), "values": {"chunk": 32}},
            {
                "id": 8,
                "type": "PreviewImage",
                "pos": (760, 440),
                "size": (360, 280),
                "title": "keyframes: source | edited",
            },
            {"id": 9, "type": "SaveImage", "pos": (1520, 80), "values": {"filename_prefix": "ipfacediff/edit"}},
            {"id": 10, "type": "CreateVideo", "pos": (1520, 380), "values": {"fps": 25.0}},
            {"id": 11, "type": "SaveVideo", "pos": (1860, 380), "values": {"filename_prefix": "ipfacediff/edit"}},
        ],
        "links": [
            [1, "images", 3, "images"],
            [2, "model", 3, "model"],
            [3, "faces", 4, "faces"],
            [2, "model", 5, "model"],
            [1, "images", 5, "images"],
            [3, "faces", 5, "faces"],
            [4, "keyframes", 5, "keyframes"],
            [5, "keyframes_before_after", 8, "images"],
            [1, "images", 6, "images"],
            [3, "faces", 6, "faces"],
            [5, "edits", 6, "edits"],
            [1, "images", 7, "images"],
            [3, "faces", 7, "faces"],
            [6, "crops", 7, "crops"],
            [7, "images", 9, "images"],
            [7, "images", 10, "images"],
            [1, "fps", 10, "fps"],
            [1, "audio", 10, "audio"],
            [10, "VIDEO", 11, "video"],
        ],
    },
    "ipfacediff_propagate_any_edit": {
        "name": "ipfacediff_propagate_any_edit",
        "nodes": [
            {"id": 1, "type": "IPFaceDiffLoadVideo", "pos": (40, 80), "values": {"path": "", "max_frames": 48}},
            {
                "id": 2,
                "type": "ImageFromBatch",
                "pos": (400, 80),
                "title": "frame 0 (the frame to edit)",
                "values": {"batch_index": 0, "length": 1},
            },
            {
                "id": 3,
                "type": "EmptyImage",
                "pos": (400, 300),
                "title": "the edit (stands in for any image-edit branch)",
                "size": (300, 160),
                "values": {"width": 84, "height": 18, "batch_size": 1, "color": 0x141414},
            },
            {
                "id": 4,
                "type": "ImageCompositeMasked",
                "pos": (760, 80),
                "title": "edited frame 0",
                "values": {"x": 78, "y": 60, "resize_source": False},
            },
            {
                "id": 5,
                "type": "IPFaceDiffPropagateKeyframes",
                "pos": (1120, 80),
                "size": (380, 230),
                "values": {"frames": "0", "max_frames": 240},
            },
            {"id": 6, "type": "PreviewImage", "pos": (760, 420), "size": (300, 280), "title": "the edited frame"},
            {"id": 7, "type": "SaveImage", "pos": (1540, 80), "values": {"filename_prefix": "ipfacediff/propagate"}},
            {"id": 8, "type": "CreateVideo", "pos": (1540, 380), "values": {"fps": 25.0}},
            {
                "id": 9,
                "type": "SaveVideo",
                "pos": (1880, 380),
                "values": {"filename_prefix": "ipfacediff/propagate"},
            },
        ],
        "links": [
            [1, "images", 2, "image"],
            [2, "IMAGE", 4, "destination"],
            [3, "IMAGE", 4, "source"],
            [4, "IMAGE", 6, "images"],
            [1, "images", 5, "images"],
            [4, "IMAGE", 5, "edited"],
            [5, "images", 7, "images"],
            [5, "images", 8, "images"],
            [1, "fps", 8, "fps"],
            [1, "audio", 8, "audio"],
            [8, "VIDEO", 9, "video"],
        ],
    },
}


def write_examples(folder: Path | None = None) -> list[Path]:
    folder = folder or Path(__file__).resolve().parent / "example_workflows"
    written = []
    for name, spec in EXAMPLES.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(build(spec), indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":  # python integrations/comfyui/workflows.py
    import importlib.util
    import sys

    here = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location(
        "comfyui_ipfacediff", here / "__init__.py", submodule_search_locations=[str(here)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_ipfacediff"] = pack
    spec.loader.exec_module(pack)
    from comfyui_ipfacediff import workflows

    for p in workflows.write_examples():
        print(f"wrote {p}")
