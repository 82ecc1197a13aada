"""Mission config (edge/config.py): defaults, overrides, and errors that name the key."""
from __future__ import annotations

import pytest

from edge.config import DEFAULTS, ConfigError, apply_overrides, default_config, load_config, validate


def test_defaults_validate_and_demo_mission_loads():
    cfg = default_config()
    assert cfg.model["name"] == "ship" and cfg.tiling["overlap"] == 32
    demo = load_config("edge/missions/demo.toml")
    assert demo.detection["score_threshold"] == 0.55 and demo.sensor["bands"] == [2, 1, 0]


@pytest.mark.parametrize("doc, key", [
    ({"tiling": {"overlapp": 3}}, "tiling.overlapp: unknown key"),
    ({"tilling": {}}, "tilling: unknown section"),
    ({"tiling": {"overlap": -1}}, "tiling.overlap: must be in"),
    ({"tiling": {"overlap": "32"}}, "tiling.overlap: must be an integer"),
    ({"model": {"backend": "tensorrt"}}, "model.backend: must be one of"),
    ({"model": {"threads": 0}}, "model.threads"),
    ({"model": {"memory": "shared"}}, "model.memory"),
    ({"detection": {"score_threshold": 1.5}}, "detection.score_threshold"),
    ({"detection": {"merge": "wbf"}}, "detection.merge"),
    ({"screening": {"enabled": "yes"}}, "screening.enabled: must be true or false"),
    ({"sensor": {"bands": []}}, "sensor.bands"),
    ({"sensor": {"bands": [0, 1, 99]}}, "sensor.bands[2]"),
    ({"sensor": {"gain": [1.0, 2.0]}}, "sensor.gain: needs 1 or 3 values"),
    ({"downlink": {"max_packet_bytes": 10}}, "downlink.max_packet_bytes"),
    ({"data": {"dir": ""}}, "data.dir"),
    ({"input": 3}, "input: must be a table"),
])
def test_bad_values_name_the_key(doc, key):
    with pytest.raises(ConfigError) as e:
        validate(doc)
    assert str(e.value).startswith(key)


def test_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 'ship'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    good = tmp_path / "good.toml"
    good.write_text('[model]\nname = "trees"\n[tiling]\noverlap = 64\n')
    cfg = load_config(good)
    assert cfg.model["name"] == "trees" and cfg.tiling["overlap"] == 64
    assert cfg.detection == DEFAULTS["detection"]


def test_overrides_are_validated():
    cfg = apply_overrides(default_config(), {"tiling.overlap": 48, "model.variant": None})
    assert cfg.tiling["overlap"] == 48 and cfg.model["variant"] is None
    with pytest.raises(ConfigError, match="tiling.overlap"):
        apply_overrides(cfg, {"tiling.overlap": -5})
    with pytest.raises(ConfigError, match="nope.x: unknown key"):
        apply_overrides(cfg, {"nope.x": 1})


def test_vlm_defaults_are_off_and_complete():
    v = default_config().vlm
    assert v["enabled"] is False and v["model_dir"] is None and v["question"] is None
    assert set(v) == {"enabled", "model_dir", "variant", "threads", "max_new_tokens", "deadline_s",
                      "tile", "overlap", "max_tiles", "image_max_side", "task", "question",
                      "merge_threshold", "memory"}
    assert v["memory"] == "copy"   # ONNX Runtime's own copy unless the mission asks for scrubbing
    on = validate({"vlm": {"enabled": True, "model_dir": "models/vlm/tiny", "variant": "q8",
                           "task": "grounding", "question": "ships", "deadline_s": 5}})
    assert on.vlm["enabled"] and on.vlm["task"] == "grounding" and on.vlm["deadline_s"] == 5


@pytest.mark.parametrize("vlm, key", [
    ({"enabled": "yes"}, "vlm.enabled: must be true or false"),
    ({"enabled": True}, "vlm.model_dir: required when vlm.enabled"),
    ({"model_dir": ""}, "vlm.model_dir: must be a non-empty string"),
    ({"variant": "int3"}, "vlm.variant: must be one of"),
    ({"threads": 0}, "vlm.threads: must be in"),
    ({"max_new_tokens": 0}, "vlm.max_new_tokens: must be in"),
    ({"max_new_tokens": 1.5}, "vlm.max_new_tokens: must be an integer"),
    ({"deadline_s": 0}, "vlm.deadline_s: must be in"),
    ({"deadline_s": "60"}, "vlm.deadline_s: must be a number"),
    ({"tile": 16}, "vlm.tile: must be in"),
    ({"tile": 256, "overlap": 256}, "vlm.overlap: must be smaller than vlm.tile"),
    ({"max_tiles": 0}, "vlm.max_tiles: must be in"),
    ({"image_max_side": 8}, "vlm.image_max_side: must be in"),
    ({"task": "segment"}, "vlm.task: must be one of"),
    ({"question": ""}, "vlm.question: must be a non-empty string"),
    ({"question": 3}, "vlm.question: must be a non-empty string"),
    ({"question": "é" * 401}, "vlm.question: at most 800 UTF-8 bytes"),
    ({"question": "\ud800 ships"}, "vlm.question: not valid Unicode"),
    ({"merge_threshold": 1.5}, "vlm.merge_threshold: must be in"),
    ({"colour": 1}, "vlm.colour: unknown key"),
    ({"memory": "shared"}, "vlm.memory: must be one of ['copy', 'owned']"),
    ({"memory": None}, "vlm.memory: must be one of"),
    ({"memory": 1}, "vlm.memory: must be one of"),
])
def test_vlm_bad_values_name_the_key(vlm, key):
    with pytest.raises(ConfigError) as e:
        validate({"vlm": vlm})
    assert str(e.value).startswith(key)


def test_vlm_keys_as_uplinked_overrides():
    """set_config from the ground goes through apply_overrides: the same checks."""
    cfg = apply_overrides(default_config(), {"vlm.enabled": True, "vlm.model_dir": "/flash/vlm",
                                             "vlm.question": "Is the runway clear?"})
    assert cfg.vlm["question"] == "Is the runway clear?"
    with pytest.raises(ConfigError, match="^vlm.model_dir"):
        apply_overrides(default_config(), {"vlm.enabled": True})


def test_vlm_memory_owned_and_independent_of_model_memory():
    """vlm.memory is the VLM's own choice: the detector's model.memory does not set it."""
    on = validate({"vlm": {"enabled": True, "model_dir": "models/vlm/tiny", "memory": "owned"}})
    assert on.vlm["memory"] == "owned" and on.model["memory"] == "copy"
    both = apply_overrides(default_config(), {"model.memory": "owned"})
    assert both.model["memory"] == "owned" and both.vlm["memory"] == "copy"
    cfg = apply_overrides(default_config(), {"vlm.memory": "owned"})
    assert cfg.vlm["memory"] == "owned"
    with pytest.raises(ConfigError, match="^vlm.memory: must be one of"):
        apply_overrides(cfg, {"vlm.memory": "OWNED"})
