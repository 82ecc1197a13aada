"""Tasks of the on-board VLM: prompts, grounding parse / repair, tiling a frame, answers (issue 7).

Flight side: numpy, PIL and the package only; it is handed a model object (edge.vlm.model.VlmModel or
anything with the same four members) and never imports torch. docs/vlm-contract.md "Tasks and records".

    GROUNDING_PROMPT, CAPTION_PROMPT, DEFAULT_GROUNDING_REQUEST, TASKS
    task_prompt(task, question) -> str
    parse_grounding(text, image_wh=None) -> GroundingParse(items, repairs, skipped, error)   never raises
    tile_frame(frame_hw, tile, overlap, max_tiles) -> [Placement]
    to_frame_boxes(items, placement, frame_hw) -> float32 [n, 4] frame pixels
    to_rgb8(frame, sensor=None, *, layout="HWC", stretch="percentile") -> (H, W, 3) uint8
    vlm_model_id(model) -> 4 bytes
    run_task(model, image_hwc_uint8, task, question, *, question_id, frame_id, tile, overlap, max_tiles,
             image_max_side, max_new_tokens, deadline_s, merge_threshold, heartbeat) -> TaskOutcome
    outcome_records(outcome, *, first_seq, time_ms, model_id, capture_time_ms=None, georef=None)
        -> [(kind, record bytes)]   (frame record for grounding, then the answer record)

Prompts (the model family's own formats). Grounding uses Liquid's grounding instruction, GROUNDING_PROMPT,
after the request, exactly as Liquid's VRSBench fine-tuning recipe spells its user turns (leap-finetune
cookbook/satellite-vlm/prepare_vrsbench.py: "Inspect the image and detect the {target}. " +
GROUNDING_PROMPT, answered with json.dumps([{"label": target, "bbox": [x1, y1, x2, y2]}]), 0-1
coordinates): a question that is a sentence (ends in . ? !) is sent as it is; a bare target ("ships",
"large white ship") is put in that recipe's sentence, so a VRSBench-tuned model sees its training format;
no question asks DEFAULT_GROUNDING_REQUEST ("Detect all objects."). Captions default to the same
recipe's CAPTION_PROMPT; VQA sends the question unchanged (VRSBench's questions are plain text too).

Grounding answers are parsed by a tolerant recursive-descent reader of the JSON the model was asked for,
which never raises on any str and records every repair it makes:
  - repaired (unambiguous): code fences and text around the array; a single object instead of a list
    (or one wrapped as {"objects": [...]}); trailing or stray commas, missing commas between values;
    single quotes; unquoted keys; missing closing brackets (a ']' or '}' closes what is open, end of text
    closes everything); a list closed early and continued (`}], {`); truncation (the complete items are
    kept; an item cut inside its label or bbox is dropped; one cut after both is kept); numbers written
    as strings; "bbox_2d" / "box" for "bbox" and "name" / "class" / "category" for "label"; a bbox as two
    points [[x1, y1], [x2, y2]]; swapped corners (x1 > x2 or y1 > y2); coordinates a hair (HAIR = 0.02)
    outside 0..1 (clipped); labels longer than MAX_LABEL_CHARS (cut: Liquid's recipe labels boxes with
    the whole referring expression);
  - coordinates above 1: read as 0..1000 (Qwen / GLM style) only when no coordinate of the answer is
    above 1000 and some coordinate is beyond the image (image_wh) the model saw, i.e. they cannot be
    pixels; read as pixels of image_wh only when some coordinate is above 1000 and all fit the image;
    otherwise (pixels and per-mille both possible, or image_wh unknown) the box is rejected as ambiguous;
  - rejected, each listed in `skipped` with its reason: no / empty / non-text label, no bbox, not 4
    numbers, non-finite, outside 0..1, zero width or height, a syntax error the reader cannot get past
    (it resyncs at the next '{'), and anything after MAX_PARSE_CHARS characters;
  - error is set when no item is usable and the text was not a valid empty list (`[]`, possibly with
    text around it: the model's "nothing found").
Every returned item is valid: label 1..64 characters of text, bbox 4 finite floats in 0..1 with x1 < x2
and y1 < y2.

Tiling. A frame is cut with orbit-edge's own tile planner (edge.kernels.tiling.plan_tiles: fixed stride,
the last row / column shifted inward, never padded); each tile is one VLM image, its valid extent only
(a frame smaller than the tile is one image of the frame's size). When the grid at full resolution needs
more than max_tiles tiles the frame is downscaled first, by the smallest factor s for which some grid of
rows x cols <= max_tiles tiles covers it (each axis of n tiles covers tile + (n - 1) * (tile - overlap)
pixels), to round(H / s) x round(W / s) with PIL's box filter (area averaging); Placement keeps the
per-axis scale, so boxes map back to full-frame pixels exactly: x = (tile_x0 + bx * tile_w) * scale_x.

Answers. VQA and captions: the whole frame shrunk (box filter) so its longer side is at most
image_max_side, one image. Grounding: per tile, model.prepare([tile], model.chat_prompt(prompt, 1)) ->
model.generate(..., deadline_s = what is left of deadline_s divided by the tiles left) -> parse_grounding
(image_wh = the tile image) -> frame pixels -> one cross-tile merge of every tile's boxes with the
detector pipeline's merge (edge.kernels.nms.merge_boxes, mode "nms", metric "ios", threshold
merge_threshold, class-aware by label; run on one tile too: a small model that repeats an item in a loop
gives one box). Scores: the model gives none and generate() exposes no token probabilities, so every box
scores SCORE (1.0); to make the merge keep the better copy of an object cut by a tile edge, boxes that
touch an edge of their tile inside the frame are ranked after the others (equal scores rank by input
order). Labels: sorted by first appearance (tile order, then answer order), class ids index them; at
most MAX_LABELS (256, the record's limit) -- items with a further new label are dropped and counted.
Tiles the deadline leaves no time for are not asked (stop "deadline", an error says how many).

Counts (TaskOutcome): rejected = answers with nothing usable (a grounding tile whose parse has an error,
an empty VQA / caption answer); skipped = grounding items dropped (validation, the label limit); errors
= one line per problem ("tile 3: no JSON array or object in the answer"). stop = the worst over tiles:
deadline > max_tokens > eos. Exceptions of the model itself (a broken graph) propagate: the flight loop
counts them as vlm_errors. Bad arguments raise TaskError (a ValueError) naming the argument.

Model id: VlmModel has no model id, so vlm_model_id(model) takes `model.model_id` when it is 4 bytes,
else the first 4 bytes of the sha256 of the decoder graph file (model.files["decoder"].path), as
edge.downlink.record.model_id_of does for the detectors' model files; cached per (path, size, mtime).
"""
from __future__ import annotations

import hashlib
import math
import numbers
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from edge.kernels.nms import merge_boxes
from edge.kernels.tiling import plan_tiles

#: Liquid's grounding instruction (the LFM2-VL family's format), appended to the request.
GROUNDING_PROMPT = ('Provide result as a valid JSON: [{"label": str, "bbox": [x1,y1,x2,y2]}, ...]. '
                    'Coordinates must be normalized to 0-1.')
#: The request when a grounding question names nothing.
DEFAULT_GROUNDING_REQUEST = "Detect all objects."
#: A bare grounding target goes into Liquid's VRSBench recipe sentence.
GROUNDING_TARGET_REQUEST = "Inspect the image and detect the {target}."
#: The default caption request (Liquid's VRSBench recipe).
CAPTION_PROMPT = "Describe this satellite image in detail."
TASKS = ("grounding", "vqa", "caption")
STOP_ORDER = ("eos", "max_tokens", "deadline")   # worst last

MAX_QUESTION_CHARS = 4000
MAX_PARSE_CHARS = 32768   # a grounding answer is read up to here (max_new_tokens bounds it far below)
MAX_DEPTH = 16            # nesting the reader follows (an item nests 3 deep)
MAX_LABEL_CHARS = 64
MAX_LABELS = 256          # the frame record's label table (class ids are uint8)
HAIR = 0.02               # coordinates this far outside 0..1 are clipped, beyond that rejected
PER_MILLE = 1000.0
SCORE = 1.0               # the score of every VLM box (the model gives none)
EDGE_FRACTION = 0.02      # a box this close (fraction of the tile) to an inner tile edge "touches" it
RGB_SAMPLE_PIXELS = 1 << 20   # pixels sampled per band for the percentile stretch of to_rgb8

_LABEL_KEYS = ("label", "name", "class", "category")
_BBOX_KEYS = ("bbox", "bbox_2d", "box")


class TaskError(ValueError):
    """A bad argument of a task (the message names it)."""


# ---- prompts ---------------------------------------------------------------------------------------

def task_prompt(task: str, question: str | None) -> str:
    """The user text of a task (see the module docstring)."""
    if task not in TASKS:
        raise TaskError(f"task: must be one of {', '.join(TASKS)}, got {task!r}")
    if question is not None:
        if not isinstance(question, str):
            raise TaskError(f"question: must be text or None, got {type(question).__name__}")
        question = " ".join(question.split())   # one line: newlines would break the chat turn's look
        if len(question) > MAX_QUESTION_CHARS:
            raise TaskError(f"question: at most {MAX_QUESTION_CHARS} characters, got {len(question)}")
        if not question:
            question = None
    if task == "grounding":
        if question is None:
            request = DEFAULT_GROUNDING_REQUEST
        elif question[-1] in ".?!":
            request = question
        else:
            request = GROUNDING_TARGET_REQUEST.format(target=question)
        return f"{request} {GROUNDING_PROMPT}"
    if task == "caption":
        return CAPTION_PROMPT if question is None else question
    if question is None:
        raise TaskError("question: a VQA task needs a question")
    return question


# ---- grounding: parse and repair -------------------------------------------------------------------

@dataclass
class GroundingItem:
    label: str
    bbox: tuple   # (x1, y1, x2, y2) normalized 0..1 of the image the model saw


@dataclass
class GroundingParse:
    items: list            # [GroundingItem], valid
    repairs: list          # what was repaired, each once, in order
    skipped: list          # "item 3: bbox has 3 values (want 4)"
    error: str | None      # set when nothing usable and the text was not a valid empty list


class _Syntax(Exception):
    def __init__(self, pos: int, msg: str):
        super().__init__(msg)
        self.pos, self.msg = pos, msg


class _EOF(Exception):
    """The text ended inside a value; `partial` holds an object's members read so far."""

    def __init__(self, partial=None):
        super().__init__("truncated")
        self.partial = partial


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_WORDS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None,
          "NaN": math.nan, "nan": math.nan, "Infinity": math.inf, "inf": math.inf}
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
            "'": "'"}
_OPENERS = "[{\"'-+.0123456789"


class _Reader:
    """A tolerant JSON reader over s (see the module docstring); repairs go to self.repairs."""

    def __init__(self, s: str):
        self.s, self.n, self.i = s, len(s), 0
        self.repairs: dict = {}

    def note(self, what: str) -> None:
        self.repairs.setdefault(what, None)

    def ws(self) -> None:
        s, i, n = self.s, self.i, self.n
        while i < n and s[i] in " \t\r\n\f\v\u00a0":
            i += 1
        self.i = i

    def value(self, depth: int):
        self.ws()
        if self.i >= self.n:
            raise _EOF()
        if depth > MAX_DEPTH:
            raise _Syntax(self.i, f"nested deeper than {MAX_DEPTH}")
        c = self.s[self.i]
        if c == "{":
            return self.obj(depth + 1)
        if c == "[":
            return self.arr(depth + 1)
        if c in "\"'":
            return self.string()
        m = _NUMBER.match(self.s, self.i)
        if m:
            if m.end() >= self.n:
                raise _EOF()   # "0.4" at the end may be "0.45" cut short
            self.i = m.end()
            try:
                return float(m.group()) if any(ch in m.group() for ch in ".eE") else int(m.group())
            except (ValueError, OverflowError):
                raise _Syntax(m.start(), f"bad number {m.group()[:20]!r}") from None
        if c == "-" and self.s.startswith("-Infinity", self.i):
            self.i += 9
            return -math.inf
        m = _WORD.match(self.s, self.i)
        if m:
            if m.end() >= self.n:
                raise _EOF()
            if m.group() in _WORDS:
                self.i = m.end()
                return _WORDS[m.group()]
            raise _Syntax(m.start(), f"unexpected word {m.group()[:20]!r}")
        raise _Syntax(self.i, f"unexpected {c!r}")

    def string(self) -> str:
        s, n = self.s, self.n
        q = s[self.i]
        if q == "'":
            self.note("single quotes")
        i = self.i + 1
        out = []
        while True:
            j = i
            while j < n and s[j] != q and s[j] != "\\":
                j += 1
            out.append(s[i:j])
            if j >= n:
                raise _EOF()
            if s[j] == q:
                self.i = j + 1
                return "".join(out)
            if j + 1 >= n:   # a backslash at the very end
                raise _EOF()
            e = s[j + 1]
            if e == "u":
                hexd = s[j + 2:j + 6]
                if len(hexd) < 4 and j + 6 > n:
                    raise _EOF()
                try:
                    cp = int(hexd, 16)
                    i = j + 6
                    low = s[i + 2:i + 6] if s.startswith("\\u", i) else ""
                    if 0xD800 <= cp < 0xDC00 and len(low) == 4 and re.fullmatch(r"[dD][c-fC-F][0-9a-fA-F]{2}", low):
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (int(low, 16) - 0xDC00)   # a surrogate pair
                        i += 6
                    out.append(chr(cp))
                except ValueError:
                    out.append("\\u")
                    i = j + 2
            else:
                out.append(_ESCAPES.get(e, "\\" + e))
                i = j + 2

    def key(self):
        self.ws()
        c = self.s[self.i]
        if c in "\"'":
            return self.string()
        m = _WORD.match(self.s, self.i)
        if m:
            if m.end() >= self.n:
                raise _EOF()
            self.note("unquoted keys")
            self.i = m.end()
            return m.group()
        raise _Syntax(self.i, f"expected a key, got {c!r}")

    def obj(self, depth: int) -> dict:
        s = self.s
        self.i += 1   # '{'
        out: dict = {}
        expect_member = True
        while True:
            self.ws()
            if self.i >= self.n:
                if out:
                    self.note("missing '}'")
                raise _EOF(out)
            c = s[self.i]
            if c == "}":
                self.i += 1
                return out
            if c == "]":   # "[..., {...]": the '}' is missing; the ']' belongs to the list
                self.note("missing '}'")
                return out
            if c == ",":
                self.i += 1
                if expect_member:
                    self.note("stray comma")
                expect_member = True
                continue
            if not expect_member:
                if c in "\"'" or _WORD.match(s, self.i):
                    self.note("missing comma")
                else:
                    raise _Syntax(self.i, f"expected ',' or '}}', got {c!r}")
            try:
                k = self.key()
                self.ws()
                if self.i >= self.n:
                    raise _EOF()
                if s[self.i] != ":":
                    raise _Syntax(self.i, f"expected ':' after key {str(k)[:20]!r}")
                self.i += 1
                v = self.value(depth)
            except _EOF:
                raise _EOF(out) from None
            out[k] = v
            expect_member = False
            self.ws()
            if self.i < self.n and s[self.i] == ",":
                j = self.i + 1
                while j < self.n and s[j] in " \t\r\n":
                    j += 1
                if j < self.n and s[j] == "}":
                    self.note("trailing comma")
                    self.i = j

    def arr(self, depth: int) -> list:
        s = self.s
        self.i += 1   # '['
        out: list = []
        expect_value = True
        while True:
            self.ws()
            if self.i >= self.n:
                if out:
                    self.note("missing ']'")
                    return out
                raise _EOF()
            c = s[self.i]
            if c == "]":
                self.i += 1
                return out
            if c == "}":   # "[0.1, 0.2, 0.3, 0.4}": the ']' is missing; the '}' belongs to the object
                self.note("missing ']'")
                return out
            if c == ",":
                self.i += 1
                self.ws()
                if self.i < self.n and s[self.i] == "]":
                    self.note("trailing comma")
                elif expect_value:
                    self.note("stray comma")
                expect_value = True
                continue
            if not expect_value:
                if c in _OPENERS or _WORD.match(s, self.i):
                    self.note("missing comma")
                else:
                    raise _Syntax(self.i, f"expected ',' or ']', got {c!r}")
            out.append(self.value(depth))
            expect_value = False


def _start_of_json(s: str) -> tuple[int, bool]:
    """(index, is_list) of the answer's array -- the first '[' opening an object or a list, or closing at
    once ("[see below]" in prose is not one) -- or else of its first '{'; (-1, False) when neither."""
    lst = re.search(r"\[\s*[{\[\]]", s)
    brace = s.find("{")
    if lst and (brace < 0 or lst.start() < brace):
        return lst.start(), True
    if brace >= 0:
        return brace, False
    if lst:
        return lst.start(), True
    return -1, False


def _strip_fence(s: str, note) -> str:
    m = re.search(r"```[A-Za-z0-9_-]*[ \t]*\n?", s)
    if not m:
        return s
    note("code fence")
    end = s.find("```", m.end())
    return s[m.end():] if end < 0 else s[m.end():end]


def _number(v, where: str, note):
    if isinstance(v, bool):
        raise ValueError(f"{where} is a boolean")
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            raise ValueError(f"{where} is not a number ({v[:20]!r})") from None
        note("numbers as strings")
        return x
    raise ValueError(f"{where} is not a number ({type(v).__name__})")


def _raw_item(obj, note):
    """(label, [4 floats]) of one parsed element, or raise ValueError with the reason."""
    if not isinstance(obj, dict):
        raise ValueError(f"not an object ({type(obj).__name__})")
    label = next((obj[k] for k in _LABEL_KEYS if k in obj), None)
    if "label" not in obj and label is not None:
        note("label key alias")
    if label is None:
        raise ValueError("no label")
    if not isinstance(label, str):
        raise ValueError(f"label is not text ({type(label).__name__})")
    label = " ".join(label.split())
    if not label:
        raise ValueError("empty label")
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:   # a lone surrogate from a \\ud800 escape: keep it visible, encodable
        label = label.encode("utf-8", "backslashreplace").decode("utf-8")
        note("label with lone surrogates escaped")
    if len(label) > MAX_LABEL_CHARS:
        label = label[:MAX_LABEL_CHARS].rstrip()
        note(f"label cut to {MAX_LABEL_CHARS} characters")
    bbox = next((obj[k] for k in _BBOX_KEYS if k in obj), None)
    if "bbox" not in obj and bbox is not None:
        note("bbox key alias")
    if bbox is None:
        raise ValueError("no bbox")
    if not isinstance(bbox, list):
        raise ValueError(f"bbox is not a list ({type(bbox).__name__})")
    if len(bbox) == 2 and all(isinstance(p, list) and len(p) == 2 for p in bbox):
        bbox = bbox[0] + bbox[1]
        note("bbox as two points")
    if len(bbox) != 4:
        raise ValueError(f"bbox has {len(bbox)} values (want 4)")
    vals = [_number(v, f"bbox[{k}]", note) for k, v in enumerate(bbox)]
    if not all(math.isfinite(v) for v in vals):
        raise ValueError("bbox is not finite")
    return label, vals


def _unwrap(obj, note):
    """A single object: itself when it is an item, else the one list of objects it wraps."""
    if isinstance(obj, dict) and not any(k in obj for k in _BBOX_KEYS):
        lists = [v for v in obj.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:
            note("list wrapped in an object")
            return lists[0]
    note("single object, not a list")
    return [obj]


def parse_grounding(text, image_wh=None) -> GroundingParse:
    """Parse, repair and validate a grounding answer (module docstring). Never raises.

    image_wh: (width, height) of the image the model saw; only used to tell pixel coordinates from
    0..1000 ones (without it, boxes with coordinates above 1 are rejected as ambiguous)."""
    repairs: dict = {}
    skipped: list = []

    def note(what):
        repairs.setdefault(what, None)

    def done(items, error):
        return GroundingParse(items, list(repairs), skipped, error)

    if not isinstance(text, str):
        return done([], f"answer: must be text, got {type(text).__name__}")
    if not text.strip():
        return done([], "empty answer")
    if len(text) > MAX_PARSE_CHARS:
        text = text[:MAX_PARSE_CHARS]
        note(f"answer read up to {MAX_PARSE_CHARS} characters")
    s = _strip_fence(text, note)
    start, is_list = _start_of_json(s)
    if start < 0:
        return done([], "no JSON array or object in the answer")
    if s[:start].strip():
        note("text around the JSON")
    r = _Reader(s)
    r.i = start
    elements: list = []   # (index, parsed element, truncated)
    valid_empty = False
    if not is_list:
        try:
            obj = r.obj(1)
            elements = [(k, e, False) for k, e in enumerate(_unwrap(obj, note))]
        except _EOF as e:
            if e.partial:
                elements = [(0, e.partial, True)]
            note("truncated")
        except _Syntax as e:
            skipped.append(f"item 0: {e.msg} (char {e.pos})")
    else:
        r.i += 1
        k = 0
        expect_item = True
        closed = False
        while True:
            r.ws()
            if r.i >= r.n:
                if elements or skipped:
                    note("missing ']'")
                break
            c = s[r.i]
            if c == "]":
                r.i += 1
                j = r.i
                while j < r.n and s[j] in " \t\r\n":
                    j += 1
                if j < r.n and s[j] == ",":   # "}], {": a list closed early and continued
                    j += 1
                    while j < r.n and s[j] in " \t\r\n":
                        j += 1
                    if j < r.n and s[j] == "{":
                        note("list closed early")
                        r.i = j
                        expect_item = True
                        continue
                closed = True
                break
            if c == ",":
                r.i += 1
                r.ws()
                if r.i < r.n and s[r.i] == "]":
                    note("trailing comma")
                elif expect_item:
                    note("stray comma")
                expect_item = True
                continue
            if not expect_item:
                note("missing comma")
            item_start = r.i
            try:
                el = r.obj(1) if c == "{" else r.value(1)
            except _EOF as e:
                if e.partial:
                    elements.append((k, e.partial, True))
                else:
                    skipped.append(f"item {k}: truncated")
                note("truncated")
                break
            except _Syntax as e:
                skipped.append(f"item {k}: {e.msg} (char {e.pos})")
                k += 1
                nxt = s.find("{", max(e.pos, item_start + 1))
                if nxt < 0:
                    break
                r.i = nxt
                expect_item = True
                continue
            elements.append((k, el, False))
            k += 1
            expect_item = False
        valid_empty = closed and not elements and not skipped
        if closed and s[r.i:].strip():
            note("text around the JSON")
    repairs.update(r.repairs)

    # ---- validate: labels and raw numbers first, then the coordinate scale of the whole answer
    raws = []
    for k, el, truncated in elements:
        try:
            raws.append((k, *_raw_item(el, note)))
        except ValueError as e:
            skipped.append(f"item {k}: {'truncated: ' if truncated else ''}{e}")
    big = [vals for _, _, vals in raws if max(vals) > 1 + HAIR]
    scale = None   # (sx, sy) that turns the big boxes into 0..1, or a reason to reject them
    reason = None
    if big:
        top = max(max(v) for v in big)
        permille_ok = top <= PER_MILLE * (1 + HAIR)
        pixel_ok = None
        if image_wh is not None:
            w, h = float(image_wh[0]), float(image_wh[1])
            pixel_ok = all(max(v[0], v[2]) <= w * (1 + HAIR) and max(v[1], v[3]) <= h * (1 + HAIR)
                           for v in big)
        if image_wh is None:
            reason = "coordinates above 1 and the image size is unknown (pixels or 0..1000?)"
        elif permille_ok and pixel_ok and (w, h) != (PER_MILLE, PER_MILLE):
            reason = f"coordinates above 1 fit both 0..1000 and the {w:g}x{h:g} image's pixels (ambiguous)"
        elif permille_ok:
            scale = (PER_MILLE, PER_MILLE)
            note("coordinates read as 0..1000")
        elif pixel_ok:
            scale = (w, h)
            note(f"coordinates read as pixels of the {w:g}x{h:g} image")
        else:
            reason = "coordinates outside 0..1"
    items = []
    for k, label, vals in raws:
        if max(vals) > 1 + HAIR:
            if scale is None:
                skipped.append(f"item {k}: {reason}")
                continue
            vals = [vals[0] / scale[0], vals[1] / scale[1], vals[2] / scale[0], vals[3] / scale[1]]
        if min(vals) < -HAIR or max(vals) > 1 + HAIR:
            skipped.append(f"item {k}: coordinates outside 0..1")
            continue
        if any(v < 0 or v > 1 for v in vals):
            note("clipped to 0..1")
        x1, y1, x2, y2 = (min(1.0, max(0.0, v)) for v in vals)
        if x1 > x2 or y1 > y2:
            note("swapped corners")
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
        if x1 == x2 or y1 == y2:
            skipped.append(f"item {k}: zero width or height")
            continue
        items.append(GroundingItem(label, (x1, y1, x2, y2)))
    error = None
    if not items and not valid_empty:
        if skipped:
            error = f"nothing usable: {len(skipped)} item(s) skipped (first: {skipped[0]})"
        else:
            error = "no grounding items in the answer"
    return done(items, error)


# ---- tiling ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """One tile of a frame as one VLM image.

    y, x, h, w: the tile in the working image (the frame, or the frame downscaled for max_tiles);
    scale_y, scale_x: frame pixels per working-image pixel (1.0 when not downscaled)."""

    index: int
    y: int
    x: int
    h: int
    w: int
    scale_y: float = 1.0
    scale_x: float = 1.0
    rows: int = 1
    cols: int = 1

    @property
    def frame_box(self) -> tuple:
        """(x1, y1, x2, y2) of the tile in frame pixels."""
        return (self.x * self.scale_x, self.y * self.scale_y,
                (self.x + self.w) * self.scale_x, (self.y + self.h) * self.scale_y)

    @property
    def image_wh(self) -> tuple:
        return self.w, self.h


def _positive_int(value, name: str, lo: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TaskError(f"{name}: must be an integer, got {value!r}")
    if value < lo:
        raise TaskError(f"{name}: must be >= {lo}, got {value}")
    return int(value)


def _frame_hw(frame_hw) -> tuple:
    try:
        h, w = frame_hw
    except (TypeError, ValueError):
        raise TaskError(f"frame_hw: must be (height, width), got {frame_hw!r}") from None
    return _positive_int(h, "frame_hw.height"), _positive_int(w, "frame_hw.width")


def _axis_cover(n: int, tile: int, overlap: int) -> int:
    """Pixels that n tiles cover along one axis."""
    return tile + (n - 1) * (tile - overlap)


def working_size(frame_hw, tile: int, overlap: int, max_tiles: int) -> tuple:
    """(height, width) the frame is tiled at: the frame's own when its grid fits max_tiles, else the
    frame downscaled by the smallest factor that makes some rows x cols <= max_tiles grid cover it."""
    h, w = frame_hw
    from edge.kernels.tiling import axis_count
    if axis_count(h, tile, overlap) * axis_count(w, tile, overlap) <= max_tiles:
        return h, w
    best = None
    for rows in range(1, max_tiles + 1):
        cols = max_tiles // rows
        s = max(1.0, h / _axis_cover(rows, tile, overlap), w / _axis_cover(cols, tile, overlap))
        if best is None or s < best[0]:
            best = (s, rows, cols)
    s, rows, cols = best
    hs = min(_axis_cover(rows, tile, overlap), max(1, round(h / s)))
    ws = min(_axis_cover(cols, tile, overlap), max(1, round(w / s)))
    return hs, ws


def tile_frame(frame_hw, tile: int, overlap: int, max_tiles: int) -> list:
    """The tiles of a frame as VLM images (module docstring), row-major."""
    h, w = _frame_hw(frame_hw)
    tile = _positive_int(tile, "tile")
    overlap = _positive_int(overlap, "overlap", lo=0)
    if overlap >= tile:
        raise TaskError(f"overlap: must be smaller than tile ({tile}), got {overlap}")
    max_tiles = _positive_int(max_tiles, "max_tiles")
    hs, ws = working_size((h, w), tile, overlap, max_tiles)
    plan = plan_tiles(hs, ws, tile, overlap)
    sy, sx = h / hs, w / ws
    return [Placement(i, int(y), int(x), plan.valid_h, plan.valid_w, sy, sx, plan.rows, plan.cols)
            for i, (y, x) in enumerate(plan.origins.tolist())]


def to_frame_boxes(items, placement: Placement, frame_hw) -> np.ndarray:
    """Normalized boxes of one tile's items (GroundingItem or 4 numbers) in frame pixels, [n, 4] float32,
    clipped to the frame."""
    h, w = _frame_hw(frame_hw)
    n = len(items)
    out = np.zeros((n, 4), np.float64)
    for k, it in enumerate(items):
        out[k] = it.bbox if isinstance(it, GroundingItem) else it
    p = placement
    out[:, [0, 2]] = (p.x + out[:, [0, 2]] * p.w) * p.scale_x
    out[:, [1, 3]] = (p.y + out[:, [1, 3]] * p.h) * p.scale_y
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h)
    return out.astype(np.float32)


# ---- images ------------------------------------------------------------------------------------------

def to_rgb8(frame, sensor=None, *, layout: str = "HWC", stretch: str = "percentile") -> np.ndarray:
    """A sensor frame as the (H, W, 3) uint8 RGB image a VLM expects.

    frame: (H, W), (H, W, C) HWC or (C, H, W) CHW, uint8 or uint16 (12-bit sensors). sensor: the
    config's [sensor] table (bit_depth, bands: the R, G, B source bands, e.g. [2, 1, 0] for B, G, R,
    NIR frames) or None (then the ground renderer's default bands: [2, 1, 0] for 4+ bands, [0, 1, 2]
    for 3, grey for 1). uint8 data are taken as they are. uint16: "percentile" stretches each band
    between the renderer's STRETCH_PERCENTILES (2nd / 98th, robust to hot pixels and dark water, as
    edge-ground render shows frames), estimated on at most RGB_SAMPLE_PIXELS pixels of the whole frame,
    so every tile of it gets the same colours; "linear" maps 0..2**bit_depth - 1 onto 0..255. Applied
    as a per-band lookup table: the only full-size array made is the output."""
    from edge.ground.render import STRETCH_PERCENTILES, default_bands
    if not isinstance(frame, np.ndarray):
        raise TaskError(f"frame: must be a numpy array, got {type(frame).__name__}")
    if frame.dtype not in (np.uint8, np.uint16):
        raise TaskError(f"frame: dtype must be uint8 or uint16, got {frame.dtype}")
    if stretch not in ("percentile", "linear"):
        raise TaskError(f"stretch: must be 'percentile' or 'linear', got {stretch!r}")
    if frame.ndim == 2:
        planes = frame[None]
    elif frame.ndim == 3 and layout in ("HWC", "CHW"):
        planes = np.moveaxis(frame, -1, 0) if layout == "HWC" else frame
    else:
        raise TaskError(f"frame: must be (H, W) or 3-D with layout HWC / CHW, got shape {frame.shape}, "
                        f"layout {layout!r}")
    n_bands, h, w = planes.shape
    if h == 0 or w == 0:
        raise TaskError(f"frame: empty, shape {frame.shape}")
    bands = None
    bit_depth = 8 if frame.dtype == np.uint8 else 16
    if sensor is not None:
        bands = list(sensor.get("bands") or []) or None
        bit_depth = int(sensor.get("bit_depth") or bit_depth)
        if bands is not None and len(bands) not in (1, 3):
            bands = None   # a detector's 4-channel band list: not an RGB choice
    if bands is None:
        bands = default_bands(n_bands)
    if not all(isinstance(b, numbers.Integral) and 0 <= b < n_bands for b in bands):
        raise TaskError(f"sensor.bands: need band indices in 0..{n_bands - 1}, got {bands}")
    out = np.empty((h, w, 3), np.uint8)
    step = max(1, int(math.sqrt(h * w / RGB_SAMPLE_PIXELS)))
    for c, b in enumerate(bands if len(bands) == 3 else bands * 3):
        plane = planes[b]
        if frame.dtype == np.uint8:
            out[:, :, c] = plane
            continue
        if stretch == "linear":
            lo, hi = 0.0, float(2 ** bit_depth - 1)
        else:
            lo, hi = (float(v) for v in np.percentile(plane[::step, ::step], STRETCH_PERCENTILES))
        if hi <= lo:
            hi = lo + 1.0
        lut = np.clip(np.rint((np.arange(65536, dtype=np.float64) - lo) * (255.0 / (hi - lo))), 0, 255)
        out[:, :, c] = lut.astype(np.uint8)[plane]
    return out


def _as_rgb(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TaskError("image: must be a uint8 numpy array (H, W, 3); use to_rgb8 for sensor frames, got "
                        f"{type(image).__name__} {getattr(image, 'dtype', '')}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise TaskError(f"image: must be (H, W, 3) or (H, W) uint8, got shape {image.shape} "
                        "(use to_rgb8 for multiband frames)")
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def _resize(image: np.ndarray, hw: tuple) -> np.ndarray:
    from PIL import Image
    if image.shape[:2] == tuple(hw):
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((hw[1], hw[0]), Image.BOX))


def fit_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """The image shrunk (box filter) so that its longer side is at most max_side; never enlarged."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    s = max(h, w) / max_side
    return _resize(image, (max(1, min(max_side, round(h / s))), max(1, min(max_side, round(w / s)))))


# ---- model id ----------------------------------------------------------------------------------------

_MODEL_IDS: dict = {}


def vlm_model_id(model) -> bytes:
    """4-byte model id of a VLM (module docstring)."""
    mid = getattr(model, "model_id", None)
    if isinstance(mid, (bytes, bytearray)) and len(mid) == 4:
        return bytes(mid)
    try:
        path = model.files["decoder"].path
    except (AttributeError, KeyError, TypeError):
        raise TaskError("model: has neither a 4-byte model_id nor files['decoder'].path to hash") from None
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    if key not in _MODEL_IDS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _MODEL_IDS[key] = h.digest()[:4]
    return _MODEL_IDS[key]


# ---- running a task ----------------------------------------------------------------------------------

@dataclass
class TaskOutcome:
    """One answered question: what the flight loop turns into records (module docstring)."""

    task: str
    question_id: int | None
    frame_id: int | None
    text: str                       # the model's raw text (grounding: the tiles' texts, one per line)
    tokens: int                     # tokens generated, over all tiles
    stop: str                       # eos | max_tokens | deadline (the worst over tiles)
    timings: dict                   # {"vision", "prefill", "decode"}: ms, summed over tiles
    boxes: np.ndarray | None = None     # grounding: [n, 4] float32 frame pixels, merged
    scores: np.ndarray | None = None    # [n] float32 (SCORE)
    class_ids: np.ndarray | None = None  # [n] int64, index labels
    labels: list = field(default_factory=list)
    rejected: int = 0               # answers with nothing usable
    skipped: int = 0                # grounding items dropped
    errors: list = field(default_factory=list)
    tiles: int = 0                  # VLM images asked (tiles for grounding, 1 otherwise)
    tiles_planned: int = 0
    tiles_nodata: int = 0           # grounding tiles skip_tile screened out as no-data ...
    tiles_cloud: int = 0            # ... or as cloud (never asked: seconds of compute each)
    frame_hw: tuple | None = None   # (height, width) of the frame asked about
    repairs: list = field(default_factory=list)   # grounding repairs made, each once

    @property
    def n_detections(self) -> int:
        return 0 if self.boxes is None else len(self.boxes)


def _worst(a: str, b: str) -> str:
    rank = {s: k for k, s in enumerate(STOP_ORDER)}
    return a if rank.get(a, len(STOP_ORDER)) >= rank.get(b, len(STOP_ORDER)) else b


def _add_timings(acc: dict, result) -> None:
    t = getattr(result, "timings", None) or {}
    for stage in ("vision", "prefill", "decode"):
        v = t.get(f"{stage}_s", 0.0)
        if isinstance(v, numbers.Real) and math.isfinite(v) and v > 0:
            acc[stage] += float(v) * 1e3


def _ask(model, image, prompt: str, max_new_tokens: int, deadline_s: float, heartbeat):
    inputs = model.prepare([image], model.chat_prompt(prompt, 1))
    return model.generate(inputs, max_new_tokens=max_new_tokens, deadline_s=deadline_s, heartbeat=heartbeat)


def _touches_inner_edge(box, p: Placement, frame_hw) -> bool:
    fx1, fy1, fx2, fy2 = p.frame_box
    h, w = frame_hw
    ex, ey = EDGE_FRACTION * (fx2 - fx1), EDGE_FRACTION * (fy2 - fy1)
    x1, y1, x2, y2 = box
    return ((fx1 > 0 and x1 <= fx1 + ex) or (fy1 > 0 and y1 <= fy1 + ey)
            or (fx2 < w and x2 >= fx2 - ex) or (fy2 < h and y2 >= fy2 - ey))


def raw_screen(frame: np.ndarray, bands, rule, bright_threshold: int, layout: str = "HWC"):
    """skip_tile for run_task: the detector's screening (edge/screen.py: no-data = 0 in every band,
    cloud = >= bright_threshold in every band, the same fractions and thresholds) applied to the RAW
    frame under one VLM tile, so a VLM grounding pass never spends seconds on a tile the detector
    would not look at. rule: edge.screen.ScreenRule; bands: the [sensor] bands the model sees."""
    from edge.screen import CLOUD, NODATA, screen_tiles

    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = arr[:, :, None]
        bands = [0]
    hwc = arr if layout == "HWC" else np.moveaxis(arr, 0, -1)
    idx = list(bands)

    def skip(box) -> str | None:
        if not rule.enabled:
            return None
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        raw = hwc[y1:y2, x1:x2][..., idx]
        n = raw.shape[0] * raw.shape[1]
        if n == 0:
            return None
        nodata = np.count_nonzero((raw == 0).all(axis=-1)) / n
        bright = np.count_nonzero((raw >= bright_threshold).all(axis=-1)) / n
        d = screen_tiles(np.array([nodata]), np.array([bright]), rule)[0]
        return "nodata" if d == NODATA else "cloud" if d == CLOUD else None

    return skip


def run_task(model, image_hwc_uint8: np.ndarray, task: str, question: str | None, *, question_id=None,
             frame_id=None, tile: int = 512, overlap: int = 64, max_tiles: int = 16,
             image_max_side: int = 512, max_new_tokens: int = 256, deadline_s: float = 60.0,
             merge_threshold: float = 0.5, heartbeat=None, skip_tile=None) -> TaskOutcome:
    """Ask `model` one question about one image (module docstring).

    skip_tile: optional, for grounding: skip_tile((x1, y1, x2, y2) in frame pixels) -> None (ask the
    tile) or "nodata" / "cloud" (do not: counted in tiles_nodata / tiles_cloud). The flight loop passes
    the detector's screening rule applied to the raw frame (edge.vlm.tasks.raw_screen)."""
    t_start = time.monotonic()
    prompt = task_prompt(task, question)
    image = _as_rgb(image_hwc_uint8)
    for value, name in ((question_id, "question_id"), (frame_id, "frame_id")):
        if value is not None:
            _positive_int(value, name, lo=0)
    max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
    image_max_side = _positive_int(image_max_side, "image_max_side")
    if not isinstance(deadline_s, numbers.Real) or not deadline_s > 0 or not math.isfinite(deadline_s):
        raise TaskError(f"deadline_s: must be a positive number of seconds, got {deadline_s!r}")
    if not isinstance(merge_threshold, numbers.Real) or not 0 <= merge_threshold <= 1:
        raise TaskError(f"merge_threshold: must be in 0..1, got {merge_threshold!r}")
    beat = heartbeat if heartbeat is not None else (lambda stage: None)
    frame_hw = tuple(image.shape[:2])
    timings = dict.fromkeys(("vision", "prefill", "decode"), 0.0)
    out = TaskOutcome(task, question_id, frame_id, "", 0, "eos", timings, frame_hw=frame_hw)

    if task != "grounding":
        beat("preprocess")
        result = _ask(model, fit_side(image, image_max_side), prompt, max_new_tokens, float(deadline_s),
                      heartbeat)
        out.text, out.tokens, out.stop = result.text, len(result.tokens), result.stop
        out.tiles = out.tiles_planned = 1
        _add_timings(timings, result)
        if not result.text.strip():
            out.rejected = 1
            out.errors.append(f"{task}: empty answer (stop {result.stop})")
        out.timings = {k: round(v) for k, v in timings.items()}
        return out

    placements = tile_frame(frame_hw, tile, overlap, max_tiles)
    out.tiles_planned = len(placements)
    work = _resize(image, working_size(frame_hw, tile, overlap, max_tiles))
    texts, all_boxes, all_labels, inner = [], [], [], []
    repairs: dict = {}
    for k, p in enumerate(placements):
        remaining = float(deadline_s) - (time.monotonic() - t_start)
        if remaining <= 0:
            out.stop = "deadline"
            out.errors.append(f"deadline: {len(placements) - k} of {len(placements)} tiles not asked")
            break
        if skip_tile is not None:
            reason = skip_tile(p.frame_box)
            if reason is not None:
                if reason not in ("nodata", "cloud"):
                    raise TaskError(f"skip_tile: must return None, 'nodata' or 'cloud', got {reason!r}")
                out.tiles_nodata += reason == "nodata"
                out.tiles_cloud += reason == "cloud"
                continue
        beat("preprocess")
        crop = work[p.y:p.y + p.h, p.x:p.x + p.w]
        result = _ask(model, crop, prompt, max_new_tokens, remaining / (len(placements) - k), heartbeat)
        out.tiles += 1
        out.tokens += len(result.tokens)
        out.stop = _worst(out.stop, result.stop)
        _add_timings(timings, result)
        texts.append(result.text)
        parsed = parse_grounding(result.text, image_wh=(p.w, p.h))
        repairs.update(dict.fromkeys(parsed.repairs))
        out.skipped += len(parsed.skipped)
        if parsed.error is not None:
            out.rejected += 1
            out.errors.append(f"tile {k}: {parsed.error} (stop {result.stop})")
        if parsed.items:
            boxes = to_frame_boxes(parsed.items, p, frame_hw)
            for it, box in zip(parsed.items, boxes):
                if (box[2] <= box[0] or box[3] <= box[1]):
                    out.skipped += 1   # a box that vanished when clipped to the frame
                    continue
                all_boxes.append(box)
                all_labels.append(it.label)
                inner.append(_touches_inner_edge(box.tolist(), p, frame_hw))
    out.text = "\n".join(texts)
    out.repairs = list(repairs)

    # ---- label table (first appearance) and the cross-tile merge
    table: dict = {}
    keep_rows, class_ids = [], []
    dropped = 0
    for k, label in enumerate(all_labels):
        if label not in table:
            if len(table) >= MAX_LABELS:
                dropped += 1
                continue
            table[label] = len(table)
        keep_rows.append(k)
        class_ids.append(table[label])
    if dropped:
        out.skipped += dropped
        out.errors.append(f"labels: more than {MAX_LABELS} distinct labels; {dropped} item(s) dropped")
    if keep_rows:
        order = sorted(range(len(keep_rows)), key=lambda j: inner[keep_rows[j]])   # stable: inner last
        b = np.stack([all_boxes[keep_rows[j]] for j in order]).astype(np.float32)
        c = np.asarray([class_ids[j] for j in order], np.int64)
        m = merge_boxes(b, np.full(len(b), SCORE, np.float32), c, mode="nms", metric="ios",
                        threshold=float(merge_threshold), class_aware=True)
        out.boxes, out.scores, out.class_ids = m.boxes, m.scores, m.class_ids
    else:
        out.boxes = np.zeros((0, 4), np.float32)
        out.scores = np.zeros(0, np.float32)
        out.class_ids = np.zeros(0, np.int64)
    out.labels = list(table)
    out.timings = {k: round(v) for k, v in timings.items()}
    return out


# ---- records -----------------------------------------------------------------------------------------

def outcome_records(outcome: TaskOutcome, *, first_seq: int, time_ms: int, model_id: bytes,
                    capture_time_ms: int | None = None, georef=None) -> list:
    """The downlink records of one outcome, [(kind, bytes)] with consecutive seqs from first_seq: for
    grounding a frame record (the merged boxes, the label table (key 12), the VLM's model id, tiles =
    (asked + screened, no-data, cloud, asked)) then the answer record; for VQA / captions the answer record only."""
    from edge.downlink.record import encode_answer, encode_frame
    records = []
    seq = first_seq
    if outcome.task == "grounding":
        if outcome.frame_id is None:
            raise TaskError("frame_id: a grounding outcome needs the frame id for its frame record")
        n, nd, cl = outcome.tiles, outcome.tiles_nodata, outcome.tiles_cloud
        records.append(("frame", encode_frame(
            seq=seq, frame_id=outcome.frame_id,
            capture_time_ms=time_ms if capture_time_ms is None else capture_time_ms,
            model_id=model_id, frame_hw=outcome.frame_hw, tiles=(n + nd + cl, nd, cl, n),
            boxes=outcome.boxes,
            scores=outcome.scores, class_ids=outcome.class_ids if outcome.labels else None,
            georef=georef, labels=outcome.labels or None)))
        seq += 1
    records.append(("answer", encode_answer(
        seq=seq, time_ms=time_ms, question_id=outcome.question_id, frame_id=outcome.frame_id,
        model_id=model_id, text=outcome.text, tokens=outcome.tokens, stop=outcome.stop,
        timings_ms=outcome.timings, task=outcome.task)))
    return records


__all__ = ["CAPTION_PROMPT", "DEFAULT_GROUNDING_REQUEST", "GROUNDING_PROMPT", "GroundingItem",
           "GroundingParse", "Placement", "TASKS", "TaskError", "TaskOutcome", "fit_side",
           "outcome_records", "parse_grounding", "run_task", "task_prompt", "tile_frame",
           "to_frame_boxes", "to_rgb8", "vlm_model_id", "working_size"]
