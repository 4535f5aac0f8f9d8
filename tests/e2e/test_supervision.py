"""`make run` supervises its processes: one that dies (SIGKILL, as the OOM killer does) comes
back and Stacklab keeps working, and Ctrl-C or SIGTERM stops every process it started."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    MakeRun,
    launch_first_lab_until_ready,
    log_in_as_learner,
    processes_of,
    start_make_run,
    stop_lab_until_stopped,
    wait_for,
)

pytestmark = [pytest.mark.smoke, pytest.mark.docker]

# How each supervised process's main pid shows in its command line (Procfile names).
COMMAND_MARKS = {
    "redis": ("redis-server",),
    "web": ("stacklab.asgi:application",),  # daphne, or a module running it
    "worker": ("celery", " worker"),
    "beat": ("celery", " beat"),
    "watcher": ("watch_labs",),
}


def supervised(run: MakeRun) -> dict[str, list[int]]:
    """Procfile name -> pids of the processes of `make run` running it: the main process, not a
    shell around it nor its own children (such as Celery's pool processes)."""
    processes = processes_of(run.process.pid)

    def name_of(cmdline: str) -> str | None:
        if cmdline.startswith(("/bin/sh ", "sh ")):
            return None
        return next((name for name, marks in COMMAND_MARKS.items() if all(m in cmdline for m in marks)), None)

    found: dict[str, list[int]] = {name: [] for name in COMMAND_MARKS}
    for pid, (ppid, cmdline) in processes.items():
        name = name_of(cmdline)
        # A pool process whose worker was just killed is not a new worker: its parent is then
        # dying, a zombie, or gone (reparented outside the tree).
        if name is not None and ppid in processes and name_of(processes[ppid][1]) != name:
            found[name].append(pid)
    return found


def the_one(run: MakeRun, name: str) -> int:
    pids = supervised(run)[name]
    assert len(pids) == 1, f"{name}: expected one process, found {pids}"
    return pids[0]


def kill_and_wait_for_a_new_one(run: MakeRun, name: str) -> float:
    """SIGKILL the process `name` and wait for its successor; the seconds that took."""
    old = the_one(run, name)
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)

    def successor() -> bool:
        # Exactly one, and not the old one: while the killed process dies, its command line can
        # read empty for a moment, and its children then look like processes of their own.
        pids = supervised(run)[name]
        return len(pids) == 1 and pids[0] != old

    wait_for(successor, 30, f"a new {name} process")
    assert the_one(run, name) != old
    return time.monotonic() - killed_at


def test_a_killed_worker_watcher_beat_and_web_come_back_and_a_lab_still_launches(tmp_path: Path) -> None:
    with start_make_run(tmp_path / "make-run.log", "sup") as run:
        # Each killed in turn; the worker's and watcher's successors then launch a lab to ready
        # with healthy nodes (node health comes from the watcher's events).
        for name in ("worker", "watcher", "beat"):
            print(f"{name}: new process {kill_and_wait_for_a_new_one(run, name):.1f}s after SIGKILL")
            assert run.process.poll() is None, "make run ended"

        web_killed_at = time.monotonic()
        print(f"web: new process {kill_and_wait_for_a_new_one(run, 'web'):.1f}s after SIGKILL")
        wait_for(lambda: httpx.get(f"{run.url}/accounts/login/").status_code == 200, 30, "the login page again")
        print(f"web: answering {time.monotonic() - web_killed_at:.1f}s after SIGKILL")

        # Never two beats, nor two of anything: each name still has exactly one process.
        assert {name: len(pids) for name, pids in supervised(run).items()} == dict.fromkeys(COMMAND_MARKS, 1)

        with httpx.Client(base_url=run.url, follow_redirects=True, timeout=30) as client:
            assert "Backend architecture, hands-on" in log_in_as_learner(client)
            lab_id, _ = launch_first_lab_until_ready(
                client, run.url, "a ready lab with healthy nodes from the new worker and watcher"
            )
            stop_lab_until_stopped(client, run.url, lab_id)


@pytest.mark.parametrize(
    "stop_signal", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "terminal-closed"]
)
def test_stopping_make_run_leaves_no_process_behind(tmp_path: Path, stop_signal: signal.Signals) -> None:
    with start_make_run(tmp_path / "make-run.log", "sup") as run:
        started = processes_of(run.process.pid)
        assert all(supervised(run).values()), supervised(run)
        # What a terminal does on Ctrl-C, and what the test fixtures and service managers send.
        os.killpg(run.process.pid, stop_signal)
        run.process.wait(timeout=60)
        wait_for(lambda: not processes_of(run.process.pid), 5, "every process gone")
        assert not {pid for pid in started if Path(f"/proc/{pid}").exists()}
