"""``lbcore conformance --driver NAME [-k SCENARIO] [--json] [--list]``."""

from __future__ import annotations

import json

import click

from .model import Result, Status

MARK = {Status.PASS: "PASS", Status.FAIL: "FAIL", Status.SKIP: "SKIP"}


@click.command()
@click.option("--driver", "driver", required=False, help="an installed lbcore.drivers name")
@click.option("-k", "keyword", default=None, help="only scenarios matching (substring or glob)")
@click.option("--json", "as_json", is_flag=True, help="one JSON document with every result")
@click.option("--list", "list_only", is_flag=True, help="list the scenarios and their needs")
def conformance(driver: str | None, keyword: str | None, as_json: bool, list_only: bool) -> None:
    """Run the Kubernetes Service conformance scenarios against a driver (root; builds a
    namespace cluster). Exit status 1 if any scenario failed."""
    from .runner import run_conformance, select, summary

    if list_only:
        for sc in select(keyword):
            click.echo(f"{sc.name:28} {sc.title}")
        return
    if not driver:
        raise click.UsageError("--driver NAME is required (see `lbcore drivers`)")

    def show(r: Result) -> None:
        if not as_json:
            click.echo(f"{MARK[r.status]}  {r.scenario:28} {r.seconds:5.1f}s  {r.detail}")

    results = run_conformance(driver, keyword, on_result=show)
    counts = summary(results)
    if as_json:
        click.echo(json.dumps({"driver": driver, "summary": counts,
                               "results": [r.to_json() for r in results]}, indent=2))
    else:
        click.echo(f"{driver}: {counts['pass']} passed, {counts['fail']} failed, "
                   f"{counts['skip']} skipped (capability not claimed)")
    if counts["fail"]:
        raise SystemExit(1)
