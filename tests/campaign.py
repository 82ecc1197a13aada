"""Fault-injection campaigns (issue 5, item 6): how big a run is, and where its figures go.

    EDGE_CAMPAIGN          unset or "ci": the small counts `make test` runs (repeatable, seconds);
                           "full": the issue's full counts (`make campaign`).
    EDGE_CAMPAIGN_RESULTS  a file: record() appends one JSON line per campaign to it (the campaign
                           target collects them for docs/reliability.md).

    count(ci_n, full_n)    the count for the current scale;
    record(name, **figs)   appends {"campaign", "scale", "time", **figs} to EDGE_CAMPAIGN_RESULTS
                           when set, and always prints a one-line summary (pytest -s shows it).
"""
from __future__ import annotations

import json
import os
import time

SCALES = ("ci", "full")


def scale() -> str:
    """"ci" (the default, also for an empty EDGE_CAMPAIGN) or "full"."""
    value = os.environ.get("EDGE_CAMPAIGN", "").strip().lower() or "ci"
    if value not in SCALES:
        raise ValueError(f"EDGE_CAMPAIGN must be one of {SCALES} (or unset), got {value!r}")
    return value


def full() -> bool:
    return scale() == "full"


def count(ci_n: int, full_n: int) -> int:
    """ci_n in ci mode, full_n in full mode."""
    return full_n if full() else ci_n


def record(name: str, **figures) -> dict:
    """One campaign's figures: a JSON line in $EDGE_CAMPAIGN_RESULTS (when set) and a printed summary."""
    doc = {"campaign": name, "scale": scale(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
    path = os.environ.get("EDGE_CAMPAIGN_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(doc, sort_keys=False, default=str) + "\n")
    print(f"[campaign {name} {doc['scale']}] "
          + " ".join(f"{k}={_short(v)}" for k, v in figures.items()), flush=True)
    return doc


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


class Stopwatch:
    """with Stopwatch() as sw: ...; sw.s is the wall time in seconds."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.s = 0.0
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


__all__ = ["SCALES", "Stopwatch", "count", "full", "record", "scale"]
