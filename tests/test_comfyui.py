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


def _run_workflow(pack, workflow: dict, overrides: dict[str, dict]) -> dict:
    """Execute a UI-format workflow with the pack's nodes (widgets in INPUT_TYPES order, links by id);
    ComfyUI's own nodes (previews, saving) get their inputs recorded instead."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {lk[0]: lk for lk in workflow["links"]}
    results, sinks, done = {}, {}, set()
    while len(done) < len(nodes):
        for nid, node in nodes.items():
            if nid in done or any(links[i["link"]][1] not in done for i in node["inputs"] if i["link"] is not None):
                continue
            linked = {
                i["name"]: results[links[i["link"]][1]][links[i["link"]][2]]
                for i in node["inputs"]
                if i["link"] is not None
            }
            cls = pack.NODE_CLASS_MAPPINGS.get(node["type"])
            if cls is None:
                sinks[node["type"]] = linked
            else:
                spec = cls.INPUT_TYPES()
                widgets = [k for k in [*spec["required"], *spec.get("optional", {})] if k not in linked]
                kwargs = {**dict(zip(widgets, node["widgets_values"])), **linked, **overrides.get(node["type"], {})}
                results[nid] = getattr(cls(), cls.FUNCTION)(**kwargs)
            done.add(nid)
    return {"results": results, "sinks": sinks, "nodes": nodes}


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
    pairs = run["sinks"]["PreviewImage"]["images"]  # keyframes 0, 8, 16: source | edited
    assert pairs.shape == (3, 256, 512, 3)
    changed = (frames - source).abs().amax(dim=(1, 2, 3))
    assert (changed > 0).all()  # every frame carries the (random-weight) edit in its face region
    assert (frames[:, -20:] == source[:, -20:]).all()  # the bottom rows (the suit) are outside it: untouched
    # chunked propagation and paste-back give the same frames as whole-clip
    by_type = {n["type"]: nid for nid, n in run["nodes"].items()}
    res = run["results"]
    faces, edits = res[by_type["IPFaceDiffDetectAlignFaces"]][0], res[by_type["IPFaceDiffEditKeyframes"]][0]
    crops = pack.NODE_CLASS_MAPPINGS["IPFaceDiffPropagate"]().propagate(source, faces, edits, "mesh-flow", 5)[0]
    again = pack.NODE_CLASS_MAPPINGS["IPFaceDiffPasteBack"]().paste(source, faces, crops, 3)[0]
    assert torch.equal(again, frames)
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
def test_frame_cap_cuts_long_batches(pack, sample_clip):
    load = pack.NODE_CLASS_MAPPINGS["IPFaceDiffLoadVideo"]()
    images, fps, audio = load.load(str(sample_clip), 24)
    model, summary = pack.NODE_CLASS_MAPPINGS["IPFaceDiffLoadBackbone"]().load("tiny", "cpu")
    assert "random weights" in summary
    faces, said = pack.NODE_CLASS_MAPPINGS["IPFaceDiffDetectAlignFaces"]().detect(images, model, "retinaface", 10, 5)
    assert faces.n == 10 and "cut at 10 of 24 frames" in said and fps == 24.0


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
    out, summary = node.propagate(images, edited, "8", "default", "default", 240)
    assert out.shape == images.shape and "keyframes [8]" in summary and "mesh-flow" in summary

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
    _, said = node.propagate(images, half, "8", "flow-residual", "default", 12)
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
