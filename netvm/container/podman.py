"""How netvm drives podman on the host it runs on.

Owns the flags this host needs for podman to start a container at all, found by looking
at the host rather than left to the user:

- a host on cgroups v1 (or the hybrid layout, v2 mounted beside v1) needs the cgroupfs
  manager and the runc runtime: crun refuses the hybrid layout, and without systemd as
  init the systemd manager has nothing to talk to;
- podman's default resource limits (nofile 1048576) are more than a runtime without
  CAP_SYS_RESOURCE may set, which a sandboxed host's root lacks ("error setting rlimit
  type 7: operation not permitted"), so every container gets the caller's own limits,
  which any runtime can set. nproc is also capped at kernel.pid_max: no more processes
  than that can exist, and a runtime was seen to refuse a larger value.

Podman from Debian 12 (4.3) is the reference; the image it builds also loads into Docker
(``podman save | docker load``).
"""

from __future__ import annotations

import resource
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netvm.core.errors import UserError

CGROUP_ROOT = Path("/sys/fs/cgroup")
PID_MAX = Path("/proc/sys/kernel/pid_max")


@dataclass(frozen=True)
class Podman:
    """The podman command line for this host: global flags, and the resource limits
    every container it starts (and every build step) gets."""

    global_flags: tuple[str, ...]
    ulimits: tuple[str, ...]  # --ulimit pairs: `podman run` and `podman build` take both
    reasons: tuple[str, ...]  # why each non-default flag is there, for the build log

    def command(self, sub: str, *args: str) -> list[str]:
        return ["podman", *self.global_flags, sub, *args]

    def image_exists(self, ref: str) -> bool:
        run = subprocess.run(self.command("image", "exists", ref), check=False)
        return run.returncode == 0


def _limit(value: int) -> str:
    return "-1" if value == resource.RLIM_INFINITY else str(value)


def _ulimits(pid_max: int | None) -> tuple[list[str], list[str]]:
    flags: list[str] = []
    reasons: list[str] = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    flags += ["--ulimit", f"nofile={_limit(soft)}:{_limit(hard)}"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if pid_max is not None:
        soft = pid_max if soft == resource.RLIM_INFINITY else min(soft, pid_max)
        hard = pid_max if hard == resource.RLIM_INFINITY else min(hard, pid_max)
    flags += ["--ulimit", f"nproc={_limit(soft)}:{_limit(hard)}"]
    reasons.append("--ulimit: the caller's own limits (nproc capped at kernel.pid_max)")
    return flags, reasons


def cgroup_v2_only(root: Path = CGROUP_ROOT) -> bool:
    """True on a host with the unified hierarchy alone (cgroup2 mounted at the root)."""
    return (root / "cgroup.controllers").is_file()


def host_flags(cgroup_root: Path = CGROUP_ROOT, pid_max_file: Path = PID_MAX) -> Podman:
    """The podman flags this host needs, from its cgroup layout and limits."""
    global_flags: list[str] = []
    reasons: list[str] = []
    if not cgroup_v2_only(cgroup_root):
        global_flags += ["--cgroup-manager=cgroupfs", "--runtime", "runc"]
        reasons.append(
            "--cgroup-manager=cgroupfs --runtime runc: cgroups v1 or hybrid on this host"
        )
    try:
        pid_max: int | None = int(pid_max_file.read_text())
    except (OSError, ValueError):
        pid_max = None
    flags, why = _ulimits(pid_max)
    return Podman(tuple(global_flags), tuple(flags), tuple(reasons + why))


def detect() -> Podman:
    """`host_flags()`, once podman (and the runtime those flags name) are known to be
    installed; a UserError naming the package otherwise."""
    if shutil.which("podman") is None:
        raise UserError(
            "podman is not installed", hint="run ./bootstrap --container (Debian package podman)"
        )
    found = host_flags()
    if "runc" in found.global_flags and shutil.which("runc") is None:
        raise UserError(
            "this host has cgroups v1 (or the hybrid layout), which needs the runc "
            "runtime, and runc is not installed",
            hint="run ./bootstrap --container (Debian package runc)",
        )
    return found


def run_checked(cmd: Sequence[str]) -> str:
    """Run a short podman query and return its stdout; its stderr in a UserError when
    it fails (a podman that cannot start is the host's set-up, not netvm's fault)."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UserError(
            f"{' '.join(cmd[:3])} … failed (exit status {proc.returncode}): "
            f"{proc.stderr.strip()[-500:]}",
            hint="invoke doctor checks this host; docs/ci.md, 'Troubleshooting'",
        )
    return proc.stdout
