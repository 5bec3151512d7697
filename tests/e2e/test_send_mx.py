"""`tern send` without --server: MX lookup through a fake DNS server (TERN_NAMESERVER), delivery on
TERN_MX_PORT, preference order with fallback, implicit MX, null MX, NXDOMAIN and SERVFAIL."""

from __future__ import annotations

from send_helpers.fakedns import FakeDNS
from send_helpers.run import err, tern_send
from send_helpers.sink import Sink, free_port

RECORDS = {
    # The preferred MX (dead.mx.test, ::1 where the sink does not listen) refuses connections: tern must fall back to mail.mx.test.
    "mx.test": {"MX": [(20, "mail.mx.test"), (10, "dead.mx.test")]},
    "mail.mx.test": {"A": ["127.0.0.1"]},
    "dead.mx.test": {"AAAA": ["::1"]},
    "implicit.test": {"A": ["127.0.0.1"]},
    "null.test": {"MX": [(0, ".")]},
    "broken.test": "SERVFAIL",
}


def send(dns, port, *rcpts):
    args = ["--from", "s@example.test", "--timeout", "3s"]
    for r in rcpts:
        args += ["--to", r]
    return tern_send(*args, stdin=b"hi\n", env={"TERN_NAMESERVER": dns.addr, "TERN_MX_PORT": str(port)})


def test_mx_preference_fallback_and_implicit_mx():
    with FakeDNS(RECORDS) as dns, Sink() as sink:
        r = send(dns, sink.port, "a@mx.test", "b@implicit.test")
        assert r.returncode == 0, err(r)
        got = sorted(tuple(m.rcpt_tos) for m in sink.messages)
    assert got == [("a@mx.test",), ("b@implicit.test",)]


def test_null_mx_nxdomain_servfail():
    with FakeDNS(RECORDS) as dns:
        port = free_port()
        r = send(dns, port, "a@null.test")
        assert r.returncode == 69, err(r)
        assert "null MX" in err(r)
        r = send(dns, port, "a@nowhere.test")
        assert r.returncode == 69, err(r)
        assert "does not exist" in err(r)
        r = send(dns, port, "a@broken.test")
        assert r.returncode == 75, err(r)
        assert "temporary DNS failure" in err(r)


def test_address_literal_goes_to_that_address_without_dns():
    # An empty zone: any MX or address query would be NXDOMAIN (exit 69).
    with FakeDNS({}) as dns, Sink() as sink:
        r = send(dns, sink.port, "a@[127.0.0.1]")
        assert r.returncode == 0, err(r)
        got = [tuple(m.rcpt_tos) for m in sink.messages]
    assert got == [("a@[127.0.0.1]",)]


def many_mx(live_rank: int) -> dict:
    """12 MX hosts; all refuse connections (127.0.0.2, where nothing listens on the sink's
    port) except the one at preference rank `live_rank` (1-based), on 127.0.0.1."""
    records = {"many.test": {"MX": []}}
    for rank in range(1, 13):
        name = f"h{rank:02}.many.test"
        records["many.test"]["MX"].append((rank, name))
        records[name] = {"A": ["127.0.0.1" if rank == live_rank else "127.0.0.2"]}
    return records


def test_at_most_ten_mx_hosts_are_tried():
    # The relay's hop limit (RFC 5321 5.1 leaves it to the client): the 10th host is tried...
    with FakeDNS(many_mx(10)) as dns, Sink() as sink:
        r = send(dns, sink.port, "a@many.test")
        assert r.returncode == 0, err(r)
        assert len(sink.messages) == 1
    # ... the 11th is not: the mail stays with the sender (temporary failure, exit 75).
    with FakeDNS(many_mx(11)) as dns, Sink() as sink:
        r = send(dns, sink.port, "a@many.test")
        assert r.returncode == 75, err(r)
        assert not sink.messages
