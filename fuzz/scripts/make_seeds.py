#!/usr/bin/env python3
"""Writes the hand-written seed inputs into fuzz/seeds/<target>/ (re-run after editing).

Layouts: command and address take the raw text; reply and data take one mode byte first
(limits / max_size and chunking, see fuzz/checks/proto.rs); session takes a mode byte (config,
listener, TLS, peer) and a chunking byte first (fuzz/checks/session.rs). client_reply takes a
mode byte (chunking, AUTH, 8-bit body, UTF-8 recipient, third recipient; fuzz/checks/client.rs)
and then what the server says; config takes the TOML text (fuzz/checks/config.rs).
milter_response takes a chunking byte, then the milter's framed packets (fuzz/checks/milter.rs).
"""
import base64
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "seeds")

def b64(s):
    return base64.b64encode(s).decode()

long_local = "a" * 64
label = "a" * 63
dom255 = ".".join([label] * 3) + "." + "b" * 59  # 63*3+3+59 = 251
dom256 = ".".join([label] * 4) + ".abc"
unbr256 = "l" * 57 + "@" + ".".join([label] * 3) + ".abc"  # 57+1+195 = 253

SEEDS = {
    "command": {
        "helo": b"HELO walton.net",
        "ehlo": b"EhLo x.test extra words",
        "mail": b"MAIL FROM:<johnboy@walton.net>",
        "mail-params": b"MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8 AUTH=<>",
        "mail-null": b"mail from:<>",
        "mail-null-nospace": b"MAIL FROM:<>SMTPUTF8",
        "rcpt": b"RCPT TO:<riker@tern.test>",
        "rcpt-postmaster": b"RCPT TO:<Postmaster>",
        "rcpt-quoted": b'RCPT TO:<"john doe"@example.test>',
        "rcpt-quoted-escapes": b'RCPT TO:<"a\\"b\\\\c"@x.test>',
        "rcpt-ipv4": b"RCPT TO:<u@[192.0.2.1]>",
        "rcpt-ipv6": b"RCPT TO:<u@[IPv6:2001:db8::1]>",
        "rcpt-general-literal": b"RCPT TO:<u@[x-tag:stuff]>",
        "rcpt-source-route": b"RCPT TO:<@a.test,@[192.0.2.1]:user@c.test>",
        "rcpt-utf8": "RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>".encode(),
        "rcpt-param": b"RCPT TO:<a@b.test> NOTIFY=NEVER",
        "mail-unbracketed": b"MAIL FROM: a@b.test SIZE=1",
        "mail-unbracketed-long": ("MAIL FROM:" + unbr256).encode(),
        "mail-local64": ("MAIL FROM:<" + long_local + "@x.test>").encode(),
        "mail-domain256": ("MAIL FROM:<u@" + dom256 + ">").encode(),
        "mail-bad-utf8": b"MAIL FROM:<\xff@x>",
        "data": b"DATA",
        "rset": b"RSET",
        "noop": b"NOOP hello there",
        "quit": b"QUIT",
        "vrfy": b"VRFY riker",
        "vrfy-bare-cr": b"VRFY a\rb",
        "expn": b"EXPN staff",
        "help": b"help mail",
        "starttls": b"STARTTLS",
        "auth-plain": ("AUTH plain " + b64(b"\0alice@tern.test\0pw")).encode(),
        "auth-plain-authz": ("AUTH PLAIN " + b64(b"admin\0user\0pw")).encode(),
        "auth-login": b"AUTH LOGIN",
        "auth-empty": b"AUTH PLAIN =",
        "send": b"SEND FROM:<a@b.test>",
        "turn": b"TURN",
        "bdat": b"BDAT 100 LAST",
        "long-line": b"NOOP " + b"x" * 600,
    },
    "reply": {
        "greeting": b"\x00220 mx.test ESMTP ready\r\n",
        "ehlo": b"\x00250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-AUTH PLAIN LOGIN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n",
        "enhanced": b"\x00250-2.0.0 first\r\n250 2.0.0 second\r\n220 x\r\n",
        "enhanced-mixed": b"\x00550-5.7.1 no\r\n550 plain text\r\n",
        "enhanced-bare": b"\x00250 2.0.0\r\n",
        "code-only": b"\x00250\r\n",
        "code-600": b"\x00600 nope\r\n",
        "code-199": b"\x00199 nope\r\n",
        "code-mismatch": b"\x00250-a\r\n251 b\r\n",
        "bare-lf": b"\x00250-a\n250 b\n",
        "bare-cr-text": b"\x00250 a\rb\r\n",
        "cr-before-enhanced": b"\x00250 2.0.0\r x\r\n",
        "long-line": b"\x00250 " + b"y" * 5000 + b"\r\n",
        "small-limits-many-lines": b"\x01" + b"250-a\r\n" * 6 + b"250 b\r\n",
        "small-limits-long": b"\x03250 " + b"z" * 100 + b"\r\n250 ok\r\n",
        "partial": b"\x02250-a\r\n250 b",
        "non-utf8": b"\x00250 caf\xe9\r\n",
        "garbage": b"\x00hello\r\n",
    },
    "address": {
        "simple": b"john@walton.net",
        "path-params": b"<john@walton.net> SIZE=10",
        "null": b"<>",
        "postmaster": b"<Postmaster>",
        "quoted": b'<"john doe"@example.test>',
        "quoted-escapes": b'"a\\"b\\\\c"@x.test',
        "quoted-plain": b'<"plain"@x.test>',
        "quoted-empty": b'""@x.test',
        "quoted-64": ('"' + " " * 64 + '"@x.test').encode(),
        "ipv4": b"<u@[192.0.2.1]>",
        "ipv6": b"u@[IPv6:2001:db8::1]",
        "ipv6-mapped": b"u@[IPv6:::ffff:192.0.2.1]",
        "general": b"<u@[x-tag:stuff]>",
        "source-route": b"<@a.test,@b.test:user@c.test>",
        "relay-tricks": b"<user%other.test@local.test>",
        "bang": b"<other.test!user@local.test>",
        "trailing-dot": b"<a@B.Test.>",
        "utf8": "<δοκιμή@παράδειγμα.δοκιμή>".encode(),
        "local-64": (long_local + "@x.test").encode(),
        "local-65": ("a" + long_local + "@x.test").encode(),
        "domain-251": ("u@" + dom255).encode(),
        "domain-256": ("u@" + dom256).encode(),
        "unbracketed-253": unbr256.encode(),
        "double-at": b"<a@b@c>",
        "unterminated": b'<"unterminated@x.test>',
    },
    "data": {
        "plain": b"\x00Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n",
        "empty": b"\x00.\r\n",
        "stuffed": b"\x00..hidden\r\n...two\r\n.x\r\n.\r\n",
        "smuggle-lf-lf": b"\x00a\n.\nMAIL FROM:<x@y>\n",
        "smuggle-lf-crlf": b"\x00a\n.\r\nMAIL FROM:<x@y>\r\n",
        "smuggle-crlf-lf": b"\x00a\r\n.\nMAIL FROM:<x@y>\r\n",
        "smuggle-cr-cr": b"\x00a\r.\rMAIL FROM:<x@y>\r\n",
        "smuggle-cr-crlf": b"\x00a\r.\r\nMAIL FROM:<x@y>\r\n",
        "smuggle-crlf-cr": b"\x00a\r\n.\rMAIL FROM:<x@y>\r\n.\r\n",
        "bare-lf-then-end": b"\x04a\nb\r\n.\r\n",
        "too-large": b"\x01" + b"x" * 100 + b"\r\n.\r\n",
        "max-zero": b"\x02a\r\n.\r\n",
        "two-messages": b"\x07one\r\n.\r\ntwo\r\n..\r\n.\r\n",
        "crcrlf": b"\x00\r\r\n.\r\n",
        "long-line": b"\x03" + b"L" * 3000 + b"\r\n.\r\n",
        "no-end": b"\x00no end here\r\n",
        "dot-cr-cr": b"\x00.\r\r\n.\r\n",
    },
    "session": {
        "seed-transaction": b"\x00\x01HELO walton.net\r\nMAIL FROM:<johnboy@walton.net>\r\nRCPT TO:<riker@tern.test>\r\nDATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n",
        "seed-transaction-bytewise": b"\x00\x00HELO walton.net\r\nMAIL FROM:<johnboy@walton.net>\r\nRCPT TO:<riker@tern.test>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n",
        "smuggling": b"\x01\x01EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<bob@tern.test>\r\nDATA\r\nhello\n.\nMAIL FROM:<evil@x.test>\nRCPT TO:<alice@tern.test>\r\n.\r\nNOOP\r\nQUIT\r\n",
        "starttls-pipelined": b"\x20\x01EHLO c\r\nSTARTTLS\r\nRSET\r\nEHLO c\r\nQUIT\r\n",
        "auth-plain-submission": b"\x16\x01EHLO c\r\nAUTH PLAIN " + b64(b"\0alice@tern.test\0pw").encode() + b"\r\nMAIL FROM:<alice@tern.test>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
        "auth-login-submission": b"\x06\x01EHLO c\r\nAUTH LOGIN\r\n" + b64(b"alice@tern.test").encode() + b"\r\n" + b64(b"wrong").encode() + b"\r\nAUTH LOGIN " + b64(b"alice@tern.test").encode() + b"\r\n" + b64(b"pw").encode() + b"\r\nMAIL FROM:<bob@tern.test>\r\nAUTH PLAIN\r\n*\r\nQUIT\r\n",
        "long-line": b"\x01\x01EHLO c\r\nNOOP " + b"x" * 700 + b"\r\nNOOP\r\n",
        "http": b"\x00\x01GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "vrfy-expn": b"\x01\x01HELO c\r\nVRFY alice\r\nVRFY <team@tern.test>\r\nEXPN team@tern.test\r\nEXPN nobody\r\nHELP\r\nHELP MAIL\r\n",
        "too-big": b"\x01\x01EHLO c\r\nMAIL FROM:<a@b.test> SIZE=100\r\nRCPT TO:<alice@tern.test>\r\nDATA\r\n" + b"x" * 300 + b"\r\n.\r\nMAIL FROM:<a@b.test> SIZE=1000\r\nQUIT\r\n",
        "utf8": "\x01\x01EHLO c\r\nMAIL FROM:<δ@b.test> SMTPUTF8\r\nRCPT TO:<alice@tern.test>\r\nRCPT TO:<δ@tern.test>\r\nDATA\r\nсообщение\r\n.\r\n".encode(),
        "bare-cr-command": b"\x01\x01HELO c\r\nMAIL FROM:<a@b.test>\rRCPT TO:<alice@tern.test>\r\nRSET\r\n",
        "errors-until-close": b"\x00\x01" + b"FOO\r\n" * 30,
        "relay-denied": b"\x40\x01HELO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@remote.test>\r\nRCPT TO:<postmaster>\r\nDATA\r\n.\r\n",
        "many-rcpts": b"\x41\x01HELO c\r\nMAIL FROM:<>\r\n" + b"RCPT TO:<alice@tern.test>\r\n" * 5 + b"DATA\r\n..\r\n.\r\n",
        "catch-all": b"\x03\x01EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<anything@tern.test>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\nhi\r\n.\r\n",
        "submission-unauth": b"\x04\x01EHLO c\r\nMAIL FROM:<a@b.test>\r\nAUTH PLAIN\r\nQUIT\r\n",
        "mail-loop": b"\x00\x01EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@tern.test>\r\nDATA\r\n" + b"Received: x\r\n" * 51 + b"\r\nloop\r\n.\r\nQUIT\r\n",
        "obsolete": b"\x01\x01SEND FROM:<a@b>\r\nTURN\r\nBDAT 1 LAST\r\nHELO\r\nDATA\r\nRCPT TO:<a@tern.test>\r\n",
    },
}

GREET = b"220 mx.test ESMTP\r\n"
EHLO_FULL = (b"250-mx.test hello\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
             b"250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n")
OK = b"250 2.0.0 ok\r\n"
SEEDS["client_reply"] = {
    "lockstep-delivered": b"\x00" + GREET + b"250 mx.test\r\n" + OK * 3 + b"354 go\r\n" + OK + b"250 reset\r\n221 bye\r\n",
    "pipelined-delivered": b"\x01" + GREET + EHLO_FULL + OK * 3 + b"354 go\r\n" + OK + OK + b"221 bye\r\n",
    "auth-plain": b"\x02" + GREET + EHLO_FULL + b"235 2.7.0 ok\r\n" + OK * 3 + b"354 go\r\n" + OK,
    "auth-plain-334": b"\x03" + GREET + EHLO_FULL + b"334 \r\n235 ok\r\n" + OK * 3 + b"354 go\r\n" + OK,
    "auth-login": b"\x02" + GREET + b"250-mx\r\n250 AUTH LOGIN\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 no\r\n",
    "one-rcpt-rejected": b"\x11" + GREET + EHLO_FULL + OK + b"550 5.1.1 no such user\r\n" + OK + OK + b"354 go\r\n" + OK,
    "all-rcpts-rejected": b"\x01" + GREET + EHLO_FULL + OK + b"550 5.1.1 a\r\n550 5.1.1 b\r\n554 5.5.1 no valid recipients\r\n",
    "helo-fallback": b"\x00" + GREET + b"502 5.5.2 what\r\n250 mx.test\r\n" + OK * 3 + b"354 go\r\n" + OK,
    "banner-554": b"\x00554 5.3.2 go away\r\n221 bye\r\n",
    "banner-421": b"\x00421 4.3.2 busy\r\n",
    "421-mid-transaction": b"\x01" + GREET + EHLO_FULL + OK + b"421 4.3.0 shutting down\r\n",
    "multiline-mismatch": b"\x00" + GREET + b"250-mx\r\n251 other code\r\n",
    "continuation-forever": b"\x00" + GREET + b"250-" + b"x" * 100 + b"\r\n" + (b"250-" + b"y" * 4000 + b"\r\n") * 20,
    "too-many-lines": b"\x01" + GREET + b"250-a\r\n" * 300 + b"250 b\r\n",
    "line-too-long": b"\x00" + GREET + b"250 " + b"z" * 5000 + b"\r\n",
    "bare-lf-and-garbage": b"\x01220 hi\n250-mx\n250 SIZE\n250 ok\n\x00\xff\r\n",
    "size-too-small": b"\x00" + GREET + b"250-mx\r\n250 SIZE 10\r\n250 reset\r\n221 bye\r\n",
    "no-8bitmime": b"\x04" + GREET + b"250 mx\r\n250 reset\r\n",
    "no-smtputf8": b"\x08" + GREET + b"250-mx\r\n250 8BITMIME\r\n",
    "data-refused-then-temp": b"\x00" + GREET + b"250 mx\r\n" + OK * 3 + b"451 4.3.0 later\r\n",
    "final-dot-552": b"\x01" + GREET + EHLO_FULL + OK * 3 + b"354 go\r\n552 5.3.4 too big\r\n",
    "eof-after-354": b"\x00" + GREET + b"250 mx\r\n" + OK * 3 + b"354 go\r\n",
    "code-out-of-range": b"\x00" + GREET + b"199 what\r\n650 what\r\n",
    "empty-ehlo-lines": b"\x01" + GREET + b"250-\r\n250-\r\n250 \r\n" + OK * 3 + b"354 \r\n250\r\n",
}

SEEDS["config"] = {
    "empty": b"",
    "minimal": b'hostname = "mx.example.test"\n',
    "full": b"""hostname = "mx.example.test"
data_dir = "/var/lib/tern"

[smtp]
listen = ["127.0.0.1:2525", "[::1]:2525"]
bare_line_endings = "reject"

[submission]
listen = ["127.0.0.1:2587"]
require_tls_for_auth = true
enforce_sender = true

[limits]
max_message_size = "25MiB"
max_recipients = 100
command_timeout = "5m"
data_timeout = "10m"
max_session_time = "1h"

[local]
domains = ["example.test", "other.test"]
qualify_domain = "example.test"

[aliases]
"postmaster@example.test" = ["root@example.test"]
"team@example.test" = ["a@example.test", "b@example.test"]

[relay]
trusted_networks = ["127.0.0.0/8", "::1/128"]

[routes."partner.test"]
host = "mx.partner.test"
port = 2525
tls = "required"

[queue]
max_age = "5d"
retry_schedule = ["1m", "5m", "30m", "2h"]
delay_warning = "4h"

[outbound]
mx_port = 25
concurrency = 10
tls = "opportunistic"
connect_timeout = "30s"
command_timeout = "5m"
data_timeout = "10m"

[dns]
nameservers = ["127.0.0.1:53"]

[log]
level = "info"
format = "json"
""",
    "huge-duration": b'[queue]\nmax_age = "100000000years"\nretry_schedule = ["1000000d"]\n',
    "zero-port": b'[routes."*"]\nhost = "smarthost.test"\nport = 0\n',
    "negative-and-types": b"[limits]\nmax_recipients = -1\nmax_message_size = 0\ncommand_timeout = 5\n",
    "unknown-key": b'hostnam = "typo.test"\n[limts]\nx = 1\n',
    "bad-syntax": b'hostname = "unterminated\n[smtp\nlisten = [1, 2\n',
    "auth-route-no-tls": b'[routes."*"]\nhost = "smarthost.test"\nuser = "u"\npassword_file = "/nonexistent/pw"\n',
    "multibyte-spans": "hostname = \"δοκιμή.test\"\n[limits]\nmax_recipients = \"ωω\"\n".encode(),
    "users": b'[[users]]\nname = "alice@example.test"\npassword = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"\n',
}

def mpkt(cmd, payload=b""):
    """One milter packet: 4-octet big-endian length (command octet included), command, payload."""
    return (len(payload) + 1).to_bytes(4, "big") + cmd + payload

def u32(n):
    return n.to_bytes(4, "big")

SEEDS["milter_response"] = {
    "optneg-v6": b"\x00" + mpkt(b"O", u32(6) + u32(0x1FF) + u32(0x000FF7FF)),
    "optneg-v2-extra-bits": b"\x05" + mpkt(b"O", u32(2) + u32(0xFFFFFFFF) + u32(0x30000000)),
    "optneg-v7": b"\x00" + mpkt(b"O", u32(7) + u32(0) + u32(0)),
    "verdicts": b"\x03" + b"".join(mpkt(c) for c in [b"c", b"a", b"d", b"r", b"t", b"p", b"s"]),
    "replycode": b"\x07" + mpkt(b"y", b"550 5.7.1 Spam message rejected\x00"),
    "replycode-temp": b"\x01" + mpkt(b"y", b"451 4.7.1 Try again later\x00"),
    "replycode-crlf": b"\x02" + mpkt(b"y", b"550 5.7.1 a\r\n250 2.0.0 injected\x00"),
    "replycode-class-mismatch": b"\x02" + mpkt(b"y", b"550 4.7.1 no\x00"),
    "replycode-2xx": b"\x02" + mpkt(b"y", b"250 ok\x00"),
    "eom-modifications": b"\x09" + b"".join([
        mpkt(b"h", b"X-Spam\x00Yes\x00"),
        mpkt(b"i", u32(0) + b"Authentication-Results\x00mx; spf=pass\x00"),
        mpkt(b"m", u32(1) + b"Subject\x00[SPAM] hi\x00"),
        mpkt(b"m", u32(1) + b"X-Old\x00\x00"),
        mpkt(b"e", b"<new@example.test>\x00SIZE=10\x00"),
        mpkt(b"+", b"<c@example.test>\x00"),
        mpkt(b"2", b"<d@example.test>\x00NOTIFY=NEVER\x00"),
        mpkt(b"-", b"<b@example.test>\x00"),
        mpkt(b"b", b"new body\r\n"),
        mpkt(b"q", b"held for review\x00"),
        mpkt(b"a"),
    ]),
    "setsymlist": b"\x04" + mpkt(b"l", u32(2) + b"{auth_authen} i  {client_addr}\x00"),
    "bad-header-name": b"\x00" + mpkt(b"h", b"X Bad:\x00v\x00"),
    "truncated-insheader": b"\x00" + mpkt(b"i", b"\x00\x00"),
    "unknown-command": b"\x00" + mpkt(b"Z") + mpkt(b"c"),
    "zero-length": b"\x00" + mpkt(b"c") + u32(0) + mpkt(b"c"),
    "oversize": b"\x11" + u32(0x00010401) + b"b" + b"x" * 64,
    "full-body-chunk": b"\x13" + mpkt(b"b", b"x" * 65535) + mpkt(b"c"),
    "split-length": b"\x21" + mpkt(b"c") + u32(3)[:2],
}

# milter_draft: two octets (big-endian) giving the message's length, the client's message, then what a milter
# sends at the end of it (fuzz/checks/filter.rs).
def draft(msg, *packets):
    return len(msg).to_bytes(2, "big") + msg + b"".join(packets)

DRAFT_MSG = b"From: a@b.test\r\nSubject: hi\r\n there\r\nX-Old: 1\r\nX-Old: 2\r\n\r\nbody\r\n"
SEEDS["milter_draft"] = {
    "headers": draft(DRAFT_MSG, mpkt(b"h", b"X-Spam\x00yes\x00"), mpkt(b"i", u32(0) + b"DKIM-Signature\x00v=1;\n\tb=abc\x00"),
                     mpkt(b"m", u32(2) + b"x-old\x00\x00"), mpkt(b"m", u32(1) + b"Subject\x00[SPAM] hi\x00")),
    "injection": draft(DRAFT_MSG, mpkt(b"h", b"X-Evil\x00a\r\n\r\nBcc: victim@x.test\nX: y\rZ\x00")),
    "no-body": draft(b"Subject: x", mpkt(b"h", b"X-A\x001\x00")),
    "leading-space": draft(b" folded\r\nSubject: x\r\n\r\nb\r\n", mpkt(b"i", u32(0) + b"X-Top\x00t\x00")),
    "no-colon-line": draft(b"Subject: x\r\nnot a field\r\n\r\nb\r\n", mpkt(b"m", u32(1) + b"Subject\x00y\x00")),
    "replace-body": draft(DRAFT_MSG, mpkt(b"b", b"one\ntwo\r\nthree\r"), mpkt(b"b", b"\n.\n")),
    "bad-name": draft(DRAFT_MSG, mpkt(b"h", b"X-Ok\x001\x00"), mpkt(b"h", b"Bad Name\x001\x00")),
    "envelope-only": draft(DRAFT_MSG, mpkt(b"e", b"<new@x.test>\x00"), mpkt(b"+", b"<c@d.test>\x00"),
                           mpkt(b"-", b"<a@b.test>\x00")),
}

for target, seeds in SEEDS.items():
    d = os.path.join(ROOT, target)
    # Only this script's files are rewritten: crash reproducers copied in by hand stay.
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print(target, len(seeds))
