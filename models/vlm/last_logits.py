"""Ground-side model preparation: rewrite an LFM2-VL decoder so that it computes the logits of the LAST
position only.

    python -m models.vlm.last_logits SRC.onnx DST.onnx       (the `onnx` package; never on board)

An export as Liquid ships it (and as models/vlm/build.py writes it) returns logits for every position,
[B, T, vocab]: at the prefill that is the language-model head over the whole prompt, although greedy
decoding reads only the last row (for the 450M model, 65,536 x 1,024 multiply-adds per prompt token:
about a fifth of the prefill's work at a 361-token prompt). This inserts one Slice (the last position
along axis 1) in front of the head -- the MatMul / MatMulInteger / MatMulNBits / Gemm nearest to the
`logits` output, or its DynamicQuantizeLinear in a quantize_dynamic graph -- and declares the output
[B, 1, vocab]. Nothing else changes: every other node, name and cache tensor stays as it was. The flight
runtime reads the fixed 1 from the session (DecoderSpec.last_logits_only) and sizes its prefill buffer
for one row; an unmodified export keeps working as before.

In a quantize_dynamic graph the head's activation scale is then computed from the last row alone instead
of the whole prompt's rows (a per-tensor scale over fewer values: at least as fine).
"""
from __future__ import annotations

import argparse
import collections
import sys

import numpy as np

HEADS = ("MatMul", "MatMulInteger", "MatMulNBits", "Gemm")
INT64_MAX = np.iinfo(np.int64).max


class RewriteError(ValueError):
    """The graph is not a decoder this rewrite understands (the message says why)."""


def _head(graph, producers, initializers):
    """The matrix product nearest to `logits` (breadth-first back through the graph)."""
    if "logits" not in producers:
        raise RewriteError("no node produces an output named 'logits'")
    queue, seen = collections.deque([producers["logits"]]), set()
    while queue:
        node = queue.popleft()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in HEADS:
            return node
        for name in node.input:
            if name in producers and name not in initializers:
                queue.append(producers[name])
    raise RewriteError("no MatMul / MatMulInteger / MatMulNBits / Gemm leads to 'logits'")


def last_position_logits(model):
    """The rewritten ModelProto (a copy); RewriteError when the graph has no head to slice in front of,
    or already gives one position."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    out = next((o for o in g.output if o.name == "logits"), None)
    if out is None:
        raise RewriteError("the graph has no output named 'logits'")
    dims = out.type.tensor_type.shape.dim
    if len(dims) != 3:
        raise RewriteError(f"logits has rank {len(dims)}, expected [batch, positions, vocab]")
    if dims[1].HasField("dim_value") and dims[1].dim_value == 1:
        raise RewriteError("logits already has one position")
    producers = {o: n for n in g.node for o in n.output}
    initializers = {i.name for i in g.initializer}
    head = _head(g, producers, initializers)
    x = head.input[0]
    consumer = head
    if x in producers and producers[x].op_type == "DynamicQuantizeLinear":
        consumer = producers[x]          # slice the float activations before they are quantized
        x = consumer.input[0]
    sliced = f"{x}__last_position"
    consts = {"starts": [-1], "ends": [INT64_MAX], "axes": [1]}
    names = {k: f"{sliced}__{k}" for k in consts}
    for k, v in consts.items():
        g.initializer.append(numpy_helper.from_array(np.asarray(v, np.int64), names[k]))
    node = helper.make_node("Slice", [x, names["starts"], names["ends"], names["axes"]], [sliced],
                            name=f"{sliced}__slice")
    for i, name in enumerate(consumer.input):
        if name == x:
            consumer.input[i] = sliced
    # keep the node list topologically sorted: the Slice goes right before its consumer
    nodes = list(g.node)
    at = next(i for i, n in enumerate(nodes) if n is consumer or n == consumer)
    nodes.insert(at, node)
    del g.node[:]
    g.node.extend(nodes)
    dims[1].Clear()
    dims[1].dim_value = 1
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.vlm.last_logits", description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    args = ap.parse_args(argv)
    import onnx

    try:
        model = last_position_logits(onnx.load(args.src))
    except RewriteError as e:
        print(f"{args.src}: {e}", file=sys.stderr)
        return 2
    big = model.ByteSize() > 1_800_000_000
    onnx.save(model, args.dst, save_as_external_data=big, location=f"{args.dst.rsplit('/', 1)[-1]}_data"
              if big else None)
    print(args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
