"""The VLM runtime on the fp16 and q4 variants of an LFM2-VL export (issue 7: "fp32, fp16, q8 or q4").

The committed tiny fixture (models/vlm/tiny/) ships fp32 graphs and a q8 decoder; this module derives the
other two variants from it the way exports make them, into a temporary model directory under Liquid's
suffixes: `_fp16` (onnxruntime.transformers.float16.convert_float_to_float16 with fp16 inputs and outputs,
so the caches, the embeddings and the logits are float16) and `_q4` (ONNX Runtime's MatMulNBitsQuantizer,
4-bit blocks of 32, as Liquid's q4 decoders are MatMulNBits graphs). Measured on the fixture:

* fp16 (all three graphs): the same tokens as transformers' fp32 generate() on every reference -- the
  fp16 cache and embedding path (dtypes read from the sessions, float16 buffers) really runs;
* q4 decoder: 4-bit weights move a random model's nearly flat logits enough to change its greedy path
  from the first token (as for q8, see test_vlm_model.py), so closeness is asked of the prefill logits
  (correlation with torch's >= 0.75; measured 0.84-0.86) and the answer must still be a well-formed
  generation (stop reason, token count, heartbeat per token).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge.vlm.model import VlmModel
from models.vlm.processor_refs import make_image

TINY = Path(__file__).resolve().parent.parent / "models" / "vlm" / "tiny"
REFS = json.loads((TINY / "references.json").read_text())
GRAPHS = ("vision_encoder", "embed_tokens", "decoder_model_merged")


def _image(case):
    im = case["image"]
    return make_image(im["height"], im["width"], im["seed"])


@pytest.fixture(scope="module")
def variants_dir(tmp_path_factory):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.transformers.float16 import convert_float_to_float16

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    d = tmp_path_factory.mktemp("variants") / "m"
    shutil.copytree(TINY, d)
    for g in GRAPHS:
        m16 = convert_float_to_float16(onnx.load(str(d / "onnx" / f"{g}.onnx")), keep_io_types=False,
                                       disable_shape_infer=True)
        onnx.save(m16, str(d / "onnx" / f"{g}_fp16.onnx"))
    q = MatMulNBitsQuantizer(onnx.load(str(d / "onnx" / "decoder_model_merged.onnx")), block_size=32,
                             is_symmetric=True)
    q.process()
    q.model.save_model_to_file(str(d / "onnx" / "decoder_model_merged_q4.onnx"), False)
    return d


def test_fp16_export_reproduces_transformers_tokens(variants_dir):
    m = VlmModel(variants_dir, variant="fp16")
    assert m.variants == {"vision": "fp16", "embed": "fp16", "decoder": "fp16"}
    info = m.describe()
    assert info["cache_dtype"] == "float16"
    assert m.files["decoder"].path.name == "decoder_model_merged_fp16.onnx"
    for case in REFS["cases"]:
        inp = m.prepare([_image(case)], m.chat_prompt(case["question"]))
        res = m.generate(inp, max_new_tokens=case["max_new_tokens"])
        assert res.tokens == case["generated_ids"], case["name"]
        assert res.stop == case["stop"] and res.text == case["text"]


def test_q4_decoder_runs_and_stays_close(variants_dir):
    from edge.vlm.generate import _runner

    m = VlmModel(variants_dir, variant={"vision": "fp32", "embed": "fp32", "decoder": "q4"})
    assert m.files["decoder"].path.name == "decoder_model_merged_q4.onnx"
    ops = {n.op_type for n in onnx.load(str(m.files["decoder"].path)).graph.node}
    assert "MatMulNBits" in ops                                    # really a 4-bit graph
    r = _runner(m)
    for case in REFS["cases"]:
        inp = m.prepare([_image(case)], m.chat_prompt(case["question"]))
        feats, _ = r.image_features(inp, lambda stage: None, lambda: None)
        ids = inp.input_ids
        emb = np.array(r.embed_ids(ids), copy=True)
        emb[0, ids[0] == m.image_token_id] = feats
        t = ids.shape[1]
        logits, _ = r.run_decoder(emb, np.ones((1, t), np.int64), np.arange(t)[None], r.empty_cache(), None)
        ref = np.asarray(case["prefill_last_logits"], np.float32)
        assert np.corrcoef(logits[0, -1], ref)[0, 1] >= 0.75, case["name"]
        beats = []
        res = m.generate(inp, max_new_tokens=case["max_new_tokens"], heartbeat=beats.append)
        assert res.stop in ("eos", "max_tokens") and 1 <= len(res.tokens) <= case["max_new_tokens"]
        assert beats == ["vision"] * case["tiles"] + ["prefill"] + ["decode"] * len(res.tokens)


def test_default_order_prefers_q8_then_fp32_over_fp16_and_q4(variants_dir):
    m = VlmModel(variants_dir)
    assert m.variants == {"vision": "fp32", "embed": "fp32", "decoder": "q8"}


@pytest.mark.parametrize("suffix", ["", "_q8"])
def test_decoder_with_last_position_logits(tmp_path, suffix):
    """models/vlm/last_logits.py slices the hidden state before the head; the runtime reads the fixed 1
    from the session and gives the same tokens as the full-logits export (fp32: transformers' own)."""
    from models.vlm.last_logits import RewriteError, last_position_logits

    d = tmp_path / "m"
    shutil.copytree(TINY, d)
    path = d / "onnx" / f"decoder_model_merged{suffix}.onnx"
    rewritten = last_position_logits(onnx.load(str(path)))
    onnx.save(rewritten, str(path))
    with pytest.raises(RewriteError, match="already has one position"):
        last_position_logits(rewritten)
    variant = "fp32" if not suffix else None
    full = VlmModel(TINY, variant=variant)
    last = VlmModel(d, variant=variant)
    assert last.describe()["last_logits_only"] and not full.describe()["last_logits_only"]
    for case in REFS["cases"]:
        inp = last.prepare([_image(case)], last.chat_prompt(case["question"]))
        res = last.generate(inp, max_new_tokens=case["max_new_tokens"])
        ref = full.generate(full.prepare([_image(case)], full.chat_prompt(case["question"])),
                            max_new_tokens=case["max_new_tokens"])
        if not suffix:
            assert res.tokens == case["generated_ids"], case["name"]
        else:   # q8: the head's dynamic activation scale now comes from one row: the first token agrees
            assert res.tokens[0] == ref.tokens[0], case["name"]
