"""Checksums, stats file, rate-limited logging, IRQ acknowledgement and its order."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
from pathlib import Path

from netvm_driver.checksum import fill_checksums, internet_checksum
from netvm_driver.log import RateLimitedLog
from netvm_driver.loop import EventLoop, enable_irq, read_irq
from netvm_driver.stats import COUNTERS, LATENCIES, LATENCY_BOUNDS_US, Histogram, Stats

from tests.harness import readable

# A real frame: ping request captured from Linux (IPv4 header checksum 0xb861).
ICMP_HDR = bytes.fromhex("4500005400004000400126a70a0000010a000002")


def test_internet_checksum_matches_rfc1071_example() -> None:
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == (~0xDDF2) & 0xFFFF
    assert internet_checksum(ICMP_HDR) == 0  # a correct header sums to zero


def tcp_frame(payload: bytes) -> bytearray:
    ip = bytearray(
        bytes.fromhex("45000000000040004006") + b"\0\0" + bytes([10, 0, 0, 2, 10, 0, 0, 1])
    )
    tcp = bytearray(20)
    tcp[0:4] = struct.pack("!HH", 1234, 80)
    tcp[12] = 5 << 4
    ip[2:4] = (20 + 20 + len(payload)).to_bytes(2, "big")
    return bytearray(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00") + ip + tcp + payload


def test_fill_checksums_tcp_and_ip() -> None:
    frame = tcp_frame(b"abc")
    assert fill_checksums(frame)
    assert internet_checksum(frame[14:34]) == 0
    pseudo = frame[26:34] + b"\0\x06" + (23).to_bytes(2, "big")
    assert internet_checksum(pseudo + frame[34:]) == 0


def test_fill_checksums_leaves_non_ip_and_fragments_alone() -> None:
    arp = bytearray(b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28))
    assert not fill_checksums(arp) and arp == bytearray(
        b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    )
    frag = tcp_frame(b"abc")
    frag[20:22] = b"\x20\x00"  # more fragments
    assert fill_checksums(frag)
    assert frag[50:52] == b"\0\0"  # L4 checksum untouched
    assert internet_checksum(frag[14:34]) == 0


def test_stats_file_has_every_counter_and_is_replaced_atomically(tmp_path: Path) -> None:
    s = Stats()
    s.rx_frames += 3
    path = tmp_path / "stats.json"
    s.write(str(path), "periodic")
    s.write(str(path), "SIGUSR1")
    doc = json.loads(path.read_text())
    assert doc["seq"] == 2 and doc["reason"] == "SIGUSR1"
    assert set(doc["counters"]) == set(COUNTERS) and doc["counters"]["rx_frames"] == 3
    for required in (
        "rx_frames",
        "rx_bytes",
        "tx_frames",
        "tx_bytes",
        "rx_dropped_no_buffer",
        "rx_dropped_oversize",
        "rx_bad_descriptor",
        "tx_bad_descriptor",
        "notifications_sent",
        "irqs_handled",
    ):
        assert required in COUNTERS
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_stats_declares_each_counter_as_an_int_in_counters_order() -> None:
    # The annotations are what checkers see; COUNTERS names the attributes __init__ sets
    # and orders the stats file and the exit line.
    declared = {k: v for k, v in Stats.__annotations__.items() if not k.startswith("_")}
    counters = {k: v for k, v in declared.items() if k not in LATENCIES.values()}
    assert tuple(counters) == COUNTERS and set(counters.values()) == {"int"}
    assert {declared[a] for a in LATENCIES.values()} == {"Histogram"}
    assert tuple(Stats().as_dict()) == COUNTERS and not any(Stats().as_dict().values())


def test_histogram_buckets_and_conservative_percentiles() -> None:
    h = Histogram((1, 10, 100))
    assert h.as_dict() == {
        "bounds_us": [1, 10, 100], "counts": [0, 0, 0, 0], "samples": 0,
        "p50_us": None, "p99_us": None, "max_us": None,
    }  # fmt: skip
    h.add(1_000)  # exactly 1 µs: the first bucket (bounds are inclusive upper bounds)
    h.add(1_001, 3)  # three frames of one batch, just above 1 µs
    h.add(10_000)
    h.add(-5)  # a clock step backwards lands in the first bucket, never an IndexError
    assert h.counts == [2, 4, 0, 0] and h.samples == 6
    assert h.percentile_us(33) == 1  # rank ceil(1.98) = 2: still in the first bucket
    assert h.percentile_us(34) == 10 and h.percentile_us(50) == 10
    assert h.percentile_us(99) == 10 and h.max_us() == 10.0
    h.add(250_500, 94)  # above the last bound: counted in the overflow bucket
    d = h.as_dict()
    assert d["counts"] == [2, 4, 0, 94] and d["samples"] == 100 == sum(d["counts"])
    assert d["p50_us"] == 250.5 and d["max_us"] == 250.5  # the overflow bucket: the max
    assert h.percentile_us(6) == 10 and h.percentile_us(7) == 250.5


def test_stats_file_has_the_latency_histograms(tmp_path: Path) -> None:
    s = Stats()
    s.rx_latency.add(30_000, 5)
    path = tmp_path / "stats.json"
    s.write(str(path), "exit")
    doc = json.loads(path.read_text())
    assert set(doc["latency"]) == {
        "rx_kernel_to_publish_us", "rx_wake_to_publish_us", "tx_doorbell_to_send_us",
        "rx_buffer_wait_us",
    }  # fmt: skip
    rx, tx = doc["latency"]["rx_kernel_to_publish_us"], doc["latency"]["tx_doorbell_to_send_us"]
    assert rx["bounds_us"] == list(LATENCY_BOUNDS_US) and len(rx["counts"]) == 17
    assert rx["samples"] == 5 and rx["counts"][LATENCY_BOUNDS_US.index(50)] == 5
    assert rx["p50_us"] == rx["p99_us"] == 50 and rx["max_us"] == 30.0
    assert tx["samples"] == 0 and tx["p50_us"] is None and tx["max_us"] is None


def test_rate_limited_log_suppresses_and_counts() -> None:
    now = [0.0]
    lines: list[str] = []
    log = RateLimitedLog(interval=5.0, sink=lines.append, clock=lambda: now[0])
    for _ in range(10):
        log.warn("bad", "bad descriptor")
    log.warn("other", "other thing")
    now[0] = 6.0
    log.warn("bad", "bad descriptor")
    assert lines == ["bad descriptor", "other thing", "bad descriptor (9 similar suppressed)"]


def sim_irq() -> tuple[int, int]:
    """A connected UNIX stream socket pair standing in for a UIO IRQ fd, as the host
    simulation's is: (VMM end, non-blocking driver end)."""
    vmm, driver = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    driver.setblocking(False)
    return vmm.detach(), driver.detach()


def test_read_irq_consumes_one_count_and_a_second_keeps_the_fd_readable() -> None:
    master, slave = sim_irq()
    os.write(master, struct.pack("=ii", 1, 2))  # a stand-in device queued two counts
    assert read_irq(slave)
    assert readable(slave, 0.2)  # the level-triggered epoll comes back for the second
    assert read_irq(slave)
    assert not read_irq(slave)  # a spurious wake-up: no count, no exception
    enable_irq(slave)
    assert os.read(master, 16) == struct.pack("=i", 1)  # exactly one 4-byte enable
    os.close(master)
    os.close(slave)


class OrderProbe:
    """A data path that records, at each step, what the VMM end of the tx IRQ has seen
    and whether the driver's end still holds the interrupt's count unread."""

    def __init__(self, master: int, irq: int, wake_w: int) -> None:
        self.master, self.irq, self.wake_w = master, irq, wake_w
        self.rx_starved = self.tx_blocked = False
        self.steps: list[tuple[str, bytes, bool]] = []

    def _unread(self) -> bool:
        return readable(self.irq, 0.0)

    def _enables(self, wait: float = 0.5) -> bytes:
        """The enables written so far (waiting a moment for one: an enable written too
        early is seen)."""
        if not select.select([self.master], [], [], wait)[0]:
            return b""
        return os.read(self.master, 16)

    def interest(self) -> dict[int, int]:
        return {}

    def process_tx(self, woken_ns: int | None = None) -> None:
        self.steps.append(("process_tx", self._enables(), self._unread()))

    def process_rx(self, woken_ns: int | None = None) -> None:
        self.steps.append(("process_rx", self._enables(), self._unread()))

    def rescan(self, *, rx: bool, tx: bool) -> None:
        self.steps.append((f"rescan rx={rx} tx={tx}", self._enables(wait=10.0), self._unread()))
        os.write(self.wake_w, bytes([signal.SIGTERM]))  # stop the loop after one turn


def test_the_loop_processes_then_reads_the_count_reenables_and_rescans() -> None:
    """The order the VMM's dropped-while-masked interrupts need: the queues are looked at
    after the enable, and the count's read and the enable come after the frames' work
    (docs/driver.md)."""
    master, slave = sim_irq()
    os.set_blocking(master, False)
    rx_master, rx_slave = sim_irq()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    probe = OrderProbe(master, slave, wake_w)
    loop = EventLoop(
        probe,  # type: ignore[arg-type]
        {"rx_irq": rx_slave, "tx_irq": slave},
        Stats(),
        wake_r,
    )
    os.write(master, struct.pack("=i", 1))  # the VMM injects the tx IRQ
    loop.run()
    assert probe.steps == [
        ("process_tx", b"", True),  # still masked, the count unread while the frames go out
        ("rescan rx=False tx=True", struct.pack("=i", 1), False),  # read, enabled, looked
    ]
    assert loop.stats.irqs_handled == 1
    for fd in (master, slave, rx_master, rx_slave, wake_r, wake_w):
        os.close(fd)
