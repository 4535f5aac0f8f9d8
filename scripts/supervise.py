"""`make run`'s supervision with supervisord: the config, made from the Procfile so that the
Procfile stays the one list of process command lines, and the event listener that prints every
process's output on the terminal with its name in front (as honcho did).

    python scripts/supervise.py conf PROCESS...   # writes $STACKLAB_RUN_DIR/supervisord.conf
    python scripts/supervise.py logs              # run by supervisord, not by hand
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

ROOT = Path(__file__).resolve().parents[1]

# Started first and stopped last: the others need it, and their clients retry until it answers.
INFRASTRUCTURE = {"redis"}

# A process that dies within START_SECONDS of starting counts as a failed start and is retried
# after 1 s, 2 s, 3 s ... (supervisord's backoff); one that ran longer is restarted at once.
# supervisord gives up (FATAL) only after START_RETRIES failed starts in a row, about 80 minutes.
START_SECONDS = 5
START_RETRIES = 100
# Celery's warm shutdown waits for running tasks; past this the process group gets SIGKILL and
# acks_late tasks go back to the queue.
STOP_SECONDS = 10


def read_procfile(path: Path) -> dict[str, str]:
    """Process name -> shell command line, in file order; a line supervisord could not run as
    written stops `make run` with the line's place."""
    processes: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not name.strip().isidentifier():
            raise SystemExit(f"{path}:{number}: expected 'name: command'")
        try:
            program_command(command.strip())
        except ValueError as exc:
            raise SystemExit(f"{path}:{number}: {exc}") from None
        processes[name.strip()] = command.strip()
    return processes


def _unquoted(command: str) -> Iterator[tuple[int, str]]:
    """Each character of `command` that sh reads outside quotes and escapes, with its index."""
    quote = ""
    escaped = False
    for index, char in enumerate(command):
        if escaped:
            escaped = False
        elif quote == "'":
            quote = "" if char == "'" else quote
        elif char == "\\":
            escaped = True
        elif quote == '"':
            quote = "" if char == '"' else quote
        elif char in "'\"":
            quote = char
        else:
            yield index, char


def program_command(command: str) -> str:
    """The Procfile line as a supervisord `command`: run by sh as honcho did (so "$VARS" expand),
    with `exec` so the pid supervisord watches, signals and waits for is the process itself and a
    restart can never leave the old one running beside the new one; through `env` when the line
    starts with VAR=value assignments, which `exec` would take for the command (and no second
    `exec` on a line that has one).

    Raises ValueError for a line that is more than one command (`;`, `&&`, `|`, `&`, a
    subshell: `exec` would run the first alone), and for whitespace before `;` or `#`, where
    supervisord's config parser cuts the line (inline comments), quoted or not.
    """
    for index, char in _unquoted(command):
        if char in ";|()" or (char == "&" and command[index - 1 : index] not in (">", "<")):
            raise ValueError(f"{command!r} is not one command ({char!r}): put the commands in a script")
    words = shlex.split(command)
    if words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0], re.DOTALL):
        script = f"exec env {command}"
    else:
        script = command if words[:1] == ["exec"] else f"exec {command}"
    line = shlex.join(["/bin/sh", "-c", script])
    if re.search(r"\s[;#]", line):
        raise ValueError(f"{command!r} has whitespace before ';' or '#', where supervisord's config parser cuts it")
    return line.replace("%", "%%")


def supervisord_conf(procfile: dict[str, str], names: Sequence[str], run_dir: Path) -> str:
    """A supervisord config that runs `names` from the Procfile in the foreground."""
    unknown = [name for name in names if name not in procfile]
    if unknown:
        raise SystemExit(f"not in the Procfile: {', '.join(unknown)}")
    python = Path(sys.executable)
    password = secrets.token_hex(16)
    lines = [
        "; Made by scripts/supervise.py from the Procfile at each `make run`: edit the Procfile.",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={run_dir / 'supervisord.log'}",
        f"pidfile={run_dir / 'supervisord.pid'}",
        f"childlogdir={run_dir}",
        f"directory={ROOT}",
        # Only to silence the "running as root" warning; a non-root user must not name one.
        *(["user=root"] if os.getuid() == 0 else []),
        "",
        # `supervisorctl -c $STACKLAB_RUN_DIR/supervisord.conf status` talks to it here; programs in
        # the group below are named with it: `restart stacklab:worker` (`redis` has none).
        # Holding this socket also makes a second supervisord on the same run directory (a second
        # beat on the same schedule) refuse to start. The password only quiets supervisord's
        # warning: the socket is the owner's alone.
        "[unix_http_server]",
        f"file={run_dir / 'supervisor.sock'}",
        "chmod=0700",
        "username=stacklab",
        f"password={password}",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{run_dir / 'supervisor.sock'}",
        "username=stacklab",
        f"password={password}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        # Started before the programs and stopped after them, so no line is lost; supervisord
        # sends events only to a listener in RUNNING state, hence startsecs=0. PROCESS_STATE: a
        # process's unfinished last line is printed when it ends (see print_logs).
        "[eventlistener:logs]",
        f"command={shlex.join([str(python), str(Path(__file__).resolve()), 'logs', *names])}",
        "events=PROCESS_LOG,PROCESS_STATE",
        "buffer_size=10000",
        "priority=1",
        "startsecs=0",
        "autorestart=true",
        "stderr_logfile=/dev/stdout",
        "stderr_logfile_maxbytes=0",
        "",
    ]
    stacklab = [name for name in names if name not in INFRASTRUCTURE]
    for name in names:
        lines += [
            f"[program:{name}]",
            f"command={program_command(procfile[name])}",
            f"priority={10 if name in INFRASTRUCTURE else 100}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={START_SECONDS}",
            f"startretries={START_RETRIES}",
            # One process per program, restarted only once the old one has been reaped: never
            # two beats.
            "numprocs=1",
            f"stopwaitsecs={STOP_SECONDS}",
            # Signals go to the whole process group (Celery's pool children too).
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            "stdout_logfile=NONE",
            "stdout_events_enabled=true",
            "",
        ]
    if stacklab:
        # One group stops its programs at once; separate ones would be stopped one by one.
        lines += ["[group:stacklab]", f"programs={','.join(stacklab)}", "priority=100", ""]
    return "\n".join(lines)


def is_served(control_socket: Path) -> bool:
    """Whether a supervisord answers on `control_socket` (a stale file from a killed one does not)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(control_socket))
        except OSError:
            return False
    return True


def write_conf(run_dir: Path, conf: str) -> None:
    """Put `conf` in place as the run directory's supervisord.conf, unless a supervisord already
    runs from there: rewriting its config (with a new password) would lock supervisorctl out of
    it, and the second supervisord would refuse to start anyway. The file is written aside and
    renamed, so it is never seen half written, and readable by its owner only (it holds the
    password)."""
    control_socket = run_dir / "supervisor.sock"
    if is_served(control_socket):
        raise SystemExit(
            f"Stacklab is already running from {run_dir} (its supervisord answers on {control_socket}): "
            "stop that one first, or give this one its own STACKLAB_RUN_DIR and STACKLAB_PORT."
        )
    fd, written = tempfile.mkstemp(prefix=".supervisord.conf.", dir=run_dir)
    with os.fdopen(fd, "w") as file:
        file.write(conf)
    os.replace(written, run_dir / "supervisord.conf")


# A process in one of these states has ended: supervisord read the rest of its output (it drains
# the pipes on reaping) and sent it before this event.
ENDED_STATES = {b"PROCESS_STATE_EXITED", b"PROCESS_STATE_STOPPED", b"PROCESS_STATE_BACKOFF", b"PROCESS_STATE_FATAL"}


def print_logs(names: Sequence[str], stdin: BinaryIO, stdout: BinaryIO, terminal: BinaryIO) -> None:
    """The PROCESS_LOG event listener: each line a process writes, as `HH:MM:SS name | line`.

    supervisord's listener protocol: say READY, read one header line and `len` bytes of payload
    (a header line, then the output), answer `RESULT 2\\nOK`. Output arrives in chunks that may
    end mid-line, so each process's unfinished line waits for the rest, until the process ends
    (a PROCESS_STATE event) or the listener does: then it is printed as it is, so that neither
    a last line without newline is lost nor glued to the next process's first line.
    """
    width = max((len(name) for name in names), default=8)
    partial: dict[str, bytes] = {}

    def show(name: str, lines: list[bytes]) -> None:
        if lines:
            prefix = time.strftime("%H:%M:%S").encode() + b" " + name.ljust(width).encode() + b" | "
            terminal.write(b"".join(prefix + line + b"\n" for line in lines))
            terminal.flush()

    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        header = stdin.readline()
        if not header:
            for name, rest in partial.items():
                show(name, [rest] if rest else [])
            return
        fields = dict(token.split(b":", 1) for token in header.split())
        payload = stdin.read(int(fields[b"len"]))
        about, _, data = payload.partition(b"\n")
        name = dict(token.split(b":", 1) for token in about.split()).get(b"processname", b"?").decode()
        if fields[b"eventname"].startswith(b"PROCESS_LOG"):
            *complete, partial[name] = (partial.get(name, b"") + data).split(b"\n")
            show(name, complete)
        elif fields[b"eventname"] in ENDED_STATES and partial.get(name):
            show(name, [partial.pop(name)])
        stdout.write(b"RESULT 2\nOK")
        stdout.flush()


def main(argv: Sequence[str]) -> None:
    if len(argv) >= 1 and argv[0] == "conf":
        run_dir = Path(os.environ.get("STACKLAB_RUN_DIR", ROOT / ".run")).resolve()
        write_conf(run_dir, supervisord_conf(read_procfile(ROOT / "Procfile"), argv[1:], run_dir))
    elif len(argv) >= 1 and argv[0] == "logs":
        # stdout is the protocol channel to supervisord; stderr goes to its terminal.
        print_logs(argv[1:], sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
