"""Outbound bounds (issue 10): which addresses MX delivery may connect to, and the minimum DATA transfer rate.

A fake DNS server (dnslib, 127.0.0.1:<free port>) is tern's only nameserver (`[dns] nameservers`); MX hosts are
reached on `[outbound] mx_port`, where an aiosmtpd peer listens on 127.0.0.1.

Covered: an MX on loopback is refused with tern's defaults, bounced `550 5.4.4` without any connection, and the
refused address is logged; the same peer through an explicit `[routes]` entry (by address, and by a host name the
fake DNS resolves to loopback) delivers; with `outbound.allow_networks = ["127.0.0.0/8"]` an `outbound.deny_networks`
entry (127.0.0.2) still refuses its part: that MX is skipped for the next one, and bounced when it is the only one,
with nothing ever connecting to 127.0.0.2; a sink that reads the body at a trickle is abandoned with
`451 4.4.2 ... (outbound.min_data_rate)`, the recipient deferred and tried again."""

from __future__ import annotations

import socket

from relay_helpers import (ALICE, PeerConn, RawPeer, check_failed, log_tail, relay_config,
                           route_to, wait_bounce, wait_for, wait_gone, wait_state)
from ternlib import make_message

RECORDS = {
    "lo.test": {"MX": [(10, "mail.lo.test")]},
    "mail.lo.test": {"A": ["127.0.0.1"]},
    # Most preferred: an address inside deny_networks; then the peer.
    "two.test": {"MX": [(10, "denied.two.test"), (20, "ok.two.test")]},
    "denied.two.test": {"A": ["127.0.0.2"]},
    "ok.two.test": {"A": ["127.0.0.1"]},
    "denied.test": {"MX": [(10, "denied.two.test")]},
}


def _text(s: str) -> str:
    """Whitespace-normalised (a bounce folds long lines)."""
    return " ".join(s.split())


class Listener:
    """`with Listener(host, port) as l:` a bound, listening socket that is never served: `l.connected()` says
    whether anything connected (the kernel completes the handshake and queues it even though nobody accepts)."""

    def __init__(self, host: str, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.sock.setblocking(False)

    def connected(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


def test_an_mx_on_loopback_is_refused_by_default_and_bounced(tern, dns, remote):
    # tern's defaults (no allow_networks): only the port is a test setting.
    srv = tern(**relay_config(dns={"nameservers": [dns.nameserver]}, outbound={"mx_port": remote.port}))
    rcpt = "bob@lo.test"
    qid = srv.deliver(ALICE, rcpt, make_message("loopback mx", sender=ALICE, to=rcpt))
    # The retry schedule is 1 h: a bounce within the wait proves the refusal is permanent.
    dsn = wait_bounce(srv, ALICE, timeout=10)[0]
    block = check_failed(dsn, rcpt, "5.4.4", subject="loopback mx")
    assert block.get("Remote-MTA") is None, "tern decided this itself: no remote host to name"
    human = _text(dsn.human)
    assert "550 5.4.4 every address found for lo.test is refused: host mail.lo.test[127.0.0.1] is loopback" \
        in human, human
    assert "outbound.allow_networks" in human, human
    wait_gone(srv, qid)
    assert remote.connections == 0, "nothing may connect to a refused address"
    log = srv.log()
    assert "relay: MX address refused" in log and "addr=127.0.0.1" in log, log_tail(srv)


def test_the_same_address_through_a_route_delivers(tern, dns, remote):
    """"Unless routed explicitly": a route is the operator's choice, so loopback is fine there, by address and by
    a host name that resolves to loopback."""
    srv = tern(**relay_config(
        dns={"nameservers": [dns.nameserver]},
        outbound={"mx_port": remote.port, "deny_networks": ["127.0.0.0/8"]},
        routes={"lo.test": route_to(remote.port),
                "named.test": {"host": "mail.lo.test", "port": remote.port}},
    ))
    for rcpt in ("bob@lo.test", "carol@named.test"):
        qid = srv.deliver(ALICE, rcpt, make_message("routed", sender=ALICE, to=rcpt))
        wait_gone(srv, qid)
    got = remote.wait_messages(2, srv=srv)
    assert sorted(r for m in got for r in m.rcpt_tos) == ["bob@lo.test", "carol@named.test"]
    assert srv.messages(ALICE) == [], "no bounce"
    assert "relay: MX address refused" not in srv.log()


def test_deny_networks_refuses_inside_allowed_loopback(tern, dns, remote):
    with Listener("127.0.0.2", remote.port) as denied:
        srv = tern(**relay_config(
            dns={"nameservers": [dns.nameserver]},
            outbound={"mx_port": remote.port, "allow_networks": ["127.0.0.0/8"], "deny_networks": ["127.0.0.2/32"]},
        ))
        # The preferred MX is denied: skipped like an unreachable host, the next one delivers.
        qid = srv.deliver(ALICE, "bob@two.test", make_message("skip denied", sender=ALICE, to="bob@two.test"))
        got = remote.wait_messages(1, srv=srv)
        assert got[0].rcpt_tos == ["bob@two.test"]
        wait_gone(srv, qid)
        assert srv.messages(ALICE) == []

        # The denied MX alone: bounced, never connected to.
        qid = srv.deliver(ALICE, "bob@denied.test", make_message("only denied", sender=ALICE, to="bob@denied.test"))
        dsn = wait_bounce(srv, ALICE, timeout=10)[0]
        check_failed(dsn, "bob@denied.test", "5.4.4", subject="only denied")
        human = _text(dsn.human)
        assert ("every address found for denied.test is refused: host denied.two.test[127.0.0.2] is in "
                "outbound.deny_networks (127.0.0.2/32)") in human, human
        wait_gone(srv, qid)
        assert not denied.connected(), "tern connected to an address in deny_networks"
        assert len(remote.messages) == 1
        refusals = [line for line in srv.log().splitlines() if "relay: MX address refused" in line]
        assert len(refusals) == 2 and all("addr=127.0.0.2" in line for line in refusals), refusals


BODY_LINE = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"


def trickle(c: PeerConn) -> None:
    """A correct SMTP server that takes the message body at about 20 KiB/s (1 KiB every 50 ms) and would answer
    250 only if the whole body ever arrived."""
    c.send(b"220 slow.test ESMTP\r\n")
    while (line := c.readline()) is not None:
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            c.send(b"250-slow.test\r\n250 8BITMIME\r\n")
        elif verb == b"DATA":
            c.send(b"354 go ahead\r\n")
            tail = b""
            while not c.stop.wait(0.05):
                try:
                    chunk = c.sock.recv(1024)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return  # tern gave up
                tail = (tail + chunk)[-5:]
                if tail == b"\r\n.\r\n":
                    c.send(b"250 2.0.0 the whole body arrived\r\n")
                    break
        elif verb == b"QUIT":
            c.send(b"221 bye\r\n")
            return
        else:
            c.send(b"250 ok\r\n")


def test_a_trickling_sink_is_abandoned_and_retried(tern):
    with RawPeer(trickle) as peer:
        # A small receive window (set before any connection, so accepted sockets inherit it). tern's send buffer
        # still grows up to net.ipv4.tcp_wmem's maximum (4 MiB by default) and takes that much of the body at
        # once, so the body is well beyond it.
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        srv = tern(**relay_config(
            routes={"slow.test": route_to(peer.port)},
            # Generous per-phase timeouts: only the rate can end the attempt. 10 MiB at 4 MiB/s after a 1 s
            # grace must be written within 3.5 s; the sink needs minutes.
            outbound={"command_timeout": "60s", "data_timeout": "60s", "min_data_rate": "4MiB",
                      "min_data_rate_grace": "1s"},
            queue={"retry_schedule": ["1s"]},
        ))
        body = BODY_LINE * (10 * 1024 * 1024 // len(BODY_LINE))
        rcpt = "bob@slow.test"
        qid = srv.deliver(ALICE, rcpt, make_message("trickle", sender=ALICE, to=rcpt, body=body))
        status = wait_state(srv, qid, rcpt, "deferred", timeout=30)
        reply = status["last_reply"]
        assert reply.startswith("451 4.4.2 host 127.0.0.1[127.0.0.1]: the server took "), reply
        assert reply.endswith("slower than the minimum of 4194304 bytes/s (outbound.min_data_rate)"), reply
        # Temporary: no bounce, and tried again (the retry schedule is 1 s).
        wait_for(lambda: peer.connections >= 2, 30, "a second attempt at the trickling sink")
        assert srv.messages(ALICE) == []
        assert "the whole body arrived" not in srv.log()
