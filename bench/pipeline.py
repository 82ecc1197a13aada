"""Pipeline benchmarks (issue 4): the whole flight path, not one kernel. Part of `make bench`.

    python -m bench.run --only pipeline            full run (~2-3 min once the inputs are cached)
    python -m bench.run --only pipeline --quick    fewer rounds, a 60-frame spool (development)

1. overhead + SAHI: FramePipeline.process on the demo scene (demo mission settings) against the time its
   own backend spends in backend.run over exactly the tiles the pipeline inferred; SAHI's
   get_sliced_prediction with the same ONNX model and our head decoder (only the framework differs);
   recall / precision of both against the scene's truth.
2. wire: bytes per detection of a real FlightLoop run of the demo scene, against the JSON a VLM would
   emit for the same detections.
3. memory: RSS (anonymous and file-backed apart) of a FlightLoop processing one memory-mapped
   10980 x 10980 x 4 uint16 frame, and over a spool of many small frames; each in a fresh subprocess.
4. cold start: spawn `edge run FRAME ...` -> first frame record in the output file.

Inputs are generated with models/scenes.py (fixed seeds) and cached under ~/.cache/orbit-edge/bench/,
keyed by their parameters and the generator's source hash. Timings: medians of interleaved rounds after
one warm-up round (one thread; garbage collector off inside a timed call). bench/README.md says more.

`python -m bench.pipeline --child KIND ...` is the fresh process of one memory measurement (internal).
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "orbit-edge" / "bench"
MISSION = REPO / "edge" / "missions" / "demo.toml"

DEMO_SIZE = 4096                # the demo scene, as the issue asks (edge.demo.SCENE_SIZE is the same)
BIG_SIZE = 10980                # a Sentinel-2 10 m tile: the memory benchmark's frame
SMALL_SIZE = 512                # spool and cold-start frames
SMALL_SEEDS = tuple(range(9101, 9109))  # distinct small scenes, hard-linked under many names
SAHI_SLICE = 256
SAHI_OVERLAP_PX = 32
MATCH_IOU = 0.5

# --- targets (issue 4) --------------------------------------------------------------------------
TARGET_OVERHEAD_PCT = 10.0      # (pipeline - inference) / inference
TARGET_SAHI_SPEEDUP = 3.0       # SAHI wall / ours
TARGET_BYTES_PER_DET = 10.0     # frame-record wire bytes / detection
TARGET_PEAK_MB = 250.0          # peak RSS, one 10980 x 10980 x 4 uint16 frame
TARGET_GROWTH_TOLERANCE = 1 << 20  # "no growth": RSS after N frames - after 10 frames <= 1 MiB (page noise)
#: ... and once warm (code paths touched for the first time, allocator arenas: the first ~100 frames),
#: RSS after N frames - after WARM_FRAMES frames <= STEADY_GROWTH_TOLERANCE: no leak.
WARM_FRAMES = 100
STEADY_GROWTH_TOLERANCE = 256 << 10
TARGET_COLD_START_S = 1.0

MB = 1e6
MIB = float(1 << 20)

#: Rounds of each mode: timed rounds after one warm-up round; spool length; cold-start spawns.
ROUNDS = {"full": 5, "quick": 2}
SPOOL_FRAMES = {"full": 500, "quick": 60}
COLD_RUNS = {"full": 5, "quick": 2}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _r(x, nd=3):
    return None if x is None else round(float(x), nd)


# ---------------------------------------------------------------------------------------------
# Inputs, cached
# ---------------------------------------------------------------------------------------------

def _scene_key(seed: int, h: int, w: int, params: dict) -> str:
    """Cache key: the generator's parameters and its source (a changed generator regenerates)."""
    src = (REPO / "models" / "scenes.py").read_bytes()
    blob = json.dumps({"seed": seed, "h": h, "w": w, "bands": "bgrn", "params": params}, sort_keys=True,
                      default=list).encode() + hashlib.sha256(src).digest()
    return f"scene-{seed}-{h}x{w}-bgrn-{hashlib.sha256(blob).hexdigest()[:12]}"


def _prune(keep: str) -> None:
    """Remove cached renderings of the same scene under other keys (older generator or parameters)."""
    stem = keep.rsplit("-", 1)[0] + "-"
    for p in CACHE.glob(stem + "*"):
        if not p.name.startswith(keep):
            p.unlink(missing_ok=True)


def demo_scene() -> tuple[np.ndarray, np.ndarray, Path]:
    """(image (4096, 4096, 4) uint16, truth boxes (N, 4), cache path) of the demo scene."""
    from edge.demo import SCENE_PARAMS, SCENE_SEED

    CACHE.mkdir(parents=True, exist_ok=True)
    key = _scene_key(SCENE_SEED, DEMO_SIZE, DEMO_SIZE, SCENE_PARAMS)
    img_path, box_path = CACHE / f"{key}.npy", CACHE / f"{key}.boxes.npy"
    _prune(key)
    if not (img_path.exists() and box_path.exists()):
        from models.scenes import generate_scene

        _log(f"pipeline: generating the demo scene -> {img_path}")
        tmp = img_path.with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16, shape=(DEMO_SIZE, DEMO_SIZE, 4))
        scene = generate_scene(SCENE_SEED, DEMO_SIZE, DEMO_SIZE, bands="bgrn", out=out, **SCENE_PARAMS)
        out.flush()
        del out
        np.save(box_path, scene.boxes)
        os.replace(tmp, img_path)
    return np.load(img_path), np.load(box_path), img_path


def _write_sidecar(raw: Path, shape, capture_time=None, georef=None) -> None:
    side = {"shape": list(shape), "dtype": "uint16", "layout": "HWC", "bit_depth": 12}
    if capture_time:
        side["capture_time"] = capture_time
    if georef:
        side["georef"] = georef
    raw.with_suffix(".json").write_text(json.dumps(side, indent=1))


def raw_scene(seed: int, size: int, params: dict) -> Path:
    """A cached .raw sensor dump (+ .json sidecar) of a generated size x size x 4 scene, rendered
    block-wise straight into a memmap (the 10980 px one takes ~10 s and ~0.96 GB of disk)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    raw = CACHE / f"{_scene_key(seed, size, size, params)}.raw"
    _prune(raw.stem)
    if raw.exists() and raw.with_suffix(".json").exists():
        return raw
    from models.scenes import generate_scene

    _log(f"pipeline: generating {size}x{size}x4 scene {seed} -> {raw}")
    tmp = raw.with_name(raw.name + ".part")
    shape = (size, size, 4)
    out = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=shape)
    generate_scene(seed, size, size, bands="bgrn", out=out, **params)
    out.flush()
    del out
    _write_sidecar(raw, shape)
    os.replace(tmp, raw)
    return raw


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _config(data_dir: Path, output: Path, **extra):
    from edge.config import apply_overrides, load_config

    return apply_overrides(load_config(MISSION), {"data.dir": str(data_dir), "downlink.output": str(output),
                                                  **extra})


# ---------------------------------------------------------------------------------------------
# Timing: interleaved rounds
# ---------------------------------------------------------------------------------------------

def _timed_call(fn):
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        result = fn()
        return (time.perf_counter() - t0) * 1e3, result
    finally:
        if was:
            gc.enable()


def interleaved(fns: dict, rounds: int) -> dict:
    """{name: (median ms, samples ms, last result)}: one warm-up round, then `rounds` rounds that call
    every fn once each in turn, so a change of machine load hits all of them alike."""
    samples = {k: [] for k in fns}
    last, times = {}, {}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            ms, last[name] = _timed_call(fn)
            if r:
                samples[name].append(ms)
            times[name] = ms
        _log(f"  round {r}{' (warm-up)' if r == 0 else ''}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in times.items()))
    return {k: (statistics.median(v), v, last[k]) for k, v in samples.items()}


# ---------------------------------------------------------------------------------------------
# 1. Pipeline overhead and SAHI
# ---------------------------------------------------------------------------------------------

class _Recorder:
    """Wraps a backend: records a copy of every batch the pipeline gives backend.run (untimed pass)."""

    def __init__(self, backend):
        self.backend, self.inputs = backend, []

    def run(self, batch):
        self.inputs.append(np.array(batch, copy=True))
        return self.backend.run(batch)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def _sahi_model_class():
    """A SAHI DetectionModel running an ONNX CenterNet through an onnxruntime InferenceSession (one
    thread), decoded by edge.heads.decode: the model and the decoder are ours, the framework is SAHI's."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction
    from sahi.utils.compatibility import fix_full_shape_list, fix_shift_amount_list

    from edge.backends import _quant_of
    from edge.heads import decode, dequantize

    class OnnxCenterNetModel(DetectionModel):
        required_packages = ["onnxruntime"]

        def __init__(self, *, model_entry, file_entry, score_threshold: float, threads: int = 1, **kw):
            self.model_entry, self.file_entry, self.threads = model_entry, file_entry, threads
            head = dict(model_entry.head)
            head["score_threshold"] = float(score_threshold)
            self.head = head
            self.roles = dict(file_entry.outputs)  # role -> tensor name
            self.quant = {r: _quant_of(file_entry, r) for r in self.roles}
            self.input_dtype = np.dtype(file_entry.input.dtype)
            super().__init__(model_path=str(file_entry.path), confidence_threshold=float(score_threshold),
                             category_mapping={str(i): c for i, c in enumerate(model_entry.classes)},
                             device="cpu", load_at_init=True)

        def load_model(self) -> None:
            import onnxruntime as ort

            so = ort.SessionOptions()  # as edge.backends.ort.OrtBackend sets them (copy mode)
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            self.set_model(ort.InferenceSession(self.model_path, so, providers=["CPUExecutionProvider"]))

        def set_model(self, model, **kwargs) -> None:
            self.model = model
            self.input_name = self.file_entry.input.name
            self.output_names = list(self.roles.values())

        def perform_inference(self, image: np.ndarray) -> None:
            # SAHI hands an HWC RGB slice; the model takes NCHW raw uint8 pixels (scale 1/255 in the graph)
            x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=self.input_dtype)
            outs = self.model.run(self.output_names, {self.input_name: x})
            self._original_predictions = [{r: dequantize(o, self.quant[r], r)[0]
                                           for r, o in zip(self.roles, outs)}]
            self._original_shapes = [image.shape]

        @property
        def num_categories(self) -> int:
            return len(self.category_mapping)

        @property
        def category_names(self) -> list:
            return list(self.category_mapping.values())

        @property
        def has_mask(self) -> bool:
            return False

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=[[0, 0]],
                                                                     full_shape_list=None) -> None:
            shifts = fix_shift_amount_list(shift_amount_list)
            shapes = fix_full_shape_list(full_shape_list)
            per_image = []
            for i, outputs in enumerate(self._original_predictions):
                image_shape = self._original_shapes[i]
                det = decode(self.head, outputs, tile_hw=tuple(image_shape[:2]))
                shift = [int(v) for v in shifts[i]]
                full = None if shapes is None else [int(v) for v in shapes[i]]
                preds = []
                for box, score, cls in zip(det.boxes.tolist(), det.scores.tolist(), det.classes.tolist()):
                    if not (box[0] < box[2] and box[1] < box[3]):
                        continue  # a zero-area box: SAHI's own models drop these too
                    preds.append(ObjectPrediction(
                        bbox=box, category_id=int(cls), category_name=self.category_mapping[str(cls)],
                        score=float(score), shift_amount=shift,
                        full_shape=list(image_shape[:2]) if full is None else full))
                per_image.append(preds)
            self._object_prediction_list_per_image = per_image

    return OnnxCenterNetModel


def _pr(boxes, scores, truth) -> dict:
    from edge.evaluate import average_precision

    m = average_precision([(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores))], [truth],
                          iou_threshold=MATCH_IOU)
    return {"recall": _r(m["recall"], 4), "precision": _r(m["precision"], 4), "tp": m["tp"],
            "detections": m["n_det"], "truth": m["n_gt"]}


def bench_overhead_sahi(mode: str, raw: dict, notes: list) -> dict:
    import sahi
    from sahi.predict import get_sliced_prediction
    from sahi.slicing import get_slice_bboxes

    from edge.evaluate import box_iou
    from edge.flight import FlightLoop
    from edge.kernels.tiling import plan_tiles

    image, truth, path = demo_scene()
    h, w = image.shape[:2]
    res: dict = {"scene": {"path": str(path), "shape": list(image.shape), "dtype": "uint16", "bit_depth": 12,
                           "truth_boxes": int(len(truth))}}
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=CACHE))
    try:
        loops = {}
        for name, extra in (("edge", {}), ("edge_no_screening", {"screening.enabled": False})):
            cfg = _config(tmp / name / "data", tmp / name / "downlink.bin", **extra)
            loops[name] = FlightLoop(cfg)
        pipe, pipe_all = loops["edge"].pipeline, loops["edge_no_screening"].pipeline
        cfg = loops["edge"].cfg
        d = cfg.detection
        res["settings"] = {"model": f"{loops['edge'].model.name}/{loops['edge'].variant}",
                           "threads": cfg.model["threads"], "memory": cfg.model["memory"],
                           "overlap": pipe.overlap, "batch": pipe.batch, "bands": pipe.bands,
                           "bit_depth": pipe.bit_depth, "score_threshold": d["score_threshold"],
                           "merge": f"{d['merge']}/{d['metric']} {d['iou_threshold']}",
                           "screening": dict(cfg.screening)}

        # which tiles the pipeline infers: an untimed pass through a recording wrapper of its backend
        backend = pipe.backend
        rec = _Recorder(backend)
        pipe.backend = rec
        first = pipe.process(image, layout="HWC")
        pipe.backend = backend
        tiles = rec.inputs
        if len(tiles) != first.tiles_inferred:
            notes.append(f"pipeline: recorded {len(tiles)} backend.run calls, the pipeline reports "
                         f"{first.tiles_inferred} inferred tiles")

        def inference_only():
            for x in tiles:
                backend.run(x)

        # SAHI: 8-bit RGB converted beforehand through our own LUT (same model input), not timed
        lut = np.asarray(pipe.lut_for(image.dtype, pipe.bit_depth, pipe.bands))
        rgb8 = np.empty((h, w, 3), np.uint8)
        for c, b in enumerate(pipe.bands):
            np.take(lut[c], image[:, :, b], out=rgb8[:, :, c])
        Model = _sahi_model_class()
        sahi_model = Model(model_entry=loops["edge"].model, file_entry=loops["edge"].file,
                           score_threshold=d["score_threshold"], threads=cfg.model["threads"])
        from sahi.postprocess.backends import resolve_backend

        def run_sahi():
            return get_sliced_prediction(
                rgb8, sahi_model, slice_height=SAHI_SLICE, slice_width=SAHI_SLICE,
                overlap_height_ratio=SAHI_OVERLAP_PX / SAHI_SLICE, overlap_width_ratio=SAHI_OVERLAP_PX / SAHI_SLICE,
                perform_standard_pred=False, postprocess_type="NMS", postprocess_match_metric="IOS",
                postprocess_match_threshold=d["iou_threshold"], postprocess_class_agnostic=False,
                verbose=0, force_postprocess_type=True)

        slices = get_slice_bboxes(h, w, SAHI_SLICE, SAHI_SLICE, False, SAHI_OVERLAP_PX / SAHI_SLICE,
                                  SAHI_OVERLAP_PX / SAHI_SLICE)
        plan = plan_tiles(h, w, pipe.model.tile_hw, pipe.overlap)
        same_grid = ({(y, x) for y, x in plan.origins.tolist()} == {(b[1], b[0]) for b in slices})

        rounds = ROUNDS[mode]
        _log(f"pipeline: demo scene {h}x{w}, {plan.n_tiles} tiles, {len(tiles)} inferred; {rounds} rounds")
        stage_infer_ms = []

        def ours_call():
            r = pipe.process(image, layout="HWC")
            stage_infer_ms.append(r.stage_ms["infer"])
            return r

        t = interleaved({"edge": ours_call,
                         "inference": inference_only,
                         "edge_no_screening": lambda: pipe_all.process(image, layout="HWC"),
                         "sahi": run_sahi}, rounds)
        for k, (_, samples, _) in t.items():
            raw[f"pipeline.{k}"] = {"samples_ms": samples}
        ours, ours_all, sahi_res = t["edge"][2], t["edge_no_screening"][2], t["sahi"][2]
        pipeline_ms, inference_ms = t["edge"][0], t["inference"][0]
        preds = sahi_res.object_prediction_list
        sahi_boxes = np.array([p.bbox.to_xyxy() for p in preds], np.float64).reshape(-1, 4)
        sahi_scores = np.array([p.score.value for p in preds], np.float64)
        # the same tiles, model, decoder and merge rule: how many of SAHI's detections are ours too?
        iou = box_iou(ours_all.boxes, sahi_boxes)
        common = int((iou.max(axis=0) >= 0.99).sum()) if iou.size else 0

        overhead = (pipeline_ms - inference_ms) / inference_ms * 100 if inference_ms else None
        stage_infer = statistics.median(stage_infer_ms[1:])  # the timed calls' own figure (not the warm-up)
        res["overhead"] = {
            "pipeline_ms": _r(pipeline_ms), "inference_ms": _r(inference_ms),
            "overhead_pct": _r(overhead, 2), "target_pct": TARGET_OVERHEAD_PCT,
            "met": None if overhead is None else overhead <= TARGET_OVERHEAD_PCT,
            "stage_ms_last_call": {k: _r(v) for k, v in ours.stage_ms.items()},
            "stage_infer_ms": _r(stage_infer), "rounds": rounds,
            "overhead_vs_stage_infer_pct": _r((pipeline_ms - stage_infer) / stage_infer * 100, 2),
            "tiles": {"total": ours.tiles_total, "nodata": ours.tiles_nodata, "cloud": ours.tiles_cloud,
                      "inferred": ours.tiles_inferred},
            "inference_tiles": len(tiles),
            "inference_per_tile_ms": _r(inference_ms / max(len(tiles), 1)),
        }
        res["sahi"] = {
            "sahi_ms": _r(t["sahi"][0]), "edge_ms": _r(pipeline_ms), "edge_no_screening_ms": _r(t["edge_no_screening"][0]),
            "sahi_over_edge": _r(t["sahi"][0] / pipeline_ms, 2), "target": TARGET_SAHI_SPEEDUP,
            "met": t["sahi"][0] / pipeline_ms >= TARGET_SAHI_SPEEDUP,
            "sahi_over_edge_no_screening": _r(t["sahi"][0] / t["edge_no_screening"][0], 2),
            "slices": len(slices), "same_tile_grid": bool(same_grid),
            "edge_tiles_inferred": ours.tiles_inferred, "edge_no_screening_tiles_inferred": ours_all.tiles_inferred,
            "accuracy": {"edge": _pr(ours.boxes, ours.scores, truth),
                         "edge_no_screening": _pr(ours_all.boxes, ours_all.scores, truth),
                         "sahi": _pr(sahi_boxes, sahi_scores, truth)},
            "sahi_detections_also_in_edge_no_screening": common,
            "sahi_version": sahi.__version__, "sahi_postprocess_backend": resolve_backend(),
            "sahi_call": (f"get_sliced_prediction(rgb8, model, slice_height={SAHI_SLICE}, slice_width={SAHI_SLICE}, "
                          f"overlap_*_ratio={SAHI_OVERLAP_PX}/{SAHI_SLICE}, perform_standard_pred=False, "
                          f"postprocess_type='NMS', postprocess_match_metric='IOS', "
                          f"postprocess_match_threshold={d['iou_threshold']}, postprocess_class_agnostic=False, "
                          "force_postprocess_type=True, verbose=0)"),
        }
        acc = res["sahi"]["accuracy"]
        res["sahi"]["recall_met"] = acc["edge"]["recall"] >= acc["sahi"]["recall"]
        for lp in loops.values():
            lp.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------------------------
# 2. Bytes per detection on the wire
# ---------------------------------------------------------------------------------------------

def vlm_json(boxes, frame_hw, separators=None) -> bytes:
    """The JSON a VLM would answer with for these detections: label + bbox normalised to 0-1, two decimals."""
    h, w = frame_hw
    items = [{"label": "ship", "bbox": [round(x1 / w, 2), round(y1 / h, 2), round(x2 / w, 2), round(y2 / h, 2)]}
             for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4).tolist()]
    return json.dumps(items, separators=separators).encode()


def bench_wire(notes: list) -> dict:
    from edge.demo import CAPTURE_TIME, GEOTRANSFORM, SCENE_SEED
    from edge.flight import FlightLoop
    from edge.ground.packets import depacketize
    from edge.ground.records import decode_record

    image, truth, _ = demo_scene()
    tmp = Path(tempfile.mkdtemp(prefix="bench-wire-", dir=CACHE))
    try:
        spool = tmp / "spool"
        spool.mkdir()
        raw = spool / f"scene-{SCENE_SEED}.raw"
        image.tofile(raw)
        _write_sidecar(raw, image.shape, CAPTURE_TIME, {"geotransform": GEOTRANSFORM})
        stream = tmp / "downlink.bin"
        cfg = _config(tmp / "data", stream, **{"input.source": str(spool)})
        _log("wire: FlightLoop over the demo scene")
        with FlightLoop(cfg) as loop:
            loop.run()
        s = loop.summary
        data = stream.read_bytes()
        records, report = depacketize(data)
        frames = [(r, decode_record(r.payload)) for r in records]
        frames = [(r, d) for r, d in frames if d.kind == "frame"]
        if len(frames) != 1:
            notes.append(f"wire: the stream holds {len(frames)} frame records, expected 1")
        r, fr = frames[0]
        n = s.detections
        if fr.n_detections != n:
            notes.append(f"wire: the frame record holds {fr.n_detections} detections, the run summary {n}")
        compact = vlm_json(fr.boxes, fr.frame_size, separators=(",", ":"))
        hh, ww = fr.frame_size
        q = np.round(np.asarray(fr.boxes, np.float64).reshape(-1, 4) / [ww, hh, ww, hh], 2)
        degenerate = int(np.sum((q[:, 2] <= q[:, 0]) | (q[:, 3] <= q[:, 1])))
        default = vlm_json(fr.boxes, fr.frame_size)
        per = s.frame_record_bytes / n if n else None
        return {
            "detections": n, "frame_record_wire_bytes": s.frame_record_bytes,
            "frame_record_payload_bytes": len(r.payload),
            "stream_bytes": len(data), "records": s.records, "packets": s.packets,
            "ground_report_clean": report.clean,
            "bytes_per_detection": _r(per, 2), "target": TARGET_BYTES_PER_DET,
            "met": None if per is None else per <= TARGET_BYTES_PER_DET,
            "stream_bytes_per_detection": _r(len(data) / n, 2) if n else None,
            "payload_bytes_per_detection": _r(len(r.payload) / n, 2) if n else None,
            "vlm_json_compact_bytes": len(compact), "vlm_json_default_bytes": len(default),
            "vlm_json_compact_per_detection": _r(len(compact) / n, 2) if n else None,
            "vlm_json_default_per_detection": _r(len(default) / n, 2) if n else None,
            "vlm_compact_over_wire": _r(len(compact) / s.frame_record_bytes, 2) if s.frame_record_bytes else None,
            "vlm_default_over_wire": _r(len(default) / s.frame_record_bytes, 2) if s.frame_record_bytes else None,
            "vlm_example": compact[:120].decode() + ("..." if len(compact) > 120 else ""),
            "vlm_boxes_degenerate_at_two_decimals": degenerate,
            "vlm_resolution_px": [round(ww / 100, 1), round(hh / 100, 1)],
            "raw_frame_bytes": s.raw_bytes,
            "headline": "vlm_json_compact (the smaller of the two JSON forms: the comparison favours the VLM)",
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# 3. Memory, each measurement in a fresh process
# ---------------------------------------------------------------------------------------------

_STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")


def proc_status() -> dict:
    """This process's memory figures from /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in _STATUS_KEYS:
                out[k] = int(v.split()[0]) * 1024
    return out


class _Sampler(threading.Thread):
    """Samples proc_status() every `period` s until stopped."""

    def __init__(self, period=0.005):
        super().__init__(daemon=True)
        self.period, self.samples, self._stop_evt = period, [], threading.Event()

    def run(self):
        while not self._stop_evt.is_set():
            self.samples.append(proc_status())
            self._stop_evt.wait(self.period)

    def stop(self):
        self._stop_evt.set()
        self.join()
        self.samples.append(proc_status())
        return self.samples


def _summ(samples: list, key: str) -> dict:
    v = [s[key] for s in samples]
    return {"median": int(statistics.median(v)), "max": int(max(v))} if v else {}


def _ru_maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child_memmap(raw: Path, work: Path) -> dict:
    t0 = time.perf_counter()
    maxrss_at_start = _ru_maxrss()  # inherited across exec from the spawning process (see README)
    from edge.flight import FlightLoop

    after_import = proc_status()
    loop = FlightLoop(_config(work / "data", work / "downlink.bin"), started_at=t0)
    before = proc_status()
    sampler = _Sampler()
    sampler.start()
    t1 = time.perf_counter()
    loop.run(str(raw))
    t2 = time.perf_counter()
    during = sampler.stop()
    after = proc_status()
    loop.close()
    gc.collect()
    closed = proc_status()
    s = loop.summary
    return {"after_import": after_import, "before_frame": before, "after_frame": after, "after_close": closed,
            "during": {k: _summ(during, k) for k in ("VmRSS", "RssAnon", "RssFile")}, "samples": len(during),
            "vm_hwm": closed["VmHWM"], "ru_maxrss": _ru_maxrss(), "ru_maxrss_at_start": maxrss_at_start,
            "frame_s": t2 - t1, "frames_ok": s.frames_ok, "detections": s.detections, "tiles": s.tiles,
            "errors": list(s.errors)}


def _child_spool(spool: Path, work: Path, frames: int) -> dict:
    from edge.flight import FlightLoop

    loop = FlightLoop(_config(work / "data", work / "downlink.bin"))
    before = proc_status()
    keys = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
    series = np.zeros((frames, len(keys)), np.int64)  # preallocated: the measurement must not grow
    t0 = time.perf_counter()
    for i in range(frames):
        loop.run_spool(str(spool), max_frames=1)
        # the ground acknowledges what it received (steady state: the journal does not fill up)
        if loop.sent_through >= 0:
            loop.acknowledge(range(0, loop.sent_through + 1))
        st = proc_status()
        series[i] = [st[k] for k in keys]
    elapsed = time.perf_counter() - t0
    s = loop.summary
    out = {"before_first": before, "series": {k: series[:, j].tolist() for j, k in enumerate(keys[:3])},
           "vm_hwm": int(series[-1, 3]), "frames_ok": s.frames_ok, "frames_failed": s.frames_failed,
           "detections": s.detections, "elapsed_s": elapsed,
           "per_frame_samples_kept": len(s.stage_ms["frame"].recent),
           "journal_live_records": loop.journal.stats()["records"]}
    loop.close()
    return out


def _spawn_child(args: list, timeout=900) -> dict:
    cmd = [sys.executable, "-m", "bench.pipeline", "--child", *map(str, args)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _mb(x):
    return None if x is None else round(x / MB, 1)


#: The sources whose state decides these figures (work on them may be under way beside a run).
SOURCES = ("edge/pipeline.py", "edge/flight.py", "edge/downlink/record.py", "edge/downlink/journal.py",
           "edge/demo.py", "edge/missions/demo.toml", "models/scenes.py")


def source_state() -> dict:
    """{path: {"sha256_12", "modified_vs_head"}} of SOURCES as measured."""
    out = {}
    for rel in SOURCES:
        dirty = None
        try:
            dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", rel], cwd=REPO,
                                   timeout=10).returncode == 1
        except (OSError, subprocess.SubprocessError):
            pass
        out[rel] = {"sha256_12": hashlib.sha256((REPO / rel).read_bytes()).hexdigest()[:12],
                    "modified_vs_head": dirty}
    return out


def bench_memory(mode: str, raw_store: dict, notes: list) -> dict:
    from edge.demo import SCENE_PARAMS, SCENE_SEED

    res: dict = {}
    big = raw_scene(SCENE_SEED, BIG_SIZE, SCENE_PARAMS)
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=CACHE))
    try:
        _log(f"memory: one {BIG_SIZE}x{BIG_SIZE}x4 uint16 memory-mapped frame through FlightLoop (fresh process)")
        m = _spawn_child(["memmap", big, tmp / "big"])
        peak = m["vm_hwm"]
        res["memmap_frame"] = {
            "frame": f"{BIG_SIZE}x{BIG_SIZE}x4 uint16 .raw + sidecar, memory-mapped", "frame_bytes": big.stat().st_size,
            "vm_hwm_mb": _mb(peak), "ru_maxrss_mb": _mb(m["ru_maxrss"]),
            "ru_maxrss_at_child_start_mb": _mb(m["ru_maxrss_at_start"]),
            "target_mb": TARGET_PEAK_MB, "met": peak / MB < TARGET_PEAK_MB,
            **{f"{stage}_mb": {k: _mb(m[stage][k]) for k in ("VmRSS", "RssAnon", "RssFile")}
               for stage in ("after_import", "before_frame", "after_frame", "after_close")},
            "during_mb": {k: {s: _mb(v) for s, v in m["during"][k].items()} for k in m["during"]},
            "samples": m["samples"], "frame_s": _r(m["frame_s"], 2), "frames_ok": m["frames_ok"],
            "tiles": m["tiles"], "detections": m["detections"], "errors": m["errors"]}
        # spool of small frames: a handful of distinct scenes under many names (hard links)
        n = SPOOL_FRAMES[mode]
        scenes = [raw_scene(seed, SMALL_SIZE, SCENE_PARAMS) for seed in SMALL_SEEDS]
        spool = tmp / "spool"
        spool.mkdir()
        for i in range(n):
            src = scenes[i % len(scenes)]
            dst = spool / f"frame-{i:05d}.raw"
            _link_or_copy(src, dst)
            _link_or_copy(src.with_suffix(".json"), dst.with_suffix(".json"))
        _log(f"memory: FlightLoop over a spool of {n} {SMALL_SIZE}x{SMALL_SIZE}x4 frames (fresh process)")
        sp = _spawn_child(["spool", spool, tmp / "spool-run", n])
        raw_store["pipeline.memory.spool_series"] = sp["series"]
        ser = sp["series"]
        at = {k: (ser[k][9], ser[k][-1]) for k in ser}
        growth = at["VmRSS"][1] - at["VmRSS"][0]
        warm = min(WARM_FRAMES, len(ser["VmRSS"])) - 1
        steady = {k: int(ser[k][-1] - ser[k][warm]) for k in ser}
        x = np.arange(len(ser["VmRSS"]))
        tail = slice(min(50, len(x) // 2), None)  # after the first allocations have settled
        slope = float(np.polyfit(x[tail], np.asarray(ser["VmRSS"], np.float64)[tail], 1)[0]) if len(x) > 4 else None
        res["spool"] = {
            "frames": n, "distinct_scenes": len(scenes), "frame": f"{SMALL_SIZE}x{SMALL_SIZE}x4 uint16 .raw",
            "after_10_mb": {k: _mb(v[0]) for k, v in at.items()},
            f"after_{n}_mb": {k: _mb(v[1]) for k, v in at.items()},
            "after_n_mb": {k: _mb(v[1]) for k, v in at.items()},
            "growth_bytes": {k: int(v[1] - v[0]) for k, v in at.items()},
            "max_mb": {k: _mb(max(v)) for k, v in ser.items()},
            "slope_bytes_per_frame": _r(slope, 1), "vm_hwm_mb": _mb(sp["vm_hwm"]),
            "tolerance_bytes": TARGET_GROWTH_TOLERANCE,
            f"growth_after_{warm + 1}_bytes": steady, "steady_growth_bytes": steady,
            "steady_tolerance_bytes": STEADY_GROWTH_TOLERANCE, "warm_frames": warm + 1,
            "met": growth <= TARGET_GROWTH_TOLERANCE and steady["VmRSS"] <= STEADY_GROWTH_TOLERANCE,
            "frames_ok": sp["frames_ok"], "frames_failed": sp["frames_failed"], "elapsed_s": _r(sp["elapsed_s"], 2),
            "per_frame_stage_samples_kept_by_run_summary": sp["per_frame_samples_kept"],
            "journal_live_records_at_end": sp["journal_live_records"],
            "acknowledged": "after every frame the bench acknowledges everything sent (the ground's role)"}
        if sp["frames_failed"]:
            notes.append(f"memory: {sp['frames_failed']} spool frame(s) failed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


# ---------------------------------------------------------------------------------------------
# 4. Cold start
# ---------------------------------------------------------------------------------------------

def _first_frame_record(path: Path, last_size: list) -> bool:
    from edge.ground.packets import depacketize
    from edge.ground.records import RecordError, decode_record

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == last_size[0]:
        return False
    last_size[0] = size
    records, _ = depacketize(path.read_bytes())
    for r in records:
        try:
            if decode_record(r.payload).kind == "frame":
                return True
        except RecordError:
            continue
    return False


def cold_start_once(frame: Path, work: Path) -> dict:
    exe = Path(sys.executable).parent / "edge"
    out, data, summary = work / "downlink.bin", work / "data", work / "summary.json"
    cmd = [str(exe), "run", str(frame), "--data-dir", str(data), "--output", str(out), "--quiet",
           "--summary", str(summary)]
    last = [-1]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while first is None:
        if _first_frame_record(out, last):
            first = time.perf_counter() - t0
            break
        if p.poll() is not None:
            if _first_frame_record(out, [-1]):
                first = time.perf_counter() - t0
            break
        time.sleep(0.001)
    _, err = p.communicate(timeout=120)
    exit_s = time.perf_counter() - t0
    if p.returncode != 0 or first is None:
        raise RuntimeError(f"edge run failed (rc {p.returncode}, frame record seen: {first is not None}): "
                           f"{err.decode(errors='replace')[-1500:]}")
    own = json.loads(summary.read_text())
    return {"first_frame_record_s": first, "exit_s": exit_s, "first_record_s_own": own.get("first_record_s"),
            "detections": own.get("detections")}


def bench_cold_start(mode: str, raw_store: dict) -> dict:
    from edge.demo import SCENE_PARAMS

    frame = raw_scene(SMALL_SEEDS[0], SMALL_SIZE, SCENE_PARAMS)
    n = COLD_RUNS[mode]
    runs = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-cold-", dir=CACHE))
    try:
        _log(f"cold start: `edge run` on one {SMALL_SIZE}x{SMALL_SIZE}x4 frame, 1 warm-up + {n} runs")
        for i in range(n + 1):
            work = tmp / f"run{i}"
            work.mkdir()
            r = cold_start_once(frame, work)
            _log(f"  run {i}{' (warm-up)' if i == 0 else ''}: first frame record {r['first_frame_record_s']:.3f} s, "
                 f"exit {r['exit_s']:.3f} s, own first_record_s {r['first_record_s_own']:.3f} s")
            if i:
                runs.append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    raw_store["pipeline.cold_start"] = runs
    med = statistics.median(r["first_frame_record_s"] for r in runs)
    return {"frame": f"{SMALL_SIZE}x{SMALL_SIZE}x4 uint16 .raw", "runs": n,
            "command": "edge run FRAME --data-dir D --output O --quiet --summary S (default config = demo mission)",
            "first_frame_record_s": _r(med), "samples_s": [_r(r["first_frame_record_s"]) for r in runs],
            "exit_s": _r(statistics.median(r["exit_s"] for r in runs)),
            "first_record_s_own": _r(statistics.median(r["first_record_s_own"] for r in runs)),
            "target_s": TARGET_COLD_START_S, "met": med < TARGET_COLD_START_S}


# ---------------------------------------------------------------------------------------------
# The benchmark, as bench.run calls it
# ---------------------------------------------------------------------------------------------

def bench_pipeline(run, cpu_snapshot, other_cpu) -> None:
    """All four pipeline benchmarks into run.results["pipeline"]; the machine load of each section too."""
    mode = run.mode.name
    res: dict = {"mode": mode, "sources": source_state(), "load_other_processes_cpu_cores": {}}
    run.results["pipeline"] = res
    notes: list = []
    sections = (("overhead_sahi", lambda: bench_overhead_sahi(mode, run.raw, notes)),
                ("wire", lambda: bench_wire(notes)),
                ("memory", lambda: bench_memory(mode, run.raw, notes)),
                ("cold_start", lambda: bench_cold_start(mode, run.raw)))
    for name, fn in sections:
        start = cpu_snapshot()
        try:
            out = fn()
        except Exception as e:  # one section failing must not lose the others
            import traceback

            traceback.print_exc()
            out = {"error": f"{type(e).__name__}: {e}"}
            notes.append(f"pipeline: {name} not measured: {type(e).__name__}: {e}")
        res["load_other_processes_cpu_cores"][name] = other_cpu(start, cpu_snapshot())
        if name == "overhead_sahi":
            res.update(out)
        else:
            res[name] = out
    run.notes.extend(notes)


def targets(results: dict) -> dict:
    p = results.get("pipeline")
    if not p:
        return {}
    out = {}
    o = p.get("overhead", {})
    out["pipeline_overhead"] = {"what": "pipeline: (FramePipeline.process - backend.run of its tiles) / backend.run, %",
                                "value": o.get("overhead_pct"), "target": f"<= {TARGET_OVERHEAD_PCT:g} %",
                                "met": o.get("met")}
    s = p.get("sahi", {})
    out["pipeline_vs_sahi"] = {"what": "pipeline: SAHI get_sliced_prediction ms / FramePipeline.process ms",
                               "value": s.get("sahi_over_edge"), "target": f">= {TARGET_SAHI_SPEEDUP:g}",
                               "met": s.get("met")}
    acc = s.get("accuracy", {})
    out["pipeline_recall_vs_sahi"] = {
        "what": "pipeline: recall at IoU 0.5, ours (SAHI's in brackets)",
        "value": (None if not acc else f"{acc['edge']['recall']:.3f} ({acc['sahi']['recall']:.3f})"),
        "target": ">= SAHI's", "met": s.get("recall_met")}
    w = p.get("wire", {})
    out["wire_bytes_per_detection"] = {"what": "wire: frame-record bytes (packets, headers, PEC) / detection",
                                       "value": w.get("bytes_per_detection"),
                                       "target": f"<= {TARGET_BYTES_PER_DET:g}", "met": w.get("met")}
    m = p.get("memory", {})
    mm = m.get("memmap_frame", {})
    out["memory_peak_mb"] = {"what": f"memory: peak RSS (VmHWM), one {BIG_SIZE}x{BIG_SIZE}x4 uint16 mmap frame, MB",
                             "value": mm.get("vm_hwm_mb"), "target": f"< {TARGET_PEAK_MB:g}", "met": mm.get("met")}
    sp = m.get("spool", {})
    g = sp.get("growth_bytes", {}).get("VmRSS")
    out["memory_growth"] = {"what": f"memory: RSS after {sp.get('frames', 'N')} frames - after 10 frames, MiB",
                            "value": None if g is None else round(g / MIB, 2),
                            "target": f"<= {TARGET_GROWTH_TOLERANCE / MIB:g} (no growth)", "met": sp.get("met")}
    c = p.get("cold_start", {})
    out["cold_start_s"] = {"what": "cold start: spawn `edge run` -> first frame record in the output, s (median)",
                           "value": c.get("first_frame_record_s"), "target": f"< {TARGET_COLD_START_S:g}",
                           "met": c.get("met")}
    return out


# ---------------------------------------------------------------------------------------------
# RESULTS.md sections
# ---------------------------------------------------------------------------------------------

def _f(v, nd=2):
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _met(m) -> str:
    return "n/a" if m is None else ("**met**" if m else "**not met**")


def markdown(p: dict, busy_cores: float) -> list[str]:
    lines: list[str] = []
    load = p.get("load_other_processes_cpu_cores", {})
    busy = {k: v for k, v in load.items() if v is not None and v > busy_cores}
    if busy:
        lines += ["> **The machine was busy during the pipeline benchmarks**: other processes kept "
                  + ", ".join(f"{v:.2f} cores busy during `{k}`" for k, v in busy.items())
                  + " on average; timings are noisier and slower than on an idle machine.", ""]
    o, s = p.get("overhead"), p.get("sahi")
    sc = p.get("scene", {})
    lines += ["## Pipeline: overhead and SAHI on the demo scene", ""]
    if p.get("sources"):
        lines += ["Sources measured by the pipeline benchmarks (sha256 prefix; * = uncommitted changes at the "
                  "time of the run): " + ", ".join(f"`{k}` {v['sha256_12']}{'*' if v['modified_vs_head'] else ''}"
                                                   for k, v in p["sources"].items()) + ".", ""]
    if o and s:
        st = p.get("settings", {})
        t = o["tiles"]
        acc = s["accuracy"]
        lines += [f"Demo scene {sc['shape'][0]}x{sc['shape'][1]}x4 uint16 (12-bit B, G, R, NIR; "
                  f"{sc['truth_boxes']} ships in its truth), in memory; {st.get('model')}, "
                  f"{st.get('threads')} thread, overlap {st.get('overlap')}, bands {st.get('bands')}, "
                  f"score >= {st.get('score_threshold')}, merge {st.get('merge')}. Median of "
                  f"{o.get('rounds')} interleaved rounds after a "
                  "warm-up round.", "",
                  "| | wall ms | tiles inferred | detections | recall | precision |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| ours: `FramePipeline.process` (demo mission, screening on) | {_f(o['pipeline_ms'], 1)} "
                  f"| {t['inferred']} of {t['total']} | {acc['edge']['detections']} | {_f(acc['edge']['recall'], 3)} "
                  f"| {_f(acc['edge']['precision'], 3)} |",
                  f"| inference alone: `backend.run` over those {o['inference_tiles']} tiles | "
                  f"{_f(o['inference_ms'], 1)} | {o['inference_tiles']} | | | |",
                  f"| ours, screening off | {_f(s['edge_no_screening_ms'], 1)} | "
                  f"{s['edge_no_screening_tiles_inferred']} of {t['total']} | {acc['edge_no_screening']['detections']} "
                  f"| {_f(acc['edge_no_screening']['recall'], 3)} | {_f(acc['edge_no_screening']['precision'], 3)} |",
                  f"| SAHI {s['sahi_version']} `get_sliced_prediction` (same ONNX model, our decoder) | "
                  f"{_f(s['sahi_ms'], 1)} | {s['slices']} of {s['slices']} | {acc['sahi']['detections']} "
                  f"| {_f(acc['sahi']['recall'], 3)} | {_f(acc['sahi']['precision'], 3)} |", "",
                  f"- overhead (pipeline - inference) / inference: **{_f(o['overhead_pct'])} %** (target <= "
                  f"{TARGET_OVERHEAD_PCT:g} %): {_met(o['met'])}; {_f(o['inference_per_tile_ms'], 3)} ms per tile "
                  "in backend.run",
                  f"- the pipeline's own `stage_ms['infer']` (median of the timed calls): {_f(o['stage_infer_ms'], 1)} ms "
                  f"(overhead against it: {_f(o['overhead_vs_stage_infer_pct'])} %); its stages in the last timed call: "
                  + ", ".join(f"{k} {_f(v, 1)}" for k, v in o["stage_ms_last_call"].items()) + " ms",
                  f"- tiles: {t['total']} planned, {t['nodata']} no-data and {t['cloud']} cloud screened out, "
                  f"{t['inferred']} inferred",
                  f"- SAHI / ours: **{_f(s['sahi_over_edge'])}x** (target >= {TARGET_SAHI_SPEEDUP:g}x): "
                  f"{_met(s['met'])}; SAHI / ours with screening off (the framework alone, same "
                  f"{s['slices']} tiles): {_f(s['sahi_over_edge_no_screening'])}x",
                  f"- recall at IoU {MATCH_IOU}: ours {_f(acc['edge']['recall'], 3)}, SAHI "
                  f"{_f(acc['sahi']['recall'], 3)} (target: ours >= SAHI's): {_met(s['recall_met'])}; "
                  f"{s['sahi_detections_also_in_edge_no_screening']} of SAHI's {acc['sahi']['detections']} "
                  "detections are also ours with screening off (IoU >= 0.99)",
                  "",
                  "What differs, and for whom:", "",
                  f"- same tile grid: {_f(s['same_tile_grid'])} (SAHI's {SAHI_SLICE} px slices with overlap ratio "
                  f"{SAHI_OVERLAP_PX}/{SAHI_SLICE} start where our tile plan does); same ONNX file, ONNX Runtime "
                  "session options (1 intra-op thread, 1 inter-op) and head decoder (`edge.heads.decode`, per-tile "
                  "NMS included) wrapped as a SAHI `DetectionModel`.",
                  "- SAHI has no screening: it ran every slice, including the no-data and cloud ones ours skips. "
                  "The screening-off row is the like-for-like framework comparison.",
                  "- SAHI got the frame as the 8-bit RGB it needs, converted from the 12-bit bands through our own "
                  "LUT beforehand and **not timed** (ours does that conversion inside its timed preprocessing): "
                  "this favours SAHI.",
                  f"- merge: SAHI `NMS` with `IOS` {st.get('merge', '').split()[-1]} (class-aware, postprocess "
                  f"backend `{s['sahi_postprocess_backend']}`) vs ours `{st.get('merge')}` (compiled); "
                  "`perform_standard_pred=False` (a whole-frame pass means nothing to a fixed 256 px model).",
                  ""]
    elif o is None:
        lines += [f"Not run: {p.get('error', 'see notes')}", ""]

    w = p.get("wire")
    lines += ["## Bytes per detection on the wire", ""]
    if w and "error" not in w:
        n = w["detections"]
        lines += [f"A real `FlightLoop` run of the demo scene (demo mission, file sink): {n} detections, "
                  f"{w['records']} records in {w['packets']} packets; the raw frame is {w['raw_frame_bytes']:,} "
                  "bytes.", "",
                  "| | bytes | bytes / detection | vs the wire |", "|---|---:|---:|---:|",
                  f"| **frame record on the wire** (Space Packets, headers + CRC-16 PEC) | "
                  f"{w['frame_record_wire_bytes']:,} | **{_f(w['bytes_per_detection'])}** | 1.00x |",
                  f"| frame record CBOR payload alone | {w['frame_record_payload_bytes']:,} | "
                  f"{_f(w['payload_bytes_per_detection'])} | |",
                  f"| whole stream (frame + housekeeping + event records) | {w['stream_bytes']:,} | "
                  f"{_f(w['stream_bytes_per_detection'])} | |",
                  f"| **VLM JSON, compact separators** (headline) | {w['vlm_json_compact_bytes']:,} | "
                  f"**{_f(w['vlm_json_compact_per_detection'])}** | {_f(w['vlm_compact_over_wire'])}x |",
                  f"| VLM JSON, default separators | {w['vlm_json_default_bytes']:,} | "
                  f"{_f(w['vlm_json_default_per_detection'])} | {_f(w['vlm_default_over_wire'])}x |", "",
                  f"- frame-record wire bytes / detection: **{_f(w['bytes_per_detection'])}** (target <= "
                  f"{TARGET_BYTES_PER_DET:g}): {_met(w['met'])}",
                  "- VLM JSON: `json.dumps([{\"label\": \"ship\", \"bbox\": [x1, y1, x2, y2]}, ...])`, coordinates "
                  "normalised to 0-1 and rounded to two decimals, for the same detections as decoded at the "
                  f"ground; e.g. `{w['vlm_example']}`. The compact form is the headline: it is the smaller, so the "
                  "comparison favours the VLM, and it has no packet framing, no CRC, no scores, no georeference, "
                  "no frame id and no tile counts, all of which the frame record carries.",
                  f"- two decimals are {w['vlm_resolution_px'][0]:g} px on this frame: "
                  f"{w['vlm_boxes_degenerate_at_two_decimals']} of the {n} boxes collapse to zero width or height "
                  "in the JSON (the frame record keeps whole pixels)",
                  f"- the ground tool read the stream clean: {_f(w['ground_report_clean'])}", ""]
    else:
        lines += [f"Not run: {(w or {}).get('error', 'see notes')}", ""]

    m = p.get("memory")
    lines += ["## Memory", ""]
    if m and "error" not in m:
        mm, sp = m.get("memmap_frame", {}), m.get("spool", {})
        lines += ["Each measurement in a fresh `python -m bench.pipeline --child ...` process: imports, model load "
                  "and peaks are its own. RSS = RssAnon (heap, model, buffers) + RssFile (file-backed pages: the "
                  "memory-mapped frame, shared libraries) + RssShmem; from /proc/self/status.", ""]
        if mm:
            lines += [f"**One {mm['frame']}** ({mm['frame_bytes'] / MB:,.0f} MB) through `FlightLoop.run` "
                      f"({mm['frame_s']} s, {mm['tiles'][3]} of {mm['tiles'][0]} tiles inferred, "
                      f"{mm['detections']} detections):", "",
                      "| MB | VmRSS | RssAnon | RssFile |", "|---|---:|---:|---:|"]
            for label, key in (("after imports", "after_import_mb"), ("FlightLoop built (model loaded)", "before_frame_mb"),
                               ("after the frame", "after_frame_mb"), ("after close", "after_close_mb")):
                v = mm[key]
                lines.append(f"| {label} | {_f(v['VmRSS'], 1)} | {_f(v['RssAnon'], 1)} | {_f(v['RssFile'], 1)} |")
            d = mm["during_mb"]
            lines += [f"| during the frame: median of {mm['samples']} samples | {_f(d['VmRSS']['median'], 1)} | "
                      f"{_f(d['RssAnon']['median'], 1)} | {_f(d['RssFile']['median'], 1)} |",
                      f"| during the frame: max sampled | {_f(d['VmRSS']['max'], 1)} | {_f(d['RssAnon']['max'], 1)} | "
                      f"{_f(d['RssFile']['max'], 1)} |", "",
                      f"- peak RSS: VmHWM **{_f(mm['vm_hwm_mb'], 1)} MB** (target < {TARGET_PEAK_MB:g} MB): "
                      f"{_met(mm['met'])}",
                      f"- ru_maxrss {_f(mm['ru_maxrss_mb'], 1)} MB, but it was already "
                      f"{_f(mm['ru_maxrss_at_child_start_mb'], 1)} MB when the child started, before it imported "
                      "anything: Linux carries the spawning process's high-water mark across fork + exec into "
                      "ru_maxrss (the bench process held the demo scene), so VmHWM, the child's own mm, is the "
                      "figure judged.",
                      "- the peak counts the frame's file-backed pages the process touched and still maps; the "
                      "RssAnon column is what the pipeline itself allocates.", ""]
        if sp:
            n = sp["frames"]
            lines += [f"**A spool of {n} {sp['frame']} frames** ({sp['distinct_scenes']} distinct scenes, hard-linked "
                      f"under {n} names) through `FlightLoop.run_spool`, one frame at a time ({sp['elapsed_s']} s, "
                      f"{sp['frames_ok']} ok, {sp['frames_failed']} failed):", "",
                      "| MB | VmRSS | RssAnon | RssFile |", "|---|---:|---:|---:|",
                      f"| after 10 frames | {_f(sp['after_10_mb']['VmRSS'], 1)} | {_f(sp['after_10_mb']['RssAnon'], 1)} "
                      f"| {_f(sp['after_10_mb']['RssFile'], 1)} |",
                      f"| after {n} frames | {_f(sp['after_n_mb']['VmRSS'], 1)} | {_f(sp['after_n_mb']['RssAnon'], 1)} "
                      f"| {_f(sp['after_n_mb']['RssFile'], 1)} |",
                      f"| difference (KiB) | {sp['growth_bytes']['VmRSS'] / 1024:,.0f} | "
                      f"{sp['growth_bytes']['RssAnon'] / 1024:,.0f} | {sp['growth_bytes']['RssFile'] / 1024:,.0f} |",
                      "",
                      f"- growth after 10 -> {n} frames: **{sp['growth_bytes']['VmRSS'] / 1024:,.0f} KiB** (target: no "
                      f"growth, i.e. <= {TARGET_GROWTH_TOLERANCE / MIB:g} MiB of page noise): {_met(sp['met'])}; "
                      f"fitted slope after the first frames {_f(sp['slope_bytes_per_frame'], 0)} bytes per frame",
                      f"- once warm (after {sp['warm_frames']} frames: code touched for the first time, allocator "
                      f"arenas): {sp['steady_growth_bytes']['VmRSS'] / 1024:,.0f} KiB more by frame {n} "
                      f"(RssAnon {sp['steady_growth_bytes']['RssAnon'] / 1024:,.0f}, RssFile "
                      f"{sp['steady_growth_bytes']['RssFile'] / 1024:,.0f}; tolerance "
                      f"{STEADY_GROWTH_TOLERANCE / 1024:,.0f} KiB)",
                      f"- the run summary keeps {sp['per_frame_stage_samples_kept_by_run_summary']} recent samples per "
                      f"stage in a ring allocated at start; the journal held {sp['journal_live_records_at_end']} live "
                      "records at the end (the bench acknowledges everything sent after each frame, as the ground "
                      "would)", ""]
    else:
        lines += [f"Not run: {(m or {}).get('error', 'see notes')}", ""]

    c = p.get("cold_start")
    lines += ["## Cold start", ""]
    if c and "error" not in c:
        lines += [f"`{c['command']}` on one {c['frame']}, spawned from this process; the output file polled every "
                  "~1 ms and parsed with `edge.ground.packets.depacketize` + `edge.ground.records.decode_record` "
                  f"until a record of kind `frame` is in it. Median of {c['runs']} runs after one warm-up run "
                  "(page cache warm).", "",
                  "| s | median | runs |", "|---|---:|---|",
                  f"| **spawn -> first frame record in the output** | **{_f(c['first_frame_record_s'], 3)}** | "
                  + ", ".join(_f(x, 3) for x in c["samples_s"]) + " |",
                  f"| spawn -> process exit | {_f(c['exit_s'], 3)} | |",
                  f"| the process's own `RunSummary.first_record_s` | {_f(c['first_record_s_own'], 3)} | |", "",
                  f"- cold start: **{_f(c['first_frame_record_s'], 3)} s** (target < {TARGET_COLD_START_S:g} s): "
                  f"{_met(c['met'])}",
                  "- `first_record_s` is measured from the start of `edge run`'s command function (after the "
                  "interpreter started and imported `edge`) to the first record journaled, which is the "
                  "`started` event written while the loop is built, not the frame record.", ""]
    else:
        lines += [f"Not run: {(c or {}).get('error', 'see notes')}", ""]
    return lines


# ---------------------------------------------------------------------------------------------
# Child processes (memory)
# ---------------------------------------------------------------------------------------------

def _child_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pipeline")
    ap.add_argument("--child", nargs="+", required=True, help="memmap RAW WORK | spool SPOOL WORK N")
    args = ap.parse_args(argv)
    kind, *rest = args.child
    if kind == "memmap":
        out = _child_memmap(Path(rest[0]), Path(rest[1]))
    elif kind == "spool":
        out = _child_spool(Path(rest[0]), Path(rest[1]), int(rest[2]))
    else:
        ap.error(f"unknown child {kind!r}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
