"""The rounds reduced to the bench's figures, and the targets they meet or miss.

Owns: the medians over the rounds of each run's figures, the ratios of ours to the
baseline (frames per CPU-second, taken within a round and then the median, so a round
on a busier host counts against both drivers alike), the fixed-rate runs' loss and CPU,
the added latency, the driver's own latency (netvm/bench/latency.py), and the targets
(docs/bench.md, "Targets"): each met, missed or not measured.
"""

from __future__ import annotations

import statistics
from typing import Any

from netvm.bench.latency import summarize_latency
from netvm.bench.options import DRIVERS, LINE_RATE_1514, TESTS

RATE_TESTS = ("line_rate_1514", "echo_1514")  # fixed-rate runs: loss and CPU share
MEDIAN_KEYS = (
    "frames_per_s", "cpu_us_per_frame", "cpu_fraction", "frames_per_cpu_s", "generator_rate",
    "loss", "rx_loss", "tx_loss", "peer_received_per_s", "user_us_per_frame",
    "kernel_us_per_frame",
)  # fmt: skip


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4) if values else float("nan")


def median_or_none(values: list[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return median(present) if present else None


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each figure's median over the rounds, where every round has it."""
    return {
        key: median([float(run[key]) for run in runs])
        for key in MEDIAN_KEYS
        if key in runs[0] and all(run.get(key) is not None for run in runs)
    }


def _rate_summary(rounds: list[dict[str, dict[str, Any]]], test: str) -> dict[str, Any]:
    """A fixed-rate run (line rate, echo): loss and CPU of both drivers, medians."""
    out: dict[str, Any] = {"rate": LINE_RATE_1514}
    for which, prefix in (("ours", ""), ("baseline", "baseline_")):
        runs = [r[which][test] for r in rounds if test in r[which]]
        for key in ("loss", "rx_loss", "tx_loss", "rx_loss_no_buffer", "rx_loss_driver_behind",
                    "cpu_fraction", "cpu_us_per_frame", "user_us_per_frame",
                    "kernel_us_per_frame", "vmm_cpu_fraction"):  # fmt: skip
            if runs and key in runs[0]:
                out[prefix + key] = median_or_none([run.get(key) for run in runs])
    return out


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"ratios": {}, "ratio_detail": {}, "ratio_per_round": {},
                               "medians": {}}  # fmt: skip
    for test in (*TESTS, *RATE_TESTS):
        present = [r for r in rounds if test in r["ours"] and test in r["baseline"]]
        if not present:
            continue
        per_round = [
            r["ours"][test]["frames_per_cpu_s"] / r["baseline"][test]["frames_per_cpu_s"]
            for r in present
        ]
        summary["ratio_per_round"][test] = [round(x, 3) for x in per_round]
        for which in DRIVERS:
            summary["medians"].setdefault(which, {})[test] = _medians(
                [r[which][test] for r in present]
            )
        if test in TESTS:
            summary["ratios"][test] = median(per_round)
            # The absolute figures the ratio comes from, beside it.
            summary["ratio_detail"][test] = {
                "ratio": median(per_round),
                "ours_cpu_us_per_frame": summary["medians"]["ours"][test]["cpu_us_per_frame"],
                "baseline_cpu_us_per_frame": summary["medians"]["baseline"][test][
                    "cpu_us_per_frame"
                ],
            }
    for test in RATE_TESTS:
        summary[test] = _rate_summary(rounds, test)
    lat: dict[str, Any] = {}
    for which in DRIVERS:
        ok = [r[which]["latency"] for r in rounds if r[which]["latency"].get("ok")]
        for key in ("added_p50_us", "added_p99_us", "through_p50_us", "through_p99_us",
                    "direct_p50_us", "direct_p99_us"):  # fmt: skip
            lat.setdefault(which, {})[key] = median([float(x[key]) for x in ok])
    summary["latency_us"] = {
        "p50": lat["ours"]["added_p50_us"],
        "p99": lat["ours"]["added_p99_us"],
        "ours": lat["ours"],
        "baseline": lat["baseline"],
        "note": "end-to-end round trip through the simulated VMM (Python, a thread wake-up "
        "and a UNIX socket per direction): harness-dominated, an upper bound of the "
        "driver's share; the driver's own figures are in driver_latency_us",
    }
    summary["driver_latency_us"] = summarize_latency(
        [r["ours"].get("driver_latency", {}) for r in rounds]
    )
    return summary


# RX at least 2.5 times cheaper per frame than the baseline, TX at parity, each in the
# same run (the baseline's own cost moves between runs on a shared host).
TARGETS = (
    ("RX 64 B: frames per CPU-second vs baseline", "rx_64", 2.5),
    ("RX 1514 B: frames per CPU-second vs baseline", "rx_1514", 2.5),
    ("TX 64 B: frames per CPU-second vs baseline", "tx_64", 1.0),
    ("TX 1514 B: frames per CPU-second vs baseline", "tx_1514", 1.0),
)
LINE_CPU_TARGET = 0.10


def _rate_target(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    lost, cpu = figures.get("loss"), figures.get("cpu_fraction")
    return {
        "target": name, "need": f"loss 0, cpu <= {LINE_CPU_TARGET:.2f}",
        "got": f"loss {lost}, cpu {cpu}",
        "met": lost == 0 and cpu is not None and cpu <= LINE_CPU_TARGET,
    }  # fmt: skip


def targets(
    summary: dict[str, Any],
    soak: dict[str, Any] | None = None,
    wake: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Each target met (True), missed (False) or not measured (None). `wake` is the
    host's wake-up floor (wakefloor.py), given beside the driver's RX latency."""
    out = [
        {"target": name, "need": f">= {need}x", "got": summary["ratios"][key],
         "met": summary["ratios"][key] >= need}
        for name, key, need in TARGETS
    ]  # fmt: skip
    out.append(_rate_target("line rate 1514 B (RX): 0 loss, <= 10 % of a core",
                            summary["line_rate_1514"]))  # fmt: skip
    if "echo_1514" in summary["ratio_per_round"]:
        out.append(_rate_target("echo 1514 B at line rate, full duplex: 0 loss both ways, "
                                "<= 10 % of a core", summary["echo_1514"]))  # fmt: skip
    lat = summary["latency_us"]
    out.append(
        {"target": "added RTT at low rate (harness-dominated): p50 <= 200 us, p99 <= 1000 us",
         "need": "p50 <= 200, p99 <= 1000", "got": f"p50 {lat['p50']}, p99 {lat['p99']}",
         "met": lat["p50"] <= 200 and lat["p99"] <= 1000}
    )  # fmt: skip
    drv = summary["driver_latency_us"]
    got = (
        drv["note"]
        if drv["rx"] is None
        else (f"RX p50 {drv['rx']['p50']}, p99 {drv['rx']['p99']}; "
              f"TX p50 {drv['tx']['p50']}, p99 {drv['tx']['p99']}")
    )  # fmt: skip
    if drv.get("rx_own"):
        got += f"; RX after the wake-up p50 {drv['rx_own']['p50']}, p99 {drv['rx_own']['p99']}"
    if wake and wake.get("count"):
        got += f" (host wake-up floor p50 {wake['p50_us']}, p99 {wake['p99_us']})"
    out.append(
        {"target": "driver latency at low load (RX kernel to publish, TX doorbell to send): "
         "p50 <= 50 us, p99 <= 500 us", "need": "p50 <= 50, p99 <= 500", "got": got,
         "met": drv["met"]}
    )  # fmt: skip
    if soak is not None:
        rss = soak["rss"]
        out.append(
            {"target": f"soak {soak['seconds']:g} s at full-duplex line rate: 0 loss, buffers "
             "conserved, RSS growth <= 1 MiB",
             "need": "loss 0, conservation ok, growth <= 1024 KiB",
             "got": f"loss {soak['loss']}, conservation "
             f"{'ok' if soak['conservation'].get('ok') else 'FAILED'}, "
             f"growth {rss['growth_kib']} KiB", "met": soak["met"]}
        )  # fmt: skip
    return out
