"""MTA-STS (RFC 8461) for MX delivery (docs/mta-sts.md).

A fake DNS (dnslib, `[dns] nameservers`) publishes remote.test: MX mx.remote.test, A records for mx.remote.test
and mta-sts.remote.test (127.0.0.1), and (unless a test leaves it out) TXT `_mta-sts.remote.test`. A local HTTPS
server (http.server + ssl, certificate for mta-sts.remote.test signed by the test CA) serves the policy on
`outbound.mta_sts_port`; the MX is an aiosmtpd peer with STARTTLS (TlsRemote of test_relay_tls.py) on
`outbound.mx_port`; `outbound.mta_sts_ca_file` is the test CA. Everything on 127.0.0.1.

Covered: enforce + a certificate for mx.remote.test from the CA -> delivered over verified TLS; enforce + a
certificate for another name, or a self-signed one -> deferred 451 4.7.5 naming the policy, no MAIL ever sent;
enforce + an MX outside the policy's mx patterns -> deferred, no connection at all; testing + a self-signed
certificate -> delivered, and the "would have failed" warning logged; no TXT record -> delivered as before,
no policy fetched; a policy served with the wrong Content-Type -> no policy (delivered as before); a policy
fetched before a restart still applies after it from the disk cache, with the policy host gone."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from relay_helpers import LoggingDNS, log_tail, relay_config, wait_for, wait_gone
from ternlib import free_port
from test_relay_tls import BOB, TlsRemote, _ca, _leaf, _new_key, _openssl, deferred, send, server_context

POLICY_ENFORCE = "version: STSv1\r\nmode: enforce\r\nmx: mx.remote.test\r\nmax_age: 86400\r\n"
POLICY_TESTING = "version: STSv1\nmode: testing\nmx: *.remote.test\nmax_age: 86400\n"
POLICY_OTHER_MX = "version: STSv1\nmode: enforce\nmx: *.other.test\nmx: mail.remote.test\nmax_age: 86400\n"
WARNING = "relay: MTA-STS testing policy would have failed"


class StsCerts:
    def __init__(self, d: Path):
        ca = _ca(d, "sts-ca")
        self.ca = ca[0]
        self.policy = _leaf(d, "mta-sts", "DNS:mta-sts.remote.test", ca)
        self.mx_good = _leaf(d, "mx-good", "DNS:mx.remote.test", ca)
        self.mx_wrong = _leaf(d, "mx-wrong", "DNS:wrong-name.test", ca)
        key, cert = d / "mx-self.key", d / "mx-self.pem"
        _new_key(key)
        _openssl("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", "2",
                 "-subj", "/CN=mx.remote.test", "-addext", "subjectAltName=DNS:mx.remote.test")
        self.mx_self = (cert, key)


@pytest.fixture(scope="module")
def sts_certs(tmp_path_factory) -> StsCerts:
    return StsCerts(tmp_path_factory.mktemp("mta-sts-certs"))


class PolicyServer:
    """HTTPS on 127.0.0.1:port serving `body` at /.well-known/mta-sts.txt; .requests lists (path, Host)."""

    def __init__(self, pair: tuple[Path, Path], body: str, content_type: str = "text/plain; charset=utf-8"):
        self.port = free_port()
        self.body = body.encode()
        self.content_type = content_type
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Host")))
                if self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pair[0]), str(pair[1]))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "PolicyServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def records(txt: bool = True) -> dict:
    r = {
        "remote.test": {"MX": [(10, "mx.remote.test")]},
        "mx.remote.test": {"A": ["127.0.0.1"]},
        "mta-sts.remote.test": {"A": ["127.0.0.1"]},
    }
    if txt:
        r["_mta-sts.remote.test"] = {"TXT": ["v=STSv1; id=20261203T000000;"]}
    return r


def sts_srv(tern, dns: LoggingDNS, remote: TlsRemote, https: PolicyServer, certs: StsCerts):
    return tern(**relay_config(dns={"nameservers": [dns.nameserver]},
                               outbound={"mx_port": remote.port, "allow_networks": ["127.0.0.0/8"],
                                         "tls": "opportunistic", "mta_sts_port": https.port,
                                         "mta_sts_ca_file": str(certs.ca)}))


def wait_log(srv, text: str) -> str:
    return wait_for(lambda: text in srv.log() and srv.log(), what=f"{text!r} in the log")


def attempt_lines(srv) -> list[str]:
    return [line for line in srv.log().splitlines() if "relay: delivery attempt" in line and BOB in line]


def test_enforce_with_a_verified_certificate_delivers(tern, sts_certs):
    with LoggingDNS(records()) as dns, PolicyServer(sts_certs.policy, POLICY_ENFORCE) as https, \
            TlsRemote(tls=server_context(sts_certs.mx_good)) as remote:
        srv = sts_srv(tern, dns, remote, https, sts_certs)
        qid = send(srv, "enforce good")
        got = remote.wait_messages(1, srv=srv)[0]
        assert got.tls and got.rcpt_tos == [BOB], remote.commands
        wait_gone(srv, qid)
        assert ("_mta-sts.remote.test", "TXT") in dns.queries, dns.queries
        assert https.requests == [("/.well-known/mta-sts.txt", "mta-sts.remote.test")], https.requests
        lines = attempt_lines(srv)
        assert lines and "/verified" in lines[-1], f"TLS must be verified: {lines}\n{log_tail(srv)}"
        assert "relay: MTA-STS policy fetched" in srv.log()


@pytest.mark.parametrize("cert", ["mx_wrong", "mx_self"])
def test_enforce_with_a_bad_certificate_defers_and_sends_nothing(tern, sts_certs, cert):
    with LoggingDNS(records()) as dns, PolicyServer(sts_certs.policy, POLICY_ENFORCE) as https, \
            TlsRemote(tls=server_context(getattr(sts_certs, cert))) as remote:
        srv = sts_srv(tern, dns, remote, https, sts_certs)
        qid = send(srv, f"enforce {cert}")
        status = deferred(srv, qid, "451 4.7.5 MTA-STS policy of remote.test (enforce): host mx.remote.test[127.0.0.1]: ")
        assert "certificate" in status["last_reply"].lower(), status
        # Nothing went in the clear: STARTTLS was tried, no MAIL on any connection, no message.
        assert remote.verbs("STARTTLS"), remote.commands
        assert not remote.verbs("MAIL") and not remote.messages, remote.commands


def test_enforce_with_an_mx_outside_the_policy_defers_without_connecting(tern, sts_certs):
    with LoggingDNS(records()) as dns, PolicyServer(sts_certs.policy, POLICY_OTHER_MX) as https, \
            TlsRemote(tls=server_context(sts_certs.mx_good)) as remote:
        probes = remote.total  # TlsRemote's start-up probe connects once
        srv = sts_srv(tern, dns, remote, https, sts_certs)
        qid = send(srv, "enforce wrong mx")
        status = deferred(srv, qid, "451 4.7.5 MTA-STS policy of remote.test (enforce): no MX host matches the policy")
        assert "mx.remote.test" in status["last_reply"] and "*.other.test" in status["last_reply"], status
        assert remote.total == probes and not remote.messages, remote.commands


def test_testing_with_a_bad_certificate_delivers_and_warns(tern, sts_certs):
    with LoggingDNS(records()) as dns, PolicyServer(sts_certs.policy, POLICY_TESTING) as https, \
            TlsRemote(tls=server_context(sts_certs.mx_self)) as remote:
        srv = sts_srv(tern, dns, remote, https, sts_certs)
        qid = send(srv, "testing self-signed")
        got = remote.wait_messages(1, srv=srv)[0]
        assert got.tls, remote.commands  # opportunistic as before: encrypted, unverified
        wait_gone(srv, qid)
        log = wait_log(srv, WARNING)
        line = next(line for line in log.splitlines() if WARNING in line)
        assert "certificate not verified for mx.remote.test" in line, line
        assert https.requests, "the policy must have been fetched"


def test_no_txt_record_delivers_as_before(tern, sts_certs):
    with LoggingDNS(records(txt=False)) as dns, PolicyServer(sts_certs.policy, POLICY_ENFORCE) as https, \
            TlsRemote(tls=server_context(sts_certs.mx_wrong)) as remote:
        srv = sts_srv(tern, dns, remote, https, sts_certs)
        qid = send(srv, "no sts")
        got = remote.wait_messages(1, srv=srv)[0]
        assert got.tls, remote.commands
        wait_gone(srv, qid)
        assert ("_mta-sts.remote.test", "TXT") in dns.queries, dns.queries
        assert https.requests == [], "no record, no fetch"
        assert WARNING not in srv.log()


def test_a_policy_that_is_not_text_plain_is_no_policy(tern, sts_certs):
    with LoggingDNS(records()) as dns, \
            PolicyServer(sts_certs.policy, POLICY_ENFORCE, content_type="text/html") as https, \
            TlsRemote(tls=server_context(sts_certs.mx_wrong)) as remote:
        srv = sts_srv(tern, dns, remote, https, sts_certs)
        qid = send(srv, "html policy")
        remote.wait_messages(1, srv=srv)
        wait_gone(srv, qid)
        assert https.requests, "the policy was asked for"
        assert "cannot fetch the MTA-STS policy" in srv.log() and "not text/plain" in srv.log()


def test_a_policy_survives_a_restart_on_disk(tern, sts_certs):
    # RFC 8461 5.1: policies are kept for max_age. After a restart, with the policy host unreachable, the enforce
    # policy still applies from <data_dir>/mta-sts/ (the session is verified TLS, which opportunistic never is).
    with LoggingDNS(records()) as dns, TlsRemote(tls=server_context(sts_certs.mx_good)) as remote:
        with PolicyServer(sts_certs.policy, POLICY_ENFORCE) as https:
            srv = sts_srv(tern, dns, remote, https, sts_certs)
            wait_gone(srv, send(srv, "before restart"))
            assert len(https.requests) == 1, https.requests
        cached = srv.data_dir / "mta-sts" / "remote.test.policy"
        text = cached.read_text()
        assert "mode: enforce" in text and "mx: mx.remote.test" in text, text
        srv.restart()
        qid = send(srv, "after restart")
        remote.wait_messages(2, srv=srv)
        wait_gone(srv, qid)
        lines = attempt_lines(srv)
        assert len(lines) >= 2 and "/verified" in lines[-1], f"enforce must still apply: {lines}\n{log_tail(srv)}"
        assert "cannot fetch the MTA-STS policy" not in srv.log(), log_tail(srv)
