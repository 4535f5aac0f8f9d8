"""The whole of Stacklab as a user meets it: `make run` started as a newcomer runs it (no
DATABASE_URL, no REDIS_URL, its own run directory and engine label), shared by the end-to-end
tests of this folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

from sandbox.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; never a browser Playwright downloads


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s (last: {last!r})")


def log_in_as_learner(client: httpx.Client) -> str:
    """Log the demo learner in through the login form; the home page's HTML."""
    login_page = client.get("/accounts/login/")
    token = login_page.text.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    form = {"username": "learner", "password": "stacklab-demo", "csrfmiddlewaretoken": token}
    return client.post("/accounts/login/", data=form).text


def launch_first_lab_until_ready(client: httpx.Client, base_url: str, what: str) -> tuple[str, dict]:
    """Launch the first lesson's lab through the API and wait (up to 180 s) until it is ready
    with every node healthy; its id and snapshot."""
    launched = client.post("/api/lessons/load-balancing/lab", headers=csrf_headers(client, base_url))
    assert launched.status_code == 201, launched.text
    lab_id = launched.json()["id"]

    def ready_with_healthy_nodes() -> dict | None:
        snapshot = client.get(f"/api/labs/{lab_id}/").json()
        assert snapshot["lab"]["state"] != "failed", snapshot["lab"]["reason"]
        states = {node["state"] for node in snapshot["nodes"]}
        return snapshot if snapshot["lab"]["state"] == "ready" and states == {"healthy"} else None

    return lab_id, wait_for(ready_with_healthy_nodes, 180, what)


def stop_lab_until_stopped(client: httpx.Client, base_url: str, lab_id: str) -> None:
    assert client.post(f"/api/labs/{lab_id}/stop", headers=csrf_headers(client, base_url)).status_code == 202
    wait_for(lambda: client.get(f"/api/labs/{lab_id}/").json()["lab"]["state"] == "stopped", 60, "lab stopped")


def csrf_headers(client: httpx.Client, base_url: str) -> dict[str, str]:
    return {"X-CSRFToken": client.cookies["csrftoken"], "Referer": base_url}


def processes_of(root: int) -> dict[int, tuple[int, str]]:
    """Every live process under `root` (a `make run` started in a session of its own): pid ->
    (parent pid, command line). That is its descendants (whatever their process group or session)
    and any process left in its session after its parent has gone."""
    table: dict[int, tuple[int, int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name in parentheses may hold spaces: the fields start after the last ')'.
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[3]), cmdline)

    def is_under_root(pid: int) -> bool:
        seen = set()
        while pid in table and pid not in seen:
            seen.add(pid)
            ppid, sid, _ = table[pid]
            if pid == root or sid == root:
                return True
            pid = ppid
        return False

    return {pid: (ppid, cmdline) for pid, (ppid, _, cmdline) in table.items() if is_under_root(pid)}


def kill_processes_of(root: int) -> None:
    for pid in processes_of(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class MakeRun:
    """A `make run` started as a newcomer runs it, in a session of its own."""

    url: str
    process: subprocess.Popen
    log: IO[str]
    instance: str

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()


@contextmanager
def start_make_run(log_path: Path, name: str) -> Iterator[MakeRun]:
    """`make run` with no DATABASE_URL, no REDIS_URL, its own run directory, port and engine label,
    once it serves the login page. At the end it is stopped as Ctrl-C would (falling back to
    SIGKILL for every process of its session) and its labs are removed from the engine."""
    run_dir = Path("/tmp") / f"stacklab-{name}-{os.getpid()}"  # short: Unix socket paths are limited
    run_dir.mkdir(exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(STACKLAB_RUN_DIR=str(run_dir), STACKLAB_PORT=str(port), STACKLAB_INSTANCE=f"{name}-{os.getpid()}")
    log = log_path.open("w+")
    process = subprocess.Popen(
        ["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    run = MakeRun(url=url, process=process, log=log, instance=env["STACKLAB_INSTANCE"])
    try:
        wait_for(lambda: f"starting at {url}/" in run.output(), 300, "the printed URL")
        wait_for(lambda: httpx.get(f"{url}/accounts/login/").status_code == 200, 60, "the login page")
        yield run
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        kill_processes_of(process.pid)
        process.wait()
        print(run.output()[-5000:])
        log.close()
        leftovers = Engine(instance=run.instance, subnet_pool="10.213.0.0/16")
        for lab in leftovers.lab_ids():
            leftovers.remove_lab(lab)
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)


@pytest.fixture(scope="session")
def stacklab(tmp_path_factory: pytest.TempPathFactory, engine) -> Iterator[str]:  # noqa: ANN001
    """The base URL of a `make run` started for this test session, stopped (and its labs
    removed from the engine) at the end."""
    with start_make_run(tmp_path_factory.mktemp("smoke") / "make-run.log", "smoke") as run:
        yield run.url


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's headless Chromium, driven by Playwright, shared by the browser tests."""
    from tests.conftest import unavailable

    if not CHROMIUM.exists():
        unavailable("Chromium (/usr/bin/chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright for Python")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()
