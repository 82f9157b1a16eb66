"""The ``frames`` job: full-size frames of a clip written as PNGs named by their 0-based index
(``00048.png``), the frames to edit anywhere (an image editor, an image-edit model) and give back to
``ipfacediff propagate --keyframes DIR`` as they are named. Frames are the decoded pixels
``propagate`` and ``edit`` read, so an exported frame given back unchanged carries no edit.

Nothing is written before every index is checked; each PNG is written atomically and an existing
file is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipfacediff.errors import InputError, OutputExistsError, ParameterError
from ipfacediff.runtime.files import atomic_path, write_atomic
from ipfacediff.runtime.video import IMAGE_EXTS, open_frames


@dataclass
class FramesRequest:
    input: Path
    output: Path
    at: list[int] = field(default_factory=list)  # frame indices (0-based)
    every: int | None = None  # or every N-th frame from 0
    suggest: int = 0  # and the K frames the propagation self-check would add to those (and to DIR's)
    overwrite: bool = False
    registry_file: str | Path | None = None
    show_progress: bool = True


def frame_name(index: int) -> str:
    """The file name ``propagate`` reads as frame ``index`` (and ``FrameSequenceWriter`` writes)."""
    return f"{index:05d}.png"


def parse_indices(text: str) -> list[int]:
    """``"0,48,96"`` -> ``[0, 48, 96]`` (sorted, once each); a bad item is a one-line error."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise ParameterError(
                f"--at {text}: {part!r} is not a frame number (give 0-based indices: 0,48,96)"
            ) from None
        if value < 0:
            raise ParameterError(f"--at {text}: frame numbers start at 0 (got {value})")
        out.append(value)
    return sorted(set(out))


def export_frames(req: FramesRequest) -> dict[str, Any]:
    """Write the requested frames of ``req.input`` into the folder ``req.output``; the report."""
    if req.output.suffix.lower() in IMAGE_EXTS:
        raise InputError(f"-o {req.output}: give a folder (the frames are named by their index: 00000.png)")
    if req.output.exists() and not req.output.is_dir():
        raise InputError(f"-o {req.output}: exists and is not a folder")
    if req.every is not None and req.every < 1:
        raise ParameterError(f"--every {req.every}: must be at least 1")
    if req.suggest < 0:
        raise ParameterError(f"--suggest {req.suggest}: 0 or more frames")
    source = open_frames(req.input)
    suggested: list[dict[str, Any]] = []
    try:
        n = len(source)
        indices = sorted(set(req.at) | (set(range(0, n, req.every)) if req.every else set()))
        if req.suggest:
            suggested = _suggest(req, source, n, indices)
            indices = sorted(set(indices) | {x["frame"] for x in suggested})
        if not indices:
            raise ParameterError("give the frames to export: --at 0,48 or --every 48")
        past = [i for i in indices if i >= n]
        if past:
            raise InputError(f"--at {past[0]}: past the end of {req.input} ({n} frames, 0 to {n - 1})")
        if req.output.resolve() == req.input.resolve():  # a folder of frames as the input
            raise InputError(f"-o {req.output}: the output would overwrite the input; choose another -o")
        paths = [req.output / frame_name(i) for i in indices]
        taken = [p for p in paths if p.exists()]
        if taken and not req.overwrite:
            raise OutputExistsError(f"{taken[0]} exists; pass --overwrite to replace it")
        from PIL import Image

        written = []
        for i, p in zip(indices, paths):
            frame = source.get([i])[0]
            with atomic_path(p, suffix=".png") as tmp:
                Image.fromarray(frame).save(tmp, format="PNG")
            written.append({"index": i, "path": str(p)})
        info = source.info
    finally:
        source.close()
    report = {
        "job": "frames",
        "input": str(req.input),
        "output": str(req.output),
        "frames": written,
        "size": [info.width, info.height],
        "clip_frames": n,
        "suggested": suggested,
        "next": f"edit them, then: ipfacediff propagate {req.input} --keyframes {req.output} -o OUT",
    }
    write_atomic(req.output / "frames.json", json.dumps(report, indent=2))
    return report


def _suggest(req: FramesRequest, source, n: int, indices: list[int]) -> list[dict[str, Any]]:
    """The frames ``propagate``'s self-check would add to the keyframes: those asked for and those
    already in the output folder (named by frame number), the face tracked as ``propagate`` tracks it."""
    from ipfacediff.jobs.clip import ClipJob
    from ipfacediff.jobs.propagate import keyframe_index, suggest_keyframes
    from ipfacediff.registry import load_registry

    have = set(indices)
    if req.output.is_dir():
        have |= {
            i
            for f in req.output.iterdir()
            if f.suffix.lower() in IMAGE_EXTS and (i := keyframe_index(f)) is not None and i < n
        }
    if not have:
        raise ParameterError(
            "--suggest: give the frames you have (--at, or edited frames already in the -o folder) to suggest more"
        )
    pipeline = load_registry(req.registry_file).pipeline("ip-facediff")
    with ClipJob(pipeline, input=req.input, show_progress=req.show_progress) as job:  # the track cached
        job.check_request(extra_slots=("settings",))
        job.open_source()
        processor = job.build_components(["face_processor"])["face_processor"]
        job.detect(processor, require_face=False)
        return suggest_keyframes(job.track, sorted(have), req.suggest)
