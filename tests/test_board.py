"""Board model: the Odroid C4 values, and every malformed fixture's exact error text."""

from __future__ import annotations

from pathlib import Path

import pytest

from netvm.board import Board, load_board, queue_region_size
from netvm.core.errors import USER_ERROR_EXIT, UserError
from tests.harness import FIXTURES, ROOT, invoke_in_process, run_invoke

BOARD_FIXTURES = sorted((FIXTURES / "boards").glob("*/board.yaml"))


def test_odroidc4_matches_the_upstream_contract(odroidc4: Board) -> None:
    uio = {d.name: d for d in odroidc4.uio}
    assert [d.name for d in odroidc4.uio][:3] == ["data_passing", "rx_free", "tx_free"]
    assert (uio["data_passing"].maps[0].paddr, uio["data_passing"].maps[0].size) == (
        0xF04000,
        0x1000,
    )
    assert odroidc4.queue_capacity("rx_free") == 512
    assert odroidc4.queue_capacity("tx_active") == 1024
    assert uio["tx_free"].maps[0].size == queue_region_size(1024) == 0x5000
    assert uio["rx_active"].maps[0].size == queue_region_size(512) == 0x3000
    assert (uio["rx_irq"].irq, uio["tx_irq"].irq) == (400, 401)
    assert odroidc4.flash_load_address == 0x20000000
    assert "uio_pdrv_genirq.of_id=generic-uio" in odroidc4.guest.bootargs.split()


def test_board_by_path_equals_board_by_name(odroidc4: Board) -> None:
    assert load_board(str(ROOT / "boards" / "odroidc4" / "board.yaml"), ROOT) == odroidc4


def test_unknown_board_name_lists_known_boards() -> None:
    with pytest.raises(UserError) as err:
        load_board("odroidc5", ROOT)
    shipped = sorted(p.parent.name for p in (ROOT / "boards").glob("*/board.yaml"))
    assert f"known boards: {', '.join(shipped)};" in str(err.value)


def test_there_are_enough_malformed_fixtures() -> None:
    assert len(BOARD_FIXTURES) >= 60


@pytest.mark.parametrize("board_file", BOARD_FIXTURES, ids=lambda p: p.parent.name)
def test_malformed_board_library_error(board_file: Path) -> None:
    expected = (board_file.parent / "expected.txt").read_text()
    with pytest.raises(UserError) as err:
        load_board(str(board_file.relative_to(ROOT)), ROOT)
    assert err.value.render() + "\n" == expected


@pytest.mark.parametrize("board_file", BOARD_FIXTURES, ids=lambda p: p.parent.name)
def test_malformed_board_cli_exits_2_without_traceback(board_file: Path) -> None:
    # `invoke validate` in this process: its parsing, task and exit status for each fixture.
    rel = str(board_file.relative_to(ROOT))
    got = invoke_in_process("validate", "--board", rel)
    assert got.returncode == USER_ERROR_EXIT
    assert got.stderr == (board_file.parent / "expected.txt").read_text()
    assert got.stdout == ""


def test_malformed_board_cli_process_exits_2_without_traceback() -> None:
    # The same through a real `invoke` process, for one fixture.
    board_file = FIXTURES / "boards" / "unknown_key" / "board.yaml"
    proc = run_invoke("validate", "--board", str(board_file.relative_to(ROOT)))
    assert proc.returncode == USER_ERROR_EXIT
    assert proc.stderr == (board_file.parent / "expected.txt").read_text()
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
