"""Tiny detector graphs with known outputs, built at test time with onnx.helper (no download).

"Colour-block" detectors: the tile is cut into cells (average pooling); a cell's mean red value is
the score of class 0 (and green of class 1 for YOLO); box size and offset are constants. So a fully
red cell gives a detection of score 1.0 at a box the test can write down exactly.

  yolo:      input "images" (1, 3, 128, 128) -> "output0" (1, 4 + 2, 64): cells of YOLO_CELL px,
             cx = YOLO_CELL * (j + 0.5), cy likewise, w = YOLO_W, h = YOLO_H
  centernet: input "images" (1, 3, 64, 64) -> "heatmap" (1, 1, 16, 16), "size" (1, 2, 16, 16),
             "offset" (1, 2, 16, 16), stride 4; size = (CN_W, CN_H), offset = (CN_OFF, CN_OFF)
Each has an fp32 file (input raw/255) and an int8 QDQ file (onnxruntime.quantization.quantize_static)
that takes raw uint8 pixels; the YOLO one also an int8 file whose output stays uint8 (its
quantization goes into the manifest's "output_quantization").
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

YOLO_TILE, YOLO_CELL, YOLO_NC, YOLO_W, YOLO_H = 128, 16, 2, 12.0, 10.0
CN_TILE, CN_STRIDE, CN_W, CN_H, CN_OFF = 64, 4, 8.0, 6.0, 0.5
INPUT_SCALE = 1.0 / 255.0


def _cell_graph(tile: int, cell: int, weights: np.ndarray, bias_map: np.ndarray, outputs):
    """images -> Conv(cell x cell, stride cell: the cell mean through `weights`) + bias_map -> outputs.
    One strided Conv rather than AveragePool + 1x1 Conv: the QDQ quantizer then quantizes the input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = tile // cell
    nodes = [helper.make_node("Conv", ["images", "W"], ["conv"], kernel_shape=[cell, cell],
                              strides=[cell, cell]),
             helper.make_node("Add", ["conv", "grid"], ["maps"])]
    kernel = np.broadcast_to(weights / (cell * cell), weights.shape[:2] + (cell, cell))
    inits = [numpy_helper.from_array(kernel.astype(np.float32), "W"),
             numpy_helper.from_array(bias_map.astype(np.float32).reshape(1, -1, g, g), "grid")]
    outs = []
    for name, shape, extra_nodes, extra_inits in outputs:
        nodes += extra_nodes
        inits += extra_inits
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "colour_blocks",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, tile, tile])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def yolo_model():
    from onnx import numpy_helper, helper

    g, rows = YOLO_TILE // YOLO_CELL, 4 + YOLO_NC
    w = np.zeros((rows, 3, 1, 1))
    w[4, 0] = w[5, 1] = 1.0  # class 0 = red mean, class 1 = green mean
    grid = np.zeros((rows, g, g))
    grid[0] = (np.arange(g)[None, :] + 0.5) * YOLO_CELL
    grid[1] = (np.arange(g)[:, None] + 0.5) * YOLO_CELL
    grid[2], grid[3] = YOLO_W, YOLO_H
    shape = numpy_helper.from_array(np.array([1, rows, g * g], np.int64), "shape")
    return _cell_graph(YOLO_TILE, YOLO_CELL, w, grid, [
        ("output0", [1, rows, g * g], [helper.make_node("Reshape", ["maps", "shape"], ["output0"])], [shape])])


def centernet_model():
    from onnx import numpy_helper, helper

    g = CN_TILE // CN_STRIDE
    w = np.zeros((5, 3, 1, 1))
    w[0, 0] = 1.0  # heatmap = red mean of the cell
    grid = np.zeros((5, g, g))
    grid[1], grid[2], grid[3], grid[4] = CN_W, CN_H, CN_OFF, CN_OFF
    outs = []
    for name, lo, hi in (("heatmap", 0, 1), ("size", 1, 3), ("offset", 3, 5)):
        inits = [numpy_helper.from_array(np.array([lo], np.int64), f"{name}_lo"),
                 numpy_helper.from_array(np.array([hi], np.int64), f"{name}_hi"),
                 numpy_helper.from_array(np.array([1], np.int64), f"{name}_ax")]
        node = helper.make_node("Slice", ["maps", f"{name}_lo", f"{name}_hi", f"{name}_ax"], [name])
        outs.append((name, [1, hi - lo, g, g], [node], inits))
    return _cell_graph(CN_TILE, CN_STRIDE, w, grid, outs)


class _Calib:
    def __init__(self, tiles_u8):
        self._it = iter(tiles_u8)

    def get_next(self):
        t = next(self._it, None)
        return None if t is None else {"images": t.astype(np.float32) / 255.0}


def calibration_tiles(tile: int, n: int = 8, seed: int = 0, block: int = 16) -> list:
    """Black tiles with random colour blocks (block x block, on the block grid), so every cell mean
    from 0 to 1 and a full 0 and 255 pixel occur: the calibrated ranges cover what tests feed."""
    rng = np.random.default_rng(seed)
    g = tile // block
    tiles = []
    for _ in range(n):
        cells = (rng.random((3, g, g)) < 0.3).astype(np.uint8) * 255
        cells[:, 0, 0], cells[:, 0, 1] = 0, 255
        tiles.append(np.kron(cells, np.ones((block, block), np.uint8))[None])
    return tiles


def quantize(fp32_path: str, out_path: str, tile: int, integer_outputs: bool = False) -> dict:
    """Static QDQ int8 (uint8 activations) taking raw uint8 pixels. With integer_outputs, the final
    DequantizeLinear of each output is dropped; returns {output: {"scale", "zero_point"}} then."""
    import onnx
    from onnx import TensorProto, numpy_helper
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        qdq = os.path.join(tmp, "qdq.onnx")
        quantize_static(fp32_path, qdq, _Calib(calibration_tiles(tile)), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"TensorQuantOverrides": {"images": [
                            {"scale": np.array(INPUT_SCALE, np.float32), "zero_point": np.array(0, np.uint8)}]}})
        m = onnx.load(qdq)
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    # the graph input becomes the uint8 pixel itself: drop its QuantizeLinear (scale 1/255, zp 0)
    (q,) = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "images"]
    for n in g.node:
        n.input[:] = ["images" if i == q.output[0] else i for i in n.input]
    g.node.remove(q)
    g.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    quant = {}
    if integer_outputs:
        for out in g.output:
            (dq,) = [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] == out.name]
            for n in g.node:  # the uint8 tensor takes the output's name
                n.output[:] = [out.name if o == dq.input[0] else o for o in n.output]
                if n is not dq:
                    n.input[:] = [out.name if i == dq.input[0] else i for i in n.input]
            quant[out.name] = {"scale": float(inits[dq.input[1]]), "zero_point": int(inits[dq.input[2]])}
            g.node.remove(dq)
            out.type.tensor_type.elem_type = TensorProto.UINT8
    onnx.checker.check_model(m)
    onnx.save(m, out_path)
    return quant


def _file_entry(path: Path, base: Path, precision: str, outputs: dict, **extra) -> dict:
    blob = path.read_bytes()
    dtype = "float32" if precision == "fp32" else "uint8"
    return {"path": str(path.relative_to(base)), "format": "onnx", "runtime": "onnxruntime",
            "precision": precision, "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob),
            "input": {"name": "images", "dtype": dtype, "scale": INPUT_SCALE, "zero_point": 0},
            "outputs": outputs, **extra}


def write_manifest(base: Path) -> Path:
    """Build both fixture models (fp32 + int8 variants) under base/ and a manifest.json for them,
    as a user bringing their own models would. Returns the manifest path."""
    import onnx

    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, build, tile, roles in (
            ("blocks_yolo", yolo_model, YOLO_TILE, {"predictions": "output0"}),
            ("blocks_centernet", centernet_model, CN_TILE,
             {"heatmap": "heatmap", "size": "size", "offset": "offset"})):
        fp32 = base / f"{name}_fp32.onnx"
        onnx.save(build(), fp32)
        int8 = base / f"{name}_int8.onnx"
        quantize(str(fp32), str(int8), tile)
        files = {"onnx_fp32": _file_entry(fp32, base, "fp32", roles),
                 "onnx_int8": _file_entry(int8, base, "int8", roles)}
        if name == "blocks_yolo":
            raw = base / f"{name}_int8_rawout.onnx"
            q = quantize(str(fp32), str(raw), tile, integer_outputs=True)
            files["onnx_int8_rawout"] = _file_entry(raw, base, "int8", roles,
                                                    output_quantization={"predictions": q["output0"]})
            head = {"type": "yolov8", "score_threshold": 0.5, "nms_iou": 0.5, "max_detections": 50}
        else:
            head = {"type": "centernet", "stride": CN_STRIDE, "score_threshold": 0.5,
                    "max_detections": 50, "nms_iou": 0.5}
        entries[name] = {
            "task": "detection", "classes": ["red", "green"] if name == "blocks_yolo" else ["red"],
            "description": "test fixture: colour-block detector",
            "input": {"shape": [1, 3, tile, tile], "layout": "NCHW", "color": "RGB", "bit_depth": 8},
            "preprocess": {"mean": [0, 0, 0], "std": [255, 255, 255]},
            "head": head, "files": files}
    path = base / "manifest.json"
    path.write_text(json.dumps({"schema": 1, "models": entries}, indent=1))
    return path
