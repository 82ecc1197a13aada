"""Compiled kernels of orbit-edge.

Every module here has a numpy reference twin in edge/kernels/; edge/kernels/_backend.py picks one.
Flags: -ffp-contract=off keeps GCC from fusing a*b+c into FMA (it does by default on aarch64), so
the floating-point kernels round exactly like their numpy twins on every target.
"""
import os
import sysconfig

from Cython.Build import cythonize
from pybind11.setup_helpers import Pybind11Extension
from setuptools import Extension, setup

HOST = os.environ.get("_PYTHON_HOST_PLATFORM") or sysconfig.get_platform()
IS_AARCH64 = "aarch64" in HOST or "arm64" in HOST

COMMON_C = ["-O3", "-ffp-contract=off", "-fno-strict-aliasing"]
if IS_AARCH64:
    # Baseline ARMv8-A: NEON is always there; the CRC extension is used only after a run-time
    # HWCAP check (ext/crc32c.c), so the wheel still loads on cores without it.
    COMMON_C += ["-march=armv8-a"]

# Development aid: EDGE_ONLY=_nms,_tiling builds just those modules.
_only_env = {n.strip() for n in os.environ.get("EDGE_ONLY", "").split(",") if n.strip()}
_cython_sources = [
    Extension("edge._ext._tiling", ["ext/tiling.pyx"], extra_compile_args=list(COMMON_C)),
    Extension("edge._ext._preprocess", ["ext/preprocess.pyx", "ext/preprocess_core.c"],
              include_dirs=["ext"], depends=["ext/preprocess_core.h"],
              extra_compile_args=list(COMMON_C)),
    Extension("edge._ext._integrity", ["ext/integrity.pyx", "ext/crc32c.c", "ext/secded.c"],
              include_dirs=["ext"], depends=["ext/crc32c.h", "ext/secded.h"],
              extra_compile_args=list(COMMON_C)),
]
if _only_env:
    _cython_sources = [e for e in _cython_sources if e.name.rsplit(".", 1)[-1] in _only_env]
cython_exts = cythonize(
    _cython_sources,
    compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False,
                         "cdivision": True, "initializedcheck": False},
)

# (a copy of the flags per extension: Pybind11Extension appends to the list it is given)
nms_ext = Pybind11Extension(
    "edge._ext._nms", ["ext/nms.cpp"], include_dirs=["ext"], depends=["ext/nms_core.hpp"], cxx_std=17,
    extra_compile_args=list(COMMON_C),
)

ext_modules = [*cython_exts, nms_ext]
if _only_env:
    ext_modules = [e for e in ext_modules if e.name.rsplit(".", 1)[-1] in _only_env]

setup(ext_modules=ext_modules)
