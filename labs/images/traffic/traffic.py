"""Stacklab traffic generator: open-loop HTTP load at a fixed rate, one JSON metrics line a second.

Requests start on a fixed schedule whatever the target does (asyncio, one TCP connection per
request), so a slow or dead replica shows up as errors and latency, never as a lower send rate.
Only metrics lines start with "{"; the platform parses those from the container's log stream.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

RATE_FILE = "/tmp/traffic-rate"
HEARTBEAT_FILE = "/tmp/traffic-heartbeat"
HEARTBEAT_MAX_AGE_S = 5.0
MAX_HEADER_LINES = 100


@dataclass
class Target:
    url: str
    host: str
    port: int
    request: bytes
    replica_header: str

    @classmethod
    def from_env(cls) -> Target:
        url = os.environ.get("TARGET_URL", "http://lb:8080/")
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise SystemExit(f"traffic: TARGET_URL must be an http:// URL, not {url!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        port = parts.port or 80
        host_header = parts.hostname if port == 80 else f"{parts.hostname}:{port}"
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\n"
            "User-Agent: stacklab-traffic/1\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode()
        header = os.environ.get("REPLICA_HEADER", "X-Replica").strip().lower()
        return cls(url, parts.hostname, port, request, header)


@dataclass
class Interval:
    """What happened during one reporting interval (requests counted when they complete)."""

    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    ok: int = 0
    replicas: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(
        default_factory=lambda: {"200": 0, "timeout": 0, "conn_error": 0}
    )

    def record(self, status: str, latency_ms: float, replica: str | None) -> None:
        self.latencies_ms.append(latency_ms)
        self.status[status] = self.status.get(status, 0) + 1
        if status.isdigit() and 200 <= int(status) < 400:
            self.ok += 1
        if replica:
            self.replicas[replica] = self.replicas.get(replica, 0) + 1

    def to_metrics(self, now: float, seconds: float) -> dict[str, object]:
        completed = len(self.latencies_ms)
        errors = completed - self.ok
        ordered = sorted(self.latencies_ms)
        return {
            "type": "metrics",
            "t": round(now, 3),
            "interval": round(seconds, 2),
            "sent": self.sent,
            "completed": completed,
            "ok": self.ok,
            "errors": errors,
            "rps": round(completed / seconds, 2) if seconds > 0 else 0.0,
            "p50_ms": percentile(ordered, 50),
            "p95_ms": percentile(ordered, 95),
            "error_rate": round(errors / completed, 4) if completed else 0.0,
            "replicas": dict(sorted(self.replicas.items())),
            "status": self.status,
        }


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list; None when it is empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return round(ordered[rank - 1], 1)


class Generator:
    def __init__(self, target: Target, rate: float, timeout_ms: int) -> None:
        self.target = target
        self.env_rate = rate
        self.rate = rate
        self.timeout_ms = timeout_ms
        self.current = Interval()
        self.address: str | None = None
        self.resolve_error = "not resolved yet"
        self._rate_file_signature: tuple[int, int] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def resolve(self) -> None:
        """Resolve the target once a second, off the request path.

        A lookup can take seconds (Docker's DNS is slow to give up on a stopped container's
        name), so it runs in a daemon thread: requests use the last answer meanwhile, and a
        stuck lookup never delays the send schedule or the container's shutdown.
        """
        loop = asyncio.get_running_loop()
        while True:
            answer: asyncio.Future[str | OSError] = loop.create_future()
            threading.Thread(target=self._lookup, args=(loop, answer), daemon=True).start()
            result = await answer
            if isinstance(result, OSError):
                self.address = None
                self.resolve_error = str(result)
            else:
                self.address = result
            await asyncio.sleep(1.0)

    def _lookup(
        self, loop: asyncio.AbstractEventLoop, answer: asyncio.Future[str | OSError]
    ) -> None:
        result: str | OSError
        try:
            infos = socket.getaddrinfo(self.target.host, self.target.port, type=socket.SOCK_STREAM)
            result = infos[0][4][0]
        except OSError as exc:
            result = exc

        def deliver() -> None:
            if not answer.done():
                answer.set_result(result)

        try:
            loop.call_soon_threadsafe(deliver)
        except RuntimeError:
            pass  # the loop closed while we were waiting on DNS: shutting down

    async def send(self) -> None:
        """Start requests on a fixed schedule, never waiting for earlier ones to finish."""
        loop = asyncio.get_running_loop()
        last = loop.time()  # when the previous request was due
        while True:
            now = loop.time()
            if self.rate <= 0:
                last = now
                await asyncio.sleep(0.1)
                continue
            due = last + 1.0 / self.rate
            if due > now:
                # Short naps so a new rate (e.g. from 0.1 to 50 req/s) applies at once.
                await asyncio.sleep(min(due - now, 0.1))
                continue
            # After a stall longer than a second, resume the schedule instead of bursting.
            last = due if now - due < 1.0 else now
            self.current.sent += 1
            task = loop.create_task(self.one_request())
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def one_request(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        replica = None
        if self.address is None:
            status = "conn_error"
        else:
            try:
                status, replica = await asyncio.wait_for(
                    self.fetch(self.address), self.timeout_ms / 1000
                )
            except TimeoutError:
                status = "timeout"
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                status = "conn_error"
        latency_ms = (loop.time() - started) * 1000
        if status == "timeout":
            latency_ms = float(self.timeout_ms)
        self.current.record(status, latency_ms, replica)

    async def fetch(self, address: str) -> tuple[str, str | None]:
        """One HTTP/1.1 request on a new connection: (status code, replica header or None)."""
        reader, writer = await asyncio.open_connection(address, self.target.port)
        try:
            writer.write(self.target.request)
            status_line = await reader.readline()
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise ValueError(f"bad status line {status_line[:80]!r}")
            replica = None
            length = None
            for _ in range(MAX_HEADER_LINES):
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == self.target.replica_header:
                    replica = value.strip()
                elif name == "content-length" and value.strip().isdigit():
                    length = int(value.strip())
            if length is not None:
                await reader.readexactly(length)
            else:
                while await reader.read(65536):
                    pass
            return parts[1].decode(), replica
        finally:
            writer.close()

    async def report(self) -> None:
        """Print one metrics line per second, on a fixed schedule that does not drift."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        next_at = last + 1.0
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            now = loop.time()
            interval, self.current = self.current, Interval()
            line = json.dumps(interval.to_metrics(time.time(), now - last))
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            last = now
            next_at += 1.0
            if next_at <= now:
                next_at = now + 1.0  # stalled for more than a second: skip, never emit twice
            self.touch_heartbeat()
            self.refresh_rate()

    def refresh_rate(self) -> None:
        """Follow RATE_FILE when present (an integer, requests/s), else the RATE variable."""
        try:
            st = os.stat(RATE_FILE)
            signature: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            signature = None
        if signature == self._rate_file_signature:
            return
        self._rate_file_signature = signature
        rate, source = self.env_rate, "RATE"
        if signature is not None:
            try:
                with open(RATE_FILE, encoding="utf-8") as f:
                    rate, source = max(0.0, float(f.read().strip())), RATE_FILE
            except (OSError, ValueError) as exc:
                print(f"traffic: ignoring {RATE_FILE}: {exc}", flush=True)
        if rate != self.rate:
            print(f"traffic: rate {self.rate:g} -> {rate:g} req/s (from {source})", flush=True)
            self.rate = rate

    @staticmethod
    def touch_heartbeat() -> None:
        try:
            with open(HEARTBEAT_FILE, "w", encoding="utf-8") as f:
                f.write(f"{time.time():.3f}\n")
        except OSError:
            pass  # only the health check needs it, and it will say so


def check_health() -> int:
    """Exit status for a container health check: 0 if a metrics line went out recently."""
    try:
        age = time.time() - os.stat(HEARTBEAT_FILE).st_mtime
    except OSError:
        print("unhealthy: no metrics reported yet", file=sys.stderr)
        return 1
    if age > HEARTBEAT_MAX_AGE_S:
        print(f"unhealthy: last metrics {age:.1f}s ago", file=sys.stderr)
        return 1
    return 0


async def run() -> None:
    target = Target.from_env()
    generator = Generator(
        target,
        rate=float(os.environ.get("RATE", "20")),
        timeout_ms=int(os.environ.get("TIMEOUT_MS", "1000")),
    )
    generator.refresh_rate()
    print(
        f"traffic: GET {target.url} at {generator.rate:g} req/s, "
        f"timeout {generator.timeout_ms} ms, replica header {target.replica_header}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [
        loop.create_task(coro)
        for coro in (generator.resolve(), generator.send(), generator.report())
    ]
    await stop.wait()
    for task in tasks:
        task.cancel()
    print("traffic: stopped", flush=True)


def main() -> None:
    if sys.argv[1:] == ["--healthcheck"]:
        sys.exit(check_health())
    asyncio.run(run())


if __name__ == "__main__":
    main()
