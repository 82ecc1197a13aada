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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
