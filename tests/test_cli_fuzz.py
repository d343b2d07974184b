"""The tasks with generated arguments: exit 0 or 2 with findings, never a traceback.

The task functions are called in-process (invoke's own flag parsing is exercised by the
subprocess tests elsewhere); every argument is text, as invoke hands it over. A fixed
example budget keeps this in the default run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from invoke import Context
from invoke.exceptions import Exit

import tasks
from netvm.core.cliargs import parse_int, parse_seconds
from netvm.core.errors import USER_ERROR_EXIT, UserError
from netvm.sim.runner import SimOptions, check_options

# Text a user might type, and text nobody should: numbers, signs, separators, shell and
# U-Boot metacharacters, non-ASCII, empty.
ARG = st.one_of(
    st.text(max_size=24),
    st.from_regex(r"-?(0x)?[0-9a-f]{0,12}(\.[0-9]{0,3})?", fullmatch=True),
    st.sampled_from(["", "0", "-1", "1e999", "nan", "10.0.0.5; reset", "$(reboot)", "a\nb"]),
)
BUDGET = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def run_task(task: object, **kwargs: object) -> int:
    """The task's exit status: 0, or the code of the invoke Exit it raised."""
    try:
        task(Context(), **kwargs)  # type: ignore[operator]
    except Exit as exc:
        return int(exc.code)
    return 0


@BUDGET
@given(board=ARG)
def test_validate_any_board_argument(board: str) -> None:
    assert run_task(tasks.validate, board=board) in (0, USER_ERROR_EXIT)


@BUDGET
@given(
    ip=ARG,
    netmask=ARG,
    gateway=ARG,
    load_address=ARG,
    baud=ARG,
    port=ARG,
    timeout=ARG,
)
def test_flash_dry_run_any_network_and_number_arguments(
    tmp_path: Path,
    ip: str,
    netmask: str,
    gateway: str,
    load_address: str,
    baud: str,
    port: str,
    timeout: str,
) -> None:
    image = tmp_path / "loader.img"
    image.write_bytes(b"\0" * 4096)
    code = run_task(
        tasks.flash,
        board="odroidc4",
        serial="unix:" + str(tmp_path / "console.sock"),
        image=str(image),
        ip=ip or None,
        netmask=netmask,
        gateway=gateway or None,
        load_address=load_address or None,
        baud=baud,
        port=port,
        timeout=timeout,
        dry_run=True,
    )
    assert code in (0, USER_ERROR_EXIT)


@settings(max_examples=200, deadline=None)
@given(text=ARG)
def test_numbers_parse_or_are_findings(text: str) -> None:
    for parse in (lambda: parse_int("--n", text, 1, 65535), lambda: parse_seconds("--s", text)):
        try:
            parse()
        except UserError as exc:
            assert str(exc).startswith(("--n: expected", "--s: expected"))


@BUDGET
@given(cmd=ARG)
def test_sim_driver_cmd_is_checked_before_the_run(cmd: str) -> None:
    try:
        check_options(SimOptions(driver_cmd=cmd))
    except UserError as exc:
        assert str(exc).startswith("--driver-cmd: ")


def test_sim_refuses_a_directory_for_its_stats_before_running(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory"):
        check_options(SimOptions(stats_json=tmp_path))
