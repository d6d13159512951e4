"""Apply a ``Plan`` to the pinned maps, and read the maps back into a ``MapImage``.

The only module that turns model values into the kernel's bytes. Key and value
types come from the compiled program (bcc's ``Table.Key`` / ``Table.Leaf``), never
redeclared here. Each phase of the plan is one batched syscall (BPF_MAP_*_BATCH),
so a full sync of 10,000 services costs a handful of syscalls, not 200,000.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from lbcore.errors import DriverError
from lbcore.model import FrontendAddress

from .image import (
    STATE_CODES,
    STATES_BY_CODE,
    TYPES_BY_CODE,
    BackendAddr,
    MapImage,
    ServiceEntry,
    Slot,
)
from .plan import Plan

DRIVER = "socklb"
PROTO_NUMBERS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
PROTO_NAMES = {num: name for name, num in PROTO_NUMBERS.items()}
_V4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"
_WORDS = struct.Struct("=4I")  # lb_addr.words: four u32 in host order over network bytes


def address_words(ip: str) -> tuple[int, ...]:
    """16 bytes in network order as four native u32 words (IPv4 mapped)."""
    if ":" in ip:
        packed = socket.inet_pton(socket.AF_INET6, ip)
    else:
        packed = _V4_MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, ip)
    return _WORDS.unpack(packed)


def words_address(words: Sequence[int]) -> str:
    packed = _WORDS.pack(*words)
    if packed.startswith(_V4_MAPPED_PREFIX):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed)


class KernelMaps:
    """The socket-LB maps of one loaded program."""

    def __init__(self, bpf: Any) -> None:
        self.svc = bpf["lbc_svc"]
        self.backends = bpf["lbc_backends"]
        self.revnat = bpf["lbc_revnat"]
        self.aff_match = bpf["lbc_aff_match"]
        self.sk_revnat = bpf["lbc_sk_revnat"]
        self.affinity = bpf["lbc_affinity"]

    # ------------------------------------------------------------ encoding

    def _svc_key(self, fe: FrontendAddress, slot: int) -> Any:
        key = self.svc.Key()
        key.address.words[:] = address_words(fe.ip)
        key.port = socket.htons(fe.port)
        key.slot = slot
        key.proto = PROTO_NUMBERS[fe.protocol]
        return key

    def _header(self, entry: ServiceEntry) -> Any:
        val = self.svc.Leaf()
        count, rev_nat_id, type_code, flags, timeout = entry.header()
        val.count, val.rev_nat_id, val.type, val.flags = count, rev_nat_id, type_code, flags
        val.affinity_timeout = timeout
        return val

    def _slot(self, slot: Slot) -> Any:
        val = self.svc.Leaf()
        val.backend_id = slot.backend_id
        val.state = STATE_CODES[slot.condition]
        return val

    def _backend(self, addr: BackendAddr) -> Any:
        val = self.backends.Leaf()
        val.address.words[:] = address_words(addr.ip)
        val.port = socket.htons(addr.port)
        val.proto = PROTO_NUMBERS[addr.protocol]
        return val

    def _revnat(self, fe: FrontendAddress) -> Any:
        val = self.revnat.Leaf()
        val.address.words[:] = address_words(fe.ip)
        val.port = socket.htons(fe.port)
        return val

    def _match_key(self, backend_id: int, rev_nat_id: int) -> Any:
        key = self.aff_match.Key()
        key.backend_id, key.rev_nat_id = backend_id, rev_nat_id
        return key

    # --------------------------------------------------------------- apply

    def apply(self, plan: Plan) -> None:
        """Write ``plan`` phase by phase; each phase completes before the next."""
        for map_name, op, items in plan.phases():
            if not items:
                continue
            table, encode = self._codecs()[map_name]
            if op == "put":
                self._put(table, [encode(item) for item in items])
            else:
                self._delete(table, [self._delete_key(map_name, item) for item in items])

    def _codecs(self) -> dict[str, tuple[Any, Callable[[Any], tuple[Any, Any]]]]:
        return {
            "backends": (self.backends, lambda i: (self.backends.Key(i[0]), self._backend(i[1]))),
            "revnat": (self.revnat, lambda i: (self.revnat.Key(i[0]), self._revnat(i[1]))),
            "aff_match": (self.aff_match,
                          lambda i: (self._match_key(*i), self.aff_match.Leaf(1))),
            "slots": (self.svc, lambda i: (self._svc_key(i[0], i[1]), self._slot(i[2]))),
            "headers": (self.svc, lambda e: (self._svc_key(e.frontend, 0), self._header(e))),
        }

    def _delete_key(self, map_name: str, item: Any) -> Any:
        if map_name == "backends":
            return self.backends.Key(item)
        if map_name == "revnat":
            return self.revnat.Key(item)
        if map_name == "aff_match":
            return self._match_key(*item)
        if map_name == "slots":
            return self._svc_key(item[0], item[1])
        return self._svc_key(item, 0)  # headers

    def _put(self, table: Any, items: list[tuple[Any, Any]]) -> None:
        if not items:
            return
        keys = (table.Key * len(items))(*(k for k, _ in items))
        values = (table.Leaf * len(items))(*(v for _, v in items))
        _batch(lambda: table.items_update_batch(keys, values), f"writing {_name(table)}")

    def _delete(self, table: Any, keys: list[Any]) -> None:
        if not keys:
            return
        array = (table.Key * len(keys))(*keys)
        try:
            table.items_delete_batch(array)
        except Exception:
            # A key already gone (e.g. removed by hand) fails the batch: go one by one.
            for key in keys:
                with contextlib.suppress(KeyError):
                    del table[key]

    # ----------------------------------------------------------- read back

    def read_image(self) -> tuple[MapImage, list[tuple[FrontendAddress, int]]]:
        """What the maps hold, and slots no header accounts for (left by a crash)."""
        backends = {
            _scalar(k): BackendAddr(words_address(v.address.words), socket.ntohs(v.port),
                                      PROTO_NAMES.get(v.proto, str(v.proto)))
            for k, v in _items(self.backends)
        }
        revnat = {
            _scalar(k): FrontendAddress(words_address(v.address.words), socket.ntohs(v.port),
                                          "")
            for k, v in _items(self.revnat)
        }
        headers: dict[FrontendAddress, Any] = {}
        slots: dict[FrontendAddress, dict[int, Any]] = {}
        for k, v in _items(self.svc):
            fe = FrontendAddress(words_address(k.address.words), socket.ntohs(k.port),
                                 PROTO_NAMES.get(k.proto, str(k.proto)))
            if k.slot == 0:
                headers[fe] = (v.count, v.rev_nat_id, v.type, v.affinity_timeout)
            else:
                slots.setdefault(fe, {})[k.slot] = (v.backend_id, v.state)
        services = {}
        stray = []
        for fe, (count, rev_nat_id, type_code, timeout) in headers.items():
            own = slots.get(fe, {})
            entry_slots = tuple(
                Slot(own[i][0], STATES_BY_CODE.get(own[i][1], STATES_BY_CODE[0]))
                if i in own else Slot(0)  # missing slot: forces a rewrite
                for i in range(1, count + 1)
            )
            stray += [(fe, i) for i in own if i > count]
            services[fe] = ServiceEntry(fe, TYPES_BY_CODE.get(type_code, TYPES_BY_CODE[1]),
                                        rev_nat_id, timeout, entry_slots)
        stray += [(fe, i) for fe, own in slots.items() if fe not in headers for i in own]
        # Reverse-NAT entries carry no protocol; take it from their service.
        for entry in services.values():
            if entry.rev_nat_id in revnat:
                revnat[entry.rev_nat_id] = entry.frontend
        return MapImage(services, backends, revnat), sorted(stray)

    def delete_slots(self, slots: list[tuple[FrontendAddress, int]]) -> None:
        self._delete(self.svc, [self._svc_key(fe, i) for fe, i in slots])

    def entry_counts(self) -> dict[str, int]:
        return {_name(t): len(_items(t))
                for t in (self.svc, self.backends, self.revnat, self.sk_revnat, self.affinity)}


def _name(table: Any) -> str:
    name = getattr(table, "_name", b"?")
    return name.decode() if isinstance(name, bytes) else str(name)


def _items(table: Any) -> list[tuple[Any, Any]]:
    try:
        return list(table.items_lookup_batch())
    except Exception:
        return list(table.items())


def _batch(call: Callable[[], None], what: str) -> None:
    try:
        call()
    except Exception as exc:
        err = ctypes.get_errno()
        hint = " (map full?)" if err in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM) else ""
        raise DriverError(DRIVER, f"{what} failed: {exc}{hint}") from exc


def _scalar(key: Any) -> int:
    """Scalar keys come back as ints from a batch and as c_uint from iteration."""
    return int(getattr(key, "value", key))
