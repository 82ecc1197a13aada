"""The flight loop: frames from a source -> detections -> records -> journal -> Space Packets -> radio.

    source (file or spool) -> FramePipeline -> encode_frame -> Journal.append (key = frame id)
    -> every N frames a housekeeping record -> Journal.sync (one fsync per frame)
    -> spool: mark the frame done -> send every journaled record not yet sent in this run

Nothing computed is lost: a record is durable in the journal before its frame leaves the spool's
.active/ directory, and it stays in the journal until the ground acknowledges it (or, when the journal is
full, until it is evicted -- counted and reported, never silent). A frame found in .active/ at start was
in flight when the last run stopped: it is redone with the same frame id, unless the journal already
holds its record (then it is only marked done), so every input frame yields exactly one record.

Bad input of any kind (truncated dump, mismatched sidecar, wrong dtype or band count, a decoder that
chokes) becomes an event record naming the problem plus a counter; the frame moves to .failed/ and the
loop goes on with the next frame. Housekeeping records carry the counters and stage latencies.

The on-board VLM ([vlm] enabled; edge/vlm/service.py) rides on the same loop: each turn queues the
spool's `*.questions.json` files and the uplinked `question` commands durably; after a frame's
detector record is journaled, the questions due on that frame (and the standing [vlm] question) are
answered from its pixels, each answer journaled and fsynced before its question is marked done.
With [vlm] off, edge.vlm is never imported and an uplinked question is reported as not handled.
With vlm.memory = "owned" the service adds the VLM's weights to the running scrubber when it loads
the model; an unrecoverable block there ("vlm/" regions) is handed to the service, which drops and
reloads the model, instead of sending the board to safe mode (docs/reliability.md "The VLM's weights").
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.config import Config
from edge.downlink import record as rec
from edge.downlink.journal import Journal
from edge.downlink.packets import APID_BY_KIND, Packetizer, PacketSink
from edge.pipeline import STAGES, FramePipeline
from edge.screen import ScreenRule
from edge.sources import DurableCounter, Frame, FrameError, Spool, open_frame

log = logging.getLogger("edge.flight")

#: Stages timed per frame by the loop (the pipeline's, plus the loop's own).
LOOP_STAGES = ("read",) + STAGES + ("record", "journal", "downlink")


def choose_variant(model, variant: str | None, backend: str) -> str:
    """The model variant to run: the configured one (checked against the backend), else the first
    int8 variant of the backend's runtime, else the model's first variant of that runtime."""
    if variant is not None:
        f = model.file(variant)
        if backend not in ("auto", f.runtime):
            raise ValueError(f"model.variant {variant!r} runs on {f.runtime}, but model.backend is "
                             f"{backend!r}")
        return variant
    files = [f for f in model.files.values() if backend in ("auto", f.runtime)]
    if not files:
        raise ValueError(f"model {model.name!r} has no variant for backend {backend!r} "
                         f"(it has {[(f.variant, f.runtime) for f in model.files.values()]})")
    int8 = [f for f in files if f.precision == "int8"]
    return (int8 or files)[0].variant


#: Per-stage samples kept for medians (the most recent ones): memory stays flat over any number of frames.
RECENT_SAMPLES = 1024
#: Error messages kept in the summary (the most recent); errors_total counts them all.
RECENT_ERRORS = 64


class StageTimes:
    """Count, total and the most recent RECENT_SAMPLES samples (ms) of one stage, in a ring buffer
    allocated once: the summary's memory does not grow with the number of frames."""

    __slots__ = ("count", "total", "_ring")

    def __init__(self):
        self.count, self.total = 0, 0.0
        self._ring = np.zeros(RECENT_SAMPLES, np.float64)

    def add(self, ms: float) -> None:
        self._ring[self.count % RECENT_SAMPLES] = ms
        self.count += 1
        self.total += ms

    @property
    def recent(self) -> np.ndarray:
        return self._ring[:min(self.count, RECENT_SAMPLES)]

    def __len__(self) -> int:
        return self.count


@dataclass
class RunSummary:
    """What a run did, for the CLI, the demo and the tests. Bounded: totals plus recent samples."""

    frames_ok: int = 0
    frames_failed: int = 0
    frames_skipped: int = 0
    detections: int = 0
    tiles: list = field(default_factory=lambda: [0, 0, 0, 0])   # total, nodata, cloud, inferred
    raw_bytes: int = 0
    records: int = 0
    packets: int = 0
    bytes_sent: int = 0
    frame_record_bytes: int = 0        # on the wire: frame records' packets, headers and PEC included
    stage_ms: dict = field(default_factory=dict)   # stage -> StageTimes
    errors: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT_ERRORS))
    errors_total: int = 0
    first_record_s: float | None = None            # loop start -> first frame record journaled
    results: list = field(default_factory=list)    # (frame_id, name, FrameResult) when kept

    def as_dict(self) -> dict:
        med = {k: round(float(np.median(v.recent)), 3) for k, v in self.stage_ms.items() if v.count}
        tot = {k: round(v.total, 3) for k, v in self.stage_ms.items() if v.count}
        return {"frames_ok": self.frames_ok, "frames_failed": self.frames_failed,
                "frames_skipped": self.frames_skipped, "detections": self.detections,
                "tiles": dict(zip(("total", "nodata", "cloud", "inferred"), self.tiles)),
                "raw_bytes": self.raw_bytes, "records": self.records, "packets": self.packets,
                "bytes_sent": self.bytes_sent, "frame_record_bytes": self.frame_record_bytes,
                "stage_ms_median": med, "stage_ms_total": tot, "errors": list(self.errors),
                "errors_total": self.errors_total, "first_record_s": self.first_record_s}


class ModelLoadError(RuntimeError):
    """The model cannot be used (manifest, sha256, runtime): the worker exits for safe mode."""


class FlightLoop:
    """The flight software's main job (see the module docstring). One instance per process run.

    safe_mode=True: no model is loaded and no frame is processed; housekeeping and the downlink of
    what is journaled go on (run_safe)."""

    def __init__(self, cfg: Config, *, keep_results: bool = False, heartbeat=None,
                 started_at: float | None = None, safe_mode: bool = False):
        from edge.backends import open_backend
        from edge.manifest import load_manifest

        self.t0 = time.perf_counter() if started_at is None else started_at
        self.wall0 = time.time()
        self.cfg = cfg
        self.keep_results = keep_results
        self.heartbeat = heartbeat
        self.data_dir = cfg.data_dir
        self.state_dir = self.data_dir / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.boot = DurableCounter(self.state_dir / "boot").take()
        self.summary = RunSummary(stage_ms={s: StageTimes() for s in LOOP_STAGES + ("frame",)})
        self.counters = collections.Counter()
        self._stage_window = {s: [] for s in LOOP_STAGES + ("frame",)}  # since the last housekeeping
        self._errors = collections.deque(maxlen=rec.MAX_ERRORS)
        self._frames_since_hk = 0

        dl = cfg.downlink
        self.journal = Journal(self.data_dir / "journal", capacity_bytes=dl["journal_capacity_bytes"],
                               segment_bytes=dl["segment_bytes"])
        self.packetizer = Packetizer(dl["max_packet_bytes"], state_path=self.state_dir / "packets")
        self.sink = PacketSink.open(dl["output"], kind=dl["sink"], baud=dl["baud"])
        # every live record up to this seq was handed to the radio (persisted: a restart does not
        # resend what already went out; unacknowledged records are resent every retransmit_s)
        self._sent = DurableCounter(self.state_dir / "sent_through", start=0)
        self._sent_through = self._sent.value - 1
        self._last_retransmit = time.monotonic()
        self.safe_mode = safe_mode
        self.stop_requested = False
        self.scrubber = self.regions = None
        self._scrub_events = collections.deque()   # appended by the scrub thread, drained here
        self.unrecoverable = False                 # a protected block could not be restored
        self.exit_action = None   # set when an uplinked command ends the run ("enter_safe_mode", ...)
        self._open_uplink()

        rep = self.journal.recovery
        if not rep.clean:
            self.counters["journal_dropped_bytes"] += rep.dropped_bytes
            self._event("journal_recovered", f"journal recovery dropped {rep.dropped_bytes} bytes in "
                                             f"{len(rep.corrupt_regions)} region(s), "
                                             f"{len(rep.torn_tails)} torn tail(s); records lost: "
                                             f"{rep.missing_count + len(rep.damaged_seqs)}")
        for problem in (self.packetizer.state_error, self._sent.problem):
            if problem:
                self._event("input_error", f"downlink state: {problem}")

        self._spool = None          # the spool being run (VLM questions check their frame against it)
        self.vlm = None
        if cfg.vlm["enabled"]:      # imported only then: the detector-only path never loads edge.vlm
            from edge.vlm.service import VlmService

            self.vlm = VlmService(self)

        m = cfg.model
        self.model = self.variant = self.file = self.backend = self.pipeline = None
        self.model_id = b"\0" * rec.MODEL_ID_BYTES
        if safe_mode:
            self._event("started", f"orbit-edge boot {self.boot}: SAFE MODE (no inference; housekeeping "
                                   f"and downlink of the journal go on)")
            return
        try:
            self.model = load_manifest(m["manifest"]).model(m["name"])
            self.variant = choose_variant(self.model, m["variant"], m["backend"])
            self.file = self.model.file(self.variant)
            options = {"reference_kernels": True} if m["kernels"] == "reference" else {}
            if options and self.file.runtime != "litert":
                raise ValueError(f"model.kernels = 'reference' is a LiteRT mode; {self.variant} runs on "
                                 f"{self.file.runtime}")
            self.backend = open_backend(self.model, self.variant, m["threads"], memory=m["memory"],
                                        **options)
        except Exception as e:  # manifest, sha256, runtime load: nothing can be inferred
            self._event("model_error", f"model {m['name']}/{m['variant'] or 'auto'} unusable: {e}")
            self.journal.sync()
            self.downlink()
            self.close(final=False)
            raise ModelLoadError(str(e)) from e
        self.model_id = rec.model_id_of(self.file.sha256)
        d, sc, s = cfg.detection, cfg.screening, cfg.sensor
        self.pipeline = FramePipeline(
            self.model, self.backend, overlap=cfg.tiling["overlap"], batch=cfg.tiling["batch"],
            score_threshold=d["score_threshold"], iou_threshold=d["iou_threshold"], merge=d["merge"],
            metric=d["metric"], max_detections=d["max_detections"], bands=s["bands"],
            bit_depth=s["bit_depth"], gain=s["gain"], offset=s["offset"],
            screen=ScreenRule(sc["enabled"], sc["nodata_fraction"], sc["cloud_fraction"]),
            bright_threshold=sc["bright_threshold"])
        self._event("started", f"orbit-edge boot {self.boot}: {self.model.name}/{self.variant} "
                               f"({self.file.runtime}, memory {self.backend.memory}, "
                               f"{m['threads']} thread(s))")
        self._start_scrubber()

    # ---- memory scrubbing -------------------------------------------------------------------------
    def _start_scrubber(self) -> None:
        """Protect the weights in use, the LUTs and the config (edge/reliability/regions.py) and
        start the paced scrub thread. Its events reach the journal from this thread (one writer)."""
        sb = self.cfg.scrub
        if not sb["enabled"]:
            return
        from edge.reliability.regions import protect_flight_loop

        self.scrubber, self.regions = protect_flight_loop(
            self, budget_bytes_per_s=sb["budget_bytes_per_s"], block_bytes=sb["block_bytes"],
            on_event=lambda code, text: self._scrub_events.append((code, text)))
        if not self.regions.weights_protected:
            self.counters["weights_unprotected"] = 1
            self._event("started", f"scrubber: weights unprotected ({self.backend.memory} memory: the "
                                   f"runtime keeps its own copy); LUTs and config protected")

    def _drain_scrub_events(self) -> None:
        while self._scrub_events:
            code, text = self._scrub_events.popleft()
            self._event(code, text)
            if code != "scrub_unrecoverable":
                continue
            if self.vlm is not None and text.startswith("vlm/"):
                # the optional VLM's weights (regions "vlm/...", added by edge/vlm/service.py): the
                # service drops the model and reloads it; the board does not enter safe mode for it
                self.vlm.weights_failed(text)
            else:
                self.unrecoverable = True

    def _scrub_counters(self) -> dict:
        if self.scrubber is None:
            return {}
        c = self.scrubber.counters
        return {"scrub_checked_bytes": c.checked_bytes, "scrub_corrected": c.corrected,
                "scrub_restored": c.restored, "scrub_unrecoverable": c.unrecoverable,
                "scrub_passes": c.passes}

    # ---- records ----------------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def _append(self, payload: bytes, kind: int, key: int = 0) -> int:
        seq = self.journal.append(payload, kind=kind, priority=rec.PRIORITY_BY_KIND[kind], key=key,
                                  sync=False)
        self.summary.records += 1
        if kind == rec.KIND_FRAME and self.summary.first_record_s is None:
            self.summary.first_record_s = time.perf_counter() - self.t0
        evicted = self.journal.pop_evictions()
        if evicted:
            self.counters["journal_evicted"] += len(evicted)
            self._errors.append((rec.EVENT_CODES["journal_evicted"], None,
                                 f"journal full: evicted {len(evicted)} record(s), lowest priority first"))
        return seq

    def _event(self, code: str, text: str, frame_id: int | None = None) -> None:
        log.info("event %s: %s", code, text)
        payload = rec.encode_event(seq=self.journal.next_seq, time_ms=self._now_ms(), boot=self.boot,
                                   code=code, text=text, frame_id=frame_id)
        self._append(payload, rec.KIND_EVENT, key=frame_id or 0)

    def _error(self, code: str, counter: str, name: str, err: Exception, frame_id: int | None) -> None:
        text = str(err) if name in str(err) else f"{name}: {err}"
        log.warning("%s (frame %s): %s", code, frame_id, text)
        self.counters[counter] += 1
        self.counters["frames_failed"] += 1
        self.summary.frames_failed += 1
        self.summary.errors.append((name, str(err)))
        self.summary.errors_total += 1
        self._errors.append((rec.EVENT_CODES[code], frame_id, text))
        self._event(code, text, frame_id)

    def housekeeping(self) -> None:
        """Append a housekeeping record: counters since boot, stage latencies since the last one."""
        st = self.journal.stats()
        counters = dict(self.counters)
        counters.update(journal_records=st["records"], journal_bytes=st["bytes"],
                        packets_sent=self.summary.packets, bytes_sent=self.summary.bytes_sent,
                        **self._scrub_counters())
        from edge.reliability.supervisor import read_restart_count

        counters["restarts"] = read_restart_count(self.data_dir)
        stage_us = {s: (int(np.median(v) * 1000), int(np.max(v) * 1000))
                    for s, v in self._stage_window.items() if v}
        payload = rec.encode_housekeeping(seq=self.journal.next_seq, time_ms=self._now_ms(),
                                          uptime_ms=int((time.perf_counter() - self.t0) * 1000),
                                          boot=self.boot, counters=counters, stage_us=stage_us,
                                          errors=list(self._errors))
        self._append(payload, rec.KIND_HOUSEKEEPING)
        self._errors.clear()
        for v in self._stage_window.values():
            v.clear()
        self._frames_since_hk = 0

    def downlink(self, force_retransmit: bool = False) -> None:
        """Send every live journaled record not sent yet, in seq order; every retransmit_s seconds
        (or when forced) the records sent but not acknowledged go out again."""
        t0 = time.perf_counter()
        retransmit_s = self.cfg.downlink["retransmit_s"]
        after = self._sent_through
        if force_retransmit or (retransmit_s > 0 and time.monotonic() - self._last_retransmit >= retransmit_s):
            after = None
            self._last_retransmit = time.monotonic()
        out = []
        for r in self.journal.pending(after=after):
            out.append((r, self.packetizer.packetize(r.payload, APID_BY_KIND[r.kind])))
        if out:
            # counters first: a crash after this point shows as a gap at the ground, never a reused count
            self.packetizer.save_state()
            for r, packets in out:
                n = self.sink.write(packets)
                self.summary.packets += len(packets)
                self.summary.bytes_sent += n
                if r.kind == rec.KIND_FRAME:
                    self.summary.frame_record_bytes += n
            self.sink.flush()
            top = out[-1][0].seq
            if top > self._sent_through:
                self._sent_through = top
                self._sent.set(top + 1)  # after the write: a crash in between resends (harmless)
        self._time("downlink", time.perf_counter() - t0)

    @property
    def sent_through(self) -> int:
        """Highest seq sent in this run (-1: none yet)."""
        return self._sent_through

    def acknowledge(self, seqs) -> int:
        """The ground confirmed these records (seq numbers or ranges): they leave the journal.
        Returns how many records it freed. (The authenticated uplink that carries acks calls this.)"""
        freed = self.journal.ack(seqs)
        return freed

    def _time(self, stage: str, seconds: float) -> None:
        ms = seconds * 1e3
        self.summary.stage_ms.setdefault(stage, StageTimes()).add(ms)
        self._stage_window.setdefault(stage, []).append(ms)

    def _time_vlm(self, seconds: float) -> None:
        """One VLM answer's wall time: in the run summary ("vlm"); in housekeeping only once the
        record's stage table has a "vlm" id (each answer record carries its own timings anyway)."""
        if "vlm" in rec.STAGES:
            self._time("vlm", seconds)
        else:
            self.summary.stage_ms.setdefault("vlm", StageTimes()).add(seconds * 1e3)

    # ---- VLM questions (edge/vlm/service.py) -------------------------------------------------------
    def _vlm_guard(self, what: str, fn, *args) -> None:
        """Run a VlmService step; anything it did not handle itself is reported, never a crash."""
        try:
            fn(*args)
        except Exception as e:
            log.exception("vlm: %s", what)
            self.counters["vlm_errors"] += 1
            self._event("vlm_error", f"vlm {what}: {type(e).__name__}: {e}")

    def _vlm_after(self, frame: Frame | None, ok: bool, name: str, frame_id: int | None) -> None:
        """After a frame's detector record (ok) or its reported failure: the questions due on it."""
        if self.vlm is None:
            return
        if ok:
            self._vlm_guard("answer", self.vlm.answer, frame)
        else:
            self._vlm_guard("frame failed", self.vlm.frame_failed, name, frame_id)

    # ---- frames -------------------------------------------------------------------------------------
    def _beat(self, stage: str) -> None:
        if self.heartbeat is not None:
            self.heartbeat(stage)

    def process(self, frame: Frame) -> bool:
        """Detect, record and journal one opened frame; False when it failed (reported)."""
        fid = frame.frame_id
        try:
            meta = frame.meta
            hb = self.heartbeat
            if hb is not None and hasattr(hb, "beat"):  # a HeartbeatWriter: say which frame too
                hb = lambda stage, _b=hb.beat, _f=fid or 0: _b(stage, _f)  # noqa: E731
            res = self.pipeline.process(frame.array, layout=frame.layout, bands=meta.get("bands"),
                                        bit_depth=meta.get("bit_depth"), heartbeat=hb)
        except (ValueError, TypeError, FrameError, OSError) as e:
            self._error("input_error", "input_errors", frame.name, e, fid)
            return False
        except Exception as e:  # a runtime failing inside the model: report it and go on
            self._error("model_error", "model_errors", frame.name, e, fid)
            return False
        self._beat("record")
        t0 = time.perf_counter()
        payload = rec.encode_frame(seq=self.journal.next_seq, frame_id=fid,
                                   capture_time_ms=frame.capture_time_ms, model_id=self.model_id,
                                   frame_hw=res.frame_hw, tiles=res.tiles, boxes=res.boxes,
                                   scores=res.scores, class_ids=res.class_ids, georef=frame.georef)
        t1 = time.perf_counter()
        self._append(payload, rec.KIND_FRAME, key=fid)
        self._time("record", t1 - t0)
        self._time("journal", time.perf_counter() - t1)
        for stage, ms in res.stage_ms.items():
            self._time(stage, ms / 1e3)
        s = self.summary
        s.frames_ok += 1
        s.detections += len(res)
        s.raw_bytes += frame.nbytes
        s.tiles = [a + b for a, b in zip(s.tiles, res.tiles)]
        self.counters.update(frames_ok=1, tiles_total=res.tiles_total, tiles_nodata=res.tiles_nodata,
                             tiles_cloud=res.tiles_cloud, tiles_inferred=res.tiles_inferred,
                             detections=len(res))
        if self.keep_results:
            s.results.append((fid, frame.name, res))
        log.info("frame %s %s: %d/%d tiles inferred (%d no-data, %d cloud), %d detections, %.0f ms",
                 fid, frame.name, res.tiles_inferred, res.tiles_total, res.tiles_nodata,
                 res.tiles_cloud, len(res), res.stage_ms["frame"])
        return True

    def _after_frame(self) -> None:
        self._drain_scrub_events()
        if self.unrecoverable:
            self.exit_action = "enter_safe_mode"
        self._frames_since_hk += 1
        if self._frames_since_hk >= self.cfg.downlink["housekeeping_every"]:
            self.housekeeping()
        t0 = time.perf_counter()
        self.journal.sync()
        self._time("journal", time.perf_counter() - t0)

    def run_file(self, path, frame_id: int | None = None) -> bool:
        """Process one frame file (not a spool): a fresh frame id from the durable counter."""
        ids = DurableCounter(self.state_dir / "frame_id")
        fid = ids.take() if frame_id is None else frame_id
        t0 = time.perf_counter()
        frame = None
        try:
            frame = open_frame(path, layout=self.cfg.input["layout"], kind=self.cfg.input["kind"]
                               if self.cfg.input["kind"] != "spool" else "auto", frame_id=fid)
        except FrameError as e:
            self._error("input_error", "input_errors", Path(path).name, e, fid)
            ok = False
        else:
            self._time("read", time.perf_counter() - t0)
            ok = self.process(frame)
            self._vlm_after(frame, ok, frame.name, fid)
        if frame is None:
            self._vlm_after(None, False, Path(path).name, fid)
        self._after_frame()
        self.downlink()
        return ok

    def run_spool(self, directory, max_frames: int | None = None, poll_s: float = 0.0) -> None:
        """Process the spool until it is empty (poll_s > 0: wait for more, until max_frames)."""
        spool = Spool(directory, self.state_dir)
        self._spool = spool
        done = 0
        last_hk = time.monotonic()
        while (max_frames is None or done < max_frames) and not self.stop_requested:
            if self.exit_action:
                break
            action = self.poll_uplink()
            if action in ("enter_safe_mode", "restart"):
                self.exit_action = action
                break
            if self.vlm is not None:
                self._vlm_guard("questions", self.vlm.ingest_files, spool)
            claim = spool.claim_next()
            if claim is None:
                if poll_s <= 0:
                    break
                self._beat("idle")
                if time.monotonic() - last_hk >= self.cfg.downlink["housekeeping_s"]:
                    self.housekeeping()
                    self.journal.sync()
                    last_hk = time.monotonic()
                self.downlink()
                time.sleep(poll_s)
                continue
            done += 1
            if claim.resumed and self.journal.has_key(claim.frame_id):
                # its record reached the journal before the last run stopped: do not send it twice
                if self.vlm is not None and self.vlm.has_work(claim.name, claim.frame_id):
                    self._vlm_resumed(spool, claim)   # answers still owed on it: opened again
                log.info("frame %s %s: already journaled, marked done", claim.frame_id, claim.name)
                self.summary.frames_skipped += 1
                spool.done(claim)
                continue
            t0 = time.perf_counter()
            try:
                frame = spool.open(claim, layout=self.cfg.input["layout"],
                                   kind="auto" if self.cfg.input["kind"] == "spool" else
                                   self.cfg.input["kind"])
            except FrameError as e:
                self._error("input_error", "input_errors", claim.name, e, claim.frame_id)
                ok = False
                self._vlm_after(None, False, claim.name, claim.frame_id)
            else:
                self._time("read", time.perf_counter() - t0)
                ok = self.process(frame)
                self._vlm_after(frame, ok, claim.name, claim.frame_id)
            self._after_frame()
            (spool.done if ok else spool.failed)(claim)
            self.downlink()

    def _vlm_resumed(self, spool: Spool, claim) -> None:
        """A frame journaled before a crash with VLM answers still owed: open it and answer them."""
        try:
            frame = spool.open(claim, layout=self.cfg.input["layout"],
                               kind="auto" if self.cfg.input["kind"] == "spool" else self.cfg.input["kind"])
        except FrameError as e:
            log.warning("frame %s %s: cannot be opened again for its questions: %s", claim.frame_id,
                        claim.name, e)
            self._vlm_after(None, False, claim.name, claim.frame_id)
            return
        self._vlm_after(frame, True, claim.name, claim.frame_id)

    def run(self, source=None, max_frames: int | None = None) -> RunSummary:
        """Process `source` (default: the config's input.source): a directory is a spool."""
        source = source or self.cfg.input["source"]
        if source is None:
            raise ValueError("input.source: nothing to process (give a frame file or a spool directory)")
        p = Path(source)
        if p.is_dir() or self.cfg.input["kind"] == "spool":
            self.run_spool(p, max_frames=max_frames, poll_s=self.cfg.input["poll_s"])
        else:
            self.run_file(p)
        return self.summary

    def run_safe(self, max_s: float | None = None, poll_s: float = 1.0) -> str:
        """Safe mode: no inference. Housekeeping every housekeeping_s, the journal's records go down,
        the uplink is read; returns why it ended: "stop" (SIGTERM / stop_requested), "leave" (an
        authenticated leave-safe-mode command), or "timeout" (max_s elapsed)."""
        t_end = None if max_s is None else time.monotonic() + max_s
        hk_every = self.cfg.downlink["housekeeping_s"]
        last_hk = -float("inf")
        while not self.stop_requested:
            self._beat("safe")
            if self.poll_uplink() == "leave_safe_mode":
                return "leave"
            if time.monotonic() - last_hk >= hk_every:
                self.housekeeping()
                self.journal.sync()
                last_hk = time.monotonic()
            self.downlink()
            if t_end is not None and time.monotonic() >= t_end:
                return "timeout"
            time.sleep(poll_s)
        return "stop"

    def _open_uplink(self) -> None:
        up = self.cfg.uplink
        self._uplink = None
        if up["key_file"] is None:
            return
        from edge.uplink import UplinkReceiver, UplinkSource, load_key

        try:
            key = load_key(up["key_file"])
            self._uplink = (UplinkSource(up["input"], offset_path=self.state_dir / "uplink_offset"),
                            UplinkReceiver(key, self.state_dir / "uplink_arsn", spi=up["spi"]))
        except (OSError, ValueError) as e:  # no uplink is safer than a wrong one: say so, go on
            self.counters["config_errors"] += 1
            self._event("config_error", f"uplink disabled: {e}")

    def poll_uplink(self):
        """Read the uplink and execute every authenticated command in it. Returns the name of a
        command the caller must act on ("leave_safe_mode", "enter_safe_mode", "restart"), else None.
        Rejected uplinks are counted (uplink_rejected) and reported as events; a forged or replayed
        acknowledgement never frees a record (only Accepted commands reach the journal)."""
        if self._uplink is None:
            return None
        source, receiver = self._uplink
        try:
            data = source.poll()
        except OSError as e:
            self._event("input_error", f"uplink read: {e}")
            return None
        if not data:
            return None
        results = receiver.feed(data)
        source.commit(held_back=receiver.pending_bytes)
        action = None
        for r in results:
            if not hasattr(r, "command"):   # Rejected
                self.counters["uplink_rejected"] += 1
                self._event("uplink_rejected", f"uplink rejected ({r.reason}) arsn {r.arsn}: {r.detail}")
                continue
            cmd = r.command
            if cmd.name == "ack":
                freed = self.acknowledge(cmd.seq_ranges())
                log.info("uplink %d: ack freed %d record(s)", r.arsn, freed)
            elif cmd.name in ("leave_safe_mode", "enter_safe_mode"):
                self._event("safe_mode_left" if cmd.name == "leave_safe_mode" else "safe_mode_entered",
                            f"uplink {r.arsn}: {cmd.name.replace('_', ' ')} commanded")
                action = cmd.name
            elif cmd.name == "set_config":
                action = self._set_config(r.arsn, cmd.args) or action
            elif cmd.name == "question" and self.vlm is not None:
                self._vlm_guard("question", self.vlm.enqueue_uplink, r.arsn, cmd.args, self._spool)
            else:  # a question with [vlm] off: nothing here can answer it
                self._event("input_error", f"uplink {r.arsn}: {cmd.name} not handled by this mission"
                            + (" (vlm.enabled is false)" if cmd.name == "question" else ""))
        return action

    def _set_config(self, arsn: int, args: dict):
        """Validate an uplinked config change against the whole config; a valid one is persisted
        (state/config_overrides.json) and applied by a restart of the worker."""
        import json

        from edge.config import ConfigError, apply_overrides

        key, value = args.get("key"), args.get("value")
        path = self.state_dir / "config_overrides.json"
        try:
            current = json.loads(path.read_text()) if path.exists() else {}
            merged = {**current, key: value}
            apply_overrides(self.cfg, merged)
        except (ConfigError, ValueError) as e:
            self.counters["config_errors"] += 1
            self._event("config_error", f"uplink {arsn}: set_config refused: {e}")
            return None
        from edge.sources import atomic_write

        atomic_write(path, json.dumps(merged, sort_keys=True).encode())
        if self.safe_mode:  # stored; the normal worker started when safe mode ends applies it
            self._event("started", f"uplink {arsn}: config {key} = {value!r} accepted; applies when "
                                   f"safe mode ends")
            return None
        self._event("started", f"uplink {arsn}: config {key} = {value!r} accepted; restarting to apply")
        return "restart"

    def close(self, final: bool = True) -> None:
        """Final housekeeping and a stop event, everything journaled and sent; then close."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if self.scrubber is not None:
            self.scrubber.stop()
            self._drain_scrub_events()
        if final:
            self.housekeeping()
            self._event("stopped", f"orbit-edge boot {self.boot}: {self.summary.frames_ok} frame(s) ok, "
                                   f"{self.summary.frames_failed} failed")
            self.journal.sync()
            self.downlink()
        self.sink.close()
        self.journal.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["FlightLoop", "LOOP_STAGES", "RunSummary", "choose_variant"]
