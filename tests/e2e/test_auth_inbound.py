"""Inbound verification on port 25 (issue 11 items 3 and 5): a real `tern serve` checks SPF, DKIM, ARC and DMARC
against a fake DNS (dnslib) for mail from a client outside relay.trusted_networks (127.0.0.2; only 127.0.0.1 is
trusted here), signed by an independent signer (dkimpy, and the committed dkimpy fixtures), and acts on the result:
delivered with one Authentication-Results field (parsed by Python `authres`) right after tern's Received, refused
with 550 5.7.1 under p=reject, filed into the Maildir++ folder .Junk/ under p=quarantine, 451 4.7.1 when DNS fails
under p=reject, 550 5.7.23 at MAIL FROM for an SPF fail with spf_fail_reject. A forged Authentication-Results of our
authserv-id is removed (also from a large, spooled message); submission and trusted clients are never checked."""

from __future__ import annotations

import re
from pathlib import Path

import authres
import dkim
import pytest

from sec_helpers import ALICE, ALICE_PW, BOB, Client, Ports, tls_config, wait_until
from send_helpers.fakedns import FakeDNS
from test_auth_verify_cli import record_of
from ternlib import HOSTNAME, split_trace

HERE = Path(__file__).resolve().parent
KEY = HERE.parents[1] / "crates" / "auth" / "testdata" / "rsa-2048-pkcs1.pem"
FIXTURES = HERE.parents[1] / "testdata" / "auth"
OUTSIDE = "127.0.0.2"
RCPT = "dave@tern.test"

SIGNED_HEADERS = [b"From", b"To", b"Subject", b"Date", b"Message-ID"]


def zone() -> dict:
    record = record_of(KEY)
    spf_outside = {"TXT": [f"v=spf1 ip4:{OUTSIDE} -all"]}
    return {
        # signer.test: SPF and DKIM for the client, p=reject. (Also the fixtures' domain and selector.)
        "signer.test": spf_outside,
        "s1._domainkey.signer.test": {"TXT": [record]},
        "_dmarc.signer.test": {"TXT": ["v=DMARC1; p=reject"]},
        # quar.test: p=quarantine.
        "quar.test": spf_outside,
        "s1._domainkey.quar.test": {"TXT": [record]},
        "_dmarc.quar.test": {"TXT": ["v=DMARC1; p=quarantine"]},
        # tempfail.test: p=reject, but its DKIM key cannot be fetched (SERVFAIL).
        "tempfail.test": spf_outside,
        "s1._domainkey.tempfail.test": "SERVFAIL",
        "_dmarc.tempfail.test": {"TXT": ["v=DMARC1; p=reject"]},
        # dnsfail.test: its DMARC record itself cannot be fetched (SERVFAIL).
        "dnsfail.test": spf_outside,
        "s1._domainkey.dnsfail.test": {"TXT": [record]},
        "_dmarc.dnsfail.test": "SERVFAIL",
        # A bounce domain that passes SPF but is not aligned with any From: above.
        "other.test": spf_outside,
        # SPF says no to the client (-all).
        "fail.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
        # The forwarder that ARC-seals.
        "forwarder.test": spf_outside,
        "arc._domainkey.forwarder.test": {"TXT": [record]},
    }


@pytest.fixture(scope="module")
def dns():
    with FakeDNS(zone()) as d:
        yield d


def start(tern, dns, checks: dict | None = None, **extra):
    cfg = {"dns": {"nameservers": [dns.addr]}, "relay": {"trusted_networks": ["127.0.0.1/32"]}, **extra}
    if checks:
        cfg["checks"] = checks
    return tern(**cfg)


def message(domain: str, subject: str = "quarterly report", body: bytes = b"The numbers are in.\r\nSee you.\r\n",
            extra: bytes = b"") -> bytes:
    return (f"From: Alice <alice@{domain}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n"
            f"Date: Mon, 1 Jun 2026 10:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@{domain}>\r\n".encode()
            + extra + b"\r\n" + body)


def signed(domain: str, msg: bytes | None = None, **kw) -> bytes:
    msg = msg if msg is not None else message(domain, **kw)
    return dkim.sign(msg, b"s1", domain.encode(), KEY.read_bytes(), include_headers=SIGNED_HEADERS) + msg


def send(srv, sender: str, msg: bytes, rcpt: str = RCPT, source: str = OUTSIDE) -> tuple[int, str]:
    """One transaction from `source`; the reply to the final dot (or to MAIL FROM when that refuses)."""
    with Client(srv.port, source=source) as c:
        c.start()
        code, text = c.cmd(f"MAIL FROM:<{sender}>")
        if code != 250:
            return code, text
        c.expect(f"RCPT TO:<{rcpt}>", 250)
        c.expect("DATA", 354)
        c.send(msg + b".\r\n")
        code, lines = c.read_reply()
        return code, "\n".join(lines)


def fields(stored: bytes) -> list[tuple[str, str]]:
    """Every header field of a stored (LF) message as (name, unfolded value)."""
    head = stored.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", "replace")
    unfolded = re.sub(r"\n[ \t]+", " ", head)
    return [(n, v.strip()) for n, _, v in (line.partition(":") for line in unfolded.split("\n"))]


def ours(stored: bytes) -> list[authres.AuthenticationResultsHeader]:
    """The Authentication-Results fields that carry our authserv-id, parsed by authres."""
    parsed = [authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {v}")
              for n, v in fields(stored) if n.lower() == "authentication-results"]
    return [h for h in parsed if h.authserv_id == HOSTNAME]


def result(header: authres.AuthenticationResultsHeader, method: str) -> list[str]:
    return [r.result for r in header.results if r.method == method]


def prop(header: authres.AuthenticationResultsHeader, method: str, name: str) -> list[str]:
    return [p.value for r in header.results if r.method == method for p in r.properties if p.name == name]


def junk(srv, addr: str = RCPT) -> list[bytes]:
    new = srv.maildir(addr) / ".Junk" / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def only_ar(stored: bytes) -> authres.AuthenticationResultsHeader:
    """Exactly one field of ours, placed right after tern's Received (the first field that is not trace)."""
    got = ours(stored)
    assert len(got) == 1, stored[:2000]
    _trace, rest = split_trace(stored)
    assert rest.startswith(f"Authentication-Results: {HOSTNAME};".encode()), stored[:800]
    return got[0]


# ---------------------------------------------------------------- delivered

def test_aligned_valid_signature_passes_everything_and_the_log_says_so(tern, dns):
    srv = start(tern, dns)
    msg = signed("signer.test")
    code, text = send(srv, "alice@signer.test", msg)
    assert code == 250, text
    stored = srv.wait_messages(RCPT)[0]
    ar = only_ar(stored)
    assert result(ar, "spf") == ["pass"], stored[:800]
    assert result(ar, "dkim") == ["pass"], stored[:800]
    assert result(ar, "dmarc") == ["pass"], stored[:800]
    assert prop(ar, "dkim", "d") == ["signer.test"], stored[:1200]
    assert prop(ar, "spf", "mailfrom") == ["alice@signer.test"]
    # The body arrived untouched, and the signature still verifies for whoever reads it next.
    assert stored.replace(b"\n", b"\r\n").endswith(msg.split(b"\r\n\r\n", 1)[1])
    assert wait_until(lambda: "spf=pass dkim=pass dmarc=pass arc=none" in srv.log(), 5), srv.log()
    assert not junk(srv)


def test_the_committed_fixture_verifies(tern, dns):
    srv = start(tern, dns)
    code, text = send(srv, "alice@signer.test", (FIXTURES / "dkimpy-signed.eml").read_bytes())
    assert code == 250, text
    ar = only_ar(srv.wait_messages(RCPT)[0])
    assert (result(ar, "dkim"), result(ar, "dmarc")) == (["pass"], ["pass"])


def test_a_forged_authentication_results_of_ours_is_removed_others_stay(tern, dns):
    srv = start(tern, dns)
    forged = (f"Authentication-Results: {HOSTNAME}; dkim=pass header.d=signer.test\r\n"
              f"Authentication-Results: (sneaky) {HOSTNAME.upper()}.;\r\n\tdmarc=pass\r\n"
              "Authentication-Results: elsewhere.test; spf=pass\r\n").encode()
    # Unaligned SPF and an unsigned message: dmarc must come out as fail however the forgery reads.
    msg = forged + message("quar.test", subject="forged")
    code, text = send(srv, "bounce@other.test", msg)
    assert code == 250, text
    stored = junk(srv)
    assert len(stored) == 1, "p=quarantine failure goes to .Junk/"
    ar = only_ar(stored[0])
    # Unsigned: dkim=none (RFC 8601 2.7.1), as the log line says.
    assert result(ar, "dkim") == ["none"]
    assert result(ar, "dmarc") == ["fail"]
    names = [(n.lower(), v.split(";")[0]) for n, v in fields(stored[0])]
    assert ("authentication-results", "elsewhere.test") in names, names
    assert b"(sneaky)" not in stored[0]


def test_a_large_spooled_signed_message_verifies_and_loses_the_forged_field(tern, dns):
    srv = start(tern, dns)
    body = b"".join(b"line %06d of the long report, padded to a sensible width\r\n" % i for i in range(3000))
    assert len(body) > 128 * 1024
    msg = signed("signer.test", body=body, subject="big one")
    msg = f"Authentication-Results: {HOSTNAME}; dmarc=pass\r\n".encode() + msg
    code, text = send(srv, "alice@signer.test", msg)
    assert code == 250, text
    stored = srv.wait_messages(RCPT)[0]
    ar = only_ar(stored)
    assert (result(ar, "dkim"), result(ar, "dmarc")) == (["pass"], ["pass"]), stored[:800]
    assert stored.replace(b"\n", b"\r\n").endswith(body)
    assert stored.count(b"Authentication-Results:") == 1


def test_arc_chain_sealed_by_dkimpy_passes(tern, dns):
    srv = start(tern, dns)
    original = signed("signer.test", subject="forwarded")
    # The forwarder's own verdict, then its ARC set over it (RFC 8617 5.1).
    hop = b"Authentication-Results: forwarder.test; dkim=pass header.d=signer.test\r\n" + original
    arc = dkim.arc_sign(hop, b"arc", b"forwarder.test", KEY.read_bytes(), b"forwarder.test")
    assert arc, "dkimpy made no ARC set"
    sealed = b"".join(arc) + hop
    code, text = send(srv, "list@forwarder.test", sealed)
    assert code == 250, text
    ar = only_ar(srv.wait_messages(RCPT)[0])
    assert result(ar, "arc") == ["pass"]
    assert wait_until(lambda: "arc=pass" in srv.log(), 5), srv.log()


# ---------------------------------------------------------------- DMARC policies

def altered(domain: str) -> bytes:
    return signed(domain).replace(b"The numbers are in.", b"The numbers are out.")


def test_body_altered_under_p_reject_is_refused_550_5_7_1(tern, dns):
    srv = start(tern, dns)
    code, text = send(srv, "bounce@other.test", altered("signer.test"))
    assert code == 550 and text.startswith("5.7.1 "), (code, text)
    assert "signer.test" in text
    srv.assert_nothing_delivered()
    assert not junk(srv)
    assert wait_until(lambda: "message refused by verification" in srv.log(), 5), srv.log()


def test_body_altered_under_p_reject_with_dmarc_reject_off_is_delivered_marked(tern, dns):
    srv = start(tern, dns, checks={"dmarc_reject": False})
    code, text = send(srv, "bounce@other.test", altered("signer.test"))
    assert code == 250, text
    # Not refused: treated as quarantine, so the local copy is in .Junk/.
    stored = junk(srv)
    assert len(stored) == 1 and not srv.messages(RCPT)
    ar = only_ar(stored[0])
    assert result(ar, "dmarc") == ["fail"]
    assert result(ar, "dkim") not in (["pass"], [])


def test_p_quarantine_failure_lands_in_junk(tern, dns):
    srv = start(tern, dns)
    code, text = send(srv, "bounce@other.test", altered("quar.test"))
    assert code == 250, text
    wait_until(lambda: junk(srv), 5)
    stored = junk(srv)
    assert len(stored) == 1, "one copy in .Junk/new"
    assert srv.messages(RCPT) == [], "nothing in the inbox"
    box = srv.maildir(RCPT) / ".Junk"
    assert all((box / d).is_dir() for d in ("tmp", "new", "cur"))
    assert (box / "maildirfolder").is_file()
    assert result(only_ar(stored[0]), "dmarc") == ["fail"]
    assert wait_until(lambda: "quarantined=true" in srv.log(), 5), srv.log()


def test_dns_failure_under_p_reject_is_451_and_a_failing_dmarc_lookup_is_delivered(tern, dns):
    srv = start(tern, dns)
    # p=reject is known but the DKIM key lookup fails (SERVFAIL), and SPF is not aligned: DMARC cannot decide.
    code, text = send(srv, "bounce@other.test", signed("tempfail.test"))
    assert (code, text.split()[0]) == (451, "4.7.1"), (code, text)
    srv.assert_nothing_delivered(settle=0.2)
    # The DMARC record itself fails (SERVFAIL): no policy is known, so the message is delivered marked temperror.
    code, text = send(srv, "bounce@other.test", altered("dnsfail.test"))
    assert code == 250, text
    assert result(only_ar(srv.wait_messages(RCPT)[0]), "dmarc") == ["temperror"]


# ---------------------------------------------------------------- SPF at MAIL FROM

def test_spf_fail_with_spf_fail_reject_is_550_5_7_23_at_mail(tern, dns):
    srv = start(tern, dns, checks={"spf_fail_reject": True})
    code, text = send(srv, "someone@fail.test", message("fail.test"))
    assert (code, text.split()[0]) == (550, "5.7.23"), (code, text)
    # A passing sender in the same setup goes through, with the result of MAIL FROM in the header.
    code, text = send(srv, "alice@signer.test", signed("signer.test"))
    assert code == 250, text
    ar = only_ar(srv.wait_messages(RCPT)[0])
    assert result(ar, "spf") == ["pass"]


def test_spf_fail_without_spf_fail_reject_is_only_marked(tern, dns):
    srv = start(tern, dns)
    code, text = send(srv, "someone@fail.test", message("other.test"))
    assert code == 250, text
    ar = only_ar(srv.wait_messages(RCPT)[0])
    assert result(ar, "spf") == ["fail"]


# ---------------------------------------------------------------- not checked

def test_submission_and_trusted_mail_is_not_checked(tern, dns, tmp_path):
    ports = Ports()
    srv = start(tern, dns, **tls_config(tmp_path, ports))
    msg = altered("signer.test")  # would be refused on port 25
    with Client(ports.submission, source=OUTSIDE) as c:
        c.start()
        c.starttls()
        c.ehlo()
        code, text = c.auth_plain(ALICE, ALICE_PW)
        assert code == 235, text
        c.expect(f"MAIL FROM:<{ALICE}>", 250)
        c.expect(f"RCPT TO:<{BOB}>", 250)
        c.expect("DATA", 354)
        c.send(msg + b".\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
    stored = srv.wait_messages(BOB)[0]
    assert b"Authentication-Results" not in stored
    # From the trusted address on port 25: not checked either.
    code, text = send(srv, "bounce@other.test", msg, rcpt=ALICE, source="127.0.0.1")
    assert code == 250, text
    assert b"Authentication-Results" not in srv.wait_messages(ALICE)[0]
    assert wait_until(lambda: "spf=- dkim=- dmarc=- arc=-" in srv.log(), 5), srv.log()
