"""tern's milter client (issue 12) against a scripted milter (milterpeer.py), written from the protocol, not from
tern's code.

Covered: the scripted milter itself (framing, NR_* honoured) and checked against a real MTA (Postfix as the milter
client); what tern sends (OPTNEG offer, CONNECT host/family/port/address, the macros of each stage, HELO, MAIL and
RCPT arguments, every header in order with tern's Received first, body bytes, EOM, ABORT after RSET, QUIT); each
verdict at each step (reject, tempfail, reply code, discard, accept) and the exact SMTP reply; per-recipient
reject; every end-of-message modification checked on the bytes in the Maildir or at the relay sink (addheader,
insheader, chgheader incl. delete and the n-th occurrence, chgfrom, addrcpt local and remote, delrcpt, replbody,
quarantine into .Junk); SMFIR_PROGRESS; the per-step timeout and the end-of-message timeout; garbage, an action not
negotiated, a close mid-body, a milter not listening, under both on_failure values (nothing half-modified, tern
still serving); a unix socket; two milters in order; a 2 MiB message and a replaced 2 MiB body; apply_to on the
submission port with the AUTH and TLS macros.

The contract (reply texts, macro names, header indexes) is the one of issue 12; see the report in the PR.
"""

from __future__ import annotations

import json

import socket
import time

import pytest

from milter_peers import milter_peer  # noqa: F401  (fixture)
from milter_peers import (ALICE, BOB, CAROL, CMD_REJECT, CONTENT_REJECT, GO_AWAY, LATER, REMOTE_BOB, SENDER, TEMPFAIL,
                          WAIT, Session, assert_log, assert_no_copy, assert_still_serves, body_of, conn_for, crlf,
                          expect, message, milter_cfg, parse, seen, send_mail, start, stored, txn, unfold)
from milterpeer import (ALL_ACTIONS, GARBAGE_HUGE_LENGTH, GARBAGE_TEXT, GARBAGE_TRUNCATED, GARBAGE_UNKNOWN_CODE,
                        MAX_BODY_CHUNK, SMFIC_OPTNEG, SMFIF_ADDHDRS, SMFIP_NOBODY, SMFIP_NOCONNECT, SMFIP_NOHDRS,
                        SMFIP_NR_CONN, SMFIP_NR_HDR, SMFIP_NR_RCPT, SMFIP_SKIP, MilterPeer, Script, cstr,
                        modification_packets, packet, response_packet, split_strings)
from relay_helpers import Postfix, Remote, relay_config, require_postfix, route_to, tern_queue, wait_for
from sec_helpers import ALICE as AUTH_USER, ALICE_PW, Client, Ports, tls_config
from ternlib import HOSTNAME, free_port

# ---------------------------------------------------------------- the scripted milter itself


def test_milterpeer_framing_and_no_reply_flags():
    assert packet(b"c") == b"\x00\x00\x00\x01c"
    assert response_packet("reject") == b"\x00\x00\x00\x01r"
    assert response_packet(GO_AWAY) == packet(b"y", GO_AWAY.encode() + b"\0")
    assert modification_packets(("insheader", 2, "X-A", "b")) == [packet(b"i", b"\x00\x00\x00\x02X-A\0b\0")]
    chunks = modification_packets(("replbody", b"x" * (MAX_BODY_CHUNK * 2 + 1)))
    assert [len(p) - 5 for p in chunks] == [MAX_BODY_CHUNK, MAX_BODY_CHUNK, 1]
    assert split_strings(b"a\0b\0") == [b"a", b"b"]
    with pytest.raises(ValueError):
        split_strings(b"a\0b")
    with MilterPeer(Script(protocol=SMFIP_NR_CONN | SMFIP_NR_RCPT, actions=SMFIF_ADDHDRS,
                           responses={"mail": "tempfail"})) as peer:
        with socket.create_connection(("127.0.0.1", peer.port), timeout=5) as s:
            s.sendall(packet(SMFIC_OPTNEG, (6).to_bytes(4, "big") + ALL_ACTIONS.to_bytes(4, "big")
                             + (0x1FFFFF).to_bytes(4, "big")))
            got = s.recv(17)
            assert got == packet(b"O", (6).to_bytes(4, "big") + (1).to_bytes(4, "big")
                                 + (SMFIP_NR_CONN | SMFIP_NR_RCPT).to_bytes(4, "big"))
            # NR_CONN: no reply to CONNECT; MAIL is answered (tempfail); NR_RCPT: no reply to RCPT.
            s.sendall(packet(b"C", cstr("[127.0.0.1]") + b"4" + (2525).to_bytes(2, "big") + cstr("127.0.0.1")))
            s.sendall(packet(b"D", b"M" + cstr("i") + cstr("Q1")) + packet(b"M", cstr("<a@b.test>") + cstr("SIZE=9")))
            assert s.recv(5) == b"\x00\x00\x00\x01t"
            s.sendall(packet(b"R", cstr("<c@d.test>")) + packet(b"Q"))
            s.settimeout(5)
            assert s.recv(5) == b"", "a reply was sent to RCPT despite NR_RCPT, or the milter did not close on QUIT"
        conn = peer.wait_closed(1)
    assert conn.offered == (6, ALL_ACTIONS, 0x1FFFFF)
    assert conn.connect == ("[127.0.0.1]", "4", 2525, "127.0.0.1")
    t = conn.transactions[0]
    assert t.mail == ["<a@b.test>", "SIZE=9"] and t.macros["mail"] == {"i": "Q1"} and t.rcpt_addrs == ["<c@d.test>"]
    assert conn.quit and conn.errors == []


def test_milterpeer_against_postfix_as_the_milter_client():
    """An independent check of the scripted milter: a real MTA (Postfix 3.7) is its client. What it records is what
    Postfix sent, its per-recipient reply code is what the SMTP client gets, its header edits land in the Maildir."""
    require_postfix()
    script = Script(rcpt_responses={"carol@pf.test": "550 5.7.1 not carol (scripted)"},
                    modifications=[("addheader", "X-Milter", "added"), ("chgheader", 1, "Subject", "changed")])
    with MilterPeer(script) as peer, Postfix(domain="pf.test", users=("bob", "carol"),
                                             extra=(f"smtpd_milters = {peer.address}", "milter_protocol = 6",
                                                    "milter_default_action = tempfail")) as pf:
        body = b"line one\r\n" + b"".join(b"line %05d ..........................................\r\n" % i
                                            for i in range(2000))
        msg = b"From: <a@x.test>\r\nTo: <bob@pf.test>\r\nSubject: hi\r\n\r\n" + body
        s = send_mail(pf.port, msg, rcpts=("bob@pf.test", "carol@pf.test"), sender="a@x.test")
        assert s.rcpts[0][0] == 250 and s.rcpts[1] == (550, "5.7.1 not carol (scripted)"), s
        assert s.dot and s.dot[0] == 250, s
        got = crlf(pf.wait_delivered("bob")[0])
        t = peer.wait_for(lambda: next((t for c in peer.connections for t in c.transactions if t.eom), None),
                          WAIT, "a transaction with EOM")
    assert t.mail == ["<a@x.test>"] and t.rcpt_addrs == ["<bob@pf.test>", "<carol@pf.test>"]
    assert t.headers == [("From", "<a@x.test>"), ("To", "<bob@pf.test>"), ("Subject", "hi")]
    assert t.body == body
    assert all(len(c) <= MAX_BODY_CHUNK for c in t.body_chunks) and len(t.body_chunks) >= 2
    assert b"\r\nX-Milter: added\r\n\r\n" in got and b"\r\nSubject: changed\r\n" in got, got[:600]
    assert peer.errors() == []


# ---------------------------------------------------------------- what tern sends


def test_clean_message_and_everything_tern_sent(tern, milter_peer):
    peer = milter_peer()
    srv = start(tern, milter_cfg(peer))
    msg = message("all steps", extra=b"X-Folded: one\r\n two\r\nX-Dup: 1\r\nX-Dup: 2\r\n",
                  body=b"line 1\r\n..dot-stuffed\r\n\r\ntrailing blanks  \r\n\tand a tab\r\n")
    s = send_mail(srv.port, msg, rcpts=(ALICE, BOB), mail_params=" BODY=8BITMIME")
    assert s.dot and s.dot[0] == 250, f"{s}\n{srv.log()[-3000:]}"
    qid = s.qid
    conn = conn_for(peer, s)

    # OPTNEG: version 6, every action, the NR_*/NO_*/SKIP flags offered.
    version, actions, protocol = conn.offered
    assert version == 6 and actions == ALL_ACTIONS, conn.offered
    for flag in (SMFIP_NOCONNECT, SMFIP_NOHDRS, SMFIP_NOBODY, SMFIP_NR_CONN, SMFIP_NR_HDR, SMFIP_SKIP):
        assert protocol & flag, f"protocol flag {flag:#x} not offered: {protocol:#x}"

    assert conn.connect is not None and conn.connect[1:] == ("4", s.client_port, "127.0.0.1"), conn.connect
    cm = conn.macros["connect"]
    assert cm.get("j") == HOSTNAME and cm.get("{daemon_name}") == "tern", cm
    assert cm.get("{client_addr}") == "127.0.0.1" and cm.get("{client_port}") == str(s.client_port), cm
    assert cm.get("{if_addr}") == "127.0.0.1" and "{client_name}" in cm and "_" in cm, cm
    assert conn.helo == ["client.test"]

    assert len(conn.transactions) == 1, conn.transactions
    t = conn.transactions[0]
    assert t.mail is not None and t.mail[0] == f"<{SENDER}>" and "BODY=8BITMIME" in t.mail[1:], t.mail
    assert t.macros["mail"].get("i") == qid, (t.macros, qid)
    assert t.macros["mail"].get("{mail_addr}") == SENDER, t.macros
    assert "{auth_authen}" not in t.macros["mail"], "no AUTH on port 25"
    assert t.rcpt_addrs == [f"<{ALICE}>", f"<{BOB}>"]
    rcpt_macros = [d.get("{rcpt_addr}") for stage, d in conn.macro_log if stage == "rcpt"]
    assert rcpt_macros == [ALICE, BOB], conn.macro_log
    assert t.data and t.eoh and t.eom
    assert t.macros["eom"].get("i") == qid, t.macros

    # The header section as tern stores it: its own Received first, then the client's fields in order.
    client_fields = [(n, unfold(v)) for n, v in parse(msg)[0]]
    assert t.headers[0][0] == "Received" and f"by {HOSTNAME}" in t.headers[0][1], t.headers
    assert seen(t.headers[1:]) == client_fields, t.headers
    assert not t.headers[1][1].startswith(" "), "a value starts with the space after the colon (no HDR_LEADSPC)"
    assert t.body == body_of(msg), "the body as the client sent it, CRLF, dots unstuffed"
    assert all(0 < len(c) <= MAX_BODY_CHUNK for c in t.body_chunks)
    assert conn.quit, f"no QUIT at the end of the SMTP session: {conn.commands}"
    assert peer.errors() == []

    # What was stored is what the milter saw, byte for byte in the body.
    for rcpt in (ALICE, BOB):
        pairs, _, body = parse(stored(srv, rcpt)[0])
        assert pairs == seen(t.headers), f"{rcpt}: stored {pairs} vs seen {t.headers}"
        assert body == body_of(msg)


def test_rset_sends_abort_and_a_second_transaction_is_filtered_too(tern, milter_peer):
    peer = milter_peer()
    srv = start(tern, milter_cfg(peer))
    s = send_mail(srv.port, message("after rset"), rset_first=True)
    assert s.dot and s.dot[0] == 250, s
    conn = conn_for(peer, s)
    assert "A" in conn.commands, f"no SMFIC_ABORT after RSET: {conn.commands}"
    first, second = conn.transactions[0], conn.transactions[-1]
    assert first.aborted and not first.eom, conn.transactions
    assert second.eom and second.macros["eom"].get("i") == s.qid
    stored(srv)


def test_unix_socket_milter(tern, milter_peer, tmp_path):
    peer = milter_peer(Script(modifications=[("addheader", "X-Via", "unix socket")]),
                       unix_path=tmp_path / "milter.sock")
    srv = start(tern, milter_cfg(peer.unix_address))
    s = send_mail(srv.port, message("unix"))
    assert s.dot and s.dot[0] == 250, s
    pairs, _, _ = parse(stored(srv)[0])
    assert pairs[-1] == ("X-Via", "unix socket"), pairs
    conn = conn_for(peer, s)
    assert conn.connect[1:] == ("4", s.client_port, "127.0.0.1"), "CONNECT describes the SMTP client, not the socket"


# ---------------------------------------------------------------- verdicts at each step


STEP_REPLY = {  # where the SMTP client sees a verdict given at a milter step
    "connect": "greeting", "helo": "ehlo", "mail": "mail", "rcpt": "rcpt", "data": "data",
    "header": "dot", "eoh": "dot", "body": "dot", "eom": "dot",
}
CONTENT_STEPS = ("header", "eoh", "body", "eom")


def reply_at(s: Session, where: str):
    return s.rcpts[0] if where == "rcpt" and s.rcpts else getattr(s, where)


@pytest.mark.parametrize("step", list(STEP_REPLY))
@pytest.mark.parametrize("verdict", ["reject", "tempfail", "replycode", "replycode4xx"])
def test_refusing_verdict_at_each_step(tern, milter_peer, step, verdict):
    spec = {"replycode": GO_AWAY, "replycode4xx": LATER}.get(verdict, verdict)
    peer = milter_peer()
    srv = start(tern, milter_cfg(peer))
    # Scripted only now: the tern fixture's readiness probe must get its 220.
    peer.script = Script(responses={step: spec})
    s = send_mail(srv.port, message(f"{verdict} at {step}"))
    where = STEP_REPLY[step]
    got = reply_at(s, where)
    if verdict.startswith("replycode"):
        code, _, text = spec.partition(" ")
        want = (int(code), text)
    elif step == "connect":
        want = (554, "5.7.1") if verdict == "reject" else (421, "4.7.1")
    elif verdict == "tempfail":
        want = TEMPFAIL
    else:
        want = CONTENT_REJECT if step in CONTENT_STEPS else CMD_REJECT
    expect(got, want, f"{verdict} at {step}", s)
    if step == "connect":
        assert s.closed, f"the connection stays open after a refused greeting: {s}"
    if step == "mail":
        assert s.rcpts and s.rcpts[0][0] == 503, f"RCPT after a refused MAIL must get 503: {s}"
    srv.assert_nothing_delivered()
    assert_still_serves(srv, peer)


@pytest.mark.parametrize("step", ["mail", "rcpt", "data", "header", "eom"])
def test_discard_answers_250_and_delivers_nothing(tern, milter_peer, step):
    peer = milter_peer()
    srv = start(tern, milter_cfg(peer))
    peer.script = Script(responses={step: "discard"})
    s = send_mail(srv.port, message(f"discard at {step}"))
    assert s.mail[0] == 250 and s.rcpts == [(250, s.rcpts[0][1])] and s.data[0] == 354, s
    assert s.dot and s.dot[0] == 250 and "queued as" in s.dot[1], s
    srv.assert_nothing_delivered()
    assert_log(srv, r'outcome="?discarded')
    assert_still_serves(srv, peer)


@pytest.mark.parametrize("step", list(STEP_REPLY))
def test_accept_skips_the_milter_and_delivers(tern, milter_peer, step):
    # A header the milter would add at EOM, and a reject it would give later: neither happens after accept.
    later = {"eom": "reject"} if step != "eom" else {}
    peer = milter_peer()
    srv = start(tern, milter_cfg(peer))
    peer.script = Script(responses={step: "accept", **later}, modifications=[("addheader", "X-Late", "no")])
    msg = message(f"accept at {step}")
    s = send_mail(srv.port, msg)
    assert s.dot and s.dot[0] == 250, f"{s}\n{srv.log()[-3000:]}"
    pairs, _, body = parse(stored(srv)[0])
    assert body == body_of(msg)
    if step != "eom":
        assert "X-Late" not in [n for n, _ in pairs], pairs
        conn = conn_for(peer, s)
        assert not any(t.eom for t in conn.transactions), f"EOM sent after accept at {step}: {conn.commands}"
    else:
        assert pairs[-1] == ("X-Late", "no")


def test_reject_one_recipient_keeps_the_others(tern, milter_peer):
    peer = milter_peer(Script(rcpt_responses={BOB: "reject", CAROL: LATER}))
    srv = start(tern, milter_cfg(peer))
    s = send_mail(srv.port, message("two of three"), rcpts=(ALICE, BOB, CAROL))
    assert s.rcpts[0][0] == 250, s
    expect(s.rcpts[1], CMD_REJECT, "rejected recipient", s)
    expect(s.rcpts[2], (452, "4.3.1 Come back later"), "reply code for one recipient", s)
    assert s.dot and s.dot[0] == 250, s
    stored(srv, ALICE)
    t = txn(peer, eom=True)
    assert t.rcpt_addrs == [f"<{ALICE}>", f"<{BOB}>", f"<{CAROL}>"]
    # Delivery to alice is done; the other two were never accepted.
    assert srv.messages(BOB) == [] and srv.messages(CAROL) == []


# ---------------------------------------------------------------- modifications at end of message


def deliver_with(tern, peer, msg, rcpts=(ALICE,), **overrides):
    srv = start(tern, milter_cfg(peer), **overrides)
    s = send_mail(srv.port, msg, rcpts=rcpts)
    assert s.dot and s.dot[0] == 250, f"{s}\n{srv.log()[-3000:]}"
    return srv, s


def test_addheader_is_appended_at_the_end_of_the_header_section(tern, milter_peer):
    peer = milter_peer(Script(modifications=[("addheader", "X-Milter-Added", "yes"),
                                             ("addheader", "X-Second", "two words")]))
    msg = message("addheader")
    srv, _ = deliver_with(tern, peer, msg)
    pairs, raws, body = parse(stored(srv)[0])
    t = txn(peer, eom=True)
    assert pairs == seen(t.headers) + [("X-Milter-Added", "yes"), ("X-Second", "two words")], pairs
    assert raws[-2:] == [b"X-Milter-Added: yes", b"X-Second: two words"], raws
    assert body == body_of(msg)


@pytest.mark.parametrize("index", [0, 1, 3, 99])
def test_insheader_at_an_index_over_the_whole_header_section(tern, milter_peer, index):
    peer = milter_peer(Script(modifications=[("insheader", index, "X-Inserted", f"at {index}")]))
    msg = message(f"insheader {index}")
    srv, _ = deliver_with(tern, peer, msg)
    pairs, _, body = parse(stored(srv)[0])
    want = seen(txn(peer, eom=True).headers)
    want.insert(min(index, len(want)), ("X-Inserted", f"at {index}"))  # past the end: appended (Sendmail)
    assert pairs == want, pairs
    assert body == body_of(msg)


@pytest.mark.parametrize("case", ["change", "second-occurrence", "delete"])
def test_chgheader(tern, milter_peer, case):
    mod = {"change": ("chgheader", 1, "Subject", "changed by the milter"),
           "second-occurrence": ("chgheader", 2, "X-Dup", "second changed"),
           "delete": ("chgheader", 1, "X-Dup", "")}[case]
    peer = milter_peer(Script(modifications=[mod]))
    msg = message("chgheader", extra=b"X-Dup: first\r\nX-Dup: second\r\n")
    srv, _ = deliver_with(tern, peer, msg)
    pairs, _, body = parse(stored(srv)[0])
    want = seen(txn(peer, eom=True).headers)
    occurrences = [i for i, (n, _) in enumerate(want) if n.lower() == mod[2].lower()]
    i = occurrences[mod[1] - 1]
    if mod[3]:
        want[i] = (want[i][0], mod[3])
    else:
        del want[i]
    assert pairs == want, pairs
    assert body == body_of(msg)


def test_replbody_replaces_the_body_only(tern, milter_peer):
    new_body = b"Replaced by the milter.\r\n.a line with a leading dot\r\n\r\nend\r\n"
    peer = milter_peer(Script(modifications=[("replbody", new_body)]))
    msg = message("replbody")
    srv, _ = deliver_with(tern, peer, msg)
    pairs, _, body = parse(stored(srv)[0])
    assert body == new_body
    assert pairs == seen(txn(peer, eom=True).headers), "headers unchanged"


def test_addrcpt_local_and_delrcpt(tern, milter_peer):
    peer = milter_peer(Script(modifications=[("addrcpt", f"<{CAROL}>"), ("delrcpt", f"<{BOB}>")]))
    msg = message("rcpt changes")
    srv, _ = deliver_with(tern, peer, msg, rcpts=(ALICE, BOB))
    for rcpt in (ALICE, CAROL):
        pairs, _, body = parse(stored(srv, rcpt)[0])
        assert body == body_of(msg), rcpt
    assert_no_copy(srv, BOB)


def test_chgfrom_and_remote_addrcpt_change_the_relayed_envelope(tern, milter_peer):
    new_from = "bounces+x@example.test"
    peer = milter_peer(Script(modifications=[("chgfrom", f"<{new_from}>"), ("addrcpt", f"<{REMOTE_BOB}>")]))
    with Remote() as remote:
        srv = start(tern, milter_cfg(peer), **relay_config(routes={"remote.test": route_to(remote.port)}))
        msg = message("chgfrom", to="carol@remote.test")
        s = send_mail(srv.port, msg, rcpts=("carol@remote.test",))
        assert s.dot and s.dot[0] == 250, f"{s}\n{srv.log()[-3000:]}"
        got = remote.wait_messages(1, srv=srv)
        rcpts = sorted(r for g in got for r in g.rcpt_tos)
        if len(rcpts) < 2:
            got = remote.wait_messages(2, srv=srv)
            rcpts = sorted(r for g in got for r in g.rcpt_tos)
    assert rcpts == [REMOTE_BOB, "carol@remote.test"], got
    assert all(g.mail_from == new_from for g in got), [g.mail_from for g in got]
    pairs, _, body = parse(got[0].content)
    assert body == body_of(msg)
    assert pairs == seen(txn(peer, eom=True).headers), "headers unchanged by chgfrom/addrcpt"


def test_quarantine_files_the_local_copy_into_junk(tern, milter_peer):
    peer = milter_peer(Script(modifications=[("quarantine", "suspicious (scripted)")]))
    msg = message("quarantine")
    srv, _ = deliver_with(tern, peer, msg)
    junk = srv.maildir(ALICE) / ".Junk" / "new"
    wait_for(lambda: junk.is_dir() and any(junk.iterdir()), WAIT, f"a message in {junk}")
    content = next(junk.iterdir()).read_bytes()
    assert body_of(crlf(content)) == body_of(msg)
    assert srv.messages(ALICE) == [], "the quarantined copy is not in new/"


def test_quarantine_holds_the_remote_copy_until_released(tern, milter_peer):
    """Postfix's hold queue: the quarantined message's queue entry is created held; the remote host gets
    nothing until `tern queue release`, then the message as it was."""
    peer = milter_peer(Script(modifications=[("quarantine", "suspicious (scripted)")]))
    with Remote() as remote:
        srv = start(tern, milter_cfg(peer), **relay_config(routes={"remote.test": route_to(remote.port)}))
        msg = message("held", to="carol@remote.test")
        s = send_mail(srv.port, msg, rcpts=("carol@remote.test",))
        assert s.dot and s.dot[0] == 250, f"{s}\n{srv.log()[-3000:]}"
        listed = json.loads(tern_queue(srv, "list", "--json").stdout)
        held = [e for e in listed if e["id"] == s.qid]
        assert held and held[0]["held"] is True, listed
        assert remote.messages == [], "a held entry is not delivered"
        r = tern_queue(srv, "release", s.qid)
        assert r.returncode == 0, r
        got = remote.wait_messages(1, srv=srv)
        assert body_of(crlf(got[0].content)) == body_of(msg)


def test_progress_packets_before_the_verdict(tern, milter_peer):
    peer = milter_peer(Script(progress=4, progress_interval=0.3, modifications=[("addheader", "X-Slow", "ok")]))
    srv, _ = deliver_with(tern, peer, message("progress"))
    pairs, _, _ = parse(stored(srv)[0])
    assert pairs[-1] == ("X-Slow", "ok")


def test_all_modifications_together_and_nothing_else(tern, milter_peer):
    new_body = b"new body\r\n"
    peer = milter_peer(Script(modifications=[
        ("addheader", "X-Added", "1"), ("insheader", 0, "X-Top", "top"), ("chgheader", 1, "Subject", "new subject"),
        ("replbody", new_body), ("addrcpt", f"<{CAROL}>"), ("delrcpt", f"<{BOB}>")]))
    srv, _ = deliver_with(tern, peer, message("everything"), rcpts=(ALICE, BOB))
    want = seen(txn(peer, eom=True).headers)
    want = [("X-Top", "top")] + [(n, "new subject") if n == "Subject" else (n, v) for n, v in want] + [("X-Added", "1")]
    for rcpt in (ALICE, CAROL):
        pairs, _, body = parse(stored(srv, rcpt)[0])
        assert pairs == want and body == new_body, (rcpt, pairs)
    assert_no_copy(srv, BOB)


# ---------------------------------------------------------------- failures: timeout, garbage, close, down


def failing_case(tern, peer_or_addr, on_failure: str, msg: bytes, **kw):
    srv = start(tern, milter_cfg(peer_or_addr, on_failure=on_failure, **kw))
    s = send_mail(srv.port, msg)
    return srv, s


def check_failure(srv, s: Session, on_failure: str, where: str, msg: bytes, peer=None) -> None:
    """tempfail: 451 at `where`, nothing delivered; accept: delivered exactly as sent (no partial modification).
    Either way a log line names the milter and tern serves the next connection."""
    if on_failure == "tempfail":
        expect(reply_at(s, where), TEMPFAIL, f"failure answered at {where}", s)
        srv.assert_nothing_delivered()
    else:
        assert s.dot and s.dot[0] == 250, f"on_failure=accept must deliver: {s}\n{srv.log()[-3000:]}"
        pairs, _, body = parse(stored(srv)[0])
        assert body == body_of(msg), "the body as sent, not a half-replaced one"
        client = [(n, unfold(v)) for n, v in parse(msg)[0]]
        assert [n for n, _ in pairs] == ["Received"] + [n for n, _ in client], f"only tern's Received added: {pairs}"
        assert pairs[1:] == client
    assert_log(srv, r'milter="?test')
    assert_still_serves(srv, peer)


# Modifications that must never reach the stored message when the milter then fails.
PARTIAL = [("addheader", "X-Partial", "must not appear"), ("replbody", b"half\r\n")]


@pytest.mark.parametrize("on_failure", ["tempfail", "accept"])
@pytest.mark.parametrize("step", ["helo", "mail", "rcpt", "header", "body", "eom"])
def test_per_step_timeout(tern, milter_peer, step, on_failure):
    peer = milter_peer(Script(delay={step: 3.0}, modifications=PARTIAL))
    msg = message(f"timeout at {step}")
    t0 = time.monotonic()
    srv, s = failing_case(tern, peer, on_failure, msg, timeout="1s")
    assert time.monotonic() - t0 < 15, "the timeout did not bound the wait"
    check_failure(srv, s, on_failure, STEP_REPLY[step], msg, peer)  # the step that timed out gets the 451


def test_message_timeout_bounds_a_milter_that_only_sends_progress(tern, milter_peer):
    peer = milter_peer(Script(progress=40, progress_interval=0.25, modifications=PARTIAL))
    msg = message("endless progress")
    t0 = time.monotonic()
    srv, s = failing_case(tern, peer, "tempfail", msg, timeout="5s", message_timeout="2s")
    assert time.monotonic() - t0 < 8, f"message_timeout did not end the exchange: {s}"
    check_failure(srv, s, "tempfail", "dot", msg, peer)


GARBAGE = {"unknown-code": GARBAGE_UNKNOWN_CODE, "huge-length": GARBAGE_HUGE_LENGTH, "text": GARBAGE_TEXT,
           "truncated": GARBAGE_TRUNCATED}


@pytest.mark.parametrize("on_failure", ["tempfail", "accept"])
@pytest.mark.parametrize("step,kind", [("mail", "unknown-code"), ("rcpt", "text"), ("eom", "unknown-code"),
                                       ("eom", "huge-length"), ("eom", "truncated"), ("header", "text")])
def test_garbage_from_the_milter(tern, milter_peer, step, kind, on_failure):
    # A truncated packet is followed by a close (else it is only a timeout).
    peer = milter_peer(Script(garbage={step: GARBAGE[kind]}, garbage_then_close=kind == "truncated",
                              modifications=PARTIAL))
    msg = message(f"garbage {kind} at {step}")
    srv, s = failing_case(tern, peer, on_failure, msg)
    check_failure(srv, s, on_failure, STEP_REPLY[step], msg, peer)


@pytest.mark.parametrize("on_failure", ["tempfail", "accept"])
def test_garbage_after_partial_modifications(tern, milter_peer, on_failure):
    """Modifications then a broken packet: none of them may be applied."""
    peer = milter_peer(Script(modifications=PARTIAL + [("raw", b"Z", b"what")]))
    msg = message("partial then garbage")
    srv, s = failing_case(tern, peer, on_failure, msg)
    check_failure(srv, s, on_failure, "dot", msg, peer)


@pytest.mark.parametrize("on_failure", ["tempfail", "accept"])
def test_modification_not_negotiated(tern, milter_peer, on_failure):
    # The milter asked only for CHGBODY, then adds a header: a protocol violation.
    peer = milter_peer(Script(actions=0x02, modifications=[("addheader", "X-Sneaky", "1")]))
    msg = message("not negotiated")
    srv, s = failing_case(tern, peer, on_failure, msg)
    check_failure(srv, s, on_failure, "dot", msg, peer)


@pytest.mark.parametrize("on_failure", ["tempfail", "accept"])
@pytest.mark.parametrize("step", ["body", "eom", "rcpt"])
def test_milter_closes_mid_message(tern, milter_peer, step, on_failure):
    peer = milter_peer(Script(close_at={step}))
    body = b"".join(b"line %06d of a body long enough for several chunks\r\n" % i for i in range(5000))
    msg = message(f"close at {step}", body=body)
    srv, s = failing_case(tern, peer, on_failure, msg)
    check_failure(srv, s, on_failure, STEP_REPLY[step], msg, peer)


@pytest.mark.parametrize("on_failure", ["tempfail", "accept"])
def test_milter_not_listening(tern, on_failure):
    port = free_port()  # nothing listens there
    msg = message("milter down")
    srv, s = failing_case(tern, f"inet:127.0.0.1:{port}", on_failure, msg)
    assert s.greeting and s.greeting[0] == 220 and s.ehlo[0] == 250, f"the session is served normally: {s}"
    if on_failure == "accept":
        check_failure(srv, s, on_failure, "mail", msg)
        return
    # The milter stays down: every connection is served the same way, and tern keeps running.
    expect(s.mail, TEMPFAIL, "MAIL with the milter down", s)
    srv.assert_nothing_delivered()
    assert_log(srv, r'milter="?test')
    again = send_mail(srv.port, message("milter still down"))
    assert again.greeting[0] == 220 and again.ehlo[0] == 250, again
    expect(again.mail, TEMPFAIL, "MAIL on the next connection", again)
    assert srv.running()


@pytest.mark.parametrize("on_failure", ["tempfail", "accept"])
def test_optneg_with_an_unsupported_version(tern, milter_peer, on_failure):
    peer = milter_peer(Script(version=99))
    msg = message("bad version")
    srv, s = failing_case(tern, peer, on_failure, msg)
    where = "mail" if on_failure == "tempfail" else "dot"
    check_failure(srv, s, on_failure, where, msg, peer)


# ---------------------------------------------------------------- two milters


def test_two_milters_first_reject_wins(tern, milter_peer):
    first = milter_peer(Script(responses={"eom": "reject"}), name="first")
    second = milter_peer(name="second")
    srv = start(tern, milter_cfg(first, name="one"), milter_cfg(second, name="two"))
    s = send_mail(srv.port, message("two milters reject"))
    expect(s.dot, CONTENT_REJECT, "first milter's reject", s)
    srv.assert_nothing_delivered()
    assert not any(t.eom for c in second.connections for t in c.transactions), "the second milter saw EOM"


def test_two_milters_second_sees_the_first_ones_header(tern, milter_peer):
    first = milter_peer(Script(modifications=[("addheader", "X-First", "was here")]), name="first")
    second = milter_peer(Script(modifications=[("addheader", "X-Second", "too")]), name="second")
    srv = start(tern, milter_cfg(first, name="one"), milter_cfg(second, name="two"))
    s = send_mail(srv.port, message("two milters"))
    assert s.dot and s.dot[0] == 250, s
    t1, t2 = txn(first, eom=True), txn(second, eom=True)
    assert seen(t2.headers) == seen(t1.headers) + [("X-First", "was here")], t2.headers
    pairs, _, _ = parse(stored(srv)[0])
    assert pairs == seen(t1.headers) + [("X-First", "was here"), ("X-Second", "too")], pairs


# ---------------------------------------------------------------- large message


def big_body(size: int, seed: bytes = b"") -> bytes:
    line = b"%08d " + seed + b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"
    out, i = [], 0
    total = 0
    while total < size:
        chunk = line % i
        out.append(chunk)
        total += len(chunk)
        i += 1
    return b"".join(out)


def test_two_mib_message_arrives_whole_in_chunks(tern, milter_peer):
    peer = milter_peer()
    body = big_body(2 << 20)
    msg = message("two mib", body=body)
    srv, _ = deliver_with(tern, peer, msg)
    t = txn(peer, eom=True)
    assert t.body == body, f"milter body {len(t.body)} octets, sent {len(body)}"
    assert all(0 < len(c) <= MAX_BODY_CHUNK for c in t.body_chunks)
    assert len(t.body_chunks) >= len(body) // MAX_BODY_CHUNK
    _, _, stored_body = parse(stored(srv)[0])
    assert stored_body == body


def test_replbody_on_a_two_mib_message(tern, milter_peer):
    new_body = big_body((2 << 20) + 12345, b"replaced ")
    peer = milter_peer(Script(modifications=[("replbody", new_body)]))
    srv, _ = deliver_with(tern, peer, message("two mib replaced", body=big_body(2 << 20)))
    _, _, body = parse(stored(srv)[0])
    assert len(body) == len(new_body) and body == new_body


# ---------------------------------------------------------------- apply_to


def submit(port: int, msg: bytes, rcpt: str = BOB) -> Session:
    """STARTTLS, AUTH PLAIN as alice, then one transaction."""
    c = Client(port)
    c.start()
    c.starttls()
    c.ehlo()
    code, text = c.auth_plain(AUTH_USER, ALICE_PW)
    assert code == 235, text
    return send_mail(port, msg, rcpts=(rcpt,), sender=AUTH_USER, client=c)


def test_default_apply_to_skips_submission(tern, milter_peer, tmp_path):
    peer = milter_peer(Script(responses={"mail": "reject"}))
    ports = Ports()
    srv = start(tern, milter_cfg(peer), **tls_config(tmp_path, ports))
    s = submit(ports.submission, message("submitted", to=BOB))
    assert s.dot and s.dot[0] == 250, s
    stored(srv, BOB)
    assert all(not c.transactions for c in peer.connections), "the milter was consulted on submission"
    # Port 25 is filtered by the same milter.
    s25 = send_mail(srv.port, message("port 25"))
    expect(s25.mail, CMD_REJECT, "port 25 MAIL", s25)


def test_apply_to_submission_filters_authenticated_mail(tern, milter_peer, tmp_path):
    peer = milter_peer(Script(modifications=[("addheader", "X-Submission-Milter", "yes")]))
    ports = Ports()
    srv = start(tern, milter_cfg(peer, apply_to=["submission"]), **tls_config(tmp_path, ports))
    s = submit(ports.submission, message("submitted", to=BOB))
    assert s.dot and s.dot[0] == 250, f"{s}\n{srv.log()[-3000:]}"
    pairs, _, _ = parse(stored(srv, BOB)[0])
    assert pairs[-1] == ("X-Submission-Milter", "yes"), pairs
    t = txn(peer, eom=True)
    assert t.macros["mail"].get("{auth_authen}") == AUTH_USER, t.macros
    conn = next(c for c in reversed(peer.connections) if c.transactions)
    helo_macros = [d for stage, d in conn.macro_log if stage == "helo"]
    assert any(d.get("{tls_version}", "").startswith("TLS") and d.get("{cipher}") for d in helo_macros), \
        f"no TLS macros at HELO after STARTTLS: {conn.macro_log}"
    # Port 25 is not filtered by a submission-only milter.
    before = len(peer.connections)
    s25 = send_mail(srv.port, message("port 25 unfiltered"))
    assert s25.dot and s25.dot[0] == 250
    pairs, _, _ = parse(stored(srv)[0])
    assert "X-Submission-Milter" not in [n for n, _ in pairs]
    assert all(not c.transactions for c in peer.connections[before:])
    assert t.macros["mail"].get("{auth_type}", "").upper() == "PLAIN", t.macros
