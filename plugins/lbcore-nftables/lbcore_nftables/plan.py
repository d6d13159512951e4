"""From what the table holds to what it should hold: libnftables JSON transactions. Pure.

:class:`Table` is what the kernel holds, per service: the names of its chains and sets
and its service-map elements. After a sync it is what that sync wrote; for a full sync
it is read from the kernel's *lists* of chain names, set names and map elements
(:meth:`Table.from_listing`) — no rule is read: service chains are content-addressed
(:mod:`.render`), so a name says what the chain holds.

Updating a service adds its new sets and chains (with their rules), points its map
elements at the new verdicts, then flushes and deletes the chains and sets it no
longer uses. One transaction covers a partial sync (every changed service, atomically,
like kube-proxy's nftables mode); a full sync is the fixed chains first, then batches of
:data:`BATCH_SERVICES` services per transaction, then the removal of what no service
claims. Each service is atomic either way; the split keeps the kernel's per-transaction
cost in check (one transaction of 10,000 services took 48 s here, ten of 1,000 took 14 s:
the kernel's loop check walks every set of the table for each jump it validates).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lbcore.model import ServiceKey

from . import naming as n
from .render import RenderOptions, Ruleset, fixed_chains, obj

Key = tuple[str, str, int]  # (ip, proto, port) in the service map
Element = tuple[str, str]  # (verdict chain, comment)
Command = dict[str, Any]
BATCH_SERVICES = 1000


@dataclass
class Held:
    """One service's objects in the kernel."""

    chains: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)
    elements: dict[Key, Element] = field(default_factory=dict)

    @classmethod
    def of(cls, rs: Ruleset) -> Held:
        return cls(set(rs.chains), set(rs.sets), dict(rs.elements))


@dataclass
class Phases:
    """The commands of one transaction, by phase (the order the kernel needs: a chain
    exists before a rule jumps to it; nothing refers to a chain when it is deleted)."""

    add_sets: list[Command] = field(default_factory=list)
    add_chains: list[Command] = field(default_factory=list)
    add_rules: list[Command] = field(default_factory=list)
    delete_elements: list[Key] = field(default_factory=list)
    add_elements: list[tuple[Key, Element]] = field(default_factory=list)
    flush_chains: list[str] = field(default_factory=list)
    delete_sets: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(v) for v in self.__dict__.values())

    def document(self, head: Iterable[Command] = ()) -> dict[str, Any]:
        cmds = [*head, *self.add_sets, *self.add_chains, *self.add_rules]
        if self.delete_elements:
            cmds.append({"delete": {"element": obj(name=n.SERVICES_MAP, elem=[
                {"concat": list(k)} for k in self.delete_elements])}})
        if self.add_elements:
            cmds.append({"add": {"element": obj(name=n.SERVICES_MAP, elem=[
                [{"elem": {"val": {"concat": list(k)}, "comment": c}}, {"goto": {"target": v}}]
                for k, (v, c) in self.add_elements])}})
        cmds += [{"flush": {"chain": obj(name=c)}} for c in self.flush_chains]
        cmds += [{"delete": {"chain": obj(name=c)}} for c in self.flush_chains]
        cmds += [{"delete": {"set": obj(name=s)}} for s in self.delete_sets]
        return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]}


def base_commands(opts: RenderOptions) -> list[Command]:
    """The table, its fixed chains (flushed and rewritten) and the service map."""
    cmds: list[Command] = [{"add": {"table": {"family": n.FAMILY, "name": n.TABLE}}}]
    chains = fixed_chains(opts)
    for name in chains:
        spec: dict[str, Any] = {"name": name}
        if name in n.BASE_CHAINS:
            kind, hook, prio = n.BASE_CHAINS[name]
            spec.update(type=kind, hook=hook, prio=prio, policy="accept")
        cmds.append({"add": {"chain": obj(**spec)}})
    cmds.append({"add": {"map": obj(name=n.SERVICES_MAP, map="verdict",
                                    type=["ipv4_addr", "inet_proto", "inet_service"])}})
    for name, rules in chains.items():
        cmds.append({"flush": {"chain": obj(name=name)}})
        cmds += _rules(name, rules)
    return cmds


def _rules(chain: str, rules: Iterable[tuple[tuple[Any, ...], str]]) -> Iterator[Command]:
    for exprs, comment in rules:
        rule = obj(chain=chain, expr=list(exprs))
        if comment:
            rule["comment"] = comment
        yield {"add": {"rule": rule}}


class Table:
    """What the kernel holds, per service; objects no service claims are ``stray``."""

    def __init__(self) -> None:
        self.services: dict[ServiceKey, Held] = {}
        self.owner: dict[Key, ServiceKey] = {}  # service-map element -> its service
        self.stray = Held()

    @classmethod
    def from_listing(cls, chains: Iterable[str], sets: Iterable[str],
                     elements: Mapping[Key, Element]) -> Table:
        table = cls()
        for name in chains:
            if name not in n.FIXED_CHAINS:
                table._held(n.service_of(name)).chains.add(name)
        for name in sets:
            table._held(n.service_of(name)).sets.add(name)
        for key, element in elements.items():
            owner = n.service_of_comment(element[1])
            table._held(owner).elements[key] = element
            if owner is not None:
                table.owner[key] = ServiceKey(*owner)
        return table

    def _held(self, owner: tuple[str, str] | None) -> Held:
        if owner is None:
            return self.stray
        return self.services.setdefault(ServiceKey(*owner), Held())

    def update(self, wanted: Mapping[ServiceKey, Ruleset]) -> Phases:
        """Commands that make the services of ``wanted`` hold exactly their objects
        (an empty Ruleset removes a service). Pure: ``commit`` once they applied."""
        ph = Phases()
        for key, rs in wanted.items():
            old = self.services.get(key, Held())
            ph.add_sets += [{"add": {"set": obj(name=s, type="ipv4_addr", flags=["timeout"],
                                                timeout=rs.sets[s])}}
                            for s in sorted(rs.sets.keys() - old.sets)]
            new_chains = [c for c in rs.chains if c not in old.chains]
            ph.add_chains += [{"add": {"chain": obj(name=c)}} for c in new_chains]
            for c in new_chains:
                ph.add_rules += _rules(c, rs.chains[c])
            ph.delete_elements += [k for k, e in old.elements.items() if rs.elements.get(k) != e]
            for k, e in rs.elements.items():
                if old.elements.get(k) == e:
                    continue
                ph.add_elements.append((k, e))
                owner = self.owner.get(k)
                if owner is not None and owner != key and owner not in wanted:
                    ph.delete_elements.append(k)  # a frontend moved from an unchanged service
            ph.flush_chains += sorted(old.chains - rs.chains.keys())
            ph.delete_sets += sorted(old.sets - rs.sets.keys())
        return ph

    def commit(self, wanted: Mapping[ServiceKey, Ruleset]) -> None:
        """The commands of ``update(wanted)`` were applied."""
        for key, rs in wanted.items():
            for k in self.services.get(key, Held()).elements.keys() - rs.elements.keys():
                if self.owner.get(k) == key:
                    del self.owner[k]
            for k in rs.elements:
                previous = self.owner.get(k)
                if previous is not None and previous != key and previous not in wanted:
                    self.services[previous].elements.pop(k, None)
                self.owner[k] = key
            if rs.chains or rs.sets or rs.elements:
                self.services[key] = Held.of(rs)
            else:
                self.services.pop(key, None)

    def removal_of_stray(self) -> Phases:
        return Phases(delete_elements=sorted(self.stray.elements),
                      flush_chains=sorted(self.stray.chains), delete_sets=sorted(self.stray.sets))


def full_sync(table: Table, keys: Iterable[ServiceKey],
              render: Callable[[list[ServiceKey]], dict[ServiceKey, Ruleset]],
              opts: RenderOptions) -> Iterator[dict[str, Any]]:
    """The transactions of a full sync, one by one: the fixed objects with the first
    batch of services, further batches (services held but no longer in ``keys``
    removed), then the stray objects. Each batch is rendered when it is planned (the
    whole table's rules never sit in memory at once) and ``table`` is committed as it
    is planned: it says what the kernel holds once they applied (the caller drops it if
    one fails)."""
    wanted = set(keys)
    everything = sorted(wanted | table.services.keys())
    for i in range(0, max(len(everything), 1), BATCH_SERVICES):
        chunk = everything[i:i + BATCH_SERVICES]
        batch = {k: Ruleset() for k in chunk if k not in wanted}
        batch.update(render([k for k in chunk if k in wanted]))
        ph = table.update(batch)
        head = base_commands(opts) if i == 0 else ()
        table.commit(batch)
        if head or len(ph):
            yield ph.document(head)
    stray = table.removal_of_stray()
    table.stray = Held()
    if len(stray):
        yield stray.document()
