"""Real milters for the end-to-end tests: Debian's rspamd (proxy worker in milter mode) and OpenDKIM (signing),
each a private instance on a free 127.0.0.1 port with its config, state and log in a fresh directory, stopped by
the fixture's finalizer. Also `milter_peer`, a fixture factory for the scripted milter of milterpeer.py.

    def test_x(rspamd_milter):          # RspamdMilter: .address "inet:127.0.0.1:PORT", .log(), .stop()
    def test_y(opendkim_milter):        # OpenDKIMMilter: .address, .domain, .selector, .record (DNS TXT text)
    def test_z(milter_peer):            # factory: peer = milter_peer(Script(...)) -> a started MilterPeer

A test module imports the fixtures it uses: `from milter_peers import rspamd_milter  # noqa: F401`.

rspamd (3.4): `rspamd -f -u _rspamd -g _rspamd -c <dir>/rspamd.conf --var LOCAL_CONFDIR=<dir>/local ...`; the
private rspamd.conf includes Debian's /etc/rspamd/common.conf (all modules and rules) and defines one worker only,
`rspamd_proxy` with `milter = yes` and `upstream "local" { self_scan = yes; }` (it scans in-process: no normal
worker, no controller, no Redis). rspamd's resolver is pointed at a fake DNS server on loopback that answers
NXDOMAIN (no lookup leaves the machine, and none waits for a timeout). milter_headers is told to add its
headers for every message (local ones too). Ready when the proxy port accepts a connection and answers a milter
OPTNEG (the proxy opens its port before the scanner's rules are compiled).

OpenDKIM (2.11): `opendkim -f -x <dir>/opendkim.conf` with Mode s, KeyTable/SigningTable for one domain
(key made by `opendkim-genkey`), InternalHosts 127.0.0.1, Socket inet:PORT@127.0.0.1; started as root, it drops to
the `opendkim` user itself (UserID). Ready when the port answers a milter OPTNEG.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from dnslib.server import DNSLogger, DNSServer

from milterpeer import MilterPeer, Script, packet
from relay_helpers import wait_for
from send_helpers.fakedns import Zone
from ternlib import RawSMTP, SMTPClosed, free_port, queue_id

START_TIMEOUT = 60.0  # rspamd compiles its regexp cache on first start: allow for a slow CI machine
STOP_TIMEOUT = 10.0


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary) or next((p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}")
                                         if os.path.exists(p)), None)
    if path and os.geteuid() == 0:
        return path
    why = f"{binary} not installed (apt-get install {package}) or the tests do not run as root"
    if os.environ.get("CI"):
        pytest.fail(why + "; .ci/run installs it")
    pytest.skip(why)


def milter_handshake(port: int, timeout: float = 2.0) -> bool:
    """True if 127.0.0.1:port answers a milter v6 SMFIC_OPTNEG with an SMFIC_OPTNEG of its own."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(packet(b"O", struct.pack(">III", 6, 0x1FF, 0)))
            head = b""
            while len(head) < 5:
                chunk = s.recv(5 - len(head))
                if not chunk:
                    return False
                head += chunk
            return head[4:5] == b"O"
    except OSError:
        return False


def wait_until(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}\n{log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{log()}")
        time.sleep(0.1)


def _stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM to the process we started, then SIGKILL if it has not exited in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


# ---------------------------------------------------------------- rspamd

RSPAMD_CONF = """\
# Private rspamd for tern's tests: Debian's rules and modules, one proxy worker in milter mode.
.include "$CONFDIR/common.conf"

options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}

logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
    color = false;
}}

worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{port}";
    milter = yes;
    timeout = 120s;
    count = 1;
    upstream "local" {{
        default = yes;
        self_scan = yes;
    }}
    spam_header = "X-Spam";
    reject_message = "Spam message rejected";
}}
"""

RSPAMD_LOCAL_OPTIONS = """\
dns {{
    nameserver = ["127.0.0.1:{dns_port}"];
    timeout = 1s;
    retransmits = 1;
}}
"""

# Headers for every message, not only for mail from outside (skip_local/skip_authenticated default to true).
RSPAMD_MILTER_HEADERS = """\
use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id", "x-spam-level", "x-spam-status",
       "authentication-results"];
skip_local = false;
skip_authenticated = false;
"""


class RspamdMilter:
    """One private rspamd; `address` is what tern's [[milters]] address takes."""

    def __init__(self) -> None:
        self.binary = _require("rspamd", "rspamd")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tern-rspamd-"))
        self.root.chmod(0o755)
        self.proc: subprocess.Popen | None = None
        self.dns: DNSServer | None = None

    @property
    def address(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "log" / "rspamd.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except FileNotFoundError:
            out = self.root / "stdout.log"
            return out.read_text(errors="replace")[-4000:] if out.exists() else "(no rspamd log)"

    def start(self) -> "RspamdMilter":
        user = pwd.getpwnam("_rspamd")
        # Every name NXDOMAIN (RBLs, SURBL, maps.rspamd.com): quiet, on UDP, never off the machine.
        dns_port = free_port()
        self.dns = DNSServer(Zone({}), port=dns_port, address="127.0.0.1",
                             logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False))
        self.dns.start_thread()
        for d in ("local/local.d", "db", "run", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        for d in ("db", "run", "log"):
            os.chown(self.root / d, user.pw_uid, user.pw_gid)
        (self.root / "rspamd.conf").write_text(RSPAMD_CONF.format(port=self.port))
        (self.root / "local" / "local.d" / "options.inc").write_text(
            RSPAMD_LOCAL_OPTIONS.format(dns_port=dns_port))
        (self.root / "local" / "local.d" / "milter_headers.conf").write_text(RSPAMD_MILTER_HEADERS)
        for p in self.root.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        cmd = [self.binary, "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", str(self.root / "rspamd.conf"),
               "--var", f"LOCAL_CONFDIR={self.root / 'local'}", "--var", f"DBDIR={self.root / 'db'}",
               "--var", f"RUNDIR={self.root / 'run'}", "--var", f"LOGDIR={self.root / 'log'}"]
        self._out = open(self.root / "stdout.log", "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
                                     cwd=self.root)
        try:
            wait_until(lambda: milter_handshake(self.port), START_TIMEOUT, f"rspamd milter on 127.0.0.1:{self.port}",
                       self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop_process(self.proc)
        if self.dns is not None:
            self.dns.stop()
            self.dns = None
        if getattr(self, "_out", None):
            self._out.close()
            self._out = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def rspamd_milter():
    r = RspamdMilter()
    try:
        yield r.start()
    finally:
        r.cleanup()


# ---------------------------------------------------------------- OpenDKIM

DKIM_DOMAIN = "signer.test"
DKIM_SELECTOR = "odk"

OPENDKIM_CONF = """\
# Private OpenDKIM for tern's tests: signs mail from {domain} (and checks nothing else).
Syslog                  no
LogWhy                  yes
Background              no
Mode                    s
Canonicalization        relaxed/simple
Socket                  inet:{port}@127.0.0.1
PidFile                 {root}/opendkim.pid
UserID                  opendkim:opendkim
UMask                   002
KeyTable                refile:{root}/KeyTable
SigningTable            refile:{root}/SigningTable
InternalHosts           {root}/InternalHosts
ExternalIgnoreList      {root}/InternalHosts
OversignHeaders         From
SignatureAlgorithm      rsa-sha256
RequireSafeKeys         no
"""


class OpenDKIMMilter:
    """One private OpenDKIM signing for `domain` with selector `selector`; `record` is the TXT record text."""

    def __init__(self, domain: str = DKIM_DOMAIN, selector: str = DKIM_SELECTOR) -> None:
        self.binary = _require("opendkim", "opendkim")
        self.genkey = _require("opendkim-genkey", "opendkim-tools")
        self.domain, self.selector = domain, selector
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tern-opendkim-"))
        self.root.chmod(0o755)
        self.proc: subprocess.Popen | None = None
        self.record = ""

    @property
    def address(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def log(self) -> str:
        p = self.root / "opendkim.out"
        return p.read_text(errors="replace")[-6000:] if p.exists() else "(no opendkim output)"

    def dnsfunc(self):
        """A dkimpy dnsfunc answering this key's record (and nothing else)."""
        table = {self.dns_name: self.record.encode()}

        def lookup(name, timeout=5):
            name = name.decode() if isinstance(name, bytes) else name
            return table.get(name.rstrip(".").lower(), b"")
        return lookup

    def start(self) -> "OpenDKIMMilter":
        keys = self.root / "keys"
        keys.mkdir()
        r = subprocess.run([self.genkey, "-b", "2048", "-d", self.domain, "-s", self.selector, "-D", str(keys)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"opendkim-genkey: {r.stderr}"
        # The .txt is a zone-file line: name IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=..." ) ; comment
        zone = (keys / f"{self.selector}.txt").read_text()
        self.record = "".join(re.findall(r'"([^"]*)"', zone.split(")")[0]))
        assert self.record.startswith("v=DKIM1;") and "p=" in self.record, zone
        odk = pwd.getpwnam("opendkim")
        key = keys / f"{self.selector}.private"
        os.chown(key, odk.pw_uid, odk.pw_gid)
        key.chmod(0o600)
        (self.root / "KeyTable").write_text(f"{self.dns_name} {self.domain}:{self.selector}:{key}\n")
        (self.root / "SigningTable").write_text(f"*@{self.domain} {self.dns_name}\n")
        (self.root / "InternalHosts").write_text("127.0.0.1\n")
        (self.root / "opendkim.conf").write_text(OPENDKIM_CONF.format(domain=self.domain, port=self.port,
                                                                       root=self.root))
        os.chown(self.root, odk.pw_uid, odk.pw_gid)  # the pid file is written after dropping privileges
        self._out = open(self.root / "opendkim.out", "ab")
        self.proc = subprocess.Popen([self.binary, "-f", "-x", str(self.root / "opendkim.conf")],
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
                                     cwd=self.root)
        try:
            wait_until(lambda: milter_handshake(self.port), START_TIMEOUT,
                       f"opendkim on 127.0.0.1:{self.port}", self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop_process(self.proc)
        if getattr(self, "_out", None):
            self._out.close()
            self._out = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def opendkim_milter():
    o = OpenDKIMMilter()
    try:
        yield o.start()
    finally:
        o.cleanup()


# ---------------------------------------------------------------- the scripted milter


@pytest.fixture
def milter_peer():
    """Factory: `peer = milter_peer(Script(...), unix_path=None)` -> a started MilterPeer, stopped at teardown."""
    started: list[MilterPeer] = []

    def factory(script: Script | None = None, **kw) -> MilterPeer:
        peer = MilterPeer(script, **kw).start()
        started.append(peer)
        return peer

    yield factory
    for p in started:
        p.stop()


# ---------------------------------------------------------------- the SMTP side of the milter tests
# (shared by test_milter.py, test_milter_rspamd.py and test_milter_opendkim.py)

SENDER = "sender@example.test"
ALICE = "alice@tern.test"
BOB = "bob@tern.test"
CAROL = "carol@tern.test"
REMOTE_BOB = "bob@remote.test"

TEMPFAIL = (451, "4.7.1 Service unavailable - try again later")
CMD_REJECT = (550, "5.7.1 Command rejected")
CONTENT_REJECT = (550, "5.7.1 Message content rejected")
GO_AWAY = "554 5.7.0 Go away (scripted milter)"
LATER = "452 4.3.1 Come back later (scripted milter)"
WAIT = 20.0




def milter_cfg(peer: MilterPeer | str, name: str = "test", **kw) -> dict:
    """One [[milters]] table; `peer` is a MilterPeer or an address string."""
    address = peer if isinstance(peer, str) else peer.address
    return {"name": name, "address": address, "timeout": kw.pop("timeout", "5s"), **kw}


def start(tern, *milters: dict, **overrides):
    """tern with these [[milters]] and a debug log (the log is asserted on failures)."""
    cfg = {"milters": list(milters), "log": {"level": "debug"}}
    cfg.update(overrides)
    return tern(**cfg)


class Session:
    """The replies of one SMTP session, stopping where the server's answer ends the transaction."""

    def __init__(self) -> None:
        self.greeting: tuple[int, str] | None = None
        self.ehlo: tuple[int, str] | None = None
        self.mail: tuple[int, str] | None = None
        self.rcpts: list[tuple[int, str]] = []
        self.data: tuple[int, str] | None = None
        self.dot: tuple[int, str] | None = None
        self.closed = False  # the server closed the connection (after a 421/554 greeting)
        self.client_port = 0

    def failed_at(self) -> str | None:
        for step in ("greeting", "ehlo", "mail", "data", "dot"):
            r = getattr(self, step)
            if r is not None and r[0] >= 400:
                return step
        return None

    @property
    def qid(self) -> str:
        assert self.dot and self.dot[0] == 250, f"no 250 after the dot: {self}"
        return queue_id(self.dot[1])

    def __repr__(self) -> str:
        return (f"Session(greeting={self.greeting}, ehlo={self.ehlo}, mail={self.mail}, rcpts={self.rcpts}, "
                f"data={self.data}, dot={self.dot}, closed={self.closed})")


def reply(c: RawSMTP) -> tuple[int, str]:
    code, lines = c.read_reply()
    return code, "\n".join(lines)


def stuff(msg: bytes) -> bytes:
    """The message as sent after DATA: a line starting with "." gets another one (RFC 5321 4.5.2)."""
    assert msg.endswith(b"\r\n")
    return re.sub(rb"(?m)^\.", b"..", msg)


def send_mail(port: int, msg: bytes, rcpts=(ALICE,), sender: str = SENDER, client=None, rset_first=False,
              mail_params: str = "") -> Session:
    """One session on port: greeting, EHLO, MAIL, RCPT..., DATA, the message (dot-stuffed), QUIT; records every
    reply.

    After a refused MAIL it still sends the RCPTs (to see the 503); after a refused greeting it reads to EOF."""
    s = Session()
    c = client or RawSMTP("127.0.0.1", port, timeout=15)
    with c:
        s.client_port = c.sock.getsockname()[1]
        if client is None:
            try:
                s.greeting = reply(c)
            except SMTPClosed:
                s.closed = True
                return s
            if s.greeting[0] != 220:
                try:
                    c.wait_closed(10)
                    s.closed = True
                except AssertionError:
                    pass
                return s
            s.ehlo = c.cmd("EHLO client.test")
            if s.ehlo[0] != 250:
                return s
        if rset_first:
            c.expect(f"MAIL FROM:<{sender}>", 250)
            c.expect(f"RCPT TO:<{rcpts[0]}>", 250)
            c.expect("RSET", 250)
        s.mail = c.cmd(f"MAIL FROM:<{sender}>{mail_params}")
        for r in rcpts:
            s.rcpts.append(c.cmd(f"RCPT TO:<{r}>"))
        if s.mail[0] != 250 or not any(code == 250 for code, _ in s.rcpts):
            c.cmd("QUIT")
            return s
        s.data = c.cmd("DATA")
        if s.data[0] != 354:
            c.cmd("QUIT")
            return s
        c.send(stuff(msg) + b".\r\n")
        s.dot = reply(c)
        try:
            c.cmd("QUIT")
        except (SMTPClosed, OSError):
            pass
    return s


def message(subject: str = "milter test", body: bytes = b"Hello Alice,\r\n\r\nsee you at ten.\r\n", extra: bytes = b"",
            to: str = ALICE) -> bytes:
    return (f"From: Sender <{SENDER}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}.{time.monotonic_ns()}@example.test>\r\n".encode()
            + extra + b"\r\n" + body)


def crlf(content: bytes) -> bytes:
    return content if b"\r\n" in content else content.replace(b"\n", b"\r\n")


def unfold(v: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", v).strip()


def parse(content: bytes) -> tuple[list[tuple[str, str]], list[bytes], bytes]:
    """A stored or relayed message as ([(name, unfolded value)], [raw field lines], body) with CRLF line ends;
    the per-mailbox trace fields tern adds at delivery (Return-Path, Delivered-To) are left out."""
    head, _, body = crlf(content).partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?![ \t])", head)
    pairs, raws = [], []
    for f in fields:
        name, _, value = f.partition(b":")
        if name.lower() in (b"return-path", b"delivered-to") and not pairs:
            continue
        pairs.append((name.decode(), unfold(value.decode("utf-8", "replace"))))
        raws.append(f)
    return pairs, raws, body


def seen(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The header fields a milter received, unfolded (to compare with a stored copy)."""
    return [(n, unfold(v)) for n, v in headers]


def body_of(msg: bytes) -> bytes:
    return msg.partition(b"\r\n\r\n")[2]


def stored(srv, addr: str = ALICE, count: int = 1) -> list[bytes]:
    try:
        return srv.wait_messages(addr, count, timeout=WAIT)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- tern log ---\n{srv.log()[-4000:]}") from None


def conn_for(peer: MilterPeer, s: Session, closed: bool = True):
    """The milter connection of SMTP session `s` (tern opens one per SMTP connection, the readiness probe of the
    tern fixture included): the one whose CONNECT names the client's port. Waits for its end if `closed`."""
    def get():
        for c in peer.connections:
            if c.connect and c.connect[2] == s.client_port and (c.closed or not closed):
                return c
        return None
    return peer.wait_for(get, WAIT, f"the milter connection of client port {s.client_port}")


def txn(peer: MilterPeer, index: int = 0, eom: bool = False):
    """The index-th transaction of the (last) milter connection that had one, waiting for EOM if asked."""
    def get():
        for c in reversed(peer.connections):
            ts = c.transactions
            if len(ts) > index and (ts[index].eom or not eom):
                return ts[index]
        return None
    return peer.wait_for(get, WAIT, f"a milter transaction {index}{' with EOM' if eom else ''}")


def assert_log(srv, pattern: str, timeout: float = 5.0) -> None:
    wait_for(lambda: re.search(pattern, srv.log()), timeout, f"log line matching {pattern!r}\n{srv.log()[-3000:]}")


def assert_no_copy(srv, addr: str, settle: float = 1.0) -> None:
    deadline = time.monotonic() + settle
    while True:
        assert srv.messages(addr) == [], f"{addr} got a copy"
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


def assert_still_serves(srv, peer: MilterPeer | None = None, rcpt: str = CAROL) -> None:
    """After a failure: a new connection right after is served and its message delivered (the milter, if given,
    is told to behave first)."""
    if peer is not None:
        peer.script = Script()
    before = len(srv.messages(rcpt))
    s = send_mail(srv.port, message("still serving", to=rcpt), rcpts=(rcpt,))
    assert s.dot and s.dot[0] == 250, f"tern does not serve after the failure: {s}\n{srv.log()[-3000:]}"
    stored(srv, rcpt, before + 1)
    assert srv.running(), f"tern exited: {srv.log()[-3000:]}"


def expect(r: tuple[int, str] | None, want: tuple[int, str], what: str, s: Session) -> None:
    assert r is not None, f"{what}: no reply recorded; {s}"
    assert r[0] == want[0] and r[1].startswith(want[1]), f"{what}: expected {want}, got {r}; {s}"
