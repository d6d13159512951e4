"""Which drivers ``lbcore bench`` runs and which of its traffic each can carry.

Every driver installed in the ``lbcore.drivers`` entry-point group is benchmarked the
same way, built-in or third-party; what it can carry comes from its ``Capabilities``:

* east-west (a client pod -> ClusterIP) needs ClusterIP frontends and pod clients;
* north-south (a client outside the cluster -> node IP:NodePort) needs NodePort
  frontends and outside clients.
"""

from __future__ import annotations

from typing import Any

from ..driver import Capabilities
from ..model import FrontendType

DIRECTIONS = {"ew": "east-west", "ns": "north-south"}

# Why, for a built-in driver, beyond what its capabilities say.
WHY = {
    "socklb": "socket LB translates connect() of processes in the attached cgroups; an "
              "outside client has no such socket",
}


def installed() -> list[str]:
    """Every driver in the entry-point group, loadable or not, sorted by name."""
    from ..plugins import DRIVERS, PluginRegistry

    return sorted({info.name for info in PluginRegistry(DRIVERS).list()})


def problem(name: str) -> str | None:
    """None if driver ``name`` loads, else why not."""
    from ..demo import driver_problem

    return driver_problem(name)


def capabilities(name: str) -> Capabilities:
    from ..plugins import DRIVERS, PluginRegistry, load_driver_class

    return load_driver_class(PluginRegistry(DRIVERS), name).capabilities()


def support(name: str, caps: Capabilities) -> dict[str, str | None]:
    """``{"ew": why not | None, "ns": why not | None}`` for driver ``name``."""
    clients = caps.served_clients()
    served = "/".join(sorted(clients))
    out: dict[str, str | None] = {"ew": None, "ns": None}
    if FrontendType.CLUSTER_IP not in caps.frontend_types:
        out["ew"] = "north-south only (ClusterIP is not in its capabilities)"
    elif "pod" not in clients:
        out["ew"] = f"it serves {served} clients, not pods"
    if FrontendType.NODE_PORT not in caps.frontend_types:
        out["ns"] = "east-west only (NodePort is not in its capabilities)"
    elif "external" not in clients:
        out["ns"] = f"it serves {served} clients, not outside ones" + (
            f": {WHY[name]}" if name in WHY else "")
    return out


def tcnodeport_options(cluster: Any, node: Any) -> dict[str, Any]:
    return {"devices": ["eth0"], "bpffs_path": str(cluster.bpffs / f"{node.name}-tc"),
            "mode": "snat"}


# Lab-specific driver_options where the lab's defaults (lbcore.lab.agents: socklb's
# cgroup and bpffs; nothing for drivers that program the namespace they run in —
# iptables, nftables, most third-party drivers) are not enough.
AGENT_OPTIONS = {"tcnodeport": tcnodeport_options}
