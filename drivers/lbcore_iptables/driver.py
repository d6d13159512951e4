"""The iptables driver: kube-proxy's iptables mode, as the baseline the others are
compared with. render (pure) -> apply (iptables-restore) -> read back (iptc)."""

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
from lbcore.model import DesiredState, FrontendState, NodeInfo, ServiceKey

from . import conntrack, readback
from .apply import BACKENDS, Iptables
from .naming import is_owned
from .render import RenderOptions, ServiceRules, assemble, render_service

log = logging.getLogger(__name__)
NAME = "iptables"
NETNS_DIR = "/run/netns"
UdpMap = dict[tuple[str, int], frozenset[tuple[str, int]]]  # UDP frontend -> endpoints


@dataclass(frozen=True)
class IptablesOptions:
    netns: str | None  # a name under /run/netns, or an absolute path; None: this namespace
    backend: str
    cluster_cidr: str | None
    masquerade_all: bool
    flush_conntrack: bool

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> IptablesOptions:
        reject_unknown_options(options, NAME, {"netns", "backend", "cluster_cidr",
                                               "masquerade_all", "flush_conntrack"})
        netns = option(options, NAME, "netns", str, "") or None
        if netns and "/" in netns and not os.path.isabs(netns):
            raise ConfigError(f"driver_options.netns: {netns!r} (driver {NAME}; valid: a "
                              "name under /run/netns or an absolute path)")
        backend = option(options, NAME, "backend", str, "legacy")
        if backend not in BACKENDS:
            raise ConfigError(f"driver_options.backend: {backend!r} (driver {NAME}; valid: "
                              f"{', '.join(BACKENDS)})")
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
        return cls(netns, backend, cidr, option(options, NAME, "masquerade_all", bool, False),
                   option(options, NAME, "flush_conntrack", bool, True))

    @property
    def netns_path(self) -> str | None:
        if self.netns is None:
            return None
        return self.netns if os.path.isabs(self.netns) else os.path.join(NETNS_DIR, self.netns)


class IptablesDriver(Driver):
    """kube-proxy's iptables mode: KUBE-SERVICES / KUBE-SVC / KUBE-SEP chains, applied
    with one ``iptables-restore --noflush`` per sync, partial when it can be."""

    name: ClassVar[str] = NAME

    def __init__(self, options: Mapping[str, Any], node: NodeInfo) -> None:
        super().__init__(options, node)
        self.opts = IptablesOptions.parse(options)
        self.render_opts = RenderOptions(
            self.opts.cluster_cidr, self.opts.masquerade_all,
            tuple(ip for ip in node.addresses if ":" not in ip))
        self.ipt = Iptables(self.opts.netns_path, self.opts.backend)
        self._rules: dict[ServiceKey, ServiceRules] | None = None  # in the kernel now
        self._hooks_ok = False
        self._udp: dict[ServiceKey, UdpMap] = {}

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            protocols=frozenset({"TCP", "UDP", "SCTP"}),
            families=frozenset({4}),
            session_affinity=True,
            source_ranges=True,
            external_traffic_local=True,
            internal_traffic_local=True,
            algorithms=frozenset({"random"}),
            node_ports="local",
            clients=frozenset({"pod", "host", "external"}),  # PREROUTING and OUTPUT hooks
            conntrack_nat=True,  # DNAT/masquerade by conntrack (lbcore.ctkeep)
            description="kube-proxy's iptables mode (nat KUBE-SERVICES/SVC/SEP chains, "
                        "statistic random, masquerade mark), iptables-restore per sync",
        )

    def check(self) -> list[Problem]:
        problems = []
        if os.geteuid() != 0:
            problems.append(Problem("permissions", "not running as root",
                                    "run as root (CAP_NET_ADMIN)"))
        for tool in self.ipt.missing_tools():
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
        full = changed is None or self._rules is None
        if full:
            rules = {k: render_service(fes, self.render_opts)
                     for k, fes in state.services.items()}
            wanted = {c for r in rules.values() for c in r.chains}
            delete = {c for c in self.ipt.chains("nat") if is_owned(c)} - wanted
            write: frozenset[ServiceKey] | None = None
            removed = 0
        else:
            assert changed is not None and self._rules is not None
            rules = dict(self._rules)
            before: set[str] = set()
            removed = 0
            for key in changed:
                old = rules.pop(key, None)
                if old is not None:
                    before |= set(old.chains)
                fes = state.frontends_of(key)
                if fes:
                    rules[key] = render_service(fes, self.render_opts)
                elif old is not None:
                    removed += 1
            delete = before - {c for k in changed if k in rules for c in rules[k].chains}
            write = changed
        text = assemble(rules, self.render_opts, write=write, delete=delete)
        try:
            self.ipt.restore(text)
            if not self._hooks_ok:
                self.ipt.ensure_hooks()
                self._hooks_ok = True
        except DriverError:
            self._rules, self._hooks_ok = None, False  # next sync: full, hooks re-checked
            raise
        self._rules = rules
        flushed = self._flush_conntrack(state, changed if not full else None)
        written = len(rules) if full else len([k for k in changed or () if k in rules])
        return SyncResult(full=full, frontends=sum(1 for fe in state.frontends if fe.family == 4),
                          services_written=written, services_removed=removed,
                          details={"restore_lines": text.count("\n"),
                                   "chains_deleted": len(delete),
                                   "conntrack_deleted": flushed})

    def _flush_conntrack(self, state: DesiredState,
                         changed: frozenset[ServiceKey] | None) -> int:
        keys = set(state.services) | set(self._udp) if changed is None else changed
        stale: conntrack.Stale = {}
        for key in keys:
            after: UdpMap = {(fe.ip, fe.port): frozenset(
                (b.ip, b.port) for b in fe.backends + fe.external_backends)
                for fe in state.frontends_of(key) if fe.protocol == "UDP" and fe.family == 4}
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
        rs = readback.read_ruleset(self.opts.netns_path, self.opts.backend, self.ipt.save)
        return readback.frontends(rs)

    def ruleset_text(self) -> str:
        """What the kernel holds now, as ``iptables-save`` prints it (nat + filter)."""
        return self.ipt.save("filter") + self.ipt.save("nat")

    # --------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        removed = self.ipt.cleanup()
        self._rules, self._hooks_ok, self._udp = None, False, {}
        log.info("iptables: removed %d chains and the jumps to them", removed)
