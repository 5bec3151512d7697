"""`tern queue` (docs/queue.md) against a real spool: list [--json], show [--json], flush [ID | --domain D], hold,
release, delete, bounce; exit codes 0 / 66 (no such entry) / 75 (entry busy) / 78 (config error) / 64 (usage).

Messages go to remote.test, whose static route points at a closed loopback port (or at a scripted aiosmtpd peer
that defers), with `[queue] retry_schedule = ["1h"]`: after the first attempt they sit deferred for an hour, so
every command sees a stable entry. "Busy" is simulated the way the relay makes it: an flock on the entry's message
file (FsStore::lock). The CLI is also run with the server stopped and with no spool at all."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import subprocess
import time

import pytest

from relay_helpers import (ALICE, WAIT, Busy, Remote, check_failed, closed_port, envelope, parse_dsn, queue_ids,
                           recipient, relay_config, return_path, route_to, tern_queue, wait_for, wait_gone,
                           wait_state)
from ternlib import HOSTNAME, LOCAL_DOMAIN, make_message, tern_bin

BOB = "bob@remote.test"
CAROL = "carol@remote.test"
DAVE = "dave@other.test"

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
REPLY = re.compile(r"^\d{3}[ -]")
ENTRY_KEYS = {"id", "received_at", "age_secs", "size", "sender", "held", "status", "next_attempt", "recipients"}
RCPT_KEYS = {"address", "original", "state", "attempts", "last_reply", "reply_detail", "plain", "next_attempt"}


# ---------------------------------------------------------------- helpers


def deferred_srv(tern, port: int | None = None, **extra):
    """A tern that relays remote.test and other.test to `port` (default: a closed port)."""
    port = port or closed_port()
    return tern(**relay_config(routes={"remote.test": route_to(port), "other.test": route_to(port)}, **extra))


def queue_one(srv, rcpts, subject: str, sender: str = ALICE) -> str:
    """Delivers one message and waits until every recipient is deferred (the first attempt has failed)."""
    rcpts = [rcpts] if isinstance(rcpts, str) else rcpts
    qid = srv.deliver(sender, rcpts, make_message(subject, sender=sender or "mailer-daemon@x.test", to=rcpts[0]))
    for r in rcpts:
        wait_state(srv, qid, r, "deferred")
    return qid


def ok(r: subprocess.CompletedProcess, what: str = "") -> str:
    assert r.returncode == 0, f"tern queue {what}: exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
    return r.stdout.decode()


def code(r: subprocess.CompletedProcess, expected: int, what: str = "") -> str:
    assert r.returncode == expected, (
        f"tern queue {what}: expected exit {expected}, got {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}")
    return r.stderr.decode()


def list_json(srv) -> list[dict]:
    out = ok(tern_queue(srv, "list", "--json"), "list --json")
    data = json.loads(out)
    assert isinstance(data, list), out
    return data


def entry(srv, qid: str) -> dict:
    for e in list_json(srv):
        if e["id"] == qid:
            return e
    raise AssertionError(f"{qid} not in `tern queue list --json`")


def next_attempt(srv, qid: str, addr: str) -> str:
    return recipient(envelope(srv, qid), addr)["status"]["next_attempt"]


def run_cli(*args: str, env_extra: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TERN_CONFIG", None)
    env.update(env_extra or {})
    return subprocess.run([str(tern_bin()), *args], env=env, capture_output=True, timeout=20,
                          stdin=subprocess.DEVNULL, cwd=cwd)


# ---------------------------------------------------------------- list / show


def test_list_text_and_json(tern):
    srv = deferred_srv(tern)
    q1 = queue_one(srv, [BOB, CAROL], "first")
    q2 = queue_one(srv, DAVE, "second")

    text = ok(tern_queue(srv, "list"), "list")
    lines = text.splitlines()
    heads = [l for l in lines if not l.startswith(" ") and not l.startswith("--")]
    assert [h.split()[0] for h in heads] == [q1, q2], f"one line per entry, oldest first:\n{text}"
    assert f"<{ALICE}>" in heads[0]
    rcpt_lines = [l.strip() for l in lines if l.startswith("    ")]
    assert len(rcpt_lines) == 3, text
    for addr in (BOB, CAROL, DAVE):
        line = next(l for l in rcpt_lines if l.startswith(addr))
        assert "deferred" in line and "1 attempt" in line and "next in" in line, line
        # The last reply: connection refused at the closed port, with its code.
        assert re.search(r": \d{3} ", line), line

    data = list_json(srv)
    assert [e["id"] for e in data] == [q1, q2]
    for e in data:
        assert set(e) == ENTRY_KEYS, e
        assert RFC3339.match(e["received_at"]), e
        assert isinstance(e["age_secs"], int) and 0 <= e["age_secs"] < 120, e
        assert isinstance(e["size"], int) and e["size"] > 0, e
        assert e["sender"] == ALICE and e["held"] is False, e
        for r in e["recipients"]:
            assert set(r) == RCPT_KEYS, r
            assert r["state"] == "deferred" and r["original"] is None, r
            assert r["attempts"] == 1, r
            assert REPLY.match(r["last_reply"]), r
            assert RFC3339.match(r["next_attempt"]), r
    assert [r["address"] for r in data[0]["recipients"]] == [BOB, CAROL]
    # The size is what the spool holds: tern's Received header plus the message.
    assert data[1]["size"] == (srv.data_dir / "queue" / "msg" / q2).stat().st_size


def test_show_text_and_json(tern):
    srv = deferred_srv(tern)
    qid = queue_one(srv, BOB, "show me")

    shown = json.loads(ok(tern_queue(srv, "show", qid, "--json"), "show --json"))
    assert set(shown) == ENTRY_KEYS | {"attempts", "headers", "client_ip", "helo", "timeline", "dsn",
                                       "requiretls"}, shown
    # No DSN requests and no REQUIRETLS were made (test_dsn.py covers them).
    assert shown["dsn"] == {} and shown["requiretls"] is False, shown
    events = [t["event"] for t in shown["timeline"]]
    assert events[:3] == ["received", "queued", "attempt"], events
    assert shown["id"] == qid and shown["sender"] == ALICE
    assert len(shown["attempts"]) == 1, shown
    att = shown["attempts"][0]
    assert set(att) == {"at", "recipient", "host", "reply", "reply_detail", "plain", "tls"}, att
    assert att["recipient"] == BOB and RFC3339.match(att["at"]) and REPLY.match(att["reply"]), att
    assert att["reply"] == shown["recipients"][0]["last_reply"]
    # Connection refused: tern's own status (no remote host gave it), and no session, so no TLS.
    detail = att["reply_detail"]
    assert detail == shown["recipients"][0]["reply_detail"], shown
    assert detail["code"] == 451 and detail["enhanced"] == "4.4.1" and "remote_host" not in detail, detail
    assert att["reply"] == f"{detail['code']} {detail['enhanced']} {detail['text']}", att
    assert att["tls"] is None, att
    headers = shown["headers"]
    assert "Subject: show me" in headers, headers
    assert headers.startswith("Received: "), "tern's own trace header is part of the stored header section"
    assert "Hello." not in headers, "only the header section, never the body"

    text = ok(tern_queue(srv, "show", qid), "show")
    for needle in (f"id:         {qid}", f"sender:     <{ALICE}>", "recipients:", f"  {BOB}  deferred",
                   "attempts:", "headers:", "  Subject: show me"):
        assert needle in text, f"{needle!r} not in:\n{text}"


def test_unknown_or_malformed_id_is_66(tern):
    srv = deferred_srv(tern)
    queue_one(srv, BOB, "exists")
    missing = "0" * 32
    for args in (["show", missing], ["show", "../../etc/passwd"], ["hold", missing], ["release", missing],
                 ["delete", missing], ["bounce", missing], ["flush", missing], ["show", "not-an-id", "--json"]):
        err = code(tern_queue(srv, *args), 66, " ".join(args))
        assert "no such queue entry" in err, err


# ---------------------------------------------------------------- hold / release / flush


def test_hold_release_and_flush_of_a_held_entry(tern):
    srv = deferred_srv(tern)
    qid = queue_one(srv, BOB, "hold me")
    before = next_attempt(srv, qid, BOB)

    ok(tern_queue(srv, "hold", qid), "hold")
    assert envelope(srv, qid)["held"] is True
    assert entry(srv, qid)["held"] is True
    assert "HELD" in ok(tern_queue(srv, "list"), "list")
    assert "already held" in ok(tern_queue(srv, "hold", qid), "hold again")

    # Held entries are left alone by flush, by id and all at once.
    assert "is held" in ok(tern_queue(srv, "flush", qid), "flush held")
    assert "held" in ok(tern_queue(srv, "flush"), "flush all")
    assert next_attempt(srv, qid, BOB) == before

    ok(tern_queue(srv, "release", qid), "release")
    assert envelope(srv, qid)["held"] is False
    assert entry(srv, qid)["held"] is False
    assert "not held" in ok(tern_queue(srv, "release", qid), "release again")


def test_flush_id_and_domain(tern):
    srv = deferred_srv(tern)
    q_remote = queue_one(srv, BOB, "to remote")
    q_other = queue_one(srv, DAVE, "to other")
    far = {q_remote: next_attempt(srv, q_remote, BOB), q_other: next_attempt(srv, q_other, DAVE)}

    # A domain with nothing queued changes nothing.
    assert "0 deferred recipients" in ok(tern_queue(srv, "flush", "--domain", "nowhere.test"))
    assert next_attempt(srv, q_remote, BOB) == far[q_remote]

    # --domain: only that domain's recipients become due (case-insensitive); the relay retries them at once,
    # fails again at the closed port and defers them for another hour.
    out = ok(tern_queue(srv, "flush", "--domain", "Other.TEST"), "flush --domain")
    assert "1 deferred recipient in 1 entry" in out, out
    wait_state_attempts(srv, q_other, DAVE, 2)
    assert next_attempt(srv, q_remote, BOB) == far[q_remote], "another domain's recipient was flushed"

    out = ok(tern_queue(srv, "flush", q_remote), "flush ID")
    assert "1 deferred recipient due now" in out, out
    wait_state_attempts(srv, q_remote, BOB, 2)

    # Without an argument: everything deferred.
    out = ok(tern_queue(srv, "flush"), "flush")
    assert "2 deferred recipients in 2 entries" in out, out
    wait_state_attempts(srv, q_remote, BOB, 3)
    wait_state_attempts(srv, q_other, DAVE, 3)


def wait_state_attempts(srv, qid: str, addr: str, attempts: int) -> None:
    def check():
        env = envelope(srv, qid)
        if not env:
            return None
        st = recipient(env, addr)["status"]
        return st.get("state") == "deferred" and st.get("attempts") == attempts
    wait_for(check, WAIT, f"{addr} in {qid} to reach {attempts} attempts")


def test_flush_delivers_once_the_remote_accepts(tern):
    with Remote() as remote:
        remote.script.once["rcpt"].append("451 4.7.1 greylisted, try later")
        srv = deferred_srv(tern, port=remote.port)
        qid = queue_one(srv, BOB, "greylisted")
        assert "greylisted" in recipient(envelope(srv, qid), BOB)["status"]["last_reply"]
        ok(tern_queue(srv, "hold", qid), "hold")
        ok(tern_queue(srv, "flush"), "flush")
        time.sleep(3)  # more than a scheduler rescan (2 s): a held entry is not tried
        assert not remote.messages, "a held entry was delivered"
        ok(tern_queue(srv, "release", qid), "release")
        ok(tern_queue(srv, "flush", qid), "flush ID")
        got = remote.wait_messages(1, srv=srv)
        assert got[0].rcpt_tos == [BOB]
        wait_gone(srv, qid)
        assert srv.messages(ALICE) == [], "delivered: no bounce"


# ---------------------------------------------------------------- delete / bounce


def test_delete_removes_without_bounce(tern):
    srv = deferred_srv(tern)
    qid = queue_one(srv, BOB, "delete me")
    keep = queue_one(srv, CAROL, "keep me")
    out = ok(tern_queue(srv, "delete", qid), "delete")
    assert qid in out
    assert envelope(srv, qid) is None
    assert not (srv.data_dir / "queue" / "msg" / qid).exists()
    assert [e["id"] for e in list_json(srv)] == [keep]
    code(tern_queue(srv, "delete", qid), 66, "delete again")
    srv.assert_nothing_delivered(settle=1.0)


def test_bounce_sends_a_dsn_to_the_local_sender(tern):
    srv = deferred_srv(tern)
    qid = queue_one(srv, [BOB, CAROL], "bounce me")
    out = ok(tern_queue(srv, "bounce", qid), "bounce")
    assert "2 recipients bounced" in out, out
    assert envelope(srv, qid) is None, "the entry is removed after the bounce"
    assert qid not in queue_ids(srv)

    raws = srv.messages(ALICE)
    assert len(raws) == 1, "the DSN is in the Maildir when `tern queue bounce` returns"
    raw = raws[0]
    assert return_path(raw) == "<>"
    dsn = parse_dsn(raw)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert f"\nTo: <{ALICE}>\n".encode() in raw
    assert "MAILER-DAEMON@" + HOSTNAME in msg["From"]
    assert str(dsn.per_message["Reporting-MTA"]).strip() == f"dns; {HOSTNAME}"
    assert str(dsn.per_message["X-Queue-ID"]).strip() == qid
    assert dsn.per_message["Arrival-Date"]
    for rcpt in (BOB, CAROL):
        block = check_failed(dsn, rcpt, status_prefix="5.0.0", subject="bounce me")
        assert block["Last-Attempt-Date"]
        assert "Will-Retry-Until" not in block
    assert "bounced by the administrator" in dsn.human
    assert dsn.original_headers["Subject"] == "bounce me"
    assert "Hello." not in raw.decode(), "the body is not returned"
    # Nothing else was queued (the DSN went straight into the local Maildir).
    assert list_json(srv) == []


def test_bounce_of_a_remote_sender_queues_the_dsn_with_null_sender(tern):
    port = closed_port()
    srv = tern(**relay_config(routes={"remote.test": route_to(port), "elsewhere.test": route_to(port)}))
    sender = "someone@elsewhere.test"
    qid = queue_one(srv, BOB, "remote sender", sender=sender)
    ok(tern_queue(srv, "bounce", qid), "bounce")
    assert envelope(srv, qid) is None

    def dsn_entry():
        for e in list_json(srv):
            if [r["address"] for r in e["recipients"]] == [sender]:
                return e
        return None

    e = wait_for(dsn_entry, WAIT, "the queued DSN")
    assert e["sender"] == "", "a DSN is sent with the null reverse-path"
    shown = json.loads(ok(tern_queue(srv, "show", e["id"], "--json")))
    assert "Subject: Undelivered Mail Returned to Sender" in shown["headers"]
    assert f"To: <{sender}>" in shown["headers"]
    assert "multipart/report" in shown["headers"]
    assert srv.delivered_files() == []


def test_bounce_of_a_null_sender_message_goes_to_the_postmaster(tern):
    srv = deferred_srv(tern)
    qid = queue_one(srv, BOB, "a notification", sender="")
    ok(tern_queue(srv, "bounce", qid), "bounce")
    pm = f"postmaster@{LOCAL_DOMAIN}"
    raws = srv.messages(pm)
    assert len(raws) == 1, f"the postmaster gets the double bounce; files: {srv.delivered_files()}"
    dsn = parse_dsn(raws[0])
    check_failed(dsn, BOB, status_prefix="5.0.0")
    # Never bounced back to the null sender, never queued for relay.
    assert list_json(srv) == []


# ---------------------------------------------------------------- busy entries (being delivered)


def test_busy_entry_is_75_and_untouched(tern):
    srv = deferred_srv(tern)
    qid = queue_one(srv, BOB, "busy")
    before = envelope(srv, qid)
    with Busy(srv, qid):
        for args in (["hold", qid], ["release", qid], ["flush", qid], ["delete", qid], ["bounce", qid]):
            err = code(tern_queue(srv, *args), 75, " ".join(args))
            assert "being delivered" in err and "try again" in err, err
        # Reading needs no lock.
        ok(tern_queue(srv, "show", qid), "show while busy")
        assert entry(srv, qid)["id"] == qid
        out = ok(tern_queue(srv, "flush"), "flush all while busy")
        assert "being delivered" in out, out
        assert envelope(srv, qid) == before
        assert srv.messages(ALICE) == []
    ok(tern_queue(srv, "hold", qid), "hold after the delivery ended")


# ---------------------------------------------------------------- without a server, without a spool, bad config


def test_cli_works_with_the_server_stopped(tern):
    srv = deferred_srv(tern)
    q_hold = queue_one(srv, BOB, "stopped hold")
    q_del = queue_one(srv, CAROL, "stopped delete")
    q_bounce = queue_one(srv, DAVE, "stopped bounce")
    srv.stop()

    assert [e["id"] for e in list_json(srv)] == [q_hold, q_del, q_bounce]
    ok(tern_queue(srv, "show", q_hold), "show")
    ok(tern_queue(srv, "hold", q_hold), "hold")
    out = ok(tern_queue(srv, "flush"), "flush")
    assert "2 deferred recipients in 2 entries" in out and "1 held" in out, out
    ok(tern_queue(srv, "delete", q_del), "delete")
    ok(tern_queue(srv, "bounce", q_bounce), "bounce")
    dsn = parse_dsn(srv.messages(ALICE)[0])
    check_failed(dsn, DAVE, status_prefix="5.0.0", subject="stopped bounce")
    assert [e["id"] for e in list_json(srv)] == [q_hold]

    # The server starts with what the CLI left: the held entry stays held and untried.
    srv.start()
    time.sleep(3)
    env = envelope(srv, q_hold)
    assert env["held"] is True
    assert recipient(env, BOB)["status"]["attempts"] == 1
    assert len(srv.messages(ALICE)) == 1


def test_no_spool_yet_is_an_empty_queue_and_nothing_is_created(tern):
    srv = tern(start=False)
    assert not srv.data_dir.exists()
    assert ok(tern_queue(srv, "list")).strip() == "queue is empty"
    assert list_json(srv) == []
    code(tern_queue(srv, "show", "0" * 32), 66, "show")
    code(tern_queue(srv, "hold", "0" * 32), 66, "hold")
    ok(tern_queue(srv, "flush"), "flush")
    assert not srv.data_dir.exists(), "`tern queue` must not create the spool"


def test_config_errors_are_78(tmp_path):
    missing = tmp_path / "nope.toml"
    err = code(run_cli("queue", "--config", str(missing), "list"), 78, "--config missing")
    assert "nope.toml" in err
    code(run_cli("queue", "list", env_extra={"TERN_CONFIG": str(missing)}), 78, "TERN_CONFIG missing")
    bad = tmp_path / "bad.toml"
    bad.write_text("[queue]\nretry_schedule = []\nno_such_key = 1\n")
    code(run_cli("queue", "list", "--config", str(bad)), 78, "invalid config")
    # --config wins over TERN_CONFIG.
    good = tmp_path / "good.toml"
    good.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    ok(run_cli("queue", "list", "--config", str(good), env_extra={"TERN_CONFIG": str(missing)}), "--config wins")


def test_usage_errors_are_64(tern):
    srv = tern(start=False)
    code(tern_queue(srv), 64, "(no subcommand)")
    code(tern_queue(srv, "frobnicate"), 64, "frobnicate")
    code(tern_queue(srv, "flush", "0" * 32, "--domain", "x.test"), 64, "flush ID --domain")
    code(tern_queue(srv, "show"), 64, "show without id")
    assert ok(tern_queue(srv, "--help"))


def test_bulk_actions_by_filter(tern):
    """hold/release/delete without an ID act on the entries the filters select; without a filter they refuse
    (a missing ID must never empty the queue); the timeline records who held the entry."""
    srv = deferred_srv(tern)
    q_remote = queue_one(srv, BOB, "to remote")
    q_other = queue_one(srv, DAVE, "to other")

    for action in ("hold", "release", "delete", "bounce"):
        r = tern_queue(srv, action)
        assert r.returncode == 64, (action, r.returncode, r.stdout, r.stderr)
        assert b"--all" in r.stderr, r.stderr
    r = tern_queue(srv, "hold", q_remote, "--domain", "remote.test")
    assert r.returncode == 64, r

    out = ok(tern_queue(srv, "hold", "--domain", "REMOTE.test"), "hold --domain")
    assert "1 entry matched, 1 held" in out, out
    assert entry(srv, q_remote)["held"] is True
    assert entry(srv, q_other)["held"] is False
    shown = json.loads(ok(tern_queue(srv, "show", q_remote, "--json")))
    held = [t for t in shown["timeline"] if t["event"] == "held"]
    assert held and "tern queue" in held[0]["text"], shown["timeline"]
    assert "held" in ok(tern_queue(srv, "show", q_remote)), "text show has the timeline"

    listed = json.loads(ok(tern_queue(srv, "list", "--json", "--status", "held")))
    assert [e["id"] for e in listed] == [q_remote], listed
    assert all(e["status"] == "held" for e in listed)

    out = ok(tern_queue(srv, "release", "--status", "held"), "release --status held")
    assert "1 entry matched, 1 released" in out, out
    assert entry(srv, q_remote)["held"] is False

    out = ok(tern_queue(srv, "delete", "--sender", ALICE, "--domain", "other.test"), "delete")
    assert "1 entry matched, 1 deleted" in out, out
    ids = [e["id"] for e in list_json(srv)]
    assert ids == [q_remote], ids
    r = tern_queue(srv, "hold", "--status", "bogus")
    assert r.returncode == 64, r
