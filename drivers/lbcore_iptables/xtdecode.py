"""Pure: one raw libiptc rule (``ipt_entry``/``ip6t_entry`` bytes) -> a :class:`Rule`.

python-iptables turns every match and target into text by running the extension's
``save()`` into a pipe and re-parsing it, per rule: ~90% of a read back at scale. Here
the xt structures of the matches and targets this driver writes are decoded directly
(layouts from the kernel uapi headers ``linux/netfilter/xt_*.h``, ``nf_nat.h``,
``ipt_REJECT.h``), into the same words ``save()`` would print, so the result is the
same :class:`Rule` as the save path. Anything else -- an unknown extension or
revision, a flag or option these decoders do not render -- returns ``None``: the
caller then reads that rule the slow way, so no rule is misread.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable

from .ruleset import Rule, parse_rule

HEAD = struct.Struct("=H29sB")  # xt_entry_match / xt_entry_target: size, name, revision
HEAD_SIZE = 32


class Layout:
    """Offsets in ``struct ipt_entry`` (x_tables ``ipt_ip``) / ``struct ip6t_entry``."""

    def __init__(self, family: int) -> None:
        v6 = family == 6
        self.family, self.af = family, socket.AF_INET6 if v6 else socket.AF_INET
        self.alen = a = 16 if v6 else 4
        self.src, self.dst, self.smsk, self.dmsk = 0, a, 2 * a, 3 * a
        self.ifaces = 4 * a  # iniface, outiface and their masks: 4 x IFNAMSIZ
        self.proto = self.ifaces + 64  # __u16
        # v4: flags, invflags; v6: tos, flags, invflags
        self.flags = self.proto + (3 if v6 else 2)
        self.invflags = self.flags + 1
        # IPT_F_GOTO 0x02; IP6T_F_PROTO 0x01 (set by any -p) | IP6T_F_GOTO 0x04
        self.allowed_flags = 0x05 if v6 else 0x02
        self.offsets = struct.Struct("=IHH")  # nfcache, target_offset, next_offset
        self.nfcache = (self.invflags + 1 + 3) & ~3
        entry = self.nfcache + self.offsets.size + 4  # + comefrom
        entry = (entry + 7) & ~7  # xt_counters: two __u64
        self.entry_size = entry + 16


LAYOUTS = {4: Layout(4), 6: Layout(6)}
INV_SRCIP = 0x08  # IPT_INV_SRCIP == IP6T_INV_SRCIP
NO_IFACES = bytes(64)
_NETS: dict[tuple[int, bytes], tuple[str, int]] = {}


def _net(lay: Layout, raw: bytes, at: int, mask_at: int) -> tuple[str, int]:
    """(network/prefix length as the slow path prints it, prefix length) of the address
    at ``at`` and the mask at ``mask_at``. Raises ValueError for a non-contiguous mask."""
    addr, mask = raw[at:at + lay.alen], raw[mask_at:mask_at + lay.alen]
    key = (lay.family, addr + mask)
    hit = _NETS.get(key)
    if hit is None:
        bits = int.from_bytes(mask, "big")
        plen = bin(bits).count("1")
        if bits != ((1 << plen) - 1) << (lay.alen * 8 - plen):
            raise ValueError("non-contiguous mask")
        if lay.family == 4:  # what ipaddress prints, without its cost
            net = (int.from_bytes(addr, "big") & bits).to_bytes(4, "big")
            text = f"{socket.inet_ntop(socket.AF_INET, net)}/{plen}"
        else:
            text = str(ipaddress.ip_network(f"{socket.inet_ntop(lay.af, addr)}/{plen}",
                                            strict=False))
        if len(_NETS) > 100_000:  # bounded: the addresses of one read back
            _NETS.clear()
        hit = _NETS[key] = (text, plen)
    return hit


# --------------------------------------------------------------- matches


def _ports(lo: int, hi: int) -> list[str] | None:
    if (lo, hi) == (0, 0xFFFF):
        return []
    return ["--dport", str(lo)] if lo == hi else None


def _tcp(data: bytes, family: int) -> list[str] | None:
    s0, s1, d0, d1, option, flg_mask, flg_cmp, inv = struct.unpack_from("=4H4B", data)
    if (s0, s1) != (0, 0xFFFF) or option or flg_mask or flg_cmp or inv:
        return None
    return _ports(d0, d1)


def _udp(data: bytes, family: int) -> list[str] | None:
    s0, s1, d0, d1, inv = struct.unpack_from("=4HB", data)
    return None if (s0, s1) != (0, 0xFFFF) or inv else _ports(d0, d1)


def _sctp(data: bytes, family: int) -> list[str] | None:
    d0, d1 = struct.unpack_from("=2H", data)
    flags, inv = struct.unpack_from("=II", data, 284)  # after chunkmap, flag_info, count
    if inv or flags not in (0, 0x02):  # XT_SCTP_DEST_PORTS only
        return None
    return _ports(d0, d1) if flags else []


def _comment(data: bytes, family: int) -> list[str] | None:
    try:
        text = data[:256].split(b"\0", 1)[0].decode()
    except UnicodeDecodeError:
        return None
    if not text.isprintable() or any(c in text for c in "\"\\'"):
        return None  # quoting that save() escapes: leave it to the slow path
    return ["--comment", text]


def _statistic(data: bytes, family: int) -> list[str] | None:
    mode, flags, probability = struct.unpack_from("=HHI", data)
    if mode != 0 or flags:  # XT_STATISTIC_MODE_RANDOM, not inverted
        return None
    return ["--mode", "random", "--probability", f"{probability / 0x80000000:.11f}"]


RECENT_CHECK, RECENT_SET, RECENT_REAP = 0x01, 0x02, 0x20


def _recent(data: bytes, family: int) -> list[str] | None:
    """xt_recent_mtinfo (v0) / _v1 (v1 adds the mask, which ``parse_rule`` skips)."""
    seconds, hit_count, check_set, invert = struct.unpack_from("=IIBB", data)
    name, side = data[10:210].split(b"\0", 1)[0].decode(), data[210]
    mode = check_set & ~RECENT_REAP
    if invert or hit_count or side or mode not in (RECENT_CHECK, RECENT_SET):
        return None  # --rdest, --update, --remove, --rttl, --hitcount: slow path
    words = ["--rcheck" if mode == RECENT_CHECK else "--set"]
    words += ["--seconds", str(seconds)] if seconds else []
    words += ["--reap"] if check_set & RECENT_REAP else []
    return [*words, "--name", name, "--rsource"]


ADDRTYPES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST",
             "BLACKHOLE", "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE")


def _types(mask: int) -> str:
    return ",".join(name for bit, name in enumerate(ADDRTYPES) if mask & (1 << bit))


def _addrtype(data: bytes, family: int) -> list[str] | None:
    source, dest, flags = struct.unpack_from("=HHI", data)  # xt_addrtype_info_v1
    if flags or (source | dest) >> len(ADDRTYPES):
        return None  # inverted or --limit-iface-*
    return ((["--src-type", _types(source)] if source else [])
            + (["--dst-type", _types(dest)] if dest else []))


def _mark_text(mark: int, mask: int) -> str:
    return f"0x{mark:x}" if mask == 0xFFFFFFFF else f"0x{mark:x}/0x{mask:x}"


def _mark(data: bytes, family: int) -> list[str] | None:
    mark, mask, invert = struct.unpack_from("=IIB", data)  # xt_mark_mtinfo1
    return (["!"] if invert else []) + ["--mark", _mark_text(mark, mask)]


CT_STATES = ((0x001, "INVALID"), (0x008, "NEW"), (0x004, "RELATED"), (0x002, "ESTABLISHED"),
             (0x040, "UNTRACKED"), (0x100, "SNAT"), (0x200, "DNAT"))


def _conntrack(data: bytes, family: int) -> list[str] | None:
    # xt_conntrack_mtinfo3: 8 nf_inet_addr, expires_min/max, l4proto, 4 ports, then these
    match_flags, invert_flags, state_mask = struct.unpack_from("=3H", data, 146)
    if match_flags != 0x01 or invert_flags:  # XT_CONNTRACK_STATE only
        return None
    if state_mask & ~sum(bit for bit, _ in CT_STATES):
        return None
    return ["--ctstate", ",".join(name for bit, name in CT_STATES if state_mask & bit)]


# --------------------------------------------------------------- targets

MAP_IPS, PROTO_SPECIFIED, RANDOM_FULLY = 0x01, 0x02, 0x10


def _nat_range(data: bytes, family: int, revision: int) -> tuple[int, bytes, bytes, bytes, bytes]:
    """(flags, min_addr, max_addr, min_port, max_port) of nf_nat_ipv4_multi_range_compat
    (v4 revision 0) or nf_nat_range / nf_nat_range2 (revision 1, 2; v6 MASQUERADE 0)."""
    if family == 4 and revision == 0:
        rangesize, flags = struct.unpack_from("=II", data)
        if rangesize != 1:
            raise ValueError("rangesize")
        return flags, data[8:12], data[12:16], data[16:18], data[18:20]
    (flags,) = struct.unpack_from("=I", data)
    a = 4 if family == 4 else 16
    return flags, data[4:4 + a], data[20:20 + a], data[36:38], data[38:40]


def _dnat(data: bytes, family: int, revision: int) -> list[str] | None:
    flags, lo, hi, plo, phi = _nat_range(data, family, revision)
    if lo != hi or not flags & MAP_IPS or flags & ~(MAP_IPS | PROTO_SPECIFIED):
        return None
    ip = socket.inet_ntop(socket.AF_INET6 if family == 6 else socket.AF_INET, lo)
    if not flags & PROTO_SPECIFIED:
        return ["--to-destination", ip]
    if plo != phi:
        return None
    port = int.from_bytes(plo, "big")
    return ["--to-destination", f"[{ip}]:{port}" if family == 6 else f"{ip}:{port}"]


def _masquerade(data: bytes, family: int, revision: int) -> list[str] | None:
    flags = _nat_range(data, family, 0 if family == 4 else 1)[0]
    if flags & ~RANDOM_FULLY:
        return None  # --to-ports, --random: slow path
    return ["--random-fully"] if flags else []


def _set_mark(data: bytes, family: int, revision: int) -> list[str] | None:
    mark, mask = struct.unpack_from("=II", data)  # xt_mark_tginfo2
    return ["--set-xmark", f"0x{mark:x}/0x{mask:x}"]


REJECT_WITH = {4: {3: "icmp-port-unreachable", 7: "tcp-reset"},
               6: {4: "icmp6-port-unreachable", 6: "tcp-reset"}}


def _reject(data: bytes, family: int, revision: int) -> list[str] | None:
    with_ = REJECT_WITH[family].get(struct.unpack_from("=I", data)[0])
    return None if with_ is None else ["--reject-with", with_]


Decoder = Callable[[bytes, int], list[str] | None]
MATCHES: dict[tuple[bytes, int], Decoder] = {
    (b"comment", 0): _comment, (b"tcp", 0): _tcp, (b"udp", 0): _udp, (b"sctp", 0): _sctp,
    (b"statistic", 0): _statistic, (b"recent", 0): _recent, (b"recent", 1): _recent,
    (b"addrtype", 1): _addrtype, (b"mark", 1): _mark, (b"conntrack", 3): _conntrack,
}
TARGETS: dict[tuple[bytes, int], Callable[[bytes, int, int], list[str] | None]] = {
    (b"DNAT", 0): _dnat, (b"DNAT", 1): _dnat, (b"DNAT", 2): _dnat,
    (b"MASQUERADE", 0): _masquerade, (b"MARK", 2): _set_mark, (b"REJECT", 0): _reject,
}


def decode_entry(chain: str, raw: bytes, target: str, family: int, protocols: dict[int, str]
                 ) -> Rule | None:
    """The rule in ``raw`` (one entry as libiptc holds it; ``target``: what
    ``iptc_get_target`` says, the chain or verdict of a standard target), or ``None``
    when something in it is not decoded here."""
    lay = LAYOUTS[family]
    if raw[lay.flags] & ~lay.allowed_flags or raw[lay.invflags] & ~INV_SRCIP:
        return None  # interface, fragment, protocol or destination inversion
    if raw[lay.ifaces:lay.proto] != NO_IFACES:
        return None  # -i / -o
    _, target_offset, next_offset = lay.offsets.unpack_from(raw, lay.nfcache)
    words: list[str] = []
    off = lay.entry_size
    try:
        while off < target_offset:
            size, name, revision = HEAD.unpack_from(raw, off)
            name = name.partition(b"\0")[0]
            match = MATCHES.get((name, revision))
            more = match and match(raw[off + HEAD_SIZE:off + size], family)
            if more is None or size < HEAD_SIZE:
                return None
            words += ["-m", name.decode(), *more]
            off += size
        size, name, revision = HEAD.unpack_from(raw, target_offset)
        name = name.partition(b"\0")[0]
        words += ["-j", target]
        if name:  # "" is the standard target: a verdict or a jump
            decode = TARGETS.get((name, revision))
            more = decode and decode(raw[target_offset + HEAD_SIZE:next_offset], family,
                                     revision)
            if more is None:
                return None
            words += more
        rule = parse_rule(chain, words)
        src, src_len = _net(lay, raw, lay.src, lay.smsk)
        dst, dst_len = _net(lay, raw, lay.dst, lay.dmsk)
    except (ValueError, struct.error, UnicodeDecodeError):
        return None
    rule.src_neg = bool(raw[lay.invflags] & INV_SRCIP)
    rule.src = src if src_len or rule.src_neg else None
    rule.dst = dst if dst_len else None
    (proto,) = struct.unpack_from("=H", raw, lay.proto)
    name = protocols.get(proto, str(proto))
    rule.proto = None if name in ("ip", "all") else name
    return rule

