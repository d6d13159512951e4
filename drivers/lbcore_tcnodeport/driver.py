"""The tc-eBPF NodePort driver: north-south load balancing without iptables."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from lbcore.driver import Capabilities, Driver, Problem, SyncResult
from lbcore.errors import CapacityError, ConfigError, DriverError
from lbcore.model import (
    BackendState,
    DesiredState,
    Frontend,
    FrontendAddress,
    FrontendState,
    FrontendType,
    NodeInfo,
    ServiceKey,
)
from lbcore_socklb import bpfsys
from lbcore_socklb.ids import IdExhausted
from lbcore_socklb.loader import bpffs_mount_of

from . import loader
from .conntrack import ConntrackTable, Flow
from .image import (
    Allocators,
    BackendAddr,
    NodePortImage,
    ServiceEntry,
    dsr_ports,
    render_entry,
)
from .maps import KernelMaps
from .options import NAME, TcNodePortOptions
from .plan import Plan, plan_sync

log = logging.getLogger(__name__)
NORTH_SOUTH = frozenset({FrontendType.NODE_PORT, FrontendType.EXTERNAL_IP,
                         FrontendType.LOAD_BALANCER})
PINNED_SIZES = {"lbn_svc": "service_map_max", "lbn_backends": "backend_map_max",
                "lbn_ct": "ct_map_max", "lbn_maglev": "maglev_map_max",
                "lbn_src_range": "source_range_map_max"}


class TcNodePortDriver(Driver):
    """Per-packet DNAT / reverse NAT on tc of the node devices, with its own conntrack."""

    name: ClassVar[str] = NAME

    def __init__(self, options: Mapping[str, Any], node: NodeInfo) -> None:
        super().__init__(options, node)
        self.opts = TcNodePortOptions.parse(options)
        v4 = [a for a in node.addresses if ":" not in a]
        v6 = [a for a in node.addresses if ":" in a]
        if not v4 and not v6:
            raise ConfigError(f"node.addresses: {list(node.addresses)!r} is empty (driver "
                              f"{NAME} SNATs and encapsulates from the first of each family)")
        self.node_ip4 = v4[0] if v4 else None
        self.node_ip6 = v6[0] if v6 else None
        self._bpf: Any = None
        self._maps: KernelMaps | None = None
        self._image: NodePortImage | None = None
        self._ids: Allocators | None = None
        self._synced: dict[ServiceKey, tuple[FrontendAddress, ...]] = {}

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            frontend_types=NORTH_SOUTH,
            protocols=frozenset({"TCP", "UDP"}),
            families=frozenset({4, 6}),
            source_ranges=True,
            external_traffic_local=True,
            algorithms=frozenset({"random", "maglev"}),
            node_ports="local",
            clients=frozenset({"external"}),  # tc ingress of the node devices
            description="eBPF on tc (clsact) of node devices: NodePort, ExternalIP and "
                        "LoadBalancer with conntrack, SNAT or DSR, random or Maglev",
        )

    # ------------------------------------------------------------ preflight

    def check(self) -> list[Problem]:
        problems = []
        if os.geteuid() != 0:
            problems.append(Problem("permissions", "not running as root",
                                    "run as root (CAP_BPF, CAP_NET_ADMIN)"))
        if loader.in_initial_netns(self.opts.netns) and not self.opts.allow_initial_netns:
            problems.append(Problem(
                "netns", "the devices named are this machine's own (initial network "
                "namespace)", "set driver_options.netns, or allow_initial_netns: true on a "
                "real node"))
        if bpffs_mount_of(self.opts.bpffs_path) is None:
            problems.append(Problem("bpffs", f"{self.opts.bpffs_path} is not on a bpffs",
                                    "mount -t bpf bpf /sys/fs/bpf"))
        try:
            with loader.route_socket(self.opts.netns) as ipr:
                for device in self.opts.devices:
                    loader.require_ifindex(ipr, device)
        except DriverError as exc:
            problems.append(Problem("devices", str(exc), "name existing node devices"))
        except Exception as exc:
            problems.append(Problem("netns", f"cannot open {self.opts.netns}: {exc}",
                                    "create it or fix driver_options.netns"))
        return problems

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        if loader.in_initial_netns(self.opts.netns) and not self.opts.allow_initial_netns:
            raise DriverError(NAME, "refusing to attach to the devices of the initial network "
                              "namespace; set driver_options.netns or allow_initial_netns")
        self._load(for_setup=True)
        assert self._maps is not None
        self._maps.write_config(self.node_ip4, self.node_ip6, self.opts.snat_ports,
                                self.opts.mode)
        self._adopt(self._maps.read_image(self.opts.maglev_table_size))
        loader.attach(loader.load_functions(self._bpf), list(self.opts.devices), self.opts.netns)
        log.info("%s: attached to %s (mode %s), %d frontends adopted", NAME,
                 ",".join(self.opts.devices), self.opts.mode, len(self._image.services))

    def _load(self, for_setup: bool = False) -> None:
        """Compile and open the pinned maps. For the setup, lbn_cfg is created anew (the
        setup writes it whole), and so is a pinned map whose layout an earlier version
        made (its entries are lost: the full sync rewrites services, flows start
        over); a program still attached keeps its maps until its filter is replaced."""
        if self._bpf is not None:
            return
        if bpffs_mount_of(self.opts.bpffs_path) is None:
            if not self.opts.bpffs_path.startswith("/sys/fs/bpf"):
                raise DriverError(NAME, f"{self.opts.bpffs_path} is not on a bpf filesystem")
            subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"], check=True)
        os.makedirs(self.opts.bpffs_path, exist_ok=True)
        if for_setup:
            loader.unpin_maps(self.opts.bpffs_path, ("lbn_cfg", *loader.RETIRED_MAPS))
        for map_name, opt in PINNED_SIZES.items():
            path = os.path.join(self.opts.bpffs_path, map_name)
            if os.path.exists(path):
                have, want = bpfsys.pinned_map_info(path).max_entries, self.opts.sizes[opt]
                if have != want:
                    raise ConfigError(f"driver_options.{opt}: {want}, but the pinned map {path} "
                                      f"holds {have} (use {have}, or `lbcore cleanup` first)")
        bpf = loader.compile_program(self.opts.bpffs_path, self.opts.macros())
        stale = loader.stale_layouts(bpf, self.opts.bpffs_path)
        if stale:
            bpf.cleanup()
            if not for_setup:
                raise DriverError(NAME, f"pinned maps {', '.join(stale)} in "
                                  f"{self.opts.bpffs_path} have another layout (an earlier "
                                  "version): restart the agent, which replaces them")
            log.warning("%s: replacing pinned maps of another layout: %s", NAME,
                        ", ".join(stale))
            loader.unpin_maps(self.opts.bpffs_path, tuple(stale))
            bpf = loader.compile_program(self.opts.bpffs_path, self.opts.macros())
        self._bpf = bpf
        self._maps = KernelMaps(self._bpf)

    def _adopt(self, image: NodePortImage) -> None:
        self._image = image
        self._ids = Allocators.seeded(image, self.opts.sizes["backend_map_max"])

    # ----------------------------------------------------------------- sync

    def sync(self, state: DesiredState, changed: frozenset[ServiceKey] | None) -> SyncResult:
        if self._maps is None:
            raise DriverError(NAME, "sync before setup")
        full = changed is None or self._image is None
        if full:
            self._adopt(self._maps.read_image(self.opts.maglev_table_size))
        assert self._image is not None and self._ids is not None
        mine = [fe for fe in state.frontends if fe.type in NORTH_SOUTH]
        if full:
            wanted = _by_address(mine)
            candidates = set(wanted) | set(self._image.services)
        else:
            assert changed is not None
            wanted = _by_address(fe for k in changed for fe in state.frontends_of(k)
                                 if fe.type in NORTH_SOUTH)
            candidates = {a for k in changed for a in self._synced.get(k, ())} | set(wanted)
        try:
            backend_ids = self._image.backend_ids()
            desired: dict[FrontendAddress, ServiceEntry | None] = {}
            for addr in candidates:
                fe = wanted.get(addr)
                desired[addr] = (render_entry(fe, self.node.name, self._image, self._ids,
                                              backend_ids) if fe else None)
            backends = {bid: addr for addr, bid in backend_ids.items()}
            plan, after = plan_sync(self._image, desired, backends,
                                    dsr_ports(mine, self.node.name),
                                    self.opts.maglev_table_size, prune=full)
            self._check_capacity(after)
            self._maps.apply(plan)
        except IdExhausted:
            self._image = None
            raise CapacityError(NAME, "ids", len(candidates),
                                self.opts.sizes["backend_map_max"], "backend_map_max") from None
        except Exception:
            self._image = None  # the next sync re-reads the kernel
            raise
        for bid in plan.backend_deletes:
            self._ids.backend.release(bid)
        for fe_addr in plan.header_deletes:
            old = self._image.services.get(fe_addr)
            if old:
                self._ids.svc.release(old.svc_id)
        self._image = after
        self._remember(state, mine, changed if not full else None)
        self._flush_stale_flows(plan)
        return SyncResult(full=full, frontends=len(after.services),
                          services_written=plan.services_written,
                          services_removed=plan.services_removed,
                          details={"writes": plan.writes()})

    def _flush_stale_flows(self, plan: Plan) -> None:
        """Flows to a backend that left a frontend would keep it: drop their entries."""
        if not plan.removed_pairs or self._maps is None:
            return
        try:
            count = ConntrackTable(self._maps.ct).flush_backends(plan.removed_pairs,
                                                                 self.opts.ct_flush_tcp)
        except (OSError, DriverError) as exc:  # the maps are right; stale flows expire
            log.warning("%s: flushing flows of removed backends failed: %s", NAME, exc)
            return
        if count:
            log.info("%s: dropped %d conntrack entries of removed backends", NAME, count)

    def map_pressure(self) -> dict[str, tuple[int, int]]:
        """(entries in use, max entries) per BPF map, read from the kernel."""
        self._load()
        assert self._maps is not None
        return self._maps.pressure()

    def _check_capacity(self, after: NodePortImage) -> None:
        sizes = self.opts.sizes
        needs = (("service slots", sum(1 + len(e.slots) for e in after.services.values()),
                  "service_map_max"),
                 ("backends", len(after.backends), "backend_map_max"),
                 ("maglev slots", sum(len(t) for t in after.maglev.values()), "maglev_map_max"))
        for what, needed, opt in needs:
            if needed > sizes[opt]:
                raise CapacityError(NAME, what, needed, sizes[opt], opt)

    def _remember(self, state: DesiredState, mine: list[Frontend],
                  changed: frozenset[ServiceKey] | None) -> None:
        if changed is None:
            self._synced = {}
            for fe in mine:
                self._synced.setdefault(fe.service, ())
                self._synced[fe.service] += (fe.address,)
            return
        for key in changed:
            addrs = tuple(fe.address for fe in state.frontends_of(key) if fe.type in NORTH_SOUTH)
            if addrs:
                self._synced[key] = addrs
            else:
                self._synced.pop(key, None)

    # ------------------------------------------------------------- read back

    def dump(self) -> list[FrontendState]:
        if self._bpf is None and not os.path.exists(
                os.path.join(self.opts.bpffs_path, "lbn_svc")):
            return []
        self._load()
        assert self._maps is not None
        return frontend_states(self._maps.read_image(self.opts.maglev_table_size))

    def flows(self) -> list[Flow]:
        self._load()
        assert self._maps is not None
        return ConntrackTable(self._maps.ct).flows()

    def attachments(self) -> dict[str, list[str]]:
        return loader.attachments(list(self.opts.devices), self.opts.netns)

    # --------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        detached = loader.detach(list(self.opts.devices), self.opts.netns)
        self.close()
        removed = loader.unpin_maps(self.opts.bpffs_path)
        log.info("%s: detached %d filters, unpinned %d maps", NAME, detached, len(removed))

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
        self._bpf = self._maps = None


def _by_address(frontends: Iterable[Frontend]) -> dict[FrontendAddress, Frontend]:
    index: dict[FrontendAddress, Frontend] = {}
    for fe in frontends:
        index.setdefault(fe.address, fe)
    return index


def frontend_states(image: NodePortImage) -> list[FrontendState]:
    rows = []
    for e in image.services.values():
        bes = tuple(BackendState(image.backends[b].ip, image.backends[b].port, "active")
                    if b in image.backends else BackendState("?", 0, "missing")
                    for b in e.slots)
        flags = tuple(f for f, on in (("maglev", e.maglev), ("etp-local", e.flags & 2),
                                      ("source-ranges", bool(e.source_ranges))) if on)
        rows.append(FrontendState(e.svc_id, e.frontend, e.type.value, bes, flags=flags))
    return sorted(rows, key=lambda r: r.id)


__all__ = ["BackendAddr", "TcNodePortDriver"]
