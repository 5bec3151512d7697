"""Relay routing by DNS (RFC 5321 5.1, RFC 7505): a fake DNS server (dnslib, 127.0.0.1:<free port>) is tern's only
nameserver (`[dns] nameservers`), and every MX host is reached on `[outbound] mx_port`, where an aiosmtpd peer
listens on 127.0.0.1 only. MX delivery refuses loopback addresses unless `outbound.allow_networks` exempts them
(test_relay_bounds.py), so these tests allow 127.0.0.0/8 and ::1.

Covered: MX delivery; preference order with fallback past an MX without address (NXDOMAIN) and one whose
address refuses connections (::1); implicit MX (no MX, an A record); null MX -> immediate bounce 5.1.10; this
host as the MX -> bounce 5.4.6; a domain that does not exist -> bounce 5.1.2; SERVFAIL -> deferred 4.4.3."""

from __future__ import annotations

import pytest

from relay_helpers import (ALICE, check_failed, relay_config, wait_bounce, wait_gone,
                           wait_state)
from ternlib import HOSTNAME, make_message

RECORDS = {
    "mx.test": {"MX": [(10, "mail.mx.test")]},
    "mail.mx.test": {"A": ["127.0.0.1"]},
    # Most preferred first: no such host; then an address where nothing listens on mx_port; then the peer.
    "pref.test": {"MX": [(30, "good.pref.test"), (10, "missing.pref.test"), (20, "v6dead.pref.test")]},
    "v6dead.pref.test": {"AAAA": ["::1"]},
    "good.pref.test": {"A": ["127.0.0.1"]},
    "implicit.test": {"A": ["127.0.0.1"]},
    "null.test": {"MX": [(0, ".")]},
    # The MX is tern itself (its configured hostname), and the domain is not local: a loop.
    "self.test": {"MX": [(10, HOSTNAME)]},
    HOSTNAME: {"A": ["127.0.0.1"]},
    "broken.test": "SERVFAIL",
}


@pytest.fixture
def srv(tern, dns, remote):
    return tern(**relay_config(dns={"nameservers": [dns.nameserver]},
                               outbound={"mx_port": remote.port, "allow_networks": ["127.0.0.0/8", "::1"]}))


def test_mx_record_delivers_to_the_mx_host(srv, remote, dns):
    qid = srv.deliver(ALICE, "bob@mx.test", make_message("via mx", sender=ALICE, to="bob@mx.test"))
    got = remote.wait_messages(1, srv=srv)
    assert got[0].rcpt_tos == ["bob@mx.test"] and got[0].mail_from == ALICE
    assert ("mx.test", "MX") in dns.queries, dns.queries
    wait_gone(srv, qid)


def test_mx_fallback_past_hosts_without_a_working_address(srv, remote, dns):
    qid = srv.deliver(ALICE, "bob@pref.test", make_message("fallback", sender=ALICE, to="bob@pref.test"))
    got = remote.wait_messages(1, srv=srv)
    assert got[0].rcpt_tos == ["bob@pref.test"]
    names = [n for n, _t in dns.queries]
    for host in ("missing.pref.test", "v6dead.pref.test", "good.pref.test"):
        assert host in names, f"{host} never looked up: {dns.queries}"
    # The hosts' addresses are looked up at the same time, so the order the queries arrive in says nothing
    # about preference (crates/dns/src/mx.rs tests the order); what shows here is the fallback: 10 has no
    # address, 20 only ::1 where nothing listens, and 30 takes the message.
    wait_gone(srv, qid)
    assert srv.messages(ALICE) == []


def test_implicit_mx_from_a_record(srv, remote, dns):
    qid = srv.deliver(ALICE, "bob@implicit.test", make_message("implicit", sender=ALICE, to="bob@implicit.test"))
    got = remote.wait_messages(1, srv=srv)
    assert got[0].rcpt_tos == ["bob@implicit.test"]
    assert ("implicit.test", "A") in dns.queries, dns.queries
    wait_gone(srv, qid)


def _field(block, name: str) -> str:
    """A DSN field's value, unfolded (RFC 5322 2.2.3)."""
    return " ".join(str(block.get(name, "")).split())


def test_bounce_quotes_exactly_the_remote_reply_and_names_the_mx_host(srv, remote):
    """Issue 17 item 6: Diagnostic-Code is `smtp; <the remote reply>` and nothing of tern's; Remote-MTA is the
    MX host NAME (not its address)."""
    reply = "550 5.1.1 <bob@mx.test>: no such mailbox here (scripted)"
    remote.script.rcpt_replies["bob@mx.test"] = reply
    qid = srv.deliver(ALICE, "bob@mx.test", make_message("exact diag", sender=ALICE, to="bob@mx.test"))
    dsn = wait_bounce(srv, ALICE)[0]
    block = check_failed(dsn, "bob@mx.test", "5.1.1", subject="exact diag")
    assert _field(block, "Diagnostic-Code") == f"smtp; {reply}", block
    assert _field(block, "Remote-MTA") == "dns; mail.mx.test", block
    wait_gone(srv, qid)


def test_null_mx_bounces_at_once(srv, remote):
    qid = srv.deliver(ALICE, "bob@null.test", make_message("null mx", sender=ALICE, to="bob@null.test"))
    # The retry schedule is 1 h: a bounce within the wait proves it was not treated as temporary.
    dsn = wait_bounce(srv, ALICE, timeout=10)[0]
    block = check_failed(dsn, "bob@null.test", "5.1.10", subject="null mx")
    # tern decided this itself: no remote host to name, no remote reply to quote.
    assert block.get("Remote-MTA") is None and block.get("Diagnostic-Code") is None, block
    wait_gone(srv, qid)
    assert remote.connections == 0, "nothing may connect anywhere for a null MX"


def test_mx_pointing_at_this_host_bounces_as_a_loop(srv, remote):
    qid = srv.deliver(ALICE, "bob@self.test", make_message("self mx", sender=ALICE, to="bob@self.test"))
    dsn = wait_bounce(srv, ALICE, timeout=10)[0]
    check_failed(dsn, "bob@self.test", "5.4.6", subject="self mx")
    wait_gone(srv, qid)
    assert remote.connections == 0 and not remote.messages


def test_nonexistent_domain_bounces(srv, remote):
    qid = srv.deliver(ALICE, "bob@nowhere.test", make_message("nxdomain", sender=ALICE, to="bob@nowhere.test"))
    dsn = wait_bounce(srv, ALICE, timeout=10)[0]
    check_failed(dsn, "bob@nowhere.test", "5.1.2", subject="nxdomain")
    wait_gone(srv, qid)


def test_dns_failure_is_temporary(srv, remote):
    qid = srv.deliver(ALICE, "bob@broken.test", make_message("servfail", sender=ALICE, to="bob@broken.test"))
    status = wait_state(srv, qid, "bob@broken.test", "deferred", timeout=15)
    assert status["last_reply"].startswith("451 4.4.3"), status
    assert srv.messages(ALICE) == []
