"""``driver_options`` of the tcnodeport driver, validated up front (``ConfigError``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lbcore.driver import option, reject_unknown_options
from lbcore.errors import ConfigError

from .maglev import DEFAULT_TABLE_SIZE, is_prime

NAME = "tcnodeport"
MODES = ("snat", "dsr")
# option name -> (C macro, default)
MACRO_OPTIONS = {
    "service_map_max": ("LBN_SERVICE_MAP_MAX", 65536),
    "backend_map_max": ("LBN_BACKEND_MAP_MAX", 65536),
    "ct_map_max": ("LBN_CT_MAP_MAX", 262144),
    "maglev_map_max": ("LBN_MAGLEV_MAP_MAX", DEFAULT_TABLE_SIZE * 16),
    "source_range_map_max": ("LBN_SRC_RANGE_MAP_MAX", 4096),
    "ct_tcp_timeout": ("LBN_CT_TCP_TIMEOUT", 21600),
    "ct_syn_timeout": ("LBN_CT_SYN_TIMEOUT", 60),
    "ct_close_timeout": ("LBN_CT_CLOSE_TIMEOUT", 10),
    "ct_time_wait_timeout": ("LBN_CT_TIME_WAIT_TIMEOUT", 120),
    "ct_udp_timeout": ("LBN_CT_UDP_TIMEOUT", 60),
}
# Outside Linux's default ephemeral range (32768-60999) and the NodePort range.
DEFAULT_SNAT_RANGE = "61000-65535"


@dataclass(frozen=True)
class TcNodePortOptions:
    devices: tuple[str, ...]
    bpffs_path: str
    mode: str
    snat_ports: tuple[int, int]
    maglev_table_size: int
    netns: str | None
    sizes: Mapping[str, int]
    allow_initial_netns: bool
    ct_flush_tcp: bool = False  # UDP flows of a removed backend are always flushed

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> TcNodePortOptions:
        known = {"devices", "bpffs_path", "mode", "snat_port_range", "maglev_table_size",
                 "netns", "allow_initial_netns", "ct_flush_tcp", *MACRO_OPTIONS}
        reject_unknown_options(options, NAME, known)
        devices = options.get("devices", ["eth0"])
        if isinstance(devices, str):
            devices = [devices]
        if (not isinstance(devices, list | tuple) or not devices
                or not all(isinstance(d, str) and d for d in devices)):
            raise ConfigError(f"driver_options.devices: {devices!r} (driver {NAME}; valid: a "
                              "list of node device names, e.g. [eth0])")
        bpffs = option(options, NAME, "bpffs_path", str, "/sys/fs/bpf/lbcore")
        if not os.path.isabs(bpffs):
            raise ConfigError(f"driver_options.bpffs_path: {bpffs!r} is not absolute")
        mode = option(options, NAME, "mode", str, "snat")
        if mode not in MODES:
            raise ConfigError(f"driver_options.mode: {mode!r} (driver {NAME}; valid: "
                              f"{', '.join(MODES)})")
        snat = _port_range(option(options, NAME, "snat_port_range", str, DEFAULT_SNAT_RANGE))
        m = option(options, NAME, "maglev_table_size", int, DEFAULT_TABLE_SIZE,
                   minimum=7, maximum=131071)
        if not is_prime(m):
            raise ConfigError(f"driver_options.maglev_table_size: {m} is not prime (driver "
                              f"{NAME}; valid: a prime, e.g. 251, 4093, 16381, 65521)")
        netns = options.get("netns")
        if netns is not None and (not isinstance(netns, str) or "/" in netns):
            raise ConfigError(f"driver_options.netns: {netns!r} (valid: a name from "
                              "`ip netns list`)")
        sizes = {name: option(options, NAME, name, int, default, minimum=1, maximum=1 << 24)
                 for name, (_, default) in MACRO_OPTIONS.items()}
        if sizes["maglev_map_max"] < m:
            raise ConfigError(f"driver_options.maglev_map_max: {sizes['maglev_map_max']} is "
                              f"below one table ({m} slots)")
        allow = option(options, NAME, "allow_initial_netns", bool, False)
        flush_tcp = option(options, NAME, "ct_flush_tcp", bool, False)
        return cls(tuple(devices), os.path.normpath(bpffs), mode, snat, m, netns, sizes, allow,
                   flush_tcp)

    def macros(self) -> dict[str, int]:
        macros = {MACRO_OPTIONS[name][0]: value for name, value in self.sizes.items()}
        macros["LBN_MAGLEV_M"] = self.maglev_table_size
        return macros


def _port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        lo, hi = 0, -1
    if not 1024 <= lo <= hi <= 65535:
        raise ConfigError(f"driver_options.snat_port_range: {text!r} (driver {NAME}; valid: "
                          f"LOW-HIGH within 1024-65535, e.g. {DEFAULT_SNAT_RANGE})")
    return lo, hi
