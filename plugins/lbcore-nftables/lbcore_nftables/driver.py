"""The ``nftables`` driver: kube-proxy's nftables mode (KEP-3866) as an lbcore plugin.

render (pure, :mod:`.render`) -> apply (one libnftables JSON transaction, :mod:`.nft`)
-> read back (:mod:`.readback`). Every sync renders the whole table and applies it in one
transaction (atomic: a reader never sees half a service); stale UDP conntrack entries of
removed endpoints are deleted afterwards, as kube-proxy does.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from lbcore.driver import (
    DRIVER_API_VERSION,
    Capabilities,
    Driver,
    Problem,
    SyncResult,
    option,
    reject_unknown_options,
)
from lbcore.errors import ConfigError, DriverError
from lbcore.model import DesiredState, FrontendState, NodeInfo, ServiceKey

from . import nft, readback
from .render import RenderOptions, delete_table, render, transaction

log = logging.getLogger(__name__)
NAME = "nftables"
NETNS_DIR = "/run/netns"
OPTIONS = {"netns", "cluster_cidr", "pod_interface_prefix", "masquerade_all", "flush_conntrack"}
UdpKey = tuple[str, int]


@dataclass(frozen=True)
class NftablesOptions:
    netns: str | None  # a name under /run/netns, or an absolute path; None: this namespace
    render: RenderOptions
    flush_conntrack: bool

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> NftablesOptions:
        reject_unknown_options(options, NAME, OPTIONS)
        netns = option(options, NAME, "netns", str, "") or None
        if netns and "/" in netns and not os.path.isabs(netns):
            raise ConfigError(f"driver_options.netns: {netns!r} (driver {NAME}; valid: a "
                              "name under /run/netns or an absolute path)")
        cidr = option(options, NAME, "cluster_cidr", str, "") or None
        if cidr:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                net = None
            if net is None or net.version != 4:
                raise ConfigError(f"driver_options.cluster_cidr: {cidr!r} (driver {NAME}; "
                                  "valid: an IPv4 CIDR such as 10.244.0.0/16)")
            cidr = str(net)
        prefix = option(options, NAME, "pod_interface_prefix", str, "") or None
        return cls(netns, RenderOptions(cidr, prefix,
                                        option(options, NAME, "masquerade_all", bool, False)),
                   option(options, NAME, "flush_conntrack", bool, True))

    @property
    def netns_path(self) -> str | None:
        if self.netns is None:
            return None
        return self.netns if os.path.isabs(self.netns) else os.path.join(NETNS_DIR, self.netns)


class NftablesDriver(Driver):
    """One private table ``ip lbcore``: a verdict map for service dispatch, numgen random
    for endpoint choice, dnat, masquerade marks, reject without endpoints."""

    name: ClassVar[str] = NAME
    api_version: ClassVar[int] = DRIVER_API_VERSION

    def __init__(self, options: Mapping[str, Any], node: NodeInfo) -> None:
        super().__init__(options, node)
        self.opts = NftablesOptions.parse(options)
        self._udp: dict[UdpKey, frozenset[UdpKey]] = {}  # UDP frontend -> its endpoints

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            protocols=frozenset({"TCP", "UDP", "SCTP"}),
            families=frozenset({4}),
            session_affinity=True,
            source_ranges=False,
            external_traffic_local=True,
            internal_traffic_local=True,
            algorithms=frozenset({"random"}),
            node_ports="local",  # per packet: this node answers for its own addresses
            clients=frozenset({"pod", "host", "external"}),
            conntrack_nat=True,  # DNAT/masquerade by conntrack (lbcore.ctkeep)
            description="kube-proxy's nftables mode: table ip lbcore, verdict map dispatch, "
                        "numgen random, one libnftables JSON transaction per sync",
        )

    def check(self) -> list[Problem]:
        problems = []
        if os.geteuid() != 0:
            problems.append(Problem("permissions", "not running as root",
                                    "run as root (CAP_NET_ADMIN)"))
        try:
            import nftables  # noqa: F401
        except ImportError:
            problems.append(Problem("libnftables", "Python module nftables not importable",
                                    "apt-get install python3-nftables; scripts/setup.sh "
                                    "links it into the venv"))
        path = self.opts.netns_path
        if path and not os.path.exists(path):
            problems.append(Problem("netns", f"network namespace {path} does not exist",
                                    "create it, or fix driver_options.netns"))
        return problems

    def setup(self) -> None:
        path = self.opts.netns_path
        if path and not os.path.exists(path):
            raise DriverError(NAME, f"network namespace {path} does not exist")
        # Nothing to load: every sync is one whole transaction that adopts the table.

    def sync(self, state: DesiredState, changed: frozenset[ServiceKey] | None) -> SyncResult:
        rs = render(state, self.opts.render)
        table = readback.Table(nft.list_table(self.opts.netns_path))
        doc = transaction(rs, table.chains, table.sets)
        nft.apply(self.opts.netns_path, doc)
        stale = self._stale_udp(state)
        flushed = 0
        if stale and self.opts.flush_conntrack:
            try:
                flushed = nft.flush_udp_conntrack(self.opts.netns_path, stale)
            except Exception as exc:  # the rules are right; a stale entry expires by itself
                log.warning("nftables: deleting stale UDP conntrack entries failed: %s", exc)
        return SyncResult(full=True, frontends=len(rs.elements),
                          services_written=len(state.services),
                          details={"commands": len(doc["nftables"]) - 1,
                                   "chains": len(rs.chains), "conntrack_deleted": flushed})

    def _stale_udp(self, state: DesiredState) -> list[tuple[str, int, UdpKey | None]]:
        after = {(fe.ip, fe.port): frozenset((b.ip, b.port)
                                              for b in fe.backends + fe.external_backends)
                 for fe in state.frontends if fe.protocol == "UDP" and fe.family == 4}
        stale: list[tuple[str, int, UdpKey | None]] = []
        for fe, old in self._udp.items():
            new = after.get(fe, frozenset())
            stale += [(fe[0], fe[1], ep) for ep in sorted(old - new)]
        for fe, new in after.items():
            if new and not self._udp.get(fe):  # had no endpoints (rejected) or was new
                stale.append((fe[0], fe[1], None))
        self._udp = after
        return stale

    def dump(self) -> list[FrontendState]:
        return readback.Table(nft.list_table(self.opts.netns_path)).frontends()

    def cleanup(self) -> None:
        nft.apply(self.opts.netns_path, delete_table())
        self._udp = {}
