"""Catch-all cannot create mailboxes without end (issue 10): at RCPT, a recipient whose mailbox does not
exist yet counts against `limits.max_new_mailboxes_per_message` and `limits.max_new_mailboxes_per_minute`;
beyond them it gets `450 4.2.0` (docs/smtp-replies.md) and only the cap's worth of mailboxes is created.
Users, aliases and existing mailboxes never count."""

from __future__ import annotations

from ternlib import LOCAL_DOMAIN, make_message

CAPPED = "450 4.2.0"


def mailbox_dirs(srv) -> list[str]:
    root = srv.data_dir / "mailboxes" / LOCAL_DOMAIN
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def send_to_many(srv, rcpts: list[str]) -> tuple[list[str], list[str]]:
    """One transaction to every address; returns (accepted, capped) and asserts the message got 250."""
    accepted, capped = [], []
    with srv.session() as c:
        c.expect("MAIL FROM:<sprayer@example.test>", 250)
        for r in rcpts:
            code, text = c.cmd(f"RCPT TO:<{r}>")
            if code == 250:
                accepted.append(r)
            else:
                assert f"{code} {text}" == f"{CAPPED} <{r}>: Too many new mailboxes, try again later", (r, code, text)
                capped.append(r)
        c.expect("DATA", 354)
        c.send(make_message("spray") + b".\r\n")
        code, lines = c.read_reply()
        assert code == 250, lines
        c.expect("QUIT", 221)
    return accepted, capped


def test_a_hundred_fresh_local_parts_create_only_the_per_message_cap(tern):
    srv = tern(local={"domains": [LOCAL_DOMAIN], "catch_all": True})
    rcpts = [f"fresh{i:03d}@{LOCAL_DOMAIN}" for i in range(100)]
    accepted, capped = send_to_many(srv, rcpts)
    # The default cap: 10 per message. The 90 refusals are not errors (max_errors is 20): no 421.
    assert accepted == rcpts[:10]
    assert capped == rcpts[10:]
    for r in accepted:
        srv.wait_messages(r, 1)
    assert mailbox_dirs(srv) == [f"fresh{i:03d}" for i in range(10)]


def test_the_minute_is_shared_and_configured_or_existing_mailboxes_never_count(tern):
    srv = tern(
        local={"domains": [LOCAL_DOMAIN], "catch_all": True},
        users=[{"name": f"alice@{LOCAL_DOMAIN}"}],
        aliases={f"team@{LOCAL_DOMAIN}": [f"bob@{LOCAL_DOMAIN}"]},
        limits={"max_new_mailboxes_per_message": 10, "max_new_mailboxes_per_minute": 15},
    )
    first = [f"a{i:02d}@{LOCAL_DOMAIN}" for i in range(10)]
    accepted, capped = send_to_many(srv, first)
    assert accepted == first and not capped
    for r in first:
        srv.wait_messages(r, 1)

    # 5 more fit in the minute, then 450, from another connection. The user, the alias, postmaster and the
    # mailboxes the first message created are accepted all the same.
    second = [f"b{i:02d}@{LOCAL_DOMAIN}" for i in range(8)]
    known = [f"alice@{LOCAL_DOMAIN}", f"team@{LOCAL_DOMAIN}", f"postmaster@{LOCAL_DOMAIN}", first[0], first[9]]
    accepted, capped = send_to_many(srv, second + known)
    assert accepted == second[:5] + known
    assert capped == second[5:]
    for r in second[:5] + [f"alice@{LOCAL_DOMAIN}", f"bob@{LOCAL_DOMAIN}", f"postmaster@{LOCAL_DOMAIN}"]:
        srv.wait_messages(r, 1)
    created = [d for d in mailbox_dirs(srv) if d[0] in "ab" and d[1:].isdigit()]
    assert created == sorted(f"a{i:02d}" for i in range(10)) + sorted(f"b{i:02d}" for i in range(5))
