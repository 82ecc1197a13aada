"""ONNX exports of the detector: fp32 (single file), int8 QDQ taking raw uint8 pixels, ORT format.

fp32:  torch.onnx.export(dynamo=True, external_data=False), input "images" float32 [1,3,256,256] = raw/255,
       outputs "heatmap", "size", "offset".
int8:  ORT static QDQ quantization of the fp32 graph (uint8 activations, per-channel int8 weights),
       calibrated on training tiles. The input's quantization is pinned to scale 1/255, zero point 0 -- exactly
       the uint8 pixel -- so the input QuantizeLinear is dropped and the graph input becomes uint8: the runtime
       feeds raw pixels (identity LUT) and the first DequantizeLinear does raw/255 in the graph.
ORT:   the int8 graph saved in ORT flatbuffer format after the portable (EXTENDED) optimizations: QDQ is fused
       into QLinear* kernels, but no x86-only layout (NCHWc) transforms, so the file also runs on ARM.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import torch

from models.detector import CenterNet, fused

INPUT_NAME = "images"
OUTPUT_NAMES = ("heatmap", "size", "offset")
TILE = 256
INPUT_SCALE = 1.0 / 255.0   # uint8 input: x = (q - 0) * 1/255 = raw/255, the fp32 convention
OPSET = 18


def export_onnx_fp32(model: CenterNet, path: str) -> None:
    """Export BN-folded `model` as one self-contained fp32 ONNX file."""
    export_model = fused(model)
    x = torch.rand(1, 3, TILE, TILE)
    prog = torch.onnx.export(export_model, (x,), dynamo=True, external_data=False, opset_version=OPSET,
                             input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), verbose=False)
    prog.save(path, external_data=False)
    m = onnx.load(path)
    onnx.checker.check_model(m)
    got = [o.name for o in m.graph.output]
    if got != list(OUTPUT_NAMES) or m.graph.input[0].name != INPUT_NAME:
        raise RuntimeError(f"unexpected graph names: input {m.graph.input[0].name}, outputs {got}")
    # Exported graph == torch model, within float noise.
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = [t.numpy() for t in export_model(x)]
    out = sess.run(None, {INPUT_NAME: x.numpy()})
    err = max(float(np.abs(a - b).max()) for a, b in zip(ref, out))
    if err > 1e-3:
        raise RuntimeError(f"ONNX fp32 export differs from torch by {err}")


class _Calib:
    """ORT CalibrationDataReader over uint8 NHWC tiles, fed as the fp32 graph expects (raw/255 NCHW)."""

    def __init__(self, images_u8):
        self._it = iter(images_u8)

    def get_next(self):
        img = next(self._it, None)
        if img is None:
            return None
        x = img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        return {INPUT_NAME: x}


def _uint8_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the input QuantizeLinear: the graph input itself becomes the uint8 quantized tensor."""
    g = model.graph
    qs = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == INPUT_NAME]
    if len(qs) != 1:
        raise RuntimeError(f"expected one QuantizeLinear on the input, found {len(qs)}")
    q = qs[0]
    inits = {i.name: i for i in g.initializer}
    scale = float(onnx.numpy_helper.to_array(inits[q.input[1]]))
    zp = onnx.numpy_helper.to_array(inits[q.input[2]])
    if zp.dtype != np.uint8 or int(zp) != 0 or not np.isclose(scale, INPUT_SCALE, rtol=1e-6):
        raise RuntimeError(f"input quantization is scale {scale} zero point {zp!r} ({zp.dtype}), want 1/255, 0 uint8")
    for n in g.node:
        for k, name in enumerate(n.input):
            if name == q.output[0]:
                n.input[k] = INPUT_NAME
    g.node.remove(q)
    g.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    return model


def quantize_int8(fp32_path: str, calib_images_u8, out_path: str) -> None:
    """Static QDQ int8 model taking raw uint8 pixels. calib_images_u8: iterable of (256,256,3) uint8."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
        qdq = os.path.join(tmp, "qdq.onnx")
        quantize_static(
            pre, qdq, _Calib(calib_images_u8), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                # Pin the input to the uint8 pixel grid (calibration would find a narrower range).
                "TensorQuantOverrides": {INPUT_NAME: [{"scale": np.array(INPUT_SCALE, np.float32),
                                                       "zero_point": np.array(0, np.uint8)}]},
                "ActivationSymmetric": False, "WeightSymmetric": True,
            })
        model = _uint8_input(onnx.load(qdq))
    onnx.checker.check_model(model)
    onnx.save(model, out_path)


def to_ort_format(onnx_path: str, ort_path: str) -> None:
    """Save `onnx_path` as an ORT-format model, optimized only with the portable (EXTENDED) passes."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = ort_path
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])


def ort_latency_ms(path: str, feed: np.ndarray, repeats: int = 50, warmup: int = 5) -> float:
    """Median per-tile latency of one session run on 1 thread (plain onnxruntime session)."""
    import time
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    with open(path, "rb") as f:
        sess = ort.InferenceSession(f.read(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: feed})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: feed})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)
