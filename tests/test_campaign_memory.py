"""Memory fault-injection campaigns (issue 5, item 6) on real flight loops in memory="owned" mode.

    CAM-001  random single-bit flips in the protected regions (weights, LUTs, config), uniform over
             every protected byte: every one corrected in place (nothing restored, nothing
             unrecoverable) and the detections after the campaign equal a clean run's bit for bit.
             In process through the region views (fast: the bulk), and through the real injector
             path (/proc/PID/mem of a child flight process, at the addresses its regions.json gives).
    CAM-002  random double-bit flips in single 72-bit SECDED words (data or check bits): every one
             detected and its block restored from the golden copy (the model file read again and
             sha256-verified; when that file is damaged, the second copy data_dir/golden/; both
             damaged: unrecoverable -> loop.unrecoverable, the worker exits for safe mode).

Counts: tests/campaign.py (EDGE_CAMPAIGN=ci, the default: CAM-001 300 + 20 through the injector,
CAM-002 60; EDGE_CAMPAIGN=full: 10,000 + 200, 1,000). Seeds are fixed: a run is repeatable.
Scrubber, regions, injector: docs/reliability.md (SCR-004, SCR-005, SCR-007, SCR-012).
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from edge.config import apply_overrides, default_config
from edge.manifest import DEFAULT_MANIFEST
from edge.reliability.inject import Injector
from edge.reliability.scrubber import CODE_BITS, WORD_BYTES
from tests.campaign import Stopwatch, count, full, record

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("onnx_int8", "tflite_int8")
FRAME_SEEDS = (20260501, 20260502)
#: Single flips written before each scrub pass (at most one per SECDED word in a batch).
SINGLE_BATCH = 50
#: Double flips before each scrub pass (at most one per block: each is one restored block).
DOUBLE_BATCH = 20


# ---- frames and loops -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _frames() -> tuple:
    """Two small generated 4-band 12-bit frames (the default config reads bands 2,1,0 at 12 bits)."""
    from models.scenes import generate_scene

    images = []
    for seed in FRAME_SEEDS:
        image = generate_scene(seed, 512, 512, bands="bgrn", ships=(6, 6)).image
        image.flags.writeable = False
        images.append(image)
    return tuple(images)


def detections(loop) -> list:
    """(boxes, scores, class_ids) of each campaign frame through the loop's pipeline."""
    out = []
    for image in _frames():
        res = loop.pipeline.process(image)
        out.append((res.boxes.copy(), res.scores.copy(), res.class_ids.copy()))
    return out


def same_detections(a, b) -> bool:
    """Bit for bit: every array of every frame equal in dtype, shape and bytes."""
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for fa, fb in zip(a, b) for x, y in zip(fa, fb))


def private_manifest(root: Path) -> Path:
    """A copy of the shipped manifest and of the two campaign model files under `root` (the
    campaign damages these, never models/)."""
    doc = json.loads(DEFAULT_MANIFEST.read_text())
    ship = doc["models"]["ship"]
    ship["files"] = {v: ship["files"][v] for v in VARIANTS}
    doc["models"] = {"ship": ship}
    for entry in ship["files"].values():
        dst = root / entry["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEFAULT_MANIFEST.parent / entry["path"], dst)
    path = root / "manifest.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def loop_overrides(root: Path, variant: str, manifest: Path | None = None) -> dict:
    over = {"model.memory": "owned", "model.variant": variant, "data.dir": str(root / "data"),
            "downlink.output": str(root / "downlink.bin")}
    if manifest is not None:
        over["model.manifest"] = str(manifest)
    return over


def open_loop(root: Path, variant: str, manifest: Path | None = None):
    """A FlightLoop in owned mode; its scrub thread stopped (the campaign scrubs pass by pass)."""
    from edge.flight import FlightLoop

    loop = FlightLoop(apply_overrides(default_config(), loop_overrides(root, variant, manifest)),
                      keep_results=True)
    loop.scrubber.stop()
    assert loop.regions.weights_protected
    assert {r.kind for r in loop.regions} == {"weights", "lut", "config"}
    return loop


def region_doc(regions) -> dict:
    """The region map of this process (what write_region_map writes), for Injector's choices."""
    return {"pid": os.getpid(), "regions": [
        {"name": r.name, "kind": r.kind, "address": r.address, "length": r.length,
         "block_bytes": r.block_bytes} for r in regions]}


def snapshot(regions) -> list:
    return [(r.view.tobytes(), r.parity.tobytes(), r.crcs.tobytes()) for r in regions]


def counters(scrubber) -> dict:
    return dataclasses.asdict(scrubber.counters)


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in ("corrected", "restored", "unrecoverable")}


def flip_view(region, bit: int) -> None:
    region.view[bit // 8] ^= np.uint8(1 << (bit % 8))


# ---- CAM-001 -------------------------------------------------------------------------------------------

def single_flip_campaign(loop, n: int, seed: int, regions=None) -> dict:
    """n single-bit flips through the region views, uniform over every protected byte of `regions`
    (default: all the loop's; Injector's choice), in batches of at most SINGLE_BATCH with at most
    one flip per SECDED word, scrub_all() after each batch: every flip corrected, nothing
    restored, nothing unrecoverable."""
    regions = loop.regions if regions is None else regions
    by_name = {r.name: r for r in regions}
    scrubber = loop.scrubber
    inj = Injector(region_doc(regions), seed=seed)
    assert inj.protected_bytes == sum(r.length for r in regions)
    kinds: dict = {}
    done = batches = 0
    carry = None
    while done < n:
        words, batch = set(), []
        while len(batch) < min(SINGLE_BATCH, n - done):
            target = carry or inj.pick_single()
            carry = None
            word = (target["region"], target["words"][0])
            if word in words:   # a second flip in a word is a double: it waits for the next batch
                carry = target
                break
            words.add(word)
            batch.append(target)
        originals = []
        for t in batch:
            region = by_name[t["region"]]
            (bit,) = t["bits"]
            originals.append((region, bit // 8, int(region.view[bit // 8])))
            flip_view(region, bit)
            kinds[region.kind] = kinds.get(region.kind, 0) + 1
        before = counters(scrubber)
        out = scrubber.scrub_all()
        assert delta(counters(scrubber), before) == \
            {"corrected": len(batch), "restored": 0, "unrecoverable": 0}, (batches, out)
        assert out["unrecoverable"] == out["restored"] == 0
        for region, offset, value in originals:
            assert region.view[offset] == value, (region.name, offset)
        done += len(batch)
        batches += 1
    return {"flips": done, "batches": batches, "by_kind": kinds}


@pytest.mark.parametrize("variant", VARIANTS)
def test_cam001_single_bit_flips_all_corrected_detections_bit_identical(tmp_path, variant):
    """CAM-001 (SCR-004, SCR-013): random single-bit flips uniform over every protected byte of a
    flight loop in owned mode (weights, LUTs, config), written through the region views in
    batches (at most one per SECDED word), one scrub pass after each: every flip corrected in
    place, none restored, none unrecoverable; every region equals its pre-campaign bytes, and the
    detections of two frames after the campaign equal the clean run's bit for bit."""
    n = count(300, 10_000) // len(VARIANTS)
    per_kind = count(3, 10)   # plus a few in each kind of region (the config is 0.25 % of the bytes)
    with Stopwatch() as sw:
        loop = open_loop(tmp_path, variant)
        try:
            clean = detections(loop)
            assert sum(len(s) for _, s, _ in clean) > 0, "the campaign frames must have detections"
            pristine = snapshot(loop.regions)
            assert loop.scrubber.scrub_all()["clean"] == sum(r.n_blocks for r in loop.regions)
            base = counters(loop.scrubber)
            seed = 1000 + 10 * VARIANTS.index(variant)
            figures = single_flip_campaign(loop, n, seed=seed)
            for k, kind in enumerate(("weights", "lut", "config")):
                extra = single_flip_campaign(loop, per_kind, seed=seed + 1 + k,
                                             regions=[r for r in loop.regions if r.kind == kind])
                figures["by_kind"][kind] = figures["by_kind"].get(kind, 0) + extra["flips"]
                figures["flips"] += extra["flips"]
            totals = delta(counters(loop.scrubber), base)
            assert totals == {"corrected": n + 3 * per_kind, "restored": 0, "unrecoverable": 0}
            assert snapshot(loop.regions) == pristine
            after = detections(loop)
            equal = same_detections(clean, after)
            assert equal, "detections after the campaign differ from the clean run"
            loop._drain_scrub_events()
            assert not loop.unrecoverable
        finally:
            loop.close()
    record("CAM-001", variant=variant, path="views", flips=figures["flips"], flips_uniform=n,
           corrected=totals["corrected"], restored=totals["restored"],
           unrecoverable=totals["unrecoverable"], batches=figures["batches"],
           flips_by_kind=figures["by_kind"], protected_bytes=sum(len(s[0]) for s in pristine),
           detections=sum(len(s) for _, s, _ in clean), detections_equal=equal,
           wall_s=round(sw.s, 2))


CHILD = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    from edge.config import apply_overrides, default_config
    from edge.flight import FlightLoop
    from models.scenes import generate_scene

    loop = FlightLoop(apply_overrides(default_config(), json.loads(sys.argv[1])), keep_results=True)
    loop.scrubber.stop()   # scrubbed on command, pass by pass
    frames = [generate_scene(s, 512, 512, bands="bgrn", ships=(6, 6)).image
              for s in json.loads(sys.argv[2])]

    def digest():
        h, n = hashlib.sha256(), 0
        for image in frames:
            res = loop.pipeline.process(image)
            n += len(res)
            for a in (res.boxes, res.scores, res.class_ids):
                h.update(a.dtype.str.encode() + repr(a.shape).encode() + a.tobytes())
        return {"digest": h.hexdigest(), "detections": n}

    def golden():
        return [r.view.tobytes() == g for r, g in zip(loop.regions, originals)]

    originals = [r.view.tobytes() for r in loop.regions]
    print(json.dumps({"map": str(loop.state_dir / "regions.json"), **digest()}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "scrub":
            out = loop.scrubber.scrub_all()
            print(json.dumps({"counters": loop.scrubber.counters.as_dict(), "outcomes": out,
                              "equal": all(golden())}), flush=True)
        elif cmd == "detect":
            print(json.dumps(digest()), flush=True)
        elif cmd == "quit":
            break
    loop.close()
""")


def _ask(child, line: str) -> dict:
    child.stdin.write(line.encode() + b"\n")
    child.stdin.flush()
    reply = child.stdout.readline()
    assert reply, f"the child flight process died (exit {child.poll()})"
    return json.loads(reply)


def test_cam001_single_bit_flips_through_the_injector_into_a_flight_process(tmp_path):
    """CAM-001 (SCR-012): the real injector path: a child process runs a FlightLoop in owned mode
    (tflite_int8 in ci; both variants in full), writes state/regions.json and waits; the test flips
    random single bits, uniform over the protected bytes, through edge.reliability.inject (writing
    /proc/PID/mem at the addresses the map gives; at most one per word between two scrubs); the
    child's scrub passes correct every one (nothing restored), its regions equal the originals and
    its detections afterwards equal its clean run's bit for bit."""
    n_total = count(20, 200)
    variants = VARIANTS if full() else ("tflite_int8",)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    results = []
    with Stopwatch() as sw:
        for k, variant in enumerate(variants):
            n = n_total // len(variants)
            root = tmp_path / variant
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(loop_overrides(root, variant)),
                 json.dumps(list(FRAME_SEEDS))],
                cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                hello = json.loads(child.stdout.readline() or b'{"map": null}')
                assert hello["map"], f"the child did not start (exit {child.poll()})"
                assert hello["detections"] > 0
                inj = Injector(hello["map"], seed=2000 + k)
                assert inj.pid == child.pid
                done, corrected = 0, 0
                while done < n:
                    words, batch = set(), []
                    while len(batch) < min(SINGLE_BATCH, n - done):
                        t = inj.pick_single()
                        if (t["region"], t["words"][0]) not in words:
                            words.add((t["region"], t["words"][0]))
                            batch.append(t)
                    for t in batch:
                        action = inj.inject(t)
                        (change,) = action["bytes"]
                        assert bin(change["before"] ^ change["after"]).count("1") == 1
                    rep = _ask(child, "scrub")
                    assert rep["counters"]["corrected"] - corrected == len(batch), rep
                    assert rep["counters"]["restored"] == 0 and rep["counters"]["unrecoverable"] == 0
                    assert rep["equal"], "a child region differs from its original after the scrub"
                    corrected = rep["counters"]["corrected"]
                    done += len(batch)
                again = _ask(child, "detect")
                assert again == {"digest": hello["digest"], "detections": hello["detections"]}
                results.append({"variant": variant, "flips": done, "corrected": corrected,
                                "detections_equal": True})
                child.stdin.write(b"quit\n")
                child.stdin.flush()
                assert child.wait(60) == 0
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    record("CAM-001", variant="+".join(variants), path="injector /proc/PID/mem",
           flips=sum(r["flips"] for r in results), corrected=sum(r["corrected"] for r in results),
           restored=0, unrecoverable=0, detections_equal=all(r["detections_equal"] for r in results),
           wall_s=round(sw.s, 2))


# ---- CAM-002 -------------------------------------------------------------------------------------------

class WordPicker:
    """Words uniform over every protected SECDED word; two distinct bits of the word's 72-bit
    codeword: data bits (the region's bytes; a short tail word offers only its real bits) or check
    bits (the region's parity byte of that word)."""

    def __init__(self, regions, seed: int):
        self.regions = list(regions)
        self.rng = random.Random(seed)
        self.ends = list(np.cumsum([r.n_words for r in self.regions]))

    def pick(self, regions=None) -> tuple:
        pool = self.regions if regions is None else list(regions)
        ends = self.ends if regions is None else list(np.cumsum([r.n_words for r in pool]))
        i = self.rng.randrange(int(ends[-1]))
        k = bisect.bisect_right(ends, i)
        region = pool[k]
        word = i - (int(ends[k - 1]) if k else 0)
        data_bits = 8 * min(WORD_BYTES, region.length - word * WORD_BYTES)
        bits = self.rng.sample(list(range(data_bits)) + list(range(64, CODE_BITS)), 2)
        return region, word, sorted(bits)


def flip_codeword(region, word: int, bits) -> None:
    for b in bits:
        if b < 64:
            flip_view(region, word * 64 + b)
        else:
            region.parity[word] ^= np.uint8(1 << (b - 64))


def weights_golden(loop):
    """The ModelGolden shared by the loop's weight regions."""
    golden = {getattr(r.golden, "model", None) for r in loop.regions if r.kind == "weights"}
    (model,) = golden
    return model


def double_flip_campaign(loop, picker, n: int, pristine: list, regions=None) -> dict:
    """n double flips, batches of at most DOUBLE_BATCH (one per block), scrub_all() after each:
    every one detected and its block restored (restored == batch, nothing corrected, nothing
    unrecoverable), data and parity equal to the originals again."""
    scrubber, golden = loop.scrubber, weights_golden(loop)
    index = {id(r): i for i, r in enumerate(loop.regions)}
    done = batches = 0
    kinds, sources = {}, {"primary": 0, "copy": 0}
    while done < n:
        blocks, batch = set(), []
        for _ in range(4 * DOUBLE_BATCH):
            if len(batch) >= min(DOUBLE_BATCH, n - done):
                break
            region, word, bits = picker.pick(regions)
            block = (region.name, word * WORD_BYTES // region.block_bytes)
            if block not in blocks:
                blocks.add(block)
                batch.append((region, word, bits))
        for region, word, bits in batch:
            flip_codeword(region, word, bits)
            kinds[region.kind] = kinds.get(region.kind, 0) + 1
        reads = dict(golden.reads)
        before = counters(scrubber)
        out = scrubber.scrub_all()
        assert delta(counters(scrubber), before) == \
            {"corrected": 0, "restored": len(batch), "unrecoverable": 0}, (batches, out)
        if any(r.kind == "weights" for r, _, _ in batch):   # the model file was read (verified)
            got = {k: golden.reads[k] - reads[k] for k in reads}
            assert sum(got.values()) == 1 and got[golden.last_source] == 1, got
            sources[golden.last_source] += 1
        assert golden._blob is None, "the verified golden file must not stay resident"
        for region, _, _ in batch:
            data, parity, _ = pristine[index[id(region)]]
            assert region.view.tobytes() == data and region.parity.tobytes() == parity, region.name
        done += len(batch)
        batches += 1
    return {"doubles": done, "batches": batches, "by_kind": kinds, "golden_reads": sources}


def damage(path: Path, offset: int) -> bytes:
    """Flip one byte of a file in place; returns the original bytes (to put them back)."""
    blob = path.read_bytes()
    raw = bytearray(blob)
    raw[offset % len(raw)] ^= 0x5A
    path.write_bytes(bytes(raw))
    return blob


@pytest.mark.parametrize("variant", VARIANTS)
def test_cam002_double_bit_flips_restored_from_golden(tmp_path, variant):
    """CAM-002 (SCR-005, SCR-007): random double-bit flips, two distinct bits of one 72-bit
    codeword (data or check bits), words uniform over every protected word: each detected as
    uncorrectable and its block restored from golden (weights: the model file read again and
    sha256-verified; LUT: rebuilt; config: serialized again), data and parity equal the originals.
    Then, with the primary model file damaged (a private copy of the manifest and model), weight
    doubles are restored from the second copy data_dir/golden/. The detections after all that equal
    the clean run's bit for bit."""
    n = count(60, 1_000) // len(VARIANTS)
    per_kind = count(2, 10)
    n_copy = count(4, 40)
    seed = 3000 + VARIANTS.index(variant)
    with Stopwatch() as sw:
        manifest = private_manifest(tmp_path / "models")
        loop = open_loop(tmp_path, variant, manifest)
        try:
            clean = detections(loop)
            pristine = snapshot(loop.regions)
            golden = weights_golden(loop)
            base = counters(loop.scrubber)
            picker = WordPicker(loop.regions, seed)
            main = double_flip_campaign(loop, picker, n, pristine)
            for kind in ("weights", "lut", "config"):   # a few in each kind of region too
                extra = double_flip_campaign(loop, picker, per_kind, pristine,
                                             regions=[r for r in loop.regions if r.kind == kind])
                main["by_kind"][kind] = main["by_kind"].get(kind, 0) + extra["doubles"]
                for src, k in extra["golden_reads"].items():
                    main["golden_reads"][src] += k
            assert main["golden_reads"]["copy"] == 0

            # the primary golden (the model file the manifest names) fails its sha256: the copy
            primary = loop.file.path
            assert primary.resolve().is_relative_to(tmp_path.resolve())
            assert golden.copy_path.resolve().is_relative_to(tmp_path.resolve())
            original = damage(primary, len(primary.read_bytes()) // 2)
            weights = [r for r in loop.regions if r.kind == "weights"]
            second = double_flip_campaign(loop, picker, n_copy, pristine, regions=weights)
            assert second["golden_reads"] == {"primary": 0, "copy": second["batches"]}
            primary.write_bytes(original)

            totals = delta(counters(loop.scrubber), base)
            n_all = n + 3 * per_kind + n_copy
            assert totals == {"corrected": 0, "restored": n_all, "unrecoverable": 0}
            assert snapshot(loop.regions) == pristine
            equal = same_detections(clean, detections(loop))
            assert equal, "detections after the campaign differ from the clean run"
            loop._drain_scrub_events()
            assert not loop.unrecoverable

        finally:
            loop.close()
    record("CAM-002", variant=variant, doubles=n_all, doubles_uniform=n, restored=totals["restored"],
           corrected=totals["corrected"], unrecoverable_before_golden_damage=totals["unrecoverable"],
           by_kind={k: main["by_kind"].get(k, 0) + second["by_kind"].get(k, 0)
                    for k in ("weights", "lut", "config")},
           restored_from_copy=n_copy, golden_file_reads={
               "primary": main["golden_reads"]["primary"], "copy": second["golden_reads"]["copy"]},
           data_equal=True, detections_equal=equal, wall_s=round(sw.s, 2))


@pytest.mark.parametrize("variant", VARIANTS)
def test_cam002_both_golden_copies_damaged_is_unrecoverable_and_enters_safe_mode(tmp_path, variant):
    """CAM-002 (SCR-007): with the model file and its second copy both failing their sha256, a
    double flip in the weights cannot be restored: the scrubber counts it unrecoverable once (also
    on the next pass), the flight loop's own event wiring journals a scrub_unrecoverable event that
    reaches the ground, and after the frame loop.unrecoverable is set and exit_action is
    enter_safe_mode (what makes the worker exit with EXIT_ENTER_SAFE_MODE)."""
    from edge.ground.decode import decode_stream

    with Stopwatch() as sw:
        manifest = private_manifest(tmp_path / "models")
        loop = open_loop(tmp_path, variant, manifest)
        try:
            golden = weights_golden(loop)
            damage(loop.file.path, 1000)
            damage(golden.copy_path, 2000)
            weights = [r for r in loop.regions if r.kind == "weights"]
            region, word, bits = WordPicker(loop.regions, 4000).pick(weights)
            flip_codeword(region, word, bits)
            out = loop.scrubber.scrub_all()
            assert out["unrecoverable"] == 1 and loop.scrubber.counters.unrecoverable == 1
            assert loop.scrubber.scrub_all()["unrecoverable"] == 1   # still bad: counted once
            assert loop.scrubber.counters.unrecoverable == 1
            frame = tmp_path / "frame.npy"
            np.save(frame, _frames()[0])
            loop.run_file(frame)   # the loop's own path: it drains the scrub events after a frame
            hk = loop._scrub_counters()
            assert hk["scrub_unrecoverable"] == 1
            events = [d.record.code for d in decode_stream(tmp_path / "downlink.bin").records
                      if d.record.kind == "event"]
            assert "scrub_unrecoverable" in events, \
                f"no scrub_unrecoverable event reached the ground (events: {events})"
            assert loop.unrecoverable and loop.exit_action == "enter_safe_mode"
        finally:
            loop.close()
    record("CAM-002", variant=variant, case="both golden copies damaged", unrecoverable=1,
           safe_mode=True, wall_s=round(sw.s, 2))
