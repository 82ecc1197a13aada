"""Accuracy and speed of a manifest model, through the same stages the flight pipeline runs.

Metrics (average_precision): detections are matched to ground truth per image, greedily by score
(descending; ties keep input order): a detection is a true positive when an unmatched ground-truth
box of its class has IoU >= 0.5 with it (the best such box is taken), so each ground truth matches
at most one detection. AP50 is the area under the precision-recall curve with all-point
interpolation (PASCAL VOC 2010+: precision made monotone from the right, summed where recall
changes), averaged over the classes that have ground truth. Precision and recall are also reported
at one score threshold (the head's).

evaluate_model runs frames through manifest -> backend -> head decoder (per-tile NMS) -> shift to
frame pixels -> cross-tile merge, on generated scenes (models.scenes, seeds from a held-out range the
training never uses) or on one annotated image of any size, and measures per-tile latency.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from edge.heads import Detections, decode
from edge.kernels.nms import DEFAULT_IOU_THRESHOLD, merge_boxes
from edge.kernels.preprocess import THRESHOLD_NONE, build_lut, preprocess_tiles
from edge.kernels.tiling import plan_tiles
from edge.manifest import Manifest, load_manifest

#: IoU at which a detection matches a ground-truth box (the "50" of AP50).
MATCH_IOU = 0.5
#: First seed of the held-out generated scenes; training and validation use seeds below it.
HELD_OUT_SEED_BASE = 1_000_000
#: Decoding for evaluation keeps scores down to this, so the PR curve is traced almost to its end.
EVAL_SCORE_FLOOR = 0.01
#: Untimed runs before the first timed tile (allocation and first-touch costs are not latency).
WARMUP_RUNS = 3
#: Tile overlap (pixels) for images larger than a tile, unless the manifest entry's "tiling" says.
DEFAULT_TILE_OVERLAP = 64


# ---- matching and metrics ---------------------------------------------------------------------

def box_iou(a, b) -> np.ndarray:
    """(N, M) IoU of x1 y1 x2 y2 boxes, float64; 0 where the union is empty."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections(det_boxes, det_scores, gt_boxes, det_classes=None, gt_classes=None,
                     iou_threshold: float = MATCH_IOU) -> np.ndarray:
    """True-positive flag of each detection of one image (in the detections' own order)."""
    det_scores = np.asarray(det_scores).reshape(-1)
    n_det, gt_boxes = len(det_scores), np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    det_cls = np.zeros(n_det, np.int64) if det_classes is None else np.asarray(det_classes).reshape(-1)
    gt_cls = np.zeros(len(gt_boxes), np.int64) if gt_classes is None else np.asarray(gt_classes).reshape(-1)
    tp = np.zeros(n_det, bool)
    if n_det == 0 or len(gt_boxes) == 0:
        return tp
    iou = box_iou(det_boxes, gt_boxes)
    iou[det_cls[:, None] != gt_cls[None, :]] = -1.0
    free = np.ones(len(gt_boxes), bool)
    for d in np.argsort(-det_scores.astype(np.float64), kind="stable"):
        row = np.where(free, iou[d], -1.0)
        g = int(np.argmax(row))
        if row[g] >= iou_threshold:
            tp[d], free[g] = True, False
    return tp


def _as_dets(item):
    if isinstance(item, Detections) or len(item) == 3:
        boxes, scores, classes = item
    else:
        (boxes, scores), classes = item, None
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.zeros(len(scores), np.int64) if classes is None else np.asarray(classes, np.int64).reshape(-1)
    return np.asarray(boxes, np.float64).reshape(-1, 4), scores, classes


def _as_gt(item):
    if isinstance(item, tuple) and len(item) == 2:
        boxes, classes = item
    else:
        boxes, classes = item, None
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.zeros(len(boxes), np.int64) if classes is None else np.asarray(classes, np.int64).reshape(-1)
    return boxes, classes


def ap_all_point(tp_ranked, n_gt: int) -> float:
    """All-point interpolated AP of detections ranked by score (tp flags in rank order)."""
    tp = np.asarray(tp_ranked, bool)
    if n_gt == 0:
        return 1.0 if tp.size == 0 else 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(tp) + 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone from the right
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def average_precision(detections, ground_truths, *, score_threshold: float | None = None,
                      iou_threshold: float = MATCH_IOU) -> dict:
    """AP (all-point) and precision / recall at score_threshold over a set of images.

    detections: per image, a Detections or (boxes, scores[, classes]); ground_truths: per image,
    boxes (N, 4) or (boxes, classes). Returns {"ap50", "precision", "recall", "threshold", "n_images",
    "n_gt", "n_det", "tp"} (n_det and tp at the threshold; "ap50" is AP at iou_threshold).
    Conventions: AP averages over classes with ground truth (no ground truth at all: 1.0 without
    detections, else 0.0); precision with no detection at the threshold is 0.0 (1.0 when there is
    no ground truth either); recall without ground truth is 1.0.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"detections ({len(detections)} images) and ground_truths "
                         f"({len(ground_truths)}) must cover the same images")
    scores, classes, tps, gt_classes = [], [], [], []
    for det, gt in zip(detections, ground_truths):
        db, ds, dc = _as_dets(det)
        gb, gc = _as_gt(gt)
        tps.append(match_detections(db, ds, gb, dc, gc, iou_threshold))
        scores.append(ds), classes.append(dc), gt_classes.append(gc)
    scores, classes, tp = (np.concatenate(x) if x else np.zeros(0) for x in (scores, classes, tps))
    tp = tp.astype(bool)
    gt_cls = np.concatenate(gt_classes) if gt_classes else np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")  # image order, then detection order on ties
    per_class = [ap_all_point(tp[order][classes[order] == c], int(np.sum(gt_cls == c)))
                 for c in np.unique(gt_cls)]
    n_gt = len(gt_cls)
    ap = float(np.mean(per_class)) if per_class else (1.0 if len(scores) == 0 else 0.0)
    t = -np.inf if score_threshold is None else float(score_threshold)
    kept = scores >= t
    n_det, n_tp = int(kept.sum()), int(tp[kept].sum())
    precision = n_tp / n_det if n_det else (1.0 if n_gt == 0 else 0.0)
    recall = n_tp / n_gt if n_gt else 1.0
    return {"ap50": ap, "precision": precision, "recall": recall,
            "threshold": None if score_threshold is None else float(score_threshold),
            "n_images": len(ground_truths), "n_gt": n_gt, "n_det": n_det, "tp": n_tp}


# ---- running a model over frames ----------------------------------------------------------------

class FrameDetector:
    """frame (H, W, C) uint8/uint16 -> Detections in frame pixels: tile plan, LUT preprocessing,
    backend per tile, head decoder, shift, cross-tile merge. Records per-tile timings."""

    def __init__(self, model, backend, *, overlap: int = DEFAULT_TILE_OVERLAP,
                 score_threshold: float | None = None):
        self.model, self.backend = model, backend
        self.overlap = overlap
        self.score_threshold = score_threshold
        self.tile_hw = model.tile_hw
        self._luts = {}
        self.tile_ms: list[float] = []    # backend.run per tile
        self.decode_ms: list[float] = []  # head decoder per tile

    def _lut(self, raw_dtype) -> np.ndarray:
        key = np.dtype(raw_dtype)
        if key not in self._luts:
            f, m = self.backend.file, self.model
            self._luts[key] = build_lut(key, bit_depth=m.bit_depth, mean=list(m.mean), std=list(m.std),
                                        out_dtype=f.input.dtype, scale=f.input.scale,
                                        zero_point=f.input.zero_point)
        return self._luts[key]

    def __call__(self, frame: np.ndarray) -> Detections:
        frame = np.asarray(frame)
        if frame.ndim == 2:
            frame = frame[:, :, None]
        channels = self.model.channels
        if frame.ndim != 3 or frame.shape[2] < channels:
            raise ValueError(f"frame must be (H, W, >= {channels}) HWC, got shape {frame.shape}")
        th, tw = self.tile_hw
        plan = plan_tiles(frame.shape[0], frame.shape[1], (th, tw), self.overlap)
        lut = self._lut(frame.dtype)
        nchw = self.model.layout == "NCHW"
        shape = (plan.n_tiles, channels, th, tw) if nchw else (plan.n_tiles, th, tw, channels)
        batch = np.empty(shape, lut.dtype)
        preprocess_tiles(frame, plan.origins, th, tw, bands=list(range(channels)), lut=lut, out=batch,
                         out_layout=self.model.layout, bright_threshold=THRESHOLD_NONE)
        head = self.model.head
        boxes, scores, classes = [], [], []
        for i, (y, x) in enumerate(plan.origins.tolist()):
            t0 = time.perf_counter()
            out = self.backend.run(batch[i:i + 1])
            t1 = time.perf_counter()
            det = decode(head, {r: o[0] for r, o in out.items()}, tile_hw=(plan.valid_h, plan.valid_w),
                         score_threshold=self.score_threshold)
            self.decode_ms.append((time.perf_counter() - t1) * 1e3)
            self.tile_ms.append((t1 - t0) * 1e3)
            boxes.append(det.boxes + np.array([x, y, x, y], np.float32))
            scores.append(det.scores), classes.append(det.classes)
        det = Detections(np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes))
        if plan.n_tiles == 1:
            return det
        iou = head.get("nms_iou")
        merged = merge_boxes(det.boxes, det.scores, det.classes, mode="nms", metric="iou",
                             threshold=DEFAULT_IOU_THRESHOLD if iou is None else iou)
        return Detections(merged.boxes, merged.scores, merged.class_ids)


def read_image(path) -> np.ndarray:
    """An image file as an (H, W, C) array: .npy as saved (any dtype, e.g. 12-bit uint16), other
    files through pillow as RGB uint8 (pillow is needed only then; evaluation side only)."""
    if str(path).endswith(".npy"):
        return np.load(path)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_boxes_csv(path) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth from a CSV: columns xmin,ymin,xmax,ymax (or x1,y1,x2,y2) by header name, else
    the first four columns; an optional integer "class_id" column (default class 0)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    header = [c.strip().lower() for c in rows[0]]
    try:
        [float(c) for c in rows[0][:4]]
        cols, cls_col = [0, 1, 2, 3], None
    except ValueError:
        rows = rows[1:]
        for names in (("xmin", "ymin", "xmax", "ymax"), ("x1", "y1", "x2", "y2")):
            if all(n in header for n in names):
                cols = [header.index(n) for n in names]
                break
        else:
            cols = [0, 1, 2, 3]
        cls_col = header.index("class_id") if "class_id" in header else None
    boxes = np.array([[float(r[c]) for c in cols] for r in rows], np.float32).reshape(-1, 4)
    classes = (np.zeros(len(rows), np.int64) if cls_col is None
               else np.array([int(r[cls_col]) for r in rows], np.int64))
    return boxes, classes


def _median(values) -> float | None:
    return round(float(np.median(values)), 4) if values else None


def evaluate_model(name: str, variant: str | None = None, *, scenes: int | None = None, image=None,
                   boxes=None, classes=None, manifest=None, threads: int = 1,
                   seed_base: int = HELD_OUT_SEED_BASE, scene_size: int = 256,
                   overlap: int | None = None, score_threshold: float | None = None,
                   backend_options: dict | None = None) -> dict:
    """AP50 / precision / recall (at the head's score threshold, or score_threshold) of a manifest
    model and its per-tile latency on `threads` threads (median over tiles of backend.run).

    Either scenes=N generated scenes (models.scenes.generate_scene(seed_base + i, scene_size,
    scene_size)), or image= an (H, W, 3) uint8 array or image file with boxes= (N, 4) array or CSV
    path (classes: optional (N,) ints). manifest: a Manifest, a path, or None for the default.
    backend_options go to open_backend (e.g. {"xnnpack": True} for LiteRT).
    """
    from edge.backends import open_backend

    if (scenes is None) == (image is None):
        raise ValueError("give either scenes=N or image=... (with boxes=...)")
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    model = man.model(name)
    file = model.file(variant)
    backend = open_backend(model, file.variant, threads=threads, **(backend_options or {}))
    if overlap is None:
        overlap = int(model.raw.get("tiling", {}).get("overlap", DEFAULT_TILE_OVERLAP))
    threshold = model.head["score_threshold"] if score_threshold is None else float(score_threshold)
    warm = np.zeros((1,) + tuple(model.input_shape[1:]), backend.input_dtype)
    for _ in range(WARMUP_RUNS):
        backend.run(warm)
    detector = FrameDetector(model, backend, overlap=overlap,
                             score_threshold=min(EVAL_SCORE_FLOOR, threshold))
    dets, gts = [], []
    if scenes is not None:
        try:
            from models.scenes import generate_scene
        except ImportError as e:
            raise RuntimeError(f"scenes need models.scenes (run from the repository root): {e}") from e
        if int(scenes) < 1:
            raise ValueError(f"scenes must be >= 1, got {scenes}")
        for i in range(int(scenes)):
            scene = generate_scene(seed_base + i, scene_size, scene_size)
            dets.append(detector(scene.image))
            gts.append((scene.boxes, scene.classes))
        eval_set = (f"{scenes} generated {scene_size}x{scene_size} scenes, seeds "
                    f"{seed_base}..{seed_base + int(scenes) - 1}")
    else:
        label = str(image) if isinstance(image, (str, Path)) else "array"
        frame = read_image(image) if isinstance(image, (str, Path)) else np.asarray(image)
        if boxes is None:
            raise ValueError("image= needs boxes= (an (N, 4) array or a CSV file)")
        if isinstance(boxes, (str, Path)):
            gt_boxes, gt_classes = read_boxes_csv(boxes)
        else:
            gt_boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            gt_classes = np.zeros(len(gt_boxes), np.int64) if classes is None else np.asarray(classes)
        dets.append(detector(frame))
        gts.append((gt_boxes, gt_classes))
        eval_set = (f"image {label} ({frame.shape[1]}x{frame.shape[0]}, {len(gt_boxes)} boxes), "
                    f"tiles {model.tile_hw[0]}x{model.tile_hw[1]} overlap {overlap}")
    metrics = average_precision(dets, gts, score_threshold=threshold)
    result = {"model": name, "variant": file.variant, "runtime": file.runtime,
              **({"backend_options": backend_options} if backend_options else {}), **metrics,
              "eval_set": eval_set, "tiles": len(detector.tile_ms), "threads": threads,
              "tile_latency_ms": _median(detector.tile_ms), "decode_ms": _median(detector.decode_ms)}
    if threads == 1:
        result["tile_latency_ms_1thread"] = result["tile_latency_ms"]
    return result
