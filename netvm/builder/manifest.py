"""The build manifest as the tools after a build read it: typed, paths resolved.

`build` writes ``build/<board>/manifest.json`` (its JSON form is documented in the
README, "The build pipeline"); `invoke flash`, `invoke run`, `invoke bench` and
`invoke sbom` read it through `read_manifest` / `parse_manifest` instead of indexing the
JSON themselves.
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
class StepInfo:
    """One step as the build recorded it: "sel4 rootfs" for a step of the seL4 variant."""

    name: str
    status: str  # built, cached, skipped or failed
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        """Its outputs are the build's: it was built now or reused from an earlier build."""
        return self.status in ("built", "cached")


@dataclass(frozen=True)
class Manifest:
    display: str  # the manifest file as findings name it
    artifacts: Mapping[str, BuiltFile] = field(default_factory=dict)  # only those built
    step_seconds: Mapping[str, float] = field(default_factory=dict)
    board: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    steps: tuple[StepInfo, ...] = ()
    # A variant's own artifacts ("sel4": the seL4 system's guest), beside the board's.
    variants: Mapping[str, Mapping[str, BuiltFile]] = field(default_factory=dict)

    def get(self, name: str) -> BuiltFile | None:
        return self.artifacts.get(name)

    def step(self, name: str) -> StepInfo | None:
        """The last record of step `name` (with its variant's prefix, e.g. "sel4 rootfs")."""
        found = [s for s in self.steps if s.name == name]
        return found[-1] if found else None

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
    steps = doc.get("steps")
    records = [
        s
        for s in (steps if isinstance(steps, list) else ())
        if isinstance(s, dict) and isinstance(s.get("name"), str)
    ]
    seconds = {s["name"]: float(s.get("seconds", 0.0)) for s in records}
    infos = tuple(
        StepInfo(
            s["name"],
            str(s.get("status", "")),
            s["details"] if isinstance(s.get("details"), dict) else {},
        )
        for s in records
    )
    raw_versions = doc.get("versions")
    versions = {
        k: v
        for k, v in (raw_versions.items() if isinstance(raw_versions, dict) else ())
        if isinstance(k, str) and isinstance(v, str)
    }
    variants = {"sel4": _artifacts(doc["sel4"], root)} if isinstance(doc.get("sel4"), dict) else {}
    board = doc.get("board")
    return Manifest(
        display,
        _artifacts(doc.get("artifacts"), root),
        seconds,
        board if isinstance(board, str) else "",
        versions,
        infos,
        variants,
    )


def _artifacts(raw: Any, root: Path) -> dict[str, BuiltFile]:
    artifacts: dict[str, BuiltFile] = {}
    for name, art in raw.items() if isinstance(raw, dict) else ():
        if isinstance(art, dict) and isinstance(art.get("path"), str):
            path = Path(art["path"])
            artifacts[name] = BuiltFile(
                path if path.is_absolute() else root / path,
                str(art.get("sha256", "")),
                int(art.get("bytes", 0)),
            )
    return artifacts


def read_manifest(file: Path, display: str, root: Path) -> Manifest:
    """The manifest at `file`; an empty one when there is none yet (nothing was built)."""
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError):
        doc = None
    return parse_manifest(doc, display, root)
