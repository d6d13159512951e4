"""lbcore: Kubernetes service load balancing in the Linux kernel, pluggable datapaths."""

__version__ = "0.1.0"
