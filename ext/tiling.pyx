# cython: language_level=3
"""Tile plan, compiled twin of edge/kernels/tiling.py:plan_reference (same arguments, same result)."""
from libc.stdint cimport int64_t


cdef inline Py_ssize_t _axis_count(Py_ssize_t frame, Py_ssize_t tile, Py_ssize_t overlap) noexcept:
    if frame <= tile:
        return 1
    cdef Py_ssize_t stride = tile - overlap
    return (frame - tile + stride - 1) // stride + 1


def plan_tiles(Py_ssize_t frame_h, Py_ssize_t frame_w, Py_ssize_t tile_h, Py_ssize_t tile_w,
               Py_ssize_t overlap_y, Py_ssize_t overlap_x, int64_t[:, ::1] out):
    """Fill out (rows*cols, 2) with (y, x) origins, row-major; the last row/column shifted inward."""
    if tile_h <= 0 or tile_w <= 0 or overlap_y < 0 or overlap_x < 0 \
            or overlap_y >= tile_h or overlap_x >= tile_w:
        raise ValueError("tile sizes must be > 0 and 0 <= overlap < tile")
    cdef Py_ssize_t rows = _axis_count(frame_h, tile_h, overlap_y)
    cdef Py_ssize_t cols = _axis_count(frame_w, tile_w, overlap_x)
    if out.shape[0] != rows * cols or out.shape[1] != 2:
        raise ValueError(f"out must have shape ({rows * cols}, 2)")
    cdef Py_ssize_t last_y = frame_h - tile_h if frame_h > tile_h else 0
    cdef Py_ssize_t last_x = frame_w - tile_w if frame_w > tile_w else 0
    cdef Py_ssize_t r, c, y, x, k = 0
    with nogil:
        for r in range(rows):
            y = r * (tile_h - overlap_y)
            if y > last_y:
                y = last_y
            for c in range(cols):
                x = c * (tile_w - overlap_x)
                if x > last_x:
                    x = last_x
                out[k, 0] = y
                out[k, 1] = x
                k += 1
