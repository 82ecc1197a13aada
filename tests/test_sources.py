"""Frame sources (edge/sources.py): sensor dumps with sidecars, .npy, images, the spool."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edge.sources import DurableCounter, FrameError, Spool, open_frame


def _dump(path, arr, **meta):
    arr.tofile(path)
    side = {"shape": list(arr.shape), "dtype": str(arr.dtype), **meta}
    path.with_suffix(".json").write_text(json.dumps(side))
    return path


def test_raw_dump_is_memory_mapped_with_metadata(tmp_path):
    arr = np.arange(6 * 5 * 4, dtype=np.uint16).reshape(6, 5, 4)
    p = _dump(tmp_path / "f.raw", arr, capture_time="2026-12-01T10:00:00Z",
              georef={"corners": [[36.0, -6.0], [36.0, -5.0], [35.0, -5.0], [35.0, -6.0]]})
    f = open_frame(p)
    assert isinstance(f.array, np.memmap) and f.array.dtype == np.uint16
    np.testing.assert_array_equal(f.array, arr)
    assert (f.height, f.width, f.bands) == (6, 5, 4)
    assert f.capture_time_ms == 1796119200000
    assert f.georef["corners"][2] == [35.0, -5.0]


def test_chw_dump(tmp_path):
    arr = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    f = open_frame(_dump(tmp_path / "c.bin", arr, layout="CHW"))
    assert f.layout == "CHW" and (f.height, f.width, f.bands) == (4, 5, 3)


@pytest.mark.parametrize("mutate, match", [
    (lambda p: p.write_bytes(p.read_bytes()[:-7]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes() + b"x"), "larger than its sidecar"),
    (lambda p: p.with_suffix(".json").unlink(), "without its sidecar"),
    (lambda p: p.with_suffix(".json").write_text("{not json"), "unreadable sidecar"),
    (lambda p: p.with_suffix(".json").write_text("[1, 2]"), "must be a JSON object"),
    (lambda p: p.with_suffix(".json").write_text('{"shape": [4, 4], "dtype": "float32"}'), "dtype must be"),
    (lambda p: p.with_suffix(".json").write_text('{"shape": [4, -4], "dtype": "uint8"}'), "shape must be"),
    (lambda p: p.with_suffix(".json").write_text(
        '{"shape": [4, 4], "dtype": "uint8", "capture_time": "yesterday"}'), "not ISO-8601"),
    (lambda p: p.with_suffix(".json").write_text(
        '{"shape": [4, 4], "dtype": "uint8", "georef": {"geotransform": [1, 2]}}'), "geotransform"),
])
def test_bad_dumps_name_the_problem(tmp_path, mutate, match):
    p = _dump(tmp_path / "f.raw", np.zeros((4, 4), np.uint8))
    mutate(p)
    with pytest.raises(FrameError, match=match):
        open_frame(p)


def test_npy_and_images(tmp_path):
    arr = np.random.default_rng(0).integers(0, 4096, (8, 9, 4), dtype=np.uint16)
    np.save(tmp_path / "a.npy", arr)
    f = open_frame(tmp_path / "a.npy")
    assert isinstance(f.array, np.memmap)
    np.testing.assert_array_equal(f.array, arr)
    (tmp_path / "t.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:100])
    with pytest.raises(FrameError, match="t.npy"):
        open_frame(tmp_path / "t.npy")
    np.save(tmp_path / "f.npy", arr.astype(np.float32))
    with pytest.raises(FrameError, match="uint8 or uint16"):
        open_frame(tmp_path / "f.npy")
    rgb = np.random.default_rng(1).integers(0, 256, (7, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    np.testing.assert_array_equal(open_frame(tmp_path / "x.png").array, rgb)
    grey16 = np.random.default_rng(2).integers(0, 65536, (5, 4), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g.tif")
    np.testing.assert_array_equal(open_frame(tmp_path / "g.tif").array, grey16)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(FrameError, match="junk.png"):
        open_frame(tmp_path / "junk.png")


def test_durable_counter(tmp_path):
    c = DurableCounter(tmp_path / "n")
    assert [c.take(), c.take()] == [1, 2]
    assert DurableCounter(tmp_path / "n").take() == 3
    (tmp_path / "n").write_bytes(b"garbage!!!!!")
    c = DurableCounter(tmp_path / "n")
    assert c.problem and c.value == 1


def test_spool_order_claims_resume_and_outcomes(tmp_path):
    spool_dir, state = tmp_path / "spool", tmp_path / "state"
    spool_dir.mkdir()
    for name in ("b", "a", "c"):
        _dump(spool_dir / f"{name}.raw", np.full((2, 2), ord(name), np.uint8))
    (spool_dir / "d.raw.part").write_bytes(b"half")  # still being written: not a frame
    spool = Spool(spool_dir, state)
    assert [p.name for p in spool.waiting()] == ["a.raw", "b.raw", "c.raw"]
    first = spool.claim_next()
    assert (first.frame_id, first.name, first.resumed) == (1, "a.raw", False)
    frame = spool.open(first)
    assert frame.frame_id == 1 and int(frame.array[0, 0]) == ord("a")
    spool.done(first)
    assert (spool_dir / ".done" / "a.raw").exists() and (spool_dir / ".done" / "a.json").exists()
    second = spool.claim_next()
    assert second.name == "b.raw" and second.frame_id == 2
    # a restart while b is in flight: the next run takes b again, with the same frame id
    again = Spool(spool_dir, state).claim_next()
    assert (again.frame_id, again.name, again.resumed) == (2, "b.raw", True)
    spool.failed(again)
    assert (spool_dir / ".failed" / "b.raw").exists()
    third = Spool(spool_dir, state).claim_next()
    assert (third.frame_id, third.name) == (3, "c.raw")
    spool.done(third)
    assert spool.claim_next() is None and len(spool) == 0
