"""How the service tells what its spare child did (no root needed)."""

from __future__ import annotations

import socket

from criu_macvlan import spare


def _spare() -> tuple[spare.Spare, socket.socket]:
    ours, its = socket.socketpair()
    return spare.Spare(ours), its


def test_a_spare_that_took_a_request_is_replaced() -> None:
    sp, child = _spare()
    try:
        child.send(b"!")
        assert sp.wait(timeout=60_000)
    finally:
        child.close()


def test_a_spare_that_died_is_replaced_too() -> None:
    sp, child = _spare()
    child.close()
    assert sp.wait(timeout=60_000)


def test_no_request_within_the_timeout() -> None:
    sp, child = _spare()
    try:
        assert not sp.wait(timeout=10)
    finally:
        child.close()
