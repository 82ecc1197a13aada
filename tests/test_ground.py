"""Ground tool: decode (edge/ground/decode.py), writers (outputs.py), PNG quicklooks (render.py) and
the `edge-ground` command line (cli.py), on streams built with the flight encoders
(edge/downlink/record.py, packets.py)."""
from __future__ import annotations

import csv
import io
import json
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edge.downlink.packets import APID_BY_KIND, Packetizer
from edge.downlink.record import (encode_answer, encode_event, encode_frame, encode_housekeeping,
                                  model_id_of)
from edge.ground import cli
from edge.ground.decode import (DecodedRecord, SeqGap, StreamDecoder, decode_stream, iter_decode)
from edge.ground.outputs import (CSV_COLUMNS, REPORT_KIND, Stats, features, read_jsonl,
                                 record_to_json, stats_summary, write_csv, write_geojson, write_jsonl)
from edge.ground.records import georef_to_lonlat
from edge.ground.render import BACKGROUND, PALETTE, render_frame, thumbnail
from edge.manifest import load_manifest
from tests.conftest import examples

FRAME, HOUSEKEEPING, EVENT, ANSWER = APID_BY_KIND[1], APID_BY_KIND[2], APID_BY_KIND[3], APID_BY_KIND[4]
SHIP = load_manifest().model("ship")
SHIP_ID = model_id_of(SHIP.files[SHIP.default_variant].sha256)
UNKNOWN_ID = b"\xde\xad\xbe\xef"
VLM_ID = b"\x1f\x2e\x3d\x4c"   # an on-board VLM (no manifest entry: its labels come in the record)
T0 = 1_717_243_200_000  # 2024-06-01T12:00:00Z
GEOTRANSFORM = {"geotransform": [10.0, 1e-4, 0.0, 50.0, 0.0, -1e-4]}
CORNERS = {"corners": [[45.0, 179.9], [45.0, -179.9], [44.8, -179.9], [44.8, 179.9]]}  # antimeridian
SCORE_TOL = 1 / 510 + 1e-12
BOX_TOL = 0.5 + 1e-9


def frame_spec(seq, frame_id, n, rng, *, hw=(600, 800), georef=None, labels=None, model_id=SHIP_ID):
    h, w = hw
    xy = rng.uniform(0, [w - 60, h - 60], size=(n, 2))
    wh = rng.uniform(4, 60, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    class_ids = rng.integers(0, len(labels), n) if labels else None
    return dict(seq=seq, frame_id=frame_id, capture_time_ms=T0 + 1000 * seq, model_id=model_id,
                frame_hw=hw, tiles=(12, 2, 3, 7), boxes=boxes, scores=rng.uniform(0, 1, n),
                class_ids=class_ids, georef=georef, labels=labels)


def scenario(seed=0):
    """[(apid, record bytes, spec)]: frames with both georef forms, labels, an unknown model, no
    georef and no detections; housekeeping; events. Seqs 1..8 without a gap."""
    rng = np.random.default_rng(seed)
    frames = [frame_spec(1, 100, 5, rng, georef=GEOTRANSFORM),
              frame_spec(2, 101, 4, rng, georef=CORNERS, labels=["car", "truck", "bus"]),
              frame_spec(4, 102, 3, rng, model_id=UNKNOWN_ID),  # no georef, manifest knows no such model
              frame_spec(5, 103, 0, rng, georef=GEOTRANSFORM),
              frame_spec(7, 104, 60, rng, hw=(1000, 1000), georef=GEOTRANSFORM)]  # several packets
    items = [(FRAME, encode_frame(**spec), spec) for spec in frames]
    hk = [dict(seq=3, time_ms=T0 + 3000, uptime_ms=3000, boot=2,
               counters={"frames_ok": 2, "detections": 9}, stage_us={"infer": (800, 1500)},
               errors=[("input_error", 7, "truncated dump")]),
          dict(seq=8, time_ms=T0 + 8000, uptime_ms=8000, boot=2,
               counters={"frames_ok": 5, "detections": 72}, stage_us={"frame": (9000, 12000)})]
    items += [(HOUSEKEEPING, encode_housekeeping(**spec), spec) for spec in hk]
    ev = [dict(seq=6, time_ms=T0 + 6000, boot=2, code="frame_skipped", text="redo", frame_id=102)]
    items += [(EVENT, encode_event(**spec), spec) for spec in ev]
    items.sort(key=lambda item: item[2]["seq"])
    return items


def answer_scenario():
    """[(apid, record bytes, spec)], seqs 1..5: a detector frame; a VLM grounding answer about the same
    frame (its frame record with labels and the VLM's model id, then its answer record); a VQA answer
    cut to fit the record; a caption of the standing question (no question id, no frame)."""
    rng = np.random.default_rng(3)
    det = frame_spec(1, 200, 3, rng, georef=GEOTRANSFORM)
    grounding = frame_spec(2, 200, 4, rng, georef=GEOTRANSFORM, labels=["ship", "oil tank", "船"],
                           model_id=VLM_ID)
    answers = [dict(seq=3, time_ms=T0 + 3000, question_id=7, frame_id=200, model_id=VLM_ID, task="grounding",
                    text='[{"label": "ship", "bbox": [0.1, 0.2, 0.3, 0.4]}]', tokens=41, stop="eos",
                    timings_ms={"vision": 380, "prefill": 220, "decode": 800}),
               dict(seq=4, time_ms=T0 + 4000, question_id=8, frame_id=200, model_id=VLM_ID, task="vqa",
                    text="Yes, " + "the runway is clear; " * 80, tokens=256, stop="max_tokens",
                    timings_ms={"vision": 379.6, "prefill": 219.5, "decode": 5120}),
               dict(seq=5, time_ms=T0 + 5000, question_id=None, frame_id=None, model_id=VLM_ID,
                    task="caption", text="A harbour with two piers, \"quoted\",\nnew line.", tokens=17,
                    stop="deadline", timings_ms={"decode": 60_000})]
    return ([(FRAME, encode_frame(**det), det), (FRAME, encode_frame(**grounding), grounding)]
            + [(ANSWER, encode_answer(**spec), spec) for spec in answers])


def packets_of(items, max_packet_bytes=64, packetizer=None):
    packetizer = packetizer or Packetizer(max_packet_bytes)
    return [packet for apid, blob, _ in items for packet in packetizer.packetize(blob, apid)]


def stream_of(items, max_packet_bytes=64):
    return b"".join(packets_of(items, max_packet_bytes))


def check_frame(decoded: DecodedRecord, spec):
    r = decoded.record
    assert r.kind == "frame" and r.seq == spec["seq"] and r.frame_id == spec["frame_id"]
    assert r.frame_size == tuple(spec["frame_hw"]) and r.time_ms == spec["capture_time_ms"]
    assert r.model_id == spec["model_id"].hex()
    np.testing.assert_allclose(r.boxes, np.asarray(spec["boxes"]).reshape(-1, 4), atol=BOX_TOL, rtol=0)
    np.testing.assert_allclose(r.scores, spec["scores"], atol=SCORE_TOL, rtol=0)
    ids = np.zeros(len(r.scores), int) if spec["class_ids"] is None else spec["class_ids"]
    assert r.class_ids.tolist() == list(ids)
    if spec["labels"] is not None:
        assert decoded.labels == tuple(spec["labels"][i] for i in ids)
    elif spec["model_id"] == SHIP_ID:
        assert decoded.labels == ("ship",) * len(ids) and decoded.model == "ship"
    else:
        assert decoded.labels == tuple(f"class_{i}" for i in ids) and decoded.model is None


# ---- decode ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_packet_bytes", [64, 1024])
@pytest.mark.parametrize("source", ["bytes", "path", "file", "chunks"])
def test_decode_gives_every_record_back(tmp_path, max_packet_bytes, source):
    items = scenario()
    data = stream_of(items, max_packet_bytes)
    path = tmp_path / "stream.bin"
    path.write_bytes(data)
    src = {"bytes": data, "path": path, "file": open(path, "rb"),
           "chunks": (data[i:i + 37] for i in range(0, len(data), 37))}[source]
    records, report = decode_stream(src, chunk_bytes=1000)
    assert [d.record.seq for d in records] == list(range(1, 9))
    for d, (_, _, spec) in zip(records, items):
        if d.record.kind == "frame":
            check_frame(d, spec)
        elif d.record.kind == "housekeeping":
            assert d.record.counters == spec["counters"] and d.record.boot == 2
        else:
            assert (d.record.code, d.record.frame_id, d.record.text) == ("frame_skipped", 102, "redo")
    assert report.clean and report.records_ok == 8 and report.stream_bytes == len(data)
    assert report.records_by_kind == {"frame": 5, "housekeeping": 2, "event": 1}
    assert (report.seq_min, report.seq_max, report.missing_seqs) == (1, 8, 0)
    assert report.frame_ids == 5 and report.frame_id_ranges == [[100, 104]]
    assert report.packets.packets_ok == len(packets_of(items, max_packet_bytes))
    json.dumps(report.as_dict())  # JSON-native


def test_iterator_streams_and_reports_progress(tmp_path):
    data = stream_of(scenario())
    path = tmp_path / "s.bin"
    path.write_bytes(data)
    seen = []
    it = iter_decode(path, progress=seen.append, chunk_bytes=100)
    first = next(it)
    assert first.record.seq == 1 and sum(seen) < len(data)  # not read whole before the first record
    rest = list(it)
    assert len(rest) == 7 and sum(seen) == len(data) and it.report.records_ok == 8


def test_streaming_decoder_matches_one_shot():
    data = stream_of(scenario())
    dec = StreamDecoder()
    out = []
    for i in range(0, len(data), 5):
        out += dec.feed(data[i:i + 5])
    out += dec.finish()
    assert [d.record.seq for d in out] == [d.record.seq for d in decode_stream(data).records]
    assert dec.finish() == []


def test_resent_records_are_duplicates_emitted_once():
    items = scenario()
    packetizer = Packetizer(64)
    packets = packets_of(items, packetizer=packetizer)
    # after a restart the flight software re-sends seq 4 and 5: same bytes, new packet counts
    packets += packets_of([items[3], items[4]], packetizer=packetizer)
    # and a record with an old seq but other bytes: a conflict
    other = dict(items[0][2], frame_id=999)
    packets += packetizer.packetize(encode_frame(**other), FRAME)
    records, report = decode_stream(b"".join(packets))
    assert [d.record.seq for d in records] == list(range(1, 9))
    assert report.duplicate_records == 3 and report.duplicate_conflicts == 1
    assert sorted(report.duplicate_seqs) == [1, 4, 5]
    assert report.packets.duplicates == 0 and report.packets.gap_count == 0  # invisible to packets
    assert report.frame_id_repeat_count == 0 and not report.clean


def test_seq_gap_and_frame_id_repeat_are_reported():
    items = [item for item in scenario() if item[2]["seq"] not in (5, 6)]  # evicted on board
    redo = dict(items[0][2], seq=9)  # frame 100 processed again under a new seq
    items.append((FRAME, encode_frame(**redo), redo))
    records, report = decode_stream(stream_of(items))
    assert [d.record.seq for d in records] == [1, 2, 3, 4, 7, 8, 9]
    assert report.seq_gaps == [SeqGap(5, 6, 2)] and report.missing_seqs == 2
    assert report.seq_gap_count == 1
    assert report.frame_id_repeat_count == 1
    assert tuple(report.frame_id_repeats[0]) == (100, 1, 9)
    assert report.packets.clean and not report.clean


def test_garbage_and_crc_failure_are_reported_and_the_rest_decodes():
    items = scenario()
    packets = packets_of(items, max_packet_bytes=1024)  # one packet per record but the big frame
    assert len(packets) == 8
    bad = bytearray(packets[1])
    bad[20] ^= 0x40  # seq 2's only packet
    noise = bytes(range(0x80, 0xC0))  # no candidate header in it
    data = packets[0] + noise + bytes(bad) + b"\xff" * 7 + b"".join(packets[2:]) + noise[:5]
    records, report = decode_stream(data)
    assert [d.record.seq for d in records] == [1, 3, 4, 5, 6, 7, 8]
    assert report.packets.crc_failures >= 1 and report.packets.garbage_bytes >= len(noise) + 12
    assert report.packets.gap_count == 1  # the frame APID's count skipped the lost packet
    assert report.missing_seqs == 1 and report.seq_gaps == [SeqGap(2, 2, 1)]


def test_undecodable_record_is_counted_and_decoding_goes_on():
    items = scenario()
    packetizer = Packetizer(64)
    packets = packets_of(items[:2], packetizer=packetizer)
    packets += packetizer.packetize(b"\xa1\x00\x18\x63", FRAME)  # CBOR map {0: 99}: an unknown kind
    packets += packetizer.packetize(b"\xff\xfe", EVENT)        # not CBOR
    packets += packets_of(items[2:], packetizer=packetizer)
    records, report = decode_stream(b"".join(packets))
    assert len(records) == 8 and report.decode_errors == 2
    assert "kind: 99" in report.errors[0].message and report.errors[1].apid == EVENT
    assert report.packets.clean and not report.clean


def test_manifest_is_optional():
    records, report = decode_stream(stream_of(scenario()), manifest=False)
    assert records[0].labels == ("class_0",) * 5 and records[0].model is None
    assert records[1].labels[0] in ("car", "truck", "bus")  # the record's own labels still win
    _, report = decode_stream(stream_of(scenario()), manifest="/nonexistent/manifest.json")
    assert "cannot read" in report.manifest_error


# ---- writers ----------------------------------------------------------------------------------------

def decoded_scenario():
    items = scenario()
    records, report = decode_stream(stream_of(items))
    return items, records, report


def test_jsonl_has_every_field_and_reads_back():
    items, records, report = decoded_scenario()
    buf = io.StringIO()
    assert write_jsonl(records, buf, report) == 8
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 9 and lines[-1]["kind"] == REPORT_KIND
    assert lines[-1]["report"] == json.loads(json.dumps(report.as_dict()))
    frame = lines[0]
    assert {"seq", "time_utc", "frame_id", "model_id", "model", "frame_size", "tiles", "georef",
            "box_scale", "labels", "detections"} <= frame.keys()
    assert frame["model"] == "ship" and frame["tiles"] == {"total": 12, "nodata": 2, "cloud": 3, "inferred": 7}
    for det, box, score in zip(frame["detections"], items[0][2]["boxes"], items[0][2]["scores"]):
        assert det["label"] == "ship" and det["class_id"] == 0
        assert abs(det["score"] - score) <= SCORE_TOL
        assert np.allclose(det["bbox"], box, atol=BOX_TOL)
        x1, y1, x2, y2 = det["bbox"]
        lon, lat = georef_to_lonlat(GEOTRANSFORM, (x1 + x2) / 2, (y1 + y2) / 2)
        assert (det["lon"], det["lat"]) == pytest.approx((lon, lat))
        assert len(det["corners"]) == 4
    no_geo = next(line for line in lines if line.get("frame_id") == 102)
    assert no_geo["georef"] is None and all("lon" not in d for d in no_geo["detections"])
    hk = next(line for line in lines if line["kind"] == "housekeeping")
    assert hk["stage_us"] == {"infer": [800, 1500]}
    assert hk["errors"] == [{"code": "input_error", "frame_id": 7, "text": "truncated dump"}]
    # read back: the same objects, and the report
    reader = read_jsonl(io.StringIO(buf.getvalue()))
    again = list(reader)
    assert [record_to_json(d) for d in again] == lines[:-1]
    assert reader.report == lines[-1]["report"] and reader.bad_lines == 0


def test_geojson_polygons_are_the_georeferenced_box_corners():
    items, records, _ = decoded_scenario()
    buf = io.StringIO()
    n = write_geojson(records, buf)
    doc = json.loads(buf.getvalue(), parse_constant=lambda c: pytest.fail(f"{c} in GeoJSON"))
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == n == 5 + 4 + 3 + 60
    by_frame = {}
    for feature in doc["features"]:
        assert feature["type"] == "Feature"
        assert {"frame_id", "seq", "label", "score", "bbox_px", "time"} <= feature["properties"].keys()
        by_frame.setdefault(feature["properties"]["frame_id"], []).append(feature)
    for d in records:
        r = d.record
        if r.kind != "frame" or not len(r.scores):
            continue
        for feature, box in zip(by_frame[r.frame_id], r.boxes):
            assert feature["properties"]["bbox_px"] == box.tolist()
            if r.georef is None:
                assert feature["geometry"] is None
                continue
            x1, y1, x2, y2 = box
            lon, lat = georef_to_lonlat(r.georef, [x1, x2, x2, x1], [y1, y1, y2, y2], frame_size=r.frame_size)
            if feature["geometry"]["type"] == "MultiPolygon":  # across the antimeridian: cut there
                parts = [part[0] for part in feature["geometry"]["coordinates"]]
                assert len(parts) == 2 and all(part[0] == part[-1] for part in parts)
                assert {max(p[0] for p in part) for part in parts} >= {180.0}
                assert {min(p[0] for p in part) for part in parts} >= {-180.0}
                vertices = {tuple(p) for part in parts for p in part}
                assert all(any(np.allclose(c, v) for v in vertices) for c in zip(lon, lat))
                continue
            assert feature["geometry"]["type"] == "Polygon"
            ring = feature["geometry"]["coordinates"][0]
            assert len(ring) == 5 and ring[0] == ring[-1]
            np.testing.assert_allclose(sorted(map(tuple, ring[:4])), sorted(zip(lon, lat)), rtol=0, atol=1e-12)
            # [lon, lat] order: the test scenes lie near lon 10 / lat 50 or lon +-180 / lat 45
            assert all(-90 <= p[1] <= 90 for p in ring)
            assert abs(ring[0][1] - (50 if "geotransform" in r.georef else 45)) < 1
            if "geotransform" in r.georef:  # counter-clockwise (RFC 7946) where no antimeridian is crossed
                xs, ys = np.array(ring[:4]).T
                assert (xs * np.roll(ys, -1) - np.roll(xs, -1) * ys).sum() > 0


def test_box_across_the_antimeridian_is_cut_into_a_multipolygon():
    spec = dict(frame_spec(1, 1, 0, np.random.default_rng(0), georef=CORNERS),
                boxes=[[390, 100, 410, 120], [100, 100, 120, 120]], scores=[0.5, 0.6])  # x 400: lon 180
    records, _ = decode_stream(stream_of([(FRAME, encode_frame(**spec), spec)]))
    across, east = (f["geometry"] for f in features(records[0]))
    assert east["type"] == "Polygon" and all(p[0] > 179.9 for p in east["coordinates"][0])
    assert across["type"] == "MultiPolygon"
    west_part, east_part = (part[0] for part in across["coordinates"])
    assert [p[0] for p in west_part[:-1]].count(180.0) == 2 and min(p[0] for p in west_part) > 179.9
    assert [p[0] for p in east_part[:-1]].count(-180.0) == 2 and max(p[0] for p in east_part) < -179.9
    for ring in (west_part, east_part):
        xs, ys = np.array(ring[:-1]).T
        assert (xs * np.roll(ys, -1) - np.roll(xs, -1) * ys).sum() > 0  # counter-clockwise


def test_csv_rows_per_detection():
    _, records, _ = decoded_scenario()
    buf = io.StringIO(newline="")
    assert write_csv(records, buf) == 72
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 72
    first = records[0].record
    assert rows[0]["seq"] == "1" and rows[0]["frame_id"] == "100" and rows[0]["label"] == "ship"
    assert rows[0]["model_id"] == first.model_id and rows[0]["time_utc"] == first.time_utc
    assert [float(rows[0][k]) for k in ("x1", "y1", "x2", "y2")] == first.boxes[0].tolist()
    assert float(rows[0]["lon"]) == pytest.approx(10.0 + 1e-4 * first.boxes[0, [0, 2]].mean())
    unknown = [row for row in rows if row["frame_id"] == "102"]
    assert len(unknown) == 3 and all(row["lon"] == row["lat"] == "" for row in unknown)
    assert {row["label"] for row in unknown} == {"class_0"}


def test_stats_summary():
    _, records, report = decoded_scenario()
    stats = stats_summary(records, report)
    assert stats["records"] == {"event": 1, "frame": 5, "housekeeping": 2}
    assert stats["frames"] == 5 and stats["detections"] == 72
    assert sum(stats["detections_by_label"].values()) == 72 and stats["detections_by_label"]["ship"] == 65
    assert stats["tiles"] == {"total": 60, "nodata": 10, "cloud": 15, "inferred": 35}
    assert stats["last_housekeeping"]["seq"] == 8
    assert stats["last_housekeeping"]["counters"] == {"frames_ok": 5, "detections": 72}
    assert stats["events_by_code"] == {"frame_skipped": 1}
    assert stats["stream_bytes"] == report.stream_bytes
    assert stats["bytes_per_detection"] == report.stream_bytes / 72
    assert stats["packets"]["crc_failures"] == 0 and stats["integrity"]["clean"] is True
    bare = Stats()
    assert bare.summary()["packets"] is None and bare.summary()["bytes_per_detection"] is None


# ---- VLM answers (kind 4) -------------------------------------------------------------------------

def test_answers_decode_and_go_to_every_output(tmp_path, capsys):
    items = answer_scenario()
    records, report = decode_stream(stream_of(items, max_packet_bytes=100))
    assert [d.record.seq for d in records] == [1, 2, 3, 4, 5] and report.clean
    assert report.records_by_kind == {"frame": 2, "answer": 3}
    # the detector's and the VLM's frame records of frame 200 are not a repeat (other model id)
    assert report.frame_id_repeat_count == 0 and report.frame_ids == 1
    check_frame(records[1], items[1][2])
    assert records[1].model is None and set(records[1].labels) <= {"ship", "oil tank", "船"}
    for d, (apid, _, spec) in zip(records[2:], items[2:]):
        r = d.record
        assert apid == 0x103 and r.kind == "answer"
        assert (r.question_id, r.frame_id, r.task, r.tokens, r.model_id) == \
            (spec["question_id"], spec["frame_id"], spec["task"], spec["tokens"], VLM_ID.hex())
        assert r.stop == spec["stop"] and set(r.timings_ms) == {"vision", "prefill", "decode"}
    vqa = records[3].record
    full = items[3][2]["text"].encode()
    assert vqa.text_truncated and vqa.text_bytes == len(full) > 1024 and full.startswith(vqa.text.encode())
    assert vqa.timings_ms == {"vision": 380, "prefill": 220, "decode": 5120}
    assert records[4].record.timings_ms == {"vision": 0, "prefill": 0, "decode": 60_000}

    # JSON Lines: every answer field; read back to the same objects
    buf = io.StringIO()
    assert write_jsonl(records, buf, report) == 5
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    answers = [line for line in lines if line["kind"] == "answer"]
    assert len(answers) == 3 and "detections" not in answers[0]
    assert answers[0] == {**answers[0], "question_id": 7, "frame_id": 200, "task": "grounding",
                          "text": items[2][2]["text"], "text_bytes": None, "tokens": 41, "stop": "eos",
                          "timings_ms": {"vision": 380, "prefill": 220, "decode": 800},
                          "model_id": VLM_ID.hex()}
    assert answers[1]["text_bytes"] == len(full) and answers[2]["question_id"] is None
    assert answers[2]["text"] == items[4][2]["text"]
    again = list(read_jsonl(io.StringIO(buf.getvalue())))
    assert [record_to_json(d) for d in again] == lines[:-1]
    # CSV: detection rows only -- the grounding answer's come with its frame record's labels
    out = io.StringIO(newline="")
    assert write_csv(records, out) == 3 + 4
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    vlm_rows = [row for row in rows if row["model_id"] == VLM_ID.hex()]
    assert len(vlm_rows) == 4 and {row["label"] for row in vlm_rows} <= {"ship", "oil tank", "船"}
    assert all(row["lon"] != "" for row in vlm_rows)
    # GeoJSON: the grounding detections, georeferenced like any other
    gj = io.StringIO()
    assert write_geojson(records, gj) == 7
    # stats, from the stream and from the JSONL it wrote: the same
    stats = stats_summary(records, report)
    assert stats["records"] == {"answer": 3, "frame": 2} and stats["detections"] == 7
    assert stats["answers"] == {"count": 3, "by_task": {"caption": 1, "grounding": 1, "vqa": 1},
                                "by_stop": {"deadline": 1, "eos": 1, "max_tokens": 1},
                                "tokens": 41 + 256 + 17, "truncated": 1,
                                "ms_total": {"vision": 760, "prefill": 440, "decode": 65_920}}
    assert stats_summary(again, None)["answers"] == stats["answers"]
    # the CLI: decode writes the report and the outputs; stats reads them back
    path = tmp_path / "answers.bin"
    path.write_bytes(stream_of(items))
    code, out_line, err = run(capsys, "decode", path, "--out", tmp_path / "out")
    assert code == 0 and err == ""
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["records_by_kind"] == {"frame": 2, "answer": 3} and rep["frame_id_repeat_count"] == 0
    jsonl = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert sum(line["kind"] == "answer" for line in jsonl) == 3


def test_a_repeated_vlm_frame_record_is_still_a_repeat():
    items = answer_scenario()[:2]
    again = dict(items[1][2], seq=6)
    items.append((FRAME, encode_frame(**again), again))
    _, report = decode_stream(stream_of(items))
    assert report.frame_id_repeat_count == 1 and report.frame_id_repeats[0].frame_id == 200


# ---- render ----------------------------------------------------------------------------------------

def one_box_record(hw, boxes, class_ids=None, labels=None):
    spec = dict(seq=1, frame_id=7, capture_time_ms=T0, model_id=SHIP_ID, frame_hw=hw, tiles=(1, 0, 0, 1),
                boxes=np.array(boxes, float), scores=np.full(len(boxes), 0.9), class_ids=class_ids,
                labels=labels)
    return decode_stream(stream_of([(FRAME, encode_frame(**spec), spec)])).records[0]


def test_render_on_blank_canvas(tmp_path):
    d = one_box_record((300, 400), [[40, 60, 200, 180], [300, 20, 310, 30]], class_ids=[0, 1],
                       labels=["boat", "buoy"])
    out = tmp_path / "f.png"
    assert render_frame(d, out) == 1.0
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (300, 400, 3)
    assert tuple(img[120, 40]) == PALETTE[0] and tuple(img[120, 199]) == PALETTE[0]  # left / right edge
    assert tuple(img[60, 120]) == PALETTE[0] and tuple(img[179, 120]) == PALETTE[0]  # top / bottom edge
    assert tuple(img[150, 120]) == BACKGROUND  # inside
    assert tuple(img[25, 300]) == PALETTE[1] and tuple(img[25, 305]) == BACKGROUND
    assert (img[62:80, 42:100].max(axis=2) < 60).any()  # the "boat 0.90" tag (dark text)
    # shrunk: factor 4, scale 1/4
    assert render_frame(d, out, max_side=100) == 0.25
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (75, 100, 3) and tuple(img[30, 10]) == PALETTE[0] and tuple(img[37, 30]) == BACKGROUND


def test_render_over_a_uint16_frame_opened_with_open_frame(tmp_path):
    rng = np.random.default_rng(3)
    h, w = 90, 120
    frame = rng.integers(200, 900, size=(h, w, 4), dtype=np.uint16)  # dark 12-bit scene, B G R NIR
    frame[:, :, 2] += 2000  # red band bright
    (tmp_path / "scene.raw").write_bytes(frame.astype("<u2").tobytes())
    (tmp_path / "scene.json").write_text(json.dumps({"shape": [h, w, 4], "dtype": "uint16"}))
    d = one_box_record((h, w), [[30, 15, 90, 75]])
    out = tmp_path / "scene.png"
    assert render_frame(d, out, frame=tmp_path / "scene.raw", max_side=60) == 0.5
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (45, 60, 3)
    thumb = thumbnail(frame, 2)
    assert tuple(img[20, 15]) == PALETTE[0] and tuple(img[20, 44]) == PALETTE[0]  # box edges
    assert (img[30, 30] == thumb[30, 30]).all() and tuple(img[30, 30]) != PALETTE[0]  # inside: the frame
    assert (img[2, 2] == thumb[2, 2]).all()
    with pytest.raises(ValueError, match="frame is 90 x 120"):
        render_frame(one_box_record((100, 120), [[1, 1, 5, 5]]), out, frame=frame)


def test_thumbnail_block_means_and_bands():
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, size=(10, 7, 3), dtype=np.uint8)
    thumb = thumbnail(arr, 3)  # partial blocks at the right and bottom edges
    assert thumb.shape == (4, 3, 3)
    for i in range(4):
        for j in range(3):
            block = arr[3 * i:3 * i + 3, 3 * j:3 * j + 3].reshape(-1, 3).astype(float)
            assert np.abs(thumb[i, j] - block.mean(axis=0)).max() <= 0.5 + 1e-6
    grey = thumbnail(arr[:, :, 0], 1)
    assert grey.shape == (10, 7, 3) and (grey[:, :, 0] == arr[:, :, 0]).all() and (grey[:, :, 2] == arr[:, :, 0]).all()
    four = np.zeros((8, 8, 4), np.uint16)
    four[:, :, 2] = np.arange(64).reshape(8, 8) + 1000  # only the "red" band varies
    rgb = thumbnail(four, 1)
    assert rgb[:, :, 0].max() == 255 and rgb[:, :, 1].max() == 0  # default bands 2, 1, 0: red shown as red
    assert thumbnail(four, 1, bands=[0, 1, 2])[:, :, 2].max() == 255
    with pytest.raises(ValueError, match="bands"):
        thumbnail(four, 1, bands=[5, 1, 0])


# ---- CLI ------------------------------------------------------------------------------------------

def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def stream_file(tmp_path):
    path = tmp_path / "downlink.bin"
    path.write_bytes(stream_of(scenario()) + b"\x00garbage")
    return path


def test_cli_decode_writes_the_outputs(tmp_path, stream_file, capsys):
    code, out, err = run(capsys, "decode", stream_file, "--out", tmp_path / "out", "--no-progress")
    assert code == 0 and err == ""
    summary = json.loads(out)
    assert len(out.splitlines()) == 1 and summary["records"] == 8 and summary["detections"] == 72
    assert summary["garbage_bytes"] == 8 and summary["clean"] is False
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {"records.jsonl", "detections.geojson", "detections.csv", "report.json"}
    assert len(json.loads((tmp_path / "out" / "detections.geojson").read_text())["features"]) == 72
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["packets"]["garbage_bytes"] == 8 and report["records_ok"] == 8
    # single outputs by name; stdin as '-'
    stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(stream_file.read_bytes())))
    old, sys.stdin = sys.stdin, stdin
    try:
        code, out, _ = run(capsys, "decode", "-", "--csv", tmp_path / "only.csv")
    finally:
        sys.stdin = old
    assert code == 0 and json.loads(out)["records"] == 8
    assert len((tmp_path / "only.csv").read_text().splitlines()) == 73


def test_cli_stats_of_jsonl_equals_stats_of_stream(tmp_path, stream_file, capsys):
    assert run(capsys, "decode", stream_file, "--out", tmp_path / "out")[0] == 0
    code, from_stream, _ = run(capsys, "stats", stream_file, "--json")
    assert code == 0
    code, from_jsonl, _ = run(capsys, "stats", tmp_path / "out" / "records.jsonl", "--json")
    assert code == 0 and json.loads(from_jsonl) == json.loads(from_stream)
    assert json.loads(from_stream)["detections"] == 72
    code, table, _ = run(capsys, "stats", stream_file)
    assert code == 0 and "detections_by_label" in table and "bytes_per_detection" in table


def test_cli_render_from_jsonl_and_stream(tmp_path, stream_file, capsys):
    assert run(capsys, "decode", stream_file, "--out", tmp_path / "out")[0] == 0
    jsonl = tmp_path / "out" / "records.jsonl"
    code, out, _ = run(capsys, "render", jsonl, "--out", tmp_path / "a.png", "--frame-id", 104, "--max-side", 500)
    assert code == 0 and json.loads(out)["rendered"][0]["scale"] == 0.5
    assert Image.open(tmp_path / "a.png").size == (500, 500)
    code, out, _ = run(capsys, "render", stream_file, "--out", tmp_path / "b.png")
    assert code == 0 and json.loads(out)["rendered"][0]["frame_id"] == 100
    assert Image.open(tmp_path / "b.png").size == (800, 600)
    (tmp_path / "all").mkdir()
    code, out, _ = run(capsys, "render", jsonl, "--out", tmp_path / "all")
    assert code == 0 and len(json.loads(out)["rendered"]) == 5
    assert len(list((tmp_path / "all").glob("frame_*_seq_*.png"))) == 5
    # a frame file, bands chosen
    frame = np.full((600, 800, 3), 40, np.uint8)
    np.save(tmp_path / "f.npy", frame)
    code, _, _ = run(capsys, "render", stream_file, "--out", tmp_path / "c.png", "--frame", tmp_path / "f.npy",
                     "--bands", "2,1,0")
    assert code == 0 and tuple(np.asarray(Image.open(tmp_path / "c.png"))[5, 5]) == (40, 40, 40)


@pytest.mark.parametrize("argv, message", [
    (["decode", "{tmp}/missing.bin"], "cannot read"),
    (["decode", "{tmp}"], "cannot read"),
    (["stats", "{tmp}/missing.bin"], "cannot read"),
    (["render", "{stream}", "--out", "{tmp}/x.png", "--frame-id", "9999"], "no frame record with frame id 9999"),
    (["render", "{stream}", "--out", "{tmp}/x.png", "--frame", "{tmp}/nope.npy"], "--frame"),
    (["render", "{stream}", "--out", "{tmp}/x.png", "--frame", "{tmp}/small.npy"], "frame is 4 x 4"),
    (["decode", "{stream}", "--manifest", "{tmp}/missing.json"], "--manifest"),
    (["decode", "{stream}", "--out", "{stream}/sub"], "--out"),
])
def test_cli_unusable_input_exits_2_with_one_line(tmp_path, stream_file, capsys, argv, message):
    np.save(tmp_path / "small.npy", np.zeros((4, 4, 3), np.uint8))
    argv = [a.format(tmp=tmp_path, stream=stream_file) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_cli_bad_arguments_exit_2(capsys):
    assert run(capsys, "render", "x", "--out", "y", "--bands", "a,b")[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys)[0] == 2


# ---- fuzz: no input bytes make it raise --------------------------------------------------------------

def check_decodes(data: bytes):
    records, report = decode_stream(data, chunk_bytes=97)
    for d in records:  # and the writers take whatever decoded
        json.dumps(record_to_json(d), allow_nan=False)
        for f in features(d):
            json.dumps(f, allow_nan=False)
    assert report.stream_bytes == len(data)
    json.dumps(report.as_dict())
    return records, report


@settings(max_examples=examples(150), deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(data):
    check_decodes(data)


VALID = [packets_of(scenario(seed), max_packet_bytes=mpb) for seed, mpb in ((0, 64), (1, 200))]
VALID.append(packets_of(answer_scenario(), max_packet_bytes=90))


@st.composite
def mutated_stream(draw):
    packets = list(draw(st.sampled_from(VALID)))
    data = bytearray(b"".join(packets))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=12))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 40))]
        else:
            data[i:i] = draw(st.sampled_from(packets))
        if not data:
            data = bytearray(b"\x00")
    return bytes(data)


@settings(max_examples=examples(100), deadline=None)
@given(mutated_stream())
def test_fuzz_mutated_valid_streams(data):
    check_decodes(data)


@st.composite
def mutated_records(draw):
    """Records whose CBOR is damaged but whose packets are valid: every byte reaches decode_record."""
    _, blob, _ = draw(st.sampled_from(scenario() + answer_scenario()))
    blob = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(blob) - 1))
        blob[i] = draw(st.integers(0, 255))
    return bytes(blob)


@settings(max_examples=examples(150), deadline=None)
@given(st.lists(mutated_records(), min_size=1, max_size=4))
def test_fuzz_damaged_records_inside_valid_packets(blobs):
    packetizer = Packetizer(80)
    data = b"".join(p for blob in blobs for p in packetizer.packetize(blob, FRAME))
    records, report = check_decodes(data)
    assert len(records) + report.decode_errors + report.duplicate_records == len(blobs)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=examples(60), deadline=None)
@given(gt=st.lists(finite, min_size=6, max_size=6), n=st.integers(0, 4), seed=st.integers(0, 99))
def test_fuzz_any_geotransform_gives_valid_outputs(gt, n, seed):
    spec = frame_spec(1, 1, n, np.random.default_rng(seed), georef={"geotransform": gt})
    records, _ = check_decodes(stream_of([(FRAME, encode_frame(**spec), spec)]))
    buf = io.StringIO()
    write_geojson(records, buf)
    doc = json.loads(buf.getvalue(), parse_constant=lambda c: pytest.fail(f"{c} in GeoJSON"))
    assert len(doc["features"]) == n


@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), mutated_stream()))
def test_fuzz_cli_never_raises(tmp_path, capsys, data):
    path = tmp_path / "fuzz.bin"
    path.write_bytes(data)
    code, out, err = run(capsys, "decode", path, "--out", tmp_path / "out")
    assert code == 0 and err == "" and len(out.splitlines()) == 1
    assert run(capsys, "stats", path, "--json")[0] == 0
    code, out, err = run(capsys, "render", path, "--out", tmp_path / "r.png", "--max-side", 64)
    assert code in (0, 2) and "Traceback" not in err and len(err.splitlines()) <= 1
    # the JSONL decode wrote, mangled, is no traceback either
    jsonl = (tmp_path / "out" / "records.jsonl").read_bytes()
    (tmp_path / "bad.jsonl").write_bytes(jsonl[: len(jsonl) // 2] + data[:50])
    code, _, err = run(capsys, "stats", tmp_path / "bad.jsonl")
    assert code == 0 and err == ""
