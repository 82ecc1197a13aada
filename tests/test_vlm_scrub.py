"""The on-board VLM's weights under the memory scrubber ([vlm] memory; edge/vlm/service.py,
edge/reliability/regions.py protect_vlm / VlmGolden, docs/reliability.md "The VLM's weights").

With the committed tiny random LFM2-VL (models/vlm/tiny) in a real flight loop, vlm.memory = "owned"
and the scrubber on (its thread stopped: the tests scrub pass by pass):
* no VLM region before the first question; after it every weight array the model computes from is a
  region of the running scrubber ("vlm/<role>:<initializer>", kind vlm_weights) and in
  state/regions.json at its live address;
* a bit flipped there (through /proc/self/mem at the map's address, as `edge inject` does) changes the
  answer; one scrub pass corrects it (scrub_corrected) and the answer's tokens are again those of the
  unflipped run; a double flip in one word is restored from the graph file (scrub_restored), same
  tokens;
* a golden that fails (the graph file damaged on flash: its sha256 is not the load's) makes the block
  unrecoverable: no safe mode, the model is dropped and loaded again from its files at the next
  question (answered, same tokens, once the file is good again); with the file still damaged the
  reload is refused and later questions are counted as vlm_errors; never a crash;
* external data (X.onnx_data): golden is the byte range the tensor names, verified by its sha256;
* vlm.memory = "copy": one "vlm weights unprotected" event, no region, the reason in the map.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.downlink import record as rec
from edge.flight import FlightLoop
from edge.ground.records import decode_record
from edge.reliability.inject import Injector, load_region_map
from edge.reliability.regions import (VLM_KIND, GoldenError, VlmGolden, check_vlm_digests,
                                      vlm_digests, vlm_weight_regions)
from edge.reliability.scrubber import CORRECTED, RESTORED, UNRECOVERABLE, Scrubber
from edge.vlm import service
from edge.vlm.model import VlmModel
from tests.test_vlm_flight import _cfg, _frame, _kind, _questions, _records, spool  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "vlm" / "tiny"
QUESTION = "How many ships are there?"


@pytest.fixture
def generated(monkeypatch):
    """The real loader, with every generate()'s token ids recorded (in order)."""
    tokens = []
    real = service.load_model

    def load(cfg):
        model = real(cfg)
        gen = model.generate

        def generate(*args, **kwargs):
            out = gen(*args, **kwargs)
            tokens.append(list(out.tokens))
            return out

        model.generate = generate
        return model

    monkeypatch.setattr(service, "load_model", load)
    return tokens


def _scrub_cfg(tmp_path, model_dir=TINY, **over):
    base = {"scrub.enabled": True, "vlm.memory": "owned", "vlm.model_dir": str(model_dir),
            "vlm.variant": "fp32", "vlm.max_new_tokens": 10}
    base.update(over)
    return _cfg(tmp_path, **base)


def _ask(loop, spool, name, qid):
    """A frame (always the same pixels: seed 1) and a VQA question about it, through the loop."""
    _frame(spool, name, 1)
    _questions(spool, f"q{qid}", [{"id": qid, "text": QUESTION, "frame": f"{name}.raw"}])
    loop.run(str(spool))


def _events(loop, code):
    """The loop's journaled events of one code, as text, in order."""
    decoded = (decode_record(r.payload) for r in loop.journal.pending() if r.kind == rec.KIND_EVENT)
    return [d.text for d in decoded if d.code == code]


def _vlm_regions(loop):
    return [r for r in loop.scrubber.regions if r.kind == VLM_KIND]


def _largest_decoder(loop):
    return max((r for r in _vlm_regions(loop) if r.name.startswith("vlm/decoder:")),
               key=lambda r: r.length)


def _exponent_bit(region) -> int:
    """A bit index (from the region start) of the high exponent bit of a float32 element below 2 in
    magnitude: flipping it multiplies the weight by ~2^128 (the answer changes)."""
    w = region.view.view(np.float32)
    i = int(np.flatnonzero((np.abs(w) < 2) & (w != 0))[0])
    return (4 * i + 3) * 8 + 6


# ---- owned: registered, corrected, restored ---------------------------------------------------------

def test_owned_weights_registered_corrected_and_restored(tmp_path, spool, generated):
    cfg = _scrub_cfg(tmp_path)
    with FlightLoop(cfg) as loop:
        loop.scrubber.stop()                       # scrubbed pass by pass below
        map_path = loop.state_dir / "regions.json"
        assert not _vlm_regions(loop)              # the VLM is loaded lazily: nothing yet
        assert not [e for e in load_region_map(map_path)["regions"] if e["kind"] == VLM_KIND]

        _ask(loop, spool, "a", 1)
        reference = generated[-1]
        assert reference
        vlm = loop.vlm
        regions = _vlm_regions(loop)
        assert regions and regions == vlm.regions
        assert {r.name.split(":")[0] for r in regions} == {"vlm/vision", "vlm/embed", "vlm/decoder"}
        assert {r.name.removeprefix("vlm/") for r in regions} == set(vlm.model.weight_regions())
        for r in regions:                          # the very arrays ORT computes from
            live = vlm.model.weight_regions()[r.name.removeprefix("vlm/")]
            assert np.shares_memory(r.view, live)
        doc = load_region_map(map_path)
        entries = {e["name"]: e for e in doc["regions"]}
        for r in regions:
            assert (entries[r.name]["address"], entries[r.name]["length"],
                    entries[r.name]["kind"]) == (r.address, r.length, VLM_KIND)
        assert any(e["kind"] == "lut" for e in doc["regions"])     # the detector's stay listed
        assert set(vlm.digests) == {str(p) for p in (TINY / "onnx").glob("*.onnx")
                                    if p.name in {g.path.name for g in vlm.model.files.values()}}
        protected = [t for t in _events(loop, "started") if "vlm weights protected" in t]
        assert len(protected) == 1 and f"{len(regions)} regions" in protected[0]

        # one bit flipped through /proc/self/mem at the map's address, as `edge inject flip` does
        target = _largest_decoder(loop)
        before = target.view.tobytes()
        inj = Injector(map_path, pid=os.getpid())
        inj.inject(inj.target(target.name, [_exponent_bit(target)]))
        assert target.view.tobytes() != before
        _ask(loop, spool, "b", 2)
        assert generated[-1] != reference          # the flip is in memory the model really uses
        out = loop.scrubber.scrub_all()
        assert out[CORRECTED] == 1 and out[RESTORED] == out[UNRECOVERABLE] == 0
        assert target.view.tobytes() == before
        _ask(loop, spool, "c", 3)
        assert generated[-1] == reference          # corrected: the unflipped run's tokens

        # two bits of one SECDED word: restored from the verified graph file
        word = _exponent_bit(target) // 64
        inj.inject(inj.target(target.name, [word * 64 + 3, word * 64 + 62]))
        out = loop.scrubber.scrub_all()
        assert out[RESTORED] == 1 and out[UNRECOVERABLE] == 0
        assert target.view.tobytes() == before
        _ask(loop, spool, "d", 4)
        assert generated[-1] == reference

        assert not loop.unrecoverable and loop.exit_action is None
        corrected = _events(loop, "scrub_corrected")
        restored = _events(loop, "scrub_restored")
        assert any(t.startswith(target.name + ": ") for t in corrected)
        assert any(t.startswith(target.name + ": ") and "restored from golden" in t for t in restored)
        assert vlm.drops == 0 and loop.counters["vlm_answers"] == 4
    hk = _kind(_records(tmp_path / "down.bin"), "housekeeping")[-1].counters
    assert hk["scrub_corrected"] >= 1 and hk["scrub_restored"] >= 1 and hk["scrub_unrecoverable"] == 0
    assert hk["vlm_answers"] == 4 and hk["vlm_errors"] == 0


# ---- golden failing: unrecoverable -> drop, reload; damaged files -> counted errors ----------------

def _damage(path: Path) -> bytes:
    """Flip one byte in the middle of a file; returns the original bytes."""
    blob = path.read_bytes()
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    path.write_bytes(bytes(bad))
    return blob


def _double_flip(region) -> None:
    bit = _exponent_bit(region)
    region.view[bit // 8] ^= 0x40
    region.view[bit // 8 - 1] ^= 0x01             # a second bit of the same 64-bit word


def test_golden_mismatch_drops_and_reloads_the_model(tmp_path, spool, generated):
    model_dir = tmp_path / "vlm"
    shutil.copytree(TINY, model_dir)
    cfg = _scrub_cfg(tmp_path, model_dir)
    with FlightLoop(cfg) as loop:
        loop.scrubber.stop()
        _ask(loop, spool, "a", 1)
        reference = generated[-1]
        vlm = loop.vlm
        decoder_file = vlm.model.files["decoder"].path
        first_model = vlm.model
        target = _largest_decoder(loop)
        old_name, old_address = target.name, target.address

        # the graph file damaged on flash, then a double upset: the golden read fails its sha256
        good = _damage(decoder_file)
        _double_flip(target)
        out = loop.scrubber.scrub_all()
        assert out[UNRECOVERABLE] == 1 and out[RESTORED] == 0
        decoder_file.write_bytes(good)             # the file is repaired (e.g. re-uplinked) meanwhile
        _ask(loop, spool, "b", 2)                  # drop, reload from the files, answer
        assert not loop.unrecoverable and loop.exit_action is None     # no safe mode for the VLM
        unrec = _events(loop, "scrub_unrecoverable")
        assert len(unrec) == 1 and unrec[0].startswith(old_name + ": ")
        assert "sha256" in unrec[0]
        assert vlm.drops == 1 and vlm.stats["vlm_weights_dropped"] == 1
        assert vlm.model is not None and vlm.model is not first_model
        assert generated[-1] == reference          # the reloaded model answers as the first did
        errors = _events(loop, "vlm_error")
        assert len(errors) == 1 and "model dropped, loaded again" in errors[0]
        # the new arrays are the regions now; the old ones are gone from the scrubber and the map
        regions = _vlm_regions(loop)
        assert regions == vlm.regions and all(not r.failed for r in regions)
        again = next(r for r in regions if r.name == old_name)
        entry = {e["name"]: e for e in load_region_map(loop.state_dir / "regions.json")["regions"]}
        assert entry[old_name]["address"] == again.address != old_address
        assert len([e for e in entry.values() if e["kind"] == VLM_KIND]) == len(regions)
        assert loop.scrubber.scrub_all()[UNRECOVERABLE] == 0

        # damaged again and left so: the reload is refused, questions are counted, nothing crashes
        _damage(decoder_file)
        _double_flip(_largest_decoder(loop))
        assert loop.scrubber.scrub_all()[UNRECOVERABLE] == 1
        n_before = len(generated)
        _ask(loop, spool, "c", 3)
        _ask(loop, spool, "d", 4)
        assert len(generated) == n_before          # never asked with damaged weights
        assert vlm.model is None and vlm.drops == 2 and not _vlm_regions(loop)
        assert not [e for e in load_region_map(loop.state_dir / "regions.json")["regions"]
                    if e["kind"] == VLM_KIND]
        assert "files not the ones first loaded" in vlm.load_error
        assert str(decoder_file) in vlm.load_error or decoder_file.name in vlm.load_error
        errors = _events(loop, "vlm_error")
        assert any("vlm unusable: files not the ones first loaded" in t for t in errors)
        assert sum("not answered: the VLM is unusable" in t for t in errors) == 2
        assert loop.counters["vlm_errors"] == 2 + 2 and loop.counters["vlm_answers"] == 2
        assert not loop.unrecoverable and loop.exit_action is None
        assert loop.summary.frames_ok == 4         # the detector went on throughout
    hk = _kind(_records(tmp_path / "down.bin"), "housekeeping")[-1].counters
    assert hk["scrub_unrecoverable"] == 2 and hk["vlm_errors"] == 4 and hk["vlm_answers"] == 2
    if "vlm_weights_dropped" in rec.COUNTERS:      # once the record's counter table has its id
        assert hk["vlm_weights_dropped"] == 2


def test_drops_are_bounded(tmp_path, spool, generated):
    """After MAX_DROPS drops in one run the VLM stays off (reported), it is not reloaded forever."""
    cfg = _scrub_cfg(tmp_path)
    with FlightLoop(cfg) as loop:
        loop.scrubber.stop()
        vlm = loop.vlm
        for i in range(service.MAX_DROPS):
            _ask(loop, spool, f"f{i}", 10 + i)
            assert vlm.model is not None
            stale = vlm.regions[0].name
            vlm.weights_failed(f"{stale}: block 0: stuck bits")   # no failed block there: ignored
            assert vlm.weights_failure is None
            vlm.regions[0].failed.add(0)    # as the scrubber marks a block it could not restore
            vlm.weights_failed(f"{stale}: block 0: stuck bits")   # as the loop routes the event
            assert vlm.weights_failure is not None
        _ask(loop, spool, "last", 99)
        assert vlm.drops == service.MAX_DROPS and vlm.model is None
        assert "off until the worker restarts" in vlm.load_error
        assert loop.counters["vlm_answers"] == service.MAX_DROPS
        assert not loop.unrecoverable


# ---- the golden source itself ------------------------------------------------------------------------

def test_vlm_golden_external_data_and_checks(tmp_path):
    """Golden of a graph whose weights sit in X.onnx_data: the byte range the tensor names, from the
    file verified by its sha256; a damaged file, a file not hashed at load and a changed reload are
    GoldenErrors naming the file."""
    import onnx

    model_dir = tmp_path / "vlm"
    shutil.copytree(TINY, model_dir)
    embed = model_dir / "onnx" / "embed_tokens.onnx"
    proto = onnx.load(str(embed))
    onnx.save_model(proto, str(embed), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="embed_tokens.onnx_data", size_threshold=0)
    data = model_dir / "onnx" / "embed_tokens.onnx_data"
    assert data.is_file() and data.stat().st_size > embed.stat().st_size

    model = VlmModel(model_dir, variant="fp32", memory="owned", load_processor=False)
    assert model.files["embed"].external == (data,)
    digests = vlm_digests(model)
    assert str(data) in digests
    regions = vlm_weight_regions(model, digests, block_bytes=1024)
    embed_regions = [r for r in regions if r.name.startswith("vlm/embed:")]
    assert embed_regions
    s = Scrubber(regions, budget_bytes_per_s=1e9)
    before = [r.view.tobytes() for r in regions]
    decoder = max((r for r in regions if r.name.startswith("vlm/decoder:")), key=lambda r: r.length)
    for r in embed_regions + [decoder]:
        r.view[r.length // 2] ^= 0x81               # two bits of one word: a golden restore each
    out = s.scrub_all()
    assert out[RESTORED] == len(embed_regions) + 1 and out[UNRECOVERABLE] == 0
    assert [r.view.tobytes() for r in regions] == before

    good = _damage(data)                            # external data damaged: unrecoverable
    embed_regions[0].view[0] ^= 0x03
    out = s.scrub_all()
    assert out[UNRECOVERABLE] == 1
    golden = embed_regions[0].golden.golden
    with pytest.raises(GoldenError, match="embed_tokens.onnx_data: sha256"):
        golden.initializer_bytes(embed_regions[0].name.partition(":")[2], 0, 8)
    with pytest.raises(GoldenError, match="differs from the first load"):
        check_vlm_digests(model, digests)
    data.write_bytes(good)
    golden.release()
    assert s.scrub_all()[UNRECOVERABLE] == 0 and embed_regions[0].view.tobytes() == before[
        regions.index(embed_regions[0])]
    check_vlm_digests(model, digests)               # the same files again: no error

    lonely = VlmGolden(model.files["decoder"], {})  # no reference digest: never trusted
    with pytest.raises(GoldenError, match="not hashed when the model was loaded"):
        lonely.initializer_bytes("anything", 0, 1)
    with pytest.raises(GoldenError, match="not in the golden graph"):
        VlmGolden(model.files["decoder"], digests).initializer_bytes("no such weight", 0, 1)


# ---- copy mode --------------------------------------------------------------------------------------

def test_copy_mode_reports_the_weights_unprotected_once(tmp_path, spool, generated):
    cfg = _scrub_cfg(tmp_path, **{"vlm.memory": "copy"})
    with FlightLoop(cfg) as loop:
        loop.scrubber.stop()
        _ask(loop, spool, "a", 1)
        _ask(loop, spool, "b", 2)
        assert loop.counters["vlm_answers"] == 2 and loop.vlm.model.memory == "copy"
        assert not _vlm_regions(loop) and not loop.vlm.regions and loop.vlm.digests is None
        started = [t for t in _events(loop, "started") if "vlm weights" in t]
        assert started == ["scrubber: vlm weights unprotected (vlm.memory 'copy': ONNX Runtime keeps "
                           "its own copy)"]
        assert loop.vlm.stats["vlm_weights_unprotected"] == 1
        doc = load_region_map(loop.state_dir / "regions.json")
        assert any(u.startswith("vlm weights unprotected") for u in doc["unprotected"])
        assert not [e for e in doc["regions"] if e["kind"] == VLM_KIND]
    hk = _kind(_records(tmp_path / "down.bin"), "housekeeping")[-1].counters
    if "vlm_weights_unprotected" in rec.COUNTERS:  # once the record's counter table has its id
        assert hk["vlm_weights_unprotected"] == 1


def test_scrub_off_registers_nothing(tmp_path, spool, generated):
    """scrub.enabled = false: nothing is scrubbed, the VLM neither registers nor hashes anything."""
    cfg = _scrub_cfg(tmp_path, **{"scrub.enabled": False})
    with FlightLoop(cfg) as loop:
        _ask(loop, spool, "a", 1)
        assert loop.scrubber is None and loop.vlm.model.memory == "owned"
        assert loop.vlm.digests is None and not loop.vlm.regions
        assert loop.counters["vlm_answers"] == 1
    assert not (tmp_path / "data" / "state" / "regions.json").exists()
