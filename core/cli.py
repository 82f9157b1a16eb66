"""The ``ipfacediff`` command line.

User-caused errors (:class:`ipfacediff.errors.IPFaceDiffError`) print one line and exit with 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ipfacediff import __version__
from ipfacediff.errors import IPFaceDiffError, ParameterError

# before torch is imported: MKL must not choose fewer threads on its own under load (the same job
# gives the same numbers in every process, as the bench's local and Ray executors are checked to)
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

out = Console()
err = Console(stderr=True)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


registry_option = click.option(
    "--registry",
    "registry_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A user registry YAML merged over the built-in one.",
)
backbone_option = click.option(
    "--backbone",
    default="auto",
    show_default=True,
    help="auto, tiny, stable-diffusion, or a backbone of the registry.",
)
seed_option = click.option("--seed", default=0, show_default=True, type=int)


def sets_option(examples: str):
    """``--set SLOT.KEY=VALUE`` (repeatable), with examples of the command's own slots."""
    return click.option(
        "--set", "sets", multiple=True, metavar="SLOT.KEY=VALUE", help=f"Override a parameter: {examples}"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ipfacediff")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option(
    "--cache-limit",
    default=None,
    metavar="SIZE",
    help=(
        "Bound the cache of finished stages (e.g. 5GB; default $IPFACEDIFF_CACHE_LIMIT or 20GB); least recently used "
        "entries go first."
    ),
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, cache_limit: str | None) -> None:
    """Identity-preserving, text-driven facial video editing (IP-FaceDiff)."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    if cache_limit is not None:  # for this command only
        from ipfacediff.runtime.cache import LIMIT_ENV, parse_size

        parse_size(cache_limit)
        before = os.environ.get(LIMIT_ENV)
        os.environ[LIMIT_ENV] = cache_limit

        def restore() -> None:  # a caller of main() in a long-lived process keeps its own limit
            if before is None:
                os.environ.pop(LIMIT_ENV, None)
            else:
                os.environ[LIMIT_ENV] = before

        ctx.call_on_close(restore)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--check",
    is_flag=True,
    help="Also start every third-party component with its default parameters; exit 1 if one fails.",
)
def plugins(as_json: bool, check: bool) -> None:
    """List every plugin, its package and version, and what it registers."""
    from ipfacediff.catalog import get_catalog

    catalog = get_catalog()
    if check:
        _start_third_party_components(catalog)
    rows = []
    for info in catalog.plugins.values():
        comps = {k: sorted(v) for k, v in info.components.items()}
        rows.append(
            {
                "name": info.name,
                "package": info.package,
                "version": info.version,
                "builtin": info.builtin,
                "hooks": info.hooks,
                "components": comps,
            }
        )
    problems = [{"plugin": p.plugin, "message": p.message} for p in catalog.problems]
    if as_json:
        components = {
            kind: [
                {
                    "name": s.name,
                    "plugin": s.plugin,
                    "module": s.cls.__module__,
                    "description": s.description,
                    "params": _describe(s.cls.Params),
                    **({"requires": list(s.cls.requires)} if kind in ("strategy", "objective") else {}),
                    **({"terms": list(s.cls.terms)} if kind == "objective" else {}),
                    **({"space": s.cls.space, "needs": list(s.cls.needs)} if kind == "propagator" else {}),
                }
                for s in sorted(specs.values(), key=lambda s: s.name)
            ]
            for kind, specs in catalog.specs.items()
        }
        _print_json({"plugins": rows, "components": components, "problems": problems})
        if check and problems:
            raise click.exceptions.Exit(1)
        return
    table = Table(title="ipfacediff plugins")
    for col in ("plugin", "package", "version", "registers"):
        table.add_column(col)
    for r in rows:
        regs = "; ".join(f"{k.replace('_', ' ')}: {', '.join(v)}" for k, v in r["components"].items())
        table.add_row(r["name"], r["package"], r["version"], regs)
    out.print(table)
    for p in problems:
        err.print(f"[yellow]warning:[/] {p['message']}")
    if check and problems:
        raise click.exceptions.Exit(1)


def _start_third_party_components(catalog) -> None:
    """Build each third-party component with its default parameters: a constructor that fails is a
    problem of its plugin (the catalog records it), not an exception."""
    from ipfacediff.errors import IPFaceDiffError

    for kind, specs in catalog.specs.items():
        for spec in specs.values():
            if catalog._builtin(spec.plugin):
                continue
            try:
                catalog.build(kind, spec.name)
            except IPFaceDiffError:
                pass  # recorded in catalog.problems (a constructor) or said by the error (parameters)


def parse_set_option(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``--set key.path=value`` options into a nested dict (values parsed as YAML scalars)."""
    import yaml

    from ipfacediff.errors import ParameterError

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ParameterError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ParameterError(f"--set {item!r}: {p!r} is set both as a value and as a group")
        node[parts[-1]] = value
    return out


def _describe(params_cls: type) -> list[dict[str, Any]]:
    from ipfacediff.params import describe_params

    return describe_params(params_cls)


@cli.command()
@registry_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def pipelines(registry_file: Path | None, as_json: bool) -> None:
    """List (and validate) the pipelines, backbones and recipes of the registry."""
    from ipfacediff.registry import load_registry

    reg = load_registry(registry_file)
    if as_json:
        _print_json(
            {
                "files": reg.files,
                "backbones": {
                    k: {"component": v.component.to_json(), "description": v.description, "source": v.source}
                    for k, v in reg.backbones.items()
                },
                "pipelines": {k: v.to_json() for k, v in reg.pipelines.items()},
                "recipes": {k: v.to_json() for k, v in reg.recipes.items()},
            }
        )
        return
    for title, table_data in (("pipelines", reg.pipelines), ("recipes", reg.recipes)):
        table = Table(title=f"{title} ({', '.join(reg.files)})")
        for col in ("name", "backbone", "components", "description"):
            table.add_column(col)
        for name, p in table_data.items():
            comps = [f"{slot}: {ref.name}" for slot, ref in p.components.items()]
            if getattr(p, "metrics", None):
                comps.append("metrics: " + ", ".join(m.name for m in p.metrics))
            table.add_row(name, p.backbone, "\n".join(comps), p.description)
        out.print(table)
    if reg.backbones:
        table = Table(title="backbones")
        for col in ("name", "component", "description"):
            table.add_column(col)
        for name, b in reg.backbones.items():
            table.add_row(name, b.component.name, b.description)
        out.print(table)


@cli.command()
@registry_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(registry_file: Path | None, as_json: bool) -> None:
    """Python, torch, device, which model weights are found where, and what a real edit would use."""
    import torch

    from ipfacediff.jobs.doctor import real_edit_status
    from ipfacediff.registry import load_registry
    from ipfacediff.runtime import models

    device = (
        "cuda"
        if torch.cuda.is_available()
        else ("mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    )
    registry = load_registry(registry_file)
    optional = {}
    for mod in ("insightface", "facenet_pytorch", "open_clip", "decord", "hnswlib", "diffusers", "peft", "av", "dlib"):
        try:
            m = __import__(mod)
            optional[mod] = getattr(m, "__version__", "installed")
        except Exception as exc:  # noqa: BLE001 - report, do not fail
            optional[mod] = f"unavailable ({type(exc).__name__}: {exc})"
    report = {
        "ipfacediff": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "models_env": os.environ.get(models.MODELS_ENV),
        "cache": str(models.cache_dir()),
        "offline": models.offline(),
        "packages": optional,
        "models": models.status(),
        "real_edit": real_edit_status(registry),
        "identity_networks": _identity_networks(registry),
    }
    if as_json:
        _print_json(report)
        return
    out.print(
        f"ipfacediff {__version__}  python {report['python']}  torch {report['torch']}  device [bold]{device}[/]"
    )
    out.print(
        f"{models.MODELS_ENV}={report['models_env'] or '(unset)'}  cache={report['cache']}  "
        f"offline={report['offline']}"
    )
    table = Table(title="model weights")
    for col in ("name", "found", "sha256", "how to get"):
        table.add_column(col)
    for r in report["models"]:
        ok = {True: "[green]ok[/]", False: "[red]mismatch[/]", None: "-"}[r["sha256_ok"]]
        table.add_row(r["name"], r["found"] or "[red]missing[/]", ok, r["how_to_get"] or "")
    out.print(table)
    _print_real_edit(report["real_edit"])
    table = Table(title="identity networks")
    for col in ("encoder", "available", "trains (recipes)", "scores (metrics' default)", "bench scores with it as"):
        table.add_column(col)
    roles = {"independent": "the independent network", "loss": "the identity loss's network", None: "-"}
    for r in report["identity_networks"]:
        avail = "[green]yes[/]" if r["available"] else f"[red]no[/]: {r['problem']}"
        table.add_row(
            r["name"], avail, ", ".join(r["trained_by"]) or "-", ", ".join(r["scores"]) or "-", roles[r["bench"]]
        )
    out.print(table)
    for k, v in optional.items():
        out.print(f"  {k}: {v}")


def _identity_networks(registry) -> list[dict[str, Any]]:
    """Each identity encoder: whether it starts here, which recipes train with it (their identity
    loss), which metrics score with it by default (``metrics.NAME.encoder`` picks another), and its
    role in ``bench`` (which scores identity with an independent network and with the loss's)."""
    import dataclasses

    from ipfacediff.catalog import get_catalog
    from ipfacediff.errors import IPFaceDiffError
    from ipfacediff.jobs.bench.plan import independent_network

    catalog = get_catalog()
    losses = {getattr(p.components.get("identity_encoder"), "name", None) for p in registry.pipelines.values()} - {
        None
    }
    independent, _ = independent_network(catalog, losses)
    defaults = {}
    for name, spec in catalog.specs["metric"].items():
        fields = {f.name: f for f in dataclasses.fields(spec.cls.Params)} if spec.cls.Params else {}
        if "encoder" in fields:
            defaults[name] = fields["encoder"].default
    rows = []
    for name in sorted(catalog.specs["identity_encoder"]):
        problem = None
        try:
            differentiable = catalog.build("identity_encoder", name).differentiable
        except IPFaceDiffError as exc:
            problem, differentiable = exc.one_line(), None
        trained = [
            r
            for r, rec in registry.recipes.items()
            if getattr(rec.components.get("identity_encoder"), "name", "") == name
        ]
        rows.append(
            {
                "name": name,
                "available": problem is None,
                "problem": problem,
                "differentiable": differentiable,
                "trained_by": trained,
                "scores": sorted(m for m, enc in defaults.items() if enc == name),
                "bench": "independent" if name == independent else ("loss" if name in losses else None),
            }
        )
    return rows


def _print_real_edit(real: dict) -> None:
    """The real-edit part of ``doctor``: one row per resource, what is found and how to get what is not."""
    table = Table(title="for a real edit")
    for col in ("what", "found", "how to get"):
        table.add_column(col)
    sd = real["stable_diffusion"]
    table.add_row(
        "Stable Diffusion",
        f"{sd['found']} (from {sd['from']})" if sd["found"] else "[red]none[/]: edits use the random tiny backbone",
        sd["how_to_get"] or "",
    )
    for key, label in (
        ("clip", "CLIP weights (directional loss, CLIP metrics)"),
        ("arcface", "insightface ArcFace (identity loss)"),
    ):
        conf = real[key]["configured"]
        found = (
            "; ".join(
                f"{w}: {c.get('weights') or c.get('model_path') or 'no weights'}"
                f"{'' if c['found'] else ' [red](missing)[/]'}"
                for w, c in conf.items()
            )
            or "[red]not configured[/]"
        )
        table.add_row(label, found, real[key]["how_to_get"] or "")
    ad = real["adapters"]["configured"]
    table.add_row(
        "LoRA adapters",
        "; ".join(f"{w}: {a['path']}{'' if a['found'] else ' [red](missing)[/]'}" for w, a in ad.items())
        or "[red]none in the registry[/]",
        real["adapters"]["how_to_get"] or "",
    )
    out.print(table)


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (another than localhost opens the app to your network).",
)
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@registry_option
@click.option(
    "--max-frames", default=240, show_default=True, type=click.IntRange(1, 100000), help="Longest clip the app edits."
)
def ui(host: str, port: int, registry_file: Path | None, max_frames: int) -> None:
    """A local web app: edit with a keyframe preview, carry edited keyframes (needs ipfacediff[ui])."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ParameterError(
            "the web app needs Gradio: pip install 'ipfacediff[ui]' (make install installs it)"
        ) from None
    from ipfacediff.ui import serve

    if host not in ("127.0.0.1", "localhost", "::1"):
        out.print(
            f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine on port {port} can use the "
            "app"
        )
    out.print(f"ipfacediff ui: http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}  (Ctrl+C stops it)")
    serve(host, port, registry_file, max_frames)


@cli.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the clip (default: the user cache).",
)
@click.option("--frames", default=48, show_default=True, type=click.IntRange(1, 10000))
@click.option("--size", default=256, show_default=True, type=click.IntRange(64, 2048))
def sample(output: Path | None, frames: int, size: int) -> None:
    """Make the sample clip (astronaut photograph, synthetic head motion) and print its path."""
    from ipfacediff.runtime.sample import sample_clip_path, write_sample_clip

    path = write_sample_clip(output, frames, size) if output else sample_clip_path()
    click.echo(str(path))


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: ./<input name>-faces).",
)
@click.option(
    "--pipeline",
    "pipeline_name",
    default="face-crops",
    show_default=True,
    help="A pipeline of the registry with a face_processor.",
)
@registry_option
@click.option("--max-frames", type=int, default=None, help="Only the first N frames.")
@sets_option("face_processor.threshold=0.8.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, mps")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def faces(
    ctx: click.Context,
    input_path: Path,
    output: Path | None,
    pipeline_name: str,
    registry_file: Path | None,
    max_frames: int | None,
    sets: tuple[str, ...],
    device: str,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Detect, track and align the face in every frame; write the crops, the round trip, a strip and a report."""
    from ipfacediff.jobs.faces import run_face_crops
    from ipfacediff.registry import load_registry

    reg = load_registry(registry_file)
    pipeline = reg.pipeline(pipeline_name)
    output = output or Path.cwd() / f"{input_path.stem}-faces"
    report = run_face_crops(
        input_path,
        output,
        pipeline,
        parse_set_option(sets),
        max_frames,
        device,
        overwrite,
        show_progress=not (ctx.obj["quiet"] or as_json),
    )
    if as_json:
        _print_json({k: v for k, v in report.items() if k != "frames"})
        return
    for w in report["warnings"]:
        err.print(f"[yellow]warning:[/] {w}")
    ident = report["identity_to_first_frame"]
    out.print(
        f"faces found in {report['frames_with_face']}/{report['frames_processed']} frames; "
        f"identity vs first frame: mean {ident['mean']:.3f}, min {ident['min']:.3f}"
        if ident["mean"] is not None
        else ""
    )
    for name, m in report["metrics"].items():
        out.print(f"{name}: {m['value']:.3f}" if m["value"] is not None else f"{name}: n/a")
    out.print(f"result: [bold]{output}[/] (crops.mp4, roundtrip.mp4, strip.png, faces.json)")


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-p", "--prompt", required=True, help='The edit(s), comma-separated: "eyeglasses" or "blonde hair, beard".'
)
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="PATH",
    help=(
        "Output video (default: ./<input name>-edited.mp4), or a folder (ending with / or existing) for numbered PNG "
        "frames."
    ),
)
@click.option(
    "--pipeline", "pipeline_name", default="ip-facediff", show_default=True, help="A pipeline of the registry."
)
@registry_option
@backbone_option
@click.option(
    "--face-processor",
    default=None,
    help="Replace the pipeline's face processor: full-frame for talking-head crops, mtcnn, retinaface.",
)
@click.option("--steps", default=50, show_default=True, type=int, help="Sampler steps.")
@click.option("--max-frames", type=int, default=None, help="Only the first N frames (quick previews).")
@sets_option("editor.guidance_scale=5, settings.keyframe_interval=4, backbone.path=...")
@seed_option
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, mps")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option(
    "--no-cache",
    is_flag=True,
    help="Neither reuse nor keep finished stages (face track, latents, inversions, keyframe edits).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def edit(
    ctx: click.Context,
    input_path: Path,
    prompt: str,
    output: str | None,
    pipeline_name: str,
    registry_file: Path | None,
    backbone: str,
    face_processor: str | None,
    steps: int,
    max_frames: int | None,
    sets: tuple[str, ...],
    seed: int,
    device: str,
    overwrite: bool,
    no_cache: bool,
    as_json: bool,
) -> None:
    """Edit the face in a video (or image) with a text prompt, keeping who the person is."""
    from ipfacediff.jobs.edit import EditRequest, run_edit
    from ipfacediff.registry import load_registry
    from ipfacediff.runtime.video import is_sequence_output

    reg = load_registry(registry_file)
    req = EditRequest(
        input=input_path,
        prompt=prompt,
        pipeline=reg.pipeline(pipeline_name),
        registry=reg,
        output=Path(output) if output else None,
        sequence=is_sequence_output(output) if output else None,
        backbone=backbone,
        steps=steps,
        max_frames=max_frames,
        sets=parse_set_option(sets),
        seed=seed,
        face_processor=face_processor,
        device=device,
        overwrite=overwrite,
        cache=not no_cache,
        show_progress=not (ctx.obj["quiet"] or as_json),
    )
    report = run_edit(req)
    if _json_or_warnings(report, as_json):
        return
    ev = report["unet_evaluations"]
    out.print(
        f"{report['frames_edited']}/{report['frames']} frames edited, keyframes {report['keyframes']}; "
        f"UNet evaluations {ev['total']} ({ev['per_output_frame']:.1f} per frame: "
        + ", ".join(f"{k} {v}" for k, v in ev["by_stage"].items())
        + f"); {report['timings_s']['total']:.1f} s"
    )
    out.print(f"result: [bold]{report['output']}[/]  strip: {report['strip']}  report: {report['report']}")
    if report.get("self_check"):
        from ipfacediff.jobs.propagate import describe_self_check

        out.print(describe_self_check(report["self_check"]))
    if report["reused_stages"]:
        out.print(f"reused from the cache: {', '.join(report['reused_stages'])}")


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "--keyframes",
    "keyframes",
    required=True,
    type=click.Path(path_type=Path),
    metavar="DIR",
    help=(
        "Folder of edited full-size frames named by the 0-based frame index they replace (8.png, 00008.png, "
        "frame_0008.jpg)."
    ),
)
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="PATH",
    help="Output video, or a folder (ending with / or existing) for numbered PNG frames.",
)
@click.option(
    "--pipeline",
    "pipeline_name",
    default="ip-facediff",
    show_default=True,
    help="The registry pipeline whose propagator, face processor and settings are the defaults.",
)
@click.option("--propagator", default=None, help="A pixel-space propagator (default: the pipeline's).")
@click.option(
    "--face-processor",
    default=None,
    help="Face detector/aligner (default: the pipeline's); full-frame propagates whole frames.",
)
@click.option("--max-frames", type=int, default=None, help="Only the first N frames.")
@sets_option("propagator.tolerance=4, face_processor.threshold=0.8.")
@registry_option
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE",
    help="Where the JSON report goes (default: OUT.json beside the output).",
)
@click.option("--no-cache", is_flag=True, help="Neither read nor keep the face track in the cache.")
@click.option(
    "--no-self-check",
    is_flag=True,
    help="Skip the self-check (each keyframe predicted from the others; the frames worth one more keyframe).",
)
@click.option("--suggest", type=int, default=3, show_default=True, help="Frames the self-check suggests.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def propagate(
    ctx: click.Context,
    input_path: Path,
    keyframes: Path,
    output: str,
    pipeline_name: str,
    propagator: str | None,
    face_processor: str | None,
    max_frames: int | None,
    sets: tuple[str, ...],
    registry_file: Path | None,
    report_path: Path | None,
    no_cache: bool,
    no_self_check: bool,
    suggest: int,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Carry keyframe edits made elsewhere (an image editor, another model) to every frame of a video
    or a folder of frames."""
    from ipfacediff.jobs.propagate import PropagateRequest, describe_self_check, run_propagate
    from ipfacediff.runtime.video import is_sequence_output

    req = PropagateRequest(
        input=input_path,
        keyframes=keyframes,
        output=Path(output),
        propagator=propagator,
        face_processor=face_processor,
        max_frames=max_frames,
        sets=parse_set_option(sets),
        registry_file=registry_file,
        sequence=is_sequence_output(output),
        overwrite=overwrite,
        show_progress=not (ctx.obj["quiet"] or as_json),
        pipeline=pipeline_name,
        report=report_path,
        cache=not no_cache,
        self_check=not no_self_check,
        suggest=suggest,
    )
    report = run_propagate(req)
    if _json_or_warnings(report, as_json):
        return
    out.print(
        f"{report['frames']} frames, keyframes {report['keyframes']} carried by {report['propagator']} in "
        f"{report['seconds']:.1f} s"
    )
    out.print(describe_self_check(report["self_check"]))
    out.print(f"result: [bold]{report['output']}[/]  report: {report['report']}")


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--at", "at", default="", metavar="N,N,...", help="0-based frame numbers, comma-separated: 0,48,96.")
@click.option("--every", type=int, default=None, metavar="N", help="Every N-th frame from frame 0.")
@click.option(
    "--suggest",
    type=int,
    default=0,
    metavar="K",
    help="Also the K frames where one more edited keyframe would help propagate most (the self-check's "
    "suggestions, beside --at and the edited frames already in DIR).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Folder for the PNGs, named by frame number (00048.png): edit them and give the folder to propagate.",
)
@click.option("--overwrite", is_flag=True, help="Replace frames already in the folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def frames(
    ctx: click.Context,
    input_path: Path,
    at: str,
    every: int | None,
    suggest: int,
    output: Path,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Write full-size frames of a video (or a folder of frames) as PNGs named by their frame number,
    to edit anywhere and carry back with `ipfacediff propagate INPUT --keyframes DIR`."""
    from ipfacediff.jobs.frames import FramesRequest, export_frames, parse_indices

    report = export_frames(
        FramesRequest(
            input=input_path,
            output=output,
            at=parse_indices(at),
            every=every,
            suggest=suggest,
            overwrite=overwrite,
            show_progress=not (ctx.obj["quiet"] or as_json),
        )
    )
    if as_json:
        _print_json(report)
        return
    out.print(
        f"{len(report['frames'])} frames of {report['clip_frames']} written to [bold]{report['output']}[/]: "
        + ", ".join(Path(f["path"]).name for f in report["frames"][:8])
        + ("..." if len(report["frames"]) > 8 else "")
    )
    if report["suggested"]:
        out.print(
            "suggested by the self-check: " + ", ".join(f"{x['frame']} ({x['reason']})" for x in report["suggested"])
        )
    out.print(report["next"])


@cli.group()
def cache() -> None:
    """List or clear the cache of finished stages (face tracks, latents, inversions, keyframe edits)."""


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cache_list(as_json: bool) -> None:
    """Disk use of the cache, per category."""
    import time as _time

    from ipfacediff.runtime.cache import CATEGORIES, cache_limit, human, usage
    from ipfacediff.runtime.models import cache_dir

    use = usage()
    evictable = sum(u["bytes"] for u in use.values() if u["evictable"])
    if as_json:
        _print_json(
            {
                "dir": str(cache_dir()),
                "limit_bytes": cache_limit(),
                "evictable_bytes": evictable,
                "total_bytes": sum(u["bytes"] for u in use.values()),
                "categories": use,
            }
        )
        return
    table = Table(title=f"ipfacediff cache ({cache_dir()})")
    for col in ("category", "entries", "size", "last used", "evictable", "holds"):
        table.add_column(
            col, justify="right" if col in ("entries", "size") else "left", no_wrap=col != "holds"
        )  # names stay whole in logs
    for cat in CATEGORIES:
        if cat in use:
            u = use[cat]
            table.add_row(
                cat,
                str(u["entries"]),
                human(u["bytes"]),
                _time.strftime("%Y-%m-%d %H:%M", _time.localtime(u["newest"])),
                "yes" if u["evictable"] else "no",
                u["description"],
            )
    out.print(table)
    out.print(
        f"evictable: {human(evictable)} of a {human(cache_limit())} limit (--cache-limit / $IPFACEDIFF_CACHE_LIMIT)"
    )


@cache.command("clear")
@click.argument("categories", nargs=-1)
@click.option(
    "--older-than", type=float, default=None, metavar="DAYS", help="Only entries not used for this many days."
)
@click.option(
    "--all", "everything", is_flag=True, help="Also the downloaded models, sample clip, tokenizer and configs."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cache_clear(categories: tuple[str, ...], older_than: float | None, everything: bool, as_json: bool) -> None:
    """Remove cache entries: CATEGORIES (default: every evictable one: tracks, latents, inversions,
    keyframe-edits, finetune-data)."""
    from ipfacediff.runtime.cache import CATEGORIES, EVICTABLE, clear, human

    cats = tuple(categories) or (tuple(CATEGORIES) if everything else EVICTABLE)
    res = clear(cats, older_than)
    if as_json:
        _print_json({"categories": list(cats), **res})
        return
    out.print(f"removed {res['removed']} entries ({human(res['freed'])}) from {', '.join(cats)}")


def _json_or_warnings(report: dict, as_json: bool) -> bool:
    """Print the report as JSON (True: nothing else to print), or its warnings (False)."""
    if as_json:
        _print_json(report)
        return True
    for w in report["warnings"]:
        err.print(f"[yellow]warning:[/] {w}")
    return False


@cli.command()
@click.argument("recipe_name", metavar="RECIPE")
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="A folder of face images and/or videos (or one file); never written to.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Adapter folder to write (diffusers LoRA format).",
)
@registry_option
@backbone_option
@click.option(
    "--max-steps", type=int, default=None, help="Train this many steps in all (overrides the recipe's steps)."
)
@sets_option("settings.learning_rate=1e-4, identity_encoder.model_path=..., backbone.path=...")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from the last checkpoint of this output (interrupted, or finished and asked for more steps).",
)
@seed_option
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="cpu, cuda (under `accelerate launch`, accelerate picks the device)",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def finetune(
    ctx: click.Context,
    recipe_name: str,
    data: Path,
    output: Path,
    registry_file: Path | None,
    backbone: str,
    max_steps: int | None,
    sets: tuple[str, ...],
    resume: bool,
    seed: int,
    device: str,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Train a LoRA adapter of a recipe: identity (eps1, ArcFace identity loss) or edit (eps2,
    directional CLIP loss)."""
    from ipfacediff.jobs.finetune import FinetuneRequest, run_finetune
    from ipfacediff.registry import load_registry

    reg = load_registry(registry_file)
    req = FinetuneRequest(
        recipe=reg.recipe(recipe_name),
        registry=reg,
        data=data,
        output=output,
        backbone=backbone,
        max_steps=max_steps,
        sets=parse_set_option(sets),
        seed=seed,
        device=device,
        resume=resume,
        overwrite=overwrite,
        show_progress=not (ctx.obj["quiet"] or as_json),
    )
    report = run_finetune(req)
    if _json_or_warnings(report, as_json):
        return
    out.print(
        f"{report['steps']} steps on {report['data']['faces']} faces, {report['seconds_per_step']:.2f} s/step; loss "
        "terms " + ", ".join(f"{k} {report['eval_start'][k]:.4f} -> {v:.4f}" for k, v in report["eval_end"].items())
    )
    out.print(f"adapter: [bold]{report['output']}[/] (pytorch_lora_weights.safetensors, README.md, losses.png)")


@cli.command()
@click.option(
    "--videos",
    "videos",
    multiple=True,
    metavar="FILES|DIR",
    help="Clips: files or folders (repeat or comma-separate). Default: the sample clip.",
)
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML or CSV of clip -> prompts (default: eyeglasses for every clip).",
)
@click.option(
    "--pipelines",
    default=",".join(["ip-facediff", "per-frame", "tokenflow", "sdedit"]),
    show_default=True,
    help="Pipelines of the registry, comma-separated.",
)
@registry_option
@backbone_option
@click.option("--steps", default=10, show_default=True, type=int)
@click.option("--max-frames", type=int, default=16, show_default=True, help="Frames per clip (0: all).")
@click.option("--metrics", default=None, help="Metrics, comma-separated (default: all of them).")
@click.option(
    "--identity-encoders",
    default="auto",
    show_default=True,
    help="Networks scoring the identity metrics, comma-separated: auto (one independent of the identity loss, "
    "and the loss's own), independent, loss, or identity encoder names.",
)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option(
    "--face-processor", default=None, help="Replace the pipelines' face processor (full-frame for talking-head crops)."
)
@sets_option("backbone.resolution=128, ... (in every job).")
@seed_option
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (reruns skip finished jobs).",
)
@click.option(
    "--ground-truth",
    is_flag=True,
    help="The ground-truth propagation benchmark (synthetic edits known on every frame) instead of pipelines.",
)
@click.option(
    "--propagators",
    default="flow-residual,mesh-flow,layered",
    show_default=True,
    help="--ground-truth: pixel-space propagators, comma-separated.",
)
@click.option(
    "--intervals",
    default="8,16",
    show_default=True,
    help="--ground-truth: keyframe intervals, comma-separated; first: the first frame only.",
)
@click.option(
    "--edits",
    default="paint+glasses,lips,smile",
    show_default=True,
    help="--ground-truth: synthetic edits, comma-separated; each one layer or several joined with + "
    "(paint, glasses, sunglasses, lips, smile, hair, hat).",
)
@click.option(
    "--baselines",
    default="source,copy-nearest,flow-warp-edited,taesd-roundtrip,truth-resmoothed",
    show_default=True,
    help="--ground-truth: the baselines scored beside the propagators (taesd-roundtrip, the ceiling of a "
    "latent-space propagator, costs a TAESD encode and decode per frame; truth-resmoothed, the dlib truth drawn "
    "again with its landmarks smoothed over 5 frames instead of 7: how precisely the truth itself is defined).",
)
@click.option(
    "--truth",
    "truths",
    default="dlib68",
    show_default=True,
    help="--ground-truth: what the truth moves by: dlib68 (dlib's 68 landmarks, which no propagator follows), "
    "facemesh (FaceMesh, which mesh-flow follows), or both.",
)
@click.option("--json", "as_json", is_flag=True, help="Print results.json to stdout.")
@click.pass_context
def bench(
    ctx: click.Context,
    videos: tuple[str, ...],
    prompts_file: Path | None,
    pipelines: str,
    registry_file: Path | None,
    backbone: str,
    steps: int,
    max_frames: int,
    metrics: str | None,
    identity_encoders: str,
    executor: str,
    face_processor: str | None,
    sets: tuple[str, ...],
    seed: int,
    device: str,
    output: Path,
    ground_truth: bool,
    propagators: str,
    intervals: str,
    edits: str,
    baselines: str,
    truths: str,
    as_json: bool,
) -> None:
    """Compare pipelines on clips and prompts: metrics, cost, results.json, a table and report.html."""
    from ipfacediff.jobs.bench import DEFAULT_METRICS, BenchRequest, find_videos, load_prompts_file, run_bench

    if not videos:
        from ipfacediff.runtime.sample import sample_clip_path

        videos = (str(sample_clip_path()),)
    req = BenchRequest(
        videos=find_videos(list(videos)),
        output=output,
        prompts=load_prompts_file(prompts_file),
        pipelines=[p.strip() for p in pipelines.split(",") if p.strip()],
        metrics=[m.strip() for m in metrics.split(",") if m.strip()] if metrics else list(DEFAULT_METRICS),
        identity_encoders=_csv(identity_encoders) or ["auto"],
        backbone=backbone,
        steps=steps,
        max_frames=max_frames or None,
        sets=parse_set_option(sets),
        registry_file=str(registry_file) if registry_file else None,
        face_processor=face_processor,
        seed=seed,
        device=device,
        executor=executor,
        show_progress=not (ctx.obj["quiet"] or as_json),
        ground_truth=ground_truth,
        propagators=_csv(propagators),
        edits=_csv(edits),
        intervals=_int_list(",".join("0" if x.strip() == "first" else x for x in intervals.split(",")), "--intervals"),
        truths=_csv(truths),
        baselines=_csv(baselines),
    )
    result = run_bench(req, console=None if as_json else out)
    if as_json:
        _print_json(result)
        return
    if ground_truth:
        out.print(
            f"{result['jobs']} jobs ({result['jobs_skipped']} already done, skipped) in {result['seconds']:.0f} s; "
            f"results: [bold]{output / 'results.json'}[/]  tables: [bold]{result['tables']}[/]"
        )
        return
    out.print(
        f"{result['jobs']} jobs ({result['jobs_skipped']} already done, skipped) in {result['seconds']:.0f} s; "
        f"results: [bold]{output / 'results.json'}[/]  report: [bold]{result['report']}[/]"
    )


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(p) for p in _csv(text)]
    except ValueError:
        raise click.BadParameter(f"{text!r}: whole numbers, comma-separated", param_hint=flag) from None


INTERRUPTED = (
    "interrupted: nothing was written under the output name; run the same command again to resume after the finished "
    "stages "
    "(finetune: add --resume)"
)


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # a kill cleans up like Ctrl-C: temporary outputs are removed


def main(argv: list[str] | None = None) -> int:
    import signal

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("IPFACEDIFF_DEBUG") == "1"
    try:
        signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread (e.g. called from a test runner thread)
        pass
    try:
        # without standalone mode click returns a command's Exit code instead of raising it
        code = cli.main(args=argv, prog_name="ipfacediff", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        err.print(INTERRUPTED, soft_wrap=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except IPFaceDiffError as exc:
        if debug:
            raise
        click.echo(f"error: {exc.one_line()}", err=True)
        return exc.exit_code
    except Exception as exc:
        cause = exc
        while cause is not None and not isinstance(cause, KeyboardInterrupt):  # a library wrapped the Ctrl-C / kill
            cause = cause.__cause__ or cause.__context__
        if cause is None or debug:
            raise
        err.print(INTERRUPTED, soft_wrap=True)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
