"""End-to-end reliability (issue 5: items 1-3, the kill/stop and bad-input campaigns of item 6, item 7):
real `edge run` processes (supervisor + worker), real `edge-ground` commands, checked at the ground.

Requirements REL-001..REL-006 (docs/reliability.md), one per test (REL-004 has several). Every
`edge run` is started in its own session (process group) and the whole group is SIGKILLed at teardown,
so no worker survives a failing test. Fault times come from seeded random generators.

EDGE_CAMPAIGN=full (tests/campaign.py) runs REL-001 with 200 faults instead of 6; EDGE_CAMPAIGN_RESULTS
collects the figures.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from edge.downlink.journal import Journal
from edge.ground.decode import StreamDecoder
from models.scenes import generate_scene

try:
    from tests.campaign import count, record
except ImportError:  # pragma: no cover - the shared helper is not there yet
    def count(ci_n: int, full_n: int) -> int:
        return full_n if os.environ.get("EDGE_CAMPAIGN", "").strip().lower() == "full" else ci_n

    def record(name: str, **figures) -> dict:
        print(f"[campaign {name}] " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
        return figures

REPO = Path(__file__).resolve().parent.parent
_BIN = Path(sys.executable).parent
EDGE = [str(_BIN / "edge")] if (_BIN / "edge").exists() else [sys.executable, "-m", "edge"]
EDGE_GROUND = ([str(_BIN / "edge-ground")] if (_BIN / "edge-ground").exists()
               else [sys.executable, "-m", "edge.ground.cli"])

#: Frame capture times are BASE_TIME_MS + the frame's index: a frame record names its input frame.
BASE_TIME_MS = 1_790_000_000_000
FRAME_HW = 384
#: Supervisor settings for the campaigns: stage deadlines of 2 s (floor = default; the derived
#: factor x median stays far below), a start-up deadline of 4 s, a short capped backoff.
STAGE_DEADLINE_S = 2.0
STARTUP_S = 4.0
#: The fault -> next frame record bound of the issue: the deadline in effect plus this.
RECOVERY_ALLOWANCE_S = 2.0
WAIT_S = 60.0   # generous waits for conditions on a loaded 2-core machine


# ---- frames -----------------------------------------------------------------------------------------

_SCENES: dict[int, np.ndarray] = {}


def scene(seed: int) -> np.ndarray:
    if seed not in _SCENES:
        _SCENES[seed] = generate_scene(seed, FRAME_HW, FRAME_HW, bands="bgrn", ships=(3, 3),
                                       cloud_probability=0.0).image
    return _SCENES[seed]


class FramePool:
    """Distinct scenes written once; spool frames are hard links to them (a 1,600-frame campaign
    costs the disk of `size` frames). The spool renames them; a link is as good as a file."""

    def __init__(self, directory: Path, size: int = 16):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.size = size

    def raw(self, seed: int) -> Path:
        p = self.dir / f"scene{seed}.raw"
        if not p.exists():
            scene(seed).tofile(p)
        return p

    def add(self, spool: Path, index: int, seed: int | None = None) -> str:
        """Frame `index` (capture time BASE_TIME_MS + index) from scene `seed` (default index % size);
        the sidecar first, then the data file (what the spool claims) by an atomic link."""
        seed = index % self.size if seed is None else seed
        name = f"f{index:05d}"
        side = {"shape": [FRAME_HW, FRAME_HW, 4], "dtype": "uint16",
                "capture_time": BASE_TIME_MS + index}
        (spool / f"{name}.json").write_text(json.dumps(side))
        os.link(self.raw(seed), spool / f"{name}.raw")
        return name + ".raw"


def waiting_frames(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir() if p.is_file() and p.suffix in (".raw", ".npy", ".png"))


def spool_state(spool: Path) -> dict:
    sub = {d: sorted(p.name for p in (spool / d).glob("*") if p.suffix != ".json")
           for d in (".done", ".failed", ".active")}   # (a missing directory: [])
    sub["waiting"] = waiting_frames(spool)
    return sub


# ---- configuration ----------------------------------------------------------------------------------

def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def write_config(path: Path, doc: dict) -> Path:
    lines = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


def base_doc(tmp: Path, **sections) -> dict:
    """A mission config for these tests: software watchdog, campaign deadlines, fast housekeeping."""
    doc = {
        "input": {"poll_s": 0.0},
        "data": {"dir": str(tmp / "data")},
        "downlink": {"output": str(tmp / "down.bin"), "housekeeping_every": 5, "housekeeping_s": 0.5},
        "detection": {"score_threshold": 0.5},
        "supervisor": {"startup_s": STARTUP_S, "stage_default_s": STAGE_DEADLINE_S,
                       "stage_floor_s": STAGE_DEADLINE_S, "stage_factor": 4.0,
                       "backoff_base_s": 0.1, "backoff_factor": 1.5, "backoff_cap_s": 0.3,
                       "max_restarts": 1_000_000, "window_s": 600.0, "stop_grace_s": 10.0},
        "watchdog": {"device": "", "timeout_s": 30.0, "pet_interval_s": 0.5},
    }
    for section, values in sections.items():
        doc.setdefault(section, {}).update(values)
    return doc


def uplink_doc(tmp: Path) -> dict:
    return {"input": str(tmp / "uplink.bin"), "key_file": str(tmp / "board.key")}


# ---- processes --------------------------------------------------------------------------------------

@pytest.fixture
def procs():
    """Every process group started by a test; SIGKILLed (stopped members too) at teardown."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    left = []
    for p in started:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = [q.pid for q in psutil.process_iter() if _pgid(q.pid) == p.pid]
            if not left:
                break
            time.sleep(0.1)
    assert not left, f"processes left behind: {left}"


def _pgid(pid: int):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


class EdgeRun:
    """One `edge run --config CFG [SOURCE]` (supervised), in its own process group."""

    def __init__(self, procs: list, tmp: Path, config: Path, source: Path | None = None,
                 args=(), env: dict | None = None, name: str = "edge-run"):
        n = len(procs)
        self.stdout_path = tmp / f"{name}-{n}.out"
        self.log_path = tmp / f"{name}-{n}.log"
        cmd = EDGE + ["run", "--config", str(config)] + ([str(source)] if source else []) + list(args)
        with open(self.stdout_path, "wb") as out, open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=tmp, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env={**os.environ, **(env or {})})
        procs.append(self.proc)
        self._ps = psutil.Process(self.proc.pid)

    def workers(self) -> list[psutil.Process]:
        out = []
        try:
            children = self._ps.children()
        except psutil.Error:
            return out
        for c in children:
            try:
                if c.status() != psutil.STATUS_ZOMBIE and "edge.worker" in " ".join(c.cmdline()):
                    out.append(c)
            except psutil.Error:
                pass
        return out

    def worker(self, *, exclude=(), safe: bool | None = None, timeout: float = WAIT_S) -> psutil.Process:
        """The running worker (not one of `exclude`; safe: in safe mode or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for w in self.workers():
                try:
                    is_safe = "--safe-mode" in w.cmdline()
                except psutil.Error:
                    continue
                if w.pid not in exclude and (safe is None or safe == is_safe):
                    return w
            if self.proc.poll() is not None:
                raise AssertionError(f"edge run ended (rc {self.proc.returncode}): {self.tail()}")
            time.sleep(0.01)
        raise AssertionError(f"no worker (exclude {set(exclude)}, safe {safe}) within {timeout} s: "
                             f"{self.tail()}")

    def wait(self, timeout: float = WAIT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"edge run still running after {timeout} s: {self.tail()}") from None

    def stop(self, timeout: float = WAIT_S) -> int:
        """SIGTERM to the supervisor (as an operator or init would): orderly stop of the worker."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def report(self) -> dict:
        lines = [ln for ln in self.stdout_path.read_text().splitlines() if ln.startswith("{")]
        assert lines, f"no report from edge run: {self.tail()}"
        return json.loads(lines[-1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, n: int = 3000) -> str:
        return self.log()[-n:]


# ---- the ground -------------------------------------------------------------------------------------

class Downlink:
    """The ground station following the packet stream as it grows: new bytes are decoded at once
    (edge.ground.decode.StreamDecoder) and every new record gets its arrival time (monotonic)."""

    def __init__(self, path: Path, poll_s: float = 0.01):
        self.path = path
        self.poll_s = poll_s
        self.decoder = StreamDecoder(manifest=False)
        self.items: list[tuple[float, object]] = []   # (arrival, DecodedRecord), stream order
        self.bytes = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="ground", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            self.poll()
            time.sleep(self.poll_s)

    def poll(self) -> None:
        with self._cond:
            try:
                size = os.stat(self.path).st_size
            except FileNotFoundError:
                return
            if size <= self.bytes:
                return
            with open(self.path, "rb") as f:
                f.seek(self.bytes)
                data = f.read(size - self.bytes)
            t = time.monotonic()
            self.bytes += len(data)
            for d in self.decoder.feed(data):
                self.items.append((t, d))
            self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()

    def mark(self) -> int:
        with self._cond:
            return len(self.items)

    def records(self, start: int = 0) -> list:
        with self._cond:
            return [d.record for _, d in self.items[start:]]

    def wait_for(self, pred, *, start: int = 0, n: int = 1, timeout: float = WAIT_S, what: str = "",
                 run: EdgeRun | None = None) -> list:
        """The first n records from index `start` on that satisfy pred(record)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [d.record for _, d in self.items[start:] if pred(d.record)]
                if len(hits) >= n:
                    return hits[:n]
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = run.tail() if run is not None else ""
                    raise AssertionError(f"ground: {what or pred} not seen ({len(hits)}/{n}) within "
                                         f"{timeout} s; last records: "
                                         f"{[_brief(d.record) for _, d in self.items[-8:]]}\n{tail}")
                self._cond.wait(min(left, 0.2))


def _brief(r) -> str:
    if r.kind == "event":
        return f"event {r.code}: {r.text}"
    if r.kind == "frame":
        return f"frame {r.frame_id} t={r.time_ms}"
    return f"{r.kind} seq {r.seq}"


def is_frame(r) -> bool:
    return r.kind == "frame"


def event(code: str, contains: str = ""):
    return lambda r: r.kind == "event" and r.code == code and contains in r.text


def ground(*args, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(EDGE_GROUND + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                       timeout=120)
    if check:
        assert p.returncode == 0, f"edge-ground {args}: rc {p.returncode}: {p.stderr}"
    return p


def ground_decode(stream: Path, out: Path) -> tuple[list[dict], dict]:
    """`edge-ground decode STREAM --out DIR`: (records as JSON objects, the report)."""
    ground("decode", stream, "--out", out)
    records = [json.loads(ln) for ln in (out / "records.jsonl").read_text().splitlines() if ln.strip()]
    records = [r for r in records if r.get("kind") != "stream_report"]
    return records, json.loads((out / "report.json").read_text())


def keygen(path: Path) -> Path:
    p = subprocess.run(EDGE + ["keygen", "--out", str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return path


class Ground:
    """The ground's uplink: `edge-ground` commands signed with a key and a durable ARSN counter,
    appended to the board's uplink file."""

    def __init__(self, tmp: Path, key: Path, name: str = "ground"):
        self.tmp, self.key = tmp, key
        self.counter = tmp / f"{name}.arsn"
        self.uplink = tmp / "uplink.bin"

    def command(self, *args, out: Path | None = None) -> bytes:
        """`edge-ground command ARGS...`; returns the bytes it appended."""
        out = out or self.uplink
        before = out.stat().st_size if out.exists() else 0
        ground("command", *args, "--key", self.key, "--counter", self.counter, "--out", out)
        return out.read_bytes()[before:]

    def ack(self, source: Path, out: Path) -> bytes:
        ground("ack", source, "--key", self.key, "--counter", self.counter, "--out", out)
        return out.read_bytes()

    def append(self, data: bytes) -> None:
        with open(self.uplink, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def hk_counter_total(records, name: str) -> int:
    """A housekeeping counter summed over boots (counters restart with each worker process)."""
    per_boot: dict = {}
    for r in records:
        if r["kind"] == "housekeeping":
            per_boot[r["boot"]] = max(per_boot.get(r["boot"], 0), r["counters"].get(name, 0))
    return sum(per_boot.values())


def frames_by_index(records) -> dict:
    """input frame index -> the frame records (distinct seqs) naming it."""
    out: dict = {}
    for r in records:
        if r["kind"] == "frame":
            out.setdefault(r["time_ms"] - BASE_TIME_MS, []).append(r)
    return out


def open_journal(data_dir: Path) -> Journal:
    return Journal(data_dir / "journal", capacity_bytes=64 << 20, segment_bytes=1 << 20)


_RESTART_EVENT = re.compile(r"^worker (\d+) (.+?) in stage (\S+) frame (\d+) after ([\d.]+) s "
                            r"\(deadline ([\d.]+) s\)")


# ---- REL-001 ------------------------------------------------------------------------------------------

@dataclass
class Fault:
    index: int
    kind: str          # "kill" (SIGKILL) or "stop" (SIGSTOP)
    phase: str         # "loop": during frame processing; "startup": right after the worker started
    pid: int
    t: float           # monotonic time of the signal
    stream_bytes: int  # size of the downlink at that moment: later records start at or after it
    mark: int          # ground records seen by then


def test_rel001_exactly_once_across_worker_kills(tmp_path, procs):
    """REL-001: a supervised `edge run` over a spool whose worker is SIGKILLed or SIGSTOPped at
    seeded random moments (during frame processing, and right after a restart, in the start-up) loses
    no frame and duplicates none: at the ground every input frame has exactly one frame record (no
    frame id in two records, no seq missing, no seq re-sent with other bytes), the spool's .done/
    holds every frame; every fault is a worker_restart event at the ground naming the stage and its
    deadline, and the next frame record reaches the ground within that deadline + 2 s."""
    n_faults = count(6, 200)
    n_frames = 8 * n_faults + 24
    rng = random.Random(0x5EED_0001)
    kinds = (["kill", "stop"] * n_faults)[:n_faults]
    rng.shuffle(kinds)
    phases = ["startup" if k % 5 == 4 else "loop" for k in range(n_faults)]
    delays = [rng.uniform(0.0, 0.4) for _ in range(n_faults)]

    spool = tmp_path / "spool"
    spool.mkdir()
    pool = FramePool(tmp_path / "pool")
    for i in range(n_frames):
        pool.add(spool, i)
    cfg = write_config(tmp_path / "m.toml", base_doc(tmp_path, downlink={"housekeeping_every": 10}))
    down = Downlink(tmp_path / "down.bin")
    t0 = time.monotonic()
    run = EdgeRun(procs, tmp_path, cfg, spool)
    down.wait_for(is_frame, what="the first frame record", run=run)

    faults: list[Fault] = []
    last_pid = None
    for k in range(n_faults):
        if phases[k] == "loop" or not faults:
            if faults:   # the last fault is behind us: a frame record written after it arrived
                _wait_frame_after(down, faults[-1], run)
            time.sleep(delays[k])
            wk = run.worker(exclude={last_pid})
        else:            # the worker that replaced the last faulted one, while it starts up
            wk = run.worker(exclude={last_pid})
            time.sleep(delays[k])
        assert len(waiting_frames(spool)) >= 3, (
            f"the spool ran dry after {k} faults: make the campaign's spool larger")
        sig = signal.SIGKILL if kinds[k] == "kill" else signal.SIGSTOP
        try:
            os.kill(wk.pid, sig)
        except ProcessLookupError:   # it ended meanwhile (it should not): the next worker, then
            wk = run.worker(exclude={wk.pid, last_pid})
            os.kill(wk.pid, sig)
        t = time.monotonic()
        faults.append(Fault(k, kinds[k], phases[k], wk.pid, t, os.stat(tmp_path / "down.bin").st_size,
                            down.mark()))
        last_pid = wk.pid

    rc = run.wait(timeout=max(WAIT_S, n_frames / 2))
    wall = time.monotonic() - t0
    down.close()
    assert rc == 0, run.tail()
    sup = run.report()["supervisor"]

    # -- exactly once at the ground
    records, report = ground_decode(tmp_path / "down.bin", tmp_path / "ground")
    by_index = frames_by_index(records)
    lost = sorted(set(range(n_frames)) - set(by_index))
    twice = {i: [r["seq"] for r in rs] for i, rs in by_index.items() if len(rs) > 1}
    assert not lost, f"frames without a frame record: {lost}"
    assert not twice, f"frames with two frame records: {twice}"
    assert set(by_index) == set(range(n_frames))
    assert report["frame_id_repeat_count"] == 0 and report["frame_ids"] == n_frames
    assert report["missing_seqs"] == 0, report["seq_gaps"]
    assert report["duplicate_conflicts"] == 0 and report["decode_errors"] == 0
    st = spool_state(spool)
    assert len(st[".done"]) == n_frames and not st[".failed"] and not st[".active"] and not st["waiting"]

    # -- every fault reached the ground as a worker_restart event, with its stage and deadline
    restarts = {}
    for r in records:
        if r["kind"] == "event" and r["code"] == "worker_restart":
            m = _RESTART_EVENT.match(r["text"])
            assert m, r["text"]
            restarts[int(m.group(1))] = (m.group(2), m.group(3), float(m.group(6)))
    for f in faults:
        assert f.pid in restarts, f"fault {f} has no worker_restart event"
        reason = restarts[f.pid][0]
        assert ("SIGKILL" in reason) if f.kind == "kill" else ("missed its deadline" in reason), (f, reason)
    n_kill = sum(f.kind == "kill" for f in faults)
    assert sup["crashes"] == n_kill, sup
    assert n_faults - n_kill <= sup["deadline_kills"] <= n_faults - n_kill + 2, sup   # + spurious, if any
    assert sup["safe_mode_entries"] == 0
    assert hk_counter_total([r for r in records if r["kind"] == "housekeeping"][-1:], "restarts") \
        == sup["restarts_total"] >= n_faults

    # -- recovery time: fault -> the next frame record written after it, at the ground
    arrivals = [(t, d.offset) for t, d in down.items if d.record.kind == "frame"]
    times, checked, compound, over = [], 0, 0, []
    margin = {}   # (kind, stage) -> the largest (recovery - deadline in effect)
    for j, f in enumerate(faults):
        t_next = next(t for t, off in arrivals if off is not None and off >= f.stream_bytes)
        if j + 1 < len(faults) and faults[j + 1].t < t_next:
            compound += 1   # the next fault came first (a start-up fault): its own time is checked
            continue
        dt = t_next - f.t
        bound = restarts[f.pid][2] + RECOVERY_ALLOWANCE_S
        times.append(dt)
        checked += 1
        key = f"{f.kind}@{restarts[f.pid][1]}"
        margin[key] = round(max(margin.get(key, -1e9), dt - restarts[f.pid][2]), 3)
        if dt > bound:
            over.append((f, round(dt, 3), bound, restarts[f.pid]))
    record("rel001_worker_kill_stop", faults=n_faults, kills=n_kill, stops=n_faults - n_kill,
           startup_faults=phases.count("startup"), frames=n_frames,
           frame_records=sum(len(v) for v in by_index.values()), lost=len(lost),
           duplicate_frame_records=report["frame_id_repeat_count"],
           resent_records=report["duplicate_records"], deadline_kills=sup["deadline_kills"],
           crashes=sup["crashes"], recovery_checked=checked, recovery_compound=compound,
           recovery_max_s=round(max(times), 3), recovery_median_s=round(statistics.median(times), 3),
           recovery_bound_s=f"stage deadline ({STAGE_DEADLINE_S} s; start-up {STARTUP_S} s) + "
                            f"{RECOVERY_ALLOWANCE_S} s",
           recovery_minus_deadline_max_s=max(margin.values()), recovery_minus_deadline_by=margin,
           over_bound=len(over), wall_s=round(wall, 1))
    assert not over, f"recovery slower than the deadline + {RECOVERY_ALLOWANCE_S} s: {over}"
    assert checked >= n_faults - phases.count("startup")


def _wait_frame_after(down: Downlink, fault: Fault, run: EdgeRun) -> None:
    """Until a frame record written after `fault` (its stream offset past the fault's) arrived."""
    start = max(0, fault.mark - 4)
    deadline = time.monotonic() + WAIT_S
    with down._cond:
        while not any(d.record.kind == "frame" and d.offset is not None and d.offset >= fault.stream_bytes
                      for _, d in down.items[start:]):
            left = deadline - time.monotonic()
            assert left > 0, f"no frame record after fault {fault} within {WAIT_S} s: {run.tail()}"
            down._cond.wait(min(left, 0.2))


# ---- REL-002 ------------------------------------------------------------------------------------------

def test_rel002_restart_storm_safe_mode_and_authenticated_leave(tmp_path, procs):
    """REL-002: a restart storm (more than max_restarts worker crashes in the window) puts the
    supervisor in safe mode: no inference (frames wait in the spool), housekeeping goes on reaching
    the ground; a forged leave-safe-mode command (wrong key) and a replayed one (an accepted packet
    sent again) change nothing and are counted (uplink_rejected) and reported as events at the
    ground; an authentic one brings the normal worker back and the waiting frames are processed,
    each exactly once."""
    keygen(tmp_path / "board.key")
    keygen(tmp_path / "forger.key")
    gnd = Ground(tmp_path, tmp_path / "board.key")
    forger = Ground(tmp_path, tmp_path / "forger.key", name="forger")
    spool = tmp_path / "spool"
    spool.mkdir()
    pool = FramePool(tmp_path / "pool", size=4)
    cfg = write_config(tmp_path / "m.toml", base_doc(
        tmp_path, input={"poll_s": 0.2}, uplink=uplink_doc(tmp_path),
        supervisor={"max_restarts": 2, "safe_mode_cooldown_s": 0.0}))
    down = Downlink(tmp_path / "down.bin")
    run = EdgeRun(procs, tmp_path, cfg, spool)

    # the storm: three crashes within the window (max_restarts 2)
    pid = None
    for _ in range(3):
        wk = run.worker(exclude={pid}, safe=False)
        time.sleep(0.3)
        os.kill(wk.pid, signal.SIGKILL)
        pid = wk.pid
    safe1 = run.worker(exclude={pid}, safe=True)
    down.wait_for(event("safe_mode_entered", "3 failures"), what="safe_mode_entered", run=run)
    safe_boot = down.wait_for(event("started", "SAFE MODE"), run=run)[0].boot

    # safe mode: housekeeping goes on, frames wait
    for i in range(2):
        pool.add(spool, i)
    m = down.mark()
    down.wait_for(lambda r: r.kind == "housekeeping" and r.boot == safe_boot, start=m, n=2,
                  what="safe-mode housekeeping", run=run)
    # a forged leave command: refused, still in safe mode
    m = down.mark()
    forger.command("leave-safe-mode")
    down.wait_for(event("uplink_rejected", "(mac)"), start=m, what="forged command rejected", run=run)
    down.wait_for(lambda r: r.kind == "housekeeping" and r.boot == safe_boot, start=down.mark(), n=2,
                  what="housekeeping after the forgery", run=run)
    assert run.worker(safe=True).pid == safe1.pid
    assert not any(is_frame(r) for r in down.records()) and len(waiting_frames(spool)) == 2

    # the authentic command: normal mode, the waiting frames are processed
    leave1 = gnd.command("leave-safe-mode")
    down.wait_for(is_frame, n=2, what="frames after leaving safe mode", run=run)
    normal = run.worker(safe=False)

    # back to safe mode on command; a replay of the accepted leave packet changes nothing
    m = down.mark()
    gnd.command("enter-safe-mode")
    safe2 = run.worker(exclude={normal.pid}, safe=True)
    safe_boot2 = down.wait_for(event("started", "SAFE MODE"), start=m, run=run)[0].boot
    m = down.mark()
    gnd.append(leave1)
    down.wait_for(event("uplink_rejected", "(replay)"), start=m, what="replay rejected", run=run)
    for i in range(2, 4):
        pool.add(spool, i)
    down.wait_for(lambda r: r.kind == "housekeeping" and r.boot == safe_boot2, start=down.mark(), n=2,
                  what="housekeeping after the replay", run=run)
    assert run.worker(safe=True).pid == safe2.pid
    assert sum(is_frame(r) for r in down.records()) == 2 and len(waiting_frames(spool)) == 2
    gnd.command("leave-safe-mode")
    down.wait_for(is_frame, n=4, what="frames after the second leave", run=run)

    assert run.stop() == 0, run.tail()
    down.close()
    sup = run.report()["supervisor"]
    assert sup["crashes"] == 3 and sup["safe_mode_entries"] == 2 and sup["safe_mode_exits"] == 2, sup
    records, report = ground_decode(tmp_path / "down.bin", tmp_path / "ground")
    by_index = frames_by_index(records)
    assert sorted(by_index) == [0, 1, 2, 3] and all(len(v) == 1 for v in by_index.values())
    assert report["frame_id_repeat_count"] == 0 and report["missing_seqs"] == 0
    rejected = [r["text"] for r in records if r["kind"] == "event" and r["code"] == "uplink_rejected"]
    assert len(rejected) == 2 and "(mac)" in rejected[0] and "(replay)" in rejected[1], rejected
    assert hk_counter_total(records, "uplink_rejected") == 2
    codes = [r["code"] for r in records if r["kind"] == "event"]
    assert codes.count("safe_mode_entered") >= 2 and codes.count("safe_mode_left") >= 2
    assert len(spool_state(spool)[".done"]) == 4


# ---- REL-003 ------------------------------------------------------------------------------------------

def test_rel003_only_authentic_acks_free_journal_records(tmp_path, procs):
    """REL-003: `edge-ground ack` of received records frees exactly those records from the board's
    journal; a forged ack (wrong key), a replayed ack, a truncated ack and a reordered ack (a lower
    ARSN after a higher one) free nothing; each rejection is counted (housekeeping uplink_rejected at
    the ground) and reported as an uplink_rejected event naming the reason."""
    keygen(tmp_path / "board.key")
    keygen(tmp_path / "forger.key")
    gnd = Ground(tmp_path, tmp_path / "board.key")
    forger = Ground(tmp_path, tmp_path / "forger.key", name="forger")
    spool = tmp_path / "spool"
    spool.mkdir()
    pool = FramePool(tmp_path / "pool", size=4)
    for i in range(4):
        pool.add(spool, i)
    cfg = write_config(tmp_path / "m.toml", base_doc(tmp_path, uplink=uplink_doc(tmp_path),
                                                     downlink={"housekeeping_every": 2}))
    run = EdgeRun(procs, tmp_path, cfg, spool)
    assert run.wait() == 0, run.tail()
    records, _ = ground_decode(tmp_path / "down.bin", tmp_path / "ground1")
    seqs = sorted(r["seq"] for r in records)
    assert len(seqs) >= 10
    j = open_journal(tmp_path / "data")
    try:
        assert j.stats()["records"] == len(seqs) and all(s in j for s in seqs)
    finally:
        j.close()

    # five disjoint groups of the received records, each acknowledged in its own way
    groups = {name: seqs[k::5] for k, name in enumerate(("good", "forged", "truncated", "low", "high"))}
    lines = (tmp_path / "ground1" / "records.jsonl").read_text().splitlines()
    packets = {}
    for name in ("forged", "good", "truncated", "low", "high"):      # ARSN order: good 1, trunc 2, low 3, high 4
        sub = tmp_path / f"{name}.jsonl"
        sub.write_text("\n".join(ln for ln in lines if json.loads(ln).get("seq") in groups[name]) + "\n")
        packets[name] = (forger if name == "forged" else gnd).ack(sub, tmp_path / f"{name}.tc")
    uplink = (packets["forged"] + packets["good"] + packets["good"]          # forged, good, replay
              + packets["truncated"][:-10] + packets["high"] + packets["low"])  # cut, then reordered
    gnd.append(uplink)
    pool.add(spool, 4)
    run = EdgeRun(procs, tmp_path, cfg, spool)
    assert run.wait() == 0, run.tail()

    j = open_journal(tmp_path / "data")
    try:
        freed = [s for s in seqs if s not in j]
        stats = j.stats()
    finally:
        j.close()
    assert sorted(freed) == sorted(groups["good"] + groups["high"]), freed
    assert stats["acked"] == len(freed)
    records, _ = ground_decode(tmp_path / "down.bin", tmp_path / "ground2")
    reasons = [re.search(r"\((\w+)\)", r["text"]).group(1) for r in records
               if r["kind"] == "event" and r["code"] == "uplink_rejected"]
    assert reasons == ["mac", "replay", "truncated", "replay"], reasons
    last_hk = [r for r in records if r["kind"] == "housekeeping"][-1]
    assert last_hk["counters"]["uplink_rejected"] == 4
    assert frames_by_index(records).keys() == {0, 1, 2, 3, 4}


# ---- REL-004 ------------------------------------------------------------------------------------------

BAD_FRAMES = [   # (name, what is wrong, words the error must contain)
    ("garbage.raw", "garbage bytes", ["truncated"]),
    ("shape.raw", "sidecar shape too small", ["larger than its sidecar"]),
    ("dtype.raw", "sidecar dtype float32", ["dtype must be one of"]),
    ("nosidecar.raw", "sidecar missing", ["without its sidecar"]),
    ("badjson.raw", "sidecar not JSON", ["unreadable sidecar"]),
    ("garbage.npy", "garbage .npy", ["not a readable .npy"]),
    ("garbage.png", "garbage .png", ["not a readable image"]),
    ("float.npy", "float32 pixels", ["dtype must be uint8 or uint16"]),
    ("twoband.npy", "2 bands for a 3-band model", ["band"]),
]


def _write_bad(spool: Path, index: int, kind: str) -> str:
    rng = np.random.default_rng(index)
    stem = f"f{index:05d}"
    good = scene(index)
    side = {"shape": [FRAME_HW, FRAME_HW, 4], "dtype": "uint16", "capture_time": BASE_TIME_MS + index}
    if kind == "garbage.raw":
        (spool / f"{stem}.json").write_text(json.dumps(side))
        (spool / f"{stem}.raw").write_bytes(rng.bytes(5000))
    elif kind == "shape.raw":
        (spool / f"{stem}.json").write_text(json.dumps({**side, "shape": [FRAME_HW, FRAME_HW, 3]}))
        good.tofile(spool / f"{stem}.raw")
    elif kind == "dtype.raw":
        (spool / f"{stem}.json").write_text(json.dumps({**side, "dtype": "float32"}))
        good.tofile(spool / f"{stem}.raw")
    elif kind == "nosidecar.raw":
        good.tofile(spool / f"{stem}.raw")
    elif kind == "badjson.raw":
        (spool / f"{stem}.json").write_bytes(b'{"shape": [384, 384, 4], "dtype": ')
        good.tofile(spool / f"{stem}.raw")
    elif kind == "garbage.npy":
        (spool / f"{stem}.npy").write_bytes(rng.bytes(3000))
    elif kind == "garbage.png":
        (spool / f"{stem}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(3000))
    elif kind == "float.npy":
        np.save(spool / f"{stem}.npy", good.astype(np.float32))
    elif kind == "twoband.npy":
        np.save(spool / f"{stem}.npy", np.ascontiguousarray(good[..., :2]))
    else:
        raise ValueError(kind)
    return stem + "." + kind.rsplit(".", 1)[1]


def test_rel004_bad_frames_are_reported_and_the_loop_goes_on(tmp_path, procs):
    """REL-004 (frames): garbage frames and wrong sidecars (shape, dtype, missing, not JSON; garbage
    .npy / .png, float pixels, too few bands) among good frames: each is an input_error event at the
    ground naming the file and the problem, counted (housekeeping input_errors), moved to .failed/;
    the loop goes on with the next frame (no worker restart) and every good frame has its one frame
    record."""
    spool = tmp_path / "spool"
    spool.mkdir()
    pool = FramePool(tmp_path / "pool", size=4)
    bad = {}
    good = []
    for k, (kind, _, words) in enumerate(BAD_FRAMES):
        pool.add(spool, 2 * k)
        good.append(2 * k)
        bad[_write_bad(spool, 2 * k + 1, kind)] = words
    pool.add(spool, 2 * len(BAD_FRAMES))
    good.append(2 * len(BAD_FRAMES))
    cfg = write_config(tmp_path / "m.toml", base_doc(tmp_path))
    run = EdgeRun(procs, tmp_path, cfg, spool)
    assert run.wait() == 0, run.tail()
    sup = run.report()["supervisor"]
    assert sup["restarts"] == 0 and sup["spawns"] == 1, sup

    records, report = ground_decode(tmp_path / "down.bin", tmp_path / "ground")
    errors = [r for r in records if r["kind"] == "event" and r["code"] == "input_error"]
    for name, words in bad.items():
        hits = [e["text"] for e in errors if name in e["text"]]
        assert len(hits) == 1, (name, [e["text"] for e in errors])
        assert all(w in hits[0] for w in words), (name, hits[0])
    assert len(errors) == len(bad)
    hk = [r for r in records if r["kind"] == "housekeeping"][-1]["counters"]
    assert hk["input_errors"] == len(bad) and hk["frames_failed"] == len(bad) and hk["frames_ok"] == len(good)
    by_index = frames_by_index(records)
    assert sorted(by_index) == good and all(len(v) == 1 for v in by_index.values())
    assert report["frame_id_repeat_count"] == 0
    st = spool_state(spool)
    assert sorted(st[".failed"]) == sorted(bad) and len(st[".done"]) == len(good)
    assert not st["waiting"] and not st[".active"]
    record("rel004_bad_frames", bad_frames=len(bad), good_frames=len(good), reported=len(errors),
           counted=hk["input_errors"], restarts=sup["restarts"])


def test_rel004_model_failing_sha256_safe_mode_nothing_lost(tmp_path, procs):
    """REL-004 (model): a model file whose bytes fail the manifest's sha256 (a copy of the manifest and
    model files with one byte changed, named by model.manifest): the worker reports a model_error
    event naming the sha256 and exits EXIT_MODEL_ERROR; the supervisor goes to safe mode at once (no
    restart loop); housekeeping and events still reach the ground; the frames stay in the spool.
    Repaired and commanded out of safe mode, the loop processes every frame exactly once."""
    models = tmp_path / "models"
    shutil.copytree(REPO / "models" / "ship", models / "ship")
    shutil.copy(REPO / "models" / "manifest.json", models / "manifest.json")
    bad_file = models / "ship" / "ship_int8.onnx"
    blob = bytearray(bad_file.read_bytes())
    pos = len(blob) // 2
    blob[pos] ^= 0x01
    bad_file.write_bytes(bytes(blob))
    keygen(tmp_path / "board.key")
    gnd = Ground(tmp_path, tmp_path / "board.key")
    spool = tmp_path / "spool"
    spool.mkdir()
    pool = FramePool(tmp_path / "pool", size=3)
    for i in range(3):
        pool.add(spool, i)
    cfg = write_config(tmp_path / "m.toml", base_doc(
        tmp_path, input={"poll_s": 0.2}, uplink=uplink_doc(tmp_path),
        model={"manifest": str(models / "manifest.json"), "variant": "onnx_int8"},
        supervisor={"safe_mode_cooldown_s": 0.0}))
    down = Downlink(tmp_path / "down.bin")
    run = EdgeRun(procs, tmp_path, cfg, spool)
    err = down.wait_for(event("model_error"), what="model_error event", run=run)[0]
    assert "sha256" in err.text and "ship" in err.text, err.text
    down.wait_for(event("safe_mode_entered", "EXIT_MODEL_ERROR"), run=run)
    safe_boot = down.wait_for(event("started", "SAFE MODE"), run=run)[0].boot
    down.wait_for(lambda r: r.kind == "housekeeping" and r.boot == safe_boot, n=3,
                  what="safe-mode housekeeping", run=run)
    st = spool_state(spool)
    assert len(st["waiting"]) == 3 and not st[".done"] and not st[".failed"] and not st[".active"]
    assert not any(is_frame(r) for r in down.records())

    blob[pos] ^= 0x01   # the golden copy restored on board; the ground commands normal mode
    bad_file.write_bytes(bytes(blob))
    gnd.command("leave-safe-mode")
    down.wait_for(is_frame, n=3, what="frames after the repair", run=run)
    assert run.stop() == 0, run.tail()
    down.close()
    sup = run.report()["supervisor"]
    assert sup["safe_mode_entries"] == 1 and sup["crashes"] == 0 and sup["spawns"] == 3, sup
    assert "EXIT_MODEL_ERROR" in run.log()
    records, report = ground_decode(tmp_path / "down.bin", tmp_path / "ground")
    by_index = frames_by_index(records)
    assert sorted(by_index) == [0, 1, 2] and all(len(v) == 1 for v in by_index.values())
    assert report["frame_id_repeat_count"] == 0 and report["missing_seqs"] == 0
    assert len(spool_state(spool)[".done"]) == 3


@pytest.mark.parametrize("text, words", [
    ('[tiling]\noverlap = 32\n[detection\n', ["not valid TOML"]),
    ('[tiling]\nwide = 3\n', ["tiling.wide", "unknown key"]),
    ('[tiling]\noverlap = "wide"\n', ["tiling.overlap", "must be an integer"]),
    ('[detection]\nscore_threshold = 1.5\n', ["detection.score_threshold", "must be in"]),
    ('[supervisor]\nbackoff_factor = 0.5\n', ["supervisor.backoff_factor"]),
], ids=["bad-toml", "unknown-key", "bad-type", "bad-value", "bad-supervisor-value"])
def test_rel004_malformed_config_file_is_refused(tmp_path, procs, text, words):
    """REL-004 (config file): a malformed mission config (bad TOML, unknown key, bad value) is refused
    before anything starts: `edge run` exits 2 with one line naming the problem (the dotted key), no
    worker is started and the spool is not touched."""
    spool = tmp_path / "spool"
    spool.mkdir()
    FramePool(tmp_path / "pool", size=1).add(spool, 0)
    bad = tmp_path / "bad.toml"
    bad.write_text(text + f'[data]\ndir = "{tmp_path / "data"}"\n')
    run = EdgeRun(procs, tmp_path, bad, spool)
    assert run.wait() == 2
    err = run.log().strip()
    assert err.startswith("edge run: config error:") and len(err.splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert waiting_frames(spool) == ["f00000.raw"] and not (spool / ".active").exists()
    assert not (tmp_path / "data").exists()


def test_rel004_bad_uplinked_config_refused_loop_continues(tmp_path, procs):
    """REL-004 (uplinked config): an authentic set_config with a bad value, and one naming an unknown
    key, are refused by the board: a config_error event naming the key and the problem, counted
    (housekeeping config_errors), nothing persisted, no restart; the loop goes on with the next frame."""
    keygen(tmp_path / "board.key")
    gnd = Ground(tmp_path, tmp_path / "board.key")
    spool = tmp_path / "spool"
    spool.mkdir()
    pool = FramePool(tmp_path / "pool", size=2)
    pool.add(spool, 0)
    cfg = write_config(tmp_path / "m.toml", base_doc(tmp_path, input={"poll_s": 0.2},
                                                     uplink=uplink_doc(tmp_path)))
    down = Downlink(tmp_path / "down.bin")
    run = EdgeRun(procs, tmp_path, cfg, spool)
    down.wait_for(is_frame, run=run)
    wk = run.worker(safe=False)
    m = down.mark()
    gnd.command("set-config", "detection.score_threshold", "7")
    gnd.command("set-config", "detection.no_such_key", "1")
    e1, e2 = down.wait_for(event("config_error", "set_config refused"), start=m, n=2, run=run)
    assert "detection.score_threshold" in e1.text and "must be in" in e1.text, e1.text
    assert "detection.no_such_key" in e2.text and "unknown key" in e2.text, e2.text
    pool.add(spool, 1)
    down.wait_for(is_frame, n=2, what="the next frame", run=run)
    assert run.worker(safe=False).pid == wk.pid          # the same worker: no restart
    assert run.stop() == 0, run.tail()
    down.close()
    assert not (tmp_path / "data" / "state" / "config_overrides.json").exists()
    records, _ = ground_decode(tmp_path / "down.bin", tmp_path / "ground")
    assert hk_counter_total(records, "config_errors") == 2
    assert run.report()["supervisor"]["spawns"] == 1
    assert sorted(frames_by_index(records)) == [0, 1]


def test_rel004_broken_persisted_config_safe_mode_still_reports(tmp_path, procs):
    """REL-004 (persisted config): uplinked config changes that no longer validate (here a stored
    override out of range): the worker exits EXIT_CONFIG_ERROR, the supervisor goes to safe mode at
    once, and the safe-mode worker still reaches the ground (it runs without the uplinked changes and
    says so: a config_error event, counted; housekeeping goes on); the ground's fix (set_config) and
    leave-safe-mode bring the loop back with the fixed value, and no frame is lost."""
    keygen(tmp_path / "board.key")
    gnd = Ground(tmp_path, tmp_path / "board.key")
    state = tmp_path / "data" / "state"
    state.mkdir(parents=True)
    (state / "config_overrides.json").write_text('{"detection.score_threshold": 7}')
    spool = tmp_path / "spool"
    spool.mkdir()
    pool = FramePool(tmp_path / "pool", size=2)
    for i in range(2):
        pool.add(spool, i)
    cfg = write_config(tmp_path / "m.toml", base_doc(tmp_path, input={"poll_s": 0.2},
                                                     uplink=uplink_doc(tmp_path)))
    down = Downlink(tmp_path / "down.bin")
    run = EdgeRun(procs, tmp_path, cfg, spool)
    down.wait_for(event("safe_mode_entered", "EXIT_CONFIG_ERROR"), run=run)
    e = down.wait_for(event("config_error", "detection.score_threshold"), run=run)[0]
    assert "must be in" in e.text and "ignored" in e.text, e.text
    down.wait_for(lambda r: r.kind == "housekeeping" and r.boot == e.boot, n=2, run=run)
    assert len(waiting_frames(spool)) == 2 and not any(is_frame(r) for r in down.records())

    m = down.mark()
    gnd.command("set-config", "detection.score_threshold", "0.4")
    down.wait_for(event("started", "accepted"), start=m, run=run)
    gnd.command("leave-safe-mode")
    frames = down.wait_for(is_frame, n=2, run=run)
    assert json.loads((state / "config_overrides.json").read_text()) == {"detection.score_threshold": 0.4}
    assert all(float(np.min(f.scores)) >= 0.4 - 1 / 255 for f in frames if len(f.scores))
    assert run.stop() == 0, run.tail()
    down.close()
    records, _ = ground_decode(tmp_path / "down.bin", tmp_path / "ground")
    assert hk_counter_total(records, "config_errors") >= 1
    assert sorted(frames_by_index(records)) == [0, 1]


# ---- REL-005 ------------------------------------------------------------------------------------------

def test_rel005_uplinked_config_change_restarts_worker_with_new_value(tmp_path, procs):
    """REL-005: an authentic set_config (detection.score_threshold 0.5 -> 0.1) is accepted: the
    override is persisted (state/config_overrides.json), the worker exits EXIT_RESTART and is started
    again at once -- not a failure (no restart counted, no worker_restart event, no backoff) -- and
    the new value is in effect: the same scenes give more detections, with scores below the old
    threshold; it stays in effect for the next `edge run`."""
    keygen(tmp_path / "board.key")
    gnd = Ground(tmp_path, tmp_path / "board.key")
    spool = tmp_path / "spool"
    spool.mkdir()
    pool = FramePool(tmp_path / "pool", size=3)
    for i in range(3):
        pool.add(spool, i, seed=i)
    cfg = write_config(tmp_path / "m.toml", base_doc(tmp_path, input={"poll_s": 0.2},
                                                     uplink=uplink_doc(tmp_path)))
    down = Downlink(tmp_path / "down.bin")
    run = EdgeRun(procs, tmp_path, cfg, spool)
    before = down.wait_for(is_frame, n=3, run=run)
    wk = run.worker(safe=False)
    boot = down.wait_for(event("started", "ship/"), run=run)[0].boot
    m = down.mark()
    t = time.monotonic()
    gnd.command("set-config", "detection.score_threshold", "0.1")
    down.wait_for(event("started", "detection.score_threshold = 0.1 accepted"), start=m, run=run)
    down.wait_for(lambda r: r.kind == "event" and r.code == "started" and "ship/" in r.text
                  and r.boot == boot + 1, start=m, what="the restarted worker", run=run)
    restart_s = time.monotonic() - t
    assert run.worker(safe=False).pid != wk.pid
    for i in range(3, 6):
        pool.add(spool, i, seed=i - 3)
    after = down.wait_for(is_frame, start=m, n=3, run=run)
    assert run.stop() == 0, run.tail()

    n_before = [len(r.scores) for r in before]
    n_after = [len(r.scores) for r in after]
    assert all(a >= b for a, b in zip(n_after, n_before)) and sum(n_after) > sum(n_before), (n_before, n_after)
    assert min(float(np.min(r.scores)) for r in before if len(r.scores)) >= 0.5 - 1 / 255
    assert min(float(np.min(r.scores)) for r in after if len(r.scores)) < 0.5
    overrides = tmp_path / "data" / "state" / "config_overrides.json"
    assert json.loads(overrides.read_text()) == {"detection.score_threshold": 0.1}
    sup = run.report()["supervisor"]
    assert sup["restarts"] == 0 and sup["crashes"] == 0 and sup["deadline_kills"] == 0, sup
    assert sup["spawns"] == 2 and sup["safe_mode_entries"] == 0
    assert "EXIT_RESTART" in run.log()

    # persisted: a new `edge run` (a reboot) still uses 0.1
    pool.add(spool, 6, seed=0)
    cfg2 = write_config(tmp_path / "m2.toml", base_doc(tmp_path, uplink=uplink_doc(tmp_path)))
    run2 = EdgeRun(procs, tmp_path, cfg2, spool)
    assert run2.wait() == 0, run2.tail()
    down.close()
    records, report = ground_decode(tmp_path / "down.bin", tmp_path / "ground")
    assert not [r for r in records if r["kind"] == "event" and r["code"] == "worker_restart"]
    assert hk_counter_total([r for r in records if r["kind"] == "housekeeping"][-1:], "restarts") == 0
    by_index = frames_by_index(records)
    assert sorted(by_index) == list(range(7)) and report["frame_id_repeat_count"] == 0
    assert len(by_index[6][0]["detections"]) == n_after[0]
    record("rel005_set_config", detections_before=n_before, detections_after=n_after,
           command_to_restarted_worker_s=round(restart_s, 2))


# ---- REL-006 ------------------------------------------------------------------------------------------

_FAKE_DRIVER = '''
"""Test-only: a watchdog driver behind fcntl.ioctl for the file named by $EDGE_TEST_FAKE_WDT, in the
process that imports it (sitecustomize): the supervisor's hardware path runs against a plain file."""
import fcntl, os, struct, time

_DEV = os.environ.get("EDGE_TEST_FAKE_WDT")
_real = fcntl.ioctl
_NAMES = {0x80285700: "GETSUPPORT", 0x80045705: "KEEPALIVE", 0xC0045706: "SETTIMEOUT",
          0x80045707: "GETTIMEOUT"}
_state = {"timeout": 60}


def _ioctl(fd, request, arg=0, mutate=True):
    try:
        ours = _DEV is not None and os.path.samefile(f"/proc/self/fd/{fd}", _DEV)
    except OSError:
        ours = False
    if not ours:
        return _real(fd, request, arg, mutate)
    name = _NAMES.get(request)
    if name is None:
        raise OSError(25, "Inappropriate ioctl for device")
    if name == "GETSUPPORT":
        arg[:] = struct.pack("=II32s", 0x8180, 1, b"fake-wdt")
    elif name == "SETTIMEOUT":
        _state["timeout"] = struct.unpack("i", arg)[0]
    if name in ("SETTIMEOUT", "GETTIMEOUT"):
        arg[:] = struct.pack("i", _state["timeout"])
    with open(_DEV + ".calls", "a") as f:
        f.write(f"{time.monotonic():.6f} {name} {_state['timeout']}\\n")
    return 0


if _DEV:
    fcntl.ioctl = _ioctl
'''


@pytest.fixture
def short_dir():
    """A directory with a short path (event texts are cut at 160 bytes: the device path shows whole)."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="edge-wd-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_rel006_watchdog_device_path_and_software_fallback(tmp_path, procs, short_dir):
    """REL-006: the watchdog device of [watchdog] end to end. Without a watchdog device (the path does
    not exist, or is a plain file: not a character device, no watchdog ioctl), `edge run` runs with the
    software fallback and says so: "NO HARDWARE WATCHDOG" in its log and a watchdog event ("no
    hardware watchdog: software fallback (...)") at the ground; the plain file is never written. With
    a device that speaks the watchdog API (a test driver behind ioctl on the same plain file) the
    supervisor sets the timeout, pets it while the worker is healthy and ends with the magic close
    'V'; a supervisor killed outright leaves it armed (no 'V'). (The real i6300esb comes with the
    QEMU issue.)"""
    spool = tmp_path / "spool"
    spool.mkdir()
    pool = FramePool(tmp_path / "pool", size=2)
    missing = short_dir / "nowdt"
    fake = short_dir / "watchdog0"
    fake.write_bytes(b"")
    cases = [(missing, "No such file or directory"), (fake, "not a watchdog device")]
    for k, (device, why) in enumerate(cases):
        pool.add(spool, k)
        out = tmp_path / f"down{k}.bin"
        cfg = write_config(tmp_path / f"m{k}.toml", base_doc(
            tmp_path, watchdog={"device": str(device), "timeout_s": 20.0},
            downlink={"output": str(out)}))
        run = EdgeRun(procs, tmp_path, cfg, spool)
        assert run.wait() == 0, run.tail()
        assert "NO HARDWARE WATCHDOG" in run.log() and why in run.log()
        assert run.report()["supervisor"]["watchdog_hardware"] is False
        records, _ = ground_decode(out, tmp_path / f"ground{k}")
        wd = [r["text"] for r in records if r["kind"] == "event" and r["code"] == "watchdog"]
        assert len(wd) == 1 and wd[0].startswith("no hardware watchdog: software fallback"), wd
        assert str(device) in wd[0] and why in wd[0], wd
        assert len(frames_by_index(records)) == 1
    assert fake.read_bytes() == b""

    # the hardware path: the test driver answers the watchdog ioctls on the same file
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_FAKE_DRIVER)
    env = {"EDGE_TEST_FAKE_WDT": str(fake),
           "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for i in range(2, 8):
        pool.add(spool, i)
    cfg = write_config(tmp_path / "hw.toml", base_doc(
        tmp_path, watchdog={"device": str(fake), "timeout_s": 20.0, "pet_interval_s": 0.05},
        downlink={"output": str(tmp_path / "down-hw.bin")}))
    run = EdgeRun(procs, tmp_path, cfg, spool, env=env)
    assert run.wait() == 0, run.tail()
    assert "NO HARDWARE WATCHDOG" not in run.log()
    assert run.report()["supervisor"]["watchdog_hardware"] is True
    calls = [ln.split()[1:] for ln in Path(str(fake) + ".calls").read_text().splitlines()]
    assert ["SETTIMEOUT", "20"] in calls and calls.count(["KEEPALIVE", "20"]) >= 1, calls
    assert fake.read_bytes() == b"V"            # keepalives by ioctl; the orderly end: magic close
    records, _ = ground_decode(tmp_path / "down-hw.bin", tmp_path / "ground-hw")
    assert not [r for r in records if r["kind"] == "event" and r["code"] == "watchdog"]
    assert len(frames_by_index(records)) == 6

    # a supervisor that dies leaves the watchdog armed: no magic close
    fake.write_bytes(b"")
    pool.add(spool, 8)
    cfg = write_config(tmp_path / "hw2.toml", base_doc(
        tmp_path, input={"poll_s": 0.2},
        watchdog={"device": str(fake), "timeout_s": 20.0, "pet_interval_s": 0.05},
        downlink={"output": str(tmp_path / "down-hw2.bin")}))
    run = EdgeRun(procs, tmp_path, cfg, spool, env=env)
    run.worker(safe=False)
    deadline = time.monotonic() + WAIT_S
    while not (spool / ".done" / "f00008.raw").exists():
        assert time.monotonic() < deadline, run.tail()
        time.sleep(0.05)
    os.kill(run.proc.pid, signal.SIGKILL)
    run.wait()
    assert fake.read_bytes() == b""
