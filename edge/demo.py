"""`make demo`: the main job of orbit-edge on its bundled default scene, end to end, with the real CLIs.

1. Generate the default scene (models/scenes.py, fixed seed): 4096 x 4096, 12-bit B, G, R, NIR, 120 ships
   (about 90 of them visible: clouds over ~15 % of the frame hide the rest), a no-data strip along the
   top (the swath edge). It is written as a
   sensor dump (.raw + JSON sidecar with capture time and an affine georeference) into a spool
   directory, with its ground truth (ship boxes) beside it.
2. `edge run --config edge/missions/demo.toml SPOOL ...`: the flight loop, shipped int8 ship model, packet
   stream into downlink.bin through the crash-safe journal.
3. `edge-ground decode downlink.bin --out ground/`: JSON Lines, GeoJSON, CSV, report.
4. `edge-ground render ground/records.jsonl --frame <the frame> --out ground/frame.png`.
5. Scores what the ground received against the truth and prints the figures: tiles processed / screened,
   detections, precision and recall, raw frame bytes vs downlinked bytes, bytes per detection, time per
   stage; and where the outputs are.

Run from the repository root (it needs models/scenes.py): python -m edge.demo [--out DIR].
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: The default scene: seed and generator settings (120 ships, ~90 visible; 15 % cloud; a no-data strip).
SCENE_SEED = 2026
SCENE_SIZE = 4096
SCENE_PARAMS = dict(ships=(0.47, 0.47), cloud_probability=1.0, cloud_cover=(0.15, 0.15),
                    nodata_probability=1.0, nodata_width=(0.1, 0.1), land_probability=0.0)
#: Capture time and an affine georeference (GDAL order) of ~2.4 m pixels in the Alboran Sea.
CAPTURE_TIME = "2026-06-21T10:30:00Z"
GEOTRANSFORM = [-4.90, 2.7e-5, 0.0, 36.05, 0.0, -2.2e-5]
MISSION = Path(__file__).resolve().parent / "missions" / "demo.toml"
DEFAULT_OUT = Path("demo-out")


def write_scene(spool: Path, truth_csv: Path) -> tuple[Path, int, int]:
    try:
        from models.scenes import generate_scene
    except ImportError as e:  # pragma: no cover - run from the repository root
        raise SystemExit(f"edge.demo needs models/scenes.py (run it from the repository root): {e}")
    spool.mkdir(parents=True, exist_ok=True)
    raw = spool / f"scene-{SCENE_SEED}.raw"
    shape = (SCENE_SIZE, SCENE_SIZE, 4)
    part = raw.with_name(raw.name + ".part")  # the spool takes only complete files
    image = np.lib.format.open_memmap(part.with_suffix(".npy.tmp"), mode="w+", dtype=np.uint16,
                                      shape=shape)
    scene = generate_scene(SCENE_SEED, SCENE_SIZE, SCENE_SIZE, bands="bgrn", out=image, **SCENE_PARAMS)
    image.tofile(part)
    del image
    os.unlink(part.with_suffix(".npy.tmp"))
    sidecar = {"shape": list(shape), "dtype": "uint16", "layout": "HWC", "bit_depth": 12,
               "capture_time": CAPTURE_TIME, "georef": {"geotransform": GEOTRANSFORM}}
    raw.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    os.rename(part, raw)
    with open(truth_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["xmin", "ymin", "xmax", "ymax", "class_id"])
        for b in scene.boxes.tolist():
            w.writerow([f"{v:.2f}" for v in b] + [0])
    return raw, len(scene.boxes), scene.ships_total


def _cmd(args: list[str]) -> None:
    print("  $ " + " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, stdout=subprocess.DEVNULL)


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _read_csv_boxes(path: Path, score_col: bool):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    boxes = np.array([[float(r[k]) for k in (("x1", "y1", "x2", "y2") if score_col else
                                              ("xmin", "ymin", "xmax", "ymax"))] for r in rows],
                     np.float64).reshape(-1, 4)
    scores = np.array([float(r["score"]) for r in rows]) if score_col else None
    return boxes, scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (recreated)")
    args = ap.parse_args(argv)
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    spool, data, ground = out / "spool", out / "data", out / "ground"
    ground.mkdir(parents=True)
    stream, summary_json = out / "downlink.bin", out / "run.json"

    print(f"1. default scene: seed {SCENE_SEED}, {SCENE_SIZE}x{SCENE_SIZE} 12-bit B,G,R,NIR")
    t0 = time.perf_counter()
    raw, n_truth, n_ships = write_scene(spool, out / "truth.csv")
    print(f"   {raw} ({raw.stat().st_size / 2**20:.0f} MiB): {n_ships} ships, {n_truth} of them visible "
          f"(the rest under cloud or no-data) ({time.perf_counter() - t0:.1f} s)")
    print("2. flight: edge run")
    _cmd([_tool("edge"), "run", "--config", MISSION, spool, "--data-dir", data, "--output", stream,
          "--summary", summary_json, "--quiet"])
    print("3. ground: edge-ground decode")
    _cmd([_tool("edge-ground"), "decode", stream, "--out", ground, "--no-progress"])
    done = spool / ".done" / raw.name
    print("4. ground: edge-ground render")
    _cmd([_tool("edge-ground"), "render", ground / "records.jsonl", "--frame", done,
          "--out", ground / "frame.png"])

    from edge.config import load_config
    from edge.evaluate import average_precision

    run = json.loads(summary_json.read_text())
    report = json.loads((ground / "report.json").read_text())
    det_boxes, det_scores = _read_csv_boxes(ground / "detections.csv", score_col=True)
    gt_boxes, _ = _read_csv_boxes(out / "truth.csv", score_col=False)
    threshold = load_config(MISSION).detection["score_threshold"]
    m = average_precision([(det_boxes, det_scores)], [gt_boxes], score_threshold=threshold - 1e-6)
    tiles = run["tiles"]
    n_det = len(det_scores)
    wire = stream.stat().st_size
    frame_wire = run["frame_record_bytes"]
    stages = run["stage_ms_total"]
    print("\norbit-edge demo: results (measured in this run)")
    rows = [
        ("tiles", f"{tiles['total']} planned: {tiles['inferred']} inferred, {tiles['nodata']} no-data "
                  f"and {tiles['cloud']} cloud screened out"),
        ("detections", f"{n_det} received at the ground (score >= {threshold}); {n_truth} ships visible"),
        ("precision / recall", f"{m['precision']:.3f} / {m['recall']:.3f} (IoU >= 0.5 against the "
                               f"scene's truth; {m['tp']} true positives)"),
        ("raw frame", f"{run['raw_bytes']:,} bytes"),
        ("downlinked", f"{wire:,} bytes in {run['packets']} packets (frame record: {frame_wire:,} "
                       f"bytes; housekeeping and events: {wire - frame_wire:,})"),
        ("reduction", f"{run['raw_bytes'] / max(wire, 1):,.0f}x (whole stream), "
                      f"{run['raw_bytes'] / max(frame_wire, 1):,.0f}x (frame record)"),
        ("bytes / detection", f"{frame_wire / max(n_det, 1):.2f} on the wire, headers and packet "
                              f"framing included ({wire / max(n_det, 1):.2f} counting the whole stream)"),
        ("ground report", f"{report.get('records_ok', report.get('records'))} records, "
                          f"{report.get('crc_failures', 0)} CRC failures, {report.get('gap_count', 0)} gaps"),
    ]
    for k, v in rows:
        print(f"  {k:<20} {v}")
    print("  time per stage (ms, whole frame):")
    for stage in ("read", "preprocess", "screen", "infer", "decode", "merge", "record", "journal",
                  "downlink", "frame"):
        if stage in stages:
            print(f"    {stage:<12} {stages[stage]:10.1f}")
    print(f"\noutputs in {out}/:")
    for p in (stream, ground / "records.jsonl", ground / "detections.geojson",
              ground / "detections.csv", ground / "frame.png", ground / "report.json", summary_json):
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
