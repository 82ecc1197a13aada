"""edge.vlm.processor (LFM2-VL image processing in numpy/PIL) against transformers' real processor.

Three kinds of check:

* references: models/vlm/processor_refs.npz holds what transformers 5.24's Lfm2VlProcessor (torchvision
  backend) produced for 12 synthetic images under two configs (LFM2-VL-450M's and a variant: 256-pixel
  tiles, 1..4 tiles, no thumbnail, ImageNet mean/std, no special tokens); models/vlm/processor_refs.py
  made it and regenerates the images (`make_image`). Shapes, masks, spatial shapes, rows/cols/sizes and
  the expanded prompt must be equal; pixel values bit-exact wherever our resampled uint8 level equals
  torchvision's, else exactly one level apart (one level = 1 / 255 / std). Measured here: at most one
  level, on at most 0.08 % of the values of an image (PIL and torchvision's antialiased bilinear round
  differently now and then), so the test allows 0.2 %.
* properties (hypothesis) of the layout over random sizes and configs, derived from transformers'
  Lfm2VlImageProcessor / Lfm2VlProcessor source (read, not imported): smart-resize bounds, the grid, the
  units, and token counts that agree between the prompt, the masks and the spatial shapes.
* inputs and configs: accepted image kinds, refused ones with a ProcessorInputError (a ValueError) that
  names the problem, and corrupt config files with a ProcessorConfigError naming file and key.
"""
from __future__ import annotations

import ast
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from edge.vlm import processor as vp
from edge.vlm.processor import Lfm2VlProcessor, ProcessorConfigError, ProcessorInputError
from models.vlm.processor_refs import PROMPT, make_image, undelta2
from tests.conftest import examples

ROOT = Path(__file__).resolve().parent.parent
REFS_NPZ = ROOT / "models" / "vlm" / "processor_refs.npz"
REFS_CONFIGS = ROOT / "models" / "vlm" / "processor_refs_configs.json"

#: Pixel values that may differ from the reference by one uint8 level (measured: <= 0.08 % per image).
MAX_OFF_BY_ONE_FRACTION = 0.002

_REFS = np.load(REFS_NPZ)
_CONFIGS = json.loads(REFS_CONFIGS.read_text(encoding="utf-8"))
#: "config/HxW" of every stored case
CASES = sorted({k.rsplit("/", 1)[0] for k in _REFS.files if k.endswith("/image")})


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ref_procs(tmp_path_factory) -> dict:
    """One processor per reference config, read by from_dir from a processor_config.json (nested layout,
    which is how processor_refs_configs.json stores them)."""
    procs = {}
    for name, cfg in _CONFIGS.items():
        d = tmp_path_factory.mktemp(name)
        write_json(d / "processor_config.json", cfg)
        procs[name] = Lfm2VlProcessor.from_dir(d)
    return procs


def ref_image(case: str) -> np.ndarray:
    h, w, seed = (int(v) for v in _REFS[case + "/image"])
    return make_image(h, w, seed)


def ref_pixel_values(case: str, proc: Lfm2VlProcessor) -> np.ndarray:
    """The reference pixel values [tiles, max_num_patches, 3 p^2]: the stored uint8 levels of every unit
    through the stored level -> float table of transformers' fused rescale + normalise."""
    cname = case.split("/")[0]
    lut = _REFS[cname + "/norm_lut"]
    shapes = _REFS[case + "/spatial_shapes"]
    d2 = _REFS[case + "/levels_d2"]
    p = proc.encoder_patch_size
    out = np.zeros(tuple(_REFS[case + "/pixel_values_shape"]), np.float32)
    off = 0
    for k, (nh, nw) in enumerate(shapes):
        n = nh * p * nw * p * 3
        levels = undelta2(d2[off:off + n].reshape(nh * p, nw * p, 3))
        off += n
        values = lut[levels, np.arange(3)]                     # [H, W, 3] float32
        out[k, :nh * nw] = values.reshape(nh, p, nw, p, 3).transpose(0, 2, 1, 3, 4).reshape(nh * nw, -1)
    assert off == d2.size
    return out


def replacement_of(case: str) -> str:
    """The text the <image> mark of PROMPT became in the reference."""
    text = str(_REFS[case + "/text"])
    head, tail = PROMPT.split("<image>")
    assert text.startswith(head) and text.endswith(tail)
    return text[len(head):len(text) - len(tail)]


# --------------------------------------------------------------------------------------- references

def test_reference_file_is_complete():
    assert set(_CONFIGS) == {"lfm2vl450m", "variant"}
    assert len([c for c in CASES if c.startswith("lfm2vl450m/")]) == 8
    assert len([c for c in CASES if c.startswith("variant/")]) == 4
    meta = json.loads(str(_REFS["meta"]))
    assert meta["versions"]["transformers"] == "5.24.0"
    assert meta["configs"] == _CONFIGS
    # every case stored as exact levels (the generator verified they re-normalise bit for bit)
    assert all(case + "/levels_d2" in _REFS.files for case in CASES)


@pytest.mark.parametrize("cname", sorted(_CONFIGS))
def test_normalisation_is_bit_exact(ref_procs, cname):
    """All 256 levels of each channel through our fused step == transformers' float32 values."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None]     # [1, 256, 3]
    got = ref_procs[cname].normalize(levels)[0]
    want = _REFS[cname + "/norm_lut"]
    assert got.dtype == np.float32 and want.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("case", CASES)
def test_matches_transformers(ref_procs, case):
    cname = case.split("/")[0]
    proc = ref_procs[cname]
    out = proc.preprocess([ref_image(case)])
    pv, mask, shapes = out["pixel_values"], out["pixel_attention_mask"], out["spatial_shapes"]

    assert pv.dtype == np.float32 and mask.dtype == np.int64 and shapes.dtype == np.int64
    assert list(pv.shape) == _REFS[case + "/pixel_values_shape"].tolist()
    np.testing.assert_array_equal(shapes, _REFS[case + "/spatial_shapes"])
    counts = _REFS[case + "/mask_counts"]
    want_mask = (np.arange(pv.shape[1])[None, :] < counts[:, None]).astype(np.int64)
    np.testing.assert_array_equal(mask, want_mask)
    rows, cols = _REFS[case + "/rows_cols"].tolist()
    assert (out["image_rows"], out["image_cols"]) == ([rows], [cols])
    assert out["image_sizes"] == [_REFS[case + "/image_sizes"].tolist()]

    text = proc.expand_prompt(PROMPT, out)
    assert text == str(_REFS[case + "/text"])
    n_tokens = int(_REFS[case + "/n_image_tokens"])
    assert text.count("<image>") == n_tokens == out["image_token_counts"][0]
    assert out["tiles_per_image"] == [pv.shape[0]]

    # pixel values: padding exactly zero; real patches exact or one uint8 level away
    want = ref_pixel_values(case, proc)
    assert np.all(pv[mask == 0] == 0)
    std = np.tile(np.asarray(proc.image_std, np.float32), pv.shape[2] // 3)
    steps = (pv - want) * (std * 255.0)                 # the difference in uint8 levels
    level_steps = np.rint(steps)
    np.testing.assert_allclose(steps, level_steps, atol=1e-3)
    assert np.abs(level_steps).max() <= 1, f"{case}: more than one uint8 level off"
    same = level_steps == 0
    np.testing.assert_array_equal(pv[same].view(np.uint32), want[same].view(np.uint32))
    off_by_one = 1.0 - same[mask == 1].mean()
    assert off_by_one <= MAX_OFF_BY_ONE_FRACTION, f"{case}: {off_by_one:.4%} of the values one level off"


@pytest.mark.parametrize("cname", sorted(_CONFIGS))
def test_several_images_in_one_prompt(ref_procs, cname):
    """Units concatenate in image order; the i-th <image> mark gets the i-th image's expansion."""
    proc = ref_procs[cname]
    cases = [c for c in CASES if c.startswith(cname + "/")][:3]
    out = proc.preprocess([ref_image(c) for c in cases])
    singles = [proc.preprocess([ref_image(c)]) for c in cases]
    np.testing.assert_array_equal(out["pixel_values"], np.concatenate([s["pixel_values"] for s in singles]))
    np.testing.assert_array_equal(out["spatial_shapes"],
                                  np.concatenate([_REFS[c + "/spatial_shapes"] for c in cases]))
    prompt = "A <image> B <image> C <image> D"
    want = "A {} B {} C {} D".format(*(replacement_of(c) for c in cases))
    assert proc.expand_prompt(prompt, out) == want


# --------------------------------------------------------------------------------------- properties

@st.composite
def configs(draw, small: bool = False) -> dict:
    """Processor configs within the documented limits; `small` keeps the pixel work quick."""
    p = draw(st.sampled_from([2, 4, 8] if small else [2, 4, 8, 14, 16]))
    d = draw(st.integers(1, 3))
    max_tok = draw(st.integers(1, 24 if small else 300))
    min_tok = draw(st.integers(0, max_tok))
    min_tiles = draw(st.integers(1, 4))
    max_tiles = draw(st.integers(min_tiles, 6 if small else 12))
    tile = p * draw(st.integers(1, 12 if small else 64))
    assume(max_tok * d * d <= vp.MAX_NUM_PATCHES_LIMIT and (tile // p) ** 2 <= vp.MAX_NUM_PATCHES_LIMIT)
    return {
        "encoder_patch_size": p, "downsample_factor": d, "min_image_tokens": min_tok,
        "max_image_tokens": max_tok, "min_tiles": min_tiles, "max_tiles": max_tiles, "tile_size": tile,
        "use_thumbnail": draw(st.booleans()), "do_image_splitting": draw(st.booleans()),
        "max_pixels_tolerance": draw(st.sampled_from([1.0, 1.5, 2.0, 3.0])),
    }


sizes = st.integers(1, 5000)


@settings(max_examples=examples(400), deadline=None)
@given(configs(), sizes, sizes)
def test_smart_resize_bounds(cfg, height, width):
    proc = Lfm2VlProcessor(cfg)
    f = cfg["encoder_patch_size"] * cfg["downsample_factor"]
    min_px, max_px = cfg["min_image_tokens"] * f * f, cfg["max_image_tokens"] * f * f
    h, w = proc.smart_resize(height, width)
    assert h % f == 0 and w % f == 0 and h >= f and w >= f
    # one scale s keeps the aspect: each side within one factor of s * side (a side clamped at f aside)
    lo = max((h - f) / height, (w - f) / width)
    hi = min((h + f) / height if h > f else math.inf, (w + f) / width if w > f else math.inf)
    assert lo <= hi
    rounded = (max(f, round(height / f) * f), max(f, round(width / f) * f))
    area = rounded[0] * rounded[1]
    event("in range" if min_px <= area <= max_px else "down" if area > max_px else "up")
    if min_px <= area <= max_px:
        assert (h, w) == rounded                           # in range: only rounded, not scaled
    elif area > max_px:                                     # scaled down, as large as the floors allow
        if h > f and w > f:
            assert h * w <= max_px
        assert (h + f) * (w + f) >= max_px                 # (>= not >: transformers' float floor can
                                                            # turn an exact 2.0 into 1)
    else:                                                   # scaled up to at least min_image_tokens
        assert h * w >= min_px
        assert (h - f) * (w - f) <= min_px


@settings(max_examples=examples(300), deadline=None)
@given(configs(), sizes, sizes)
def test_layout_grid_and_units(cfg, height, width):
    proc = Lfm2VlProcessor(cfg)
    p, t = cfg["encoder_patch_size"], cfg["tile_size"]
    f = p * cfg["downsample_factor"]
    lay = proc.layout(height, width)
    splitting = cfg["do_image_splitting"] and not (cfg["min_tiles"] == cfg["max_tiles"] == 1)
    limit = cfg["max_image_tokens"] * f * f * cfg["max_pixels_tolerance"]
    assert lay.resized == proc.smart_resize(height, width)
    # split exactly the images that are too large, judged on sides rounded to the factor
    if splitting and (height - f / 2) * (width - f / 2) > limit:
        assert lay.split
    if not splitting or (max(p, height + f / 2) * max(p, width + f / 2) <= limit):
        assert not lay.split
    if lay.split:
        n = lay.rows * lay.cols
        assert cfg["min_tiles"] <= n <= cfg["max_tiles"]
        # the grid is one whose aspect is closest to the image's, among all the allowed grids
        best = abs(width / height - lay.cols / lay.rows)
        for cols in range(1, cfg["max_tiles"] + 1):
            for rows in range(1, cfg["max_tiles"] // cols + 1):
                if cfg["min_tiles"] <= rows * cols:
                    assert abs(width / height - cols / rows) >= best
        thumb = cfg["use_thumbnail"] and n > 1
        assert lay.thumbnail == thumb
        assert lay.unit_sizes == ((t, t),) * n + ((lay.resized,) if thumb else ())
    else:
        assert (lay.rows, lay.cols, lay.thumbnail) == (1, 1, False)
        assert lay.unit_sizes == (lay.resized,)
    assert lay.spatial_shapes == tuple((uh // p, uw // p) for uh, uw in lay.unit_sizes)


def _unit_tokens(nh: int, nw: int, d: int) -> int:
    """Image tokens of a unit of nh x nw patches after the d x d pixel unshuffle (ceil: padded)."""
    return -(-nh // d) * -(-nw // d)


@settings(max_examples=examples(120), deadline=None)
@given(configs(small=True), st.integers(1, 400), st.integers(1, 400), st.booleans(), st.data())
def test_preprocess_tokens_agree(cfg, height, width, special, data):
    """Prompt tokens == sum of the units' tokens == (mask patches / d^2 where the grid divides) ...,
    masks a prefix of ones, padding zero, tags in row-major order."""
    proc = Lfm2VlProcessor(cfg, use_image_special_tokens=special)
    p, d, t = cfg["encoder_patch_size"], cfg["downsample_factor"], cfg["tile_size"]
    seed = data.draw(st.integers(0, 2 ** 32 - 1))
    img = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    lay = proc.layout(height, width)
    unit_tokens = [_unit_tokens(uh // p, uw // p, d) for uh, uw in lay.unit_sizes]
    event("split" if lay.split else "one unit")
    if lay.split and lay.rows * lay.cols == 1 and unit_tokens[0] != lay.num_image_tokens:
        # transformers' 1x1-grid inconsistency (min_tiles = 1): refused, naming it
        with pytest.raises(ProcessorInputError, match="1x1 grid"):
            proc.preprocess([img])
        return
    if any((uh // p) * (uw // p) > proc.max_num_patches for uh, uw in lay.unit_sizes):
        with pytest.raises(ProcessorInputError, match="max_num_patches"):
            proc.preprocess([img])
        return
    out = proc.preprocess([img])
    pv, mask, shapes = out["pixel_values"], out["pixel_attention_mask"], out["spatial_shapes"]
    n_units = len(lay.unit_sizes)
    expect_max = max(cfg["max_image_tokens"] * d * d, (t // p) ** 2 if cfg["do_image_splitting"] else 0)
    assert proc.max_num_patches == expect_max
    assert pv.shape == (n_units, expect_max, 3 * p * p) and mask.shape == (n_units, expect_max)
    assert shapes.tolist() == [list(s) for s in lay.spatial_shapes]
    counts = mask.sum(axis=1)
    np.testing.assert_array_equal(counts, shapes[:, 0] * shapes[:, 1])
    np.testing.assert_array_equal(mask, np.arange(expect_max)[None, :] < counts[:, None])
    assert np.all(pv[mask == 0] == 0)
    if lay.split:
        assert all(s == [t // p, t // p] for s in shapes[:lay.rows * lay.cols].tolist())
    if lay.thumbnail or not lay.split:
        assert shapes[-1].tolist() == [s // p for s in out["image_sizes"][0]]

    text = proc.expand_prompt("Q: <image> A:", out)
    n = text.count("<image>")
    assert n == out["image_token_counts"][0] == lay.num_image_tokens == sum(unit_tokens)
    for k, (nh, nw) in enumerate(shapes.tolist()):
        if nh % d == 0 and nw % d == 0:
            assert counts[k] == unit_tokens[k] * d * d
    tags = re.findall(r"<\|img_row_(\d+)_col_(\d+)\|>", text)
    multi = lay.rows * lay.cols > 1
    if special:
        assert text.startswith("Q: <|image_start|>") and text.endswith("<|image_end|> A:")
        assert tags == ([(str(r), str(c)) for r in range(1, lay.rows + 1) for c in range(1, lay.cols + 1)]
                        if multi else [])
        assert text.count("<|img_thumbnail|>") == (1 if multi and cfg["use_thumbnail"] else 0)
    else:
        assert text == "Q: " + "<image>" * n + " A:"


def _patches_of(unit: np.ndarray, p: int) -> np.ndarray:
    """transformers' convert_image_to_patches, written out: patch (r, c) row-major, each flattened
    (row in patch, column in patch, channel)."""
    nh, nw = unit.shape[0] // p, unit.shape[1] // p
    return np.stack([unit[r * p:(r + 1) * p, c * p:(c + 1) * p, :].reshape(-1)
                     for r in range(nh) for c in range(nw)])


def _levels(proc, values: np.ndarray) -> np.ndarray:
    mean = np.tile(np.asarray(proc.image_mean, np.float32), values.shape[-1] // 3)
    std = np.tile(np.asarray(proc.image_std, np.float32), values.shape[-1] // 3)
    return np.rint(values * std * 255 + mean * 255).astype(np.int64)


def test_patch_order_without_resampling():
    """An image already at its smart-resize size is not resampled: the patches are its pixels."""
    proc = Lfm2VlProcessor()                                  # LFM2-VL-450M defaults
    img = np.random.default_rng(7).integers(0, 256, (320, 448, 3), dtype=np.uint8)
    assert proc.smart_resize(320, 448) == (320, 448)
    out = proc.preprocess([img])
    assert out["spatial_shapes"].tolist() == [[20, 28]]
    np.testing.assert_array_equal(_levels(proc, out["pixel_values"][0, :560]), _patches_of(img, 16))


def test_tiles_row_major_then_thumbnail():
    """An image already at its grid size (3 x 2 tiles of 512) is cut without resampling, row-major."""
    proc = Lfm2VlProcessor()
    img = np.random.default_rng(8).integers(0, 256, (1024, 1536, 3), dtype=np.uint8)
    out = proc.preprocess([img])
    assert (out["image_rows"], out["image_cols"]) == ([2], [3])
    pv = out["pixel_values"]
    assert pv.shape[0] == 7
    for k in range(6):
        r, c = divmod(k, 3)
        tile = img[r * 512:(r + 1) * 512, c * 512:(c + 1) * 512]
        np.testing.assert_array_equal(_levels(proc, pv[k]), _patches_of(tile, 16))
    th, tw = out["image_sizes"][0]
    thumb = np.asarray(Image.fromarray(img).resize((tw, th), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(_levels(proc, pv[6, :(th // 16) * (tw // 16)]), _patches_of(thumb, 16))


# ------------------------------------------------------------------------------------------- inputs

RGB = make_image(300, 400, 3)


def test_pil_and_numpy_inputs_agree():
    proc = Lfm2VlProcessor()
    a = proc.preprocess([RGB])
    b = proc.preprocess([Image.fromarray(RGB, mode="RGB")])
    c = proc.preprocess(RGB)                                  # a single image, not in a list
    for other in (b, c):
        np.testing.assert_array_equal(a["pixel_values"], other["pixel_values"])
        assert a["image_sizes"] == other["image_sizes"]


def test_non_contiguous_arrays():
    proc = Lfm2VlProcessor()
    big = make_image(600, 800, 4)
    for view in (big[::2, ::2], big[::-1], big[:, :, ::-1], np.asfortranarray(big)):
        np.testing.assert_array_equal(proc.preprocess([view])["pixel_values"],
                                      proc.preprocess([np.ascontiguousarray(view)])["pixel_values"])


def test_other_pil_modes_are_converted():
    """Grayscale is replicated to three channels, RGBA's alpha dropped, palette images expanded
    (transformers' torchvision path fails on all three: 1 or 4 channels against a 3-channel mean)."""
    proc = Lfm2VlProcessor()
    gray = np.asarray(Image.fromarray(RGB).convert("L"))
    np.testing.assert_array_equal(proc.preprocess([Image.fromarray(gray, mode="L")])["pixel_values"],
                                  proc.preprocess([np.dstack([gray] * 3)])["pixel_values"])
    rgba = Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 17, np.uint8)]), mode="RGBA")
    np.testing.assert_array_equal(proc.preprocess([rgba])["pixel_values"],
                                  proc.preprocess([RGB])["pixel_values"])
    pal = Image.fromarray(RGB).convert("P")
    np.testing.assert_array_equal(proc.preprocess([pal])["pixel_values"],
                                  proc.preprocess([np.asarray(pal.convert("RGB"))])["pixel_values"])


@pytest.mark.parametrize("image, words", [
    (RGB.astype(np.uint16) * 16, ["uint16", "8-bit"]),
    (RGB.astype(np.float32) / 255, ["float32"]),
    (RGB > 128, ["bool"]),
    (RGB[..., 0], ["(H, W, 3)", "(300, 400)"]),
    (RGB[..., :1], ["(300, 400, 1)"]),
    (np.dstack([RGB, RGB[..., :1]]), ["(300, 400, 4)"]),
    (np.ascontiguousarray(RGB.transpose(2, 0, 1)), ["(3, 300, 400)"]),
    (RGB[None], ["(1, 300, 400, 3)"]),
    (np.zeros((0, 5, 3), np.uint8), ["empty"]),
    (Image.fromarray((RGB[..., 0].astype(np.uint16) * 16)), ["I;16", "8 bits"]),
    (Image.fromarray(RGB[..., 0].astype(np.float32)), ["'F'", "8 bits"]),
    (Image.fromarray(RGB[..., 0].astype(np.int32)), ["'I'"]),
    (RGB.tolist(), ["PIL.Image or a numpy array", "list"]),
    ("frame.png", ["PIL.Image or a numpy array", "str"]),
])
def test_bad_images_are_refused(image, words):
    with pytest.raises(ProcessorInputError) as exc:
        Lfm2VlProcessor().preprocess([RGB, image])
    assert isinstance(exc.value, ValueError)
    msg = str(exc.value)
    assert msg.startswith("image 1:"), msg
    for word in words:
        assert word in msg, msg


def test_truncated_image_file():
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, "PNG")
    data = buf.getvalue()
    img = Image.open(io.BytesIO(data[:len(data) // 2]))
    with pytest.raises(ProcessorInputError, match="image 0: cannot decode"):
        Lfm2VlProcessor().preprocess([img])


def test_bad_calls():
    proc = Lfm2VlProcessor()
    for images in ([], (), None, "frame.png", 3):
        with pytest.raises(ProcessorInputError, match="non-empty list"):
            proc.preprocess(images)
    with pytest.raises(ProcessorInputError, match="max_num_patches"):
        proc.preprocess([np.zeros((20, 9000, 3), np.uint8)])       # extreme aspect ratio
    for h, w in ((0, 5), (5, -1), (2.5, 4), (True, 4)):
        with pytest.raises(ProcessorInputError, match="positive integers"):
            proc.layout(h, w)
    out = proc.preprocess([RGB])
    with pytest.raises(ProcessorInputError, match="2 <image> marks but 1 images"):
        proc.expand_prompt("<image><image>", out)
    with pytest.raises(ProcessorInputError, match="0 <image> marks"):
        proc.expand_prompt("no image here", out)
    with pytest.raises(ProcessorInputError, match="needs a str"):
        proc.expand_prompt(b"<image>", out)
    with pytest.raises(TypeError):                     # also a TypeError, for callers expecting one
        proc.expand_prompt(None, out)
    with pytest.raises(ProcessorInputError, match="returned by preprocess"):
        proc.expand_prompt("<image>", {"pixel_values": out["pixel_values"]})


def test_too_large_check_rounds_a_thin_side_to_one_patch():
    """transformers' too-large test clamps a side at one patch (16), not one factor (32) as the smart
    resize does: 15 x 20000 rounds to 16 x 20000 (not too large), 17 x 20000 to 32 x 20000 (too large)."""
    proc = Lfm2VlProcessor()
    assert not proc.is_too_large(15, 20000) and proc.is_too_large(17, 20000)


def test_one_by_one_grid_is_refused():
    """min_tiles = 1 with tiles larger than the smart-resize size: transformers cuts one 1024 tile (4096
    patches, 1024 tokens) but writes 256 prompt tokens (checked against transformers 5.24 by hand)."""
    proc = Lfm2VlProcessor({"tile_size": 1024, "min_tiles": 1, "max_tiles": 4})
    lay = proc.layout(800, 800)
    assert (lay.split, lay.rows, lay.cols, lay.unit_sizes, lay.num_image_tokens) == (
        True, 1, 1, ((1024, 1024),), 256)
    with pytest.raises(ProcessorInputError, match="1024 vision tokens but 256 prompt tokens"):
        proc.preprocess([np.zeros((800, 800, 3), np.uint8)])


# ------------------------------------------------------------------------------------------ configs

CONFIG_450M = _CONFIGS["lfm2vl450m"]["image_processor"]


def test_from_dir_flat_and_nested_layouts_agree(tmp_path):
    flat, nested = tmp_path / "flat", tmp_path / "nested"
    flat.mkdir(), nested.mkdir()
    write_json(flat / "preprocessor_config.json", CONFIG_450M)
    write_json(nested / "processor_config.json", {"image_processor": CONFIG_450M})
    a, b = Lfm2VlProcessor.from_dir(flat), Lfm2VlProcessor.from_dir(nested)
    assert a.config == b.config
    assert a.use_image_special_tokens and b.use_image_special_tokens
    img = make_image(600, 1000, 4)
    np.testing.assert_array_equal(a.preprocess([img])["pixel_values"], b.preprocess([img])["pixel_values"])


def test_from_dir_precedence(tmp_path):
    # both: the nested image_processor wins (as transformers), special tokens from the top level
    write_json(tmp_path / "preprocessor_config.json", dict(CONFIG_450M, tile_size=256))
    write_json(tmp_path / "processor_config.json",
               {"image_processor": dict(CONFIG_450M, tile_size=384), "use_image_special_tokens": False})
    proc = Lfm2VlProcessor.from_dir(tmp_path)
    assert proc.tile_size == 384 and not proc.use_image_special_tokens
    # processor_config.json without an image_processor: the flat file serves, the flag still applies
    write_json(tmp_path / "processor_config.json",
               {"use_image_special_tokens": False, "processor_class": "Lfm2VlProcessor"})
    proc = Lfm2VlProcessor.from_dir(tmp_path)
    assert proc.tile_size == 256 and not proc.use_image_special_tokens
    # 300 x 400 rounds (half to even: 400 / 32 = 12.5 -> 12) to 288 x 384, in range: 9 x 12 tokens, no tags
    assert proc.expand_prompt("<image>", proc.preprocess([RGB])) == "<image>" * (9 * 12)


def test_from_dir_special_token_names(tmp_path):
    write_json(tmp_path / "preprocessor_config.json", CONFIG_450M)
    write_json(tmp_path / "tokenizer_config.json",
               {"image_token": "<img>", "extra_special_tokens": {"image_start_token": "<s_img>",
                                                                "image_end_token": "<e_img>"}})
    proc = Lfm2VlProcessor.from_dir(tmp_path)
    text = proc.expand_prompt("x<img>y", proc.preprocess([np.zeros((256, 256, 3), np.uint8)]))
    assert text == "x<s_img>" + "<img>" * 64 + "<e_img>y"


def test_from_dir_missing(tmp_path):
    with pytest.raises(ProcessorConfigError, match="does not exist"):
        Lfm2VlProcessor.from_dir(tmp_path / "nope")
    with pytest.raises(ProcessorConfigError, match="preprocessor_config.json"):
        Lfm2VlProcessor.from_dir(tmp_path)


@pytest.mark.parametrize("name", ["preprocessor_config.json", "processor_config.json",
                                  "tokenizer_config.json"])
@pytest.mark.parametrize("content, words", [
    ('{"tile_size": 512,', ["not valid JSON"]),
    ("", ["not valid JSON"]),
    ("[1, 2]", ["expected a JSON object", "list"]),
])
def test_corrupt_json(tmp_path, name, content, words):
    write_json(tmp_path / "preprocessor_config.json", CONFIG_450M)
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ProcessorConfigError) as exc:
        Lfm2VlProcessor.from_dir(tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / name) in msg
    for word in words:
        assert word in msg


#: (key, bad value) pairs; JSON NaN / Infinity are what Python's json module reads for those words
BAD_VALUES = [
    ("tile_size", 0), ("tile_size", 500), ("tile_size", "512"), ("tile_size", 16 * 1000),
    ("encoder_patch_size", -16), ("encoder_patch_size", 0), ("encoder_patch_size", None),
    ("downsample_factor", 1.5), ("downsample_factor", True), ("downsample_factor", "2"),
    ("max_tiles", 0), ("max_tiles", 10 ** 6), ("min_tiles", 11), ("min_tiles", []),
    ("max_image_tokens", 0), ("max_image_tokens", 10 ** 7), ("min_image_tokens", 257),
    ("min_image_tokens", -1),
    ("image_mean", [0.5, 0.5]), ("image_mean", "0.5"), ("image_mean", [0.5, float("nan"), 0.5]),
    ("image_std", [0.5, 0, 0.5]), ("image_std", 0), ("image_std", float("inf")),
    ("rescale_factor", 0), ("rescale_factor", float("inf")), ("rescale_factor", float("nan")),
    ("max_pixels_tolerance", -1), ("max_pixels_tolerance", "2"),
    ("resample", 9), ("resample", "cubicle"), ("resample", 2.0), ("resample", None),
    ("do_pad", False), ("do_normalize", "true"), ("use_thumbnail", 1), ("do_image_splitting", None),
]


@pytest.mark.parametrize("layout", ["flat", "nested"])
@pytest.mark.parametrize("key, value", BAD_VALUES)
def test_out_of_range_values(tmp_path, layout, key, value):
    cfg = dict(CONFIG_450M, **{key: value})
    if layout == "flat":
        path = write_json(tmp_path / "preprocessor_config.json", cfg)
    else:
        path = write_json(tmp_path / "processor_config.json", {"image_processor": cfg})
    with pytest.raises(ProcessorConfigError) as exc:
        Lfm2VlProcessor.from_dir(tmp_path)
    msg = str(exc.value)
    assert str(path) in msg and key in msg, msg


@pytest.mark.parametrize("top", [{"use_image_special_tokens": "yes"}, {"image_processor": [1]},
                                 {"image_processor": "x"}])
def test_bad_processor_level_values(tmp_path, top):
    write_json(tmp_path / "preprocessor_config.json", CONFIG_450M)
    path = write_json(tmp_path / "processor_config.json", top)
    with pytest.raises(ProcessorConfigError) as exc:
        Lfm2VlProcessor.from_dir(tmp_path)
    assert str(path) in str(exc.value) and next(iter(top)) in str(exc.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 12, 10 ** 12) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=examples(300), deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(vp.CONFIG_DEFAULTS)), json_values, max_size=4))
def test_any_config_builds_or_names_the_key(overrides):
    """Whatever a corrupt file holds: a working processor or a ProcessorConfigError naming a key."""
    try:
        proc = Lfm2VlProcessor(dict(CONFIG_450M, **overrides))
    except ProcessorConfigError as exc:
        assert any(key in str(exc) for key in vp.CONFIG_DEFAULTS), str(exc)
        return
    lay = proc.layout(300, 400)
    assert lay.num_image_tokens >= 1


# ------------------------------------------------------------------------------------------ imports

def test_flight_imports_only_numpy_pil_and_stdlib():
    tree = ast.parse((ROOT / "edge" / "vlm" / "processor.py").read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots - set(sys.stdlib_module_names) <= {"numpy", "PIL"}, roots
    code = ("import sys, edge.vlm.processor as p; p.Lfm2VlProcessor().preprocess([__import__('numpy')"
            ".zeros((64, 64, 3), 'uint8')]); print(sorted(m for m in ('torch', 'torchvision', "
            "'transformers', 'onnxruntime', 'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
