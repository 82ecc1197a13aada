"""Mission configuration: one TOML file (read with tomllib), validated whole at start-up.

Every key has a default except the input source; an unknown section or key, or a bad value, raises
ConfigError whose message starts with the dotted key ("tiling.overlap: must be in 0..255, got 300"), so
a malformed uplinked config is refused before the loop touches a frame. `edge run` applies its flags
as overrides (`apply_overrides`) and validates the result the same way.

    [input]      source (file or spool directory), kind, layout, poll_s
    [sensor]     bit_depth, bands (source band of each model channel), gain, offset
    [model]      name, variant, backend, threads, memory, manifest, kernels (LiteRT)
    [tiling]     overlap, batch
    [detection]  score_threshold, iou_threshold, merge, metric, max_detections
    [screening]  enabled, nodata_fraction, cloud_fraction, bright_threshold
    [downlink]   output, sink, baud, max_packet_bytes, journal_capacity_bytes, segment_bytes,
                 housekeeping_every (frames), housekeeping_s (safe mode / idle), retransmit_s
                 (unacknowledged records go out again this often; 0: only when asked)
    [data]       dir
    [scrub]      enabled, budget_bytes_per_s, block_bytes
    [uplink]     input (file, FIFO or serial device the ground's telecommands arrive on), key_file
                 (the board's HMAC key, `edge keygen`), spi
    [vlm]        enabled, model_dir, variant, threads, max_new_tokens, deadline_s (per answer), tile,
                 overlap, max_tiles (grounding over a frame), image_max_side (VQA / captions), task
                 (task of uplinked questions and of the standing question), question (standing
                 question asked of every frame; none: only queued / uplinked questions),
                 merge_threshold (IoS of the cross-tile merge), memory ("copy" | "owned": the
                 weights under the scrubber)  (edge/vlm/service.py, docs/vlm.md)
    [supervisor] stage deadlines, restart backoff, safe mode (edge/reliability/supervisor.py)
    [watchdog]   device, timeout_s, pet_interval_s
The defaults are the demo's: the shipped int8 ship model on 12-bit B, G, R, NIR frames.
"""
from __future__ import annotations

import copy
import numbers
import tomllib
from dataclasses import dataclass
from pathlib import Path

#: Input kinds: "auto" picks by file name (.npy, .png/.tif/.tiff, else raw with a JSON sidecar;
#: a directory is a spool).
INPUT_KINDS = ("auto", "raw", "npy", "image", "spool")
BACKENDS = ("auto", "onnxruntime", "litert")
#: "copy": the runtime keeps its own (fastest) copy of the weights; "owned": the runtime computes from
#: buffers orbit-edge owns (ONNX Runtime: add_initializer, no prepacking; LiteRT: the model bytes in
#: place, no XNNPACK), the memory the scrubber protects.
MEMORY_MODES = ("copy", "owned")
#: LiteRT kernels: "optimized" (the builtin ones, fastest without a delegate) or "reference" (portable
#: integer C++: bit-identical on every CPU, ~4x slower; for comparing boards).
KERNELS = ("optimized", "reference")
MERGE_MODES = ("nms", "nmm")
METRICS = ("iou", "ios")
SINKS = ("auto", "file", "fifo", "serial")
#: On-board vision-language model ([vlm]): tasks and the ONNX export's variants (edge/vlm).
VLM_TASKS = ("grounding", "vqa", "caption")
VLM_VARIANTS = ("fp32", "fp16", "q8", "q4", "q4f16")  # edge.vlm.model.VARIANT_ORDER
#: A question's text: the uplink's limit (edge.uplink.MAX_QUESTION_TEXT_BYTES), for every source.
MAX_VLM_QUESTION_BYTES = 800

DEFAULTS: dict = {
    "input": {"source": None, "kind": "auto", "layout": "HWC", "poll_s": 0.0},
    "sensor": {"bit_depth": 12, "bands": [2, 1, 0], "gain": None, "offset": 0.0},
    "model": {"name": "ship", "variant": None, "backend": "auto", "threads": 1, "memory": "copy",
              "manifest": None, "kernels": "optimized"},
    "tiling": {"overlap": 32, "batch": 16},
    "detection": {"score_threshold": None, "iou_threshold": 0.5, "merge": "nms", "metric": "iou",
                  "max_detections": 2000},
    "screening": {"enabled": True, "nodata_fraction": 0.98, "cloud_fraction": 0.95,
                  "bright_threshold": 2900},
    "downlink": {"output": "downlink.bin", "sink": "auto", "baud": 115200, "max_packet_bytes": 1024,
                 "journal_capacity_bytes": 64 << 20, "segment_bytes": 1 << 20,
                 "housekeeping_every": 10, "housekeeping_s": 60.0, "retransmit_s": 600.0},
    "data": {"dir": "edge-data"},
    # Memory scrubber (edge/reliability/scrubber.py) over the weights in use ("owned" memory), the
    # LUTs and the config: budget paces the scrub thread (docs/reliability.md derives the default).
    "scrub": {"enabled": True, "budget_bytes_per_s": 512 * 1024, "block_bytes": 4096},
    # Authenticated uplink (edge/uplink.py): no key file -> no uplink is read at all.
    "uplink": {"input": None, "key_file": None, "spi": 1},
    # On-board VLM (edge/vlm): answers uplinked / queued questions after the frames. Off by default;
    # the detector-only flight path never imports edge.vlm.
    "vlm": {"enabled": False, "model_dir": None, "variant": None, "threads": 2,
            "max_new_tokens": 256, "deadline_s": 60.0, "tile": 512, "overlap": 64, "max_tiles": 16,
            "image_max_side": 512, "task": "vqa", "question": None, "merge_threshold": 0.5,
            # "copy": ONNX Runtime's own (prepacked, faster) copy of the weights, which the scrubber
            # cannot see; "owned": arrays orbit-edge owns, scrubbed once the model is loaded
            # (edge/reliability/regions.py protect_vlm, docs/reliability.md "The VLM's weights")
            "memory": "copy"},
}
# [supervisor] and [watchdog]: their keys, defaults and checks live with the supervisor
# (edge/reliability/supervisor.py SUPERVISOR_DEFAULTS, validate_settings).
from edge.reliability.supervisor import SUPERVISOR_DEFAULTS as _SUP  # noqa: E402  (stdlib-only module)

DEFAULTS.update(copy.deepcopy(_SUP))


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key."""


# ---- typed checks: each names its key -----------------------------------------------------------

def _int(v, key, lo=None, hi=None) -> int:
    if not isinstance(v, numbers.Integral) or isinstance(v, bool):
        raise ConfigError(f"{key}: must be an integer, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(f"{key}: must be in {lo}..{hi}, got {v}")
    return int(v)


def _real(v, key, lo=None, hi=None) -> float:
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or v != v:
        raise ConfigError(f"{key}: must be a number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(f"{key}: must be in [{lo}, {hi}], got {v}")
    return float(v)


def _choice(v, key, choices) -> str:
    if v not in choices:
        raise ConfigError(f"{key}: must be one of {list(choices)}, got {v!r}")
    return v


def _text(v, key, optional=False):
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key}: must be a non-empty string, got {v!r}")
    return v


def _bool(v, key) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: must be true or false, got {v!r}")
    return v


@dataclass(frozen=True)
class Config:
    """The validated mission configuration (sections as plain dicts, every key present)."""

    input: dict
    sensor: dict
    model: dict
    tiling: dict
    detection: dict
    screening: dict
    downlink: dict
    data: dict
    scrub: dict
    uplink: dict
    vlm: dict
    supervisor: dict
    watchdog: dict
    path: Path | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.data["dir"])

    def as_dict(self) -> dict:
        return {s: dict(getattr(self, s)) for s in DEFAULTS}


def _merge(raw: dict) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"config: must be a table, got {type(raw).__name__}")
    out = copy.deepcopy(DEFAULTS)
    for section, values in raw.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{section}: unknown section; known: {list(DEFAULTS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a table, got {values!r}")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(f"{section}.{key}: unknown key; known: {list(DEFAULTS[section])}")
            out[section][key] = value
    return out


def validate(raw: dict, path: Path | None = None) -> Config:
    """Check a parsed document (missing keys take their defaults); ConfigError names the key."""
    c = _merge(raw)
    i, s, m, t, d, sc, dl, da = (c[k] for k in list(DEFAULTS)[:8])
    i["source"] = _text(i["source"], "input.source", optional=True)
    _choice(i["kind"], "input.kind", INPUT_KINDS)
    _choice(i["layout"], "input.layout", ("HWC", "CHW"))
    _real(i["poll_s"], "input.poll_s", 0, 3600)
    _int(s["bit_depth"], "sensor.bit_depth", 1, 16)
    bands = s["bands"]
    if not isinstance(bands, list) or not bands:
        raise ConfigError(f"sensor.bands: must be a non-empty list of band indices, got {bands!r}")
    for k, b in enumerate(bands):
        _int(b, f"sensor.bands[{k}]", 0, 15)
    for key in ("gain", "offset"):
        v = s[key]
        if key == "gain" and v is None:
            continue
        vals = v if isinstance(v, list) else [v]
        if isinstance(v, list) and len(v) not in (1, len(bands)):
            raise ConfigError(f"sensor.{key}: needs 1 or {len(bands)} values (one per band in "
                              f"sensor.bands), got {len(v)}")
        for k, x in enumerate(vals):
            _real(x, f"sensor.{key}" + (f"[{k}]" if isinstance(v, list) else ""))
    _text(m["name"], "model.name")
    _text(m["variant"], "model.variant", optional=True)
    _choice(m["backend"], "model.backend", BACKENDS)
    _int(m["threads"], "model.threads", 1, 64)
    _choice(m["memory"], "model.memory", MEMORY_MODES)
    _text(m["manifest"], "model.manifest", optional=True)
    _choice(m["kernels"], "model.kernels", KERNELS)
    _int(t["overlap"], "tiling.overlap", 0, 4096)
    _int(t["batch"], "tiling.batch", 1, 1024)
    if d["score_threshold"] is not None:
        _real(d["score_threshold"], "detection.score_threshold", 0, 1)
    _real(d["iou_threshold"], "detection.iou_threshold", 0, 1)
    _choice(d["merge"], "detection.merge", MERGE_MODES)
    _choice(d["metric"], "detection.metric", METRICS)
    _int(d["max_detections"], "detection.max_detections", 1, 1_000_000)
    _bool(sc["enabled"], "screening.enabled")
    _real(sc["nodata_fraction"], "screening.nodata_fraction", 0, 1)
    _real(sc["cloud_fraction"], "screening.cloud_fraction", 0, 1)
    _int(sc["bright_threshold"], "screening.bright_threshold", 0, 65536)
    _text(dl["output"], "downlink.output")
    _choice(dl["sink"], "downlink.sink", SINKS)
    _int(dl["baud"], "downlink.baud", 50, 4_000_000)
    _int(dl["max_packet_bytes"], "downlink.max_packet_bytes", 64, 65542)
    _int(dl["journal_capacity_bytes"], "downlink.journal_capacity_bytes", 4096)
    _int(dl["segment_bytes"], "downlink.segment_bytes", 1024)
    _int(dl["housekeeping_every"], "downlink.housekeeping_every", 1, 1_000_000)
    _real(dl["housekeeping_s"], "downlink.housekeeping_s", 0.01, 86400)
    _real(dl["retransmit_s"], "downlink.retransmit_s", 0, 86400 * 30)
    _text(da["dir"], "data.dir")
    c.update(_validate_supervisor(c["supervisor"], c["watchdog"]))
    sb = c["scrub"]
    _bool(sb["enabled"], "scrub.enabled")
    _real(sb["budget_bytes_per_s"], "scrub.budget_bytes_per_s", 1024, 1e10)
    _int(sb["block_bytes"], "scrub.block_bytes", 64, 1 << 20)
    if sb["block_bytes"] % 8:
        raise ConfigError(f"scrub.block_bytes: must be a multiple of 8 (SECDED words), got {sb['block_bytes']}")
    up = c["uplink"]
    _text(up["input"], "uplink.input", optional=True)
    _text(up["key_file"], "uplink.key_file", optional=True)
    _int(up["spi"], "uplink.spi", 0, 65535)
    if (up["input"] is None) != (up["key_file"] is None):
        raise ConfigError("uplink.key_file: the uplink needs both input and key_file (or neither)")
    _validate_vlm(c["vlm"])
    return Config(**c, path=path)


def _validate_vlm(v: dict) -> None:
    _bool(v["enabled"], "vlm.enabled")
    _text(v["model_dir"], "vlm.model_dir", optional=True)
    if v["enabled"] and v["model_dir"] is None:
        raise ConfigError("vlm.model_dir: required when vlm.enabled is true (the ONNX export's directory)")
    if v["variant"] is not None:
        _choice(v["variant"], "vlm.variant", VLM_VARIANTS)
    _int(v["threads"], "vlm.threads", 1, 64)
    _int(v["max_new_tokens"], "vlm.max_new_tokens", 1, 8192)
    _real(v["deadline_s"], "vlm.deadline_s", 0.1, 86400)
    _int(v["tile"], "vlm.tile", 32, 16384)
    _int(v["overlap"], "vlm.overlap", 0, 16383)
    if v["overlap"] >= v["tile"]:
        raise ConfigError(f"vlm.overlap: must be smaller than vlm.tile ({v['tile']}), got {v['overlap']}")
    _int(v["max_tiles"], "vlm.max_tiles", 1, 4096)
    _int(v["image_max_side"], "vlm.image_max_side", 32, 16384)
    _choice(v["task"], "vlm.task", VLM_TASKS)
    if v["question"] is not None:
        _text(v["question"], "vlm.question")
        try:
            n = len(v["question"].encode("utf-8"))
        except UnicodeEncodeError:
            raise ConfigError("vlm.question: not valid Unicode text (a lone surrogate)") from None
        if n > MAX_VLM_QUESTION_BYTES:
            raise ConfigError(f"vlm.question: at most {MAX_VLM_QUESTION_BYTES} UTF-8 bytes, got {n}")
    _real(v["merge_threshold"], "vlm.merge_threshold", 0, 1)
    _choice(v["memory"], "vlm.memory", MEMORY_MODES)


def _validate_supervisor(supervisor: dict, watchdog: dict) -> dict:
    from edge.reliability.supervisor import validate_settings

    return validate_settings(supervisor, watchdog)


def load_config(path) -> Config:
    """Read and validate a TOML mission config."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"config: cannot read {p}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config: {p} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {p} is not valid TOML: {e}") from e
    return validate(raw, p)


#: Uplinked config changes (accepted by the flight loop) live here, relative to data.dir.
OVERRIDES_FILE = "state/config_overrides.json"


def with_uplinked_overrides(cfg: Config) -> Config:
    """cfg plus the config changes the ground uplinked (validated again; a file that no longer
    validates is ignored and reported by the ConfigError the caller gets)."""
    import json

    path = cfg.data_dir / OVERRIDES_FILE
    if not path.exists():
        return cfg
    try:
        overrides = json.loads(path.read_text())
        if not isinstance(overrides, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{OVERRIDES_FILE}: unreadable ({e})") from e
    return apply_overrides(cfg, overrides)


def default_config() -> Config:
    return validate({})


def apply_overrides(cfg: Config, overrides: dict) -> Config:
    """A new Config with {"section.key": value} overrides (None values are ignored), revalidated."""
    raw = cfg.as_dict()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section not in DEFAULTS or key not in DEFAULTS[section]:
            raise ConfigError(f"{dotted}: unknown key")
        raw[section][key] = value
    return validate(raw, cfg.path)


__all__ = ["Config", "ConfigError", "DEFAULTS", "apply_overrides", "default_config", "load_config",
           "validate"]
