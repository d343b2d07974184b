"""``Record``: typing.NamedTuple's class syntax without typing or collections.

typing (with re), and collections.namedtuple (with functools, and a compile() per
class), are some of the largest costs python pays at the driver's start-up, which is
boot time under QEMU's TCG (docs/driver.md, "Start-up"). The driver only needs plain
immutable records: a class deriving from Record becomes a tuple subclass with the
annotated fields as read-only properties, their defaults, keyword arguments and a
namedtuple-like repr. Checkers see typing.NamedTuple itself, so the fields stay typed.
"""

from __future__ import annotations

from operator import itemgetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as Record
else:

    def _new(cls, *args, **kwargs):
        fields = cls._fields
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__}() takes {len(fields)} arguments, got {len(args)}")
        values = list(args)
        for name in fields[len(args) :]:
            if name in kwargs:
                values.append(kwargs.pop(name))
            elif name in cls._field_defaults:
                values.append(cls._field_defaults[name])
            else:
                raise TypeError(f"{cls.__name__}() missing argument {name!r}")
        if kwargs:
            raise TypeError(f"{cls.__name__}() got unexpected arguments {sorted(kwargs)}")
        return tuple.__new__(cls, values)

    def _getnewargs(self):
        return tuple(self)

    def _repr(self):
        inner = ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, self, strict=True))
        return f"{type(self).__name__}({inner})"

    class _RecordMeta(type):
        def __new__(mcls, name, bases, ns):
            if not bases:  # Record itself
                return super().__new__(mcls, name, bases, ns)
            fields = tuple(ns.get("__annotations__", {}))
            defaults = {f: ns[f] for f in fields if f in ns}
            if defaults and any(
                f not in defaults for f in fields[fields.index(next(iter(defaults))) :]
            ):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            body = {k: v for k, v in ns.items() if k not in fields and k != "__annotations__"}
            body.update(
                __slots__=(),
                _fields=fields,
                _field_defaults=defaults,
                __new__=_new,
                __repr__=_repr,
                __getnewargs__=_getnewargs,  # copy and pickle rebuild from the values
            )
            for i, f in enumerate(fields):
                body[f] = property(itemgetter(i), doc=f"field {i}: {f}")
            return type(name, (tuple,), body)

    class Record(metaclass=_RecordMeta):
        __slots__ = ()


__all__ = ["Record"]
