"""Every row of docs/smtp-replies.md, checked against a running `tern serve` over a raw socket."""

from __future__ import annotations

import pytest

from ternlib import ENHANCED, HOSTNAME


def test_greeting(srv):
    with srv.raw() as c:
        code, lines = c.read_reply()
        assert code == 220
        assert lines == [f"{HOSTNAME} ESMTP tern"]


def test_helo(srv):
    with srv.raw() as c:
        c.greet()
        code, text = c.cmd("HELO client.test")
        assert code == 250
        # RFC 2034 3: HELO/EHLO replies carry no enhanced code.
        assert text.split()[0] == HOSTNAME, text


def test_ehlo_capabilities(tern):
    srv = tern(limits={"max_message_size": 123456})
    with srv.raw() as c:
        c.greet()
        c.send(b"EHLO client.test\r\n")
        code, lines = c.read_reply()
        assert code == 250
        assert lines[0] == f"{HOSTNAME} Hello client.test"
        caps = [line.upper() for line in lines[1:]]
        for cap in ("PIPELINING", "SIZE 123456", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "HELP"):
            assert cap in caps, f"{cap} not advertised in {lines}"
        # No TLS configured: STARTTLS must not be offered (RFC 3207 4: only if the server can do it).
        assert "STARTTLS" not in caps


@pytest.mark.parametrize("verb", ["HELO", "EHLO", "helo", "ehlo"])
def test_helo_without_name(srv, verb):
    with srv.raw() as c:
        c.greet()
        code, text = c.cmd(verb)
        assert code == 501
        assert text.startswith("5.5.4 "), text


def test_ehlo_twice_resets_nothing_bad(srv):
    """A second EHLO is allowed and resets the transaction (RFC 5321 4.1.4)."""
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.ehlo("again.test")
        c.expect("RCPT TO:<alice@tern.test>", 503, "5.5.1")


def test_mail_before_helo(srv):
    with srv.raw() as c:
        c.greet()
        text = c.expect("MAIL FROM:<a@example.test>", 503, "5.5.1")
        assert "HELO/EHLO" in text


@pytest.mark.parametrize("path", ["<a@example.test>", "<>", "<alice@tern.test>"])
def test_mail_ok(srv, path):
    with srv.session() as c:
        text = c.expect(f"MAIL FROM:{path}", 250, "2.1.0")
        assert "Sender OK" in text


def test_mail_inside_transaction(srv):
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        text = c.expect("MAIL FROM:<b@example.test>", 503, "5.5.1")
        assert "already" in text.lower()


MALFORMED = [
    "<a@>",
    "<@tern.test>",
    "<a@b..test>",
    "<a..b@tern.test>",
    "<.a@tern.test>",
    "<a b@tern.test>",
    '<"unterminated@tern.test>',
    "<a@-bad.test>",
    "<a@@tern.test>",
    "<<a@tern.test>>",
]


@pytest.mark.parametrize("path", MALFORMED)
def test_mail_malformed_path(srv, path):
    with srv.session() as c:
        c.expect(f"MAIL FROM:{path}", 501, "5.1.7")
        # The session goes on.
        c.expect("MAIL FROM:<ok@example.test>", 250, "2.1.0")


@pytest.mark.parametrize("path", MALFORMED + ["<>"])
def test_rcpt_malformed_path(srv, path):
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect(f"RCPT TO:{path}", 501, "5.1.3")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")


@pytest.mark.parametrize(
    "params",
    ["FOO=1", "BODY=BINARYMIME", "RET=FULL", "ENVID=abc", "AUTH=<>", "X-NOPE"],
)
def test_mail_unknown_parameter(srv, params):
    with srv.session() as c:
        c.expect(f"MAIL FROM:<a@example.test> {params}", 555, "5.5.4")


@pytest.mark.parametrize("params", ["NOTIFY=NEVER", "ORCPT=rfc822;alice@tern.test", "FOO=1"])
def test_rcpt_unknown_parameter(srv, params):
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect(f"RCPT TO:<alice@tern.test> {params}", 555, "5.5.4")


@pytest.mark.parametrize("params", ["SIZE=abc", "SIZE=-1", "SIZE=", "BODY=", "BODY=9BIT"])
def test_mail_malformed_parameter_value(srv, params):
    with srv.session() as c:
        code, text = c.cmd(f"MAIL FROM:<a@example.test> {params}")
        # BODY= with an unknown value may be treated as an unsupported parameter instead.
        if params.startswith("BODY"):
            assert code in (501, 555), (code, text)
        else:
            assert code == 501, (code, text)
        assert text.startswith("5.5.4 "), text


def test_mail_size_above_limit(tern):
    srv = tern(limits={"max_message_size": 10000})
    with srv.session() as c:
        text = c.expect("MAIL FROM:<a@example.test> SIZE=10001", 552, "5.3.4")
        assert "size" in text.lower()
        c.expect("MAIL FROM:<a@example.test> SIZE=10000", 250, "2.1.0")


@pytest.mark.parametrize("size", ["99999999999999999999999999", "18446744073709551616"])
def test_mail_size_overflow(srv, size):
    """A SIZE too large for any integer type is refused (as too big or as malformed), never a crash."""
    with srv.session() as c:
        code, text = c.cmd(f"MAIL FROM:<a@example.test> SIZE={size}")
        assert code in (501, 552), (code, text)
        c.expect("NOOP", 250, "2.0.0")


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


def test_non_ascii_without_smtputf8(srv):
    with srv.session() as c:
        c.expect("MAIL FROM:<jösé@example.test>".encode(), 553, "5.6.7")
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<jösé@tern.test>".encode(), 553, "5.6.7")


def test_rcpt_before_mail(srv):
    with srv.session() as c:
        text = c.expect("RCPT TO:<alice@tern.test>", 503, "5.5.1")
        assert "MAIL" in text


def test_rcpt_accepted(srv):
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        text = c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        assert "Recipient OK" in text


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


def test_rcpt_unknown_local_user(tern):
    srv = tern(users=[{"name": "alice@tern.test"}], local={"catch_all": False})
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        text = c.expect("RCPT TO:<nobody@tern.test>", 550, "5.1.1")
        assert "<nobody@tern.test>: Recipient address rejected: no such user" in text
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")


def test_relay_denied_for_untrusted(tern):
    srv = tern(relay={"trusted_networks": ["10.99.0.0/16"]})
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        text = c.expect("RCPT TO:<bob@elsewhere.test>", 550, "5.7.1")
        assert "<bob@elsewhere.test>: Relay access denied" in text
        # Local delivery is still open to everyone.
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")


def test_relay_allowed_for_loopback_by_default(srv):
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@elsewhere.test>", 250, "2.1.5")
        c.expect("RSET", 250, "2.0.0")


def test_data_without_rcpt(srv):
    with srv.session() as c:
        c.expect("DATA", 503, "5.5.1")
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        text = c.expect("DATA", 503, "5.5.1")
        assert "RCPT" in text


def test_data_all_recipients_rejected(tern):
    srv = tern(relay={"trusted_networks": ["10.99.0.0/16"]})
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@elsewhere.test>", 550, "5.7.1")
        text = c.expect("DATA", 554, "5.5.1")
        assert "No valid recipients" in text
    srv.assert_nothing_delivered(settle=0.3)


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


def test_rset(srv):
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")
        text = c.expect("RSET", 250, "2.0.0")
        assert text == "2.0.0 OK"
        # The transaction is gone: RCPT needs a new MAIL, and a new MAIL is allowed.
        c.expect("RCPT TO:<alice@tern.test>", 503, "5.5.1")
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")


def test_rset_before_helo(srv):
    with srv.raw() as c:
        c.greet()
        c.expect("RSET", 250, "2.0.0")
        c.expect("NOOP", 250, "2.0.0")


def test_noop(srv):
    with srv.session() as c:
        assert c.expect("NOOP", 250, "2.0.0") == "2.0.0 OK"
        # RFC 5321 4.1.1.9: NOOP may carry a string, which is ignored.
        c.expect("NOOP hello there", 250, "2.0.0")


def test_quit(srv):
    with srv.session() as c:
        text = c.expect("QUIT", 221, "2.0.0")
        assert text == f"2.0.0 {HOSTNAME} closing connection"
        assert c.wait_closed() == b""


def test_vrfy_default(srv):
    with srv.session() as c:
        text = c.expect("VRFY alice", 252, "2.5.0")
        assert "Cannot VRFY user" in text


def test_vrfy_enabled(tern):
    srv = tern(local={"vrfy": True, "catch_all": False}, users=[{"name": "alice@tern.test"}])
    with srv.session() as c:
        text = c.expect("VRFY alice", 250, "2.1.5")
        assert "<alice@tern.test>" in text
        c.expect("VRFY nobody", 550, "5.1.1")


def test_expn_default(srv):
    with srv.session() as c:
        text = c.expect("EXPN staff", 502, "5.5.1")
        assert "EXPN is disabled" in text


def test_expn_enabled(tern):
    srv = tern(
        local={"expn": True},
        aliases={"staff@tern.test": ["alice@tern.test", "bob@tern.test"]},
    )
    with srv.session() as c:
        c.send(b"EXPN staff@tern.test\r\n")
        code, lines = c.read_reply()
        assert code == 250
        assert len(lines) == 2, lines
        assert "alice@tern.test" in lines[0] and "bob@tern.test" in lines[1], lines
        c.expect("EXPN nothing@tern.test", 550, "5.1.1")


def test_help(srv):
    with srv.session() as c:
        c.send(b"HELP\r\n")
        code, lines = c.read_reply()
        assert code == 214
        assert len(lines) > 1, lines
        listing = " ".join(lines).upper()
        for verb in ("HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "HELP"):
            assert verb in listing, (verb, lines)


def test_help_mail(srv):
    with srv.session() as c:
        text = c.expect("HELP MAIL", 214, "2.0.0")
        # docs/smtp-replies.md quotes the full HELP MAIL text.
        assert text.startswith("2.0.0 MAIL FROM:<address> [SIZE=n] [BODY="), text
        assert "8BITMIME" in text and "[SMTPUTF8]" in text, text


@pytest.mark.parametrize(
    "verb", ["HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP"]
)
@pytest.mark.parametrize("case", [str.upper, str.lower])
def test_help_per_command(srv, verb, case):
    with srv.session() as c:
        text = c.expect(f"HELP {case(verb)}", 214, "2.0.0")
        assert verb in text.upper(), text


def test_help_unknown(srv):
    with srv.session() as c:
        text = c.expect("HELP FROBNICATE", 504, "5.5.1")
        assert "HELP topic unknown" in text


@pytest.mark.parametrize("verb", ["SEND", "SOML", "SAML"])
def test_obsolete_verbs(srv, verb):
    with srv.session() as c:
        text = c.expect(f"{verb} FROM:<a@example.test>", 502, "5.5.1")
        assert "obsolete" in text, text


def test_turn(srv):
    with srv.session() as c:
        text = c.expect("TURN", 502, "5.5.1")
        assert "TURN is not supported" in text


@pytest.mark.parametrize("line", ["FROB", "XYZZY now", "MAILFROM:<a@b.test>", "HELLO x"])
def test_unknown_verb(srv, line):
    with srv.session() as c:
        text = c.expect(line, 500, "5.5.1")
        assert "Command unrecognized" in text
        c.expect("NOOP", 250, "2.0.0")


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


def test_bare_lf_command_lines_tolerated(srv):
    """docs/smtp-replies.md: a bare LF is tolerated on command lines (never inside DATA)."""
    with srv.raw() as c:
        c.greet()
        c.send(b"EHLO client.test\n")
        code, _ = c.read_reply()
        assert code == 250
        c.send(b"NOOP\n")
        assert c.read_reply()[0] == 250


def test_every_reply_has_enhanced_code(tern):
    """RFC 2034: once ENHANCEDSTATUSCODES is advertised, every 2xx/4xx/5xx reply line carries one
    (except the greeting and HELO/EHLO)."""
    srv = tern(relay={"trusted_networks": ["10.99.0.0/16"]})
    script = [
        "NOOP", "RSET", "VRFY x", "EXPN x", "HELP", "HELP MAIL", "HELP nope", "FROB", "TURN", "SEND x",
        "RCPT TO:<alice@tern.test>", "DATA", "MAIL FROM:<a@>", "MAIL FROM:<a@example.test> FOO=1",
        "MAIL FROM:<a@example.test>", "MAIL FROM:<a@example.test>", "RCPT TO:<>", "RCPT TO:<x@elsewhere.test>",
        "DATA", "RCPT TO:<alice@tern.test>", "QUIT",
    ]
    with srv.session() as c:
        for line in script:
            c.send(line.encode() + b"\r\n")
            code, lines = c.read_reply()
            if code == 354:
                continue
            for text in lines:
                assert ENHANCED.match(text), f"{line!r} -> {code} {text!r} lacks an enhanced status code"
