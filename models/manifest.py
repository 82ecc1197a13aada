"""Write / update models/manifest.json (schema 1), the only way the runtime finds a model.

Entries are replaced per model name, so building one model leaves the others untouched. Paths in the
manifest are relative to models/; sha256 and size are computed from the file bytes on disk.
"""
from __future__ import annotations

import hashlib
import json
import os

SCHEMA = 1
MODELS_DIR = os.path.dirname(os.path.abspath(__file__))
MANIFEST_PATH = os.path.join(MODELS_DIR, "manifest.json")
VARIANTS = ("onnx_fp32", "onnx_int8", "ort_int8", "tflite_int8")


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def file_entry(rel_path: str, *, fmt: str, runtime: str, precision: str, input_name: str, input_dtype: str,
               input_scale: float, input_zero_point: int, outputs: dict, models_dir: str = MODELS_DIR,
               **extra) -> dict:
    """One "files" entry; sha256 and size read from models_dir/rel_path."""
    path = os.path.join(models_dir, rel_path)
    entry = {"path": rel_path, "format": fmt, "runtime": runtime, "precision": precision,
             "sha256": sha256_of(path), "size": os.path.getsize(path),
             "input": {"name": input_name, "dtype": input_dtype, "scale": float(input_scale),
                       "zero_point": int(input_zero_point)},
             "outputs": dict(outputs)}
    entry.update(extra)
    return entry


def load(path: str = MANIFEST_PATH) -> dict:
    if not os.path.exists(path):
        return {"schema": SCHEMA, "models": {}}
    with open(path) as f:
        data = json.load(f)
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {data.get('schema')!r}, this writer knows {SCHEMA}")
    return data


def save(data: dict, path: str = MANIFEST_PATH) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)  # a reader never sees half a manifest


def update_model(name: str, entry: dict, path: str = MANIFEST_PATH) -> dict:
    """Replace (or add) one model entry; other models stay as they are."""
    data = load(path)
    data["models"][name] = entry
    data["models"] = dict(sorted(data["models"].items()))
    save(data, path)
    return data


def set_metrics(name: str, variant: str, metrics: dict, path: str = MANIFEST_PATH) -> None:
    data = load(path)
    data["models"][name].setdefault("metrics", {})[variant] = metrics
    save(data, path)


def verify(path: str = MANIFEST_PATH) -> list[str]:
    """Problems found (missing files, sha256/size mismatch); empty when the manifest matches the disk."""
    problems = []
    for name, model in load(path)["models"].items():
        for variant, f in model.get("files", {}).items():
            p = os.path.join(os.path.dirname(path), f["path"])
            if not os.path.exists(p):
                problems.append(f"{name}/{variant}: {f['path']} missing")
            elif sha256_of(p) != f["sha256"] or os.path.getsize(p) != f["size"]:
                problems.append(f"{name}/{variant}: {f['path']} does not match its sha256/size")
    return problems


def results_table(path: str = MANIFEST_PATH) -> str:
    """Markdown table of every model/variant's metrics (pasted into models/README.md)."""
    rows = ["| model | variant | runtime | size (bytes) | AP50 | precision | recall | threshold | "
            "tile latency 1 thread (ms) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, model in load(path)["models"].items():
        for variant, f in model.get("files", {}).items():
            m = model.get("metrics", {}).get(variant, {})
            g = lambda k: "" if m.get(k) is None else f"{m[k]:.3f}" if isinstance(m[k], float) else str(m[k])
            rows.append(f"| {name} | {variant} | {f['runtime']} | {f['size']} | {g('ap50')} | {g('precision')} | "
                        f"{g('recall')} | {g('threshold')} | {g('tile_latency_ms_1thread')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["table"]:
        print(results_table())
    else:
        problems = verify()
        print("\n".join(problems) if problems else "manifest matches the files on disk")
        sys.exit(1 if problems else 0)
