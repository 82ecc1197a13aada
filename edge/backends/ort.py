"""ONNX Runtime backend (.onnx and .ort files) fed from the manifest-verified model bytes.

memory="owned" (.onnx only): the initializers are parsed out of the verified bytes with the `onnx`
package (imported only then) into numpy arrays this backend keeps, and handed to the session with
SessionOptions.add_initializer; prepacking is disabled and graph optimization is BASIC so that no
kernel makes a private copy. (The option session.use_ort_model_bytes_for_initializers would avoid
the parse, but gives wrong outputs from Python: ORT frees the buffer early. See ARCHITECTURE.md.)
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edge.backends import Backend, _quant_of
from edge.heads import dequantize


class OrtBackend(Backend):
    def __init__(self, model, file, threads: int, memory: str = "copy"):
        super().__init__(model, file, threads)
        blob = file.read_bytes()  # verified; the session copies the weights, the bytes can go
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1  # one graph at a time: a second pool would only contend
        so.log_severity_level = 3
        if file.format == "ort":  # say so rather than rely on sniffing the flatbuffer identifier
            so.add_session_config_entry("session.load_model_format", "ORT")
        self.memory = memory
        self._weights: dict = {}
        self._ortvalues = []  # keep the OrtValues (and so the arrays) alive as long as the session
        if memory == "owned":
            if file.format != "onnx":
                raise ValueError(f"{model.name}/{file.variant}: memory='owned' needs an .onnx file "
                                 f"(its initializers are parsed out); {file.format!r} files run 'copy'")
            self._weights = _initializers(blob, f"{model.name}/{file.variant}")
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            so.add_session_config_entry("session.disable_prepacking", "1")
            for name, arr in self._weights.items():
                value = ort.OrtValue.ortvalue_from_numpy(arr)
                self._ortvalues.append(value)
                so.add_initializer(name, value)
        try:
            self.session = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for a malformed graph
            raise ValueError(f"{model.name}/{file.variant}: ONNX Runtime cannot load "
                             f"{file.path.name}: {str(e)[:300]}") from e
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

    def weight_regions(self) -> dict:
        """Every initializer array the session computes from ("owned" mode), as uint8 views."""
        return {name: arr.reshape(-1).view(np.uint8) for name, arr in self._weights.items()
                if arr.nbytes}


def _initializers(blob: bytes, label: str) -> dict:
    """name -> C-contiguous numpy array (owned here) of every initializer of an ONNX model."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:  # pragma: no cover - depends on the board's image
        raise ValueError(f"{label}: memory='owned' needs the onnx package ({e})") from e
    try:
        graph = onnx.load_from_string(blob).graph
    except Exception as e:  # protobuf's DecodeError and friends
        raise ValueError(f"{label}: not a readable ONNX model: {str(e)[:200]}") from e
    return {t.name: np.ascontiguousarray(numpy_helper.to_array(t)).copy() for t in graph.initializer}
