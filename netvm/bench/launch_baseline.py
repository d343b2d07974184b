"""Start the C baseline driver with the simulation's devices (stdlib only).

``python3 launch_baseline.py BINARY --config C --interface I --sim-devices F
[--stats-json S] [...]`` reads the simulation's device file (docs/driver.md) and the
driver configuration, then replaces itself (exec, same PID) with
``BINARY IFACE key=value...``, so the C program needs no JSON parser. Unknown options
(e.g. ``--stats-interval``) are ignored. ``launch_baseline.py PROGRAM ARGS... -- BINARY
[...]`` runs the baseline under PROGRAM instead (valgrind, for the instruction counts):
the launcher must come first, since valgrind does not follow an exec into another
program by default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def baseline_argv(binary: str, argv: list[str]) -> list[str]:
    p = argparse.ArgumentParser(prog="launch_baseline")
    p.add_argument("--config", required=True)
    p.add_argument("--interface", required=True)
    p.add_argument("--sim-devices", required=True)
    p.add_argument("--stats-json")
    args, _ = p.parse_known_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    with open(args.sim_devices) as f:
        devices = json.load(f)["devices"]
    out = [binary, args.interface]
    for name in ("data_passing", "rx_free", "rx_active", "tx_free", "tx_active"):
        out.append(f"{name}={devices[name]['shm']}:{config['uio'][name]['size']:#x}")
    for name in ("rx_data", "tx_data"):
        out.append(f"{name}={devices[name]['shm']}:{config['uio'][name]['size']:#x}")
    for name in ("rx_fault", "tx_fault"):
        out.append(f"{name}={devices[name]['doorbell_fifo']}")
    for name in ("rx_irq", "tx_irq"):
        out.append(f"{name}={devices[name]['irq_socket']}")
    for client in config["tx_clients"]:
        out.append(f"client={client['offset']:x}:{client['size']:x}")
    if args.stats_json:
        out.append(f"stats={args.stats_json}")
    return out


def split_wrapper(args: list[str]) -> tuple[list[str], str, list[str]]:
    """(wrapper command, baseline binary, driver options) of the launcher's arguments."""
    if "--" in args:
        cut = args.index("--")
        return args[:cut], args[cut + 1], args[cut + 2 :]
    return [], args[0], args[1:]


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[-1] == "--":
        sys.exit("usage: launch_baseline.py [PROGRAM ARGS... --] BINARY [driver options]")
    wrapper, binary, options = split_wrapper(sys.argv[1:])
    argv = [*wrapper, *baseline_argv(binary, options)]
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
