"""The one place that picks compiled kernels or their numpy reference twins.

Modelled on msgpack's choice between its Cython packer and fallback.py: each kernel module asks
`compiled(name)` once at import for its fast module; when that is None (not built, not importable,
or EDGE_PURE_PYTHON=1) the module's numpy reference serves. Callers never know which.
"""
from __future__ import annotations

import contextlib
import importlib
import os

#: Kernel modules and the compiled module that serves each.
KERNELS = {
    "tiling": "edge._ext._tiling",
    "preprocess": "edge._ext._preprocess",
    "nms": "edge._ext._nms",
    "crc32c": "edge._ext._integrity",
    "secded": "edge._ext._integrity",
}


def force_reference() -> bool:
    """True when EDGE_PURE_PYTHON asks for the numpy reference kernels."""
    return os.environ.get("EDGE_PURE_PYTHON", "").strip().lower() not in ("", "0", "false", "no")


_FORCE = force_reference()
_import_errors: dict[str, str] = {}


def compiled(kernel: str):
    """The compiled module serving `kernel`, or None when the reference must serve."""
    if _FORCE:
        return None
    try:
        return importlib.import_module(KERNELS[kernel])
    except ImportError as exc:  # not built here: the reference twin serves
        _import_errors[kernel] = str(exc)
        return None


def kernel_backend() -> dict[str, str]:
    """Which implementation serves each kernel now: 'compiled' or 'reference'."""
    modules = {name: importlib.import_module(f"edge.kernels.{name}") for name in KERNELS}
    return {name: ("compiled" if mod._fast is not None else "reference")
            for name, mod in modules.items()}


def import_errors() -> dict[str, str]:
    """Why a compiled module could not be imported (empty when all are in use or forced off)."""
    return dict(_import_errors)


@contextlib.contextmanager
def reference_only(module):
    """Within the block, kernel `module` (e.g. edge.kernels.nms) serves its numpy reference.
    For differential tests and benchmarks; not thread-safe (it swaps the module's fast path)."""
    saved = module._fast
    module._fast = None
    try:
        yield
    finally:
        module._fast = saved
