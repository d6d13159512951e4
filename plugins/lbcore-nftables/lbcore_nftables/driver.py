"""The ``nftables`` driver: kube-proxy's nftables mode (KEP-3866) as an lbcore plugin.

render (pure, per service, :mod:`.render`) -> plan (pure: what to add and delete,
:mod:`.plan`) -> apply (libnftables JSON transactions, :mod:`.nft`) -> read back
(:mod:`.readback`). A partial sync rewrites only the changed services, in one
transaction; a full sync (the first, after a failure, periodically) compares the kernel's
lists of chain names and map elements with the plan and writes the difference, a batch
of services per transaction (each service atomic). Stale UDP conntrack entries of
removed endpoints are deleted afterwards, as kube-proxy does.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
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

from . import nft, plan, readback
from .render import RenderOptions, delete_table, render_services

log = logging.getLogger(__name__)
NAME = "nftables"
NETNS_DIR = "/run/netns"
OPTIONS = {"netns", "cluster_cidr", "pod_interface_prefix", "masquerade_all", "flush_conntrack"}
UdpKey = tuple[str, int]
UdpEndpoints = tuple[ServiceKey, frozenset[UdpKey]]  # a UDP frontend's service, endpoints


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
        self._udp: dict[UdpKey, UdpEndpoints] = {}  # UDP frontend -> its endpoints
        self._table: plan.Table | None = None  # what the kernel holds; None: ask it

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
        # Nothing to load: the first (full) sync adopts what the table holds.

    def sync(self, state: DesiredState, changed: frozenset[ServiceKey] | None) -> SyncResult:
        full = changed is None or self._table is None
        opts, netns = self.opts.render, self.opts.netns_path
        try:
            if full:
                table = plan.Table.from_listing(*nft.list_names(netns))
                self._table = None
                docs: Iterable[dict[str, Any]] = plan.full_sync(
                    table, state.services.keys(),
                    lambda keys: render_services(state, opts, keys), opts)
                written = len(state.services)
            else:
                assert changed is not None and self._table is not None
                table, wanted = self._table, render_services(state, opts, changed)
                phases = table.update(wanted)
                docs = [phases.document()] if len(phases) else []
                table.commit(wanted)
                written = len(wanted)
            transactions = commands = 0
            for doc in docs:  # a full sync's batches are planned as they are applied
                nft.apply(netns, doc)
                transactions, commands = transactions + 1, commands + len(doc["nftables"]) - 1
        except BaseException:
            self._table = None  # the kernel may hold anything: list it next time
            raise
        self._table = table
        flushed = self._flush_stale_udp(state, changed if not full else None)
        return SyncResult(full=full, frontends=sum(1 for fe in state.frontends if fe.family == 4),
                          services_written=written,
                          details={"transactions": transactions, "commands": commands,
                                   "conntrack_deleted": flushed})

    def _flush_stale_udp(self, state: DesiredState, changed: frozenset[ServiceKey] | None
                         ) -> int:
        stale = self._stale_udp(state, changed)
        if not stale or not self.opts.flush_conntrack:
            return 0
        try:
            return nft.flush_udp_conntrack(self.opts.netns_path, stale)
        except Exception as exc:  # the rules are right; a stale entry expires by itself
            log.warning("nftables: deleting stale UDP conntrack entries failed: %s", exc)
            return 0

    def _stale_udp(self, state: DesiredState, changed: frozenset[ServiceKey] | None
                   ) -> list[tuple[str, int, UdpKey | None]]:
        """(frontend ip, port, endpoint gone or None for "all") of the UDP frontends of
        ``changed`` services (None: every service) whose endpoints went away."""
        keys = state.services.keys() if changed is None else changed
        after: dict[UdpKey, UdpEndpoints] = {}
        for key in keys:
            for fe in state.frontends_of(key):
                if fe.protocol == "UDP" and fe.family == 4:
                    after[(fe.ip, fe.port)] = (key, frozenset(
                        (b.ip, b.port) for b in fe.backends + fe.external_backends))
        before = {fe: v for fe, v in self._udp.items() if changed is None or v[0] in changed}
        stale: list[tuple[str, int, UdpKey | None]] = []
        for fe, (_key, old) in before.items():
            new = after.get(fe, (None, frozenset()))[1]
            stale += [(fe[0], fe[1], ep) for ep in sorted(old - new)]
            self._udp.pop(fe)
        for fe, (_key, new) in after.items():
            if new and not before.get(fe, (None, frozenset()))[1]:
                stale.append((fe[0], fe[1], None))  # had no endpoints (rejected) or was new
        self._udp.update(after)
        return stale

    def dump(self) -> list[FrontendState]:
        return readback.Table(nft.list_table(self.opts.netns_path)).frontends()

    def cleanup(self) -> None:
        nft.apply(self.opts.netns_path, delete_table())
        self._udp, self._table = {}, None
