"""Logs: `tern serve --log-format json` (or `[log] format = "json"`) writes one JSON object per line; every line
logged inside an SMTP session carries the session span's fields (`session`, `peer`), so the message-accepted line
has its `queue_id` and the session; delivery lines carry `queue_id`, `domain` and `host` from the delivery span.
`--log-format text` gives lines that are not JSON, and wins over the file.

The JSON layer (tracing-subscriber's) puts the span fields in `span` (the innermost span) and `spans` (the whole
stack); a field may also be at the top level of the object. `fields()` merges the three, so the tests assert what
a log shipper can read, wherever the server puts it."""

from __future__ import annotations

import json

from admin_helpers import json_lines, ternx, wait_log  # noqa: F401  (ternx is a fixture)
from relay_helpers import ALICE, Remote, relay_config, route_to, wait_for, wait_gone
from ternlib import make_message

BOB = "bob@remote.test"


def fields(line: dict) -> dict:
    """The line's own fields plus those of every span it was logged in (inner spans win)."""
    merged: dict = {}
    for span in line.get("spans") or []:
        if isinstance(span, dict):
            merged.update(span)
    if isinstance(line.get("span"), dict):
        merged.update(line["span"])
    merged.update({k: v for k, v in line.items() if k not in ("span", "spans")})
    return merged


def deliver_with_port(srv, sender: str, rcpt: str, msg: bytes) -> tuple[str, str]:
    """One transaction through smtplib; (queue id, the client's own address "127.0.0.1:PORT" as the server sees
    it)."""
    from ternlib import queue_id
    with srv.smtp() as s:
        host, port = s.sock.getsockname()[:2]
        s.ehlo()
        assert s.mail(sender)[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(msg)
        assert code == 250, (code, text)
        return queue_id(text.decode()), f"{host}:{port}"


def accepted_line(srv, qid: str) -> dict:
    def find():
        for ln in json_lines(srv):
            if ln.get("queue_id") == qid or fields(ln).get("queue_id") == qid:
                if "accepted" in str(ln.get("message", "")):
                    return ln
        return None
    return wait_for(find, 10, f"a JSON 'message accepted' line with queue_id {qid}")


def test_json_lines_with_session_span_fields(ternx):
    srv = ternx(args=("--log-format", "json"), listener=False)
    q1, peer1 = deliver_with_port(srv, "friend@example.test", ALICE, make_message("one"))
    q2, peer2 = deliver_with_port(srv, "friend@example.test", ALICE, make_message("two"))
    srv.wait_messages(ALICE, 2)
    srv.stop()

    # Every line is one JSON object.
    raw = [ln for ln in srv.log().splitlines() if ln.strip()]
    assert raw, "no log lines"
    for ln in raw:
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {ln!r}") from None
        assert isinstance(obj, dict), ln
        assert obj.get("timestamp") and obj.get("level") and "message" in obj, ln

    a1, a2 = fields(accepted_line(srv, q1)), fields(accepted_line(srv, q2))
    for a, peer in ((a1, peer1), (a2, peer2)):
        assert a.get("session"), f"no session field on the accepted line: {a}"
        assert a.get("peer") == peer, f"peer {a.get('peer')!r}, expected {peer}: {a}"
        assert a.get("listener") == "smtp", f"listener {a.get('listener')!r}: {a}"
    assert a1["session"] != a2["session"], "two sessions, two ids"

    # Every line logged in a session carries that session's fields: all lines with the session id have its peer,
    # and the session's other lines (e.g. connection closed) have the same id.
    lines = [fields(ln) for ln in json_lines(srv)]
    for a in (a1, a2):
        mine = [f for f in lines if f.get("session") == a["session"]]
        assert len(mine) >= 2, f"only {mine} for session {a['session']}"
        assert all(f.get("peer") == a["peer"] for f in mine), mine
        closed = [f for f in mine if "closed" in str(f.get("message", ""))]
        assert closed, f"no 'connection closed' line in session {a['session']}: {mine}"


def test_delivery_lines_carry_the_delivery_span(ternx):
    with Remote() as remote:
        srv = ternx(args=("--log-format", "json"), listener=False,
                    **relay_config(routes={"remote.test": route_to(remote.port)}))
        qid = srv.deliver(ALICE, BOB, make_message("relayed", sender=ALICE, to=BOB))
        remote.wait_messages(1, srv=srv)
        wait_gone(srv, qid)

        def delivery_lines():
            found = []
            for ln in json_lines(srv):
                f = fields(ln)
                if f.get("queue_id") == qid and "session" not in f:
                    found.append((ln, f))
            return found

        got = wait_for(lambda: [x for x in delivery_lines() if "attempt" in str(x[0].get("message", ""))
                                or "deliver" in str(x[0].get("message", ""))], 10,
                       f"a delivery log line for {qid}")
        for ln, f in got:
            assert f.get("domain") == "remote.test", f"no domain on a delivery line: {ln}"
            assert "127.0.0.1" in str(f.get("host", "")), f"no host (the route's 127.0.0.1) on a delivery line: {ln}"
            # From the spans (a delivery span with queue_id, an attempt span with domain and host, or one span
            # with all three), not only as the event's own fields.
            spanned: dict = {}
            for sp in ln.get("spans") or []:
                if isinstance(sp, dict):
                    spanned.update(sp)
            for key in ("queue_id", "domain", "host"):
                assert spanned.get(key), f"{key} is not a span field of {ln}"


def test_log_format_in_the_config_file(ternx):
    srv = ternx(listener=False, log={"format": "json"})
    qid = srv.deliver("friend@example.test", ALICE, make_message("cfg json"))
    a = fields(accepted_line(srv, qid))
    assert a.get("session") and a.get("peer"), a
    srv.stop()
    for ln in srv.log().splitlines():
        if ln.strip():
            assert isinstance(json.loads(ln), dict), ln


def test_text_format_is_not_json_and_wins_over_the_file(ternx):
    srv = ternx(args=("--log-format", "text"), listener=False, log={"format": "json"})
    qid, peer = deliver_with_port(srv, "friend@example.test", ALICE, make_message("text"))
    line = wait_log(srv, f"queue_id={qid}")
    srv.stop()
    lines = [ln for ln in srv.log().splitlines() if ln.strip()]
    assert lines
    for ln in lines:
        try:
            json.loads(ln)
        except json.JSONDecodeError:
            continue
        raise AssertionError(f"a JSON line with --log-format text: {ln!r}")
    assert "message accepted" in srv.log(), srv.log()[-2000:]
    # The text line names the session too: its span prefixes the event.
    assert "message accepted" in line and "session=" in line and f"peer={peer}" in line, line


def test_reload_logs_in_json(ternx):
    srv = ternx(args=("--log-format", "json"))
    mark = len(srv.log())
    assert srv.admin.ok_json("POST", "/api/reload")["reloaded"] is True
    wait_log(srv, "config reloaded", after=mark)
    reloaded = [ln for ln in json_lines(srv) if "config reloaded" in str(ln.get("message", ""))]
    assert reloaded, "the reload line is a JSON object with the message"
