"""DSN requests (RFC 3461) and REQUIRETLS (RFC 8689) end to end: what tern advertises and answers at MAIL/RCPT
(docs/smtp-replies.md), what it keeps in the queue entry, the notifications it writes into the local sender's
Maildir (parsed with Python's `email`), and what it passes on to a next hop that offers DSN (a raw peer that
records MAIL/RCPT byte-exact) or refuses to send (REQUIRETLS to a hop without TLS, or without REQUIRETLS).
Clients: smtplib, raw sockets, swaks (this swaks, 20201014, has no DSN options: it checks EHLO)."""

from __future__ import annotations

import smtplib
import subprocess
import time

import pytest

from relay_helpers import (ALICE, RawPeer, check_failed, closed_port, envelope, log_tail, queue_show,
                           recipient, relay_config, route_to, wait_bounce, wait_for, wait_gone, wait_state)
from sec_helpers import Client, Ports, client_context, tls_config
from ternlib import make_message, queue_id
from test_relay_tls import TlsRemote, certs, route, server_context  # noqa: F401  (certs: the CA fixture)

BOB = "bob@remote.test"
CAROL = "carol@remote.test"
DAVE = "dave@tern.test"


def dsn_srv(tern, tmp_path, port: int | None = None, tls: bool = False, routes: dict | None = None, **kw):
    """tern relaying remote.test to 127.0.0.1:port (or `routes`); with tls, a [tls] cert for STARTTLS."""
    cfg = relay_config(routes=routes or {"remote.test": route_to(port)}, **kw)
    return tern(**cfg, **(tls_config(tmp_path) if tls else {}))


def send(srv, sender: str, rcpts: list[tuple[str, list[str]]], msg: bytes, mail_options=(),
         starttls: bool = False) -> str:
    """One transaction through smtplib with per-recipient RCPT options; returns the queue id."""
    with smtplib.SMTP(srv.host, srv.port, local_hostname="client.test", timeout=15) as s:
        s.ehlo()
        if starttls:
            assert s.starttls(context=client_context())[0] == 220
            s.ehlo()
        code, text = s.mail(sender, list(mail_options))
        assert code == 250, f"MAIL {mail_options}: {code} {text!r}"
        for addr, opts in rcpts:
            code, text = s.rcpt(addr, opts)
            assert code == 250, f"RCPT {addr} {opts}: {code} {text!r}"
        code, text = s.data(msg)
        assert code == 250, f"DATA: {code} {text!r}"
        return queue_id(text.decode())


def field(block, name: str) -> str:
    """A DSN field with the blanks after `type;` dropped: `rfc822; a@b` -> `rfc822;a@b`."""
    return "".join(str(block.get(name, "")).split())


def assert_no_more_mail(srv, addr: str, count: int, settle: float = 1.5) -> None:
    """`addr` holds `count` messages now and still after `settle` seconds (a late notice would show)."""
    deadline = time.monotonic() + settle
    while True:
        got = srv.messages(addr)
        assert len(got) == count, f"{addr}: expected {count} message(s), found {len(got)}:\n" + "\n=====\n".join(
            m.decode("utf-8", "replace")[:1500] for m in got)
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


# ---------------------------------------------------------------- a next hop that offers DSN


class DsnPeer:
    """A raw SMTP peer that offers DSN (no PIPELINING, no TLS), answers 250 to everything and records each MAIL
    and RCPT line exactly as it arrived, and each message."""

    def __init__(self):
        self.lines: list[bytes] = []
        self.messages: list[bytes] = []
        self.peer = RawPeer(self._behave)
        self.port = self.peer.port

    def _behave(self, c) -> None:
        c.send(b"220 dsnpeer.test ESMTP\r\n")
        while (line := c.readline()) is not None:
            verb = line[:4].upper()
            if verb == b"EHLO":
                c.send(b"250-dsnpeer.test\r\n250-8BITMIME\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n")
            elif verb in (b"MAIL", b"RCPT"):
                self.lines.append(line)
                c.send(b"250 2.1.0 OK\r\n")
            elif verb == b"DATA":
                c.send(b"354 go ahead\r\n")
                body = []
                while (b := c.readline()) is not None and b != b".":
                    body.append(b)
                self.messages.append(b"\r\n".join(body))
                c.send(b"250 2.0.0 queued as DSNPEER\r\n")
            elif verb == b"QUIT":
                c.send(b"221 2.0.0 bye\r\n")
                return
            else:
                c.send(b"250 2.0.0 OK\r\n")

    def line(self, verb: str, addr: str) -> bytes:
        found = [ln for ln in self.lines if ln.upper().startswith(verb.encode()) and f"<{addr}>".encode() in ln]
        assert len(found) == 1, f"expected one {verb} for {addr}: {self.lines}"
        return found[0]

    def __enter__(self):
        self.peer.__enter__()
        return self

    def __exit__(self, *exc):
        self.peer.__exit__(*exc)


# ---------------------------------------------------------------- EHLO and the replies to the parameters


def test_ehlo_offers_dsn_always_and_requiretls_only_over_tls(tern, tmp_path):
    ports = Ports()
    srv = tern(**tls_config(tmp_path, ports))
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{srv.port}", "--tls", "--quit-after", "EHLO",
                        "--helo", "client.test", "--to", DAVE], capture_output=True, timeout=30)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, f"swaks exit {r.returncode}:\n{out}\n{r.stderr!r}"
    plain = [ln[4:].strip()[4:] for ln in out.splitlines() if ln.startswith("<-  250")]
    inside = [ln[4:].strip()[4:] for ln in out.splitlines() if ln.startswith("<~  250")]
    assert "DSN" in plain and "STARTTLS" in plain, f"plaintext EHLO: {plain}"
    assert "REQUIRETLS" not in plain, f"REQUIRETLS offered without TLS (RFC 8689 2): {plain}"
    assert "DSN" in inside and "REQUIRETLS" in inside, f"EHLO after STARTTLS: {inside}"
    with Client(ports.submissions, implicit_tls=True) as c:
        c.greet()
        keywords = [ln.split()[0].upper() for ln in c.ehlo()[1:]]
    assert "DSN" in keywords and "REQUIRETLS" in keywords, f"EHLO on the implicit-TLS listener: {keywords}"


MAIL = "MAIL FROM:<alice@tern.test>"
RCPT = "RCPT TO:<bob@remote.test>"
EHLO_CASES = [  # (command, code) on an EHLO session without TLS; a RCPT case runs after a good MAIL
    (f"{MAIL} RET=ALL", 501), (f"{MAIL} RET=FULL RET=HDRS", 501), (f"{MAIL} ENVID=a ENVID=b", 501),
    (f"{MAIL} ENVID=bad+zzxtext", 501), (f"{MAIL} ENVID={'x' * 101}", 501), (f"{MAIL} REQUIRETLS", 555),
    (f"{RCPT} NOTIFY=NEVER,SUCCESS", 501), (f"{RCPT} NOTIFY=DELAY,SOMETIMES", 501), (f"{RCPT} NOTIFY=", 501),
    (f"{RCPT} NOTIFY=SUCCESS NOTIFY=FAILURE", 501), (f"{RCPT} ORCPT=rfc822", 501),
    (f"{RCPT} ORCPT=rfc822;bob+2", 501), (f"{RCPT} ORCPT=rfc822;a@b ORCPT=rfc822;a@b", 501),
    (f"{RCPT} NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob+2Bx@remote.test", 250), (f"{RCPT} NOTIFY=NEVER", 250),
]
HELO_CASES = [(f"{MAIL} RET=HDRS", 555), (f"{MAIL} ENVID=x", 555), (MAIL, 250),
              (f"{RCPT} NOTIFY=SUCCESS", 555), (f"{RCPT} ORCPT=rfc822;bob@remote.test", 555)]


def test_malformed_repeated_and_misplaced_parameters(tern):
    srv = tern()
    wrong = []
    for greeting, cases in (("EHLO", EHLO_CASES), ("HELO", HELO_CASES)):
        with srv.raw() as c:
            c.greet()
            assert c.cmd(f"{greeting} client.test")[0] == 250
            for line, want in cases:
                if line.startswith("RCPT") and greeting == "EHLO":
                    c.expect("RSET", 250)
                    c.expect(MAIL, 250)
                code, text = c.cmd(line)
                enhanced = {501: "5.5.4", 555: "5.5.4"}.get(want)
                if code != want or (enhanced and not text.startswith(enhanced + " ")):
                    wrong.append(f"after {greeting}: {line[:70]!r}: expected {want} {enhanced or ''}, "
                                 f"got {code} {text!r}")
    assert not wrong, "\n".join(wrong)


def test_orcpt_of_500_characters_is_accepted_and_501_is_refused_with_501(tern):
    """RFC 3461 4.2 allows an ORCPT of up to 500 characters (and RCPT lines that long); docs/smtp-replies.md:
    an ORCPT over 500 is `501 5.5.4`, not `500 5.5.2 Line too long`."""
    srv = tern()
    with srv.session() as c:
        c.expect(MAIL, 250)
        for local, want in ((480, "250 2.1.5"), (500, "501 5.5.4")):  # ORCPT values of 499 and 519 characters
            code, text = c.cmd(f"{RCPT} ORCPT=rfc822;{'a' * local}@remote.test")
            got = f"{code} {text}"
            assert got.startswith(want), f"RCPT with an ORCPT of {local + 19} characters: expected {want}, got {got!r}"


# ---------------------------------------------------------------- the queue entry


def deferred_entry(tern, tmp_path) -> tuple:
    """A REQUIRETLS message with every DSN parameter, over STARTTLS, to a closed port: it stays deferred."""
    srv = dsn_srv(tern, tmp_path, closed_port(), tls=True)
    qid = send(srv, ALICE, [(BOB, ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;Bob+2B1@remote.test"]),
                            (CAROL, ["NOTIFY=NEVER"]), ("erin@remote.test", [])],
               make_message("kept", sender=ALICE, to=BOB), ["RET=FULL", "ENVID=id+2Bx.1", "REQUIRETLS"], starttls=True)
    wait_state(srv, qid, BOB, "deferred")
    return srv, qid


WANT_MESSAGE = {"ret": "full", "envid": "id+x.1"}
WANT_RCPT = {BOB: {"notify": {"success": True, "failure": False, "delay": True}, "orcpt": "rfc822;Bob+1@remote.test"},
             CAROL: {"notify": {"success": False, "failure": False, "delay": False}}}


def test_dsn_and_requiretls_are_kept_in_the_queue_entry(tern, tmp_path):
    srv, qid = deferred_entry(tern, tmp_path)
    env = envelope(srv, qid)
    assert env.get("dsn") == WANT_MESSAGE and env.get("requiretls") is True, env
    for addr, want in WANT_RCPT.items():
        assert recipient(env, addr).get("dsn") == want, recipient(env, addr)
    assert not recipient(env, "erin@remote.test").get("dsn"), "no NOTIFY/ORCPT given: nothing stored"


def test_queue_show_json_shows_the_dsn_requests(tern, tmp_path):
    srv, qid = deferred_entry(tern, tmp_path)
    shown = queue_show(srv, qid)
    assert shown.get("dsn") == WANT_MESSAGE, f"`tern queue show --json` has no message dsn: {sorted(shown)}"
    assert shown.get("requiretls") is True, f"`tern queue show --json` has no requiretls: {sorted(shown)}"
    for r in shown["recipients"]:
        assert r.get("dsn", {}) == WANT_RCPT.get(r["address"], {}), r


# ---------------------------------------------------------------- success notices


def test_notify_success_local_delivery_gives_delivered_with_envid_and_orcpt(tern, tmp_path):
    srv = dsn_srv(tern, tmp_path, closed_port())
    msg = make_message("local success", sender=ALICE, to=DAVE)
    with srv.smtp() as s:
        refused = s.sendmail(ALICE, [DAVE], msg, mail_options=["RET=HDRS", "ENVID=QQ+2B7+3Dx"],
                             rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Dave+2Bsales@tern.test"])
    assert refused == {}
    assert srv.wait_messages(DAVE, 1, timeout=10)
    dsn = wait_bounce(srv, ALICE)[0]
    block = dsn.for_rcpt(DAVE)
    assert str(block["Action"]).strip() == "delivered" and str(block["Status"]).strip() == "2.0.0", block
    assert field(block, "Original-Recipient") == "rfc822;Dave+sales@tern.test", block
    assert str(dsn.per_message.get("Original-Envelope-Id", "")).strip() == "QQ+7=x", dsn.per_message
    assert dsn.original_headers is not None and dsn.original_headers["Subject"] == "local success"
    assert_no_more_mail(srv, ALICE, 1)


def test_notify_success_to_a_peer_without_dsn_gives_relayed(tern, tmp_path, remote):
    srv = dsn_srv(tern, tmp_path, remote.port)
    with srv.smtp() as s:
        s.ehlo()
        assert s.has_extn("dsn")
    qid = send(srv, ALICE, [(BOB, ["NOTIFY=SUCCESS", "ORCPT=rfc822;Bob+2Bx@remote.test"])],
               make_message("relayed", sender=ALICE, to=BOB), ["ENVID=rel-1"])
    got = remote.wait_messages(1, srv=srv)[0]
    assert got.rcpt_tos == [BOB]
    assert not any(o.upper().startswith(("RET=", "ENVID=")) for o in got.mail_options), got.mail_options
    dsn = wait_bounce(srv, ALICE)[0]
    block = dsn.for_rcpt(BOB)
    assert str(block["Action"]).strip() == "relayed", f"aiosmtpd offers no DSN: tern must say relayed\n{block}"
    assert str(block["Status"]).strip().startswith("2."), block
    assert field(block, "Original-Recipient") == "rfc822;Bob+x@remote.test", block
    assert str(dsn.per_message.get("Original-Envelope-Id", "")).strip() == "rel-1", dsn.per_message
    wait_gone(srv, qid)
    assert_no_more_mail(srv, ALICE, 1)


def test_a_peer_with_dsn_gets_the_parameters_and_tern_sends_no_notice(tern, tmp_path):
    with DsnPeer() as peer:
        srv = dsn_srv(tern, tmp_path, peer.port)
        qid = send(srv, ALICE, [(BOB, ["NOTIFY=SUCCESS", "ORCPT=rfc822;Bob+2Bsales@remote.test"]),
                                (CAROL, ["NOTIFY=NEVER"]), (DAVE, ["NOTIFY=SUCCESS"])],
                   make_message("dsn peer", sender=ALICE, to=BOB), ["RET=HDRS", "ENVID=Q+2B1"])
        wait_for(lambda: peer.messages, what="the message at the DSN peer")
        mail = peer.line("MAIL", ALICE).split(b" ")
        assert b"RET=HDRS" in mail and b"ENVID=Q+2B1" in mail, f"MAIL at the peer: {b' '.join(mail)!r}"
        bob = peer.line("RCPT", BOB).split(b" ")
        assert b"NOTIFY=SUCCESS" in bob and b"ORCPT=rfc822;Bob+2Bsales@remote.test" in bob, bob
        assert b"NOTIFY=NEVER" in peer.line("RCPT", CAROL).split(b" "), peer.lines
        wait_gone(srv, qid)
        # The local recipient's "delivered" notice is the only one: none for the hop that offers DSN.
        dsn = wait_bounce(srv, ALICE)[0]
        assert [field(b, "Final-Recipient") for b in dsn.recipients] == [f"rfc822;{DAVE}"], dsn.raw[:2000]
        assert_no_more_mail(srv, ALICE, 1)


def test_null_sender_with_notify_success_gets_no_notice(tern, tmp_path, remote):
    srv = dsn_srv(tern, tmp_path, remote.port)
    qid = send(srv, "", [(DAVE, ["NOTIFY=SUCCESS"]), (BOB, ["NOTIFY=SUCCESS"])],
               make_message("from nobody", sender="mailer-daemon@example.test", to=DAVE))
    remote.wait_messages(1, srv=srv)
    wait_gone(srv, qid)
    assert_no_more_mail(srv, DAVE, 1)
    files = srv.delivered_files()
    assert len(files) == 1 and files[0].parent.parent.name == "dave", f"only dave's copy: {files}"
    assert "DSN sent" not in srv.log(), log_tail(srv)


# ---------------------------------------------------------------- failure notices


def test_notify_never_suppresses_the_bounce_of_that_recipient_only(tern, tmp_path, remote):
    remote.script.rcpt_replies[BOB] = "550 5.1.1 <bob@remote.test>: no such user (scripted)"
    remote.script.rcpt_replies[CAROL] = "550 5.1.1 <carol@remote.test>: no such user (scripted)"
    srv = dsn_srv(tern, tmp_path, remote.port)
    qid = send(srv, ALICE, [(BOB, ["NOTIFY=NEVER"]), (CAROL, ["ORCPT=rfc822;Carol+2Bx@remote.test"])],
               make_message("never", sender=ALICE, to=BOB))
    dsn = wait_bounce(srv, ALICE)[0]
    block = check_failed(dsn, CAROL, "5.1.1", diag="no such user (scripted)", subject="never")
    assert field(block, "Original-Recipient") == "rfc822;Carol+x@remote.test", block
    assert [field(b, "Final-Recipient") for b in dsn.recipients] == [f"rfc822;{CAROL}"], dsn.raw[:3000]
    assert BOB not in dsn.human, f"the NOTIFY=NEVER recipient is reported:\n{dsn.human}"
    wait_gone(srv, qid)
    assert_no_more_mail(srv, ALICE, 1)


@pytest.mark.parametrize("ret", ["FULL", "HDRS", None])
def test_ret_chooses_the_whole_message_or_its_headers(tern, tmp_path, remote, ret):
    remote.script.rcpt_replies[BOB] = "550 5.1.1 <bob@remote.test>: gone (scripted)"
    srv = dsn_srv(tern, tmp_path, remote.port)
    marker = "body-marker-3f9c: the text of the message"
    msg = make_message(f"ret {ret}", sender=ALICE, to=BOB, body=f"{marker}\r\nsecond line\r\n".encode())
    send(srv, ALICE, [(BOB, [])], msg, [f"RET={ret}"] if ret else [])
    dsn = wait_bounce(srv, ALICE)[0]
    check_failed(dsn, BOB, "5.1.1", subject=f"ret {ret}")
    third = dsn.msg.get_payload()[2]
    if ret == "FULL":
        assert third.get_content_type() == "message/rfc822", third.get_content_type()
        inner = third.get_payload()[0]
        assert inner["Subject"] == "ret FULL" and marker in inner.get_content(), inner.as_string()[:1500]
    else:
        assert third.get_content_type() == "text/rfc822-headers", third.get_content_type()
        assert marker not in dsn.raw.decode("utf-8", "replace"), "RET=HDRS / no RET: the body must not come back"


# ---------------------------------------------------------------- REQUIRETLS


def requiretls_failed(srv, qid: str, remote_mail_seen) -> None:
    """BOB fails at once with 5.7.x (RFC 8689 4.2.1: not deferred, never sent), and ALICE gets the notice."""
    def settled():
        env = envelope(srv, qid)
        if env is None:
            return {"state": "removed"}
        status = recipient(env, BOB)["status"] if env else {}
        return status if status.get("state") not in (None, "pending") else None

    status = wait_for(settled, what=f"{BOB} to leave pending")
    if status["state"] != "removed":
        assert status["state"] == "failed" and (status.get("reply") or "").startswith("550 5.7."), (
            f"REQUIRETLS to a hop that cannot take it: expected failed 550 5.7.x, got {status}; log:\n{log_tail(srv)}")
    dsn = wait_bounce(srv, ALICE)[0]
    check_failed(dsn, BOB, "5.7.", subject="must be secret")
    assert not remote_mail_seen(), "the message (its MAIL) reached a hop without REQUIRETLS over TLS"


def test_requiretls_to_a_peer_without_tls_fails_and_is_never_sent(tern, tmp_path, remote):
    srv = dsn_srv(tern, tmp_path, remote.port, tls=True)
    qid = send(srv, ALICE, [(BOB, [])], make_message("must be secret", sender=ALICE, to=BOB), ["REQUIRETLS"],
               starttls=True)
    requiretls_failed(srv, qid, lambda: [e for e in remote.events if e[1] == "MAIL"] or remote.messages)


def test_requiretls_to_a_verified_tls_peer_without_requiretls_fails_5_7_30(tern, tmp_path, certs):  # noqa: F811
    with TlsRemote(tls=server_context(certs.good)) as peer:
        srv = dsn_srv(tern, tmp_path, tls=True,
                      routes={"remote.test": route(peer.port, "required", ca_file=certs.ca)})
        qid = send(srv, ALICE, [(BOB, [])], make_message("must be secret", sender=ALICE, to=BOB), ["REQUIRETLS"],
                   starttls=True)
        requiretls_failed(srv, qid, lambda: peer.verbs("MAIL") or peer.messages)
        assert peer.verbs("STARTTLS"), f"tern should have tried TLS first: {peer.commands}"
        block = wait_bounce(srv, ALICE)[0].for_rcpt(BOB)
        assert str(block["Status"]).strip() == "5.7.30", block
