"""tern with a real OpenDKIM (2.11, signing mode; milter_peers.OpenDKIMMilter) as a submission-only milter
(`apply_to = ["submission"]`): mail an authenticated user submits is relayed to the `remote` sink with OpenDKIM's
DKIM-Signature, which dkimpy verifies against the record opendkim-genkey made; port 25 mail is not signed.

What OpenDKIM does over the milter protocol, observed here: it answers OPTNEG with actions 0x111 (ADDHDRS CHGHDRS
SETSYMLIST) and protocol 0x00100702 (NOHELO NOUNKNOWN NODATA SKIP, and HDR_LEADSPC if offered); it replies
`continue` to every step, and at EOM inserts `DKIM-Signature` at index 0 (the very top, above tern's Received)
with a value folded by bare "\\n\\t", then SMFIR_ACCEPT. Mail whose From: domain it does not sign gets
SMFIR_ACCEPT already at EOH.
"""

from __future__ import annotations

import re

import dkim
import pytest

from milter_peers import opendkim_milter  # noqa: F401  (fixture)
from milter_peers import crlf, milter_cfg, parse, send_mail, start
from relay_helpers import Remote, relay_config, route_to
from sec_helpers import ALICE, ALICE_PW, Client, Ports, tls_config

pytestmark = pytest.mark.timeout(120)

RCPT = "bob@remote.test"


def signed_message(domain: str, subject: str) -> bytes:
    return (f"From: Alice <alice@{domain}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n"
            f"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@{domain}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            "Hello Bob,\r\n\r\nthis one is signed by OpenDKIM through tern.\r\n.a line with a leading dot\r\n").encode()


def submit(port: int, msg: bytes) -> tuple[int, str]:
    """STARTTLS, AUTH PLAIN as alice, then one transaction to RCPT; the reply to the final dot."""
    c = Client(port)
    c.start()
    c.starttls()
    c.ehlo()
    code, text = c.auth_plain(ALICE, ALICE_PW)
    assert code == 235, text
    s = send_mail(port, msg, rcpts=(RCPT,), sender=ALICE, client=c)
    assert s.dot is not None, s
    return s.dot


def signatures(content: bytes) -> list[str]:
    return [v for n, v in parse(content)[0] if n.lower() == "dkim-signature"]


def tag(sig: str, name: str) -> str:
    m = re.search(rf"(?:^|;)\s*{name}=([^;]*)", sig)
    assert m, f"no {name}= in {sig}"
    return re.sub(r"\s", "", m.group(1))


def test_submitted_mail_is_signed_by_opendkim_and_dkimpy_verifies(tern, tmp_path, opendkim_milter):
    odk = opendkim_milter
    ports = Ports()
    with Remote() as remote:
        cfg = tls_config(tmp_path, ports, **relay_config(routes={"remote.test": route_to(remote.port)}))
        srv = start(tern, milter_cfg(odk.address, name="opendkim", timeout="30s", apply_to=["submission"]), **cfg)
        code, text = submit(ports.submission, signed_message(odk.domain, "signed by opendkim"))
        assert code == 250, f"{code} {text}\n{odk.log()}\n{srv.log()[-3000:]}"
        got = remote.wait_messages(1, srv=srv)[0].content

        # Port 25 (trusted loopback client, relayed): the submission-only milter is not consulted.
        s25 = send_mail(srv.port, signed_message(odk.domain, "not through opendkim"), rcpts=(RCPT,), sender=ALICE)
        assert s25.dot and s25.dot[0] == 250, s25
        unsigned = remote.wait_messages(2, srv=srv)[1].content

    sigs = signatures(got)
    assert len(sigs) == 1, f"one DKIM-Signature expected: {parse(got)[0]}"
    assert tag(sigs[0], "d") == odk.domain and tag(sigs[0], "s") == odk.selector, sigs[0]
    names = [n.lower() for n, _ in parse(got)[0]]
    assert names[0] == "dkim-signature", f"OpenDKIM inserts at index 0 (the top): {names}"
    message = crlf(got)
    assert dkim.verify(message, dnsfunc=odk.dnsfunc()), f"dkimpy rejects OpenDKIM's signature:\n{message[:1500]!r}"
    # The oracle can fail: a changed body or Subject does not verify.
    assert not dkim.verify(message.replace(b"Hello Bob", b"Hello Rob"), dnsfunc=odk.dnsfunc())
    assert not dkim.verify(message.replace(b"Subject: signed", b"Subject: forged"), dnsfunc=odk.dnsfunc())

    assert signatures(unsigned) == [], "port 25 mail went through the submission-only milter"
