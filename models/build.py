"""Build the shipped detectors: train, export four variants, measure, write the manifest.

    .venv-models/bin/python -m models.build ship|trees|all [--reuse-weights]

ship:  trained on models.scenes.generate_scene (train seeds 0.., validation 500_000.., test 1_000_000..).
trees: trained on two NEON images of the deepforest 2.1.0 wheel, tested on a third site (SOAP_061).
Variants per model (models/<name>/): onnx_fp32, onnx_int8 (QDQ, raw uint8 input), ort_int8, tflite_int8.
Metrics go through edge.evaluate, the same manifest -> backend -> head decoder -> NMS/merge path the
flight software runs; `--metrics-only` re-measures the shipped files without retraining.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from models import export as onnx_export
from models import manifest
from models.detector import build as build_detector, count_params, fused
from models.train import TrainConfig, quick_eval, train

MODELS_DIR = manifest.MODELS_DIR
WEIGHTS_DIR = os.path.expanduser("~/.cache/orbit-edge/weights")  # not shipped; for --reuse-weights
TILE = 256
STRIDE = 4
CALIB_TILES = 64
LATENCY_REPEATS = 100
TEST_SEED_BASE = 1_000_000      # held-out ship scenes: never trained on
VAL_SEED_BASE = 500_000         # ship validation scenes (threshold check during the build)
N_TEST_SCENES = 300
N_VAL_SCENES = 100


# --- data sources ----------------------------------------------------------------------------------

SHIP_TRAIN_SCENES = 4000         # distinct training scenes (seeds 0..3999), each reused with dihedral flips
_scene_cache: dict = {}


def ship_train_sample(index, rng):
    """Training scenes cycle over SHIP_TRAIN_SCENES seeds and are generated once (generation costs
    about as much as a training step would)."""
    seed = index % SHIP_TRAIN_SCENES
    if seed not in _scene_cache:
        _scene_cache[seed] = ship_sample(seed)
    return _scene_cache[seed]


def ship_sample(seed):
    from models.scenes import generate_scene
    s = generate_scene(int(seed), TILE, TILE)
    return s.image, np.asarray(s.boxes, np.float32).reshape(-1, 4), np.asarray(s.classes, np.int64)


SPECS = {
    "ship": dict(
        classes=["ship"], threshold=0.3,
        description="Ships on synthetic sea scenes (models/scenes.py); CenterNet-style, stride 4, ~258k params.",
        config=TrainConfig(num_classes=1, steps=1200, batch_size=16, lr=3e-3, seed=0),
    ),
    "trees": dict(
        classes=["tree"], threshold=0.3,
        description="Tree crowns in NEON 10 cm aerial RGB (deepforest 2.1.0 wheel data); CenterNet-style, "
                    "stride 4, ~258k params. Trained on YELL + OSBS, tested on SOAP (another site).",
        config=TrainConfig(num_classes=1, steps=2400, batch_size=16, lr=3e-3, seed=0),
    ),
}


def data_for(name):
    """(train sample fn, calibration tiles uint8 NHWC, validate fn, training-data description)."""
    if name == "ship":
        sample = ship_train_sample
        calib = np.stack([ship_sample(VAL_SEED_BASE + 10_000 + i)[0] for i in range(CALIB_TILES)])
        val = [ship_sample(VAL_SEED_BASE + i) for i in range(N_VAL_SCENES)]
        desc = {"data": "models.scenes.generate_scene, 256x256 RGB", "train_seeds": f"0..{SHIP_TRAIN_SCENES - 1}",
                "validation_seeds": f"{VAL_SEED_BASE}..{VAL_SEED_BASE + N_VAL_SCENES - 1}",
                "test_seeds": f"{TEST_SEED_BASE}..{TEST_SEED_BASE + N_TEST_SCENES - 1} (never trained on)"}
        return sample, calib, (lambda m: quick_eval(m, val)), desc
    if name == "trees":
        from models import neon_trees as nt
        images = [nt.load(n) for n in nt.TRAIN_IMAGES]
        sampler = nt.CropSampler(images, TILE)
        crng = np.random.default_rng(12345)
        plain = nt.CropSampler(images, TILE, augment=False)  # calibrate on real pixel statistics
        calib = np.stack([plain(i, crng)[0] for i in range(CALIB_TILES)])
        desc = {"data": "deepforest 2.1.0 wheel (pip download --no-deps), NEON aerial RGB ~10 cm/px",
                "wheel_sha256": nt.wheel_sha256(), "train_images": list(nt.TRAIN_IMAGES),
                "train_boxes": int(sum(len(b) for _, b in images)), "test_image": nt.TEST_IMAGE,
                "sampling": f"random {TILE}x{TILE} crops (area-weighted), boxes kept if >= 50% visible; "
                            f"scale {nt.CropSampler.SCALE_RANGE}, brightness/contrast/saturation/gain jitter",
                "labels": "every label (Tree, Alive, Dead) -> tree"}
        return sampler, calib, None, desc
    raise ValueError(f"unknown model {name!r}; choose from {sorted(SPECS)}")


# --- measurement (the flight path: edge.manifest -> edge.backends -> edge.heads -> NMS/merge) --------

def evaluate(name, variant, threshold):
    """AP50 / precision / recall of one variant through edge.evaluate."""
    from edge.evaluate import evaluate_model

    if name == "ship":
        r = evaluate_model(name, variant, scenes=N_TEST_SCENES, seed_base=TEST_SEED_BASE)
        evset = f"{N_TEST_SCENES} generated 256x256 scenes, seeds {TEST_SEED_BASE}..{TEST_SEED_BASE + N_TEST_SCENES - 1}"
    else:
        from models import neon_trees as nt
        img, gt = nt.load(nt.TEST_IMAGE)
        r = evaluate_model(name, variant, image=img, boxes=gt)
        evset = f"{nt.TEST_IMAGE} ({len(gt)} boxes), {TILE} px tiles, edge.evaluate's default overlap, merged"
    out = {k: round(float(r[k]), 4) for k in ("ap50", "precision", "recall")}
    out.update({k: r[k] for k in ("n_gt", "n_det", "tp") if k in r})
    return {**out, "threshold": threshold, "eval_set": evset,
            "evaluator": "edge.evaluate (edge.backends + edge.heads + NMS/merge)"}


def latency_ms(name, variant, entry, tile):
    """Median of LATENCY_REPEATS runs of one tile on 1 thread through edge.backends."""
    from edge.backends import open_backend
    from edge.manifest import load_manifest

    backend = open_backend(load_manifest(manifest.MANIFEST_PATH).model(name), variant, threads=1)
    x = tile.transpose(2, 0, 1)[None]
    dt = entry["input"]["dtype"]
    x = (x.astype(np.float32) / 255.0 if dt == "float32" else
         (x.astype(np.int16) + entry["input"]["zero_point"]).astype(np.int8) if dt == "int8" else x)
    x = np.ascontiguousarray(x)
    for _ in range(5):
        backend.run(x)
    ts = []
    for _ in range(LATENCY_REPEATS):
        t = time.perf_counter()
        backend.run(x)
        ts.append(time.perf_counter() - t)
    return round(float(np.median(ts)) * 1e3, 3)


def measure(name, calib_tile):
    """(Re)write the metrics of every variant of `name` in the manifest."""
    spec = SPECS[name]
    for v, f in manifest.load()["models"][name]["files"].items():
        m = evaluate(name, v, spec["threshold"])
        m["tile_latency_ms_1thread"] = latency_ms(name, v, f, calib_tile)
        manifest.set_metrics(name, v, m)
        print(f"[{name}] {v}: {m}")


# --- the build ---------------------------------------------------------------------------------------

def build_one(name, reuse_weights=False):
    spec = SPECS[name]
    cfg = spec["config"]
    out_dir = os.path.join(MODELS_DIR, name)
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(WEIGHTS_DIR, exist_ok=True)
    wpath = os.path.join(WEIGHTS_DIR, f"{name}.pt")
    sample, calib, validate, data_desc = data_for(name)
    if reuse_weights and os.path.exists(wpath):
        ckpt = torch.load(wpath, weights_only=False)  # our own cache file
        model = build_detector(cfg.num_classes)
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
        info = ckpt["info"]
        print(f"[{name}] reusing weights {wpath}")
    else:
        print(f"[{name}] training {cfg.steps} steps x {cfg.batch_size}")
        model, info = train(sample, cfg, validate=validate)
        torch.save({"state_dict": model.state_dict(), "info": info}, wpath)

    files = {}
    p = lambda v, ext: os.path.join(out_dir, f"{name}_{v}.{ext}")
    rel = lambda path: os.path.relpath(path, MODELS_DIR)
    outputs = {r: r for r in onnx_export.OUTPUT_NAMES}
    t = time.perf_counter()
    onnx_export.export_onnx_fp32(model, p("fp32", "onnx"))
    files["onnx_fp32"] = manifest.file_entry(rel(p("fp32", "onnx")), fmt="onnx", runtime="onnxruntime",
                                             precision="fp32", input_name="images", input_dtype="float32",
                                             input_scale=1 / 255, input_zero_point=0, outputs=outputs)
    onnx_export.quantize_int8(p("fp32", "onnx"), list(calib), p("int8", "onnx"))
    files["onnx_int8"] = manifest.file_entry(rel(p("int8", "onnx")), fmt="onnx", runtime="onnxruntime",
                                             precision="int8", input_name="images", input_dtype="uint8",
                                             input_scale=1 / 255, input_zero_point=0, outputs=outputs)
    onnx_export.to_ort_format(p("int8", "onnx"), p("int8", "ort"))
    files["ort_int8"] = manifest.file_entry(rel(p("int8", "ort")), fmt="ort", runtime="onnxruntime",
                                            precision="int8", input_name="images", input_dtype="uint8",
                                            input_scale=1 / 255, input_zero_point=0, outputs=outputs)
    try:
        from models.export_tflite import export_tflite_int8
        tinfo = export_tflite_int8(model, calib, p("int8", "tflite"))
        ti = tinfo["input"]
        files["tflite_int8"] = manifest.file_entry(
            rel(p("int8", "tflite")), fmt="tflite", runtime="litert", precision="int8", input_name=ti["name"],
            input_dtype=ti["dtype"], input_scale=ti["scale"], input_zero_point=ti["zero_point"],
            outputs=tinfo["outputs"], output_quantization=tinfo["output_quantization"])
    except Exception as e:  # noqa: BLE001 - ship the other variants, say what is missing
        print(f"[{name}] TFLite int8 export failed: {e!r}")
    export_s = round(time.perf_counter() - t, 1)
    for v, f in files.items():
        if f["size"] >= 2_000_000:
            raise RuntimeError(f"{f['path']} is {f['size']} bytes, over the 2 MB limit")

    entry = {
        "task": "detection", "classes": spec["classes"], "description": spec["description"],
        "input": {"shape": [1, 3, TILE, TILE], "layout": "NCHW", "color": "RGB", "bit_depth": 8},
        "preprocess": {"mean": [0, 0, 0], "std": [255, 255, 255]},
        "head": {"type": "centernet", "stride": STRIDE, "score_threshold": spec["threshold"],
                 "max_detections": 100, "nms_iou": 0.5},
        "files": files,
        "training": {**data_desc, **{k: v for k, v in info.items() if k != "validation"},
                     "validation": info.get("validation"), "params": count_params(fused(model)),
                     "export_seconds": export_s},
        "metrics": {},
    }
    manifest.update_model(name, entry)

    measure(name, calib[0])
    return manifest.load()["models"][name]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m models.build", description=__doc__.splitlines()[0])
    ap.add_argument("target", choices=["ship", "trees", "all"])
    ap.add_argument("--reuse-weights", action="store_true",
                    help="export/evaluate from the cached weights instead of retraining")
    ap.add_argument("--metrics-only", action="store_true",
                    help="re-measure the shipped files' metrics and latency; no training, no export")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    for name in (["ship", "trees"] if a.target == "all" else [a.target]):
        if a.metrics_only:
            measure(name, data_for(name)[1][0])
        else:
            build_one(name, a.reuse_weights)
    problems = manifest.verify()
    if problems:
        print("\n".join(problems)); return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
