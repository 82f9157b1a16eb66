import numpy as np
import pytest
from conftest import DATA, needs_data

from ipfacediff.errors import InputError, OutputExistsError
from ipfacediff.runtime.video import VideoWriter, frame_hash, open_frames, probe


def test_sample_clip_probe_and_stream(sample_clip):
    info = probe(sample_clip)
    assert (info.kind, info.n_frames, info.fps, info.width, info.height, info.has_audio) == (
        "video",
        24,
        24.0,
        256,
        256,
        True,
    )
    src = open_frames(sample_clip)
    chunks = list(src.iter_chunks(chunk_size=5))
    assert [s for s, _ in chunks] == [0, 5, 10, 15, 20]
    assert max(len(c) for _, c in chunks) == 5 and sum(len(c) for _, c in chunks) == 24
    assert chunks[0][1].dtype == np.uint8 and chunks[0][1].shape == (5, 256, 256, 3)
    assert list(src.iter_chunks(8, max_frames=3))[0][1].shape[0] == 3


def test_write_keeps_frames_fps_size_and_audio(sample_clip, tmp_path):
    src = open_frames(sample_clip)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, src.info.fps_fraction, src.info.width, src.info.height, audio_from=sample_clip) as w:
        for _, chunk in src.iter_chunks(7):
            w.write(chunk)
    info = probe(out)
    assert (info.n_frames, info.fps, info.width, info.height, info.has_audio) == (24, 24.0, 256, 256, True)
    a, b = src.get([0, 23]).astype(float), open_frames(out).get([0, 23]).astype(float)
    assert np.abs(a - b).mean() < 3.0  # H.264 at the default crf (17)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporary files left


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, 25, 64, 64) as w:
            w.write(np.zeros((3, 64, 64, 3), np.uint8))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        VideoWriter(out, 25, 64, 64)
    assert out.read_bytes() == b"keep me"


def test_odd_size_keeps_size(tmp_path):
    out = tmp_path / "odd.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (4, 65, 67, 3), dtype=np.uint8)
    with VideoWriter(out, 10, 67, 65) as w:
        w.write(frames)
    info = probe(out)
    assert (info.width, info.height, info.n_frames) == (67, 65, 4)


def test_images_folder_and_single_image(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(tmp_path / f"f{i:02d}.png")
    src = open_frames(tmp_path)
    assert src.info.kind == "images" and len(src) == 3 and src.get([2]).shape == (1, 32, 48, 3)
    one = open_frames(tmp_path / "f01.png")
    assert one.info.kind == "image" and np.array_equal(one.get([0])[0], src.get([1])[0])


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: d / "missing.mp4", "no such file"),
        (lambda d: (d / "empty.mp4").write_bytes(b"") and d / "empty.mp4" or d / "empty.mp4", "empty"),
        (lambda d: (d / "text.mp4").write_text("hello, not a video") and d / "text.mp4", "not a readable video"),
        (lambda d: (d / "emptydir").mkdir() or d / "emptydir", "no images"),
    ],
)
def test_bad_inputs_are_input_errors(tmp_path, make, needle):
    path = make(tmp_path)
    with pytest.raises(InputError, match=needle):
        open_frames(path)


@needs_data
def test_real_clip_streams_by_index():
    src = open_frames(DATA / "videos" / "d18.mp4")
    assert (len(src), src.info.width, src.info.height, src.info.fps, src.info.has_audio) == (216, 480, 480, 30.0, True)
    a = src.get([100])
    b = src.get([0, 100])[1:]
    assert frame_hash(a) == frame_hash(b)


def _rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20


@needs_data
def test_forward_reads_give_decords_frames_and_keep_nothing_ahead():
    """Reads that move forward (the detection pass, keyframe intervals) are decoded frame by frame, and
    give the frames decord gives for any pattern of reads: chunks, an interval's first frame again, a
    jump back to the start, a skip ahead, a read far back (decord's path). Nothing decodes the rest of
    the clip in the background after a read (decord alone did, keeping every frame: +280 MB for this
    clip, growing with the clip's length)."""
    import gc
    import time

    import decord

    path = DATA / "videos" / "d3.mp4"  # 354 frames, 512 x 512
    reads = [list(range(0, 16)), list(range(16, 40)), list(range(39, 60)), [0, 1, 2], list(range(2, 30))]
    reads += [[40, 90], [100], list(range(100, 120)), [10, 300], [5], [353], [3, 2]]
    want_reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    want = [want_reader.get_batch(idx).asnumpy() for idx in reads]
    del want_reader
    gc.collect()
    time.sleep(0.5)
    before = _rss_mb()
    src = open_frames(path)
    for idx, expected in zip(reads, want):
        assert np.array_equal(src.get(idx), expected), idx
    assert src._forward_ok is True  # the forward path was taken and matched decord's frames
    assert len(src._recent) <= src._keep + 1  # the last frames decoded, by a byte budget
    time.sleep(1.5)  # a reader decoding ahead would have filled memory by now
    grown = _rss_mb() - before
    src.close()
    assert grown < 120, f"memory grew by {grown:.0f} MB after the reads: a reader decodes ahead"
