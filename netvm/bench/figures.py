"""The figures beside the measurements: the machine they ran on and the build's.

Owns: ``machine_info`` (CPU model and count, kernel, Python (the bench's and the one
running ours), compiler, load average, autogroup), recorded because absolute CPU figures
depend on them; and ``build_figures`` (image and initramfs sizes and step times from the
build manifest; with ``--build-figures`` a timed no-op build and a driver-only-change
rebuild).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from netvm.bench.tools import Tools
from netvm.builder.manifest import MANIFEST_NAME, read_manifest
from netvm.core.progress import Progress
from netvm.core.workspace import Workspace


def python_version(python: str) -> str:
    """The version of the interpreter at `python` (the one running ours)."""
    proc = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.stdout.strip() or "unknown"


def machine_info(tools: Tools, driver_python: str = sys.executable) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    autogroup = ""
    with contextlib.suppress(OSError):
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "driver_python": {"path": driver_python, "version": python_version(driver_python)},
        "compiler": tools.compiler,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "autogroup": autogroup,
    }


def timed(cmd: list[str], cwd: Path) -> float:
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return round(time.monotonic() - t, 2)


def build_figures(root: Path, board: str, measure: bool, progress: Progress) -> dict[str, Any]:
    """Image/initramfs sizes and step times from the manifest; timed rebuilds if asked."""
    out: dict[str, Any] = {"measured": measure}
    file = Workspace.at(root).build_root / board / MANIFEST_NAME
    manifest = read_manifest(file, str(file), root)
    for key, name in (("kernel_image", "image_bytes"), ("initramfs", "initramfs_bytes"),
                      ("loader_img", "loader_img_bytes")):  # fmt: skip
        art = manifest.get(key)
        out[name] = art.bytes if art else None
    if manifest.step_seconds:
        out["manifest_steps_s"] = dict(manifest.step_seconds)
    if not measure:
        return out
    build = [sys.executable, "-m", "invoke", "build", "--board", board]
    progress("build figures: settling build, then no-op build")
    timed(build, root)
    out["noop_build_s"] = timed(build, root)
    probe = root / "driver" / "netvm_driver" / "_bench_probe.py"
    progress("build figures: driver-only change")
    probe.write_text('"""Temporary module written by `invoke bench --build-figures`."""\n')
    try:
        out["driver_change_build_s"] = timed(build, root)
    finally:
        probe.unlink()
        timed(build, root)  # back to the unchanged tree
    return out
