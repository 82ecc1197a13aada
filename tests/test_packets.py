"""Space Packets: flight packetizer and sinks (edge/downlink/packets.py) against the ground
depacketizer (edge/ground/packets.py) and the `spacepackets` library (docs/downlink.md, "Space Packets")."""
import os
import select
import struct
import termios
import threading

import pytest
from fastcrc import crc16
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spacepackets.ccsds.spacepacket import (PacketId, PacketType, SequenceFlags, SpacePacketHeader,
                                            parse_space_packets)
from spacepackets.ecss import check_pus_crc

from edge.downlink.packets import (APID_BY_KIND, CCSDS_MAX_PACKET_BYTES, CRC16_CHECK, KIND_BY_APID,
                                   MIN_PACKET_BYTES, SEQ_COUNT_MODULO, SEQ_CONTINUATION, SEQ_FIRST,
                                   SEQ_LAST, SEQ_UNSEGMENTED, PacketSink, Packetizer, crc16_ccitt)
from edge.ground.packets import Depacketizer, SequenceGap, depacketize
from tests.conftest import examples

FRAME, HOUSEKEEPING, EVENT = APID_BY_KIND[1], APID_BY_KIND[2], APID_BY_KIND[3]
OUR_PACKET_IDS = [PacketId(PacketType.TM, False, apid) for apid in KIND_BY_APID]
#: Payload bytes a tty in cooked mode would mangle (CR, LF, ^C, XON, XOFF, DEL, EOF): proof of raw mode.
TTY_HOSTILE = b"\r\n\x03\x11\x13\x7f\x04\x00\xff"


def payload(n: int, seed: int = 0) -> bytes:
    """n record bytes that contain no candidate header (0x01 0x00..0x03), so a corrupted packet's
    remains never form a candidate and the counts in the report are exact."""
    return bytes((seed + 7 * i) % 251 | 0x80 for i in range(n))


def stream_of(packetizer, records):
    """(records, packets) for [(apid, bytes), ...]."""
    packets = []
    for apid, record in records:
        packets += packetizer.packetize(record, apid)
    return packets


def feed_chunked(dep, data, sizes):
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out += dep.feed(data[i:i + n])
        i, k = i + n, k + 1
    return out + dep.finish()


def hand_packet(apid, flags, count, segment):
    """A packet built with spacepackets' own header packer and its ECSS CRC."""
    header = SpacePacketHeader.tm(apid=apid, seq_count=count, data_len=len(segment) + 1,
                                  seq_flags=SequenceFlags(flags)).pack()
    body = bytes(header) + segment
    return body + struct.pack(">H", crc16.ibm_3740(body))


# ---- flight side ----------------------------------------------------------------------------------

def test_crc_check_value():
    assert crc16_ccitt(b"123456789") == CRC16_CHECK == 0x29B1
    assert crc16_ccitt(b"123456789") == crc16.ibm_3740(b"123456789")
    assert crc16_ccitt(b"56789", crc16_ccitt(b"1234")) == CRC16_CHECK  # chains
    assert crc16_ccitt(b"") == 0xFFFF
    packet = Packetizer().packetize(b"hello", FRAME)[0]
    assert check_pus_crc(packet)  # the ECSS PEC check of spacepackets accepts ours


@settings(max_examples=examples(100), deadline=None)
@given(apid=st.integers(0, 2046), size=st.integers(1, 300), max_packet=st.integers(MIN_PACKET_BYTES, 120))
def test_header_fields_match_spacepackets(apid, size, max_packet):
    record = payload(size)
    packets = Packetizer(max_packet).packetize(record, apid)
    n = len(packets)
    assert n == -(-size // (max_packet - 8))
    for i, packet in enumerate(packets):
        assert len(packet) <= max_packet
        h = SpacePacketHeader.unpack(packet)
        assert h.ccsds_version == 0
        assert h.packet_type == PacketType.TM
        assert h.sec_header_flag is False
        assert h.apid == apid
        assert h.seq_count == i
        want = (SEQ_UNSEGMENTED if n == 1 else SEQ_FIRST if i == 0 else SEQ_LAST if i == n - 1
                else SEQ_CONTINUATION)
        assert h.seq_flags == want
        assert h.data_len == len(packet) - 6 - 1
        assert h.packet_len == len(packet)
        # and bit for bit what the library packs for the same fields
        assert packet[:6] == SpacePacketHeader.tm(apid=apid, seq_count=i, data_len=h.data_len,
                                                  seq_flags=SequenceFlags(want)).pack()
        assert struct.unpack(">H", packet[-2:])[0] == crc16_ccitt(packet[:-2])
        if i < n - 1:
            assert len(packet) == max_packet  # every segment but the last is full
    assert b"".join(p[6:-2] for p in packets) == record


def test_interoperability_parse_space_packets():
    p = Packetizer(100)
    packets = stream_of(p, [(FRAME, payload(700)), (HOUSEKEEPING, payload(40)), (EVENT, payload(93)),
                            (APID_BY_KIND[4], TTY_HOSTILE * 30), (FRAME, payload(1))])
    result = parse_space_packets(b"".join(packets), OUR_PACKET_IDS)
    assert [bytes(t) for t in result.tm_list] == packets
    assert result.skipped_ranges == []
    assert all(check_pus_crc(t) for t in result.tm_list)


def test_packetizer_validation():
    p = Packetizer()
    with pytest.raises(ValueError, match="empty"):
        p.packetize(b"", FRAME)
    with pytest.raises(ValueError, match="idle"):
        p.packetize(b"x", 2047)
    with pytest.raises(ValueError, match="apid"):
        p.packetize(b"x", -1)
    with pytest.raises(TypeError, match="apid"):
        p.packetize(b"x", True)
    with pytest.raises(TypeError, match="record must be bytes"):
        p.packetize("text", FRAME)
    with pytest.raises(ValueError, match="max_packet_bytes"):
        Packetizer(MIN_PACKET_BYTES - 1)
    with pytest.raises(ValueError, match="max_packet_bytes"):
        Packetizer(CCSDS_MAX_PACKET_BYTES + 1)
    with pytest.raises(ValueError, match="state_path"):
        p.save_state()
    assert p.counters == {}  # failed calls consumed no counts
    big = Packetizer(CCSDS_MAX_PACKET_BYTES).packetize(bytes(65534), FRAME)
    assert len(big) == 1 and len(big[0]) == CCSDS_MAX_PACKET_BYTES
    assert SpacePacketHeader.unpack(big[0]).data_len == 0xFFFF


# ---- round trip ---------------------------------------------------------------------------------

@st.composite
def records_and_packet_size(draw):
    """Records of 1..5000 bytes (sizes drawn first, so large ones are common) and a packet size;
    with packets under 64 bytes records stay under 600 bytes (thousands of packets would be slow)."""
    max_packet = draw(st.one_of(st.integers(MIN_PACKET_BYTES, 63), st.integers(64, 4096)))
    largest = 5000 if max_packet >= 64 else 600
    records = []
    for _ in range(draw(st.integers(1, 6))):
        size = draw(st.integers(1, largest))
        apid = draw(st.sampled_from(sorted(KIND_BY_APID)))
        records.append((apid, draw(st.binary(min_size=size, max_size=size))))
    return records, max_packet


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=records_and_packet_size(), sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=8))
def test_round_trip(case, sizes):
    records, max_packet = case
    packets = stream_of(Packetizer(max_packet), records)
    assert all(len(p) <= max_packet for p in packets)
    data = b"".join(packets)
    dep = Depacketizer()
    out = feed_chunked(dep, data, sizes)
    assert [(r.apid, r.payload) for r in out] == records
    assert all(r.kind == KIND_BY_APID[r.apid] for r in out)
    assert dep.report.clean, dep.report
    assert dep.report.packets_ok == len(packets) and dep.report.records == len(records)
    # offsets point at each record's first packet
    for r in out:
        assert SpacePacketHeader.unpack(data[r.offset:r.offset + 6]).seq_count == r.first_count


# ---- link faults ---------------------------------------------------------------------------------

def test_sequence_count_wraps_without_gap():
    p = Packetizer(MIN_PACKET_BYTES)  # one record byte per packet: 16383 packets reach the wrap
    big = payload(SEQ_COUNT_MODULO - 1)
    packets = p.packetize(big, FRAME) + p.packetize(b"abc", FRAME)
    assert [SpacePacketHeader.unpack(x).seq_count for x in packets[-3:]] == [SEQ_COUNT_MODULO - 1, 0, 1]
    assert p.sequence_count(FRAME) == 2
    records, report = depacketize(b"".join(packets))
    assert [r.payload for r in records] == [big, b"abc"]
    assert (records[1].first_count, records[1].last_count) == (SEQ_COUNT_MODULO - 1, 1)
    assert report.clean, report


def test_gap_across_wrap_counts_missing_modulo():
    p = Packetizer(MIN_PACKET_BYTES)
    packets = p.packetize(payload(SEQ_COUNT_MODULO - 2), FRAME) + [
        x for r in (b"a", b"b", b"c", b"d") for x in p.packetize(r, FRAME)]
    # counts 16382 "a", 16383 "b", 0 "c", 1 "d": drop "b" and "c"
    stream = packets[:-3] + packets[-1:]
    records, report = depacketize(b"".join(stream))
    assert [r.payload for r in records][1:] == [b"a", b"d"]
    assert report.gaps == [SequenceGap(FRAME, SEQ_COUNT_MODULO - 1, 1, 2)]


def test_dropped_packet_gives_gap_and_incomplete_record():
    p = Packetizer(20)  # 12 record bytes per packet
    a, b, c, hk = payload(30, 1), payload(30, 2), payload(5, 3), payload(10, 4)
    packets = stream_of(p, [(FRAME, a), (HOUSEKEEPING, hk), (FRAME, b), (HOUSEKEEPING, hk), (FRAME, c)])
    # a: frame counts 0..2; hk: 0; b: frame 3..5; hk: 1; c: frame 6
    for dropped, expected, got in ((4, 3, 4), (5, 4, 5), (6, 5, 6)):  # b's FIRST, CONTINUATION, LAST
        stream = packets[:dropped] + packets[dropped + 1:]
        records, report = depacketize(b"".join(stream))
        assert [(r.apid, r.payload) for r in records] == [(FRAME, a), (HOUSEKEEPING, hk),
                                                          (HOUSEKEEPING, hk), (FRAME, c)]
        assert report.gaps == [SequenceGap(FRAME, expected, got, 1)]
        assert report.incomplete_records == 1
        assert report.garbage_bytes == report.crc_failures == 0


def test_record_cut_by_new_first_or_finish_is_incomplete():
    first = hand_packet(FRAME, SEQ_FIRST, 0, b"part")
    stream = first + hand_packet(FRAME, SEQ_UNSEGMENTED, 1, b"whole") + hand_packet(FRAME, SEQ_FIRST, 2, b"x")
    records, report = depacketize(stream)
    assert [r.payload for r in records] == [b"whole"]
    assert report.incomplete_records == 2 and report.gap_count == 0  # cut by UNSEGMENTED, then by finish()
    # a stream that starts in the middle of a record: its tail is one incomplete record
    tail = hand_packet(FRAME, SEQ_CONTINUATION, 7, b"b") + hand_packet(FRAME, SEQ_LAST, 8, b"c")
    records, report = depacketize(tail + hand_packet(FRAME, SEQ_UNSEGMENTED, 9, b"ok"))
    assert [r.payload for r in records] == [b"ok"] and report.incomplete_records == 1


def test_duplicates_are_dropped_and_counted():
    p = Packetizer(20)
    records = [(FRAME, payload(30, 1)), (EVENT, payload(8, 2)), (FRAME, payload(12, 3))]
    packets = stream_of(p, records)
    doubled = [x for pkt in packets for x in (pkt, pkt)] + [packets[0], packets[2]]  # and two late repeats
    out, report = depacketize(b"".join(doubled))
    assert [(r.apid, r.payload) for r in out] == records
    assert report.duplicates == len(packets) + 2
    assert report.packets_ok == len(packets)
    assert report.gap_count == report.incomplete_records == 0


def test_bit_flip_gives_crc_failure_and_the_rest_decodes():
    p = Packetizer(64)
    records = [(FRAME if i % 2 else EVENT, payload(40, i)) for i in range(6)]
    packets = stream_of(p, records)
    bad = bytearray(packets[2])
    bad[20] ^= 0x10
    stream = b"".join(packets[:2]) + bytes(bad) + b"".join(packets[3:])
    out, report = depacketize(stream)
    assert [(r.apid, r.payload) for r in out] == records[:2] + records[3:]
    assert report.crc_failures == 1
    assert report.garbage_bytes == len(bad)
    assert report.gaps == [SequenceGap(EVENT, 1, 2, 1)]


@settings(max_examples=examples(150), deadline=None)
@given(position=st.integers(0, 10 ** 6), bit=st.integers(0, 7),
       sizes=st.lists(st.integers(1, 200), min_size=1, max_size=4))
def test_any_single_bit_flip_loses_exactly_one_record(position, bit, sizes):
    p = Packetizer(80)
    records = [(sorted(KIND_BY_APID)[i % 4], payload(30 + i, i)) for i in range(10)]
    packets = stream_of(p, records)  # all unsegmented: 10 packets
    data = bytearray(b"".join(packets))
    position %= len(data)
    data[position] ^= 1 << bit
    hit = next(i for i in range(len(packets)) if position < sum(map(len, packets[:i + 1])))
    dep = Depacketizer()
    out = feed_chunked(dep, bytes(data), sizes)
    assert [(r.apid, r.payload) for r in out] == records[:hit] + records[hit + 1:]
    assert dep.report.packets_ok == len(packets) - 1


def test_garbage_between_packets_is_skipped():
    p = Packetizer(64)
    records = [(FRAME, payload(30, 1)), (HOUSEKEEPING, payload(20, 2)), (FRAME, payload(10, 3))]
    packets = stream_of(p, records)
    fake_header = bytes([0x01, 0x00, 0xC0, 0x05, 0x00, 0x10])  # APID 0x100, unsegmented, 23 bytes long
    junk1 = b"\xaa\x55" * 5 + fake_header
    junk2 = fake_header[:3]
    junk3 = b"\x01"  # a lone first header byte between packets
    stream = junk1 + packets[0] + junk2 + packets[1] + junk3 + packets[2] + b"\x00" * 7
    for sizes in ([len(stream)], [1], [5, 13]):
        dep = Depacketizer()
        out = feed_chunked(dep, stream, sizes)
        assert [(r.apid, r.payload) for r in out] == records
        assert dep.report.garbage_bytes == len(junk1) + len(junk2) + len(junk3) + 7
        assert dep.report.crc_failures == 1  # the fake header: its "CRC" spans into the real packet
        assert dep.report.gap_count == dep.report.incomplete_records == 0


def test_long_fake_header_waits_then_is_truncated_at_finish():
    p = Packetizer(64)
    records = [(FRAME, payload(30, 1)), (EVENT, payload(20, 2))]
    packets = stream_of(p, records)
    fake = bytes([0x01, 0x02, 0xC0, 0x00, 0xFF, 0xF0])  # claims 65527 bytes, far more than follow
    dep = Depacketizer()
    assert dep.feed(packets[0]) and dep.feed(fake + packets[1]) == []  # held back: maybe a packet
    out = dep.finish()
    assert [(r.apid, r.payload) for r in out] == records[1:]
    assert dep.report.truncated == 1 and dep.report.garbage_bytes == len(fake)
    # a candidate longer than max_packet_len is no candidate at all: nothing waits
    dep = Depacketizer(max_packet_len=1024)
    assert [r.payload for r in dep.feed(fake + packets[1])] == [records[1][1]]


def test_unknown_apid_is_counted_and_skipped():
    p = Packetizer(64)
    packets = stream_of(p, [(FRAME, payload(10, 1)), (0x200, payload(10, 2)), (FRAME, payload(10, 3))])
    out, report = depacketize(b"".join(packets), scan_apids=range(2047))
    assert [r.payload for r in out] == [payload(10, 1), payload(10, 3)]
    assert report.unknown_apids == {0x200: 1} and report.garbage_bytes == 0
    out, report = depacketize(b"".join(packets))  # not scanned: its bytes are garbage
    assert len(out) == 2 and report.garbage_bytes == len(packets[1]) and report.unknown_apids == {}


# ---- sequence count state -----------------------------------------------------------------------

def test_state_persists_across_restarts(tmp_path):
    path = tmp_path / "seqcount.bin"
    p = Packetizer(32, state_path=path)
    assert p.state_error is None and p.counters == {}  # missing file: zeros
    first = stream_of(p, [(FRAME, payload(100)), (EVENT, payload(5))])
    p.save_state()
    assert sorted(os.listdir(tmp_path)) == ["seqcount.bin"]  # no temporary left behind
    restarted = Packetizer(32, state_path=path)
    assert restarted.state_error is None
    assert restarted.counters == p.counters == {FRAME: 5, EVENT: 1}
    second = stream_of(restarted, [(FRAME, payload(7)), (EVENT, payload(3))])
    assert SpacePacketHeader.unpack(second[0]).seq_count == 5
    records, report = depacketize(b"".join(first + second))
    assert len(records) == 4 and report.clean, report
    # a restart without the state would have read as a gap on the ground
    _, report = depacketize(b"".join(first + stream_of(Packetizer(32), [(FRAME, payload(7))])))
    assert report.gaps == [SequenceGap(FRAME, 5, 0, SEQ_COUNT_MODULO - 5)]


@pytest.mark.parametrize("damage, why", [
    (lambda b: b[:-1], "bytes"),
    (lambda b: b"", "too short"),
    (lambda b: b"XXXX" + b[4:], "magic"),
    (lambda b: b[:9] + bytes([b[9] ^ 0x04]) + b[10:], "CRC"),
    (lambda b: b + b"\x00", "bytes"),
    (lambda b: os.urandom(300), ""),
])
def test_corrupt_state_restarts_at_zero(tmp_path, damage, why):
    path = tmp_path / "seqcount.bin"
    p = Packetizer(state_path=path)
    p.packetize(b"x" * 3000, FRAME)
    p.save_state()
    path.write_bytes(damage(path.read_bytes()))
    again = Packetizer(state_path=path)
    assert again.counters == {}
    assert again.state_error and str(path) in again.state_error and why in again.state_error
    again.packetize(b"y", FRAME)
    again.save_state()  # and a good file replaces the bad one
    assert Packetizer(state_path=path).counters == {FRAME: 1}


def test_unreadable_state_is_reported(tmp_path):
    path = tmp_path / "state-is-a-directory"
    path.mkdir()
    p = Packetizer(state_path=path)
    assert p.counters == {} and "cannot read" in p.state_error


# ---- fuzz -----------------------------------------------------------------------------------------

def check_never_raises(data, sizes, max_packet_len=65542):
    dep = Depacketizer(max_packet_len=max_packet_len)
    i, k = 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        for r in dep.feed(data[i:i + n]):
            assert r.payload and r.kind == KIND_BY_APID[r.apid]
        assert len(dep._buf) < max_packet_len  # bounded between calls (internal, checked on purpose)
        i, k = i + n, k + 1
    dep.finish()
    rep = dep.report
    assert min(rep.packets_ok, rep.crc_failures, rep.garbage_bytes, rep.duplicates,
               rep.incomplete_records, rep.truncated) >= 0
    assert rep.garbage_bytes <= len(data)
    return dep


@settings(max_examples=examples(300), deadline=None)
@given(data=st.binary(max_size=4000), sizes=st.lists(st.integers(1, 600), min_size=1, max_size=5),
       max_packet_len=st.sampled_from([9, 64, 1024, 65542]))
def test_fuzz_arbitrary_bytes(data, sizes, max_packet_len):
    check_never_raises(data, sizes, max_packet_len)


@st.composite
def mutated_stream(draw):
    p = Packetizer(draw(st.integers(MIN_PACKET_BYTES, 200)))
    record = st.tuples(st.sampled_from(sorted(KIND_BY_APID)), st.binary(min_size=1, max_size=400))
    records = draw(st.lists(record, min_size=1, max_size=5))
    data = bytearray(b"".join(stream_of(p, records)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header", "repeat"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[at % len(data)] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 20))]
        elif op == "header":  # a plausible header of a known APID with any length
            data[at:at] = bytes([0x01, draw(st.integers(0, 3))]) + draw(st.binary(min_size=4, max_size=4))
        elif op == "repeat":
            data[at:at] = data[max(0, at - draw(st.integers(1, 300))):at]
    return bytes(data)


@settings(max_examples=examples(300), deadline=None)
@given(data=mutated_stream(), sizes=st.lists(st.integers(1, 500), min_size=1, max_size=5))
def test_fuzz_mutated_valid_streams(data, sizes):
    check_never_raises(data, sizes)


def test_depacketizer_api_misuse():
    dep = Depacketizer()
    with pytest.raises(TypeError, match="bytes"):
        dep.feed("text")
    dep.finish()
    with pytest.raises(RuntimeError, match="finish"):
        dep.feed(b"")
    with pytest.raises(ValueError, match="max_packet_len"):
        Depacketizer(max_packet_len=8)
    with pytest.raises(ValueError, match="idle"):
        Depacketizer(scan_apids=[2047])


# ---- sinks -------------------------------------------------------------------------------------

def some_packets():
    return stream_of(Packetizer(40), [(FRAME, TTY_HOSTILE * 9), (EVENT, payload(10))])


def test_sink_regular_file(tmp_path):
    path = tmp_path / "downlink.bin"
    packets = some_packets()
    with PacketSink.open(path) as sink:  # missing: created
        assert sink.kind == "file"
        assert sink.write(packets[:2]) == len(packets[0]) + len(packets[1])
        sink.flush()
        sink.write(packets[2:])
        assert sink.packets_written == len(packets)
        assert sink.bytes_written == sum(map(len, packets))
    assert sink.closed
    with pytest.raises(ValueError, match="closed"):
        sink.write(packets)
    with PacketSink.open(path, kind="file") as sink:  # appends
        sink.write(packets[:1])
    assert path.read_bytes() == b"".join(packets + packets[:1])
    records, report = depacketize(path.read_bytes())
    assert len(records) == 2 and report.duplicates == 1  # the appended packet is a repeat
    with pytest.raises(ValueError, match="not a terminal"):
        PacketSink.open(path, kind="serial")
    with pytest.raises(ValueError, match="not a FIFO"):
        PacketSink.open(path, kind="fifo")
    with pytest.raises(ValueError, match="kind"):
        PacketSink.open(path, kind="radio")
    with pytest.raises(TypeError, match=r"packets\[0\]"):
        with PacketSink.open(path) as sink:
            sink.write(["text"])
    with PacketSink.open(os.devnull) as sink:  # a character device that is no tty
        assert sink.kind == "file"
        sink.write(packets)
        sink.flush()


def test_sink_fifo(tmp_path):
    path = tmp_path / "downlink.fifo"
    os.mkfifo(path)
    got = []

    def reader():
        with open(path, "rb") as f:
            got.append(f.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    packets = some_packets() * 50  # more than a pipe buffer: the writer blocks until read
    with PacketSink.open(path) as sink:  # blocks until the reader has opened
        assert sink.kind == "fifo"
        sink.write(packets)
        sink.flush()
    thread.join(10)
    assert not thread.is_alive()
    assert got == [b"".join(packets)]


def read_exactly(fd, n, timeout=5.0):
    out = b""
    while len(out) < n:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"pty: only {len(out)} of {n} bytes arrived"
        out += os.read(fd, n - len(out))
    return out


def test_sink_serial_on_a_pseudo_terminal():
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        packets = some_packets()
        with pytest.raises(ValueError, match="baud"):
            PacketSink.open(path, kind="serial", baud=123)
        with PacketSink.open(path, baud=115200) as sink:
            assert sink.kind == "serial"
            iflag, oflag, cflag, lflag, ispeed, ospeed, _ = termios.tcgetattr(slave)
            assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
            assert not oflag & termios.OPOST and not iflag & (termios.IXON | termios.ICRNL)
            assert cflag & termios.CSIZE == termios.CS8
            assert ispeed == ospeed == termios.B115200
            sink.write(packets)
            sink.flush()
            data = read_exactly(master, sum(map(len, packets)))
        assert data == b"".join(packets)  # raw: CR, LF, ^C, XON/XOFF went through untouched
        records, report = depacketize(data)
        assert len(records) == 2 and report.clean
    finally:
        os.close(slave)
        os.close(master)
