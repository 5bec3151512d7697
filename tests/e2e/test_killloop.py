"""Crash proof in CI: 20 `kill -9` of tern while clients send local and relayed mail of several sizes; every
message that got a 250 is in its mailbox exactly once and at the next hop at least once (killloop.py; long
runs by hand are recorded in docs/reliability.md)."""

from __future__ import annotations

import pytest

from killloop import run


@pytest.mark.timeout(600)
def test_twenty_kills_lose_nothing_acknowledged():
    res = run(kills=20, seed=20261201, clients=4, max_seconds=400)
    summary = res.summary()
    assert res.kills == 20, summary
    # The load must really have run through the kills, or the test proves nothing.
    assert len(res.acked_local) >= 20 and len(res.acked_relay) >= 5, summary
    assert not res.local_missing, f"acknowledged but not in the mailbox: {res.local_missing[:10]} {summary}"
    assert not res.local_duplicated, f"delivered twice locally: {res.local_duplicated[:10]} {summary}"
    assert not res.relay_missing, f"acknowledged but never relayed: {res.relay_missing[:10]} {summary}"
