"""HTTP and command checks: what the monitor runs inside a node, and what its result means.

An `http` check is a curl request sent from a node through the lab (e.g. from the traffic node to
the load balancer); a `command` check is a command or script run in a node. Both are judged on one
run's exit code and output; the monitor counts consecutive passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .engine import Engine, EngineError, ExecResult, ExecTimedOut
from .specs import CommandCheck, HttpCheck, LabPackage

# Output past this is cut before it is searched or quoted: a check is a probe, not a download.
MAX_OUTPUT = 64 * 1024
EXEC_MARGIN = 2.0  # seconds the engine waits beyond the check's own timeout
NOT_FOUND_EXIT = {126, 127}  # the OCI runtime's "not executable" / "not found"


@dataclass(frozen=True)
class Outcome:
    passed: bool
    reason: str


def _quote(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def curl_command(check: HttpCheck) -> list[str]:
    """curl, printing the response's status line and headers (-i) before the body. HEAD is -I:
    with -X HEAD curl would wait for a body that never comes. --data-raw, so a body starting
    with @ is sent as written, never read from a file in the node."""
    command = ["curl", "-sS", "--max-time", f"{check.timeout:g}"]
    command += ["-I"] if check.method == "HEAD" else ["-i", "-X", check.method]
    if check.data is not None:
        command += ["--data-raw", check.data]
    return [*command, "--", check.url]


def _split_response(output: str) -> tuple[int, dict[str, str], str] | None:
    """(status, headers with lower-case names, body) from curl -i output; None if unreadable.
    Interim 1xx answers (100 Continue) come first in their own block and are skipped."""
    rest = output
    while True:
        head, separator, body = rest.replace("\r\n", "\n").partition("\n\n")
        lines = head.split("\n")
        match = re.match(r"HTTP/[\d.]+ (\d{3})", lines[0])
        if not match:
            return None
        status = int(match.group(1))
        if 100 <= status < 200 and separator:
            rest = body
            continue
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        return status, headers, body


def judge_http(check: HttpCheck, result: ExecResult) -> Outcome:
    """Did the request get the status, headers and body the check wants?"""
    request = f"{check.method} {check.url} from {check.node}"
    if result.exit_code in NOT_FOUND_EXIT:
        return Outcome(False, f"{check.node} cannot run curl: {_quote(result.output)}")
    if result.exit_code != 0:
        return Outcome(False, f"{request}: no answer ({_quote(result.output)})")
    response = _split_response(result.output[:MAX_OUTPUT])
    if response is None:
        return Outcome(False, f"{request}: not an HTTP answer ({_quote(result.output)})")
    status, headers, body = response
    if status != check.status:
        return Outcome(False, f"{request}: answered {status} (expected {check.status}): {_quote(body, 80)}")
    for name, pattern in check.headers.items():
        value = headers.get(name.lower())
        if value is None:
            return Outcome(False, f"{request}: answered {status} without a {name} header (expected /{pattern}/)")
        if not re.search(pattern, value):
            return Outcome(False, f"{request}: header {name} is {_quote(value, 60)!r} (expected /{pattern}/)")
    if check.body is not None and not re.search(check.body, body):
        return Outcome(False, f"{request}: answered {status}, but the body does not contain /{check.body}/")
    shown = "".join(f", {name}: {headers.get(name.lower())}" for name in check.headers)
    return Outcome(True, f"{request}: {status}{shown}")


# Exit status of coreutils' (and busybox's) `timeout` when it had to stop the command.
TIMED_OUT_EXIT = 124


def command_for(check: CommandCheck, package: LabPackage) -> list[str]:
    """The check's command, under `timeout`: the engine cannot kill an exec, so a command that
    hangs (a psql to a peer behind a firewall fault) is stopped in the node itself, and KILLed a
    second later if it ignores the TERM."""
    if check.script is not None:
        command = ["sh", "-c", package.read_script(check.script)]
    else:
        assert check.command is not None  # one of the two, by the spec's validator
        command = check.command
    return ["timeout", "-k", "1", f"{check.timeout:g}", *command]


def judge_command(check: CommandCheck, result: ExecResult) -> Outcome:
    """Did the command exit as expected, with the output the check wants?"""
    what = f"{check.script or ' '.join(check.command or [])} in {check.node}"
    output = result.output[:MAX_OUTPUT]
    if result.exit_code == TIMED_OUT_EXIT and check.exit_code != TIMED_OUT_EXIT:
        return Outcome(False, f"{_quote(what, 80)}: still running after {check.timeout:g} s (stopped)")
    if result.exit_code in NOT_FOUND_EXIT and check.exit_code not in NOT_FOUND_EXIT:
        return Outcome(False, f"{_quote(what, 80)}: could not run ({_quote(output)})")
    if result.exit_code != check.exit_code:
        last_line = (output.strip().splitlines() or [""])[-1]
        expected = f"exited {result.exit_code} (expected {check.exit_code})"
        return Outcome(False, f"{_quote(what, 80)}: {expected} {_quote(last_line, 100)}".strip())
    if check.output is not None and not re.search(check.output, output):
        return Outcome(False, f"{_quote(what, 80)}: output does not contain /{check.output}/: {_quote(output, 80)}")
    return Outcome(True, f"{_quote(what, 80)}: exit {result.exit_code}")


def run_check(engine: Engine, lab: str, check: HttpCheck | CommandCheck, package: LabPackage) -> Outcome:
    """Run one check in its node and judge it. Engine errors (a node that is gone, a paused one)
    are the check failing, with the engine's reason."""
    timeout = check.timeout + EXEC_MARGIN
    try:
        if isinstance(check, HttpCheck):
            return judge_http(check, engine.exec(lab, check.node, curl_command(check), timeout=timeout))
        result = engine.exec(lab, check.node, command_for(check, package), user=check.user, timeout=timeout)
        return judge_command(check, result)
    except ExecTimedOut:
        return Outcome(False, f"the check in {check.node} gave no answer within {timeout:g} s")
    except EngineError as error:
        return Outcome(False, f"could not run the check in {check.node}: {error}")
