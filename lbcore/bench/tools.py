"""The load generators and probes of ``lbcore bench``: real tools run in lab namespaces.

* :func:`wrk` — wrk with a Lua ``done()`` that prints one JSON line (rate, errors,
  latency p50/p99/p99.9); ``close=True`` adds ``Connection: close`` (a new TCP
  connection per request). For the direct baseline a Lua ``setup()`` gives each wrk
  thread one backend address in turn: round-robin over the backends, no translation.
* :func:`iperf3` — one bulk TCP stream, Gbit/s received.
* :data:`PROBER` — a tiny HTTP client that opens a fresh connection every ~2 ms and
  prints the ``time.monotonic()`` at which the answer first names a wanted backend:
  the datapath observed by its behaviour (in the kernel), not by the agent's log.
* :data:`SWEEPER` — the same for many services at once: non-blocking connects to every
  target not answered yet, every ~5 ms, until each has answered once; prints when
  each first did.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_DONE = textwrap.dedent("""\
    function done(summary, latency, requests)
      local e = summary.errors
      io.write(string.format(
        'BENCH {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, '
        .. '"p99_us": %d, "p999_us": %d, "mean_us": %.1f}\\n',
        summary.requests, summary.duration,
        e.connect + e.read + e.write + e.status + e.timeout,
        latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
        latency.mean))
    end
    """)

_ROUND_ROBIN = textwrap.dedent("""\
    local addrs = nil
    local n = 0
    function setup(thread)
      if addrs == nil then
        addrs = {}
        for _, ip in ipairs({%s}) do
          table.insert(addrs, wrk.lookup(ip, "%d")[1])
        end
      end
      thread.addr = addrs[(n %% #addrs) + 1]
      n = n + 1
    end
    """)


def wrk_script(directory: Path, backends: Sequence[str] = (), port: int = 80) -> Path:
    """The Lua script: JSON summary; with ``backends``, one backend per thread in turn."""
    text = _DONE
    if backends:
        text = _ROUND_ROBIN % (", ".join(f'"{ip}"' for ip in backends), port) + text
    name = "rr-" + "-".join(b.replace(".", "_") for b in backends) if backends else "plain"
    path = directory / f"wrk-{name}.lua"
    path.write_text(text)
    return path


def parse_wrk(stdout: str) -> dict[str, float]:
    """Figures from wrk's output (our ``BENCH {...}`` line)."""
    m = re.search(r"^BENCH (\{.*\})$", stdout, re.M)
    if not m:
        raise ValueError(f"no BENCH line in wrk output:\n{stdout[-1500:]}")
    raw = json.loads(m.group(1))
    seconds = raw["duration_us"] / 1e6
    return {
        "rate": raw["requests"] / seconds if seconds > 0 else 0.0,
        "requests": raw["requests"],
        "errors": raw["errors"],
        "p50_ms": raw["p50_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "p999_ms": raw["p999_us"] / 1e3,
    }


def wrk_argv(url: str, script: Path, *, seconds: float, connections: int, threads: int,
             close: bool) -> list[str]:
    argv = ["wrk", f"-t{threads}", f"-c{max(connections, threads)}", f"-d{max(1, round(seconds))}s",
            "--timeout", "2s", "-s", str(script)]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def parse_iperf3(stdout: str) -> dict[str, float]:
    data = json.loads(stdout)
    if "error" in data:
        raise ValueError(f"iperf3: {data['error']}")
    return {"gbit": data["end"]["sum_received"]["bits_per_second"] / 1e9}


def iperf3_argv(host: str, port: int, seconds: float) -> list[str]:
    return ["iperf3", "-c", host, "-p", str(port), "-t", str(max(1, round(seconds))), "-J",
            "--connect-timeout", "2000"]


PROBER = textwrap.dedent("""\
    import socket, sys, time
    host, port, want, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    req = b"GET / HTTP/1.0\\r\\n\\r\\n"
    first = True
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            s = socket.create_connection((host, port), timeout=0.5)
            s.sendall(req)
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.close()
            body = data.decode(errors="replace")
            if first:
                print("first", body.strip().splitlines()[-1], flush=True)
                first = False
            if "backend=" + want + "\\n" in body:
                print(f"seen {time.monotonic():.6f}", flush=True)
                sys.exit(0)
        except OSError:
            pass
        time.sleep(0.002)
    print("timeout", flush=True)
    sys.exit(1)
    """)


SWEEPER = textwrap.dedent("""\
    import json, select, socket, sys, time
    targets = [(h, int(p)) for h, p in (t.rsplit(":", 1) for t in sys.argv[2].split(","))]
    end = time.monotonic() + float(sys.argv[1])
    seen = {}
    while len(seen) < len(targets) and time.monotonic() < end:
        pending = {}
        for t in targets:
            if t in seen:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(t)
            pending[s] = t
        deadline = time.monotonic() + 0.05  # a SYN lost before programming: retry
        while pending and (left := deadline - time.monotonic()) > 0:
            _, ready, _ = select.select([], list(pending), [], left)
            for s in ready:
                t = pending.pop(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    seen[t] = time.monotonic()
                s.close()
        for s in pending:
            s.close()
        time.sleep(0.005)
    print("SWEEP " + json.dumps({f"{h}:{p}": seen.get((h, p)) for h, p in targets}),
          flush=True)
    sys.exit(0 if len(seen) == len(targets) else 1)
    """)


def sweep_seen(output: str) -> dict[str, float | None] | None:
    """``{"ip:port": monotonic time of its first answer, or None}`` from the sweeper."""
    m = re.search(r"^SWEEP (\{.*\})$", output, re.M)
    return json.loads(m.group(1)) if m else None


def prober_seen(output: str) -> float | None:
    m = re.search(r"^seen ([\d.]+)$", output, re.M)
    return float(m.group(1)) if m else None


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and count of repetitions."""
    import statistics

    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "n": len(vals)}
