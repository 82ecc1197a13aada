"""Backends: run a manifest model's file on one runtime, outputs mapped to roles.

open_backend(model, variant, threads=1) reads the file's bytes once through the manifest (size and
sha256 verified) and hands them to the runtime named by the file entry:
    "onnxruntime"  .onnx / .ort   edge.backends.ort.OrtBackend
    "litert"       .tflite        edge.backends.litert.LiteRTBackend
A Backend has .input_name, .input_dtype (numpy dtype), .input_shape (the manifest's, e.g.
(1, 3, 256, 256)) and .run(batch) -> {role: float32 array with the batch axis}; integer outputs
are already dequantized. The runtime module is imported only when a backend of its kind opens.

Memory modes (open_backend(..., memory=...)): where the weights the runtime computes from live.
    "copy"   the runtime's own copy (fastest: ONNX Runtime prepacks and fuses; LiteRT may use XNNPACK).
    "owned"  buffers orbit-edge owns and can protect (the scrubber of the reliability design):
             ONNX Runtime gets every initializer through SessionOptions.add_initializer from numpy arrays
             kept here, with prepacking off and graph optimization BASIC, so that every tensor is read
             from those arrays at every run (ARCHITECTURE.md: ~1.9x slower per tile); LiteRT runs the
             builtin kernels without XNNPACK, straight from the verified model bytes.
Backend.weight_regions() lists those buffers as writable uint8 views: flipping a bit there changes what
the model computes (tests/test_backends.py proves it), which is what makes scrubbing them meaningful.
In "copy" mode it is empty: nothing the runtime reads can be protected from Python.
"""
from __future__ import annotations

import numpy as np

from edge.manifest import FileEntry, ModelEntry


class Backend:
    """Common part: input checks and role bookkeeping. Subclasses implement _run_tile."""

    def __init__(self, model: ModelEntry, file: FileEntry, threads: int):
        self.model = model
        self.file = file
        self.threads = threads
        self.input_name = file.input.name
        self.input_dtype = np.dtype(file.input.dtype)
        self.input_shape = tuple(model.input_shape)
        self.roles = dict(file.outputs)  # role -> tensor name
        self.memory = "copy"

    def weight_regions(self) -> dict:
        """{name: writable uint8 view} of the memory the runtime computes from ("owned" mode)."""
        return {}

    def _check(self, batch) -> np.ndarray:
        x = np.asarray(batch)
        if x.dtype != self.input_dtype:
            raise TypeError(f"{self.model.name}/{self.file.variant} takes {self.input_dtype} input, "
                            f"got {x.dtype}")
        if x.ndim != 4 or x.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"batch must have shape (N, {', '.join(map(str, self.input_shape[1:]))}), "
                             f"got {x.shape}")
        return np.ascontiguousarray(x)

    def run(self, batch) -> dict:
        """Outputs of every tile of `batch` (N, ...): {role: (N, ...) float32}."""
        x = self._check(batch)
        if len(x) == 0:
            raise ValueError("batch is empty")
        per_tile = [self._run_tile(x[i:i + 1]) for i in range(len(x))]
        if len(per_tile) == 1:
            return per_tile[0]
        return {role: np.concatenate([t[role] for t in per_tile]) for role in self.roles}

    def _run_tile(self, x: np.ndarray) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


def _quant_of(file: FileEntry, role: str):
    """(scale, zero_point) of an integer output from the manifest's optional output_quantization."""
    q = file.raw.get("output_quantization", {}).get(role)
    return None if q is None else (float(q["scale"]), int(q["zero_point"]))


MEMORY_MODES = ("copy", "owned")


def open_backend(model: ModelEntry, variant: str | None = None, threads: int = 1, *,
                 memory: str = "copy", **options) -> Backend:
    """Open `variant` of `model` (a manifest ModelEntry) on its runtime with `threads` threads.
    memory: "copy" or "owned" (see the module docstring). options go to the runtime's backend
    (litert: xnnpack=False)."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    file = model.file(variant)
    if file.runtime == "onnxruntime":
        from edge.backends.ort import OrtBackend
        return OrtBackend(model, file, threads, memory=memory, **options)
    if file.runtime == "litert":
        from edge.backends.litert import LiteRTBackend
        if memory == "owned" and options.get("xnnpack"):
            raise ValueError("litert: memory='owned' computes from the model bytes in place, which "
                             "XNNPACK does not (it repacks the weights); drop xnnpack")
        return LiteRTBackend(model, file, threads, **options)
    raise ValueError(f"{model.name}/{file.variant}: unknown runtime {file.runtime!r}")


__all__ = ["Backend", "MEMORY_MODES", "open_backend"]
