"""The shared queue on PostgreSQL (issue 14, docs/cluster.md): several real `tern serve` nodes on one database.

Each test gets a fresh database in one private cluster (pg_helpers.Cluster, started once per session). The nodes
relay remote.test to a `Sink` (an aiosmtpd server that records which node delivered each message, by its EHLO name,
and how many connections and DATA transactions it saw at once). The database is read with psql for what the
contract promises about it: `tern_queue` rows, `held`, `leased_by`, `lease_until`.

Covered: a stopped node's mail delivered by the other; 1,000 messages over two nodes delivered exactly once;
`kill -9` mid-delivery and the lease running out; PostgreSQL restarted under load (4xx while down, nothing
acknowledged lost); every `tern queue` command (and the admin API's queue list and show) against the database
while both nodes run; config errors and
`tern queue migrate`; the per-host concurrency limit shared by the nodes."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

import pg_helpers
from pg_helpers import Cluster, Sink, message_id, pg_queue_config, wait_for
from relay_helpers import (ALICE, RawPeer, log_tail, no_reply_after_dot, parse_dsn, relay_config, route_to,
                           tern_queue)
from admin_helpers import AdminClient
from ternlib import free_port, make_message, split_trace, tern_bin

BOB = "bob@remote.test"
EX_CONFIG = 78
EX_IOERR = 74


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def cluster():
    """One private PostgreSQL cluster for the session (skipped without PostgreSQL, except under CI)."""
    if not pg_helpers.available():
        why = "PostgreSQL server binaries (initdb, pg_ctl, psql) are not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    c = Cluster().init()
    yield c
    c.destroy()


@pytest.fixture
def db(cluster):
    """A fresh, empty database of the session cluster; the cluster is running when the test starts."""
    if not cluster.running():
        cluster.start()
    return cluster.fresh_db()


def node(tern, tmp_path, cluster, db, node_id: str, port: int, *, lease_time: str = "5m", queue=None,
         outbound=None, start: bool = True, **extra):
    """A tern on the shared queue in `db` relaying remote.test to 127.0.0.1:port. Its hostname (and so its EHLO
    name at the sink) is `<node_id>.tern.test`."""
    d = tmp_path / f"pg-{node_id}"
    d.mkdir(exist_ok=True)
    q = {**pg_queue_config(d, cluster.url(db), node_id, lease_time), **(queue or {})}
    cfg = relay_config(routes={"remote.test": route_to(port)}, queue=q, outbound=outbound,
                       hostname=f"{node_id}.tern.test", **extra)
    return tern(start=start, **cfg)


def rows(cluster, db, sql: str) -> list[list[str]]:
    out = cluster.psql(sql, db)
    return [line.split("|") for line in out.splitlines() if line]


def queued_ids(cluster, db) -> list[str]:
    return [r[0] for r in rows(cluster, db, "SELECT id FROM tern_queue ORDER BY id")]


def queue_count(cluster, db) -> int:
    return int(cluster.psql("SELECT count(*) FROM tern_queue", db))


def wait_queue_empty(cluster, db, timeout: float, *nodes) -> None:
    try:
        wait_for(lambda: queue_count(cluster, db) == 0, timeout, "tern_queue to be empty", 0.2)
    except AssertionError as e:
        left = rows(cluster, db, "SELECT id, held, leased_by, lease_until, next_due FROM tern_queue LIMIT 20")
        raise AssertionError(f"{e}; rows left: {left}{tails(*nodes)}") from None


def tails(*nodes, lines: int = 30) -> str:
    return "".join(f"\n--- log of {n.config['queue']['node_id']} ---\n{log_tail(n, lines)}" for n in nodes)


def recovered(srv) -> bool:
    """The start-up line of a node on the shared queue."""
    node_id = srv.config["queue"]["node_id"]
    return any("queue recovered" in line and "postgres" in line and node_id in line for line in srv.log().splitlines())


def wait_deferred(cluster, db, qids, timeout: float = 20, *nodes) -> None:
    """Waits until every recipient of each entry is deferred and no node holds a lease on it."""
    ids = ", ".join(f"'{q}'" for q in qids)
    sql = (f"SELECT count(DISTINCT q.id) FROM tern_queue q JOIN tern_recipients r ON r.id = q.id "
           f"WHERE q.id IN ({ids}) AND r.state = 'deferred' AND q.leased_by IS NULL")
    try:
        wait_for(lambda: int(cluster.psql(sql, db)) == len(qids), timeout, f"{qids} to be deferred", 0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}; rows: {rows(cluster, db, 'SELECT * FROM tern_recipients')}{tails(*nodes)}") \
            from None


def run_tern(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(tern_bin()), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def cli(srv, *args: str, expect: int = 0) -> str:
    """`tern queue ARGS` with the node's config; asserts the exit status and returns stdout."""
    r = tern_queue(srv, *args)
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    assert r.returncode == expect, f"tern queue {' '.join(args)}: exit {r.returncode}, expected {expect}\n" \
                                   f"stdout: {out}\nstderr: {err}"
    return out


@dataclass
class Sent:
    mid: str
    code: int  # the reply that ended the transaction (250 after DATA, or the first refusal)
    text: str
    dot_at: float  # time.monotonic() just before the end of DATA was sent (inf if DATA was never reached)
    reply_at: float


def send_one(host: str, port: int, mid: str, subject: str, timeout: float = 60) -> Sent:
    """One transaction on a new connection to BOB; never raises for an SMTP refusal or a dropped connection."""
    msg = (f"From: <{ALICE}>\r\nTo: <{BOB}>\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n\r\n"
           f"body of {mid}\r\n").encode()
    dot_at = float("inf")
    try:
        with smtplib.SMTP(host, port, local_hostname="client.test", timeout=timeout) as s:
            s.ehlo()
            for verb, call in (("MAIL", lambda: s.mail(ALICE)), ("RCPT", lambda: s.rcpt(BOB))):
                code, text = call()
                if code != 250:
                    return Sent(mid, code, f"{verb}: {text!r}", dot_at, time.monotonic())
            code, text = s.docmd("DATA")
            if code != 354:
                return Sent(mid, code, f"DATA: {text!r}", dot_at, time.monotonic())
            dot_at = time.monotonic()
            s.send(msg + b".\r\n")  # CRLF lines, none starting with "."
            code, text = s.getreply()
            return Sent(mid, code, f"end of DATA: {text!r}", dot_at, time.monotonic())
    except smtplib.SMTPConnectError as e:
        return Sent(mid, e.smtp_code, f"greeting: {e.smtp_error!r}", dot_at, time.monotonic())
    except smtplib.SMTPServerDisconnected as e:
        # The server closed after a reply we already have, or (a 421) instead of one: not an acknowledgement.
        return Sent(mid, 0, f"disconnected: {e}", dot_at, time.monotonic())
    except OSError as e:
        return Sent(mid, 0, f"socket: {e}", dot_at, time.monotonic())


# ---------------------------------------------------------------- 1. failover of a stopped node


def test_stopped_nodes_mail_is_delivered_by_the_other(tern, tmp_path, cluster, db):
    """Mail node A accepted (and could not deliver: the sink defers it) is delivered, byte-exact, by node B
    after A was stopped: the queue lives in the database, not on A."""
    with Sink(data_reply="451 4.3.2 not now (sink)") as sink:
        a = node(tern, tmp_path, cluster, db, "mx-a", sink.port, queue={"retry_schedule": ["1s"]})
        assert recovered(a), f"no `queue recovered backend=postgres node_id=mx-a` line:\n{a.log()}"
        msg = make_message("failover", body=b"one\r\n..dots\r\n caf\xc3\xa9\r\n", sender=ALICE, to=BOB)
        qid = a.deliver(ALICE, BOB, msg)
        assert rows(cluster, db, f"SELECT accepted_by FROM tern_queue WHERE id = '{qid}'") == [["mx-a"]]
        wait_for(lambda: sink.refused >= 1, 20, "node A's first (deferred) attempt")
        a.stop()
        assert not sink.arrivals
        assert queued_ids(cluster, db) == [qid], "the deferred entry stays in the database when its node stops"

        sink.data_reply = None
        b = node(tern, tmp_path, cluster, db, "mx-b", sink.port, queue={"retry_schedule": ["1s"]})
        sink.wait_ids([message_id(msg)], 20, "node B delivering A's entry", lambda: tails(a, b))
        got = sink.arrivals
        assert len(got) == 1, f"delivered once, got {len(got)}"
        assert got[0].helo == "mx-b.tern.test", f"delivered by {got[0].helo!r}, A is stopped"
        assert got[0].mail_from == ALICE and got[0].rcpt_tos == [BOB]
        trace, rest = split_trace(got[0].content)
        assert rest == msg, "the message after the trace header must be byte-identical"
        assert [n.lower() for n, _ in trace] == ["received"] and "by mx-a.tern.test" in trace[0][1], trace
        wait_queue_empty(cluster, db, 10, b)


# ---------------------------------------------------------------- 2. exactly once with two nodes


@pytest.mark.timeout(150)
def test_thousand_messages_over_two_nodes_delivered_exactly_once(tern, tmp_path, cluster, db):
    """1,000 messages sent to the two nodes alternately (4 client threads) arrive at the sink exactly once each,
    by Message-ID, and the queue table is empty afterwards."""
    total, threads = 1000, 4
    with Sink() as sink:
        nodes = [node(tern, tmp_path, cluster, db, n, sink.port, queue={"retry_schedule": ["2s"]},
                      log={"level": "info"}) for n in ("mx-a", "mx-b")]
        mids = [f"<m{i:04d}.{os.getpid()}@cluster.test>" for i in range(total)]
        failures: list[str] = []

        def client(t: int) -> None:
            conns = [n.smtp() for n in nodes]
            try:
                for c in conns:
                    c.ehlo()
                for i in range(t, total, threads):
                    s = conns[i % 2]  # message i goes to node i % 2: alternately
                    msg = make_message(f"m{i}", sender=ALICE, to=BOB).replace(
                        b"Message-ID: <", f"Message-ID: {mids[i]}\r\nX-Old-Id: <".encode(), 1)
                    try:
                        s.sendmail(ALICE, [BOB], msg)
                    except smtplib.SMTPException as e:
                        failures.append(f"{mids[i]} via {nodes[i % 2].config['queue']['node_id']}: {e!r}")
            finally:
                for c in conns:
                    try:
                        c.quit()
                    except smtplib.SMTPException:
                        pass

        started = time.monotonic()
        workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=100)
        assert not any(w.is_alive() for w in workers), "a client thread hung"
        assert not failures, f"{len(failures)} message(s) refused: {failures[:10]}"
        accepted = time.monotonic() - started

        def report() -> str:
            ids = sink.ids()
            seen: dict = {}
            for m in ids:
                seen[m] = seen.get(m, 0) + 1
            dups = sorted(m for m, n in seen.items() if n > 1)
            missing = sorted(set(mids) - set(seen))
            return (f"; {len(ids)} arrivals, duplicates ({len(dups)}): {dups[:20]}, missing ({len(missing)}): "
                    f"{missing[:20]}; queue rows: {queue_count(cluster, db)}{tails(*nodes)}")

        sink.wait_ids(mids, 60, "1,000 messages over two nodes", report)
        wait_queue_empty(cluster, db, 20, *nodes)
        ids = sink.ids()
        assert len(ids) == total and set(ids) == set(mids), f"exactly once{report()}"
        by_node = {h: sum(1 for a in sink.arrivals if a.helo == h) for h in ("mx-a.tern.test", "mx-b.tern.test")}
        assert sum(by_node.values()) == total, by_node
        print(f"accepted {total} in {accepted:.1f}s, delivered by node: {by_node}")


# ---------------------------------------------------------------- 3. kill -9 mid-delivery




@pytest.mark.timeout(90)
def test_kill9_mid_delivery_other_node_delivers_after_lease(tern, tmp_path, cluster, db):
    """Node A (lease_time 6s) is killed with -9 while its remote sits on the final dot. Node B delivers every
    one of A's entries, but only once A's lease (read from `lease_until` after the kill) has run out."""
    in_data = threading.Event()
    with RawPeer(lambda c: no_reply_after_dot(c, in_data)) as hang, Sink() as sink:
        # A's route goes to the peer that never answers the dot (data_timeout far above the lease); B's to the sink.
        a = node(tern, tmp_path, cluster, db, "mx-a", hang.port, lease_time="6s",
                 outbound={"data_timeout": "60s", "attempt_timeout": "120s"})
        msgs = [make_message(f"kill9 {i}", sender=ALICE, to=BOB) for i in range(3)]
        qids = [a.deliver(ALICE, BOB, m) for m in msgs]
        assert in_data.wait(20), f"node A never reached the end of DATA at the hanging peer{tails(a)}"
        b = node(tern, tmp_path, cluster, db, "mx-b", sink.port, lease_time="6s")
        assert queue_count(cluster, db) == 3
        a.kill9()
        killed_at = time.time()
        leases = {r[0]: (r[1], float(r[2]) if r[2] else None) for r in rows(
            cluster, db, "SELECT id, coalesce(leased_by, ''), extract(epoch FROM lease_until) FROM tern_queue")}
        assert set(leases) == set(qids), leases
        held_by_a = {q: until for q, (who, until) in leases.items() if who == "mx-a"}
        assert held_by_a, f"A was delivering but holds no lease: {leases}"

        wanted = {message_id(m): q for m, q in zip(msgs, qids)}
        sink.wait_ids(wanted, 40, "node B taking over A's entries", lambda: tails(a, b))
        for arrival in sink.arrivals:
            q = wanted[arrival.message_id]
            assert arrival.helo == "mx-b.tern.test", arrival.helo
            if q in held_by_a:
                until = held_by_a[q]
                assert arrival.at >= until - 0.3, (
                    f"{q} delivered by B {until - arrival.at:.1f}s before A's lease ran out "
                    f"(killed at {killed_at:.1f}, lease_until {until:.1f}, arrived {arrival.at:.1f})")
        assert sorted(sink.ids()) == sorted(wanted), f"each exactly once: {sink.ids()}"
        print("kill -9 at 0; A's leases ran out at", sorted(round(u - killed_at, 2) for u in held_by_a.values()),
              "; B delivered at", sorted(round(x.at - killed_at, 2) for x in sink.arrivals))
        wait_queue_empty(cluster, db, 10, b)


# ---------------------------------------------------------------- 4. PostgreSQL restarted under load


@pytest.mark.timeout(150)
def test_postgres_restart_under_load_loses_nothing_acknowledged(tern, tmp_path, cluster, db):
    """A client sends continuously to both nodes while PostgreSQL is stopped (for about 3 s) and started again:
    no 250 for a DATA sent while it is down (but 4xx replies), acceptance resumes by itself, every message that
    got a 250 reaches the sink, and none waits out a lease (20 s) after the database is back: the nodes are
    alive, so nothing has to wait for a lease to run out."""
    lease = 20
    with Sink() as sink:
        nodes = [node(tern, tmp_path, cluster, db, n, sink.port, lease_time=f"{lease}s",
                      queue={"retry_schedule": ["1s"]}, log={"level": "info"}) for n in ("mx-a", "mx-b")]
        sent: list[Sent] = []
        stop = threading.Event()

        def client() -> None:
            i = 0
            while not stop.is_set():
                n = nodes[i % 2]
                sent.append(send_one(n.host, n.port, f"<pg{i:05d}.{os.getpid()}@cluster.test>", f"load {i}"))
                i += 1

        t = threading.Thread(target=client)
        t.start()
        try:
            wait_for(lambda: sum(s.code == 250 for s in sent) >= 20, 30, "20 messages accepted before the restart")
            cluster.stop("fast")
            down_at = time.monotonic()
            n_before = len(sent)
            try:
                wait_for(lambda: sum(400 <= s.code < 500 for s in sent[n_before:]) >= 4
                         and time.monotonic() - down_at > 3, 60, "4xx replies while PostgreSQL is down", 0.1)
            finally:
                up_at = time.monotonic()
                cluster.start()
                up_wall = time.time()
            n_up = len(sent)
            wait_for(lambda: sum(s.code == 250 for s in sent[n_up:]) >= 10, 60,
                     "acceptance to resume after PostgreSQL is back", 0.1)
        finally:
            stop.set()
            t.join(timeout=90)
        assert not t.is_alive(), "the client thread hung"

        while_down = [s for s in sent if s.dot_at > down_at and s.reply_at < up_at]
        acked_while_down = [s for s in while_down if s.code == 250]
        assert not acked_while_down, f"250 for a DATA sent while PostgreSQL was down: {acked_while_down[:5]}" \
                                     f"{tails(*nodes)}"
        # Every transaction answered while it was down (and not finished before) got a 4xx or lost its connection.
        answered_down = [s for s in sent if down_at < s.reply_at < up_at and s.dot_at > down_at]
        odd = [s for s in answered_down if s.code != 0 and not 400 <= s.code < 500]
        assert not odd, f"only 4xx (or a dropped connection) while PostgreSQL is down: {odd[:5]}"
        acked = [s.mid for s in sent if s.code == 250]
        print(f"sent {len(sent)}, acknowledged {len(acked)}, "
              f"refused while down {sum(400 <= s.code < 500 for s in sent)}")
        # Nothing acknowledged is lost: at the latest once a stuck lease ran out, every one arrives.
        sink.wait_ids(acked, 2 * lease + 20, "every acknowledged message",
                      lambda: lost_report(sent, sink, cluster, db, down_at, up_at, nodes))
        first = {}
        for a in sink.arrivals:
            first.setdefault(a.message_id, a.at)
        late = {m: round(first[m] - up_wall, 1) for m in acked if first[m] - up_wall > lease / 2}
        assert not late, (
            f"{len(late)} acknowledged message(s) arrived only after waiting out a lease ({lease}s) though both "
            f"nodes stayed up (seconds after PostgreSQL was back): {late}"
            f"{lost_report(sent, sink, cluster, db, down_at, up_at, nodes, only=set(late))}")
        # A message refused with 4xx may still have been committed (the commit's reply was lost): that is a
        # duplicate at worst, which SMTP allows. Acknowledged ones must each arrive; none twice.
        ids = sink.ids()
        dups = sorted({m for m in ids if ids.count(m) > 1})
        assert not dups, f"delivered twice: {dups[:10]}"
        wait_queue_empty(cluster, db, 30, *nodes)


def lost_report(sent, sink, cluster, db, down_at, up_at, nodes, only: set | None = None) -> str:
    """For each acknowledged message the sink never got (or each in `only`): its reply, when it was sent
    (relative to the outage), its row in the database and every log line naming its queue id."""
    arrived = set(sink.ids())
    out = [f"; PostgreSQL was down from t=0 to t={up_at - down_at:.2f}s"]
    for s in sent:
        if s.code != 250 or (s.mid not in only if only is not None else s.mid in arrived):
            continue
        qid = s.text.split("queued as ")[-1].strip(" '\"").split()[0] if "queued as" in s.text else "?"
        out.append(f"\n{s.mid}: {s.code} {s.text} (DATA end sent at t={s.dot_at - down_at:+.3f}s, reply at "
                   f"t={s.reply_at - down_at:+.3f}s); tern_queue row: "
                   f"{rows(cluster, db, f'SELECT id, accepted_by, leased_by, held FROM tern_queue WHERE id = ' + repr(qid))}")
        for n in nodes:
            for line in n.log().splitlines():
                if qid in line:
                    out.append(f"\n  [{n.config['queue']['node_id']}] {line[:400]}")
    return "".join(out) + tails(*nodes, lines=15)


# ---------------------------------------------------------------- 5. tern queue against the database


def test_queue_cli_against_database_while_two_nodes_run(tern, tmp_path, cluster, db):
    """`tern queue list [--json] / show / hold / release / flush / delete / bounce` with a node's config act on
    the shared queue while both nodes run: a held entry is not delivered by either node, a deleted one never
    arrives, a bounced one turns into a DSN (multipart/report) in the local sender's Maildir. The admin API of
    one node lists and shows the entries the other node accepted."""
    with Sink(data_reply="451 4.3.2 deferred by the sink") as sink:
        api_port = free_port()
        # retry_schedule 1h: deferred entries stay
        a = node(tern, tmp_path, cluster, db, "mx-a", sink.port, admin={"listen": f"127.0.0.1:{api_port}"})
        b = node(tern, tmp_path, cluster, db, "mx-b", sink.port)
        msgs = {name: make_message(f"cli {name}", sender=ALICE, to=BOB) for name in ("hold", "flush", "del", "bnc")}
        qid = {name: (a if i % 2 == 0 else b).deliver(ALICE, BOB, m) for i, (name, m) in enumerate(msgs.items())}
        wait_deferred(cluster, db, list(qid.values()), 20, a, b)

        text = cli(a, "list")
        for q in qid.values():
            assert q in text, f"{q} not in `tern queue list`:\n{text}"
        listed = {e["id"]: e for e in json.loads(cli(b, "list", "--json"))}
        assert set(listed) == set(qid.values()), listed
        assert all(e["sender"] == ALICE and e["status"] == "deferred" for e in listed.values()), listed

        # The admin API (docs/operations.md) reads the same shared queue: node a lists b's entries too.
        api = AdminClient(f"http://127.0.0.1:{api_port}")
        api.wait_up()
        got = api.ok_json("GET", "/api/queue")
        assert {e["id"] for e in got["entries"]} == set(qid.values()), got
        by_b = qid["flush"]  # accepted by b (odd index)
        assert api.ok_json("GET", f"/api/queue/{by_b}")["id"] == by_b

        shown = json.loads(cli(a, "show", qid["hold"], "--json"))
        assert shown["id"] == qid["hold"]
        r = [x for x in shown["recipients"] if x["address"] == BOB]
        assert r and r[0]["state"] == "deferred" and "451 4.3.2" in (r[0]["last_reply"] or ""), shown
        assert "Subject: cli hold" in shown["headers"], shown["headers"]

        cli(a, "hold", qid["hold"])
        assert rows(cluster, db, f"SELECT held, next_due IS NULL FROM tern_queue WHERE id = '{qid['hold']}'") \
            == [["t", "t"]]
        cli(b, "delete", qid["del"])
        assert qid["del"] not in queued_ids(cluster, db)
        cli(a, "bounce", qid["bnc"])
        assert qid["bnc"] not in queued_ids(cluster, db)
        cli(a, "show", qid["del"], expect=66)

        # Now the sink accepts: a flush of everything due delivers "flush" at once, never the held entry.
        sink.data_reply = None
        cli(b, "flush")
        sink.wait_ids([message_id(msgs["flush"])], 20, "the flushed entry", lambda: tails(a, b))
        wait_for(lambda: qid["flush"] not in queued_ids(cluster, db), 10, "the flushed entry to leave the table")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert message_id(msgs["hold"]) not in sink.ids(), "a held entry was delivered"
            time.sleep(0.1)
        assert rows(cluster, db, f"SELECT held FROM tern_queue WHERE id = '{qid['hold']}'") == [["t"]]

        # Released, it is due at once (or its retry time, which `flush` makes now).
        cli(b, "release", qid["hold"])
        assert rows(cluster, db, f"SELECT held FROM tern_queue WHERE id = '{qid['hold']}'") in ([["f"]], [])
        if qid["hold"] in queued_ids(cluster, db):
            r = tern_queue(a, "flush", qid["hold"])
            assert r.returncode in (0, 66), r  # 66: delivered in between
        sink.wait_ids([message_id(msgs["hold"])], 20, "the released entry", lambda: tails(a, b))
        wait_queue_empty(cluster, db, 10, a, b)

        # The bounce reaches the sender's Maildir on one of the nodes.
        def bounces():
            return a.messages(ALICE) + b.messages(ALICE)
        raws = wait_for(bounces, 20, "the DSN of the bounced entry in alice's Maildir on a node")
        assert len(raws) == 1, f"one DSN, got {len(raws)}"
        dsn = parse_dsn(raws[0])
        assert dsn.msg.get_content_type() == "multipart/report"
        assert dsn.original_headers is not None and dsn.original_headers.get("Subject") == "cli bnc", dsn.raw[:2000]
        assert str(dsn.for_rcpt(BOB).get("Action", "")).strip().lower() == "failed"

        assert sorted(sink.ids()) == sorted([message_id(msgs["flush"]), message_id(msgs["hold"])]), \
            "deleted and bounced entries are never delivered"


# ---------------------------------------------------------------- 6. config errors and migrate


def test_config_errors_and_migrate(tern, tmp_path, cluster, db):
    """backend = "postgres" without postgres_url_file: exit 78 naming the key; an unreachable database: a non-zero
    exit naming PostgreSQL; `tern queue list` on a database never migrated: exit 74 saying to run `tern queue
    migrate`; `tern queue migrate` migrates once, then has nothing to do; with the fs backend it exits 78."""
    no_url = tern(start=False, queue={"backend": "postgres", "node_id": "mx-a"})
    r = run_tern("serve", "--config", str(no_url.config_path), timeout=20)
    assert r.returncode == EX_CONFIG, f"exit {r.returncode}: {r.stdout}{r.stderr}"
    assert "queue.postgres_url_file" in r.stdout + r.stderr, r.stdout + r.stderr

    d = tmp_path / "unreachable"
    d.mkdir()
    closed = pg_helpers.free_port()
    dead = tern(start=False, queue=pg_queue_config(d, f"postgres://tern@127.0.0.1:{closed}/nothing", "mx-a"))
    r = run_tern("serve", "--config", str(dead.config_path), timeout=60)
    assert r.returncode != 0, f"tern serve started on an unreachable database: {r.stdout}{r.stderr}"
    assert "postgresql" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr

    d2 = tmp_path / "fresh"
    d2.mkdir()
    fresh = tern(start=False, queue=pg_queue_config(d2, cluster.url(db), "mx-a"))
    r = tern_queue(fresh, "list")
    assert r.returncode == EX_IOERR, f"exit {r.returncode}: {r.stdout!r} {r.stderr!r}"
    assert b"run `tern queue migrate`" in r.stdout + r.stderr, r.stdout + r.stderr
    assert cluster.psql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'tern\\_%'", db) == "0", \
        "tern queue list must not create the schema"

    r = run_tern("queue", "--config", str(fresh.config_path), "migrate")
    assert r.returncode == 0 and "queue schema migrated from version 0 to 1" in r.stdout, r
    r = run_tern("queue", "--config", str(fresh.config_path), "migrate")
    assert r.returncode == 0 and "queue schema is at version 1: nothing to do" in r.stdout, r
    tables = set(cluster.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", db).split())
    assert {"tern_queue", "tern_bodies", "tern_recipients", "tern_host_slots", "tern_rate", "tern_schema"} <= tables
    assert cli(fresh, "list", "--json").strip() == "[]"

    fs = tern(start=False)
    r = run_tern("queue", "--config", str(fs.config_path), "migrate")
    assert r.returncode == EX_CONFIG, r


# ---------------------------------------------------------------- 7. shared per-host concurrency


@pytest.mark.timeout(90)
def test_concurrency_per_host_is_shared_by_the_nodes(tern, tmp_path, cluster, db):
    """With outbound.concurrency_per_host = 1 on both nodes and a sink that holds each DATA for 1 s, the sink
    never has more than one DATA transaction at a time across both nodes (the limit counts deliveries, not idle
    connections kept for reuse), and all mail arrives."""
    with Sink(hold=1.0) as sink:
        opts = dict(queue={"retry_schedule": ["1s"]},
                    outbound={"concurrency_per_host": 1, "data_timeout": "10s", "attempt_timeout": "60s"})
        a = node(tern, tmp_path, cluster, db, "mx-a", sink.port, **opts)
        b = node(tern, tmp_path, cluster, db, "mx-b", sink.port, **opts)
        msgs = [make_message(f"slot {i}", sender=ALICE, to=f"r{i}@remote.test") for i in range(6)]
        done = []

        def send(srv, m, i):
            done.append(srv.deliver(ALICE, f"r{i}@remote.test", m))

        senders = [threading.Thread(target=send, args=(a if i % 2 == 0 else b, m, i)) for i, m in enumerate(msgs)]
        for s in senders:
            s.start()
        for s in senders:
            s.join(timeout=20)
        assert len(done) == len(msgs), "every message accepted"
        sink.wait_ids([message_id(m) for m in msgs], 60, "all six messages", lambda: tails(a, b))
        helos = sorted({x.helo for x in sink.arrivals})
        assert sink.max_active_data <= 1, (
            f"{sink.max_active_data} DATA transactions at once across the nodes (limit 1); delivered by {helos}; "
            f"timeline:\n{sink.timeline()}")
        # Connections are not what the limit counts: a node keeps its connection open for up to 5 s after a
        # delivery for the next one (docs/flow.md), and that idle connection holds no slot.
        wait_queue_empty(cluster, db, 10, a, b)
