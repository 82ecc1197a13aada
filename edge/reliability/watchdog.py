"""The watchdog the supervisor pets: the Linux watchdog API, or a software fallback that says so.

Linux watchdog API (Documentation/watchdog/watchdog-api.rst, include/uapi/linux/watchdog.h): opening
/dev/watchdog arms the timer; every keepalive (the WDIOC_KEEPALIVE ioctl, or any write) restarts it; if
it runs out the board resets. An orderly close writes the magic character 'V' first, which disarms the
driver (unless the kernel is built with CONFIG_WATCHDOG_NOWAYOUT, which a flight image may well want);
a process that dies without it leaves the timer running, so a crashed or hung supervisor ends in a
reset -- the point of the exercise.

Without a device (a dev machine, a container, a board whose driver did not load) SoftwareWatchdog is a
daemon thread with the same interface: not petted within its timeout, it logs and calls on_expire
(default os.abort(): the process dies and init, or the next supervisor layer, restarts it). It guards
a supervisor loop that stops petting; it cannot guard a kernel hang, or a thread stuck in C code that
holds the GIL. It says so loudly: a warning in the log and `.hardware = False`, `.reason`.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import time

log = logging.getLogger("edge.reliability.watchdog")

DEFAULT_DEVICE = "/dev/watchdog"
MAGIC_CLOSE = b"V"

# ---- ioctl numbers, computed as <asm-generic/ioctl.h> does (x86, arm, arm64, riscv; PowerPC, MIPS,
# SPARC and Alpha use another bit layout and are not flight targets here) ----------------------------
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS, _IOC_DIRBITS = 8, 8, 14, 2
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    assert 0 <= size < (1 << _IOC_SIZEBITS)
    return ((direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT)
            | (size << _IOC_SIZESHIFT))


def _IOR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ, type_, nr, size)


def _IOWR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


_SIZEOF_INT = struct.calcsize("i")
#: struct watchdog_info { __u32 options; __u32 firmware_version; __u8 identity[32]; }
WATCHDOG_INFO_FORMAT = "=II32s"
_SIZEOF_WATCHDOG_INFO = struct.calcsize(WATCHDOG_INFO_FORMAT)   # 40

WATCHDOG_IOCTL_BASE = ord("W")                                          # <linux/watchdog.h>
WDIOC_GETSUPPORT = _IOR(WATCHDOG_IOCTL_BASE, 0, _SIZEOF_WATCHDOG_INFO)  # _IOR('W', 0, struct watchdog_info)
WDIOC_KEEPALIVE = _IOR(WATCHDOG_IOCTL_BASE, 5, _SIZEOF_INT)             # _IOR('W', 5, int)
WDIOC_SETTIMEOUT = _IOWR(WATCHDOG_IOCTL_BASE, 6, _SIZEOF_INT)           # _IOWR('W', 6, int)
WDIOC_GETTIMEOUT = _IOR(WATCHDOG_IOCTL_BASE, 7, _SIZEOF_INT)            # _IOR('W', 7, int)
#: watchdog_info.options bits used here
WDIOF_SETTIMEOUT = 0x0080
WDIOF_MAGICCLOSE = 0x0100
WDIOF_KEEPALIVEPING = 0x8000


class HardwareWatchdog:
    """/dev/watchdog (or another watchdog device node). Opening arms it; keepalive() pets it; close()
    disarms it with the magic close. `timeout_s`: what the driver reports after WDIOC_SETTIMEOUT
    (drivers round to what the hardware can do)."""

    hardware = True
    reason = None

    def __init__(self, path: str = DEFAULT_DEVICE, timeout_s: float | None = None):
        self.path = str(path)
        self.keepalives = 0
        self.identity = None
        self.options = 0
        self._keepalive_by_write = False
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)   # arms the timer
        self.timeout_error = None
        try:
            if not self._query_support():
                # a regular file or another character device (a wrong path, /dev/null) opens too: it
                # must not pass for a hardware watchdog; the Linux watchdog core answers GETSUPPORT
                # for every driver
                os.close(self._fd)
                self._fd = None
                raise OSError(errno.ENOTTY, "not a watchdog device (no answer to WDIOC_GETSUPPORT)")
            if timeout_s is not None:
                try:
                    self.set_timeout(timeout_s)
                except OSError as e:   # out of this hardware's range: keep the driver's own timeout
                    self.timeout_error = f"WDIOC_SETTIMEOUT {timeout_s}: {e.strerror or e}"
                    log.warning("watchdog %s: %s; keeping the driver's timeout", self.path,
                                self.timeout_error)
            self.timeout_s = self.get_timeout()
        except BaseException:
            # do not leave a half-set-up device armed behind an exception: disarm and go
            self._magic_close()
            raise
        log.info("watchdog %s (%s): armed, timeout %s s", self.path, self.identity or "unknown driver",
                 self.timeout_s)

    def _query_support(self) -> bool:
        buf = bytearray(_SIZEOF_WATCHDOG_INFO)
        try:
            fcntl.ioctl(self._fd, WDIOC_GETSUPPORT, buf, True)
        except OSError as e:  # optional for drivers: go on without it
            log.debug("watchdog %s: WDIOC_GETSUPPORT: %s", self.path, e)
            return False
        self.options, _fw, ident = struct.unpack(WATCHDOG_INFO_FORMAT, buf)
        self.identity = ident.split(b"\0", 1)[0].decode("ascii", "replace") or None
        return True

    def set_timeout(self, timeout_s: float) -> int:
        """WDIOC_SETTIMEOUT (whole seconds, at least 1); returns what the driver set."""
        buf = bytearray(struct.pack("i", max(1, int(round(timeout_s)))))
        fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, buf, True)
        return struct.unpack("i", buf)[0]

    def get_timeout(self) -> int | None:
        buf = bytearray(_SIZEOF_INT)
        try:
            fcntl.ioctl(self._fd, WDIOC_GETTIMEOUT, buf, True)
        except OSError as e:
            log.debug("watchdog %s: WDIOC_GETTIMEOUT: %s", self.path, e)
            return None
        return struct.unpack("i", buf)[0]

    def keepalive(self) -> None:
        """Pet the watchdog: WDIOC_KEEPALIVE, or a write for drivers without that ioctl."""
        if self._fd is None:
            raise ValueError(f"watchdog {self.path} is closed")
        if not self._keepalive_by_write:
            try:
                fcntl.ioctl(self._fd, WDIOC_KEEPALIVE, bytearray(_SIZEOF_INT), True)
                self.keepalives += 1
                return
            except OSError as e:
                if e.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                log.info("watchdog %s: no WDIOC_KEEPALIVE (%s): keepalive by write", self.path, e)
                self._keepalive_by_write = True
        os.write(self._fd, b"\0")
        self.keepalives += 1

    def _magic_close(self) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, MAGIC_CLOSE)
        finally:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Orderly exit: the magic 'V', then close -- the driver disarms (unless NOWAYOUT)."""
        if self._fd is not None:
            self._magic_close()
            log.info("watchdog %s: magic close, disarmed", self.path)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __repr__(self) -> str:
        return f"HardwareWatchdog({self.path!r}, timeout_s={self.timeout_s})"


class SoftwareWatchdog:
    """A daemon thread standing in for a missing device: not petted within timeout_s, it logs
    (critical) and calls on_expire once (default os.abort()). close() disarms it."""

    hardware = False

    def __init__(self, timeout_s: float, on_expire=None, *, reason: str = "no hardware watchdog",
                 clock=time.monotonic):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.reason = reason
        self.on_expire = os.abort if on_expire is None else on_expire
        self.keepalives = 0
        self.expired = False
        self._clock = clock
        self._last = clock()
        self._stop = threading.Event()
        self._pet = threading.Event()
        log.warning("NO HARDWARE WATCHDOG: %s -- software fallback (timeout %.3g s): a hung kernel or "
                    "a GIL-holding hang will not reset this board", reason, self.timeout_s)
        self._thread = threading.Thread(target=self._run, name="software-watchdog", daemon=True)
        self._thread.start()

    def keepalive(self) -> None:
        if self._stop.is_set():
            raise ValueError("software watchdog is closed")
        self._last = self._clock()
        self.keepalives += 1
        self._pet.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            left = self._last + self.timeout_s - self._clock()
            if left <= 0:
                self.expired = True
                log.critical("software watchdog: not petted for %.3g s -- expiring", self.timeout_s)
                self._stop.set()
                self.on_expire()
                return
            self._pet.wait(min(left, self.timeout_s))
            self._pet.clear()

    def close(self) -> None:
        """Disarm (the orderly-exit counterpart of the magic close)."""
        self._stop.set()
        self._pet.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def __repr__(self) -> str:
        return f"SoftwareWatchdog(timeout_s={self.timeout_s}, reason={self.reason!r})"


def open_watchdog(path: str | None = DEFAULT_DEVICE, timeout_s: float = 30.0, *, on_expire=None):
    """The hardware watchdog at `path` if it opens (and takes its timeout), else a SoftwareWatchdog
    whose .reason says why (path None or "": the software one by choice)."""
    if not path:
        return SoftwareWatchdog(timeout_s, on_expire, reason="no watchdog device configured")
    try:
        return HardwareWatchdog(path, timeout_s)
    except OSError as e:
        reason = f"{path}: {e.strerror or e}"
    return SoftwareWatchdog(timeout_s, on_expire, reason=reason)


__all__ = ["DEFAULT_DEVICE", "HardwareWatchdog", "MAGIC_CLOSE", "SoftwareWatchdog", "WDIOC_GETSUPPORT",
           "WDIOC_GETTIMEOUT", "WDIOC_KEEPALIVE", "WDIOC_SETTIMEOUT", "WDIOF_MAGICCLOSE",
           "WDIOF_SETTIMEOUT", "open_watchdog"]
