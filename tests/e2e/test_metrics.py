"""`GET /metrics` on the admin listener (Prometheus text format 0.0.4): after a known sequence of sessions,
messages and deliveries, every counter moved by exactly what happened (deltas between a scrape before and one
after), every family has the right `# TYPE`, the histograms' counts match the counters, the gauges describe the
queue and the sessions as they are, and no label value is a raw recipient domain outside `[admin]
metrics_domains`.

The parser is admin_helpers.parse_prometheus (written in the test: `# TYPE` lines, samples with labels); a
malformed line fails the scrape. Counters that move after the SMTP reply (deliveries, bounces) are polled for,
bounded."""

from __future__ import annotations

import math

import pytest

from admin_helpers import histogram, parse_prometheus, ternx, wait_metric  # noqa: F401  (ternx is a fixture)
from relay_helpers import (ALICE, Remote, closed_port, relay_config, route_to, tern_queue, wait_for,
                           wait_state)
from sec_helpers import ALICE_PW, Client, Ports, tls_config
from ternlib import LOCAL_DOMAIN, RawSMTP, make_message

KEPT = "carol@kept.test"  # kept.test is in metrics_domains: its own label value
OTHER = "dan@remote.test"  # remote.test is not: "other"
NOBODY = "nobody@remote.test"  # the sink refuses it (550): failed, a bounce to alice
DEFERRED = "eve@closed.test"  # routed to a closed port: deferred for an hour
RAW_DOMAINS = ("remote.test", "closed.test", LOCAL_DOMAIN, "example.test")

TYPES = {
    "tern_smtp_connections_total": "counter",
    "tern_messages_received_total": "counter",
    "tern_delivery_attempts_total": "counter",
    "tern_bounces_total": "counter",
    "tern_auth_failures_total": "counter",
    "tern_tls_sessions_total": "counter",
    "tern_smtp_sessions_active": "gauge",
    "tern_queue_messages": "gauge",
    "tern_queue_oldest_seconds": "gauge",
    "tern_storage_free_bytes": "gauge",
    "tern_message_size_bytes": "histogram",
    "tern_accept_latency_seconds": "histogram",
    "tern_delivery_latency_seconds": "histogram",
}

N_LOCAL = 3

# The sequence test waits (bounded) on several asynchronous counters; room for a slow CI machine.
pytestmark = pytest.mark.timeout(120)


def metrics_srv(ternx, tmp_path, remote, **extra):
    ports = Ports()
    cfg = relay_config(routes={"kept.test": route_to(remote.port), "remote.test": route_to(remote.port),
                               "closed.test": route_to(closed_port())},
                       admin={"metrics_domains": ["kept.test"]},
                       # 127.0.0.2 is a stranger: it may not relay.
                       relay={"trusted_networks": ["127.0.0.1/32"]},
                       queue={"retry_schedule": ["1h"], "max_received_headers": 5})
    cfg.update(tls_config(tmp_path, ports))
    cfg.update(extra)
    srv = ternx(**cfg)
    srv.ports = ports
    return srv


def delta(before, after, name: str, **labels) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def hist_count(s, name: str) -> float:
    return s.value(name + "_count")


def looped_message(hops: int) -> bytes:
    received = b"".join(b"Received: from hop%d.example.test by hop.example.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                        % i for i in range(hops))
    return received + make_message("looping", sender="someone@example.test", to=ALICE)


def test_counters_after_a_known_sequence(ternx, tmp_path):
    with Remote() as remote:
        remote.script.rcpt_replies[NOBODY] = "550 5.1.1 no such user"
        srv = metrics_srv(ternx, tmp_path, remote)
        before = srv.admin.scrape()

        # N messages accepted on smtp for a local mailbox.
        for i in range(N_LOCAL):
            srv.deliver("friend@example.test", ALICE, make_message(f"local {i}", sender="friend@example.test"))
        srv.wait_messages(ALICE, N_LOCAL)

        # A refused recipient (relaying for an untrusted client) and a message refused after its final dot
        # (more Received fields than queue.max_received_headers: a loop, RFC 5321 6.3).
        with Client(srv.port, source="127.0.0.2") as c:
            c.start()
            c.expect("MAIL FROM:<someone@example.test>", 250)
            code, text = c.cmd(f"RCPT TO:<{OTHER}>")
            assert 500 <= code < 600, (code, text)
            c.expect("QUIT", 221)
        with RawSMTP(srv.host, srv.port) as c:
            c.start()
            c.expect("MAIL FROM:<someone@example.test>", 250)
            c.expect(f"RCPT TO:<{ALICE}>", 250)
            c.expect("DATA", 354)
            c.send(looped_message(6) + b".\r\n")
            code, lines = c.read_reply()
            assert code == 554, (code, lines)
            c.expect("QUIT", 221)

        # Relayed to the sink: one to a kept domain, one to "other"; one deferred; one failed (a bounce).
        srv.deliver(ALICE, KEPT, make_message("kept", sender=ALICE, to=KEPT))
        srv.deliver(ALICE, OTHER, make_message("other", sender=ALICE, to=OTHER))
        q_deferred = srv.deliver(ALICE, DEFERRED, make_message("deferred", sender=ALICE, to=DEFERRED))
        srv.deliver(ALICE, NOBODY, make_message("failed", sender=ALICE, to=NOBODY))
        remote.wait_messages(2, srv=srv)
        wait_state(srv, q_deferred, DEFERRED, "deferred")
        got_mail = srv.wait_messages(ALICE, N_LOCAL + 1, timeout=20)
        assert sum(b"multipart/report" in m for m in got_mail) == 1, "one bounce for nobody@remote.test"

        # A failed AUTH on submission (after STARTTLS), a STARTTLS session on smtp, an implicit-TLS session.
        with Client(srv.ports.submission) as c:
            c.start()
            c.starttls()
            c.ehlo()
            code, _ = c.auth_plain(ALICE, ALICE_PW + "-wrong")
            assert code == 535, code
            c.expect("QUIT", 221)
        with Client(srv.port) as c:
            c.start()
            c.starttls()
            c.ehlo()
            c.expect("QUIT", 221)
        with Client(srv.ports.submissions, implicit_tls=True) as c:
            c.start()
            c.expect("QUIT", 221)

        smtp_sessions = N_LOCAL + 2 + 4 + 1  # local, the two refusals, four relayed, STARTTLS
        accepted = N_LOCAL + 4
        expected = {
            ("tern_smtp_connections_total", (("listener", "smtp"), ("outcome", "accepted"))): smtp_sessions,
            ("tern_smtp_connections_total", (("listener", "submission"), ("outcome", "accepted"))): 1,
            ("tern_smtp_connections_total", (("listener", "submissions"), ("outcome", "accepted"))): 1,
            ("tern_smtp_connections_total", (("listener", "smtp"), ("outcome", "refused"))): 0,
            ("tern_messages_received_total", (("listener", "smtp"), ("outcome", "accepted"))): accepted,
            ("tern_messages_received_total", (("listener", "smtp"), ("outcome", "rejected"))): 1,
            ("tern_messages_received_total", (("listener", "submission"), ("outcome", "accepted"))): 0,
            # Local copies: the N messages and the bounce.
            ("tern_delivery_attempts_total", (("domain_class", "local"), ("outcome", "delivered"))): N_LOCAL + 1,
            ("tern_delivery_attempts_total", (("domain_class", "kept.test"), ("outcome", "delivered"))): 1,
            ("tern_delivery_attempts_total", (("domain_class", "other"), ("outcome", "delivered"))): 1,
            ("tern_delivery_attempts_total", (("domain_class", "other"), ("outcome", "deferred"))): 1,
            ("tern_delivery_attempts_total", (("domain_class", "other"), ("outcome", "failed"))): 1,
            ("tern_bounces_total", ()): 1,
            ("tern_auth_failures_total", ()): 1,
        }

        def got(s):
            return {k: s.value(k[0], **dict(k[1])) - before.value(k[0], **dict(k[1])) for k in expected}

        def reached(s):
            return got(s) == expected and s.total("tern_tls_sessions_total") - before.total(
                "tern_tls_sessions_total") >= 3

        # On a mismatch the other checks still run on the last scrape; the test fails at the end with all of it.
        problems: list[str] = []
        try:
            after = wait_metric(srv.admin, reached, "every counter to reach its value", timeout=12)
        except AssertionError:
            after = srv.admin.scrape()
            diffs = {f"{k[0]}{dict(k[1])}": (v, expected[k]) for k, v in got(after).items() if v != expected[k]}
            problems.append(f"counters off (got, expected): {diffs}")

        # TLS: three inbound sessions, labelled with the version rustls negotiated; none outbound (tls = none).
        tls = [(lab, v - before.value("tern_tls_sessions_total", **lab))
               for lab, v in after.series("tern_tls_sessions_total")]
        inbound = [(lab, d) for lab, d in tls if lab.get("direction") == "inbound" and d]
        assert sum(d for _, d in inbound) == 3, tls
        for lab, _ in inbound:
            assert set(lab) == {"direction", "version"}, lab
            assert lab["version"] in ("TLSv1_2", "TLSv1_3", "TLSv1.2", "TLSv1.3"), lab
        assert sum(d for lab, d in tls if lab.get("direction") == "outbound") == 0, tls

        # Histograms: one size and one accept latency per accepted message; one delivery latency per final
        # remote outcome (delivered to kept.test and other, failed). Local copies are final at the 250, their
        # latency is the accept latency.
        for name, n in (("tern_message_size_bytes", accepted), ("tern_accept_latency_seconds", accepted),
                        ("tern_delivery_latency_seconds", 3)):
            _, s_before, c_before = histogram(before, name) if before.has(name + "_count") else ([], 0.0, 0.0)
            _, s_after, c_after = histogram(after, name)
            assert c_after - c_before == n, f"{name}_count moved by {c_after - c_before}, expected {n}"
            assert s_after > s_before, f"{name}_sum did not grow"
        sizes, size_sum, _ = histogram(after, "tern_message_size_bytes")
        assert size_sum >= accepted * len(make_message("x")), size_sum
        assert any(le <= 65536 and c > 0 for le, c in sizes), sizes
        _, lat_sum, lat_count = histogram(after, "tern_accept_latency_seconds")
        assert 0 < lat_sum / lat_count < 5, "accept latency is in seconds"

        check_types(after)
        check_labels(after)
        assert not problems, "\n".join(problems)


def check_types(s) -> None:
    for name, kind in TYPES.items():
        assert s.types.get(name) == kind, f"{name}: # TYPE {s.types.get(name)!r}, expected {kind}"


def check_labels(s) -> None:
    """Every label set as the contract says; no raw domain but the kept one."""
    allowed = {
        "tern_smtp_connections_total": {"listener": {"smtp", "submission", "submissions"},
                                        "outcome": {"accepted", "refused"}},
        "tern_messages_received_total": {"listener": {"smtp", "submission", "submissions"},
                                         "outcome": {"accepted", "rejected"}},
        "tern_delivery_attempts_total": {"outcome": {"delivered", "deferred", "failed"},
                                         "domain_class": {"kept.test", "other", "local"}},
        "tern_queue_messages": {"state": {"pending", "deferred", "held"}},
    }
    for name, labels, _ in s.samples:
        for raw in RAW_DOMAINS:
            assert not any(raw in v for v in labels.values()), f"raw domain {raw} in a label: {name}{labels}"
        fam = s.family_of(name)
        if fam in allowed:
            assert set(labels) == set(allowed[fam]), f"{name} labels {labels}"
            for k, vals in allowed[fam].items():
                assert labels[k] in vals, f"{name}{labels}: {k}={labels[k]!r} not in {sorted(vals)}"
        elif name in ("tern_bounces_total", "tern_auth_failures_total", "tern_smtp_sessions_active",
                      "tern_queue_oldest_seconds", "tern_storage_free_bytes"):
            assert labels == {}, f"{name}{labels}"


def test_metric_families_exist_from_the_start(ternx):
    """A dashboard sees 0, not nothing, for the series that describe state, right after start."""
    srv = ternx()
    s = srv.admin.scrape()
    for name in ("tern_bounces_total", "tern_auth_failures_total", "tern_smtp_sessions_active",
                 "tern_queue_oldest_seconds", "tern_storage_free_bytes"):
        assert s.has(name), f"{name} missing from a fresh scrape"
        assert s.types.get(name) == TYPES[name], name
    for state in ("pending", "deferred", "held"):
        assert s.value("tern_queue_messages", state=state) == 0, state
    assert s.value("tern_bounces_total") == 0
    assert s.value("tern_storage_free_bytes") > 0


def test_queue_gauges_follow_the_queue(ternx):
    port = closed_port()
    srv = ternx(**relay_config(routes={"remote.test": route_to(port)}))
    q1 = srv.deliver(ALICE, OTHER, make_message("one", sender=ALICE, to=OTHER))
    q2 = srv.deliver(ALICE, "zoe@remote.test", make_message("two", sender=ALICE, to="zoe@remote.test"))
    wait_state(srv, q1, OTHER, "deferred")
    wait_state(srv, q2, "zoe@remote.test", "deferred")

    def state_is(deferred: int, held: int):
        return lambda s: (s.value("tern_queue_messages", state="deferred") == deferred
                          and s.value("tern_queue_messages", state="held") == held
                          and s.value("tern_queue_messages", state="pending") == 0)

    s = wait_metric(srv.admin, state_is(2, 0), "2 deferred, 0 held")
    oldest = s.value("tern_queue_oldest_seconds")
    assert 0 <= oldest < 120, oldest
    assert tern_queue(srv, "hold", q1).returncode == 0
    wait_metric(srv.admin, state_is(1, 1), "1 deferred, 1 held after `tern queue hold`")
    assert tern_queue(srv, "delete", q1).returncode == 0
    assert tern_queue(srv, "delete", q2).returncode == 0
    s = wait_metric(srv.admin, state_is(0, 0), "an empty queue after deleting both")
    assert s.value("tern_queue_oldest_seconds") == 0


def test_sessions_active_and_refused_connections(ternx):
    srv = ternx(limits={"max_connections_per_ip": 2})
    before = srv.admin.scrape()
    a = Client(srv.port, source="127.0.0.9")
    b = Client(srv.port, source="127.0.0.9")
    try:
        a.start()
        b.start()
        wait_metric(srv.admin, lambda s: s.value("tern_smtp_sessions_active") == 2, "2 active sessions")
        # A third from the same client is refused (421) and counted as refused, not as a session.
        with Client(srv.port, source="127.0.0.9") as c:
            code, lines = c.read_reply()
            assert code == 421, (code, lines)
        s = wait_metric(srv.admin, lambda s: delta(before, s, "tern_smtp_connections_total", listener="smtp",
                                                   outcome="refused") == 1, "one refused connection")
        assert s.value("tern_smtp_sessions_active") == 2
    finally:
        a.close()
        b.close()
    s = wait_metric(srv.admin, lambda s: s.value("tern_smtp_sessions_active") == 0, "0 active sessions")
    # Two sessions accepted; the third from 127.0.0.9 refused.
    assert delta(before, s, "tern_smtp_connections_total", listener="smtp", outcome="accepted") == 2
    assert delta(before, s, "tern_smtp_connections_total", listener="smtp", outcome="refused") == 1


def test_default_metrics_domains_keep_big_providers_only(ternx):
    """Without metrics_domains a domain outside the built-in list is "other" (bounded label values)."""
    with Remote() as remote:
        srv = ternx(**relay_config(routes={"remote.test": route_to(remote.port)}))
        before = srv.admin.scrape()
        srv.deliver(ALICE, OTHER, make_message("other", sender=ALICE, to=OTHER))
        remote.wait_messages(1, srv=srv)
        s = wait_metric(srv.admin, lambda s: delta(before, s, "tern_delivery_attempts_total", outcome="delivered",
                                                   domain_class="other") == 1, "a delivery counted as other")
        assert not any("remote.test" in v for _, lab, _ in s.samples for v in lab.values())


def test_scrape_is_valid_text_format(ternx):
    srv = ternx()
    srv.deliver("friend@example.test", ALICE, make_message("x", sender="friend@example.test"))
    srv.wait_messages(ALICE, 1)
    r = srv.admin.get("/metrics")
    assert r.status == 200, r
    s = parse_prometheus(r.text)
    for name, kind in TYPES.items():
        if kind == "histogram" and s.has(name + "_count"):
            buckets, _, count = histogram(s, name)
            assert all(not math.isnan(c) for _, c in buckets)
    # HELP lines, where present, precede the samples and name a family with a TYPE.
    for ln in r.text.splitlines():
        if ln.startswith("# HELP "):
            assert ln.split()[2] in s.types, ln
    wait_for(lambda: srv.admin.scrape().value("tern_messages_received_total", listener="smtp",
                                              outcome="accepted") == 1, 10, "the accepted message counted")


def test_submission_message_counts_on_its_listener(ternx, tmp_path):
    ports = Ports()
    srv = ternx(**tls_config(tmp_path, ports))
    before = srv.admin.scrape()
    with Client(ports.submission) as c:
        c.start()
        c.starttls()
        c.ehlo()
        code, text = c.auth_plain(ALICE, ALICE_PW)
        assert code == 235, (code, text)
        c.expect(f"MAIL FROM:<{ALICE}>", 250)
        c.expect(f"RCPT TO:<bob@{LOCAL_DOMAIN}>", 250)
        c.expect("DATA", 354)
        c.send(make_message("submitted", sender=ALICE, to=f"bob@{LOCAL_DOMAIN}") + b".\r\n")
        code, lines = c.read_reply()
        assert code == 250, (code, lines)
        c.expect("QUIT", 221)
    srv.wait_messages(f"bob@{LOCAL_DOMAIN}", 1)

    def counted(s):
        return (delta(before, s, "tern_messages_received_total", listener="submission", outcome="accepted") == 1
                and delta(before, s, "tern_delivery_attempts_total", outcome="delivered", domain_class="local") == 1)

    s = wait_metric(srv.admin, counted, "the submitted message counted on listener=submission")
    assert delta(before, s, "tern_messages_received_total", listener="smtp", outcome="accepted") == 0
    assert delta(before, s, "tern_smtp_connections_total", listener="submission", outcome="accepted") == 1
    assert delta(before, s, "tern_auth_failures_total") == 0, "a good password is no failure"
    assert s.total("tern_tls_sessions_total", direction="inbound") - before.total(
        "tern_tls_sessions_total", direction="inbound") == 1
    assert hist_count(s, "tern_message_size_bytes") - (hist_count(before, "tern_message_size_bytes")) == 1
