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

Each service renders into a :class:`ServiceRules`; :func:`assemble` writes the shared
top-level chains in full on every sync and the per-service chains only for the services
named (partial sync, KEP-3453), plus ``-X`` for chains that must go. Lines are spelled in
``iptables-save`` order so what is written and what is read back compare equal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lbcore.model import Backend, DesiredState, Frontend, FrontendType, ServiceKey

from .naming import EXT, FW, SVC, SVL, endpoint_chain, service_chain

MASQ_MARK = "0x4000"
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
    """``cluster_cidr``: traffic from outside it to a service is masqueraded (None:
    only external frontends and hairpin are); ``masquerade_all``: masquerade everything;
    ``node_addresses``: where NodePorts answer (IPv4)."""

    cluster_cidr: str | None = None
    masquerade_all: bool = False
    node_addresses: tuple[str, ...] = ()


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


def _match(dst: str | None, proto: str, port: int, comment: str, *, src: str = "") -> str:
    """``[src] -d IP/32 -p P -m comment … -m P --dport N`` in iptables-save order."""
    p = proto.lower()
    d = f"-d {dst}/32 " if dst else ""
    return f"{src}{d}-p {p} {_c(comment)} -m {p} --dport {port}"


class _PortRenderer:
    """The chains of one service port (all frontends of ``ns/svc:port`` + protocol)."""

    def __init__(self, frontends: Sequence[Frontend], opts: RenderOptions,
                 out: ServiceRules) -> None:
        fe0 = frontends[0]
        self.sp, self.proto, self.opts, self.out = fe0.service_port, fe0.protocol, opts, out
        self.p = self.proto.lower()
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
        for fe in frontends:
            self._frontend(fe)
        self._endpoint_chains()

    def _chain(self, name: str) -> list[str]:
        return self.out.chains.setdefault(name, [])

    # -- entry points -------------------------------------------------------------

    def _frontend(self, fe: Frontend) -> None:
        out = self.out
        if fe.type is FrontendType.CLUSTER_IP:
            local = fe.internal_traffic_local
            eps, chain = (self.local, self.svl) if local else (self.cluster, self.svc)
            if not eps:
                out.filter_services.append(
                    f"-A KUBE-SERVICES {_match(fe.ip, fe.protocol, fe.port, f'{self.sp} cluster IP has no endpoints')} "  # noqa: E501
                    "-j REJECT --reject-with icmp-port-unreachable")
                return
            out.services.append(f"-A KUBE-SERVICES "
                                f"{_match(fe.ip, fe.protocol, fe.port, f'{self.sp} cluster IP')}"
                                f" -j {chain}")
            self._service_chain(chain, eps, masq_for=fe)
            return
        what = {FrontendType.NODE_PORT: "nodePort", FrontendType.EXTERNAL_IP: "external IP",
                FrontendType.LOAD_BALANCER: "loadbalancer IP"}[fe.type]
        dst = None if fe.type is FrontendType.NODE_PORT else fe.ip
        addrtype = "-m addrtype --dst-type LOCAL " if dst is None else ""
        if not self.cluster:
            if fe.type is FrontendType.NODE_PORT and any(
                    "nodePort has no endpoints" in r for r in out.filter_external):
                return  # one rule covers every node address
            out.filter_external.append(
                f"-A KUBE-EXTERNAL-SERVICES {addrtype}"
                f"{_match(dst, fe.protocol, fe.port, f'{self.sp} {what} has no endpoints')} "
                "-j REJECT --reject-with icmp-port-unreachable")
            return
        if fe.external_traffic_local and not fe.external_backends:
            out.filter_external.append(
                f"-A KUBE-EXTERNAL-SERVICES {addrtype}"
                f"{_match(dst, fe.protocol, fe.port, f'{self.sp} has no local endpoints')} -j DROP")
        self._ext_chain(fe)
        if fe.type is FrontendType.NODE_PORT:
            rule = f"-A KUBE-NODEPORTS {_match(None, fe.protocol, fe.port, self.sp)} -j {self.ext}"
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
                f"{_match(fe.ip, fe.protocol, fe.port, f'{self.sp} traffic not accepted by {self.fw}')}"  # noqa: E501
                " -j DROP")
        out.services.append(
            f"-A KUBE-SERVICES {_match(fe.ip, fe.protocol, fe.port, f'{self.sp} {what}')}"
            f" -j {target}")

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
            m = _match(masq_for.ip, masq_for.protocol, masq_for.port, f"{self.sp} cluster IP")
            if self.opts.masquerade_all:
                rules.insert(0, f"-A {chain} {m} -j KUBE-MARK-MASQ")
            elif self.opts.cluster_cidr:
                rules.insert(0, f"-A {chain} ! -s {self.opts.cluster_cidr} {m} -j KUBE-MARK-MASQ")
        if any(" -j KUBE-SEP-" in r for r in rules):
            return
        seps = [(f"{b.ip}:{b.port}", endpoint_chain(self.sp, self.proto, f"{b.ip}:{b.port}"))
                for b in eps]
        if self.affinity:
            rules.extend(
                f"-A {chain} {_c(f'{self.sp} -> {ep}')} -m recent --rcheck --seconds "
                f"{self.affinity} --reap --name {sep} --mask 255.255.255.255 --rsource -j {sep}"
                for ep, sep in seps)
        n = len(seps)
        for i, (ep, sep) in enumerate(seps):
            stat = (f" -m statistic --mode random --probability {1 / (n - i):.11f}"
                    if i < n - 1 else "")
            rules.append(f"-A {chain} {_c(f'{self.sp} -> {ep}')}{stat} -j {sep}")

    def _endpoint_chains(self) -> None:
        eps = {f"{b.ip}:{b.port}" for b in (self.cluster or ()) + (self.local or ())}
        for ep in sorted(eps):
            sep = endpoint_chain(self.sp, self.proto, ep)
            ip = ep.rsplit(":", 1)[0]
            recent = (f" -m recent --set --name {sep} --mask 255.255.255.255 --rsource"
                      if self.affinity else "")
            self.out.chains[sep] = [
                f"-A {sep} -s {ip}/32 {_c(self.sp)} -j KUBE-MARK-MASQ",
                f"-A {sep} -p {self.p} {_c(self.sp)}{recent} -m {self.p} "
                f"-j DNAT --to-destination {ep}",
            ]


def render_service(frontends: Iterable[Frontend], opts: RenderOptions) -> ServiceRules:
    """Pure: one service's frontends -> its rules (IPv4 frontends only)."""
    out = ServiceRules()
    ports: dict[tuple[str, str], list[Frontend]] = {}
    for fe in frontends:
        if fe.family == 4:
            ports.setdefault((fe.service_port, fe.protocol), []).append(fe)
    for key in sorted(ports):
        _PortRenderer(ports[key], opts, out)
    return out


def static_rules(opts: RenderOptions) -> tuple[list[str], list[str]]:
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


def assemble(rules: Mapping[ServiceKey, ServiceRules], opts: RenderOptions, *,
             write: Iterable[ServiceKey] | None = None, delete: Iterable[str] = ()) -> str:
    """The ``iptables-restore --noflush`` input: shared chains in full, the per-service
    chains of ``write`` (None: every service), ``-X`` for ``delete``."""
    keys = sorted(rules)
    nat_static, filter_static = static_rules(opts)
    services = [r for k in keys for r in rules[k].services]
    services += [f"-A KUBE-SERVICES -d {ip}/32 {_c(NODEPORTS_COMMENT)} -j KUBE-NODEPORTS"
                 for ip in opts.node_addresses if ":" not in ip]
    chains: dict[str, list[str]] = {}
    for key in sorted(rules) if write is None else sorted(set(write) & set(rules)):
        chains.update(rules[key].chains)
    nat_top = {"KUBE-SERVICES": services,
               "KUBE-NODEPORTS": [r for k in keys for r in rules[k].nodeports],
               "KUBE-MARK-MASQ": nat_static[:1], "KUBE-POSTROUTING": nat_static[1:]}
    filter_top = {"KUBE-SERVICES": [r for k in keys for r in rules[k].filter_services],
                  "KUBE-EXTERNAL-SERVICES": [r for k in keys for r in rules[k].filter_external],
                  "KUBE-PROXY-FIREWALL": [r for k in keys for r in rules[k].filter_firewall],
                  "KUBE-FORWARD": filter_static}
    lines = ["*filter"]
    lines += [f":{c} - [0:0]" for c in TOP_FILTER]
    lines += [r for c in TOP_FILTER for r in filter_top[c]]
    lines += ["COMMIT", "*nat"]
    names = sorted(chains)
    gone = sorted(set(delete) - set(chains))
    lines += [f":{c} - [0:0]" for c in TOP_NAT]
    lines += [f":{c} - [0:0]" for c in names]
    lines += [f":{c} - [0:0]" for c in gone]  # flushed, so that -X may delete them
    lines += [r for c in TOP_NAT for r in nat_top[c]]
    lines += [r for c in names for r in chains[c]]
    lines += [f"-X {c}" for c in gone]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def render(state: DesiredState, opts: RenderOptions) -> str:
    """Pure: the full ruleset for ``state``."""
    return assemble(render_all(state, opts), opts)


def render_all(state: DesiredState, opts: RenderOptions) -> dict[ServiceKey, ServiceRules]:
    return {key: render_service(fes, opts) for key, fes in state.services.items()}


def chains_of(rules: ServiceRules) -> frozenset[str]:
    return frozenset(rules.chains)
