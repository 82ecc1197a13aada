# Shared by cross_wheel.sh and rootfs.sh (sourced, not run).
# REPO, VENV_CROSS, req_pins NAME..., ensure_cross_venv, ensure_binfmt_aarch64.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Host tools for the aarch64 work, made by Debian's python3.11: its sysconfigdata for aarch64
# (libpython3.11-dev:arm64) is what drives the cross build. Kept apart from .venv/ on purpose.
VENV_CROSS="${VENV_CROSS:-$REPO/.venv-cross}"
HOST_PYTHON="${HOST_PYTHON:-/usr/bin/python3.11}"
CROSS_TOOLS=(setuptools wheel Cython pybind11 build auditwheel)

log() { echo "[$(basename "$0")] $*" >&2; }
die() { log "error: $*"; exit 1; }

# The "NAME==VERSION" lines of requirements-dev.txt for the given names (one place for pins).
req_pins() {
    local name line out=()
    for name in "$@"; do
        line="$(grep -iE "^${name}==" "$REPO/requirements-dev.txt" | head -n1 | tr -d '[:space:]')"
        [ -n "$line" ] || die "requirements-dev.txt pins no version of $name"
        out+=("$line")
    done
    printf '%s\n' "${out[@]}"
}

# Create (once) the venv with the pinned build tools. Stamped with the pins it was built from,
# so a changed pin rebuilds it and an unchanged one costs nothing.
ensure_cross_venv() {
    local pins stamp
    pins="$(req_pins "${CROSS_TOOLS[@]}")"
    stamp="$VENV_CROSS/.stamp"
    if [ -x "$VENV_CROSS/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pins" ]; then
        return 0
    fi
    [ -x "$HOST_PYTHON" ] || die "$HOST_PYTHON missing (make deps-apt installs python3.11 python3.11-venv)"
    log "creating $VENV_CROSS"
    rm -rf "$VENV_CROSS"
    "$HOST_PYTHON" -m venv "$VENV_CROSS"
    # Installed with a clean environment: no cross variables, so pip picks x86_64 build tools.
    # (pip upgraded first, as the Makefile does for .venv/: Debian's bundled pip is old)
    env -u _PYTHON_HOST_PLATFORM -u _PYTHON_SYSCONFIGDATA_NAME \
        "$VENV_CROSS/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
    env -u _PYTHON_HOST_PLATFORM -u _PYTHON_SYSCONFIGDATA_NAME \
        "$VENV_CROSS/bin/python" -m pip install -q $pins
    printf '%s\n' "$pins" > "$stamp"
}

# qemu-user runs aarch64 binaries through binfmt_misc: mount it and enable qemu-aarch64 (both
# idempotent; needs root). Debian's entry has the F flag, so the interpreter works inside a chroot.
ensure_binfmt_aarch64() {
    local bm=/proc/sys/fs/binfmt_misc
    if [ ! -e "$bm/register" ]; then
        mount -t binfmt_misc binfmt_misc "$bm" || die "cannot mount binfmt_misc (run as root)"
    fi
    if [ ! -e "$bm/qemu-aarch64" ]; then
        update-binfmts --enable qemu-aarch64 || die "cannot register qemu-aarch64 (qemu-user-static, binfmt-support)"
    fi
    grep -qx enabled "$bm/qemu-aarch64" || echo 1 > "$bm/qemu-aarch64"
}
