"""The flight loop end to end (edge/flight.py): spool -> pipeline -> records -> journal -> packets,
read back with the ground side's depacketizer and decoder, and checked against docs/downlink.cddl."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pycddl
import pytest

from edge.config import apply_overrides, default_config
from edge.downlink.journal import Journal
from edge.flight import FlightLoop
from edge.ground.packets import depacketize
from edge.ground.records import decode_record
from models.scenes import generate_scene

CDDL = pycddl.Schema((Path(__file__).resolve().parent.parent / "docs" / "downlink.cddl").read_text())
GT = [-4.9, 2.7e-5, 0.0, 36.05, 0.0, -2.2e-5]


def _frame(spool: Path, name: str, seed: int, h=520, w=600, **meta):
    sc = generate_scene(seed, h, w, bands="bgrn", ships=(6, 6), cloud_probability=0.0)
    sc.image.tofile(spool / f"{name}.raw")
    side = {"shape": list(sc.image.shape), "dtype": "uint16", "capture_time": 1_790_000_000_000 + seed,
            **meta}
    (spool / f"{name}.json").write_text(json.dumps(side))
    return sc


def _cfg(tmp_path, **over):
    base = {"data.dir": str(tmp_path / "data"), "downlink.output": str(tmp_path / "down.bin"),
            "downlink.housekeeping_every": 2, "detection.score_threshold": 0.5}
    base.update(over)
    return apply_overrides(default_config(), base)


def _records(path):
    records, report = depacketize(Path(path).read_bytes())
    for r in records:
        CDDL.validate_cbor(r.payload)  # every record on the wire is a record of the spec
    return [decode_record(r.payload) for r in records], report


@pytest.fixture
def spool(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    return d


def test_spool_to_ground(tmp_path, spool):
    scenes = {name: _frame(spool, name, seed, georef={"geotransform": GT})
              for name, seed in (("a", 1), ("b", 2), ("d", 3))}
    (spool / "c.raw").write_bytes(b"\x00" * 100)                      # truncated dump
    (spool / "c.json").write_text('{"shape": [64, 64, 4], "dtype": "uint16"}')
    (spool / "e.raw").write_bytes(b"\x00" * 64)                       # sidecar is garbage
    (spool / "e.json").write_bytes(b"\xff\xfe\x00{")
    cfg = _cfg(tmp_path)
    with FlightLoop(cfg, keep_results=True) as loop:
        summary = loop.run(str(spool))
    assert (summary.frames_ok, summary.frames_failed) == (3, 2)
    assert sorted(p.name for p in (spool / ".done").glob("*.raw")) == ["a.raw", "b.raw", "d.raw"]
    assert sorted(p.name for p in (spool / ".failed").glob("*.raw")) == ["c.raw", "e.raw"]

    records, report = _records(tmp_path / "down.bin")
    assert report.clean and report.packets_ok == summary.packets
    kinds = [r.kind for r in records]
    assert kinds[0] == "event" and records[0].code == "started" and records[-1].code == "stopped"
    assert [r.seq for r in records] == sorted(r.seq for r in records)
    frames = [r for r in records if r.kind == "frame"]
    assert len(frames) == 3 and len({r.frame_id for r in frames}) == 3
    errors = [r for r in records if r.kind == "event" and r.code == "input_error"]
    assert sorted(r.frame_id for r in errors) == [3, 5]
    assert "c.raw" in errors[0].text and "truncated" in errors[0].text
    assert "e.raw" in errors[1].text and "sidecar" in errors[1].text
    assert kinds.count("housekeeping") >= 2
    hk = [r for r in records if r.kind == "housekeeping"][-1]
    assert hk.counters["frames_ok"] == 3 and hk.counters["input_errors"] == 2
    assert hk.counters["detections"] == summary.detections

    # what reached the ground equals what the pipeline computed, within the record's quantization
    by_id = {fid: res for fid, _, res in summary.results}
    for r in frames:
        res = by_id[r.frame_id]
        assert r.frame_size == (520, 600) and r.tiles["total"] == res.tiles_total
        assert np.allclose(r.georef["geotransform"], GT, rtol=1e-6, atol=0)
        assert r.time_ms > 1_790_000_000_000
        np.testing.assert_allclose(r.boxes, res.boxes, atol=0.5)
        np.testing.assert_allclose(r.scores, res.scores, atol=1 / 510 + 1e-9)
        assert r.model_id == loop.file.sha256[:8]
    found = sum(len(r.scores) for r in frames)
    truth = sum(len(sc.boxes) for sc in scenes.values())
    assert found >= 0.8 * truth


def test_restart_redoes_in_flight_frames_exactly_once(tmp_path, spool):
    from edge.sources import Spool

    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        _frame(spool, name, seed)
    cfg = _cfg(tmp_path)
    with FlightLoop(cfg) as loop:
        loop.run(str(spool), max_frames=1)        # a: done
    sp = Spool(spool, cfg.data_dir / "state")
    # crash 1: b was claimed and its record journaled, but it was not yet marked done
    claim_b = sp.claim_next()
    with FlightLoop(cfg) as loop:
        assert loop.process(sp.open(claim_b))
        loop.journal.sync()
    with FlightLoop(cfg) as loop:
        summary = loop.run(str(spool), max_frames=1)
    assert (summary.frames_skipped, summary.frames_ok) == (1, 0)   # b: only marked done
    # crash 2: c was claimed (it has a frame id) but nothing was journaled
    claim_c = sp.claim_next()
    assert claim_c.name == "c.raw" and not claim_c.resumed
    with FlightLoop(cfg) as loop:
        summary = loop.run(str(spool))
    assert (summary.frames_skipped, summary.frames_ok) == (0, 1)   # c: redone, same frame id
    assert not list(spool.glob(".active/*")) and len(list(spool.glob(".done/*.raw"))) == 3
    records, report = _records(tmp_path / "down.bin")
    frames = [r for r in records if r.kind == "frame"]
    # unacknowledged records are re-sent after a restart, with the same seq (the ground de-duplicates
    # by seq); distinct seqs: exactly one per frame id
    distinct = {r.seq: r.frame_id for r in frames}
    assert sorted(distinct.values()) == [1, claim_b.frame_id, claim_c.frame_id]


def test_journal_recovery_is_reported(tmp_path, spool):
    _frame(spool, "a", 1)
    cfg = _cfg(tmp_path)
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    seg = sorted((cfg.data_dir / "journal").glob("seg-*.log"))[-1]
    with open(seg, "ab") as f:
        f.write(b"\x00torn tail of a record that was being written")
    with FlightLoop(cfg) as loop:
        assert loop.journal.recovery.dropped_bytes > 0
    records, _ = _records(tmp_path / "down.bin")
    recovered = [r for r in records if r.kind == "event" and r.code == "journal_recovered"]
    assert recovered and "dropped" in recovered[0].text


def test_bad_model_and_single_file(tmp_path):
    sc = generate_scene(5, 300, 300, bands="bgrn", ships=(8, 8), cloud_probability=0.0)
    np.save(tmp_path / "one.npy", sc.image)
    cfg = _cfg(tmp_path, **{"model.variant": "tflite_int8"})
    with FlightLoop(cfg) as loop:
        assert loop.file.runtime == "litert"
        loop.run(str(tmp_path / "one.npy"))
    records, _ = _records(tmp_path / "down.bin")
    assert [r.kind for r in records].count("frame") == 1
    from edge.flight import ModelLoadError

    with pytest.raises(ModelLoadError, match="backend"):
        FlightLoop(_cfg(tmp_path, **{"model.variant": "tflite_int8", "model.backend": "onnxruntime"}))
    records, _ = _records(tmp_path / "down.bin")
    assert records[-1].code == "model_error" and "backend" in records[-1].text


def test_cli_run(tmp_path, spool, capsys):
    from edge.cli import main

    _frame(spool, "a", 1)
    cfgfile = tmp_path / "m.toml"
    cfgfile.write_text('[detection]\nscore_threshold = 0.5\n[tiling]\noverlap = 16\n')
    rc = main(["run", "--config", str(cfgfile), str(spool), "--data-dir", str(tmp_path / "d"),
               "--output", str(tmp_path / "o.bin"), "--quiet", "--summary", str(tmp_path / "s.json")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["frames_ok"] == 1 and out["detections"] > 0
    assert json.loads((tmp_path / "s.json").read_text())["frames_ok"] == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('[tiling]\noverlap = "wide"\n')
    assert main(["run", "--config", str(bad), str(spool)]) == 2
    assert "tiling.overlap" in capsys.readouterr().err
