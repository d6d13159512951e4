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
chain jumps to, with one conntrack match in it. It is never evaluated; it only holds
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
TOOL = "iptables-legacy"


def netns_path(netns: str | None) -> str | None:
    """A driver's ``netns`` option (a name under /run/netns, or a path) as a path."""
    if not netns:
        return None
    return netns if os.path.isabs(netns) else os.path.join("/run/netns", netns)


def _run(netns: str | None, tool: str, *args: str, stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    prefix = ["nsenter", f"--net={netns}", "--"] if netns else []
    return subprocess.run([*prefix, tool, *args], input=stdin, capture_output=True, text=True,
                          timeout=30)


def installed(netns: str | None = None) -> bool:
    """Is the keeper there? Reads only: no lock taken, no table loaded (a namespace
    without a legacy filter table has no keeper)."""
    if shutil.which(TOOL) is None:
        return False
    tables = _run(netns, "cat", "/proc/net/ip_tables_names")
    if "filter" not in tables.stdout.split():
        return False
    saved = _run(netns, f"{TOOL}-save", "-t", "filter")
    return f":{CHAIN} " in saved.stdout


def keep(netns: str | None = None) -> bool:
    """Install the keeper in ``netns`` (None: this namespace). True if it is there."""
    if shutil.which(TOOL) is None:
        LOG.warning("%s not found: connections NATed by the old datapath may lose their "
                    "translation when it is removed (nothing else may keep conntrack on)", TOOL)
        return False
    if installed(netns):
        return True
    r = _run(netns, f"{TOOL}-restore", "--noflush", "-w", "5",
             stdin=f"*filter\n:{CHAIN} - [0:0]\n{RULE}\nCOMMIT\n")
    if r.returncode != 0:
        LOG.warning("could not keep conntrack on (%s); connections NATed by the old "
                    "datapath may break when it is removed", r.stderr.strip())
        return False
    LOG.info("conntrack kept on (chain %s in the filter table) for the flows the old "
             "datapath NATed", CHAIN)
    return True


def release(netns: str | None = None) -> bool:
    """Remove the keeper; True if there was one."""
    if not installed(netns):
        return False
    r = _run(netns, f"{TOOL}-restore", "--noflush", "-w", "5",
             stdin=f"*filter\n:{CHAIN} - [0:0]\n-X {CHAIN}\nCOMMIT\n")
    if r.returncode != 0:
        LOG.warning("could not remove chain %s: %s", CHAIN, r.stderr.strip())
        return False
    LOG.info("removed the conntrack keeper (chain %s)", CHAIN)
    return True
