"""Supervisor, heartbeat and watchdog (edge/reliability/): one test per numbered requirement of
docs/reliability.md (SUP-0xx, named in each docstring). Workers are tests/fake_worker.py
driven by a plan; timeouts are tens to hundreds of ms."""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.reliability import contract, heartbeat as hb, watchdog as wdm
from edge.reliability.supervisor import (SUPERVISOR_DEFAULTS, JournalEventSink, RestartPolicy,
                                         StageDeadlines, Supervisor, read_restart_count,
                                         validate_settings)

FAKE = Path(__file__).with_name("fake_worker.py")
REPO = Path(__file__).resolve().parent.parent
#: Scheduling slack allowed on a loaded 2-core machine (the loop itself reacts within ms).
SLACK = 0.3
#: A supervised run that takes longer than this is a failed test, not a hung suite.
RUN_GUARD_S = 20.0

BASE = {"startup_s": 2.0, "stage_default_s": 1.0, "stage_floor_s": 0.5, "stage_min_samples": 3,
        "backoff_base_s": 0.05, "backoff_factor": 2.0, "backoff_cap_s": 1.0, "max_restarts": 3,
        "window_s": 30.0, "safe_mode_cooldown_s": 0.0, "stop_grace_s": 0.5,
        "pet_interval_s": 0.02, "timeout_s": 10.0}


class FakeWatchdog:
    """Records keepalive times (time.monotonic, the supervisor's clock) and the close."""

    hardware = True
    timeout_s = 10.0

    def __init__(self):
        self.keepalives: list[float] = []
        self.closed = False

    def keepalive(self):
        assert not self.closed
        self.keepalives.append(time.monotonic())

    def close(self):
        self.closed = True


class ListSink:
    def __init__(self):
        self.events: list[tuple[str, str]] = []

    def __call__(self, code, text):
        self.events.append((code, text))

    def codes(self):
        return [c for c, _ in self.events]


def make_cfg(tmp_path, **overrides) -> dict:
    values = dict(BASE, **overrides)
    sup = {k: v for k, v in values.items() if k in SUPERVISOR_DEFAULTS["supervisor"]}
    wd = {k: v for k, v in values.items() if k in SUPERVISOR_DEFAULTS["watchdog"]}
    return {"supervisor": sup, "watchdog": wd, "data": {"dir": str(tmp_path / "data")}}


def worker_cmd(tmp_path, plan, safe_plan="loop:safe:0.02") -> list[str]:
    return [sys.executable, "-S", str(FAKE), "--runs", str(tmp_path / "runs"), "--plan", plan,
            "--safe-plan", safe_plan]


def supervise(tmp_path, plan, safe_plan="loop:safe:0.02", *, watchdog=None, sink=None, **overrides):
    """Run a supervisor to its end; returns (supervisor, exit status, runs [(mode, pid)], watchdog)."""
    watchdog = FakeWatchdog() if watchdog is None else watchdog
    sink = ListSink() if sink is None else sink
    sup = Supervisor(make_cfg(tmp_path, **overrides), worker_cmd(tmp_path, plan, safe_plan),
                     watchdog=watchdog, event_sink=sink)
    guard = threading.Timer(RUN_GUARD_S, sup.request_stop)
    guard.start()
    try:
        t0 = time.monotonic()
        rc = sup.run()
    finally:
        guard.cancel()
    assert time.monotonic() - t0 < RUN_GUARD_S, "the supervised run did not end by itself"
    words = (tmp_path / "runs").read_text().split()
    return sup, rc, list(zip(words[0::2], map(int, words[1::2]))), watchdog


def timeline(sup, what):
    return [(t, d) for t, w, d in sup.timeline if w == what]


# ---- heartbeat ------------------------------------------------------------------------------------

def test_sup001_heartbeat_channel():
    """SUP-001: heartbeats are fixed-size (16-byte) binary messages over a pipe; the worker's beat()
    never blocks (a full pipe drops the beat and counts it) and costs microseconds; the supervisor's
    reader returns only complete messages across partial reads and resynchronises on garbage."""
    assert hb.MESSAGE_BYTES == 16 and hb.MESSAGE_BYTES <= select.PIPE_BUF
    r, w = os.pipe()
    writer, reader = hb.HeartbeatWriter(w), hb.HeartbeatReader(r)
    try:
        writer.frame_id = 7
        assert writer("infer") and writer.beat("merge", frame_id=9) and writer.ready()
        got = reader.read(1.0)
        assert [(m.kind, m.stage, m.frame_id) for m in got] == [
            (hb.BEAT, "infer", 7), (hb.BEAT, "merge", 9), (hb.READY, "idle", 7)]
        assert got[0].t_ns <= got[1].t_ns <= time.monotonic_ns()
        writer("no-such-stage")   # an unknown stage never fails the worker
        assert reader.read(1.0)[0].stage == "other"
        # nobody reads: the pipe fills, beats are dropped, none blocks
        t0 = time.perf_counter()
        n = 20000
        for _ in range(n):
            writer("infer")
        per_beat = (time.perf_counter() - t0) / n
        assert writer.dropped > 0 and writer.sent + writer.dropped == n + 4
        assert per_beat < 50e-6, f"{per_beat * 1e6:.1f} us per beat"
        while reader.read(0):
            pass
        # partial reads: half a message waits for its rest; garbage is skipped
        msg = hb.encode(hb.BEAT, "decode", 3)
        os.write(w, b"\x00\x01" + msg[:5])
        assert reader.read(0.05) == []
        os.write(w, msg[5:])
        (m,) = reader.read(0.05)
        assert (m.stage, m.frame_id) == ("decode", 3) and reader.bad_bytes == 2
        # the worker's side closed: EOF, reads return at once
        writer.close()
        assert reader.read(0.5) == [] and reader.eof
        t0 = time.monotonic()
        assert reader.read(1.0) == [] and time.monotonic() - t0 < 0.1
    finally:
        writer.close()
        reader.close()
    # the worker finds its descriptor in argv or the environment
    assert contract.parse_worker_args(["a", "--heartbeat-fd", "5", "--safe-mode", "b"], {}) == \
        contract.WorkerArgs(5, True, ["a", "b"])
    assert contract.parse_worker_args([], {contract.HEARTBEAT_FD_ENV: "6"}).heartbeat_fd == 6
    assert hb.HeartbeatWriter.from_env({}) is None


# ---- deadlines ------------------------------------------------------------------------------------

def test_sup002_deadline_derivation(tmp_path):
    """SUP-002: a stage's deadline is its configured override, else max(floor, factor x median of its
    last K measured durations) once it has min_samples of them, else the default; the first beat
    (and the "start" stage) has the startup deadline."""
    d = StageDeadlines(startup_s=30, default_s=5, floor_s=0.5, factor=3, samples=4, min_samples=3,
                       overrides={"merge": 2.5})
    assert d.deadline("start") == 30 and d.deadline("infer") == 5 and d.deadline("merge") == 2.5
    d.record("infer", 1.0)
    d.record("infer", 2.0)
    assert d.deadline("infer") == 5                     # 2 samples < min_samples
    d.record("infer", 0.4)
    assert d.deadline("infer") == pytest.approx(3 * 1.0)  # median(1, 2, 0.4) = 1
    for x in (0.1, 0.1, 0.1):                           # the oldest fall out of the last K = 4
        d.record("infer", x)
    assert d.deadline("infer") == 0.5                   # 3 x 0.1 < floor
    d.record("start", 99)                               # the startup deadline is never learned
    d.record("merge", 99)
    assert d.deadline("start") == 30 and d.deadline("merge") == 2.5
    assert StageDeadlines(startup_s=30, default_s=5, floor_s=0, factor=2, samples=8, min_samples=1,
                          overrides={"start": 7}).deadline("start") == 7
    snap = d.snapshot()
    assert snap["infer"]["samples"] == 4 and snap["infer"]["deadline_s"] == 0.5
    # backoff: base x factor^(n-1) capped, n = failures within the window; more than max -> storm
    p = RestartPolicy(base_s=0.5, factor=2, cap_s=3, max_restarts=3, window_s=10)
    assert [p.failure(t)[1:] for t in (0, 1, 2, 3)] == [(0.5, False), (1.0, False), (2.0, False),
                                                        (3.0, True)]
    assert p.failure(12.5) == (2, 1.0, False)           # t = 0, 1, 2 left the 10 s window
    # config checks name the key
    with pytest.raises(ValueError, match="supervisor.stage_factor"):
        validate_settings({"stage_factor": 0.5})
    with pytest.raises(ValueError, match="supervisor.stage_deadline_s.warp"):
        validate_settings({"stage_deadline_s": {"warp": 1.0}})
    with pytest.raises(ValueError, match="watchdog.pet_interval_s"):
        validate_settings({}, {"pet_interval_s": 40.0})
    # the end to end effect: stages learned from beats (60 ms apart) get factor x median, with floor
    sup, rc, runs, _ = supervise(tmp_path, "beat:6:0.06:preprocess,exit:0", stage_factor=4.0,
                                 stage_min_samples=3, stage_floor_s=0.05)
    assert rc == 0
    deadline = sup.deadlines.deadline("preprocess")
    assert 0.06 * 4 <= deadline <= (0.06 + SLACK) * 4, sup.deadlines.snapshot()


# ---- kills and restarts ---------------------------------------------------------------------------

def test_sup003_missed_deadline_kill_restart(tmp_path):
    """SUP-003: a worker that misses its stage deadline is killed (SIGKILL) and restarted within
    deadline + backoff; a stage that ends within its deadline is left alone."""
    sup, rc, runs, _ = supervise(
        tmp_path, "beat:5:0.02,sleep:decode:0.2,sleep:infer:30;beat:2:0.02,exit:0",
        stage_default_s=0.6, stage_deadline_s={"infer": 0.25}, backoff_base_s=0.1)
    assert rc == 0 and [m for m, _ in runs] == ["normal", "normal"]
    (t_kill, kill), = timeline(sup, "killed")
    assert kill["stage"] == "infer"
    overdue = t_kill - kill["since"]
    assert 0.25 <= overdue <= 0.25 + SLACK, overdue        # killed at its deadline, not before
    spawns = [t for t, _ in timeline(sup, "spawn")]
    assert 0.09 <= spawns[1] - t_kill <= 0.1 + SLACK        # restarted after the backoff (from the failure time, a hair before the kill is logged)
    assert sup.stats["deadline_kills"] == 1 and sup.stats["restarts"] == 1
    with pytest.raises(ProcessLookupError):                 # reaped, gone
        os.kill(runs[0][1], 0)


def test_sup004_sigstopped_worker_killed(tmp_path):
    """SUP-004: a worker that stops itself (SIGSTOP: alive, not beating) is killed at its deadline,
    reaped and restarted."""
    sup, rc, runs, _ = supervise(tmp_path, "beat:3:0.02,stop;beat:1:0.02,exit:0",
                                 stage_deadline_s={"infer": 0.2})
    assert rc == 0 and len(runs) == 2
    (t_kill, kill), = timeline(sup, "killed")
    assert t_kill - kill["since"] <= 0.2 + SLACK
    assert sup.last_restart["reason"] == "missed its deadline"
    with pytest.raises(ProcessLookupError):
        os.kill(runs[0][1], 0)


def test_sup005_crash_restart_backoff(tmp_path):
    """SUP-005: a worker that exits with a nonzero code or dies by a signal is restarted after an
    exponential backoff: base x factor^(n-1) for the n-th failure in the window, capped."""
    sink = ListSink()
    sup, rc, runs, _ = supervise(tmp_path, "beat:2:0.01,exit:1;signal:15;exit:7;beat:1:0.01,exit:0",
                                 sink=sink, backoff_base_s=0.1, backoff_factor=2.0, backoff_cap_s=0.3,
                                 max_restarts=5)
    assert rc == 0 and len(runs) == 4
    exits = [t for t, _ in timeline(sup, "exit")]
    spawns = [t for t, _ in timeline(sup, "spawn")]
    for i, want in enumerate((0.1, 0.2, 0.3)):              # 0.4 capped at 0.3
        gap = spawns[i + 1] - exits[i]
        assert want <= gap <= want + SLACK, (i, gap)
    texts = [t for c, t in sink.events if c == "worker_restart"]
    assert len(texts) == 3
    assert "exit 1" in texts[0] and "signal 15 (SIGTERM)" in texts[1] and "exit 7" in texts[2]
    assert "stage infer" in texts[0] and "restart in 0.10 s" in texts[0]
    assert sup.stats["crashes"] == 3 and not sup.safe_mode


def test_sup006_restart_storm_safe_mode_cooldown(tmp_path):
    """SUP-006: more than max_restarts failures within window_s -> safe mode (the worker restarted with
    --safe-mode, event safe_mode_entered); after the configured cool-down -> event safe_mode_left, the
    normal worker again, restart history cleared."""
    sink = ListSink()
    sup, rc, runs, _ = supervise(tmp_path, "exit:1;exit:1;exit:1;beat:3:0.02,exit:0",
                                 "loop:safe:0.02", sink=sink, max_restarts=2, backoff_base_s=0.02,
                                 safe_mode_cooldown_s=0.4)
    assert rc == 0
    assert [m for m, _ in runs] == ["normal"] * 3 + ["safe", "normal"]
    assert sink.codes() == ["worker_restart"] * 3 + ["safe_mode_entered", "safe_mode_left"]
    assert "3 failures within 30 s" in sink.events[3][1]
    assert "cool-down" in sink.events[4][1]
    (t_in, _), = timeline(sup, "safe_mode_entered")
    (t_out, _), = timeline(sup, "safe_mode_left")
    assert 0.4 <= t_out - t_in <= 0.4 + SLACK
    s = sup.stats
    assert s["safe_mode_entries"] == 1 and s["safe_mode_exits"] == 1 and not s["safe_mode"]
    assert s["restarts_in_window"] == 0                     # history cleared on leaving


def test_sup007_leave_safe_mode_on_command(tmp_path):
    """SUP-007: a safe-mode worker that exits with EXIT_LEAVE_SAFE_MODE (it received the authenticated
    command) -> event safe_mode_left, the normal worker again, restart history cleared."""
    sink = ListSink()
    sup, rc, runs, _ = supervise(tmp_path, "beat:1:0.01,exit:1;beat:2:0.02,exit:0",
                                 f"beat:3:0.02:safe,exit:{contract.EXIT_LEAVE_SAFE_MODE}",
                                 sink=sink, max_restarts=0)
    assert rc == 0 and [m for m, _ in runs] == ["normal", "safe", "normal"]
    assert sink.codes() == ["worker_restart", "safe_mode_entered", "safe_mode_left"]
    assert "command" in sink.events[2][1] and "EXIT_LEAVE_SAFE_MODE" in sink.events[2][1]
    assert sup.stats["restarts_in_window"] == 0 and not sup.safe_mode


@pytest.mark.parametrize("code", [contract.EXIT_CONFIG_ERROR, contract.EXIT_MODEL_ERROR])
def test_sup008_config_or_model_error_safe_mode_at_once(tmp_path, code):
    """SUP-008: a worker exit with EXIT_CONFIG_ERROR or EXIT_MODEL_ERROR -> safe mode at once, no
    restart loop (a bad config or model will not fix itself)."""
    sink = ListSink()
    sup, rc, runs, _ = supervise(tmp_path, f"exit:{code}", "beat:3:0.02:safe,exit:0", sink=sink,
                                 max_restarts=3)
    assert rc == 0 and [m for m, _ in runs] == ["normal", "safe"]
    assert sink.codes() == ["safe_mode_entered"]
    assert contract.EXIT_NAMES[code] in sink.events[0][1]
    assert sup.stats["restarts"] == 1 and sup.stats["crashes"] == 0


def test_sup009_events_in_journal(tmp_path):
    """SUP-009: supervisor events go into the journal as event records, written only while no worker
    holds the journal (after reaping, before the restart), with the stage, elapsed time and reason;
    the restart count is durable (state/restarts) for housekeeping."""
    from edge.downlink.journal import LOCK_NAME, Journal
    from edge.ground.records import decode_record
    from edge.sources import DurableCounter

    data = tmp_path / "data"
    (data / "journal").mkdir(parents=True)
    DurableCounter(data / "state" / "boot").set(5)          # the last worker took boot 4
    lock = data / "journal" / LOCK_NAME
    sink = JournalEventSink(data, capacity_bytes=1 << 20, segment_bytes=1 << 16)
    sup, rc, runs, _ = supervise(tmp_path, f"lock:{lock},beat:3:0.02,sleep:infer:30;"
                                           f"lock:{lock},beat:1:0.02,exit:{contract.EXIT_CONFIG_ERROR}",
                                 f"lock:{lock},beat:2:0.02:safe,exit:0", sink=sink,
                                 stage_deadline_s={"infer": 0.2})
    assert rc == 0 and len(runs) == 3
    assert sup.stats["event_errors"] == 0 and sup.stats["events_written"] == 2
    with Journal(data / "journal") as j:
        recs = [decode_record(r.payload) for r in j.pending()]
    assert [(r.kind, r.code, r.boot) for r in recs] == [("event", "worker_restart", 4),
                                                        ("event", "safe_mode_entered", 4)]
    text = recs[0].text
    assert "missed its deadline" in text and "stage infer" in text and "deadline 0.200 s" in text
    assert "EXIT_CONFIG_ERROR" in recs[1].text
    assert read_restart_count(data) == 2
    again = Supervisor(make_cfg(tmp_path), ["true"], watchdog=FakeWatchdog(), event_sink=ListSink())
    assert again.stats["restarts_total"] == 2


# ---- the watchdog -----------------------------------------------------------------------------------

class FakeWatchdogDriver:
    """Emulates a watchdog driver behind fcntl.ioctl for descriptors of one fake device file: records
    (fd, request, arg) and the time of each keepalive."""

    def __init__(self, path: Path, real_ioctl, *, keepalive_ioctl=True, max_timeout=60):
        self.path, self.real = path, real_ioctl
        self.calls: list[tuple[int, int, bytes]] = []
        self.keepalive_times: list[float] = []
        self.timeout = 30
        self.keepalive_ioctl = keepalive_ioctl
        self.max_timeout = max_timeout

    def _ours(self, fd) -> bool:
        try:
            return os.path.samefile(f"/proc/self/fd/{fd}", self.path)
        except OSError:
            return False

    def ioctl(self, fd, request, arg=0, mutate=True):
        if not self._ours(fd):
            return self.real(fd, request, arg, mutate)
        self.calls.append((fd, request, bytes(arg) if isinstance(arg, (bytes, bytearray)) else arg))
        if request == wdm.WDIOC_GETSUPPORT:
            arg[:] = struct.pack(wdm.WATCHDOG_INFO_FORMAT, wdm.WDIOF_SETTIMEOUT | wdm.WDIOF_MAGICCLOSE,
                                 1, b"fake-wdt")
        elif request == wdm.WDIOC_SETTIMEOUT:
            (want,) = struct.unpack("i", arg)
            if want > self.max_timeout:
                raise OSError(errno.EINVAL, "Invalid argument")
            self.timeout = want
            arg[:] = struct.pack("i", self.timeout)
        elif request == wdm.WDIOC_GETTIMEOUT:
            arg[:] = struct.pack("i", self.timeout)
        elif request == wdm.WDIOC_KEEPALIVE:
            if not self.keepalive_ioctl:
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
            self.keepalive_times.append(time.monotonic())
        else:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        return 0


@pytest.fixture
def fake_device(tmp_path, monkeypatch):
    path = tmp_path / "watchdog"
    path.write_bytes(b"")
    driver = FakeWatchdogDriver(path, fcntl.ioctl)
    monkeypatch.setattr(wdm.fcntl, "ioctl", driver.ioctl)
    return driver


def test_sup010_watchdog_petted_only_while_healthy(tmp_path, fake_device):
    """SUP-010: the watchdog is petted only while the worker is healthy (within its current stage's
    deadline): no keepalive once a hung worker is past its deadline; between the kill and the new
    worker's first beat, keepalives for at most the startup deadline; then again once it beats."""
    wd = wdm.HardwareWatchdog(str(fake_device.path), timeout_s=10)
    sup, rc, runs, _ = supervise(tmp_path, "beat:10:0.03,hang;beat:10:0.03,exit:0", watchdog=wd,
                                 startup_s=0.5, backoff_base_s=0.8, stage_deadline_s={"infer": 0.15},
                                 pet_interval_s=0.02)
    assert rc == 0 and len(runs) == 2
    pets = fake_device.keepalive_times
    (t_kill, kill), = timeline(sup, "killed")
    (t_first0, _), (t_first1, _) = timeline(sup, "first_beat")
    healthy_first = [t for t in pets if t_first0 <= t <= kill["since"]]
    assert len(healthy_first) >= 5                          # petted while the first worker beat
    late = [t for t in pets if kill["deadline_at"] + 0.005 < t < t_kill]
    assert late == []                                       # none once it was past its deadline
    gap = [t for t in pets if t_kill < t < t_first1]
    assert gap and max(gap) <= t_kill + 0.5 + 0.005          # startup deadline after the kill ...
    assert t_first1 - t_kill > 0.8                          # ... while the restart took longer
    assert any(t > t_first1 for t in pets)                  # petted again once the new one beats
    assert wd.closed and fake_device.path.read_bytes() == b"V"


def test_sup011_orderly_exit_magic_close(tmp_path):
    """SUP-011: the worker's EXIT_OK ends the supervisor with exit status 0 and the watchdog's magic
    close; a supervisor that fails leaves the watchdog armed (the reset is the remedy)."""
    sup, rc, runs, wd = supervise(tmp_path, "beat:3:0.02,exit:0")
    assert rc == contract.EXIT_OK and wd.closed and len(runs) == 1

    class Boom(BaseException):
        pass

    def sink(code, text):
        raise Boom

    wd2 = FakeWatchdog()
    (tmp_path / "b").mkdir()
    sup2 = Supervisor(make_cfg(tmp_path / "b"), worker_cmd(tmp_path / "b", "exit:1;exit:0"), watchdog=wd2,
                      event_sink=sink)
    with pytest.raises(Boom):
        sup2.run()
    assert not wd2.closed


def test_sup012_hardware_watchdog_device_api(tmp_path, fake_device):
    """SUP-012: the hardware watchdog speaks the Linux watchdog API: ioctl numbers equal the kernel's
    (WDIOC_SETTIMEOUT 0xC0045706, WDIOC_GETTIMEOUT 0x80045707, WDIOC_KEEPALIVE 0x80045705), the
    timeout is set and read back on open, keepalive is WDIOC_KEEPALIVE (a write when the driver lacks
    it), and close() writes the magic 'V'."""
    assert (wdm.WDIOC_SETTIMEOUT, wdm.WDIOC_GETTIMEOUT, wdm.WDIOC_KEEPALIVE, wdm.WDIOC_GETSUPPORT) == \
        (0xC0045706, 0x80045707, 0x80045705, 0x80285700)
    wd = wdm.HardwareWatchdog(str(fake_device.path), timeout_s=12)
    fd = wd._fd
    assert wd.hardware and wd.timeout_s == 12 and wd.identity == "fake-wdt"
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC    # not inherited by the worker
    wd.keepalive()
    wd.keepalive()
    assert [(f, req) for f, req, _ in fake_device.calls] == [
        (fd, wdm.WDIOC_GETSUPPORT), (fd, wdm.WDIOC_SETTIMEOUT), (fd, wdm.WDIOC_GETTIMEOUT),
        (fd, wdm.WDIOC_KEEPALIVE), (fd, wdm.WDIOC_KEEPALIVE)]
    assert fake_device.calls[1][2] == struct.pack("i", 12)
    assert fake_device.path.read_bytes() == b""             # keepalives by ioctl: nothing written
    wd.close()
    assert wd.closed and fake_device.path.read_bytes() == b"V"
    # a driver without WDIOC_KEEPALIVE: keepalive by write; an out-of-range timeout keeps the driver's
    fake_device.keepalive_ioctl = False
    fake_device.path.write_bytes(b"")
    wd = wdm.HardwareWatchdog(str(fake_device.path), timeout_s=600)
    assert wd.timeout_s == 12 and "WDIOC_SETTIMEOUT" in wd.timeout_error
    wd.keepalive()
    wd.keepalive()
    wd.close()
    assert fake_device.path.read_bytes() == b"\0\0V"
    wd = wdm.open_watchdog(str(fake_device.path), 5)
    assert isinstance(wd, wdm.HardwareWatchdog)
    wd.close()


def test_sup013_software_fallback(tmp_path, caplog):
    """SUP-013: without a watchdog device the supervisor uses a software watchdog and says so (a
    warning, .hardware False with the reason, a watchdog event); not petted within its timeout, it
    calls on_expire (default os.abort) once."""
    expired = threading.Event()
    missing = tmp_path / "no-such-watchdog"
    with caplog.at_level(logging.WARNING, logger="edge.reliability.watchdog"):
        wd = wdm.open_watchdog(str(missing), 0.2, on_expire=expired.set)
    try:
        assert isinstance(wd, wdm.SoftwareWatchdog) and wd.hardware is False
        assert str(missing) in wd.reason and "No such file" in wd.reason
        assert "NO HARDWARE WATCHDOG" in caplog.text
        for _ in range(6):                                  # petted: it stays quiet
            time.sleep(0.05)
            wd.keepalive()
        assert not expired.is_set()
        t0 = time.monotonic()
        assert expired.wait(2.0) and wd.expired
        assert 0.1 <= time.monotonic() - t0 <= 0.2 + SLACK
    finally:
        wd.close()
    # the supervisor reports the fallback as an event
    sink = ListSink()
    wd = wdm.open_watchdog(str(missing), 5.0)
    try:
        _, rc, _, _ = supervise(tmp_path, "beat:2:0.02,exit:0", watchdog=wd, sink=sink)
    finally:
        wd.close()
    assert rc == 0 and sink.codes() == ["watchdog"]
    assert "software fallback" in sink.events[0][1] and str(missing) in sink.events[0][1]
    # the default on_expire aborts the process (here a child)
    code = ("import time; from edge.reliability.watchdog import SoftwareWatchdog; "
            "SoftwareWatchdog(0.1); time.sleep(5)")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=30)
    assert p.returncode == -6 and b"expiring" in p.stderr


def test_sup014_worker_requests_safe_mode(tmp_path):
    """SUP-014: a worker's SAFE_MODE_REQUEST (e.g. an unrecoverable scrub error) -> the worker is
    stopped and restarted in safe mode; not counted as a failure."""
    sink = ListSink()
    sup, rc, runs, _ = supervise(tmp_path, "beat:3:0.02,safe_request", "beat:2:0.02:safe,exit:0",
                                 sink=sink)
    assert rc == 0 and [m for m, _ in runs] == ["normal", "safe"]
    assert sink.codes() == ["safe_mode_entered"] and "asked" in sink.events[0][1]
    assert sup.stats["restarts"] == 0


def test_sup015_import_light_and_stage_ids():
    """SUP-015: the supervisor imports no model runtime and no numpy (the journal sink loads them when
    it writes); the worker's heartbeat module is standard library only; heartbeat stage ids are the
    record's (edge.downlink.record.STAGES)."""
    code = ("import sys, edge.reliability.supervisor, edge.reliability.watchdog; "
            "print(sorted(m for m in ('numpy', 'cbor2', 'onnxruntime', 'ai_edge_litert') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.strip() == "[]"
    from edge.downlink import record as rec
    assert hb.RECORD_STAGES == rec.STAGES
    assert set(hb.STAGES) >= set(rec.STAGES) | {"start", "idle", "safe", "scrub"}
    assert len(set(hb.STAGES.values())) == len(hb.STAGES)


def test_sup016_restart_and_commanded_safe_mode(tmp_path):
    """SUP-016: EXIT_RESTART (an uplinked config change was accepted) starts the worker again at once
    and is not a failure (no backoff, not counted); EXIT_ENTER_SAFE_MODE (commanded, or a protected
    block that could not be restored) -> safe mode at once."""
    sink = ListSink()
    sup, rc, runs, _ = supervise(tmp_path, f"exit:{contract.EXIT_RESTART};exit:{contract.EXIT_RESTART};"
                                           f"exit:{contract.EXIT_ENTER_SAFE_MODE}",
                                 "beat:2:0.02:safe,exit:0", sink=sink, max_restarts=1,
                                 backoff_base_s=5.0)
    assert rc == 0 and [m for m, _ in runs] == ["normal", "normal", "normal", "safe"]
    spawns = [t for t, _ in timeline(sup, "spawn")]
    assert spawns[2] - spawns[0] < 2.0          # no 5 s backoff: the restarts were not failures
    assert sup.stats["crashes"] == 0 and sup.stats["deadline_kills"] == 0
    assert sink.codes() == ["safe_mode_entered"] and "commanded" in sink.events[0][1]
