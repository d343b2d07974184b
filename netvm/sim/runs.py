"""The names of one run on a shared host, and the removal of dead runs' leftovers.

Owns: the run tag (`<pid>-<n>`: the pid of the process that owns the run and a counter
within that process) that every host-wide name of a run carries: its network namespaces
(`netvm-peer-4242-1`) and its run directory (`/dev/shm/netvm-sim-4242-1`). Runs on one
host (`invoke sim`, `invoke run`, `invoke run --sel4`, several in one test process)
therefore never share a name and never wait for each other. Interface names (the veth
ends, the taps) stay as the board gives them (`eth0`, `peer0`, `tap0`): each lives only
inside its run's own namespaces.

A run that could not clean up (SIGKILL, a crash) leaves names whose pid is gone;
`remove_stale` deletes those (killing what still runs in a namespace, such as an orphaned
QEMU) and is called by every run before it creates its own. A name whose pid is alive is
never touched, so a live run's namespaces are safe from every other run.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from netvm.sim import netns

PREFIX = "netvm-"
# A run-tagged name: netvm-<what>-<pid>-<n>.
TAGGED = re.compile(r"^netvm-[a-z0-9-]+?-(\d+)-(\d+)$")
# Run directories of earlier versions, tagged with the pid alone: netvm-sim-<pid>.
PID_ONLY = re.compile(r"^netvm-(?:sim|qemu|sel4)-(\d+)$")

_counter = itertools.count(1)
_counter_lock = threading.Lock()


@dataclass(frozen=True)
class RunTag:
    pid: int
    seq: int

    def __str__(self) -> str:
        return f"{self.pid}-{self.seq}"

    def name(self, base: str) -> str:
        """`base` tagged with this run: netvm-peer -> netvm-peer-4242-1."""
        return f"{base}-{self}"


def new_tag() -> RunTag:
    """A tag no other live run on this host has (pid, then a counter in this process)."""
    with _counter_lock:
        seq = next(_counter)
    return RunTag(os.getpid(), seq)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def owner_pid(name: str) -> int | None:
    """The pid a netvm run name carries, or None for a name that is not one."""
    m = TAGGED.match(name) or PID_ONLY.match(name)
    return int(m[1]) if m else None


def stale(name: str) -> bool:
    pid = owner_pid(name)
    return pid is not None and pid != os.getpid() and not pid_alive(pid)


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(netns.NETNS_DIR))
    except FileNotFoundError:
        return []


def remove_stale(run_root: Path | None = None, *, namespaces: bool = True) -> list[str]:
    """Delete the namespaces (with every process in them) and run directories under
    `run_root` of netvm runs whose owner is gone; what was removed."""
    removed: list[str] = []
    if namespaces:
        for ns in list_namespaces():
            if ns.startswith(PREFIX) and TAGGED.match(ns) and stale(ns):
                netns.remove(ns)
                removed.append(ns)
    if run_root is not None and run_root.is_dir():
        for path in sorted(run_root.glob(f"{PREFIX}*")):
            if path.is_dir() and stale(path.name):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path))
    return removed
