"""Full-integer int8 TFLite export of the CenterNet detector (litert-torch, PT2E).

Path: torch.export -> PT2E static quantization (int8 activations, per-channel int8 weights,
calibrated on the representative tiles) -> litert_torch.convert. The converter already gives
int8 graph input/outputs for a PT2E graph, so no flatbuffer surgery is needed.

The input quantization is pinned, not calibrated: x = raw/255 in [0, 1] quantized with scale 1/255
and zero point -128 means q = raw - 128 exactly, so the runtime feeds pixels through a LUT with no
rounding. Calibration would only find that range if the tiles held both a 0 and a 255 pixel.

Build-time only (needs .venv-models: torch, litert-torch; see models/requirements-tflite.txt).
Run as a script for a self-check (conversion time, validation vs fp32, 1-thread tile latency);
without --weights the detector is randomly initialised:
    .venv-models/bin/python -m models.export_tflite [--weights W.pt] [--out F.tflite]
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn

from edge.evaluate import box_iou

ROLES = ("heatmap", "size", "offset")
INPUT_NAME = "images"
TILE = 256
INPUT_SCALE = 1.0 / 255.0  # x = raw/255 ...
INPUT_ZERO_POINT = -128     # ... so q = round(x/scale) + zp = raw - 128

# Ops the litert-torch PT2E quantizer leaves unannotated; unannotated ops would stay float and
# break "full integer". Resizing only moves values: it shares its input's qparams (TFLite's int8
# RESIZE_* kernels want equal input/output scales anyway).
_SHARED_QPARAMS_OPS = {
    torch.ops.aten.upsample_nearest2d.default,
    torch.ops.aten.upsample_nearest2d.vec,
    torch.ops.aten.upsample_bilinear2d.default,
    torch.ops.aten.upsample_bilinear2d.vec,
    torch.ops.aten._upsample_nearest_exact2d.default,
    torch.ops.aten._upsample_nearest_exact2d.vec,
    torch.ops.aten.pixel_shuffle.default,
}
# Ops that get their own calibrated output qparams when the stock annotators miss them: a ReLU
# not fused into a conv/add, and elementwise math with a constant (e.g. `size * stride + 1.0`).
_OWN_QPARAMS_OPS = {
    torch.ops.aten.relu.default, torch.ops.aten.relu_.default,
    torch.ops.aten.add.Tensor, torch.ops.aten.sub.Tensor, torch.ops.aten.mul.Tensor,
}


class _RoleOutputs(nn.Module):
    """Names the graph input "images" and the outputs by role, whatever the detector returns."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images):
        out = self.model(images)
        if isinstance(out, dict):
            return {role: out[role] for role in ROLES}
        return dict(zip(ROLES, out))


def _quantizer():
    from litert_torch.quantize import pt2e_quantizer as pq
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    config = pq.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    # Min/max activation ranges, not the default histogram search: on this detector the histogram
    # observer clips the top of some ranges, and the clipped values are exactly the confident
    # heatmap peaks and large boxes (measured: max heatmap error 0.16 -> 0.025, size 11 -> 3 px).
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver)
    config = dataclasses.replace(config, input_activation=act, output_activation=act)

    class FullIntQuantizer(pq.PT2EQuantizer):
        def transform_for_annotation(self, gm):
            gm = super().transform_for_annotation(gm)
            # python-int scalars (e.g. `* stride`) became int64 constants: observers need float
            for name, buf in list(gm.named_buffers()):
                if name.startswith("_tensor_constant_") and not buf.is_floating_point():
                    gm.register_buffer(name, buf.float())
            return gm

        def annotate(self, gm):
            gm = super().annotate(gm)
            for n in gm.graph.nodes:  # topological order: producers are annotated first
                ann = n.meta.get("quantization_annotation")
                if n.op != "call_function" or (ann is not None and ann._annotated):
                    continue
                src = n.args[0] if n.args else None
                if not isinstance(src, torch.fx.Node):
                    continue
                if n.target in _SHARED_QPARAMS_OPS:
                    shared = SharedQuantizationSpec(src)
                    n.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={src: shared}, output_qspec=shared, _annotated=True)
                elif n.target in _OWN_QPARAMS_OPS:
                    inputs = {a: act for a in n.args if isinstance(a, torch.fx.Node)}
                    n.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map=inputs, output_qspec=act, _annotated=True)
            return gm

    return FullIntQuantizer().set_global(config)


def _to_input(tile_hwc_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(tile_hwc_u8.transpose(2, 0, 1)))[None].float() / 255.0


def _pin_input_qparams(prepared: torch.fx.GraphModule) -> int:
    """Swap the graph input's observer(s) for fixed qparams (1/255, -128): a calibrated range
    would be [darkest, brightest] pixel of the calibration tiles, not exactly [0, 1]."""
    from torchao.quantization.pt2e.observer import FixedQParamsObserver

    pinned = 0
    for node in prepared.graph.nodes:
        if node.op != "placeholder":
            continue
        for user in node.users:
            if user.op == "call_module" and hasattr(getattr(prepared, user.target), "calculate_qparams"):
                setattr(prepared, user.target, FixedQParamsObserver(
                    scale=INPUT_SCALE, zero_point=INPUT_ZERO_POINT, dtype=torch.int8,
                    quant_min=-128, quant_max=127))
                pinned += 1
    return pinned


def _export_copy(torch_model: nn.Module) -> nn.Module:
    """BatchNorm must be folded first (PT2E would keep it as float math)."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in torch_model.modules()):
        from models import detector

        if not isinstance(torch_model, detector.CenterNet):
            raise ValueError("torch_model has BatchNorm layers: fold them into the convs first")
        torch_model = detector.fused(torch_model)
    return torch_model.eval()


def convert_int8(torch_model: nn.Module, calib_images: np.ndarray) -> bytes:
    """Quantize (PT2E) and convert; returns the .tflite flatbuffer bytes."""
    import litert_torch
    from litert_torch.quantize import quant_config as qcfg
    from torchao.quantization.pt2e import quantize_pt2e

    calib = np.asarray(calib_images)
    if calib.ndim != 4 or calib.shape[1:] != (TILE, TILE, 3) or calib.dtype != np.uint8 or len(calib) == 0:
        raise ValueError(f"calib_images must be (N>0,{TILE},{TILE},3) uint8 RGB, got {calib.shape} {calib.dtype}")
    model = _RoleOutputs(_export_copy(torch_model)).eval()
    example = {INPUT_NAME: _to_input(calib[0])}
    quantizer = _quantizer()
    with torch.no_grad():
        graph = torch.export.export(model, (), example).module()
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        if _pin_input_qparams(prepared) == 0:
            raise RuntimeError("no observer found on the graph input: cannot pin scale 1/255")
        for tile in calib:  # batch 1: the exported graph is specialised to the tile shape
            prepared(**{INPUT_NAME: _to_input(tile)})
        quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        # the graph was exported from an eval() model already; this only silences the
        # converter's "training mode" warning (exported modules refuse .eval())
        quantized.training = False
        edge = litert_torch.convert(quantized, sample_kwargs=example,
                                    quant_config=qcfg.QuantConfig(pt2e_quantizer=quantizer))
    return edge.model_content()


def _interpreter(model: bytes, *, xnnpack: bool = False, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_content=model, num_threads=threads, experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    return it


def _qparams(detail) -> tuple[float, int]:
    scale, zp = detail["quantization"]
    return float(scale), int(zp)


def describe(model: bytes) -> dict:
    """Manifest fields of a converted file, read back from the flatbuffer itself; checks that it
    is full-integer (int8 I/O, no float tensor between them)."""
    it = _interpreter(model)
    (inp,) = it.get_input_details()
    out_by_index = {d["index"]: d for d in it.get_output_details()}
    # signature output keys are the roles (dict keys of _RoleOutputs); map them to tensor names
    sig_outputs = {k: d["index"] for k, d in it.get_signature_runner().get_output_details().items()}
    outputs, out_q = {}, {}
    for role in ROLES:
        d = out_by_index[sig_outputs[role]]
        if d["dtype"] not in (np.int8, np.uint8):
            raise RuntimeError(f"output {role!r} is {d['dtype']}, not int8: conversion is not full-integer")
        outputs[role] = d["name"]
        scale, zp = _qparams(d)
        out_q[role] = {"dtype": np.dtype(d["dtype"]).name, "scale": scale, "zero_point": zp,
                       "shape": [int(s) for s in d["shape"]]}
    if inp["dtype"] != np.int8:
        raise RuntimeError(f"input is {inp['dtype']}, not int8: conversion is not full-integer")
    float_tensors = sorted(
        t["name"] for t in it.get_tensor_details()
        if t["dtype"] == np.float32 and t["index"] not in (inp["index"], *out_by_index))
    if float_tensors:
        raise RuntimeError(f"float tensors inside the graph (not full-integer): {float_tensors[:8]}")
    scale, zp = _qparams(inp)
    return {
        "input": {"name": inp["name"], "dtype": "int8", "scale": scale, "zero_point": zp},
        "outputs": outputs,
        "output_quantization": out_q,
        "ops": sorted({o["op_name"] for o in it._get_ops_details()}),
        "input_is_raw_minus_128": bool(abs(scale - INPUT_SCALE) < 1e-9 and zp == INPUT_ZERO_POINT),
    }


def export_tflite_int8(torch_model: nn.Module, calib_images: np.ndarray, out_path) -> dict:
    """Convert `torch_model` (input "images" [1,3,256,256] = raw/255; outputs heatmap/size/offset)
    to a full-integer int8 .tflite at `out_path`, calibrated on `calib_images` ((N,256,256,3)
    uint8 RGB). Returns the per-file manifest fields (input name/dtype/scale/zero point, outputs
    {role: tensor name}, each output's dtype/scale/zero point) as read back from the file."""
    t0 = time.perf_counter()
    model = convert_int8(torch_model, calib_images)
    seconds = time.perf_counter() - t0
    with open(out_path, "wb") as f:
        f.write(model)
    info = describe(model)
    if not info["input_is_raw_minus_128"]:
        # say so loudly: the runtime LUT is built from whatever we return, so it stays correct
        print(f"WARNING: input quantization is scale={info['input']['scale']} "
              f"zero_point={info['input']['zero_point']}, not 1/255 and -128")
    info["size"] = len(model)
    info["convert_seconds"] = round(seconds, 2)
    return info


# --- validation and timing (build-time self-check) -----------------------------------------

def run_tflite(it, tile_hwc_u8: np.ndarray, info: dict) -> dict:
    """One tile through the interpreter: q = raw - 128 in, dequantized float outputs by role."""
    inp = it.get_input_details()[0]
    scale, zp = info["input"]["scale"], info["input"]["zero_point"]
    x = np.round(tile_hwc_u8.transpose(2, 0, 1)[None].astype(np.float64) / 255.0 / scale) + zp
    it.set_tensor(inp["index"], np.clip(x, -128, 127).astype(np.int8))
    it.invoke()
    by_name = {d["name"]: d for d in it.get_output_details()}
    out = {}
    for role, name in info["outputs"].items():
        d = by_name[name]
        s, z = _qparams(d)
        out[role] = (it.get_tensor(d["index"]).astype(np.float32) - z) * s
    return out


def decode(out: dict, stride: int = 4, threshold: float = 0.3, top_k: int = 100):
    """Minimal CenterNet decode (3x3 peak, top-K, threshold) used only to compare fp32 vs int8."""
    hm = out["heatmap"][0]
    padded = np.pad(hm, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2)).max(axis=(-1, -2))
    peaks = np.where(hm == win, hm, 0).reshape(-1)
    order = np.argsort(-peaks, kind="stable")[:top_k]
    order = order[peaks[order] >= threshold]
    c, rem = np.divmod(order, hm.shape[1] * hm.shape[2])
    iy, ix = np.divmod(rem, hm.shape[2])
    cx = (ix + out["offset"][0, 0, iy, ix]) * stride
    cy = (iy + out["offset"][0, 1, iy, ix]) * stride
    w, h = out["size"][0, 0, iy, ix], out["size"][0, 1, iy, ix]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).clip(0, hm.shape[1] * stride)
    return boxes.astype(np.float32), peaks[order].astype(np.float32), order  # order: class*H*W + cell


def validate(torch_model: nn.Module, model: bytes, info: dict, images: np.ndarray) -> dict:
    """Dequantized int8 outputs vs torch fp32 on `images`: max abs error per output, and how the
    decoded detections agree: peaks (class, cell) found by both, fp32 boxes matched by an int8 box
    at IoU >= 0.5, and the largest box-coordinate difference over the shared peaks."""
    it = _interpreter(model)
    err = {role: 0.0 for role in ROLES}
    mean_err = {role: 0.0 for role in ROLES}
    n_ref = n_int8 = n_same_peak = n_iou = 0
    box_err = score_err = 0.0
    for tile in images:
        with torch.no_grad():
            ref = _RoleOutputs(torch_model.eval())(_to_input(tile))  # unfused fp32 reference
        ref = {k: v.numpy() for k, v in ref.items()}
        got = run_tflite(it, tile, info)
        for role in ROLES:
            err[role] = max(err[role], float(np.abs(ref[role] - got[role]).max()))
            mean_err[role] += float(np.abs(ref[role] - got[role]).mean()) / len(images)
        rb, rs, rk = decode(ref)
        gb, gs, gk = decode(got)
        n_ref, n_int8 = n_ref + len(rb), n_int8 + len(gb)
        shared = {int(k): i for i, k in enumerate(gk)}
        for i, k in enumerate(rk):
            if int(k) in shared:
                n_same_peak += 1
                box_err = max(box_err, float(np.abs(rb[i] - gb[shared[int(k)]]).max()))
                score_err = max(score_err, float(abs(rs[i] - gs[shared[int(k)]])))
        if len(rb) and len(gb):
            n_iou += int((box_iou(rb, gb).max(axis=1) >= 0.5).sum())
    return {"max_abs_err": err, "mean_abs_err": mean_err, "detections_fp32": n_ref,
            "detections_int8": n_int8, "same_peak": n_same_peak, "fp32_matched_iou50": n_iou,
            "max_box_err_px_same_peak": box_err, "max_score_err_same_peak": score_err}


def tile_latency_ms(model: bytes, *, xnnpack: bool, repeats: int = 200) -> float:
    """Median single-thread invoke time of one 256x256 tile."""
    it = _interpreter(model, xnnpack=xnnpack, threads=1)
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], np.zeros(inp["shape"], np.int8))
    for _ in range(10):
        it.invoke()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        it.invoke()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def _main() -> None:
    import argparse
    import json

    from models.detector import build
    from models.scenes import generate_scene

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="state_dict .pt (default: random init)")
    ap.add_argument("--out", default="/tmp/ship_int8.tflite")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--val", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build()
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu"))
    calib = np.stack([generate_scene(10_000 + i).image for i in range(args.calib)])
    val = np.stack([generate_scene(20_000 + i).image for i in range(args.val)])
    info = export_tflite_int8(model, calib, args.out)
    data = open(args.out, "rb").read()
    info["validation"] = validate(model, data, info, val)
    info["tile_ms_1thread_builtin"] = round(tile_latency_ms(data, xnnpack=False), 3)
    info["tile_ms_1thread_xnnpack"] = round(tile_latency_ms(data, xnnpack=True), 3)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    _main()
