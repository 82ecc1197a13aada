"""Tile plan: where the tiles of a frame start.

Grid with a fixed stride (tile - overlap). The last row and column are shifted inward so that every
tile lies fully inside the frame (no padding) -- the usual choice for detectors, which behave worse
on padded borders than on a little extra overlap. Only an axis shorter than the tile gets a single,
padded tile; its valid extent is reported so that later stages can ignore the padding.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from edge.kernels import _backend

_fast = _backend.compiled("tiling")


@dataclass(frozen=True, eq=False)
class TilePlan:
    """Tile origins of one frame, row-major, as (y, x) pixel coordinates of each tile's top-left."""

    frame_h: int
    frame_w: int
    tile_h: int
    tile_w: int
    overlap_y: int
    overlap_x: int
    origins: np.ndarray  # (n_tiles, 2) int64, (y, x)
    rows: int
    cols: int

    @property
    def n_tiles(self) -> int:
        return self.rows * self.cols

    @property
    def stride_y(self) -> int:
        return self.tile_h - self.overlap_y

    @property
    def stride_x(self) -> int:
        return self.tile_w - self.overlap_x

    @property
    def valid_h(self) -> int:
        """Rows of a tile that hold frame pixels (< tile_h only when the frame is shorter)."""
        return min(self.frame_h, self.tile_h)

    @property
    def valid_w(self) -> int:
        return min(self.frame_w, self.tile_w)

    @property
    def padded(self) -> bool:
        return self.frame_h < self.tile_h or self.frame_w < self.tile_w


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints (h, w), got {value!r}") from None
    for v in (a, b):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise ValueError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    return int(a), int(b)


def _positive(value, name: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return int(value)


def axis_count(frame: int, tile: int, overlap: int) -> int:
    """Number of tiles along one axis."""
    if frame <= tile:
        return 1
    stride = tile - overlap
    return -(-(frame - tile) // stride) + 1  # ceil division, then the first tile


def plan_reference(frame_h: int, frame_w: int, tile_h: int, tile_w: int,
                   overlap_y: int, overlap_x: int, out: np.ndarray) -> None:
    """Fill `out` (rows*cols, 2) with tile origins. Arguments are already validated."""
    rows = axis_count(frame_h, tile_h, overlap_y)
    cols = axis_count(frame_w, tile_w, overlap_x)
    ys = np.minimum(np.arange(rows, dtype=np.int64) * (tile_h - overlap_y), max(frame_h - tile_h, 0))
    xs = np.minimum(np.arange(cols, dtype=np.int64) * (tile_w - overlap_x), max(frame_w - tile_w, 0))
    out[:, 0] = np.repeat(ys, cols)
    out[:, 1] = np.tile(xs, rows)


def plan_tiles(frame_h: int, frame_w: int, tile, overlap=0) -> TilePlan:
    """Plan the tiles of a frame_h x frame_w frame.

    tile: int (square) or (tile_h, tile_w); overlap: pixels shared by neighbouring tiles, int or
    (overlap_y, overlap_x), 0 <= overlap < tile. Raises ValueError naming the bad argument.
    """
    frame_h = _positive(frame_h, "frame_h")
    frame_w = _positive(frame_w, "frame_w")
    tile_h, tile_w = _pair(tile, "tile")
    overlap_y, overlap_x = _pair(overlap, "overlap")
    for v, name in ((tile_h, "tile height"), (tile_w, "tile width")):
        if v <= 0:
            raise ValueError(f"tile: {name} must be > 0, got {v}")
    for ov, t, name in ((overlap_y, tile_h, "overlap_y"), (overlap_x, tile_w, "overlap_x")):
        if ov < 0:
            raise ValueError(f"overlap: {name} must be >= 0, got {ov}")
        if ov >= t:
            raise ValueError(f"overlap: {name}={ov} must be smaller than the tile size {t}")
    rows = axis_count(frame_h, tile_h, overlap_y)
    cols = axis_count(frame_w, tile_w, overlap_x)
    origins = np.empty((rows * cols, 2), dtype=np.int64)
    impl = _fast.plan_tiles if _fast is not None else plan_reference
    impl(frame_h, frame_w, tile_h, tile_w, overlap_y, overlap_x, origins)
    return TilePlan(frame_h, frame_w, tile_h, tile_w, overlap_y, overlap_x, origins, rows, cols)
