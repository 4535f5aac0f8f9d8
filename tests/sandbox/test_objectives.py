"""Judging objectives on measured traffic over a window."""

from __future__ import annotations

from sandbox.objectives import Sample, judge
from sandbox.specs import MetricCheck

GROUPS = {"app": ["app-1", "app-2", "app-3"], "lb": ["lb"]}
SURVIVES = MetricCheck(kind="metric", metric="error_rate", below=0.01, window=30, while_down="app")
FLOWS = MetricCheck(kind="metric", metric="error_rate", below=0.01, window=10)


def seconds(start: int, count: int, errors: int = 0, down: frozenset[str] = frozenset()) -> list[Sample]:
    return [
        Sample(t=float(start + i), completed=20, errors=errors, p95_ms=12.0, not_serving=down) for i in range(count)
    ]


DOWN = frozenset({"app-2"})


def test_waits_for_the_first_figures() -> None:
    assert judge(FLOWS, [], GROUPS).status == "pending"


def test_clean_traffic_meets_a_plain_objective_after_its_window() -> None:
    assert judge(FLOWS, seconds(0, 5), GROUPS).status == "pending"
    verdict = judge(FLOWS, seconds(0, 10), GROUPS)
    assert verdict.status == "met"
    assert verdict.reason == "Error rate 0% over 10 s"


def test_errors_fail_at_once_and_say_how_many() -> None:
    verdict = judge(FLOWS, seconds(0, 10) + seconds(10, 2, errors=7), GROUPS)
    assert verdict.status == "failing"
    assert "Error rate" in verdict.reason and "needs below 1%" in verdict.reason


def test_while_down_objective_waits_until_a_replica_is_down() -> None:
    verdict = judge(SURVIVES, seconds(0, 40), GROUPS)
    assert verdict.status == "pending"
    assert "none is down now" in verdict.reason


def test_replica_down_with_errors_is_failing_and_names_the_replica() -> None:
    samples = seconds(0, 20) + seconds(20, 5, errors=7, down=DOWN)
    verdict = judge(SURVIVES, samples, GROUPS)
    assert verdict.status == "failing"
    assert "while app-2 is down" in verdict.reason


def test_fix_turns_it_green_once_the_errors_leave_the_window() -> None:
    broken = seconds(20, 5, errors=7, down=DOWN)
    fixed_briefly = broken + seconds(25, 20, down=DOWN)
    assert judge(SURVIVES, fixed_briefly, GROUPS).status == "failing"  # errors still in the window
    fixed_long = broken + seconds(25, 30, down=DOWN)
    verdict = judge(SURVIVES, fixed_long, GROUPS)
    assert verdict.status == "met"
    assert verdict.reason == "Error rate 0% over 30 s while app-2 is down"


def test_window_must_lie_inside_the_outage() -> None:
    # 40 clean seconds, but the replica went down only 5 seconds ago: not yet proven.
    samples = seconds(0, 35) + seconds(35, 5, down=DOWN)
    verdict = judge(SURVIVES, samples, GROUPS)
    assert verdict.status == "pending"
    assert "held 5 of 30 s" in verdict.reason


def test_met_while_down_objective_stands_after_the_replica_returns() -> None:
    samples = seconds(0, 30, down=DOWN) + seconds(30, 3)
    assert judge(SURVIVES, samples, GROUPS, previous="met") is None
    assert judge(SURVIVES, samples, GROUPS, previous="failing").status == "pending"


def test_no_completed_requests_is_a_failure() -> None:
    samples = [Sample(t=float(i), completed=0, errors=0, p95_ms=None, not_serving=frozenset()) for i in range(10)]
    verdict = judge(FLOWS, samples, GROUPS)
    assert verdict.status == "failing"
    assert "No request completed" in verdict.reason


def test_p95_objective_uses_weighted_latency() -> None:
    check = MetricCheck(kind="metric", metric="p95_ms", below=200, window=3)
    fast = [Sample(t=float(i), completed=20, errors=0, p95_ms=50.0, not_serving=frozenset()) for i in range(3)]
    assert judge(check, fast, GROUPS).status == "met"
    slow = fast + [Sample(t=3.0, completed=60, errors=0, p95_ms=900.0, not_serving=frozenset())]
    verdict = judge(check, slow, GROUPS)
    assert verdict.status == "failing"
    assert verdict.reason.startswith("P95 latency 560 ms over the last 3 s")
