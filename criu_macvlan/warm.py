"""The warm helper: post-dump and network-unlock of one CRIU dump without a Python start.

CRIU runs the action script as a new process per action, and ``post-dump`` runs
while the tree is frozen: its Python start-up (interpreter, pluggy, protobuf:
~100 ms) is downtime. ``pre-dump`` runs before the freeze, so after it has done
its work it forks this helper, which keeps everything imported and serves the
later actions of the **same CRIU process**:

* it lives in ``/run/criu-macvlan/<criu-pid>/`` (mode 0700): FIFOs ``req`` and
  ``rep`` (held open read-write by the helper, so the shim's opens never block
  while it lives) and ``pid``;
* the shim (``hooks/criu-macvlan-action``) checks that the helper is alive,
  writes ``ACTION IMAGES-DIR INIT-PID TOKEN`` to ``req`` and reads ``TOKEN CODE``
  from ``rep`` under ``timeout``: if the helper is gone, or does not answer, it
  falls back to the normal Python path (both actions are idempotent);
* the helper exits when CRIU exits (a pidfd), after ``IDLE_TIMEOUT`` without a
  request, or on any error, removing its directory. It holds no fd of CRIU's: for
  each request it writes to the requesting shim's stderr (CRIU's log). The
  directories of helpers that could not clean up (SIGKILLed) are swept by the next
  ``pre-dump`` that starts one.

Best effort throughout: no helper (not root, no pidfd, ``CRIU_MACVLAN_NO_HELPER``
set) just means the normal path.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import shutil
import signal
import stat
import sys

RUN_DIR = "/run/criu-macvlan"
SERVED = ("post-dump", "network-unlock")
IDLE_TIMEOUT = 3600.0
DISABLE_ENV = "CRIU_MACVLAN_NO_HELPER"


def runtime_dir(criu_pid: int) -> str:
    return f"{RUN_DIR}/{criu_pid}"


def start(criu_pid: int) -> int | None:
    """Fork a helper for CRIU process ``criu_pid``; its pid, or ``None`` if there is none."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0") or not hasattr(os, "pidfd_open"):
        return None
    path = runtime_dir(criu_pid)
    fds: list[int] = []
    try:
        fds.append(os.pidfd_open(criu_pid))
        os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
        sweep()
        shutil.rmtree(path, ignore_errors=True)  # an earlier helper's (it keeps its own fds)
        os.mkdir(path, 0o700)
        for name in ("req", "rep"):
            os.mkfifo(f"{path}/{name}", 0o600)
            fds.append(os.open(f"{path}/{name}", os.O_RDWR | os.O_CLOEXEC))
        rd, wr = os.pipe()
        child = os.fork()
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        for fd in fds:
            os.close(fd)
        return None
    if child == 0:  # pragma: no cover - the forked helper (tested end to end)
        code = 0
        try:
            os.close(rd)
            os.setsid()
            if os.fork() == 0:  # the helper says its pid itself, once its pid file is there for the shim
                _serve(criu_pid, path, wr, *fds)
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
        shutil.rmtree(path, ignore_errors=True)
        return None
    return int(answer)


def _serve(criu_pid: int, path: str, ready: int, pidfd: int, req: int, rep: int) -> None:  # pragma: no cover
    """The helper's loop (forked); never returns. Its pid goes to ``ready`` once its pid file is written."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on a plain kill too
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # stderr too: a caller reading CRIU's stderr must see EOF when CRIU exits
            os.dup2(null, fd)
        keep = {0, 1, 2, null, ready, pidfd, req, rep}
        for fd in map(int, os.listdir("/proc/self/fd")):
            if fd not in keep:
                with contextlib.suppress(OSError):  # the listing's own fd
                    os.close(fd)
        dir_fd = private_dir(path)
        write_pid(dir_fd)
        os.close(dir_fd)
        os.write(ready, f"{os.getpid()}\n".encode())
        os.close(ready)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(req, select.POLLIN)
        pending = b""
        while True:
            events = poller.poll(int(IDLE_TIMEOUT * 1000))
            if not events or any(fd == pidfd for fd, _ in events):
                break  # idle, or CRIU is gone
            pending += os.read(req, 4096)
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                answer = handle(line.decode("ascii", "replace"), criu_pid, null)
                if answer:
                    os.write(rep, answer.encode("ascii"))
    finally:
        shutil.rmtree(path, ignore_errors=True)
        sys.stderr.flush()
        os._exit(0)


_REQUEST = re.compile(r"(\S+) (/proc/(\d+)/fd/\d+) (\d+|-) (\d+)")


def handle(line: str, criu_pid: int, null: int) -> str:
    """Run one request line of the shim; the reply line (``TOKEN refused``: the shim runs Python)."""
    m = _REQUEST.fullmatch(line)
    token = line.rpartition(" ")[2]
    if m is None or m.group(1) not in SERVED or int(m.group(3)) != criu_pid:
        return f"{token} refused\n" if token.isdigit() else ""
    action, images, init_pid = m.group(1), m.group(2), m.group(4)
    env = dict(os.environ)
    env.update(CRTOOLS_SCRIPT_ACTION=action, CRTOOLS_IMAGE_DIR=images)
    env.pop("CRTOOLS_INIT_PID", None)
    if init_pid != "-":
        env["CRTOOLS_INIT_PID"] = init_pid
    code = run_for_hook(int(token), env, f"warm helper {os.getpid()}", stderr_after=null)
    return f"{token} refused\n" if code is None else f"{token} {code}\n"


def run_for_hook(token: int, env: dict[str, str], helper: str, stderr_after: int | None = None) -> int | None:
    """Run ``env``'s action for the waiting hook process ``token``; its exit code.

    The action's messages go to the hook's stderr (CRIU's log, opened ``O_APPEND``
    as CRIU does), as if the hook ran the action itself; ``stderr_after`` is put
    back as our stderr afterwards. ``None`` if that stderr cannot be opened (e.g.
    a socket): the hook then runs the action itself.
    """
    from .action import main

    try:
        err = os.open(f"/proc/{token}/fd/2", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError:
        return None
    os.dup2(err, 2)
    os.close(err)
    try:
        code = main(env)
        logging.getLogger("criu_macvlan").debug(
            "%s ran %s: exit code %d", helper, env["CRTOOLS_SCRIPT_ACTION"], code
        )
    finally:
        sys.stderr.flush()
        if stderr_after is not None:
            os.dup2(stderr_after, 2)
    return code


def private_dir(path: str) -> int:
    """An fd of directory ``path`` if it is ours alone (no symlink, owned by us, mode 0700); else ``OSError``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
        os.close(fd)
        raise PermissionError(errno.EPERM, "not a directory of ours alone (owner, mode 0700)", path)
    return fd


def write_pid(dir_fd: int, pid: int | None = None) -> None:
    """Announce this helper (or ``pid``): file ``pid`` in ``dir_fd``, written whole (the shim checks it lives).

    Created exclusively without following a symlink, then renamed into place.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink("pid.tmp", dir_fd=dir_fd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("pid.tmp", flags, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, f"{pid or os.getpid()}\n".encode("ascii"))
    finally:
        os.close(fd)
    os.rename("pid.tmp", "pid", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def sweep() -> None:
    """Remove the runtime dirs of helpers whose CRIU is gone (a SIGKILLed helper leaves its dir).

    A dir is named after its CRIU process: stale if that pid is dead, a zombie, or a
    process started after the dir was last changed (the pid was reused).
    """
    try:
        names = [n for n in os.listdir(RUN_DIR) if n.isdigit()]
    except OSError:
        return
    for name in names:
        path = f"{RUN_DIR}/{name}"
        try:
            changed = os.lstat(path).st_mtime
        except OSError:
            continue
        started = _start_time(int(name))
        if started is None or started > changed + 2:  # /proc/stat's btime is whole seconds
            shutil.rmtree(path, ignore_errors=True)


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch); ``None`` if it is dead or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat", encoding="ascii") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
