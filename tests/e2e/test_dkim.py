"""DKIM signing (RFC 6376, RFC 8463) and `tern dkim` key tooling, checked by independent verifiers.

Covered: `tern dkim keygen` writes the key 0600 and never over an existing file, prints the TXT record that
`tern dkim record` prints again; `tern dkim check` against a fake DNS (dnslib) says the published record
matches, reports a record of another key and a missing one. Mail from a trusted client (delivered locally)
and from an authenticated submission user (relayed to an aiosmtpd peer) carries one signature per key of its
From: domain (RSA and Ed25519), each verified by dkimpy (`dkim.verify`), and the RSA one by OpenDKIM's
`opendkim-testmsg`; both still verify after a real Postfix received and stored the message; mail from an
untrusted port-25 client is not signed; `tern serve` refuses to start on a missing or too short key."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import dkim
import pytest

from relay_helpers import Postfix, Remote, relay_config, require_postfix, route_to
from sec_helpers import ALICE, ALICE_PW, Client, Ports, tls_config
from send_helpers.fakedns import FakeDNS
from ternlib import LOCAL_DOMAIN, Tern, make_message, tern_bin

HERE = Path(__file__).resolve().parent
TESTDATA = HERE.parents[1] / "crates" / "auth" / "testdata"
QUOTED = re.compile(r'"([^"]*)"')


def run_tern(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(tern_bin()), *args], capture_output=True, text=True, timeout=timeout)


def txt_of(zone_line: str) -> str:
    """The record text of a zone-file line `name. IN TXT "a" "b"` (the strings joined, RFC 6376 3.6.2.2)."""
    return "".join(QUOTED.findall(zone_line))


class Key:
    def __init__(self, path: Path, domain: str, selector: str, zone_line: str):
        self.path, self.domain, self.selector, self.zone_line = path, domain, selector, zone_line
        self.record = txt_of(zone_line)
        self.name = f"{selector}._domainkey.{domain}"

    def dkim_config(self) -> dict:
        return {"domain": self.domain, "selector": self.selector, "key_file": str(self.path)}


def keygen(tmp: Path, selector: str, algorithm: str = "rsa-2048", domain: str = LOCAL_DOMAIN) -> Key:
    out = tmp / f"{domain}.{selector}.key"
    r = run_tern("dkim", "keygen", "--domain", domain, "--selector", selector, "--algorithm", algorithm,
                 "--out", str(out))
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith(f"{selector}._domainkey.{domain}. IN TXT \""), line
    return Key(out, domain, selector, line)


def dns_of(*keys: Key):
    """A dnsfunc for dkimpy answering each key's record (no network: the record is what keygen printed)."""
    table = {k.name: k.record.encode() for k in keys}

    def lookup(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        return table.get(name.rstrip(".").lower(), b"")
    return lookup


def crlf(message: bytes) -> bytes:
    return message if b"\r\n" in message else message.replace(b"\n", b"\r\n")


def signature_fields(message: bytes) -> list[str]:
    """The DKIM-Signature fields of the header section, unfolded."""
    head = crlf(message).split(b"\r\n\r\n", 1)[0].decode()
    fields = re.split(r"\r\n(?![ \t])", head)
    return [re.sub(r"\r\n[ \t]", " ", f) for f in fields if f.lower().startswith("dkim-signature:")]


def tag(field: str, name: str) -> str:
    m = re.search(rf"[;:]\s*{name}=([^;]*)", field)
    assert m, f"no {name}= in {field}"
    return re.sub(r"\s", "", m.group(1))


def verify_each(message: bytes, *keys: Key) -> list[str]:
    """Verifies every signature with dkimpy; returns their a= values."""
    message = crlf(message)
    fields = signature_fields(message)
    d = dkim.DKIM(message)
    for i, field in enumerate(fields):
        assert d.verify(idx=i, dnsfunc=dns_of(*keys)), f"dkimpy rejects signature {i}: {field}"
    return [tag(f, "a") for f in fields]


OPENDKIM_RUNNER = r"""
import subprocess, sys, threading
sys.path.insert(0, sys.argv[1])
from dnslib.server import DNSServer
from send_helpers.fakedns import Zone
import json
records, message, resolv = json.loads(sys.argv[2]), open(sys.argv[3], "rb").read(), sys.argv[4]
# A private network namespace: its own loopback, so port 53 is ours; its own mount namespace, so the
# resolv.conf that points libopendkim at it is seen by this process tree only.
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True)
server = DNSServer(Zone(records), port=53, address="127.0.0.1")
server.start_thread()
try:
    r = subprocess.run(["opendkim-testmsg"], input=message, capture_output=True, timeout=30)
finally:
    server.stop()
sys.stdout.write(r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace"))
sys.exit(r.returncode)
"""


def opendkim_available() -> bool:
    return bool(shutil.which("opendkim-testmsg") and shutil.which("unshare") and shutil.which("ip")) \
        and os.geteuid() == 0


def opendkim_verify(tmp: Path, message: bytes, *keys: Key) -> subprocess.CompletedProcess:
    """`opendkim-testmsg` (verify mode) on `message`, with the keys' records served by a fake DNS that only it
    sees (it reads /etc/resolv.conf and asks port 53)."""
    msg = tmp / "opendkim-input.eml"
    # libopendkim takes the message as it is on the wire: CRLF line ends (bare LF is a syntax error to it).
    msg.write_bytes(crlf(message))
    resolv = tmp / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    records = {k.name: {"TXT": [k.record]} for k in keys}
    return subprocess.run(["unshare", "--mount", "--net", sys.executable, "-c", OPENDKIM_RUNNER, str(HERE),
                           json.dumps(records), str(msg), str(resolv)], capture_output=True, text=True, timeout=60)


def require_opendkim() -> None:
    if not opendkim_available():
        if os.environ.get("CI"):
            pytest.fail("opendkim-testmsg, unshare and ip (and root) are required in CI (.ci/run installs them)")
        pytest.skip("opendkim-testmsg / unshare / root not available")


# ---------------------------------------------------------------- key tooling


def test_keygen_writes_a_private_key_once_and_record_prints_it_again(tmp_path):
    rsa = keygen(tmp_path, "s2026")
    mode = stat.S_IMODE(rsa.path.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert rsa.path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert rsa.record.startswith("v=DKIM1; k=rsa; p=MII"), rsa.record
    # RFC 1035: no TXT string longer than 255; a 2048-bit record needs two.
    strings = QUOTED.findall(rsa.zone_line)
    assert len(strings) >= 2 and all(len(s) <= 255 for s in strings), strings

    before = rsa.path.read_bytes()
    again = run_tern("dkim", "keygen", "--domain", LOCAL_DOMAIN, "--selector", "s2026", "--out", str(rsa.path))
    assert again.returncode == 73, again
    assert "never overwritten" in again.stderr, again.stderr
    assert rsa.path.read_bytes() == before

    shown = run_tern("dkim", "record", "--key", str(rsa.path), "--domain", LOCAL_DOMAIN, "--selector", "s2026")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == rsa.zone_line

    ed = keygen(tmp_path, "ed", "ed25519")
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", ed.record), ed.record
    bare = run_tern("dkim", "record", "--key", str(ed.path))
    assert bare.returncode == 0 and bare.stdout.strip() == ed.record, bare


def test_check_says_whether_the_published_record_matches(tmp_path):
    mine = keygen(tmp_path, "s1")
    other = keygen(tmp_path, "other")
    ed = keygen(tmp_path, "ed", "ed25519")
    records = {
        mine.name: {"TXT": [mine.record]},
        # The record of another key published under this selector: a classic copy-paste slip.
        f"stale._domainkey.{LOCAL_DOMAIN}": {"TXT": [other.record]},
        ed.name: {"TXT": [ed.record]},
    }
    with FakeDNS(records) as dns:
        def check(selector: str, key: Key) -> subprocess.CompletedProcess:
            return run_tern("dkim", "check", "--domain", LOCAL_DOMAIN, "--selector", selector,
                            "--key", str(key.path), "--nameserver", dns.addr)

        ok = check("s1", mine)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith(f"OK: {mine.name} publishes the key"), ok.stdout
        ok_ed = check("ed", ed)
        assert ok_ed.returncode == 0 and "Ed25519" in ok_ed.stdout, ok_ed

        stale = check("stale", mine)
        assert stale.returncode == 1, stale
        assert "MISMATCH" in stale.stderr and "different public key" in stale.stderr, stale.stderr
        # It says what to publish instead: the record of the key given.
        assert txt_of(stale.stderr.strip().splitlines()[-1]) == mine.record

        missing = check("nothing", mine)
        assert missing.returncode == 1, missing
        assert "MISSING: no DKIM record" in missing.stderr, missing.stderr

    # The key and the nameserver from the config's [[dkim]] and [dns] instead of flags.
    with FakeDNS(records) as dns:
        cfg = tmp_path / "tern.toml"
        cfg.write_text(f'[dns]\nnameservers = ["{dns.addr}"]\n[[dkim]]\ndomain = "{LOCAL_DOMAIN}"\n'
                       f'selector = "s1"\nkey_file = "{mine.path}"\n')
        r = run_tern("dkim", "check", "--domain", LOCAL_DOMAIN, "--selector", "s1", "--config", str(cfg))
        assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- signing


def test_trusted_client_mail_gets_rsa_and_ed25519_signatures(tern, tmp_path):
    rsa = keygen(tmp_path, "rsa")
    ed = keygen(tmp_path, "ed", "ed25519")
    srv = tern(dkim=[rsa.dkim_config(), ed.dkim_config()])
    body = b"Hello,\r\n\r\ntrailing blanks  \r\n..a dot-stuffed line\r\n\r\n\r\n"
    msg = make_message("signed locally", sender=ALICE, to="dave@tern.test", body=body,
                       extra=b"Date: Tue, 01 Dec 2026 23:00:00 +0000\r\nMIME-Version: 1.0\r\n")
    srv.deliver(ALICE, "dave@tern.test", msg)
    stored = srv.wait_messages("dave@tern.test")[0]

    assert sorted(verify_each(stored, rsa, ed)) == ["ed25519-sha256", "rsa-sha256"]
    fields = signature_fields(stored)
    for f in fields:
        assert tag(f, "d") == LOCAL_DOMAIN
        h = tag(f, "h").lower().split(":")
        assert h.count("from") == 2, f"From over-signed: {h}"
        assert {"to", "subject", "date", "message-id", "mime-version"} <= set(h), h
    # The signatures sit below tern's Received, right above the message's own fields.
    names = [line.split(b":", 1)[0].lower() for line in crlf(stored).split(b"\r\n\r\n", 1)[0].split(b"\r\n")
             if line and line[:1] not in b" \t"]
    assert names[names.index(b"received") + 1] == b"dkim-signature", names
    # A changed body no longer verifies (the oracle can fail).
    tampered = crlf(stored).replace(b"Hello,", b"Hullo,")
    assert not dkim.verify(tampered, dnsfunc=dns_of(rsa, ed))


def test_authenticated_user_relayed_mail_is_signed_and_opendkim_verifies(tern, tmp_path):
    rsa = keygen(tmp_path, "relay")
    ports = Ports()
    with Remote() as remote:
        cfg = tls_config(tmp_path, ports, **relay_config(routes={"remote.test": route_to(remote.port)}))
        # Only 127.0.0.1 is trusted: the client below comes from 127.0.0.2 and is signed for its AUTH.
        cfg["relay"] = {"trusted_networks": ["127.0.0.1/32"]}
        cfg["dkim"] = [rsa.dkim_config()]
        srv = tern(**cfg)
        # A Date: as every MUA writes one (libopendkim calls a message without one a syntax error).
        msg = make_message("signed and relayed", sender=ALICE, to="bob@remote.test",
                           extra=b"Date: Tue, 01 Dec 2026 23:00:00 +0000\r\n")
        with Client(ports.submission, source="127.0.0.2") as c:
            c.start()
            c.starttls()
            c.ehlo()
            code, text = c.auth_plain(ALICE, ALICE_PW)
            assert code == 235, text
            c.expect(f"MAIL FROM:<{ALICE}>", 250)
            c.expect("RCPT TO:<bob@remote.test>", 250)
            c.expect("DATA", 354)
            c.send(msg + b".\r\n")
            code, lines = c.read_reply()
            assert code == 250, lines
        got = remote.wait_messages(1, srv=srv)[0].content

    assert verify_each(got, rsa) == ["rsa-sha256"]
    require_opendkim()
    r = opendkim_verify(tmp_path, got, rsa)
    assert r.returncode == 0, f"opendkim-testmsg: rc={r.returncode} {r.stdout}{r.stderr}"
    # The oracle can fail: a changed Subject is reported.
    bad = opendkim_verify(tmp_path, crlf(got).replace(b"Subject: signed", b"Subject: forged"), rsa)
    assert bad.returncode != 0, bad


def test_signatures_still_verify_after_postfix_delivered_the_message(tern, tmp_path):
    require_postfix()
    rsa = keygen(tmp_path, "rsa")
    ed = keygen(tmp_path, "ed", "ed25519")
    with Postfix(domain="pf.test", users=("bob",)) as pf:
        srv = tern(**relay_config(routes={"pf.test": route_to(pf.port)}), dkim=[rsa.dkim_config(), ed.dkim_config()])
        msg = make_message("through postfix", sender=ALICE, to="bob@pf.test",
                           body=b"Line one\r\n\tindented   \r\n.leading dot\r\n",
                           extra=b"Date: Tue, 01 Dec 2026 23:00:00 +0000\r\nMIME-Version: 1.0\r\n"
                                 b"Content-Type: text/plain; charset=utf-8\r\n")
        srv.deliver(ALICE, "bob@pf.test", msg)
        stored = pf.wait_delivered("bob")[0]
    # Postfix added its own Received: and stored the file with LF line ends; both signatures still hold.
    assert sorted(verify_each(stored, rsa, ed)) == ["ed25519-sha256", "rsa-sha256"]
    require_opendkim()
    rsa_only = re.sub(rb"DKIM-Signature: v=1; a=ed25519-sha256;.*?(?=\r\n[^ \t])\r\n", b"", crlf(stored),
                      count=1, flags=re.S)
    assert len(signature_fields(rsa_only)) == 1
    r = opendkim_verify(tmp_path, rsa_only, rsa)
    assert r.returncode == 0, f"opendkim-testmsg: rc={r.returncode} {r.stdout}{r.stderr}"


def test_untrusted_port25_client_is_not_signed(tern, tmp_path):
    rsa = keygen(tmp_path, "s1")
    srv = tern(dkim=[rsa.dkim_config()], relay={"trusted_networks": ["127.0.0.1/32"]})
    msg = make_message("from outside", sender=ALICE, to="dave@tern.test")
    with Client(srv.port, source="127.0.0.2") as c:
        c.start()
        c.expect(f"MAIL FROM:<{ALICE}>", 250)
        c.expect("RCPT TO:<dave@tern.test>", 250)
        c.expect("DATA", 354)
        c.send(msg + b".\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
    stored = srv.wait_messages("dave@tern.test")[0]
    assert signature_fields(stored) == []
    # The same message from the trusted address is signed: the difference is the client, not the message.
    srv.deliver(ALICE, "erin@tern.test", msg)
    assert len(signature_fields(srv.wait_messages("erin@tern.test")[0])) == 1


@pytest.mark.parametrize("problem", ["missing", "rsa-1024"])
def test_serve_refuses_a_key_it_cannot_sign_with(tmp_path, problem):
    key = tmp_path / "absent.key" if problem == "missing" else TESTDATA / "rsa-1024.pem"
    srv = Tern(tmp_path / "t", {"dkim": [{"domain": LOCAL_DOMAIN, "selector": "s1", "key_file": str(key)}]})
    r = subprocess.run([str(tern_bin()), "serve", "--config", str(srv.config_path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 78, r
    assert "dkim[0].key_file" in r.stderr or "dkim key for tern.test (selector s1)" in r.stderr, r.stderr
    assert "tern dkim keygen --domain tern.test --selector s1" in r.stderr, r.stderr
    if problem == "rsa-1024":
        assert "at least 2048" in r.stderr, r.stderr
        check = run_tern("check-config", str(srv.config_path))
        assert check.returncode == 78 and "at least 2048" in check.stderr, check
