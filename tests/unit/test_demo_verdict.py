"""The demo's verdict from a capture: where was the service address translated?"""

from lbcore.demo_verdict import claim_holds, observe
from lbcore.lab.capture import parse_line

PODS = {"10.0.1.10": "cni-a", "10.0.2.10": "cni-b"}


def _p(line):
    return parse_line(line)


def test_socket_lb_syn_to_pod_is_socket_mode():
    syn = _p("t IP 10.0.1.77.5000 > 10.0.2.10.80: Flags [S], seq 1")
    lines = [syn.line, "t IP 10.0.2.10.80 > 10.0.1.77.5000: Flags [S.], seq 2, ack 2"]
    obs = observe("ClusterIP", ("10.96.0.9", 80), "cni-b", [syn], lines,
                  {"cni-b": [_p("t IP 10.0.1.77.5000 > 10.0.2.10.80: Flags [S], seq 1")]},
                  PODS, 80)
    assert obs.mode == "socket" and obs.client_syn_to == "pod cni-b"
    assert claim_holds("socklb", obs) and not claim_holds("iptables", obs)


def test_service_address_on_the_wire_is_not_socket_mode():
    syn = _p("t IP 10.0.1.77.5000 > 10.0.2.10.80: Flags [S], seq 1")
    leak = "t IP 10.0.1.77.5001 > 10.96.0.9.80: Flags [.], ack 1"
    obs = observe("ClusterIP", ("10.96.0.9", 80), "cni-b", [syn], [syn.line, leak], {}, PODS, 80)
    assert obs.mode == "none" and obs.service_on_wire == [leak]
    assert not claim_holds("socklb", obs)


def test_node_translation_is_node_mode():
    syn = _p("t IP 10.0.1.77.5000 > 172.18.0.3.32000: Flags [S], seq 1")
    at_pod = _p("t IP 172.18.0.3.5000 > 10.0.1.10.80: Flags [S], seq 1")
    obs = observe("NodePort", ("172.18.0.3", 32000), "cni-a", [syn], [syn.line],
                  {"cni-a": [at_pod]}, PODS, 80)
    assert obs.mode == "node" and obs.backend_syn == "172.18.0.3:5000 > 10.0.1.10:80"
    assert claim_holds("iptables", obs) and not claim_holds("socklb", obs)


def test_nothing_seen_is_no_claim():
    obs = observe("NodePort", ("172.18.0.3", 32000), None, [], [], {}, PODS, 80)
    assert obs.mode == "none" and not claim_holds("somedriver", obs)
