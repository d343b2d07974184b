"""The driver turns NIC offloads off itself (ethtool ioctl), checked with real ethtool."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.harness import DRIVER_DIR

NS = "netvm-offloads-test"
pytestmark = pytest.mark.netns


def ns(*cmd: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", NS, *cmd], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture()
def veth() -> Iterator[str]:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        ns("ip", "link", "add", "off0", "type", "veth", "peer", "name", "off1")
        ns("ethtool", "-K", "off0", "gro", "on", "tso", "on", "gso", "on", "tx", "on", "rx", "on")
        yield "off0"
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=True)


def features(iface: str) -> dict[str, str]:
    out = {}
    for line in ns("ethtool", "-k", iface).splitlines()[1:]:
        key, _, value = line.strip().partition(": ")
        out[key] = value.split()[0] if value else ""
    return out


def disable_in_namespace(socket_args: str, iface: str) -> str:
    """Run the driver's disable_offloads in the namespace; its result as JSON text."""
    script = (
        "import socket, json; from netvm_driver.offloads import disable_offloads\n"
        f"s = socket.socket({socket_args})\n"
        f"print(json.dumps(disable_offloads(s, {iface!r})))"
    )
    return subprocess.run(
        ["ip", "netns", "exec", NS, sys.executable, "-c", script],
        env={"PYTHONPATH": str(DRIVER_DIR)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_disable_offloads_turns_them_off(veth: str) -> None:
    before = features(veth)
    assert before["generic-receive-offload"] == "on" and before["tx-checksumming"] == "on"
    out = disable_in_namespace("socket.AF_PACKET, socket.SOCK_RAW", veth)
    assert '"gro": "off"' in out and '"tx-checksum": "off"' in out
    after = features(veth)
    # The legacy commands cover TCP segmentation for IPv4/IPv6 (the sub-features); the
    # aggregate line also counts newer kinds a host kernel may add, which only the kernel's
    # own TCP stack uses, never frames sent on a packet socket.
    for key in (
        "generic-receive-offload",
        "generic-segmentation-offload",
        "tx-tcp-segmentation",
        "tx-tcp6-segmentation",
        "tx-checksumming",
        "rx-checksumming",
    ):
        assert after[key] == "off", key


def test_a_missing_interface_is_reported_per_feature(veth: str) -> None:
    out = disable_in_namespace("socket.AF_INET, socket.SOCK_DGRAM", "nosuch0")
    assert (
        out.strip() == '{"gro": "ENODEV", "gso": "ENODEV", "tso": "ENODEV", '
        '"tx-checksum": "ENODEV", "rx-checksum": "ENODEV"}'
    )
