"""Entry point of ``hooks/criu-macvlan-action``: one CRIU action; after ``pre-dump``, the per-dump helper.

The action itself is :func:`criu_macvlan.action.main`, which ``serve`` and the
per-dump helper also run; starting that helper is here, so that neither imports
the other back.
"""

from __future__ import annotations

import logging
import os
import sys

from .action import Later, run_later
from .action import main as run_action
from .errors import ExitCode


def main(env: os._Environ[str] | dict[str, str] = os.environ) -> int:
    later: list[Later] = []
    code = run_action(env, later)
    helper = None
    if code == ExitCode.OK and env.get("CRTOOLS_SCRIPT_ACTION") == "pre-dump":
        from . import criuconf, warm

        criu_pid = criuconf.criu_pid_from_env(env)
        if criu_pid is not None and (helper := warm.start(criu_pid, later)) is not None:
            logging.getLogger("criu_macvlan").debug(
                "warm helper %d serves the later actions of criu %d", helper, criu_pid
            )
    if helper is None:
        run_later(later)  # nothing outlives us to run it (empty unless the action succeeded)
    return code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown (tens of ms with pyroute2 loaded): CRIU waits for us.
    os._exit(code)
