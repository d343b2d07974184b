"""The build manifest as the tools after a build read it: typed, paths resolved.

`build` writes ``build/<board>/manifest.json`` (its JSON form is documented in the
README, "The build pipeline"); `invoke flash`, `invoke run` and `invoke bench` read it
through `read_manifest` / `parse_manifest` instead of indexing the JSON themselves.
Must not: decide what a step builds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netvm.core.errors import Finding, UserError

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class BuiltFile:
    path: Path  # absolute
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    display: str  # the manifest file as findings name it
    artifacts: Mapping[str, BuiltFile] = field(default_factory=dict)  # only those built
    step_seconds: Mapping[str, float] = field(default_factory=dict)

    def get(self, name: str) -> BuiltFile | None:
        return self.artifacts.get(name)

    def require(self, name: str, what: str, hint: str) -> BuiltFile:
        """Artifact `name`, or a user error naming it and how to get it."""
        art = self.artifacts.get(name)
        if art is None:
            raise UserError([Finding(self.display, f"artifacts.{name}", f"no {what}", hint)])
        return art


def parse_manifest(doc: Any, display: str, root: Path) -> Manifest:
    """A manifest from its JSON document; entries of the wrong shape count as absent
    (a manifest from another netvm version must not crash the reader)."""
    if not isinstance(doc, dict):
        return Manifest(display)
    artifacts: dict[str, BuiltFile] = {}
    raw = doc.get("artifacts")
    for name, art in raw.items() if isinstance(raw, dict) else ():
        if isinstance(art, dict) and isinstance(art.get("path"), str):
            path = Path(art["path"])
            artifacts[name] = BuiltFile(
                path if path.is_absolute() else root / path,
                str(art.get("sha256", "")),
                int(art.get("bytes", 0)),
            )
    steps = doc.get("steps")
    seconds = {
        s["name"]: float(s.get("seconds", 0.0))
        for s in (steps if isinstance(steps, list) else ())
        if isinstance(s, dict) and isinstance(s.get("name"), str)
    }
    return Manifest(display, artifacts, seconds)


def read_manifest(file: Path, display: str, root: Path) -> Manifest:
    """The manifest at `file`; an empty one when there is none yet (nothing was built)."""
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError):
        doc = None
    return parse_manifest(doc, display, root)
