"""Ground decoder fuzz campaign (issue 5, item 6): CAM-006.

Bad bytes from the radio must never crash the ground tool. Inputs, fed to
edge.ground.decode.decode_stream (in 97-byte chunks, then every decoded record through the JSON
and GeoJSON writers) and to the command line `edge-ground decode FILE --out DIR`:

  - arbitrary bytes;
  - valid streams built with the flight encoders (frames with and without georef and labels,
    housekeeping, events, records segmented over many packets; several packet sizes), mutated:
    bit flips, byte writes, inserted / deleted / zeroed ranges, packets dropped, duplicated,
    swapped or with a rewritten primary header (APID, flags, count, length), cut anywhere,
    streams spliced together;
  - valid packets carrying damaged records: any CBOR value (maps, arrays, tags, bignums, floats,
    text, bytes, nested), and real records with keys removed, added or given another value.

Never an unhandled exception (decode_stream raises nothing on a stream's bytes; the CLI exits 0
with a one-line summary and nothing on stderr). hypothesis: EDGE_CAMPAIGN=ci (default) about 300
examples, derandomized (repeatable); full: 100,000 over the strategies. With `atheris` installed
(requirements-campaign.txt), full mode also runs tests/fuzz_ground_atheris.py for 100,000 inputs
(coverage-guided, libFuzzer) in a subprocess.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import cbor2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.downlink.packets import APID_BY_KIND, Packetizer
from edge.downlink.record import encode_frame
from edge.ground import cli
from tests.campaign import Stopwatch, count, full, record
from tests.test_ground import check_decodes, frame_spec, scenario

REPO = Path(__file__).resolve().parent.parent
APIDS = sorted(APID_BY_KIND.values())
HEADER = 6


def _big_frame():
    """A frame record of 120 detections: segmented over many packets at small packet sizes."""
    spec = frame_spec(9, 900, 120, np.random.default_rng(9), hw=(4000, 4000),
                      georef={"geotransform": [10.0, 1e-4, 0.0, 50.0, 0.0, -1e-4]})
    return (APID_BY_KIND[1], encode_frame(**spec), spec)


SCENARIOS = [scenario(seed) for seed in range(3)]
BIG = _big_frame()
RECORDS = sorted({blob for items in SCENARIOS for _, blob, _ in items} | {BIG[1]})


def packet_streams():
    """Valid packet lists of the flight packetizer (a few KB each, so the fuzzing is fast):
    records of every kind at several packet sizes, one record segmented over ~20 packets, one
    stream of 9-byte packets (one record byte each)."""
    def packets(items, mpb):
        packetizer = Packetizer(mpb)
        return [p for apid, blob, _ in items for p in packetizer.packetize(blob, apid)]
    return [packets(SCENARIOS[0], 64), packets(SCENARIOS[1], 200),
            packets(SCENARIOS[2] + [BIG], 1024), packets([BIG], 64),
            packets([i for i in SCENARIOS[0] if len(i[1]) < 120], 9)]


VALID = packet_streams()


def settings_for(n: int, **extra):
    ci = not full()
    return settings(max_examples=n, deadline=None, derandomize=ci,
                    **({"database": None} if ci else {}),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much], **extra)


# ---- strategies ------------------------------------------------------------------------------------------

@st.composite
def mutated_streams(draw):
    packets = list(draw(st.sampled_from(VALID)))
    # structural damage on the packet list
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["drop", "duplicate", "swap", "header", "splice", "none"]))
        i = draw(st.integers(0, len(packets) - 1))
        if op == "drop" and len(packets) > 1:
            del packets[i]
        elif op == "duplicate":
            packets.insert(draw(st.integers(0, len(packets))), packets[i])
        elif op == "swap":
            k = draw(st.integers(0, len(packets) - 1))
            packets[i], packets[k] = packets[k], packets[i]
        elif op == "header":   # a plausible header: our APIDs, any flags / count / length
            apid = draw(st.sampled_from(APIDS + [0, 2046, 2047]))
            word0 = (draw(st.sampled_from([0, 0, 0, 1, 4])) << 13) | (0 << 12) | apid
            word1 = (draw(st.integers(0, 3)) << 14) | draw(st.integers(0, 16383))
            length = draw(st.one_of(st.integers(0, 70_000 - 7),
                                    st.just(len(packets[i]) - 7))) & 0xFFFF
            packets[i] = (word0.to_bytes(2, "big") + word1.to_bytes(2, "big")
                          + length.to_bytes(2, "big") + packets[i][HEADER:])
        elif op == "splice":
            other = draw(st.sampled_from(VALID))
            k = draw(st.integers(0, len(other) - 1))
            packets[i:i] = other[k:k + draw(st.integers(1, 20))]
    data = bytearray(b"".join(packets))
    # byte-level damage
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "zero", "cut"]))
        if not data:
            data = bytearray(draw(st.binary(min_size=1, max_size=16)))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 80))]
        elif op == "zero":
            n = draw(st.integers(1, 200))
            data[i:i + n] = bytes(len(data[i:i + n]))
        else:
            del data[i:]
    return bytes(data)


_leaves = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.binary(max_size=64))
cbor_values = st.recursive(
    _leaves,
    lambda inner: (st.lists(inner, max_size=6)
                   | st.dictionaries(st.integers(-3, 25) | st.text(max_size=3), inner, max_size=6)
                   | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 3, 4, 25, 28, 29, 64, 69, 258,
                                                              55799, 99999]), inner)),
    max_leaves=12)


@st.composite
def damaged_records(draw):
    """Record bytes: any CBOR value, or a real record (decoded) with keys changed."""
    if draw(st.booleans()):
        value = draw(cbor_values)
    else:
        value = cbor2.loads(draw(st.sampled_from(RECORDS)))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["replace", "delete", "add"]))
            keys = list(value)
            if op == "replace" and keys:
                value[draw(st.sampled_from(keys))] = draw(cbor_values)
            elif op == "delete" and keys:
                del value[draw(st.sampled_from(keys))]
            else:
                value[draw(st.integers(-2, 30))] = draw(cbor_values)
    try:
        blob = cbor2.dumps(value)
    except Exception:   # (a value cbor2 cannot write: use its repr's bytes instead)
        blob = repr(value).encode()
    return blob or b"\x00"


@st.composite
def packets_of_damaged_records(draw):
    packetizer = Packetizer(draw(st.sampled_from([16, 64, 1024])))
    blobs = draw(st.lists(damaged_records(), min_size=1, max_size=3))
    return b"".join(p for blob in blobs for p in
                    packetizer.packetize(blob, draw(st.sampled_from(APIDS)))), len(blobs)


# ---- the campaign --------------------------------------------------------------------------------------

RUNS: dict = {}


def _run(strategy: str) -> None:
    RUNS[strategy] = RUNS.get(strategy, 0) + 1


def _decode(data: bytes):
    """decode_stream (in chunks of 97 bytes: packets split across feeds) and every record through
    the JSON and GeoJSON writers, the report to JSON (test_ground.check_decodes)."""
    return check_decodes(data)


def _finish(name: str, sw: Stopwatch, n: int) -> None:
    ran = RUNS.get(name, 0)
    assert ran >= n * 0.9 or ran >= n - 5, f"hypothesis ran only {ran} of {n} examples"
    record("CAM-006", strategy=name, inputs=ran, max_examples=n, unhandled_exceptions=0,
           wall_s=round(sw.s, 2))


def test_cam006_arbitrary_bytes():
    """CAM-006: arbitrary bytes never make decode_stream (or the writers) raise."""
    n = count(80, 47_000)

    @settings_for(n)
    @given(st.binary(max_size=4096))
    def fuzz(data):
        _run("arbitrary bytes")
        _decode(data)

    with Stopwatch() as sw:
        fuzz()
    _finish("arbitrary bytes", sw, n)


def test_cam006_mutated_valid_streams():
    """CAM-006: valid flight streams, structurally and byte-wise damaged, decode without raising
    (and the undamaged stream decodes every record: the mutations start from real streams)."""
    n = count(100, 25_000)

    @settings_for(n)
    @given(mutated_streams())
    def fuzz(data):
        _run("mutated valid streams")
        _decode(data)

    with Stopwatch() as sw:
        fuzz()
    for packets in VALID:
        records, report = _decode(b"".join(packets))
        assert report.packets.clean and report.decode_errors == 0 and records
        assert report.records_ok + report.duplicate_records == report.packets.records
    _finish("mutated valid streams", sw, n)


def test_cam006_damaged_records_in_valid_packets():
    """CAM-006: valid packets carrying any CBOR, or real records with keys removed / added /
    replaced: every record is decoded or counted as a decode error (or a duplicate), never a crash."""
    n = count(80, 25_000)

    @settings_for(n)
    @given(packets_of_damaged_records())
    def fuzz(arg):
        _run("damaged records")
        data, n_records = arg
        records, report = _decode(data)
        assert len(records) + report.decode_errors + report.duplicate_records == n_records

    with Stopwatch() as sw:
        fuzz()
    _finish("damaged records", sw, n)


def test_cam006_cli_decode_never_raises():
    """CAM-006: `edge-ground decode FILE --out DIR` on any of the inputs above exits 0 with one
    summary line and nothing on stderr (no traceback), and writes its four outputs."""
    n = count(40, 3_000)
    work = Path(tempfile.mkdtemp(prefix="cam006-cli-"))
    path, out_dir = work / "in.bin", work / "out"

    @settings_for(n)
    @given(st.one_of(st.binary(max_size=2048), mutated_streams(),
                     packets_of_damaged_records().map(lambda a: a[0])))
    def fuzz(data):
        _run("cli decode")
        path.write_bytes(data)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["decode", str(path), "--out", str(out_dir), "--no-progress"])
        assert code == 0 and err.getvalue() == "", err.getvalue()
        assert len(out.getvalue().splitlines()) == 1
        summary = json.loads(out.getvalue())
        assert isinstance(summary, dict) and summary["records"] >= 0
        assert {p.name for p in out_dir.iterdir()} >= set(cli.OUT_FILES.values())

    try:
        with Stopwatch() as sw:
            fuzz()
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    _finish("cli decode", sw, n)


# ---- atheris (coverage-guided): 1,000 inputs in make test, 100,000 in make campaign ------------------------

def test_cam006_atheris(tmp_path):
    """CAM-006: tests/fuzz_ground_atheris.py under atheris (libFuzzer, coverage-guided, seeded with
    valid flight streams) for 100,000 inputs (make campaign; 1,000 in make test): it ends without a
    crash."""
    import atheris  # noqa: F401  (requirements-dev.txt: a dependency of the suite)

    runs = count(1_000, 100_000)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k, packets in enumerate(VALID):
        (corpus / f"valid-{k}").write_bytes(b"".join(packets))
        (corpus / f"half-{k}").write_bytes(b"".join(packets[: len(packets) // 2]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    with Stopwatch() as sw:
        proc = subprocess.run(
            [sys.executable, str(REPO / "tests" / "fuzz_ground_atheris.py"),
             f"-atheris_runs={runs}", "-max_len=16384", "-rss_limit_mb=4096",
             f"-artifact_prefix={tmp_path}/", str(corpus)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, f"atheris found a crash (exit {proc.returncode}):\n{tail}"
    done = re.findall(r"Done (\d+) (?:runs )?in (\d+) second", proc.stderr)   # atheris: no "runs"
    assert done, tail
    n_done = int(done[-1][0])
    assert n_done >= runs, tail
    cov = re.findall(r"cov: (\d+) ft: (\d+)", proc.stderr)
    record("CAM-006", strategy="atheris (libFuzzer, coverage-guided)", inputs=n_done,
           unhandled_exceptions=0, coverage=int(cov[-1][0]) if cov else None,
           features=int(cov[-1][1]) if cov else None, wall_s=round(sw.s, 2))
