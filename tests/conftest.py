"""Shared test helpers: run a kernel's public entry point through both implementations."""
from __future__ import annotations

import contextlib
import os

import pytest

from edge.kernels import _backend
from edge.kernels._backend import reference_only  # noqa: F401  (tests import it from here)


#: Hypothesis example counts are scaled by EDGE_TEST_EXAMPLES_SCALE (e.g. 0.1 inside the arm64 rootfs
#: under qemu-user, which is ~10x slower); every test writes `max_examples=examples(N)`.
EXAMPLES_SCALE = float(os.environ.get("EDGE_TEST_EXAMPLES_SCALE", "1"))


def examples(n: int) -> int:
    return max(5, int(n * EXAMPLES_SCALE))


def compiled_of(module):
    """The compiled module behind a kernel module. A missing build fails the test run, unless
    EDGE_PURE_PYTHON forces the reference (then the compiled half of a test is skipped, saying so)."""
    if module._fast is None:
        if _backend.force_reference():
            pytest.skip("EDGE_PURE_PYTHON=1: compiled kernels are switched off")
        pytest.fail(f"compiled kernel for {module.__name__} is not importable: "
                    f"{_backend.import_errors()}")
    return module._fast




def run_both(module, fn, *args, **kwargs):
    """Call public `fn` of kernel `module` with the reference, then the compiled path.
    Returns (reference_result, compiled_result)."""
    compiled_of(module)
    with reference_only(module):
        ref = fn(*args, **kwargs)
    fast = fn(*args, **kwargs)
    return ref, fast


@pytest.fixture(params=["reference", "compiled"])
def impl(request):
    """Parametrize a test over both implementations: yields the name; patch with `use_impl`."""
    return request.param


def use_impl(module, name):
    """Context manager: run `module` with implementation `name` ('reference' or 'compiled')."""
    if name == "compiled":
        compiled_of(module)
        return contextlib.nullcontext()
    return reference_only(module)
