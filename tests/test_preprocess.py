"""Tile preprocessing: compiled == reference on random frames, LUT properties, statistics, errors."""
import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.kernels import preprocess as pp
from edge.kernels.preprocess import TileStats, build_lut, preprocess_tiles
from tests.conftest import compiled_of, examples, reference_only, use_impl

STAT_FIELDS = ("band_mean", "bright_fraction", "nodata_fraction")
#: Thresholds worth trying: everything bright, edges of the uint8 range, beyond it, "none".
THRESHOLDS = [0, 1, 128, 200, 255, 256, 4095, 65535, 65536, 10**12]


def out_buffer(shape, dtype, skew=0, fill=0x5A):
    """A C-contiguous array whose first byte sits `skew` bytes past a 64-byte boundary, filled with
    garbage (so that 'every element is written' is checked too)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + skew - (skew % dtype.itemsize)
    raw[:] = fill
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def out_shape(n, c, th, tw, out_layout):
    return (n, c, th, tw) if out_layout == "NCHW" else (n, th, tw, c)


def assert_same(ref, fast):
    (out_r, st_r), (out_f, st_f) = ref, fast
    assert out_r.dtype == out_f.dtype
    np.testing.assert_array_equal(out_f, out_r)
    for name in STAT_FIELDS:
        np.testing.assert_array_equal(getattr(st_f, name), getattr(st_r, name), err_msg=name)


def run_pair(frame, origins, th, tw, *, bands, lut, layout="HWC", out_layout="NCHW",
             bright_threshold=200, skew=0):
    """The public entry point on the reference, then on the compiled path, each into its own
    (garbage-filled) out buffer."""
    shape = out_shape(len(origins), len(bands), th, tw, out_layout)
    results = []
    for impl, fill in (("reference", 0x5A), ("compiled", 0xA5)):
        out = out_buffer(shape, lut.dtype, skew, fill)
        with use_impl(pp, impl):
            stats = preprocess_tiles(frame, origins, th, tw, bands=bands, lut=lut, out=out,
                                     layout=layout, out_layout=out_layout,
                                     bright_threshold=bright_threshold)
        results.append((out, stats))
    return results


def run_compiled_hooks(frame, origins, th, tw, *, bands, lut, layout, out_layout, bright_threshold,
                       skew, **hooks):
    """The compiled module called directly with its test hooks (portable=, stream=)."""
    fast = compiled_of(pp)
    view = pp._frame_view(frame, layout)
    shape = out_shape(len(origins), len(bands), th, tw, out_layout)
    out = out_buffer(shape, lut.dtype, skew, 0x33)
    stats = TileStats.empty(len(origins), len(bands))
    fast.preprocess_tiles(view, np.ascontiguousarray(origins, np.int64), th, tw,
                          np.ascontiguousarray(bands, np.int64), lut, out, out_layout == "NHWC",
                          min(bright_threshold, pp.THRESHOLD_NONE), stats.band_mean,
                          stats.bright_fraction, stats.nodata_fraction, **hooks)
    return out, stats


def random_lut(rng, raw_dtype, n_channels, out_dtype):
    return build_lut(raw_dtype, gain=rng.uniform(0.5, 3.0, n_channels),
                     offset=float(rng.uniform(-20, 20)), mean=rng.uniform(0, 150, n_channels),
                     std=rng.uniform(0.5, 70, n_channels), out_dtype=out_dtype,
                     scale=float(rng.uniform(0.02, 1.5)),
                     zero_point=int(rng.integers(-20, 20)) if out_dtype == np.int8 else
                     int(rng.integers(0, 40)))


# ---- compiled == reference ----------------------------------------------------------------------

VIEWS = ["contiguous", "sliced", "flip_y", "flip_x", "flip_bands", "step_x", "band_subset", "unaligned",
         "broadcast_x"]


@st.composite
def cases(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    raw_dtype = draw(st.sampled_from([np.uint8, np.uint8, np.uint16]))
    layout = draw(st.sampled_from(["HWC", "CHW"]))
    n_bands = draw(st.one_of(st.sampled_from([1, 3, 3, 4]), st.integers(1, 16)))
    h, w = draw(st.integers(1, 70)), draw(st.integers(1, 150))
    view = draw(st.sampled_from(VIEWS))
    sparse = draw(st.sampled_from([0.0, 0.0, 0.5, 0.9]))  # many zeros: no-data pixels
    two_d = n_bands == 1 and draw(st.booleans())
    n_channels = draw(st.integers(1, 6))
    bands = [draw(st.integers(0, n_bands - 1)) for _ in range(n_channels)]
    th = draw(st.integers(1, 40))
    tw = draw(st.one_of(st.integers(1, 150), st.sampled_from([64, 128])))
    n_tiles = draw(st.integers(0, 5))
    out_dtype = draw(st.sampled_from([np.int8, np.int8, np.uint8, np.float32]))
    out_layout = draw(st.sampled_from(["NCHW", "NCHW", "NHWC"]))
    threshold = draw(st.sampled_from(THRESHOLDS))
    skew = draw(st.sampled_from([0, 1, 4, 16, 37]))

    top = 256 if raw_dtype == np.uint8 else 65536
    shape = (h, w, n_bands) if layout == "HWC" else (n_bands, h, w)
    axes = {"y": 0, "x": 1, "b": 2} if layout == "HWC" else {"y": 1, "x": 2, "b": 0}
    big = rng.integers(0, top, (shape[0] * 2 + 3, shape[1] * 2 + 3, shape[2] * 2 + 3), raw_dtype)
    big[rng.random(big.shape) < sparse] = 0
    big[rng.random(big.shape) < 0.05] = top - 1
    index = [slice(1, 1 + n) for n in shape]
    if view == "step_x":
        index[axes["x"]] = slice(1, 1 + 2 * shape[axes["x"]], 2)
    if view == "band_subset":  # every other band of a frame with twice as many
        index[axes["b"]] = slice(0, 2 * shape[axes["b"]], 2)
    frame = big[tuple(index)]
    if view == "contiguous":
        frame = np.ascontiguousarray(frame)
    elif view.startswith("flip_"):
        flip = [slice(None)] * 3
        flip[axes[view[-1] if view != "flip_bands" else "b"]] = slice(None, None, -1)
        frame = frame[tuple(flip)]
    elif view == "broadcast_x":  # one column repeated: a zero x stride, read-only
        column = [slice(None)] * 3
        column[axes["x"]] = slice(0, 1)
        frame = np.broadcast_to(frame[tuple(column)], shape)
    elif view == "unaligned":  # a byte-offset view: uint16 items off their 2-byte alignment
        raw = np.zeros(frame.nbytes + 1, np.uint8)
        frame = np.ndarray(shape, raw_dtype, buffer=raw.data, offset=1)
        frame[...] = big[tuple(index)]
    assert frame.shape == shape
    if two_d:
        frame = frame[:, :, 0] if layout == "HWC" else frame[0]
    origins = np.stack([rng.integers(0, h, n_tiles), rng.integers(0, w, n_tiles)], axis=1)
    if n_tiles and draw(st.booleans()):  # tiles flush with the bottom-right edge, no padding
        origins[0] = (max(h - th, 0), max(w - tw, 0))
    lut = random_lut(rng, raw_dtype, n_channels, out_dtype)
    return dict(frame=frame, origins=origins, th=th, tw=tw, bands=bands, lut=lut, layout=layout,
                out_layout=out_layout, bright_threshold=threshold, skew=skew)


@settings(max_examples=examples(400), deadline=None)
@given(cases())
def test_compiled_equals_reference(case):
    kw = dict(case)
    frame, origins, th, tw = kw.pop("frame"), kw.pop("origins"), kw.pop("th"), kw.pop("tw")
    ref, fast = run_pair(frame, origins, th, tw, **kw)
    assert_same(ref, fast)
    # the scalar path and forced non-temporal stores give the same answer too
    for hooks in ({"portable": True}, {"stream": True}):
        assert_same(ref, run_compiled_hooks(frame, origins, th, tw, **kw, **hooks))


@pytest.mark.parametrize("skew", [0, 1, 16, 35])
@pytest.mark.parametrize("bands", [[0, 1, 2], [2, 1, 0], [1], [0, 2], [2, 2, 0, 1], [0, 1, 2, 2, 0]])
@pytest.mark.parametrize("layout,out_layout", [("HWC", "NCHW"), ("CHW", "NCHW"), ("HWC", "NHWC"),
                                               ("CHW", "NHWC")])
def test_tile_plan_frames_fast_paths(skew, bands, layout, out_layout):
    """Whole 3-band frames on a real tile plan (tiles inside the frame, widths multiple of 64):
    the SIMD paths, with and without non-temporal stores, on outputs of every alignment."""
    from edge.kernels.tiling import plan_tiles
    rng = np.random.default_rng(len(bands) * 100 + skew)
    hwc = rng.integers(0, 256, (300, 330, 3), np.uint8)
    hwc[:40, :50] = 0          # a no-data corner
    hwc[200:, 250:] = 250      # a bright (cloudy) corner
    frame = hwc if layout == "HWC" else np.ascontiguousarray(hwc.transpose(2, 0, 1))
    plan = plan_tiles(300, 330, (128, 192), (16, 32))
    lut = random_lut(rng, np.uint8, len(bands), np.int8)
    kw = dict(bands=bands, lut=lut, layout=layout, out_layout=out_layout, bright_threshold=200)
    ref, fast = run_pair(frame, plan.origins, 128, 192, skew=skew, **kw)
    assert_same(ref, fast)
    for hooks in ({"stream": True}, {"stream": False}, {"portable": True}):
        assert_same(ref, run_compiled_hooks(frame, plan.origins, 128, 192, skew=skew, **kw, **hooks))


@pytest.mark.parametrize("tw", [300, 513])
@pytest.mark.parametrize("bands", [[0, 1, 2], [0, 1, 2, 2, 1]])
@pytest.mark.parametrize("layout,out_layout", [("HWC", "NCHW"), ("CHW", "NCHW"), ("HWC", "NHWC")])
def test_wide_tiles(tw, bands, layout, out_layout):
    """Rows longer than the kernels' chunks (128 / 256 pixels), ending in partial vectors."""
    rng = np.random.default_rng(tw)
    hwc = rng.integers(0, 256, (40, 700, 3), np.uint8)
    frame = hwc if layout == "HWC" else np.ascontiguousarray(hwc.transpose(2, 0, 1))
    lut = random_lut(rng, np.uint8, len(bands), np.int8)
    kw = dict(bands=bands, lut=lut, layout=layout, out_layout=out_layout, bright_threshold=100)
    origins = [[0, 0], [3, 700 - tw], [20, 650]]
    ref, fast = run_pair(frame, origins, 17, tw, **kw)
    assert_same(ref, fast)
    assert_same(ref, run_compiled_hooks(frame, origins, 17, tw, skew=0, stream=True, **kw))


@pytest.mark.parametrize("raw_dtype,side", [(np.uint8, 4200), (np.uint16, 1100)])
def test_sums_beyond_32_bits(raw_dtype, side):
    """A tile of saturated pixels whose raw sum needs more than 32 bits (read from a zero-stride
    view: the rows are one stored row)."""
    top = np.iinfo(raw_dtype).max
    frame = np.broadcast_to(np.full((1, side, 1), top, raw_dtype), (side, side, 1))
    lut = build_lut(raw_dtype, out_dtype=np.int8, mean=float(top), std=1.0)
    ref, fast = run_pair(frame, [[0, 0]], side, side, bands=[0], lut=lut, bright_threshold=top)
    assert_same(ref, fast)
    assert side * side * int(top) > 2**32 and fast[1].band_mean[0, 0] == top
    assert fast[1].bright_fraction[0] == 1.0 and fast[1].nodata_fraction[0] == 0.0


@pytest.mark.parametrize("raw_dtype", [np.uint8, np.uint16])
def test_memmap_frame(raw_dtype):
    """A frame memory-mapped from a file, read in place (HWC and, through a transposed view, CHW)."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 4096, (50, 61, 4)).astype(raw_dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "frame.raw")
        data.tofile(path)
        frame = np.memmap(path, dtype=raw_dtype, mode="r", shape=data.shape)
        origins = [[0, 0], [10, 40], [49, 60], [30, 0]]
        lut = random_lut(rng, raw_dtype, 3, np.int8)
        for f, layout in ((frame, "HWC"), (frame.transpose(2, 0, 1), "CHW"), (frame[::-1, :, 1:], "HWC")):
            ref, fast = run_pair(f, origins, 20, 64, bands=[2, 0, 1], lut=lut, layout=layout,
                                 bright_threshold=1000)
            assert_same(ref, fast)
        del frame


# ---- what the kernel computes (both implementations) --------------------------------------------

def test_values_padding_and_stats(impl):
    """A hand-checked tile: 2 bands, the tile hangs over the frame's bottom-right corner."""
    frame = np.array([[[0, 0], [5, 0], [9, 9]],
                      [[7, 8], [0, 3], [9, 200]]], np.uint8)  # (H=2, W=3, 2 bands)
    lut = np.stack([np.arange(256, dtype=np.int64) - 128, 127 - np.arange(256) // 2]).astype(np.int8)
    out = np.full((1, 2, 2, 3), 99, np.int8)
    with use_impl(pp, impl):
        stats = preprocess_tiles(frame, [[1, 1]], 2, 3, bands=[0, 1], lut=lut, out=out,
                                 bright_threshold=3)
    raw0 = np.array([[0, 9, 0], [0, 0, 0]])    # band 0 at rows 1.., cols 1..; padding is 0
    raw1 = np.array([[3, 200, 0], [0, 0, 0]])
    np.testing.assert_array_equal(out[0, 0], lut[0][raw0])
    np.testing.assert_array_equal(out[0, 1], lut[1][raw1])
    np.testing.assert_array_equal(stats.band_mean, [[9 / 6, 203 / 6]])
    assert stats.bright_fraction[0] == 1 / 6   # (9, 200) only; (0, 3) is not bright in band 0
    assert stats.nodata_fraction[0] == 4 / 6   # the four padding pixels


def test_layouts_agree(impl):
    """HWC vs CHW input and NCHW vs NHWC output describe the same tensors."""
    rng = np.random.default_rng(3)
    hwc = rng.integers(0, 1024, (40, 50, 3), np.uint16)
    lut = random_lut(rng, np.uint16, 4, np.uint8)
    origins, bands = [[0, 0], [39, 49], [5, 17]], [2, 2, 0, 1]
    with use_impl(pp, impl):
        a = np.empty((3, 4, 16, 24), np.uint8)
        b = np.empty((3, 16, 24, 4), np.uint8)
        sa = preprocess_tiles(hwc, origins, 16, 24, bands=bands, lut=lut, out=a, bright_threshold=500)
        sb = preprocess_tiles(np.ascontiguousarray(hwc.transpose(2, 0, 1)), origins, 16, 24,
                              bands=bands, lut=lut, out=b, layout="CHW", out_layout="NHWC",
                              bright_threshold=500)
    np.testing.assert_array_equal(a, b.transpose(0, 3, 1, 2))
    for name in STAT_FIELDS:
        np.testing.assert_array_equal(getattr(sa, name), getattr(sb, name))


def test_stats_reused_and_two_d_frame(impl):
    frame = np.arange(12, dtype=np.uint8).reshape(3, 4)
    lut = build_lut(np.uint8, out_dtype=np.float32)
    stats = TileStats.empty(2, 1)
    out = np.empty((2, 1, 2, 2), np.float32)
    with use_impl(pp, impl):
        got = preprocess_tiles(frame, [[0, 0], [2, 3]], 2, 2, bands=[0], lut=lut, out=out,
                               bright_threshold=5, stats=stats)
    assert got is stats
    np.testing.assert_array_equal(out[0, 0], [[0, 1], [4, 5]])
    np.testing.assert_array_equal(out[1, 0], [[11, 0], [0, 0]])
    np.testing.assert_array_equal(stats.band_mean[:, 0], [10 / 4, 11 / 4])
    np.testing.assert_array_equal(stats.bright_fraction, [1 / 4, 1 / 4])
    np.testing.assert_array_equal(stats.nodata_fraction, [1 / 4, 3 / 4])


def test_no_tiles(impl):
    frame = np.zeros((4, 4, 3), np.uint8)
    out = np.empty((0, 3, 8, 8), np.int8)
    with use_impl(pp, impl):
        stats = preprocess_tiles(frame, np.empty((0, 2), np.int64), 8, 8, bands=[0, 1, 2],
                                 lut=build_lut(np.uint8, out_dtype=np.int8, mean=[0, 0, 0]),
                                 out=out, bright_threshold=1)
    assert stats.band_mean.shape == (0, 3) and stats.bright_fraction.shape == (0,)


def test_bright_needs_every_channel(impl):
    frame = np.zeros((1, 4, 3), np.uint8)
    frame[0, 0] = (250, 250, 250)   # bright everywhere: counts
    frame[0, 1] = (250, 250, 10)    # bright in two bands only
    frame[0, 2] = (0, 0, 250)       # bright where only band 2 looks
    lut = build_lut(np.uint8, out_dtype=np.int8, mean=[0, 0])
    with use_impl(pp, impl):
        all3 = preprocess_tiles(frame, [[0, 0]], 1, 4, bands=[0, 2], lut=lut,
                                out=np.empty((1, 2, 1, 4), np.int8), bright_threshold=200)
        only2 = preprocess_tiles(frame, [[0, 0]], 1, 4, bands=[2, 2], lut=lut,
                                 out=np.empty((1, 2, 1, 4), np.int8), bright_threshold=200)
    assert all3.bright_fraction[0] == 1 / 4 and only2.bright_fraction[0] == 2 / 4
    assert all3.nodata_fraction[0] == 1 / 4 and only2.nodata_fraction[0] == 1 / 4


# ---- build_lut -----------------------------------------------------------------------------------

def test_lut_round_half_to_even_and_saturation():
    # n = r / 2: .5 cases round to even
    lut = build_lut(np.uint8, out_dtype=np.int8, scale=2.0)
    assert lut.shape == (1, 256) and lut.dtype == np.int8
    assert [int(lut[0, r]) for r in (1, 3, 5, 7, 9)] == [0, 2, 2, 4, 4]
    assert lut[0, 255] == 127 and lut[0, 254] == 127  # 127.5 -> 128 -> saturated; 127 stays
    assert lut[0, 253] == 126  # 126.5 -> 126
    low = build_lut(np.uint8, out_dtype=np.int8, mean=200.0, std=1.0)
    assert low[0, 0] == -128 and low[0, 72] == -128 and low[0, 73] == -127 and low[0, 255] == 55
    u = build_lut(np.uint8, out_dtype=np.uint8, mean=100.0, zero_point=10)
    assert u[0, 0] == 0 and u[0, 90] == 0 and u[0, 91] == 1 and u[0, 255] == 165
    assert build_lut(np.uint8, out_dtype=np.uint8, scale=0.5)[0, 200] == 255


def test_lut_bit_depth_clip_and_gain():
    lut = build_lut(np.uint16, bit_depth=10, out_dtype=np.float32)
    assert lut.shape == (1, 65536) and lut.dtype == np.float32
    assert lut[0, 1023] == 1023 and (lut[0, 1023:] == 1023).all() and lut[0, 5] == 5
    g = build_lut(np.uint16, gain=4.0, offset=-8.0, bit_depth=12, out_dtype=np.float32)
    assert g[0, 0] == 0 and g[0, 2] == 0 and g[0, 3] == 4 and g[0, 1025] == 4092
    assert g[0, 1026] == 4095 and g[0, 65535] == 4095
    assert build_lut(np.uint8, out_dtype=np.float32)[0, 255] == 255  # default depth 8: no clip


def test_lut_per_channel_broadcast():
    lut = build_lut(np.uint8, mean=[0.0, 10.0, 20.0], std=2.0, out_dtype=np.float32)
    assert lut.shape == (3, 256)
    np.testing.assert_array_equal(lut[1, :3], np.float32([-5.0, -4.5, -4.0]))
    assert build_lut(np.uint8, gain=[1.0], mean=[1, 2], out_dtype=np.int8).shape == (2, 256)


@pytest.mark.parametrize("raw_dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("out_dtype", [np.int8, np.uint8, np.float32])
def test_lut_matches_scalar_formula(raw_dtype, out_dtype):
    """Every entry against the formula in plain Python floats (round() is half-to-even too)."""
    gain, offset, depth, mean, std, scale = 1.7, -3.25, 12, 812.5, 97.0, 0.0625
    zp = -5 if out_dtype == np.int8 else 17
    lut = build_lut(raw_dtype, gain=gain, offset=offset, bit_depth=depth, mean=mean, std=std,
                    out_dtype=out_dtype, scale=scale, zero_point=zp)
    step = 1 if raw_dtype == np.uint8 else 97
    info = None if out_dtype == np.float32 else np.iinfo(out_dtype)
    for r in range(0, lut.shape[1], step):
        v = min(max(r * gain + offset, 0.0), 2.0 ** depth - 1)
        n = (v - mean) / std
        want = np.float32(n) if info is None else min(max(round(n / scale) + zp, info.min), info.max)
        assert lut[0, r] == want, r


@pytest.mark.parametrize("kwargs,match", [
    (dict(raw_dtype=np.float32), "raw_dtype"),
    (dict(raw_dtype="nonsense"), "raw_dtype"),
    (dict(out_dtype=np.int16), "out_dtype"),
    (dict(std=0.0), "std"),
    (dict(std=[1.0, -1.0]), "std"),
    (dict(std=float("nan")), "std"),
    (dict(scale=0.0), "scale"),
    (dict(scale=float("inf")), "scale"),
    (dict(gain=float("inf")), "gain"),
    (dict(offset="a"), "offset"),
    (dict(mean=[[1.0]]), "mean"),
    (dict(mean=[]), "mean"),
    (dict(bit_depth=0), "bit_depth"),
    (dict(bit_depth=17), "bit_depth"),
    (dict(bit_depth=10.5), "bit_depth"),
    (dict(zero_point=128), "zero_point"),
    (dict(zero_point=0.5), "zero_point"),
    (dict(out_dtype=np.uint8, zero_point=-1), "zero_point"),
    (dict(mean=[1.0, 2.0], std=[1.0, 2.0, 3.0]), "values"),
])
def test_lut_bad_arguments(kwargs, match):
    args = dict(raw_dtype=np.uint8, out_dtype=np.int8)
    args.update(kwargs)
    raw = args.pop("raw_dtype")
    with pytest.raises(ValueError, match=match):
        build_lut(raw, **args)


# ---- bad arguments -----------------------------------------------------------------------------

def _good():
    frame = np.zeros((20, 30, 3), np.uint8)
    lut = build_lut(np.uint8, mean=[0, 0], out_dtype=np.int8)
    return dict(frame=frame, origins=[[0, 0], [10, 20]], tile_h=8, tile_w=16, bands=[0, 2], lut=lut,
                out=np.empty((2, 2, 8, 16), np.int8), bright_threshold=100)


BAD = [
    (dict(frame=[[1, 2]]), TypeError, "frame"),
    (dict(frame=np.zeros((20, 30, 3), np.float32)), TypeError, "frame dtype"),
    (dict(frame=np.zeros((20, 30, 3), ">u2")), TypeError, "frame dtype"),
    (dict(frame=np.zeros((2, 20, 30, 3), np.uint8)), ValueError, "frame"),
    (dict(frame=np.zeros((20, 30, 17), np.uint8)), ValueError, "bands"),
    (dict(frame=np.zeros((0, 30, 3), np.uint8)), ValueError, "empty"),
    (dict(layout="WHC"), ValueError, "layout"),
    (dict(layout=None), ValueError, "layout"),
    (dict(out_layout="NCWH"), ValueError, "out_layout"),
    (dict(origins=[[0, 0, 0]]), ValueError, "origins"),
    (dict(origins=[[0.5, 0]]), TypeError, "origins"),
    (dict(origins=[[20, 0]]), ValueError, r"origins\[0\]"),
    (dict(origins=[[0, 0], [0, -1]]), ValueError, r"origins\[1\]"),
    (dict(tile_h=0), ValueError, "tile_h"),
    (dict(tile_w=2.0), TypeError, "tile_w"),
    (dict(bands=[0, 3]), ValueError, r"bands\[1\]"),
    (dict(bands=[-1, 0]), ValueError, r"bands\[0\]"),
    (dict(bands=[]), ValueError, "bands"),
    (dict(bands="01"), ValueError, "bands"),
    (dict(bands=[0.0, 1.0]), TypeError, "bands"),
    (dict(lut=np.zeros((2, 256), np.int16)), TypeError, "lut dtype"),
    (dict(lut=np.zeros((3, 256), np.int8)), ValueError, "lut must have shape"),
    (dict(lut=np.zeros((2, 65536), np.int8)), ValueError, "lut must have shape"),
    (dict(lut=[[0] * 256] * 2), TypeError, "lut"),
    (dict(out=np.empty((2, 2, 8, 16), np.uint8)), TypeError, "out dtype"),
    (dict(out=np.empty((2, 2, 16, 8), np.int8)), ValueError, "out must have shape"),
    (dict(out=np.empty((2, 8, 16, 2), np.int8)), ValueError, "out must have shape"),
    (dict(out=np.empty((2, 2, 8, 32), np.int8)[..., ::2]), ValueError, "C-contiguous"),
    (dict(out=None), TypeError, "out"),
    (dict(bright_threshold=-1), ValueError, "bright_threshold"),
    (dict(bright_threshold=1.5), TypeError, "bright_threshold"),
    (dict(stats=TileStats.empty(3, 2)), ValueError, "stats.band_mean"),
    (dict(stats="x"), TypeError, "stats"),
]


@pytest.mark.parametrize("change,exc,match", BAD)
def test_bad_arguments(impl, change, exc, match):
    args = _good()
    args.update(change)
    frame, origins, th, tw = (args.pop(k) for k in ("frame", "origins", "tile_h", "tile_w"))
    with use_impl(pp, impl), pytest.raises(exc, match=match):
        preprocess_tiles(frame, origins, th, tw, **args)


def test_read_only_out_rejected():
    args = _good()
    args["out"].flags.writeable = False
    frame, origins, th, tw = (args.pop(k) for k in ("frame", "origins", "tile_h", "tile_w"))
    with pytest.raises(ValueError, match="writeable"):
        preprocess_tiles(frame, origins, th, tw, **args)


def test_compiled_direct_call_never_crashes():
    """The compiled function checks shapes itself when called past the Python validation."""
    fast = compiled_of(pp)
    frame = np.zeros((20, 30, 3), np.uint8)
    lut = np.zeros((2, 256), np.int8)
    origins = np.array([[0, 0]], np.int64)
    bands = np.array([0, 2], np.int64)
    good = dict(frame=frame, origins=origins, tile_h=8, tile_w=8, bands=bands, lut=lut,
                out=np.empty((1, 2, 8, 8), np.int8), out_nhwc=False, bright_threshold=10,
                band_mean=np.zeros((1, 2)), bright_fraction=np.zeros(1), nodata_fraction=np.zeros(1))
    bad = [
        dict(frame=frame[:, :, 0]), dict(frame=frame.astype(np.float32)),
        dict(origins=np.array([[20, 0]], np.int64)), dict(bands=np.array([0, 3], np.int64)),
        dict(lut=np.zeros((2, 65536), np.int8)), dict(lut=np.zeros((3, 256), np.int8)),
        dict(out=np.empty((1, 2, 8, 9), np.int8)), dict(out=np.empty((1, 2, 8, 8), np.uint8)),
        dict(out=np.empty((1, 8, 8, 2), np.int8)), dict(band_mean=np.zeros((2, 2))),
        dict(nodata_fraction=np.zeros(2)), dict(tile_h=0), dict(bright_threshold=-5),
        dict(out=np.empty((1, 2, 8, 16), np.int8)[..., ::2]), dict(bands=np.zeros(0, np.int64)),
    ]
    fast.preprocess_tiles(**good)
    for change in bad:
        args = dict(good, **change)
        with pytest.raises(ValueError):
            fast.preprocess_tiles(**args)
    assert fast.preprocess_path() in ("avx512vbmi", "neon", "scalar")
