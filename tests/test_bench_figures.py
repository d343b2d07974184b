"""`invoke bench`'s figures from hand-made inputs: the driver's latency document (the
contract with the driver's stats file), the buffer accounting of the soak, RSS growth,
callgrind dumps, the echo's loss arithmetic, and how they reach the summary, the table
and the targets. No simulation runs here; tests/test_bench.py runs the real thing.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from netvm.bench import callgrind
from netvm.bench.callgrind_runs import summarize_callgrind
from netvm.bench.echo import counter_deltas, echo_counts
from netvm.bench.latency import (
    NO_SNAPSHOT,
    NOT_REPORTED,
    LatencyFormatError,
    parse_histogram,
    parse_latency,
    round_latency,
    summarize_latency,
)
from netvm.bench.launch_baseline import split_wrapper
from netvm.bench.measure import sched_times, steal_ticks
from netvm.bench.report import (
    callgrind_table,
    report,
    short_lines,
    soak_lines,
    steady_line,
    table,
)
from netvm.bench.soak import (
    CLOCK_TICKS,
    Tick,
    behind,
    rss_kib,
    rss_summary,
    short_seconds,
    soak_warmup,
    steady_losses,
)
from netvm.bench.summary import summarize, targets
from netvm.bench.vmm import account_buffers

BOUNDS = [10, 20, 50, 100, 200, 500, 1000]


def hist(counts: list[int], p50: float | None, p99: float | None, top: float | None) -> Any:
    return {"bounds_us": BOUNDS, "counts": counts, "samples": sum(counts), "p50_us": p50,
            "p99_us": p99, "max_us": top}  # fmt: skip


def stats_doc(
    rx_counts: list[int],
    tx_counts: list[int],
    own_counts: list[int] | None = None,
    **figures: Any,
) -> dict[str, Any]:
    """A driver stats document as the driver writes it, with the "latency" key (and RX's
    share after the wake-up when own_counts are given)."""
    doc: dict[str, Any] = {
        "seq": 3, "counters": {"rx_frames": 10},
        "latency": {
            "rx_kernel_to_publish_us": hist(rx_counts, *figures.get("rx", (None,) * 3)),
            "tx_doorbell_to_send_us": hist(tx_counts, *figures.get("tx", (None,) * 3)),
        },
    }  # fmt: skip
    if own_counts is not None:
        own = hist(own_counts, *figures.get("own", (None,) * 3))
        doc["latency"]["rx_wake_to_publish_us"] = own
    return doc


# ---------------------------------------------------------------------- latency contract


def test_a_stats_document_without_latency_reports_nothing() -> None:
    assert parse_latency({"seq": 1, "counters": {}}) is None
    assert parse_latency(None) is None
    r = round_latency({"counters": {}}, {"counters": {}})
    assert r == {"reported": False, "note": NOT_REPORTED}
    s = summarize_latency([r, r])
    assert s["rx"] is None and s["tx"] is None and s["met"] is None
    assert "not reported by the driver" in s["note"]


def test_the_histogram_contract_is_parsed_and_checked() -> None:
    h = parse_histogram(hist([0, 5, 90, 4, 1, 0, 0, 0], 18.0, 150.0, 170.0))
    assert h.samples == 100 and h.bounds_us == tuple(BOUNDS)
    assert (h.p50_us, h.p99_us, h.max_us) == (18.0, 150.0, 170.0)
    # Percentiles from the buckets: the upper bound of the bucket holding the quantile.
    assert h.percentile(0.5) == 50.0 and h.percentile(0.99) == 100.0
    assert parse_histogram(hist([0] * 8, None, None, None)).percentile(0.5) is None
    above = parse_histogram(hist([0, 0, 0, 0, 0, 0, 0, 3], 2000.0, 3000.0, 3100.0))
    assert above.percentile(0.5) is None  # above the last bound: no bound to give


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h.update(counts=h["counts"][:-1]), "need bounds + 1"),
        (lambda h: h.update(bounds_us=[10, 10, 50, 100, 200, 500, 1000]), "ascending"),
        (lambda h: h.update(samples=h["samples"] + 1), "sum of counts"),
        (lambda h: h.update(counts=[*h["counts"][:-1], -1]), "non-negative integers"),
        (lambda h: h.update(p50_us="fast"), "p50_us"),
        (lambda h: h.pop("bounds_us"), "bounds_us"),
    ],
)
def test_a_malformed_histogram_is_named_not_guessed(change: Any, message: str) -> None:
    doc = stats_doc([1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0])
    change(doc["latency"]["rx_kernel_to_publish_us"])
    with pytest.raises(LatencyFormatError, match=re.escape(message)):
        parse_latency(doc)
    r = round_latency(doc, doc)
    assert r["reported"] is False and "malformed" in r["note"] and message in r["note"]


def test_a_latency_key_without_one_direction_is_malformed() -> None:
    doc = stats_doc([1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0])
    del doc["latency"]["tx_doorbell_to_send_us"]
    with pytest.raises(LatencyFormatError, match="tx_doorbell_to_send_us"):
        parse_latency(doc)


def test_low_load_uses_the_drivers_figures_and_under_load_the_difference() -> None:
    # After the ping run: 300 RX and 300 TX samples, the driver's own percentiles.
    low = stats_doc([0, 200, 90, 10, 0, 0, 0, 0], [250, 50, 0, 0, 0, 0, 0, 0],
                    rx=(14.0, 80.0, 95.0), tx=(6.0, 19.0, 19.5))  # fmt: skip
    # At exit: the throughput runs added 1000 RX samples, most of them 200-500 µs.
    final = stats_doc([0, 200, 90, 10, 100, 800, 100, 0], [250, 50, 0, 1000, 0, 0, 0, 0],
                      rx=(300.0, 900.0, 990.0), tx=(90.0, 100.0, 100.0))  # fmt: skip
    r = round_latency(low, final)
    assert r["reported"] is True
    assert r["low_load"]["rx"] == {"p50": 14.0, "p99": 80.0, "max": 95.0, "samples": 300}
    assert r["low_load"]["tx"] == {"p50": 6.0, "p99": 19.0, "max": 19.5, "samples": 300}
    # What the load added alone, from bucket counts; the driver's max covers its life.
    assert r["under_load"]["rx"] == {"p50": 500.0, "p99": 1000.0, "max": None, "samples": 1000}
    assert r["under_load"]["tx"] == {"p50": 100.0, "p99": 100.0, "max": None, "samples": 1000}


def test_a_missing_low_load_snapshot_is_not_taken_for_a_silent_driver() -> None:
    final = stats_doc([0, 5, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0])
    assert round_latency(None, final) == {"reported": False, "note": NO_SNAPSHOT}
    assert round_latency(None, {"counters": {}})["note"] == NOT_REPORTED


def test_a_later_snapshot_with_fewer_samples_is_malformed() -> None:
    low = stats_doc([0, 5, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0])
    final = stats_doc([0, 4, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0])
    assert "fewer samples" in round_latency(low, final)["note"]


def test_latency_targets_are_met_or_missed_on_the_low_load_medians() -> None:
    def one(rx50: float, rx99: float) -> dict[str, Any]:
        low = stats_doc([0, 10, 0, 0, 0, 0, 0, 0], [10, 0, 0, 0, 0, 0, 0, 0],
                        rx=(rx50, rx99, rx99 + 1), tx=(5.0, 9.0, 9.5))  # fmt: skip
        return round_latency(low, low)

    met = summarize_latency([one(20.0, 100.0), one(30.0, 400.0), one(90.0, 2000.0)])
    assert met["rx"] == {"p50": 30.0, "p99": 400.0, "max": 401.0, "samples": 30}
    assert met["met"] is True and met["target"] == {"p50_us": 50.0, "p99_us": 500.0,
                                                    "load": "low (ping run)"}  # fmt: skip
    missed = summarize_latency([one(60.0, 100.0), one(70.0, 100.0)])
    assert missed["met"] is False
    # A round that did not report is left out of the medians, not counted as zero.
    mixed = summarize_latency([one(20.0, 100.0), {"reported": False, "note": NOT_REPORTED}])
    assert mixed["rx"]["p50"] == 20.0 and mixed["rx"]["samples"] == 10


# ---------------------------------------------------------------------- buffer accounting


def test_accounting_sums_places_and_finds_the_rest_in_flight() -> None:
    everything = range(0x1000, 0x1000 + 8 * 0x800, 0x800)
    free, active, vmm = [0x1000, 0x1800], [0x2000], [0x2800, 0x3000]
    live = account_buffers(everything, {"free": free, "active": active, "vmm": vmm},
                           driver_stopped=False)  # fmt: skip
    assert live == {"total": 8, "free": 2, "active": 1, "vmm": 2, "in_flight": 3,
                    "duplicated": [], "unknown": [], "ok": True}  # fmt: skip
    # Once the driver has stopped it holds nothing: three buffers unaccounted for.
    assert account_buffers(everything, {"free": free, "active": active, "vmm": vmm},
                           driver_stopped=True)["ok"] is False  # fmt: skip
    done = account_buffers(everything, {"free": [0x1000, 0x1800, 0x3800, 0x4000],
                                        "active": [0x2000, 0x4800], "vmm": [0x2800, 0x3000]},
                           driver_stopped=True)  # fmt: skip
    assert done["ok"] is True and done["in_flight"] == 0
    assert done["free"] + done["active"] + done["vmm"] + done["in_flight"] == done["total"]


def test_accounting_catches_a_buffer_twice_and_a_stranger() -> None:
    everything = [0x1000, 0x1800, 0x2000]
    r = account_buffers(everything, {"free": [0x1000, 0x1800], "active": [0x1000, 0x9000],
                                     "vmm": [0x2000]}, driver_stopped=False)  # fmt: skip
    assert r["duplicated"] == ["0x1000"] and r["unknown"] == ["0x9000"] and r["ok"] is False


# ---------------------------------------------------------------------- RSS, echo, callgrind


def test_rss_growth_is_measured_after_the_warm_up() -> None:
    series = [(0.5, 18000), (1.5, 20000), (2.5, 20100), (3.5, 20500), (4.5, 20400)]
    r = rss_summary(series, warmup=1.0)
    assert (r["start_kib"], r["after_warmup_kib"], r["end_kib"]) == (18000, 20000, 20400)
    assert r["growth_kib"] == 400 and r["peak_kib"] == 20500 and r["met"] is True
    grown = rss_summary([(2.0, 20000), (3.0, 21100)], warmup=1.0)
    assert grown["growth_kib"] == 1100 and grown["met"] is False
    assert rss_summary([(0.5, 1)], warmup=1.0)["growth_kib"] is None
    assert r["growth_parts_kib"] is None  # no parts sampled
    parts = [(0.5, {"anon": 1, "shmem": 9}), (2.0, {"anon": 5000, "shmem": 3000}),
             (4.5, {"anon": 5300, "shmem": 3100})]  # fmt: skip
    split = rss_summary(series, warmup=1.0, parts=parts)["growth_parts_kib"]
    assert split == {"anon": 300, "shmem": 100}  # after the warm-up, each part its own


def test_scheduler_figures_of_a_live_process_and_cpu() -> None:
    ran, waited = sched_times(os.getpid())
    again = sched_times(os.getpid())
    assert ran > 0 and waited >= 0 and again[0] >= ran and again[1] >= waited  # running totals
    assert steal_ticks(0) >= 0 and steal_ticks(4096) == 0  # no such CPU: nothing stolen


def test_rss_parts_of_a_live_process_add_up_to_its_rss() -> None:
    got = rss_kib(os.getpid())
    assert got is not None
    total, parts = got
    assert set(parts) == {"anon", "file", "shmem"} and parts["anon"] > 0
    assert abs(sum(parts.values()) - total) <= 64  # read in one go; rounding only
    assert rss_kib(2**22 + 12345) is None  # no such process
    assert soak_warmup(600) == 30.0 and soak_warmup(8) == 2.0


def test_short_seconds_name_when_the_soak_fell_behind_and_who_was_busy() -> None:
    def counters(drops: int, waiting: int, waits: int = 0) -> dict[str, int]:
        return {"rx_dropped_no_buffer": drops, "rx_dropped_buffer_wait": waiting,
                "rx_buffer_waits": waits, "tx_send_waits": 0}  # fmt: skip

    hz = CLOCK_TICKS
    ticks = [
        Tick(0.0, 0, 0, 0, 0, counters(0, 0)),
        Tick(1.0, 81_000, 0, 300_000_000, 400_000_000, counters(0, 0)),  # full: not listed
        # 19,000/s with the driver busy and reading: it lost them
        Tick(2.0, 100_000, 0, 1_300_000_000, 450_000_000, counters(60_000, 1_000, 1)),
        Tick(3.0, 181_000, 7, 1_900_000_000, 850_000_000, counters(60_000, 1_000, 1)),
        Tick(3.0, 181_000, 7, 1_900_000_000, 850_000_000, counters(60_000, 1_000, 1)),  # no time
        # short, and nearly every drop came while the driver waited for rx_free buffers
        Tick(4.0, 200_000, 7, 2_300_000_000, 1_850_000_000, counters(120_000, 60_000, 9)),
        Tick(5.0, 250_000, 7, 2_700_000_000, 2_250_000_000, {}),  # the driver did not answer
        Tick(6.0, 300_000, 7, 3_100_000_000, 2_650_000_000, counters(120_000, 60_000, 9)),
        # lost while reading, but kept from its CPU for 4 ms and robbed of it for 10 ms
        Tick(7.0, 350_000, 7, 3_500_000_000, 3_050_000_000, counters(130_000, 60_000, 9),
             4_000_000, hz // 100),
    ]  # fmt: skip
    short = short_seconds(ticks, 81_274.0)
    assert short == [
        {"t": 2.0, "frames_per_s": 19_000, "echo_no_buffer": 0, "driver_cpu": 1.0,
         "vmm_cpu": 0.05, "driver_wait_ms": 0.0, "steal_ms": 0, "kernel_drops": 60_000,
         "drops_buffer_wait": 1_000, "rx_buffer_waits": 1, "tx_send_waits": 0,
         "behind": "driver"},
        # full rate, but echoes skipped: the TX buffers sat on tx_active
        {"t": 3.0, "frames_per_s": 81_000, "echo_no_buffer": 7, "driver_cpu": 0.6,
         "vmm_cpu": 0.4, "driver_wait_ms": 0.0, "steal_ms": 0, "kernel_drops": 0,
         "drops_buffer_wait": 0, "rx_buffer_waits": 0, "tx_send_waits": 0,
         "behind": "driver"},
        {"t": 4.0, "frames_per_s": 19_000, "echo_no_buffer": 0, "driver_cpu": 0.4,
         "vmm_cpu": 1.0, "driver_wait_ms": 0.0, "steal_ms": 0, "kernel_drops": 60_000,
         "drops_buffer_wait": 59_000, "rx_buffer_waits": 8, "tx_send_waits": 0,
         "behind": "vmm"},
        {"t": 5.0, "frames_per_s": 50_000, "echo_no_buffer": 0, "driver_cpu": 0.4,
         "vmm_cpu": 0.4, "driver_wait_ms": 0.0, "steal_ms": 0, "behind": "none"},
        {"t": 6.0, "frames_per_s": 50_000, "echo_no_buffer": 0, "driver_cpu": 0.4,
         "vmm_cpu": 0.4, "driver_wait_ms": 0.0, "steal_ms": 0, "behind": "none"},
        {"t": 7.0, "frames_per_s": 50_000, "echo_no_buffer": 0, "driver_cpu": 0.4,
         "vmm_cpu": 0.4, "driver_wait_ms": 4.0, "steal_ms": 10, "kernel_drops": 10_000,
         "drops_buffer_wait": 0, "rx_buffer_waits": 0, "tx_send_waits": 0,
         "behind": "host"},
    ]  # fmt: skip
    lines = short_lines(short)
    assert "6 second(s)" in lines[0] and lines[0].index("t=2 s") < lines[0].index("t=4 s")
    assert "60,000 kernel drops (59,000 waiting for RX buffers)" in lines[0]
    assert "driver kept from its CPU 0.0 ms (stolen 0 ms)" in lines[0]
    assert lines[1] == "  behind, by second: driver 2, host 1, none 2, vmm 1"
    assert "every second" in short_lines([])[0] and short_lines(None) == []
    # The same loss while reading is the host's once the driver was kept from its CPU.
    assert behind(10_000, 100, 0, kept_ms=14.0) == "host"
    assert behind(10_000, 100, 0, kept_ms=9.0) == "driver"
    assert behind(0, 0, 5, kept_ms=30.0) == "host"
    assert behind(10_000, 9_000, 0, kept_ms=30.0) == "vmm"


def test_steady_losses_leave_out_the_warm_up_but_not_what_came_after() -> None:
    def tick(t: float, frames: int, skipped: int, drops: int, waiting: int) -> Tick:
        counters = {"rx_dropped_no_buffer": drops, "rx_dropped_buffer_wait": waiting}
        return Tick(t, frames, skipped, 0, 0, counters)

    ticks = [
        tick(0.0, 0, 0, 0, 0),
        tick(1.0, 80_000, 0, 5_000, 3_000),  # start-up loss, inside the warm-up
        Tick(30.5, 2_400_000, 0, 0, 0, {}),  # the driver did not answer: not a bound
        tick(31.0, 2_450_000, 2, 5_000, 3_000),
        tick(60.0, 4_800_000, 9, 5_040, 3_010),
    ]
    assert steady_losses(ticks, 30.0) == {
        "from_s": 31.0, "to_s": 60.0, "frames": 2_350_000, "kernel_drops": 40,
        "drops_buffer_wait": 10, "echo_no_buffer": 7,
    }  # fmt: skip
    assert steady_losses(ticks[:4], 30.0) is None  # one sample past the warm-up
    line = steady_line(steady_losses(ticks, 30.0))
    assert line == [
        "  after the warm-up (t = 31–60 s, 2,350,000 frames): 40 kernel drops "
        "(10 waiting for RX buffers), 7 echoes skipped"
    ]
    assert steady_line(None) == []


def test_echo_loss_is_counted_each_way() -> None:
    before = {"rx_frames": 100, "echo_frames": 90, "tx_frames": 80, "echo_no_buffer": 1}
    after = {"rx_frames": 1100, "echo_frames": 1080, "tx_frames": 1080, "echo_no_buffer": 11}
    r = echo_counts(before, after, sent=1250, peer=972)
    assert (r["received"], r["echoed"], r["returned"], r["echo_no_buffer"]) == (
        1000, 990, 1000, 10,
    )  # fmt: skip
    assert r["rx_loss"] == 0.2 and r["tx_loss"] == 0.018182 and r["loss"] == 0.2224
    assert echo_counts(before, before, sent=0, peer=0)["loss"] is None


def test_counter_deltas_of_two_stats_documents() -> None:
    a = {"counters": {"rx_frames": 10, "rx_dropped_no_buffer": 2}}
    b = {"counters": {"rx_frames": 25, "rx_dropped_no_buffer": 5, "new": 1}}
    assert counter_deltas(a, b) == {"new": 1, "rx_dropped_no_buffer": 3, "rx_frames": 15}
    assert counter_deltas(None, b) is None


def test_a_callgrind_dump_gives_its_summary() -> None:
    text = "version: 1\ncreator: callgrind-3.19.0\ndesc: Trigger: dump rx_64\n"
    text += "events: Ir\nsummary: 4230915\n\nfn=(1) main\n0 5\ntotals: 4231000\n"
    assert callgrind.dump_summary(text) == 4230915
    with pytest.raises(callgrind.CallgrindError):
        callgrind.dump_summary("events: Ir\n")
    assert callgrind.per_frame(4230915, 4096) == 1032.9
    assert callgrind.per_frame(5, 0) is None
    assert "--instr-atstart=no" in callgrind.valgrind_prefix(callgrind.Path("/x"))


def test_the_launcher_runs_the_baseline_under_a_wrapper_when_asked() -> None:
    assert split_wrapper(["/b", "--config", "c"]) == ([], "/b", ["--config", "c"])
    assert split_wrapper(["valgrind", "--tool=callgrind", "--", "/b", "--config", "c"]) == (
        ["valgrind", "--tool=callgrind"], "/b", ["--config", "c"],
    )  # fmt: skip


def test_callgrind_summary_and_table() -> None:
    def runs(ours_ipf: float) -> dict[str, Any]:
        return {t: {"frames": 4096, "instructions": int(ours_ipf * 4096),
                    "instructions_per_frame": ours_ipf, "doorbells": 64}
                for t in ("rx_64", "rx_1514", "tx_64", "tx_1514")}  # fmt: skip

    cg = summarize_callgrind({"ours": runs(3000.0), "baseline": runs(1500.0)}, 4096)
    assert cg["ours"]["rx_64"] == 3000.0 and cg["ratio"]["tx_1514"] == 2.0
    text = callgrind_table(cg)
    assert "| RX 64 B | 3000 | 1500 | 2.00x |" in text and "4096 frames" in text


# ---------------------------------------------------------------------- summary and table


def fake_run(fpcs: float, cpu: float = 0.5, **extra: Any) -> dict[str, Any]:
    return {
        "frames_per_s": fpcs * cpu, "cpu_us_per_frame": 1e6 / fpcs, "cpu_fraction": cpu,
        "frames_per_cpu_s": fpcs, "loss": 0.0, "generator_rate": 7e5,
        "user_us_per_frame": 0.7e6 / fpcs, "kernel_us_per_frame": 0.3e6 / fpcs, **extra,
    }  # fmt: skip


def fake_round(latency: dict[str, Any]) -> dict[str, Any]:
    lat = {"ok": True, "added_p50_us": 100.0, "added_p99_us": 500.0, "through_p50_us": 160.0,
           "through_p99_us": 600.0, "direct_p50_us": 60.0, "direct_p99_us": 100.0}  # fmt: skip
    tests = ("rx_64", "rx_1514", "tx_64", "tx_1514")
    ours: dict[str, Any] = {t: fake_run(3e5) for t in tests}
    base: dict[str, Any] = {t: fake_run(1e5) for t in tests}
    ours["line_rate_1514"] = fake_run(8e5, cpu=0.08)
    base["line_rate_1514"] = fake_run(2e5, cpu=0.4)
    ours["echo_1514"] = fake_run(4e5, cpu=0.2, rx_loss=0.01, tx_loss=0.0, loss=0.01,
                                 rx_loss_no_buffer=0.008, rx_loss_driver_behind=0.002,
                                 vmm_cpu_fraction=0.3)  # fmt: skip
    base["echo_1514"] = fake_run(1e5, cpu=0.8, rx_loss=0.2, tx_loss=0.0, loss=0.2,
                                 rx_loss_no_buffer=None, rx_loss_driver_behind=None,
                                 vmm_cpu_fraction=0.3)  # fmt: skip
    return {
        "ours": {**ours, "latency": lat, "driver_latency": latency},
        "baseline": {**base, "latency": lat},
    }


def reported() -> dict[str, Any]:
    """One round's figures from a driver that writes its latency histograms."""
    low = stats_doc([0, 10, 0, 0, 0, 0, 0, 0], [10, 0, 0, 0, 0, 0, 0, 0],
                    rx=(15.0, 19.0, 19.5), tx=(4.0, 9.0, 9.5))  # fmt: skip
    return round_latency(low, low)


def test_summary_puts_absolute_microseconds_beside_every_ratio() -> None:
    s = summarize([fake_round(reported())] * 5)
    assert s["ratio_detail"]["rx_64"] == {"ratio": 3.0, "ours_cpu_us_per_frame": 3.3333,
                                          "baseline_cpu_us_per_frame": 10.0}  # fmt: skip
    text = table(s)
    assert "| 3.00x (3.33 vs 10.00 µs) |" in text
    # The kernel/user split of both drivers in every row that has CPU figures: the four
    # throughput rows, the line-rate row and the echo row (baseline's echo is 7 + 3 too).
    assert text.count("(2.33 + 1.00)") == 4 and text.count("(7.00 + 3.00)") == 5
    line = next(row for row in text.splitlines() if row.startswith("| RX 1514 B at"))
    assert "1.250 µs/frame (0.88 + 0.38)" in line and "5.000 µs/frame (3.50 + 1.50)" in line
    echo = next(row for row in text.splitlines() if row.startswith("| echo"))
    assert "(1.75 + 0.75)" in echo
    assert "harness-dominated" in text


def test_summary_reports_the_echo_both_ways_and_its_targets() -> None:
    s = summarize([fake_round(reported())] * 3)
    echo = s["echo_1514"]
    assert (echo["rx_loss"], echo["tx_loss"], echo["cpu_fraction"]) == (0.01, 0.0, 0.2)
    assert echo["rx_loss_no_buffer"] == 0.008 and echo["baseline_rx_loss_no_buffer"] is None
    assert echo["baseline_rx_loss"] == 0.2
    row = next(line for line in table(s).splitlines() if line.startswith("| echo"))
    assert echo["rx_loss_driver_behind"] == 0.002
    assert "loss RX 1.0000% (0.8000% no rx_free buffer, 0.2000% driver behind), TX" in row
    assert "loss RX 20.0000%, TX" in row  # the baseline counts no split
    assert "CPU 20.0% of a core" in row
    t = {x["target"].split(":")[0]: x for x in targets(s)}
    assert t["echo 1514 B at line rate, full duplex"]["met"] is False  # loss and 20 %


def test_summary_carries_the_drivers_latency_and_its_target() -> None:
    s = summarize([fake_round(reported())] * 3)
    drv = s["driver_latency_us"]
    assert drv["rx"] == {"p50": 15.0, "p99": 19.0, "max": 19.5, "samples": 30}
    assert drv["tx"]["p50"] == 4.0 and drv["met"] is True
    assert "RX p50 15 µs, p99 19 µs | TX p50 4 µs, p99 9 µs" in table(s)
    t = [x for x in targets(s) if x["target"].startswith("driver latency")]
    assert t[0]["met"] is True


def test_rxs_share_after_the_wake_up_is_reported_beside_and_judged_by_no_target() -> None:
    # RX 60 µs whole, of which 15 µs after the wake-up: the whole misses the target.
    low = stats_doc([0, 0, 0, 10, 0, 0, 0, 0], [10, 0, 0, 0, 0, 0, 0, 0],
                    [0, 10, 0, 0, 0, 0, 0, 0], rx=(100.0, 100.0, 60.0),
                    tx=(4.0, 9.0, 9.5), own=(20.0, 20.0, 15.0))  # fmt: skip
    final = stats_doc([0, 0, 0, 10, 0, 0, 0, 0], [10, 0, 0, 0, 0, 0, 0, 0],
                      [0, 10, 5, 0, 0, 0, 0, 0])  # fmt: skip
    r = round_latency(low, final)
    assert r["low_load"]["rx_own"] == {"p50": 20.0, "p99": 20.0, "max": 15.0, "samples": 10}
    assert r["under_load"]["rx_own"]["samples"] == 5
    s = summarize([fake_round(r)] * 3)
    drv = s["driver_latency_us"]
    assert drv["rx_own"]["p50"] == 20.0 and drv["met"] is False
    assert "RX p50 100 µs, p99 100 µs (after the wake-up p50 20 µs, p99 20 µs)" in table(s)
    t = next(x for x in targets(s) if x["target"].startswith("driver latency"))
    assert t["met"] is False and "RX after the wake-up p50 20.0" in t["got"]
    # A round without it (another driver) leaves it out of the medians altogether.
    mixed = summarize_latency([r, reported()])
    assert "rx_own" not in mixed and "rx_own" not in mixed["under_load"]


def test_without_the_drivers_latency_the_target_is_not_measured() -> None:
    absent = round_latency({"counters": {}}, {"counters": {}})
    s = summarize([fake_round(absent)] * 3)
    assert s["driver_latency_us"]["rx"] is None
    assert NOT_REPORTED in table(s)
    t = [x for x in targets(s) if x["target"].startswith("driver latency")]
    assert t[0]["met"] is None and NOT_REPORTED in t[0]["got"]


def soak_doc(loss: float, ok: bool, growth: int) -> dict[str, Any]:
    pair = {"total": 512, "free": 512, "active": 0, "vmm": 0, "in_flight": 0, "ok": ok}
    rss = rss_summary([(0.0, 20000), (40.0, 20000), (600.0, 20000 + growth)], warmup=30.0)
    return {"seconds": 600.0, "rate": 81274.0, "sent": 48_764_400, "rx_loss": loss,
            "tx_loss": 0.0, "loss": loss, "rx_loss_no_buffer": loss,
            "rx_loss_driver_behind": 0.0,
            "cpu": {"cpu_fraction": 0.3}, "vmm_cpu_fraction": 0.25, "rss": rss,
            "conservation": {"rx": pair, "tx": {**pair, "free": 0, "vmm": 512}, "ok": ok},
            "met": loss == 0 and ok and rss["met"]}  # fmt: skip


def test_the_soak_reaches_the_targets_and_the_report() -> None:
    s = summarize([fake_round(reported())] * 3)
    good, bad = soak_doc(0.0, True, 100), soak_doc(0.0, True, 2048)
    assert [x["met"] for x in targets(s, good) if x["target"].startswith("soak")] == [True]
    assert [x["met"] for x in targets(s, bad) if x["target"].startswith("soak")] == [False]
    lines = "\n".join(soak_lines(good))
    assert "rx 512+0+0+0/512 tx 0+0+512+0/512 — ok" in lines
    assert "growth 100 KiB" in lines
    doc = {
        "machine": {"cpu": "x", "cpus": 2, "kernel": "k", "python": "3", "compiler": "gcc"},
        "options": {"rounds": 3}, "seconds": 1.0, "table": table(s), "soak": good,
        "targets": targets(s, good), "medians": s["medians"], "build": {},
        "callgrind_table": None,
    }  # fmt: skip
    text = report(doc)
    assert "soak: 600 s echo" in text and "[met] soak 600 s" in text and "[met] driver" in text
