"""The benchmark's C programs: compiled with the host's gcc at bench time, cached by hash.

Owns: compiling gen.c (the traffic generator), baseline.c (the upstream-style C
driver) and wake.c (the wake-up floor probe) from this package's directory into
``build/bench/``; the binary's name carries the hash of its source and flags, so an
edited source is recompiled and an unchanged one is not. Needs gcc (./bootstrap
installs it).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from netvm.core.errors import UserError
from netvm.core.hosttools import compiler_version
from netvm.core.workspace import Workspace

HERE = Path(__file__).resolve().parent
# -fno-tree-loop-distribute-patterns keeps the baseline's byte-wise copies byte-wise
# (gcc may otherwise turn such a loop into a memcpy call).
CFLAGS = ("-O2", "-fno-tree-loop-distribute-patterns", "-Wall", "-Wextra")
SOURCES = {"gen": "gen.c", "baseline": "baseline.c", "wake": "wake.c"}


@dataclass(frozen=True)
class Tools:
    gen: Path
    baseline: Path
    wake: Path
    launcher: Path
    compiler: str


def compile_tool(name: str, out_dir: Path, cc: str = "gcc") -> Path:
    """Compile SOURCES[name] unless a binary for this source and flags exists."""
    src = HERE / SOURCES[name]
    digest = hashlib.sha256(src.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:12]
    out = out_dir / f"{name}-{digest}"
    if out.exists():
        return out
    if shutil.which(cc) is None:
        raise UserError(f"{cc}: not installed (needed to compile the benchmark's C programs)",
                        hint="run ./bootstrap")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    proc = subprocess.run(
        [cc, *CFLAGS, "-o", str(tmp), str(src)], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise UserError(f"{src}: gcc failed:\n{proc.stderr.strip()}")
    tmp.replace(out)
    return out


def build_tools(root: Path, cc: str = "gcc") -> Tools:
    out_dir = Workspace.at(root).build_root / "bench"
    return Tools(
        gen=compile_tool("gen", out_dir, cc),
        baseline=compile_tool("baseline", out_dir, cc),
        wake=compile_tool("wake", out_dir, cc),
        launcher=HERE / "launch_baseline.py",
        compiler=compiler_version(cc) or cc,
    )
