"""`make bench`: orbit-edge's kernels against the peers a user would otherwise pick, in one run.

    python -m bench.run            full run (~6-8 min) -> bench/results.json, bench/RESULTS.md
    python -m bench.run --quick    fewer repeats, slow peers skipped at 100k boxes (development)
    python -m bench.run --only pipeline   one benchmark; the others' figures are carried over from the
                                   previous results.json (RESULTS.md says from which run)

Every figure is the median wall time of repeated calls after one warm-up call, single-threaded, all
in the same process, so the ratios compare like with like on this machine. A call too slow to
repeat within its time budget is run once (that one run is the figure, and the run says so). Inputs
are deterministic (fixed seeds). bench/README.md says what each benchmark does. The pipeline
benchmarks (whole frames, memory, cold start; issue 4) live in bench/pipeline.py.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import peers, pipeline
from edge.kernels._backend import reference_only

HERE = Path(__file__).resolve().parent

# --- workloads --------------------------------------------------------------------------------
FRAME_H = FRAME_W = 4096
TILE = 256
OVERLAP = 32  # px shared by neighbouring tiles: plan_tiles(4096, 4096, 256, 32) gives 19 x 19 = 361 tiles
BANDS = (0, 1, 2)
BRIGHT_THRESHOLD = 200  # raw value above which a pixel counts as bright (cloud / glint) in the tile stats
# ImageNet-style normalisation in raw pixel units: a different mean and std for each channel
NORM_MEAN = (123.675, 116.28, 103.53)
NORM_STD = (58.395, 57.12, 57.375)
NMS_SIZES = (1000, 10000, 100000)
IOU_THRESHOLD = 0.5
INTEGRITY_BYTES = 64 * 2**20  # 64 MiB buffer for CRC32C and SECDED
GB = 1e9  # GB/s are decimal gigabytes of input data per second
BUSY_CORES = 0.2  # other processes' average CPU use (cores) above which RESULTS.md warns of a busy machine

# --- targets (issue 2) ------------------------------------------------------------------------
TARGET_PREPROCESS_VS_COPY = 3.0  # ours within 3x of a plain copy of the output bytes
TARGET_PREPROCESS_VS_OPENCV = 10.0  # ours >= 10x faster than the fastest OpenCV route
TARGET_NMS_VS_PEER = 2.0  # ours >= 2x faster than the fastest peer at 10k and 100k boxes
TARGET_NMS_SIZES = ("10000", "100000")
TARGET_CRC32C_GBPS = 5.0
TARGET_SECDED_CHECK_GBPS = 2.0


#: How our NMS computes and breaks ties (edge/kernels/nms.py is the spec), beside the peers' conventions.
OUR_NMS_CONVENTION = (
    "edge.kernels.nms.nms(class_aware=False): float32 boxes widened to float64, suppresses when "
    "inter > t * (area_a + area_b - inter) (IoU > t without a division), so boxes of zero area never "
    "suppress; ranked by score descending, then input index ascending; the compiled twin finds "
    "neighbours through a hierarchical uniform grid, the numpy reference is the plain greedy loop.")


@dataclass(frozen=True)
class Mode:
    """Repeats and time budgets of one run."""

    name: str
    repeats: int  # timed calls after the warm-up, at most
    budget_s: float  # a measurement stops repeating after about this long
    single_call_cap_s: float  # a call estimated slower than this is not made (null + reason)


FULL = Mode("full", repeats=15, budget_s=2.0, single_call_cap_s=60.0)
QUICK = Mode("quick", repeats=3, budget_s=0.5, single_call_cap_s=3.0)


@dataclass
class Timing:
    ms: float  # median
    samples_ms: list[float] = field(default_factory=list)
    warmed_up: bool = True
    result: object = None  # what the last call returned (checked against ours without another call)


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _call(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def measure(fn, mode: Mode) -> Timing:
    """Median of up to mode.repeats timed calls after one warm-up call, within mode.budget_s.
    A warm-up call slower than the budget is the only call and the figure (warmed_up=False)."""
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection inside one sample is noise, not the kernel
    try:
        first, result = _call(fn)
        if first > mode.budget_s:
            return Timing(first * 1e3, [first * 1e3], warmed_up=False, result=result)
        n = min(mode.repeats, max(1, int(mode.budget_s / max(first, 1e-9))))
        samples = []
        for _ in range(n):
            t, result = _call(fn)
            samples.append(t * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(statistics.median(samples), samples, result=result)


def _kernel(name: str):
    """(module, None) or (None, reason)."""
    try:
        return importlib.import_module(f"edge.kernels.{name}"), None
    except ImportError as exc:
        return None, f"edge.kernels.{name} not importable: {exc}"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _r(x, nd=3):
    return None if x is None else round(float(x), nd)


class Run:
    """Collects figures (results.json), every sample (results.raw.json) and notes (RESULTS.md)."""

    def __init__(self, mode: Mode):
        self.mode = mode
        self.results: dict = {}
        self.raw: dict = {}
        self.notes: list[str] = []
        self.t_start = time.perf_counter()

    def timed(self, key: str, fn) -> Timing:
        t = measure(fn, self.mode)
        self.raw[key] = {"median_ms": t.ms, "samples_ms": t.samples_ms, "warmed_up": t.warmed_up}
        suffix = "" if t.warmed_up else " (single call, no warm-up)"
        _log(f"  {key}: {t.ms:.3f} ms{suffix}")
        if not t.warmed_up:
            self.notes.append(f"`{key}`: {t.ms / 1e3:.1f} s for one call, longer than the "
                              f"{self.mode.budget_s:g} s repeat budget: one call, no warm-up.")
        return t


# ---------------------------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------------------------

def _cpuinfo() -> dict:
    info: dict = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    first = text.split("\n\n", 1)[0]
    for line in first.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model", "stepping", "vendor_id", "CPU implementer",
                   "CPU part", "Features", "flags"):
            info[key] = value.strip()
    flags = set((info.pop("flags", "") or info.pop("Features", "")).split())
    # the instruction sets our kernels dispatch on at run time
    wanted = ("sse4_2", "pclmulqdq", "avx2", "avx512f", "avx512bw", "avx512vbmi", "avx512_vpopcntdq",
              "hypervisor", "crc32", "asimd", "pmull")
    info["flags_relevant"] = [f for f in wanted if f in flags]
    return info


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(CPU seconds all processes spent busy, CPU seconds this process spent, wall clock), from
    /proc/stat: other work on the machine during the run makes the figures noisy."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    ticks = [int(v) for v in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    own = os.times()  # with the children this run waited for (the pipeline benchmark's subprocesses)
    return (busy / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + own.children_system,
            time.monotonic())


def _other_cpu(start, end) -> float | None:
    """Average number of cores other processes kept busy between two snapshots."""
    if start is None or end is None or end[2] <= start[2]:
        return None
    other = (end[0] - start[0]) - (end[1] - start[1])
    return round(max(other, 0.0) / (end[2] - start[2]), 2)


def _kernel_backends() -> dict[str, str]:
    """Which implementation serves each kernel: compiled, reference, or missing (not written yet)."""
    from edge.kernels import _backend

    out = {}
    for name in _backend.KERNELS:
        mod, _ = _kernel(name)
        out[name] = "missing" if mod is None else ("compiled" if mod._fast is not None else "reference")
    return out


def machine() -> dict:
    mem_total = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    from edge.kernels import _backend

    integrity = _backend.compiled("crc32c")
    preprocess = _backend.compiled("preprocess")
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": _cpuinfo(),
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory": mem_total,
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "peers": peers.versions(),
        "edge_kernels": _kernel_backends(),
        "edge_import_errors": _backend.import_errors(),
        "edge_crc32c_path": (integrity.crc32c_path() if integrity is not None
                             and hasattr(integrity, "crc32c_path") else None),
        "edge_preprocess_path": (preprocess.preprocess_path() if preprocess is not None
                                 and hasattr(preprocess, "preprocess_path") else None),
        "crc32c_pkg_hardware": peers.crc32c_pkg_hardware(),
        "git_commit": commit,
        "env": {k: os.environ[k] for k in sorted(os.environ)
                if k.startswith(("OPENBLAS_", "OMP_", "RAYON_", "EDGE_"))},
    }


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------

def synthetic_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic HWC uint8 scene: smooth gradients (sea / land), soft bright blobs (clouds,
    saturating above the bright threshold) and sensor noise; each band slightly different."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    base = 40.0 + 90.0 * (0.6 * x + 0.4 * y) + 12.0 * np.sin(9.0 * x + 5.0 * y) * np.cos(7.0 * y)
    clouds = np.zeros((h, w), np.float32)
    for cy, cx, r in rng.uniform((0, 0, 0.03), (1, 1, 0.09), size=(12, 3)):
        clouds += 160.0 * np.exp(-(((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r)))
    frame = np.empty((h, w, 3), np.uint8)
    for band, gain in enumerate((1.0, 0.92, 0.8)):
        noise = rng.integers(-6, 7, size=(h, w), dtype=np.int16).astype(np.float32)
        np.clip(base * gain + clouds + noise, 0, 255, out=noise)
        frame[:, :, band] = noise  # float -> uint8 truncates; values are already clipped
    return frame


def int8_input_quantization(mean, std) -> tuple[float, int]:
    """(scale, zero point) of an int8 model input covering every channel's normalised range."""
    lo = min((0.0 - m) / s for m, s in zip(mean, std))
    hi = max((255.0 - m) / s for m, s in zip(mean, std))
    scale = (hi - lo) / 255.0
    zero_point = int(round(-128 - lo / scale))
    return scale, zero_point


def bench_preprocess(run: Run) -> None:
    key = "preprocess_4096"
    res = {"edge_ms": None, "numpy_ms": None, "opencv_ms": None, "copy_ms": None}
    run.results[key] = res
    pp, why = _kernel("preprocess")
    from edge.kernels.tiling import plan_tiles

    plan = plan_tiles(FRAME_H, FRAME_W, TILE, OVERLAP)
    origins = plan.origins
    n = len(origins)
    out_shape = (n, len(BANDS), TILE, TILE)
    out_bytes = int(np.prod(out_shape))
    res.update(frame=f"{FRAME_H}x{FRAME_W}x3 uint8 HWC", tiles=n, tile=TILE, overlap=OVERLAP,
               out=f"({n}, {len(BANDS)}, {TILE}, {TILE}) int8 NCHW", out_bytes=out_bytes)

    _log(f"preprocess: {FRAME_H}x{FRAME_W}x3 -> {n} tiles")
    frame = synthetic_frame(FRAME_H, FRAME_W)
    scale, zero_point = int8_input_quantization(NORM_MEAN, NORM_STD)
    res.update(mean=list(NORM_MEAN), std=list(NORM_STD), scale=scale, zero_point=zero_point,
               bright_threshold=BRIGHT_THRESHOLD)

    # copy floor: the same number of bytes between two preallocated (already touched) arrays
    src = np.ones(out_shape, np.int8)
    dst = np.zeros(out_shape, np.int8)
    res["copy_ms"] = _r(run.timed(f"{key}.copy", lambda: np.copyto(dst, src)).ms)
    del src, dst

    if pp is None:
        res["error"] = why
        run.notes.append(f"preprocess: {why}")
        return
    lut = pp.build_lut(np.uint8, mean=NORM_MEAN, std=NORM_STD, out_dtype=np.int8, scale=scale,
                       zero_point=zero_point)
    out = np.zeros(out_shape, np.int8)
    out_ref = np.zeros(out_shape, np.int8)
    stats = pp.TileStats.empty(n, len(BANDS))  # allocated once and refilled, as the flight loop does

    def ours(dest):
        return pp.preprocess_tiles(frame, origins, TILE, TILE, bands=BANDS, lut=lut, out=dest,
                                   layout="HWC", out_layout="NCHW", bright_threshold=BRIGHT_THRESHOLD,
                                   stats=stats)

    compiled = pp._fast is not None
    res["edge_backend"] = "compiled" if compiled else "reference"
    with reference_only(pp):
        res["numpy_ms"] = _r(run.timed(f"{key}.numpy", lambda: ours(out_ref)).ms)
    if compiled:
        res["edge_ms"] = _r(run.timed(f"{key}.edge", lambda: ours(out)).ms)
        res["edge_equals_numpy"] = bool(np.array_equal(out, out_ref))
    else:
        res["edge_ms"] = res["numpy_ms"]
        ours(out)
        run.notes.append("preprocess: the compiled kernel is not built here; the edge column is the numpy "
                         "reference.")

    # OpenCV: try each route, check it against ours, keep the fastest bit-exact one
    routes, why = peers.opencv_preprocess_routes(frame, origins, TILE, TILE, BANDS, np.asarray(lut), out_ref)
    blob, why_blob = peers.opencv_blob_route(frame, origins, TILE, TILE, BANDS, NORM_MEAN, NORM_STD, scale,
                                             zero_point, out_ref)
    if blob is not None:
        routes["cv2.dnn.blobFromImagesWithParams (float32 NCHW) -> cv2.addWeighted(dtype=CV_8S)"] = blob
    elif why_blob:
        run.notes.append(f"preprocess: OpenCV blob route not run: {why_blob}")
    route_rows = {}
    for i, (name, fn) in enumerate(routes.items()):
        out_ref.fill(0)
        t = run.timed(f"{key}.opencv.route{i}", fn)
        mismatched = int(np.count_nonzero(out_ref != out))
        route_rows[name] = {"ms": _r(t.ms), "bit_exact": mismatched == 0,
                            "mismatched_values": mismatched,
                            "max_abs_diff": int(np.max(np.abs(out_ref.astype(np.int16) - out.astype(np.int16))))}
    res["opencv_routes"] = route_rows
    dnn = [v["ms"] for k, v in route_rows.items() if k.startswith("cv2.dnn")]
    res["opencv_dnn_ms"] = dnn[0] if dnn else None
    exact = {k: v for k, v in route_rows.items() if v["bit_exact"]}
    if exact:
        best = min(exact, key=lambda k: exact[k]["ms"])
        res["opencv_ms"] = exact[best]["ms"]
        res["opencv_route"] = best
    elif route_rows:
        best = min(route_rows, key=lambda k: route_rows[k]["ms"])
        res["opencv_ms"] = route_rows[best]["ms"]
        res["opencv_route"] = best
        run.notes.append("preprocess: no OpenCV route reproduced our tiles bit for bit; the fastest one is "
                         "reported anyway (see the route table).")
    else:
        run.notes.append(f"preprocess: OpenCV not measured: {why}")
    # The routes above make the tiles only; ours also computes the per-tile statistics in the same
    # pass. The peer for the target does the same work: the fastest tiles route + OpenCV statistics.
    if res["opencv_ms"] is not None:
        res["opencv_tiles_only_ms"] = res["opencv_ms"]
        res["opencv_tiles_only_route"] = res.pop("opencv_route", None)
        res["opencv_ms"] = None
    cv_stats = pp.TileStats.empty(n, len(BANDS))
    same, why_same = peers.opencv_preprocess_same_work(
        frame, origins, TILE, TILE, BANDS, np.asarray(lut), out_ref, BRIGHT_THRESHOLD,
        cv_stats.band_mean, cv_stats.bright_fraction, cv_stats.nodata_fraction)
    if same is not None:
        out_ref.fill(0)
        t = run.timed(f"{key}.opencv.same_work", same)
        exact = (np.array_equal(out_ref, out) and np.array_equal(cv_stats.bright_fraction, stats.bright_fraction)
                 and np.array_equal(cv_stats.nodata_fraction, stats.nodata_fraction))
        mean_err = float(np.max(np.abs(cv_stats.band_mean - stats.band_mean)))
        res["opencv_ms"] = _r(t.ms)
        res["opencv_route"] = ("per tile: cv2.split -> cv2.LUT per plane into out; cv2.mean; cv2.min/max over "
                               "planes -> cv2.compare + cv2.countNonZero")
        res["opencv_same_work_exact"] = bool(exact)
        res["opencv_band_mean_max_abs_diff"] = mean_err
        if not exact:
            run.notes.append("preprocess: the same-work OpenCV route did not reproduce our tiles/fractions exactly")
    else:
        run.notes.append(f"preprocess: same-work OpenCV route not run: {why_same}")
    res["opencv_note"] = ("opencv_ms is OpenCV doing the same work as ours: tiles plus the per-tile statistics "
                          "(band means, bright and no-data fractions), which ours computes in the same pass. "
                          "opencv_tiles_only_ms makes the tiles only.")


# ---------------------------------------------------------------------------------------------
# NMS
# ---------------------------------------------------------------------------------------------

def _boxgen():
    """(bench.boxgen.clustered_boxes, None) or (None, reason)."""
    try:
        return importlib.import_module("bench.boxgen").clustered_boxes, None
    except ImportError as exc:
        return None, f"bench.boxgen not importable: {exc}"


def _estimate(prev: dict, name: str, n: int) -> float | None:
    """Seconds a greedy O(N*K) NMS needs at n boxes, from its time at the previous size (K ~ N on
    clustered scenes, so quadratic)."""
    if not prev:
        return None
    n0, row = prev["n"], prev["row"]
    ms = row.get(f"{name}_ms")
    return None if ms is None else ms / 1e3 * (n / n0) ** 2


def bench_nms(run: Run) -> None:
    key = "nms"
    res: dict = {}
    run.results[key] = res
    nms_mod, why = _kernel("nms")
    clustered_boxes, why_boxes = _boxgen()
    if nms_mod is None or clustered_boxes is None:
        reason = why or why_boxes
        for n in NMS_SIZES:
            res[str(n)] = {c: None for c in ("edge_ms", "numpy_ms", "opencv_ms", "ort_ms", "powerboxes_ms")}
        run.results["nms_setup"] = {"error": reason}
        run.notes.append(f"nms: {reason}")
        return
    compiled = nms_mod._fast is not None
    if not compiled:
        run.notes.append("nms: the compiled kernel is not built here; the edge column is the numpy reference.")
    prev: dict = {}
    for n in NMS_SIZES:
        boxes, scores, _ = clustered_boxes(n, seed=0)  # class ids unused: class-agnostic for all
        _log(f"nms: {n} clustered boxes")
        row: dict = {"edge_ms": None, "numpy_ms": None, "opencv_ms": None, "ort_ms": None, "powerboxes_ms": None}
        kept: dict = {}
        skipped: dict = {}

        def ours():
            return nms_mod.nms(boxes, scores, None, iou_threshold=IOU_THRESHOLD, class_aware=False)

        # numpy reference: the readable spec, quadratic; bounded by the single-call cap
        est = _estimate(prev, "numpy", n)
        if est is not None and est > run.mode.single_call_cap_s:
            skipped["numpy"] = (f"estimated {est:.0f} s for one call (quadratic from {prev['n']} boxes), over the "
                                f"{run.mode.single_call_cap_s:g} s cap of a {run.mode.name} run")
        else:
            with reference_only(nms_mod):
                t = run.timed(f"nms.{n}.numpy", ours)
            row["numpy_ms"] = _r(t.ms)
            kept["numpy"] = np.asarray(t.result)
        if compiled:
            t = run.timed(f"nms.{n}.edge", ours)
            row["edge_ms"] = _r(t.ms)
            kept["edge"] = np.asarray(t.result)
        else:
            row["edge_ms"] = row["numpy_ms"]
            if "numpy" in kept:
                kept["edge"] = kept["numpy"]
            else:
                skipped["edge"] = skipped["numpy"] + " (edge is the reference here)"

        for peer, make in peers.NMS_PEERS.items():
            fn, why_peer = make(boxes, scores, IOU_THRESHOLD)
            if fn is None:
                skipped[peer] = why_peer
                continue
            est = _estimate(prev, peer, n) if peer in ("opencv", "ort") else None
            if est is not None and est > run.mode.single_call_cap_s:
                skipped[peer] = (f"estimated {est:.0f} s for one call (O(N*K) from {prev['n']} boxes), over the "
                                 f"{run.mode.single_call_cap_s:g} s cap of a {run.mode.name} run")
                continue
            t = run.timed(f"nms.{n}.{peer}", fn)
            row[f"{peer}_ms"] = _r(t.ms)
            kept[peer] = np.asarray(t.result)

        # same work? kept counts, and how many kept indices differ from ours
        row["kept"] = {k: int(len(v)) for k, v in kept.items()}
        if "edge" in kept:
            mine = set(kept["edge"].tolist())
            row["kept_differs_from_edge"] = {k: len(mine.symmetric_difference(v.tolist()))
                                             for k, v in kept.items() if k != "edge"}
            if "numpy" in kept and compiled:
                row["edge_equals_numpy"] = bool(np.array_equal(kept["edge"], kept["numpy"]))
        if skipped:
            row["not_run"] = skipped
        peer_ms = {p: row[f"{p}_ms"] for p in peers.NMS_PEERS if row[f"{p}_ms"] is not None}
        if peer_ms:
            fastest = min(peer_ms, key=peer_ms.get)
            row["fastest_peer"] = fastest
            row["fastest_peer_over_edge"] = (_r(peer_ms[fastest] / row["edge_ms"], 2)
                                             if row["edge_ms"] else None)
        res[str(n)] = row
        prev = {"n": n, "row": row}
    run.results["nms_setup"] = {
        "boxes": "bench.boxgen.clustered_boxes(n, seed=0): clustered detections of a tiled 4096 px scene",
        "iou_threshold": IOU_THRESHOLD, "score_threshold": None, "class_aware": False,
        "edge_backend": "compiled" if compiled else "reference"}


# ---------------------------------------------------------------------------------------------
# CRC32C and SECDED
# ---------------------------------------------------------------------------------------------

def _gbps(nbytes: int, t: Timing) -> float:
    return nbytes / (t.ms / 1e3) / GB


def _prefix_for_budget(fn_on, buf, run: Run, label: str):
    """Length of `buf` (a 1-D array) to measure `fn_on(view)` on: all of it when one call fits the
    single-call cap, else a prefix sized to the repeat budget (the slow numpy references)."""
    probe = min(len(buf), max(1, len(buf) // 64))
    t = _once(lambda: fn_on(buf[:probe]))
    est = t * len(buf) / probe
    if est <= run.mode.budget_s:
        return len(buf)
    length = max(1, int(len(buf) * run.mode.budget_s / est / 2))
    run.notes.append(f"`{label}`: one call on the whole buffer would take ~{est:.0f} s; measured on the first "
                     f"{length * buf.itemsize / 2**20:.2f} MiB (GB/s does not depend on the length here).")
    return length


def bench_integrity(run: Run) -> None:
    rng = np.random.default_rng(1)
    words = rng.integers(0, 2**63 - 1, size=INTEGRITY_BYTES // 8, dtype=np.uint64, endpoint=True)
    data = words.view(np.uint8)
    # checks and set-up facts; the *_gbps dicts hold figures only
    setup: dict = {"buffer_bytes": data.nbytes,
                   "zlib_note": "zlib.crc32 is CRC-32 (another polynomial), the checksum every Python has: "
                                "a speed reference only"}
    run.results["integrity_setup"] = setup

    # CRC32C
    crc = {"edge": None, "crc32c_pkg": None, "zlib": None, "numpy": None}
    run.results["crc32c_gbps"] = crc
    _log("crc32c: 64 MiB")
    crc_mod, why = _kernel("crc32c")
    peer_fns, missing = peers.crc_peers()
    for name, fn in peer_fns.items():
        crc[name] = _r(_gbps(data.nbytes, run.timed(f"crc32c.{name}", lambda fn=fn: fn(data))), 2)
    for name, reason in missing.items():
        run.notes.append(f"crc32c: {name} not measured: {reason}")
    if crc_mod is None:
        run.notes.append(f"crc32c: {why}")
    else:
        def measure_crc(tag):
            label = f"crc32c.{tag}"
            view = data[:_prefix_for_budget(lambda b: crc_mod.crc32c(b), data, run, label)]
            t = run.timed(label, lambda: crc_mod.crc32c(view))
            if "crc32c_pkg" in peer_fns:
                setup[f"crc32c_{tag}_equals_crc32c_pkg"] = t.result == peer_fns["crc32c_pkg"](view)
            return _r(_gbps(view.nbytes, t), 3)

        if crc_mod._fast is not None:
            crc["edge"] = measure_crc("edge")
        with reference_only(crc_mod):
            crc["numpy"] = measure_crc("numpy")
        if crc_mod._fast is None:
            crc["edge"] = crc["numpy"]
            run.notes.append("crc32c: the compiled kernel is not built here; the edge column is the numpy reference.")

    # SECDED Hamming(72,64): 8 parity bits per 64-bit word
    enc = {"edge": None, "numpy": None}
    chk = {"edge": None, "numpy": None}
    run.results["secded_encode_gbps"] = enc
    run.results["secded_check_gbps"] = chk
    _log("secded: 64 MiB of uint64 words")
    sec, why = _kernel("secded")
    if sec is None:
        run.notes.append(f"secded: {why}")
        return

    def measure_secded(tag):
        w = words[:_prefix_for_budget(lambda w: sec.secded_encode(w), words, run, f"secded_encode.{tag}")]
        parity = np.zeros(len(w), np.uint8)  # preallocated check bytes, as the scrubber keeps them
        e = run.timed(f"secded_encode.{tag}", lambda: sec.secded_encode(w, out=parity))
        n_chk = _prefix_for_budget(lambda w: sec.secded_check(w, parity[:len(w)]), w, run, f"secded_check.{tag}")
        wc, pc = words[:n_chk], parity[:n_chk]
        c = run.timed(f"secded_check.{tag}", lambda: sec.secded_check(wc, pc))
        setup[f"secded_{tag}_check_clean"] = bool(c.result.clean)
        return _r(_gbps(w.nbytes, e), 3), _r(_gbps(wc.nbytes, c), 3), parity

    if sec._fast is not None:
        enc["edge"], chk["edge"], parity_fast = measure_secded("edge")
    with reference_only(sec):
        enc["numpy"], chk["numpy"], parity_ref = measure_secded("numpy")
    if sec._fast is None:
        enc["edge"], chk["edge"] = enc["numpy"], chk["numpy"]
        run.notes.append("secded: the compiled kernel is not built here; the edge column is the numpy reference.")
    else:
        m = min(len(parity_fast), len(parity_ref))
        setup["secded_edge_parity_equals_numpy"] = bool(np.array_equal(parity_fast[:m], parity_ref[:m]))


# ---------------------------------------------------------------------------------------------
# Targets, RESULTS.md
# ---------------------------------------------------------------------------------------------

def targets(results: dict) -> dict:
    out: dict = {}
    pre = results.get("preprocess_4096", {})
    e, c, o = pre.get("edge_ms"), pre.get("copy_ms"), pre.get("opencv_ms")
    r = e / c if e and c else None
    out["preprocess_vs_copy"] = {"what": "preprocess: edge ms / copy ms", "value": _r(r, 2),
                                 "target": f"<= {TARGET_PREPROCESS_VS_COPY:g}",
                                 "met": None if r is None else r <= TARGET_PREPROCESS_VS_COPY}
    r = o / e if e and o else None
    out["preprocess_vs_opencv"] = {"what": "preprocess: OpenCV (same work: tiles + statistics) ms / edge ms",
                                   "value": _r(r, 2), "target": f">= {TARGET_PREPROCESS_VS_OPENCV:g}",
                                   "met": None if r is None else r >= TARGET_PREPROCESS_VS_OPENCV,
                                   # the best any kernel could do: run at the copy floor
                                   "ceiling": _r(o / c, 2) if o and c else None}
    t = pre.get("opencv_tiles_only_ms")
    r = t / e if e and t else None
    out["preprocess_vs_opencv_tiles_only"] = {
        "what": "preprocess: OpenCV tiles only (no statistics) ms / edge ms", "value": _r(r, 2),
        "target": f">= {TARGET_PREPROCESS_VS_OPENCV:g}",
        "met": None if r is None else r >= TARGET_PREPROCESS_VS_OPENCV,
        "ceiling": _r(t / c, 2) if t and c else None}
    for n in TARGET_NMS_SIZES:
        row = results.get("nms", {}).get(n, {})
        r = row.get("fastest_peer_over_edge")
        peer = f" ({row['fastest_peer']})" if row.get("fastest_peer") else ""
        out[f"nms_{n}_vs_fastest_peer"] = {"what": f"NMS {int(n):,} boxes: fastest peer ms / edge ms{peer}",
                                          "value": r, "target": f">= {TARGET_NMS_VS_PEER:g}",
                                          "met": None if r is None else r >= TARGET_NMS_VS_PEER}
    v = results.get("crc32c_gbps", {}).get("edge")
    out["crc32c_gbps"] = {"what": "CRC32C GB/s (edge)", "value": v, "target": f">= {TARGET_CRC32C_GBPS:g}",
                          "met": None if v is None else v >= TARGET_CRC32C_GBPS}
    v = results.get("secded_check_gbps", {}).get("edge")
    out["secded_check_gbps"] = {"what": "SECDED check GB/s (edge)", "value": v,
                                "target": f">= {TARGET_SECDED_CHECK_GBPS:g}",
                                "met": None if v is None else v >= TARGET_SECDED_CHECK_GBPS}
    out.update(pipeline.targets(results))
    return out


def _fmt(v, nd=2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def _met(m) -> str:
    return "n/a" if m is None else ("**met**" if m else "**not met**")


def _md_header(doc: dict) -> list[str]:
    mach = doc["machine"]
    cpu = mach["cpu"]
    lines = [
        "# Benchmarks: orbit-edge kernels against their peers",
        "",
        "Generated by `make bench` (`python -m bench.run`); do not edit by hand. What each benchmark does: "
        "[README.md](README.md). Raw figures: `results.json`.",
        "",
    ]
    if doc["mode"] != "full":
        lines += [f"> **{doc['mode']} run**: few repeats, slow peers skipped; not for citing.", ""]
    backends = mach.get("edge_kernels", {})
    if any(v != "compiled" for v in backends.values()):
        ref = ", ".join(f"{k} ({v})" for k, v in backends.items() if v != "compiled")
        lines += [f"> **Not compiled in this run: {ref}.** A kernel served by its numpy reference has the "
                  "reference in its `edge` column; a missing one has no figures.", ""]
    other = mach.get("other_processes_cpu_cores")
    if other is not None and other > BUSY_CORES:
        lines += [f"> **The machine was busy**: other processes kept {other:.2f} of its {mach['cores_online']} "
                  "cores busy on average during the run; figures are noisier and slower than on an idle "
                  "machine.", ""]
    for name, prev in doc.get("carried_over", {}).items():
        busy = prev.get("other_processes_cpu_cores")
        lines += [f"> **{name}**: not run this time; its figures are carried over from the {prev.get('mode')} run "
                  f"of {prev.get('date_utc')} (commit {prev.get('git_commit')}, other processes "
                  f"{_fmt(busy)} cores busy), not from the machine described below.", ""]
    lines += [
        f"Median of repeated calls after a warm-up, single thread, all in one process "
        f"(run took {doc['elapsed_s']:.0f} s, {doc['mode']} mode).",
        "",
        "## Machine",
        "",
        f"- CPU: {cpu.get('model name', '?')} (family {cpu.get('cpu family', '?')}, model {cpu.get('model', '?')}, "
        f"stepping {cpu.get('stepping', '?')}); {mach['cores_online']} cores online, {mach['cores_usable']} usable; "
        f"relevant flags: {', '.join(cpu.get('flags_relevant', [])) or 'n/a'}",
        f"- memory {mach['memory']}; {mach['os']} ({mach['machine']}); Python {mach['python']}, numpy {mach['numpy']}",
        "- peers: " + ", ".join(f"{k} {v}" for k, v in mach["peers"].items() if v),
        "- threads: " + "; ".join(f"{k}: {v}" for k, v in doc["threads"].items()),
        "- edge kernels: " + ", ".join(f"{k}={v}" for k, v in backends.items())
        + (f"; CRC32C path `{mach['edge_crc32c_path']}`" if mach.get("edge_crc32c_path") else "")
        + (f"; preprocessing path `{mach['edge_preprocess_path']}`" if mach.get("edge_preprocess_path") else "")
        + f"; crc32c package hardware path: {_fmt(mach.get('crc32c_pkg_hardware'))}",
        f"- date (UTC) {mach['date_utc']}" + (f", commit {mach['git_commit']}" if mach.get("git_commit") else ""),
        "",
    ]
    return lines


def _md_preprocess(pre: dict) -> list[str]:
    lines = ["## Preprocessing: 4096x4096x3 uint8 frame -> 361 int8 NCHW tiles (256 px, 32 px overlap)", ""]
    mb = pre.get("out_bytes", 0) / 1e6

    def gbs(ms):
        return _fmt(mb / ms) if ms else "n/a"  # MB per ms == GB per s

    lines += ["| | edge (tiles + stats) | numpy reference | OpenCV, same work (tiles + stats) "
              "| OpenCV, tiles only | np.copyto floor |",
              "|---|---:|---:|---:|---:|---:|",
              f"| ms | {_fmt(pre.get('edge_ms'))} | {_fmt(pre.get('numpy_ms'))} | {_fmt(pre.get('opencv_ms'))} "
              f"| {_fmt(pre.get('opencv_tiles_only_ms'))} | {_fmt(pre.get('copy_ms'))} |",
              f"| GB/s of output | {gbs(pre.get('edge_ms'))} | {gbs(pre.get('numpy_ms'))} | "
              f"{gbs(pre.get('opencv_ms'))} | {gbs(pre.get('opencv_tiles_only_ms'))} | {gbs(pre.get('copy_ms'))} |",
              ""]
    e, c, o, nref = pre.get("edge_ms"), pre.get("copy_ms"), pre.get("opencv_ms"), pre.get("numpy_ms")
    t = pre.get("opencv_tiles_only_ms")
    if e and c:
        lines.append(f"- ours / copy floor: **{e / c:.2f}x** (target <= {TARGET_PREPROCESS_VS_COPY:g}x)")
    if e and o:
        lines.append(f"- OpenCV doing the same work / ours: **{o / e:.2f}x** (target >= "
                     f"{TARGET_PREPROCESS_VS_OPENCV:g}x); its tiles equal ours: "
                     f"{_fmt(pre.get('opencv_same_work_exact'))}, band means within "
                     f"{_fmt(pre.get('opencv_band_mean_max_abs_diff'))} (cv2.mean sums in floating point)")
    if e and t:
        lines.append(f"- OpenCV making the tiles only / ours: **{t / e:.2f}x**; ceiling of that ratio here: "
                     f"OpenCV tiles only / copy floor = {t / c:.2f}x (no kernel that writes the output can beat "
                     "the copy of it), so 10x over a statistics-free OpenCV route is out of reach on this machine")
    dnn = pre.get("opencv_dnn_ms")
    if e and dnn:
        lines.append(f"- OpenCV DNN route (blobFromImages + quantize, the usual way to make a model input) / ours: "
                     f"{dnn / e:.1f}x")
    if e and nref and pre.get("edge_backend") == "compiled":
        lines.append(f"- numpy reference / ours: {nref / e:.1f}x; compiled output equals the reference: "
                     f"{_fmt(pre.get('edge_equals_numpy'))}")
    if "scale" in pre:
        lines.append(f"- LUT: build_lut(np.uint8, mean={tuple(pre['mean'])}, std={tuple(pre['std'])}, "
                     f"out_dtype=np.int8, scale={pre['scale']:.6f}, zero_point={pre['zero_point']}); "
                     f"bands (0, 1, 2); bright_threshold {pre['bright_threshold']}; output and TileStats "
                     "preallocated.")
    routes = pre.get("opencv_routes", {})
    if routes:
        lines += ["", "OpenCV tiles-only routes tried (output compared with ours value by value; the fastest "
                  "bit-exact one is the tiles-only column, and the same-work route extends it):", "",
                  "| route | ms | bit-exact | values differing | max abs diff |", "|---|---:|:---:|---:|---:|"]
        for name, r in routes.items():
            mark = " **(used)**" if name == pre.get("opencv_tiles_only_route") else ""
            lines.append(f"| {name}{mark} | {_fmt(r['ms'])} | {_fmt(r['bit_exact'])} | {r['mismatched_values']:,} "
                         f"| {r['max_abs_diff']} |")
    if pre.get("opencv_note"):
        lines += ["", f"Note: {pre['opencv_note']}"]
    if pre.get("error"):
        lines += ["", f"Not run: {pre['error']}"]
    return lines + [""]


def _md_nms(nms: dict, setup: dict) -> list[str]:
    lines = ["## NMS: class-agnostic greedy NMS, IoU 0.5, no score threshold, clustered boxes", ""]
    cols = [("edge", "edge"), ("numpy", "numpy ref"), ("opencv", "OpenCV"), ("ort", "ONNX Runtime"),
            ("powerboxes", "powerboxes")]
    lines += ["| boxes | " + " | ".join(f"{t} ms" for _, t in cols) + " | fastest peer / ours |",
              "|---:|" + "---:|" * (len(cols) + 1)]
    notes = []
    for n in NMS_SIZES:
        row = nms.get(str(n))
        if not row:
            continue
        ratio = row.get("fastest_peer_over_edge")
        ratio_text = "n/a" if ratio is None else f"{_fmt(ratio)}x ({row.get('fastest_peer')})"
        lines.append(f"| {n:,} | " + " | ".join(_fmt(row.get(f"{k}_ms"), 3) for k, _ in cols)
                     + f" | {ratio_text} |")
        kept = row.get("kept", {})
        if kept:
            diffs = row.get("kept_differs_from_edge", {})
            flag = [f"{k} differs from ours in {d} kept indices" for k, d in diffs.items() if d]
            notes.append(f"- {n:,} boxes, kept: " + ", ".join(f"{k} {v:,}" for k, v in kept.items())
                         + (" -- **" + "; ".join(flag) + "**" if flag else " (identical kept sets)"))
        for k, why in row.get("not_run", {}).items():
            notes.append(f"- {n:,} boxes, {k}: null -- {why}")
    lines += [""] + notes + [""]
    if setup.get("error"):
        lines += [f"Not run: {setup['error']}", ""]
    lines += ["Conventions (all compared class-agnostic; a difference in them can change a kept box only when an "
              "IoU is within rounding of the threshold or scores tie):", "",
              f"- ours: {OUR_NMS_CONVENTION}"]
    lines += [f"- {k}: {v}" for k, v in peers.NMS_CONVENTIONS.items()]
    return lines + [""]


def _md_integrity(doc: dict) -> list[str]:
    crc = doc.get("crc32c_gbps", {})
    enc, chk = doc.get("secded_encode_gbps", {}), doc.get("secded_check_gbps", {})
    setup = doc.get("integrity_setup", {})
    lines = ["## Integrity: CRC32C and SECDED on a 64 MiB buffer (GB/s = 1e9 bytes of data per second)", "",
             "| | edge | numpy reference | crc32c package | zlib.crc32 (CRC-32) |", "|---|---:|---:|---:|---:|",
             f"| CRC32C | {_fmt(crc.get('edge'))} | {_fmt(crc.get('numpy'), 3)} | {_fmt(crc.get('crc32c_pkg'))} | "
             f"{_fmt(crc.get('zlib'))} |",
             f"| SECDED encode | {_fmt(enc.get('edge'))} | {_fmt(enc.get('numpy'), 3)} | | |",
             f"| SECDED check | {_fmt(chk.get('edge'))} | {_fmt(chk.get('numpy'), 3)} | | |", ""]
    if crc.get("edge") and crc.get("crc32c_pkg"):
        lines.append(f"- ours / crc32c package: {crc['edge'] / crc['crc32c_pkg']:.2f}x; same checksum as the "
                     f"package: {_fmt(setup.get('crc32c_edge_equals_crc32c_pkg'))} (numpy reference: "
                     f"{_fmt(setup.get('crc32c_numpy_equals_crc32c_pkg'))})")
    if setup.get("secded_edge_parity_equals_numpy") is not None:
        lines.append(f"- SECDED: compiled check bytes equal the reference's: "
                     f"{_fmt(setup['secded_edge_parity_equals_numpy'])}; the check finds the untouched buffer "
                     f"clean: {_fmt(setup.get('secded_edge_check_clean'))}")
    lines += ["", f"Note: {setup.get('zlib_note', '')}. SECDED is Hamming(72,64): 8 parity bits per 64-bit word; "
              "encode writes them into a preallocated array, check recomputes every word's syndrome and "
              "reports errors (none here)."]
    return lines + [""]


def _md_targets(doc: dict) -> list[str]:
    lines = ["## Targets", "", "| target | value | goal | status |", "|---|---:|---:|---|"]
    for t in doc["targets"].values():
        lines.append(f"| {t['what']} | {_fmt(t['value'])} | {t['target']} | {_met(t['met'])} |")
    t = doc["targets"].get("preprocess_vs_opencv_tiles_only", {})
    if t.get("ceiling") is not None and t["ceiling"] < TARGET_PREPROCESS_VS_OPENCV:
        lines += ["", f"Against a statistics-free OpenCV route the 10x cannot be met on this "
                  f"machine: that route is only {t['ceiling']:.2f}x slower than a plain copy of the output, so "
                  f"even a kernel running at the copy floor would be {t['ceiling']:.2f}x faster, not "
                  f"{TARGET_PREPROCESS_VS_OPENCV:g}x."]
    return lines + [""]


def render_markdown(doc: dict) -> str:
    lines = _md_header(doc)
    if "preprocess_4096" in doc:
        lines += _md_preprocess(doc["preprocess_4096"])
    if "nms" in doc:
        lines += _md_nms(doc["nms"], doc.get("nms_setup", {}))
    if "crc32c_gbps" in doc:
        lines += _md_integrity(doc)
    if "pipeline" in doc:
        lines += pipeline.markdown(doc["pipeline"], BUSY_CORES)
    lines += _md_targets(doc)
    if doc["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    return "\n".join(lines)


#: Benchmarks --only knows: their keys in results.json and the prefixes of their notes.
BENCHMARKS = {
    "preprocess": (("preprocess_4096",), ("preprocess", "`preprocess")),
    "nms": (("nms", "nms_setup"), ("nms", "`nms")),
    "integrity": (("crc32c_gbps", "secded_encode_gbps", "secded_check_gbps", "integrity_setup"),
                  ("crc32c", "`crc32c", "secded", "`secded")),
    "pipeline": (("pipeline",), ("pipeline", "wire", "memory", "cold start")),
}


def carry_over(doc: dict, only: set, out_dir: Path) -> None:
    """Figures of the benchmarks not run now, from the previous results.json, so that a run of one
    benchmark leaves the others' sections in place; doc["carried_over"] says where they come from."""
    path = out_dir / "results.json"
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    mach = prev.get("machine", {})
    origin = prev.get("carried_over", {})
    for name, (keys, note_prefixes) in BENCHMARKS.items():
        if name in only or not all(k in prev for k in keys):
            continue
        for k in keys:
            doc[k] = prev[k]
        doc["notes"] += [n for n in prev.get("notes", []) if n.startswith(note_prefixes)]
        doc.setdefault("carried_over", {})[name] = origin.get(name) or {
            "mode": prev.get("mode"), "date_utc": mach.get("date_utc"), "git_commit": mach.get("git_commit"),
            "other_processes_cpu_cores": mach.get("other_processes_cpu_cores")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, slow peers skipped (development)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated subset of: " + ", ".join(BENCHMARKS)
                        + " (the others are carried over from the previous results.json)")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where results.json and RESULTS.md go")
    parser.add_argument("--no-write", action="store_true", help="print the markdown, write nothing")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(BENCHMARKS)
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {sorted(unknown)}")

    mode = QUICK if args.quick else FULL
    cpu_start = _cpu_snapshot()
    threads = peers.pin_single_thread()
    run = Run(mode)
    if "preprocess" in only:
        bench_preprocess(run)
    if "nms" in only:
        bench_nms(run)
    if "integrity" in only:
        bench_integrity(run)
    if "pipeline" in only:
        pipeline.bench_pipeline(run, _cpu_snapshot, _other_cpu)

    doc = {
        "mode": mode.name,
        "elapsed_s": round(time.perf_counter() - run.t_start, 1),
        "machine": {**machine(), "other_processes_cpu_cores": _other_cpu(cpu_start, _cpu_snapshot())},
        "threads": threads,
        "method": {"statistic": "median", "warm_up_calls": 1, "max_repeats": mode.repeats,
                   "repeat_budget_s": mode.budget_s, "single_call_cap_s": mode.single_call_cap_s,
                   "clock": "time.perf_counter", "gc": "disabled while timing"},
        **run.results,  # preprocess_4096, nms, crc32c_gbps, secded_encode_gbps, secded_check_gbps, pipeline
        "targets": {},
        "notes": run.notes,
    }
    if not args.no_write:
        carry_over(doc, only, args.out_dir)
    doc["targets"] = targets(doc)
    head = ("mode", "elapsed_s", "machine", "threads", "method", "carried_over")
    order = [k for k in head if k in doc] + [k for keys, _ in BENCHMARKS.values() for k in keys if k in doc]
    doc = {**{k: doc[k] for k in order}, **{k: v for k, v in doc.items() if k not in order}}
    md = render_markdown(doc)
    if args.no_write:
        print(md)
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    raw = run.raw
    if doc.get("carried_over"):  # keep the samples of the carried-over benchmarks too
        try:
            raw = {**json.loads((args.out_dir / "results.raw.json").read_text()), **run.raw}
        except (OSError, ValueError):
            pass
    (args.out_dir / "results.raw.json").write_text(json.dumps(raw, indent=2) + "\n")
    results_md = args.out_dir / "RESULTS.md"
    # `make bench-vlm` (bench/bench_vlm.py) owns the section between its markers: keep it.
    old = results_md.read_text() if results_md.exists() else ""
    start = old.find("<!-- bench-vlm:start")
    if start >= 0:
        md = md.rstrip("\n") + "\n\n" + old[start:]
    results_md.write_text(md)
    _log(f"wrote {args.out_dir / 'results.json'}, {args.out_dir / 'RESULTS.md'} in {doc['elapsed_s']:.0f} s")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
