"""`edge`: the flight-side command line. It only wires arguments to the library."""
from __future__ import annotations

import argparse
import json
import platform
import sys

import edge


def _info(_args) -> int:
    from edge.kernels import _backend

    report = {
        "version": edge.__version__,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "kernels": _backend.kernel_backend(),
        "forced_reference": _backend.force_reference(),
    }
    integrity = _backend.compiled("crc32c")
    if integrity is not None and hasattr(integrity, "crc32c_path"):
        report["crc32c_path"] = integrity.crc32c_path()
    errors = _backend.import_errors()
    if errors:
        report["import_errors"] = errors
    print(json.dumps(report, indent=2))
    return 0


def _eval(args) -> int:
    from edge.evaluate import evaluate_model

    if (args.scenes is None) == (args.image is None):
        raise SystemExit("edge eval: give either --scenes N or --image FILE --boxes CSV")
    if args.image is not None and args.boxes is None:
        raise SystemExit("edge eval: --image needs --boxes CSV")
    result = evaluate_model(args.model, args.variant, scenes=args.scenes, image=args.image,
                            boxes=args.boxes, manifest=args.manifest, threads=args.threads,
                            seed_base=args.seed_base, score_threshold=args.threshold,
                            backend_options={"xnnpack": True} if args.xnnpack else None)
    print(json.dumps(result))
    return 0


def _run(args) -> int:
    import logging
    import time

    t_start = time.perf_counter()
    from edge.config import ConfigError, apply_overrides, default_config, load_config

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    overrides = {
        "input.source": args.source, "model.name": args.model, "model.variant": args.variant,
        "model.backend": args.backend, "model.threads": args.threads, "model.memory": args.memory,
        "tiling.overlap": args.overlap, "detection.score_threshold": args.score_threshold,
        "data.dir": args.data_dir, "downlink.output": args.output}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        cfg = load_config(args.config) if args.config else default_config()
        cfg = apply_overrides(cfg, overrides)
    except ConfigError as e:
        print(f"edge run: config error: {e}", file=sys.stderr)
        return 2
    if not args.no_supervisor:
        return _supervised(args, cfg, overrides)
    from edge.flight import FlightLoop, ModelLoadError

    try:
        loop = FlightLoop(cfg, started_at=t_start)
    except (ModelLoadError, ValueError, OSError) as e:
        print(f"edge run: cannot start: {e}", file=sys.stderr)
        return 2
    with loop:
        loop.run(max_frames=args.max_frames)
    summary = loop.summary.as_dict()
    summary.update(model=loop.model.name, variant=loop.variant, runtime=loop.file.runtime,
                   memory=loop.backend.memory, output=str(cfg.downlink["output"]),
                   data_dir=str(cfg.data_dir))
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps(summary))
    return 0 if summary["frames_failed"] == 0 or args.keep_going_rc else 1


def _supervised(args, cfg, overrides) -> int:
    """`edge run` as flown: the supervisor (this process) runs the flight loop as a worker process,
    restarts it when it misses a stage deadline or dies, pets the watchdog only while it is healthy,
    and goes to safe mode after a restart storm (edge/reliability/supervisor.py)."""
    import signal

    from edge.reliability.supervisor import Supervisor
    from edge.reliability.watchdog import open_watchdog

    cmd = [sys.executable, "-m", "edge.worker", "--overrides", json.dumps(overrides)]
    if args.config:
        cmd += ["--config", args.config]
    if args.summary:
        cmd += ["--summary", args.summary]
    if args.max_frames is not None:
        cmd += ["--max-frames", str(args.max_frames)]
    if args.quiet:
        cmd += ["--quiet"]
    wd = cfg.watchdog
    watchdog = open_watchdog(wd["device"], wd["timeout_s"])
    sup = Supervisor(cfg, cmd, watchdog=watchdog)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sup.request_stop())
    rc = sup.run()
    report = {"supervisor": dict(sup.stats), "output": str(cfg.downlink["output"]),
              "data_dir": str(cfg.data_dir)}
    if args.summary:
        try:
            with open(args.summary) as f:
                report.update(json.load(f))
        except (OSError, ValueError):
            pass
    print(json.dumps(report, default=str))
    return rc


# ---- edge vlm (the ground bench's face of the on-board VLM: edge/vlm/) ---------------------------

#: Picture files the bench reads with Pillow as they are (8-bit RGB after convert); every other frame
#: file goes through edge.sources.open_frame and edge.vlm.tasks.to_rgb8 with the [sensor] settings.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class _VlmUsage(ValueError):
    """A problem `edge vlm` reports in one line with exit code 2."""


def _vlm_image(path: str, sensor: dict | None):
    """FILE -> (H, W, 3) uint8 RGB: 8-bit pictures (PNG / JPEG / TIFF) by Pillow; 16-bit or
    multiband pictures and sensor frames (.raw + sidecar, .npy) by open_frame + to_rgb8."""
    from pathlib import Path

    import numpy as np

    from edge.sources import FrameError, open_frame
    from edge.vlm.tasks import to_rgb8

    p = Path(path)
    if not p.is_file():
        raise _VlmUsage(f"--image {path}: no such file")
    if p.suffix.lower() in PICTURE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(p) as im:
                if im.mode in ("RGB", "RGBA", "L", "P", "LA", "CMYK", "YCbCr", "1"):
                    return np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise _VlmUsage(f"--image {p.name}: not a readable image: {e}") from None
    try:
        frame = open_frame(p)
    except FrameError as e:
        raise _VlmUsage(f"--image {e}") from None
    return to_rgb8(frame.array, sensor, layout=frame.layout)


def _vlm_model(args):
    from edge.vlm.model import VlmModel

    return VlmModel(args.model, variant=args.variant, threads=args.threads)


def _vlm_run(args, fn) -> int:
    """Run an `edge vlm` command: a bad argument, model or image is one line on stderr, exit 2."""
    try:
        return fn(args)
    except (ValueError, OSError, ImportError) as e:   # VlmModelError, TaskError, FrameError, ConfigError
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"edge vlm {args.vlm_command}: {text}", file=sys.stderr)
        return 2


def _vlm_info(args) -> int:
    model = _vlm_model(args)
    report = model.describe()
    from edge.vlm.tasks import vlm_model_id

    report["model_id"] = vlm_model_id(model).hex()
    print(json.dumps(report, indent=2, default=str))
    return 0


def _vlm_ask(args) -> int:
    import time

    from edge.config import DEFAULTS, ConfigError, default_config, load_config
    from edge.vlm.tasks import run_task

    cfg = load_config(args.config) if args.config else default_config()
    v = dict(cfg.vlm)
    for key in ("tile", "overlap", "max_tiles", "image_max_side", "max_new_tokens"):
        if getattr(args, key) is not None:
            v[key] = getattr(args, key)
    if args.deadline is not None:
        v["deadline_s"] = args.deadline
    for key in ("tile", "overlap", "max_tiles", "image_max_side", "max_new_tokens"):
        if not isinstance(v[key], int) or v[key] < (0 if key == "overlap" else 1):
            raise ConfigError(f"--{key.replace('_', '-')}: must be a positive integer, got {v[key]}")
    if not v["deadline_s"] > 0:
        raise ConfigError(f"--deadline: must be a positive number of seconds, got {v['deadline_s']}")
    task = args.task or DEFAULTS["vlm"]["task"]
    if task == "vqa" and not args.question:
        raise _VlmUsage("--question: a vqa question needs its text (or choose --task caption)")
    # the [sensor] bands / bit depth of a mission config; without one, to_rgb8's defaults (the ground
    # renderer's bands for the frame's band count, a percentile stretch)
    image = _vlm_image(args.image, cfg.sensor if args.config else None)
    t0 = time.perf_counter()
    model = _vlm_model(args)
    load_s = time.perf_counter() - t0
    out = run_task(model, image, task, args.question, tile=v["tile"], overlap=v["overlap"],
                   max_tiles=v["max_tiles"], image_max_side=v["image_max_side"],
                   max_new_tokens=v["max_new_tokens"], deadline_s=float(v["deadline_s"]),
                   merge_threshold=v["merge_threshold"])
    boxes = []
    if out.boxes is not None:
        for box, cid in zip(out.boxes.tolist(), out.class_ids.tolist()):
            boxes.append({"label": out.labels[cid] if cid < len(out.labels) else str(cid),
                          "bbox": [round(float(x), 1) for x in box]})
    report = {"task": task, "question": args.question, "text": out.text, "tokens": out.tokens,
              "stop": out.stop, "timings_ms": out.timings, "load_s": round(load_s, 3),
              "image_hw": list(image.shape[:2]), "tiles": out.tiles, "rejected": out.rejected,
              "skipped": out.skipped, "errors": list(out.errors)}
    if task == "grounding":
        report["boxes"] = boxes
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    print(f"answer: {out.text}")
    if task == "grounding":
        print(f"boxes ({len(boxes)}, image pixels x1 y1 x2 y2):")
        for b in boxes:
            print(f"  {b['label']}: " + " ".join(f"{x:.1f}" for x in b["bbox"]))
    t = out.timings
    print(f"tokens: {out.tokens}, stop: {out.stop}, tiles: {out.tiles}; ms: vision {t.get('vision', 0)}, "
          f"prefill {t.get('prefill', 0)}, decode {t.get('decode', 0)} (model load {load_s:.2f} s)")
    for err in out.errors:
        print(f"note: {err}")
    return 0


def _add_vlm_parser(sub) -> None:
    vlm = sub.add_parser("vlm", help="the on-board vision-language model on the ground bench")
    vsub = vlm.add_subparsers(dest="vlm_command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, metavar="DIR",
                        help="the LFM2-VL-family ONNX export's directory")
    common.add_argument("--variant", choices=["fp32", "fp16", "q8", "q4", "q4f16"],
                        help="graph variant (default: the best that exists: q8, fp32, fp16, q4)")
    common.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    info = vsub.add_parser("info", parents=[common], help="the model's files, variants and shapes (JSON)")
    info.set_defaults(func=lambda a: _vlm_run(a, _vlm_info))
    ask = vsub.add_parser("ask", parents=[common], help="ask one question about one image")
    ask.add_argument("--image", required=True, metavar="FILE",
                     help="PNG / JPEG / TIFF, or a sensor frame (.raw + sidecar, .npy)")
    ask.add_argument("--question", metavar="TEXT", help="the question (grounding: what to find)")
    ask.add_argument("--task", choices=["vqa", "caption", "grounding"], help="default vqa")
    ask.add_argument("--max-new-tokens", type=int, help="default: [vlm] max_new_tokens (256)")
    ask.add_argument("--deadline", type=float, metavar="S", help="seconds per answer (default 60)")
    ask.add_argument("--tile", type=int, help="grounding tile side (default 512)")
    ask.add_argument("--overlap", type=int, help="grounding tile overlap (default 64)")
    ask.add_argument("--max-tiles", type=int, help="grounding tiles at most (default 16)")
    ask.add_argument("--image-max-side", type=int, help="VQA / caption image side (default 512)")
    ask.add_argument("--config", help="mission config: [sensor] bands / bit depth for sensor frames, "
                                      "[vlm] defaults")
    ask.add_argument("--json", action="store_true", help="one JSON object instead of text")
    ask.set_defaults(func=lambda a: _vlm_run(a, _vlm_ask))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge", description="orbit-edge flight runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, machine and which kernel implementation serves each kernel")
    info.set_defaults(func=_info)
    ev = sub.add_parser("eval", help="AP50 / precision / recall and per-tile latency of a manifest model "
                                     "on generated scenes or an annotated image (one JSON line)")
    ev.add_argument("model", help="model name in the manifest")
    ev.add_argument("--variant", help="file variant (default: the model's first), e.g. onnx_int8")
    ev.add_argument("--scenes", type=int, help="number of held-out generated scenes")
    ev.add_argument("--image", help="annotated image file (any size; tiled and merged)")
    ev.add_argument("--boxes", help="CSV of ground-truth boxes for --image (xmin,ymin,xmax,ymax)")
    ev.add_argument("--manifest", help="manifest file (default: $EDGE_MANIFEST or models/manifest.json)")
    ev.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    ev.add_argument("--seed-base", type=int, default=1_000_000, help="first scene seed (held-out range)")
    ev.add_argument("--threshold", type=float, help="score threshold for precision/recall "
                                                    "(default: the manifest head's)")
    ev.add_argument("--xnnpack", action="store_true",
                    help="LiteRT: use the XNNPACK delegate (faster; repacks the weights out of the "
                         "verified model buffer)")
    ev.set_defaults(func=_eval)
    run = sub.add_parser("run", help="the flight loop: frames -> detections -> journal -> Space Packets")
    run.add_argument("source", nargs="?", help="frame file or spool directory (default: input.source)")
    run.add_argument("--config", help="mission config (TOML); defaults apply without one")
    run.add_argument("--model", help="model name in the manifest (model.name)")
    run.add_argument("--variant", help="model variant, e.g. onnx_int8 (model.variant)")
    run.add_argument("--backend", choices=["auto", "onnxruntime", "litert"], help="model.backend")
    run.add_argument("--threads", type=int, help="runtime threads (model.threads)")
    run.add_argument("--memory", choices=["copy", "owned"], help="where the weights live (model.memory)")
    run.add_argument("--overlap", type=int, help="tile overlap in pixels (tiling.overlap)")
    run.add_argument("--score-threshold", type=float, help="detection.score_threshold")
    run.add_argument("--data-dir", help="journal and state directory (data.dir)")
    run.add_argument("--output", help="packet stream: file, FIFO or serial device (downlink.output)")
    run.add_argument("--max-frames", type=int, help="stop after this many spool frames")
    run.add_argument("--summary", help="also write the run summary (JSON) to this file")
    run.add_argument("--quiet", action="store_true", help="log warnings only")
    run.add_argument("--keep-going-rc", action="store_true",
                     help="exit 0 even when some frames failed (they are reported either way)")
    run.add_argument("--no-supervisor", action="store_true",
                     help="run the flight loop in this process (no worker, no watchdog): development")
    run.set_defaults(func=_run)
    from edge.reliability.inject import add_inject_parser
    from edge.uplink import add_keygen_parser

    add_inject_parser(sub)
    add_keygen_parser(sub)
    _add_vlm_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
