# cython: language_level=3
"""Tile preprocessing, compiled twin of edge/kernels/preprocess.py:preprocess_reference.

A thin wrapper over ext/preprocess_core.c: it reads the frame, LUT and output through the buffer
protocol (no numpy C-API, no copy: the frame is any strided view), checks every shape again so
that a direct call with wrong arguments raises instead of crashing, and runs the core without the
GIL.
"""
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_STRIDES, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
from libc.stdint cimport int64_t
from libc.string cimport memset

cdef extern from "preprocess_core.h":
    enum: EDGE_PP_MAX_CHANNELS
    enum: EDGE_PP_THRESHOLD_NONE
    ctypedef struct edge_pp_args:
        const unsigned char *frame
        int64_t height, width, n_bands
        int64_t stride_y, stride_x, stride_b
        int raw_size
        const int64_t *origins
        int64_t n_tiles, tile_h, tile_w
        const int64_t *bands
        int64_t n_channels
        const void *lut
        void *out
        int out_size
        int out_nhwc
        int64_t bright_threshold
        int stream
        double *band_mean
        Py_ssize_t band_mean_stride_n, band_mean_stride_c
        double *bright_fraction
        Py_ssize_t bright_stride
        double *nodata_fraction
        Py_ssize_t nodata_stride
    void edge_preprocess_init() nogil
    int edge_preprocess_tiles(const edge_pp_args *args, int portable) nogil
    const char *edge_preprocess_path() nogil

edge_preprocess_init()

#: buffer-protocol item formats (native byte order) -> bytes per item
_RAW_FORMATS = {"B": 1, "H": 2}        # uint8, uint16 frames
_OUT_FORMATS = {"b": 1, "B": 1, "f": 4}  # int8, uint8, float32 LUT / output


cdef str _format(Py_buffer *view):
    fmt = (<bytes>view.format).decode("ascii") if view.format != NULL else "B"
    return fmt[1:] if fmt[:1] in ("@", "=") else fmt


def preprocess_path():
    """The fast path used here for uint8 frames into int8/uint8 outputs (NCHW; NHWC up to 4
    channels): 'avx512vbmi', 'neon' or 'scalar'. uint16 frames and float32 outputs are scalar."""
    return edge_preprocess_path().decode("ascii")


def preprocess_tiles(frame, const int64_t[:, ::1] origins, Py_ssize_t tile_h, Py_ssize_t tile_w,
                     const int64_t[::1] bands, lut, out, bint out_nhwc, bright_threshold,
                     double[:, :] band_mean, double[:] bright_fraction, double[:] nodata_fraction,
                     *, bint portable=False, stream=None):
    """Same arguments as preprocess_reference: frame (H, W, bands) uint8/uint16, any strides;
    out (N, C, th, tw) or, with out_nhwc, (N, th, tw, C), C-contiguous, of the LUT's item type.
    Test hooks: portable=True forces the scalar path; stream=True/False forces non-temporal stores
    on/off (None: on for large outputs)."""
    cdef Py_buffer fv, lv, ov
    cdef edge_pp_args a
    cdef int rc
    cdef Py_ssize_t n_tiles = origins.shape[0], C = bands.shape[0], k
    memset(&a, 0, sizeof(a))
    if origins.shape[1] != 2:
        raise ValueError(f"origins must have shape (N, 2), got "
                         f"({origins.shape[0]}, {origins.shape[1]})")
    if tile_h < 1 or tile_w < 1:
        raise ValueError(f"tile_h and tile_w must be >= 1, got {tile_h}, {tile_w}")
    if C < 1 or C > EDGE_PP_MAX_CHANNELS:
        raise ValueError(f"bands must name 1..{EDGE_PP_MAX_CHANNELS} channels, got {C}")
    if bright_threshold < 0:
        raise ValueError(f"bright_threshold must be >= 0, got {bright_threshold}")
    a.bright_threshold = min(bright_threshold, EDGE_PP_THRESHOLD_NONE)
    a.stream = -1 if stream is None else (1 if stream else 0)
    if band_mean.shape[0] != n_tiles or band_mean.shape[1] != C:
        raise ValueError(f"band_mean must have shape ({n_tiles}, {C})")
    if bright_fraction.shape[0] != n_tiles or nodata_fraction.shape[0] != n_tiles:
        raise ValueError(f"bright_fraction and nodata_fraction must have {n_tiles} entries")

    PyObject_GetBuffer(frame, &fv, PyBUF_STRIDES | PyBUF_FORMAT)
    try:
        fmt = _format(&fv)
        if fv.ndim != 3 or fmt not in _RAW_FORMATS or fv.itemsize != _RAW_FORMATS[fmt]:
            raise ValueError(f"frame must be a 3-D (H, W, bands) uint8 or uint16 buffer, "
                             f"got ndim={fv.ndim} format={fmt!r}")
        if fv.shape[0] < 1 or fv.shape[1] < 1 or fv.shape[2] < 1:
            raise ValueError(f"frame must not be empty, got shape "
                             f"({fv.shape[0]}, {fv.shape[1]}, {fv.shape[2]})")
        a.frame = <const unsigned char *>fv.buf
        a.height, a.width, a.n_bands = fv.shape[0], fv.shape[1], fv.shape[2]
        a.stride_y, a.stride_x, a.stride_b = fv.strides[0], fv.strides[1], fv.strides[2]
        a.raw_size = <int>fv.itemsize
        for k in range(C):
            if bands[k] < 0 or bands[k] >= a.n_bands:
                raise ValueError(f"bands[{k}]={bands[k]} is out of range for a frame with "
                                 f"{a.n_bands} bands")
        for k in range(n_tiles):
            if not (0 <= origins[k, 0] < a.height and 0 <= origins[k, 1] < a.width):
                raise ValueError(f"origins[{k}]=({origins[k, 0]}, {origins[k, 1]}) is outside the "
                                 f"{a.height}x{a.width} frame")

        try:
            PyObject_GetBuffer(lut, &lv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        except BufferError as exc:
            raise ValueError(f"lut must be a C-contiguous buffer: {exc}") from None
        try:
            lfmt = _format(&lv)
            if lv.ndim != 2 or lfmt not in _OUT_FORMATS or lv.itemsize != _OUT_FORMATS[lfmt]:
                raise ValueError(f"lut must be a 2-D int8, uint8 or float32 table, "
                                 f"got ndim={lv.ndim} format={lfmt!r}")
            if lv.shape[0] != C or lv.shape[1] != (1 << (8 * a.raw_size)):
                raise ValueError(f"lut must have shape ({C}, {1 << (8 * a.raw_size)}), "
                                 f"got ({lv.shape[0]}, {lv.shape[1]})")
            try:
                PyObject_GetBuffer(out, &ov, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE)
            except BufferError as exc:
                raise ValueError(f"out must be a writable C-contiguous buffer: {exc}") from None
            try:
                ofmt = _format(&ov)
                if ofmt != lfmt or ov.itemsize != lv.itemsize:
                    raise ValueError(f"out must have the lut's item type {lfmt!r}, got {ofmt!r}")
                shape = (n_tiles, tile_h, tile_w, C) if out_nhwc else (n_tiles, C, tile_h, tile_w)
                if ov.ndim != 4 or (ov.shape[0], ov.shape[1], ov.shape[2], ov.shape[3]) != shape:
                    raise ValueError(f"out must have shape {shape}")
                a.origins = &origins[0, 0] if n_tiles > 0 else NULL
                a.n_tiles, a.tile_h, a.tile_w = n_tiles, tile_h, tile_w
                a.bands = &bands[0]
                a.n_channels = C
                a.lut = lv.buf
                a.out = ov.buf
                a.out_size = <int>ov.itemsize
                a.out_nhwc = out_nhwc
                if n_tiles > 0:
                    a.band_mean = &band_mean[0, 0]
                    a.bright_fraction = &bright_fraction[0]
                    a.nodata_fraction = &nodata_fraction[0]
                a.band_mean_stride_n = band_mean.strides[0]
                a.band_mean_stride_c = band_mean.strides[1]
                a.bright_stride = bright_fraction.strides[0]
                a.nodata_stride = nodata_fraction.strides[0]
                with nogil:
                    rc = edge_preprocess_tiles(&a, portable)
                if rc != 0:
                    raise ValueError(f"preprocess core rejected its arguments (code {rc})")
            finally:
                PyBuffer_Release(&ov)
        finally:
            PyBuffer_Release(&lv)
    finally:
        PyBuffer_Release(&fv)
