"""Compile the project's eBPF C (package ``lbcore_bpf``) with bcc, for any driver.

The sources are found through ``importlib.resources``, so an installed wheel works as
well as a checkout. Configuration reaches the C as ``-D`` flags: the bpffs directory
the maps are pinned in (``LBCORE_PIN_DIR``) and the driver's limits.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import DriverError
from .memory import release_free_memory


def source_path(name: str) -> Path:
    """``bpf/<name>`` as installed (package ``lbcore_bpf``)."""
    return Path(str(importlib.resources.files("lbcore_bpf").joinpath(name)))


def cflags(pin_dir: str, macros: Mapping[str, int]) -> list[str]:
    include = source_path("include")
    flags = [f"-I{include}", f'-DLBCORE_PIN_DIR="{pin_dir}"']
    flags += [f"-D{macro}={value}" for macro, value in sorted(macros.items())]
    return flags


def compile_program(driver: str, source: str, pin_dir: str, macros: Mapping[str, int]) -> Any:
    """Compile and load ``bpf/<source>``; its maps open (or are created and pinned)
    under ``pin_dir``. Failures raise ``DriverError`` naming ``driver``."""
    try:
        from bcc import BPF
    except ImportError as exc:
        raise DriverError(driver, f"bcc is not importable ({exc}); run `make setup`") from None
    path = source_path(source)
    try:
        bpf = BPF(src_file=str(path).encode(), cflags=cflags(pin_dir, macros))
    except Exception as exc:
        raise DriverError(driver, f"compiling {path} failed: {exc}") from exc
    release_free_memory()  # clang's freed heap: ~40 MB of a long-running agent's RSS
    return bpf
