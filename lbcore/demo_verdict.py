"""What a ``tcpdump`` capture says about where a service address was translated.

Pure functions over :class:`lbcore.lab.Packet` lists, so the verdict can be unit-tested
and re-judged from a ``--json`` report:

- ``socket``: the client's SYN already goes to a backend pod and its port (socket-LB:
  translated inside connect(), no packet ever carries the service address);
- ``node``: the client's SYN goes to the service address (NodeIP:nodePort or
  ClusterIP:port), and the backend pod receives a SYN to its own address (translated in
  the node, e.g. by netfilter DNAT);
- ``none``: neither was seen (the request failed, or the capture missed it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .lab.capture import Packet

EXPECTED_MODE = {"socklb": "socket", "iptables": "node"}
MODE_TEXT = {
    "socket": "in the client's socket, at connect()",
    "node": "in the node, after the packet left the pod",
    "none": "not observed",
}


@dataclass(frozen=True)
class Observation:
    """One curl to ``service`` (ip, port): what net's eth0 and the backend saw."""

    label: str
    service: tuple[str, int]
    answered_by: str | None
    client_syn: str | None  # "src:sport > dst:dport"
    client_syn_to: str | None  # "pod cni-xxx" | "service" | "other"
    backend_syn: str | None  # the SYN as the answering pod saw it
    service_on_wire: list[str]  # lines on net's eth0 carrying the service address
    mode: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(p: Packet) -> str:
    return f"{p.src}:{p.sport} > {p.dst}:{p.dport}"


def observe(
    label: str,
    service: tuple[str, int],
    answered_by: str | None,
    client_syns: Sequence[Packet],
    client_lines: Sequence[str],
    backend_syns: Mapping[str, Sequence[Packet]],
    pod_ips: Mapping[str, str],
    target_port: int,
) -> Observation:
    """Judge one request. ``client_syns``: SYNs net sent for *this* request (first one
    counts); ``backend_syns``: per pod name, the SYNs that pod received; ``pod_ips``:
    pod IP -> pod name."""
    ip, port = service
    syn = client_syns[0] if client_syns else None
    to = None
    if syn is not None:
        if syn.dst in pod_ips and syn.dport == target_port:
            to = f"pod {pod_ips[syn.dst]}"
        elif (syn.dst, syn.dport) == (ip, port):
            to = "service"
        else:
            to = "other"
    seen = [s for s in backend_syns.get(answered_by or "", [])
            if pod_ips.get(s.dst) == answered_by and s.dport == target_port]
    # the backend's SYN of this request: same client port under socket-LB, else the last
    backend = next((s for s in seen if syn is not None and s.sport == syn.sport), None)
    backend = backend or (seen[-1] if seen else None)
    leaked = [ln for ln in client_lines
              if f" {ip}.{port}" in ln or f"{ip}.{port}:" in ln or f"who-has {ip} " in ln]
    if to == f"pod {answered_by}" and not leaked:
        mode = "socket"
    elif to == "service" and backend is not None:
        mode = "node"
    else:
        mode = "none"
    return Observation(label, (ip, port), answered_by, _fmt(syn) if syn else None, to,
                       _fmt(backend) if backend else None, leaked, mode)


def claim_holds(driver: str, obs: Observation) -> bool:
    """The driver's claim (EXPECTED_MODE) was observed; drivers without a claim only
    need a conclusive observation."""
    want = EXPECTED_MODE.get(driver)
    return obs.mode == want if want else obs.mode != "none"
