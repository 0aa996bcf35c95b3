"""What the demo prints, its errors, and SIGINT/SIGTERM while it runs."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType


class DemoError(Exception):
    """A step of the demo failed: one line for the user."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM: stop, clean up, fail."""


def say(text: str) -> None:
    """One line in a single write: a signal handler (SIGINT/SIGTERM) can't split it."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def step(text: str) -> None:
    say(text)


def detail(text: str) -> None:
    say(f"      {text}")


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted` in the main thread while the demo runs.

    After the first one, further signals are ignored: a second Ctrl-C must not cut
    the clean-up short (every clean-up step runs even if one is interrupted).
    """
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, frame: FrameType | None) -> None:
        for s in sigs:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)

