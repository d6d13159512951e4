"""Fixtures for integration tests in network namespaces (root only; see lbcore/lab/).

- ``netlab``: an empty :class:`NetLab`, removed after the test (also on failure).
- ``lab``: the socket-LB topology (node, client, ``lab_backends`` backends on one bridge).
  Override the backend count with ``@pytest.mark.parametrize("lab_backends", [5])``.
- At session start, leftovers of killed runs (``lbt-<id>`` whose owner is dead) are removed.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

from lbcore.lab import NetLab, SockLBLab, build_socklb_lab, sweep_leftovers


def _on_sigterm(signum, frame):
    # Let pytest unwind (fixture teardown runs on KeyboardInterrupt) instead of dying.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def _netlab_session():
    if os.geteuid() != 0:
        yield
        return
    swept = sweep_leftovers()
    if swept:
        print(f"\nnetlab: removed leftovers of killed runs: {', '.join(swept)}", file=sys.stderr)
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"_netlab_rep_{report.when}", report)
    return report


@pytest.fixture
def netlab(request) -> NetLab:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (network namespaces, cgroups, eBPF)")
    lab = NetLab()
    try:
        yield lab
    finally:
        rep = getattr(request.node, "_netlab_rep_call", None)
        if rep is not None and rep.failed:
            for p in lab.procs:  # shows up under "Captured stdout teardown"
                print(f"--- {p!r} exit={p.popen.poll()} log:\n{p.output()[-4000:]}")
        lab.close()


@pytest.fixture
def lab_backends() -> int:
    return 3


@pytest.fixture
def lab(netlab: NetLab, lab_backends: int) -> SockLBLab:
    return build_socklb_lab(netlab, lab_backends)
