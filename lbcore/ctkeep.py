"""Keep netfilter connection tracking enabled in a network namespace.

The kernel runs conntrack in a namespace only while something there uses it: every
iptables rule or nftables expression that needs it holds a reference (DNAT,
MASQUERADE, ``-m conntrack``...); when the last one goes, conntrack's hooks are
unregistered. The entries stay in the table, but no packet is looked up in them any
more, so a connection an old datapath DNATed (a pod's connection to a ClusterIP)
loses its translation the moment that datapath's rules are removed: its requests go
to the bare ClusterIP, the backend's replies reach the client from the wrong address.

A live switch from a conntrack-NAT datapath (iptables, nftables) to one that needs no
conntrack (socklb) therefore first installs a *keeper*: one chain that no built-in
chain jumps to, with one conntrack match in it, in the IPv4 and the IPv6 filter table
(conntrack is referenced per family). It is never evaluated; it only holds
the reference, so established flows keep their NAT for as long as they live. It is
removed when a conntrack-NAT datapath is switched to again, and by ``lbcore cleanup``.
On a usual node (container runtime and CNI rules, kubelet) conntrack is on anyway.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

LOG = logging.getLogger(__name__)

CHAIN = "LBCORE-CT-KEEP"
RULE = f"-A {CHAIN} -m conntrack --ctstate INVALID -m comment --comment " \
       '"lbcore: keeps conntrack on for flows NATed by an earlier datapath" -j RETURN'
# Conntrack is referenced per address family: one keeper per family's tables.
TOOLS = {4: "iptables-legacy", 6: "ip6tables-legacy"}
TABLES = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}


def netns_path(netns: str | None) -> str | None:
    """A driver's ``netns`` option (a name under /run/netns, or a path) as a path."""
    if not netns:
        return None
    return netns if os.path.isabs(netns) else os.path.join("/run/netns", netns)


def _run(netns: str | None, tool: str, *args: str, stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    prefix = ["nsenter", f"--net={netns}", "--"] if netns else []
    return subprocess.run([*prefix, tool, *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def _families() -> list[int]:
    return [f for f, tool in TOOLS.items() if shutil.which(f"{tool}-restore")]


def installed(netns: str | None = None, family: int = 4) -> bool:
    """Is the keeper there for ``family``? Reads only: no lock taken, no table loaded
    (a namespace without that family's legacy filter table has no keeper)."""
    tool = TOOLS[family]
    if shutil.which(f"{tool}-save") is None:
        return False
    tables = _run(netns, "cat", TABLES[family])
    if "filter" not in tables.stdout.split():
        return False
    return f":{CHAIN} " in _run(netns, f"{tool}-save", "-t", "filter").stdout


def keep(netns: str | None = None) -> bool:
    """Install the keeper in ``netns`` (None: this namespace), for every address
    family whose tools are installed. True if it is there for all of them."""
    families = _families()
    if not families:
        LOG.warning("%s not found: connections NATed by the old datapath may lose their "
                    "translation when it is removed", TOOLS[4])
        return False
    ok = True
    for family in families:
        if installed(netns, family):
            continue
        r = _run(netns, f"{TOOLS[family]}-restore", "--noflush", "-w", "60",
                 stdin=f"*filter\n:{CHAIN} - [0:0]\n{RULE}\nCOMMIT\n")
        if r.returncode != 0:
            LOG.warning("could not keep IPv%d conntrack on (%s); connections NATed by the "
                        "old datapath may break when it is removed", family, r.stderr.strip())
            ok = False
    if ok:
        LOG.info("conntrack kept on (chain %s in the filter tables) for the flows the old "
                 "datapath NATed", CHAIN)
    return ok


def release(netns: str | None = None) -> bool:
    """Remove the keeper (every family); True if there was one."""
    removed = False
    for family in _families():
        if not installed(netns, family):
            continue
        r = _run(netns, f"{TOOLS[family]}-restore", "--noflush", "-w", "60",
                 stdin=f"*filter\n:{CHAIN} - [0:0]\n-X {CHAIN}\nCOMMIT\n")
        if r.returncode != 0:
            LOG.warning("could not remove chain %s (IPv%d): %s", CHAIN, family,
                        r.stderr.strip())
            continue
        removed = True
    if removed:
        LOG.info("removed the conntrack keeper (chain %s)", CHAIN)
    return removed
