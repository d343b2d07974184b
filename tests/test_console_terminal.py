"""The interactive console's terminal handling (netvm.target.qemu.attach_terminal), which
`invoke run` and `invoke run --sel4` put between the user's terminal and the guest.

A pseudo-terminal plays the user's terminal (the test types on its master side; the
session reads and writes its slave side) and a unix socket server in the test stands in
for QEMU's console chardev: what arrives there is what the guest would get, and what the
test sends from it is the guest's output. No QEMU, no root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netvm.target.qemu import (
    CTRL_A,
    ConsoleKeys,
    GuestConsole,
    attach_terminal,
    console_help,
    raw_mode,
)
from tests.harness import ROOT

CTRL_C = b"\x03"


class StandInQemuConsole:
    """A stand-in for QEMU's `-chardev socket,server=on`: one client, the bytes it sent
    (what the guest received), and output sent to it as the guest's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.conn: socket.socket | None = None
        self.received = bytearray()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with self._cond:
            self.conn = conn
            self._cond.notify_all()
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    return
                self.received += data
                self._cond.notify_all()

    def wait_received(self, data: bytes, timeout: float = 10.0) -> None:
        """Until the guest side has received `data` (at its end)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self.received.endswith(data), timeout)
        assert ok, f"the guest side got {bytes(self.received)!r}, not ending {data!r}"

    def send(self, data: bytes) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.conn is not None, 10)
            assert self.conn is not None
        self.conn.sendall(data)

    def close(self) -> None:
        """What QEMU's exit does to the console."""
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)  # its reader thread may be in recv
            self.conn.close()
        self.server.close()


class UserTerminal:
    """A pseudo-terminal: the master is the user's side, the slave the session's."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.shown = bytearray()

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, data: bytes, timeout: float = 10.0) -> None:
        """Until the terminal has shown `data`."""
        deadline = time.monotonic() + timeout
        while data not in self.shown:
            left = deadline - time.monotonic()
            assert left > 0, f"the terminal showed {bytes(self.shown)!r}, not {data!r}"
            if select.select([self.master], [], [], left)[0]:
                self.shown += os.read(self.master, 4096)

    def attrs(self) -> list[object]:
        return termios.tcgetattr(self.slave)

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


class Session:
    """attach_terminal on a thread, between the terminal and the stand-in console."""

    def __init__(self, term: UserTerminal, guest: StandInQemuConsole, log: Path) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(guest.path))
        self.console = GuestConsole(sock, time.monotonic(), log, echo=term.slave)
        self.ended: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(term,), daemon=True)
        self._thread.start()
        # Attached once the terminal is raw: nothing typed before is taken in cooked mode.
        deadline = time.monotonic() + 10
        while term.attrs()[3] & termios.ICANON:
            assert time.monotonic() < deadline, "the terminal never went raw"
            time.sleep(0.01)

    def _run(self, term: UserTerminal) -> None:
        try:
            self.ended = attach_terminal(self.console, term.slave, term.slave)
        except BaseException as exc:
            self.error = exc

    def wait(self, timeout: float = 10.0) -> str | None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the session did not end"
        if self.error is not None:
            raise self.error
        return self.ended

    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self.console.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[UserTerminal, StandInQemuConsole, Path]]:
    term = UserTerminal()
    guest = StandInQemuConsole(tmp_path / "console.sock")
    try:
        yield term, guest, tmp_path / "console.log"
    finally:
        guest.close()
        term.close()


def test_ctrl_c_goes_to_the_guest_and_ctrl_a_x_quits_restoring_the_terminal(setup) -> None:
    term, guest, log = setup
    before = term.attrs()
    session = Session(term, guest, log)
    try:
        # Guest output reaches the terminal as it came, escape sequences and CR LF and all.
        guest.send(b"\x1b[2J\x1b[Htop - 12:00\r\n# ")
        term.expect(b"\x1b[2J\x1b[Htop - 12:00\r\n# ")
        term.type(b"top\r")
        guest.wait_received(b"top\r")
        term.type(CTRL_C)
        guest.wait_received(b"top\r" + CTRL_C)  # a byte for the guest, not a signal here
        assert session.running()
        term.type(b"\x01\x01")  # Ctrl-A Ctrl-A: one literal Ctrl-A
        guest.wait_received(CTRL_C + b"\x01")
        term.type(b"\x01h")  # Ctrl-A H: the keys, on the terminal only
        term.expect(b"Ctrl-A X")
        term.type(b"\x1a")  # Ctrl-Z: the guest's too
        guest.wait_received(b"\x01\x1a")
        assert session.running()
        term.type(b"\x01x")
        assert session.wait() == "quit"
    finally:
        session.close()
    assert bytes(guest.received) == b"top\r\x03\x01\x1a"  # no prefix, no help, no quit key
    assert term.attrs() == before  # the user's shell gets its terminal back as it was
    assert "top - 12:00" in log.read_text()  # and the console log has the output


def test_the_terminal_is_raw_while_attached(setup) -> None:
    term, guest, log = setup
    session = Session(term, guest, log)
    try:
        iflag, oflag, _, lflag, *_ = term.attrs()
        for flag in (termios.ISIG, termios.ICANON, termios.ECHO, termios.IEXTEN):
            assert not lflag & flag
        assert not iflag & (termios.IXON | termios.ICRNL)
        assert not oflag & termios.OPOST
        term.type(b"\x01X")  # the quit key in capitals too
        assert session.wait() == "quit"
    finally:
        session.close()


def test_the_guest_ending_ends_the_session_and_restores_the_terminal(setup) -> None:
    term, guest, log = setup
    before = term.attrs()
    session = Session(term, guest, log)
    try:
        guest.send(b"reboot: Power down\r\n")
        term.expect(b"Power down")
        guest.close()  # QEMU exited
        assert session.wait() == "closed"
    finally:
        session.close()
    assert term.attrs() == before


# A process with the terminal as stdin and stdout, attached as `invoke run` is (under
# sigterm_as_interrupt); it says on stderr how the session ended.
ATTACHED = """\
import pathlib, socket, sys, time
from netvm.sim.runner import sigterm_as_interrupt
from netvm.target.qemu import GuestConsole, attach_terminal
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
c = GuestConsole(s, time.monotonic(), pathlib.Path(sys.argv[2]), echo=1)
try:
    with sigterm_as_interrupt():
        sys.stderr.write(f"ended: {attach_terminal(c, 0, 1)}\\n")
except KeyboardInterrupt:
    sys.stderr.write("interrupted\\n")
"""


def attached_process(
    tmp_path: Path, term: UserTerminal, guest: StandInQemuConsole, *, controlling: bool = False
) -> subprocess.Popen[bytes]:
    """ATTACHED on `term` (as its controlling terminal with `controlling`), once the
    terminal is raw."""
    script = tmp_path / "attached.py"
    script.write_text(ATTACHED)

    def take_terminal() -> None:  # in the child, after setsid: the slave on fd 0
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, str(script), str(guest.path), str(tmp_path / "console.log")],
        stdin=term.slave,
        stdout=term.slave,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=controlling,
        preexec_fn=take_terminal if controlling else None,
    )
    deadline = time.monotonic() + 30
    while term.attrs()[3] & termios.ICANON:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"never attached: {proc.communicate()[1]!r}")
        time.sleep(0.02)
    return proc


def test_sigterm_restores_the_terminal(tmp_path: Path) -> None:
    """A process attached to a terminal, stopped by SIGTERM: the terminal is put back
    (raw_terminal's clean-up runs through sigterm_as_interrupt, as in `invoke run`)."""
    guest = StandInQemuConsole(tmp_path / "console.sock")
    term = UserTerminal()
    before = term.attrs()
    proc = attached_process(tmp_path, term, guest)
    try:
        term.type(CTRL_C)  # a byte for the guest: the process goes on
        guest.wait_received(CTRL_C)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        guest.close()
    assert err == b"interrupted\n", err
    assert proc.returncode == 0
    assert term.attrs() == before
    term.close()


def test_a_terminal_that_goes_away_ends_the_session_cleanly(tmp_path: Path) -> None:
    """The user's terminal closes (an ssh connection drops): SIGHUP ends the session
    like an interrupt, so the run still cleans up, rather than killing the process."""
    guest = StandInQemuConsole(tmp_path / "console.sock")
    term = UserTerminal()
    proc = attached_process(tmp_path, term, guest, controlling=True)
    try:
        os.close(term.master)  # hang-up: SIGHUP to the terminal's session
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        guest.close()
        os.close(term.slave)
    assert proc.returncode == 0, (proc.returncode, err)
    assert err in (b"interrupted\n", b"ended: hangup\n"), err


def test_ctrl_a_commands_across_reads_and_unknown_keys() -> None:
    keys = ConsoleKeys()
    assert keys.feed(b"ab\x01") == (b"ab", None)  # the prefix alone: wait for its key
    assert keys.feed(b"\x01cd") == (b"\x01cd", None)  # Ctrl-A Ctrl-A in two reads
    assert keys.feed(b"\x01qe") == (b"e", None)  # an unknown command key is dropped
    assert keys.feed(b"f\x01hg") == (b"fg", "help")
    assert keys.feed(b"\x03\x01xzz") == (b"\x03", "quit")  # nothing after the quit
    assert keys.feed(b"\x01?") == (b"", "help")
    assert bytes([CTRL_A]) == b"\x01"


def test_help_lists_the_keys_in_raw_mode_lines() -> None:
    text = console_help()
    for key in ("Ctrl-A X", "Ctrl-A H", "Ctrl-A Ctrl-A", "Ctrl-C"):
        assert key in text
    assert "\n" not in text.replace("\r\n", "")  # CR LF: output is not post-processed


def test_raw_mode_leaves_the_saved_attributes_alone() -> None:
    master, slave = pty.openpty()
    try:
        saved = termios.tcgetattr(slave)
        copy = [*saved[:6], list(saved[6])]
        raw = raw_mode(saved)
        assert saved == copy
        assert raw[6][termios.VMIN] == 1 and not raw[3] & termios.ISIG
    finally:
        os.close(master)
        os.close(slave)
