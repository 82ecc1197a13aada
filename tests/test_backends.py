"""Backends (edge/backends/): manifest-verified bytes -> runtime -> outputs by role, dequantized.

ONNX Runtime runs the colour-block fixtures of tests/models/fixtures.py (built here with onnx.helper
and quantized with onnxruntime.quantization); LiteRT runs the shipped .tflite files of the manifest.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge.backends import open_backend
from edge.heads import decode
from edge.manifest import DEFAULT_MANIFEST, ModelIntegrityError, load_manifest
from tests.models import fixtures as fx


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return load_manifest(fx.write_manifest(tmp_path_factory.mktemp("fixture_models")))


def _feed(backend, tiles_u8):
    return tiles_u8.astype(np.float32) / 255 if backend.input_dtype == np.float32 else tiles_u8


def _yolo_tile():
    """Red cell (row 2, col 1) and green cell (row 4, col 6) of the 16-px YOLO cell grid."""
    t = np.zeros((1, 3, fx.YOLO_TILE, fx.YOLO_TILE), np.uint8)
    t[0, 0, 32:48, 16:32] = 255
    t[0, 1, 64:80, 96:112] = 255
    return t


YOLO_BOXES = [[24 - fx.YOLO_W / 2, 40 - fx.YOLO_H / 2, 24 + fx.YOLO_W / 2, 40 + fx.YOLO_H / 2],
              [104 - fx.YOLO_W / 2, 72 - fx.YOLO_H / 2, 104 + fx.YOLO_W / 2, 72 + fx.YOLO_H / 2]]


def test_yolo_fixture_fp32_decodes_exact_boxes(manifest):
    model = manifest.model("blocks_yolo")
    backend = open_backend(model, "onnx_fp32")
    out = backend.run(_feed(backend, _yolo_tile()))
    assert set(out) == {"predictions"} and out["predictions"].shape == (1, 6, 64)
    det = decode(model.head, {r: o[0] for r, o in out.items()}, tile_hw=model.tile_hw)
    np.testing.assert_array_equal(det.boxes, YOLO_BOXES)
    np.testing.assert_array_equal(det.scores, [1.0, 1.0])
    np.testing.assert_array_equal(det.classes, [0, 1])


@pytest.mark.parametrize("variant", ["onnx_int8", "onnx_int8_rawout"])
def test_yolo_fixture_int8_within_one_quantization_step(manifest, variant):
    model = manifest.model("blocks_yolo")
    backend = open_backend(model, variant)
    assert backend.input_dtype == np.uint8  # raw pixels straight in
    out = backend.run(_yolo_tile())
    assert out["predictions"].dtype == np.float32   # uint8 outputs come back dequantized
    step = manifest.model("blocks_yolo").files["onnx_int8_rawout"].raw["output_quantization"][
        "predictions"]["scale"]
    det = decode(model.head, {r: o[0] for r, o in out.items()}, tile_hw=model.tile_hw)
    np.testing.assert_array_equal(det.classes, [0, 1])
    np.testing.assert_allclose(det.boxes, YOLO_BOXES, atol=step)
    np.testing.assert_allclose(det.scores, [1.0, 1.0], atol=step)


def test_integer_outputs_dequantize_like_the_qdq_graph(manifest):
    model = manifest.model("blocks_yolo")
    tiles = np.stack([fx.calibration_tiles(fx.YOLO_TILE, n=3, seed=7)[i][0] for i in range(3)])
    qdq = open_backend(model, "onnx_int8").run(tiles)["predictions"]
    raw = open_backend(model, "onnx_int8_rawout").run(tiles)["predictions"]
    np.testing.assert_allclose(raw, qdq, rtol=0, atol=1e-5)


def test_centernet_fixture_fp32_and_int8(manifest):
    model = manifest.model("blocks_centernet")
    tile = np.zeros((1, 3, fx.CN_TILE, fx.CN_TILE), np.uint8)
    tile[0, 0, 12:16, 28:32] = 255  # heatmap cell (3, 7)
    want = [[(7 + fx.CN_OFF) * 4 - fx.CN_W / 2, (3 + fx.CN_OFF) * 4 - fx.CN_H / 2,
             (7 + fx.CN_OFF) * 4 + fx.CN_W / 2, (3 + fx.CN_OFF) * 4 + fx.CN_H / 2]]
    for variant, atol in (("onnx_fp32", 0), ("onnx_int8", 0.05)):
        backend = open_backend(model, variant)
        out = backend.run(_feed(backend, tile))
        assert {r: o.shape for r, o in out.items()} == {
            "heatmap": (1, 1, 16, 16), "size": (1, 2, 16, 16), "offset": (1, 2, 16, 16)}
        det = decode(model.head, {r: o[0] for r, o in out.items()}, tile_hw=model.tile_hw)
        np.testing.assert_allclose(det.boxes, want, atol=atol)
        np.testing.assert_allclose(det.scores, [1.0], atol=max(atol, 1e-6))


def test_batches_run_tile_by_tile(manifest):
    model = manifest.model("blocks_centernet")
    backend = open_backend(model, "onnx_int8")
    tiles = np.stack([t[0] for t in fx.calibration_tiles(fx.CN_TILE, n=3, seed=3, block=4)])
    batch = backend.run(tiles)
    assert batch["heatmap"].shape == (3, 1, 16, 16)
    for i in range(3):
        one = backend.run(tiles[i:i + 1])
        for role in one:
            np.testing.assert_array_equal(batch[role][i], one[role][0])


def test_input_checks(manifest):
    backend = open_backend(manifest.model("blocks_yolo"), "onnx_int8")
    with pytest.raises(TypeError, match="takes uint8 input, got float32"):
        backend.run(np.zeros((1, 3, 128, 128), np.float32))
    with pytest.raises(ValueError, match="batch must have shape"):
        backend.run(np.zeros((1, 3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="threads"):
        open_backend(manifest.model("blocks_yolo"), "onnx_int8", threads=0)


def test_tampered_file_is_refused(manifest, tmp_path):
    src = manifest.path.parent
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    blob = bytearray((dst / "blocks_yolo_int8.onnx").read_bytes())
    blob[-1] ^= 0x80
    (dst / "blocks_yolo_int8.onnx").write_bytes(bytes(blob))
    model = load_manifest(dst / "manifest.json").model("blocks_yolo")
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        open_backend(model, "onnx_int8")


def test_missing_output_name_is_reported(manifest, tmp_path):
    doc = json.loads(manifest.path.read_text())
    doc["models"]["blocks_yolo"]["files"]["onnx_fp32"]["outputs"]["predictions"] = "nope"
    path = manifest.path.parent / "renamed.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="'nope'"):
        open_backend(load_manifest(path).model("blocks_yolo"), "onnx_fp32")


# ---- LiteRT on the shipped .tflite files ------------------------------------------------------------

def _shipped_tflite():
    shipped = load_manifest(DEFAULT_MANIFEST)
    found = [(m, v) for m in shipped.models.values() for v, f in m.files.items() if f.runtime == "litert"]
    assert found, "the shipped manifest lists no LiteRT (.tflite) file"
    return found


def test_litert_runs_shipped_tflite_and_agrees_with_onnxruntime():
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    rng = np.random.default_rng(0)
    tile_u8 = rng.integers(0, 256, (1, 3, 256, 256)).astype(np.uint8)
    for model, variant in _shipped_tflite():
        backend = open_backend(model, variant)
        f = backend.file
        assert backend.input_dtype == np.int8
        x = (tile_u8.astype(np.int16) - 128).astype(np.int8)  # q = raw - 128 (scale 1/255, zp -128)
        out = backend.run(x)
        assert set(out) == set(f.outputs)
        # the same tensors, read by hand from a plain interpreter, dequantized with their own params
        it = Interpreter(model_content=f.path.read_bytes(), num_threads=1,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        by_name = {d["name"]: d for d in it.get_output_details()}
        for role, name in f.outputs.items():
            d = by_name[name]
            scale, zp = d["quantization"]
            want = (it.get_tensor(d["index"]).astype(np.float32) - zp) * np.float32(scale)
            np.testing.assert_array_equal(out[role], want)
        # XNNPACK requantizes with its own rounding: on this noise tile the shipped models differ by
        # up to 6 steps (the offset head), most values by 0 or 1 step
        fast = open_backend(model, variant, xnnpack=True).run(x)
        for role, name in f.outputs.items():
            step = by_name[name]["quantization"][0]
            np.testing.assert_allclose(fast[role], out[role], rtol=0, atol=8 * step + 1e-6)
            assert np.mean(np.abs(fast[role] - out[role]) > 1.01 * step) < 0.25, (model.name, role)
        # the fp32 ONNX of the same model gives nearly the same heatmap
        if "onnx_fp32" in model.files:
            ref = open_backend(model, "onnx_fp32").run(tile_u8.astype(np.float32) / 255)
            role = next(iter(ref))
            err = np.abs(out[role] - ref[role]).max()
            assert err <= 0.1 * max(1.0, float(np.abs(ref[role]).max())), (model.name, role, err)


# ---- memory modes: the runtime computes from buffers orbit-edge owns ------------------------------

def _ship_tiles(n=3):
    from models.scenes import scene_batch

    images, _, _ = scene_batch(range(900_000, 900_000 + n), size=256)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("variant", ["onnx_int8", "onnx_fp32", "tflite_int8"])
def test_owned_weights_are_what_the_runtime_computes_from(variant):
    """Flip bits in the reported weight regions: the outputs change; flip them back: the outputs
    are bit-identical again. So those buffers are the memory the scrubber must protect."""
    model = load_manifest(DEFAULT_MANIFEST).model("ship")
    backend = open_backend(model, variant, memory="owned")
    assert backend.memory == "owned"
    regions = backend.weight_regions()
    assert regions and all(r.dtype == np.uint8 and r.flags.writeable for r in regions.values())
    tiles = _ship_tiles()
    x = tiles if backend.input_dtype == np.uint8 else (
        tiles.astype(np.float32) / 255 if backend.input_dtype == np.float32
        else (tiles.astype(np.int16) - 128).astype(np.int8))
    clean = backend.run(x)
    # the largest region: conv weights (ORT) or the whole flatbuffer (LiteRT)
    name, region = max(regions.items(), key=lambda kv: kv[1].nbytes)
    idx = np.arange(region.nbytes // 3, region.nbytes // 3 + 4000, 97)
    region[idx] ^= 0x40
    hit = backend.run(x)
    region[idx] ^= 0x40
    again = backend.run(x)
    assert any(not np.array_equal(clean[r], hit[r]) for r in clean), f"{name}: flips had no effect"
    for r in clean:
        np.testing.assert_array_equal(clean[r], again[r])


def test_owned_mode_detects_like_copy_mode():
    """ONNX Runtime 'owned' (BASIC optimizations, QDQ run as dequantize -> float conv -> quantize)
    vs 'copy' (QDQ fused into integer kernels): the same ships, scores within a few steps."""
    model = load_manifest(DEFAULT_MANIFEST).model("ship")
    tiles = _ship_tiles(6)
    a = open_backend(model, "onnx_int8").run(tiles)
    b = open_backend(model, "onnx_int8", memory="owned").run(tiles)
    for i in range(len(tiles)):
        da = decode(model.head, {r: o[i] for r, o in a.items()}, tile_hw=model.tile_hw)
        db = decode(model.head, {r: o[i] for r, o in b.items()}, tile_hw=model.tile_hw)
        strong_a = da.boxes[da.scores > 0.5]
        strong_b = db.boxes[db.scores > 0.5]
        assert abs(len(strong_a) - len(strong_b)) <= 1
    # the two graphs round differently at a handful of cells (integer kernels vs float simulation)
    close = np.abs(a["heatmap"] - b["heatmap"]) < 0.05
    assert close.mean() > 0.99, close.mean()


def test_memory_mode_errors():
    model = load_manifest(DEFAULT_MANIFEST).model("ship")
    with pytest.raises(ValueError, match="needs an .onnx file"):
        open_backend(model, "ort_int8", memory="owned")
    with pytest.raises(ValueError, match="memory must be one of"):
        open_backend(model, "onnx_int8", memory="shared")
    with pytest.raises(ValueError, match="XNNPACK"):
        open_backend(model, "tflite_int8", memory="owned", xnnpack=True)
    assert open_backend(model, "onnx_int8").weight_regions() == {}
