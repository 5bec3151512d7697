"""`tern send` against a server someone else wrote (aiosmtpd): envelope, byte-identical attachments,
exit codes for 550/452/421/silence, per-recipient outcomes, STARTTLS, AUTH, bad input."""

from __future__ import annotations

import email
import os
import time
from email import policy

import pytest

from send_helpers.run import err, tern_send
from send_helpers.sink import SilentServer, Sink, self_signed

FROM = "sender@example.test"


def server_args(sink, *extra: str) -> list[str]:
    return ["--server", f"127.0.0.1:{sink.port}", "--tls", "none", "--from", FROM, *extra]


@pytest.fixture
def files(tmp_path):
    all256 = tmp_path / "all256.bin"
    all256.write_bytes(bytes(range(256)) * 3)
    utf8_named = tmp_path / "résumé ü.pdf"
    utf8_named.write_bytes(b"%PDF-1.4\n" + os.urandom(5000))
    big = tmp_path / "big.dat"
    big.write_bytes(os.urandom(10 * 1024 * 1024))
    text = tmp_path / "notes.txt"
    text.write_bytes(b"line one\n.starts with a dot\nno final newline")
    body = tmp_path / "body.txt"
    body.write_text("Hello Bob,\n.\nthe files you asked for. Grüße\n", encoding="utf-8")
    return {"all256": all256, "utf8": utf8_named, "big": big, "text": text, "body": body}


def parse(content: bytes):
    return email.message_from_bytes(content, policy=policy.default)


def test_text_plus_attachments_arrive_byte_identical(files):
    with Sink() as sink:
        r = tern_send(*server_args(sink, "--to", "bob@example.test", "--cc", "carol@example.test",
                                   "--bcc", "dave@example.test", "--subject", "the files",
                                   "--body-file", str(files["body"]),
                                   "--attach", str(files["all256"]), "--attach", str(files["utf8"]),
                                   "--attach", str(files["big"]), "--attach", str(files["text"]),
                                   "--header", "X-Tern-Test: yes"))
        assert r.returncode == 0, err(r)
        assert len(sink.messages) == 1
        m = sink.messages[0]
    assert m.mail_from == FROM
    assert m.rcpt_tos == ["bob@example.test", "carol@example.test", "dave@example.test"]
    msg = parse(m.content)
    assert "dave@example.test" not in m.content.decode("latin-1"), "Bcc leaked into the message"
    assert msg["Bcc"] is None
    assert msg["To"] == "bob@example.test" or "bob@example.test" in str(msg["To"])
    assert msg["Subject"] == "the files"
    assert msg["X-Tern-Test"] == "yes"
    for name in ("Date", "Message-ID", "MIME-Version"):
        assert msg[name], f"missing {name}"
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_parts())
    assert parts[0].get_content_type() == "text/plain"
    assert parts[0].get_content().replace("\r\n", "\n") == files["body"].read_text(encoding="utf-8")
    got = {p.get_filename(): p.get_payload(decode=True) for p in parts[1:]}
    for key in ("all256", "utf8", "big", "text"):
        f = files[key]
        assert got[f.name] == f.read_bytes(), f"{f.name} did not arrive byte-identical"
    ctypes = {p.get_filename(): p.get_content_type() for p in parts[1:]}
    assert ctypes["résumé ü.pdf"] == "application/pdf"
    assert ctypes["notes.txt"] == "text/plain"
    for p in parts[1:]:
        assert p["Content-Transfer-Encoding"] == "base64"
        assert p.get_content_disposition() == "attachment"
    # RFC 2231 for the non-ASCII name.
    assert b"filename*=UTF-8''r%C3%A9sum%C3%A9%20%C3%BC.pdf" in m.content


def test_html_alternative_and_stdin_body(tmp_path):
    html = tmp_path / "b.html"
    html.write_text("<p>Hi <b>there</b></p>")
    with Sink() as sink:
        r = tern_send(*server_args(sink, "--to", "bob@example.test", "--html-file", str(html)), stdin=b"plain body\n")
        assert r.returncode == 0, err(r)
        msg = parse(sink.messages[0].content)
    assert msg.get_content_type() == "multipart/alternative"
    kinds = [p.get_content_type() for p in msg.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    assert list(msg.iter_parts())[0].get_content().replace("\r\n", "\n") == "plain body\n"


@pytest.mark.parametrize(
    "reply,code,needle",
    [
        ("550 5.1.1 no such user", 69, "rejected by 127.0.0.1: 550 5.1.1 no such user"),
        ("452 4.2.2 mailbox full", 75, "temporarily rejected by 127.0.0.1: 452 4.2.2 mailbox full"),
        ("421 4.3.2 shutting down", 75, "temporarily rejected by 127.0.0.1: 421 4.3.2 shutting down"),
    ],
)
def test_exit_code_for_recipient_reply(reply, code, needle):
    with Sink(rcpt_replies={"bob@example.test": reply}) as sink:
        r = tern_send(*server_args(sink, "--to", "bob@example.test"), stdin=b"hi\n")
        assert not sink.messages
    assert r.returncode == code, err(r)
    assert f"tern send: bob@example.test: {needle}" in err(r)


def test_data_rejected_quotes_reply():
    with Sink(data_reply="554 5.6.0 content rejected") as sink:
        r = tern_send(*server_args(sink, "--to", "bob@example.test"), stdin=b"hi\n")
    assert r.returncode == 69
    assert "rejected by 127.0.0.1: 554 5.6.0 content rejected" in err(r)


def test_silent_server_times_out_quickly():
    with SilentServer() as s:
        start = time.monotonic()
        r = tern_send("--server", f"127.0.0.1:{s.port}", "--tls", "none", "--from", FROM, "--to", "b@example.test",
                      "--timeout", "2s", stdin=b"hi\n")
        elapsed = time.monotonic() - start
    assert r.returncode == 75, err(r)
    assert "timed out after 2s waiting for greeting" in err(r)
    assert elapsed < 20


def test_silent_after_greeting_times_out():
    with SilentServer(greet=b"220 hello\r\n") as s:
        r = tern_send("--server", f"127.0.0.1:{s.port}", "--tls", "none", "--from", FROM, "--to", "b@example.test",
                      "--timeout", "2s", stdin=b"hi\n")
    assert r.returncode == 75, err(r)
    assert "EHLO" in err(r)


def test_unreachable_server_is_temporary():
    from send_helpers.sink import free_port

    r = tern_send("--server", f"127.0.0.1:{free_port()}", "--tls", "none", "--from", FROM, "--to", "b@example.test",
                  stdin=b"hi\n")
    assert r.returncode == 75, err(r)
    assert "connect" in err(r)


def test_one_of_three_recipients_rejected():
    with Sink(rcpt_replies={"bad@example.test": "550 5.1.1 no such user"}) as sink:
        r = tern_send(*server_args(sink, "--to", "a@example.test", "--to", "bad@example.test", "--cc", "c@example.test"),
                      stdin=b"hi\n")
        assert len(sink.messages) == 1
        assert sink.messages[0].rcpt_tos == ["a@example.test", "c@example.test"]
    assert r.returncode == 69
    lines = err(r).strip().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("tern send: a@example.test: accepted by 127.0.0.1: 250")
    assert lines[1] == "tern send: bad@example.test: rejected by 127.0.0.1: 550 5.1.1 no such user"
    assert lines[2].startswith("tern send: c@example.test: accepted")


def test_starttls_required_verified_with_ca(tmp_path):
    cert, _key, ctx = self_signed(tmp_path)
    with Sink(tls_context=ctx, require_starttls=True) as sink:
        r = tern_send("--server", f"127.0.0.1:{sink.port}", "--tls", "required", "--tls-ca", str(cert),
                      "--from", FROM, "--to", "bob@example.test", "-v", stdin=b"over TLS\n")
        assert r.returncode == 0, err(r)
        assert len(sink.messages) == 1
    log = err(r)
    assert "C: STARTTLS" in log and "S: 220" in log
    # RFC 3207: EHLO again after the handshake.
    assert log.count("C: EHLO") == 2


def test_starttls_unverifiable_certificate_fails_when_required(tmp_path):
    _cert, _key, ctx = self_signed(tmp_path)
    with Sink(tls_context=ctx) as sink:
        r = tern_send("--server", f"127.0.0.1:{sink.port}", "--tls", "required",
                      "--from", FROM, "--to", "bob@example.test", stdin=b"x\n")
        assert not sink.messages
    assert r.returncode == 75, err(r)
    assert "TLS" in err(r)


def test_tls_required_but_not_offered():
    with Sink() as sink:
        r = tern_send("--server", f"127.0.0.1:{sink.port}", "--tls", "required",
                      "--from", FROM, "--to", "bob@example.test", stdin=b"x\n")
        assert not sink.messages
    assert r.returncode == 75
    assert "does not offer STARTTLS" in err(r)


def test_auth_over_starttls_and_transcript_redacts(tmp_path):
    cert, _key, ctx = self_signed(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("s3cret-pass\n")
    with Sink(tls_context=ctx, auth={"user1": "s3cret-pass"}) as sink:
        r = tern_send("--server", f"127.0.0.1:{sink.port}", "--tls", "required", "--tls-ca", str(cert),
                      "--user", "user1", "--password-file", str(pw), "-v",
                      "--from", FROM, "--to", "bob@example.test", stdin=b"authenticated\n")
        assert r.returncode == 0, err(r)
        assert len(sink.messages) == 1
        assert sink.handler.auth_seen == [("PLAIN", "user1")]
    log = err(r)
    assert "AUTH PLAIN <redacted>" in log
    assert "s3cret-pass" not in log
    import base64

    assert base64.b64encode(b"\0user1\0s3cret-pass").decode() not in log


def test_auth_wrong_password_is_permanent(tmp_path):
    cert, _key, ctx = self_signed(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    with Sink(tls_context=ctx, auth={"user1": "s3cret-pass"}) as sink:
        r = tern_send("--server", f"127.0.0.1:{sink.port}", "--tls", "required", "--tls-ca", str(cert),
                      "--user", "user1", "--password-file", str(pw),
                      "--from", FROM, "--to", "bob@example.test", stdin=b"x\n")
        assert not sink.messages
    assert r.returncode == 69, err(r)
    assert "535" in err(r)


def test_auth_never_over_plaintext(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret-pass\n")
    with Sink(auth={"user1": "s3cret-pass"}, auth_require_tls=False) as sink:
        r = tern_send("--server", f"127.0.0.1:{sink.port}", "--tls", "opportunistic",
                      "--user", "user1", "--password-file", str(pw),
                      "--from", FROM, "--to", "bob@example.test", stdin=b"x\n")
        assert sink.handler.auth_seen == []
        assert not sink.messages
    assert r.returncode != 0
    assert "unencrypted" in err(r)


def test_missing_attachment_sends_nothing(tmp_path):
    with Sink() as sink:
        r = tern_send(*server_args(sink, "--to", "bob@example.test", "--attach", str(tmp_path / "nope.pdf")),
                      stdin=b"x\n")
        assert not sink.messages
    assert r.returncode == 66
    lines = err(r).strip().splitlines()
    assert len(lines) == 1 and "nope.pdf" in lines[0], lines


def test_a_tls_ca_without_certificates_sends_nothing(tmp_path):
    ca = tmp_path / "empty.pem"
    ca.write_text("no certificate here\n")
    with Sink() as sink:
        r = tern_send("--server", f"127.0.0.1:{sink.port}", "--tls", "required", "--tls-ca", str(ca),
                      "--from", FROM, "--to", "bob@example.test", stdin=b"x\n")
        assert not sink.messages
    assert r.returncode == 66, err(r)
    assert f"--tls-ca {ca} holds no PEM certificate" in err(r)


def test_unreadable_body_file(tmp_path):
    r = tern_send("--server", "127.0.0.1:9", "--from", FROM, "--to", "b@example.test",
                  "--body-file", str(tmp_path / "missing.txt"))
    assert r.returncode == 66
    assert "missing.txt" in err(r)


# A bare word is no longer here: `root` is qualified with local.qualify_domain (test_interop.py).
@pytest.mark.parametrize("bad", ["not..an-address", "a@", "a b@example.test"])
def test_invalid_address_is_usage_error(bad):
    r = tern_send("--server", "127.0.0.1:9", "--from", FROM, "--to", bad, stdin=b"x\n")
    assert r.returncode == 64, err(r)
    assert len(err(r).strip().splitlines()) == 1


def test_no_recipient_and_bad_flag_are_usage_errors():
    assert tern_send("--from", FROM, stdin=b"x").returncode == 64
    assert tern_send("--from", FROM, "--to", "b@example.test", "--bogus").returncode == 64


def test_dry_run_prints_envelope_and_message():
    r = tern_send("--from", FROM, "--to", "b@example.test", "--bcc", "h@example.test", "--subject", "dry", "--dry-run",
                  stdin=b"body\n")
    assert r.returncode == 0, err(r)
    out = r.stdout.decode()
    assert out.startswith(f"Envelope-From: <{FROM}>\nEnvelope-To: <b@example.test>\nEnvelope-To: <h@example.test>\n\n")
    assert "Subject: dry" in out
    assert "h@example.test" not in out.split("\n\n", 1)[1]


def test_help_documents_exit_codes():
    r = tern_send("--help")
    assert r.returncode == 0
    out = r.stdout.decode()
    for code in ("64", "66", "69", "75"):
        assert f"  {code}  " in out
