"""Peers and readers for the relay tests (test_relay*.py): the remote side of an outbound delivery.

- `Remote`: an aiosmtpd server on 127.0.0.1:<free port> whose MAIL/RCPT/DATA replies are scripted (a FIFO of
  one-shot replies per phase, then a default), that records every accepted message with the number of the
  connection it came on, and counts connections.
- `RawPeer`: a socket server for peers that break the protocol (never answer, garbage, code 600, a 10 MB line,
  no reply after the final dot); counts connections.
- `LoggingDNS`: the fake DNS server of send_helpers/fakedns.py plus a log of the questions it was asked.
- `Postfix`: a private Postfix instance (own config dir, queue and Maildirs, loopback port) accepting mail for
  one domain into one Maildir per user with virtual(8); unknown users get Postfix's own 550 5.1.1.
- Readers: queue envelopes straight from the spool, `tern queue` through the CLI, DSN bounces parsed with
  Python's `email` package, bounded waits.
"""

from __future__ import annotations

import email
import fcntl
import email.policy
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from dnslib import QTYPE
from dnslib.server import DNSServer

from send_helpers.fakedns import FakeDNS, Zone
from send_helpers.fakedns import free_port as dns_free_port
from ternlib import HOSTNAME, LOCAL_DOMAIN, Tern, free_port, tern_bin

WAIT = 20.0  # default deadline of every wait in the relay tests
POLL = 0.1

# The local sender whose bounces land in a Maildir under the tern data dir.
ALICE = f"alice@{LOCAL_DOMAIN}"


def wait_for(predicate, timeout: float = WAIT, what: str = "condition", interval: float = POLL):
    """Polls `predicate()` until it returns something truthy (returned) or the deadline passes (fails)."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- tern configuration


def greets(port: int) -> bool:
    """A peer on 127.0.0.1:port answers with a 220 greeting (then it is sent QUIT)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(5)
            ok = s.recv(512).startswith(b"220")
            s.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


def relay_config(routes: dict | None = None, queue: dict | None = None, outbound: dict | None = None,
                 dns: dict | None = None, **extra) -> dict:
    """Overrides for the `tern` fixture: explicit hostname, short retries and timeouts, debug log.

    The retry schedule defaults to one hour so that a deferred recipient stays deferred unless a test asks
    for quick retries."""
    cfg: dict = {
        "hostname": HOSTNAME,
        "queue": {"retry_schedule": ["1h"], **(queue or {})},
        "outbound": {"connect_timeout": "3s", "command_timeout": "5s", "data_timeout": "5s", "tls": "none",
                     **(outbound or {})},
        "log": {"level": "debug"},
    }
    if routes:
        cfg["routes"] = routes
    if dns:
        cfg["dns"] = dns
    cfg.update(extra)
    return cfg


def route_to(port: int) -> str:
    return f"127.0.0.1:{port}"


# ---------------------------------------------------------------- queue readers


def reply_text(reply: dict | str | None) -> str | None:
    """A stored reply (docs/spool-format.md: an object, or a plain string from an older tern) as the
    text `tern queue list` shows: `550 5.1.1 no such user`."""
    if reply is None or isinstance(reply, str):
        return reply
    return " ".join(str(p) for p in (reply["code"], reply.get("enhanced"), reply.get("text")) if p)


def _with_reply_texts(env: dict) -> dict:
    """Each stored reply object becomes its text, the object kept beside it under `<key>_detail`."""
    items = [r.get("status", {}) for r in env.get("recipients", [])] + env.get("attempts_log", [])
    for item in items:
        for key in ("last_reply", "reply"):
            if isinstance(item.get(key), dict):
                item[f"{key}_detail"] = item[key]
                item[key] = reply_text(item[key])
    return env


def envelope(srv: Tern, qid: str) -> dict | None:
    """The envelope JSON of a queue entry read from the spool (docs/spool-format.md), or None once removed.
    Replies read as their text (`last_reply`, `reply`), with the stored object in `last_reply_detail` /
    `reply_detail`."""
    path = srv.data_dir / "queue" / "env" / qid
    try:
        return _with_reply_texts(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        # Envelopes are replaced by rename, so a partial read should not happen; treat it as "look again".
        return {}


def queue_ids(srv: Tern) -> list[str]:
    d = srv.data_dir / "queue" / "env"
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


def recipient(env: dict, addr: str) -> dict:
    for r in env.get("recipients", []):
        if r["address"].lower() == addr.lower():
            return r
    raise AssertionError(f"{addr} not in envelope {env}")


def wait_state(srv: Tern, qid: str, addr: str, state: str, timeout: float = WAIT) -> dict:
    """Waits until `addr` of entry `qid` is in `state` (read from the spool); returns its status object."""
    last: list = [None]

    def check():
        env = envelope(srv, qid)
        last[0] = env
        if not env:
            return None
        status = recipient(env, addr)["status"]
        return status if status.get("state") == state else None

    try:
        return wait_for(check, timeout, f"{addr} in {qid} to be {state}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last envelope: {last[0]}; log tail:\n{log_tail(srv)}") from None


def wait_gone(srv: Tern, qid: str, timeout: float = WAIT) -> None:
    """Waits until queue entry `qid` is removed (every recipient delivered or bounced)."""
    try:
        wait_for(lambda: envelope(srv, qid) is None, timeout, f"queue entry {qid} to be removed")
    except AssertionError as e:
        raise AssertionError(f"{e}; envelope: {envelope(srv, qid)}; log tail:\n{log_tail(srv)}") from None


class Busy:
    """Holds the entry's lock the way a delivery in progress does: flock(LOCK_EX) on queue/msg/<id>."""

    def __init__(self, srv, qid: str):
        self.path = srv.data_dir / "queue" / "msg" / qid

    def __enter__(self):
        self.f = open(self.path, "rb")
        # The relay may hold it for a moment itself: wait for it (bounded).
        deadline = time.monotonic() + WAIT
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def tern_queue(srv: Tern, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """Runs `tern queue ARGS` against the server's config (TERN_CONFIG) and returns the finished process."""
    env = dict(os.environ, TERN_CONFIG=str(srv.config_path))
    return subprocess.run([str(tern_bin()), "queue", *args], env=env, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def queue_show(srv: Tern, qid: str) -> dict:
    r = tern_queue(srv, "show", qid, "--json")
    assert r.returncode == 0, f"tern queue show {qid} --json: exit {r.returncode}\n{r.stdout!r}\n{r.stderr!r}"
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"tern queue show --json printed no JSON ({e}): {r.stdout!r}") from None


def log_tail(srv: Tern, lines: int = 40) -> str:
    return "\n".join(srv.log().splitlines()[-lines:])


# ---------------------------------------------------------------- DSN (RFC 3464) bounces


@dataclass
class DSN:
    raw: bytes
    msg: Message
    human: str  # the first (text/plain) part
    per_message: Message  # the per-message fields block of message/delivery-status
    recipients: list[Message]  # one per-recipient fields block each
    original_headers: Message | None  # text/rfc822-headers (or the headers of message/rfc822)

    def for_rcpt(self, addr: str) -> Message:
        for block in self.recipients:
            if addr.lower() in str(block.get("Final-Recipient", "")).lower():
                return block
        raise AssertionError(f"no per-recipient block for {addr} in {[dict(b.items()) for b in self.recipients]}")


def parse_dsn(raw: bytes) -> DSN:
    """Parses a delivered bounce and checks its RFC 3464/6522 structure; fails with the message on error."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    ctx = f"\n--- bounce ---\n{raw[:4000].decode('utf-8', 'replace')}"
    assert msg.get_content_type() == "multipart/report", f"content type {msg.get_content_type()}{ctx}"
    assert msg.get_param("report-type") == "delivery-status", f"report-type {msg.get_param('report-type')}{ctx}"
    parts = msg.get_payload()
    assert isinstance(parts, list) and len(parts) >= 2, f"multipart/report needs >= 2 parts{ctx}"
    assert parts[0].get_content_type() == "text/plain", f"first part {parts[0].get_content_type()}{ctx}"
    status = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    assert len(status) == 1, f"expected one message/delivery-status part, found {len(status)}{ctx}"
    blocks = status[0].get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2, f"delivery-status needs per-message + per-recipient blocks{ctx}"
    original = None
    for p in parts[2:]:
        if p.get_content_type() == "text/rfc822-headers":
            original = email.message_from_string(p.get_content(), policy=email.policy.default)
        elif p.get_content_type() == "message/rfc822":
            original = p.get_payload()[0]
    return DSN(raw, msg, parts[0].get_content(), blocks[0], list(blocks[1:]), original)


def check_failed(dsn: DSN, rcpt: str, status_prefix: str = "5.", diag: str | None = None,
                 subject: str | None = None) -> Message:
    """Asserts a permanent-failure report for `rcpt`; returns its per-recipient block."""
    block = dsn.for_rcpt(rcpt)
    ctx = f"\n--- block ---\n{block}\n--- bounce ---\n{dsn.raw[:3000].decode('utf-8', 'replace')}"
    assert str(block.get("Action", "")).strip().lower() == "failed", f"Action{ctx}"
    st = str(block.get("Status", "")).strip()
    assert st.startswith(status_prefix), f"Status {st!r}, expected {status_prefix}*{ctx}"
    assert str(block.get("Final-Recipient", "")).lower().startswith("rfc822;"), f"Final-Recipient{ctx}"
    if diag is not None:
        code = " ".join(str(block.get("Diagnostic-Code", "")).split())
        assert diag in code, f"Diagnostic-Code {code!r} should contain {diag!r}{ctx}"
    if subject is not None:
        assert dsn.original_headers is not None, f"no text/rfc822-headers part{ctx}"
        assert dsn.original_headers.get("Subject") == subject, f"original Subject{ctx}"
    return block


def wait_bounce(srv: Tern, addr: str = ALICE, count: int = 1, timeout: float = WAIT) -> list[DSN]:
    """Waits for `count` messages in the local Maildir of `addr` and parses each as a DSN."""
    try:
        raws = srv.wait_messages(addr, count, timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}; queue: {[envelope(srv, q) for q in queue_ids(srv)]}; log tail:\n{log_tail(srv)}") from None
    return [parse_dsn(r) for r in raws]


def return_path(raw: bytes) -> str | None:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    v = msg.get("Return-Path")
    return None if v is None else v.strip()


# ---------------------------------------------------------------- scripted aiosmtpd remote


@dataclass
class Got:
    conn: int  # 1-based number of the connection the message came on
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]


@dataclass
class Script:
    """Replies of the remote. For each phase ("mail", "rcpt", "data") a FIFO of one-shot replies is used first,
    then `default[phase]` (None = accept). `rcpt_replies` answers chosen addresses (lower-case) every time."""
    once: dict[str, list[str]] = field(default_factory=lambda: {"mail": [], "rcpt": [], "data": []})
    default: dict[str, str | None] = field(default_factory=lambda: {"mail": None, "rcpt": None, "data": None})
    rcpt_replies: dict[str, str] = field(default_factory=dict)

    def next(self, phase: str) -> str | None:
        if self.once[phase]:
            return self.once[phase].pop(0)
        return self.default[phase]


class _Handler:
    def __init__(self, remote: "Remote"):
        self.remote = remote

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = self.remote.script.next("mail")
        self.remote.events.append((session.conn_no, "MAIL", address, reply or "250"))
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.remote.script.rcpt_replies.get(address.lower()) or self.remote.script.next("rcpt")
        self.remote.events.append((session.conn_no, "RCPT", address, reply or "250"))
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        reply = self.remote.script.next("data")
        self.remote.events.append((session.conn_no, "DATA", "", reply or "250"))
        if reply:
            return reply
        content = envelope.original_content if envelope.original_content is not None else envelope.content
        self.remote.messages.append(Got(session.conn_no, envelope.mail_from, list(envelope.rcpt_tos),
                                        bytes(content), list(envelope.mail_options)))
        return f"250 2.0.0 queued as REMOTE{len(self.remote.messages)}"


class _CountingSMTP(SMTP):
    def __init__(self, handler, remote: "Remote", **kw):
        super().__init__(handler, **kw)
        self._remote = remote

    def connection_made(self, transport):
        super().connection_made(transport)
        with self._remote.lock:
            self._remote.connections += 1
            self._remote.total += 1
            self.session.conn_no = self._remote.total


class _Controller(Controller):
    def __init__(self, remote: "Remote", **kw):
        self._remote = remote
        super().__init__(_Handler(remote), **kw)

    def factory(self):
        return _CountingSMTP(self.handler, self._remote, **self.SMTP_kwargs)


class Remote:
    """`with Remote() as r:` an aiosmtpd peer on 127.0.0.1:r.port.

    r.script (Script) decides the replies; r.messages (list[Got]) holds accepted messages; r.connections counts
    TCP connections; r.events logs (conn, verb, arg, reply) of every MAIL/RCPT/DATA."""

    def __init__(self, port: int | None = None, hostname: str = "remote.test", size_limit: int = 64 << 20):
        self.port = port or free_port()
        self.script = Script()
        self.messages: list[Got] = []
        self.events: list[tuple[int, str, str, str]] = []
        self.connections = 0  # since start or reset_counts()
        self.total = 0  # numbers connections for Got.conn and events
        self.lock = threading.Lock()
        self.controller = _Controller(self, hostname="127.0.0.1", port=self.port, decode_data=False,
                                      data_size_limit=size_limit, server_hostname=hostname, ready_timeout=10)
        self.started = False

    def start(self) -> "Remote":
        self.controller.start()
        self.started = True
        # Controller.start() connects once itself to check the server is up: that one does not count.
        with self.lock:
            self.connections = 0
        return self

    def reset_counts(self) -> None:
        """Forgets connections, events and messages so far (Got.conn numbers go on increasing)."""
        with self.lock:
            self.connections = 0
        self.events.clear()
        self.messages.clear()

    def stop(self) -> None:
        if self.started:
            self.controller.stop()
            self.started = False

    def __enter__(self) -> "Remote":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_messages(self, count: int = 1, timeout: float = WAIT, srv: Tern | None = None) -> list[Got]:
        try:
            wait_for(lambda: len(self.messages) >= count, timeout, f"{count} message(s) at the remote")
        except AssertionError as e:
            extra = ""
            if srv is not None:
                extra = f"; queue: {[envelope(srv, q) for q in queue_ids(srv)]}; log tail:\n{log_tail(srv)}"
            raise AssertionError(f"{e}; remote events: {self.events}{extra}") from None
        return list(self.messages)


# ---------------------------------------------------------------- protocol-breaking raw peer


class PeerConn:
    """One accepted connection of a RawPeer, as seen by a behaviour function."""

    def __init__(self, sock: socket.socket, stop: threading.Event):
        self.sock = sock
        self.stop = stop
        self.buf = b""
        sock.settimeout(0.2)

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def readline(self) -> bytes | None:
        """The next line (without CRLF), or None once the peer closed or the server stops."""
        while b"\n" not in self.buf:
            if self.stop.is_set():
                return None
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def drain(self) -> None:
        """Reads and ignores everything until the peer closes or the server stops: a peer that never answers."""
        while self.readline() is not None:
            pass


def silent(c: PeerConn) -> None:
    """Accepts the connection and never says a word."""
    c.drain()


def banner(data: bytes):
    """Sends `data` as the greeting, then reads forever without answering."""
    def behave(c: PeerConn) -> None:
        c.send(data)
        c.drain()
    return behave


def ehlo_reply(data: bytes):
    """A normal 220, then `data` as the EHLO (and HELO) reply, then silence."""
    def behave(c: PeerConn) -> None:
        c.send(b"220 raw.test ESMTP\r\n")
        while (line := c.readline()) is not None:
            if line[:4].upper() in (b"EHLO", b"HELO"):
                c.send(data)
                c.drain()
                return
    return behave


def no_reply_after_dot(c: PeerConn, at_dot: threading.Event | None = None) -> None:
    """A well-behaved server until the final dot, which it never answers (and sets `at_dot`, if given)."""
    c.send(b"220 raw.test ESMTP\r\n")
    while (line := c.readline()) is not None:
        verb = line[:4].upper()
        if verb == b"EHLO":
            c.send(b"250-raw.test\r\n250 8BITMIME\r\n")
        elif verb == b"DATA":
            c.send(b"354 go ahead\r\n")
            while (body := c.readline()) is not None and body != b".":
                pass
            if at_dot is not None:
                at_dot.set()
            c.drain()
            return
        elif verb == b"QUIT":
            c.send(b"221 bye\r\n")
            return
        else:
            c.send(b"250 ok\r\n")


class RawPeer:
    """`with RawPeer(behaviour) as p:` a TCP server on 127.0.0.1:p.port running `behaviour(PeerConn)` for each
    connection in its own thread; p.connections counts them."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop_event = threading.Event()
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop_event.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self.socks.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.behaviour(PeerConn(conn, self.stop_event))
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def __enter__(self) -> "RawPeer":
        self.acceptor.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.acceptor.join(timeout=5)
        for t in self.threads:
            t.join(timeout=5)
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.sock.close()


def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    return free_port()


# ---------------------------------------------------------------- DNS


class _LoggingZone(Zone):
    def __init__(self, records: dict, log: list):
        super().__init__(records)
        self.log = log

    def resolve(self, request, handler):
        self.log.append((str(request.q.qname).rstrip(".").lower(), QTYPE[request.q.qtype]))
        return super().resolve(request, handler)


class LoggingDNS(FakeDNS):
    """FakeDNS (send_helpers/fakedns.py: {name: {"MX": [(pref, host)], "A": [...], "AAAA": [...]}}, absent names
    are NXDOMAIN, "SERVFAIL" as a value fails) that also logs every question as (name, type) in .queries."""

    def __init__(self, records: dict):
        # Not FakeDNS.__init__: its servers bind the port at construction, and these replace them.
        self.port = dns_free_port()
        self.queries: list[tuple[str, str]] = []
        zone = _LoggingZone(records, self.queries)
        self.udp = DNSServer(zone, port=self.port, address="127.0.0.1")
        self.tcp = DNSServer(zone, port=self.port, address="127.0.0.1", tcp=True)

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"


# ---------------------------------------------------------------- private Postfix


def postfix_available() -> bool:
    return shutil.which("postfix") is not None and shutil.which("postconf") is not None and os.geteuid() == 0


def require_postfix() -> None:
    """Skips on a developer machine without Postfix (or not root); fails in CI, where .ci/run installs it."""
    if postfix_available():
        return
    why = "Postfix is not installed (apt-get install postfix) or the tests do not run as root"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


class Postfix:
    """A private Postfix on 127.0.0.1:<free port> with its own config dir, queue, log and Maildirs under a fresh
    directory in /tmp (never /etc/postfix's instance). Mail for `domain` goes through virtual(8) into
    <root>/vmail/<user>/ (a Maildir) for each user in `users`; other addresses at `domain` get 550 5.1.1."""

    def __init__(self, domain: str = "pf.test", users: tuple[str, ...] = ("bob", "carol"),
                 hostname: str = "postfix.pf.test", extra: tuple[str, ...] = ()):
        """`extra`: more main.cf settings ("name = value"), applied last."""
        self.domain = domain
        self.extra = extra
        self.users = users
        self.hostname = hostname
        self.port = free_port()
        # Not under pytest's tmp dirs: those are 0700 root, and virtual(8) writes as an unprivileged user.
        self.root = Path(tempfile.mkdtemp(prefix="tern-relay-postfix-"))
        self.root.chmod(0o755)
        self.conf = self.root / "etc"
        self.vmail = self.root / "vmail"
        self.log_path = self.root / "postfix.log"
        self.started = False

    def _postconf(self, *args: str) -> None:
        r = subprocess.run(["postconf", "-c", str(self.conf), *args], capture_output=True, timeout=30)
        assert r.returncode == 0, f"postconf {args}: {r.stderr.decode(errors='replace')}"

    def setup(self) -> None:
        nobody = pwd.getpwnam("nobody")
        postfix_user = pwd.getpwnam("postfix")
        for d in (self.conf, self.root / "spool", self.root / "lib", self.vmail):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("main.cf", "master.cf", "dynamicmaps.cf"):
            src = Path("/etc/postfix") / name
            if src.exists():
                shutil.copy(src, self.conf / name)
        if Path("/etc/postfix/dynamicmaps.cf.d").is_dir():
            shutil.copytree("/etc/postfix/dynamicmaps.cf.d", self.conf / "dynamicmaps.cf.d", dirs_exist_ok=True)
        os.chown(self.vmail, nobody.pw_uid, nobody.pw_gid)
        os.chown(self.root / "lib", postfix_user.pw_uid, postfix_user.pw_gid)
        mailboxes = ", ".join(f"{u}@{self.domain}={u}/" for u in self.users)
        self._postconf(
            "-e",
            f"queue_directory = {self.root / 'spool'}",
            f"data_directory = {self.root / 'lib'}",
            "meta_directory = /etc/postfix",
            f"maillog_file_prefixes = /var, /dev/stdout, {self.root}",
            f"maillog_file = {self.log_path}",
            f"myhostname = {self.hostname}",
            f"mydomain = {self.domain}",
            "myorigin = $myhostname",
            "mydestination =",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "alias_maps =",
            "alias_database =",
            "relayhost =",
            "relay_domains =",
            # Leave message headers exactly as tern sent them (no canonicalisation, no added headers).
            "local_header_rewrite_clients =",
            "smtpd_tls_security_level = none",
            "smtp_tls_security_level = none",
            f"virtual_mailbox_domains = {self.domain}",
            f"virtual_mailbox_base = {self.vmail}",
            # A trailing slash makes each value a Maildir; names not in the map are rejected at RCPT (550 5.1.1).
            f"virtual_mailbox_maps = inline:{{ {mailboxes} }}",
            f"virtual_uid_maps = static:{nobody.pw_uid}",
            f"virtual_gid_maps = static:{nobody.pw_gid}",
            "virtual_mailbox_limit = 0",
            "message_size_limit = 52428800",
            f"smtp_helo_name = {self.hostname}",
            *self.extra,
        )
        # Debian runs services chrooted, which needs copies of /etc files in the queue directory.
        self._postconf("-F", "*/*/chroot = n")
        subprocess.run(["postconf", "-c", str(self.conf), "-M#", "smtp/inet"], capture_output=True, timeout=30)
        self._postconf("-Me", f"127.0.0.1:{self.port}/inet = 127.0.0.1:{self.port} inet n - n - - smtpd")
        r = subprocess.run(["postfix", "-c", str(self.conf), "check"], capture_output=True, timeout=60)
        assert r.returncode == 0, f"postfix check: {r.stderr.decode(errors='replace')}"

    def start(self) -> "Postfix":
        self.setup()
        r = subprocess.run(["postfix", "-c", str(self.conf), "start"], capture_output=True, timeout=60)
        assert r.returncode == 0, f"postfix start: {r.stderr.decode(errors='replace')}\n{self.log()}"
        self.started = True

        try:
            wait_for(lambda: greets(self.port), 20, f"Postfix on 127.0.0.1:{self.port}", 0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log()}") from None
        return self

    def stop(self) -> None:
        if not self.started:
            return
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True, timeout=60)
        self.started = False
        # `postfix stop` returns before the master has exited: wait (bounded) for it, then kill only our own
        # master (its pid file is in our private queue directory).
        pidfile = self.root / "spool" / "pid" / "master.pid"

        def master_gone() -> bool:
            try:
                pid = int(pidfile.read_text().split()[0])
            except (FileNotFoundError, ValueError, IndexError):
                return True
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        try:
            wait_for(master_gone, 15, "Postfix master to exit", 0.2)
        except AssertionError:
            try:
                os.kill(int(pidfile.read_text().split()[0]), 9)
            except (OSError, ValueError, IndexError):
                pass

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Postfix":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return "(no Postfix log)"

    def maildir_files(self, user: str) -> list[Path]:
        new = self.vmail / user / "new"
        if not new.is_dir():
            return []
        return sorted(p for p in new.iterdir() if p.is_file())

    def wait_delivered(self, user: str, count: int = 1, timeout: float = WAIT) -> list[bytes]:
        try:
            wait_for(lambda: len(self.maildir_files(user)) >= count, timeout,
                     f"{count} message(s) in Postfix Maildir {self.vmail / user}/new")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- postfix log ---\n{self.log()}") from None
        return [p.read_bytes() for p in self.maildir_files(user)]
