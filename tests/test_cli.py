"""The command line as a whole: every task's help, short flags, flag values, durations,
invoke's own --dry and --list-format json, and the tasks clean, info and doctor."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from invoke import Argument, Collection, Program
from invoke.parser import ParserContext

from netvm.board import Board, load_board
from netvm.builder.build import STEP_OUTPUTS, STEP_READS, BuildOptions, build, plan_build
from netvm.builder.clean import CACHE_ENTRIES
from netvm.core.cli import CORE_SHORT_FLAGS, SHORT_FLAGS
from netvm.core.cliargs import duration_seconds, parse_seconds
from netvm.core.errors import UserError
from netvm.core.pipeline import Artifact, PlanRunner
from netvm.core.workspace import Workspace
from netvm.microkit.handoff import resolve_inputs, run_step
from netvm.target.flash import FlashOptions
from tests.harness import (
    C4_DISPLAY,
    ROOT,
    STANDIN_LIBVMM,
    STANDIN_PYTHON,
    STANDIN_SDK,
    CliResult,
    copy_board,
    import_file,
    invoke_in_process,
    needs_root,
    runner_with_guest,
)

# --- walking the tasks -----------------------------------------------------------------


def namespace() -> Collection:
    """tasks.py's collection, loaded afresh (as invoke loads it)."""
    ns: Collection = import_file(ROOT / "tasks.py").ns
    return ns


def task_contexts() -> list[ParserContext]:
    return namespace().to_contexts()


def arguments(ctx: ParserContext) -> Iterator[Argument]:
    """Each of the task's flags once."""
    yield from ctx.args.values()


KIND = re.compile(r"[A-Z][A-Z_]*( \([^)]*\))?: \S")


def test_the_walk_sees_every_task() -> None:
    names = {ctx.name for ctx in task_contexts()}
    assert {"build", "flash", "clean", "info", "doctor", "kernel.menuconfig", "board.new"} <= names


def help_problems(ctx: ParserContext) -> list[str]:
    """What is missing from the help of the task's flags: the text, the kind of value it
    takes (first, in capitals), "(repeatable)", the default."""
    problems = []
    for arg in arguments(ctx):
        flag = f"{ctx.name} --{arg.names[0]}"
        text = arg.help or ""
        if not text:
            problems.append(f"{flag} has no help text")
        if arg.kind is not bool and not KIND.match(text):
            problems.append(f"{flag}: help does not start with a KIND: {text!r}")
        if arg.kind is list and "(repeatable)" not in text:
            problems.append(f"{flag} does not say it is repeatable")
        if arg.default not in (None, False, [], "") and f"(default: {arg.default}" not in text:
            problems.append(f"{flag}: help does not name its default: {text!r}")
    return problems


@pytest.mark.parametrize("ctx", task_contexts(), ids=lambda c: c.name)
def test_every_flag_says_its_kind_and_default(ctx: ParserContext) -> None:
    assert help_problems(ctx) == []


def test_a_flag_without_help_fails_the_walk() -> None:
    from netvm.core.cli import task

    @task(help={"name": "the thing's name"})
    def bare(c: Any, size: str = "4", name: str = "x", quiet: bool = False) -> None:
        """A task for this test."""

    (ctx,) = Collection(bare).to_contexts()
    assert help_problems(ctx) == [
        "bare --size has no help text",
        "bare --size: help does not start with a KIND: ''",
        "bare --size: help does not name its default: ''",
        'bare --name: help does not start with a KIND: "the thing\'s name (default: x)"',
        "bare --quiet has no help text",
    ]
    assert [a.names for a in arguments(ctx)] == [("size",), ("name",), ("quiet",)]  # no -s


def test_help_shows_kinds_and_defaults() -> None:
    out = invoke_in_process("--help", "flash").stdout
    assert re.search(r"--timeout=STRING\s+DURATION \(90, 15s, 5m, 1h\): how long", out)
    assert "(default: 300)" in out and "(default: 115200)" in out
    out = invoke_in_process("--help", "build").stdout
    assert re.search(r"--skip\s+STEP \(repeatable\): do not run this step", out)
    assert "(default: odroidc4)" in out


def test_a_short_flag_means_one_thing_in_every_task() -> None:
    seen: dict[str, set[str]] = {}
    for ctx in task_contexts():
        for arg in arguments(ctx):
            long_name, *shorts = arg.names
            for short in shorts:
                seen.setdefault(short, set()).add(long_name)
            if long_name in SHORT_FLAGS:
                assert shorts == [SHORT_FLAGS[long_name]], f"{ctx.name} --{long_name}: {shorts}"
    assert {s: sorted(longs) for s, longs in seen.items() if len(longs) > 1} == {}
    assert set(seen) <= set(SHORT_FLAGS.values()), "a short flag nobody chose"
    assert seen["b"] == {"board"}


def test_no_task_short_flag_shadows_a_core_flag() -> None:
    program = Program()
    args = [*program.core_args(), *program.task_args()]
    core = {n for arg in args for n in arg.names if len(n) == 1}
    assert core == set(CORE_SHORT_FLAGS)
    assert not core & set(SHORT_FLAGS.values())


def test_short_flags_work() -> None:
    got = invoke_in_process("validate", "-b", "qemu_virt_aarch64")
    assert got.returncode == 0 and "qemu_virt_aarch64/board.yaml: ok" in got.stdout


# --- flag values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("build", "--skip"), ("build", "--skip", "--board", "odroidc4"), ("bench", "--driver-arg")],
)
def test_a_repeatable_flag_without_a_value_is_an_error(args: tuple[str, ...]) -> None:
    got = invoke_in_process(*args)
    assert got.returncode != 0
    assert f"Flag '{args[1]}' needed value and was not given one!" in got.stderr


def test_a_repeatable_flag_still_repeats() -> None:
    got = invoke_in_process("build", "--skip", "kernle", "--skip", "rootfs")
    assert got.returncode == 2
    assert "--skip kernle: not a step that can be skipped" in got.stderr


def test_invoke_dry_is_refused() -> None:
    for core in ("--dry", "-R"):
        got = invoke_in_process(core, "validate")
        assert got.returncode == 2, got
        assert got.stderr.startswith("error: invoke --dry: netvm's tasks")
        assert got.stdout == ""


def test_list_json_names_the_tasks_as_typed() -> None:
    got = invoke_in_process("--list", "--list-format", "json")
    assert got.returncode == 0
    doc = json.loads(got.stdout)

    def names(coll: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
        for t in coll["tasks"]:
            yield prefix + t["name"], t["help"]
        for sub in coll["collections"]:
            yield from names(sub, prefix + sub["name"] + ".")

    listed = dict(names(doc))
    assert set(listed) == set(namespace().task_names)
    assert "build" in listed and "build_" not in listed
    for name, help_line in listed.items():
        assert help_line.endswith((".", ")")), f"{name}: cut help line {help_line!r}"


# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("1.5", 1.5),
        (" 15s ", 15.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h 30m", 5400.0),
        ("2H", 7200.0),
        (".5s", 0.5),
        ("0", 0.0),
    ],
)
def test_durations_read(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", " ", "abc", "-5", "+5", "nan", "inf", "1e3", "5ms", "5d", "30s1m", "1s1s", "s", "5m3"],
)
def test_other_durations_are_refused(text: str) -> None:
    assert duration_seconds(text) is None
    with pytest.raises(UserError) as err:
        parse_seconds("--duration", text)
    assert str(err.value) == (
        f"--duration: expected a duration above 0 and at most 168h, got {text!r} "
        "(hint: seconds (90, 1.5) or with a unit (15s, 5m, 1h, 1m30s))"
    )


def test_durations_are_bounded() -> None:
    assert parse_seconds("--t", "24h", high=86400) == 86400
    for text in ("0", "0s", "24h1s"):
        with pytest.raises(UserError, match="above 0 and at most 24h"):
            parse_seconds("--t", text, high=86400)


def test_flash_timeout_takes_the_same_durations() -> None:
    assert FlashOptions(method="tftp", timeout="5m").timeout == 300.0
    assert FlashOptions(method="tftp", timeout=90).timeout == 90.0
    with pytest.raises(UserError, match=r"^--timeout: expected a duration"):
        FlashOptions(method="tftp", timeout="5 minutes")


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("sim", "--duration", "5x"), "--duration"),
        (("run", "--no-vmm", "--boot-timeout", "forever"), "--boot-timeout"),
        (("flash", "--dry-run", "--timeout", "1d"), "--timeout"),
    ],
)
def test_every_task_refuses_a_bad_duration_before_it_starts(
    args: tuple[str, ...], flag: str
) -> None:
    got = invoke_in_process(*args)
    assert got.returncode == 2, got
    assert got.stderr.startswith(f"error: {flag}: expected a duration")


# --- clean -----------------------------------------------------------------------------


def in_build_root(build_root: Path, *args: str, cache: Path | None = None) -> CliResult:
    env = dict(os.environ, NETVM_BUILD_DIR=str(build_root))
    if cache is not None:
        env["NETVM_CACHE"] = str(cache)
    return invoke_in_process(*args, env=env)


@pytest.fixture()
def build_root(tmp_path: Path) -> Path:
    """A build root holding two board builds, the bench tools, and things not netvm's:
    a directory, a file, and a symlink to a directory outside."""
    root = tmp_path / "build"
    for name, mark in (("alpha", "board-file"), ("beta", "manifest.json")):
        (root / name / "dtb").mkdir(parents=True)
        (root / name / mark).write_text("x\n")
        (root / name / "dtb" / "guest.dtb").write_bytes(b"\0" * 3070)  # 3 KiB in all
    (root / "bench").mkdir()
    (root / "bench" / "gen").write_bytes(b"\0" * 10)
    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("mine\n")
    (root / "stray.txt").write_text("mine\n")
    outside = tmp_path / "outside"
    (outside / "render").mkdir(parents=True)
    (outside / "render" / "keep").write_text("mine\n")
    (root / "link").symlink_to(outside)
    return root


def test_clean_removes_one_board(build_root: Path) -> None:
    got = in_build_root(build_root, "clean", "--board", "alpha")
    assert got.returncode == 0, got
    assert f"removed {build_root}/alpha (3.0 KiB)" in got.stdout
    assert sorted(p.name for p in build_root.iterdir()) == [
        "bench",
        "beta",
        "link",
        "notes",
        "stray.txt",
    ]


def test_clean_all_removes_only_netvm_directories(build_root: Path, tmp_path: Path) -> None:
    dry = in_build_root(build_root, "clean", "--all", "--dry-run")
    assert dry.returncode == 0 and "would remove 3 in all" in dry.stdout
    assert (build_root / "alpha").is_dir()
    got = in_build_root(build_root, "clean", "--all")
    assert got.returncode == 0, got
    assert sorted(p.name for p in build_root.iterdir()) == ["link", "notes", "stray.txt"]
    assert (tmp_path / "outside" / "render" / "keep").read_text() == "mine\n"
    assert f"left alone: {build_root}/notes (not a netvm build directory" in got.stdout
    assert f"left alone: {build_root}/link (a symlink" in got.stdout
    assert "removed 3 in all, 6.0 KiB" in got.stdout


@pytest.mark.parametrize(
    ("board", "message"),
    [
        ("../outside", "error: ../outside: board file not found"),
        ("notes", "notes is not a netvm build directory"),
        ("link", "link is a symlink"),
        ("stray.txt", "error: stray.txt: "),
    ],
)
def test_clean_refuses_what_is_not_a_build_directory(
    build_root: Path, tmp_path: Path, board: str, message: str
) -> None:
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    got = in_build_root(build_root, "clean", "--board", board)
    assert got.returncode == 2, got
    assert message in got.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_clean_leaves_the_cache_unless_asked(build_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for entry in ("src", "debs", "mine"):
        (cache / entry).mkdir(parents=True)
        (cache / entry / "f").write_bytes(b"\0" * 100)
    got = in_build_root(build_root, "clean", "--all", cache=cache)
    assert got.returncode == 0
    assert sorted(p.name for p in cache.iterdir()) == ["debs", "mine", "src"]
    alone = in_build_root(build_root, "clean", "--cache", cache=cache)
    assert alone.returncode == 2 and "--cache goes with --all" in alone.stderr
    got = in_build_root(build_root, "clean", "--all", "--cache", cache=cache)
    assert got.returncode == 0, got
    assert sorted(p.name for p in cache.iterdir()) == ["mine"]
    assert f"removed {cache}/src (100 B)" in got.stdout


def test_clean_knows_every_cache_entry_netvm_makes() -> None:
    made = set()
    for path in (ROOT / "netvm").rglob("*.py"):
        made |= set(re.findall(r'(?:cache_dir\(\)|cache) / "([^"]+)"', path.read_text()))
    assert made and made <= set(CACHE_ENTRIES)


def test_clean_of_a_board_without_a_build(tmp_path: Path) -> None:
    got = in_build_root(tmp_path / "build", "clean", "--board", "odroidc4")
    assert got.returncode == 0
    assert got.stdout == f"nothing to remove: {tmp_path}/build/odroidc4 does not exist\n"


# --- info ------------------------------------------------------------------------------

FAST = ("--skip", "kernel", "--skip", "rootfs")


def steps_of(text: str) -> dict[str, str]:
    """The "next build:" lines of `invoke info`: step -> status."""
    lines = text.split("next build:\n", 1)[1].splitlines()
    return dict(line.strip().split(None, 1) for line in lines)


def test_info_after_a_build_and_after_a_board_change(tmp_path: Path) -> None:
    board_file = copy_board(tmp_path / "boards" / "c4info", name="c4info")
    build_root = tmp_path / "build"
    built = in_build_root(build_root, "build", "--board", str(board_file), *FAST)
    assert built.returncode == 0, built.stderr

    got = in_build_root(build_root, "info", "--board", str(board_file), *FAST)
    assert got.returncode == 0, got.stderr
    assert steps_of(got.stdout) == {
        "render": "cached",
        "kernel": "skipped: not run: --skip kernel",
        "rootfs": "skipped: not run: --skip rootfs",
        "dtb": "cached",
        "microkit": "skipped: loader.img not built: no microkit-sdk, libvmm, sddf given "
        "(docs/microkit.md)",
    }
    assert "kernel source: debian: linux-source-6.12" in got.stdout
    assert re.search(r"^  dtc: Version: DTC \S+$", got.stdout, re.M)
    assert "  libvmm: pinned https://github.com/au-ts/libvmm at " in got.stdout

    board_file.write_text(board_file.read_text().replace("maxcpus=1 nosmp", "maxcpus=1"))
    got = in_build_root(build_root, "info", "--board", str(board_file), *FAST, "--json", "-")
    doc = json.loads(got.stdout)
    status = {s["name"]: f"{s['status']}: {s['reason']}" for s in doc["steps"]}
    assert status["render"] == "rebuild: files changed"
    assert status["dtb"] == "rebuild: overlay changed"
    # Without --skip the next build would also make the kernel and initramfs, and the DTB
    # after them (its initrd window comes from their sizes).
    got = in_build_root(build_root, "info", "--board", str(board_file))
    assert steps_of(got.stdout)["kernel"] == "rebuild: not built before"
    assert steps_of(got.stdout)["dtb"] == "rebuild: after kernel, rootfs"


def test_info_names_a_changed_output_and_writes_nothing(tmp_path: Path) -> None:
    board = load_board(str(copy_board(tmp_path / "boards" / "c4plan", name="c4plan")), ROOT)
    ws = Workspace(ROOT, tmp_path / "build")
    options = BuildOptions(skip=frozenset({"kernel", "rootfs"}))
    build(board, ws, options)
    out = ws.build_dir(board)

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")}

    before = snapshot()
    assert [str(p) for p in plan_build(board, ws, options).steps][3] == "cached"
    assert snapshot() == before
    dtb = out / "dtb" / "guest.dtb"
    dtb.write_bytes(dtb.read_bytes()[:-1] + b"X")
    before = snapshot()
    plan = plan_build(board, ws, options)
    assert snapshot() == before
    assert str(plan.steps[3]) == f"rebuild: output dtb ({dtb}) changed or is gone"


def test_a_plan_of_the_microkit_step_names_the_changed_guest_file(
    odroidc4: Board, tmp_path: Path
) -> None:
    # The stand-in Microkit toolchain builds loader.img once; a plan over the same build
    # directory then reuses it, until a guest file it takes changes.
    runner = runner_with_guest(tmp_path)
    given = dataclasses.replace(
        resolve_inputs(
            {"microkit_sdk": str(STANDIN_SDK), "libvmm": str(STANDIN_LIBVMM)},
            None,
            {},
            cwd=ROOT,
            config_dir=ROOT,
        ),
        python=STANDIN_PYTHON,
    )
    run_step(odroidc4, C4_DISPLAY, runner, given, require_image=True)
    assert runner.records[-1].status == "built"

    def plan() -> str:
        planner = PlanRunner(runner.build_dir, reads=STEP_READS, outputs=STEP_OUTPUTS)
        planner.artifacts.update({k: Artifact.of(v.path) for k, v in runner.artifacts.items()})
        run_step(odroidc4, C4_DISPLAY, planner, given, require_image=True)
        (prediction,) = planner.predictions
        return str(prediction)

    assert plan() == "cached"
    runner.artifacts["dtb"].path.write_bytes(b"another dtb\n")
    assert plan() == "rebuild: guest changed"


# --- doctor ----------------------------------------------------------------------------


@needs_root  # root is one of the checks
def test_doctor_on_this_machine() -> None:
    got = invoke_in_process("doctor")
    assert got.returncode == 0, got.stdout
    assert re.search(r"^all \d+ required checks passed", got.stdout, re.M)
    cross = r"^ok   aarch64-linux-gnu-gcc: /\S+ \[build \(kernel step\) of "
    assert re.search(cross, got.stdout, re.M)


def test_doctor_without_tools_says_how_to_get_them() -> None:
    env = dict(os.environ, PATH=str(ROOT / "no-such-dir"))
    got = invoke_in_process("doctor", "--json", "-", env=env)
    assert got.returncode == 2
    doc = json.loads(got.stdout)
    missing = {c["name"]: c["fix"] for c in doc["checks"] if not c["ok"] and c["required"]}
    assert missing["dtc"] == "apt-get install device-tree-compiler (./bootstrap installs it)"
    assert missing["aarch64-linux-gnu-gcc"].startswith("apt-get install gcc-aarch64-linux-gnu")
    assert missing["make"].startswith("apt-get install make")
    assert "device-tree-compiler" in doc["apt_get_install"]
    text = invoke_in_process("doctor", env=env)
    assert text.returncode == 2
    assert "MISS dtc: not found on PATH [build (dtb step), check]" in text.stdout
    assert "       fix: apt-get install device-tree-compiler" in text.stdout
    assert re.search(r"^install: apt-get install -y .*device-tree-compiler", text.stdout, re.M)
