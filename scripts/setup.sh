#!/usr/bin/env bash
# One-shot, idempotent set-up for lbcore on Debian 12 (run as root).
#
#   1. Debian packages (bcc, kernel headers, iproute2, iptables, test/demo tools)
#   2. /lib/modules/$(uname -r)/{build,source} -> Debian's linux-headers (for bcc)
#   3. the virtualenv .venv with `pip install -e '.[test]'`
#   4. bcc (from Debian) importable in .venv, without the rest of Debian's dist-packages
#
# A second run is a fast no-op: every step first checks whether its work is done
# (dpkg-query, the links, a stamp in .stamps/ keyed on pyproject.toml).
# Usage: scripts/setup.sh        (from `make setup`, `make test`, `make demo`)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
STAMPS="$ROOT/.stamps"

APT_PACKAGES=(
    python3-bpfcc libbpfcc bpfcc-tools linux-headers-amd64 python3-nftables
    iproute2 iptables nginx-light wrk iperf3 dnsutils dnsmasq-base socat
    bpftool curl tcpdump conntrack procps kmod
)

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
if [[ -n "${CI:-}" ]]; then
    export PIP_PROGRESS_BAR=off
fi

step() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

if [[ "$(id -u)" != 0 ]]; then
    die "must run as root (installs Debian packages, writes /lib/modules); try: sudo make setup"
fi

# --- apt helpers ----------------------------------------------------------------------
APT_UPDATED=0
missing_packages() {  # prints the packages of "$@" that are not installed
    local p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
            echo "$p"
        fi
    done
}
apt_install() {
    if [[ $APT_UPDATED == 0 ]]; then
        info "apt-get update"
        apt-get update -q
        APT_UPDATED=1
    fi
    info "apt-get install $*"
    apt-get install -y -q --no-install-recommends "$@"
}

# --- 1. Debian packages ---------------------------------------------------------------
step "1/4 Debian packages: ${APT_PACKAGES[*]}"
mapfile -t MISSING < <(missing_packages "${APT_PACKAGES[@]}")
if ((${#MISSING[@]} == 0)); then
    info "all installed"
else
    info "missing: ${MISSING[*]}"
    apt_install "${MISSING[@]}"
fi

# --- 2. kernel headers for bcc ----------------------------------------------------------
# The running kernel ships no headers; bcc finds Debian's through these two links.
step "2/4 kernel header links in /lib/modules/$(uname -r)"
KDIR="/lib/modules/$(uname -r)"
HDR_BUILD="$(find /usr/src -maxdepth 1 -type d -name 'linux-headers-*-amd64' | sort -V | tail -n 1)"
[[ -n "$HDR_BUILD" ]] || die "no /usr/src/linux-headers-*-amd64 (is linux-headers-amd64 installed?)"
HDR_VER="${HDR_BUILD#/usr/src/linux-headers-}"
HDR_VER="${HDR_VER%-amd64}"
HDR_SOURCE="/usr/src/linux-headers-${HDR_VER}-common"
[[ -d "$HDR_SOURCE" ]] || die "$HDR_SOURCE missing (linux-headers-${HDR_VER}-common not installed?)"
mkdir -p "$KDIR"
link_if_missing() {  # link_if_missing LINK TARGET: create LINK unless it exists and resolves
    local link="$1" target="$2"
    if [[ -e "$link" ]]; then
        info "$link exists -> $(readlink -f "$link") (kept)"
    else
        if [[ -L "$link" ]]; then
            info "$link is dangling ($(readlink "$link")), replacing"
            rm -f "$link"
        fi
        ln -s "$target" "$link"
        info "$link -> $target (created)"
    fi
}
link_if_missing "$KDIR/build" "$HDR_BUILD"
link_if_missing "$KDIR/source" "$HDR_SOURCE"

# --- 3. the virtualenv ------------------------------------------------------------------
step "3/4 virtualenv $VENV with: pip install -e '.[test]'"
py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; }

if [[ -x "$VENV/bin/python" ]] && py_ok "$VENV/bin/python"; then
    info "existing venv: $("$VENV/bin/python" -V 2>&1)"
else
    if [[ -e "$VENV" ]]; then
        info "$VENV is broken or too old, recreating"
        rm -rf "$VENV"
    fi
    # Base interpreter: python3 on PATH if >= 3.11, else Debian's python3 (3.11 on Debian 12).
    BASE_PY=""
    if command -v python3 >/dev/null && py_ok python3; then
        BASE_PY="$(python3 -c 'import sys; print(sys.executable)')"
    else
        mapfile -t MISSING < <(missing_packages python3 python3-venv)
        ((${#MISSING[@]} == 0)) || apt_install "${MISSING[@]}"
        BASE_PY=/usr/bin/python3
        py_ok "$BASE_PY" || die "$BASE_PY is older than 3.11"
    fi
    # Debian's interpreter keeps venv/ensurepip in a separate package.
    if ! "$BASE_PY" -c 'import ensurepip, venv' 2>/dev/null; then
        if [[ "$BASE_PY" == /usr/bin/* ]]; then
            apt_install python3-venv
        else
            die "$BASE_PY cannot create virtualenvs (no ensurepip)"
        fi
    fi
    info "creating venv with $BASE_PY ($("$BASE_PY" -V 2>&1))"
    "$BASE_PY" -m venv "$VENV"
fi

mkdir -p "$STAMPS"
VENV_KEY="$(
    {
        sha256sum pyproject.toml
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
)"
if [[ -f "$STAMPS/venv" && "$(cat "$STAMPS/venv")" == "$VENV_KEY" ]] \
    && "$VENV/bin/python" -c 'import lbcore' 2>/dev/null; then
    info "up to date (pyproject.toml unchanged)"
else
    info "pyproject.toml changed or first run: installing"
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    echo "$VENV_KEY" >"$STAMPS/venv"
fi
# The nftables driver plugin (a separate distribution, as a third party would ship it).
if ! "$VENV/bin/python" -c 'import lbcore_nftables' 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q --no-deps -e plugins/lbcore-nftables
fi

# --- 4. bcc in the venv -----------------------------------------------------------------
# bcc is not on PyPI; Debian's python3-bpfcc is pure Python over libbcc.so. Link only the
# bcc package into the venv (not the whole of /usr/lib/python3/dist-packages).
step "4/4 bcc importable in the venv"
BCC_INIT="$(dpkg-query -L python3-bpfcc | grep -m 1 '/bcc/__init__\.py$' || true)"
[[ -n "$BCC_INIT" ]] || die "python3-bpfcc installs no bcc/__init__.py"
BCC_DIR="$(dirname "$BCC_INIT")"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
if [[ "$(readlink "$SITE/bcc" 2>/dev/null || true)" == "$BCC_DIR" ]]; then
    info "$SITE/bcc -> $BCC_DIR (present)"
else
    [[ ! -e "$SITE/bcc" || -L "$SITE/bcc" ]] || die "$SITE/bcc exists and is not a symlink"
    ln -sfn "$BCC_DIR" "$SITE/bcc"
    info "$SITE/bcc -> $BCC_DIR (created)"
fi
# The same for libnftables' binding (python3-nftables), used by plugins/lbcore-nftables.
NFT_DIR="$(dirname "$(dpkg-query -L python3-nftables | grep -m 1 '/nftables/__init__\.py$')")"
if [[ "$(readlink "$SITE/nftables" 2>/dev/null || true)" != "$NFT_DIR" ]]; then
    [[ ! -e "$SITE/nftables" || -L "$SITE/nftables" ]] || die "$SITE/nftables is not a symlink"
    ln -sfn "$NFT_DIR" "$SITE/nftables"
    info "$SITE/nftables -> $NFT_DIR (created)"
fi
"$VENV/bin/python" - <<'EOF' || die "bcc is not importable from $VENV"
import sys
import bcc  # noqa: F401  (loads libbcc.so)
import nftables  # noqa: F401  (libnftables)
leak = [p for p in sys.path if "dist-packages" in p]
if leak:
    sys.exit(f"Debian dist-packages on the venv's sys.path: {leak}")
print("    import bcc: ok (" + bcc.__file__ + ")")
EOF

echo "setup: done"
