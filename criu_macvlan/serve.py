"""``criu-macvlan serve``: a host-wide warm helper for the action script.

CRIU starts the action script as a new process for every action. A Python start
with pluggy, protobuf and pyroute2 costs ~100 ms, and ``setup-namespaces`` runs
while CRIU waits, so a cold action script makes every restore that much slower.
On a host that restores often (a migration target), run this helper once (a
systemd service: ``examples/criu-macvlan.service``): it imports everything, then
serves the actions of every CRIU process on the host, each in a child it forks,
so an action costs a fork instead of a Python start.

Protocol, in ``/run/criu-macvlan/serve`` (or ``$CRIU_MACVLAN_SERVE_DIR``, read by
the helper and the shim alike), mode 0700, root only:

* the helper keeps the FIFO ``req`` open read-write and writes its pid to ``pid``;
* the shim (``hooks/criu-macvlan-action``) checks that the directory, ``req`` and
  ``pid`` are root's (owner root, no symlink: nobody else can have made them; the
  helper itself refuses a directory that is not root's 0700), and writes one
  line ``<its pid> <reader>`` to ``req``: ``reader`` is a process of the shim's
  whose stdin is a pipe it also holds open for writing;
* a child the helper forked ahead of time reads the request from ``req`` itself
  (so that neither the fork nor a hand-over is on the shim's clock; the helper
  then forks the next one), opens that pipe for writing (``/proc/<reader>/fd/0``,
  the reader descending from the shim) and answers ``pid <child>``, on
  which the shim drops its own write end: from then on the child alone holds the
  pipe, so the shim reads the action's exit code from it, or an end of file if
  the child dies first (then the shim falls back to Python);
* the child takes everything else from the shim process itself: its environment
  (``CRTOOLS_*`` and the rest, exactly what a Python start would see), its stderr
  (CRIU's log) and its parent (the CRIU process, which must own the images dir
  named by ``CRTOOLS_IMAGE_DIR``). A request that does not check out is
  answered ``refused``: the shim then runs the action itself, as it does when no
  helper runs or none answers.

Started by systemd (socket activation, ``examples/criu-macvlan.socket``), the
helper finds ``req`` made and held by systemd, passed as fd 3 (``LISTEN_FDS``);
the socket unit writes ``1`` to ``pid``: systemd (pid 1) holds ``req`` and starts
the helper on the first request, which then waits in the FIFO. The helper leaves
the directory and the FIFO to systemd when it exits (after ``--idle-timeout``),
and writes ``1`` back to ``pid``.

The helper runs the code it imported when it started: restart it after upgrading
criu-macvlan or its plugins.

The per-dump helper ``pre-dump`` leaves (:mod:`criu_macvlan.warm`) is this
request loop scoped to one CRIU process (:func:`run_loop` with ``criu_pid``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import stat
import sys
from collections.abc import Callable

from .activation import SYSTEMD_PID, adopt, listen_fd
from .errors import UsageError
from .rundir import private_dir, remove_tree, write_pid
from .spare import Spare, poll, read_line, refuse

SERVE_DIR = "/run/criu-macvlan/serve"
DIR_ENV = "CRIU_MACVLAN_SERVE_DIR"


def serve_dir() -> str:
    return os.environ.get(DIR_ENV) or SERVE_DIR


def preload() -> None:
    """Import everything an action needs and load the plugins once, so that forked children start warm."""
    import ctypes  # noqa: F401  # netlink's setns, on first use

    from . import action, criuconf, delivered, engines, images, netdev, netlink, plugin, watch  # noqa: F401
    from .macvlan import announcing, dump, restore  # noqa: F401  # the plugin's hooks import them when called
    from .manager import plugin_manager, write_actions_cache

    netdev.netdev_entry_class()
    hooks = plugin_manager()
    write_actions_cache(hooks)
    action.keep_warm(hooks)


def serve(path: str | None = None, idle_timeout: float | None = None, ready: Callable[[], None] | None = None) -> int:
    """Serve requests until SIGTERM/SIGINT or ``idle_timeout`` seconds without one; the exit code."""
    path = path or serve_dir()
    if os.geteuid() != 0:
        raise UsageError("serve: must run as root (CRIU's action scripts run as root)")
    passed = listen_fd()
    dir_fd = _claim(path) if passed is None else adopt(path, passed)

    def on_signal(signum: int, frame: object) -> None:
        raise _Stop

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # Reaped as they exit (a shim sees its child's death as the end of its pipe): waited
    # for, so that their peak memory counts in our RUSAGE_CHILDREN, logged at exit.
    old[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, reap)
    if passed is None:
        req = os.open("req", os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    else:
        req = passed
        os.set_blocking(req, False)
    try:
        preload()
        gc.freeze()  # the children's collections then leave the loaded objects (and their pages) alone
        write_pid(dir_fd)
        if ready is not None:
            ready()
        run_loop(req, -1 if idle_timeout is None else int(idle_timeout * 1000))
        return 0  # idle
    except _Stop:
        return 0
    finally:
        os.close(req)
        if passed is not None:  # systemd's again: it starts us on the next request
            with contextlib.suppress(OSError):
                write_pid(dir_fd, SYSTEMD_PID)
        os.close(dir_fd)
        for s, handler in old.items():
            signal.signal(s, handler)
        if passed is None:
            remove_tree(path)
        _log_peak_memory()


def run_loop(req: int, timeout: int, criu_pid: int | None = None, pidfd: int | None = None) -> None:
    """Serve the requests written to ``req``, each in a spare child, until ``timeout`` ms without one.

    Scoped to CRIU process ``criu_pid`` (the helper pre-dump leaves): only its
    ``spare.PER_DUMP_ACTIONS`` are served, and the loop ends when ``pidfd`` (of that
    process) says it exited.
    """
    spare: Spare | None = None
    try:
        while True:
            spare = Spare.fork(req, criu_pid)
            if spare is None:  # no child to serve the next request: refuse it, the shim runs Python
                if not poll(req, timeout, pidfd):
                    break
                refuse(read_line(req))
            elif not spare.wait(timeout, pidfd):
                break
            spare = None  # it took a request (or died): the next one
    finally:
        if spare is not None:
            spare.close()  # it exits, unused


def reap(signum: int = 0, frame: object = None) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _log_peak_memory() -> None:
    """With ``CRIU_MACVLAN_DEBUG``: our peak RSS and the largest of our children's (the bench reads it)."""
    if os.environ.get("CRIU_MACVLAN_DEBUG", "") in ("", "0"):
        return
    import resource

    reap()
    own, child = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(f"criu-macvlan: serve: peak RSS {own} KiB, of a child {child} KiB", file=sys.stderr, flush=True)


class _Stop(Exception):
    """SIGTERM or SIGINT."""


def _root_only(st: os.stat_result, mode: int) -> bool:
    return st.st_uid == 0 and stat.S_IMODE(st.st_mode) == mode


def _claim(path: str) -> int:
    """Create the runtime dir and its ``req`` FIFO; an fd of the dir.

    Refuses if a live helper owns it, or if it is not root's alone: whoever made
    it could read our requests and answer them.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISDIR(st.st_mode) or not _root_only(st, 0o700):
            raise UsageError(f"serve: {path} is not a directory of root's alone (owner root, mode 0700, no "
                             "symlink): remove it or choose another --dir")
        other = _pid_in(path)
        if other > 0 and other != os.getpid():
            try:
                os.kill(other, 0)
                raise UsageError(f"serve: already running (pid {other})")
            except ProcessLookupError:
                pass  # a dead helper: take over
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    remove_tree(path)
    try:
        os.mkdir(path, 0o700)
        dir_fd = private_dir(path)
    except OSError as exc:
        raise UsageError(f"serve: cannot create {path} as a directory of root's alone: {exc.strerror}") from exc
    try:
        os.mkfifo("req", 0o600, dir_fd=dir_fd)
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd


def _pid_in(path: str) -> int:
    """The pid in ``path/pid`` (0 if none), read without following a symlink."""
    try:
        fd = os.open(f"{path}/pid", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return int(os.read(fd, 64).strip() or b"0")
    except (OSError, ValueError):
        return 0
    finally:
        os.close(fd)
