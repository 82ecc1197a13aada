"""Developer-only: reference outputs of transformers' REAL LFM2-VL processor, for tests/test_vlm_processor.py.

    python3 -m venv .venv-vlmref
    .venv-vlmref/bin/pip install torch==2.14.1 torchvision==0.29.1      # both from this machine's disk
    .venv-vlmref/bin/pip install -r models/requirements-vlmref.txt      # transformers 5.24.0, numpy, pillow
    .venv-vlmref/bin/python -m models.vlm.processor_refs                 # -> models/vlm/processor_refs.npz

Runs transformers' Lfm2VlProcessor (its Lfm2VlImageProcessor, torchvision backend, on the CPU) with a
minimal in-code tokenizer (WordLevel over the special tokens: only the expanded text and the image-token
count matter) on deterministic synthetic images, for two configs:

  "lfm2vl450m": LFM2-VL-450M's preprocessor config (= the class defaults: 512 tiles, 2..10 tiles, thumbnail,
                64..256 image tokens, mean = std = 0.5, bilinear), with image special tokens;
  "variant":    256 tiles, 1..4 tiles, no thumbnail, 16..64 tokens, ImageNet mean/std, no special tokens.

Stored per case (prefix "<config>/<case>/"): the input image (as its generator's parameters, regenerated
by the test with `make_image`), the pixel-value shape, pixel_attention_mask (as the count of real
patches per tile), spatial_shapes, image_rows/cols/sizes, the expanded prompt (from the processor's own
text-replacement offsets, checked against its input ids), and the pixel values of every tile as the
uint8 levels they came from (checked exact: re-normalising the levels gives the reference floats bit
for bit; if not, the floats are stored as float16 instead, under "values16"), each tile's HWC levels
stored as their 2-D difference ("levels_d2", see `delta2` / `undelta2`) and concatenated. Per config
("<config>/norm_lut"): the float32 value transformers' fused rescale + normalise gives each of the 256
levels of each channel, [256, 3].
"""
from __future__ import annotations

import json
import os
import platform
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_NPZ = os.path.join(HERE, "processor_refs.npz")
OUT_CONFIG = os.path.join(HERE, "processor_refs_configs.json")

#: LFM2-VL-450M's preprocessor_config.json values (flat, legacy layout; = Lfm2VlImageProcessor defaults).
CONFIG_450M = {
    "do_image_splitting": True, "downsample_factor": 2, "encoder_patch_size": 16,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "max_image_tokens": 256,
    "max_num_patches": 1024, "max_pixels_tolerance": 2.0, "max_tiles": 10, "min_image_tokens": 64,
    "min_tiles": 2, "tile_size": 512, "use_thumbnail": True, "do_normalize": True, "do_rescale": True,
    "rescale_factor": 1 / 255, "resample": 2, "do_pad": True, "do_resize": True,
    "image_processor_type": "Lfm2VlImageProcessor", "processor_class": "Lfm2VlProcessor",
}
CONFIG_VARIANT = {
    "do_image_splitting": True, "downsample_factor": 2, "encoder_patch_size": 16,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "max_image_tokens": 64,
    "max_pixels_tolerance": 2.0, "max_tiles": 4, "min_image_tokens": 16, "min_tiles": 1,
    "tile_size": 256, "use_thumbnail": False, "resample": 2,
    "image_processor_type": "Lfm2VlImageProcessor", "processor_class": "Lfm2VlProcessor",
}
CONFIGS = {
    "lfm2vl450m": {"image_processor": CONFIG_450M, "use_image_special_tokens": True},
    "variant": {"image_processor": CONFIG_VARIANT, "use_image_special_tokens": False},
}
#: (height, width, seed) of the images per config.
CASES = {
    "lfm2vl450m": [(48, 64, 1), (256, 256, 2), (512, 512, 3), (600, 1000, 4), (1200, 300, 5),
                   (1600, 400, 6), (1100, 1100, 7), (333, 517, 8)],
    "variant": [(48, 64, 11), (700, 700, 12), (600, 1000, 13), (1200, 300, 14)],
}
PROMPT = "<|im_start|>user\n<image>Where are the ships?<|im_end|>\n<|im_start|>assistant\n"


def make_image(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic HWC uint8 RGB test image: smooth gradients, a few hard-edged shapes and a small
    checkerboard (to exercise the anti-aliasing). Pure numpy: the test regenerates it identically."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    img = np.empty((height, width, 3), dtype=np.float64)
    img[..., 0] = 40 + 180 * u
    img[..., 1] = 30 + 200 * v
    img[..., 2] = 128 + 100 * np.sin(2 * np.pi * (u + 0.5 * v) + seed)
    rng = np.random.default_rng(seed)
    for _ in range(3):   # rectangles
        h0, w0 = rng.integers(0, height), rng.integers(0, width)
        h1, w1 = min(height, h0 + 1 + height // 4), min(width, w0 + 1 + width // 4)
        img[h0:h1, w0:w1] = rng.integers(0, 256, 3)
    cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), 0.2 * min(height, width) + 2
    img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    s = max(2, min(height, width) // 16)      # checkerboard patch with 1-pixel squares
    cb = ((np.arange(s)[:, None] + np.arange(s)[None, :]) % 2 * 255)[..., None]
    img[:s, width - s:] = cb
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def delta2(levels: np.ndarray) -> np.ndarray:
    """HWC uint8 -> its 2-D difference (x[i,j] - x[i-1,j] - x[i,j-1] + x[i-1,j-1], mod 256): near zero on
    smooth content, so it compresses ~8x better. Undone by `undelta2`."""
    d = np.diff(levels.astype(np.int16), axis=0, prepend=0)
    d = np.diff(d, axis=1, prepend=0)
    return (d % 256).astype(np.uint8)


def undelta2(d: np.ndarray) -> np.ndarray:
    return np.cumsum(np.cumsum(d, axis=0, dtype=np.uint8), axis=1, dtype=np.uint8)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = (["<unk>", "<image>", "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>",
                 "<|im_start|>", "<|im_end|>"]
                + [f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11)])
    words = ["user", "assistant", "Where", "are", "the", "ships", "?"]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", additional_special_tokens=specials[1:])


def _unpatch(patches: np.ndarray, nh: int, nw: int, p: int) -> np.ndarray:
    return patches[:nh * nw].reshape(nh, nw, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(nh * p, nw * p, 3)


def main() -> int:
    import torch
    import torchvision
    import transformers
    from transformers import Lfm2VlImageProcessor, Lfm2VlProcessor

    torch.set_num_threads(2)
    tok = _tokenizer()
    image_token_id = tok.convert_tokens_to_ids("<image>")
    arrays: dict[str, np.ndarray] = {}
    summary = []
    for cname, cfg in CONFIGS.items():
        ip_cfg = {k: v for k, v in cfg["image_processor"].items()
                  if k not in ("image_processor_type", "processor_class", "max_num_patches")}
        ip = Lfm2VlImageProcessor(**ip_cfg)
        proc = Lfm2VlProcessor(image_processor=ip, tokenizer=tok)
        special = cfg["use_image_special_tokens"]
        mean = np.asarray(ip.image_mean, np.float32)
        std = np.asarray(ip.image_std, np.float32)
        fmean = torch.tensor(ip.image_mean) * (1.0 / ip.rescale_factor)   # transformers' fused constants
        fstd = torch.tensor(ip.image_std) * (1.0 / ip.rescale_factor)
        p = ip.encoder_patch_size
        # every uint8 level of every channel through the same fused step: the test checks its own
        # normalisation against this table bit for bit
        arrays[f"{cname}/norm_lut"] = (
            (torch.arange(256, dtype=torch.float32)[:, None] - fmean) / fstd).numpy().astype(np.float32)
        for (h, w, seed) in CASES[cname]:
            key = f"{cname}/{h}x{w}/"
            img = Image.fromarray(make_image(h, w, seed), mode="RGB")
            out = proc(images=[img], text=[PROMPT], use_image_special_tokens=special,
                       return_text_replacement_offsets=True)
            # the processor drops rows/cols/sizes from its output: ask the image processor for them
            info = ip(images=[img], return_row_col_info=True)
            pv = out["pixel_values"].numpy()
            assert np.array_equal(pv, info["pixel_values"].numpy())
            mask = out["pixel_attention_mask"].numpy().astype(np.int64)
            shapes = out["spatial_shapes"].numpy().astype(np.int64)
            offs = out["text_replacement_offsets"][0]
            assert len(offs) == 1
            span = offs[0]["span"]
            text = PROMPT[:span[0]] + offs[0]["replacement"] + PROMPT[span[1]:]
            assert proc.get_text_with_replacements([PROMPT], [offs[0]["replacement"]])[0][0] == text
            ids = out["input_ids"][0]
            assert ids == tok(text, add_special_tokens=False)["input_ids"]
            n_img = sum(1 for t in ids if t == image_token_id)
            assert n_img == text.count("<image>")
            # masks are a prefix of ones of the patch count
            counts = mask.sum(1)
            assert np.array_equal(counts, shapes[:, 0] * shapes[:, 1])
            assert all((m[:c] == 1).all() and (m[c:] == 0).all() for m, c in zip(mask, counts))
            assert np.all(pv[mask == 0] == 0)
            # pixel values back to the uint8 levels they came from; exact if re-normalising gives pv
            levels, exact = [], True
            for k, (nh, nw) in enumerate(shapes):
                unit = _unpatch(pv[k], nh, nw, p)
                lv = np.clip(np.rint(unit * (std * 255) + mean * 255), 0, 255).astype(np.uint8)
                assert np.array_equal(undelta2(delta2(lv)), lv)
                again = ((torch.from_numpy(lv.astype(np.float32)) - fmean) / fstd).numpy()
                exact &= bool(np.array_equal(again, unit))
                levels.append(delta2(lv).reshape(-1))
            if exact:
                arrays[key + "levels_d2"] = np.concatenate(levels)
            else:
                arrays[key + "values16"] = np.concatenate(
                    [_unpatch(pv[k], nh, nw, p).reshape(-1) for k, (nh, nw) in enumerate(shapes)]
                ).astype(np.float16)
            arrays[key + "image"] = np.array([h, w, seed], np.int64)
            arrays[key + "pixel_values_shape"] = np.array(pv.shape, np.int64)
            arrays[key + "mask_counts"] = counts.astype(np.int64)
            arrays[key + "spatial_shapes"] = shapes
            arrays[key + "rows_cols"] = np.array([info["image_rows"][0], info["image_cols"][0]], np.int64)
            arrays[key + "image_sizes"] = np.array(info["image_sizes"][0], np.int64)
            arrays[key + "text"] = np.array(text)
            arrays[key + "n_image_tokens"] = np.array(n_img, np.int64)
            summary.append(f"{key:28s} pv {tuple(pv.shape)} tiles {shapes.tolist()[:1]}.. rows/cols "
                           f"{info['image_rows'][0]}x{info['image_cols'][0]} tokens {n_img} exact_levels {exact}")
    meta = {
        "prompt": PROMPT, "configs": CONFIGS,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__,
                     "pillow": Image.__version__, "python": platform.python_version(),
                     "cpu_capability": torch.backends.cpu.get_cpu_capability()},
    }
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    np.savez_compressed(OUT_NPZ, **arrays)
    with open(OUT_CONFIG, "w", encoding="utf-8") as f:
        json.dump(CONFIGS, f, indent=2, sort_keys=True)
        f.write("\n")
    print("\n".join(summary))
    print(f"wrote {OUT_NPZ} ({os.path.getsize(OUT_NPZ) / 1e6:.2f} MB) and {OUT_CONFIG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
