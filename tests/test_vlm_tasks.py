"""VLM tasks (edge/vlm/tasks.py): prompts, grounding parse / repair, tiling, answers and their records.

The model is a FAKE that returns scripted texts (realistic LFM2-VL outputs); the runtime itself is tested
in its own files. Records go through the real encoders, pycddl and the ground decoder."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.downlink.record import MAX_ANSWER_BYTES, model_id_of
from edge.ground.decode import decode_stream
from edge.ground.records import decode_record
from edge.kernels.tiling import plan_tiles
from edge.vlm import tasks
from edge.vlm.generate import GenerationResult
from edge.vlm.tasks import (CAPTION_PROMPT, GROUNDING_PROMPT, GroundingItem, Placement, TaskError,
                            outcome_records, parse_grounding, run_task, task_prompt, tile_frame,
                            to_frame_boxes, to_rgb8, vlm_model_id)
from tests.conftest import examples
from tests.test_records import conforms

VLM_ID = b"\x5a\x17\x00\x42"
T0 = 1_717_243_200_000


def check_item(item) -> None:
    """What parse_grounding promises of every item it returns."""
    assert isinstance(item, GroundingItem)
    assert isinstance(item.label, str) and 1 <= len(item.label) <= tasks.MAX_LABEL_CHARS
    assert item.label == item.label.strip()
    item.label.encode("utf-8")  # encodable: it goes into a CBOR text string
    assert len(item.bbox) == 4 and all(isinstance(v, float) and math.isfinite(v) for v in item.bbox)
    x1, y1, x2, y2 = item.bbox
    assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1


def check_parse(p) -> None:
    for item in p.items:
        check_item(item)
    assert all(isinstance(s, str) for s in p.repairs + p.skipped)
    assert p.error is None or (isinstance(p.error, str) and not p.items)


# ---- prompts ---------------------------------------------------------------------------------------

def test_prompts_follow_the_family_format():
    assert GROUNDING_PROMPT == ('Provide result as a valid JSON: [{"label": str, "bbox": [x1,y1,x2,y2]}, '
                                '...]. Coordinates must be normalized to 0-1.')
    assert task_prompt("grounding", None) == "Detect all objects. " + GROUNDING_PROMPT
    assert task_prompt("grounding", "   ") == "Detect all objects. " + GROUNDING_PROMPT
    # a bare target goes into Liquid's VRSBench recipe sentence; a sentence is sent as it is
    assert task_prompt("grounding", "large white ship") == \
        "Inspect the image and detect the large white ship. " + GROUNDING_PROMPT
    assert task_prompt("grounding", "Where are the ships?") == "Where are the ships? " + GROUNDING_PROMPT
    assert task_prompt("grounding", "Find\nthe  tanks.") == "Find the tanks. " + GROUNDING_PROMPT
    assert task_prompt("caption", None) == CAPTION_PROMPT == "Describe this satellite image in detail."
    assert task_prompt("caption", "Describe the harbour.") == "Describe the harbour."
    assert task_prompt("vqa", "Is the runway clear?") == "Is the runway clear?"


@pytest.mark.parametrize("task, question, message", [
    ("vqa", None, "question: a VQA task needs a question"),
    ("vqa", "", "question: a VQA task needs a question"),
    ("ocr", "x", "task: must be one of grounding, vqa, caption"),
    ("vqa", 42, "question: must be text"),
    ("vqa", "x" * 5000, "question: at most"),
])
def test_prompt_rejects(task, question, message):
    with pytest.raises(TaskError, match=message):
        task_prompt(task, question)


# ---- grounding: realistic outputs --------------------------------------------------------------------

GOOD = '[{"label": "ship", "bbox": [0.12, 0.30, 0.25, 0.41]}, {"label": "ship", "bbox": [0.6, 0.62, 0.71, 0.7]}]'

#: name -> (model text, [(label, bbox)] expected, repairs expected (subset), error expected?)
REALISTIC = {
    "good": (GOOD, [("ship", (0.12, 0.30, 0.25, 0.41)), ("ship", (0.6, 0.62, 0.71, 0.7))], [], False),
    "vrsbench-style": ('[{"label": "the large white ship on the left", "bbox": [0.37, 0.0, 0.8, 0.99]}]',
                       [("the large white ship on the left", (0.37, 0.0, 0.8, 0.99))], [], False),
    "fenced": ("```json\n" + GOOD + "\n```", [("ship", (0.12, 0.30, 0.25, 0.41)),
                                               ("ship", (0.6, 0.62, 0.71, 0.7))], ["code fence"], False),
    "prose-around": ("Sure! Here are the ships: " + GOOD + " Let me know if you need more.",
                     [("ship", (0.12, 0.30, 0.25, 0.41)), ("ship", (0.6, 0.62, 0.71, 0.7))],
                     ["text around the JSON"], False),
    "truncated": (GOOD[:-20], [("ship", (0.12, 0.30, 0.25, 0.41))], ["truncated"], False),
    "truncated-after-bbox": ('[{"label": "tank", "bbox": [0.1, 0.1, 0.2, 0.2]', [("tank", (0.1, 0.1, 0.2, 0.2))],
                             ["missing '}'"], False),
    "trailing-commas": ('[{"label": "car", "bbox": [0.1, 0.2, 0.3, 0.4],},]', [("car", (0.1, 0.2, 0.3, 0.4))],
                        ["trailing comma"], False),
    "single-quotes": ("[{'label': 'car', 'bbox': [0.1, 0.2, 0.3, 0.4]}]", [("car", (0.1, 0.2, 0.3, 0.4))],
                      ["single quotes"], False),
    "missing-brackets": ('[{"label": "a", "bbox": [0.1, 0.2, 0.3, 0.4}, {"label": "b", "bbox": [0.5, 0.5, 0.6, 0.6]]',
                         [("a", (0.1, 0.2, 0.3, 0.4)), ("b", (0.5, 0.5, 0.6, 0.6))],
                         ["missing ']'", "missing '}'"], False),
    "single-object": ('{"label": "runway", "bbox": [0.05, 0.4, 0.95, 0.5]}', [("runway", (0.05, 0.4, 0.95, 0.5))],
                      ["single object, not a list"], False),
    "wrapped": ('{"objects": [{"label": "pier", "bbox": [0.1, 0.1, 0.5, 0.2]}]}', [("pier", (0.1, 0.1, 0.5, 0.2))],
                ["list wrapped in an object"], False),
    "numbers-as-strings": ('[{"label": "ship", "bbox": ["0.1", "0.2", "0.3", "0.4"]}]',
                           [("ship", (0.1, 0.2, 0.3, 0.4))], ["numbers as strings"], False),
    "swapped": ('[{"label": "ship", "bbox": [0.3, 0.4, 0.1, 0.2]}]', [("ship", (0.1, 0.2, 0.3, 0.4))],
                ["swapped corners"], False),
    "a-hair-outside": ('[{"label": "ship", "bbox": [-0.01, 0.2, 1.015, 0.4]}]', [("ship", (0.0, 0.2, 1.0, 0.4))],
                       ["clipped to 0..1"], False),
    "unicode-labels": ('[{"label": "船", "bbox": [0.1, 0.2, 0.3, 0.4]}, {"label": "\\u00e9olienne \\ud83d\\udef0", '
                       '"bbox": [0.5, 0.5, 0.6, 0.6]}]', [("船", (0.1, 0.2, 0.3, 0.4)),
                                                         ("éolienne 🛰", (0.5, 0.5, 0.6, 0.6))], [], False),
    "qwen-style-keys": ('[{"name": "ship", "bbox_2d": [0.1, 0.2, 0.3, 0.4]}]', [("ship", (0.1, 0.2, 0.3, 0.4))],
                        ["label key alias", "bbox key alias"], False),
    "empty-list": ("[]", [], [], False),
    "empty-list-with-prose": ("No ships are visible: []", [], [], False),
    "garbage": ("The image shows a port with several vessels.", [], [], True),
    "empty": ("", [], [], True),
    "schema-echo": ('[{"label": str, "bbox": [x1,y1,x2,y2]}, ...]', [], [], True),
    "pixel-coords-ambiguous": ('[{"label": "ship", "bbox": [120, 300, 250, 410]}]', [], [], True),
    "out-of-range": ('[{"label": "ship", "bbox": [0.1, 0.2, 1.3, 0.4]}]', [], [], True),
    "three-numbers": ('[{"label": "ship", "bbox": [0.1, 0.2, 0.3]}]', [], [], True),
    "no-label": ('[{"bbox": [0.1, 0.2, 0.3, 0.4]}]', [], [], True),
    "nan": ('[{"label": "ship", "bbox": [NaN, 0.2, 0.3, 0.4]}]', [], [], True),
    "point": ('[{"label": "ship", "bbox": [0.3, 0.3, 0.3, 0.3]}]', [], [], True),
    "one-bad-one-good": ('[{"label": "", "bbox": [0.1, 0.2, 0.3, 0.4]}, {"label": "car", "bbox": [0.5, 0.5, 0.6, 0.6]}]',
                         [("car", (0.5, 0.5, 0.6, 0.6))], [], False),
}


@pytest.mark.parametrize("name", REALISTIC)
def test_realistic_outputs(name):
    text, want, want_repairs, want_error = REALISTIC[name]
    p = parse_grounding(text, image_wh=(512, 512))
    check_parse(p)
    assert [(i.label, i.bbox) for i in p.items] == [(lb, pytest.approx(b)) for lb, b in want]
    assert set(want_repairs) <= set(p.repairs), p.repairs
    assert (p.error is not None) == want_error, p.error


def test_skipped_items_say_why():
    p = parse_grounding('[{"label": "a", "bbox": [0.1, 0.2, 0.3]}, {"bbox": [0.1, 0.2, 0.3, 0.4]}, '
                        '{"label": "c", "bbox": [0.1, 0.2, 0.3, 0.4]}, {"label": 7, "bbox": [0, 0, 1, 1]}]')
    assert [i.label for i in p.items] == ["c"] and p.error is None
    assert p.skipped == ["item 0: bbox has 3 values (want 4)", "item 1: no label",
                         "item 3: label is not text (int)"]
    p = parse_grounding('[{"label": "a", "bbox": [0.1, 0.2, 0.3]}]')
    assert p.error == "nothing usable: 1 item(s) skipped (first: item 0: bbox has 3 values (want 4))"
    assert parse_grounding("nothing here").error == "no JSON array or object in the answer"


def test_coordinates_above_one_need_an_unambiguous_reading():
    permille = '[{"label": "ship", "bbox": [120, 300, 250, 410]}, {"label": "ship", "bbox": [600, 620, 710, 700]}]'
    # a 512 x 512 image: 600..710 cannot be pixels of it -> 0..1000
    p = parse_grounding(permille, image_wh=(512, 512))
    assert [i.bbox for i in p.items] == [pytest.approx((0.12, 0.3, 0.25, 0.41)), pytest.approx((0.6, 0.62, 0.71, 0.7))]
    assert "coordinates read as 0..1000" in p.repairs
    # a 1024 x 1024 image: both readings fit -> ambiguous, rejected; unknown image size: rejected
    for wh in ((1024, 1024), None):
        p = parse_grounding(permille, image_wh=wh)
        assert not p.items and p.error and ("ambiguous" in p.skipped[0] or "unknown" in p.skipped[0])
    # above 1000 and inside a 2048 x 1536 image: pixels
    p = parse_grounding('[{"label": "ship", "bbox": [1024, 300, 1536, 768]}]', image_wh=(2048, 1536))
    assert p.items[0].bbox == pytest.approx((0.5, 300 / 1536, 0.75, 0.5))
    assert "coordinates read as pixels of the 2048x1536 image" in p.repairs
    # above 1000 and beyond the image: neither
    assert parse_grounding('[{"label": "s", "bbox": [10, 10, 4000, 20]}]', image_wh=(512, 512)).error


def test_long_labels_are_cut_and_enormous_output_is_bounded():
    long = "the very long white ship moored at the end of the northern pier next to the cranes"
    p = parse_grounding(json.dumps([{"label": long, "bbox": [0.1, 0.2, 0.3, 0.4]}]))
    assert p.items[0].label == long[:64].rstrip() and any("label cut" in r for r in p.repairs)
    item = '{"label": "ship", "bbox": [0.1, 0.2, 0.3, 0.4]}, '
    p = parse_grounding("[" + item * 20_000 + "]")   # 1 MB of a model stuck in a loop
    check_parse(p)
    assert 0 < len(p.items) <= tasks.MAX_PARSE_CHARS // len(item) + 1
    assert any("read up to" in r for r in p.repairs)
    deep = parse_grounding("[" + "[" * 5000 + "]" * 5000 + "]")   # nesting: no RecursionError
    check_parse(deep)
    assert deep.error


# ---- grounding: properties --------------------------------------------------------------------------

coord = st.floats(0, 1, allow_nan=False)


@st.composite
def valid_items(draw, max_items=6):
    n = draw(st.integers(0, max_items))
    items = []
    for _ in range(n):
        label = draw(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20))
        label = " ".join(label.split())
        if not label:
            label = "ship"
        xs = sorted(draw(st.lists(coord, min_size=2, max_size=2, unique=True)))
        ys = sorted(draw(st.lists(coord, min_size=2, max_size=2, unique=True)))
        items.append({"label": label, "bbox": [xs[0], ys[0], xs[1], ys[1]]})
    return items


def dumps(items, style):
    if style == "compact":
        return json.dumps(items, separators=(",", ":"))
    if style == "ascii":
        return json.dumps(items)
    return json.dumps(items, ensure_ascii=False, indent=2)


@settings(max_examples=examples(400), deadline=None)
@given(st.text(max_size=400))
def test_never_raises_on_arbitrary_text(text):
    check_parse(parse_grounding(text))
    check_parse(parse_grounding(text, image_wh=(512, 512)))


@settings(max_examples=examples(300), deadline=None)
@given(st.text(alphabet='[]{}",:. 0123456789-eE\'abl\\u`\n', max_size=200))
def test_never_raises_on_json_like_noise(text):
    check_parse(parse_grounding(text, image_wh=(640, 480)))


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_items(), st.sampled_from(["compact", "ascii", "pretty"]))
def test_valid_output_round_trips_and_every_truncation_keeps_the_complete_items(items, style):
    text = dumps(items, style)
    p = parse_grounding(text)
    assert p.error is None and p.repairs == [] and p.skipped == []
    assert [(i.label, list(i.bbox)) for i in p.items] == [(it["label"], it["bbox"]) for it in items]
    # the offset just after each item's closing brace
    ends, depth, in_str, esc = [], 0, False, False
    for k, ch in enumerate(text):
        if in_str:
            esc, in_str = (False, in_str) if esc else (ch == "\\", ch != '"')
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 1 and ch == "}":
                ends.append(k + 1)
    assert len(ends) == len(items)
    for cut in range(len(text) + 1):
        p = parse_grounding(text[:cut])
        check_parse(p)
        complete = sum(e <= cut for e in ends)
        got = [(i.label, list(i.bbox)) for i in p.items]
        want = [(it["label"], it["bbox"]) for it in items]
        # every complete item is kept, exactly; an item cut after its label and bbox may be kept too
        assert got in (want[:complete], want[:complete + 1]), (cut, text[:cut])


@settings(max_examples=examples(200), deadline=None)
@given(valid_items(max_items=4), st.lists(st.integers(0, 10_000), min_size=1, max_size=8),
       st.sampled_from(["compact", "ascii", "pretty"]))
def test_character_deletions_never_raise_and_never_give_invalid_items(items, positions, style):
    text = dumps(items or [{"label": "ship", "bbox": [0.1, 0.2, 0.3, 0.4]}], style)
    for pos in positions:
        if text:
            pos %= len(text)
            text = text[:pos] + text[pos + 1:]
    check_parse(parse_grounding(text))
    check_parse(parse_grounding("```json\n" + text, image_wh=(512, 512)))


# ---- tiling ------------------------------------------------------------------------------------------

def test_tiles_are_the_detector_planner_tiles():
    placements = tile_frame((1000, 1500), 512, 64, 16)
    plan = plan_tiles(1000, 1500, 512, 64)
    assert [(p.y, p.x) for p in placements] == [tuple(o) for o in plan.origins.tolist()]
    assert all((p.h, p.w, p.scale_y, p.scale_x) == (512, 512, 1.0, 1.0) for p in placements)
    assert placements[-1].frame_box == (988.0, 488.0, 1500.0, 1000.0)
    small = tile_frame((300, 200), 512, 64, 16)   # smaller than a tile: one image of the frame's size
    assert len(small) == 1 and (small[0].h, small[0].w) == (300, 200)


@pytest.mark.parametrize("hw, max_tiles", [((10980, 10980), 16), ((3000, 800), 4), ((5000, 5000), 1),
                                           ((2048, 4096), 7)])
def test_max_tiles_downscales_the_frame_first(hw, max_tiles):
    placements = tile_frame(hw, 512, 64, max_tiles)
    assert 1 <= len(placements) <= max_tiles
    p = placements[0]
    assert p.scale_y > 1 and p.scale_x > 1 and p.scale_y == pytest.approx(p.scale_x, rel=0.01)
    # the tiles still cover the whole frame, in frame pixels
    x2 = max(q.frame_box[2] for q in placements)
    y2 = max(q.frame_box[3] for q in placements)
    assert (x2, y2) == pytest.approx((hw[1], hw[0]))
    # and not coarser than needed: at 10 % more pixels per side the grid would not fit
    hs, ws = tasks.working_size(hw, 512, 64, max_tiles)
    from edge.kernels.tiling import axis_count
    bigger = axis_count(int(hs * 1.1) + 1, 512, 64) * axis_count(int(ws * 1.1) + 1, 512, 64)
    assert bigger > max_tiles


@pytest.mark.parametrize("args, message", [
    (((0, 100), 512, 64, 4), "frame_hw.height"), (((100,), 512, 64, 4), "frame_hw: must be"),
    (((100, 100), 512, 512, 4), "overlap: must be smaller"), (((100, 100), 512, -1, 4), "overlap"),
    (((100, 100), 512, 64, 0), "max_tiles: must be >= 1"), (((100, 100), 51.2, 4, 4), "tile: must be an integer"),
])
def test_tile_frame_rejects(args, message):
    with pytest.raises(TaskError, match=message):
        tile_frame(*args)


@settings(max_examples=examples(200), deadline=None)
@given(st.integers(0, 4000), st.integers(0, 4000), st.integers(1, 512), st.integers(1, 512),
       st.lists(st.tuples(st.integers(0, 512), st.integers(0, 512)), min_size=1, max_size=5))
def test_to_frame_boxes_maps_tile_coordinates_exactly(y, x, h, w, corners):
    p = Placement(0, y, x, h, w)
    items = [GroundingItem("a", (min(a, w) / w, min(b, h) / h, 1.0, 1.0)) for a, b in corners]
    boxes = to_frame_boxes(items, p, (y + h, x + w))
    assert boxes.dtype == np.float32 and boxes.shape == (len(items), 4)
    want = [[x + min(a, w), y + min(b, h), x + w, y + h] for a, b in corners]
    np.testing.assert_array_equal(boxes, np.asarray(want, np.float32))


def test_to_frame_boxes_undoes_the_downscale():
    p = Placement(0, 100, 200, 256, 256, scale_y=4.0, scale_x=2.5)
    boxes = to_frame_boxes([GroundingItem("a", (0.25, 0.5, 0.75, 1.0))], p, (10_000, 10_000))
    np.testing.assert_array_equal(boxes, [[(200 + 64) * 2.5, (100 + 128) * 4.0, (200 + 192) * 2.5,
                                           (100 + 256) * 4.0]])


# ---- a fake model ------------------------------------------------------------------------------------

class FakeModel:
    """Scripted answers: script(call index, image) -> text, or a list of texts (one per call)."""

    def __init__(self, script, *, stops=None, tokens_per_char=0.25, sleep=None):
        self.script, self.stops, self.tokens_per_char, self.sleep = script, stops, tokens_per_char, sleep
        self.model_id = VLM_ID
        self.calls = []

    def chat_prompt(self, question, n_images=1):
        return "<image>" * n_images + question

    def prepare(self, images, prompt):
        assert len(images) == 1 and prompt.count("<image>") == 1
        return {"image": images[0], "prompt": prompt}

    def generate(self, inputs, max_new_tokens=64, deadline_s=None, heartbeat=None):
        k = len(self.calls)
        self.calls.append(dict(inputs, max_new_tokens=max_new_tokens, deadline_s=deadline_s))
        image = inputs["image"]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        if self.sleep:
            self.sleep(k)
        text = self.script(k, image) if callable(self.script) else self.script[k]
        n = max(1, int(len(text) * self.tokens_per_char))
        for stage in ("vision", "prefill") + ("decode",) * n:
            if heartbeat:
                heartbeat(stage)
        stop = self.stops[k] if self.stops else "eos"
        return GenerationResult(list(range(n)), text, stop,
                                {"vision_s": 0.3804, "prefill_s": 0.2, "decode_s": 0.02 * n, "tokens": n}, 300)


def frame(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def items_json(boxes_labels):
    return json.dumps([{"label": lb, "bbox": [round(v, 6) for v in b]} for lb, b in boxes_labels])


def check_records(outcome, **kw):
    """Every outcome becomes records that pycddl accepts and the ground decoder reads back."""
    recs = outcome_records(outcome, first_seq=100, time_ms=T0, model_id=VLM_ID, **kw)
    assert [k for k, _ in recs] == (["frame", "answer"] if outcome.task == "grounding" else ["answer"])
    decoded = []
    for kind, data in recs:
        assert conforms(data), kind
        decoded.append(decode_record(data))
    answer = decoded[-1]
    assert (answer.kind, answer.task, answer.stop, answer.tokens) == \
        ("answer", outcome.task, outcome.stop, outcome.tokens)
    assert answer.question_id == outcome.question_id and answer.frame_id == outcome.frame_id
    assert answer.timings_ms == outcome.timings and answer.model_id == VLM_ID.hex()
    raw = outcome.text.encode("utf-8")
    assert raw.startswith(answer.text.encode("utf-8"))
    assert answer.text_bytes == (len(raw) if len(raw) > MAX_ANSWER_BYTES else None)
    if outcome.task == "grounding":
        fr = decoded[0]
        assert fr.frame_id == outcome.frame_id and fr.frame_size == outcome.frame_hw
        assert fr.n_detections == outcome.n_detections
        np.testing.assert_allclose(fr.boxes, outcome.boxes, atol=0.5 + 1e-6)
        assert list(fr.labels or []) == outcome.labels
        if outcome.labels:
            assert fr.class_ids.tolist() == outcome.class_ids.tolist()
    return decoded


# ---- VQA and captions ------------------------------------------------------------------------------

def test_vqa_sends_the_whole_frame_downscaled_once():
    model = FakeModel(["Yes, the runway is clear."])
    beats = []
    out = run_task(model, frame(1200, 2000), "vqa", "Is the runway clear?", question_id=3, frame_id=9,
                   image_max_side=512, heartbeat=beats.append)
    assert len(model.calls) == 1 and model.calls[0]["image"].shape == (307, 512, 3)
    assert model.calls[0]["prompt"] == "<image>Is the runway clear?"
    assert model.calls[0]["max_new_tokens"] == 256 and model.calls[0]["deadline_s"] == 60.0
    assert (out.text, out.stop, out.tokens, out.rejected, out.errors) == ("Yes, the runway is clear.", "eos", 6, 0, [])
    assert out.timings == {"vision": 380, "prefill": 200, "decode": 120} and out.boxes is None
    assert beats.count("decode") == 6 and "vision" in beats   # the heartbeat reaches generate
    check_records(out)
    small = FakeModel(["A harbour."])
    out = run_task(small, frame(100, 80), "caption", None)   # never enlarged
    assert small.calls[0]["image"].shape == (100, 80, 3) and small.calls[0]["prompt"].endswith(CAPTION_PROMPT)
    check_records(out)


def test_box_filter_downscale_averages():
    img = np.zeros((4, 1024, 3), np.uint8)
    img[:, 1::2] = 200
    model = FakeModel(["ok"])
    run_task(model, img, "caption", None, image_max_side=512)
    seen = model.calls[0]["image"]
    assert seen.shape == (2, 512, 3) and np.all(seen == 100)   # area average, no aliasing


def test_empty_and_enormous_answers_end_as_records():
    out = run_task(FakeModel([""], stops=["eos"]), frame(64, 64), "vqa", "How many ships?", question_id=1)
    assert out.rejected == 1 and out.errors == ["vqa: empty answer (stop eos)"]
    check_records(out)
    huge = "ships " * 5000
    out = run_task(FakeModel([huge], stops=["max_tokens"]), frame(64, 64), "caption", None)
    assert out.stop == "max_tokens" and out.text == huge
    (answer,) = check_records(out)
    assert answer.text_truncated and answer.text_bytes == len(huge)


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_hwc_uint8=np.zeros((8, 8, 4), np.uint8)), "use to_rgb8"),
    (dict(image_hwc_uint8=np.zeros((8, 8, 3), np.uint16)), "must be a uint8"),
    (dict(image_hwc_uint8=np.zeros((0, 8, 3), np.uint8)), "image: must be"),
    (dict(deadline_s=0), "deadline_s"), (dict(deadline_s=math.nan), "deadline_s"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(question_id=-1), "question_id"),
    (dict(merge_threshold=1.5), "merge_threshold"), (dict(task="ocr"), "task"),
])
def test_run_task_rejects(kwargs, message):
    args = dict(model=FakeModel(["x"]), image_hwc_uint8=frame(16, 16), task="vqa", question="q?")
    args.update(kwargs)
    with pytest.raises(TaskError, match=message):
        run_task(**args)


# ---- grounding over tiles ------------------------------------------------------------------------------

def scripted_by_frame_box(frame_hw, placements, objects, *, extra=None):
    """A script answering each tile with the objects (label, frame-pixel box) that lie fully inside it,
    in that tile's normalized coordinates -- what a perfect model would say."""
    def script(k, image):
        p = placements[k]
        assert image.shape[:2] == (p.h, p.w)
        fx1, fy1, fx2, fy2 = p.frame_box
        inside = [(lb, ((x1 - fx1) / (fx2 - fx1), (y1 - fy1) / (fy2 - fy1),
                        (x2 - fx1) / (fx2 - fx1), (y2 - fy1) / (fy2 - fy1)))
                  for lb, (x1, y1, x2, y2) in objects
                  if x1 >= fx1 and y1 >= fy1 and x2 <= fx2 and y2 <= fy2]
        return (extra(k) if extra else "") + items_json(inside)
    return script


def test_a_duplicate_across_the_tile_overlap_becomes_one_box():
    hw = (512, 960)   # two tiles side by side: x 0..512 and 448..960, overlap 448..512
    placements = tile_frame(hw, 512, 64, 16)
    assert len(placements) == 2
    objects = [("ship", (460.0, 100.0, 500.0, 140.0)),     # in the overlap: both tiles see it
               ("ship", (100.0, 300.0, 150.0, 330.0)), ("tank", (700.0, 50.0, 760.0, 110.0))]
    model = FakeModel(scripted_by_frame_box(hw, placements, objects))
    out = run_task(model, frame(*hw), "grounding", "ships", frame_id=5, question_id=2)
    assert len(model.calls) == 2 and out.tiles == 2 and out.rejected == 0 and out.skipped == 0
    assert out.labels == ["ship", "tank"]
    got = sorted(zip(out.class_ids.tolist(), out.boxes.tolist()), key=lambda t: t[1][0])
    want = sorted(((0 if lb == "ship" else 1, list(b)) for lb, b in objects), key=lambda t: t[1][0])
    assert [c for c, _ in got] == [c for c, _ in want]
    np.testing.assert_allclose([b for _, b in got], [b for _, b in want], atol=1e-3)
    assert np.all(out.scores == 1.0)
    assert "Inspect the image and detect the ships." in model.calls[0]["prompt"]
    check_records(out)


def test_the_uncut_copy_of_an_object_on_a_tile_edge_wins_the_merge():
    hw = (512, 960)
    placements = tile_frame(hw, 512, 64, 16)
    # tile 0 sees the object cut at its right edge (x 480..512); tile 1 sees it whole (480..540)
    def script(k, image):
        if k == 0:
            return items_json([("ship", (480 / 512, 0.2, 1.0, 0.3))])
        x0 = placements[1].x
        return items_json([("ship", ((480 - x0) / 512, 0.2, (540 - x0) / 512, 0.3))])
    out = run_task(FakeModel(script), frame(*hw), "grounding", None, frame_id=1)
    assert len(out.boxes) == 1
    np.testing.assert_allclose(out.boxes[0], [480, 0.2 * 512, 540, 0.3 * 512], atol=1e-3)


def test_grounding_counts_rejects_and_skips_and_never_fails():
    hw = (900, 900)   # 2 x 2 tiles
    placements = tile_frame(hw, 512, 64, 16)
    texts = ['```json\n[{"label": "ship", "bbox": [0.1, 0.1, 0.2, 0.2]},\n {"label": "ship", "bbox": [0.5',  # truncated
             "I cannot see any ships.",                                                      # garbage
             '[{"label": "船", "bbox": [120, 300, 250, 410]}, {"label": "船", "bbox": [600, 620, 710, 700]}]',
             '[{"label": "", "bbox": [0.1, 0.1, 0.2, 0.2]}, {"label": "car", "bbox": [0.3, 0.1, 0.2, 0.2]}]']
    model = FakeModel(texts, stops=["max_tokens", "eos", "eos", "deadline"])
    out = run_task(model, frame(*hw), "grounding", "Where are the ships?", frame_id=77, question_id=4)
    assert len(placements) == 4 and out.tiles == 4
    assert out.stop == "deadline"   # the worst of the tiles
    assert out.rejected == 1 and out.errors == ["tile 1: no JSON array or object in the answer (stop eos)"]
    assert out.skipped == 2   # the truncated item, the empty label
    assert out.labels == ["ship", "船", "car"] and len(out.boxes) == 4
    assert {"truncated", "code fence", "coordinates read as 0..1000", "swapped corners"} <= set(out.repairs)
    assert out.text == "\n".join(texts)
    assert out.tokens == sum(max(1, int(len(t) * 0.25)) for t in texts)
    check_records(out, capture_time_ms=T0 - 5000)


def test_grounding_with_nothing_found_is_an_empty_frame_record():
    out = run_task(FakeModel(["[]"]), frame(300, 300), "grounding", None, frame_id=3)
    assert out.rejected == 0 and out.errors == [] and out.n_detections == 0 and out.labels == []
    (fr, answer) = check_records(out)
    assert fr.n_detections == 0 and answer.text == "[]"


def test_the_deadline_is_shared_between_the_tiles_and_cuts_the_rest():
    clock = {"t": 0.0}
    real = tasks.time.monotonic
    tasks.time.monotonic = lambda: clock["t"]
    try:
        def sleep(k):   # each tile takes 7 s of the 20 s
            clock["t"] += 7.0
        model = FakeModel(lambda k, im: '[{"label": "ship", "bbox": [0.1, 0.1, 0.2, 0.2]}]', sleep=sleep)
        out = run_task(model, frame(900, 900), "grounding", None, frame_id=1, deadline_s=20.0)
    finally:
        tasks.time.monotonic = real
    shares = [c["deadline_s"] for c in model.calls]
    assert shares == pytest.approx([20 / 4, 13 / 3, 6 / 2])   # what is left, over the tiles left
    assert out.tiles == 3 and out.tiles_planned == 4 and out.stop == "deadline"
    assert out.errors == ["deadline: 1 of 4 tiles not asked"]
    check_records(out)


def test_more_than_256_labels_are_dropped_and_counted():
    labels = [f"object {i}" for i in range(300)]
    text = items_json([(lb, (0.001 * i, 0.1, 0.001 * i + 0.01, 0.2)) for i, lb in enumerate(labels)])
    model = FakeModel([text])
    model.tokens_per_char = 0.01
    out = run_task(model, frame(256, 256), "grounding", None, frame_id=1, max_new_tokens=8192)
    assert out.labels == labels[:256] and out.skipped == 44 and len(out.boxes) == 256
    assert out.errors == ["labels: more than 256 distinct labels; 44 item(s) dropped"]
    check_records(out)


def test_a_model_repeating_itself_gives_one_box():
    item = '{"label": "ship", "bbox": [0.1, 0.1, 0.2, 0.2]}, '
    out = run_task(FakeModel(["[" + item * 60], stops=["max_tokens"]), frame(256, 256), "grounding", None,
                   frame_id=1)
    assert len(out.boxes) == 1 and out.labels == ["ship"] and out.stop == "max_tokens"
    check_records(out)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=300), min_size=1, max_size=4), st.sampled_from(["grounding", "vqa", "caption"]),
       st.lists(st.sampled_from(["eos", "max_tokens", "deadline"]), min_size=4, max_size=4))
def test_any_model_text_ends_as_valid_records(texts, task, stops):
    texts = (texts * 4)[:4]
    out = run_task(FakeModel(texts, stops=stops), frame(700, 700), task, "ships" if task != "caption" else None,
                   frame_id=8, question_id=1)
    check_records(out)


# ---- frames of the sensor -------------------------------------------------------------------------------

def test_to_rgb8_picks_the_bands_and_stretches_12_bit_data():
    rng = np.random.default_rng(1)
    bgrn = rng.integers(100, 900, (64, 80, 4)).astype(np.uint16)
    bgrn[..., 2] += 3000   # red is bright
    rgb = to_rgb8(bgrn, {"bit_depth": 12, "bands": [2, 1, 0]})
    assert rgb.shape == (64, 80, 3) and rgb.dtype == np.uint8
    for c in range(3):   # each band spread over 0..255 (2nd..98th percentile)
        assert rgb[..., c].min() == 0 and rgb[..., c].max() == 255
        assert 0.01 < np.mean(rgb[..., c] == 0) < 0.04
    lin = to_rgb8(bgrn, {"bit_depth": 12, "bands": [2, 1, 0]}, stretch="linear")
    np.testing.assert_array_equal(lin[..., 0], np.rint(bgrn[..., 2].astype(float) * 255 / 4095).astype(np.uint8))
    chw = np.moveaxis(bgrn, -1, 0)
    np.testing.assert_array_equal(to_rgb8(chw, {"bit_depth": 12, "bands": [2, 1, 0]}, layout="CHW"), rgb)
    np.testing.assert_array_equal(to_rgb8(bgrn), rgb)   # the renderer's default bands for 4 bands: R, G, B
    u8 = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb8(u8), u8)
    grey = to_rgb8(u8[..., 0])
    assert grey.shape == (10, 12, 3) and np.all(grey == u8[..., :1])


@pytest.mark.parametrize("frame_, sensor, message", [
    (np.zeros((4, 4, 3), np.float32), None, "dtype must be uint8 or uint16"),
    (np.zeros((4, 4, 3), np.uint16), {"bands": [5, 1, 0]}, "sensor.bands"),
    (np.zeros((2, 4, 4, 3), np.uint8), None, "must be"),
    ([[1, 2]], None, "numpy array"),
])
def test_to_rgb8_rejects(frame_, sensor, message):
    with pytest.raises(TaskError, match=message):
        to_rgb8(frame_, sensor)


def test_model_id_is_the_decoder_file_hash(tmp_path):
    path = tmp_path / "decoder_model_merged_q8.onnx"
    path.write_bytes(b"not really a graph" * 1000)
    model = SimpleNamespace(files={"decoder": SimpleNamespace(path=path)})
    assert vlm_model_id(model) == model_id_of(hashlib.sha256(path.read_bytes()).hexdigest())
    assert vlm_model_id(SimpleNamespace(model_id=b"abcd")) == b"abcd"
    with pytest.raises(TaskError, match="model"):
        vlm_model_id(SimpleNamespace())


# ---- the tiny real model (random weights: random text, which must end as records too) ------------------------------------------------------

TINY = Path(__file__).resolve().parent.parent / "models" / "vlm" / "tiny"


def test_run_task_on_the_tiny_model_end_to_end():
    from edge.vlm.model import VlmModel
    model = VlmModel(TINY, threads=1)
    beats = []
    for task, question in (("vqa", "Is the runway clear?"), ("grounding", "ships")):
        out = run_task(model, frame(700, 900), task, question, frame_id=1, question_id=2, tile=512,
                       overlap=64, max_tiles=2, max_new_tokens=12, deadline_s=120, heartbeat=beats.append)
        assert out.tokens >= 1 and out.stop in ("eos", "max_tokens")
        check_records(out)
    assert "decode" in beats and vlm_model_id(model) == model_id_of(
        hashlib.sha256(model.files["decoder"].path.read_bytes()).hexdigest())


def test_screened_tiles_are_not_asked_and_are_counted_in_the_frame_record():
    """The detector's screening on the raw frame (raw_screen): a no-data strip and a cloud bank under
    whole VLM tiles are never sent to the model; the frame record's tiles key counts them."""
    from edge.screen import ScreenRule

    hw = (512, 1536)                                  # three 512 px tiles side by side (overlap 0)
    raw = np.random.default_rng(3).integers(200, 1500, (*hw, 4), dtype=np.uint16)   # 12-bit B, G, R, NIR
    raw[:, :512] = 0                                  # tile 0: outside the swath (0 in every band)
    raw[:, 1024:, :3] = 4000                          # tile 2: cloud (bright in the bands used)
    skip = tasks.raw_screen(raw, [2, 1, 0], ScreenRule(True, 0.98, 0.95), bright_threshold=3000)
    assert [skip(p.frame_box) for p in tile_frame(hw, 512, 0, 16)] == ["nodata", None, "cloud"]
    model = FakeModel(["[]"])
    out = run_task(model, frame(*hw), "grounding", "ships", frame_id=8, tile=512, overlap=0,
                   skip_tile=skip)
    assert len(model.calls) == 1 and out.tiles == 1 and (out.tiles_nodata, out.tiles_cloud) == (1, 1)
    fr = check_records(out)[0]
    assert fr.tiles == {"total": 3, "nodata": 1, "cloud": 1, "inferred": 1}
    # off: every tile asked
    off = tasks.raw_screen(raw, [2, 1, 0], ScreenRule(False, 0.98, 0.95), bright_threshold=3000)
    model = FakeModel(["[]"] * 3)
    out = run_task(model, frame(*hw), "grounding", "ships", frame_id=8, tile=512, overlap=0, skip_tile=off)
    assert len(model.calls) == 3 and out.tiles == 3
    with pytest.raises(TaskError, match="skip_tile"):
        run_task(FakeModel(["[]"]), frame(*hw), "grounding", None, frame_id=8, skip_tile=lambda box: "haze")
