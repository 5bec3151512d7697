"""tern with a real rspamd (Debian 3.4, proxy worker in milter mode, self_scan; milter_peers.RspamdMilter) as its
[[milters]] content filter on port 25.

What rspamd does over the milter protocol, observed here with a hand-written milter client and then through tern:
- It answers OPTNEG with actions 0x1ff and protocol 0x000ff080 (NR_CONN NR_HELO NR_MAIL NR_RCPT NR_DATA NR_HDR
  NR_EOH NR_BODY NR_UNKN): it replies to nothing before the end of the message.
- GTUBE: at EOM it sends SMFIR_REPLYCODE "554 5.7.1 Gtube pattern" (not SMFIR_REJECT), whatever the client
  address or authentication; so the SMTP client gets exactly `554 5.7.1 Gtube pattern` after the final dot.
- A clean message: with milter_headers `use = [x-spamd-result, x-rspamd-server, x-rspamd-queue-id, x-spam-level,
  x-spam-status, authentication-results]` (Debian's default `use = []` adds nothing) it sends
  addheader X-Rspamd-Server (the host name), addheader X-Rspamd-Queue-Id (the `i` macro: tern's queue id),
  insheader index 1 Authentication-Results (right below the MTA's own Received; folded with a bare "\\n\\t"),
  addheader X-Spamd-Result ("default: False [0.00 / 15.00];" then one folded line per symbol), addheader
  X-Spam-Status ("No, score=0.00"), then SMFIR_ACCEPT.
- rspamd down: tern's on_failure decides (451 4.7.1 at MAIL, or delivered without rspamd's headers).
"""

from __future__ import annotations

import pytest

from milter_peers import rspamd_milter  # noqa: F401  (fixture)
from milter_peers import ALICE, TEMPFAIL, body_of, expect, message, milter_cfg, parse, send_mail, start, stored
from ternlib import eol_of

pytestmark = pytest.mark.timeout(150)  # rspamd takes ~12 s to start here, more on a slow CI machine

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CLEAN_BODY = (b"Hello Alice,\r\n\r\nthe minutes of Tuesday's meeting are below. The next one is on\r\n"
              b"Thursday at ten in the small room.\r\n\r\nRegards,\r\nSender\r\n")


def rspamd_cfg(rspamd, **kw) -> dict:
    return milter_cfg(rspamd.address, name="rspamd", timeout="30s", **kw)


def test_gtube_is_refused_with_rspamds_reply_and_clean_mail_gets_its_headers(tern, rspamd_milter):
    srv = start(tern, rspamd_cfg(rspamd_milter))

    spam = message("gtube", body=b"This is the GTUBE, the\r\n" + GTUBE + b"\r\nGeneric Test for Unsolicited Bulk Email\r\n")
    s = send_mail(srv.port, spam)
    expect(s.dot, (554, "5.7.1 Gtube pattern"), "GTUBE through rspamd", s)
    srv.assert_nothing_delivered()

    msg = message("minutes", body=CLEAN_BODY, extra=b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n")
    s = send_mail(srv.port, msg)
    assert s.dot and s.dot[0] == 250, f"{s}\n{rspamd_milter.log()[-3000:]}\n{srv.log()[-3000:]}"
    content = stored(srv, ALICE)[0]
    eol_of(content)  # one line ending throughout, though rspamd folds its values with a bare LF
    pairs, _, body = parse(content)
    names = [n for n, _ in pairs]
    fields = dict(pairs)
    assert body == body_of(msg), "rspamd does not touch the body"
    assert names[0] == "Received" and names[1] == "Authentication-Results", f"A-R inserted at index 1: {names}"
    assert fields["X-Spamd-Result"].startswith("default: False ["), fields["X-Spamd-Result"]
    assert fields["X-Spam-Status"].startswith("No, score="), fields["X-Spam-Status"]
    assert fields["X-Rspamd-Queue-Id"] == s.qid, "rspamd names tern's queue id (the `i` macro)"
    assert fields.get("X-Rspamd-Server"), pairs
    assert "X-Spam" not in names, "not spam: no X-Spam flag header"
    # Nothing else changed: the client's fields are all there, in order, after rspamd's insert.
    client = [(n, v) for n, v in parse(msg)[0]]
    assert [p for p in pairs if p[0] in {n for n, _ in client}] == client


@pytest.mark.parametrize("on_failure", ["tempfail", "accept"])
def test_rspamd_stopped(tern, rspamd_milter, on_failure):
    srv = start(tern, rspamd_cfg(rspamd_milter, on_failure=on_failure))
    rspamd_milter.stop()
    msg = message("rspamd is down", body=CLEAN_BODY)
    s = send_mail(srv.port, msg)
    assert s.greeting[0] == 220 and s.ehlo[0] == 250, s
    if on_failure == "tempfail":
        expect(s.mail, TEMPFAIL, "MAIL with rspamd down", s)
        srv.assert_nothing_delivered()
    else:
        assert s.dot and s.dot[0] == 250, f"{s}\n{srv.log()[-3000:]}"
        pairs, _, body = parse(stored(srv, ALICE)[0])
        assert body == body_of(msg)
        assert [n for n, _ in pairs] == ["Received"] + [n for n, _ in parse(msg)[0]], pairs
    assert "milter=rspamd" in srv.log().replace('"', ""), srv.log()[-2000:]
    assert srv.running()
