"""LFM2-VL image processing in numpy + PIL (no torch, transformers or torchvision at run time).

A reimplementation of transformers' ``Lfm2VlImageProcessor`` and of the image half of
``Lfm2VlProcessor`` (transformers 5.24.0), checked against the real ones by
tests/test_vlm_processor.py (references made by models/vlm/processor_refs.py).

    proc = Lfm2VlProcessor.from_dir(model_dir)          # preprocessor_config.json / processor_config.json
    out = proc.preprocess([image, ...])                 # PIL images or HWC uint8 RGB arrays
    out["pixel_values"]          float32 [tiles, max_num_patches, 3 * patch**2]
    out["pixel_attention_mask"]  int64   [tiles, max_num_patches]   (1 = real patch, 0 = padding)
    out["spatial_shapes"]        int64   [tiles, 2]                 (patch rows, patch cols per tile)
    out["image_rows"], out["image_cols"]   tile grid of each image (1, 1 when not split)
    out["image_sizes"]           [h, w] of each image after the smart resize (the thumbnail's size)
    out["tiles_per_image"], out["image_token_counts"]   (extras: tiles and <image> tokens per image)
    text = proc.expand_prompt("<image>Describe.", out)  # the text transformers' processor tokenizes

What it does, per image (all sizes in pixels, p = encoder_patch_size, d = downsample_factor):

* smart resize: each side rounded to a multiple of p*d (at least p*d); if the area leaves
  [min_image_tokens, max_image_tokens] * (p*d)**2 the image is scaled by sqrt of the ratio and the sides
  floored (too big) or ceiled (too small) to multiples of p*d.
* "too large": sides rounded to multiples of p*d (at least p), area > max_image_tokens * (p*d)**2 *
  max_pixels_tolerance. A too-large image (with splitting on, i.e. not min_tiles == max_tiles == 1) is
  resized to a grid of tile_size tiles: the (cols, rows) with min_tiles <= cols*rows <= max_tiles whose
  cols/rows is closest to width/height (ties: the later, larger grid once the image covers more than half
  of its area), cut row-major into tiles, then followed by a thumbnail (the whole image at the smart-resize
  size) when use_thumbnail and the grid is not 1x1. Any other image is one unit at the smart-resize size.
* resampling: PIL's resize with the configured filter (bilinear by default); transformers resizes uint8
  tensors with torchvision's antialiased kernels, which follow PIL's, so the levels agree to one step.
* rescale + normalise in float32 exactly as transformers' fused step: (x - mean/rf) / (std/rf).
* patches: each unit is cut into p x p patches, row-major, each flattened (row, col, channel) and padded
  with zero patches to max_num_patches = max(max_image_tokens * d**2, (tile_size // p)**2 if splitting).
* prompt: each ``<image>`` mark becomes ``<|image_start|>`` [``<|img_row_R_col_C|>`` + ``<image>`` x
  ceil(tile/p/d)**2 per tile, ``<|img_thumbnail|>`` + thumbnail tokens] ``<|image_end|>``; a single unit
  gets ceil(h/p/d) * ceil(w/p/d) tokens from image_sizes. Without use_image_special_tokens the start,
  end, row/col and thumbnail tags are left out.

Inputs: PIL images of any 8-bit mode (converted with PIL's convert("RGB"): grayscale replicated, alpha
dropped) or HWC uint8 RGB arrays. 16-bit / float arrays and PIL "I" / "F" images are refused (PIL would
clip them at 255): scale them to 8 bits first. Every bad input raises ProcessorInputError (a ValueError)
naming the image and the problem, as does a "too large" image whose grid is 1x1 (possible only with
min_tiles = 1), where transformers would give more vision tokens than prompt tokens.

Config (``from_dir``): like transformers, the nested ``image_processor`` object of processor_config.json
if there is one, else preprocessor_config.json (flat); use_image_special_tokens from the top level of
processor_config.json; the special-token strings from tokenizer_config.json (``extra_special_tokens`` or
top-level ``image_token`` ...) when given. Keys read: see ``CONFIG_DEFAULTS``; others are ignored
(``max_num_patches`` too: transformers recomputes it; ``do_resize`` is always on, as in transformers).
Bad values (wrong type, out of range, NaN / Infinity, beyond MAX_TILES_LIMIT / MAX_NUM_PATCHES_LIMIT)
raise ProcessorConfigError naming the file and the key.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

__all__ = ["CONFIG_DEFAULTS", "ImageLayout", "Lfm2VlProcessor", "ProcessorConfigError",
           "ProcessorInputError"]

#: Image-processor keys read from the config, with transformers' class defaults.
CONFIG_DEFAULTS: dict = {
    "downsample_factor": 2,
    "do_image_splitting": True,
    "min_tiles": 2,
    "max_tiles": 10,
    "use_thumbnail": True,
    "min_image_tokens": 64,
    "max_image_tokens": 256,
    "encoder_patch_size": 16,
    "tile_size": 512,
    "max_pixels_tolerance": 2.0,
    "resample": 2,                       # PIL code: 2 = BILINEAR
    "do_rescale": True,
    "rescale_factor": 1.0 / 255.0,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_pad": True,
}

#: Sanity bounds on a config (a corrupt file must not hang or exhaust memory): the tile grids are
#: enumerated like transformers does, O(max_tiles**3), and every unit is padded to max_num_patches.
#: LFM2-VL uses 10 tiles and 1024 patches.
MAX_TILES_LIMIT = 64
MAX_NUM_PATCHES_LIMIT = 16384

#: PIL modes holding more than 8 bits a sample: PIL's convert("RGB") clips them at 255, silently.
_HIGH_DEPTH_MODES = ("I", "F")

#: Processor-level keys (top level of processor_config.json).
PROCESSOR_DEFAULTS: dict = {"use_image_special_tokens": True}

#: The special-token strings of the text expansion (the tokenizer may name others).
TOKEN_DEFAULTS: dict = {
    "image_token": "<image>",
    "image_start_token": "<|image_start|>",
    "image_end_token": "<|image_end|>",
    "image_thumbnail_token": "<|img_thumbnail|>",
}

_RESAMPLE_NAMES = {
    "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}


class ProcessorConfigError(ValueError):
    """A processor config file or value that cannot be used."""


class ProcessorInputError(ValueError, TypeError):
    """An image or prompt the processor cannot take (wrong type, dtype, shape, size). A ValueError
    like every bad input of the runtime; also a TypeError for the wrong-type cases' sake."""


@dataclass(frozen=True)
class ImageLayout:
    """How one image of (height, width) is cut: no pixels, just geometry and token counts."""

    height: int
    width: int
    resized: tuple[int, int]          # (h, w) of the smart resize: the single unit or the thumbnail
    rows: int                         # tile grid (1, 1 when the image is one unit)
    cols: int
    split: bool                       # True: tiles of tile_size (+ thumbnail if `thumbnail`)
    thumbnail: bool
    unit_sizes: tuple[tuple[int, int], ...]      # (h, w) in pixels of every unit, in order
    tokens_per_tile: int
    tokens_for_image: int             # tokens of the single unit / of the thumbnail
    num_image_tokens: int             # <image> tokens this image expands to
    spatial_shapes: tuple[tuple[int, int], ...] = field(default=())

    @property
    def num_units(self) -> int:
        return len(self.unit_sizes)


def _round_by_factor(x: float, factor: int) -> int:
    # Python's round (half to even), as transformers uses it
    return round(x / factor) * factor


class Lfm2VlProcessor:
    """The LFM2-VL image processor + prompt expansion, driven by a processor config dict."""

    def __init__(self, config: dict | None = None, *, use_image_special_tokens: bool | None = None,
                 tokens: dict | None = None):
        cfg = dict(CONFIG_DEFAULTS)
        for key, value in (config or {}).items():
            if key in cfg:
                cfg[key] = value
        self.config = self._validate(cfg)
        for key, value in self.config.items():
            setattr(self, key, value)
        self.use_image_special_tokens = bool(
            PROCESSOR_DEFAULTS["use_image_special_tokens"] if use_image_special_tokens is None
            else use_image_special_tokens)
        tok = dict(TOKEN_DEFAULTS)
        for key, value in (tokens or {}).items():
            if key not in tok:
                raise ProcessorConfigError(f"unknown special token name {key!r} (known: {sorted(tok)})")
            if not isinstance(value, str) or not value:
                raise ProcessorConfigError(f"special token {key!r} must be a non-empty string, got {value!r}")
            tok[key] = value
        self.tokens = tok
        self.image_token = tok["image_token"]
        # transformers turns splitting off by forcing min_tiles = max_tiles = 1
        self._min_tiles, self._max_tiles = ((self.min_tiles, self.max_tiles) if self.do_image_splitting
                                            else (1, 1))
        self._splitting = not (self._min_tiles == self._max_tiles == 1)
        self.max_num_patches = max(
            self.max_image_tokens * self.downsample_factor ** 2,
            (self.tile_size // self.encoder_patch_size) ** 2 if self.do_image_splitting else 0)
        self._ratios = sorted(
            {(w, h) for n in range(self._min_tiles, self._max_tiles + 1)
             for w in range(1, n + 1) for h in range(1, n + 1)
             if self._min_tiles <= w * h <= self._max_tiles},
            key=lambda r: r[0] * r[1])
        factor = np.float32(1.0 / self.rescale_factor) if self.do_rescale else np.float32(1.0)
        # transformers: float32 tensor of mean/std times 1/rescale_factor, then (x - mean) / std in float32
        self._mean = (np.asarray(self.image_mean, dtype=np.float32) * factor).astype(np.float32)
        self._std = (np.asarray(self.image_std, dtype=np.float32) * factor).astype(np.float32)
        self._resample = self._pil_filter(self.resample)

    # ---------------------------------------------------------------- config

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> "Lfm2VlProcessor":
        """Read the processor config of a model directory (see the module docstring for the rules)."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise ProcessorConfigError(f"model directory {directory!r} does not exist")
        proc_path = os.path.join(directory, "processor_config.json")
        pre_path = os.path.join(directory, "preprocessor_config.json")
        proc = cls._read_json(proc_path) if os.path.exists(proc_path) else None
        image_cfg = None
        if proc is not None and "image_processor" in proc:
            image_cfg = proc["image_processor"]
            if not isinstance(image_cfg, dict):
                raise ProcessorConfigError(f"{proc_path}: 'image_processor' must be an object")
        elif os.path.exists(pre_path):
            image_cfg = cls._read_json(pre_path)
        if image_cfg is None:
            raise ProcessorConfigError(
                f"{directory}: no image processor config (neither processor_config.json with an "
                "'image_processor' object nor preprocessor_config.json)")
        special = None
        if proc is not None and "use_image_special_tokens" in proc:
            special = proc["use_image_special_tokens"]
            if not isinstance(special, bool):
                raise ProcessorConfigError(f"{proc_path}: use_image_special_tokens must be true or false")
        tokens = {}
        tok_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.exists(tok_path):
            tok_cfg = cls._read_json(tok_path)
            extra = tok_cfg.get("extra_special_tokens")
            sources = [tok_cfg] + ([extra] if isinstance(extra, dict) else [])
            for src in sources:
                for key in TOKEN_DEFAULTS:
                    if isinstance(src.get(key), str) and src[key]:
                        tokens[key] = src[key]
        try:
            return cls(image_cfg, use_image_special_tokens=special, tokens=tokens)
        except ProcessorConfigError as exc:
            src = proc_path if (proc is not None and "image_processor" in proc) else pre_path
            raise ProcessorConfigError(f"{src}: {exc}") from None

    @staticmethod
    def _read_json(path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ProcessorConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ProcessorConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return data

    @staticmethod
    def _validate(cfg: dict) -> dict:
        def as_int(key, minimum):
            v = cfg[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < minimum:
                raise ProcessorConfigError(f"{key} must be an integer >= {minimum}, got {v!r}")
            cfg[key] = int(v)

        def as_bool(key):
            if not isinstance(cfg[key], bool):
                raise ProcessorConfigError(f"{key} must be true or false, got {cfg[key]!r}")

        def as_triple(key):
            v = cfg[key]
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = [float(v)] * 3
            if (not isinstance(v, (list, tuple)) or len(v) != 3
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                               for x in v)):
                raise ProcessorConfigError(
                    f"{key} must be a finite number or a list of 3 finite numbers, got {cfg[key]!r}")
            cfg[key] = [float(x) for x in v]

        for key in ("downsample_factor", "min_tiles", "max_tiles", "encoder_patch_size", "tile_size",
                    "max_image_tokens"):
            as_int(key, 1)
        as_int("min_image_tokens", 0)
        for key in ("do_image_splitting", "use_thumbnail", "do_rescale", "do_normalize", "do_pad"):
            as_bool(key)
        as_triple("image_mean")
        as_triple("image_std")
        for key in ("max_pixels_tolerance", "rescale_factor"):
            v = cfg[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ProcessorConfigError(f"{key} must be a positive finite number, got {v!r}")
            cfg[key] = float(v)
        if cfg["do_normalize"] and any(s == 0 for s in cfg["image_std"]):
            raise ProcessorConfigError(f"image_std must not contain 0, got {cfg['image_std']}")
        if cfg["do_image_splitting"] and cfg["min_tiles"] > cfg["max_tiles"]:
            raise ProcessorConfigError(
                f"min_tiles ({cfg['min_tiles']}) must be less than or equal to max_tiles ({cfg['max_tiles']})")
        if cfg["max_tiles"] > MAX_TILES_LIMIT:
            raise ProcessorConfigError(f"max_tiles must be at most {MAX_TILES_LIMIT}, got {cfg['max_tiles']}")
        for key, patches in (
                ("max_image_tokens", cfg["max_image_tokens"] * cfg["downsample_factor"] ** 2),
                ("tile_size", (cfg["tile_size"] // cfg["encoder_patch_size"]) ** 2)):
            if patches > MAX_NUM_PATCHES_LIMIT:
                raise ProcessorConfigError(
                    f"{key} ({cfg[key]}) gives {patches} patches a unit, more than {MAX_NUM_PATCHES_LIMIT}")
        if cfg["tile_size"] % cfg["encoder_patch_size"]:
            raise ProcessorConfigError(
                f"tile_size ({cfg['tile_size']}) must be a multiple of encoder_patch_size "
                f"({cfg['encoder_patch_size']})")
        if cfg["min_image_tokens"] > cfg["max_image_tokens"]:
            raise ProcessorConfigError(
                f"min_image_tokens ({cfg['min_image_tokens']}) exceeds max_image_tokens "
                f"({cfg['max_image_tokens']})")
        if not cfg["do_pad"]:
            raise ProcessorConfigError(
                "do_pad=false is not supported: the vision encoder needs the padded patches, "
                "pixel_attention_mask and spatial_shapes")
        Lfm2VlProcessor._pil_filter(cfg["resample"])
        return cfg

    @staticmethod
    def _pil_filter(resample):
        if isinstance(resample, str) and resample.lower() in _RESAMPLE_NAMES:
            return _RESAMPLE_NAMES[resample.lower()]
        if isinstance(resample, int) and not isinstance(resample, bool):
            try:
                return Image.Resampling(resample)
            except ValueError:
                pass
        raise ProcessorConfigError(
            f"resample must be a PIL filter code 0-5 or one of {sorted(_RESAMPLE_NAMES)}, got {resample!r}")

    # -------------------------------------------------------------- geometry

    def smart_resize(self, height: int, width: int) -> tuple[int, int]:
        """(h, w): multiples of patch*downsample with min..max image tokens, aspect ratio kept."""
        p, d = self.encoder_patch_size, self.downsample_factor
        f = p * d
        min_px = self.min_image_tokens * p * p * d * d
        max_px = self.max_image_tokens * p * p * d * d
        h = max(f, _round_by_factor(height, f))
        w = max(f, _round_by_factor(width, f))
        if h * w > max_px:
            beta = math.sqrt(height * width / max_px)
            h = max(f, math.floor(height / beta / f) * f)
            w = max(f, math.floor(width / beta / f) * f)
        elif h * w < min_px:
            beta = math.sqrt(min_px / (height * width))
            h = math.ceil(height * beta / f) * f
            w = math.ceil(width * beta / f) * f
        return h, w

    def is_too_large(self, height: int, width: int) -> bool:
        p, d = self.encoder_patch_size, self.downsample_factor
        f = p * d
        h = max(p, _round_by_factor(height, f))   # sic: at least one patch, not p*d (as transformers)
        w = max(p, _round_by_factor(width, f))
        return h * w > self.max_image_tokens * p * p * d * d * self.max_pixels_tolerance

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(cols, rows) of the tile grid closest to the aspect ratio (ties: larger grid if the image fills it)."""
        aspect = width / height
        area = width * height
        best, best_diff = (1, 1), float("inf")
        for cols, rows in self._ratios:
            diff = abs(aspect - cols / rows)
            if diff < best_diff:
                best, best_diff = (cols, rows), diff
            elif diff == best_diff and area > 0.5 * self.tile_size * self.tile_size * cols * rows:
                best = (cols, rows)
        return best

    def _tokens(self, h: int, w: int) -> int:
        p, d = self.encoder_patch_size, self.downsample_factor
        return math.ceil((h // p) / d) * math.ceil((w // p) / d)

    def layout(self, height: int, width: int) -> ImageLayout:
        """The cut of an image of this size, without touching pixels."""
        if (isinstance(height, bool) or isinstance(width, bool) or not isinstance(height, (int, np.integer))
                or not isinstance(width, (int, np.integer)) or height < 1 or width < 1):
            raise ProcessorInputError(
                f"image size must be positive integers, got height={height!r} width={width!r}")
        height, width = int(height), int(width)
        rh, rw = self.smart_resize(height, width)
        t = self.tile_size
        tokens_per_tile = self._tokens(t, t)
        tokens_for_image = self._tokens(rh, rw)
        if self._splitting and self.is_too_large(height, width):
            cols, rows = self.grid(height, width)
            units = [(t, t)] * (rows * cols)
            thumb = self.use_thumbnail and rows * cols != 1
            if thumb:
                units.append((rh, rw))
            split = True
        else:
            rows = cols = 1
            units, thumb, split = [(rh, rw)], False, False
        if rows > 1 or cols > 1:
            n_tokens = rows * cols * tokens_per_tile + (tokens_for_image if self.use_thumbnail else 0)
        else:
            n_tokens = tokens_for_image
        p = self.encoder_patch_size
        return ImageLayout(
            height=height, width=width, resized=(rh, rw), rows=rows, cols=cols, split=split,
            thumbnail=thumb, unit_sizes=tuple(units), tokens_per_tile=tokens_per_tile,
            tokens_for_image=tokens_for_image, num_image_tokens=n_tokens,
            spatial_shapes=tuple((uh // p, uw // p) for uh, uw in units))

    # ---------------------------------------------------------------- pixels

    @staticmethod
    def to_pil(image, index: int = 0) -> Image.Image:
        """A PIL RGB image from a PIL image (converted with PIL if not RGB) or an HWC uint8 RGB array."""
        if isinstance(image, Image.Image):
            if image.width < 1 or image.height < 1:
                raise ProcessorInputError(f"image {index}: empty image ({image.width}x{image.height})")
            if image.mode.startswith(_HIGH_DEPTH_MODES):
                raise ProcessorInputError(
                    f"image {index}: PIL mode {image.mode!r} has more than 8 bits a sample (PIL would clip "
                    "it at 255); scale 12/16-bit or float frames to 8-bit RGB first")
            try:
                image.load()                      # a truncated / corrupt file fails here, not mid-resize
            except (OSError, SyntaxError) as exc:
                raise ProcessorInputError(f"image {index}: cannot decode the image ({exc})") from None
            return image if image.mode == "RGB" else image.convert("RGB")
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise ProcessorInputError(
                    f"image {index}: expected a uint8 array, got {image.dtype} (convert 12-bit / float "
                    "frames to 8-bit RGB first)")
            if image.ndim != 3 or image.shape[2] != 3:
                raise ProcessorInputError(
                    f"image {index}: expected an HWC RGB array of shape (H, W, 3), got shape {image.shape}")
            if image.shape[0] < 1 or image.shape[1] < 1:
                raise ProcessorInputError(f"image {index}: empty image (shape {image.shape})")
            return Image.fromarray(np.ascontiguousarray(image), mode="RGB")
        raise ProcessorInputError(
            f"image {index}: expected a PIL.Image or a numpy array, got {type(image).__name__}")

    def _resize(self, img: Image.Image, h: int, w: int) -> Image.Image:
        if (img.height, img.width) == (h, w):
            return img
        return img.resize((w, h), resample=self._resample)

    def split_image(self, image, index: int = 0) -> tuple[ImageLayout, list[np.ndarray]]:
        """The layout of an image and its units as HWC uint8 arrays (tiles row-major, then thumbnail)."""
        img = self.to_pil(image, index)
        lay = self.layout(img.height, img.width)
        if lay.split:
            t = self.tile_size
            big = np.asarray(self._resize(img, lay.rows * t, lay.cols * t))
            units = [big[r * t:(r + 1) * t, c * t:(c + 1) * t] for r in range(lay.rows) for c in range(lay.cols)]
            if lay.thumbnail:
                units.append(np.asarray(self._resize(img, *lay.resized)))
        else:
            units = [np.asarray(self._resize(img, *lay.resized))]
        return lay, units

    def normalize(self, unit: np.ndarray) -> np.ndarray:
        """uint8 HWC -> float32 HWC, transformers' fused rescale + normalise."""
        x = unit.astype(np.float32)
        if self.do_normalize:
            return (x - self._mean) / self._std
        if self.do_rescale:
            return x * np.float32(self.rescale_factor)
        return x

    def patchify(self, unit: np.ndarray) -> np.ndarray:
        """HWC -> [patches, p*p*C], patches row-major, each flattened (row, col, channel)."""
        p = self.encoder_patch_size
        h, w, c = unit.shape
        nh, nw = h // p, w // p
        x = unit[:nh * p, :nw * p].reshape(nh, p, nw, p, c).transpose(0, 2, 1, 3, 4)
        return x.reshape(nh * nw, p * p * c)

    def preprocess(self, images) -> dict:
        """Process a list of images (PIL or HWC uint8 RGB) into the vision encoder's inputs."""
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ProcessorInputError("preprocess needs a non-empty list of images")
        p = self.encoder_patch_size
        dim = 3 * p * p
        layouts, all_units = [], []
        for i, image in enumerate(images):
            lay, units = self.split_image(image, i)
            for (nh, nw) in lay.spatial_shapes:
                if nh * nw > self.max_num_patches:
                    raise ProcessorInputError(
                        f"image {i} ({lay.height}x{lay.width}) resizes to {nh}x{nw} patches = {nh * nw}, "
                        f"more than max_num_patches {self.max_num_patches} (extreme aspect ratio: crop "
                        "or tile it first)")
            unit_tokens = sum(self._tokens(uh, uw) for uh, uw in lay.unit_sizes)
            if unit_tokens != lay.num_image_tokens:
                # transformers' own inconsistency: a "too large" image whose closest grid is 1x1 (only
                # possible with min_tiles = 1) becomes one tile_size tile, but its prompt counts the
                # smart-resize tokens; the model would then find more image features than image tokens
                raise ProcessorInputError(
                    f"image {i} ({lay.height}x{lay.width}) maps to a 1x1 grid of {self.tile_size}-pixel "
                    f"tiles: {unit_tokens} vision tokens but {lay.num_image_tokens} prompt tokens (the "
                    "config's min_tiles = 1 with tile_size larger than the smart-resize size; use "
                    "min_tiles >= 2 or resize the image)")
            layouts.append(lay)
            all_units.extend(units)
        n = len(all_units)
        pixel_values = np.zeros((n, self.max_num_patches, dim), dtype=np.float32)
        mask = np.zeros((n, self.max_num_patches), dtype=np.int64)
        shapes = np.zeros((n, 2), dtype=np.int64)
        for k, unit in enumerate(all_units):
            patches = self.patchify(self.normalize(unit))
            pixel_values[k, :len(patches)] = patches
            mask[k, :len(patches)] = 1
            shapes[k] = (unit.shape[0] // p, unit.shape[1] // p)
        return {
            "pixel_values": pixel_values,
            "pixel_attention_mask": mask,
            "spatial_shapes": shapes,
            "image_rows": [lay.rows for lay in layouts],
            "image_cols": [lay.cols for lay in layouts],
            "image_sizes": [list(lay.resized) for lay in layouts],
            "tiles_per_image": [lay.num_units for lay in layouts],
            "image_token_counts": [lay.num_image_tokens for lay in layouts],
        }

    __call__ = preprocess

    # ---------------------------------------------------------------- prompt

    def image_replacement(self, rows: int, cols: int, image_size, use_image_special_tokens=None) -> str:
        """The text one <image> mark becomes (transformers' _build_image_tokens)."""
        special = self.use_image_special_tokens if use_image_special_tokens is None else use_image_special_tokens
        tok = self.tokens
        per_tile = self._tokens(self.tile_size, self.tile_size)
        for_image = self._tokens(int(image_size[0]), int(image_size[1]))
        parts = [tok["image_start_token"]] if special else []
        if rows > 1 or cols > 1:
            for r in range(rows):
                for c in range(cols):
                    if special:
                        parts.append(f"<|img_row_{r + 1}_col_{c + 1}|>")
                    parts.append(tok["image_token"] * per_tile)
            if self.use_thumbnail:
                if special:
                    parts.append(tok["image_thumbnail_token"])
                parts.append(tok["image_token"] * for_image)
        else:
            parts.append(tok["image_token"] * for_image)
        if special:
            parts.append(tok["image_end_token"])
        return "".join(parts)

    def expand_prompt(self, text: str, processed: dict, use_image_special_tokens: bool | None = None) -> str:
        """Replace the i-th <image> mark of `text` with the expansion of image i of `processed`."""
        if not isinstance(text, str):
            raise ProcessorInputError(f"expand_prompt needs a str, got {type(text).__name__}")
        try:
            rows, cols, sizes = processed["image_rows"], processed["image_cols"], processed["image_sizes"]
        except (KeyError, TypeError):
            raise ProcessorInputError("expand_prompt needs the dict returned by preprocess() "
                             "(image_rows, image_cols, image_sizes)") from None
        n_marks = text.count(self.image_token)
        if n_marks != len(rows):
            raise ProcessorInputError(
                f"the prompt has {n_marks} {self.image_token} marks but {len(rows)} images were processed")
        pieces = re.split(re.escape(self.image_token), text)
        out = [pieces[0]]
        for i in range(n_marks):
            out.append(self.image_replacement(rows[i], cols[i], sizes[i], use_image_special_tokens))
            out.append(pieces[i + 1])
        return "".join(out)
