"""CenterNet-style head: per-class center heatmap, box size and sub-cell offset at a fixed stride.

Outputs of one tile (a leading batch axis of 1 is accepted):
    heatmap (C, H, W)  class probabilities (sigmoid already in the graph)
    size    (2, H, W)  box width, height in input (tile) pixels
    offset  (2, H, W)  center offset inside the output cell, in cells (0..1)
Decode: a cell is a peak when it equals the max of its 3x3 neighbourhood (CenterNet's max-pool
"NMS", plateaus keep every cell); the top max_detections peaks with score >= score_threshold become
boxes: center = ((ix + off_x) * stride, (iy + off_y) * stride), box = center -/+ size / 2, clipped
to the tile. Arithmetic is float32. Optional per-tile NMS (class-aware) with nms_iou.
"""
from __future__ import annotations

import numpy as np

from edge.heads import Detections, dequantize
from edge.kernels.nms import nms

#: CenterNet's usual output stride (input pixels per heatmap cell).
DEFAULT_STRIDE = 4


def _tile_output(x, name: str, channels: int | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"{name} must hold one tile (batch 1), got shape {arr.shape}")
        arr = arr[0]
    if arr.ndim != 3 or (channels is not None and arr.shape[0] != channels):
        want = f"({channels}, H, W)" if channels else "(C, H, W)"
        raise ValueError(f"{name} must have shape {want} (optionally with a batch axis of 1), "
                         f"got {np.shape(x)}")
    return arr


def peak_mask(heatmap: np.ndarray) -> np.ndarray:
    """(C, H, W) bool: cells equal to the max of their 3x3 neighbourhood (outside counts as lowest).

    Works on the raw (possibly quantized) values: dequantizing with scale > 0 keeps the order and
    the ties, so the peaks are the same."""
    hm = np.asarray(heatmap)
    low = -np.inf if hm.dtype.kind == "f" else np.iinfo(hm.dtype).min
    pad = np.pad(hm, ((0, 0), (1, 1), (1, 1)), constant_values=low)
    # separable 3x3 max: along x over shifted views, then along y
    row = np.maximum(np.maximum(pad[:, :, :-2], pad[:, :, 1:-1]), pad[:, :, 2:])
    pooled = np.maximum(np.maximum(row[:, :-2], row[:, 1:-1]), row[:, 2:])
    return hm == pooled


def decode_centernet(heatmap, size, offset, *, stride: int = DEFAULT_STRIDE,
                     score_threshold: float = 0.3, max_detections: int = 100,
                     nms_iou: float | None = None, tile_hw=None, heatmap_quant=None,
                     size_quant=None, offset_quant=None) -> Detections:
    """Boxes of one tile from CenterNet outputs (see the module docstring).

    tile_hw: (height, width) to clip to; default (H * stride, W * stride).
    *_quant: (scale, zero_point) of an int8 / uint8 output; None for float outputs.
    Returns Detections sorted by score descending (ties: class, then row, then column).
    """
    hm = _tile_output(heatmap, "heatmap")
    sz = _tile_output(size, "size", 2)
    off = _tile_output(offset, "offset", 2)
    n_classes, h, w = hm.shape
    if sz.shape[1:] != (h, w) or off.shape[1:] != (h, w):
        raise ValueError(f"size {sz.shape} and offset {off.shape} must match the heatmap's "
                         f"{h}x{w} cells")
    if int(max_detections) < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    tile_h, tile_w = (h * stride, w * stride) if tile_hw is None else tile_hw

    # Most tiles of a scene hold nothing: when even the hottest cell is below the threshold no peak
    # can pass it (dequantizing keeps the order), so skip the peak search -- same result, ~20x less work.
    if hm.size == 0 or float(dequantize(hm.reshape(-1)[[int(np.argmax(hm))]], heatmap_quant,
                                        "heatmap")[0]) < score_threshold:
        return Detections.empty()
    cand = np.flatnonzero(peak_mask(hm))
    scores = dequantize(hm.reshape(-1)[cand], heatmap_quant, "heatmap")
    above = scores.astype(np.float64) >= score_threshold
    cand, scores = cand[above], scores[above]
    order = np.argsort(-scores, kind="stable")[:int(max_detections)]  # stable: index order on ties
    cand, scores = cand[order], scores[order]
    if cand.size == 0:
        return Detections.empty()

    cls, cell = np.divmod(cand, h * w)
    iy, ix = np.divmod(cell, w)
    off_xy = dequantize(off[:, iy, ix], offset_quant, "offset")          # (2, K)
    wh = np.maximum(dequantize(sz[:, iy, ix], size_quant, "size"), 0)    # negative size: a point
    st = np.float32(stride)
    cx = (ix.astype(np.float32) + off_xy[0]) * st
    cy = (iy.astype(np.float32) + off_xy[1]) * st
    half_w, half_h = wh[0] * np.float32(0.5), wh[1] * np.float32(0.5)
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    np.clip(boxes[:, 0::2], 0, tile_w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, tile_h, out=boxes[:, 1::2])
    boxes = boxes.astype(np.float32, copy=False)
    classes = cls.astype(np.int64)
    if nms_iou is not None:
        keep = nms(boxes, scores, classes, iou_threshold=nms_iou)
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    return Detections(np.ascontiguousarray(boxes), scores.astype(np.float32), classes)
