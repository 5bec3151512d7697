"""Relay (outbound queue) against scripted peers on loopback: a static route `[routes] "remote.test"` points at an
aiosmtpd server whose replies each test scripts, or at a raw socket server that breaks the protocol.

Covered: exact bytes and envelope at the remote; 4xx then 250 on retry (and `tern queue show` while deferred);
5xx at MAIL/RCPT/DATA -> RFC 3464 bounce in the local sender's Maildir; remote down past max_age -> bounce;
hung peer -> deferred with a timeout reason; garbage / code 600 / 10 MB reply line -> deferred, tern still
relays; partial success; one delay notice (queue.delay_warning); several messages over one connection; restart with a deferred entry delivers exactly
once; mail loop (too many Received headers) is never relayed; bounces of remote senders and of `<>`.
Relay rights (who may relay) are in test_relay_policy.py."""

from __future__ import annotations

import time

import pytest

from relay_helpers import (ALICE, WAIT, PeerConn, RawPeer, Remote, banner, check_failed, closed_port, ehlo_reply, envelope,
                           log_tail, no_reply_after_dot, parse_dsn, queue_ids, queue_show, recipient, relay_config,
                           return_path, route_to, silent, tern_queue, wait_bounce, wait_for, wait_gone, wait_state)
from ternlib import HOSTNAME, make_message, split_trace

BOB = "bob@remote.test"
CAROL = "carol@remote.test"


def relay_srv(tern, port: int, **kw):
    """A tern whose route for remote.test is 127.0.0.1:port; kw are relay_config() arguments."""
    routes = {"remote.test": route_to(port), **kw.pop("routes", {})}
    return tern(**relay_config(routes=routes, **kw))


def assert_no_remote_message(remote: Remote, settle: float = 1.0) -> None:
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        assert not remote.messages, f"the remote received {remote.messages}"
        time.sleep(0.1)


def assert_still_serves(srv, good: Remote) -> None:
    """After a misbehaving peer, tern still takes mail and still relays (to good.test -> `good`)."""
    local = make_message("still serving locally", sender=ALICE, to="dave@tern.test")
    srv.deliver(ALICE, "dave@tern.test", local)
    srv.wait_messages("dave@tern.test", 1, timeout=WAIT)
    srv.deliver(ALICE, "eve@good.test", make_message("still relaying", sender=ALICE, to="eve@good.test"))
    got = good.wait_messages(1, srv=srv)
    assert got[0].rcpt_tos == ["eve@good.test"]


# ---------------------------------------------------------------- success


def test_relayed_bytes_envelope_and_received_header(tern, remote):
    srv = relay_srv(tern, remote.port)
    # Lines that need dot-stuffing on the wire, trailing blanks, a tab, 8-bit text, a long (but legal) line.
    body = (b"First line.\r\n.\r\n..two dots\r\n. dot space\r\ntrailing blanks   \r\n\ttab\r\n"
            + "caf\u00e9 \u00fcber \u65e5\u672c\r\n".encode() + b"y" * 990 + b"\r\n\r\nlast line\r\n")
    msg = make_message("exact bytes", body=body, sender=ALICE, to=BOB)
    qid = srv.deliver(ALICE, [BOB, CAROL], msg, mail_options=["BODY=8BITMIME"])
    got = remote.wait_messages(1, srv=srv)[0]
    assert got.mail_from == ALICE
    assert sorted(got.rcpt_tos) == [BOB, CAROL], "both recipients at one destination share one transaction"
    trace, rest = split_trace(got.content)
    assert rest == msg, "the message after tern's trace header must be byte-identical"
    assert [n.lower() for n, _ in trace] == ["received"], f"exactly one trace header (tern's Received), got {trace}"
    assert f"by {HOSTNAME}" in trace[0][1], trace
    assert "BODY=8BITMIME" in [o.upper() for o in got.mail_options], got.mail_options
    wait_gone(srv, qid)
    assert srv.messages(ALICE) == [], "a delivered message must not bounce"


# ---------------------------------------------------------------- temporary failures and retries


def test_4xx_then_250_is_delivered_on_retry(tern, remote):
    remote.script.once["rcpt"] = ["451 4.7.1 greylisted by the scripted remote, try again"]
    # 3s leaves room to look at the deferred entry before the retry (the spool is rescanned every 2 s).
    srv = relay_srv(tern, remote.port, queue={"retry_schedule": ["3s"]})
    qid = srv.deliver(ALICE, BOB, make_message("greylisted", sender=ALICE, to=BOB))
    status = wait_state(srv, qid, BOB, "deferred")
    assert "greylisted by the scripted remote" in status["last_reply"], status
    assert status["last_reply"].startswith("451 4.7.1"), status

    shown = queue_show(srv, qid)
    assert shown["id"] == qid
    rcpt = [r for r in shown["recipients"] if r["address"] == BOB]
    assert rcpt and rcpt[0]["state"] == "deferred", shown
    assert "451 4.7.1 greylisted by the scripted remote" in (rcpt[0]["last_reply"] or ""), shown
    assert rcpt[0]["attempts"] >= 1, shown
    assert any("451 4.7.1" in a["reply"] for a in shown["attempts"]), shown["attempts"]
    assert "Subject: greylisted" in shown["headers"], shown["headers"]

    got = remote.wait_messages(1, srv=srv)
    assert got[0].rcpt_tos == [BOB]
    wait_gone(srv, qid)
    assert srv.messages(ALICE) == [], "delivered on retry: no bounce"


# ---------------------------------------------------------------- permanent failures -> DSN


@pytest.mark.parametrize("phase,reply,status", [
    ("rcpt", "550 5.1.1 <bob@remote.test>: no such mailbox here (scripted)", "5.1.1"),
    ("mail", "553 5.7.1 sender refused (scripted)", "5.7.1"),
    ("data", "554 5.6.0 content refused (scripted)", "5.6.0"),
])
def test_5xx_bounces_to_local_sender(tern, remote, phase, reply, status):
    remote.script.default[phase] = reply
    srv = relay_srv(tern, remote.port)
    qid = srv.deliver(ALICE, BOB, make_message("will bounce", sender=ALICE, to=BOB))
    dsn = wait_bounce(srv, ALICE)[0]
    check_failed(dsn, BOB, status_prefix=status, diag=reply.split(" ", 2)[2], subject="will bounce")
    assert return_path(dsn.raw) == "<>", f"a DSN is sent with the null reverse-path, got {return_path(dsn.raw)}"
    assert HOSTNAME in str(dsn.per_message.get("Reporting-MTA", "")), dsn.per_message
    assert dsn.msg["To"] and ALICE in dsn.msg["To"], dsn.msg["To"]
    wait_gone(srv, qid)
    assert not remote.messages


def test_partial_one_delivered_one_bounced(tern, remote):
    remote.script.rcpt_replies[CAROL] = "550 5.1.1 <carol@remote.test>: unknown user (scripted)"
    srv = relay_srv(tern, remote.port)
    qid = srv.deliver(ALICE, [BOB, CAROL], make_message("partial", sender=ALICE, to=BOB))
    got = remote.wait_messages(1, srv=srv)
    assert got[0].rcpt_tos == [BOB]
    dsn = wait_bounce(srv, ALICE)[0]
    check_failed(dsn, CAROL, "5.1.1", diag="unknown user (scripted)", subject="partial")
    failed = [b for b in dsn.recipients if str(b.get("Action", "")).strip().lower() == "failed"]
    assert len(failed) == 1, f"only carol failed: {[dict(b.items()) for b in dsn.recipients]}"
    assert all(BOB not in str(b.get("Final-Recipient", "")) or str(b.get("Action")).strip().lower() != "failed"
               for b in dsn.recipients)
    wait_gone(srv, qid)
    time.sleep(0.5)
    assert len(remote.messages) == 1 and len(srv.messages(ALICE)) == 1, "nothing twice"


def test_remote_down_past_max_age_bounces(tern):
    port = closed_port()
    srv = relay_srv(tern, port, queue={"max_age": "3s", "retry_schedule": ["1s"]})
    qid = srv.deliver(ALICE, BOB, make_message("nobody home", sender=ALICE, to=BOB))
    status = wait_state(srv, qid, BOB, "deferred", timeout=5)
    assert status["last_reply"].startswith("4"), status
    dsn = wait_bounce(srv, ALICE, timeout=WAIT)[0]
    check_failed(dsn, BOB, status_prefix="", subject="nobody home")
    # No remote ever answered, so there is no Diagnostic-Code to quote; the human part must say why.
    human = " ".join(dsn.human.split()).lower()
    assert "refused" in human and "max_age" in human, f"the bounce should say why:\n{dsn.human}"
    wait_gone(srv, qid)


def test_delay_warning_is_sent_once_and_the_message_stays_queued(tern):
    port = closed_port()
    srv = relay_srv(tern, port, queue={"max_age": "1h", "retry_schedule": ["1s"], "delay_warning": "2s"})
    qid = srv.deliver(ALICE, BOB, make_message("slow road", sender=ALICE, to=BOB))
    dsn = wait_bounce(srv, ALICE, timeout=WAIT)[0]
    block = dsn.for_rcpt(BOB)
    ctx = f"\n--- notice ---\n{dsn.raw[:3000].decode('utf-8', 'replace')}"
    assert str(block.get("Action", "")).strip().lower() == "delayed", f"Action{ctx}"
    assert str(block.get("Status", "")).strip().startswith("4."), f"Status{ctx}"
    assert block.get("Will-Retry-Until") is not None, f"Will-Retry-Until{ctx}"
    assert dsn.original_headers is not None and dsn.original_headers.get("Subject") == "slow road", ctx
    # Retries go on every second; the notice is not repeated and the message is still queued.
    time.sleep(3.5)
    assert len(srv.messages(ALICE)) == 1, "the delay notice must be sent once per message"
    status = wait_state(srv, qid, BOB, "deferred")
    assert status["attempts"] >= 3, status


def test_bounce_of_a_remote_sender_is_relayed_with_null_sender(tern, remote):
    with Remote() as home:
        srv = relay_srv(tern, remote.port, routes={"home.test": route_to(home.port)})
        remote.script.default["rcpt"] = "550 5.1.1 no such user (scripted)"
        srv.deliver("zoe@home.test", BOB, make_message("from afar", sender="zoe@home.test", to=BOB))
        got = home.wait_messages(1, srv=srv)[0]
        assert got.mail_from in ("", "<>"), f"a bounce has the null reverse-path, got {got.mail_from!r}"
        assert got.rcpt_tos == ["zoe@home.test"]
        _trace, rest = split_trace(got.content)
        check_failed(parse_dsn(rest), BOB, "5.1.1", diag="no such user (scripted)", subject="from afar")


def test_failure_of_a_null_sender_message_is_never_bounced(tern, remote):
    remote.script.default["rcpt"] = "550 5.1.1 no such user (scripted)"
    srv = relay_srv(tern, remote.port)
    qid = srv.deliver("<>", BOB, make_message("a bounce itself", sender=ALICE, to=BOB))
    wait_gone(srv, qid)
    # docs/flow.md: the failure of a <> message is reported to the local postmaster only.
    notice = wait_bounce(srv, "postmaster@tern.test")[0]
    check_failed(notice, BOB, "5.1.1", subject="a bounce itself")
    time.sleep(1.0)
    assert not remote.messages, "nothing may be sent back for a <> message"
    assert srv.messages(ALICE) == []
    # No new queue entry may carry it onwards either.
    for q in queue_ids(srv):
        env = envelope(srv, q) or {}
        assert not any("remote.test" in r["address"] for r in env.get("recipients", [])), env


# ---------------------------------------------------------------- misbehaving peers


@pytest.mark.parametrize("behaviour,outbound", [
    pytest.param(silent, {"command_timeout": "2s"}, id="no-banner"),
    pytest.param(ehlo_reply(b""), {"command_timeout": "2s"}, id="no-ehlo-reply"),
    pytest.param(no_reply_after_dot, {"command_timeout": "5s", "data_timeout": "2s"}, id="no-reply-after-dot"),
])
def test_hung_peer_defers_with_a_timeout(tern, behaviour, outbound):
    with RawPeer(behaviour) as peer, Remote() as good:
        srv = relay_srv(tern, peer.port, outbound=outbound, routes={"good.test": route_to(good.port)})
        started = time.monotonic()
        qid = srv.deliver(ALICE, BOB, make_message("hung peer", sender=ALICE, to=BOB))
        status = wait_state(srv, qid, BOB, "deferred", timeout=15)
        took = time.monotonic() - started
        reply = status["last_reply"]
        assert reply.startswith("451 4.4.2"), f"a timeout is 451 4.4.2: {reply!r}"
        assert "timed out" in reply and "127.0.0.1" in reply, f"the reason should name the timeout and host: {reply!r}"
        assert took < 10, f"a 2 s timeout took {took:.1f} s to notice"
        assert peer.connections == 1
        assert_still_serves(srv, good)
        assert srv.messages(ALICE) == [], "a timeout is temporary: no bounce"


def tarpit(c: PeerConn) -> None:
    """Answers every command correctly, each after 1.5 s: inside command_timeout (5 s), so no phase
    ever times out, but the whole attempt crawls (issue 10: tarpits)."""
    def slow(data: bytes) -> bool:
        if c.stop.wait(1.5):
            return False
        return c.send(data)
    if not slow(b"220 tarpit.test ESMTP\r\n"):
        return
    while (line := c.readline()) is not None:
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            reply = b"250 tarpit.test\r\n"
        elif verb == b"DATA":
            if not slow(b"354 go on\r\n"):
                return
            while (data := c.readline()) is not None and data != b".":
                pass
            reply = b"250 ok\r\n"
        elif verb == b"QUIT":
            slow(b"221 bye\r\n")
            return
        else:
            reply = b"250 ok\r\n"
        if not slow(reply):
            return


def test_a_tarpit_is_cut_off_by_the_attempt_timeout(tern):
    with RawPeer(tarpit) as peer, Remote() as good:
        srv = relay_srv(tern, peer.port, routes={"good.test": route_to(good.port)},
                        outbound={"command_timeout": "5s", "attempt_timeout": "4s"})
        started = time.monotonic()
        qid = srv.deliver(ALICE, BOB, make_message("tarpit", sender=ALICE, to=BOB))
        status = wait_state(srv, qid, BOB, "deferred", timeout=20)
        took = time.monotonic() - started
        reply = status["last_reply"]
        assert reply.startswith("451 4.4.2 delivery to "), reply
        assert "took longer than 4s (outbound.attempt_timeout)" in reply, reply
        # Banner, EHLO, MAIL, RCPT, DATA at 1.5 s each would take 7.5 s: the deadline cut it at 4 s.
        assert took < 7, f"the attempt ran {took:.1f} s"
        assert "relay: delivery attempt timed out" in srv.log()
        assert_still_serves(srv, good)
        assert srv.messages(ALICE) == [], "a timeout is temporary: no bounce"


TEN_MB = 10 * 1024 * 1024


@pytest.mark.parametrize("behaviour,why", [
    pytest.param(banner(b"hello, I am not an SMTP server\r\n"), "not valid SMTP", id="garbage-banner"),
    pytest.param(banner(b"600 a code that does not exist\r\n"), "600", id="code-600"),
    pytest.param(banner(b"220 " + b"x" * TEN_MB + b"\r\n"), "longer than", id="10MB-banner-line"),
    pytest.param(ehlo_reply(b"250-ok\r\n\x00\xff\xfe binary garbage\r\n"), "not valid SMTP",
                 id="garbage-ehlo-continuation"),
    pytest.param(ehlo_reply(b"250-" + b"y" * TEN_MB + b"\r\n250 ok\r\n"), "longer than", id="10MB-ehlo-line"),
])
def test_garbage_from_peer_defers_and_tern_keeps_serving(tern, behaviour, why):
    with RawPeer(behaviour) as peer, Remote() as good:
        srv = relay_srv(tern, peer.port, outbound={"command_timeout": "3s"}, routes={"good.test": route_to(good.port)})
        qid = srv.deliver(ALICE, BOB, make_message("garbage peer", sender=ALICE, to=BOB))
        status = wait_state(srv, qid, BOB, "deferred", timeout=15)
        reply = status["last_reply"]
        # A protocol violation is temporary (the peer may be fixed) and says what was wrong, and with whom.
        assert reply.startswith("451 4.5.0 "), f"temporary protocol error: {reply!r}"
        assert "invalid reply" in reply and why in reply, f"the reason should say what was wrong: {reply!r}"
        assert "127.0.0.1" in reply, f"the reason should name the host: {reply!r}"
        assert len(reply) < 2000, f"the stored reason must not carry the peer's huge line: {len(reply)} bytes"
        assert "\x00" not in reply, f"raw control bytes from the peer in the stored reason: {reply!r}"
        assert srv.running(), f"tern died:\n{log_tail(srv)}"
        assert_still_serves(srv, good)


# ---------------------------------------------------------------- connection reuse


def test_one_connection_carries_several_messages_after_flush(tern, remote):
    remote.script.default["mail"] = "451 4.3.2 held by the scripted remote"
    srv = relay_srv(tern, remote.port, outbound={"concurrency_per_host": 1})
    ids = [srv.deliver(ALICE, BOB, make_message(f"batch {i}", sender=ALICE, to=BOB)) for i in range(3)]
    for qid in ids:
        wait_state(srv, qid, BOB, "deferred")
    remote.script.default["mail"] = None
    time.sleep(0.5)  # let the last MAIL reply be counted before the reset
    remote.reset_counts()
    r = tern_queue(srv, "flush")
    assert r.returncode == 0, f"tern queue flush: {r.returncode} {r.stdout!r} {r.stderr!r}"
    got = remote.wait_messages(3, srv=srv)
    conns = sorted({g.conn for g in got})
    assert remote.connections <= len(got), f"{remote.connections} connections for {len(got)} messages"
    assert len(conns) == 1, (f"3 messages to one host should share one connection; came on connections {conns} "
                             f"({remote.connections} new since flush); events {remote.events}")
    for qid in ids:
        wait_gone(srv, qid)


def test_burst_to_one_host_reuses_the_connection(tern, remote):
    srv = relay_srv(tern, remote.port, outbound={"concurrency_per_host": 1})
    with srv.smtp() as s:
        for i in range(4):
            s.sendmail(ALICE, [BOB], make_message(f"burst {i}", sender=ALICE, to=BOB))
    got = remote.wait_messages(4, srv=srv)
    assert len({g.conn for g in got}) < len(got), f"4 messages on connections {[g.conn for g in got]}"


# ---------------------------------------------------------------- restart


def test_restart_with_a_deferred_entry_delivers_exactly_once(tern, remote):
    remote.script.default["rcpt"] = "452 4.2.2 mailbox full (scripted)"
    srv = relay_srv(tern, remote.port, queue={"retry_schedule": ["2s"]})
    qid = srv.deliver(ALICE, BOB, make_message("survives restart", sender=ALICE, to=BOB))
    wait_state(srv, qid, BOB, "deferred")
    srv.stop()
    assert envelope(srv, qid) is not None, "a deferred entry must survive a clean stop"
    remote.script.default["rcpt"] = None
    srv.start()
    got = remote.wait_messages(1, srv=srv)
    assert got[0].rcpt_tos == [BOB]
    assert b"Subject: survives restart" in got[0].content
    wait_gone(srv, qid)
    time.sleep(3)  # longer than one rescan and one retry step: a second copy would show up by now
    assert len(remote.messages) == 1, f"delivered {len(remote.messages)} times"
    assert srv.messages(ALICE) == []


def test_kill9_right_after_250_the_queued_message_is_relayed_after_restart(tern, remote):
    """The queue half of durable acceptance: a relayed message that got its 250 survives kill -9 (and the
    lock of a round cut short dies with the process)."""
    remote.script.default["rcpt"] = "451 4.3.0 not now (scripted)"
    srv = relay_srv(tern, remote.port, queue={"retry_schedule": ["1s"]})
    qid = srv.deliver(ALICE, BOB, make_message("kill -9 after 250", sender=ALICE, to=BOB))
    srv.kill9()
    assert envelope(srv, qid) is not None, "the queue entry must be on disk once the 250 was sent"
    remote.script.default["rcpt"] = None
    srv.start()
    got = remote.wait_messages(1, srv=srv)
    assert got[0].rcpt_tos == [BOB] and b"Subject: kill -9 after 250" in got[0].content
    wait_gone(srv, qid)
    time.sleep(2.5)
    assert len(remote.messages) == 1, f"delivered {len(remote.messages)} times"


def test_sigterm_during_a_hung_delivery_keeps_the_message(tern):
    with RawPeer(silent) as peer:
        port = peer.port
        srv = relay_srv(tern, port, queue={"retry_schedule": ["1s"]}, outbound={"command_timeout": "60s"})
        qid = srv.deliver(ALICE, BOB, make_message("interrupted", sender=ALICE, to=BOB))
        wait_for(lambda: peer.connections >= 1, what="tern to connect to the hung peer")
        started = time.monotonic()
        srv.stop()  # asserts exit status 0 within 10 s, although the peer would keep the delivery 60 s
        took = time.monotonic() - started
    assert took < 10, f"stop took {took:.1f} s"
    env = envelope(srv, qid)
    assert env, "a message whose delivery was interrupted must stay queued"
    assert recipient(env, BOB)["status"]["state"] in ("pending", "deferred"), env
    with Remote(port=port) as good:
        srv.start()
        got = good.wait_messages(1, srv=srv)
        assert b"Subject: interrupted" in got[0].content
        wait_gone(srv, qid)
        time.sleep(2.5)
        assert len(good.messages) == 1


def test_message_larger_than_remote_size_bounces_without_sending(tern):
    with Remote(size_limit=2000) as small:
        srv = relay_srv(tern, small.port)
        big = make_message("too big for them", body=b"0123456789" * 1000 + b"\r\n", sender=ALICE, to=BOB)
        qid = srv.deliver(ALICE, BOB, big)
        dsn = wait_bounce(srv, ALICE)[0]
        check_failed(dsn, BOB, "5.3.4", subject="too big for them")
        wait_gone(srv, qid)
        assert not small.messages
        assert not any(verb == "DATA" for _c, verb, _a, _r in small.events), small.events


# ---------------------------------------------------------------- loops


def test_mail_loop_is_not_relayed(tern, remote):
    srv = relay_srv(tern, remote.port)
    hops = b"".join(f"Received: from hop{i}.test by hop{i + 1}.test; Mon, 1 Jan 2024 00:00:{i % 60:02d} +0000\r\n".encode()
                    for i in range(60))
    msg = hops + make_message("looping", sender=ALICE, to=BOB)
    with srv.smtp() as s:
        s.ehlo()
        assert s.mail(ALICE)[0] == 250
        assert s.rcpt(BOB)[0] == 250
        code, text = s.data(msg)
    if code == 250:
        dsn = wait_bounce(srv, ALICE)[0]
        check_failed(dsn, BOB, "5.4.6")
    else:
        assert code == 554 and text.decode().startswith("5.4.6"), f"DATA: {code} {text!r}"
    assert_no_remote_message(remote, settle=2.0)


def test_received_limit_is_the_same_at_data_and_in_the_queue(tern, remote):
    """Issue 10: the queued copy carries tern's own Received on top of the client's, and the relay
    refuses a copy with more than queue.max_received_headers. So a message arriving with exactly
    the limit is refused at DATA (554 5.4.6, the client keeps the bounce), and one with the limit
    minus one is accepted *and relayed* (not bounced later) with exactly the limit on the wire."""
    limit = 5
    srv = relay_srv(tern, remote.port, queue={"max_received_headers": limit})

    def hops(n: int) -> bytes:
        return b"".join(f"Received: from hop{i}.test by hop{i + 1}.test; Mon, 1 Jan 2024 00:00:0{i} +0000\r\n".encode()
                        for i in range(n))

    with srv.smtp() as s:
        s.ehlo()
        assert s.mail(ALICE)[0] == 250
        assert s.rcpt(BOB)[0] == 250
        code, text = s.data(hops(limit) + make_message("at the limit", sender=ALICE, to=BOB))
        assert code == 554 and text.decode().startswith("5.4.6"), f"N = max: {code} {text!r}"
        assert s.mail(ALICE)[0] == 250
        assert s.rcpt(BOB)[0] == 250
        code, text = s.data(hops(limit - 1) + make_message("one below", sender=ALICE, to=BOB))
        assert code == 250, f"N = max - 1: {code} {text!r}"
    got = remote.wait_messages(1, srv=srv)
    assert len(got) == 1 and b"Subject: one below" in got[0].content, got
    trace, _rest = split_trace(got[0].content)
    received = [v for n, v in trace if n.lower() == "received"]
    assert len(received) == limit, f"the relayed copy has {len(received)} Received fields, want {limit}"
    assert srv.messages(ALICE) == [], "the accepted message bounced in the queue"
