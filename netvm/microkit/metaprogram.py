"""Run upstream's system-description program (meta.py) with the board's client MACs.

Upstream's example adds its sDDF network clients without MAC addresses, and sdfgen then
draws a random locally administered one for each, on every run: the clients' addresses
would not be the board file's, and no two builds of loader.img would be the same. The
Microkit step therefore has make run this file as its `PYTHON`:

    <python with sdfgen> metaprogram.py client0=02:00:00:00:00:10,... <meta.py> <its args>

It gives `Sddf.Net.add_client_with_copier` the board's MAC for every client whose name
the table has and that the program added without one, then runs meta.py unchanged.
Nothing of upstream's is edited or copied.

For a board meta.py's table lacks (netvm.microkit.system), netvm's make file adds

    ... metaprogram.py MACS --board-entry board-entry.json <meta.py> <its args>

and the board's row is added to the table: meta.py is loaded without running its
command line, and what that command line does (pick the board, make the
SystemDescription and Sddf, read both DTBs, call `generate`) is done here with the row.

This file runs under the python that has sdfgen (the one make would use), not netvm's:
it imports only the standard library and sdfgen, and nothing of netvm.
"""

from __future__ import annotations

import json
import runpy
import sys
from typing import Any


def parse_macs(text: str) -> dict[str, str]:
    """ "client0=02:..,client1=02:.." -> {"client0": "02:..", ...}"""
    return dict(item.split("=", 1) for item in text.split(",") if item)


def with_board_macs(net: Any, macs: dict[str, str]) -> None:
    """Make `net.add_client_with_copier` default each client's MAC from `macs`."""
    add = net.add_client_with_copier

    def add_client_with_copier(
        self: Any, client: Any, copier: Any = None, *, mac_addr: str | None = None, **kw: Any
    ) -> Any:
        if mac_addr is None:
            mac_addr = macs.get(client.name)
        return add(self, client, copier, mac_addr=mac_addr, **kw)

    net.add_client_with_copier = add_client_with_copier


def run_with_board_entry(meta_py: str, entry: dict[str, Any], args: list[str]) -> None:
    """Run meta.py's `generate` for the board `entry` describes (meta.py's own options)."""
    import argparse

    import sdfgen

    meta = runpy.run_path(meta_py, run_name="netvm_metaprogram")  # defines; no command line
    generate = meta["generate"]
    module = generate.__globals__  # generate() reads `board` and `sdf` from here
    fields = dict(entry, arch=getattr(sdfgen.SystemDescription.Arch, entry["arch"]))
    board = meta["Board"](**fields)
    meta["BOARDS"].append(board)
    parser = argparse.ArgumentParser(prog=meta_py)
    for name in ("--dtb_native", "--dtb_guest", "--sddf", "--board", "--output", "--sdf"):
        parser.add_argument(name, required=True)
    opts = parser.parse_args(args)
    if opts.board != board.name:
        sys.exit(f"metaprogram.py: --board {opts.board}, but the board entry is {board.name}")
    module["board"] = board
    module["sdf"] = sdfgen.SystemDescription(board.arch, board.paddr_top)
    module["sddf"] = sdfgen.Sddf(opts.sddf)
    with open(opts.dtb_native, "rb") as f:
        native = sdfgen.DeviceTree(f.read())
    with open(opts.dtb_guest, "rb") as f:
        guest = sdfgen.DeviceTree(f.read())
    generate(opts.sdf, opts.output, native, guest)


def main(argv: list[str]) -> None:
    usage = "usage: metaprogram.py CLIENT=MAC[,...] [--board-entry JSON] META_PY [ARGS...]"
    if len(argv) < 3:
        sys.exit(usage)
    import sdfgen  # the sdfgen of the python make runs (not netvm's)

    with_board_macs(sdfgen.Sddf.Net, parse_macs(argv[1]))
    rest = argv[2:]
    if rest[0] == "--board-entry":
        if len(rest) < 3:
            sys.exit(usage)
        with open(rest[1]) as f:
            entry = json.load(f)
        run_with_board_entry(rest[2], entry, rest[3:])
        return
    sys.argv = rest
    runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv)
