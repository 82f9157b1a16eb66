"""``ipfacediff ui``: a local web app (Gradio) over the same jobs as the command line.

Edit tab: upload a clip (or take the sample), prompt, pipeline, backbone, seed, steps, keyframe
interval. **Preview keyframes** runs the preview job (detection, keyframe selection, the keyframe
edit: :mod:`ipfacediff.jobs.preview`) and shows source vs edited keyframes with the face boxes;
**Render** runs the edit job, which reuses every stage the preview cached, and offers the video,
the strip and the report. Propagate tab: a clip, a frame picker (a slider with a preview) that
downloads the chosen frames full size, named by frame number (the ``frames`` job), and the frames
edited elsewhere dropped back and carried to every frame (the ``propagate`` job). One job runs at a
time (the rest wait in the queue); each can be cancelled.
Bad input gets the jobs' one-line messages, shown in the page.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from ipfacediff.errors import InputError, IPFaceDiffError, ParameterError

MAX_UPLOAD = "500mb"
JOB = "ipfacediff-job"  # every job event shares one queue slot: one job at a time


class App:
    """The app's state: the registry, a work folder for outputs, and the limits."""

    def __init__(
        self, registry_file: str | Path | None = None, max_frames: int = 240, workdir: str | Path | None = None
    ):
        from ipfacediff.registry import load_registry

        self.registry_file = registry_file
        self.registry = load_registry(registry_file)
        self.max_frames = max_frames
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ipfacediff-ui-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._count, self._lock = 0, threading.Lock()

    def new_dir(self, kind: str) -> Path:
        with self._lock:
            self._count += 1
            d = self.workdir / f"{self._count:04d}-{kind}"
        d.mkdir(parents=True)
        return d

    # --------------------------------------------------------------------------------- checks
    def clip(self, path: str | None, limit: int | None) -> tuple[Path, int]:
        """The uploaded clip, checked: present, readable, not longer than the app's limit (the
        frames to edit: the user's limit or the clip's length)."""
        from ipfacediff.runtime.video import open_frames

        if not path:
            raise InputError("no clip: upload a video (or press 'Use the sample clip')")
        with open_frames(Path(path)) as src:
            n = src.info.n_frames
        frames = min(n, limit) if limit else n
        if frames > self.max_frames:
            raise InputError(
                f"the clip has {n} frames; this app edits at most {self.max_frames} "
                f"(set 'Max frames', or use `ipfacediff edit` for longer clips)"
            )
        return Path(path), frames

    def request(
        self,
        clip: str | None,
        prompt: str,
        pipeline: str,
        backbone: str,
        seed: float,
        steps: float,
        interval: float,
        max_frames: float | None,
        output: Path,
    ):
        from ipfacediff.jobs.edit import EditRequest

        if not (prompt or "").strip():
            raise ParameterError("no prompt: say what to change (e.g. 'eyeglasses', 'blonde hair', 'older')")
        path, frames = self.clip(clip, int(max_frames) if max_frames else None)
        sets: dict[str, Any] = {"settings": {"keyframe_interval": int(interval)}} if interval else {}
        return EditRequest(
            input=path,
            prompt=prompt,
            pipeline=self.registry.pipeline(pipeline),
            registry=self.registry,
            output=output,
            backbone=backbone,
            steps=int(steps),
            max_frames=frames,
            sets=sets,
            seed=int(seed),
            overwrite=True,
            show_progress=False,
        )

    def frame(self, path: Path, index: int):
        """Frame ``index`` of the clip (``uint8 [H, W, 3]``) for the picker's preview."""
        from ipfacediff.runtime.video import open_frames

        with open_frames(path) as src:
            return src.get([min(max(int(index), 0), len(src) - 1)])[0]

    def backbone_note(self, backbone: str) -> str:
        """What the chosen backbone will be, said plainly when it has random weights."""
        from ipfacediff.jobs.common import find_stable_diffusion

        entry = self.registry.backbones.get(backbone)
        tiny = backbone.startswith("tiny") or (entry is not None and entry.component.name == "tiny")
        random = tiny or (backbone == "auto" and find_stable_diffusion(self.registry) is None)
        if random:
            return (
                "**Random weights.** This backbone shows the mechanics, not a real edit. For a real edit set "
                "`IPFACEDIFF_SD_MODEL` to a Stable Diffusion folder or file before `ipfacediff ui` (`ipfacediff "
                "doctor` says what is found)."
            )
        return "Stable Diffusion weights: a real edit."


def _progress(progress):
    """A progress listener that moves the page's progress bar, stage by stage."""

    def tell(stage: str, done: int, total: int) -> None:
        progress((done, max(total, 1)), desc=stage, unit="items")

    return tell


def _said(message: str, report: dict[str, Any]) -> str:
    """A job's status line for the page, its warnings quoted below it."""
    return message + "".join(f"\n\n> {w}" for w in report["warnings"])


def _run(fn, progress):
    """Run a job with the page's progress; a user's error becomes one line in the page."""
    import gradio as gr

    from ipfacediff.runtime.progress import listening

    try:
        with listening(_progress(progress)):
            return fn()
    except IPFaceDiffError as exc:
        raise gr.Error(str(exc).splitlines()[0]) from None


def build(app: App):
    """The Gradio Blocks of the app."""
    import gradio as gr

    from ipfacediff.jobs.edit import run_edit
    from ipfacediff.jobs.preview import run_preview
    from ipfacediff.jobs.propagate import describe_self_check
    from ipfacediff.runtime.sample import sample_clip_path

    pipelines = list(app.registry.pipelines)
    backbones = ["auto", *[b for b in app.registry.backbones]]
    with gr.Blocks(title="ipfacediff", delete_cache=(3600, 24 * 3600)) as demo:  # served copies of outputs: a day
        gr.Markdown(
            "# ipfacediff\nIdentity-preserving, text-driven face video editing. Preview the keyframes first; render "
            "when they look right."
        )
        with gr.Tab("Edit", elem_id="tab-edit"):
            with gr.Row():
                with gr.Column():
                    clip = gr.File(label="Clip (video)", file_types=["video"], elem_id="clip")
                    sample = gr.Button("Use the sample clip", elem_id="use-sample", size="sm")
                    prompt = gr.Textbox(label="Prompt", value="eyeglasses", elem_id="prompt")
                    with gr.Row():
                        pipeline = gr.Dropdown(
                            pipelines,
                            value="ip-facediff" if "ip-facediff" in pipelines else pipelines[0],
                            label="Pipeline",
                            elem_id="pipeline",
                        )
                        backbone = gr.Dropdown(backbones, value="auto", label="Backbone", elem_id="backbone")
                    note = gr.Markdown(app.backbone_note("auto"), elem_id="backbone-note")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                        steps = gr.Number(20, label="Steps", precision=0, minimum=1, maximum=200, elem_id="steps")
                        interval = gr.Number(
                            8, label="Keyframe interval", precision=0, minimum=1, maximum=64, elem_id="interval"
                        )
                        max_frames = gr.Number(
                            None, label="Max frames (0 or empty: all)", precision=0, minimum=0, elem_id="max-frames"
                        )
                    with gr.Row():
                        preview_btn = gr.Button("Preview keyframes", variant="secondary", elem_id="preview")
                        render_btn = gr.Button("Render", variant="primary", elem_id="render")
                        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                with gr.Column():
                    preview_img = gr.Image(
                        label="Keyframes: frame with face box / source crop / edited crop",
                        type="filepath",
                        interactive=False,
                        elem_id="preview-image",
                    )
                    status = gr.Markdown("", elem_id="status")
                    video = gr.Video(label="Edited clip", interactive=False, elem_id="result-video")
                    files = gr.File(
                        label="Downloads: video, strip, report",
                        file_count="multiple",
                        interactive=False,
                        elem_id="result-files",
                    )

            def on_preview(c, p, pl, bb, sd, st, iv, mf, progress=gr.Progress()):
                out = app.new_dir("preview")
                rep = _run(
                    lambda: run_preview(app.request(c, p, pl, bb, sd, st, iv, mf, out / "preview.png")), progress
                )
                reused = ", ".join(rep["reused_stages"]) or "nothing (first run on this clip)"
                return rep["preview"], _said(
                    f"Keyframes {rep['keyframes']} of {rep['frames']} frames; {rep['timings_s']['total']:.1f} s. "
                    f"Reused from the cache: {reused}.",
                    rep,
                )

            def on_render(c, p, pl, bb, sd, st, iv, mf, progress=gr.Progress()):
                out = app.new_dir("render")
                rep = _run(lambda: run_edit(app.request(c, p, pl, bb, sd, st, iv, mf, out / "edited.mp4")), progress)
                reused = ", ".join(rep["reused_stages"]) or "nothing"
                check = f"\n\n{describe_self_check(rep['self_check'])}." if rep.get("self_check") else ""
                return (
                    rep["output"],
                    [rep["output"], rep["strip"], rep["report"]],
                    _said(
                        f"{rep['frames_edited']}/{rep['frames']} frames edited in {rep['timings_s']['total']:.1f} s; "
                        f"reused from the cache: {reused}.{check}",
                        rep,
                    ),
                )

            inputs = [clip, prompt, pipeline, backbone, seed, steps, interval, max_frames]
            sample.click(lambda: str(sample_clip_path()), outputs=clip)
            backbone.change(app.backbone_note, backbone, note)
            ev_preview = preview_btn.click(
                on_preview, inputs, [preview_img, status], concurrency_id=JOB, concurrency_limit=1
            )
            ev_render = render_btn.click(
                on_render, inputs, [video, files, status], concurrency_id=JOB, concurrency_limit=1
            )

        with gr.Tab("Propagate", elem_id="tab-propagate"):
            gr.Markdown(
                "Carry frames you edited elsewhere to every frame: **1.** pick the frames to edit and download them "
                "(full size, named by frame number), **2.** edit them in any tool, keeping the names, **3.** drop "
                "them back here and propagate."
            )
            with gr.Row():
                with gr.Column():
                    p_clip = gr.File(label="Clip (video)", file_types=["video"], elem_id="p-clip")
                    p_frame = gr.Slider(0, 1, value=0, step=1, label="Frame", visible=False, elem_id="p-frame")
                    p_frame_img = gr.Image(
                        label="Frame preview", type="numpy", interactive=False, visible=False, elem_id="p-frame-image"
                    )
                    with gr.Row():
                        p_at = gr.Textbox(label="Frames to edit (0-based numbers)", value="", elem_id="p-at")
                        p_add = gr.Button("Add this frame", size="sm", elem_id="p-add")
                    p_export = gr.Button("Download the frames to edit", elem_id="p-export")
                    p_frames = gr.File(
                        label="Frames to edit (full size, named by frame number)",
                        file_count="multiple",
                        interactive=False,
                        elem_id="p-frames",
                    )
                    p_keys = gr.File(
                        label="Edited keyframes (images)",
                        file_count="multiple",
                        file_types=["image"],
                        elem_id="p-keys",
                    )
                    p_btn = gr.Button("Propagate", variant="primary", elem_id="propagate")
                    p_cancel = gr.Button("Cancel", variant="stop", elem_id="p-cancel")
                with gr.Column():
                    p_video = gr.Video(label="Result", interactive=False, elem_id="p-video")
                    p_files = gr.File(label="Download", interactive=False, elem_id="p-file")
                    p_status = gr.Markdown("", elem_id="p-status")

            def on_propagate(c, keys, progress=gr.Progress()):
                from ipfacediff.jobs.propagate import PropagateRequest, describe_self_check, run_propagate

                path, _ = app.clip(c, None)
                if not keys:
                    raise gr.Error("no keyframe images: add the frames you edited, named by frame index")
                out = app.new_dir("propagate")
                folder = out / "keyframes"
                folder.mkdir()
                for k in keys:
                    src = Path(k if isinstance(k, str) else k.name)
                    shutil.copy(src, folder / src.name)
                req = PropagateRequest(
                    input=path,
                    keyframes=folder,
                    output=out / "propagated.mp4",
                    registry_file=app.registry_file,
                    overwrite=True,
                    show_progress=False,
                )
                rep = _run(lambda: run_propagate(req), progress)
                return (
                    rep["output"],
                    rep["output"],
                    _said(
                        f"{len(rep['keyframes'])} keyframes ({rep['keyframes']}) carried to {rep['frames']} frames "
                        f"in {rep['seconds']:.1f} s.\n\n{describe_self_check(rep['self_check'])}.",
                        rep,
                    ),
                )

            def on_clip(c):
                if not c:
                    return gr.Slider(visible=False), gr.Image(visible=False), ""
                try:
                    path, n = app.clip(c, None)
                except IPFaceDiffError as exc:
                    raise gr.Error(str(exc).splitlines()[0]) from None
                return (
                    gr.Slider(minimum=0, maximum=max(n - 1, 1), value=0, step=1, visible=True),
                    gr.Image(value=app.frame(path, 0), visible=True),
                    "0",
                )

            def on_frame(c, i):
                if not c:
                    return None
                try:
                    return app.frame(app.clip(c, None)[0], int(i))
                except IPFaceDiffError as exc:
                    raise gr.Error(str(exc).splitlines()[0]) from None

            def on_add(at, i):
                numbers = sorted({*[int(x) for x in (at or "").replace(" ", "").split(",") if x.isdigit()], int(i)})
                return ", ".join(map(str, numbers))

            def on_export(c, at, progress=gr.Progress()):
                from ipfacediff.jobs.frames import FramesRequest, export_frames, parse_indices

                folder = app.new_dir("frames")
                rep = _run(
                    lambda: export_frames(
                        FramesRequest(input=app.clip(c, None)[0], output=folder, at=parse_indices(at or ""))
                    ),
                    progress,
                )
                return [f["path"] for f in rep["frames"]], (
                    f"{len(rep['frames'])} frames to edit: download them, edit them keeping their names, and drop "
                    "them into *Edited keyframes*."
                )

            p_clip.change(on_clip, p_clip, [p_frame, p_frame_img, p_at])
            p_frame.change(on_frame, [p_clip, p_frame], p_frame_img)
            p_add.click(on_add, [p_at, p_frame], p_at)
            p_export.click(on_export, [p_clip, p_at], [p_frames, p_status])
            ev_prop = p_btn.click(
                on_propagate, [p_clip, p_keys], [p_video, p_files, p_status], concurrency_id=JOB, concurrency_limit=1
            )
        cancel_btn.click(None, cancels=[ev_preview, ev_render])
        p_cancel.click(None, cancels=[ev_prop])
    return demo


def serve(
    host: str = "127.0.0.1", port: int = 7860, registry_file: str | Path | None = None, max_frames: int = 240
) -> None:
    """Start the app and block (Ctrl+C stops it)."""
    app = App(registry_file, max_frames)
    demo = build(app)
    demo.queue(default_concurrency_limit=1)
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            max_file_size=MAX_UPLOAD,
            allowed_paths=[str(app.workdir)],
            footer_links=[],
            show_error=True,
            quiet=True,
        )
    finally:
        shutil.rmtree(app.workdir, ignore_errors=True)
