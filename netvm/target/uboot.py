"""Driving a U-Boot console over a serial line: stop autoboot, run commands, watch output.

Owns the serial side of `invoke flash`: opening the line (a tty device set to raw mode
at a baud rate, or a Unix socket such as QEMU's `-serial unix:`), logging every byte
the board sends, and the command discipline that keeps the script in step with U-Boot:
after every command it waits for an end marker *and* the prompt, because U-Boot drops
input typed while it is busy (a `dhcp` that also loads a file is the classic case).

The end marker is built from an environment variable (`echo ${netvm_mark}-7-$?`) so
the echoed command line never matches it; `$?` reports the command's exit status.

Last line of defence against typing more than was meant: `check_command` refuses a
command with anything that would end, chain, quote, escape or expand on U-Boot's command
line (`;`, `&`, `|`, quotes, backslash, `$`, any control character such as newline, CR or
NUL), except the `${...}` references of netvm's own templates (`TEMPLATE_VARIABLES`).
`run` and `start` check every command before a byte of it is sent; the callers check
the values that go into commands where they enter (`netvm.target.flash`).
"""

from __future__ import annotations

import os
import re
import select
import socket
import termios
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

PROMPT = "=> "
AUTOBOOT = re.compile(r"Hit any key to stop autoboot|Press SPACE to abort autoboot")
MARK_VAR = "netvm_mark"
MARK_VALUE = "NETVM-END"
CTRL_C = b"\x03"
BAUD_RATES = {
    9600: termios.B9600,
    19200: termios.B19200,
    38400: termios.B38400,
    57600: termios.B57600,
    115200: termios.B115200,
    230400: termios.B230400,
    460800: termios.B460800,
    921600: termios.B921600,
    1500000: termios.B1500000,
}


# The U-Boot variables netvm's own command templates read (booti_plan's addresses and
# sizes); a `${...}` naming anything else, and any other `$`, is refused.
TEMPLATE_VARIABLES = ("kernel_addr_r", "ramdisk_addr_r", "fdt_addr", "filesize")
_TEMPLATE_REF = re.compile(r"\$\{(?:" + "|".join(TEMPLATE_VARIABLES) + r")\}")
# Ends or chains a command (; & |), quotes or escapes (' " \ `), expands ($), or is not
# printable ASCII (newline, CR, NUL, Ctrl-C and the other line-editing keys, non-ASCII).
_UNSAFE = re.compile(r"[;&|'\"\\`$]|[^\x20-\x7e]")


class UBootError(Exception):
    """U-Boot did not answer as expected; the message quotes what it said."""


class UnsafeCommand(UBootError):
    """A command that would split, escape or expand on U-Boot's command line."""


def command_problem(command: str) -> str | None:
    """Why `command` must not be typed at the U-Boot prompt, or None if it may."""
    if not command.strip():
        return "it is empty (Enter at the prompt repeats the last command)"
    m = _UNSAFE.search(_TEMPLATE_REF.sub("", command))
    if m is None:
        return None
    return (
        f"it contains {m.group(0)!r}, which would end, chain, quote, escape or expand "
        "part of the command line"
    )


def check_command(command: str) -> None:
    """Raise `UnsafeCommand` unless `command` is safe to type at the U-Boot prompt."""
    problem = command_problem(command)
    if problem is not None:
        raise UnsafeCommand(f"refused to type {command!r} at the U-Boot prompt: {problem}")


class Line(Protocol):
    def fileno(self) -> int: ...
    def write(self, data: bytes) -> None: ...
    def read_available(self) -> bytes: ...
    def close(self) -> None: ...


class SerialLine:
    """A tty (USB serial adapter or pty) in raw mode at `baud`, 8N1, no flow control."""

    def __init__(self, device: str, baud: int = 115200) -> None:
        if baud not in BAUD_RATES:
            raise ValueError(f"unsupported baud rate {baud}; use one of {sorted(BAUD_RATES)}")
        self.fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            if not os.isatty(self.fd):
                raise ValueError(f"{device} is not a terminal")
            tty.setraw(self.fd)
            attrs = termios.tcgetattr(self.fd)
            attrs[4] = attrs[5] = BAUD_RATES[baud]  # ispeed, ospeed
            attrs[2] &= ~(termios.CRTSCTS | termios.CSTOPB | termios.PARENB)
            attrs[2] |= termios.CLOCAL | termios.CREAD
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        except termios.error as exc:
            os.close(self.fd)
            raise ValueError(f"{device}: cannot set up the terminal: {exc.args[-1]}") from None
        except BaseException:
            os.close(self.fd)
            raise

    def fileno(self) -> int:
        return self.fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)
                continue
            view = view[n:]

    def read_available(self) -> bytes:
        try:
            return os.read(self.fd, 4096)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self.fd)


class SocketLine:
    """A Unix stream socket carrying a serial console (QEMU `-serial unix:PATH,server`)."""

    def __init__(self, path: str, *, connect_timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def write(self, data: bytes) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def read_available(self) -> bytes:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return b""
        if not data:
            raise EOFError("the serial socket was closed")
        return data

    def close(self) -> None:
        self.sock.close()


def open_line(spec: str, baud: int) -> Line:
    """`unix:PATH` is a socket (QEMU); anything else is a tty device."""
    if spec.startswith("unix:"):
        return SocketLine(spec[len("unix:") :])
    return SerialLine(spec, baud)


@dataclass(frozen=True)
class CommandResult:
    command: str
    output: str  # what U-Boot printed between the command and the end marker
    status: int  # U-Boot's $? after the command


class UBootConsole:
    """A U-Boot console on `line`; everything received is appended to `log`."""

    def __init__(self, line: Line, log: BinaryIO, *, char_delay: float = 0.0) -> None:
        self.line = line
        self.log = log
        self.char_delay = char_delay  # some boards drop characters typed back to back
        self.buffer = ""  # received text not yet consumed by an expect()
        self.commands = 0

    # -- low level --------------------------------------------------------------------
    def _pump(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.line.fileno()], [], [], max(timeout, 0.0))
        if not ready:
            return False
        data = self.line.read_available()
        if data:
            self.log.write(data)
            self.log.flush()
            self.buffer += data.decode("utf-8", "replace").replace("\r\n", "\n")
        return bool(data)

    def send(self, data: bytes) -> None:
        if self.char_delay:
            for i in range(len(data)):
                self.line.write(data[i : i + 1])
                time.sleep(self.char_delay)
        else:
            self.line.write(data)

    def expect(self, pattern: re.Pattern[str] | str, timeout: float) -> re.Match[str]:
        """Wait until `pattern` appears; consume the buffer up to the end of the match."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.buffer)
            if m:
                self.buffer = self.buffer[m.end() :]
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise UBootError(
                    f"no {regex.pattern!r} within {timeout:g} s; last output: "
                    f"{self.buffer[-300:]!r}"
                )
            self._pump(min(left, 0.5))

    # -- U-Boot -----------------------------------------------------------------------
    def stop_autoboot(self, timeout: float = 60.0) -> None:
        """Reach the prompt whether the board is counting down or already waiting.

        Ctrl-C stops the countdown (any key does) and, at a prompt, just prints a fresh
        one without running anything; a bare Enter would repeat the last command.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if AUTOBOOT.search(self.buffer):
                self.send(CTRL_C)
                self.buffer = AUTOBOOT.split(self.buffer)[-1]
            self.send(CTRL_C)
            # Quiet for a moment after a prompt: the countdown is over.
            got = self._pump(0.3)
            while got:
                got = self._pump(0.2)
            if self.buffer.rstrip(" ").endswith("=>"):
                self.buffer = ""
                self.run(f"setenv {MARK_VAR} {MARK_VALUE}", timeout=10.0, check=True)
                return
        raise UBootError(
            f"no U-Boot prompt within {timeout:g} s (last output: {self.buffer[-300:]!r}); "
            "check the serial device and baud rate, then reset the board"
        )

    def run(self, command: str, *, timeout: float = 30.0, check: bool = True) -> CommandResult:
        """Type `command`, wait for its end marker and the prompt, return its output.

        The marker line is `echo ${netvm_mark}-N-$?`; until `netvm_mark` is set the
        marker is just `-N-` plus the status, which the first command tolerates.
        `command` must pass `check_command`; the marker is appended after the check.
        """
        check_command(command)
        self.commands += 1
        n = self.commands
        self.buffer = ""
        self.send(f"{command}; echo ${{{MARK_VAR}}}-{n}-$?\r".encode())
        # The echoed line ends with "-$?"; the output line has the status digits.
        mark = re.compile(rf"(?m)^(?:{MARK_VALUE})?-{n}-(\d+)\s*$")
        m = self.expect(mark, timeout)
        output = self._output_before(m)
        self.expect(PROMPT, 10.0)
        status = int(m.group(1))
        if check and status != 0:
            raise UBootError(f"`{command}` failed (status {status}): {output.strip()[-400:]}")
        return CommandResult(command, output, status)

    def _output_before(self, m: re.Match[str]) -> str:
        text = m.string[: m.start()]
        # Drop the echoed command line (everything up to the first newline).
        return text.split("\n", 1)[1] if "\n" in text else ""

    def start(self, command: str) -> None:
        """Type a command that does not come back to the prompt (go, booti)."""
        check_command(command)
        self.buffer = ""
        self.send(f"{command}\r".encode())

    def watch(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        return self.expect(pattern, timeout)


def open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")
