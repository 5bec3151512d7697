"""DANE (RFC 7672) for MX delivery and for routes with `dane = true` (docs/dane.md).

A real authoritative server (BIND's named, dnssec_helpers.SignedDNS) serves a DNSSEC-signed root zone on
127.0.0.1: remote.test MX mx.remote.test, mx.remote.test A 127.0.0.1 and (per test) TLSA records for
`_<port>._tcp.mx.remote.test`, where <port> is the peer's (`outbound.mx_port`). Its KSK is tern's
`dns.dnssec_trust_anchor`; tern's DNSSEC resolver validates every answer itself. The MX is an aiosmtpd peer with
STARTTLS (TlsRemote of test_relay_tls.py). Everything on 127.0.0.1.

Covered: 3 1 1 matching a self-signed certificate (untrusted by webpki) -> delivered, logged as DANE verified;
3 1 1 not matching -> deferred 451 4.7.5 with the DANE reason, no MAIL; 2 1 1 naming the test CA, with the
chain sent by the peer and the right name -> delivered; the same with a certificate for another name ->
deferred; TLSA records but no STARTTLS -> deferred, never cleartext; a TLSA RRset whose signature does not
verify (bogus) -> deferred naming the lookup, never downgraded; a signed zone without TLSA -> opportunistic
as before; the fake DNS without DNSSEC -> opportunistic as before, one warning that DANE is off;
`outbound.dane = false` -> no DANE; a route with `dane = true` -> its host's TLSA records apply; DANE beats
an MTA-STS enforce policy whose certificate check would fail."""

from __future__ import annotations

import pytest

from dnssec_helpers import SignedDNS, tlsa_211, tlsa_311
from relay_helpers import LoggingDNS, log_tail, relay_config, wait_for, wait_gone
from test_mta_sts import POLICY_ENFORCE, PolicyServer, StsCerts
from test_relay_tls import BOB, TlsRemote, _ca, _leaf, _new_key, _openssl, deferred, send, server_context

VERIFIED = "relay: DANE verified"
DANE_OFF = "dane: the resolver does not return DNSSEC records; DANE is off until it does"


class DaneCerts:
    def __init__(self, d):
        self.self_signed = self._self_signed(d, "mx-self")
        self.other = self._self_signed(d, "mx-other")
        ca = _ca(d, "dane-ca")
        self.ca = ca[0]
        leaf = _leaf(d, "mx-ta", "DNS:mx.remote.test", ca)
        wrong = _leaf(d, "mx-ta-wrong", "DNS:wrong-name.test", ca)
        # The peer sends its chain: leaf then the CA (RFC 7672 3.1.2: the TA must be in it).
        self.chain = self._chain(d, "mx-ta-chain", leaf, ca[0])
        self.chain_wrong_name = self._chain(d, "mx-ta-wrong-chain", wrong, ca[0])

    @staticmethod
    def _self_signed(d, name):
        key, cert = d / f"{name}.key", d / f"{name}.pem"
        _new_key(key)
        _openssl("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", "2",
                 "-subj", "/CN=mx.remote.test", "-addext", "subjectAltName=DNS:mx.remote.test")
        return cert, key

    @staticmethod
    def _chain(d, name, leaf, ca):
        path = d / f"{name}.pem"
        path.write_text(leaf[0].read_text() + ca.read_text())
        return path, leaf[1]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> DaneCerts:
    return DaneCerts(tmp_path_factory.mktemp("dane-certs"))


@pytest.fixture(scope="module")
def sts_certs(tmp_path_factory) -> StsCerts:
    return StsCerts(tmp_path_factory.mktemp("dane-sts-certs"))


def zone(port: int, tlsa: list[str], extra: list[str] = ()) -> list[str]:
    return [
        "remote.test. MX 10 mx.remote.test.",
        "mx.remote.test. A 127.0.0.1",
        *[f"_{port}._tcp.mx.remote.test. TLSA {t}" for t in tlsa],
        *extra,
    ]


def dane_srv(tern, dns, remote, outbound: dict | None = None, anchor: bool = True, **extra):
    dns_cfg = {"nameservers": [dns.nameserver]}
    if anchor:
        dns_cfg["dnssec_trust_anchor"] = str(dns.trust_anchor)
    return tern(**relay_config(dns=dns_cfg,
                               outbound={"mx_port": remote.port, "allow_networks": ["127.0.0.0/8"],
                                         "tls": "opportunistic", **(outbound or {})}, **extra))


def attempt_lines(srv) -> list[str]:
    return [line for line in srv.log().splitlines() if "relay: delivery attempt" in line and BOB in line]


def assert_delivered(srv, remote, qid, verified: bool):
    got = remote.wait_messages(1, srv=srv)[0]
    assert got.tls and got.rcpt_tos == [BOB], remote.commands
    wait_gone(srv, qid)
    lines = attempt_lines(srv)
    assert lines, log_tail(srv)
    if verified:
        assert VERIFIED in srv.log(), log_tail(srv)
        assert "/verified" in lines[-1], f"TLS must be verified: {lines}\n{log_tail(srv)}"
    else:
        assert VERIFIED not in srv.log(), log_tail(srv)


def assert_nothing_sent(remote):
    assert not remote.verbs("MAIL") and not remote.messages, remote.commands


# ---------------------------------------------------------------- DANE-EE


def test_dane_ee_match_delivers_to_a_self_signed_certificate(tern, tmp_path, certs):
    with TlsRemote(tls=server_context(certs.self_signed)) as remote, \
            SignedDNS(tmp_path, zone(remote.port, [tlsa_311(certs.self_signed[0])])) as dns:
        srv = dane_srv(tern, dns, remote)
        qid = send(srv, "dane 3 1 1")
        assert_delivered(srv, remote, qid, verified=True)
        assert DANE_OFF not in srv.log()


def test_dane_ee_mismatch_defers_and_sends_nothing(tern, tmp_path, certs):
    with TlsRemote(tls=server_context(certs.self_signed)) as remote, \
            SignedDNS(tmp_path, zone(remote.port, [tlsa_311(certs.other[0])])) as dns:
        srv = dane_srv(tern, dns, remote)
        qid = send(srv, "dane mismatch")
        deferred(srv, qid, "451 4.7.5 DANE: certificate of mx.remote.test does not match its TLSA records (3 1 1)")
        assert remote.verbs("STARTTLS"), remote.commands
        assert_nothing_sent(remote)


# ---------------------------------------------------------------- DANE-TA


def test_dane_ta_with_the_chain_and_the_right_name_delivers(tern, tmp_path, certs):
    with TlsRemote(tls=server_context(certs.chain)) as remote, \
            SignedDNS(tmp_path, zone(remote.port, [tlsa_211(certs.ca)])) as dns:
        srv = dane_srv(tern, dns, remote)
        qid = send(srv, "dane 2 1 1")
        assert_delivered(srv, remote, qid, verified=True)


def test_dane_ta_with_the_wrong_name_defers(tern, tmp_path, certs):
    with TlsRemote(tls=server_context(certs.chain_wrong_name)) as remote, \
            SignedDNS(tmp_path, zone(remote.port, [tlsa_211(certs.ca)])) as dns:
        srv = dane_srv(tern, dns, remote)
        qid = send(srv, "dane 2 1 1 wrong name")
        status = deferred(srv, qid, "451 4.7.5 DANE: certificate of mx.remote.test does not match its TLSA "
                                    "records (2 1 1; 2 1 1 matched a certificate of the chain, but")
        assert "does not verify for mx.remote.test" in status["last_reply"], status
        assert_nothing_sent(remote)


# ---------------------------------------------------------------- never cleartext, never downgraded


def test_tlsa_without_starttls_defers(tern, tmp_path, certs):
    with TlsRemote(tls=None) as remote, \
            SignedDNS(tmp_path, zone(remote.port, [tlsa_311(certs.self_signed[0])])) as dns:
        srv = dane_srv(tern, dns, remote)
        qid = send(srv, "dane no starttls")
        deferred(srv, qid, "451 4.7.5 DANE: host mx.remote.test[127.0.0.1]: TLS is required but the server does "
                           "not offer STARTTLS")
        assert_nothing_sent(remote)


def test_a_bogus_tlsa_rrset_defers_naming_the_lookup(tern, tmp_path, certs):
    # The TLSA record is changed after signing: its RRSIG no longer verifies.
    def tamper(text: str) -> str:
        return text.replace("TLSA\t3 1 1 (", "TLSA\t3 0 1 (", 1)

    with TlsRemote(tls=server_context(certs.self_signed)) as remote, \
            SignedDNS(tmp_path, zone(remote.port, [tlsa_311(certs.self_signed[0])]), tamper=tamper) as dns:
        srv = dane_srv(tern, dns, remote)
        qid = send(srv, "dane bogus")
        deferred(srv, qid, f"451 4.7.5 DANE: DNSSEC lookup of _{remote.port}._tcp.mx.remote.test failed: ")
        assert remote.total <= 1, f"the host must not be used: {remote.commands}"  # 1: TlsRemote's own probe
        assert_nothing_sent(remote)


# ---------------------------------------------------------------- no DANE: as before


def test_a_signed_zone_without_tlsa_is_opportunistic(tern, tmp_path, certs):
    with TlsRemote(tls=server_context(certs.self_signed)) as remote, \
            SignedDNS(tmp_path, zone(remote.port, [])) as dns:
        srv = dane_srv(tern, dns, remote)
        qid = send(srv, "signed, no tlsa")
        assert_delivered(srv, remote, qid, verified=False)
        assert DANE_OFF not in srv.log()


def test_a_resolver_without_dnssec_turns_dane_off_with_one_warning(tern, certs):
    # The fake DNS has no DNSSEC at all (and no trust anchor is given: hickory's root anchors).
    with TlsRemote(tls=server_context(certs.self_signed)) as remote, \
            LoggingDNS({"remote.test": {"MX": [(10, "mx.remote.test")]},
                        "mx.remote.test": {"A": ["127.0.0.1"]}}) as dns:
        srv = dane_srv(tern, dns, remote, anchor=False)
        for i in range(2):
            qid = send(srv, f"no dnssec {i}")
            remote.wait_messages(i + 1, srv=srv)
            wait_gone(srv, qid)
        assert srv.log().count(DANE_OFF) == 1, log_tail(srv)
        assert VERIFIED not in srv.log()
        assert ("", "DNSKEY") in dns.queries, dns.queries  # the probe (LoggingDNS shows the root as "")


def test_outbound_dane_false_turns_it_off(tern, tmp_path, certs):
    with TlsRemote(tls=server_context(certs.self_signed)) as remote, \
            SignedDNS(tmp_path, zone(remote.port, [tlsa_311(certs.other[0])])) as dns:
        srv = dane_srv(tern, dns, remote, outbound={"dane": False})
        qid = send(srv, "dane off")
        assert_delivered(srv, remote, qid, verified=False)


# ---------------------------------------------------------------- routes, MTA-STS


def test_a_route_with_dane_uses_its_hosts_tlsa(tern, tmp_path, certs):
    with TlsRemote(tls=server_context(certs.self_signed)) as remote, \
            SignedDNS(tmp_path, zone(remote.port, [tlsa_311(certs.other[0])])) as dns:
        routes = {"remote.test": {"host": "mx.remote.test", "port": remote.port, "dane": True}}
        srv = dane_srv(tern, dns, remote, routes=routes)
        qid = send(srv, "route dane mismatch")
        deferred(srv, qid, "451 4.7.5 DANE: certificate of mx.remote.test does not match its TLSA records (3 1 1)")
        assert_nothing_sent(remote)


def test_dane_beats_mta_sts(tern, tmp_path, certs, sts_certs):
    # An enforce policy for mx.remote.test, whose self-signed certificate would fail its check; the host's
    # TLSA record matches, and DANE wins (RFC 8461 2).
    with TlsRemote(tls=server_context(certs.self_signed)) as remote, \
            PolicyServer(sts_certs.policy, POLICY_ENFORCE) as https, \
            SignedDNS(tmp_path, zone(remote.port, [tlsa_311(certs.self_signed[0])],
                                     ['_mta-sts.remote.test. TXT "v=STSv1; id=20261203T000000;"',
                                      "mta-sts.remote.test. A 127.0.0.1"])) as dns:
        srv = dane_srv(tern, dns, remote, outbound={"mta_sts_port": https.port,
                                                     "mta_sts_ca_file": str(sts_certs.ca)})
        qid = send(srv, "dane over sts")
        assert_delivered(srv, remote, qid, verified=True)
        wait_for(lambda: https.requests, what="the MTA-STS policy fetched")
