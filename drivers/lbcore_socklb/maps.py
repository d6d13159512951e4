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
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from lbcore.errors import DriverError
from lbcore.model import FrontendAddress

from .codec import Packer
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
        self.svc = _table(bpf, "lbc_svc")
        self.backends = _table(bpf, "lbc_backends")
        self.revnat = _table(bpf, "lbc_revnat")
        self.aff_match = _table(bpf, "lbc_aff_match")
        self.sk_revnat = _table(bpf, "lbc_sk_revnat")
        self.affinity = _table(bpf, "lbc_affinity")

        words = [f"address.words[{i}]" for i in range(4)]
        self.svc_key = Packer(self.svc.Key).expect([*words, "port", "slot", "proto"])
        self.svc_val = Packer(self.svc.Leaf).expect(
            ["backend_id", "affinity_timeout", "count", "rev_nat_id", "type", "flags", "state"])
        self.backend_key = Packer(self.backends.Key)
        self.backend_val = Packer(self.backends.Leaf).expect([*words, "port", "proto"])
        self.revnat_key = Packer(self.revnat.Key)
        self.revnat_val = Packer(self.revnat.Leaf).expect([*words, "port"])
        self.match_key = Packer(self.aff_match.Key).expect(["backend_id", "rev_nat_id"])
        self.match_val = Packer(self.aff_match.Leaf)

    # ------------------------------------------------------------ encoding
    # Each returns the field values in the order of the C struct (see __init__).

    @staticmethod
    def _svc_fields(fe: FrontendAddress, slot: int) -> tuple[int, ...]:
        return (*address_words(fe.ip), socket.htons(fe.port), slot, PROTO_NUMBERS[fe.protocol])

    @staticmethod
    def _header_fields(entry: ServiceEntry) -> tuple[int, ...]:
        count, rev_nat_id, type_code, flags, timeout = entry.header()
        return (0, timeout, count, rev_nat_id, type_code, flags, 0)

    @staticmethod
    def _slot_fields(slot: Slot) -> tuple[int, ...]:
        return (slot.backend_id, 0, 0, 0, 0, 0, STATE_CODES[slot.condition])

    @staticmethod
    def _backend_fields(addr: BackendAddr) -> tuple[int, ...]:
        return (*address_words(addr.ip), socket.htons(addr.port), PROTO_NUMBERS[addr.protocol])

    @staticmethod
    def _revnat_fields(fe: FrontendAddress) -> tuple[int, ...]:
        return (*address_words(fe.ip), socket.htons(fe.port))

    def _svc_key(self, fe: FrontendAddress, slot: int) -> Any:
        """One ctypes key, for single lookups (tests, benchmarks)."""
        return self.svc_key.one(self._svc_fields(fe, slot))

    # --------------------------------------------------------------- apply

    def apply(self, plan: Plan) -> None:
        """Write ``plan`` phase by phase; each phase completes before the next."""
        for map_name, op, items in plan.phases():
            if not items:
                continue
            table, key_packer, key_of, val_packer, val_of = self._codecs()[map_name]
            if op == "put":
                keys = key_packer.array(key_of(item) for item in items)
                values = val_packer.array(val_of(item) for item in items)
                _batch(lambda t=table, k=keys, v=values: t.items_update_batch(k, v),
                       f"writing {_name(table)}")
            else:
                self._delete(table, key_packer.array(self._delete_key_of(map_name)(item)
                                                     for item in items))

    def _codecs(self) -> dict[str, tuple[Any, Packer, Callable[[Any], Sequence[int]],
                                         Packer, Callable[[Any], Sequence[int]]]]:
        return {
            "backends": (self.backends, self.backend_key, lambda i: (i[0],),
                         self.backend_val, lambda i: self._backend_fields(i[1])),
            "revnat": (self.revnat, self.revnat_key, lambda i: (i[0],),
                       self.revnat_val, lambda i: self._revnat_fields(i[1])),
            "aff_match": (self.aff_match, self.match_key, lambda i: i,
                          self.match_val, lambda i: (1,)),
            "slots": (self.svc, self.svc_key, lambda i: self._svc_fields(i[0], i[1]),
                      self.svc_val, lambda i: self._slot_fields(i[2])),
            "headers": (self.svc, self.svc_key, lambda e: self._svc_fields(e.frontend, 0),
                        self.svc_val, self._header_fields),
        }

    def _delete_key_of(self, map_name: str) -> Callable[[Any], Sequence[int]]:
        return {
            "backends": lambda bid: (bid,),
            "revnat": lambda rid: (rid,),
            "aff_match": lambda pair: pair,
            "slots": lambda item: self._svc_fields(item[0], item[1]),
            "headers": lambda fe: self._svc_fields(fe, 0),
        }[map_name]

    def _delete(self, table: Any, keys: Any) -> None:
        if not len(keys):
            return
        try:
            table.items_delete_batch(keys)
        except Exception:
            # A key already gone (e.g. removed by hand) fails the batch: go one by one.
            for key in keys:
                with contextlib.suppress(KeyError):
                    del table[key]

    # ----------------------------------------------------------- read back

    def read_image(self) -> tuple[MapImage, list[tuple[FrontendAddress, int]]]:
        """What the maps hold, and slots no header accounts for (left by a crash)."""
        backends = {
            k[0]: BackendAddr(words_address(v[:4]), socket.ntohs(v[4]),
                              PROTO_NAMES.get(v[5], "?"))
            for k, v in dump_table(self.backends, self.backend_key, self.backend_val)
        }
        revnat = {
            k[0]: FrontendAddress(words_address(v[:4]), socket.ntohs(v[4]), "")
            for k, v in dump_table(self.revnat, self.revnat_key, self.revnat_val)
        }
        headers: dict[FrontendAddress, tuple[int, ...]] = {}
        slots: dict[FrontendAddress, dict[int, tuple[int, int]]] = {}
        for k, v in dump_table(self.svc, self.svc_key, self.svc_val):
            fe = FrontendAddress(words_address(k[:4]), socket.ntohs(k[4]),
                                 PROTO_NAMES.get(k[6], "?"))
            backend_id, timeout, count, rev_nat_id, type_code, _flags, state = v
            if k[5] == 0:
                headers[fe] = (count, rev_nat_id, type_code, timeout)
            else:
                slots.setdefault(fe, {})[k[5]] = (backend_id, state)
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
        self._delete(self.svc, self.svc_key.array(self._svc_fields(fe, i) for fe, i in slots))

    def entry_counts(self) -> dict[str, int]:
        return {_name(t): len(_items(t))
                for t in (self.svc, self.backends, self.revnat, self.sk_revnat, self.affinity)}


def _table(bpf: Any, name: str) -> Any:
    table = bpf[name.encode()]
    if getattr(table, "_name", None) is None:  # bcc names only some table types
        table._name = name
    return table


def _name(table: Any) -> str:
    name = getattr(table, "_name", b"?")
    return name.decode() if isinstance(name, bytes) else str(name)


def _items(table: Any) -> list[tuple[Any, Any]]:
    return list(table.items())


def dump_table(table: Any, key: Packer, value: Packer) -> list[tuple[tuple, tuple]]:
    """Every (key, value) of a hash map as field tuples, in BPF_MAP_LOOKUP_BATCH calls.

    Our own loop rather than bcc's ``items_lookup_batch``, which reuses one variable
    for the batch token and the count, and builds a ctypes object per entry.
    """
    from bcc.libbcc import lib

    capacity = table.max_entries
    keys = (table.Key * capacity)()
    values = (table.Leaf * capacity)()
    token_in, token_out, count = ctypes.c_uint32(0), ctypes.c_uint32(0), ctypes.c_uint32(0)
    total, first = 0, True
    while total < capacity:
        count.value = capacity - total
        res = lib.bpf_lookup_batch(
            table.map_fd, None if first else ctypes.byref(token_in), ctypes.byref(token_out),
            ctypes.byref(keys, key.struct.size * total),
            ctypes.byref(values, value.struct.size * total), ctypes.byref(count))
        err = ctypes.get_errno()
        total += count.value
        if res != 0:
            if err == errno.ENOENT:
                break  # the whole map was read
            raise DriverError(DRIVER, f"reading {_name(table)}: {os.strerror(err)}")
        token_in.value, first = token_out.value, False
    key_bytes = ctypes.string_at(keys, key.struct.size * total)
    value_bytes = ctypes.string_at(values, value.struct.size * total)
    return list(zip(key.struct.iter_unpack(key_bytes), value.struct.iter_unpack(value_bytes),
                    strict=True))


def _batch(call: Callable[[], None], what: str) -> None:
    try:
        call()
    except Exception as exc:
        err = ctypes.get_errno()
        hint = " (map full?)" if err in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM) else ""
        raise DriverError(DRIVER, f"{what} failed: {exc}{hint}") from exc

