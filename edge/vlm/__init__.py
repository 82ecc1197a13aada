"""On-board vision-language model (issue 7; docs/vlm-contract.md). Flight side: numpy, PIL,
onnxruntime, tokenizers and jinja2 only -- no torch, transformers or torchvision.

Modules:
  processor  -- LFM2-VL image processing in numpy/PIL (smart resize, 512x512 tiles + thumbnail,
                patches, masks, spatial shapes) and the <image> prompt expansion (Lfm2VlProcessor)
"""
