"""The iptables driver: kube-proxy's iptables mode, as the baseline the others are
compared with. render (pure) -> apply (iptables-restore) -> read back (iptc), for IPv4
(iptables) and IPv6 (ip6tables), each family in its own tables as kube-proxy's
dual-stack proxier keeps them."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from lbcore.driver import Capabilities, Driver, Problem, SyncResult, option, reject_unknown_options
from lbcore.errors import ConfigError, DriverError
from lbcore.memory import gc_paused
from lbcore.model import DesiredState, FrontendState, NodeInfo, ServiceKey, ip_family

from . import conntrack, readback
from .apply import BACKENDS, LOCK_WAIT, Iptables
from .render import RenderOptions
from .tables import FamilyTables

log = logging.getLogger(__name__)
NAME = "iptables"
NETNS_DIR = "/run/netns"
FAMILIES = (4, 6)
UdpMap = dict[tuple[str, int], frozenset[tuple[str, int]]]  # UDP frontend -> endpoints


def _cluster_cidrs(value: Any) -> dict[int, str]:
    """``cluster_cidr``: one CIDR, a list, or ``"v4,v6"`` (as kube-proxy's
    --cluster-cidr); at most one per family."""
    if value in (None, "", []):
        return {}
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"driver_options.cluster_cidr: {value!r} (driver {NAME}; valid: a "
                          "CIDR, a list of CIDRs or 'v4cidr,v6cidr')")
    out: dict[int, str] = {}
    for item in items:
        try:
            net = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"driver_options.cluster_cidr: {item.strip()!r} is not a CIDR "
                              f"(driver {NAME}; valid: e.g. 10.244.0.0/16 or "
                              "fd00:10::/48)") from None
        if net.version in out:
            raise ConfigError(f"driver_options.cluster_cidr: two IPv{net.version} CIDRs "
                              f"({out[net.version]}, {net}) (driver {NAME}; valid: at most "
                              "one per IP family)")
        out[net.version] = str(net)
    return out


@dataclass(frozen=True)
class IptablesOptions:
    netns: str | None  # a name under /run/netns, or an absolute path; None: this namespace
    backend: str
    cluster_cidrs: Mapping[int, str]  # family -> CIDR
    masquerade_all: bool
    flush_conntrack: bool
    lock_wait: int  # seconds a restore waits for the machine-wide xtables lock

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> IptablesOptions:
        reject_unknown_options(options, NAME, {"netns", "backend", "cluster_cidr",
                                               "masquerade_all", "flush_conntrack",
                                               "lock_wait"})
        netns = option(options, NAME, "netns", str, "") or None
        if netns and "/" in netns and not os.path.isabs(netns):
            raise ConfigError(f"driver_options.netns: {netns!r} (driver {NAME}; valid: a "
                              "name under /run/netns or an absolute path)")
        backend = option(options, NAME, "backend", str, "legacy")
        if backend not in BACKENDS:
            raise ConfigError(f"driver_options.backend: {backend!r} (driver {NAME}; valid: "
                              f"{', '.join(BACKENDS)})")
        return cls(netns, backend, _cluster_cidrs(options.get("cluster_cidr")),
                   option(options, NAME, "masquerade_all", bool, False),
                   option(options, NAME, "flush_conntrack", bool, True),
                   option(options, NAME, "lock_wait", int, LOCK_WAIT, minimum=1, maximum=3600))

    @property
    def netns_path(self) -> str | None:
        if self.netns is None:
            return None
        return self.netns if os.path.isabs(self.netns) else os.path.join(NETNS_DIR, self.netns)


class IptablesDriver(Driver):
    """kube-proxy's iptables mode: KUBE-SERVICES / KUBE-SVC / KUBE-SEP chains, applied
    with one ``iptables-restore --noflush`` per family and sync, partial when it can be."""

    name: ClassVar[str] = NAME

    def __init__(self, options: Mapping[str, Any], node: NodeInfo) -> None:
        super().__init__(options, node)
        self.opts = IptablesOptions.parse(options)
        self.tables: dict[int, FamilyTables] = {}
        for family in FAMILIES:
            render_opts = RenderOptions(
                self.opts.cluster_cidrs.get(family), self.opts.masquerade_all,
                tuple(ip for ip in node.addresses if ip_family(ip) == family), family)
            ipt = Iptables(self.opts.netns_path, self.opts.backend, family, self.opts.lock_wait)
            self.tables[family] = FamilyTables(ipt, render_opts)
        self._present: set[ServiceKey] = set()
        self._udp: dict[ServiceKey, UdpMap] = {}

    @property
    def ipt(self) -> Iptables:
        """The IPv4 tools (the IPv6 ones: ``self.tables[6].ipt``)."""
        return self.tables[4].ipt

    @property
    def render_opts(self) -> RenderOptions:
        return self.tables[4].base_opts

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            protocols=frozenset({"TCP", "UDP", "SCTP"}),
            families=frozenset(FAMILIES),
            session_affinity=True,
            source_ranges=True,
            external_traffic_local=True,
            internal_traffic_local=True,
            algorithms=frozenset({"random"}),
            node_ports="local",
            clients=frozenset({"pod", "host", "external"}),  # PREROUTING and OUTPUT hooks
            conntrack_nat=True,  # DNAT/masquerade by conntrack (lbcore.ctkeep)
            description="kube-proxy's iptables mode (nat KUBE-SERVICES/SVC/SEP chains, "
                        "statistic random, masquerade mark), iptables-restore and "
                        "ip6tables-restore per sync",
        )

    def check(self) -> list[Problem]:
        problems = []
        if os.geteuid() != 0:
            problems.append(Problem("permissions", "not running as root",
                                    "run as root (CAP_NET_ADMIN)"))
        for tool in sorted({t for ft in self.tables.values() for t in ft.ipt.missing_tools()}):
            problems.append(Problem("tools", f"{tool} not found",
                                    "apt-get install iptables util-linux"))
        path = self.opts.netns_path
        if path and not os.path.exists(path):
            problems.append(Problem("netns", f"network namespace {path} does not exist",
                                    "create it, or fix driver_options.netns"))
        return problems

    def setup(self) -> None:
        path = self.opts.netns_path
        if path and not os.path.exists(path):
            raise DriverError(NAME, f"network namespace {path} does not exist")
        # Nothing to load: the first sync is full and reconciles with what the kernel holds.

    # ----------------------------------------------------------------- sync

    def sync(self, state: DesiredState, changed: frozenset[ServiceKey] | None) -> SyncResult:
        with gc_paused():
            return self._sync(state, changed)

    def _sync(self, state: DesiredState, changed: frozenset[ServiceKey] | None) -> SyncResult:
        try:
            results = {family: ft.sync(state, changed) for family, ft in self.tables.items()}
        except Exception:
            for ft in self.tables.values():  # as kube-proxy's needFullSync: all of it
                ft.forget()
            raise
        present = set(state.services)
        removed = len(self._present - present) if changed is None else len(
            {k for k in changed if k in self._present and k not in present})
        self._present = present
        flushed = self._flush_conntrack(state, changed)
        full = all(r.full for r in results.values())
        return SyncResult(
            full=full, frontends=len(state.frontends),
            services_written=max(r.services_written for r in results.values()),
            services_removed=removed,
            details={"restore_lines": sum(r.restore_lines for r in results.values()),
                     "chains_deleted": sum(r.chains_deleted for r in results.values()),
                     "conntrack_deleted": flushed,
                     "large_cluster": sorted(f for f, r in results.items() if r.large_cluster),
                     "families": {f"ipv{f}": {"full": r.full, "restore_lines": r.restore_lines,
                                              "restores": r.restores,
                                              "services_written": r.services_written}
                                  for f, r in results.items()}})

    def _flush_conntrack(self, state: DesiredState,
                         changed: frozenset[ServiceKey] | None) -> int:
        keys = set(state.services) | set(self._udp) if changed is None else changed
        stale: conntrack.Stale = {}
        for key in keys:
            after: UdpMap = {(fe.ip, fe.port): frozenset(
                (b.ip, b.port) for b in fe.backends + fe.external_backends)
                for fe in state.frontends_of(key) if fe.protocol == "UDP"}
            before = self._udp.pop(key, {})
            stale.update(conntrack.stale_udp(before, after, set(before) | set(after)))
            if after:
                self._udp[key] = after
        if not self.opts.flush_conntrack or not stale:
            return 0
        try:
            return conntrack.flush_stale_udp(self.opts.netns_path, stale)
        except Exception as exc:  # the rules are right; a stale entry expires by itself
            log.warning("iptables: deleting stale UDP conntrack entries failed: %s", exc)
            return 0

    # ------------------------------------------------------------- read back

    def dump(self) -> list[FrontendState]:
        rows: list[FrontendState] = []
        for family, ft in self.tables.items():
            rs = readback.read_ruleset(self.opts.netns_path, self.opts.backend, ft.ipt.save,
                                       family)
            rows += readback.frontends(rs)
        rows.sort(key=lambda s: (ip_family(s.address.ip), s.id))
        return [FrontendState(i, s.address, s.type, s.backends, s.service, s.flags)
                for i, s in enumerate(rows, start=1)]

    def ruleset_text(self, family: int = 4) -> str:
        """What the kernel holds now, as ``iptables-save`` prints it (filter + nat)."""
        ipt = self.tables[family].ipt
        return ipt.save("filter") + ipt.save("nat")

    # --------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        removed = 0
        for ft in self.tables.values():
            removed += ft.ipt.cleanup()
            ft.forget()
        self._udp, self._present = {}, set()
        log.info("iptables: removed %d chains and the jumps to them", removed)
