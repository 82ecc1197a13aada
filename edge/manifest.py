"""The model manifest: the only way the runtime finds, checks and reads a model.

One JSON file (schema 1) lists models by name; each model lists its files by variant
("onnx_fp32", "onnx_int8", "ort_int8", "tflite_int8", or any name a user picks). load_manifest
validates the whole document up front, so a bad manifest fails at start-up with the key path of the
first problem ("models.ship.files.onnx_int8.sha256: missing"), never in the middle of a pass.

A file's bytes are read once and checked against the manifest's size and sha256 before any runtime
sees them (FileEntry.read_bytes); a mismatch raises ModelIntegrityError naming the file and both
hashes. A user-brought model needs nothing but its own manifest entry.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = 1
#: Manifest used when no path is given and $EDGE_MANIFEST is unset: models/ beside the package.
DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "models" / "manifest.json"
MANIFEST_ENV = "EDGE_MANIFEST"

FORMATS = ("onnx", "ort", "tflite")
RUNTIMES = ("onnxruntime", "litert")
PRECISIONS = ("fp32", "fp16", "int8")
INPUT_DTYPES = {"float32": None, "uint8": (0, 255), "int8": (-128, 127)}  # zero point ranges
LAYOUTS = ("NCHW", "NHWC")
#: Output roles each head type needs the manifest to map to tensor names.
HEAD_ROLES = {"centernet": ("heatmap", "size", "offset"), "yolov8": ("predictions",),
              "yolo11": ("predictions",)}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """The manifest is malformed; the message starts with the key path of the problem."""


class ModelIntegrityError(RuntimeError):
    """A model file does not match the size or sha256 its manifest entry records."""


# ---- small typed readers: each failure names the key path ------------------------------------

def _get(obj: dict, key: str, path: str):
    if key not in obj:
        raise ManifestError(f"{path}.{key}: missing")
    return obj[key]


def _dict(value, path: str) -> dict:
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: must be an object, got {type(value).__name__}")
    return value


def _str(value, path: str, choices=None) -> str:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{path}: must be a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise ManifestError(f"{path}: must be one of {list(choices)}, got {value!r}")
    return value


def _int(value, path: str, lo=None, hi=None) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ManifestError(f"{path}: must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ManifestError(f"{path}: must be in {lo}..{hi}, got {value}")
    return int(value)


def _real(value, path: str, lo=None, hi=None, positive=False) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or value != value:
        raise ManifestError(f"{path}: must be a number, got {value!r}")
    if positive and not value > 0:
        raise ManifestError(f"{path}: must be > 0, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ManifestError(f"{path}: must be in [{lo}, {hi}], got {value}")
    return float(value)


# ---- entries -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    """What the file's graph input takes: x_model = (q - zero_point) * scale for integer dtypes."""

    name: str
    dtype: str          # "float32", "uint8", "int8"
    scale: float
    zero_point: int


@dataclass(frozen=True)
class FileEntry:
    """One file of a model (one variant)."""

    model: str
    variant: str
    path: Path          # absolute
    format: str
    runtime: str
    precision: str
    sha256: str
    size: int
    input: InputSpec
    outputs: dict       # role -> tensor name
    raw: dict = field(repr=False, compare=False)

    def read_bytes(self) -> bytes:
        """The file's bytes, read once and verified against size and sha256."""
        try:
            blob = self.path.read_bytes()
        except OSError as e:
            raise ModelIntegrityError(f"{self.model}/{self.variant}: cannot read {self.path}: {e}") from e
        if len(blob) != self.size:
            raise ModelIntegrityError(f"{self.model}/{self.variant}: {self.path} is {len(blob)} bytes, "
                                      f"the manifest says {self.size}")
        got = hashlib.sha256(blob).hexdigest()
        if got != self.sha256:
            raise ModelIntegrityError(f"{self.model}/{self.variant}: sha256 mismatch for {self.path}: "
                                      f"manifest {self.sha256}, file {got}")
        return blob


@dataclass(frozen=True)
class ModelEntry:
    """One model: what it takes, how to decode it, and its files by variant."""

    name: str
    task: str
    classes: tuple
    input_shape: tuple  # e.g. (1, 3, 256, 256)
    layout: str         # "NCHW" or "NHWC"
    color: str
    bit_depth: int
    mean: tuple         # per channel, raw units
    std: tuple
    head: dict          # validated; "type" plus the decoder's parameters
    files: dict         # variant -> FileEntry
    raw: dict = field(repr=False, compare=False)

    @property
    def tile_hw(self) -> tuple[int, int]:
        """Tile height and width the model takes."""
        if self.layout == "NCHW":
            return int(self.input_shape[2]), int(self.input_shape[3])
        return int(self.input_shape[1]), int(self.input_shape[2])

    @property
    def channels(self) -> int:
        return int(self.input_shape[1] if self.layout == "NCHW" else self.input_shape[3])

    @property
    def default_variant(self) -> str:
        """The first variant listed in the manifest."""
        return next(iter(self.files))

    def file(self, variant: str | None = None) -> FileEntry:
        variant = self.default_variant if variant is None else variant
        if variant not in self.files:
            raise ManifestError(f"models.{self.name}.files.{variant}: no such variant; "
                                f"have {list(self.files)}")
        return self.files[variant]


@dataclass(frozen=True)
class Manifest:
    path: Path
    models: dict        # name -> ModelEntry
    raw: dict = field(repr=False, compare=False)

    def model(self, name: str) -> ModelEntry:
        if name not in self.models:
            raise ManifestError(f"models.{name}: no such model in {self.path}; have {list(self.models)}")
        return self.models[name]


def _head(value, path: str) -> dict:
    head = dict(_dict(value, path))
    kind = _str(_get(head, "type", path), f"{path}.type", HEAD_ROLES)
    head["score_threshold"] = _real(_get(head, "score_threshold", path), f"{path}.score_threshold", 0, 1)
    head["max_detections"] = _int(head.get("max_detections", 100), f"{path}.max_detections", 1)
    if "nms_iou" in head and head["nms_iou"] is not None:
        head["nms_iou"] = _real(head["nms_iou"], f"{path}.nms_iou", 0, 1)
    if kind == "centernet":
        head["stride"] = _int(_get(head, "stride", path), f"{path}.stride", 1)
    return head


def _file(model: str, variant: str, value, path: str, base: Path, roles) -> FileEntry:
    f = _dict(value, path)
    rel = _str(_get(f, "path", path), f"{path}.path")
    sha = _str(_get(f, "sha256", path), f"{path}.sha256")
    if not _SHA256.match(sha):
        raise ManifestError(f"{path}.sha256: must be 64 lowercase hex digits, got {sha!r}")
    ipath = f"{path}.input"
    inp = _dict(_get(f, "input", path), ipath)
    dtype = _str(_get(inp, "dtype", ipath), f"{ipath}.dtype", INPUT_DTYPES)
    zp_range = INPUT_DTYPES[dtype] or (None, None)
    spec = InputSpec(name=_str(_get(inp, "name", ipath), f"{ipath}.name"), dtype=dtype,
                     scale=_real(inp.get("scale", 1.0), f"{ipath}.scale", positive=True),
                     zero_point=_int(inp.get("zero_point", 0), f"{ipath}.zero_point", *zp_range))
    outputs = _dict(_get(f, "outputs", path), f"{path}.outputs")
    for role in roles:
        _str(_get(outputs, role, f"{path}.outputs"), f"{path}.outputs.{role}")
    return FileEntry(model=model, variant=variant, path=(base / rel).resolve(),
                     format=_str(_get(f, "format", path), f"{path}.format", FORMATS),
                     runtime=_str(_get(f, "runtime", path), f"{path}.runtime", RUNTIMES),
                     precision=_str(_get(f, "precision", path), f"{path}.precision", PRECISIONS),
                     sha256=sha, size=_int(_get(f, "size", path), f"{path}.size", 0),
                     input=spec, outputs=dict(outputs), raw=f)


def _model(name: str, value, base: Path) -> ModelEntry:
    path = f"models.{name}"
    m = _dict(value, path)
    classes = _get(m, "classes", path)
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ManifestError(f"{path}.classes: must be a non-empty list of strings, got {classes!r}")
    ipath = f"{path}.input"
    inp = _dict(_get(m, "input", path), ipath)
    shape = _get(inp, "shape", ipath)
    if not isinstance(shape, list) or len(shape) != 4:
        raise ManifestError(f"{ipath}.shape: must be a list of 4 integers, got {shape!r}")
    shape = tuple(_int(s, f"{ipath}.shape[{i}]", 1) for i, s in enumerate(shape))
    layout = _str(inp.get("layout", "NCHW"), f"{ipath}.layout", LAYOUTS)
    channels = shape[1] if layout == "NCHW" else shape[3]
    ppath = f"{path}.preprocess"
    pre = _dict(m.get("preprocess", {}), ppath)
    per_channel = {}
    for key, default in (("mean", 0.0), ("std", 1.0)):
        v = pre.get(key, default)
        v = v if isinstance(v, list) else [v] * channels
        if len(v) != channels:
            raise ManifestError(f"{ppath}.{key}: needs {channels} values (one per channel), got {len(v)}")
        per_channel[key] = tuple(_real(x, f"{ppath}.{key}[{i}]", positive=key == "std")
                                 for i, x in enumerate(v))
    head = _head(_get(m, "head", path), f"{path}.head")
    files_raw = _dict(_get(m, "files", path), f"{path}.files")
    if not files_raw:
        raise ManifestError(f"{path}.files: must list at least one file")
    files = {v: _file(name, v, f, f"{path}.files.{v}", base, HEAD_ROLES[head["type"]])
             for v, f in files_raw.items()}
    return ModelEntry(name=name, task=_str(m.get("task", "detection"), f"{path}.task", ("detection",)),
                      classes=tuple(classes), input_shape=shape, layout=layout,
                      color=_str(inp.get("color", "RGB"), f"{ipath}.color"),
                      bit_depth=_int(inp.get("bit_depth", 8), f"{ipath}.bit_depth", 1, 16),
                      mean=per_channel["mean"], std=per_channel["std"], head=head, files=files, raw=m)


def parse_manifest(data, base_dir) -> Manifest:
    """Validate a manifest document (already parsed JSON); relative file paths resolve against
    base_dir. Raises ManifestError naming the key path of the first problem."""
    doc = _dict(data, "manifest")
    schema = _get(doc, "schema", "manifest")
    if schema != SCHEMA:
        raise ManifestError(f"manifest.schema: this runtime reads schema {SCHEMA}, got {schema!r}")
    models = _dict(_get(doc, "models", "manifest"), "models")
    base = Path(base_dir)
    return Manifest(path=base, models={n: _model(n, m, base) for n, m in models.items()}, raw=doc)


def manifest_path(path=None) -> Path:
    """The manifest to read: `path`, else $EDGE_MANIFEST, else DEFAULT_MANIFEST."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(MANIFEST_ENV) or DEFAULT_MANIFEST)


def load_manifest(path=None) -> Manifest:
    """Read and validate a manifest file (see manifest_path for which one)."""
    p = manifest_path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ManifestError(f"manifest: cannot read {p}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"manifest: {p} is not valid JSON: {e}") from e
    m = parse_manifest(data, p.resolve().parent)
    return Manifest(path=p, models=m.models, raw=m.raw)


def resolve(name: str, variant: str | None = None, path=None) -> tuple[ModelEntry, FileEntry]:
    """(model entry, file entry) of `name` / `variant` (default: the model's first variant)."""
    model = load_manifest(path).model(name)
    return model, model.file(variant)
