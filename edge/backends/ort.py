"""ONNX Runtime backend (.onnx and .ort files) fed from the manifest-verified model bytes."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edge.backends import Backend, _quant_of
from edge.heads import dequantize


class OrtBackend(Backend):
    def __init__(self, model, file, threads: int):
        super().__init__(model, file, threads)
        blob = file.read_bytes()  # verified; the session copies the weights, the bytes can go
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1  # one graph at a time: a second pool would only contend
        so.log_severity_level = 3
        if file.format == "ort":  # say so rather than rely on sniffing the flatbuffer identifier
            so.add_session_config_entry("session.load_model_format", "ORT")
        self.session = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        names = {o.name for o in self.session.get_outputs()}
        missing = {r: n for r, n in self.roles.items() if n not in names}
        if missing:
            raise ValueError(f"{model.name}/{file.variant}: outputs {missing} not in the graph "
                             f"(it has {sorted(names)})")
        inputs = [i.name for i in self.session.get_inputs()]
        if self.input_name not in inputs:
            raise ValueError(f"{model.name}/{file.variant}: input {self.input_name!r} not in the graph "
                             f"(it has {inputs})")
        self._names = list(self.roles.values())
        self._quant = {r: _quant_of(file, r) for r in self.roles}

    def _run_tile(self, x: np.ndarray) -> dict:
        outs = self.session.run(self._names, {self.input_name: x})
        return {role: dequantize(o, self._quant[role], role) for role, o in zip(self.roles, outs)}
