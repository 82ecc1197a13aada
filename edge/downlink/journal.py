"""Store-and-forward journal of the flight side: every record the pipeline hands over stays on flash
until the ground acknowledges it, across crashes, resets and power cuts, or its loss is counted and
reported. Records leave the journal only two ways: ack (delivered) or eviction (journal full, or a
record that no longer verifies), and every eviction is durable, counted and queued for the caller.

Files in the journal directory (one writer process at a time: `journal.lock` is flock'ed while a
Journal is open; a second writer gets an OSError naming the directory):

    seg-<16 hex digits>.log   segments: append-only runs of record entries. The number is next_seq
                              when the segment was created (bumped past the previous segment's
                              number when compaction rolls twice without an append), so names sort
                              in creation order and a later copy of a seq is always the newer one.
    acks.log                  the state log: fixed-size entries for acks, evictions, the seq
                              high-water mark and lifetime totals; rewritten compactly (via
                              acks.log.tmp + rename) when it has doubled since the last rewrite.
    journal.lock              the single-writer lock (its content is irrelevant).

Record entry (little-endian; RECORD_OVERHEAD = 36 bytes around the payload):

    0   2  magic A5 4A            12  8  seq (u64, unique and increasing across restarts)
    2   1  format version (1)     20  8  key (u64, caller-defined, 0 = none; the pipeline: frame id)
    3   1  kind                   28  4  header CRC32C of bytes 0..27
    4   1  priority               32  n  payload
    5   1  flags (bit 0: a copy relocated by compaction)
    6   2  reserved, 0            32+n 4 record CRC32C of bytes 0..31+n (header, then payload)
    8   4  payload length n

Two CRCs because they catch different failures: the header CRC lets recovery trust the length
before it reads the payload (a corrupt length cannot swallow the records behind it) and makes a
resync candidate (magic + header CRC) a 1-in-2**32 false positive; the record CRC is written last,
so a torn write (header on flash, payload partial) fails it.

State entry (STATE_ENTRY_BYTES = 28): magic A5 53, version, op, reason, kind, priority, pad,
a (u64), b (u64), CRC32C of bytes 0..23. Ops: ACK a..b (inclusive, every seq in it was live),
EVICT seq a (key b, with kind, priority, reason), HIGH_WATER next_seq = a, DEAD a..b (written by a
rewrite: not live, not counted again), TOTAL_ACKED a, TOTAL_EVICTED a (per kind and reason).

Recovery (every open): replay the state log (a torn tail is truncated, corrupt entries are skipped
and reported), then scan every segment: keep each complete record whose two CRCs verify; bytes
that do not verify in the middle are skipped by scanning forward for the next magic whose header
CRC verifies (one bad record never loses later ones) and reported as corrupt regions; invalid bytes
after a segment's last good record are a torn tail and truncated away. Copies of one seq (a
compaction interrupted before it deleted the old segment) fold into the later one. A record is live
unless the state log says acked, evicted or dead. next_seq = max(high-water mark, every seq seen on
disk or in the state log + 1), so seqs are never reused even when every segment is gone. Garbage
never raises: the result is a journal (possibly empty) plus a RecoveryReport; only OS errors
(permissions, I/O) propagate, naming the path.

Capacity: live bytes (RECORD_OVERHEAD + payload per unacked, un-evicted record) stay within
capacity_bytes. An append that would exceed it evicts live records of its own priority or lower,
lowest priority first and oldest (lowest seq) first, until it fits. A record never pushes out one
of higher priority: when evicting every record of lower or equal priority would not make room, the
newcomer itself is evicted on arrival (it gets a seq, which is reported like any other eviction).
A record larger than the whole capacity is a ValueError.

Disk: a sealed segment whose records are all dead is deleted. When the dead bytes of the sealed
segments exceed COMPACT_SLACK_SEGMENTS segments, compaction copies the live records of a sparse
segment (the oldest at most half live, else the sparsest) to the active segment with the same seq
and FLAG_RELOCATED, fsyncs them, then deletes the old segment. Disk use therefore stays within
capacity_bytes + (COMPACT_SLACK_SEGMENTS + 1) * segment_bytes + the largest record, plus the state
log: at most max(STATE_LOG_REWRITE_MIN_BYTES, twice its last rewrite), a rewrite holding 28 bytes
per run of dead seqs between the live records still on disk (ground acks in ranges: a few runs).

Counters: stats()["acked"] and ["evicted"] are lifetime totals of the directory (replayed from
the state log); "records", "bytes" and "disk_bytes" are the present state.

Durability: append(sync=True) returns after fsync of the segment (and of the directory after a
roll); with sync=False the record is in the page cache (it survives a process crash, not a power
cut) until sync(). The seq of an unsynced record lost in a power cut may be handed out again (that
record never existed durably, so it cannot have been acked). Compaction always fsyncs its copies
before it deletes their originals, whatever the sync setting.

Memory: per live record the index holds (seq, segment, offset, length, kind, priority, key), plus a
key -> count map for has_key and per-priority seq queues for eviction order; payloads stay on disk.
"""
from __future__ import annotations

import bisect
import errno
import fcntl
import mmap
import os
import re
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple

from edge.kernels.crc32c import crc32c

MIB = 1 << 20
DEFAULT_CAPACITY_BYTES = 64 * MIB
DEFAULT_SEGMENT_BYTES = 1 * MIB

# ---- record entries ----------------------------------------------------------------------------
RECORD_MAGIC = b"\xa5J"
RECORD_VERSION = 1
#: flags bit 0: this entry is a copy compaction relocated (same seq as the original).
FLAG_RELOCATED = 0x01
#: magic, version, kind, priority, flags, reserved, payload length, seq, key
_RECORD_HEAD = struct.Struct("<2sBBBBHIQQ")
_CRC = struct.Struct("<I")
HEADER_BYTES = _RECORD_HEAD.size + _CRC.size   # 32: fields + header CRC
TRAILER_BYTES = _CRC.size                      # the record CRC
RECORD_OVERHEAD = HEADER_BYTES + TRAILER_BYTES
MAX_PAYLOAD_BYTES = 0xFFFFFFFF                 # the u32 length field
U8_MAX = 0xFF
U64_MAX = 0xFFFFFFFFFFFFFFFF

# ---- state log entries -------------------------------------------------------------------------
STATE_MAGIC = b"\xa5S"
STATE_VERSION = 1
#: magic, version, op, reason, kind, priority, pad, a, b
_STATE_BODY = struct.Struct("<2sBBBBBxQQ")
STATE_ENTRY_BYTES = _STATE_BODY.size + _CRC.size

OP_ACK = 1
OP_EVICT = 2
OP_HIGH_WATER = 3
OP_DEAD = 4
OP_TOTAL_ACKED = 5
OP_TOTAL_EVICTED = 6

EVICT_CAPACITY = 1   # the journal was full
EVICT_CORRUPT = 2    # the record failed its CRC when read back
EVICT_REASONS = {EVICT_CAPACITY: "capacity", EVICT_CORRUPT: "corrupt"}

# ---- files -------------------------------------------------------------------------------------
SEGMENT_PATTERN = re.compile(r"seg-([0-9a-f]{16})\.log")
STATE_LOG_NAME = "acks.log"
STATE_TMP_NAME = "acks.log.tmp"
LOCK_NAME = "journal.lock"

# ---- policy ------------------------------------------------------------------------------------
#: Compaction starts when the sealed segments hold more dead bytes than this many segments: the disk
#: slack above capacity_bytes. Smaller means less flash, more copying under scattered acks.
COMPACT_SLACK_SEGMENTS = 4
#: A sealed segment at most this fraction live is "sparse": compacted oldest first.
SPARSE_LIVE_FRACTION = 0.5
#: The state log is rewritten once it exceeds this size and twice its size after the last rewrite.
STATE_LOG_REWRITE_MIN_BYTES = 16 * 1024
#: Evictions queued for pop_evictions(); beyond that the oldest are dropped from the queue (they
#: stay counted in stats(), and stats()["evictions_unreported"] counts the dropped reports).
MAX_QUEUED_EVICTIONS = 4096
#: A per-priority eviction queue is rebuilt when it holds this many more dead seqs than live ones.
_QUEUE_SLACK = 64


class JournalRecord(NamedTuple):
    seq: int
    kind: int
    priority: int
    key: int
    payload: bytes


class Eviction(NamedTuple):
    """A record that left the journal undelivered (see stats()["evicted_by_reason"] for why)."""
    seq: int
    kind: int
    priority: int
    key: int


class JournalCorruptError(KeyError):
    """get(seq): the record failed its CRC when read back; it has been evicted (reason corrupt)."""


@dataclass
class RecoveryReport:
    """What open() found on disk. `clean` is True when nothing was dropped or skipped."""

    segments_scanned: int = 0
    records_scanned: int = 0          # complete, verified record entries (live, dead and copies)
    records_recovered: int = 0        # live records after recovery
    duplicates: int = 0               # relocated copies folded into one record by seq
    damaged_seqs: list = field(default_factory=list)     # header verified, payload did not: lost
    dropped_bytes: int = 0            # bytes that did not verify (segments and state log)
    torn_tails: list = field(default_factory=list)       # (segment name, offset, length) truncated
    corrupt_regions: list = field(default_factory=list)  # (segment name, offset, length) skipped
    segments_deleted: int = 0         # all-dead or empty segments removed at open
    ack_log_entries: int = 0          # verified state log entries replayed
    ack_log_problems: list = field(default_factory=list)  # (offset, length, what)
    ignored_files: list = field(default_factory=list)     # names in the directory that are not ours
    evicted_on_open: int = 0          # live records over capacity at open (capacity lowered, or an
                                      # unsynced eviction lost in a power cut)
    missing_seqs: list = field(default_factory=list)     # (lo, hi) inclusive: seqs below next_seq
                                      # that are neither on disk nor acked / evicted: records lost
                                      # without a trace in the bytes (a cut on a record boundary)

    @property
    def missing_count(self) -> int:
        return sum(b - a + 1 for a, b in self.missing_seqs)

    @property
    def clean(self) -> bool:
        return not (self.damaged_seqs or self.dropped_bytes or self.torn_tails
                    or self.corrupt_regions or self.ack_log_problems or self.missing_seqs)


@dataclass
class _Segment:
    id: int
    path: str
    size: int = 0
    live_bytes: int = 0
    live_count: int = 0
    min_seq: int | None = None        # lowest seq of any record entry in it (live or dead)
    max_seq: int = -1                 # highest seq of any entry in it (incl. damaged ones)
    fd: int | None = None             # read descriptor, opened on first read

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def segment_name(segment_id: int) -> str:
    return f"seg-{segment_id:016x}.log"


# ---- OS helpers: every error names the path --------------------------------------------------------

def _os_error(exc: OSError, action: str, path: str) -> OSError:
    # OSError(errno, ...) builds the matching subclass (PermissionError, FileNotFoundError, ...)
    return OSError(exc.errno, f"journal: cannot {action}: {exc.strerror}", path)


def _write_all(fd: int, data, path: str, action: str) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise _os_error(e, action, path) from e


def _fsync(fd: int, path: str) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        raise _os_error(e, "fsync", path) from e


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise _os_error(e, "open directory", path) from e
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # some filesystems cannot fsync a directory
            raise _os_error(e, "fsync directory", path) from e
    finally:
        os.close(fd)


class _Mapped:
    """Read-only view of a whole file (mmap: a huge garbage file costs no memory), as `buf` (find,
    slicing, unpack_from) and `view` (zero-copy slices for the CRC)."""

    def __init__(self, path: str):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise _os_error(e, "open", path) from e
        try:
            self.size = os.fstat(fd).st_size
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if self.size else None
        except OSError as e:
            raise _os_error(e, "map", path) from e
        finally:
            os.close(fd)
        self.buf = self._mm if self._mm is not None else b""
        self.view = memoryview(self.buf)

    def close(self) -> None:
        self.view.release()
        if self._mm is not None:
            self._mm.close()


# ---- entry encoding and scanning -------------------------------------------------------------------

def encode_record(seq: int, kind: int, priority: int, flags: int, key: int, payload) -> bytes:
    head = _RECORD_HEAD.pack(RECORD_MAGIC, RECORD_VERSION, kind, priority, flags, 0,
                             len(payload), seq, key)
    header = head + _CRC.pack(crc32c(head))
    return b"".join((header, payload, _CRC.pack(crc32c(payload, crc32c(header)))))


def _state_entry(op: int, a: int = 0, b: int = 0, *, reason: int = 0, kind: int = 0,
                 priority: int = 0) -> bytes:
    body = _STATE_BODY.pack(STATE_MAGIC, STATE_VERSION, op, reason, kind, priority, a, b)
    return body + _CRC.pack(crc32c(body))


def _header_at(buf, view, pos: int, end: int):
    """The verified header fields at pos, or None."""
    if end - pos < HEADER_BYTES or buf[pos:pos + 2] != RECORD_MAGIC:
        return None
    fields = _RECORD_HEAD.unpack_from(buf, pos)
    (header_crc,) = _CRC.unpack_from(buf, pos + _RECORD_HEAD.size)
    if fields[1] != RECORD_VERSION or crc32c(view[pos:pos + _RECORD_HEAD.size]) != header_crc:
        return None
    return fields


def scan_records(buf, view=None):
    """Scan a segment's bytes. Returns (records, gaps, damaged_seqs, good_end):
    records: (offset, total length, kind, priority, flags, seq, key) of every verified entry;
    gaps: (offset, length) of unverified bytes between verified entries;
    damaged_seqs: seqs of entries whose header verified but whose record CRC did not (or that end
    past the end of the data); good_end: end of the last verified entry (the rest is a torn tail)."""
    view = memoryview(buf) if view is None else view
    end = len(buf)
    records, gaps, damaged = [], [], []
    pos = good_end = 0
    while pos + HEADER_BYTES <= end:
        fields = _header_at(buf, view, pos, end)
        if fields is not None:
            _, _, kind, priority, flags, _, length, seq, key = fields
            total = RECORD_OVERHEAD + length
            body_end = pos + HEADER_BYTES + length
            if pos + total <= end and \
                    crc32c(view[pos:body_end]) == _CRC.unpack_from(buf, body_end)[0]:
                if pos > good_end:
                    gaps.append((good_end, pos - good_end))
                records.append((pos, total, kind, priority, flags, seq, key))
                pos = good_end = pos + total
                continue
            damaged.append(seq)
        # resync: the next magic whose header verifies (checked on the next turn)
        pos = buf.find(RECORD_MAGIC, pos + 1)
        if pos < 0:
            break
    return records, gaps, damaged, good_end


def scan_state(buf, view=None):
    """Scan the state log's bytes: (entries, gaps, good_end), entries (offset, op, reason, kind,
    priority, a, b) in file order, gaps (offset, length) of skipped bytes between verified entries."""
    view = memoryview(buf) if view is None else view
    end = len(buf)
    entries, gaps = [], []
    pos = good_end = 0
    while pos + STATE_ENTRY_BYTES <= end:
        if buf[pos:pos + 2] == STATE_MAGIC:
            fields = _STATE_BODY.unpack_from(buf, pos)
            (entry_crc,) = _CRC.unpack_from(buf, pos + _STATE_BODY.size)
            if fields[1] == STATE_VERSION and crc32c(view[pos:pos + _STATE_BODY.size]) == entry_crc:
                if pos > good_end:
                    gaps.append((good_end, pos - good_end))
                entries.append((pos,) + fields[2:])
                pos = good_end = pos + STATE_ENTRY_BYTES
                continue
        pos = buf.find(STATE_MAGIC, pos + 1)
        if pos < 0:
            break
    return entries, gaps, good_end


def _merge_ranges(ranges: list) -> tuple[list, list]:
    """Sorted, merged inclusive ranges as parallel lists (starts, ends) for bisect."""
    starts, ends = [], []
    for a, b in sorted(ranges):
        if ends and a <= ends[-1] + 1:
            ends[-1] = max(ends[-1], b)
        else:
            starts.append(a)
            ends.append(b)
    return starts, ends


def _missing_seqs(seq_limit: int, found, damaged, dead: tuple[list, list]) -> list:
    """Inclusive ranges of seqs in [0, seq_limit) that are not on disk (found or damaged) and not
    dead (acked, evicted) by the state log. Seqs are handed out contiguously and the high-water mark
    is durable, so such a seq is a record that vanished without leaving bytes to report: e.g. a
    segment cut exactly on a record boundary. Interval arithmetic: cost ~ records + dead ranges."""
    present = sorted(set(found) | set(damaged))
    starts, ends = dead
    holes, prev = [], -1
    for seq in present + [seq_limit]:
        if seq > prev + 1:
            holes.append((prev + 1, seq - 1))
        prev = max(prev, seq)
    out = []
    for lo, hi in holes:   # subtract the dead ranges
        i = max(0, bisect.bisect_right(starts, lo) - 1)
        cur = lo
        while cur <= hi:
            if i < len(starts) and starts[i] <= cur <= ends[i]:
                cur = ends[i] + 1
                i += 1
                continue
            nxt = starts[i] if i < len(starts) and starts[i] > cur else None
            while nxt is None and i < len(starts) and ends[i] < cur:
                i += 1
                nxt = starts[i] if i < len(starts) and starts[i] > cur else None
            end = hi if nxt is None else min(hi, nxt - 1)
            out.append((cur, end))
            cur = end + 1
    return out


def _range_len(r: range) -> int:
    try:
        return len(r)
    except OverflowError:   # longer than sys.maxsize: count it by hand
        return max(0, (r.stop - r.start + r.step + (-1 if r.step > 0 else 1)) // r.step)


def _check_int(name: str, value, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= hi:
        raise ValueError(f"{name} must be in 0..{hi}, got {value}")
    return value


class Journal:
    """The crash-safe store-and-forward queue; see the module docstring for the contract.
    Single writer: one process at a time may open a directory (enforced with flock)."""

    def __init__(self, directory, *, capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, sync: bool = True):
        for name, value in (("capacity_bytes", capacity_bytes), ("segment_bytes", segment_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self._dir = os.path.abspath(os.fspath(directory))
        self._capacity = capacity_bytes
        self._segment_bytes = segment_bytes
        self._sync_default = bool(sync)
        self._closed = True
        self._lock_fd: int | None = None
        self._state_fd: int | None = None
        self._state_path = os.path.join(self._dir, STATE_LOG_NAME)
        self._state_size = 0
        self._state_rewrite_at = STATE_LOG_REWRITE_MIN_BYTES
        self._state_dirty = False        # written, not yet fsynced
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._wfd: int | None = None     # append descriptor of the active segment
        self._segment_dirty = False
        self._dir_dirty = False          # a segment was created or deleted since the last fsync
        self._last_segment_id = -1
        self._index: dict[int, tuple] = {}   # seq -> (segment id, offset, length, kind, priority, key)
        self._keys: dict[int, int] = {}      # key -> live records with it
        self._queues: dict[int, deque] = {}  # priority -> seqs in seq order (may hold dead ones)
        self._prio_count: dict[int, int] = {}
        self._prio_bytes: dict[int, int] = {}
        self._live_bytes = 0
        self._next_seq = 0
        self._hw_durable = 0                 # high-water mark the state log holds
        self._acked = 0
        self._evicted: dict[tuple[int, int], int] = {}  # (kind, reason) -> records
        self._ack_ignored = 0
        self._compactions = 0
        self._relocated = 0
        self._read_errors = 0
        self._evictions: deque = deque()
        self._evictions_unreported = 0
        self.recovery = RecoveryReport()
        try:
            self._open()
        except BaseException:
            self._release()
            raise
        self._closed = False

    # ---- public API ------------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, seq) -> bool:
        return seq in self._index

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._index)} live, next_seq {self._next_seq}"
        return f"Journal({self._dir!r}, {state})"

    def append(self, payload, *, kind: int, priority: int, key: int = 0, sync: bool | None = None) -> int:
        """Journal one record; returns its seq. With sync (default: the journal's), returns after
        fsync. May evict lower-or-equal-priority records to make room (see pop_evictions), or, when
        that cannot make room, evict the newcomer itself on arrival."""
        self._check_open()
        if isinstance(payload, str) or not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes-like, got {type(payload).__name__}")
        data = bytes(payload)
        _check_int("kind", kind, U8_MAX)
        _check_int("priority", priority, U8_MAX)
        _check_int("key", key, U64_MAX)
        if len(data) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload of {len(data)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte "
                             "limit of the length field")
        total = RECORD_OVERHEAD + len(data)
        if total > self._capacity:
            raise ValueError(f"record of {total} bytes ({len(data)} payload + {RECORD_OVERHEAD} "
                             f"header and CRC) exceeds the journal capacity of {self._capacity} bytes")
        do_sync = self._sync_default if sync is None else bool(sync)
        seq = self._next_seq
        maintain = False
        if self._live_bytes + total > self._capacity:
            maintain = True
            if not self._make_room(total, priority):
                self._evict([(seq, kind, priority, key)], EVICT_CAPACITY)  # never on disk
                self._next_seq = seq + 1
                if do_sync:
                    self._sync()
                return seq
        segment = self._writable_segment(total)
        maintain |= segment.size == 0   # a roll sealed the previous segment
        offset = segment.size
        self._write_segment(encode_record(seq, kind, priority, 0, key, data))
        self._next_seq = seq + 1
        self._live_add(seq, (segment.id, offset, total, kind, priority, key))
        if do_sync:
            self._sync()
        if maintain:
            self._maintain()
        return seq

    def sync(self) -> None:
        """fsync what is written: the state log, the active segment, the directory."""
        self._check_open()
        self._sync()

    def _sync(self) -> None:
        if self._state_dirty:
            _fsync(self._state_fd, self._state_path)
            self._state_dirty = False
        if self._segment_dirty and self._wfd is not None:
            _fsync(self._wfd, self._active.path)
            self._segment_dirty = False
        if self._dir_dirty:
            _fsync_dir(self._dir)
            self._dir_dirty = False

    def pending(self, after: int | None = None) -> Iterator[JournalRecord]:
        """Live records with seq > after (all when None), in seq order, payloads read from disk and
        re-verified. A record that fails is evicted (reason corrupt, reported) and skipped.
        Safe to ack or append while iterating (it walks a snapshot of the seqs)."""
        self._check_open()
        seqs = list(self._index) if after is None else [s for s in self._index if s > after]
        for seq in seqs:
            self._check_open()
            entry = self._index.get(seq)
            if entry is None:
                continue
            record = self._read(seq, entry)
            if record is None:
                self._drop_corrupt(seq)
                continue
            yield record

    def get(self, seq: int) -> JournalRecord:
        """The live record `seq`. KeyError when it is not live; JournalCorruptError (a KeyError)
        when it failed its CRC on re-read (it is then evicted as corrupt)."""
        self._check_open()
        entry = self._index.get(seq)
        if entry is None:
            raise KeyError(f"seq {seq}: not in the journal (acked, evicted or never written)")
        record = self._read(seq, entry)
        if record is None:
            self._drop_corrupt(seq)
            raise JournalCorruptError(f"seq {seq}: failed its CRC on re-read; evicted as corrupt")
        return record

    def has_key(self, key: int) -> bool:
        """Whether a live record carries `key` (0 means none and is never indexed)."""
        return bool(key) and key in self._keys

    def ack(self, seqs: Iterable, *, sync: bool | None = None) -> int:
        """Mark delivered: seqs are ints or `range`s. Durable (state log, fsync when sync) before
        the records are freed. Returns how many live records it freed; unknown or already-acked
        seqs are ignored and counted (stats()["ack_ignored"])."""
        self._check_open()
        freed: set[int] = set()
        ignored = 0
        for item in seqs:
            if isinstance(item, range):
                size = _range_len(item)
                if size <= len(self._index):
                    hits = [s for s in item if s in self._index and s not in freed]
                else:  # a huge range: walk the live records instead of the range
                    hits = [s for s in self._index if s in item and s not in freed]
                freed.update(hits)
                ignored += size - len(hits)
            elif isinstance(item, int) and not isinstance(item, bool):
                if item in self._index and item not in freed:
                    freed.add(item)
                else:
                    ignored += 1
            else:
                raise TypeError(f"ack takes ints and ranges of seqs, got {type(item).__name__}")
        self._ack_ignored += ignored
        if not freed:
            return 0
        order = sorted(freed)
        runs, first = [], order[0]
        for prev, seq in zip(order, order[1:]):
            if seq != prev + 1:
                runs.append(_state_entry(OP_ACK, first, prev))
                first = seq
        runs.append(_state_entry(OP_ACK, first, order[-1]))
        self._state_write(b"".join(runs))
        if self._sync_default if sync is None else sync:
            _fsync(self._state_fd, self._state_path)
            self._state_dirty = False
        for seq in order:
            self._live_remove(seq)
        self._acked += len(order)
        self._maintain()
        return len(order)

    def pop_evictions(self) -> list[Eviction]:
        """Evictions since the last call (oldest first), for the caller to report."""
        out = list(self._evictions)
        self._evictions.clear()
        return out

    def stats(self) -> dict:
        """Live counts, disk use and lifetime totals (acked/evicted persist across reopen)."""
        by_kind: dict[int, int] = {}
        by_reason = {name: 0 for name in EVICT_REASONS.values()}
        for (kind, reason), n in self._evicted.items():
            by_kind[kind] = by_kind.get(kind, 0) + n
            name = EVICT_REASONS.get(reason, f"reason_{reason}")
            by_reason[name] = by_reason.get(name, 0) + n
        return {
            "records": len(self._index),
            "bytes": self._live_bytes,
            "capacity_bytes": self._capacity,
            "disk_bytes": sum(s.size for s in self._segments.values()) + self._state_size,
            "segments": len(self._segments),
            "next_seq": self._next_seq,
            "acked": self._acked,
            "ack_ignored": self._ack_ignored,
            "evicted": sum(by_kind.values()),
            "evicted_by_kind": by_kind,
            "evicted_by_reason": by_reason,
            "evictions_unreported": self._evictions_unreported,
            "read_errors": self._read_errors,
            "compactions": self._compactions,
            "relocated": self._relocated,
            "dropped_bytes": self.recovery.dropped_bytes,
        }

    def close(self) -> None:
        """Persist the high-water mark, fsync everything, release the files and the lock."""
        if self._closed:
            return
        try:
            self._persist_high_water()
            self._sync()
        finally:
            self._closed = True
            self._release()

    # ---- live index ------------------------------------------------------------------------------

    def _live_add(self, seq: int, entry: tuple) -> None:
        """Index a live record; called in increasing seq order (dict order is seq order)."""
        segment_id, _, length, _, priority, key = entry
        self._index[seq] = entry
        segment = self._segments[segment_id]
        segment.live_bytes += length
        segment.live_count += 1
        if segment.min_seq is None or seq < segment.min_seq:
            segment.min_seq = seq
        segment.max_seq = max(segment.max_seq, seq)
        self._live_bytes += length
        self._prio_count[priority] = self._prio_count.get(priority, 0) + 1
        self._prio_bytes[priority] = self._prio_bytes.get(priority, 0) + length
        self._queues.setdefault(priority, deque()).append(seq)
        if key:
            self._keys[key] = self._keys.get(key, 0) + 1

    def _live_remove(self, seq: int) -> tuple:
        entry = self._index.pop(seq)
        segment_id, _, length, _, priority, key = entry
        segment = self._segments[segment_id]
        segment.live_bytes -= length
        segment.live_count -= 1
        self._live_bytes -= length
        self._prio_count[priority] -= 1
        self._prio_bytes[priority] -= length
        if key:
            left = self._keys[key] - 1
            if left:
                self._keys[key] = left
            else:
                del self._keys[key]
        queue = self._queues[priority]
        while queue and queue[0] not in self._index:
            queue.popleft()
        if len(queue) > 2 * self._prio_count[priority] + _QUEUE_SLACK:  # acks out of order
            self._queues[priority] = deque(s for s, e in self._index.items() if e[4] == priority)
        return entry

    # ---- eviction --------------------------------------------------------------------------------

    def _make_room(self, total: int, priority: int) -> bool:
        """Evict records of priority <= `priority` (lowest first, oldest first) until `total` more
        bytes fit. False, evicting nothing, when even all of them would not make room."""
        evictable = sum(b for p, b in self._prio_bytes.items() if p <= priority)
        if self._live_bytes - evictable + total > self._capacity:
            return False
        self._evict_until(self._capacity - total, priority)
        return True

    def _evict_until(self, limit: int, max_priority: int) -> None:
        over = self._live_bytes - limit
        victims = []
        for priority in sorted(p for p in self._queues if p <= max_priority):
            for seq in self._queues[priority]:
                if over <= 0:
                    break
                entry = self._index.get(seq)
                if entry is not None:
                    victims.append((seq, entry[3], priority, entry[5]))
                    over -= entry[2]
            if over <= 0:
                break
        self._evict(victims, EVICT_CAPACITY)

    def _evict(self, victims: list, reason: int) -> None:
        """Record evictions (seq, kind, priority, key) durably-in-order, count, queue, un-index."""
        if not victims:
            return
        self._state_write(b"".join(_state_entry(OP_EVICT, seq, key, reason=reason, kind=kind,
                                                priority=priority)
                                   for seq, kind, priority, key in victims))
        for seq, kind, priority, key in victims:
            self._evicted[(kind, reason)] = self._evicted.get((kind, reason), 0) + 1
            if len(self._evictions) >= MAX_QUEUED_EVICTIONS:
                self._evictions.popleft()
                self._evictions_unreported += 1
            self._evictions.append(Eviction(seq, kind, priority, key))
            if seq in self._index:
                self._live_remove(seq)

    def _drop_corrupt(self, seq: int) -> None:
        _, _, _, kind, priority, key = self._index[seq]
        self._read_errors += 1
        self._evict([(seq, kind, priority, key)], EVICT_CORRUPT)
        if self._sync_default:
            self._sync()
        self._maintain()

    # ---- segments --------------------------------------------------------------------------------

    def _writable_segment(self, total: int) -> _Segment:
        segment = self._active
        if segment is None or (segment.size and segment.size + total > self._segment_bytes):
            segment = self._roll()
        return segment

    def _roll(self) -> _Segment:
        """Seal the active segment (fsynced: sealed segments are always durable) and start one."""
        if self._wfd is not None:
            if self._segment_dirty:
                _fsync(self._wfd, self._active.path)
                self._segment_dirty = False
            os.close(self._wfd)
            self._wfd = None
            self._active = None
        segment_id = max(self._next_seq, self._last_segment_id + 1)
        while True:
            path = os.path.join(self._dir, segment_name(segment_id))
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
                break
            except FileExistsError:   # a stray file took the name: never write into it
                segment_id += 1
            except OSError as e:
                raise _os_error(e, "create segment", path) from e
        self._last_segment_id = segment_id
        segment = _Segment(segment_id, path)
        self._segments[segment_id] = segment
        self._active, self._wfd = segment, fd
        self._dir_dirty = True
        return segment

    def _write_segment(self, blob: bytes) -> None:
        segment = self._active
        try:
            _write_all(self._wfd, blob, segment.path, "write segment")
        except OSError:
            try:   # leave no partial entry behind (ENOSPC): later appends must follow a clean tail
                os.ftruncate(self._wfd, segment.size)
            except OSError:
                pass
            raise
        segment.size += len(blob)
        self._segment_dirty = True

    def _read_fd(self, segment: _Segment) -> int:
        if segment.fd is None:
            try:
                segment.fd = os.open(segment.path, os.O_RDONLY)
            except OSError as e:
                raise _os_error(e, "open segment", segment.path) from e
        return segment.fd

    def _read(self, seq: int, entry: tuple) -> JournalRecord | None:
        """The record at its index entry, or None when it does not verify."""
        segment_id, offset, length, kind, priority, key = entry
        segment = self._segments[segment_id]
        fd = self._read_fd(segment)
        try:
            blob = os.pread(fd, length, offset)
        except OSError as e:
            raise _os_error(e, "read segment", segment.path) from e
        fields = _header_at(blob, memoryview(blob), 0, len(blob))
        if fields is None or len(blob) != length or fields[7] != seq \
                or RECORD_OVERHEAD + fields[6] != length:
            return None
        body_end = HEADER_BYTES + fields[6]
        if crc32c(memoryview(blob)[:body_end]) != _CRC.unpack_from(blob, body_end)[0]:
            return None
        return JournalRecord(seq, kind, priority, key, blob[HEADER_BYTES:body_end])

    def _delete_segment(self, segment: _Segment) -> None:
        # this segment may hold the newest seq (e.g. compaction rolled past it): then the state
        # log must know the high-water mark before the segment goes
        if segment.max_seq >= self._hw_durable:
            self._persist_high_water()
        if segment.fd is not None:
            os.close(segment.fd)
            segment.fd = None
        try:
            os.unlink(segment.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _os_error(e, "delete segment", segment.path) from e
        del self._segments[segment.id]
        self._dir_dirty = True

    def _maintain(self) -> None:
        """After records died: delete all-dead sealed segments, compact, rewrite the state log."""
        for segment in list(self._segments.values()):
            if segment is not self._active and segment.live_count == 0:
                self._delete_segment(segment)
        self._compact()
        if self._state_size > self._state_rewrite_at:
            self._rewrite_state()

    def _compact(self) -> None:
        limit = COMPACT_SLACK_SEGMENTS * self._segment_bytes
        while True:
            sealed = [s for s in self._segments.values() if s is not self._active]
            if sum(s.size - s.live_bytes for s in sealed) <= limit:
                return
            sparse = [s for s in sealed if s.live_bytes <= SPARSE_LIVE_FRACTION * s.size]
            if sparse:
                victim = min(sparse, key=lambda s: s.id)
            else:
                victim = min(sealed, key=lambda s: (s.live_bytes / max(1, s.size), s.id))
            self._relocate(victim)

    def _relocate(self, victim: _Segment) -> None:
        """Copy victim's live records to the active segment (same seq, FLAG_RELOCATED), fsync the
        copies, then delete victim. Recovery folds an original and its copy into one by seq."""
        mapped = _Mapped(victim.path)
        try:
            records, _, _, _ = scan_records(mapped.buf, mapped.view)
            for offset, total, kind, priority, flags, seq, key in records:
                entry = self._index.get(seq)
                if entry is None or entry[0] != victim.id or entry[1] != offset:
                    continue   # dead, or an older copy
                payload = bytes(mapped.view[offset + HEADER_BYTES:offset + total - TRAILER_BYTES])
                blob = encode_record(seq, kind, priority, flags | FLAG_RELOCATED, key, payload)
                target = self._writable_segment(total)
                new_offset = target.size
                self._write_segment(blob)
                victim.live_bytes -= total
                victim.live_count -= 1
                target.live_bytes += total
                target.live_count += 1
                if target.min_seq is None or seq < target.min_seq:
                    target.min_seq = seq
                target.max_seq = max(target.max_seq, seq)
                self._index[seq] = (target.id, new_offset) + entry[2:]
                self._relocated += 1
        finally:
            mapped.close()
        if victim.live_count:   # live records that no longer verify in place
            lost = [s for s, e in self._index.items() if e[0] == victim.id]
            self._read_errors += len(lost)
            self._evict([(s, self._index[s][3], self._index[s][4], self._index[s][5]) for s in lost],
                        EVICT_CORRUPT)
        self._sync()   # copies (and a new segment's name) durable before the original goes
        self._delete_segment(victim)
        self._compactions += 1

    # ---- state log -------------------------------------------------------------------------------

    def _state_write(self, data: bytes) -> None:
        try:
            _write_all(self._state_fd, data, self._state_path, "write state log")
        except OSError:
            try:
                os.ftruncate(self._state_fd, self._state_size)
            except OSError:
                pass
            raise
        self._state_size += len(data)
        self._state_dirty = True

    def _persist_high_water(self) -> None:
        if self._hw_durable < self._next_seq:
            self._state_write(_state_entry(OP_HIGH_WATER, self._next_seq))
            _fsync(self._state_fd, self._state_path)
            self._state_dirty = False
            self._hw_durable = self._next_seq

    def _rewrite_state(self) -> None:
        """Replace the state log with its essence: high-water mark, totals, and the dead runs
        among the seqs still on disk. Atomic (tmp file, fsync, rename, fsync directory)."""
        self._sync()   # segment deletions durable before the dead ranges that cover them go
        on_disk = [s.min_seq for s in self._segments.values() if s.min_seq is not None]
        low = min(on_disk) if on_disk else self._next_seq
        parts = [_state_entry(OP_HIGH_WATER, self._next_seq), _state_entry(OP_TOTAL_ACKED, self._acked)]
        parts += [_state_entry(OP_TOTAL_EVICTED, n, kind=kind, reason=reason)
                  for (kind, reason), n in self._evicted.items()]
        prev = low
        for seq in self._index:   # ascending
            if seq > prev:
                parts.append(_state_entry(OP_DEAD, prev, seq - 1))
            prev = seq + 1
        if prev < self._next_seq:
            parts.append(_state_entry(OP_DEAD, prev, self._next_seq - 1))
        data = b"".join(parts)
        tmp = os.path.join(self._dir, STATE_TMP_NAME)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise _os_error(e, "create", tmp) from e
        try:
            _write_all(fd, data, tmp, "write")
            _fsync(fd, tmp)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, self._state_path)
        except OSError as e:
            raise _os_error(e, "replace state log with", tmp) from e
        _fsync_dir(self._dir)
        os.close(self._state_fd)
        self._state_fd = self._open_state_fd()
        self._state_size = len(data)
        self._state_rewrite_at = max(STATE_LOG_REWRITE_MIN_BYTES, 2 * len(data))
        self._state_dirty = False
        self._hw_durable = self._next_seq

    def _open_state_fd(self) -> int:
        try:
            return os.open(self._state_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise _os_error(e, "open state log", self._state_path) from e

    # ---- open and recovery -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"journal {self._dir} is closed")

    def _release(self) -> None:
        for segment in self._segments.values():
            if segment.fd is not None:
                os.close(segment.fd)
                segment.fd = None
        for name in ("_wfd", "_state_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)   # closing the lock descriptor releases the flock
                setattr(self, name, None)

    def _lock(self) -> None:
        path = os.path.join(self._dir, LOCK_NAME)
        try:
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _os_error(e, "open lock file", path) from e
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise OSError(e.errno, "journal: the directory is open by another writer "
                                   "(single writer only)", self._dir) from e
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.ENOTSUP, errno.EINVAL):  # no locks here: go on
                raise _os_error(e, "lock", path) from e

    def _open(self) -> None:
        try:
            os.makedirs(self._dir, exist_ok=True)
        except OSError as e:
            raise _os_error(e, "create journal directory", self._dir) from e
        self._lock()
        report = self.recovery
        segment_ids = []
        try:
            listing = sorted(os.listdir(self._dir))
        except OSError as e:
            raise _os_error(e, "list", self._dir) from e
        for name in listing:
            path = os.path.join(self._dir, name)
            match = SEGMENT_PATTERN.fullmatch(name)
            if match and os.path.isfile(path) and not os.path.islink(path):
                segment_ids.append(int(match.group(1), 16))
            elif name == STATE_TMP_NAME:   # an interrupted rewrite: acks.log is still whole
                try:
                    os.unlink(path)
                except OSError as e:
                    raise _os_error(e, "delete", path) from e
            elif name not in (STATE_LOG_NAME, LOCK_NAME):
                report.ignored_files.append(name)
        dead, high_water = self._load_state(report)
        seq_limit = high_water   # next_seq is at least every seq anyone has seen + 1
        found: dict[int, tuple] = {}
        dead_entries = 0
        for segment_id in sorted(segment_ids):
            segment, n_dead = self._scan_segment(segment_id, report, found, dead)
            self._segments[segment_id] = segment
            dead_entries += n_dead
            seq_limit = max(seq_limit, segment.max_seq + 1)
        self._next_seq = seq_limit
        self._hw_durable = high_water
        for seq in sorted(found):
            self._live_add(seq, found[seq])
        report.duplicates = report.records_scanned - dead_entries - len(found)
        report.missing_seqs = _missing_seqs(seq_limit, found, report.damaged_seqs, dead)
        # lost records are reported once: from now on they are known dead (a damaged record's
        # bytes may be trimmed away as a torn tail, and it would come back as "missing")
        lost = report.missing_seqs + [(seq, seq) for seq in report.damaged_seqs if seq not in found]
        for a, b in lost:
            self._state_write(_state_entry(OP_DEAD, a, b))
        for segment in list(self._segments.values()):
            if segment.live_count == 0:
                self._delete_segment(segment)
                report.segments_deleted += 1
        self._last_segment_id = max(self._segments, default=-1)
        if self._segments:
            newest = self._segments[max(self._segments)]
            if newest.size < self._segment_bytes:
                try:
                    self._wfd = os.open(newest.path, os.O_WRONLY | os.O_APPEND)
                except OSError as e:
                    raise _os_error(e, "open segment", newest.path) from e
                self._active = newest
        if self._live_bytes > self._capacity:   # capacity lowered, or an eviction lost unsynced
            before = sum(self._evicted.values())
            self._evict_until(self._capacity, U8_MAX)
            report.evicted_on_open = sum(self._evicted.values()) - before
        report.records_recovered = len(self._index)
        if report.ack_log_problems:   # write the garbage out of the state log
            self._rewrite_state()
        self._maintain()
        self._sync()

    def _load_state(self, report: RecoveryReport) -> tuple[tuple[list, list], int]:
        """Replay the state log: totals into self, returns (dead ranges, high-water next_seq)."""
        self._state_fd = self._open_state_fd()
        mapped = _Mapped(self._state_path)
        try:
            entries, gaps, good_end = scan_state(mapped.buf, mapped.view)
            size = mapped.size
        finally:
            mapped.close()
        for offset, length in gaps:
            report.ack_log_problems.append((offset, length, "corrupt entries skipped"))
            report.dropped_bytes += length
        if good_end < size:
            report.ack_log_problems.append((good_end, size - good_end, "torn tail truncated"))
            report.dropped_bytes += size - good_end
            try:
                os.ftruncate(self._state_fd, good_end)
            except OSError as e:
                raise _os_error(e, "truncate state log", self._state_path) from e
        self._state_size = good_end
        ranges, high_water = [], 0
        for offset, op, reason, kind, _priority, a, b in entries:
            if op in (OP_ACK, OP_DEAD) and a <= b:
                ranges.append((a, b))
                high_water = max(high_water, b + 1)
                if op == OP_ACK:
                    self._acked += b - a + 1
            elif op == OP_EVICT:
                ranges.append((a, a))
                high_water = max(high_water, a + 1)
                self._evicted[(kind, reason)] = self._evicted.get((kind, reason), 0) + 1
            elif op == OP_HIGH_WATER:
                high_water = max(high_water, a)
            elif op == OP_TOTAL_ACKED:
                self._acked += a
            elif op == OP_TOTAL_EVICTED:
                self._evicted[(kind, reason)] = self._evicted.get((kind, reason), 0) + a
            else:
                report.ack_log_problems.append((offset, STATE_ENTRY_BYTES,
                                                f"unknown op {op} or bad range, skipped"))
        report.ack_log_entries = len(entries)
        self._state_rewrite_at = max(STATE_LOG_REWRITE_MIN_BYTES, 2 * self._state_size)
        return _merge_ranges(ranges), min(high_water, U64_MAX)

    def _scan_segment(self, segment_id: int, report: RecoveryReport, found: dict,
                      dead: tuple[list, list]) -> tuple[_Segment, int]:
        """Scan (and trim) one segment; live candidates go into `found`. Returns the segment and
        how many of its verified entries the state log says are dead."""
        path = os.path.join(self._dir, segment_name(segment_id))
        mapped = _Mapped(path)
        try:
            records, gaps, damaged, good_end = scan_records(mapped.buf, mapped.view)
            size = mapped.size
        finally:
            mapped.close()
        segment = _Segment(segment_id, path, size=good_end)
        name = segment.name
        report.segments_scanned += 1
        for offset, length in gaps:
            report.corrupt_regions.append((name, offset, length))
            report.dropped_bytes += length
        if good_end < size:
            report.torn_tails.append((name, good_end, size - good_end))
            report.dropped_bytes += size - good_end
            try:
                os.truncate(path, good_end)
            except OSError as e:
                raise _os_error(e, "truncate segment", path) from e
        report.damaged_seqs.extend(damaged)
        starts, ends = dead
        max_seq = max(damaged, default=-1)
        n_dead = 0
        for offset, total, kind, priority, _flags, seq, key in records:
            report.records_scanned += 1
            max_seq = max(max_seq, seq)
            if segment.min_seq is None or seq < segment.min_seq:
                segment.min_seq = seq
            i = bisect.bisect_right(starts, seq) - 1
            if i >= 0 and seq <= ends[i]:
                n_dead += 1
                continue
            found[seq] = (segment_id, offset, total, kind, priority, key)  # a later copy wins
        segment.max_seq = max_seq
        return segment, n_dead
