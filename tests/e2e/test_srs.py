"""SRS for forwarded mail (issue 10 item 7, issue 11 item 4): an alias `fwd@tern.test -> someone@remote.test`
forwards off-host, and with `[srs] secret_file` the forwarded copy leaves with MAIL FROM:<SRS0=...@mx.tern.test>
(srs.domain defaults to the hostname) while a remote recipient the client named itself keeps the client's sender,
in a transaction of its own. A bounce to the SRS address, from an untrusted client (127.0.0.2), is accepted and goes
to the original sender (relayed to the sink for far.test, or into a local Maildir); a tampered hash gets 550 5.1.1;
a DSN tern itself makes for a forwarded copy reaches the original sender. Without a secret, forwarding keeps the
original sender and the log says SRS is off. The secret file comes from `tern srs keygen`."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from relay_helpers import WAIT, Remote, check_failed, log_tail, parse_dsn, relay_config, route_to, wait_for
from sec_helpers import UNTRUSTED_IP, Client
from ternlib import HOSTNAME, make_message, split_trace, tern_bin

CAROL = "carol@far.test"  # a sender elsewhere, whose mail reaches fwd@ and whose bounces must come back to her
FWD = "fwd@tern.test"
SOMEONE = "someone@remote.test"  # where fwd@ forwards to
BOB = "bob@remote.test"  # a remote recipient named directly
SRS0 = re.compile(r"^SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=far\.test=carol@" + re.escape(HOSTNAME) + r"$")
# Only 127.0.0.1 may relay: the bounces come from 127.0.0.2, a stranger.
UNTRUSTED = {"trusted_networks": ["127.0.0.1/32"]}


@pytest.fixture
def sink():
    """One aiosmtpd peer for both remote.test and far.test (the routes point both at it)."""
    with Remote() as r:
        yield r


def keygen(path) -> str:
    r = subprocess.run([str(tern_bin()), "srs", "keygen", "--out", str(path)], capture_output=True, timeout=20,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"tern srs keygen: {r.returncode} {r.stderr!r}"
    assert os.stat(path).st_mode & 0o777 == 0o600
    return str(path)


def srs_srv(tern, sink: Remote, tmp_path, srs: bool = True, **extra):
    routes = {"remote.test": route_to(sink.port), "far.test": route_to(sink.port)}
    cfg = relay_config(routes=routes, aliases={FWD: SOMEONE}, relay=UNTRUSTED,
                       users=[{"name": "alice@tern.test"}], **extra)
    if srs:
        cfg["srs"] = {"secret_file": keygen(tmp_path / "srs.secret")}
    return tern(**cfg)


def srs_cli(srv, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TERN_CONFIG=str(srv.config_path))
    return subprocess.run([str(tern_bin()), "srs", *args], env=env, capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)


def forwarded_sender(srv, sink: Remote) -> str:
    """Sends CAROL -> FWD and returns the MAIL FROM the sink saw for the forwarded copy."""
    srv.deliver(CAROL, FWD, make_message("to be forwarded", sender=CAROL, to=FWD))
    got = sink.wait_messages(1, srv=srv)[0]
    assert got.rcpt_tos == [SOMEONE], got
    return got.mail_from


def bounce_to(srv, rcpt: str, expect: int, enhanced: str | None = None, body: bytes | None = None) -> str:
    """A null-sender message to `rcpt` from an untrusted client; returns the RCPT reply text."""
    with Client(srv.port, source=UNTRUSTED_IP) as c:
        c.start("mx.remote.test")
        c.expect("MAIL FROM:<>", 250)
        text = c.expect(f"RCPT TO:<{rcpt}>", expect, enhanced)
        if expect == 250:
            c.expect("DATA", 354)
            c.send((body or make_message("Undelivered Mail", sender="MAILER-DAEMON@remote.test", to=rcpt))
                   + b".\r\n")
            code, reply = c.read_reply()
            assert code == 250, f"end of DATA: {code} {reply}"
        c.cmd("QUIT")
        return text


def test_forwarded_copy_has_an_srs_sender(tern, sink, tmp_path):
    srv = srs_srv(tern, sink, tmp_path)
    sender = forwarded_sender(srv, sink)
    assert SRS0.match(sender), f"MAIL FROM of the forwarded copy: {sender!r}"
    trace, rest = split_trace(sink.messages[0].content)
    assert rest.startswith(b"From: <carol@far.test>"), "the message itself is not changed"
    assert "[srs] has no secret_file" not in srv.log(), log_tail(srv)
    # The CLI agrees with the server: forward gives the same address (same day), reverse the original.
    assert srs_cli(srv, "forward", CAROL).stdout.strip() == sender
    assert srs_cli(srv, "reverse", sender).stdout.strip() == CAROL


def test_bounce_to_the_srs_address_is_relayed_to_the_original_sender(tern, sink, tmp_path):
    srv = srs_srv(tern, sink, tmp_path)
    sender = forwarded_sender(srv, sink)
    sink.reset_counts()
    # Mail servers may change the case of the local part: still ours.
    bounce_to(srv, sender.lower(), 250)
    got = sink.wait_messages(1, srv=srv)[0]
    assert got.mail_from == "<>", f"a bounce keeps the null sender: {got.mail_from!r}"
    assert got.rcpt_tos == [CAROL], got
    _, rest = split_trace(got.content)
    assert b"Subject: Undelivered Mail" in rest


def test_bounce_to_the_srs_address_of_a_local_sender_is_delivered_locally(tern, sink, tmp_path):
    srv = srs_srv(tern, sink, tmp_path)
    # tern never rewrites its own users' senders; another forwarder sharing our secret could. The CLI makes one.
    r = srs_cli(srv, "forward", "alice@tern.test")
    assert r.returncode == 0, r.stderr
    address = r.stdout.strip()
    assert address.startswith("SRS0=") and address.endswith(f"=tern.test=alice@{HOSTNAME}"), address
    bounce_to(srv, address, 250)
    got = srv.wait_messages("alice@tern.test", 1, timeout=WAIT)
    assert b"Subject: Undelivered Mail" in got[0]
    assert not sink.messages


def test_tampered_or_foreign_srs_addresses_are_refused(tern, sink, tmp_path):
    srv = srs_srv(tern, sink, tmp_path)
    sender = forwarded_sender(srv, sink)
    sink.reset_counts()
    tag, hash_, rest = sender.split("=", 2)
    other = "AAAA" if hash_.upper() != "AAAA" else "BBBB"
    for forged in (f"{tag}={other}={rest}",                        # another hash
                   sender.replace("=carol@", "=mallory@"),          # another original local part
                   sender.replace("=far.test=", "=evil.test="),     # another original domain
                   f"SRS1={other}=far.test==AAAA=AA=x.test=y@{HOSTNAME}"):  # an SRS1 we never made
        bounce_to(srv, forged, 550, "5.1.1")
    # Not an SRS address of ours at all: a stranger cannot relay through us.
    bounce_to(srv, "SRS0=AAAA=AA=far.test=carol@elsewhere.test", 550, "5.7.1")
    assert not sink.messages


def test_direct_and_forwarded_remote_recipients_get_two_transactions(tern, sink, tmp_path):
    srv = srs_srv(tern, sink, tmp_path)
    srv.deliver(CAROL, [BOB, FWD], make_message("both", sender=CAROL, to=BOB))
    got = sink.wait_messages(2, srv=srv)
    by_rcpt = {tuple(g.rcpt_tos): g for g in got}
    assert set(by_rcpt) == {(BOB,), (SOMEONE,)}, [(g.mail_from, g.rcpt_tos) for g in got]
    assert by_rcpt[(BOB,)].mail_from == CAROL, "a recipient the client named keeps the client's sender"
    assert SRS0.match(by_rcpt[(SOMEONE,)].mail_from), by_rcpt[(SOMEONE,)].mail_from
    assert split_trace(by_rcpt[(BOB,)].content)[1] == split_trace(by_rcpt[(SOMEONE,)].content)[1]


def test_a_dsn_for_a_forwarded_copy_reaches_the_original_sender(tern, sink, tmp_path):
    sink.script.rcpt_replies[SOMEONE] = "550 5.1.1 <someone@remote.test>: no such user"
    srv = srs_srv(tern, sink, tmp_path)
    srv.deliver(CAROL, FWD, make_message("will bounce", sender=CAROL, to=FWD))
    # The DSN goes to the SRS sender of the copy, which tern reverses at once: to carol, relayed to the sink.
    got = sink.wait_messages(1, srv=srv)[0]
    assert got.mail_from == "<>" and got.rcpt_tos == [CAROL], (got.mail_from, got.rcpt_tos)
    dsn = parse_dsn(split_trace(got.content)[1])
    check_failed(dsn, SOMEONE, "5.1.1", subject="will bounce")


def test_without_a_secret_forwarding_keeps_the_sender_and_says_so(tern, sink, tmp_path):
    srv = srs_srv(tern, sink, tmp_path, srs=False)
    wait_for(lambda: "[srs] has no secret_file" in srv.log(), what="the start-up warning about SRS")
    assert forwarded_sender(srv, sink) == CAROL
    r = srs_cli(srv, "forward", CAROL)
    assert r.returncode == 78 and "SRS is off" in r.stderr, (r.returncode, r.stderr)


def test_a_bad_secret_file_is_a_config_error(tmp_path):
    short = tmp_path / "short.secret"
    short.write_text("too-short\n")
    for secret, needle in ((tmp_path / "missing.secret", "cannot read"), (short, "at least 16")):
        cfg = tmp_path / "tern.toml"
        cfg.write_text(f'hostname = "{HOSTNAME}"\n[srs]\nsecret_file = "{secret}"\n')
        r = subprocess.run([str(tern_bin()), "check-config", str(cfg)], capture_output=True, text=True, timeout=20,
                           stdin=subprocess.DEVNULL)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "srs.secret_file" in out and needle in out, (r.returncode, out)
        assert "tern srs keygen" in out, out
