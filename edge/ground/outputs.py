"""Decoded records out to files: JSON Lines, GeoJSON, CSV, and a stats summary.

  JsonlWriter(fp) / GeoJsonWriter(fp) / CsvWriter(fp) / Stats()   .write(decoded) ... .close(report)
  write_jsonl / write_geojson / write_csv(records, fp, report=None); stats_summary(records, report)
  read_jsonl(fp) -> JsonlReader (yields DecodedRecord; .report once read)
  record_to_json(decoded) -> dict; record_from_json(obj) -> DecodedRecord; detections(decoded)
  format_stats(stats) -> str

Every writer takes one DecodedRecord at a time (edge/ground/decode.py), so a stream of any length
goes to every format in one pass without being held in memory. Text files are UTF-8 text opened by
the caller ("w", newline="" for CSV).

JSON Lines: one object per record with all of its fields (an answer record's: question_id, task,
text, text_bytes (set when the text was cut), tokens, stop, timings_ms); a frame's detections are a list of
{class_id, label, score, bbox: [x1, y1, x2, y2] (pixels)} plus, when the frame is georeferenced,
lon / lat of the box centre and `corners`, [lon, lat] of the box corners (x1,y1) (x2,y1) (x2,y2)
(x1,y2). When the writer is closed with the decode report, a last line {"kind": "stream_report",
"report": {...}} follows: the file alone then gives the same stats as the stream (read_jsonl
picks it up; readers that filter on kind skip it).

GeoJSON (RFC 7946): a FeatureCollection, one Feature per detection. Geometry: the box as a Polygon
in [lon, lat] (closed ring, counter-clockwise; a box across the antimeridian is cut there into a
MultiPolygon) when its frame is georeferenced, else null with the pixel box in the properties (frame_id, seq, time, model_id, class_id, label, score, bbox_px).

CSV: one row per detection: seq, frame_id, time_utc, model_id, class_id, label, score, x1, y1,
x2, y2, lon, lat (lon / lat of the box centre, empty when not georeferenced). Answers have no
detections: they are in the JSON Lines and the stats (a grounding answer's detections come in its
frame record, so they are rows like any other).
"""
from __future__ import annotations

import csv
import json
import math
from collections import Counter

import numpy as np

from edge.ground.decode import DecodedRecord, DecodeReport
from edge.ground.records import ErrorEntry, Record, georef_to_lonlat

#: `kind` of the JSON Lines line that carries the decode report.
REPORT_KIND = "stream_report"
CSV_COLUMNS = ("seq", "frame_id", "time_utc", "model_id", "class_id", "label", "score",
               "x1", "y1", "x2", "y2", "lon", "lat")
TILE_KEYS = ("total", "nodata", "cloud", "inferred")
ANTIMERIDIAN = 180.0
_FRAME_FIELDS = ("frame_id", "model_id", "frame_size", "tiles", "georef", "box_scale", "labels")
_HOUSEKEEPING_FIELDS = ("uptime_ms", "boot", "counters", "stage_us", "errors")
_EVENT_FIELDS = ("frame_id", "boot", "code", "text")
_ANSWER_FIELDS = ("frame_id", "question_id", "model_id", "task", "text", "text_bytes", "tokens", "stop",
                  "timings_ms")
_FIELDS = {"frame": _FRAME_FIELDS, "housekeeping": _HOUSEKEEPING_FIELDS, "event": _EVENT_FIELDS,
           "answer": _ANSWER_FIELDS}


def _num(value: float):
    """A box coordinate as JSON: an int when whole (always, for decoded boxes)."""
    value = float(value)
    return int(value) if value.is_integer() else value


# ---- detections ------------------------------------------------------------------------------------

def box_lonlat(record: Record) -> tuple[np.ndarray, np.ndarray] | None:
    """(centre (N, 2), corners (N, 4, 2)) as [lon, lat] of a georeferenced frame record's boxes
    (corners in the order (x1,y1) (x2,y1) (x2,y2) (x1,y2)); None without georef. A detection whose
    position is not finite (an absurd geotransform) gets NaN rows: callers write no position."""
    if record.georef is None or not len(record.scores):
        return None
    b = record.boxes
    cols = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0], (b[:, 0] + b[:, 2]) / 2], axis=1)
    rows = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3], (b[:, 1] + b[:, 3]) / 2], axis=1)
    with np.errstate(all="ignore"):
        lon, lat = georef_to_lonlat(record.georef, cols, rows, frame_size=record.frame_size)
    points = np.stack([lon, lat], axis=-1)  # (N, 5, 2)
    bad = ~np.isfinite(points).all(axis=(1, 2))
    points[bad] = np.nan
    return points[:, 4], points[:, :4]


def detections(decoded: DecodedRecord) -> list[dict]:
    """The detections of a frame record as plain dicts ([] for other kinds)."""
    record = decoded.record
    if record.kind != "frame":
        return []
    where = box_lonlat(record)
    out = []
    for i, (box, score, class_id) in enumerate(zip(record.boxes.tolist(), record.scores.tolist(),
                                                   record.class_ids.tolist())):
        det = {"class_id": class_id, "label": decoded.labels[i], "score": score,
               "bbox": [_num(v) for v in box]}
        if where is not None and not math.isnan(where[0][i, 0]):
            det["lon"], det["lat"] = where[0][i].tolist()
            det["corners"] = where[1][i].tolist()
        out.append(det)
    return out


def _area2(points: list) -> float:
    """Twice the signed area of a polygon (positive: counter-clockwise)."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))


def _ring(points: list) -> list:
    """A closed, counter-clockwise linear ring (RFC 7946 right-hand rule) of [lon, lat] points."""
    ring = points if _area2(points) >= 0 else points[::-1]
    return ring + ring[:1]


def _half(points: list, east: bool) -> list:
    """The part of a polygon (longitudes unwrapped past 180) west (east=False: east) of lon 180:
    Sutherland-Hodgman against one meridian."""
    inside = (lambda p: p[0] >= ANTIMERIDIAN) if east else (lambda p: p[0] <= ANTIMERIDIAN)
    out = []
    for p, q in zip(points, points[1:] + points[:1]):
        if inside(p):
            out.append(p)
        if inside(p) != inside(q) and q[0] != p[0]:
            t = (ANTIMERIDIAN - p[0]) / (q[0] - p[0])
            out.append([ANTIMERIDIAN, p[1] + t * (q[1] - p[1])])
    return out


def box_geometry(corners: list) -> dict:
    """GeoJSON geometry of a box's 4 [lon, lat] corners: a Polygon, or, for a box across the
    antimeridian, a MultiPolygon of its parts cut at lon +-180 (RFC 7946 section 3.1.9)."""
    lons = [lon for lon, _ in corners]
    if max(lons) - min(lons) <= 180.0:
        return {"type": "Polygon", "coordinates": [_ring(corners)]}
    unwrapped = [[lon + 360.0 if lon < 0 else lon, lat] for lon, lat in corners]
    west_of = _half(unwrapped, east=False)
    east_of = [[lon - 360.0, lat] for lon, lat in _half(unwrapped, east=True)]
    parts = [[_ring(part)] for part in (west_of, east_of) if len(part) >= 3 and _area2(part) != 0]
    if len(parts) == 1:
        return {"type": "Polygon", "coordinates": parts[0]}
    return {"type": "MultiPolygon", "coordinates": parts}


def features(decoded: DecodedRecord) -> list[dict]:
    """The GeoJSON Features of a frame record's detections ([] for other kinds)."""
    record = decoded.record
    out = []
    for det in detections(decoded):
        geometry = box_geometry(det["corners"]) if "corners" in det else None
        out.append({"type": "Feature", "geometry": geometry,
                    "properties": {"frame_id": record.frame_id, "seq": record.seq,
                                   "time": record.time_utc, "model_id": record.model_id,
                                   "class_id": det["class_id"], "label": det["label"],
                                   "score": det["score"], "bbox_px": det["bbox"]}})
    return out


def csv_rows(decoded: DecodedRecord) -> list[list]:
    """The CSV rows (CSV_COLUMNS) of a frame record's detections ([] for other kinds)."""
    r = decoded.record
    return [[r.seq, r.frame_id, r.time_utc, r.model_id, d["class_id"], d["label"], d["score"],
             *d["bbox"], d.get("lon", ""), d.get("lat", "")] for d in detections(decoded)]


# ---- records <-> JSON ------------------------------------------------------------------------------

def record_to_json(decoded: DecodedRecord) -> dict:
    """One record as a JSON-native dict: the common fields, its kind's fields, detections."""
    r = decoded.record
    obj = {"kind": r.kind, "seq": r.seq, "time_ms": r.time_ms, "time_utc": r.time_utc}
    for name in _FIELDS.get(r.kind, ()):
        value = getattr(r, name)
        if name == "frame_size":
            value = list(value)
        elif name == "stage_us":
            value = {k: list(v) for k, v in value.items()}
        elif name == "errors":
            value = [e._asdict() for e in value]
        obj[name] = value
    if r.kind == "frame":
        obj["model"] = decoded.model
        obj["detections"] = detections(decoded)
    obj["stream_offset"] = decoded.offset
    return obj


def record_from_json(obj) -> DecodedRecord:
    """The DecodedRecord of a record_to_json object. Raises ValueError naming what is wrong."""
    try:
        return _record_from_json(obj)
    except ValueError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, OverflowError) as e:
        raise ValueError(f"not a record object ({type(e).__name__}: {e})") from None


def _record_from_json(obj) -> DecodedRecord:
    if not isinstance(obj, dict) or obj.get("kind") not in _FIELDS:
        raise ValueError(f"not a record object (kind {obj.get('kind') if isinstance(obj, dict) else None!r})")
    kind = obj["kind"]
    fields = {"kind": kind, "seq": int(obj["seq"]), "time_ms": int(obj["time_ms"]),
              "time_utc": str(obj["time_utc"])}
    for name in _FIELDS[kind]:
        fields[name] = obj.get(name)
    labels, model = (), None
    if kind == "frame":
        dets = obj["detections"]
        h, w = obj["frame_size"]
        fields["frame_size"] = (int(h), int(w))
        if min(fields["frame_size"]) < 1:
            raise ValueError(f"frame_size: must be positive, got {obj['frame_size']}")
        fields["tiles"] = {k: int(obj["tiles"][k]) for k in TILE_KEYS}
        if fields["georef"] is not None:  # the writers will map boxes with it: check it now
            georef_to_lonlat(fields["georef"], 0.0, 0.0, frame_size=fields["frame_size"])
        if fields["labels"] is not None:
            fields["labels"] = [str(v) for v in fields["labels"]]
        if fields["model_id"] is not None:
            fields["model_id"] = str(fields["model_id"])
        fields["boxes"] = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(len(dets), 4)
        fields["scores"] = np.array([d["score"] for d in dets], dtype=np.float64).reshape(len(dets))
        fields["class_ids"] = np.array([d["class_id"] for d in dets], dtype=np.int64).reshape(len(dets))
        labels = tuple(str(d["label"]) for d in dets)
        model = obj.get("model")
    elif kind == "housekeeping":
        fields["counters"] = {str(k): int(v) for k, v in obj["counters"].items()}
        fields["stage_us"] = {k: tuple(v) for k, v in obj["stage_us"].items()}
        fields["errors"] = [ErrorEntry(e["code"], e["frame_id"], e["text"]) for e in obj["errors"]]
    elif kind == "answer":
        for name in ("task", "stop", "text", "model_id"):
            fields[name] = str(fields[name])
        fields["timings_ms"] = {str(k): int(v) for k, v in obj["timings_ms"].items()}
        for name in ("question_id", "tokens", "text_bytes"):
            if fields[name] is not None:
                fields[name] = int(fields[name])
    else:
        fields["code"] = str(fields["code"])
    for name in ("frame_id", "boot", "uptime_ms", "box_scale"):
        if fields.get(name) is not None:
            fields[name] = int(fields[name])
    return DecodedRecord(Record(**fields), labels, model, obj.get("stream_offset"))


# ---- writers -------------------------------------------------------------------------------------

def _report_dict(report) -> dict | None:
    return report.as_dict() if isinstance(report, DecodeReport) else report


class JsonlWriter:
    """JSON Lines: one record per line; close(report) appends the report line."""

    def __init__(self, fp):
        self.fp = fp
        self.records = 0

    def write(self, decoded: DecodedRecord) -> None:
        self.fp.write(json.dumps(record_to_json(decoded), ensure_ascii=False, allow_nan=False) + "\n")
        self.records += 1

    def close(self, report=None) -> None:
        report = _report_dict(report)
        if report is not None:
            self.fp.write(json.dumps({"kind": REPORT_KIND, "report": report}, ensure_ascii=False) + "\n")


class GeoJsonWriter:
    """A GeoJSON FeatureCollection written feature by feature (valid once closed)."""

    def __init__(self, fp):
        self.fp = fp
        self.features = 0
        fp.write('{"type": "FeatureCollection", "features": [')

    def write(self, decoded: DecodedRecord) -> None:
        for feature in features(decoded):
            self.fp.write(("\n" if not self.features else ",\n")
                          + json.dumps(feature, ensure_ascii=False, allow_nan=False))
            self.features += 1

    def close(self, report=None) -> None:
        self.fp.write("\n]}\n")


class CsvWriter:
    """CSV, one row per detection, CSV_COLUMNS first."""

    def __init__(self, fp):
        self._writer = csv.writer(fp, lineterminator="\n")
        self._writer.writerow(CSV_COLUMNS)
        self.rows = 0

    def write(self, decoded: DecodedRecord) -> None:
        rows = csv_rows(decoded)
        self._writer.writerows(rows)
        self.rows += len(rows)

    def close(self, report=None) -> None:
        pass


class Stats:
    """The stats summary, accumulated record by record; summary(report) gives the dict."""

    def __init__(self):
        self.by_kind: Counter = Counter()
        self.detections = 0
        self.by_label: Counter = Counter()
        self.tiles = dict.fromkeys(TILE_KEYS, 0)
        self.events: Counter = Counter()
        self.last_housekeeping: Record | None = None
        self.answers_by_task: Counter = Counter()
        self.answers_by_stop: Counter = Counter()
        self.answer_tokens = 0
        self.answers_truncated = 0
        self.answer_ms = dict.fromkeys(("vision", "prefill", "decode"), 0)

    def write(self, decoded: DecodedRecord) -> None:
        r = decoded.record
        self.by_kind[r.kind] += 1
        if r.kind == "frame":
            self.detections += len(r.scores)
            self.by_label.update(decoded.labels)
            for key in TILE_KEYS:
                self.tiles[key] += r.tiles[key]
        elif r.kind == "event":
            self.events[r.code] += 1
        elif r.kind == "answer":
            self.answers_by_task[r.task] += 1
            self.answers_by_stop[r.stop] += 1
            self.answer_tokens += r.tokens
            self.answers_truncated += r.text_truncated
            for stage, ms in r.timings_ms.items():
                self.answer_ms[stage] = self.answer_ms.get(stage, 0) + ms
        elif r.kind == "housekeeping":
            # the newest by seq: re-sent records may arrive after newer ones
            if self.last_housekeeping is None or r.seq > self.last_housekeeping.seq:
                self.last_housekeeping = r

    def close(self, report=None) -> None:
        pass

    def summary(self, report=None) -> dict:
        """The stats dict; the stream figures (bytes, packets, seq checks) are None without a report
        (a DecodeReport or its as_dict())."""
        report = _report_dict(report)
        hk = self.last_housekeeping
        out = {
            "records": dict(sorted(self.by_kind.items())),
            "frames": self.by_kind.get("frame", 0),
            "detections": self.detections,
            "detections_by_label": dict(sorted(self.by_label.items())),
            "tiles": dict(self.tiles),
            "events_by_code": dict(sorted(self.events.items())),
            "answers": {"count": self.by_kind.get("answer", 0),
                        "by_task": dict(sorted(self.answers_by_task.items())),
                        "by_stop": dict(sorted(self.answers_by_stop.items())),
                        "tokens": self.answer_tokens, "truncated": self.answers_truncated,
                        "ms_total": dict(self.answer_ms)},
            "last_housekeeping": None if hk is None else {
                "seq": hk.seq, "time_utc": hk.time_utc, "boot": hk.boot, "uptime_ms": hk.uptime_ms,
                "counters": dict(hk.counters)},
            "stream_bytes": None, "packets": None, "integrity": None, "bytes_per_detection": None,
        }
        if report is not None:
            p = report["packets"]
            out["stream_bytes"] = report["stream_bytes"]
            out["packets"] = {k: p[k] for k in ("packets_ok", "crc_failures", "garbage_bytes",
                                                "truncated", "duplicates", "incomplete_records",
                                                "gap_count", "missing_packets", "unknown_apids")}
            out["integrity"] = {k: report[k] for k in ("decode_errors", "duplicate_records",
                                                       "duplicate_conflicts", "missing_seqs",
                                                       "seq_gap_count", "frame_id_repeat_count",
                                                       "clean")}
            if self.detections:
                out["bytes_per_detection"] = report["stream_bytes"] / self.detections
        return out


def _write_all(writer, records, report):
    for decoded in records:
        writer.write(decoded)
    writer.close(report)
    return writer


def write_jsonl(records, fp, report=None) -> int:
    """Records to JSON Lines (then the report line, when given); returns the record count."""
    return _write_all(JsonlWriter(fp), records, report).records


def write_geojson(records, fp) -> int:
    """Detections to a GeoJSON FeatureCollection; returns the feature count."""
    return _write_all(GeoJsonWriter(fp), records, None).features


def write_csv(records, fp) -> int:
    """Detections to CSV; returns the row count."""
    return _write_all(CsvWriter(fp), records, None).rows


def stats_summary(records, report=None) -> dict:
    """The stats dict of records (and of the stream, with its report). When `records` is a
    DecodeIterator or a JsonlReader the report may be left out: theirs is taken after the pass."""
    stats = _write_all(Stats(), records, None)
    if report is None:
        report = getattr(records, "report", None)
    return stats.summary(report)


# ---- reading JSON Lines back -------------------------------------------------------------------------

class JsonlReader:
    """The records of a JSON Lines file written by JsonlWriter, one by one. Lines that are not
    records are counted in .bad_lines (the first few messages in .problems), never raised;
    .report is the report line's dict (None if there was none) once the pass has ended."""

    MAX_PROBLEMS = 32

    def __init__(self, fp):
        self._fp = fp
        self.report: dict | None = None
        self.bad_lines = 0
        self.problems: list[str] = []

    def __iter__(self):
        for number, line in enumerate(self._fp, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if isinstance(obj, dict) and obj.get("kind") == REPORT_KIND:
                    if not isinstance(obj.get("report"), dict):
                        raise ValueError("report line without a report object")
                    self.report = obj["report"]
                    continue
                decoded = record_from_json(obj)
            except (ValueError, RecursionError) as e:
                self.bad_lines += 1
                if len(self.problems) < self.MAX_PROBLEMS:
                    self.problems.append(f"line {number}: {e}")
                continue
            yield decoded


def read_jsonl(fp) -> JsonlReader:
    """JsonlReader over a text file object (or any iterable of lines)."""
    return JsonlReader(fp)


# ---- human-readable stats -------------------------------------------------------------------------

def format_stats(stats: dict) -> str:
    """The stats dict as an aligned two-column table."""
    rows: list[tuple[str, str]] = []

    def add(name, value, indent=0):
        if isinstance(value, dict):
            rows.append(("  " * indent + name, "" if value else "-"))
            for k, v in value.items():
                add(str(k), v, indent + 1)
        else:
            if isinstance(value, float):
                value = f"{value:.2f}"
            rows.append(("  " * indent + name, "-" if value is None else str(value)))

    for key, value in stats.items():
        add(key, value)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}".rstrip() for name, value in rows)


__all__ = ["CSV_COLUMNS", "CsvWriter", "GeoJsonWriter", "JsonlReader", "JsonlWriter", "REPORT_KIND",
           "Stats", "box_geometry", "box_lonlat", "csv_rows", "detections", "features", "format_stats", "read_jsonl",
           "record_from_json", "record_to_json", "stats_summary", "write_csv", "write_geojson",
           "write_jsonl"]
