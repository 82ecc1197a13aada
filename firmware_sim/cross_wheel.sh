#!/usr/bin/env bash
# Cross-build the manylinux aarch64 wheel of orbit-edge on an x86_64 Debian host.
#
#   bash firmware_sim/cross_wheel.sh [OUTDIR]      (default: dist/; prints the wheel's path last)
#
# How: Debian's /usr/bin/python3.11 carries the aarch64 build configuration of its multiarch twin
# (libpython3.11-dev:arm64 -> _sysconfigdata__aarch64-linux-gnu.py: CC=aarch64-linux-gnu-gcc, the
# aarch64 EXT_SUFFIX, ...). Pointing _PYTHON_SYSCONFIGDATA_NAME at it makes setuptools cross-compile.
# The build tools live in .venv-cross/ (made once, pinned by requirements-dev.txt) and the build runs
# with --no-isolation, so pip never looks for aarch64 build tools. No kernel includes numpy headers,
# so no target numpy is needed. The build works on a copy of the sources in a temporary directory:
# the x86_64 in-place build in edge/_ext/ and build/ is left alone.
# Unchanged sources (same content hash as the wheel already in OUTDIR) skip the build.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

OUTDIR="${1:-$REPO/dist}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
SYSCONFIG_NAME=_sysconfigdata__aarch64-linux-gnu
STAMP="$OUTDIR/.orbit_edge-aarch64.stamp"   # "<source hash> <wheel file name>"

for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++; do
    command -v "$tool" >/dev/null || die "$tool missing (make deps-apt)"
done
"$HOST_PYTHON" -c "import importlib; importlib.import_module('$SYSCONFIG_NAME')" 2>/dev/null \
    || die "$SYSCONFIG_NAME missing (make deps-apt installs libpython3.11-dev:arm64)"

# One build at a time per work tree (make and the aarch64 test may both ask for the wheel).
exec 9>"/tmp/orbit-edge-cross-$(printf %s "$REPO" | sha256sum | cut -c1-12).lock"
flock 9

ensure_cross_venv

# --- the sources a fresh clone holds (tracked + new, not ignored: no .so, no generated .c) ---
cd "$REPO"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t FILES < <(git ls-files --cached --others --exclude-standard -- \
        setup.py pyproject.toml MANIFEST.in README.md 'LICENSE*' edge ext | sort -u)
else  # a tarball without git: the same set, minus build products
    mapfile -t FILES < <(find setup.py pyproject.toml MANIFEST.in README.md edge ext -type f \
        ! -name '*.so' ! -path '*/__pycache__/*' 2>/dev/null | sort)
fi
EXISTING=()
for f in "${FILES[@]}"; do [ -f "$f" ] && EXISTING+=("$f"); done
[ "${#EXISTING[@]}" -gt 0 ] || die "no sources found under $REPO"

HASH="$( { for f in "${EXISTING[@]}"; do printf '%s\0' "$f"; sha256sum < "$f"; done
           cat "$REPO/firmware_sim/common.sh" "$REPO/firmware_sim/cross_wheel.sh" "$VENV_CROSS/.stamp"
           printf '%s' "${EDGE_ONLY:-}"; } | sha256sum | cut -c1-64)"

if [ -f "$STAMP" ] && read -r old_hash old_wheel < "$STAMP" && [ "$old_hash" = "$HASH" ] \
        && [ -f "$OUTDIR/$old_wheel" ]; then
    log "up to date: $old_wheel"
    echo "$OUTDIR/$old_wheel"
    exit 0
fi

WORK="$(mktemp -d /tmp/orbit-edge-cross.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/src" "$WORK/raw" "$WORK/repaired" "$WORK/check"
for f in "${EXISTING[@]}"; do
    mkdir -p "$WORK/src/$(dirname "$f")"
    cp -p "$f" "$WORK/src/$f"
done
# Both cores for the C/C++ compiles (only in the copy; the repository has no setup.cfg).
printf '[build_ext]\nparallel = %s\n' "$(nproc)" > "$WORK/src/setup.cfg"

log "cross-building for aarch64 (${#EXISTING[@]} source files)"
start=$SECONDS
( cd "$WORK/src"
  # Debian's CFLAGS carry -g; the flight wheel does without debug info: stripped at link time
  # (LDFLAGS is appended to the link command; CFLAGS would replace the sysconfig flags instead).
  _PYTHON_HOST_PLATFORM=linux-aarch64 _PYTHON_SYSCONFIGDATA_NAME=$SYSCONFIG_NAME \
  LDFLAGS="-Wl,--strip-debug" \
      "$VENV_CROSS/bin/python" -m build --wheel --no-isolation --outdir "$WORK/raw" . >"$WORK/build.log" 2>&1 \
      || { tail -n 60 "$WORK/build.log" >&2; die "cross build failed (log above)"; }
)
raw=("$WORK"/raw/*.whl)
[ "${#raw[@]}" -eq 1 ] && [ -f "${raw[0]}" ] || die "expected one wheel, got: ${raw[*]}"
case "${raw[0]}" in *linux_aarch64.whl) ;; *) die "not an aarch64 wheel: ${raw[0]}" ;; esac

# manylinux tag: auditwheel reads the ELF files (aarch64 works from an x86_64 host) and picks the
# oldest glibc policy the .so files satisfy. --patcher none: the kernels link no outside library,
# so there is nothing to graft or patch (auditwheel fails loudly if that ever changes).
"$VENV_CROSS/bin/auditwheel" repair --plat auto --patcher none -w "$WORK/repaired" "${raw[0]}" >"$WORK/repair.log" 2>&1 \
    || { cat "$WORK/repair.log" >&2; die "auditwheel repair failed"; }
wheels=("$WORK"/repaired/*.whl)
[ "${#wheels[@]}" -eq 1 ] && [ -f "${wheels[0]}" ] || die "auditwheel produced: ${wheels[*]}"
wheel="${wheels[0]}"
case "$(basename "$wheel")" in *manylinux*aarch64*.whl) ;; *) die "no manylinux aarch64 tag: $wheel" ;; esac

# --- checks: every compiled kernel is in the wheel, and each is an aarch64 ELF ---
"$VENV_CROSS/bin/python" -m zipfile -e "$wheel" "$WORK/check"
mapfile -t expected < <(grep -o '"edge\._ext\._[A-Za-z0-9_]*"' edge/kernels/_backend.py | tr -d '"' | sort -u)
if [ -n "${EDGE_ONLY:-}" ]; then  # development aid of setup.py: only the listed modules
    mapfile -t expected < <(printf '%s\n' "${expected[@]}" | grep -E "\.($(printf %s "$EDGE_ONLY" | tr ',' '|'))$")
fi
for mod in "${expected[@]}"; do
    so=("$WORK/check/${mod//.//}".cpython-*-aarch64-linux-gnu.so)
    [ -f "${so[0]}" ] || die "wheel lacks $mod"
    file -b "${so[0]}" | grep -q 'ARM aarch64' || die "$mod is not an aarch64 ELF: $(file -b "${so[0]}")"
done
shopt -s globstar nullglob
for so in "$WORK"/check/**/*.so; do
    file -b "$so" | grep -q 'ARM aarch64' || die "$so is not an aarch64 ELF"
done
shopt -u globstar nullglob

# Replace the previous aarch64 wheel(s) of orbit-edge in OUTDIR.
rm -f "$OUTDIR"/orbit_edge-*aarch64*.whl
cp "$wheel" "$OUTDIR/"
name="$(basename "$wheel")"
printf '%s %s\n' "$HASH" "$name" > "$STAMP"
log "built $name in $((SECONDS - start)) s (${#expected[@]} compiled modules, all ARM aarch64)"
echo "$OUTDIR/$name"
