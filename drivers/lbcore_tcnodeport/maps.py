"""Apply a ``Plan`` to the pinned NodePort maps and read them back into an image.

Key and value layouts come from the compiled program (bcc's ``Table.Key`` /
``Table.Leaf`` through ``Packer``), never redeclared. Hash-map phases are one batched
syscall each; the LPM trie and the config array take single updates.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from lbcore.errors import DriverError
from lbcore.model import FrontendAddress
from lbcore_socklb.codec import Packer
from lbcore_socklb.maps import (
    PROTO_NAMES,
    PROTO_NUMBERS,
    _batch,
    address_words,
    dump_table,
    words_address,
)

from .image import BE_LOCAL, TYPES_BY_CODE, BackendAddr, DsrKey, NodePortImage, ServiceEntry
from .plan import Plan

WORDS = [f"words[{i}]" for i in range(4)]
ADDR = [f"address.words[{i}]" for i in range(4)]
MODE_CODES = {"snat": 0, "dsr": 1}
NO_ADDRESS = (0, 0, 0, 0)
MAP_NAMES = ("lbn_svc", "lbn_backends", "lbn_maglev", "lbn_src_range", "lbn_dsr", "lbn_cfg",
             "lbn_ct")


def _words(ip: str | None) -> tuple[int, ...]:
    return address_words(ip) if ip else NO_ADDRESS


def _ip(words: Sequence[int]) -> str:
    return "" if tuple(words) == NO_ADDRESS else words_address(words)


def range_key_fields(svc_id: int, cidr: str) -> tuple[int, ...]:
    net = ipaddress.ip_network(cidr)
    prefix = net.prefixlen + (96 if net.version == 4 else 0)
    return (32 + prefix, socket.htonl(svc_id), *address_words(str(net.network_address)))


class KernelMaps:
    def __init__(self, bpf: Any) -> None:
        t = {name: bpf[name.encode()] for name in MAP_NAMES}
        self.tables = t
        self.svc, self.backends, self.maglev = t["lbn_svc"], t["lbn_backends"], t["lbn_maglev"]
        self.ranges, self.dsr = t["lbn_src_range"], t["lbn_dsr"]
        self.cfg, self.ct = t["lbn_cfg"], t["lbn_ct"]
        self.svc_key = Packer(self.svc.Key).expect([*ADDR, "port", "slot", "proto"])
        self.svc_val = Packer(self.svc.Leaf).expect(
            ["backend_id", "count", "svc_id", "type", "flags"])
        self.backend_key = Packer(self.backends.Key)
        self.backend_val = Packer(self.backends.Leaf).expect([*ADDR, "port", "proto", "flags"])
        self.maglev_key = Packer(self.maglev.Key).expect(["svc_id", "index"])
        self.maglev_val = Packer(self.maglev.Leaf)
        self.range_key = Packer(self.ranges.Key).expect(["prefixlen", "svc_id", *ADDR])
        self.range_val = Packer(self.ranges.Leaf)
        self.dsr_key = Packer(self.dsr.Key).expect(
            [f"backend.{w}" for w in WORDS] + [f"frontend.{w}" for w in WORDS] + ["port", "proto"])
        self.dsr_val = Packer(self.dsr.Leaf)
        self.cfg_val = Packer(self.cfg.Leaf).expect(
            [f"node_addr.{w}" for w in WORDS] + [f"node_addr6.{w}" for w in WORDS]
            + ["snat_min", "snat_max", "mode"])

    # ------------------------------------------------------------ encoding

    @staticmethod
    def _svc_fields(fe: FrontendAddress, slot: int) -> tuple[int, ...]:
        return (*address_words(fe.ip), socket.htons(fe.port), slot, PROTO_NUMBERS[fe.protocol])

    @staticmethod
    def _dsr_fields(k: DsrKey) -> tuple[int, ...]:
        return (*address_words(k.backend_ip), *_words(k.frontend_ip), socket.htons(k.port),
                PROTO_NUMBERS[k.protocol])

    @staticmethod
    def _backend_fields(b: BackendAddr) -> tuple[int, ...]:
        return (*address_words(b.ip), socket.htons(b.port), PROTO_NUMBERS[b.protocol],
                BE_LOCAL if b.local else 0)

    def _codecs(self) -> dict[str, tuple[Any, Packer, Callable, Packer, Callable]]:
        return {
            "backends": (self.backends, self.backend_key, lambda i: (i[0],),
                         self.backend_val, lambda i: self._backend_fields(i[1])),
            "dsr": (self.dsr, self.dsr_key, lambda i: self._dsr_fields(i[0]),
                    self.dsr_val, lambda i: (socket.htons(i[1]),)),
            "maglev": (self.maglev, self.maglev_key, lambda i: i[:2],
                       self.maglev_val, lambda i: (i[2],)),
            "slots": (self.svc, self.svc_key, lambda i: self._svc_fields(i[0], i[1]),
                      self.svc_val, lambda i: (i[2], 0, 0, 0, 0)),
            "headers": (self.svc, self.svc_key, lambda e: self._svc_fields(e.frontend, 0),
                        self.svc_val, lambda e: (0, *e.header())),
        }

    def _delete_key_of(self, map_name: str) -> Callable[[Any], Sequence[int]]:
        return {
            "backends": lambda bid: (bid,),
            "dsr": self._dsr_fields,
            "maglev": lambda item: item,
            "slots": lambda item: self._svc_fields(item[0], item[1]),
            "headers": lambda fe: self._svc_fields(fe, 0),
        }[map_name]

    # --------------------------------------------------------------- apply

    def write_config(self, node_ip4: str | None, node_ip6: str | None, snat: tuple[int, int],
                     mode: str) -> None:
        self.cfg[self.cfg.Key(0)] = self.cfg_val.one(
            (*_words(node_ip4), *_words(node_ip6), snat[0], snat[1], MODE_CODES[mode]))

    def apply(self, plan: Plan) -> None:
        for map_name, op, items in plan.phases():
            if not items:
                continue
            if map_name == "ranges":
                self._apply_ranges(op, items)
                continue
            table, key_packer, key_of, val_packer, val_of = self._codecs()[map_name]
            if op == "put":
                keys = key_packer.array(key_of(i) for i in items)
                values = val_packer.array(val_of(i) for i in items)
                _batch(lambda t=table, k=keys, v=values: t.items_update_batch(k, v),
                       f"writing lbn {map_name}")
            else:
                keys = key_packer.array(self._delete_key_of(map_name)(i) for i in items)
                try:
                    table.items_delete_batch(keys)
                except Exception:  # a key already gone fails the batch: one by one
                    for key in keys:
                        with contextlib.suppress(KeyError):
                            del table[key]

    def _apply_ranges(self, op: str, items: list[tuple[int, str]]) -> None:
        for svc_id, cidr in items:
            key = self.range_key.one(range_key_fields(svc_id, cidr))
            if op == "put":
                self.ranges[key] = self.range_val.one((1,))
            else:
                with contextlib.suppress(KeyError):
                    del self.ranges[key]

    # ----------------------------------------------------------- read back

    def read_image(self, m: int) -> NodePortImage:
        backends = {
            k[0]: BackendAddr(words_address(v[:4]), socket.ntohs(v[4]),
                              PROTO_NAMES.get(v[5], "?"), bool(v[6] & BE_LOCAL))
            for k, v in dump_table(self.backends, self.backend_key, self.backend_val)
        }
        headers, slots = {}, {}
        for k, v in dump_table(self.svc, self.svc_key, self.svc_val):
            fe = FrontendAddress(words_address(k[:4]), socket.ntohs(k[4]),
                                 PROTO_NAMES.get(k[6], "?"))
            if k[5] == 0:
                headers[fe] = v
            else:
                slots.setdefault(fe, {})[k[5]] = v[0]
        ranges: dict[int, list[str]] = {}
        for key, _ in self.ranges.items():
            f = self.range_key.struct.unpack(bytes(key))
            ip = words_address(f[2:6])
            bits = f[0] - 32 - (96 if ":" not in ip else 0)
            ranges.setdefault(socket.ntohl(f[1]), []).append(
                str(ipaddress.ip_network(f"{ip}/{bits}", strict=False)))
        tables: dict[int, list[int]] = {}
        for k, v in dump_table(self.maglev, self.maglev_key, self.maglev_val):
            if k[1] < m:
                tables.setdefault(k[0], [0] * m)[k[1]] = v[0]
        services = {}
        for fe, (_, count, svc_id, type_code, flags) in headers.items():
            own = slots.get(fe, {})
            services[fe] = ServiceEntry(
                fe, TYPES_BY_CODE.get(type_code, TYPES_BY_CODE[2]), svc_id, flags,
                tuple(own.get(i, 0) for i in range(1, count + 1)),
                tuple(sorted(ranges.get(svc_id, ()))))
        dsr = {DsrKey(words_address(k[:4]), _ip(k[4:8]), socket.ntohs(k[8]),
                      PROTO_NAMES.get(k[9], "?")): socket.ntohs(v[0])
               for k, v in dump_table(self.dsr, self.dsr_key, self.dsr_val)}
        return NodePortImage(services, backends, {s: tuple(t) for s, t in tables.items()}, dsr)

    # -------------------------------------------------------------- pressure

    def pressure(self) -> dict[str, tuple[int, int]]:
        """(entries in use, max entries) per map, counted in the kernel's batches."""
        result = {}
        for name, table in self.tables.items():
            if name == "lbn_cfg":  # an array: every slot exists
                result[name] = (table.max_entries, table.max_entries)
            elif name == "lbn_src_range":  # LPM tries have no batch lookup
                result[name] = (sum(1 for _ in table), table.max_entries)
            else:
                result[name] = (count_entries(table), table.max_entries)
        return result


def count_entries(table: Any, chunk: int = 4096) -> int:
    """Entries of a hash map, read in BPF_MAP_LOOKUP_BATCH chunks of ``chunk``."""
    from bcc.libbcc import lib

    keys = (table.Key * chunk)()
    values = (table.Leaf * chunk)()
    token_in, token_out, count = ctypes.c_uint32(0), ctypes.c_uint32(0), ctypes.c_uint32(0)
    total, first = 0, True
    while True:
        count.value = chunk
        res = lib.bpf_lookup_batch(table.map_fd, None if first else ctypes.byref(token_in),
                                   ctypes.byref(token_out), keys, values, ctypes.byref(count))
        err = ctypes.get_errno()
        total += count.value
        if res != 0:
            if err == errno.ENOENT:
                return total
            raise DriverError("tcnodeport", f"counting entries: {os.strerror(err)}")
        token_in.value, first = token_out.value, False
