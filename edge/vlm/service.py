"""The on-board VLM inside the flight loop: the durable question queue and the answers (issue 7).

    spool/*.questions.json ----+                                       (ingest_files, each loop turn)
    uplink `question` command -+--> QuestionQueue (state/vlm_questions.json, atomic writes)
    [vlm] question (standing) -------------------------------+
                                                             v
    FlightLoop: frame -> detector record journaled -> VlmService.answer(frame): for each question due
      on that frame: run_task(model, the frame's pixels, ...) -> answer record (+ for grounding a frame
      record with a label table, the VLM's model id) -> Journal.append + fsync -> question marked done

Queue file (`name.questions.json`, written as `.part` and renamed like frames; at most
MAX_QUEUE_FILE_BYTES, MAX_QUESTIONS_PER_FILE questions):

    [{"id": uint < 2^63,                   the answer record names it; one id space with the uplink's
      "text": "Is the runway clear?",      1..800 UTF-8 bytes; may be left out for caption / grounding
      "task": "vqa" | "caption" | "grounding",      optional: [vlm] task
      "frame": "pass_0412.raw"}, ...]      optional: a frame file name in the spool (else: the next
                                           frame processed)

A file that is not such a list (not UTF-8, not JSON, a wrong key or value, a duplicate id) is refused
as a whole: an input_error event naming the file and the problem, the input_errors counter, the file
moved to .failed/; the loop goes on. A good file's questions are merged into the durable queue (state
file written atomically: edge.durable.atomic_write), THEN the file moves to .done/: a crash in between
reads the file again, and ids already queued are skipped, so nothing is lost or doubled. An uplinked
`question` (edge/uplink.py: id, text, frame-id, image) is queued the same way with the task [vlm] task;
its `image` is a frame name, its `frame-id` a frame id. (The uplink's ARSN is durable before the
command runs: a crash between that and the queue write loses the question at most once, as for every
uplinked command; the ground resends what got no answer.)

When a question is due. A question naming a frame (by name or id) is answered right after that frame's
detector record is journaled, from the pixels the loop already holds (never re-read). A question
naming no frame is answered on the next frame processed successfully. A question naming a frame that
is not on board any more -- processed already (the spool's .done/ is an archive: pixels are not read
again), by name or by a frame id below the next one to be handed out -- gets a vlm_error event
"... not on board" (vlm_errors counted) and is marked done, checked whenever questions arrive; one
naming a frame that fails as bad input gets a vlm_error when it fails. Neither is ever answered about
another frame. A name not seen yet, or a frame id above the last one handed out, waits for that frame
(a capture still to come; at most MAX_PENDING questions wait). The standing question ([vlm]
question, task [vlm] task) is asked of every frame processed successfully, after the queued ones;
its answers carry no question id.

Exactly once. Every answer's records carry a journal key naming the question (QUESTION_KEY_BIT | id;
the standing question: STANDING_KEY_BIT | frame id; frame ids, the detector's keys, stay below both
bits). The records are appended and fsynced (Journal.sync) BEFORE the question is marked done in the
state file -- the same rule as a frame and its spool file. A crash in between finds the key in the
journal at the next start: the question is only marked done, never answered twice. A crash before the
fsync answers it again (nothing of it was durable). A frame already journaled before a crash is opened
again only when questions are still due on it. Each answer started is counted in the state file
first: a question whose answering never finishes (the supervisor killed the worker on a missed
token-step deadline, the runtime crashed) is given up after MAX_ATTEMPTS starts, reported, so one
poisonous question cannot restart the worker into safe mode.

Failures never crash the loop and never touch the detector's record (already journaled): the VLM that
cannot load (missing directory, bad files: VlmModelError) is reported once (a vlm_error event, the
model_errors counter) and every question due afterwards gets a vlm_error event and counts in
vlm_errors; so do a bad image, a model error while answering, an answer that cannot be encoded, and an
answer stopped by its deadline (its partial answer is still sent, stop = "deadline"). An answer with
nothing usable (a grounding tile whose text has no valid item, an empty VQA / caption answer:
TaskOutcome.rejected) is still sent (the answer record keeps the raw text; grounding's frame record
holds what the other tiles found) with a vlm_rejected event and counter;
items dropped by validation count in vlm_items_skipped; every answer journaled counts in vlm_answers.

The weights under the scrubber ([vlm] memory; edge/reliability/regions.py, docs/reliability.md
"The VLM's weights"). With memory = "owned" and the scrubber running, the load hashes the graph files
(sha256, the digests kept for the run: a VLM directory has no manifest) and adds one protected region
per weight array to the loop's scrubber ("vlm/<role>:<initializer>", golden: the initializer parsed
again from the verified file), and state/regions.json is written again. An upset is corrected or
restored by the scrubber as for the detector (scrub_corrected / scrub_restored events and counters).
A block that cannot be restored (scrub_unrecoverable: the file fails its sha256, or the restore does
not take) does NOT send the board to safe mode: the VLM is optional. The flight loop hands the event
to weights_failed(); before the next answer the service drops the model (its regions leave the
scrubber and the map; a vlm_error event, the vlm_weights_dropped counter) and loads it again from its
files, which must match the digests of the first load (else the VLM is unusable for the rest of the
run: every question due gets a vlm_error). After MAX_DROPS drops in one run the VLM stays off until
the worker restarts. An answer already computed when the damage is found is sent as it is (the
scrubber finds an upset only when it passes by; detector answers share that window). With memory =
"copy" the weights stay in ONNX Runtime's own copy: one "started" event "scrubber: vlm weights
unprotected", the vlm_weights_unprotected counter at 1 and the reason in the region map.

Liveness: the model is loaded lazily, once, at the first due question (the detector-only flight path
never imports edge.vlm), under the heartbeat stage "vlm_setup" (startup deadline; also the frame's
conversion to RGB). run_task's heartbeat is the loop's: the model's "vision", "prefill" and every
"decode" token beat as "vlm_vision", "vlm_prefill", "vlm_decode" with the frame id, so the supervisor's
deadline (edge/reliability/supervisor.py) watches one token step, never the whole answer.
"""
from __future__ import annotations

import collections
import json
import logging
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.config import MAX_VLM_QUESTION_BYTES, VLM_TASKS
from edge.downlink import record as rec
from edge.durable import atomic_write

log = logging.getLogger("edge.vlm.service")

#: Journal keys of answer records (see the module docstring): bit 63 -> a queued / uplinked
#: question's id, bit 62 -> the standing question on a frame id.
QUESTION_KEY_BIT = 1 << 63
STANDING_KEY_BIT = 1 << 62
#: Question ids are below QUESTION_KEY_BIT, so that the id fits beside the bit in a u64 journal key.
QUESTION_ID_LIMIT = 1 << 63
#: A queue file is a few hundred bytes; bounded like a sidecar.
MAX_QUEUE_FILE_BYTES = 64 * 1024
MAX_QUESTIONS_PER_FILE = 256
#: Questions waiting at most; more are refused (vlm_error) until some are answered.
MAX_PENDING = 1024
#: Answered ids remembered (oldest forgotten first): a question resent later than that is answered again.
MAX_ANSWERED_IDS = 4096
MAX_FRAME_NAME_BYTES = 255
QUEUE_KEYS = frozenset({"id", "text", "task", "frame"})
STATE_FILE = "vlm_questions.json"
STATE_VERSION = 1
#: The model's heartbeat stages -> the supervisor's (edge/reliability/heartbeat.py STAGES).
#: ("preprocess": run_task cutting / resizing a tile and the processor: one-off work per image, the
#: setup stage's fixed deadline; learned together with the vision runs it would shrink theirs.)
BEAT_STAGES = {"vision": "vlm_vision", "prefill": "vlm_prefill", "decode": "vlm_decode",
               "setup": "vlm_setup", "preprocess": "vlm_setup"}
VLM_COUNTERS = ("vlm_errors", "vlm_rejected", "vlm_answers", "vlm_items_skipped")
#: Counters of the VLM's weights under the scrubber. They reach housekeeping once the record's
#: counter table has ids for them (edge.downlink.record.COUNTERS); VlmService.stats has them always.
VLM_WEIGHT_COUNTERS = ("vlm_weights_unprotected", "vlm_weights_dropped")
#: Drops of the model for unrecoverable weights per run, at most; then the VLM stays off (reported).
MAX_DROPS = 3
#: vlm_error events per answer at most (a task's own error list can be long).
MAX_EVENTS_PER_ANSWER = 4
#: Answers started per question (and per standing question on a frame): the first, and one more after a
#: restart; a question whose answering never finishes (the worker killed by its deadline, a crash in the
#: runtime) is then given up, reported, instead of killing every restarted worker.
MAX_ATTEMPTS = 2


class QuestionError(ValueError):
    """A queue file or question that cannot be used; the message names the file / field."""


@dataclass
class Question:
    """One question waiting for an answer."""

    id: int
    text: str | None
    task: str
    frame: str | None = None        # a frame file name (queue file "frame", uplink "image")
    frame_id: int | None = None     # a frame id (uplink "frame-id")
    source: str = ""                # where it came from, for events: "a.questions.json", "uplink 17"

    @property
    def key(self) -> int:
        return QUESTION_KEY_BIT | self.id

    def names_frame(self) -> bool:
        return self.frame is not None or self.frame_id is not None

    def due_on(self, name: str, frame_id: int | None) -> bool:
        if self.frame is not None:
            return self.frame == name
        if self.frame_id is not None:
            return self.frame_id == frame_id
        return True

    def about(self) -> str:
        return (f"frame {self.frame}" if self.frame is not None else
                f"frame id {self.frame_id}" if self.frame_id is not None else "the next frame")


# ---- parsing -----------------------------------------------------------------------------------

def _utf8_len(text: str, where: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise QuestionError(f"{where}: not valid Unicode text (a lone surrogate)") from None


def check_question(item, where: str, default_task: str, source: str) -> Question:
    """One queue-file entry -> Question; QuestionError names `where` and the field."""
    if not isinstance(item, dict):
        raise QuestionError(f"{where}: must be an object {{id, text, task, frame}}, got "
                            f"{type(item).__name__}")
    unknown = set(item) - QUEUE_KEYS
    if unknown:
        raise QuestionError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(QUEUE_KEYS)}")
    if "id" not in item:
        raise QuestionError(f"{where}.id: missing")
    qid = item["id"]
    if not isinstance(qid, int) or isinstance(qid, bool) or not 0 <= qid < QUESTION_ID_LIMIT:
        raise QuestionError(f"{where}.id: must be an integer in 0..2^63-1, got {qid!r}")
    task = item.get("task", default_task)
    if task not in VLM_TASKS:
        raise QuestionError(f"{where}.task: must be one of {list(VLM_TASKS)}, got {task!r}")
    text = item.get("text")
    if text is None:
        if task == "vqa":
            raise QuestionError(f"{where}.text: a vqa question needs its text")
    else:
        if not isinstance(text, str) or not text.strip():
            raise QuestionError(f"{where}.text: must be a non-empty string, got {text!r}")
        n = _utf8_len(text, f"{where}.text")
        if n > MAX_VLM_QUESTION_BYTES:
            raise QuestionError(f"{where}.text: at most {MAX_VLM_QUESTION_BYTES} UTF-8 bytes, got {n}")
    frame = item.get("frame")
    if frame is not None:
        if not isinstance(frame, str) or not frame or "/" in frame or frame.startswith("."):
            raise QuestionError(f"{where}.frame: must be a frame file name in the spool, got {frame!r}")
        if _utf8_len(frame, f"{where}.frame") > MAX_FRAME_NAME_BYTES:
            raise QuestionError(f"{where}.frame: at most {MAX_FRAME_NAME_BYTES} UTF-8 bytes")
    return Question(qid, text, task, frame, None, source)


def parse_queue_file(path, default_task: str = "vqa") -> list[Question]:
    """The questions of a `*.questions.json` queue file (see the module docstring). Raises
    QuestionError naming the file and the problem; never anything else for any file content."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
        if size > MAX_QUEUE_FILE_BYTES:
            raise QuestionError(f"{name}: {size} bytes, a queue file is at most {MAX_QUEUE_FILE_BYTES}")
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise QuestionError(f"{name}: unreadable: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise QuestionError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise QuestionError(f"{name}: not valid JSON: {str(e)[:120]}") from None
    if not isinstance(doc, list):
        raise QuestionError(f"{name}: must be a JSON list of questions, got {type(doc).__name__}")
    if not doc:
        raise QuestionError(f"{name}: holds no question")
    if len(doc) > MAX_QUESTIONS_PER_FILE:
        raise QuestionError(f"{name}: {len(doc)} questions, at most {MAX_QUESTIONS_PER_FILE} per file")
    out, seen = [], set()
    for i, item in enumerate(doc):
        q = check_question(item, f"{name}[{i}]", default_task, name)
        if q.id in seen:
            raise QuestionError(f"{name}[{i}].id: {q.id} appears twice in the file")
        seen.add(q.id)
        out.append(q)
    return out


# ---- the durable queue -------------------------------------------------------------------------

def _body(pending, answered, attempts) -> bytes:
    doc = {"version": STATE_VERSION, "pending": [asdict(q) for q in pending],
           "answered": list(answered), "attempts": [[k, n] for k, n in sorted(attempts.items())]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


class QuestionQueue:
    """The questions waiting for an answer and the ids answered recently, in one small state file
    replaced atomically (edge.durable.atomic_write) at every change: a power cut leaves the old or the
    new state. The file carries a CRC32 of its body: a corrupt or unreadable file is set aside
    (renamed *.bad), reported in .problem, and the queue starts empty."""

    def __init__(self, state_dir):
        self.path = Path(state_dir) / STATE_FILE
        self.pending: list[Question] = []
        self.answered: collections.deque = collections.deque(maxlen=MAX_ANSWERED_IDS)
        self._answered_set: set = set()
        self.attempts: dict = {}        # journal key -> answers started and not finished
        self.problem: str | None = None
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            self.problem = f"{self.path.name}: unreadable ({e.strerror or e}); questions queued before are lost"
            return
        try:
            self._load(blob)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.pending = []
            self.answered.clear()
            self._answered_set.clear()
            self.attempts = {}
            self.problem = (f"{self.path.name}: corrupt ({e}); set aside as {self.path.name}.bad, "
                            f"questions queued before are lost")
            try:
                self.path.replace(self.path.with_name(self.path.name + ".bad"))
            except OSError:
                pass

    def _load(self, blob: bytes) -> None:
        body, sep, crc = blob.rpartition(b"\n")
        if not sep or not crc.startswith(b"crc32 ") or int(crc[6:], 16) != zlib.crc32(body):
            raise ValueError("CRC32 mismatch or missing")
        doc = json.loads(body.decode("ascii"))
        if doc.get("version") != STATE_VERSION:
            raise ValueError(f"version {doc.get('version')!r}, this runtime reads {STATE_VERSION}")
        for d in doc["pending"]:
            q = Question(**d)
            if not isinstance(q.id, int) or q.task not in VLM_TASKS:
                raise ValueError(f"bad pending question {d!r}")
            self.pending.append(q)
        for qid in doc["answered"]:
            self._remember(int(qid))
        self.attempts = {int(k): int(n) for k, n in doc.get("attempts", [])}

    def _remember(self, qid: int) -> None:
        if len(self.answered) == self.answered.maxlen:
            self._answered_set.discard(self.answered[0])
        self.answered.append(qid)
        self._answered_set.add(qid)

    def save(self) -> None:
        body = _body(self.pending, self.answered, self.attempts)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, body + b"\ncrc32 %08x" % zlib.crc32(body))

    def __len__(self) -> int:
        return len(self.pending)

    def find(self, qid: int) -> Question | None:
        return next((q for q in self.pending if q.id == qid), None)

    def was_answered(self, qid: int) -> bool:
        return qid in self._answered_set

    def add(self, questions) -> list[tuple[Question, str]]:
        """Queue new questions (one durable write). Returns [(question, reason)] of those not
        queued: "queued" (the same question is already waiting: a re-read after a crash, silent),
        "conflict" (that id waits with another question), "answered" (that id was answered),
        "full" (MAX_PENDING waiting)."""
        refused, added = [], 0
        for q in questions:
            old = self.find(q.id)
            if old is not None:
                same = (old.text, old.task, old.frame, old.frame_id) == (q.text, q.task, q.frame,
                                                                          q.frame_id)
                refused.append((q, "queued" if same else "conflict"))
            elif self.was_answered(q.id):
                refused.append((q, "answered"))
            elif len(self.pending) >= MAX_PENDING:
                refused.append((q, "full"))
            else:
                self.pending.append(q)
                added += 1
        if added:
            self.save()
        return refused

    def done(self, qid: int) -> None:
        """Mark a question answered (or given up, reported): durable before this returns."""
        self.pending = [q for q in self.pending if q.id != qid]
        self.attempts.pop(QUESTION_KEY_BIT | qid, None)
        if not self.was_answered(qid):
            self._remember(qid)
        self.save()

    def attempt(self, key: int) -> int:
        """Count one more answer started for `key` (durable): returns the count, this one included."""
        n = self.attempts.get(key, 0) + 1
        self.attempts[key] = n
        self.save()
        return n

    def finished(self, key: int) -> None:
        """The standing question's answer on a frame is journaled (or given up): forget its attempts."""
        if self.attempts.pop(key, None) is not None:
            self.save()

    def due(self, name: str, frame_id: int | None) -> list[Question]:
        return [q for q in self.pending if q.due_on(name, frame_id)]


# ---- the model ---------------------------------------------------------------------------------

def load_model(vlm_cfg: dict):
    """The VLM of the [vlm] section (tests replace this function with a fake model's loader)."""
    from edge.vlm.model import VlmModel

    return VlmModel(vlm_cfg["model_dir"], variant=vlm_cfg["variant"], threads=vlm_cfg["threads"],
                    memory=vlm_cfg.get("memory", "copy"))




# ---- the service -------------------------------------------------------------------------------

class VlmService:
    """The VLM side of one FlightLoop run (see the module docstring). It writes to the loop's journal
    and counters through the loop (one writer), and never raises out of its entry points for bad
    questions, bad images or a failing model."""

    def __init__(self, loop):
        self.loop = loop
        self.cfg = loop.cfg.vlm
        self.queue = QuestionQueue(loop.state_dir)
        self.model = None
        self.model_id = None
        self.load_error: str | None = None
        self.regions: list = []            # the model's ProtectedRegions in the loop's scrubber
        self.digests: dict | None = None   # sha256 of its files at the first load (this run)
        self.weights_failure: str | None = None   # an unrecoverable VLM block, not acted on yet
        self.drops = 0
        self.stats = collections.Counter()  # the VLM_WEIGHT_COUNTERS, whatever the record knows
        for name in VLM_COUNTERS:          # in every housekeeping record from the start
            loop.counters[name] += 0
        if self.queue.problem:
            loop.counters["input_errors"] += 1
            loop._event("input_error", f"vlm questions state: {self.queue.problem}")
        # answers journaled by the last run that stopped before marking them done (module docstring)
        for q in list(self.queue.pending):
            if loop.journal.has_key(q.key):
                log.info("question %d: answer already journaled, marked done", q.id)
                self.queue.done(q.id)

    # ---- questions in ----------------------------------------------------------------------------
    def _vlm_error(self, text: str, frame_id: int | None = None) -> None:
        self.loop.counters["vlm_errors"] += 1
        self.loop._event("vlm_error", text, frame_id)

    def _refusals(self, refused) -> None:
        for q, why in refused:
            if why == "queued":
                log.info("question %d (%s): already queued", q.id, q.source)
            elif why == "answered":
                self.loop._event("vlm_error", f"question {q.id} ({q.source}): id already answered; "
                                              f"ignored (its answer stays in the journal)")
            elif why == "conflict":
                self._vlm_error(f"question {q.id} ({q.source}): id already queued with another "
                                f"question; refused")
            else:
                self._vlm_error(f"question {q.id} ({q.source}): queue full ({MAX_PENDING} waiting); "
                                f"refused")

    def _gone(self, spool) -> None:
        """Questions naming a frame that is not on board: reported and given up (module docstring)."""
        if spool is None:
            return
        gone = []
        for q in self.queue.pending:
            if q.frame is not None and spool.processed(q.frame):
                gone.append(q)
            elif (q.frame_id is not None and q.frame_id < spool.next_frame_id
                  and q.frame_id not in spool.active_ids()):
                gone.append(q)
        for q in gone:
            self._vlm_error(f"question {q.id} ({q.source}): {q.about()} not on board (processed "
                            f"already); not answered", q.frame_id)
            self.queue.done(q.id)

    def ingest_files(self, spool) -> int:
        """Queue the questions of every `*.questions.json` in the spool; returns how many files."""
        files = spool.question_files()
        for path in files:
            try:
                questions = parse_queue_file(path, self.cfg["task"])
            except QuestionError as e:
                log.warning("queue file %s refused: %s", path.name, e)
                self.loop.counters["input_errors"] += 1
                self.loop._event("input_error", str(e))
                spool.finish_questions(path, ok=False)
                continue
            self._refusals(self.queue.add(questions))   # durable before the file moves
            spool.finish_questions(path, ok=True)
            log.info("queue file %s: %d question(s)", path.name, len(questions))
        if files:
            self._gone(spool)
        return len(files)

    def enqueue_uplink(self, arsn: int, args: dict, spool=None) -> None:
        """An authenticated uplink `question` (edge.uplink.Command.args) into the queue."""
        qid, text = args.get("id"), args.get("text")
        if not isinstance(qid, int) or not 0 <= qid < QUESTION_ID_LIMIT:
            self._vlm_error(f"uplink {arsn}: question id {qid} is not below 2^63; refused")
            return
        q = Question(qid, text, args.get("task") or self.cfg["task"], args.get("image"),
                     args.get("frame_id"), f"uplink {arsn}")
        self._refusals(self.queue.add([q]))
        self._gone(spool)

    # ---- answers out -----------------------------------------------------------------------------
    def has_work(self, name: str, frame_id: int) -> bool:
        """Whether a frame already journaled before a restart still owes answers."""
        if self.queue.due(name, frame_id):   # (those answered before the restart were settled at start)
            return True
        return (self.cfg["question"] is not None
                and not self.loop.journal.has_key(STANDING_KEY_BIT | frame_id))

    def frame_failed(self, name: str, frame_id: int | None) -> None:
        """The frame was bad input: the questions naming it are given up (reported)."""
        for q in list(self.queue.pending):
            if q.names_frame() and q.due_on(name, frame_id):
                self._vlm_error(f"question {q.id} ({q.source}): frame {name} failed (see its "
                                f"input_error); not answered", frame_id)
                self.queue.done(q.id)

    def _heartbeat(self, frame_id: int):
        hb = self.loop.heartbeat
        if hb is None:
            return None
        beat = getattr(hb, "beat", None)
        fid = frame_id or 0
        if beat is not None:   # a HeartbeatWriter: the frame id rides along
            return lambda stage: beat(BEAT_STAGES.get(stage, "vlm_" + str(stage)), fid)
        return lambda stage: hb(BEAT_STAGES.get(stage, "vlm_" + str(stage)))

    # ---- the weights under the scrubber (module docstring) ------------------------------------------
    def _count(self, name: str, value: int | None = None) -> None:
        """A VLM_WEIGHT_COUNTERS counter: in self.stats always, in the loop's (housekeeping) counters
        only when the record's counter table knows the name (an unknown one is refused there)."""
        if value is None:
            self.stats[name] += 1
        else:
            self.stats[name] = value
        if name in rec.COUNTERS:
            self.loop.counters[name] = self.stats[name]

    def weights_failed(self, text: str) -> None:
        """A scrub_unrecoverable event of a VLM region (from the flight loop's drain): acted on
        before the next answer (_check_weights), in the loop's thread. Only for a region of the
        model in use that still holds the failed block: an event of a model dropped already (queued
        by the scrub thread before its regions left) is not held against the reloaded one."""
        name = text.partition(": ")[0]
        region = next((r for r in self.regions if r.name == name), None)
        if (self.model is not None and self.weights_failure is None and region is not None
                and region.failed):
            self.weights_failure = text

    def _check_weights(self) -> None:
        """Drop the model when one of its regions holds a block the scrubber could not restore."""
        self.loop._drain_scrub_events()   # journals pending scrub events; VLM ones -> weights_failed
        if self.model is None:
            return
        if self.weights_failure is None:
            bad = next((r for r in self.regions if r.failed), None)
            if bad is None:
                return
            self.weights_failure = f"{bad.name}: {len(bad.failed)} block(s) unrecoverable"
        why, self.weights_failure = self.weights_failure, None
        self._drop(why)

    def _drop(self, why: str) -> None:
        from edge.reliability.regions import unprotect_vlm

        if self.regions and self.loop.scrubber is not None:
            unprotect_vlm(self.loop, self.regions)
        self.regions = []
        self.model = self.model_id = None
        self.drops += 1
        self._count("vlm_weights_dropped")
        region = why.partition(": ")[0]     # the scrub event (journaled already) has the detail
        if self.drops >= MAX_DROPS:
            self.load_error = (f"vlm unusable: weights unrecoverable {self.drops} times in this run; "
                               f"off until the worker restarts")
            self._vlm_error(f"vlm weights unrecoverable: model dropped, {self.drops} drops, the VLM "
                            f"is off until the worker restarts ({region})")
        else:
            self._vlm_error(f"vlm weights unrecoverable: model dropped, loaded again from its files "
                            f"at the next question (drop {self.drops} of {MAX_DROPS}; {region})")

    def _protect(self, model, beat) -> None:
        """Put the loaded model's weights under the loop's scrubber (owned) or say they are not
        (copy); nothing when the scrubber is off. GoldenError when the files do not match the first
        load's digests; ValueError for regions that cannot be registered."""
        loop = self.loop
        if loop.scrubber is None or loop.regions is None:
            return
        from edge.reliability.regions import check_vlm_digests, protect_vlm, vlm_digests

        tick = None if beat is None else (lambda: beat("setup"))
        owned = bool(model.weight_regions()) if hasattr(model, "weight_regions") else False
        if owned:
            if self.digests is None:
                self.digests = vlm_digests(model, tick)
            else:   # a reload after a drop: the very files of the first load, or nothing
                check_vlm_digests(model, self.digests, tick)
        regions = protect_vlm(loop, model, self.digests or {}, beat=tick)
        if not regions:
            if not self.stats["vlm_weights_unprotected"]:
                self._count("vlm_weights_unprotected", 1)
                loop._event("started", f"scrubber: vlm weights unprotected (vlm.memory "
                                       f"{self.cfg.get('memory', 'copy')!r}: ONNX Runtime keeps its "
                                       f"own copy)")
            return
        self.regions = regions
        nbytes = sum(r.length for r in regions)
        total = loop.scrubber.protected_bytes
        loop._event("started", f"scrubber: vlm weights protected, {len(regions)} regions, {nbytes} "
                               f"bytes; a full pass now {total / loop.scrubber.budget_bytes_per_s:.1f} s")

    def _ensure_model(self, beat) -> bool:
        if self.model is not None:
            return True
        if self.load_error is not None:
            return False
        if beat is not None:
            beat("setup")
        t0 = time.perf_counter()
        try:
            from edge.reliability.scrubber import GoldenError
            from edge.vlm.tasks import vlm_model_id

            model = load_model(self.cfg)
            model_id = vlm_model_id(model)
            try:
                self._protect(model, beat)
            except GoldenError as e:   # a reload whose files changed since the first load
                raise ValueError(f"files not the ones first loaded: {e}") from None
        except Exception as e:  # VlmModelError, OSError, a runtime that cannot open the graphs
            self.load_error = f"vlm unusable: {e}"   # e names the directory / file (events: 160 bytes)
            self.loop.counters["model_errors"] += 1
            self.loop._event("vlm_error", self.load_error)
            log.error("%s", self.load_error)
            return False
        self.model, self.model_id = model, model_id
        self.loop._event("started", f"vlm {self.cfg['model_dir']} loaded in "
                                    f"{time.perf_counter() - t0:.1f} s (model id {model_id.hex()})")
        return True

    def answer(self, frame) -> int:
        """Answer every question due on `frame` (its detector record is journaled). Returns how many
        answers were journaled."""
        fid = frame.frame_id
        due = self.queue.due(frame.name, fid)
        standing = self.cfg["question"] is not None
        if not due and not standing:
            return 0
        beat = self._heartbeat(fid)
        todo = []
        for q in due:
            if self.loop.journal.has_key(q.key):   # journaled before a crash, not marked done
                log.info("question %d: answer already journaled, marked done", q.id)
                self.queue.done(q.id)
            else:
                todo.append(q)
        run_standing = standing and not self.loop.journal.has_key(STANDING_KEY_BIT | (fid or 0))
        if not todo and not run_standing:
            return 0
        self._check_weights()
        if not self._ensure_model(beat):
            for q in todo:
                self._vlm_error(f"question {q.id} ({q.source}): not answered: the VLM is unusable "
                                f"(reported at its load)", fid)
                self.queue.done(q.id)
            if run_standing:
                self._vlm_error("standing question: not answered: the VLM is unusable (reported at "
                                "its load)", fid)
            return 0
        if beat is not None:
            beat("setup")
        try:
            from edge.vlm.tasks import to_rgb8

            image = to_rgb8(frame.array, self.loop.cfg.sensor, layout=frame.layout)
        except Exception as e:  # a frame the detector took but the VLM cannot see
            for q in todo:
                self._vlm_error(f"question {q.id} ({q.source}): not answered: frame {frame.name}: "
                                f"no RGB image ({e})", fid)
                self.queue.done(q.id)
            if run_standing:
                self._vlm_error(f"standing question: frame {frame.name}: no RGB image ({e})", fid)
            return 0
        n = 0
        for q in todo:
            n += self._answer_one(frame, image, q.task, q.text, q.id, q.key, q.source, beat)
            self.queue.done(q.id)      # after the fsync in _answer_one (or its reported failure)
        if run_standing:
            key = STANDING_KEY_BIT | (fid or 0)
            n += self._answer_one(frame, image, self.cfg["task"], self.cfg["question"], None, key,
                                  "standing question", beat)
            self.queue.finished(key)
        return n

    def _screen(self, frame):
        """The detector's [screening] on the raw frame under each grounding tile (tasks.raw_screen):
        no-data and cloud tiles are not asked (the frame record's tiles key counts them)."""
        from edge.screen import ScreenRule
        from edge.vlm.tasks import raw_screen

        sc = self.loop.cfg.screening
        if not sc["enabled"]:
            return None
        return raw_screen(frame.array, self.loop.cfg.sensor["bands"],
                          ScreenRule(True, sc["nodata_fraction"], sc["cloud_fraction"]),
                          sc["bright_threshold"], layout=frame.layout)

    def _answer_one(self, frame, image, task: str, text, qid, key: int, source: str, beat) -> int:
        from edge.vlm.tasks import run_task

        loop, c, fid = self.loop, self.cfg, frame.frame_id
        who = f"question {qid} ({source})" if qid is not None else source
        self._check_weights()          # weights found unrecoverable since the last answer: reload
        if not self._ensure_model(beat):
            self._vlm_error(f"{who}: not answered: the VLM is unusable (reported at its load)", fid)
            return 0
        if self.queue.attempt(key) > MAX_ATTEMPTS:
            self._vlm_error(f"{who}: given up: {MAX_ATTEMPTS} answers started never finished (the "
                            f"worker stopped while answering)", fid)
            return 0
        t0 = time.perf_counter()
        try:
            out = run_task(self.model, image, task, text, question_id=qid, frame_id=fid,
                           tile=c["tile"], overlap=c["overlap"], max_tiles=c["max_tiles"],
                           image_max_side=c["image_max_side"], max_new_tokens=c["max_new_tokens"],
                           deadline_s=c["deadline_s"], merge_threshold=c["merge_threshold"],
                           heartbeat=beat, skip_tile=self._screen(frame) if task == "grounding" else None)
        except Exception as e:  # VlmModelError, a runtime error inside ORT, a bad image
            self._vlm_error(f"{who}: not answered: {type(e).__name__}: {e}", fid)
            return 0
        loop._beat("record")
        try:
            from edge.vlm.tasks import outcome_records

            encoded = outcome_records(out, first_seq=loop.journal.next_seq, time_ms=loop._now_ms(),
                                      model_id=self.model_id, capture_time_ms=frame.capture_time_ms,
                                      georef=frame.georef)
        except (ValueError, TypeError) as e:
            self._vlm_error(f"{who}: answer not encodable: {e}", fid)
            return 0
        for kind, payload in encoded:   # consecutive seqs, as outcome_records numbered them
            loop._append(payload, rec.KINDS[kind], key=key)
        loop.journal.sync()            # durable before the caller marks the question done
        loop._time_vlm(time.perf_counter() - t0)
        loop.counters["vlm_answers"] += 1
        loop.counters["vlm_items_skipped"] += int(getattr(out, "skipped", 0) or 0)
        if out.rejected:   # an answer with nothing usable (grounding: per tile): sent as text, reported
            loop.counters["vlm_rejected"] += int(out.rejected)
            loop._event("vlm_rejected", f"{who}: {out.rejected} answer(s) with nothing usable: "
                                        f"{_first(out.errors) or repr(out.text[:80])}", fid)
        elif out.errors:   # answered, with remarks (a label table overflow, tiles left unasked)
            for err in list(out.errors)[:MAX_EVENTS_PER_ANSWER]:
                loop._event("vlm_error", f"{who}: {err}", fid)
        if out.stop == "deadline":
            self._vlm_error(f"{who}: deadline of {c['deadline_s']:g} s reached after {out.tokens} "
                            f"token(s); the partial answer was sent", fid)
        log.info("%s on frame %s: %s, %d token(s), stop %s", who, fid, task, out.tokens, out.stop)
        return 1


def _first(errors):
    errors = list(errors or ())
    return errors[0] if errors else None


__all__ = ["MAX_DROPS", "MAX_PENDING", "QUESTION_KEY_BIT", "STANDING_KEY_BIT", "Question", "QuestionError",
           "QuestionQueue", "VlmService", "check_question", "load_model", "parse_queue_file"]
