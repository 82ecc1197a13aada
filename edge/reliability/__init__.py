"""Reliability: the pieces around the flight loop that keep it running and say so.

    contract.py     the worker <-> supervisor contract: exit codes (EXIT_OK, EXIT_CONFIG_ERROR,
                    EXIT_LEAVE_SAFE_MODE, EXIT_MODEL_ERROR), the worker's CLI flags (--heartbeat-fd,
                    --safe-mode) and their parser
    heartbeat.py    the worker -> supervisor liveness channel: fixed-size binary messages over a pipe;
                    HeartbeatWriter (worker side, never blocks) and HeartbeatReader (supervisor side)
    watchdog.py     the Linux watchdog API (/dev/watchdog: WDIOC_SETTIMEOUT, WDIOC_KEEPALIVE, magic
                    close) and a software fallback thread when no device exists
    supervisor.py   runs the flight loop as a worker process: per-stage deadlines, kill and restart with
                    backoff, safe mode after a restart storm, the watchdog petted only while the worker is
                    healthy, events into the journal
    scrubber.py     memory scrubber: SECDED parity per word and CRC32C per block over protected regions
    regions.py      the protected regions of a running flight loop, their golden sources, the region map
    inject.py       fault injection: bit flips in a running process's memory, worker signals, journal
                    damage

Import the submodule you need: the worker imports only contract and heartbeat (standard library only);
the supervisor imports no model runtime.
"""
