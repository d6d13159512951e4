"""Apply a ``Plan`` to the pinned NodePort maps and read them back into an image.

Key and value layouts come from the compiled program (bcc's ``Table.Key`` /
``Table.Leaf`` through ``Packer``), never redeclared. Hash-map phases are one batched
syscall each; the LPM trie and the config array take single updates.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

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

from .image import BE_LOCAL, TYPES_BY_CODE, BackendAddr, NodePortImage, ServiceEntry
from .plan import Plan

WORDS = [f"words[{i}]" for i in range(4)]
ADDR = [f"address.words[{i}]" for i in range(4)]
MODE_CODES = {"snat": 0, "dsr": 1}


def range_key_fields(svc_id: int, cidr: str) -> tuple[int, ...]:
    net = ipaddress.ip_network(cidr)
    prefix = net.prefixlen + (96 if net.version == 4 else 0)
    return (32 + prefix, socket.htonl(svc_id), *address_words(str(net.network_address)))


class KernelMaps:
    def __init__(self, bpf: Any) -> None:
        t = {name: bpf[name.encode()] for name in (
            "lbn_svc", "lbn_backends", "lbn_maglev", "lbn_src_range", "lbn_local_ep",
            "lbn_cfg", "lbn_ct")}
        self.svc, self.backends, self.maglev = t["lbn_svc"], t["lbn_backends"], t["lbn_maglev"]
        self.ranges, self.local_eps = t["lbn_src_range"], t["lbn_local_ep"]
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
        self.ep_key = Packer(self.local_eps.Key).expect(WORDS)
        self.ep_val = Packer(self.local_eps.Leaf)
        self.cfg_val = Packer(self.cfg.Leaf).expect(
            [f"node_addr.{w}" for w in WORDS] + ["snat_min", "snat_max", "mode"])

    # ------------------------------------------------------------ encoding

    @staticmethod
    def _svc_fields(fe: FrontendAddress, slot: int) -> tuple[int, ...]:
        return (*address_words(fe.ip), socket.htons(fe.port), slot, PROTO_NUMBERS[fe.protocol])

    @staticmethod
    def _backend_fields(b: BackendAddr) -> tuple[int, ...]:
        return (*address_words(b.ip), socket.htons(b.port), PROTO_NUMBERS[b.protocol],
                BE_LOCAL if b.local else 0)

    def _codecs(self) -> dict[str, tuple[Any, Packer, Callable, Packer, Callable]]:
        return {
            "backends": (self.backends, self.backend_key, lambda i: (i[0],),
                         self.backend_val, lambda i: self._backend_fields(i[1])),
            "local_eps": (self.local_eps, self.ep_key, address_words,
                          self.ep_val, lambda _i: (1,)),
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
            "local_eps": address_words,
            "maglev": lambda item: item,
            "slots": lambda item: self._svc_fields(item[0], item[1]),
            "headers": lambda fe: self._svc_fields(fe, 0),
        }[map_name]

    # --------------------------------------------------------------- apply

    def write_config(self, node_ip: str, snat: tuple[int, int], mode: str) -> None:
        self.cfg[self.cfg.Key(0)] = self.cfg_val.one(
            (*address_words(node_ip), snat[0], snat[1], MODE_CODES[mode]))

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
        eps = {words_address(k) for k, _ in dump_table(self.local_eps, self.ep_key,
                                                         self.ep_val)}
        return NodePortImage(services, backends, {s: tuple(t) for s, t in tables.items()}, eps)
