"""The Procfile is the one list of process command lines: `make run`'s supervisord config runs
each line exactly as written, and the production systemd units run the same commands. `make run`
prints every process's output with the process's name in front."""

from __future__ import annotations

import configparser
import importlib.util
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import pytest
import redis
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "deploy" / "systemd"


def load_supervise() -> ModuleType:
    spec = importlib.util.spec_from_file_location("supervise", ROOT / "scripts" / "supervise.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def supervisord_programs(procfile: dict[str, str], names: list[str], tmp_path: Path) -> dict[str, object]:
    """The programs supervisord itself reads from the generated config: name -> its config."""
    conf = tmp_path / "supervisord.conf"
    conf.write_text(load_supervise().supervisord_conf(procfile, names, tmp_path))
    options = ServerOptions()
    options.configfile = str(conf)
    options.process_config(do_usage=False)
    return {
        process.name: (group.priority, process)
        for group in options.process_group_configs
        for process in group.process_configs
        if process.name != "logs"
    }


def test_make_run_supervises_each_procfile_line_as_written_restarting_it(tmp_path: Path) -> None:
    procfile = load_supervise().read_procfile(ROOT / "Procfile")
    programs = supervisord_programs(procfile, list(procfile), tmp_path)
    assert set(programs) == {"redis", "web", "worker", "beat", "watcher"}
    for name, (_, process) in programs.items():
        # `exec`: the pid supervisord restarts only once reaped is the process itself.
        assert shlex.split(process.command) == ["/bin/sh", "-c", f"exec {procfile[name]}"]
        assert process.autorestart is RestartUnconditionally
    # The private Redis starts before the others (and stops after them).
    assert programs["redis"][0] < min(priority for name, (priority, _) in programs.items() if name != "redis")


def test_quotes_and_percent_signs_in_a_procfile_line_reach_the_shell_unchanged(tmp_path: Path) -> None:
    line = """echo '100% "done"' "$STACKLAB_PORT" it\\'s"""
    programs = supervisord_programs({"odd": line}, ["odd"], tmp_path)
    assert shlex.split(programs["odd"][1].command) == ["/bin/sh", "-c", f"exec {line}"]


def test_systemd_units_run_the_procfile_commands_with_restarts() -> None:
    procfile = load_supervise().read_procfile(ROOT / "Procfile")
    for name in ("web", "worker", "beat", "watcher"):
        unit = configparser.ConfigParser(interpolation=None, strict=False)
        unit.read(UNITS / f"stacklab-{name}.service")
        service = unit["Service"]
        argv = shlex.split(service["ExecStart"].replace("${", "$").replace("}", ""))
        # The venv's binary for the Procfile's bare command name; the rest word for word.
        assert argv[0] == f"/opt/stacklab/.venv/bin/{shlex.split(procfile[name])[0]}"
        assert argv[1:] == shlex.split(procfile[name])[1:], name
        assert service["Restart"] == "always"
        assert service["WorkingDirectory"] == "/opt/stacklab"
        assert service["EnvironmentFile"] == "/etc/stacklab/stacklab.env"
        # Only the processes that drive the engine get the Docker socket.
        assert ("docker" in service.get("SupplementaryGroups", "")) == (name in {"worker", "watcher"})
        assert unit["Install"]["WantedBy"] == "stacklab.target"
    target = configparser.ConfigParser(interpolation=None)
    target.read(UNITS / "stacklab.target")
    wanted = set(target["Unit"]["Wants"].split())
    assert wanted == {f"stacklab-{name}.service" for name in ("web", "worker", "beat", "watcher")}


def log_event(process: str, data: bytes) -> bytes:
    """A PROCESS_LOG_STDOUT event as supervisord writes it to a listener's stdin."""
    payload = f"processname:{process} groupname:stacklab pid:42 channel:stdout\n".encode() + data
    header = (
        f"ver:3.0 server:supervisor serial:1 pool:logs poolserial:1 eventname:PROCESS_LOG_STDOUT len:{len(payload)}\n"
    )
    return header.encode() + payload


def test_make_run_prints_each_line_of_each_process_once_with_its_name_in_front() -> None:
    events = [
        log_event("worker", b"celery@vm ready.\nTask sandbox.tasks.provision_lab[1] rece"),
        log_event("web", "GET /lessons/ 200 \u2014 ok\n".encode()),
        log_event("worker", b"ived\n"),
    ]
    stdin, stdout, terminal = io.BytesIO(b"".join(events)), io.BytesIO(), io.BytesIO()
    load_supervise().print_logs(["web", "worker", "watcher"], stdin, stdout, terminal)
    lines = [line.split(" ", 1)[1] for line in terminal.getvalue().decode().splitlines()]  # no time
    assert lines == [
        "worker  | celery@vm ready.",
        "web     | GET /lessons/ 200 \u2014 ok",
        "worker  | Task sandbox.tasks.provision_lab[1] received",
    ]
    # Each event acknowledged, so supervisord sends the next.
    assert stdout.getvalue() == b"READY\n" + b"RESULT 2\nOKREADY\n" * 3


@pytest.mark.redis
def test_the_private_redis_of_make_run_keeps_queued_work_across_a_crash(tmp_path: Path) -> None:
    """The Procfile's `redis` line persists (AOF): a task queued just before Redis is killed is
    still queued when supervisord starts it again, so a launch is not lost with it."""
    command = load_supervise().read_procfile(ROOT / "Procfile")["redis"]
    env = {**os.environ, "STACKLAB_RUN_DIR": str(tmp_path)}
    socket_path = tmp_path / "redis.sock"

    def start() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(["sh", "-c", f"exec {command}"], env=env, stdout=subprocess.DEVNULL)
        client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return server
            except redis.RedisError:
                assert time.monotonic() < deadline, "the private Redis did not answer within 10 s"
                time.sleep(0.05)

    server = start()
    try:
        client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=2)
        client.lpush("celery", "provision_lab lab-1")
        # appendfsync everysec: wait until the write is on disk, as it is within a second.
        aof = tmp_path / "redis-aof"
        deadline = time.monotonic() + 5
        while not any(b"provision_lab lab-1" in path.read_bytes() for path in aof.glob("*.aof")):
            assert time.monotonic() < deadline, f"nothing reached the append-only file in {aof}"
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        server = start()
        assert client.lrange("celery", 0, -1) == [b"provision_lab lab-1"]
    finally:
        server.kill()
        server.wait(timeout=10)


def supervisorctl(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "supervisorctl"), "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.redis
def test_a_second_make_run_on_the_same_run_dir_is_refused_and_leaves_the_first_one_reachable() -> None:
    # Short: supervisord's and Redis's Unix sockets live here and must fit in 108 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="sl-sup-", dir="/tmp"))
    env = {**os.environ, "STACKLAB_RUN_DIR": str(run_dir)}
    conf = run_dir / "supervisord.conf"
    write_conf = [sys.executable, str(ROOT / "scripts" / "supervise.py"), "conf", "redis"]
    subprocess.run(write_conf, env=env, check=True, timeout=30)
    first = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "supervisord"), "--nodaemon", "--configuration", str(conf)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while "RUNNING" not in (status := supervisorctl(conf, "status", "redis")).stdout:
            assert time.monotonic() < deadline, f"the first supervisord did not run redis: {status}"
            time.sleep(0.1)
        written = conf.read_bytes()

        second = subprocess.run(write_conf, env=env, capture_output=True, text=True, timeout=30)

        assert second.returncode != 0
        assert "already" in second.stderr and str(run_dir) in second.stderr, second.stderr
        assert conf.read_bytes() == written, "the second run rewrote the first one's config"
        status = supervisorctl(conf, "status", "redis")
        assert "RUNNING" in status.stdout, status
    finally:
        first.terminate()
        first.wait(timeout=30)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_the_worker_unit_applies_lab_isolation_as_root_and_starts_even_when_that_fails() -> None:
    """A failed ExecStartPre would keep the worker (stop, reap, every task) from running at all;
    with "-" it is logged and the worker starts, refusing only new labs until the rules are in place."""
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read(UNITS / "stacklab-worker.service")
    pre = unit["Service"]["ExecStartPre"]
    prefix, _, command = pre.partition("/")
    assert sorted(prefix) == ["+", "-"], pre  # "+": as root; "-": a failure does not stop the start
    assert shlex.split("/" + command) == ["/opt/stacklab/.venv/bin/python", "manage.py", "lab_isolation"]


@pytest.mark.parametrize(
    "command",
    [
        "celery worker\t; echo cut here",  # a tab before `;`: supervisord's parser cuts the line
        "celery worker\t# a note",
        "cd labs && celery worker",  # `exec` would run the first command only
        "migrate; celery worker",
        "celery worker | tee worker.log",
        "(celery worker)",
    ],
)
def test_a_procfile_line_that_is_not_one_command_is_refused_naming_its_line(tmp_path: Path, command: str) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"# processes\nworker: {command}\n")
    with pytest.raises(SystemExit) as refused:
        load_supervise().read_procfile(procfile)
    assert f"{procfile}:2:" in str(refused.value)


def test_assignments_redirections_and_quoted_operators_in_a_procfile_line_run_as_sh_would(tmp_path: Path) -> None:
    line = """GREETING='a; b' PLACE="c && d" sh -c 'echo "$GREETING" "$PLACE" x\\;y "(e|f)"' 2>&1"""
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"greet: {line}\n")
    commands = load_supervise().read_procfile(procfile)
    _, process = supervisord_programs(commands, ["greet"], tmp_path)["greet"]
    ran = subprocess.run(shlex.split(process.command), capture_output=True, text=True, timeout=10)
    assert (ran.returncode, ran.stdout) == (0, "a; b c && d x;y (e|f)\n"), ran.stderr


def state_event(process: str, state: str) -> bytes:
    """A PROCESS_STATE event as supervisord writes it to a listener's stdin (no body)."""
    payload = f"processname:{process} groupname:stacklab from_state:RUNNING expected:0 pid:42".encode()
    header = (
        "ver:3.0 server:supervisor serial:1 pool:logs poolserial:1 "
        f"eventname:PROCESS_STATE_{state} len:{len(payload)}\n"
    )
    return header.encode() + payload


def test_a_last_line_without_newline_is_printed_when_its_process_ends_and_not_glued_to_the_next() -> None:
    events = [
        log_event("worker", b"worker: Warm shutdown (MainPro"),
        log_event("worker", b"cess)"),
        state_event("worker", "EXITED"),
        state_event("worker", "STARTING"),
        log_event("worker", b"celery@vm ready.\n"),
        log_event("web", b"Killed"),  # then the listener itself stops
    ]
    stdin, stdout, terminal = io.BytesIO(b"".join(events)), io.BytesIO(), io.BytesIO()
    load_supervise().print_logs(["web", "worker"], stdin, stdout, terminal)
    lines = [line.split(" ", 1)[1] for line in terminal.getvalue().decode().splitlines()]
    assert lines == [
        "worker | worker: Warm shutdown (MainProcess)",
        "worker | celery@vm ready.",
        "web    | Killed",
    ]
    assert stdout.getvalue() == b"READY\n" + b"RESULT 2\nOKREADY\n" * len(events)


def test_make_run_prints_the_unfinished_last_line_of_each_run_of_a_process_on_its_own(tmp_path: Path) -> None:
    # Short: supervisord's Unix socket lives here and must fit in 108 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="sl-log-", dir="/tmp"))
    conf = run_dir / "supervisord.conf"
    conf.write_text(load_supervise().supervisord_conf({"tail": "printf 'no newline'"}, ["tail"], run_dir))
    output = tmp_path / "supervisord.out"
    with output.open("ab") as out:  # appending, as supervisord and its listener share it
        supervisord = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "supervisord"), "--nodaemon", "--configuration", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # The process exits at once: supervisord starts it again after 1 s, then 2 s.
        deadline = time.monotonic() + 30
        while output.read_bytes().count(b"no newline") < 2:
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.1)
    finally:
        supervisord.terminate()
        supervisord.wait(timeout=30)
        shutil.rmtree(run_dir, ignore_errors=True)
    lines = [line.split(" ", 1)[1] for line in output.read_text().splitlines() if " | " in line]
    assert lines[:2] == ["tail | no newline"] * 2, output.read_text()
