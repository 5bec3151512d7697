"""Relay to a real Postfix: a private instance (relay_helpers.Postfix) on a loopback port is the remote host for
pf.test (`[routes] "pf.test" = "127.0.0.1:PORT"`) and stores mail into one Maildir per user with virtual(8).

Covered: the message arrives byte-identical after the trace headers, with tern's Received header and the
envelope sender as Return-Path; several messages and recipients in a row; Postfix's own 550 5.1.1 for an
unknown user becomes a bounce in the local sender's Maildir while the known user gets the message."""

from __future__ import annotations

import re

import pytest

from relay_helpers import ALICE, Postfix, check_failed, relay_config, require_postfix, route_to, wait_bounce, wait_gone
from ternlib import HOSTNAME, make_message

USERS = ("bob", "carol", "dave", "erin", "frank")


@pytest.fixture(scope="module")
def postfix():
    require_postfix()
    with Postfix(domain="pf.test", users=USERS) as pf:
        yield pf


@pytest.fixture
def srv(tern, postfix):
    return tern(**relay_config(routes={"pf.test": route_to(postfix.port)}))


def header_block_before(content: bytes, suffix: bytes) -> bytes:
    assert content.endswith(suffix), (
        "the delivered file must end with the original message byte for byte\n"
        f"--- delivered (head) ---\n{content[:3000]!r}\n--- expected tail (head) ---\n{suffix[:600]!r}")
    return content[: len(content) - len(suffix)]


def test_message_arrives_intact_at_postfix(srv, postfix):
    body = (b"Dear Bob,\r\n.\r\n..starts with two dots\r\n.starts with one dot\r\nends with blanks  \r\n\tindented\r\n"
            + "8-bit: caf\u00e9, stra\u00dfe, \u65e5\u672c\u8a9e\r\n".encode()
            + b"".join(b"line %05d " % i + b"z" * 70 + b"\r\n" for i in range(3000))
            + b"\r\n-- \r\nAlice\r\n")
    msg = make_message("intact at postfix", body=body, sender=ALICE, to="bob@pf.test",
                       extra=b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
                             b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n")
    qid = srv.deliver(ALICE, "bob@pf.test", msg, mail_options=["BODY=8BITMIME"])
    content = postfix.wait_delivered("bob")[0]
    # virtual(8) writes Maildir files with LF line ends.
    original = msg.replace(b"\r\n", b"\n")
    trace = header_block_before(content, original).decode("utf-8", "replace")
    assert re.search(r"^Return-Path: <alice@tern\.test>$", trace, re.M), f"envelope sender lost:\n{trace}"
    assert re.search(r"^Delivered-To: bob@pf\.test$", trace, re.M), trace
    received = re.findall(r"^Received:.*(?:\n[ \t].*)*", trace, re.M)
    assert len(received) == 2, f"Postfix's and tern's Received headers, nothing else:\n{trace}"
    assert "by postfix.pf.test" in received[0], received
    assert f"by {HOSTNAME}" in received[1], f"tern's Received header is the one next to the message: {received}"
    assert received[0].startswith(f"Received: from {HOSTNAME} "), f"tern's EHLO name (outbound.helo_name = hostname): {received[0]}"
    wait_gone(srv, qid)
    assert srv.messages(ALICE) == []


def test_several_messages_and_recipients(srv, postfix):
    ids = []
    for i in range(3):
        msg = make_message(f"batch {i}", body=f"message {i}\r\n".encode(), sender=ALICE, to="carol@pf.test")
        ids.append(srv.deliver(ALICE, ["carol@pf.test", "dave@pf.test"], msg))
    for user in ("carol", "dave"):
        got = postfix.wait_delivered(user, 3)
        subjects = sorted(re.search(rb"^Subject: (.*)$", m, re.M).group(1) for m in got)
        assert subjects == [b"batch 0", b"batch 1", b"batch 2"], f"{user}: {subjects}"
    for qid in ids:
        wait_gone(srv, qid)
    assert len(postfix.maildir_files("carol")) == 3, "each message once"


def test_postfix_rejects_unknown_user_bounce_for_it_only(srv, postfix):
    msg = make_message("one good one bad", sender=ALICE, to="erin@pf.test")
    qid = srv.deliver(ALICE, ["erin@pf.test", "nosuchuser@pf.test"], msg)
    got = postfix.wait_delivered("erin")
    assert b"Subject: one good one bad" in got[0]
    dsn = wait_bounce(srv, ALICE)[0]
    check_failed(dsn, "nosuchuser@pf.test", "5.1.1", diag="User unknown in virtual mailbox table",
                 subject="one good one bad")
    assert len(dsn.recipients) == 1, [dict(b.items()) for b in dsn.recipients]
    wait_gone(srv, qid)
