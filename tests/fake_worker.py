"""A stand-in flight worker for tests/test_supervisor.py: speaks the heartbeat protocol and does what
its plan says. Standard library + edge.reliability only, so it starts in a few tens of ms.

    fake_worker.py --runs FILE --plan "RUN;RUN;..." [--safe-plan "RUN;..."]
                   [--heartbeat-fd N] [--safe-mode]

Every start appends "<mode> <pid>" to FILE (mode: normal or safe); the n-th start in a mode runs the
n-th RUN of that mode's plan (the last one repeats). A RUN is comma-separated steps:

    beat:N[:INTERVAL[:STAGE]]   N beats of STAGE (infer), INTERVAL s apart (0.01)
    ready                       a READY message
    sleep:STAGE:SECONDS         beat STAGE, then sleep inside it
    loop:STAGE:INTERVAL         beat STAGE every INTERVAL s, forever (until a signal)
    hang                        stop beating, sleep forever
    stop                        SIGSTOP itself
    safe_request                ask for safe mode, then keep beating "idle" every 10 ms
    lock:PATH                   take an exclusive flock on PATH (a journal's lock file) and keep it
    exit:CODE                   exit with CODE
    signal:NUM                  die by signal NUM

Every run first beats "start" (as the real worker does before it loads the model).
"""
from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.reliability.contract import parse_worker_args  # noqa: E402
from edge.reliability.heartbeat import HeartbeatWriter  # noqa: E402


def run_steps(steps: list[str], hb: HeartbeatWriter, held: list) -> None:
    for step in steps:
        op, *args = step.split(":")
        if op == "beat":
            n = int(args[0])
            interval = float(args[1]) if len(args) > 1 else 0.01
            stage = args[2] if len(args) > 2 else "infer"
            for i in range(n):
                hb.beat(stage, frame_id=i + 1)
                time.sleep(interval)
        elif op == "ready":
            hb.ready()
        elif op == "sleep":
            hb.beat(args[0])
            time.sleep(float(args[1]))
        elif op == "loop":
            while True:
                hb.beat(args[0])
                time.sleep(float(args[1]))
        elif op == "hang":
            while True:
                time.sleep(3600)
        elif op == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif op == "safe_request":
            hb.request_safe_mode()
            while True:
                hb.beat("idle")
                time.sleep(0.01)
        elif op == "lock":
            fd = os.open(args[0], os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(fd)
        elif op == "exit":
            os._exit(int(args[0]))
        elif op == "signal":
            os.kill(os.getpid(), int(args[0]))
            time.sleep(10)
        else:
            raise SystemExit(f"fake_worker: unknown step {step!r}")


def main(argv: list[str]) -> None:
    wargs = parse_worker_args(argv)
    p = argparse.ArgumentParser()
    p.add_argument("--runs", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--safe-plan", default="loop:safe:0.02")
    a = p.parse_args(wargs.rest)
    mode = "safe" if wargs.safe_mode else "normal"
    runs = Path(a.runs)
    previous = runs.read_text().split() if runs.exists() else []
    index = previous[0::2].count(mode)
    with open(runs, "a") as f:
        f.write(f"{mode} {os.getpid()}\n")
    plans = (a.safe_plan if wargs.safe_mode else a.plan).split(";")
    plan = plans[min(index, len(plans) - 1)]
    hb = HeartbeatWriter(wargs.heartbeat_fd)
    hb.beat("start")
    held: list = []
    run_steps([s for s in plan.split(",") if s], hb, held)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
