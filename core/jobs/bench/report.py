"""What a benchmark shows: the summary per pipeline, the terminal table, per-clip strips and plots,
and report.html."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from ipfacediff.jobs.bench.plan import SCHEMA, column_metric
from ipfacediff.jobs.bench.run import _read_frames
from ipfacediff.runtime.files import write_atomic


def summarize(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, dict[str, float | None]]:
    """pipeline -> metric -> mean over its jobs (and the cost columns)."""
    out: dict[str, dict[str, float | None]] = {}
    for pipe in dict.fromkeys(r["pipeline"] for r in rows):
        mine = [r for r in rows if r["pipeline"] == pipe]
        col: dict[str, float | None] = {}
        for m in metrics:
            vals = [
                r["metrics"][m]["value"]
                for r in mine
                if m in r.get("metrics", {}) and r["metrics"][m]["value"] is not None
            ]
            col[m] = float(np.mean(vals)) if vals else None
        edits = [r for r in mine if r["kind"] == "edit"]
        col["unet_evals_per_frame"] = (
            float(np.mean([r["cost"]["unet_evals_per_frame"] for r in edits])) if edits else None
        )
        col["seconds_per_frame"] = float(np.mean([r["cost"]["seconds_per_frame"] for r in edits])) if edits else None
        col["peak_memory_mb"] = float(np.max([r["cost"]["peak_memory_mb"] for r in edits])) if edits else None
        out[pipe] = col
    return out


def _notes(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, str]:
    notes = {}
    for m in metrics:
        for r in rows:
            res = r.get("metrics", {}).get(m)
            if res and res["value"] is None and res.get("note"):
                notes[m] = res["note"]
                break
    return notes


def best_of(summary: dict[str, dict[str, float | None]], column: str, higher: bool) -> str | None:
    vals = {p: c[column] for p, c in summary.items() if c.get(column) is not None}
    if len(vals) < 2:
        return None
    return (max if higher else min)(vals, key=vals.get)


def direction(name: str) -> bool:
    from ipfacediff.catalog import get_catalog

    if name in ("unet_evals_per_frame", "seconds_per_frame", "peak_memory_mb"):
        return False
    return bool(get_catalog().get("metric", column_metric(name)[0]).cls.higher_is_better)


def label(column: str) -> str:
    """A column's heading: ``id-similarity (dlib-resnet)`` for an identity metric's column."""
    name, network = column_metric(column)
    return f"{name} ({network})" if network else column.replace("_", " ")


def identity_lines(identity: dict[str, Any] | None) -> list[str]:
    """Which network scored the identity columns, and which of them each pipeline's loss trained with."""
    if not identity or not identity.get("networks"):
        return []
    by_network: dict[str, list[str]] = {}
    for pipe, loss in identity["loss_networks"].items():
        by_network.setdefault(loss["network"], []).append(pipe)
    parts = []
    for n in identity["networks"]:
        if n in by_network:
            parts.append(f"{n}: the network the identity loss of {', '.join(by_network[n])} trains with")
        elif n == identity.get("independent"):
            parts.append(f"{n}: independent (no pipeline's identity loss trains with it)")
        else:
            parts.append(f"{n}: chosen with --identity-encoders")
    return ["identity scored by " + "; ".join(parts)]


def first_column(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    """The first of ``columns`` whose metric is among ``wanted`` (in ``wanted``'s order)."""
    for w in wanted:
        for c in columns:
            if column_metric(c)[0] == w:
                return c
    return None


def print_table(summary, metrics: list[str], notes: dict[str, str], console, identity=None) -> None:
    from rich.table import Table

    cols = [*metrics, "unet_evals_per_frame", "seconds_per_frame", "peak_memory_mb"]
    table = Table(title="ipfacediff bench: mean per pipeline (* best of the column)")
    table.add_column("pipeline")
    for c in cols:
        table.add_column(label(c) + (" ↑" if direction(c) else " ↓"), justify="right")
    best = {c: best_of(summary, c, direction(c)) for c in cols}
    for pipe, col in summary.items():
        cells = []
        for c in cols:
            v = col.get(c)
            cells.append("n/a" if v is None else (f"[bold green]{v:.4g}*[/]" if best[c] == pipe else f"{v:.4g}"))
        table.add_row(pipe, *cells)
    if not console.is_terminal:  # a log or a pipe: print the whole table, not one squeezed to 80 columns
        from rich.console import Console

        heads = sum(len(label(c)) + 5 for c in cols)  # each heading on one line
        console = Console(file=console.file, width=max(console.width, 20 + max(len(p) for p in summary) + heads))
    console.print(table)
    for line in identity_lines(identity):
        console.print(f"  {line}")
    for m, note in notes.items():
        console.print(f"  {m}: {note}")


def _per_frame_plot(shown: list[dict[str, Any]], metric: str, clip: str, prompt: str, assets: Path) -> str:
    """A line per pipeline of ``metric``'s per-frame values on one clip; returns the PNG's report path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.5, 3), dpi=100)
    for r in shown:
        pf = r["metrics"].get(metric, {}).get("per_frame")
        if pf:
            ax.plot([np.nan if v is None else v for v in pf], label=r["pipeline"], lw=1.3)
    ax.set_xlabel("frame" if column_metric(metric)[0] == "id-similarity" else "frame pair")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(label(metric))
    ax.set_title(f"{clip}: {label(metric)} per frame ({prompt})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    pname = f"per-frame-{clip}.png"
    fig.savefig(assets / pname)
    plt.close(fig)
    return f"report/{pname}"


def _strip_and_plots(rows: list[dict[str, Any]], metrics: list[str], summary, out: Path) -> dict[str, Any]:
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ipfacediff.runtime.frames import make_strip

    assets = out / "report"
    assets.mkdir(parents=True, exist_ok=True)
    made: dict[str, Any] = {"clips": {}}
    edits = [r for r in rows if r["kind"] == "edit"]
    for clip in dict.fromkeys(r["clip"] for r in edits):
        mine = [r for r in edits if r["clip"] == clip]
        first_prompt = mine[0]["prompt"]
        shown = [r for r in mine if r["prompt"] == first_prompt]
        n = shown[0]["frames"]
        keys = shown[0]["keyframes"]
        idx = sorted(set(np.linspace(0, n - 1, min(n, 6)).round().astype(int).tolist()) | set(keys[:2]))[:8]
        src = _read_frames(shown[0]["clip_path"], n)
        strip_rows, labels = [[src[i] for i in idx]], ["source"]
        for r in shown:
            ed = _read_frames(r["output"], n)
            strip_rows.append([ed[i] for i in idx])
            labels.append(
                f"{r['pipeline']} (keyframes "
                f"{', '.join(map(str, r['keyframes'][:6]))}{'...' if len(r['keyframes']) > 6 else ''})"
            )
        strip = make_strip(strip_rows, height=112)
        name = f"strip-{clip}.png"
        cv2.imwrite(str(assets / name), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        entry = {"strip": f"report/{name}", "rows": labels, "frames": idx, "prompt": first_prompt}
        per_frame_metric = first_column(metrics, ("id-similarity", "tl-id", "warp-error", "flicker"))
        if per_frame_metric:
            entry["plot"] = _per_frame_plot(shown, per_frame_metric, clip, first_prompt, assets)
        made["clips"][clip] = entry
    scored = [m for m in metrics if any(c.get(m) is not None for c in summary.values())]
    quality = first_column(scored, ("id-similarity", "clip-directional", "tl-id", "reconstruction"))
    if quality:
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        for pipe, col in summary.items():
            if col.get("unet_evals_per_frame") is not None and col.get(quality) is not None:
                ax.scatter(col["unet_evals_per_frame"], col[quality], s=40)
                ax.annotate(
                    pipe,
                    (col["unet_evals_per_frame"], col[quality]),
                    fontsize=8,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        ax.set_xlabel("UNet evaluations per output frame (cost)")
        ax.set_ylabel(label(quality))
        ax.set_title("cost vs quality", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(assets / "cost-vs-quality.png")
        plt.close(fig)
        made["cost_vs_quality"] = "report/cost-vs-quality.png"
    return made


_CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var s = document.getElementById('image-check');
  s.setAttribute('data-images', imgs.length);
  s.setAttribute('data-broken', broken.length);
  s.textContent = broken.length ? broken.length + ' of ' + imgs.length + ' pictures did not load' : '';
});
</script>"""


def write_html(path: Path, rows, summary, metrics, notes, assets, settings: dict[str, Any], identity=None) -> None:
    e = html.escape
    cols = [*metrics, "unet_evals_per_frame", "seconds_per_frame", "peak_memory_mb"]
    best = {c: best_of(summary, c, direction(c)) for c in cols}
    head = "".join(f"<th>{e(label(c))} {'↑' if direction(c) else '↓'}</th>" for c in cols)
    body = []
    for pipe, col in summary.items():
        cells = "".join(
            f"<td class='{'best' if best[c] == pipe else ''}'>{'n/a' if col.get(c) is None else f'{col[c]:.4g}'}</td>"
            for c in cols
        )
        body.append(f"<tr><th>{e(pipe)}</th>{cells}</tr>")
    note_html = "".join(f"<li>{e(line)}</li>" for line in identity_lines(identity))
    note_html += "".join(f"<li><b>{e(m)}</b>: {e(n)}</li>" for m, n in notes.items())
    clips = []
    for clip, c in assets["clips"].items():
        labels = "".join(f"<li>{e(lbl)}</li>" for lbl in c["rows"])
        plot = f"<img src='{e(c['plot'])}' alt='metric per frame, {e(clip)}'>" if c.get("plot") else ""
        clips.append(
            f"<section><h3>{e(clip)} — “{e(c['prompt'])}”</h3><p>frames {e(', '.join(map(str, c['frames'])))}; "
            "rows:</p>"
            f"<ol>{labels}</ol><img class='strip' src='{e(c['strip'])}' alt='strip {e(clip)}'>{plot}</section>"
        )
    cq = (
        f"<h2>Cost vs quality</h2><img src='{e(assets['cost_vs_quality'])}' alt='cost vs quality'>"
        if assets.get("cost_vs_quality")
        else ""
    )
    random_note = (
        "<p class='warn'>Random-weight backbone: these numbers show the mechanics, not the methods' real quality.</p>"
        if any(r.get("backbone_random") for r in rows)
        else ""
    )
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ipfacediff bench</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td.best {{ background: #d9f2d9; font-weight: bold; }} img {{ max-width: 100%; }}
img.strip {{ display: block; margin: 0.5em 0; }}
.warn {{ color: #a40; }} #image-check {{ color: #c00; }}
</style></head><body>
<h1>ipfacediff bench</h1>
<p id="image-check" data-images="" data-broken=""></p>
<p>{len(rows)} jobs; backbone {e(str(settings["backbone"]))}, {settings["steps"]} steps,
up to {settings["max_frames"]} frames per clip; schema {SCHEMA}.</p>
{random_note}
<h2>Mean per pipeline</h2><table><tr><th>pipeline</th>{head}</tr>{"".join(body)}</table>
<ul>{note_html}</ul>
{cq}
<h2>Clips</h2>{"".join(clips)}
{_CHECK_SCRIPT}
</body></html>
"""
    write_atomic(path, doc)


def groundtruth_tables(rows: list[dict[str, Any]], console=None) -> str:
    """Markdown (and, with a console, rich) tables of the ground-truth benchmark: per truth and
    keyframe scenario, a row per method: face-region PSNR per clip (mean of the edits), then the
    means over clips of every score, each layer's PSNR among them. Rows of propagators that follow
    the truth's own landmarks get a * (they grade themselves)."""
    import numpy as np

    from ipfacediff.jobs.bench.groundtruth import TRUTHS

    scores = [
        dict(s, clip=r["clip"], edit=r["edit"], truth=r.get("truth", "facemesh"))
        for r in rows
        for s in r["scores"]
        if s["interval"] is not None
    ]
    lines = []
    for truth in [t for t in TRUTHS if any(s["truth"] == t for s in scores)]:
        mine = [s for s in scores if s["truth"] == truth]
        clips = sorted({s["clip"] for s in mine})
        methods = list(dict.fromkeys(s["method"] for s in mine))
        marked = {s["method"] for s in mine if s.get("self_graded")}
        layers = list(dict.fromkeys(k for s in mine for k in s.get("layers", {})))
        edits = sorted({s["edit"] for s in mine})
        gt_warp = [
            s["warp_error"]
            for r in rows
            if r.get("truth", "facemesh") == truth
            for s in r["scores"]
            if s["interval"] is None
        ]
        for interval in sorted({s["interval"] for s in mine}, key=lambda i: (i == 0, i)):
            scenario = "the first frame only" if interval == 0 else f"every {interval}"
            head = [
                "method",
                *[f"{c} face PSNR" for c in clips],
                "face PSNR",
                "face SSIM",
                "edit PSNR",
                *[f"{x} PSNR" for x in layers],
                "temporal error",
                "warp error",
            ]
            table = []
            for m in methods:
                sel = [s for s in mine if s["method"] == m and s["interval"] == interval]
                per_clip = [np.nanmean([s["face_psnr"] for s in sel if s["clip"] == c]) for c in clips]
                layer_psnr = [
                    np.nanmean([s["layers"][x]["psnr"] for s in sel if x in s.get("layers", {})] or [np.nan])
                    for x in layers
                ]
                means = [
                    np.nanmean([s.get(k, np.nan) for s in sel])
                    for k in ("face_psnr", "face_ssim", "edit_psnr", "temporal_error", "warp_error")
                ]
                table.append(
                    [
                        m + (" *" if m in marked else ""),
                        *[f"{v:.2f}" for v in per_clip],
                        f"{means[0]:.2f}",
                        f"{means[1]:.4f}",
                        f"{means[2]:.2f}",
                        *[f"{v:.2f}" for v in layer_psnr],
                        f"{means[3]:.2f}",
                        f"{means[4]:.2f}",
                    ]
                )
            title = f"truth: {TRUTHS[truth]}, keyframes {scenario}"
            lines += [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in table] + [""]
            if console is not None:
                from rich.table import Table

                t = Table(title=title)
                for h in head:
                    t.add_column(h, justify="left" if h == "method" else "right")
                for r in table:
                    t.add_row(*r)
                console.print(t)
        lines.append(
            f"Truth: {TRUTHS[truth]}; edits {', '.join(edits)}. Warp error of the ground truth itself: "
            f"{np.nanmean(gt_warp):.2f}. PSNR and SSIM over the face and over the edit (and each layer) alone, on "
            "the non-key frames; temporal error: the output's frame-to-frame change against the truth's, over "
            "the face (grey levels); mean over the edits."
        )
        if marked:
            lines.append(
                f"* follows {TRUTHS[truth].split(' (')[0]}, the model this truth is made with: it grades itself here."
            )
        lines.append("")
    return "\n".join(lines)
