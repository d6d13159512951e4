"""Value formats Kubernetes validates, as small reusable rules.

The counterpart of apimachinery's ``pkg/util/validation``: each rule returns the list
of problems with one value (empty when valid) and carries a ``valid`` text that tells
the user what would be accepted. Field-level bookkeeping lives in ``fields``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

# ------------------------------------------------------------------ the rule type


@dataclass(frozen=True)
class Rule:
    """A named format: ``rule(value)`` returns its problems, ``rule.valid`` the remedy."""

    valid: str
    check: Callable[[str], list[str]]

    def __call__(self, value: str) -> list[str]:
        return self.check(value)


# --------------------------------------------------------------------- names

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
IANA_SVC_NAME_MAX = 15
QUALIFIED_NAME_MAX = 63
LABEL_VALUE_MAX = 63

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(
    rf"{_DNS1123_LABEL.pattern}(\.{_DNS1123_LABEL.pattern})*"
)
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_IANA_SVC_NAME = re.compile(r"[-a-z0-9]+")
_HAS_LETTER = re.compile(r"[a-z]")


def _too_long(value: str, limit: int) -> list[str]:
    return [f"must be no more than {limit} characters"] if len(value) > limit else []


def _dns1123_label(value: str) -> list[str]:
    problems = _too_long(value, DNS1123_LABEL_MAX)
    if not _DNS1123_LABEL.fullmatch(value):
        problems.append(
            "must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character"
        )
    return problems


def _dns1035_label(value: str) -> list[str]:
    problems = _too_long(value, DNS1123_LABEL_MAX)
    if not _DNS1035_LABEL.fullmatch(value):
        problems.append(
            "must consist of lower case alphanumeric characters or '-', "
            "start with an alphabetic character, and end with an alphanumeric character"
        )
    return problems


def _dns1123_subdomain(value: str) -> list[str]:
    problems = _too_long(value, DNS1123_SUBDOMAIN_MAX)
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        problems.append(
            "must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return problems


def _fqdn(value: str) -> list[str]:
    name = value.removesuffix(".")
    problems = _dns1123_subdomain(name)
    if not problems and "." not in name:
        problems.append("should be a domain with at least two segments separated by dots")
    return problems


def _iana_svc_name(value: str) -> list[str]:
    problems = _too_long(value, IANA_SVC_NAME_MAX)
    if not _IANA_SVC_NAME.fullmatch(value):
        problems.append("must contain only alphanumeric characters (a-z, 0-9), and hyphens (-)")
    if "--" in value:
        problems.append("must not contain consecutive hyphens")
    if not _HAS_LETTER.search(value):
        problems.append("must contain at least one letter (a-z)")
    if value.startswith("-") or value.endswith("-"):
        problems.append("must not begin or end with a hyphen")
    return problems


def _qualified_name(value: str) -> list[str]:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS subdomain."""
    prefix, slash, name = value.rpartition("/")
    problems = []
    if slash:
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            problems += [f"prefix part {p}" for p in _dns1123_subdomain(prefix)]
    if not name:
        problems.append("name part must be non-empty")
    else:
        problems += [f"name part {p}" for p in _too_long(name, QUALIFIED_NAME_MAX)]
        if not _QUALIFIED_NAME.fullmatch(name):
            problems.append(
                "name part must consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character"
            )
    return problems


def _label_value(value: str) -> list[str]:
    problems = _too_long(value, LABEL_VALUE_MAX)
    if value and not _QUALIFIED_NAME.fullmatch(value):
        problems.append(
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return problems


DNS1123_LABEL = Rule("a DNS-1123 label, e.g. 'my-name' (RFC 1123)", _dns1123_label)
DNS1035_LABEL = Rule("a DNS-1035 label, e.g. 'my-name' (starts with a letter)", _dns1035_label)
DNS1123_SUBDOMAIN = Rule("a DNS-1123 subdomain, e.g. 'example.com'", _dns1123_subdomain)
FQDN = Rule("a fully qualified domain name, e.g. 'host.example.com'", _fqdn)
IANA_SVC_NAME = Rule("an IANA service name, e.g. 'http' (1-15 of a-z, 0-9, '-')", _iana_svc_name)
QUALIFIED_NAME = Rule("a qualified name, e.g. 'example.com/my-key' or 'my_key'", _qualified_name)
LABEL_VALUE = Rule("a label value: up to 63 of A-Z, a-z, 0-9, '-', '_', '.'", _label_value)

# ---------------------------------------------------------------------- ports

PORT_MIN, PORT_MAX = 1, 65535
PORT_RANGE = f"{PORT_MIN}-{PORT_MAX}"


def port_number_problems(value: int) -> list[str]:
    if PORT_MIN <= value <= PORT_MAX:
        return []
    return [f"must be between {PORT_MIN} and {PORT_MAX}, inclusive"]


# ------------------------------------------------------------------ addresses


def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, or None. No IPv6 zone (``%eth0``).

    An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is the IPv4 address, as Go's
    ``net.ParseIP`` (and so Kubernetes) reads it: it is of family IPv4, and
    ``::ffff:127.0.0.1`` is loopback. Read as IPv6 it would slip past every
    special-address check and reach the kernel as a v4 address anyway.
    """
    if "%" in value:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def canonical_ip(value: str) -> str:
    """The canonical text of a valid address (``FD00::01`` -> ``fd00::1``,
    ``::ffff:10.0.0.1`` -> ``10.0.0.1``). Raises ValueError if it is none."""
    address = parse_ip(value)
    if address is None:
        raise ValueError(f"{value!r} is not an IP address")
    return str(address)


def _ip(value: str, version: int | None = None) -> list[str]:
    address = parse_ip(value)
    if address is None:
        what = f"IPv{version} address" if version else "IP address"
        return [f"must be a valid {what}, e.g. {'2001:db8::1' if version == 6 else '10.9.8.7'}"]
    if version and address.version != version:
        return [f"must be an IPv{version} address"]
    return []


IPV4_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def special_ip_problems(value: str) -> list[str]:
    """Kubernetes' ValidateNonSpecialIP (unspecified, loopback, link-local unicast,
    link-local multicast), extended to every multicast address and to the IPv4
    limited broadcast, as kubelet's node IP check refuses them: none of them is an
    address a service or a pod can be reached at from the cluster."""
    address = parse_ip(value)
    if address is None:
        return []
    problems = []
    if address.is_unspecified:
        problems.append("may not be unspecified (0.0.0.0, ::)")
    if address.is_loopback:
        problems.append("may not be in the loopback range (127.0.0.0/8, ::1/128)")
    if address.is_link_local:
        problems.append("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
    if address.is_multicast:
        problems.append("may not be a multicast address (224.0.0.0/4, ff00::/8)")
    if address == IPV4_BROADCAST:
        problems.append("may not be the broadcast address (255.255.255.255)")
    return problems


def parse_cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network (host bits dropped, as Kubernetes' ParseCIDR does), or None.
    ``::ffff:10.0.0.0/104`` is ``10.0.0.0/8``, as for addresses (``parse_ip``)."""
    if "%" in value or "/" not in value:
        return None
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None
    mapped = ipaddress.IPv6Network("::ffff:0:0/96")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(mapped):
        v4 = network.network_address.ipv4_mapped
        assert v4 is not None
        return ipaddress.IPv4Network((v4, network.prefixlen - 96), strict=False)
    return network


def _cidr(value: str) -> list[str]:
    if parse_cidr(value) is None:
        return ["must be a valid CIDR value, e.g. 192.168.0.0/16 or fd00::/8"]
    return []


IP = Rule("an IPv4 or IPv6 address", _ip)
IPV4 = Rule("an IPv4 address", lambda v: _ip(v, 4))
IPV6 = Rule("an IPv6 address", lambda v: _ip(v, 6))
NON_SPECIAL_IP = Rule(
    "a unicast address that is not unspecified, loopback, link-local or broadcast",
    special_ip_problems,
)
CIDR = Rule("a CIDR, e.g. 192.168.0.0/16 or fd00::/8", _cidr)


def normalise_cidr(value: str) -> str:
    """Canonical network text of a valid CIDR (see ``parse_cidr``)."""
    network = parse_cidr(value)
    if network is None:
        raise ValueError(f"{value!r} is not a CIDR")
    return str(network)
