"""Compiled kernels (built from ext/). Import them only through edge.kernels._backend."""
