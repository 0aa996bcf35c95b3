"""The per-dump helper: ``serve`` scoped to one CRIU process, left by its ``pre-dump``.

CRIU runs the action script as a new process per action, and ``post-dump`` runs
while the tree is frozen: its Python start-up (interpreter, pluggy, protobuf) is
downtime. ``pre-dump`` runs before the freeze, so after it has done its work the
hook's entry point (:mod:`criu_macvlan.hook`) forks this helper, which keeps
everything imported and serves the later actions of the **same CRIU process**
with the protocol and checks of ``criu-macvlan serve`` (:mod:`criu_macvlan.serve`,
``docs/serve.md``):

* it lives in ``/run/criu-macvlan/<criu-pid>/`` (mode 0700, root's): the FIFO
  ``req`` (held open read-write by the helper) and ``pid``;
* it serves only ``post-dump`` and ``network-unlock`` of a hook whose parent is
  that CRIU process and owns the images dir named by ``CRTOOLS_IMAGE_DIR``;
  anything else is refused, and the hook goes on to ``serve`` or Python;
* it exits when CRIU exits (a pidfd), after ``IDLE_TIMEOUT`` without a request,
  or on SIGTERM, removing its directory. The directories of helpers that could
  not clean up (SIGKILLed) are swept by the next ``pre-dump`` that starts one.

Best effort throughout: no helper (not root, no pidfd, ``CRIU_MACVLAN_NO_HELPER``
set) just means the normal path.
"""

from __future__ import annotations

import gc
import os
import signal
import sys

from .action import Later, run_later
from .proc import detach_fds
from .rundir import NO_HELPER_ENV, RUN_DIR, per_dump_dir, private_dir, remove_tree, sweep, write_pid

IDLE_TIMEOUT = 3600.0


def start(criu_pid: int, later: list[Later]) -> int | None:
    """Fork a helper for CRIU process ``criu_pid`` that first runs ``later``; its pid, or ``None`` if none."""
    if os.environ.get(NO_HELPER_ENV, "") not in ("", "0") or not hasattr(os, "pidfd_open") or os.geteuid() != 0:
        return None  # the hook trusts a helper's directory only if it is root's
    path = per_dump_dir(criu_pid)
    fds: list[int] = []
    try:
        fds.append(os.pidfd_open(criu_pid))
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        sweep()
        remove_tree(path)  # an earlier helper's (it keeps its own fds)
        os.mkdir(path, 0o700)
        os.mkfifo(f"{path}/req", 0o600)
        fds.append(os.open(f"{path}/req", os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC))
        rd, wr = os.pipe()
        child = os.fork()
    except OSError:
        remove_tree(path)
        for fd in fds:
            os.close(fd)
        return None
    if child == 0:  # pragma: no cover - the forked helper (tested end to end)
        code = 0
        try:
            os.close(rd)
            os.setsid()
            if os.fork() == 0:  # the helper says its pid itself, once its pid file is there for the shim
                _run(criu_pid, path, later, wr, *fds)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(wr)
    for fd in fds:
        os.close(fd)
    with os.fdopen(rd, "rb") as f:
        answer = f.read().strip()
    os.waitpid(child, 0)
    if not answer.isdigit():
        remove_tree(path)
        return None
    return int(answer)


def _run(criu_pid: int, path: str, later: list[Later], ready: int, pidfd: int, req: int) -> None:  # pragma: no cover
    """The helper (forked); never returns. Its pid goes to ``ready`` once its pid file is written;
    then it runs ``later`` (pre-dump's work left for after its answer), then it serves."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on a plain kill too
    try:
        dir_fd = private_dir(path)
        write_pid(dir_fd)
        os.close(dir_fd)
        os.write(ready, f"{os.getpid()}\n".encode())
        os.close(ready)
        from . import serve  # here, not at the top: the hook that forks us need not wait for it

        signal.signal(signal.SIGCHLD, serve.reap)
        # Before detach_fds, which would close the fds it works on (the stage's lock, the netns);
        # a request meanwhile waits in req, and the child serving it forks after this.
        run_later(later)
        pidfd, req = detach_fds([pidfd, req])
        gc.freeze()  # as serve: the children's collections leave the loaded objects alone
        serve.run_loop(req, int(IDLE_TIMEOUT * 1000), criu_pid, pidfd)
    finally:
        remove_tree(path)
        sys.stderr.flush()
        os._exit(0)
