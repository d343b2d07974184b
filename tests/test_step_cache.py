"""StepRunner's cache: a step is `cached` only when its outputs still have the recorded
contents, and a state file it cannot trust means running the step again."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netvm.core.pipeline import StepOutput, StepRunner

INPUTS = {"version": 1}


class Step:
    """A step writing two small files; counts its runs."""

    def __init__(self, tmp_path: Path) -> None:
        self.build = tmp_path / "build"
        self.image = tmp_path / "out/image.bin"
        self.config = tmp_path / "out/config.txt"
        self.runs = 0

    def __call__(self) -> StepOutput:
        self.runs += 1
        self.image.parent.mkdir(parents=True, exist_ok=True)
        self.image.write_bytes(b"image contents\n" * 100)
        self.config.write_text("CONFIG_A=y\n")
        return StepOutput({"image": self.image, "config": self.config}, {"runs": self.runs})

    def run(self, inputs: dict[str, Any] = INPUTS, *, force: bool = False) -> str:
        runner = StepRunner(self.build, force=force)
        return runner.run("image", inputs, self).status

    @property
    def state_file(self) -> Path:
        return self.build / "state/image.json"


@pytest.fixture
def step(tmp_path: Path) -> Step:
    s = Step(tmp_path)
    assert s.run() == "built" and s.runs == 1
    return s


def test_an_untouched_output_stays_cached(step: Step) -> None:
    assert step.run() == "cached" and step.runs == 1
    runner = StepRunner(step.build, force=False)
    record = runner.run("image", INPUTS, step)
    assert record.details == {"runs": 1}
    assert runner.artifacts["image"].path == step.image
    assert runner.artifacts["image"].bytes == len(b"image contents\n" * 100)
    # Touching an output without changing it is no reason to run the step again.
    os.utime(step.image, ns=(1, 1))
    assert step.run() == "cached" and step.runs == 1


def test_changed_inputs_or_force_run_again(step: Step) -> None:
    assert step.run({"version": 2}) == "built" and step.runs == 2
    assert step.run({"version": 2}, force=True) == "built" and step.runs == 3


def edit_in_place(path: Path, change: Callable[[bytes], bytes]) -> None:
    """Change the contents, keeping the size and putting the mtime back."""
    st = path.stat()
    data = path.read_bytes()
    new = change(data)
    assert len(new) == len(data) and new != data
    path.write_bytes(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


@pytest.mark.parametrize("output", ["image", "config"])
def test_a_same_size_same_mtime_edit_runs_the_step_again(step: Step, output: str) -> None:
    edit_in_place(step.image if output == "image" else step.config, lambda d: d.upper())
    assert step.run() == "built" and step.runs == 2
    assert step.image.read_bytes() == b"image contents\n" * 100  # rebuilt
    assert step.run() == "cached" and step.runs == 2


def test_a_resized_or_missing_output_runs_the_step_again(step: Step) -> None:
    step.config.write_text("CONFIG_A=n\nCONFIG_B=y\n")
    assert step.run() == "built" and step.runs == 2
    step.image.unlink()
    assert step.run() == "built" and step.runs == 3


def state_shapes(good: dict[str, Any]) -> dict[str, str]:
    """Corrupt, truncated and ill-shaped versions of the state file `good`."""
    text = json.dumps(good)
    art = good["artifacts"]["image"]

    def with_(**changes: Any) -> str:
        return json.dumps({**good, **changes})

    def with_image(**changes: Any) -> str:
        return with_(artifacts={**good["artifacts"], "image": {**art, **changes}})

    def with_image_value(value: Any) -> str:
        return with_(artifacts={**good["artifacts"], "image": value})

    def without_image(key: str) -> str:
        return with_image_value({k: v for k, v in art.items() if k != key})

    return {
        "empty": "",
        "truncated": text[: len(text) // 2],
        "not json": "key = 1\n",
        "a list": json.dumps([good]),
        "null": "null",
        "a string": json.dumps(text),
        "artifacts a list": with_(artifacts=list(good["artifacts"].values())),
        "artifacts null": with_(artifacts=None),
        "artifacts missing": json.dumps({k: v for k, v in good.items() if k != "artifacts"}),
        "details a list": with_(details=[1, 2]),
        "details missing": json.dumps({k: v for k, v in good.items() if k != "details"}),
        "key missing": json.dumps({k: v for k, v in good.items() if k != "key"}),
        "an artifact a string": with_image_value(art["path"]),
        "path missing": without_image("path"),
        "sha256 missing": without_image("sha256"),
        "bytes missing": without_image("bytes"),
        "path a number": with_image(path=7),
        "path empty": with_image(path=""),
        "path with a NUL": with_image(path=art["path"] + "\u0000x"),
        "sha256 a number": with_image(sha256=0),
        "sha256 wrong": with_image(sha256="0" * 64),
        "bytes a string": with_image(bytes=str(art["bytes"])),
        "bytes a float": with_image(bytes=float(art["bytes"])),
        "bytes true": with_image(bytes=True),
        "bytes wrong": with_image(bytes=art["bytes"] + 1),
        "deeply nested": "[" * 100000 + "]" * 100000,
    }


# The shape of a state file, for the test ids; the tests use the one a run wrote.
EXAMPLE = {
    "key": "0" * 64,
    "artifacts": {"image": {"path": "/b/image.bin", "sha256": "1" * 64, "bytes": 1}},
    "details": {},
}


def test_a_state_file_records_path_sha256_and_size(step: Step) -> None:
    good = json.loads(step.state_file.read_text())
    assert {"key", "artifacts", "details"} <= set(good)
    assert {"path", "sha256", "bytes"} <= set(good["artifacts"]["image"])
    assert good["artifacts"]["image"]["path"] == str(step.image)


@pytest.mark.parametrize("shape", sorted(state_shapes(EXAMPLE)))
def test_an_unusable_state_file_runs_the_step_again(step: Step, shape: str) -> None:
    good = json.loads(step.state_file.read_text())
    step.state_file.write_text(state_shapes(good)[shape])
    assert step.run() == "built" and step.runs == 2
    assert step.run() == "cached" and step.runs == 2  # the run wrote a good one again


def test_an_unreadable_state_file_runs_the_step_again(step: Step) -> None:
    step.state_file.write_bytes(b"\xff\xfe not utf-8")
    assert step.run() == "built" and step.runs == 2
    step.state_file.unlink()
    step.state_file.mkdir()  # not a file at all: read_text fails
    try:
        assert StepRunner(step.build, force=False)._load_cached(step.state_file, "k") is None
    finally:
        step.state_file.rmdir()
