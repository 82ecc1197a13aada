"""CCSDS Space Packets (133.0-B-2) of the downlink: records in, packets out, packets onto a link.

Flight side: stdlib only (it runs on the small ARM board; the ground reads the same bytes with the
`spacepackets` library, edge/ground/packets.py). The contract is docs/downlink.md, "Space Packets".

Packet layout (all fields big-endian):

    byte 0..1  version (3 bits) = 0 | type (1) = 0 telemetry | secondary header flag (1) = 0 | APID (11)
    byte 2..3  sequence flags (2) | sequence count (14)
    byte 4..5  packet data length = len(data field) - 1
    byte 6..   data field: a segment of the record, then the 2-byte PEC:
               CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, not reflected, no final xor) over the
               primary header and the segment

Packetizer.packetize(record, apid) -> list of packets. The record is cut into segments of at most
max_packet_bytes - 6 - 2 bytes: one packet is UNSEGMENTED (0b11); more are FIRST (0b01),
CONTINUATION (0b00)..., LAST (0b10). Each APID has its own 14-bit sequence count, +1 per packet,
modulo 16384. APIDs 0..2046 are accepted (2047 is the CCSDS idle APID); the record kinds use
APID_BY_KIND.

Sequence counts persist across restarts in a small state file (Packetizer(state_path=...)), so the
ground reads a restart as continuous, and a lost packet as a gap. The counters are loaded at start
(a missing file: all zero; an unreadable or corrupt one: all zero and `state_error` says why, the
flight loop reports it and carries on) and written by save_state() atomically. save_state() is the
caller's: call it after packetize() and before the packets go to the sink, so that a crash in
between shows as a gap on the ground (packets that never left) and never as reused counts.

State file layout (fixed binary, 9 + 4n bytes): magic b"EDSQ", format version u8 = 1, n u16,
n x (APID u16, next count u16) in ascending APID order, CRC-16/CCITT-FALSE u16 over everything
before it. Binary with a CRC rather than JSON because flash bit flips must be detected: a flipped
digit in JSON still parses, as a different count.

PacketSink.open(path, kind="auto", baud=115200) writes packets to a regular file (appended, created
if missing, fsync on flush()), a FIFO (open blocks until a reader opens the other end; a write blocks
while the pipe is full: the downlink loop's own pacing) or a serial / tty device (raw mode 8N1, no
flow control, the given baud rate). "auto" picks by os.stat: FIFO -> fifo, a terminal -> serial,
anything else (a missing path, a character device that is no terminal such as /dev/null) -> file.
"""
from __future__ import annotations

import binascii
import numbers
import os
import stat
import struct

from edge.durable import atomic_write

#: CCSDS primary header: packet id (2), sequence control (2), data length (2).
PRIMARY_HEADER_LEN = 6
#: Packet error control: CRC-16 after the segment, inside the data field.
PEC_LEN = 2
#: The sequence count has 14 bits: it counts modulo this.
SEQ_COUNT_MODULO = 1 << 14
#: Largest packet CCSDS can describe: the 16-bit data length field holds len(data field) - 1.
CCSDS_MAX_PACKET_BYTES = PRIMARY_HEADER_LEN + (1 << 16)
#: Smallest max_packet_bytes that carries anything: header, one record byte, PEC.
MIN_PACKET_BYTES = PRIMARY_HEADER_LEN + 1 + PEC_LEN
#: downlink.max_packet_bytes when the config does not say.
DEFAULT_MAX_PACKET_BYTES = 1024


#: Sequence flags (2 bits): where the packet's segment sits in its record.
SEQ_CONTINUATION = 0b00
SEQ_FIRST = 0b01
SEQ_LAST = 0b10
SEQ_UNSEGMENTED = 0b11

CCSDS_VERSION = 0
PACKET_TYPE_TM = 0
#: 11-bit APID; the all-ones value is reserved for idle packets, never ours.
APID_MAX = 0x7FF
IDLE_APID = APID_MAX

#: APID of each record kind (docs/downlink.md): 1 frame, 2 housekeeping, 3 event, 4 answer.
APID_BY_KIND = {1: 0x100, 2: 0x101, 3: 0x102, 4: 0x103}
KIND_BY_APID = {apid: kind for kind, apid in APID_BY_KIND.items()}

#: CRC-16/CCITT-FALSE register preset.
CRC16_INIT = 0xFFFF
#: crc16_ccitt(b"123456789"), the catalogue check value of CRC-16/CCITT-FALSE (the ECSS PUS PEC).
CRC16_CHECK = 0x29B1

_HEADER = struct.Struct(">HHH")
_PEC = struct.Struct(">H")

_STATE_MAGIC = b"EDSQ"
_STATE_VERSION = 1
_STATE_HEAD = struct.Struct(">4sBH")
_STATE_ENTRY = struct.Struct(">HH")

SINK_KINDS = ("auto", "file", "fifo", "serial")
DEFAULT_BAUD = 115200


def crc16_ccitt(data, init: int = CRC16_INIT) -> int:
    """CRC-16/CCITT-FALSE of `data`; chain calls by passing the previous value as `init`.

    binascii.crc_hqx is exactly this CRC (poly 0x1021, MSB first, no reflection, no final xor) in C
    in the standard library, so the flight side needs no CRC package: one less dependency to build,
    qualify and carry on the board.
    """
    if not isinstance(init, numbers.Integral) or isinstance(init, bool) or not 0 <= init <= 0xFFFF:
        raise ValueError(f"crc16_ccitt init must be an integer in 0..0xFFFF, got {init!r}")
    return binascii.crc_hqx(data, int(init))


def _check_apid(apid) -> int:
    if not isinstance(apid, numbers.Integral) or isinstance(apid, bool):
        raise TypeError(f"apid must be an integer, got {type(apid).__name__} {apid!r}")
    if not 0 <= apid < IDLE_APID:
        raise ValueError(f"apid must be in 0..{IDLE_APID - 1} (11 bits; {IDLE_APID} is the idle APID), "
                         f"got {apid}")
    return int(apid)


class Packetizer:
    """Cuts records into Space Packets, one 14-bit sequence count per APID."""

    def __init__(self, max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES, state_path=None):
        if not isinstance(max_packet_bytes, numbers.Integral) or isinstance(max_packet_bytes, bool):
            raise TypeError(f"max_packet_bytes must be an integer, got {max_packet_bytes!r}")
        if not MIN_PACKET_BYTES <= max_packet_bytes <= CCSDS_MAX_PACKET_BYTES:
            raise ValueError(f"max_packet_bytes must be in {MIN_PACKET_BYTES}..{CCSDS_MAX_PACKET_BYTES} "
                             f"(header {PRIMARY_HEADER_LEN} + at least 1 record byte + PEC {PEC_LEN}; "
                             f"CCSDS length field limit), got {max_packet_bytes}")
        self.max_packet_bytes = int(max_packet_bytes)
        #: Record bytes per packet.
        self.max_segment_bytes = self.max_packet_bytes - PRIMARY_HEADER_LEN - PEC_LEN
        self.state_path = None if state_path is None else os.fspath(state_path)
        #: Why the state file could not be used (counters then start at zero); None when it could,
        #: or when there was none.
        self.state_error: str | None = None
        self._next: dict[int, int] = {}
        if self.state_path is not None:
            self._next, self.state_error = _load_state(self.state_path)

    def sequence_count(self, apid: int) -> int:
        """The count the next packet of `apid` gets."""
        return self._next.get(_check_apid(apid), 0)

    @property
    def counters(self) -> dict[int, int]:
        """APID -> next sequence count, for the APIDs used so far (a copy)."""
        return dict(self._next)

    def packetize(self, record, apid: int) -> list[bytes]:
        """The packets of one record, in order; advances the APID's sequence count by their number."""
        if not isinstance(record, (bytes, bytearray, memoryview)):
            raise TypeError(f"record must be bytes, got {type(record).__name__}")
        record = bytes(record)
        if not record:
            raise ValueError("record is empty: a Space Packet carries at least one byte of data")
        apid = _check_apid(apid)
        step = self.max_segment_bytes
        segments = [record[i:i + step] for i in range(0, len(record), step)]
        count = self._next.get(apid, 0)
        packets = []
        packet_id = (CCSDS_VERSION << 13) | (PACKET_TYPE_TM << 12) | apid  # secondary header flag 0
        for i, segment in enumerate(segments):
            if len(segments) == 1:
                flags = SEQ_UNSEGMENTED
            elif i == 0:
                flags = SEQ_FIRST
            elif i == len(segments) - 1:
                flags = SEQ_LAST
            else:
                flags = SEQ_CONTINUATION
            header = _HEADER.pack(packet_id, (flags << 14) | count, len(segment) + PEC_LEN - 1)
            pec = crc16_ccitt(segment, crc16_ccitt(header))
            packets.append(header + segment + _PEC.pack(pec))
            count = (count + 1) % SEQ_COUNT_MODULO
        self._next[apid] = count
        return packets

    def save_state(self) -> None:
        """Write the counters to state_path atomically: a crash leaves the old file or the new one."""
        if self.state_path is None:
            raise ValueError("save_state: this Packetizer has no state_path")
        blob = bytearray(_STATE_HEAD.pack(_STATE_MAGIC, _STATE_VERSION, len(self._next)))
        for apid in sorted(self._next):
            blob += _STATE_ENTRY.pack(apid, self._next[apid])
        blob += _PEC.pack(crc16_ccitt(blob))
        atomic_write(self.state_path, bytes(blob))


def _load_state(path: str) -> tuple[dict[int, int], str | None]:
    """(counters, error): the counters of a valid state file; ({}, None) when there is none;
    ({}, why) when it cannot be read or does not check out."""
    try:
        with open(path, "rb") as f:
            blob = f.read(_STATE_HEAD.size + _STATE_ENTRY.size * IDLE_APID + PEC_LEN + 1)
    except FileNotFoundError:
        return {}, None
    except OSError as e:
        return {}, f"sequence count state {path}: cannot read: {e}"

    def bad(why):
        return {}, f"sequence count state {path}: {why}; counters restart at 0"

    if len(blob) < _STATE_HEAD.size + PEC_LEN:
        return bad(f"{len(blob)} bytes, too short for a state file")
    magic, version, n = _STATE_HEAD.unpack_from(blob)
    if magic != _STATE_MAGIC:
        return bad(f"bad magic {magic!r} (expected {_STATE_MAGIC!r})")
    want = _STATE_HEAD.size + n * _STATE_ENTRY.size + PEC_LEN
    if len(blob) != want:
        return bad(f"{len(blob)} bytes, {n} entries need {want}")
    (stored,) = _PEC.unpack_from(blob, want - PEC_LEN)
    if crc16_ccitt(blob[:want - PEC_LEN]) != stored:
        return bad("CRC mismatch")
    if version != _STATE_VERSION:  # checked after the CRC: a flipped version byte is corruption
        return bad(f"format version {version}, this software reads {_STATE_VERSION}")
    counters = {}
    for i in range(n):
        apid, count = _STATE_ENTRY.unpack_from(blob, _STATE_HEAD.size + i * _STATE_ENTRY.size)
        if apid >= IDLE_APID or count >= SEQ_COUNT_MODULO or apid in counters:
            return bad(f"entry {i} (APID {apid}, count {count}) is out of range or repeated")
        counters[apid] = count
    return counters, None


# ---------------------------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------------------------

class PacketSink:
    """Packets onto a file, a FIFO or a serial line. Make one with PacketSink.open().

    Attributes: path, kind ("file", "fifo" or "serial"), packets_written, bytes_written.
    """

    def __init__(self, fd: int, path: str, kind: str):
        self._fd: int | None = fd
        self.path = path
        self.kind = kind
        self.packets_written = 0
        self.bytes_written = 0
        # fsync means something only for regular files (a pipe or a tty has nothing to make durable).
        self._durable = stat.S_ISREG(os.fstat(fd).st_mode)

    @classmethod
    def open(cls, path, kind: str = "auto", baud: int = DEFAULT_BAUD) -> "PacketSink":
        path = os.fspath(path)
        if kind not in SINK_KINDS:
            raise ValueError(f"sink kind must be one of {list(SINK_KINDS)}, got {kind!r}")
        requested = kind
        if kind == "auto":
            mode = _mode_or_zero(path)
            kind = "fifo" if stat.S_ISFIFO(mode) else "serial" if stat.S_ISCHR(mode) else "file"
        if kind == "file":
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        elif kind == "fifo":
            if not stat.S_ISFIFO(_mode_or_zero(path)):
                raise ValueError(f"FIFO sink {path} is not a FIFO (create it with mkfifo)")
            fd = os.open(path, os.O_WRONLY)  # blocks until a reader opens the other end
        else:
            baud_code = _baud_code(baud)
            # O_NOCTTY: the radio's serial line must never become the flight software's controlling
            # terminal (a hangup on it would then signal the process).
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
            try:
                if os.isatty(fd):
                    _configure_raw(fd, baud_code)
                elif requested == "auto":
                    kind = "file"  # a character device that is no terminal, e.g. /dev/null
                else:
                    raise ValueError(f"serial sink {path} is not a terminal device (termios needs a tty)")
            except BaseException:
                os.close(fd)
                raise
        return cls(fd, path, kind)

    def write(self, packets) -> int:
        """Write the packets in order; returns the bytes written by this call. On an error the
        OSError names the path; bytes_written then still counts every byte that went out, while
        packets_written counts only the packets of calls that completed."""
        fd = self._require_open()
        chunks = []
        for i, packet in enumerate(packets):
            if not isinstance(packet, (bytes, bytearray, memoryview)):
                raise TypeError(f"packets[{i}] must be bytes, got {type(packet).__name__}")
            chunks.append(packet)
        blob = b"".join(chunks)  # one write per call: fewer syscalls on a slow board
        view = memoryview(blob)
        done = 0
        try:
            while done < len(view):
                n = os.write(fd, view[done:])
                done += n
                self.bytes_written += n
        except OSError as e:
            raise OSError(e.errno, f"{self.kind} sink: {e.strerror}", self.path) from e
        self.packets_written += len(chunks)
        return done

    def flush(self) -> None:
        """Make written packets durable (fsync) on a file; wait until a serial line has sent them."""
        fd = self._require_open()
        if self._durable:
            os.fsync(fd)
        elif self.kind == "serial":
            import termios
            termios.tcdrain(fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError(f"packet sink {self.path} is closed")
        return self._fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return (f"PacketSink({self.path!r}, kind={self.kind!r}, {state}, "
                f"packets_written={self.packets_written}, bytes_written={self.bytes_written})")


def _mode_or_zero(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return 0


def _baud_code(baud) -> int:
    # termios is imported here, not at the top: the ground tool imports this module for the APID
    # table on hosts that have no termios.
    import termios
    if not isinstance(baud, numbers.Integral) or isinstance(baud, bool):
        raise TypeError(f"baud must be an integer, got {baud!r}")
    code = getattr(termios, f"B{int(baud)}", None)
    if code is None or baud <= 0:
        rates = sorted(int(n[1:]) for n in dir(termios) if n[:1] == "B" and n[1:].isdigit())
        raise ValueError(f"baud {baud} is not a rate termios knows; have {rates}")
    return code


def _configure_raw(fd: int, baud_code: int) -> None:
    """Raw 8N1, no flow control, no output processing: the line carries packet bytes unchanged."""
    import termios
    iflag, oflag, cflag, lflag, _ispeed, _ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
               | termios.IGNCR | termios.ICRNL | termios.IXON | termios.IXOFF | termios.IXANY)
    oflag &= ~termios.OPOST  # no "\n" -> "\r\n": packets are binary
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB | termios.CSTOPB | getattr(termios, "CRTSCTS", 0))
    cflag |= termios.CS8 | termios.CREAD | termios.CLOCAL  # CLOCAL: no modem lines on a radio link
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, baud_code, baud_code, cc])
