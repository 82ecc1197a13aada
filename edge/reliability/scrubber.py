"""Memory scrubber: SECDED parity per 64-bit word and a CRC32C per block over protected regions.

A ProtectedRegion is a writable uint8 view of memory the flight software computes from (model
weights, preprocessing LUTs, the config) plus a golden source: golden(offset, length) -> the bytes
that belong there, read from a checked copy on flash (raising GoldenError when that copy fails its
own check). At registration each 64-bit word gets a SECDED (72,64) check byte
(edge.kernels.secded; the parity is kept in its own array) and each block of block_bytes a CRC32C
over its data bytes followed by its words' check bytes, so an upset in the parity array is seen by
the same fast path and corrected by SECDED like any bit of the codeword. A tail that is not a
multiple of 8 bytes is one word padded with zeros (the padding is never in memory, so never hit).

Checking block i of a region (Scrubber.check_block) gives one outcome:
    clean          the block's CRC matches: the fast path (CRC32C of the block and its check bytes);
    corrected      CRC mismatch, SECDED corrects single-bit errors in place, the CRC verifies again;
    restored       an uncorrectable word (double-bit error), or the CRC still wrong after correction
                   (3+ flips that SECDED missed or miscorrected): the block is copied from golden
                   with parity encoded from it (CRC checked before it is written and after);
    unrecoverable  golden failed too (GoldenError, or golden bytes that do not match the registered
                   CRC): reported by on_event("scrub_unrecoverable", ...) so the caller enters safe
                   mode. Counted once per block until the block verifies again.
The CRC table is itself memory: it is kept in three copies (TMR). The fast path compares with copy
0; a mismatch votes the block's three copies bitwise before anything else, and each region pass
ends by voting the whole table, so an upset in any copy is repaired (counted as metadata_repaired)
and never mistaken for a data error. The parity array protects itself (a flipped check bit is a
correctable SECDED error, covered by the block CRC).

Scrubber.step(max_bytes) walks the blocks of all regions round-robin (region by region, block by
block) from where the last step stopped; scrub_all() is one full pass; start() runs a daemon thread
that checks about budget_bytes_per_s * CHUNK_S bytes, then sleeps for the rest of that chunk's share
of the budget (never faster than the budget over any chunk; a slower CPU simply scrubs slower).
update(region, offset, data) is the only legitimate way to change protected memory: it checks the
blocks it touches, writes, and re-encodes them.

Events (record.EVENT_CODES: scrub_corrected, scrub_restored, scrub_unrecoverable) go to
on_event(code, text); counters always count, events are rate-limited: per region and code, the
first occurrence in a pass is reported at once and any further ones in one summary event when that
region's pass ends (at most two events per region and code per pass). on_event is called from the
thread that scrubs (the scrub thread, once started): a caller that journals events must hand them
to its own thread. See docs/reliability.md for the requirements and the default period.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from edge.kernels.crc32c import crc32c
from edge.kernels.secded import CODE_BITS, secded_correct, secded_encode

log = logging.getLogger("edge.scrub")

#: Bytes per SECDED data word (the (72,64) code protects 64-bit words).
WORD_BYTES = 8
#: Default CRC / restore granularity: one page. A clean block costs one CRC32C pass over it and its
#: 512 check bytes; a restore reads this much from the golden copy.
BLOCK_BYTES = 4096
#: Default scrub budget: 512 KiB/s walks the ship model's protected memory (weights + LUT + config,
#: 466-502 KB) about once a second, well inside the period the double-upset target allows
#: (T_max ~3.3 s; docs/reliability.md), at 0.06-0.2 % of one core on the dev machine.
DEFAULT_BUDGET_BYTES_PER_S = 512 * 1024
#: The scrub thread works in chunks of about this many seconds' worth of budget, then sleeps.
CHUNK_S = 0.05
#: Published LEO upset rate of COTS memory, upsets per bit per day (the derivation's input).
LEO_UPSETS_PER_BIT_DAY = 4e-7
#: Target probability per day that some word collects two upsets between two scrubs of it.
DOUBLE_UPSET_TARGET_PER_DAY = 1e-9
SECONDS_PER_DAY = 86400.0

CLEAN, CORRECTED, RESTORED, UNRECOVERABLE = "clean", "corrected", "restored", "unrecoverable"
OUTCOMES = (CLEAN, CORRECTED, RESTORED, UNRECOVERABLE)
#: Event code (edge.downlink.record.EVENT_CODES) of each outcome that is reported.
EVENT_OF = {CORRECTED: "scrub_corrected", RESTORED: "scrub_restored",
            UNRECOVERABLE: "scrub_unrecoverable"}


#: A corrected upset is routine (info); a restore is worth a look (warning); unrecoverable: error.
_LOG_LEVEL = {"scrub_corrected": logging.INFO, "scrub_restored": logging.WARNING,
              "scrub_unrecoverable": logging.ERROR}


class GoldenError(RuntimeError):
    """The golden source of a region cannot give trustworthy bytes (it failed its own check)."""


class UnrecoverableBlock(RuntimeError):
    """update() refused: a block it would re-encode holds an error that could not be repaired."""


def double_upset_per_day(n_words: int, period_s: float,
                         upset_rate: float = LEO_UPSETS_PER_BIT_DAY) -> float:
    """Probability per day that some SECDED word gets two upsets between two scrubs of period_s:
    per period N * (72 * lambda * T)**2 / 2, times the periods in a day (T in days)."""
    t_days = period_s / SECONDS_PER_DAY
    per_period = n_words * (CODE_BITS * upset_rate * t_days) ** 2 / 2
    return per_period / t_days


def max_scrub_period_s(n_words: int, target_per_day: float = DOUBLE_UPSET_TARGET_PER_DAY,
                       upset_rate: float = LEO_UPSETS_PER_BIT_DAY) -> float:
    """The longest scrub period (s) keeping double_upset_per_day(n_words, T) <= target_per_day."""
    t_days = 2 * target_per_day / (n_words * (CODE_BITS * upset_rate) ** 2)
    return t_days * SECONDS_PER_DAY


class ProtectedRegion:
    """A writable uint8 view of protected memory, its golden source and its check data.

    name: unique label (events, regions.json); view: writable C-contiguous uint8 numpy array (any
    length >= 1; reshaped to 1-D without a copy); golden: callable(offset, length) -> bytes-like of
    exactly `length` bytes, raising GoldenError when the golden source fails its check; it may have
    a release() method, called after a scrub step that read it (drop caches). kind: a label for the
    region map ("weights", "lut", "config", ...).
    """

    def __init__(self, name: str, view, golden, *, block_bytes: int = BLOCK_BYTES,
                 kind: str = "memory"):
        if not isinstance(view, np.ndarray) or view.dtype != np.uint8:
            raise TypeError(f"region {name!r}: view must be a numpy uint8 array, got "
                            f"{getattr(view, 'dtype', type(view).__name__)}")
        if not view.flags.c_contiguous or not view.flags.writeable:
            raise ValueError(f"region {name!r}: view must be C-contiguous and writable "
                             f"(it is corrected in place)")
        if view.size == 0:
            raise ValueError(f"region {name!r}: nothing to protect (empty view)")
        if not callable(golden):
            raise TypeError(f"region {name!r}: golden must be callable(offset, length) -> bytes")
        if (not isinstance(block_bytes, int) or isinstance(block_bytes, bool)
                or block_bytes < WORD_BYTES or block_bytes % WORD_BYTES):
            raise ValueError(f"region {name!r}: block_bytes must be a positive multiple of "
                             f"{WORD_BYTES}, got {block_bytes!r}")
        self.name, self.kind, self.golden = str(name), str(kind), golden
        self.view = view.reshape(-1)  # a view: C-contiguous arrays reshape without copying
        self.length = int(self.view.size)
        self.block_bytes = block_bytes
        self.n_blocks = -(-self.length // block_bytes)
        self.n_words = -(-self.length // WORD_BYTES)
        self.parity = np.zeros(self.n_words, np.uint8)
        self.crcs = np.zeros((3, self.n_blocks), np.uint32)  # TMR copies of the block CRCs
        self._crc0, self._crc1, self._crc2 = self.crcs
        # the compiled kernel reads uint64 words: an unaligned view is checked through a copy
        self._aligned = self.view.ctypes.data % WORD_BYTES == 0
        self.failed: set = set()      # blocks counted unrecoverable, until they verify again
        self._events: dict = {}       # code -> occurrences in this region's current pass
        for i in range(self.n_blocks):
            self.encode_block(i)

    # ---- geometry --------------------------------------------------------------------------------
    @property
    def address(self) -> int:
        """Virtual address of the first protected byte in this process."""
        return int(self.view.ctypes.data)

    def bounds(self, i: int) -> tuple[int, int]:
        """[start, end) byte offsets of block i."""
        if not 0 <= i < self.n_blocks:
            raise IndexError(f"region {self.name!r}: block {i} not in 0..{self.n_blocks - 1}")
        start = i * self.block_bytes
        return start, min(start + self.block_bytes, self.length)

    # ---- check data -------------------------------------------------------------------------------
    def _words_apply(self, i: int, fn) -> tuple[int, int]:
        """Run fn(words uint64, parity slice) -> report | None over block i's words (full words in
        place when aligned, through a copy otherwise; the tail as one zero-padded word), writing
        any change back. Returns (corrected, uncorrectable) summed over the reports."""
        start, end = self.bounds(i)
        w0 = start // WORD_BYTES
        n_full = (end - start) // WORD_BYTES
        tail = (end - start) % WORD_BYTES
        corrected = bad = 0
        if n_full:
            body = self.view[start:start + n_full * WORD_BYTES]
            work = body if self._aligned else body.copy()
            rep = fn(work.view(np.uint64), self.parity[w0:w0 + n_full])
            if rep is not None:
                corrected += rep.n_corrected
                bad += rep.n_uncorrectable
                if rep.n_corrected and not self._aligned:
                    body[:] = work
        if tail:
            pad = np.zeros(WORD_BYTES, np.uint8)
            pad[:tail] = self.view[end - tail:end]
            rep = fn(pad.view(np.uint64), self.parity[w0 + n_full:w0 + n_full + 1])
            if rep is not None:
                corrected += rep.n_corrected
                bad += rep.n_uncorrectable
                if rep.n_corrected:
                    self.view[end - tail:end] = pad[:tail]
        return corrected, bad

    def encode_block(self, i: int) -> int:
        """(Re)compute block i's parity and CRC from its current contents; returns the CRC."""
        def encode(words, parity):
            secded_encode(words, out=parity)
        self._words_apply(i, encode)
        crc = self.block_crc(i)
        self.crcs[:, i] = crc
        return crc

    def block_crc(self, i: int) -> int:
        """CRC32C of block i's data bytes followed by its words' check bytes (as they are now)."""
        start, end = self.bounds(i)
        return crc32c(self.parity[start // WORD_BYTES:-(-end // WORD_BYTES)],
                      crc32c(self.view[start:end]))

    def parity_of(self, data) -> np.ndarray:
        """Check bytes of a block's worth of `data` (uint8; a short tail padded with zeros like the
        region's last word)."""
        n_words = -(-data.size // WORD_BYTES)
        padded = np.zeros(n_words * WORD_BYTES, np.uint8)
        padded[:data.size] = data
        return secded_encode(padded.view(np.uint64))

    def correct_block(self, i: int) -> tuple[int, int]:
        """SECDED over block i: single-bit errors fixed in place. (bits corrected, bad words)."""
        return self._words_apply(i, secded_correct)

    def stored_crc(self, i: int) -> tuple[int, bool]:
        """Block i's registered CRC by bitwise majority of the three copies, and whether a copy had
        to be repaired."""
        a, b, c = int(self._crc0[i]), int(self._crc1[i]), int(self._crc2[i])
        if a == b == c:
            return a, False
        vote = (a & b) | (a & c) | (b & c)
        self.crcs[:, i] = vote
        return vote, True

    def vote_table(self) -> int:
        """Repair every CRC-table entry whose three copies disagree (bitwise majority); returns how
        many entries were repaired. Called at the end of each pass over the region."""
        a, b, c = self.crcs
        if a.tobytes() == b.tobytes() == c.tobytes():  # (np.array_equal costs ~20x more here)
            return 0
        bad = (a != b) | (a != c)
        self.crcs[:, bad] = ((a & b) | (a & c) | (b & c))[bad]
        return int(np.count_nonzero(bad))

    def __repr__(self) -> str:
        return (f"ProtectedRegion({self.name!r}, {self.length} bytes, {self.n_blocks} blocks of "
                f"{self.block_bytes}, kind={self.kind!r})")


@dataclass
class ScrubCounters:
    """Cumulative scrub counters (housekeeping)."""

    checked_bytes: int = 0
    corrected: int = 0           # bits corrected in place by SECDED
    restored: int = 0            # blocks restored from golden
    unrecoverable: int = 0       # blocks golden could not restore (counted once per block)
    passes: int = 0              # full passes over every region
    last_pass_s: float = 0.0     # wall time of the last full pass: the achieved scrub period
    metadata_repaired: int = 0   # CRC-table copies repaired by the vote

    def as_dict(self) -> dict:
        return asdict(self)

    def housekeeping(self) -> dict:
        """The counters as integers named for a housekeeping record."""
        return {"scrub_checked_bytes": self.checked_bytes, "scrub_corrected_bits": self.corrected,
                "scrub_restored_blocks": self.restored, "scrub_unrecoverable": self.unrecoverable,
                "scrub_passes": self.passes, "scrub_last_pass_ms": int(self.last_pass_s * 1000),
                "scrub_metadata_repaired": self.metadata_repaired}


class Scrubber:
    """Checks, corrects and restores ProtectedRegions (see the module docstring).

    budget_bytes_per_s: the scrub thread's ceiling. on_event: callable(code, text) or None.
    clock / sleep: injectable time source and sleep for tests (sleep default: an interruptible wait).
    """

    def __init__(self, regions, *, budget_bytes_per_s: float = DEFAULT_BUDGET_BYTES_PER_S,
                 on_event=None, clock=time.monotonic, sleep=None):
        if not (isinstance(budget_bytes_per_s, (int, float)) and budget_bytes_per_s > 0
                and math.isfinite(budget_bytes_per_s)):
            raise ValueError(f"budget_bytes_per_s must be a positive number, got {budget_bytes_per_s!r}")
        self.budget_bytes_per_s = float(budget_bytes_per_s)
        self.on_event = on_event
        self.counters = ScrubCounters()
        self._clock = clock
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self.regions: list = []
        self._by_name: dict = {}
        self._cursor = (0, 0)           # (region index, block index) of the next block to check
        self._pass_t0: float | None = None
        for r in regions:
            self.add_region(r)

    # ---- regions ---------------------------------------------------------------------------------
    def add_region(self, region: ProtectedRegion) -> None:
        if not isinstance(region, ProtectedRegion):
            raise TypeError(f"expected a ProtectedRegion, got {type(region).__name__}")
        with self._lock:
            if region.name in self._by_name:
                raise ValueError(f"region {region.name!r} is already registered")
            self.regions.append(region)
            self._by_name[region.name] = region

    def remove_region(self, name: str) -> ProtectedRegion:
        with self._lock:
            region = self._by_name.pop(name)
            idx = self.regions.index(region)
            self.regions.pop(idx)
            ri, bi = self._cursor
            if ri > idx:
                self._cursor = (ri - 1, bi)
            elif ri == idx:
                self._cursor = (ri, 0)
            if self._cursor[0] >= len(self.regions):
                self._cursor = (0, 0)
            return region

    def region(self, name) -> ProtectedRegion:
        return name if isinstance(name, ProtectedRegion) else self._by_name[name]

    @property
    def protected_bytes(self) -> int:
        return sum(r.length for r in self.regions)

    @property
    def protected_words(self) -> int:
        return sum(r.n_words for r in self.regions)

    # ---- events ------------------------------------------------------------------------------------
    def _emit(self, code: str, text: str) -> None:
        log.log(_LOG_LEVEL[code], "%s: %s", code, text)
        if self.on_event is None:
            return
        try:
            self.on_event(code, text)
        except Exception:  # a failing listener must not stop the scrubbing
            log.exception("scrub on_event(%s) failed", code)

    def _report(self, region: ProtectedRegion, outcome: str, text: str) -> None:
        code = EVENT_OF[outcome]
        n = region._events.get(code, 0) + 1
        region._events[code] = n
        if n == 1:
            self._emit(code, f"{region.name}: {text}")

    def _end_region_pass(self, region: ProtectedRegion) -> None:
        self.counters.metadata_repaired += region.vote_table()
        for code, n in region._events.items():
            if n > 1:
                self._emit(code, f"{region.name}: {n} blocks {code.removeprefix('scrub_')} in this "
                                 f"pass ({n - 1} not reported singly)")
        region._events.clear()

    # ---- one block -----------------------------------------------------------------------------------
    def check_block(self, region, i: int) -> str:
        """Check block i of `region` (a ProtectedRegion or its name); returns the outcome."""
        with self._lock:
            region = self.region(region)
            region.bounds(i)  # IndexError for a block that does not exist
            outcome = self._check_block(region, i)
            if outcome == RESTORED or outcome == UNRECOVERABLE:
                self._release(getattr(region.golden, "release", None))
            return outcome

    @staticmethod
    def _release(release) -> None:
        if release is None:
            return
        try:
            release()
        except Exception:
            log.exception("golden release failed")

    def _check_block(self, region: ProtectedRegion, i: int) -> str:
        start = i * region.block_bytes  # (bounds() and block_crc() inlined: the fast path)
        end = min(start + region.block_bytes, region.length)
        block = region.view[start:end]
        parity = region.parity[start // WORD_BYTES:-(-end // WORD_BYTES)]
        crc = crc32c(parity, crc32c(block))
        self.counters.checked_bytes += end - start
        if crc == region._crc0[i]:  # copies 1 and 2 are voted once per pass (vote_table)
            if region.failed:
                region.failed.discard(i)
            return CLEAN
        stored, repaired = region.stored_crc(i)
        if repaired:
            self.counters.metadata_repaired += 1
        if crc == stored:
            region.failed.discard(i)
            return CLEAN
        corrected, bad = region.correct_block(i)
        if not bad and corrected and crc32c(parity, crc32c(block)) == stored:
            self.counters.corrected += corrected
            region.failed.discard(i)
            self._report(region, CORRECTED, f"block {i}: {corrected} bit(s) corrected in place")
            return CORRECTED
        why = (f"{bad} uncorrectable word(s)" if bad else
               f"CRC mismatch after {corrected} SECDED correction(s)" if corrected else
               "CRC mismatch, SECDED clean")
        try:
            data = region.golden(start, end - start)
            gold = np.frombuffer(data, np.uint8)
            if gold.size != end - start:
                raise GoldenError(f"golden gave {gold.size} bytes for a {end - start}-byte block")
            gold_parity = region.parity_of(gold)
            if crc32c(gold_parity, crc32c(gold)) != stored:
                raise GoldenError("golden bytes do not match the registered CRC")
        except Exception as e:  # GoldenError, or any failure of the golden source: same answer
            return self._unrecoverable(region, i, f"{why}; golden failed: {type(e).__name__}: {e}")
        block[:] = gold
        parity[:] = gold_parity
        if crc32c(parity, crc32c(block)) != stored:  # the write did not take (stuck bits)
            return self._unrecoverable(region, i, f"{why}; block still wrong after the restore")
        self.counters.restored += 1
        region.failed.discard(i)
        self._report(region, RESTORED, f"block {i}: restored from golden ({why})")
        return RESTORED

    def _unrecoverable(self, region: ProtectedRegion, i: int, text: str) -> str:
        if i not in region.failed:
            region.failed.add(i)
            self.counters.unrecoverable += 1
            self._report(region, UNRECOVERABLE, f"block {i}: {text}"[:150])
        return UNRECOVERABLE

    # ---- walking -------------------------------------------------------------------------------------
    def _walk(self, max_bytes: int) -> dict:
        outcomes = dict.fromkeys(OUTCOMES, 0)
        done = 0
        releases = {}  # golden sources read in this walk: their caches are dropped at the end
        with self._lock:
            if not self.regions:
                return {"checked_bytes": 0, **outcomes}
            ri, bi = self._cursor
            try:
                while True:
                    if self._pass_t0 is None:
                        self._pass_t0 = self._clock()
                    region = self.regions[ri]
                    outcome = self._check_block(region, bi)
                    outcomes[outcome] += 1
                    if outcome == RESTORED or outcome == UNRECOVERABLE:
                        release = getattr(region.golden, "release", None)
                        if release is not None:
                            releases[id(release.__self__) if hasattr(release, "__self__")
                                     else id(release)] = release
                    done += min(region.block_bytes, region.length - bi * region.block_bytes)
                    bi += 1
                    if bi >= region.n_blocks:
                        self._end_region_pass(region)
                        bi, ri = 0, ri + 1
                        if ri >= len(self.regions):
                            ri = 0
                            self.counters.passes += 1
                            self.counters.last_pass_s = self._clock() - self._pass_t0
                            self._pass_t0 = None
                    if done >= max_bytes:
                        break
            finally:
                self._cursor = (ri, bi)
                for release in releases.values():
                    self._release(release)
        return {"checked_bytes": done, **outcomes}

    def step(self, max_bytes: int) -> int:
        """Check whole blocks from where the last step stopped until at least max_bytes (at least
        one block) are checked; returns the bytes checked."""
        return self._walk(max_bytes)["checked_bytes"]

    def scrub_all(self) -> dict:
        """One full pass over every block of every region (from the current position, so a pass
        the thread had begun is completed). Returns {"checked_bytes", and a count per outcome}."""
        return self._walk(self.protected_bytes)

    # ---- legitimate changes ---------------------------------------------------------------------------
    def update(self, region, offset: int, data) -> None:
        """Write `data` into `region` at `offset` and re-encode the blocks it touches. Blocks only
        partly overwritten are checked first, so a pending upset is never sealed into a new CRC;
        UnrecoverableBlock when one cannot be repaired (nothing is written). Change the region's
        golden source to the new contents as well, or a later restore brings the old bytes back."""
        with self._lock:
            region = self.region(region)
            new = np.frombuffer(data, np.uint8)
            if not 0 <= offset <= region.length - new.size:
                raise ValueError(f"region {region.name!r}: {new.size} bytes at {offset} do not fit "
                                 f"in {region.length}")
            if new.size == 0:
                return
            first, last = offset // region.block_bytes, (offset + new.size - 1) // region.block_bytes
            for i in (first, last):
                start, end = region.bounds(i)
                covered = offset <= start and end <= offset + new.size
                if not covered and self._check_block(region, i) == UNRECOVERABLE:
                    raise UnrecoverableBlock(f"region {region.name!r}: block {i} is unrecoverable; "
                                             f"update refused")
            region.view[offset:offset + new.size] = new
            for i in range(first, last + 1):
                region.encode_block(i)

    # ---- the paced thread -------------------------------------------------------------------------------
    @property
    def chunk_bytes(self) -> int:
        return max(WORD_BYTES, int(self.budget_bytes_per_s * CHUNK_S))

    def run(self, max_bytes: int | None = None) -> int:
        """The paced loop, in the calling thread: check about chunk_bytes, sleep for the rest of that
        chunk's budget share, until stop() (or max_bytes checked). Returns the bytes checked."""
        total = 0
        while not self._stop.is_set():
            t0 = self._clock()
            try:
                n = self.step(self.chunk_bytes)
            except Exception:  # a bug must not silently end the protection: log, pace, go on
                log.exception("scrub step failed")
                n = self.chunk_bytes
            total += n
            wait = n / self.budget_bytes_per_s - (self._clock() - t0)
            if max_bytes is not None and total >= max_bytes:
                break
            if wait > 0:
                self._sleep(wait)
            elif not self.regions:
                self._sleep(CHUNK_S)
        return total

    def start(self) -> None:
        """Run the paced loop in a daemon thread (no-op when it runs already)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="edge-scrub", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (waits for the chunk in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


__all__ = ["BLOCK_BYTES", "CLEAN", "CORRECTED", "DEFAULT_BUDGET_BYTES_PER_S", "GoldenError",
           "OUTCOMES", "ProtectedRegion", "RESTORED", "ScrubCounters", "Scrubber", "UNRECOVERABLE",
           "UnrecoverableBlock", "WORD_BYTES", "double_upset_per_day", "max_scrub_period_s"]
