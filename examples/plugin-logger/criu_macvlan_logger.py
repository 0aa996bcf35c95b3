"""An example criu-macvlan plugin: one line per CRIU action, appended to a file.

The file is ``$CRIU_MACVLAN_LOGGER_FILE``; without it the lines go to
criu-macvlan's logger (CRIU's log in action-script mode, with
``CRIU_MACVLAN_DEBUG=1``). Each line: time, mode, action, pid, images dir.

A plugin is a module (or object) with ``@hookimpl`` functions named after the
hooks of :mod:`criu_macvlan.hookspecs`; each gets the
:class:`~criu_macvlan.context.ActionContext` of the action. Raise a
:class:`~criu_macvlan.errors.CriuMacvlanError` to make CRIU abort.
"""

from __future__ import annotations

import os
import time

from criu_macvlan.context import ActionContext
from criu_macvlan.hookspecs import hookimpl

LOG_ENV = "CRIU_MACVLAN_LOGGER_FILE"


def log_action(ctx: ActionContext) -> None:
    line = f"{time.time():.6f} {ctx.mode.value} {ctx.action} pid={ctx.pid} images={ctx.images.path}"
    path = os.environ.get(LOG_ENV)
    if not path:
        ctx.log.info("logger: %s", line)
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


@hookimpl
def criu_pre_stream(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_pre_dump(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_network_lock(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_network_unlock(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_post_dump(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_pre_restore(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_setup_namespaces(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_post_setup_namespaces(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_post_restore(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_pre_resume(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_post_resume(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_orphan_pts_master(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_status_ready(ctx: ActionContext) -> None:
    log_action(ctx)


@hookimpl
def criu_query_ext_files(ctx: ActionContext) -> None:
    log_action(ctx)
