"""Real `celery -A stacklab` workers against a private redis-server that the test restarts or
whose worker it kills: the worker survives a Redis restart on every URL form the platform takes,
and a lab whose provisioning died (worker SIGKILL) or whose task was lost (Redis restart without
persistence) is over well within a minute. Never the machine's Redis: each test starts its own.

The figures (seconds) are printed; run with `-s` to read them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection

from sandbox import lifecycle
from sandbox.engine import Engine
from sandbox.models import Lab
from stacklab.settings import celery_broker_url
from tests.conftest import unavailable

pytestmark = [pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).parent / "celery"
LAB = "scaling-load-balancer"
LESSON = "load-balancing"
# The bound the platform promises for a lost provision (see lifecycle.sweep_provisions).
RECOVERY_BOUND = 60.0


def wait_for(check: Callable[[], object], timeout: float, what: str, alive: Iterable[subprocess.Popen] = ()) -> object:
    """Poll `check` until it is true; fail at the deadline, or at once if a process in `alive` exits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        for process in alive:
            command = " ".join(str(arg) for arg in process.args[:4])
            assert process.poll() is None, f"`{command}` exited ({process.returncode}) before {what}"
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s (last: {last!r})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own, on a Unix socket (the newcomer's `unix://` default) and,
    for the `redis://` form, on a free loopback port. No persistence, like scripts/with-redis.sh:
    a restart loses what it held."""

    def __init__(self, folder: Path, form: str) -> None:
        self.folder = folder
        self.socket = folder / "redis.sock"
        self.port = free_port() if form == "tcp" else 0
        self.url = f"redis://127.0.0.1:{self.port}/0" if form == "tcp" else f"unix://{self.socket}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--unixsocket", str(self.socket)]
        command += ["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        with open(self.folder / "redis.log", "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1)
        wait_for(lambda: self._answers(client), 10, "the private Redis answering", [self.process])

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def queued(self) -> int:
        return int(redis.Redis(unix_socket_path=str(self.socket)).llen("celery"))


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Short, so the Unix socket path stays within its 107 characters.
    folder = Path(tempfile.mkdtemp(prefix="stacklab-broker-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def private_redis(run_dir: Path, form: str) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server (to run a private Redis)")
    server = PrivateRedis(run_dir, form)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def database_url() -> str:
    """The test database, for worker processes to share with the test."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{host}/{db['NAME']}"


@contextmanager
def celery_process(run_dir: Path, server: PrivateRedis, role: str, *args: str) -> Iterator[subprocess.Popen]:
    """`celery -A stacklab <role>` as `make run` starts it, with the private Redis; killed (with
    its pool) when the block ends."""
    env = {k: v for k, v in os.environ.items() if k not in {"CELERY_BROKER_URL", "REDIS_URL", "DATABASE_URL"}}
    env |= {
        "REDIS_URL": server.url,
        "STACKLAB_RUN_DIR": str(run_dir),
        "STACKLAB_INSTANCE": settings.STACKLAB_INSTANCE,  # the test run's engine label
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "stacklab.settings",
        "PYTHONPATH": str(ROOT),
    }
    log = open(run_dir / f"{role}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - closed below
    command = [str(CELERY), "-A", "stacklab", role, "--loglevel=INFO", *args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process.log_path = Path(log.name)  # type: ignore[attr-defined]
    try:
        if role == "worker":
            wait_for(lambda: "ready." in Path(log.name).read_text(), 60, "the worker ready", [process])
        yield process
    finally:
        kill_group(process)
        log.close()


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill the process and its pool (it leads a session of its own)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


@contextmanager
def sender(server: PrivateRedis) -> Iterator[Celery]:
    """Sends tasks to the private Redis as the web would (this test process's own app is on `memory://`)."""
    # Not the current app: shared tasks queued later in this process stay on the test's own broker.
    app = Celery("sender", broker=celery_broker_url(server.url), set_as_current=False)
    try:
        yield app
    finally:
        app.close()


def worker_log(process: subprocess.Popen) -> str:
    return process.log_path.read_text()  # type: ignore[attr-defined]


# -- the worker survives a broker restart ------------------------------------------------------


@pytest.mark.parametrize("form", ["tcp", "unix"])
def test_the_worker_survives_a_redis_restart_while_a_task_runs(form: str, run_dir: Path) -> None:
    marks = run_dir / "marks"
    marks.mkdir()
    with private_redis(run_dir, form) as server, sender(server) as app:
        # Two slots, as `make run` starts it: the free one waits in BRPOP when Redis goes away.
        with celery_process(run_dir, server, "worker", "--concurrency=2", "-I", "tests.sandbox.probe_tasks") as worker:
            app.send_task("tests.sandbox.probe_tasks.hold", args=[str(marks), "first"])
            wait_for((marks / "first.started").exists, 30, "the first task running", [worker])
            server.restart()
            restarted = time.monotonic()
            (marks / "release").touch()
            app.send_task("tests.sandbox.probe_tasks.hold", args=[str(marks), "second"])
            wait_for((marks / "second.done").exists, 60, "a task sent after the restart done", [worker])
            print(f"\n[{form}] Redis restart -> worker ran a new task: {time.monotonic() - restarted:.1f}s")
            assert worker.poll() is None
            assert "Unrecoverable error" not in worker_log(worker)


# -- provisioning that went missing ------------------------------------------------------------


def engine_has(engine: Engine, lab: Lab) -> bool:
    return lab.short_id in engine.lab_ids()


def state_of(lab: Lab) -> str:
    return Lab.objects.values_list("state", flat=True).get(pk=lab.pk)


@pytest.fixture
def lab(learner: User, engine: Engine) -> Iterator[Lab]:
    """A requested lab row (as a launch writes it), removed from the engine afterwards."""
    row = Lab.objects.create(owner=learner, lab_slug=LAB, lesson_slug=LESSON)
    yield row
    engine.remove_lab(row.short_id)


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_a_lab_whose_worker_is_killed_mid_provision_is_failed_and_removed_within_a_minute(
    lab: Lab, engine: Engine, run_dir: Path
) -> None:
    with private_redis(run_dir, "unix") as server, sender(server) as app:
        with celery_process(run_dir, server, "beat", "--schedule", str(run_dir / "beat-schedule")) as beat:
            with celery_process(run_dir, server, "worker", "--concurrency=2") as first:
                app.send_task("sandbox.tasks.provision_lab", args=[str(lab.id)])
                wait_for(
                    lambda: state_of(lab) == Lab.State.PROVISIONING and engine.node_statuses(lab.short_id),
                    120,
                    "the lab provisioning with containers running",
                    [first],
                )
                kill_group(first)
                killed = time.monotonic()
            # The supervisor starts a new worker; the unacked provision task stays with the broker
            # (visibility timeout), so it is the lease and the sweep that must end the lab.
            with celery_process(run_dir, server, "worker", "--concurrency=2") as second:
                wait_for(
                    lambda: state_of(lab) == Lab.State.FAILED and not engine_has(engine, lab),
                    RECOVERY_BOUND,
                    "the lab failed and its containers removed",
                    [beat, second],
                )
                recovered = time.monotonic() - killed
                print(f"\nworker SIGKILL mid-provision -> lab failed, containers gone: {recovered:.1f}s")
    lab.refresh_from_db()
    assert lab.reason == lifecycle.INTERRUPTED


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_a_redis_restart_mid_provision_does_not_leave_the_lab_provisioning(
    lab: Lab, engine: Engine, run_dir: Path
) -> None:
    with private_redis(run_dir, "unix") as server, sender(server) as app:
        with (
            celery_process(run_dir, server, "beat", "--schedule", str(run_dir / "beat-schedule")) as beat,
            celery_process(run_dir, server, "worker", "--concurrency=2") as worker,
        ):
            app.send_task("sandbox.tasks.provision_lab", args=[str(lab.id)])
            wait_for(
                lambda: state_of(lab) == Lab.State.PROVISIONING and engine.node_statuses(lab.short_id),
                120,
                "the lab provisioning with containers running",
                [worker],
            )
            server.restart()
            restarted = time.monotonic()
            wait_for(lambda: state_of(lab) == Lab.State.READY, 120, "the lab ready", [beat, worker])
            print(f"\nRedis restart mid-provision -> lab ready: {time.monotonic() - restarted:.1f}s")
            assert "Unrecoverable error" not in worker_log(worker)


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_a_provision_task_lost_in_a_redis_restart_is_queued_again(lab: Lab, engine: Engine, run_dir: Path) -> None:
    with private_redis(run_dir, "unix") as server, sender(server) as app:
        app.send_task("sandbox.tasks.provision_lab", args=[str(lab.id)])  # no worker yet: it waits
        assert server.queued() == 1
        server.restart()  # a Redis without persistence: the task is gone, the lab stays requested
        restarted = time.monotonic()
        assert server.queued() == 0
        with (
            celery_process(run_dir, server, "beat", "--schedule", str(run_dir / "beat-schedule")) as beat,
            celery_process(run_dir, server, "worker", "--concurrency=2") as worker,
        ):
            wait_for(lambda: state_of(lab) != Lab.State.REQUESTED, RECOVERY_BOUND, "the lab picked up", [beat, worker])
            picked_up = time.monotonic() - restarted
            wait_for(lambda: state_of(lab) == Lab.State.READY, 120, "the lab ready", [beat, worker])
            print(
                f"\nprovision task lost in a Redis restart -> requeued and claimed: {picked_up:.1f}s,"
                f" ready: {time.monotonic() - restarted:.1f}s"
            )
    assert Lab.objects.get(pk=lab.pk).provision_requeues == 0  # reset at ready
