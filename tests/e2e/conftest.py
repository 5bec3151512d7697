"""Fixtures for the end-to-end tests: `tern(**config)` starts a real `tern serve` on a free loopback port
with a config written from the defaults merged with the test's overrides, and stops it afterwards."""

from __future__ import annotations

import itertools

import pytest

from relay_helpers import LoggingDNS, Remote
from ternlib import RawSMTP, Tern  # noqa: F401  (re-exported for tests that import from conftest)


@pytest.fixture
def tern(tmp_path):
    """Factory: `srv = tern(limits={"max_recipients": 3})` -> a started Tern; every process is killed at teardown.

    Overrides are nested dicts merged into the defaults (hostname, data_dir, [smtp] listen, [local] domains);
    a value of None removes a default key."""
    started: list[Tern] = []
    counter = itertools.count()

    def factory(start: bool = True, **config) -> Tern:
        srv = Tern(tmp_path / f"tern{next(counter)}", config)
        started.append(srv)
        return srv.start() if start else srv

    yield factory
    for srv in started:
        srv.cleanup()


@pytest.fixture
def srv(tern):
    """A server with the default config (loopback trusted, catch-all for tern.test)."""
    return tern()


@pytest.fixture
def remote():
    """An aiosmtpd peer on a free loopback port that records what it receives (relay tests)."""
    with Remote() as r:
        yield r


@pytest.fixture
def dns(request):
    """A fake DNS server answering the test module's RECORDS (relay tests); a module may define its own."""
    with LoggingDNS(request.module.RECORDS) as d:
        yield d
