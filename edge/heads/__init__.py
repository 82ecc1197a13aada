"""Head decoders: raw model outputs of one tile -> boxes, scores, classes in tile pixels.

Every decoder returns a Detections (a named tuple, so `boxes, scores, classes = ...` works):
boxes (K, 4) float32 x1 y1 x2 y2 in tile pixels, scores (K,) float32, classes (K,) int64, sorted by
score descending. Integer (int8 / uint8) outputs are dequantized with their own (scale, zero point).
Numpy only: the flight side imports nothing else here.

decode(head, outputs, ...) picks the decoder from a manifest head entry ({"type": "centernet", ...}).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Detections(NamedTuple):
    boxes: np.ndarray    # (K, 4) float32, x1 y1 x2 y2, tile pixels
    scores: np.ndarray   # (K,) float32
    classes: np.ndarray  # (K,) int64

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def dequantize(x, quant=None, name: str = "output") -> np.ndarray:
    """float32 view of a model output: integer outputs become (q - zero_point) * scale.

    quant: (scale, zero_point) or None; required for int8 / uint8 arrays, ignored for float ones.
    """
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32, copy=False)
    if arr.dtype not in (np.int8, np.uint8):
        raise TypeError(f"{name} must be float, int8 or uint8, got dtype {arr.dtype}")
    if quant is None:
        raise ValueError(f"{name} is {arr.dtype}: pass its quantization (scale, zero_point)")
    scale, zero_point = quant
    if not float(scale) > 0:
        raise ValueError(f"{name}: quantization scale must be > 0, got {scale!r}")
    return (arr.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def decode(head: dict, outputs: dict, *, tile_hw=None, quant: dict | None = None,
           score_threshold: float | None = None) -> Detections:
    """Decode one tile's outputs ({role: array}) with the decoder a manifest head entry names.

    score_threshold overrides the head's (evaluation decodes low to trace the whole PR curve).
    quant: {role: (scale, zero_point)} for integer outputs.
    """
    from edge.heads import centernet, yolo

    quant = quant or {}
    threshold = head["score_threshold"] if score_threshold is None else score_threshold
    kind = head["type"]
    if kind == "centernet":
        return centernet.decode_centernet(
            outputs["heatmap"], outputs["size"], outputs["offset"], stride=head["stride"],
            score_threshold=threshold, max_detections=head.get("max_detections", 100),
            nms_iou=head.get("nms_iou"), tile_hw=tile_hw, heatmap_quant=quant.get("heatmap"),
            size_quant=quant.get("size"), offset_quant=quant.get("offset"))
    if kind in ("yolov8", "yolo11"):
        return yolo.decode_yolo(
            outputs["predictions"], score_threshold=threshold,
            max_detections=head.get("max_detections", 300), nms_iou=head.get("nms_iou", 0.5),
            tile_hw=tile_hw, quant=quant.get("predictions"))
    raise ValueError(f"head type {kind!r} has no decoder; known: centernet, yolov8, yolo11")


__all__ = ["Detections", "decode", "dequantize"]
