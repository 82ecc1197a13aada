"""One place picks the kernels: compiled when importable, the numpy reference otherwise or when forced."""
import json
import os
import subprocess
import sys

import pytest

from edge.kernels import _backend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, **env) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "EDGE_PURE_PYTHON"}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full_env, check=True,
                         capture_output=True, text=True)
    return out.stdout


def test_compiled_kernels_serve_in_the_test_build():
    if _backend.force_reference():
        pytest.skip("EDGE_PURE_PYTHON=1 run: the reference serves by request")
    assert _backend.kernel_backend() == {k: "compiled" for k in _backend.KERNELS}, \
        _backend.import_errors()


def test_env_var_forces_reference():
    out = _python("from edge.kernels import kernel_backend; import json; print(json.dumps(kernel_backend()))",
                  EDGE_PURE_PYTHON="1")
    assert set(json.loads(out).values()) == {"reference"}


def test_missing_compiled_module_falls_back_to_reference():
    code = ("import sys; sys.modules['edge._ext._tiling'] = None\n"  # import of it now raises ImportError
            "from edge.kernels import kernel_backend, import_errors\n"
            "from edge.kernels.tiling import plan_tiles\n"
            "b = kernel_backend(); assert b['tiling'] == 'reference', b\n"
            "assert 'tiling' in import_errors()\n"
            "print(plan_tiles(10, 10, 4, 1).origins.tolist())")
    out = _python(code)
    assert out.strip() == "[[0, 0], [0, 3], [0, 6], [3, 0], [3, 3], [3, 6], [6, 0], [6, 3], [6, 6]]"


def test_edge_info_reports_backends():
    out = _python("from edge.cli import main; main(['info'])")
    report = json.loads(out)
    assert set(report["kernels"]) == set(_backend.KERNELS)
    assert report["version"]
