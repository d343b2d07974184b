"""The TX ring socket really gets the options the TX path's cost depends on.

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


def test_tx_ring_bypasses_the_qdisc_with_frame_offsets_loss_and_a_vnet_header() -> None:
    ns = f"netvm-txopt-{os.getpid()}"
    run(["ip", "netns", "add", ns])
    try:
        run(in_ns(ns, ["ip", "link", "add", "tst0", "type", "veth", "peer", "name", "tst1"]))
        run(in_ns(ns, ["ip", "link", "set", "tst0", "mtu", "1400", "up"]))
        proc = subprocess.run(
            in_ns(ns, [sys.executable, "-c", PROBE]),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(DRIVER_DIR)},
            check=True,
        )
    finally:
        remove(ns)
    got = json.loads(proc.stdout)
    assert got["options"] == {
        "qdisc_bypass": 1, "loss": 1, "tx_has_off": 1, "vnet_hdr": 1, "version": 1
    }  # fmt: skip
    assert got["slots"] == 256  # 4 blocks of 33 pages, 64 slots of 2112 bytes each
    assert got["mtu"] == [1400, 1414]  # read from the link: the driver checks it itself
