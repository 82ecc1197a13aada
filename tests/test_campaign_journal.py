"""Journal damage campaign (issue 5, item 6): CAM-004.

A journal of a few hundred records of mixed kinds and sizes (frames, housekeeping, events; empty
to larger than a segment; payloads that hold the record and state-log magics), some acked, is
damaged at random, one damage per trial on a fresh copy: single bit flips, bursts, zeroed ranges,
random byte corruptions and truncations at random offsets (the injector's corrupt_journal /
truncate_journal for segments), of segments and of the state log (acks.log). Each trial opens the
damaged copy and checks it against what was appended:

  - opening never raises, and the journal takes a new record afterwards that survives a reopen
    (which finds no new damage: torn tails were cut, the state log rewritten; a corrupt region in
    the middle of a segment stays, and is reported again, until that segment is deleted);
  - every live record whose bytes were not touched is recovered with its exact payload;
  - no recovered record has a payload other than the one appended (nothing silently wrong);
  - a lost record is reported: its bytes lie in a reported corrupt region / torn tail (or its seq
    is in damaged_seqs); a truncation also loses records wholly behind the cut, which leave
    nothing on disk to point at (counted: "vanished"; the report is not clean unless the cut is
    on a record boundary, counted as "silent");
  - acked records never come back live, unless the damage hit every state-log entry that
    recorded their ack: then they come back (to be sent again; the ground drops the duplicate),
    with their exact payload, and the state-log damage is reported (counted: "resurrected"; a
    state log cut exactly between two entries looks whole: "resurrected_silent").

Counts: EDGE_CAMPAIGN=ci (default) 100 trials, full 1,000 (tests/campaign.py); seeds fixed.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.downlink import journal as jm
from edge.downlink.journal import (OP_ACK, OP_DEAD, OP_EVICT, STATE_LOG_NAME, Journal,
                                   scan_records, scan_state)
from edge.reliability.inject import corrupt_journal, truncate_journal
from tests.campaign import Stopwatch, count, record

SEGMENT_BYTES = 8192
KINDS = {1: (200, 3000), 2: (60, 400), 3: (10, 200)}   # frame, housekeeping, event: payload sizes
DAMAGES = ("bit", "burst", "zero", "bytes", "truncate")


class Pristine:
    """The undamaged journal (root/journal) and everything appended to it."""

    def __init__(self, root: Path, seed: int = 20260504, n: int = 320):
        self.root = root
        self.dir = root / "journal"
        rng = random.Random(seed)
        self.payloads: dict[int, bytes] = {}
        self.kinds: dict[int, int] = {}
        self.acked: set[int] = set()
        with Journal(self.dir, segment_bytes=SEGMENT_BYTES, sync=False) as j:
            for i in range(n):
                kind = rng.choice([1, 1, 2, 3])
                lo, hi = KINDS[kind]
                size = rng.choice([0, 1, SEGMENT_BYTES * 2]) if i % 53 == 7 else rng.randrange(lo, hi)
                payload = bytearray(rng.randbytes(size))
                if size > 40 and i % 5 == 0:   # magics inside payloads: resync must not trust them
                    at = rng.randrange(size - 30)
                    payload[at:at + 2] = rng.choice([jm.RECORD_MAGIC, jm.STATE_MAGIC])
                seq = j.append(bytes(payload), kind=kind, priority=kind % 3,
                               key=i + 1 if kind == 1 else 0)
                self.payloads[seq], self.kinds[seq] = bytes(payload), kind
                if i % 9 == 8:   # the ground acks older records, scattered, singles and runs
                    old = [s for s in self.payloads if s not in self.acked and s < seq - 5]
                    pick = rng.sample(old, min(len(old), rng.randrange(1, 6)))
                    if rng.random() < 0.3 and old:
                        first = rng.choice(old)
                        pick += [s for s in range(first, first + 4) if s in old]
                    assert j.ack(sorted(set(pick))) == len(set(pick))
                    self.acked.update(pick)
            self.next_seq = j.next_seq
            assert j.stats()["evicted"] == 0
        self.live = {s: p for s, p in self.payloads.items() if s not in self.acked}
        self.files = {p.name: p.read_bytes() for p in sorted(self.dir.iterdir())
                      if p.is_file() and p.name != jm.LOCK_NAME}
        self.segments = sorted(n for n in self.files if n.startswith("seg-"))
        # where each seq's bytes are on disk: seq -> [(segment, start, end)]
        self.where: dict[int, list] = {}
        for name in self.segments:
            records, gaps, damaged, end = scan_records(self.files[name])
            assert not gaps and not damaged and end == len(self.files[name])
            for offset, total, *_, seq, _key in records:
                self.where.setdefault(seq, []).append((name, offset, offset + total))
        assert all(len(self.where[s]) == 1 for s in self.live), "one copy of each live record"
        # the state-log entries that make each acked seq dead
        entries, gaps, end = scan_state(self.files[STATE_LOG_NAME])
        assert not gaps and end == len(self.files[STATE_LOG_NAME])
        self.ack_entries: dict[int, list] = {s: [] for s in self.acked}
        for offset, op, _reason, _kind, _prio, a, b in entries:
            if op in (OP_ACK, OP_DEAD, OP_EVICT):
                hi = a if op == OP_EVICT else b
                for s in self.acked:
                    if a <= s <= hi:
                        self.ack_entries[s].append((offset, offset + jm.STATE_ENTRY_BYTES))
        assert all(self.ack_entries[s] for s in self.acked)
        self.on_disk_acked = {s for s in self.acked if s in self.where}

    def copy(self, dst: Path) -> Path:
        dst.mkdir(parents=True)
        for name, blob in self.files.items():
            (dst / name).write_bytes(blob)
        return dst


def changed(before: bytes, after: bytes) -> np.ndarray:
    """Offsets of `before` whose byte differs or is gone in `after`."""
    n = min(len(before), len(after))
    a = np.frombuffer(before, np.uint8)
    b = np.frombuffer(after, np.uint8)
    diff = np.flatnonzero(a[:n] != b[:n])
    return np.concatenate([diff, np.arange(n, len(before))]) if len(after) < len(before) else diff


def touched(offsets: np.ndarray, start: int, end: int) -> bool:
    i = np.searchsorted(offsets, start)
    return bool(i < offsets.size and offsets[i] < end)


def damage(pristine: Pristine, work: Path, rng: random.Random) -> dict:
    """One random damage of one file of the copy at work/journal; returns its description."""
    jdir = work / "journal"
    target = STATE_LOG_NAME if rng.random() < 0.25 else rng.choice(pristine.segments)
    path = jdir / target
    size = path.stat().st_size
    how = rng.choice(DAMAGES)
    desc = {"file": target, "damage": how, "size": size}
    if target != STATE_LOG_NAME and how in ("bytes", "truncate"):   # through the injector
        if how == "bytes":
            desc.update(corrupt_journal(work, n_bytes=rng.randrange(1, 9), rng=rng, segment=target))
        else:
            desc.update(truncate_journal(work, rng=rng, segment=target))
        return desc
    raw = bytearray(path.read_bytes())
    if how == "bit":
        at = rng.randrange(size)
        raw[at] ^= 1 << rng.randrange(8)
        desc["at"] = at
    elif how == "burst":
        length = rng.randrange(2, 65)
        at = rng.randrange(max(1, size - length))
        for k in range(at, min(size, at + length)):
            if rng.random() < 0.6:
                raw[k] ^= rng.randrange(1, 256)
        desc.update(at=at, length=length)
    elif how == "zero":
        length = rng.randrange(1, 1025)
        at = rng.randrange(size)
        raw[at:at + length] = bytes(len(raw[at:at + length]))
        desc.update(at=at, length=length)
    elif how == "bytes":
        for at in rng.sample(range(size), min(size, rng.randrange(1, 9))):
            raw[at] ^= rng.randrange(1, 256)
    else:   # truncate
        cut = rng.randrange(size)
        del raw[cut:]
        desc["cut"] = cut
    path.write_bytes(bytes(raw))
    return desc


def check_trial(pristine: Pristine, work: Path, desc: dict, totals: dict) -> None:
    jdir = work / "journal"
    changes = {name: changed(blob, (jdir / name).read_bytes() if (jdir / name).exists() else b"")
               for name, blob in pristine.files.items()}
    sizes = {name: (jdir / name).stat().st_size for name in pristine.files}
    state_hit = changes[STATE_LOG_NAME]
    try:
        j = Journal(jdir, segment_bytes=SEGMENT_BYTES, sync=False)
    except Exception as e:  # never: garbage of any kind opens
        pytest.fail(f"opening the damaged journal raised {type(e).__name__}: {e} ({desc})")
    with j:
        got = {r.seq: r.payload for r in j.pending()}
        rep = j.recovery
        regions = {}
        for name, offset, length in rep.corrupt_regions + rep.torn_tails:
            regions.setdefault(name, []).append((offset, offset + length))
        for seq, payload in got.items():
            assert pristine.payloads.get(seq) == payload, f"seq {seq}: wrong payload ({desc})"
        for seq, payload in pristine.live.items():
            ((name, start, end),) = pristine.where[seq]
            if not touched(changes[name], start, end):
                assert got.get(seq) == payload, f"untouched seq {seq} not recovered ({desc})"
                totals["recovered"] += 1
                continue
            if seq in got:   # changed bytes fail a CRC: only a CRC32C collision gets here (payload
                totals["touched_recovered"] += 1   # checked above all the same)
                continue
            totals["lost"] += 1
            end_now = min(end, sizes[name])
            if start < end_now and (seq in rep.damaged_seqs or any(
                    o <= start and end_now <= e for o, e in regions.get(name, ()))):
                totals["reported"] += 1
            elif start >= sizes[name]:   # behind a truncation: nothing left on disk
                assert desc["damage"] == "truncate", (seq, desc)
                totals["vanished"] += 1
                if rep.clean:
                    totals["silent"] += 1
            else:
                pytest.fail(f"seq {seq} lost and not reported: {rep} ({desc})")
        for seq in pristine.acked & set(got):
            hit = all(touched(state_hit, a, b) for a, b in pristine.ack_entries[seq])
            assert hit, f"acked seq {seq} came back live; its ack entries are intact ({desc})"
            totals["resurrected"] += 1
            if not rep.ack_log_problems:   # only a state log cut between two entries looks whole
                assert desc["damage"] == "truncate" and \
                    desc["cut"] % jm.STATE_ENTRY_BYTES == 0, (seq, desc)
                totals["resurrected_silent"] += 1
        new = j.append(b"after the damage", kind=3, priority=1)
        if new < pristine.next_seq:
            totals["seq_regressed"] += 1
    with Journal(jdir, segment_bytes=SEGMENT_BYTES, sync=False) as j:
        again = {r.seq: r.payload for r in j.pending()}
        assert again == {**got, new: b"after the damage"}, desc
        second = j.recovery   # the first open cut torn tails and rewrote the state log; damage in
        assert not second.torn_tails and not second.ack_log_problems, (second, desc)  # the middle
        assert set(second.corrupt_regions) <= set(rep.corrupt_regions), (second, desc)  # stays
    totals["trials"] += 1
    totals["by_damage"][desc["damage"]] = totals["by_damage"].get(desc["damage"], 0) + 1
    if desc["file"] == STATE_LOG_NAME:
        totals["state_log_trials"] += 1
    if not rep.clean:
        totals["reports_not_clean"] += 1


def test_cam004_journal_damage_recovers_every_untouched_record(tmp_path):
    """CAM-004: random truncations and byte corruptions (bit flips, bursts, zeroed ranges, random
    bytes, truncation at random offsets) of journal segments and of acks.log, one per trial on a
    copy of a journal of a few hundred mixed records (some acked): never an exception; every
    untouched live record recovered with its payload; no recovered payload differs from what was
    appended; lost records reported (see the module docstring); acked records stay dead unless
    every state-log entry of their ack was damaged (then resent, reported)."""
    n = count(100, 1_000)
    totals = dict.fromkeys(("trials", "recovered", "touched_recovered", "lost", "reported",
                            "vanished", "silent", "resurrected_silent",
                            "resurrected", "seq_regressed", "state_log_trials",
                            "reports_not_clean"), 0)
    totals["by_damage"] = {}
    with Stopwatch() as sw:
        pristine = Pristine(tmp_path / "pristine")
        rng = random.Random(20260505)
        for trial in range(n):
            work = tmp_path / f"t{trial}"
            pristine.copy(work / "journal")
            desc = damage(pristine, work, rng)
            check_trial(pristine, work, desc, totals)
            shutil.rmtree(work)
    assert totals["trials"] == n
    assert totals["seq_regressed"] == 0, "a seq was handed out again after the damage"
    record("CAM-004", trials=n, records=len(pristine.payloads), live=len(pristine.live),
           acked=len(pristine.acked), segments=len(pristine.segments),
           **{k: v for k, v in totals.items() if k != "trials"}, wall_s=round(sw.s, 2))


def test_cam004_truncation_on_a_record_boundary_is_reported(tmp_path):
    """CAM-004: a segment cut exactly between two records loses the records behind the cut without
    leaving a byte to report: the recovery finds them as seqs below the durable high-water mark that
    are neither on disk nor acked / evicted (RecoveryReport.missing_seqs), reports them once and
    records them as dead."""
    pristine = Pristine(tmp_path / "pristine", n=60)
    name = pristine.segments[0]
    records, *_ = scan_records(pristine.files[name])
    live_in_segment = [seq for *_, seq, _ in records if seq in pristine.live]
    cut_after = next(i for i, (*_, seq, _) in enumerate(records) if seq in pristine.live)
    offset, total = records[cut_after][0], records[cut_after][1]
    work = pristine.copy(tmp_path / "work" / "journal")
    truncate_journal(work.parent, segment=name, offset=offset + total)
    with Journal(work, segment_bytes=SEGMENT_BYTES, sync=False) as j:
        got = {r.seq for r in j.pending()}
        lost = [s for s in live_in_segment if s not in got]
        assert lost, "the cut must lose live records"
        assert not j.recovery.clean, "records lost behind a cut on a record boundary must be reported"
        reported = {s for a, b in j.recovery.missing_seqs for s in range(a, b + 1)}
        assert set(lost) <= reported
    with Journal(work, segment_bytes=SEGMENT_BYTES, sync=False) as j:
        assert j.recovery.missing_seqs == []   # reported once, then known dead