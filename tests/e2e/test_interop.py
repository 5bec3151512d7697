"""Interop with the software around a mail server (issue 17):

- cron's exact `sendmail` command line and message (`To: root`, `From: root (Cron Daemon)`) and `sendmail -t`
  with `To: root` reach an alias of root@<local.qualify_domain>; a bad `-f` is reported as the sender (exit 64);
- s-nail and mutt (Debian packages, batch mode) read a tern Maildir without errors and show the same text as
  for the copy Postfix's virtual(8) wrote of the same message;
- a message with a bare CR inside a line (as OpenSMTPD passes it on) is stored, not bounced, and relayed
  dot-stuffed so that the next hop sees one message;
- `tern send` greets a Postfix with `reject_non_fqdn_helo_hostname` with a name it accepts.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from relay_helpers import Postfix, Remote, greets, relay_config, require_postfix, route_to, wait_for
from send_helpers.run import err, tern_send
from ternlib import free_port, split_trace

ROOT_ALIAS = {"aliases": {"root@tern.test": "alice@tern.test"}, "local": {"qualify_domain": "tern.test"}}

# What Debian's cron (3.0pl1) writes to `sendmail -FCronDaemon -i -B8BITMIME -oem root` when MAILTO is unset.
CRON_MESSAGE = (
    b"From: root (Cron Daemon)\n"
    b"To: root\n"
    b"Subject: Cron <root@vm> echo hello from cron\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=UTF-8\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"X-Cron-Env: <SHELL=/bin/sh>\n"
    b"X-Cron-Env: <HOME=/root>\n"
    b"X-Cron-Env: <PATH=/usr/bin:/bin>\n"
    b"X-Cron-Env: <LOGNAME=root>\n"
    b"\n"
    b"hello from cron\n"
)


def header_values(message: bytes, name: str) -> list[str]:
    return [m.group(1).decode() for m in re.finditer(rb"(?mi)^" + name.encode() + rb": (.*?)\r?$", message)]


@pytest.fixture
def srv(tern):
    return tern(**ROOT_ALIAS)


def sendmail(srv, *args: str, stdin: bytes) -> subprocess.CompletedProcess:
    return tern_send(*args, sub="sendmail", stdin=stdin,
                     env={"TERN_CONFIG": str(srv.config_path), "USER": "root", "LOGNAME": "root"})


# ---------------------------------------------------------------- 1. unqualified addresses


def test_cron_command_line_reaches_the_alias_of_root(srv):
    r = sendmail(srv, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root", stdin=CRON_MESSAGE)
    assert r.returncode == 0, err(r) + srv.log()
    [stored] = srv.wait_messages("alice@tern.test")
    trace, message = split_trace(stored)
    assert ("Return-Path", "<root@tern.test>") in trace, trace
    assert ("Delivered-To", "alice@tern.test") in trace, trace
    # The header addresses are qualified; the comment and everything else stay as cron wrote them.
    assert header_values(message, "From") == ["root@tern.test (Cron Daemon)"], message
    assert header_values(message, "To") == ["root@tern.test"], message
    assert header_values(message, "Subject") == ["Cron <root@vm> echo hello from cron"], message
    assert header_values(message, "X-Cron-Env")[0] == "<SHELL=/bin/sh>"
    assert message.endswith(b"\n\nhello from cron\n"), message


def test_sendmail_t_with_to_root(srv):
    # at(1), logwatch and many scripts: `sendmail -t` with a bare `To: root`.
    r = sendmail(srv, "-t", stdin=b"To: root\nCc: Ops <ops>\nSubject: logwatch\n\nall quiet\n")
    assert r.returncode == 0, err(r) + srv.log()
    [stored] = srv.wait_messages("alice@tern.test")
    [ops] = srv.wait_messages("ops@tern.test")
    _, message = split_trace(stored)
    assert header_values(message, "To") == ["root@tern.test"], message
    assert header_values(message, "Cc") == ["Ops <ops@tern.test>"], message
    assert header_values(message, "From") == ["root@tern.test"], message
    assert ops.endswith(b"\n\nall quiet\n")


def test_sendmail_f_root_is_qualified_and_a_bad_sender_blamed_on_the_sender(srv):
    r = sendmail(srv, "-f", "root", "root@tern.test", stdin=b"Subject: f root\n\nx\n")
    assert r.returncode == 0, err(r) + srv.log()
    [stored] = srv.wait_messages("alice@tern.test")
    assert ("Return-Path", "<root@tern.test>") in split_trace(stored)[0]
    # A sender that is no address at all: a usage error naming the sender, before anything is sent.
    r = sendmail(srv, "-f", "bad..sender@tern.test", "root@tern.test", stdin=b"Subject: bad\n\nx\n")
    assert r.returncode == 64, err(r)
    assert "invalid sender \"bad..sender@tern.test\"" in err(r), err(r)
    assert "root@tern.test" not in err(r), err(r)
    assert len(srv.delivered_files()) == 1
    assert "MAIL FROM:<bad" not in srv.log()


def test_tern_send_qualifies_too(srv):
    r = tern_send("--server", f"127.0.0.1:{srv.port}", "--tls", "none", "--from", "Admin <root>",
                  "--to", "root", "--subject", "qualified", stdin=b"hi\n",
                  env={"TERN_CONFIG": str(srv.config_path)})
    assert r.returncode == 0, err(r) + srv.log()
    [stored] = srv.wait_messages("alice@tern.test")
    trace, message = split_trace(stored)
    assert ("Return-Path", "<root@tern.test>") in trace, trace
    assert header_values(message, "From") == ['"Admin" <root@tern.test>'], message
    assert header_values(message, "To") == ["<root@tern.test>"], message


# ---------------------------------------------------------------- 2. Maildir readers


def need(program: str) -> str:
    path = shutil.which(program)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{program} is not installed (.ci/run installs it)")
    pytest.skip(f"{program} is not installed")


READER_MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: =?UTF-8?Q?caf=C3=A9?= and lines\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <reader-test@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=UTF-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    + "Grüße, line one\r\n".encode()
    + b".a line starting with a dot\r\n\r\n-- \r\nAlice\r\n"
)

TRACE = re.compile(r"^(Return-Path|Delivered-To|Received|X-Original-To):", re.I)


def without_trace(text: str) -> str:
    """A reader's output without what differs by writer: the trace fields (and their continuation lines),
    the mbox `From ` line and s-nail's line/byte count banner."""
    out, skipping = [], False
    for line in text.split("\n"):
        if line[:1] in (" ", "\t") and skipping:
            continue
        skipping = bool(TRACE.match(line))
        if skipping or line.startswith("From ") or line.startswith("[-- Message"):
            continue
        out.append(line)
    return "\n".join(out)


@pytest.fixture(scope="module")
def postfix():
    require_postfix()
    with Postfix(domain="pf.test", users=("bob",)) as pf:
        yield pf


@pytest.fixture
def maildirs(srv, postfix, tmp_path) -> tuple[Path, Path]:
    """The same message in a tern Maildir and in one Postfix wrote (copied, so readers may mark it)."""
    srv.deliver("alice@example.test", "bob@tern.test", READER_MESSAGE)
    [stored] = srv.wait_messages("bob@tern.test")
    with smtplib.SMTP("127.0.0.1", postfix.port, local_hostname="client.test", timeout=10) as s:
        assert s.sendmail("alice@example.test", ["bob@pf.test"], READER_MESSAGE) == {}
    postfix.wait_delivered("bob")
    # The tern file: LF line ends, S= its size on disk, W= its size with CRLF.
    [path] = srv.maildir("bob@tern.test").joinpath("new").iterdir()
    assert b"\r" not in stored
    crlf_size = len(stored) + stored.count(b"\n")
    assert path.name.endswith(f",S={len(stored)},W={crlf_size}"), path.name
    copies = []
    for name, src in (("tern", srv.maildir("bob@tern.test")), ("postfix", postfix.vmail / "bob")):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        copies.append(dst)
    return copies[0], copies[1]


def s_nail(maildir: Path) -> str:
    exe = need("s-nail")
    r = subprocess.run([exe, "-n", "-N", "-R", "-#", "-Sttycharset=UTF-8", "-f", str(maildir)],
                       input=b"type 1\n", capture_output=True, timeout=30, env={**os.environ, "HOME": str(maildir)})
    assert r.returncode == 0 and r.stderr == b"", (r.returncode, r.stderr)
    return r.stdout.decode("utf-8")


def mutt(maildir: Path, tmp: Path) -> str:
    """mutt needs a terminal even in batch mode: script(1) gives it one; the message goes out through
    <pipe-message> with pipe_decode (what the pager would show, headers decoded) into a file."""
    exe = need("mutt")
    need("script")
    rc, out = tmp / f"{maildir.name}.muttrc", tmp / f"{maildir.name}.mutt.out"
    # An existing folder and no spool file: a warning at startup would flush the pushed keys.
    rc.write_text("set pipe_decode=yes\nset weed=no\nset wait_key=no\nset charset=utf-8\n"
                  f"set mbox_type=Maildir\nset folder={tmp}\nset spoolfile=\"\"\nset record=\"\"\nset move=no\n")
    cmd = f"{exe} -n -F {rc} -R -f {maildir} -e 'push \"<pipe-message>cat > {out}<enter><quit>\"'"
    # script(1) must keep its stdin open while mutt runs: at EOF it hangs up on mutt's terminal.
    screen = tmp / f"{maildir.name}.screen"
    with open(screen, "wb") as tty:
        proc = subprocess.Popen(["script", "-qec", cmd, "/dev/null"], stdin=subprocess.PIPE, stdout=tty,
                                stderr=subprocess.STDOUT, env={**os.environ, "TERM": "vt100", "HOME": str(tmp)})
        try:
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stdin:
                proc.stdin.close()
    assert rc == 0 and out.exists(), screen.read_bytes()[-2000:]
    return out.read_bytes().decode("utf-8")


def test_s_nail_reads_tern_maildir_like_postfix_one(maildirs):
    tern_md, postfix_md = maildirs
    ours, theirs = s_nail(tern_md), s_nail(postfix_md)
    assert "\r" not in ours
    assert "Grüße, line one\n.a line starting with a dot\n" in ours, ours
    assert without_trace(ours) == without_trace(theirs), (ours, theirs)


def test_mutt_reads_tern_maildir_like_postfix_one(maildirs, tmp_path):
    tern_md, postfix_md = maildirs
    ours, theirs = mutt(tern_md, tmp_path), mutt(postfix_md, tmp_path)
    assert "\r" not in ours, ours
    assert "Subject: café and lines\n" in ours, ours
    assert without_trace(ours) == without_trace(theirs), (ours, theirs)


# ---------------------------------------------------------------- 3. a bare CR from another MTA


def test_bare_cr_from_another_mta_is_stored_and_relayed_as_one_message(tern):
    """OpenSMTPD passes `line1\\rstill line1` through unchanged (a raw client plays it here): tern
    normalizes it to a line break instead of answering 554, and a smuggling-shaped body relayed on is
    dot-stuffed, so the next hop (aiosmtpd) gets exactly one message with the same lines."""
    with Remote() as remote:
        srv = tern(**relay_config(routes={"remote.test": route_to(remote.port)}))
        body = (b"From: <mta@example.test>\r\nSubject: bare cr\r\n\r\n"
                b"line1\rstill line1\r\nfake end\n.\nMAIL FROM:<evil@attacker.test>\r\n")
        with srv.session("opensmtpd.example.test") as c:
            c.expect("MAIL FROM:<mta@example.test>", 250, "2.1.0")
            c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
            c.expect("RCPT TO:<carol@remote.test>", 250, "2.1.5")
            c.expect("DATA", 354)
            c.send(body + b".\r\n")
            code, lines = c.read_reply()
            assert code == 250, lines
            c.expect("QUIT", 221)
        [stored] = srv.wait_messages("alice@tern.test")
        _, message = split_trace(stored)
        want = b"line1\nstill line1\nfake end\n.\nMAIL FROM:<evil@attacker.test>\n"
        assert message.endswith(want), message
        [got] = remote.wait_messages(1, srv=srv)
        assert got.rcpt_tos == ["carol@remote.test"]
        assert got.content.endswith(want.replace(b"\n", b"\r\n")), got.content
        assert len(remote.wait_messages(1, srv=srv)) == 1


# OpenSMTPD conflicts with the postfix package, so CI unpacks it (`apt-get download opensmtpd`, `dpkg -x`) into
# this directory and creates its two users (.ci/run).
OPENSMTPD_ROOT = Path(os.environ.get("TERN_TEST_OPENSMTPD_ROOT", "/opt/tern-test/opensmtpd"))


class OpenSMTPD:
    """OpenSMTPD's smtpd in the foreground (-d) with a private config: listens on a free loopback port and
    relays everything to 127.0.0.1:`relay_port`."""

    def __init__(self, relay_port: int, tmp: Path):
        self.port = free_port()
        self.conf = tmp / "smtpd.conf"
        self.conf.write_text(f"listen on 127.0.0.1 port {self.port}\n"
                             f"action \"relay\" relay host smtp://127.0.0.1:{relay_port}\n"
                             "match from any for any action \"relay\"\n")
        self.conf.chmod(0o644)
        self.log_path = tmp / "opensmtpd.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "OpenSMTPD":
        exe = OPENSMTPD_ROOT / "usr/sbin/smtpd"
        with open(self.log_path, "wb") as log:
            # Its own session: the parent and its privilege-separated children are one process group.
            self.proc = subprocess.Popen([str(exe), "-d", "-v", "-f", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

        try:
            wait_for(lambda: greets(self.port), 20, f"OpenSMTPD on 127.0.0.1:{self.port}", 0.2)
        except AssertionError as e:
            self.__exit__()
            raise AssertionError(f"{e}\n{self.log()}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # The privilege-separated children may outlive the parent by a moment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def require_opensmtpd() -> None:
    import pwd

    try:
        pwd.getpwnam("opensmtpd")
        pwd.getpwnam("opensmtpq")
        ok = (OPENSMTPD_ROOT / "usr/sbin/smtpd").exists() and os.geteuid() == 0
    except KeyError:
        ok = False
    if ok:
        return
    why = f"OpenSMTPD is not unpacked in {OPENSMTPD_ROOT} with its users (see .ci/run), or not root"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def test_opensmtpd_relays_a_bare_cr_and_tern_stores_it(srv, tmp_path):
    """The real OpenSMTPD passes a body line `line1\\rstill line1` on unchanged; tern stores the message
    (the bare CR as a line end) instead of answering 554 and bouncing it."""
    require_opensmtpd()
    with OpenSMTPD(srv.port, tmp_path) as osmtpd:
        # A raw client: smtplib would fix the bare CR itself.
        with socket.create_connection(("127.0.0.1", osmtpd.port), timeout=10) as s:
            f = s.makefile("rb")

            def reply() -> bytes:
                while True:
                    line = f.readline()
                    if line[3:4] != b"-":
                        return line

            assert reply().startswith(b"220")
            for cmd, code in ((b"EHLO client.example.test", b"250"), (b"MAIL FROM:<cron@example.test>", b"250"),
                              (b"RCPT TO:<root@tern.test>", b"250"), (b"DATA", b"354")):
                s.sendall(cmd + b"\r\n")
                got = reply()
                assert got.startswith(code), (cmd, got, osmtpd.log())
            s.sendall(b"From: <cron@example.test>\r\nTo: <root@tern.test>\r\nSubject: bare cr via opensmtpd\r\n\r\n"
                      b"line1\rstill line1\r\nline2\r\n.\r\n")
            got = reply()
            assert got.startswith(b"250"), (got, osmtpd.log())
            s.sendall(b"QUIT\r\n")
        try:
            [stored] = srv.wait_messages("alice@tern.test", timeout=30)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{osmtpd.log()}\n{srv.log()}") from None
    trace, message = split_trace(stored)
    assert any(n == "Received" and "(OpenSMTPD)" in v for n, v in trace), f"not relayed by OpenSMTPD: {trace}"
    assert message.endswith(b"\n\nline1\nstill line1\nline2\n"), message
    # No refusal of the message (a bare "554" would also match port numbers in the log).
    assert 'outcome="rejected"' not in srv.log() and "554 5.6.0" not in srv.log(), srv.log()


# ---------------------------------------------------------------- 5. EHLO name


@pytest.fixture(scope="module")
def strict_postfix():
    require_postfix()
    extra = ("smtpd_helo_required = yes", "smtpd_helo_restrictions = reject_non_fqdn_helo_hostname")
    with Postfix(domain="pf.test", users=("bob",), extra=extra) as pf:
        yield pf


def send_to_postfix(pf: Postfix, config: Path, *extra: str) -> subprocess.CompletedProcess:
    return tern_send("--server", f"127.0.0.1:{pf.port}", "--tls", "none", "--from", "alice@tern.test",
                     "--to", "bob@pf.test", "--subject", "helo", *extra, stdin=b"hi\n",
                     env={"TERN_CONFIG": str(config)})


def test_tern_send_helo_passes_reject_non_fqdn_helo_hostname(strict_postfix, tmp_path):
    pf = strict_postfix
    # The control: a bare host name is what Postfix refuses (so the cases below can fail).
    bare = tmp_path / "bare.toml"
    bare.write_text('hostname = "vm"\n')
    r = send_to_postfix(pf, bare, "--helo", "vm")
    assert r.returncode == 69, err(r)
    assert "504 5.5.2" in err(r) and "need fully-qualified hostname" in err(r), err(r)
    # The config's hostname when it is qualified.
    fq = tmp_path / "fq.toml"
    fq.write_text('hostname = "mx.tern.test"\n')
    r = send_to_postfix(pf, fq)
    assert r.returncode == 0, err(r) + pf.log()
    [first] = pf.wait_delivered("bob")
    assert re.search(rb"^Received: from mx\.tern\.test ", first, re.M), first[:400]
    # A config hostname without a dot: the system's canonical name if qualified, else [127.0.0.1].
    r = send_to_postfix(pf, bare)
    assert r.returncode == 0, err(r) + pf.log()
    second = [m for m in pf.wait_delivered("bob", 2) if m != first][0]
    helo = re.search(rb"^Received: from (\S+) ", second, re.M).group(1).decode()
    assert helo == "[127.0.0.1]" or ("." in helo and not helo.startswith("[")), helo
