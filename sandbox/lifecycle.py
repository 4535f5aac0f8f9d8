"""The lab lifecycle, top to bottom: request, provision, break, solve, extend, stop, reap, reconcile.

    requested -> provisioning -> ready -> stopping -> stopped
         \\------------\\-----------\\--> failed (with a reason for the learner)

Every move is a compare-and-set on the lab row (`_move`), so a retried or duplicated task finds
the row already moved and does nothing. The row is written before any engine object exists, and
engine objects carry the lab id, so whatever a crash leaves behind is found again by the reaper.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import timeline
from .engine import (
    Engine,
    EngineError,
    EngineUnavailable,
    ExecResult,
    ExecTimedOut,
    Health,
    Network,
    NodeFile,
    NodeRun,
    NodeStatus,
)
from .isolation import IsolationMissing, ensure_lab_isolation
from .live import publish
from .models import Lab, LabEvent, Node, ObjectiveResult
from .nodestates import NOT_SERVING, state_from_status
from .payloads import idle_deadline, lab_idle_minutes, lab_payload, node_payload, objective_payload
from .results import record_result
from .signals import announce, lab_state_changed
from .specs import (
    MAX_ANSWER_LENGTH,
    LabNotFound,
    LabPackage,
    LabSpec,
    LabSpecError,
    NodeSpec,
    ObjectiveSpec,
    QuestionCheck,
    load_lab,
)

logger = logging.getLogger(__name__)

State = Lab.State
FIRST_NODE_ADDRESS = 10  # .1 is the gateway; nodes take .10, .11, ... in spec order
HEALTH_POLL_SECONDS = 0.25
WAITING = "Waiting for the first traffic figures"
UNANSWERED = "Not answered yet"


def _first_reason(objective: ObjectiveSpec) -> str:
    """What an objective says before it is first judged."""
    if objective.is_question:
        return UNANSWERED
    if objective.is_probe:
        return "Waiting for the first run of its check"
    return WAITING


ACTIVE_EVERY = timedelta(seconds=30)
STUCK_STOPPING = timedelta(minutes=2)


class LabError(Exception):
    """Something a learner asked for cannot be done; the message says why."""


EngineFactory = Callable[[], Engine]


def connect_engine() -> Engine:
    """The engine labs run on (DOCKER_HOST, or the local socket)."""
    return Engine(instance=settings.STACKLAB_INSTANCE, subnet_pool=settings.LAB_SUBNET_POOL)


def _engine(factory: EngineFactory | None) -> Engine:
    # Looked up at call time, so tests can swap `connect_engine` for a fake.
    return (factory or connect_engine)()


# -- state machine ----------------------------------------------------------------------------


def _move(lab_id: Any, expected: Iterable[str], new: str, *, only_if: Q | None = None, **fields: Any) -> bool:
    """Compare-and-set the lab's state (and `only_if`, if given, in the same update); True only
    for the one caller that moved it."""
    rows = Lab.objects.filter(pk=lab_id, state__in=list(expected))
    changed = (rows.filter(only_if) if only_if is not None else rows).update(
        state=new, updated_at=timezone.now(), **fields
    )
    if changed:
        lab = Lab.objects.get(pk=lab_id)
        logger.info("lab %s: -> %s %s", lab.short_id, new, fields.get("reason", ""))
        publish(str(lab.id), lab_payload(lab))
        reason = fields.get("reason")
        timeline.record(lab.pk, LabEvent.Kind.LAB, f"Lab {new}" + (f": {reason}" if reason else ""))
        announce(lab_state_changed, lab_id=str(lab.id), owner_id=lab.owner_id, lesson_slug=lab.lesson_slug, state=new)
    return bool(changed)


def _step(lab: Lab, message: str) -> None:
    """Record and announce one provisioning step."""
    entry = {"at": timezone.now().isoformat(), "message": message}
    lab.steps = [*lab.steps, entry]
    lab.save(update_fields=["steps", "updated_at"])
    publish(str(lab.id), {"type": "step", **entry})


def _after_commit(task_name: str, *args: str) -> None:
    from . import tasks  # tasks import this module; enqueueing is the only way back

    task = getattr(tasks, task_name)
    transaction.on_commit(lambda: task.delay(*args))


# -- request ----------------------------------------------------------------------------------


def request_lab(owner: AbstractBaseUser, lab_slug: str, lesson_slug: str) -> tuple[Lab, bool]:
    """The learner's live lab for this lesson, created and queued for provisioning if there is
    none. Safe under double clicks and concurrent requests: the database allows one live lab per
    learner and lesson, and the loser of a race gets the winner's lab.
    """
    load_lab(lab_slug)  # an unknown lab is refused before anything is written
    live = Lab.objects.filter(owner=owner, lesson_slug=lesson_slug, state__in=Lab.LIVE_STATES)
    existing = live.first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            lab = Lab.objects.create(owner=owner, lab_slug=lab_slug, lesson_slug=lesson_slug)
    except IntegrityError:
        return live.get(), False
    logger.info("lab %s: requested by user %s for %s", lab.short_id, owner.pk, lab_slug)
    _after_commit("provision_lab", str(lab.id))
    announce(lab_state_changed, lab_id=str(lab.id), owner_id=owner.pk, lesson_slug=lesson_slug, state=State.REQUESTED)
    return lab, True


def request_stop(lab: Lab, reason: str = "Stopped by the learner.") -> None:
    if not lab.is_live:
        raise LabError(f"This lab is already {lab.state}.")
    _after_commit("stop_lab", str(lab.id), reason)


def _require_ready(lab: Lab, doing: str) -> LabSpec:
    if lab.state != State.READY:
        raise LabError(f"The lab must be running to {doing}.")
    return load_lab(lab.lab_slug).spec


def request_break(lab: Lab) -> None:
    """The lesson's scripted break: the fault the spec names under `break`."""
    if lab.state != State.READY:
        raise LabError("The lab can be broken once it is ready.")
    request_fault(lab, load_lab(lab.lab_slug).spec.break_)


def request_fault(lab: Lab, key: str) -> None:
    spec = _require_ready(lab, "inject a fault")
    if spec.fault(key) is None:
        raise LabNotFound(f"This lab has no fault called {key!r}.")
    _after_commit("inject_fault", str(lab.id), key)


def request_restart(lab: Lab, node: str) -> None:
    spec = _require_ready(lab, "restart a node")
    if node not in spec.instances:
        raise LabNotFound(f"This lab has no node called {node!r}.")
    _after_commit("restart_node", str(lab.id), node)


def request_reset(lab: Lab) -> None:
    _require_ready(lab, "reset it")
    _after_commit("reset_lab", str(lab.id))


def request_skip(lab: Lab) -> None:
    """Run the solution for the learner; what it makes pass is recorded as skipped, not passed."""
    _require_ready(lab, "run its solution")
    Lab.objects.filter(pk=lab.pk, skipped_at=None).update(skipped_at=timezone.now())
    timeline.record(lab.pk, LabEvent.Kind.CONTROL, "Skipped: running the solution")
    _after_commit("skip_lab", str(lab.id))


def next_hint(lab: Lab) -> tuple[int, int, str]:
    """Reveal the next hint: (its number from 1, how many there are, its text)."""
    if not lab.is_live:
        raise LabError(f"This lab is {lab.state}.")
    hints = load_lab(lab.lab_slug).spec.hints
    if not Lab.objects.filter(pk=lab.pk, hints_shown__lt=len(hints)).update(hints_shown=F("hints_shown") + 1):
        raise LabError(f"No more hints: this lab has {len(hints)}." if hints else "This lab has no hints.")
    lab.refresh_from_db(fields=["hints_shown"])
    timeline.record(lab.pk, LabEvent.Kind.HINT, f"Hint {lab.hints_shown} of {len(hints)} shown")
    return lab.hints_shown, len(hints), hints[lab.hints_shown - 1]


class NoSuchQuestion(LabError):
    """The lab has no question objective with that key."""


class InvalidAnswer(LabError):
    """The answer cannot be judged (empty, too long, not one of the choices)."""


def answer_question(lab: Lab, key: str, answer: str) -> dict[str, Any]:
    """Judge a learner's answer to a question objective; returns the objective as the page shows
    it. Right: met (and it stays met). Wrong: failing, with the answer quoted, to try again."""
    if lab.state != State.READY:
        raise LabError(f"This lab is {lab.state}: answer once it is running.")
    spec = load_lab(lab.lab_slug).spec
    objective = next((o for o in spec.objectives if o.key == key and o.is_question), None)
    if objective is None:
        raise NoSuchQuestion(f"This lab has no question {key!r}.")
    check = objective.check
    assert isinstance(check, QuestionCheck)
    answer = answer.strip()
    if not answer:
        raise InvalidAnswer("Give an answer first.")
    if len(answer) > MAX_ANSWER_LENGTH:
        raise InvalidAnswer(f"An answer is at most {MAX_ANSWER_LENGTH} characters.")
    if check.choices and answer not in check.choices:
        raise InvalidAnswer("Pick one of the choices.")
    result, _ = ObjectiveResult.objects.get_or_create(lab=lab, key=key)
    if result.status != ObjectiveResult.Status.MET:
        if check.is_right(answer):
            status, reason = ObjectiveResult.Status.MET, f"Answered: {answer}"
        else:
            status, reason = ObjectiveResult.Status.FAILING, f"Not quite ({answer!r}): try again"
        record_result(lab.pk, objective, status, reason, status_changed=status != result.status, unless_met=True)
        result.refresh_from_db()
    return objective_payload(result, objective)


# -- provision --------------------------------------------------------------------------------


def _node_runs(
    package: LabPackage, lab: Lab, images: dict[str, str], network: Network
) -> list[tuple[NodeSpec, NodeRun]]:
    runs = []
    index = FIRST_NODE_ADDRESS
    for node in package.spec.nodes:
        health = None
        if node.health:
            health = Health(
                command=node.health.command,
                interval=node.health.interval,
                timeout=node.health.timeout,
                retries=node.health.retries,
                start_period=node.health.start_period,
            )
        for instance in node.instances:
            env = {"REPLICA_NAME": instance, **node.env}
            runs.append(
                (
                    node,
                    NodeRun(
                        lab=lab.short_id,
                        owner=lab.owner_id,
                        name=instance,
                        group=node.name,
                        image=images[node.name],
                        ip=network.address(index),
                        command=node.command,
                        env=env,
                        user=node.user,
                        health=health,
                        memory_bytes=node.limits.memory_bytes,
                        cpus=node.limits.cpus,
                        pids=node.limits.pids,
                        cap_add=node.cap_add,
                        writable=node.writable_bytes,
                        files=[
                            NodeFile(path=file.path, content=package.read_file(file.source), mode=file.mode_bits)
                            for file in node.files
                        ],
                    ),
                )
            )
            index += 1
    return runs


def _image(engine: Engine, package: LabPackage, node: NodeSpec) -> str:
    """The image a node runs: built from its context, or the named one (pulled if missing)."""
    if node.image is not None:
        return engine.ensure_pulled(node.image)
    return engine.ensure_image(package.build_context(node))


def _run_setup(engine: Engine, lab: Lab, package: LabPackage, deadline: float) -> None:
    """Run the spec's setup scripts in order; one that fails (or outlives the provisioning
    deadline) fails the lab with its output."""
    for step in package.spec.setup:
        _step(lab, f"Setting up: {step.script} in {step.node}")
        seconds = max(1.0, deadline - time.monotonic())
        script = package.read_script(step.script)
        try:
            result = engine.exec(lab.short_id, step.node, ["sh", "-c", script], user=step.user, timeout=seconds)
        except ExecTimedOut as exc:
            raise EngineError(f"Setup {step.script} in {step.node} did not finish in time") from exc
        if result.exit_code != 0:
            tail = result.output.strip()[-300:]
            raise EngineError(f"Setup {step.script} in {step.node} exited {result.exit_code}: {tail}")


def _last_words(engine: Engine, lab: Lab, name: str, status: NodeStatus | None) -> str:
    """A stopped node's last lines of output, as a suffix for the failure reason: they usually
    say why (a seed that did not fit its writable path, a bad config). Empty if there are none."""
    if status is None:
        return ""
    try:
        said = engine.last_output(lab.short_id, name)
    except EngineError:
        return ""  # removed meanwhile: the reason stands without it
    return f": {said}" if said else ""


def _wait_healthy(engine: Engine, lab: Lab, names: set[str], deadline: float) -> None:
    """Poll the engine until every named node serves, or fail with the first that cannot."""
    while True:
        statuses = {s.name: s for s in engine.node_statuses(lab.short_id) if s.name in names}
        waiting = []
        for name in sorted(names):
            status = statuses.get(name)
            if status is None or status.status in {"exited", "dead"}:
                raise EngineError(f"Node {name} stopped while starting" + _last_words(engine, lab, name, status))
            if state_from_status(status) != Node.State.HEALTHY:
                waiting.append(name)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise EngineError(f"Timed out waiting for {', '.join(waiting)} to become healthy")
        time.sleep(HEALTH_POLL_SECONDS)


def provision_lab(lab_id: str, engine_factory: EngineFactory | None = None) -> None:
    """Bring a requested lab to ready.

    0. Reach the engine; if it is away, raise before touching the row (the task retries).
    1. Claim the row (requested -> provisioning); anyone else finding it claimed stops here.
    2. Check the host's isolation rules (re-applied if missing; no lab runs without them),
       build missing images, create the lab network, write a Node row per container.
    3. Start nodes in dependency order, each after what it depends on is healthy.
    4. Wait for all nodes to be healthy, then ready (with its expiry).
    On any failure, remove what was made and mark the lab failed with a reason.
    """
    # No engine, nothing claimed: EngineUnavailable goes to the task, which retries, then fails
    # the lab (fail_lab) once the engine stays away.
    engine = _engine(engine_factory)
    if not _move(lab_id, [State.REQUESTED], State.PROVISIONING, lease_expires_at=_lease_until()):
        return
    with _lease_kept(lab_id):
        _provision_claimed(lab_id, engine)


def _lease_until() -> datetime:
    return timezone.now() + timedelta(seconds=settings.LAB_PROVISION_LEASE)


@contextmanager
def _lease_kept(lab_id: str) -> Iterator[None]:
    """Renew the lab's provisioning lease from a thread while the block runs. A run that dies
    with its worker (SIGKILL, OOM, a host reboot) stops renewing, and the provision sweep
    recovers the lab once the lease runs out, without waiting for the broker to redeliver."""
    done = threading.Event()

    def renew() -> None:
        try:
            # A third of the lease: two renewals may be missed (a slow database) before it lapses.
            while not done.wait(settings.LAB_PROVISION_LEASE / 3):
                try:
                    Lab.objects.filter(pk=lab_id, state=State.PROVISIONING).update(lease_expires_at=_lease_until())
                except DatabaseError as exc:
                    logger.warning("lab %s: provisioning lease not renewed: %s", str(lab_id)[:12], exc)
        finally:
            connection.close()  # this thread's own connection

    keeper = threading.Thread(target=renew, name=f"lease-{str(lab_id)[:12]}", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        done.set()
        keeper.join()


def _provision_claimed(lab_id: str, engine: Engine) -> None:
    """Steps 2-4 of provision_lab, for the run that claimed the lab (and holds its lease)."""
    lab = Lab.objects.get(pk=lab_id)
    deadline = time.monotonic() + settings.LAB_PROVISION_TIMEOUT
    try:
        # First, so that no lab ever runs able to reach its host (and nothing is built in vain).
        ensure_lab_isolation()
        package = load_lab(lab.lab_slug)
        _step(lab, "Preparing images")
        images = {node.name: _image(engine, package, node) for node in package.spec.nodes}
        if package.spec.has_network_faults:
            engine.ensure_image(package.tools_context)  # now, so that injecting one is quick
        network = engine.create_network(lab.short_id, lab.owner_id)
        Lab.objects.filter(pk=lab.pk).update(subnet=network.subnet)
        _step(lab, f"Created network {network.subnet}")
        runs = _node_runs(package, lab, images, network)
        Node.objects.bulk_create(
            Node(
                lab=lab,
                name=run.name,
                group=run.group,
                role=node.role,
                ip=run.ip,
                container=engine.container_name(lab.short_id, run.name),
            )
            for node, run in runs
        )
        started: dict[str, set[str]] = {}
        for node in package.spec.start_order():
            needed = set().union(*(started[group] for group in node.depends_on))
            if needed:
                _wait_healthy(engine, lab, needed, deadline)
            for spec_node, run in runs:
                if spec_node.name == node.name:
                    engine.start_node(run, network)
                    _step(lab, f"Started {run.name}")
            started[node.name] = set(node.instances)
        _wait_healthy(engine, lab, {run.name for _, run in runs}, deadline)
        _run_setup(engine, lab, package, deadline)
        ObjectiveResult.objects.bulk_create(
            (
                ObjectiveResult(lab=lab, key=objective.key, reason=_first_reason(objective))
                for objective in package.spec.objectives
            ),
            ignore_conflicts=True,  # a reset keeps its rows (and the progress in them)
        )
        _step(lab, "All nodes healthy")
    except IsolationMissing as exc:
        # The host's configuration, already explained in sandbox.isolation's own log line.
        logger.error("lab %s: not started: %s", lab.short_id, exc)
        _abandon(lab, engine, str(exc))
        return
    except Exception as exc:
        logger.exception("lab %s: provisioning failed", lab.short_id)
        reason = str(exc) if isinstance(exc, EngineError) else f"Provisioning failed: {exc}"
        _abandon(lab, engine, reason)
        return
    # Outside the try: once ready, nothing may tear the lab down as a "failed provision".
    now = timezone.now()
    expires_at = now + timedelta(minutes=package.spec.ttl_minutes)
    if not _move(
        lab.pk,
        [State.PROVISIONING],
        State.READY,
        ready_at=now,
        expires_at=expires_at,
        last_active_at=now,
        lease_expires_at=None,
        provision_requeues=0,
    ):
        # Stopped while we worked: its stop task (or the reaper) removes what we made.
        logger.info("lab %s: no longer provisioning, leaving cleanup to stop", lab.short_id)


def _abandon(lab: Lab, engine: Engine, reason: str) -> None:
    """Remove whatever a provisioning attempt made and fail the lab with the reason."""
    try:
        engine.remove_lab(lab.short_id)
    except EngineError:
        logger.exception("lab %s: cleanup failed; the reaper will retry", lab.short_id)
    _move(lab.pk, [State.PROVISIONING], State.FAILED, reason=reason[:2000], stopped_at=timezone.now())


INTERRUPTED = "Setting up the lab was interrupted; launch it again."
LOST_REQUEST = "The lab could not be started (its start request was lost); launch it again."


def abandon_interrupted_provision(lab_id: str, engine_factory: EngineFactory | None = None) -> bool:
    """A provisioning run died with its worker: what it made is half a lab, so fail the lab and
    remove it rather than leave it stuck in provisioning. Only once its lease ran out: a task
    the broker redelivers after a Redis restart finds its first run still at work (and
    renewing), and leaves it be. True if this call failed the lab."""
    now = timezone.now()
    # Failed first, then removed: a compare-and-set on the lapsed lease, so a run that is alive
    # after all and reaches ready at this moment either wins (and nothing is removed) or loses.
    lapsed = Q(lease_expires_at__lt=now) | Q(lease_expires_at=None)
    if not _move(lab_id, [State.PROVISIONING], State.FAILED, only_if=lapsed, reason=INTERRUPTED, stopped_at=now):
        return False
    short_id = Lab.objects.get(pk=lab_id).short_id
    try:
        removed = _engine(engine_factory).remove_lab(short_id)
        logger.info("lab %s: interrupted provision, removed %d engine objects", short_id, removed)
    except EngineError as exc:
        logger.warning("lab %s: interrupted provision not removed (%s); the orphan pass retries", short_id, exc)
    return True


def sweep_provisions(engine_factory: EngineFactory | None = None) -> dict[str, list[str]]:
    """Recover labs whose provisioning went missing (run by beat every few seconds).

    1. Provisioning with a lapsed lease: its worker died mid-way. Fail it and remove what it made.
    2. Requested for longer than LAB_REQUEST_GRACE: its task was lost (a Redis restart without
       persistence, a failed enqueue) or waits behind busy workers. Queue it again, once: a
       duplicate finds the lab claimed and does nothing.
    3. Still requested a grace period after that, while no provisioning run is at work (so the
       workers are free and would have taken a queued task): fail it with the reason.
    """
    now = timezone.now()
    report: dict[str, list[str]] = {"interrupted": [], "requeued": [], "lost": []}
    lapsed = Q(lease_expires_at__lt=now) | Q(lease_expires_at=None)
    for lab in Lab.objects.filter(lapsed, state=State.PROVISIONING):
        if abandon_interrupted_provision(str(lab.id), engine_factory):
            report["interrupted"].append(lab.short_id)
    waited = Q(updated_at__lt=now - timedelta(seconds=settings.LAB_REQUEST_GRACE))
    workers_busy = Lab.objects.filter(state=State.PROVISIONING, lease_expires_at__gte=now).exists()
    for lab in Lab.objects.filter(waited, state=State.REQUESTED):
        if lab.provision_requeues == 0:
            # The grace period starts again from the requeue.
            if Lab.objects.filter(waited, pk=lab.pk, state=State.REQUESTED, provision_requeues=0).update(
                provision_requeues=1, updated_at=now
            ):
                logger.info("lab %s: no provision run picked it up; queued again", lab.short_id)
                report["requeued"].append(lab.short_id)
                try:
                    _after_commit("provision_lab", str(lab.id))
                except Exception as exc:  # the broker is away: the next passes fail the lab
                    logger.warning("lab %s: could not queue it again: %s", lab.short_id, exc)
        elif not workers_busy and _move(
            lab.pk, [State.REQUESTED], State.FAILED, only_if=waited, reason=LOST_REQUEST, stopped_at=now
        ):
            report["lost"].append(lab.short_id)
    return report


def fail_lab(lab_id: str, reason: str) -> None:
    """Give up on a lab that never got going (e.g. no engine after the task's retries)."""
    _move(lab_id, [State.REQUESTED, State.PROVISIONING], State.FAILED, reason=reason[:2000], stopped_at=timezone.now())


# -- while ready ------------------------------------------------------------------------------


def inject_fault(lab_id: str, key: str, engine_factory: EngineFactory | None = None) -> None:
    """Do what a fault says to a ready lab, and put it on the timeline (done, or why not).

    An engine that is away raises (the task retries); an action the engine refuses (e.g. kill a
    node that is already down) is a fact for the learner, not an error to retry."""
    lab = Lab.objects.get(pk=lab_id)
    package = load_lab(lab.lab_slug)
    spec = package.spec
    fault = spec.fault(key)
    if lab.state != State.READY or fault is None:
        return
    engine = _engine(engine_factory)
    try:
        if fault.action in {"exec", "network"}:
            assert fault.command is not None  # the spec guarantees it
            if fault.action == "exec":
                result = engine.exec(lab.short_id, fault.node, fault.command, user=fault.user)
            else:
                # A sidecar in the node's network namespace holds NET_ADMIN; the node holds none.
                tools = engine.ensure_image(package.tools_context)  # built at provisioning: a lookup
                result = engine.run_sidecar(lab.short_id, fault.node, tools, fault.command, cap_add=["NET_ADMIN"])
            if result.exit_code != 0:
                raise EngineError(
                    result.output.strip().splitlines()[-1] if result.output.strip() else f"exit code {result.exit_code}"
                )
        else:
            engine.act_on_node(lab.short_id, fault.node, fault.action)
    except EngineUnavailable:
        raise
    except EngineError as exc:
        timeline.record(lab.pk, LabEvent.Kind.FAULT, f"Fault {fault.title} failed: {exc}")
        return
    if key == spec.break_:
        Lab.objects.filter(pk=lab.pk).update(broken_at=timezone.now())
    timeline.record(lab.pk, LabEvent.Kind.FAULT, f"Fault: {fault.title}")


def restart_node(lab_id: str, node: str, engine_factory: EngineFactory | None = None) -> None:
    lab = Lab.objects.get(pk=lab_id)
    if lab.state != State.READY:
        return
    try:
        _engine(engine_factory).act_on_node(lab.short_id, node, "restart")
    except EngineUnavailable:
        raise
    except EngineError as exc:
        timeline.record(lab.pk, LabEvent.Kind.CONTROL, f"Restart of {node} failed: {exc}")
        return
    timeline.record(lab.pk, LabEvent.Kind.CONTROL, f"Restarted {node}")


def reset_lab(lab_id: str, engine_factory: EngineFactory | None = None) -> None:
    """Put a ready lab back to its start: fresh containers from the spec, objectives pending
    again (progress already earned stays), a new time-to-live."""
    ran = Lab.objects.filter(pk=lab_id, state=State.READY).values_list("ready_at", flat=True).first()
    # The time run so far is kept (lab hours are a quota), and ready_at is set anew at ready.
    ran_seconds = (timezone.now() - ran).total_seconds() if ran else 0.0
    earlier = F("earlier_run_seconds") + ran_seconds
    if not _move(lab_id, [State.READY], State.REQUESTED, ready_at=None, earlier_run_seconds=earlier):
        return
    lab = Lab.objects.get(pk=lab_id)
    timeline.record(lab.pk, LabEvent.Kind.CONTROL, "Reset: the lab starts again from scratch")
    try:
        _engine(engine_factory).remove_lab(lab.short_id)
    except EngineError as exc:
        _move(lab.pk, [State.REQUESTED], State.FAILED, reason=f"Reset failed: {exc}", stopped_at=timezone.now())
        return
    Node.objects.filter(lab=lab).delete()
    try:
        objectives = load_lab(lab.lab_slug).spec.objectives
    except LabSpecError:
        objectives = []  # provisioning will fail the lab with the reason
    for objective in objectives:
        ObjectiveResult.objects.filter(lab=lab, key=objective.key).update(
            status=ObjectiveResult.Status.PENDING, reason=_first_reason(objective)
        )
    Lab.objects.filter(pk=lab.pk).update(steps=[], broken_at=None, subnet="")
    provision_lab(lab_id, engine_factory)


def skip_lab(lab_id: str, engine_factory: EngineFactory | None = None) -> None:
    lab = Lab.objects.get(pk=lab_id)
    if lab.state != State.READY:
        return
    result = run_solution(lab, engine_factory)
    if result.exit_code == 0:
        timeline.record(lab.pk, LabEvent.Kind.CONTROL, "The solution ran")
    else:
        timeline.record(lab.pk, LabEvent.Kind.CONTROL, f"The solution failed (exit code {result.exit_code})")


def run_solution(lab: Lab, engine_factory: EngineFactory | None = None) -> ExecResult:
    """Run the lab's solution script inside its node."""
    if lab.state != State.READY:
        raise LabError("The lab is not running.")
    package = load_lab(lab.lab_slug)
    solution = package.spec.solution
    script = package.read_script(solution.script)
    return _engine(engine_factory).exec(lab.short_id, solution.node, ["sh", "-c", script], user=solution.user)


def mark_active(lab_id: Any) -> bool:
    """The learner is at work (an action, a keystroke, "still here"): push the idle stop back.
    Writes at most every ACTIVE_EVERY, so typing in a terminal does not write per key."""
    now = timezone.now()
    quiet = Q(last_active_at__lt=now - ACTIVE_EVERY) | Q(last_active_at=None)
    if not Lab.objects.filter(quiet, pk=lab_id, state=State.READY).update(last_active_at=now):
        return False
    publish(str(lab_id), lab_payload(Lab.objects.get(pk=lab_id)))
    return True


def extend_lab(lab: Lab, minutes: int) -> Lab:
    """Push the lab's expiry back, up to the spec's maximum lifetime."""
    if lab.state != State.READY or lab.expires_at is None or lab.ready_at is None:
        raise LabError("Only a running lab can be extended.")
    if not 1 <= minutes <= 240:
        raise LabError("Extend by 1 to 240 minutes.")
    spec = load_lab(lab.lab_slug).spec
    limit = lab.ready_at + timedelta(minutes=spec.max_ttl_minutes)
    wanted = max(lab.expires_at, timezone.now()) + timedelta(minutes=minutes)
    new_expiry = min(wanted, limit)
    if new_expiry <= lab.expires_at:
        raise LabError(f"This lab cannot run longer than {spec.max_ttl_minutes} minutes.")
    Lab.objects.filter(pk=lab.pk, state=State.READY).update(expires_at=new_expiry)
    lab.refresh_from_db()
    publish(str(lab.id), lab_payload(lab))
    return lab


# -- stop, reap, reconcile --------------------------------------------------------------------


def stop_lab(lab_id: str, reason: str = "", engine_factory: EngineFactory | None = None) -> None:
    """Remove everything of a lab from the engine and mark it stopped. Engine errors propagate,
    leaving the lab in stopping for a retry (the task's, or the reaper's)."""
    _move(lab_id, [*Lab.LIVE_STATES], State.STOPPING, reason=reason)
    lab = Lab.objects.get(pk=lab_id)
    if lab.state != State.STOPPING:
        return
    removed = _engine(engine_factory).remove_lab(lab.short_id)
    logger.info("lab %s: removed %d engine objects", lab.short_id, removed)
    _move(lab.pk, [State.STOPPING], State.STOPPED, stopped_at=timezone.now())


def remove_orphans(engine: Engine) -> list[str]:
    """Remove engine objects whose lab has no row that could still own them."""
    # The engine first, then the rows: a lab requested in between has its row by the time we read
    # them, so it is never mistaken for an orphan.
    present = engine.lab_ids()
    owned = {lab.short_id for lab in Lab.objects.filter(state__in=[*Lab.LIVE_STATES, State.STOPPING]).only("id")}
    orphans = sorted(present - owned)
    for short_id in orphans:
        removed = engine.remove_lab(short_id)
        logger.info("lab %s: orphan, removed %d engine objects", short_id, removed)
    return orphans


def _reap_one(lab: Lab, reason: str, engine_factory: EngineFactory | None) -> bool:
    """Stop one lab for the reaper; an engine error on it is logged and must not stop the pass."""
    try:
        stop_lab(str(lab.id), reason=reason, engine_factory=engine_factory)
    except EngineError:
        logger.exception("lab %s: reaper could not stop it; next pass retries", lab.short_id)
        return False
    return True


def reap_labs(engine_factory: EngineFactory | None = None) -> dict[str, list[str]]:
    """Stop expired labs, unstick stuck ones and remove orphans (run by beat)."""
    now = timezone.now()
    report: dict[str, list[str]] = {"expired": [], "idle": [], "stuck": [], "orphans": []}
    for lab in Lab.objects.filter(state=State.READY, expires_at__lt=now):
        if _reap_one(lab, "The lab reached the end of its time.", engine_factory):
            report["expired"].append(lab.short_id)
    for lab in Lab.objects.filter(state=State.READY, last_active_at__isnull=False):
        deadline = idle_deadline(lab)
        if deadline is not None and deadline < now:
            reason = f"Stopped after {lab_idle_minutes(lab)} minutes without activity."
            if _reap_one(lab, reason, engine_factory):
                report["idle"].append(lab.short_id)
    stuck_before = now - timedelta(seconds=2 * settings.LAB_PROVISION_TIMEOUT)
    for lab in Lab.objects.filter(state__in=[State.REQUESTED, State.PROVISIONING], updated_at__lt=stuck_before):
        if _move(
            lab.pk,
            [State.REQUESTED, State.PROVISIONING],
            State.FAILED,
            reason="Provisioning did not finish in time.",
            stopped_at=now,
        ):
            report["stuck"].append(lab.short_id)
    for lab in Lab.objects.filter(state=State.STOPPING, updated_at__lt=now - STUCK_STOPPING):
        if _reap_one(lab, lab.reason, engine_factory):
            report["stuck"].append(lab.short_id)
    engine = _engine(engine_factory)
    report["orphans"] = remove_orphans(engine)
    return report


REMOVED_OUTSIDE = "The lab's containers were removed outside Stacklab; launch the lab again."
CHECKED = "checked with the engine"


def set_node_state(
    lab_id: Any, name: str, state: str, note: str = "", *, expected: str | None = None, on_timeline: bool = True
) -> bool:
    """Move a node row to `state` if it is elsewhere: publish it, and put a node that stops
    serving (or serves again) on the timeline, with `note` saying how it was found. True if the
    row moved. With `expected`, move it only from that state (compare-and-set: a reading older
    than the row must not undo what an event wrote meanwhile)."""
    rows = Node.objects.filter(lab_id=lab_id, name=name)
    previous = rows.values_list("state", flat=True).first() if expected is None else expected
    if previous is None or previous == state:
        return False
    moving = rows.exclude(state=state) if expected is None else rows.filter(state=expected)
    if not moving.update(state=state, updated_at=timezone.now()):
        return False
    node = rows.get()
    publish(str(lab_id), node_payload(node))
    if not on_timeline:
        return True
    # The timeline keeps what a learner cares about: a node stopping to serve, and coming back.
    if state in NOT_SERVING or (state == Node.State.HEALTHY and previous in NOT_SERVING):
        timeline.record(lab_id, LabEvent.Kind.NODE, f"{name} is {state}" + (f" ({note})" if note else ""))
    return True


@dataclass(frozen=True)
class NodeReading:
    """A lab's node rows (name -> state) and, read after them, the engine's view of its nodes."""

    rows: dict[str, str]
    statuses: list[NodeStatus]


def read_nodes(lab: Lab, engine: Engine) -> NodeReading:
    # Rows first: a row an event moves while the engine answers then differs from the state read,
    # and sync_nodes' compare-and-set leaves it to the event, the newer fact.
    rows = dict(lab.nodes.values_list("name", "state"))
    return NodeReading(rows=rows, statuses=engine.node_statuses(lab.short_id))


def sync_nodes(lab: Lab, engine: Engine, reading: NodeReading | None = None) -> int:
    """Make Node rows match the engine (events may have been missed), on the timeline like an
    event would; returns how many moved. `reading`: the lab's, if the caller already has it."""
    reading = read_nodes(lab, engine) if reading is None else reading
    found = {status.name: status for status in reading.statuses}
    moved = 0
    for name, was in reading.rows.items():
        status = found.get(name)
        if status is None and was == Node.State.PENDING and lab.state == State.PROVISIONING:
            continue  # not started yet: nothing was missed
        state = state_from_status(status) if status else Node.State.DOWN
        if set_node_state(lab.pk, name, state, CHECKED, expected=was):
            logger.info("lab %s: node %s %s (%s)", lab.short_id, name, state, CHECKED)
            moved += 1
    return moved


def end_removed_lab(lab: Lab, engine: Engine, statuses: list[NodeStatus] | None = None) -> bool:
    """A ready lab with none of its node containers left cannot come back: fail it with the
    reason, and remove what is left of it (its network, a fault's sidecar). True if this call
    ended it. `statuses`: the lab's, if the caller already has them."""
    # Read after the row said ready: a ready lab's nodes were all started before the move to
    # ready, and stop and reset leave ready before they remove anything, so none here means
    # they were removed behind the platform's back.
    if statuses is None:
        statuses = engine.node_statuses(lab.short_id)
    if statuses or not _move(lab.pk, [State.READY], State.FAILED, stopped_at=timezone.now(), reason=REMOVED_OUTSIDE):
        return False
    # The lab's line on the timeline says why; one line per node would only repeat it.
    for name in Node.objects.filter(lab=lab).exclude(state=Node.State.DOWN).values_list("name", flat=True):
        set_node_state(lab.pk, name, Node.State.DOWN, on_timeline=False)
    try:
        removed = engine.remove_lab(lab.short_id)
        logger.info("lab %s: removed %d leftover engine objects", lab.short_id, removed)
    except EngineError as exc:
        logger.warning("lab %s: leftovers not removed (%s); the reaper's orphan pass retries", lab.short_id, exc)
    return True


def reconcile_lab(lab: Lab, engine: Engine) -> str:
    """Check one ready lab against the engine: with no node container left it ends failed
    ("vanished"), else its node rows follow the engine ("resynced" if any moved; "" if none)."""
    reading = read_nodes(lab, engine)
    if not reading.statuses:
        return "vanished" if end_removed_lab(lab, engine, reading.statuses) else ""
    return "resynced" if sync_nodes(lab, engine, reading) else ""


def reconcile_labs(engine_factory: EngineFactory | None = None) -> dict[str, list[str]]:
    """Make rows and engine agree, both ways: a ready lab with no node left on the engine fails
    (even if its network remains), node rows follow the engine, and engine objects without a
    live row are removed."""
    engine = _engine(engine_factory)
    report: dict[str, list[str]] = {"vanished": [], "resynced": [], "orphans": []}
    for lab in Lab.objects.filter(state=State.READY):
        outcome = reconcile_lab(lab, engine)
        if outcome:
            report[outcome].append(lab.short_id)
    report["orphans"] = remove_orphans(engine)
    return report
