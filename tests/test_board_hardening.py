"""Hostile and careless board input: escaped into what is rendered, refused with the
driver's own rules, mapped back to the board key, never a traceback or a lost build."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netvm.board import Board, load_board, parse_board
from netvm.builder.build import claim_build_dir
from netvm.core.errors import UserError
from netvm.core.files import COMPLETE_STAMP, fill_once
from netvm.core.yamlio import load_yaml
from netvm.guest.devicetree import build_guest_dtb
from netvm.guest.drivercheck import driver_findings
from netvm.guest.fdt import parse_dtb
from netvm.guest.kernelsrc import KernelSource
from netvm.guest.render import block_comment, dts_string, render_all
from tests.harness import ROOT

BOARDS = sorted((ROOT / "boards").glob("*/board.yaml"))
HOSTILE = 'a */ / { evil; }; /* b "quoted" \\ back\nslash\ttab'


def test_block_comment_cannot_end_the_comment_or_the_line() -> None:
    text = block_comment(HOSTILE)
    assert "*/" not in text and "\n" not in text
    assert block_comment("Hardkernel Odroid C4") == "Hardkernel Odroid C4"


def test_dts_string_escapes_what_dtc_would_read_as_syntax() -> None:
    assert dts_string('a"b\\c\nd') == 'a\\"b\\\\c\\x0ad'
    assert dts_string("console=hvc0 maxcpus=1") == "console=hvc0 maxcpus=1"


def test_hostile_board_text_builds_a_dtb_that_says_exactly_the_text(
    odroidc4: Board, kernel_src: KernelSource, tmp_path: Path
) -> None:
    """The description and a reason land in comments, the bootargs in a string: real dtc
    compiles the result, no injected property appears, the bootargs come back verbatim."""
    node = replace(odroidc4.devicetree.disable[0], reason=HOSTILE)
    bootargs = odroidc4.guest.bootargs + ' x="a b" y=\\z'
    board = replace(
        odroidc4,
        description=HOSTILE,
        devicetree=replace(odroidc4.devicetree, disable=(node, *odroidc4.devicetree.disable[1:])),
        guest=replace(odroidc4.guest, bootargs=bootargs),
    )
    rendered = render_all(board, tmp_path / "render", ROOT)
    result = build_guest_dtb(
        board, rendered.overlay_dts, kernel_src, tmp_path / "dtb", header="h", initrd=None
    )
    nodes = parse_dtb(result.dtb.read_bytes())
    assert nodes["/chosen"]["bootargs"] == bootargs.encode() + b"\0"
    assert all("evil" not in props for props in nodes.values())


def test_a_dtc_failure_names_the_board_key_behind_the_line(
    odroidc4: Board, kernel_src: KernelSource, tmp_path: Path
) -> None:
    missing = replace(odroidc4.devicetree.disable[2], path="/soc/no-such-node@0")
    disable = (*odroidc4.devicetree.disable[:2], missing, *odroidc4.devicetree.disable[3:])
    board = replace(odroidc4, devicetree=replace(odroidc4.devicetree, disable=disable))
    rendered = render_all(board, tmp_path / "render", ROOT)
    with pytest.raises(UserError) as err:
        build_guest_dtb(
            board, rendered.overlay_dts, kernel_src, tmp_path / "dtb", header="h", initrd=None
        )
    (finding,) = err.value.findings
    assert finding.file == "boards/odroidc4/board.yaml"
    assert finding.key == "devicetree.disable[2].path"
    assert "&{/soc/no-such-node@0} {" in finding.message
    assert "Label or path /soc/no-such-node@0 not found" in finding.message


def test_a_dtb_larger_than_its_window_is_refused(
    odroidc4: Board, kernel_src: KernelSource, tmp_path: Path
) -> None:
    board = replace(odroidc4, guest=replace(odroidc4.guest, dtb_max_size=0x1000))
    rendered = render_all(board, tmp_path / "render", ROOT)
    with pytest.raises(UserError) as err:
        build_guest_dtb(
            board, rendered.overlay_dts, kernel_src, tmp_path / "dtb", header="h", initrd=None
        )
    (finding,) = err.value.findings
    assert finding.key == "guest.dtb_max_size"
    assert finding.message.endswith("more than the 0x1000 the board leaves for it")


# --- the driver's own rules --------------------------------------------------------------


def valid_fixture_boards() -> list[Path]:
    """Every board file the toolkit accepts: the shipped boards and the good fixtures."""
    return BOARDS + sorted((ROOT / "tests" / "fixtures").glob("**/good*/board.yaml"))


@pytest.mark.parametrize("board_file", valid_fixture_boards(), ids=lambda p: p.parent.name)
def test_every_accepted_board_passes_the_drivers_self_check(board_file: Path) -> None:
    board = load_board(str(board_file), ROOT)
    for guest in (board, board.sel4):
        if guest is not None:
            assert driver_findings(guest, ROOT) == []


def test_a_capacity_over_the_drivers_limit_is_refused_against_the_board_key(
    odroidc4: Board,
) -> None:
    big = replace(odroidc4, net=replace(odroidc4.net, rx_buffers=1 << 16))
    findings = driver_findings(big, ROOT)
    assert {f.key for f in findings} == {"net.rx_buffers"}
    assert all(f.file == "boards/odroidc4/board.yaml" for f in findings)
    assert findings[0].message.startswith(
        "the guest driver would refuse this board: driver.json uio.rx_free.capacity: "
        "expected a power of two ≤ "
    )


def test_more_tx_clients_than_sddf_allows_are_refused(odroidc4: Board) -> None:
    c = odroidc4.net.clients[0]
    many = tuple(
        replace(c, name=f"c{i}", tx_buffers=1, mac=f"02:00:00:00:01:{i:02x}", ipv4=f"10.1.0.{i}")
        for i in range(65)
    )
    findings = driver_findings(replace(odroidc4, net=replace(odroidc4.net, clients=many)), ROOT)
    assert any(
        f.key == "net.clients" and "tx_clients: 65 clients; sDDF allows 64" in f.message
        for f in findings
    )


# --- build directories ----------------------------------------------------------------


def test_a_second_board_file_with_the_same_name_cannot_take_the_build_dir(
    tmp_path: Path,
) -> None:
    out = tmp_path / "odroidc4"
    with claim_build_dir(out, "boards/odroidc4/board.yaml", lambda _line: None):
        pass
    with (
        pytest.raises(UserError) as err,
        claim_build_dir(out, "copy/board.yaml", lambda _line: None),
    ):
        pytest.fail("claimed a directory that belongs to another board file")
    (finding,) = err.value.findings
    assert (finding.file, finding.key) == ("copy/board.yaml", "name")
    assert "holds the build of boards/odroidc4/board.yaml" in finding.message


def test_a_file_where_the_build_dir_should_be_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "odroidc4").write_text("not a directory")
    with (
        pytest.raises(UserError, match="cannot use it as a build directory"),
        claim_build_dir(tmp_path / "odroidc4", "b", lambda _line: None),
    ):
        pass
    assert (tmp_path / "odroidc4").read_text() == "not a directory"


def test_a_second_build_waits_for_the_first(tmp_path: Path) -> None:
    """Another process holds the directory: the claim waits (and says so) until it ends."""
    out = tmp_path / "b"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.5)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    said: list[str] = []
    start = time.monotonic()
    with claim_build_dir(out, "b", said.append):
        waited = time.monotonic() - start
    holder.wait()
    assert said == [f"waiting for another build in {out} to finish"]
    assert waited > 0.5


def test_concurrent_fills_of_one_cache_directory_fill_it_once(tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "entry"
    calls: list[int] = []

    def fill(scratch: Path) -> str:
        calls.append(1)
        time.sleep(0.3)  # long enough for the other thread to arrive mid-fill
        (scratch / "data").write_text("whole")
        return "test"

    threads = [threading.Thread(target=fill_once, args=(dest, fill)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1]
    assert (dest / "data").read_text() == "whole" and (dest / COMPLETE_STAMP).is_file()


# --- YAML -----------------------------------------------------------------------------


def test_an_unquoted_mac_is_read_as_text_not_base_60(tmp_path: Path) -> None:
    f = tmp_path / "b.yaml"
    f.write_text("mac: 52:54:00:12:34:56\ntime: 1:30\nhex: 0x10\nfloat: 1.5\n")
    assert load_yaml(f, "b.yaml") == {
        "mac": "52:54:00:12:34:56",
        "time": "1:30",
        "hex": 16,
        "float": 1.5,
    }


# --- generated input: a finding or a board, never a traceback ------------------------

DOCS = {
    f.parent.name: yaml.safe_load(f.read_text()) for f in BOARDS
}  # the shipped boards as parsed YAML: the starting points of the generated input
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.text(max_size=12),
    st.floats(allow_nan=False),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = [(name, p) for name, doc in DOCS.items() for p in _paths(doc) if p]


def _set(doc: object, path: tuple[object, ...], value: object) -> object:
    doc = json.loads(json.dumps(doc))
    node = doc
    for step in path[:-1]:
        node = node[step]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(PATHS), value=VALUES)
def test_any_one_value_replaced_gives_a_board_or_findings(
    where: tuple[str, tuple[object, ...]], value: object
) -> None:
    """Replace one value anywhere in a shipped board (its sel4 section included) by
    anything YAML can hold: the reader returns a Board or raises UserError (file, key,
    message), nothing else."""
    name, path = where
    doc = _set(DOCS[name], path, value)
    try:
        parse_board(doc, ROOT / "boards" / name / "board.yaml", "board.yaml")
    except UserError as exc:
        assert exc.findings and all(f.file == "board.yaml" and f.message for f in exc.findings)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_as_a_board_file_gives_a_board_or_findings(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    f = tmp_path_factory.mktemp("yaml") / "board.yaml"
    f.write_text(text)
    try:
        parse_board(load_yaml(f, "board.yaml"), f, "board.yaml")
    except UserError as exc:
        assert exc.findings
