"""The flight worker: one FlightLoop run under the supervisor (edge/reliability/supervisor.py).

    python -m edge.worker [--config FILE] [--overrides JSON] [--summary FILE] [--max-frames N]
                          [--heartbeat-fd N] [--safe-mode]

The supervisor adds --heartbeat-fd (the liveness pipe) and, in safe mode, --safe-mode. The worker beats
"start" before it loads anything, then the loop beats at every stage of every tile batch. It ends with
one of the exit codes of edge/reliability/contract.py:

    EXIT_OK               the spool is done (or SIGTERM: an orderly stop after the current frame)
    EXIT_CONFIG_ERROR     the config (with the ground's uplinked changes) does not validate
    EXIT_MODEL_ERROR      the model cannot load or fails its sha256 (the loop reported it first)
    EXIT_RESTART          an uplinked config change was accepted: start again to apply it
    EXIT_ENTER_SAFE_MODE  commanded, or a protected block could not be restored
    EXIT_LEAVE_SAFE_MODE  (safe mode) an authenticated command to leave it
A crash is any other code: the supervisor restarts the worker, and the spool and the journal make
sure nothing is lost or sent twice.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time

from edge.reliability.contract import (EXIT_CONFIG_ERROR, EXIT_ENTER_SAFE_MODE, EXIT_LEAVE_SAFE_MODE,
                                      EXIT_MODEL_ERROR, EXIT_OK, EXIT_RESTART, parse_worker_args)
from edge.reliability.heartbeat import HeartbeatWriter

log = logging.getLogger("edge.worker")


def _config(args, uplinked: bool = True):
    from edge.config import apply_overrides, default_config, load_config, with_uplinked_overrides

    cfg = load_config(args.config) if args.config else default_config()
    cfg = apply_overrides(cfg, json.loads(args.overrides) if args.overrides else {})
    return with_uplinked_overrides(cfg) if uplinked else cfg


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    wa = parse_worker_args(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m edge.worker")
    ap.add_argument("--config")
    ap.add_argument("--overrides", help="JSON object of {section.key: value}")
    ap.add_argument("--summary", help="write the run summary (JSON) here at the end")
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(wa.rest)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    beat = HeartbeatWriter(wa.heartbeat_fd) if wa.heartbeat_fd is not None else None
    if beat is not None:
        beat("start")

    from edge.config import ConfigError

    config_problem = None
    try:
        cfg = _config(args)
    except (ConfigError, ValueError) as e:
        log.error("config error: %s", e)
        if not wa.safe_mode:
            return EXIT_CONFIG_ERROR
        # safe mode must reach the ground (housekeeping, downlink, uplink): without the uplinked
        # changes that broke the config, the ground can still see it and send a fix
        try:
            cfg = _config(args, uplinked=False)
        except (ConfigError, ValueError):
            return EXIT_CONFIG_ERROR
        config_problem = f"safe mode: uplinked config changes ignored: {e}"
    from edge.flight import FlightLoop, ModelLoadError

    stop = {"loop": None, "requested": False}

    def on_term(signum, frame):  # finish the current frame, then close orderly
        stop["requested"] = True
        if stop["loop"] is not None:
            stop["loop"].stop_requested = True

    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C at a terminal reaches the whole process group: the supervisor stops the worker orderly
    # (SIGTERM); a SIGINT here would be a crash with a traceback instead
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        loop = FlightLoop(cfg, heartbeat=beat, started_at=t_start, safe_mode=wa.safe_mode)
    except ModelLoadError as e:
        log.error("model error: %s", e)
        return EXIT_MODEL_ERROR
    stop["loop"] = loop
    loop.stop_requested = stop["requested"]
    if config_problem is not None:
        loop.counters["config_errors"] += 1
        loop._event("config_error", config_problem)
    if wa.safe_mode:
        reason = loop.run_safe()
        loop.close()
        return EXIT_LEAVE_SAFE_MODE if reason == "leave" else EXIT_OK
    try:
        loop.run(max_frames=args.max_frames)
    finally:
        loop.close()
        if args.summary:
            with open(args.summary, "w") as f:
                json.dump(loop.summary.as_dict(), f, indent=2)
    if loop.exit_action == "restart":
        return EXIT_RESTART
    if loop.exit_action == "enter_safe_mode":
        return EXIT_ENTER_SAFE_MODE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
