"""The one door to Docker: the only module that imports the `docker` SDK.

Everything else talks to `Engine` in domain words (network, node, exec, kill, events). Engine
objects carry labels (instance, lab, owner, node) so that they can always be found again from
the engine alone, which is what reaping and reconciliation rely on.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import ipaddress
import logging
import secrets
import socket
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker.types import CancellableStream

logger = logging.getLogger(__name__)

LABEL_INSTANCE = "stacklab.instance"
LABEL_LAB = "stacklab.lab"
LABEL_OWNER = "stacklab.owner"
LABEL_NODE = "stacklab.node"
LABEL_GROUP = "stacklab.group"
# On a fault's sidecar instead of LABEL_NODE (it is not a node): the node whose network it changes.
LABEL_SIDECAR = "stacklab.sidecar"
SIDECAR_TIMEOUT = 30  # seconds a sidecar may run before it is killed and the fault fails
SIDECAR_MEMORY = 32 * 1024**2
BASE_IMAGE = "debian:bookworm-slim"
# A login shell, bash where the image has it: what `docker exec -it NODE bash` would give.
TERMINAL_SHELL = ["sh", "-c", "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi"]
# Marks every process a terminal starts, so that closing the terminal can hang them all up.
TERMINAL_MARK = "STACKLAB_TERMINAL"
# SIGHUP to every process whose environment carries one terminal's mark (given as $1).
HANGUP = (
    f'for p in /proc/[0-9]*; do grep -qsxz "{TERMINAL_MARK}=$1" "$p/environ" && kill -HUP "${{p#/proc/}}"; done; true'
)


# (image, user) -> (uid, gid). Built images are tagged by content digest and named ones are run
# by id (`ensure_pulled`), so an answer never goes stale.
_runtime_ids: dict[tuple[str, str | None], tuple[int, int]] = {}


class EngineError(Exception):
    """The engine refused or failed an operation; the message can be shown to a learner."""


class ExecTimedOut(EngineError):
    """A command run with a timeout did not finish in time."""


class EngineUnavailable(EngineError):
    """No Docker engine answers at the configured address."""


@dataclass(frozen=True)
class Health:
    command: list[str]
    interval: float
    timeout: float
    retries: int
    start_period: float = 0.0


@dataclass(frozen=True)
class NodeRun:
    """Everything needed to start one node of a lab."""

    lab: str  # the lab's short id, as names and labels carry it
    owner: int
    name: str
    group: str
    image: str
    ip: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    health: Health | None = None
    memory_bytes: int = 128 * 1024**2
    cpus: float = 0.5
    pids: int = 128
    cap_add: list[str] = field(default_factory=list)
    # path -> bytes: size-limited tmpfs mounts (disk faults fill these, never the host's disk).
    scratch: dict[str, int] = field(default_factory=dict)
    files: list[NodeFile] = field(default_factory=list)


@dataclass(frozen=True)
class NodeFile:
    """A file copied into a node before it starts, owned by the node's user."""

    path: str
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class NodeStatus:
    """A node as the engine sees it right now."""

    lab: str
    name: str
    status: str  # created, running, paused, exited, dead ...
    health: str | None  # starting, healthy, unhealthy, or None without a health check


@dataclass(frozen=True)
class NodeEvent:
    lab: str
    name: str
    action: str  # start, die, stop, pause, unpause, destroy, health_status: healthy ...
    time: float


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str


@dataclass(frozen=True)
class Network:
    name: str
    subnet: str
    gateway: str

    def address(self, index: int) -> str:
        """The index-th host address of the subnet (gateway is .1, nodes start at .10)."""
        return str(ipaddress.ip_network(self.subnet)[index])


def context_digest(context: Path) -> str:
    """A digest of every file in a build context, so an unchanged context skips the build."""
    digest = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(context)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


class Engine:
    """A Docker engine reached through the docker SDK (DOCKER_HOST, or the local socket)."""

    def __init__(self, instance: str, subnet_pool: str, base_url: str | None = None) -> None:
        self.instance = instance
        self.subnet_pool = ipaddress.ip_network(subnet_pool)
        try:
            if base_url:
                self.client = docker.DockerClient(base_url=base_url, version="auto", timeout=60)
            else:
                self.client = docker.from_env(timeout=60)
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"The Docker engine is not reachable ({exc}).") from exc
        self._subnet_lock = threading.Lock()

    # -- naming -----------------------------------------------------------------------------

    def _network_name(self, lab: str) -> str:
        return f"stacklab-{lab}"

    def container_name(self, lab: str, node: str) -> str:
        """What `docker ps` calls a node: the name a learner types after `docker exec`."""
        return f"stacklab-{lab}-{node}"

    def _labels(self, lab: str, owner: int, **extra: str) -> dict[str, str]:
        return {LABEL_INSTANCE: self.instance, LABEL_LAB: lab, LABEL_OWNER: str(owner), **extra}

    def _filters(self, lab: str | None = None) -> dict[str, list[str]]:
        labels = [f"{LABEL_INSTANCE}={self.instance}"]
        if lab is not None:
            labels.append(f"{LABEL_LAB}={lab}")
        return {"label": labels}

    # -- images -----------------------------------------------------------------------------

    def ensure_image(self, context: Path) -> str:
        """Build the image for a build context unless one for the same content exists."""
        tag = f"stacklab/{context.name}:{context_digest(context)}"
        try:
            self.client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"The Docker engine is not reachable ({exc}).") from exc
        try:
            self.client.images.get(BASE_IMAGE)
        except docker.errors.ImageNotFound as exc:
            raise EngineError(f"Base image {BASE_IMAGE} is missing: run scripts/seed-base-image.sh") from exc
        started = time.monotonic()
        try:
            self.client.images.build(
                path=str(context),
                tag=tag,
                pull=False,
                rm=True,
                forcerm=True,
                labels={LABEL_INSTANCE: "image"},
            )
        except docker.errors.BuildError as exc:
            tail = "".join(str(chunk.get("stream", "")) for chunk in exc.build_log)[-800:]
            raise EngineError(f"Building {context.name} failed: {exc.msg}\n{tail}") from exc
        logger.info("built image %s in %.1fs", tag, time.monotonic() - started)
        return tag

    def ensure_pulled(self, name: str) -> str:
        """An image named in a spec (not built): used if the engine has it, else pulled. Returns
        its id, so that every node of a lab (and the cached user lookups) run the same image even
        if the name is pulled anew meanwhile."""
        try:
            return self.client.images.get(name).id
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"The Docker engine is not reachable ({exc}).") from exc
        started = time.monotonic()
        try:
            image = self.client.images.pull(name)
        except docker.errors.DockerException as exc:
            raise EngineError(f"Image {name} is not on this engine and could not be pulled: {exc}") from exc
        logger.info("pulled image %s in %.1fs", name, time.monotonic() - started)
        return image.id

    # -- networks ---------------------------------------------------------------------------

    def _used_subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        used = []
        for network in self.client.api.networks():
            for config in (network.get("IPAM") or {}).get("Config") or []:
                if config.get("Subnet"):
                    used.append(ipaddress.ip_network(config["Subnet"], strict=False))
        return used

    def create_network(self, lab: str, owner: int) -> Network:
        """A private bridge network for one lab, on a /24 of the pool no other network uses.

        `internal` keeps lab traffic off the outside world; the lab talks only to itself.
        """
        name = self._network_name(lab)
        with self._subnet_lock:
            try:
                used = self._used_subnets()
                for candidate in self.subnet_pool.subnets(new_prefix=24):
                    if any(candidate.overlaps(other) for other in used):
                        continue
                    gateway = str(candidate[1])
                    ipam = docker.types.IPAMConfig(
                        pool_configs=[docker.types.IPAMPool(subnet=str(candidate), gateway=gateway)]
                    )
                    try:
                        self.client.networks.create(
                            name,
                            driver="bridge",
                            internal=True,
                            ipam=ipam,
                            labels=self._labels(lab, owner),
                        )
                    except docker.errors.APIError as exc:
                        # Another process took this subnet between our look and our create.
                        if "overlap" in str(exc).lower():
                            used.append(candidate)
                            continue
                        raise
                    return Network(name=name, subnet=str(candidate), gateway=gateway)
            except docker.errors.DockerException as exc:
                raise EngineError(f"Could not create the lab network: {exc}") from exc
        raise EngineError(f"No free /24 left in the lab subnet pool {self.subnet_pool}")

    # -- nodes ------------------------------------------------------------------------------

    def start_node(self, run: NodeRun, network: Network) -> str:
        """Create and start one hardened container on the lab network; returns its id."""
        api = self.client.api
        host_config = api.create_host_config(
            mem_limit=run.memory_bytes,
            memswap_limit=run.memory_bytes,
            # cpu_period/cpu_quota rather than nano_cpus: a CPU fault can update them later.
            cpu_period=100_000,
            cpu_quota=int(run.cpus * 100_000),
            pids_limit=run.pids,
            cap_drop=["ALL"],
            cap_add=run.cap_add or None,
            security_opt=["no-new-privileges:true"],
            init=True,
            privileged=False,
            network_mode=network.name,
            # On an internal network, looking up a stopped container's name hangs 20 s before
            # failing (moby/moby#43430); bounded lookups keep a dead replica from stalling peers.
            dns_opt=["timeout:1", "attempts:1"],
            log_config={"type": "json-file", "config": {"max-size": "1m", "max-file": "2"}},
            # Scratch space is tmpfs so a filled disk never reaches the host's. Its pages count
            # against mem_limit (the spec keeps the sizes below it). Owned by uid/gid, not opened
            # with mode=1777: over a directory the image has, the engine copies that directory's
            # mode onto the tmpfs (tmpcopyup) and leaves it root's, so mode= has no effect.
            tmpfs=self._scratch_mounts(run) or None,
        )
        networking = api.create_networking_config(
            {network.name: api.create_endpoint_config(aliases=[run.name], ipv4_address=run.ip)}
        )
        healthcheck = None
        if run.health is not None:
            seconds = 1_000_000_000
            healthcheck = {
                "test": ["CMD", *run.health.command],
                "interval": int(run.health.interval * seconds),
                "timeout": int(run.health.timeout * seconds),
                "retries": run.health.retries,
                "start_period": int(run.health.start_period * seconds),
            }
        try:
            created = api.create_container(
                run.image,
                name=self.container_name(run.lab, run.name),
                hostname=run.name,
                command=run.command,
                environment=run.env,
                user=run.user or "",
                labels=self._labels(run.lab, run.owner, **{LABEL_NODE: run.name, LABEL_GROUP: run.group}),
                host_config=host_config,
                networking_config=networking,
                healthcheck=healthcheck,
            )
            if run.files:
                api.put_archive(created["Id"], "/", self._files_archive(run))
            api.start(created["Id"])
        except docker.errors.DockerException as exc:
            raise EngineError(f"Could not start node {run.name}: {exc}") from exc
        return created["Id"]

    def _files_archive(self, run: NodeRun) -> bytes:
        """A tar of the node's files, owned by the user the node runs as (so a learner can edit a
        config file in a terminal), unpacked at / before the node starts."""
        uid, gid = self._runtime_ids(run.image, run.user)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for file in run.files:
                info = tarfile.TarInfo(file.path.lstrip("/"))
                info.size, info.mode, info.uid, info.gid = len(file.content), file.mode, uid, gid
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(file.content))
        return buffer.getvalue()

    def _scratch_mounts(self, run: NodeRun) -> dict[str, str]:
        if not run.scratch:
            return {}
        uid, gid = self._runtime_ids(run.image, run.user)
        return {path: f"size={size},uid={uid},gid={gid}" for path, size in run.scratch.items()}

    def _runtime_ids(self, image: str, user: str | None) -> tuple[int, int]:
        """The uid and gid a container of `image` runs as (`user`, else the image's USER).

        1. Numbers are taken as they are ("10001", "10001:999").
        2. Names are looked up in the image's own /etc/passwd and /etc/group, copied out of a
           container that is created (never started) and removed at once.
        3. As the engine does, a uid without a group gets its passwd entry's group, else 0.
        """
        key = (image, user)
        if key in _runtime_ids:
            return _runtime_ids[key]
        api = self.client.api
        try:
            spec = user or api.inspect_image(image)["Config"].get("User") or "0"
            user_part, _, group_part = spec.partition(":")
            files = {"passwd": "", "group": ""}
            if not (user_part.isdigit() and group_part.isdigit()):
                files = self._image_files(image, files)
        except docker.errors.DockerException as exc:
            raise EngineError(f"Could not find the user {image} runs as: {exc}") from exc
        passwd = [line.split(":") for line in files["passwd"].splitlines() if line.count(":") >= 3]
        groups = [line.split(":") for line in files["group"].splitlines() if line.count(":") >= 2]
        entry = next((e for e in passwd if user_part in (e[0], e[2])), None)
        if entry is None and not user_part.isdigit():
            raise EngineError(f"Image {image} has no user {user_part!r}")
        uid = int(entry[2]) if entry else int(user_part)
        gid = int(entry[3]) if entry else 0
        if group_part:
            group = next((g for g in groups if group_part in (g[0], g[2])), None)
            if group is None and not group_part.isdigit():
                raise EngineError(f"Image {image} has no group {group_part!r}")
            gid = int(group[2]) if group else int(group_part)
        _runtime_ids[key] = (uid, gid)
        return uid, gid

    def _image_files(self, image: str, names: dict[str, str]) -> dict[str, str]:
        """The text of /etc/<name> for each name, as `image` ships them ("" if missing)."""
        api = self.client.api
        container = api.create_container(image, command=["true"], labels={LABEL_INSTANCE: self.instance})["Id"]
        try:
            found = {}
            for name in names:
                try:
                    stream, _ = api.get_archive(container, f"/etc/{name}")
                except docker.errors.NotFound:
                    found[name] = ""
                    continue
                with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                    member = tar.extractfile(tar.next())
                    found[name] = member.read().decode(errors="replace") if member else ""
            return found
        finally:
            api.remove_container(container, force=True)

    def _container(self, lab: str, node: str):  # -> docker.models.containers.Container
        try:
            return self.client.containers.get(self.container_name(lab, node))
        except docker.errors.NotFound as exc:
            raise EngineError(f"Node {node} does not exist in this lab") from exc
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"The Docker engine is not reachable ({exc}).") from exc

    def node_statuses(self, lab: str | None = None) -> list[NodeStatus]:
        """Every node of one lab (or of every lab of this instance), as the engine has them."""
        try:
            containers = self.client.api.containers(all=True, filters=self._filters(lab))
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"The Docker engine is not reachable ({exc}).") from exc
        statuses = []
        for summary in containers:
            labels = summary.get("Labels") or {}
            if LABEL_NODE not in labels:
                continue  # a fault's sidecar, not a node
            status_text = summary.get("Status", "")
            health = None
            for word in ("healthy", "unhealthy", "starting"):
                if f"({word})" in status_text or f"(health: {word})" in status_text:
                    health = word
            statuses.append(
                NodeStatus(
                    lab=labels.get(LABEL_LAB, ""),
                    name=labels.get(LABEL_NODE, ""),
                    status=summary.get("State", ""),
                    health=health,
                )
            )
        return statuses

    def exec(
        self, lab: str, node: str, command: list[str], user: str | None = None, timeout: float | None = None
    ) -> ExecResult:
        """Run `command` in a node and wait for it. With `timeout`, stop waiting after that many
        seconds and raise ExecTimedOut. The engine has no call to kill one exec, and the SDK waits
        on its socket without a deadline: the wait runs in a daemon thread of its own, which ends
        when the process does, so callers bound their commands themselves (`timeout`, curl's
        --max-time) and a hung one never blocks another caller or the process's exit."""
        container = self._container(lab, node)

        def run() -> ExecResult:
            try:
                exit_code, output = container.exec_run(command, user=user or "", demux=False)
            except docker.errors.DockerException as exc:
                raise EngineError(f"Could not run a command in {node}: {exc}") from exc
            return ExecResult(exit_code=exit_code, output=(output or b"").decode(errors="replace"))

        if timeout is None:
            return run()
        waiter: concurrent.futures.Future[ExecResult] = concurrent.futures.Future()

        def wait() -> None:
            try:
                waiter.set_result(run())
            except BaseException as exc:  # handed to the caller, whatever it is
                waiter.set_exception(exc)

        threading.Thread(target=wait, name=f"exec-{node}", daemon=True).start()
        try:
            return waiter.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise ExecTimedOut(f"{node}: no answer within {timeout:g} s") from None

    def run_sidecar(self, lab: str, node: str, image: str, command: list[str], cap_add: list[str]) -> ExecResult:
        """Run `command` in a short-lived container that shares `node`'s network namespace and
        holds `cap_add` (e.g. NET_ADMIN for iptables), so the node itself never gets it.

        1. The node must be running: a stopped one has no network namespace to join.
        2. Create the sidecar hardened like a node (every other capability dropped,
           no-new-privileges, read-only, small limits) and labelled with the lab, so the
           reaper and `remove_lab` find one that a crash leaves behind.
        3. Start it, wait up to SIDECAR_TIMEOUT seconds, read its output and exit code.
        4. Remove it, whatever happened.
        """
        target = self._container(lab, node)
        if target.status not in {"running", "paused"}:
            raise EngineError(f"Node {node} is not running ({target.status}): its network cannot be changed.")
        api = self.client.api
        host_config = api.create_host_config(
            network_mode=f"container:{target.id}",
            cap_drop=["ALL"],
            cap_add=cap_add or None,
            security_opt=["no-new-privileges:true"],
            privileged=False,
            read_only=True,
            mem_limit=SIDECAR_MEMORY,
            memswap_limit=SIDECAR_MEMORY,
            cpu_period=100_000,
            cpu_quota=25_000,
            pids_limit=16,
            log_config={"type": "json-file", "config": {"max-size": "64k", "max-file": "1"}},
        )
        owner = int(target.labels.get(LABEL_OWNER) or 0)
        try:
            sidecar = api.create_container(
                image,
                name=f"{self.container_name(lab, node)}-sidecar-{secrets.token_hex(3)}",
                command=command,
                labels=self._labels(lab, owner, **{LABEL_SIDECAR: node}),
                host_config=host_config,
            )["Id"]
        except docker.errors.APIError as exc:
            raise EngineError(f"Could not start a sidecar next to {node}: {exc.explanation or exc}") from exc
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"The Docker engine is not reachable ({exc}).") from exc
        try:
            api.start(sidecar)
            exit_code = api.wait(sidecar, timeout=SIDECAR_TIMEOUT)["StatusCode"]
            output = api.logs(sidecar, stdout=True, stderr=True)
        # APIError is a requests HTTPError too: it must be caught before the timeout below.
        except docker.errors.APIError as exc:
            raise EngineError(f"Could not run a command on {node}'s network: {exc.explanation or exc}") from exc
        except requests.exceptions.RequestException as exc:
            raise EngineError(f"The command on {node}'s network did not finish within {SIDECAR_TIMEOUT} s.") from exc
        finally:
            self._remove_sidecar(lab, node, sidecar)
        return ExecResult(exit_code=exit_code, output=output.decode(errors="replace"))

    def _remove_sidecar(self, lab: str, node: str, sidecar: str) -> None:
        try:
            self.client.api.remove_container(sidecar, force=True)
        except docker.errors.NotFound:
            pass  # the lab was removed meanwhile, sidecar included
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: the lab's removal got there first
                logger.warning("lab %s: could not remove the sidecar of %s: %s", lab, node, exc)
        except docker.errors.DockerException as exc:
            # Labelled with the lab: the reaper or the lab's stop removes it later.
            logger.warning("lab %s: could not remove the sidecar of %s: %s", lab, node, exc)

    NODE_ACTIONS = ("kill", "stop", "pause", "unpause", "restart")

    def act_on_node(self, lab: str, node: str, action: str) -> None:
        """kill, stop, pause, unpause or restart one node."""
        if action not in self.NODE_ACTIONS:
            raise ValueError(f"unknown node action {action!r}")
        container = self._container(lab, node)
        try:
            if action == "kill":
                container.kill()
            elif action == "stop":
                container.stop(timeout=5)
            elif action == "pause":
                container.pause()
            elif action == "unpause":
                container.unpause()
            else:
                container.restart(timeout=5)
        except docker.errors.APIError as exc:
            raise EngineError(f"Could not {action} {node}: {exc.explanation or exc}") from exc

    # -- whole labs -------------------------------------------------------------------------

    def remove_lab(self, lab: str) -> int:
        """Remove every container and network of a lab; returns how many objects went."""
        removed = 0
        try:
            for container in self.client.containers.list(all=True, filters=self._filters(lab)):
                try:
                    container.remove(force=True, v=True)
                    removed += 1
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as exc:
                    # Another remover got there first ("removal already in progress").
                    if exc.status_code != 409:
                        raise
                    logger.info("lab %s: %s already being removed", lab, container.name)
            for network in self.client.networks.list(filters=self._filters(lab)):
                try:
                    network.remove()
                    removed += 1
                except docker.errors.NotFound:
                    pass
        except docker.errors.DockerException as exc:
            raise EngineError(f"Could not remove lab {lab}: {exc}") from exc
        return removed

    def lab_ids(self) -> set[str]:
        """Every lab id that has a container or a network of this instance on the engine."""
        try:
            containers = self.client.api.containers(all=True, filters=self._filters())
            networks = self.client.api.networks(filters=self._filters())
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"The Docker engine is not reachable ({exc}).") from exc
        labels = [c.get("Labels") or {} for c in containers] + [n.get("Labels") or {} for n in networks]
        return {item[LABEL_LAB] for item in labels if item.get(LABEL_LAB)}

    # -- streams ----------------------------------------------------------------------------

    def events(self, since: float | None = None, actions: Iterable[str] | None = None) -> EventStream:
        """Container events of this instance's labs, only `actions` if given (an action with a
        colon, like "health_status: healthy", is asked for by its part before the colon); blocks
        until `close()` from another thread."""
        filters: dict[str, list[str]] = {"type": ["container"], **self._filters()}
        if actions is not None:
            filters["event"] = sorted({action.partition(":")[0].strip() for action in actions})
        try:
            stream = self.client.events(decode=True, since=int(since) if since else None, filters=filters)
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"The Docker engine is not reachable ({exc}).") from exc
        return EventStream(stream)

    def follow_output(self, lab: str, node: str) -> Iterator[str]:
        """Lines a node prints from now on; ends when the container goes away."""
        container = self._container(lab, node)
        buffer = b""
        try:
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=False, since=int(time.time())):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    yield line.decode(errors="replace")
        except docker.errors.DockerException as exc:
            raise EngineError(f"Lost the output of {node}: {exc}") from exc

    # -- terminals --------------------------------------------------------------------------

    def open_terminal(self, lab: str, node: str, cols: int, rows: int, command: list[str] | None = None) -> Terminal:
        """An interactive shell (or `command`) on a running node, on a TTY of cols x rows."""
        container = self._container(lab, node)
        if container.status != "running":
            raise EngineError(f"Node {node} is not running ({container.status}): start it before opening a terminal.")
        api = self.client.api
        mark = secrets.token_hex(8)
        try:
            exec_id = api.exec_create(
                container.id,
                command or TERMINAL_SHELL,
                tty=True,
                stdin=True,
                stdout=True,
                stderr=True,
                environment={"TERM": "xterm-256color", TERMINAL_MARK: mark},
            )["Id"]
            stream = api.exec_start(exec_id, socket=True, tty=True)
        except docker.errors.APIError as exc:
            raise EngineError(f"Could not open a terminal on {node}: {exc.explanation or exc}") from exc
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(f"The Docker engine is not reachable ({exc}).") from exc
        terminal = Terminal(api, container.id, exec_id, stream, mark, f"{lab}/{node}")
        try:
            terminal.resize(cols, rows)
        except EngineError:
            terminal.close()
            raise
        return terminal


class EventStream:
    """Node events from the engine; iterate it, and `close()` it from another thread to stop."""

    def __init__(self, stream: CancellableStream) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[NodeEvent]:
        for raw in self._stream:
            action = raw.get("Action") or raw.get("status") or ""
            # Health checks run as execs and flood the stream with exec_* events.
            if action.startswith("exec_"):
                continue
            attributes = (raw.get("Actor") or {}).get("Attributes") or {}
            if LABEL_LAB not in attributes or LABEL_NODE not in attributes:
                continue
            yield NodeEvent(
                lab=attributes[LABEL_LAB],
                name=attributes[LABEL_NODE],
                action=action,
                time=raw.get("timeNano", 0) / 1e9 or float(raw.get("time", time.time())),
            )

    def close(self) -> None:
        """Stop the stream; safe to call more than once (stop() and shutdown may both call it)."""
        try:
            self._stream.close()
        except OSError:
            pass  # the socket is already closed: the stream has ended, which is what was asked


class Terminal:
    """A shell on a node's TTY (a `docker exec` with a TTY) as a raw byte stream both ways.

    `read` blocks, so give it a thread of its own; `close` from any other thread ends it.
    """

    def __init__(
        self, api: docker.APIClient, container: str, exec_id: str, stream: socket.SocketIO, mark: str, name: str
    ) -> None:
        self._api = api
        self._container = container
        self._exec_id = exec_id
        self._mark = mark
        self._name = name  # lab/node, for log lines
        self._stream = stream  # the SDK's read-only SocketIO over the hijacked connection
        self._sock: socket.socket = stream._sock
        # The connection carries the client's 60 s timeout: an idle shell would "end" after a minute.
        self._sock.settimeout(None)
        # The HTTP client parsed the 101 response through a buffered reader over this socket, so
        # bytes the shell printed in the same packet as the headers may already sit in its buffer.
        response = getattr(stream, "_response", None)
        buffered = getattr(getattr(getattr(response, "raw", None), "_fp", None), "fp", None)
        self._read = buffered.read1 if getattr(buffered, "raw", None) is stream else stream.read
        self._close_lock = threading.Lock()
        self._closed = False

    def read(self, size: int) -> bytes:
        """Up to `size` bytes of output as soon as there are any; b"" once the shell has ended."""
        try:
            return self._read(size)
        except (OSError, ValueError) as exc:  # ValueError: read after `close` closed the file
            if not self._closed:
                logger.info("terminal %s: output stream broke: %s", self._name, exc)
            return b""

    def write(self, data: bytes) -> None:
        """Keystrokes or pasted text, as the TTY should receive them."""
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise EngineError("The terminal has closed.") from exc

    def resize(self, cols: int, rows: int) -> None:
        try:
            self._api.exec_resize(self._exec_id, height=rows, width=cols)
        except docker.errors.DockerException as exc:
            raise EngineError(f"Could not resize the terminal: {exc}") from exc

    def exit_code(self) -> int | None:
        """The shell's exit code, or None while it runs (or when the engine cannot tell)."""
        try:
            info = self._api.exec_inspect(self._exec_id)
        except docker.errors.DockerException as exc:
            logger.info("terminal %s: no exit code: %s", self._name, exc)
            return None
        return None if info.get("Running") else info.get("ExitCode")

    def close(self) -> None:
        """End the terminal: drop the connection and hang up whatever still runs on the TTY.

        Docker keeps an exec running after its client goes away (the shell would live on, holding
        one of the node's few pids), so every process carrying this terminal's mark gets SIGHUP,
        as a real terminal's hang-up would send.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a `read` blocked in another thread
        except OSError:
            pass  # the engine already closed it
        self._sock.close()
        self._stream.close()
        if self.exit_code() is not None:
            return
        try:
            hangup_id = self._api.exec_create(self._container, ["sh", "-c", HANGUP, "hangup", self._mark])["Id"]
            self._api.exec_start(hangup_id)
        except docker.errors.DockerException as exc:
            # A paused or vanished node: nothing can be hung up now (a removed node took it along).
            logger.warning("terminal %s: could not hang up its shell: %s", self._name, exc)
