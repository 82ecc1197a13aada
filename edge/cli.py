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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge", description="orbit-edge flight runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, machine and which kernel implementation serves each kernel")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
