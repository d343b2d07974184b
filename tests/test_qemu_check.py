"""`invoke run` end to end, on the shared build: `--check` through the library call behind
it, and the interactive run as a user starts it, in a terminal.

Each boots its own guest, in namespaces of its own (netvm.sim.runs): other runs on the
host may go on meanwhile. Markers qemu and slow; needs root.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import termios
from pathlib import Path

from netvm.board import Board
from netvm.core.workspace import Workspace
from netvm.sim.runs import list_namespaces
from netvm.target.qemu import RUN_PREFIX, RunOptions, run_qemu_check
from tests.harness import INVOKE, QEMU_GUEST, ROOT, PtyTerminal, ping_probes

pytestmark = QEMU_GUEST


def test_check_boots_reaches_the_driver_and_reports(qemu_board: Board) -> None:
    board = qemu_board
    ws = Workspace.at(ROOT)
    report = run_qemu_check(board, ws, RunOptions(check=True))
    print("\n" + report.summary())
    assert report.boot_seconds is not None, report.reason
    assert report.uio_problems == [] and len(report.uio) == len(board.uio)
    assert any("entering event loop" in line for line in report.driver_log)
    assert report.ended == "guest powered off"
    saved = json.loads((ws.build_dir(board) / "qemu" / "check.json").read_text())
    assert saved["boot_seconds"] == report.boot_seconds
    assert report.ok, report.reason
    assert all(p["received"] == p["sent"] for p in report.ping)


def nothing_left(pid: int) -> None:
    """Neither a namespace nor a run directory (RAM file, sockets) of the runs of `pid`."""
    assert [ns for ns in list_namespaces() if f"-{pid}-" in ns] == []
    assert not list(Path("/dev/shm").glob(f"{RUN_PREFIX}{pid}-*"))


def test_interactive_run_gives_the_terminal_the_console_ctrl_c_to_the_guest_ctrl_a_x_quits(
    qemu_board: Board,
) -> None:
    board = qemu_board
    child, fd = pty.fork()
    if child == 0:  # `invoke run` with the pseudo-terminal as its terminal, as from a shell
        try:
            os.chdir(ROOT)
            os.execv(INVOKE, [INVOKE, "run", "--board", board.name])
        finally:
            os._exit(127)  # never return into pytest in the forked child
    cooked = termios.tcgetattr(fd)  # the terminal as the user's shell left it
    term = PtyTerminal(fd)
    status = None
    try:
        # The hint names this run's own namespace.
        hint = term.expect(r"try: ip netns exec (\S+) ping (\S+)\r?\n", 600)
        peer_ns = hint[1]
        assert re.fullmatch(rf"netvm-peer-{child}-\d+", peer_ns), peer_ns
        term.expect(r"entering event loop", 180)
        assert "Ctrl-A X quits" in term.text
        # Traffic through the guest while its console is on the terminal.
        pings = ping_probes(["ip", "netns", "exec", peer_ns], hint[2], 2)
        assert pings.received == 2, pings.output
        # What is typed reaches the guest's shell, and its answer the terminal.
        term.type(b"\recho netvm-$((6 * 7))\r")
        term.expect(r"netvm-42", 30)
        # Ctrl-C goes to the guest: it stops top there, and the session goes on.
        term.type(b"top\r")
        term.expect(r"PID\s+PPID\s+USER", 30)
        term.type(b"\x03")
        term.type(b"echo after-$((6 * 7))\r")
        term.expect(r"after-42", 30)
        status = term.wait_exit(child, 0)
        assert status is None, term.text[-3000:]  # the run goes on
        term.type(b"\x01h")  # Ctrl-A H: the keys
        term.expect(r"Ctrl-A Ctrl-A", 10)
        term.type(b"\x01x")  # Ctrl-A X: quit
        status = term.wait_exit(child, 60)
        assert status == 0, f"exit status {status} after Ctrl-A X:\n{term.text[-3000:]}"
        assert "stopping" in term.text
        # The terminal was raw while attached; the user's shell gets it back as it was.
        assert termios.tcgetattr(fd) == cooked
        lflag = cooked[3]
        assert lflag & termios.ECHO and lflag & termios.ICANON
    finally:
        if status is None:
            os.kill(child, 9)
            os.waitpid(child, 0)
        os.close(fd)
    nothing_left(child)  # after a clean quit


def test_interrupted_check_says_in_which_phase_and_cleans_up(qemu_board: Board) -> None:
    board = qemu_board
    proc = subprocess.Popen(
        [INVOKE, "run", "--board", board.name, "--check"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Its progress says when QEMU is booting: the phase, not a guessed sleep.
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith(f"booting {board.name}"):
                break
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "invoke run --check stopped by interrupt during boot" in err
    assert "Traceback" not in err
    nothing_left(proc.pid)
