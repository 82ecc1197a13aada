"""Downlink records: flight encoders (edge/downlink/record.py) and ground decoder
(edge/ground/records.py) against the normative spec docs/downlink.cddl, checked with pycddl."""
from __future__ import annotations

import math
import time
from pathlib import Path

import cbor2
import numpy as np
import pycddl
import pytest
from cbor2 import CBORTag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.downlink import record as spec
from edge.downlink.record import (encode_answer, encode_event, encode_frame, encode_housekeeping,
                                  model_id_of, truncate_text)
from edge.ground.records import RecordError, decode_record, georef_to_lonlat
from tests.conftest import EXAMPLES_SCALE, examples

CDDL = (Path(__file__).resolve().parent.parent / "docs" / "downlink.cddl").read_text()
SCHEMA = pycddl.Schema(CDDL)  # root: `record`, the choice of the kinds
#: pycddl 0.6.4 leaks map keys between the alternatives of a choice, so a record is also validated
#: against the rule of its own kind (equivalent: the kinds differ in key 0).
KIND_SCHEMAS = {kind: pycddl.Schema(f"root = {name}-record\n" + CDDL) for name, kind in spec.KINDS.items()}
MODEL_ID = model_id_of("0123456789abcdef" * 4)
GEOTRANSFORM = {"geotransform": [12.25, 1e-5, 0.0, 45.5, 0.0, -1e-5]}
CORNERS = {"corners": [[45.5, 12.25], [45.5, 12.75], [45.0, 12.75], [45.0, 12.25]]}


def conforms(data: bytes) -> bool:
    """data is a record of docs/downlink.cddl."""
    kind = cbor2.loads(data).get(spec.KEY_KIND)
    schemas = [SCHEMA] + ([KIND_SCHEMAS[kind]] if kind in KIND_SCHEMAS else [])
    try:
        for schema in schemas:
            schema.validate_cbor(data)
    except pycddl.ValidationError:
        return False
    return True


def frame_kwargs(n=3, hw=(1000, 2000), seed=0, **over):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, min(hw) / 2, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, min(hw) / 2, (n, 2))], axis=1)
    kw = dict(seq=7, frame_id=42, capture_time_ms=1_717_243_200_123, model_id=MODEL_ID, frame_hw=hw,
              tiles=(10, 2, 3, 5), boxes=boxes, scores=rng.uniform(0, 1, n))
    kw.update(over)
    return kw


def housekeeping_kwargs(**over):
    kw = dict(seq=8, time_ms=1_717_243_260_000, uptime_ms=60_000, boot=3,
              counters={"frames_ok": 5, "detections": 120, "scrub_checked_bytes": 2**40},
              stage_us={"infer": (12_000, 30_500), "frame": (15_000.4, 40_000)},
              errors=[("input_error", 17, "bad header"), (2, None, "model raised")])
    kw.update(over)
    return kw


def event_kwargs(**over):
    kw = dict(seq=9, time_ms=1_717_243_261_000, boot=3, code="frame_skipped", text="already journaled",
              frame_id=42)
    kw.update(over)
    return kw


def answer_kwargs(**over):
    kw = dict(seq=10, time_ms=1_717_243_262_000, question_id=5, frame_id=42, model_id=MODEL_ID,
              text="Two ships are moored at the pier.", tokens=9, stop="eos",
              timings_ms={"vision": 380.4, "prefill": 220, "decode": 180.6}, task="vqa")
    kw.update(over)
    return kw


# ---- every encoder output is a record of the CDDL ---------------------------------------------

VALID_RECORDS = {
    "frame": lambda: encode_frame(**frame_kwargs()),
    "frame-empty": lambda: encode_frame(**frame_kwargs(n=0)),
    "frame-classes-labels-geotransform": lambda: encode_frame(**frame_kwargs(
        n=4, class_ids=[0, 1, 2, 1], labels=["ship", "boat", "buoy"], georef=GEOTRANSFORM)),
    "frame-corners": lambda: encode_frame(**frame_kwargs(georef=CORNERS)),
    "frame-box-scale": lambda: encode_frame(**frame_kwargs(n=5, hw=(200_000, 70_000))),
    "housekeeping": lambda: encode_housekeeping(**housekeeping_kwargs()),
    "housekeeping-bare": lambda: encode_housekeeping(**housekeeping_kwargs(counters={}, stage_us={},
                                                                           errors=())),
    "event": lambda: encode_event(**event_kwargs()),
    "event-no-frame": lambda: encode_event(**event_kwargs(frame_id=None, code=6, text="")),
    "answer": lambda: encode_answer(**answer_kwargs()),
    "answer-standing-question": lambda: encode_answer(**answer_kwargs(
        question_id=None, frame_id=None, task="caption", stop="max_tokens", text="", tokens=0,
        timings_ms={})),
    "answer-cut": lambda: encode_answer(**answer_kwargs(text="ü" * 700, task="grounding", stop=2)),
}


@pytest.mark.parametrize("name", VALID_RECORDS)
def test_encoder_output_conforms_to_cddl_and_decodes(name):
    data = VALID_RECORDS[name]()
    SCHEMA.validate_cbor(data)  # raises with the location of the problem
    KIND_SCHEMAS[cbor2.loads(data)[spec.KEY_KIND]].validate_cbor(data)
    assert decode_record(data).kind == name.split("-")[0]


# ---- malformed records: rejected by the schema (it is tight) and by the decoder ---------------

def _frame_map():
    return cbor2.loads(VALID_RECORDS["frame-classes-labels-geotransform"]())


def _hk_map():
    return cbor2.loads(VALID_RECORDS["housekeeping"]())


def _event_map():
    return cbor2.loads(VALID_RECORDS["event"]())


def _answer_map():
    return cbor2.loads(VALID_RECORDS["answer"]())


def _cut_answer_map():
    return cbor2.loads(VALID_RECORDS["answer-cut"]())


def _with(base, **changes):
    """A copy of record map `base` with keys set (k<id>=value) or removed (k<id>=DROP)."""
    rec = dict(base())
    for key, value in changes.items():
        rec.pop(int(key[1:]), None)
        if value is not DROP:
            rec[int(key[1:])] = value
    return rec


DROP = object()
T8, T16 = spec.TAG_UINT8, spec.TAG_UINT16LE

#: Each breaks a rule the CDDL states: pycddl must reject it, and so must decode_record.
MALFORMED = {
    **{f"frame-missing-{k}": (_frame_map, {f"k{k}": DROP}) for k in spec.REQUIRED_KEYS[spec.KIND_FRAME]},
    **{f"hk-missing-{k}": (_hk_map, {f"k{k}": DROP}) for k in spec.REQUIRED_KEYS[spec.KIND_HOUSEKEEPING]},
    **{f"event-missing-{k}": (_event_map, {f"k{k}": DROP}) for k in spec.REQUIRED_KEYS[spec.KIND_EVENT]},
    "kind-unknown": (_event_map, {"k0": 9}),
    **{f"answer-missing-{k}": (_answer_map, {f"k{k}": DROP}) for k in spec.REQUIRED_KEYS[spec.KIND_ANSWER]},
    "kind-answer-with-event-keys": (_event_map, {"k0": 4}),
    "kind-event-with-answer-keys": (_answer_map, {"k0": 3}),
    "kind-text": (_event_map, {"k0": "event"}),
    "seq-negative": (_frame_map, {"k1": -1}),
    "seq-float": (_frame_map, {"k1": 7.0}),
    "seq-bool": (_event_map, {"k1": True}),
    "time-text": (_hk_map, {"k3": "2024-06-01"}),
    "time-datetime-tag": (_event_map, {"k3": CBORTag(1, 1_717_243_261)}),
    "model-id-3-bytes": (_frame_map, {"k4": b"abc"}),
    "model-id-text": (_frame_map, {"k4": "abcd"}),
    "frame-size-1-entry": (_frame_map, {"k5": [100]}),
    "frame-size-zero": (_frame_map, {"k5": [0, 100]}),
    "tiles-3-entries": (_frame_map, {"k6": [1, 0, 1]}),
    "tiles-negative": (_frame_map, {"k6": [1, 0, -1, 2]}),
    "georef-empty": (_frame_map, {"k7": {}}),
    "georef-both-forms": (_frame_map, {"k7": {0: [1.0] * 6, 1: [[1.0, 2.0]] * 4}}),
    "georef-unknown-form": (_frame_map, {"k7": {2: [1.0] * 6}}),
    "georef-5-numbers": (_frame_map, {"k7": {0: [1.0] * 5}}),
    "georef-integers": (_frame_map, {"k7": {0: [1, 0, 0, 1, 0, -1]}}),
    "georef-3-corners": (_frame_map, {"k7": {1: [[1.0, 2.0]] * 3}}),
    "georef-corner-3-numbers": (_frame_map, {"k7": {1: [[1.0, 2.0, 3.0]] * 4}}),
    "class-ids-untagged": (_frame_map, {"k8": b"\x00\x01\x02\x01"}),
    "class-ids-wrong-tag": (_frame_map, {"k8": CBORTag(65, b"\x00\x01\x02\x01")}),
    "scores-untagged": (_frame_map, {"k9": b"\x01\x02\x03\x04"}),
    "scores-wrong-tag": (_frame_map, {"k9": CBORTag(T16, b"\x01\x02\x03\x04")}),
    "scores-tag-array": (_frame_map, {"k9": CBORTag(T8, [1, 2, 3, 4])}),
    "boxes-wrong-tag": (_frame_map, {"k10": CBORTag(T8, bytes(32))}),
    "boxes-big-endian-tag": (_frame_map, {"k10": CBORTag(65, bytes(32))}),
    "box-scale-1": (_frame_map, {"k11": 1}),
    "box-scale-float": (_frame_map, {"k11": 2.0}),
    "labels-empty": (_frame_map, {"k12": []}),
    "labels-not-text": (_frame_map, {"k12": [b"ship", b"boat", b"buoy"]}),
    "labels-257": (_frame_map, {"k12": ["x"] * 257}),
    "frame-extra-key": (_frame_map, {"k13": {}}),
    "frame-unknown-key": (_frame_map, {"k99": 1}),
    "counters-array": (_hk_map, {"k13": [1, 2]}),
    "counter-value-negative": (_hk_map, {"k13": {0: -5}}),
    "counter-value-float": (_hk_map, {"k13": {0: 5.0}}),
    "stage-us-one-number": (_hk_map, {"k14": {4: 12}}),
    "stage-us-3-numbers": (_hk_map, {"k14": {4: [1, 2, 3]}}),
    "errors-not-array": (_hk_map, {"k15": {}}),
    "error-entry-2-items": (_hk_map, {"k15": [[1, None]]}),
    "error-frame-id-text": (_hk_map, {"k15": [[1, "17", "x"]]}),
    "error-text-161-bytes": (_hk_map, {"k15": [[1, None, "x" * 161]]}),
    "hk-frame-key": (_hk_map, {"k2": 42}),
    "code-text": (_event_map, {"k16": "watchdog"}),
    "text-bytes": (_event_map, {"k17": b"already"}),
    "text-161-bytes": (_event_map, {"k17": "é" * 80 + "x"}),
    "event-boxes-key": (_event_map, {"k10": CBORTag(T16, b"")}),
    "event-tokens-key": (_event_map, {"k21": 3}),
    "answer-text-1025-bytes": (_answer_map, {"k17": "x" * 1025}),
    "answer-text-bytes": (_answer_map, {"k17": b"Two ships"}),
    "answer-model-id-3-bytes": (_answer_map, {"k4": b"abc"}),
    "answer-task-text": (_answer_map, {"k24": "vqa"}),
    "answer-stop-text": (_answer_map, {"k22": "eos"}),
    "answer-tokens-negative": (_answer_map, {"k21": -1}),
    "answer-question-id-float": (_answer_map, {"k20": 5.0}),
    "answer-question-id-null": (_answer_map, {"k20": None}),
    "answer-timings-2-entries": (_answer_map, {"k23": [1, 2]}),
    "answer-timings-4-entries": (_answer_map, {"k23": [1, 2, 3, 4]}),
    "answer-timings-negative": (_answer_map, {"k23": [1, -2, 3]}),
    "answer-timings-float": (_answer_map, {"k23": [1.5, 2, 3]}),
    "answer-timings-map": (_answer_map, {"k23": {0: 1, 1: 2, 2: 3}}),
    "answer-text-bytes-text": (_cut_answer_map, {"k25": "1400"}),
    "answer-boot-key": (_answer_map, {"k19": 3}),
    "answer-boxes-key": (_answer_map, {"k10": CBORTag(T16, b"")}),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_record_rejected_by_schema_and_decoder(name):
    base, changes = MALFORMED[name]
    data = cbor2.dumps(_with(base, **changes), canonical=True)
    assert not conforms(data), f"{name}: the CDDL accepts it"
    with pytest.raises(RecordError):
        decode_record(data)


#: Rules beyond CDDL (or beyond pycddl 0.6.4, marked): only the decoder can reject these.
BEYOND_CDDL = {
    "scores-vs-boxes-length": (_frame_map, {"k9": CBORTag(T8, b"\x01\x02\x03")}, "boxes"),
    "boxes-not-8-per-score": (_frame_map, {"k10": CBORTag(T16, bytes(30))}, "boxes"),
    "class-ids-length": (_frame_map, {"k8": CBORTag(T8, b"\x00\x01")}, "class-ids"),
    "class-id-without-label": (_frame_map, {"k8": CBORTag(T8, b"\x00\x01\x02\x03")}, "labels"),
    "tiles-do-not-sum": (_frame_map, {"k6": [10, 2, 3, 4]}, "tiles"),
    "georef-nan": (_frame_map, {"k7": {0: [math.nan] + [1.0] * 5}}, "finite"),
    "georef-infinite": (_frame_map, {"k7": {0: [math.inf] + [1.0] * 5}}, "finite"),
    "corner-latitude-100": (_frame_map, {"k7": {1: [[100.0, 2.0]] * 4}}, "lat"),
    "corner-longitude-200": (_frame_map, {"k7": {1: [[10.0, 200.0]] * 4}}, "lon"),
    "stage-p50-over-max": (_hk_map, {"k14": {4: [10, 9]}}, "p50"),
    "time-beyond-year-9999": (_event_map, {"k3": 2**63}, "9999"),
    "answer-text-bytes-not-more-than-the-text": (_answer_map, {"k25": 33}, "text-bytes"),
    "answer-text-bytes-zero": (_answer_map, {"k25": 0}, "text-bytes"),
}
PYCDDL_GAPS = {  # the CDDL says no; pycddl 0.6.4 does not enforce it
    "errors-9-entries": (_hk_map, {"k15": [[1, None, "x"]] * 9}, "at most 8"),
    "georef-5-corners": (_frame_map, {"k7": {1: [[1.0, 2.0]] * 5}}, "4 entries"),
    "counter-id-text": (_hk_map, {"k13": {0: 1, "frames_ok": 5}}, "counters"),
    "stage-id-negative": (_hk_map, {"k14": {4: [1, 2], -1: [1, 2]}}, "stage-us"),
}


@pytest.mark.parametrize("name", list(BEYOND_CDDL) + list(PYCDDL_GAPS))
def test_rules_beyond_cddl_are_checked_by_the_decoder(name):
    base, changes, message = {**BEYOND_CDDL, **PYCDDL_GAPS}[name]
    data = cbor2.dumps(_with(base, **changes), canonical=True)
    if name in BEYOND_CDDL:
        assert conforms(data), f"{name}: the CDDL can say this after all; move it to MALFORMED"
    with pytest.raises(RecordError, match=message):
        decode_record(data)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"\xff", "not a valid CBOR"),
    (cbor2.dumps([1, 2]), "must be a map"),
    (cbor2.dumps({1: 2}), "missing key 0"),
    (VALID_RECORDS["event"]() + b"\x00", "trailing bytes"),
    (b"\xa2\x00\x03\x00\x03", "not a valid CBOR"),                # duplicate key
    (b"\x81" * 100_000, "not a valid CBOR"),                      # deep nesting
    (b"\x9b" + b"\xff" * 8, "not a valid CBOR"),                  # 2**64 - 1 items, no data
    (cbor2.dumps(CBORTag(55799, {0: 3})), "must be a map"),             # self-described CBOR
    (cbor2.dumps({**_event_map(), 1: CBORTag(2, b"\x01" * 9)}), "seq"),  # bignum
    (cbor2.dumps({0: CBORTag(28, [CBORTag(29, 0)])}), "kind"),           # shared reference cycle
    (bytes(spec.MAX_RECORD_BYTES + 1), "limit"),
])
def test_decoder_names_the_problem(data, message):
    with pytest.raises(RecordError, match=message):
        decode_record(data)


def test_decoder_refuses_non_bytes():
    with pytest.raises(RecordError, match="bytes"):
        decode_record("a string")  # type: ignore[arg-type]


# ---- round trip -------------------------------------------------------------------------------

@st.composite
def detections(draw):
    h = draw(st.one_of(st.integers(1, 4096), st.integers(60_000, 300_000)))
    w = draw(st.one_of(st.integers(1, 4096), st.integers(60_000, 300_000)))
    n = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, w, (n, 2)), axis=1)
    y = np.sort(rng.uniform(0, h, (n, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    if draw(st.booleans()):  # exact half-pixel and edge values
        boxes = np.clip(np.round(boxes * 2) / 2, 0, [[w, h, w, h]])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    scores = rng.uniform(0, 1, n)
    if n and draw(st.booleans()):
        scores[: n // 2] = rng.integers(0, 511, n // 2) / 510  # exact rounding ties
    classes = draw(st.sampled_from(["none", "zeros", "random"]))
    class_ids = {"none": None, "zeros": np.zeros(n, np.int64), "random": rng.integers(0, 256, n)}[classes]
    georef = draw(st.sampled_from([None, "geotransform", "corners"]))
    if georef == "geotransform":
        georef = {"geotransform": [draw(st.floats(allow_nan=False, allow_infinity=False)) for _ in range(6)]}
    elif georef == "corners":
        georef = {"corners": [[draw(st.floats(-90, 90)), draw(st.floats(-180, 180))] for _ in range(4)]}
    return (h, w), boxes, scores, class_ids, georef


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(detections(), st.integers(0, 2**64 - 1), st.integers(0, 2**53))
def test_round_trip(dets, seq, time_ms):
    (h, w), boxes, scores, class_ids, georef = dets
    time_ms = min(time_ms, 253_402_300_799_999)  # the end of the year 9999
    data = encode_frame(seq=seq, frame_id=seq // 3, capture_time_ms=time_ms, model_id=MODEL_ID,
                        frame_hw=(h, w), tiles=(9, 1, 2, 6), boxes=boxes, scores=scores,
                        class_ids=class_ids, georef=georef)
    assert conforms(data)
    rec = decode_record(data)
    n = len(boxes)
    scale = spec.box_scale_for(h, w)
    assert (rec.kind, rec.seq, rec.frame_id, rec.time_ms) == ("frame", seq, seq // 3, time_ms)
    assert rec.model_id == MODEL_ID.hex() and rec.frame_size == (h, w) and rec.box_scale == scale
    assert rec.tiles == {"total": 9, "nodata": 1, "cloud": 2, "inferred": 6}
    assert rec.n_detections == n and rec.boxes.shape == (n, 4)
    assert rec.scores.shape == rec.class_ids.shape == (n,)
    assert np.all(np.abs(rec.scores - scores) <= 1 / 510 + 1e-12)
    assert np.all(np.abs(rec.boxes - boxes) <= 0.5 * scale + 1e-9)
    np.testing.assert_array_equal(rec.class_ids, np.zeros(n, np.int64) if class_ids is None else class_ids)
    # bit for bit, or rounded to float32 when that moves no frame corner by more than 0.1 px
    if georef is None:
        assert rec.georef is None
    else:
        (form, values), = georef.items()
        with np.errstate(over="ignore"):
            f32 = np.asarray(values, np.float64).astype(np.float32).astype(np.float64).tolist()
        assert rec.georef in ({form: values}, {form: f32})
    assert (spec.KEY_CLASS_IDS in cbor2.loads(data)) == (class_ids is not None and n > 0 and class_ids.any())


def test_box_scale_for_large_frames():
    assert [spec.box_scale_for(h, 10) for h in (1, 65535, 65536, 131070, 131071, 196605, 200_000)] == \
        [1, 1, 2, 2, 3, 3, 4]
    for hw, scale in (((65535, 65535), None), ((10, 65536), 2), ((200_000, 70_000), 4)):
        h, w = hw
        boxes = [[0, 0, w, h], [w - 1.5, h - 2.5, w, h]]
        data = encode_frame(**frame_kwargs(n=2, hw=hw, boxes=boxes, scores=[0.5, 1.0]))
        assert cbor2.loads(data).get(spec.KEY_BOX_SCALE) == scale
        rec = decode_record(data)
        assert np.all(np.abs(rec.boxes - np.array(boxes)) <= 0.5 * (scale or 1))
        assert rec.boxes[0].tolist() == [0, 0, w, h]  # the frame's edges are exact


def test_wire_layout():
    data = encode_frame(**frame_kwargs(n=2, boxes=np.array([[1, 2, 3, 258], [0.5, 1.5, 2.5, 65535.4]], ">f8"),
                                       scores=np.array([0.5, 2 / 255], np.float32), class_ids=[0, 7]))
    rec = cbor2.loads(data)
    # little endian whatever the host or the input's byte order; rint is half to even
    assert rec[spec.KEY_BOXES] == CBORTag(69, bytes([1, 0, 2, 0, 3, 0, 2, 1, 0, 0, 2, 0, 2, 0, 255, 255]))
    assert rec[spec.KEY_SCORES] == CBORTag(64, bytes([128, 2]))  # 127.5 -> 128 (even)
    assert rec[spec.KEY_CLASS_IDS] == CBORTag(64, bytes([0, 7]))
    clipped = cbor2.loads(encode_frame(**frame_kwargs(n=2, scores=[-0.01, 1.004])))
    assert clipped[spec.KEY_SCORES] == CBORTag(64, bytes([0, 255]))  # dequantized a step outside 0..1


def test_deterministic_bytes():
    for make in VALID_RECORDS.values():
        assert make() == make()
    kw = frame_kwargs(n=50, seed=3, georef=GEOTRANSFORM, class_ids=np.arange(50) % 3)
    as_float32 = dict(kw, boxes=kw["boxes"].astype(np.float32), scores=kw["scores"].astype(np.float32))
    as_lists = dict(as_float32, boxes=as_float32["boxes"].tolist(), scores=as_float32["scores"].tolist(),
                    class_ids=[int(c) for c in kw["class_ids"]])
    assert encode_frame(**as_float32) == encode_frame(**as_lists)
    hk = housekeeping_kwargs()
    shuffled = dict(hk, counters=dict(reversed(hk["counters"].items())),
                    stage_us=dict(reversed(hk["stage_us"].items())))
    assert encode_housekeeping(**hk) == encode_housekeeping(**shuffled)


#: Bytes of a single-class frame record beyond its 9 per detection (8 box + 1 score), without georef
#: or labels, for seq and frame id up to 2**32 - 1, a frame up to 65535 px and 100 detections.
FRAME_OVERHEAD_BYTES = 64


def test_bytes_per_detection():
    big = dict(seq=2**32 - 1, frame_id=2**32 - 1, frame_hw=(65535, 65535), tiles=(60000, 1, 2, 59997))
    assert len(encode_frame(**frame_kwargs(n=100, **big))) <= 9 * 100 + FRAME_OVERHEAD_BYTES
    small = encode_frame(**frame_kwargs(n=100))  # small ids and tile counts: shorter integers
    assert len(small) - 9 * 100 == 49
    for n in (0, 1, 1000, 7000):  # grows by the byte-string length headers only (1 -> 3 bytes each)
        assert len(encode_frame(**frame_kwargs(n=n, **big))) - 9 * n <= FRAME_OVERHEAD_BYTES + 1
    n_classes = encode_frame(**frame_kwargs(n=100, class_ids=np.arange(100) % 3, **big))
    assert len(n_classes) <= 10 * 100 + FRAME_OVERHEAD_BYTES + 5  # + tag, header, 1 byte each


def test_encoder_speed():
    """1000 detections well under 1 ms (~0.15 ms on the 2-core dev box); scaled for qemu."""
    kw = frame_kwargs(n=1000, hw=(4096, 4096), class_ids=np.arange(1000) % 5)
    kw["boxes"] = kw["boxes"].astype(np.float32)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            encode_frame(**kw)
        best = min(best, (time.perf_counter() - start) / 20)
    assert best < 1e-3 / min(1.0, EXAMPLES_SCALE), f"{best * 1e6:.0f} us per 1000-detection record"


# ---- decoding names and texts ---------------------------------------------------------------

def test_housekeeping_round_trip_and_names():
    errors = [("model_error", i, f"failure {i}") for i in range(11)]
    data = encode_housekeeping(**housekeeping_kwargs(errors=errors))
    rec = decode_record(data)
    assert rec.kind == "housekeeping" and (rec.seq, rec.uptime_ms, rec.boot) == (8, 60_000, 3)
    assert rec.counters == {"frames_ok": 5, "detections": 120, "scrub_checked_bytes": 2**40}
    assert rec.stage_us == {"infer": (12_000, 30_500), "frame": (15_000, 40_000)}
    assert [tuple(e) for e in rec.errors] == [("model_error", i, f"failure {i}") for i in range(3, 11)]
    assert rec.time_utc == "2024-06-01T12:01:00.000Z"
    assert decode_record(encode_housekeeping(**housekeeping_kwargs(errors=[]))).errors == []


def test_unknown_ids_decode_with_their_number():
    rec = cbor2.loads(encode_housekeeping(**housekeeping_kwargs()))
    rec[spec.KEY_COUNTERS][99] = 1
    rec[spec.KEY_STAGE_US][77] = [1, 2]
    rec[spec.KEY_ERRORS].append([55, None, "new"])
    out = decode_record(cbor2.dumps(rec, canonical=True))
    assert out.counters["counter_99"] == 1 and out.stage_us["stage_77"] == (1, 2)
    assert out.errors[-1].code == "event_55"
    event = cbor2.loads(encode_event(**event_kwargs()))
    event[spec.KEY_CODE] = 200
    assert decode_record(cbor2.dumps(event)).code == "event_200"


def test_event_round_trip():
    rec = decode_record(encode_event(**event_kwargs()))
    assert (rec.kind, rec.code, rec.text, rec.frame_id, rec.boot) == \
        ("event", "frame_skipped", "already journaled", 42, 3)
    assert rec.time_utc == "2024-06-01T12:01:01.000Z" and rec.n_detections == 0
    rec = decode_record(encode_event(**event_kwargs(code=16, frame_id=None)))
    assert rec.code == "watchdog" and rec.frame_id is None


def test_texts_are_cut_on_a_character_boundary():
    assert truncate_text("x" * 200) == "x" * 160
    assert truncate_text("é" * 100) == "é" * 80             # 2-byte characters: exactly 160 bytes
    assert truncate_text("a" + "é" * 100) == "a" + "é" * 79  # the 80th would be split: dropped
    assert truncate_text("🛰" * 41) == "🛰" * 40               # 4-byte characters
    assert truncate_text("bad \udcff name") == "bad \\udcff name"  # surrogateescape'd bytes
    rec = decode_record(encode_event(**event_kwargs(text="ü" * 200)))
    assert rec.text == "ü" * 80
    rec = decode_record(encode_housekeeping(**housekeeping_kwargs(errors=[(1, None, "ß" * 99)])))
    assert rec.errors[0].text == "ß" * 80


def test_tables():
    for table, names in ((spec.KEYS, spec.KEY_NAMES), (spec.KINDS, spec.KIND_NAMES),
                         (spec.COUNTERS, spec.COUNTER_NAMES), (spec.STAGES, spec.STAGE_NAMES),
                         (spec.EVENT_CODES, spec.EVENT_NAMES)):
        assert {v: k for k, v in table.items()} == names and len(names) == len(table)  # no id twice
    for table, names in ((spec.TASKS, spec.TASK_NAMES), (spec.STOP_REASONS, spec.STOP_NAMES)):
        assert {v: k for k, v in table.items()} == names and len(names) == len(table)
    assert sorted(spec.KEYS.values()) == list(range(26))
    assert sorted(spec.COUNTERS.values()) == list(range(30))
    assert sorted(spec.STAGES.values()) == list(range(11))
    assert sorted(spec.EVENT_CODES.values()) == list(range(1, 19))
    assert spec.TASKS == {"vqa": 0, "caption": 1, "grounding": 2}
    assert spec.STOP_REASONS == {"eos": 0, "max_tokens": 1, "deadline": 2}
    assert spec.TIMING_STAGES == ("vision", "prefill", "decode")
    assert spec.PRIORITY_BY_KIND == {spec.KIND_FRAME: 2, spec.KIND_EVENT: 1, spec.KIND_HOUSEKEEPING: 0,
                                     spec.KIND_ANSWER: 2}
    assert set(spec.REQUIRED_KEYS) == set(spec.OPTIONAL_KEYS) == set(spec.KINDS.values())
    # the CDDL states the same id tables for tasks and stop reasons as its comments
    assert "0 vqa, 1 caption, 2 grounding" in CDDL and "0 eos, 1 max_tokens, 2 deadline" in CDDL
    for line in CDDL.splitlines():  # the CDDL's key constants are the table's
        name, _, value = line.partition(" = ")
        if value.isdigit() and name in spec.KEYS:
            assert spec.KEYS[name] == int(value), name
    assert "time-ms = 3" in CDDL and "detail = 17" in CDDL
    assert f"kind-answer = {spec.KIND_ANSWER}" in CDDL


def test_model_id_of():
    assert model_id_of("DEADBEEF" + "0" * 56) == b"\xde\xad\xbe\xef"
    for bad in ("abc", "g" * 64, "0" * 63, 42):
        with pytest.raises(ValueError, match="sha256_hex"):
            model_id_of(bad)


# ---- encoder validation: every error names the field -----------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"boxes": np.zeros((3, 5))}, "boxes: must have shape"),
    ({"boxes": [[0, 0, 1, math.nan]] * 3}, "boxes: must be finite"),
    ({"boxes": [[0, 0, 1, math.inf]] * 3}, "boxes: must be finite"),
    ({"boxes": [[5, 0, 1, 1]] * 3}, "boxes: need x2 >= x1"),
    ({"boxes": [["a", "b", "c", "d"]] * 3}, "boxes: must hold real numbers"),
    ({"boxes": [[0, 0, 1, 1], [0, 0, 1]]}, "boxes: not an array of numbers"),
    ({"scores": [0.5, 0.5]}, r"scores: must have shape \(3,\)"),
    ({"scores": [0.5, math.nan, 0.5]}, r"scores: must be finite: scores\[1\]"),
    ({"class_ids": [0, 1]}, r"class_ids: must have shape \(3,\)"),
    ({"class_ids": [0, 256, 1]}, r"class_ids: must be in 0..255, class_ids\[1\] is 256"),
    ({"class_ids": [0, -1, 1]}, "class_ids: must be in 0..255"),
    ({"class_ids": [0.0, 1.0, 1.0]}, "class_ids: must be integers"),
    ({"class_ids": [0, 2, 1], "labels": ["a", "b"]}, r"class_ids: must be in 0..1 \(one per label\)"),
    ({"labels": []}, "labels: must hold 1..256"),
    ({"labels": "ship"}, "labels: must be a list"),
    ({"labels": ["a", 3]}, r"labels\[1\]: must be a string"),
    ({"model_id": b"abc"}, "model_id: must be 4 bytes"),
    ({"model_id": "abcd"}, "model_id: must be 4 bytes"),
    ({"frame_hw": (-5, 10)}, "frame_hw.height: must be in 1.."),
    ({"frame_hw": (5, 0)}, "frame_hw.width: must be in 1.."),
    ({"frame_hw": (5,)}, r"frame_hw: must be \(height, width\)"),
    ({"tiles": (10, 2, 3, 4)}, "tiles: total 10 != nodata 2 \\+ cloud 3 \\+ inferred 4"),
    ({"tiles": (10, 2, -3, 11)}, "tiles.cloud: must be in 0.."),
    ({"tiles": (10, 2, 8)}, r"tiles: must be \(total, nodata, cloud, inferred\)"),
    ({"seq": -1}, "seq: must be in 0.."),
    ({"seq": 2**64}, "seq: must be in 0.."),
    ({"seq": 1.0}, "seq: must be an integer"),
    ({"frame_id": True}, "frame_id: must be an integer"),
    ({"capture_time_ms": None}, "capture_time_ms: must be an integer"),
    ({"georef": {"geotransform": [1, 2, 3]}}, "georef.geotransform: must be 6 numbers"),
    ({"georef": {"geotransform": [1, 2, 3, 4, 5, math.nan]}}, r"georef.geotransform\[5\]: must be finite"),
    ({"georef": {"corners": [[0, 0]] * 3}}, "georef.corners: must be 4"),
    ({"georef": {"corners": [[0, 0]] * 3 + [[91, 0]]}}, r"georef.corners\[3\].lat: must be in -90..90"),
    ({"georef": {"corners": [[0, 0]] * 3 + [[0, -181]]}}, r"georef.corners\[3\].lon: must be in -180..180"),
    ({"georef": {"corners": [[0, 0]] * 4, "geotransform": [0] * 6}}, "georef: must be None"),
    ({"georef": {"utm": [0] * 6}}, "georef: form must be"),
])
def test_encode_frame_rejects(change, message):
    with pytest.raises(ValueError, match=message):
        encode_frame(**frame_kwargs(**change))


@pytest.mark.parametrize("change, message", [
    ({"counters": {"frames_okay": 1}}, "counters: unknown counter 'frames_okay'"),
    ({"counters": {"frames_ok": -1}}, "counters.frames_ok: must be in 0.."),
    ({"counters": [("frames_ok", 1)]}, "counters: must be a mapping"),
    ({"stage_us": {"inference": (1, 2)}}, "stage_us: unknown stage 'inference'"),
    ({"stage_us": {"infer": (3, 2)}}, "stage_us.infer: p50 3 > max 2"),
    ({"stage_us": {"infer": 3}}, r"stage_us.infer: must be \(p50, max\)"),
    ({"stage_us": {"infer": (-1, 2)}}, "stage_us.infer.p50: must be >= 0"),
    ({"stage_us": {"infer": (1, math.inf)}}, "stage_us.infer.max: must be finite"),
    ({"errors": [("disk_full", None, "x")]}, r"errors\[0\].code: unknown event code 'disk_full'"),
    ({"errors": [(99, None, "x")]}, r"errors\[0\].code: unknown event code id 99"),
    ({"errors": [(1, -3, "x")]}, r"errors\[0\].frame_id: must be in 0.."),
    ({"errors": [(1, None, b"x")]}, r"errors\[0\].text: must be a string"),
    ({"errors": [(1, None)]}, r"errors\[0\]: must be \(code, frame_id or None, text\)"),
    ({"uptime_ms": -1}, "uptime_ms: must be in 0.."),
])
def test_encode_housekeeping_rejects(change, message):
    with pytest.raises(ValueError, match=message):
        encode_housekeeping(**housekeeping_kwargs(**change))


@pytest.mark.parametrize("change, message", [
    ({"code": "reboot"}, "code: unknown event code 'reboot'"),
    ({"code": 0}, "code: unknown event code id 0"),
    ({"text": None}, "text: must be a string"),
    ({"frame_id": -1}, "frame_id: must be in 0.."),
    ({"boot": 1.5}, "boot: must be an integer"),
])
def test_encode_event_rejects(change, message):
    with pytest.raises(ValueError, match=message):
        encode_event(**event_kwargs(**change))


# ---- georeference on the ground -------------------------------------------------------------

def test_georef_affine():
    lon, lat = georef_to_lonlat(GEOTRANSFORM, [0, 100, 0, 2000], [0, 0, 300, 1000])
    np.testing.assert_allclose(lon, [12.25, 12.251, 12.25, 12.27], rtol=0, atol=1e-12)
    np.testing.assert_allclose(lat, [45.5, 45.5, 45.497, 45.49], rtol=0, atol=1e-12)
    rotated = {"geotransform": [10.0, 0.5, 0.25, 20.0, -0.125, -0.5]}
    lon, lat = georef_to_lonlat(rotated, 2.0, 4.0)
    assert (lon, lat) == (10.0 + 1.0 + 1.0, 20.0 - 0.25 - 2.0)


def test_georef_corners_bilinear():
    h, w = 1000, 2000
    cols, rows = [0, w, w, 0, w / 2, w / 4], [0, 0, h, h, h / 2, 0]
    lon, lat = georef_to_lonlat(CORNERS, cols, rows, frame_size=(h, w))
    np.testing.assert_array_equal(lat[:4], [c[0] for c in CORNERS["corners"]])  # corners exactly
    np.testing.assert_array_equal(lon[:4], [c[1] for c in CORNERS["corners"]])
    np.testing.assert_allclose([lon[4], lat[4]], [12.5, 45.25], atol=1e-12)  # centre: the mean
    np.testing.assert_allclose([lon[5], lat[5]], [12.375, 45.5], atol=1e-12)  # along the top edge
    skewed = {"corners": [[10.0, 0.0], [10.0, 4.0], [0.0, 6.0], [0.0, 0.0]]}  # a trapezoid
    lon, lat = georef_to_lonlat(skewed, 50.0, 50.0, frame_size=(100, 100))
    assert (float(lon), float(lat)) == (2.5, 5.0)  # mean of the four corners
    # Over the antimeridian: the short way round, longitudes back in -180..180
    dateline = {"corners": [[1.0, 179.0], [1.0, -179.0], [0.0, -179.0], [0.0, 179.0]]}
    lon, _ = georef_to_lonlat(dateline, [0, 25, 50, 75, 100], [0] * 5, frame_size=(10, 100))
    np.testing.assert_allclose(lon, [179.0, 179.5, 180.0, -179.5, -179.0], atol=1e-12)


def test_georef_from_a_decoded_record():
    rec = decode_record(encode_frame(**frame_kwargs(georef=CORNERS)))
    lon, lat = georef_to_lonlat(rec.georef, rec.boxes[:, 0], rec.boxes[:, 1], frame_size=rec.frame_size)
    assert lon.shape == lat.shape == (3,) and np.all((lat >= 45.0) & (lat <= 45.5))
    with pytest.raises(ValueError, match="frame_size"):
        georef_to_lonlat(rec.georef, 0, 0)
    with pytest.raises(ValueError, match="georef"):
        georef_to_lonlat({"utm": []}, 0, 0)


# ---- fuzz: only RecordError ever escapes the decoder -----------------------------------------

def _decode_or_record_error(data: bytes) -> None:
    try:
        decode_record(data)
    except RecordError:
        pass


FUZZ_SEEDS = [make() for make in VALID_RECORDS.values()]


@settings(max_examples=examples(1500), deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data):
    _decode_or_record_error(data)


@settings(max_examples=examples(1000), deadline=None)
@given(st.sampled_from(FUZZ_SEEDS), st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 7)), max_size=4),
       st.integers(0, 2**20), st.sampled_from(["flip", "truncate", "insert", "splice"]),
       st.binary(max_size=9))
def test_fuzz_mutated_records(seed, flips, cut, how, extra):
    data = bytearray(seed)
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    cut %= len(data) + 1
    if how == "truncate":
        data = data[:cut]
    elif how == "insert":
        data[cut:cut] = extra
    elif how == "splice":
        data[cut:cut + len(extra)] = extra
    _decode_or_record_error(bytes(data))


CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.integers(0, 20), inner, max_size=6)
    | st.builds(CBORTag, st.sampled_from([0, 1, 2, 4, 5, 28, 29, 30, 35, 64, 69, 258, 55799]), inner),
    max_leaves=20)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FUZZ_SEEDS), st.dictionaries(st.integers(0, 20), CBOR_VALUES, max_size=3))
def test_fuzz_well_formed_cbor_with_wrong_values(seed, replace):
    rec = cbor2.loads(seed)
    rec.update(replace)
    try:
        data = cbor2.dumps(rec)
    except (cbor2.CBOREncodeError, ValueError, TypeError):
        return  # a value cbor2 cannot encode (e.g. a tag with an invalid payload): nothing to fuzz
    _decode_or_record_error(data)


def test_georef_goes_as_float32_only_when_it_costs_under_a_tenth_of_a_pixel():
    coarse = [-4.9, 2.7e-5, 0.0, 36.05, 0.0, -2.2e-5]        # ~2.4 m pixels: float32 is plenty
    fine = [179.912345678, 1e-8, 0.0, 36.05, 0.0, -1e-8]      # ~1 mm pixels at the antimeridian
    kw = frame_kwargs(n=10, seed=1)
    for gt, want32 in ((coarse, True), (fine, False)):
        data = encode_frame(**{**kw, "georef": {"geotransform": gt}})
        rec = decode_record(data)
        h, w = rec.frame_size
        lon0, lat0 = georef_to_lonlat({"geotransform": gt}, [0, w], [0, h])
        lon1, lat1 = georef_to_lonlat(rec.georef, [0, w], [0, h])
        err_px = max(np.abs(lon1 - lon0).max() / abs(gt[1]), np.abs(lat1 - lat0).max() / abs(gt[5]))
        assert err_px <= 0.1
        assert (rec.georef["geotransform"] != gt) == want32
    short = len(encode_frame(**{**kw, "georef": {"geotransform": coarse}}))
    assert short - len(encode_frame(**kw)) <= 6 * 5 + 4  # 6 float32 + the key and array headers
