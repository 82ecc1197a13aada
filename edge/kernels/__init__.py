"""Kernels of the flight runtime: each has a compiled fast path (ext/) and a numpy reference here.

One module per kernel, named after what it computes; arguments are validated there, once, for both paths:
  edge.kernels.tiling:      plan_tiles -> TilePlan
  edge.kernels.preprocess:  build_lut, preprocess_tiles -> TileStats
  edge.kernels.nms:         nms, merge_boxes -> MergeResult
  edge.kernels.crc32c:      crc32c
  edge.kernels.secded:      secded_encode, secded_check, secded_correct -> SecdedReport
`kernel_backend()` tells which implementation serves each kernel; EDGE_PURE_PYTHON=1 forces the references.
"""
from edge.kernels._backend import force_reference, import_errors, kernel_backend

__all__ = ["force_reference", "import_errors", "kernel_backend"]
