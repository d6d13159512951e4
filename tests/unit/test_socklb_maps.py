"""socklb KernelMaps without a kernel: the names it gives bcc's tables in counts and
errors (bcc's ``Table()`` passes no name to hash/LRU tables: their ``_name`` is None)."""

from __future__ import annotations

import ctypes

import pytest

from lbcore.errors import DriverError
from lbcore_socklb.image import BackendAddr
from lbcore_socklb.maps import KernelMaps
from lbcore_socklb.plan import Plan


class Addr(ctypes.Structure):
    _fields_ = [("words", ctypes.c_uint * 4)]


class SvcKey(ctypes.Structure):  # the shapes bcc builds from bpf/include/lbcore/maps.h
    _fields_ = [("address", Addr), ("port", ctypes.c_ushort), ("slot", ctypes.c_ushort),
                ("proto", ctypes.c_ubyte), ("pad", ctypes.c_ubyte * 3)]


class SvcVal(ctypes.Structure):
    _fields_ = [("backend_id", ctypes.c_uint), ("affinity_timeout", ctypes.c_uint),
                ("count", ctypes.c_ushort), ("rev_nat_id", ctypes.c_ushort),
                ("type", ctypes.c_ubyte), ("flags", ctypes.c_ubyte), ("state", ctypes.c_ubyte),
                ("pad", ctypes.c_ubyte)]


class Backend(ctypes.Structure):
    _fields_ = [("address", Addr), ("port", ctypes.c_ushort), ("proto", ctypes.c_ubyte),
                ("pad", ctypes.c_ubyte)]


class RevNat(ctypes.Structure):
    _fields_ = [("address", Addr), ("port", ctypes.c_ushort), ("pad", ctypes.c_ushort)]


class Match(ctypes.Structure):
    _fields_ = [("backend_id", ctypes.c_uint), ("rev_nat_id", ctypes.c_ushort),
                ("pad", ctypes.c_ushort)]


class FakeHashTable:
    """Like bcc's HashTable: no name, and a batch update that may fail (map full)."""

    def __init__(self, key, leaf, entries: int = 0, *, full: bool = False) -> None:
        self.Key, self.Leaf = key, leaf
        self._name = None
        self.entries, self.full = entries, full

    def items(self):
        return [(self.Key(), self.Leaf()) for _ in range(self.entries)]

    def items_update_batch(self, keys, values):
        if self.full:
            raise Exception("BPF_MAP_UPDATE_BATCH has failed: Argument list too long")


def kernel_maps(**overrides: FakeHashTable) -> KernelMaps:
    shapes = {
        "lbc_svc": (SvcKey, SvcVal),
        "lbc_backends": (ctypes.c_uint, Backend),
        "lbc_revnat": (ctypes.c_ushort, RevNat),
        "lbc_aff_match": (Match, ctypes.c_ubyte),
        "lbc_sk_revnat": (ctypes.c_ulonglong, ctypes.c_ulonglong),
        "lbc_affinity": (ctypes.c_ulonglong, ctypes.c_ulonglong),
    }
    tables = {name: overrides.get(name) or FakeHashTable(*kv) for name, kv in shapes.items()}
    return KernelMaps({name.encode(): table for name, table in tables.items()})


def test_entry_counts_are_keyed_by_map_name() -> None:
    maps = kernel_maps(lbc_svc=FakeHashTable(SvcKey, SvcVal, 4),
                       lbc_backends=FakeHashTable(ctypes.c_uint, Backend, 3))
    assert maps.entry_counts() == {
        "lbc_svc": 4, "lbc_backends": 3, "lbc_revnat": 0, "lbc_sk_revnat": 0,
        "lbc_affinity": 0,
    }


def test_a_failed_write_names_the_map() -> None:
    maps = kernel_maps(lbc_backends=FakeHashTable(ctypes.c_uint, Backend, full=True))
    plan = Plan(backend_puts=[(1, BackendAddr("10.244.0.100", 80, "TCP"))])
    with pytest.raises(DriverError, match="writing lbc_backends failed"):
        maps.apply(plan)
