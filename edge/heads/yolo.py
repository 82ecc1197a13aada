"""YOLOv8 / YOLO11 export layout: one output (4 + nc, N), N anchors (batch axis of 1 accepted).

Rows 0..3 are cx, cy, w, h in input (tile) pixels, rows 4.. the nc class scores (sigmoid already
applied; no objectness row). Decode: best class per anchor, score >= score_threshold,
cx cy w h -> x1 y1 x2 y2 (float32), optional clip to the tile, then per-tile class-aware NMS
(edge.kernels.nms.nms) keeping at most max_detections.
"""
from __future__ import annotations

import numpy as np

from edge.heads import Detections, dequantize
from edge.kernels.nms import nms

#: Ultralytics' defaults for exported detectors.
DEFAULT_NMS_IOU = 0.7
DEFAULT_MAX_DETECTIONS = 300


def decode_yolo(predictions, *, score_threshold: float = 0.25, nms_iou: float | None = DEFAULT_NMS_IOU,
                max_detections: int = DEFAULT_MAX_DETECTIONS, tile_hw=None, quant=None) -> Detections:
    """Boxes of one tile from a YOLOv8-layout output (see the module docstring).

    tile_hw: (height, width) to clip boxes to; None leaves them as predicted.
    quant: (scale, zero_point) of an int8 / uint8 output; None for float.
    nms_iou None skips the NMS (for graphs with NMS built in).
    Returns Detections sorted by score descending (ties: anchor index).
    """
    p = np.asarray(predictions)
    if p.ndim == 3:
        if p.shape[0] != 1:
            raise ValueError(f"predictions must hold one tile (batch 1), got shape {p.shape}")
        p = p[0]
    if p.ndim != 2 or p.shape[0] < 5:
        raise ValueError(f"predictions must have shape (4 + nc, N) with nc >= 1 (optionally with a "
                         f"batch axis of 1), got {np.shape(predictions)}")
    if int(max_detections) < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    rows = dequantize(p, quant, "predictions").T                      # (N, 4 + nc)
    cls_scores = rows[:, 4:]
    classes = np.argmax(cls_scores, axis=1)                           # first class on ties
    scores = cls_scores[np.arange(len(rows)), classes]
    keep = np.flatnonzero(scores.astype(np.float64) >= score_threshold)
    if keep.size == 0:
        return Detections.empty()
    xywh = rows[keep, :4]
    half = np.maximum(xywh[:, 2:4], 0) * np.float32(0.5)
    boxes = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1).astype(np.float32)
    if tile_hw is not None:
        np.clip(boxes[:, 0::2], 0, tile_hw[1], out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, tile_hw[0], out=boxes[:, 1::2])
    scores, classes = scores[keep], classes[keep].astype(np.int64)
    if nms_iou is not None:
        order = nms(boxes, scores, classes, iou_threshold=nms_iou, max_detections=int(max_detections))
    else:
        order = np.argsort(-scores, kind="stable")[:int(max_detections)]
    return Detections(np.ascontiguousarray(boxes[order]), scores[order].astype(np.float32),
                      classes[order])
