"""The admin listener's JSON API (`[admin] listen`, docs/operations.md): health, the queue (list with filters, one
entry with its headers and timeline, per-entry and bulk actions), the local mailboxes, the bearer token, and the
config rules for the listener (exit 78 for a listener reachable from other hosts without a token, or a bad token
file). Every change the API makes is checked where a user would look: `tern queue show --json`, the spool, the
sender's Maildir (the DSN), the peer that receives the retries.

Messages to remote.test / other.test are routed to a closed loopback port with `[queue] retry_schedule = ["1h"]`,
so after the first attempt they sit deferred for an hour and every call sees a stable entry."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from admin_helpers import TOKEN, AdminClient, out, run_tern, ternx  # noqa: F401  (ternx is a fixture)
from relay_helpers import (ALICE, WAIT, Busy, Remote, check_failed, closed_port, envelope, queue_show, recipient,
                           relay_config, route_to, tern_queue, wait_bounce, wait_for, wait_state)
from ternlib import HOSTNAME, LOCAL_DOMAIN, free_port, make_message, tern_bin, toml_dumps

BOB = "bob@remote.test"
CAROL = "carol@remote.test"
DAVE = "dave@other.test"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
ENTRY_KEYS = {"id", "received_at", "age_secs", "size", "sender", "held", "status", "next_attempt", "recipients"}
RCPT_KEYS = {"address", "original", "state", "attempts", "last_reply", "plain", "next_attempt"}
UNKNOWN_ID = "0" * 32


def deferred(ternx, port: int | None = None, **kw):
    """A tern with an admin listener that relays remote.test and other.test to `port` (default: closed)."""
    port = port or closed_port()
    cfg = relay_config(routes={"remote.test": route_to(port), "other.test": route_to(port)})
    return ternx(**{**cfg, **kw})


def queue_one(srv, rcpts, subject: str, sender: str = ALICE) -> str:
    rcpts = [rcpts] if isinstance(rcpts, str) else rcpts
    qid = srv.deliver(sender, rcpts, make_message(subject, sender=sender, to=rcpts[0]))
    for r in rcpts:
        wait_state(srv, qid, r, "deferred")
    return qid


def attempts_of(srv, qid: str, addr: str) -> int:
    return recipient(envelope(srv, qid), addr)["status"].get("attempts", 0)


def act(srv, method: str, path: str) -> dict:
    """A per-entry action: 200 and {"id", "result", "message"}."""
    body = srv.admin.ok_json(method, path)
    assert {"id", "result", "message"} <= set(body), body
    assert isinstance(body["result"], str) and isinstance(body["message"], str), body
    return body


def bulk(srv, method: str, path: str) -> dict:
    """A bulk action: 200 and {"matched", "done", "busy", "errors"}."""
    body = srv.admin.ok_json(method, path)
    assert {"matched", "done", "busy", "errors"} <= set(body), body
    return body


def assert_error(r, status: int) -> dict:
    assert r.status == status, f"expected {status}, got {r}"
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], f"no error text: {body}"
    return body


# ---------------------------------------------------------------- health, routing


def test_health(ternx):
    srv = ternx()
    h = srv.admin.ok_json("GET", "/api/health")
    assert h["status"] == "ok", h
    assert h["hostname"] == HOSTNAME
    assert isinstance(h["version"], str) and re.match(r"^\d+\.\d+\.\d+", h["version"]), h
    assert isinstance(h["uptime_seconds"], int) and 0 <= h["uptime_seconds"] < 60, h
    assert h["queue_messages"] == 0, h


def test_health_counts_the_queue(ternx):
    srv = deferred(ternx)
    queue_one(srv, BOB, "one")
    queue_one(srv, DAVE, "two")
    assert srv.admin.ok_json("GET", "/api/health")["queue_messages"] == 2


def test_unknown_path_404_and_wrong_method_405(ternx):
    srv = ternx()
    assert_error(srv.admin.get("/api/nope"), 404)
    assert_error(srv.admin.get("/no/such/page"), 404)
    for method, path in (("POST", "/api/health"), ("DELETE", "/api/health"), ("PUT", "/api/queue"),
                         ("POST", "/api/mailboxes"), ("GET", "/api/reload"), ("POST", "/metrics")):
        r = srv.admin.request(method, path, body=b"" if method in ("POST", "PUT") else None)
        assert r.status == 405, f"{method} {path}: {r}"


# ---------------------------------------------------------------- auth


def test_token_required_on_api_and_metrics(ternx):
    srv = ternx(token=True)
    anon = AdminClient(srv.admin.base)
    wrong = AdminClient(srv.admin.base, "x" * len(TOKEN))
    for path in ("/api/health", "/api/queue", "/api/mailboxes", "/metrics", f"/api/queue/{UNKNOWN_ID}"):
        r = anon.get(path)
        assert_error(r, 401)
        assert r.headers.get("www-authenticate", "").lower().startswith("bearer"), f"{path}: {r.headers}"
        assert_error(wrong.get(path), 403)
        assert srv.admin.get(path).status in (200, 404), f"{path} with the token: {srv.admin.get(path)}"
    # Actions too: no token, no hold (and nothing is touched).
    assert_error(anon.post(f"/api/queue/{UNKNOWN_ID}/hold"), 401)
    assert_error(anon.post("/api/queue/hold?all=true"), 401)
    assert_error(anon.post("/api/reload"), 401)
    assert_error(wrong.delete(f"/api/queue/{UNKNOWN_ID}"), 403)
    # A wrong scheme is no token.
    r = srv.admin.get("/api/health", token="", headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status == 401, r
    assert srv.admin.ok_json("GET", "/api/health")["status"] == "ok"


def test_console_files_need_no_token(ternx):
    srv = ternx(token=True)
    anon = AdminClient(srv.admin.base)
    for path, ctype in (("/", "text/html"), ("/app.js", "javascript"), ("/app.css", "text/css")):
        r = anon.get(path)
        assert r.status == 200, f"{path}: {r}"
        assert ctype in r.headers.get("content-type", ""), f"{path}: {r.headers}"
        assert r.body, path


def test_loopback_without_token_needs_no_auth(ternx):
    srv = ternx()
    assert srv.admin.token is None
    assert srv.admin.get("/api/queue").status == 200
    assert srv.admin.get("/metrics").status == 200


# ---------------------------------------------------------------- config rules


def write_config(tmp_path, admin: dict):
    path = tmp_path / "tern.toml"
    path.write_text(toml_dumps({"hostname": HOSTNAME, "data_dir": str(tmp_path / "data"),
                                "smtp": {"listen": [f"127.0.0.1:{free_port()}"]},
                                "local": {"domains": [LOCAL_DOMAIN]}, "admin": admin}))
    return path


def run_serve_expect_exit(path, timeout: float = 15):
    """`tern serve -c PATH` that must exit by itself (a config error); killed if it starts instead."""
    p = subprocess.Popen([str(tern_bin()), "serve", "-c", str(path)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        o, e = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate(timeout=10)
        raise AssertionError(f"tern serve -c {path} did not exit (it should refuse the config)") from None
    return p.returncode, (o + e).decode(errors="replace")


def test_non_loopback_listen_without_token_is_78(tmp_path):
    # Never bound: the config is refused before any listener opens.
    path = write_config(tmp_path, {"listen": f"0.0.0.0:{free_port()}"})
    r = run_tern("check-config", str(path))
    assert r.returncode == 78, out(r)
    assert "admin.token_file" in (r.stdout + r.stderr).decode(), out(r)
    rc, text = run_serve_expect_exit(path)
    assert rc == 78, text
    assert "admin.token_file" in text, text


@pytest.mark.parametrize("content", [None, "", "  \n"], ids=["missing", "empty", "blank"])
def test_bad_token_file_is_78(tmp_path, content):
    tf = tmp_path / "admin.token"
    if content is not None:
        tf.write_text(content)
        tf.chmod(0o600)
    path = write_config(tmp_path, {"listen": f"127.0.0.1:{free_port()}", "token_file": str(tf)})
    r = run_tern("check-config", str(path))
    assert r.returncode == 78, out(r)
    assert "admin.token_file" in (r.stdout + r.stderr).decode(), out(r)
    rc, text = run_serve_expect_exit(path)
    assert rc == 78, text


def test_non_loopback_listen_with_token_is_valid(tmp_path):
    tf = tmp_path / "admin.token"
    tf.write_text(TOKEN + "\n")
    tf.chmod(0o600)
    path = write_config(tmp_path, {"listen": f"0.0.0.0:{free_port()}", "token_file": str(tf)})
    r = run_tern("check-config", str(path))
    assert r.returncode == 0, out(r)


# ---------------------------------------------------------------- queue: list and show


def test_queue_list_shape_and_filters(ternx):
    srv = deferred(ternx)
    q_bob = queue_one(srv, [BOB, CAROL], "to remote")
    q_dave = queue_one(srv, DAVE, "to other", sender="someone@elsewhere.test")
    r = tern_queue(srv, "hold", q_dave)
    assert r.returncode == 0, r

    got = srv.admin.ok_json("GET", "/api/queue")
    assert got["total"] == 2 and len(got["entries"]) == 2, got
    by_id = {e["id"]: e for e in got["entries"]}
    assert set(by_id) == {q_bob, q_dave}
    e = by_id[q_bob]
    assert ENTRY_KEYS <= set(e), set(e) ^ ENTRY_KEYS
    assert RFC3339.match(e["received_at"]), e["received_at"]
    assert isinstance(e["age_secs"], int) and e["age_secs"] >= 0
    assert e["size"] > 0 and e["sender"] == ALICE and e["held"] is False and e["status"] == "deferred"
    assert [r["address"] for r in e["recipients"]] == [BOB, CAROL]
    for rc in e["recipients"]:
        assert RCPT_KEYS <= set(rc), set(rc) ^ RCPT_KEYS
        assert rc["state"] == "deferred" and rc["attempts"] == 1, rc
        assert rc["last_reply"] and rc["last_reply"].startswith("4"), rc
        assert isinstance(rc["plain"], str) and rc["plain"], rc
        assert RFC3339.match(rc["next_attempt"]), rc
    assert by_id[q_dave]["held"] is True and by_id[q_dave]["status"] == "held"

    # The same objects `tern queue list --json` prints (plus status/plain/next_attempt).
    cli = {x["id"]: x for x in json.loads(tern_queue(srv, "list", "--json").stdout)}
    for k in ("id", "received_at", "size", "sender", "held"):
        assert cli[q_bob][k] == e[k], k
    assert [r["address"] for r in cli[q_bob]["recipients"]] == [r["address"] for r in e["recipients"]]

    def ids(query: str) -> list[str]:
        body = srv.admin.ok_json("GET", "/api/queue" + query)
        assert body["total"] == len(body["entries"]) or "limit" in query, body
        return sorted(x["id"] for x in body["entries"])

    assert ids("?status=held") == [q_dave]
    assert ids("?status=deferred") == [q_bob]
    assert ids("?status=pending") == []
    assert ids("?domain=remote.test") == [q_bob]
    assert ids("?domain=OTHER.test") == [q_dave]
    assert ids("?domain=nowhere.test") == []
    assert ids("?sender=someone@elsewhere.test") == [q_dave]
    assert ids(f"?sender={ALICE}&domain=remote.test") == [q_bob]
    limited = srv.admin.ok_json("GET", "/api/queue?limit=1")
    assert limited["total"] == 2 and len(limited["entries"]) == 1, limited
    assert_error(srv.admin.get("/api/queue?status=bogus"), 400)


def test_queue_show_timeline_of_a_deferred_message(ternx):
    srv = deferred(ternx)
    qid = queue_one(srv, BOB, "timeline")
    d = srv.admin.ok_json("GET", f"/api/queue/{qid}")
    assert ENTRY_KEYS <= set(d) and d["id"] == qid, d
    assert "Subject: timeline" in d["headers"], d["headers"]
    assert "Hello." not in d["headers"], "headers only, not the body"
    assert isinstance(d["attempts"], list) and len(d["attempts"]) == 1, d["attempts"]
    events = [t["event"] for t in d["timeline"]]
    assert events[:3] == ["received", "queued", "attempt"], d["timeline"]
    assert "deferred" in events, d["timeline"]
    for t in d["timeline"]:
        assert RFC3339.match(t["at"]) and isinstance(t["text"], str), t
    attempt = next(t for t in d["timeline"] if t["event"] == "attempt")
    reply = recipient(envelope(srv, qid), BOB)["status"]["last_reply"]
    assert reply and reply.split()[0] in attempt["text"], (reply, attempt)
    assert reply in json.dumps(attempt), (reply, attempt)
    # The CLI shows the same timeline.
    assert [t["event"] for t in queue_show(srv, qid)["timeline"]] == events


@pytest.mark.parametrize("bad", [UNKNOWN_ID, "not-an-id", "..%2F..%2Fetc"])
def test_show_unknown_or_invalid_id_404(ternx, bad):
    srv = ternx()
    assert_error(srv.admin.get(f"/api/queue/{bad}"), 404)
    for action in ("flush", "hold", "release", "bounce"):
        assert_error(srv.admin.post(f"/api/queue/{bad}/{action}"), 404)
    assert_error(srv.admin.delete(f"/api/queue/{bad}"), 404)


# ---------------------------------------------------------------- queue: actions on one entry


def test_hold_via_api_shows_in_cli_and_back(ternx):
    srv = deferred(ternx)
    qid = queue_one(srv, BOB, "hold me")
    r = act(srv, "POST", f"/api/queue/{qid}/hold")
    assert r["id"] == qid and isinstance(r["result"], str) and isinstance(r["message"], str), r
    assert queue_show(srv, qid)["held"] is True
    assert srv.admin.ok_json("GET", f"/api/queue/{qid}")["status"] == "held"
    timeline = srv.admin.ok_json("GET", f"/api/queue/{qid}")["timeline"]
    assert "held" in [t["event"] for t in timeline], timeline

    act(srv, "POST", f"/api/queue/{qid}/release")
    assert queue_show(srv, qid)["held"] is False
    assert "released" in [t["event"] for t in srv.admin.ok_json("GET", f"/api/queue/{qid}")["timeline"]]

    # The reverse: a hold made with the CLI is what the API shows.
    assert tern_queue(srv, "hold", qid).returncode == 0
    got = srv.admin.ok_json("GET", f"/api/queue/{qid}")
    assert got["held"] is True and got["status"] == "held", got
    assert [e["id"] for e in srv.admin.ok_json("GET", "/api/queue?status=held")["entries"]] == [qid]


def test_flush_makes_a_deferred_recipient_due(ternx):
    with Remote() as remote:
        remote.script.default["rcpt"] = "451 4.3.0 try again later"
        srv = deferred(ternx, port=remote.port)
        qid = queue_one(srv, BOB, "flush me")
        rcpts = lambda: [e for e in remote.events if e[1] == "RCPT"]  # noqa: E731
        assert attempts_of(srv, qid, BOB) == 1 and len(rcpts()) == 1, remote.events
        r = act(srv, "POST", f"/api/queue/{qid}/flush")
        assert r["id"] == qid, r
        # Retried at once (not in an hour): a second attempt at the peer, still deferred.
        wait_for(lambda: attempts_of(srv, qid, BOB) == 2, WAIT, "a second attempt after the flush")
        assert len(rcpts()) == 2, remote.events
        events = [t["event"] for t in srv.admin.ok_json("GET", f"/api/queue/{qid}")["timeline"]]
        assert "flushed" in events, events
        assert [e for e in events if e == "attempt"] == ["attempt", "attempt"], events


def test_bounce_via_api_sends_a_dsn(ternx):
    srv = deferred(ternx)
    qid = queue_one(srv, BOB, "bounce me")
    r = act(srv, "POST", f"/api/queue/{qid}/bounce")
    assert r["id"] == qid, r
    (dsn,) = wait_bounce(srv, ALICE)
    check_failed(dsn, BOB, subject="bounce me")
    assert envelope(srv, qid) is None, "the entry is gone after its bounce"
    assert_error(srv.admin.get(f"/api/queue/{qid}"), 404)


def test_delete_via_api(ternx):
    srv = deferred(ternx)
    qid = queue_one(srv, BOB, "delete me")
    keep = queue_one(srv, DAVE, "keep me")
    r = act(srv, "DELETE", f"/api/queue/{qid}")
    assert r["id"] == qid, r
    assert envelope(srv, qid) is None
    assert tern_queue(srv, "show", qid, "--json").returncode == 66
    assert [e["id"] for e in srv.admin.ok_json("GET", "/api/queue")["entries"]] == [keep]
    assert_error(srv.admin.delete(f"/api/queue/{qid}"), 404)
    srv.assert_nothing_delivered(settle=0.5)


def test_busy_entry_409_untouched(ternx):
    srv = deferred(ternx)
    qid = queue_one(srv, BOB, "busy")
    before = envelope(srv, qid)
    with Busy(srv, qid):
        for action in ("hold", "release", "flush", "bounce"):
            assert_error(srv.admin.post(f"/api/queue/{qid}/{action}"), 409)
        assert_error(srv.admin.delete(f"/api/queue/{qid}"), 409)
        # Reading needs no lock.
        assert srv.admin.ok_json("GET", f"/api/queue/{qid}")["id"] == qid
        report = bulk(srv, "POST", "/api/queue/hold?domain=remote.test")
        assert report["matched"] == 1 and report["busy"] == 1 and report["done"] == 0, report
        assert envelope(srv, qid) == before
    act(srv, "POST", f"/api/queue/{qid}/hold")
    assert queue_show(srv, qid)["held"] is True


# ---------------------------------------------------------------- queue: bulk actions


def test_bulk_needs_a_filter(ternx):
    srv = deferred(ternx)
    qid = queue_one(srv, BOB, "stay")
    for action in ("flush", "hold", "release", "bounce", "delete"):
        assert_error(srv.admin.post(f"/api/queue/{action}"), 400)
    assert_error(srv.admin.delete("/api/queue"), 400)
    assert envelope(srv, qid)["held"] is False
    assert srv.messages(ALICE) == []


def test_bulk_hold_by_domain_touches_only_that_domain(ternx):
    srv = deferred(ternx)
    q_remote = queue_one(srv, BOB, "to remote")
    q_remote2 = queue_one(srv, CAROL, "to remote 2")
    q_other = queue_one(srv, DAVE, "to other")
    r = bulk(srv, "POST", "/api/queue/hold?domain=remote.test")
    assert (r["matched"], r["done"], r["busy"]) == (2, 2, 0), r
    assert not r["errors"], r
    assert queue_show(srv, q_remote)["held"] is True
    assert queue_show(srv, q_remote2)["held"] is True
    assert queue_show(srv, q_other)["held"] is False

    r = bulk(srv, "POST", "/api/queue/release?status=held")
    assert (r["matched"], r["done"]) == (2, 2), r
    assert not queue_show(srv, q_remote)["held"]

    r = bulk(srv, "POST", "/api/queue/hold?all=true")
    assert (r["matched"], r["done"]) == (3, 3), r
    r = bulk(srv, "POST", "/api/queue/release?all=true")
    assert (r["matched"], r["done"]) == (3, 3), r

    # Bulk flush by domain: only other.test is retried.
    r = bulk(srv, "POST", "/api/queue/flush?domain=other.test")
    assert r["matched"] == 1, r
    wait_for(lambda: attempts_of(srv, q_other, DAVE) == 2, WAIT, "other.test retried after the bulk flush")
    assert attempts_of(srv, q_remote, BOB) == 1

    # Bulk delete (POST .../delete and DELETE /api/queue?...) and bulk bounce.
    r = bulk(srv, "POST", "/api/queue/delete?domain=other.test")
    assert (r["matched"], r["done"]) == (1, 1), r
    assert envelope(srv, q_other) is None
    r = bulk(srv, "POST", f"/api/queue/bounce?domain=remote.test&sender={ALICE}")
    assert (r["matched"], r["done"]) == (2, 2), r
    dsns = wait_bounce(srv, ALICE, 2)
    bounced = sorted(str(b.get("Final-Recipient")).split(";")[-1].strip().lower() for d in dsns for b in d.recipients)
    assert bounced == [BOB, CAROL], bounced
    assert srv.admin.ok_json("GET", "/api/queue")["total"] == 0


def test_bulk_delete_with_http_delete(ternx):
    srv = deferred(ternx)
    q_other = queue_one(srv, DAVE, "to other")
    keep = queue_one(srv, BOB, "to remote")
    r = bulk(srv, "DELETE", "/api/queue?domain=other.test")
    assert (r["matched"], r["done"]) == (1, 1), r
    assert envelope(srv, q_other) is None and envelope(srv, keep) is not None


# ---------------------------------------------------------------- mailboxes


def test_mailboxes_messages_and_raw(ternx):
    srv = ternx()
    other = f"zed@{LOCAL_DOMAIN}"
    m1 = make_message("first note", sender="friend@example.test", to=ALICE, body=b"Body one.\r\n")
    m2 = make_message("second note", sender="friend@example.test", to=ALICE, body=b"Body two.\r\n")
    srv.deliver("friend@example.test", ALICE, m1)
    srv.deliver("friend@example.test", ALICE, m2)
    srv.deliver("friend@example.test", other, make_message("for zed", to=other))
    srv.wait_messages(ALICE, 2)
    srv.wait_messages(other, 1)

    boxes = srv.admin.ok_json("GET", "/api/mailboxes")["mailboxes"]
    by_addr = {b["address"]: b for b in boxes}
    assert set(by_addr) == {ALICE, other}, boxes
    a = by_addr[ALICE]
    assert {"address", "messages", "unseen", "junk", "size"} <= set(a), a
    assert (a["messages"], a["unseen"], a["junk"]) == (2, 2, 0), a
    assert a["size"] >= len(m1) + len(m2), a

    page = srv.admin.ok_json("GET", f"/api/mailboxes/{ALICE}/messages")
    assert page["address"] == ALICE and page["total"] == 2, page
    assert len(page["messages"]) == 2
    for m in page["messages"]:
        assert {"id", "folder", "subject", "from", "to", "date", "size", "seen"} <= set(m), m
        assert m["seen"] is False and m["size"] > 0
    subj = {m["subject"]: m for m in page["messages"]}
    assert set(subj) == {"first note", "second note"}, subj
    first = subj["first note"]
    assert "friend@example.test" in first["from"] and ALICE in first["to"], first

    view = srv.admin.ok_json("GET", f"/api/mailboxes/{ALICE}/messages/{first['id']}")
    assert "first note" in json.dumps(view) and "Body one." in json.dumps(view), view

    raw = srv.admin.get(f"/api/mailboxes/{ALICE}/messages/{first['id']}/raw")
    assert raw.status == 200, raw
    stored = [m for m in srv.messages(ALICE) if b"first note" in m]
    assert len(stored) == 1 and raw.body == stored[0], "raw is the stored file byte for byte"

    assert_error(srv.admin.get(f"/api/mailboxes/nobody@{LOCAL_DOMAIN}/messages"), 404)
    assert srv.admin.get(f"/api/mailboxes/{ALICE}/messages/no-such-message").status in (400, 404)
    assert srv.admin.get(f"/api/mailboxes/{ALICE}/messages/..%2F..%2Fetc/raw").status in (400, 404)
