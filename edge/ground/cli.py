"""`edge-ground`: the ground tool's command line. It only wires files and formats to the library
(edge/ground/decode.py, outputs.py, render.py).

  edge-ground decode STREAM [--out DIR] [--jsonl F] [--geojson F] [--csv F] [--report F]
                            [--manifest M] [--progress | --no-progress]
  edge-ground render RECORDS_OR_STREAM --out PNG_OR_DIR [--frame FILE] [--frame-id N]
                            [--max-side N] [--bands 2,1,0] [--manifest M]
  edge-ground stats STREAM_OR_JSONL [--json] [--manifest M]

STREAM '-' is stdin. render and stats take a raw packet stream or a records.jsonl of decode
(told apart by content). Exit status: 0 whenever the input could be read, whatever its bytes were
(the problems are in the report); 2, with a one-line message, for unusable arguments and files
that cannot be read or written. No input makes it print a traceback.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from contextlib import ExitStack
from pathlib import Path

PROG = "edge-ground"
#: Files `decode --out DIR` writes.
OUT_FILES = {"jsonl": "records.jsonl", "geojson": "detections.geojson", "csv": "detections.csv",
             "report": "report.json"}
#: Bytes looked at to tell a JSON Lines file from a packet stream.
SNIFF_BYTES = 4096
_JSONL_HEAD = re.compile(rb'^\s*\{\s*"kind"\s*:')


class UsageError(Exception):
    """An argument or file the command cannot use: exit 2 with this message."""


# ---- inputs --------------------------------------------------------------------------------------

def _open_binary(path: str, stack: ExitStack):
    """A buffered binary reader of a path ('-': stdin)."""
    if path == "-":
        return sys.stdin.buffer
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(21, "is a directory")
        return stack.enter_context(open(path, "rb"))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None


def _size_of(f) -> int | None:
    try:
        st = os.fstat(f.fileno())
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None
    return st.st_size if st.st_size > 0 and not os.isatty(f.fileno()) else None


def _is_jsonl(f) -> bool:
    """True when a buffered binary reader holds a records.jsonl (looked at without consuming it)."""
    try:
        head = f.peek(SNIFF_BYTES)[:SNIFF_BYTES]
    except (AttributeError, io.UnsupportedOperation):
        return False
    if _JSONL_HEAD.match(head):
        return True
    first = head.lstrip()
    if not first.startswith(b"{") or b"\n" not in first:
        return False
    try:
        return isinstance(json.loads(first.split(b"\n", 1)[0]), dict)
    except ValueError:
        return False


def _manifest(args):
    """The manifest argument for the decoder: a loaded Manifest for --manifest, else None (the
    default manifest, read when needed; a problem with it is noted in the report)."""
    if getattr(args, "manifest", None) is None:
        return None
    from edge.manifest import ManifestError, load_manifest
    try:
        return load_manifest(args.manifest)
    except ManifestError as e:
        raise UsageError(f"--manifest: {e}") from None


class _Records:
    """The records of an input (stream or JSONL) and, after the pass, its report (or None)."""

    def __init__(self, f, manifest, progress=None):
        from edge.ground.decode import iter_decode
        from edge.ground.outputs import read_jsonl

        self.jsonl = _is_jsonl(f)
        if self.jsonl:
            self._it = read_jsonl(io.TextIOWrapper(f, encoding="utf-8", errors="replace"))
        else:
            self._it = iter_decode(f, manifest=manifest, progress=progress)

    def __iter__(self):
        return iter(self._it)

    @property
    def report(self):
        return self._it.report

    @property
    def bad_lines(self) -> int:
        return self._it.bad_lines if self.jsonl else 0


def _progress_bar(args, f, stack: ExitStack):
    enabled = args.progress if args.progress is not None else sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm
    bar = stack.enter_context(tqdm(total=_size_of(f), unit="B", unit_scale=True, unit_divisor=1024,
                                   desc="decode", file=sys.stderr, leave=False))
    return bar.update


def _io_error(path, e: OSError) -> UsageError:
    """An I/O error during the pass: reading the input, or writing an output (e.filename says)."""
    if e.filename is not None:
        return UsageError(f"{e.filename}: {e.strerror or e}")
    return UsageError(f"cannot read {path}: {e.strerror or e}")


def _open_out(path: Path, stack: ExitStack, **kwargs):
    try:
        return stack.enter_context(open(path, "w", encoding="utf-8", **kwargs))
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


# ---- commands ------------------------------------------------------------------------------------

def _decode(args) -> int:
    from edge.ground.decode import iter_decode
    from edge.ground.outputs import CsvWriter, GeoJsonWriter, JsonlWriter, Stats

    paths = {k: getattr(args, k) for k in OUT_FILES}
    if args.out is not None:
        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out {args.out}: cannot create the directory: {e.strerror or e}") from None
        for key, name in OUT_FILES.items():
            paths[key] = paths[key] or Path(args.out) / name
    manifest = _manifest(args)
    with ExitStack() as stack:
        f = _open_binary(args.stream, stack)
        writers = []
        for key, cls in (("jsonl", JsonlWriter), ("geojson", GeoJsonWriter), ("csv", CsvWriter)):
            if paths[key] is not None:
                writers.append(cls(_open_out(Path(paths[key]), stack,
                                             **({"newline": ""} if key == "csv" else {}))))
        report_file = _open_out(Path(paths["report"]), stack) if paths["report"] else None
        stats = Stats()
        writers.append(stats)
        records = iter_decode(f, manifest=manifest, progress=_progress_bar(args, f, stack))
        while True:
            try:
                decoded = next(records)
            except StopIteration:
                break
            except OSError as e:
                raise _io_error(args.stream, e) from None
            try:
                for writer in writers:
                    writer.write(decoded)
            except OSError as e:
                raise UsageError(f"cannot write the outputs: {e.strerror or e}") from None
        report = records.report
        try:
            for writer in writers:
                writer.close(report)
            if report_file is not None:
                json.dump(report.as_dict(), report_file, indent=1)
                report_file.write("\n")
        except OSError as e:
            raise UsageError(f"cannot write the outputs: {e.strerror or e}") from None
    summary = report.summary()
    summary.update(frames=stats.by_kind.get("frame", 0), detections=stats.detections)
    if report.manifest_error:
        summary["manifest_error"] = report.manifest_error
    print(json.dumps(summary))
    return 0


def _frame_records(records, frame_id):
    for decoded in records:
        r = decoded.record
        if r.kind == "frame" and (frame_id is None or r.frame_id == frame_id):
            yield decoded


def _render(args) -> int:
    from edge.ground.render import render_frame
    from edge.sources import FrameError

    out = Path(args.out)
    to_dir = out.is_dir() or args.out.endswith(("/", os.sep))
    if to_dir:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out {args.out}: cannot create the directory: {e.strerror or e}") from None
    rendered = []
    with ExitStack() as stack:
        f = _open_binary(args.input, stack)
        records = _Records(f, _manifest(args))
        try:
            for decoded in _frame_records(records, args.frame_id):
                r = decoded.record
                png = out / f"frame_{r.frame_id}_seq_{r.seq}.png" if to_dir else out
                try:
                    scale = render_frame(decoded, png, frame=args.frame, max_side=args.max_side,
                                         bands=args.bands)
                except FrameError as e:
                    raise UsageError(f"--frame: {e}") from None
                except ValueError as e:
                    raise UsageError(str(e)) from None
                except OSError as e:
                    raise UsageError(f"cannot write {png}: {e.strerror or e}") from None
                rendered.append({"png": str(png), "frame_id": r.frame_id, "seq": r.seq,
                                 "detections": len(r.scores), "scale": scale})
                if not to_dir or args.frame is not None:
                    break  # one frame record: the first that matches
        except OSError as e:
            raise _io_error(args.input, e) from None
    if not rendered:
        which = "" if args.frame_id is None else f" with frame id {args.frame_id}"
        raise UsageError(f"no frame record{which} in {args.input}")
    print(json.dumps({"rendered": rendered}))
    return 0


def _stats(args) -> int:
    from edge.ground.outputs import format_stats, stats_summary

    with ExitStack() as stack:
        f = _open_binary(args.input, stack)
        records = _Records(f, _manifest(args))
        try:
            stats = stats_summary(records)
        except OSError as e:
            raise _io_error(args.input, e) from None
    if records.bad_lines:
        stats["jsonl_bad_lines"] = records.bad_lines
    print(json.dumps(stats) if args.json else format_stats(stats))
    return 0


# ---- arguments -----------------------------------------------------------------------------------

def _bands(text: str) -> list[int]:
    try:
        bands = [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bands must be comma-separated band indices, got {text!r}") from None
    if len(bands) not in (1, 3) or min(bands) < 0:
        raise argparse.ArgumentTypeError(f"bands: give 1 or 3 indices >= 0 (R,G,B), got {text!r}")
    return bands


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _uint(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Decode and inspect the orbit-edge downlink.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("decode", help="packet stream -> JSON Lines, GeoJSON, CSV, report")
    p.add_argument("stream", metavar="STREAM", help="raw packet stream file, or - for stdin")
    p.add_argument("--out", metavar="DIR",
                   help="write " + ", ".join(OUT_FILES.values()) + " into DIR")
    p.add_argument("--jsonl", metavar="F", help="records as JSON Lines (overrides DIR/records.jsonl)")
    p.add_argument("--geojson", metavar="F", help="detections as GeoJSON")
    p.add_argument("--csv", metavar="F", help="detections as CSV")
    p.add_argument("--report", metavar="F", help="the full decode report as JSON")
    p.add_argument("--manifest", metavar="M", help="model manifest for class names (default: models/manifest.json)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=_decode)

    p = sub.add_parser("render", help="draw a frame record's boxes as a PNG")
    p.add_argument("input", metavar="RECORDS_OR_STREAM", help="records.jsonl of decode, or a packet stream")
    p.add_argument("--out", required=True, metavar="PNG",
                   help="PNG file; an existing directory (or a path ending in /): one PNG per frame record")
    p.add_argument("--frame", metavar="FILE", help="the frame image (.raw + sidecar, .npy, .png, .tif)")
    p.add_argument("--frame-id", type=_uint, metavar="N", help="the frame record to draw (default: the first)")
    p.add_argument("--max-side", type=_positive, default=2048, metavar="N", help="thumbnail size (default 2048)")
    p.add_argument("--bands", type=_bands, metavar="R,G,B", help="bands shown as R,G,B (default 2,1,0 / 0,1,2)")
    p.add_argument("--manifest", metavar="M", help="model manifest for class names")
    p.set_defaults(func=_render)

    p = sub.add_parser("stats", help="summary of a stream or of a records.jsonl")
    p.add_argument("input", metavar="STREAM_OR_JSONL")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--manifest", metavar="M", help="model manifest for class names")
    p.set_defaults(func=_stats)

    from edge.ground.uplink import add_uplink_parsers  # ack, command: signed telecommands

    add_uplink_parsers(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, argparse printed why)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.func(args)
    except UsageError as e:
        print(f"{PROG} {args.command}: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edge-ground stats x | head`: the reader left, nothing is wrong
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as e:  # noqa: BLE001  a bug must still not print a traceback at an operator
        if os.environ.get("EDGE_GROUND_TRACEBACK"):
            raise
        print(f"{PROG} {args.command}: internal error ({type(e).__name__}: {_one_line(e)}); "
              "set EDGE_GROUND_TRACEBACK=1 for the traceback", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
