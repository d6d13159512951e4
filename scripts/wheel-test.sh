#!/usr/bin/env bash
# Build lbcore's wheel and check it from a fresh, NON-editable install in a throw-away venv:
#   - the eBPF sources ship inside the wheel (importlib.resources, package lbcore_bpf)
#   - lbcore_socklb imports; entry points lbcore.drivers/socklb and lbcore.sources/file exist
#   - no generic top-level package (drivers, plugins, bpf) lands in site-packages
# Usage: scripts/wheel-test.sh            (needs python >= 3.11; uses .venv's if present)
# Exit status: 0 when every check passed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off

TMP="$(mktemp -d /tmp/lbcore-wheel-test.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT

echo "==> building the wheel (pip wheel --no-deps) into $TMP/dist"
# Build from a copy so that the checkout gets no build/ or *.egg-info side effects.
mkdir -p "$TMP/src"
tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./.stamps --exclude=./build \
    --exclude=./dist --exclude='*.egg-info' --exclude='__pycache__' -cf - . | tar -C "$TMP/src" -xf -
"$PY" -m pip wheel -q --no-deps -w "$TMP/dist" "$TMP/src"
WHEEL="$(ls "$TMP"/dist/lbcore-*.whl)"
echo "    $(basename "$WHEEL")"

echo "==> fresh venv, non-editable install of the wheel with its dependencies"
"$PY" -m venv --without-pip "$TMP/venv"
# Reuse the outer pip against the new interpreter (saves bootstrapping pip into it).
"$PY" -m pip --python "$TMP/venv/bin/python" install -q "$WHEEL"

echo "==> checks (run from $TMP, isolated mode: the checkout is not on sys.path)"
cd "$TMP"
"$TMP/venv/bin/python" -I - <<'EOF'
import importlib
import importlib.metadata as md
import importlib.resources
import sys
import sysconfig
from pathlib import Path

site = Path(sysconfig.get_path("purelib"))
failures = []


def check(ok, what, detail=""):
    print(("    ok    " if ok else "    FAIL  ") + what + (f": {detail}" if detail else ""))
    if not ok:
        failures.append(what)


dist = md.distribution("lbcore")
direct_url = dist.read_text("direct_url.json") or ""
check('"editable": true' not in direct_url and "archive_info" in direct_url,
      "lbcore is installed from the wheel, non-editable")

import lbcore  # noqa: E402

check(Path(lbcore.__file__).resolve().is_relative_to(site.resolve()),
      "lbcore imported from the fresh venv", lbcore.__file__)

try:
    bpf = importlib.resources.files("lbcore_bpf")
    check(bpf.joinpath("sock.c").is_file(), "lbcore_bpf contains sock.c")
    inc = bpf.joinpath("include", "lbcore")
    headers = sorted(p.name for p in inc.iterdir() if p.name.endswith(".h")) if inc.is_dir() else []
    check(bool(headers), "lbcore_bpf contains include/lbcore/*.h", ", ".join(headers) or "none")
except ModuleNotFoundError as e:
    check(False, "lbcore_bpf importable", repr(e))

try:
    importlib.import_module("lbcore_socklb")
    check(True, "lbcore_socklb imports")
except Exception as e:
    check(False, "lbcore_socklb imports", repr(e))

drivers = {ep.name for ep in md.entry_points(group="lbcore.drivers")}
sources = {ep.name for ep in md.entry_points(group="lbcore.sources")}
check("socklb" in drivers, "entry point lbcore.drivers: socklb", ", ".join(sorted(drivers)))
check("file" in sources, "entry point lbcore.sources: file", ", ".join(sorted(sources)))
# Every built-in entry point loads from the wheel (a package missing from
# pyproject's list would fail here, not on a user's machine).
for group in ("lbcore.drivers", "lbcore.sources"):
    for ep in md.entry_points(group=group):
        if ep.dist is not None and ep.dist.name == "lbcore":
            try:
                ep.load()
                check(True, f"{group}: {ep.name} loads")
            except Exception as e:
                check(False, f"{group}: {ep.name} loads", repr(e))
for module in ("lbcore.cli", "lbcore.demo", "lbcore.bench", "lbcore.conformance.cli",
               "lbcore.lab_cli"):
    try:
        importlib.import_module(module)
        check(True, f"{module} imports")
    except Exception as e:
        check(False, f"{module} imports", repr(e))

top = {f.parts[0] for f in (dist.files or []) if not str(f).startswith("..")}
for bad in ("drivers", "plugins", "bpf"):
    check(bad not in top and not (site / bad).exists() and not (site / f"{bad}.py").exists(),
          f"no top-level '{bad}' in site-packages")
print("    top-level entries of the wheel:", ", ".join(sorted(top)))

sys.exit(1 if failures else 0)
EOF
echo "wheel-test: all checks passed"
