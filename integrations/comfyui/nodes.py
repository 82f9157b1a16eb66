"""The IP-FaceDiff nodes. ComfyUI's IMAGE is a float tensor ``[B, H, W, C]`` in [0, 1]: nodes take and
give that. Heavy state (the backbone and its adapters, the face detector, keyframe edits, propagated
crops) travels in the pack's own types (``IPFD_*``), never inside IMAGE tensors, and long batches are
processed ``chunk`` frames at a time up to a ``max_frames`` cap (a clip longer than the cap is cut
there, and the nodes say so in their summary string)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

CATEGORY = "IP-FaceDiff"


# ------------------------------------------------------------------------------------ frames
class TensorFrames:
    """A ComfyUI IMAGE batch read as ipfacediff reads a video: ``uint8 [B, H, W, 3]`` chunks on demand
    (the float batch is never copied whole)."""

    def __init__(self, images: torch.Tensor, max_frames: int | None = None):
        if images.ndim != 4 or images.shape[-1] not in (3, 4):
            raise ValueError(f"expected an IMAGE batch [B, H, W, C], got shape {tuple(images.shape)}")
        from ipfacediff.runtime.video import VideoInfo

        self.images = images
        self.n = images.shape[0] if not max_frames else min(images.shape[0], max_frames)
        self.batch = 16
        h, w = images.shape[1:3]
        self.info = VideoInfo("IMAGE batch", "images", self.n, 0.0, int(w), int(h), has_audio=False)

    def __len__(self) -> int:
        return self.n

    def get(self, indices) -> np.ndarray:
        sel = self.images[list(indices), ..., :3]
        return (sel.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    def iter_chunks(self, chunk_size: int = 16, max_frames: int | None = None):
        n = self.n if max_frames is None else min(self.n, max_frames)
        for s in range(0, n, chunk_size):
            yield s, self.get(range(s, min(n, s + chunk_size)))


def to_image(frames: np.ndarray) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` -> ComfyUI IMAGE."""
    return torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0


# ------------------------------------------------------------------------------------ state
@dataclass
class Model:
    """IPFD_MODEL: the backbone (both adapters on one UNet) and its device."""

    backbone: Any
    device: torch.device


@dataclass
class Faces:
    """IPFD_FACES: the face track of the first ``n`` frames, the face processor and the crop size."""

    processor: Any
    track: list
    face_frames: list[int]
    n: int
    resolution: int
    zoom: float

    def align(self, frames: TensorFrames, rows: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        imgs = frames.get([self.face_frames[r] for r in rows])
        aligned = [
            self.processor.align(f, self.track[self.face_frames[r]], self.resolution) for f, r in zip(imgs, rows)
        ]
        return np.stack([a.crop for a in aligned]), [a.matrix for a in aligned]


@dataclass
class Edits:
    """IPFD_EDITS: the edit run (:class:`ipfacediff.jobs.edit.EditJob` over the IMAGE batch, its
    keyframes edited by the pipeline's strategy), kept open for the propagation; closed (its
    temporary files removed) when ComfyUI drops this output."""

    job: Any

    def __post_init__(self):
        weakref.finalize(self, self.job.close)

    @property
    def keys(self) -> list[int]:
        return self.job.keys


@dataclass
class Crops:
    """IPFD_CROPS: an edited aligned crop for every face frame (``uint8``)."""

    crops: np.ndarray


PIPELINE = "ip-facediff"  # the registry pipeline whose strategy, editor, inverter and settings the nodes run
NONE = "(none)"
MODELS_ENV = "IPFACEDIFF_COMFY_MODELS"  # without ComfyUI: a folder laid out like ComfyUI's models/
MODEL_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def model_files(kind: str) -> list[str]:
    """The files of one of ComfyUI's model folders (``checkpoints``, ``loras``) as its dropdowns list
    them: ``folder_paths`` inside ComfyUI; else the folder ``$IPFACEDIFF_COMFY_MODELS/KIND``."""
    try:
        import folder_paths  # ComfyUI's
    except ImportError:
        import os
        from pathlib import Path

        root = os.environ.get(MODELS_ENV)
        folder = Path(root) / kind if root else None
        if folder is None or not folder.is_dir():
            return []
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix.lower() in MODEL_EXTS)
    return sorted(folder_paths.get_filename_list(kind))


def model_path(kind: str, name: str) -> str:
    """The full path of a file picked from :func:`model_files`."""
    try:
        import folder_paths
    except ImportError:
        import os
        from pathlib import Path

        return str(Path(os.environ.get(MODELS_ENV, ".")) / kind / name)
    found = folder_paths.get_full_path(kind, name)
    if found is None:
        raise ValueError(f"{name}: not in ComfyUI's models/{kind} (refresh the node list, or pick another)")
    return found


def _registry():
    from ipfacediff.registry import load_registry

    return load_registry()


# ------------------------------------------------------------------------------------ nodes
class LoadBackbone:
    """A backbone with its two LoRA adapters (identity = eps1, edit = eps2)."""

    @classmethod
    def INPUT_TYPES(cls):
        names = [
            "auto",
            "tiny",
            "stable-diffusion",
            *[n for n in _registry().backbones if n not in ("tiny", "stable-diffusion")],
        ]
        return {
            "required": {
                "backbone": (names, {"default": "auto"}),
                "device": (["auto", "cpu", "cuda"], {"default": "auto"}),
            },
            "optional": {
                "checkpoint": (
                    "STRING",
                    {"default": "", "tooltip": "Stable Diffusion folder or .safetensors (stable-diffusion)"},
                ),
                "identity_adapter": ("STRING", {"default": "", "tooltip": "folder of the identity LoRA (eps1)"}),
                "edit_adapter": ("STRING", {"default": "", "tooltip": "folder of the edit LoRA (eps2)"}),
                "resolution": (
                    "INT",
                    {"default": 0, "min": 0, "max": 2048, "step": 8, "tooltip": "0: the backbone's"},
                ),
                "checkpoint_name": (
                    [NONE, *model_files("checkpoints")],
                    {"default": NONE, "tooltip": "a Stable Diffusion checkpoint from models/checkpoints"},
                ),
                "identity_lora": (
                    [NONE, *model_files("loras")],
                    {"default": NONE, "tooltip": "the identity LoRA (eps1) from models/loras"},
                ),
                "edit_lora": (
                    [NONE, *model_files("loras")],
                    {"default": NONE, "tooltip": "the edit LoRA (eps2) from models/loras"},
                ),
            },
        }

    RETURN_TYPES = ("IPFD_MODEL", "STRING")
    RETURN_NAMES = ("model", "summary")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(
        self,
        backbone,
        device,
        checkpoint="",
        identity_adapter="",
        edit_adapter="",
        resolution=0,
        checkpoint_name=NONE,
        identity_lora=NONE,
        edit_lora=NONE,
    ):
        """A typed path wins over a file picked from ComfyUI's model folders."""
        from ipfacediff.jobs.common import resolve_backbone

        picked = lambda kind, name: model_path(kind, name) if name and name != NONE else ""  # noqa: E731
        checkpoint = checkpoint or picked("checkpoints", checkpoint_name)
        identity_adapter = identity_adapter or picked("loras", identity_lora)
        edit_adapter = edit_adapter or picked("loras", edit_lora)
        sets: dict[str, Any] = {}
        if checkpoint:
            sets["path"] = checkpoint
            if backbone == "auto":  # a checkpoint is a Stable Diffusion one
                backbone = "stable-diffusion"
        adapters = {k: v for k, v in (("identity", identity_adapter), ("edit", edit_adapter)) if v}
        if adapters:
            sets["adapters"] = adapters
        if resolution:
            sets["resolution"] = int(resolution)
        dev = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        bb, warnings = resolve_backbone(backbone, {"backbone": sets} if sets else {}, _registry())
        bb.to(dev)
        model = Model(bb, dev)
        random = " (random weights: shows the mechanics, not a real edit)" if bb.is_random else ""
        said = "".join(f"; warning: {w}" for w in warnings)
        return (
            model,
            f"{bb.name} at {bb.resolution} px on {dev}{random}; adapters: {', '.join(bb.adapters) or 'none'}{said}",
        )


class DetectAlignFaces:
    """Detect and track the face in every frame (chunked); aligned crops are made on demand later."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "model": ("IPFD_MODEL",),
                "face_processor": (["retinaface", "mtcnn", "full-frame"], {"default": "retinaface"}),
                "max_frames": (
                    "INT",
                    {"default": 240, "min": 1, "max": 100000, "tooltip": "frames past the cap are dropped"},
                ),
                "smoothing": (
                    "INT",
                    {"default": 5, "min": 1, "max": 61, "tooltip": "frames in the landmark smoothing window"},
                ),
            }
        }

    RETURN_TYPES = ("IPFD_FACES", "STRING")
    RETURN_NAMES = ("faces", "summary")
    FUNCTION = "detect"
    CATEGORY = CATEGORY

    def detect(self, images, model, face_processor, max_frames, smoothing):
        from ipfacediff.catalog import get_catalog
        from ipfacediff.jobs.clip import ClipJob

        frames = TensorFrames(images, max_frames)
        sets = {"settings": {"landmark_smoothing": int(smoothing)}}
        with ClipJob(
            _registry().pipeline(PIPELINE), sets, frames=frames, device=model.device, show_progress=False
        ) as job:  # closed: its private stage folder goes
            job.check_request()
            job.open_source()
            proc = get_catalog().build("face_processor", face_processor).to(model.device)
            face_frames = job.detect(proc)  # the CLI's detection and its checks (a face in enough frames)
        zoom = float(getattr(proc.params, "zoom", 0.45))
        cut = (
            f"; cut at {len(frames)} of {images.shape[0]} frames (max_frames)" if len(frames) < images.shape[0] else ""
        )
        faces = Faces(proc, job.track, face_frames, len(frames), model.backbone.resolution, zoom)
        return faces, f"a face in {len(face_frames)} of {len(frames)} frames{cut}"


class PickKeyframes:
    """Keyframes among the face frames: every ``interval``-th, ``count`` evenly, or the most varied poses."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "faces": ("IPFD_FACES",),
                "method": (["uniform", "count", "pose"], {"default": "uniform"}),
                "interval": ("INT", {"default": 8, "min": 1, "max": 256}),
                "count": ("INT", {"default": 5, "min": 1, "max": 256}),
            }
        }

    RETURN_TYPES = ("IPFD_KEYFRAMES", "STRING")
    RETURN_NAMES = ("keyframes", "summary")
    FUNCTION = "pick"
    CATEGORY = CATEGORY

    def pick(self, faces, method, interval, count):
        from ipfacediff.runtime.keyframes import select_keyframes

        n = len(faces.face_frames)
        keys = select_keyframes(
            n, method, min(int(interval), n), min(int(count), n), [faces.track[i] for i in faces.face_frames]
        )
        return keys, "keyframes (frame indices): " + ", ".join(str(faces.face_frames[k]) for k in keys)


class EditKeyframes:
    """IP-FaceDiff's keyframe edit, by the ``ip-facediff`` pipeline's own strategy (what ``ipfacediff
    edit`` runs): DDIM inversion (eps1), then eps2 with the target prompt while eps1's decoder
    features are injected; keyframes edited jointly in groups of at most ``keyframe_group``, the
    missing-adapter check said in the summary."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("IPFD_MODEL",),
                "images": ("IMAGE",),
                "faces": ("IPFD_FACES",),
                "keyframes": ("IPFD_KEYFRAMES",),
                "prompt": ("STRING", {"default": "eyeglasses", "multiline": False}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 200}),
                "guidance": ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.5}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": True}),
                "source_prompt": ("STRING", {"default": "a photo of a face"}),
            }
        }

    RETURN_TYPES = ("IPFD_EDITS", "IMAGE", "STRING")
    RETURN_NAMES = ("edits", "keyframes_before_after", "summary")
    FUNCTION = "edit"
    CATEGORY = CATEGORY

    def edit(self, model, images, faces, keyframes, prompt, steps, guidance, seed, source_prompt):
        from ipfacediff.jobs.edit import EditJob, EditRequest, plan_stages
        from ipfacediff.runtime.frames import fade_outside

        reg = _registry()
        sets = {"editor": {"guidance_scale": float(guidance)}, "settings": {"source_prompt": source_prompt}}
        req = EditRequest(
            input=None,
            prompt=prompt,
            pipeline=reg.pipeline(PIPELINE),
            registry=reg,
            steps=int(steps),
            sets=sets,
            seed=int(seed),
            device=str(model.device),
            show_progress=False,
            cache=False,
        )
        frames = TensorFrames(images, faces.n)
        job = EditJob(req, plan_stages(req, frames=len(frames)), frames=frames)
        try:
            with job.collecting():
                job.build(model.backbone, {"face_processor": faces.processor})
                job.detect(track=faces.track, keys=list(keyframes))
                job.encode()
                job.prepare()
                edited = job.edited_crops(job.keys)  # the keyframes as they go out
        except BaseException:
            job.close()
            raise
        shape = (*images.shape[1:3], 3)  # crop pixels from outside the frame shown faded (not the reflected padding)
        pairs = []
        for k in job.keys:
            m = job.matrices[k]
            pairs.append(
                np.concatenate([fade_outside(job.crops([k])[0], m, shape), fade_outside(edited[k], m, shape)], axis=1)
            )
        said = "; ".join(f"warning: {w}" for w in job.warnings)
        summary = f"{len(job.keys)} keyframes edited by {job.strategy.name}" + (f"; {said}" if said else "")
        return Edits(job), to_image(np.stack(pairs)), summary


class Propagate:
    """Carry the keyframes' edit to every face frame by the pipeline's strategy (pixel space:
    ``layered``, ``mesh-flow`` or ``flow-residual``), ``chunk`` frames at a time with the keyframes on both sides of
    each chunk: what ``ipfacediff edit`` does."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "faces": ("IPFD_FACES",),
                "edits": ("IPFD_EDITS",),
                "propagator": (["layered", "mesh-flow", "flow-residual"], {"default": "layered"}),
                "chunk": ("INT", {"default": 32, "min": 2, "max": 1024}),
            }
        }

    RETURN_TYPES = ("IPFD_CROPS", "STRING")
    RETURN_NAMES = ("crops", "summary")
    FUNCTION = "propagate"
    CATEGORY = CATEGORY

    def propagate(self, images, faces, edits, propagator, chunk):
        from ipfacediff.catalog import get_catalog

        job = edits.job
        job.components["propagator"] = get_catalog().build("propagator", propagator).to(job.device)
        n = len(job.face_frames)
        out = np.empty((n, faces.resolution, faces.resolution, 3), np.uint8)
        with job.collecting():
            for s in range(0, n, int(chunk)):
                rows = list(range(s, min(n, s + int(chunk))))
                for row, crop in job.edited_crops(rows).items():
                    out[row] = crop
        return Crops(out), f"{n} face frames propagated with {propagator} from {len(job.keys)} keyframes"


class PasteBack:
    """The edited crops blended back into their frames (frames without a face pass through)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "faces": ("IPFD_FACES",),
                "crops": ("IPFD_CROPS",),
                "chunk": ("INT", {"default": 32, "min": 1, "max": 1024}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "paste"
    CATEGORY = CATEGORY

    def paste(self, images, faces, crops, chunk):
        frames = TensorFrames(images, faces.n)
        row_of = {f: r for r, f in enumerate(faces.face_frames)}
        result = torch.empty((faces.n, *images.shape[1:3], 3), dtype=torch.float32)
        for s, part in frames.iter_chunks(int(chunk)):
            done = part.copy()
            for j, f in enumerate(part):
                r = row_of.get(s + j)
                if r is not None:  # the frame is in hand: only its matrix is needed
                    m = faces.processor.align(f, faces.track[s + j], faces.resolution).matrix
                    done[j] = faces.processor.paste_back(f, crops.crops[r], m)
            result[s : s + len(part)] = to_image(done)
        return (result,)


def parse_frame_numbers(text: str) -> list[int]:
    """``"0, 48, 96"`` -> ``[0, 48, 96]`` (in the order given: the i-th edited image replaces the i-th)."""
    out = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if part:
            try:
                out.append(int(part))
            except ValueError:
                raise ValueError(
                    f"frames {text!r}: {part!r} is not a frame number (0-based, e.g. 0, 48, 96)"
                ) from None
    if not out:
        raise ValueError("frames: give the frame numbers the edited images replace (e.g. 0 or 0, 48, 96)")
    if len(set(out)) != len(out):
        raise ValueError(f"frames {text!r}: a frame number is given twice")
    return out


class PropagateKeyframes:
    """Carry frames edited by any node (an image-edit model, an inpainting workflow, a paint node)
    through the whole clip: the edited IMAGE (one frame or a batch) replaces the frames numbered in
    ``frames``, in order, and the edit follows the face's motion to every other frame. The same
    propagate job as ``ipfacediff propagate`` (face tracking, the face region, the pipeline's
    propagator, the self-check), on the IMAGE batch in memory."""

    @classmethod
    def INPUT_TYPES(cls):
        from ipfacediff.catalog import get_catalog

        catalog = get_catalog()
        pixel = [n for n in catalog.names("propagator") if catalog.get("propagator", n).cls.space == "pixels"]
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "the clip (an IMAGE batch)"}),
                "edited": ("IMAGE", {"tooltip": "the edited frame(s): full-size frames of the clip"}),
                "frames": (
                    "STRING",
                    {"default": "0", "tooltip": "the 0-based frame numbers the edited images replace: 0 or 0, 48, 96"},
                ),
                "propagator": (["default", *pixel], {"default": "default"}),
                "face_processor": (["default", "retinaface", "mtcnn", "full-frame"], {"default": "default"}),
                "max_frames": (
                    "INT",
                    {"default": 240, "min": 1, "max": 100000, "tooltip": "frames past the cap are dropped"},
                ),
            }
        }

    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("images", "summary", "self_check")
    FUNCTION = "propagate"
    CATEGORY = CATEGORY

    def propagate(self, images, edited, frames, propagator, face_processor, max_frames):
        """The clip with the edit carried, a summary, and the self-check: each edited frame predicted from
        the others (with two or more) and the frames where one more edited frame would help most."""
        from ipfacediff.jobs.propagate import PropagateJob, PropagateRequest, describe_self_check

        indices = parse_frame_numbers(frames)
        if edited.ndim == 3:
            edited = edited[None]
        if edited.shape[0] != len(indices):
            raise ValueError(
                f"{edited.shape[0]} edited image(s) for {len(indices)} frame number(s) ({frames}): give one number "
                "per edited image"
            )
        clip = TensorFrames(images, max_frames)
        shaped, resized = [], []
        for i, img in zip(indices, TensorFrames(edited).get(range(edited.shape[0]))):
            shaped.append(_to_frame_size(img, images.shape[2], images.shape[1], i, resized))
        req = PropagateRequest(
            input=None,
            keyframes=None,
            output=None,
            propagator=None if propagator == "default" else propagator,
            face_processor=None if face_processor == "default" else face_processor,
            show_progress=False,
            cache=False,
            frames=clip,
            keyframe_images=dict(zip(indices, shaped)),
        )
        result = torch.empty((len(clip), *images.shape[1:3], 3), dtype=torch.float32)

        def put(first: int, part: np.ndarray) -> None:
            result[first : first + len(part)] = to_image(part)

        with PropagateJob(req) as job, job.collecting():
            job.check()
            job.build()
            job.detect()
            job.carry(put)
            job.check_result()
        report = job.write_report()
        notes = [*(f"frame {i} resized to the clip's size" for i in resized), *report["warnings"]]
        cut = f"; cut at {len(clip)} of {images.shape[0]} frames (max_frames)" if len(clip) < images.shape[0] else ""
        summary = (
            f"{report['frames']} frames, keyframes {report['keyframes']} carried by {report['propagator']}"
            f"{cut}" + "".join(f"; {n}" for n in notes)
        )
        return result, summary, describe_self_check(report["self_check"])


def _to_frame_size(img: np.ndarray, w: int, h: int, index: int, resized: list[int]) -> np.ndarray:
    """An edited frame at the clip's size: as it is when it has that size, resized when only the
    resolution differs (image-edit models often work at their own resolution), refused when the
    shape differs (a crop would land in the wrong place)."""
    import cv2

    ih, iw = img.shape[:2]
    if (iw, ih) == (w, h):
        return img
    if abs(iw / ih - w / h) > 0.01:
        raise ValueError(
            f"edited frame {index}: {iw}x{ih} is not the shape of the clip's {w}x{h} frames (give the full frame, "
            "not a crop)"
        )
    resized.append(index)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if iw > w else cv2.INTER_CUBIC)


class LoadVideo:
    """Frames of a video file as an IMAGE batch (up to ``max_frames``), with its frame rate and its
    sound as ComfyUI's AUDIO (``{"waveform": [1, channels, samples], "sample_rate": rate}``, cut to
    the frames loaded; None for a silent clip), so a video-combine or Create Video node writes the
    result with sound. A relative path is looked up in ComfyUI's input folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "path": ("STRING", {"default": ""}),
                "max_frames": ("INT", {"default": 240, "min": 1, "max": 100000}),
            }
        }

    RETURN_TYPES = ("IMAGE", "FLOAT", "AUDIO")
    RETURN_NAMES = ("images", "fps", "audio")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, path, max_frames):
        from ipfacediff.runtime.sample import sample_clip_path
        from ipfacediff.runtime.video import open_frames, read_audio

        p = _input_path(path) if path else sample_clip_path()  # empty: the sample clip
        with open_frames(p) as src:
            n = min(len(src), int(max_frames))
            out = torch.empty((n, src.info.height, src.info.width, 3), dtype=torch.float32)
            for s, chunk in src.iter_chunks(src.batch, n):
                out[s : s + len(chunk)] = to_image(chunk)
            fps = float(src.info.fps or 24.0)
        sound = read_audio(p, n / fps) if src.info.kind == "video" else None
        audio = None
        if sound is not None:
            audio = {"waveform": torch.from_numpy(sound[0])[None], "sample_rate": sound[1]}
        return out, fps, audio


def _input_path(path: str):
    """A typed path as it is; a relative one that is not there, from ComfyUI's input folder."""
    from pathlib import Path

    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    try:
        import folder_paths  # ComfyUI's, when the pack runs inside it

        return Path(folder_paths.get_input_directory()) / p
    except ImportError:
        return p


NODE_CLASS_MAPPINGS = {
    "IPFaceDiffLoadVideo": LoadVideo,
    "IPFaceDiffLoadBackbone": LoadBackbone,
    "IPFaceDiffDetectAlignFaces": DetectAlignFaces,
    "IPFaceDiffPickKeyframes": PickKeyframes,
    "IPFaceDiffEditKeyframes": EditKeyframes,
    "IPFaceDiffPropagate": Propagate,
    "IPFaceDiffPasteBack": PasteBack,
    "IPFaceDiffPropagateKeyframes": PropagateKeyframes,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "IPFaceDiffLoadVideo": "IP-FaceDiff Load Video",
    "IPFaceDiffLoadBackbone": "IP-FaceDiff Load Backbone + Adapters",
    "IPFaceDiffDetectAlignFaces": "IP-FaceDiff Detect & Align Faces",
    "IPFaceDiffPickKeyframes": "IP-FaceDiff Pick Keyframes",
    "IPFaceDiffEditKeyframes": "IP-FaceDiff Edit Keyframes (identity injection)",
    "IPFaceDiffPropagate": "IP-FaceDiff Propagate",
    "IPFaceDiffPasteBack": "IP-FaceDiff Paste Back",
    "IPFaceDiffPropagateKeyframes": "IP-FaceDiff Propagate Keyframes (any edit)",
}
