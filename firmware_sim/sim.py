"""`make sim`: the flight-board scenarios on the emulated board, a PASS/FAIL line each and a summary.

    python -m firmware_sim.sim                      all scenarios
    python -m firmware_sim.sim --scenario NAME      one (nominal, worker_hang, watchdog_reset, bitflips,
                                                    power_cut, small_memory, vlm)
    python -m firmware_sim.sim --shell              boot the board to an interactive shell

Every scenario builds a fresh data disk (spool of generated 12-bit 4-band scenes with JSON sidecars, the
mission config, the uplink key, the scenario's faults), boots the board, lets the ground station follow
the radio and acknowledge what arrives, and checks what reached the ground:

    nominal         every frame's record arrives once; int8 (tflite_int8, weights in place) detections
                    identical to an x86 run of the same scenes and model; fp32 (onnx_fp32) within tolerance
    worker_hang     SIGSTOP of the worker inside the guest -> the supervisor restarts it; no loss
    watchdog_reset  SIGSTOP of the supervisor -> no more keepalives -> the i6300esb resets the board; the
                    flight software boots again and resumes from the journal and the spool; no loss, no
                    duplicates; the serial log shows the second boot
    bitflips        `edge inject` flips bits in the worker's protected regions (/proc/PID/mem) -> scrubbed,
                    counted in the housekeeping the ground receives
    power_cut       QEMU killed (SIGKILL) once the first frame record arrived, started again on the same
                    data disk -> journal recovered, every frame once
    small_memory    nominal (int8) on a 512 MiB board
    vlm             the on-board VLM (the tiny random LFM2-VL of models/vlm/tiny/, fp32) answers a
                    questions file of the spool (VQA, caption, grounding) after the detector's records:
                    every question's answer record arrives once, identical (text and token count)
                    to an x86 run
Results as JSON lines with --json-out FILE (docs/sim.md quotes them).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from firmware_sim.board import Board
from firmware_sim.image import REPO, ensure_images

#: The scenes: small enough for an emulated Cortex-A53 (~0.8 s per 256 px int8 tile under TCG).
FRAME_H, FRAME_W = 256, 480          # two 256 px tiles with a 32 px overlap
CAPTURE_BASE_MS = 1_790_000_000_000  # frame i has capture time BASE + i: it names its frame
SCENE_PARAMS = dict(ships=(5, 5), cloud_probability=0.0, land_probability=0.0)
BOOT_TIMEOUT_S = 300


def scenes(n: int, seed0: int = 7100):
    import sys as _sys

    _sys.path.insert(0, str(REPO))
    from models.scenes import generate_scene

    out = []
    for i in range(n):
        sc = generate_scene(seed0 + i, FRAME_H, FRAME_W, bands="bgrn", **SCENE_PARAMS)
        out.append((f"scene-{i:02d}", sc.image, {"capture_time": CAPTURE_BASE_MS + i, "bit_depth": 12}))
    return out


def mission(*, variant="tflite_int8", memory="owned", kernels="reference", source="/data/spool",
            data="/data/edge",
            output="/dev/radio-down", uplink=True, watchdog="/dev/watchdog", vlm: dict | None = None) -> str:
    up = ('[uplink]\ninput = "/dev/radio-up"\nkey_file = "/data/uplink.key"\n' if uplink else "")
    if vlm:
        up += "[vlm]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in vlm.items())
    return f"""# the emulated board's mission (firmware_sim/sim.py)
[input]
source = "{source}"
[sensor]
bit_depth = 12
bands = [2, 1, 0]
[model]
name = "ship"
variant = "{variant}"
memory = "{memory}"
kernels = "{kernels}"
threads = 1
[tiling]
overlap = 32
[detection]
score_threshold = 0.5
[downlink]
output = "{output}"
housekeeping_every = 1
housekeeping_s = 5.0
[data]
dir = "{data}"
{up}[watchdog]
device = "{watchdog}"
timeout_s = 10
pet_interval_s = 1
[supervisor]
startup_s = 120
stage_default_s = 30
stage_floor_s = 5
backoff_base_s = 0.5
"""


def x86_run(frames, variant: str, memory: str, work: Path, kernels: str = "reference",
            vlm: dict | None = None, questions: list | None = None) -> list:
    """The same scenes (and questions) through the same flight loop on this x86 host: the records."""
    from edge.config import load_config
    from edge.flight import FlightLoop
    from edge.ground.decode import decode_stream

    spool = work / "spool"
    spool.mkdir(parents=True)
    for name, arr, side in frames:
        arr.tofile(spool / f"{name}.raw")
        (spool / f"{name}.json").write_text(json.dumps({"shape": list(arr.shape), "dtype": str(arr.dtype),
                                                        **side}))
    if questions is not None:
        (spool / QUESTIONS_FILE).write_text(json.dumps(questions))
    cfg_path = work / "mission.toml"
    cfg_path.write_text(mission(variant=variant, memory=memory, kernels=kernels, source=str(spool),
                                data=str(work / "data"),
                                output=str(work / "down.bin"), uplink=False, watchdog="", vlm=vlm))
    with FlightLoop(load_config(cfg_path)) as loop:
        loop.run()
    return [d.record for d in decode_stream(work / "down.bin", manifest=False).records]


def x86_reference(frames, variant: str, memory: str, work: Path, kernels: str = "reference") -> dict:
    """{capture time: frame record} of x86_run."""
    return {r.time_ms: r for r in x86_run(frames, variant, memory, work, kernels) if r.kind == "frame"}


def same_detections(a, b) -> bool:
    return (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
            and np.array_equal(a.class_ids, b.class_ids))


def close_detections(a, b, px=2.0, score=0.03) -> bool:
    """fp32 on two CPUs: the same detections, boxes within px and scores within `score`."""
    if len(a.scores) != len(b.scores):
        return False
    for i in range(len(a.scores)):
        d = np.abs(b.boxes - a.boxes[i]).max(axis=1)
        j = int(np.argmin(d))
        if d[j] > px or abs(b.scores[j] - a.scores[i]) > score:
            return False
    return True


class Outcome:
    def __init__(self, name: str):
        self.name, self.checks, self.figures, self.t0 = name, [], {}, time.monotonic()
        self.wall_s = None   # set when the scenario is over

    def check(self, ok: bool, what: str) -> bool:
        self.checks.append((bool(ok), what))
        return ok

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for ok, _ in self.checks)

    def line(self) -> str:
        failed = [w for ok, w in self.checks if not ok]
        figs = ", ".join(f"{k} {v}" for k, v in self.figures.items())
        return (f"{'PASS' if self.passed else 'FAIL'} {self.name}: {figs}"
                + (f" -- failed: {'; '.join(failed)}" if failed else ""))

    def as_dict(self) -> dict:
        return {"scenario": self.name, "result": "PASS" if self.passed else "FAIL",
                "checks": [{"ok": ok, "what": w} for ok, w in self.checks], **self.figures,
                "wall_s": round(self.wall_s if self.wall_s is not None else time.monotonic() - self.t0, 1)}


def frame_records(board) -> dict:
    """{capture time: [frame records]} as received (distinct seqs), the detector's only: a VLM
    grounding answer's frame record (its model id is the VLM's, named by the answer records) is not one."""
    vlm_ids = {r.record.model_id for r in board.ground.records("answer")}
    out: dict = {}
    for r in board.ground.records("frame"):
        if r.record.model_id not in vlm_ids:
            out.setdefault(r.record.time_ms, []).append(r.record)
    return out


def last_counters(board) -> dict:
    hk = board.ground.records("housekeeping")
    return dict(hk[-1].record.counters) if hk else {}


def per_frame_s(board):
    hk = [r.record for r in board.ground.records("housekeeping") if r.record.stage_us and
          "frame" in r.record.stage_us]
    if not hk:
        return None
    return round(float(np.median([h.stage_us["frame"][0] for h in hk])) / 1e6, 2)


def common_figures(out: Outcome, board, frames) -> dict:
    got = frame_records(board)
    out.figures.update(frames=len(frames), records=len(board.ground.records()),
                       resets=max(0, board.boots() - board.boots_started),
                       boots=board.boots(), scrub_corrected=last_counters(board).get("scrub_corrected", 0),
                       per_frame_s=per_frame_s(board))
    want = {side["capture_time"] for _, _, side in frames}
    out.check(set(got) == want, f"a frame record for every frame ({len(got)}/{len(want)})")
    out.check(all(len(v) == 1 for v in got.values()), "no frame with two records")
    return got


def run_board(images, work: Path, frames, mission_text, scenario=None, memory_mb=1024,
              during=None, timeout_s=BOOT_TIMEOUT_S, extra=None) -> tuple[Board, int]:
    board = Board(images, work, memory_mb=memory_mb)
    board.prepare(frames, mission_text, scenario, extra)
    board.boot()
    if during is not None:
        during(board)
    rc = board.wait(timeout_s)
    time.sleep(ACK_SETTLE_S)
    board.ground.poll()
    return board, rc


ACK_SETTLE_S = 0.3


# ---- scenarios ------------------------------------------------------------------------------------

def sc_nominal(images, work: Path, memory_mb: int = 1024, fp32: bool = True, name="nominal") -> Outcome:
    out = Outcome(name)
    frames = scenes(3)
    board, rc = run_board(images, work / "int8", frames, mission(), memory_mb=memory_mb)
    out.check(rc == 0, f"the board powered off by itself (qemu exit {rc})")
    got = common_figures(out, board, frames)
    out.check(board.boots() == 1, f"one boot, no reset ({board.boots()})")
    ref = x86_reference(frames, "tflite_int8", "owned", work / "x86-int8")
    same = [t for t in ref if t in got and len(got[t]) == 1 and same_detections(got[t][0], ref[t])]
    out.figures["int8_identical"] = f"{len(same)}/{len(ref)}"
    out.figures["detections"] = sum(len(v[0].scores) for v in got.values() if v)
    out.check(len(same) == len(ref) == len(frames), "int8 detections identical to the x86 run")
    board.stop_ground()
    if fp32:
        f32 = frames[:1]
        board, rc = run_board(images, work / "fp32", f32, mission(variant="onnx_fp32", memory="copy",
                                                                 kernels="optimized"),
                              memory_mb=memory_mb)
        got32 = frame_records(board)
        ref32 = x86_reference(f32, "onnx_fp32", "copy", work / "x86-fp32", kernels="optimized")
        ok = all(t in got32 and close_detections(got32[t][0], ref32[t]) for t in ref32)
        out.figures["fp32_within_tolerance"] = ok
        out.check(rc == 0 and ok, "fp32 detections within tolerance of the x86 run (2 px, 0.03)")
        board.stop_ground()
    return out


def sc_worker_hang(images, work: Path) -> Outcome:
    out = Outcome("worker_hang")
    frames = scenes(3)
    scenario = {"actions": [{"boot": 1, "when": {"done_frames": 1}, "do": "stop_worker"}]}
    board, rc = run_board(images, work, frames, mission(), scenario)
    out.check(rc == 0, f"the board powered off by itself (qemu exit {rc})")
    common_figures(out, board, frames)
    events = [r.record for r in board.ground.records("event") if r.record.code == "worker_restart"]
    out.figures["worker_restarts"] = len(events)
    out.check(len(events) >= 1, "the supervisor restarted the hung worker (worker_restart event)")
    out.check("SIGSTOP worker" in board.serial_text(), "the worker was stopped inside the guest")
    out.check(board.boots() == 1, "no board reset")
    board.stop_ground()
    return out


def sc_watchdog_reset(images, work: Path) -> Outcome:
    out = Outcome("watchdog_reset")
    frames = scenes(3)
    scenario = {"actions": [{"boot": 1, "when": {"done_frames": 1}, "do": "stop_supervisor"}]}
    board, rc = run_board(images, work, frames, mission(), scenario)
    out.check(rc == 0, f"the board powered off by itself after the reset (qemu exit {rc})")
    common_figures(out, board, frames)
    text = board.serial_text()
    out.check("SIGSTOP supervisor" in text, "the supervisor was stopped inside the guest")
    out.check(board.boots() == 2, f"the watchdog reset the board: boot 2 in the serial log ({board.boots()})")
    first = text.split("orbit-init: boot 2")[0]
    out.check("orbit-init: poweroff" not in first and "edge run exited" not in first,
              "boot 1 ended in a reset, not in an orderly power-off")
    out.figures["resets"] = board.boots() - 1
    board.stop_ground()
    return out


def sc_bitflips(images, work: Path, count: int = 40) -> Outcome:
    out = Outcome("bitflips")
    frames = scenes(2)
    scenario = {"actions": [{"boot": 1, "when": {"regions": True}, "do": "flip_bits", "count": count,
                             "seed": 7}]}
    board, rc = run_board(images, work, frames, mission(), scenario)
    out.check(rc == 0, f"the board powered off by itself (qemu exit {rc})")
    common_figures(out, board, frames)
    c = last_counters(board)
    out.check(c.get("scrub_corrected", 0) >= count,
              f"{count} flips scrubbed and counted in housekeeping at the ground "
              f"(scrub_corrected {c.get('scrub_corrected')}, restored {c.get('scrub_restored')})")
    out.check(c.get("scrub_unrecoverable", 0) == 0, "nothing unrecoverable")
    board.stop_ground()
    return out


def sc_power_cut(images, work: Path) -> Outcome:
    out = Outcome("power_cut")
    frames = scenes(4)

    def cut_after_first_record(board):
        if board.wait_for(lambda: len(board.ground.records("frame")) >= 1, BOOT_TIMEOUT_S):
            board.kill()
            out.figures["cut_after_frames"] = len(board.ground.records("frame"))
            board.boot()   # power back on: the same data disk

    board, rc = run_board(images, work, frames, mission(), during=cut_after_first_record)
    out.check(rc == 0, f"the board powered off by itself after the second boot (qemu exit {rc})")
    common_figures(out, board, frames)
    out.check(board.boots() == 2, f"two boots ({board.boots()})")
    board.stop_ground()
    return out


def sc_small_memory(images, work: Path) -> Outcome:
    return sc_nominal(images, work, memory_mb=512, fp32=False, name="small_memory")


#: The VLM scenario: the tiny random LFM2-VL fixture (models/vlm/tiny/) and a questions file.
VLM_FIXTURE = REPO / "models" / "vlm" / "tiny"
QUESTIONS_FILE = "questions.questions.json"
VLM_QUESTIONS = [
    {"id": 11, "text": "How many ships are in this image?", "task": "vqa", "frame": "scene-00.raw"},
    {"id": 12, "text": "Detect all ships.", "task": "grounding", "frame": "scene-00.raw"},
    {"id": 13, "text": "Describe this image.", "task": "caption", "frame": "scene-01.raw"},
]


def vlm_settings(model_dir: str) -> dict:
    return {"enabled": True, "model_dir": model_dir, "variant": "fp32", "threads": 1, "max_new_tokens": 24,
            "deadline_s": 240.0, "tile": 256, "overlap": 32}


def answers_of(records) -> dict:
    """{question id: (tokens, text, stop)} of the answer records (distinct seqs)."""
    return {r.question_id: (r.tokens, r.text, r.stop) for r in records if r.kind == "answer"}


def sc_vlm(images, work: Path) -> Outcome:
    out = Outcome("vlm")
    frames = scenes(2)
    questions = json.dumps(VLM_QUESTIONS).encode()
    board, rc = run_board(images, work / "board", frames,
                          mission(vlm=vlm_settings("/data/vlm-tiny")),
                          extra={"vlm-tiny": VLM_FIXTURE, f"spool/{QUESTIONS_FILE}": questions})
    out.check(rc == 0, f"the board powered off by itself (qemu exit {rc})")
    common_figures(out, board, frames)
    got = [r.record for r in board.ground.records()]
    answers = answers_of(got)
    want = {q["id"] for q in VLM_QUESTIONS}
    out.check(set(answers) == want, f"an answer record for every question ({sorted(answers)})")
    n_answer = sum(1 for r in got if r.kind == "answer")
    out.check(n_answer == len(want), f"each answer once ({n_answer} answer records)")
    c = last_counters(board)
    out.check(c.get("vlm_errors", 0) == 0, f"no VLM error (vlm_errors {c.get('vlm_errors')})")
    ref = answers_of(x86_run(frames, "tflite_int8", "owned", work / "x86", vlm=vlm_settings(str(VLM_FIXTURE)),
                             questions=VLM_QUESTIONS))
    same = [q for q in want if q in answers and answers[q][:2] == ref.get(q, (None, None))[:2]]
    out.figures["answers"] = len(answers)
    out.figures["tokens"] = sum(a[0] for a in answers.values())
    out.figures["answers_identical"] = f"{len(same)}/{len(want)}"
    out.check(len(same) == len(want), "fp32 answers identical to the x86 run (text and token count)")
    vlm_ids = {r.model_id for r in got if r.kind == "answer"}
    vlm_frames = [r for r in got if r.kind == "frame" and r.model_id in vlm_ids]
    out.check(len(vlm_frames) == 1, f"the grounding question's frame record (labels, the VLM's model id) "
                                    f"arrived once ({len(vlm_frames)})")
    board.stop_ground()
    return out


SCENARIOS = {"nominal": sc_nominal, "worker_hang": sc_worker_hang, "watchdog_reset": sc_watchdog_reset,
             "bitflips": sc_bitflips, "power_cut": sc_power_cut, "small_memory": sc_small_memory,
             "vlm": sc_vlm}


def shell(images) -> int:
    """Boot the board to an interactive shell on this terminal (Ctrl-A X quits QEMU)."""
    work = Path(tempfile.mkdtemp(prefix="orbit-sim-shell-"))
    board = Board(images, work)
    board.prepare(scenes(1), mission())
    cmd = board.command()
    i = cmd.index("-append")
    cmd[i + 1] += " orbit.shell"
    j = cmd.index("-serial")
    cmd[j - 2:j + 2] = ["-serial", "mon:stdio"]
    print(f"data disk {board.data_img}; Ctrl-A X quits", file=sys.stderr)
    return subprocess.call(cmd)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m firmware_sim.sim", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                    help="run only this scenario (repeatable)")
    ap.add_argument("--shell", action="store_true", help="boot to an interactive shell")
    ap.add_argument("--json-out", help="append one JSON line per scenario to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    images = ensure_images()
    t_images = time.monotonic() - t0
    print(f"images: {images.built or 'all cached'} ({t_images:.1f} s)", flush=True)
    if args.shell:
        return shell(images)
    names = args.scenario or list(SCENARIOS)
    results = []
    root = Path(tempfile.mkdtemp(prefix="orbit-sim-"))
    try:
        for name in names:
            out = SCENARIOS[name](images, root / name)
            out.wall_s = time.monotonic() - out.t0
            print(out.line(), flush=True)
            results.append(out)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"work directories kept in {root}")
    total = time.monotonic() - t0
    print(f"\n{'scenario':<16} {'result':<6} {'frames':>6} {'records':>8} {'resets':>6} {'scrub':>6} "
          f"{'s/frame':>8} {'wall s':>7}")
    for r in results:
        d = r.as_dict()
        print(f"{r.name:<16} {d['result']:<6} {d.get('frames', '-'):>6} {d.get('records', '-'):>8} "
              f"{d.get('resets', '-'):>6} {d.get('scrub_corrected', '-'):>6} "
              f"{str(d.get('per_frame_s', '-')):>8} {d['wall_s']:>7}")
    print(f"total {total:.0f} s (images {t_images:.0f} s)")
    if args.json_out:
        with open(args.json_out, "a") as f:
            for r in results:
                f.write(json.dumps({**r.as_dict(), "images_built": images.built}) + "\n")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
