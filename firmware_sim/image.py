"""The emulated flight board's images: kernel, initramfs, read-only root disk. Built or reused.

    python -m firmware_sim.image            (as root; prints the image directory last)

Three layers, each cached under ~/.cache/orbit-edge/sim/ (ORBIT_EDGE_CACHE overrides the parent) and
keyed by everything that goes into it, so a change rebuilds only what depends on it:

  boot-<key>/   vmlinuz + initrd.gz. Debian's arm64 kernel package (the one the host's
                `linux-image-arm64:arm64` metapackage depends on) and busybox-static:arm64, both fetched
                with `apt-get download` from the host's own apt sources (mirror and versions are read
                from the host, never written here). The initramfs holds busybox, the kernel modules the
                board needs (MODULES, with their dependencies from `depmod`'s modules.dep, loaded in
                dependency order) and guest/initramfs-init: it mounts the root disk read-only and
                switches to it. Key: package versions, module list, the init script.
  base-<key>/   the root file system without orbit-edge: `mmdebstrap --arch=arm64 --variant=minbase
                --include=python3` of the host's release, plus the aarch64 wheels of the flight runtime
                (numpy, cbor2, onnxruntime, ai-edge-litert; versions from requirements-dev.txt) installed
                from the host with pip's --platform flags (~80 s + ~10 s). Key: apt sources, arguments,
                pins.
  image-<key>/  root.img: base + the orbit-edge aarch64 wheel (`make wheel-aarch64`) + the shipped
                models (/opt/orbit-edge/models) + guest/orbit-init (/sbin/orbit-init) and
                guest/sim_actions.py, as an ext4 image made by `mke2fs -d` (no loop mount). Key: base
                key, the wheel's sha256, the model files, the guest files.
Only the newest of each layer is kept. `ensure_images()` returns their paths and what was built, with
the time each step took (docs/sim.md quotes cold and warm figures).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "firmware_sim" / "guest"
CACHE = Path(os.environ.get("ORBIT_EDGE_CACHE", Path.home() / ".cache" / "orbit-edge")) / "sim"
#: Kernel modules the board needs (dependencies come from modules.dep): the virtio disks and PCI
#: transport, ext4 (with the crc32c its metadata checksums use), the virtio-serial radio ports and the
#: i6300esb watchdog.
MODULES = ("crc32c_generic", "ext4", "virtio_pci", "virtio_blk", "virtio_console", "i6300esb")
#: The flight runtime's third-party packages in the guest (versions: requirements-dev.txt).
RUNTIME_PACKAGES = ("numpy", "cbor2", "onnxruntime", "ai-edge-litert",
                    # the on-board VLM (edge/vlm): image processor, chat template
                    "pillow", "jinja2", "MarkupSafe")
#: Installed without their dependencies: tokenizers' only one, huggingface_hub (and its dozen), serves
#: Tokenizer.from_pretrained downloads, which a flight computer never makes; tokenizer.json is read locally.
NO_DEPS_PACKAGES = ("tokenizers",)
MMDEBSTRAP_ARGS = ("--arch=arm64", "--variant=minbase", "--include=python3", "--quiet",
                   "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
                   "--dpkgopt=path-exclude=/usr/share/doc/*")
#: Extra room in the root image beyond its files (ext4 metadata, the journal).
ROOT_SLACK = 1.25
ROOT_MIN_MB = 256


def log(msg: str) -> None:
    print(f"[firmware_sim.image] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def out(cmd) -> str:
    return run(cmd, capture_output=True, text=True).stdout


def quiet_pip(cmd, env) -> None:
    """pip, its output shown only when it fails (its notes on unused find-links are noise here)."""
    res = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"pip failed ({res.returncode}):\n{res.stdout[-2000:]}{res.stderr[-4000:]}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_of(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def pins(*names) -> list[str]:
    """NAME==VERSION lines of requirements-dev.txt (one place for versions)."""
    text = (REPO / "requirements-dev.txt").read_text()
    found = []
    for name in names:
        m = re.search(rf"^{re.escape(name)}==\S+", text, re.M | re.I)
        if not m:
            raise SystemExit(f"requirements-dev.txt pins no version of {name}")
        found.append(m.group(0))
    return found


def apt_sources() -> list[Path]:
    srcs = [p for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
            if p.exists() and any(line.strip() and not line.lstrip().startswith("#")
                                  for line in p.read_text().splitlines())]
    if not srcs:
        raise SystemExit("no Debian apt sources on this host")
    return srcs


def suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    raise SystemExit("/etc/os-release names no VERSION_CODENAME")


def newest_only(prefix: str, keep: Path) -> None:
    for old in CACHE.glob(prefix + "-*"):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class Images:
    kernel: Path
    initrd: Path
    root: Path
    built: dict = field(default_factory=dict)   # layer -> seconds it took (absent: reused)
    info: dict = field(default_factory=dict)


# ---- boot: kernel + initramfs --------------------------------------------------------------------

def kernel_package() -> tuple[str, str]:
    """(package, version) of the arm64 kernel the host's metapackage points at."""
    deps = out(["apt-cache", "depends", "linux-image-arm64:arm64"])
    m = re.search(r"Depends: (linux-image-[0-9][^\s:]*-arm64)", deps)
    if not m:
        raise SystemExit(f"cannot find the arm64 kernel package: {deps[:200]}")
    name = m.group(1)
    version = out(["apt-cache", "show", "--no-all-versions", f"{name}:arm64"])
    v = re.search(r"^Version: (\S+)", version, re.M)
    return name, v.group(1) if v else "?"


def package_version(pkg: str) -> str:
    text = out(["apt-cache", "show", "--no-all-versions", pkg])
    m = re.search(r"^Version: (\S+)", text, re.M)
    return m.group(1) if m else "?"


def module_order(modules_dir: Path, wanted) -> list[str]:
    """Relative .ko paths of `wanted` and their dependencies, each after what it needs."""
    deps = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {Path(m).name.split(".ko")[0].replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(mod):
        if mod in order:
            return
        for d in deps[mod]:
            visit(d)
        order.append(mod)

    for name in wanted:
        if name not in by_name:
            raise SystemExit(f"kernel module {name} is not in this kernel's modules.dep")
        visit(by_name[name])
    return order


def build_boot() -> tuple[Path, float | None]:
    kpkg, kver = kernel_package()
    bver = package_version("busybox-static:arm64")
    init = (GUEST / "initramfs-init").read_bytes()
    key = key_of(kpkg, kver, bver, MODULES, init)
    dest = CACHE / f"boot-{key}"
    if (dest / ".ready").exists():
        return dest, None
    t0 = time.monotonic()
    log(f"boot: {kpkg} {kver}, busybox-static {bver}")
    with tempfile.TemporaryDirectory(prefix="orbit-sim-boot-") as tmp:
        tmp = Path(tmp)
        # apt-get download drops privileges to _apt where it can; a root-owned temp dir is fine
        run(["apt-get", "download", "-q", f"{kpkg}:arm64", "busybox-static:arm64"], cwd=tmp,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kdir, bdir = tmp / "kernel", tmp / "busybox"
        for deb, d in ((next(tmp.glob("linux-image-*.deb")), kdir), (next(tmp.glob("busybox-static*.deb")), bdir)):
            run(["dpkg-deb", "-x", deb, d])
        release = kpkg.removeprefix("linux-image-")
        run(["depmod", "-b", kdir, release])
        mdir = kdir / "lib" / "modules" / release
        order = module_order(mdir, MODULES)
        root = tmp / "initramfs"
        for sub in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
            (root / sub).mkdir(parents=True)
        shutil.copy2(bdir / "bin" / "busybox", root / "bin" / "busybox")
        for rel in order:
            shutil.copy2(mdir / rel, root / "lib" / "modules" / Path(rel).name)
        (root / "modules.order").write_text("".join(Path(r).name + "\n" for r in order))
        shutil.copy2(GUEST / "initramfs-init", root / "init")
        os.chmod(root / "init", 0o755)
        staging = tmp / "stage"
        staging.mkdir()
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files,
                              capture_output=True, check=True).stdout
        import gzip

        (staging / "initrd.gz").write_bytes(gzip.compress(cpio, compresslevel=6, mtime=0))
        shutil.copy2(next((kdir / "boot").glob("vmlinuz-*")), staging / "vmlinuz")
        (staging / "info.json").write_text(json.dumps({"kernel": kpkg, "kernel_version": kver,
                                                       "busybox": bver, "modules": order}, indent=1))
        (staging / ".ready").touch()
        CACHE.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(staging), dest)
    newest_only("boot", dest)
    return dest, time.monotonic() - t0


# ---- base root file system ------------------------------------------------------------------------

def _platform_flags(rootfs: Path) -> tuple[str, list[str]]:
    py = os.readlink(rootfs / "usr" / "bin" / "python3")            # python3.11
    pyver = py.removeprefix("python")
    glibc = out(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f=${Version}", "libc6"])
    minor = int(re.match(r"2\.(\d+)", glibc).group(1))
    flags = ["--platform", "manylinux2014_aarch64"]
    for m in range(17, minor + 1):
        flags += ["--platform", f"manylinux_2_{m}_aarch64"]
    return pyver, flags + ["--python-version", pyver, "--implementation", "cp", "--only-binary=:all:"]


def _cross_pip() -> Path:
    """The x86-64 pip that installs aarch64 wheels (.venv-cross/, made by firmware_sim/common.sh)."""
    run(["bash", "-c", f"source {REPO}/firmware_sim/common.sh && ensure_cross_venv"])
    return REPO / ".venv-cross" / "bin" / "python"


def build_base() -> tuple[Path, str, float | None]:
    sources = apt_sources()
    rel = suite()
    runtime_pins = pins(*RUNTIME_PACKAGES)
    nodeps_pins = pins(*NO_DEPS_PACKAGES)
    key = key_of(*(p.read_bytes() for p in sources), rel, MMDEBSTRAP_ARGS, runtime_pins, nodeps_pins,
                 "base-1")
    dest = CACHE / f"base-{key}"
    if (dest / ".orbit-edge-ready").exists():
        return dest, key, None
    t0 = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f"base-{key}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"base: mmdebstrap {rel} arm64 (sources {', '.join(map(str, sources))})")
    run(["mmdebstrap", *MMDEBSTRAP_ARGS, rel, tmp, *sources], stdout=subprocess.DEVNULL)
    pyver, flags = _platform_flags(tmp)
    site = tmp / "usr" / "local" / "lib" / f"python{pyver}" / "dist-packages"
    log(f"base: pip (aarch64, cp{pyver.replace('.', '')}): {' '.join(runtime_pins)}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("_PYTHON_")}
    quiet_pip([_cross_pip(), "-m", "pip", "install", "-q", "--target", site, "--no-warn-script-location",
               *flags, *runtime_pins], env)
    quiet_pip([_cross_pip(), "-m", "pip", "install", "-q", "--target", site, "--no-warn-script-location",
               "--no-deps", *flags, *nodeps_pins], env)
    shutil.rmtree(site / "bin", ignore_errors=True)   # console scripts with the host's shebang
    (tmp / ".orbit-edge-ready").touch()
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    newest_only("base", dest)
    return dest, key, time.monotonic() - t0


# ---- root image ----------------------------------------------------------------------------------------

def find_wheel() -> Path:
    wheels = sorted((REPO / "dist").glob("orbit_edge-*aarch64*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise SystemExit("no aarch64 wheel in dist/ (make wheel-aarch64)")
    return wheels[-1]


def model_files() -> list[Path]:
    manifest = json.loads((REPO / "models" / "manifest.json").read_text())
    files = [REPO / "models" / "manifest.json"]
    for m in manifest["models"].values():
        files += [REPO / "models" / f["path"] for f in m["files"].values()]
    return files


def build_root(base: Path, base_key: str) -> tuple[Path, float | None]:
    wheel = find_wheel()
    guest_files = sorted(p for p in GUEST.iterdir() if p.is_file())
    models = model_files()
    key = key_of(base_key, sha256_file(wheel), *(f"{p.name}:{sha256_file(p)}" for p in models),
                 *(f"{p.name}:{sha256_file(p)}" for p in guest_files), ROOT_SLACK, "root-1")
    dest = CACHE / f"image-{key}"
    if (dest / ".ready").exists():
        return dest, None
    t0 = time.monotonic()
    log(f"image: {wheel.name} + models + guest init into an ext4 root image")
    with tempfile.TemporaryDirectory(prefix="orbit-sim-root-", dir=CACHE) as tmp:
        stage = Path(tmp) / "root"
        run(["cp", "-a", base, stage])
        pyver, flags = _platform_flags(stage)
        site = stage / "usr" / "local" / "lib" / f"python{pyver}" / "dist-packages"
        env = {k: v for k, v in os.environ.items() if not k.startswith("_PYTHON_")}
        quiet_pip([_cross_pip(), "-m", "pip", "install", "-q", "--target", site, "--no-deps",
                   "--no-warn-script-location", *flags, wheel], env)
        shutil.rmtree(site / "bin", ignore_errors=True)
        opt = stage / "opt" / "orbit-edge"
        for p in models:
            target = opt / p.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        shutil.copy2(GUEST / "orbit-init", stage / "sbin" / "orbit-init")
        os.chmod(stage / "sbin" / "orbit-init", 0o755)
        shutil.copy2(GUEST / "sim_actions.py", opt / "sim_actions.py")
        (stage / "data").mkdir(exist_ok=True)
        (stage / "etc" / "hostname").write_text("orbit-edge-board\n")
        (stage / ".orbit-edge-ready").unlink(missing_ok=True)
        size_mb = max(ROOT_MIN_MB, int(int(out(["du", "-sm", stage]).split()[0]) * ROOT_SLACK) + 64)
        staging = Path(tmp) / "out"
        staging.mkdir()
        run(["mke2fs", "-q", "-t", "ext4", "-L", "orbit-root", "-d", stage, staging / "root.img",
             f"{size_mb}M"])
        (staging / "info.json").write_text(json.dumps({"wheel": wheel.name, "size_mb": size_mb,
                                                       "python": pyver}, indent=1))
        (staging / ".ready").touch()
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(staging), dest)
    newest_only("image", dest)
    return dest, time.monotonic() - t0


def ensure_images() -> Images:
    """Build what is missing, reuse the rest; returns the paths and what was built (seconds)."""
    if os.geteuid() != 0:
        raise SystemExit("firmware_sim.image: run as root (mmdebstrap, apt-get download)")
    for tool in ("mmdebstrap", "qemu-system-aarch64", "mke2fs", "depmod", "cpio", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SystemExit(f"firmware_sim.image: {tool} missing (make deps-apt)")
    CACHE.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(CACHE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = {}
        boot, t = build_boot()
        if t is not None:
            built["boot"] = round(t, 1)
        base, base_key, t = build_base()
        if t is not None:
            built["base"] = round(t, 1)
        image, t = build_root(base, base_key)
        if t is not None:
            built["image"] = round(t, 1)
    info = {**json.loads((boot / "info.json").read_text()), **json.loads((image / "info.json").read_text())}
    return Images(boot / "vmlinuz", boot / "initrd.gz", image / "root.img", built, info)


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="python -m firmware_sim.image", description=__doc__.split("\n")[0]).parse_args(argv)
    t0 = time.monotonic()
    img = ensure_images()
    log(f"built {img.built or 'nothing (all cached)'} in {time.monotonic() - t0:.1f} s")
    print(img.root.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
