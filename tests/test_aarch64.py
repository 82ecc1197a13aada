"""The kernels on aarch64: the cross-built wheel's differential tests inside an arm64 Debian rootfs.

firmware_sim/cross_wheel.sh gives the manylinux aarch64 wheel (a no-op when it is up to date) and
firmware_sim/rootfs.sh the cached arm64 rootfs with numpy, pytest, hypothesis and crc32c. Each run
unpacks the wheel and the kernel test files into its own directory under the rootfs's /tmp and
removes it afterwards, so the cached rootfs never holds a wheel. qemu-user runs the guest's
python3 through binfmt_misc; /proc and /sys stay unmounted (nothing here needs them).
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import uuid
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.aarch64

REPO = Path(__file__).resolve().parent.parent
#: The kernel differential tests and the (numpy-only) head decoders: they import numpy, pytest,
#: hypothesis, crc32c, edge and repository helpers outside edge/ (bench/boxgen.py), copied along.
KERNEL_TESTS = ["test_tiling.py", "test_preprocess.py", "test_nms.py", "test_crc32c.py", "test_secded.py",
                "test_heads.py"]
#: qemu-user runs the kernels ~10x slower than the host: conftest.examples() scales hypothesis by
#: this (0.25 keeps the guest run near 40 s here).
GUEST_EXAMPLES_SCALE = "0.25"
#: Upper bound of the guest test run (it takes a few minutes at most; a hang must not stall CI).
GUEST_TIMEOUT_S = 1800

# What the guest reports about itself: CPU, where edge came from, who serves each kernel, CRC path.
PROBE = """
import json, platform, edge, edge.kernels as k
from edge.kernels import crc32c as crc_kernel
path_of = getattr(crc_kernel, "crc32c_path", None) or getattr(crc_kernel._fast, "crc32c_path", None)
print(json.dumps({"machine": platform.machine(), "edge": edge.__file__,
                  "backend": k.kernel_backend(), "errors": k.import_errors(),
                  "crc32c_path": path_of() if path_of else None}))
"""


def _script(name: str, *args: str) -> Path:
    """Run a firmware_sim script; its last stdout line is the path it made."""
    proc = subprocess.run(["bash", str(REPO / "firmware_sim" / name), *args], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-4000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


def _repo_helpers(files: list[Path]) -> list[Path]:
    """Repository modules outside edge/ and tests/ that `files` import, transitively: the tests'
    data generators (bench/boxgen.py for the NMS tests). The wheel serves edge, so no edge/ sources."""
    todo, found = list(files), set()
    while todo:
        for node in ast.walk(ast.parse(todo.pop().read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for parts in (n.split(".") for n in names):
                if parts[0] in ("edge", "tests"):
                    continue
                for i in range(1, len(parts) + 1):
                    base = REPO.joinpath(*parts[:i])
                    for cand in (base / "__init__.py", base.with_suffix(".py")):
                        if cand.is_file() and cand not in found:
                            found.add(cand)
                            todo.append(cand)
    return sorted(found)


@pytest.fixture(scope="module")
def wheel() -> Path:
    path = _script("cross_wheel.sh", str(REPO / "dist"))
    assert path.is_file() and re.search(r"-manylinux\S*_aarch64\.whl$", path.name), path
    return path


@pytest.fixture(scope="module")
def rootfs() -> Path:
    path = _script("rootfs.sh")
    assert (path / "usr/bin/python3").exists(), path
    return path


@pytest.fixture(scope="module")
def guest_run(wheel, rootfs):
    """A per-run directory inside the rootfs: the unpacked wheel (site/) and the tests (proj/)."""
    name = f"orbit-edge-{uuid.uuid4().hex[:12]}"
    host_dir = rootfs / "tmp" / name
    site, proj = host_dir / "site", host_dir / "proj"
    try:
        (proj / "tests").mkdir(parents=True)
        with zipfile.ZipFile(wheel) as zf:
            assert not [n for n in zf.namelist() if ".data/" in n], "wheel has a .data dir to install"
            zf.extractall(site)
        # pyproject.toml for pytest's settings (markers, pythonpath); no edge/ sources: the wheel serves.
        shutil.copy2(REPO / "pyproject.toml", proj / "pyproject.toml")
        tests = [t for t in ["conftest.py", *KERNEL_TESTS] if (REPO / "tests" / t).exists()]
        sources = [REPO / "tests" / t for t in tests]
        for src in sources + _repo_helpers(sources):
            dest = proj / src.relative_to(REPO)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        yield {"rootfs": rootfs, "guest_dir": f"/tmp/{name}", "tests": tests[1:]}
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


def _guest(run, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run argv in the chroot, from the run's proj/ directory, in a clean environment."""
    gdir = run["guest_dir"]
    env = {  # nothing of the host's: no EDGE_PURE_PYTHON, no host PYTHONPATH
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": gdir, "LANG": "C.UTF-8",
        "PYTHONPATH": f"{gdir}/site", "PYTHONDONTWRITEBYTECODE": "1",
        "EDGE_TEST_EXAMPLES_SCALE": GUEST_EXAMPLES_SCALE,
    }
    chroot = shutil.which("chroot", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "chroot"
    return subprocess.run([chroot, str(run["rootfs"]), "/usr/bin/env", "-C", f"{gdir}/proj", *argv],
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_guest_uses_compiled_aarch64_kernels(guest_run):
    proc = _guest(guest_run, "/usr/bin/python3", "-c", PROBE)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["machine"] == "aarch64", report
    assert report["edge"].startswith(f"{guest_run['guest_dir']}/site/"), report
    assert set(report["backend"].values()) == {"compiled"}, report
    # qemu's default CPU has the ARMv8 CRC32 instructions: the run-time HWCAP check must pick them.
    assert report["crc32c_path"] == "armv8-crc", report


def test_kernel_differential_tests_pass_on_aarch64(guest_run):
    tests = guest_run["tests"]
    assert "test_tiling.py" in tests, tests
    proc = _guest(guest_run, "/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  f"--basetemp={guest_run['guest_dir']}/pytest-tmp",
                  *[f"tests/{t}" for t in tests], timeout=GUEST_TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\b[1-9]\d* passed\b", summary), summary
    # Every kernel test ran its compiled half: a skip here means the compiled path did not serve.
    assert "skipped" not in summary and "deselected" not in summary, out[-6000:]
