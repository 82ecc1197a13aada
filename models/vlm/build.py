"""Developer-only: build an LFM2-VL-family model with random weights, export it as Liquid's ONNX layout,
and record transformers' own greedy answers as references (issue 7; docs/vlm-contract.md, part A).

Runs in its own venv (never the runtime's): torch 2.13.0 CPU from local disk, transformers 5.24.0, onnx,
onnxscript, onnxruntime -- see models/requirements-vlm.txt. NEVER torchvision (it fails to import beside
this torch, and transformers would then try to use it).

    python3 -m venv .venv-vlm && .venv-vlm/bin/pip install -r models/requirements-vlm.txt
    .venv-vlm/bin/python -m models.vlm.build                       # --dims tiny: models/vlm/tiny/ (committed)
    .venv-vlm/bin/python -m models.vlm.build --dims real           # ~449M parameters, NOT committed:
                                 # -> ~/.cache/orbit-edge/vlm-real-<key>/ (printed; --out DIR to choose)
    .venv-vlm/bin/python -m models.vlm.build --dims real --skip-existing
                                 # what a benchmark calls: builds once (~450M parameters: a few minutes,
                                 # ~5 GB of disk, ~10 GB of RAM at the export), later calls only print the
                                 # directory; the LAST LINE of stdout is always the directory
    .venv-vlm/bin/python -m models.vlm.build --dims real --print-dir   # the directory, without building
    .venv-vlm/bin/python -m models.vlm.build --dims real --layers 2 --out /tmp/x
                                 # the real-dims code path at real widths but 2 layers (a quick check)

What a run writes into the output directory (Liquid's export layout, which edge.vlm.model.VlmModel reads):

    onnx/vision_encoder.onnx        pixel_values [tiles, P, 3*16*16] float, pixel_attention_mask [tiles, P]
                                    int64, spatial_shapes [tiles, 2] int64 -> image_features [N, hidden]
                                    (N = the <image> tokens of all tiles: the SigLIP2 NaFlex tower, the 2x2
                                    pixel unshuffle and the projector, exactly Lfm2VlModel.get_image_features)
    onnx/embed_tokens.onnx          input_ids [B, T] int64 -> inputs_embeds [B, T, hidden]
    onnx/decoder_model_merged.onnx  inputs_embeds, attention_mask [B, past+T] int64, past_conv.{i} [B, hidden,
                                    L_cache] per conv layer, past_key_values.{i}.key/.value [B, kv_heads,
                                    past, head_dim] per attention layer (i = the layer index) -> logits
                                    [B, T, vocab], present_conv.{i}, present.{i}.key/.value. No position_ids
                                    input: positions are past + arange(T), past read from the first key cache.
    onnx/decoder_model_merged_q8.onnx   the decoder through onnxruntime.quantization.quantize_dynamic (int8
                                    weights, per-tensor; what Liquid ships as *_q8). --dims real also
                                    quantizes the vision encoder and the embedding (vision_encoder_q8.onnx,
                                    embed_tokens_q8.onnx).
    tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja,
    config.json, generation_config.json, preprocessor_config.json, processor_config.json
    references.json                 (--dims tiny) transformers' generate() answers, see below
    hf/                             (--dims real) model.safetensors + config: the same weights for
                                    transformers (Lfm2VlForConditionalGeneration.from_pretrained(DIR/hf))
    build_info.json                 dims, seed, parameter count, versions, file sizes

The decoder graph is not transformers' forward traced through its Cache classes: `DecoderExport` runs the
same modules (norms, projections, RoPE, attention, the gated short conv, the MLP, the tied head) with the
caches as explicit tensors, the contract of Liquid's export. The conv cache holds the last L_cache inputs of
the conv (transformers' conv_state: past and new inputs concatenated, the causal conv taken without
padding, the last T outputs kept), so a zero cache is the zero left padding of the prefill. That the graphs
agree with the torch model is checked in the build (logits and cache round trip through ONNX Runtime) and,
token for token against generate(), by tests/test_vlm_model.py.

Tiny model (committed, ~1.7 MB): text LFM2 hidden 64, 5 layers (conv, conv, attention, conv, attention), 4
heads / 2 kv heads of 16, FFN 96, conv L_cache 3, vocab 512 (a byte-level BPE trained here on an in-code
corpus that includes the JSON grounding vocabulary, with LFM2's special tokens at LFM2's ids 0..13, <image>
= 14 and the image start/end/thumbnail/row-col tags after it); vision SigLIP2 NaFlex hidden 32, 2 layers,
16x16 patches (768 values each), 16x16 position grid; projector 128 -> 64 -> 64; 0.26M parameters. Its image
processor is LFM2-VL-450M's own config (512 tiles, 2..10 tiles + thumbnail, 64..256 image tokens:
models/vlm/processor_refs.py CONFIG_450M): the real tile layout is cheap at this width. Two choices make a
random model's answers useful to test with: the text weights are drawn with initializer_range 0.2 (at the
default 0.02 the residual stream carries the last token through and every answer is one token repeated),
and the EOS row of the tied embedding is scaled by EOS_GAIN = 1.5, so that one reference ends with
<|im_end|> after a few tokens while the others run to max_new_tokens (24..40). Both are weights only.

Real dimensions (--dims real; LFM2.5-VL-450M = LFM2-VL-450M's shapes): text LFM2-350M class, hidden 1024, 16
layers (attention at 2, 5, 8, 10, 12, 14; 10 conv), 16 heads / 8 kv heads of 64, FFN 6656 auto-adjusted to
4608, vocab 65536, conv L_cache 3; vision SigLIP2 NaFlex base (hidden 768, 12 layers, 12 heads, MLP 3072,
patch 16, 256 position embeddings), downsample 2, projector 3072 -> 2048 -> 1024 (with its LayerNorm);
about 449M parameters. Its tokenizer is the tiny one's, grown to the real vocabulary size by unused
placeholder tokens (the benchmark times the graphs, not the text).

References (--dims tiny -> references.json): for each case, the chat template rendered (transformers'
Jinja settings) with one image mark, the image (make_image(h, w, seed) of models/vlm/processor_refs.py,
which the test regenerates), the input ids, transformers' Lfm2VlForConditionalGeneration.generate()
(greedy: do_sample=False) tokens and its stop, and the last-position prefill logits. The torch side cannot
use transformers' image processor (it needs torchvision): pixel_values, pixel_attention_mask, spatial_shapes
and the expanded prompt come from edge/vlm/processor.py (the flight processor, imported from this repo) and
are fed to the torch model; tests/test_vlm_processor.py checks that processor against the real one
separately (models/vlm/processor_refs.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TINY_DIR = HERE / "tiny"
SEED = 7
EOS_GAIN = 1.5          # tiny only: see the module docstring
#: LFM2's special tokens, at LFM2's ids (tokenizer of LiquidAI/LFM2-350M and LFM2-VL).
LFM2_SPECIALS = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|fim_pre|>", "<|fim_mid|>", "<|fim_suf|>",
                 "<|im_start|>", "<|im_end|>", "<|tool_list_start|>", "<|tool_list_end|>",
                 "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_response_start|>",
                 "<|tool_response_end|>"]
MAX_TILES = 10
IMAGE_SPECIALS = (["<image>", "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>"]
                  + [f"<|img_row_{r}_col_{c}|>" for r in range(1, MAX_TILES + 1)
                     for c in range(1, MAX_TILES + 1)])
#: LFM2-VL's chat template (chat_template.jinja of LiquidAI/LFM2-VL-450M).
CHAT_TEMPLATE = ("{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
                 "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
                 "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>' }}"
                 "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
                 "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}"
                 "{% endif %}")
GROUNDING_SUFFIX = ('Provide result as a valid JSON: [{"label": str, "bbox": [x1,y1,x2,y2]}, ...]. '
                    'Coordinates must be normalized to 0-1.')

DIMS = {
    "tiny": {
        "text": dict(vocab_size=512, hidden_size=64, intermediate_size=96, block_auto_adjust_ff_dim=False,
                     num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2,
                     layer_types=["conv", "conv", "full_attention", "conv", "full_attention"],
                     conv_L_cache=3, max_position_embeddings=4096, initializer_range=0.2),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       patch_size=16, num_patches=256),
        "projector_hidden_size": 64, "projector_use_layernorm": True,
    },
    "real": {
        "text": dict(vocab_size=65536, hidden_size=1024, intermediate_size=6656, block_auto_adjust_ff_dim=True,
                     block_ffn_dim_multiplier=1.0, block_multiple_of=256, num_hidden_layers=16,
                     num_attention_heads=16, num_key_value_heads=8,
                     layer_types=["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv"
                                  for i in range(16)],
                     conv_L_cache=3, max_position_embeddings=128000),
        "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       patch_size=16, num_patches=256),
        "projector_hidden_size": 2048, "projector_use_layernorm": True,
    },
}
#: LFM2-VL-450M's preprocessor config (models/vlm/processor_refs.py CONFIG_450M).
PREPROCESSOR = {
    "do_image_splitting": True, "downsample_factor": 2, "encoder_patch_size": 16,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "max_image_tokens": 256,
    "max_num_patches": 1024, "max_pixels_tolerance": 2.0, "max_tiles": MAX_TILES, "min_image_tokens": 64,
    "min_tiles": 2, "tile_size": 512, "use_thumbnail": True, "do_normalize": True, "do_rescale": True,
    "rescale_factor": 1 / 255, "resample": 2, "do_pad": True, "do_resize": True,
    "image_processor_type": "Lfm2VlImageProcessor", "processor_class": "Lfm2VlProcessor",
}
#: The reference cases: (name, image (h, w, seed), question, max_new_tokens).
CASES = [
    ("ground_single", (256, 256, 2), "Detect the ships. " + GROUNDING_SUFFIX, 40),
    ("vqa_single", (300, 200, 9), "Is the runway clear?", 32),
    ("caption_single", (256, 256, 2), "Describe this image.", 24),
    ("ground_multi", (520, 1100, 4), "Detect the planes. " + GROUNDING_SUFFIX, 32),
]

CORPUS = [
    'Provide result as a valid JSON: [{"label": str, "bbox": [x1,y1,x2,y2]}, ...].',
    "Coordinates must be normalized to 0-1.",
    '[{"label": "ship", "bbox": [0.12, 0.34, 0.56, 0.78]}, {"label": "plane", "bbox": [0.1, 0.2, 0.3, 0.4]}]',
    '[{"label": "boat", "bbox": [0.05, 0.61, 0.09, 0.67]}, {"label": "harbor", "bbox": [0.0, 0.5, 1.0, 1.0]}]',
    '{"label": "storage tank", "bbox": [0.901, 0.222, 0.958, 0.287]}, {"label": "vehicle", "bbox": [0.3]}',
    "Detect the ships. Detect the planes. Where are the ships? Is the runway clear? Yes, the runway is clear.",
    "No, there is a plane on the runway. Describe this image. The image shows a harbor with three ships.",
    "A satellite image of an airport with two planes, a runway and a taxiway. Ships near the coast.",
    "How many ships are there? There are 4 ships. What is in the image? Buildings, roads, fields and a river.",
    "user assistant system 0 1 2 3 4 5 6 7 8 9 0.5 0.25 0.75 1.0 , . ? ! : ; ' \" ( ) [ ] { }",
]


# ----------------------------------------------------------------------------------------------------
# Tokenizer

def build_tokenizer(vocab_size: int, real_vocab: int | None = None):
    """A byte-level BPE (as LFM2's) trained on CORPUS; LFM2's specials at ids 0..13, the image specials
    next. real_vocab pads the vocabulary with unused <|reserved_k|> tokens up to that size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = LFM2_SPECIALS + IMAGE_SPECIALS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    for i, s in enumerate(specials):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    if real_vocab:
        n = tok.get_vocab_size()
        tok.add_special_tokens([f"<|reserved_{k}|>" for k in range(real_vocab - n)])
    tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A",
                                                       pair="<|startoftext|> $A <|startoftext|> $B",
                                                       special_tokens=[("<|startoftext|>", 1)])
    return tok


def tokenizer_files(out: Path, tok) -> dict:
    tok.save(str(out / "tokenizer.json"))
    extra = {"image_token": "<image>", "image_start_token": "<|image_start|>",
             "image_end_token": "<|image_end|>", "image_thumbnail": "<|img_thumbnail|>"}
    added = {str(tok.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                        "single_word": False, "special": True}
             for s in LFM2_SPECIALS + IMAGE_SPECIALS}
    cfg = {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added,
           "bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>",
           "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 1000000000000000019884624838656,
           "tokenizer_class": "PreTrainedTokenizerFast", "processor_class": "Lfm2VlProcessor",
           "extra_special_tokens": extra, "use_default_system_prompt": False}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return cfg


# ----------------------------------------------------------------------------------------------------
# Model

def build_model(dims: str, vocab: int):
    import torch
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration

    d = DIMS[dims]
    text = dict(d["text"], vocab_size=vocab, model_type="lfm2", pad_token_id=0, bos_token_id=1,
                eos_token_id=7, tie_word_embeddings=True, norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    vision = dict(d["vision"], model_type="siglip2_vision_model", num_channels=3,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False)
    cfg = Lfm2VlConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN_ID,
                       projector_hidden_size=d["projector_hidden_size"], projector_hidden_act="gelu",
                       projector_bias=True, projector_use_layernorm=d["projector_use_layernorm"],
                       downsample_factor=2, tie_word_embeddings=True)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(SEED)
    model = Lfm2VlForConditionalGeneration(cfg).eval()
    if dims == "tiny":
        with torch.no_grad():
            model.model.language_model.embed_tokens.weight[EOS_ID] *= EOS_GAIN
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    return model


IMAGE_TOKEN_ID = len(LFM2_SPECIALS)      # "<image>" right after LFM2's specials
EOS_ID = 7                               # <|im_end|>


def _torch_modules():
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers.models.lfm2.modeling_lfm2 import apply_rotary_pos_emb, repeat_kv

    class VisionExport(nn.Module):
        """Lfm2VlModel.get_image_features with the per-image split left out: the features of all tiles
        concatenated in order, which is what replaces the <image> embeddings."""

        def __init__(self, vlm):
            super().__init__()
            self.tower = vlm.model.vision_tower
            self.projector = vlm.model.multi_modal_projector
            self.factor = vlm.config.downsample_factor

        def forward(self, pixel_values, pixel_attention_mask, spatial_shapes):
            hs = self.tower(pixel_values=pixel_values, spatial_shapes=spatial_shapes,
                            pixel_attention_mask=pixel_attention_mask, return_dict=True).last_hidden_state
            num_images, num_patches, _ = hs.shape
            f = self.factor
            widths = spatial_shapes[:, 1, None]
            blocks_per_row = widths // f
            num_tokens = (spatial_shapes[:, 0, None] // f) * blocks_per_row
            token = torch.arange(num_patches // f ** 2, device=hs.device)[None]
            block_offset = torch.arange(f, device=hs.device)
            rows = (token // blocks_per_row * f)[..., None, None] + block_offset[:, None]
            columns = (token % blocks_per_row * f)[..., None, None] + block_offset
            image_offset = torch.arange(num_images, device=hs.device)[:, None, None, None] * num_patches
            patch_index = image_offset + rows * widths[..., None, None] + columns
            is_token = token < num_tokens
            patch_index = patch_index.masked_fill(~is_token[..., None, None], 0)
            patch_index = patch_index.flatten(0, 1).permute(1, 0, 2).reshape(f, -1)
            patch_grid = hs.reshape(-1, hs.shape[-1])[patch_index]
            feats = self.projector(patch_grid.unsqueeze(0))
            return feats.reshape(-1, feats.shape[-1])[is_token.flatten()]

    class EmbedExport(nn.Module):
        def __init__(self, vlm):
            super().__init__()
            self.embed = vlm.model.language_model.embed_tokens

        def forward(self, input_ids):
            return self.embed(input_ids)

    class DecoderExport(nn.Module):
        """The LFM2 decoder + tied head with explicit caches (see the module docstring). Cache arguments in
        layer order: conv layers one tensor, attention layers key then value."""

        def __init__(self, vlm):
            super().__init__()
            self.lm = vlm.model.language_model
            self.head = vlm.lm_head
            self.types = list(vlm.config.text_config.layer_types)
            self.L = vlm.config.text_config.conv_L_cache

        def forward(self, inputs_embeds, attention_mask, *caches):
            lm = self.lm
            B, T, _ = inputs_embeds.shape
            first_kv = next(i for i, t in enumerate(self.types) if t != "conv")
            # caches are laid out per layer; find the first key cache's position
            pos_in = sum(1 if t == "conv" else 2 for t in self.types[:first_kv])
            past = caches[pos_in].shape[2]
            position_ids = (torch.arange(T, device=inputs_embeds.device) + past)[None].expand(B, T)
            cos, sin = lm.rotary_emb(inputs_embeds, position_ids=position_ids)
            kv_len = past + T
            q_pos = torch.arange(T, device=inputs_embeds.device)[:, None] + past
            k_pos = torch.arange(kv_len, device=inputs_embeds.device)[None, :]
            allowed = (k_pos <= q_pos)[None, None] & attention_mask[:, None, None, :].bool()
            neg = torch.finfo(inputs_embeds.dtype).min
            bias = torch.zeros(allowed.shape, dtype=inputs_embeds.dtype).masked_fill(~allowed, neg)
            pad = attention_mask[:, -T:, None].to(inputs_embeds.dtype)
            h = inputs_embeds
            presents = []
            k = 0
            for layer, kind in zip(lm.layers, self.types):
                residual = h
                x = layer.operator_norm(h)
                if kind == "conv":
                    conv = layer.conv
                    past_conv = caches[k]
                    k += 1
                    bcx = conv.in_proj(x * pad).transpose(-1, -2)
                    b_, c_, x_ = bcx.chunk(3, dim=-2)
                    full = torch.cat([past_conv, b_ * x_], dim=-1)
                    presents.append(full[..., -self.L:])
                    y = F.conv1d(full, conv.conv.weight, conv.conv.bias, groups=full.shape[1])[..., -T:]
                    out = conv.out_proj((c_ * y).transpose(-1, -2).contiguous())
                else:
                    at = layer.self_attn
                    shape = (B, T, -1, at.head_dim)
                    q = at.q_layernorm(at.q_proj(x).view(shape)).transpose(1, 2)
                    kk = at.k_layernorm(at.k_proj(x).view(shape)).transpose(1, 2)
                    v = at.v_proj(x).view(shape).transpose(1, 2)
                    q, kk = apply_rotary_pos_emb(q, kk, cos, sin)
                    kk = torch.cat([caches[k], kk], dim=2)
                    v = torch.cat([caches[k + 1], v], dim=2)
                    k += 2
                    presents += [kk, v]
                    ks, vs = repeat_kv(kk, at.num_key_value_groups), repeat_kv(v, at.num_key_value_groups)
                    w = torch.matmul(q, ks.transpose(2, 3)) * at.scaling + bias
                    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
                    o = torch.matmul(w, vs).transpose(1, 2).reshape(B, T, -1)
                    out = at.out_proj(o)
                h = residual + out
                h = h + layer.feed_forward(layer.ffn_norm(h))
            logits = self.head(lm.embedding_norm(h))
            return (logits, *presents)

    return VisionExport, EmbedExport, DecoderExport


def cache_names(types) -> tuple:
    past, present = [], []
    for i, t in enumerate(types):
        if t == "conv":
            past.append(f"past_conv.{i}")
            present.append(f"present_conv.{i}")
        else:
            past += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
            present += [f"present.{i}.key", f"present.{i}.value"]
    return past, present


def example_caches(cfg, past: int, batch: int = 1):
    import torch
    t = cfg.text_config
    hd = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    out = []
    g = torch.Generator().manual_seed(1)
    for kind in t.layer_types:
        if kind == "conv":
            out.append(torch.randn(batch, t.hidden_size, t.conv_L_cache, generator=g))
        else:
            out += [torch.randn(batch, t.num_key_value_heads, past, hd, generator=g) for _ in range(2)]
    return out


# ----------------------------------------------------------------------------------------------------
# Export

def _export(module, args, path: Path, input_names, output_names, dynamic_shapes):
    import torch
    prog = torch.onnx.export(module, tuple(args), dynamo=True, external_data=False, optimize=True,
                             input_names=list(input_names), output_names=list(output_names),
                             dynamic_shapes=dynamic_shapes, report=False, verbose=False)
    prog.save(str(path), external_data=False)
    strip_metadata(path)


def strip_metadata(path: Path):
    """Drop the exporter's per-node metadata (stack traces, FX names: a third of a tiny graph's bytes)."""
    import onnx
    m = onnx.load(str(path))
    for g in [m.graph] + [a.g for n in m.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]:
        for n in g.node:
            del n.metadata_props[:]
            n.doc_string = ""
    onnx.save(m, str(path))


def export_all(model, out: Path, processed_example, quantize_all: bool) -> dict:
    import torch
    from torch.export import Dim

    os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")
    VisionExport, EmbedExport, DecoderExport = _torch_modules()
    onnx_dir = out / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    files = {}
    with torch.no_grad():
        # vision
        pv = torch.from_numpy(processed_example["pixel_values"])
        pm = torch.from_numpy(processed_example["pixel_attention_mask"])
        ss = torch.from_numpy(processed_example["spatial_shapes"])
        tiles = Dim("tiles", min=1, max=64)
        _export(VisionExport(model).eval(), (pv, pm, ss), onnx_dir / "vision_encoder.onnx",
                ["pixel_values", "pixel_attention_mask", "spatial_shapes"], ["image_features"],
                {"pixel_values": {0: tiles}, "pixel_attention_mask": {0: tiles}, "spatial_shapes": {0: tiles}})
        # embed
        ids = torch.tensor([[1, 6, 20, 30, 7]], dtype=torch.int64)
        _export(EmbedExport(model).eval(), (ids,), onnx_dir / "embed_tokens.onnx", ["input_ids"],
                ["inputs_embeds"], {"input_ids": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}})
        # decoder
        types = list(cfg.text_config.layer_types)
        past_names, present_names = cache_names(types)
        T, past = 4, 3
        emb = torch.randn(1, T, cfg.text_config.hidden_size)
        mask = torch.ones(1, past + T, dtype=torch.int64)
        caches = example_caches(cfg, past)
        dyn = {"inputs_embeds": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC},
               "attention_mask": {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}}
        cache_dyn = []
        for n in past_names:
            cache_dyn.append({0: Dim.DYNAMIC} if n.startswith("past_conv") else {0: Dim.DYNAMIC, 2: Dim.DYNAMIC})
        _export(DecoderExport(model).eval(), (emb, mask, *caches), onnx_dir / "decoder_model_merged.onnx",
                ["inputs_embeds", "attention_mask", *past_names], ["logits", *present_names],
                {"inputs_embeds": dyn["inputs_embeds"], "attention_mask": dyn["attention_mask"],
                 "caches": tuple(cache_dyn)})
    from onnxruntime.quantization import QuantType, quantize_dynamic
    for base in (("vision_encoder", "embed_tokens", "decoder_model_merged") if quantize_all
                 else ("decoder_model_merged",)):
        quantize_dynamic(str(onnx_dir / f"{base}.onnx"), str(onnx_dir / f"{base}_q8.onnx"),
                         weight_type=QuantType.QInt8, per_channel=False)
    for p in sorted(onnx_dir.glob("*.onnx")):
        files[f"onnx/{p.name}"] = p.stat().st_size
    return files


# ----------------------------------------------------------------------------------------------------
# Checks against ONNX Runtime

def check_export(model, out: Path, proc_out, ids: np.ndarray) -> dict:
    """Vision features, prefill logits and one cached step: torch vs ONNX Runtime (fp32)."""
    import onnxruntime as ort
    import torch

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = {n: ort.InferenceSession(str(out / "onnx" / f"{n}.onnx"), so, providers=["CPUExecutionProvider"])
            for n in ("vision_encoder", "embed_tokens", "decoder_model_merged")}
    VisionExport, EmbedExport, DecoderExport = _torch_modules()
    report = {}
    with torch.no_grad():
        tv = VisionExport(model)(*(torch.from_numpy(proc_out[k]) for k in
                                   ("pixel_values", "pixel_attention_mask", "spatial_shapes")))
        ref = torch.cat(model.model.get_image_features(
            pixel_values=torch.from_numpy(proc_out["pixel_values"]),
            spatial_shapes=torch.from_numpy(proc_out["spatial_shapes"]),
            pixel_attention_mask=torch.from_numpy(proc_out["pixel_attention_mask"])).pooler_output, 0)
        assert torch.equal(tv, ref), "VisionExport differs from get_image_features"
        ov = sess["vision_encoder"].run(None, {k: proc_out[k] for k in
                                               ("pixel_values", "pixel_attention_mask", "spatial_shapes")})[0]
        report["vision_max_abs"] = float(np.abs(ov - tv.numpy()).max())
        # prefill: torch forward vs the graphs
        emb = sess["embed_tokens"].run(None, {"input_ids": ids})[0]
        pos = np.flatnonzero(ids[0] == IMAGE_TOKEN_ID)
        emb[0, pos] = ov
        types = list(model.config.text_config.layer_types)
        past_names, present_names = cache_names(types)
        feed = {"inputs_embeds": emb, "attention_mask": np.ones_like(ids)}
        for n, c in zip(past_names, example_caches(model.config, 0)):
            feed[n] = np.zeros(c.shape, np.float32)
        outs = sess["decoder_model_merged"].run(None, feed)
        tout = model(input_ids=torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                     pixel_values=torch.from_numpy(proc_out["pixel_values"]),
                     pixel_attention_mask=torch.from_numpy(proc_out["pixel_attention_mask"]),
                     spatial_shapes=torch.from_numpy(proc_out["spatial_shapes"]), use_cache=True)
        report["prefill_logits_max_abs"] = float(np.abs(outs[0] - tout.logits.numpy()).max())
        nxt = int(np.argmax(outs[0][0, -1]))
        # one cached step
        feed2 = {"inputs_embeds": sess["embed_tokens"].run(None, {"input_ids": np.array([[nxt]])})[0],
                 "attention_mask": np.ones((1, ids.shape[1] + 1), np.int64)}
        feed2.update(dict(zip(past_names, outs[1:])))
        step = sess["decoder_model_merged"].run(None, feed2)[0]
        t2 = model(input_ids=torch.tensor([[nxt]]), attention_mask=torch.ones(1, ids.shape[1] + 1,
                                                                               dtype=torch.int64),
                   cache=tout.cache, use_cache=True)
        report["step_logits_max_abs"] = float(np.abs(step - t2.logits.numpy()).max())
    return report


# ----------------------------------------------------------------------------------------------------
# References

def _flight_processor(out: Path):
    sys.path.insert(0, str(REPO))
    from edge.vlm.processor import Lfm2VlProcessor
    return Lfm2VlProcessor.from_dir(out)


def hf_tokenizer(out: Path):
    """transformers' own tokenizer of the written directory (tokenizer.json + tokenizer_config.json +
    chat_template.jinja): the prompts are rendered by its apply_chat_template."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(out))


def render_prompt(hf_tok, question: str, n_images: int = 1) -> str:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    return hf_tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                      tokenize=False)


def make_references(model, tok, out: Path) -> list:
    import torch
    sys.path.insert(0, str(REPO))
    from models.vlm.processor_refs import make_image
    proc = _flight_processor(out)
    hf_tok = hf_tokenizer(out)
    refs = []
    for name, (h, w, seed), question, max_new in CASES:
        prompt = render_prompt(hf_tok, question)
        processed = proc.preprocess([make_image(h, w, seed)])
        text = proc.expand_prompt(prompt, processed)
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]   # as Lfm2VlProcessor tokenizes
        assert ids == tok.encode(text, add_special_tokens=False).ids
        t_ids = torch.tensor([ids], dtype=torch.int64)
        with torch.no_grad():
            gen = model.generate(input_ids=t_ids, attention_mask=torch.ones_like(t_ids),
                                 pixel_values=torch.from_numpy(processed["pixel_values"]),
                                 pixel_attention_mask=torch.from_numpy(processed["pixel_attention_mask"]),
                                 spatial_shapes=torch.from_numpy(processed["spatial_shapes"]),
                                 max_new_tokens=max_new, do_sample=False, eos_token_id=EOS_ID,
                                 pad_token_id=0)
            first = model(input_ids=t_ids, attention_mask=torch.ones_like(t_ids),
                          pixel_values=torch.from_numpy(processed["pixel_values"]),
                          pixel_attention_mask=torch.from_numpy(processed["pixel_attention_mask"]),
                          spatial_shapes=torch.from_numpy(processed["spatial_shapes"])).logits[0, -1]
        new = gen[0, len(ids):].tolist()
        top2 = torch.topk(first, 2).values
        refs.append({
            "name": name, "question": question, "prompt": prompt, "image": {"height": h, "width": w, "seed": seed},
            "tiles": int(len(processed["pixel_values"])), "image_tokens": int(sum(i == IMAGE_TOKEN_ID for i in ids)),
            "input_ids": ids, "max_new_tokens": max_new, "generated_ids": new,
            "stop": "eos" if new and new[-1] == EOS_ID else "max_tokens",
            "text": tok.decode(new, skip_special_tokens=True),
            "prefill_last_logits": [round(float(x), 6) for x in first],
            "prefill_top2_margin": float(top2[0] - top2[1]),
        })
        print(f"  {name}: {len(ids)} prompt tokens ({refs[-1]['image_tokens']} image, {refs[-1]['tiles']} "
              f"tiles), {len(new)} generated, stop {refs[-1]['stop']}: {refs[-1]['text'][:60]!r}")
    return refs


# ----------------------------------------------------------------------------------------------------
# Main

def write_configs(model, out: Path, tok_cfg: dict):
    cfg = model.config.to_dict()
    cfg["architectures"] = ["Lfm2VlForConditionalGeneration"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": EOS_ID, "pad_token_id": 0, "do_sample": False}, indent=2) + "\n")
    pre = dict(PREPROCESSOR)
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n")
    img = {k: v for k, v in pre.items() if k != "processor_class"}
    (out / "processor_config.json").write_text(json.dumps(
        {"image_processor": img, "processor_class": "Lfm2VlProcessor", "use_image_special_tokens": True},
        indent=2, sort_keys=True) + "\n")


#: Bump when a change to this script changes what --dims real writes (the cache key follows it).
BUILD_VERSION = 1


def real_key() -> str:
    """Names the --dims real build: its dims, seed, processor config and BUILD_VERSION."""
    h = hashlib.sha256(json.dumps({"dims": DIMS["real"], "seed": SEED, "pre": PREPROCESSOR,
                                   "version": BUILD_VERSION}, sort_keys=True).encode())
    return h.hexdigest()[:12]


def default_out(dims: str) -> Path:
    if dims == "tiny":
        return TINY_DIR
    return Path(os.path.expanduser("~/.cache/orbit-edge")) / f"vlm-real-{real_key()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", choices=sorted(DIMS), default="tiny",
                    help="tiny: the committed test fixture (models/vlm/tiny/); real: LFM2.5-VL-450M's dims")
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default: models/vlm/tiny/ or ~/.cache/orbit-edge/vlm-real-<key>/)")
    ap.add_argument("--skip-existing", action="store_true",
                    help="if OUT/build_info.json exists, print OUT and exit (what a benchmark calls)")
    ap.add_argument("--print-dir", action="store_true", help="print the output directory and exit")
    ap.add_argument("--layers", type=int, default=None,
                    help="override the text and vision layer counts (a quick check of the --dims real code "
                         "path at real widths; not for benchmarks)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    out = a.out or default_out(a.dims)
    if a.layers and a.out is None:
        ap.error("--layers builds a cut-down model: give it its own --out DIR (not the benchmark's cache)")
    if a.print_dir:
        print(out)
        return 0
    if a.skip_existing and (out / "build_info.json").is_file():
        print(out)
        return 0
    import torch
    import transformers
    torch.set_num_threads(a.threads)
    os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")
    t0 = time.time()
    if a.layers:
        n = a.layers
        DIMS[a.dims]["text"]["num_hidden_layers"] = n
        DIMS[a.dims]["text"]["layer_types"] = DIMS[a.dims]["text"]["layer_types"][:n]
        if "full_attention" not in DIMS[a.dims]["text"]["layer_types"]:
            DIMS[a.dims]["text"]["layer_types"][-1] = "full_attention"
        DIMS[a.dims]["vision"]["num_hidden_layers"] = min(n, DIMS[a.dims]["vision"]["num_hidden_layers"])
    if out.exists() and a.dims == "tiny":
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    real_vocab = DIMS[a.dims]["text"]["vocab_size"]
    tok = build_tokenizer(512, real_vocab=real_vocab if a.dims != "tiny" else None)
    vocab = tok.get_vocab_size()
    assert vocab == real_vocab, (vocab, real_vocab)
    tok_cfg = tokenizer_files(out, tok)
    model = build_model(a.dims, vocab)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{a.dims}: {n_params / 1e6:.2f}M parameters -> {out}")
    write_configs(model, out, tok_cfg)

    sys.path.insert(0, str(REPO))
    from models.vlm.processor_refs import make_image
    proc = _flight_processor(out)
    # an example with a padded thumbnail, so that the traced vision graph takes the masked path
    example = proc.preprocess([make_image(520, 1100, 4)])
    files = export_all(model, out, example, quantize_all=(a.dims != "tiny"))
    prompt = proc.expand_prompt(render_prompt(hf_tokenizer(out), "Describe this image."), example)
    ids = np.asarray([tok.encode(prompt, add_special_tokens=False).ids], np.int64)
    checks = check_export(model, out, example, ids)
    print("  export check:", json.dumps(checks))
    info = {"dims": a.dims, "config": DIMS[a.dims], "seed": SEED, "parameters": n_params,
            "eos_gain": EOS_GAIN if a.dims == "tiny" else None, "files": files, "export_check": checks,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version()}}
    if a.dims == "tiny":
        refs = make_references(model, tok, out)
        (out / "references.json").write_text(json.dumps(
            {"about": "transformers generate() (greedy) on the torch model; see models/vlm/build.py",
             "eos_token_id": EOS_ID, "image_token_id": IMAGE_TOKEN_ID, "cases": refs}, indent=1) + "\n")
    else:
        model.save_pretrained(str(out / "hf"), safe_serialization=True)
        info["key"] = real_key()
    info["build_s"] = round(time.time() - t0, 1)
    (out / "build_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {total / 1e6:.2f} MB in {info['build_s']} s to:")
    print(out)                                  # the last line is the directory, as with --skip-existing
    return 0


if __name__ == "__main__":
    sys.exit(main())
