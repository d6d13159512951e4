"""One IP family's tables: what they hold, and the restore that brings them to a state.

:class:`FamilyTables` keeps, per family (4: iptables, 6: ip6tables), what the last
successful restore left in the kernel, so that a sync writes only what changed:

* a partial sync (KEP-3453) rewrites the chains of the changed services whose rendering
  differs, and of the shared chains (``KUBE-SERVICES`` …) only those whose content
  changed: an endpoint change touches a dozen chains, not the 10,000-rule
  ``KUBE-SERVICES`` (kube-proxy rewrites the shared chains on every sync; with
  iptables-nft that rewrite alone costs seconds at 10,000 services, see
  docs/iptables.md);
* a full sync writes everything, but renders only services whose frontends changed
  (a cache keyed by the immutable frontends), and reads the kernel's chain list only
  when it does not know it (first sync, after a failure) or in small clusters, as
  kube-proxy does (its ``iptables-save`` runs at most once per sync period in large
  cluster mode);
* kube-proxy's large cluster mode (no comments on per-endpoint rules) follows the
  family's endpoint count; a change of mode rewrites every service.

Any failure forgets the kernel state: the next sync is full and re-reads the kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace

from lbcore.model import DesiredState, Frontend, ServiceKey

from .apply import Iptables
from .naming import is_owned
from .render import (
    HOOKS,
    LARGE_CLUSTER_ENDPOINTS,
    RenderOptions,
    ServiceRules,
    Shared,
    assemble,
    changed_shared,
    endpoint_count,
    node_port_addresses,
    render_service,
    service_chains,
    shared_chains,
)

log = logging.getLogger(__name__)
NFT_BATCH_CHAINS = 3000  # per iptables-nft-restore input, see FamilyTables._inputs
STATIC_NAT = {("nat", "KUBE-MARK-MASQ"), ("nat", "KUBE-POSTROUTING")}


@dataclass(frozen=True)
class FamilyResult:
    full: bool
    restore_lines: int
    services_written: int
    chains_deleted: int
    large_cluster: bool
    restores: int


class FamilyTables:
    """The nat and filter tables of one family, as the driver last wrote them."""

    def __init__(self, ipt: Iptables, opts: RenderOptions) -> None:
        self.ipt = ipt
        self.base_opts = opts  # node_addresses: the configured ones
        self.family = opts.family
        self._opts = opts  # as last written: node addresses, large cluster mode
        self._in_kernel: dict[ServiceKey, ServiceRules] | None = None  # None: unknown
        self._kernel_chains: set[str] | None = None  # owned nat chains, None: unknown
        self._hooks_ok = False
        self._counts: dict[ServiceKey, int] = {}
        self._endpoints = 0
        # render memo: key -> (the frontends it was rendered from, large mode, rules)
        self._cache: dict[ServiceKey, tuple[tuple[Frontend, ...], bool, ServiceRules]] = {}

    # ----------------------------------------------------------------- public

    def sync(self, state: DesiredState, changed: frozenset[ServiceKey] | None
             ) -> FamilyResult:
        keys = state.services.keys() if changed is None else changed
        self._count(state, keys, full=changed is None)
        large = self._endpoints > LARGE_CLUSTER_ENDPOINTS
        opts = replace(self.base_opts, large_cluster=large, node_addresses=node_port_addresses(
            state, self.base_opts.node_addresses, self.family))
        full = changed is None or self._in_kernel is None or large != self._opts.large_cluster
        try:
            if full:
                inputs, rules, written, deleted = self._full(state, opts)
            else:
                assert changed is not None
                inputs, rules, written, deleted = self._partial(state, changed, opts)
            for text in inputs:
                self.ipt.restore(text)
        except Exception:
            self.forget()
            raise
        self._in_kernel, self._opts, self._hooks_ok = rules, opts, True
        if full:
            self._kernel_chains = {c for r in rules.values() for c in r.chains}
        elif self._kernel_chains is not None:
            self._kernel_chains -= set(deleted)
            self._kernel_chains.update(c for k in changed or () if k in rules
                                       for c in rules[k].chains)
        lines = sum(text.count("\n") for text in inputs)
        return FamilyResult(full, lines, written, len(deleted), large, len(inputs))

    def forget(self) -> None:
        """After a failure (or cleanup): nothing about the kernel is known any more."""
        self._in_kernel = None
        self._kernel_chains = None
        self._hooks_ok = False

    # ---------------------------------------------------------------- internals

    def _count(self, state: DesiredState, keys: Iterable[ServiceKey], *, full: bool) -> None:
        """Keep the family's endpoint count (kube-proxy's large cluster mode input)."""
        if full:
            self._counts.clear()
        for key in keys:
            n = endpoint_count(state.frontends_of(key), self.family)
            if n:
                self._counts[key] = n
            else:
                self._counts.pop(key, None)
        self._endpoints = sum(self._counts.values())

    def _render(self, key: ServiceKey, fes: tuple[Frontend, ...], opts: RenderOptions
                ) -> ServiceRules | None:
        """The service's rules in this family (None: it has none here), memoised (the
        node addresses do not enter a service's own rules)."""
        hit = self._cache.get(key)
        large = opts.large_cluster
        if hit is not None and hit[1] == large and (hit[0] is fes or hit[0] == fes):
            rules = hit[2]
        else:
            rules = render_service(fes, opts)
            self._cache[key] = (fes, large, rules)
        return rules if rules.chains or _has_shared(rules) else None

    def _full(self, state: DesiredState, opts: RenderOptions
              ) -> tuple[list[str], dict[ServiceKey, ServiceRules], int, list[str]]:
        rules: dict[ServiceKey, ServiceRules] = {}
        large = opts.large_cluster
        for key, fes in state.services.items():
            r = self._render(key, fes, opts)
            if r is not None:
                rules[key] = r
        for key in set(self._cache) - set(state.services):
            del self._cache[key]
        wanted = {c for r in rules.values() for c in r.chains}
        hooks: dict[str, list[str]] = {}
        existing = self._kernel_chains
        if existing is None or not large or not self._hooks_ok:
            saved = {table: self.ipt.save(table).splitlines() for table in ("nat", "filter")}
            existing = {ln[1:].split()[0] for ln in saved["nat"] if ln.startswith(":")}
            hooks = _missing_hooks(saved)
        deleted = sorted(c for c in existing - wanted if is_owned(c))
        inputs = self._inputs(shared_chains(rules, opts), [rules[k] for k in sorted(rules)],
                              deleted, hooks)
        return inputs, rules, len(rules), deleted

    def _partial(self, state: DesiredState, changed: frozenset[ServiceKey], opts: RenderOptions
                 ) -> tuple[list[str], dict[ServiceKey, ServiceRules], int, list[str]]:
        assert self._in_kernel is not None
        rules = dict(self._in_kernel)
        shared: set[tuple[str, str]] = set()
        if opts.node_addresses != self._opts.node_addresses:
            shared.add(("nat", "KUBE-SERVICES"))
        write: list[ServiceKey] = []
        deleted: set[str] = set()
        for key in changed:
            fes = state.frontends_of(key)
            new = self._render(key, fes, opts) if fes else None
            if not fes:
                self._cache.pop(key, None)
            old = rules.pop(key, None)
            if new is not None:
                rules[key] = new
            if old is new or (old is not None and new is not None and old.chains == new.chains
                              and not changed_shared(old, new)):
                continue  # e.g. only the other family's endpoints changed
            shared |= changed_shared(old, new)
            if new is not None and (old is None or old.chains != new.chains):
                write.append(key)
            deleted |= set(old.chains if old else ()) - set(new.chains if new else ())
        inputs = self._inputs(shared_chains(rules, opts, only=shared) if shared else {},
                              [rules[k] for k in sorted(write)], sorted(deleted))
        return inputs, rules, len(write), sorted(deleted)

    def _inputs(self, shared: Shared, services: list[ServiceRules], deleted: list[str],
                hooks: dict[str, list[str]] | None = None) -> list[str]:
        """The restore inputs of one sync: one; or, with the nft flavour and more than
        :data:`NFT_BATCH_CHAINS` chains to write, batches of whole services first (after
        the static chains they jump to) and the shared chains and deletions last. Each
        input is committed as a unit, so every service switches atomically and is
        linked from KUBE-SERVICES only once its chains exist, unlinked before they go.
        iptables-nft-restore 1.8.9 is quadratic in the chains of one input (a sorted
        list of the chain names it must look up): 110,000 chains take ~10 minutes in
        one input, seconds in batches (docs/iptables.md)."""
        if self.ipt.backend != "nft" or sum(len(r.chains) for r in services) <= NFT_BATCH_CHAINS:
            return [text for text in [assemble(shared, service_chains(services), deleted,
                                               hooks)] if text]
        static = {name: lines for name, lines in shared.items() if name in STATIC_NAT}
        inputs = [assemble(static, {})]
        batch: list[ServiceRules] = []
        for r in services:
            batch.append(r)
            if sum(len(b.chains) for b in batch) >= NFT_BATCH_CHAINS:
                inputs.append(assemble({}, service_chains(batch)))
                batch = []
        if batch:
            inputs.append(assemble({}, service_chains(batch)))
        rest = {name: lines for name, lines in shared.items() if name not in STATIC_NAT}
        inputs.append(assemble(rest, {}, deleted, hooks))
        return [text for text in inputs if text]


def _has_shared(rules: ServiceRules) -> bool:
    return bool(rules.services or rules.nodeports or rules.filter_services
                or rules.filter_external or rules.filter_firewall)


def _missing_hooks(saved: dict[str, list[str]]) -> dict[str, list[str]]:
    """``-I`` lines for the jumps from built-in chains that ``saved`` lacks, per table
    (-I 1 in reverse keeps HOOKS' order at the head of each built-in chain)."""
    out: dict[str, list[str]] = {}
    for table, chain, spec in reversed(HOOKS):
        if f"-A {chain} {spec}" not in saved[table]:
            out.setdefault(table, []).append(f"-I {chain} 1 {spec}")
    return out
