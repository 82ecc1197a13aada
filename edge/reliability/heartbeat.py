"""The worker -> supervisor liveness channel: fixed-size binary messages over a pipe.

One message is MESSAGE_BYTES = 16 bytes, little-endian (struct MESSAGE_FORMAT):

    offset  size  field
    0       1     magic      MAGIC (0xB7): a sanity check, the reader resynchronises on it
    1       1     kind       BEAT, READY, SAFE_MODE_REQUEST, STOPPING
    2       1     stage id   record.STAGES ids (0..10), then START, IDLE, SAFE, SCRUB, VLM_*; OTHER: unknown
    3       1     reserved   0
    4       4     frame id   u32, the frame being worked on (0: none)
    8       8     t_ns       the worker's time.monotonic_ns() (CLOCK_MONOTONIC: the same clock the
                             supervisor reads, so stage durations come from the worker's own stamps)

16 bytes is far below PIPE_BUF (4096 on Linux), so every write is atomic: messages never interleave
or split on the writer's side. The reader still copes with partial reads (it buffers the remainder).

Worker side: HeartbeatWriter(fd).beat(stage) never blocks -- the descriptor is O_NONBLOCK and a full
pipe (a supervisor that stopped reading) drops the beat and counts it -- and costs a few microseconds
(one struct.pack_into and one write). A writer is callable, so it is the FlightLoop's `heartbeat`.
Supervisor side: HeartbeatReader(fd).read(timeout) -> the complete messages that arrived.

Standard library only: the worker imports this before the model runtime.
"""
from __future__ import annotations

import errno
import os
import select
import struct
import time
from typing import NamedTuple

from edge.reliability.contract import parse_worker_args

MAGIC = 0xB7
MESSAGE_FORMAT = "<BBBBIQ"
MESSAGE_BYTES = struct.calcsize(MESSAGE_FORMAT)
assert MESSAGE_BYTES == 16
#: Bytes one read() asks for: many messages at once, bounded.
READ_CHUNK = 256 * MESSAGE_BYTES

# ---- kinds ------------------------------------------------------------------------------------------
BEAT = 1               # "I am in stage s" (every stage of every tile batch)
READY = 2              # start-up done (model loaded, buffers allocated): the loop begins
SAFE_MODE_REQUEST = 3  # the worker asks for safe mode (e.g. the scrubber cannot restore a region)
STOPPING = 4           # an orderly end is under way (final housekeeping, then exit 0)
KIND_NAMES = {BEAT: "beat", READY: "ready", SAFE_MODE_REQUEST: "safe_mode_request",
              STOPPING: "stopping"}

# ---- stages -----------------------------------------------------------------------------------------
#: The record's stage ids (edge.downlink.record.STAGES: housekeeping reports the same ids), written out
#: here so that the worker's first import stays free of numpy and cbor2 (a test checks they agree).
RECORD_STAGES = {"read": 0, "plan": 1, "preprocess": 2, "screen": 3, "infer": 4, "decode": 5,
                 "merge": 6, "record": 7, "journal": 8, "downlink": 9, "frame": 10}
STAGE_START = 32   # process started, loading the model (the supervisor's startup deadline applies)
STAGE_IDLE = 33    # spool empty, polling
STAGE_SAFE = 34    # safe mode: housekeeping and downlink only
STAGE_SCRUB = 35   # the memory scrubber's pass
# The on-board VLM (edge/vlm/service.py), beaten with the frame asked about: one-off setup (loading
# the model at its first question; a frame's conversion to the VLM's RGB image), one vision-encoder
# run, the prefill, and EVERY decoded token -- so the deadline that watches a long answer is one
# token step, never the whole answer (supervisor.py: LOAD_STAGES, SLOW_FIRST_STAGES).
STAGE_VLM_SETUP = 36
STAGE_VLM_VISION = 37
STAGE_VLM_PREFILL = 38
STAGE_VLM_DECODE = 39
STAGE_OTHER = 255  # a stage name this table does not know (a beat must never fail)
STAGES = dict(RECORD_STAGES, start=STAGE_START, idle=STAGE_IDLE, safe=STAGE_SAFE, scrub=STAGE_SCRUB,
              vlm_setup=STAGE_VLM_SETUP, vlm_vision=STAGE_VLM_VISION, vlm_prefill=STAGE_VLM_PREFILL,
              vlm_decode=STAGE_VLM_DECODE, other=STAGE_OTHER)
STAGE_NAMES = {v: k for k, v in STAGES.items()}

_STRUCT = struct.Struct(MESSAGE_FORMAT)


class Message(NamedTuple):
    kind: int
    stage: str          # stage name ("other" for an id this side does not know)
    frame_id: int
    t_ns: int           # the worker's monotonic clock, ns

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"kind_{self.kind}")


def encode(kind: int, stage: str, frame_id: int = 0, t_ns: int | None = None) -> bytes:
    """One message (for tests and tools; the writer packs in place)."""
    return _STRUCT.pack(MAGIC, kind, STAGES.get(stage, STAGE_OTHER), 0, frame_id & 0xFFFFFFFF,
                        time.monotonic_ns() if t_ns is None else t_ns)


class HeartbeatWriter:
    """Worker side. `beat(stage)` never blocks and never raises; a beat that does not fit in the pipe
    is dropped (counted in .dropped); a gone supervisor (EPIPE) is counted in .broken and sets
    .supervisor_lost. Callable: writer(stage) is writer.beat(stage)."""

    __slots__ = ("fd", "frame_id", "sent", "dropped", "broken", "supervisor_lost", "_buf", "_view")

    def __init__(self, fd: int):
        import fcntl
        self.fd = int(fd)
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self.frame_id = 0          # the frame beats are about when beat() is given none
        self.sent = self.dropped = self.broken = 0
        self.supervisor_lost = False
        self._buf = bytearray(MESSAGE_BYTES)
        self._view = memoryview(self._buf)

    @classmethod
    def from_env(cls, environ=os.environ) -> HeartbeatWriter | None:
        """The writer on the descriptor the supervisor named in the environment; None: unsupervised."""
        return cls.from_argv([], environ)

    @classmethod
    def from_argv(cls, argv: list[str], environ=os.environ) -> HeartbeatWriter | None:
        """The writer on ``--heartbeat-fd N`` of argv (else the environment); None: unsupervised."""
        fd = parse_worker_args(argv, environ).heartbeat_fd
        return None if fd is None else cls(fd)

    def send(self, kind: int, stage: str, frame_id: int | None = None) -> bool:
        """Send one message; False when it was dropped (pipe full or supervisor gone)."""
        _STRUCT.pack_into(self._buf, 0, MAGIC, kind, STAGES.get(stage, STAGE_OTHER), 0,
                          (self.frame_id if frame_id is None else frame_id) & 0xFFFFFFFF,
                          time.monotonic_ns())
        try:
            os.write(self.fd, self._view)   # < PIPE_BUF: all or nothing
        except BlockingIOError:
            self.dropped += 1
            return False
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.EBADF):
                self.broken += 1
                self.supervisor_lost = True
                return False
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def beat(self, stage: str, frame_id: int | None = None) -> bool:
        return self.send(BEAT, stage, frame_id)

    __call__ = beat

    def ready(self, stage: str = "idle") -> bool:
        return self.send(READY, stage)

    def request_safe_mode(self) -> bool:
        return self.send(SAFE_MODE_REQUEST, "safe")

    def stopping(self) -> bool:
        return self.send(STOPPING, "downlink")

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


class HeartbeatReader:
    """Supervisor side, on the pipe's read end. read(timeout) waits up to `timeout` seconds for data
    and returns the complete messages (possibly none); a partial message waits in the buffer for its
    rest. .eof: the write end is closed everywhere (the worker is gone). .bad_bytes: bytes skipped
    while resynchronising on MAGIC (never expected from a correct worker)."""

    def __init__(self, fd: int):
        import fcntl
        self.fd = int(fd)
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self._pending = bytearray()
        self._poll = select.poll()
        self._poll.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.eof = False
        self.received = 0
        self.bad_bytes = 0

    def read(self, timeout: float | None = 0.0) -> list[Message]:
        """Messages that arrived within `timeout` s (None: wait until some data or EOF). Returns at once
        when data is already there, and at once (empty) after EOF."""
        if self.eof:
            return []
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        if not self._poll.poll(ms):
            return []
        while True:   # drain what is there, without blocking
            try:
                chunk = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not chunk:
                self.eof = True
                break
            self._pending += chunk
            if len(chunk) < READ_CHUNK:
                break
        return self._parse()

    def _parse(self) -> list[Message]:
        out, buf, i = [], self._pending, 0
        while len(buf) - i >= MESSAGE_BYTES:
            if buf[i] != MAGIC:
                j = buf.find(MAGIC, i + 1)
                j = len(buf) if j < 0 else j
                self.bad_bytes += j - i
                i = j
                continue
            _magic, kind, stage, _reserved, frame_id, t_ns = _STRUCT.unpack_from(buf, i)
            out.append(Message(kind, STAGE_NAMES.get(stage, "other"), frame_id, t_ns))
            i += MESSAGE_BYTES
        del buf[:i]
        self.received += len(out)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self._poll.unregister(self.fd)
            except (KeyError, ValueError):
                pass
            os.close(self.fd)
            self.fd = -1


def make_pipe() -> tuple[HeartbeatReader, int]:
    """A fresh heartbeat pipe: (reader on the read end, write-end descriptor for the worker).
    Both ends are close-on-exec; the supervisor hands the write end to the worker with pass_fds."""
    r, w = os.pipe()
    return HeartbeatReader(r), w


__all__ = ["BEAT", "HeartbeatReader", "HeartbeatWriter", "KIND_NAMES", "MAGIC", "MESSAGE_BYTES",
           "MESSAGE_FORMAT", "Message", "READY", "RECORD_STAGES", "SAFE_MODE_REQUEST", "STAGES",
           "STAGE_IDLE", "STAGE_NAMES", "STAGE_OTHER", "STAGE_SAFE", "STAGE_SCRUB", "STAGE_START",
           "STOPPING", "encode", "make_pipe"]
