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
from pathlib import Path

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


@pytest.fixture(scope="session")
def stacklab(tmp_path_factory: pytest.TempPathFactory, engine) -> Iterator[str]:  # noqa: ANN001
    """The base URL of a `make run` started for this test session, stopped (and its labs
    removed from the engine) at the end."""
    run_dir = Path("/tmp") / f"stacklab-smoke-{os.getpid()}"  # short: Unix socket paths are limited
    run_dir.mkdir(exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update(STACKLAB_RUN_DIR=str(run_dir), STACKLAB_PORT=str(port), STACKLAB_INSTANCE=f"smoke-{os.getpid()}")
    log = (tmp_path_factory.mktemp("smoke") / "make-run.log").open("w+")
    process = subprocess.Popen(
        ["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def printed_url() -> bool:
            log.seek(0)
            return f"starting at {url}/" in log.read()

        wait_for(printed_url, 300, "the printed URL")
        wait_for(lambda: httpx.get(f"{url}/accounts/login/").status_code == 200, 60, "the login page")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.seek(0)
        print(log.read()[-5000:])
        leftovers = Engine(instance=env["STACKLAB_INSTANCE"], subnet_pool="10.213.0.0/16")
        for lab in leftovers.lab_ids():
            leftovers.remove_lab(lab)
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)


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
