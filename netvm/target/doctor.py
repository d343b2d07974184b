"""`invoke doctor`: does this host have what each task needs?

Owns the list of host requirements by task and step: the commands (each with the Debian
package that has it), the cross compiler of every board's `cross_compile`, the kernel
source package, Debian's arm64 package lists, U-Boot for QEMU, network namespaces, root,
UDP port 69, and QEMU's accelerators. Every problem comes with its fix (the apt-get
line, the command to run). A requirement a task cannot do without is an error; what only
makes a task slower or is busy right now (KVM, port 69 in use) is a note.
Must not: install or change anything.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import platform
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netvm.board import Board, DebianKernelSource, load_board
from netvm.container.podman import cgroup_v2_only
from netvm.core.errors import UserError
from netvm.guest.qemu_machine import QEMU_BINARIES
from netvm.microkit.handoff import HOST_TOOLS as MICROKIT_TOOLS
from netvm.target.flash import QEMU_UBOOT
from netvm.target.sdcard import TOOLS as SDCARD_TOOLS

# command -> (Debian package, what needs it). The Microkit and SD-card commands are
# added from their own modules' tables below.
COMMANDS: dict[str, tuple[str, str]] = {
    "make": ("make", "build (kernel step), bench"),
    "gcc": ("gcc", "build (kernel step: host programs), bench (C baseline)"),
    "flex": ("flex", "build (kernel step)"),
    "bison": ("bison", "build (kernel step)"),
    "bc": ("bc", "build (kernel step)"),
    "tar": ("tar", "build (kernel source)"),
    "dpkg-query": ("dpkg", "build (kernel source version)"),
    "dtc": ("device-tree-compiler", "build (dtb step), check"),
    "dpkg-deb": ("dpkg", "build (rootfs step, provider debian)"),
    "apt-cache": ("apt", "build (rootfs step, provider debian), lock"),
    "apt-get": ("apt", "build (rootfs step, provider debian)"),
    "qemu-aarch64-static": ("qemu-user-static", "build (rootfs step: measures the imports)"),
    "qemu-system-aarch64": ("qemu-system-arm", "run, flash (QEMU boards), build (QEMU boards)"),
    "ip": ("iproute2", "sim, run, bench"),
    "ethtool": ("ethtool", "sim, run"),
    "ping": ("iputils-ping", "run --check"),
    "dnsmasq": ("dnsmasq-base", "run --sel4"),
    "valgrind": ("valgrind", "bench (instructions per frame)"),
}
for _tool, _package in MICROKIT_TOOLS.items():
    COMMANDS.setdefault(_tool, (_package, "build (microkit step)"))
for _tool, _package in SDCARD_TOOLS.items():
    COMMANDS.setdefault(_tool, (_package, "flash --method sdcard"))
OPTIONAL_COMMANDS: dict[str, tuple[str, str]] = {
    "ccache": ("ccache", "build (kernel step: faster rebuilds)"),
}
# Only the build container needs these (./bootstrap --container installs them).
CONTAINER_TASKS = "container.build, container.run"
CONTAINER_COMMANDS: dict[str, str] = {"podman": "podman", "debootstrap": "debootstrap"}
ROOT_TASKS = "sim, run (with the simulated VMM), flash over TFTP, bench"
TFTP_PORT = 69


@dataclass(frozen=True)
class Check:
    """One requirement: what, who needs it, whether it is met, and how to meet it."""

    name: str
    needed_by: str
    ok: bool
    detail: str  # what was found, or what is wrong
    fix: str = ""
    package: str = ""  # the Debian package that meets it, for the one apt-get line
    required: bool = True  # False: a note; it never makes the doctor fail

    @property
    def failed(self) -> bool:
        return self.required and not self.ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "needed_by": self.needed_by,
            "ok": self.ok,
            "required": self.required,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class DoctorReport:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def packages(self) -> list[str]:
        return sorted({c.package for c in self.checks if c.failed and c.package})

    def summary(self) -> str:
        lines = []
        for c in self.checks:
            mark = "ok  " if c.ok else ("MISS" if c.required else "note")
            line = f"{mark} {c.name}: {c.detail} [{c.needed_by}]"
            if not c.ok and c.fix:
                line += f"\n       fix: {c.fix}"
            lines.append(line)
        failed = [c for c in self.checks if c.failed]
        required = [c for c in self.checks if c.required]
        notes = sum(1 for c in self.checks if not c.required and not c.ok)
        noted = f" ({notes} note{'s' if notes != 1 else ''})" if notes else ""
        if not failed:
            lines.append(f"all {len(required)} required checks passed{noted}")
        else:
            lines.append(f"{len(failed)} of {len(required)} required checks failed{noted}")
            if self.packages:
                lines.append(f"install: apt-get install -y {' '.join(self.packages)}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [c.as_dict() for c in self.checks],
            "apt_get_install": self.packages,
        }


def _install(package: str) -> str:
    return f"apt-get install {package} (./bootstrap installs it)"


def command_check(tool: str, package: str, needed_by: str, *, required: bool = True) -> Check:
    path = shutil.which(tool)
    if path is not None:
        return Check(tool, needed_by, True, path, package=package, required=required)
    return Check(tool, needed_by, False, "not found on PATH", _install(package), package, required)


def _boards(root: Path) -> tuple[list[Board], list[Check]]:
    boards, notes = [], []
    for file in sorted((root / "boards").glob("*/board.yaml")):
        try:
            boards.append(load_board(str(file), root))
        except UserError as exc:
            notes.append(
                Check(
                    f"board {file.parent.name}",
                    "the per-board checks",
                    False,
                    f"does not load ({len(exc.findings)} findings), so its tools are not checked",
                    f"invoke validate --board {file.parent.name}",
                    required=False,
                )
            )
    return boards, notes


def cross_compiler_checks(boards: list[Board]) -> list[Check]:
    """`<cross_compile>gcc` for every board, once per prefix."""
    by_prefix: dict[str, list[str]] = {}
    for b in boards:
        by_prefix.setdefault(b.cross_compile, []).append(b.name)
    checks = []
    for prefix, names in sorted(by_prefix.items()):
        package = f"gcc-{prefix.rstrip('-')}"
        check = command_check(
            f"{prefix}gcc", package, f"build (kernel step) of {', '.join(sorted(names))}"
        )
        checks.append(check)
    return checks


def kernel_source_checks(boards: list[Board]) -> list[Check]:
    """The Debian kernel source packages the boards build from."""
    by_package: dict[str, list[str]] = {}
    for b in boards:
        spec = b.kernel.source
        if isinstance(spec, DebianKernelSource):
            by_package.setdefault(spec.package, []).append(b.name)
    checks = []
    for package, names in sorted(by_package.items()):
        tarball = Path("/usr/src") / f"{package}.tar.xz"
        ok = tarball.is_file()
        checks.append(
            Check(
                package,
                f"build (kernel, dtb steps) of {', '.join(sorted(names))}",
                ok,
                str(tarball) if ok else f"{tarball} not found",
                "" if ok else _install(package),
                package,
            )
        )
    return checks


def arm64_lists_check() -> Check:
    """Debian's arm64 packages: the rootfs step downloads python3 and busybox from them."""
    needed_by = "build (rootfs step, provider debian)"
    fix = "dpkg --add-architecture arm64 && apt-get update"
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        return Check("arm64 packages", needed_by, False, "cannot tell: dpkg not found", fix)
    proc = subprocess.run(
        [dpkg, "--print-foreign-architectures"], capture_output=True, text=True, check=False
    )
    if "arm64" not in proc.stdout.split():
        return Check("arm64 packages", needed_by, False, "arm64 is not a dpkg architecture", fix)
    lists = list(Path("/var/lib/apt/lists").glob("*binary-arm64_Packages*"))
    if not lists:
        return Check("arm64 packages", needed_by, False, "no arm64 package lists", "apt-get update")
    return Check("arm64 packages", needed_by, True, f"{len(lists)} package lists")


def uboot_check() -> Check:
    ok = QEMU_UBOOT.is_file()
    return Check(
        "u-boot-qemu",
        "flash (QEMU boards without --serial)",
        ok,
        str(QEMU_UBOOT) if ok else f"{QEMU_UBOOT} not found",
        "" if ok else _install("u-boot-qemu"),
        "u-boot-qemu",
    )


def netns_check() -> Check:
    needed_by = "sim, run, bench"
    if not Path("/proc/self/ns/net").exists():
        return Check(
            "network namespaces",
            needed_by,
            False,
            "this kernel has no network namespaces",
            "a kernel with CONFIG_NET_NS=y and CONFIG_VETH",
        )
    ip = shutil.which("ip")
    if ip is None:
        return Check(
            "network namespaces", needed_by, False, "ip not found", _install("iproute2"), "iproute2"
        )
    proc = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return Check(
            "network namespaces",
            needed_by,
            False,
            f"ip netns list failed: {proc.stderr.strip() or proc.returncode}",
            "a kernel with CONFIG_NET_NS=y; run as root",
        )
    return Check("network namespaces", needed_by, True, "supported (ip netns)")


def root_check() -> Check:
    euid = os.geteuid()
    return Check(
        "root",
        ROOT_TASKS,
        euid == 0,
        "running as root" if euid == 0 else f"running as uid {euid}",
        "run those tasks with sudo: sudo .venv/bin/invoke TASK",
    )


def port_check(port: int = TFTP_PORT) -> Check:
    """Whether netvm's TFTP server could listen on UDP `port` now."""
    needed_by = "flash over TFTP (U-Boot always asks port 69)"
    name = f"UDP port {port}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("0.0.0.0", port))
    except PermissionError:
        return Check(name, needed_by, False, "binding it needs root", "run flash with sudo")
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return Check(
                name,
                needed_by,
                False,
                "in use now (another TFTP server?)",
                "stop the other server while flashing (e.g. systemctl stop tftpd-hpa)",
                required=False,
            )
        return Check(name, needed_by, False, f"cannot bind: {exc.strerror}", "")
    return Check(name, needed_by, True, "bindable")


def accelerator_checks() -> list[Check]:
    """TCG (what netvm's QEMU boots use) and, as a note, KVM."""
    qemu = QEMU_BINARIES["arm64"]
    path = shutil.which(qemu)
    if path is None:
        return [
            Check(
                "QEMU TCG",
                "run, flash (QEMU boards)",
                False,
                f"cannot tell: {qemu} not found",
                _install("qemu-system-arm"),
                "qemu-system-arm",
            )
        ]
    proc = subprocess.run(
        [path, "-accel", "help"], capture_output=True, text=True, check=False, timeout=60
    )
    accels = set(proc.stdout.split())
    tcg = Check(
        "QEMU TCG",
        "run, flash (QEMU boards)",
        "tcg" in accels,
        "available" if "tcg" in accels else f"{qemu} -accel help lists no tcg",
        "" if "tcg" in accels else "install Debian's qemu-system-arm (built with TCG)",
    )
    machine = platform.machine()
    if machine not in ("aarch64", "arm64"):
        kvm = Check(
            "KVM",
            "run (faster boots)",
            False,
            f"not usable for arm64 guests on this {machine} host: the boots use TCG",
            required=False,
        )
    else:
        usable = os.access("/dev/kvm", os.R_OK | os.W_OK) and "kvm" in accels
        kvm = Check(
            "KVM",
            "run (faster boots)",
            usable,
            "usable" if usable else "/dev/kvm is missing or not accessible: the boots use TCG",
            "" if usable else "load kvm and add the user to group kvm (or run as root)",
            required=False,
        )
    return [tcg, kvm]


def container_checks() -> list[Check]:
    """Notes, not failures: the build container is one way to build, not a need."""
    fix = "./bootstrap --container"
    tools = dict(CONTAINER_COMMANDS)
    if not cgroup_v2_only():
        tools["runc"] = "runc"  # podman needs it on cgroups v1 or the hybrid layout
    checks = []
    for tool, package in tools.items():
        check = command_check(tool, package, CONTAINER_TASKS, required=False)
        checks.append(check if check.ok else dataclasses.replace(check, fix=fix))
    return checks


def run_doctor(root: Path) -> DoctorReport:
    """Every check, in the order of the tasks' steps."""
    boards, board_notes = _boards(root)
    checks: list[Check] = []
    for tool, (package, needed_by) in COMMANDS.items():
        checks.append(command_check(tool, package, needed_by))
    for tool, (package, needed_by) in OPTIONAL_COMMANDS.items():
        checks.append(command_check(tool, package, needed_by, required=False))
    checks += cross_compiler_checks(boards)
    checks += kernel_source_checks(boards)
    checks.append(arm64_lists_check())
    checks.append(uboot_check())
    checks += accelerator_checks()
    checks.append(netns_check())
    checks.append(root_check())
    checks.append(port_check())
    checks += container_checks()
    return DoctorReport(tuple(checks + board_notes))
