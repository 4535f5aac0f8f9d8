"""Question objectives: the learner answers on the lab page, the server judges. The right answer
is never sent to the page; a wrong one is refused with the answer quoted; a right one is met for
good and reveals the explanation."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from sandbox import lifecycle
from sandbox.models import Lab, LabEvent, ObjectiveResult
from sandbox.results import record_result
from sandbox.specs import load_lab

QUESTION = "why-it-failed"
RIGHT = load_lab("scaling-load-balancer").spec.objective(QUESTION).check.answer
WRONG = "PostgreSQL refused new connections once a replica was gone"


@pytest.fixture
def ready_lab(learner) -> Lab:  # noqa: ANN001
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    now = timezone.now()
    Lab.objects.filter(pk=lab.pk).update(state=Lab.State.READY, ready_at=now, expires_at=now + timedelta(minutes=60))
    ObjectiveResult.objects.bulk_create(
        ObjectiveResult(lab=lab, key=o.key) for o in load_lab("scaling-load-balancer").spec.objectives
    )
    lab.refresh_from_db()
    return lab


def answer(client: Client, lab: Lab, text: object, key: str = QUESTION):  # noqa: ANN201
    return client.post(
        f"/api/labs/{lab.id}/objectives/{key}/answer", json.dumps({"answer": text}), content_type="application/json"
    )


def logged_in(user) -> Client:  # noqa: ANN001
    client = Client()
    client.force_login(user)
    return client


def test_the_page_gets_the_question_but_never_its_answer(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    snapshot = logged_in(learner).get(f"/api/labs/{ready_lab.id}/").json()
    question = next(o for o in snapshot["objectives"] if o["key"] == QUESTION)
    assert question["kind"] == "question"
    assert question["question"]["prompt"].startswith("After app-2 died")
    assert RIGHT in question["question"]["choices"]
    assert question["question"]["explanation"] == ""
    assert "answer" not in json.dumps(question["question"]).replace('"choices"', "")


def test_a_wrong_answer_fails_and_a_right_one_is_met_with_the_explanation(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    client = logged_in(learner)
    wrong = answer(client, ready_lab, WRONG)
    assert wrong.status_code == 200
    assert wrong.json()["status"] == "failing"
    assert wrong.json()["reason"] == f"Not quite ({WRONG!r}): try again"
    right = answer(client, ready_lab, RIGHT)
    assert right.json()["status"] == "met"
    assert right.json()["question"]["explanation"].startswith("Round robin gives every server its turn")
    result = ObjectiveResult.objects.get(lab=ready_lab, key=QUESTION)
    assert result.first_met_at is not None
    messages = list(LabEvent.objects.filter(lab=ready_lab).values_list("message", flat=True))
    assert any(m.startswith("Explain the failures: met") for m in messages)


def test_a_met_question_stays_met_after_a_wrong_answer(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    client = logged_in(learner)
    answer(client, ready_lab, RIGHT)
    assert answer(client, ready_lab, WRONG).json()["status"] == "met"


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ("", "Give an answer first."),
        ("   ", "Give an answer first."),
        ("Something else", "Pick one of the choices."),
        ("x" * 501, "An answer is at most 500 characters."),
        (42, 'Send the answer as a string: {"answer": "..."}.'),
    ],
)
def test_an_answer_that_cannot_be_judged_is_refused_and_changes_nothing(
    learner, ready_lab: Lab, given: object, error: str
) -> None:  # noqa: ANN001
    response = answer(logged_in(learner), ready_lab, given)
    assert response.status_code == 400
    assert response.json() == {"error": error}
    assert ObjectiveResult.objects.get(lab=ready_lab, key=QUESTION).status == "pending"


def test_only_questions_can_be_answered(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    assert answer(logged_in(learner), ready_lab, "yes", key="traffic-flows").status_code == 404
    assert answer(logged_in(learner), ready_lab, "yes", key="no-such-question").status_code == 404
    assert ObjectiveResult.objects.get(lab=ready_lab, key="traffic-flows").status == "pending"


def test_a_lab_that_is_not_running_takes_no_answer(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    Lab.objects.filter(pk=ready_lab.pk).update(state=Lab.State.STOPPED)
    response = answer(logged_in(learner), ready_lab, RIGHT)
    assert response.status_code == 409
    assert response.json()["error"] == "This lab is stopped: answer once it is running."


def test_nobody_else_can_answer_for_the_learner(make_user, ready_lab: Lab) -> None:  # noqa: ANN001
    assert answer(logged_in(make_user("mallory")), ready_lab, RIGHT).status_code == 404
    teacher = make_user("teacher", instructor=True, teaching=[ready_lab.owner])
    assert answer(logged_in(teacher), ready_lab, RIGHT).status_code == 404
    assert answer(Client(), ready_lab, RIGHT).status_code == 401
    assert ObjectiveResult.objects.get(lab=ready_lab, key=QUESTION).status == "pending"


def test_answering_needs_the_csrf_token(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    client = Client(enforce_csrf_checks=True)
    client.force_login(learner)
    assert answer(client, ready_lab, RIGHT).status_code == 403


def keys_anywhere(payload: object) -> set[str]:
    if isinstance(payload, dict):
        return set(payload) | {key for value in payload.values() for key in keys_anywhere(value)}
    if isinstance(payload, list):
        return {key for value in payload for key in keys_anywhere(value)}
    return set()


def test_no_answer_or_accepted_pattern_reaches_the_page_anywhere(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    client = logged_in(learner)
    payloads = [client.get(f"/api/labs/{ready_lab.id}/").json(), answer(client, ready_lab, WRONG).json()]
    assert not {"answer", "accept"} & set().union(*(keys_anywhere(p) for p in payloads))
    explanation = load_lab("scaling-load-balancer").spec.objective(QUESTION).check.explanation
    assert explanation.split()[0] not in json.dumps(payloads)  # the explanation waits for a right answer
    page = client.get("/lessons/load-balancing/").content.decode()
    assert "Round robin gives every server its turn" not in page


def test_a_wrong_answer_sent_with_a_right_one_cannot_undo_it(learner, ready_lab: Lab) -> None:  # noqa: ANN001
    client = logged_in(learner)
    assert answer(client, ready_lab, RIGHT).json()["status"] == "met"
    # The wrong answer's request read "pending" before the right one was stored: its write is
    # a compare-and-set that leaves a met question alone.
    objective = load_lab("scaling-load-balancer").spec.objective(QUESTION)
    stored = record_result(ready_lab.pk, objective, "failing", "Not quite", status_changed=True, unless_met=True)
    assert stored is False
    assert ObjectiveResult.objects.get(lab=ready_lab, key=QUESTION).status == "met"


def test_results_are_not_stored_once_the_lab_has_left_ready(ready_lab: Lab) -> None:
    Lab.objects.filter(pk=ready_lab.pk).update(state=Lab.State.STOPPING)
    objective = load_lab("scaling-load-balancer").spec.objective("health-checked")
    assert record_result(ready_lab.pk, objective, "failing", "No such container", status_changed=True) is False
    assert ObjectiveResult.objects.get(lab=ready_lab, key="health-checked").status == "pending"
    assert not LabEvent.objects.filter(lab=ready_lab, kind=LabEvent.Kind.OBJECTIVE).exists()


def test_a_reset_asks_the_question_again(learner, ready_lab: Lab, fake_engine) -> None:  # noqa: ANN001
    answer(logged_in(learner), ready_lab, RIGHT)
    lifecycle.reset_lab(str(ready_lab.id), engine_factory=lambda: fake_engine)
    result = ObjectiveResult.objects.get(lab=ready_lab, key=QUESTION)
    assert (result.status, result.reason) == ("pending", "Not answered yet")
    assert result.first_met_at is not None  # the progress already earned stays
