"""`tern explain`: what tern would do with a message, without sending it, against a real config and the fake DNS
of the relay tests (send_helpers/fakedns.py through relay_helpers.LoggingDNS; tern's `[dns] nameservers`).

Covered: a local recipient (its Maildir path), an alias (local and remote members), a remote recipient from an
untrusted client (refused with the 550 5.7.1 tern really sends: cross-checked against a running tern with the same
config), a remote recipient with --auth (both MX hosts in preference order with their addresses), a [routes]
domain (the route host, no MX lookup), the DKIM key of the sender's domain and none for another, a recipient
domain that does not exist (the relay would bounce 550 5.1.2), --json, and the exit codes 0, 1, 64 and 78."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from sec_helpers import hash_password
from ternlib import free_port, tern_bin

RECORDS = {
    # Listed least preferred first: the order shown must come from the preferences, not from the zone.
    "far.test": {"MX": [(20, "mx2.far.test"), (10, "mx1.far.test")]},
    "mx1.far.test": {"A": ["192.0.2.10"]},
    "mx2.far.test": {"A": ["192.0.2.20"], "AAAA": ["2001:db8::20"]},
    # gone.test is absent: NXDOMAIN.
}

ROUTE_PORT = 2727
UNTRUSTED = "127.0.0.1"  # not in trusted_networks below, and the address a test client really connects from


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("dkim") / "s1.key"
    r = subprocess.run([str(tern_bin()), "dkim", "keygen", "--domain", "tern.test", "--selector", "s1",
                        "--algorithm", "ed25519", "--out", str(path)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return path


@pytest.fixture
def cfg(tern, dns, dkim_key):
    """A config with a local domain, a user, an alias with a local and a remote member, a route, a DKIM key,
    a trusted network that does not hold 127.0.0.1, and the fake DNS as the only nameserver."""
    return tern(start=False,
                hostname="mx.tern.test",
                local={"domains": ["tern.test"], "catch_all": False},
                submission={"listen": [f"127.0.0.1:{free_port()}"], "require_tls_for_auth": False},
                users=[{"name": "alice@tern.test", "password": hash_password("secret")}],
                aliases={"team@tern.test": ["alice@tern.test", "friend@far.test"]},
                relay={"trusted_networks": ["10.0.0.0/8"]},
                routes={"partner.test": {"host": "127.0.0.1", "port": ROUTE_PORT, "tls": "none"}},
                dns={"nameservers": [dns.nameserver]},
                dkim=[{"domain": "tern.test", "selector": "s1", "key_file": str(dkim_key)}])


def explain(srv, *args: str, json_out: bool = False) -> tuple[int, str]:
    cmd = [str(tern_bin()), "explain", "-c", str(srv.config_path), *args]
    if json_out:
        cmd.append("--json")
    r = subprocess.run(cmd, capture_output=True, timeout=90)
    return r.returncode, r.stdout.decode() + r.stderr.decode()


def explain_json(srv, *args: str) -> tuple[int, dict]:
    code, out = explain(srv, *args, json_out=True)
    return code, json.loads(out)


def rcpt(report: dict, address: str) -> dict:
    return next(r for r in report["recipients"] if r["address"] == address)


def test_local_recipient_is_its_mailbox_path(cfg):
    code, out = explain(cfg, "--from", "bob@far.test", "--to", "alice@tern.test")
    assert code == 0, out
    path = cfg.data_dir / "mailboxes" / "tern.test" / "alice" / "new"
    assert "recipient <alice@tern.test>: local" in out, out
    assert f"local mailbox alice@tern.test: {path}" in out, out
    assert "192.0.2.1 (the default: an untrusted internet client" in out, out
    code, rep = explain_json(cfg, "--from", "bob@far.test", "--to", "alice@tern.test")
    assert code == 0 and rep["accepted"] is True
    r = rcpt(rep, "alice@tern.test")
    assert r["decision"] == "local" and r["reply"]["code"] == 250
    assert r["targets"] == [{"kind": "local", "mailbox": "alice@tern.test", "path": str(path)}]
    assert rep["listener"]["name"] == "smtp" and rep["client"]["trusted"] is False


def test_alias_shows_its_expansion(cfg):
    code, out = explain(cfg, "--from", "bob@far.test", "--to", "team@tern.test")
    assert code == 0, out
    assert "recipient <team@tern.test>: alias" in out, out
    assert "expands to alice@tern.test (local), friend@far.test (remote)" in out, out
    assert "relay to friend@far.test (forwarded)" in out, out
    _, rep = explain_json(cfg, "--from", "bob@far.test", "--to", "team@tern.test")
    targets = rcpt(rep, "team@tern.test")["targets"]
    assert [(t["kind"], t.get("mailbox") or t.get("address")) for t in targets] == \
        [("local", "alice@tern.test"), ("remote", "friend@far.test")]
    assert targets[1]["forwarded"] is True and targets[1]["srs"]["applies"] is False


def test_remote_from_untrusted_is_refused_as_the_server_refuses_it(cfg):
    code, out = explain(cfg, "--ip", UNTRUSTED, "--from", "bob@far.test", "--to", "carol@far.test")
    assert code == 1, out
    assert "recipient <carol@far.test>: refused" in out, out
    assert "relay denied" in out and "not in relay.trusted_networks" in out, out
    _, rep = explain_json(cfg, "--ip", UNTRUSTED, "--from", "bob@far.test", "--to", "carol@far.test")
    r = rcpt(rep, "carol@far.test")
    assert r["decision"] == "refused" and rep["accepted"] is False
    assert (r["reply"]["code"], r["reply"]["enhanced"]) == (550, "5.7.1"), r
    # The same config, running, from the same address: the reply explain printed is the one sent.
    cfg.start()
    with cfg.session() as s:
        s.expect("MAIL FROM:<bob@far.test>", 250)
        code, text = s.cmd("RCPT TO:<carol@far.test>")
    assert f"{code} {text}" == r["reply"]["line"], (code, text, r["reply"])


def test_auth_relays_by_mx_in_preference_order(cfg, dns):
    code, out = explain(cfg, "--auth", "alice@tern.test", "--from", "alice@tern.test", "--to", "carol@far.test")
    assert code == 0, out
    assert "listener: submission" in out, out
    assert "recipient <carol@far.test>: relay" in out, out
    first, second = out.index("preference 10 mx1.far.test: 192.0.2.10"), out.index("preference 20 mx2.far.test: ")
    assert first < second, out
    # Both of mx2's addresses, in the order the resolver gave them (that order is the relay's too).
    mx2 = out[second:].splitlines()[0]
    assert "192.0.2.20" in mx2 and "2001:db8::20" in mx2, mx2
    _, rep = explain_json(cfg, "--auth", "alice@tern.test", "--from", "alice@tern.test", "--to", "carol@far.test")
    assert rep["client"]["authenticated"] == "alice@tern.test" and rep["client"]["relay_allowed"] is True
    route = rcpt(rep, "carol@far.test")["targets"][0]["route"]
    assert route["kind"] == "mx" and route["mx"]["implicit"] is False
    assert [(h["host"], h["preference"], sorted(h["addresses"])) for h in route["mx"]["hosts"]] == [
        ("mx1.far.test", 10, ["192.0.2.10"]), ("mx2.far.test", 20, ["192.0.2.20", "2001:db8::20"])]
    assert route["outcome"]["action"] == "deliver"
    # What the relay would connect to: mx1 first, then both of mx2's addresses, on outbound.mx_port.
    hops = [(h["host"], h["address"].rsplit(":", 1)[0]) for h in route["hops"]]
    assert hops[0] == ("mx1.far.test", "192.0.2.10"), hops
    assert sorted(hops[1:]) == [("mx2.far.test", "192.0.2.20"), ("mx2.far.test", "[2001:db8::20]")], hops
    assert route["tls"]["policy"] == "opportunistic"
    assert ("far.test", "MX") in dns.queries


def test_routed_domain_goes_to_the_route_host(cfg, dns):
    code, rep = explain_json(cfg, "--auth", "alice@tern.test", "--from", "alice@tern.test", "--to", "pat@partner.test")
    assert code == 0, rep
    route = rcpt(rep, "pat@partner.test")["targets"][0]["route"]
    assert route["kind"] == "route", route
    assert route["route"]["entry"] == '[routes] "partner.test"'
    assert (route["route"]["host"], route["route"]["port"]) == ("127.0.0.1", ROUTE_PORT)
    assert route["tls"]["policy"] == "none"
    assert [h["address"] for h in route["hops"]] == [f"127.0.0.1:{ROUTE_PORT}"]
    assert not any(name == "partner.test" for name, _ in dns.queries), dns.queries
    _, out = explain(cfg, "--auth", "alice@tern.test", "--from", "alice@tern.test", "--to", "pat@partner.test")
    assert f'route: [routes] "partner.test" -> 127.0.0.1:{ROUTE_PORT}' in out, out


def test_dkim_key_of_the_sender_domain_and_none_for_another(cfg):
    code, rep = explain_json(cfg, "--auth", "alice@tern.test", "--from", "alice@tern.test", "--to", "alice@tern.test")
    assert code == 0
    assert rep["dkim"]["signs"] is True
    assert rep["dkim"]["keys"] == [{"domain": "tern.test", "selector": "s1", "algorithm": "ed25519-sha256"}]
    _, out = explain(cfg, "--auth", "alice@tern.test", "--from", "alice@tern.test", "--to", "alice@tern.test")
    assert "key d=tern.test s=s1 a=ed25519-sha256: signs" in out, out
    # A trusted host sending for another domain: signed if a key covered it, and none does.
    code, rep = explain_json(cfg, "--ip", "10.1.2.3", "--from", "news@far.test", "--to", "alice@tern.test")
    assert code == 0 and rep["client"]["trusted_network"] == "10.0.0.0/8"
    assert rep["dkim"]["signs"] is False and rep["dkim"]["keys"] == []
    assert "no [[dkim]] key covers the From: domain far.test" in rep["dkim"]["why"]
    # Inbound mail from a stranger is never signed, even for our own domain's sender.
    _, rep = explain_json(cfg, "--from", "alice@tern.test", "--to", "alice@tern.test")
    assert rep["dkim"]["signs"] is False and "this is inbound mail" in rep["dkim"]["why"]


def test_nxdomain_recipient_domain_would_bounce(cfg):
    code, rep = explain_json(cfg, "--auth", "alice@tern.test", "--from", "alice@tern.test", "--to", "bob@gone.test")
    # Accepted at RCPT (the server does no DNS there); the relay would then bounce it.
    assert code == 0, rep
    route = rcpt(rep, "bob@gone.test")["targets"][0]["route"]
    assert route["outcome"]["action"] == "bounce", route
    assert route["outcome"]["reply"].startswith("550 5.1.2 "), route
    assert "does not exist" in route["mx"]["error"], route
    _, out = explain(cfg, "--auth", "alice@tern.test", "--from", "alice@tern.test", "--to", "bob@gone.test")
    assert "the relay would bounce: 550 5.1.2" in out, out


def test_unknown_local_user_is_refused_with_5_1_1(cfg):
    code, rep = explain_json(cfg, "--from", "bob@far.test", "--to", "nobody@tern.test", "--to", "alice@tern.test")
    assert code == 1
    r = rcpt(rep, "nobody@tern.test")
    assert r["decision"] == "refused" and (r["reply"]["code"], r["reply"]["enhanced"]) == (550, "5.1.1")
    assert rcpt(rep, "alice@tern.test")["decision"] == "local"


def test_usage_and_config_errors(cfg, tmp_path):
    code, out = explain(cfg, "--auth", "mallory@tern.test", "--from", "a@tern.test", "--to", "alice@tern.test")
    assert code == 64 and "no [[users]] entry" in out, out
    code, out = explain(cfg, "--from", "a@tern.test")
    assert code == 64, out
    bad = tmp_path / "bad.toml"
    bad.write_text('hostname = "mx.tern.test"\n[limits]\nmax_recipients = "many"\n')
    r = subprocess.run([str(tern_bin()), "explain", "-c", str(bad), "--from", "a@b.test", "--to", "c@d.test"],
                       capture_output=True, timeout=30)
    assert r.returncode == 78, r
    assert b"max_recipients" in r.stderr, r.stderr


def test_srs_rewrites_the_sender_of_a_forwarded_copy(tern, dns, tmp_path):
    secret = tmp_path / "srs.secret"
    r = subprocess.run([str(tern_bin()), "srs", "keygen", "--out", str(secret)], capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    srv = tern(start=False, local={"domains": ["tern.test"], "catch_all": False},
               aliases={"fwd@tern.test": "friend@far.test"}, srs={"secret_file": str(secret)},
               dns={"nameservers": [dns.nameserver]})
    code, rep = explain_json(srv, "--from", "bob@other.test", "--to", "fwd@tern.test")
    assert code == 0, rep
    target = rcpt(rep, "fwd@tern.test")["targets"][0]
    assert target["forwarded"] is True and target["srs"]["applies"] is True, target
    assert target["srs"]["sender"].startswith("SRS0=") and target["srs"]["sender"].endswith("@mx.tern.test")
    # What `tern srs reverse` makes of it is the original sender: explain used the real SRS code.
    back = subprocess.run([str(tern_bin()), "srs", "reverse", target["srs"]["sender"]],
                          env={**os.environ, "TERN_CONFIG": str(srv.config_path)}, capture_output=True, text=True,
                          timeout=20)
    assert back.stdout.strip() == "bob@other.test", back
