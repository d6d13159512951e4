"""Render, pure: desired frontends -> the ``iptables-restore`` text kube-proxy would write.

The layout follows kube-proxy's iptables mode (one chain set per *service port*, shared
by all of its frontends)::

    nat PREROUTING, OUTPUT ─▶ KUBE-SERVICES ─┬─ -d clusterIP ──────────▶ KUBE-SVC-X | KUBE-SVL-X
                                             ├─ -d externalIP ─────────▶ KUBE-EXT-X
                                             ├─ -d LB IP ─▶ KUBE-FW-X ─▶ KUBE-EXT-X (source ranges)
                                             └─ -d node IP ─▶ KUBE-NODEPORTS ─ --dport ─▶ KUBE-EXT-X
    KUBE-EXT-X ─▶ KUBE-MARK-MASQ, KUBE-SVC-X   (eTP Local: pod / LOCAL traffic -> SVC, rest -> SVL)
    KUBE-SVC-X ─ statistic 1/n, 1/(n-1), … (recent affinity first) ─▶ KUBE-SEP-Y ─▶ DNAT
    nat POSTROUTING ─▶ KUBE-POSTROUTING: mark 0x4000 -> MASQUERADE
    filter: REJECT (no endpoints), DROP (no local endpoints, source ranges)

Each service renders into a :class:`ServiceRules` per IP family (the same chain names
in iptables and ip6tables); :func:`shared_chains` builds the shared top-level chains and
:func:`assemble` writes the chains it is given, plus ``-X`` for chains that must go, so
the driver can write only what changed (partial sync, KEP-3453). Lines are spelled in
``iptables-save`` order so what is written and what is read back compare equal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lbcore.model import Backend, DesiredState, Frontend, FrontendType, ServiceKey, ip_family

from .naming import EXT, FW, SVC, SVL, endpoint_chain, endpoint_text, service_chain

MASQ_MARK = "0x4000"
# kube-proxy's largeClusterEndpointsThreshold: above this many endpoints (of one family)
# the per-endpoint rules carry no comment match (each costs 256 bytes in the kernel's
# rule blob; kube-proxy measured the ruleset up to 40% smaller without them).
LARGE_CLUSTER_ENDPOINTS = 1000
REJECT_WITH = {4: "icmp-port-unreachable", 6: "icmp6-port-unreachable"}
HOST_BITS = {4: "/32", 6: "/128"}
FULL_MASK = {4: "255.255.255.255", 6: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}
TOP_NAT = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-MARK-MASQ", "KUBE-POSTROUTING")
TOP_FILTER = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL", "KUBE-FORWARD")
NODEPORTS_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"

# Jumps from the built-in chains: ensured once (setup, after a failure), never flushed.
HOOKS: tuple[tuple[str, str, str], ...] = (
    ("nat", "PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("nat", "OUTPUT", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("nat", "POSTROUTING",
     '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'),
    ("filter", "INPUT", '-m conntrack --ctstate NEW -m comment --comment '
     '"kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("filter", "INPUT", '-m conntrack --ctstate NEW -m comment --comment '
     '"kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'),
    ("filter", "FORWARD", '-m conntrack --ctstate NEW -m comment --comment '
     '"kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("filter", "FORWARD",
     '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'),
    ("filter", "FORWARD", '-m conntrack --ctstate NEW -m comment --comment '
     '"kubernetes service portals" -j KUBE-SERVICES'),
    ("filter", "FORWARD", '-m conntrack --ctstate NEW -m comment --comment '
     '"kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'),
    ("filter", "OUTPUT", '-m conntrack --ctstate NEW -m comment --comment '
     '"kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("filter", "OUTPUT", '-m conntrack --ctstate NEW -m comment --comment '
     '"kubernetes service portals" -j KUBE-SERVICES'),
)


@dataclass(frozen=True)
class RenderOptions:
    """The rules of one IP ``family`` (4: iptables, 6: ip6tables). ``cluster_cidr`` (of
    that family): traffic from outside it to a service is masqueraded (None: only
    external frontends and hairpin are); ``masquerade_all``: masquerade everything;
    ``node_addresses``: where NodePorts answer (those of the family are used);
    ``large_cluster``: kube-proxy's large cluster mode (no comments on the
    per-endpoint rules, see :data:`LARGE_CLUSTER_ENDPOINTS`)."""

    cluster_cidr: str | None = None
    masquerade_all: bool = False
    node_addresses: tuple[str, ...] = ()
    family: int = 4
    large_cluster: bool = False


@dataclass
class ServiceRules:
    """One service's share of the ruleset."""

    services: list[str] = field(default_factory=list)  # nat KUBE-SERVICES
    nodeports: list[str] = field(default_factory=list)  # nat KUBE-NODEPORTS
    filter_services: list[str] = field(default_factory=list)  # filter KUBE-SERVICES
    filter_external: list[str] = field(default_factory=list)  # filter KUBE-EXTERNAL-SERVICES
    filter_firewall: list[str] = field(default_factory=list)  # filter KUBE-PROXY-FIREWALL
    chains: dict[str, list[str]] = field(default_factory=dict)  # nat per-service chains


def _c(text: str) -> str:
    return f'-m comment --comment "{text}"'


def _match(dst: str | None, proto: str, port: int, comment: str, hl: str = "/32") -> str:
    """``-d IP/32 -p P -m comment … -m P --dport N`` in iptables-save order (``hl``:
    the host prefix of the family, /32 or /128)."""
    p = proto.lower()
    d = f"-d {dst}{hl} " if dst else ""
    return f"{d}-p {p} {_c(comment)} -m {p} --dport {port}"


class _PortRenderer:
    """The chains of one service port (all frontends of ``ns/svc:port`` + protocol)."""

    def __init__(self, frontends: Sequence[Frontend], opts: RenderOptions,
                 out: ServiceRules) -> None:
        fe0 = frontends[0]
        self.sp, self.proto, self.opts, self.out = fe0.service_port, fe0.protocol, opts, out
        self.p = self.proto.lower()
        self.hl = HOST_BITS[opts.family]
        self.reject = f"-j REJECT --reject-with {REJECT_WITH[opts.family]}"
        self.affinity = fe0.session_affinity_timeout
        self.svc = service_chain(SVC, self.sp, self.proto)
        self.svl = service_chain(SVL, self.sp, self.proto)
        self.ext = service_chain(EXT, self.sp, self.proto)
        self.fw = service_chain(FW, self.sp, self.proto)
        self.cluster: tuple[Backend, ...] | None = None  # all usable endpoints
        self.local: tuple[Backend, ...] | None = None  # node-local ones, when a policy needs
        for fe in frontends:
            if fe.type is FrontendType.CLUSTER_IP and fe.internal_traffic_local:
                self.local = fe.backends
            else:
                self.cluster = fe.backends
            if fe.type is not FrontendType.CLUSTER_IP and fe.external_traffic_local:
                self.local = fe.external_backends
        self.seps: dict[Backend, tuple[str, str]] = {}  # endpoint -> (ip:port text, chain)
        for b in (self.cluster or ()) + (self.local or ()):
            if b not in self.seps:
                ep = endpoint_text(b.ip, b.port)
                self.seps[b] = ep, endpoint_chain(self.sp, self.proto, ep)
        for fe in frontends:
            self._frontend(fe)
        self._endpoint_chains()

    def _chain(self, name: str) -> list[str]:
        return self.out.chains.setdefault(name, [])

    def _m(self, fe: Frontend, comment: str, *, node_port: bool = False) -> str:
        dst = None if node_port else fe.ip
        return _match(dst, fe.protocol, fe.port, comment, self.hl)

    # -- entry points -------------------------------------------------------------

    def _frontend(self, fe: Frontend) -> None:
        out = self.out
        if fe.type is FrontendType.CLUSTER_IP:
            local = fe.internal_traffic_local
            eps, chain = (self.local, self.svl) if local else (self.cluster, self.svc)
            if not eps:
                out.filter_services.append(
                    f"-A KUBE-SERVICES {self._m(fe, f'{self.sp} cluster IP has no endpoints')} "
                    f"{self.reject}")
                return
            out.services.append(f"-A KUBE-SERVICES {self._m(fe, f'{self.sp} cluster IP')}"
                                f" -j {chain}")
            self._service_chain(chain, eps, masq_for=fe)
            return
        what = {FrontendType.NODE_PORT: "nodePort", FrontendType.EXTERNAL_IP: "external IP",
                FrontendType.LOAD_BALANCER: "loadbalancer IP"}[fe.type]
        node_port = fe.type is FrontendType.NODE_PORT
        addrtype = "-m addrtype --dst-type LOCAL " if node_port else ""
        if not self.cluster:
            if node_port and any("nodePort has no endpoints" in r for r in out.filter_external):
                return  # one rule covers every node address
            out.filter_external.append(
                f"-A KUBE-EXTERNAL-SERVICES {addrtype}"
                f"{self._m(fe, f'{self.sp} {what} has no endpoints', node_port=node_port)} "
                f"{self.reject}")
            return
        if fe.external_traffic_local and not fe.external_backends:
            rule = (f"-A KUBE-EXTERNAL-SERVICES {addrtype}"
                    f"{self._m(fe, f'{self.sp} has no local endpoints', node_port=node_port)}"
                    " -j DROP")
            if rule not in out.filter_external:
                out.filter_external.append(rule)
        self._ext_chain(fe)
        if node_port:
            rule = f"-A KUBE-NODEPORTS {self._m(fe, self.sp, node_port=True)} -j {self.ext}"
            if rule not in out.nodeports:
                out.nodeports.append(rule)
            return
        target = self.ext
        if fe.source_ranges:
            target = self.fw
            fw = self._chain(self.fw)
            comment = f"{self.sp} {what}"
            for cidr in fe.source_ranges:
                net = ipaddress.ip_network(cidr, strict=False)
                rule = f"-A {self.fw} -s {net} {_c(comment)} -j {self.ext}"
                if rule not in fw:
                    fw.append(rule)
            note = f"other traffic to {self.sp} {what} will be dropped by KUBE-PROXY-FIREWALL"
            if f"-A {self.fw} {_c(note)}" not in fw:
                fw.append(f"-A {self.fw} {_c(note)}")
            out.filter_firewall.append(
                f"-A KUBE-PROXY-FIREWALL "
                f"{self._m(fe, f'{self.sp} traffic not accepted by {self.fw}')} -j DROP")
        out.services.append(f"-A KUBE-SERVICES {self._m(fe, f'{self.sp} {what}')} -j {target}")

    # -- per-service chains -------------------------------------------------------

    def _ext_chain(self, fe: Frontend) -> None:
        if self.ext in self.out.chains:
            return
        ext = self._chain(self.ext)
        if not fe.external_traffic_local:
            ext.append(f"-A {self.ext} "
                       f"{_c(f'masquerade traffic for {self.sp} external destinations')}"
                       " -j KUBE-MARK-MASQ")
            ext.append(f"-A {self.ext} -j {self.svc}")
            self._service_chain(self.svc, self.cluster or (), masq_for=None)
            return
        # eTP Local: pods and the node itself may use any endpoint (short-circuit);
        # outside clients only local ones, without masquerade (source IP preserved).
        if self.opts.cluster_cidr:
            ext.append(f"-A {self.ext} -s {self.opts.cluster_cidr} "
                       f"{_c(f'pod traffic for {self.sp} external destinations')}"
                       f" -j {self.svc}")
        ext.append(f"-A {self.ext} "
                   f"{_c(f'masquerade LOCAL traffic for {self.sp} external destinations')}"
                   " -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ")
        ext.append(f"-A {self.ext} "
                   f"{_c(f'route LOCAL traffic for {self.sp} external destinations')}"
                   f" -m addrtype --src-type LOCAL -j {self.svc}")
        self._service_chain(self.svc, self.cluster or (), masq_for=None)
        if fe.external_backends:
            ext.append(f"-A {self.ext} -j {self.svl}")
            self._service_chain(self.svl, fe.external_backends, masq_for=None)

    def _service_chain(self, chain: str, eps: Sequence[Backend], *,
                       masq_for: Frontend | None) -> None:
        rules = self._chain(chain)
        if masq_for is not None:  # the cluster IP's masquerade rule leads the chain
            m = self._m(masq_for, f"{self.sp} cluster IP")
            if self.opts.masquerade_all:
                rules.insert(0, f"-A {chain} {m} -j KUBE-MARK-MASQ")
            elif self.opts.cluster_cidr:
                rules.insert(0, f"-A {chain} ! -s {self.opts.cluster_cidr} {m} -j KUBE-MARK-MASQ")
        if any(" -j KUBE-SEP-" in r for r in rules):
            return
        seps = [self.seps[b] for b in eps]
        large = self.opts.large_cluster
        if self.affinity:
            mask = FULL_MASK[self.opts.family]
            rules.extend(
                f"-A {chain} {'' if large else _c(f'{self.sp} -> {ep}') + ' '}-m recent "
                f"--rcheck --seconds {self.affinity} --reap --name {sep} --mask {mask} "
                f"--rsource -j {sep}" for ep, sep in seps)
        n = len(seps)
        for i, (ep, sep) in enumerate(seps):
            stat = (f" -m statistic --mode random --probability {1 / (n - i):.11f}"
                    if i < n - 1 else "")
            comment = "" if large else " " + _c(f"{self.sp} -> {ep}")
            rules.append(f"-A {chain}{comment}{stat} -j {sep}")

    def _endpoint_chains(self) -> None:
        c = "" if self.opts.large_cluster else " " + _c(self.sp)
        recent = (f" -m recent --set --name {{sep}} --mask {FULL_MASK[self.opts.family]} "
                  "--rsource" if self.affinity else "")
        for b, (ep, sep) in sorted(self.seps.items(), key=lambda item: item[1][0]):
            self.out.chains[sep] = [
                f"-A {sep} -s {b.ip}{self.hl}{c} -j KUBE-MARK-MASQ",
                f"-A {sep} -p {self.p}{c}{recent.format(sep=sep)} -m {self.p} "
                f"-j DNAT --to-destination {ep}",
            ]


def render_service(frontends: Iterable[Frontend], opts: RenderOptions) -> ServiceRules:
    """Pure: one service's frontends of ``opts.family`` -> its rules."""
    out = ServiceRules()
    ports: dict[tuple[str, str], list[Frontend]] = {}
    for fe in frontends:
        if fe.family == opts.family:
            ports.setdefault((fe.service_port, fe.protocol), []).append(fe)
    for key in sorted(ports):
        _PortRenderer(ports[key], opts, out)
    return out


def endpoint_count(frontends: Iterable[Frontend], family: int) -> int:
    """Pure: how many KUBE-SEP chains the service has in ``family`` (what kube-proxy
    sums to choose large cluster mode)."""
    eps: set[tuple[str, str, Backend]] = set()
    for fe in frontends:
        if fe.family == family:
            sp = (fe.service_port, fe.protocol)
            eps.update((*sp, b) for b in fe.backends)
            eps.update((*sp, b) for b in fe.external_backends)
    return len(eps)


def static_rules() -> tuple[list[str], list[str]]:
    """(nat, filter) rules of the shared chains that hold no service."""
    nat = [
        f"-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --set-xmark {MASQ_MARK}/0x0",
        f"-A KUBE-POSTROUTING {_c('kubernetes service traffic requiring SNAT')} "
        "-j MASQUERADE --random-fully",
    ]
    filt = [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f"-A KUBE-FORWARD {_c('kubernetes forwarding rules')} -m mark --mark "
        f"{MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
        f"-A KUBE-FORWARD {_c('kubernetes forwarding conntrack rule')} -m conntrack "
        "--ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    return nat, filt


# (table, chain) of each shared chain fed by the services, and the ServiceRules field
SHARED = (("nat", "KUBE-SERVICES", "services"), ("nat", "KUBE-NODEPORTS", "nodeports"),
          ("filter", "KUBE-SERVICES", "filter_services"),
          ("filter", "KUBE-EXTERNAL-SERVICES", "filter_external"),
          ("filter", "KUBE-PROXY-FIREWALL", "filter_firewall"))
Shared = dict[tuple[str, str], list[str]]


def shared_chains(rules: Mapping[ServiceKey, ServiceRules], opts: RenderOptions,
                  only: Iterable[tuple[str, str]] | None = None) -> Shared:
    """Pure: the shared top-level chains (all, or those in ``only``), services in key
    order; KUBE-SERVICES ends with the jumps to KUBE-NODEPORTS."""
    wanted = None if only is None else set(only)
    keys = sorted(rules)
    nat_static, filter_static = static_rules()
    out: Shared = {}
    for table, chain, attr in SHARED:
        if wanted is None or (table, chain) in wanted:
            out[table, chain] = [r for k in keys for r in getattr(rules[k], attr)]
    if ("nat", "KUBE-SERVICES") in out:
        out["nat", "KUBE-SERVICES"] += [
            f"-A KUBE-SERVICES -d {ip}{HOST_BITS[opts.family]} {_c(NODEPORTS_COMMENT)} "
            "-j KUBE-NODEPORTS" for ip in opts.node_addresses
            if ip_family(ip) == opts.family]
    static = {("nat", "KUBE-MARK-MASQ"): nat_static[:1],
              ("nat", "KUBE-POSTROUTING"): nat_static[1:],
              ("filter", "KUBE-FORWARD"): filter_static}
    for name, lines in static.items():
        if wanted is None or name in wanted:
            out[name] = lines
    return out


def changed_shared(before: ServiceRules | None, after: ServiceRules | None
                   ) -> set[tuple[str, str]]:
    """Pure: the shared chains whose content differs between two renderings of one
    service (a partial sync rewrites only those)."""
    return {(table, chain) for table, chain, attr in SHARED
            if (getattr(before, attr) if before else []) != (getattr(after, attr) if after
                                                             else [])}


def assemble(shared: Mapping[tuple[str, str], list[str]], chains: Mapping[str, list[str]],
             delete: Iterable[str] = (), hooks: Mapping[str, list[str]] | None = None) -> str:
    """The ``iptables-restore --noflush`` input: the given ``shared`` chains and
    per-service ``chains`` (each flushed and rewritten), ``-X`` for ``delete``, then the
    ``hooks`` lines of each table (jumps inserted into built-in chains). A table with
    nothing to write is left out ("" when nothing at all is to be written)."""
    hooks = hooks or {}
    lines: list[str] = []
    filter_top = [c for c in TOP_FILTER if ("filter", c) in shared]
    if filter_top or hooks.get("filter"):
        lines.append("*filter")
        lines += [f":{c} - [0:0]" for c in filter_top]
        for c in filter_top:
            lines += shared["filter", c]
        lines += hooks.get("filter", ())
        lines.append("COMMIT")
    nat_top = [c for c in TOP_NAT if ("nat", c) in shared]
    names = sorted(chains)
    gone = sorted(set(delete) - set(chains))
    if nat_top or names or gone or hooks.get("nat"):
        lines.append("*nat")
        lines += [f":{c} - [0:0]" for c in nat_top]
        lines += [f":{c} - [0:0]" for c in names]
        lines += [f":{c} - [0:0]" for c in gone]  # flushed, so that -X may delete them
        for c in nat_top:
            lines += shared["nat", c]
        for c in names:
            lines += chains[c]
        lines += [f"-X {c}" for c in gone]
        lines += hooks.get("nat", ())
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else ""


def service_chains(services: Iterable[ServiceRules]) -> dict[str, list[str]]:
    """Pure: the per-service nat chains of ``services``, by name."""
    chains: dict[str, list[str]] = {}
    for r in services:
        chains.update(r.chains)
    return chains


def node_port_addresses(state: DesiredState, configured: Iterable[str], family: int
                        ) -> tuple[str, ...]:
    """Pure: where this node answers NodePorts in ``family``: its configured addresses
    and those the core gave NodePort frontends on (the Node object's), sorted."""
    ips = {ip for ip in configured if ip_family(ip) == family}
    ips.update(fe.ip for fe in state.frontends
               if fe.type is FrontendType.NODE_PORT and fe.family == family)
    return tuple(sorted(ips, key=ipaddress.ip_address))


def render(state: DesiredState, opts: RenderOptions) -> str:
    """Pure: the full ruleset of ``opts.family`` for ``state``."""
    rules = render_all(state, opts)
    return assemble(shared_chains(rules, opts), service_chains(rules.values()))


def render_all(state: DesiredState, opts: RenderOptions) -> dict[ServiceKey, ServiceRules]:
    """Pure: every service that has frontends of ``opts.family``, rendered."""
    out = {}
    for key, fes in state.services.items():
        r = render_service(fes, opts)
        if r.chains or any(getattr(r, attr) for _t, _c, attr in SHARED):
            out[key] = r
    return out
