"""The worker <-> supervisor contract, in one place: exit codes and the worker's command line.

The supervisor starts the worker as ``worker_cmd + [HEARTBEAT_FD_FLAG, N]`` (plus SAFE_MODE_FLAG in safe
mode) with descriptor N open for writing (the heartbeat pipe, see heartbeat.py); the same number is in
the environment as HEARTBEAT_FD_ENV. The worker reports its liveness on N at every stage and ends with
one of the exit codes below. What the supervisor does with each:

    EXIT_OK               0  orderly end (spool finished, no polling): the supervisor exits 0 too and
                             disarms the watchdog (magic close)
    EXIT_CONFIG_ERROR     2  the mission config is malformed: a bad config will not fix itself, so no
                             restart loop -- safe mode at once
    EXIT_LEAVE_SAFE_MODE  3  (safe-mode worker) an authenticated command asked to leave safe mode: the
                             normal worker is started again, restart history cleared
    EXIT_MODEL_ERROR      4  the model cannot load or fails its sha256: safe mode at once
    EXIT_RESTART          5  an authenticated config change was accepted: start the worker again at
                             once (not a failure: no backoff, not counted towards safe mode)
    EXIT_ENTER_SAFE_MODE  6  an authenticated command asked for safe mode: safe mode at once
    anything else            a crash (nonzero code or death by a signal): kill-and-restart with backoff;
                             more than max_restarts within window_s -> safe mode

A safe-mode worker does no inference: housekeeping and downlink of the journal only. It beats the
"safe" stage while it waits.
"""
from __future__ import annotations

import os
from typing import NamedTuple

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2
EXIT_LEAVE_SAFE_MODE = 3
EXIT_MODEL_ERROR = 4
EXIT_RESTART = 5
EXIT_ENTER_SAFE_MODE = 6

EXIT_NAMES = {EXIT_OK: "EXIT_OK", EXIT_CONFIG_ERROR: "EXIT_CONFIG_ERROR",
              EXIT_LEAVE_SAFE_MODE: "EXIT_LEAVE_SAFE_MODE", EXIT_MODEL_ERROR: "EXIT_MODEL_ERROR",
              EXIT_RESTART: "EXIT_RESTART", EXIT_ENTER_SAFE_MODE: "EXIT_ENTER_SAFE_MODE"}
#: Exit codes after which restarting the same worker cannot help: the supervisor goes to safe mode.
EXITS_TO_SAFE_MODE = frozenset({EXIT_CONFIG_ERROR, EXIT_MODEL_ERROR})

HEARTBEAT_FD_FLAG = "--heartbeat-fd"
SAFE_MODE_FLAG = "--safe-mode"
HEARTBEAT_FD_ENV = "EDGE_HEARTBEAT_FD"


class WorkerArgs(NamedTuple):
    heartbeat_fd: int | None   # None: not supervised
    safe_mode: bool
    rest: list                 # the other arguments, in order


def parse_worker_args(argv: list[str], environ=os.environ) -> WorkerArgs:
    """Take the supervisor's flags out of a worker's argv (``--heartbeat-fd N`` or ``--heartbeat-fd=N``,
    ``--safe-mode``); the heartbeat descriptor falls back to HEARTBEAT_FD_ENV. ValueError on a bad N."""
    fd, safe, rest = None, False, []
    it = iter(argv)
    for arg in it:
        if arg == SAFE_MODE_FLAG:
            safe = True
        elif arg == HEARTBEAT_FD_FLAG or arg.startswith(HEARTBEAT_FD_FLAG + "="):
            value = arg.partition("=")[2] if "=" in arg else next(it, None)
            fd = _fd(value, HEARTBEAT_FD_FLAG)
        else:
            rest.append(arg)
    if fd is None and environ.get(HEARTBEAT_FD_ENV):
        fd = _fd(environ[HEARTBEAT_FD_ENV], HEARTBEAT_FD_ENV)
    return WorkerArgs(fd, safe, rest)


def _fd(value, name) -> int:
    try:
        fd = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: needs a file descriptor number, got {value!r}") from None
    if fd < 0:
        raise ValueError(f"{name}: needs a file descriptor number >= 0, got {fd}")
    return fd


def describe_exit(returncode: int) -> str:
    """'exit 2 (EXIT_CONFIG_ERROR)', 'exit 1', 'signal 9 (SIGKILL)' -- for events and logs."""
    if returncode < 0:
        import signal
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"signal {-returncode} ({name})"
    name = EXIT_NAMES.get(returncode)
    return f"exit {returncode}" + (f" ({name})" if name else "")


__all__ = ["EXITS_TO_SAFE_MODE", "EXIT_CONFIG_ERROR", "EXIT_ENTER_SAFE_MODE", "EXIT_LEAVE_SAFE_MODE",
           "EXIT_MODEL_ERROR", "EXIT_RESTART",
           "EXIT_NAMES", "EXIT_OK", "HEARTBEAT_FD_ENV", "HEARTBEAT_FD_FLAG", "SAFE_MODE_FLAG",
           "WorkerArgs", "describe_exit", "parse_worker_args"]
