"""Build steps with declared inputs and outputs, skipped when nothing changed.

Owns the step bookkeeping: hashing a step's inputs, remembering what it produced (and
the inputs it was run with) in ``build/<board>/state/<step>.json``, deciding
built/cached/skipped/failed, and the manifest format; and, without running anything,
predicting which steps the next build reuses and which input made a step stale
(`PlanRunner`, for `invoke info`). What a step does is up to its caller
(`netvm.builder.build`).
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


def step_key(inputs: Mapping[str, Any]) -> str:
    """The cache key of a step: one hash over all its inputs."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def recorded_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """`inputs` as a state file records them (JSON values), to name what changed later."""
    value: dict[str, Any] = json.loads(json.dumps(inputs, sort_keys=True, default=str))
    return value


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
        key = step_key(inputs)
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
            self._save(state_file, key, arts, details, recorded_inputs(inputs))
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
        state = _read_state(state_file)
        if state is None or state.get("key") != key:
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

    def predict(self, name: str, inputs: Mapping[str, Any]) -> Prediction:
        """Whether `run` would reuse step `name` with these inputs, and if not, why: the
        inputs that differ from the ones its state file records, or the output that is
        no longer as built. Runs nothing and writes nothing."""
        label = self.label + name
        state_file = self.state_dir / f"{name}.json"
        if self.force:
            return Prediction(label, "rebuild", "--force")
        key = step_key(inputs)
        cached = self._load_cached(state_file, key)
        if cached is not None:
            return Prediction(label, "cached", artifacts=cached[0])
        state = _read_state(state_file)
        if state is None:
            return Prediction(label, "rebuild", "not built before")
        if state.get("key") != key:
            before = state.get("inputs")
            if not isinstance(before, dict):
                return Prediction(
                    label, "rebuild", "its inputs changed (the last build did not record which)"
                )
            now = recorded_inputs(inputs)
            changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
            return Prediction(label, "rebuild", f"{', '.join(changed)} changed", changed=changed)
        recorded = state.get("artifacts")
        for out, a in recorded.items() if isinstance(recorded, dict) else ():
            art = _recorded_artifact(a)
            if art is not None and not _intact(art):
                return Prediction(label, "rebuild", f"output {out} ({art.path}) changed or is gone")
        return Prediction(label, "rebuild", "its state file is not one this netvm reads")

    def _save(
        self,
        state_file: Path,
        key: str,
        arts: dict[str, Artifact],
        details: dict[str, Any],
        inputs: dict[str, Any] | None = None,
    ) -> None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "key": key,
            "inputs": inputs or {},
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


@dataclass(frozen=True)
class Prediction:
    """What the next build would do with one step: "cached" (reused, with these
    artifacts), "rebuild" (and why) or "skipped" (and why)."""

    name: str
    status: str
    reason: str = ""
    changed: list[str] = field(default_factory=list)  # the inputs that differ, if known
    artifacts: Mapping[str, Artifact] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}" if self.reason else self.status

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "reason": self.reason}
        if self.changed:
            out["changed"] = self.changed
        return out


class PlanRunner(StepRunner):
    """A StepRunner that runs nothing: for every step the build code hands it, it records
    what a real run would do (`predictions`) and passes on the artifacts a cached step
    recorded, so the later steps' inputs are computed as the build computes them.

    A step that would be rebuilt makes its outputs `pending`: `reads` names the earlier
    outputs each step takes, and a step that reads a pending one is predicted to be
    rebuilt after it (its inputs are only known once that step has run). Its outputs,
    by step (`outputs`), become pending in turn. `pending` may be shared between the
    runners of one build (a board and its seL4 variant).
    """

    def __init__(
        self,
        build_dir: Path,
        *,
        reads: Mapping[str, tuple[str, ...]],
        outputs: Mapping[str, tuple[str, ...]],
        pending: dict[str, str] | None = None,
        label: str = "",
    ) -> None:
        super().__init__(build_dir, force=False, label=label)
        self.reads = reads
        self.outputs = outputs
        self.pending: dict[str, str] = {} if pending is None else pending
        self.predictions: list[Prediction] = []

    def _waits_for(self, name: str) -> list[str]:
        """The earlier steps whose pending outputs step `name` reads."""
        return sorted({self.pending[a] for a in self.reads.get(name, ()) if a in self.pending})

    def run(
        self, name: str, inputs: Mapping[str, Any], run: Callable[[], StepOutput]
    ) -> StepRecord:
        waits = self._waits_for(name)
        if waits:
            label = self.label + name
            prediction = Prediction(label, "rebuild", f"after {', '.join(waits)}")
        else:
            prediction = self.predict(name, inputs)
        self.predictions.append(prediction)
        if prediction.status == "cached":
            self.artifacts.update(prediction.artifacts)
        else:
            state = _read_state(self.state_dir / f"{name}.json") or {}
            before = state.get("artifacts")
            for out in self.outputs.get(name, ()):
                self.pending[out] = self.label + name
                a = before.get(out) if isinstance(before, dict) else None
                art = _recorded_artifact(a)
                # The last build's output stands in, so the later steps see one.
                self.artifacts[out] = art or Artifact(self.build_dir / name / out, "", 0)
        record = StepRecord(self.label + name, prediction.status, 0.0, str(prediction.reason))
        self.records.append(record)
        return record

    def skip(self, name: str, note: str) -> None:
        self.predictions.append(Prediction(self.label + name, "skipped", note))
        super().skip(name, note)

    def fail(self, name: str, seconds: float, note: str) -> None:
        self.predictions.append(Prediction(self.label + name, "failed", note))
        super().fail(name, seconds, note)


def _read_state(state_file: Path) -> dict[str, Any] | None:
    """A state file's JSON object; None when it is missing, unreadable or not an object."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return state if isinstance(state, dict) else None


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
