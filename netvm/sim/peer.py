"""Traffic tools for the peer side of the simulation (run inside the peer namespace).

``python -m netvm.sim.peer udp-echo --target 10.0.0.2 --sizes 1-1472`` sends one datagram
of every size and checks each echo byte for byte; ``udp-load`` keeps a window of
datagrams in flight to one or more clients for a count or a time and reports echoes,
losses, corruption, rate and round-trip times; ``first-echo`` probes until each target
has echoed once; ``tcp-echo`` streams bytes through a TCP echo server and compares them.
Each prints one JSON object. Owns no state
beyond one run; stdlib only, so it runs in a bare namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import statistics
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

SEQ = struct.Struct("!IQ")  # target index, sequence number


PATTERN = bytes(range(251)) * 40  # 251 is prime: a shifted window never repeats early


def payload(target: int, seq: int, size: int) -> bytes:
    """A datagram tagged (target, seq) whose body is a seq-dependent window of PATTERN."""
    start = (seq * 7) % 251
    return SEQ.pack(target, seq) + PATTERN[start : start + size - SEQ.size]


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "p50": pick(0.5),
        "p99": pick(0.99),
        "max": round(ordered[-1], 1),
        "mean": round(statistics.fmean(ordered), 1),
    }


def udp_echo(target: str, port: int, sizes: list[int], timeout: float) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((target, port))
    sock.settimeout(timeout)
    lost: list[int] = []
    mismatched: list[int] = []
    rtts: list[float] = []
    for seq, size in enumerate(sizes):
        data = payload(0, seq, size) if size >= SEQ.size else os.urandom(size)
        t0 = time.perf_counter()
        sock.send(data)
        while True:
            try:
                got = sock.recv(65536)
            except TimeoutError:
                lost.append(size)
                break
            if got == data:
                rtts.append((time.perf_counter() - t0) * 1e6)
                break
            if len(got) != len(data):
                continue  # a late echo of an earlier datagram
            mismatched.append(size)
            break
    sock.close()
    return {
        "target": target,
        "sent": len(sizes),
        "echoed": len(rtts),
        "lost": lost[:50],
        "mismatched": mismatched[:50],
        "rtt_us": percentiles(rtts),
    }


def first_echo(targets: list[str], port: int, interval: float, deadline: float) -> dict[str, Any]:
    """Probe every target's UDP echo until each has answered once (or `deadline` seconds
    pass): the wall-clock time of each first echo, for "boot -> first echo"."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    first: dict[str, float] = {}
    probes = 0
    end = time.monotonic() + deadline
    while len(first) < len(targets) and time.monotonic() < end:
        for t in targets:
            if t not in first:
                # No ARP entry yet is EHOSTUNREACH on a later send: keep probing.
                with contextlib.suppress(OSError):
                    sock.sendto(b"netvm-first-echo", (t, port))
                    probes += 1
        until = time.monotonic() + interval
        while (left := until - time.monotonic()) > 0:
            for _key, _ev in sel.select(left):
                with contextlib.suppress(OSError):
                    data, (addr, _port) = sock.recvfrom(2048)
                    if data == b"netvm-first-echo" and addr in targets:
                        first.setdefault(addr, time.time())
    sock.close()
    return {"first_echo_epoch": first, "probes": probes, "answered": sorted(first)}


def tcp_echo(target: str, port: int, size: int, timeout: float) -> dict[str, Any]:
    """Send `size` bytes over one TCP connection while reading the echo; compare."""
    data = (PATTERN * (size // len(PATTERN) + 1))[:size]
    t0 = time.perf_counter()
    got = bytearray()
    try:
        with socket.create_connection((target, port), timeout=timeout) as sock:
            sock.setblocking(False)
            sel = selectors.DefaultSelector()
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            sent = 0
            last = time.monotonic()
            while len(got) < size:
                if time.monotonic() - last > timeout:
                    raise TimeoutError(f"no progress for {timeout:.0f} s")
                for key, ev in sel.select(0.2):
                    if ev & selectors.EVENT_READ:
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed by the echo server")
                        got += chunk
                        last = time.monotonic()
                    if ev & selectors.EVENT_WRITE and sent < size:
                        sent += sock.send(data[sent : sent + 16384])
                        last = time.monotonic()
                        if sent == size:
                            sel.modify(key.fileobj, selectors.EVENT_READ)
    except (OSError, TimeoutError, ConnectionError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    else:
        error = ""
    seconds = time.perf_counter() - t0
    return {
        "target": target,
        "port": port,
        "sent": size,
        "echoed": len(got),
        "exact": bytes(got) == data,
        "seconds": round(seconds, 3),
        "error": error,
    }


@dataclass
class _Flow:
    index: int
    target: str
    sock: socket.socket
    sent: int = 0
    received: int = 0
    corrupt: int = 0
    lost: int = 0
    inflight: dict[int, float] = field(default_factory=dict)


def udp_load(
    targets: list[str],
    port: int,
    size: int,
    count: int | None,
    seconds: float | None,
    window: int,
    timeout: float,
) -> dict[str, Any]:
    sel = selectors.DefaultSelector()
    flows = []
    for i, target in enumerate(targets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.connect((target, port))
        s.setblocking(False)
        flow = _Flow(i, target, s)
        sel.register(s, selectors.EVENT_READ, flow)
        flows.append(flow)
    rtts: list[float] = []
    start = time.perf_counter()
    end = start + seconds if seconds else None

    def sending(flow: _Flow) -> bool:
        if count is not None and flow.sent >= count:
            return False
        return end is None or time.perf_counter() < end

    while any(sending(f) or f.inflight for f in flows):
        now = time.perf_counter()
        for flow in flows:
            while sending(flow) and len(flow.inflight) < window:
                try:
                    flow.sock.send(payload(flow.index, flow.sent, size))
                except (BlockingIOError, ConnectionRefusedError):
                    break
                flow.inflight[flow.sent] = now
                flow.sent += 1
            for seq, t0 in list(flow.inflight.items()):
                if now - t0 > timeout:
                    del flow.inflight[seq]
                    flow.lost += 1
        for key, _ in sel.select(0.005):
            flow = key.data
            while True:
                try:
                    got = flow.sock.recv(65536)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                if len(got) < SEQ.size:
                    flow.corrupt += 1
                    continue
                idx, seq = SEQ.unpack_from(got)
                t0 = flow.inflight.pop(seq, None)
                if t0 is None or idx != flow.index:
                    continue  # a late echo of a datagram already counted lost
                if got != payload(flow.index, seq, size):
                    flow.corrupt += 1
                    continue
                flow.received += 1
                rtts.append((time.perf_counter() - t0) * 1e6)
    elapsed = time.perf_counter() - start
    received = sum(f.received for f in flows)
    for f in flows:
        f.sock.close()
    return {
        "size": size,
        "window": window,
        "seconds": round(elapsed, 3),
        "flows": {
            f.target: {"sent": f.sent, "received": f.received, "lost": f.lost, "corrupt": f.corrupt}
            for f in flows
        },
        "echoes_per_s": round(received / elapsed, 1) if elapsed else 0.0,
        "mbit_s": round(received * size * 8 / elapsed / 1e6, 2) if elapsed else 0.0,
        "rtt_us": percentiles(rtts),
    }


def _sizes(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m netvm.sim.peer", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("udp-echo", help="one datagram per size, each echo checked")
    e.add_argument("--target", required=True)
    e.add_argument("--port", type=int, default=1235)
    e.add_argument("--sizes", type=_sizes, default=_sizes("1-1472"))
    e.add_argument("--timeout", type=float, default=1.0)
    ld = sub.add_parser("udp-load", help="a window of datagrams in flight per target")
    ld.add_argument("--target", action="append", required=True)
    ld.add_argument("--port", type=int, default=1235)
    ld.add_argument("--size", type=int, default=1024)
    ld.add_argument("--count", type=int)
    ld.add_argument("--seconds", type=float)
    ld.add_argument("--window", type=int, default=32)
    ld.add_argument("--timeout", type=float, default=1.0)
    fe = sub.add_parser("first-echo", help="probe UDP echo until every target answered")
    fe.add_argument("--target", action="append", required=True)
    fe.add_argument("--port", type=int, default=1235)
    fe.add_argument("--interval", type=float, default=0.2)
    fe.add_argument("--deadline", type=float, default=300.0)
    te = sub.add_parser("tcp-echo", help="stream bytes to a TCP echo server, compare")
    te.add_argument("--target", required=True)
    te.add_argument("--port", type=int, default=1237)
    te.add_argument("--size", type=int, default=100 * 1024)
    te.add_argument("--timeout", type=float, default=20.0)
    args = p.parse_args(argv)
    if args.cmd == "udp-echo":
        report = udp_echo(args.target, args.port, args.sizes, args.timeout)
    elif args.cmd == "first-echo":
        report = first_echo(args.target, args.port, args.interval, args.deadline)
    elif args.cmd == "tcp-echo":
        report = tcp_echo(args.target, args.port, args.size, args.timeout)
    else:
        if args.count is None and args.seconds is None:
            p.error("udp-load needs --count or --seconds")
        if args.size < SEQ.size:
            p.error(f"udp-load needs --size >= {SEQ.size}")
        report = udp_load(
            args.target, args.port, args.size, args.count, args.seconds, args.window, args.timeout
        )
    json.dump(report, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
