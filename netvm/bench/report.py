"""The bench's figures as text: the Markdown tables and the report ``invoke bench`` prints.

Owns: the throughput table (frames/s, CPU per frame split into user and kernel, the
ratio), the rows of the fixed-rate runs and the latencies, the instructions-per-frame
table, the soak's lines, and ``report``, which puts them together with the machine, the
targets and the build figures. It reads only the summary and the JSON document, so a
saved document can be printed again without running anything.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from netvm.bench.options import TESTS

NAMES = {"rx_64": "RX 64 B", "rx_1514": "RX 1514 B", "tx_64": "TX 64 B",
         "tx_1514": "TX 1514 B"}  # fmt: skip


def _us(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cpu_cell(run: dict[str, Any]) -> str:
    cell = f"{run['cpu_us_per_frame']:.3f}"
    if run.get("user_us_per_frame") is not None and run.get("kernel_us_per_frame") is not None:
        cell += f" ({run['user_us_per_frame']:.2f} + {run['kernel_us_per_frame']:.2f})"
    return cell


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4%}"


def _rate_row(label: str, f: dict[str, Any], both_ways: bool) -> str:
    def side(prefix: str) -> tuple[str, str]:
        if both_ways:
            lost = (f"loss RX {_loss(f.get(prefix + 'rx_loss'))}"
                    + _rx_loss_parts(f, prefix)
                    + f", TX {_loss(f.get(prefix + 'tx_loss'))}")  # fmt: skip
        else:
            lost = f"loss {_loss(f.get(prefix + 'loss'))}"
        cpu = f.get(prefix + "cpu_fraction")
        split = ""
        if f.get(prefix + "user_us_per_frame") is not None:
            split = (f", {_us(f.get(prefix + 'cpu_us_per_frame'), 3)} µs/frame "
                     f"({_us(f.get(prefix + 'user_us_per_frame'))} + "
                     f"{_us(f.get(prefix + 'kernel_us_per_frame'))})")  # fmt: skip
        return lost, ("CPU n/a" if cpu is None else f"CPU {cpu:.1%} of a core") + split

    ours, base = side(""), side("baseline_")
    return f"| {label} | {ours[0]} | {ours[1]} | {base[0]} | {base[1]} | |"


def table(summary: dict[str, Any]) -> str:
    m = summary["medians"]
    lines = [
        "| test | ours frames/s | ours CPU µs/frame (user + kernel) | baseline frames/s "
        "| baseline CPU µs/frame (user + kernel) | ratio (frames per CPU-s; ours vs "
        "baseline CPU µs/frame) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for test in TESTS:
        o, b = m["ours"][test], m["baseline"][test]
        lines.append(
            f"| {NAMES[test]} | {o['frames_per_s']:,.0f} | {_cpu_cell(o)} "
            f"| {b['frames_per_s']:,.0f} | {_cpu_cell(b)} "
            f"| {summary['ratios'][test]:.2f}x ({o['cpu_us_per_frame']:.2f} vs "
            f"{b['cpu_us_per_frame']:.2f} µs) |"
        )
    line = summary["line_rate_1514"]
    lines.append(_rate_row(f"RX 1514 B at {line['rate']:,.0f} frames/s", line, False))
    if "echo_1514" in summary["ratio_per_round"]:
        lines.append(_rate_row(f"echo 1514 B at {line['rate']:,.0f} frames/s, full duplex "
                               "(µs per echoed frame)", summary["echo_1514"], True))  # fmt: skip
    lat = summary["latency_us"]
    lines.append(
        f"| added RTT, 100 pings/s (harness-dominated) | p50 {lat['ours']['added_p50_us']:.0f} µs "
        f"| p99 {lat['ours']['added_p99_us']:.0f} µs | p50 {lat['baseline']['added_p50_us']:.0f}"
        f" µs | p99 {lat['baseline']['added_p99_us']:.0f} µs | |"
    )
    drv = summary["driver_latency_us"]
    if drv["rx"] is None:
        lines.append(f"| driver latency, 100 pings/s | {drv['note']} | | | | |")
    else:
        own = drv.get("rx_own")
        after_wake = (
            f" (after the wake-up p50 {_us(own['p50'], 0)} µs, p99 {_us(own['p99'], 0)} µs)"
            if own else ""
        )  # fmt: skip
        lines.append(
            f"| driver latency, 100 pings/s (own histograms) | RX p50 {_us(drv['rx']['p50'], 0)}"
            f" µs, p99 {_us(drv['rx']['p99'], 0)} µs{after_wake} | TX p50 "
            f"{_us(drv['tx']['p50'], 0)} µs, p99 {_us(drv['tx']['p99'], 0)} µs | (not reported) "
            "| | |"
        )
    return "\n".join(lines)


def callgrind_table(cg: dict[str, Any]) -> str:
    lines = [
        f"| user-space instructions per frame (callgrind, {cg['frames']} frames) | ours "
        "| baseline | ours / baseline |",
        "| --- | ---: | ---: | ---: |",
    ]
    for test in TESTS:
        o, b, r = cg["ours"][test], cg["baseline"][test], cg["ratio"][test]
        lines.append(
            f"| {NAMES[test]} | {_us(o, 0)} | {_us(b, 0)} | {'n/a' if r is None else f'{r:.2f}x'} |"
        )
    return "\n".join(lines)


def soak_lines(soak: dict[str, Any]) -> list[str]:
    rss, cons = soak["rss"], soak["conservation"]
    cpu = soak["cpu"]
    pair = " ".join(
        f"{q} {cons[q]['free']}+{cons[q]['active']}+{cons[q]['vmm']}+{cons[q]['in_flight']}"
        f"/{cons[q]['total']}"
        for q in ("rx", "tx")
        if q in cons
    )
    return [
        f"soak: {soak['seconds']:g} s echo at {soak['rate']:,.0f} frames/s: sent "
        f"{soak['sent']:,}, loss RX {_loss(soak['rx_loss'])}{_rx_loss_parts(soak)}, TX "
        f"{_loss(soak['tx_loss'])}; driver CPU "
        f"{(cpu['cpu_fraction'] or 0):.1%} of a core, VMM {soak['vmm_cpu_fraction']:.1%}",
        f"  buffers (free+active+vmm+in flight/total): {pair} — "
        f"{'ok' if cons.get('ok') else 'FAILED'}",
        f"  RSS {rss['start_kib']} KiB at start, {rss['after_warmup_kib']} KiB after "
        f"{rss['warmup_s']} s warm-up, {rss['end_kib']} KiB at end (growth "
        f"{rss['growth_kib']} KiB{_rss_parts(rss.get('growth_parts_kib'))}, peak "
        f"{rss['peak_kib']} KiB)",
        *steady_line(soak.get("steady")),
        *short_lines(soak.get("short_seconds")),
    ]


def steady_line(steady: dict[str, Any] | None) -> list[str]:
    if not steady:
        return []
    return [
        f"  after the warm-up (t = {steady['from_s']:g}–{steady['to_s']:g} s, "
        f"{steady['frames']:,} frames): {steady['kernel_drops']:,} kernel drops "
        f"({steady['drops_buffer_wait']:,} waiting for RX buffers), "
        f"{steady['echo_no_buffer']:,} echoes skipped"
    ]


def short_lines(short: list[dict[str, Any]] | None, shown: int = 5) -> list[str]:
    if short is None:
        return []
    if not short:
        return ["  every second moved >= 95 % of the rate, with a TX buffer for every echo"]
    worst = sorted(short, key=lambda s: s["frames_per_s"])[:shown]
    return [
        f"  {len(short)} second(s) below 95 % of the rate or short of TX buffers; the worst: "
        + "; ".join(
            f"t={s['t']:g} s {s['frames_per_s']:,}/s, {s['echo_no_buffer']} echoes skipped, "
            f"{_count(s.get('kernel_drops'))} kernel drops ({_count(s.get('drops_buffer_wait'))} "
            f"waiting for RX buffers), driver {s['driver_cpu']:.0%} VMM {s['vmm_cpu']:.0%}, "
            f"driver kept from its CPU {s.get('driver_wait_ms', 'n/a')} ms (stolen "
            f"{s.get('steal_ms', 'n/a')} ms), behind: {s.get('behind', 'n/a')}"
            for s in worst
        ),
        "  behind, by second: "
        + ", ".join(
            f"{k} {n}" for k, n in sorted(Counter(s.get("behind", "n/a") for s in short).items())
        ),
    ]


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _rx_loss_parts(run: dict[str, Any], prefix: str = "") -> str:
    """The driver's split of the RX loss, where it counts one."""
    starved, slow = run.get(prefix + "rx_loss_no_buffer"), run.get(prefix + "rx_loss_driver_behind")
    if starved is None or slow is None:
        return ""
    return f" ({_loss(starved)} no rx_free buffer, {_loss(slow)} driver behind)"


def _rss_parts(parts: dict[str, int] | None) -> str:
    return ": " + ", ".join(f"{k} {v:+}" for k, v in parts.items()) if parts else ""


def wake_line(wake: dict[str, Any], interval_s: float) -> str:
    return (
        f"host wake-up floor (a C reader blocked in recvmsg, kernel timestamp to running, "
        f"{1 / interval_s:.0f} pings/s, {wake['count']} frames): p50 {wake['p50_us']} µs, "
        f"p99 {wake['p99_us']} µs, min {wake['min_us']} µs"
    )


def driver_python_line(machine: dict[str, Any]) -> str:
    py = machine.get("driver_python") or {}
    return f"{py.get('path', '?')} (Python {py.get('version', '?')})"


def report(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"netvm bench: {m['cpu']} x{m['cpus']}, kernel {m['kernel']}, Python {m['python']}, "
        f"{m['compiler']}; {doc['options']['rounds']} round(s), {doc['seconds']} s",
        f"ours ran under {driver_python_line(m)}",
        "",
        doc["table"],
        "",
    ]
    wake = doc.get("wake_floor_us")
    if wake and wake.get("count"):
        lines += [wake_line(wake, doc["options"]["ping_interval_s"]), ""]
    if doc.get("callgrind_table"):
        lines += [doc["callgrind_table"], ""]
    if doc.get("soak"):
        lines += [*soak_lines(doc["soak"]), ""]
    lines.append("targets:")
    for t in doc["targets"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"  [{mark}] {t['target']}: {t['got']}")
    gen = doc["medians"]["baseline"]["rx_64"].get("generator_rate")
    if gen:
        lines.append(f"generator: {gen:,.0f} frames/s (median, 64 B, against the baseline)")
    b = doc["build"]
    lines.append(
        "build: image "
        + (f"{b.get('image_bytes'):,} B" if b.get("image_bytes") else "n/a")
        + ", initramfs "
        + (f"{b.get('initramfs_bytes'):,} B" if b.get("initramfs_bytes") else "n/a")
        + (
            f", no-op build {b['noop_build_s']} s, "
            f"driver-only change {b['driver_change_build_s']} s"
            if b.get("measured")
            else ""
        )
    )
    return "\n".join(lines)
