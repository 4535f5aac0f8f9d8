"""Disks are bounded, on the real engine: a node's root is read-only and it writes only to its
declared writable paths (size-limited tmpfs), so a learner's `dd` of 1 GiB stops at a path's size
and the host's disk does not fill; files and the image's content of a writable path are there at
every start; older image tags are pruned without touching an image a container uses."""

from __future__ import annotations

import io
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import docker.models.images
import pytest
import requests.exceptions
from django.contrib.auth.models import User

from sandbox import lifecycle
from sandbox.engine import (
    LABEL_BASE,
    LABEL_INSTANCE,
    NODE_REPOSITORY,
    Engine,
    EngineError,
    EngineUnavailable,
    Network,
    NodeFile,
    NodeRun,
)
from sandbox.models import Lab
from sandbox.nodestates import state_from_status
from sandbox.specs import load_lab

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

MIB = 1024**2
# Writes a learner (the image's user, uid 10001 on app) might try, and where each must stop.
FILL = 'dd if=/dev/zero of="$1" bs=1M count=1024 2>&1 | tail -n 1; stat -c %s "$1" 2>/dev/null || echo 0'


def wait_healthy(engine: Engine, lab: str, node: str) -> None:
    deadline = time.monotonic() + 30
    while not any(s.name == node and state_from_status(s) == "healthy" for s in engine.node_statuses(lab)):
        assert time.monotonic() < deadline, f"{node} not healthy within 30s"
        time.sleep(0.2)


def host_free_bytes(engine: Engine) -> int:
    """Free bytes on the file system that holds the engine's containers (a local engine)."""
    root = Path(engine.client.info()["DockerRootDir"])
    stat = os.statvfs(root)
    return stat.f_bavail * stat.f_frsize


def fill(engine: Engine, lab: str, node: str, path: str) -> tuple[str, int]:
    """dd 1 GiB of zeros to `path` as the node's user: (dd's last line, bytes that landed)."""
    result = engine.exec(lab, node, ["sh", "-c", FILL, "fill", path], timeout=60)
    *said, size = result.output.strip().splitlines()
    return " ".join(said), int(size)


def test_a_learner_cannot_write_a_gibibyte_anywhere_in_a_node(engine: Engine, learner: User) -> None:
    lab = Lab.objects.create(
        owner=learner, lab_slug="scaling-load-balancer", lesson_slug="load-balancing", state=Lab.State.READY
    )
    package = load_lab("scaling-load-balancer")
    node = "app-3"
    try:
        network = engine.create_network(lab.short_id, lab.owner_id)
        images = {n.name: engine.ensure_image(package.build_context(n)) for n in package.spec.nodes}
        run = next(run for _, run in lifecycle._node_runs(package, lab, images, network) if run.name == node)
        assert run.writable == {"/tmp": 16 * MIB, "/var/lib/app": 16 * MIB}
        engine.start_node(run, network)
        wait_healthy(engine, lab.short_id, node)
        assert engine.exec(lab.short_id, node, ["id", "-u"]).output.strip() == "10001"
        home = engine.exec(lab.short_id, node, ["sh", "-c", 'echo "$HOME"']).output.strip()
        assert home == "/opt/app"
        free_before = host_free_bytes(engine)

        landed = {}
        for path in ["/fill", "/tmp/fill", f"{home}/fill", "/var/lib/app/fill", "/var/tmp/fill", "/dev/shm/fill"]:
            said, size = fill(engine, lab.short_id, node, path)
            print(f"{path}: {size / MIB:.1f} MiB ({said})")
            landed[path] = size
        # Declared writable paths stop at their size, /dev/shm at its own; everything else refuses.
        assert landed["/tmp/fill"] == 16 * MIB
        assert landed["/var/lib/app/fill"] <= 16 * MIB
        assert landed["/dev/shm/fill"] == 8 * MIB
        assert landed["/fill"] == landed[f"{home}/fill"] == landed["/var/tmp/fill"] == 0

        name = engine.container_name(lab.short_id, node)
        (container,) = engine.client.api.containers(all=True, size=True, filters={"name": f"^/{name}$"})
        print(
            f"writable layer {container.get('SizeRw', 0) / 1024:.0f} KiB; host free disk changed by "
            f"{(host_free_bytes(engine) - free_before) / MIB:+.0f} MiB"
        )
        assert engine.client.api.inspect_container(name)["HostConfig"]["ReadonlyRootfs"] is True
        # SizeRw is left out when 0; mount points are all the layer may hold.
        assert container.get("SizeRw", 0) < MIB
        # Other labs share the disk (and may build images meanwhile): far below the 1 GiB asked.
        assert free_before - host_free_bytes(engine) < 128 * MIB

        # Full disks, not a dead node: it answers, and heals once the fillers are gone.
        assert state_from_status(next(s for s in engine.node_statuses(lab.short_id) if s.name == node)) != "exited"
        engine.exec(lab.short_id, node, ["rm", "-f", "/tmp/fill", "/var/lib/app/fill", "/dev/shm/fill"])
        answer = engine.exec(
            lab.short_id,
            node,
            ["python3", "-c", "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/').status)"],
        )
        assert answer.output.strip() == "200"
    finally:
        engine.remove_lab(lab.short_id)


def test_writable_paths_start_with_the_images_content_and_the_labs_files_at_every_start(
    engine: Engine, learner: User
) -> None:
    """A read-only root with a writable /etc/demo: the image's file and the lab's file are in it,
    editable by the node's user; a file outside every writable path is in place, read-only; a
    restart brings the original contents back (tmpfs starts empty; the node image seeds it)."""
    lab = secrets.token_hex(4)
    image = engine.ensure_pulled("debian:bookworm-slim")
    network = engine.create_network(lab, learner.pk)
    try:
        run = NodeRun(
            lab=lab,
            owner=learner.pk,
            name="box",
            group="box",
            image=image,
            ip=network.address(10),
            command=["sleep", "infinity"],
            user="nobody",
            memory_bytes=64 * MIB,
            writable={"/etc/apt": 1 * MIB, "/tmp": 4 * MIB},
            files=[
                NodeFile(path="/etc/apt/lab.conf", content=b"from the lab\n", mode=0o640),
                NodeFile(path="/opt/lab/tool.sh", content=b"#!/bin/sh\necho tool\n", mode=0o755),
            ],
        )
        engine.start_node(run, network)

        def box(command: str) -> str:
            return engine.exec(lab, "box", ["sh", "-c", command]).output

        assert box("cat /etc/apt/lab.conf; stat -c '%U %a' /etc/apt/lab.conf") == "from the lab\nnobody 640\n"
        assert box("test -f /etc/apt/sources.list.d/debian.sources && echo image") == "image\n"
        assert box("/opt/lab/tool.sh; stat -c '%U %a' /opt/lab/tool.sh") == "tool\nnobody 755\n"
        assert "Read-only file system" in box("echo x >> /opt/lab/tool.sh 2>&1")
        box("sed -i 's/lab/learner/' /etc/apt/lab.conf && echo new > /etc/apt/new.conf")
        assert box("cat /etc/apt/lab.conf /etc/apt/new.conf") == "from the learner\nnew\n"
        df = box("df -k /etc/apt | tail -n 1").split()
        assert int(df[1]) == 1024  # its own 1 MiB tmpfs

        engine.act_on_node(lab, "box", "restart")
        assert box("cat /etc/apt/lab.conf; ls /etc/apt/new.conf 2>&1") == (
            "from the lab\nls: cannot access '/etc/apt/new.conf': No such file or directory\n"
        )
    finally:
        engine.remove_lab(lab)


@pytest.fixture
def prune_repository(engine: Engine, tmp_path: Path):  # noqa: ANN201
    """Three builds of a throwaway image (stacklab/disk-prune-<random>:<digest>), oldest first."""
    context = tmp_path / f"disk-prune-{secrets.token_hex(3)}"
    context.mkdir()
    tags = []
    for version in range(3):
        (context / "Dockerfile").write_text(f"FROM debian:bookworm-slim\nLABEL version={version}\n")
        tags.append(engine.ensure_image(context))
    repository = tags[0].rpartition(":")[0]
    yield repository, tags
    client = engine.client
    ids = {image.id for image in client.images.list(name=repository)}
    for container in client.api.containers(all=True):
        if container["ImageID"] in ids:
            client.api.remove_container(container["Id"], force=True)
    for image in client.images.list(name=NODE_REPOSITORY):
        if image.labels.get("stacklab.base") in ids:
            client.images.remove(image.id, force=True)
    for image_id in ids:
        client.images.remove(image_id, force=True)


def test_pruning_removes_older_tags_no_container_uses(
    engine: Engine, learner: User, prune_repository: tuple[str, list[str]]
) -> None:
    repository, (oldest, older, newest) = prune_repository
    client = engine.client
    # The oldest build still has a (stopped) container; a node image was built on the older one;
    # an image of the same repository without Stacklab's label is someone else's.
    stopped = client.containers.create(oldest, ["true"], labels={LABEL_INSTANCE: engine.instance})
    node_image = engine._node_image(
        NodeRun(lab="x", owner=learner.pk, name="n", group="n", image=older, ip="", writable={"/tmp": MIB})
    )
    assert client.images.get(node_image).labels["stacklab.base"] == client.images.get(older).id
    foreign = client.images.build(
        fileobj=io.BytesIO(b"FROM debian:bookworm-slim\nLABEL foreign=1\n"),
        tag=f"{repository}:foreign",
        pull=False,
        rm=True,
        forcerm=True,
    )[0]

    removed = engine.prune_images([newest], min_age=0)

    assert sorted(removed) == sorted([older, node_image])
    present = {tag for image in client.images.list(name=repository) for tag in image.tags}
    assert present == {oldest, newest, f"{repository}:foreign"}
    assert foreign.id == client.images.get(f"{repository}:foreign").id
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(node_image)
    assert engine.prune_images([newest], min_age=0) == []  # nothing more: the rest is in use or kept

    stopped.remove()  # the last container of the oldest build is gone: so can its image
    assert engine.prune_images([newest], min_age=0) == [oldest]


def box_run(lab: str, owner: int, image: str, network: Network | None, **fields: object) -> NodeRun:
    """A small node of `image` that sleeps, for the tests below."""
    defaults: dict[str, object] = {
        "command": ["sleep", "infinity"],
        "memory_bytes": 64 * MIB,
        "writable": {"/tmp": MIB},
    }
    return NodeRun(
        lab=lab,
        owner=owner,
        name="box",
        group="box",
        image=image,
        ip=network.address(10) if network else "",
        **{**defaults, **fields},  # type: ignore[arg-type]
    )


def wait_state(engine: Engine, lab: str, node: str, wanted: str) -> None:
    deadline = time.monotonic() + 30
    while not any(s.name == node and s.status == wanted for s in engine.node_statuses(lab)):
        assert time.monotonic() < deadline, f"{node} not {wanted} within 30s"
        time.sleep(0.2)


def remove_images(engine: Engine, ids: set[str]) -> None:
    """Remove these images and the node images built on them (a test's own, never others')."""
    client = engine.client
    for image in client.images.list(filters={"label": LABEL_BASE}):
        if image.labels.get(LABEL_BASE) in ids:
            client.images.remove(image.id, force=True)
    for image_id in ids:
        try:
            client.images.remove(image_id, force=True)
        except docker.errors.ImageNotFound:
            pass


def dangling_volumes(engine: Engine) -> set[str]:
    return {volume["Name"] for volume in engine.client.api.volumes(filters={"dangling": True})["Volumes"] or []}


@pytest.fixture
def volume_image(engine: Engine) -> Iterator[str]:
    """A throwaway stacklab/disk-volume-<random>:1, the app image plus `VOLUME /data`, labelled as
    Stacklab's (so the reaper and prune know it), removed afterwards with what was built on it."""
    package = load_lab("scaling-load-balancer")
    app = engine.ensure_image(package.build_context(package.spec.node("app")))
    tag = f"stacklab/disk-volume-{secrets.token_hex(3)}:1"
    image, _ = engine.client.images.build(
        fileobj=io.BytesIO(f"FROM {app}\nVOLUME /data\n".encode()),
        tag=tag,
        pull=False,
        rm=True,
        forcerm=True,
        labels={LABEL_INSTANCE: "image"},
    )
    yield tag
    remove_images(engine, {image.id})


def test_an_image_volume_must_be_a_writable_path_or_the_node_does_not_start(
    engine: Engine, learner: User, volume_image: str
) -> None:
    """Docker gives an image's VOLUME an anonymous volume on the host's disk, unbounded even under
    a read-only root: a node of such an image starts only with that path declared writable."""
    lab = secrets.token_hex(4)
    network = engine.create_network(lab, learner.pk)
    try:
        with pytest.raises(EngineError, match=r"VOLUME /data, .*host's disk.*declare it under writable"):
            engine.start_node(box_run(lab, learner.pk, volume_image, network, writable={"/tmp": MIB}), network)
        assert engine.node_statuses(lab) == []

        run = box_run(lab, learner.pk, volume_image, network, writable={"/tmp": MIB, "/data": MIB})
        volumes_before = dangling_volumes(engine)
        engine.start_node(run, network)
        # Nor did preparing it leave one behind (the container created to read the image's users
        # gets the image's VOLUME too).
        assert dangling_volumes(engine) - volumes_before == set()
        wait_state(engine, lab, "box", "running")
        mounts = engine.client.api.inspect_container(engine.container_name(lab, "box"))["Mounts"]
        assert [mount for mount in mounts if mount["Type"] == "volume"] == []
        _, size = fill(engine, lab, "box", "/data/fill")
        assert size <= MIB  # of the 1 GiB asked: /data is the 1 MiB tmpfs
    finally:
        engine.remove_lab(lab)


def test_nodes_and_sidecars_dump_no_core(engine: Engine, learner: User) -> None:
    lab = secrets.token_hex(4)
    image = engine.ensure_pulled("debian:bookworm-slim")
    network = engine.create_network(lab, learner.pk)
    try:
        engine.start_node(box_run(lab, learner.pk, image, network), network)
        wait_state(engine, lab, "box", "running")
        limits = ["sh", "-c", "ulimit -c; ulimit -H -c"]
        assert engine.exec(lab, "box", limits).output == "0\n0\n"
        assert engine.run_sidecar(lab, "box", image, limits, []).output == "0\n0\n"
    finally:
        engine.remove_lab(lab)


def test_a_writable_path_that_is_a_file_in_the_image_is_refused_with_its_name(engine: Engine, learner: User) -> None:
    image = engine.ensure_pulled("debian:bookworm-slim")
    run = box_run("x", learner.pk, image, None, writable={"/tmp": MIB, "/etc/debian_version": MIB})
    with pytest.raises(EngineError, match=r"^Node box: writable path /etc/debian_version is a file in the image"):
        engine._node_image(run)


def test_a_node_whose_seed_does_not_fit_says_so_in_its_last_output(engine: Engine, learner: User) -> None:
    lab = secrets.token_hex(4)
    image = engine.ensure_pulled("debian:bookworm-slim")
    network = engine.create_network(lab, learner.pk)
    try:
        # Debian's /usr/share holds about 6 MiB: its seed cannot fit in 1 MiB.
        engine.start_node(box_run(lab, learner.pk, image, network, writable={"/usr/share": MIB}), network)
        wait_state(engine, lab, "box", "exited")
        said = engine.last_output(lab, "box")
        assert said.splitlines()[-1] == "stacklab: could not fill /usr/share (more than its writable size?)"
        assert len(said.splitlines()) <= 5
    finally:
        engine.remove_lab(lab)


def test_concurrent_starts_build_a_new_node_image_once(engine: Engine, learner: User) -> None:
    image = engine.ensure_pulled("debian:bookworm-slim")
    marker = secrets.token_hex(8).encode()  # new content: no node image has it yet
    run = box_run("x", learner.pk, image, None, files=[NodeFile(path="/opt/marker", content=marker)])
    client = engine.client
    leftovers = {"label": f"{LABEL_BASE}={image}", "dangling": True}
    before = {i.id for i in client.images.list(filters=leftovers)}
    tags: list[str] = []
    threads = [threading.Thread(target=lambda: tags.append(engine._node_image(run))) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(tags) == 3 and len(set(tags)) == 1
        assert {i.id for i in client.images.list(filters=leftovers)} - before == set()  # none left untagged
    finally:
        for image_id in {i.id for i in client.images.list(filters=leftovers)} - before:
            client.images.remove(image_id, force=True)
        if tags:
            client.images.remove(tags[0], force=True)


def test_pruning_skips_recent_images_but_not_leftovers(
    engine: Engine, learner: User, prune_repository: tuple[str, list[str]]
) -> None:
    """Images younger than min_age stay (a worker of the previous deploy may be about to start
    them); a node image no tag names, or one without the base label, goes whatever its age."""
    repository, (oldest, older, newest) = prune_repository
    client = engine.client
    base = client.images.get(older).id
    labels = {LABEL_INSTANCE: "image", LABEL_BASE: base, "stacklab.base.repository": repository}
    dangling, _ = client.images.build(
        fileobj=io.BytesIO(f"FROM {older}\nLABEL leftover=1\n".encode()), pull=False, rm=True, labels=labels
    )
    unlabelled_tag = f"{NODE_REPOSITORY}:disk2-{secrets.token_hex(4)}"
    unlabelled, _ = client.images.build(
        fileobj=io.BytesIO(f"FROM {older}\nLABEL leftover=2\n".encode()),
        tag=unlabelled_tag,
        pull=False,
        rm=True,
        labels={LABEL_INSTANCE: "image"},
    )
    try:
        removed = engine.prune_images([newest])  # everything here is seconds old

        assert dangling.id in removed and unlabelled_tag in removed
        assert not set(removed) & {oldest, older}
        present = {tag for image in client.images.list(name=repository) for tag in image.tags}
        assert present == {oldest, older, newest}

        assert sorted(engine.prune_images([newest], now=time.time() + 3600)) == sorted([oldest, older])
    finally:
        remove_images(engine, {dangling.id, unlabelled.id})


def test_a_failed_image_lookup_is_an_engine_error_and_a_lost_engine_is_unavailable(
    engine: Engine, learner: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = engine.ensure_pulled("debian:bookworm-slim")
    run = box_run("x", learner.pk, image, None, files=[NodeFile(path="/opt/x", content=secrets.token_bytes(8))])

    def refuse(self: object, name: str) -> None:
        raise docker.errors.APIError("500 Server Error: layer does not exist")

    monkeypatch.setattr(docker.models.images.ImageCollection, "get", refuse)
    with pytest.raises(EngineError, match="layer does not exist") as raised:
        engine._node_image(run)
    assert not isinstance(raised.value, EngineUnavailable)

    def lost(self: object, name: str) -> None:
        raise requests.exceptions.ConnectionError("Connection aborted.")

    monkeypatch.setattr(docker.models.images.ImageCollection, "get", lost)
    with pytest.raises(EngineUnavailable):
        engine._node_image(run)
