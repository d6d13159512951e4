"""The namespace lab itself: topology, servers, clients in netns+cgroup, teardown, safety."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from lbcore.lab import (
    CGROUP2_ROOT,
    NETNS_DIR,
    RUN_ROOT,
    NetLab,
    NetLabError,
    build_socklb_lab,
    lab_ids,
    sweep_leftovers,
)

pytestmark = pytest.mark.netns


def _leftovers(lab_id: str) -> list[str]:
    prefix = f"lbt-{lab_id}"
    found = [f"netns {n}" for n in os.listdir(NETNS_DIR) if n.startswith(prefix + "-")]
    if (CGROUP2_ROOT / prefix).exists():
        found.append(f"cgroup {CGROUP2_ROOT / prefix}")
    if (RUN_ROOT / prefix).exists():
        found.append(f"dir {RUN_ROOT / prefix}")
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {ln.split()[4]}" for ln in f if f"/{prefix}/" in ln.split()[4]]
    return found


def _root_netns_view() -> tuple[set[str], str]:
    """Link names, and addresses + routes, of the root network namespace."""

    def ip(*args: str) -> str:
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout

    links = {ln.split(":")[1].strip().split("@")[0] for ln in ip("-o", "link").splitlines()}
    return links, ip("-o", "addr") + ip("-4", "route") + ip("-6", "route")


def _assert_root_namespace_clean(links_before: set[str], lab) -> None:
    links, addrs_routes = _root_netns_view()
    pods = {lab.bridge, *(p.ifname for p in [lab.node, lab.client, *lab.backends])}
    new = links - links_before
    assert not {ln for ln in new if ln in pods or re.match(r"p\d+-", ln)}, new
    assert "10.244.0." not in addrs_routes and "fd00:10:244:" not in addrs_routes


def test_curl_from_client_reaches_each_backend_by_name(lab):
    lab.start_http_backends()
    for b in lab.backends:
        r = lab.curl(f"http://{b.ipv4}/")
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"backend={b.name}\n"
        r = lab.curl(f"http://[{b.ipv6}]/whoami")
        assert r.returncode == 0, r.stderr
        who = json.loads(r.stdout)
        assert who == {
            **who,
            "backend": b.name,
            "client_ip": lab.client.ipv6,
            "local_ip": b.ipv6,
            "local_port": 80,
        }


def test_dig_to_dnsmasq_backend_tells_backends_apart(lab):
    lab.start_dns_backends()
    for b in lab.backends:
        assert lab.dig(b.ipv4).stdout.split() == [f'"backend={b.name}"']
        assert lab.dig(b.ipv6, qtype="AAAA").stdout.split() == [b.ipv6]
        assert lab.dig(b.ipv4, qtype="A", tcp=True).stdout.split() == [b.ipv4]


def test_udp_backend_answers_with_name_and_client_address(lab):
    lab.start_udp_backends(port=5353)
    b = lab.backends[-1]
    r = lab.client_run(["socat", "-t", "0.3", "-", f"UDP:{b.ipv4}:5353"], input="ping\n")
    assert r.stdout.startswith(f"backend={b.name} client={lab.client.ipv4}:"), r
    for connect in (False, True):
        ans = lab.udp_request(b.ipv6, 5353, connect=connect)
        assert ans["reply"].startswith(f"backend={b.name} client={lab.client.ipv6}:")
        assert (ans["from_ip"], ans["from_port"]) == (b.ipv6, 5353)
    assert lab.udp_request(b.ipv4, 5354, timeout=0.5) is None  # nothing listens there


def test_client_runs_in_its_netns_and_cgroup_and_sees_sys_mounts(lab):
    r = lab.client_run(
        [
            "sh",
            "-c",
            f"readlink /proc/self/ns/net; grep '^0::' /proc/self/cgroup; "
            f"stat -f -c %T {lab.bpffs}; test -f {lab.clients_cgroup}/cgroup.procs",
        ],
        check=True,
    )
    netns, cgroup, fstype = r.stdout.split()
    assert netns == f"net:[{lab.client.ns.inode}]"
    assert cgroup == "0::/" + str(lab.clients_cgroup.relative_to(CGROUP2_ROOT))
    assert fstype == "bpf_fs"  # bpffs (and /sys/fs/cgroup) visible: nsenter, not ip netns exec


def test_spawned_server_is_tracked_and_stoppable(lab):
    srv = lab.lab.http_server(lab.node.ns, "node", 8080, cgroup=lab.lab.cgroup("node"))
    assert str(srv.pid) in (lab.lab.cgroup("node") / "cgroup.procs").read_text().split()
    assert lab.curl(f"http://{lab.node.ipv4}:8080/").stdout == "backend=node\n"
    srv.stop()
    assert not srv.alive()
    r = lab.curl(f"http://{lab.node.ipv4}:8080/", timeout=2)
    assert r.returncode != 0  # connection refused


def test_nginx_backend(netlab):
    lab = build_socklb_lab(netlab, backends=1)
    b = lab.backends[0]
    netlab.nginx(b.ns, b.name, port=8080)
    assert lab.curl(f"http://[{b.ipv6}]:8080/").stdout == f"backend={b.name}\n"


@pytest.mark.parametrize("lab_backends", [5])
def test_backend_count_is_a_parameter(lab):
    assert [b.ipv4 for b in lab.backends] == [f"10.244.0.{100 + i}" for i in range(5)]


def test_root_namespace_untouched_and_teardown_leaves_nothing():
    links_before, _ = _root_netns_view()
    lab_obj = NetLab()
    try:
        lab = build_socklb_lab(lab_obj, backends=2)
        servers = lab.start_http_backends() + lab.start_dns_backends()
        client = lab.client_spawn(["sleep", "60"])
        assert _leftovers(lab_obj.id)
        _assert_root_namespace_clean(links_before, lab)  # nothing created in the root netns
    finally:
        lab_obj.close()
    assert _leftovers(lab_obj.id) == []
    assert all(not p.alive() for p in [*servers, client])
    _assert_root_namespace_clean(links_before, lab)
    lab_obj.close()  # idempotent


def test_teardown_on_exception():
    with pytest.raises(RuntimeError, match="boom"), NetLab() as lab:
        lab_id = lab.id
        build_socklb_lab(lab, backends=1).start_http_backends()
        raise RuntimeError("boom")
    assert _leftovers(lab_id) == []


def test_sweep_removes_labs_of_dead_owners_only():
    live, dead = NetLab(), NetLab()
    try:
        for lab in (live, dead):
            build_socklb_lab(lab, backends=1).start_dns_backends()
        # pretend `dead` was left by a killed run: its owner is a pid that has exited
        gone = subprocess.Popen(["true"])
        gone.wait()
        (dead.run_dir / "owner").write_text(f"{gone.pid} 0\n")
        swept = sweep_leftovers()
        assert dead.id in swept
        assert live.id not in swept
        assert _leftovers(dead.id) == []
        assert live.id in lab_ids() and _leftovers(live.id)
        assert all(not p.alive() for p in dead.procs)
    finally:
        live.close()
        dead.close()


def test_refuses_foreign_namespaces_and_cgroups(netlab):
    other = NetLab()
    try:
        ns_other = other.netns("x")
        ns_mine = netlab.netns("y")
        with pytest.raises(NetLabError):
            netlab.veth(ns_mine, "a", ns_other, "b")
        with pytest.raises(NetLabError):
            netlab.spawn(ns_mine, ["true"], cgroup=Path("/sys/fs/cgroup/unified"))
        with pytest.raises(ValueError):
            netlab.cgroup("../../escape")
    finally:
        other.close()
