"""Build steps with declared inputs and outputs, skipped when nothing changed.

Owns the step bookkeeping: hashing a step's inputs, remembering what it produced in
``build/<board>/state/<step>.json``, deciding built/cached/skipped/failed, and the
manifest format. What a step does is up to its caller (`netvm.builder.build`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netvm.core.files import file_sha256
from netvm.core.progress import Progress, end_status, show_status, silent

STATUSES = ("built", "cached", "skipped", "failed")


@dataclass(frozen=True)
class Artifact:
    path: Path
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: Path) -> Artifact:
        return cls(path, file_sha256(path), path.stat().st_size)

    def as_dict(self, root: Path) -> dict[str, Any]:
        return {"path": _rel(self.path, root), "sha256": self.sha256, "bytes": self.bytes}


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


@dataclass
class StepRecord:
    name: str
    status: str
    seconds: float
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status}
        out["seconds"] = round(self.seconds, 3)
        if self.note:
            out["note"] = self.note
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class StepOutput:
    """What a step's run function returns: named artifact files and extra facts."""

    files: Mapping[str, Path]
    details: Mapping[str, Any] = field(default_factory=dict)


class StepRunner:
    """Runs steps in order for one build directory and collects their records."""

    def __init__(
        self,
        build_dir: Path,
        *,
        force: bool,
        progress: Progress = silent,
        label: str = "",
    ) -> None:
        self.build_dir = build_dir
        self.label = label  # prefixed to step names in records and progress, e.g. "sel4 "
        self.state_dir = build_dir / "state"
        self.force = force
        self.progress = progress
        self.records: list[StepRecord] = []
        self.artifacts: dict[str, Artifact] = {}

    def skip(self, name: str, note: str) -> None:
        # Not echoed as progress: the step table (or the JSON manifest) shows the note once.
        self.records.append(StepRecord(self.label + name, "skipped", 0.0, note))

    def fail(self, name: str, seconds: float, note: str) -> None:
        """Record that step `name` failed before it could run (e.g. its inputs were refused)."""
        self.records.append(StepRecord(self.label + name, "failed", seconds, note))

    def run(
        self, name: str, inputs: Mapping[str, Any], run: Callable[[], StepOutput]
    ) -> StepRecord:
        """Run `run` unless a previous run had the same inputs and its outputs are intact."""
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        state_file = self.state_dir / f"{name}.json"
        label = self.label + name
        start = time.monotonic()
        cached = None if self.force else self._load_cached(state_file, key)
        if cached is not None:
            arts, details = cached
            record = StepRecord(label, "cached", time.monotonic() - start, details=details)
        else:
            # On a terminal the step's own status line takes over this one.
            show_status(self.progress, f"[{label}] running")
            try:
                output = run()
            except BaseException:
                self.records.append(StepRecord(label, "failed", time.monotonic() - start))
                end_status(self.progress, keep=True)
                raise
            arts = {k: Artifact.of(p) for k, p in output.files.items()}
            details = dict(output.details)
            self._save(state_file, key, arts, details)
            record = StepRecord(label, "built", time.monotonic() - start, details=details)
        self.artifacts.update(arts)
        self.records.append(record)
        end_status(self.progress)
        self.progress(f"[{label}] {record.status} ({record.seconds:.2f} s)")
        return record

    def _load_cached(
        self, state_file: Path, key: str
    ) -> tuple[dict[str, Artifact], dict[str, Any]] | None:
        """The recorded outputs and details when the inputs are the same (`key`) and every
        output still has its recorded contents; None (run the step) otherwise, and for a
        state file that is unreadable or not of the shape `_save` writes."""
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(state, dict) or state.get("key") != key:
            return None
        recorded, details = state.get("artifacts"), state.get("details")
        if not isinstance(recorded, dict) or not isinstance(details, dict):
            return None
        arts: dict[str, Artifact] = {}
        for name, a in recorded.items():
            art = _recorded_artifact(a)
            if art is None or not _intact(art):
                return None
            arts[name] = art
        return arts, details

    def _save(
        self, state_file: Path, key: str, arts: dict[str, Artifact], details: dict[str, Any]
    ) -> None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "key": key,
            "artifacts": {
                n: {
                    "path": str(a.path),
                    "sha256": a.sha256,
                    "bytes": a.bytes,
                }
                for n, a in arts.items()
            },
            "details": details,
        }
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
        os.replace(tmp, state_file)


def _recorded_artifact(a: object) -> Artifact | None:
    """The artifact a state file records, or None when the record is ill-formed."""
    if not isinstance(a, dict):
        return None
    path, sha256, size = a.get("path"), a.get("sha256"), a.get("bytes")
    if not (isinstance(path, str) and path and isinstance(sha256, str)):
        return None
    if not isinstance(size, int) or isinstance(size, bool):
        return None
    return Artifact(Path(path), sha256, size)


def _intact(art: Artifact) -> bool:
    """Whether the file still has the recorded contents. The size is the cheap reject;
    the sha256 is always checked: an edit can keep the size and restore the mtime, and
    hashing an output costs little next to rebuilding it."""
    try:
        return art.path.stat().st_size == art.bytes and file_sha256(art.path) == art.sha256
    except (OSError, ValueError):  # gone, unreadable, a directory, a NUL in the path
        return False
