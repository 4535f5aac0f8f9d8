"""Benchmark of the first lab: median time from Launch to ready, and from `docker kill` of a
replica to the node-down message on the lab's WebSocket, over several runs; beside it, the time
to start the same containers with plain `docker run` and wait for them to be healthy.

Run with `make bench` (or `BENCH_ARGS="--runs 5" make bench`). It uses its own SQLite database
and its own engine label, so it never touches a running Stacklab. Needs Redis (REDIS_URL;
`make bench` starts a private one) because the watcher and the socket talk through the channel
layer as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_DIR = Path(tempfile.mkdtemp(prefix="stacklab-bench-"))
os.environ.setdefault("DATABASE_URL", f"sqlite:///{BENCH_DIR / 'bench.sqlite3'}")
os.environ["STACKLAB_INSTANCE"] = "bench"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stacklab.settings")

import django  # noqa: E402

django.setup()

from channels.testing import WebsocketCommunicator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402

from sandbox import lifecycle  # noqa: E402
from sandbox.engine import LABEL_INSTANCE  # noqa: E402
from sandbox.models import Lab  # noqa: E402
from sandbox.monitor import Monitor  # noqa: E402
from sandbox.specs import load_lab  # noqa: E402
from stacklab.asgi import application  # noqa: E402

LAB = "scaling-load-balancer"


def session_headers(user: User) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    return [(b"origin", b"http://127.0.0.1"), (b"cookie", cookie.encode())]


async def wait_for(communicator: WebsocketCommunicator, wanted, timeout: float) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            message = await communicator.receive_json_from(timeout=remaining)
        except TimeoutError:
            break
        if wanted(message):
            return message
    raise RuntimeError(f"timed out after {timeout}s")


async def one_lab_run(user: User, run: int) -> tuple[float, float]:
    """Launch to ready, then docker kill to node-down on the socket; returns both in seconds."""
    lab, _ = await asyncio.to_thread(lifecycle.request_lab, user, LAB, f"bench-{run}")
    communicator = WebsocketCommunicator(
        application, f"/ws/labs/{lab.id}/", headers=await asyncio.to_thread(session_headers, user)
    )
    connected, _ = await communicator.connect()
    assert connected, "socket refused"
    try:
        await communicator.receive_json_from()  # snapshot
        started = time.monotonic()
        await asyncio.to_thread(lifecycle.provision_lab, str(lab.id))
        launch_to_ready = time.monotonic() - started
        await asyncio.to_thread(lab.refresh_from_db)
        if lab.state != Lab.State.READY:
            raise RuntimeError(f"lab failed: {lab.reason}")
        await wait_for(communicator, lambda m: m.get("type") == "metrics" and m["completed"] > 0, 30)
        killed = time.monotonic()
        subprocess.run(["docker", "kill", f"stacklab-{lab.short_id}-app-2"], check=True, capture_output=True)
        await wait_for(
            communicator, lambda m: m.get("type") == "node" and m["name"] == "app-2" and m["state"] == "down", 10
        )
        kill_to_message = time.monotonic() - killed
    finally:
        await communicator.disconnect()
        await asyncio.to_thread(lifecycle.stop_lab, str(lab.id))
    return launch_to_ready, kill_to_message


def docker_cli(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def plain_docker_run(run: int) -> float:
    """The same containers (images, network, health checks, limits) with plain `docker run`,
    started in the same order and waited on until every one is healthy."""
    engine = lifecycle.connect_engine()
    package = load_lab(LAB)
    images = {node.name: engine.ensure_image(package.build_context(node)) for node in package.spec.nodes}
    network = f"stacklab-bench-plain-{run}"
    label = f"{LABEL_INSTANCE}=bench-plain"
    started = time.monotonic()
    docker_cli("network", "create", "--internal", "--label", label, network)
    names = []
    try:
        for node in package.spec.start_order():
            for instance in node.instances:
                name = f"{network}-{instance}"
                args = [
                    "run",
                    "-d",
                    "--name",
                    name,
                    "--label",
                    label,
                    "--network",
                    network,
                    "--network-alias",
                    instance,
                    "--init",
                    "--cap-drop",
                    "ALL",
                    "--security-opt",
                    "no-new-privileges:true",
                    "--memory",
                    node.limits.memory,
                    "--cpus",
                    str(node.limits.cpus),
                    "--pids-limit",
                    str(node.limits.pids),
                    "-e",
                    f"REPLICA_NAME={instance}",
                ]
                for key, value in node.env.items():
                    args += ["-e", f"{key}={value}"]
                if node.user:
                    args += ["--user", node.user]
                if node.health:
                    args += [
                        "--health-cmd",
                        shlex.join(node.health.command),
                        "--health-interval",
                        f"{node.health.interval}s",
                        "--health-timeout",
                        f"{node.health.timeout}s",
                        "--health-retries",
                        str(node.health.retries),
                    ]
                docker_cli(*args, images[node.name], *(node.command or []))
                names.append(name)
            # Like the platform, wait for a group to be healthy before starting what depends on it.
            deadline = time.monotonic() + 120
            while any(docker_cli("inspect", "-f", "{{.State.Health.Status}}", n) != "healthy" for n in names):
                if time.monotonic() > deadline:
                    raise RuntimeError("plain docker run: nodes never became healthy")
                time.sleep(0.1)
        return time.monotonic() - started
    finally:
        if names:
            subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
        subprocess.run(["docker", "network", "rm", network], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    call_command("migrate", verbosity=0)
    user, _ = User.objects.get_or_create(username="bench")
    monitor = Monitor(poll_seconds=0.5)
    thread = monitor.start_in_thread()
    lab_runs, plain_runs = [], []
    try:
        for run in range(options.runs):
            launch, kill = asyncio.run(one_lab_run(user, run))
            plain = plain_docker_run(run)
            lab_runs.append((launch, kill))
            plain_runs.append(plain)
            print(
                f"run {run + 1}: launch->ready {launch:.2f}s  kill->node-down {kill * 1000:.0f} ms  "
                f"plain docker run->healthy {plain:.2f}s",
                flush=True,
            )
    finally:
        monitor.stop()
        thread.join(timeout=10)
    launch_median = statistics.median(launch for launch, _ in lab_runs)
    kill_median = statistics.median(kill for _, kill in lab_runs)
    plain_median = statistics.median(plain_runs)
    print()
    print(f"lab {LAB}, {options.runs} runs (medians)")
    print(f"  Launch -> ready:                      {launch_median:6.2f} s")
    print(f"  plain docker run -> healthy:          {plain_median:6.2f} s")
    print(f"  ratio (Stacklab / plain docker run):  {launch_median / plain_median:6.2f}")
    print(f"  docker kill -> node-down on socket:   {kill_median * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
