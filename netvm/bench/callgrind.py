"""Instruction counts of a driver under valgrind's callgrind, for a fixed number of frames.

Owns: the valgrind command line, controlling a running callgrind (instrumentation on,
zero the counters, dump them) through ``callgrind_control``, and reading a dump's total.
The harness runs the traffic in between (docs/bench.md, "Instructions per frame").

Why callgrind: it counts the instructions the process executes in user space (the
driver's own code, Python's interpreter, libc), which do not depend on what else runs on
the host, unlike CPU time. Why zero and dump around the frames instead of a whole run:
start-up (imports, mapping, the socket set-up) and shutdown are then not in the count,
and a warm-up before the zero lets the interpreter's specialisation and the caches of
both drivers settle, so the figure is the steady per-frame cost. Instrumentation starts
off (``--instr-atstart=no``) so the driver's start-up runs at valgrind's fast speed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

VALGRIND = (
    "valgrind",
    "--tool=callgrind",
    "--instr-atstart=no",  # start-up is not measured: run it fast
    "--dump-line=no",  # only totals are read: keep the dumps small
    "--vgdb=yes",  # callgrind_control talks to the process through vgdb
)
SUMMARY = re.compile(r"^summary:\s*(\d+)", re.MULTILINE)
TRIGGER = re.compile(r"^desc: Trigger: dump (\S+)", re.MULTILINE)


class CallgrindError(RuntimeError):
    """callgrind_control failed or a dump is missing."""


def available() -> bool:
    return all(shutil.which(tool) for tool in ("valgrind", "callgrind_control"))


def valgrind_prefix(out_dir: Path) -> list[str]:
    """valgrind's options before the program; dumps go to out_dir/callgrind.out.PID[.N]."""
    return [*VALGRIND, f"--callgrind-out-file={out_dir}/callgrind.out.%p"]


def dump_summary(text: str) -> int:
    """The instruction count (event Ir) of one dump file."""
    m = SUMMARY.search(text)
    if not m:
        raise CallgrindError("callgrind dump without a summary line")
    return int(m.group(1))


@dataclass(frozen=True)
class Callgrind:
    """A process running under callgrind, by PID."""

    pid: int
    out_dir: Path
    timeout: float = 60.0

    def control(self, *args: str) -> None:
        proc = subprocess.run(
            ["callgrind_control", *args, str(self.pid)],
            capture_output=True, text=True, timeout=self.timeout, check=False,
        )  # fmt: skip
        if proc.returncode or "OK." not in proc.stdout:
            raise CallgrindError(
                f"callgrind_control {' '.join(args)} {self.pid}: "
                f"{(proc.stdout + proc.stderr).strip()[-300:]}"
            )

    def instrument(self) -> None:
        self.control("--instr=on")

    def zero(self) -> None:
        self.control("--zero")

    def dump(self, label: str) -> int:
        """Dump the counts since the last zero; return their instruction total."""
        if not re.fullmatch(r"[\w.-]+", label):
            raise ValueError(f"dump label {label!r}: letters, digits, '_', '.', '-' only")
        self.control(f"--dump={label}")
        for path in sorted(self.out_dir.glob(f"callgrind.out.{self.pid}.*")):
            text = path.read_text(errors="replace")
            m = TRIGGER.search(text)
            if m and m.group(1) == label:
                return dump_summary(text)
        raise CallgrindError(f"no callgrind dump labelled {label} in {self.out_dir}")


def per_frame(instructions: int, frames: int) -> float | None:
    return round(instructions / frames, 1) if frames > 0 else None
