"""One CRIU action: what ``hooks/criu-macvlan-action`` (through :mod:`criu_macvlan.hook`), ``serve`` and
the per-dump helper run.

CRIU runs the action script with ``CRTOOLS_SCRIPT_ACTION`` (the action),
``CRTOOLS_IMAGE_DIR`` (``/proc/<criu>/fd/<n>``, the images directory) and, once
the tree's root task exists, ``CRTOOLS_INIT_PID``. The ``macvlan[IN]:OUT``
mappings and ``--empty-ns`` come from CRIU's own command line and config files.

Exit status: 0 on success; otherwise the code of :class:`~criu_macvlan.errors.ExitCode`
with one line on stderr, and CRIU aborts.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import HOOK_PROG, CriuMacvlanError, ExitCode, HookError, ImageError, printable

if TYPE_CHECKING:
    from .manager import Hooks

PROG = HOOK_PROG
Later = Callable[[], None]
_warm: dict[str, Hooks] = {}  # see keep_warm


class _Printable(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _log() -> logging.Logger:
    log = logging.getLogger("criu_macvlan")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Printable(f"{PROG}: %(message)s"))
        log.addHandler(handler)
    debug = os.environ.get("CRIU_MACVLAN_DEBUG", "") not in ("", "0")
    log.setLevel(logging.DEBUG if debug else logging.WARNING)
    return log


def keep_warm(hooks: Hooks) -> None:
    """Run this process's later actions (and its forks') with ``hooks``, not a manager built anew each time.

    For a process that serves many actions (``serve``, the warm helper): like the
    modules it imported, it keeps the plugins it loaded when it started, and the log
    handler (each action only sets its level). A set with plugins disabled is not
    kept: it is not what the installation handles.
    """
    if not hooks.partial:
        _warm["hooks"] = hooks
    _log()


def _hooks() -> Hooks:
    from .manager import disabled_from_env, plugin_manager, write_actions_cache

    hooks = _warm.get("hooks")
    if hooks is None or disabled_from_env():  # a request of its own CRIU_MACVLAN_DISABLE: the set it asks for
        hooks = plugin_manager()
        write_actions_cache(hooks)
    return hooks


def run(env: os._Environ[str] | dict[str, str], later: list[Later] | None = None, served: bool = False) -> int:
    """Run ``env``'s action; the exit code. What the hooks leave for after the answer
    (:attr:`.ActionContext.later`) goes to ``later``, or runs here if it is ``None``.
    ``served``: :attr:`.ActionContext.served`."""
    from .hookspecs import ACTIONS

    action = env.get("CRTOOLS_SCRIPT_ACTION", "")
    if not action:
        print(f"{PROG}: not run by criu (CRTOOLS_SCRIPT_ACTION is not set); "
              "use it as criu --action-script", file=sys.stderr)
        return ExitCode.USAGE
    if action not in ACTIONS:
        return ExitCode.OK
    from . import criuconf
    from .context import ActionContext, ImagesDir, Mode

    log = _log()
    hooks = _hooks()
    path = env.get("CRTOOLS_IMAGE_DIR", "")
    if not path:
        raise CriuMacvlanError("CRTOOLS_IMAGE_DIR is not set")
    try:
        images = ImagesDir.open(path)
    except OSError as exc:
        if action != "post-resume":
            raise ImageError(f"cannot open the images directory {path}: {exc.strerror or exc}") from exc
        # CRIU closes the images dir before post-resume: its hooks get no fd.
        images = ImagesDir(fd=-1, path=path)
    try:
        env_pid = criuconf.criu_pid_from_env(env)
        criu_pid = env_pid or os.getppid()
        opts = criuconf.load_for_criu(criu_pid)
        pid_text = env.get("CRTOOLS_INIT_PID", "")
        ctx = ActionContext(
            action=action,
            mode=Mode.ACTION_SCRIPT,
            images=images,
            pid=int(pid_text) if pid_text.isdigit() else None,
            mappings=opts.mappings,
            externals=opts.externals,
            empty_ns=True if opts.empty_ns_net else None,
            log=log,
            criu_pid=env_pid,
            criu_rpc=opts.rpc,
            served=served and later is not None,
        )
        hooks.run(ctx)
        if env_pid is not None:
            from . import delivered

            # the shell hook answers a repeated delivery of this action from the marker
            delivered.record(env_pid, action)
        if action == "pre-dump" and env_pid is not None:
            keep_warm(hooks)  # for the per-dump helper the hook's entry point forks next (criu_macvlan.hook)
        if later is None:
            run_later(ctx.later)
        else:
            later.extend(ctx.later)
    finally:
        if images.fd >= 0:
            images.close()
    return ExitCode.OK


def run_later(work: list[Later]) -> None:
    """Run what the hooks left for after the answer; each keeps its own errors, a bug is logged."""
    for call in work:
        try:
            call()
        except Exception as exc:
            logging.getLogger("criu_macvlan").warning(
                "work left for after the answer failed: %s: %s", type(exc).__name__, exc)
    work.clear()


def main(env: os._Environ[str] | dict[str, str] = os.environ, later: list[Later] | None = None,
         served: bool = False) -> int:
    """:func:`run`, with a failure as one line on stderr and its exit code."""
    try:
        return run(env, later, served)
    except CriuMacvlanError as exc:
        action = env.get("CRTOOLS_SCRIPT_ACTION", "")
        where = "" if isinstance(exc, HookError) or not action else f"{action}: "  # a hook's names it already
        print(f"{PROG}: {where}{printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug: still one line, CRIU must not see a traceback
        print(f"{PROG}: internal error: {printable(f'{type(exc).__name__}: {exc}')} "
              "(set CRIU_MACVLAN_DEBUG=1 and report it)", file=sys.stderr)
        if os.environ.get("CRIU_MACVLAN_DEBUG", "") not in ("", "0"):
            raise
        return ExitCode.BUG


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown (tens of ms with pyroute2 loaded): CRIU waits for us.
    os._exit(code)
