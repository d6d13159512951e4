"""Fast packing of map keys and values, derived from the compiled program's types.

bcc gives a ctypes type per map key and value (``Table.Key`` / ``Table.Leaf``).
Setting ctypes fields one by one costs ~1 us each: 100,000 backends would spend a
second on it. ``Packer`` reads the ctypes layout (field order, offsets, padding)
once and builds a ``struct.Struct`` with the same bytes, so a whole batch becomes
one ``bytes`` join and one ``from_buffer_copy``. The layout still comes from the C
(nothing redeclared); ``expect`` fails loudly if maps.h and this driver disagree.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterable, Sequence
from typing import Any


def _code(ctype: Any) -> str:
    code = ctype._type_
    if code in "lL":  # C long: 8 bytes here, but struct's standard 'l' is 4
        code = {4: "i", 8: "q"}[ctypes.sizeof(ctype)]
        return code if ctype._type_ == "l" else code.upper()
    return code


def layout(ctype: Any) -> tuple[str, list[str]]:
    """(struct format without byte order, names of the value fields in order)."""
    if not issubclass(ctype, ctypes.Structure):
        return _code(ctype), ["value"]
    fmt, names, cursor = [], [], 0
    for name, ftype in ctype._fields_:
        offset = getattr(ctype, name).offset
        fmt.append("x" * (offset - cursor))
        size = ctypes.sizeof(ftype)
        if issubclass(ftype, ctypes.Structure):
            sub_fmt, sub_names = layout(ftype)
            fmt.append(sub_fmt)
            names += [f"{name}.{sub}" for sub in sub_names]
        elif issubclass(ftype, ctypes.Array):
            if name.startswith("pad"):
                fmt.append("x" * size)
            else:
                fmt.append(_code(ftype._type_) * ftype._length_)
                names += [f"{name}[{i}]" for i in range(ftype._length_)]
        elif name.startswith("pad"):
            fmt.append("x" * size)
        else:
            fmt.append(_code(ftype))
            names.append(name)
        cursor = offset + size
    fmt.append("x" * (ctypes.sizeof(ctype) - cursor))
    return "".join(fmt), names


class Packer:
    """Packs tuples of field values into instances or arrays of one ctypes type."""

    def __init__(self, ctype: Any) -> None:
        self.ctype = ctype
        fmt, self.names = layout(ctype)
        self.struct = struct.Struct("=" + fmt)
        if self.struct.size != ctypes.sizeof(ctype):
            raise TypeError(f"layout of {ctype.__name__} not understood: {fmt!r}")

    def expect(self, names: Sequence[str]) -> Packer:
        if list(names) != self.names:
            raise TypeError(
                f"{self.ctype.__name__} has fields {self.names}, the driver packs {list(names)}:"
                " bpf/include/lbcore/maps.h and drivers/lbcore_socklb/maps.py disagree"
            )
        return self

    def one(self, values: Sequence[int]) -> Any:
        return self.ctype.from_buffer_copy(self.struct.pack(*values))

    def array(self, rows: Iterable[Sequence[int]]) -> Any:
        pack = self.struct.pack
        blob = b"".join(pack(*row) for row in rows)
        count = len(blob) // self.struct.size
        return (self.ctype * count).from_buffer_copy(blob)
