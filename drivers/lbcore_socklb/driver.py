"""The socket-LB driver: Cilium-style service translation in cgroup socket hooks."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from lbcore.driver import Capabilities, Driver, Problem, SyncResult, option, reject_unknown_options
from lbcore.errors import CapacityError, ConfigError, DriverError
from lbcore.memory import gc_paused
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

from . import bpfsys, loader
from .ids import IdExhausted
from .image import Allocators, MapImage, ServiceEntry, render_entry
from .maps import KernelMaps
from .plan import Plan, plan_sync
from .sockdiag import Target, destroy_connected

log = logging.getLogger(__name__)
NAME = "socklb"

# option name -> (C macro, default). Sized for 10,000 services x 10 backends.
MAP_SIZE_OPTIONS = {
    "service_map_max": ("LB_SERVICE_MAP_MAX", 262144),
    "backend_map_max": ("LB_BACKEND_MAP_MAX", 131072),
    "revnat_map_max": ("LB_REVNAT_MAP_MAX", 65535),
    "sock_revnat_map_max": ("LB_SOCK_REVNAT_MAP_MAX", 262144),
    "affinity_map_max": ("LB_AFFINITY_MAP_MAX", 65536),
}
PINNED_SIZES = {  # pinned map -> option sizing it
    "lbc_svc": "service_map_max",
    "lbc_backends": "backend_map_max",
    "lbc_revnat": "revnat_map_max",
    "lbc_sk_revnat": "sock_revnat_map_max",
    "lbc_affinity": "affinity_map_max",
    "lbc_aff_match": "backend_map_max",
}
BPFFS_DEFAULT = "/sys/fs/bpf"


@dataclass(frozen=True)
class SockLBOptions:
    cgroup_path: str
    bpffs_path: str
    map_sizes: Mapping[str, int]
    mount_bpffs: bool
    destroy_tcp_sockets: bool = False  # connected UDP sockets are always destroyed

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> SockLBOptions:
        reject_unknown_options(
            options, NAME,
            {"cgroup_path", "bpffs_path", "mount_bpffs", "destroy_tcp_sockets", *MAP_SIZE_OPTIONS}
        )
        cgroup_path = option(options, NAME, "cgroup_path", str, "")
        if not cgroup_path or not os.path.isabs(cgroup_path):
            raise ConfigError(
                f"driver_options.cgroup_path: {cgroup_path!r} (driver {NAME}; valid: the "
                "absolute path of a cgroup v2 directory whose processes are load-balanced, "
                "e.g. /sys/fs/cgroup/unified/lbcore)"
            )
        bpffs_path = option(options, NAME, "bpffs_path", str, f"{BPFFS_DEFAULT}/lbcore")
        if not os.path.isabs(bpffs_path):
            raise ConfigError(f"driver_options.bpffs_path: {bpffs_path!r} is not absolute")
        sizes = {
            name: option(options, NAME, name, int, default, minimum=16, maximum=1 << 24)
            for name, (_, default) in MAP_SIZE_OPTIONS.items()
        }
        sizes["revnat_map_max"] = min(sizes["revnat_map_max"], 65535)
        mount = option(options, NAME, "mount_bpffs", bool, True)
        destroy_tcp = option(options, NAME, "destroy_tcp_sockets", bool, False)
        return cls(os.path.normpath(cgroup_path), os.path.normpath(bpffs_path), sizes, mount,
                   destroy_tcp)

    def macros(self) -> dict[str, int]:
        return {MAP_SIZE_OPTIONS[name][0]: value for name, value in self.map_sizes.items()}


class SockLBDriver(Driver):
    """Translate service frontends to backends inside connect()/sendmsg(), per socket."""

    name: ClassVar[str] = NAME

    def __init__(self, options: Mapping[str, Any], node: NodeInfo) -> None:
        super().__init__(options, node)
        self.opts = SockLBOptions.parse(options)
        self._bpf: Any = None
        self._maps: KernelMaps | None = None
        self._image: MapImage | None = None  # mirror of the maps after the last good sync
        self._ids: Allocators | None = None
        self._synced: dict[ServiceKey, tuple[FrontendAddress, ...]] = {}

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            protocols=frozenset({"TCP", "UDP"}),
            families=frozenset({4, 6}),
            session_affinity=True,
            source_ranges=False,
            external_traffic_local=False,  # serves in-cluster sockets only
            internal_traffic_local=True,
            # Consistent hashing matters for per-packet north-south balancing; a socket
            # picks its backend once, at connect(), so maglev services are balanced at
            # random here, as Cilium's socket-LB does for east-west traffic.
            algorithms=frozenset({"random", "maglev"}),
            description="eBPF on cgroup v2 socket hooks: connect, sendmsg/recvmsg, getpeername",
        )

    # ------------------------------------------------------------ preflight

    def check(self) -> list[Problem]:
        problems = []
        if os.geteuid() != 0:
            problems.append(Problem("permissions", "not running as root",
                                    "run as root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"))
        try:
            self._check_cgroup()
        except DriverError as exc:
            problems.append(Problem("cgroup", str(exc), "create the cgroup v2 directory, "
                                    "e.g. mkdir /sys/fs/cgroup/unified/lbcore"))
        if loader.bpffs_mount_of(self.opts.bpffs_path) is None:
            fixable = self.opts.mount_bpffs and self._may_mount_default_bpffs()
            problems.append(Problem(
                "bpffs", f"{self.opts.bpffs_path} is not on a bpf filesystem",
                "lbcore mounts it on setup" if fixable else "mount -t bpf bpf /sys/fs/bpf",
                fatal=not fixable))
        build = f"/lib/modules/{os.uname().release}/build"
        if not os.path.isdir(build):
            problems.append(Problem("kernel headers", f"{build} is missing (bcc needs it)",
                                    "make setup (installs linux-headers and the links)"))
        try:
            import bcc  # noqa: F401
        except ImportError:
            problems.append(Problem("bcc", "python module bcc is not importable",
                                    "make setup (apt python3-bpfcc, linked into the venv)"))
        return problems

    def _check_cgroup(self) -> None:
        path = os.path.realpath(self.opts.cgroup_path)
        if not os.path.isfile(os.path.join(path, "cgroup.procs")):
            raise DriverError(NAME, f"cgroup_path {path} is not a cgroup directory")
        mount = loader.mount_of(path, "cgroup2")
        if mount is None:
            raise DriverError(NAME, f"cgroup_path {path} is not on a cgroup v2 filesystem")
        if os.path.realpath(mount) == path:
            raise DriverError(NAME, f"cgroup_path {path} is a cgroup v2 root; lbcore never "
                              "attaches to a root cgroup (use a sub-directory)")

    def _may_mount_default_bpffs(self) -> bool:
        return (self.opts.bpffs_path + "/").startswith(BPFFS_DEFAULT + "/")

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        self._check_cgroup()
        self._load()
        assert self._maps is not None
        image, stray = self._maps.read_image()
        if stray:
            log.info("socklb: removing %d slots left by an interrupted sync", len(stray))
            self._maps.delete_slots(stray)
        self._adopt(image)
        loader.attach_all(self._bpf, self.opts.cgroup_path)
        log.info("socklb: attached to %s, maps in %s (%d frontends adopted)",
                 self.opts.cgroup_path, self.opts.bpffs_path, len(image.services))

    def _load(self) -> None:
        if self._bpf is not None:
            return
        self._ensure_bpffs()
        self._check_pinned_sizes()
        self._bpf = loader.compile_program(self.opts.bpffs_path, self.opts.macros())
        self._maps = KernelMaps(self._bpf)

    def _ensure_bpffs(self) -> None:
        # bpffs_path may be a directory on a bpffs or a bpffs mount point itself.
        if loader.bpffs_mount_of(self.opts.bpffs_path) is None:
            if not (self.opts.mount_bpffs and self._may_mount_default_bpffs()):
                raise DriverError(NAME, f"{self.opts.bpffs_path} is not on a bpf filesystem; "
                                  "mount one: mount -t bpf bpf /sys/fs/bpf")
            os.makedirs(BPFFS_DEFAULT, exist_ok=True)
            subprocess.run(["mount", "-t", "bpf", "bpf", BPFFS_DEFAULT], check=True)
        os.makedirs(self.opts.bpffs_path, exist_ok=True)

    def _check_pinned_sizes(self) -> None:
        """A pinned map keeps the size it was created with: say so instead of misbehaving."""
        for map_name, opt in PINNED_SIZES.items():
            path = os.path.join(self.opts.bpffs_path, map_name)
            if not os.path.exists(path):
                continue
            try:
                info = bpfsys.pinned_map_info(path)
            except OSError as exc:
                raise DriverError(NAME, f"cannot open pinned map {path}: {exc}") from None
            wanted = self.opts.map_sizes[opt]
            if info.max_entries != wanted:
                raise ConfigError(
                    f"driver_options.{opt}: {wanted}, but the pinned map {path} holds "
                    f"{info.max_entries} entries (valid: {info.max_entries}, or run "
                    "`lbcore cleanup` to recreate the maps, which drops their state)"
                )

    def _adopt(self, image: MapImage) -> None:
        self._image = image
        self._ids = Allocators.seeded(image, self.opts.map_sizes["backend_map_max"])

    # ----------------------------------------------------------------- sync

    def sync(self, state: DesiredState, changed: frozenset[ServiceKey] | None) -> SyncResult:
        # A full sync allocates ~10 objects per backend, all long-lived: left on,
        # the cyclic GC would run repeated full collections over them and find nothing.
        with gc_paused():
            return self._sync(state, changed)

    def _sync(self, state: DesiredState, changed: frozenset[ServiceKey] | None) -> SyncResult:
        if self._maps is None:
            raise DriverError(NAME, "sync before setup")
        full = changed is None or self._image is None
        if full:
            image, stray = self._maps.read_image()  # reconcile against the kernel
            self._maps.delete_slots(stray)
            self._adopt(image)
        assert self._image is not None and self._ids is not None
        if full:
            wanted = _index_by_address(state.frontends)
            candidates = set(wanted) | set(self._image.services)
        else:
            assert changed is not None
            wanted = _index_by_address(fe for k in changed for fe in state.frontends_of(k))
            candidates = {a for k in changed for a in self._synced.get(k, ())} | set(wanted)
            orphaned = candidates - set(wanted)
            if orphaned:  # rare: an unchanged service may claim an address a changed one left
                wanted.update(_index_by_address(
                    fe for fe in state.frontends if fe.address in orphaned))
        try:
            plan, after = self._plan(candidates, wanted, prune=full)
            self._check_capacity(plan, after)
            self._maps.apply(plan)
        except Exception:
            self._image = None  # next sync re-reads the kernel and re-seeds the ids
            raise
        self._commit(plan, after, state, changed if not full else None)
        return SyncResult(full=full, frontends=len(after.services),
                          services_written=plan.services_written,
                          services_removed=plan.services_removed,
                          details={"writes": plan.writes()})

    def _plan(
        self, candidates: set[FrontendAddress], wanted: Mapping[FrontendAddress, Frontend],
        *, prune: bool,
    ) -> tuple[Plan, MapImage]:
        assert self._image is not None and self._ids is not None
        pending: dict[Any, int] = {}
        desired: dict[FrontendAddress, ServiceEntry | None] = {}
        try:
            for addr in candidates:
                fe = wanted.get(addr)
                desired[addr] = render_entry(fe, self._image, self._ids, pending) if fe else None
        except IdExhausted:
            option_name = "backend_map_max" if pending else "revnat_map_max"
            raise CapacityError(NAME, "id allocation", len(wanted),
                                self.opts.map_sizes[option_name], option_name) from None
        # Partial syncs update the mirror in place (copying 100k entries costs more
        # than the sync); if anything fails, the mirror is dropped and re-read.
        return plan_sync(self._image, desired, pending, prune_orphans=prune, in_place=not prune)

    def _check_capacity(self, plan: Plan, after: MapImage) -> None:
        assert self._image is not None
        sizes = self.opts.map_sizes
        needs = (
            ("service slots", after.slot_count + plan.slot_overshoot, "service_map_max"),
            ("backends", len(self._image.backends) + len(plan.backend_puts), "backend_map_max"),
            ("frontends", len(self._image.revnat) + len(plan.revnat_puts), "revnat_map_max"),
        )
        for what, needed, opt in needs:
            if needed > sizes[opt]:
                raise CapacityError(NAME, what, needed, sizes[opt], opt)

    def _commit(self, plan: Plan, after: MapImage, state: DesiredState,
                changed: frozenset[ServiceKey] | None) -> None:
        assert self._ids is not None
        for rid in plan.revnat_deletes:
            self._ids.revnat.release(rid)
        for bid in plan.backend_deletes:
            self._ids.backend.release(bid)
        self._image = after
        self._destroy_stale_sockets(plan)
        if changed is None:
            self._synced = {k: tuple(fe.address for fe in fes)
                            for k, fes in state.services.items()}
            return
        for key in changed:
            frontends = state.frontends_of(key)
            if frontends:
                self._synced[key] = tuple(fe.address for fe in frontends)
            else:
                self._synced.pop(key, None)

    def _destroy_stale_sockets(self, plan: Plan) -> None:
        """Sockets connected to a backend that left the maps would keep using it."""
        targets = [Target(b.ip, b.port, b.protocol) for b in plan.removed_backends
                   if b.protocol == "UDP" or self.opts.destroy_tcp_sockets]
        if not targets:
            return
        try:
            count = destroy_connected(self.opts.cgroup_path, targets)
        except OSError as exc:  # the maps are right; stale sockets are best effort
            log.warning("socklb: destroying sockets of removed backends failed: %s", exc)
            return
        if count:
            log.info("socklb: destroyed %d socket(s) connected to removed backends", count)

    # ------------------------------------------------------------- read back

    def dump(self) -> list[FrontendState]:
        # A read-only command must not create what `cleanup` removed: no pinned
        # service map means nothing is programmed.
        if self._bpf is None and not os.path.exists(
                os.path.join(self.opts.bpffs_path, "lbc_svc")):
            return []
        self._load()
        assert self._maps is not None
        image, _ = self._maps.read_image()
        return frontend_states(image)

    def map_pressure(self) -> dict[str, tuple[int, int]]:
        """Entries in use and capacity of each pinned map, counted by the kernel
        (opened by pin: safe from the metrics thread while a sync runs)."""
        pressure = {}
        for name in loader.MAP_NAMES:
            path = os.path.join(self.opts.bpffs_path, name)
            try:
                pressure[name] = bpfsys.pinned_map_usage(path)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue  # not created yet, or removed by cleanup
                raise DriverError(NAME, f"counting the entries of {path}: {exc}") from None
        return pressure

    def attachments(self) -> dict[str, list[str]]:
        return {label: [p.name for p in progs]
                for label, progs in loader.attachments(self.opts.cgroup_path).items()}

    # --------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        detached = 0
        if os.path.isdir(self.opts.cgroup_path):
            detached = loader.detach_all(self.opts.cgroup_path)
        removed = loader.unpin_maps(self.opts.bpffs_path)
        log.info("socklb: detached %d programs, unpinned %d maps", detached, len(removed))
        self.close()

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
        self._bpf = self._maps = None


def _index_by_address(frontends: Iterable[Frontend]) -> dict[FrontendAddress, Frontend]:
    index: dict[FrontendAddress, Frontend] = {}
    for fe in frontends:
        if fe.address in index:
            log.warning("socklb: %s is claimed by %s and %s; keeping the first",
                        fe.address, index[fe.address].service_port, fe.service_port)
            continue
        index[fe.address] = fe
    return index


def frontend_states(image: MapImage) -> list[FrontendState]:
    """Read-back image -> the rows of `lbcore services`, ordered by id."""
    rows = []
    for entry in image.services.values():
        backends = tuple(
            BackendState(image.backends[s.backend_id].ip, image.backends[s.backend_id].port,
                         s.condition.value)
            if s.backend_id in image.backends else BackendState("?", 0, "missing")
            for s in entry.slots
        )
        flags = (f"affinity={entry.affinity_timeout}s",) if entry.affinity_timeout else ()
        rows.append(FrontendState(entry.rev_nat_id, entry.frontend, entry.type.value, backends,
                                  flags=flags))
    return sorted(rows, key=lambda r: r.id)


__all__ = ["FrontendType", "SockLBDriver", "SockLBOptions"]
