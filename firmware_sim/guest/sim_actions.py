"""Scenario faults inside the emulated board (standard library only; started by /sbin/orbit-init).

    python3 sim_actions.py --boot N --supervisor PID

Reads /data/sim/scenario.json: {"actions": [{"boot": 1, "when": {...}, "do": "...", ...}, ...]} and, for
the actions of this boot, waits for their condition, then acts, logging one line per action to the
console ("sim-actions: ..."), which the host harness reads from the serial log.

    when  {"done_frames": K}     K frames of the spool are in .done/
          {"regions": true}      the flight worker has written its protected-region map
          {"after_s": S}         S seconds after this script started
    do    "stop_worker"          SIGSTOP the supervisor's worker (a hung flight loop)
          "stop_supervisor"      SIGSTOP the supervisor itself (a hung supervisor: only the hardware
                                 watchdog can bring the board back)
          "flip_bits"            `edge inject flip` N single-bit flips into the worker's protected
                                 regions through /proc/PID/mem ("count", "seed")
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DATA = Path("/data")
SPOOL_DONE = DATA / "spool" / ".done"
REGIONS = DATA / "edge" / "state" / "regions.json"


def say(msg: str) -> None:
    print(f"sim-actions: {msg}", flush=True)


def worker_of(supervisor: int) -> int | None:
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def ready(when: dict, t0: float, supervisor: int) -> bool:
    if "done_frames" in when:
        n = len([p for p in SPOOL_DONE.glob("*") if not p.name.endswith(".json")]) if SPOOL_DONE.exists() else 0
        if n < when["done_frames"]:
            return False
    if when.get("regions"):
        try:
            pid = json.loads(REGIONS.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return False
        if pid != worker_of(supervisor):
            return False
    if time.monotonic() - t0 < when.get("after_s", 0):
        return False
    return True


def act(action: dict, supervisor: int) -> None:
    do = action["do"]
    if do == "stop_worker":
        pid = worker_of(supervisor)
        if pid:
            os.kill(pid, signal.SIGSTOP)
        say(f"SIGSTOP worker {pid}")
    elif do == "stop_supervisor":
        os.kill(supervisor, signal.SIGSTOP)
        say(f"SIGSTOP supervisor {supervisor}")
    elif do == "flip_bits":
        cmd = [sys.executable, "-m", "edge", "inject", "flip", "--data-dir", str(DATA / "edge"),
               "--count", str(action.get("count", 10)), "--seed", str(action.get("seed", 1))]
        res = subprocess.run(cmd, capture_output=True, text=True)
        flips = sum(1 for line in res.stdout.splitlines() if line.strip())
        say(f"flip_bits rc {res.returncode}: {flips} action line(s) {res.stderr.strip()[-200:]}")
    else:
        say(f"unknown action {do!r}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boot", type=int, required=True)
    ap.add_argument("--supervisor", type=int, required=True)
    args = ap.parse_args()
    try:
        scenario = json.loads((DATA / "sim" / "scenario.json").read_text())
    except (OSError, ValueError) as e:
        say(f"no scenario: {e}")
        return 0
    todo = [a for a in scenario.get("actions", []) if a.get("boot", 1) == args.boot]
    t0 = time.monotonic()
    while todo:
        if not Path(f"/proc/{args.supervisor}").exists():
            say(f"supervisor gone; {len(todo)} action(s) not done")
            return 0
        for a in list(todo):
            if ready(a.get("when", {}), t0, args.supervisor):
                act(a, args.supervisor)
                todo.remove(a)
        time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
