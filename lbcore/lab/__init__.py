"""The namespace lab: a small "cluster" of network namespaces, veth pairs, a bridge and
cgroups, built in seconds on one machine (root only). The demo, the benchmarks and the
integration tests all stand on it.

- :mod:`.netns` — :class:`NetLab` (namespaces, links, cgroups, private bpffs, teardown)
  and :class:`Netns`;
- :mod:`.procs` — :func:`sh`, :class:`Proc`, processes in a namespace *and* a cgroup;
- :mod:`.clients` / :mod:`.servers` — curl, dig, UDP; HTTP, UDP, dnsmasq, nginx;
- :mod:`.sweep` — teardown by lab id, and removal of leftovers of killed runs;
- :mod:`.topology` — the socket-LB topology (:func:`build_socklb_lab`);
- :mod:`.capture` — a real ``tcpdump`` in a lab namespace, parsed (:class:`Capture`).

Only the standard library is imported here.
"""

from .capture import Capture, Packet
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
