"""What a driver is asked to hold: the expansion of the objects for this node, with
the frontends the driver's capabilities reject moved to ``skipped`` (reported, never
silently dropped). Pure; shared by the agent and the live switch."""

from __future__ import annotations

from collections.abc import Callable

from .config import Config
from .driver import Capabilities
from .expand import IncrementalExpander
from .model import ClusterObjects, DesiredState, Frontend, NodeInfo, SkippedService

ExpandFn = Callable[..., DesiredState]  # (objects, node, *, service_proxy_name) -> state


def default_expand(
    objects: ClusterObjects, node: NodeInfo, *, service_proxy_name: str | None = None
) -> DesiredState:
    from .expand import expand  # lazy: the CLI's `drivers` need not import conversion

    return expand(objects, node, service_proxy_name=service_proxy_name)


def expander_for(config: Config, caps: Capabilities, driver: str) -> IncrementalExpander:
    """The expansion a driver with ``caps`` gets: unsupported frontends go to
    ``skipped``; per-packet drivers get NodePorts on this node's addresses only."""
    return IncrementalExpander(
        config.node, config.service_proxy_name,
        admit=lambda fe: _refusal(caps, driver, fe),
        local_node_ports=caps.node_ports == "local", external_ips=config.external_ips)


def _refusal(caps: Capabilities, driver: str, fe: Frontend) -> str | None:
    reason = caps.unsupported(fe)
    return None if reason is None else f"driver {driver}: {reason}"


def apply_capabilities(state: DesiredState, caps: Capabilities, driver: str) -> DesiredState:
    """``state`` without the frontends ``caps`` rejects; those move to ``skipped``."""
    kept, skipped = [], list(state.skipped)
    for fe in state.frontends:
        reason = caps.unsupported(fe)
        if reason is None:
            kept.append(fe)
        else:
            skipped.append(SkippedService(fe.service, f"driver {driver}: {reason}", fe.address))
    if len(kept) == len(state.frontends):
        return state
    return DesiredState(state.node, tuple(kept), tuple(skipped))
