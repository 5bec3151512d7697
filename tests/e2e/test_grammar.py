"""RFC 5321 address grammar end to end, where the result shows in the Maildir: quoted local parts and source
routes. Address literals, malformed routes and ESMTP parameters are transcripts (testdata/transcripts)."""

from __future__ import annotations

import os

import pytest

from ternlib import header, split_trace


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
