"""HTTP and command checks: what is run in the node, and how its exit code and output are read.
The docker-marked test at the end runs both kinds in a real lab."""

from __future__ import annotations

from sandbox.checks import command_for, curl_command, judge_command, judge_http, run_check
from sandbox.engine import ExecResult, ExecTimedOut
from sandbox.specs import CommandCheck, HttpCheck


def http(**fields: object) -> HttpCheck:
    return HttpCheck.model_validate({"kind": "http", "node": "traffic", "url": "http://lb:8080/data/a", **fields})


def command(**fields: object) -> CommandCheck:
    return CommandCheck.model_validate({"kind": "command", "node": "db", "command": ["psql", "-c", "x"], **fields})


OK_RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Cache: hit\r\nX-Replica: app-1\r\n\r\nhello world"


def test_curl_sends_the_method_and_body_and_bounds_its_time() -> None:
    assert curl_command(http(method="PUT", data="@v1", timeout=2.5)) == [
        "curl", "-sS", "--max-time", "2.5", "-i", "-X", "PUT", "--data-raw", "@v1", "--", "http://lb:8080/data/a",
    ]  # fmt: skip


def test_a_head_check_asks_with_dash_capital_i() -> None:
    # `-X HEAD` would make curl wait for a body that never comes.
    assert curl_command(http(method="HEAD")) == ["curl", "-sS", "--max-time", "3", "-I", "--", "http://lb:8080/data/a"]


def test_http_check_passes_on_status_headers_and_body() -> None:
    outcome = judge_http(http(headers={"x-cache": "^hit$"}, body="hello"), ExecResult(0, OK_RESPONSE))
    assert outcome.passed
    assert outcome.reason == "GET http://lb:8080/data/a from traffic: 200, x-cache: hit"


def test_http_check_names_a_wrong_status() -> None:
    response = "HTTP/1.1 503 Service Unavailable\r\n\r\ndb: connection refused"
    outcome = judge_http(http(), ExecResult(0, response))
    assert not outcome.passed
    assert (
        outcome.reason == "GET http://lb:8080/data/a from traffic: answered 503 (expected 200): db: connection refused"
    )


def test_http_check_names_a_missing_or_wrong_header() -> None:
    missing = judge_http(http(headers={"X-Served-By": "."}), ExecResult(0, OK_RESPONSE))
    assert not missing.passed and "without a X-Served-By header" in missing.reason
    wrong = judge_http(http(headers={"X-Cache": "^miss$"}), ExecResult(0, OK_RESPONSE))
    assert not wrong.passed and "header X-Cache is 'hit' (expected /^miss$/)" in wrong.reason


def test_http_check_names_a_body_that_does_not_match() -> None:
    outcome = judge_http(http(body="goodbye"), ExecResult(0, OK_RESPONSE))
    assert not outcome.passed and outcome.reason.endswith("answered 200, but the body does not contain /goodbye/")


def test_http_check_skips_an_interim_100_continue() -> None:
    response = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX-Cache: invalidated\r\n\r\n"
    assert judge_http(http(method="PUT", data="v", status=201), ExecResult(0, response)).passed


def test_http_check_reports_no_answer_and_a_node_without_curl() -> None:
    refused = judge_http(http(), ExecResult(7, "curl: (7) Failed to connect to lb port 8080: Connection refused"))
    assert not refused.passed
    assert refused.reason == (
        "GET http://lb:8080/data/a from traffic: no answer "
        "(curl: (7) Failed to connect to lb port 8080: Connection refused)"
    )
    missing = judge_http(http(), ExecResult(127, 'exec: "curl": executable file not found in $PATH'))
    assert not missing.passed and missing.reason.startswith("traffic cannot run curl")


def test_command_check_passes_on_exit_code_and_output() -> None:
    assert judge_command(command(output=r"^\s*3$"), ExecResult(0, "3")).passed
    assert judge_command(command(exit_code=2), ExecResult(2, "")).passed


def test_command_check_names_a_wrong_exit_code_with_the_last_line() -> None:
    outcome = judge_command(command(), ExecResult(1, "connecting\npsql: error: connection refused\n"))
    assert not outcome.passed
    assert outcome.reason == "psql -c x in db: exited 1 (expected 0) psql: error: connection refused"


def test_command_check_names_output_that_does_not_match() -> None:
    outcome = judge_command(command(output="^[1-9]"), ExecResult(0, "0\n"))
    assert not outcome.passed and "output does not contain /^[1-9]/: 0" in outcome.reason


def test_command_check_that_cannot_run_says_so() -> None:
    outcome = judge_command(command(), ExecResult(127, 'exec: "psql": executable file not found in $PATH'))
    assert not outcome.passed and "could not run" in outcome.reason


def test_a_command_check_runs_under_timeout_so_it_cannot_hang() -> None:
    check = command(timeout=2)
    assert command_for(check, package=None) == ["timeout", "-k", "1", "2", "psql", "-c", "x"]  # type: ignore[arg-type]
    outcome = judge_command(check, ExecResult(124, ""))
    assert not outcome.passed and outcome.reason == "psql -c x in db: still running after 2 s (stopped)"


class SilentEngine:
    """An engine whose exec never answers in time."""

    def exec(self, lab: str, node: str, command: list[str], user: str | None = None, timeout: float | None = None):  # noqa: ANN201
        raise ExecTimedOut(f"{node}: no answer within {timeout:g} s")


def test_a_check_the_engine_does_not_answer_in_time_fails_with_why() -> None:
    outcome = run_check(SilentEngine(), "lab", http(timeout=1), package=None)  # type: ignore[arg-type]
    assert not outcome.passed and outcome.reason == "the check in traffic gave no answer within 3 s"
