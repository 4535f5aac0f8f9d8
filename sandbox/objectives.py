"""Judging objectives from measured traffic: plain functions over a window of 1-second samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .models import ObjectiveResult
from .specs import MetricCheck

Status = ObjectiveResult.Status
SAMPLE_SECONDS = 1.0


@dataclass(frozen=True)
class Sample:
    """One second of traffic as the lab's traffic node measured it, and which nodes were down."""

    t: float
    completed: int
    errors: int
    p95_ms: float | None
    not_serving: frozenset[str]

    @classmethod
    def from_report(cls, report: dict[str, Any], not_serving: frozenset[str]) -> Sample:
        return cls(
            t=float(report["t"]),
            completed=int(report["completed"]),
            errors=int(report["errors"]),
            p95_ms=report.get("p95_ms"),
            not_serving=not_serving,
        )


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str


def _percent(value: float) -> str:
    return f"{value * 100:.3g}%"


def _measure(check: MetricCheck, samples: Sequence[Sample]) -> tuple[float, str, str]:
    """The metric over the samples, how to print it, and how to print the bound."""
    if check.metric == "error_rate":
        completed = sum(s.completed for s in samples)
        value = sum(s.errors for s in samples) / completed
        return value, f"error rate {_percent(value)}", _percent(check.below)
    # p95_ms: the per-second p95s weighted by how many requests each second completed.
    weighted = [(s.p95_ms, s.completed) for s in samples if s.p95_ms is not None and s.completed]
    total = sum(count for _, count in weighted)
    value = sum(p95 * count for p95, count in weighted) / total
    return value, f"p95 latency {value:.0f} ms", f"{check.below:.0f} ms"


def judge(
    check: MetricCheck,
    samples: Sequence[Sample],
    groups: dict[str, list[str]],
    previous: str = Status.PENDING,
) -> Verdict | None:
    """Judge a metric objective on the samples so far (oldest first).

    The metric must stay below its bound over the last `window` seconds. With `while_down`, only
    the seconds during which a node of that group was down count, and the window must lie wholly
    inside such a stretch. Returns None when nothing can be said now and the previous verdict
    stands (a `while_down` objective already met stays met once the node is back).
    """
    if not samples:
        return Verdict(Status.PENDING, "Waiting for the first traffic figures")
    latest = samples[-1]
    stretch: Sequence[Sample] = samples
    condition = ""
    if check.while_down is not None:
        members = set(groups.get(check.while_down, []))
        down_now = sorted(latest.not_serving & members)
        if not down_now:
            if previous == Status.MET:
                return None
            return Verdict(
                Status.PENDING,
                f"Judged while a {check.while_down} node is down: none is down now",
            )
        start = len(samples)
        while start > 0 and samples[start - 1].not_serving & members:
            start -= 1
        stretch = samples[start:]
        condition = f" while {', '.join(down_now)} {'is' if len(down_now) == 1 else 'are'} down"
    window = [s for s in stretch if s.t > latest.t - check.window]
    covered = round(latest.t - window[0].t + SAMPLE_SECONDS)
    if sum(s.completed for s in window) == 0:
        return Verdict(Status.FAILING, f"No request completed in the last {covered} s{condition}")
    value, shown, bound = _measure(check, window)
    if value >= check.below:
        return Verdict(
            Status.FAILING, f"{shown.capitalize()} over the last {covered} s{condition} (needs below {bound})"
        )
    if covered < check.window:
        return Verdict(
            Status.PENDING,
            f"{shown.capitalize()}{condition}: held {covered} of {check.window} s",
        )
    return Verdict(Status.MET, f"{shown.capitalize()} over {check.window} s{condition}")
