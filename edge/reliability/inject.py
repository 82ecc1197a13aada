"""Fault injection: bit flips in a running process's protected memory, worker signals, journal damage.

Memory: the flight process writes its region map (state/regions.json: pid and, per protected
region, name, kind, address, length; edge.reliability.regions.write_region_map). flip_bits(pid,
address, bits) reads each byte of /proc/PID/mem, XORs the chosen bits and writes it back (needs
ptrace rights on the target: root, or the target's parent under Yama scope 1). Targets:
    single   one (region, byte, bit), uniform over all protected bytes (regions weighted by size);
    double   two distinct bits of ONE 64-bit word (the SECDED word: 8-byte aligned from the region
             start; a short tail word only offers its real bits), words uniform over all words;
    burst    n distinct bits anywhere in one block (3+ bits: the CRC's job);
    explicit a region name, byte offset and bit.
Worker: SIGKILL, SIGSTOP, SIGCONT by pid. Journal: random byte corruptions (XOR with a random
nonzero byte) or a truncation at a random offset of one data_dir/journal/seg-*.log segment.

Every action returns a dict (one JSON line on the command line) saying exactly what it did, so a
campaign can check the outcome. The test API is the Injector class and the module functions;
`edge inject` (add_inject_parser) is a thin shell over them.
"""
from __future__ import annotations

import bisect
import json
import os
import random
import signal as _signal
import sys
import time
from pathlib import Path

#: The SECDED data word (edge.reliability.scrubber.WORD_BYTES).
WORD_BYTES = 8
SIGNALS = {"kill": _signal.SIGKILL, "stop": _signal.SIGSTOP, "cont": _signal.SIGCONT}
JOURNAL_GLOB = "seg-*.log"


class InjectError(RuntimeError):
    """An injection could not be carried out (no target, bad map, no access)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


# ---- memory ------------------------------------------------------------------------------------------

def flip_bits(pid: int, address: int, bits) -> dict:
    """Flip `bits` (bit indices counted from `address`: bit k is bit k % 8 of byte address + k // 8)
    in process `pid` through /proc/PID/mem: read the byte, XOR, write it back."""
    bits = [int(k) for k in bits]
    masks: dict = {}
    for k in bits:
        k = int(k)
        if k < 0:
            raise ValueError(f"bit index must be >= 0, got {k}")
        masks[address + k // 8] = masks.get(address + k // 8, 0) ^ (1 << (k % 8))
    changes = []
    try:
        fd = os.open(f"/proc/{int(pid)}/mem", os.O_RDWR)
    except OSError as e:
        raise InjectError(f"cannot open /proc/{pid}/mem: {e.strerror}") from e
    try:
        for addr in sorted(masks):
            try:
                before = os.pread(fd, 1, addr)
                if len(before) != 1:
                    raise OSError(0, "short read")
                after = before[0] ^ masks[addr]
                os.pwrite(fd, bytes([after]), addr)
            except OSError as e:
                raise InjectError(f"pid {pid}: cannot flip the byte at {addr:#x}: "
                                  f"{e.strerror or e}") from e
            changes.append({"address": addr, "before": before[0], "after": after})
    finally:
        os.close(fd)
    return {"action": "flip", "pid": int(pid), "address": int(address),
            "bits": sorted(bits), "bytes": changes, "time_ms": _now_ms()}


def load_region_map(path) -> dict:
    """The region map a flight process wrote (see edge.reliability.regions.write_region_map)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InjectError(f"cannot read the region map {path}: {e}") from e
    try:
        int(doc["pid"])
        for r in doc["regions"]:
            str(r["name"]), int(r["address"]), int(r["length"])
    except (KeyError, TypeError, ValueError) as e:
        raise InjectError(f"region map {path}: malformed ({e!r})") from e
    return doc


class Injector:
    """Bit flips and signals aimed at one flight process, from its region map.

    region_map: a path or the loaded document; pid: the target (default: the map's pid);
    seed: for the random choices (a campaign is repeatable).
    """

    def __init__(self, region_map, *, pid: int | None = None, seed=None):
        self.map = region_map if isinstance(region_map, dict) else load_region_map(region_map)
        self.pid = int(self.map["pid"] if pid is None else pid)
        self.rng = random.Random(seed)
        self.regions = [r for r in self.map["regions"] if int(r["length"]) > 0]
        if not self.regions:
            raise InjectError("the region map lists no protected bytes")
        self._by_name = {r["name"]: r for r in self.regions}
        self._byte_ends, self._word_ends = [], []
        nbytes = nwords = 0
        for r in self.regions:
            nbytes += int(r["length"])
            nwords += -(-int(r["length"]) // WORD_BYTES)
            self._byte_ends.append(nbytes)
            self._word_ends.append(nwords)
        self.protected_bytes, self.protected_words = nbytes, nwords

    # ---- choosing targets (nothing is written) ----------------------------------------------------
    def target(self, region: str, bits) -> dict:
        """An explicit target: bit indices counted from the start of `region`."""
        if region not in self._by_name:
            raise InjectError(f"no region {region!r} in the map (have {len(self.regions)})")
        r = self._by_name[region]
        bits = sorted(int(b) for b in bits)
        if not bits or bits[0] < 0 or bits[-1] >= 8 * int(r["length"]):
            raise InjectError(f"{region}: bits {bits} outside 0..{8 * int(r['length']) - 1}")
        return {"region": region, "kind": r.get("kind"), "region_address": int(r["address"]),
                "bits": bits, "offsets": sorted({b // 8 for b in bits}),
                "words": sorted({b // 64 for b in bits})}

    def pick_single(self) -> dict:
        """One (region, byte, bit), uniform over every protected byte."""
        i = self.rng.randrange(self.protected_bytes)
        k = bisect.bisect_right(self._byte_ends, i)
        offset = i - (self._byte_ends[k - 1] if k else 0)
        return self.target(self.regions[k]["name"], [offset * 8 + self.rng.randrange(8)])

    def pick_double(self) -> dict:
        """Two distinct bits of one 64-bit word, words uniform over every protected word."""
        i = self.rng.randrange(self.protected_words)
        k = bisect.bisect_right(self._word_ends, i)
        word = i - (self._word_ends[k - 1] if k else 0)
        r = self.regions[k]
        n_bits = 8 * min(WORD_BYTES, int(r["length"]) - word * WORD_BYTES)
        if n_bits < 2:  # a 1-byte region still has 8 bits; this cannot happen, but say so if it does
            raise InjectError(f"{r['name']}: word {word} has fewer than 2 bits")
        return self.target(r["name"], [word * 64 + b for b in self.rng.sample(range(n_bits), 2)])

    def pick_burst(self, n_bits: int = 3, block_bytes: int | None = None) -> dict:
        """n distinct bits inside one block of a region picked by size (block_bytes: the map's)."""
        i = self.rng.randrange(self.protected_bytes)
        k = bisect.bisect_right(self._byte_ends, i)
        r = self.regions[k]
        length = int(r["length"])
        block = int(block_bytes or r.get("block_bytes") or 4096)
        offset = i - (self._byte_ends[k - 1] if k else 0)
        start = offset // block * block
        span = 8 * (min(start + block, length) - start)
        if n_bits > span:
            raise InjectError(f"{r['name']}: a block of {span} bits cannot take {n_bits} flips")
        return self.target(r["name"], [start * 8 + b for b in self.rng.sample(range(span), n_bits)])

    # ---- acting ------------------------------------------------------------------------------------------
    def inject(self, target: dict) -> dict:
        """Flip the bits of a target (from pick_* or target()) in the process."""
        out = flip_bits(self.pid, target["region_address"], target["bits"])
        out.update({k: target[k] for k in ("region", "kind", "offsets", "words")})
        return out

    def flip_single(self) -> dict:
        return {**self.inject(self.pick_single()), "mode": "single"}

    def flip_double(self) -> dict:
        return {**self.inject(self.pick_double()), "mode": "double"}

    def flip_burst(self, n_bits: int = 3) -> dict:
        return {**self.inject(self.pick_burst(n_bits)), "mode": "burst"}

    def signal(self, action: str) -> dict:
        return signal_worker(self.pid, action)


# ---- the worker ---------------------------------------------------------------------------------------

def signal_worker(pid: int, action: str) -> dict:
    """SIGKILL ("kill"), SIGSTOP ("stop") or SIGCONT ("cont") process `pid`."""
    if action not in SIGNALS:
        raise InjectError(f"signal action must be one of {sorted(SIGNALS)}, got {action!r}")
    sig = SIGNALS[action]
    try:
        os.kill(int(pid), sig)
    except OSError as e:
        raise InjectError(f"cannot send {sig.name} to pid {pid}: {e.strerror}") from e
    return {"action": "signal", "signal": sig.name, "pid": int(pid), "time_ms": _now_ms()}


# ---- the journal ---------------------------------------------------------------------------------------

def journal_segments(data_dir) -> list:
    """The journal's segment files (data_dir/journal/seg-*.log), in creation order."""
    return sorted((Path(data_dir) / "journal").glob(JOURNAL_GLOB))


def _pick_segment(data_dir, rng, segment) -> Path:
    if segment is not None:
        path = Path(segment)
        if not path.is_absolute() and path.parent == Path("."):
            path = Path(data_dir) / "journal" / path
        if not path.is_file():
            raise InjectError(f"no journal segment {path}")
        return path
    candidates = [p for p in journal_segments(data_dir) if p.stat().st_size > 0]
    if not candidates:
        raise InjectError(f"no non-empty journal segment under {Path(data_dir) / 'journal'}")
    return rng.choice(candidates)


def corrupt_journal(data_dir, *, n_bytes: int = 1, rng=None, segment=None) -> dict:
    """XOR n_bytes distinct random bytes of one segment (random, or `segment`) with random
    nonzero values, in place (fsync'ed)."""
    rng = rng or random.Random()
    path = _pick_segment(data_dir, rng, segment)
    size = path.stat().st_size
    if size == 0:
        raise InjectError(f"{path} is empty")
    offsets = sorted(rng.sample(range(size), min(int(n_bytes), size)))
    changes = []
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            before = f.read(1)[0]
            after = before ^ rng.randrange(1, 256)
            f.seek(off)
            f.write(bytes([after]))
            changes.append({"offset": off, "before": before, "after": after})
        f.flush()
        os.fsync(f.fileno())
    return {"action": "journal_corrupt", "segment": path.name, "path": str(path), "size": size,
            "changes": changes, "time_ms": _now_ms()}


def truncate_journal(data_dir, *, rng=None, segment=None, offset: int | None = None) -> dict:
    """Cut one segment (random, or `segment`) at a random offset in [0, size) (or `offset`)."""
    rng = rng or random.Random()
    path = _pick_segment(data_dir, rng, segment)
    size = path.stat().st_size
    cut = rng.randrange(size) if offset is None else int(offset)
    if not 0 <= cut <= size:
        raise InjectError(f"{path}: cannot truncate a {size}-byte segment at {cut}")
    os.truncate(path, cut)
    return {"action": "journal_truncate", "segment": path.name, "path": str(path),
            "size_before": size, "size_after": cut, "time_ms": _now_ms()}


# ---- command line: `edge inject` ---------------------------------------------------------------------

def _map_path(args) -> Path:
    return Path(args.map) if args.map else Path(args.data_dir) / "state" / "regions.json"


def _cmd_flip(args) -> list:
    inj = Injector(_map_path(args), pid=args.pid, seed=args.seed)
    if args.region is not None:
        if args.offset is None or args.bit is None:
            raise InjectError("--region needs --offset BYTE and --bit 0..7 (repeat --bit for more)")
        bits = [args.offset * 8 + b for b in args.bit]
        return [{**inj.inject(inj.target(args.region, bits)), "mode": "explicit"}]
    act = {"single": inj.flip_single, "double": inj.flip_double,
           "burst": lambda: inj.flip_burst(args.burst_bits)}[args.mode]
    return [act() for _ in range(args.count)]


def _cmd_signal(args) -> list:
    pid = args.pid if args.pid is not None else load_region_map(_map_path(args))["pid"]
    return [signal_worker(pid, args.action)]


def _cmd_journal(args) -> list:
    rng = random.Random(args.seed)
    if args.action == "corrupt":
        return [corrupt_journal(args.data_dir, n_bytes=args.bytes, rng=rng, segment=args.segment)
                for _ in range(args.count)]
    return [truncate_journal(args.data_dir, rng=rng, segment=args.segment, offset=args.offset)
            for _ in range(args.count)]


def _inject(args) -> int:
    try:
        for line in args.inject_func(args):
            print(json.dumps(line), flush=True)
    except (InjectError, ValueError) as e:
        print(json.dumps({"action": args.inject_command, "error": str(e), "time_ms": _now_ms()}),
              flush=True)
        print(f"edge inject: {e}", file=sys.stderr)
        return 1
    return 0


def add_inject_parser(subparsers):
    """Add `inject` (fault injection for tests and campaigns) to an argparse subparsers object."""
    p = subparsers.add_parser("inject", help="fault injection: flip bits in a running flight "
                                             "process, kill/stop the worker, damage the journal")
    sub = p.add_subparsers(dest="inject_command", required=True)

    def common(sp):
        sp.add_argument("--data-dir", default="edge-data",
                        help="flight data directory (state/regions.json, journal/)")
        sp.add_argument("--seed", type=int, help="random seed (repeatable campaigns)")

    flip = sub.add_parser("flip", help="flip bits in protected regions through /proc/PID/mem")
    common(flip)
    flip.add_argument("--map", help="region map (default: DATA_DIR/state/regions.json)")
    flip.add_argument("--pid", type=int, help="target process (default: the map's pid)")
    flip.add_argument("--mode", choices=["single", "double", "burst"], default="single",
                      help="single: one random bit; double: two bits of one 64-bit word; "
                           "burst: --burst-bits bits in one block")
    flip.add_argument("--count", type=int, default=1, help="how many injections")
    flip.add_argument("--burst-bits", type=int, default=3, help="bits per burst (default 3)")
    flip.add_argument("--region", help="explicit target: region name (with --offset and --bit)")
    flip.add_argument("--offset", type=int, help="explicit target: byte offset in the region")
    flip.add_argument("--bit", type=int, action="append", choices=range(8), metavar="0..7",
                      help="explicit target: bit of that byte (repeatable)")
    flip.set_defaults(func=_inject, inject_func=_cmd_flip)

    sig = sub.add_parser("signal", help="SIGKILL / SIGSTOP / SIGCONT the worker")
    common(sig)
    sig.add_argument("action", choices=sorted(SIGNALS))
    sig.add_argument("--pid", type=int, help="target process (default: the region map's pid)")
    sig.add_argument("--map", help="region map (default: DATA_DIR/state/regions.json)")
    sig.set_defaults(func=_inject, inject_func=_cmd_signal)

    jr = sub.add_parser("journal", help="corrupt or truncate journal segments")
    common(jr)
    jr.add_argument("action", choices=["corrupt", "truncate"])
    jr.add_argument("--count", type=int, default=1, help="how many actions")
    jr.add_argument("--bytes", type=int, default=1, help="corrupt: bytes per action")
    jr.add_argument("--segment", help="a segment file name (default: a random non-empty one)")
    jr.add_argument("--offset", type=int, help="truncate: cut here (default: random)")
    jr.set_defaults(func=_inject, inject_func=_cmd_journal)
    return p


__all__ = ["InjectError", "Injector", "SIGNALS", "add_inject_parser", "corrupt_journal",
           "flip_bits", "journal_segments", "load_region_map", "signal_worker", "truncate_journal"]
