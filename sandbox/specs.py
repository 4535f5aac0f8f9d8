"""Lab packages: the one loader that turns `labs/<slug>/lab.yaml` into typed objects.

Specs are validated here, once; code past the loader trusts these objects. Errors name the file,
the line and the key that is wrong, written for the instructor who wrote it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from django.conf import settings
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

NAME = r"^[a-z][a-z0-9-]{0,30}$"
SPEC_FILE = "lab.yaml"
# The image network faults run in (a sidecar in the node's network namespace), relative to the
# labs folder: shared by every lab, not named in any spec.
TOOLS_CONTEXT = Path("images/tools")


class LabSpecError(Exception):
    """A lab package is missing or malformed; the message names the file and the key."""


class LabNotFound(LabSpecError):
    pass


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthSpec(Strict):
    command: list[str] = Field(min_length=1)
    interval: float = Field(default=1.0, gt=0)
    timeout: float = Field(default=2.0, gt=0)
    retries: int = Field(default=3, ge=1)
    start_period: float = Field(default=0.0, ge=0)


MEMORY = re.compile(r"^(\d+)([kmg])$")


def size_bytes(value: str) -> int:
    """Bytes in a size written like 64m, 512k or 1g (validated against MEMORY beforehand)."""
    match = MEMORY.match(value)
    assert match  # checked by the validators
    number, unit = match.groups()
    return int(number) * {"k": 1024, "m": 1024**2, "g": 1024**3}[unit]


class LimitsSpec(Strict):
    memory: str = "128m"
    cpus: float = Field(default=0.5, gt=0, le=4)
    pids: int = Field(default=128, ge=16, le=4096)

    @field_validator("memory")
    @classmethod
    def memory_has_a_unit(cls, value: str) -> str:
        if not MEMORY.match(value.lower()):
            raise ValueError("memory must look like 64m, 512m or 1g")
        return value.lower()

    @property
    def memory_bytes(self) -> int:
        return size_bytes(self.memory)


ALLOWED_CAPS = {"NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW", "CHOWN", "SETUID", "SETGID", "KILL"}
WRITABLE_MIN_BYTES = 1024**2
WRITABLE_MAX_BYTES = 256 * 1024**2
# Kernel and engine file systems a writable mount must not hide, and the seeds of writable paths
# (engine.SEED_DIR) that a node image carries.
FORBIDDEN_PATHS = ("/proc", "/sys", "/dev", "/.stacklab")
# Where each role's image writes (labs/images/README.md), besides /tmp: a node's root is
# read-only, so these are all the disk it has. A spec's `writable` adds paths, resizes these, or
# drops one with `null`.
TMP_SIZE = "16m"
# /dev/shm of every node (engine.SHM_BYTES), a tmpfs charged to its memory like the others.
SHM_SIZE = "8m"
WRITABLE_BY_ROLE: dict[str, dict[str, str]] = {
    "app": {"/var/lib/app": "16m"},  # DATA_DIR: requests.log (kept under 1 MiB), disk faults
    "lb": {"/etc/haproxy": "1m", "/run/haproxy": "1m"},  # edited haproxy.cfg; pid, socket, state
    "cache": {"/var/lib/redis": "16m", "/etc/redis": "1m"},  # home and `dir` (SAVE); CONFIG REWRITE
    # Home, with the cluster (~36 MiB) in data/; the socket; postgresql.conf for a learner to edit.
    "db": {"/var/lib/postgresql": "64m", "/run/postgresql": "1m", "/etc/postgresql": "1m"},
    "traffic": {},
    "other": {},
}
WRITABLE_PATH = re.compile(r"^[A-Za-z0-9._/-]+$")


# An image reference as Docker reads one: [registry[:port]/]name[/name...][:tag][@sha256:digest].
IMAGE_REFERENCE = (
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)


def _check_container_path(path: str) -> str:
    """A path inside a container that a mount or a copied file may take."""
    parts = PurePosixPath(path).parts
    if not path.startswith("/") or path == "/" or ".." in parts or str(PurePosixPath(path)) != path:
        raise ValueError(f"{path!r} must be an absolute, normalised path other than /")
    if any(path == root or path.startswith(root + "/") for root in FORBIDDEN_PATHS):
        raise ValueError(f"{path!r} would hide {', '.join(FORBIDDEN_PATHS)}")
    return path


def is_inside(path: str, root: str) -> bool:
    """Whether `path` lies below `root` (not at it): what a tmpfs at `root` would hide."""
    return path.startswith(root + "/")


class FileSpec(Strict):
    """A file of the lab folder copied into each instance of a node before it starts."""

    path: Annotated[str, AfterValidator(_check_container_path)] = Field(description="where, in the container")
    source: str = Field(description="the file in the lab folder")
    mode: Annotated[str, Field(pattern=r"^0?[0-7]{3}$")] = "0644"

    @property
    def mode_bits(self) -> int:
        return int(self.mode, 8)


class NodeSpec(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    role: Literal["lb", "app", "cache", "db", "traffic", "other"] = "other"
    build: str | None = Field(default=None, description="a build context (folder with a Dockerfile)")
    image: str | None = Field(default=None, pattern=IMAGE_REFERENCE, description="an image name, used as it is")
    files: list[FileSpec] = Field(default=[], description="files copied in, owned by the node's user")
    replicas: int = Field(default=1, ge=1, le=8)
    command: list[str] | None = None
    env: dict[str, str] = {}
    user: str | None = None
    health: HealthSpec | None = None
    limits: LimitsSpec = LimitsSpec()
    cap_add: list[str] = []
    depends_on: list[str] = []
    writable: dict[str, str | None] = Field(
        default={},
        description="absolute path -> size (16m), or null: where the node may write, over its role's "
        "defaults (WRITABLE_BY_ROLE, and /tmp). Its root is read-only; each path is a size-limited tmpfs "
        "whose pages count against limits.memory",
    )

    @model_validator(mode="before")
    @classmethod
    def scratch_is_now_writable(cls, data: object) -> object:
        if isinstance(data, dict) and "scratch" in data:
            raise ValueError("scratch: renamed to writable (same form: path -> size)")
        return data

    @field_validator("cap_add")
    @classmethod
    def caps_are_known(cls, caps: list[str]) -> list[str]:
        unknown = sorted(set(caps) - ALLOWED_CAPS)
        if unknown:
            raise ValueError(f"capabilities not allowed: {', '.join(unknown)}")
        return caps

    @field_validator("writable")
    @classmethod
    def writable_is_sane(cls, writable: dict[str, str | None]) -> dict[str, str | None]:
        checked: dict[str, str | None] = {}
        for path, size in writable.items():
            _check_container_path(path)
            if not WRITABLE_PATH.match(path):
                raise ValueError(f"{path!r}: only letters, digits and . _ - / may name a writable path")
            if size is not None:
                if not MEMORY.match(size.lower()):
                    raise ValueError(f"{path}: size must look like 16m or 512k (or null: not writable)")
                if not WRITABLE_MIN_BYTES <= size_bytes(size.lower()) <= WRITABLE_MAX_BYTES:
                    raise ValueError(f"{path}: size must be between 1m and 256m")
                size = size.lower()
            checked[path] = size
        return checked

    @model_validator(mode="after")
    def has_one_image(self) -> NodeSpec:
        if (self.build is None) == (self.image is None):
            raise ValueError("give either build or image")
        paths = [file.path for file in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("files: two files share a path")
        return self

    @model_validator(mode="after")
    def writable_fits(self) -> NodeSpec:
        paths = sorted(self.writable_sizes)
        for path in paths:
            outer = next((other for other in paths if is_inside(path, other)), None)
            if outer is not None:
                raise ValueError(f"writable: {path} is inside {outer}: one tmpfs covers both")
        for file in self.files:
            if file.path in paths:
                raise ValueError(f"files: {file.path} is a writable path (a directory), not a file")
        # tmpfs pages are charged to the container's memory cgroup: full writable paths must
        # leave the node's processes room under limits.memory, or the kernel kills them instead.
        if sum(self.writable_bytes.values()) + size_bytes(SHM_SIZE) >= self.limits.memory_bytes:
            sizes = " + ".join(f"{path} {size}" for path, size in sorted(self.writable_sizes.items()))
            sizes += f" + /dev/shm {SHM_SIZE}"
            raise ValueError(
                f"writable: the sizes together ({sizes}) must stay below limits.memory ({self.limits.memory})"
            )
        return self

    @property
    def writable_sizes(self) -> dict[str, str]:
        """Every writable path of the node and its size: /tmp, the role's, then the spec's."""
        merged: dict[str, str | None] = {"/tmp": TMP_SIZE, **WRITABLE_BY_ROLE[self.role], **self.writable}
        return {path: size for path, size in merged.items() if size is not None}

    @property
    def writable_bytes(self) -> dict[str, int]:
        return {path: size_bytes(size) for path, size in self.writable_sizes.items()}

    @property
    def instances(self) -> list[str]:
        """Instance names: `app` with 3 replicas is app-1, app-2, app-3; a single node keeps its
        name."""
        if self.replicas == 1:
            return [self.name]
        return [f"{self.name}-{index}" for index in range(1, self.replicas + 1)]


class TrafficSpec(Strict):
    node: str
    description: str = ""


class FaultSpec(Strict):
    """Something a learner (or the lesson's break) may do to the lab."""

    key: Annotated[str, Field(pattern=NAME)]
    title: str
    description: str
    action: Literal["kill", "stop", "pause", "unpause", "restart", "exec", "network"]
    node: str
    command: list[str] | None = Field(
        default=None,
        description="for action exec: what to run in the node; for action network: what to run in a "
        "sidecar sharing the node's network namespace with NET_ADMIN (e.g. iptables)",
    )
    user: str | None = None

    @model_validator(mode="after")
    def exec_has_a_command(self) -> FaultSpec:
        runs_a_command = self.action in {"exec", "network"}
        if runs_a_command and self.command is None:
            raise ValueError(f"command is required for action {self.action}")
        if not runs_a_command and self.command is not None:
            raise ValueError("command is only for actions exec and network")
        if self.action == "network" and self.user is not None:
            raise ValueError("user: a network fault runs as root in its sidecar")
        return self


class MetricCheck(Strict):
    """Judged on the traffic node's figures: the metric stays below a bound over a window."""

    kind: Literal["metric"]
    metric: Literal["error_rate", "p95_ms"]
    below: float = Field(gt=0)
    window: int = Field(ge=3, le=600, description="seconds the condition must hold")
    while_down: str | None = Field(default=None, description="node group: judged only while one of its nodes is down")

    @property
    def settle_seconds(self) -> float:
        return self.window


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from exc
    return pattern


Pattern = Annotated[str, AfterValidator(_compiles)]


class ProbeCheck(Strict):
    """A check the monitor runs inside a node every `interval` seconds."""

    node: str = Field(description="the instance the check runs in")
    timeout: float = Field(default=3.0, gt=0, le=30, description="seconds before the check counts as failed")
    interval: float = Field(default=2.0, ge=1, le=60, description="seconds between two runs")
    passes: int = Field(default=1, ge=1, le=20, description="consecutive passing runs needed to be met")
    fails: int = Field(default=1, ge=1, le=20, description="consecutive failing runs needed to be failing")

    @property
    def settle_seconds(self) -> float:
        return (self.interval + self.timeout) * max(self.passes, self.fails)


class HttpCheck(ProbeCheck):
    """An HTTP request sent from a node (with curl) through the lab, e.g. to the load balancer."""

    kind: Literal["http"]
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE"] = "GET"
    data: str | None = Field(default=None, description="request body, for POST, PUT and DELETE")
    # 1xx answers are interim (100 Continue): the final status is what a check can want.
    status: int = Field(default=200, ge=200, le=599)
    body: Pattern | None = Field(default=None, description="a regular expression the body must contain")
    headers: dict[Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")], Pattern] = Field(
        default={}, description="header name -> a regular expression its value must contain"
    )

    @model_validator(mode="after")
    def fits_the_method(self) -> HttpCheck:
        if self.data is not None and self.method not in {"POST", "PUT", "DELETE"}:
            raise ValueError(f"data: a {self.method} request sends no body")
        if self.body is not None and self.method == "HEAD":
            raise ValueError("body: a HEAD answer has no body to match")
        return self


class CommandCheck(ProbeCheck):
    """A command (or a script of the package) run in a node; its exit code and output decide."""

    kind: Literal["command"]
    command: list[str] | None = Field(default=None, min_length=1)
    script: str | None = Field(default=None, description="a file of the package, run as `sh -c <its text>`")
    user: str | None = None
    exit_code: int = Field(default=0, ge=0, le=255)
    output: Pattern | None = Field(default=None, description="a regular expression the output must contain")

    @model_validator(mode="after")
    def runs_one_thing(self) -> CommandCheck:
        if (self.command is None) == (self.script is None):
            raise ValueError("give either command or script")
        return self


MAX_ANSWER_LENGTH = 500
# Trimmed as the page's answers are (a folded YAML `>` string ends in a newline), and no longer
# than an answer may be, so every choice can be picked.
Answer = Annotated[str, AfterValidator(str.strip), Field(min_length=1, max_length=MAX_ANSWER_LENGTH)]


def normalise_answer(text: str) -> str:
    """How a learner's free-text answer is compared: trimmed, inner spaces squeezed."""
    return " ".join(text.split())


class QuestionCheck(Strict):
    """A question the learner answers on the lab page: met once answered right."""

    kind: Literal["question"]
    prompt: str = Field(min_length=1)
    choices: list[Answer] = Field(default=[], description="answers to pick from; none for a free-text answer")
    answer: Answer = Field(description="the right answer (one of choices, if there are choices)")
    accept: list[Pattern] = Field(
        default=[], description="free text: regular expressions (whole answer, any case) that also count as right"
    )
    explanation: str = Field(default="", description="shown once the learner has answered right")

    @model_validator(mode="after")
    def answer_is_consistent(self) -> QuestionCheck:
        if self.choices:
            if len(self.choices) < 2:
                raise ValueError("choices: give at least two, or none for a free-text answer")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError("choices: two choices are the same")
            if self.answer not in self.choices:
                raise ValueError("answer must be one of the choices")
            if self.accept:
                raise ValueError("accept is only for free-text questions (no choices)")
        return self

    def is_right(self, given: str) -> bool:
        if self.choices:
            return given == self.answer
        given = normalise_answer(given)
        if given.casefold() == normalise_answer(self.answer).casefold():
            return True
        return any(re.fullmatch(pattern, given, re.IGNORECASE) for pattern in self.accept)

    @property
    def settle_seconds(self) -> float:
        return 0.0


ObjectiveCheck = Annotated[MetricCheck | HttpCheck | CommandCheck | QuestionCheck, Field(discriminator="kind")]


class ObjectiveSpec(Strict):
    key: Annotated[str, Field(pattern=NAME)]
    title: str
    description: str = ""
    check: ObjectiveCheck
    at_start: Literal["met", "unmet"] = Field(
        default="unmet", description="what `lab test` expects before the break (after it: unmet; solved: met)"
    )

    @model_validator(mode="after")
    def a_question_starts_unanswered(self) -> ObjectiveSpec:
        if self.is_question and self.at_start == "met":
            raise ValueError("at_start: a question is unanswered at the start (unmet)")
        return self

    @property
    def is_question(self) -> bool:
        return isinstance(self.check, QuestionCheck)

    @property
    def is_probe(self) -> bool:
        return isinstance(self.check, ProbeCheck)


class SolutionSpec(Strict):
    node: str
    script: str
    user: str | None = None
    reveal: bool = Field(default=False, description="learners may read the solution script")


class SetupStep(Strict):
    """A script run in a node once every node is healthy, before the lab is ready."""

    node: str
    script: str
    user: str | None = None


class LabSpec(Strict):
    slug: Annotated[str, Field(pattern=NAME)]
    title: str
    summary: str = ""
    ttl_minutes: int = Field(default=60, ge=5, le=480)
    max_ttl_minutes: int = Field(default=180, ge=5, le=1440)
    idle_minutes: int = Field(default=30, ge=5, le=480, description="stop after this long without activity")
    nodes: list[NodeSpec] = Field(min_length=1)
    traffic: TrafficSpec
    faults: list[FaultSpec] = []
    break_: str = Field(alias="break", description="the fault that starts the exercise")
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    hints: list[str] = []
    solution: SolutionSpec
    setup: list[SetupStep] = Field(default=[], description="scripts run in order before the lab is ready")

    def node(self, group: str) -> NodeSpec:
        return next(node for node in self.nodes if node.name == group)

    def group_of(self, instance: str) -> str:
        return next(node.name for node in self.nodes if instance in node.instances)

    def fault(self, key: str) -> FaultSpec | None:
        return next((fault for fault in self.faults if fault.key == key), None)

    @property
    def has_network_faults(self) -> bool:
        return any(fault.action == "network" for fault in self.faults)

    @property
    def instances(self) -> list[str]:
        return [name for node in self.nodes for name in node.instances]

    def edges(self) -> list[tuple[str, str]]:
        """Who talks to whom, from depends_on: traffic -> lb -> app-1..3 -> cache, db."""
        return [
            (source, target)
            for node in self.nodes
            for dependency in node.depends_on
            for source in node.instances
            for target in self.node(dependency).instances
        ]

    def objective(self, key: str) -> ObjectiveSpec:
        return next(objective for objective in self.objectives if objective.key == key)

    def start_order(self) -> list[NodeSpec]:
        """Nodes ordered so that each starts after what it depends on (spec order otherwise)."""
        ordered, stuck = self._ordering()
        if stuck:
            raise LabSpecError(f"lab {self.slug}: nodes.depends_on has a cycle")
        return ordered

    def _ordering(self) -> tuple[list[NodeSpec], list[NodeSpec]]:
        """(the nodes that can start, in order; the nodes a depends_on cycle leaves stuck)."""
        ordered: list[NodeSpec] = []
        placed: set[str] = set()
        pending = list(self.nodes)
        while pending:
            ready = [node for node in pending if set(node.depends_on) <= placed]
            if not ready:
                break
            for node in ready:
                ordered.append(node)
                placed.add(node.name)
                pending.remove(node)
        return ordered, pending


@dataclass(frozen=True)
class LabPackage:
    """A validated lab spec and the folder its relative paths are resolved against."""

    spec: LabSpec
    root: Path

    @property
    def slug(self) -> str:
        return self.spec.slug

    def build_context(self, node: NodeSpec) -> Path:
        assert node.build is not None  # callers ask only for nodes that build
        return (self.root / node.build).resolve()

    def read_script(self, relative: str) -> str:
        return self._inside(relative).read_text()

    def read_file(self, relative: str) -> bytes:
        return self._inside(relative).read_bytes()

    def _inside(self, relative: str) -> Path:
        """The file at `relative`, resolved now: validated once is not enough if a symlink is
        swapped in after the spec was read."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise LabSpecError(f"{self.root / relative}: must stay inside the lab folder {self.root}")
        return path

    @property
    def tools_context(self) -> Path:
        """The build context of the network-fault sidecar (the labs folder's `images/tools`)."""
        return (self.root.parent / TOOLS_CONTEXT).resolve()


# Where a problem is in a spec: keys and list indices from the top, as in pydantic's error loc.
Loc = tuple[str | int, ...]


def reference_problems(spec: LabSpec) -> list[tuple[Loc, str]]:
    """What in `spec` names a node, fault or key that is not there (or twice), with its place."""
    problems: list[tuple[Loc, str]] = []
    groups = {node.name for node in spec.nodes}
    instances = set(spec.instances)
    seen: set[str] = set()
    for index, node in enumerate(spec.nodes):
        if node.name in seen:
            problems.append((("nodes", index, "name"), "two nodes share a name"))
        seen.add(node.name)
        for position, dependency in enumerate(node.depends_on):
            if dependency not in groups:
                problems.append((("nodes", index, "depends_on", position), f"no node named {dependency!r}"))
    if not problems:  # every name resolves: then an order to start the nodes in must exist too
        _, stuck = spec._ordering()
        if stuck:
            names = ", ".join(node.name for node in stuck)
            problems.append(
                (
                    ("nodes", spec.nodes.index(stuck[0]), "depends_on"),
                    f"depends_on has a cycle: {names} can never start",
                )
            )
    if spec.traffic.node not in instances:
        problems.append((("traffic", "node"), f"no node named {spec.traffic.node!r}"))
    seen = set()
    for index, fault in enumerate(spec.faults):
        if fault.key in seen:
            problems.append((("faults", index, "key"), "two faults share a key"))
        seen.add(fault.key)
        if fault.node not in instances:
            problems.append((("faults", index, "node"), f"no node named {fault.node!r}"))
    if spec.fault(spec.break_) is None:
        problems.append((("break",), f"no fault with key {spec.break_!r}"))
    if spec.solution.node not in instances:
        problems.append((("solution", "node"), f"no node named {spec.solution.node!r}"))
    for index, step in enumerate(spec.setup):
        if step.node not in instances:
            problems.append((("setup", index, "node"), f"no node named {step.node!r}"))
    seen = set()
    for index, objective in enumerate(spec.objectives):
        if objective.key in seen:
            problems.append((("objectives", index, "key"), "two objectives share a key"))
        seen.add(objective.key)
        check = objective.check
        if isinstance(check, MetricCheck) and check.while_down is not None and check.while_down not in groups:
            problems.append((("objectives", index, "check", "while_down"), f"no node {check.while_down!r}"))
        if isinstance(check, ProbeCheck) and check.node not in instances:
            problems.append((("objectives", index, "check", "node"), f"no node named {check.node!r}"))
    if spec.max_ttl_minutes < spec.ttl_minutes:
        problems.append((("max_ttl_minutes",), "must be at least ttl_minutes"))
    return problems


def _file_problems(package: LabPackage, folder: str) -> list[tuple[Loc, str]]:
    """What the spec names on disk that is missing or outside the labs folder."""
    spec = package.spec
    problems: list[tuple[Loc, str]] = []
    if spec.slug != folder:
        problems.append((("slug",), f"{spec.slug!r} must match the folder {folder!r}"))
    labs_root = package.root.parent
    for index, node in enumerate(spec.nodes):
        if node.build is not None:
            context = package.build_context(node)
            if not context.is_relative_to(labs_root):
                problems.append((("nodes", index, "build"), f"must stay inside {labs_root}"))
            elif not (context / "Dockerfile").is_file():
                problems.append((("nodes", index, "build"), f"no Dockerfile in {context}"))
        for position, file in enumerate(node.files):
            problem = _missing(package, file.source)
            if problem:
                problems.append((("nodes", index, "files", position, "source"), problem))
    network = [index for index, fault in enumerate(spec.faults) if fault.action == "network"]
    if network and not (package.tools_context / "Dockerfile").is_file():
        problems.append(
            (("faults", network[0], "action"), f"a network fault needs a Dockerfile in {package.tools_context}")
        )
    scripts: list[tuple[Loc, str]] = [(("solution", "script"), spec.solution.script)]
    scripts += [(("setup", index, "script"), step.script) for index, step in enumerate(spec.setup)]
    scripts += [
        (("objectives", index, "check", "script"), objective.check.script)
        for index, objective in enumerate(spec.objectives)
        if isinstance(objective.check, CommandCheck) and objective.check.script is not None
    ]
    for loc, relative in scripts:
        problem = _missing(package, relative)
        if problem:
            problems.append((loc, problem))
    return problems


def _missing(package: LabPackage, relative: str) -> str | None:
    """Why a file the spec names cannot be used (missing, or outside the lab folder), or None."""
    path = (package.root / relative).resolve()
    if not path.is_relative_to(package.root):
        return f"{relative!r} must stay inside the lab folder"
    if not path.is_file():
        return f"no file {relative!r}"
    return None


def _entry(node: yaml.Node, part: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key, value) under `part` of a mapping, or (item, item) of a sequence; None if absent."""
    if isinstance(node, yaml.MappingNode):
        return next(((key, value) for key, value in node.value if str(key.value) == str(part)), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part], node.value[part]
    return None


def _kind_of(node: yaml.Node) -> str | None:
    entry = _entry(node, "kind")
    return str(entry[1].value) if entry is not None and isinstance(entry[1], yaml.ScalarNode) else None


def _line_of(root: yaml.Node | None, loc: Loc) -> int:
    """The 1-based line of the deepest node on `loc`: a key's own line, or for a key that is not
    there, the line of the mapping (or list item) that lacks it."""
    if root is None:
        return 1
    node, line = root, root.start_mark.line
    for position, part in enumerate(loc):
        entry = _entry(node, part)
        # Parts that match nothing are pydantic's union and discriminator tags (`list[str]`,
        # `http`). A tag can equal a key of the same mapping (`kind: metric` beside `metric:`,
        # `kind: command` beside `command:`): it is the tag when it is this mapping's `kind` and
        # more of the path follows.
        if entry is None:
            continue
        if position + 1 < len(loc) and _kind_of(node) == part:
            continue
        line, node = entry[0].start_mark.line, entry[1]
    return line + 1


def _spec_error(path: Path, root: yaml.Node | None, problems: list[tuple[Loc, str]]) -> LabSpecError:
    """One error listing every problem as `file:line: key: message`, in the order of the file."""
    located = sorted(
        ((_line_of(root, loc), ".".join(map(str, loc)) or "(top level)", message) for loc, message in problems),
        key=lambda problem: problem[0],
    )
    count = f"{len(located)} problem{'s' if len(located) != 1 else ''}"
    lines = [f"{path}: invalid lab spec ({count})"]
    lines += [f"{path}:{line}: {key}: {message}" for line, key, message in located]
    return LabSpecError("\n".join(lines))


def parse_lab(path: Path) -> LabPackage:
    """Parse and validate one lab spec file, checking that the files it names exist.

    1. Read the YAML twice over the same text: `safe_load` for the data, `compose` for the line of
       each node, so every problem can name its line.
    2. Validate the shapes with pydantic; on failure report all of its errors.
    3. Check what refers to what (nodes, faults, objectives) and the files named, and report every
       problem together.
    """
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise LabNotFound(f"{path}: no such lab spec") from exc
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None)
        reason = "; ".join(filter(None, [getattr(exc, "context", None), problem])) if problem else str(exc)
        raise LabSpecError(f"{where}: not valid YAML: {reason}") from exc
    if not isinstance(data, dict):
        raise _spec_error(path, root, [((), "a lab spec is a mapping of keys to values")])
    try:
        spec = LabSpec.model_validate(data)
    except ValidationError as exc:
        errors = [(item["loc"], item["msg"].removeprefix("Value error, ")) for item in exc.errors()]
        raise _spec_error(path, root, errors) from exc
    package = LabPackage(spec=spec, root=path.parent.resolve())
    problems = reference_problems(spec) + _file_problems(package, path.parent.name)
    if problems:
        raise _spec_error(path, root, problems)
    return package


@cache
def _load_cached(path: Path, mtime: float) -> LabPackage:
    return parse_lab(path)


def load_lab(slug: str) -> LabPackage:
    """The lab package called `slug`, re-read when its spec file changes."""
    if not re.match(NAME, slug):
        raise LabNotFound(f"no lab called {slug!r}")
    path = Path(settings.LABS_DIR) / slug / SPEC_FILE
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError as exc:
        raise LabNotFound(f"no lab called {slug!r}") from exc
    return _load_cached(path, mtime)


def list_labs() -> list[str]:
    root = Path(settings.LABS_DIR)
    return sorted(spec.parent.name for spec in root.glob(f"*/{SPEC_FILE}"))
