"""Reading YAML for the board model: safe loading that rejects duplicate keys.

PyYAML silently keeps the last of two equal keys; in a board file that hides a typo,
so duplicates are reported like any other finding (file, line, key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from netvm.core.errors import Finding, UserError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
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


def load_yaml(path: Path, display: str) -> Any:
    """Parse `path`; YAML errors become a UserError naming `display` and the line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError([Finding(display, "", f"cannot read: {exc.strerror}")]) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        hint = "keep one of them" if "duplicate key" in problem else "check indentation and quoting"
        raise UserError([Finding(display, where, f"invalid YAML: {problem}", hint)]) from None
    except yaml.YAMLError as exc:
        raise UserError([Finding(display, "", f"invalid YAML: {exc}")]) from None
