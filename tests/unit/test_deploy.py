"""deploy/: the manifests and the Helm chart.

What is verified here, and how:

* every manifest is checked against the official ``kubernetes`` client's models (generated
  from the Kubernetes OpenAPI schema): types, required fields, and — by a round trip
  through the model and back to JSON — that no field is unknown at any depth;
* the chart is rendered by Helm itself (Helm's Go SDK through ``helm-python-sdk``), with
  the default values and with the driver switches; ``helm lint`` finds no error; the plain
  manifests in deploy/manifests are the chart's default rendering, byte for byte;
* the ConfigMap's ``lbcore.yaml`` is accepted by lbcore's own config parser, source and
  driver option checks; the ClusterRole grants what the API test double saw the source
  use and nothing else.

Not verified: admission by a real API server (defaulting, PodSecurity), that the image
builds, and that the agent runs on a real node — see docs/kubernetes.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from lbcore.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "manifests" / "lbcore.yaml"
CHART = ROOT / "deploy" / "helm" / "lbcore"
MODELS = {
    "ServiceAccount": client.V1ServiceAccount,
    "ClusterRole": client.V1ClusterRole,
    "ClusterRoleBinding": client.V1ClusterRoleBinding,
    "ConfigMap": client.V1ConfigMap,
    "DaemonSet": client.V1DaemonSet,
}
# What tests/unit/test_kubernetes_source.py proves the source calls, as RBAC rules.
USED = {("", "services", "list"), ("", "services", "watch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("", "nodes", "list"), ("", "nodes", "watch"), ("", "events", "create")}
ISSUE_ROLE = ({(g, r, v) for g, r in (("", "services"), ("discovery.k8s.io", "endpointslices"),
                                      ("", "nodes")) for v in ("get", "list", "watch")}
              | {(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")})

try:
    import helm_python as helm  # Helm's Go SDK (helm-python-sdk); no helm binary on PyPI/Debian
except ImportError:  # the model checks of the plain manifests still run
    helm = None
needs_helm = pytest.mark.skipif(helm is None, reason="helm-python-sdk is not installed")


def validate(doc: dict) -> object:
    """The model of ``doc``; fails on a wrong type or any field the schema lacks."""
    model = MODELS[doc["kind"]].from_dict(doc)
    back = client.ApiClient().sanitize_for_serialization(model)
    assert back == doc, f"{doc['kind']} {doc['metadata']['name']}: fields lost in the model"
    return model


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(values: dict | None = None) -> list[dict]:
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or {}, name="lbcore", namespace="kube-system")
    return [d for text in rendered.values() for d in documents(text)]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def lbcore_yaml(docs: list[dict]) -> dict:
    return yaml.safe_load(by_kind(docs)["ConfigMap"]["data"]["lbcore.yaml"])


# ------------------------------------------------------------- plain manifests


def test_manifests_validate_against_the_api_models():
    docs = documents(MANIFESTS.read_text())
    assert sorted(d["kind"] for d in docs) == sorted(MODELS)
    for doc in docs:
        validate(doc)


def test_model_check_catches_unknown_and_mistyped_fields():
    ds = by_kind(documents(MANIFESTS.read_text()))["DaemonSet"]
    ds["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {}
    with pytest.raises(AssertionError, match="fields lost"):
        validate(ds)
    ds = by_kind(documents(MANIFESTS.read_text()))["DaemonSet"]
    ds["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    with pytest.raises(ValueError):
        validate(ds)


@needs_helm
def test_manifests_are_the_charts_default_rendering():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render", ROOT / "scripts/render_manifests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert MANIFESTS.read_text() == module.manifests_text(), \
        "deploy/manifests/lbcore.yaml is stale: run scripts/render_manifests.py"


def test_daemonset_runs_the_agent_as_the_probes_expect():
    docs = by_kind(documents(MANIFESTS.read_text()))
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    node_name = next(e for e in agent["env"] if e["name"] == "NODE_NAME")
    assert node_name["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    bind = next(a for a in agent["args"] if a.startswith("--healthz-bind-address="))
    port = int(bind.rsplit(":", 1)[1])
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/livez"),
                        ("readinessProbe", "/healthz")):
        assert agent[probe]["httpGet"] == {"path": path, "port": port}
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    host = {v["name"]: v.get("hostPath", {}).get("path") for v in pod["volumes"]}
    assert host[next(k for k, p in mounts.items() if p == "/sys/fs/bpf")] == "/sys/fs/bpf"
    assert host[next(k for k, p in mounts.items() if p == "/run/lbcore/cgroupv2")] == \
        "/sys/fs/cgroup"
    assert host["lib-modules"] == "/lib/modules" and host["usr-src"] == "/usr/src"
    config = lbcore_yaml(list(docs.values()))
    assert config["driver_options"]["cgroup_path"] == "/run/lbcore/cgroupv2/kubepods.slice"
    assert agent["securityContext"]["privileged"] is False
    assert agent["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_every_added_capability_is_documented():
    template = (CHART / "templates" / "daemonset.yaml").read_text().splitlines()
    added = [i for i, line in enumerate(template)
             if re.fullmatch(r"\s+- [A-Z_]+", line) and "add:" not in line]
    assert len(added) >= 6
    for i in added:
        above = template[i - 1].strip()
        assert above.startswith("#"), f"capability {template[i].strip()} has no comment"


def test_cluster_role_is_node_proxiers_verbs():
    role = by_kind(documents(MANIFESTS.read_text()))["ClusterRole"]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted >= USED
    assert granted == ISSUE_ROLE


def test_configmap_is_a_valid_lbcore_config():
    config = parse_config(lbcore_yaml(documents(MANIFESTS.read_text())), Path("lbcore.yaml"))
    assert (config.driver, config.source_kind) == ("socklb", "kubernetes")
    from lbcore.sources.kubernetes import KubernetesSource

    assert set(config.source_options) <= KubernetesSource.known_options
    socklb = pytest.importorskip("lbcore_socklb.driver")
    socklb.SockLBOptions.parse(config.driver_options)


# ------------------------------------------------------------------ helm chart


@needs_helm
def test_chart_lints_and_renders_valid_objects_for_each_driver():
    assert helm.lint(str(CHART))["errors"] == []
    for values, driver in (({}, "socklb"), ({"socketLB": {"enabled": True}}, "socklb"),
                           ({"socketLB": {"enabled": False}, "iptables": {"enabled": True}},
                            "iptables")):
        docs = render(values)
        for doc in docs:
            validate(doc)
        assert lbcore_yaml(docs)["driver"] == driver
        pod = by_kind(docs)["DaemonSet"]["spec"]["template"]["spec"]
        caps = pod["containers"][0]["securityContext"]["capabilities"]["add"]
        if driver == "iptables":
            assert "hostPID" not in pod and "initContainers" not in pod
            assert set(caps) == {"BPF", "NET_ADMIN", "NET_RAW"}
        else:
            assert "SYS_ADMIN" in caps and pod["initContainers"][0]["name"] == "mount-bpf-fs"


@needs_helm
def test_chart_refuses_zero_or_two_drivers():
    for values in ({"socketLB": {"enabled": False}},
                   {"socketLB": {"enabled": True}, "iptables": {"enabled": True}}):
        with pytest.raises(helm.HelmError, match="datapath"):
            render(values)


@needs_helm
def test_chart_values_reach_the_agent():
    docs = render({"k8sServiceHost": "kind-control-plane", "k8sServicePort": 6443,
                   "socketLB": {"enabled": True, "podsCgroup": "kubepods"},
                   "serviceProxyName": "lbcore", "healthzPort": 10300, "logVerbosity": 2})
    config = lbcore_yaml(docs)
    assert config["service_proxy_name"] == "lbcore"
    assert config["driver_options"]["cgroup_path"] == "/run/lbcore/cgroupv2/kubepods"
    agent = by_kind(docs)["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["KUBERNETES_SERVICE_HOST"] == "kind-control-plane"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert agent["args"][0] == "-vv"
    assert "--healthz-bind-address=0.0.0.0:10300" in agent["args"]
    assert agent["livenessProbe"]["httpGet"]["port"] == 10300
    parse_config(config, Path("lbcore.yaml"))
