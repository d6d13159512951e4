"""lbcore's nftables driver: kube-proxy's nftables mode (KEP-3866) as a plugin.

- :mod:`.naming` — deterministic, content-addressed chain and set names;
- :mod:`.render` — pure: ``DesiredState`` -> the table's objects (``Ruleset``) and the one
  libnftables JSON transaction that makes the kernel hold them;
- :mod:`.nft` — apply and list through libnftables (``nftables`` module), in the current
  network namespace or another one (a forked child ``setns()``-es);
- :mod:`.readback` — the kernel's JSON listing -> ``FrontendState`` (a walk of the maps and
  chains, not of memory);
- :mod:`.driver` — the ``lbcore.drivers`` entry point ``nftables``.
"""
