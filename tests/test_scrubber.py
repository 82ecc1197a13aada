"""The memory scrubber, its flight regions and the fault injector (edge/reliability/).

Requirements (docs/reliability.md) are named in each test's docstring: SCR-001 ... SCR-014.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import edge.kernels.crc32c as crc_mod
import edge.kernels.secded as secded_mod
from conftest import use_impl
from edge.config import apply_overrides, default_config
from edge.downlink import record as rec
from edge.downlink.journal import Journal
from edge.kernels.secded import CODE_BITS, DATA_COLUMNS, secded_check
from edge.manifest import DEFAULT_MANIFEST, load_manifest
from edge.reliability.inject import (InjectError, Injector, add_inject_parser, corrupt_journal,
                                     flip_bits, journal_segments, load_region_map, signal_worker,
                                     truncate_journal)
from edge.reliability.regions import (ModelGolden, config_bytes, ensure_golden_copy,
                                      flight_regions, golden_copy_path, protect_flight_loop,
                                      weight_regions, write_region_map)
from edge.reliability.scrubber import (CLEAN, CORRECTED, DOUBLE_UPSET_TARGET_PER_DAY, EVENT_OF,
                                       RESTORED, UNRECOVERABLE, GoldenError, ProtectedRegion,
                                       Scrubber, UnrecoverableBlock, double_upset_per_day,
                                       max_scrub_period_s)

REPO = Path(__file__).resolve().parent.parent


def _region(n, *, block_bytes=4096, seed=0, offset=0, name="r"):
    """A region over n random bytes (view starts `offset` bytes into its buffer), its golden copy
    and a recorder of events."""
    data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    golden = data.tobytes()
    buf = np.zeros(n + offset, np.uint8)
    view = buf[offset:]
    view[:] = data
    events = []
    region = ProtectedRegion(name, view, lambda o, k: golden[o:o + k], block_bytes=block_bytes)
    scrubber = Scrubber([region], budget_bytes_per_s=1e9, on_event=lambda c, t: events.append((c, t)))
    return region, golden, scrubber, events


def _same(region, golden) -> bool:
    return region.view.tobytes() == golden


def _flip(view, bit):
    view[bit // 8] ^= np.uint8(1 << (bit % 8))


# ---- SECDED + CRC: what each kind of upset becomes ---------------------------------------------------

def test_event_codes_are_record_codes():
    """SCR-009: the scrubber's events are the downlink's scrub_* event codes."""
    for code in EVENT_OF.values():
        assert code in rec.EVENT_CODES


@pytest.mark.parametrize("impl", ["reference", "compiled"])
def test_every_single_flip_in_a_small_region_is_corrected(impl):
    """SCR-002, SCR-004: exhaustively, every single-bit flip -- in the data (a tail word padded),
    in the parity array, in any of the three CRC-table copies -- is repaired and the region equals
    the original. Both kernel implementations."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(use_impl(secded_mod, impl))
        stack.enter_context(use_impl(crc_mod, impl))
        region, golden, s, _ = _region(100, block_bytes=32)   # 4 blocks, 13 words, tail of 4 bytes
        assert (region.n_blocks, region.n_words) == (4, 13)
        for bit in range(8 * region.length):
            _flip(region.view, bit)
            out = s.scrub_all()
            assert out[CORRECTED] == 1 and out[CLEAN] == 3, (bit, out)
            assert _same(region, golden), bit
        assert s.counters.corrected == 8 * region.length
        parity = region.parity.copy()
        for bit in range(8 * region.parity.size):
            _flip(region.parity, bit)
            assert s.scrub_all()[CORRECTED] == 1, bit
            assert np.array_equal(region.parity, parity) and _same(region, golden)
        table = region.crcs.copy()
        repaired = s.counters.metadata_repaired
        for copy, block, bit in itertools.product(range(3), range(region.n_blocks), range(32)):
            region.crcs[copy, block] ^= np.uint32(1 << bit)
            out = s.scrub_all()
            assert out[CLEAN] == region.n_blocks, (copy, block, bit, out)
            assert np.array_equal(region.crcs, table)
        assert s.counters.metadata_repaired - repaired == 3 * region.n_blocks * 32
        assert s.counters.restored == 0 and s.counters.unrecoverable == 0


def test_random_single_flips_in_a_big_region_are_corrected():
    """SCR-004: random single-bit flips over a 1 MB region (unaligned view, odd tail), one at a
    time and many at once in distinct words: every one corrected in place, nothing restored."""
    region, golden, s, _ = _region(1_000_005, offset=3)
    assert not region._aligned
    rng = np.random.default_rng(1)
    for bit in rng.integers(0, 8 * region.length, 2000).tolist():
        _flip(region.view, bit)
        assert s.check_block(region, bit // 8 // region.block_bytes) == CORRECTED
    assert _same(region, golden)
    words = rng.choice(region.n_words - 1, 300, replace=False)
    for w in words.tolist():
        _flip(region.view, w * 64 + int(rng.integers(64)))
    out = s.scrub_all()
    assert _same(region, golden) and out[RESTORED] == 0
    assert s.counters.corrected == 2300 and s.counters.restored == 0


def test_double_flips_in_one_word_are_restored_from_golden():
    """SCR-005: every pair of bits of one 72-bit codeword (data and check bits) is detected as
    uncorrectable and the block is restored from golden, parity re-encoded; then random doubles
    over a big region."""
    region, golden, s, events = _region(256, block_bytes=64)
    parity = region.parity.copy()
    word = 9  # block 1
    for a, b in itertools.combinations(range(CODE_BITS), 2):
        for bit in (a, b):
            if bit < 64:
                _flip(region.view, word * 64 + bit)
            else:
                _flip(region.parity, word * 8 + bit - 64)
        assert s.check_block(region, 1) == RESTORED, (a, b)
        assert _same(region, golden) and np.array_equal(region.parity, parity)
    assert s.counters.restored == CODE_BITS * (CODE_BITS - 1) // 2
    assert s.counters.corrected == 0 and s.counters.unrecoverable == 0

    region, golden, s, _ = _region(300_001, seed=2)
    rng = np.random.default_rng(2)
    blocks = rng.choice(region.n_blocks - 1, 40, replace=False)
    for blk in blocks.tolist():
        w = blk * region.block_bytes // 8 + int(rng.integers(region.block_bytes // 8))
        for bit in rng.choice(64, 2, replace=False).tolist():
            _flip(region.view, w * 64 + bit)
    out = s.scrub_all()
    assert out[RESTORED] == 40 and out[CORRECTED] == 0 and _same(region, golden)


def _aliasing_triple():
    """Three data bits whose syndrome is a fourth data bit's column: SECDED miscorrects them, and
    those four together have syndrome 0 (invisible to SECDED)."""
    cols = {c: k for k, c in enumerate(DATA_COLUMNS)}
    for a, b, c in itertools.combinations(range(64), 3):
        d = cols.get(DATA_COLUMNS[a] ^ DATA_COLUMNS[b] ^ DATA_COLUMNS[c])
        if d is not None and d not in (a, b, c):
            return (a, b, c), d
    raise AssertionError("no aliasing triple")  # pragma: no cover


def test_three_or_more_flips_in_a_block_are_caught_by_the_crc():
    """SCR-006: 3 flips SECDED miscorrects and 4 flips SECDED cannot see are caught by the block
    CRC and restored; then random bursts of 3..12 bits in one block."""
    (a, b, c), d = _aliasing_triple()
    for bits in ((a, b, c), (a, b, c, d)):
        region, golden, s, _ = _region(4096, seed=3)
        for bit in bits:
            _flip(region.view, 64 * 10 + bit)
        rep = secded_check(region.view[:4096].view(np.uint64), region.parity)
        assert (rep.n_corrected, rep.n_uncorrectable) == ((1, 0) if len(bits) == 3 else (0, 0))
        assert s.check_block(region, 0) == RESTORED
        assert _same(region, golden) and s.counters.corrected == 0

    region, golden, s, _ = _region(200_000, seed=4)
    rng = np.random.default_rng(4)
    for _ in range(200):
        blk = int(rng.integers(region.n_blocks))
        start, end = region.bounds(blk)
        n = int(rng.integers(3, 13))
        for bit in rng.choice(8 * (end - start), n, replace=False).tolist():
            _flip(region.view, 8 * start + bit)
        # 3+ flips over a 4 KiB block almost always hit distinct words (each then single-bit,
        # corrected); whenever they share a word the block is restored: either way it is exact
        assert s.check_block(region, blk) in (CORRECTED, RESTORED)
        assert _same(region, golden)


def test_golden_failure_is_unrecoverable_and_reported_once():
    """SCR-007, SCR-009: golden failing its check (GoldenError) or giving bytes that do not match the
    registered CRC -> unrecoverable, one scrub_unrecoverable event, counted once per block; when the
    golden source is good again the block is restored."""
    data = np.random.default_rng(5).integers(0, 256, 10_000, dtype=np.uint8)
    golden_bytes = data.tobytes()
    state = {"mode": "bad"}

    def golden(offset, length):
        if state["mode"] == "bad":
            raise GoldenError("model file sha256 mismatch; second copy sha256 mismatch")
        if state["mode"] == "wrong":
            return bytes(length)
        return golden_bytes[offset:offset + length]

    events = []
    region = ProtectedRegion("w", data.copy(), golden)
    s = Scrubber([region], budget_bytes_per_s=1e6, on_event=lambda c, t: events.append((c, t)))
    region.view[5000] ^= 0x11  # a double error in one word of block 1
    for _ in range(3):
        assert s.scrub_all()[UNRECOVERABLE] == 1
    assert s.counters.unrecoverable == 1
    assert [c for c, _ in events] == ["scrub_unrecoverable"]
    assert "golden failed" in events[0][1] and "block 1" in events[0][1]
    state["mode"] = "wrong"
    assert s.check_block(region, 1) == UNRECOVERABLE and s.counters.unrecoverable == 1
    state["mode"] = "good"
    assert s.check_block(region, 1) == RESTORED
    assert region.view.tobytes() == golden_bytes and not region.failed


def _tflite_file(tmp_path):
    """The shipped tflite_int8 entry pointed at a private copy of its file (to corrupt it)."""
    f = load_manifest(DEFAULT_MANIFEST).model("ship").file("tflite_int8")
    path = tmp_path / "model" / f.path.name
    path.parent.mkdir()
    path.write_bytes(f.path.read_bytes())
    return dataclasses.replace(f, path=path)


def _corrupt_file(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_golden_second_copy(tmp_path):
    """SCR-007: the model golden is the manifest-verified file; a verified second copy is written to
    data_dir/golden/<sha256>.<ext> and used when the file fails its sha256; both failing is a
    GoldenError, and the scrubber reports the block unrecoverable."""
    f = _tflite_file(tmp_path)
    data_dir = tmp_path / "data"
    copy = ensure_golden_copy(f, data_dir)
    assert copy == golden_copy_path(data_dir, f) == data_dir / "golden" / f"{f.sha256}.tflite"
    assert copy.read_bytes() == f.path.read_bytes()
    blob = f.path.read_bytes()

    golden = ModelGolden(f, copy)
    assert golden.file_bytes(100, 8).tobytes() == blob[100:108] and golden.last_source == "primary"
    golden.release()
    _corrupt_file(f.path, 1234)
    assert golden.file_bytes(100, 8).tobytes() == blob[100:108] and golden.last_source == "copy"

    events = []
    view = np.frombuffer(bytearray(blob), np.uint8)
    from edge.reliability.regions import _FileSlice
    region = ProtectedRegion("weights/model", view, _FileSlice(golden), kind="weights")
    s = Scrubber([region], budget_bytes_per_s=1e6, on_event=lambda c, t: events.append(c))
    view[50_000] ^= 0x03
    assert s.check_block(region, 50_000 // 4096) == RESTORED and view.tobytes() == blob
    assert golden._blob is None  # the cached golden is dropped once the restore is done

    # a bad second copy is written again from the good file at start
    f.path.write_bytes(blob)
    _corrupt_file(copy, 99)
    ensure_golden_copy(f, data_dir)
    assert copy.read_bytes() == blob
    # both bad: GoldenError, unrecoverable
    _corrupt_file(f.path, 7)
    _corrupt_file(copy, 8)
    golden.release()
    with pytest.raises(GoldenError, match="sha256 mismatch.*sha256 mismatch"):
        golden.file_bytes(0, 8)
    view[9000] ^= 0x81
    assert s.scrub_all()[UNRECOVERABLE] == 1 and events[-1] == "scrub_unrecoverable"


# ---- pacing, events, update ---------------------------------------------------------------------------

def test_budget_pacing_with_a_fake_clock():
    """SCR-008: the paced loop never checks faster than budget_bytes_per_s, whether the work itself
    takes no time or some."""
    for work_s in (0.0, 0.004, 0.1):  # the last: a CPU slower than the budget, no sleep at all
        now = [0.0]
        sleeps = []

        def sleep(dt):
            sleeps.append(dt)
            now[0] += dt

        region, golden, _, _ = _region(300_000, seed=6)
        budget = 200_000.0
        s = Scrubber([region], budget_bytes_per_s=budget, clock=lambda: now[0], sleep=sleep)
        step = s.step

        def slow_step(max_bytes):  # the checking itself takes work_s of (fake) time per chunk
            now[0] += work_s
            return step(max_bytes)

        s.step = slow_step
        t0 = now[0]
        checked = s.run(max_bytes=3_000_000)
        elapsed = now[0] - t0
        assert checked >= 3_000_000
        # every chunk but the last is followed by its sleep: over them the rate is <= budget
        assert (checked - s.chunk_bytes - 4096) / elapsed <= budget * (1 + 1e-9)
        assert bool(sleeps) == (work_s < 3 * 4096 / budget)  # a chunk is 3 blocks here
        assert s.counters.passes >= 9


def test_budget_pacing_thread_real_time():
    """SCR-008: the scrub thread measured in real time stays within its budget (one chunk of slack)
    and does scrub (passes complete, last_pass_s ~ size / budget)."""
    region, golden, s, _ = _region(131_072, seed=7)
    s.budget_bytes_per_s = 1_048_576.0
    t0 = time.monotonic()
    s.start()
    assert s.running
    time.sleep(0.6)
    s.stop()
    elapsed = time.monotonic() - t0
    checked = s.counters.checked_bytes
    assert not s.running
    assert checked <= s.budget_bytes_per_s * elapsed + s.chunk_bytes + 4096
    assert checked >= 0.3 * s.budget_bytes_per_s * 0.6  # (loose: the CPU is shared)
    assert s.counters.passes >= 2
    assert 0.08 < s.counters.last_pass_s < 0.5


def test_events_are_rate_limited_per_region_and_pass():
    """SCR-009: counters count every repair; events: the first per region, code and pass at once,
    the rest in one summary at the end of that region's pass."""
    region, golden, s, events = _region(80_000, seed=8)
    other, golden2, _, _ = _region(10_000, seed=9, name="other")
    s.add_region(other)
    for blk in range(10):
        _flip(region.view, 8 * blk * 4096 + 5)
    other.view[4] ^= 0x01
    out = s.scrub_all()
    assert out[CORRECTED] == 11 and s.counters.corrected == 11
    assert [c for c, _ in events] == ["scrub_corrected"] * 3
    assert events[0][1].startswith("r: block 0") and "10 blocks corrected" in events[1][1]
    assert events[2][1].startswith("other: block 0")
    s.scrub_all()
    assert len(events) == 3
    counters = s.counters.housekeeping()
    assert counters["scrub_corrected_bits"] == 11 and all(type(v) is int for v in counters.values())


def test_update_reencodes_and_never_seals_an_upset():
    """SCR-010: update() is the legitimate change: the new bytes verify as clean; a pending upset in
    a partly overwritten block is corrected first; an unrepairable block refuses the update."""
    region, golden, s, _ = _region(20_000, seed=10)
    s.update(region, 4000, b"\xAA" * 300)   # spans blocks 0 and 1
    assert region.view[4000:4300].tobytes() == b"\xAA" * 300
    assert s.scrub_all()[CLEAN] == region.n_blocks
    expected = bytearray(region.view.tobytes())
    _flip(region.view, 8 * 100 + 3)          # an upset in block 0, outside the update
    s.update("r", 200, b"\x55" * 8)
    expected[200:208] = b"\x55" * 8
    assert region.view.tobytes() == bytes(expected) and s.counters.corrected == 1
    assert s.scrub_all()[CLEAN] == region.n_blocks
    region.view[4100] ^= 0x03   # a double in block 1, whose golden (never updated) is stale now
    with pytest.raises(UnrecoverableBlock):
        s.update(region, 4500, b"\x00")
    assert region.view[4500] == expected[4500]
    with pytest.raises(ValueError, match="do not fit"):
        s.update(region, 19_999, b"ab")


def test_region_argument_checks_and_tiny_regions():
    """SCR-002: views are checked; 1- and 7-byte regions (one padded word) are protected too."""
    with pytest.raises(TypeError):
        ProtectedRegion("x", np.zeros(8, np.uint16), lambda o, n: b"")
    ro = np.zeros(8, np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        ProtectedRegion("x", ro, lambda o, n: b"")
    with pytest.raises(ValueError, match="multiple of 8"):
        ProtectedRegion("x", np.zeros(8, np.uint8), lambda o, n: b"", block_bytes=12)
    for n in (1, 7):
        region, golden, s, _ = _region(n, seed=n)
        for bit in range(8 * n):
            _flip(region.view, bit)
            assert s.scrub_all()[CORRECTED] == 1 and _same(region, golden)
        if n == 7:
            region.view[0] ^= 0x03
            assert s.scrub_all()[RESTORED] == 1 and _same(region, golden)


def test_scrub_period_derivation():
    """SCR-014: the probability model of the default period: N (72 lambda T)^2 / 2 per period, and
    max_scrub_period_s inverts it at the target."""
    n = 60_000
    t = max_scrub_period_s(n)
    assert double_upset_per_day(n, t) == pytest.approx(DOUBLE_UPSET_TARGET_PER_DAY)
    t_days = 1.0 / 86400
    per_period = n * (72 * 4e-7 * t_days) ** 2 / 2
    assert double_upset_per_day(n, 1.0) == pytest.approx(per_period * 86400)
    assert double_upset_per_day(n, 1.0) < DOUBLE_UPSET_TARGET_PER_DAY < double_upset_per_day(n, 10.0)


# ---- real backends and the flight loop ------------------------------------------------------------------

def _tiles(n=2):
    from models.scenes import scene_batch

    images, _, _ = scene_batch(range(900_000, 900_000 + n), size=256)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("variant", ["onnx_int8", "tflite_int8"])
def test_real_backend_outputs_bit_identical_after_scrub(tmp_path, variant):
    """SCR-001, SCR-013: the owned-mode weight regions of a real backend, flipped through the views
    and through /proc/self/mem at the region map's addresses: outputs change; after one scrub pass
    they are bit-identical to the clean run and every region equals its golden bytes."""
    from edge.backends import open_backend

    model = load_manifest(DEFAULT_MANIFEST).model("ship")
    backend = open_backend(model, variant, memory="owned")
    regions = weight_regions(backend, tmp_path)
    assert regions and all(r.kind == "weights" for r in regions)
    assert (tmp_path / "golden" / f"{backend.file.sha256}{backend.file.path.suffix}").exists()
    originals = [r.view.tobytes() for r in regions]
    s = Scrubber(regions, budget_bytes_per_s=1e9)
    x = _tiles()
    if backend.input_dtype == np.int8:  # the tflite graph takes int8 (zero point -128)
        x = (x.astype(np.int16) - 128).astype(np.int8)
    clean = backend.run(x)

    big = max(regions, key=lambda r: r.length)   # conv weights / the flatbuffer's weight area
    idx = np.arange(big.length // 3, big.length // 3 + 4000, 97)
    big.view[idx] ^= 0x40
    hit = backend.run(x)
    assert any(not np.array_equal(clean[k], hit[k]) for k in clean)

    write_region_map(tmp_path / "regions.json", regions)
    inj = Injector(tmp_path / "regions.json", seed=11)
    assert inj.pid == os.getpid()
    for _ in range(60):
        inj.flip_single()
    for _ in range(4):
        inj.flip_double()
    out = s.scrub_all()
    assert out[RESTORED] >= 1 and out[CORRECTED] >= 1 and out[UNRECOVERABLE] == 0
    assert [r.view.tobytes() for r in regions] == originals
    again = backend.run(x)
    for k in clean:
        np.testing.assert_array_equal(clean[k], again[k])


def _loop_cfg(tmp_path, **over):
    base = {"data.dir": str(tmp_path / "data"), "downlink.output": str(tmp_path / "down.bin")}
    base.update(over)
    return apply_overrides(default_config(), base)


def test_flight_regions_and_region_map(tmp_path):
    """SCR-001, SCR-011: a flight loop in owned mode protects its weights (LiteRT: the model file
    itself), its LUTs (restorable by rebuilding) and its config (canonical JSON); the region map
    gives pid, address, length, kind; in copy mode the weights are reported unprotected."""
    from edge.flight import FlightLoop

    loop = FlightLoop(_loop_cfg(tmp_path, **{"model.memory": "owned", "model.variant": "tflite_int8"}))
    try:
        regions = flight_regions(loop)
        assert regions.weights_protected and not regions.unprotected
        kinds = [r.kind for r in regions]
        assert kinds.count("weights") == 1 and kinds.count("lut") >= 1 and kinds[-1] == "config"
        weights = regions[0]
        assert weights.length == loop.file.size
        assert weights.view.tobytes() == loop.file.path.read_bytes()
        assert golden_copy_path(loop.data_dir, loop.file).exists()
        lut_region = next(r for r in regions if r.kind == "lut")
        assert any(np.shares_memory(lut_region.view, lut) for lut in loop.pipeline._luts.values())
        config = regions[-1]
        assert bytes(loop.config_image) == config_bytes(loop.cfg)
        assert json.loads(bytes(loop.config_image))["model"]["memory"] == "owned"

        s = Scrubber(regions, budget_bytes_per_s=1e9)
        before = [r.view.tobytes() for r in regions]
        for r in regions:  # a double error in each: every golden source restores
            r.view[r.length // 2] ^= 0x81
        out = s.scrub_all()
        assert out[RESTORED] == len(regions) and [r.view.tobytes() for r in regions] == before

        doc = write_region_map(loop.state_dir / "regions.json", regions)
        on_disk = load_region_map(loop.state_dir / "regions.json")
        assert on_disk == doc and doc["pid"] == os.getpid() and doc["weights_protected"] is True
        assert [(e["name"], e["address"], e["length"], e["kind"]) for e in doc["regions"]] == \
            [(r.name, r.view.ctypes.data, r.length, r.kind) for r in regions]
    finally:
        loop.close()

    loop = FlightLoop(_loop_cfg(tmp_path / "copy", **{"model.variant": "onnx_int8"}))
    try:
        scrubber, regions = protect_flight_loop(loop, budget_bytes_per_s=1e6)
        try:
            assert not regions.weights_protected and "unprotected" in regions.unprotected[0]
            assert {r.kind for r in regions} == {"lut", "config"}
            doc = load_region_map(loop.state_dir / "regions.json")
            assert doc["weights_protected"] is False and scrubber.running
        finally:
            scrubber.stop()
    finally:
        loop.close()


# ---- fault injection into another process -----------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from edge.reliability.scrubber import ProtectedRegion, Scrubber
    from edge.reliability.regions import write_region_map

    data = np.random.default_rng(12).integers(0, 256, 65_541, dtype=np.uint8)
    golden = data.tobytes()
    events = []
    region = ProtectedRegion("child/data", data.copy(), lambda o, n: golden[o:o + n], kind="test")
    s = Scrubber([region], budget_bytes_per_s=1e9, on_event=lambda c, t: events.append(c))
    write_region_map(sys.argv[1], [region])
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "diff":
            x = np.bitwise_xor(region.view, data)
            print(json.dumps({"differing_bits": int(np.unpackbits(x).sum())}), flush=True)
        elif line.strip() == "scrub":
            out = s.scrub_all()
            print(json.dumps({**s.counters.as_dict(), "outcomes": out, "events": events,
                              "equal": region.view.tobytes() == golden}), flush=True)
""")


def _ask(child, line):
    child.stdin.write(line + "\n")
    child.stdin.flush()
    return json.loads(child.stdout.readline())


def test_inject_through_proc_pid_mem_into_a_child(tmp_path, capsys):
    """SCR-012: the injector flips bits of another process at the addresses its regions.json
    reports (single: distinct words; double: one word; explicit through `edge inject flip`); the
    child's scrubber corrects the singles and restores the double; each action is described."""
    map_path = tmp_path / "state" / "regions.json"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(map_path)], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == "ready"
        inj = Injector(map_path, seed=13)
        assert inj.pid == child.pid and inj.protected_bytes == 65_541
        words, actions = set(), []
        while len(actions) < 40:
            target = inj.pick_single()
            if target["words"][0] in words:
                continue  # distinct words: 40 single-bit errors, no accidental double
            words.add(target["words"][0])
            actions.append(inj.inject(target))
        for a in actions:
            assert a["action"] == "flip" and len(a["bytes"]) == 1
            assert a["bytes"][0]["before"] ^ a["bytes"][0]["after"] in (1, 2, 4, 8, 16, 32, 64, 128)
            json.dumps(a)
        assert _ask(child, "diff") == {"differing_bits": 40}
        rep = _ask(child, "scrub")
        assert rep["corrected"] == 40 and rep["restored"] == 0 and rep["equal"]
        assert rep["events"] == ["scrub_corrected", "scrub_corrected"]  # first + pass summary

        double = inj.flip_double()
        assert double["mode"] == "double" and len(double["words"]) == 1 and len(double["bits"]) == 2
        # explicit flip through the command line (`edge inject flip --region --offset --bit`)
        import argparse
        parser = argparse.ArgumentParser()
        add_inject_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["inject", "flip", "--map", str(map_path), "--region",
                                  "child/data", "--offset", "65540", "--bit", "7"])
        capsys.readouterr()
        assert args.func(args) == 0
        line = json.loads(capsys.readouterr().out)
        assert line["mode"] == "explicit" and line["offsets"] == [65540] and line["pid"] == child.pid
        assert _ask(child, "diff") == {"differing_bits": 3}
        rep = _ask(child, "scrub")
        assert rep["restored"] == 1 and rep["corrected"] == 41 and rep["equal"]
    finally:
        child.kill()
        child.wait()
    with pytest.raises(InjectError, match="cannot open"):
        flip_bits(child.pid, 0x1000, [0])


def test_inject_signals_stop_cont_kill():
    """SCR-012: the worker can be stopped, continued and killed by pid; each action described."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def state():
            for _ in range(200):
                s = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                yield s
                time.sleep(0.01)

        assert signal_worker(child.pid, "stop")["signal"] == "SIGSTOP"
        assert any(s == "T" for s in state())
        assert signal_worker(child.pid, "cont")["signal"] == "SIGCONT"
        assert any(s in "SR" for s in state())
        out = signal_worker(child.pid, "kill")
        assert out == {"action": "signal", "signal": "SIGKILL", "pid": child.pid,
                       "time_ms": out["time_ms"]}
        assert child.wait(5) == -9
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with pytest.raises(InjectError, match="must be one of"):
        signal_worker(child.pid, "hup")


def _journal(tmp_path, n=40):
    data = tmp_path / "data"
    with Journal(data / "journal", segment_bytes=2048) as j:
        for i in range(n):
            j.append(bytes([i]) * 100, kind=1, priority=1, key=i + 1)
    return data


def test_journal_corruption_helpers(tmp_path):
    """SCR-012: journal segments get random byte corruptions and truncations exactly as described;
    the journal still opens (and reports what it dropped)."""
    data = _journal(tmp_path)
    segs = journal_segments(data)
    assert len(segs) >= 2
    rng = random.Random(14)
    before = {p.name: p.read_bytes() for p in segs}
    out = corrupt_journal(data, n_bytes=3, rng=rng)
    assert out["action"] == "journal_corrupt" and len(out["changes"]) == 3
    raw = (data / "journal" / out["segment"]).read_bytes()
    for c in out["changes"]:
        assert before[out["segment"]][c["offset"]] == c["before"] != c["after"] == raw[c["offset"]]
    assert sum(a != b for a, b in zip(before[out["segment"]], raw)) == 3
    cut = truncate_journal(data, rng=rng)
    assert (data / "journal" / cut["segment"]).stat().st_size == cut["size_after"] < cut["size_before"]
    json.dumps(out), json.dumps(cut)
    with Journal(data / "journal", segment_bytes=2048) as j:
        assert not j.recovery.clean and 0 < len(j) < 40

    import argparse
    parser = argparse.ArgumentParser()
    add_inject_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["inject", "journal", "corrupt", "--data-dir", str(data), "--seed", "1",
                              "--count", "2", "--bytes", "4"])
    assert args.func(args) == 0
    empty = tmp_path / "empty"
    (empty / "journal").mkdir(parents=True)
    with pytest.raises(InjectError, match="no non-empty journal segment"):
        truncate_journal(empty)
    args = parser.parse_args(["inject", "journal", "truncate", "--data-dir", str(empty)])
    assert args.func(args) == 1
