"""Authenticated uplink, flight side: telecommand Space Packets in, verified commands out.

Everything the ground sends up (acknowledgements that free journal space, safe-mode commands,
config changes, VLM questions) is executed only when it carries a valid MAC under the key
provisioned on the board and an anti-replay sequence number (ARSN) above every one accepted
before: the authentication-only service of CCSDS SDLS (355.0-B-2), carried in a Space Packet.
The ground side (signing, CLI) is edge/ground/uplink.py; the command map's normative spec is
docs/uplink.cddl; the requirements UPL-nnn are listed in docs/reliability.md.

Stdlib + cbor2 only, like the rest of the flight side.

Packet layout (all fields big-endian; n = length of the command):

    byte 0..1    version (3 bits) = 0 | type (1) = 1 telecommand | secondary header flag (1) = 0 |
                 APID (11) = 0x180                                  -> 0x1180
    byte 2..3    sequence flags (2) = 0b11 unsegmented | sequence count (14) = ARSN mod 16384
    byte 4..5    packet data length = len(data field) - 1 = 10 + n + 16 + 2 - 1
    -- data field --
    byte 6..7    security header: SPI u16 (security parameter index: the security association;
                 1 = the board's provisioned key)
    byte 8..15   security header: ARSN u64 (strictly increasing per security association)
    byte 16..    the command: one CBOR map, small integer keys (docs/uplink.cddl)
    16+n..31+n   security trailer: MAC = HMAC-SHA256(key, bytes 0 .. 15+n) truncated to its first
                 16 bytes
    32+n..33+n   PEC: CRC-16/CCITT-FALSE over bytes 0 .. 31+n (edge.downlink.packets.crc16_ccitt)

The SDLS security header and trailer sit inside the packet data field (the secondary header flag
stays 0: it is not a CCSDS/PUS secondary header). The MAC covers the primary header too, so a
changed APID, length or sequence count is a forgery. The MAC is truncated to 128 bits, as SDLS
permits (the MAC length is a parameter of the security association) and as IPsec does with
HMAC-SHA-256-128 (RFC 4868): a blind forgery succeeds with probability 2^-128 per attempt. HMAC and
SHA-256 come from Python's `hmac` and `hashlib`: the standard library's implementation (hashlib is
OpenSSL's SHA-256), nothing extra to build, qualify and carry on the board; MACs are compared
with hmac.compare_digest (constant time).

Command map (docs/uplink.cddl; key 0 is the command code, the other keys are shared):

    key 0 cmd           1 ack, 2 leave_safe_mode, 3 enter_safe_mode, 4 set_config, 5 question
    key 1 ranges        ack: [+ [lo, hi]] record seqs, both inclusive, lo <= hi
    key 2 config-key    set_config: "section.key"
    key 3 config-value  set_config: null / bool / int / float / text, or an array of those
                        (carried as is: the flight config validates it)
    key 4 question-id   question: uint (the answer record names it)
    key 5 question-text question: text, 1..800 UTF-8 bytes
    key 6 frame-id      question, optional: the frame the question is about
    key 7 image         question, optional: an image name on the board
    key 8 task          question, optional: 0 vqa, 1 caption, 2 grounding (the answer record's task ids,
                        docs/downlink.md key 24); absent: the mission's [vlm] task

Maps are closed (an unknown key is malformed_command); an unknown command code is
unknown_command; new commands get new codes (COMMANDS below, and a rule in docs/uplink.cddl).

UplinkReceiver(key, state_path, *, spi=1).feed(chunk) -> [Accepted | Rejected, ...]. Chunks may
split packets anywhere. For each candidate (bytes 0x11 0x80, a length in range) the receiver checks
in this order, and the first failure is the Rejected's reason:

    crc               the PEC does not check (the scanner then moves ONE byte on: a stray header
                      pattern can never swallow the packets behind it)
    truncated         a packet cut short: a complete, CRC-valid packet starts inside it (then the
                      scanner jumps there), or flush() found it unfinished
    malformed_packet  CRC-valid, but segmented, or too short for security header + command + MAC
    unknown_spi       no security association with that SPI
    mac               the MAC does not verify (forged, wrong key, corrupted with a fixed-up CRC)
    state_error       the ARSN state cannot be read (fail closed) or written (not executed)
    replay            ARSN <= the last accepted one
    malformed_command the command is not a well-formed map of its code
    unknown_command   no command has that code
Bytes that are part of no CRC-valid packet are counted in garbage_bytes (those of rejected
candidates too). Input bytes never raise.

Anti-replay (SDLS strict-increasing policy). A packet is accepted only if its ARSN is greater than
the last accepted one. A command that arrives after one with a higher ARSN is rejected as replay
even when it was never seen: the receiver keeps one number, not a window, so reordered uplinks are
refused and the ground must resend a refused command with a new ARSN (edge-ground signs every
packet with the next number of its durable counter).

Durability. Once a packet is authentic and fresh, its ARSN is written durably (atomic write and
fsync, edge.sources.DurableCounter, in two copies: state_path and state_path + ".bak") BEFORE the
command is returned for execution. A crash or power cut after that write and before the execution
loses the command (at most once), never executes it twice: the replay is refused. The ground
resends what had no effect (an ack is idempotent: the flight side re-sends unacknowledged records,
the ground acknowledges them again). Commands that are authentic and fresh but malformed or
unknown consume their ARSN too (SDLS updates the ARSN on verification, whatever the content).
Loading: no copy -> a fresh security association (last ARSN 0); the higher of the valid copies
otherwise; copies that exist but none valid -> fail closed: every packet is rejected with
state_error (accepting would re-open every old packet to replay). Recovery is a board-side
maintenance action: delete both copies AND re-provision a new key.

UplinkSource(path, *, offset_path=None).poll() -> bytes: non-blocking reads of a regular file
(the ground appends to it; with offset_path the read offset is durable, so a restart does not
re-read old commands), a FIFO or a serial device (raw 8N1). commit(held_back=receiver.pending_bytes)
persists the offset of the bytes the receiver has fully consumed; call it right after feed().
A device error (a serial line hung up) is an OSError from poll(): the caller's to report.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import math
import os
import re
import secrets
import stat
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cbor2

from edge.downlink.packets import (CCSDS_VERSION, DEFAULT_BAUD, PEC_LEN, PRIMARY_HEADER_LEN,
                                   SEQ_UNSEGMENTED, _baud_code, _configure_raw, crc16_ccitt)
from edge.sources import DurableCounter, atomic_write

# ---- packet format -----------------------------------------------------------------------------

#: APID of the uplink (telecommand) packets; 0x100..0x103 are the downlink's telemetry.
UPLINK_APID = 0x180
#: Packet type bit of a telecommand (CCSDS 133.0-B-2).
PACKET_TYPE_TC = 1
#: SDLS security header: SPI u16, ARSN u64.
SECURITY_HEADER = struct.Struct(">HQ")
SECURITY_HEADER_LEN = SECURITY_HEADER.size  # 10
#: Security trailer: HMAC-SHA256 truncated to this many bytes (128 bits).
MAC_LEN = 16
#: The SPI of the board's provisioned key.
DEFAULT_SPI = 1
#: Smallest valid uplink packet: header, security header, a 1-byte command, MAC, PEC.
MIN_TC_PACKET_BYTES = PRIMARY_HEADER_LEN + SECURITY_HEADER_LEN + 1 + MAC_LEN + PEC_LEN  # 35
#: Largest uplink packet the receiver waits for. A candidate header in noise makes the receiver
#: hold bytes until this many arrived (or a valid packet shows up inside), so it stays small; a
#: TC Transfer Frame (CCSDS 232.0-B) carries at most 1024 octets anyway.
DEFAULT_MAX_TC_PACKET_BYTES = 1024
#: Overhead of a packet around its command.
TC_OVERHEAD_BYTES = PRIMARY_HEADER_LEN + SECURITY_HEADER_LEN + MAC_LEN + PEC_LEN  # 34
#: The largest ARSN: a security association whose last ARSN is this accepts nothing more.
ARSN_MAX = (1 << 64) - 1

#: Bytes 0..1 of every uplink packet.
TC_PACKET_ID = (CCSDS_VERSION << 13) | (PACKET_TYPE_TC << 12) | UPLINK_APID  # 0x1180
_HEADER = struct.Struct(">HHH")
_PEC = struct.Struct(">H")
#: Candidate start: the packet id bytes (version 0, TC, no secondary header, APID 0x180).
_CANDIDATE = re.compile(re.escape(_HEADER.pack(TC_PACKET_ID, 0, 0)[:2]))

# ---- command map -------------------------------------------------------------------------------

KEY_CMD = 0
KEY_RANGES = 1
KEY_CONFIG_KEY = 2
KEY_CONFIG_VALUE = 3
KEY_QUESTION_ID = 4
KEY_QUESTION_TEXT = 5
KEY_FRAME_ID = 6
KEY_IMAGE = 7
KEY_TASK = 8
#: question task ids (key 8): the downlink answer record's (edge/downlink/record.py TASKS)
QUESTION_TASKS = {0: "vqa", 1: "caption", 2: "grounding"}

CMD_ACK = 1
CMD_LEAVE_SAFE_MODE = 2
CMD_ENTER_SAFE_MODE = 3
CMD_SET_CONFIG = 4
CMD_QUESTION = 5

#: Command name -> code (docs/uplink.cddl). New commands get new codes.
COMMAND_CODES = {"ack": CMD_ACK, "leave_safe_mode": CMD_LEAVE_SAFE_MODE,
                 "enter_safe_mode": CMD_ENTER_SAFE_MODE, "set_config": CMD_SET_CONFIG,
                 "question": CMD_QUESTION}
COMMAND_NAMES = {code: name for name, code in COMMAND_CODES.items()}

UINT64_MAX = (1 << 64) - 1
INT64_MIN = -(1 << 63)
MAX_QUESTION_TEXT_BYTES = 800
MAX_IMAGE_NAME_BYTES = 255
MAX_CONFIG_TEXT_BYTES = 255
MAX_CONFIG_ARRAY = 64
#: "section.key": lower-case identifiers, as the mission config spells them.
CONFIG_KEY_PATTERN = re.compile(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*")
MAX_CONFIG_KEY_BYTES = 64

#: Rejection reasons, in the order the receiver checks them.
REASONS = ("crc", "truncated", "malformed_packet", "unknown_spi", "mac", "state_error", "replay",
           "malformed_command", "unknown_command")

# ---- keys --------------------------------------------------------------------------------------

#: Key length: 32 random bytes, SHA-256's output length (RFC 2104: a shorter key weakens HMAC, a
#: longer one adds nothing).
KEY_BYTES = 32
KEY_FILE_MODE = 0o600


class KeyFileError(ValueError):
    """A key file that cannot be used (missing, unreadable, not hex, wrong length)."""


class KeyFilePermissionWarning(UserWarning):
    """A key file readable or writable by group or others."""


def generate_key() -> bytes:
    """KEY_BYTES bytes from the operating system's CSPRNG (secrets.token_bytes)."""
    return secrets.token_bytes(KEY_BYTES)


def key_fingerprint(key: bytes) -> str:
    """16 hex digits naming a key without revealing it (compare ground and board copies)."""
    return hashlib.sha256(b"orbit-edge uplink key\x00" + check_key(key)).hexdigest()[:16]


def check_key(key) -> bytes:
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"key must be bytes, got {type(key).__name__}")
    if len(key) != KEY_BYTES:
        raise ValueError(f"key must be {KEY_BYTES} bytes, got {len(key)}")
    return bytes(key)


def write_key(path, key: bytes, *, force: bool = False) -> Path:
    """Store `key` as hex (one line) in a new file of mode 0600. An existing file is an error
    unless force (then it is replaced atomically). The file never exists with a wider mode."""
    key = check_key(key)
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(17, "key file exists (use --force to replace it)", str(path))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        try:
            os.fchmod(fd, KEY_FILE_MODE)  # exactly 0600, whatever the umask
            os.write(fd, (key.hex() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the path appeared meanwhile: never clobbers
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def load_key(path) -> bytes:
    """The key of a key file: 64 hex digits (surrounding whitespace ignored). Raises KeyFileError
    naming the problem; warns (KeyFilePermissionWarning) when group or others may read it."""
    path = Path(path)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise KeyFileError(f"key file {path}: is a directory")
        with open(path, "rb") as f:
            blob = f.read(4 * KEY_BYTES + 64)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path}: no such file (make one with `edge keygen --out {path}`)") \
            from None
    except OSError as e:
        raise KeyFileError(f"key file {path}: cannot read: {e.strerror or e}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        who = "everyone" if mode & 0o004 else "others" if mode & 0o007 else "its group"
        warnings.warn(f"key file {path} has mode {mode:04o}: {who} may access the uplink key; "
                      f"chmod 600 {path}", KeyFilePermissionWarning, stacklevel=2)
    try:
        text = blob.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {path}: not hex text") from None
    if not re.fullmatch(r"[0-9a-fA-F]*", text):
        raise KeyFileError(f"key file {path}: not hex (a key file holds {2 * KEY_BYTES} hex digits)")
    if len(text) != 2 * KEY_BYTES:
        raise KeyFileError(f"key file {path}: {len(text)} hex digits, a key is {2 * KEY_BYTES} "
                           f"({KEY_BYTES} bytes)")
    return bytes.fromhex(text)


def compute_mac(key: bytes, authenticated: bytes) -> bytes:
    """The security trailer: HMAC-SHA256(key, primary header + security header + command),
    truncated to MAC_LEN bytes."""
    return hmac.new(key, authenticated, hashlib.sha256).digest()[:MAC_LEN]


# ---- commands ----------------------------------------------------------------------------------

class CommandError(ValueError):
    """A command map that is not well formed (`unknown` True: well formed but no such code)."""

    def __init__(self, message: str, unknown: bool = False):
        super().__init__(message)
        self.unknown = unknown


@dataclass(frozen=True)
class Command:
    """A decoded command. args by name: ack {"ranges": ((lo, hi), ...)}; set_config {"key",
    "value"}; question {"id", "text", "frame_id" (or None), "image" (or None)}; safe-mode: {}."""
    name: str
    code: int
    args: dict = field(default_factory=dict)

    def seq_ranges(self) -> list[range]:
        """An ack's ranges as Python ranges (what Journal.ack / FlightLoop.acknowledge take)."""
        if self.code != CMD_ACK:
            raise ValueError(f"{self.name} carries no seq ranges")
        return [range(lo, hi + 1) for lo, hi in self.args["ranges"]]


def _is_uint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= UINT64_MAX


def _text(v, where: str, lo: int, hi: int) -> str:
    if not isinstance(v, str):
        raise CommandError(f"{where}: must be text, got {type(v).__name__}")
    n = len(v.encode("utf-8", "surrogatepass"))
    if not lo <= n <= hi:
        raise CommandError(f"{where}: {n} UTF-8 bytes, must be {lo}..{hi}")
    return v


def _config_scalar(v, where: str):
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        if not INT64_MIN <= v <= UINT64_MAX:
            raise CommandError(f"{where}: integer out of the CBOR integer range")
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise CommandError(f"{where}: must be finite, got {v}")
        return v
    if isinstance(v, str):
        return _text(v, where, 0, MAX_CONFIG_TEXT_BYTES)
    raise CommandError(f"{where}: must be null, bool, int, float or text, got {type(v).__name__}")


def _ack(m) -> dict:
    ranges = m[KEY_RANGES]
    if not isinstance(ranges, list) or not ranges:
        raise CommandError("ack ranges: must be a non-empty array of [lo, hi]")
    out = []
    for i, r in enumerate(ranges):
        if not (isinstance(r, list) and len(r) == 2 and _is_uint(r[0]) and _is_uint(r[1])):
            raise CommandError(f"ack ranges[{i}]: must be [lo, hi] of uints")
        if r[0] > r[1]:
            raise CommandError(f"ack ranges[{i}]: lo {r[0]} > hi {r[1]}")
        out.append((r[0], r[1]))
    return {"ranges": tuple(out)}


def _set_config(m) -> dict:
    key = _text(m[KEY_CONFIG_KEY], "set_config key", 3, MAX_CONFIG_KEY_BYTES)
    if not CONFIG_KEY_PATTERN.fullmatch(key):
        raise CommandError(f"set_config key: must be 'section.key', got {key!r}")
    value = m[KEY_CONFIG_VALUE]
    if isinstance(value, list):
        if len(value) > MAX_CONFIG_ARRAY:
            raise CommandError(f"set_config value: {len(value)} items, at most {MAX_CONFIG_ARRAY}")
        value = [_config_scalar(v, f"set_config value[{i}]") for i, v in enumerate(value)]
    else:
        value = _config_scalar(value, "set_config value")
    return {"key": key, "value": value}


def _question(m) -> dict:
    qid = m[KEY_QUESTION_ID]
    if not _is_uint(qid):
        raise CommandError("question id: must be a uint")
    text = _text(m[KEY_QUESTION_TEXT], "question text", 1, MAX_QUESTION_TEXT_BYTES)
    frame_id = m.get(KEY_FRAME_ID)
    if frame_id is not None and not _is_uint(frame_id):
        raise CommandError("question frame-id: must be a uint")
    if KEY_FRAME_ID in m and frame_id is None:
        raise CommandError("question frame-id: must be a uint, got null")
    image = m.get(KEY_IMAGE)
    if KEY_IMAGE in m:
        image = _text(image, "question image", 1, MAX_IMAGE_NAME_BYTES)
    task = None
    if KEY_TASK in m:
        task = QUESTION_TASKS.get(m[KEY_TASK]) if _is_uint(m[KEY_TASK]) else None
        if task is None:
            raise CommandError(f"question task: must be one of {sorted(QUESTION_TASKS)} "
                               f"({', '.join(QUESTION_TASKS.values())}), got {m[KEY_TASK]!r}")
    return {"id": qid, "text": text, "frame_id": frame_id, "image": image, "task": task}


#: code -> (required keys, optional keys, parser of the map into Command.args).
COMMANDS = {
    CMD_ACK: ({KEY_RANGES}, set(), _ack),
    CMD_LEAVE_SAFE_MODE: (set(), set(), lambda m: {}),
    CMD_ENTER_SAFE_MODE: (set(), set(), lambda m: {}),
    CMD_SET_CONFIG: ({KEY_CONFIG_KEY, KEY_CONFIG_VALUE}, set(), _set_config),
    CMD_QUESTION: ({KEY_QUESTION_ID, KEY_QUESTION_TEXT}, {KEY_FRAME_ID, KEY_IMAGE, KEY_TASK},
                   _question),
}


def decode_command(data: bytes) -> Command:
    """The Command of a command field (UPL-009). Raises CommandError (with .unknown for an
    unknown code); never anything else on any bytes."""
    try:
        decoder = cbor2.CBORDecoder(io.BytesIO(data))
        m = decoder.decode()
        rest = len(data) - decoder.fp.tell()
    except RecursionError:
        raise CommandError("not CBOR: nested too deeply") from None
    except Exception as e:  # noqa: BLE001  cbor2 raises several kinds on bad input
        raise CommandError(f"not CBOR: {type(e).__name__}: {e}") from None
    if rest:
        raise CommandError(f"{rest} bytes after the command map")
    if not isinstance(m, dict):
        raise CommandError(f"a command is a CBOR map, got {type(m).__name__}")
    code = m.get(KEY_CMD) if all(isinstance(k, int) and not isinstance(k, bool) for k in m) else None
    if not _is_uint(code):
        raise CommandError("a command map has uint keys and a uint command code at key 0")
    spec = COMMANDS.get(code)
    if spec is None:
        raise CommandError(f"unknown command code {code}", unknown=True)
    required, optional, parse = spec
    keys = set(m) - {KEY_CMD}
    name = COMMAND_NAMES[code]
    if keys - required - optional:
        raise CommandError(f"{name}: unknown keys {sorted(keys - required - optional)}")
    if required - keys:
        raise CommandError(f"{name}: missing keys {sorted(required - keys)}")
    try:
        args = parse(m)
    except CommandError:
        raise
    except Exception as e:  # noqa: BLE001  a value of an unexpected type, whatever it is
        raise CommandError(f"{name}: {type(e).__name__}: {e}") from None
    return Command(name, code, args)


# ---- receiver ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Accepted:
    """An authentic, fresh, well-formed command: execute it. Its ARSN is already durable."""
    arsn: int
    command: Command
    offset: int          # stream offset of the packet's first byte


@dataclass(frozen=True)
class Rejected:
    """A packet (or candidate) refused. arsn is the ARSN it claims when the packet got as far as
    the security header (authenticated only for state_error, replay, malformed_command and
    unknown_command), else None."""
    reason: str          # one of REASONS
    arsn: int | None
    offset: int          # stream offset of the candidate's first byte
    detail: str = ""


class UplinkReceiver:
    """Streaming verifier of uplink packets (module docstring). feed() chunks; flush() when the
    link went idle or a pass ended (decides the bytes held back; the receiver stays usable)."""

    def __init__(self, key: bytes, state_path, *, spi: int = DEFAULT_SPI,
                 max_packet_bytes: int = DEFAULT_MAX_TC_PACKET_BYTES):
        self._key = check_key(key)
        if not isinstance(spi, int) or isinstance(spi, bool) or not 0 <= spi <= 0xFFFF:
            raise ValueError(f"spi must be an integer in 0..65535, got {spi!r}")
        if not isinstance(max_packet_bytes, int) or not (
                MIN_TC_PACKET_BYTES <= max_packet_bytes <= PRIMARY_HEADER_LEN + (1 << 16)):
            raise ValueError(f"max_packet_bytes must be in {MIN_TC_PACKET_BYTES}.."
                             f"{PRIMARY_HEADER_LEN + (1 << 16)}, got {max_packet_bytes!r}")
        self.spi = spi
        self.max_packet_bytes = max_packet_bytes
        self.state_path = Path(state_path)
        self.backup_path = self.state_path.with_name(self.state_path.name + ".bak")
        #: Rejections per reason, and "accepted".
        self.counters = {"accepted": 0, **{r: 0 for r in REASONS}}
        #: Bytes that were part of no CRC-valid packet.
        self.garbage_bytes = 0
        #: Why the state could not be loaded: set -> fail closed (None: loaded or fresh).
        self.state_error: str | None = None
        #: A copy that was unreadable while the other was good (reported, not fatal).
        self.state_problem: str | None = None
        self._last_arsn = self._load_state()
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]

    # ---- state ---------------------------------------------------------------------------------

    def _load_state(self) -> int:
        values, problems, present = [], [], 0
        self._copies = [DurableCounter(p, start=0) for p in (self.state_path, self.backup_path)]
        for path, counter in zip((self.state_path, self.backup_path), self._copies):
            try:
                if not path.exists():
                    continue
            except OSError as e:  # e.g. the directory cannot be searched: unknown, so unusable
                problems.append(f"{path.name}: {e}")
                present += 1
                continue
            present += 1
            if counter.problem:
                problems.append(counter.problem)
            else:
                values.append(counter.value)
        if present and not values:
            self.state_error = ("ARSN state unusable, refusing every uplink (fail closed): "
                                + "; ".join(problems))
            return ARSN_MAX
        if problems:
            self.state_problem = "; ".join(problems)
        return max(values, default=0)

    def _persist(self, arsn: int) -> None:
        """Both copies, atomically and fsynced (UPL-004)."""
        for copy in self._copies:
            copy.set(arsn)

    @property
    def last_arsn(self) -> int | None:
        """The last accepted ARSN (0: none yet; None while failing closed)."""
        return None if self.state_error else self._last_arsn

    @property
    def rejected(self) -> int:
        """Rejections of every reason (housekeeping counter uplink_rejected)."""
        return sum(self.counters[r] for r in REASONS)

    @property
    def pending_bytes(self) -> int:
        """Bytes held back for a packet not complete yet (UplinkSource.commit(held_back=...))."""
        return len(self._buf)

    # ---- scanning ------------------------------------------------------------------------------

    def feed(self, data) -> list:
        """Take the next chunk; returns the Accepted / Rejected it completed, in stream order."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"feed() takes bytes, got {type(data).__name__}")
        self._buf += data
        return self._scan(final=False)

    def flush(self) -> list:
        """The link went idle (or a file pass ended): a packet still incomplete is truncated,
        the bytes held back are decided. Feeding may go on afterwards."""
        return self._scan(final=True)

    def _length_at(self, buf, pos: int) -> int:
        """Total length of the candidate header at pos (which must hold 6 bytes), 0 if none."""
        _pid, _seq, length = _HEADER.unpack_from(buf, pos)
        total = PRIMARY_HEADER_LEN + length + 1
        return total if PRIMARY_HEADER_LEN + PEC_LEN <= total <= self.max_packet_bytes else 0

    def _valid_within(self, buf, start: int, end: int) -> int:
        """Start of the first complete CRC-valid candidate beginning in [start, end), or -1."""
        pos = start
        while True:
            m = _CANDIDATE.search(buf, pos, end + 1)  # the match may reach one byte past end
            if m is None or m.start() >= end:
                return -1
            p = m.start()
            if len(buf) - p >= PRIMARY_HEADER_LEN:
                total = self._length_at(buf, p)
                if total and len(buf) - p >= total and _crc_ok(buf, p, total):
                    return p
            pos = p + 1

    def _scan(self, final: bool) -> list:
        buf, out, pos = self._buf, [], 0
        while True:
            m = _CANDIDATE.search(buf, pos)
            if m is None:
                keep = 0 if final or not buf else 1  # a candidate may start at the last byte
                self.garbage_bytes += max(0, len(buf) - keep - pos)
                pos = max(pos, len(buf) - keep)
                break
            start = m.start()
            self.garbage_bytes += start - pos
            pos = start
            if len(buf) - pos < PRIMARY_HEADER_LEN:
                if not final:
                    break
                out.append(self._reject("truncated", None, pos, "stream ended inside a header"))
                self.garbage_bytes += 1
                pos += 1
                continue
            total = self._length_at(buf, pos)
            if not total:
                self.garbage_bytes += 1
                pos += 1
                continue
            if len(buf) - pos < total:
                inner = self._valid_within(buf, pos + 1, len(buf))
                if inner >= 0:
                    out.append(self._reject("truncated", None, pos,
                                            f"cut short: a packet starts {inner - pos} bytes in"))
                    self.garbage_bytes += inner - pos
                    pos = inner
                    continue
                if not final:
                    break  # wait for the rest
                out.append(self._reject("truncated", None, pos,
                                        f"{len(buf) - pos} of {total} bytes"))
                self.garbage_bytes += 1
                pos += 1
                continue
            if not _crc_ok(buf, pos, total):
                inner = self._valid_within(buf, pos + 1, pos + total)
                if inner >= 0:
                    out.append(self._reject("truncated", None, pos,
                                            f"cut short: a packet starts {inner - pos} bytes in"))
                    self.garbage_bytes += inner - pos
                    pos = inner
                else:
                    out.append(self._reject("crc", None, pos, "PEC mismatch"))
                    self.garbage_bytes += 1
                    pos += 1
                continue
            out.append(self._verify(bytes(buf[pos:pos + total]), self._base + pos))
            pos += total
        del buf[:pos]
        self._base += pos
        return out

    def _reject(self, reason: str, arsn, pos_or_offset: int, detail: str, *, absolute=False):
        self.counters[reason] += 1
        offset = pos_or_offset if absolute else self._base + pos_or_offset
        return Rejected(reason, arsn, offset, detail)

    # ---- verification --------------------------------------------------------------------------

    def _verify(self, packet: bytes, offset: int):
        """A CRC-valid packet: structure, SPI, MAC, state, ARSN, persist, command."""
        def reject(reason, arsn, detail):
            return self._reject(reason, arsn, offset, detail, absolute=True)

        _pid, seq_ctrl, _length = _HEADER.unpack_from(packet)
        if seq_ctrl >> 14 != SEQ_UNSEGMENTED:
            return reject("malformed_packet", None, f"sequence flags {seq_ctrl >> 14:02b}, "
                                                    "uplink packets are unsegmented (11)")
        if len(packet) < MIN_TC_PACKET_BYTES:
            return reject("malformed_packet", None, f"{len(packet)} bytes, an uplink packet has at "
                                                    f"least {MIN_TC_PACKET_BYTES}")
        spi, arsn = SECURITY_HEADER.unpack_from(packet, PRIMARY_HEADER_LEN)
        if spi != self.spi:
            return reject("unknown_spi", arsn, f"SPI {spi}, this board knows {self.spi}")
        mac_at = len(packet) - PEC_LEN - MAC_LEN
        if not hmac.compare_digest(packet[mac_at:mac_at + MAC_LEN],
                                   compute_mac(self._key, packet[:mac_at])):
            return reject("mac", arsn, "MAC does not verify")
        if self.state_error:
            return reject("state_error", arsn, self.state_error)
        if arsn <= self._last_arsn:
            return reject("replay", arsn, f"ARSN {arsn} <= last accepted {self._last_arsn}")
        try:
            command, problem = decode_command(packet[PRIMARY_HEADER_LEN + SECURITY_HEADER_LEN:mac_at]), None
        except CommandError as e:
            command, problem = None, e
        try:
            self._persist(arsn)
        except OSError as e:
            # Not durable -> not executed. The number stays used in memory so that this packet
            # cannot run later in this boot; the ground resends with a new ARSN.
            self._last_arsn = arsn
            return reject("state_error", arsn, f"cannot persist the ARSN: {e}")
        self._last_arsn = arsn
        if problem is not None:
            return reject("unknown_command" if problem.unknown else "malformed_command", arsn,
                          str(problem))
        self.counters["accepted"] += 1
        return Accepted(arsn, command, offset)


def _crc_ok(buf, pos: int, total: int) -> bool:
    """PEC check: the CRC of the packet without its PEC equals the PEC."""
    body = memoryview(buf)[pos:pos + total - PEC_LEN]
    try:
        return crc16_ccitt(body) == _PEC.unpack_from(buf, pos + total - PEC_LEN)[0]
    finally:
        body.release()


# ---- source ------------------------------------------------------------------------------------

SOURCE_KINDS = ("auto", "file", "fifo", "serial")
#: Bytes taken per poll() at most.
DEFAULT_POLL_BYTES = 64 * 1024
_OFFSET = struct.Struct("<4sQQQ")
_OFFSET_MAGIC = b"EDUO"


class UplinkSource:
    """Non-blocking reader of the uplink: a regular file the ground appends to, a FIFO, or a
    serial device (raw 8N1). poll() -> the bytes available now (b"" when none).

    A file is read from a durable offset (offset_path: the file's identity and the offset of the
    bytes consumed, CRC-checked, atomic write + fsync); commit() moves it. A file replaced by
    another (a new inode) or cut shorter than the offset is read again from 0 (reset_count);
    the receiver refuses what it accepted before, as replays.
    """

    def __init__(self, path, *, offset_path=None, kind: str = "auto", baud: int = DEFAULT_BAUD,
                 poll_bytes: int = DEFAULT_POLL_BYTES):
        if kind not in SOURCE_KINDS:
            raise ValueError(f"uplink source kind must be one of {list(SOURCE_KINDS)}, got {kind!r}")
        self.path = Path(path)
        self.offset_path = None if offset_path is None else Path(offset_path)
        self.poll_bytes = int(poll_bytes)
        self.baud = baud
        self.reset_count = 0
        #: Why the offset file was not used (reading restarts at 0), None when it was or none.
        self.offset_problem: str | None = None
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._read = 0          # offset of the next byte to read (file)
        self._committed = 0     # durable offset (file)
        requested = kind
        if kind == "auto":
            try:
                mode = os.stat(self.path).st_mode
            except FileNotFoundError:
                mode = 0
            kind = "fifo" if stat.S_ISFIFO(mode) else "serial" if stat.S_ISCHR(mode) else "file"
        self.kind = kind
        if kind == "file":
            self._load_offset()
        elif kind == "fifo":
            if not stat.S_ISFIFO(os.stat(self.path).st_mode):
                raise ValueError(f"uplink FIFO {self.path} is not a FIFO (create it with mkfifo)")
            # O_NONBLOCK: opening does not wait for a writer, and reads never block.
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        else:
            code = _baud_code(baud)
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            try:
                if os.isatty(fd):
                    _configure_raw(fd, code)
                elif requested == "auto":
                    # a character device that is no terminal (a virtio-serial port of a radio): a
                    # byte stream like a FIFO, read without blocking, no line settings
                    self.kind = "stream"
                else:
                    raise ValueError(f"uplink serial device {self.path} is not a terminal device")
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd

    @property
    def offset(self) -> int:
        """File: offset of the next byte poll() reads."""
        return self._read

    def poll(self) -> bytes:
        """The bytes available now, at most poll_bytes; never blocks."""
        if self.kind == "file":
            return self._poll_file()
        try:
            return os.read(self._require_fd(), self.poll_bytes)
        except BlockingIOError:
            return b""

    def commit(self, held_back: int = 0) -> None:
        """File: make durable that everything read except the last `held_back` bytes (a packet
        the receiver still waits to complete: receiver.pending_bytes) is consumed."""
        if self.kind != "file" or self.offset_path is None or self._ident is None:
            return
        offset = max(0, self._read - int(held_back))
        if offset == self._committed:
            return
        payload = _OFFSET.pack(_OFFSET_MAGIC, self._ident[0], self._ident[1], offset)
        self.offset_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.offset_path, payload + struct.pack("<I", zlib.crc32(payload)))
        self._committed = offset

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- file ----------------------------------------------------------------------------------

    def _load_offset(self) -> None:
        if self.offset_path is None:
            return
        try:
            blob = self.offset_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            self.offset_problem = f"{self.offset_path}: cannot read ({e}); reading from 0"
            return
        n = _OFFSET.size
        if len(blob) != n + 4 or zlib.crc32(blob[:n]) != struct.unpack_from("<I", blob, n)[0]:
            self.offset_problem = f"{self.offset_path}: corrupt; reading from 0"
            return
        magic, dev, ino, offset = _OFFSET.unpack_from(blob)
        if magic != _OFFSET_MAGIC:
            self.offset_problem = f"{self.offset_path}: bad magic; reading from 0"
            return
        self._ident, self._read, self._committed = (dev, ino), offset, offset

    def _poll_file(self) -> bytes:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return b""
        ident = (st.st_dev, st.st_ino)
        if ident != self._ident or st.st_size < self._read:
            if self._ident is not None:
                self.reset_count += 1
            self.close()
            self._ident, self._read = ident, 0
        if st.st_size <= self._read:
            return b""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            except FileNotFoundError:
                return b""
            st_open = os.fstat(self._fd)
            if (st_open.st_dev, st_open.st_ino) != ident:
                self.close()  # replaced between stat and open: next poll
                return b""
        data = os.pread(self._fd, self.poll_bytes, self._read)
        self._read += len(data)
        return data

    def _require_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"uplink source {self.path} is closed")
        return self._fd


# ---- CLI hook (`edge keygen`) ------------------------------------------------------------------

def _keygen(args) -> int:
    import json
    try:
        key = generate_key()
        path = write_key(args.out, key, force=args.force)
    except FileExistsError:
        print(f"edge keygen: {args.out} exists (use --force to replace it)", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"edge keygen: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(json.dumps({"key_file": str(path), "fingerprint": key_fingerprint(key),
                      "mode": f"{KEY_FILE_MODE:04o}"}))
    return 0


def add_keygen_parser(subparsers):
    """`edge keygen --out FILE [--force]`: a new uplink key (32 random bytes, hex, mode 0600)."""
    p = subparsers.add_parser("keygen", help="new uplink authentication key (hex, file mode 0600)")
    p.add_argument("--out", required=True, metavar="FILE", help="key file to create")
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(func=_keygen)
    return p


__all__ = ["Accepted", "COMMAND_CODES", "COMMAND_NAMES", "Command", "CommandError",
           "DEFAULT_MAX_TC_PACKET_BYTES", "DEFAULT_SPI", "KEY_BYTES", "KeyFileError",
           "KeyFilePermissionWarning", "MAC_LEN", "REASONS", "Rejected", "TC_PACKET_ID", "UPLINK_APID",
           "UplinkReceiver", "UplinkSource", "add_keygen_parser", "check_key", "compute_mac",
           "decode_command", "generate_key", "key_fingerprint", "load_key", "write_key"]
