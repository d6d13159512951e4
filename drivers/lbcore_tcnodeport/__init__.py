"""The tc-eBPF NodePort driver: north-south load balancing without iptables."""
