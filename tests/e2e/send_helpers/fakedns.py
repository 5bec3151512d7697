"""A fake authoritative DNS server (dnslib) on 127.0.0.1:<free UDP+TCP port> for MX routing tests."""

from __future__ import annotations

import socket

from dnslib import AAAA, MX, PTR, QTYPE, RCODE, RR, TXT, A
from dnslib.server import BaseResolver, DNSServer


def free_port() -> int:
    # A port free for both UDP and TCP.
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


class Zone(BaseResolver):
    """records: {name: {"MX": [(pref, host)], "A": [ip], "AAAA": [ip], "TXT": [text or [strings]], "PTR": [host]}}
    (a PTR under its reverse name, e.g. "1.0.0.127.in-addr.arpa"); names absent ->
    NXDOMAIN. A TXT text longer than 255 bytes is split into strings of 255 (RFC 1035 3.3.14)."""

    def __init__(self, records: dict):
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}

    def resolve(self, request, handler):
        reply = request.reply()
        q = request.q
        name = str(q.qname).rstrip(".").lower()
        qtype = QTYPE[q.qtype]
        rec = self.records.get(name)
        if rec is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if rec == "SERVFAIL":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        for value in rec.get(qtype, []):
            if qtype == "MX":
                pref, host = value
                rdata = MX(host, pref)
            elif qtype == "A":
                rdata = A(value)
            elif qtype == "AAAA":
                rdata = AAAA(value)
            elif qtype == "TXT":
                strings = [value[i:i + 255] for i in range(0, len(value), 255)] if isinstance(value, str) else value
                rdata = TXT(strings)
            elif qtype == "PTR":
                rdata = PTR(value)
            else:
                continue
            reply.add_answer(RR(q.qname, q.qtype, rdata=rdata, ttl=60))
        return reply


class FakeDNS:
    def __init__(self, records: dict):
        self.port = free_port()
        zone = Zone(records)
        self.udp = DNSServer(zone, port=self.port, address="127.0.0.1")
        self.tcp = DNSServer(zone, port=self.port, address="127.0.0.1", tcp=True)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeDNS":
        self.udp.start_thread()
        self.tcp.start_thread()
        return self

    def __exit__(self, *exc) -> None:
        self.udp.stop()
        self.tcp.stop()
