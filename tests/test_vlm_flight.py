"""The on-board VLM inside the flight loop (edge/vlm/service.py, edge/flight.py): questions from the
spool's queue files, the uplink and the standing [vlm] question -> answer records (and grounding
frame records) in the journal and the downlink, decoded by the ground tool and checked against
docs/downlink.cddl; exactly once across crashes; garbage queue files; a missing model; heartbeats per
token and the supervisor's VLM stage deadlines; `edge vlm ask` / `edge vlm info`. A scripted fake
model (the loader monkeypatched) makes the answers exact; the committed tiny random LFM2-VL
(models/vlm/tiny) runs the same paths for real."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pycddl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config import apply_overrides, default_config
from edge.flight import FlightLoop
from edge.ground.packets import depacketize
from edge.ground.records import decode_record
from edge.vlm import service
from edge.vlm.service import (MAX_ATTEMPTS, QUESTION_KEY_BIT, QuestionError, QuestionQueue, Question,
                              parse_queue_file)
from models.scenes import generate_scene
from tests.conftest import examples

ROOT = Path(__file__).resolve().parent.parent
CDDL = pycddl.Schema((ROOT / "docs" / "downlink.cddl").read_text())
TINY = ROOT / "models" / "vlm" / "tiny"
HAVE_TINY = (TINY / "onnx" / "decoder_model_merged.onnx").is_file()
KEY = bytes(range(32))
FAKE_ID = bytes.fromhex("facade01")
GROUNDING_REPLY = ('[{"label": "ship", "bbox": [0.10, 0.20, 0.30, 0.40]}, '
                   '{"label": "pier", "bbox": [0.5, 0.5, 0.9, 0.7]}]')


class FakeModel:
    """The four members run_task uses, with scripted answers: grounding prompts get GROUNDING_REPLY
    (or `grounding`), others "answer to: <question>"; `tokens` tokens each, one heartbeat per token."""

    model_id = FAKE_ID

    def __init__(self, tokens=4, grounding=GROUNDING_REPLY, fail=None):
        self.tokens, self.grounding, self.fail = tokens, grounding, fail
        self.asked = []   # (image shape, prompt)

    def chat_prompt(self, question, n_images=1):
        return "<image>" * n_images + question

    def prepare(self, images, prompt):
        self.asked.append((images[0].shape, prompt))
        return {"prompt": prompt}

    def generate(self, inputs, max_new_tokens=64, deadline_s=None, heartbeat=None):
        beat = heartbeat or (lambda stage: None)
        prompt = inputs["prompt"]
        if self.fail is not None and self.fail in prompt:
            raise RuntimeError("ORT: a broken graph")
        beat("vision")
        beat("prefill")
        n = min(self.tokens, max_new_tokens)
        for _ in range(n):
            beat("decode")
        text = self.grounding if "valid JSON" in prompt else "answer to: " + prompt.replace("<image>", "")
        return SimpleNamespace(tokens=list(range(n)), text=text, stop="eos", prompt_tokens=10,
                               timings={"vision_s": 0.011, "prefill_s": 0.022, "decode_s": 0.033,
                                        "tokens": n})


class Beats:
    """A heartbeat that records (stage, frame id), like HeartbeatWriter's beat(stage, frame_id)."""

    def __init__(self):
        self.log = []

    def beat(self, stage, frame_id=0):
        self.log.append((stage, frame_id))

    def __call__(self, stage):
        self.beat(stage)


class Crash(BaseException):
    """Stands for the process dying: nothing in the loop catches it."""


def _frame(spool: Path, name: str, seed: int, h=256, w=256):
    sc = generate_scene(seed, h, w, bands="bgrn", ships=(3, 3), cloud_probability=0.0)
    sc.image.tofile(spool / f"{name}.raw")
    (spool / f"{name}.json").write_text(json.dumps({"shape": list(sc.image.shape), "dtype": "uint16",
                                                    "capture_time": 1_790_000_000_000 + seed}))


def _questions(spool: Path, name: str, items) -> Path:
    p = spool / f"{name}.questions.json"
    p.write_text(json.dumps(items))
    return p


def _cfg(tmp_path, **over):
    base = {"data.dir": str(tmp_path / "data"), "downlink.output": str(tmp_path / "down.bin"),
            "downlink.housekeeping_every": 1, "detection.score_threshold": 0.5, "scrub.enabled": False,
            "vlm.enabled": True, "vlm.model_dir": str(tmp_path / "vlm-model"), "vlm.max_new_tokens": 16}
    base.update(over)
    return apply_overrides(default_config(), base)


def _records(path):
    records, report = depacketize(Path(path).read_bytes())
    assert report.clean
    for r in records:
        CDDL.validate_cbor(r.payload)   # every record on the wire is a record of the spec
    out = {}
    for r in records:                   # retransmissions repeat seqs: the ground de-duplicates by seq
        d = decode_record(r.payload)
        out.setdefault(d.seq, d)
    return [out[s] for s in sorted(out)]


def _kind(records, kind, **fields):
    return [r for r in records if r.kind == kind and all(getattr(r, k) == v for k, v in fields.items())]


@pytest.fixture
def spool(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    return d


@pytest.fixture
def fake(monkeypatch):
    model = FakeModel()
    monkeypatch.setattr(service, "load_model", lambda cfg: model)
    return model


# ---- questions in -> answers on the ground ----------------------------------------------------

def test_queue_file_to_ground(tmp_path, spool, fake):
    for name, seed in (("a", 1), ("b", 2)):
        _frame(spool, name, seed)
    _questions(spool, "up1", [
        {"id": 11, "text": "Is the pier busy?", "task": "vqa", "frame": "b.raw"},
        {"id": 12, "task": "caption"},                                        # the next frame: a
        {"id": 13, "text": "ships", "task": "grounding", "frame": "a.raw"},
    ])
    beats = Beats()
    cfg = _cfg(tmp_path)
    with FlightLoop(cfg, heartbeat=beats) as loop:
        summary = loop.run(str(spool))
    assert summary.frames_ok == 2 and loop.counters["vlm_answers"] == 3
    assert not (spool / "up1.questions.json").exists() and (spool / ".done" / "up1.questions.json").exists()
    assert len(QuestionQueue(cfg.data_dir / "state")) == 0
    records = _records(tmp_path / "down.bin")
    detector = [r for r in records if r.kind == "frame" and r.model_id == loop.file.sha256[:8]]
    assert sorted(r.frame_id for r in detector) == [1, 2]          # the detector's records, untouched
    ans = {r.question_id: r for r in _kind(records, "answer")}
    assert set(ans) == {11, 12, 13}
    assert (ans[11].frame_id, ans[11].task, ans[11].text) == (2, "vqa", "answer to: Is the pier busy?")
    assert (ans[12].frame_id, ans[12].task) == (1, "caption") and ans[12].text.startswith("answer to: ")
    assert ans[13].task == "grounding" and ans[13].text == GROUNDING_REPLY
    for r in ans.values():
        assert r.model_id == FAKE_ID.hex() and r.tokens == 4 and r.stop == "eos"
        assert r.timings_ms == {"vision": 11, "prefill": 22, "decode": 33}
    # grounding: a frame record with the label table, the VLM's model id, boxes in frame pixels
    (g,) = _kind(records, "frame", model_id=FAKE_ID.hex())
    assert g.frame_id == 1 and g.labels == ["ship", "pier"] and g.frame_size == (256, 256)
    np.testing.assert_allclose(g.boxes, [[25.6, 51.2, 76.8, 102.4], [128, 128, 230.4, 179.2]], atol=0.5)
    assert g.class_ids.tolist() == [0, 1]
    # order: each frame's detector record before the answers about it
    seq_of = {("det", r.frame_id): r.seq for r in detector}
    assert all(seq_of[("det", r.frame_id)] < r.seq for r in ans.values())
    hk = _kind(records, "housekeeping")[-1]
    assert hk.counters["vlm_answers"] == 3 and hk.counters["vlm_errors"] == 0
    assert hk.counters["vlm_rejected"] == 0 and hk.counters["vlm_items_skipped"] == 0
    # heartbeats: the model's stages under the VLM's names, with the frame asked about, one per token
    vlm = [b for b in beats.log if b[0].startswith("vlm_")]
    assert {s for s, _ in vlm} == {"vlm_setup", "vlm_vision", "vlm_prefill", "vlm_decode"}
    assert sum(1 for s, _ in vlm if s == "vlm_decode") == 3 * fake.tokens
    assert {f for s, f in vlm if s == "vlm_decode"} == {1, 2}
    assert summary.stage_ms["vlm"].count == 3


def test_standing_question_on_every_frame(tmp_path, spool, fake):
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        _frame(spool, name, seed)
    (spool / "c.raw").write_bytes(b"\0" * 10)      # c: bad input, no answer about it
    cfg = _cfg(tmp_path, **{"vlm.question": "Any ship near the pier?"})
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    records = _records(tmp_path / "down.bin")
    ans = _kind(records, "answer")
    assert [(r.frame_id, r.question_id, r.task) for r in ans] == [(1, None, "vqa"), (2, None, "vqa")]
    assert ans[0].text == "answer to: Any ship near the pier?"


def test_uplinked_question(tmp_path, spool, fake):
    from edge.ground.uplink import CommandSigner, encode_command
    from edge.uplink import write_key

    key_file = write_key(tmp_path / "uplink.key", KEY)
    uplink = tmp_path / "uplink.bin"
    signer = CommandSigner(KEY, tmp_path / "ground.arsn")
    uplink.write_bytes(signer.sign(encode_command("question", id=41, text="How many ships?", image="b.raw"))
                       + signer.sign(encode_command("question", id=42, text="Clouds?"))
                       + signer.sign(encode_command("question", id=44, text="Describe it.", task="caption")))
    for name, seed in (("a", 1), ("b", 2)):
        _frame(spool, name, seed)
    cfg = _cfg(tmp_path, **{"uplink.input": str(uplink), "uplink.key_file": str(key_file),
                            "vlm.task": "vqa"})
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    ans = {r.question_id: r for r in _kind(_records(tmp_path / "down.bin"), "answer")}
    assert (ans[41].frame_id, ans[41].text) == (2, "answer to: How many ships?")
    assert (ans[42].frame_id, ans[42].text) == (1, "answer to: Clouds?")
    assert (ans[41].task, ans[42].task, ans[44].task) == ("vqa", "vqa", "caption")  # key 8 overrides [vlm] task

    # with [vlm] off the same command is reported as not handled, and edge.vlm is not needed
    uplink.write_bytes(uplink.read_bytes() + signer.sign(encode_command("question", id=43, text="Again?")))
    off = _cfg(tmp_path, **{"uplink.input": str(uplink), "uplink.key_file": str(key_file),
                            "vlm.enabled": False})
    with FlightLoop(off) as loop:
        loop.run(str(spool))
    events = _kind(_records(tmp_path / "down.bin"), "event", code="input_error")
    assert any("question not handled" in e.text and "vlm.enabled is false" in e.text for e in events)


def test_question_uplinked_in_safe_mode_is_answered_after_it(tmp_path, spool, fake):
    """Safe mode runs no model, but an uplinked question is queued durably; the normal worker
    started after safe mode answers it (here: a single frame file, `edge run FILE`)."""
    from edge.ground.uplink import CommandSigner, encode_command
    from edge.uplink import write_key

    key_file = write_key(tmp_path / "uplink.key", KEY)
    uplink = tmp_path / "uplink.bin"
    uplink.write_bytes(CommandSigner(KEY, tmp_path / "ground.arsn").sign(
        encode_command("question", id=77, text="Still there?")))
    cfg = _cfg(tmp_path, **{"uplink.input": str(uplink), "uplink.key_file": str(key_file)})
    with FlightLoop(cfg, safe_mode=True) as loop:
        assert loop.run_safe(max_s=0.05, poll_s=0.01) == "timeout"
    assert [q.id for q in QuestionQueue(cfg.data_dir / "state").pending] == [77]
    assert fake.asked == []
    _frame(spool, "a", 1)
    with FlightLoop(cfg) as loop:
        assert loop.run_file(spool / "a.raw")
    (ans,) = _kind(_records(tmp_path / "down.bin"), "answer")
    assert (ans.question_id, ans.text) == (77, "answer to: Still there?") and ans.frame_id is not None


def test_uplinked_question_about_a_frame_id(tmp_path, spool, fake):
    """An uplinked frame-id that was processed already is not on board: reported, never answered."""
    from edge.ground.uplink import CommandSigner, encode_command
    from edge.uplink import write_key

    key_file = write_key(tmp_path / "uplink.key", KEY)
    uplink = tmp_path / "uplink.bin"
    _frame(spool, "a", 1)
    cfg = _cfg(tmp_path, **{"uplink.input": str(uplink), "uplink.key_file": str(key_file)})
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))                       # frame 1 processed
    signer = CommandSigner(KEY, tmp_path / "ground.arsn")
    uplink.write_bytes(signer.sign(encode_command("question", id=5, text="Ships?", frame_id=1))
                       + signer.sign(encode_command("question", id=6, text="And now?", frame_id=2)))
    _frame(spool, "b", 2)
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    records = _records(tmp_path / "down.bin")
    assert [(r.question_id, r.frame_id) for r in _kind(records, "answer")] == [(6, 2)]
    (gone,) = [e for e in _kind(records, "event", code="vlm_error") if "question 5" in e.text]
    assert "not on board" in gone.text and gone.frame_id == 1


# ---- exactly once across crashes ----------------------------------------------------------------

def _die(loop):
    """The process is gone: no final housekeeping, no downlink; only the journal lock is let go."""
    loop.sink.close()
    loop.journal.close()


def test_crash_between_answer_and_mark_done(tmp_path, spool, fake, monkeypatch):
    _frame(spool, "a", 1)
    _questions(spool, "q", [{"id": 7, "text": "Ships?"}, {"id": 8, "text": "Clouds?"}])
    real_done = QuestionQueue.done

    def crashing_done(self, qid):
        if qid == 7:
            raise Crash()       # the answer is journaled and fsynced; the mark-done never happens
        real_done(self, qid)

    monkeypatch.setattr(QuestionQueue, "done", crashing_done)
    cfg = _cfg(tmp_path)
    loop = FlightLoop(cfg)
    with pytest.raises(Crash):
        loop.run(str(spool))
    _die(loop)
    assert [q.id for q in QuestionQueue(cfg.data_dir / "state").pending] == [7, 8]
    assert list((spool / ".active").glob("*.raw"))      # the frame was in flight too
    monkeypatch.setattr(QuestionQueue, "done", real_done)
    asked_before = len(fake.asked)
    with FlightLoop(cfg) as loop:
        summary = loop.run(str(spool))
    assert summary.frames_skipped == 1                   # its detector record was journaled
    assert len(fake.asked) == asked_before + 1           # only question 8 was asked again
    ans = _kind(_records(tmp_path / "down.bin"), "answer")
    assert sorted(r.question_id for r in ans) == [7, 8]  # each exactly once
    assert len(QuestionQueue(cfg.data_dir / "state")) == 0


def test_crash_while_answering_loses_nothing(tmp_path, spool, fake, monkeypatch):
    """A crash inside the model (before anything of the answer is durable): the question is still
    queued and is answered after the restart, on the same frame (opened again for it)."""
    _frame(spool, "a", 1)
    _questions(spool, "q", [{"id": 3, "text": "Ships?", "frame": "a.raw"}])
    real = FakeModel.generate

    def dies(self, *a, **kw):
        raise Crash()

    monkeypatch.setattr(FakeModel, "generate", dies)
    cfg = _cfg(tmp_path)
    loop = FlightLoop(cfg)
    with pytest.raises(Crash):
        loop.run(str(spool))
    _die(loop)
    monkeypatch.setattr(FakeModel, "generate", real)
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    records = _records(tmp_path / "down.bin")
    assert [(r.question_id, r.frame_id) for r in _kind(records, "answer")] == [(3, 1)]
    assert len(_kind(records, "frame")) == 1                 # the detector's record, once


def test_a_question_that_kills_every_worker_is_given_up(tmp_path, spool, fake, monkeypatch):
    _frame(spool, "a", 1)
    _questions(spool, "q", [{"id": 9, "text": "Poison?"}])
    monkeypatch.setattr(FakeModel, "generate", lambda self, *a, **kw: (_ for _ in ()).throw(Crash()))
    cfg = _cfg(tmp_path)
    for _ in range(MAX_ATTEMPTS):
        loop = FlightLoop(cfg)
        with pytest.raises(Crash):
            loop.run(str(spool))
        _die(loop)
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    records = _records(tmp_path / "down.bin")
    assert not _kind(records, "answer")
    (given_up,) = [e for e in _kind(records, "event", code="vlm_error") if "question 9" in e.text]
    assert "given up" in given_up.text
    assert _kind(records, "housekeeping")[-1].counters["vlm_errors"] == 1
    assert len(QuestionQueue(cfg.data_dir / "state")) == 0


# ---- bad input ------------------------------------------------------------------------------------

GARBAGE = {
    "notjson": "[{'id': 1,",
    "binary": b"\xff\xfe\x00\x81garbage",
    "object": '{"id": 1, "text": "x"}',
    "empty": "[]",
    "badkey": '[{"id": 1, "text": "x", "colour": "red"}]',
    "badid": '[{"id": -1, "text": "x"}]',
    "boolid": '[{"id": true, "text": "x"}]',
    "badtask": '[{"id": 1, "text": "x", "task": "segment"}]',
    "notext": '[{"id": 1, "task": "vqa"}]',
    "dupe": '[{"id": 1, "text": "x"}, {"id": 1, "text": "y"}]',
    "path": '[{"id": 1, "text": "x", "frame": "../etc/passwd"}]',
    "long": json.dumps([{"id": 1, "text": "x" * 801}]),
    "surrogate": '[{"id": 1, "text": "\\ud800"}]',
    "deep": "[" * 100000,
    "huge": json.dumps([{"id": i, "text": "y" * 500} for i in range(200)]),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_parse_queue_file_refuses_garbage_naming_the_file(tmp_path, name):
    p = tmp_path / f"{name}.questions.json"
    (p.write_bytes if isinstance(GARBAGE[name], bytes) else p.write_text)(GARBAGE[name])
    with pytest.raises(QuestionError) as e:
        parse_queue_file(p)
    assert str(e.value).startswith(p.name)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(
                                  st.sampled_from(["id", "text", "task", "frame", "x"]), c, max_size=5),
                              max_leaves=12).map(lambda d: json.dumps(d).encode())))
def test_parse_queue_file_never_raises_anything_else(tmp_path, blob):
    p = tmp_path / "h.questions.json"
    p.write_bytes(blob)
    try:
        qs = parse_queue_file(p)
    except QuestionError as e:
        assert str(e).startswith(p.name)
    else:
        assert qs and all(isinstance(q.id, int) and 0 <= q.id < 2**63 for q in qs)
        assert all(q.text is not None or q.task != "vqa" for q in qs)


def test_parse_queue_file_defaults(tmp_path):
    p = tmp_path / "d.questions.json"
    p.write_text('[{"id": 1, "text": "a"}, {"id": 2, "task": "grounding", "frame": "f.raw"}]')
    qs = parse_queue_file(p, default_task="caption")
    assert [(q.id, q.text, q.task, q.frame) for q in qs] == [(1, "a", "caption", None),
                                                              (2, None, "grounding", "f.raw")]


def test_garbage_queue_files_in_the_spool(tmp_path, spool, fake):
    _frame(spool, "a", 1)
    for name in ("notjson", "binary", "dupe"):
        p = spool / f"{name}.questions.json"
        (p.write_bytes if isinstance(GARBAGE[name], bytes) else p.write_text)(GARBAGE[name])
    _questions(spool, "good", [{"id": 1, "text": "Ships?"}])
    (spool / "a.questions.raw").write_bytes(b"")   # not a frame of ours, but its sidecar is no queue
    cfg = _cfg(tmp_path)
    with FlightLoop(cfg) as loop:
        summary = loop.run(str(spool))
    assert sorted(p.name for p in (spool / ".failed").glob("*.questions.json")) == [
        "binary.questions.json", "dupe.questions.json", "notjson.questions.json"]
    assert (spool / ".done" / "good.questions.json").exists()
    records = _records(tmp_path / "down.bin")
    errors = _kind(records, "event", code="input_error")
    for name in ("notjson", "binary", "dupe"):
        assert any(e.text.startswith(f"{name}.questions.json") for e in errors)
    assert summary.frames_ok == 1
    assert [r.question_id for r in _kind(records, "answer")] == [1]
    assert _kind(records, "housekeeping")[-1].counters["input_errors"] >= 3


def test_queue_file_beside_its_frame_is_a_sidecar(tmp_path, spool):
    from edge.sources import Spool

    (spool / "x.questions.raw").write_bytes(b"\0" * 16)
    (spool / "x.questions.json").write_text('{"shape": [2, 2, 2], "dtype": "uint16"}')
    (spool / "y.questions.json").write_text("[]")
    sp = Spool(spool, tmp_path / "state")
    assert [p.name for p in sp.waiting()] == ["x.questions.raw"]
    assert [p.name for p in sp.question_files()] == ["y.questions.json"]


def test_questions_naming_frames_processed_or_to_come(tmp_path, spool, fake):
    _frame(spool, "a", 1)
    (spool / "c.raw").write_bytes(b"\0" * 10)          # bad input
    _questions(spool, "q", [{"id": 1, "text": "Later?", "frame": "later.raw"},
                            {"id": 2, "text": "Here?", "frame": "a.raw"},
                            {"id": 4, "text": "Broken?", "frame": "c.raw"}])
    cfg = _cfg(tmp_path)
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    assert [q.id for q in QuestionQueue(cfg.data_dir / "state").pending] == [1]   # waits for its frame
    _questions(spool, "late", [{"id": 3, "text": "Again?", "frame": "a.raw"}])  # a is done now
    _frame(spool, "later", 5)
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    records = _records(tmp_path / "down.bin")
    assert [(r.question_id, r.frame_id) for r in _kind(records, "answer")] == [(2, 1), (1, 3)]
    errors = {e.text.split(" (")[0]: e for e in _kind(records, "event", code="vlm_error")}
    assert set(errors) == {"question 3", "question 4"}
    assert "frame a.raw not on board" in errors["question 3"].text
    assert "frame c.raw failed" in errors["question 4"].text and errors["question 4"].frame_id == 2
    last_of_boot = {r.boot: r for r in _kind(records, "housekeeping")}   # counters are per boot
    assert [last_of_boot[b].counters["vlm_errors"] for b in sorted(last_of_boot)] == [1, 1]
    assert len(QuestionQueue(cfg.data_dir / "state")) == 0


def test_resent_and_conflicting_ids(tmp_path, spool, fake):
    _frame(spool, "a", 1)
    _questions(spool, "q", [{"id": 1, "text": "Ships?"}])
    cfg = _cfg(tmp_path)
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    _frame(spool, "b", 2)
    _questions(spool, "r", [{"id": 1, "text": "Ships?"}, {"id": 2, "text": "B?", "frame": "b.raw"}])
    _questions(spool, "s", [{"id": 2, "text": "Not B?"}])
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    records = _records(tmp_path / "down.bin")
    assert sorted(r.question_id for r in _kind(records, "answer")) == [1, 2]
    texts = [e.text for e in _kind(records, "event", code="vlm_error")]
    assert any("question 1" in t and "already answered" in t for t in texts)
    assert any("question 2" in t and "another question" in t for t in texts)


def test_model_dir_missing(tmp_path, spool):
    """The real loader on a directory that is not there: one load error (model_errors), then a
    vlm_error per question; the detector's records are all there."""
    for name, seed in (("a", 1), ("b", 2)):
        _frame(spool, name, seed)
    _questions(spool, "q", [{"id": 1, "text": "Ships?"}, {"id": 2, "text": "Clouds?", "frame": "b.raw"}])
    cfg = _cfg(tmp_path, **{"vlm.question": "Anything?"})
    with FlightLoop(cfg) as loop:
        summary = loop.run(str(spool))
    assert summary.frames_ok == 2
    records = _records(tmp_path / "down.bin")
    assert len(_kind(records, "frame")) == 2 and not _kind(records, "answer")
    vlm_errors = _kind(records, "event", code="vlm_error")
    (load,) = [e for e in vlm_errors if e.text.startswith("vlm unusable: ")]   # reported once
    assert "vlm-model" in load.text and "not a directory" in load.text
    unanswered = [e for e in vlm_errors if "not answered: the VLM is unusable" in e.text]
    assert len(unanswered) == 2 + 2          # the 2 questions, the standing one on the 2 frames
    hk = _kind(records, "housekeeping")[-1].counters
    assert hk["model_errors"] == 1 and hk["vlm_errors"] == 4 and hk["frames_ok"] == 2


def test_model_failing_while_answering(tmp_path, spool, monkeypatch):
    model = FakeModel(fail="broken", grounding="Sorry, I cannot see any ship.")
    monkeypatch.setattr(service, "load_model", lambda cfg: model)
    _frame(spool, "a", 1)
    _questions(spool, "q", [{"id": 1, "text": "Is it broken?"}, {"id": 2, "text": "ships", "task": "grounding"},
                            {"id": 3, "text": "Fine?"}])
    with FlightLoop(_cfg(tmp_path)) as loop:
        loop.run(str(spool))
    records = _records(tmp_path / "down.bin")
    assert sorted(r.question_id for r in _kind(records, "answer")) == [2, 3]
    (err,) = [e for e in _kind(records, "event", code="vlm_error") if "question 1" in e.text]
    assert "RuntimeError" in err.text and "broken graph" in err.text
    (rej,) = _kind(records, "event", code="vlm_rejected")
    assert "question 2" in rej.text
    hk = _kind(records, "housekeeping")[-1].counters
    assert (hk["vlm_errors"], hk["vlm_rejected"], hk["vlm_answers"]) == (1, 1, 2)


def test_corrupt_questions_state_is_reported(tmp_path, spool, fake):
    cfg = _cfg(tmp_path)
    state = cfg.data_dir / "state"
    q = QuestionQueue(state)
    q.add([Question(5, "x", "vqa")])
    blob = bytearray(q.path.read_bytes())
    blob[10] ^= 0x20
    q.path.write_bytes(bytes(blob))
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    (e,) = [e for e in _kind(_records(tmp_path / "down.bin"), "event", code="input_error")
            if "vlm questions state" in e.text]
    assert "corrupt" in e.text and (state / "vlm_questions.json.bad").exists()


def test_question_queue_is_durable_and_bounded(tmp_path):
    q = QuestionQueue(tmp_path)
    assert q.add([Question(1, "a", "vqa"), Question(2, "b", "caption", frame="f.raw")]) == []
    again = QuestionQueue(tmp_path)
    assert [(x.id, x.task, x.frame) for x in again.pending] == [(1, "vqa", None), (2, "caption", "f.raw")]
    again.done(1)
    third = QuestionQueue(tmp_path)
    assert [x.id for x in third.pending] == [2] and third.was_answered(1)
    assert [why for _, why in third.add([Question(1, "a", "vqa"), Question(2, "b", "caption", frame="f.raw"),
                                         Question(2, "c", "vqa")])] == ["answered", "queued", "conflict"]
    full = [Question(i, "q", "vqa") for i in range(10, 10 + service.MAX_PENDING)]
    refused = third.add(full)
    assert [why for _, why in refused] == ["full"]
    assert refused[0][0].id == 10 + service.MAX_PENDING - 1
    assert QUESTION_KEY_BIT | 5 == Question(5, "x", "vqa").key


# ---- liveness -------------------------------------------------------------------------------------

def test_supervisor_deadlines_of_the_vlm_stages():
    """A decoded token is an ordinary learned stage (its deadline is a token step, not the answer);
    the model load / frame conversion has the startup deadline, never learned; vision and prefill get
    the startup deadline until learned."""
    from edge.reliability import heartbeat as hb
    from edge.reliability.supervisor import StageDeadlines

    assert {"vlm_setup", "vlm_vision", "vlm_prefill", "vlm_decode"} <= set(hb.STAGES)
    assert len(set(hb.STAGES.values())) == len(hb.STAGES)
    d = StageDeadlines(startup_s=60, default_s=10, floor_s=0.05, factor=4, samples=64, min_samples=8)
    assert d.deadline("vlm_setup") == 60 and d.deadline("vlm_vision") == 60
    assert d.deadline("vlm_prefill") == 60 and d.deadline("vlm_decode") == 10
    for _ in range(50):
        d.record("vlm_decode", 0.05)     # 50 ms per token
        d.record("vlm_setup", 0.01)      # conversions are quick, yet the next model load is not
        d.record("vlm_vision", 0.8)
    assert d.deadline("vlm_decode") == pytest.approx(0.2)
    assert d.deadline("vlm_setup") == 60 and d.deadline("vlm_vision") == pytest.approx(3.2)


def test_detector_only_path_never_imports_edge_vlm(tmp_path, spool):
    _frame(spool, "a", 1)
    _questions(spool, "q", [{"id": 1, "text": "Ships?"}])
    code = f"""
import sys
from edge.config import apply_overrides, default_config
from edge.flight import FlightLoop
cfg = apply_overrides(default_config(), {{"data.dir": {str(tmp_path / 'd')!r},
                      "downlink.output": {str(tmp_path / 'o.bin')!r}, "scrub.enabled": False}})
with FlightLoop(cfg) as loop:
    s = loop.run({str(spool)!r})
assert s.frames_ok == 1, s
bad = sorted(m for m in sys.modules if m.startswith("edge.vlm"))
assert not bad, bad
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (spool / "q.questions.json").exists()      # left for a mission with the VLM on


# ---- the real tiny model ----------------------------------------------------------------------------

@pytest.mark.skipif(not HAVE_TINY, reason="models/vlm/tiny (the committed tiny LFM2-VL) is not built")
def test_tiny_model_in_the_flight_loop(tmp_path, spool):
    _frame(spool, "a", 1, h=300, w=700)
    _questions(spool, "q", [{"id": 1, "text": "How many ships?", "frame": "a.raw"},
                            {"id": 2, "text": "ships", "task": "grounding", "frame": "a.raw"}])
    beats = Beats()
    cfg = _cfg(tmp_path, **{"vlm.model_dir": str(TINY), "vlm.max_new_tokens": 12, "vlm.tile": 256,
                            "vlm.overlap": 32})
    with FlightLoop(cfg, heartbeat=beats) as loop:
        loop.run(str(spool))
        model_id = loop.vlm.model_id.hex()
    records = _records(tmp_path / "down.bin")
    ans = {r.question_id: r for r in _kind(records, "answer")}
    assert set(ans) == {1, 2} and all(r.model_id == model_id for r in ans.values())
    assert all(1 <= r.tokens for r in ans.values()) and ans[1].tokens <= 12
    (g,) = _kind(records, "frame", model_id=model_id)   # random weights: a frame record all the same
    assert g.frame_id == 1 and g.frame_size == (300, 700) and g.tiles["total"] >= 3
    decode_beats = sum(1 for s, _ in beats.log if s == "vlm_decode")
    assert decode_beats == sum(r.tokens for r in ans.values())   # one heartbeat per generated token
    hk = _kind(records, "housekeeping")[-1].counters
    assert hk["vlm_answers"] == 2 and hk["vlm_rejected"] + hk["vlm_errors"] >= 0


@pytest.mark.skipif(not HAVE_TINY, reason="models/vlm/tiny (the committed tiny LFM2-VL) is not built")
def test_cli_vlm_ask_and_info(tmp_path, capsys):
    from PIL import Image

    from edge.cli import main

    img = tmp_path / "scene.png"
    Image.fromarray(generate_scene(3, 200, 260, bands="rgb", ships=(2, 2)).image).save(img)
    assert main(["vlm", "ask", "--model", str(TINY), "--image", str(img), "--question", "Ships?",
                 "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("answer: ") and "tokens: " in out and "prefill" in out
    assert main(["vlm", "ask", "--model", str(TINY), "--image", str(img), "--question", "ships",
                 "--task", "grounding", "--max-new-tokens", "8", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["task"] == "grounding" and isinstance(rep["boxes"], list) and rep["image_hw"] == [200, 260]
    assert 1 <= rep["tokens"] <= 8 and set(rep["timings_ms"]) == {"vision", "prefill", "decode"}
    # a sensor frame (.raw + sidecar, 12-bit B, G, R, NIR) goes through open_frame + to_rgb8
    sc = generate_scene(4, 128, 128, bands="bgrn", ships=(1, 1))
    sc.image.tofile(tmp_path / "f.raw")
    (tmp_path / "f.json").write_text(json.dumps({"shape": [128, 128, 4], "dtype": "uint16"}))
    assert main(["vlm", "ask", "--model", str(TINY), "--image", str(tmp_path / "f.raw"), "--task",
                 "caption", "--max-new-tokens", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_hw"] == [128, 128]
    assert main(["vlm", "info", "--model", str(TINY)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["files"]["decoder"].startswith("onnx/decoder_model_merged") and len(info["model_id"]) == 8


def test_cli_vlm_errors(tmp_path, capsys):
    from PIL import Image

    from edge.cli import main

    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    cases = [
        (["ask", "--model", str(tmp_path / "nope"), "--image", str(img), "--question", "q"], "nope"),
        (["ask", "--model", str(tmp_path), "--image", str(img), "--question", "q"], "tokenizer.json"),
        (["ask", "--model", str(tmp_path), "--image", str(tmp_path / "none.png"), "--question", "q"],
         "no such file"),
        (["ask", "--model", str(tmp_path), "--image", str(img)], "--question"),
        (["ask", "--model", str(tmp_path), "--image", str(img), "--question", "q", "--deadline", "-1"],
         "--deadline"),
        (["info", "--model", str(tmp_path / "nope")], "not a directory"),
    ]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cases.append((["ask", "--model", str(tmp_path), "--image", str(tmp_path / "bad.png"), "--question", "q"],
                  "not a readable image"))
    for argv, needle in cases:
        assert main(["vlm"] + argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and err.startswith("edge vlm "), (argv, err)


@pytest.mark.skipif(not HAVE_TINY, reason="models/vlm/tiny (the committed tiny LFM2-VL) is not built")
def test_supervised_run_sees_every_token(tmp_path, spool):
    """`edge run` as flown (supervisor + worker + software watchdog) with the tiny VLM: the
    supervisor learns the "vlm_decode" stage from one beat per generated token, and the answer's
    tokens never ran under one deadline (no deadline kill even with a 0.5 s token-step deadline)."""
    _frame(spool, "a", 1)
    _questions(spool, "q", [{"id": 1, "text": "Describe the harbour.", "frame": "a.raw"}])
    mission = tmp_path / "m.toml"
    mission.write_text(f"""
[detection]
score_threshold = 0.5
[scrub]
enabled = false
[vlm]
enabled = true
model_dir = "{TINY}"
max_new_tokens = 48
[supervisor]
stage_deadline_s = {{ vlm_decode = 0.5 }}
[watchdog]
device = ""
""")
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(mission), str(spool),
                        "--data-dir", str(tmp_path / "d"), "--output", str(tmp_path / "down.bin"),
                        "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    sup = report["supervisor"]
    assert sup["deadline_kills"] == 0 and sup["crashes"] == 0
    (ans,) = _kind(_records(tmp_path / "down.bin"), "answer")
    assert ans.question_id == 1 and ans.tokens >= 1
    assert sup["deadlines"]["vlm_decode"]["samples"] == ans.tokens
    assert sup["deadlines"]["vlm_decode"]["deadline_s"] == 0.5


def test_grounding_skips_the_tiles_the_detector_screens_out(tmp_path, spool, fake):
    """A frame whose left half is outside the swath (0 in every band): the VLM's grounding pass asks only
    the tiles with data; its frame record counts the screened ones as no-data."""
    sc = generate_scene(5, 256, 512, bands="bgrn", ships=(3, 3), cloud_probability=0.0)
    img = sc.image.copy()
    img[:, :256] = 0
    img.tofile(spool / "half.raw")
    (spool / "half.json").write_text(json.dumps({"shape": list(img.shape), "dtype": "uint16",
                                                 "capture_time": 1_790_000_000_005}))
    _questions(spool, "q", [{"id": 1, "task": "grounding", "text": "ships", "frame": "half.raw"}])
    cfg = _cfg(tmp_path, **{"vlm.tile": 256, "vlm.overlap": 0})
    with FlightLoop(cfg) as loop:
        loop.run(str(spool))
    assert len(fake.asked) == 1                                     # the right half only
    frames = [r for r in _kind(_records(tmp_path / "down.bin"), "frame") if r.model_id == FAKE_ID.hex()]
    assert len(frames) == 1 and frames[0].tiles == {"total": 2, "nodata": 1, "cloud": 0, "inferred": 1}
    # with [screening] off, every tile is asked
    fake.asked.clear()
    (spool / ".done" / "half.raw").rename(spool / "again.raw")
    (spool / ".done" / "half.json").rename(spool / "again.json")
    _questions(spool, "q2", [{"id": 2, "task": "grounding", "text": "ships", "frame": "again.raw"}])
    with FlightLoop(_cfg(tmp_path, **{"vlm.tile": 256, "vlm.overlap": 0, "screening.enabled": False})) as loop:
        loop.run(str(spool))
    assert len(fake.asked) == 2
