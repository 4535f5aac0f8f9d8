"""`lab test`: prove a lab package breakable and fixable, headless, on the real engine.

Steps, each timed and reported:
1. provision  the lab comes up with every node healthy;
2. start      each objective is met or unmet as its `at_start` says;
3. break      the spec's break fault runs, and every objective but the questions fails;
4. solve      the solution script runs (exit 0), each question refuses a wrong answer and takes
              its right one, and every objective is met;
5. teardown   the lab stops and nothing of it is left on the engine (always runs).
A step that fails ends the test (teardown still runs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.contrib.auth import get_user_model

from . import lifecycle
from .models import Lab, ObjectiveResult
from .monitor import Monitor
from .specs import LabSpec, ObjectiveSpec, QuestionCheck, load_lab

logger = logging.getLogger(__name__)

TESTER = "lab-tester"
POLL_SECONDS = 0.5
SETTLE_SECONDS = 30  # beyond an objective's own window, time allowed for traffic to show a change
Status = ObjectiveResult.Status


@dataclass(frozen=True)
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str


class StepFailed(Exception):
    pass


def _statuses(lab: Lab) -> dict[str, str]:
    return dict(ObjectiveResult.objects.filter(lab=lab).values_list("key", "status"))


def _reasons(lab: Lab) -> str:
    results = ObjectiveResult.objects.filter(lab=lab).order_by("key")
    return "; ".join(f"{r.key} {r.status} ({r.reason})" for r in results)


def _wait_for(lab: Lab, wanted: Callable[[dict[str, str]], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if wanted(_statuses(lab)):
            return True
        time.sleep(POLL_SECONDS)
    return wanted(_statuses(lab))


def _settle_seconds(spec: LabSpec, longest: bool = True) -> float:
    """How long the checks need to show a change: the longest (or shortest) window or run series."""
    seconds = [o.check.settle_seconds for o in spec.objectives if not o.is_question]
    if not seconds:
        return 0.0
    return max(seconds) if longest else min(seconds)


def _judged_keys(spec: LabSpec) -> list[str]:
    """The objectives the lab itself decides (every kind but questions, which the learner answers)."""
    return [o.key for o in spec.objectives if not o.is_question]


# What `lab test` answers to a free-text question to prove a wrong answer is refused.
WRONG_ANSWER = "stacklab lab test: surely not the answer"


def _provision(lab: Lab, spec: LabSpec) -> str:
    lifecycle.provision_lab(str(lab.id))
    lab.refresh_from_db()
    if lab.state != Lab.State.READY:
        raise StepFailed(f"lab {lab.state}: {lab.reason}")
    return f"{lab.nodes.count()} nodes healthy"


def _start(lab: Lab, spec: LabSpec) -> str:
    met = [o.key for o in spec.objectives if o.at_start == "met"]
    unmet = [o.key for o in spec.objectives if o.at_start == "unmet"]
    settle = _settle_seconds(spec) + SETTLE_SECONDS if met else _settle_seconds(spec, longest=False) + 2
    if met and not _wait_for(lab, lambda s: all(s.get(key) == Status.MET for key in met), settle):
        raise StepFailed(f"expected met at start: {', '.join(met)}; got {_reasons(lab)}")
    if not met:
        time.sleep(settle)  # nothing to wait on: give the unmet ones their window to (wrongly) pass
    wrongly_met = [key for key, status in _statuses(lab).items() if key in unmet and status == Status.MET]
    if wrongly_met:
        raise StepFailed(f"expected unmet at start, but met: {', '.join(wrongly_met)}")
    return f"met: {', '.join(met) or 'none'}; unmet: {', '.join(unmet) or 'none'}"


def _break(lab: Lab, spec: LabSpec) -> str:
    lifecycle.inject_fault(str(lab.id), spec.break_)
    keys = _judged_keys(spec)
    seconds = _settle_seconds(spec) + SETTLE_SECONDS
    if not _wait_for(lab, lambda s: all(s.get(key) == Status.FAILING for key in keys), seconds):
        raise StepFailed(f"after the break every objective should fail; got {_reasons(lab)}")
    unanswered = " (questions wait for the solve step)" if len(keys) < len(spec.objectives) else ""
    return f"{spec.break_}: every objective failing{unanswered}"


def _solve(lab: Lab, spec: LabSpec) -> str:
    result = lifecycle.run_solution(lab)
    if result.exit_code != 0:
        raise StepFailed(f"{spec.solution.script} exited {result.exit_code}: {result.output.strip()[-300:]}")
    answered = [_answer(lab, objective) for objective in spec.objectives if objective.is_question]
    keys = [o.key for o in spec.objectives]
    seconds = _settle_seconds(spec) + SETTLE_SECONDS
    if not _wait_for(lab, lambda s: all(s.get(key) == Status.MET for key in keys), seconds):
        raise StepFailed(f"after the solution every objective should be met within {seconds:g} s; got {_reasons(lab)}")
    questions = f"; {len(answered)} question(s) answered" if answered else ""
    return f"{spec.solution.script} exit 0{questions}; every objective met"


def _answer(lab: Lab, objective: ObjectiveSpec) -> str:
    """Answer a question wrong (it must be refused), then right (it must be met)."""
    check = objective.check
    assert isinstance(check, QuestionCheck)
    wrong = next((choice for choice in check.choices if choice != check.answer), WRONG_ANSWER)
    if lifecycle.answer_question(lab, objective.key, wrong)["status"] != Status.FAILING:
        raise StepFailed(f"question {objective.key} accepts a wrong answer: {wrong!r}")
    if lifecycle.answer_question(lab, objective.key, check.answer)["status"] != Status.MET:
        raise StepFailed(f"question {objective.key} refuses its own answer {check.answer!r}")
    return objective.key


def _teardown(lab: Lab, spec: LabSpec) -> str:
    lifecycle.stop_lab(str(lab.id), reason="lab test finished")
    if lab.short_id in lifecycle.connect_engine().lab_ids():
        raise StepFailed("engine objects were left behind")
    return "nothing left on the engine"


STEPS: list[tuple[str, Callable[[Lab, LabSpec], str]]] = [
    ("provision", _provision),
    ("start", _start),
    ("break", _break),
    ("solve", _solve),
]


def run_lab_test(slug: str, report: Callable[[StepResult], None]) -> bool:
    """Run every step on a fresh lab of `slug`; `report` hears each step as it ends."""
    spec = load_lab(slug).spec
    tester, _ = get_user_model().objects.get_or_create(username=TESTER)
    lab = Lab.objects.create(owner=tester, lab_slug=slug, lesson_slug=f"lab-test-{slug}-{time.time_ns()}")
    monitor = Monitor(poll_seconds=POLL_SECONDS, only_labs={str(lab.id)})
    thread = monitor.start_in_thread()
    passed = True
    try:
        for name, step in STEPS:
            if not _run_step(name, step, lab, spec, report):
                passed = False
                break
    finally:
        monitor.stop()
        thread.join(timeout=10)
        passed = _run_step("teardown", _teardown, lab, spec, report) and passed
    return passed


def _run_step(
    name: str, step: Callable[[Lab, LabSpec], str], lab: Lab, spec: LabSpec, report: Callable[[StepResult], None]
) -> bool:
    started = time.monotonic()
    try:
        detail, ok = step(lab, spec), True
    except StepFailed as failure:
        detail, ok = str(failure), False
    except Exception as error:  # an engine or spec error is this step's failure, reported as such
        logger.exception("lab test %s: step %s crashed", lab.lab_slug, name)
        detail, ok = f"{type(error).__name__}: {error}", False
    report(StepResult(name=name, ok=ok, seconds=time.monotonic() - started, detail=detail))
    return ok
