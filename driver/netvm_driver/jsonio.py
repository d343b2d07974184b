"""JSON in and out through the C accelerator behind the json package.

Why not ``import json``: it compiles half a dozen regular expressions at import, which
pulls in ``re`` and its compiler. Under QEMU's TCG that is a noticeable share of the
driver's cold start (docs/driver.md, "Start-up"), and the driver reads one small
file at start-up and writes a flat stats document. ``_json`` (CPython's C scanner and
encoder, which ``json`` itself uses) does both without any of that. Where ``_json`` is
missing (another Python), the json package does the work instead.

Errors are the json package's own ``JSONDecodeError`` (message, line, column): a text
the C scanner rejects is parsed again by the json package, so only a bad file pays for
importing it.
"""

from __future__ import annotations

# typing is not imported at run time (start-up cost); the annotations are for checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None  # type: ignore[assignment]

# Imported on the error path only: the rootfs build ships these too (netvm/rootfs.py).
LAZY_IMPORTS = ("json",)
WHITESPACE = " \t\n\r"  # the four characters JSON allows between tokens


class _ScannerContext:
    """The attributes the C scanner reads from a json.JSONDecoder (its defaults)."""

    strict = True  # no control characters inside strings
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> Any:
        # NaN and Infinity are not JSON; the json package accepts them, the driver does not.
        raise ValueError(f"{name} is not a JSON value")


def _loads_with_json(text: str) -> Any:
    import json  # the error path (and a Python without _json) only

    return json.loads(text, parse_constant=_ScannerContext.parse_constant)


def loads(text: str) -> Any:
    """Like json.loads(text) (strict; no NaN or Infinity), with json's errors."""
    if _json is None:  # pragma: no cover
        return _loads_with_json(text)
    # typeshed declares the context as a make_scanner itself (a TODO there): the C scanner
    # only reads the attributes _ScannerContext has, as it does from a json.JSONDecoder.
    scan = _json.make_scanner(_ScannerContext)  # type: ignore[arg-type]
    start = len(text) - len(text.lstrip(WHITESPACE))
    try:
        value, end = scan(text, start)
    except Exception:
        # The C scanner builds its errors from json.decoder, which it expects to be loaded
        # already; the json package parses the same text again to raise the real error.
        return _loads_with_json(text)
    if text[end:].strip(WHITESPACE):
        return _loads_with_json(text)  # "Extra data", with its position
    return value


def _unencodable(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    """Like json.dumps(obj, sort_keys=True, allow_nan=False): one line, keys sorted."""
    if _json is None:  # pragma: no cover
        import json

        return json.dumps(obj, sort_keys=True, allow_nan=False)
    encode = _json.make_encoder(
        {},  # markers: catches a container that contains itself
        _unencodable,
        _json.encode_basestring_ascii,
        None,  # indent: the C encoder writes one line
        ": ",
        ", ",
        True,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )
    return "".join(encode(obj, 0))
