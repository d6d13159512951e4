"""``lbcore lab up|down|status|exec``: the namespace cluster from the command line.

``up`` builds the cluster (default: the walkthrough's resources and one socklb agent per
node), saves its state under ``/run/lbt-<id>/`` and leaves it running after it exits;
``status`` and ``exec`` read that state from any process; ``down`` removes kept labs and
the leftovers of killed runs. Ctrl-C or a failure during ``up`` removes what it built.
"""

from __future__ import annotations

import os
import sys

import click

from .lab.procs import NetLabError


def _root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (network namespaces, cgroups, eBPF)")


@click.group()
def lab() -> None:
    """The namespace cluster: nodes, pods, agents (root only)."""


@lab.command()
@click.option("--nodes", default=3, show_default=True, help="control-plane, worker, worker2, ...")
@click.option("--driver", "drivers", multiple=True, default=["socklb"], show_default=True,
              help="agent driver(s) on every node (repeatable)")
@click.option("--no-agents", is_flag=True, help="start no agents")
@click.option("--empty", is_flag=True, help="no workload (no cni pods, serversvc, net)")
def up(nodes: int, drivers: tuple[str, ...], no_agents: bool, empty: bool) -> None:
    """Build the cluster and leave it running (`lbcore lab down` removes it)."""
    _root()
    from .lab import NetLab
    from .lab.agents import start_agents
    from .lab.cluster import Cluster
    from .lab.state import keep, kept_ids
    from .lab.workload import deploy_walkthrough

    if kept_ids():
        raise click.ClickException(f"a lab is up already ({', '.join(kept_ids())}); "
                                   "`lbcore lab down` first")
    netlab = NetLab()
    try:
        cluster = Cluster.create(netlab, nodes)
        if not empty:
            deploy_walkthrough(cluster)
        cluster.controller.write()
        if not no_agents:
            start_agents(cluster, list(drivers))
        keep(cluster)
    except (NetLabError, OSError, ValueError) as exc:
        netlab.close()
        raise click.ClickException(str(exc)) from None
    except BaseException:
        netlab.close()
        raise
    click.echo(f"lab {netlab.id} up: {len(cluster.nodes)} node(s), {len(cluster.pods)} pod(s), "
               f"{len(cluster.agents)} agent(s)")
    _print_status(_load(None))


def _load(lab_id: str | None) -> dict:
    from .lab.state import load

    try:
        return load(lab_id)
    except NetLabError as exc:
        raise click.ClickException(str(exc)) from None


def _print_status(state: dict) -> None:
    from .lab.state import alive

    click.echo(f"lab {state['lab_id']}  (objects: {state['objects']})")
    click.echo(f"{'NODE':<15}{'INTERNAL-IP':<14}{'IPv6':<26}{'POD-CIDR':<14}NETNS")
    for n in state["nodes"]:
        click.echo(f"{n['name']:<15}{n['ipv4']:<14}{n['ipv6']:<26}{n['pod_cidrs'][0]:<14}"
                   f"{n['netns']}")
    click.echo(f"\n{'POD':<12}{'IP':<12}{'IPv6':<18}{'NODE':<15}{'PROCS':<7}LABELS")
    for p in state["pods"]:
        labels = ",".join(f"{k}={v}" for k, v in p["labels"].items())
        procs = sum(1 for pid in p["pids"] if os.path.exists(f"/proc/{pid}"))
        click.echo(f"{p['name']:<12}{p['ipv4']:<12}{p['ipv6']:<18}{p['node']:<15}"
                   f"{procs:<7}{labels}")
    if state["services"]:
        click.echo(f"\n{'SERVICE':<12}{'TYPE':<11}{'CLUSTER-IPS':<32}PORTS")
        for s in state["services"]:
            ports = ",".join(f"{p['port']}:{p['node_port']}/{p['protocol']}" if p["node_port"]
                             else f"{p['port']}/{p['protocol']}" for p in s["ports"])
            click.echo(f"{s['name']:<12}{s['type']:<11}{','.join(s['cluster_ips']):<32}{ports}")
    if state["agents"]:
        click.echo(f"\n{'AGENT':<30}{'PID':<8}{'STATE':<9}CONFIG")
        for a in state["agents"]:
            up_ = "running" if alive(a["pid"], a["starttime"]) else "DEAD"
            click.echo(f"{'lbcore-' + a['driver'] + '-' + a['node']:<30}{a['pid'] or '-'!s:<8}"
                       f"{up_:<9}{a['config']}")


@lab.command()
@click.option("--id", "lab_id", help="lab id (default: the only one up)")
def status(lab_id: str | None) -> None:
    """Nodes, pods, services and agents of the lab that is up."""
    _root()
    _print_status(_load(lab_id))


@lab.command(context_settings={"ignore_unknown_options": True})
@click.option("--id", "lab_id", help="lab id (default: the only one up)")
@click.argument("target")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec(lab_id: str | None, target: str, cmd: tuple[str, ...]) -> None:
    """Run CMD in pod TARGET (its netns and cgroup), or in node TARGET's netns:
    `lbcore lab exec net -- curl -s 172.18.0.3:32000`."""
    _root()
    from .lab.state import run_exec

    try:
        rc = run_exec(_load(lab_id), target, list(cmd))
    except NetLabError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(rc)


@lab.command()
@click.option("--id", "lab_id", help="only this lab (default: every kept lab)")
def down(lab_id: str | None) -> None:
    """Remove the lab(s) that are up, and leftovers of killed runs."""
    _root()
    from .lab.state import down as lab_down

    removed, errors = lab_down(lab_id)
    for e in errors:
        click.echo(f"error: {e}", err=True)
    click.echo(f"removed: {', '.join(removed)}" if removed else "nothing to remove")
    if errors:
        sys.exit(1)
