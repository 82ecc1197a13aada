#!/usr/bin/env bash
# Build (or reuse) the arm64 Debian root file system in which the kernel tests run under qemu-user.
#
#   bash firmware_sim/rootfs.sh        (as root; prints the rootfs path last)
#
# A minbase rootfs of the host's own Debian release and mirror (both read from the host's apt
# configuration, never written here) with python3, plus the aarch64 wheels of the test
# dependencies pinned in requirements-dev.txt, installed from the host with pip's cross flags.
# Cached under ~/.cache/orbit-edge/ (ORBIT_EDGE_CACHE overrides), keyed by everything that goes
# into it: apt sources, mmdebstrap arguments, the pins, and these scripts. A changed key builds a
# new rootfs (~80 s) and removes the stale one. The cache is read-only to its users: tests unpack
# into a per-run directory under its /tmp and remove it afterwards.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap's root mode, binfmt_misc registration)"
command -v mmdebstrap >/dev/null || die "mmdebstrap missing (make deps-apt)"
[ -x /usr/bin/qemu-aarch64-static ] || die "qemu-user-static missing (make deps-apt)"

# The guest's test dependencies: the same pins the host tests use.
GUEST_PINS=($(req_pins numpy pytest hypothesis crc32c))

# The host's Debian release and apt sources (a snapshot mirror on the host stays a snapshot here).
. /etc/os-release
SUITE="${VERSION_CODENAME:?/etc/os-release names no VERSION_CODENAME}"
SOURCES=()
for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -s "$f" ] && grep -qv '^\s*\(#\|$\)' "$f" && SOURCES+=("$f")
done
[ "${#SOURCES[@]}" -gt 0 ] || die "no Debian apt sources on this host"
# Manuals, translations and docs are a third of a minbase system and no test reads them.
MMDEBSTRAP_ARGS=(--arch=arm64 --variant=minbase --include=python3 --quiet
                 --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
                 --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright')

CACHE_DIR="${ORBIT_EDGE_CACHE:-$HOME/.cache/orbit-edge}"
KEY="$( { cat "${SOURCES[@]}"; printf '%s\n' "$SUITE" "${MMDEBSTRAP_ARGS[@]}" "${GUEST_PINS[@]}"
          cat "$REPO/firmware_sim/rootfs.sh" "$REPO/firmware_sim/common.sh"; } | sha256sum | cut -c1-16)"
ROOTFS="$CACHE_DIR/rootfs-arm64-$SUITE-$KEY"
READY="$ROOTFS/.orbit-edge-ready"

ensure_binfmt_aarch64

if [ ! -f "$READY" ]; then
    mkdir -p "$CACHE_DIR"
    exec 9>"$CACHE_DIR/rootfs.lock"
    flock 9
fi
if [ ! -f "$READY" ]; then
    start=$SECONDS
    TMP="$ROOTFS.partial"
    rm -rf "$TMP"
    log "mmdebstrap $SUITE arm64 -> $ROOTFS (sources: ${SOURCES[*]})"
    mmdebstrap "${MMDEBSTRAP_ARGS[@]}" "$SUITE" "$TMP" "${SOURCES[@]}" >&2

    # Guest Python and C library, read from the rootfs itself, choose the wheels.
    py="$(readlink "$TMP/usr/bin/python3")"                          # python3.11
    pyver="${py#python}"
    glibc="$(dpkg-query --admindir="$TMP/var/lib/dpkg" -W -f='${Version}' libc6)"
    glibc_minor="$(printf %s "$glibc" | sed -E 's/^2\.([0-9]+).*/\1/')"
    [[ "$pyver" =~ ^3\.[0-9]+$ && "$glibc_minor" =~ ^[0-9]+$ ]] \
        || die "cannot read the guest's python ($py) or glibc ($glibc)"
    PLATFORMS=(--platform manylinux2014_aarch64)
    for ((m = 17; m <= glibc_minor; m++)); do PLATFORMS+=(--platform "manylinux_2_${m}_aarch64"); done
    SITE="$TMP/usr/local/lib/$py/dist-packages"                       # on Debian's sys.path

    ensure_cross_venv
    log "pip (aarch64, cp${pyver/./}, glibc 2.$glibc_minor): ${GUEST_PINS[*]}"
    env -u _PYTHON_HOST_PLATFORM -u _PYTHON_SYSCONFIGDATA_NAME \
        "$VENV_CROSS/bin/python" -m pip install -q --target "$SITE" --no-warn-script-location \
        "${PLATFORMS[@]}" --python-version "$pyver" --implementation cp --only-binary=:all: \
        "${GUEST_PINS[@]}" >"$TMP.pip.log" 2>&1 || { cat "$TMP.pip.log" >&2; die "pip failed"; }
    rm -f "$TMP.pip.log"
    rm -rf "$SITE/bin"   # console scripts with the host's shebang: useless in the guest

    # The proof that it works: the guest imports its test stack on its own (emulated) CPU.
    machine="$(chroot "$TMP" /usr/bin/python3 -c \
        'import platform, numpy, pytest, hypothesis, crc32c; print(platform.machine())')" \
        || die "the guest cannot import its test dependencies"
    [ "$machine" = aarch64 ] || die "guest machine is '$machine', not aarch64"

    touch "$TMP/.orbit-edge-ready"
    rm -rf "$ROOTFS"
    mv "$TMP" "$ROOTFS"
    # Older keys are stale: drop them (the cache holds one rootfs).
    for old in "$CACHE_DIR"/rootfs-arm64-*; do
        [ "$old" = "$ROOTFS" ] || rm -rf "$old"
    done
    log "rootfs ready in $((SECONDS - start)) s: $(du -sh "$ROOTFS" | cut -f1)"
fi
echo "$ROOTFS"
