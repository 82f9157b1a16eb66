"""Video and image I/O.

Reading: :func:`open_frames` opens a video file (decoded with decord, frame access by index and in
batches), a folder of images or a single image, and streams frames in chunks: nothing holds the
whole clip in memory. Writing: :class:`VideoWriter` encodes with PyAV (H.264 in MP4 by default) at
the input's fps and size, copies the input's audio stream through, and writes to a temporary name
that is renamed to the final one only when the file is complete. Rotated clips (a display-rotation
flag, as phones record) are read upright; variable-frame-rate clips keep each frame's time when
written back (``VideoInfo.timestamps``).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ipfacediff.errors import InputError, OutputExistsError
from ipfacediff.runtime.messages import first_line

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
ENCODE_QUEUE = 16  # frames a video writer holds while its encoder thread catches up
FORWARD_KEEP = 8  # frames a video source keeps behind its forward decoder at least (an interval's first frame)
FORWARD_KEEP_MAX = 48  # and at most: a run of propagated frames read after the keyframe past it (CARRY_RUN + 16)
FORWARD_KEEP_BYTES = 192 << 20  # between the two, as many as fit in this (48 at 720p, 32 at 1080p, 8 at 4K)
FORWARD_SKIP = 64  # frames a forward read may skip to reach what it is asked for (further: decord seeks)


@dataclass
class VideoInfo:
    """What an input is: ``kind`` is ``video``, ``images`` (a folder) or ``image``."""

    path: str
    kind: str
    n_frames: int
    fps: float
    width: int
    height: int
    has_audio: bool
    fps_fraction: Fraction = Fraction(25)
    rotation: int = 0  # the display rotation of the file (frames are read upright, ``width``/``height`` as displayed)
    variable_frame_rate: bool = False
    timestamps: list[int] | None = None  # variable frame rate: presentation time of each frame, in ``time_base``
    time_base: Fraction | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["fps_fraction"] = str(self.fps_fraction)
        d["time_base"] = str(self.time_base) if self.time_base is not None else None
        d.pop("timestamps")
        return d


class FrameSource:
    """Random and chunked access to the RGB ``uint8 [H, W, 3]`` frames of an input."""

    info: VideoInfo

    def __len__(self) -> int:
        return self.info.n_frames

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` as ``uint8 [B, H, W, 3]``."""
        raise NotImplementedError

    @property
    def batch(self) -> int:
        """Frames per read that keep a read batch near 256 MB (16 at HD, 2 at 8K)."""
        return max(1, min(16, (256 << 20) // max(1, self.info.width * self.info.height * 3)))

    def iter_chunks(self, chunk_size: int = 16, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_index, frames[B, H, W, 3])`` over the first ``max_frames`` frames."""
        n = len(self) if max_frames is None else min(len(self), max_frames)
        for start in range(0, n, chunk_size):
            yield start, self.get(list(range(start, min(n, start + chunk_size))))

    def close(self) -> None:
        pass

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DecordSource(FrameSource):
    """A video file's frames. Reads that move forward through the clip (the detection pass, the
    propagation's keyframe intervals) are decoded one frame after another by PyAV, holding nothing
    ahead of what was asked for plus the last frames decoded (``FORWARD_KEEP_BYTES``); any other read
    seeks with decord. decord alone would do, but after a read it goes on decoding the rest of the clip
    in the background and keeps every frame (dmlc/decord#197, #157): memory then grows with the clip's
    length, not with the batch.
    The forward path is checked once against decord's frame and left for decord's where they differ."""

    def __init__(self, path: Path, info: VideoInfo):
        import decord

        self.info = info
        self._path = path
        try:
            self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=2)
        except Exception as exc:  # decord raises DECORDError / RuntimeError
            raise InputError(f"{path}: cannot decode the video ({first_line(exc)})") from exc
        n = len(self._vr)
        if n == 0:
            raise InputError(f"{path}: the video has no frames")
        self.info.n_frames = n
        self._forward: _ForwardDecoder | None = None
        self._forward_ok: bool | None = None if info.rotation == 0 else False  # None: not checked yet
        self._recent: dict[int, np.ndarray] = {}  # the last frames decoded forward, by index
        # how many: propagate reads a run of frames with the keyframe after it, then the next run, which
        # the decoder has passed; a frame dropped from here is decoded again from the clip's start
        frame_bytes = max(1, info.width * info.height * 3)
        self._keep = max(FORWARD_KEEP, min(FORWARD_KEEP_MAX, FORWARD_KEEP_BYTES // frame_bytes))

    def _decord(self, indices: list[int]) -> np.ndarray:
        try:
            frames = self._vr.get_batch(indices).asnumpy()
        except Exception as exc:
            raise InputError(
                f"{self.info.path}: cannot decode frames {indices[0]}..{indices[-1]} ({first_line(exc)})"
            ) from exc
        self._vr.seek(0)  # stops decord decoding (and keeping) the rest of the clip in the background
        return frames

    def _ahead(self, i: int) -> bool:
        """Frame ``i`` is kept, a short way forward of the forward decoder, or near the clip's start
        (the decoder starts again from there)."""
        if i in self._recent or i <= FORWARD_SKIP:
            return True
        pos = self._forward.pos if self._forward is not None else 0
        return pos <= i <= pos + FORWARD_SKIP

    def _dense(self, idx: list[int]) -> bool:
        """The forward decoder can give ``idx`` without starting again from the clip's start, or they
        fill half their span or more: a few frames far apart behind it (the self-check's keyframes)
        are cheaper by decord's seek, which does not convert the frames it passes over to RGB."""
        if self._forward is None or idx[0] in self._recent or idx[0] >= self._forward.pos:
            return True
        return 2 * len(idx) >= idx[-1] - idx[0] + 1

    def get(self, indices: Sequence[int]) -> np.ndarray:
        idx = [int(i) for i in indices]
        if self._forward_ok is not False and idx and all(0 <= i < len(self) for i in idx):
            if all(b > a for a, b in zip(idx, idx[1:])) and all(self._ahead(i) for i in idx) and self._dense(idx):
                frames = self._read_forward(idx)
                if frames is not None:
                    return frames
        return self._decord(idx)

    def _read_forward(self, idx: list[int]) -> np.ndarray | None:
        if self._forward is None:
            try:
                self._forward = _ForwardDecoder(self._path)
            except Exception:  # noqa: BLE001 - decord reads what PyAV cannot open
                self._forward_ok = False
                return None
        if idx[0] not in self._recent and idx[0] < self._forward.pos:  # back near the start: decode again
            self._forward.close()
            self._forward, self._recent = _ForwardDecoder(self._path), {}
        out = []
        try:
            for i in idx:
                while i not in self._recent:
                    pos = self._forward.pos
                    self._recent[pos] = self._forward.next()
                    for old in [k for k in self._recent if k < pos - self._keep]:
                        del self._recent[old]
                out.append(self._recent[i])
        except Exception:  # noqa: BLE001 - a frame PyAV cannot give: decord's path from here on
            self._forward_ok, self._forward, self._recent = False, None, {}
            return None
        if self._forward_ok is None:  # once: the forward path gives decord's frames
            self._forward_ok = bool(np.array_equal(out[0], self._decord([idx[0]])[0]))
            if not self._forward_ok:
                self._forward, self._recent = None, {}
                return None
        return np.stack(out)

    def close(self) -> None:
        self._vr = None
        if self._forward is not None:
            self._forward.close()
            self._forward = None
        self._recent = {}


class _ForwardDecoder:
    """A video decoded frame after frame with PyAV from its first frame (``pos``: the next frame's index)."""

    def __init__(self, path: Path):
        import av

        self._container = av.open(str(path))
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._frames = self._container.decode(stream)
        self.pos = 0

    def next(self) -> np.ndarray:
        frame = next(self._frames).to_ndarray(format="rgb24")
        self.pos += 1
        return frame

    def close(self) -> None:
        self._container.close()


class _ImageSource(FrameSource):
    def __init__(self, files: list[Path], info: VideoInfo):
        self.files = files
        self.info = info

    def get(self, indices: Sequence[int]) -> np.ndarray:
        frames = [read_image(self.files[i]) for i in indices]
        h, w = frames[0].shape[:2]
        for i, f in zip(indices, frames):
            if f.shape[:2] != (h, w):
                raise InputError(
                    f"{self.files[i]}: size {f.shape[1]}x{f.shape[0]} differs from {w}x{h}; all frames of a folder "
                    "must have one size"
                )
        return np.stack(frames)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB ``uint8 [H, W, 3]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a readable image ({first_line(exc)})") from exc


_PROBED: dict[tuple[str, int, int], VideoInfo] = {}


def probe(path: str | Path) -> VideoInfo:
    """Inspect ``path`` (reads the packet index, decodes one frame for its rotation); raises
    :class:`InputError` for anything unusable. A video file is probed once per size and mtime."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() not in IMAGE_EXTS:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _PROBED:
            _PROBED[key] = _probe(p)
        return dataclasses.replace(_PROBED[key], path=str(p))
    return _probe(p)


def _probe(p: Path) -> VideoInfo:
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        if not files:
            raise InputError(f"{p}: the folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        first = read_image(files[0])
        return VideoInfo(str(p), "images", len(files), 25.0, first.shape[1], first.shape[0], False)
    if not p.is_file():
        raise InputError(f"{p}: not a regular file (a video, an image or a folder of images is needed)")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty")
    if p.suffix.lower() in IMAGE_EXTS:
        img = read_image(p)
        return VideoInfo(str(p), "image", 1, 25.0, img.shape[1], img.shape[0], False)
    import av

    try:
        with av.open(str(p)) as container:
            vstreams = container.streams.video
            if not vstreams:
                raise InputError(f"{p}: the file has no video stream")
            vs = vstreams[0]
            rate = vs.average_rate or vs.guessed_rate or Fraction(25)
            n = vs.frames or 0
            if n == 0 and vs.duration and vs.time_base:
                n = int(round(float(vs.duration * vs.time_base * rate)))
            ctx = vs.codec_context  # None where the header is cut short inside the stream's description
            if ctx is None or not ctx.width or not ctx.height:
                raise InputError(f"{p}: the video stream has no frame size (a damaged or cut-short video)")
            width, height = ctx.width, ctx.height
            pts = sorted(pkt.pts for pkt in container.demux(vs) if pkt.pts is not None and pkt.size)  # no decoding
            steps = np.diff(pts) if len(pts) > 2 else np.zeros(1)
            vfr = bool(steps.size and steps.max() - steps.min() > max(1, 0.02 * float(np.median(steps))))
            container.seek(0)
            rotation = 0
            for frame in container.decode(vs):  # the display matrix is side data of the decoded frames
                rotation = int(round(frame.rotation or 0)) % 360
                break
            if rotation in (90, 270):
                width, height = height, width  # decord returns frames upright (rotated as displayed)
            return VideoInfo(
                str(p),
                "video",
                n,
                float(rate),
                width,
                height,
                bool(container.streams.audio),
                Fraction(rate).limit_denominator(100000),
                rotation,
                vfr,
                [int(t) for t in pts] if vfr else None,
                vs.time_base,
            )
    except InputError:
        raise
    except av.error.EOFError as exc:
        raise InputError(
            f"{p}: no video frames could be read (the file ends before its first frame: an empty or cut-short video)"
        ) from exc
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"{p}: not a readable video or image ({first_line(exc)})") from exc


def check_size(info: VideoInfo, max_side: int) -> None:
    """Refuse frames larger than ``max_side`` on their longest side (memory per frame), naming the limit."""
    if max(info.width, info.height) > max_side:
        raise InputError(
            f"{info.path}: frames are {info.width}x{info.height}, larger than the {max_side} px limit on the longest "
            "side "
            f"(--set settings.max_input_side=N raises it; or downscale first, e.g. ffmpeg -i IN -vf scale=-2:2160 OUT)"
        )


def open_frames(path: str | Path) -> FrameSource:
    """Open a video file, a folder of images or an image for frame access."""
    info = probe(path)
    p = Path(path)
    if info.kind == "images":
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        return _ImageSource(files, info)
    if info.kind == "image":
        return _ImageSource([p], info)
    return _DecordSource(p, info)


def is_sequence_output(path: str | Path) -> bool:
    """An output written as numbered PNG frames: a path ending with ``/`` or an existing folder."""
    return str(path).endswith(("/", os.sep)) or Path(path).is_dir()


def check_output(path: str | Path, overwrite: bool, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse to write over an input, or over an existing output without ``overwrite`` (an empty
    folder for an image sequence is not in the way)."""
    out = Path(path)
    for i in inputs:
        if (
            Path(i).exists()
            and out.exists()
            and (os.path.samefile(out, i) or (out.is_dir() and Path(i).resolve().is_relative_to(out.resolve())))
        ):
            raise OutputExistsError(f"{out}: the output would overwrite the input; choose another -o")
    if out.is_dir() and not any(out.iterdir()):
        return out
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


class _Writer:
    """What both writers share: the frame check, and ``with`` (closed on success, aborted on error)."""

    width: int
    height: int

    def _frames(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 [*, {self.height}, {self.width}, 3], got {frames.dtype} {list(frames.shape)}"
            )
        return frames

    def close(self) -> Path: ...

    def abort(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class VideoWriter(_Writer):
    """Encode frames to ``path`` (MP4/H.264 by default), atomically.

    Frames go to a temporary file beside ``path``; :meth:`close` copies the audio of ``audio_from``
    (if any) and renames the result to ``path``. If the ``with`` block raises, the temporary file is
    removed and nothing appears under ``path``.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | Fraction,
        width: int,
        height: int,
        audio_from: str | Path | None = None,
        codec: str = "libx264",
        crf: int = 17,
        preset: str = "veryfast",
        overwrite: bool = False,
        timestamps: list[int] | None = None,
        time_base: Fraction | None = None,
    ):
        import av

        self.path = check_output(path, overwrite, [audio_from] if audio_from else [])
        self.audio_from = Path(audio_from) if audio_from else None
        self.width, self.height = int(width), int(height)
        self.rate = Fraction(fps).limit_denominator(100000)
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=".video" + (self.path.suffix or ".mp4")
        )
        os.close(fd)
        self._tmp = Path(tmp)
        self._container = av.open(
            str(self._tmp), mode="w", format="mp4" if self.path.suffix.lower() in (".mp4", "") else None
        )
        self._stream = self._container.add_stream(codec, rate=self.rate)
        self._stream.width, self._stream.height = self.width, self.height
        even = self.width % 2 == 0 and self.height % 2 == 0
        self._stream.pix_fmt = "yuv420p" if even else "yuv444p"
        if codec == "libx264":
            self._stream.options = {"crf": str(crf), "preset": preset}
        self._stream.codec_context.time_base = Fraction(1) / self.rate
        # variable frame rate: each frame keeps its input presentation time
        self.timestamps = [t - timestamps[0] for t in timestamps] if timestamps else None
        if self.timestamps is not None:
            self._stream.time_base = self._stream.codec_context.time_base = time_base
        self.n_written = 0
        self._closed = False
        # frames are encoded on a thread of their own (the encoder releases the GIL), so that encoding
        # overlaps the work that makes the next frames; the queue bounds what waits (memory stays flat)
        self._queue: queue.Queue = queue.Queue(maxsize=ENCODE_QUEUE)
        self._failed: BaseException | None = None
        self._encoder = threading.Thread(target=self._encode_loop, name="ipfacediff-encode", daemon=True)
        self._encoder.start()

    def _encode_loop(self) -> None:
        import av

        try:
            while (item := self._queue.get()) is not None:
                frame, pts = item
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
                vf.pts = pts
                vf.time_base = self._stream.codec_context.time_base
                for pkt in self._stream.encode(vf):
                    self._container.mux(pkt)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's next write or close
            self._failed = exc

    def _put(self, item) -> None:
        while True:
            if self._failed is not None or not self._encoder.is_alive():
                raise self._failed or RuntimeError(f"{self.path}: the video encoder stopped")
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _finish_encoding(self) -> None:
        if self._encoder.is_alive():
            self._put(None)
            self._encoder.join()
        if self._failed is not None:
            raise self._failed

    def write(self, frames: np.ndarray) -> None:
        """Append frames: ``uint8 [H, W, 3]`` or ``[B, H, W, 3]`` RGB of the writer's size."""
        frames = self._frames(frames)
        for f in frames:
            pts = self.timestamps[self.n_written] if self.timestamps is not None else self.n_written
            self._put((np.array(f, np.uint8, order="C", copy=True), pts))
            self.n_written += 1

    def close(self) -> Path:
        if self._closed:
            return self.path
        self._finish_encoding()
        for pkt in self._stream.encode():
            self._container.mux(pkt)
        self._container.close()
        self._closed = True
        if self.audio_from is not None and _has_audio(self.audio_from):
            final_tmp = self._tmp.with_suffix(".mux" + self._tmp.suffix.split(".")[-1])
            try:
                _mux_audio(self._tmp, self.audio_from, final_tmp)
            finally:
                self._tmp.unlink(missing_ok=True)
            self._tmp = final_tmp
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._closed:
            for _ in range(3):  # drop what waits, stop the encoder
                if not self._encoder.is_alive():
                    break
                while not self._queue.empty():
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        break
                try:
                    self._queue.put_nowait(None)
                except queue.Full:
                    pass
                self._encoder.join(timeout=5)
            if not self._encoder.is_alive():
                try:
                    self._container.close()
                except Exception:  # noqa: BLE001 - best effort on an already failing path
                    pass
            self._closed = True
        self._tmp.unlink(missing_ok=True)


class FrameSequenceWriter(_Writer):
    """Write frames as numbered PNGs ``00000.png, 00001.png, ...`` into the folder ``path``,
    atomically: they go to a hidden folder beside it, which replaces ``path`` only when
    :meth:`close` is reached (an interrupted run leaves nothing under ``path``). Same interface as
    :class:`VideoWriter`; there is no audio in an image sequence."""

    def __init__(
        self, path: str | Path, width: int, height: int, overwrite: bool = False, inputs: Sequence[str | Path] = ()
    ):
        self.path = check_output(Path(path), overwrite, inputs)
        self.width, self.height = int(width), int(height)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".frames"))
        self.n_written = 0
        self._closed = False

    def write(self, frames: np.ndarray) -> None:
        from PIL import Image

        frames = self._frames(frames)
        for f in frames:
            Image.fromarray(f).save(self._tmp / f"{self.n_written:05d}.png", compress_level=1)
            self.n_written += 1

    def close(self) -> Path:
        import shutil

        if self._closed:
            return self.path
        self._closed = True
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".old"))
            os.rmdir(old)
            os.replace(self.path, old)
        os.replace(self._tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        import shutil

        self._closed = True
        shutil.rmtree(self._tmp, ignore_errors=True)


def open_writer(
    path: str | Path,
    info: VideoInfo,
    n: int,
    overwrite: bool = False,
    audio_from: str | Path | None = None,
    inputs: Sequence[str | Path] = (),
    sequence: bool | None = None,
    crf: int = 17,
    preset: str = "veryfast",
) -> VideoWriter | FrameSequenceWriter:
    """A writer for ``n`` frames like ``info``'s: numbered PNGs when ``path`` is a folder
    (:func:`is_sequence_output`), else a video at the input's fps (and its frame times, for a
    variable-frame-rate input) with ``audio_from``'s audio, H.264 at ``crf`` with x264's ``preset``."""
    if is_sequence_output(path) if sequence is None else sequence:
        return FrameSequenceWriter(path, info.width, info.height, overwrite, inputs)
    vfr = info.variable_frame_rate and info.timestamps is not None
    return VideoWriter(
        path,
        info.fps_fraction,
        info.width,
        info.height,
        audio_from=audio_from,
        overwrite=overwrite,
        timestamps=info.timestamps[:n] if vfr else None,
        time_base=info.time_base,
        crf=crf,
        preset=preset,
    )


def _has_audio(path: Path) -> bool:
    import av

    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except (av.FFmpegError, OSError):
        return False


def read_audio(path: str | Path, seconds: float | None = None) -> tuple[np.ndarray, int] | None:
    """The first audio stream of ``path`` decoded: ``float32 [channels, samples]`` in [-1, 1] and its
    sample rate, the first ``seconds`` only when given; None without an audio stream."""
    import av

    if not _has_audio(Path(path)):
        return None
    chunks, rate = [], 0
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
        rate = stream.rate
        limit = None if seconds is None else int(round(seconds * rate))
        got = 0
        for frame in c.decode(stream):
            for f in resampler.resample(frame):
                a = f.to_ndarray().astype(np.float32)
                chunks.append(a)
                got += a.shape[1]
            if limit is not None and got >= limit:
                break
        for f in resampler.resample(None):
            chunks.append(f.to_ndarray().astype(np.float32))
    if not chunks:
        return None
    audio = np.concatenate(chunks, axis=1)
    return (audio[:, :limit] if limit is not None else audio), int(rate)


def _mux_audio(video_path: Path, audio_src: Path, out_path: Path) -> None:
    """Remux the video stream of ``video_path`` and the first audio stream of ``audio_src``."""
    import av

    with (
        av.open(str(video_path)) as vin,
        av.open(str(audio_src)) as ain,
        av.open(str(out_path), mode="w", format="mp4") as out,
    ):
        v_in = vin.streams.video[0]
        a_in = ain.streams.audio[0]
        v_out = out.add_stream_from_template(v_in)
        a_out = out.add_stream_from_template(a_in)
        vend = float(v_in.duration * v_in.time_base) if v_in.duration else None
        packets = []
        for pkt in vin.demux(v_in):
            if pkt.dts is None:
                continue
            pkt.stream = v_out
            packets.append((float(pkt.dts * pkt.time_base), 0, pkt))
        for pkt in ain.demux(a_in):
            if pkt.dts is None:
                continue
            t = float(pkt.dts * pkt.time_base)
            if vend is not None and t > vend + 1.0:
                break
            pkt.stream = a_out
            packets.append((t, 1, pkt))
        packets.sort(key=lambda x: (x[0], x[1]))
        for _, _, pkt in packets:
            out.mux(pkt)


def frame_hash(frames: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()
