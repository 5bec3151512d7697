"""rspamd's actions through tern, one per recipient, forced with rspamd's own configuration so that no score has to
be reached: its `settings` module gives each test recipient its own action thresholds (reject, rewrite subject,
add header) and `force_actions` + `multimap` force a soft reject and a greylist by recipient.

What rspamd 3.4 sends for each, observed here through tern (tern passes rspamd's verdicts on; docs/filtering.md):
- reject: SMFIR_REPLYCODE "554 5.7.1 Spam message rejected" (the proxy worker's reject_message);
- soft reject: SMFIR_REPLYCODE "451 4.7.1 <the rule's message>";
- rewrite subject: chgheader Subject "*** SPAM *** <subject>", then accept;
- add header: addheader "X-Spam: Yes" (the worker's spam_header), then accept;
- greylist without rspamd's greylist module (it needs Redis, which the test does not run): rspamd itself
  lets the message through with `X-Rspamd-Pre-Result: action=greylist`; with the module, rspamd sends a 451 reply
  code, which tern passes on like the soft reject.
"""

from __future__ import annotations

import pytest

from milter_peers import RspamdMilter, expect, message, milter_cfg, parse, send_mail, start, stored

pytestmark = pytest.mark.timeout(150)  # rspamd takes ~12 s to start here

SETTINGS = """
subject { priority = high; rcpt = "subject@tern.test";
  apply { actions { reject = null; "rewrite subject" = -100.0; "add header" = null; greylist = null; } } }
header { priority = high; rcpt = "header@tern.test";
  apply { actions { reject = null; "rewrite subject" = null; "add header" = -100.0; greylist = null; } } }
reject { priority = high; rcpt = "reject@tern.test"; apply { actions { reject = -100.0; } } }
"""

FORCE_ACTIONS = """
rules {
  TERN_SOFT { action = "soft reject"; expression = "TERN_SOFT_RCPT"; message = "Try again later (tern test)"; }
  TERN_GREY { action = "greylist"; expression = "TERN_GREY_RCPT"; message = "Greylisted (tern test)"; }
}
"""


class RspamdWithActions(RspamdMilter):
    """The fixture's rspamd plus the per-recipient actions above."""

    def start(self) -> "RspamdWithActions":
        d = self.root / "local" / "local.d"
        d.mkdir(parents=True, exist_ok=True)
        (d / "settings.conf").write_text(SETTINGS)
        (d / "soft.map").write_text("soft@tern.test\n")
        (d / "grey.map").write_text("grey@tern.test\n")
        (d / "multimap.conf").write_text(
            f'TERN_SOFT_RCPT {{ type = "rcpt"; filter = "email:addr"; map = "{d}/soft.map"; score = 0.0; }}\n'
            f'TERN_GREY_RCPT {{ type = "rcpt"; filter = "email:addr"; map = "{d}/grey.map"; score = 0.0; }}\n')
        (d / "force_actions.conf").write_text(FORCE_ACTIONS)
        super().start()
        return self


@pytest.fixture
def rspamd_actions():
    r = RspamdWithActions()
    try:
        yield r.start()
    finally:
        r.cleanup()


def test_each_rspamd_action_gets_its_smtp_reply_or_change(tern, rspamd_actions):
    srv = start(tern, milter_cfg(rspamd_actions.address, name="rspamd", timeout="30s"),
                local={"domains": ["tern.test"], "catch_all": True})

    def send(rcpt: str):
        msg = message("hi", to=rcpt)
        return msg, send_mail(srv.port, msg, rcpts=(rcpt,))

    _, s = send("reject@tern.test")
    expect(s.dot, (554, "5.7.1 Spam message rejected"), "rspamd reject", s)
    _, s = send("soft@tern.test")
    expect(s.dot, (451, "4.7.1 Try again later (tern test)"), "rspamd soft reject", s)

    _, s = send("subject@tern.test")
    assert s.dot and s.dot[0] == 250, f"{s}\n{rspamd_actions.log()[-3000:]}"
    fields = dict(parse(stored(srv, "subject@tern.test")[0])[0])
    assert fields["Subject"] == "*** SPAM *** hi", fields

    _, s = send("header@tern.test")
    assert s.dot and s.dot[0] == 250, s
    pairs = parse(stored(srv, "header@tern.test")[0])[0]
    assert ("X-Spam", "Yes") in pairs and dict(pairs)["Subject"] == "hi", pairs

    _, s = send("grey@tern.test")
    assert s.dot and s.dot[0] == 250, s
    fields = dict(parse(stored(srv, "grey@tern.test")[0])[0])
    assert fields.get("X-Rspamd-Pre-Result", "").startswith("action=greylist"), fields
    # Nothing was delivered for the two refused recipients.
    assert srv.messages("reject@tern.test") == [] and srv.messages("soft@tern.test") == []
