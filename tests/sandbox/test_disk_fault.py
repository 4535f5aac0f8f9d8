"""Disk faults on the real engine: app-3 gets the lab's 16 MiB scratch tmpfs at /var/lib/app,
`fill-disk-app-3` fills it so requests answer 500 "disk full" and /healthz 503, and
`free-disk-app-3` brings it back. The filler lands in a size-limited tmpfs, never the host's disk."""

from __future__ import annotations

import json
import time

import pytest
from django.contrib.auth.models import User

from sandbox import lifecycle
from sandbox.engine import Engine
from sandbox.models import Lab, LabEvent
from sandbox.nodestates import state_from_status
from sandbox.specs import load_lab

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

LAB = "scaling-load-balancer"
NODE = "app-3"
# Inside the node: GET a path on the app until it answers `want` (or 10 s pass); prints the last
# answer as JSON. Polling in one exec keeps it to one round trip to the engine.
PROBE = """
import json, sys, time, urllib.error, urllib.request
path, want = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 10
requests = 0
while True:
    requests += 1
    try:
        with urllib.request.urlopen("http://127.0.0.1:8080" + path, timeout=2) as answer:
            status, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    if status == want or time.monotonic() > deadline:
        break
    time.sleep(0.01)
print(json.dumps({"status": status, "body": body.strip(), "requests": requests}))
"""


def get_until(engine: Engine, lab: Lab, path: str, status: int) -> dict:
    result = engine.exec(lab.short_id, NODE, ["python3", "-c", PROBE, path, str(status)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def data_disk_kib(engine: Engine, lab: Lab) -> tuple[int, int]:
    """Size and used KiB of the file system at /var/lib/app, as `df` in the node sees it."""
    result = engine.exec(lab.short_id, NODE, ["df", "-k", "/var/lib/app"])
    assert result.exit_code == 0, result.output
    size, used = result.output.splitlines()[-1].split()[1:3]
    return int(size), int(used)


def last_event(lab: Lab) -> str:
    return LabEvent.objects.filter(lab=lab).order_by("pk").last().message


def test_fill_disk_fails_app_3_and_free_disk_heals_it(engine: Engine, learner: User) -> None:
    lab = Lab.objects.create(owner=learner, lab_slug=LAB, lesson_slug="load-balancing", state=Lab.State.READY)
    package = load_lab(LAB)
    try:
        network = engine.create_network(lab.short_id, lab.owner_id)
        images = {node.name: engine.ensure_image(package.build_context(node)) for node in package.spec.nodes}
        # The run lifecycle would start, writable paths included; only app-3 is needed here.
        run = next(run for _, run in lifecycle._node_runs(package, lab, images, network) if run.name == NODE)
        assert run.writable["/var/lib/app"] == 16 * 1024**2
        started = time.monotonic()
        engine.start_node(run, network)
        deadline = time.monotonic() + 20
        while not any(s.name == NODE and state_from_status(s) == "healthy" for s in engine.node_statuses(lab.short_id)):
            assert time.monotonic() < deadline, f"{NODE} not healthy within 20s"
            time.sleep(0.2)
        print(f"{NODE} healthy in {time.monotonic() - started:.1f}s")
        assert get_until(engine, lab, "/", 200)["status"] == 200

        # A 16 MiB tmpfs, not the host's disk: df sees its limit, and /proc/mounts its type.
        size, _ = data_disk_kib(engine, lab)
        assert size == 16 * 1024
        mounts = engine.exec(lab.short_id, NODE, ["cat", "/proc/mounts"]).output
        assert any(line.split()[1:3] == ["/var/lib/app", "tmpfs"] for line in mounts.splitlines())

        started = time.monotonic()
        lifecycle.inject_fault(str(lab.id), "fill-disk-app-3")
        print(f"fill-disk fault injected in {time.monotonic() - started:.2f}s")
        assert last_event(lab) == "Fault: Fill app-3's disk"
        size, used = data_disk_kib(engine, lab)
        assert size == 16 * 1024 and used >= size - 256  # full, and no bigger than its limit
        # The dd asked for 32 MiB; only what fits in the tmpfs was written.
        filler = engine.exec(lab.short_id, NODE, ["stat", "-c", "%s", "/var/lib/app/filler"]).output
        assert int(filler) <= 16 * 1024**2

        answer = get_until(engine, lab, "/", 500)
        print(f"/ answered 500 after {answer['requests']} request(s) on the full disk")
        assert answer["status"] == 500
        assert answer["body"] == "disk full: cannot write /var/lib/app/requests.log"
        healthz = get_until(engine, lab, "/healthz", 503)
        assert (healthz["status"], healthz["body"]) == (503, "disk full")

        lifecycle.inject_fault(str(lab.id), "free-disk-app-3")
        assert last_event(lab) == "Fault: Free app-3's disk"
        assert get_until(engine, lab, "/", 200)["status"] == 200
        assert get_until(engine, lab, "/healthz", 200)["status"] == 200
        log = engine.exec(lab.short_id, NODE, ["tail", "-n", "1", "/var/lib/app/requests.log"]).output
        assert log.rstrip().endswith(" GET /")
    finally:
        engine.remove_lab(lab.short_id)
