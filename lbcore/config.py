"""lbcore.yaml: which driver, its options, this node, and where objects come from."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .expand import ExternalIPPolicy
from .model import NodeInfo, normalise_ip

TOP_LEVEL_KEYS = {"driver", "driver_options", "node", "source", "runner", "service_proxy_name",
                  "external_ips"}
RUNNER_KEYS = {"min_sync_period", "sync_period", "health_timeout"}
EXTERNAL_IPS_KEYS = {"allowed_cidrs"}


@dataclass(frozen=True)
class RunnerConfig:
    """Bounded-frequency runner timing, as kube-proxy's --iptables-*-sync-period."""

    min_sync_period: float = 0.0  # seconds between two syncs at least (burst coalescing)
    sync_period: float = 30.0  # full resync at least this often
    health_timeout: float = 60.0  # /healthz turns 503 when an update waits longer


@dataclass(frozen=True)
class Config:
    path: Path
    driver: str
    driver_options: Mapping[str, Any]
    node: NodeInfo
    source_kind: str
    source_options: Mapping[str, Any]
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    service_proxy_name: str | None = None  # serve services labelled with this name only
    external_ips: ExternalIPPolicy | None = None  # None: any externalIP is programmed


def _fail(path: Path, key: str, problem: str, valid: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {problem} (valid: {valid})")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate ``lbcore.yaml``. Relative source paths are relative to it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, path)


def parse_config(raw: Any, path: Path) -> Config:
    if not isinstance(raw, dict):
        raise _fail(path, "(top level)", f"{type(raw).__name__} found", "a mapping")
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise _fail(path, unknown[0], "unknown key", ", ".join(sorted(TOP_LEVEL_KEYS)))

    driver = raw.get("driver")
    if not isinstance(driver, str) or not driver:
        raise _fail(path, "driver", f"{driver!r}", "an installed driver name, see `lbcore drivers`")
    options = raw.get("driver_options") or {}
    if not isinstance(options, dict):
        raise _fail(path, "driver_options", f"{options!r}", "a mapping of driver options")

    node = _parse_node(raw.get("node") or {}, path)

    source = raw.get("source") or {"kind": "file", "path": "services.yaml"}
    if not isinstance(source, dict) or not isinstance(source.get("kind", "file"), str):
        raise _fail(path, "source", f"{source!r}", "a mapping with kind: file|kubernetes|...")
    source = dict(source)
    kind = source.pop("kind", "file")
    if "path" in source:
        if not isinstance(source["path"], str):
            raise _fail(path, "source.path", f"{source['path']!r}", "a file path")
        source["path"] = str((path.parent / source["path"]).resolve())

    runner = _parse_runner(raw.get("runner") or {}, path)
    spn = raw.get("service_proxy_name")
    if spn is not None and not isinstance(spn, str):
        raise _fail(path, "service_proxy_name", f"{spn!r}", "a string")
    external_ips = _parse_external_ips(raw.get("external_ips"), path)
    return Config(path, driver, dict(options), node, kind, source, runner, spn, external_ips)


def _parse_node(raw: Any, path: Path) -> NodeInfo:
    if not isinstance(raw, dict):
        raise _fail(path, "node", f"{raw!r}", "a mapping with name and addresses")
    name = raw.get("name") or os.environ.get("NODE_NAME") or os.uname().nodename
    if not isinstance(name, str):
        raise _fail(path, "node.name", f"{name!r}", "the Kubernetes node name")
    addresses = raw.get("addresses") or []
    if not isinstance(addresses, list):
        raise _fail(path, "node.addresses", f"{addresses!r}", "a list of IP addresses")
    normalised = []
    for i, addr in enumerate(addresses):
        try:
            normalised.append(normalise_ip(str(addr)))
        except ValueError:
            raise _fail(
                path, f"node.addresses[{i}]", f"{addr!r}", "an IPv4 or IPv6 address"
            ) from None
        ip = ipaddress.ip_address(normalised[-1])
        if ip.is_unspecified or ip.is_loopback or ip.is_multicast:
            # NodePorts open on these; on 127.0.0.1 that is CVE-2020-8558's exposure.
            raise _fail(path, f"node.addresses[{i}]", f"{addr!r}",
                        "a unicast address of the node (not unspecified, loopback or multicast)")
    zone = raw.get("zone")
    return NodeInfo(name=name, addresses=tuple(normalised), zone=zone)


def _parse_runner(raw: Any, path: Path) -> RunnerConfig:
    if not isinstance(raw, dict):
        raise _fail(path, "runner", f"{raw!r}", f"a mapping of {', '.join(sorted(RUNNER_KEYS))}")
    unknown = sorted(set(raw) - RUNNER_KEYS)
    if unknown:
        raise _fail(path, f"runner.{unknown[0]}", "unknown key", ", ".join(sorted(RUNNER_KEYS)))
    values = {}
    for key in RUNNER_KEYS & set(raw):
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise _fail(path, f"runner.{key}", f"{value!r}", "a number of seconds >= 0")
        values[key] = float(value)
    return RunnerConfig(**values)


def _parse_external_ips(raw: Any, path: Path) -> ExternalIPPolicy | None:
    """``external_ips: {allowed_cidrs: [...]}``: the externalIPs Services may claim.

    Absent: any (kube-proxy's behaviour). ``allowed_cidrs: []``: none, as Kubernetes'
    DenyServiceExternalIPs admission plugin. CIDRs must not have host bits set, so that
    what is allowed is exactly what is written.
    """
    if raw is None:
        return None
    valid = "a mapping with allowed_cidrs: a list of CIDRs, e.g. [192.0.2.0/24, 2001:db8::/64]"
    if not isinstance(raw, dict):
        raise _fail(path, "external_ips", f"{raw!r}", valid)
    unknown = sorted(set(raw) - EXTERNAL_IPS_KEYS)
    if unknown:
        raise _fail(path, f"external_ips.{unknown[0]}", "unknown key",
                    ", ".join(sorted(EXTERNAL_IPS_KEYS)))
    cidrs = raw.get("allowed_cidrs")
    if not isinstance(cidrs, list):
        raise _fail(path, "external_ips.allowed_cidrs", f"{cidrs!r}",
                    "a list of CIDRs ([] allows no externalIPs at all)")
    allowed = []
    for i, cidr in enumerate(cidrs):
        key = f"external_ips.allowed_cidrs[{i}]"
        if not isinstance(cidr, str) or "/" not in cidr:
            raise _fail(path, key, f"{cidr!r}", "a CIDR, e.g. 192.0.2.0/24 or 192.0.2.7/32")
        text = cidr.strip()
        try:
            network = ipaddress.ip_network(text)  # strict: host bits set are refused
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise _fail(path, key, f"{cidr!r}", "a CIDR, e.g. 192.0.2.0/24") from None
            one = f"{text.split('/')[0]}/{loose.max_prefixlen}"
            raise _fail(path, key, f"{cidr!r} has host bits set",
                        f"{loose}, or {one} for that one address") from None
        allowed.append(network)
    return ExternalIPPolicy(tuple(dict.fromkeys(allowed)))
