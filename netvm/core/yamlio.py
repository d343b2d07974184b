"""Reading YAML for the board model: safe loading that rejects duplicate keys.

PyYAML silently keeps the last of two equal keys; in a board file that hides a typo,
so duplicates are reported like any other finding (file, line, key). Numbers follow
YAML 1.2, not 1.1: an unquoted MAC such as 52:54:00:12:34:56 stays the text it reads as
instead of becoming a base-60 integer. Anything that is not a YAML document (binary,
not UTF-8, nested past reason) is a finding too, never a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from netvm.core.errors import Finding, UserError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys and reads numbers as YAML 1.2."""


# YAML 1.1's int and float forms less the base-60 ones (1:30 -> 90) that YAML 1.2 dropped.
_INT = re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
)
_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_StrictLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "a mapping key must be a plain value, not a list or mapping",
                key_node.start_mark,
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _char(c: object) -> str:
    return f"{c:#04x}" if isinstance(c, int) else f"{ord(str(c)[:1] or chr(0)):#04x}"


def load_yaml(path: Path, display: str) -> Any:
    """Parse `path`; YAML errors become a UserError naming `display` and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError([Finding(display, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise UserError(
            [
                Finding(
                    display,
                    "",
                    f"not UTF-8 text: byte {exc.start} is {exc.object[exc.start]:#04x}",
                    "a board file is YAML text; is this the right file?",
                )
            ]
        ) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        hint = "keep one of them" if "duplicate key" in problem else "check indentation and quoting"
        raise UserError([Finding(display, where, f"invalid YAML: {problem}", hint)]) from None
    except yaml.reader.ReaderError as exc:
        raise UserError(
            [
                Finding(
                    display,
                    "",
                    f"not YAML text: character {_char(exc.character)} at position {exc.position}",
                    "a board file is YAML text; is this the right file?",
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise UserError([Finding(display, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise UserError(
            [
                Finding(
                    display,
                    "",
                    "invalid YAML: nested too deeply to read",
                    "a board file is a few levels deep",
                )
            ]
        ) from None
