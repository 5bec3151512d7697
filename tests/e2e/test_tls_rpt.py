"""TLS-RPT (RFC 8460) aggregate reports of MX deliveries (docs/tls-rpt.md).

A fake DNS publishes remote.test (MX mx.remote.test -> 127.0.0.1, mta-sts.remote.test -> 127.0.0.1) and
`_smtp._tls.remote.test` TXT; the MX is an aiosmtpd peer with STARTTLS and a certificate for another name
(wrong-name.test, from the test CA of test_mta_sts.py), so opportunistic TLS works and MTA-STS enforce fails
(certificate-host-mismatch). tern runs with `[tls_rpt] enabled = true, interval = "2s"`.

Covered:
- mailto: run 1 delivers one message with no MTA-STS policy (a success under no-policy-found) while the
  TLSRPT record answers SERVFAIL (so the report is kept, not sent); tern stops gracefully (the counters are
  on disk); run 2 publishes the TLSRPT record and an MTA-STS enforce policy, and a second message is deferred
  (one sts failure). A report mail reaches the sink that reports.test routes to: RFC 8460 5.3 headers and
  subject, multipart/report; report-type="tlsrpt", a gzip attachment named per 5.1 whose JSON has the 4.4
  fields, and counts equal to what was sent, across the restart.
- testing: an MTA-STS testing policy and a self-signed MX certificate: the mail is delivered, and the report
  counts one sts failure (certificate-not-trusted) with the testing policy's lines and mx patterns.
- https: a `rua=https://reports.test:PORT/tlsrpt` record gets a POST of application/tlsrpt+gzip over TLS
  verified with outbound.mta_sts_ca_file.
Everything on 127.0.0.1; waits are on events (messages, requests, log lines), never fixed sleeps."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relay_helpers import LoggingDNS, Remote, log_tail, relay_config, route_to, wait_for, wait_gone
from ternlib import free_port
from test_mta_sts import POLICY_ENFORCE, POLICY_TESTING, PolicyServer, StsCerts
from test_relay_tls import BOB, TlsRemote, _leaf, deferred, send, server_context

HELO = "mx.tern-rpt.test"
RUA = "tlsrpt@reports.test"
TLSRPT = f"v=TLSRPTv1; rua=mailto:{RUA}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> StsCerts:
    c = StsCerts(tmp_path_factory.mktemp("tls-rpt-certs"))
    c.reports = _leaf(tmp_path_factory.mktemp("tls-rpt-https"), "reports", "DNS:reports.test",
                      (c.ca, c.ca.with_suffix(".key")))
    return c


def records() -> dict:
    return {
        "remote.test": {"MX": [(10, "mx.remote.test")]},
        "mx.remote.test": {"A": ["127.0.0.1"]},
        "mta-sts.remote.test": {"A": ["127.0.0.1"]},
        "reports.test": {"A": ["127.0.0.1"]},
        "_smtp._tls.remote.test": {"TXT": [TLSRPT]},
    }


def zone(dns: LoggingDNS) -> dict:
    """The live records of the fake DNS (both servers share one zone)."""
    return dns.udp.server.resolver.records


def rpt_config(dns, remote, https, certs, **routes) -> dict:
    return relay_config(
        routes=routes or None,
        dns={"nameservers": [dns.nameserver]},
        outbound={"mx_port": remote.port, "allow_networks": ["127.0.0.0/8"], "tls": "opportunistic",
                  "helo_name": HELO, "mta_sts_port": https.port, "mta_sts_ca_file": str(certs.ca)},
        tls_rpt={"enabled": True, "interval": "2s", "organization": "Tern Test Org"},
    )


def report_of(raw: bytes) -> tuple[email.message.EmailMessage, str, dict]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(parts) == 1, msg
    name = parts[0].get_filename()
    return msg, name, json.loads(gzip.decompress(parts[0].get_payload(decode=True)))


def totals(reports: list[dict]) -> dict:
    """(policy-type, 'ok' | result-type) -> count, summed over every report and policy."""
    out: dict = {}
    for r in reports:
        for p in r["policies"]:
            kind = p["policy"]["policy-type"]
            out[(kind, "ok")] = out.get((kind, "ok"), 0) + p["summary"]["total-successful-session-count"]
            out[(kind, "failed")] = out.get((kind, "failed"), 0) + p["summary"]["total-failure-session-count"]
            for d in p.get("failure-details", []):
                key = (kind, d["result-type"])
                out[key] = out.get(key, 0) + d["failed-session-count"]
    return {k: v for k, v in out.items() if v}


def check_shape(r: dict) -> None:
    assert r["organization-name"] == "Tern Test Org"
    assert r["contact-info"] == f"postmaster@{HELO}"
    assert r["report-id"].endswith(f".remote.test@{HELO}")
    start, end = r["date-range"]["start-datetime"], r["date-range"]["end-datetime"]
    assert start.endswith("Z") and end.endswith("Z") and start <= end, r["date-range"]
    for p in r["policies"]:
        assert p["policy"]["policy-domain"] == "remote.test"
        assert isinstance(p["policy"]["policy-string"], list)
        assert set(p["summary"]) == {"total-successful-session-count", "total-failure-session-count"}


def test_mailto_report_counts_both_runs_across_a_restart(tern, certs):
    with LoggingDNS(records()) as dns, PolicyServer(certs.policy, POLICY_ENFORCE) as https, \
            TlsRemote(tls=server_context(certs.mx_wrong)) as remote, Remote(hostname="reports.test") as sink:
        live = zone(dns)
        live["_smtp._tls.remote.test"] = "SERVFAIL"  # run 1: the report cannot be sent yet
        srv = tern(**rpt_config(dns, remote, https, certs, **{"reports.test": route_to(sink.port)}))

        # (a) no MTA-STS policy: opportunistic TLS to a certificate for another name works.
        qid = send(srv, "no policy")
        remote.wait_messages(1, srv=srv)
        wait_gone(srv, qid)
        # The report is due after the 2 s period and cannot go (SERVFAIL): kept for later.
        wait_for(lambda: "cannot look up the TLSRPT record" in srv.log(), what="a failed TLSRPT lookup")
        srv.stop()
        saved = srv.data_dir / "tls-rpt" / "counters.json"
        assert saved.exists(), log_tail(srv)
        assert "remote.test" in saved.read_text()
        assert not sink.messages

        # Run 2: the domain now publishes a TLSRPT record and an MTA-STS enforce policy.
        live["_smtp._tls.remote.test"] = {"TXT": [TLSRPT]}
        live["_mta-sts.remote.test"] = {"TXT": ["v=STSv1; id=20261203T000000;"]}
        srv.start()
        qid2 = send(srv, "enforce fails")
        deferred(srv, qid2, "451 4.7.5 MTA-STS policy of remote.test (enforce)")

        want = {("no-policy-found", "ok"): 1, ("sts", "failed"): 1, ("sts", "certificate-host-mismatch"): 1}

        def all_counted():
            got = [report_of(m.content) for m in sink.messages]
            return got if totals([g[2] for g in got]) == want else None
        try:
            got = wait_for(all_counted, what="reports counting both deliveries")
        except AssertionError:
            seen = [report_of(m.content)[2] for m in sink.messages]
            raise AssertionError(f"reports: {seen}; totals {totals(seen)}; log:\n{log_tail(srv, 80)}") from None

        for m in sink.messages:
            assert m.rcpt_tos == [RUA] and m.mail_from == f"postmaster@{HELO}", m
        for msg, name, r in got:
            check_shape(r)
            assert msg["TLS-Report-Domain"] == "remote.test"
            assert msg["TLS-Report-Submitter"] == HELO
            assert msg["Subject"] == f"Report Domain: remote.test Submitter: {HELO} Report-ID: <{r['report-id']}>"
            assert msg.get_content_type() == "multipart/report"
            assert msg.get_param("report-type") == "tlsrpt"
            assert any(p.get_content_type() == "text/plain" for p in msg.walk())
            sender, domain, begin, end = name.removesuffix(".json.gz").split("!")[:4]
            assert (sender, domain) == (HELO, "remote.test") and int(begin) < int(end), name
        sts = next(p for _, _, r in got for p in r["policies"] if p["policy"]["policy-type"] == "sts")
        assert "mode: enforce" in sts["policy"]["policy-string"], sts
        assert sts["policy"]["mx-host"] == ["mx.remote.test"], sts
        detail = sts["failure-details"][0]
        assert detail["receiving-mx-hostname"] == "mx.remote.test", detail
        assert detail["receiving-ip"] == "127.0.0.1", detail
        assert detail["failed-session-count"] == 1
        # The report's own delivery (a route) is never counted, and sent data is not sent again.
        wait_for(lambda: not (srv.data_dir / "tls-rpt" / "counters.json").exists(), what="the sent data removed")


class PostServer:
    """HTTPS on 127.0.0.1:port recording each POST as (path, headers, body)."""

    def __init__(self, pair):
        self.port = free_port()
        self.posts: list[tuple[str, dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                outer.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pair[0]), str(pair[1]))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "PostServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_https_rua_gets_a_post(tern, certs):
    with PostServer(certs.reports) as post, LoggingDNS(records()) as dns, \
            PolicyServer(certs.policy, POLICY_ENFORCE) as https, TlsRemote(tls=server_context(certs.mx_wrong)) as remote:
        zone(dns)["_smtp._tls.remote.test"] = {
            "TXT": [f"v=TLSRPTv1; rua=https://reports.test:{post.port}/tlsrpt/v1"]}
        srv = tern(**rpt_config(dns, remote, https, certs))
        qid = send(srv, "no policy, https report")
        remote.wait_messages(1, srv=srv)
        wait_gone(srv, qid)
        try:
            wait_for(lambda: post.posts, what="a POST of the report")
        except AssertionError:
            raise AssertionError(log_tail(srv, 60)) from None
        path, headers, body = post.posts[0]
        assert path == "/tlsrpt/v1"
        assert headers["content-type"] == "application/tlsrpt+gzip"
        assert headers["host"] == f"reports.test:{post.port}"
        r = json.loads(gzip.decompress(body))
        check_shape(r)
        assert totals([r]) == {("no-policy-found", "ok"): 1}, r
        assert "tls-rpt: report sent" in srv.log()


def test_testing_policy_failures_are_reported_while_mail_goes_on(tern, certs):
    with LoggingDNS(records()) as dns, PolicyServer(certs.policy, POLICY_TESTING) as https, \
            TlsRemote(tls=server_context(certs.mx_self)) as remote, Remote(hostname="reports.test") as sink:
        zone(dns)["_mta-sts.remote.test"] = {"TXT": ["v=STSv1; id=20261203T000001;"]}
        srv = tern(**rpt_config(dns, remote, https, certs, **{"reports.test": route_to(sink.port)}))
        qid = send(srv, "testing, self-signed")
        remote.wait_messages(1, srv=srv)  # testing: delivered over unverified TLS as before
        wait_gone(srv, qid)
        want = {("sts", "failed"): 1, ("sts", "certificate-not-trusted"): 1}
        def counted():
            rs = [report_of(m.content)[2] for m in sink.messages]
            return rs if totals(rs) == want else None
        try:
            got = wait_for(counted, what="a report of the testing failure")
        except AssertionError:
            seen = [report_of(m.content)[2] for m in sink.messages]
            raise AssertionError(f"reports: {seen}; log:\n{log_tail(srv, 60)}") from None
        sts = got[0]["policies"][0]
        assert "mode: testing" in sts["policy"]["policy-string"] and sts["policy"]["mx-host"] == ["*.remote.test"]
        assert "invalid peer certificate" in sts["failure-details"][0]["failure-reason-code"], sts
