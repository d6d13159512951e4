"""codec.Packer: struct packing derived from ctypes layouts like those bcc generates."""

from __future__ import annotations

import ctypes

import pytest

from lbcore_socklb.codec import Packer
from lbcore_socklb.maps import address_words, words_address


class Addr(ctypes.Structure):
    _fields_ = [("words", ctypes.c_uint * 4)]


class SvcKey(ctypes.Structure):  # the shape bcc builds for struct lb_svc_key
    _fields_ = [("address", Addr), ("port", ctypes.c_ushort), ("slot", ctypes.c_ushort),
                ("proto", ctypes.c_ubyte), ("pad", ctypes.c_ubyte * 3)]


class Padded(ctypes.Structure):  # natural alignment inserts 7 bytes after `a`
    _fields_ = [("a", ctypes.c_ubyte), ("b", ctypes.c_ulonglong)]


def test_packer_bytes_equal_ctypes_field_assignment() -> None:
    packer = Packer(SvcKey).expect(
        ["address.words[0]", "address.words[1]", "address.words[2]", "address.words[3]",
         "port", "slot", "proto"])
    by_hand = SvcKey()
    by_hand.address.words[:] = address_words("10.96.0.10")
    by_hand.port, by_hand.slot, by_hand.proto = 0x5000, 3, 6
    packed = packer.one((*address_words("10.96.0.10"), 0x5000, 3, 6))
    assert bytes(packed) == bytes(by_hand)
    array = packer.array([(*address_words("::1"), 1, 2, 17), (*address_words("10.0.0.1"), 3, 4, 6)])
    assert len(array) == 2 and array[1].slot == 4 and array[0].proto == 17


def test_implicit_alignment_padding_is_honoured() -> None:
    packer = Packer(Padded)
    assert packer.struct.size == ctypes.sizeof(Padded) == 16
    value = packer.one((1, 2**40))
    assert (value.a, value.b) == (1, 2**40)


def test_field_order_mismatch_is_a_loud_error() -> None:
    with pytest.raises(TypeError, match="disagree"):
        Packer(SvcKey).expect(["port", "slot"])


def test_scalar_types_pack_as_one_value() -> None:
    assert Packer(ctypes.c_uint).one((7,)).value == 7


@pytest.mark.parametrize("ip", ["10.96.0.10", "0.0.0.1", "fd00:10:96::20", "::ffff:1.2.3.4"])
def test_address_words_round_trip(ip: str) -> None:
    expected = "1.2.3.4" if ip.startswith("::ffff:") else ip  # mapped form reads as IPv4
    assert words_address(address_words(ip)) == expected
