"""RFC 5321 address grammar end to end: quoted local parts, address literals, source routes, ESMTP parameters."""

from __future__ import annotations

import os

import pytest

from ternlib import header, split_trace

UNTRUSTED = {"relay": {"trusted_networks": ["10.99.0.0/16"]}}


def one_transaction(c, mail: str, rcpt: str, body: bytes = b"Subject: grammar\r\n\r\nhello\r\n") -> tuple[int, str]:
    c.expect(f"MAIL FROM:{mail}", 250, "2.1.0")
    c.expect(f"RCPT TO:{rcpt}", 250, "2.1.5")
    c.expect("DATA", 354)
    c.send(body + b".\r\n")
    code, lines = c.read_reply()
    return code, "\n".join(lines)


def only_delivery(srv):
    files = srv.delivered_files()
    assert len(files) == 1, f"expected exactly one delivered file, got {files}"
    return files[0], files[0].read_bytes()


# ---------------------------------------------------------------- quoted local parts


@pytest.mark.parametrize(
    "rcpt, delivered_to",
    [
        ('"john doe"@tern.test', '"john doe"@tern.test'),
        ('"a\\"b"@tern.test', '"a\\"b"@tern.test'),
        ('"a@b"@tern.test', '"a@b"@tern.test'),
    ],
)
def test_quoted_local_part_recipient(srv, rcpt, delivered_to):
    with srv.session() as c:
        code, text = one_transaction(c, "<a@example.test>", f"<{rcpt}>")
        assert code == 250, text
    path, content = only_delivery(srv)
    assert path.parent.parent.parent.name == "tern.test", path
    trace, _ = split_trace(content)
    assert header(trace, "Delivered-To") == [delivered_to]


def test_quoted_simple_local_part_is_same_mailbox(srv):
    """RFC 5321 4.1.2: "alice"@d and alice@d are the same mailbox."""
    with srv.session() as c:
        code, text = one_transaction(c, "<a@example.test>", '<"alice"@tern.test>')
        assert code == 250, text
    assert len(srv.wait_messages("alice@tern.test")) == 1


def test_quoted_local_part_sender(srv):
    with srv.session() as c:
        code, text = one_transaction(c, '<"odd sender"@example.test>', "<alice@tern.test>")
        assert code == 250, text
    [content] = srv.wait_messages("alice@tern.test")
    trace, _ = split_trace(content)
    assert header(trace, "Return-Path") == ['<"odd sender"@example.test>']


@pytest.mark.parametrize(
    "local", ['"../../../escape"', '"../escape"', '"a/../../escape"', '"/tmp/escape"', '".."', '"."', '"escape\\\\x"']
)
def test_quoted_local_part_cannot_escape_mailboxes(srv, local):
    """A quoted local part may contain '/' and '..': it must never name a path outside its domain folder."""
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        code, text = c.cmd(f"RCPT TO:<{local}@tern.test>")
        if code == 250:
            c.expect("DATA", 354)
            c.send(b"Subject: escape\r\n\r\nhello\r\n.\r\n")
            code, lines = c.read_reply()
            assert code in (250, 451, 550, 553, 554), lines
        else:
            assert 500 <= code < 600, (code, text)
    domain_dir = (srv.data_dir / "mailboxes" / "tern.test").resolve()
    for dirpath, dirs, files in os.walk(srv.root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            if "escape" in name or (name in ("new", "cur", "tmp") and "mailboxes" not in p and "queue" not in p):
                real = os.path.realpath(p)
                assert real.startswith(str(domain_dir) + os.sep), f"{p} is outside {domain_dir}"
    for f in srv.delivered_files():
        assert str(f.resolve()).startswith(str(domain_dir) + os.sep), f
        # Every delivered file sits at mailboxes/tern.test/<one folder>/new/<file>.
        assert f.resolve().parent.parent.parent == domain_dir, f
    assert not os.path.exists("/tmp/escape") or os.path.getmtime("/tmp/escape") < srv.config_path.stat().st_mtime


# ---------------------------------------------------------------- address literals


@pytest.mark.parametrize("literal", ["[192.0.2.1]", "[IPv6:2001:db8::1]", "[IPv6:::1]", "[127.0.0.1]"])
def test_address_literal_sender(srv, literal):
    with srv.session() as c:
        c.expect(f"MAIL FROM:<user@{literal}>", 250, "2.1.0")


@pytest.mark.parametrize(
    "literal", ["[192.0.2.256]", "[192.0.2]", "[IPv6:zz::1]", "[IPv6:2001:db8::1::2]", "[192.0.2.1", "[]"]
)
def test_malformed_address_literal(srv, literal):
    with srv.session() as c:
        c.expect(f"MAIL FROM:<user@{literal}>", 501, "5.1.7")
        c.expect("MAIL FROM:<user@example.test>", 250, "2.1.0")
        c.expect(f"RCPT TO:<user@{literal}>", 501, "5.1.3")


@pytest.mark.parametrize("literal", ["[192.0.2.1]", "[IPv6:2001:db8::1]"])
def test_foreign_address_literal_untrusted_is_relay(tern, literal):
    """Only a domain in local.domains is local: a literal that is not listed is relaying."""
    srv = tern(**UNTRUSTED)
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        text = c.expect(f"RCPT TO:<user@{literal}>", 550, "5.7.1")
        assert "Relay access denied" in text


@pytest.mark.parametrize("literal", ["[192.0.2.1]", "[IPv6:2001:db8::1]"])
def test_foreign_address_literal_trusted_accepted(srv, literal):
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect(f"RCPT TO:<user@{literal}>", 250, "2.1.5")
        c.expect("RSET", 250, "2.0.0")


# ---------------------------------------------------------------- source routes (RFC 5321 4.1.1.3, C)


@pytest.mark.parametrize("route", ["@a.test,@b.test:", "@a.test:", "@[192.0.2.1],@b.test:"])
def test_source_route_recipient_delivered(srv, route):
    """RFC 5321 3.3 / C: a source route is accepted and ignored; delivery goes to the mailbox."""
    with srv.session() as c:
        code, text = one_transaction(c, "<a@example.test>", f"<{route}user@tern.test>")
        assert code == 250, text
    [content] = srv.wait_messages("user@tern.test")
    trace, _ = split_trace(content)
    assert header(trace, "Delivered-To") == ["user@tern.test"]
    assert len(srv.delivered_files()) == 1


def test_source_route_sender(srv):
    with srv.session() as c:
        code, text = one_transaction(c, "<@relay.test:sender@example.test>", "<alice@tern.test>")
        assert code == 250, text
    [content] = srv.wait_messages("alice@tern.test")
    trace, _ = split_trace(content)
    [rp] = header(trace, "Return-Path")
    assert rp.endswith("sender@example.test>"), rp


@pytest.mark.parametrize("route", ["@a.test,b.test:", "@:", "@a.test", "@a.test,@:"])
def test_malformed_source_route(srv, route):
    with srv.session() as c:
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.expect(f"RCPT TO:<{route}user@tern.test>", 501, "5.1.3")


# ---------------------------------------------------------------- ESMTP parameters


@pytest.mark.parametrize(
    "params",
    [
        "SIZE=100",
        "SIZE=0",
        "BODY=8BITMIME",
        "BODY=7BIT",
        "SMTPUTF8",
        "SIZE=100 BODY=8BITMIME SMTPUTF8",
        "size=100 body=8bitmime smtputf8",
        "BODY=8bitmime",
    ],
)
def test_mail_parameters_accepted(srv, params):
    with srv.session() as c:
        c.expect(f"MAIL FROM:<a@example.test> {params}", 250, "2.1.0")
        c.expect("RCPT TO:<alice@tern.test>", 250, "2.1.5")


def test_duplicate_parameter_rejected(srv):
    """RFC 5321 4.1.2 / 3.3: each parameter at most once."""
    with srv.session() as c:
        code, text = c.cmd("MAIL FROM:<a@example.test> SIZE=10 SIZE=20")
        assert code in (501, 555), (code, text)
        assert text.startswith("5.5.4 "), text


def test_null_sender_with_parameters(srv):
    with srv.session() as c:
        c.expect("MAIL FROM:<> SIZE=100 BODY=8BITMIME", 250, "2.1.0")
