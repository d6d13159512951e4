"""Id allocation with free lists, as Katran's control plane does it.

The control plane owns ids; the maps only store them. Ids freed by a removed
backend or frontend are reused lowest-first, so the id space stays dense and
read back after a restart yields the same ids.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class IdExhausted(Exception):
    pass


class IdAllocator:
    def __init__(self, first: int, last: int, in_use: Iterable[int] = ()) -> None:
        self.first, self.last = first, last
        self._in_use = set(in_use)
        self._next = max(self._in_use, default=first - 1) + 1
        # Holes below the high-water mark, lowest first.
        self._free = [i for i in range(first, self._next) if i not in self._in_use]
        heapq.heapify(self._free)

    def allocate(self) -> int:
        if self._free:
            ident = heapq.heappop(self._free)
        elif self._next <= self.last:
            ident = self._next
            self._next += 1
        else:
            raise IdExhausted(f"all ids {self.first}..{self.last} are in use")
        self._in_use.add(ident)
        return ident

    def release(self, ident: int) -> None:
        if ident in self._in_use:
            self._in_use.remove(ident)
            heapq.heappush(self._free, ident)

    def __contains__(self, ident: int) -> bool:
        return ident in self._in_use

    def __len__(self) -> int:
        return len(self._in_use)
