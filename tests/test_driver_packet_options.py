"""The packet sockets really get the options the data path's cost depends on.

A setsockopt the kernel silently ignored (or a constant with the wrong number) would
not show as a failure anywhere: frames would still go out, only through the qdisc, or
starting at the wrong offset. So the ring is opened on a real veth in a namespace of its
own and the options are read back with getsockopt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from netvm.sim.netns import in_ns, remove, run
from tests.harness import DRIVER_DIR

pytestmark = pytest.mark.netns

PROBE = """
import json, struct, sys
from netvm_driver import ring
r = ring.open_tx_ring("tst0")
opts = {name: struct.unpack("i", r.sock.getsockopt(ring.SOL_PACKET, opt, 4))[0]
        for name, opt in (("qdisc_bypass", ring.PACKET_QDISC_BYPASS),
                          ("loss", ring.PACKET_LOSS), ("tx_has_off", ring.PACKET_TX_HAS_OFF),
                          ("vnet_hdr", ring.PACKET_VNET_HDR), ("version", ring.PACKET_VERSION))}
print(json.dumps({"options": opts, "slots": len(r.slots), "mtu": [r.mtu, r.max_len]}))
"""


def probe_on_a_veth(name: str, script: str, setup: list[list[str]]) -> Any:
    """Run `script` (the driver importable) in a namespace of its own holding the veth
    pair tst0/tst1, after the `setup` commands there; what it printed, as JSON."""
    ns = f"netvm-{name}-{os.getpid()}"
    run(["ip", "netns", "add", ns])
    try:
        run(in_ns(ns, ["ip", "link", "add", "tst0", "type", "veth", "peer", "name", "tst1"]))
        for command in setup:
            run(in_ns(ns, command))
        proc = subprocess.run(
            in_ns(ns, [sys.executable, "-c", script]),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(DRIVER_DIR)},
            check=True,
        )
    finally:
        remove(ns)
    return json.loads(proc.stdout)


def test_tx_ring_bypasses_the_qdisc_with_frame_offsets_loss_and_a_vnet_header() -> None:
    got = probe_on_a_veth("txopt", PROBE, [["ip", "link", "set", "tst0", "mtu", "1400", "up"]])
    assert got["options"] == {
        "qdisc_bypass": 1, "loss": 1, "tx_has_off": 1, "vnet_hdr": 1, "version": 1
    }  # fmt: skip
    assert got["slots"] == 256  # 4 blocks of 33 pages, 64 slots of 2112 bytes each
    assert got["mtu"] == [1400, 1414]  # read from the link: the driver checks it itself


QUEUED = """
import json, socket, time
from netvm_driver import ring
rx = ring.open_packet_socket("tst0")
probe = ring.queued_probe(rx)
seen = [probe()]
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.bind(("tst1", 0))
for n in (60, 1514):
    tx.send(b"\\xff" * 6 + b"\\x02" * 6 + b"\\x88\\xb5" + bytes(n - 14))
time.sleep(0.2)
for _ in range(2):
    seen.append(probe())
    rx.recv(4096)
seen.append(probe())
print(json.dumps(seen))
"""


def test_the_queue_probe_gives_the_next_frames_length_and_zero_when_empty() -> None:
    # The socket RX path asks SIOCINQ whether a second frame is queued after the first
    # of a wake-up: on a packet socket it must be the head frame's length, 0 when empty.
    # No IPv6: its link-up chatter (DAD, MLD) would be queued among the test's frames.
    setup = [
        ["sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1"] for scope in ("all", "default")
    ]
    setup += [["ip", "link", "set", link, "up"] for link in ("tst0", "tst1")]
    assert probe_on_a_veth("inq", QUEUED, setup) == [0, 60, 1514, 0]
