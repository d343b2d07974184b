"""Run upstream's system-description program (meta.py) with the board's client MACs.

Upstream's example adds its sDDF network clients without MAC addresses, and sdfgen then
draws a random locally administered one for each, on every run: the clients' addresses
would not be the board file's, and no two builds of loader.img would be the same. The
Microkit step therefore has make run this file as its `PYTHON`:

    <python with sdfgen> metaprogram.py client0=02:00:00:00:00:10,... <meta.py> <its args>

It gives `Sddf.Net.add_client_with_copier` the board's MAC for every client whose name
the table has and that the program added without one, then runs meta.py unchanged.
Nothing of upstream's is edited or copied.

This file runs under the python that has sdfgen (the one make would use), not netvm's:
it imports only the standard library and sdfgen, and nothing of netvm.
"""

from __future__ import annotations

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


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit("usage: metaprogram.py CLIENT=MAC[,CLIENT=MAC...] META_PY [ARGS...]")
    import sdfgen  # the sdfgen of the python make runs (not netvm's)

    with_board_macs(sdfgen.Sddf.Net, parse_macs(argv[1]))
    sys.argv = argv[2:]
    runpy.run_path(argv[2], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv)
