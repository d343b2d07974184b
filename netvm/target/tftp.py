"""A small read-only TFTP server that serves only the files it was given.

Owns the TFTP protocol (RFC 1350) with the options U-Boot asks for: `blksize`
(RFC 2348), `tsize` (RFC 2349) and `timeout` (RFC 2349). Unknown options are left out of
the OACK, which RFC 2347 defines as declining them. It must not serve anything but the
staged names: no paths, no directory listing, no writes. A staged name is a plain file
name (`PLAIN_NAME`): the board asks for it by name, and `invoke flash` types it into
U-Boot's `tftpboot`, so it holds nothing a command line would split or expand.

Each transfer runs on its own socket (its own transfer ID, as RFC 1350 requires) in a
thread; the server keeps a list of finished transfers so the caller can check what the
board really fetched. All state lives in the `TftpServer` instance.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
ERR_NOT_FOUND, ERR_ACCESS, ERR_ILLEGAL, ERR_OPTION = 1, 2, 4, 8
DEFAULT_BLKSIZE = 512
MAX_BLKSIZE = 65464  # RFC 2348
RETRIES = 5
# A name the server may stage: letters, digits and . _ + -, not starting with . or -, at
# most 127 characters (U-Boot's tftp keeps the file name in 128 bytes).
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,126}")
PLAIN_NAME_TEXT = (
    "only letters, digits, '.', '_', '+' and '-', not starting with '.' or '-', "
    "at most 127 characters"
)


def is_plain_name(name: str) -> bool:
    return PLAIN_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Transfer:
    name: str
    client: tuple[str, int]
    bytes: int
    seconds: float
    blksize: int
    ok: bool
    error: str = ""


class TftpServer:
    """Serve `files` ({name the board asks for: local path}) on `host`:`port` (UDP).

    Use as a context manager; `transfers` lists every finished or failed transfer.
    """

    def __init__(
        self,
        files: Mapping[str, Path],
        host: str = "0.0.0.0",
        port: int = 69,
        *,
        timeout: float = 1.0,
    ) -> None:
        bad = sorted(name for name in files if not is_plain_name(name))
        if bad:
            raise ValueError(f"not plain file names: {bad} (a name to serve has {PLAIN_NAME_TEXT})")
        self.files = dict(files)
        self.timeout = timeout
        self.transfers: list[Transfer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.settimeout(0.2)
        self.address: tuple[str, int] = self._sock.getsockname()
        self._thread = threading.Thread(target=self._serve, name="tftp", daemon=True)
        self._workers: list[threading.Thread] = []

    def __enter__(self) -> TftpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for worker in self._workers:
            worker.join(timeout=self.timeout * (RETRIES + 1))
        self._sock.close()

    def finished(self, name: str) -> list[Transfer]:
        with self._lock:
            return [t for t in self.transfers if t.name == name]

    def _record(self, transfer: Transfer) -> None:
        with self._lock:
            self.transfers.append(transfer)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                packet, client = self._sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(
                target=self._handle, args=(packet, client), name="tftp-transfer", daemon=True
            )
            self._workers.append(worker)
            worker.start()

    def _handle(self, packet: bytes, client: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.address[0], 0))
            sock.settimeout(self.timeout)
            try:
                request = parse_request(packet)
            except ValueError as exc:
                sock.sendto(error_packet(ERR_ILLEGAL, str(exc)), client)
                return
            opcode, name, options = request
            if opcode == WRQ:
                sock.sendto(error_packet(ERR_ACCESS, "read-only server"), client)
                self._record(Transfer(name, client, 0, 0.0, 0, False, "write refused"))
                return
            path = self.files.get(name)
            if path is None:
                sock.sendto(error_packet(ERR_NOT_FOUND, f"{name}: not served"), client)
                self._record(Transfer(name, client, 0, 0.0, 0, False, "not served"))
                return
            self._send_file(sock, client, name, path.read_bytes(), options)

    def _send_file(
        self,
        sock: socket.socket,
        client: tuple[str, int],
        name: str,
        data: bytes,
        options: dict[str, str],
    ) -> None:
        start = time.monotonic()
        blksize = DEFAULT_BLKSIZE
        accepted: dict[str, str] = {}
        if "blksize" in options and options["blksize"].isdigit():
            blksize = max(8, min(int(options["blksize"]), MAX_BLKSIZE))
            accepted["blksize"] = str(blksize)
        if "tsize" in options:
            accepted["tsize"] = str(len(data))
        if "timeout" in options and options["timeout"].isdigit():
            accepted["timeout"] = options["timeout"]
            sock.settimeout(max(1, min(int(options["timeout"]), 255)))

        def fail(why: str) -> None:
            self._record(Transfer(name, client, 0, time.monotonic() - start, blksize, False, why))

        if accepted:
            oack = struct.pack("!H", OACK) + b"".join(
                k.encode() + b"\0" + v.encode() + b"\0" for k, v in accepted.items()
            )
            if not self._exchange(sock, client, oack, 0):
                fail("no ACK for OACK")
                return
        block = 1
        offset = 0
        while True:
            chunk = data[offset : offset + blksize]
            packet = struct.pack("!HH", DATA, block & 0xFFFF) + chunk
            if not self._exchange(sock, client, packet, block & 0xFFFF):
                fail(f"no ACK for block {block}")
                return
            offset += len(chunk)
            if len(chunk) < blksize:
                break
            block += 1
        seconds = time.monotonic() - start
        self._record(Transfer(name, client, len(data), seconds, blksize, True))

    def _exchange(
        self, sock: socket.socket, client: tuple[str, int], packet: bytes, block: int
    ) -> bool:
        """Send `packet` until the client ACKs `block`; False after RETRIES time-outs."""
        for _ in range(RETRIES):
            sock.sendto(packet, client)
            deadline = time.monotonic() + (sock.gettimeout() or self.timeout)
            while time.monotonic() < deadline:
                try:
                    reply, peer = sock.recvfrom(65536)
                except TimeoutError:
                    break
                if peer != client:
                    # RFC 1350: a packet from a foreign TID gets an error, the transfer goes on.
                    sock.sendto(error_packet(5, "unknown transfer ID"), peer)
                    continue
                if len(reply) >= 4:
                    opcode, number = struct.unpack("!HH", reply[:4])
                    if opcode == ACK and number == block:
                        return True
                    if opcode == ERROR:
                        return False
                # A duplicate ACK of the previous block: keep waiting (no resend storm).
            if self._stop.is_set():
                return False
        return False


def parse_request(packet: bytes) -> tuple[int, str, dict[str, str]]:
    """(opcode, file name, lower-cased options) of an RRQ/WRQ; ValueError otherwise."""
    if len(packet) < 4:
        raise ValueError("short packet")
    (opcode,) = struct.unpack("!H", packet[:2])
    if opcode not in (RRQ, WRQ):
        raise ValueError(f"expected a read request, got opcode {opcode}")
    fields = packet[2:].split(b"\0")
    if len(fields) < 3:
        raise ValueError("malformed request")
    name = fields[0].decode("ascii", "replace")
    mode = fields[1].decode("ascii", "replace").lower()
    if mode not in ("octet", "netascii"):
        raise ValueError(f"unsupported mode {mode}")
    opts = [f.decode("ascii", "replace") for f in fields[2:] if f]
    options = {opts[i].lower(): opts[i + 1] for i in range(0, len(opts) - 1, 2)}
    return opcode, name, options


def error_packet(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message.encode() + b"\0"
