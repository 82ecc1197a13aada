"""Head decoders (edge/heads/): CenterNet and YOLOv8-layout outputs -> boxes in tile pixels."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge.heads import Detections, decode, dequantize
from edge.heads.centernet import decode_centernet, peak_mask
from edge.heads.yolo import decode_yolo
from tests.conftest import examples


def _centernet_maps(n_classes=1, h=16, w=16):
    hm = np.zeros((1, n_classes, h, w), np.float32)
    size = np.zeros((1, 2, h, w), np.float32)
    off = np.zeros((1, 2, h, w), np.float32)
    return hm, size, off


# ---- CenterNet --------------------------------------------------------------------------------

def test_centernet_exact_boxes():
    hm, size, off = _centernet_maps(n_classes=2)
    hm[0, 0, 3, 5], hm[0, 1, 10, 2] = 0.9, 0.6
    hm[0, 0, 3, 6] = 0.5           # a neighbour of the 0.9 peak: not a peak
    size[0, :, 3, 5] = (10, 6)
    size[0, :, 10, 2] = (4, 8)
    off[0, :, 3, 5] = (0.25, 0.5)
    det = decode_centernet(hm, size, off, stride=4, score_threshold=0.3)
    # center ((5 + .25) * 4, (3 + .5) * 4) = (21, 14); box -/+ (5, 3)
    np.testing.assert_array_equal(det.boxes, [[16, 11, 26, 17], [6, 36, 10, 44]])
    np.testing.assert_array_equal(det.scores, np.float32([0.9, 0.6]))
    np.testing.assert_array_equal(det.classes, [0, 1])
    assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32
    assert det.classes.dtype == np.int64


def test_centernet_threshold_top_k_and_order():
    hm, size, off = _centernet_maps()
    for k, (y, x) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4), (8, 8)]):
        hm[0, 0, y, x] = 0.2 + 0.1 * k   # 0.2 .. 0.6
    det = decode_centernet(hm, size, off, score_threshold=0.3, max_detections=3)
    np.testing.assert_allclose(det.scores, [0.6, 0.5, 0.4], rtol=1e-6)
    det = decode_centernet(hm, size, off, score_threshold=0.45, max_detections=100)
    assert len(det.scores) == 2


def test_centernet_clips_to_tile_and_plateaus_keep_every_cell():
    hm, size, off = _centernet_maps(h=8, w=8)
    hm[0, 0, 0, 0] = hm[0, 0, 0, 1] = 0.8    # plateau: both are peaks (max-pool equality)
    size[0, :, 0, 0] = size[0, :, 0, 1] = (100, 100)
    det = decode_centernet(hm, size, off, stride=4, score_threshold=0.5)
    np.testing.assert_array_equal(det.boxes, [[0, 0, 32, 32], [0, 0, 32, 32]])
    det = decode_centernet(hm, size, off, stride=4, score_threshold=0.5, tile_hw=(20, 30))
    np.testing.assert_array_equal(det.boxes[0], [0, 0, 30, 20])
    # per-tile NMS removes the duplicate
    det = decode_centernet(hm, size, off, stride=4, score_threshold=0.5, nms_iou=0.5)
    assert len(det.scores) == 1


def test_centernet_int8_outputs_match_dequantized_float():
    rng = np.random.default_rng(1)
    q_hm = rng.integers(-128, 128, (1, 2, 16, 16)).astype(np.int8)
    q_size = rng.integers(0, 256, (1, 2, 16, 16)).astype(np.uint8)
    q_off = rng.integers(-128, 128, (1, 2, 16, 16)).astype(np.int8)
    quant = {"heatmap": (1 / 256, -128), "size": (0.25, 0), "offset": (1 / 255, -128)}
    got = decode_centernet(q_hm, q_size, q_off, score_threshold=0.6, heatmap_quant=quant["heatmap"],
                           size_quant=quant["size"], offset_quant=quant["offset"])
    ref = decode_centernet(dequantize(q_hm, quant["heatmap"]), dequantize(q_size, quant["size"]),
                           dequantize(q_off, quant["offset"]), score_threshold=0.6)
    assert len(ref.scores) > 0
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)


def test_centernet_empty_and_errors():
    hm, size, off = _centernet_maps()
    det = decode_centernet(hm, size, off, score_threshold=0.1)
    assert det.boxes.shape == (0, 4) and det.scores.shape == (0,) and det.classes.shape == (0,)
    with pytest.raises(ValueError, match="size"):
        decode_centernet(hm, size[:, :1], off)
    with pytest.raises(ValueError, match="heatmap"):
        decode_centernet(np.zeros((2, 1, 16, 16)), size, off)
    with pytest.raises(ValueError, match="match the heatmap"):
        decode_centernet(hm, size[..., :8], off)
    with pytest.raises(ValueError, match="quantization"):
        decode_centernet(hm.astype(np.int8), size, off)
    with pytest.raises(TypeError, match="heatmap"):
        decode_centernet(hm.astype(np.int32), size, off, heatmap_quant=(1.0, 0))


@settings(max_examples=examples(60), deadline=None)
@given(hnp.arrays(np.int8, st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9))))
def test_peak_mask_matches_brute_force(hm):
    c, h, w = hm.shape
    want = np.zeros_like(hm, dtype=bool)
    for k in range(c):
        for y in range(h):
            for x in range(w):
                win = hm[k, max(0, y - 1):y + 2, max(0, x - 1):x + 2]
                want[k, y, x] = hm[k, y, x] == win.max()
    np.testing.assert_array_equal(peak_mask(hm), want)
    np.testing.assert_array_equal(peak_mask(hm.astype(np.float32) * 0.5), want)


# ---- YOLOv8 layout ------------------------------------------------------------------------------

def _yolo(rows):
    """(N, 4 + nc) rows -> the exported (1, 4 + nc, N) layout."""
    return np.asarray(rows, np.float32).T[None]


def test_yolo_exact_boxes_and_best_class():
    pred = _yolo([[50, 40, 20, 10, 0.1, 0.8],     # class 1
                  [10, 10, 4, 4, 0.2, 0.1],       # below threshold
                  [100, 60, 30, 30, 0.7, 0.3]])   # class 0
    det = decode_yolo(pred, score_threshold=0.5)
    np.testing.assert_array_equal(det.boxes, [[40, 35, 60, 45], [85, 45, 115, 75]])
    np.testing.assert_array_equal(det.scores, np.float32([0.8, 0.7]))
    np.testing.assert_array_equal(det.classes, [1, 0])


def test_yolo_nms_is_class_aware_and_max_detections():
    pred = _yolo([[50, 50, 20, 20, 0.9, 0.0],
                  [51, 50, 20, 20, 0.8, 0.0],     # same class, IoU ~0.9: suppressed
                  [50, 51, 20, 20, 0.0, 0.7],     # other class: kept
                  [200, 200, 10, 10, 0.6, 0.0]])
    det = decode_yolo(pred, score_threshold=0.5, nms_iou=0.5)
    np.testing.assert_array_equal(det.classes, [0, 1, 0])
    np.testing.assert_allclose(det.scores, [0.9, 0.7, 0.6], rtol=1e-6)
    assert len(decode_yolo(pred, score_threshold=0.5, nms_iou=None).scores) == 4
    assert len(decode_yolo(pred, score_threshold=0.5, nms_iou=0.5, max_detections=2).scores) == 2


def test_yolo_clip_and_quantized_output():
    rows = np.array([[5, 5, 20, 20, 1.0], [120, 60, 40, 8, 0.5]], np.float32)
    scale, zp = 0.5, 10  # uint8: value = (q - 10) * 0.5
    q = np.round(rows / scale + zp).astype(np.uint8).T[None]
    det = decode_yolo(q, score_threshold=0.4, tile_hw=(64, 128), quant=(scale, zp))
    np.testing.assert_array_equal(det.boxes, [[0, 0, 15, 15], [100, 56, 128, 64]])
    np.testing.assert_array_equal(det.scores, [1.0, 0.5])


def test_yolo_errors():
    with pytest.raises(ValueError, match="4 \\+ nc"):
        decode_yolo(np.zeros((1, 4, 10), np.float32))
    with pytest.raises(ValueError, match="batch"):
        decode_yolo(np.zeros((2, 6, 10), np.float32))
    with pytest.raises(ValueError, match="quantization"):
        decode_yolo(np.zeros((1, 6, 10), np.int8))
    assert decode_yolo(np.zeros((6, 0), np.float32)).boxes.shape == (0, 4)


def test_decode_dispatches_on_the_manifest_head():
    hm, size, off = _centernet_maps()
    hm[0, 0, 2, 2] = 0.9
    head = {"type": "centernet", "stride": 4, "score_threshold": 0.5, "max_detections": 10}
    det = decode(head, {"heatmap": hm, "size": size, "offset": off})
    assert isinstance(det, Detections) and len(det.scores) == 1
    assert len(decode(head, {"heatmap": hm, "size": size, "offset": off}, score_threshold=0.95).scores) == 0
    head = {"type": "yolov8", "score_threshold": 0.5}
    det = decode(head, {"predictions": _yolo([[8, 8, 4, 4, 0.9]])})
    np.testing.assert_array_equal(det.boxes, [[6, 6, 10, 10]])
    with pytest.raises(ValueError, match="no decoder"):
        decode({"type": "ssd", "score_threshold": 0.5}, {})
