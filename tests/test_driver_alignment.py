"""Device-memory safety of the real driver: every frame byte moves by an aligned copy.

In the guest the UIO maps are Device memory, where an unaligned access faults; no host
and no emulator shows it. So the driver runs here against the host simulation with real
packet sockets, in every RX/TX mode, with frames of every length class, inside a wrapper
that records each frame copy devmem makes and checks every buffer handed to a socket.
The test then asserts that every copy into a map starts 16-byte aligned and every copy
stays inside its buffer, and that no socket was ever given a view of a map (the kernel
aligns only its own side of a copy; docs/driver.md, "Device memory").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from netvm.board import Board
from netvm.sim import SimOptions, Simulation
from tests.harness import DRIVER_DIR, ROOT

pytestmark = pytest.mark.netns

# Runs the driver with devmem's copies and the socket calls recorded; the record is
# written at exit. Only observes: every call goes on to the real method.
WRAPPER = """
import atexit, json, sys
sys.path.insert(0, {driver_dir!r})
import _socket
from netvm_driver import devmem
from netvm_driver.__main__ import main

record_path = sys.argv.pop(1)
maps = {{}}  # id of each region's buffer -> region name
rec = {{"in": [], "out": [], "socket_on_map": []}}
Mem = devmem.DeviceMemory
real = {{n: getattr(Mem, n) for n in (
    "__init__", "copy_frame_in", "copy_frame_out", "copy_frames_out",
    "copy_buffer_heads_out", "copy_buffer_head_out", "copy_into_buffers")
    if hasattr(Mem, n)}}

def init(self, name, buf):
    real["__init__"](self, name, buf)
    maps[id(buf)] = name

def frame_in(self, dst, src, length):
    rec["in"].append((self.name, dst, length))
    return real["copy_frame_in"](self, dst, src, length)

def frame_out(self, src, dst, length):
    rec["out"].append((self.name, src, length))
    return real["copy_frame_out"](self, src, dst, length)

def frames_out(self, dst, moves):
    rec["out"] += [(self.name, moves[i], moves[i + 2]) for i in range(0, len(moves), 3)]
    return real["copy_frames_out"](self, dst, moves)

def heads_out(self, dst, at, stride, offsets, length):
    rec["out"] += [(self.name, off, length) for off in offsets]
    return real["copy_buffer_heads_out"](self, dst, at, stride, offsets, length)

def head_out(self, dst, at, src, length):
    rec["out"].append((self.name, src, length))
    return real["copy_buffer_head_out"](self, dst, at, src, length)

def into_buffers(self, src, offsets, starts, lengths, small=None):
    rec["in"] += [(self.name, off, n) for off, n in zip(offsets, lengths)]
    return real["copy_into_buffers"](self, src, offsets, starts, lengths, small)

spies = {{"copy_buffer_heads_out": heads_out, "copy_buffer_head_out": head_out,
         "copy_into_buffers": into_buffers,
         "__init__": init, "copy_frame_in": frame_in, "copy_frame_out": frame_out,
         "copy_frames_out": frames_out}}
for n in real:
    setattr(Mem, n, spies[n])

def check(call, buf):
    obj = memoryview(buf).obj
    if id(obj) in maps:
        rec["socket_on_map"].append((call, maps[id(obj)]))

class Spy(_socket.socket):
    __slots__ = ()
    def recv_into(self, buf, *a):
        check("recv_into", buf)
        return super().recv_into(buf, *a)
    def recvfrom_into(self, buf, *a):
        check("recvfrom_into", buf)
        return super().recvfrom_into(buf, *a)
    def recvmsg_into(self, bufs, *a):
        for b in bufs:
            check("recvmsg_into", b)
        return super().recvmsg_into(bufs, *a)
    def send(self, data, *a):
        check("send", data)
        return super().send(data, *a)
    def sendto(self, data, *a):
        check("sendto", data)
        return super().sendto(data, *a)
    def sendmsg(self, bufs, *a):
        for b in bufs:
            check("sendmsg", b)
        return super().sendmsg(bufs, *a)

_socket.socket = Spy  # the driver's modules call _socket.socket(...) at run time

def dump():
    with open(record_path, "w") as f:
        json.dump(rec, f)

atexit.register(dump)
sys.exit(main())
"""

MODES = [
    ("socket", "socket", ()),
    ("socket", "socket", ("--fill-tx-checksums",)),
    ("ring", "ring", ()),
    ("auto", "ring", ()),
]
# UDP payloads of 1..47 bytes give frames of 60 (the minimum) up to 89 bytes, every
# residue mod 16; the large ones reach 1514.
SIZES = "1-47,1000-1016,1456-1472"


def run_recorded(board: Board, tmp_path: Path, rx: str, tx: str, extra: tuple[str, ...]) -> Any:
    record = tmp_path / "record.json"
    wrapper = tmp_path / "recording_driver.py"
    wrapper.write_text(WRAPPER.format(driver_dir=str(DRIVER_DIR)))
    cmd = f"{sys.executable} {wrapper} {record} --rx-mode {rx} --tx-mode {tx} {' '.join(extra)}"
    sim = Simulation(board, SimOptions(driver_cmd=cmd), ROOT)
    sim.start()
    try:
        for client in sim.layout.clients:
            report = sim.peer_tool("udp-echo", "--target", client.ipv4, "--sizes", SIZES)
            assert report["lost"] == [] and report["mismatched"] == [], report
    finally:
        result = sim.stop("test end")
    assert result.driver_exit == 0, "\n".join(result.driver_log_tail)
    assert result.conservation["ok"], result.conservation
    return json.loads(record.read_text())


@pytest.mark.parametrize(
    ("rx", "tx", "extra"), MODES, ids=["-".join(m[:2]) + "".join(m[2]) for m in MODES]
)
def test_every_copy_into_or_out_of_a_map_is_aligned_in_every_mode(
    odroidc4: Board, tmp_path: Path, rx: str, tx: str, extra: tuple[str, ...]
) -> None:
    rec = run_recorded(odroidc4, tmp_path, rx, tx, extra)
    assert rec["socket_on_map"] == []  # the kernel never copied to or from a map
    sizes = {n for _, _, n in rec["in"]}
    frames = 2 * (47 + 17 + 17)
    assert len(rec["in"]) >= frames and len(rec["out"]) >= frames
    assert {n % 16 for n in sizes} == set(range(16))  # every tail length was exercised
    for region, dst, n in rec["in"]:
        end = dst + -(-n // 16) * 16
        assert region == "rx_data" and dst % 16 == 0 and end % 16 == 0
        assert dst // 2048 == (end - 1) // 2048, (dst, n)
    for region, src, n in rec["out"]:
        start, end = src // 16 * 16, -(-(src + n) // 16) * 16
        assert region == "tx_data" and start // 2048 == (end - 1) // 2048, (src, n)
