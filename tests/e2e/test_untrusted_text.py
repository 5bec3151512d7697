"""Text that comes from outside never acts on the administrator's terminal or on a header (issue 10):
`tern queue list/show` escape control characters from remote headers and replies, and `tern sendmail -F`
cannot inject header fields (CR/LF dropped, non-ASCII names RFC 2047-encoded)."""

from __future__ import annotations

import email
import email.header
import email.policy

from relay_helpers import Remote, relay_config, route_to, tern_queue, wait_state
from send_helpers.run import err, tern_send
from ternlib import split_trace

ESC_SUBJECT = "Subject: \x1b]0;owned\x07\x1b[2Jhi\u202eevil"


def test_queue_show_and_list_escape_control_characters(tern):
    with Remote() as remote:
        # The remote answers with a reply holding an escape sequence (a bare ESC in the text).
        remote.script.default["rcpt"] = "451 4.7.1 try \x1b[31mlater\x1b[0m"
        srv = tern(**relay_config(routes={"remote.test": route_to(remote.port)}))
        message = (ESC_SUBJECT + "\r\nFrom: <a@example.test>\r\n\r\nbody\r\n").encode()
        qid = srv.deliver("a@example.test", "bob@remote.test", message)
        wait_state(srv, qid, "bob@remote.test", "deferred")
        for args in (["show", qid], ["list"]):
            r = tern_queue(srv, *args)
            assert r.returncode == 0, r.stderr
            out = r.stdout.decode()
            assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, repr(out)
            assert "\\x1b" in out, f"the escapes are shown, not dropped: {out!r}"
        shown = tern_queue(srv, "show", qid).stdout.decode()
        assert "\\x1b]0;owned\\x07\\x1b[2Jhi\\u{202e}evil" in shown, shown
        # JSON keeps the exact text (JSON escapes it itself).
        js = tern_queue(srv, "show", qid, "--json").stdout.decode()
        assert "\\u001b" in js and "\x1b" not in js, js


def sendmail(srv, *args: str, stdin: bytes):
    return tern_send(*args, sub="sendmail", stdin=stdin,
                     env={"TERN_CONFIG": str(srv.config_path), "USER": "alice", "LOGNAME": "alice"})


def test_sendmail_full_name_cannot_inject_header_fields(srv):
    r = sendmail(srv, "-F", "Evil\r\nBcc: victim@tern.test\r\nX-Injected: 1", "-f", "alice@tern.test",
                 "bob@tern.test", stdin=b"Subject: injection\n\nbody\n")
    assert r.returncode == 0, err(r) + srv.log()
    [stored] = srv.wait_messages("bob@tern.test")
    _, message = split_trace(stored)
    msg = email.message_from_bytes(message, policy=email.policy.default)
    assert msg["Bcc"] is None and msg["X-Injected"] is None, message
    assert str(msg["From"]) == '"EvilBcc: victim@tern.testX-Injected: 1" <alice@tern.test>', msg["From"]
    assert srv.messages("victim@tern.test") == []


def test_sendmail_full_name_in_unicode_is_rfc2047_encoded(srv):
    name = "Jörg Müller, Straße " + "é" * 40
    r = sendmail(srv, "-F", name, "-f", "alice@tern.test", "bob@tern.test", stdin=b"Subject: utf8\n\nbody\n")
    assert r.returncode == 0, err(r) + srv.log()
    [stored] = srv.wait_messages("bob@tern.test")
    _, message = split_trace(stored)
    raw_from = [line for line in message.split(b"\n") if line.lower().startswith(b"from:")][0]
    assert raw_from.isascii() and b"=?UTF-8?B?" in raw_from, raw_from
    # Python's RFC 2047 decoder is the oracle (adjacent encoded-words join without the space
    # between them, RFC 2047 6.2).
    value = raw_from.split(b":", 1)[1].strip().decode()
    decoded = str(email.header.make_header(email.header.decode_header(value)))
    assert decoded == f"{name} <alice@tern.test>", decoded
