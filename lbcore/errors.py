"""Typed errors. Each one carries what a user needs to fix the problem.

The CLI prints ``str(error)`` and exits non-zero; tracebacks only with ``--debug``.
"""

from __future__ import annotations

from dataclasses import dataclass


class LBCoreError(Exception):
    """Base of every error lbcore raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of one object, located in its file.

    Rendered as ``file:document N (Kind ns/name): field: problem (valid: ...)``.
    """

    field: str
    problem: str
    valid: str = ""
    file: str = ""
    document: int = 0
    kind: str = ""
    name: str = ""

    def located(self, *, file: str, document: int, kind: str, name: str) -> FieldError:
        return FieldError(self.field, self.problem, self.valid, file, document, kind, name)

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.document:
            where.append(f"document {self.document}")
        prefix = ":".join(where)
        if self.kind or self.name:
            obj = f"({self.kind} {self.name})".replace("( ", "(").replace(" )", ")")
            prefix = f"{prefix} {obj}" if prefix else obj
        text = f"{self.field}: {self.problem}"
        if self.valid:
            text += f" (valid: {self.valid})"
        return f"{prefix}: {text}" if prefix else text


class ConfigError(LBCoreError):
    """The lbcore configuration (lbcore.yaml, driver options) is wrong."""


class ValidationError(LBCoreError):
    """A source's objects broke Kubernetes' rules; the whole input is rejected."""

    def __init__(self, errors: list[FieldError], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        head = f"{source}: " if source else ""
        count = len(self.errors)
        lines = [f"{head}rejected, {count} invalid field{'s' if count != 1 else ''}:"]
        lines += [f"  {e}" for e in self.errors]
        super().__init__("\n".join(lines))


class SourceError(LBCoreError):
    """A source could not be read (file missing, YAML syntax, API unreachable)."""


class PluginError(LBCoreError):
    """A driver or source plugin could not be found or loaded."""


class DriverError(LBCoreError):
    """A driver failed to program or read the kernel. Names the driver."""

    def __init__(self, driver: str, message: str) -> None:
        self.driver = driver
        super().__init__(f"driver {driver}: {message}")


class CapacityError(DriverError):
    """A datapath map or table is full; names the option that sizes it."""

    def __init__(self, driver: str, what: str, needed: int, limit: int, option: str) -> None:
        self.needed, self.limit, self.option = needed, limit, option
        super().__init__(
            driver,
            f"{what} needs {needed} entries but the map holds {limit}; "
            f"raise driver_options.{option} (nothing was changed)",
        )
