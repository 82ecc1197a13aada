"""Depacketize the downlink: a byte stream from the radio in, verified and reassembled records out.

The packet format is docs/downlink.md, "Space Packets" (written by edge/downlink/packets.py). Headers
are read with the `spacepackets` library (SpacePacketHeader.unpack) and the PEC is checked with its
ECSS CRC (check_pus_crc: the CRC-16/CCITT-FALSE of the whole packet, PEC included, is 0), so a
stream this module accepts is one a third-party CCSDS tool reads the same way.

Depacketizer().feed(chunk) -> records completed by the chunk; finish() -> the last ones. Chunks may
split packets anywhere. depacketize(data) does both for one buffer.

Scanning. At each position the scanner looks for a plausible primary header: version 0, telemetry,
no secondary header, an APID of the scan set (default: the record kinds' APIDs), a total length of
at least 9 bytes (header, one record byte, PEC) and at most max_packet_len. A candidate is a packet
only if its CRC checks; on a CRC failure the scanner moves ONE byte on and looks again, so a stray
byte pattern that looks like a header can never swallow the real packets behind it. Bytes that are
part of no valid packet are counted as garbage. A candidate longer than the bytes at hand waits for
more input; at finish() it is truncated (counted, and scanning goes on one byte later).

Reassembly, per APID, from consecutive sequence counts (modulo 16384):
  - a packet whose bytes equal one of the last DUPLICATE_WINDOW packets of its APID with the same
    count is a duplicate (a repeated transmission): dropped and counted, nothing else changes;
  - a count other than the expected one is a gap (apid, expected, got, missing packets); a record
    under way when the gap opens is incomplete: counted, its data dropped, and so are the rest of
    its segments;
  - UNSEGMENTED is a record; FIRST, CONTINUATION..., LAST make one; a FIRST or UNSEGMENTED that
    arrives while a record is under way makes that one incomplete, and so does finish();
  - a CRC-valid packet of a scanned APID that has no record kind (scan_apids wider than the kind
    table) is counted in report.unknown_apids and skipped.

It never raises on input bytes: whatever spacepackets raises on a candidate means "not a packet".
Memory is bounded: between calls the buffer holds less than max_packet_len bytes (plus, during a
call, the chunk); a record under way is dropped as incomplete beyond max_record_bytes.

Why the default scan set is only our APIDs: every candidate costs a CRC over up to 64 KiB and may
hold the stream back until that many bytes arrived; with every APID scanned, 1 byte in 32 of noise
is a candidate. Pass scan_apids=range(2047) to recognise other users of a shared link.
"""
from __future__ import annotations

import hashlib
import re
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from spacepackets.ccsds.spacepacket import PacketType, SequenceFlags, SpacePacketHeader
from spacepackets.ecss import check_pus_crc

from edge.downlink.packets import (CCSDS_MAX_PACKET_BYTES, CCSDS_VERSION, IDLE_APID, KIND_BY_APID,
                                   MIN_PACKET_BYTES, PEC_LEN, PRIMARY_HEADER_LEN, SEQ_COUNT_MODULO)

#: Default cap of a candidate's total length: the largest packet CCSDS can describe.
DEFAULT_MAX_PACKET_LEN = CCSDS_MAX_PACKET_BYTES
#: Packets remembered per APID to recognise a repeated transmission.
DUPLICATE_WINDOW = 64
#: A record under way larger than this is dropped as incomplete (a frame record is a few KiB).
DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024
#: Gaps listed one by one in the report; beyond this only the totals grow.
MAX_LISTED_GAPS = 1024
_DIGEST_BYTES = 16


class SequenceGap(NamedTuple):
    apid: int
    expected_count: int
    got_count: int
    missing_packets: int   # (got - expected) mod 16384


class ReassembledRecord(NamedTuple):
    apid: int
    kind: int              # record kind of the APID (docs/downlink.md)
    payload: bytes         # the record's bytes (CBOR), segments joined
    first_count: int       # sequence count of its first packet
    last_count: int        # ... and of its last (equal for an unsegmented record)
    offset: int            # stream offset of its first packet's first byte


@dataclass
class DepacketizeReport:
    packets_ok: int = 0             # CRC-valid packets of known kinds taken in (duplicates not counted)
    records: int = 0                # records returned
    crc_failures: int = 0           # candidates whose CRC did not check
    garbage_bytes: int = 0          # bytes that are part of no valid packet
    truncated: int = 0              # candidates cut short by the end of the stream
    duplicates: int = 0             # repeated packets dropped
    incomplete_records: int = 0     # records started but not finished (gap, new FIRST, finish, size)
    gaps: list = field(default_factory=list)  # SequenceGap, the first MAX_LISTED_GAPS of them
    gap_count: int = 0              # all gaps
    missing_packets: int = 0        # packets the gaps skipped, summed
    unknown_apids: dict = field(default_factory=dict)  # APID -> valid packets of no known kind

    @property
    def clean(self) -> bool:
        """True when every byte was part of a good packet and every record arrived whole."""
        return not (self.crc_failures or self.garbage_bytes or self.truncated or self.duplicates
                    or self.incomplete_records or self.gap_count or self.unknown_apids)


class _Channel:
    """Reassembly state of one APID."""

    __slots__ = ("expected", "segments", "size", "first_count", "offset", "discarding", "recent",
                 "recent_set")

    def __init__(self):
        self.expected: int | None = None   # count of the next packet; None before the first one
        self.segments: list | None = None  # a record under way
        self.size = 0
        self.first_count = 0
        self.offset = 0
        self.discarding = False            # the rest of an incomplete record is still arriving
        self.recent: deque = deque()
        self.recent_set: set = set()

    def remember(self, key) -> None:
        self.recent.append(key)
        self.recent_set.add(key)
        if len(self.recent) > DUPLICATE_WINDOW:
            old = self.recent.popleft()
            if old not in self.recent:  # the same key may sit twice in the window
                self.recent_set.discard(old)


def _candidate_pattern(apids) -> re.Pattern:
    """Regex of the first two header bytes of a plausible packet of `apids`: version 0, TM, no
    secondary header, so byte 0 is the APID's top 3 bits and byte 1 its low 8."""
    by_high: dict[int, list[int]] = {}
    for apid in sorted(apids):
        by_high.setdefault(apid >> 8, []).append(apid & 0xFF)
    alternatives = [b"\\x%02x[%s]" % (high, b"".join(b"\\x%02x" % low for low in lows))
                    for high, lows in by_high.items()]
    return re.compile(b"|".join(alternatives) if alternatives else b"(?!)")


class Depacketizer:
    """Streaming depacketizer: feed() chunks as they arrive, finish() at the end of the pass."""

    def __init__(self, max_packet_len: int = DEFAULT_MAX_PACKET_LEN, kinds=None, scan_apids=None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        if not isinstance(max_packet_len, int) or isinstance(max_packet_len, bool):
            raise TypeError(f"max_packet_len must be an integer, got {max_packet_len!r}")
        if not MIN_PACKET_BYTES <= max_packet_len <= CCSDS_MAX_PACKET_BYTES:
            raise ValueError(f"max_packet_len must be in {MIN_PACKET_BYTES}..{CCSDS_MAX_PACKET_BYTES}, "
                             f"got {max_packet_len}")
        if not isinstance(max_record_bytes, int) or max_record_bytes < 1:
            raise ValueError(f"max_record_bytes must be a positive integer, got {max_record_bytes!r}")
        self.max_packet_len = max_packet_len
        self.max_record_bytes = max_record_bytes
        #: APID -> record kind.
        self.kinds = dict(KIND_BY_APID if kinds is None else kinds)
        scan = set(self.kinds) if scan_apids is None else set(scan_apids) | set(self.kinds)
        bad = sorted(a for a in scan if not (isinstance(a, int) and 0 <= a < IDLE_APID))
        if bad:
            raise ValueError(f"APIDs must be integers in 0..{IDLE_APID - 1} (not the idle APID), "
                             f"got {bad[:8]}")
        self.scan_apids = frozenset(scan)
        self._pattern = _candidate_pattern(self.scan_apids)
        self.report = DepacketizeReport()
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._channels: dict[int, _Channel] = {}
        self._finished = False

    # ---- public ---------------------------------------------------------------------------------

    def feed(self, data) -> list[ReassembledRecord]:
        """Take the next chunk of the stream; returns the records it completed, in stream order."""
        if self._finished:
            raise RuntimeError("Depacketizer.feed() after finish(): make a new Depacketizer")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"feed() takes bytes, got {type(data).__name__}")
        self._buf += data
        return self._scan(final=False)

    def finish(self) -> list[ReassembledRecord]:
        """End of the stream: decide the bytes held back, close records under way."""
        if self._finished:
            return []
        out = self._scan(final=True)
        for channel in self._channels.values():
            if channel.segments is not None:
                self.report.incomplete_records += 1
                channel.segments = None
        self._finished = True
        return out

    # ---- scanning -------------------------------------------------------------------------------

    def _scan(self, final: bool) -> list[ReassembledRecord]:
        buf, report, out = self._buf, self.report, []
        pos = 0
        while True:
            match = self._pattern.search(buf, pos)
            if match is None:
                # A candidate may still start at the last byte, whose partner is yet to come.
                keep = 0 if final or not buf else 1
                report.garbage_bytes += max(0, len(buf) - keep - pos)
                pos = max(pos, len(buf) - keep)
                break
            start = match.start()
            report.garbage_bytes += start - pos
            pos = start
            if len(buf) - pos < PRIMARY_HEADER_LEN:
                if final:
                    report.truncated += 1
                    report.garbage_bytes += 1
                    pos += 1
                    continue
                break
            header = self._candidate(buf, pos)
            if header is None:
                report.garbage_bytes += 1
                pos += 1
                continue
            total = header.packet_len
            if len(buf) - pos < total:
                if final:
                    report.truncated += 1
                    report.garbage_bytes += 1
                    pos += 1
                    continue
                break  # wait for the rest
            packet = bytes(buf[pos:pos + total])
            if not _crc_ok(packet):
                report.crc_failures += 1
                report.garbage_bytes += 1
                pos += 1
                continue
            record = self._take(packet, header, self._base + pos)
            if record is not None:
                out.append(record)
            pos += total
        del buf[:pos]
        self._base += pos
        return out

    def _candidate(self, buf: bytearray, pos: int) -> SpacePacketHeader | None:
        """The header of the plausible packet at pos, or None when there is none."""
        try:
            header = SpacePacketHeader.unpack(bytes(buf[pos:pos + PRIMARY_HEADER_LEN]))
            plausible = (header.ccsds_version == CCSDS_VERSION and header.packet_type == PacketType.TM
                         and not header.sec_header_flag and header.apid in self.scan_apids)
            total = header.packet_len
        except Exception:  # whatever the library objects to is simply not a packet
            return None
        if not plausible or not MIN_PACKET_BYTES <= total <= self.max_packet_len:
            return None
        return header

    # ---- reassembly -----------------------------------------------------------------------------

    def _take(self, packet: bytes, header: SpacePacketHeader, offset: int) -> ReassembledRecord | None:
        """A CRC-valid packet: duplicates, gaps, then the sequence flags."""
        report = self.report
        apid, count, flags = header.apid, header.seq_count, header.seq_flags
        kind = self.kinds.get(apid)
        if kind is None:
            report.unknown_apids[apid] = report.unknown_apids.get(apid, 0) + 1
            return None
        channel = self._channels.get(apid)
        if channel is None:
            channel = self._channels[apid] = _Channel()
        key = (count, hashlib.blake2b(packet, digest_size=_DIGEST_BYTES).digest())
        if key in channel.recent_set:
            report.duplicates += 1
            return None
        channel.remember(key)
        report.packets_ok += 1

        if channel.expected is not None and count != channel.expected:
            missing = (count - channel.expected) % SEQ_COUNT_MODULO
            report.gap_count += 1
            report.missing_packets += missing
            if len(report.gaps) < MAX_LISTED_GAPS:
                report.gaps.append(SequenceGap(apid, channel.expected, count, missing))
            if channel.segments is not None:
                self._drop(channel)
        channel.expected = (count + 1) % SEQ_COUNT_MODULO

        segment = packet[PRIMARY_HEADER_LEN:-PEC_LEN]
        if flags in (SequenceFlags.UNSEGMENTED, SequenceFlags.FIRST_SEGMENT):
            channel.discarding = False
            if channel.segments is not None:  # the record under way never got its LAST
                self._drop(channel)
                channel.discarding = False
            if flags == SequenceFlags.UNSEGMENTED:
                return self._record(apid, kind, segment, count, count, offset)
            channel.segments, channel.size = [segment], len(segment)
            channel.first_count, channel.offset = count, offset
            return None
        # CONTINUATION or LAST
        if channel.segments is None:
            if not channel.discarding:  # the middle of a record whose start we never saw
                report.incomplete_records += 1
            channel.discarding = flags != SequenceFlags.LAST_SEGMENT
            return None
        channel.segments.append(segment)
        channel.size += len(segment)
        if channel.size > self.max_record_bytes:
            self._drop(channel)
            channel.discarding = flags != SequenceFlags.LAST_SEGMENT
            return None
        if flags == SequenceFlags.LAST_SEGMENT:
            payload = b"".join(channel.segments)
            channel.segments = None
            return self._record(apid, kind, payload, channel.first_count, count, channel.offset)
        return None

    def _drop(self, channel: _Channel) -> None:
        """The record under way is incomplete: count it, forget its data, skip its remaining segments."""
        self.report.incomplete_records += 1
        channel.segments = None
        channel.size = 0
        channel.discarding = True

    def _record(self, apid, kind, payload, first, last, offset) -> ReassembledRecord:
        self.report.records += 1
        return ReassembledRecord(apid, kind, payload, first, last, offset)


def _crc_ok(packet: bytes) -> bool:
    try:
        return bool(check_pus_crc(packet))
    except Exception:
        return False


def depacketize(data, **options) -> tuple[list[ReassembledRecord], DepacketizeReport]:
    """All records of one complete stream, and the report. Options as for Depacketizer."""
    depacketizer = Depacketizer(**options)
    records = depacketizer.feed(data)
    records += depacketizer.finish()
    return records, depacketizer.report
