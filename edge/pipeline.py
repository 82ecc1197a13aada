"""The per-frame detection pipeline: frame in, detections in frame pixels out, in bounded memory.

    plan tiles -> for each batch of tiles: preprocess (compiled kernel, into a buffer allocated once)
    -> screen (no-data / cloud, from the kernel's per-tile statistics) -> infer the kept tiles
    -> decode heads (per-tile NMS inside the decoder) -> shift to frame pixels
    -> after the last batch: cross-tile merge (NMS or NMM, IoU or IoS) -> FrameResult

Memory: one batch buffer (batch x C x tile x tile of the model's input dtype) and its statistics are
allocated when the pipeline is built and reused for every batch of every frame; the frame itself is read
through its (memory-mapped) array one batch of tiles at a time, so a 10980 x 10980 x 4 uint16 frame costs
the same working memory as a 1024 x 1024 one. Only the detections grow with the frame. The pages of a
read-only memory-mapped frame count in the process's RSS once touched; the rows no later tile needs are
handed back to the kernel after each batch (madvise MADV_DONTNEED: for a read-only file mapping this
only unmaps them; the page cache keeps the data), so RSS stays flat however big the frame is.

The LUT that turns raw sensor values into model input folds band selection, bit depth, mean / std and
the model's input quantization; it is built once per (dtype, bit depth, bands) and cached.
"""
from __future__ import annotations

import ctypes
import mmap
import time
from dataclasses import dataclass, field

import numpy as np

from edge.heads import Detections, decode
from edge.kernels.nms import merge_boxes
from edge.kernels.preprocess import THRESHOLD_NONE, TileStats, build_lut, preprocess_tiles
from edge.kernels.tiling import plan_tiles
from edge.screen import CLOUD, KEEP, NODATA, ScreenRule, screen_tiles

#: Stage names timed per frame (ms), in pipeline order; `frame` is the whole call.
STAGES = ("plan", "preprocess", "screen", "infer", "decode", "merge")


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)
try:
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):  # pragma: no cover - not Linux / no libc symbol
    _madvise = None


def _file_mapped(array) -> bool:
    """True only for a read-only np.memmap of a file: the one case where dropping pages is harmless
    (on anonymous or copy-on-write memory MADV_DONTNEED would zero the data)."""
    return (_madvise is not None and isinstance(array, np.memmap)
            and getattr(array, "_mmap", None) is not None and getattr(array, "mode", None) == "r")


def release_rows(array: np.ndarray, layout: str, rows: int) -> None:
    """Hand the pages holding rows [0, rows) of a read-only memory-mapped frame back to the kernel.
    Whole pages only, never past those rows; a no-op for any other array."""
    if rows <= 0 or not _file_mapped(array):
        return
    if array.ndim == 3 and layout == "CHW":
        planes = [array[b] for b in range(array.shape[0])]
    else:
        planes = [array]
    for plane in planes:
        if min(plane.strides) <= 0:
            return  # a reversed view: its rows do not start at its data pointer; leave it alone
        # [start, end) lies inside the mapping: the first `rows` rows of this (positive-stride) view
        row_stride = plane.strides[0]
        start = plane.ctypes.data
        end = start + min(rows, plane.shape[0]) * row_stride
        lo = -(-start // _PAGE) * _PAGE   # first whole page inside the rows
        hi = (end // _PAGE) * _PAGE       # ... and the end of the last whole one
        if hi > lo:
            _madvise(lo, hi - lo, _MADV_DONTNEED)


@dataclass
class FrameResult:
    """Detections of one frame in frame pixels, with what the record and housekeeping need."""

    boxes: np.ndarray       # (N, 4) float32 x1 y1 x2 y2
    scores: np.ndarray      # (N,) float32
    class_ids: np.ndarray   # (N,) int64
    tiles_total: int
    tiles_nodata: int
    tiles_cloud: int
    tiles_inferred: int
    frame_hw: tuple
    stage_ms: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def tiles(self) -> tuple:
        return (self.tiles_total, self.tiles_nodata, self.tiles_cloud, self.tiles_inferred)


class FramePipeline:
    """Detections of whole frames with one model backend (see the module docstring).

    model, backend: a manifest ModelEntry and an open edge.backends.Backend.
    overlap: tile overlap in pixels; batch: tiles preprocessed per kernel call.
    score_threshold: None -> the manifest head's. merge / metric / iou_threshold: cross-tile merge.
    bands, bit_depth: the default source band of each model channel and sensor bit depth (a frame's
    sidecar may name its own). screen: ScreenRule; bright_threshold: raw value of a bright pixel.
    """

    def __init__(self, model, backend, *, overlap: int = 32, batch: int = 16,
                 score_threshold: float | None = None, iou_threshold: float = 0.5,
                 merge: str = "nms", metric: str = "iou", max_detections: int = 2000,
                 bands=None, bit_depth: int | None = None, gain=None, offset=0.0,
                 screen: ScreenRule | None = None, bright_threshold: int = THRESHOLD_NONE):
        self.model, self.backend = model, backend
        self.tile_h, self.tile_w = model.tile_hw
        if not 0 <= overlap < min(self.tile_h, self.tile_w):
            raise ValueError(f"overlap must be in 0..{min(self.tile_h, self.tile_w) - 1}, got {overlap}")
        self.overlap, self.batch = int(overlap), int(batch)
        self.channels = model.channels
        self.bands = list(range(self.channels)) if bands is None else [int(b) for b in bands]
        if len(self.bands) != self.channels:
            raise ValueError(f"bands must name {self.channels} source bands (one per model channel), "
                             f"got {self.bands}")
        self.bit_depth, self.gain, self.offset = bit_depth, gain, offset
        head = dict(model.head)
        if score_threshold is not None:
            head["score_threshold"] = float(score_threshold)
        self.head = head
        self.iou_threshold, self.merge, self.metric = float(iou_threshold), merge, metric
        self.max_detections = int(max_detections)
        self.screen = screen or ScreenRule(enabled=False)
        self.bright_threshold = int(bright_threshold)
        self.nchw = model.layout == "NCHW"
        dtype = backend.input_dtype
        shape = ((self.batch, self.channels, self.tile_h, self.tile_w) if self.nchw
                 else (self.batch, self.tile_h, self.tile_w, self.channels))
        self._buf = np.zeros(shape, dtype)                      # reused for every batch
        self._stats = TileStats.empty(self.batch, self.channels)
        self._decision = np.empty(self.batch, np.uint8)
        self._luts: dict = {}

    # ---- preprocessing table ----------------------------------------------------------------------
    def lut_for(self, dtype, bit_depth: int | None, bands) -> np.ndarray:
        """The LUT for raw frames of `dtype` at `bit_depth` feeding `bands` (cached)."""
        dtype = np.dtype(dtype)
        depth = int(bit_depth if bit_depth is not None else (8 if dtype == np.uint8 else
                                                             self.bit_depth or 16))
        key = (dtype, depth, tuple(bands))
        lut = self._luts.get(key)
        if lut is None:
            m, f = self.model, self.backend.file
            gain = self.gain
            if gain is None:  # scale the sensor's full range onto the model's
                gain = (2.0 ** m.bit_depth - 1) / (2.0 ** depth - 1)
            lut = build_lut(dtype, gain=gain, offset=self.offset, bit_depth=m.bit_depth,
                            mean=list(m.mean), std=list(m.std), out_dtype=f.input.dtype,
                            scale=f.input.scale, zero_point=f.input.zero_point)
            if len(self._luts) > 8:  # a handful of sensor modes at most: stay bounded
                self._luts.clear()
            self._luts[key] = lut
        return lut

    # ---- one frame -----------------------------------------------------------------------------------
    def process(self, array: np.ndarray, *, layout: str = "HWC", bands=None,
                bit_depth: int | None = None, heartbeat=None) -> FrameResult:
        """Detections of one frame array ((H, W), (H, W, C) HWC or (C, H, W) CHW; uint8 / uint16).

        heartbeat: optional callable(stage_name) called at each stage of each batch (the supervisor's
        liveness signal). Raises ValueError / TypeError naming a bad frame.
        """
        t_start = time.perf_counter()
        timings = dict.fromkeys(STAGES, 0.0)
        beat = heartbeat or (lambda stage: None)
        bands = self.bands if bands is None else [int(b) for b in bands]
        if array.ndim == 2:
            h, w, n_bands = array.shape[0], array.shape[1], 1
        elif array.ndim == 3:
            h, w, n_bands = (array.shape if layout == "HWC"
                             else (array.shape[1], array.shape[2], array.shape[0]))
        else:
            raise ValueError(f"frame must be 2-D or 3-D, got shape {array.shape}")
        if max(bands) >= n_bands:
            raise ValueError(f"frame has {n_bands} band(s) but the model's channels read bands {bands}")
        lut = self.lut_for(array.dtype, bit_depth, bands)

        t0 = time.perf_counter()
        plan = plan_tiles(h, w, (self.tile_h, self.tile_w), self.overlap)
        timings["plan"] += time.perf_counter() - t0
        counts = np.zeros(3, np.int64)  # KEEP, NODATA, CLOUD
        boxes, scores, classes = [], [], []
        tile_hw = (plan.valid_h, plan.valid_w)
        for b0 in range(0, plan.n_tiles, self.batch):
            origins = plan.origins[b0:b0 + self.batch]
            k = len(origins)
            beat("preprocess")
            t0 = time.perf_counter()
            stats = TileStats(self._stats.band_mean[:k], self._stats.bright_fraction[:k],
                              self._stats.nodata_fraction[:k])
            preprocess_tiles(array, origins, self.tile_h, self.tile_w, bands=bands, lut=lut,
                             out=self._buf[:k], layout=layout if array.ndim == 3 else "HWC",
                             out_layout=self.model.layout, bright_threshold=self.bright_threshold,
                             stats=stats)
            t1 = time.perf_counter()
            decision = screen_tiles(stats.nodata_fraction, stats.bright_fraction, self.screen,
                                    out=self._decision[:k])
            counts += np.bincount(decision, minlength=3)[:3]
            t2 = time.perf_counter()
            timings["preprocess"] += t1 - t0
            timings["screen"] += t2 - t1
            for i in np.flatnonzero(decision == KEEP).tolist():
                beat("infer")
                t0 = time.perf_counter()
                out = self.backend.run(self._buf[i:i + 1])
                t1 = time.perf_counter()
                det = decode(self.head, {r: o[0] for r, o in out.items()}, tile_hw=tile_hw)
                t2 = time.perf_counter()
                timings["infer"] += t1 - t0
                timings["decode"] += t2 - t1
                if len(det.scores):
                    y, x = origins[i]
                    boxes.append(det.boxes + np.array([x, y, x, y], np.float32))
                    scores.append(det.scores)
                    classes.append(det.classes)
            # rows above the next tile's top are done with: give their pages back (memmap only)
            if b0 + k < plan.n_tiles:
                release_rows(array, layout, int(plan.origins[b0 + k, 0]))
        beat("merge")
        t0 = time.perf_counter()
        det = self._merge(boxes, scores, classes, multi_tile=plan.n_tiles > 1)
        timings["merge"] += time.perf_counter() - t0
        stage_ms = {k: v * 1e3 for k, v in timings.items()}
        stage_ms["frame"] = (time.perf_counter() - t_start) * 1e3
        return FrameResult(det.boxes, det.scores, det.classes, plan.n_tiles, int(counts[NODATA]),
                           int(counts[CLOUD]), int(counts[KEEP]), (h, w), stage_ms)

    def _merge(self, boxes, scores, classes, multi_tile: bool) -> Detections:
        if not scores:
            return Detections.empty()
        b, s, c = np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)
        if multi_tile:
            m = merge_boxes(b, s, c, mode=self.merge, metric=self.metric, threshold=self.iou_threshold,
                            max_detections=self.max_detections)
            return Detections(m.boxes, m.scores, m.class_ids)
        order = np.argsort(-s, kind="stable")[:self.max_detections]
        return Detections(b[order], s[order], c[order])


__all__ = ["FramePipeline", "FrameResult", "STAGES"]
