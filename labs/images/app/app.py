"""Stacklab teaching web app: one replica behind the lab's load balancer.

`/` needs nothing else; `/data/<key>` reads through Redis (cache-aside) to PostgreSQL. Every
request but /healthz and /stats appends a line to DATA_DIR/requests.log, so a full disk fails
requests. Lesson faults come from /tmp/stacklab-fault.json, which `app-fault` writes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg2
import psycopg2.errors
import redis

REPLICA = os.environ.get("REPLICA_NAME") or socket.gethostname()
PORT = int(os.environ.get("PORT", "8080"))
FAULT_FILE = "/tmp/stacklab-fault.json"
CACHE_TTL_S = int(os.environ.get("CACHE_TTL", "30"))
MAX_BODY_BYTES = 64 * 1024
MAX_IDLE_DB_CONNECTIONS = 8
LOOKUP_TIMEOUT_S = 1.0
DATA_DIR = os.environ.get("DATA_DIR", "/var/lib/app")
REQUEST_LOG_MAX_BYTES = 1024 * 1024  # then truncated: normal traffic never fills a small disk
DISK_FULL_BELOW_BYTES = 256 * 1024  # /healthz answers 503 with less free than this
DISK_CHECK_EVERY_S = 0.5

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key text PRIMARY KEY,
    value text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""

log = logging.getLogger("app")


class Unavailable(Exception):
    """A backing service (db or cache) did not answer; the message is one line for the client."""


class MethodNotAllowed(Exception):
    pass


class DiskFull(Exception):
    """A write to DATA_DIR found no space left; the message is one line for the client."""


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    # Squeeze runs of spaces too: some redis-py messages carry source indentation.
    return " ".join(lines[0].split()) if lines else type(exc).__name__


class Resolver:
    """Name lookups with a deadline.

    On an internal Docker network the embedded DNS takes ~20 s to give up on the name of a
    container that is gone (moby/moby#43430), and neither libpq's nor redis-py's connect timeout
    covers the lookup. Each lookup runs in its own thread and callers wait at most
    LOOKUP_TIMEOUT_S. A lookup younger than that is shared; an older one that is still stuck is
    left to finish on its own and a fresh one starts, so a node that comes back is seen at once.
    """

    def __init__(self) -> None:
        self._latest: dict[str, tuple[float, Future[str]]] = {}
        self._lock = threading.Lock()

    def address(self, host: str) -> str:
        now = time.monotonic()
        with self._lock:
            started, future = self._latest.get(host, (0.0, None))
            if future is None or future.done() or now - started >= LOOKUP_TIMEOUT_S:
                started, future = now, Future()
                self._latest[host] = (started, future)
                threading.Thread(
                    target=self._lookup, args=(host, future), name=f"lookup-{host}", daemon=True
                ).start()
        try:
            return future.result(timeout=max(0.0, started + LOOKUP_TIMEOUT_S - now))
        except TimeoutError:
            raise OSError(
                f"name lookup for {host!r} timed out (is the container running?)"
            ) from None

    @staticmethod
    def _lookup(host: str, future: Future[str]) -> None:
        try:
            future.set_result(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
        except OSError as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
            future.set_exception(OSError(f"name {host!r} does not resolve: {reason}"))


resolver = Resolver()


class BoundedLookupConnection(redis.Connection):
    """A redis-py connection whose name lookup obeys the Resolver's deadline."""

    def _connect(self) -> socket.socket:
        host = self.host
        self.host = resolver.address(host)  # OSError here becomes redis.ConnectionError
        try:
            return super()._connect()
        finally:
            self.host = host


class Availability:
    """Logs a service going down or coming back once per change, not once per request."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._is_up: bool | None = None
        self._lock = threading.Lock()

    def mark(self, is_up: bool, reason: str = "") -> None:
        with self._lock:
            if is_up == self._is_up:
                return
            self._is_up = is_up
        if is_up:
            log.info("%s: connected", self.name)
        else:
            log.error("%s: unavailable: %s", self.name, reason)


class Database:
    """Lazy PostgreSQL connections, kept in a small idle list; dead ones are dropped."""

    def __init__(self) -> None:
        self.host = os.environ.get("PGHOST", "db")
        self._params: dict[str, Any] = {
            "host": self.host,
            "port": int(os.environ.get("PGPORT", "5432")),
            "user": os.environ.get("PGUSER", "app"),
            "password": os.environ.get("PGPASSWORD", "app"),
            "dbname": os.environ.get("PGDATABASE", "app"),
            "application_name": f"stacklab-app {REPLICA}",
            "connect_timeout": 2,
            # A killed db container never answers; without this a query would hang for minutes.
            "tcp_user_timeout": 3000,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
            "options": "-c statement_timeout=3000",
        }
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self.availability = Availability(f"db ({self.host})")

    def _connect(self) -> Any:
        try:
            address = resolver.address(self.host)
        except OSError as exc:
            raise psycopg2.OperationalError(str(exc)) from None
        conn = psycopg2.connect(hostaddr=address, **self._params)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(SCHEMA)
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateTable):
            pass  # another replica created the table at the same moment
        return conn

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows.

        1. Take an idle connection, or open a new one (which also creates the table).
        2. If a pooled connection turns out dead (db restarted), drop all idle ones and retry
           once on a fresh connection.
        3. Any remaining connection-level failure becomes `Unavailable`.
        """
        for attempt in (1, 2):
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            is_pooled = conn is not None
            try:
                if conn is None:
                    conn = self._connect()
                with conn.cursor() as cur:
                    cur.execute(sql, args)
                    rows = cur.fetchall() if cur.description else []
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if conn is not None:
                    conn.close()
                if is_pooled and attempt == 1:
                    self._drop_idle()
                    continue
                self.availability.mark(False, one_line(exc))
                raise Unavailable(f"db: {one_line(exc)}") from exc
            except psycopg2.Error:
                conn.close()
                raise
            self.availability.mark(True)
            with self._lock:
                if len(self._idle) < MAX_IDLE_DB_CONNECTIONS:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()
            return rows
        raise AssertionError("unreachable")


class Cache:
    """Redis client; redis-py connects lazily and reconnects after a failure by itself."""

    def __init__(self) -> None:
        self.host = os.environ.get("REDIS_HOST", "cache")
        pool = redis.ConnectionPool(
            connection_class=BoundedLookupConnection,
            host=self.host,
            port=int(os.environ.get("REDIS_PORT", "6379")),
            socket_connect_timeout=1,
            socket_timeout=1,
        )
        self._client = redis.Redis(connection_pool=pool)
        self.availability = Availability(f"cache ({self.host})")

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            result = getattr(self._client, method)(*args, **kwargs)
        except redis.RedisError as exc:
            self.availability.mark(False, one_line(exc))
            raise Unavailable(f"cache: {one_line(exc)}") from exc
        self.availability.mark(True)
        return result

    def get(self, key: str) -> str | None:
        value = self._call("get", f"item:{key}")
        return None if value is None else value.decode("utf-8", "replace")

    def set(self, key: str, value: str) -> None:
        self._call("set", f"item:{key}", value, ex=CACHE_TTL_S)

    def delete(self, key: str) -> None:
        self._call("delete", f"item:{key}")

    def ping(self) -> None:
        self._call("ping")


class FaultSwitches:
    """Lesson faults from FAULT_FILE; one stat() per request, the file is re-read only on change."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()

    def current(self) -> dict[str, Any]:
        try:
            st = os.stat(self.path)
            signature: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            signature = None
        with self._lock:
            if signature != self._signature:
                had_faults = bool(self._values)
                self._values = self._load() if signature else {}
                self._signature = signature
                if self._values:
                    log.info("faults now: %s", json.dumps(self._values, sort_keys=True))
                elif had_faults:
                    log.info("faults cleared")
            return self._values

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
            return {
                "delay_ms": max(0, int(raw.get("delay_ms", 0))),
                "error_rate": min(1.0, max(0.0, float(raw.get("error_rate", 0)))),
                "unhealthy": bool(raw.get("unhealthy", False)),
            }
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("fault file %s ignored: %s", self.path, one_line(exc))
            return {}


class RequestLog:
    """One line per request, appended to DATA_DIR/requests.log and truncated past 1 MiB.

    Each line is one write(2) on an O_APPEND descriptor: it is in the file at once, and a full
    disk fails the request that wrote it rather than a later flush. As on a real disk, a write
    that fits in the file's last, already allocated block still succeeds for a while. After a
    failure the file is reopened, so a log a learner deleted to make room really frees it.
    Errors other than a full disk are logged (once per change), never turned into failed requests.
    """

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "requests.log")
        self._fd: int | None = None
        self._size = 0
        self._lock = threading.Lock()
        self.availability = Availability(f"request log ({self.path})")

    def append(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "replace")
        with self._lock:
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    self._size = os.fstat(self._fd).st_size
                if self._size + len(data) > REQUEST_LOG_MAX_BYTES:
                    os.ftruncate(self._fd, 0)
                    self._size = 0
                written = os.write(self._fd, data)
                self._size += written
                if written < len(data):  # the last free bytes went to part of this line
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as exc:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                self.availability.mark(False, one_line(exc))
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFull(f"disk full: cannot write {self.path}") from None
                return
        self.availability.mark(True)


class DiskSpace:
    """Free bytes in a directory, from statvfs at most every DISK_CHECK_EVERY_S."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._checked = 0.0
        self._free: int | None = None
        self._lock = threading.Lock()

    def free_bytes(self) -> int | None:
        """None if the directory cannot be looked at (e.g. it does not exist)."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= DISK_CHECK_EVERY_S:
                try:
                    st = os.statvfs(self.directory)
                    self._free = st.f_bavail * st.f_frsize
                except OSError:
                    self._free = None
                self._checked = now
            return self._free


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = {
            "requests": 0,
            "cache_hits": 0,
            "cache_misses": 0,
            "cache_errors": 0,
            "db_errors": 0,
            "injected_errors": 0,
            "disk_errors": 0,
        }
        self.started = time.time()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            values = dict(self._values)
        return {"replica": REPLICA, "uptime_s": round(time.time() - self.started, 1), **values}


db = Database()
cache = Cache()
faults = FaultSwitches(FAULT_FILE)
counters = Counters()
request_log = RequestLog(DATA_DIR)
disk = DiskSpace(DATA_DIR)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Handler(BaseHTTPRequestHandler):
    server_version = "stacklab-app/1"
    protocol_version = "HTTP/1.1"  # keep-alive towards the load balancer
    timeout = 60  # an idle keep-alive connection gives its thread back after this

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # Answered 405 (not http.server's 501 page) so a learner sees which methods a path takes.
    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # Every response, including the ones http.server writes itself (400, 501), names the replica.
    def end_headers(self) -> None:
        self.send_header("X-Replica", REPLICA)
        super().end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request would drown the errors

    def log_error(self, format: str, *args: Any) -> None:
        message = format % args
        # An idle keep-alive connection timing out is routine, not worth a line.
        if not message.startswith("Request timed out"):
            log.warning("%s: %s", self.address_string(), message)

    def _dispatch(self, method: str) -> None:
        counters.add("requests")
        url = urlsplit(self.path)
        path = url.path
        try:
            if path == "/healthz":
                self._require(method, "GET")
                return self._healthz(parse_qs(url.query))
            if path == "/stats":
                self._require(method, "GET")
                return self._send_json(200, counters.snapshot())
            if self._apply_faults():
                return
            request_log.append(f"{utc_now()} {method} {path[:200]}")
            if path == "/":
                self._require(method, "GET")
                return self._send_json(200, {"replica": REPLICA, "time": utc_now()})
            if path.startswith("/data/") and len(path) > len("/data/"):
                key = unquote(path[len("/data/") :])
                if method == "GET":
                    return self._get_item(key)
                if method == "PUT":
                    return self._put_item(key)
                raise MethodNotAllowed
            self._discard_body()
            self._send_text(404, "not found")
        except MethodNotAllowed:
            self._discard_body()
            self._send_text(405, "method not allowed")
        except Unavailable as exc:
            counters.add("db_errors" if str(exc).startswith("db:") else "cache_errors")
            self._send_text(503, str(exc))
        except DiskFull as exc:
            counters.add("disk_errors")
            self._discard_body()
            self._send_text(500, str(exc))
        except (ConnectionError, TimeoutError):
            raise  # the client went away; nothing to answer
        except Exception:
            log.exception("%s %s failed", method, self.path)
            self.close_connection = True
            self._send_text(500, "internal error")

    def _require(self, method: str, allowed: str) -> None:
        if method != allowed:
            raise MethodNotAllowed

    def _apply_faults(self) -> bool:
        """Delay and/or fail this request as the fault file says; True if it was answered."""
        fault = faults.current()
        if not fault:
            return False
        if fault["delay_ms"]:
            time.sleep(fault["delay_ms"] / 1000)
        if fault["error_rate"] and random.random() < fault["error_rate"]:
            counters.add("injected_errors")
            self._discard_body()
            self._send_text(500, "injected fault: error_rate")
            return True
        return False

    def _healthz(self, query: dict[str, list[str]]) -> None:
        if faults.current().get("unhealthy"):
            return self._send_text(503, "unhealthy (fault switch)")
        free = disk.free_bytes()
        if free is not None and free < DISK_FULL_BELOW_BYTES:
            return self._send_text(503, "disk full")
        if query.get("deep", ["0"])[0] not in ("1", "true", "yes"):
            return self._send_text(200, "ok")
        problems = []
        try:
            db.run("SELECT 1")
        except Unavailable as exc:
            problems.append(str(exc))
        try:
            cache.ping()
        except Unavailable as exc:
            problems.append(str(exc))
        if problems:
            return self._send_text(503, "; ".join(problems))
        self._send_text(200, "ok")

    def _get_item(self, key: str) -> None:
        cache_state = "miss"
        try:
            value = cache.get(key)
        except Unavailable:
            # A broken cache slows reads down but does not stop them: read through to the db.
            counters.add("cache_errors")
            value, cache_state = None, "error"
        if value is not None:
            counters.add("cache_hits")
            return self._send_json(
                200, {"key": key, "value": value, "source": "cache"}, {"X-Cache": "hit"}
            )
        if cache_state == "miss":
            counters.add("cache_misses")
        rows = db.run("SELECT value FROM items WHERE key = %s", (key,))
        if not rows:
            return self._send_text(404, f"no item {key!r}", {"X-Cache": cache_state})
        value = rows[0][0]
        if cache_state == "miss":
            try:
                cache.set(key, value)
            except Unavailable:
                counters.add("cache_errors")
        self._send_json(200, {"key": key, "value": value, "source": "db"}, {"X-Cache": cache_state})

    def _put_item(self, key: str) -> None:
        body = self._read_body()
        if body is None:
            return
        try:
            value = body.decode("utf-8")
        except UnicodeDecodeError:
            return self._send_text(400, "value must be UTF-8 text")
        db.run(
            "INSERT INTO items (key, value, updated_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            (key, value),
        )
        headers = {"X-Cache": "invalidated"}
        try:
            cache.delete(key)
        except Unavailable:
            counters.add("cache_errors")
            headers["X-Cache"] = "invalidate-failed"
        self._send_json(200, {"key": key, "value": value, "stored": True}, headers)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 411/413 (the connection is then closed)."""
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self.close_connection = True
            self._send_text(411, "Content-Length required")
            return None
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_text(413, f"value larger than {MAX_BODY_BYTES} bytes")
            return None
        return self.rfile.read(length)

    def _discard_body(self) -> None:
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self.close_connection = True
        elif int(length):
            self.rfile.read(int(length))

    def _send_text(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8", headers)

    def _send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, (json.dumps(data) + "\n").encode(), "application/json", headers)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # a client (or the load balancer) hung up early: routine, not an error
        log.exception("unhandled error for %s", client_address)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {REPLICA} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # Without an init process PID 1 ignores SIGTERM; exit cleanly either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = Server(("0.0.0.0", PORT), Handler)
    log.info(
        "replica %s listening on 0.0.0.0:%d (db %s, cache %s, data %s, fault file %s)",
        REPLICA,
        PORT,
        db.host,
        cache.host,
        DATA_DIR,
        FAULT_FILE,
    )
    try:
        server.serve_forever()
    finally:
        log.info("replica %s stopping", REPLICA)


if __name__ == "__main__":
    main()
