"""Where a lab keeps its things on the host, and how its names are spelled.

Every lab has an id (8 hex digits) and owns only names that start with ``lbt-<id>``:
namespaces ``/run/netns/lbt-<id>-<short>``, the cgroup ``<cgroup2>/lbt-<id>/`` and the
run directory ``/run/lbt-<id>/`` (owner file, logs, private bpffs mounts).
"""

from __future__ import annotations

import re
from pathlib import Path

PREFIX = "lbt-"
CGROUP2_ROOT = Path("/sys/fs/cgroup/unified")
RUN_ROOT = Path("/run")
NETNS_DIR = Path("/run/netns")
ID_RE = re.compile(r"^lbt-([0-9a-f]{8})(?:-|$)")
SHORT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
