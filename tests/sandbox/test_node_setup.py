"""What a spec puts into its nodes before the lab is ready, on the real engine: a named image used
as it is, files of the lab folder copied in (owned by the node's user, with their mode), setup
scripts run in order; a failing setup script or a missing image fails the lab with a reason and
leaves nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from sandbox import lifecycle
from sandbox.engine import Engine
from sandbox.models import Lab

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

LABS = Path(__file__).resolve().parents[2] / "labs"
SPEC = """
slug: setup-lab
title: Files and setup
nodes:
  - name: box
    image: debian:bookworm-slim
    command: [sleep, infinity]
    user: nobody
    files:
      - {path: /etc/stacklab/greeting.txt, source: greeting.txt, mode: "0640"}
      - {path: /opt/tools/hello.sh, source: hello.sh, mode: "0755"}
    health: {command: [test, -f, /etc/stacklab/greeting.txt], interval: 0.5}
    limits: {memory: 32m, cpus: 0.25, pids: 32}
traffic: {node: box}
faults:
  - {key: stop-box, title: Stop, description: Stops box., action: stop, node: box}
break: stop-box
objectives:
  - key: answered
    title: Answered
    check: {kind: question, prompt: "Ready?", answer: "yes"}
solution: {node: box, script: hello.sh}
setup:
  - {node: box, script: first.sh}
  - {node: box, script: second.sh}
"""


@pytest.fixture
def setup_lab(tmp_path: Path, settings) -> Path:  # noqa: ANN001
    """A one-node lab package in a scratch labs folder."""
    shutil.copytree(LABS / "images", tmp_path / "images")
    folder = tmp_path / "setup-lab"
    folder.mkdir()
    (folder / "lab.yaml").write_text(SPEC)
    (folder / "greeting.txt").write_text("hello from the lab folder\n")
    (folder / "hello.sh").write_text("#!/bin/sh\necho hello\n")
    (folder / "first.sh").write_text("echo first >> /tmp/setup.log\n")
    (folder / "second.sh").write_text("echo second >> /tmp/setup.log; id -un >> /tmp/setup.log\n")
    settings.LABS_DIR = tmp_path
    return folder


def provision(learner: User) -> Lab:
    lab, _ = lifecycle.request_lab(learner, "setup-lab", "setup-lesson")
    lifecycle.provision_lab(str(lab.id))
    lab.refresh_from_db()
    return lab


def test_files_are_copied_in_and_setup_scripts_run_in_order(engine: Engine, learner: User, setup_lab: Path) -> None:
    lab = provision(learner)
    try:
        assert lab.state == Lab.State.READY, lab.reason
        assert [step["message"] for step in lab.steps][-3:] == [
            "Setting up: first.sh in box",
            "Setting up: second.sh in box",
            "All nodes healthy",
        ]
        greeting = engine.exec(lab.short_id, "box", ["cat", "/etc/stacklab/greeting.txt"])
        assert greeting.output == "hello from the lab folder\n"
        owners = engine.exec(
            lab.short_id, "box", ["stat", "-c", "%U %a %n", "/etc/stacklab/greeting.txt", "/opt/tools/hello.sh"]
        )
        assert owners.output.splitlines() == ["nobody 640 /etc/stacklab/greeting.txt", "nobody 755 /opt/tools/hello.sh"]
        assert engine.exec(lab.short_id, "box", ["/opt/tools/hello.sh"]).output == "hello\n"
        assert engine.exec(lab.short_id, "box", ["cat", "/tmp/setup.log"]).output == "first\nsecond\nnobody\n"
    finally:
        lifecycle.stop_lab(str(lab.id))
    assert lab.short_id not in engine.lab_ids()


def test_a_failing_setup_script_fails_the_lab_with_its_output(engine: Engine, learner: User, setup_lab: Path) -> None:
    (setup_lab / "second.sh").write_text("echo 'cannot seed the table' >&2; exit 3\n")
    lab = provision(learner)
    assert lab.state == Lab.State.FAILED
    assert lab.reason == "Setup second.sh in box exited 3: cannot seed the table"
    assert lab.short_id not in engine.lab_ids()


def test_an_image_the_engine_lacks_fails_the_lab_with_a_clear_reason(
    engine: Engine, learner: User, setup_lab: Path
) -> None:
    spec = setup_lab / "lab.yaml"
    spec.write_text(spec.read_text().replace("image: debian:bookworm-slim", "image: stacklab-test/absent:1"))
    lab = provision(learner)
    assert lab.state == Lab.State.FAILED
    assert lab.reason.startswith("Image stacklab-test/absent:1 is not on this engine and could not be pulled: ")
    assert lab.short_id not in engine.lab_ids()
