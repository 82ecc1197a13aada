"""The per-frame pipeline (edge/pipeline.py) with the shipped ship model, and the two backends."""
from __future__ import annotations

import numpy as np
import pytest

from edge.backends import open_backend
from edge.evaluate import FrameDetector, average_precision, box_iou
from edge.manifest import load_manifest
from edge.pipeline import FramePipeline
from edge.screen import ScreenRule
from models.scenes import generate_scene

BGRN_TO_RGB = [2, 1, 0]


@pytest.fixture(scope="module")
def ship():
    return load_manifest().model("ship")


@pytest.fixture(scope="module")
def ort_int8(ship):
    return open_backend(ship, "onnx_int8")


@pytest.fixture(scope="module")
def scene():
    return generate_scene(4242, 600, 700, ships=(6, 6), cloud_probability=0.0)


@pytest.fixture(scope="module")
def scene12():
    return generate_scene(4242, 600, 700, bands="bgrn", ships=(6, 6), cloud_probability=0.0)


def _same(a, b):
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_matches_the_evaluation_path(ship, ort_int8, scene):
    """Without screening, the flight pipeline computes what edge.evaluate measured the models with."""
    pipe = FramePipeline(ship, ort_int8, overlap=64, iou_threshold=0.5)
    res = pipe.process(scene.image)
    ref = FrameDetector(ship, ort_int8, overlap=64)(scene.image)
    np.testing.assert_array_equal(res.boxes, ref.boxes)
    np.testing.assert_array_equal(res.scores, ref.scores)
    assert res.tiles == (12, 0, 0, 12) and res.frame_hw == (600, 700)
    ap = average_precision([(res.boxes, res.scores, res.class_ids)], [scene.boxes], score_threshold=0.3)
    assert ap["recall"] > 0.8, ap


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_batch_size_layout_and_memmap_do_not_change_results(ship, ort_int8, scene12, batch, tmp_path):
    pipe = FramePipeline(ship, ort_int8, overlap=32, batch=16, bands=BGRN_TO_RGB, bit_depth=12)
    ref = pipe.process(scene12.image)
    assert len(ref) > 0
    other = FramePipeline(ship, ort_int8, overlap=32, batch=batch, bands=BGRN_TO_RGB, bit_depth=12)
    _same(ref, other.process(scene12.image))
    _same(ref, other.process(np.ascontiguousarray(scene12.image.transpose(2, 0, 1)), layout="CHW"))
    np.save(tmp_path / "f.npy", scene12.image)
    _same(ref, other.process(np.load(tmp_path / "f.npy", mmap_mode="r")))


def test_12bit_bands_feed_the_rgb_model(ship, ort_int8, scene, scene12):
    """The LUT maps 12-bit B, G, R, NIR onto the model's 8-bit RGB: the same ships are found."""
    rgb = FramePipeline(ship, ort_int8, overlap=32).process(scene.image)
    bgrn = FramePipeline(ship, ort_int8, overlap=32, bands=BGRN_TO_RGB, bit_depth=12).process(scene12.image)
    assert abs(len(rgb) - len(bgrn)) <= 1
    iou = box_iou(rgb.boxes, bgrn.boxes)
    assert (iou.max(axis=1) > 0.8).sum() >= len(rgb) - 1


def test_screening_skips_nodata_and_cloud_tiles(ship):
    calls = []

    class Counting:
        def __init__(self, inner):
            self.inner, self.file, self.input_dtype = inner, inner.file, inner.input_dtype

        def run(self, x):
            calls.append(int(x.max()))
            return self.inner.run(x)

    frame = np.full((512, 768, 4), 600, np.uint16)  # dark sea
    frame[:256, :256] = 0                             # no-data corner tile
    frame[256:, 512:] = 4000                          # cloud-covered tile
    backend = Counting(open_backend(ship, "onnx_int8"))
    pipe = FramePipeline(ship, backend, overlap=0, bands=BGRN_TO_RGB, bit_depth=12,
                         screen=ScreenRule(True, 0.98, 0.95), bright_threshold=2900)
    res = pipe.process(frame)
    assert res.tiles == (6, 1, 1, 4) and len(calls) == 4
    assert 0 not in calls  # the no-data tile never reached the model
    off = FramePipeline(ship, backend, overlap=0, bands=BGRN_TO_RGB, bit_depth=12)
    assert off.process(frame).tiles == (6, 0, 0, 6)


def test_bad_frames_name_the_problem(ship, ort_int8):
    pipe = FramePipeline(ship, ort_int8, bands=BGRN_TO_RGB, bit_depth=12)
    with pytest.raises(ValueError, match="band"):
        pipe.process(np.zeros((300, 300, 2), np.uint16))
    with pytest.raises((TypeError, ValueError), match="uint8 or uint16"):
        pipe.process(np.zeros((300, 300, 4), np.float32))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        pipe.process(np.zeros((2, 3, 4, 5), np.uint16))
    with pytest.raises(ValueError, match="bands must name 3"):
        FramePipeline(ship, ort_int8, bands=[0, 1])


def test_heartbeat_at_every_stage(ship, ort_int8, scene):
    beats = []
    FramePipeline(ship, ort_int8, overlap=32, batch=4).process(scene.image, heartbeat=beats.append)
    assert beats.count("preprocess") == 3 and beats.count("infer") == 9 and beats[-1] == "merge"


def _match(a, b, iou_min=0.7):
    """Greedy one-to-one matches of two detection sets by IoU: (pairs, unmatched a, unmatched b)."""
    iou = box_iou(a.boxes, b.boxes)
    pairs = []
    while iou.size and iou.max() >= iou_min:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        pairs.append((i, j))
        iou[i, :] = -1
        iou[:, j] = -1
    ua = sorted(set(range(len(a))) - {p[0] for p in pairs})
    ub = sorted(set(range(len(b))) - {p[1] for p in pairs})
    return pairs, ua, ub


def test_same_int8_model_on_both_backends(ship, scene12):
    """ONNX Runtime (QDQ int8) and LiteRT (full-integer int8) of the same weights: the same ships,
    boxes and scores within quantization tolerance; only detections near the threshold may differ."""
    kw = dict(overlap=32, bands=BGRN_TO_RGB, bit_depth=12, score_threshold=0.3)
    a = FramePipeline(ship, open_backend(ship, "onnx_int8"), **kw).process(scene12.image)
    b = FramePipeline(ship, open_backend(ship, "tflite_int8"), **kw).process(scene12.image)
    pairs, ua, ub = _match(a, b)
    assert len(pairs) >= 0.9 * max(len(a), len(b))
    for i, j in pairs:
        assert abs(float(a.scores[i]) - float(b.scores[j])) < 0.08
        assert np.abs(a.boxes[i] - b.boxes[j]).max() < 4.0
    for i in ua:
        assert a.scores[i] < 0.45
    for j in ub:
        assert b.scores[j] < 0.45


def _rss_file_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile"))


def test_memory_mapped_frame_pages_are_released(ship, ort_int8, tmp_path):
    """A 128 MiB frame streamed through the pipeline leaves only a few batches' pages resident."""
    from edge.pipeline import release_rows

    h = w = 4096
    frame = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint16, shape=(h, w, 4))
    frame[:] = 0
    frame[:, :, :] = 500          # open sea everywhere ...
    frame[: h // 2] = 0           # ... and no data in the top half
    frame.flush()
    del frame
    arr = np.load(tmp_path / "big.npy", mmap_mode="r")
    pipe = FramePipeline(ship, ort_int8, overlap=0, batch=16, bands=BGRN_TO_RGB, bit_depth=12,
                         screen=ScreenRule(True, 0.98, 0.95), bright_threshold=2900)
    before = _rss_file_kb()
    res = pipe.process(arr)
    grown_mb = (_rss_file_kb() - before) / 1024
    assert res.tiles == (256, 128, 0, 128)
    assert grown_mb < 24, f"RssFile grew by {grown_mb:.0f} MB for a 128 MB frame"
    # never on memory that is not a read-only file mapping: an ordinary array keeps its data
    plain = np.full((64, 64, 4), 7, np.uint16)
    release_rows(plain, "HWC", 64)
    assert (plain == 7).all()
    cow = np.load(tmp_path / "big.npy", mmap_mode="c")
    cow[-1, -1, 0] = 9
    release_rows(cow, "HWC", h)
    assert cow[-1, -1, 0] == 9
