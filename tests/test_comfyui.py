"""The ComfyUI node pack (integrations/comfyui) without ComfyUI: it imports, its nodes follow the
classic node API and its pyproject the Comfy registry's specification, and the example workflow's
chain of nodes runs on the sample clip with the tiny backbone (IMAGE in, IMAGE out, [B, H, W, C] in
[0, 1]), chunked or not with the same frames."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from conftest import needs_models

PACK = Path(__file__).resolve().parents[1] / "integrations" / "comfyui"


@pytest.fixture(scope="module")
def pack():
    spec = importlib.util.spec_from_file_location(
        "comfyui_ipfacediff", PACK / "__init__.py", submodule_search_locations=[str(PACK)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_ipfacediff"] = module
    spec.loader.exec_module(module)
    importlib.import_module("comfyui_ipfacediff.workflows")  # the example-workflow builder (module.workflows)
    assert "comfy" not in sys.modules and "folder_paths" not in sys.modules  # no ComfyUI needed
    return module


def test_pack_follows_the_node_api_and_the_registry_spec(pack):
    meta = tomllib.loads((PACK / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]) and project["name"] == "comfyui-ipfacediff"
    assert project["license"] == {"file": "LICENSE"} and (PACK / "LICENSE").is_file()
    assert project["urls"]["Repository"].startswith("https://") and comfy["PublisherId"] and comfy["DisplayName"]
    assert any(d.startswith("ipfacediff") for d in project["dependencies"])
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        types = cls.INPUT_TYPES()
        assert (
            "required" in types and isinstance(cls.RETURN_TYPES, tuple) and callable(getattr(cls(), cls.FUNCTION))
        ), name
        assert cls.CATEGORY == "IP-FaceDiff" and len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(
            cls.RETURN_TYPES
        )
        for spec in [*types["required"].values(), *types.get("optional", {}).values()]:
            assert isinstance(spec, tuple) and (isinstance(spec[0], (str, list))), (name, spec)


CONTROL = ("fixed", "increment", "decrement", "randomize")


def _frontend_widgets(input_types: dict, values: list) -> tuple[dict, dict]:
    """``widgets_values`` read as ComfyUI's frontend (1.35) reads them: one value per widget input
    (INT, FLOAT, STRING, BOOLEAN, combo lists; not forceInput) in declaration order, linked or not,
    and after an INT named seed / noise_seed or any INT / FLOAT with ``control_after_generate``, the
    value of its control widget. Returns (input -> value, input -> control value); raises on a count
    that does not match."""
    widgets, controls, specs = {}, {}, []
    for name, spec in [*input_types.get("required", {}).items(), *input_types.get("optional", {}).items()]:
        kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
        widget = isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
        if opts.get("forceInput") or not widget:
            continue
        flag = opts.get("control_after_generate")
        control = (kind == "INT" and (name in ("seed", "noise_seed") if flag is None else flag)) or (
            kind == "FLOAT" and bool(flag)
        )
        specs.append((name, control))
    want = sum(2 if c else 1 for _, c in specs)
    if len(values) > want:
        raise AssertionError(f"{len(values)} widget values for {want} widgets ({[n for n, _ in specs]})")
    it = iter(values)  # fewer values: the frontend assigns them in order, the rest keep their defaults
    for name, control in specs:
        for target, key in ((widgets, name), *(((controls, name),) if control else ())):
            value = next(it, it)
            if value is not it:
                target[key] = value
    return widgets, controls


def _invalid(name: str, spec: tuple, value) -> str | None:
    """Why ``value`` is not a valid value of the input ``spec`` (None when it is)."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if kind == "COMBO":
        kind = opts.get("options")
    if isinstance(kind, list):
        return None if value in kind else f"{name}: {value!r} is not one of {kind}"
    ok = {
        "INT": isinstance(value, int) and not isinstance(value, bool),
        "FLOAT": isinstance(value, (int, float)) and not isinstance(value, bool),
        "STRING": isinstance(value, str),
        "BOOLEAN": isinstance(value, bool),
    }[kind]
    if not ok:
        return f"{name}: {value!r} is not a {kind}"
    if kind in ("INT", "FLOAT") and not (opts.get("min", -float("inf")) <= value <= opts.get("max", float("inf"))):
        return f"{name}: {value} is outside [{opts.get('min')}, {opts.get('max')}]"
    return None


def _node_inputs(pack, node_type: str) -> dict:
    cls = pack.NODE_CLASS_MAPPINGS.get(node_type)
    return cls.INPUT_TYPES() if cls else pack.workflows.STOCK_NODES[node_type]["inputs"]


def _problems(pack, node: dict) -> list[str]:
    """Every widget value of a saved node that does not land validly on its input."""
    types = _node_inputs(pack, node["type"])
    try:
        widgets, controls = _frontend_widgets(types, node.get("widgets_values", []))
    except AssertionError as exc:
        return [f"{node['type']}: {exc}"]
    specs = {**types.get("required", {}), **types.get("optional", {})}
    out = [f"{node['type']}.{p}" for n, v in widgets.items() if (p := _invalid(n, specs[n], v))]
    out += [f"{node['type']}.{n} control: {v!r}" for n, v in controls.items() if v not in CONTROL]
    return out


class _Stock:
    """Stand-ins for the ComfyUI nodes the examples use, with ComfyUI's semantics (nodes_images.py,
    nodes.py, nodes_mask.py: checked against a real server); output nodes are recorded instead."""

    @staticmethod
    def ImageFromBatch(image, batch_index, length):
        i = min(image.shape[0] - 1, batch_index)
        return (image[i : i + min(image.shape[0] - i, length)].clone(),)

    @staticmethod
    def EmptyImage(width, height, batch_size, color):
        rgb = [((color >> s) & 0xFF) / 0xFF for s in (16, 8, 0)]
        return (torch.tensor(rgb).expand(batch_size, height, width, 3).clone(),)

    @staticmethod
    def ImageCompositeMasked(destination, source, x, y, resize_source, mask=None):
        assert mask is None and not resize_source
        out = destination.clone()
        h = min(source.shape[1], out.shape[1] - y)
        w = min(source.shape[2], out.shape[2] - x)
        out[:, y : y + h, x : x + w] = source[:, :h, :w]
        return (out,)


def _run_workflow(pack, workflow: dict, overrides: dict[str, dict]) -> dict:
    """Execute a saved (frontend-format) workflow: links by id onto input slots, widgets by the
    frontend's rule; the pack's nodes and the stock stand-ins run, ComfyUI's output nodes (previews,
    saving, video) get their inputs recorded instead."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {lk[0]: lk for lk in workflow["links"]}
    results, sinks, done = {}, {}, set()
    while len(done) < len(nodes):
        for nid, node in nodes.items():
            feeding = [i for i in node["inputs"] if i.get("link") is not None]
            if nid in done or any(links[i["link"]][1] not in done for i in feeding):
                continue
            linked = {i["name"]: results[links[i["link"]][1]][links[i["link"]][2]] for i in feeding}
            widgets, _ = _frontend_widgets(_node_inputs(pack, node["type"]), node.get("widgets_values", []))
            kwargs = {**widgets, **linked, **overrides.get(node["type"], {})}
            cls = pack.NODE_CLASS_MAPPINGS.get(node["type"])
            if cls is not None:
                results[nid] = getattr(cls(), cls.FUNCTION)(**kwargs)
            elif hasattr(_Stock, node["type"]):
                results[nid] = getattr(_Stock, node["type"])(**kwargs)
            else:
                sinks[node["type"]] = kwargs
                results[nid] = (kwargs,)  # what it was given travels on (Create Video -> Save Video)
            done.add(nid)
    return {"results": results, "sinks": sinks, "nodes": nodes}


def test_every_shipped_workflow_puts_each_value_on_its_input(pack):
    """Each example workflow read by the frontend's rule: every widget value lands on the input it was
    meant for with a valid type and range (0.3's hand-written workflow fails this), links end on the
    slots that list them, and a .jpg thumbnail lies beside it for the template browser."""
    import cv2

    flows = sorted((PACK / "example_workflows").glob("*.json"))
    assert {f.stem for f in flows} == {"ipfacediff_edit_video", "ipfacediff_propagate_any_edit"}
    for f in flows:
        wf = json.loads(f.read_text())
        assert wf["version"] == 0.4 and wf["extra"]["frontendVersion"] and wf["links"], f.name
        thumb = cv2.imread(str(f.with_suffix(".jpg")))
        assert thumb is not None and min(thumb.shape[:2]) >= 64, f"{f.name}: no thumbnail beside it"
        for node in wf["nodes"]:
            assert not _problems(pack, node), (f.name, _problems(pack, node))
            widgets, controls = _frontend_widgets(_node_inputs(pack, node["type"]), node["widgets_values"])
            assert len(widgets) + len(controls) == len(node["widgets_values"])  # a value for every widget
            assert set(widgets) == {i["name"] for i in node["inputs"] if "widget" in i}, node["type"]
            assert len(node["size"]) == 2 and node["properties"]["Node name for S&R"] == node["type"]
            for slot, i in enumerate(node["inputs"]):
                if i.get("link") is not None:
                    assert wf["links"][[lk[0] for lk in wf["links"]].index(i["link"])][3:5] == [node["id"], slot]
        edit = next((n for n in wf["nodes"] if n["type"] == "IPFaceDiffEditKeyframes"), None)
        if edit:  # the values meant for the inputs after the seed are still there
            widgets, controls = _frontend_widgets(_node_inputs(pack, edit["type"]), edit["widgets_values"])
            assert widgets["source_prompt"] == "a photo of a face" and controls == {"seed": "fixed"}
    # the regenerated files are what the builder writes (nobody hand-edits them)
    for name, spec in pack.workflows.EXAMPLES.items():
        assert json.loads((PACK / "example_workflows" / f"{name}.json").read_text()) == pack.workflows.build(spec)
    # 0.3's example, as written by hand: the frontend would shift every value after the seed
    old = {"type": "IPFaceDiffEditKeyframes", "widgets_values": ["eyeglasses", 20, 7.5, 0, "a photo of a face"]}
    assert _problems(pack, old)


def _thumbnail(rows: list[list], name: str) -> None:
    """With ``IPFACEDIFF_UI_SHOTS=DIR``: a picture of a workflow's output (DIR/NAME.jpg), the
    thumbnail the template browser shows beside example_workflows/NAME.json."""
    keep = os.environ.get("IPFACEDIFF_UI_SHOTS")
    if not keep:
        return
    import cv2

    from ipfacediff.runtime.frames import make_strip

    to8 = lambda t: (t.clamp(0, 1) * 255).round().byte().numpy()  # noqa: E731
    img = make_strip([[to8(t) for t in row] for row in rows], height=160)
    cv2.imwrite(str(Path(keep) / f"{name}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])


@needs_models
def test_example_workflow_runs_on_the_sample_clip(pack, sample_clip):
    workflow = json.loads((PACK / "example_workflows" / "ipfacediff_edit_video.json").read_text())
    fast = {
        "IPFaceDiffLoadVideo": {"path": str(sample_clip), "max_frames": 20},
        "IPFaceDiffEditKeyframes": {"steps": 3},
    }
    run = _run_workflow(pack, workflow, fast)
    frames = run["sinks"]["SaveImage"]["images"]
    source = run["results"][1][0]
    assert frames.shape == (20, 256, 256, 3) == source.shape and frames.dtype == torch.float32
    assert 0 <= frames.min() and frames.max() <= 1
    video = run["sinks"]["CreateVideo"]  # the result with the clip's frame rate and sound, for Save Video
    _, fps, audio = run["results"][1]
    assert video["images"] is frames and video["fps"] == fps and video["audio"] is audio
    pairs = run["sinks"]["PreviewImage"]["images"]  # keyframes 0, 8, 16: source | edited
    assert pairs.shape == (3, 256, 512, 3)
    changed = (frames - source).abs().amax(dim=(1, 2, 3))
    assert (changed > 0).all()  # every frame carries the (random-weight) edit in its face region
    assert (frames[:, -20:] == source[:, -20:]).all()  # the bottom rows (the suit) are outside it: untouched
    # chunked propagation and paste-back give the same frames as whole-clip
    by_type = {n["type"]: nid for nid, n in run["nodes"].items()}
    res = run["results"]
    faces, edits = res[by_type["IPFaceDiffDetectAlignFaces"]][0], res[by_type["IPFaceDiffEditKeyframes"]][0]
    crops = pack.NODE_CLASS_MAPPINGS["IPFaceDiffPropagate"]().propagate(source, faces, edits, "layered", 5)[0]
    again = pack.NODE_CLASS_MAPPINGS["IPFaceDiffPasteBack"]().paste(source, faces, crops, 3)[0]
    assert torch.equal(again, frames)
    _thumbnail([[source[0], frames[0], source[12], frames[12]]], "ipfacediff_edit_video")  # source, edited
    keep = os.environ.get("IPFACEDIFF_UI_SHOTS")  # a picture of the chain's output for docs/comfyui.md
    if keep:
        import cv2

        from ipfacediff.runtime.frames import make_strip

        to8 = lambda t: (t.clamp(0, 1) * 255).round().byte().numpy()  # noqa: E731
        img = make_strip(
            [list(to8(pairs)), list(to8(source[[0, 4, 12, 19]])), list(to8(frames[[0, 4, 12, 19]]))], height=200
        )
        cv2.imwrite(str(Path(keep) / "comfyui-chain.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


@needs_models
def test_any_edit_workflow_carries_a_stock_node_edit_through_the_clip(pack, sample_clip):
    """The creators' workflow: frame 0 picked from the clip, edited by stock nodes (a dark band over
    the eyes, standing in for any image-edit branch), carried through the clip by Propagate
    Keyframes, written with the clip's frame rate and sound."""
    workflow = json.loads((PACK / "example_workflows" / "ipfacediff_propagate_any_edit.json").read_text())
    run = _run_workflow(pack, workflow, {"IPFaceDiffLoadVideo": {"path": str(sample_clip), "max_frames": 24}})
    source, fps, audio = run["results"][1]
    edited = run["sinks"]["PreviewImage"]["images"]
    out = run["sinks"]["SaveImage"]["images"]
    assert edited.shape == (1, 256, 256, 3) and out.shape == source.shape
    assert torch.equal(out[0], edited[0])  # the edited frame as given

    # the band moves with the face: in every frame a window of its size over the upper face is that dark
    def darkest(frames):  # the darkest 12 x 70 window's mean in the upper face, per frame
        grey = frames[:, 20:140, 30:226].mean(-1, keepdim=True).movedim(-1, 1)
        return torch.nn.functional.avg_pool2d(grey, (12, 70), stride=1).amin(dim=(1, 2, 3))

    dark_out, dark_src = darkest(out), darkest(source)  # measured: 0.08 every frame; the source's 0.16-0.25
    assert (dark_out < 0.1).all() and (dark_out < dark_src - 0.06).all(), (dark_out, dark_src)
    assert (out[:, -20:] == source[:, -20:]).all()  # outside the face: the source
    assert run["sinks"]["CreateVideo"]["fps"] == fps and run["sinks"]["CreateVideo"]["audio"] is audio
    direct = pack.NODE_CLASS_MAPPINGS["IPFaceDiffPropagateKeyframes"]().propagate(
        source, edited, "0", "default", "default", 240
    )[0]
    assert torch.equal(direct, out)
    _thumbnail([[source[0], edited[0], out[8], out[16], out[23]]], "ipfacediff_propagate_any_edit")


@needs_models
def test_frame_cap_cuts_long_batches(pack, sample_clip, tmp_path, monkeypatch):
    """``max_frames`` cuts the batch; the node leaves no temporary folder behind (a ComfyUI server runs
    it again and again: it created one empty ``ipfacediff-run-*`` folder per run before)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    load = pack.NODE_CLASS_MAPPINGS["IPFaceDiffLoadVideo"]()
    images, fps, audio = load.load(str(sample_clip), 24)
    model, summary = pack.NODE_CLASS_MAPPINGS["IPFaceDiffLoadBackbone"]().load("tiny", "cpu")
    assert "random weights" in summary
    faces, said = pack.NODE_CLASS_MAPPINGS["IPFaceDiffDetectAlignFaces"]().detect(images, model, "retinaface", 10, 5)
    assert faces.n == 10 and "cut at 10 of 24 frames" in said and fps == 24.0
    assert not list(tmp_path.glob("ipfacediff-run-*"))


@needs_models
def test_propagate_keyframes_carries_any_edit_as_the_cli_does(pack, sample_clip, tmp_path):
    """An IMAGE edited by any node carried through the clip: the same frames, byte for byte, as
    `ipfacediff propagate` on the same clip and keyframe; its size checked against the clip's."""
    import numpy as np
    from conftest import run_main
    from PIL import Image

    images, fps, _ = pack.NODE_CLASS_MAPPINGS["IPFaceDiffLoadVideo"]().load(str(sample_clip), 240)
    frame = (images[8].clamp(0, 1) * 255).round().byte().numpy().copy()
    frame[100:120, 90:170] = (20, 20, 20)  # a dark band across the mouth, drawn by "another tool"
    edited = torch.from_numpy(frame).float()[None] / 255
    node = pack.NODE_CLASS_MAPPINGS["IPFaceDiffPropagateKeyframes"]()
    out, summary, check = node.propagate(images, edited, "8", "default", "default", 240)
    assert out.shape == images.shape and "keyframes [8]" in summary and "layered" in summary
    assert "one keyframe: no leave-one-out check" in check and "would help most at frame" in check

    keys = tmp_path / "keys"
    keys.mkdir()
    Image.fromarray(frame).save(keys / "00008.png")
    r = run_main("--quiet", "propagate", str(sample_clip), "--keyframes", str(keys), "-o", f"{tmp_path / 'cli'}/")
    assert r.returncode == 0, r.stderr
    cli = np.stack([np.asarray(Image.open(tmp_path / "cli" / f"{i:05d}.png")) for i in range(len(images))])
    got = (out.clamp(0, 1) * 255).round().byte().numpy()
    assert np.array_equal(got, cli)
    assert np.array_equal(got[8], frame) and not np.array_equal(got[12], frame)

    # an image-edit model's output at its own resolution: resized to the clip's, said in the summary
    half = torch.nn.functional.interpolate(edited.movedim(-1, 1), size=(128, 128), mode="area").movedim(1, -1)
    _, said, _ = node.propagate(images, half, "8", "flow-residual", "default", 12)
    assert "frame 8 resized" in said and "flow-residual" in said and "cut at 12 of 24" in said
    for bad, frames, message in (
        (edited[:, :, :200], "8", "not the shape"),  # a crop, not the full frame
        (edited, "8, 16", "1 edited image(s) for 2 frame number(s)"),
        (edited, "eight", "is not a frame number"),
        (edited, "30", "past the end"),
    ):
        with pytest.raises(Exception, match=re.escape(message)):
            node.propagate(images, bad, frames, "default", "default", 240)


@needs_models
def test_load_video_gives_frames_fps_and_the_sound_of_those_frames(pack, sample_clip):
    from conftest import DATA

    if not (DATA / "videos" / "d12.mp4").is_file():
        pytest.skip("needs the shared clips")
    load = pack.NODE_CLASS_MAPPINGS["IPFaceDiffLoadVideo"]()
    images, fps, audio = load.load(str(DATA / "videos" / "d12.mp4"), 45)  # a talking man, with his voice
    assert images.shape[0] == 45 and fps == 25.0
    wave, rate = audio["waveform"], audio["sample_rate"]
    assert wave.ndim == 3 and wave.shape[:2] == (1, 2) and wave.dtype == torch.float32 and rate == 44100
    assert wave.shape[2] == round(rate * 45 / 25) and wave.abs().max() > 0.1  # 1.8 s: the frames loaded
    from ipfacediff.runtime.video import probe

    assert (load.load(str(sample_clip), 4)[2] is not None) == probe(sample_clip).has_audio  # no track: None


@needs_models
def test_model_dropdowns_list_a_model_folder_and_load_what_is_picked(pack, tmp_path, monkeypatch):
    """Without ComfyUI the checkpoint and LoRA dropdowns list $IPFACEDIFF_COMFY_MODELS/checkpoints and
    /loras (inside ComfyUI: folder_paths); a picked file is what the backbone loads, a typed path wins."""
    root = tmp_path / "models"
    (root / "loras" / "people").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    for f in ("loras/ipfd-identity.safetensors", "loras/people/ipfd-edit.safetensors", "loras/notes.txt"):
        (root / f).write_bytes(b"not a lora")
    (root / "checkpoints" / "sd15.safetensors").write_bytes(b"")
    monkeypatch.setenv("IPFACEDIFF_COMFY_MODELS", str(root))
    node = pack.NODE_CLASS_MAPPINGS["IPFaceDiffLoadBackbone"]
    opt = node.INPUT_TYPES()["optional"]
    assert opt["checkpoint_name"][0] == ["(none)", "sd15.safetensors"]
    assert (
        opt["identity_lora"][0]
        == opt["edit_lora"][0]
        == [
            "(none)",
            "ipfd-identity.safetensors",
            "people/ipfd-edit.safetensors",
        ]
    )
    with pytest.raises(Exception, match=re.escape(f"{root / 'loras' / 'ipfd-identity.safetensors'} cannot be loaded")):
        node().load("tiny", "cpu", identity_lora="ipfd-identity.safetensors")
    typed = tmp_path / "typed.safetensors"
    typed.write_bytes(b"x")
    with pytest.raises(Exception, match=re.escape(f"{typed} cannot be loaded")):
        node().load("tiny", "cpu", identity_adapter=str(typed), identity_lora="ipfd-identity.safetensors")
    _, summary = node().load("tiny", "cpu")  # nothing picked: as before
    assert "adapters: none" in summary
    monkeypatch.delenv("IPFACEDIFF_COMFY_MODELS")
    assert node.INPUT_TYPES()["optional"]["identity_lora"][0] == ["(none)"]
