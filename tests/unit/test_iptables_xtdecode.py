"""The raw-entry decoder of iptables read back, on hand-built entries: the layout agrees
with python-iptables' ctypes structs, known xt structs decode to the words save() prints,
and anything it does not render returns None (the caller then takes the slow path).
The same decoder against real applied rulesets: tests/integration/test_iptables_readback.py.
"""

from __future__ import annotations

import ctypes
import socket
import struct

import pytest

from lbcore_iptables.xtdecode import LAYOUTS, decode_entry

iptc4 = pytest.importorskip("iptc.ip4tc")
iptc6 = pytest.importorskip("iptc.ip6tc")
PROTOCOLS = {0: "ip", 6: "tcp", 17: "udp"}


@pytest.mark.parametrize("family, entry, ip, name", [
    (4, iptc4.ipt_entry, iptc4.ipt_ip, "ip"), (6, iptc6.ip6t_entry, iptc6.ip6t_ip6, "ipv6")])
def test_layout_matches_python_iptables_structs(family, entry, ip, name):
    lay = LAYOUTS[family]
    assert lay.entry_size == ctypes.sizeof(entry)
    assert (lay.src, lay.dst, lay.smsk, lay.dmsk) == (ip.src.offset, ip.dst.offset,
                                                      ip.smsk.offset, ip.dmsk.offset)
    assert (lay.ifaces, lay.proto, lay.flags, lay.invflags) == (
        ip.iniface.offset, ip.proto.offset, ip.flags.offset, ip.invflags.offset)
    assert lay.nfcache + 4 == entry.target_offset.offset


def ext(name: bytes, data: bytes, revision: int = 0) -> bytes:
    data += b"\0" * (-len(data) % 8)
    return struct.pack("=H29sB", 32 + len(data), name, revision) + data


def entry(matches: list[bytes], target: bytes, *, src: str = "0.0.0.0", smask: int = 0,
          proto: int = 0, invflags: int = 0, iface: bytes = b"") -> bytes:
    lay = LAYOUTS[4]
    head = bytearray(lay.entry_size)
    head[lay.src:lay.src + 4] = socket.inet_aton(src)
    head[lay.smsk:lay.smsk + 4] = smask.to_bytes(4, "big")
    head[lay.ifaces:lay.ifaces + len(iface)] = iface
    struct.pack_into("=H", head, lay.proto, proto)
    head[lay.invflags] = invflags
    body = b"".join(matches)
    struct.pack_into("=IHH", head, lay.nfcache, 0, lay.entry_size + len(body),
                     lay.entry_size + len(body) + len(target))
    return bytes(head) + body + target


TCP_80 = ext(b"tcp", struct.pack("=4H4B", 0, 0xFFFF, 80, 80, 0, 0, 0, 0))
DNAT = ext(b"DNAT", struct.pack("=I16s16s2s2s2s", 3, socket.inet_aton("10.1.0.5"),
                                socket.inet_aton("10.1.0.5"), b"\x1f\x90", b"\x1f\x90",
                                b"\0\0"), 2)


def test_known_structs_decode_as_save_prints_them():
    comment = ext(b"comment", b"ns/svc:http cluster IP".ljust(256, b"\0"))
    stat = ext(b"statistic", struct.pack("=HHI", 0, 0, 0x40000000) + b"\0" * 16)
    raw = entry([comment, TCP_80, stat], DNAT, src="10.0.3.4", smask=0xFFFFFF00, proto=6,
                invflags=0x08)
    rule = decode_entry("KUBE-SEP-X", raw, "DNAT", 4, PROTOCOLS)
    assert rule is not None
    assert (rule.comment, rule.dport, rule.probability, rule.to_destination) == (
        "ns/svc:http cluster IP", 80, 0.5, "10.1.0.5:8080")
    assert (rule.src, rule.src_neg, rule.dst, rule.proto) == ("10.0.3.0/24", True, None, "tcp")
    assert rule.other == []


@pytest.mark.parametrize("raw", [
    entry([ext(b"limit", b"\0" * 32)], ext(b"", b"\0" * 8)),  # unknown match
    entry([ext(b"tcp", struct.pack("=4H4B", 0, 0xFFFF, 80, 90, 0, 0, 0, 0))], DNAT),  # range
    entry([ext(b"tcp", struct.pack("=4H4B", 53, 53, 0, 0xFFFF, 0, 0, 0, 0))], DNAT),  # sport
    entry([ext(b"mark", b"\0" * 12, 0)], DNAT),  # a revision it does not know
    entry([TCP_80], ext(b"DNAT", b"\0" * 40, 2), proto=6),  # DNAT without an address
    entry([TCP_80], DNAT, iface=b"eth0"),  # -i
    entry([TCP_80], DNAT, smask=0xFF00FF00),  # non-contiguous mask
    entry([ext(b"comment", b'say "hi"'.ljust(256, b"\0"))], DNAT),  # quoting: save's job
])
def test_what_it_does_not_render_goes_to_the_slow_path(raw):
    assert decode_entry("C", raw, "X", 4, PROTOCOLS) is None
