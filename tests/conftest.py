"""Shared fixtures: users, a fake engine for lifecycle unit tests, and the real engine and Redis
for the tests marked `docker` / `redis`.

With STACKLAB_REQUIRE_ALL=1 (set by `make test`, so by CI) a missing engine or Redis fails the
run instead of skipping: nothing may quietly not run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone

from course.models import Cohort, Course, Enrolment
from sandbox.access import INSTRUCTORS_GROUP
from sandbox.engine import Engine, EngineError, EngineUnavailable, ExecResult, Network, NodeRun, NodeStatus

REQUIRE_ALL = os.environ.get("STACKLAB_REQUIRE_ALL") == "1"


def unavailable(what: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"{what} is required by this run (STACKLAB_REQUIRE_ALL=1) but not available")
    pytest.skip(f"{what} not available")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if REQUIRE_ALL and skipped and session.exitstatus == 0:
        reporter.write_line(f"{skipped} test(s) skipped while STACKLAB_REQUIRE_ALL=1: failing the run", red=True)
        session.exitstatus = 1


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    def make(username: str = "learner", *, instructor: bool = False, teaching: Iterable[User | int] = ()) -> User:
        """A user; an instructor if asked, who teaches a cohort of `teaching` if any are given."""
        user = User.objects.create_user(username=username, password="pw-" + username)
        if instructor:
            user.groups.add(Group.objects.get_or_create(name=INSTRUCTORS_GROUP)[0])
        if teaching:
            teach_cohort(user, teaching)
        return user

    return make


def teach_cohort(instructor: User, learners: Iterable[User | int], name: str = "Cohort") -> Cohort:
    """A cohort of the course taught by `instructor`, with `learners` (users or ids) enrolled."""
    course = Course.objects.first() or Course.objects.create(title="Backend architecture, hands-on")
    cohort = Cohort.objects.create(name=name, course=course)
    cohort.instructors.add(instructor)
    for learner in learners:
        Enrolment.objects.create(cohort=cohort, learner_id=getattr(learner, "pk", learner))
    # Enrolled since yesterday: their labs made by the test (launched "since joining") are the
    # cohort's to watch.
    cohort.enrolments.update(joined_at=timezone.now() - timedelta(days=1))
    return cohort


@pytest.fixture
def learner(make_user: Callable[..., User]) -> User:
    return make_user("learner")


class FakeEngine:
    """Stands in for Docker in lifecycle unit tests: records what it was asked to do. The
    `docker`-marked tests prove the real Engine does the same against a real engine."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], str] = {}  # (lab, node) -> status
        self.networks: set[str] = set()
        self.fail_on_start: str | None = None
        self.exit_on_start: dict[str, str] = {}  # node -> what it prints before it exits
        self.removed: list[str] = []
        self.images: list[Path] = []
        self.actions: list[tuple[str, str]] = []
        self.execs: list[tuple[str, list[str]]] = []
        self.sidecars: list[tuple[str, str, list[str], list[str]]] = []  # node, image, command, cap_add

    def container_name(self, lab: str, node: str) -> str:
        return f"fake-{lab}-{node}"

    def ensure_image(self, context: Path) -> str:
        self.images.append(context)
        return f"fake/{context.name}:1"

    def ensure_pulled(self, name: str) -> str:
        self.images.append(Path(name))
        return name

    def create_network(self, lab: str, owner: int) -> Network:
        self.networks.add(lab)
        return Network(name=f"net-{lab}", subnet="10.213.7.0/24", gateway="10.213.7.1")

    def start_node(self, run: NodeRun, network: Network) -> str:
        if run.name == self.fail_on_start:
            raise EngineError(f"Could not start node {run.name}: no space left on device")
        self.nodes[(run.lab, run.name)] = "exited" if run.name in self.exit_on_start else "running"
        return f"id-{run.name}"

    def node_statuses(self, lab: str | None = None) -> list[NodeStatus]:
        return [
            NodeStatus(lab=l, name=n, status=s, health="healthy" if s == "running" else None)
            for (l, n), s in self.nodes.items()
            if lab is None or l == lab
        ]

    def last_output(self, lab: str, node: str, lines: int = 5) -> str:
        return "\n".join(self.exit_on_start.get(node, "").splitlines()[-lines:])

    def exec(
        self, lab: str, node: str, command: list[str], user: str | None = None, timeout: float | None = None
    ) -> ExecResult:
        self.execs.append((node, command))
        return ExecResult(exit_code=0, output="ok")

    def run_sidecar(self, lab: str, node: str, image: str, command: list[str], cap_add: list[str]) -> ExecResult:
        if self.nodes.get((lab, node)) not in {"running", "paused"}:
            raise EngineError(f"Node {node} is not running: its network cannot be changed.")
        self.sidecars.append((node, image, command, cap_add))
        return ExecResult(exit_code=0, output="")

    def act_on_node(self, lab: str, node: str, action: str) -> None:
        if (lab, node) not in self.nodes:
            raise EngineError(f"Node {node} does not exist in this lab")
        self.actions.append((node, action))
        self.nodes[(lab, node)] = {"kill": "exited", "stop": "exited", "pause": "paused"}.get(action, "running")

    def remove_lab(self, lab: str) -> int:
        self.removed.append(lab)
        gone = [key for key in self.nodes if key[0] == lab]
        for key in gone:
            del self.nodes[key]
        had_network = lab in self.networks
        self.networks.discard(lab)
        return len(gone) + had_network

    def lab_ids(self) -> set[str]:
        return {lab for lab, _ in self.nodes} | self.networks


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """The real Docker engine, with every lab image built (cached), for `docker` tests."""
    from django.conf import settings

    from sandbox.lifecycle import connect_engine
    from sandbox.specs import list_labs, load_lab

    try:
        real = connect_engine()
        real.client.ping()
    except (EngineUnavailable, Exception) as exc:  # noqa: BLE001 - any failure means "no engine"
        unavailable(f"Docker engine ({exc})")
    assert settings.STACKLAB_INSTANCE != "default", "tests must never label objects as the default instance"
    # As the worker does at start: every lab the suite runs is cut off from the host.
    from sandbox.isolation import install_at_start

    install_at_start("tests")
    for slug in list_labs():
        package = load_lab(slug)
        for node in package.spec.nodes:
            if node.build is not None:
                real.ensure_image(package.build_context(node))
        if package.spec.has_network_faults:
            real.ensure_image(package.tools_context)
    yield real
    for lab in real.lab_ids():
        real.remove_lab(lab)


@pytest.fixture
def redis_channel_layer(settings) -> None:  # noqa: ANN001 - pytest-django's settings fixture
    """Require the real Redis channel layer (REDIS_URL) for tests that publish across threads."""
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {settings.REDIS_URL} ({exc})")


@pytest.fixture(autouse=True)
def _engine_only_where_marked(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    settings,  # noqa: ANN001 - pytest-django's settings fixture
) -> None:
    """A test not marked `docker` that reaches for the real engine fails instead of starting
    containers behind everyone's back. Its fake engine is on no host of ours, so the host's lab
    isolation rules are off, and reaching the host firewall fails too."""
    if request.node.get_closest_marker("docker") is not None:
        return
    from sandbox import isolation, lifecycle

    def refuse() -> Engine:
        raise AssertionError("this test reached the real Docker engine: mark it `docker` or pass a fake engine")

    def refuse_firewall(argv: object) -> isolation.CommandResult:
        raise AssertionError("this test reached the host firewall: mark it `docker` or pass a fake runner")

    monkeypatch.setattr(lifecycle, "connect_engine", refuse)
    monkeypatch.setattr(isolation, "run_command", refuse_firewall)
    settings.LAB_ISOLATION = False


@pytest.fixture(autouse=True)
def _channel_layer_per_marker(request: pytest.FixtureRequest, settings) -> None:  # noqa: ANN001
    """Tests not marked `redis` get an in-memory channel layer, so they need no Redis."""
    if request.node.get_closest_marker("redis") is None:
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    else:
        request.getfixturevalue("redis_channel_layer")


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Each test starts with an empty cache: launch rate-limit counters (and chart history) kept
    in it must not leak from one test into the next."""
    from django.core.cache import cache

    cache.clear()
    yield
