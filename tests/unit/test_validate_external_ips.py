"""The externalIPs allowlist (CVE-2020-8554): ``external_ips: {allowed_cidrs: [...]}``.

Modelled on Kubernetes' own mitigations: the DenyServiceExternalIPs admission plugin
(``allowed_cidrs: []``) and the externalip-webhook (an allowlist of CIDRs). A Service
that claims an address outside the list is not programmed at all and is reported like
every skipped service.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from lbcore.cli import CliEnv, cli
from lbcore.clock import FakeClock
from lbcore.config import parse_config
from lbcore.errors import ConfigError
from lbcore.expand import ExternalIPPolicy, expand
from lbcore.loop import Agent
from lbcore.model import FrontendType, NodeInfo
from lbcore.plugins import GuardedDriver
from lbcore.testing import FakeDriver, MemorySource, cluster, endpoint_slice, service

NODE = NodeInfo("node-a", ("172.18.0.2",))
ALLOWED = replace(service("allowed", "10.96.0.10"), external_ips=("192.0.2.7",))
HIJACK = replace(service("hijack", "10.96.0.11"), external_ips=("192.0.2.8", "198.51.100.7"))
PLAIN = service("plain", "10.96.0.12")
OBJECTS = cluster([ALLOWED, HIJACK, PLAIN],
                  [endpoint_slice(s, ["10.0.1.5"]) for s in (ALLOWED, HIJACK, PLAIN)])


def policy(*cidrs: str) -> ExternalIPPolicy:
    config = parse_config({"driver": "fake", "external_ips": {"allowed_cidrs": list(cidrs)}},
                          Path("lbcore.yaml"))
    assert config.external_ips is not None
    return config.external_ips


# ------------------------------------------------------------------ config


def test_absent_means_every_external_ip_is_programmed():
    assert parse_config({"driver": "fake"}, Path("lbcore.yaml")).external_ips is None
    state = expand(OBJECTS, NODE)
    assert {fe.ip for fe in state.frontends if fe.type is FrontendType.EXTERNAL_IP} == {
        "192.0.2.7", "192.0.2.8", "198.51.100.7"}


def test_allowed_cidrs_are_parsed_and_deduplicated():
    p = policy("192.0.2.0/24", "2001:db8::/64", "192.0.2.0/24", "198.51.100.7/32")
    assert [str(n) for n in p.allowed] == ["192.0.2.0/24", "2001:db8::/64", "198.51.100.7/32"]
    assert policy().allowed == ()


@pytest.mark.parametrize("raw, key, valid", [
    ([], "external_ips", "a mapping with allowed_cidrs"),
    ({"allowed": []}, "external_ips.allowed", "allowed_cidrs"),
    ({}, "external_ips.allowed_cidrs", "a list of CIDRs"),
    ({"allowed_cidrs": "192.0.2.0/24"}, "external_ips.allowed_cidrs", "a list of CIDRs"),
    ({"allowed_cidrs": ["192.0.2.7"]}, "external_ips.allowed_cidrs[0]", "192.0.2.7/32"),
    ({"allowed_cidrs": ["192.0.2.0/24", "10.0.0.0/33"]}, "external_ips.allowed_cidrs[1]",
     "a CIDR"),
    ({"allowed_cidrs": ["192.0.2.7/24"]}, "external_ips.allowed_cidrs[0]",
     "192.0.2.0/24, or 192.0.2.7/32"),
    ({"allowed_cidrs": [24]}, "external_ips.allowed_cidrs[0]", "a CIDR"),
])
def test_bad_allowlist_names_the_key_and_what_is_valid(raw, key, valid):
    with pytest.raises(ConfigError) as info:
        parse_config({"driver": "fake", "external_ips": raw}, Path("lbcore.yaml"))
    text = str(info.value)
    assert text.startswith(f"lbcore.yaml: {key}: "), text
    assert valid in text


# ---------------------------------------------------------------- expansion


def test_a_service_outside_the_allowlist_is_not_programmed_at_all():
    state = expand(OBJECTS, NODE, external_ips=policy("192.0.2.0/24"))
    assert {fe.service.name for fe in state.frontends} == {"allowed", "plain"}
    assert {fe.ip for fe in state.frontends if fe.type is FrontendType.EXTERNAL_IP} == {
        "192.0.2.7"}
    [skip] = state.skipped
    assert skip.service == HIJACK.key and skip.frontend is None
    assert skip.reason == ("externalIP 198.51.100.7 outside external_ips.allowed_cidrs "
                           "(192.0.2.0/24) (CVE-2020-8554)")


def test_an_empty_allowlist_denies_every_external_ip():
    state = expand(OBJECTS, NODE, external_ips=policy())
    assert {fe.service.name for fe in state.frontends} == {"plain"}
    reasons = {s.service.name: s.reason for s in state.skipped}
    assert reasons["allowed"].startswith("externalIP 192.0.2.7 refused: "
                                         "external_ips.allowed_cidrs is empty")
    assert reasons["hijack"].startswith("externalIPs 192.0.2.8, 198.51.100.7 refused")


def test_single_address_entries_and_ipv6():
    v6 = replace(service("v6", "fd00::10"), external_ips=("2001:db8::7",))
    objects = cluster([v6, ALLOWED], [endpoint_slice(v6, ["fd00:244::5"])])
    state = expand(objects, NODE, external_ips=policy("2001:db8::7/128"))
    assert {fe.service.name for fe in state.frontends} == {"v6"}
    assert [s.service.name for s in state.skipped] == ["allowed"]


# ------------------------------------------------------------ agent and CLI


def test_the_agent_reports_the_refused_service_and_never_hands_it_to_the_driver(caplog):
    config = replace(parse_config({"driver": "fake", "node": {"name": "node-a",
                                                              "addresses": ["172.18.0.2"]},
                                   "external_ips": {"allowed_cidrs": ["192.0.2.0/24"]}},
                                  Path("lbcore.yaml")))
    driver = FakeDriver({}, NODE)
    agent = Agent(config, GuardedDriver(driver), MemorySource(OBJECTS), clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="lbcore.loop"):
        outcome = agent.sync_once()
    [(state, _)] = driver.syncs
    assert HIJACK.key not in {fe.service for fe in state.frontends}
    assert [s.service for s in outcome.state.skipped] == [HIJACK.key]
    assert "not programming default/hijack: externalIP 198.51.100.7 outside" in caplog.text
    assert agent.metrics.skipped_frontends == 1


def test_sync_dry_run_lists_the_refused_service(tmp_path):
    path = tmp_path / "lbcore.yaml"
    path.write_text("driver: fake\nnode: {name: node-a, addresses: [172.18.0.2]}\n"
                    "external_ips: {allowed_cidrs: [192.0.2.0/24]}\n")
    env = CliEnv(driver_factory=lambda cfg: GuardedDriver(FakeDriver({}, NODE)),
                 source_factory=lambda cfg: MemorySource(OBJECTS))
    result = CliRunner().invoke(cli, ["sync", "--dry-run", "-c", str(path)], obj=env)
    assert result.exit_code == 0, result.output
    assert "default/hijack" in result.output and "198.51.100.7" in result.output
    assert "CVE-2020-8554" in result.output
