"""The iptables driver: kube-proxy's iptables mode, faithfully."""
