"""Network namespaces and the veth pair of the host simulation.

Owns: creating the driver's namespace (one end of a veth pair, named like the guest's
interface) and the peer's namespace (the other end with the peer address), and removing
them together with every process inside. The namespace names are the run's own (the
board's names tagged with the run, netvm.sim.runs), so runs on one host never meet; the
interfaces keep the board's names inside them. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from netvm.core.errors import UserError

NETNS_DIR = "/run/netns"  # where `ip netns` keeps the named namespaces


@dataclass(frozen=True)
class NetnsConfig:
    driver_ns: str
    peer_ns: str
    driver_if: str
    peer_if: str
    peer_address: str  # CIDR

    @classmethod
    def from_settings(
        cls, settings: dict[str, object], tag: str, peer_address: str | None = None
    ) -> NetnsConfig:
        """The namespaces of the run tagged `tag` (netvm.sim.runs): the settings' names
        with the tag appended (netvm-peer -> netvm-peer-4242-1)."""
        return cls(
            driver_ns=f"{settings['driver_namespace']}-{tag}",
            peer_ns=f"{settings['peer_namespace']}-{tag}",
            driver_if=str(settings["driver_interface"]),
            peer_if=str(settings["peer_interface"]),
            peer_address=peer_address or str(settings["peer_address"]),
        )


def run(cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise UserError(f"{cmd[0]}: not installed", hint="run ./bootstrap") from exc
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def in_ns(ns: str, cmd: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def exists(ns: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, ns))


def ns_pids(ns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split()]


def remove(ns: str) -> None:
    """Kill every process in `ns`, then delete it (its veth end goes with it)."""
    if not exists(ns):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for p in ns_pids(ns) if p != os.getpid()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2.0
        while pids and time.monotonic() < deadline and ns_pids(ns):
            time.sleep(0.05)
        if not ns_pids(ns):
            break
    run(["ip", "netns", "del", ns], check=False)


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError(
            "the host simulation needs root for network namespaces and veth pairs",
            hint="run as root (or with CAP_NET_ADMIN and CAP_SYS_ADMIN)",
        )


def create(cfg: NetnsConfig, *, mtu: int | None = None) -> None:
    """Fresh namespaces and veth pair (a leftover of the same name is removed first)."""
    require_root()
    teardown(cfg)
    d, p = cfg.driver_ns, cfg.peer_ns
    run(["ip", "netns", "add", d])
    run(["ip", "netns", "add", p])
    run(
        [
            "ip",
            "link",
            "add",
            cfg.driver_if,
            "netns",
            d,
            "type",
            "veth",
            "peer",
            "name",
            cfg.peer_if,
            "netns",
            p,
        ]
    )
    for ns, ifname in ((d, cfg.driver_if), (p, cfg.peer_if)):
        # No IPv6 chatter (router solicitations, MLD) mixed into the tests' traffic.
        run(
            in_ns(ns, ["sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6"]),
            check=False,
        )
        run(in_ns(ns, ["ip", "link", "set", "lo", "up"]))
        if mtu:
            run(in_ns(ns, ["ip", "link", "set", ifname, "mtu", str(mtu)]))
    # As the guest's init script does: no segmentation/receive offloads on the driver's
    # interface. On the peer, no TX checksum offload, so frames carry real checksums.
    run(
        in_ns(
            d,
            [
                "ethtool",
                "-K",
                cfg.driver_if,
                "gso",
                "off",
                "gro",
                "off",
                "tso",
                "off",
                "tx",
                "off",
                "rx",
                "off",
            ],
        ),
        check=False,
    )
    run(
        in_ns(p, ["ethtool", "-K", cfg.peer_if, "tx", "off", "gso", "off", "tso", "off"]),
        check=False,
    )
    run(in_ns(p, ["ip", "addr", "add", cfg.peer_address, "dev", cfg.peer_if]))
    run(in_ns(d, ["ip", "link", "set", cfg.driver_if, "up"]))
    run(in_ns(p, ["ip", "link", "set", cfg.peer_if, "up"]))


def teardown(cfg: NetnsConfig) -> None:
    remove(cfg.driver_ns)
    remove(cfg.peer_ns)
