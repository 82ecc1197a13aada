"""Tile preprocessing: raw sensor frame -> model input tensors, one pass, with per-tile statistics.

For every tile of a tile plan and every output channel c, each pixel's raw value r of the source
band bands[c] becomes lut[c, r]. The LUT folds the whole per-pixel arithmetic into one table:
radiometric gain / offset, clipping to the sensor's bit depth, normalisation (mean, std) and
quantisation to the model's int8 / uint8 input (scale, zero point) -- or float32 for fp32 models.
It is built once per configuration (build_lut), so the per-frame kernel only reads, looks up and
writes. Pixels of a tile that fall outside the frame (only when the frame is smaller than a tile)
read as raw 0, the sensor's no-data value.

In the same pass the kernel gathers what tile screening needs: the mean raw value of each output
channel, the fraction of pixels bright in every channel (clouds are bright in all bands) and the
fraction of pixels that are 0 in every channel (no data).

preprocess_reference is the readable numpy spec; the compiled twin (ext/preprocess.pyx +
ext/preprocess_core.c) gives bit-identical results.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from edge.kernels import _backend

_fast = _backend.compiled("preprocess")

#: Raw frame dtypes and the number of LUT entries each needs (one per possible raw value).
LUT_ENTRIES = {np.dtype(np.uint8): 256, np.dtype(np.uint16): 65536}
#: Model input dtypes a LUT can produce.
OUT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.float32))
#: Frames carry 1..MAX_BANDS bands.
MAX_BANDS = 16
#: Output channels per call (the compiled kernel keeps per-channel state on the stack).
MAX_CHANNELS = 64
#: Largest sensor bit depth a LUT clips to (uint16 raw values).
MAX_BIT_DEPTH = 16
#: Thresholds above every uint16 raw value all mean "no pixel is bright"; larger ones are clamped.
THRESHOLD_NONE = 65536

LAYOUTS = ("HWC", "CHW")
OUT_LAYOUTS = ("NCHW", "NHWC")


# ---- LUT ----------------------------------------------------------------------------------------

def _dtype_among(value, allowed, name: str, what: str) -> np.dtype:
    """np.dtype(value) when it is one of `allowed`, else a ValueError naming the argument."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise ValueError(f"{name} must be {what}, got {value!r}") from None
    if dtype not in allowed:
        raise ValueError(f"{name} must be {what}, got {dtype}")
    return dtype


def _per_channel(value, name: str, integral: bool = False) -> np.ndarray:
    """A scalar or a sequence as a 1-D array (length 1 for a scalar)."""
    arr = np.asarray(value)
    if arr.ndim > 1 or arr.size == 0:
        raise ValueError(f"{name} must be a scalar or a non-empty 1-D sequence, got {value!r}")
    if arr.dtype.kind not in ("iu" if integral else "iuf"):  # bools and strings too
        kind = "integers" if integral else "real numbers"
        raise ValueError(f"{name} must hold {kind}, got {value!r}")
    arr = arr.reshape(-1)
    if not integral:
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} must be finite, got {value!r}")
    return arr


def build_lut(raw_dtype, *, gain=1.0, offset=0.0, bit_depth=None, mean=0.0, std=1.0,
              out_dtype, scale=1.0, zero_point=0) -> np.ndarray:
    """Per-channel lookup table (C, K) from raw value to model input; K = 256 (uint8), 65536 (uint16).

    Each parameter is a scalar or a per-channel sequence (C = the longest; scalars and 1-sequences
    broadcast). For each raw value r, in float64:
        v = clip(r * gain + offset, 0, 2**bit_depth - 1)    (bit_depth default: 8 or 16 by raw_dtype)
        n = (v - mean) / std
        float32 out: float32(n)
        int8 / uint8 out: round_half_to_even(n / scale) + zero_point, saturated to the dtype's range
    (scale and zero_point are checked but unused for float32). Raises ValueError naming a bad
    argument.
    """
    raw = _dtype_among(raw_dtype, LUT_ENTRIES, "raw_dtype", "uint8 or uint16")
    out = _dtype_among(out_dtype, OUT_DTYPES, "out_dtype", "int8, uint8 or float32")
    if bit_depth is None:
        bit_depth = 8 * raw.itemsize

    params = {
        "gain": _per_channel(gain, "gain"),
        "offset": _per_channel(offset, "offset"),
        "bit_depth": _per_channel(bit_depth, "bit_depth", integral=True),
        "mean": _per_channel(mean, "mean"),
        "std": _per_channel(std, "std"),
        "scale": _per_channel(scale, "scale"),
        "zero_point": _per_channel(zero_point, "zero_point", integral=True),
    }
    n_channels = max(len(v) for v in params.values())
    for name, v in params.items():
        if len(v) not in (1, n_channels):
            raise ValueError(f"{name} has {len(v)} values; per-channel parameters must have "
                             f"1 or {n_channels} values")
        if name in ("std", "scale") and not (v > 0).all():
            raise ValueError(f"{name} must be > 0, got {v.tolist()}")
    depth = params["bit_depth"]
    if not ((depth >= 1) & (depth <= MAX_BIT_DEPTH)).all():
        raise ValueError(f"bit_depth must be in 1..{MAX_BIT_DEPTH}, got {depth.tolist()}")
    zp = params["zero_point"]
    if out.kind in "iu":
        info = np.iinfo(out)
        if not ((zp >= info.min) & (zp <= info.max)).all():
            raise ValueError(f"zero_point must be in {info.min}..{info.max} for {out}, "
                             f"got {zp.tolist()}")

    # (C, 1) columns against the (1, K) row of raw values
    col = {name: np.broadcast_to(v.astype(np.float64), (n_channels,))[:, None]
           for name, v in params.items()}
    r = np.arange(LUT_ENTRIES[raw], dtype=np.float64)[None, :]
    with np.errstate(over="ignore", invalid="ignore"):  # huge gains saturate; never NaN (all finite)
        v = np.clip(r * col["gain"] + col["offset"], 0.0, 2.0 ** col["bit_depth"] - 1.0)
        n = (v - col["mean"]) / col["std"]
        if out == np.float32:
            return np.ascontiguousarray(n.astype(np.float32))
        q = np.rint(n / col["scale"]) + col["zero_point"]  # rint: round half to even
        info = np.iinfo(out)
        return np.ascontiguousarray(np.clip(q, info.min, info.max).astype(out))


# ---- statistics -----------------------------------------------------------------------------------

@dataclass(eq=False)
class TileStats:
    """Per-tile statistics gathered during preprocessing (padding pixels count as raw 0)."""

    band_mean: np.ndarray        # (N, C) float64: mean raw value of output channel c's source band
    bright_fraction: np.ndarray  # (N,) float64: pixels >= bright_threshold in every output channel
    nodata_fraction: np.ndarray  # (N,) float64: pixels == 0 in every output channel

    @classmethod
    def empty(cls, n_tiles: int, n_channels: int) -> "TileStats":
        """Zero-filled statistics for n_tiles tiles of n_channels channels (allocate once, reuse)."""
        return cls(np.zeros((n_tiles, n_channels), np.float64), np.zeros(n_tiles, np.float64),
                   np.zeros(n_tiles, np.float64))

    @property
    def n_tiles(self) -> int:
        return self.band_mean.shape[0]


# ---- the reference kernel -------------------------------------------------------------------------

def preprocess_reference(frame: np.ndarray, origins: np.ndarray, tile_h: int, tile_w: int,
                         bands: np.ndarray, lut: np.ndarray, out: np.ndarray, out_nhwc: bool,
                         bright_threshold: int, band_mean: np.ndarray, bright_fraction: np.ndarray,
                         nodata_fraction: np.ndarray) -> None:
    """Fill `out` and the statistics. Arguments are already validated: frame (H, W, bands) view,
    origins (N, 2) int64, bands (C,) int64, lut (C, K), out (N, C, th, tw) or (N, th, tw, C)."""
    height, width, _ = frame.shape
    n_channels = len(bands)
    out_nchw = out.transpose(0, 3, 1, 2) if out_nhwc else out  # a view: writes land in `out`
    n_pixels = tile_h * tile_w
    for n, (y, x) in enumerate(origins.tolist()):
        valid_h, valid_w = min(tile_h, height - y), min(tile_w, width - x)
        raw = np.zeros((n_channels, tile_h, tile_w), dtype=frame.dtype)  # padding reads as 0
        tile = frame[y:y + valid_h, x:x + valid_w][:, :, bands]  # (valid_h, valid_w, C), a copy
        raw[:, :valid_h, :valid_w] = tile.transpose(2, 0, 1)
        for c in range(n_channels):
            out_nchw[n, c] = np.take(lut[c], raw[c])
        sums = raw.reshape(n_channels, -1).sum(axis=1, dtype=np.uint64)  # exact
        band_mean[n] = sums / np.float64(n_pixels)
        bright = (raw >= bright_threshold).all(axis=0)
        nodata = (raw == 0).all(axis=0)
        bright_fraction[n] = np.float64(np.count_nonzero(bright)) / np.float64(n_pixels)
        nodata_fraction[n] = np.float64(np.count_nonzero(nodata)) / np.float64(n_pixels)


# ---- validation ---------------------------------------------------------------------------------

def _int(value, name: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def _frame_view(frame, layout) -> np.ndarray:
    """The frame as an (H, W, bands) view, whatever its layout and strides (never a copy)."""
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame must be a numpy array (or np.memmap), got {type(frame).__name__}")
    if frame.dtype not in LUT_ENTRIES:
        raise TypeError(f"frame dtype must be uint8 or uint16 (native byte order), "
                        f"got {frame.dtype}")
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if frame.ndim == 2:
        view = frame[:, :, None]
    elif frame.ndim == 3:
        view = frame if layout == "HWC" else frame.transpose(1, 2, 0)
    else:
        raise ValueError(f"frame must be 2-D (H, W) or 3-D ({layout}), got shape {frame.shape}")
    height, width, n_bands = view.shape
    if height < 1 or width < 1:
        raise ValueError(f"frame must not be empty, got shape {frame.shape}")
    if not 1 <= n_bands <= MAX_BANDS:
        raise ValueError(f"frame must have 1..{MAX_BANDS} bands ({layout}), got {n_bands} "
                         f"(shape {frame.shape})")
    return view


def _origins(origins, height: int, width: int) -> np.ndarray:
    arr = np.asarray(origins)
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        raise TypeError(f"origins must hold integers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"origins must have shape (N, 2) of (y, x), got {arr.shape}")
    if arr.size and arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise ValueError("origins: value out of int64 range")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    bad = (arr[:, 0] < 0) | (arr[:, 0] >= height) | (arr[:, 1] < 0) | (arr[:, 1] >= width)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"origins[{k}]=({arr[k, 0]}, {arr[k, 1]}) is outside the "
                         f"{height}x{width} frame (need 0 <= y < H, 0 <= x < W)")
    return arr


def _bands(bands, n_bands: int) -> np.ndarray:
    if isinstance(bands, (str, bytes)) or np.ndim(bands) != 1:
        raise ValueError(f"bands must be a 1-D sequence of band indices, got {bands!r}")
    arr = np.asarray(bands)
    if arr.size == 0:
        raise ValueError("bands must name at least one band")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"bands must hold integer band indices, got {bands!r}")
    if len(arr) > MAX_CHANNELS:
        raise ValueError(f"bands must name at most {MAX_CHANNELS} output channels, got {len(arr)}")
    bad = (arr < 0) | (arr >= n_bands)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"bands[{k}]={arr[k]} is out of range for a frame with {n_bands} bands")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _lut(lut, n_channels: int, raw_dtype: np.dtype) -> np.ndarray:
    if not isinstance(lut, np.ndarray):
        raise TypeError(f"lut must be a numpy array from build_lut, got {type(lut).__name__}")
    if lut.dtype not in OUT_DTYPES:
        raise TypeError(f"lut dtype must be int8, uint8 or float32 (native byte order), "
                        f"got {lut.dtype}")
    expected = (n_channels, LUT_ENTRIES[raw_dtype])
    if lut.shape != expected:
        raise ValueError(f"lut must have shape {expected} (one row per band in bands, one entry per "
                         f"{raw_dtype} raw value), got {lut.shape}")
    return np.ascontiguousarray(lut)  # no copy for a table from build_lut


def _out(out, out_layout, n_tiles: int, n_channels: int, tile_h: int, tile_w: int,
         dtype: np.dtype) -> bool:
    if not isinstance(out_layout, str) or out_layout not in OUT_LAYOUTS:
        raise ValueError(f"out_layout must be one of {OUT_LAYOUTS}, got {out_layout!r}")
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    nhwc = out_layout == "NHWC"
    expected = ((n_tiles, tile_h, tile_w, n_channels) if nhwc
                else (n_tiles, n_channels, tile_h, tile_w))
    if out.dtype != dtype:
        raise TypeError(f"out dtype must be the lut's dtype {dtype}, got {out.dtype}")
    if out.shape != expected:
        raise ValueError(f"out must have shape {expected} for {out_layout}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    return nhwc


def _stats(stats, n_tiles: int, n_channels: int) -> TileStats:
    if stats is None:
        return TileStats.empty(n_tiles, n_channels)
    if not isinstance(stats, TileStats):
        raise TypeError(f"stats must be a TileStats or None, got {type(stats).__name__}")
    for name, shape in (("band_mean", (n_tiles, n_channels)), ("bright_fraction", (n_tiles,)),
                        ("nodata_fraction", (n_tiles,))):
        arr = getattr(stats, name)
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float64 or arr.shape != shape:
            raise ValueError(f"stats.{name} must be a float64 array of shape {shape}")
        if not arr.flags.writeable:
            raise ValueError(f"stats.{name} must be writeable")
    return stats


# ---- public entry point -------------------------------------------------------------------------

def preprocess_tiles(frame: np.ndarray, origins, tile_h: int, tile_w: int, *, bands,
                     lut: np.ndarray, out: np.ndarray, layout: str = "HWC",
                     out_layout: str = "NCHW", bright_threshold: int,
                     stats: TileStats | None = None) -> TileStats:
    """Preprocess the tiles of one frame into `out`, in one pass, and return their statistics.

    frame: (H, W) or (H, W, bands) "HWC" / (bands, H, W) "CHW", uint8 or uint16, any strides
        (np.memmap, slices, negative strides); read in place, never copied.
    origins: (N, 2) integer (y, x) of each tile's top-left, 0 <= y < H, 0 <= x < W. Tile pixels
        past the frame's edge read as raw 0 (padding).
    bands: the source band of each output channel (C of them; repeats allowed).
    lut: (C, K) from build_lut, K = 256 for uint8 frames, 65536 for uint16.
    out: C-contiguous (N, C, tile_h, tile_w) for "NCHW" or (N, tile_h, tile_w, C) for "NHWC", of
        the lut's dtype; every element is written: out[n, c, i, j] = lut[c, raw(band c, y+i, x+j)].
    bright_threshold: raw value at or above which a pixel is bright (per channel).
    stats: TileStats to fill (shapes (N, C), (N,), (N,)); a new one when None.
    Raises TypeError / ValueError naming the bad argument.
    """
    view = _frame_view(frame, layout)
    height, width, n_bands = view.shape
    tile_h = _int(tile_h, "tile_h")
    tile_w = _int(tile_w, "tile_w")
    if tile_h < 1 or tile_w < 1:
        raise ValueError(f"tile_h and tile_w must be >= 1, got {tile_h}, {tile_w}")
    origins = _origins(origins, height, width)
    bands = _bands(bands, n_bands)
    lut = _lut(lut, len(bands), view.dtype)
    nhwc = _out(out, out_layout, len(origins), len(bands), tile_h, tile_w, lut.dtype)
    threshold = _int(bright_threshold, "bright_threshold")
    if threshold < 0:
        raise ValueError(f"bright_threshold must be >= 0, got {threshold}")
    threshold = min(threshold, THRESHOLD_NONE)
    stats = _stats(stats, len(origins), len(bands))
    impl = _fast.preprocess_tiles if _fast is not None else preprocess_reference
    impl(view, origins, tile_h, tile_w, bands, lut, out, nhwc, threshold,
         stats.band_mean, stats.bright_fraction, stats.nodata_fraction)
    return stats
