"""``lbcore``: the command line.

Everything a command needs from the outside world comes from a ``CliEnv`` (click's
``ctx.obj``): how to build the driver and the source, how to expand, which host to
probe, which clock. ``main()`` uses the real ones; tests pass their own::

    CliRunner().invoke(cli, ["sync", "-c", path], obj=CliEnv(driver_factory=fake))

Errors: an ``LBCoreError`` anywhere becomes one ``error: ...`` message on stderr and
exit status 1; the traceback is printed only with ``--debug``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from . import __version__, output
from .clock import Clock, SystemClock
from .config import Config, load_config
from .doctor import CheckResult, HostProbe, any_fatal, generic_checks
from .errors import LBCoreError
from .loop import Agent, ExpandFn, default_expand
from .plugins import (
    DRIVERS,
    SOURCES,
    GuardedDriver,
    PluginRegistry,
    create_driver,
    create_source,
)
from .sources.base import Source

LOG = logging.getLogger("lbcore")
DEFAULT_CONFIG = "lbcore.yaml"


@dataclass
class CliEnv:
    """The CLI's injectable dependencies. ``None`` factories mean: load plugins."""

    debug: bool = False
    driver_factory: Callable[[Config], GuardedDriver] | None = None
    source_factory: Callable[[Config], Source] | None = None
    driver_registry: Callable[[], PluginRegistry] = field(
        default=lambda: PluginRegistry(DRIVERS)
    )
    source_registry: Callable[[], PluginRegistry] = field(
        default=lambda: PluginRegistry(SOURCES)
    )
    expand: ExpandFn = default_expand
    host: HostProbe = field(default_factory=HostProbe)
    clock: Clock = field(default_factory=SystemClock)

    def make_driver(self, config: Config) -> GuardedDriver:
        if self.driver_factory is not None:
            return self.driver_factory(config)
        driver = create_driver(config, self.driver_registry())
        follow_logs(type(driver.inner).__module__)
        return driver

    def make_source(self, config: Config) -> Source:
        if self.source_factory is not None:
            return self.source_factory(config)
        return create_source(config, self.source_registry())

    def make_agent(self, config: Config, *, log_skips: bool = True,
                   driver: GuardedDriver | None = None) -> Agent:
        return Agent(config, driver or self.make_driver(config), self.make_source(config),
                     clock=self.clock, expand=self.expand, log_skips=log_skips,
                     driver_factory=self.make_driver)


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Logs to whatever ``sys.stderr`` is at emit time (CliRunner swaps it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(verbose: int, debug: bool) -> None:
    """lbcore's messages at the level asked for; drivers' too (``follow_logs``);
    other libraries' warnings only. One handler, on the root logger."""
    root = logging.getLogger()
    for handler in list(root.handlers) + list(logging.getLogger("lbcore").handlers):
        if isinstance(handler, _CurrentStderr):
            root.removeHandler(handler)
            logging.getLogger("lbcore").removeHandler(handler)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    logger = logging.getLogger("lbcore")
    logger.propagate = True
    if debug or verbose >= 2:
        logger.setLevel(logging.DEBUG)
    elif verbose == 1:
        logger.setLevel(logging.INFO)
    else:
        logger.setLevel(logging.WARNING)
    for name in _FOLLOWED:
        logging.getLogger(name).setLevel(logger.level)


_FOLLOWED: set[str] = set()


def follow_logs(module: str) -> None:
    """A plugin's logger (its top-level package) logs at lbcore's level."""
    top = module.split(".", 1)[0]
    if top != "lbcore":
        _FOLLOWED.add(top)
        logging.getLogger(top).setLevel(logging.getLogger("lbcore").level)


class LBCoreGroup(click.Group):
    """Turns ``LBCoreError`` into one message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LBCoreError as exc:
            env = ctx.find_object(CliEnv)
            if env is not None and env.debug:
                traceback.print_exc(file=sys.stderr)
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


config_option = click.option(
    "-c", "--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
    type=click.Path(dir_okay=False, path_type=Path), help="lbcore configuration file",
)
output_option = click.option(
    "-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table",
    show_default=True, help="output format",
)


@click.group(cls=LBCoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="debug logging and tracebacks on errors")
@click.option("-v", "--verbose", count=True, help="more logging (-v info, -vv debug)")
@click.version_option(__version__, prog_name="lbcore")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """Kubernetes service load balancing in the Linux kernel."""
    env = ctx.ensure_object(CliEnv)
    env.debug = debug
    setup_logging(verbose, debug)


@cli.command()
@config_option
@click.option("--healthz-bind-address", "healthz_address", metavar="HOST:PORT", default=None,
              help="serve /healthz, /livez and /metrics here (kube-proxy: 0.0.0.0:10256)")
@click.pass_obj
def run(env: CliEnv, config_path: Path, healthz_address: str | None) -> None:
    """Sync, then follow the source. SIGTERM/SIGINT stop it and leave the datapath
    in place; SIGHUP re-reads the source. A new `driver:` in the config file switches
    the datapath live (new one up and verified, then the old one removed)."""
    from .health import HealthServer, parse_bind_address

    config = load_config(config_path)
    address = parse_bind_address(healthz_address) if healthz_address else None
    agent = env.make_agent(config)
    LOG.info("lbcore %s: driver %s, %s", __version__, config.driver, agent.source.describe())
    server = None
    if address is not None:
        server = HealthServer(address, agent.health_status, agent.metrics).start()
    try:
        agent.run(threading.Event())
    finally:
        if server is not None:
            server.close()


@cli.command()
@config_option
@output_option
@click.option("--dry-run", is_flag=True, help="print what would be programmed, change nothing")
@click.pass_obj
def sync(env: CliEnv, config_path: Path, fmt: str, dry_run: bool) -> None:
    """Program the datapath once (a full sync), then exit."""
    config = load_config(config_path)
    agent = env.make_agent(config, log_skips=False)  # printed below instead
    outcome = agent.sync_once(dry_run=dry_run)
    state = outcome.state
    if fmt == "json":
        data: dict[str, object] = output.plan_json(state)
        if outcome.result is not None:
            data["synced"] = {"driver": config.driver, "frontends": outcome.result.frontends}
        click.echo(output.dumps(data))
        return
    console = output.make_console()
    if dry_run:
        output.print_table(console, output.frontends_table(output.desired_frontend_states(state)))
    else:
        assert outcome.result is not None
        console.print(
            f"synced {outcome.result.frontends} frontend(s) with driver {config.driver}",
            markup=False,
        )
    if state.skipped:
        console.print()
        output.print_table(console, output.skipped_table(state.skipped))


@cli.command()
@config_option
@output_option
@click.pass_obj
def services(env: CliEnv, config_path: Path, fmt: str) -> None:
    """What the datapath holds now, read back from the kernel."""
    config = load_config(config_path)
    driver = env.make_driver(config)
    frontends = driver.dump()
    if fmt == "json":
        click.echo(output.dumps(output.frontends_json(frontends)))
        return
    console = output.make_console()
    output.print_table(console, output.frontends_table(frontends))
    skipped = _skipped_from_config(env, config, driver)
    if skipped:
        console.print()
        output.print_table(console, output.skipped_table(skipped))


def _skipped_from_config(env: CliEnv, config: Config, driver: GuardedDriver) -> list[Any]:
    """What the configured source asks for but the datapath will not hold, so that
    ``services`` never hides a service. Best effort: an unreadable source is noted."""
    try:
        agent = env.make_agent(config, log_skips=False, driver=driver)
        return list(agent.sync_once(dry_run=True).state.skipped)
    except LBCoreError as exc:
        LOG.warning("cannot list skipped services from the source: %s", exc)
        return []


@cli.command()
@config_option
@output_option
@click.pass_obj
def drivers(env: CliEnv, config_path: Path, fmt: str) -> None:
    """Installed drivers and their capabilities (* marks the configured one)."""
    configured = None
    if config_path.exists():
        with contextlib.suppress(LBCoreError):
            configured = load_config(config_path).driver
    rows: list[dict[str, Any]] = []
    for info in env.driver_registry().list():
        row: dict[str, Any] = {"name": info.name, "target": info.target,
                               "configured": info.name == configured, "error": info.error}
        if not info.error:
            try:
                row["capabilities"] = GuardedDriver.capabilities_of(info.name, info.plugin)
            except LBCoreError as exc:
                row["error"] = str(exc)
        rows.append(row)
    if fmt == "json":
        click.echo(output.dumps(output.drivers_json(rows)))
    elif not rows:
        click.echo("no drivers installed (entry-point group lbcore.drivers is empty)")
    else:
        output.print_table(output.make_console(), output.drivers_table(rows))


@cli.command()
@config_option
@click.pass_obj
def doctor(env: CliEnv, config_path: Path) -> None:
    """Preflight checks, each with a fix. Exit status 1 if any is fatal."""
    results = generic_checks(env.host)
    results += _config_checks(env, config_path)
    output.print_table(output.make_console(), output.checks_table(results))
    if any_fatal(results):
        raise SystemExit(1)


def _config_checks(env: CliEnv, config_path: Path) -> list[CheckResult]:
    try:
        config = load_config(config_path)
    except LBCoreError as exc:
        return [CheckResult("config", False, str(exc), f"fix {config_path}, see DESIGN.md")]
    results = [CheckResult("config", True, f"{config_path}: driver {config.driver}")]
    try:
        driver = env.make_driver(config)
    except LBCoreError as exc:
        fix = "pip install the driver's distribution, see `lbcore drivers`"
        return [*results, CheckResult("driver", False, str(exc), fix)]
    results.append(CheckResult("driver", True, f"{driver.name} loaded"))
    try:
        problems = driver.check()
    except LBCoreError as exc:
        problems = []
        results.append(CheckResult(f"{driver.name}: check", False, str(exc)))
    results += [CheckResult.from_problem(driver.name, p) for p in problems]
    if not problems:
        results.append(CheckResult(f"{driver.name}: check", True, "no problems found"))
    try:
        source = env.make_source(config)
        objects = source.read()
        results.append(CheckResult(
            "source", True,
            f"{source.describe()}: {len(objects.services)} service(s), "
            f"{sum(len(s) for s in objects.slices.values())} EndpointSlice(s)",
        ))
    except LBCoreError as exc:
        results.append(CheckResult("source", False, str(exc), "fix the objects listed"))
    return results


@cli.command()
@config_option
@click.pass_obj
def cleanup(env: CliEnv, config_path: Path) -> None:
    """Remove everything the configured driver created."""
    from . import ctkeep

    config = load_config(config_path)
    driver = env.make_driver(config)
    driver.cleanup()
    click.echo(f"driver {driver.name}: removed everything it created")
    if env.driver_factory is None and ctkeep.release(
            ctkeep.netns_path(config.driver_options.get("netns"))):
        click.echo("removed the conntrack keeper a live driver switch left")


@cli.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def demo(ctx: click.Context, args: tuple[str, ...]) -> None:
    """The socket-LB walkthrough in namespaces, end to end."""
    from .demo import main as demo_main  # lazy: the other commands need no lab

    ctx.exit(demo_main(list(args)))


@cli.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def bench(ctx: click.Context, args: tuple[str, ...]) -> None:
    """A/B benchmark of datapaths on the lab, side by side (see --help)."""
    from .bench import main as bench_main  # lazy: the other commands need no lab

    ctx.exit(bench_main(list(args)))


def _add_lab_commands() -> None:
    from .lab_cli import lab  # click only; the lab's own modules load per command

    cli.add_command(lab)
    from .conformance.cli import conformance  # click only; the suite loads when it runs

    cli.add_command(conformance)


_add_lab_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``lbcore``)."""
    env = CliEnv()
    try:
        cli.main(args=argv, prog_name="lbcore", obj=env)
    except LBCoreError as exc:  # raised outside a command, e.g. while parsing
        if env.debug:
            traceback.print_exc(file=sys.stderr)
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
