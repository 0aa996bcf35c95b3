"""What the macvlan plugin's hooks share: the work ``criu_rpc_request`` did early, and the tree's pid.

In RPC mode ``criu_rpc_request`` starts the slow parts of a dump or restore while
CRIU starts up; the action hooks of the same session take the results from one
:class:`Session` in ``ctx.state[KEY]``. In action-script mode every action has a
state of its own, so the session is always empty there and each hook does its
work itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..context import ActionContext
from ..errors import CriuMacvlanError

if TYPE_CHECKING:
    from ..announce import LinkFrames, Schedule
    from ..announcer import Repeater
    from ..netlink import PreparedMacvlans
    from .dump import Reader
    from .restore import RestorePlan

KEY = "macvlan"  # ctx.state[KEY]: this plugin's Session; other plugins use other keys


class Armed:  # plain: the cold path defines no dataclass or NamedTuple (tests/test_cold_imports.py)
    """The announcement ``setup-namespaces`` prepared for ``post-setup-namespaces`` (RPC mode)."""

    __slots__ = ("indexes", "names", "schedule")

    def __init__(self, indexes: list[int], names: set[str], schedule: Schedule) -> None:
        self.indexes, self.names, self.schedule = indexes, names, schedule


class Session:
    """What one RPC session's hooks hand on to each other; each field is taken once (:meth:`take_error` ...).

    ``error``: the early work failed; raised by the action that needs its result
    (``pre-dump``, ``setup-namespaces``), one report instead of two.
    """

    def __init__(self) -> None:
        self.error: Exception | None = None
        # dump
        self.reader: Reader | None = None  # reading the macvlans while CRIU dumps
        # restore
        self.plan: RestorePlan | None = None  # the links to make, from the images
        self.requests: PreparedMacvlans | None = None  # their requests, encoded ahead
        self.frames: list[LinkFrames] | None = None  # their announcements, from the images alone
        self.schedule_known = False  # schedule is the configured one (None: announce is off)
        self.schedule: Schedule | None = None
        self.repeater: Repeater | None = None  # the announcer's later rounds, started early
        self.armed: Armed | None = None

    def take_error(self) -> None:
        """Raise the error the early work kept, if any (once)."""
        error, self.error = self.error, None
        if error is not None:
            raise error


def session(ctx: ActionContext) -> Session:
    """The macvlan plugin's :class:`Session` in ``ctx.state`` (made on first use)."""
    found = ctx.state.get(KEY)
    if isinstance(found, Session):
        return found
    made = ctx.state[KEY] = Session()
    return made


def require_pid(ctx: ActionContext) -> int:
    if ctx.pid is None or ctx.pid <= 0:
        raise CriuMacvlanError("CRIU did not say which process tree this is (no CRTOOLS_INIT_PID)")
    return ctx.pid
