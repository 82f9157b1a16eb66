"""What every clip job is made of: one object per run that owns the clip, the components, the cache,
the timings, the warnings and the report, and the steps all jobs share.

``edit``, ``preview``, ``propagate`` and the ComfyUI nodes run as a :class:`ClipJob` (the edit's
subclass, :class:`ipfacediff.jobs.edit.EditJob`, is also the :class:`~ipfacediff.interfaces.EditRun`
its strategy sees). A job reads as a sequence of named steps over the object::

    with EditJob(req) as job:      # the request checked, nothing built yet
        job.build()                # components from the pipeline's slots (registry defaults, --set)
        job.detect()               # face track, cached per clip and face processor
        ...
    report = job.write_report(...)  # timings, warnings, versions, cache, components

The request is checked once (:meth:`check_request`: ``--max-frames``, ``--set`` against the
pipeline's slots, its settings); every stage is timed by :meth:`timer` and its warnings collected
(:meth:`collecting`); the face track is cached by the same key for every job, so an ``edit`` after a
``propagate`` of the same clip with the same face processor does not detect again.
"""

from __future__ import annotations

import contextlib
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ipfacediff.errors import NoFaceError, ParameterError
from ipfacediff.interfaces import FaceDetection, FaceProcessor
from ipfacediff.jobs.common import Timings, build_slot, check_sets, collect_warnings, peak_memory_mb
from ipfacediff.params import validate_params
from ipfacediff.registry import PipelineEntry, PipelineSettings
from ipfacediff.runtime.cache import StageCache, input_fingerprint, prune, stage_key


class ClipJob:
    """One run of a job over a clip (a file, or frames given as a reader: ``get(indices)``, ``batch``,
    ``close()``, ``len()``), its state in one object."""

    job = "clip"  # the report's "job"

    def __init__(
        self,
        pipeline: PipelineEntry,
        sets: dict[str, Any] | None = None,
        *,
        input: Path | None = None,
        frames: Any = None,
        max_frames: int | None = None,
        device: str | torch.device = "cpu",
        cache: bool = True,
        show_progress: bool = True,
    ):
        self.t_start = time.perf_counter()
        self.pipeline, self.sets = pipeline, sets or {}
        self.input = Path(input) if input is not None else None
        self.source = frames  # opened by open_source() for a file
        self.max_frames, self.device, self.show_progress = max_frames, torch.device(device), show_progress
        self.timings, self.warnings, self.reused = Timings(), [], []
        self.components: dict[str, Any] = {}
        self.use_cache = cache and input is not None  # frames given in memory have no fingerprint to key on
        self.cache: StageCache | None = None
        self.track: list[FaceDetection | None] = []
        self.face_frames: list[int] = []
        self.track_key = ""
        self.pruned: dict[str, Any] = {"enabled": False}

    # ------------------------------------------------------------------------------ checks
    def check_request(self, extra_slots: tuple[str, ...] = ("settings", "backbone")) -> PipelineSettings:
        """``--max-frames``, ``--set`` (each SLOT a slot of the pipeline or one of ``extra_slots``) and
        the pipeline's settings with ``--set settings.*``: checked once, before anything is built."""
        if self.max_frames is not None and self.max_frames < 1:
            raise ParameterError(f"--max-frames {self.max_frames}: must be at least 1")
        check_sets(self.sets, self.pipeline, "pipeline", extra_slots)
        self.settings = validate_params(
            PipelineSettings,
            {**asdict(self.pipeline.settings), **self.sets.get("settings", {})},
            f"pipeline {self.pipeline.name} settings",
        )
        return self.settings

    # ------------------------------------------------------------------------------ steps
    def build_components(self, slots, replace: dict[str, tuple[str, str, str]] | None = None) -> dict[str, Any]:
        """The components in ``slots`` of the pipeline (registry parameters, ``--set SLOT.*`` over
        them), on the job's device; ``replace[slot] = (kind, name, where)`` builds another registered
        component there instead (``--face-processor``, ``--propagator``) with ``--set SLOT.*`` only."""
        from ipfacediff.catalog import get_catalog

        replace = replace or {}
        for slot in slots:
            if slot in replace:
                kind, name, where = replace[slot]
                comp = get_catalog().build(kind, name, self.sets.get(slot, {}), where)
                self.components[slot] = comp.to(self.device)
            else:
                self.components[slot] = build_slot(self.pipeline, slot, self.sets, self.device)
        return self.components

    def open_source(self) -> Any:
        """The clip's frames (a file is opened here; frames given at construction are used as they are)
        and the stage cache; ``self.n``: the frames the job covers (``--max-frames``)."""
        from ipfacediff.runtime.video import open_frames

        if self.source is None:
            self.source = open_frames(self.input)
        if self.cache is None:
            self.cache = StageCache(enabled=self.use_cache)
        self.n = len(self.source) if self.max_frames is None else min(len(self.source), self.max_frames)
        return self.source

    def detect(self, processor: FaceProcessor, require_face: bool = True, passed: str = "unedited") -> list[int]:
        """Detect and track the face in the job's frames (cached per clip, frame count, processor with
        its parameters and smoothing); the face frames. ``require_face``: no face at all, or fewer
        than ``settings.min_face_frames``, is a :class:`NoFaceError`; frames without a face are said
        in the warnings (they pass through ``passed``)."""
        from ipfacediff.runtime.face import detect_track, track_from_arrays, track_to_arrays

        n, settings = self.n, self.settings
        with self.timer("detect"):
            key = ""
            if self.use_cache:
                key = stage_key(
                    stage="track",
                    input=input_fingerprint(self.input),
                    frames=n,
                    processor=processor.name,
                    params=asdict(processor.params),
                    smoothing=settings.landmark_smoothing,
                    v=1,
                )
            cached = self.cache.load_npz("tracks", key) if key else None
            if cached is not None:
                self.track = track_from_arrays(cached)
                self.reused.append("detect")
            else:
                self.track = detect_track(processor, self.source, n, settings.landmark_smoothing, self.show_progress)
                if key:
                    self.cache.save_npz("tracks", key, **track_to_arrays(self.track))
        self.track_key = key
        self.face_frames = [i for i, d in enumerate(self.track) if d is not None]
        found, where = len(self.face_frames), self.input or "the frames"
        if require_face and not found:
            raise NoFaceError(
                f"no face found in {where} (checked {n} frame{'s' if n != 1 else ''} with {processor.name})"
            )
        if 0 < found < n:
            self.warnings.append(f"no face in {n - found} of {n} frames: those frames pass through {passed}")
        if require_face and found / n < settings.min_face_frames:
            raise NoFaceError(
                f"a face was found in only {found} of {n} frames of {where} "
                f"(min_face_frames={settings.min_face_frames})"
            )
        return self.face_frames

    # ------------------------------------------------------------------------------ services
    def timer(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A context manager adding the block's wall time to the report's ``timings_s[name]``."""
        return self.timings(name)

    def collecting(self) -> contextlib.AbstractContextManager[None]:
        """Inside, what components say (:class:`~ipfacediff.errors.EditWarning`) goes into the report's
        warnings (and on the terminal)."""
        return collect_warnings(self.warnings)

    # ------------------------------------------------------------------------------ the end
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the source; prune the cache to its limit (what this run used is kept)."""
        if self.source is not None and self.input is not None:
            self.source.close()
        if self.cache is not None:
            self.pruned = {
                "enabled": self.cache.enabled,
                **(prune(protect=self.cache.used) if self.cache.enabled else {}),
            }
            self.cache.close()

    def report_fields(self) -> dict[str, Any]:
        """What every job's report says: components with their parameters, settings, frames, reused
        stages, cache state, timings, peak memory, device, versions and warnings."""
        import ipfacediff

        return {
            "pipeline": self.pipeline.name,
            "components": {
                slot: {"component": c.name, "params": asdict(c.params)} for slot, c in self.components.items()
            },
            "settings": asdict(self.settings),
            "reused_stages": self.reused,
            "cache": cache_report(self.pruned),
            "timings_s": {
                k: round(v, 3) for k, v in {**self.timings, "total": time.perf_counter() - self.t_start}.items()
            },
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
            "device": str(self.device),
            "versions": {
                "ipfacediff": ipfacediff.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "warnings": self.warnings,
        }


def cache_report(pruned: dict[str, Any]) -> dict[str, Any]:
    """The cache's state after the run's pruning: size and limit (bytes and MB), entries evicted."""
    out: dict[str, Any] = {"enabled": pruned["enabled"]}
    for k, name in (("bytes", "size"), ("limit", "limit"), ("freed", "freed")):
        if k in pruned:
            out[f"{name}_bytes"], out[f"{name}_mb"] = pruned[k], round(pruned[k] / 2**20, 2)
    if "evicted" in pruned:
        out["evicted"] = pruned["evicted"]
    return out
