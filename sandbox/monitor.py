"""The live monitor: follows Docker events and each ready lab's traffic figures, keeps node rows
and objective results current, and pushes every change to the lab's page.

It is one long-running process (`manage.py watch_labs`), not a Celery task per tick:
- an events thread turns engine events into node states (the single path for node changes);
- one follower thread per ready lab reads its traffic node's 1-per-second JSON report, publishes
  it as a `metrics` message and judges the lab's objectives on it;
- the main loop starts and ends followers as labs become ready or go away.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from django.db import close_old_connections, connection

from . import timeline
from .checks import Outcome, run_check
from .engine import Engine, EngineError, NodeEvent
from .lifecycle import connect_engine, end_removed_lab, reconcile_labs, set_node_state, sync_nodes
from .live import publish, remember_metrics
from .models import Lab, LabEvent, Node, ObjectiveResult
from .nodestates import ASK_ENGINE, NODE_EVENTS, NOT_SERVING, state_from_event, state_from_status
from .objectives import Sample, Verdict, judge
from .results import record_result
from .specs import (
    CommandCheck,
    HttpCheck,
    LabPackage,
    LabSpec,
    LabSpecError,
    MetricCheck,
    ObjectiveSpec,
    ProbeCheck,
    load_lab,
)

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = 2.0
SAMPLE_HISTORY = 10  # seconds kept beyond the longest objective window


@dataclass
class LabWatch:
    """What the monitor knows about one ready lab."""

    lab_id: str
    short_id: str
    package: LabPackage
    node_states: dict[str, str]
    ready_at: datetime | None = None  # a reset makes a new ready lab under the same id
    samples: deque[Sample] = field(default_factory=deque)
    verdicts: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Per probe check: passing runs in a row (positive) or failing runs in a row (negative).
    streaks: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    checker: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def spec(self) -> LabSpec:
        return self.package.spec

    @property
    def probes(self) -> list[ObjectiveSpec]:
        return [objective for objective in self.spec.objectives if objective.is_probe]

    @property
    def groups(self) -> dict[str, list[str]]:
        return {node.name: node.instances for node in self.spec.nodes}

    def not_serving(self) -> frozenset[str]:
        with self.lock:
            return frozenset(name for name, state in self.node_states.items() if state in NOT_SERVING)


class Monitor:
    def __init__(
        self,
        engine_factory: Callable[[], Engine] = connect_engine,
        poll_seconds: float = 1.0,
        only_labs: set[str] | None = None,
    ) -> None:
        """`only_labs` narrows the monitor to those lab ids and skips the reconcile at start
        (`lab test` follows its own lab beside a running watcher)."""
        self.engine_factory = engine_factory
        self.poll_seconds = poll_seconds
        self.only_labs = only_labs
        self.stopping = threading.Event()
        self.watches: dict[str, LabWatch] = {}
        self._short_ids: dict[str, str] = {}  # short id -> lab id, for events
        self._events_stream: Any = None
        self._events_thread: threading.Thread | None = None

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Run until `stop()`: reconcile once, then follow events and labs."""
        if self.only_labs is None:
            try:
                report = reconcile_labs(self.engine_factory)
                logger.info("monitor: reconciled at start %s", report)
            except EngineError:
                logger.exception("monitor: reconcile at start failed; continuing")
        self._events_thread = threading.Thread(target=self._follow_events, name="events", daemon=True)
        self._events_thread.start()
        while not self.stopping.is_set():
            try:
                self.sync_watches()
            except Exception:
                logger.exception("monitor: syncing labs failed")
            finally:
                close_old_connections()
            self.stopping.wait(self.poll_seconds)
        self._shutdown()
        connection.close()

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="monitor", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.stopping.set()
        if self._events_stream is not None:
            self._events_stream.close()

    def _shutdown(self) -> None:
        for watch in list(self.watches.values()):
            watch.stop.set()
        if self._events_stream is not None:
            self._events_stream.close()
        for watch in list(self.watches.values()):
            for thread in (watch.thread, watch.checker):
                if thread is not None:
                    thread.join(timeout=5)
        if self._events_thread is not None:
            self._events_thread.join(timeout=5)
        logger.info("monitor: stopped")

    def sync_watches(self) -> None:
        """Follow every ready lab, and only those."""
        labs = Lab.objects.filter(state=Lab.State.READY)
        if self.only_labs is not None:
            labs = labs.filter(pk__in=self.only_labs)
        ready = {str(lab.id): lab for lab in labs}
        for lab_id in list(self.watches):
            # Gone, or reset between two polls (ready again, with a new ready_at): the old watch's
            # samples, verdicts and streaks belong to containers that no longer exist.
            if lab_id not in ready or ready[lab_id].ready_at != self.watches[lab_id].ready_at:
                self.watches.pop(lab_id).stop.set()
                logger.info("lab %s: monitor stops following", lab_id[:12])
        for lab_id, lab in ready.items():
            watch = self.watches.get(lab_id)
            if watch is None:
                try:
                    package = load_lab(lab.lab_slug)
                except LabSpecError:
                    logger.exception("lab %s: spec unreadable, not followed", lab.short_id)
                    continue
                states = {node.name: node.state for node in lab.nodes.all()}
                watch = LabWatch(
                    lab_id=lab_id, short_id=lab.short_id, package=package, node_states=states, ready_at=lab.ready_at
                )
                watch.verdicts = {result.key: (result.status, result.reason) for result in lab.objective_results.all()}
                self.watches[lab_id] = watch
                logger.info("lab %s: monitor follows", lab.short_id)
            else:
                # Node rows are the truth (events, resyncs and reconciles all write them); the
                # judge's copy follows them every poll, so a missed event cannot mislead it.
                states = dict(lab.nodes.values_list("name", "state"))
                with watch.lock:
                    watch.node_states.update(states)
            if watch.thread is None or not watch.thread.is_alive():
                watch.thread = threading.Thread(
                    target=self._follow_traffic, args=(watch,), name=f"traffic-{lab.short_id}", daemon=True
                )
                watch.thread.start()
            if watch.probes and (watch.checker is None or not watch.checker.is_alive()):
                watch.checker = threading.Thread(
                    target=self._run_checks, args=(watch,), name=f"checks-{lab.short_id}", daemon=True
                )
                watch.checker.start()

    # -- node events ------------------------------------------------------------------------

    def _follow_events(self) -> None:
        """Turn engine events into node states; reconnect and resync when the stream ends."""
        since: float | None = None
        # The engine replays from the start of `since`'s whole second: events up to the last one
        # handled were handled, except those sharing its time (several can), told apart by key.
        handled_at: float | None = None
        handled: set[tuple[str, str, str]] = set()
        while not self.stopping.is_set():
            try:
                engine = self.engine_factory()
                # Only the events that move a node: health checks and probes are execs, and their
                # exec_* events (several a second per lab) would queue ahead of a kill.
                self._events_stream = engine.events(since=since, actions=NODE_EVENTS)
                if self.stopping.is_set():
                    # stop() came while we connected and closed the previous stream, not this one.
                    self._events_stream.close()
                    break
                if since is not None:
                    self._resync(engine)
                for event in self._events_stream:
                    since = event.time
                    key = (event.lab, event.name, event.action)
                    if handled_at is not None and (
                        event.time < handled_at or (event.time == handled_at and key in handled)
                    ):
                        continue  # replayed after a reconnect
                    # An event whose handling fails is not marked handled: the replay retries it.
                    self.handle_event(event, engine)
                    if event.time != handled_at:
                        handled_at, handled = event.time, set()
                    handled.add(key)
            except EngineError:
                logger.exception("monitor: lost the engine's events")
            except Exception:
                logger.exception("monitor: event handling failed")
            finally:
                if not self.stopping.is_set():
                    close_old_connections()
            since = since or time.time()
            self.stopping.wait(RECONNECT_SECONDS)
        connection.close()

    def _resync(self, engine: Engine) -> None:
        for lab in Lab.objects.filter(state__in=[Lab.State.PROVISIONING, Lab.State.READY]):
            sync_nodes(lab, engine)

    def _lab_id(self, short_id: str) -> str | None:
        if short_id not in self._short_ids:
            for lab in Lab.objects.filter(state__in=Lab.LIVE_STATES).only("id"):
                self._short_ids[lab.short_id] = str(lab.id)
        return self._short_ids.get(short_id)

    def handle_event(self, event: NodeEvent, engine: Engine | None = None) -> None:
        lab_id = self._lab_id(event.lab)
        if lab_id is None or (self.only_labs is not None and lab_id not in self.only_labs):
            return
        state = state_from_event(event.action)
        if event.action in ASK_ENGINE and engine is not None:
            statuses = [s for s in engine.node_statuses(event.lab) if s.name == event.name]
            state = state_from_status(statuses[0]) if statuses else state
        if event.action == "oom":
            # Not a node state: the node may serve on (or a `die` follows); the engine says which.
            # Recorded once the engine has answered: if it cannot, the event is handled again.
            logger.info("lab %s: node %s: a process was OOM-killed", event.lab, event.name)
            timeline.record(lab_id, LabEvent.Kind.NODE, f"A process in {event.name} ran out of memory and was killed")
        if state is not None:
            watch = self.watches.get(lab_id)
            if watch is not None:
                with watch.lock:
                    watch.node_states[event.name] = state
            if set_node_state(lab_id, event.name, state):
                logger.info("lab %s: node %s %s (%s)", event.lab, event.name, state, event.action)
        if event.action == "destroy" and engine is not None:
            # The platform leaves `ready` before it removes a lab's containers, so this one went
            # behind its back; once the last is gone the lab cannot come back. Only that is
            # asked here: the engine's container list lags its `die` events by a moment, so a
            # full resync now could set nodes that just died back to healthy.
            lab = Lab.objects.filter(pk=lab_id, state=Lab.State.READY).first()
            if lab is not None and end_removed_lab(lab, engine):
                logger.info("lab %s: every node was removed outside the platform; lab failed", event.lab)

    # -- traffic and objectives -------------------------------------------------------------

    def _follow_traffic(self, watch: LabWatch) -> None:
        engine = self.engine_factory()
        try:
            for line in engine.follow_output(watch.short_id, watch.spec.traffic.node):
                if watch.stop.is_set() or self.stopping.is_set():
                    break
                if line.startswith("{"):
                    self.handle_report(watch, line, engine)
        except EngineError as exc:
            logger.info("lab %s: traffic figures ended (%s)", watch.short_id, exc)
        except Exception:
            logger.exception("lab %s: traffic follower failed", watch.short_id)
        finally:
            connection.close()
        # The main loop restarts a follower that ended while its lab is still ready.
        watch.stop.wait(RECONNECT_SECONDS)

    def handle_report(self, watch: LabWatch, line: str, engine: Engine | None = None) -> None:
        """One traffic report: publish it, then judge the objectives on the updated window."""
        try:
            report = json.loads(line)
            sample = Sample.from_report(report, watch.not_serving())
        except (ValueError, KeyError, TypeError):
            logger.warning("lab %s: unreadable traffic report %r", watch.short_id, line[:200])
            return
        figures = {
            "type": "metrics",
            "t": sample.t,
            "rps": report.get("rps", 0.0),
            "p50_ms": report.get("p50_ms"),
            "p95_ms": sample.p95_ms,
            "error_rate": report.get("error_rate", 0.0),
            "completed": sample.completed,
            "errors": sample.errors,
            "replicas": report.get("replicas", {}),
        }
        publish(watch.lab_id, figures)
        remember_metrics(watch.lab_id, figures)
        watch.samples.append(sample)
        metric_objectives = [o for o in watch.spec.objectives if isinstance(o.check, MetricCheck)]
        horizon = max((o.check.window for o in metric_objectives), default=0) + SAMPLE_HISTORY
        while watch.samples and watch.samples[0].t < sample.t - horizon:
            watch.samples.popleft()
        for objective in metric_objectives:
            assert isinstance(objective.check, MetricCheck)
            previous = watch.verdicts.get(objective.key, (ObjectiveResult.Status.PENDING, ""))
            verdict = judge(objective.check, list(watch.samples), watch.groups, previous[0])
            if (
                verdict is not None
                and verdict.status == ObjectiveResult.Status.MET
                and previous[0] != ObjectiveResult.Status.MET
                and objective.check.while_down is not None
            ):
                verdict = self._confirm_while_down(watch, objective.check, previous[0], engine)
            if verdict is None or (verdict.status, verdict.reason) == previous:
                continue
            watch.verdicts[objective.key] = (verdict.status, verdict.reason)
            record_result(watch.lab_id, objective, verdict.status, verdict.reason, verdict.status != previous[0])

    def _confirm_while_down(
        self, watch: LabWatch, check: MetricCheck, previous: str, engine: Engine | None
    ) -> Verdict | None:
        """Judge again, on node states the engine confirms, an objective about to be met "while
        a node is down" (so once per flip, not every second).

        1. Ask the engine for the lab's nodes (one call) and correct the rows that were wrong
           (node messages and timeline lines, as for any change found on the engine).
        2. A node the latest second counted as not serving that the engine has serving was
           never known to be down: take it out of every sample kept (since when the row was
           wrong is unknown). The engine cannot speak of the past, so nodes down earlier and
           back now stay as the events had them.
        3. Judge again. If the engine cannot be asked, nothing is met now (None: the previous
           verdict stands), and the next report asks again.
        """
        try:
            lab = Lab.objects.get(pk=watch.lab_id)
            sync_nodes(lab, engine or self.engine_factory())
        except EngineError as exc:
            logger.warning("lab %s: node states unconfirmed, objective not judged met now (%s)", watch.short_id, exc)
            return None
        states = dict(Node.objects.filter(lab_id=watch.lab_id).values_list("name", "state"))
        with watch.lock:
            watch.node_states.update(states)
        unconfirmed = {name for name in watch.samples[-1].not_serving if states.get(name) not in NOT_SERVING}
        if unconfirmed:
            logger.info(
                "lab %s: engine has %s serving; not judged as down", watch.short_id, ", ".join(sorted(unconfirmed))
            )
            samples = [replace(sample, not_serving=sample.not_serving - unconfirmed) for sample in watch.samples]
            watch.samples = deque(samples)
        return judge(check, list(watch.samples), watch.groups, previous)

    # -- http and command checks ------------------------------------------------------------

    def _run_checks(self, watch: LabWatch) -> None:
        """Run the lab's http and command checks in their nodes, each every `interval` seconds."""
        due: dict[str, float] = {}
        try:
            engine = self.engine_factory()
            while not (watch.stop.is_set() or self.stopping.is_set()):
                next_run = self.run_due_checks(watch, engine, due)
                watch.stop.wait(max(0.05, next_run - time.monotonic()))
        except Exception:
            logger.exception("lab %s: checks failed", watch.short_id)
            watch.stop.wait(RECONNECT_SECONDS)  # the main loop restarts a checker that ended
        finally:
            connection.close()

    def run_due_checks(self, watch: LabWatch, engine: Engine, due: dict[str, float]) -> float:
        """Run the checks whose time has come (`due`: key -> next run, monotonic; absent = now),
        one at a time: a lab has few, and a slow one only delays the next. Returns when the next
        one is due."""
        for objective in watch.probes:
            check = objective.check
            assert isinstance(check, HttpCheck | CommandCheck)
            if time.monotonic() < due.get(objective.key, 0.0):
                continue
            due[objective.key] = time.monotonic() + check.interval
            outcome = run_check(engine, watch.short_id, check, watch.package)
            if watch.stop.is_set():
                break  # the lab went away while the check ran: its result means nothing
            self.handle_check(watch, objective, outcome)
        return min(due.values(), default=time.monotonic() + 1)

    def handle_check(self, watch: LabWatch, objective: ObjectiveSpec, outcome: Outcome) -> None:
        """One run of a check: met after `passes` passing runs in a row, failing after `fails`
        failing runs in a row. In between, a failing run keeps the status (and says what it saw);
        a passing run keeps `met`, and turns anything else `pending` until the passes are in."""
        check = objective.check
        assert isinstance(check, ProbeCheck)
        previous = watch.verdicts.get(objective.key, (ObjectiveResult.Status.PENDING, ""))
        streak = watch.streaks.get(objective.key, 0)
        # Positive: passing runs in a row; negative: failing runs in a row.
        streak = max(streak, 0) + 1 if outcome.passed else min(streak, 0) - 1
        watch.streaks[objective.key] = streak
        if streak >= check.passes:
            status, reason = ObjectiveResult.Status.MET, outcome.reason
        elif -streak >= check.fails:
            status, reason = ObjectiveResult.Status.FAILING, outcome.reason
        elif outcome.passed:
            status = ObjectiveResult.Status.PENDING if previous[0] != ObjectiveResult.Status.MET else previous[0]
            reason = f"{outcome.reason} (passed {streak} of {check.passes} runs)"
        else:
            status = previous[0]
            reason = f"{outcome.reason} (failed {-streak} of {check.fails} runs)"
        if (status, reason) == previous:
            return
        watch.verdicts[objective.key] = (status, reason)
        record_result(watch.lab_id, objective, status, reason, status != previous[0])
