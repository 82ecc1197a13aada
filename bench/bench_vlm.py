"""`make bench-vlm`: the on-board VLM (issue 7) against transformers' own generate(), in one run.

    python -m bench.bench_vlm                 full run: builds (or reuses) the real-dimension model, then
                                              four configurations -> bench/results.vlm.json + the VLM
                                              section of bench/RESULTS.md, a table on stdout
    python -m bench.bench_vlm --no-write      the same, printing the markdown, writing nothing
    python -m bench.bench_vlm --model DIR     an already built model directory (skips the build)
    python -m bench.bench_vlm --skip-torch-int8 / --repeats N / --tokens N / --threads N / --wait-quiet S
    python -m bench.bench_vlm --from-json bench/results.vlm.json   re-render the RESULTS.md section only

The model: `models/vlm/build.py --dims real --out DIR` (run in .venv-vlm: torch + transformers) builds a
randomly initialised LFM2-VL with the real LFM2.5-VL-450M dimensions, exports it under Liquid's ONNX names
in fp32 and int8 (onnxruntime quantize_dynamic, Liquid's `_q8` suffix) and saves the same weights as
safetensors (DIR/hf/). It is ~2 GB, so it is cached where build.py puts it by default,
~/.cache/orbit-edge/vlm-real-<key>/, the key (build.py's real_key) naming its dims, seed and source text:
a changed builder builds anew, and older vlm-real-* builds are removed after a successful one. A directory
counts as complete only once build_info.json is in it (build.py writes it last); one without it is rebuilt.

The workload: one 512x512 RGB tile (models/scenes.py, seed TILE_SEED: sea, ships, wakes), the family's
grounding prompt (the flight task's own text, edge.vlm.tasks.task_prompt("grounding", "ships")) in the
model's chat template, greedy decoding of exactly
`--tokens` (40) new tokens on `--threads` (2) threads. Random weights make greedy decoding stop at EOS
early or never, so the count is forced the same way on both sides: EOS does not stop the answer
(orbit-edge: the model's eos_token_ids emptied; transformers: generation_config.eos_token_id = None),
the EOS token, when argmax picks it, is fed back like any other. Logits are not touched, so both sides
still compute the same greedy sequence, which the run checks token by token (fp32 against fp32).

Each configuration runs in a fresh subprocess (imports, model load and peak RSS are its own):
    edge fp32    `python -m bench.bench_vlm --child edge --variant fp32 ...`   (.venv, no torch)
    edge q8      `... --variant q8` (the int8 vision encoder, embedding and decoder)
    torch fp32   `.venv-vlm/bin/python -m bench.bench_vlm --child torch ...`: transformers'
                 Lfm2VlForConditionalGeneration.from_pretrained(DIR/hf) on the same safetensors weights,
                 torch.set_num_threads(threads), inference_mode, model.generate(do_sample=False)
    torch int8   the same model after torch.ao.quantization.quantize_dynamic(qint8) of every nn.Linear
                 but SigLIP2's patch embedding (its forward reads .weight.dtype): the int8 peer. Its peak
                 RSS includes the fp32 model it is quantised from (torch has no way to load a
                 dynamic-int8 model without building the fp32 one first); RSS after loading is beside it.
    (transformers loads the safetensors memory-mapped, so its weights count in RSS as file pages.)
transformers' image processor needs torchvision, which cannot be installed beside this torch (issue 7),
so the torch children are fed orbit-edge's processor output (pixel values, masks, spatial shapes, input
ids) saved by the edge fp32 child: both sides get exactly the same inputs.

What a child measures, after one warm-up answer, as the median of `--repeats` answers:
    edge:  prepare_s (processor + chat template + tokenizer), then GenerationResult.timings: vision_s
           (one tile), prefill_s (prompt tokens stated), decode ms/token (decode_s / decode steps: the
           first token comes from the prefill), total_s; answer_s = prepare_s + total_s.
    torch: generate_s (the whole generate() call); inside it, a pass-through LogitsProcessor stamps
           every step: its first call comes after the vision tower + prefill forward (ttft_s), the rest
           one per decode step (decode ms/token = (last - first) / (tokens - 1)). vision_s is timed
           apart (model.get_image_features on the same pixels, median of as many calls), and
           prefill_s = ttft_s - vision_s.
    both:  VmHWM (peak RSS) and VmRSS after loading and at the end, from /proc/self/status. ru_maxrss
           is recorded too, but Linux carries the spawning process's high-water mark across fork + exec
           into it, so VmHWM is the figure judged (as in bench/pipeline.py).
The other processes' CPU load during each child is recorded (the machine is shared); above BUSY_CORES
the section warns that the figures are noisy; before each configuration the run waits (up to --wait-quiet
seconds, WAIT_QUIET_S) for that load to drop below BUSY_CORES, and records how long it waited.

The work of each phase is counted from the torch model's own layers (model_work / work_per_phase: linear
weights x tokens plus the attention products), so RESULTS.md can state the rate (GMAC/s) each configuration
achieved beside the machine's nominal fp32 FMA peak: how far a phase is from what the cores can do.

Ratios come from this run only: orbit-edge int8 against transformers fp32 (the issue's target) and
against torch int8, orbit-edge fp32 against transformers fp32; the target compares orbit-edge's whole
answer (its own preprocessing included) with transformers' generate() alone (fed preprocessed inputs),
which favours transformers; the generate-only ratio (same inputs, same work) is given beside it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUILD_SCRIPT = REPO / "models" / "vlm" / "build.py"
VLM_VENV_PY = REPO / ".venv-vlm" / "bin" / "python"
BUILD_MARKER = "build_info.json"   # written last by models/vlm/build.py
RESULTS_JSON = "results.vlm.json"
SECTION_START = "<!-- bench-vlm:start (written by `make bench-vlm`; bench/bench_vlm.py) -->"
SECTION_END = "<!-- bench-vlm:end -->"

# --- workload -----------------------------------------------------------------------------------
TILE = 512
TILE_SEED = 9101            # models/scenes.py seed of the 512x512 tile (one of bench/pipeline.py's)
MAX_NEW_TOKENS = 40
THREADS = 2
REPEATS = 5
#: What the grounding task is asked (edge.vlm.tasks.task_prompt builds the flight task's user text from it).
GROUNDING_TARGET = "ships"
#: The same text, should edge.vlm.tasks be missing: the model family's grounding format (issue 7).
GROUNDING_FALLBACK = ('Inspect the image and detect the ships. Provide result as a valid JSON: [{"label": '
                      'str, "bbox": [x1,y1,x2,y2]}, ...]. Coordinates must be normalized to 0-1.')
MB = 1e6
BUSY_CORES = 0.2
CHILD_TIMEOUT_S = 1800
WAIT_QUIET_S = 300.0
BUILD_TIMEOUT_S = 5400

# --- targets (issue 7) --------------------------------------------------------------------------
TARGET_ANSWER_S = 2.0          # int8 grounding answer, one 512x512 tile, ~40 tokens, 2 threads
TARGET_VS_TRANSFORMERS = 2.0   # >= 2x faster than transformers' generate() on the same weights
TARGET_PEAK_MB = 1500.0        # int8 peak RSS < 1.5 GB

#: ORION's published figure (issue 7), quoted beside ours; not like for like (render_markdown says why).
ORION = {"seconds_per_frame": [51, 82], "frame": "512x512", "model": "LFM2.5-VL-1.6B",
         "runtime": "llama.cpp", "hardware": "Raspberry Pi 5 (4x Cortex-A76, 2.4 GHz)"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def proc_status() -> dict:
    """VmRSS, RssAnon, RssFile, VmHWM of this process from /proc/self/status, in bytes."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _ru_maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _r(x, nd=4):
    return None if x is None else round(float(x), nd)


def grounding_question() -> str:
    """The flight grounding task's user text for GROUNDING_TARGET (the prompt the satellite would send)."""
    try:
        from edge.vlm.tasks import task_prompt
    except ImportError:
        return GROUNDING_FALLBACK
    return task_prompt("grounding", GROUNDING_TARGET)


def make_tile(seed: int = TILE_SEED, size: int = TILE) -> np.ndarray:
    """The benchmark's tile: a 512x512 RGB uint8 sea scene with ships (models/scenes.py)."""
    from models.scenes import generate_scene
    return np.ascontiguousarray(generate_scene(seed, size, size, bands="rgb").image)


# =================================================================================================
# Children (each in its own process)
# =================================================================================================

def child_edge(args) -> dict:
    """orbit-edge: VlmModel(dir, variant, threads) -> prepare + generate, in the runtime venv."""
    st0, maxrss0 = proc_status(), _ru_maxrss()
    t0 = time.perf_counter()
    from edge.vlm.model import VlmModel
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = VlmModel(args.model, variant=args.variant, threads=args.threads)
    load_s = time.perf_counter() - t0
    st_load = proc_status()
    eos = sorted(model.eos_token_ids)
    model.eos_token_ids = frozenset()   # force the token count (see the module docstring)
    tile = make_tile(args.tile_seed)
    question = grounding_question()
    prompt = model.chat_prompt(question, n_images=1)

    def answer():
        a = time.perf_counter()
        inp = model.prepare([tile], prompt)
        b = time.perf_counter()
        res = model.generate(inp, max_new_tokens=args.tokens)
        return inp, res, b - a, time.perf_counter() - b

    inp, res, _, _ = answer()           # warm-up
    if args.inputs_out:
        np.savez(args.inputs_out, input_ids=inp.input_ids, pixel_values=inp.pixel_values,
                 pixel_attention_mask=inp.pixel_attention_mask, spatial_shapes=inp.spatial_shapes)
    runs = []
    for _ in range(args.repeats):
        inp2, r, prep_s, gen_wall = answer()
        if not np.array_equal(inp2.input_ids, inp.input_ids):
            raise RuntimeError("prepare() gave different input ids on a repeat")
        steps = r.step_s
        runs.append({"prepare_s": prep_s, "generate_wall_s": gen_wall, "total_s": r.timings["total_s"],
                     "vision_s": r.timings["vision_s"], "prefill_s": r.timings["prefill_s"],
                     "decode_s": r.timings["decode_s"], "decode_steps": len(steps),
                     "decode_ms_per_token": 1e3 * r.timings["decode_s"] / len(steps) if steps else None,
                     "answer_s": prep_s + gen_wall, "tokens": list(r.tokens), "stop": r.stop})
    toks = runs[-1]["tokens"]
    st_end = proc_status()
    return {
        "impl": "edge", "variant": args.variant, "variants": dict(model.variants),
        "files": {k: str(g.path.relative_to(model.directory)) for k, g in model.files.items()},
        "weight_bytes": model.weight_bytes, "threads": args.threads,
        "import_s": import_s, "load_s": load_s,
        "prompt_tokens": int(inp.input_ids.shape[1]), "image_tokens": int(res.image_tokens),
        "patches": int(inp.pixel_values.shape[1]),
        "tiles": int(res.tiles), "eos_token_ids": eos, "question": question,
        "eos_positions": [i for i, t in enumerate(toks) if t in eos],
        "tokens": toks, "text": model.decode(toks), "stop": runs[-1]["stop"],
        "same_tokens_every_repeat": all(r["tokens"] == toks for r in runs) and list(res.tokens) == toks,
        "runs": [{k: v for k, v in r.items() if k != "tokens"} for r in runs],
        "rss": {"start": st0, "after_load": st_load, "end": st_end},
        "vm_hwm": st_end.get("VmHWM"), "ru_maxrss": _ru_maxrss(), "ru_maxrss_at_start": maxrss0,
        "versions": _versions(("numpy", "onnxruntime", "tokenizers", "PIL")),
    }


def _versions(names) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = __import__(n).__version__
        except Exception:  # noqa: BLE001 - a missing package is just not listed
            pass
    return out


def child_torch(args) -> dict:
    """transformers' generate() on the same weights (safetensors), in .venv-vlm (torch, no torchvision)."""
    st0, maxrss0 = proc_status(), _ru_maxrss()
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    t0 = time.perf_counter()
    import torch
    from transformers import Lfm2VlForConditionalGeneration, LogitsProcessor, LogitsProcessorList
    import_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    t0 = time.perf_counter()
    model = Lfm2VlForConditionalGeneration.from_pretrained(args.torch_dir, dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t0
    work = model_work(model)
    quant_s, spec, quantized = None, {}, None
    if args.quant == "int8":
        t0 = time.perf_counter()
        # every nn.Linear but SigLIP2's patch embedding, whose forward reads `.weight.dtype` (a quantized
        # Linear's weight is a method): 768x768 of ~450M parameters stays fp32
        spec = {name: torch.ao.quantization.default_dynamic_qconfig for name, mod in model.named_modules()
                if isinstance(mod, torch.nn.Linear) and not name.endswith("patch_embedding")}
        model = torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)
        quantized = sum(1 for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear))
        quant_s = time.perf_counter() - t0
        import gc
        gc.collect()
    st_load = proc_status()

    data = np.load(args.inputs)
    ids = torch.from_numpy(data["input_ids"].astype(np.int64))
    feed = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                pixel_values=torch.from_numpy(data["pixel_values"].astype(np.float32)),
                pixel_attention_mask=torch.from_numpy(data["pixel_attention_mask"].astype(np.int64)),
                spatial_shapes=torch.from_numpy(data["spatial_shapes"].astype(np.int64)))
    gen_cfg = model.generation_config
    eos = gen_cfg.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    gen_cfg.eos_token_id = None      # force the token count (see the module docstring)
    gen_cfg.do_sample = False
    gen_cfg.max_new_tokens = args.tokens
    gen_cfg.min_new_tokens = None
    if gen_cfg.pad_token_id is None:
        gen_cfg.pad_token_id = model.config.text_config.pad_token_id if \
            getattr(model.config.text_config, "pad_token_id", None) is not None else 0

    class Stamp(LogitsProcessor):
        """Pass-through: records when each step's logits are ready."""
        def __init__(self):
            self.t = []

        def __call__(self, input_ids, scores):
            self.t.append(time.perf_counter())
            return scores

    T = ids.shape[1]

    def answer():
        stamp = Stamp()
        with torch.inference_mode():
            a = time.perf_counter()
            out = model.generate(**feed, generation_config=gen_cfg,
                                 logits_processor=LogitsProcessorList([stamp]))
            b = time.perf_counter()
        new = out[0, T:].tolist()
        return new, b - a, stamp.t[0] - a, stamp.t

    def vision():
        with torch.inference_mode():
            a = time.perf_counter()
            model.get_image_features(pixel_values=feed["pixel_values"],
                                     spatial_shapes=feed["spatial_shapes"],
                                     pixel_attention_mask=feed["pixel_attention_mask"])
            return time.perf_counter() - a

    toks, _, _, _ = answer()            # warm-up
    vision()
    runs = []
    for _ in range(args.repeats):
        new, gen_s, ttft, stamps = answer()
        vis = vision()
        n = len(new)
        dec_ms = 1e3 * (stamps[-1] - stamps[0]) / (n - 1) if n > 1 else None
        runs.append({"generate_s": gen_s, "ttft_s": ttft, "vision_s": vis, "prefill_s": ttft - vis,
                     "decode_s": stamps[-1] - stamps[0], "decode_steps": n - 1,
                     "decode_ms_per_token": dec_ms, "answer_s": gen_s, "tokens": new})
    toks = runs[-1]["tokens"]
    st_end = proc_status()
    import transformers
    return {
        "impl": "torch", "variant": "int8" if args.quant == "int8" else "fp32",
        "quantization": ("torch.ao.quantization.quantize_dynamic(every nn.Linear but the vision patch "
                         "embedding, qint8)" if args.quant == "int8" else None),
        "quantized_linears": quantized, "linears_asked": len(spec) if spec else None,
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "import_s": import_s, "load_s": load_s, "quantize_s": quant_s,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "prompt_tokens": int(T), "eos_token_ids": eos,
        "eos_positions": [i for i, t in enumerate(toks) if t in eos],
        "tokens": toks, "same_tokens_every_repeat": all(r["tokens"] == toks for r in runs),
        "runs": [{k: v for k, v in r.items() if k != "tokens"} for r in runs],
        "rss": {"start": st0, "after_load": st_load, "end": st_end},
        "vm_hwm": st_end.get("VmHWM"), "ru_maxrss": _ru_maxrss(), "ru_maxrss_at_start": maxrss0,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__},
        "torch_parallel": torch.__config__.parallel_info().splitlines()[:6],
        "work": work,
    }


def model_work(model) -> dict:
    """Weights of the nn.Linear layers per part of an Lfm2VlForConditionalGeneration (multiply-accumulates
    per token / patch), and the vision tower's attention shape: what work_per_phase() counts with."""
    import torch
    def linear(mod):
        return int(sum(m.weight.numel() for m in mod.modules() if isinstance(m, torch.nn.Linear)))
    inner, cfg = model.model, model.config
    vc, tc = cfg.vision_config, cfg.text_config
    return {"vision_linear": linear(inner.vision_tower), "projector_linear": linear(inner.multi_modal_projector),
            "text_linear": linear(inner.language_model), "lm_head": int(model.lm_head.weight.numel()),
            "vision_layers": int(vc.num_hidden_layers), "vision_hidden": int(vc.hidden_size),
            "text_attention_layers": sum(1 for t in tc.layer_types if t != "conv"),
            "text_hidden": int(tc.hidden_size), "downsample_factor": int(cfg.downsample_factor)}


def work_per_phase(w: dict, patches: int, image_tokens: int, prompt_tokens: int) -> dict:
    """Multiply-accumulates (GMAC) of one answer's phases: the linear layers (weights x tokens) plus the
    attention score and value products (vision: patches^2; text prefill: prompt^2); convolutions, norms,
    softmax and the depthwise short convs are left out (< 2 %). The prefill counts the head twice over: ONNX
    (Liquid's export contract: logits [B, T, vocab]) computes every prompt position's logits,
    transformers' generate() only the last one's."""
    g = 1e-9
    vision = (w["vision_linear"] * patches + 2 * w["vision_layers"] * patches ** 2 * w["vision_hidden"]
              + w["projector_linear"] * image_tokens) * g
    attn = 2 * w["text_attention_layers"] * prompt_tokens ** 2 * w["text_hidden"]
    body = w["text_linear"] * prompt_tokens + attn
    return {"vision": round(vision, 2),
            "prefill_all_logits": round((body + w["lm_head"] * prompt_tokens) * g, 2),
            "prefill_last_logits": round((body + w["lm_head"]) * g, 2),
            "decode_per_token": round((w["text_linear"] + w["lm_head"]) * g, 3),
            "lm_head_all_positions": round(w["lm_head"] * prompt_tokens * g, 2)}


def _child_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_vlm --child")
    ap.add_argument("--child", choices=("edge", "torch"), required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--torch-dir", type=Path)
    ap.add_argument("--variant", default="fp32")
    ap.add_argument("--quant", choices=("none", "int8"), default="none")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--tokens", type=int, default=MAX_NEW_TOKENS)
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--tile-seed", type=int, default=TILE_SEED)
    ap.add_argument("--inputs", type=Path)
    ap.add_argument("--inputs-out", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    res = child_edge(args) if args.child == "edge" else child_torch(args)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


# =================================================================================================
# The parent: model build / cache, children, figures, markdown
# =================================================================================================

def default_model_dir() -> Path:
    """build.py's own cache path for --dims real: ~/.cache/orbit-edge/vlm-real-<key>/, the key naming its
    dims, seed and text (models.vlm.build.real_key; importing the builder needs no torch)."""
    if not BUILD_SCRIPT.is_file():
        raise SystemExit(f"{BUILD_SCRIPT}: missing (the VLM builder, issue 7 part A)")
    from models.vlm.build import default_out
    return Path(default_out("real"))


def model_complete(d: Path) -> bool:
    """build.py writes build_info.json last: a directory without it is a build that did not finish."""
    return (d / BUILD_MARKER).is_file()


def ensure_model(args) -> Path:
    """The cached real-dimension model directory, built with models/vlm/build.py if missing."""
    if args.model is not None:
        if not model_complete(args.model):
            raise SystemExit(f"--model {args.model}: no {BUILD_MARKER} (not a finished build.py output)")
        return args.model
    d = default_model_dir()
    if model_complete(d):
        _log(f"model: {d} (cached)")
        return d
    if not VLM_VENV_PY.is_file():
        raise SystemExit(f"{VLM_VENV_PY}: missing; `make .venv-vlm/.stamp` (torch + transformers) first")
    d.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(VLM_VENV_PY), "-m", "models.vlm.build", "--dims", "real", "--out", str(d),
           "--threads", str(args.threads)]
    log = d.parent / f"{d.name}.build.log"
    _log(f"model: building {d} ({' '.join(cmd[1:])}; ~2 GB on disk, several minutes; log {log})")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S,
                           env=_vlm_env(args.threads))
    if p.returncode != 0 or not model_complete(d):
        raise SystemExit(f"models/vlm/build.py --dims real failed (exit {p.returncode}); log: {log}")
    _log(f"model: built in {time.perf_counter() - t0:.0f} s")
    for stale in d.parent.glob("vlm-real-*"):   # an older builder's output: ~2 GB each
        if stale.is_dir() and stale != d and model_complete(stale):
            _log(f"model: removing stale {stale}")
            shutil.rmtree(stale, ignore_errors=True)
    return d


def torch_dir(model_dir: Path) -> Path | None:
    """Where the safetensors weights + HF config.json are: DIR itself or a subfolder of it."""
    for d in (model_dir, model_dir / "hf", model_dir / "torch", model_dir / "safetensors",
              model_dir / "transformers"):
        if (d / "config.json").is_file() and (any(d.glob("*.safetensors"))
                                               or (d / "model.safetensors.index.json").is_file()):
            return d
    return None


def _vlm_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TRANSFORMERS_DISABLE_TORCH_CHECK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    return env


def _cpu_snapshot():
    try:
        from bench.run import _cpu_snapshot as snap
        return snap()
    except Exception:  # noqa: BLE001 - load figures are informative only
        return None


def _other_cpu(a, b):
    try:
        from bench.run import _other_cpu as other
        return other(a, b)
    except Exception:  # noqa: BLE001
        return None


def wait_quiet(max_wait_s: float, probe_s: float = 2.0) -> tuple:
    """Wait (up to max_wait_s) until the other processes keep fewer than BUSY_CORES cores busy over a
    probe_s window: the machine is shared, and a benchmark next to a build or an emulator measures the
    contention. Returns (seconds waited, the last load seen)."""
    t0 = time.monotonic()
    load = None
    while True:
        a = _cpu_snapshot()
        time.sleep(probe_s)
        load = _other_cpu(a, _cpu_snapshot())
        if load is None or load < BUSY_CORES or time.monotonic() - t0 >= max_wait_s:
            return round(time.monotonic() - t0, 1), load


def run_child(name: str, cmd: list, work: Path, env: dict, max_wait_s: float = 0.0) -> dict:
    out = work / f"{name}.json"
    cmd = cmd + ["--out", str(out)]
    waited, load0 = wait_quiet(max_wait_s) if max_wait_s > 0 else (0.0, None)
    _log(f"{name}: {' '.join(cmd[:3])} ... (waited {waited:.0f} s for a quiet machine; other load "
         f"{load0} cores)")
    a = _cpu_snapshot()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env)
    wall = time.perf_counter() - t0
    b = _cpu_snapshot()
    if p.returncode != 0 or not out.is_file():
        tail = (p.stderr or p.stdout or "").strip().splitlines()[-15:]
        _log(f"{name}: FAILED (exit {p.returncode})\n  " + "\n  ".join(tail))
        return {"error": f"exit {p.returncode}: " + " | ".join(tail[-3:]), "process_s": wall}
    res = json.loads(out.read_text())
    res["process_s"] = wall
    res["other_cpu_cores"] = _other_cpu(a, b)
    res["waited_for_quiet_s"], res["other_cpu_cores_before"] = waited, load0
    _log(f"{name}: done in {wall:.0f} s")
    return res


def summarize(res: dict) -> dict:
    """Median figures of one child's timed runs."""
    if "error" in res:
        return {"error": res["error"]}
    runs = res["runs"]
    keys = ("answer_s", "vision_s", "prefill_s", "decode_ms_per_token", "prepare_s", "total_s",
            "generate_wall_s", "generate_s", "ttft_s")
    s = {k: _r(_med([r.get(k) for r in runs])) for k in keys if any(k in r for r in runs)}
    s["answer_min_s"] = _r(min(r["answer_s"] for r in runs))    # the least disturbed repeat
    s["tokens"] = len(res["tokens"])
    s["prompt_tokens"] = res["prompt_tokens"]
    s["peak_rss_mb"] = _r(res["vm_hwm"] / MB, 1) if res.get("vm_hwm") else None
    s["rss_after_load_mb"] = _r(res["rss"]["after_load"].get("VmRSS", 0) / MB, 1)
    s["load_s"] = _r(res["load_s"], 2)
    # the generate() call alone, for the like-for-like ratio
    s["generate_only_s"] = s.get("total_s") if res["impl"] == "edge" else s.get("generate_s")
    return s


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else round(a / b, 2)


def compare(cfg: dict) -> dict:
    s = {k: summarize(v) for k, v in cfg.items()}
    e8, e32, t32, t8 = (s.get(k, {}) for k in ("edge_q8", "edge_fp32", "torch_fp32", "torch_int8"))
    ratios = {}
    for name, ours, peer in (("edge_q8_vs_torch_fp32", e8, t32), ("edge_q8_vs_torch_int8", e8, t8),
                             ("edge_fp32_vs_torch_fp32", e32, t32)):
        if "error" in ours or "error" in peer or not ours or not peer:
            continue
        ratios[name] = {
            "answer": _ratio(peer.get("answer_s"), ours.get("answer_s")),      # ours incl. preprocessing
            "generate_only": _ratio(peer.get("generate_only_s"), ours.get("generate_only_s")),
            "vision": _ratio(peer.get("vision_s"), ours.get("vision_s")),
            "prefill": _ratio(peer.get("prefill_s"), ours.get("prefill_s")),
            "decode_per_token": _ratio(peer.get("decode_ms_per_token"), ours.get("decode_ms_per_token")),
            "peak_rss": _ratio(peer.get("peak_rss_mb"), ours.get("peak_rss_mb")),
        }
    agree = {}
    for a, b in (("edge_fp32", "torch_fp32"), ("edge_q8", "torch_fp32"), ("edge_q8", "torch_int8"),
                 ("edge_q8", "edge_fp32")):
        ta, tb = cfg.get(a, {}).get("tokens"), cfg.get(b, {}).get("tokens")
        if ta is None or tb is None:
            continue
        n = min(len(ta), len(tb))
        first_diff = next((i for i in range(n) if ta[i] != tb[i]), None)
        agree[f"{a}_vs_{b}"] = {"identical": ta == tb, "same_positions": sum(ta[i] == tb[i] for i in range(n)),
                                "of": n, "first_difference": first_diff}
    rates = {}
    work = cfg.get("torch_fp32", {}).get("work") or cfg.get("torch_int8", {}).get("work")
    e = cfg.get("edge_fp32", {})
    if work and "prompt_tokens" in e:
        ph = work_per_phase(work, e.get("patches") or 1024, e["image_tokens"], e["prompt_tokens"])
        rates["gmac"] = ph
        for k, v in s.items():
            if "error" in v or not v:
                continue
            pre = ph["prefill_all_logits"] if k.startswith("edge") else ph["prefill_last_logits"]
            rates[k] = {"vision": _ratio(ph["vision"], v.get("vision_s")),
                        "prefill": _ratio(pre, v.get("prefill_s")),
                        "decode": _ratio(ph["decode_per_token"], (v.get("decode_ms_per_token") or 0) / 1e3)}
    targets = {}
    if e8 and "error" not in e8:
        targets["int8_answer_s"] = {"value": e8.get("answer_s"), "target": f"< {TARGET_ANSWER_S:g} s",
                                    "met": e8.get("answer_s") is not None and e8["answer_s"] < TARGET_ANSWER_S}
        r = ratios.get("edge_q8_vs_torch_fp32", {})
        targets["int8_vs_transformers"] = {
            "value": r.get("answer"), "generate_only": r.get("generate_only"),
            "target": f">= {TARGET_VS_TRANSFORMERS:g}x (ours incl. preprocessing vs transformers generate())",
            "met": r.get("answer") is not None and r["answer"] >= TARGET_VS_TRANSFORMERS}
        targets["int8_peak_rss_mb"] = {"value": e8.get("peak_rss_mb"), "target": f"< {TARGET_PEAK_MB:g} MB",
                                       "met": e8.get("peak_rss_mb") is not None
                                       and e8["peak_rss_mb"] < TARGET_PEAK_MB}
    return {"summary": s, "ratios": ratios, "token_agreement": agree, "targets": targets,
            "gmac_per_s": rates}


def machine() -> dict:
    info = {"date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "cores_online": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "machine": platform.machine(), "python": platform.python_version()}
    try:
        from bench.run import _cpuinfo
        info["cpu"] = _cpuinfo()
    except Exception:  # noqa: BLE001
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz") and "cpu_mhz" not in info:
                info["cpu_mhz"] = float(line.split(":")[1])
            elif line.startswith(("flags", "Features")) and "vnni" not in info:
                flags = set(line.split(":", 1)[1].split())
                info["vnni"] = sorted(f for f in flags if "vnni" in f)   # int8 dot products (x86)
                info["avx2_fma"] = "avx2" in flags and "fma" in flags
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory"] = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                            capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "edge/vlm", "bench/bench_vlm.py",
                                "models/vlm/build.py"], cwd=REPO, capture_output=True, text=True,
                               timeout=5).stdout.strip()
        info["uncommitted_vlm_sources"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    srcs = {}
    for rel in ("edge/vlm/model.py", "edge/vlm/generate.py", "edge/vlm/processor.py", "models/vlm/build.py"):
        p = REPO / rel
        if p.is_file():
            srcs[rel] = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
    info["sources"] = srcs
    return info


# --- markdown ------------------------------------------------------------------------------------

def _f(v, nd=2):
    if v is None:
        return "-"
    return f"{v:,.{nd}f}"


def _x(v):
    return "-" if v is None else f"{v:.2f}x"


def _met(m):
    return "**met**" if m else "**not met**"


LABELS = {"edge_q8": "orbit-edge int8 (q8)", "edge_fp32": "orbit-edge fp32",
          "torch_fp32": "transformers generate() fp32", "torch_int8": "transformers generate() torch int8"}


def render_markdown(doc: dict) -> str:
    m, cmp_, cfg = doc["machine"], doc["comparison"], doc["configs"]
    s = cmp_["summary"]
    cpu = m.get("cpu", {})
    mdl = doc["model"]
    e32 = cfg.get("edge_fp32", {})
    L = [SECTION_START, "", "## VLM: one 512x512 tile, grounding prompt, orbit-edge vs transformers (issue 7)", ""]
    L.append(f"Generated by `make bench-vlm` (`python -m bench.bench_vlm`, bench/bench_vlm.py says how it "
             f"measures); figures in `{RESULTS_JSON}`. Run of {m['date_utc']} UTC, commit "
             f"{m.get('git_commit', '?')}{' (VLM sources uncommitted at the time)' if m.get('uncommitted_vlm_sources') else ''}, "
             f"{doc['elapsed_s']:.0f} s.")
    L.append("")
    L.append(f"- Model: random weights with the real LFM2.5-VL-450M dimensions "
             f"({_f(mdl.get('parameters'), 0) if mdl.get('parameters') else '?'} parameters), built by "
             f"`models/vlm/build.py --dims real`; the ONNX export (fp32, and int8 = quantize_dynamic, "
             f"`_q8`) and the safetensors weights transformers loads are the same weights.")
    L.append(f"- Workload: one {TILE}x{TILE} RGB tile (models/scenes.py seed {TILE_SEED}), the grounding prompt "
             f"`{doc['settings']['question']}` (edge.vlm.tasks.task_prompt) in the chat template: {e32.get('prompt_tokens', '?')} prompt tokens "
             f"({e32.get('image_tokens', '?')} image tokens, {e32.get('tiles', '?')} tile), greedy, exactly "
             f"{doc['settings']['tokens']} new tokens (EOS does not stop either side; see below), "
             f"{doc['settings']['threads']} threads everywhere. Median of {doc['settings']['repeats']} answers "
             f"after a warm-up answer, each configuration in a fresh process.")
    L.append(f"- Machine: {cpu.get('model name', '?')}, {m.get('cores_online')} cores "
             f"({', '.join(cpu.get('flags_relevant', []))}), {m.get('memory', '?')}; onnxruntime "
             f"{e32.get('versions', {}).get('onnxruntime', '?')}, torch "
             f"{cfg.get('torch_fp32', {}).get('versions', {}).get('torch', '?')}, transformers "
             f"{cfg.get('torch_fp32', {}).get('versions', {}).get('transformers', '?')}.")
    busy = [(k, v.get("other_cpu_cores")) for k, v in cfg.items() if v.get("other_cpu_cores") is not None]
    waits = [(k, v.get("waited_for_quiet_s")) for k, v in cfg.items() if (v.get("waited_for_quiet_s") or 0) > 3]
    L.append("- Other processes' CPU load during each configuration (cores): " +
             ", ".join(f"{LABELS[k]} {c:.2f}" for k, c in busy) + "." +
             (" Waited for a quiet machine before: " + ", ".join(f"{LABELS[k]} {w:.0f} s" for k, w in waits)
              + "." if waits else "") +
             (f" **Above {BUSY_CORES} cores: the machine was shared, figures are noisy.**"
              if any(c > BUSY_CORES for _, c in busy) else ""))
    L.append("")
    L.append(f"| | vision, 1 tile (s) | prefill, {e32.get('prompt_tokens', '?')} tokens (s) | decode (ms/token) | "
             f"answer, {doc['settings']['tokens']} tokens (s) | fastest answer (s) | generate() alone (s) | "
             f"peak RSS (MB) | RSS after load (MB) | load (s) |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in ("edge_q8", "edge_fp32", "torch_int8", "torch_fp32"):
        if k not in s:
            continue
        v = s[k]
        if "error" in v:
            L.append(f"| {LABELS[k]} | failed: {v['error'][:120]} | | | | | | | | |")
            continue
        L.append(f"| {LABELS[k]} | {_f(v.get('vision_s'), 3)} | {_f(v.get('prefill_s'), 3)} | "
                 f"{_f(v.get('decode_ms_per_token'), 1)} | {_f(v.get('answer_s'), 2)} | "
                 f"{_f(v.get('answer_min_s'), 2)} | {_f(v.get('generate_only_s'), 2)} | {_f(v.get('peak_rss_mb'), 0)} | "
                 f"{_f(v.get('rss_after_load_mb'), 0)} | {_f(v.get('load_s'), 1)} |")
    L.append("")
    L.append("orbit-edge's answer is its whole path: processor (resize, patches, normalisation) + chat template "
             "+ tokenizer + generate(); transformers' is generate() alone, fed orbit-edge's processor output "
             "(its own image processor needs torchvision, which cannot run beside this torch). "
             "transformers' prefill = time to the first logits minus a separate get_image_features() call.")
    L.append("")
    q, f = s.get("edge_q8", {}), s.get("edge_fp32", {})
    if q and f and "error" not in q and "error" not in f:
        L.append(f"orbit-edge int8 over fp32: vision {_x(_ratio(f.get('vision_s'), q.get('vision_s')))}, prefill "
                 f"{_x(_ratio(f.get('prefill_s'), q.get('prefill_s')))}, decode "
                 f"{_x(_ratio(f.get('decode_ms_per_token'), q.get('decode_ms_per_token')))} per token, peak RSS "
                 f"{_x(_ratio(f.get('peak_rss_mb'), q.get('peak_rss_mb')))} smaller.")
        L.append("")
    L.append("Ratios (peer / ours; > 1 = orbit-edge faster or smaller), same run:")
    L.append("")
    L.append("| | answer | generate() alone | vision | prefill | decode/token | peak RSS |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    names = {"edge_q8_vs_torch_fp32": "transformers fp32 / orbit-edge int8",
             "edge_q8_vs_torch_int8": "torch int8 / orbit-edge int8",
             "edge_fp32_vs_torch_fp32": "transformers fp32 / orbit-edge fp32"}
    for k, r in cmp_["ratios"].items():
        L.append(f"| {names[k]} | {_x(r['answer'])} | {_x(r['generate_only'])} | {_x(r['vision'])} | "
                 f"{_x(r['prefill'])} | {_x(r['decode_per_token'])} | {_x(r['peak_rss'])} |")
    L.append("")
    L.append("Same tokens? (greedy on both sides, same inputs)")
    L.append("")
    for k, a in cmp_["token_agreement"].items():
        x, y = k.split("_vs_")
        verdict = "identical" if a["identical"] else (f"{a['same_positions']}/{a['of']} positions equal, first "
                                                       f"difference at token {a['first_difference']}")
        L.append(f"- {LABELS[x]} vs {LABELS[y]}: {verdict}")
    eos_pos = e32.get("eos_positions")
    if eos_pos:
        L.append(f"- EOS (ids {e32.get('eos_token_ids')}) in orbit-edge fp32's {len(e32['tokens'])} tokens at "
                 f"positions {eos_pos}; neither side stopped there, so both computed all of them.")
    elif eos_pos is not None:
        L.append(f"- No EOS (ids {e32.get('eos_token_ids')}) among orbit-edge fp32's {len(e32['tokens'])} tokens: "
                 f"forcing the count changed nothing in this run.")
    if any(not a["identical"] for k, a in cmp_["token_agreement"].items() if k.startswith("edge_q8")):
        L.append("- The int8 runs' tokens are not a quality measure here: random weights give nearly flat "
                 "logits, so quantisation noise changes the greedy argmax (the fixture tests of "
                 "tests/test_vlm_model.py judge int8 closeness; this run only times it).")
    L.append("")
    rates = cmp_.get("gmac_per_s", {})
    if rates.get("gmac"):
        ph = rates["gmac"]
        mhz = m.get("cpu_mhz")
        cores = m.get("cores_online") or 2
        peak = f"{cores * 16 * mhz / 1e3:.0f}" if mhz and m.get("avx2_fma") else None
        vnni = m.get("vnni")
        L.append(f"Work per phase, counted from the model's layers (linear layers + attention products; "
                 f"bench_vlm.work_per_phase): vision {ph['vision']:.0f} GMAC per tile, prefill "
                 f"{ph['prefill_all_logits']:.0f} GMAC with every position's logits (the ONNX graph, as Liquid "
                 f"exports it; the head alone is {ph['lm_head_all_positions']:.0f} of them) or "
                 f"{ph['prefill_last_logits']:.0f} GMAC with the last one's (transformers), decode "
                 f"{ph['decode_per_token']:.2f} GMAC per token. Achieved rates (GMAC/s) below" +
                 (f"; for scale, {cores} cores x 2 AVX2 FMA units x 8 fp32 lanes are {peak} GFMA/s at the "
                  f"{mhz:.0f} MHz the machine reports (a rate above it means the cores ran above that clock)"
                  if peak else "") + "." +
                 ("" if vnni or vnni is None else
                  " This CPU has no VNNI (int8 dot-product) instructions, so int8 GEMMs are not much faster "
                  "than fp32 ones: quantisation pays in the memory-bound decode, not in the compute-bound "
                  "vision and prefill."))
        L.append("")
        L.append("| | vision | prefill | decode |")
        L.append("|---|---:|---:|---:|")
        for k in ("edge_q8", "edge_fp32", "torch_int8", "torch_fp32"):
            if k in rates:
                r = rates[k]
                L.append(f"| {LABELS[k]} | {_f(r['vision'], 0)} | {_f(r['prefill'], 0)} | {_f(r['decode'], 0)} |")
        L.append("")
    L.append("Targets (issue 7):")
    L.append("")
    t = cmp_["targets"]
    if "int8_answer_s" in t:
        L.append(f"- int8 grounding answer, one 512x512 tile, 40 tokens, 2 threads: "
                 f"**{_f(t['int8_answer_s']['value'], 2)} s** (target < {TARGET_ANSWER_S:g} s): "
                 f"{_met(t['int8_answer_s']['met'])}")
        v = t["int8_vs_transformers"]
        L.append(f"- against transformers' generate() on the same weights (fp32): **{_x(v['value'])}** "
                 f"(generate() alone: {_x(v['generate_only'])}; target >= {TARGET_VS_TRANSFORMERS:g}x): "
                 f"{_met(v['met'])}")
        L.append(f"- int8 peak RSS (VmHWM): **{_f(t['int8_peak_rss_mb']['value'], 0)} MB** "
                 f"(target < {TARGET_PEAK_MB:g} MB): {_met(t['int8_peak_rss_mb']['met'])}")
    L.append("")
    o = ORION
    L.append(f"Beside it, ORION's published figure: **{o['seconds_per_frame'][0]}-{o['seconds_per_frame'][1]} s "
             f"per {o['frame']} frame**, {o['model']} in {o['runtime']} on a {o['hardware']}. Not like for "
             f"like: that is a 1.6B-parameter model (~3.6x the parameters of this 450M one) on four ARM "
             f"Cortex-A76 cores (NEON, no AVX2) of a single-board computer; this is the 450M model on 2 cores "
             f"of an AMD EPYC VM with AVX2. orbit-edge on a Pi 5 is not measured here (firmware_sim/'s "
             f"emulated ARM board is an emulator, not a timing model), so the two figures bracket the cost "
             f"rather than compare runtimes.")
    if doc.get("notes"):
        L.append("")
        L += [f"- {n}" for n in doc["notes"]]
    L += ["", SECTION_END, ""]
    return "\n".join(L)


def write_section(path: Path, md: str) -> None:
    """Replace (or append) the VLM section of RESULTS.md between its markers; the rest is kept."""
    text = path.read_text() if path.is_file() else ""
    a, b = text.find(SECTION_START), text.find(SECTION_END)
    if a >= 0 and b > a:
        text = text[:a] + md.rstrip("\n") + "\n" + text[b + len(SECTION_END):].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + md
    path.write_text(text)


def print_table(doc: dict) -> None:
    s = doc["comparison"]["summary"]
    hdr = f"{'config':34s} {'vision s':>9s} {'prefill s':>9s} {'ms/tok':>8s} {'answer s':>9s} {'gen s':>7s} {'peak MB':>8s}"
    print(hdr)
    for k in ("edge_q8", "edge_fp32", "torch_int8", "torch_fp32"):
        v = s.get(k)
        if v is None:
            continue
        if "error" in v:
            print(f"{LABELS[k]:34s} failed: {v['error'][:80]}")
            continue
        print(f"{LABELS[k]:34s} {_f(v.get('vision_s'), 3):>9s} {_f(v.get('prefill_s'), 3):>9s} "
              f"{_f(v.get('decode_ms_per_token'), 1):>8s} {_f(v.get('answer_s'), 2):>9s} "
              f"{_f(v.get('generate_only_s'), 2):>7s} {_f(v.get('peak_rss_mb'), 0):>8s}")
    for k, r in doc["comparison"]["ratios"].items():
        print(f"ratio {k}: answer {_x(r['answer'])}, generate-only {_x(r['generate_only'])}, "
              f"decode/token {_x(r['decode_per_token'])}, peak RSS {_x(r['peak_rss'])}")
    for k, a in doc["comparison"]["token_agreement"].items():
        print(f"tokens {k}: identical={a['identical']} ({a['same_positions']}/{a['of']})")
    for k, t in doc["comparison"]["targets"].items():
        print(f"target {k}: {t['value']} ({t['target']}): {'met' if t['met'] else 'NOT met'}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        return _child_main(argv)
    ap = argparse.ArgumentParser(prog="python -m bench.bench_vlm", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="a built model directory (default: the cached real build)")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--tokens", type=int, default=MAX_NEW_TOKENS)
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--skip-torch", action="store_true", help="orbit-edge only (no transformers peers)")
    ap.add_argument("--skip-torch-int8", action="store_true", help="no torch dynamic-int8 peer")
    ap.add_argument("--out-dir", type=Path, default=HERE)
    ap.add_argument("--wait-quiet", type=float, default=WAIT_QUIET_S, metavar="S",
                    help=f"before each configuration, wait up to S seconds for the other processes' load to "
                         f"drop below {BUSY_CORES} cores (default {WAIT_QUIET_S:g}; 0: do not wait)")
    ap.add_argument("--no-write", action="store_true", help="print the markdown, write nothing")
    ap.add_argument("--from-json", type=Path, help="re-render the table and the RESULTS.md section from a "
                    "results.vlm.json (no measurement; with --no-write, print only)")
    args = ap.parse_args(argv)
    if args.from_json is not None:   # re-render (the markdown's wording changed), no measurement
        doc = json.loads(args.from_json.read_text())
        md = render_markdown(doc)
        print_table(doc)
        if args.no_write:
            print(md)
        else:
            write_section(args.out_dir / "RESULTS.md", md)
            _log(f"re-rendered the VLM section of {args.out_dir / 'RESULTS.md'} from {args.from_json}")
        return 0
    if args.tokens < 2 or args.repeats < 1 or args.threads < 1:
        raise SystemExit("--tokens must be >= 2, --repeats and --threads >= 1")
    t_start = time.perf_counter()
    mdir = ensure_model(args)
    tdir = torch_dir(mdir)
    build_info = json.loads((mdir / BUILD_MARKER).read_text())
    notes = []
    common = ["--model", str(mdir), "--threads", str(args.threads), "--tokens", str(args.tokens),
              "--repeats", str(args.repeats)]
    env = dict(os.environ)
    cfg = {}
    with tempfile.TemporaryDirectory(prefix="bench-vlm-") as tmp:
        work = Path(tmp)
        inputs = work / "inputs.npz"
        edge = [sys.executable, "-m", "bench.bench_vlm", "--child", "edge"] + common
        cfg["edge_fp32"] = run_child("edge_fp32", edge + ["--variant", "fp32", "--inputs-out", str(inputs)],
                                     work, env, args.wait_quiet)
        cfg["edge_q8"] = run_child("edge_q8", edge + ["--variant", "q8"], work, env, args.wait_quiet)
        if args.skip_torch:
            notes.append("transformers peers skipped (--skip-torch).")
        elif tdir is None:
            notes.append(f"{mdir}: no safetensors weights with a config.json: transformers peers not run.")
        elif not VLM_VENV_PY.is_file():
            notes.append(f"{VLM_VENV_PY} missing: transformers peers not run.")
        elif not inputs.is_file():
            notes.append("the orbit-edge fp32 run failed, so there are no shared inputs: transformers peers "
                         "not run.")
        else:
            tcmd = [str(VLM_VENV_PY), "-m", "bench.bench_vlm", "--child", "torch", "--torch-dir", str(tdir),
                    "--inputs", str(inputs)] + common
            venv = _vlm_env(args.threads)
            cfg["torch_fp32"] = run_child("torch_fp32", tcmd + ["--quant", "none"], work, venv, args.wait_quiet)
            if args.skip_torch_int8:
                notes.append("torch dynamic-int8 peer skipped (--skip-torch-int8).")
            else:
                cfg["torch_int8"] = run_child("torch_int8", tcmd + ["--quant", "int8"], work, venv,
                                               args.wait_quiet)
    for k, v in cfg.items():
        if v.get("same_tokens_every_repeat") is False:
            notes.append(f"{LABELS[k]}: the repeats did not all give the same tokens.")
        if "error" in v:
            notes.append(f"{LABELS[k]} failed: {v['error']}")
    tf = cfg.get("torch_fp32", {})
    t8 = cfg.get("torch_int8", {})
    if "vm_hwm" in t8 and "rss" in t8:
        notes.append(f"torch int8's peak RSS includes the fp32 model it is quantised from; its RSS after "
                     f"quantisation was {t8['rss']['after_load'].get('VmRSS', 0) / MB:,.0f} MB.")
    doc = {
        "benchmark": "vlm", "machine": machine(),
        "settings": {"tile": TILE, "tile_seed": TILE_SEED,
                     "question": cfg.get("edge_fp32", {}).get("question") or grounding_question(),
                     "tokens": args.tokens, "threads": args.threads, "repeats": args.repeats,
                     "eos": "does not stop generation on either side (count forced); logits untouched"},
        "model": {"directory": str(mdir), "torch_dir": str(tdir) if tdir else None,
                  "parameters": build_info.get("parameters") or tf.get("parameters"),
                  "build_s": build_info.get("build_s"), "export_check": build_info.get("export_check"),
                  "onnx_bytes": {k: cfg[k].get("weight_bytes") for k in ("edge_fp32", "edge_q8") if k in cfg},
                  "files": {k: cfg[k].get("files") for k in ("edge_fp32", "edge_q8") if k in cfg}},
        "configs": cfg, "comparison": compare(cfg), "orion": ORION, "notes": notes,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }
    md = render_markdown(doc)
    print_table(doc)
    if args.no_write:
        print(md)
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / RESULTS_JSON).write_text(json.dumps(doc, indent=1) + "\n")
    write_section(args.out_dir / "RESULTS.md", md)
    _log(f"wrote {args.out_dir / RESULTS_JSON} and the VLM section of {args.out_dir / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
