"""The driver's own latency histograms, read from its stats document.

Owns: the contract for the stats file's top-level "latency" key (docs/bench.md, "Driver
latency") — validating it, the difference of two cumulative snapshots, percentiles from
bucket counts, and the per-round and median figures the bench reports. A driver that
does not write the key is reported as such (null figures with a note), never with
numbers made up here.

A histogram H is ``{"bounds_us": [ascending ints], "counts": [len(bounds)+1 ints, the
last counting samples above the last bound], "samples": int, "p50_us", "p99_us",
"max_us": number or null}``; the key holds ``{"rx_kernel_to_publish_us": H,
"tx_doorbell_to_send_us": H}`` and may hold ``"rx_wake_to_publish_us": H``, RX's share
after the driver's wake-up (reported as "rx_own", judged against no target: the targets
are the whole figures).
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from typing import Any

DIRECTIONS = {"rx": "rx_kernel_to_publish_us", "tx": "tx_doorbell_to_send_us"}
OPTIONAL = {"rx_own": "rx_wake_to_publish_us"}  # reported when the driver writes it
TARGET_P50_US = 50.0
TARGET_P99_US = 500.0
NOT_REPORTED = 'not reported by the driver (its stats file has no "latency" key)'
NO_SNAPSHOT = "no stats after the ping run (the driver did not answer SIGUSR1 in time)"


class LatencyFormatError(ValueError):
    """The driver wrote a "latency" key that does not follow the contract."""


@dataclass(frozen=True)
class Histogram:
    bounds_us: tuple[int, ...]
    counts: tuple[int, ...]
    samples: int
    p50_us: float | None
    p99_us: float | None
    max_us: float | None

    def percentile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile: "at most this many µs".

        None when there are no samples or the quantile is in the last bucket (above
        every bound: no upper bound to give).
        """
        total = sum(self.counts)
        if not total:
            return None
        rank = q * total
        running = 0
        for bound, count in zip(self.bounds_us, self.counts, strict=False):
            running += count
            if running >= rank:
                return float(bound)
        return None

    def minus(self, earlier: Histogram) -> Histogram:
        """What was recorded between an earlier snapshot of the same histogram and this.

        The driver's percentiles and maximum cover its whole life, so the difference
        carries percentiles from the bucket counts and no maximum of its own.
        """
        if earlier.bounds_us != self.bounds_us:
            raise LatencyFormatError("bucket bounds changed between two snapshots")
        counts = tuple(a - b for a, b in zip(self.counts, earlier.counts, strict=True))
        if min(counts) < 0 or self.samples < earlier.samples:
            raise LatencyFormatError("a later snapshot has fewer samples than an earlier one")
        return Histogram(self.bounds_us, counts, self.samples - earlier.samples, None, None, None)


def _number(doc: dict[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise LatencyFormatError(f"{key}: not a non-negative number: {value!r}")
    return float(value)


def _int_list(doc: dict[str, Any], key: str) -> tuple[int, ...]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value
    ):
        raise LatencyFormatError(f"{key}: not a list of non-negative integers")
    return tuple(value)


def parse_histogram(doc: Any) -> Histogram:
    if not isinstance(doc, dict):
        raise LatencyFormatError(f"a histogram is an object, not {type(doc).__name__}")
    bounds = _int_list(doc, "bounds_us")
    counts = _int_list(doc, "counts")
    if not bounds or any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
        raise LatencyFormatError("bounds_us: not a non-empty ascending list")
    if len(counts) != len(bounds) + 1:
        raise LatencyFormatError(
            f"counts: {len(counts)} entries for {len(bounds)} bounds (need bounds + 1)"
        )
    samples = doc.get("samples")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples != sum(counts):
        raise LatencyFormatError(f"samples: {samples!r} is not the sum of counts ({sum(counts)})")
    return Histogram(
        bounds, counts, samples, _number(doc, "p50_us"), _number(doc, "p99_us"),
        _number(doc, "max_us"),
    )  # fmt: skip


def parse_latency(stats: dict[str, Any] | None) -> dict[str, Histogram] | None:
    """The histograms of a stats document (DIRECTIONS, and OPTIONAL where present); None
    when the driver writes none."""
    if not stats or "latency" not in stats:
        return None
    latency = stats["latency"]
    if not isinstance(latency, dict):
        raise LatencyFormatError('"latency" is not an object')
    out = {}
    for short, key in (DIRECTIONS | OPTIONAL).items():
        if key not in latency:
            if short in OPTIONAL:
                continue
            raise LatencyFormatError(f'"latency" has no {key!r}')
        try:
            out[short] = parse_histogram(latency[key])
        except LatencyFormatError as exc:
            raise LatencyFormatError(f"{key}: {exc}") from None
    return out


def figures(h: Histogram, *, own_percentiles: bool) -> dict[str, Any]:
    """p50/p99/max/samples of one histogram. The driver's own percentiles when they cover
    exactly these samples (`own_percentiles`), else the buckets' upper bounds."""
    if own_percentiles:
        p50, p99, top = h.p50_us, h.p99_us, h.max_us
    else:
        p50, p99, top = h.percentile(0.5), h.percentile(0.99), None
    return {"p50": p50, "p99": p99, "max": top, "samples": h.samples}


def round_latency(low_load: dict[str, Any] | None, final: dict[str, Any] | None) -> dict[str, Any]:
    """One round's figures: at low load (the stats right after the ping run, which is the
    driver's first traffic) and under load (what the throughput runs added since)."""
    try:
        low = parse_latency(low_load)
        end = parse_latency(final)
        if low_load is None and end is not None:
            return {"reported": False, "note": NO_SNAPSHOT}
        if low is None or end is None:
            return {"reported": False, "note": NOT_REPORTED}
        return {
            "reported": True,
            "low_load": {d: figures(h, own_percentiles=True) for d, h in low.items()},
            "under_load": {
                d: figures(end[d].minus(low[d]), own_percentiles=False) for d in low if d in end
            },
        }
    except LatencyFormatError as exc:
        return {"reported": False, "note": f"malformed latency in the driver's stats: {exc}"}


def _median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("p50", "p99", "max"):
        values = [float(r[key]) for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 1) if values else None
    out["samples"] = sum(int(r["samples"]) for r in runs)
    return out


def summarize_latency(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds that reported; the low-load figures against the targets."""
    reported = [r for r in per_round if r.get("reported")]
    target = {"p50_us": TARGET_P50_US, "p99_us": TARGET_P99_US, "load": "low (ping run)"}
    if not reported:
        notes = sorted({str(r.get("note", NOT_REPORTED)) for r in per_round}) or [NOT_REPORTED]
        return {"rx": None, "tx": None, "under_load": None, "target": target, "met": None,
                "note": "; ".join(notes)}  # fmt: skip
    # An optional figure only when every reporting round has it (the same driver).
    shown = [*DIRECTIONS, *(d for d in OPTIONAL if all(d in r["low_load"] for r in reported))]
    out: dict[str, Any] = {d: _median_figures([r["low_load"][d] for r in reported]) for d in shown}
    out["under_load"] = {d: _median_figures([r["under_load"][d] for r in reported]) for d in shown}
    out["target"] = target
    out["met"] = all(
        out[d]["p50"] is not None
        and out[d]["p99"] is not None
        and out[d]["p50"] <= TARGET_P50_US
        and out[d]["p99"] <= TARGET_P99_US
        for d in DIRECTIONS
    )
    out["note"] = (
        f"the driver's own histograms, medians of {len(reported)} round(s); low load: "
        "the driver's percentiles after the ping run; under load: bucket upper bounds of "
        "what the throughput runs added"
    )
    return out
