"""Live driver switch: a running agent moves its node from one datapath to another.

The user changes ``driver:`` (and ``driver_options:``) in ``lbcore.yaml``; the agent
notices (it checks the file every ``CONFIG_CHECK_INTERVAL`` seconds, and at once on
SIGHUP) and switches in one step, in this order:

1. **up**: the new driver is constructed, set up and given a full sync of the state
   the agent holds, while the old datapath still serves;
2. **verify**: the new driver's read back (``dump``, from the kernel) must hold exactly
   the frontends planned for it; otherwise it is cleaned up and the old one stays;
3. **down**: only then is the old driver's datapath removed (``cleanup``).

Why no connection fails, in either direction between a per-packet datapath
(iptables, nftables) and socket LB (socklb):

* *iptables -> socklb*: from the moment the cgroup hooks are attached, a pod's
  ``connect()`` to a ClusterIP leaves the socket already addressed to a backend, so
  the nat table never sees the ClusterIP and its rules stop mattering; connections
  made before were DNATed by conntrack, and a conntrack entry keeps its NAT binding
  after the rules that created it are deleted, so they live on after step 3 — as
  long as conntrack stays enabled in the namespace, which the kernel turns off when
  the last rule using it goes: step 3 first installs a keeper (:mod:`lbcore.ctkeep`).
* *socklb -> iptables*: the nat rules are complete (step 2) before the hooks are
  detached; until then the hooks translate first and the rules see backend addresses
  only; after, a ``connect()`` to the ClusterIP meets the rules. Sockets connected by
  socklb are connected to a backend address and need no translation at all.
  socklb detaches ``connect``/``sendmsg`` before ``recvmsg``, so a reply to a
  datagram sent through the hooks is still reverse-translated.

What a switch cannot keep: clients the new driver does not serve (socklb serves pods
in its cgroup, not packets arriving from outside); the switch logs which kinds of
client lose service. Only ``driver``/``driver_options`` switch live; a change of
anything else (node, source, runner) is logged and needs a restart.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import ctkeep
from .clock import Clock
from .config import Config, load_config
from .driver import Capabilities
from .errors import ConfigError, DriverError
from .expand import IncrementalExpander
from .model import ClusterObjects, DesiredState, FrontendAddress, FrontendState
from .planning import expander_for
from .plugins import GuardedDriver
from .runner import Backoff

LOG = logging.getLogger(__name__)

CONFIG_CHECK_INTERVAL = 1.0  # seconds between two looks at lbcore.yaml
LIVE_KEYS = ("driver", "driver_options")
RESTART_KEYS = ("node", "source_kind", "source_options", "runner", "service_proxy_name")

Signature = tuple[int, int, int, int] | None


class ConfigFile:
    """Notices that ``lbcore.yaml`` was rewritten (in place, by rename, or by a
    ConfigMap's symlink swap): a ``stat`` signature of what the path resolves to."""

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.path = path
        self.seen = self.signature()

    def signature(self) -> Signature:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def changed(self) -> bool:
        """True once per change of the file (a vanished file is no change: the agent
        keeps what it runs)."""
        now = self.signature()
        if now is None or now == self.seen:
            return False
        self.seen = now
        return True


class ConfigWatch:
    """Applies changes of ``lbcore.yaml`` to a running agent: a new driver switches
    live (``Agent.switch_driver``), anything else is reported as needing a restart.
    An unreadable or invalid file changes nothing. A switch that failed (the new
    datapath could not be brought up, e.g. its tools were locked) is retried with
    backoff for as long as the file asks for it."""

    def __init__(self, path: os.PathLike[str] | str, clock: Clock) -> None:
        self.file = ConfigFile(path)
        self.clock = clock
        self.retry_at: float | None = None
        self.backoff = Backoff(initial=2.0, maximum=60.0)

    def check(self, agent: Any, *, force: bool = False) -> None:
        changed = self.file.changed() or force
        retry = self.retry_at is not None and self.clock.now() >= self.retry_at
        if not (changed or retry):
            return
        try:
            new = load_config(agent.config.path)
        except ConfigError as exc:
            LOG.error("ignoring the changed config: %s", exc)
            return
        change = diff_config(agent.config, new)
        if change.needs_restart and changed:
            LOG.warning("%s: %s changed; restart the agent to apply (running on as before)",
                        agent.config.path, ", ".join(change.needs_restart))
        if change.switch_to is None:
            self.retry_at = None
            return
        if agent.switch_driver(change.switch_to):
            self.retry_at = None
            self.backoff.reset()
        else:
            delay = self.backoff.next()
            self.retry_at = self.clock.now() + delay
            LOG.info("retrying the switch to %s in %.1f s", change.switch_to.driver, delay)


@dataclass(frozen=True)
class ConfigChange:
    switch_to: Config | None  # the config to switch the driver to, or None
    needs_restart: tuple[str, ...]  # keys that changed but are not applied live


def diff_config(running: Config, new: Config) -> ConfigChange:
    """What of ``new`` the agent running ``running`` applies live."""
    restart = tuple(k for k in RESTART_KEYS if getattr(running, k) != getattr(new, k))
    if new.driver == running.driver:
        if dict(new.driver_options) != dict(running.driver_options):
            # Same driver, other options: both instances would own the same hooks,
            # pins or chains, and cleaning up the old one would remove the new one.
            restart += ("driver_options",)
        return ConfigChange(None, restart)
    switched = dataclasses.replace(running, driver=new.driver,
                                   driver_options=dict(new.driver_options))
    return ConfigChange(switched, restart)


@dataclass(frozen=True)
class BroughtUp:
    driver: GuardedDriver
    capabilities: Capabilities
    expander: IncrementalExpander
    state: DesiredState  # what it holds now (verified)
    driver_options: Mapping[str, Any]


def bring_up(config: Config, factory: Callable[[Config], GuardedDriver],
             objects: ClusterObjects | None, old_caps: Capabilities,
             old_name: str) -> BroughtUp:
    """Steps 1 and 2: the new driver set up, fully synced with ``objects`` and verified
    by read back. On any failure what it set up is removed again and the error raised."""
    driver = factory(config)
    caps = driver.capabilities()
    expander = expander_for(config, caps, driver.name)
    lost = lost_clients(old_caps, caps)
    if lost:
        LOG.warning("driver %s does not serve %s clients (%s did): their traffic is no "
                    "longer balanced by lbcore", driver.name, ", ".join(sorted(lost)), old_name)
    state = DesiredState(config.node, ())
    try:
        driver.setup()
        if objects is not None:
            state = expander.expand(objects, None)
            driver.sync(state, None)
            verify(driver.name, driver.dump(), state)
    except Exception:
        try:
            driver.cleanup()
        except Exception as exc:
            LOG.error("removing what %s set up failed: %s", driver.name, exc)
        raise
    return BroughtUp(driver, caps, expander, state, config.driver_options)


def take_down(old: GuardedDriver, old_caps: Capabilities, old_config: Config,
              new: BroughtUp) -> None:
    """Step 3: remove the old datapath. Leaving a conntrack-NAT datapath for one that
    needs no conntrack, conntrack is kept on first (:mod:`lbcore.ctkeep`): the flows
    the old one NATed must keep their translation after its rules are gone. A failure
    leaves both in place (the new one serves first), which is logged with the way out."""
    netns = ctkeep.netns_path(old_config.driver_options.get("netns"))
    if old_caps.conntrack_nat and not new.capabilities.conntrack_nat:
        ctkeep.keep(netns)
    try:
        old.cleanup()
        old.close()
    except Exception as exc:
        LOG.error("removing the %s datapath failed: %s; both are in place now, run "
                  "`lbcore cleanup` with a config naming driver %s", old.name, exc, old.name)
    if new.capabilities.conntrack_nat:  # its own rules use conntrack now
        ctkeep.release(ctkeep.netns_path(new.driver_options.get("netns")))


def lost_clients(old: Capabilities, new: Capabilities) -> frozenset[str]:
    """Kinds of client the old driver served and the new one does not."""
    return old.served_clients() - new.served_clients()


def verify(driver_name: str, held: Iterable[FrontendState], state: DesiredState) -> None:
    """The read back must hold exactly the planned frontends, else ``DriverError``."""
    have = {fe.address for fe in held}
    want = {fe.address for fe in state.frontends}
    if have == want:
        return
    missing, extra = sorted(want - have), sorted(have - want)
    raise DriverError(driver_name, "read back after the switch's full sync does not match "
                      f"the plan: missing {_few(missing)}, unexpected {_few(extra)}")


def _few(addresses: list[FrontendAddress], limit: int = 5) -> str:
    if not addresses:
        return "none"
    shown = ", ".join(str(a) for a in addresses[:limit])
    return shown + (f" and {len(addresses) - limit} more" if len(addresses) > limit else "")
