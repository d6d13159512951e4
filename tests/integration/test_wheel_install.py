"""The built wheel works without the source checkout (scripts/wheel-test.sh).

Builds lbcore's wheel, installs it non-editable into a throw-away venv and checks from
there that the eBPF sources ship as package data (lbcore_bpf), that the built-in driver
and source are registered as entry points, and that no generic top-level package
(drivers, plugins, bpf) is installed. Takes about 10 s.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "wheel-test.sh"


@pytest.mark.slow
def test_wheel_installs_and_ships_bpf_sources():
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "PYTHON": sys.executable},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = "\n".join(
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if not line.startswith("WARNING: Location")  # noise from this machine's pip config
    )
    assert proc.returncode == 0, f"scripts/wheel-test.sh failed:\n{out}"
    assert "FAIL" not in out, out
