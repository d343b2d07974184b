"""Command line: ``python3 -m netvm_driver --config /etc/netvm/driver.json --interface eth0``.

Owns: argument parsing, the start-up sequence and its log lines, signal set-up and exit
codes (0 on SIGTERM/SIGINT, 1 on a runtime failure, 2 on a configuration error).
"""

from __future__ import annotations

import os
import sys

from . import log
from .cli import FLAG, Args, Option, fail, parse_or_exit
from .config import ConfigError, DriverConfig, load_config
from .datapath import (
    DEFAULT_BATCH,
    DataPassingError,
    DataPath,
    check_data_passing,
    read_data_passing,
)
from .device import DeviceError, Devices, open_sim_devices, open_uio_devices
from .loop import EventLoop, FatalDeviceError
from .offloads import disable_offloads
from .ring import RX_BLOCK_SIZE, RX_TIMEOUT_MS, RingGeometry, open_packet_io
from .stats import Stats
from .uio import UioError

TYPE_CHECKING = False  # typing stays out of the start-up (records.py says why)
if TYPE_CHECKING:
    import signal  # checkers: typeshed has no stub for _signal (loop.py says more)
else:
    import _signal as signal  # not signal.py: see docs/driver.md, "Start-up"

PROG = "netvm_driver"
DEFAULT_RX_MODE = "auto"
DEFAULT_TX_MODE = "ring"
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


DESCRIPTION = (
    "Userspace Ethernet driver of the seL4 driver VM: moves frames between a Linux interface "
    "and the sDDF net queues shared with the VMM through UIO."
)
OPTIONS = (
    Option(
        "--config",
        "driver.json (default: %(default)s)",
        default="/etc/netvm/driver.json",
        metavar="PATH",
    ),
    Option("--interface", "network interface (default: the config's 'interface')", metavar="IFACE"),
    Option(
        "--fill-tx-checksums",
        "fill IPv4/UDP/TCP checksums of TX frames in software (for clients that leave them "
        "to hardware offload); also enabled by the config's fill_tx_checksums",
        kind=FLAG,
    ),
    Option(
        "--stats-json",
        "write counters here periodically, at exit and on SIGUSR1",
        metavar="PATH",
    ),
    Option(
        "--stats-interval",
        "seconds between stats writes (default: %(default)s)",
        kind=float,
        default=10.0,
        metavar="S",
    ),
    Option("--batch", "frames per batch (default: %(default)s)", kind=int, default=DEFAULT_BATCH),
    Option(
        "--rx-mode",
        "ring: a TPACKET_V3 mmap ring, no system call per frame; socket: one recv per frame; "
        "auto: the socket at low rates (no block timeout to wait for), the ring from 10k "
        "frames/s (default: %(default)s)",
        choices=("auto", "ring", "socket"),
        default=DEFAULT_RX_MODE,
    ),
    Option(
        "--tx-mode",
        "ring: a TPACKET_V2 mmap ring bypassing the qdisc, one send per batch; socket: one "
        "send per frame (default: %(default)s)",
        choices=("ring", "socket"),
        default=DEFAULT_TX_MODE,
    ),
    Option(
        "--rx-ring-block-kib",
        "RX ring block size; the kernel wakes the driver once per block (default: %(default)s)",
        kind=int,
        default=RX_BLOCK_SIZE >> 10,
        metavar="KIB",
    ),
    Option(
        "--rx-ring-timeout-ms",
        "hand over a partly filled RX ring block after this long (default: %(default)s)",
        kind=int,
        default=RX_TIMEOUT_MS,
        metavar="MS",
    ),
    Option(
        "--sim-devices",
        "SIMULATION: take the devices from this file written by the host simulation "
        "(invoke sim) instead of /sys/class/uio",
        metavar="FILE",
    ),
    Option(
        "--keep-offloads",
        "leave the interface's GRO/GSO/TSO/checksum offloads as they are (by default they "
        "are turned off: frames must pass as they were on the wire)",
        kind=FLAG,
    ),
    Option(
        "--self-check",
        "import every module, validate the config and exit without touching devices",
        kind=FLAG,
    ),
)


class DriverArgs(Args):
    config: str
    interface: str | None
    fill_tx_checksums: bool
    stats_json: str | None
    stats_interval: float
    batch: int
    rx_mode: str
    tx_mode: str
    rx_ring_block_kib: int
    rx_ring_timeout_ms: int
    sim_devices: str | None
    keep_offloads: bool
    self_check: bool


def parse_args(argv: list[str] | None = None) -> DriverArgs:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_or_exit(PROG, DESCRIPTION, OPTIONS, argv, DriverArgs)
    if args.batch < 1 or args.stats_interval <= 0:
        fail(PROG, "--batch and --stats-interval must be positive")
    if args.rx_ring_block_kib < 4 or args.rx_ring_block_kib % 4 or args.rx_ring_timeout_ms < 1:
        fail(PROG, "--rx-ring-block-kib must be a multiple of 4, --rx-ring-timeout-ms at least 1")
    return args


def self_check(config: DriverConfig) -> int:
    # Importing everything proves the install is complete (a missing module fails here).
    from . import abi, checksum, datapath, devmem, loop, offloads, queue, ring, stats, uio  # noqa: F401

    print(
        f"netvm_driver: {config.path}: ok (board {config.board}, interface {config.interface}, "
        f"rx capacity {config.capacity('rx_free')}, tx capacity {config.capacity('tx_free')}, "
        f"{len(config.tx_clients)} TX clients)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for finding in exc.findings:
            log.error(finding)
        return EXIT_CONFIG
    if args.self_check:
        return self_check(config)
    interface = args.interface or config.interface

    # Signals only write their number to a pipe the event loop watches: no state is
    # changed behind the loop's back, and a stop lands between batches.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, lambda *_: None)

    devices: Devices | None = None
    packet_io = None
    try:
        log.info("*** Starting up")
        log.info(f"*** Network interface: {interface}")
        if args.sim_devices:
            log.info(f"*** SIMULATION: opening simulated devices from {args.sim_devices}")
            devices = open_sim_devices(config, args.sim_devices, log.info)
        else:
            log.info("*** Setting up UIO devices by name")
            devices = open_uio_devices(config, log.info)
        log.info("*** Setting up raw promiscuous socket")
        geometry = RingGeometry(args.rx_ring_block_kib << 10, args.rx_ring_timeout_ms)
        packet_io = open_packet_io(interface, args.rx_mode, args.tx_mode, geometry)
        log.info(f"*** RX {args.rx_mode}, TX {args.tx_mode}")
        if not args.keep_offloads:
            any_sock = packet_io.sock
            if any_sock is None:  # RX and TX both on rings: no plain socket
                assert packet_io.rx_ring is not None
                any_sock = packet_io.rx_ring.sock
            states = disable_offloads(any_sock, interface)
            log.info("*** Offloads: " + ", ".join(f"{k} {v}" for k, v in states.items()))
        log.info("*** Checking the data passing page")
        dp = read_data_passing(devices)
        problems = check_data_passing(dp, config)
        if problems:
            raise DataPassingError("data passing page: " + "; ".join(problems))
        log.info(f"-> rx data paddr = {dp.rx_data_paddr:#x}")
        for i in range(dp.num_tx_clients):
            log.info(f"-> tx client #{i} data paddr = {dp.tx_data_paddrs[i]:#x}")
        stats = Stats()
        datapath = DataPath(
            config,
            devices,
            dp,
            packet_io.sock,
            stats,
            fill_tx_checksums=args.fill_tx_checksums or config.fill_tx_checksums,
            batch=args.batch,
            rx_ring=packet_io.rx_ring,
            tx_ring=packet_io.tx_ring,
            rx_switch=packet_io.rx_switch,
        )
        loop = EventLoop(
            datapath,
            devices.irq_fds,
            stats,
            wake_r,
            stats_path=args.stats_json,
            stats_interval=args.stats_interval,
        )
        log.info(
            "*** All initialisation successful, now sending all pending TX active before we "
            "block on events"
        )
        loop.start()
        log.info("*** All pending TX active have been sent, entering event loop now.")
        log.info(
            "*** You won't see any output from UIO Net anymore. Unless there is a warning or error."
        )
        loop.run()
        # One line an operator (and `invoke run --sel4 --check`) reads after a stop: what
        # went through, and where every buffer is (at rest, all RX buffers in rx_free).
        counters = " ".join(f"{k}={v}" for k, v in stats.as_dict().items() if v)
        queues = " ".join(f"{k}={v}" for k, v in datapath.census().items())
        log.info(f"*** Stopped: {counters or 'no traffic'}; queues {queues}")
        return 0
    except (UioError, DeviceError, DataPassingError, FatalDeviceError) as exc:
        log.error(str(exc))
        return EXIT_RUNTIME
    except OSError as exc:
        log.error(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        return EXIT_RUNTIME
    finally:
        if packet_io is not None:
            packet_io.close()
        if devices is not None:
            devices.close()


if __name__ == "__main__":
    sys.exit(main())
