"""The service waits for a spare that took a request before forking the next one (no root needed)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from criu_macvlan import spare


def _spare() -> tuple[spare.Spare, socket.socket]:
    ours, its = socket.socketpair()
    return spare.Spare(ours), its


def test_the_next_spare_waits_for_the_child_to_be_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spare, "NEXT_SPARE_DELAY", 60_000)  # so that only the child's end can end the wait
    sp, child = _spare()
    child.send(b"!")  # taken
    threading.Timer(0.05, child.close).start()  # done: it exits
    started = time.monotonic()
    assert sp.wait(timeout=1000)
    assert 0.05 <= time.monotonic() - started < 30


def test_a_child_still_at_work_delays_the_next_spare_by_a_bound_only() -> None:
    sp, child = _spare()
    try:
        child.send(b"!")
        started = time.monotonic()
        assert sp.wait(timeout=60_000)
        assert spare.NEXT_SPARE_DELAY / 1000 <= time.monotonic() - started < 30  # the bound, not the timeout
    finally:
        child.close()


def test_a_child_that_died_is_replaced_at_once() -> None:
    sp, child = _spare()
    child.close()
    assert sp.wait(timeout=1000)


def test_no_request_within_the_timeout() -> None:
    sp, child = _spare()
    try:
        assert not sp.wait(timeout=10)
    finally:
        child.close()
