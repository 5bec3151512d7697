"""DSN (RFC 3461) with a real Postfix as the peer, in both directions.

A private Postfix (relay_helpers.Postfix) is the mail server of pf.test (virtual(8) Maildirs) and routes tern.test
back to tern (`transport_maps`), and tern routes pf.test to Postfix. So each side's notifications reach the other:

- tern -> Postfix: a message sent to tern with NOTIFY=SUCCESS, ORCPT and ENVID is relayed to Postfix with those
  parameters (Postfix offers DSN), Postfix delivers it and itself sends the "delivered" DSN to the sender, a
  tern.test mailbox; Python `email` parses it and it carries the ENVID and ORCPT tern passed on;
- Postfix -> tern: a message submitted to Postfix with the same requests for a tern.test recipient is relayed by
  Postfix to tern (with the parameters), tern delivers it to the Maildir and sends its own "delivered" DSN to
  the pf.test sender, which Postfix stores: parsed the same way;
- NOTIFY=NEVER through Postfix: Postfix's 550 for an unknown user makes tern fail the recipient without any
  bounce to the sender (RFC 3461 4.1), while the other recipient is delivered.
"""

from __future__ import annotations

import smtplib

import pytest

from relay_helpers import (
    ALICE,
    Postfix,
    parse_dsn,
    relay_config,
    require_postfix,
    route_to,
    wait_bounce,
    wait_gone,
)
from ternlib import make_message, queue_id

USERS = ("bob", "carol")


@pytest.fixture
def pair(tern):
    """(tern, postfix): each routes the other's domain to the other."""
    require_postfix()
    pf = Postfix(domain="pf.test", users=USERS)
    try:
        srv = tern(**relay_config(routes={"pf.test": route_to(pf.port)}))
        pf.extra = (f"transport_maps = inline:{{ tern.test=smtp:[127.0.0.1]:{srv.port} }}",
                    # Postfix's notifications come from its bounce daemon: make it fast and plain.
                    "delay_warning_time = 0", "notify_classes =")
        pf.start()
        yield srv, pf
    finally:
        pf.cleanup()


def delivered_block(dsn, rcpt: str):
    block = dsn.for_rcpt(rcpt)
    ctx = f"\n--- block ---\n{block}\n--- DSN ---\n{dsn.raw[:3000].decode('utf-8', 'replace')}"
    assert str(block.get("Action", "")).strip().lower() == "delivered", f"Action{ctx}"
    assert str(block.get("Status", "")).strip().startswith("2."), f"Status{ctx}"
    return block, ctx


def test_tern_relays_dsn_requests_and_postfix_notifies_the_sender(pair):
    srv, pf = pair
    msg = make_message("to postfix, tell me", b"Hello Bob.\r\n", sender=ALICE, to="bob@pf.test")
    with smtplib.SMTP(srv.host, srv.port, local_hostname="client.test", timeout=10) as s:
        s.sendmail(ALICE, ["bob@pf.test"], msg, mail_options=["RET=HDRS", "ENVID=tern+2Dto+2Dpf"],
                   rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Bob@PF.test"])
    [copy] = pf.wait_delivered("bob")
    assert b"Hello Bob." in copy
    # Postfix (not tern) owes the notification: tern sent NOTIFY on, so it adds no "relayed" DSN of its own.
    [dsn] = wait_bounce(srv, ALICE, 1)
    block, ctx = delivered_block(dsn, "bob@pf.test")
    assert "Bob@PF.test" in str(block.get("Original-Recipient", "")), f"ORCPT passed on by tern{ctx}"
    assert str(dsn.per_message.get("Original-Envelope-Id", "")).strip() == "tern-to-pf", f"ENVID{ctx}"
    assert "postfix.pf.test" in str(dsn.per_message.get("Reporting-MTA", "")), f"Reporting-MTA{ctx}"
    assert len(srv.messages(ALICE)) == 1


def test_postfix_relays_dsn_requests_and_tern_notifies_the_sender(pair):
    srv, pf = pair
    msg = make_message("to tern, tell me", b"Hello Alice.\r\n", sender="carol@pf.test", to=ALICE)
    with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="client.test", timeout=10) as s:
        s.sendmail("carol@pf.test", [ALICE], msg, mail_options=["RET=HDRS", "ENVID=pf+2Dto+2Dtern"],
                   rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Alice@Tern.test"])
    [copy] = srv.wait_messages(ALICE, 1)
    assert b"Hello Alice." in copy
    # tern's own "delivered" DSN, relayed by tern to pf.test, stored by Postfix for carol.
    [raw] = pf.wait_delivered("carol")
    dsn = parse_dsn(raw)
    block, ctx = delivered_block(dsn, ALICE)
    assert "Alice@Tern.test" in str(block.get("Original-Recipient", "")), f"ORCPT passed on by Postfix{ctx}"
    assert str(dsn.per_message.get("Original-Envelope-Id", "")).strip() == "pf-to-tern", f"ENVID{ctx}"
    assert "mx.tern.test" in str(dsn.per_message.get("Reporting-MTA", "")), f"Reporting-MTA{ctx}"
    # RET=HDRS: the headers come back, not the body.
    assert dsn.original_headers is not None and dsn.original_headers.get("Subject") == "to tern, tell me", ctx
    assert b"Hello Alice." not in raw


def test_notify_never_through_postfix_means_no_bounce(pair):
    srv, pf = pair
    msg = make_message("quietly", b"Hi.\r\n", sender=ALICE, to="bob@pf.test")
    with smtplib.SMTP(srv.host, srv.port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        assert s.mail(ALICE)[0] == 250
        assert s.rcpt("bob@pf.test")[0] == 250
        assert s.rcpt("nosuchuser@pf.test", ["NOTIFY=NEVER"])[0] == 250
        code, text = s.data(msg)
        assert code == 250, text
    qid = queue_id(text.decode())
    [copy] = pf.wait_delivered("bob")
    assert b"Hi." in copy
    wait_gone(srv, qid)
    # Postfix refused nosuchuser at RCPT (550 5.1.1), so only tern could tell the sender, and NOTIFY=NEVER says
    # not to. A bounce would be in the Maildir before the entry is gone (made durable first).
    assert "nosuchuser@pf.test" in pf.log() and "550 5.1.1" in pf.log(), pf.log()
    assert srv.messages(ALICE) == [], srv.messages(ALICE)
