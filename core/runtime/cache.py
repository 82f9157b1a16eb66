"""The on-disk cache: finished stages of an edit, and the tools that list, bound and clear it.

Layout under :func:`ipfacediff.runtime.models.cache_dir` (``~/.cache/ipfacediff`` or ``$IPFACEDIFF_CACHE``),
one folder per category, one entry (a file or a folder) per key::

    tracks/<key>.npz          detected + smoothed faces of a clip (per face processor and settings)
    latents/<key>/            aligned-crop latents (a memory-mapped .npy) and alignment matrices
    inversions/<key>.pt       DDIM inversion trajectories (the ``ddim`` inverter)
    keyframe-edits/<key>.pt   edited keyframe latents (per keyframe group, prompt, editor, seed)
    finetune-data/<key>.npz   faces prepared for fine-tuning
    models/ samples/ tokenizers/ configs/   downloads and generated files (never evicted)

Every entry is written under a temporary name and renamed into place when complete, so an
interrupted run or two runs at once never leave (or read) a half-written entry: a rerun of an
interrupted edit finds the stages that finished and starts after them. Entries are evicted oldest
first (by last use) when the evictable categories together exceed the limit
(``--cache-limit`` / ``$IPFACEDIFF_CACHE_LIMIT``, default 20 GB).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ipfacediff.errors import ParameterError
from ipfacediff.runtime.files import atomic_path
from ipfacediff.runtime.models import cache_dir

LIMIT_ENV = "IPFACEDIFF_CACHE_LIMIT"
DEFAULT_LIMIT = "20GB"
CATEGORIES: dict[str, str] = {
    "tracks": "detected and smoothed faces per clip",
    "latents": "aligned-crop latents and alignment matrices per clip",
    "inversions": "DDIM inversion trajectories",
    "keyframe-edits": "edited keyframe latents",
    "finetune-data": "faces prepared for fine-tuning",
    "models": "downloaded model weights (checked by sha256)",
    "samples": "the generated sample clip",
    "tokenizers": "CLIP tokenizer files",
    "configs": "Stable Diffusion configs for single-file checkpoints",
}
EVICTABLE = ("tracks", "latents", "inversions", "keyframe-edits", "finetune-data")
_UNITS = {
    "": 1,
    "B": 1,
    "K": 2**10,
    "KB": 2**10,
    "M": 2**20,
    "MB": 2**20,
    "G": 2**30,
    "GB": 2**30,
    "T": 2**40,
    "TB": 2**40,
}


def parse_size(text: str) -> int:
    """``"20GB"``, ``"500 MB"``, ``"1.5G"``, ``"0"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ParameterError(f"cache limit {text!r}: give a size such as 20GB, 500MB or 0")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def cache_limit() -> int:
    return parse_size(os.environ.get(LIMIT_ENV) or DEFAULT_LIMIT)


def stage_key(**parts: Any) -> str:
    """A stable key from JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def input_fingerprint(path: Path) -> dict[str, Any]:
    """What identifies an input without reading it all: resolved path, size and mtime of the file
    (or of every file of a folder)."""
    p = Path(path).resolve()
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": str(p), "files": h.hexdigest()[:32]}


def hash_tensor(x) -> str:
    """sha256 of a tensor's float32 values (cache keys)."""
    import torch

    return hashlib.sha256(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


PRIVATE_PREFIX = "ipfacediff-run-"
PRIVATE_LOCK = ".held"  # a private folder's lock file, locked while its process lives
PRIVATE_GRACE = 60.0  # s: a lock file younger than this may not be locked yet (its folder is being made)


def _hold(folder: Path):
    """A lock on ``folder``'s lock file, held until the returned file is closed or the process ends (however
    it ends: the system drops the lock of a killed process). None where the system has no such locks."""
    try:
        import fcntl
    except ImportError:  # Windows: no sweep of folders left by killed runs
        return None
    fh = open(folder / PRIVATE_LOCK, "w")  # noqa: SIM115 - held for the folder's life
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: no lock file, so no sweep ever takes this folder
        fh.close()
        (folder / PRIVATE_LOCK).unlink(missing_ok=True)
        return None
    return fh


def sweep_private_folders(parent: Path | None = None) -> list[Path]:
    """Remove the private stage folders (``ipfacediff-run-*`` in the temporary directory) whose process is
    gone: their lock is free, and older than ``PRIVATE_GRACE``. A run removes its own when it ends; this
    takes those of runs that were killed (SIGKILL, a power cut) and could not. Returns what it removed."""
    try:
        import fcntl
    except ImportError:
        return []
    removed = []
    for folder in Path(parent or tempfile.gettempdir()).glob(PRIVATE_PREFIX + "*"):
        lock = folder / PRIVATE_LOCK
        try:
            if time.time() - lock.stat().st_mtime < PRIVATE_GRACE:
                continue
            with open(lock, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its run holds it
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # no lock file (not ours, or an older version's), held, or gone meanwhile
            continue
        removed.append(folder)
    return removed


def _release(fh, folder: str) -> None:
    if fh is not None:
        fh.close()
    shutil.rmtree(folder, ignore_errors=True)


class StageCache:
    """Finished stages of one run. ``enabled=False``: nothing is read or kept (entries go to a
    private temporary folder removed by :meth:`close`, or when the cache is garbage-collected or the
    process exits: a job an integration keeps open, or never closes, leaves nothing behind). The folder
    is locked while the process lives; making one also removes those of killed runs
    (:func:`sweep_private_folders`)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.used: set[Path] = set()
        self._remove = None
        if enabled:
            self.root = cache_dir()
            return
        self.root = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX))
        self._remove = weakref.finalize(self, _release, _hold(self.root), str(self.root))
        sweep_private_folders(self.root.parent)

    def path(self, category: str, key: str, suffix: str = "") -> Path:
        return self.root / category / f"{key}{suffix}"

    def _hit(self, path: Path) -> Path | None:
        if self.enabled and path.exists():
            _touch(path)
            self.used.add(path)
            return path
        return None

    # -- small files: npz / torch ------------------------------------------------------------
    def load_npz(self, category: str, key: str) -> dict[str, np.ndarray] | None:
        p = self._hit(self.path(category, key, ".npz"))
        if p is None:
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):  # a damaged entry is recomputed
            p.unlink(missing_ok=True)
            return None

    def save_npz(self, category: str, key: str, **arrays: np.ndarray) -> None:
        target = self.path(category, key, ".npz")
        with self._atomic_file(target) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    def load_tensor(self, category: str, key: str):
        import torch

        p = self._hit(self.path(category, key, ".pt"))
        if p is None:
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed
            p.unlink(missing_ok=True)
            return None

    def save_tensor(self, category: str, key: str, value) -> None:
        import torch

        with self._atomic_file(self.path(category, key, ".pt")) as tmp:
            torch.save(value, tmp)

    # -- folders (latents) ----------------------------------------------------------------------
    def find_dir(self, category: str, key: str, required: tuple[str, ...]) -> Path | None:
        p = self.path(category, key)
        if self.enabled and p.is_dir() and all((p / r).is_file() for r in required):
            return self._hit(p)
        return None

    def new_dir(self, category: str, key: str) -> Path:
        """A private folder to fill; :meth:`commit_dir` renames it into place."""
        parent = self.root / category
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent, prefix=f".{key}.", suffix=".part"))

    def commit_dir(self, tmp: Path, category: str, key: str) -> Path:
        final = self.path(category, key)
        try:
            os.rename(tmp, final)  # atomic; fails when another run committed the same entry first
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # theirs is identical (same key): use it
        self.used.add(final)
        return final

    @contextlib.contextmanager
    def _atomic_file(self, target: Path) -> Iterator[Path]:
        with atomic_path(target) as tmp:
            yield tmp
        self.used.add(target)

    def close(self) -> None:
        if self._remove is not None:
            self._remove()  # once: the folder is removed, the finalizer detached


@dataclass
class Entry:
    category: str
    path: Path
    bytes: int
    last_used: float


def entries(root: Path | None = None, categories: tuple[str, ...] | None = None) -> Iterator[Entry]:
    """Every complete entry (temporary ``.part`` files of running or killed runs are left out)."""
    root = root or cache_dir()
    for cat in categories or tuple(CATEGORIES):
        folder = root / cat
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith("."):
                continue
            try:
                yield Entry(cat, p, _size(p), p.stat().st_mtime)
            except FileNotFoundError:  # removed by another run meanwhile
                continue


def usage(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Per category: entries, bytes, oldest and newest last use (epoch seconds)."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries(root):
        u = out.setdefault(
            e.category,
            {
                "entries": 0,
                "bytes": 0,
                "oldest": e.last_used,
                "newest": e.last_used,
                "evictable": e.category in EVICTABLE,
                "description": CATEGORIES[e.category],
            },
        )
        u["entries"] += 1
        u["bytes"] += e.bytes
        u["oldest"], u["newest"] = min(u["oldest"], e.last_used), max(u["newest"], e.last_used)
    return out


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prune(
    limit: int | None = None, protect: set[Path] | frozenset = frozenset(), root: Path | None = None
) -> dict[str, Any]:
    """Evict the least recently used evictable entries until they total at most ``limit`` bytes
    (entries in ``protect``, e.g. the current run's, are kept). Returns what it did."""
    limit = cache_limit() if limit is None else limit
    items = sorted(entries(root, EVICTABLE), key=lambda e: e.last_used)
    total = sum(e.bytes for e in items)
    evicted, freed = 0, 0
    for e in items:
        if total <= limit:
            break
        if e.path in protect:
            continue
        _remove(e.path)
        total -= e.bytes
        freed += e.bytes
        evicted += 1
    return {"bytes": total, "limit": limit, "evicted": evicted, "freed": freed}


def clear(
    categories: tuple[str, ...], older_than_days: float | None = None, root: Path | None = None
) -> dict[str, Any]:
    """Remove the entries of ``categories`` (only those unused for ``older_than_days``), and
    temporary files of killed runs older than a day."""
    root = root or cache_dir()
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ParameterError(f"cache category {unknown[0]!r} does not exist (categories: {', '.join(CATEGORIES)})")
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    removed, freed = 0, 0
    for e in list(entries(root, categories)):
        if cutoff is None or e.last_used < cutoff:
            _remove(e.path)
            removed += 1
            freed += e.bytes
    for cat in categories:
        folder = root / cat
        for p in folder.glob(".*.part") if folder.is_dir() else []:
            if p.stat().st_mtime < time.time() - 86400:
                _remove(p)
    return {"removed": removed, "freed": freed}


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
