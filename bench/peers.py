"""The peers orbit-edge's kernels are measured against: what a user would otherwise pick.

Each peer is wrapped so that it does the same work as our kernel (same inputs, same outputs, same
single thread) and nothing else; set-up that a real caller does once (ONNX Runtime session, LUT
layout, float64 scores for powerboxes) happens outside the timed call. A peer that is not installed
or cannot do the work returns a reason instead of a callable; the run reports it as null.

Import this module only after `pin_single_thread()` has been given a chance to run: some peers read
their thread settings when they load.
"""
from __future__ import annotations

import importlib
import os
import zlib
from collections.abc import Callable

import numpy as np

#: Distribution names of the peers, for the version table.
PEER_DISTRIBUTIONS = {
    "opencv": "opencv-python-headless",
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
    "powerboxes": "powerboxes",
    "crc32c": "crc32c",
}

# ONNX opset of the one-node NMS model: NonMaxSuppression-11 is the current definition.
_NMS_OPSET = 11
# An IR version every ONNX Runtime since 1.14 reads, whatever the installed onnx writes by default.
_ONNX_IR_VERSION = 8


def _optional(module: str):
    """(module, None) or (None, reason) when it cannot be imported."""
    try:
        return importlib.import_module(module), None
    except ImportError as exc:
        return None, f"{module} not importable: {exc}"


def versions() -> dict[str, str | None]:
    """Installed version of each peer distribution (None when absent)."""
    from importlib import metadata

    out = {}
    for key, dist in PEER_DISTRIBUTIONS.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["zlib"] = zlib.ZLIB_RUNTIME_VERSION
    return out


def pin_single_thread() -> dict[str, object]:
    """Pin every peer to one thread; return what each one reports (or how it was pinned)."""
    # powerboxes is Rust; only its parallel_* functions use a rayon pool, but pin it anyway.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    threads: dict[str, object] = {
        "edge": 1,  # our kernels are single-threaded by design
        "numpy": 1,  # the references use no BLAS
        "powerboxes": f"RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']} (rtree_nms is sequential)",
        "crc32c": 1,
        "zlib": 1,
    }
    cv2, _ = _optional("cv2")
    if cv2 is not None:
        cv2.setNumThreads(1)
        threads["opencv"] = cv2.getNumThreads()
    threads["onnxruntime"] = "intra_op_num_threads=1, inter_op_num_threads=1, sequential"
    return threads


# ---------------------------------------------------------------------------------------------
# Preprocessing: HWC uint8 frame -> int8 NCHW tiles through a per-channel LUT
# ---------------------------------------------------------------------------------------------

PreprocessFn = Callable[[], None]


def opencv_preprocess_routes(frame: np.ndarray, origins: np.ndarray, tile_h: int, tile_w: int,
                             bands: tuple[int, ...], lut: np.ndarray, out: np.ndarray
                             ) -> tuple[dict[str, PreprocessFn], str | None]:
    """OpenCV routes that write the same int8 NCHW tiles as preprocess_tiles into `out`.

    lut: (channels, 256) int8, row c maps raw values of band bands[c]. Every route is a zero-argument
    callable; the caller checks which ones reproduce our output bit for bit. Returns (routes, reason):
    no routes and a reason when OpenCV is missing.
    """
    cv2, why = _optional("cv2")
    if cv2 is None:
        return {}, why
    n_ch = len(bands)
    if lut.shape != (n_ch, 256) or lut.dtype != np.int8:
        return {}, f"OpenCV routes need a (bands, 256) int8 LUT, got {lut.shape} {lut.dtype}"
    if frame.ndim != 3 or frame.dtype != np.uint8:
        return {}, "OpenCV routes need an HWC uint8 frame"
    # cv2.LUT wants a 256-entry table: one (256, 1) table per plane, or a (256, 1, C) table that maps
    # channel c of an image through its own column.
    plane_luts = [np.ascontiguousarray(lut[c]).reshape(256, 1) for c in range(n_ch)]
    lut_hwc = np.ascontiguousarray(lut.T).reshape(256, 1, n_ch)
    all_bands = tuple(bands) == tuple(range(frame.shape[2]))
    tiles = [(i, int(y), int(x)) for i, (y, x) in enumerate(origins)]

    def _tile(y, x):
        t = frame[y:y + tile_h, x:x + tile_w]
        return t if all_bands else t[:, :, list(bands)]

    def split_then_lut():
        # cv2.split the HWC tile into planes, then cv2.LUT each plane straight into the output plane
        for i, y, x in tiles:
            planes = cv2.split(_tile(y, x))
            for c in range(n_ch):
                cv2.LUT(planes[c], plane_luts[c], out[i, c])

    def lut_then_split():
        # cv2.LUT on the HWC tile with a per-channel table, then extract each plane into the output
        for i, y, x in tiles:
            q = cv2.LUT(_tile(y, x), lut_hwc)
            for c in range(n_ch):
                cv2.extractChannel(q, c, out[i, c])

    def mix_then_lut_in_place():
        # cv2.mixChannels de-interleaves straight into the output planes (as uint8), then cv2.LUT
        # maps each plane in place (element-wise, so in place is safe)
        pairs = [v for c, b in enumerate(bands) for v in (b, c)]
        for i, y, x in tiles:
            raw = out[i].view(np.uint8)
            cv2.mixChannels([frame[y:y + tile_h, x:x + tile_w]], [raw[c] for c in range(n_ch)], pairs)
            for c in range(n_ch):
                cv2.LUT(raw[c], plane_luts[c], out[i, c])

    routes = {
        "per tile: cv2.split -> cv2.LUT per plane into out": split_then_lut,
        "per tile: cv2.LUT (3-channel table) -> cv2.extractChannel into out": lut_then_split,
        "per tile: cv2.mixChannels into out -> cv2.LUT in place": mix_then_lut_in_place,
    }
    return routes, None


def opencv_preprocess_same_work(frame: np.ndarray, origins: np.ndarray, tile_h: int, tile_w: int,
                                bands: tuple[int, ...], lut: np.ndarray, out: np.ndarray,
                                bright_threshold: int, band_mean: np.ndarray, bright_fraction: np.ndarray,
                                nodata_fraction: np.ndarray) -> tuple[PreprocessFn | None, str | None]:
    """The fastest tiles-only route (split -> LUT per plane) plus the per-tile statistics that
    preprocess_tiles computes in the same pass, done the OpenCV way: cv2.mean per tile, and the
    per-pixel min / max over the planes counted with cv2.compare + cv2.countNonZero. This is the
    same work as ours, so it is the peer the >= 10x target is judged against."""
    cv2, why = _optional("cv2")
    if cv2 is None:
        return None, why
    if frame.ndim != 3 or frame.dtype != np.uint8 or tuple(bands) != tuple(range(frame.shape[2])):
        return None, "the same-work OpenCV route needs an HWC uint8 frame using all its bands in order"
    if len(bands) > 4:
        return None, "cv2.mean handles at most 4 channels"
    n_ch = len(bands)
    plane_luts = [np.ascontiguousarray(lut[c]).reshape(256, 1) for c in range(n_ch)]
    area = float(tile_h * tile_w)
    tiles = [(i, int(y), int(x)) for i, (y, x) in enumerate(origins)]
    lo = np.empty((tile_h, tile_w), np.uint8)
    hi = np.empty((tile_h, tile_w), np.uint8)
    mask = np.empty((tile_h, tile_w), np.uint8)

    def run():
        for i, y, x in tiles:
            tile = frame[y:y + tile_h, x:x + tile_w]
            planes = cv2.split(tile)
            for c in range(n_ch):
                cv2.LUT(planes[c], plane_luts[c], out[i, c])
            band_mean[i] = cv2.mean(tile)[:n_ch]
            np.copyto(lo, planes[0])
            np.copyto(hi, planes[0])
            for p in planes[1:]:
                cv2.min(lo, p, lo)
                cv2.max(hi, p, hi)
            cv2.compare(lo, bright_threshold, cv2.CMP_GE, mask)
            bright_fraction[i] = cv2.countNonZero(mask) / area
            nodata_fraction[i] = (area - cv2.countNonZero(hi)) / area

    return run, None


def opencv_blob_route(frame: np.ndarray, origins: np.ndarray, tile_h: int, tile_w: int,
                      bands: tuple[int, ...], mean, std, scale, zero_point, out: np.ndarray
                      ) -> tuple[PreprocessFn | None, str | None]:
    """The DNN-module route: cv2.dnn.blobFromImagesWithParams (float32 NCHW, (x - mean) / std per
    channel) then int8 quantization with cv2.addWeighted(dtype=CV_8S) (round half to even,
    saturating) per channel. Arithmetic in float32, so it may differ from our LUT in the last unit."""
    cv2, why = _optional("cv2")
    if cv2 is None:
        return None, why
    n_ch = len(bands)
    if n_ch > 4:
        return None, "cv2.dnn blobs take at most 4 channels (a cv::Scalar per channel)"
    mean = np.broadcast_to(np.asarray(mean, np.float64), (n_ch,))
    std = np.broadcast_to(np.asarray(std, np.float64), (n_ch,))
    scale = np.broadcast_to(np.asarray(scale, np.float64), (n_ch,))
    zero_point = np.broadcast_to(np.asarray(zero_point, np.float64), (n_ch,))
    params = cv2.dnn.Image2BlobParams()
    params.size = (tile_w, tile_h)
    params.ddepth = cv2.CV_32F
    params.swapRB = False
    params.mean = tuple(float(m) for m in mean) + (0.0,) * (4 - n_ch)
    params.scalefactor = tuple(float(1.0 / s) for s in std) + (0.0,) * (4 - n_ch)
    n = len(origins)
    plane = tile_h * tile_w
    # per channel, the (n, plane) output rows are strided by the tile: OpenCV takes the row step
    out_rows = [out.reshape(n, n_ch, plane)[:, c, :] for c in range(n_ch)]
    all_bands = tuple(bands) == tuple(range(frame.shape[2]))

    def blob_then_quantize():
        tiles = [frame[y:y + tile_h, x:x + tile_w] if all_bands
                 else np.ascontiguousarray(frame[y:y + tile_h, x:x + tile_w][:, :, list(bands)])
                 for y, x in origins]
        blob = cv2.dnn.blobFromImagesWithParams(tiles, params).reshape(n, n_ch, plane)
        for c in range(n_ch):
            cv2.addWeighted(blob[:, c, :], float(1.0 / scale[c]), blob[:, c, :], 0.0,
                            float(zero_point[c]), out_rows[c], dtype=cv2.CV_8S)

    return blob_then_quantize, None


# ---------------------------------------------------------------------------------------------
# NMS: class-agnostic greedy NMS, IoU 0.5, no score threshold; every peer returns kept indices
# ---------------------------------------------------------------------------------------------

NmsFn = Callable[[], np.ndarray]

#: How each NMS peer computes and breaks ties (for RESULTS.md).
NMS_CONVENTIONS = {
    "opencv": "cv2.dnn.NMSBoxes on (x, y, w, h) Rect2d boxes, IoU in double, suppresses IoU > threshold; "
              "keeps only score > score_threshold and refuses a negative one (0.0 passed: every "
              "clustered score is > 0); stable sort, so equal scores keep index order; class-agnostic; "
              "compares each candidate with every kept box (O(N*K)).",
    "onnxruntime": "NonMaxSuppression-11 (one-node model, center_point_box=0, xyxy passed: IoU is symmetric "
                   "in x and y), IoU in float32, suppresses IoU > threshold, boxes of zero area never suppress; "
                   "score_threshold input omitted (no filter); std::priority_queue order, so equal scores come "
                   "out in heap order; compares with every kept box of the class (O(N*K)).",
    "powerboxes": "powerboxes.rtree_nms (R-tree of all boxes, queried per kept box), IoU in float64 with a "
                  "tiny epsilon in the denominator, suppresses IoU > threshold; keeps score >= "
                  "score_threshold (0.0 passed); unstable sort, so equal scores come out in any order; "
                  "scores must be float64 (converted once, outside the timing).",
}


def opencv_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
               ) -> tuple[NmsFn | None, str | None]:
    cv2, why = _optional("cv2")
    if cv2 is None:
        return None, why
    # cv2 wants (x, y, w, h); a float array selects the Rect2d (double) overload
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float32)
    s = np.ascontiguousarray(scores, dtype=np.float32)
    if s.size and float(s.min()) <= 0.0:
        return None, "cv2.dnn.NMSBoxes drops scores <= 0 (its score_threshold must be >= 0)"

    def run():
        return np.asarray(cv2.dnn.NMSBoxes(xywh, s, 0.0, iou_threshold), dtype=np.int64).ravel()

    return run, None


def ort_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
            ) -> tuple[NmsFn | None, str | None]:
    ort, why = _optional("onnxruntime")
    if ort is None:
        return None, why
    onnx, why = _optional("onnx")
    if onnx is None:
        return None, why
    from onnx import TensorProto, helper

    n = len(boxes)
    node = helper.make_node("NonMaxSuppression",
                            ["boxes", "scores", "max_output_boxes_per_class", "iou_threshold"],
                            ["selected_indices"], center_point_box=0)
    graph = helper.make_graph(
        [node], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "N", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, "N"])],
        [helper.make_tensor_value_info("selected_indices", TensorProto.INT64, ["K", 3])],
        initializer=[helper.make_tensor("max_output_boxes_per_class", TensorProto.INT64, [1], [n]),
                     helper.make_tensor("iou_threshold", TensorProto.FLOAT, [1], [iou_threshold])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _NMS_OPSET)])
    model.ir_version = _ONNX_IR_VERSION
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 -- any ORT failure makes this peer unavailable
        return None, f"onnxruntime could not load the NonMaxSuppression model: {exc}"
    feeds = {"boxes": np.ascontiguousarray(boxes, np.float32)[None],
             "scores": np.ascontiguousarray(scores, np.float32)[None, None]}

    def run():
        return session.run(None, feeds)[0][:, 2]

    return run, None


def powerboxes_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
                   ) -> tuple[NmsFn | None, str | None]:
    pb, why = _optional("powerboxes")
    if pb is None:
        return None, why
    b = np.ascontiguousarray(boxes, np.float32)
    s = np.ascontiguousarray(scores, np.float64)  # its API takes float64 scores only

    def run():
        return pb.rtree_nms(b, s, iou_threshold, 0.0).astype(np.int64)

    return run, None


NMS_PEERS = {"opencv": opencv_nms, "ort": ort_nms, "powerboxes": powerboxes_nms}


# ---------------------------------------------------------------------------------------------
# CRC: the crc32c package (CRC-32C, hardware path when the CPU has one) and zlib (CRC-32, another
# polynomial: the checksum every Python has, a speed reference only)
# ---------------------------------------------------------------------------------------------

def crc_peers() -> tuple[dict[str, Callable[[memoryview], int]], dict[str, str]]:
    """(callables, reasons for the missing ones)."""
    peers: dict[str, Callable[[memoryview], int]] = {"zlib": zlib.crc32}
    missing: dict[str, str] = {}
    crc32c_pkg, why = _optional("crc32c")
    if crc32c_pkg is None:
        missing["crc32c_pkg"] = why
    else:
        peers["crc32c_pkg"] = crc32c_pkg.crc32c
    return peers, missing


def crc32c_pkg_hardware() -> bool | None:
    """Whether the crc32c package uses the CPU's CRC32C instruction."""
    crc32c_pkg, _ = _optional("crc32c")
    return None if crc32c_pkg is None else bool(getattr(crc32c_pkg, "hardware_based", False))
