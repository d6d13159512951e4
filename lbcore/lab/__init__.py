"""The namespace lab: a small "cluster" of network namespaces, veth pairs, a bridge and
cgroups, built in seconds on one machine (root only). The demo, the benchmarks and the
integration tests all stand on it.

- :mod:`.netns` — :class:`NetLab` (namespaces, links, cgroups, private bpffs, teardown)
  and :class:`Netns`;
- :mod:`.procs` — :func:`sh`, :class:`Proc`, processes in a namespace *and* a cgroup;
- :mod:`.clients` / :mod:`.servers` — curl, dig, UDP; HTTP, UDP, dnsmasq, nginx;
- :mod:`.sweep` — teardown by lab id, and removal of leftovers of killed runs;
- :mod:`.topology` — the socket-LB topology (:func:`build_socklb_lab`);
- :mod:`.capture` — a real ``tcpdump`` in a lab namespace, parsed (:class:`Capture`);
- :mod:`.cluster` — the multi-node cluster (:class:`Cluster`: nodes, pods, native
  routing, per-node cgroups), :mod:`.addressing` its address plan, :mod:`.controller`
  the endpoint controller (Service/EndpointSlice/Node YAML), :mod:`.agents` one
  ``lbcore run`` per node, :mod:`.workload` the walkthrough's resources, :mod:`.state`
  the state on disk behind ``lbcore lab up|status|exec|down``.

Only the standard library is imported here (the controller and agents load PyYAML and
the core lazily).
"""

from .capture import Capture, Packet
from .cluster import Cluster, ClusterNode, ClusterPod
from .netns import NetLab, Netns
from .paths import CGROUP2_ROOT, NETNS_DIR, PREFIX, RUN_ROOT
from .procs import NetLabError, Proc, sh
from .sweep import destroy_lab, lab_ids, sweep_leftovers
from .topology import Pod, SockLBLab, build_socklb_lab

__all__ = [
    "CGROUP2_ROOT",
    "NETNS_DIR",
    "PREFIX",
    "RUN_ROOT",
    "Capture",
    "Cluster",
    "ClusterNode",
    "ClusterPod",
    "NetLab",
    "NetLabError",
    "Netns",
    "Packet",
    "Pod",
    "Proc",
    "SockLBLab",
    "build_socklb_lab",
    "destroy_lab",
    "lab_ids",
    "sh",
    "sweep_leftovers",
]
