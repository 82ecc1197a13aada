"""On-board vision-language model (issue 7; docs/vlm.md, docs/vlm-contract.md). Flight side: numpy, PIL,
onnxruntime, tokenizers and jinja2 only -- no torch, transformers or torchvision.

Modules:
  processor  -- LFM2-VL image processing in numpy/PIL (smart resize, 512x512 tiles + thumbnail,
                patches, masks, spatial shapes) and the <image> prompt expansion (Lfm2VlProcessor)
  model      -- VlmModel: finds an LFM2-VL-family ONNX export (Liquid's and the newer file names, fp32 /
                fp16 / q8 / q4), opens its three sessions, reads names, caches and dtypes from them;
                tokenizer.json, the chat template, the processor config
  generate   -- greedy decoding with the KV and conv caches, max_new_tokens, a per-answer deadline and
                a heartbeat per token (GenerationResult)
  tasks      -- grounding (prompt, tolerant parse + repair, tiles of the frame, cross-tile NMS), VQA and
                captions -> TaskOutcome -> detection / answer records
  service    -- inside the flight loop: the durable question queue (spool files, the uplink, the standing
                question), answers journaled before a question is marked done, every failure counted
"""
