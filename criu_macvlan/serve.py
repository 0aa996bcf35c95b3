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
* the shim (``hooks/criu-macvlan-action``) checks that the directory and ``req``
  are root's alone (owner root, mode 0700 and 0600, no symlink), and writes one
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
import logging
import os
import select
import signal
import socket
import stat
import sys
from collections.abc import Callable
from typing import NoReturn

from .action import Later, run_later
from .action import main as run_action
from .activation import SYSTEMD_PID, adopt, listen_fd
from .errors import UsageError
from .proc import stat_fields, strings
from .rundir import NO_HELPER_ENV, private_dir, remove_tree, write_pid

SERVE_DIR = "/run/criu-macvlan/serve"
DIR_ENV = "CRIU_MACVLAN_SERVE_DIR"
PER_DUMP_ACTIONS = ("post-dump", "network-unlock")  # what a helper scoped to one CRIU process serves


def serve_dir() -> str:
    return os.environ.get(DIR_ENV) or SERVE_DIR


def preload() -> None:
    """Import everything an action needs and load the plugins once, so that forked children start warm."""
    import ctypes  # noqa: F401  # netlink's setns, on first use

    from . import action, criuconf, delivered, images, netdev, netlink, plugin, watch  # noqa: F401
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
    ``PER_DUMP_ACTIONS`` are served, and the loop ends when ``pidfd`` (of that
    process) says it exited.
    """
    spare: _Spare | None = None
    try:
        while True:
            spare = _Spare.fork(req, criu_pid)
            if spare is None:  # no child to serve the next request: refuse it, the shim runs Python
                if not _poll(req, timeout, pidfd):
                    break
                _refuse(_read_line(req))
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


class _Spare:
    """A child forked ahead of the request it serves: it reads ``req`` itself, so that neither our fork
    nor our reading and handing over is on the clock of a waiting shim."""

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl  # it says here when it has taken a request; closed: it exits unused

    @classmethod
    def fork(cls, req: int, criu_pid: int | None) -> _Spare | None:
        """A new spare (serving only CRIU process ``criu_pid``'s actions, if given); ``None`` if the fork fails."""
        ours, its = socket.socketpair()
        stops = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # a stop must never run our handler in the child
        pid = -1
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            its.close()
            return None
        finally:
            if pid != 0:  # the child unblocks them once its handlers are the defaults
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        if pid == 0:  # pragma: no cover - the forked child (tested end to end)
            ours.close()
            _serve_one(req, its.fileno(), stops, criu_pid)
        its.close()
        return cls(ours)

    def wait(self, timeout: int, stop: int | None = None) -> bool:
        """``True`` once it has taken a request (or died), ``False`` after ``timeout`` ms without or on ``stop``."""
        try:
            return _poll(self.ctl.fileno(), timeout, stop)
        finally:
            self.close()

    def close(self) -> None:
        self.ctl.close()


def _poll(fd: int, timeout: int, stop: int | None = None) -> bool:
    """``fd`` is readable within ``timeout`` ms, and ``stop`` (a pidfd) is not."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if stop is not None:
        poller.register(stop, select.POLLIN)
    ready = {f for f, _ in poller.poll(timeout)}
    return fd in ready and stop not in ready


def _read_line(req: int) -> bytes:
    """One request line from ``req``, read a byte at a time: the next line is the next child's."""
    line = b""
    with contextlib.suppress(BlockingIOError):  # a line is written whole: nothing more means a stray
        while not line.endswith(b"\n") and len(line) < 256:
            byte = os.read(req, 1)
            if not byte:
                break
            line += byte
    return line


def _request(line: bytes) -> tuple[int, int] | None:
    """``(token, reader)`` of a request line."""
    words = line.split()
    return (int(words[0]), int(words[1])) if len(words) == 2 and all(w.isdigit() for w in words) else None


def _refuse(line: bytes) -> None:
    if (request := _request(line)) is not None and (rep := _open_reply(*request)) is not None:
        _answer(rep, "refused")
        os.close(rep)


def _serve_one(req: int, ctl: int, stops: set[signal.Signals], criu_pid: int | None) -> NoReturn:  # pragma: no cover
    """The spare child: take the next request from ``req`` (unless ``ctl`` closes first), run it, exit."""
    code = 1
    try:
        for s in (*stops, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        poller = select.poll()
        poller.register(req, select.POLLIN)
        poller.register(ctl, select.POLLIN)
        request = None
        while request is None:
            if any(fd == ctl for fd, _ in poller.poll()):
                os._exit(0)  # unused: the service stopped
            request = _request(_read_line(req))
        os.write(ctl, b"!")  # the service forks the next spare
        os.close(ctl)
        os.close(req)
        rep = _open_reply(*request)
        if rep is None:
            code = 0  # the shim gave up
        else:
            _answer(rep, f"pid {os.getpid()}")  # before any other answer: the shim drops its own write end on it
            try:
                handle(rep, request[0], criu_pid)
                code = 0
            except BaseException:
                _answer(rep, "refused")  # the hook runs Python rather than wait
                raise
    finally:
        sys.stderr.flush()
        os._exit(code)


def shim_request(token: int, criu_pid: int | None = None) -> dict[str, str] | None:
    """The environment of the waiting shim ``token``, if its request checks out (its parent owns the images dir).

    With ``criu_pid``: only that CRIU process's ``PER_DUMP_ACTIONS``.
    """
    try:
        items = strings(token, "environ")
        ppid = int(stat_fields(token)[1])
    except (OSError, ValueError, IndexError):
        return None
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    images = env.get("CRTOOLS_IMAGE_DIR", "")
    action = env.get("CRTOOLS_SCRIPT_ACTION", "")
    if not action or not images.startswith(f"/proc/{ppid}/fd/"):
        return None
    if criu_pid is not None and (ppid != criu_pid or action not in PER_DUMP_ACTIONS):
        return None
    return env


def handle(rep: int, token: int, criu_pid: int | None = None) -> None:
    """In the forked child: run the action of shim ``token`` and answer it on ``rep`` (``refused``: it runs Python).

    ``criu_pid``: the helper is the one pre-dump left for that CRIU process.
    """
    env = shim_request(token, criu_pid)
    code = None
    later: list[Later] = []
    if env is not None:
        env[NO_HELPER_ENV] = "1"  # pre-dump served here: no per-dump helper, we serve post-dump too
        os.environ.clear()
        os.environ.update(env)
        helper = f"criu-macvlan serve (pid {os.getppid()})" if criu_pid is None else f"warm helper {os.getppid()}"
        code = run_for_hook(token, env, helper, later)
    _answer(rep, "refused" if code is None else str(code))
    if code == 0:
        run_later(later)  # CRIU goes on meanwhile


def run_for_hook(token: int, env: dict[str, str], helper: str, later: list[Later]) -> int | None:
    """Run ``env``'s action for the waiting hook process ``token``; its exit code.

    The action's messages go to the hook's stderr (CRIU's log, opened ``O_APPEND``
    as CRIU does), as if the hook ran the action itself. ``None`` if that stderr
    cannot be opened (e.g. a socket): the hook then runs the action itself. What
    the hooks leave for after the answer goes to ``later``.
    """
    try:
        err = os.open(f"/proc/{token}/fd/2", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError:
        return None
    os.dup2(err, 2)
    os.close(err)
    try:
        code = run_action(env, later)
        logging.getLogger("criu_macvlan").debug(
            "%s ran %s: exit code %d", helper, env["CRTOOLS_SCRIPT_ACTION"], code
        )
    finally:
        sys.stderr.flush()
    return code


def _open_reply(token: int, reader: int) -> int | None:
    """The pipe on which the shim ``token`` waits, opened for writing; ``None`` if it is not one.

    ``reader`` must be the shim or a process it started (at most two forks down),
    and its stdin a pipe: the only place an answer is written to.
    """
    try:
        pid = reader
        for _ in range(3):
            if pid == token:
                break
            pid = int(stat_fields(pid)[1])
        else:
            return None
        rep = os.open(f"/proc/{reader}/fd/0", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError, IndexError):
        return None
    try:
        if stat.S_ISFIFO(os.fstat(rep).st_mode):
            return rep
    except OSError:
        pass
    os.close(rep)
    return None


def _answer(rep: int, answer: str) -> None:
    with contextlib.suppress(OSError):  # the shim is gone
        os.write(rep, f"{answer}\n".encode("ascii"))
