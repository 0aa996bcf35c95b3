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
* the shim (``hooks/criu-macvlan-action``) creates a FIFO ``rep.<its pid>``, holds
  it open read-write, writes its pid as one line to ``req`` and reads one line,
  the action's exit code, from ``rep.<its pid>``;
* the child takes everything else from the shim process itself: its environment
  (``CRTOOLS_*`` and the rest, exactly what a Python start would see), its stderr
  (CRIU's log) and its parent (the CRIU process, which must own the images dir
  named by ``CRTOOLS_IMAGE_DIR``). A request that does not check out is
  answered ``refused``: the shim then runs the action itself, as it does when no
  helper runs or none answers.

The helper runs the code it imported when it started: restart it after upgrading
criu-macvlan or its plugins.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
from collections.abc import Callable

from .errors import UsageError
from .warm import DISABLE_ENV as DISABLE_HELPER_ENV
from .warm import run_for_hook, write_pid

SERVE_DIR = "/run/criu-macvlan/serve"
DIR_ENV = "CRIU_MACVLAN_SERVE_DIR"


def serve_dir() -> str:
    return os.environ.get(DIR_ENV) or SERVE_DIR


def preload() -> None:
    """Import everything an action needs, so that forked children start warm."""
    from . import action, criuconf, images, netlink, plugin  # noqa: F401
    from .manager import plugin_manager

    images.netdev_entry_class()
    plugin_manager()


def serve(path: str | None = None, idle_timeout: float | None = None, ready: Callable[[], None] | None = None) -> int:
    """Serve requests until SIGTERM/SIGINT or ``idle_timeout`` seconds without one; the exit code."""
    path = path or serve_dir()
    if os.geteuid() != 0:
        raise UsageError("serve: must run as root (CRIU's action scripts run as root)")
    _claim(path)

    def on_signal(signum: int, frame: object) -> None:
        raise _Stop

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    req = os.open(f"{path}/req", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        preload()
        write_pid(path)
        if ready is not None:
            ready()
        poller = select.poll()
        poller.register(req, select.POLLIN)
        pending = b""
        timeout = -1 if idle_timeout is None else int(idle_timeout * 1000)
        while poller.poll(timeout):
            _reap()
            with contextlib.suppress(BlockingIOError):
                pending += os.read(req, 4096)
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                token = line.decode("ascii", "replace").strip()
                if token.isdigit():
                    _fork_handler(path, int(token))
        return 0  # idle
    except _Stop:
        return 0
    finally:
        os.close(req)
        for s, handler in old.items():
            signal.signal(s, handler)
        shutil.rmtree(path, ignore_errors=True)
        _reap()


class _Stop(Exception):
    """SIGTERM or SIGINT."""


def _claim(path: str) -> None:
    """Create the runtime dir; refuse if a live helper owns it."""
    try:
        with open(f"{path}/pid", encoding="ascii") as f:
            other = int(f.read().strip() or "0")
        if other > 0 and other != os.getpid():
            os.kill(other, 0)
            raise UsageError(f"serve: already running (pid {other})")
    except (OSError, ValueError):
        pass  # no helper, or a dead one: take over
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    shutil.rmtree(path, ignore_errors=True)
    os.mkdir(path, 0o700)
    os.mkfifo(f"{path}/req", 0o600)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _fork_handler(path: str, token: int) -> None:
    if os.fork() != 0:
        return
    code = 1
    try:  # pragma: no cover - the forked child (tested end to end)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            handle(path, token)
            code = 0
        except BaseException:
            _reply(path, token, "refused")  # the hook runs Python rather than wait for its timeout
            raise
    finally:
        sys.stderr.flush()
        os._exit(code)


def shim_request(token: int) -> dict[str, str] | None:
    """The environment of the waiting shim ``token``, if its request checks out (its parent owns the images dir)."""
    try:
        with open(f"/proc/{token}/environ", "rb") as f:
            raw = f.read()
        with open(f"/proc/{token}/stat", encoding="ascii", errors="replace") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[os.fsdecode(key)] = os.fsdecode(value)
    images = env.get("CRTOOLS_IMAGE_DIR", "")
    if not env.get("CRTOOLS_SCRIPT_ACTION") or not images.startswith(f"/proc/{ppid}/fd/"):
        return None
    return env


def handle(path: str, token: int) -> None:
    """In the forked child: run the action of shim ``token`` and answer it (``refused``: it runs Python)."""
    env = shim_request(token)
    code = None
    if env is not None:
        env[DISABLE_HELPER_ENV] = "1"  # pre-dump: no per-dump helper, we serve post-dump too
        os.environ.clear()
        os.environ.update(env)
        code = run_for_hook(token, env, f"criu-macvlan serve (pid {os.getppid()})")
    _reply(path, token, "refused" if code is None else str(code))


def _reply(path: str, token: int, answer: str) -> None:
    try:  # the shim holds the FIFO open: this never blocks; ENXIO if it gave up
        rep = os.open(f"{path}/rep.{token}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(rep, f"{answer}\n".encode("ascii"))
    finally:
        os.close(rep)
