"""The model resolver: one place that finds a named weight file.

Order: an explicit path > ``$IPFACEDIFF_MODELS/<relpath>`` (a folder laid out like
``../shared/models``) > the user cache (``~/.cache/ipfacediff/models/<relpath>``, or
``$IPFACEDIFF_CACHE``) > a download from the upstream location into the cache (only when online;
``IPFACEDIFF_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` forbid it). Every file is checked against its
sha256 before use. Stable Diffusion checkpoints are resolved by :func:`resolve_sd_checkpoint`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ipfacediff.errors import InputError, ModelChecksumError, ModelNotFoundError

MODELS_ENV = "IPFACEDIFF_MODELS"
CACHE_ENV = "IPFACEDIFF_CACHE"


@dataclass(frozen=True)
class ModelFile:
    name: str
    relpath: str
    sha256: str
    url: str
    description: str
    licence: str
    package_file: str = ""  # "package:relative/path": a file an installed package ships (e.g. a wheel of weights)


MODEL_FILES: dict[str, ModelFile] = {
    m.name: m
    for m in [
        ModelFile(
            "taesd-encoder",
            "taesd/taesd_encoder.safetensors",
            "a6b8c0fda4aad50784e543389e0239c72c5e31e9775c9e612ea8333bf3a77dcb",
            "https://github.com/madebyollin/taesd/raw/main/taesd_encoder.safetensors",
            "TAESD encoder (Stable Diffusion 1.x/2.x latent space)",
            "MIT",
        ),
        ModelFile(
            "taesd-decoder",
            "taesd/taesd_decoder.safetensors",
            "d903e7cc3ae58f21d985a3498a841fa8b230edccff7ac5d27607b0c557945c6f",
            "https://github.com/madebyollin/taesd/raw/main/taesd_decoder.safetensors",
            "TAESD decoder (Stable Diffusion 1.x/2.x latent space)",
            "MIT",
        ),
        ModelFile(
            "mobilefacenet",
            "mobilefacenet/mobilefacenet.pt",
            "90a00ba1d8b0b688af3deb731ed53dca582e6106805d1bc3cfdef55f570493f4",
            "https://github.com/foamliu/MobileFaceNet/raw/master/weights/mobilefacenet.pt",
            "MobileFaceNet identity network (ArcFace loss, 128-d)",
            "Apache-2.0",
        ),
        ModelFile(
            "retinaface",
            "retinaface/mobilenet0.25_Final.pth",
            "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
            "https://github.com/foamliu/MobileFaceNet/raw/master/retinaface/weights/mobilenet0.25_Final.pth",
            "RetinaFace MobileNet-0.25 face detector (boxes + 5 landmarks)",
            "MIT",
        ),
        ModelFile(
            "facemesh",
            "facemesh/facemesh.pth",
            "a8395f8a89b15cabdd2e97df1c66280de4697a5484ebe03936c2e36e90a0a25a",
            "https://github.com/thepowerfuldeez/facemesh.pytorch/raw/master/facemesh.pth",
            "MediaPipe FaceMesh (468 landmarks) ported to PyTorch",
            "Apache-2.0",
        ),
        ModelFile(
            "dlib-resnet",
            "dlib/dlib_face_recognition_resnet_model_v1.dat",
            "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
            "https://github.com/ageitgey/face_recognition_models/raw/master/face_recognition_models/models/"
            "dlib_face_recognition_resnet_model_v1.dat",
            "dlib ResNet face recognition model (128-d; pip package face-recognition-models)",
            "CC0-1.0",
            "face_recognition_models:models/dlib_face_recognition_resnet_model_v1.dat",
        ),
        ModelFile(
            "dlib-5-landmarks",
            "dlib/shape_predictor_5_face_landmarks.dat",
            "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
            "https://github.com/ageitgey/face_recognition_models/raw/master/face_recognition_models/models/"
            "shape_predictor_5_face_landmarks.dat",
            "dlib 5-point face landmarks (alignment of dlib-resnet; pip package face-recognition-models)",
            "CC0-1.0",
            "face_recognition_models:models/shape_predictor_5_face_landmarks.dat",
        ),
        ModelFile(
            "dlib-68-landmarks",
            "dlib/shape_predictor_68_face_landmarks.dat",
            "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
            "https://github.com/ageitgey/face_recognition_models/raw/master/face_recognition_models/models/"
            "shape_predictor_68_face_landmarks.dat",
            "dlib 68-point face landmarks (the independent ground truth of bench --ground-truth; pip package "
            "face-recognition-models)",
            "CC0-1.0 (weights); trained on iBUG 300-W, whose licence excludes commercial use",
            "face_recognition_models:models/shape_predictor_68_face_landmarks.dat",
        ),
    ]
}

_VERIFIED: dict[tuple[str, int, int], str] = {}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ipfacediff")


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("IPFACEDIFF_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_of(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


def _how_to_get(m: ModelFile) -> str:
    return (
        f"download {m.url} (sha256 {m.sha256[:12]}...) to {cache_dir() / 'models' / m.relpath}, "
        f"or set {MODELS_ENV} to a folder holding {m.relpath}"
    )


def _check(m: ModelFile, path: Path) -> Path:
    digest = sha256_of(path)
    if digest != m.sha256:
        raise ModelChecksumError(
            f"{path} is not the expected {m.name} weights (sha256 {digest[:12]}..., expected {m.sha256[:12]}...; "
            f"truncated or a different file): {_how_to_get(m)}"
        )
    return path


def candidates(name: str) -> list[Path]:
    """Where :func:`resolve` looks for ``name``, in order (explicit path excluded)."""
    m = MODEL_FILES[name]
    out = []
    if os.environ.get(MODELS_ENV):
        out.append(Path(os.environ[MODELS_ENV]) / m.relpath)
    out.append(cache_dir() / "models" / m.relpath)
    if m.package_file:  # found without importing the package (face_recognition_models imports pkg_resources)
        import importlib.util

        package, rel = m.package_file.split(":", 1)
        spec = importlib.util.find_spec(package)
        for root in (spec.submodule_search_locations or []) if spec is not None else []:
            out.append(Path(root) / rel)
    return out


def find(name: str) -> Path | None:
    """The first existing candidate of ``name`` (not checksum-verified), or ``None``."""
    for c in candidates(name):
        if c.is_file():
            return c
    return None


def resolve(name: str, path: str | Path | None = None) -> Path:
    """The verified local path of the weight file ``name`` (a key of :data:`MODEL_FILES`)."""
    if name not in MODEL_FILES:
        raise ModelNotFoundError(f"unknown model file {name!r}; known: {', '.join(MODEL_FILES)}")
    m = MODEL_FILES[name]
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelNotFoundError(f"{m.name} weights: {p} does not exist; {_how_to_get(m)}")
        return _check(m, p)
    looked = candidates(name)
    for c in looked:
        if c.is_file():
            return _check(m, c)
    target = cache_dir() / "models" / m.relpath
    if offline():
        raise ModelNotFoundError(
            f"{m.name} weights ({m.relpath}) not found in {', '.join(str(c) for c in looked)} and downloads are off "
            f"(offline); {_how_to_get(m)}"
        )
    return _download(m, target, looked)


def _download(m: ModelFile, target: Path, looked: list[Path]) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(m.url, timeout=30) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
        _check(m, Path(tmp))
        os.replace(tmp, target)
    except ModelChecksumError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ModelNotFoundError(
            f"{m.name} weights ({m.relpath}) not found in {', '.join(str(c) for c in looked)} and the download from "
            f"{m.url} failed ({exc}); {_how_to_get(m)}"
        ) from exc
    return target


def status() -> list[dict[str, object]]:
    """For ``doctor``: each model file, where it was found, whether its checksum matches."""
    rows = []
    for m in MODEL_FILES.values():
        p = find(m.name)
        ok = None
        if p is not None:
            ok = sha256_of(p) == m.sha256
        rows.append(
            {
                "name": m.name,
                "file": m.relpath,
                "found": str(p) if p else None,
                "sha256_ok": ok,
                "description": m.description,
                "package": m.package_file.split(":")[0] or None,  # also found in this installed package
                "how_to_get": None if ok else _how_to_get(m),
            }
        )
    return rows


def resolve_sd_checkpoint(ref: str | Path) -> tuple[str, Path | str]:
    """Classify a Stable Diffusion reference: ``("folder", path)`` for a diffusers folder,
    ``("single_file", path)`` for a .safetensors/.ckpt file, ``("hub", local_snapshot)`` for a hub
    id already in the local Hugging Face cache. Never downloads."""
    p = Path(str(ref)).expanduser()
    if p.is_dir():
        if not (p / "model_index.json").is_file() and not (p / "unet").is_dir():
            raise InputError(f"{p} is a folder but not a diffusers checkpoint (no model_index.json or unet/)")
        return "folder", p
    if p.is_file():
        if p.suffix not in (".safetensors", ".ckpt"):
            raise InputError(f"{p}: a single-file checkpoint must be .safetensors or .ckpt")
        return "single_file", p
    ref = str(ref)
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(ref, local_files_only=True)
            return "hub", Path(local)
        except Exception as exc:  # noqa: BLE001 - any failure means: not cached
            raise ModelNotFoundError(
                f"Stable Diffusion {ref!r} is not in the local Hugging Face cache and ipfacediff never downloads at "
                "run "
                f"time; run `huggingface-cli download {ref}` once online, or pass a local folder or .safetensors file"
            ) from exc
    raise ModelNotFoundError(
        f"Stable Diffusion checkpoint {ref!r}: no such folder or file, and not a hub id (owner/name)"
    )


ARCFACE_ENV = "IPFACEDIFF_ARCFACE"
ARCFACE_PLACES = ("~/.insightface/models/buffalo_l/w600k_r50.onnx", "~/.insightface/models/antelopev2/glintr100.onnx")


def find_arcface() -> Path | None:
    """The insightface ArcFace recognition model the user has configured: ``$IPFACEDIFF_ARCFACE`` (a
    ``.onnx`` path), else insightface's own model folder (buffalo_l's R50, antelopev2's R100); ``None``
    when there is none. Never downloaded (insightface's packs have their own licence terms)."""
    env = os.environ.get(ARCFACE_ENV)
    for place in ([env] if env else []) + list(ARCFACE_PLACES):
        p = Path(place).expanduser()
        if p.is_file():
            return p
    return None
