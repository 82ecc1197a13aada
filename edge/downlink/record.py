"""Downlink records, flight side: one CBOR map per frame, housekeeping report or event.

The normative spec is docs/downlink.cddl (RFC 8610); docs/downlink.md explains it. This module
holds the tables of that spec (keys, record kinds, counter / stage ids, event codes, journal
priorities) as named constants and name <-> id dicts, shared with the ground decoder
(edge/ground/records.py), and the four encoders:

  encode_frame(*, seq, frame_id, capture_time_ms, model_id, frame_hw, tiles, boxes, scores,
               class_ids=None, georef=None, labels=None) -> bytes
  encode_housekeeping(*, seq, time_ms, uptime_ms, boot, counters, stage_us, errors=()) -> bytes
  encode_event(*, seq, time_ms, boot, code, text, frame_id=None) -> bytes
  encode_answer(*, seq, time_ms, question_id, frame_id=None, model_id, text, tokens, stop,
                timings_ms, task="vqa") -> bytes

Every input is validated before anything is encoded; a ValueError names the field first
("boxes: row 3 has x2 < x1"), so a bad record fails where it is made, never on the ground.

Encoding (what the ground gets back, docs/downlink.md "Records"):
  - scores: clipped to 0..1, then round(score * 255) half to even, one uint8 each (tag 64);
    the ground reads u8 / 255, within 1/510 of the input;
  - boxes: x1 y1 x2 y2 in frame pixels, divided by the box scale, rounded half to even
    (numpy.rint), clipped to 0..65535, packed as little-endian uint16 on every host (tag 69);
    the ground reads value * scale, within 0.5 px * scale for a coordinate inside the frame;
  - box scale: ceil(max(height, width) / 65535), so every coordinate of the frame fits a uint16;
    key 11 is written only when that is >= 2 (frames wider or taller than 65535 pixels);
  - class ids: one uint8 each (tag 64), left out when every detection is class 0;
  - texts (event detail, error entries): at most 160 UTF-8 bytes, cut on a character boundary;
  - answer texts (VLM): at most MAX_ANSWER_BYTES (1024) UTF-8 bytes, cut on a character boundary,
    and then marked: key 25 (text-bytes) holds the answer's full length.
The bytes are deterministic (cbor2 canonical: RFC 8949 core deterministic encoding, sorted keys,
shortest exact float): the same inputs give the same record, so a redo after a restart can be
recognised byte for byte.

Size: a frame record costs a fixed overhead plus 9 bytes per detection of a single-class model
(8 box bytes + 1 score byte), 10 with class ids.
"""
from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping

import cbor2
import numpy as np

# ---- keys (one table for every kind: a key means the same thing everywhere) ------------------

KEY_KIND = 0
KEY_SEQ = 1
KEY_FRAME_ID = 2
KEY_TIME = 3
KEY_MODEL_ID = 4
KEY_FRAME_SIZE = 5
KEY_TILES = 6
KEY_GEOREF = 7
KEY_CLASS_IDS = 8
KEY_SCORES = 9
KEY_BOXES = 10
KEY_BOX_SCALE = 11
KEY_LABELS = 12
KEY_COUNTERS = 13
KEY_STAGE_US = 14
KEY_ERRORS = 15
KEY_CODE = 16
KEY_TEXT = 17
KEY_UPTIME = 18
KEY_BOOT = 19
# answer (VLM) keys
KEY_QUESTION_ID = 20
KEY_TOKENS = 21
KEY_STOP = 22
KEY_TIMINGS_MS = 23
KEY_TASK = 24
KEY_TEXT_BYTES = 25

KEYS = {"kind": KEY_KIND, "seq": KEY_SEQ, "frame-id": KEY_FRAME_ID, "time": KEY_TIME,
        "model-id": KEY_MODEL_ID, "frame-size": KEY_FRAME_SIZE, "tiles": KEY_TILES,
        "georef": KEY_GEOREF, "class-ids": KEY_CLASS_IDS, "scores": KEY_SCORES,
        "boxes": KEY_BOXES, "box-scale": KEY_BOX_SCALE, "labels": KEY_LABELS,
        "counters": KEY_COUNTERS, "stage-us": KEY_STAGE_US, "errors": KEY_ERRORS,
        "code": KEY_CODE, "text": KEY_TEXT, "uptime": KEY_UPTIME, "boot": KEY_BOOT,
        "question-id": KEY_QUESTION_ID, "tokens": KEY_TOKENS, "stop": KEY_STOP,
        "timings-ms": KEY_TIMINGS_MS, "task": KEY_TASK, "text-bytes": KEY_TEXT_BYTES}
KEY_NAMES = {v: k for k, v in KEYS.items()}

# ---- record kinds (key 0) and their journal priorities -----------------------------------------

KIND_FRAME = 1
KIND_HOUSEKEEPING = 2
KIND_EVENT = 3
KIND_ANSWER = 4  # VLM answers (VQA, captions, grounding's raw text)

KINDS = {"frame": KIND_FRAME, "housekeeping": KIND_HOUSEKEEPING, "event": KIND_EVENT,
         "answer": KIND_ANSWER}
KIND_NAMES = {v: k for k, v in KINDS.items()}

#: Keys each kind must have and may have (the CDDL maps are closed: nothing else).
REQUIRED_KEYS = {
    KIND_FRAME: frozenset({KEY_KIND, KEY_SEQ, KEY_FRAME_ID, KEY_TIME, KEY_MODEL_ID,
                           KEY_FRAME_SIZE, KEY_TILES, KEY_SCORES, KEY_BOXES}),
    KIND_HOUSEKEEPING: frozenset({KEY_KIND, KEY_SEQ, KEY_TIME, KEY_UPTIME, KEY_BOOT,
                                  KEY_COUNTERS, KEY_STAGE_US}),
    KIND_EVENT: frozenset({KEY_KIND, KEY_SEQ, KEY_TIME, KEY_BOOT, KEY_CODE, KEY_TEXT}),
    KIND_ANSWER: frozenset({KEY_KIND, KEY_SEQ, KEY_TIME, KEY_MODEL_ID, KEY_TASK, KEY_TEXT,
                            KEY_TOKENS, KEY_STOP, KEY_TIMINGS_MS}),
}
OPTIONAL_KEYS = {
    KIND_FRAME: frozenset({KEY_GEOREF, KEY_CLASS_IDS, KEY_BOX_SCALE, KEY_LABELS}),
    KIND_HOUSEKEEPING: frozenset({KEY_ERRORS}),
    KIND_EVENT: frozenset({KEY_FRAME_ID}),
    KIND_ANSWER: frozenset({KEY_QUESTION_ID, KEY_FRAME_ID, KEY_TEXT_BYTES}),
}

PRIORITY_HOUSEKEEPING = 0
PRIORITY_EVENT = 1
PRIORITY_FRAME = 2
PRIORITY_ANSWER = 2   # an answer costs seconds of compute, like a frame's detections
#: Journal eviction order: when the journal is full the lowest priority goes first, oldest first.
PRIORITY_BY_KIND = {KIND_FRAME: PRIORITY_FRAME, KIND_EVENT: PRIORITY_EVENT,
                    KIND_HOUSEKEEPING: PRIORITY_HOUSEKEEPING, KIND_ANSWER: PRIORITY_ANSWER}

# ---- counters (key 13), stages (key 14), event codes (key 16 and error entries) ----------------

COUNTERS = {
    "frames_ok": 0, "frames_failed": 1, "tiles_total": 2, "tiles_nodata": 3, "tiles_cloud": 4,
    "tiles_inferred": 5, "detections": 6, "journal_records": 7, "journal_bytes": 8,
    "journal_evicted": 9, "packets_sent": 10, "bytes_sent": 11, "input_errors": 12,
    "model_errors": 13, "restarts": 14, "scrub_checked_bytes": 15, "scrub_corrected": 16,
    "scrub_restored": 17, "scrub_unrecoverable": 18, "uplink_rejected": 19,
    "journal_dropped_bytes": 20, "config_errors": 21, "scrub_passes": 22, "weights_unprotected": 23,
    # VLM (edge/vlm): questions that got no full answer (no answer at all, or one cut by its deadline:
    # the partial answer is still sent); answers with nothing usable (sent with a vlm_rejected event);
    # answer records journaled; grounding items dropped by validation
    "vlm_errors": 24, "vlm_rejected": 25, "vlm_answers": 26, "vlm_items_skipped": 27,
    # the VLM's weights: unprotected (vlm.memory "copy", 1 once loaded); dropped and reloaded after an
    # unrecoverable scrub (edge/vlm/service.py)
    "vlm_weights_unprotected": 28, "vlm_weights_dropped": 29,
}
COUNTER_NAMES = {v: k for k, v in COUNTERS.items()}

STAGES = {"read": 0, "plan": 1, "preprocess": 2, "screen": 3, "infer": 4, "decode": 5,
          "merge": 6, "record": 7, "journal": 8, "downlink": 9, "frame": 10}
STAGE_NAMES = {v: k for k, v in STAGES.items()}

EVENT_CODES = {
    "input_error": 1, "model_error": 2, "config_error": 3, "journal_recovered": 4,
    "journal_evicted": 5, "started": 6, "stopped": 7, "frame_skipped": 8, "worker_restart": 9,
    "safe_mode_entered": 10, "safe_mode_left": 11, "scrub_corrected": 12, "scrub_restored": 13,
    "scrub_unrecoverable": 14, "uplink_rejected": 15, "watchdog": 16, "vlm_error": 17,
    "vlm_rejected": 18,
}
EVENT_NAMES = {v: k for k, v in EVENT_CODES.items()}

#: VLM tasks (key 24) and why generation stopped (key 22).
TASKS = {"vqa": 0, "caption": 1, "grounding": 2}
TASK_NAMES = {v: k for k, v in TASKS.items()}
STOP_REASONS = {"eos": 0, "max_tokens": 1, "deadline": 2}
STOP_NAMES = {v: k for k, v in STOP_REASONS.items()}
#: The order of the timings array (key 23), milliseconds each.
TIMING_STAGES = ("vision", "prefill", "decode")

# ---- encoding constants --------------------------------------------------------------------------

TAG_UINT8 = 64       # RFC 8746 typed array: uint8
TAG_UINT16LE = 69    # RFC 8746 typed array: uint16, little endian
GEOREF_GEOTRANSFORM = 0   # georef map key: affine geotransform, GDAL order
GEOREF_CORNERS = 1        # georef map key: [lat, lon] of the four frame corners
GEOREF_MAX_ERROR_PX = 0.1  # georef numbers go as float32 when that moves no frame corner further
GEOTRANSFORM_LEN = 6
CORNERS_LEN = 4
MODEL_ID_BYTES = 4        # first bytes of the model file's sha256
SCORE_LEVELS = 255        # score -> round(score * 255), one uint8
BOX_VALUE_MAX = 65535     # largest uint16 box value
MAX_TEXT_BYTES = 160      # event detail and error-entry text, UTF-8 bytes
MAX_ANSWER_BYTES = 1024   # answer text (VLM), UTF-8 bytes; longer answers are cut and marked
MAX_ERRORS = 8            # error entries per housekeeping record, the most recent
MAX_LABELS = 256          # class ids are uint8
UINT64_MAX = 2**64 - 1    # CBOR unsigned integers are at most 64 bits
#: Largest record either side handles: bounds the ground decoder's memory on corrupt input, and
#: still holds ~1.8 million detections.
MAX_RECORD_BYTES = 16 * 1024 * 1024

_LE_UINT16 = np.dtype("<u2")  # explicit byte order: the wire is little endian on every host
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


# ---- small typed readers: each failure names the field ----------------------------------------

def _uint(value, name: str, lo: int = 0) -> int:
    if type(value) is int and lo <= value <= UINT64_MAX:  # the common case, without the ABC check
        return value
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    value = int(value)
    if not lo <= value <= UINT64_MAX:
        raise ValueError(f"{name}: must be in {lo}..{UINT64_MAX}, got {value}")
    return value


def _finite_float(value, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    return value


def _array(value, name: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise ValueError(f"{name}: not an array of numbers ({exc})") from None


def _real_array(value, name: str) -> np.ndarray:
    arr = _array(value, name)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name}: must hold real numbers (integer or float dtype), got dtype {arr.dtype}")
    return arr


def _clip(arr: np.ndarray, lo, hi) -> None:
    """In place; the two ufuncs are several times faster than np.clip on small arrays."""
    np.maximum(arr, lo, out=arr)
    np.minimum(arr, hi, out=arr)


def truncate_text(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, never inside a character.

    Characters UTF-8 cannot encode (lone surrogates, e.g. from a file name read with
    surrogateescape) become backslash escapes rather than failing the report of an error."""
    raw = text.encode("utf-8", errors="backslashreplace")
    if len(raw) <= limit:
        return raw.decode("utf-8")
    # Only the last character can be cut; "ignore" drops its incomplete bytes.
    return raw[:limit].decode("utf-8", errors="ignore")


def _text(value, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a string, got {type(value).__name__}")
    return truncate_text(value)


def _named_id(value, table: dict, names: dict, name: str, what: str | None = None) -> int:
    """The id of `value`, given by name (a key of `table`) or by id (a key of `names`)."""
    what = what or name
    if isinstance(value, str):
        if value not in table:
            raise ValueError(f"{name}: unknown {what} {value!r} (known: {', '.join(table)})")
        return table[value]
    ident = _uint(value, name)
    if ident not in names:
        raise ValueError(f"{name}: unknown {what} id {ident} (known: {sorted(names)})")
    return ident


def _event_code(value, name: str) -> int:
    return _named_id(value, EVENT_CODES, EVENT_NAMES, name, "event code")


def _dumps(record: dict) -> bytes:
    data = cbor2.dumps(record, canonical=True)
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"record: {len(data)} bytes is over the {MAX_RECORD_BYTES}-byte limit")
    return data


# ---- public helpers -----------------------------------------------------------------------------

def model_id_of(sha256_hex: str) -> bytes:
    """The 4-byte model id of a model file: the first 4 bytes of its sha256 (64 hex digits)."""
    if not isinstance(sha256_hex, str) or not _SHA256_HEX.match(sha256_hex):
        raise ValueError(f"sha256_hex: must be 64 hex digits, got {sha256_hex!r}")
    return bytes.fromhex(sha256_hex[:2 * MODEL_ID_BYTES])


def box_scale_for(frame_h: int, frame_w: int) -> int:
    """Pixels per box unit: the smallest integer scale that fits every coordinate of the frame
    (0..max(height, width)) into a uint16; 1 up to 65535 pixels."""
    return max(1, -(-max(frame_h, frame_w) // BOX_VALUE_MAX))


# ---- frame ----------------------------------------------------------------------------------------

def _frame_size(frame_hw) -> tuple[int, int]:
    try:
        h, w = frame_hw
    except (TypeError, ValueError):
        raise ValueError(f"frame_hw: must be (height, width), got {frame_hw!r}") from None
    return _uint(h, "frame_hw.height", lo=1), _uint(w, "frame_hw.width", lo=1)


def _tiles(tiles) -> list[int]:
    try:
        total, nodata, cloud, inferred = tiles
    except (TypeError, ValueError):
        raise ValueError(f"tiles: must be (total, nodata, cloud, inferred), got {tiles!r}") from None
    out = [_uint(total, "tiles.total"), _uint(nodata, "tiles.nodata"),
           _uint(cloud, "tiles.cloud"), _uint(inferred, "tiles.inferred")]
    if out[0] != out[1] + out[2] + out[3]:
        raise ValueError(f"tiles: total {out[0]} != nodata {out[1]} + cloud {out[2]} + "
                         f"inferred {out[3]}")
    return out


def _georef(georef) -> dict:
    if not isinstance(georef, Mapping) or len(georef) != 1:
        raise ValueError("georef: must be None, {'geotransform': [6 numbers]} or "
                         f"{{'corners': [[lat, lon] x 4]}}, got {georef!r}")
    (form, value), = georef.items()
    if form == "geotransform":
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != GEOTRANSFORM_LEN:
            raise ValueError(f"georef.geotransform: must be {GEOTRANSFORM_LEN} numbers, got {value!r}")
        return {GEOREF_GEOTRANSFORM: [_finite_float(v, f"georef.geotransform[{i}]")
                                      for i, v in enumerate(value)]}
    if form == "corners":
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != CORNERS_LEN:
            raise ValueError(f"georef.corners: must be {CORNERS_LEN} [lat, lon] pairs "
                             f"(top-left, top-right, bottom-right, bottom-left), got {value!r}")
        corners = []
        for i, corner in enumerate(value):
            if isinstance(corner, (str, bytes)) or not hasattr(corner, "__len__") or len(corner) != 2:
                raise ValueError(f"georef.corners[{i}]: must be [lat, lon], got {corner!r}")
            lat = _finite_float(corner[0], f"georef.corners[{i}].lat")
            lon = _finite_float(corner[1], f"georef.corners[{i}].lon")
            if not -90.0 <= lat <= 90.0:
                raise ValueError(f"georef.corners[{i}].lat: must be in -90..90 degrees, got {lat}")
            if not -180.0 <= lon <= 180.0:
                raise ValueError(f"georef.corners[{i}].lon: must be in -180..180 degrees, got {lon}")
            corners.append([lat, lon])
        return {GEOREF_CORNERS: corners}
    raise ValueError(f"georef: form must be 'geotransform' or 'corners', got {form!r}")


def _as_float32(values) -> list[float]:
    with np.errstate(over="ignore"):  # beyond float32 range: inf, and the float64 form is kept
        return [float(v) for v in np.asarray(values, np.float64).astype(np.float32)]


def _compact_georef(geo: dict, h: int, w: int) -> dict:
    """The georeference with its numbers rounded to float32 (5 CBOR bytes each instead of 9) when that
    moves no frame corner by more than GEOREF_MAX_ERROR_PX pixels; else unchanged (float64).
    Canonical CBOR then writes each value in the shortest form that holds it exactly."""
    corners_px = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)  # (col, row)
    if GEOREF_GEOTRANSFORM in geo:
        gt = np.array(geo[GEOREF_GEOTRANSFORM], np.float64)
        gt32 = np.array(_as_float32(gt), np.float64)
        jac = np.array([[gt[1], gt[2]], [gt[4], gt[5]]])
        if not np.isfinite(gt32).all() or abs(np.linalg.det(jac)) == 0:
            return geo

        def lonlat(g):
            return np.stack([g[0] + corners_px[:, 0] * g[1] + corners_px[:, 1] * g[2],
                             g[3] + corners_px[:, 0] * g[4] + corners_px[:, 1] * g[5]], 1)

        with np.errstate(all="ignore"):
            err_px = np.linalg.solve(jac, (lonlat(gt32) - lonlat(gt)).T)  # degrees -> pixels
        if np.isfinite(err_px).all() and np.abs(err_px).max() <= GEOREF_MAX_ERROR_PX:
            return {GEOREF_GEOTRANSFORM: [float(v) for v in gt32]}
        return geo
    corners = np.array(geo[GEOREF_CORNERS], np.float64)
    c32 = np.array([_as_float32(c) for c in corners], np.float64)
    # degrees per pixel along the frame's shorter side, from the corners themselves
    span = max(np.abs(corners[1] - corners[0]).max() / max(w, 1),
               np.abs(corners[3] - corners[0]).max() / max(h, 1))
    if span > 0 and np.abs(c32 - corners).max() / span <= GEOREF_MAX_ERROR_PX:
        return {GEOREF_CORNERS: c32.tolist()}
    return geo


def _labels(labels) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Iterable):
        raise ValueError(f"labels: must be a list of class names, got {labels!r}")
    labels = list(labels)
    if not 1 <= len(labels) <= MAX_LABELS:
        raise ValueError(f"labels: must hold 1..{MAX_LABELS} names (None: the manifest's classes), "
                         f"got {len(labels)}")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise ValueError(f"labels[{i}]: must be a string, got {label!r}")
    return labels


def _boxes(boxes) -> np.ndarray:
    arr = _real_array(boxes, "boxes")
    if arr.size == 0 and arr.ndim == 1:  # [] means no boxes
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes: must have shape (N, 4) as x1 y1 x2 y2, got {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    # One pass each for the common (valid) case; the row is searched only to report it.
    if not np.isfinite(arr).all():
        row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"boxes: must be finite: row {row} is {arr[row].tolist()}")
    if not (arr[:, 2:] >= arr[:, :2]).all():
        row = int(np.flatnonzero((arr[:, 2:] < arr[:, :2]).any(axis=1))[0])
        raise ValueError(f"boxes: need x2 >= x1 and y2 >= y1 (a negative size): row {row} is "
                         f"{arr[row].tolist()}")
    return arr


def _scores(scores, n: int) -> np.ndarray:
    arr = _real_array(scores, "scores")
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"scores: must have shape ({n},) to match boxes, got {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"scores: must be finite: scores[{i}] is {arr[i]}")
    # Clipping is the contract: dequantized int8 scores can land a step outside 0..1.
    levels = arr * SCORE_LEVELS  # a new array: the caller's is never written
    np.rint(levels, out=levels)
    _clip(levels, 0, SCORE_LEVELS)
    return levels.astype(np.uint8)


def _class_ids(class_ids, n: int, n_labels: int | None) -> np.ndarray | None:
    """uint8 class ids, or None when the key is left out (no detections, or all class 0)."""
    if class_ids is None:
        return None
    arr = _array(class_ids, "class_ids")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"class_ids: must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"class_ids: must have shape ({n},) to match boxes, got {arr.shape}")
    if n == 0:
        return None
    lo, hi = int(arr.min()), int(arr.max())
    limit = MAX_LABELS - 1 if n_labels is None else n_labels - 1
    if lo < 0 or hi > limit:
        i = int(np.flatnonzero((arr < 0) | (arr > limit))[0])
        what = "0..255" if n_labels is None else f"0..{limit} (one per label)"
        raise ValueError(f"class_ids: must be in {what}, class_ids[{i}] is {int(arr[i])}")
    if hi == 0:
        return None
    return arr.astype(np.uint8)


def encode_frame(*, seq, frame_id, capture_time_ms, model_id: bytes, frame_hw, tiles, boxes,
                 scores, class_ids=None, georef=None, labels=None) -> bytes:
    """The frame record (kind 1) of one input frame's detections.

    boxes (N, 4) x1 y1 x2 y2 in frame pixels; scores (N,) in 0..1; class_ids (N,) in 0..255 or
    None (all class 0); frame_hw (height, width); tiles (total, nodata, cloud, inferred) with
    total = nodata + cloud + inferred; model_id 4 bytes (model_id_of); georef None,
    {"geotransform": [gt0..gt5]} or {"corners": [[lat, lon]] * 4}; labels None or the class
    names the ids index (open-vocabulary models)."""
    h, w = _frame_size(frame_hw)
    if not isinstance(model_id, (bytes, bytearray)) or len(model_id) != MODEL_ID_BYTES:
        raise ValueError(f"model_id: must be {MODEL_ID_BYTES} bytes (model_id_of(sha256)), got {model_id!r}")
    record = {
        KEY_KIND: KIND_FRAME,
        KEY_SEQ: _uint(seq, "seq"),
        KEY_FRAME_ID: _uint(frame_id, "frame_id"),
        KEY_TIME: _uint(capture_time_ms, "capture_time_ms"),
        KEY_MODEL_ID: bytes(model_id),
        KEY_FRAME_SIZE: [h, w],
        KEY_TILES: _tiles(tiles),
    }
    if georef is not None:
        record[KEY_GEOREF] = _compact_georef(_georef(georef), h, w)
    label_list = None if labels is None else _labels(labels)
    if label_list is not None:
        record[KEY_LABELS] = label_list

    box_arr = _boxes(boxes)
    n = len(box_arr)
    record[KEY_SCORES] = cbor2.CBORTag(TAG_UINT8, _scores(scores, n).tobytes())
    ids = _class_ids(class_ids, n, None if label_list is None else len(label_list))
    if ids is not None:
        record[KEY_CLASS_IDS] = cbor2.CBORTag(TAG_UINT8, ids.tobytes())

    scale = box_scale_for(h, w)
    values = box_arr / scale  # a new array: the caller's is never written
    np.rint(values, out=values)
    _clip(values, 0, BOX_VALUE_MAX)
    record[KEY_BOXES] = cbor2.CBORTag(TAG_UINT16LE, values.astype(_LE_UINT16).tobytes())
    if scale > 1:
        record[KEY_BOX_SCALE] = scale
    return _dumps(record)


# ---- housekeeping -----------------------------------------------------------------------------

def _counters(counters) -> dict[int, int]:
    if not isinstance(counters, Mapping):
        raise ValueError("counters: must be a mapping of counter name -> value, "
                         f"got {type(counters).__name__}")
    out = {}
    for name, value in counters.items():
        if name not in COUNTERS:
            raise ValueError(f"counters: unknown counter {name!r} (known: {', '.join(COUNTERS)})")
        out[COUNTERS[name]] = _uint(value, f"counters.{name}")
    return out


def _micros(value, name: str) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        micros = int(value)
    else:  # percentiles come as floats: whole microseconds on the wire
        micros = round(_finite_float(value, name))
    if micros < 0:
        raise ValueError(f"{name}: must be >= 0 microseconds, got {value}")
    return _uint(micros, name)


def _stage_us(stage_us) -> dict[int, list[int]]:
    if not isinstance(stage_us, Mapping):
        raise ValueError("stage_us: must be a mapping of stage name -> (p50, max), "
                         f"got {type(stage_us).__name__}")
    out = {}
    for name, pair in stage_us.items():
        if name not in STAGES:
            raise ValueError(f"stage_us: unknown stage {name!r} (known: {', '.join(STAGES)})")
        try:
            p50, top = pair
        except (TypeError, ValueError):
            raise ValueError(f"stage_us.{name}: must be (p50, max) microseconds, got {pair!r}") from None
        p50, top = _micros(p50, f"stage_us.{name}.p50"), _micros(top, f"stage_us.{name}.max")
        if p50 > top:
            raise ValueError(f"stage_us.{name}: p50 {p50} > max {top}")
        out[STAGES[name]] = [p50, top]
    return out


def _errors(errors) -> list[list]:
    if isinstance(errors, (str, bytes)) or not isinstance(errors, Iterable):
        raise ValueError(f"errors: must be a list of (code, frame_id or None, text), got {errors!r}")
    out = []
    for i, entry in enumerate(errors):
        try:
            code, frame_id, text = entry
        except (TypeError, ValueError):
            raise ValueError(f"errors[{i}]: must be (code, frame_id or None, text), got {entry!r}") from None
        out.append([_event_code(code, f"errors[{i}].code"),
                    None if frame_id is None else _uint(frame_id, f"errors[{i}].frame_id"),
                    _text(text, f"errors[{i}].text")])
    return out[-MAX_ERRORS:]  # oldest first: the last ones are the most recent


def encode_housekeeping(*, seq, time_ms, uptime_ms, boot, counters: Mapping[str, int],
                        stage_us: Mapping[str, tuple], errors=()) -> bytes:
    """The housekeeping record (kind 2). counters {name: value} (cumulative since boot);
    stage_us {stage name: (p50, max)} microseconds over the frames since the previous report;
    errors [(event code name or id, frame_id or None, text)] oldest first: the last 8 are kept,
    texts cut to 160 UTF-8 bytes."""
    record = {
        KEY_KIND: KIND_HOUSEKEEPING,
        KEY_SEQ: _uint(seq, "seq"),
        KEY_TIME: _uint(time_ms, "time_ms"),
        KEY_UPTIME: _uint(uptime_ms, "uptime_ms"),
        KEY_BOOT: _uint(boot, "boot"),
        KEY_COUNTERS: _counters(counters),
        KEY_STAGE_US: _stage_us(stage_us),
    }
    entries = _errors(errors)
    if entries:
        record[KEY_ERRORS] = entries
    return _dumps(record)


# ---- event ------------------------------------------------------------------------------------

def encode_event(*, seq, time_ms, boot, code, text, frame_id=None) -> bytes:
    """The event record (kind 3): event code (name or id), text cut to 160 UTF-8 bytes, and the
    frame it is about, if any."""
    record = {
        KEY_KIND: KIND_EVENT,
        KEY_SEQ: _uint(seq, "seq"),
        KEY_TIME: _uint(time_ms, "time_ms"),
        KEY_BOOT: _uint(boot, "boot"),
        KEY_CODE: _event_code(code, "code"),
        KEY_TEXT: _text(text, "text"),
    }
    if frame_id is not None:
        record[KEY_FRAME_ID] = _uint(frame_id, "frame_id")
    return _dumps(record)


# ---- answer -----------------------------------------------------------------------------------

def _timings_ms(timings) -> list[int]:
    if not isinstance(timings, Mapping):
        raise ValueError("timings_ms: must be a mapping {vision, prefill, decode} -> milliseconds, "
                         f"got {timings!r}")
    unknown = set(timings) - set(TIMING_STAGES)
    if unknown:
        raise ValueError(f"timings_ms: unknown stage(s) {sorted(map(str, unknown))} "
                         f"(known: {', '.join(TIMING_STAGES)})")
    out = []
    for stage in TIMING_STAGES:
        value = timings.get(stage, 0)
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            ms = int(value)
        else:  # measured durations come as floats: whole milliseconds on the wire
            ms = round(_finite_float(value, f"timings_ms.{stage}"))
        if ms < 0:
            raise ValueError(f"timings_ms.{stage}: must be >= 0 ms, got {value}")
        out.append(_uint(ms, f"timings_ms.{stage}"))
    return out


def encode_answer(*, seq, time_ms, question_id, frame_id=None, model_id: bytes, text, tokens,
                  stop, timings_ms, task="vqa") -> bytes:
    """The answer record (kind 4) of one VLM answer.

    question_id: the uplinked / queued question's id, or None for the mission's standing question
    ([vlm] question, asked of every frame); frame_id: the frame asked about, if any; model_id: 4
    bytes (the VLM's id); text: the answer, cut to MAX_ANSWER_BYTES UTF-8 bytes on a character
    boundary (then key 25 holds the full length); tokens: generated tokens; stop: "eos" /
    "max_tokens" / "deadline" (or its id); timings_ms: {"vision", "prefill", "decode"} ms (a
    missing stage is 0); task: "vqa" / "caption" / "grounding" (or its id)."""
    if not isinstance(model_id, (bytes, bytearray)) or len(model_id) != MODEL_ID_BYTES:
        raise ValueError(f"model_id: must be {MODEL_ID_BYTES} bytes, got {model_id!r}")
    if not isinstance(text, str):
        raise ValueError(f"text: must be a string, got {type(text).__name__}")
    record = {
        KEY_KIND: KIND_ANSWER,
        KEY_SEQ: _uint(seq, "seq"),
        KEY_TIME: _uint(time_ms, "time_ms"),
        KEY_MODEL_ID: bytes(model_id),
        KEY_TASK: _named_id(task, TASKS, TASK_NAMES, "task"),
        KEY_TOKENS: _uint(tokens, "tokens"),
        KEY_STOP: _named_id(stop, STOP_REASONS, STOP_NAMES, "stop"),
        KEY_TIMINGS_MS: _timings_ms(timings_ms),
    }
    full = len(text.encode("utf-8", errors="backslashreplace"))
    cut = truncate_text(text, MAX_ANSWER_BYTES)
    record[KEY_TEXT] = cut
    if len(cut.encode("utf-8")) < full:
        record[KEY_TEXT_BYTES] = full
    if question_id is not None:
        record[KEY_QUESTION_ID] = _uint(question_id, "question_id")
    if frame_id is not None:
        record[KEY_FRAME_ID] = _uint(frame_id, "frame_id")
    return _dumps(record)
