"""LMTP delivery (RFC 2033) to a real Dovecot (`dovecot-lmtpd`): `[local] delivery = "lmtp"`.

Each test starts a private Dovecot (`dovecot -F -c CONF`: its own base_dir, state, log and Maildirs under a
temporary directory, `protocols = lmtp`, a Unix socket and a loopback TCP listener, users from a passwd-file
with nobody's uid) and reads what was delivered with `doveadm -c CONF fetch`, so the check is Dovecot's own
view of the mailbox.

- a message to two local users over the Unix socket: one tern message, both copies readable by doveadm, with
  tern's Received and Authentication-Results fields and the body as sent;
- the same over `inet:127.0.0.1:PORT`;
- one recipient Dovecot does not know (550 5.1.1) next to one it does: the good one is delivered, the
  (remote) sender gets a bounce for the other through a scripted SMTP sink;
- Dovecot down when the mail arrives: tern still answers 250 (queued), the entry is deferred with the LMTP
  connect error, and after Dovecot starts, `tern queue flush` delivers it.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from relay_helpers import (
    WAIT,
    Remote,
    check_failed,
    envelope,
    log_tail,
    parse_dsn,
    queue_ids,
    recipient,
    relay_config,
    route_to,
    tern_queue,
    wait_for,
    wait_gone,
    wait_state,
)
from sec_helpers import Client
from send_helpers.fakedns import FakeDNS
from ternlib import HOSTNAME, free_port, make_message, queue_id

OUTSIDE = "127.0.0.2"

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
LMTP_MODULE = Path("/usr/lib/dovecot/lmtp")

USERS = ["alice@tern.test", "bob@tern.test"]
SENDER = "sender@remote.test"


def _need_dovecot() -> None:
    missing = [p for p in (DOVECOT, DOVEADM, str(LMTP_MODULE)) if not os.path.exists(p)]
    if missing or os.geteuid() != 0:
        why = f"Dovecot LMTP not usable here (missing {missing}, euid {os.geteuid()}): apt-get install dovecot-lmtpd dovecot-core, run as root"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


class Dovecot:
    """A private Dovecot speaking only LMTP, on a Unix socket and 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        # A short path: the Unix socket's name must fit sun_path (108 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="tern-dc-"))
        os.chmod(self.root, 0o755)
        self.run_dir = self.root / "run"
        self.socket = self.run_dir / "lmtp"
        self.port = free_port()
        self.conf = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"
        self.proc: subprocess.Popen | None = None
        home = self.root / "home"
        home.mkdir()
        os.chmod(home, 0o777)
        lines = []
        for user in USERS:
            lines.append(f"{user}:{{PLAIN}}unused:65534:65534::{home / user}::")
        (self.root / "users").write_text("\n".join(lines) + "\n")
        self.conf.write_text(f"""
base_dir = {self.run_dir}
state_dir = {self.root / 'state'}
log_path = {self.log}
info_log_path = {self.log}
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = 1
mail_location = maildir:~/Maildir
auth_username_format = %Lu
lmtp_save_to_detail_mailbox = no
passdb {{
  driver = passwd-file
  args = {self.root / 'users'}
}}
userdb {{
  driver = passwd-file
  args = {self.root / 'users'}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
}}
""")

    def start(self) -> "Dovecot":
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"dovecot exited with {self.proc.returncode}:\n{self.log_text()}")
            return self.socket.exists() and _port_open(self.port)

        wait_for(ready, 15, "dovecot's LMTP listeners")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return "(no dovecot log)"

    def fetch(self, user: str) -> list[str]:
        """Every message in the user's INBOX, as doveadm reads it (header and body)."""
        r = subprocess.run([DOVEADM, "-c", str(self.conf), "fetch", "-u", user, "text", "mailbox", "INBOX", "all"],
                           capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"doveadm fetch -u {user}: exit {r.returncode}\n{r.stderr!r}\n{self.log_text()}"
        out = r.stdout.decode("utf-8", "replace")
        # doveadm's pager format: each message starts with "text:" and ends with a form feed.
        return [m.split("text:", 1)[1] for m in out.split("\f") if "text:" in m]

    def wait_fetch(self, user: str, count: int = 1, timeout: float = WAIT) -> list[str]:
        got: list = [[]]

        def check():
            got[0] = self.fetch(user)
            return len(got[0]) >= count

        try:
            wait_for(check, timeout, f"{count} message(s) for {user} in Dovecot")
        except AssertionError as e:
            raise AssertionError(f"{e}; got {got[0]}; dovecot log:\n{self.log_text()}") from None
        return got[0]

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def dovecot():
    _need_dovecot()
    d = Dovecot()
    try:
        yield d
    finally:
        d.cleanup()


def lmtp_tern(tern, target: str, remote: Remote | None = None):
    routes = {"*": route_to(remote.port)} if remote else None
    return tern(**relay_config(routes=routes, local={"delivery": "lmtp", "lmtp": target}))


def check_copy(text: str, body: str) -> None:
    norm = text.replace("\r\n", "\n")
    assert "Received: from client.test" in norm and "by mx.tern.test (tern)" in norm, norm[:2000]
    # The body as sent, the leading dot unstuffed (Dovecot stores LF line ends).
    assert norm.endswith("\n\n" + body.replace("\r\n", "\n")), norm[-2000:]


BODY = "Hello over LMTP.\r\n.a line with a leading dot\r\nbye\r\n"


def test_two_local_users_over_the_unix_socket(tern, dovecot):
    dovecot.start()
    srv = lmtp_tern(tern, f"unix:{dovecot.socket}")
    msg = make_message("lmtp unix", BODY.encode(), sender=SENDER, to="alice@tern.test")
    qid = srv.deliver(SENDER, USERS, msg)
    # One tern message: both recipients in one queue entry, delivered in one LMTP transaction.
    wait_gone(srv, qid)
    for user in USERS:
        [copy] = dovecot.wait_fetch(user)
        check_copy(copy, BODY)
        assert "Subject: lmtp unix" in copy
    # Nothing went to tern's own Maildirs.
    assert srv.delivered_files() == []


def test_inet_delivery_with_authentication_results(tern, dovecot):
    # Port-25 mail from outside the trusted networks (127.0.0.2) is verified: tern's
    # Authentication-Results (SPF pass from the fake DNS) travels over LMTP with the message.
    dovecot.start()
    with FakeDNS({"remote.test": {"TXT": [f"v=spf1 ip4:{OUTSIDE} -all"]}}) as dns:
        srv = tern(**relay_config(local={"delivery": "lmtp", "lmtp": f"inet:127.0.0.1:{dovecot.port}"},
                                  dns={"nameservers": [dns.addr]},
                                  relay={"trusted_networks": ["127.0.0.1/32"]}))
        msg = make_message("lmtp inet", BODY.encode(), sender=SENDER, to="bob@tern.test")
        with Client(srv.port, source=OUTSIDE) as c:
            c.start()
            c.expect(f"MAIL FROM:<{SENDER}>", 250)
            c.expect("RCPT TO:<Bob@Tern.test>", 250)
            c.expect("DATA", 354)
            c.send(msg.replace(b"\r\n.", b"\r\n..") + b".\r\n")  # dot-stuffed (RFC 5321 4.5.2)
            code, lines = c.read_reply()
            assert code == 250, lines
        qid = queue_id("\n".join(lines))
        wait_gone(srv, qid)
    [copy] = dovecot.wait_fetch("bob@tern.test")
    check_copy(copy, BODY)
    norm = copy.replace("\r\n", "\n")
    assert f"Authentication-Results: {HOSTNAME};" in norm, norm[:2000]
    assert "spf=pass" in norm, norm[:2000]
    # Trace order: tern's Received first, its Authentication-Results right below.
    assert norm.index("Received: from") < norm.index("Authentication-Results:"), norm[:2000]


def test_unknown_user_is_bounced_and_the_other_delivered(tern, dovecot):
    dovecot.start()
    with Remote() as remote:
        srv = lmtp_tern(tern, f"unix:{dovecot.socket}", remote)
        msg = make_message("half known", BODY.encode(), sender=SENDER, to="alice@tern.test")
        qid = srv.deliver(SENDER, ["alice@tern.test", "nosuchuser@tern.test"], msg)
        wait_gone(srv, qid)
        [copy] = dovecot.wait_fetch("alice@tern.test")
        check_copy(copy, BODY)
        # The bounce for the unknown one goes to the (remote) sender through the sink.
        [got] = remote.wait_messages(1, srv=srv)
        assert got.rcpt_tos == [SENDER]
        assert got.mail_from in ("", "<>")
        dsn = parse_dsn(got.content)
        check_failed(dsn, "nosuchuser@tern.test", "5.1.1", diag="550 5.1.1", subject="half known")
        assert [b for b in dsn.recipients if "alice" in str(b.get("Final-Recipient", ""))] == []


def test_dovecot_down_queues_then_flush_delivers(tern, dovecot):
    srv = lmtp_tern(tern, f"unix:{dovecot.socket}")
    msg = make_message("while down", BODY.encode(), sender=SENDER, to="alice@tern.test")
    # The 250 means queued: the LMTP server is not needed to accept mail.
    qid = srv.deliver(SENDER, "alice@tern.test", msg)
    status = wait_state(srv, qid, "alice@tern.test", "deferred")
    assert status["last_reply"].startswith(f"451 4.4.1 cannot connect to LMTP unix:{dovecot.socket}: "), status
    listed = tern_queue(srv, "list", "--json")
    assert listed.returncode == 0, listed
    assert "cannot connect to LMTP" in listed.stdout.decode(), listed.stdout
    dovecot.start()
    r = tern_queue(srv, "flush")
    assert r.returncode == 0, r
    wait_gone(srv, qid)
    [copy] = dovecot.wait_fetch("alice@tern.test")
    check_copy(copy, BODY)
    assert queue_ids(srv) == [], [envelope(srv, q) for q in queue_ids(srv)]


def test_notify_success_over_lmtp_is_reported_delivered(tern, dovecot):
    # RFC 3461 6.2: the mailbox server is the end of the trail, so a recipient that asked for NOTIFY=SUCCESS
    # gets "delivered" (not "relayed", as for a hop without DSN), with its ORCPT and the sender's ENVID.
    dovecot.start()
    with Remote() as remote:
        srv = lmtp_tern(tern, f"unix:{dovecot.socket}", remote)
        msg = make_message("tell me", BODY.encode(), sender=SENDER, to="alice@tern.test")
        with smtplib.SMTP(srv.host, srv.port, local_hostname="client.test", timeout=10) as s:
            s.sendmail(SENDER, ["alice@tern.test"], msg, mail_options=["RET=HDRS", "ENVID=lmtp+2B1"],
                       rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Alice@Tern.test"])
        [copy] = dovecot.wait_fetch("alice@tern.test")
        check_copy(copy, BODY)
        [got] = remote.wait_messages(1, srv=srv)
        assert got.rcpt_tos == [SENDER] and got.mail_from in ("", "<>")
        dsn = parse_dsn(got.content)
        block = dsn.for_rcpt("alice@tern.test")
        assert block["Action"] == "delivered", dict(block.items())
        assert block["Status"] == "2.0.0", dict(block.items())
        assert block["Original-Recipient"] == "rfc822; Alice@Tern.test", dict(block.items())
        assert dsn.per_message["Original-Envelope-Id"] == "lmtp+1", dict(dsn.per_message.items())
        assert dsn.original_headers is not None and dsn.original_headers["Subject"] == "tell me"


def test_per_domain_delivery_splits_one_message_between_dovecot_and_maildir(tern, dovecot):
    # `[local.per_domain."tern.test"]`: that domain's mailboxes are Dovecot's; maildir.test stays in tern's own
    # Maildirs (the `[local] delivery` default). One message to one user of each: one copy in each store.
    dovecot.start()
    srv = tern(**relay_config(local={
        "domains": ["tern.test", "maildir.test"],
        "per_domain": {"tern.test": {"delivery": "lmtp", "lmtp": f"unix:{dovecot.socket}"}},
    }))
    msg = make_message("split", BODY.encode(), sender=SENDER, to="alice@tern.test")
    qid = srv.deliver(SENDER, ["alice@tern.test", "carol@maildir.test"], msg)
    [copy] = dovecot.wait_fetch("alice@tern.test")
    check_copy(copy, BODY)
    wait_gone(srv, qid)
    # The Maildir copy was written before the 250, into carol's own mailbox, and only hers.
    files = srv.delivered_files()
    assert len(files) == 1, files
    assert "maildir.test" in str(files[0]) and "carol" in str(files[0]), files
    check_copy(files[0].read_text(), BODY)
    # A Maildir-only message to maildir.test never touches the queue or Dovecot.
    before = len(dovecot.fetch("alice@tern.test"))
    srv.deliver(SENDER, ["dave@maildir.test"], make_message("local only", b"hi\r\n", sender=SENDER,
                                                            to="dave@maildir.test"))
    wait_for(lambda: len(srv.delivered_files()) == 2, what="dave's Maildir copy")
    assert queue_ids(srv) == []
    assert len(dovecot.fetch("alice@tern.test")) == before
