"""Downlink records, ground side: CBOR bytes -> Record (plain values and numpy arrays).

  decode_record(data: bytes) -> Record
  georef_to_lonlat(georef, cols, rows, *, frame_size=None) -> (lon, lat)

decode_record checks a record against docs/downlink.cddl (the normative spec) and against the rules
the CDDL cannot say (typed-array lengths, tile sum, class ids < labels, p50 <= max, georef ranges,
an answer's text-bytes > its text),
and turns ids into names with the tables of edge/downlink/record.py. Anything else is a RecordError
(a ValueError) whose message names the problem: "boxes: 40 bytes for 4 scores (want 32)".

Bytes off the radio can be anything, so decode_record never raises anything but RecordError, and
bounds its work before cbor2 sees the input:
  - input over MAX_RECORD_BYTES is refused unread (the flight encoder never makes such a record);
  - nesting deeper than MAX_DEPTH is refused by cbor2 (a record nests 4 deep at most), so no
    RecursionError;
  - the CBOR tags cbor2 would turn into Python objects (bignums, decimals, fractions, regexps,
    datetimes, shared / string references, sets, ...) are kept as a foreign-tag marker and
    rejected, so no arithmetic on attacker-sized numbers and no reference cycles;
  - whatever cbor2 raises on malformed CBOR (CBORDecodeError, ValueError, OverflowError,
    MemoryError, ...) becomes a RecordError.

Unknown ids decode as names that keep the id: counter_<id>, stage_<id>, event_<id>, task_<id>,
stop_<id>; the flight tables may grow before the ground's do.
"""
from __future__ import annotations

import datetime as _dt
import io
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import cbor2
import numpy as np

from edge.downlink import record as spec

#: Deepest nesting a valid record has is 4 (record > georef > corners > corner); a little slack.
MAX_DEPTH = 8
MAX_RECORD_BYTES = spec.MAX_RECORD_BYTES

#: Tags cbor2 decodes into Python objects itself (cbor2 6.3). Each is replaced by _ForeignTag so
#: the decoder never builds them; no record uses any of them.
_CBOR2_SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260,
                        261, 1004, 43000, 55799)

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


class RecordError(ValueError):
    """A record is malformed: not CBOR, or not a record of docs/downlink.cddl."""


class ErrorEntry(NamedTuple):
    """One entry of a housekeeping record's error list (key 15)."""
    code: str            # event code name (event_<id> when unknown)
    frame_id: int | None
    text: str


@dataclass(frozen=True, eq=False)
class Record:
    """One decoded record. Fields of other kinds are None (detections: empty arrays)."""

    kind: str                      # "frame", "housekeeping", "event", "answer"
    seq: int
    time_ms: int                   # ms since 1970-01-01T00:00:00Z: capture (frame) or emission time
    time_utc: str                  # the same, ISO 8601: "2024-06-01T12:00:00.123Z"
    frame_id: int | None = None    # frame; event, answer (when about a frame)
    # frame
    model_id: str | None = None    # 8 hex digits: the first 4 bytes of the model's sha256 (answer too)
    frame_size: tuple[int, int] | None = None  # (height, width) pixels
    tiles: dict[str, int] | None = None        # total, nodata, cloud, inferred
    georef: dict | None = None     # {"geotransform": [6 floats]} or {"corners": [[lat, lon]] * 4}
    box_scale: int | None = None   # pixels per box unit (1 unless the frame exceeds 65535 px)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))    # (N, 4) float64 pixels
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))        # (N,) float64 in 0..1
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) int64
    labels: list[str] | None = None  # class names sent with the record (else the manifest's)
    # housekeeping
    uptime_ms: int | None = None
    boot: int | None = None        # housekeeping, event
    counters: dict[str, int] | None = None
    stage_us: dict[str, tuple[int, int]] | None = None  # stage -> (p50, max) microseconds
    errors: list[ErrorEntry] | None = None
    # event
    code: str | None = None        # event code name (event_<id> when unknown)
    text: str | None = None        # event detail; answer text
    # answer (VLM)
    question_id: int | None = None   # None: the mission's standing question
    task: str | None = None          # "vqa", "caption", "grounding" (task_<id> when unknown)
    tokens: int | None = None        # tokens generated
    stop: str | None = None          # "eos", "max_tokens", "deadline" (stop_<id> when unknown)
    timings_ms: dict[str, int] | None = None   # vision, prefill, decode
    text_bytes: int | None = None    # the full answer's UTF-8 bytes when the text was cut, else None

    @property
    def text_truncated(self) -> bool:
        """An answer whose text was cut to fit the record (text_bytes says how long it was)."""
        return self.text_bytes is not None

    @property
    def n_detections(self) -> int:
        """0 for records other than frames. (Not __len__: an event record would be falsy.)"""
        return len(self.scores)


# ---- CBOR, bounded ------------------------------------------------------------------------------

class _ForeignTag:
    """Stands for a CBOR tag that has no place in a record (see _CBOR2_SEMANTIC_TAGS)."""
    __slots__ = ("tag",)

    def __init__(self, tag: int):
        self.tag = tag


_SEMANTIC_OVERRIDES = {tag: (lambda value, immutable, tag=tag: _ForeignTag(tag))
                       for tag in _CBOR2_SEMANTIC_TAGS}


def _load(data) -> object:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RecordError(f"record: must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise RecordError("record: empty")
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"record: {len(data)} bytes is over the {MAX_RECORD_BYTES}-byte limit")
    try:
        decoder = cbor2.CBORDecoder(io.BytesIO(data), semantic_decoders=_SEMANTIC_OVERRIDES,
                                    max_depth=MAX_DEPTH, allow_duplicate_keys=False)
        obj = decoder.decode()
    except Exception as exc:  # noqa: BLE001  any failure of cbor2 on bad input is "not CBOR"
        raise RecordError(f"record: not a valid CBOR item ({type(exc).__name__}: {exc})") from None
    try:
        decoder.read(1)  # the decoder may buffer (read_size), so ask it, not the file, what is left
    except Exception:  # noqa: BLE001  end of input: the item is the whole record
        return obj
    raise RecordError("record: trailing bytes after the CBOR item")


# ---- typed readers: each failure names the field ----------------------------------------------

def _type_name(value) -> str:
    if isinstance(value, _ForeignTag):
        return f"tag {value.tag}"
    if isinstance(value, cbor2.CBORTag):
        return f"tag {value.tag}"
    return {bool: "bool", int: "integer", float: "float", str: "text", bytes: "bytes",
            list: "array", dict: "map", type(None): "null"}.get(type(value), type(value).__name__)


def _uint(value, name: str, lo: int = 0) -> int:
    if type(value) is not int or value < 0:
        raise RecordError(f"{name}: must be an unsigned integer, got {_type_name(value)} {_short(value)}")
    if value < lo:
        raise RecordError(f"{name}: must be >= {lo}, got {value}")
    return value


def _short(value) -> str:
    """A short repr of a scalar for a message; containers (maybe huge) are not printed."""
    if type(value) in (str, bytes):
        value = value[:40]
    elif type(value) not in (int, float, bool, type(None)):
        return ""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _array(value, name: str, length: int | None = None) -> list:
    if type(value) is not list:
        raise RecordError(f"{name}: must be an array, got {_type_name(value)}")
    if length is not None and len(value) != length:
        raise RecordError(f"{name}: must have {length} entries, got {len(value)}")
    return value


def _map(value, name: str) -> dict:
    if type(value) is not dict:
        raise RecordError(f"{name}: must be a map, got {_type_name(value)}")
    return value


def _float(value, name: str) -> float:
    if type(value) is not float:
        raise RecordError(f"{name}: must be a float, got {_type_name(value)} {_short(value)}")
    if not math.isfinite(value):
        raise RecordError(f"{name}: must be finite, got {value}")
    return value


def _text(value, name: str, max_bytes: int | None = None) -> str:
    if type(value) is not str:
        raise RecordError(f"{name}: must be text, got {_type_name(value)}")
    if max_bytes is not None and len(value.encode("utf-8")) > max_bytes:
        raise RecordError(f"{name}: {len(value.encode('utf-8'))} UTF-8 bytes, at most {max_bytes}")
    return value


def _typed_array(value, tag: int, name: str) -> bytes:
    what = "uint8" if tag == spec.TAG_UINT8 else "uint16 little-endian"
    if not isinstance(value, cbor2.CBORTag):
        raise RecordError(f"{name}: must be a tag {tag} ({what}) typed array, got {_type_name(value)}")
    if value.tag != tag:
        raise RecordError(f"{name}: must be tag {tag} ({what}), got tag {value.tag}")
    if type(value.value) is not bytes:
        raise RecordError(f"{name}: tag {tag} must hold a byte string, got {_type_name(value.value)}")
    return value.value


def _id_name(table: dict, prefix: str, ident: int) -> str:
    return table.get(ident, f"{prefix}_{ident}")


def _time_utc(ms: int) -> str:
    try:
        when = _EPOCH + _dt.timedelta(milliseconds=ms)
    except OverflowError:
        raise RecordError(f"time: {ms} ms is beyond the year 9999") from None
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


# ---- per kind -------------------------------------------------------------------------------------

def _check_keys(rec: dict, kind: int) -> None:
    kind_name = spec.KIND_NAMES[kind]
    allowed = spec.REQUIRED_KEYS[kind] | spec.OPTIONAL_KEYS[kind]
    for key in rec:
        # type first: 1.0 and True hash and compare equal to 1, but are not key 1
        if type(key) is not int or key not in allowed:
            name = spec.KEY_NAMES.get(key) if type(key) is int else None
            what = f"key {key} ({name})" if name else f"key {_short(key) or _type_name(key)}"
            raise RecordError(f"{kind_name} record: {what} does not belong to this kind")
    missing = sorted(spec.REQUIRED_KEYS[kind] - rec.keys())
    if missing:
        names = ", ".join(f"{k} ({spec.KEY_NAMES[k]})" for k in missing)
        raise RecordError(f"{kind_name} record: missing key {names}")


def _georef(value) -> dict:
    value = _map(value, "georef")
    if len(value) != 1:
        raise RecordError(f"georef: must hold exactly one form (key 0 or 1), got {len(value)} keys")
    (form, body), = value.items()
    if type(form) is int and form == spec.GEOREF_GEOTRANSFORM:
        body = _array(body, "georef.geotransform", spec.GEOTRANSFORM_LEN)
        return {"geotransform": [_float(v, f"georef.geotransform[{i}]") for i, v in enumerate(body)]}
    if type(form) is int and form == spec.GEOREF_CORNERS:
        body = _array(body, "georef.corners", spec.CORNERS_LEN)
        corners = []
        for i, corner in enumerate(body):
            lat, lon = _array(corner, f"georef.corners[{i}]", 2)
            lat = _float(lat, f"georef.corners[{i}].lat")
            lon = _float(lon, f"georef.corners[{i}].lon")
            if not -90.0 <= lat <= 90.0:
                raise RecordError(f"georef.corners[{i}].lat: must be in -90..90, got {lat}")
            if not -180.0 <= lon <= 180.0:
                raise RecordError(f"georef.corners[{i}].lon: must be in -180..180, got {lon}")
            corners.append([lat, lon])
        return {"corners": corners}
    raise RecordError(f"georef: unknown form {_short(form) or _type_name(form)} "
                      "(0 geotransform, 1 corners)")


def _frame(rec: dict, common: dict) -> Record:
    model_id = rec[spec.KEY_MODEL_ID]
    if type(model_id) is not bytes or len(model_id) != spec.MODEL_ID_BYTES:
        raise RecordError(f"model-id: must be {spec.MODEL_ID_BYTES} bytes, got {_type_name(model_id)} "
                          f"{_short(model_id)}")
    h, w = _array(rec[spec.KEY_FRAME_SIZE], "frame-size", 2)
    size = (_uint(h, "frame-size.height", lo=1), _uint(w, "frame-size.width", lo=1))
    tiles = [_uint(v, f"tiles.{n}") for v, n in
             zip(_array(rec[spec.KEY_TILES], "tiles", 4), ("total", "nodata", "cloud", "inferred"))]
    if tiles[0] != tiles[1] + tiles[2] + tiles[3]:
        raise RecordError(f"tiles: total {tiles[0]} != nodata {tiles[1]} + cloud {tiles[2]} + "
                          f"inferred {tiles[3]}")
    georef = _georef(rec[spec.KEY_GEOREF]) if spec.KEY_GEOREF in rec else None
    labels = None
    if spec.KEY_LABELS in rec:
        labels = [_text(v, f"labels[{i}]") for i, v in enumerate(_array(rec[spec.KEY_LABELS], "labels"))]
        if not 1 <= len(labels) <= spec.MAX_LABELS:
            raise RecordError(f"labels: must hold 1..{spec.MAX_LABELS} names, got {len(labels)}")
    scale = 1
    if spec.KEY_BOX_SCALE in rec:
        scale = _uint(rec[spec.KEY_BOX_SCALE], "box-scale", lo=2)

    # The lengths CDDL cannot state: N scores, 4N box values, N class ids.
    score_bytes = _typed_array(rec[spec.KEY_SCORES], spec.TAG_UINT8, "scores")
    box_bytes = _typed_array(rec[spec.KEY_BOXES], spec.TAG_UINT16LE, "boxes")
    n = len(score_bytes)
    if len(box_bytes) != 8 * n:
        raise RecordError(f"boxes: {len(box_bytes)} bytes for {n} scores (want {8 * n}: 4 uint16 each)")
    boxes = np.frombuffer(box_bytes, dtype="<u2").reshape(n, 4).astype(np.float64)
    if scale != 1:
        boxes *= scale
    scores = np.frombuffer(score_bytes, dtype=np.uint8) / float(spec.SCORE_LEVELS)
    if spec.KEY_CLASS_IDS in rec:
        id_bytes = _typed_array(rec[spec.KEY_CLASS_IDS], spec.TAG_UINT8, "class-ids")
        if len(id_bytes) != n:
            raise RecordError(f"class-ids: {len(id_bytes)} ids for {n} scores")
        class_ids = np.frombuffer(id_bytes, dtype=np.uint8).astype(np.int64)
    else:
        class_ids = np.zeros(n, dtype=np.int64)
    if labels is not None and n and int(class_ids.max()) >= len(labels):
        i = int(np.flatnonzero(class_ids >= len(labels))[0])
        raise RecordError(f"class-ids: class_ids[{i}] is {int(class_ids[i])}, but labels has "
                          f"{len(labels)} names")
    return Record(**common, frame_id=_uint(rec[spec.KEY_FRAME_ID], "frame-id"),
                  model_id=model_id.hex(), frame_size=size,
                  tiles=dict(zip(("total", "nodata", "cloud", "inferred"), tiles)), georef=georef,
                  box_scale=scale, boxes=boxes, scores=scores, class_ids=class_ids, labels=labels)


def _housekeeping(rec: dict, common: dict) -> Record:
    counters = {}
    for key, value in _map(rec[spec.KEY_COUNTERS], "counters").items():
        ident = _uint(key, "counters: id")
        name = _id_name(spec.COUNTER_NAMES, "counter", ident)
        counters[name] = _uint(value, f"counters.{name}")
    stage_us = {}
    for key, value in _map(rec[spec.KEY_STAGE_US], "stage-us").items():
        ident = _uint(key, "stage-us: id")
        name = _id_name(spec.STAGE_NAMES, "stage", ident)
        p50, top = _array(value, f"stage-us.{name}", 2)
        p50, top = _uint(p50, f"stage-us.{name}.p50"), _uint(top, f"stage-us.{name}.max")
        if p50 > top:
            raise RecordError(f"stage-us.{name}: p50 {p50} > max {top}")
        stage_us[name] = (p50, top)
    errors = []
    if spec.KEY_ERRORS in rec:
        entries = _array(rec[spec.KEY_ERRORS], "errors")
        if len(entries) > spec.MAX_ERRORS:
            raise RecordError(f"errors: at most {spec.MAX_ERRORS} entries, got {len(entries)}")
        for i, entry in enumerate(entries):
            code, frame_id, text = _array(entry, f"errors[{i}]", 3)
            errors.append(ErrorEntry(
                _id_name(spec.EVENT_NAMES, "event", _uint(code, f"errors[{i}].code")),
                None if frame_id is None else _uint(frame_id, f"errors[{i}].frame-id"),
                _text(text, f"errors[{i}].text", spec.MAX_TEXT_BYTES)))
    return Record(**common, uptime_ms=_uint(rec[spec.KEY_UPTIME], "uptime"),
                  boot=_uint(rec[spec.KEY_BOOT], "boot"), counters=counters, stage_us=stage_us,
                  errors=errors)


def _event(rec: dict, common: dict) -> Record:
    frame_id = _uint(rec[spec.KEY_FRAME_ID], "frame-id") if spec.KEY_FRAME_ID in rec else None
    return Record(**common, frame_id=frame_id, boot=_uint(rec[spec.KEY_BOOT], "boot"),
                  code=_id_name(spec.EVENT_NAMES, "event", _uint(rec[spec.KEY_CODE], "code")),
                  text=_text(rec[spec.KEY_TEXT], "text", spec.MAX_TEXT_BYTES))


def _answer(rec: dict, common: dict) -> Record:
    model_id = rec[spec.KEY_MODEL_ID]
    if type(model_id) is not bytes or len(model_id) != spec.MODEL_ID_BYTES:
        raise RecordError(f"model-id: must be {spec.MODEL_ID_BYTES} bytes, got {_type_name(model_id)} "
                          f"{_short(model_id)}")
    text = _text(rec[spec.KEY_TEXT], "text", spec.MAX_ANSWER_BYTES)
    text_bytes = None
    if spec.KEY_TEXT_BYTES in rec:
        text_bytes = _uint(rec[spec.KEY_TEXT_BYTES], "text-bytes")
        if text_bytes <= len(text.encode("utf-8")):
            raise RecordError(f"text-bytes: {text_bytes} is not more than the {len(text.encode('utf-8'))} "
                              "bytes of the text (present only when the answer was cut)")
    timings = _array(rec[spec.KEY_TIMINGS_MS], "timings-ms", len(spec.TIMING_STAGES))
    timings_ms = {stage: _uint(v, f"timings-ms.{stage}") for stage, v in zip(spec.TIMING_STAGES, timings)}
    question_id = (_uint(rec[spec.KEY_QUESTION_ID], "question-id")
                   if spec.KEY_QUESTION_ID in rec else None)
    frame_id = _uint(rec[spec.KEY_FRAME_ID], "frame-id") if spec.KEY_FRAME_ID in rec else None
    return Record(**common, frame_id=frame_id, model_id=model_id.hex(), text=text,
                  question_id=question_id,
                  task=_id_name(spec.TASK_NAMES, "task", _uint(rec[spec.KEY_TASK], "task")),
                  tokens=_uint(rec[spec.KEY_TOKENS], "tokens"),
                  stop=_id_name(spec.STOP_NAMES, "stop", _uint(rec[spec.KEY_STOP], "stop")),
                  timings_ms=timings_ms, text_bytes=text_bytes)


_DECODERS = {spec.KIND_FRAME: _frame, spec.KIND_HOUSEKEEPING: _housekeeping,
             spec.KIND_EVENT: _event, spec.KIND_ANSWER: _answer}


def decode_record(data: bytes) -> Record:
    """Decode and check one record (the bytes of one journal entry / reassembled packet group).
    Raises RecordError, and nothing else, naming the problem."""
    rec = _map(_load(data), "record")
    if spec.KEY_KIND not in rec:
        raise RecordError("record: missing key 0 (kind)")
    kind = _uint(rec[spec.KEY_KIND], "kind")
    if kind not in _DECODERS:
        known = ", ".join(f"{k} {spec.KIND_NAMES[k]}" for k in _DECODERS)
        reason = "is reserved, not defined yet" if kind in spec.KIND_NAMES else "is unknown"
        raise RecordError(f"kind: {kind} {reason} (known: {known})")
    _check_keys(rec, kind)
    time_ms = _uint(rec[spec.KEY_TIME], "time")
    common = {"kind": spec.KIND_NAMES[kind], "seq": _uint(rec[spec.KEY_SEQ], "seq"),
              "time_ms": time_ms, "time_utc": _time_utc(time_ms)}
    return _DECODERS[kind](rec, common)


# ---- georeference -----------------------------------------------------------------------------

def _wrap(lon: np.ndarray, center) -> np.ndarray:
    """lon moved by whole turns into center - 180..center + 180; values already there are untouched
    (bit for bit)."""
    lon = np.asarray(lon, dtype=np.float64)
    return np.where(lon - center > 180.0, lon - 360.0, np.where(lon - center < -180.0, lon + 360.0, lon))


def georef_to_lonlat(georef: dict, cols, rows, *, frame_size=None) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) degrees of pixel positions (cols = x, rows = y; pixel edges, so the frame's
    top-left corner is (0, 0) and its bottom-right (width, height)); arrays broadcast.

    georef as decoded: {"geotransform": gt} applies GDAL's affine map, lon = gt0 + col*gt1 +
    row*gt2, lat = gt3 + col*gt4 + row*gt5. {"corners": [tl, tr, br, bl]} ([lat, lon] each)
    interpolates bilinearly in (col / width, row / height) and needs frame_size = (height,
    width). Corners across the antimeridian interpolate the short way round; the longitudes come
    back in -180..180."""
    cols = np.asarray(cols, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.float64)
    if not isinstance(georef, dict) or len(georef) != 1:
        raise ValueError(f"georef: must be {{'geotransform': [...]}} or {{'corners': [...]}}, got {georef!r}")
    if "geotransform" in georef:
        gt = [float(v) for v in georef["geotransform"]]
        if len(gt) != spec.GEOTRANSFORM_LEN:
            raise ValueError(f"georef.geotransform: must be 6 numbers, got {len(gt)}")
        return gt[0] + cols * gt[1] + rows * gt[2], gt[3] + cols * gt[4] + rows * gt[5]
    if "corners" in georef:
        if frame_size is None:
            raise ValueError("frame_size: (height, width) is needed to interpolate georef corners")
        height, width = frame_size
        if not (height > 0 and width > 0):
            raise ValueError(f"frame_size: must be positive (height, width), got {frame_size!r}")
        corners = np.asarray(georef["corners"], dtype=np.float64)
        if corners.shape != (spec.CORNERS_LEN, 2):
            raise ValueError(f"georef.corners: must be 4 [lat, lon] pairs, got shape {corners.shape}")
        lat, lon = corners[:, 0], corners[:, 1]
        # Unwrap against the top-left corner so a frame over the antimeridian (179 -> -179)
        # is not interpolated across the whole globe.
        lon = _wrap(lon, lon[0])
        u, v = cols / width, rows / height
        weights = ((1 - u) * (1 - v), u * (1 - v), u * v, (1 - u) * v)  # tl, tr, br, bl
        out_lat = sum(wt * lat[i] for i, wt in enumerate(weights))
        out_lon = sum(wt * lon[i] for i, wt in enumerate(weights))
        return _wrap(out_lon, 0.0), out_lat
    raise ValueError(f"georef: form must be 'geotransform' or 'corners', got {list(georef)}")
