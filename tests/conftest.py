"""Shared fixtures: unique names, real links and trees, the real criu binary, and cleanup.

Every link a test makes is created through :class:`Net` and deleted at teardown
(also when the test fails); every process through :class:`Procs` and killed by
pid. Names are unique per test run and per test, and never those of the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ACTION_SCRIPT = REPO / "hooks" / "criu-macvlan-action"
CRIU = shutil.which("criu") or "/usr/sbin/criu"
_counter = itertools.count()


def _integration_possible() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists(CRIU):
        return "needs the criu binary (make setup)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _integration_possible()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


def unique(prefix: str) -> str:
    """An interface-safe name (<= 15 bytes) unique to this test run: prefix + pid + counter."""
    name = f"{prefix}{os.getpid() % 10000:04d}{next(_counter):03d}"
    assert len(name) <= 15, name
    return name


def run(*cmd: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)  # type: ignore[call-overload,no-any-return]


def ip(*args: str, pid: int | None = None, check: bool = True) -> str:
    """``ip`` in the root netns, or in the netns of ``pid`` (test set-up only)."""
    prefix = ["nsenter", "-t", str(pid), "-n"] if pid is not None else []
    return run(*prefix, "ip", *args, check=check).stdout


def link_names(pid: int | None = None) -> set[str]:
    out = ip("-o", "link", "show", pid=pid)
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line}


def leaked(before: set[str]) -> set[str]:
    """Links new in the host netns that are ours: this run's unique names or the macvlans' names.

    Other engineers' (or CI jobs') tests add and remove their own links meanwhile: a
    plain set comparison would see theirs.
    """
    tag = f"{os.getpid() % 10000:04d}"
    return {n for n in link_names() - before if tag in n or n.startswith(("mv", "tm"))}


def netns_inode(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


class Net:
    """Links in the root netns made by one test; all deleted at teardown."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def name(self, prefix: str) -> str:
        return unique(prefix)

    def veth(self, prefix: str = "vp", mtu: int | None = None, up: bool = True) -> str:
        """A veth pair (NAME, NAMEp); NAME is a usable macvlan parent."""
        name = unique(prefix)
        peer = name + "p"
        ip("link", "add", name, "type", "veth", "peer", "name", peer)
        self.created.append(name)
        if mtu:
            ip("link", "set", name, "mtu", str(mtu))
            ip("link", "set", peer, "mtu", str(mtu))
        if up:
            ip("link", "set", name, "up")
            ip("link", "set", peer, "up")
        return name

    def bridge(self, prefix: str = "br") -> str:
        name = unique(prefix)
        ip("link", "add", name, "type", "bridge")
        self.created.append(name)
        ip("link", "set", name, "up")
        return name

    def macvlan_into(self, pid: int, name: str, parent: str, *args: str, flags: int | None = None) -> None:
        """Create macvlan ``name`` on ``parent`` and move it into the netns of ``pid``.

        ``flags`` sets IFLA_MACVLAN_FLAGS (iproute2 only allows nopromisc with passthru).
        """
        tmp = unique("tm")
        if flags is None:
            ip("link", "add", tmp, "link", parent, "type", "macvlan", *args)
        else:
            from pyroute2 import IPRoute

            mode = args[args.index("mode") + 1] if "mode" in args else "vepa"
            # numeric: criu_macvlan.netlink, once imported in this process, drops pyroute2's mode names
            number = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8, "source": 16}[mode]
            with IPRoute() as ipr:
                index = ipr.link_lookup(ifname=parent)[0]
                ipr.link("add", ifname=tmp, kind="macvlan", link=index, macvlan_mode=number, macvlan_flags=flags)
        try:
            ip("link", "set", tmp, "netns", str(pid))
        except subprocess.CalledProcessError:
            ip("link", "del", tmp, check=False)
            raise
        ip("link", "set", tmp, "name", name, pid=pid)

    def cleanup(self) -> None:
        for name in reversed(self.created):
            ip("link", "del", name, check=False)
        self.created.clear()


class Procs:
    """Processes (and process trees) started by one test; killed by pid at teardown."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.popens: list[subprocess.Popen[bytes]] = []

    def tree(self, *cmd: str) -> int:
        """Start ``cmd`` as pid 1 of a new pid+net namespace; return its pid on the host."""
        cmd = cmd or ("sleep", "100000")
        p = subprocess.Popen(
            ["unshare", "--pid", "--net", "--fork", "setsid", *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.popens.append(p)
        children = Path(f"/proc/{p.pid}/task/{p.pid}/children")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids = children.read_text().split() if children.exists() else []
            if kids:
                pid = int(kids[0])
                self.pids.append(pid)
                # wait until setsid exec'd the command (its netns is the new one by then)
                while Path(f"/proc/{pid}/comm").read_text().strip() in ("unshare", "setsid"):
                    time.sleep(0.01)
                return pid
            time.sleep(0.01)
        raise RuntimeError("the test tree did not start")

    def adopt(self, pid: int) -> int:
        """Track a process started by someone else for us (e.g. a restored tree)."""
        self.pids.append(pid)
        return pid

    def cleanup(self) -> None:
        for pid in reversed(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for p in self.popens:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.pids.clear()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def net() -> Iterator[Net]:
    n = Net()
    try:
        yield n
    finally:
        n.cleanup()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    d = tmp_path / "img"
    d.mkdir()
    return d


def criu(
    *args: str, images: Path, log: str, check: bool = True, env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the real criu with ``-D images -v4 -o log``; on failure show the end of its log.

    ``timeout``: a deadline for a hang (raises ``TimeoutExpired``), not a speed check.
    """
    res = run(CRIU, *args, "-D", str(images), "-v4", "-o", log, check=False, env=env, timeout=timeout)
    if check and res.returncode != 0:
        tail = (images / log).read_text(errors="replace").splitlines()[-40:] if (images / log).exists() else []
        pytest.fail(f"criu {args[0]} failed ({res.returncode}): {res.stderr}\n" + "\n".join(tail))
    return res


def _criu_version() -> tuple[int, ...]:
    out = run(CRIU, "--version", check=False).stdout
    for line in out.splitlines():
        if line.startswith("Version:"):
            return tuple(int(x) for x in line.split()[1].split(".") if x.isdigit())
    return (0,)


@pytest.fixture(scope="session")
def inet_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for criu (and runc) runs that dump TCP/UDP sockets.

    criu < 4.2 cannot dump an inet socket on Linux >= 6.16 (SO_PASSCRED is
    AF_UNIX-only there: "Can't get 1:16 opt"); criu 4.2 treats the option as 0.
    For such a criu this preloads ``scripts/criu-sockopt-compat.c`` (as the demo does), which
    does the same, and nothing more.
    """
    env = dict(os.environ)
    release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    if _criu_version() >= (4, 2) or release < (6, 16):
        return env
    out = tmp_path_factory.mktemp("shim") / "criu-sockopt-compat.so"
    src = REPO / "scripts" / "criu-sockopt-compat.c"
    run("cc", "-shared", "-fPIC", "-O2", "-o", str(out), str(src), "-ldl")
    env["LD_PRELOAD"] = str(out)
    return env


ETC_LOCK = "/run/criu-macvlan-tests-etc.lock"


@pytest.fixture
def etc_files() -> Iterator[Callable[[str, str], None]]:
    """Write host-wide files (``/etc/criu/runc.conf`` ...) for one test, serialized with every
    other test that does, each file's original content (or absence) restored afterwards.

    Yields ``write(path, text)``.
    """
    saved: dict[str, bytes | None] = {}
    made_dirs: list[str] = []

    def write(path: str, text: str) -> None:
        if path not in saved:
            saved[path] = Path(path).read_bytes() if os.path.exists(path) else None
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent)
            made_dirs.append(parent)
        Path(path).write_text(text)

    with open(ETC_LOCK, "a") as lock:
        deadline = time.monotonic() + 900  # another test holds it for one container's checkpoint + restore
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{ETC_LOCK} stayed locked")
                time.sleep(0.1)
        try:
            yield write
        finally:
            for path, content in saved.items():
                if content is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                else:
                    Path(path).write_bytes(content)
            for d in reversed(made_dirs):
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # only if nothing else was put there meanwhile
