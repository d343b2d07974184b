"""``Record``: typing.NamedTuple's class syntax without importing typing.

typing (which also imports re) is one of the larger modules python executes at the
driver's start-up, a real cost under QEMU's TCG (docs/qemu.md); the driver only used it
for NamedTuple. A class deriving from Record becomes a collections.namedtuple with the
annotated fields (and their defaults), plus the class's own methods; checkers see
typing.NamedTuple itself, so the fields stay typed.
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as Record
else:
    _CLASS_KEYS = frozenset({"__annotations__", "__module__", "__qualname__", "__doc__"})

    class _RecordMeta(type):
        def __new__(mcls, name, bases, ns):
            if not bases:  # Record itself
                return super().__new__(mcls, name, bases, ns)
            fields = list(ns.get("__annotations__", {}))
            defaults = [ns[f] for f in fields if f in ns]
            if any(f in ns for f in fields[: len(fields) - len(defaults)]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = collections.namedtuple(name, fields, defaults=defaults, module=ns["__module__"])
            cls.__qualname__ = ns["__qualname__"]
            if ns.get("__doc__"):
                cls.__doc__ = ns["__doc__"]
            for key, value in ns.items():
                if key not in _CLASS_KEYS and key not in fields:
                    setattr(cls, key, value)
            return cls

    class Record(metaclass=_RecordMeta):
        __slots__ = ()


__all__ = ["Record"]
