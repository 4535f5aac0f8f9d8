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
import json
import logging
import secrets
import shlex
import socket
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker.types import CancellableStream, Ulimit

from sandbox.specs import is_inside

logger = logging.getLogger(__name__)

LABEL_INSTANCE = "stacklab.instance"
LABEL_LAB = "stacklab.lab"
LABEL_OWNER = "stacklab.owner"
LABEL_NODE = "stacklab.node"
LABEL_GROUP = "stacklab.group"
# Each lab's bridge on the host is named LAB_BRIDGE_PREFIX + its short id (12 hex: 15 characters,
# the kernel's limit), so the host firewall can match lab traffic by the interface it arrives
# on (`-i sl-+`), which a node cannot forge as it can its source address. "sl-" matches no
# interface the kernel, Docker or a distribution names by itself ("sl0" is SLIP's, no dash).
LAB_BRIDGE_PREFIX = "sl-"
# On a fault's sidecar instead of LABEL_NODE (it is not a node): the node whose network it changes.
LABEL_SIDECAR = "stacklab.sidecar"
SIDECAR_TIMEOUT = 30  # seconds a sidecar may run before it is killed and the fault fails
SIDECAR_MEMORY = 32 * 1024**2
BASE_IMAGE = "debian:bookworm-slim"
# /dev/shm of nodes: a tmpfs like the writable paths, charged to the memory limit (and counted
# by the spec loader, specs.SHM_SIZE). Enough for PostgreSQL's dynamic shared memory in a lab.
SHM_BYTES = 8 * 1024**2
# Node images: a lab image plus what its nodes need on a read-only root (see `_node_image`).
NODE_REPOSITORY = "stacklab/node"
LABEL_BASE = "stacklab.base"  # on a node image: the id of the image it was built from
LABEL_BASE_REPOSITORY = "stacklab.base.repository"  # and that image's repository, if it had a tag
# Inside a node image: the seed of each writable path, and the entrypoint that copies it in.
SEED_DIR = "/.stacklab/seed"
SEED_SCRIPT = "/.stacklab/seed.sh"
# Seconds a tagged image must have existed before `prune_images` may remove it: a worker still on
# the previous deploy may have read a tag and start nodes on it 10-30 s later.
PRUNE_MIN_AGE = 30 * 60
# No core files: dockerd's unit sets LimitCORE=infinity and containers inherit it, and where the
# host's core_pattern pipes to systemd-coredump a learner's crash loop would write to its disk.
NO_CORE_DUMPS = [Ulimit(name="core", soft=0, hard=0)]
# What the build of a node image says when a writable path is a file in the image: a tmpfs
# mounts only over a directory (the engine's own error names neither path nor cure).
NOT_A_DIRECTORY = (
    "stacklab: writable path $path is a file in the image, not a directory: make its directory writable instead"
)
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
    # path -> bytes: the only places the node can write (its root is read-only). Each is a
    # size-limited tmpfs that starts with what the image (and `files`) put there, so a full disk
    # (a disk fault, a learner's dd) stops at its size and never reaches the host's disk.
    writable: dict[str, int] = field(default_factory=dict)
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


def _repositories(image: docker.models.images.Image) -> set[str]:
    return {tag.rpartition(":")[0] for tag in image.tags}


def _made_at(image: docker.models.images.Image) -> float:
    """When an image got its content or last got a tag (a rebuild from cache keeps the old
    Created time but tags it anew), as a Unix time."""
    times = [image.attrs.get("Created") or "", (image.attrs.get("Metadata") or {}).get("LastTagTime") or ""]
    # The engine writes nanoseconds, which fromisoformat does not read: seconds are enough here.
    seconds = [datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S") for value in times if len(value) >= 19]
    return max((moment.replace(tzinfo=UTC).timestamp() for moment in seconds), default=0.0)


# One build at a time per node image tag in this process: threads starting nodes that need the
# same new content would otherwise each build it and leave all but the last untagged. Other
# processes may still race; `prune_images` removes what such a race leaves.
_build_locks: dict[str, threading.Lock] = {}
_build_locks_guard = threading.Lock()


def _build_lock(tag: str) -> threading.Lock:
    with _build_locks_guard:
        return _build_locks.setdefault(tag, threading.Lock())


def _seed_script(paths: list[str]) -> str:
    """The entrypoint of a node image: fill each writable path (a new, empty tmpfs at every start)
    with its seed, then run the image's own entrypoint and command. A seed that does not fit in
    its path's size stops the node with a line saying so, rather than starting it half-filled."""
    quoted = " ".join(shlex.quote(path) for path in paths) or "''"
    return f"""#!/bin/sh
# Stacklab: this node's root is read-only; its writable paths are size-limited tmpfs mounts that
# start empty. Copy in what the image and the lab put there, then start the node's command.
for path in {quoted}; do
    [ -n "$path" ] && [ -d "{SEED_DIR}$path" ] || continue
    if ! cp -Rp "{SEED_DIR}$path/." "$path/"; then
        echo "stacklab: could not fill $path (more than its writable size?)" >&2
        exit 1
    fi
done
exec "$@"
"""


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

    def bridge_name(self, lab: str) -> str:
        """The host interface of a lab's network; a lab id too long for it is hashed."""
        if len(LAB_BRIDGE_PREFIX + lab) > 15:
            lab = hashlib.sha256(lab.encode()).hexdigest()[:12]
        return LAB_BRIDGE_PREFIX + lab

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

    def prune_images(self, keep: Iterable[str], min_age: float = PRUNE_MIN_AGE, now: float | None = None) -> list[str]:
        """Remove what older builds left: every other tag of the repositories of `keep` (tags
        `stacklab/<role>:<digest>`) and the node images built on them. Returns what went.

        Only images labelled as Stacklab's are looked at, and none that a container uses
        (running or stopped, of any instance or lab), so a lab never loses its image. Nor one
        built or tagged less than `min_age` seconds before `now`: during a deploy, a worker of the
        previous release may have just built a node image it is about to start (its base stays
        too). A worker that read an old tag and builds nothing on it is not seen: restart the
        workers before `build_lab_images` prunes, or keep it to a quiet moment. Leftovers go
        whatever their age: node images no tag names any more (concurrent builds of one tag in
        several workers) and node images without the base label.
        """
        now = time.time() if now is None else now
        try:
            kept = {self.client.images.get(tag).id for tag in keep}
            repositories = {tag.rpartition(":")[0] for tag in keep}
            used = {container["ImageID"] for container in self.client.api.containers(all=True)}
            ours = self.client.images.list(filters={"label": LABEL_INSTANCE})
        except docker.errors.DockerException as exc:
            raise EngineError(f"Could not list images to prune: {exc}") from exc
        # Lab images of those repositories that older builds left, tagged or not: removing the
        # tag of an image that node images are built on only untags it, and only they know it.
        old_bases = {
            image.id for image in ours if not image.labels.get(LABEL_BASE) and _repositories(image) & repositories
        } | {
            image.labels[LABEL_BASE]
            for image in ours
            if image.labels.get(LABEL_BASE) and image.labels.get(LABEL_BASE_REPOSITORY) in repositories
        }
        old_bases -= kept
        leftovers = {
            image.id
            for image in ours
            if (image.labels.get(LABEL_BASE) and not image.tags)
            or (NODE_REPOSITORY in _repositories(image) and not image.labels.get(LABEL_BASE))
        }
        young = {image.id for image in ours if now - _made_at(image) < min_age}
        # A base that a node image was just built on is in use by a worker too.
        young |= {image.labels[LABEL_BASE] for image in ours if image.id in young and image.labels.get(LABEL_BASE)}
        stale = [
            image
            for image in ours
            if image.id not in kept
            and image.id not in used
            and (
                image.id in leftovers
                or (image.id not in young and (image.id in old_bases or image.labels.get(LABEL_BASE) in old_bases))
            )
        ]
        # Node images first: an image that others are built on cannot go before them.
        stale.sort(key=lambda image: not image.labels.get(LABEL_BASE))
        removed = []
        for image in stale:
            for tag in image.tags or [image.id]:
                try:
                    self.client.images.remove(tag)
                except docker.errors.NotFound:
                    continue
                except docker.errors.APIError as exc:
                    # 409: a container started on it meanwhile, or a node image in use is built on
                    # it; it goes at a later prune.
                    logger.info("kept image %s: %s", tag, exc.explanation or exc)
                    continue
                removed.append(tag)
        return removed

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
                            options={"com.docker.network.bridge.name": self.bridge_name(lab)},
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
        """Create and start one hardened container on the lab network; returns its id.

        Its root file system is read-only: the node writes only to `run.writable`, size-limited
        tmpfs mounts whose pages count against its memory limit. The engine here (overlay2 on
        ext4) cannot limit a container's writable layer (`--storage-opt size` needs xfs with
        pquota), so a writable layer would let one node fill the host's disk.
        """
        image = self._node_image(run)
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
            read_only=True,
            shm_size=SHM_BYTES,
            ulimits=NO_CORE_DUMPS,
            network_mode=network.name,
            # On an internal network, looking up a stopped container's name hangs 20 s before
            # failing (moby/moby#43430); bounded lookups keep a dead replica from stalling peers.
            dns_opt=["timeout:1", "attempts:1"],
            log_config={"type": "json-file", "config": {"max-size": "1m", "max-file": "2"}},
            tmpfs=self._writable_mounts(run) or None,
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
                image,
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
            api.start(created["Id"])
        except docker.errors.DockerException as exc:
            raise EngineError(f"Could not start node {run.name}: {exc}") from exc
        return created["Id"]

    def _writable_mounts(self, run: NodeRun) -> dict[str, str]:
        """tmpfs options per writable path. Owned by the node's user, not opened with mode=1777:
        over a directory the image has, the engine copies that directory's mode onto the tmpfs and
        ignores mode=. `exec`: a learner may run a script they wrote in /tmp, as on any machine."""
        if not run.writable:
            return {}
        uid, gid = self._runtime_ids(run.image, run.user)
        return {path: f"size={size},uid={uid},gid={gid},exec" for path, size in run.writable.items()}

    def _node_image(self, run: NodeRun) -> str:
        """The image a node runs: `run.image` plus what a read-only root needs, built once per
        content (tagged `stacklab/node:<digest>`) and reused by every node that needs the same.

        Docker 20.10 mounts a tmpfs empty (no `tmpcopyup` for --tmpfs, and the option is refused),
        and refuses `put_archive` into a read-only root, so neither the image's content of a
        writable path (haproxy.cfg, PostgreSQL's cluster) nor the lab's `files` could get there
        at run time. The node image carries them instead:

        1. the image's content of each writable path is copied to SEED_DIR/<path> (owned by the
           node's user, who must be able to write it later);
        2. each file goes to SEED_DIR/<path> if it lies under a writable path (a learner may edit
           it), else straight to its path, read-only like the rest of the root;
        3. the entrypoint becomes SEED_SCRIPT, which copies every seed into its (empty) tmpfs at
           each start, then runs the image's own entrypoint and command.

        A restarted node therefore starts again from these contents, like a new container.
        """
        try:
            config = self.client.api.inspect_image(run.image)
        except docker.errors.DockerException as exc:
            raise EngineError(f"Could not read image {run.image}: {exc}") from exc
        # An image's VOLUME becomes an anonymous volume on the host's disk, without a size limit,
        # read-only root or not. Only a mount at exactly its path replaces it (a tmpfs above or
        # below it does not), so each must be one of the node's writable paths.
        volumes = sorted(path.rstrip("/") or "/" for path in (config.get("Config") or {}).get("Volumes") or {})
        unbounded = [path for path in volumes if path not in run.writable]
        if unbounded:
            example = ", ".join(f'"{path}": "16m"' for path in unbounded)
            raise EngineError(
                f"The image of node {run.name} declares VOLUME {', '.join(unbounded)}, which would write to the "
                f"host's disk without a limit: declare it under writable (writable: {{{example}}})"
            )
        if not run.writable and not run.files:
            return run.image
        uid, gid = self._runtime_ids(run.image, run.user)
        paths = sorted(run.writable)
        image_user = (config.get("Config") or {}).get("User") or "0"
        entrypoint = (config.get("Config") or {}).get("Entrypoint") or []
        command = (config.get("Config") or {}).get("Cmd") or []
        quoted = " ".join(shlex.quote(path) for path in paths)
        lines = [
            f"FROM {config['Id']}",
            "USER 0",
            # First, and depending on the paths only: the build cache shares this layer between
            # node images of the same image that differ in their files.
            "RUN set -e; for path in "
            + (quoted or "''")
            + f'; do if [ -d "$path" ]; then mkdir -p "{SEED_DIR}$path"; cp -a "$path/." "{SEED_DIR}$path/";'
            + f' elif [ -e "$path" ]; then echo "{NOT_A_DIRECTORY}"; exit 1; fi; done;'
            + f" mkdir -p {SEED_DIR}; chown -R {uid}:{gid} {SEED_DIR}",
        ]
        context: dict[str, tuple[bytes, int]] = {"seed.sh": (_seed_script(paths).encode(), 0o755)}
        for index, file in enumerate(run.files):
            context[f"file-{index}"] = (file.content, file.mode)
            target = SEED_DIR + file.path if any(is_inside(file.path, path) for path in paths) else file.path
            lines.append(f"COPY --chown={uid}:{gid} file-{index} {json.dumps(target)}")
        lines += [
            f"COPY seed.sh {SEED_SCRIPT}",
            f"USER {image_user}",
            f"ENTRYPOINT {json.dumps(['/bin/sh', SEED_SCRIPT, *entrypoint])}",
            f"CMD {json.dumps(command)}",
        ]
        context["Dockerfile"] = ("\n".join(lines + [""]).encode(), 0o644)
        # The whole build context (the Dockerfile names the image by id, the user, the paths)
        # decides the tag: the same node image for every node and lab that needs the same.
        digest = hashlib.sha256()
        for name, (content, mode) in sorted(context.items()):
            digest.update(f"{name}\0{mode:o}\0{len(content)}\0".encode())
            digest.update(content)
        tag = f"{NODE_REPOSITORY}:{digest.hexdigest()[:16]}"
        with _build_lock(tag):
            if not self._has_image(tag):
                self._build_node_image(run, tag, context, config["Id"])
        return tag

    def _has_image(self, tag: str) -> bool:
        try:
            self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return False
        except requests.exceptions.ConnectionError as exc:
            raise EngineUnavailable(f"The Docker engine is not reachable ({exc}).") from exc
        except docker.errors.DockerException as exc:
            raise EngineError(f"Could not look up image {tag}: {exc}") from exc
        return True

    def _build_node_image(self, run: NodeRun, tag: str, context: dict[str, tuple[bytes, int]], base: str) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, (content, mode) in context.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(content), mode, int(time.time())
                tar.addfile(info, io.BytesIO(content))
        buffer.seek(0)
        started = time.monotonic()
        try:
            self.client.images.build(
                fileobj=buffer,
                custom_context=True,
                tag=tag,
                pull=False,
                rm=True,
                forcerm=True,
                labels={
                    LABEL_INSTANCE: "image",
                    LABEL_BASE: base,
                    # A tag names a repository; an id (a named image, `ensure_pulled`) does not.
                    LABEL_BASE_REPOSITORY: run.image.rpartition(":")[0] if not run.image.startswith("sha256:") else "",
                },
            )
        except docker.errors.BuildError as exc:
            log = "".join(str(chunk.get("stream", "")) for chunk in exc.build_log)
            said = [line for line in log.splitlines() if line.startswith("stacklab: ")]
            if said:
                raise EngineError(f"Node {run.name}: {said[-1].removeprefix('stacklab: ')}") from exc
            raise EngineError(f"Preparing the image of node {run.name} failed: {exc.msg}\n{log[-800:]}") from exc
        except docker.errors.DockerException as exc:
            raise EngineError(f"Preparing the image of node {run.name} failed: {exc}") from exc
        logger.info("built node image %s from %s in %.1fs", tag, run.image, time.monotonic() - started)

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
            # v: with the anonymous volumes an image's VOLUME gave it, or they stay on the disk.
            api.remove_container(container, force=True, v=True)

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
            shm_size=1024**2,
            ulimits=NO_CORE_DUMPS,
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
            # v: the anonymous volumes of a VOLUME in the sidecar's image would stay on the disk.
            self.client.api.remove_container(sidecar, force=True, v=True)
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

    def last_output(self, lab: str, node: str, lines: int = 5) -> str:
        """The last lines a node printed (stdout and stderr): why it stopped, say."""
        container = self._container(lab, node)
        try:
            return container.logs(stdout=True, stderr=True, tail=lines).decode(errors="replace").strip()
        except docker.errors.DockerException as exc:
            raise EngineError(f"Could not read the output of {node}: {exc}") from exc

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
