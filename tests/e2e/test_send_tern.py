"""`tern send` and `tern sendmail` (subcommand and argv[0] symlink) against a real `tern serve`:
the messages land in the Maildir, Bcc is stripped, missing headers are added."""

from __future__ import annotations

import email
import os
from email import policy

from send_helpers.run import err, tern_send
from ternlib import split_trace, tern_bin


def parse(stored: bytes):
    _trace, rest = split_trace(stored)
    return email.message_from_bytes(rest, policy=policy.default)


def test_tern_send_lands_in_maildir(srv, tmp_path):
    att = tmp_path / "data.bin"
    att.write_bytes(bytes(range(256)))
    r = tern_send("--server", f"{srv.host}:{srv.port}", "--tls", "none", "--from", "sender@example.test",
                  "--to", "alice@tern.test", "--bcc", "bob@tern.test", "--subject", "via tern",
                  "--attach", str(att), stdin=b"hello tern\n")
    assert r.returncode == 0, err(r) + srv.log()
    for rcpt in ("alice@tern.test", "bob@tern.test"):
        msg = parse(srv.wait_messages(rcpt)[0])
        assert msg["Subject"] == "via tern"
        assert msg["Bcc"] is None
        parts = list(msg.iter_parts())
        assert parts[1].get_payload(decode=True) == bytes(range(256))


def sendmail_input() -> bytes:
    return (b"To: Alice <alice@tern.test>\n"
            b"Cc: carol@tern.test\n"
            b"Bcc: bob@tern.test\n"
            b"Subject: from cron\n"
            b"\n"
            b"line one\n"
            b".\n"
            b"after a lone dot (kept with -i)\n")


def test_sendmail_t_lands_in_maildir_without_bcc(srv):
    r = tern_send("-t", "-i", "-f", "cron@example.test", "-F", "Cron Daemon", "-odq", "-oem",
                  sub="sendmail", stdin=sendmail_input(), env={"TERN_CONFIG": str(srv.config_path)})
    assert r.returncode == 0, err(r) + srv.log()
    for rcpt in ("alice@tern.test", "carol@tern.test", "bob@tern.test"):
        stored = srv.wait_messages(rcpt)[0]
        _trace, rest = split_trace(stored)
        assert b"bob@tern.test" not in rest, "Bcc leaked into the message"
        msg = parse(stored)
        assert msg["Bcc"] is None
        assert msg["Subject"] == "from cron"
        assert msg["Date"] and msg["Message-ID"]
        assert str(msg["From"]) == "Cron Daemon <cron@example.test>"
        assert "after a lone dot" in msg.get_content()


def test_sendmail_symlink_argv0_and_lone_dot(srv, tmp_path):
    link = tmp_path / "sendmail"
    os.symlink(tern_bin(), link)
    r = tern_send("alice@tern.test", argv0=link, stdin=b"Subject: via symlink\n\nbody\n.\nnot sent\n",
                  env={"TERN_CONFIG": str(srv.config_path)})
    assert r.returncode == 0, err(r) + srv.log()
    msg = parse(srv.wait_messages("alice@tern.test")[0])
    assert msg["Subject"] == "via symlink"
    body = msg.get_content()
    assert "body" in body and "not sent" not in body
    assert msg["From"] and msg["Date"] and msg["Message-ID"]


def test_sendmail_usage_errors(srv):
    env = {"TERN_CONFIG": str(srv.config_path)}
    r = tern_send("-bp", sub="sendmail", env=env)
    assert r.returncode == 64
    r = tern_send(sub="sendmail", stdin=b"Subject: x\n\nno recipients\n", env=env)
    assert r.returncode == 64
    assert "no recipients" in err(r)


def test_sendmail_server_down_is_tempfail(tern):
    srv = tern(start=False)
    r = tern_send("alice@tern.test", sub="sendmail", stdin=b"Subject: x\n\ny\n",
                  env={"TERN_CONFIG": str(srv.config_path)})
    assert r.returncode == 75, err(r)
