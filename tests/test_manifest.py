"""Model manifest (edge/manifest.py): validation naming the key path, integrity of model bytes."""
from __future__ import annotations

import copy
import hashlib
import json

import pytest

from edge.manifest import (DEFAULT_MANIFEST, ManifestError, ModelIntegrityError, load_manifest,
                           parse_manifest, resolve)

BLOB = b"not really a model, but bytes with a hash"


def _doc(tmp_path, blob=BLOB):
    (tmp_path / "m").mkdir(exist_ok=True)
    (tmp_path / "m" / "model.onnx").write_bytes(blob)
    return {"schema": 1, "models": {"ship": {
        "task": "detection", "classes": ["ship"],
        "input": {"shape": [1, 3, 256, 256], "layout": "NCHW", "color": "RGB", "bit_depth": 8},
        "preprocess": {"mean": [0, 0, 0], "std": [255, 255, 255]},
        "head": {"type": "centernet", "stride": 4, "score_threshold": 0.3, "max_detections": 100,
                 "nms_iou": 0.5},
        "files": {"onnx_int8": {
            "path": "m/model.onnx", "format": "onnx", "runtime": "onnxruntime", "precision": "int8",
            "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob),
            "input": {"name": "images", "dtype": "uint8", "scale": 1 / 255, "zero_point": 0},
            "outputs": {"heatmap": "heatmap", "size": "size", "offset": "offset"}}}}}}


def _write(tmp_path, doc):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(doc))
    return path


def test_load_resolve_and_read_verified_bytes(tmp_path):
    path = _write(tmp_path, _doc(tmp_path))
    model, file = resolve("ship", path=path)
    assert file.variant == "onnx_int8" and model.default_variant == "onnx_int8"
    assert model.tile_hw == (256, 256) and model.channels == 3
    assert model.mean == (0, 0, 0) and model.std == (255, 255, 255)
    assert file.input.dtype == "uint8" and file.input.zero_point == 0
    assert file.path == (tmp_path / "m" / "model.onnx").resolve()
    assert file.read_bytes() == BLOB


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["models"]["ship"]["files"]["onnx_int8"].pop("sha256"),
     "models.ship.files.onnx_int8.sha256: missing"),
    (lambda d: d["models"]["ship"]["files"]["onnx_int8"].__setitem__("sha256", "abc"),
     "models.ship.files.onnx_int8.sha256: must be 64"),
    (lambda d: d["models"]["ship"]["files"]["onnx_int8"]["outputs"].pop("offset"),
     "models.ship.files.onnx_int8.outputs.offset: missing"),
    (lambda d: d["models"]["ship"]["files"]["onnx_int8"]["input"].__setitem__("dtype", "int4"),
     "models.ship.files.onnx_int8.input.dtype: must be one of"),
    (lambda d: d["models"]["ship"]["files"]["onnx_int8"]["input"].__setitem__("zero_point", 300),
     "models.ship.files.onnx_int8.input.zero_point: must be in 0..255"),
    (lambda d: d["models"]["ship"]["files"]["onnx_int8"]["input"].__setitem__("scale", 0),
     "models.ship.files.onnx_int8.input.scale: must be > 0"),
    (lambda d: d["models"]["ship"]["files"]["onnx_int8"].__setitem__("runtime", "tvm"),
     "models.ship.files.onnx_int8.runtime: must be one of"),
    (lambda d: d["models"]["ship"]["head"].__setitem__("type", "ssd"),
     "models.ship.head.type: must be one of"),
    (lambda d: d["models"]["ship"]["head"].pop("stride"), "models.ship.head.stride: missing"),
    (lambda d: d["models"]["ship"]["head"].__setitem__("score_threshold", 1.5),
     "models.ship.head.score_threshold: must be in"),
    (lambda d: d["models"]["ship"]["input"].__setitem__("shape", [1, 3, 256]),
     "models.ship.input.shape: must be a list of 4"),
    (lambda d: d["models"]["ship"]["preprocess"].__setitem__("std", [255, 255]),
     "models.ship.preprocess.std: needs 3 values"),
    (lambda d: d["models"]["ship"].__setitem__("classes", []), "models.ship.classes: must be"),
    (lambda d: d["models"]["ship"].__setitem__("files", {}), "models.ship.files: must list"),
    (lambda d: d.__setitem__("schema", 2), "manifest.schema: this runtime reads schema 1"),
    (lambda d: d.pop("models"), "manifest.models: missing"),
])
def test_validation_errors_name_the_key_path(tmp_path, edit, message):
    doc = _doc(tmp_path)
    edit(doc)
    with pytest.raises(ManifestError) as err:
        parse_manifest(doc, tmp_path)
    assert str(err.value).startswith(message), str(err.value)


def test_yolo_head_needs_a_predictions_output(tmp_path):
    doc = _doc(tmp_path)
    doc["models"]["ship"]["head"] = {"type": "yolov8", "score_threshold": 0.25}
    with pytest.raises(ManifestError, match="models.ship.files.onnx_int8.outputs.predictions: missing"):
        parse_manifest(doc, tmp_path)
    doc["models"]["ship"]["files"]["onnx_int8"]["outputs"] = {"predictions": "output0"}
    assert parse_manifest(copy.deepcopy(doc), tmp_path).model("ship").head["type"] == "yolov8"


def test_sha256_mismatch_names_file_and_both_hashes(tmp_path):
    doc = _doc(tmp_path)
    path = _write(tmp_path, doc)
    tampered = bytearray(BLOB)
    tampered[0] ^= 0x01  # one flipped bit, same size
    (tmp_path / "m" / "model.onnx").write_bytes(bytes(tampered))
    _, file = resolve("ship", path=path)
    with pytest.raises(ModelIntegrityError) as err:
        file.read_bytes()
    msg = str(err.value)
    assert "model.onnx" in msg and doc["models"]["ship"]["files"]["onnx_int8"]["sha256"] in msg
    assert hashlib.sha256(bytes(tampered)).hexdigest() in msg


def test_size_mismatch_and_missing_file(tmp_path):
    path = _write(tmp_path, _doc(tmp_path))
    (tmp_path / "m" / "model.onnx").write_bytes(BLOB + b"!")
    _, file = resolve("ship", path=path)
    with pytest.raises(ModelIntegrityError, match="bytes, the manifest says"):
        file.read_bytes()
    (tmp_path / "m" / "model.onnx").unlink()
    with pytest.raises(ModelIntegrityError, match="cannot read"):
        file.read_bytes()


def test_unknown_model_variant_and_unreadable_manifest(tmp_path):
    path = _write(tmp_path, _doc(tmp_path))
    with pytest.raises(ManifestError, match="models.trees: no such model"):
        resolve("trees", path=path)
    with pytest.raises(ManifestError, match="models.ship.files.tflite_int8: no such variant"):
        resolve("ship", "tflite_int8", path=path)
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path / "bad.json")


def test_environment_variable_selects_the_manifest(tmp_path, monkeypatch):
    path = _write(tmp_path, _doc(tmp_path))
    monkeypatch.setenv("EDGE_MANIFEST", str(path))
    assert list(load_manifest().models) == ["ship"]


def test_shipped_manifest_validates_and_every_file_matches():
    manifest = load_manifest(DEFAULT_MANIFEST)
    assert manifest.models
    for model in manifest.models.values():
        for file in model.files.values():
            assert len(file.read_bytes()) == file.size
