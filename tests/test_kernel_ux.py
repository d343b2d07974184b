"""A build users can see into: the status line on a terminal and plain lines elsewhere, every
step's tools logged in build/B/STEP/build.log, a failing tool as a clean error quoting
that log, the toolchain check of `invoke validate`, and the menuconfig round trip
(`kernel.savefragment`, and a build that will not drop a hand-edited .config).

The kernel builds here run `tests/fixtures/standin-kernel`, a stand-in for a kernel tree
(given with --kernel-src): its make has the targets netvm runs and prints what kbuild
prints, in a moment instead of minutes (its Makefile says how). The real kernel build is
tests/test_kernel.py's.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from netvm.board import Board, load_board
from netvm.builder.build import BuildOptions, build
from netvm.core.errors import USER_ERROR_EXIT, UserError
from netvm.core.progress import Console, StepProgress
from netvm.core.toollog import TAIL_LINES, ToolBroke, ToolLog
from netvm.core.workspace import Workspace
from netvm.guest.kernel import (
    CONFIG_RECORD,
    MAKE_HINT,
    RESOLVED_CONFIG,
    SAVED_HEADER,
    hand_edits,
    save_fragment,
)
from tests.harness import (
    FIXTURES,
    INVOKE,
    ROOT,
    copy_board,
    invoke_in_process,
    run_invoke,
    scratch_name,
)

STANDIN_KERNEL = FIXTURES / "standin-kernel"
STANDIN_OBJECTS = 40  # what its make Image compiles unless told otherwise
ONLY_KERNEL = ("--skip", "rootfs", "--skip", "dtb", "--skip", "microkit")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the status line --------------------------------------------------------------------


def read_available(fd: int) -> bytes:
    """Everything the other end of `fd` has written so far."""
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out


def test_status_line_on_a_terminal_is_rewritten_in_place() -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as stream:
        console = Console(stream)
        assert console.interactive
        clock = FakeClock()
        status = StepProgress(console, "kernel", clock=clock, refresh=0.0, tick=None)
        status.phase("configuring")
        clock.now += 5
        status.count("objects", 400)
        clock.now += 10
        status.advance(100)  # 10 s for 100 objects: 300 more take 30 s
        console("a line from make")  # printed above the status line, which is redrawn
        clock.now += 30
        status.advance(300)
        console.end_status(keep=False)
        got = read_available(master)
    os.close(master)
    clear = b"\x1b[K"
    assert got == (
        b"\r[kernel] configuring, 0:00 elapsed" + clear
        + b"\r[kernel] 0/400 objects (0%), 0:05 elapsed" + clear
        + b"\r[kernel] 100/400 objects (25%), 0:15 elapsed, ETA 0:30" + clear
        + b"\r" + clear + b"a line from make\r\n"  # the terminal's newline is \r\n
        + b"[kernel] 100/400 objects (25%), 0:15 elapsed, ETA 0:30"
        + b"\r[kernel] 400/400 objects (100%), 0:45 elapsed" + clear
        + b"\r" + clear
    )  # fmt: skip


def test_status_line_redraws_at_most_every_refresh_interval() -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as stream:
        clock = FakeClock()
        status = StepProgress(Console(stream), "kernel", clock=clock, refresh=1.0, tick=None)
        status.count("objects", None)
        for _ in range(9):
            clock.now += 0.1
            status.advance()  # within a second of the last draw: not drawn
        clock.now += 0.2
        status.advance()
        got = read_available(master).decode()
    os.close(master)
    # Without a known total: the count and the time, no percentage or ETA.
    assert got.split("\r")[1:] == [
        "[kernel] 0 objects, 0:00 elapsed\x1b[K",
        "[kernel] 10 objects, 0:01 elapsed\x1b[K",
    ]


def test_plain_lines_when_stderr_is_not_a_terminal() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        console = Console(stream)
        assert not console.interactive
        clock = FakeClock()
        status = StepProgress(console, "kernel", clock=clock, tick=None)
        status.phase("configuring")  # no line: only the count and the clock make them
        status.count("objects", 50)
        for _ in range(50):
            clock.now += 1
            status.advance()
        status.count("objects", None)  # no total: a line every 30 s
        for _ in range(70):
            clock.now += 1
            status.advance()
    with os.fdopen(read_end) as f:
        lines = f.read().splitlines()
    assert lines == [
        *(
            f"[kernel] {n}/50 objects ({n * 2}%), 0:{n:02d} elapsed"
            + (f", ETA 0:{50 - n:02d}" if n < 50 else "")
            for n in range(5, 51, 5)
        ),
        "[kernel] 30 objects, 1:20 elapsed",
        "[kernel] 60 objects, 1:50 elapsed",
    ]


def test_plain_lines_come_every_30_s_even_between_tenths() -> None:
    lines: list[str] = []
    clock = FakeClock()
    status = StepProgress(lines.append, "kernel", clock=clock, tick=None)
    status.count("objects", 1000)
    clock.now += 29
    status.advance()
    clock.now += 1
    status.tick()  # the ticking thread's call, when make prints nothing for a while
    assert lines == ["[kernel] 1/1000 objects (0%), 0:30 elapsed, ETA 8:19:30"]


# --- build.log, progress and failures of a real `invoke build` ---------------------------


@pytest.fixture
def scratch_board(tmp_path: Path) -> Path:
    """A copy of the C4 board (and its fragment) of this test's own name, so it builds
    into a directory of its own."""
    return copy_board(tmp_path / "board", name=scratch_name("kux", tmp_path))


def kernel_dir(board_file: Path) -> Path:
    return Workspace.at(ROOT).build_dir(load_board(str(board_file), ROOT)) / "kernel"


def build_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """`invoke ARGS` with stderr on a pseudo-terminal: its exit status and what the
    terminal got."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [INVOKE, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=slave, env=env
    )
    os.close(slave)
    got = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer is gone
                return
            if not chunk:
                return
            got.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    code = proc.wait(timeout=120)
    reader.join(timeout=30)
    os.close(master)
    return code, got.decode()


def test_invoke_build_shows_one_status_line_and_logs_every_tool(scratch_board: Path) -> None:
    args = ["build", "--board", str(scratch_board), "--kernel-src", str(STANDIN_KERNEL)]
    env = dict(os.environ, STANDIN_DELAY="0.05")
    code, first = build_on_a_terminal([*args, *ONLY_KERNEL], env)
    assert code == 0, first
    # The first build of the tree: no total yet, so the count alone.
    assert re.search(r"\r\[kernel\] [1-9]\d* objects, 0:0\d elapsed\x1b\[K", first), first
    code, second = build_on_a_terminal([*args, *ONLY_KERNEL, "--force"], env)
    assert code == 0, second
    # Then the total the first one compiled, and an ETA.
    assert re.search(
        r"\r\[kernel\] ([1-9]|[1-3]\d)/40 objects \(\d+%\), 0:0\d elapsed, ETA 0:0\d\x1b\[K", second
    ), second
    # Each step is one line on the terminal: its status rewritten, then what it did.
    lines = [line.rsplit("\r", 1)[-1] for line in second.replace("\x1b[K", "").split("\r\n")]
    assert [re.sub(r"\d+\.\d\d", "S", line) for line in lines if line] == [
        "[render] built (S s)",
        "[kernel] built (S s)",
    ]
    log = (kernel_dir(scratch_board) / "build.log").read_text()
    # The whole output of each make, the log started afresh by this build.
    commands = [line.split()[-1] for line in log.splitlines() if line.startswith("$ make -C ")]
    assert commands == ["allnoconfig", "olddefconfig", "Image"]
    assert log.count("  CC      drivers/standin/part") == STANDIN_OBJECTS
    assert "# configuration written to .config" in log


def test_verbose_streams_the_tools_output_too(scratch_board: Path) -> None:
    args = ["--board", str(scratch_board), "--kernel-src", str(STANDIN_KERNEL), *ONLY_KERNEL]
    quiet = run_invoke("build", *args)
    assert quiet.returncode == 0, quiet.stderr
    assert "CC      drivers/standin/part1.o" not in quiet.stderr
    loud = run_invoke("build", *args, "--force", "--verbose")
    assert loud.returncode == 0, loud.stderr
    log = (kernel_dir(scratch_board) / "build.log").read_text().splitlines()
    # Every line of the log reached the terminal, in order, between the progress lines.
    streamed = [line for line in loud.stderr.splitlines() if not line.startswith("[")]
    assert streamed == [line for line in log if not line.startswith("[")]


def test_a_failing_make_is_a_user_error_quoting_its_log(scratch_board: Path) -> None:
    args = ["--board", str(scratch_board), "--kernel-src", str(STANDIN_KERNEL), *ONLY_KERNEL]
    assert run_invoke("build", *args).returncode == 0  # the tree's object count is known now
    failed = run_invoke("build", *args, "--force", env=dict(os.environ, STANDIN_FAIL="1"))
    assert failed.returncode == USER_ERROR_EXIT
    assert "Traceback" not in failed.stderr
    log_file = kernel_dir(scratch_board) / "build.log"
    log = log_file.read_text().splitlines()
    assert log.count("drivers/standin/broken.c:3:1: error: expected ';' before '}' token") == 1
    assert log[-1].startswith("make: Leaving directory")
    # Not a terminal: plain lines at each tenth of the 40 objects, then the error.
    progress = [line for line in failed.stderr.splitlines() if line.startswith("[kernel] ")]
    assert [line.split(",")[0] for line in progress] == [
        "[kernel] running",
        *(f"[kernel] {n}/40 objects ({n * 100 // 40}%)" for n in range(4, 41, 4)),
    ]
    assert "\r" not in failed.stderr
    assert failed.stderr.endswith(
        f"error: {log_file}: make Image failed (exit status 2); the last lines of its output:\n"
        + "".join(f"  {line}\n" for line in log[-TAIL_LINES:])
        + f"  (hint: {MAKE_HINT})\n"
    )


def test_tool_log_names_a_tool_that_is_not_installed(tmp_path: Path) -> None:
    log = ToolLog(tmp_path / "step" / "build.log", display="build/x/step/build.log")
    run = log.stream(["netvm-no-such-tool", "--flag"])
    with pytest.raises(UserError) as err:
        log.check(run, "netvm-no-such-tool")
    assert err.value.render() == (
        "error: build/x/step/build.log: netvm-no-such-tool failed (exit status 127); the last"
        " lines of its output:\n  netvm: cannot run netvm-no-such-tool: No such file or directory"
    )
    assert (tmp_path / "step" / "build.log").read_text() == (
        "$ netvm-no-such-tool --flag\nnetvm: cannot run netvm-no-such-tool: No such file or"
        " directory\n"
    )


def test_a_tool_failing_on_netvms_own_inputs_keeps_its_traceback(tmp_path: Path) -> None:
    log = ToolLog(tmp_path / "build.log", display="build/x/rootfs/build.log")
    script = "echo 'readelf: Error: Not an ELF file' >&2; exit 1"
    run = log.capture(["sh", "-c", script])
    with pytest.raises(ToolBroke) as err:
        log.check(run, "readelf -d x", internal=True)
    assert not isinstance(err.value, UserError)
    assert str(err.value) == (
        "readelf -d x failed (exit status 1) (log: build/x/rootfs/build.log):\n"
        "  readelf: Error: Not an ELF file"
    )
    assert (tmp_path / "build.log").read_text() == (
        f"$ sh -c {shlex.quote(script)}\nreadelf: Error: Not an ELF file\n"
    )


def test_the_dtb_step_logs_cpp_and_dtc(odroidc4: Board, tmp_path: Path) -> None:
    build(odroidc4, Workspace(ROOT, tmp_path), BuildOptions(skip=frozenset({"kernel", "rootfs"})))
    log = (tmp_path / "odroidc4" / "dtb" / "build.log").read_text().splitlines()
    assert [line.split()[1] for line in log if line.startswith("$ ")] == ["cpp", "dtc", "dtc"]


# --- the toolchain ----------------------------------------------------------------------


def tools_dir(tmp_path: Path, *names: str) -> str:
    """A directory holding only `names` (links to this machine's), to use as PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in names:
        real = shutil.which(name)
        assert real is not None, name
        (bin_dir / name).symlink_to(real)
    return str(bin_dir)


CROSS_GCC_MISSING = (
    "error: boards/odroidc4/board.yaml: cross_compile: aarch64-linux-gnu-gcc is not on PATH,"
    " so the kernel cannot be built (hint: apt-get install gcc-aarch64-linux-gnu; or set"
    " cross_compile to the prefix of a cross compiler that is installed)"
)


def test_validate_reports_a_cross_compiler_that_is_not_installed(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=tools_dir(tmp_path, "make", "dtc"))
    got = invoke_in_process("validate", "--board", "odroidc4", env=env)
    assert got.returncode == USER_ERROR_EXIT
    assert got.stderr == CROSS_GCC_MISSING + "\n"
    assert got.stdout == ""


def test_validate_reports_every_missing_tool_and_passes_with_them(tmp_path: Path) -> None:
    got = invoke_in_process("validate", "--board", "odroidc4", env=dict(os.environ, PATH=""))
    assert got.returncode == USER_ERROR_EXIT
    assert got.stderr == "\n".join(
        [
            CROSS_GCC_MISSING,
            "error: make is not on PATH, so the kernel cannot be built (hint: apt-get install"
            " make)",
            "error: dtc is not on PATH, so the guest DTB cannot be built (hint: apt-get install"
            " device-tree-compiler)",
            "3 errors\n",
        ]
    )
    env = dict(os.environ, PATH=tools_dir(tmp_path, "make", "dtc", "aarch64-linux-gnu-gcc"))
    ok = invoke_in_process("validate", "--board", "odroidc4", env=env)
    assert (ok.returncode, ok.stdout) == (0, "boards/odroidc4/board.yaml: ok\n")


def test_a_build_without_the_cross_compiler_fails_before_make(
    scratch_board: Path, tmp_path: Path
) -> None:
    board_file = scratch_board
    board_file.write_text(
        board_file.read_text().replace(
            "cross_compile: aarch64-linux-gnu-", "cross_compile: nowhere-linux-gnu-"
        )
    )
    board = load_board(str(board_file), ROOT)
    options = BuildOptions(kernel_src=STANDIN_KERNEL, skip=frozenset({"rootfs", "dtb", "microkit"}))
    with pytest.raises(UserError) as err:
        build(board, Workspace(ROOT, tmp_path / "build"), options)
    assert err.value.render() == (
        f"error: {board_file}: cross_compile: nowhere-linux-gnu-gcc is not on PATH, so the"
        " kernel cannot be built (hint: apt-get install gcc-nowhere-linux-gnu; or set"
        " cross_compile to the prefix of a cross compiler that is installed)"
    )
    assert not (tmp_path / "build" / board.name / "kernel" / "build.log").exists()


# --- the menuconfig round trip ----------------------------------------------------------

RESOLVED = (
    'CONFIG_STANDIN_A=y\nCONFIG_STANDIN_B=y\nCONFIG_STANDIN_NAME="old"\nCONFIG_STANDIN_DERIVED=y\n'
)
# What a menuconfig session leaves: A off (so DERIVED too, which has no prompt), NAME changed.
EDITED = (
    '# CONFIG_STANDIN_A is not set\nCONFIG_STANDIN_B=y\nCONFIG_STANDIN_NAME="new"\n'
    "# CONFIG_STANDIN_DERIVED is not set\n"
)
FRAGMENT = """\
# The stand-in board's fragment.
# A is wanted for a reason.
CONFIG_STANDIN_A=y
# NAME, set twice (the later line wins).
CONFIG_STANDIN_NAME="first"
CONFIG_STANDIN_NAME="old"
"""


def configured(kdir: Path, resolved: str, edited: str) -> Path:
    """A kernel build directory as netvm's build leaves it (`resolved`, recorded), then
    edited by hand to `edited`: a stand-in for a build and a menuconfig session."""
    from netvm.core.files import file_sha256

    kdir.mkdir(parents=True, exist_ok=True)
    (kdir / RESOLVED_CONFIG).write_text(resolved)
    (kdir / ".config").write_text(resolved)
    (kdir / CONFIG_RECORD).write_text(file_sha256(kdir / ".config") + "\n")
    assert hand_edits(kdir) == {}
    (kdir / ".config").write_text(edited)
    return kdir


def test_savefragment_merges_the_edits_into_the_fragment(tmp_path: Path) -> None:
    kdir = configured(tmp_path / "kernel", RESOLVED, EDITED)
    assert hand_edits(kdir) == {"STANDIN_A": "n", "STANDIN_DERIVED": "n", "STANDIN_NAME": '"new"'}
    fragment = tmp_path / "kernel.config"
    fragment.write_text(FRAGMENT)
    saved = save_fragment(STANDIN_KERNEL, kdir, fragment, kernel_version="6.12.0")
    # A set again replaces its line in place (its comment stays); the last NAME line takes
    # the new value and the earlier one goes; DERIVED has no prompt, so it is left out.
    assert fragment.read_text() == (
        "# The stand-in board's fragment.\n"
        "# A is wanted for a reason.\n"
        "# CONFIG_STANDIN_A is not set\n"
        "# NAME, set twice (the later line wins).\n"
        'CONFIG_STANDIN_NAME="new"\n'
    )
    assert (saved.added, saved.replaced, saved.left_out) == (
        (),
        ("STANDIN_A", "STANDIN_NAME"),
        ("STANDIN_DERIVED",),
    )
    # Saved: a build may now regenerate .config.
    assert hand_edits(kdir) == {}
    # Saving again changes nothing.
    again = save_fragment(STANDIN_KERNEL, kdir, fragment, kernel_version="6.12.0")
    assert (again.replaced, again.unchanged) == ((), ("STANDIN_A", "STANDIN_NAME"))
    assert 'CONFIG_STANDIN_NAME="new"\n' in fragment.read_text()


def test_savefragment_appends_symbols_the_fragment_lacks(tmp_path: Path) -> None:
    kdir = configured(tmp_path / "kernel", RESOLVED, EDITED)
    fragment = tmp_path / "kernel.config"
    fragment.write_text("# B, for a reason.\nCONFIG_STANDIN_B=y\n")
    saved = save_fragment(STANDIN_KERNEL, kdir, fragment, kernel_version="6.12.0")
    assert fragment.read_text() == (
        "# B, for a reason.\n"
        "CONFIG_STANDIN_B=y\n"
        "\n"
        f"{SAVED_HEADER}\n"
        "# CONFIG_STANDIN_A is not set\n"
        'CONFIG_STANDIN_NAME="new"\n'
    )
    assert (saved.added, saved.replaced) == (("STANDIN_A", "STANDIN_NAME"), ())


def test_savefragment_creates_the_fragment_of_a_board_without_one(
    scratch_board: Path,
) -> None:
    text = scratch_board.read_text()
    scratch_board.write_text(text.replace("fragments: [kernel.config]", "fragments: []"))
    (scratch_board.parent / "kernel.config").unlink()
    configured(kernel_dir(scratch_board), RESOLVED, EDITED)
    got = invoke_in_process(
        "kernel.savefragment", "--board", str(scratch_board), "--kernel-src", str(STANDIN_KERNEL)
    )
    assert got.returncode == 0, got.stderr
    fragment = scratch_board.parent / "kernel.config"
    assert got.stdout == (
        f"created {fragment}: 2 added (CONFIG_STANDIN_A, CONFIG_STANDIN_NAME)\n"
        "left out, as no fragment can set them (no prompt in this kernel's Kconfig, or not in"
        " it at all): CONFIG_STANDIN_DERIVED\n"
        f"replace the comment above the new lines in {fragment} with why they are needed\n"
        f"{fragment} is not one of the board's kernel fragments: add kernel.config to"
        f" kernel.fragments in {scratch_board}, or builds will not use it\n"
    )
    assert fragment.read_text() == (
        f'{SAVED_HEADER}\n# CONFIG_STANDIN_A is not set\nCONFIG_STANDIN_NAME="new"\n'
    )


def test_build_refuses_to_drop_a_hand_edited_config(scratch_board: Path) -> None:
    args = ["--board", str(scratch_board), "--kernel-src", str(STANDIN_KERNEL), *ONLY_KERNEL]
    assert invoke_in_process("build", *args).returncode == 0
    config = kernel_dir(scratch_board) / ".config"
    # A menuconfig session's edit (the stand-in tree has no menuconfig).
    edited = config.read_text().replace("CONFIG_PACKET=y", "# CONFIG_PACKET is not set")
    edited += "CONFIG_STANDIN_A=y\n"
    config.write_text(edited)
    refused = invoke_in_process("build", *args)
    assert refused.returncode == USER_ERROR_EXIT
    assert refused.stderr.endswith(
        f"error: {config}: edited by hand since netvm wrote it (CONFIG_PACKET, CONFIG_STANDIN_A);"
        " building would regenerate it from the fragments and drop those edits (hint: save them"
        " into the board's kernel fragment with `invoke kernel.savefragment --board"
        f" {scratch_board}`, or build with --force to discard them)\n"
    )
    assert config.read_text() == edited  # left as it was
    forced = invoke_in_process("build", *args, "--force")
    assert forced.returncode == 0, forced.stderr
    regenerated = config.read_text()
    assert "CONFIG_PACKET=y" in regenerated and "CONFIG_STANDIN_A" not in regenerated


def test_menuconfig_round_trip_through_savefragment(scratch_board: Path) -> None:
    args = ["--board", str(scratch_board), "--kernel-src", str(STANDIN_KERNEL), *ONLY_KERNEL]
    assert invoke_in_process("build", *args).returncode == 0
    config = kernel_dir(scratch_board) / ".config"
    config.write_text(config.read_text() + "CONFIG_STANDIN_A=y\n")
    saved = invoke_in_process(
        "kernel.savefragment", "--board", str(scratch_board), "--kernel-src", str(STANDIN_KERNEL)
    )
    assert saved.returncode == 0, saved.stderr
    fragment = scratch_board.parent / "kernel.config"
    assert fragment.read_text().endswith(f"\n\n{SAVED_HEADER}\nCONFIG_STANDIN_A=y\n")
    # The edit is in the board's fragment now: the next build keeps it, without --force.
    rebuilt = invoke_in_process("build", *args)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "CONFIG_STANDIN_A=y" in config.read_text().splitlines()
    assert hand_edits(config.parent) == {}


def test_the_rootfs_step_logs_the_tools_it_runs(odroidc4: Board, tmp_path: Path) -> None:
    """The Debian packages come from the cache (apt and dpkg-deb ran when it was filled);
    the guest python under qemu-user and readelf run on every build of the step."""
    ws = Workspace(ROOT, tmp_path)
    build(odroidc4, ws, BuildOptions(skip=frozenset({"kernel", "dtb", "microkit"})))
    log = (tmp_path / "odroidc4" / "rootfs" / "build.log").read_text().splitlines()
    tools = {line.split()[1] for line in log if line.startswith("$ ")}
    assert {"qemu-aarch64-static", "aarch64-linux-gnu-readelf"} <= tools
    # readelf's whole output, which netvm reads the libraries from
    assert any(re.search(r"\(NEEDED\) +Shared library: \[libc\.so\.6\]$", line) for line in log)
