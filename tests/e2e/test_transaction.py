"""Whole mail transactions: what lands in the Maildir byte for byte, trace headers, several recipients,
aliases, the null sender, the queue id in the 250 reply and in the log."""

from __future__ import annotations

import email.utils
import re
import time

import pytest

from ternlib import HOSTNAME, as_stored, header, make_message, queue_id, split_trace, toml_dumps


def check_received(value: str, helo: str, esmtp: bool, qid: str, rcpt: str | None) -> None:
    """RFC 5321 4.4 time stamp line: from <helo> (... [ip]) by <host> with (E)SMTP id <id> [for <rcpt>]; <date>."""
    m = re.match(r"^from (\S+) \((?:[^()]*?)\[127\.0\.0\.1\]\)\s+by (\S+)(?: \([^()]*\))?\s+with (\S+)\s+id (\S+)(.*)$", value)
    assert m, f"Received header not in RFC 5321 4.4 form: {value!r}"
    assert m.group(1) == helo, value
    assert m.group(2) == HOSTNAME, value
    assert m.group(3) == ("ESMTP" if esmtp else "SMTP"), value
    assert m.group(4).rstrip(";") == qid, f"Received id {m.group(4)!r} != queue id {qid!r}"
    rest = m.group(5)
    if rcpt is not None:
        assert re.match(rf"^\s+for <{re.escape(rcpt)}>;", rest), f"expected 'for <{rcpt}>' in {value!r}"
    else:
        assert " for " not in rest, f"no 'for' clause expected with several recipients: {value!r}"
    date = value.rpartition(";")[2].strip()
    assert email.utils.parsedate_to_datetime(date) is not None, f"bad date in Received: {date!r}"


def test_smtplib_delivery_exact_bytes(srv):
    msg = make_message("exact bytes", b"Line one\r\nLine two\r\n\r\nLast line\r\n")
    qid = srv.deliver("sender@example.test", "alice@tern.test", msg)
    [content] = srv.wait_messages("alice@tern.test")
    trace, rest = split_trace(content)
    names = [n.lower() for n, _ in trace]
    assert names == ["return-path", "delivered-to", "received"], f"trace headers {trace}"
    assert header(trace, "Return-Path") == ["<sender@example.test>"]
    assert header(trace, "Delivered-To") == ["alice@tern.test"]
    check_received(header(trace, "Received")[0], "client.test", True, qid, "alice@tern.test")
    # The message itself is stored unchanged after the trace headers.
    assert rest == as_stored(msg, content)


def test_maildir_layout(srv):
    srv.deliver("sender@example.test", "alice@tern.test", make_message())
    md = srv.data_dir / "mailboxes" / "tern.test" / "alice"
    for sub in ("tmp", "new", "cur"):
        assert (md / sub).is_dir(), f"{md / sub} missing"
    assert len(list((md / "new").iterdir())) == 1
    assert list((md / "tmp").iterdir()) == [], "tmp/ must be empty after delivery"


def test_helo_gives_with_smtp(srv):
    with srv.raw() as c:
        c.greet()
        c.expect("HELO old.client.test", 250)
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: helo\r\n\r\nbody\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 250
        qid = queue_id(lines[0])
    [content] = srv.wait_messages("alice@tern.test")
    trace, _ = split_trace(content)
    check_received(header(trace, "Received")[0], "old.client.test", False, qid, "alice@tern.test")


def test_multiple_recipients_one_copy_each(srv):
    rcpts = ["alice@tern.test", "bob@tern.test", "carol@tern.test"]
    msg = make_message("three", to="alice@tern.test")
    qid = srv.deliver("sender@example.test", rcpts, msg)
    for r in rcpts:
        got = srv.wait_messages(r)
        assert len(got) == 1, f"{r}: {len(got)} copies"
        trace, rest = split_trace(got[0])
        assert header(trace, "Delivered-To") == [r]
        assert header(trace, "Return-Path") == ["<sender@example.test>"]
        check_received(header(trace, "Received")[0], "client.test", True, qid, None)
        assert rest == as_stored(msg, got[0])
    assert len(srv.delivered_files()) == 3


def test_recipient_case_folded_to_one_mailbox(srv):
    srv.deliver("sender@example.test", ["Alice@TERN.test"], make_message("case 1"))
    srv.deliver("sender@example.test", ["ALICE@tern.TEST"], make_message("case 2"))
    assert (srv.data_dir / "mailboxes" / "tern.test" / "alice" / "new").is_dir()
    assert len(srv.wait_messages("alice@tern.test", 2)) == 2
    assert len(srv.delivered_files()) == 2


def test_aliases(tern):
    srv = tern(aliases={"sales@tern.test": ["alice@tern.test", "bob@tern.test"]})
    msg = make_message("to sales", to="sales@tern.test")
    srv.deliver("sender@example.test", "sales@tern.test", msg)
    for r in ("alice@tern.test", "bob@tern.test"):
        [content] = srv.wait_messages(r)
        _, rest = split_trace(content)
        assert rest == as_stored(msg, content)
    assert srv.messages("sales@tern.test") == [], "an alias has no mailbox of its own"
    assert len(srv.delivered_files()) == 2


def test_null_sender(srv):
    msg = make_message("bounce", sender="MAILER-DAEMON@example.test")
    srv.deliver("<>", "alice@tern.test", msg)
    [content] = srv.wait_messages("alice@tern.test")
    trace, rest = split_trace(content)
    assert header(trace, "Return-Path") == ["<>"]
    assert rest == as_stored(msg, content)


def test_queue_ids_unique(srv):
    ids = {srv.deliver("sender@example.test", "alice@tern.test", make_message(f"n{i}")) for i in range(5)}
    assert len(ids) == 5
    assert len(srv.wait_messages("alice@tern.test", 5)) == 5


def test_two_transactions_one_session(srv):
    with srv.session() as c:
        qids = []
        for i, rcpt in enumerate(["alice@tern.test", "bob@tern.test"]):
            c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
            c.expect(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
            c.expect("DATA", 354)
            c.send(f"Subject: tx {i}\r\n\r\nbody {i}\r\n.\r\n".encode())
            code, lines = c.read_reply()
            assert code == 250, lines
            qids.append(queue_id(lines[0]))
        c.expect("QUIT", 221)
    assert qids[0] != qids[1]
    assert b"body 0" in srv.wait_messages("alice@tern.test")[0]
    assert b"body 1" in srv.wait_messages("bob@tern.test")[0]


def test_log_has_queue_id_and_recipient(srv):
    qid = srv.deliver("sender@example.test", "logcheck@tern.test", make_message("log"))
    srv.wait_messages("logcheck@tern.test")
    log = srv.log()
    lines = [line for line in log.splitlines() if qid in line]
    assert lines, f"queue id {qid} not in log:\n{log}"
    assert any("logcheck@tern.test" in line for line in log.splitlines()), f"recipient not in log:\n{log}"


def test_log_one_line_per_connection(srv):
    before = srv.log()
    with srv.raw() as c:
        c.greet()
        c.expect("QUIT", 221)
        c.wait_closed()
    # The connection line may be written at close: give the server a moment.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and srv.log() == before:
        time.sleep(0.05)
    added = srv.log()[len(before):]
    assert "127.0.0.1" in added, f"no connection log line naming the peer:\n{added}"


@pytest.mark.parametrize("n", [1, 10])
def test_many_messages_same_mailbox(srv, n):
    for i in range(n):
        srv.deliver("sender@example.test", "bulk@tern.test", make_message(f"bulk {i}"))
    got = srv.wait_messages("bulk@tern.test", n)
    assert len(got) == n
    subjects = sorted(re.search(rb"Subject: (bulk \d+)", m).group(1) for m in got)
    assert subjects == sorted(f"bulk {i}".encode() for i in range(n))


def test_concurrent_deliveries_same_mailbox(srv):
    """Parallel sessions into one Maildir: unique file names, every message complete, none lost."""
    import threading

    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for i in range(5):
                srv.deliver("sender@example.test", "shared@tern.test", make_message(f"w{w} m{i}", body=f"{w}-{i}\r\n".encode() * 200))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    assert not errors, errors
    got = srv.wait_messages("shared@tern.test", 40)
    assert len(got) == 40
    seen = set()
    for content in got:
        subject = re.search(rb"Subject: (w\d+ m\d+)", content).group(1).decode()
        w, i = (int(x[1:]) for x in subject.split())
        assert content.endswith(as_stored(f"{w}-{i}\r\n".encode() * 200, content)), subject
        seen.add(subject)
    assert len(seen) == 40


def _ipv6_loopback_available() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback on this machine")
def test_ipv6_listener_and_received(tern, tmp_path):
    import smtplib
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        port6 = s.getsockname()[1]
    srv = tern(start=False)
    srv.config["smtp"]["listen"] = [f"127.0.0.1:{srv.port}", f"[::1]:{port6}"]
    srv.config_path.write_text(toml_dumps(srv.config))
    srv.start()
    with smtplib.SMTP("::1", port6, local_hostname="v6.client.test", timeout=10) as s:
        assert s.sendmail("a@example.test", ["alice@tern.test"], make_message("v6")) == {}
        # ::1 is trusted by default: relaying is allowed (RCPT only, no DATA).
        s.mail("a@example.test")
        code, _ = s.rcpt("x@elsewhere.test")
        assert code == 250
        s.rset()
    [content] = srv.wait_messages("alice@tern.test")
    trace, _ = split_trace(content)
    [received] = header(trace, "Received")
    assert received.startswith("from v6.client.test ([IPv6:::1])"), received


def test_alias_loop_is_bounded(tern):
    """a -> b -> a: either the config is refused, or RCPT is answered promptly and the server lives on."""
    import subprocess

    from ternlib import tern_bin

    srv = tern(aliases={"a@tern.test": ["b@tern.test"], "b@tern.test": ["a@tern.test"]}, start=False)
    r = subprocess.run([str(tern_bin()), "check-config", str(srv.config_path)], capture_output=True, timeout=20)
    if r.returncode != 0:
        assert b"aliases" in r.stdout + r.stderr
        return
    srv.start()
    with srv.session() as c:
        c.expect("MAIL FROM:<x@example.test>", 250, "2.1.0")
        code, text = c.cmd("RCPT TO:<a@tern.test>")
        assert code in (250, 450, 451, 550, 554), (code, text)
        c.expect("RSET", 250, "2.0.0")
    srv.deliver("x@example.test", "alice@tern.test", make_message("alive"))


def _broken_mailbox(tern):
    """A server whose mailbox for broken@tern.test cannot be created (a plain file sits where its folder goes)."""
    srv = tern(start=False)
    domain_dir = srv.data_dir / "mailboxes" / "tern.test"
    domain_dir.mkdir(parents=True)
    (domain_dir / "broken").write_bytes(b"not a maildir")
    return srv.start()


def test_storage_failure_is_451(tern):
    srv = _broken_mailbox(tern)
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<broken@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: cannot store\r\n\r\nx\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 451, lines
        assert lines[0] == "4.3.0 Local error in processing, try again later", lines
        # The session goes on.
        c.expect("NOOP", 250, "2.0.0")
    assert srv.delivered_files() == []


def test_storage_failure_for_one_recipient_stores_nothing(tern):
    """451 tells the client to retry the whole message: a copy already stored for another recipient would
    arrive twice, so the delivery is all or nothing."""
    srv = _broken_mailbox(tern)
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        c.expect("RCPT TO:<broken@tern.test>", 250, "2.1.5")
        c.expect("RCPT TO:<zed@tern.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: half\r\n\r\nx\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 451, lines
    time.sleep(0.5)
    assert srv.delivered_files() == [], srv.delivered_files()
    assert srv.messages("alice@tern.test") == [] and srv.messages("zed@tern.test") == []
