"""`pip install .` builds every compiled kernel from a fresh source tree (PEP 517, isolated build)."""
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pip_install_builds_all_kernels(tmp_path):
    # A copy of the tracked sources only (no in-place .so, no build/): what a fresh clone holds.
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    for rel in files:
        if not os.path.exists(os.path.join(REPO, rel)):
            continue
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(REPO, rel), dest)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(src)], check=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    code = ("import json, edge.kernels as k; "
            "print(json.dumps({'file': k.__file__, 'backend': k.kernel_backend()}))")
    env = {k: v for k, v in os.environ.items() if k != "EDGE_PURE_PYTHON"}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    report = json.loads(out)
    assert report["file"].startswith(str(target))
    assert set(report["backend"].values()) == {"compiled"}, report
