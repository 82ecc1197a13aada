"""Store-and-forward journal (edge/downlink/journal.py): round trips, seq monotonicity, crash and
corruption recovery, a SIGKILL'ed writer, eviction policy, acks, compaction's disk bound, garbage."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.downlink import journal as jm
from edge.downlink.journal import (COMPACT_SLACK_SEGMENTS, RECORD_OVERHEAD, STATE_ENTRY_BYTES,
                                   STATE_LOG_NAME, STATE_LOG_REWRITE_MIN_BYTES, Eviction, Journal,
                                   JournalCorruptError, JournalRecord, encode_record, scan_records)
from tests.conftest import examples

REPO = Path(__file__).resolve().parent.parent
HYPO = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                  HealthCheck.too_slow])


def segments(directory) -> list[Path]:
    return sorted(Path(directory).glob("seg-*.log"))


def live(j: Journal) -> dict[int, bytes]:
    return {r.seq: r.payload for r in j.pending()}


def fresh_dir(tmp_path, name="j") -> Path:
    """A new empty directory under tmp_path (hypothesis reuses the fixture across examples)."""
    d = tmp_path / f"{name}-{os.urandom(6).hex()}"
    d.mkdir()
    return d


def crash_copy(src, dst) -> Path:
    """What a power-cut-free crash leaves: the files as the open journal has written them so far."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in Path(src).iterdir():
        if f.name != "journal.lock":
            shutil.copyfile(f, dst / f.name)
    return dst


# ---- round trips ------------------------------------------------------------------------------

def test_append_pending_get_ack_round_trip(tmp_path):
    with Journal(tmp_path / "j", sync=False) as j:
        assert len(j) == 0 and j.next_seq == 0 and list(j.pending()) == []
        payloads = [b"", b"a", os.urandom(1000), b"\x00" * 70000]
        seqs = [j.append(p, kind=k % 4 + 1, priority=k % 3, key=100 + k) for k, p in enumerate(payloads)]
        assert seqs == [0, 1, 2, 3] and j.next_seq == 4 and len(j) == 4
        records = list(j.pending())
        assert [(r.seq, r.kind, r.priority, r.key, r.payload) for r in records] == \
            [(s, k % 4 + 1, k % 3, 100 + k, p) for k, (s, p) in enumerate(zip(seqs, payloads))]
        assert isinstance(records[0], JournalRecord)
        assert j.get(2).payload == payloads[2]
        assert [r.seq for r in j.pending(after=1)] == [2, 3]
        assert j.has_key(101) and not j.has_key(0) and not j.has_key(999)
        assert j.stats()["bytes"] == sum(RECORD_OVERHEAD + len(p) for p in payloads)
        assert j.ack([1, range(2, 3)]) == 2
        assert len(j) == 2 and 1 not in j and not j.has_key(101)
        with pytest.raises(KeyError, match="seq 1"):
            j.get(1)
        assert [r.seq for r in j.pending()] == [0, 3]
        assert j.stats()["acked"] == 2
    with Journal(tmp_path / "j") as j:   # durable across reopen
        assert live(j) == {0: payloads[0], 3: payloads[3]}
        assert j.has_key(100) and not j.has_key(102)
        assert j.stats()["acked"] == 2 and j.recovery.clean


def test_ack_while_iterating_and_input_checks(tmp_path):
    with Journal(tmp_path, sync=False) as j:
        for i in range(10):
            j.append(b"%d" % i, kind=1, priority=1)
        got = []
        for r in j.pending():
            got.append(r.seq)
            j.ack([r.seq, r.seq + 1])   # the next one disappears under the iterator: skipped
        assert got == [0, 2, 4, 6, 8] and len(j) == 0
        with pytest.raises(TypeError):
            j.append("text", kind=1, priority=0)
        with pytest.raises(ValueError, match="kind"):
            j.append(b"x", kind=256, priority=0)
        with pytest.raises(ValueError, match="key"):
            j.append(b"x", kind=1, priority=0, key=-1)
        with pytest.raises(TypeError):
            j.ack(["3"])
    with pytest.raises(ValueError, match="closed"):
        j.append(b"x", kind=1, priority=0)


def test_seq_monotonic_across_reopen_even_when_everything_is_gone(tmp_path):
    d = tmp_path / "j"
    with Journal(d, segment_bytes=200, sync=False) as j:
        for i in range(20):
            j.append(b"p" * 50, kind=1, priority=2)
        assert len(segments(d)) > 5
        assert j.ack([range(0, 20)]) == 20
        assert len(segments(d)) <= 1   # dead sealed segments are deleted at once
    with Journal(d, segment_bytes=200) as j:
        assert j.next_seq == 20 and len(j) == 0 and segments(d) == []
        assert j.append(b"x", kind=1, priority=0) == 20
    for f in segments(d):              # even with every segment file gone:
        f.unlink()                     # the high-water mark lives in the state log
    with Journal(d) as j:
        assert j.next_seq == 21
        assert j.append(b"y", kind=1, priority=0) == 21
        assert j.ack([21]) == 1
        crash = crash_copy(d, tmp_path / "crash")   # no close(): a crash right after the ack
    with Journal(crash) as j:
        assert j.next_seq == 22 and len(j) == 0


# ---- crash simulation: cuts and corruption -----------------------------------------------------

def build(directory, payloads, **kw) -> list[tuple[int, int, int]]:
    """Journal the payloads (one segment); (seq, start, end) byte range of each record."""
    with Journal(directory, sync=False, segment_bytes=1 << 30, **kw) as j:
        out, pos = [], 0
        for i, p in enumerate(payloads):
            seq = j.append(p, kind=1 + i % 3, priority=i % 3, key=i + 1)
            out.append((seq, pos, pos + RECORD_OVERHEAD + len(p)))
            pos += RECORD_OVERHEAD + len(p)
    return out


def check_cut(src: Path, dst: Path, layout, payloads, cut: int, with_state: bool):
    (seg,) = segments(src)
    dst.mkdir()
    (dst / seg.name).write_bytes(seg.read_bytes()[:cut])
    if with_state:
        shutil.copyfile(src / STATE_LOG_NAME, dst / STATE_LOG_NAME)
    expect = {seq: payloads[i] for i, (seq, _, end) in enumerate(layout) if end <= cut}
    with Journal(dst, sync=False) as j:
        assert live(j) == expect, cut
        whole = max((end for _, _, end in layout if end <= cut), default=0)
        assert j.recovery.dropped_bytes == cut - whole
        assert bool(j.recovery.torn_tails) == (cut > whole)
        new = j.append(b"after the cut", kind=2, priority=0)
        assert new >= (len(layout) if with_state else max(expect, default=-1) + 1)
    with Journal(dst) as j:
        assert live(j) == {**expect, new: b"after the cut"} and j.recovery.clean


def test_truncate_at_every_offset(tmp_path):
    payloads = [b"", b"A" * 7, os.urandom(40), jm.RECORD_MAGIC * 20, b"z" * 3]
    layout = build(tmp_path / "src", payloads)
    size = layout[-1][2]
    for cut in range(size + 1):
        check_cut(tmp_path / "src", tmp_path / f"cut{cut}", layout, payloads, cut,
                  with_state=cut % 2 == 0)


@settings(max_examples=examples(40), **HYPO)
@given(payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=12), data=st.data())
def test_truncate_at_random_offsets(tmp_path, payloads, data):
    src = fresh_dir(tmp_path, "src")
    layout = build(src, payloads)
    cut = data.draw(st.integers(0, layout[-1][2]))
    check_cut(src, fresh_dir(tmp_path, "cut") / "j", layout, payloads, cut,
              with_state=data.draw(st.booleans()))


@settings(max_examples=examples(60), **HYPO)
@given(payloads=st.lists(st.binary(max_size=200), min_size=2, max_size=12), data=st.data())
def test_corruption_in_the_middle_loses_only_touched_records(tmp_path, payloads, data):
    src = fresh_dir(tmp_path)
    layout = build(src, payloads)
    (seg,) = segments(src)
    blob = bytearray(seg.read_bytes())
    start = data.draw(st.integers(0, len(blob) - 1), label="start")
    length = data.draw(st.integers(1, min(64, len(blob) - start)), label="length")
    flips = data.draw(st.binary(min_size=length, max_size=length).filter(lambda b: all(b)))
    for i, x in enumerate(flips):    # xor with non-zero bytes: every byte in the range changes
        blob[start + i] ^= x
    seg.write_bytes(bytes(blob))
    touched = [(s, a, e) for s, a, e in layout if a < start + length and start < e]
    with Journal(src, sync=False) as j:
        got = live(j)
        report = j.recovery
        for i, (seq, a, e) in enumerate(layout):
            if (seq, a, e) in touched:
                assert seq not in got
                regions = report.corrupt_regions + report.torn_tails
                assert any(o <= a and e <= o + n for _, o, n in regions), (seq, a, e, regions)
            else:
                assert got[seq] == payloads[i]
        assert report.dropped_bytes >= sum(e - a for _, a, e in touched)
        assert not report.clean
        seq = j.append(b"new", kind=1, priority=1)
    with Journal(src) as j:
        assert live(j) == {**got, seq: b"new"}


def test_record_that_rots_on_flash_is_evicted_as_corrupt_and_reported(tmp_path):
    with Journal(tmp_path, sync=False) as j:
        for i in range(3):
            j.append(b"payload-%d" % i, kind=3, priority=1, key=7 + i)
        (seg,) = segments(tmp_path)
        blob = bytearray(seg.read_bytes())
        blob[RECORD_OVERHEAD + len(b"payload-0") + jm.HEADER_BYTES + 2] ^= 0x40   # record 1
        seg.write_bytes(bytes(blob))
        assert [r.seq for r in j.pending()] == [0, 2]
        assert j.pop_evictions() == [Eviction(1, 3, 1, 8)]
        assert j.stats()["evicted_by_reason"]["corrupt"] == 1 and j.stats()["read_errors"] == 1
        blob[jm.HEADER_BYTES] ^= 0x01   # record 0's payload
        seg.write_bytes(bytes(blob))
        with pytest.raises(JournalCorruptError, match="seq 0"):
            j.get(0)
        assert len(j) == 1
    with Journal(tmp_path) as j:
        assert list(live(j)) == [2] and j.stats()["evicted"] == 2


# ---- a writer killed mid-append --------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    from edge.downlink.journal import Journal
    directory, round_, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    j = Journal(directory, capacity_bytes=1 << 26, segment_bytes=8192, sync=sync)
    print("ready", j.next_seq, flush=True)
    i = 0
    while True:
        seq = j.append(b"r%d-i%d-" % (round_, i) * (1 + i % 40), kind=1, priority=2,
                       key=round_ * 1000000 + i)
        print("append", seq, i, flush=True)
        if i % 7 == 6:
            j.ack([seq - 3])
            print("ack", seq - 3, flush=True)
        i += 1
""")


def test_sigkill_mid_append_loses_nothing_that_returned(tmp_path):
    d = tmp_path / "j"
    rng = random.Random(20261201)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    appended, acked, last_next = {}, set(), 0
    unprinted: set[int] = set()   # live records whose append returned after the last print
    for round_ in range(4):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(d), str(round_), str(round_ % 2)],
                                 stdout=subprocess.PIPE, env=env, cwd=REPO)
        ready = child.stdout.readline().split()
        assert ready[0] == b"ready", ready
        assert int(ready[1]) >= last_next   # never reused across restarts
        time.sleep(rng.uniform(0.05, 0.3))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        lines = out.split(b"\n")[:-1]       # the last piece may be a half-written line
        assert len(lines) > 10
        uncertain = None                    # an ack that may have returned unprinted
        for line in lines:
            word, *rest = line.split()
            if word == b"append":
                seq, i = map(int, rest)
                appended[seq] = b"r%d-i%d-" % (round_, i) * (1 + i % 40)
                uncertain = seq - 3 if i % 7 == 6 else None
            else:
                acked.add(int(rest[0]))
                uncertain = None
        with Journal(d) as j:
            got = live(j)
            if uncertain is not None and uncertain not in got:
                acked.add(uncertain)
            for seq, payload in appended.items():
                assert seq in acked or got[seq] == payload, seq
            assert not acked & set(got)
            extra = set(got) - set(appended) - unprinted
            assert len(extra) <= 1 and all(s > max(appended) for s in extra)  # the one being written
            unprinted |= extra
            last_next = j.next_seq
            assert last_next > max(appended)


# ---- eviction ---------------------------------------------------------------------------------

def test_eviction_order_priority_then_age_counted_and_durable(tmp_path):
    size = RECORD_OVERHEAD + 10
    d = tmp_path / "j"
    with Journal(d, capacity_bytes=6 * size, sync=False) as j:
        prios = [2, 0, 1, 0, 2, 1]                  # seq 0..5, exactly at capacity
        for seq, p in enumerate(prios):
            j.append(b"%010d" % seq, kind=p + 1, priority=p, key=seq + 1)
        assert len(j) == 6 and j.pop_evictions() == [] and j.stats()["evicted"] == 0
        j.append(b"x" * 10, kind=1, priority=2)      # seq 6 evicts seq 1 (prio 0, oldest)
        j.append(b"x" * 10 + b"y" * size, kind=1, priority=2)  # seq 7 needs two: 3 (prio 0), 2 (1)
        assert j.pop_evictions() == [Eviction(1, 1, 0, 2), Eviction(3, 1, 0, 4), Eviction(2, 2, 1, 3)]
        assert j.pop_evictions() == []
        assert list(live(j)) == [0, 4, 5, 6, 7]
        st_ = j.stats()
        assert st_["evicted"] == 3 and st_["evicted_by_kind"] == {1: 2, 2: 1}
        assert st_["bytes"] <= 6 * size
        # a housekeeping record (prio 0) never pushes out frames: it is evicted on arrival
        hk = j.append(b"h" * (2 * size), kind=2, priority=0)
        assert j.pop_evictions() == [Eviction(hk, 2, 0, 0)] and hk not in j
        assert list(live(j)) == [0, 4, 5, 6, 7]
        with pytest.raises(ValueError, match=rf"{6 * size + 1} bytes .* capacity of {6 * size}"):
            j.append(b"z" * (6 * size + 1 - RECORD_OVERHEAD), kind=1, priority=2)
    with Journal(d, capacity_bytes=6 * size) as j:
        assert list(live(j)) == [0, 4, 5, 6, 7] and j.next_seq == hk + 1
        assert j.stats()["evicted"] == 4 and j.stats()["evicted_by_kind"] == {1: 2, 2: 2}
        assert j.pop_evictions() == []
    with Journal(d, capacity_bytes=2 * size + 2 * RECORD_OVERHEAD) as j:   # capacity lowered
        assert j.recovery.evicted_on_open == 3
        assert [e.seq for e in j.pop_evictions()] == [5, 0, 4]   # prio 1, then oldest prio 2
        assert list(live(j)) == [6, 7]


def test_never_evicts_under_capacity(tmp_path):
    rng = random.Random(3)
    with Journal(tmp_path, capacity_bytes=50_000, segment_bytes=4096, sync=False) as j:
        total = 0
        while True:
            n = rng.randrange(0, 300)
            if total + RECORD_OVERHEAD + n > 50_000:
                break
            j.append(os.urandom(n), kind=1, priority=rng.randrange(3))
            total += RECORD_OVERHEAD + n
        assert j.stats()["evicted"] == 0 and j.stats()["bytes"] == total


# ---- acks ---------------------------------------------------------------------------------------

def test_acks_durable_and_unknown_seqs_harmless(tmp_path):
    d = tmp_path / "j"
    with Journal(d) as j:
        for i in range(10):
            j.append(b"%d" % i, kind=1, priority=1)
        assert j.ack([3, 3, range(5, 7), 10**12, -1, range(100, 10**30)]) == 3
        assert j.stats()["ack_ignored"] == 1 + 1 + 1 + (10**30 - 100)
        assert j.ack([3]) == 0 and j.ack([]) == 0
    with Journal(d) as j:
        assert list(live(j)) == [0, 1, 2, 4, 7, 8, 9] and j.stats()["acked"] == 3
        assert j.ack([range(0, 10**30)]) == 7 and len(j) == 0


def test_ack_log_torn_tail_and_corrupt_entries(tmp_path):
    d = tmp_path / "j"
    with Journal(d, sync=False) as j:
        for i in range(8):
            j.append(b"%d" % i, kind=1, priority=1)
        for i in range(0, 8, 2):
            j.ack([i])
    log = d / STATE_LOG_NAME
    blob = bytearray(log.read_bytes())
    assert len(blob) % STATE_ENTRY_BYTES == 0
    blob[STATE_ENTRY_BYTES + 5] ^= 0xFF          # second entry: ack of seq 2
    log.write_bytes(bytes(blob) + b"\xa5S\x01\x01")  # plus a torn entry
    with Journal(d) as j:
        assert list(live(j)) == [1, 2, 3, 5, 7]      # the ack of 2 is lost: 2 comes back (resent)
        problems = [p[2] for p in j.recovery.ack_log_problems]
        assert problems == ["corrupt entries skipped", "torn tail truncated"]
    with Journal(d) as j:                            # and the garbage is gone
        assert j.recovery.clean and list(live(j)) == [1, 2, 3, 5, 7]


# ---- compaction and disk bound ------------------------------------------------------------------

def test_disk_bounded_with_pinned_records_and_random_acks(tmp_path):
    d = tmp_path / "j"
    capacity, seg = 64 * 1024, 4096
    rng = random.Random(20261202)
    segment_bound = capacity + (COMPACT_SLACK_SEGMENTS + 2) * seg
    j = Journal(d, capacity_bytes=capacity, segment_bytes=seg, sync=False)
    expect, pinned = {}, set()
    state_peak = seg_peak = 0
    for i in range(5000):
        payload = rng.randbytes(rng.randrange(20, 400))
        seq = j.append(payload, kind=1 + i % 3, priority=i % 3, key=i + 1)
        expect[seq] = payload
        if i % 500 == 0:
            pinned.add(seq)                      # never acked: pins its segment
        for e in j.pop_evictions():
            expect.pop(e.seq)
        if len(expect) > len(pinned) + 10:     # scattered acks, ~120 records in flight
            choices = [s for s in expect if s not in pinned]
            done = rng.sample(choices, 2 if len(expect) > 120 else rng.randrange(2))
            assert j.ack(done) == len(done)
            for s in done:
                expect.pop(s)
        seg_bytes = sum(f.stat().st_size for f in segments(d))
        seg_peak = max(seg_peak, seg_bytes)
        state_peak = max(state_peak, (d / STATE_LOG_NAME).stat().st_size)
        assert j.stats()["bytes"] <= capacity
    # the bound does not grow with the number of appends
    assert seg_peak <= segment_bound
    assert state_peak <= 2 * STATE_LOG_REWRITE_MIN_BYTES + 2 * STATE_ENTRY_BYTES * (len(expect) + 16)
    assert j.stats()["disk_bytes"] <= capacity + (COMPACT_SLACK_SEGMENTS + 2) * seg \
        + 2 * STATE_LOG_REWRITE_MIN_BYTES
    assert j.stats()["compactions"] > 0 and j.stats()["relocated"] > 0
    assert j.stats()["evicted"] == 0 and pinned <= set(expect)
    assert live(j) == expect
    j.close()
    with Journal(d, capacity_bytes=capacity, segment_bytes=seg) as j:
        assert live(j) == expect and j.recovery.clean and j.recovery.duplicates == 0
        assert j.next_seq == 5000


def test_interrupted_compaction_folds_copies_by_seq(tmp_path):
    d = tmp_path / "j"
    with Journal(d, segment_bytes=400, sync=False) as j:
        for i in range(40):
            j.append(b"r%03d" % i * 10, kind=1, priority=1)
        old = {f.name: f.read_bytes() for f in segments(d)}
        keep = {0, 6, 12, 18, 24, 30}            # pin one record in each of 6 old segments
        j.ack([s for s in range(36) if s not in keep])
        assert j.stats()["relocated"] >= 1
        expect = live(j)
    for name, blob in old.items():               # the deletes never reached the disk
        if not (d / name).exists():
            (d / name).write_bytes(blob)
    with Journal(d, segment_bytes=400) as j:
        assert live(j) == expect and set(expect) >= keep
        assert j.recovery.duplicates >= 1
        assert len(j) == len(expect)


# ---- garbage ----------------------------------------------------------------------------------

@settings(max_examples=examples(25), **HYPO)
@given(files=st.dictionaries(
    st.sampled_from(["seg-0000000000000000.log", "seg-00000000000000ff.log", "seg-ffffffffffffffff.log",
                     STATE_LOG_NAME, "acks.log.tmp", "notes.txt", "seg-12.log", "journal.lock"]),
    st.binary(max_size=3000)), real=st.booleans())
def test_garbage_directory_opens(tmp_path, files, real):
    d = fresh_dir(tmp_path)
    record = encode_record(42, 1, 2, 0, 9, b"survivor")
    for name, blob in files.items():
        if real and name.startswith("seg-0"):
            blob = blob + record + blob          # a real record inside garbage is found
        (d / name).write_bytes(blob)
    with Journal(d, sync=False) as j:
        got = live(j)
        if real and any(n.startswith("seg-0") for n in files):
            assert got.get(42) == b"survivor"
        seq = j.append(b"fresh", kind=1, priority=0)
    with Journal(d) as j:
        assert live(j)[seq] == b"fresh"


def test_random_bytes_everywhere(tmp_path):
    rng = random.Random(5)
    d = tmp_path / "j"
    d.mkdir()
    for i in range(6):
        (d / jm.segment_name(rng.randrange(1 << 40))).write_bytes(rng.randbytes(rng.randrange(1, 200_000)))
    (d / STATE_LOG_NAME).write_bytes(rng.randbytes(50_000))
    (d / "seg-0000000000000001.log").mkdir()     # not a file: ignored
    garbage = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
    with Journal(d) as j:
        assert len(j) == 0 and j.recovery.segments_scanned == 6
        assert j.recovery.dropped_bytes == garbage and not j.recovery.clean
        assert j.recovery.ignored_files == ["seg-0000000000000001.log"]
        assert j.stats()["dropped_bytes"] == j.recovery.dropped_bytes
        j.append(b"ok", kind=1, priority=0)
    with Journal(d) as j:
        assert list(live(j).values()) == [b"ok"] and j.recovery.clean


def test_scan_records_reports_gaps_and_damage():
    a = encode_record(1, 1, 1, 0, 0, b"aaaa")
    b = encode_record(2, 1, 1, 0, 0, b"bbbb")
    c = encode_record(3, 1, 1, 0, 0, b"cccc")
    bad = bytearray(b)
    bad[-6] ^= 1                                  # payload of b: header fine, record CRC not
    records, gaps, damaged, end = scan_records(a + bytes(bad) + c + c[:10])
    assert [r[5] for r in records] == [1, 3] and damaged == [2]
    assert gaps == [(len(a), len(b))] and end == len(a) + len(b) + len(c)


# ---- OS errors and the single writer -------------------------------------------------------------

def test_second_writer_is_refused(tmp_path):
    with Journal(tmp_path):
        with pytest.raises(OSError, match="another writer"):
            Journal(tmp_path)
    Journal(tmp_path).close()


def test_os_error_names_the_path(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"not a directory")
    with pytest.raises(OSError, match="journal directory") as info:
        Journal(f / "j")
    assert str(f) in str(info.value)
