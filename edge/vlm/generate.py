"""Greedy decoding of an LFM2-VL-family export with its KV and conv caches (batch 1).

    vision encoder, per `vision_batch` tiles   heartbeat("vision") before each run
      -> image features [N, hidden]            (N must equal the image tokens of the prompt)
    embed_tokens(input_ids) -> inputs_embeds; the image-token positions get the features, in order
    prefill: the whole prompt, empty caches    heartbeat("prefill")
      (conv [1, hidden, L] zeros, kv [1, heads, 0, dim], as the session declares them)
    then one token at a time: embed_tokens(token), the presents fed back as the pasts, the attention
    mask one longer each step, position_ids only if the graph has it  heartbeat("decode") per token
    stop: an EOS id ("eos"), max_new_tokens ("max_tokens"), or the per-answer deadline on the monotonic
    clock ("deadline"; checked before every graph run, so a deadline costs at most one run's overrun).
    The clock is injectable (generate(clock=...)): the supervisor's, or a test's that moves on demand.

Checked (tests/test_vlm_model.py) against transformers' generate() on the torch model of the committed
tiny export (models/vlm/build.py): the same tokens, one for one, in fp32.

The returned tokens are those generate() would append: the EOS that ended the answer included; the text
is decoded without special tokens. Buffers: the attention mask and position ids are one preallocated
array each (views of it are fed); the logits go through IOBinding into preallocated numpy buffers (the
prefill's [1, T, vocab] once, the decode step's [1, 1, vocab] reused) and the caches stay ORT values
between steps (no numpy round trip).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edge.vlm.model import VlmInputs

STOPS = ("eos", "max_tokens", "deadline")


@dataclass
class GenerationResult:
    tokens: list              # generated ids (the stopping EOS included, as transformers' generate())
    text: str                 # decoded, special tokens skipped
    stop: str                 # "eos" | "max_tokens" | "deadline"
    timings: dict             # vision_s, prefill_s, decode_s, tokens, per_token_s, total_s
    prompt_tokens: int
    image_tokens: int = 0
    tiles: int = 0
    step_s: list = field(default_factory=list)   # each decode step's wall time (after the prefill)


class _Deadline(Exception):
    pass


def _cast(a: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(a if a.dtype == dtype else a.astype(dtype))


class _Runner:
    """The per-model run helpers (sessions + specs), built once per VlmModel and cached on it."""

    def __init__(self, model):
        import onnxruntime as ort
        self.ort = ort
        self.m = model
        self.vs, self.es, self.ds = model.vision, model.embed, model.decoder
        self.vision = model.sessions["vision"]
        self.embed = model.sessions["embed"]
        self.decoder = model.sessions["decoder"]
        self.present_names = [s.present for s in self.ds.slots]
        self._step_logits = None

    # --- vision
    def image_features(self, inp: VlmInputs, beat, check) -> tuple:
        pv = inp.pixel_values
        if pv is None or len(pv) == 0:
            return np.zeros((0, 0), np.float32), 0
        tiles = len(pv)
        vs = self.vs
        if vs.pixel_attention_mask and inp.pixel_attention_mask is None:
            raise ValueError("the vision encoder needs pixel_attention_mask")
        if vs.spatial_shapes and inp.spatial_shapes is None:
            raise ValueError("the vision encoder needs spatial_shapes")
        step = self.m.vision_batch if self.m.vision_batch > 0 else tiles
        if vs.max_tiles:
            step = min(step, vs.max_tiles)
        parts = []
        for a in range(0, tiles, step):
            check()
            beat("vision")
            b = min(tiles, a + step)
            feed = {vs.pixel_values: _cast(pv[a:b], vs.pixel_dtype)}
            if vs.pixel_attention_mask:
                feed[vs.pixel_attention_mask] = _cast(inp.pixel_attention_mask[a:b], vs.mask_dtype)
            if vs.spatial_shapes:
                feed[vs.spatial_shapes] = _cast(inp.spatial_shapes[a:b], vs.shapes_dtype)
            out = self.vision.run([vs.features], feed)[0]
            parts.append(out.reshape(-1, out.shape[-1]))
        return np.concatenate(parts, axis=0), tiles

    # --- embeddings
    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.embed.run([self.es.embeds], {self.es.input_ids: _cast(ids, self.es.ids_dtype)})[0]

    # --- decoder
    def run_decoder(self, embeds, mask, pos, cache, logits_buf):
        ds, ort = self.ds, self.ort
        b = self.decoder.io_binding()
        b.bind_cpu_input(ds.embeds, embeds)
        b.bind_cpu_input(ds.attention_mask, mask)
        if ds.position_ids:
            b.bind_cpu_input(ds.position_ids, pos)
        for s in ds.slots:
            v = cache[s.past]
            if isinstance(v, np.ndarray):
                b.bind_cpu_input(s.past, v)
            else:
                b.bind_ortvalue_input(s.past, v)
        if logits_buf is not None:
            b.bind_output(ds.logits, "cpu", 0, logits_buf.dtype.type, list(logits_buf.shape),
                          logits_buf.ctypes.data)
        else:
            b.bind_output(ds.logits, "cpu")
        for name in self.present_names:
            b.bind_output(name, "cpu")
        self.decoder.run_with_iobinding(b)
        outs = b.get_outputs()
        logits = logits_buf if logits_buf is not None else outs[0].numpy()
        new_cache = {s.past: outs[i + 1] for i, s in enumerate(ds.slots)}
        return logits, new_cache

    def empty_cache(self) -> dict:
        return {s.past: np.zeros(s.shape, dtype=s.dtype) for s in self.ds.slots}

    def logits_buffer(self, t: int, dtype):
        v = self.ds.vocab
        if v is None:
            return None
        return np.empty((1, 1 if self.ds.last_logits_only else t, v), dtype=dtype)


def _runner(model) -> _Runner:
    r = getattr(model, "_edge_runner", None)
    if r is None:
        r = _Runner(model)
        model._edge_runner = r
    return r


def generate(model, inputs, *, max_new_tokens: int = 64, deadline_s: float | None = None,
             heartbeat=None, clock=None) -> GenerationResult:
    """Greedy answer of `model` (a VlmModel) to `inputs` (VlmInputs or a mapping with input_ids,
    pixel_values, pixel_attention_mask, spatial_shapes). See the module docstring. `clock` (seconds,
    default time.monotonic) is what the deadline and the timings read: the supervisor's clock, or a test's."""
    clock = time.monotonic if clock is None else clock
    t_start = clock()
    deadline = None if deadline_s is None else t_start + float(deadline_s)
    beat = heartbeat if heartbeat is not None else (lambda stage: None)
    inp = inputs if isinstance(inputs, VlmInputs) else VlmInputs.from_mapping(inputs)
    ids = np.ascontiguousarray(inp.input_ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape [1, T>0] (batch 1), got {ids.shape}")
    max_new = int(max_new_tokens)
    if max_new < 0:
        raise ValueError("max_new_tokens must be >= 0")
    r = _runner(model)
    ds = r.ds
    T = ids.shape[1]
    image_pos = np.flatnonzero(ids[0] == model.image_token_id)
    timings = {"vision_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0, "tokens": 0, "per_token_s": 0.0,
               "total_s": 0.0}
    tokens: list = []
    step_s: list = []
    tiles = 0

    def check():
        if deadline is not None and clock() >= deadline:
            raise _Deadline

    def result(stop):
        timings["tokens"] = len(tokens)
        timings["total_s"] = clock() - t_start
        if step_s:
            timings["per_token_s"] = timings["decode_s"] / len(step_s)
        return GenerationResult(list(tokens), model.decode(tokens), stop, timings, T,
                                len(image_pos), tiles, step_s)

    try:
        # --- vision
        t0 = clock()
        if len(image_pos) or (inp.pixel_values is not None and len(inp.pixel_values)):
            feats, tiles = r.image_features(inp, beat, check)
            if feats.shape[0] != len(image_pos):
                raise ValueError(f"{model.files['vision'].path.name}: {feats.shape[0]} image features "
                                 f"for {len(image_pos)} image tokens ({model.image_token!r}, id "
                                 f"{model.image_token_id}) in the prompt")
        timings["vision_s"] = clock() - t0
        if max_new == 0:
            return result("max_tokens")

        # --- prefill
        check()
        beat("prefill")
        t0 = clock()
        emb = r.embed_ids(ids)
        if len(image_pos):
            if feats.shape[-1] != emb.shape[-1]:
                raise ValueError(f"image features have width {feats.shape[-1]}, the embeddings "
                                 f"{emb.shape[-1]}")
            emb = np.array(emb, copy=True) if not emb.flags.writeable else emb
            emb[0, image_pos] = feats.astype(emb.dtype, copy=False)
        emb = _cast(emb, ds.embeds_dtype)
        total = T + max_new
        mask = np.ones((1, total), dtype=ds.mask_dtype)
        pos = np.arange(total, dtype=ds.position_dtype or np.int64)[None]
        logits_dtype = ds.logits_dtype
        logits, cache = r.run_decoder(emb, mask[:, :T], pos[:, :T], r.empty_cache(),
                                      r.logits_buffer(T, logits_dtype))
        nxt = int(np.argmax(logits[0, -1]))
        del logits
        timings["prefill_s"] = clock() - t0
        tokens.append(nxt)
        beat("decode")
        step_buf = r.logits_buffer(1, logits_dtype)
        one = np.empty((1, 1), dtype=np.int64)

        # --- decode
        t_dec = clock()
        while True:
            if nxt in model.eos_token_ids:
                return result("eos")
            if len(tokens) >= max_new:
                return result("max_tokens")
            check()
            ts = clock()
            one[0, 0] = nxt
            e = _cast(r.embed_ids(one), ds.embeds_dtype)
            L = T + len(tokens)
            logits, cache = r.run_decoder(e, mask[:, :L], pos[:, L - 1:L], cache, step_buf)
            nxt = int(np.argmax(logits[0, -1]))
            tokens.append(nxt)
            now = clock()
            step_s.append(now - ts)
            timings["decode_s"] = now - t_dec
            beat("decode")
    except _Deadline:
        return result("deadline")
