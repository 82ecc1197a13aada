"""LiteRT (TensorFlow Lite) backend for .tflite files, fed from the manifest-verified model bytes.

By default the interpreter runs the builtin kernels without the default XNNPACK delegate: then it
computes from the weights inside the model buffer in place (the buffer the scrubber can protect);
xnnpack=True repacks the weights into the delegate's own memory instead.
Integer outputs are dequantized with the scale / zero point the file's output details carry. A
graph whose input is NHWC while the manifest says NCHW gets the batch transposed.
"""
from __future__ import annotations

import ctypes
import sys

import numpy as np

try:  # LiteRT (ai-edge-litert); tflite-runtime has the same Interpreter API where it is what is installed
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
except ImportError:  # pragma: no cover - depends on the board's image
    from tflite_runtime.interpreter import Interpreter, OpResolverType

from edge.backends import Backend
from edge.heads import dequantize


class LiteRTBackend(Backend):
    def __init__(self, model, file, threads: int, xnnpack: bool = False, reference_kernels: bool = False):
        super().__init__(model, file, threads)
        self._blob = file.read_bytes()  # verified; the interpreter reads weights from it: keep it
        if xnnpack and reference_kernels:
            raise ValueError("litert: reference_kernels and xnnpack exclude each other")
        # The optimized builtin kernels round their requantization differently on x86 and ARM (and
        # from the reference kernels): 1-4 steps on a few cells. The reference kernels are portable
        # integer C++, bit-identical on every CPU (about 4x slower): the mode to compare boards.
        resolver = (OpResolverType.AUTO if xnnpack
                    else OpResolverType.BUILTIN_REF if reference_kernels
                    else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.kernels = "xnnpack" if xnnpack else "reference" if reference_kernels else "optimized"
        self.interpreter = Interpreter(model_content=self._blob, num_threads=threads,
                                       experimental_op_resolver_type=resolver)
        self.interpreter.allocate_tensors()
        self.memory = "copy" if xnnpack else "owned"
        inputs = self.interpreter.get_input_details()
        by_name = {d["name"]: d for d in inputs}
        self._input = by_name.get(self.input_name, inputs[0] if len(inputs) == 1 else None)
        if self._input is None:
            raise ValueError(f"{model.name}/{file.variant}: input {self.input_name!r} not in the graph "
                             f"(it has {sorted(by_name)})")
        shape = tuple(int(s) for s in self._input["shape"])
        want = tuple(model.input_shape)
        nchw_to_nhwc = (want[0], want[2], want[3], want[1])
        self._transpose = model.layout == "NCHW" and shape != want and shape == nchw_to_nhwc
        if shape != want and not self._transpose:
            raise ValueError(f"{model.name}/{file.variant}: graph input shape {shape}, manifest {want}")
        outs = {d["name"]: d for d in self.interpreter.get_output_details()}
        self._outputs = {}
        for role, name in self.roles.items():
            if name not in outs:
                raise ValueError(f"{model.name}/{file.variant}: output {name!r} ({role}) not in the "
                                 f"graph (it has {sorted(outs)})")
            d = outs[name]
            scale, zp = d["quantization"]
            quant = (float(scale), int(zp)) if np.dtype(d["dtype"]).kind in "iu" and scale > 0 else None
            self._outputs[role] = (d["index"], quant)

    def weight_regions(self) -> dict:
        """The model bytes the builtin kernels read their weights from, as a writable uint8 view.
        The interpreter only takes `bytes` and keeps a pointer into that object's buffer, so the view
        is made on the object's own storage (CPython lays the data right after the bytes header)."""
        if self.memory != "owned":
            return {}
        offset = sys.getsizeof(b"") - 1  # header size of a bytes object (its data starts there)
        raw = (ctypes.c_uint8 * len(self._blob)).from_address(id(self._blob) + offset)
        view = np.ctypeslib.as_array(raw)
        if view[:8].tobytes() != self._blob[:8]:  # pragma: no cover - another Python layout
            raise RuntimeError("litert: cannot locate the model buffer in memory")
        return {f"{self.model.name}/{self.file.variant}": view}

    def _run_tile(self, x: np.ndarray) -> dict:
        it = self.interpreter
        it.set_tensor(self._input["index"], x.transpose(0, 2, 3, 1) if self._transpose else x)
        it.invoke()
        return {role: dequantize(it.get_tensor(index), quant, role)
                for role, (index, quant) in self._outputs.items()}
