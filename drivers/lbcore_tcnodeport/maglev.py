"""Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4). Pure.

Each backend has a permutation of the table's M slots, derived from its *name* (its
``ip:port``), so every node computes the same table for the same backends and a flow
hashes to the same backend on whichever node it lands. Backends take turns claiming
their next preferred free slot until the table is full: every backend owns
``floor(M/N)`` or ``ceil(M/N)`` slots, and when one leaves, most slots keep their owner.

M must be prime (every ``skip`` is then coprime with M and each permutation visits
every slot). The datapath hashes a flow's 5-tuple to an index < M.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

DEFAULT_TABLE_SIZE = 16381
T = TypeVar("T", bound=Hashable)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def _hash(name: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, salt=salt).digest(),
                          "little")


def permutation(name: str, m: int) -> tuple[int, int]:
    """(offset, skip) of ``name``'s preference list: slot j is (offset + j*skip) % m."""
    return _hash(name, b"offset") % m, _hash(name, b"skip") % (m - 1) + 1


def populate(names: Sequence[str], m: int = DEFAULT_TABLE_SIZE) -> list[int]:
    """The lookup table: for each of the ``m`` slots, an index into ``names``.

    ``names`` order does not matter (the result is the same for any order: backends
    take turns in sorted order). Empty ``names`` gives an empty table.
    """
    if not is_prime(m):
        raise ValueError(f"Maglev table size {m} is not prime")
    if not names:
        return []
    if len(set(names)) != len(names):
        raise ValueError("backend names must be unique")
    order = sorted(range(len(names)), key=lambda i: names[i])
    perms = [permutation(names[i], m) for i in order]
    nexts = [0] * len(order)
    table = [-1] * m
    filled = 0
    while True:
        for turn, backend in enumerate(order):
            offset, skip = perms[turn]
            j = nexts[turn]
            slot = (offset + j * skip) % m
            while table[slot] >= 0:
                j += 1
                slot = (offset + j * skip) % m
            nexts[turn] = j + 1
            table[slot] = backend
            filled += 1
            if filled == m:
                return table


def table_for(backends: Mapping[str, T], m: int = DEFAULT_TABLE_SIZE) -> list[T]:
    """The table as backend values (e.g. ids), from ``{name: value}``."""
    names = list(backends)
    return [backends[names[i]] for i in populate(names, m)]


def changed_slots(old: Sequence[T] | None, backends: Mapping[str, T],
                  m: int = DEFAULT_TABLE_SIZE) -> dict[int, T]:
    """Only the slots whose backend differs from ``old`` once ``backends`` are in place.

    ``old`` is the table the datapath holds (None or empty: nothing yet). With no
    backends the result is empty: the caller removes the table instead.
    """
    new = table_for(backends, m)
    if not old or len(old) != len(new):
        return dict(enumerate(new))
    return {slot: value for slot, value in enumerate(new) if old[slot] != value}
