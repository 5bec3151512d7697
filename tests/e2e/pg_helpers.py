"""A private PostgreSQL cluster for the shared-queue tests (tests/e2e/test_cluster*.py): `initdb` into a temp
dir and `pg_ctl start` on a free loopback port, as the unprivileged `nobody` when the tests run as root (PostgreSQL
refuses to run as root). One cluster per test session; each test gets a database of its own (`fresh_db`).
`Sink` is the remote the nodes relay to: it records which node delivered each message and how many connections and
DATA transactions it saw at once."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from ternlib import free_port

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def pg_bin(name: str) -> str | None:
    for d in PG_BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


def available() -> bool:
    return all(pg_bin(n) for n in ("initdb", "pg_ctl", "psql"))


class Cluster:
    """A running private cluster: `url(db)` gives a postgres:// URL for database `db`."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="tern-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "pg.log"
        self.port = free_port()
        self.user = "tern"
        self.as_user: list[str] = []
        self.counter = 0
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "nobody", "--"]
        self.sock.mkdir()
        if self.as_user:
            pw = pwd.getpwnam("nobody")
            os.chown(self.sock, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *args], capture_output=True, text=True, check=check, timeout=timeout,
                              cwd=self.root)

    def init(self) -> "Cluster":
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust", "--no-sync", "-E", "UTF8")
        # The durability tern relies on: fsync and synchronous commit on (the defaults, said explicitly).
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.sock}'\n"
                "fsync = on\nsynchronous_commit = on\nmax_connections = 200\nshared_buffers = 64MB\n"
                "log_min_messages = warning\n"
            )
        return self.start()

    def start(self) -> "Cluster":
        r = self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start",
                      check=False)
        if r.returncode != 0:
            raise AssertionError(f"pg_ctl start failed: {r.stdout}{r.stderr}\n{self.log_text()}")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def running(self) -> bool:
        r = self._run(pg_bin("pg_ctl"), "-D", str(self.data), "status", check=False)
        return r.returncode == 0

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def url(self, db: str = "postgres") -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Runs `sql` and returns the unaligned, tuples-only output."""
        r = subprocess.run([pg_bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.url(db),
                            "-c", sql], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"psql failed: {sql!r}: {r.stderr}")
        return r.stdout.strip()

    def fresh_db(self) -> str:
        """A new empty database; returns its name."""
        self.counter += 1
        name = f"tern_{os.getpid()}_{self.counter}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def url_file(dir: Path, url: str) -> Path:
    """The file queue.postgres_url_file points at (mode 0600, as the docs say)."""
    p = dir / "pg.url"
    p.write_text(url + "\n")
    p.chmod(0o600)
    return p


def pg_queue_config(dir: Path, url: str, node_id: str, lease_time: str = "5m") -> dict:
    """The [queue] table of a node on the shared queue."""
    return {"backend": "postgres", "postgres_url_file": str(url_file(dir, url)), "node_id": node_id,
            "lease_time": lease_time}


def wait_for(cond, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


# ---------------------------------------------------------------- the remote side of the cluster tests

MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


def message_id(content: bytes) -> str | None:
    m = MESSAGE_ID.search(content)
    return m.group(1).decode() if m else None


@dataclass
class Arrival:
    helo: str  # the EHLO name the delivering node gave (its `hostname`)
    mail_from: str
    rcpt_tos: list[str]
    content: bytes  # byte-exact, as received
    message_id: str | None
    at: float  # time.time() when the DATA was accepted


class _SinkHandler:
    def __init__(self, sink: "Sink"):
        self.sink = sink

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.sink.note(session, "MAIL")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_DATA(self, server, session, envelope):
        s = self.sink
        s.note(session, "DATA")
        with s.lock:
            s.active_data += 1
            s.max_active_data = max(s.max_active_data, s.active_data)
        try:
            if s.hold:
                await asyncio.sleep(s.hold)
            reply = s.data_reply
            if reply:
                with s.lock:
                    s.refused += 1
                return reply
            content = envelope.original_content if envelope.original_content is not None else envelope.content
            content = bytes(content)
            with s.lock:
                s.arrivals.append(Arrival(session.host_name or "", envelope.mail_from, list(envelope.rcpt_tos),
                                          content, message_id(content), time.time()))
                n = len(s.arrivals)
            return f"250 2.0.0 queued as SINK{n}"
        finally:
            s.note(session, "DATA done")
            with s.lock:
                s.active_data -= 1


class _SinkSMTP(SMTP):
    def __init__(self, handler, sink: "Sink", **kw):
        super().__init__(handler, **kw)
        self._sink = sink

    def connection_made(self, transport):
        super().connection_made(transport)
        self._opened = time.monotonic()
        self._sink.note(self.session, "connect")
        with self._sink.lock:
            self._sink.live[id(self)] = self
            self._sink.connections += 1
            self._sink.active_conns += 1
            self._sink.max_active_conns = max(self._sink.max_active_conns, self._sink.active_conns)

    def connection_lost(self, error):
        self._sink.note(self.session, "close")
        with self._sink.lock:
            self._sink.active_conns -= 1
            self._sink.live.pop(id(self), None)
            self._sink.spans.append((self._opened, time.monotonic(), self.session.host_name or ""))
        super().connection_lost(error)


class _SinkController(Controller):
    def __init__(self, sink: "Sink", **kw):
        self._sink = sink
        super().__init__(_SinkHandler(sink), **kw)

    def factory(self):
        return _SinkSMTP(self.handler, self._sink, **self.SMTP_kwargs)


class Sink:
    """`with Sink() as s:` an aiosmtpd server on 127.0.0.1:s.port that records every accepted message
    (`s.arrivals`, with the EHLO name, i.e. which node delivered it, and the time), answers every DATA with
    `s.data_reply` when set (e.g. "451 4.3.2 ..."), holds each DATA `s.hold` seconds before answering, and
    keeps the highest number of connections and of DATA transactions it saw at the same time."""

    def __init__(self, hold: float = 0.0, data_reply: str | None = None):
        self.port = free_port()
        self.hold = hold
        self.data_reply = data_reply
        self.lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self.refused = 0
        self.connections = 0
        self.active_conns = 0
        self.max_active_conns = 0
        self.spans: list[tuple[float, float, str]] = []  # (opened, closed, EHLO name) of each closed connection
        self.live: dict = {}  # the connections open now
        self.events: list[tuple[float, int, str, str]] = []  # (time.monotonic(), connection, EHLO name, what)
        self.active_data = 0
        self.max_active_data = 0
        self.controller = _SinkController(self, hostname="127.0.0.1", port=self.port, decode_data=False,
                                          server_hostname="sink.test", ready_timeout=10)

    def __enter__(self) -> "Sink":
        self.controller.start()
        # Controller.start() probes the port once itself: forget that connection.
        wait_for(lambda: self.active_conns == 0, 5, "the controller's probe connection to close")
        with self.lock:
            self.connections = 0
            self.max_active_conns = 0
            self.spans.clear()
            self.events.clear()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    def note(self, session, what: str) -> None:
        with self.lock:
            self.events.append((time.monotonic(), id(session) % 100000, session.host_name or "", what))

    def timeline(self) -> str:
        """Every connect / MAIL / DATA / close seen, relative to the first, one per line."""
        with self.lock:
            ev = list(self.events)
        t0 = ev[0][0] if ev else 0
        return "\n".join(f"  {t - t0:7.3f}s conn {c:5d} {h or '-':16s} {w}" for t, c, h, w in ev)

    def overlaps(self) -> list[tuple[str, str, float]]:
        """Pairs of connections that were open at the same time: (EHLO a, EHLO b, seconds of overlap); a
        connection still open counts as open until now (its EHLO name then ends with " (open)")."""
        now = time.monotonic()
        with self.lock:
            spans = sorted(self.spans + [(c._opened, now, (c.session.host_name or "") + " (open)")
                                         for c in self.live.values()])
        out = []
        for i, (o1, c1, h1) in enumerate(spans):
            for o2, c2, h2 in spans[i + 1:]:
                if o2 >= c1:
                    break
                out.append((h1, h2, round(min(c1, c2) - o2, 3)))
        return out

    def ids(self) -> list[str | None]:
        with self.lock:
            return [a.message_id for a in self.arrivals]

    def wait_ids(self, wanted, timeout: float, what: str = "", extra=lambda: "") -> None:
        """Waits until every Message-ID in `wanted` has arrived at least once; fails naming the missing ones."""
        wanted = set(wanted)
        deadline = time.monotonic() + timeout
        while True:
            missing = wanted - set(self.ids())
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {len(missing)} of {len(wanted)} message(s) never reached the sink "
                                     f"within {timeout}s: {sorted(missing)[:20]}{extra()}")
            time.sleep(0.1)
