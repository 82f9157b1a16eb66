"""Strategy ``ip-facediff``: the paper's edit method.

Keyframes are selected, DDIM-inverted with eps1 (the ``identity`` adapter) and edited jointly by the
pipeline's editor (eps2 with eps1's decoder features injected), in groups of at most
``settings.keyframe_group`` that share one anchor keyframe; then the edit reaches every other frame
through the pipeline's propagator, chunk by chunk with the keyframes on both sides of each chunk,
optionally followed by a few low-noise refinement steps (``settings.refine_steps``).

The propagator matches on the source latents, or on eps1's last decoder features
(``settings.propagation_source: eps1``; one more UNet pass per frame). Keyframe features are kept in
a memory-mapped file (each chunk needs its border keyframes again) and normalised with statistics of
all keyframes, so chunked propagation equals whole-clip propagation.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

import ipfacediff
from ipfacediff.errors import ParameterError
from ipfacediff.interfaces import EditRun, PropagationInput, Strategy
from ipfacediff.runtime.cache import hash_tensor
from ipfacediff.runtime.diffusion import decoder_token_features
from ipfacediff.runtime.editing import chunk_with_borders, keyframe_groups, refine
from ipfacediff.runtime.face import feather_mask, template_face
from ipfacediff.runtime.frames import region_psnr
from ipfacediff.runtime.progress import progress_bar


class IPFaceDiff(Strategy):
    """Invert and edit the keyframes (identity injection), propagate the edit to the other frames."""

    description = (
        "IP-FaceDiff: keyframes inverted and edited jointly (eps1 features injected into eps2), the edit propagated "
        "to every frame"
    )
    requires = ("face_processor", "inverter", "editor", "propagator")

    adaptive_keyframes = True

    def prepare(self, run: EditRun) -> None:
        prop = run.components["propagator"]
        if prop.space == "pixels" and run.settings.refine_steps > 0:
            raise ParameterError(
                f"settings.refine_steps {run.settings.refine_steps}: refinement denoises latents, and the propagator "
                f"{prop.name!r} carries pixels; use refine_steps=0 or a latent propagator (latent-flow, latent-nn, "
                "exact-nn)"
            )
        adaptive = run.settings.keyframes == "adaptive"
        if adaptive and prop.space != "pixels":
            raise ParameterError(
                f"settings.keyframes=adaptive: keyframes are added by the self-check, which needs a pixel-space "
                f"propagator (layered, flow-residual, mesh-flow); {prop.name!r} carries latents"
            )
        self.key_pos = {key: i for i, key in enumerate(run.keys)}  # keyframe row -> position among the keyframes
        self.edited: dict[int, torch.Tensor] = {}
        self.missed, self.groups = 0, 0
        self.key_src = self.key_out = None
        with progress_bar("keyframes", len(run.keys), run.show_progress) as bar:
            self._edit_keyframes(run, keyframe_groups(run.keys, run.settings.keyframe_group), bar)
        self.stats = None
        if "features" in prop.needs:
            with run.timer("propagate"):
                self.stats = self._key_stats(run)
        if prop.space == "pixels":
            self._key_pixels(run, run.keys)
            if adaptive:
                self._add_keyframes(run)
            self._self_check(run)
        run.report["keyframe_groups"] = self.groups
        if self.missed == 0:
            run.reused.append("keyframe_edit")

    def _edit_keyframes(self, run: EditRun, groups: list[list[int]], bar) -> None:
        """Invert and edit each group of keyframe rows jointly (cached); a row already edited (an anchor
        shared with an earlier group) keeps its first edit."""
        editor, inverter, e = run.components["editor"], run.components["inverter"], run.embeds

        def edit_group(lat: torch.Tensor) -> torch.Tensor:
            self.missed += 1
            inv = run.invert(lat)
            with run.timer("edit_keyframes"):
                return editor.edit(run.backbone, inv, e["target"], e["uncond"], e["empty"]).float().cpu()

        for g in groups:
            lat = run.rows(g)
            parts = {
                "latents": hash_tensor(lat),
                "embeds": {k: hash_tensor(v) for k, v in e.items()},
                "editor": [editor.name, asdict(editor.params)],
                "inverter": [inverter.name, asdict(inverter.params)],
            }
            edited = run.cached("keyframe-edits", parts, lambda lat=lat: edit_group(lat))
            bar.advance(sum(row not in self.edited for row in g))
            for row, value in zip(g, edited):
                self.edited.setdefault(row, value)  # an anchor keeps its first group's edit
            self.groups += 1

    def _add_keyframes(self, run: EditRun) -> None:
        """``settings.keyframes: adaptive``: each keyframe interval whose self-check
        (:meth:`_interval_checks`) is below ``settings.keyframe_threshold`` gets one more keyframe in its
        middle, edited jointly with the existing keyframe nearest to it as the anchor its attention
        shares; again on the new intervals, ``settings.keyframe_rounds`` times at most. The report's
        ``keyframes_added`` says which, why and in which round."""
        s, added = run.settings, []
        for round_ in range(1, s.keyframe_rounds + 1):
            low = [
                x
                for x in self._interval_checks(run)
                if x["psnr"] < s.keyframe_threshold and x["rows"][1] - x["rows"][0] >= 2  # a frame between them
            ]
            if not low:
                break
            new = [(x["rows"][0] + x["rows"][1]) // 2 for x in low]
            for x, row in zip(low, new):
                added.append(
                    {
                        "keyframe": run.face_frames[row],
                        "interval": [x["from"], x["to"]],
                        "psnr": x["psnr"],
                        "round": round_,
                    }
                )
            groups = []
            size = s.keyframe_group - 1
            for i in range(0, len(new), size):
                part = new[i : i + size]
                anchor = min(run.keys, key=lambda k: (abs(k - part[len(part) // 2]), k))
                groups.append([anchor, *part] if anchor < part[0] else [*part, anchor])
            with progress_bar(f"added keyframes (round {round_})", len(new), run.show_progress) as bar:
                self._edit_keyframes(run, [sorted(g) for g in groups], bar)
            run.keys = sorted([*run.keys, *new])
            self._key_pixels(run, new)
            if "features" in run.components["propagator"].needs:
                with run.timer("propagate"):
                    self.stats = self._key_stats(run)  # over every keyframe, the added ones too
        run.report["keyframes_added"] = added

    def _key_pixels(self, run: EditRun, rows: list[int]) -> None:
        """The keyframes as they go out: source crop + (decoded edit - decoded unedited latents), so the
        VAE's own error is not carried as if it were the edit (and keyframes agree with the frames
        propagated from them). Kept in memory-mapped files of the run's scratch folder, in the order
        of ``run.keys``; only ``rows`` are decoded, the others copied from the previous files."""
        from ipfacediff.runtime.frames import to_uint8

        k, r, bs = len(run.keys), run.backbone.resolution, run.settings.batch_size
        old = (self.key_src, self.key_out, self.key_pos) if self.key_src is not None else None
        self.key_pos = {key: i for i, key in enumerate(run.keys)}
        name = f"-{k}" if old is not None else ""
        self.key_src, self.key_out = (
            np.lib.format.open_memmap(
                run.scratch / f"key-{what}{name}.npy", mode="w+", dtype=np.uint8, shape=(k, r, r, 3)
            )
            for what in ("source", "edited")
        )
        if old is not None:
            src, out, pos = old
            kept = [row for row in run.keys if row in pos]
            self.key_src[[self.key_pos[row] for row in kept]] = src[[pos[row] for row in kept]]
            self.key_out[[self.key_pos[row] for row in kept]] = out[[pos[row] for row in kept]]
        with run.timer("decode_keyframes"):
            for s in range(0, len(rows), bs):
                part = rows[s : s + bs]
                at = [self.key_pos[row] for row in part]
                src = run.crops(part)
                edit = to_uint8(run.backbone.decode_latents(torch.stack([self.edited[row] for row in part]))).astype(
                    np.int16
                )
                recon = to_uint8(run.backbone.decode_latents(run.rows(part))).astype(np.int16)
                self.key_src[at] = src
                self.key_out[at] = np.clip(src.astype(np.int16) + edit - recon, 0, 255).astype(np.uint8)

    def _interval_checks(self, run: EditRun) -> list[dict]:
        """Each keyframe interval's self-check: each of its keyframes predicted from the other alone
        (across the whole interval), PSNR (dB) over the face, the mean of the two (``propagate``'s
        ``intervals``). ``rows``: the interval's keyframe rows."""
        prop, out = run.components["propagator"], []
        region = feather_mask(run.backbone.resolution, 0.1)
        with run.timer("self_check"):
            for a, b in zip(run.keys[:-1], run.keys[1:]):
                scores = []
                for given in (0, 1):
                    predicted = np.asarray(prop.propagate(self._propagation_input(run, [a, b], [given])))[1 - given]
                    scores.append(region_psnr(predicted, self.key_out[self.key_pos[(a, b)[1 - given]]], region))
                out.append(
                    {
                        "from": run.face_frames[a],
                        "to": run.face_frames[b],
                        "psnr": round(float(np.mean(scores)), 3),
                        "rows": (a, b),
                    }
                )
        return out

    def _self_check(self, run: EditRun) -> None:
        """``propagate``'s self-check on the edit's own keyframes, in the report as ``self_check``: each
        edited keyframe predicted by the propagator from its nearest keyframe on each side, PSNR (dB) over
        the face (the crop's paste-back region). A low value says the edit does not move the way the
        propagator carries it between those keyframes (an occlusion, a turn, an edit that changes shape)."""
        prop, checks = run.components["propagator"], []
        region = feather_mask(run.backbone.resolution, 0.1)
        with run.timer("self_check"):
            for pos, k in enumerate(run.keys):
                near = run.keys[max(pos - 1, 0) : pos] + run.keys[pos + 1 : pos + 2]
                if not near:
                    continue
                sub = sorted([k, *near])
                inp = self._propagation_input(run, sub, [p for p, r in enumerate(sub) if r != k])
                predicted = np.asarray(prop.propagate(inp))[sub.index(k)]
                checks.append(
                    {
                        "keyframe": run.face_frames[k],
                        "from": [run.face_frames[r] for r in near],
                        "psnr": region_psnr(predicted, self.key_out[self.key_pos[k]], region),
                    }
                )
        intervals = self._interval_checks(run)
        for x in intervals:
            del x["rows"]
        run.report["self_check"] = {"leave_one_out": checks, "intervals": intervals, "suggest": []}

    # ----------------------------------------------------------------------- matching features
    def _eps1(self, run: EditRun, rows: list[int]) -> torch.Tensor:
        run.backbone.set_adapter("identity")
        try:
            return decoder_token_features(
                run.backbone,
                run.rows(rows),
                run.settings.propagation_timestep,
                run.embeds["empty"],
                run.seed,
                run.settings.batch_size,
            )
        finally:
            run.backbone.set_adapter(None)

    def _features(self, run: EditRun, rows: list[int]) -> torch.Tensor:
        """The propagator's source features of ``rows``: their latents, or eps1's decoder features
        (keyframes' from the store written by :meth:`_key_stats`, the others computed)."""
        if run.settings.propagation_source != "eps1":
            return run.rows(rows)
        others = [r for r in rows if r not in self.key_pos]
        computed = dict(zip(others, self._eps1(run, others))) if others else {}
        return torch.stack(
            [
                torch.from_numpy(np.array(self.key_features[self.key_pos[r]])) if r in self.key_pos else computed[r]
                for r in rows
            ]
        )

    def _key_stats(self, run: EditRun) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the keyframes' token features: one normalisation for every
        chunk. eps1 features of the keyframes go to a memory-mapped file in the run's scratch folder."""
        total, total_sq, count = None, None, 0
        bs, eps1 = run.settings.batch_size, run.settings.propagation_source == "eps1"
        self.key_features = None
        for s in range(0, len(run.keys), bs):
            f = self._eps1(run, run.keys[s : s + bs]) if eps1 else run.rows(run.keys[s : s + bs])
            if eps1:
                if self.key_features is None:
                    self.key_features = np.lib.format.open_memmap(
                        run.scratch / "key-features.npy",
                        mode="w+",
                        dtype=np.float16,
                        shape=(len(run.keys), *f.shape[1:]),
                    )
                self.key_features[s : s + f.shape[0]] = f.half().numpy()
            f = f.double()
            total = f.sum(dim=(0, 2, 3)) + (0 if total is None else total)
            total_sq = (f * f).sum(dim=(0, 2, 3)) + (0 if total_sq is None else total_sq)
            count += f.shape[0] * f.shape[2] * f.shape[3]
        mean = total / count
        var = (total_sq - count * mean * mean) / max(count - 1, 1)
        return mean.float(), var.clamp_min(0).sqrt().float()

    # ---------------------------------------------------------------------------------- chunks
    def _source_pixels(self, run: EditRun, inp: PropagationInput, sub: list[int]) -> None:
        """The aligned source crops of the rows ``sub`` (every keyframe's kept from :meth:`_key_pixels`
        when there, also one the self-check leaves out) and, on them, the face on the crop template."""
        src = np.empty((len(sub), run.backbone.resolution, run.backbone.resolution, 3), np.uint8)
        kept = [p for p, r in enumerate(sub) if r in self.key_pos] if self.key_src is not None else []
        if kept:
            src[kept] = self.key_src[[self.key_pos[sub[p]] for p in kept]]
        others = [p for p in range(len(sub)) if p not in kept]
        if others:
            src[others] = run.crops([sub[p] for p in others])  # only the chunk's own frames are read and aligned
        inp.source_pixels = src
        zoom = (
            float(getattr(run.components["face_processor"].params, "zoom", 0.45))
            if "face_processor" in run.components
            else 0.45
        )
        inp.faces = [template_face(src.shape[1], zoom)] * len(sub)

    def _propagation_input(self, run: EditRun, sub: list[int], sub_keys: list[int]) -> PropagationInput:
        """What the propagator gets for the rows ``sub`` with the keyframes at positions ``sub_keys``."""
        prop = run.components["propagator"]
        inp = PropagationInput(
            key_rows=sub_keys,
            frames=[run.face_frames[r] for r in sub],
            stats=self.stats,
            edited_latents=torch.stack([self.edited[sub[p]] for p in sub_keys]),
        )
        if (
            prop.space == "latents" or "source_latents" in prop.needs
        ):  # with pixel propagation only keyframes are encoded
            inp.source_latents = run.rows(sub)
        if "features" in prop.needs:
            inp.features = self._features(run, sub)
        if {"source_pixels", "faces"} & set(prop.needs):
            self._source_pixels(run, inp, sub)
        if prop.space == "pixels":
            keyed = [self.key_pos[sub[p]] for p in sub_keys]
            inp.edited_pixels, inp.reconstructed_pixels = np.array(self.key_out[keyed]), np.array(self.key_src[keyed])
        return inp

    def render(self, run: EditRun, rows: list[int]) -> torch.Tensor | np.ndarray:
        prop = run.components["propagator"]
        with run.timer("propagate"):
            sub, sub_keys, first = chunk_with_borders(rows, run.keys)  # the keyframes on both sides take part
            inp = self._propagation_input(run, sub, sub_keys)
            if prop.space == "pixels":
                return prop.propagate(inp)[first : first + len(rows)]
            out = prop.propagate(inp)
            out = out[first : first + len(rows)].float()
            if run.settings.refine_steps > 0:
                self._refine(run, rows, out)
        return out

    def _refine(self, run: EditRun, rows: list[int], out: torch.Tensor) -> None:
        """Refine the non-key frames in place, batched by the keyframes around them (their anchors:
        a frame's result does not depend on how the clip was chunked)."""
        by_pair: dict[tuple[int, ...], list[int]] = {}
        for p, r in enumerate(rows):
            if r not in self.key_pos:
                pair = tuple([k for k in run.keys if k < r][-1:] + [k for k in run.keys if k > r][:1])
                by_pair.setdefault(pair, []).append(p)
        bs = run.settings.batch_size
        for pair, ps in by_pair.items():
            for s in range(0, len(ps), bs):
                part = ps[s : s + bs]
                out[part] = refine(run, out[part], [rows[p] for p in part], {k: self.edited[k] for k in pair})

    def close(self) -> None:
        self.key_features = self.key_src = self.key_out = (
            None  # memory maps closed; the job removes the scratch folder
        )


@ipfacediff.hookimpl
def register_strategies(register):
    register(IPFaceDiff, name="ip-facediff")
