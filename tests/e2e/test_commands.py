"""Commands whose effect shows on disk, checked against a running `tern serve` over a raw socket. The replies
themselves (every row of docs/smtp-replies.md a client can reach without TLS) are checked by the transcripts in
testdata/transcripts, which tests/e2e/test_transcripts.py runs against the binary."""

from __future__ import annotations

import pytest


def test_postmaster_accepted_without_catch_all(tern):
    """RFC 5321 4.5.1: postmaster@<local domain> is always accepted (docs/configuration.md, catch_all)."""
    srv = tern(users=[{"name": "alice@tern.test"}], local={"catch_all": False})
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<postmaster@tern.test>", 250, "2.1.5")
        c.expect("RCPT TO:<PostMaster@TERN.test>", 250, "2.1.5")
        c.expect("RCPT TO:<random@tern.test>", 550, "5.1.1")
        c.expect("DATA", 354)
        c.send(b"Subject: pm\r\n\r\nhi\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
    assert len(srv.wait_messages("postmaster@tern.test")) == 1


@pytest.mark.parametrize("rcpt", ["<postmaster>", "<Postmaster>", "<POSTMASTER>"])
def test_rcpt_bare_postmaster(srv, rcpt):
    """RFC 5321 4.1.1.3: <postmaster> without a domain must be accepted."""
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect(f"RCPT TO:{rcpt}", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: to postmaster\r\n\r\nhi\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
    files = [f for f in srv.delivered_files() if f.parent.parent.name == "postmaster"]
    assert len(files) == 1, srv.delivered_files()


def test_data_and_end_of_data(srv):
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        text = c.expect("DATA", 354)
        assert text == "End data with <CR><LF>.<CR><LF>"
        c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 250
        assert lines[0].startswith("2.0.0 OK: queued as "), lines
        qid = lines[0].split()[-1]
        assert qid and qid != "as"
    assert len(srv.wait_messages("alice@tern.test")) == 1


@pytest.mark.parametrize(
    "mail, rcpt, data, rset, noop, quit",
    [
        ("mail from:", "rcpt to:", "data", "rset", "noop", "quit"),
        ("Mail From:", "Rcpt To:", "Data", "Rset", "Noop", "Quit"),
        ("mAiL fRoM:", "RcPt tO:", "dAtA", "rSeT", "nOoP", "qUiT"),
    ],
)
def test_verbs_case_insensitive(srv, mail, rcpt, data, rset, noop, quit):
    with srv.raw() as c:
        c.greet()
        c.expect("eHlO client.test", 250)
        c.expect(f"{noop}", 250, "2.0.0")
        c.expect(f"{mail}<a@example.test>", 250, "2.1.0")
        c.expect(f"{rcpt}<alice@tern.test>", 250, "2.1.5")
        c.expect(f"{rset}", 250, "2.0.0")
        c.expect(f"{mail}<a@example.test>", 250, "2.1.0")
        c.expect(f"{rcpt}<alice@tern.test>", 250, "2.1.5")
        c.expect(f"{data}", 354)
        c.send(b"Subject: case\r\n\r\nx\r\n.\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
        c.expect(f"{quit}", 221, "2.0.0")
    assert len(srv.wait_messages("alice@tern.test")) == 1
