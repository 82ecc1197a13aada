"""Authenticated uplink: the board's receiver (edge/uplink.py) against the ground's signer
(edge/ground/uplink.py), forged, replayed, truncated and reordered uplinks, the durable ARSN, key
files, the command CDDL (docs/uplink.cddl, pycddl) and the CLI hooks. Requirements UPL-nnn:
docs/reliability.md."""
from __future__ import annotations

import argparse
import json
import os
import pty
import stat
import struct
import tempfile
import warnings
from pathlib import Path

import cbor2
import pycddl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import uplink as up
from edge.downlink.journal import Journal
from edge.downlink.packets import Packetizer, PacketSink, crc16_ccitt
from edge.downlink.record import encode_event
from edge.ground.uplink import (CommandSigner, ack_commands, ack_ranges, add_uplink_parsers,
                                build_packet, encode_command)
from edge.sources import DurableCounter
from edge.uplink import (Accepted, KeyFileError, KeyFilePermissionWarning, Rejected, UplinkReceiver,
                         UplinkSource, add_keygen_parser, decode_command, generate_key, load_key,
                         write_key)
from tests.conftest import examples

CDDL = (Path(__file__).resolve().parent.parent / "docs" / "uplink.cddl").read_text()
SCHEMA = pycddl.Schema(CDDL)
RULES = {up.CMD_ACK: "ack", up.CMD_LEAVE_SAFE_MODE: "leave-safe-mode",
         up.CMD_ENTER_SAFE_MODE: "enter-safe-mode", up.CMD_SET_CONFIG: "set-config",
         up.CMD_QUESTION: "question"}
#: pycddl leaks keys between the alternatives of `command`: also validate against the code's rule.
RULE_SCHEMAS = {code: pycddl.Schema(f"root = {name}\n" + CDDL) for code, name in RULES.items()}

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

COMMANDS = {
    "ack": encode_command("ack", ranges=[[0, 9], [12, 12], [2**40, 2**64 - 1]]),
    "leave_safe_mode": encode_command("leave_safe_mode"),
    "enter_safe_mode": encode_command("enter_safe_mode"),
    "set_config": encode_command("set_config", key="detection.score_threshold", value=0.35),
    "set_config_array": encode_command("set_config", key="input.bands", value=[2, 1, 0]),
    "question": encode_command("question", id=7, text="How many ships near the pier?",
                               frame_id=42, image="frame_42.png"),
    "question_bare": encode_command("question", id=8, text="¿Nubes?"),
    "question_grounding": encode_command("question", id=9, text="ships", task="grounding"),
}
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def conforms(data: bytes) -> bool:
    code = cbor2.loads(data).get(up.KEY_CMD)
    try:
        SCHEMA.validate_cbor(data)
        if code in RULE_SCHEMAS:
            RULE_SCHEMAS[code].validate_cbor(data)
    except pycddl.ValidationError:
        return False
    return True


def rx(path, key=KEY, **kw) -> UplinkReceiver:
    return UplinkReceiver(key, Path(path) / "uplink.arsn", **kw)


def accepted(results) -> list[Accepted]:
    return [r for r in results if isinstance(r, Accepted)]


def reasons(results) -> list[str]:
    return [r.reason for r in results if isinstance(r, Rejected)]


def fix_crc(packet: bytes) -> bytes:
    """The packet with its PEC recomputed (what a forger does after changing a byte)."""
    body = packet[:-2]
    return body + struct.pack(">H", crc16_ccitt(body))


def feed_all(receiver, data: bytes, chunk: int | None = None) -> list:
    out = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        out += receiver.feed(data[i:i + step])
    return out + receiver.flush()


# ---- round trip ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_round_trip_every_command(tmp_path, name):
    """UPL-001, UPL-009: a signed command is accepted once, with the arguments the ground gave."""
    signer = CommandSigner(KEY, tmp_path / "ground.arsn")
    packet = signer.sign(COMMANDS[name])
    receiver = rx(tmp_path)
    results = receiver.feed(packet)
    assert len(results) == 1 and isinstance(results[0], Accepted), results
    got = results[0]
    assert got.arsn == 1 and got.offset == 0
    assert got.command == decode_command(COMMANDS[name])
    assert receiver.last_arsn == 1 and receiver.counters["accepted"] == 1 and receiver.rejected == 0
    assert receiver.pending_bytes == 0 and receiver.garbage_bytes == 0


def test_command_arguments_and_ack_ranges_for_the_journal():
    """UPL-009: decoded arguments by name; an ack's ranges as Python ranges for Journal.ack."""
    cmd = decode_command(COMMANDS["ack"])
    assert cmd.name == "ack" and cmd.args["ranges"] == ((0, 9), (12, 12), (2**40, 2**64 - 1))
    assert cmd.seq_ranges() == [range(0, 10), range(12, 13), range(2**40, 2**64)]
    q = decode_command(COMMANDS["question"]).args
    assert q == {"id": 7, "text": "How many ships near the pier?", "frame_id": 42, "image": "frame_42.png",
                 "task": None}
    assert decode_command(COMMANDS["question_bare"]).args["frame_id"] is None
    assert decode_command(COMMANDS["question_grounding"]).args["task"] == "grounding"
    for bad in (3, -1, "vqa", None):   # key 8 must be a known task id
        with pytest.raises(up.CommandError, match="question task"):
            decode_command(cbor2.dumps({0: 5, 4: 1, 5: "q", 8: bad}))
    with pytest.raises(ValueError, match="question task"):
        encode_command("question", id=1, text="q", task="count")
    s = decode_command(COMMANDS["set_config"]).args
    assert s == {"key": "detection.score_threshold", "value": 0.35}
    with pytest.raises(ValueError):
        decode_command(COMMANDS["leave_safe_mode"]).seq_ranges()


def test_packet_layout():
    """UPL-002: the byte offsets of the module docstring."""
    cmd = COMMANDS["leave_safe_mode"]
    p = build_packet(KEY, 1, 0x0102030405060708, cmd)
    n = len(cmd)
    assert len(p) == 34 + n
    assert p[0:2] == b"\x11\x80"                                      # v0, TC, no sec hdr, APID 0x180
    assert struct.unpack(">H", p[2:4])[0] == (0b11 << 14) | (0x0102030405060708 % 16384)
    assert struct.unpack(">H", p[4:6])[0] == len(p) - 6 - 1
    assert p[6:8] == b"\x00\x01" and p[8:16] == bytes.fromhex("0102030405060708")
    assert p[16:16 + n] == cmd
    assert p[16 + n:32 + n] == up.compute_mac(KEY, p[:16 + n])
    assert struct.unpack(">H", p[32 + n:])[0] == crc16_ccitt(p[:32 + n])


@settings(FAST, max_examples=examples(40))
@given(cuts=st.lists(st.integers(0, 400), max_size=8), n=st.integers(1, 5))
def test_streaming_chunks_split_anywhere(cuts, n):
    """UPL-006: chunk boundaries anywhere give the same results as one buffer."""
    with tempfile.TemporaryDirectory() as d:
        packets = [build_packet(KEY, 1, arsn, COMMANDS["question"]) for arsn in range(1, n + 1)]
        stream = b"".join(packets)
        receiver = rx(d)
        out, last = [], 0
        for c in sorted(set(min(c, len(stream)) for c in cuts)) + [len(stream)]:
            out += receiver.feed(stream[last:c])
            last = c
        assert [a.arsn for a in accepted(out)] == list(range(1, n + 1))
        assert reasons(out) == [] and receiver.pending_bytes == 0


# ---- forged --------------------------------------------------------------------------------------

def test_random_mac_is_rejected(tmp_path):
    """UPL-001: a packet with a valid CRC but a MAC not made with the key is refused as mac."""
    good = build_packet(KEY, 1, 1, COMMANDS["ack"])
    receiver = rx(tmp_path)
    for i in range(20):
        mac = os.urandom(up.MAC_LEN)
        forged = fix_crc(good[:-18] + mac + good[-2:])
        results = receiver.feed(forged)
        assert reasons(results) == ["mac"] and results[0].arsn == 1
    assert receiver.counters["mac"] == 20 and receiver.last_arsn == 0
    assert accepted(receiver.feed(good))  # the genuine one still goes through afterwards


def test_wrong_key_is_rejected(tmp_path):
    """UPL-001."""
    receiver = rx(tmp_path)
    forged = CommandSigner(OTHER_KEY, tmp_path / "g").sign(COMMANDS["leave_safe_mode"])
    assert reasons(receiver.feed(forged)) == ["mac"]
    assert receiver.last_arsn == 0 and not (tmp_path / "uplink.arsn").exists()


@pytest.mark.parametrize("fixed_crc", [False, True])
def test_every_single_bit_flip_is_rejected(tmp_path, fixed_crc):
    """UPL-001, UPL-002: any single bit flipped anywhere in a valid packet (with the CRC left as
    is, or recomputed as a forger would) is never accepted, and nothing raises."""
    good = build_packet(KEY, 1, 5, COMMANDS["set_config"])
    receiver = rx(tmp_path)
    seen = set()
    for bit in range(len(good) * 8):
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        bad = fix_crc(bytes(bad)) if fixed_crc and bit < (len(good) - 2) * 8 else bytes(bad)
        results = receiver.feed(bad) + receiver.flush()
        assert not accepted(results), (bit, results)
        seen.update(reasons(results))
    assert receiver.last_arsn == 0 and receiver.counters["accepted"] == 0
    if fixed_crc:   # the MAC catches what the CRC no longer can
        assert "mac" in seen and "malformed_packet" in seen   # (sequence flags)
    else:
        assert "crc" in seen
    assert accepted(receiver.feed(good))


def test_unknown_spi_and_malformed_packets(tmp_path):
    """UPL-006: CRC-valid packets that cannot be ours are refused with their reason."""
    receiver = rx(tmp_path)
    assert reasons(receiver.feed(build_packet(KEY, 2, 1, COMMANDS["ack"]))) == ["unknown_spi"]
    segmented = bytearray(build_packet(KEY, 1, 1, COMMANDS["ack"]))
    segmented[2] &= 0x3F  # sequence flags 00: a continuation segment
    assert reasons(receiver.feed(fix_crc(bytes(segmented)))) == ["malformed_packet"]
    short = b"\x11\x80\xc0\x00\x00\x03" + b"\x00\x01"
    short = short[:4] + struct.pack(">H", 1 + 2 - 1) + b"\x01"
    short += struct.pack(">H", crc16_ccitt(short))
    assert reasons(receiver.feed(short)) == ["malformed_packet"]
    assert receiver.last_arsn == 0


def test_signed_but_malformed_or_unknown_commands_consume_their_arsn(tmp_path):
    """UPL-009: authentic and fresh, but not a valid command: refused, and the ARSN is used."""
    receiver = rx(tmp_path)
    cases = [(b"\xff", "malformed_command"),
             (cbor2.dumps({0: 99}), "unknown_command"),
             (cbor2.dumps({0: 2, 1: [[1, 2]]}), "malformed_command"),       # closed map
             (cbor2.dumps({0: 1, 1: [[5, 4]]}), "malformed_command"),       # lo > hi
             (cbor2.dumps({0: 2}) + b"\x00", "malformed_command"),          # trailing byte
             (cbor2.dumps([0, 2]), "malformed_command"),
             (cbor2.dumps({0: 4, 2: "nodot", 3: 1}), "malformed_command"),
             (cbor2.dumps({0: 4, 2: "a.b", 3: float("nan")}), "malformed_command"),
             (cbor2.dumps({0: 5, 4: 1, 5: ""}), "malformed_command"),
             (cbor2.dumps({"0": 2}), "malformed_command")]
    for arsn, (cmd, reason) in enumerate(cases, 1):
        results = receiver.feed(build_packet(KEY, 1, arsn, cmd))
        assert reasons(results) == [reason] and results[0].arsn == arsn, (cmd, results)
        assert receiver.last_arsn == arsn
    assert reasons(receiver.feed(build_packet(KEY, 1, 1, cbor2.dumps({0: 2})))) == ["replay"]


# ---- replay and reordering -----------------------------------------------------------------------

def test_same_packet_twice_is_a_replay(tmp_path):
    """UPL-003."""
    packet = CommandSigner(KEY, tmp_path / "g").sign(COMMANDS["leave_safe_mode"])
    receiver = rx(tmp_path)
    results = receiver.feed(packet + packet)
    assert [type(r).__name__ for r in results] == ["Accepted", "Rejected"]
    assert results[1].reason == "replay" and results[1].arsn == 1
    assert receiver.counters == {**{r: 0 for r in up.REASONS}, "accepted": 1, "replay": 1}


def test_old_packet_after_a_restart_is_a_replay(tmp_path):
    """UPL-003, UPL-004: the ARSN state survives a new receiver on the same state path."""
    signer = CommandSigner(KEY, tmp_path / "g")
    old, new = signer.sign(COMMANDS["ack"]), signer.sign(COMMANDS["enter_safe_mode"])
    assert accepted(rx(tmp_path).feed(old + new))
    again = rx(tmp_path)
    assert again.last_arsn == 2 and again.state_error is None
    assert reasons(again.feed(old + new)) == ["replay", "replay"]
    third = signer.sign(COMMANDS["leave_safe_mode"])
    assert [a.arsn for a in accepted(again.feed(third))] == [3]


def test_reordered_lower_arsn_is_refused(tmp_path):
    """UPL-003: the SDLS strict-increasing policy: ARSN 5 then 4 -> 4 refused although never
    seen; the ground resends it with a new ARSN and then it is accepted."""
    receiver = rx(tmp_path)
    p4 = build_packet(KEY, 1, 4, COMMANDS["ack"])
    p5 = build_packet(KEY, 1, 5, COMMANDS["leave_safe_mode"])
    results = receiver.feed(p5 + p4)
    assert [a.arsn for a in accepted(results)] == [5]
    assert reasons(results) == ["replay"] and results[1].arsn == 4
    assert [a.command.name for a in accepted(receiver.feed(build_packet(KEY, 1, 6, COMMANDS["ack"])))] \
        == ["ack"]


def test_crash_between_persist_and_execute_does_not_allow_a_replay(tmp_path):
    """UPL-004: the ARSN is durable before the command is returned: a crash after the return and
    before the execution (the command is dropped) loses the command, never runs it twice."""
    packet = build_packet(KEY, 1, 9, COMMANDS["ack"])
    receiver = rx(tmp_path)
    assert accepted(receiver.feed(packet))
    # the durable state already says 9 when the command is handed over
    assert DurableCounter(tmp_path / "uplink.arsn", start=0).value == 9
    assert DurableCounter(tmp_path / "uplink.arsn.bak", start=0).value == 9
    del receiver                                   # "crash": never executed
    after = rx(tmp_path)
    assert reasons(after.feed(packet)) == ["replay"]


def test_a_persist_failure_means_not_executed(tmp_path, monkeypatch):
    """UPL-004: when the ARSN cannot be made durable the command is not returned for execution."""
    receiver = rx(tmp_path)

    def broken(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(DurableCounter, "set", broken)
    packet = build_packet(KEY, 1, 3, COMMANDS["leave_safe_mode"])
    results = receiver.feed(packet)
    assert reasons(results) == ["state_error"] and "No space" in results[0].detail
    assert reasons(receiver.feed(packet)) == ["replay"]   # not again in this boot either
    monkeypatch.undo()
    # a power cut during the write left the old state: the never-executed command may run now
    assert accepted(rx(tmp_path).feed(packet))


def test_state_copies_and_fail_closed(tmp_path):
    """UPL-005: one corrupt copy -> the other serves; every copy corrupt -> nothing is accepted."""
    state = tmp_path / "uplink.arsn"
    assert accepted(rx(tmp_path).feed(build_packet(KEY, 1, 7, COMMANDS["ack"])))
    state.write_bytes(b"\x00" * 12)                    # bit rot in the primary
    receiver = rx(tmp_path)
    assert receiver.last_arsn == 7 and receiver.state_error is None and receiver.state_problem
    assert reasons(receiver.feed(build_packet(KEY, 1, 7, COMMANDS["ack"]))) == ["replay"]
    assert accepted(receiver.feed(build_packet(KEY, 1, 8, COMMANDS["ack"])))
    assert DurableCounter(state, start=0).problem is None          # rewritten whole
    state.write_bytes(b"junk")
    (tmp_path / "uplink.arsn.bak").write_bytes(b"junk junk junk")
    closed = rx(tmp_path)
    assert closed.state_error and closed.last_arsn is None
    results = closed.feed(build_packet(KEY, 1, 10**6, COMMANDS["ack"])
                          + build_packet(OTHER_KEY, 1, 10**6, COMMANDS["ack"]))
    assert reasons(results) == ["state_error", "mac"]
    fresh = rx(tmp_path / "new")                       # no copy at all: a new association
    assert fresh.last_arsn == 0 and fresh.state_error is None


# ---- truncation, garbage, fuzz -------------------------------------------------------------------

def test_every_prefix_of_a_stream_accepts_only_whole_packets(tmp_path):
    """UPL-007: no prefix makes a partial command accepted; flush() reports the cut one."""
    packets = [build_packet(KEY, 1, a, COMMANDS[n])
               for a, n in ((1, "ack"), (2, "question"), (3, "leave_safe_mode"))]
    stream = b"".join(packets)
    ends = [sum(map(len, packets[:i + 1])) for i in range(len(packets))]
    for cut in range(len(stream) + 1):
        d = tmp_path / str(cut)
        d.mkdir()
        receiver = rx(d)
        early = receiver.feed(stream[:cut])
        got = accepted(early)
        assert [a.arsn for a in got] == [i + 1 for i, e in enumerate(ends) if e <= cut], cut
        late = receiver.flush()
        assert not accepted(late)
        rest = cut - max([0] + [e for e in ends if e <= cut])
        # one byte left cannot be told from garbage (a candidate is recognised by two)
        assert reasons(early + late) == ([] if rest < 2 else ["truncated"]), (cut, early + late)
        assert receiver.garbage_bytes == rest


def test_a_cut_packet_followed_by_a_good_one(tmp_path):
    """UPL-007: the good packet is accepted at once (no flush needed), the cut one is truncated."""
    receiver = rx(tmp_path)
    p1 = build_packet(KEY, 1, 1, COMMANDS["question"])
    p2 = build_packet(KEY, 1, 2, COMMANDS["leave_safe_mode"])
    results = receiver.feed(p1[:30] + p2)
    assert reasons(results) == ["truncated"] and [a.arsn for a in accepted(results)] == [2]
    # a noise byte pattern that looks like a long header does not hold a command back
    results = receiver.feed(b"\x11\x80\xc0\x00\x03\x00" + build_packet(KEY, 1, 3, COMMANDS["ack"]))
    assert [a.arsn for a in accepted(results)] == [3]


@settings(FAST, max_examples=examples(30))
@given(garbage=st.lists(st.binary(max_size=64), min_size=4, max_size=4), chunk=st.integers(1, 97))
def test_garbage_between_packets(garbage, chunk):
    """UPL-006: garbage before, between and after packets: every packet accepted, nothing raises."""
    with tempfile.TemporaryDirectory() as d:
        packets = [build_packet(KEY, 1, a, COMMANDS["question"]) for a in (1, 2, 3)]
        stream = garbage[0] + packets[0] + garbage[1] + packets[1] + garbage[2] + packets[2] + garbage[3]
        receiver = rx(d)
        results = feed_all(receiver, stream, chunk)
        assert [a.arsn for a in accepted(results)] == [1, 2, 3]
        assert "mac" not in reasons(results) and receiver.pending_bytes == 0


@settings(FAST, max_examples=examples(300))
@given(data=st.binary(max_size=600), chunk=st.integers(1, 64))
def test_fuzz_arbitrary_bytes_never_raise_never_accept(data, chunk):
    """UPL-006: arbitrary bytes never raise and are never accepted; memory stays bounded."""
    with tempfile.TemporaryDirectory() as d:
        receiver = rx(d)
        for i in range(0, len(data), chunk):
            assert not accepted(receiver.feed(data[i:i + chunk]))
            assert receiver.pending_bytes < receiver.max_packet_bytes + chunk
        assert not accepted(receiver.flush())
        assert receiver.pending_bytes == 0


@settings(FAST, max_examples=examples(200))
@given(body=st.binary(min_size=0, max_size=120), flags=st.integers(0, 3))
def test_fuzz_well_framed_packets_without_the_key(body, flags):
    """UPL-001: CRC-valid TC packets of our APID with arbitrary content are never accepted."""
    header = struct.pack(">HHH", 0x1180, (flags << 14) | 7, len(body) + 2 - 1)
    packet = header + body
    packet += struct.pack(">H", crc16_ccitt(packet))
    with tempfile.TemporaryDirectory() as d:
        receiver = rx(d)
        results = receiver.feed(packet) + receiver.flush()
        assert not accepted(results)
        assert set(reasons(results)) <= {"malformed_packet", "unknown_spi", "mac"}


# ---- acks ------------------------------------------------------------------------------------------

@settings(FAST, max_examples=examples(200))
@given(seqs=st.sets(st.integers(0, 2**64 - 1) | st.integers(0, 300), max_size=200))
def test_ack_ranges_compress_exactly(seqs):
    """UPL-012: sorted, disjoint, non-adjacent, inclusive ranges covering exactly the seqs."""
    ranges = ack_ranges(seqs)
    covered = set()
    for lo, hi in ranges:
        assert lo <= hi and hi - lo < 10**6
        covered.update(range(lo, hi + 1))
    assert covered == seqs
    assert all(a[1] + 1 < b[0] for a, b in zip(ranges, ranges[1:]))


def test_ack_ranges_examples():
    """UPL-012."""
    assert ack_ranges([]) == []
    assert ack_ranges([5, 3, 4, 9, 1, 10, 11, 4]) == [[1, 1], [3, 5], [9, 11]]
    with pytest.raises(ValueError):
        ack_ranges([-1])


def test_large_acks_are_split_over_packets(tmp_path):
    """UPL-012: an ack of many ranges goes out in packets that each fit, all accepted, same seqs."""
    seqs = set(range(0, 4000, 2)) | {2**63 + i for i in range(0, 200, 3)}
    signer = CommandSigner(KEY, tmp_path / "g")
    packets = signer.sign_ack(seqs)
    assert len(packets) > 1 and all(len(p) <= up.DEFAULT_MAX_TC_PACKET_BYTES for p in packets)
    results = rx(tmp_path).feed(b"".join(packets))
    assert len(accepted(results)) == len(packets)
    got = set()
    for a in accepted(results):
        for r in a.command.seq_ranges():
            got.update(r)
    assert got == seqs
    assert signer.sign_ack([]) == [] and ack_commands([]) == []


def test_a_forged_or_replayed_ack_never_frees_a_record(tmp_path):
    """UPL-001, UPL-003: only an authentic, fresh ack reaches Journal.ack."""
    with Journal(tmp_path / "j", sync=False) as journal:
        seqs = [journal.append(b"record %d" % i, kind=3, priority=1) for i in range(6)]
        receiver = rx(tmp_path)
        signer = CommandSigner(KEY, tmp_path / "g")
        genuine = signer.sign_ack(seqs[:3])[0]
        forged = CommandSigner(OTHER_KEY, tmp_path / "g2").sign_ack(seqs)[0]
        tampered = fix_crc(build_packet(KEY, 1, 50, encode_command("ack", ranges=[[seqs[0], seqs[-1]]]))[:-4]
                           + b"\x00\x00\x00\x00")
        freed = 0
        for packet in (forged, tampered, genuine, genuine):
            for result in receiver.feed(packet):
                if isinstance(result, Accepted):
                    freed += journal.ack(result.command.seq_ranges())
        assert freed == 3
        assert sorted(r.seq for r in journal.pending()) == seqs[3:]
        assert receiver.counters["mac"] == 2 and receiver.counters["replay"] == 1


# ---- the command CDDL ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_cddl_validates_every_command_kind(name):
    """UPL-009: what the ground encodes conforms to docs/uplink.cddl."""
    assert conforms(COMMANDS[name])


@settings(FAST, max_examples=examples(100))
@given(cmd=st.one_of(
    st.builds(lambda r: encode_command("ack", ranges=ack_ranges(r)),
              st.sets(st.integers(0, 2**64 - 1), min_size=1, max_size=20)),
    st.builds(lambda k, v: encode_command("set_config", key=k, value=v),
              st.from_regex(r"[a-z_][a-z0-9_]{0,10}\.[a-z_][a-z0-9_]{0,10}", fullmatch=True),
              st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
              | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
              | st.lists(st.integers(-5, 5) | st.text(max_size=5), max_size=5)),
    st.builds(lambda i, t, f, im: encode_command("question", id=i, text=t, frame_id=f, image=im),
              st.integers(0, 2**64 - 1), st.text(min_size=1, max_size=60),
              st.none() | st.integers(0, 2**64 - 1), st.none() | st.text(min_size=1, max_size=20)),
    st.sampled_from([COMMANDS["leave_safe_mode"], COMMANDS["enter_safe_mode"]])))
def test_cddl_validates_generated_commands(cmd):
    """UPL-009: generated commands of every kind conform and decode."""
    assert conforms(cmd)
    decode_command(cmd)


#: Each breaks a rule of docs/uplink.cddl that pycddl 0.6.4 enforces: both must refuse it.
CDDL_VIOLATIONS = {
    "no code": {1: [[1, 2]]},
    "unknown code": {0: 99},
    "ack without ranges": {0: 1},
    "ack empty ranges": {0: 1, 1: []},
    "ack range of one": {0: 1, 1: [[1]]},
    "ack negative seq": {0: 1, 1: [[-1, 2]]},
    "extra key": {0: 3, 5: "x"},
    "set_config bad key": {0: 4, 2: "nodot", 3: 1},
    "set_config no value": {0: 4, 2: "a.b"},
    "question empty text": {0: 5, 4: 1, 5: ""},
    "question negative id": {0: 5, 4: -1, 5: "q"},
    "question text too long": {0: 5, 4: 1, 5: "x" * 801},
    "question unknown task": {0: 5, 4: 1, 5: "q", 8: 3},
}
#: The CDDL says no; pycddl 0.6.4 does not enforce it (docs/uplink.cddl header): the decoder does.
PYCDDL_GAPS = {
    "config value map": {0: 4, 2: "a.b", 3: {1: 2}},
    "config value bytes": {0: 4, 2: "a.b", 3: b"x"},
    "config nested array": {0: 4, 2: "a.b", 3: [[1]]},
    "config key unanchored": {0: 4, 2: "a.b!", 3: 1},
    "question image not text": {0: 5, 4: 1, 5: "q", 7: 3},
    "question text bytes": {0: 5, 4: 1, 5: b"q"},
}


@pytest.mark.parametrize("name", sorted(CDDL_VIOLATIONS))
def test_cddl_and_decoder_refuse_violations(name):
    """UPL-009."""
    data = cbor2.dumps(CDDL_VIOLATIONS[name])
    assert not conforms(data)
    with pytest.raises(up.CommandError):
        decode_command(data)


@pytest.mark.parametrize("name", sorted(PYCDDL_GAPS))
def test_decoder_checks_what_pycddl_misses(name):
    """UPL-009."""
    with pytest.raises(up.CommandError):
        decode_command(cbor2.dumps(PYCDDL_GAPS[name]))


def test_encode_command_refuses_what_the_board_would():
    """UPL-009."""
    for name, params in [("ack", {"ranges": [[3, 2]]}), ("set_config", {"key": "A.b", "value": 1}),
                         ("question", {"id": 1, "text": ""}), ("nope", {}),
                         ("leave_safe_mode", {"force": True}), ("set_config", {"key": "a.b"})]:
        with pytest.raises(ValueError):
            encode_command(name, **params)


# ---- keys ------------------------------------------------------------------------------------------

def test_key_generation_and_files(tmp_path):
    """UPL-010: 32 random bytes, hex, mode 0600 whatever the umask, no clobbering."""
    k1, k2 = generate_key(), generate_key()
    assert len(k1) == 32 and k1 != k2
    old = os.umask(0)
    try:
        path = write_key(tmp_path / "uplink.key", k1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == k1.hex() + "\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_key(path) == k1
    with pytest.raises(FileExistsError):
        write_key(path, k2)
    write_key(path, k2, force=True)
    assert load_key(path) == k2 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["uplink.key"]   # no temp file left
    assert up.key_fingerprint(k1) != up.key_fingerprint(k2) and len(up.key_fingerprint(k1)) == 16


@pytest.mark.parametrize("content, message", [
    ("ab" * 31, "62 hex digits"), ("ab" * 33, "66 hex digits"), ("zz" * 32, "not hex"),
    ("", "0 hex digits"), ("é" * 32, "not hex text")])
def test_bad_key_files(tmp_path, content, message):
    """UPL-010."""
    path = tmp_path / "k"
    path.write_text(content, encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=message):
        load_key(path)


def test_key_file_missing_or_a_directory(tmp_path):
    """UPL-010."""
    with pytest.raises(KeyFileError, match="no such file"):
        load_key(tmp_path / "missing")
    with pytest.raises(KeyFileError, match="directory"):
        load_key(tmp_path)


@pytest.mark.parametrize("mode, who", [(0o644, "everyone"), (0o640, "its group"), (0o602, "others")])
def test_readable_key_file_warns(tmp_path, mode, who):
    """UPL-010."""
    path = write_key(tmp_path / "k", KEY)
    path.chmod(mode)
    with pytest.warns(KeyFilePermissionWarning, match=f"{oct(mode)[2:]}.*{who}.*chmod 600"):
        assert load_key(path) == KEY


def test_receiver_and_signer_check_the_key(tmp_path):
    """UPL-010."""
    with pytest.raises(ValueError):
        UplinkReceiver(b"short", tmp_path / "s")
    with pytest.raises(TypeError):
        CommandSigner("00" * 32, tmp_path / "g")


def test_keygen_hook(tmp_path, capsys):
    """UPL-010: `edge keygen --out FILE`."""
    parser = argparse.ArgumentParser(prog="edge")
    add_keygen_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "board.key"
    args = parser.parse_args(["keygen", "--out", str(out)])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    key = load_key(out)
    assert report["fingerprint"] == up.key_fingerprint(key) and report["mode"] == "0600"
    assert args.func(args) == 2 and "exists" in capsys.readouterr().err
    args = parser.parse_args(["keygen", "--out", str(out), "--force"])
    assert args.func(args) == 0 and load_key(out) != key


# ---- the ground's counter -------------------------------------------------------------------------

def test_signer_counter_is_durable_and_never_reused(tmp_path):
    """UPL-011."""
    counter = tmp_path / "ground.arsn"
    a = CommandSigner(KEY, counter).sign(COMMANDS["ack"])
    b = CommandSigner(KEY, counter).sign(COMMANDS["ack"])   # a new ground session
    arsn = [struct.unpack(">Q", p[8:16])[0] for p in (a, b)]
    assert arsn == [1, 2]
    counter.write_bytes(b"rot")
    with pytest.raises(ValueError, match="arsn-floor"):
        CommandSigner(KEY, counter)
    signer = CommandSigner(KEY, counter, floor=100)
    assert struct.unpack(">Q", signer.sign(COMMANDS["ack"])[8:16])[0] == 100
    assert CommandSigner(KEY, counter, floor=50).next_arsn == 101   # a floor never goes back
    with pytest.raises(ValueError, match="exceed"):
        signer.sign(encode_command("question", id=1, text="x" * 800) + b"\x00" * 300)


# ---- the source --------------------------------------------------------------------------------------

def test_file_source_keeps_a_durable_offset(tmp_path):
    """UPL-013: a restart reads on from the committed offset, and re-reads a packet the receiver
    was still waiting to complete."""
    uplink, offset = tmp_path / "uplink.bin", tmp_path / "uplink.offset"
    signer = CommandSigner(KEY, tmp_path / "g")
    source = UplinkSource(uplink, offset_path=offset)
    assert source.kind == "file" and source.poll() == b""        # no file yet
    p1, p2, p3 = (signer.sign(COMMANDS[n]) for n in ("ack", "question", "leave_safe_mode"))
    uplink.write_bytes(p1 + p2[:20])
    receiver = rx(tmp_path)
    assert [a.arsn for a in accepted(receiver.feed(source.poll()))] == [1]
    source.commit(held_back=receiver.pending_bytes)
    source.close()
    with open(uplink, "ab") as f:
        f.write(p2[20:] + p3)
    # restart: new source, new receiver; the partial p2 is read again, p1 is not
    source = UplinkSource(uplink, offset_path=offset)
    receiver = rx(tmp_path)
    results = receiver.feed(source.poll())
    assert [a.arsn for a in accepted(results)] == [2, 3] and reasons(results) == []
    source.commit(receiver.pending_bytes)
    assert source.poll() == b""
    source.close()
    # the ground replaced the file: read from 0 again; what was accepted is refused as replay
    uplink.unlink()
    uplink.write_bytes(p1 + signer.sign(COMMANDS["enter_safe_mode"]))
    source = UplinkSource(uplink, offset_path=offset)
    results = receiver.feed(source.poll())
    assert reasons(results) == ["replay"] and [a.arsn for a in accepted(results)] == [4]
    assert source.reset_count == 1
    source.close()
    offset.write_bytes(b"garbage")
    source = UplinkSource(uplink, offset_path=offset)
    assert source.offset_problem and source.offset == 0
    source.close()


def test_fifo_source_is_non_blocking(tmp_path):
    """UPL-013."""
    fifo = tmp_path / "uplink.fifo"
    os.mkfifo(fifo)
    with UplinkSource(fifo) as source:
        assert source.kind == "fifo" and source.poll() == b""   # no writer: returns at once
        packet = CommandSigner(KEY, tmp_path / "g").sign(COMMANDS["ack"])
        with PacketSink.open(fifo) as sink:
            sink.write([packet])
            assert source.poll() == packet
            assert source.poll() == b""                         # writer open, nothing to read
        assert accepted(rx(tmp_path).feed(packet))


def test_serial_source_on_a_pty(tmp_path):
    """UPL-013: a serial device (a pseudo-terminal here) in raw mode, non-blocking."""
    master, slave = pty.openpty()
    try:
        with UplinkSource(os.ttyname(slave)) as source:
            assert source.kind == "serial" and source.poll() == b""
            packet = CommandSigner(KEY, tmp_path / "g").sign(COMMANDS["question"])
            os.write(master, packet)
            got = b""
            for _ in range(100):
                got += source.poll()
                if len(got) >= len(packet):
                    break
            assert got == packet   # raw: no byte translated
    finally:
        os.close(master)
        os.close(slave)


# ---- the CLI hooks ---------------------------------------------------------------------------------

def ground_parser():
    parser = argparse.ArgumentParser(prog="edge-ground")
    add_uplink_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def run_ground(argv, capsys):
    args = ground_parser().parse_args([str(a) for a in argv])
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out)


def downlink_stream(path: Path, seqs) -> Path:
    packetizer = Packetizer()
    with open(path, "wb") as f:
        for seq in seqs:
            record = encode_event(seq=seq, time_ms=1_717_243_200_000, boot=1, code="started", text="x")
            for p in packetizer.packetize(record, 0x102):
                f.write(p)
        f.write(b"\x00garbage")
    return path


def test_cli_ack_of_a_stream_and_of_jsonl(tmp_path, capsys):
    """UPL-014: `edge-ground ack` signs acks the receiver accepts, for exactly the seqs received."""
    key = write_key(tmp_path / "k", KEY)
    seqs = [1, 2, 3, 7, 8, 20]
    stream = downlink_stream(tmp_path / "down.bin", seqs + [3])       # a duplicate record too
    out = tmp_path / "uplink.bin"
    common = ["--key", key, "--counter", tmp_path / "g", "--out", out]
    summary = run_ground(["ack", stream, *common], capsys)
    assert summary["records"] == 6 and summary["ranges"] == 3 and summary["arsn"] == [1, 1]
    from edge.ground.decode import decode_stream
    from edge.ground.outputs import JsonlWriter
    jsonl = tmp_path / "records.jsonl"
    with open(jsonl, "w") as f:
        writer = JsonlWriter(f)
        result = decode_stream(stream)
        for r in result.records:
            writer.write(r)
        writer.close(result.report)
    summary = run_ground(["ack", jsonl, *common], capsys)
    assert summary["arsn"] == [2, 2] and summary["records"] == 6
    results = rx(tmp_path).feed(out.read_bytes())
    assert [a.arsn for a in accepted(results)] == [1, 2]
    for a in accepted(results):
        assert sorted(s for r in a.command.seq_ranges() for s in r) == seqs


def test_cli_commands(tmp_path, capsys):
    """UPL-014: every `edge-ground command` makes a packet the receiver accepts."""
    key = write_key(tmp_path / "k", KEY)
    out = tmp_path / "uplink.bin"
    common = ["--key", key, "--counter", tmp_path / "g", "--out", out]
    run_ground(["command", "leave-safe-mode", *common], capsys)
    run_ground(["command", "enter-safe-mode", *common], capsys)
    run_ground(["command", "set-config", "detection.score_threshold", "0.4", *common], capsys)
    run_ground(["command", "set-config", "input.source", "spool/", *common], capsys)
    summary = run_ground(["command", "question", "Any ships?", "--frame-id", "12", "--task", "vqa", *common],
                         capsys)
    assert summary["question_id"] == 5 and summary["command"] == "question"
    results = rx(tmp_path).feed(out.read_bytes())
    got = [(a.arsn, a.command.name, a.command.args) for a in accepted(results)]
    assert got == [(1, "leave_safe_mode", {}), (2, "enter_safe_mode", {}),
                   (3, "set_config", {"key": "detection.score_threshold", "value": 0.4}),
                   (4, "set_config", {"key": "input.source", "value": "spool/"}),
                   (5, "question", {"id": 5, "text": "Any ships?", "frame_id": 12, "image": None,
                                    "task": "vqa"})]


def test_cli_usage_errors(tmp_path, capsys):
    """UPL-014: a bad key file, a bad config key, a missing input: usage errors, nothing written."""
    from edge.ground.cli import UsageError
    bad = tmp_path / "bad.key"
    bad.write_text("xyz")
    out = tmp_path / "u"
    for argv in (["command", "leave-safe-mode", "--key", bad, "--counter", tmp_path / "g", "--out", out],
                 ["command", "set-config", "NoDot", "1", "--key", write_key(tmp_path / "k", KEY),
                  "--counter", tmp_path / "g", "--out", out],
                 ["ack", tmp_path / "missing.bin", "--key", tmp_path / "k", "--counter", tmp_path / "g",
                  "--out", out]):
        args = ground_parser().parse_args([str(a) for a in argv])
        with pytest.raises(UsageError):
            args.func(args)
    assert not out.exists()


def test_upl_source_on_a_character_device_that_is_no_terminal():
    """UPL-008 (source): a virtio-serial radio port is a character device but no tty: auto mode reads
    it as a non-blocking byte stream (no line settings); asking for "serial" still needs a tty."""
    from edge.uplink import UplinkSource

    src = UplinkSource("/dev/zero")
    try:
        assert src.kind == "stream" and src.poll()[:4] == b"\0\0\0\0"
    finally:
        src.close()
    with pytest.raises(ValueError, match="not a terminal"):
        UplinkSource("/dev/zero", kind="serial")
