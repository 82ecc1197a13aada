"""The on-board vision-language model: an LFM2-VL-family ONNX export run with ONNX Runtime (issue 7).

VlmModel(directory) finds and validates everything the export ships and opens three sessions:

    DIR/[onnx/]vision_encoder{suffix}.onnx   or embed_images{suffix}.onnx    (role "vision")
    DIR/[onnx/]embed_tokens{suffix}.onnx                                     (role "embed")
    DIR/[onnx/]decoder_model_merged{suffix}.onnx or decoder{suffix}.onnx     (role "decoder")
    DIR/tokenizer.json (+ tokenizer_config.json, special_tokens_map.json), config.json,
    generation_config.json, chat_template.jinja (or "chat_template" in tokenizer_config.json /
    processor_config.json / chat_template.json), preprocessor_config.json / processor_config.json

Variants by file-name suffix: "" or _fp32 -> "fp32", _fp16 -> "fp16", _q8 / _int8 / _uint8 / _quantized ->
"q8", _q4 -> "q4", _q4f16 -> "q4f16". variant=None takes, for each graph, the first that exists in
VARIANT_ORDER (q8, fp32, fp16, q4, q4f16); variant="fp32" asks for that one (the decoder must have it; the
vision encoder and the embedding fall back along VARIANT_ORDER, as Liquid's exports do not ship every
variant of every graph); variant={"vision": .., "embed": .., "decoder": ..} is strict per graph.
`model.files` / `model.variants` say what was taken. An external-data file beside a graph
(X.onnx_data / X.onnx.data / X.data) is counted in weight_bytes and read by ONNX Runtime.

Nothing about the graphs is hard-coded: the input/output names, the cache tensors (past_conv.{i} <->
present_conv.{i}, past_key_values.{i}.key/value <-> present.{i}.key/value), their dtypes and fixed
dimensions are read from the sessions (config.json only fills a dimension the graph leaves symbolic),
and position_ids is fed only when the decoder has that input. See DecoderSpec / VisionSpec.

Memory (memory=...):
    "copy"   (default) ONNX Runtime reads each .onnx file itself, from its path (so external data
             resolves), once; Python never holds the model bytes. ORT keeps its own copy of every
             initializer, and with full graph optimization it prepacks the MatMul/Gemm weights (fp32
             MLAS packing; for quantize_dynamic int8 graphs the fused DynamicQuantizeMatMul packs the
             int8 weights) and frees the originals that only the packed kernels used: what runs is in
             ORT's memory, which Python cannot protect (weight_regions() is empty).
    "owned"  like the detectors' OrtBackend: the initializers are parsed out with the `onnx` package
             (imported only then) into numpy arrays this object keeps, handed to the sessions through
             SessionOptions.add_initializer, prepacking disabled, graph optimization BASIC, so every
             weight ORT computes from is one of those arrays: weight_regions() lists them as writable
             uint8 views for the scrubber. Slower (no prepacking).
weight_bytes is the on-disk size of the three graphs (with external data), i.e. what ORT loads;
memory_estimate(prompt_tokens, max_new_tokens) adds the caches and the logits buffers.

Errors (a missing file, a graph without the expected inputs/outputs, a bad config) are VlmModelError
(a ValueError) whose message names the file and the problem.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VARIANT_ORDER = ("q8", "fp32", "fp16", "q4", "q4f16")
_SUFFIXES = {"": "fp32", "fp32": "fp32", "fp16": "fp16", "q8": "q8", "int8": "q8", "uint8": "q8",
             "quantized": "q8", "q4": "q4", "int4": "q4", "q4f16": "q4f16"}
# Longest base first so that "decoder_model_merged_q4" is not read as base "decoder" + "model_merged_q4".
_ROLE_BASES = {"vision": ("vision_encoder", "embed_images"),
               "embed": ("embed_tokens",),
               "decoder": ("decoder_model_merged", "decoder")}
ROLES = ("vision", "embed", "decoder")

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
               "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
_CONV_PAST = re.compile(r"^past_conv\.(\d+)$")
_KV_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


class VlmModelError(ValueError):
    """A model directory that cannot be run; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------------
# File discovery

@dataclass(frozen=True)
class GraphFile:
    role: str                 # "vision" | "embed" | "decoder"
    variant: str              # "fp32" | "fp16" | "q8" | "q4" | "q4f16"
    path: Path
    external: tuple = ()      # external-data files beside it
    nbytes: int = 0           # .onnx + external data


def _external_data(path: Path) -> tuple:
    cands = [path.with_name(path.name + "_data"), path.with_name(path.name + ".data"),
             path.with_suffix(".onnx_data"), path.with_suffix(".data")]
    seen, out = set(), []
    for c in cands:
        if c.is_file() and c not in seen:
            seen.add(c)
            out.append(c)
    # Large exports split their data: X.onnx_data_1, X.onnx_data_2, ...
    out += sorted(p for p in path.parent.glob(path.name + "_data_*") if p.is_file())
    return tuple(out)


def discover_graphs(directory: Path) -> dict:
    """{role: {variant: GraphFile}} of every recognised graph in DIR/onnx/ and DIR/."""
    found: dict = {r: {} for r in ROLES}
    for folder in (directory / "onnx", directory):
        if not folder.is_dir():
            continue
        for p in sorted(folder.glob("*.onnx")):
            stem = p.name[:-5]
            for role, bases in _ROLE_BASES.items():
                hit = None
                for base in bases:
                    if stem == base:
                        hit = ""
                    elif stem.startswith(base + "_"):
                        hit = stem[len(base) + 1:]
                    if hit is not None:
                        break
                if hit is None:
                    continue
                variant = _SUFFIXES.get(hit)
                if variant is not None and variant not in found[role]:  # onnx/ wins over the top level
                    ext = _external_data(p)
                    nbytes = p.stat().st_size + sum(e.stat().st_size for e in ext)
                    found[role][variant] = GraphFile(role, variant, p, ext, nbytes)
                break
    return found


def choose_variants(directory: Path, found: dict, variant) -> dict:
    """{role: GraphFile} per the policy in the module docstring."""
    def where():
        return f"{directory}/onnx/ or {directory}/"

    for role in ROLES:
        if not found[role]:
            names = " / ".join(f"{b}*.onnx" for b in _ROLE_BASES[role])
            raise VlmModelError(f"{directory}: no {role} graph ({names}) in {where()}")
    chosen = {}
    if isinstance(variant, dict):
        unknown = set(variant) - set(ROLES)
        if unknown:
            raise VlmModelError(f"variant: unknown graph roles {sorted(unknown)} (roles: {ROLES})")
        for role in ROLES:
            want = variant.get(role)
            if want is None:
                want = next(v for v in VARIANT_ORDER if v in found[role])
            if want not in found[role]:
                raise VlmModelError(f"{directory}: no {want!r} {role} graph (there are "
                                    f"{sorted(found[role])}: {[g.path.name for g in found[role].values()]})")
            chosen[role] = found[role][want]
        return chosen
    if variant is not None and variant not in VARIANT_ORDER:
        raise VlmModelError(f"variant {variant!r} is not one of {VARIANT_ORDER}")
    for role in ROLES:
        order = VARIANT_ORDER if variant is None else (variant,) + tuple(v for v in VARIANT_ORDER
                                                                        if v != variant)
        if variant is not None and role == "decoder" and variant not in found[role]:
            raise VlmModelError(f"{directory}: no {variant!r} decoder graph (there are "
                                f"{[g.path.name for g in found[role].values()]})")
        chosen[role] = next(found[role][v] for v in order if v in found[role])
    return chosen


# ----------------------------------------------------------------------------------------------------
# Config files

def _read_json(path: Path, required: bool = False):
    if not path.is_file():
        if required:
            raise VlmModelError(f"{path}: missing")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VlmModelError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise VlmModelError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_str(value):
    """A special token as written in tokenizer_config / special_tokens_map: a string or {"content": ..}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _ids(value) -> list:
    if value is None:
        return []
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise TypeError


# ----------------------------------------------------------------------------------------------------
# Chat template (rendered as transformers renders it)

def compile_chat_template(source: str, origin: str):
    """The template compiled in an environment like transformers' (_compile_jinja_template):
    ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks, loopcontrols, {% generation %}),
    tojson without HTML escaping, raise_exception, strftime_now."""
    import datetime

    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):  # {% generation %}...{% endgeneration %}: body as-is
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as e:
        raise VlmModelError(f"{origin}: the chat template does not compile ({e})") from e


def _template_text(value):
    """tokenizer_config's chat_template is a string or a list of {"name", "template"} (take "default")."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {d.get("name"): d.get("template") for d in value if isinstance(d, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    return None


# ----------------------------------------------------------------------------------------------------
# Sessions

@dataclass
class TensorInfo:
    name: str
    dtype: type               # numpy dtype class
    shape: tuple              # ints for fixed dims, None for symbolic ones


def _infos(args, label: str) -> dict:
    out = {}
    for a in args:
        dt = _ORT_DTYPES.get(a.type)
        if dt is None:
            raise VlmModelError(f"{label}: tensor {a.name!r} has unsupported type {a.type}")
        out[a.name] = TensorInfo(a.name, dt, tuple(d if isinstance(d, int) and d >= 0 else None
                                                   for d in (a.shape or ())))
    return out


@dataclass
class CacheSlot:
    kind: str                 # "conv" | "key" | "value"
    layer: int
    past: str                 # decoder input name
    present: str              # decoder output name
    dtype: type
    shape: tuple              # the empty cache's shape for batch 1: conv [1, hidden, L], kv [1, heads, 0, dim]


@dataclass
class DecoderSpec:
    embeds: str
    attention_mask: str
    position_ids: str | None
    logits: str
    embeds_dtype: type
    mask_dtype: type
    position_dtype: type | None
    vocab: int | None
    slots: list = field(default_factory=list)
    #: The graph's logits keep only the last position ([B, 1, vocab], a fixed 1 in the session): the
    #: prefill then costs no lm_head over the whole prompt. Exports as Liquid's give every position.
    last_logits_only: bool = False
    logits_dtype: type = np.float32      # as the session declares it (float / float16)

    @property
    def conv_layers(self) -> int:
        return sum(s.kind == "conv" for s in self.slots)

    @property
    def attention_layers(self) -> int:
        return sum(s.kind == "key" for s in self.slots)

    def kv_bytes_per_token(self) -> int:
        return sum(int(np.prod([d for i, d in enumerate(s.shape) if i != 2])) * np.dtype(s.dtype).itemsize
                   for s in self.slots if s.kind != "conv")

    def conv_bytes(self) -> int:
        return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in self.slots
                   if s.kind == "conv")


@dataclass
class VisionSpec:
    pixel_values: str
    pixel_attention_mask: str | None
    spatial_shapes: str | None
    features: str
    pixel_dtype: type
    mask_dtype: type | None
    shapes_dtype: type | None
    max_tiles: int | None     # a fixed first dimension of pixel_values (e.g. 1), else None


@dataclass
class EmbedSpec:
    input_ids: str
    ids_dtype: type
    embeds: str
    embeds_dtype: type


def _pick_output(outs: dict, preferred: tuple, label: str, what: str) -> str:
    for n in preferred:
        if n in outs:
            return n
    if len(outs) == 1:
        return next(iter(outs))
    raise VlmModelError(f"{label}: no {what} output (looked for {list(preferred)}; the graph has "
                        f"{sorted(outs)})")


def vision_spec(sess, label: str) -> VisionSpec:
    ins, outs = _infos(sess.get_inputs(), label), _infos(sess.get_outputs(), label)
    if "pixel_values" not in ins:
        raise VlmModelError(f"{label}: no 'pixel_values' input (the graph has {sorted(ins)})")
    extra = set(ins) - {"pixel_values", "pixel_attention_mask", "spatial_shapes"}
    if extra:
        raise VlmModelError(f"{label}: unexpected inputs {sorted(extra)} (a vision encoder takes "
                            f"pixel_values, pixel_attention_mask, spatial_shapes)")
    feats = _pick_output(outs, ("image_features", "image_embeds", "last_hidden_state"), label,
                         "image features")
    pv = ins["pixel_values"]
    if pv.dtype not in (np.float32, np.float16):
        raise VlmModelError(f"{label}: pixel_values is {pv.dtype.__name__}, expected float")
    m, s = ins.get("pixel_attention_mask"), ins.get("spatial_shapes")
    return VisionSpec("pixel_values", m and m.name, s and s.name, feats, pv.dtype, m and m.dtype,
                      s and s.dtype, pv.shape[0] if pv.shape else None)


def embed_spec(sess, label: str) -> EmbedSpec:
    ins, outs = _infos(sess.get_inputs(), label), _infos(sess.get_outputs(), label)
    if "input_ids" in ins:
        name = "input_ids"
    elif len(ins) == 1 and next(iter(ins.values())).dtype in (np.int64, np.int32):
        name = next(iter(ins))
    else:
        raise VlmModelError(f"{label}: no 'input_ids' input (the graph has {sorted(ins)})")
    out = _pick_output(outs, ("inputs_embeds", "embeddings"), label, "inputs_embeds")
    return EmbedSpec(name, ins[name].dtype, out, outs[out].dtype)


def _present_for(past: str, outs: dict) -> str | None:
    if past.startswith("past_conv."):
        cands = ["present_conv." + past[len("past_conv."):]]
    else:
        rest = past[len("past_key_values."):]
        cands = ["present." + rest, "present_key_values." + rest]
    return next((c for c in cands if c in outs), None)


def decoder_spec(sess, label: str, text_cfg: dict) -> DecoderSpec:
    ins, outs = _infos(sess.get_inputs(), label), _infos(sess.get_outputs(), label)
    for need in ("inputs_embeds", "attention_mask"):
        if need not in ins:
            raise VlmModelError(f"{label}: no {need!r} input (the graph has {sorted(ins)})")
    if "logits" not in outs:
        raise VlmModelError(f"{label}: no 'logits' output (the graph has {sorted(outs)})")
    slots, unknown = [], []
    for name, info in ins.items():
        if name in ("inputs_embeds", "attention_mask", "position_ids"):
            continue
        mc, mk = _CONV_PAST.match(name), _KV_PAST.match(name)
        if not (mc or mk):
            unknown.append(name)
            continue
        present = _present_for(name, outs)
        if present is None:
            raise VlmModelError(f"{label}: cache input {name!r} has no matching output "
                                f"(present_conv.* / present.*.key|value; the graph has {sorted(outs)})")
        if outs[present].dtype != info.dtype:
            raise VlmModelError(f"{label}: {name} is {info.dtype.__name__} but {present} is "
                                f"{outs[present].dtype.__name__}")
        if len(info.shape) != (3 if mc else 4):
            raise VlmModelError(f"{label}: {name} has rank {len(info.shape)}, expected "
                                f"{3 if mc else 4}")
        shape = list(info.shape)
        shape[0] = 1  # batch 1
        if mc:
            kind, layer = "conv", int(mc.group(1))
            fill = (None, text_cfg.get("conv_dim") or text_cfg.get("hidden_size"),
                    text_cfg.get("conv_L_cache"))
            for i in (1, 2):
                if shape[i] is None:
                    shape[i] = fill[i]
        else:
            kind, layer = mk.group(2), int(mk.group(1))
            heads = text_cfg.get("num_key_value_heads")
            n_heads, hidden = text_cfg.get("num_attention_heads"), text_cfg.get("hidden_size")
            dim = text_cfg.get("head_dim") or (hidden // n_heads if hidden and n_heads else None)
            shape[2] = 0  # the empty cache of the prefill
            if shape[1] is None:
                shape[1] = heads
            if shape[3] is None:
                shape[3] = dim
        if any(not isinstance(d, int) for d in shape):
            raise VlmModelError(f"{label}: {name} has symbolic dimensions {info.shape} and config.json "
                                f"does not give them")
        slots.append(CacheSlot(kind, layer, name, present, info.dtype, tuple(shape)))
    if unknown:
        raise VlmModelError(f"{label}: unexpected decoder inputs {sorted(unknown)} (it takes "
                            f"inputs_embeds, attention_mask, [position_ids], past_conv.*, "
                            f"past_key_values.*)")
    keys = {s.layer for s in slots if s.kind == "key"}
    values = {s.layer for s in slots if s.kind == "value"}
    if keys != values:
        raise VlmModelError(f"{label}: key/value cache inputs do not pair up (key layers "
                            f"{sorted(keys)}, value layers {sorted(values)})")
    slots.sort(key=lambda s: (s.layer, s.kind))
    logits = outs["logits"]
    vocab = logits.shape[-1] if logits.shape else None
    last_only = len(logits.shape) == 3 and logits.shape[1] == 1
    pos = ins.get("position_ids")
    return DecoderSpec("inputs_embeds", "attention_mask", pos and pos.name, "logits",
                       ins["inputs_embeds"].dtype, ins["attention_mask"].dtype, pos and pos.dtype,
                       vocab, slots, last_only,
                       np.float16 if logits.dtype is np.float16 else np.float32)


#: Sessions run without ONNX Runtime's CPU memory arena. The decoder's working set changes from the
#: prefill (the whole prompt, logits for every position: ~92 MB at 361 tokens x 65,536) to single-token
#: steps; the arena keeps the prefill's peak (and its power-of-two extensions) for the rest of the run.
#: Without it the 450M int8 answer's peak RSS fell from 1,565 MB to 1,472 MB at no measured time cost
#: (bench/bench_vlm.py, this 2-core EPYC). The vision encoder keeps its arena: without it its peak fell
#: further (to ~1.2 GB) but a tile took ~0.5 s longer.
NO_ARENA_ROLES = frozenset({"decoder"})


def _session_options(threads: int, spinning: bool, arena: bool = True):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = bool(arena)
    if not spinning:  # an idle pool must not spin on the 2 cores the running graph needs
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _owned_initializers(path: Path, label: str) -> dict:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:  # pragma: no cover - depends on the board's image
        raise VlmModelError(f"{label}: memory='owned' needs the onnx package ({e})") from e
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        raise VlmModelError(f"{label}: not a readable ONNX model: {str(e)[:200]}") from e
    # np.array(copy=True, order="C"), not np.ascontiguousarray: the latter turns a 0-d initializer (a
    # scalar index or Range bound) into shape (1,), which changes what Gather / Range compute.
    return {t.name: np.array(numpy_helper.to_array(t), copy=True, order="C")
            for t in model.graph.initializer}


def open_session(gf: GraphFile, threads: int, memory: str, spinning: bool = True, arena: bool = True):
    """(session, {name: array} owned weights) for one graph file."""
    import onnxruntime as ort
    label = str(gf.path)
    so = _session_options(threads, spinning, arena)
    weights, keep = {}, []
    if memory == "owned":
        weights = _owned_initializers(gf.path, label)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.add_session_config_entry("session.disable_prepacking", "1")
        for name, arr in weights.items():
            v = ort.OrtValue.ortvalue_from_numpy(arr)
            keep.append(v)
            so.add_initializer(name, v)
    try:
        sess = ort.InferenceSession(str(gf.path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's own exception types for a malformed graph / missing data
        raise VlmModelError(f"{label}: ONNX Runtime cannot load it: {str(e)[:300]}") from e
    sess._edge_keep = keep  # the OrtValues (and so the arrays) live as long as the session
    return sess, weights


# ----------------------------------------------------------------------------------------------------
# The model

@dataclass
class VlmInputs:
    """What generate() consumes (batch 1). input_ids already hold the expanded image tokens."""
    input_ids: np.ndarray                      # int64 [1, T]
    pixel_values: np.ndarray | None = None     # float32 [tiles, P, C*p*p]
    pixel_attention_mask: np.ndarray | None = None   # int64 [tiles, P]
    spatial_shapes: np.ndarray | None = None   # int64 [tiles, 2]
    text: str = ""                             # the expanded prompt text (for the record / debugging)
    extra: dict = field(default_factory=dict)  # the processor's other outputs (image_rows, ...)

    @classmethod
    def from_mapping(cls, m) -> "VlmInputs":
        def arr(k, dt):
            v = m.get(k)
            return None if v is None else np.asarray(v, dtype=dt)
        ids = np.asarray(m["input_ids"], dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        return cls(ids, arr("pixel_values", np.float32), arr("pixel_attention_mask", np.int64),
                   arr("spatial_shapes", np.int64), str(m.get("text", "")))


class VlmModel:
    """An LFM2-VL-family ONNX export, validated and opened (see the module docstring)."""

    def __init__(self, directory, *, variant=None, threads: int = 2, memory: str = "copy",
                 vision_batch: int = 1, load_processor: bool = True):
        """vision_batch: tiles per vision-encoder run (1: a heartbeat and a deadline check per tile and
        the smallest activation peak; 0: all tiles of the call at once)."""
        if memory not in ("copy", "owned"):
            raise ValueError(f"memory must be 'copy' or 'owned', got {memory!r}")
        self.directory = Path(directory)
        d = self.directory
        if not d.is_dir():
            raise VlmModelError(f"{d}: not a directory")
        self.threads, self.memory, self.vision_batch = int(threads), memory, int(vision_batch)

        # --- configs
        self.config = _read_json(d / "config.json") or {}
        self.generation_config = _read_json(d / "generation_config.json") or {}
        self.tokenizer_config = _read_json(d / "tokenizer_config.json") or {}
        self.special_tokens_map = _read_json(d / "special_tokens_map.json") or {}
        self.processor_config = _read_json(d / "processor_config.json") or {}
        text_cfg = self.config.get("text_config")
        self.text_config = text_cfg if isinstance(text_cfg, dict) else self.config

        # --- tokenizer and special tokens
        tok_path = d / "tokenizer.json"
        if not tok_path.is_file():
            raise VlmModelError(f"{tok_path}: missing (the tokenizer)")
        from tokenizers import Tokenizer
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise VlmModelError(f"{tok_path}: not a readable tokenizer ({str(e)[:200]})") from e
        self.special_tokens = self._special_tokens()
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token_ids = self._eos_ids()
        self.image_token = self.special_tokens.get("image_token") or "<image>"
        self.image_token_id = self._image_token_id()
        self.clean_up_spaces = bool(self.tokenizer_config.get("clean_up_tokenization_spaces", False))

        # --- chat template
        self.chat_template_source, self.chat_template_origin = self._find_template()
        self._template = compile_chat_template(self.chat_template_source, self.chat_template_origin)

        # --- graphs and sessions
        self.graphs = discover_graphs(d)
        self.files = choose_variants(d, self.graphs, variant)
        self.variants = {r: g.variant for r, g in self.files.items()}
        self._weights = {}
        sessions = {}
        for role in ROLES:
            gf = self.files[role]
            th = 1 if role == "embed" else self.threads  # a Gather: threads only add wake-ups
            sessions[role], w = open_session(gf, th, memory, spinning=(role == "decoder"),
                                             arena=role not in NO_ARENA_ROLES)
            self._weights.update({f"{role}:{k}": v for k, v in w.items()})
        self.sessions = sessions
        self.vision = vision_spec(sessions["vision"], str(self.files["vision"].path))
        self.embed = embed_spec(sessions["embed"], str(self.files["embed"].path))
        self.decoder = decoder_spec(sessions["decoder"], str(self.files["decoder"].path), self.text_config)
        if self.embed.embeds_dtype != self.decoder.embeds_dtype:
            pass  # cast at run time (an fp32 embedding feeding an fp16 decoder is a valid mix)
        if self.decoder.vocab is None:
            v = self.text_config.get("vocab_size")
            self.decoder.vocab = v if isinstance(v, int) else None
        if not self.decoder.slots:
            raise VlmModelError(f"{self.files['decoder'].path}: no cache inputs (past_conv.* / "
                                f"past_key_values.*): not a merged decoder with caches")

        # --- processor (helper B's), optional for callers that feed prepared inputs
        self.processor = None
        self.processor_error = None
        if load_processor:
            try:
                from edge.vlm.processor import Lfm2VlProcessor
            except ImportError as e:
                self.processor_error = f"edge.vlm.processor unavailable ({e})"
            else:
                try:
                    self.processor = Lfm2VlProcessor.from_dir(d)
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise VlmModelError(f"{d}: the processor config cannot be used ({e})") from e

    # ---- configs -----------------------------------------------------------------------------------
    def _special_tokens(self) -> dict:
        out = {}
        for src in (self.special_tokens_map, self.tokenizer_config):  # tokenizer_config wins
            for k, v in src.items():
                s = _token_str(v)
                if s is not None and (k.endswith("_token") or k in ("image_thumbnail",)):
                    out[k] = s
            extra = src.get("extra_special_tokens")
            if isinstance(extra, dict):
                for k, v in extra.items():
                    s = _token_str(v)
                    if s is not None:
                        out.setdefault(k, s)
        return out

    def _eos_ids(self) -> frozenset:
        d = self.directory
        for path, src in ((d / "generation_config.json", self.generation_config),
                          (d / "config.json", self.text_config), (d / "config.json", self.config)):
            if "eos_token_id" in src:
                try:
                    ids = _ids(src["eos_token_id"])
                except TypeError:
                    raise VlmModelError(f"{path}: eos_token_id must be an int or a list of ints, got "
                                        f"{src['eos_token_id']!r}") from None
                if ids:
                    return frozenset(ids)
        eos = self.special_tokens.get("eos_token")
        if eos is not None:
            i = self.tokenizer.token_to_id(eos)
            if i is None:
                raise VlmModelError(f"{d / 'tokenizer_config.json'}: eos_token {eos!r} is not in "
                                    f"tokenizer.json")
            return frozenset([i])
        raise VlmModelError(f"{d}: no end-of-sequence token (eos_token_id in generation_config.json / "
                            f"config.json, or eos_token in tokenizer_config.json)")

    def _image_token_id(self) -> int:
        path = self.directory / "config.json"
        cfg_id = None
        for k in ("image_token_id", "image_token_index"):
            v = self.config.get(k)
            if v is not None:
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise VlmModelError(f"{path}: {k} must be a non-negative int, got {v!r}")
                cfg_id = v
                break
        tok_id = self.tokenizer.token_to_id(self.image_token)
        if cfg_id is not None and tok_id is not None and cfg_id != tok_id:
            raise VlmModelError(f"{path}: image_token_id {cfg_id} but tokenizer.json has "
                                f"{self.image_token!r} = {tok_id}")
        if cfg_id is None and tok_id is None:
            raise VlmModelError(f"{path}: no image_token_id, and tokenizer.json has no "
                                f"{self.image_token!r} token")
        return cfg_id if cfg_id is not None else tok_id

    def _find_template(self):
        d = self.directory
        p = d / "chat_template.jinja"
        if p.is_file():
            return p.read_text(encoding="utf-8"), str(p)
        for path, src in ((d / "processor_config.json", self.processor_config),
                          (d / "chat_template.json", _read_json(d / "chat_template.json") or {}),
                          (d / "tokenizer_config.json", self.tokenizer_config)):
            t = _template_text(src.get("chat_template"))
            if t is not None:
                return t, f"{path} (chat_template)"
        raise VlmModelError(f"{d}: no chat template (chat_template.jinja, or chat_template in "
                            f"processor_config.json / chat_template.json / tokenizer_config.json)")

    # ---- text --------------------------------------------------------------------------------------
    def render_chat(self, messages, add_generation_prompt: bool = True, **kwargs) -> str:
        """The chat template rendered as transformers' apply_chat_template(tokenize=False) does."""
        import jinja2
        ctx = {k: v for k, v in self.special_tokens.items()}
        ctx.update(kwargs)
        try:
            return self._template.render(messages=messages, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **ctx)
        except jinja2.exceptions.TemplateError as e:
            raise VlmModelError(f"{self.chat_template_origin}: rendering failed ({e})") from e

    def chat_prompt(self, question: str, n_images: int = 1, system: str | None = None) -> str:
        """One user turn: n_images image marks, then the question; the assistant turn opened."""
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": content}]
        return self.render_chat(messages, add_generation_prompt=True)

    def encode(self, text: str) -> list:
        """Token ids of a rendered (and image-expanded) prompt. As transformers' processor does: no
        special tokens added when the text already starts with the BOS token."""
        add = not (self.bos_token and text.startswith(self.bos_token))
        return self.tokenizer.encode(text, add_special_tokens=add).ids

    def decode(self, ids) -> str:
        text = self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
        if self.clean_up_spaces:  # transformers' clean_up_tokenization
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                         (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                         (" 're", "'re")):
                text = text.replace(a, b)
        return text

    # ---- inputs and generation ---------------------------------------------------------------------
    def prepare(self, images, prompt: str) -> VlmInputs:
        """Processor + tokenizer: images (PIL or HWC uint8) and a rendered prompt with one image mark per
        image -> VlmInputs with the image tokens expanded."""
        images = list(images or [])
        marks = prompt.count(self.image_token)
        if marks != len(images):
            raise ValueError(f"the prompt has {marks} {self.image_token!r} marks for {len(images)} images")
        if not images:
            ids = self.encode(prompt)
            return VlmInputs(np.asarray([ids], dtype=np.int64), text=prompt)
        if self.processor is None:
            raise VlmModelError(f"{self.directory}: no image processor ({self.processor_error})")
        proc = self.processor.preprocess(images)
        text = self.processor.expand_prompt(prompt, proc)
        ids = self.encode(text)
        extra = {k: v for k, v in proc.items()
                 if k not in ("pixel_values", "pixel_attention_mask", "spatial_shapes")}
        return VlmInputs(np.asarray([ids], dtype=np.int64),
                         np.ascontiguousarray(proc["pixel_values"], dtype=np.float32),
                         np.ascontiguousarray(proc["pixel_attention_mask"], dtype=np.int64),
                         np.ascontiguousarray(proc["spatial_shapes"], dtype=np.int64), text, extra)

    def generate(self, inputs, max_new_tokens: int = 64, deadline_s: float | None = None,
                 heartbeat=None, clock=None):
        """Greedy decoding (edge.vlm.generate.generate); clock: the monotonic seconds the deadline reads."""
        from edge.vlm.generate import generate
        return generate(self, inputs, max_new_tokens=max_new_tokens, deadline_s=deadline_s,
                        heartbeat=heartbeat, clock=clock)

    def ask(self, images, question: str, **kw):
        """chat_prompt + prepare + generate in one call (the `edge vlm ask` path)."""
        prompt = self.chat_prompt(question, n_images=len(list(images or [])))
        return self.generate(self.prepare(images, prompt), **kw)

    # ---- memory ------------------------------------------------------------------------------------
    @property
    def weight_bytes(self) -> int:
        """Bytes of the three graphs on disk (with external data): what ONNX Runtime loads."""
        return sum(g.nbytes for g in self.files.values())

    def memory_estimate(self, prompt_tokens: int = 300, max_new_tokens: int = 64) -> dict:
        """A rough budget in bytes: weights + caches + the logits buffers generate() allocates.
        Activations inside ORT (the vision encoder's attention over 1024 patches dominates) are not
        included; "copy" mode may hold prepacked weights beside the loaded ones while a session opens."""
        total = prompt_tokens + max_new_tokens
        dec = self.decoder
        vocab = dec.vocab or 0
        est = {
            "weights": self.weight_bytes,
            "kv_cache": dec.kv_bytes_per_token() * total * 2,   # present + the past it replaces
            "conv_cache": dec.conv_bytes() * 2,
            "logits": ((1 if dec.last_logits_only else prompt_tokens) + 1) * vocab * 4,
        }
        est["total"] = sum(est.values())
        return est

    def weight_regions(self) -> dict:
        """{name: writable uint8 view} of every initializer the sessions compute from ("owned" mode)."""
        return {name: arr.reshape(-1).view(np.uint8) for name, arr in self._weights.items() if arr.nbytes}

    def describe(self) -> dict:
        dec = self.decoder
        return {
            "directory": str(self.directory),
            "files": {r: str(g.path.relative_to(self.directory)) for r, g in self.files.items()},
            "variants": dict(self.variants),
            "memory": self.memory, "threads": self.threads,
            "weight_bytes": self.weight_bytes,
            "conv_layers": dec.conv_layers, "attention_layers": dec.attention_layers,
            "position_ids": dec.position_ids is not None,
            "last_logits_only": dec.last_logits_only,
            "cache_dtype": np.dtype(dec.slots[0].dtype).name,
            "vocab": dec.vocab, "image_token_id": self.image_token_id,
            "eos_token_ids": sorted(self.eos_token_ids),
            "chat_template": self.chat_template_origin,
        }
