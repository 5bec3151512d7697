"""ARC sealing of forwarded mail (issue 11 item 4, RFC 8617) and dkim=none (RFC 8601 2.7.1).

A message from outside (port 25, untrusted 127.0.0.2) to the alias fwd@tern.test, which forwards to a remote
sink (aiosmtpd), leaves with one ARC set by tern: i=1, d=tern.test (the `[[dkim]]` RSA key of the hostname's parent
domain, made by `tern dkim keygen`), cv=none (there was no chain before), and the ARC-Authentication-Results carries
our Authentication-Results. At the sink an independent validator, dkimpy's `dkim.arc_verify` (its dnsfunc answers
tern's ARC key and the original signer's key), says the chain passes, and the original DKIM signature still
verifies. An unsigned message's forwarded copy is sealed too (cv=none, its AAR says dkim=none); the local copy
carries no ARC field; `tern queue show` of a forwarded copy the sink defers
(451) shows our Authentication-Results and the ARC set. The fake DNS and the dkimpy-signed messages are
test_auth_inbound's, the forwarding setup test_srs's, the key tooling test_dkim's."""

from __future__ import annotations

import re

import authres
import dkim
import pytest

from relay_helpers import Remote, queue_ids, queue_show, relay_config, route_to, tern_queue, wait_state
from sec_helpers import Client
from send_helpers.fakedns import FakeDNS
from test_auth_inbound import KEY, OUTSIDE, fields, only_ar, ours, result, send, signed, zone
from test_auth_verify_cli import record_of
from test_dkim import dns_of, keygen
from test_srs import FWD, SOMEONE, UNTRUSTED
from test_srs import keygen as srs_keygen
from ternlib import HOSTNAME, LOCAL_DOMAIN

LOCAL = "dave@tern.test"


@pytest.fixture(scope="module")
def dns():
    with FakeDNS(zone()) as d:
        yield d


@pytest.fixture
def sink():
    with Remote() as r:
        yield r


def arc_srv(tern, dns, sink, tmp_path):
    """tern with the alias, SRS, a route for remote.test to the sink, the fake DNS, and one [[dkim]] RSA key for
    tern.test (the parent of the hostname mx.tern.test): the sealing key. Returns (srv, key)."""
    key = keygen(tmp_path, "arc", domain=LOCAL_DOMAIN)
    cfg = relay_config(routes={"remote.test": route_to(sink.port)}, aliases={FWD: SOMEONE}, relay=UNTRUSTED,
                       dns={"nameservers": [dns.addr]}, dkim=[key.dkim_config()],
                       srs={"secret_file": srs_keygen(tmp_path / "srs.secret")})
    srv = tern(**cfg)
    assert "ARC-sealing forwarded mail" in srv.log(), srv.log()
    return srv, key


def validator_dns(key):
    """dkimpy's dnsfunc: tern's ARC key and the original signer's (signer.test, selector s1) key."""
    ours_ = dns_of(key)
    signer = record_of(KEY).encode()

    def lookup(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        if name.rstrip(".").lower() == "s1._domainkey.signer.test":
            return signer
        return ours_(name, timeout)
    return lookup


def arc_fields(message: bytes) -> dict[str, str]:
    """The ARC fields of a message by name (lower-case), unfolded; each must occur once (one ARC set)."""
    got: dict[str, str] = {}
    for name, value in fields(message):
        if name.lower().startswith("arc-"):
            assert name.lower() not in got, f"two {name} fields: {message[:3000]!r}"
            got[name.lower()] = value
    return got


def tags(value: str) -> dict[str, str]:
    return {k.strip(): re.sub(r"\s", "", v) for k, _, v in (t.partition("=") for t in value.split(";")) if v}


def check_sealed(content: bytes, key) -> dict[str, str]:
    """The checks an ARC validator downstream makes, by dkimpy: the chain passes, with tern's i=1 set."""
    crlf = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    cv, results, comment = dkim.arc_verify(crlf, dnsfunc=validator_dns(key))
    assert cv == b"pass", f"dkimpy: cv={cv!r} {comment} {results}\n{crlf[:3000]!r}"
    assert [r["instance"] for r in results] == [1], results
    arc = arc_fields(crlf)
    seal = tags(arc["arc-seal"])
    assert (seal["i"], seal["cv"], seal["d"], seal["s"], seal["a"]) == ("1", "none", "tern.test", "arc",
                                                                        "rsa-sha256"), arc
    assert tags(arc["arc-message-signature"])["i"] == "1", arc
    # The AAR is our Authentication-Results (RFC 8617 4.1.1): the same text after `i=1; `.
    ar = [v for n, v in fields(crlf) if n.lower() == "authentication-results" and v.startswith(HOSTNAME)]
    assert len(ar) == 1, crlf[:3000]
    assert arc["arc-authentication-results"] == f"i=1; {ar[0]}", arc
    return arc


def send_to_many(srv, sender: str, rcpts: list[str], msg: bytes) -> None:
    """One transaction from outside to several recipients (test_auth_inbound's `send` names one)."""
    with Client(srv.port, source=OUTSIDE) as c:
        c.start()
        c.expect(f"MAIL FROM:<{sender}>", 250)
        for rcpt in rcpts:
            c.expect(f"RCPT TO:<{rcpt}>", 250)
        c.expect("DATA", 354)
        c.send(msg + b".\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines


def test_a_signed_forwarded_message_is_sealed_and_the_chain_passes_at_the_next_hop(tern, dns, sink, tmp_path):
    srv, key = arc_srv(tern, dns, sink, tmp_path)
    msg = signed("signer.test", subject="for the forwarder")
    code, text = send(srv, "alice@signer.test", msg, rcpt=FWD)
    assert code == 250, text
    got = sink.wait_messages(1, srv=srv)[0]
    assert got.rcpt_tos == [SOMEONE], got
    assert got.mail_from.startswith("SRS0="), got.mail_from
    arc = check_sealed(got.content, key)
    assert "dkim=pass" in arc["arc-authentication-results"], arc
    # The original signature still verifies: tern changed nothing the signer signed.
    crlf = got.content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert dkim.verify(crlf, dnsfunc=validator_dns(key)), "the original DKIM signature no longer verifies"
    ar = only_ar_of_copy(crlf)
    assert (result(ar, "dkim"), result(ar, "dmarc")) == (["pass"], ["pass"])


def only_ar_of_copy(content: bytes) -> authres.AuthenticationResultsHeader:
    got = ours(content)
    assert len(got) == 1, content[:2000]
    return got[0]


def test_an_unsigned_forwarded_message_is_sealed_with_cv_none_and_says_dkim_none(tern, dns, sink, tmp_path):
    srv, key = arc_srv(tern, dns, sink, tmp_path)
    msg = (b"From: <carol@other.test>\r\nTo: <fwd@tern.test>\r\nSubject: unsigned\r\n"
           b"Date: Mon, 1 Jun 2026 10:00:00 +0000\r\nMessage-ID: <unsigned@other.test>\r\n\r\nNo signature.\r\n")
    code, text = send(srv, "carol@other.test", msg, rcpt=FWD)
    assert code == 250, text
    got = sink.wait_messages(1, srv=srv)[0]
    arc = check_sealed(got.content, key)
    assert result(only_ar_of_copy(got.content), "dkim") == ["none"]
    aar = authres.AuthenticationResultsHeader.parse(
        "Authentication-Results: " + arc["arc-authentication-results"].split(";", 1)[1].strip())
    assert result(aar, "dkim") == ["none"], arc


def test_an_unsigned_local_delivery_says_dkim_none(tern, dns):
    srv = tern(dns={"nameservers": [dns.addr]}, relay={"trusted_networks": ["127.0.0.1/32"]})
    msg = b"From: <carol@other.test>\r\nTo: <dave@tern.test>\r\nSubject: plain\r\n\r\nhi\r\n"
    code, text = send(srv, "carol@other.test", msg)
    assert code == 250, text
    ar = only_ar(srv.wait_messages(LOCAL)[0])
    assert result(ar, "dkim") == ["none"], ar


def test_only_the_forwarded_copy_carries_the_arc_set(tern, dns, sink, tmp_path):
    # From outside, a remote recipient can only be reached through an alias (anything else is relaying, 550
    # 5.7.1), so the copies are a local one and the forwarded one. (A directly named remote recipient next to a
    # forwarded one comes from our own users, whose mail is not verified and so not sealed; the split into two
    # entries with the seal in one is covered by crates/delivery checks::tests::only_the_forwarded_entry_is_sealed.)
    srv, key = arc_srv(tern, dns, sink, tmp_path)
    msg = signed("signer.test", subject="two ways")
    send_to_many(srv, "alice@signer.test", [LOCAL, FWD], msg)
    got = sink.wait_messages(1, srv=srv)[0]
    assert got.rcpt_tos == [SOMEONE], got
    check_sealed(got.content, key)
    local = srv.wait_messages(LOCAL)[0]
    assert not arc_fields(local), "the local copy is not sealed"
    assert ours(local), "the local copy has our Authentication-Results"


def test_queue_show_of_a_deferred_forwarded_copy_shows_the_results_and_the_arc_set(tern, dns, sink, tmp_path):
    sink.script.default["data"] = "451 4.3.0 try again later"
    srv, _key = arc_srv(tern, dns, sink, tmp_path)
    code, text = send(srv, "alice@signer.test", signed("signer.test", subject="deferred"), rcpt=FWD)
    assert code == 250, text
    ids = queue_ids(srv)
    assert len(ids) == 1, ids
    wait_state(srv, ids[0], SOMEONE, "deferred")
    headers = queue_show(srv, ids[0])["headers"]
    for needle in (f"Authentication-Results: {HOSTNAME};", "ARC-Seal: i=1;", "ARC-Message-Signature: i=1;",
                   f"ARC-Authentication-Results: i=1; {HOSTNAME};"):
        assert needle in headers, f"{needle!r} not in:\n{headers}"
    # Ours first: Received, Authentication-Results, then the ARC set, then the message.
    order = [headers.index(n) for n in ("Received:", "Authentication-Results:", "ARC-Seal:", "\nFrom: Alice")]
    assert order == sorted(order), headers
    shown = tern_queue(srv, "show", ids[0])
    assert shown.returncode == 0, shown.stderr
    assert b"ARC-Seal: i=1;" in shown.stdout, shown.stdout
