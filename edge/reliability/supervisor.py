"""The supervisor: runs the flight loop as a worker process and keeps it alive, or in safe mode.

    worker --heartbeat pipe--> Supervisor --keepalive--> watchdog (/dev/watchdog or software)
                                   |  kill / restart / safe mode
                                   +--events--> journal (only while no worker holds its lock)

Health, as in F Prime's Svc/Health: the worker reports each stage it enters (heartbeat.py); each stage
has a deadline (StageDeadlines: a configured override, else max(floor, factor x median of the stage's
last K measured durations) once it has min_samples, else a default; the time to the first beat has the
startup deadline). The watchdog is stroked only while the worker is within its current deadline, so a
hung supervisor -- or a worker missing deadlines without the supervisor acting -- ends in a reset.
Between a failure and the restarted worker's first beat the supervisor keeps petting for at most the
startup deadline.

Decisions (the exit codes are in contract.py):
    missed deadline, nonzero exit, death by a signal  -> SIGKILL (a SIGSTOPped worker too), reap, event
        worker_restart, restart after an exponential backoff (base x factor^(n-1), capped)
    more than max_restarts failures within window_s   -> safe mode: the worker runs with --safe-mode
        (no inference; housekeeping and downlink continue), event safe_mode_entered
    EXIT_CONFIG_ERROR / EXIT_MODEL_ERROR               -> safe mode at once (no restart storm)
    a SAFE_MODE_REQUEST message                        -> the worker is stopped, safe mode
    safe mode: EXIT_LEAVE_SAFE_MODE, or the cool-down  -> event safe_mode_left, the normal worker again,
        restart history cleared
    EXIT_OK                                            -> the supervisor exits 0, magic close

Events go to `event_sink(code, text)` only while no worker runs (after reaping, before the next start):
the journal has a single writer. The total restart count is a durable counter (data_dir/state/restarts)
for housekeeping's `restarts`.

Import-light: standard library at import; the journal sink loads edge.downlink when it writes.
"""
from __future__ import annotations

import collections
import copy
import logging
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from edge.reliability import heartbeat as hb
from edge.reliability.contract import (EXIT_ENTER_SAFE_MODE, EXIT_RESTART,
                                      EXIT_LEAVE_SAFE_MODE, EXIT_OK, EXITS_TO_SAFE_MODE,
                                       HEARTBEAT_FD_ENV, HEARTBEAT_FD_FLAG, SAFE_MODE_FLAG,
                                       describe_exit)

log = logging.getLogger("edge.reliability.supervisor")

#: The config sections the supervisor reads ([supervisor] and [watchdog]), with their defaults.
SUPERVISOR_DEFAULTS: dict = {
    "supervisor": {
        "startup_s": 60.0,             # start -> first beat, and the "start" stage (imports, model load)
        "stage_default_s": 10.0,       # a stage's deadline until it has stage_min_samples measurements
        "stage_floor_s": 1.0,          # a derived deadline is never shorter
        "stage_factor": 4.0,           # derived deadline = factor x median of the recent durations
        "stage_samples": 64,           # K: the recent durations kept per stage
        "stage_min_samples": 8,        # measurements before a stage's deadline is derived
        "stage_deadline_s": {},        # per-stage overrides {stage name: seconds}
        "backoff_base_s": 0.5,         # first restart's delay
        "backoff_factor": 2.0,         # each further failure within window_s multiplies it
        "backoff_cap_s": 30.0,         # longest delay
        "max_restarts": 3,             # more failures than this within window_s -> safe mode
        "window_s": 600.0,
        "safe_mode_cooldown_s": 3600.0,  # safe mode ends by itself after this (0: only on command)
        "stop_grace_s": 2.0,           # SIGTERM -> SIGKILL when the supervisor stops a worker itself
    },
    "watchdog": {
        "device": "/dev/watchdog",     # "": software fallback by choice
        "timeout_s": 30.0,             # WDIOC_SETTIMEOUT (whole seconds on hardware)
        "pet_interval_s": 1.0,         # keepalives at most this often (while the worker is healthy)
    },
}

RESTARTS_STATE_NAME = "restarts"
#: Events waiting for a moment without a worker; beyond this the oldest go (counted).
MAX_PENDING_EVENTS = 64
#: The stage whose deadline is the startup deadline (a worker beats it before loading the model).
START_STAGE = "start"
#: One-off stages in the middle of a run -- the on-board VLM loading at its first question, a frame's
#: conversion to the VLM's image: always the startup deadline, never learned (a learned median of the
#: conversions would kill the next worker's model load).
LOAD_STAGES = frozenset({"vlm_setup"})
#: Stages that run once per VLM answer and take seconds on a flight board (a vision-encoder run, the
#: prefill of a few hundred tokens): until they have min_samples measurements their deadline is
#: max(default, startup) instead of the default. A decoded token ("vlm_decode") is an ordinary
#: stage: beaten per token, its learned deadline is a token step, not the whole answer.
SLOW_FIRST_STAGES = frozenset({"vlm_vision", "vlm_prefill"})


# ---- settings -------------------------------------------------------------------------------------

def _section(cfg, name: str) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, Mapping):
        value = cfg.get(name)
    else:
        value = getattr(cfg, name, None)
    return dict(value or {})


def validate_settings(supervisor: Mapping | None = None, watchdog: Mapping | None = None) -> dict:
    """The [supervisor] and [watchdog] sections over SUPERVISOR_DEFAULTS, checked; ConfigError (from
    edge.config) names the dotted key. Returns {"supervisor": {...}, "watchdog": {...}}."""
    from edge.config import ConfigError, _int, _real, _text

    out = copy.deepcopy(SUPERVISOR_DEFAULTS)
    for name, given in (("supervisor", supervisor), ("watchdog", watchdog)):
        for key, value in dict(given or {}).items():
            if key not in out[name]:
                raise ConfigError(f"{name}.{key}: unknown key; known: {list(out[name])}")
            out[name][key] = value
    s, w = out["supervisor"], out["watchdog"]
    for key in ("startup_s", "stage_default_s", "window_s"):
        _real(s[key], f"supervisor.{key}", 1e-3, 1e6)
    _real(s["stage_floor_s"], "supervisor.stage_floor_s", 0, 1e6)
    _real(s["stage_factor"], "supervisor.stage_factor", 1, 1000)
    _int(s["stage_samples"], "supervisor.stage_samples", 1, 100_000)
    _int(s["stage_min_samples"], "supervisor.stage_min_samples", 1, s["stage_samples"])
    if not isinstance(s["stage_deadline_s"], Mapping):
        raise ConfigError(f"supervisor.stage_deadline_s: must be a table {{stage = seconds}}, "
                          f"got {s['stage_deadline_s']!r}")
    for stage, seconds in s["stage_deadline_s"].items():
        if stage not in hb.STAGES:
            raise ConfigError(f"supervisor.stage_deadline_s.{stage}: unknown stage; known: "
                              f"{list(hb.STAGES)}")
        _real(seconds, f"supervisor.stage_deadline_s.{stage}", 1e-3, 1e6)
    _real(s["backoff_base_s"], "supervisor.backoff_base_s", 0, 1e6)
    _real(s["backoff_factor"], "supervisor.backoff_factor", 1, 100)
    _real(s["backoff_cap_s"], "supervisor.backoff_cap_s", 0, 1e6)
    _int(s["max_restarts"], "supervisor.max_restarts", 0, 1_000_000)
    _real(s["safe_mode_cooldown_s"], "supervisor.safe_mode_cooldown_s", 0, 1e9)
    _real(s["stop_grace_s"], "supervisor.stop_grace_s", 0, 3600)
    if w["device"] != "":
        _text(w["device"], "watchdog.device")
    _real(w["timeout_s"], "watchdog.timeout_s", 1e-3, 1e6)
    _real(w["pet_interval_s"], "watchdog.pet_interval_s", 1e-3, 1e6)
    if w["pet_interval_s"] >= w["timeout_s"]:
        raise ConfigError(f"watchdog.pet_interval_s: must be shorter than watchdog.timeout_s "
                          f"({w['timeout_s']}), got {w['pet_interval_s']}")
    return out


# ---- deadlines ------------------------------------------------------------------------------------

class StageDeadlines:
    """Per-stage deadlines: an override, else max(floor_s, factor x median(last `samples` durations))
    once a stage has `min_samples`, else `default_s`. The "start" stage (and the time to the first
    beat) and the LOAD_STAGES have `startup_s`, unless overridden; SLOW_FIRST_STAGES have
    max(default_s, startup_s) until learned."""

    def __init__(self, *, startup_s: float, default_s: float, floor_s: float, factor: float,
                 samples: int, min_samples: int, overrides: Mapping | None = None):
        self.startup_s = float(startup_s)
        self.default_s = float(default_s)
        self.floor_s = float(floor_s)
        self.factor = float(factor)
        self.samples = int(samples)
        self.min_samples = int(min_samples)
        self.overrides = {k: float(v) for k, v in dict(overrides or {}).items()}
        if START_STAGE in self.overrides:
            self.startup_s = self.overrides[START_STAGE]
        self._durations: dict[str, collections.deque] = {}
        self._cache: dict[str, float] = {}

    @classmethod
    def from_settings(cls, s: Mapping) -> StageDeadlines:
        return cls(startup_s=s["startup_s"], default_s=s["stage_default_s"], floor_s=s["stage_floor_s"],
                   factor=s["stage_factor"], samples=s["stage_samples"],
                   min_samples=s["stage_min_samples"], overrides=s["stage_deadline_s"])

    def record(self, stage: str, seconds: float) -> None:
        """One measured duration of `stage` (from its beat to the next beat)."""
        if stage == START_STAGE or stage in LOAD_STAGES or seconds < 0:
            return
        ring = self._durations.get(stage)
        if ring is None:
            ring = self._durations[stage] = collections.deque(maxlen=self.samples)
        ring.append(float(seconds))
        self._cache.pop(stage, None)

    def deadline(self, stage: str) -> float:
        """Seconds a worker may stay in `stage` before its next beat."""
        d = self._cache.get(stage)
        if d is None:
            d = self._cache[stage] = self._derive(stage)
        return d

    def _derive(self, stage: str) -> float:
        if stage in self.overrides:
            return self.overrides[stage]
        if stage == START_STAGE or stage in LOAD_STAGES:
            return self.startup_s
        ring = self._durations.get(stage)
        if ring is None or len(ring) < self.min_samples:
            if stage in SLOW_FIRST_STAGES:
                return max(self.default_s, self.startup_s)
            return self.default_s
        return max(self.floor_s, self.factor * statistics.median(ring))

    def snapshot(self) -> dict:
        """{stage: {"deadline_s", "samples", "median_s"}} for the stages seen or configured."""
        out = {}
        for stage in sorted(set(self._durations) | set(self.overrides) | {START_STAGE}):
            ring = self._durations.get(stage, ())
            out[stage] = {"deadline_s": self.deadline(stage), "samples": len(ring),
                          "median_s": statistics.median(ring) if ring else None}
        return out


class RestartPolicy:
    """Failure history within a sliding window: backoff = min(cap, base x factor^(n-1)) for the n-th
    failure in the window; more than max_restarts in the window -> safe mode."""

    def __init__(self, *, base_s: float, factor: float, cap_s: float, max_restarts: int,
                 window_s: float):
        self.base_s, self.factor, self.cap_s = float(base_s), float(factor), float(cap_s)
        self.max_restarts, self.window_s = int(max_restarts), float(window_s)
        self._times: collections.deque = collections.deque()

    @classmethod
    def from_settings(cls, s: Mapping) -> RestartPolicy:
        return cls(base_s=s["backoff_base_s"], factor=s["backoff_factor"], cap_s=s["backoff_cap_s"],
                   max_restarts=s["max_restarts"], window_s=s["window_s"])

    def _expire(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()

    def failure(self, now: float) -> tuple[int, float, bool]:
        """Record a failure at `now`: (failures in the window, backoff s, storm: go to safe mode)."""
        self._expire(now)
        self._times.append(now)
        n = len(self._times)
        delay = min(self.cap_s, self.base_s * self.factor ** (n - 1))
        return n, delay, n > self.max_restarts

    def in_window(self, now: float) -> int:
        self._expire(now)
        return len(self._times)

    def reset(self) -> None:
        self._times.clear()


# ---- events ---------------------------------------------------------------------------------------

class JournalEventSink:
    """Writes supervisor events into the flight journal (data_dir/journal) as event records: open (the
    single-writer lock), append, sync, close. Call it only while no worker runs. The boot number is
    the last worker's (the boot counter's value less one: FlightLoop takes it at start), read without
    incrementing."""

    def __init__(self, data_dir, *, capacity_bytes: int | None = None, segment_bytes: int | None = None):
        self.data_dir = Path(data_dir)
        # open with the worker's sizes: a smaller capacity would evict on open
        self._journal_kwargs = {k: v for k, v in (("capacity_bytes", capacity_bytes),
                                                  ("segment_bytes", segment_bytes)) if v is not None}

    @classmethod
    def from_config(cls, cfg) -> JournalEventSink:
        dl = _section(cfg, "downlink")
        return cls(_data_dir(cfg), capacity_bytes=dl.get("journal_capacity_bytes"),
                   segment_bytes=dl.get("segment_bytes"))

    def boot(self) -> int:
        from edge.sources import DurableCounter
        return max(0, DurableCounter(self.data_dir / "state" / "boot").value - 1)

    def write_events(self, events) -> None:
        """Append (code, text) events, in order, durably."""
        events = list(events)
        if not events:
            return
        from edge.downlink import record as rec
        from edge.downlink.journal import Journal

        boot = self.boot()
        journal = Journal(self.data_dir / "journal", **self._journal_kwargs)
        try:
            for code, text in events:
                payload = rec.encode_event(seq=journal.next_seq, time_ms=int(time.time() * 1000),
                                           boot=boot, code=code, text=text)
                journal.append(payload, kind=rec.KIND_EVENT,
                               priority=rec.PRIORITY_BY_KIND[rec.KIND_EVENT], sync=False)
            journal.sync()
        finally:
            journal.close()

    def __call__(self, code: str, text: str) -> None:
        self.write_events([(code, text)])


def _data_dir(cfg) -> Path:
    if cfg is not None and not isinstance(cfg, Mapping) and hasattr(cfg, "data_dir"):
        return Path(cfg.data_dir)
    return Path(_section(cfg, "data").get("dir", "edge-data"))


def read_restart_count(data_dir) -> int:
    """Worker restarts since the counter was created (housekeeping's `restarts`)."""
    from edge.sources import DurableCounter
    return DurableCounter(Path(data_dir) / "state" / RESTARTS_STATE_NAME, start=0).value


# ---- the supervisor -------------------------------------------------------------------------------

class _Worker:
    """One running worker process and what its heartbeats said."""

    __slots__ = ("proc", "reader", "safe", "started", "stage", "frame_id", "since", "since_ns",
                 "deadline_at", "beats", "ready_at")

    def __init__(self, proc, reader, safe, started, deadline_at):
        self.proc, self.reader, self.safe = proc, reader, safe
        self.started = started
        self.stage, self.frame_id = START_STAGE, 0
        self.since, self.since_ns = started, None
        self.deadline_at = deadline_at
        self.beats = 0
        self.ready_at = None


class Supervisor:
    """Runs `worker_cmd` (an argv list) as the flight worker; see the module docstring.

    cfg: the mission Config (or a mapping of sections); its [supervisor] / [watchdog] sections (if
    any) over SUPERVISOR_DEFAULTS, and data.dir. watchdog: the object to pet (keepalive(), close()),
    e.g. watchdog.open_watchdog(...). event_sink: callable(code, text), default JournalEventSink.
    run() returns the exit status for the supervisor process."""

    def __init__(self, cfg, worker_cmd, *, watchdog, clock=time.monotonic, event_sink=None,
                 env: Mapping | None = None):
        settings = validate_settings(_section(cfg, "supervisor"), _section(cfg, "watchdog"))
        self.settings = settings
        s, w = settings["supervisor"], settings["watchdog"]
        self.worker_cmd = [os.fspath(a) for a in worker_cmd]
        if not self.worker_cmd:
            raise ValueError("worker_cmd: needs at least the program to run")
        self.watchdog = watchdog
        self.clock = clock
        self.data_dir = _data_dir(cfg)
        self.event_sink = JournalEventSink.from_config(cfg) if event_sink is None else event_sink
        self.env = env
        self.deadlines = StageDeadlines.from_settings(s)
        self.policy = RestartPolicy.from_settings(s)
        self.startup_s = self.deadlines.startup_s
        self.cooldown_s = float(s["safe_mode_cooldown_s"])
        self.stop_grace_s = float(s["stop_grace_s"])
        self.pet_interval_s = float(w["pet_interval_s"])
        self.safe_mode = False
        self.timeline: collections.deque = collections.deque(maxlen=512)   # (t, what, detail)
        self._worker: _Worker | None = None
        self._spawn_at: float | None = None
        self._gap_start: float | None = None   # last failure, until the next worker's first beat
        self._pet_until = float("-inf")
        self._last_pet = float("-inf")
        self._safe_since: float | None = None
        self._stop_requested = False
        self._events: collections.deque = collections.deque()
        self._restart_counter = None
        self.counts = collections.Counter()
        self.last_restart: dict | None = None
        wd_timeout = getattr(watchdog, "timeout_s", None)
        if wd_timeout and s["backoff_cap_s"] > wd_timeout:
            # after a failure the pets stop startup_s later; backoff + the next worker's start-up
            # must fit in startup_s + the watchdog's timeout
            log.warning("supervisor.backoff_cap_s (%s) > the watchdog timeout (%s): a long backoff "
                        "after a failure may end in a watchdog reset", s["backoff_cap_s"], wd_timeout)
        if getattr(watchdog, "hardware", True) is False:
            # the verdict first: an event text is cut at 160 bytes, and the reason can be long
            self._event("watchdog", f"no hardware watchdog: software fallback, timeout {wd_timeout} s "
                                    f"({getattr(watchdog, 'reason', '?')})")

    # ---- public -----------------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        wk = self._worker
        return {
            "state": ("stopped" if self._stop_requested and wk is None else
                      "safe" if self.safe_mode else "normal"),
            "worker_pid": wk.proc.pid if wk else None,
            "stage": wk.stage if wk else None,
            "frame_id": wk.frame_id if wk else None,
            "restarts": self.counts["restarts"],
            "restarts_total": self._restarts_total(),
            "restarts_in_window": self.policy.in_window(self.clock()),
            "deadline_kills": self.counts["deadline_kills"],
            "crashes": self.counts["crashes"],
            "safe_mode": self.safe_mode,
            "safe_mode_entries": self.counts["safe_mode_entries"],
            "safe_mode_exits": self.counts["safe_mode_exits"],
            "spawns": self.counts["spawns"],
            "beats": self.counts["beats"],
            "keepalives": self.counts["keepalives"],
            "keepalive_errors": self.counts["keepalive_errors"],
            "events_written": self.counts["events_written"],
            "events_dropped": self.counts["events_dropped"],
            "event_errors": self.counts["event_errors"],
            "bad_heartbeat_bytes": self.counts["bad_heartbeat_bytes"],
            "last_restart": self.last_restart,
            "deadlines": self.deadlines.snapshot(),
            "watchdog_hardware": bool(getattr(self.watchdog, "hardware", False)),
        }

    def request_stop(self) -> None:
        """Ask run() to stop the worker (SIGTERM, then SIGKILL after stop_grace_s), write its events,
        disarm the watchdog and return EXIT_OK. Safe to call from a signal handler."""
        self._stop_requested = True

    def run(self) -> int:
        """Supervise until the worker ends orderly (EXIT_OK) or request_stop(); returns EXIT_OK."""
        now = self.clock()
        self._spawn_at = now
        self._pet_until = now + self.startup_s
        try:
            while True:
                if self._stop_requested:
                    return self._finish(self.clock(), "stop requested")
                rc = self._step()
                if rc is not None:
                    return rc
        except BaseException:
            # leave the watchdog armed: whatever went wrong here, the reset is the remedy
            if self._worker is not None:
                self._kill(self._worker)
            raise

    # ---- the loop ---------------------------------------------------------------------------------
    def _step(self) -> int | None:
        now = self.clock()
        wk = self._worker
        if wk is None:
            if self._spawn_at is None or now >= self._spawn_at:
                self._spawn(now)
            else:
                self._maybe_pet(now)
                time.sleep(max(0.0, min(self._spawn_at - now, self._next_pet(now) - now,
                                        self.pet_interval_s)))
            return None
        wake = min(wk.deadline_at, self._next_pet(now), self._cooldown_end())
        timeout = min(max(0.0, wake - now), self.pet_interval_s)
        if wk.reader.eof:   # the worker closed its end (exiting): wait for its status
            try:
                wk.proc.wait(timeout=max(timeout, 1e-3))
            except subprocess.TimeoutExpired:
                pass
            messages = []
        else:
            messages = wk.reader.read(timeout)
        t = self.clock()
        safe_request = False
        for m in messages:
            safe_request |= self._on_message(wk, m, t)
        rc = wk.proc.poll()
        if rc is not None:
            return self._on_exit(wk, rc, t)
        if t > wk.deadline_at:
            self._kill(wk)
            self._failure(t, wk, "missed its deadline", deadline=True)
        elif safe_request and not wk.safe:
            self._stop(wk)
            self._enter_safe(t, f"the worker asked for it (stage {wk.stage}, frame {wk.frame_id})")
        elif wk.safe and t >= self._cooldown_end():
            self._stop(wk)
            self._leave_safe(t, f"cool-down of {self.cooldown_s:g} s elapsed")
        else:
            self._maybe_pet(t)
        return None

    def _cooldown_end(self) -> float:
        if not self.safe_mode or self.cooldown_s <= 0 or self._safe_since is None:
            return float("inf")
        return self._safe_since + self.cooldown_s

    def _on_message(self, wk: _Worker, m: hb.Message, t: float) -> bool:
        self.counts["beats"] += 1
        if wk.since_ns is not None:   # the stage just left lasted from its beat to this one
            self.deadlines.record(wk.stage, (m.t_ns - wk.since_ns) / 1e9)
        if wk.beats == 0:
            self._gap_start = None
            self.timeline.append((t, "first_beat", {"pid": wk.proc.pid, "stage": m.stage}))
        wk.beats += 1
        wk.stage, wk.frame_id, wk.since, wk.since_ns = m.stage, m.frame_id, t, m.t_ns
        wk.deadline_at = t + self.deadlines.deadline(m.stage)
        if m.kind == hb.READY and wk.ready_at is None:
            wk.ready_at = t
            self.timeline.append((t, "ready", {"pid": wk.proc.pid, "startup_s": t - wk.started}))
        return m.kind == hb.SAFE_MODE_REQUEST

    # ---- the watchdog -----------------------------------------------------------------------------
    def _healthy(self, now: float) -> bool:
        wk = self._worker
        if wk is not None and wk.beats:
            return now <= wk.deadline_at
        return now <= self._pet_until   # starting up, or between a failure and the restart

    def _next_pet(self, now: float) -> float:
        """When the loop should wake to pet next (never, while unhealthy: nothing to wake for)."""
        if not self._healthy(now):
            return float("inf")
        return max(now, self._last_pet + self.pet_interval_s)

    def _maybe_pet(self, now: float) -> None:
        if now < self._last_pet + self.pet_interval_s or not self._healthy(now):
            return
        try:
            self.watchdog.keepalive()
        except Exception as e:   # noqa: BLE001 - a failing device must not stop supervision
            self.counts["keepalive_errors"] += 1
            log.error("watchdog keepalive failed: %s", e)
        else:
            self.counts["keepalives"] += 1
        self._last_pet = now

    # ---- worker processes -------------------------------------------------------------------------
    def _spawn(self, now: float) -> None:
        self._flush_events()   # no worker holds the journal now
        now = self.clock()
        safe = self.safe_mode
        reader, wfd = hb.make_pipe()
        argv = self.worker_cmd + [HEARTBEAT_FD_FLAG, str(wfd)] + ([SAFE_MODE_FLAG] if safe else [])
        env = dict(os.environ if self.env is None else self.env)
        env[HEARTBEAT_FD_ENV] = str(wfd)
        try:
            proc = subprocess.Popen(argv, pass_fds=(wfd,), env=env)
        except OSError as e:
            reader.close()
            log.error("cannot start the worker %s: %s", argv[0], e)
            self.timeline.append((now, "spawn_failed", {"error": str(e)}))
            self._failure(now, None, f"could not start ({e.strerror or e})")
            return
        finally:
            os.close(wfd)
        self.counts["spawns"] += 1
        self._pet_until = (now if self._gap_start is None else self._gap_start) + self.startup_s
        self._worker = _Worker(proc, reader, safe, now, now + self.startup_s)
        self._spawn_at = None
        log.info("worker %d started%s: %s", proc.pid, " in SAFE MODE" if safe else "", " ".join(argv))
        self.timeline.append((now, "spawn", {"pid": proc.pid, "safe": safe}))

    def _reap(self, wk: _Worker) -> int:
        rc = wk.proc.wait()
        wk.reader.close()
        self.counts["bad_heartbeat_bytes"] += wk.reader.bad_bytes
        if self._worker is wk:
            self._worker = None
        return rc

    def _kill(self, wk: _Worker) -> int:
        """SIGKILL (works on a SIGSTOPped process too) and reap."""
        try:
            wk.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc = self._reap(wk)
        self.timeline.append((self.clock(), "killed", {"pid": wk.proc.pid, "stage": wk.stage,
                                                       "since": wk.since, "deadline_at": wk.deadline_at}))
        return rc

    def _stop(self, wk: _Worker) -> int:
        """SIGTERM, up to stop_grace_s to exit, then SIGKILL; reap."""
        try:
            wk.proc.send_signal(signal.SIGTERM)
            wk.proc.wait(timeout=self.stop_grace_s)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            return self._kill(wk)
        rc = self._reap(wk)
        self.timeline.append((self.clock(), "stopped", {"pid": wk.proc.pid, "rc": rc}))
        return rc

    def _on_exit(self, wk: _Worker, rc: int, t: float) -> int | None:
        self._reap(wk)
        how = describe_exit(rc)
        self.timeline.append((t, "exit", {"pid": wk.proc.pid, "rc": rc, "safe": wk.safe}))
        log.info("worker %d ended: %s (stage %s)", wk.proc.pid, how, wk.stage)
        if rc == EXIT_OK:
            return self._finish(t, f"worker finished ({how})")
        if wk.safe and rc == EXIT_LEAVE_SAFE_MODE:
            self._leave_safe(t, f"command (worker {how})")
        elif not wk.safe and rc in EXITS_TO_SAFE_MODE:
            self._count_restart(t, wk, how)
            self._gap(t)
            self._enter_safe(t, f"worker {how} in stage {wk.stage}: it will not fix itself")
        elif not wk.safe and rc == EXIT_RESTART:
            log.info("worker %d: %s: started again at once (config change)", wk.proc.pid, how)
            self._gap(t)
            self._spawn_at = t
        elif not wk.safe and rc == EXIT_ENTER_SAFE_MODE:
            self._gap(t)
            self._enter_safe(t, f"commanded (worker {how})")
        elif not wk.safe and rc == EXIT_LEAVE_SAFE_MODE:
            log.warning("worker %d: %s outside safe mode: started again", wk.proc.pid, how)
            self._spawn_at = t
        else:
            self._failure(t, wk, how)
        return None

    def _count_restart(self, t: float, wk: _Worker | None, reason: str) -> None:
        self.counts["restarts"] += 1
        self._bump_restart_counter()
        self.last_restart = {"time": t, "reason": reason, "stage": wk.stage if wk else None,
                             "frame_id": wk.frame_id if wk else None,
                             "elapsed_s": (t - wk.since) if wk else None, "safe": self.safe_mode}

    def _failure(self, t: float, wk: _Worker | None, reason: str, deadline: bool = False) -> None:
        """A worker failed (reaped already): event, then restart after the backoff, or safe mode."""
        self.counts["deadline_kills" if deadline else "crashes"] += 1
        self._count_restart(t, wk, reason)
        n, delay, storm = self.policy.failure(t)
        if storm and not self.safe_mode:
            delay = 0.0
        where = ""
        if wk is not None:
            elapsed = t - wk.since
            where = (f" in stage {wk.stage} frame {wk.frame_id} after {elapsed:.3f} s "
                     f"(deadline {wk.deadline_at - wk.since:.3f} s)")
        text = (f"worker {wk.proc.pid if wk else '-'} {reason}{where}; failure {n} in "
                f"{self.policy.window_s:g} s, restart in {delay:.2f} s" + (" SAFE" if self.safe_mode
                                                                          else ""))
        log.warning("%s", text)
        self._event("worker_restart", text)
        self._gap(t)
        if storm and not self.safe_mode:
            self._enter_safe(t, f"{n} failures within {self.policy.window_s:g} s "
                                f"(max_restarts {self.policy.max_restarts})")
        else:
            self._spawn_at = t + delay

    def _gap(self, t: float) -> None:
        """A failure at t: petting goes on for at most startup_s, unless a new worker beats first."""
        self._gap_start = t
        self._pet_until = t + self.startup_s

    def _enter_safe(self, t: float, reason: str) -> None:
        self.safe_mode = True
        self._safe_since = t
        self.counts["safe_mode_entries"] += 1
        log.error("SAFE MODE: %s", reason)
        self._event("safe_mode_entered", f"safe mode: {reason}")
        self.timeline.append((t, "safe_mode_entered", {"reason": reason}))
        self._spawn_at = t

    def _leave_safe(self, t: float, reason: str) -> None:
        since = self._safe_since if self._safe_since is not None else t
        self.safe_mode = False
        self._safe_since = None
        self.policy.reset()
        self.counts["safe_mode_exits"] += 1
        log.warning("safe mode left: %s", reason)
        self._event("safe_mode_left", f"safe mode left after {t - since:.1f} s: {reason}")
        self.timeline.append((t, "safe_mode_left", {"reason": reason}))
        self._spawn_at = t

    def _finish(self, t: float, reason: str) -> int:
        if self._worker is not None:
            self._stop(self._worker)
        self._flush_events()
        log.info("supervisor: %s; watchdog disarmed", reason)
        self.timeline.append((t, "finished", {"reason": reason}))
        self.watchdog.close()   # the magic close: an orderly exit disarms
        return EXIT_OK

    # ---- events and durable state -----------------------------------------------------------------
    def _event(self, code: str, text: str) -> None:
        if len(self._events) >= MAX_PENDING_EVENTS:
            self._events.popleft()
            self.counts["events_dropped"] += 1
        self._events.append((code, text))

    def _flush_events(self) -> None:
        if not self._events or self._worker is not None:
            return
        events = list(self._events)
        try:
            write_many = getattr(self.event_sink, "write_events", None)
            if write_many is not None:
                write_many(events)
            else:
                for code, text in events:
                    self.event_sink(code, text)
        except Exception as e:   # noqa: BLE001 - keep supervising; retry at the next chance
            self.counts["event_errors"] += 1
            log.error("supervisor events not written (%d waiting): %s", len(events), e)
            return
        self._events.clear()
        self.counts["events_written"] += len(events)

    def _counter(self):
        if self._restart_counter is None:
            from edge.sources import DurableCounter
            self._restart_counter = DurableCounter(self.data_dir / "state" / RESTARTS_STATE_NAME,
                                                   start=0)
        return self._restart_counter

    def _restarts_total(self) -> int:
        try:
            return self._counter().value
        except OSError:
            return self.counts["restarts"]

    def _bump_restart_counter(self) -> None:
        try:
            c = self._counter()
            c.set(c.value + 1)
        except OSError as e:
            log.error("restart counter not persisted: %s", e)


__all__ = ["JournalEventSink", "RESTARTS_STATE_NAME", "RestartPolicy", "SUPERVISOR_DEFAULTS",
           "StageDeadlines", "Supervisor", "read_restart_count", "validate_settings"]
