"""Shared fixtures: links and trees removed at teardown, images dirs, the criu environment,
host-wide files, a runc container; integration tests skipped where they cannot run.

The helpers behind them are in ``helpers.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import CRIU, REPO, Net, Procs, criu_version, run, start_serve, stop_serve, unique
from runc_bundle import BUSYBOX, RUNC, Runc

from criu_macvlan import criuconf, delivered, engines


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



@pytest.fixture(scope="session", autouse=True)
def _sweep_delivery_markers() -> Iterator[None]:
    """At the end, remove the delivery markers the suite's CRIUs and stand-ins left (their processes
    are gone; a live CRIU's stay), as the next marker recorded on the host would."""
    yield
    with contextlib.suppress(OSError):
        done = delivered.open_done_dir()
        try:
            delivered.sweep(done)
        finally:
            os.close(done)


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
    if criu_version() >= (4, 2) or release < (6, 16):
        return env
    out = tmp_path_factory.mktemp("shim") / "criu-sockopt-compat.so"
    src = REPO / "scripts" / "criu-sockopt-compat.c"
    run("cc", "-shared", "-fPIC", "-O2", "-o", str(out), str(src), "-ldl")
    env["LD_PRELOAD"] = str(out)
    return env


ETC_LOCK = "/run/criu-macvlan-tests-etc.lock"


@pytest.fixture
def confdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the well-known config paths into ``tmp_path`` (none exists until a test writes it)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.setattr(criuconf, "GLOBAL_CONFIG", str(etc / "default.conf"))
    monkeypatch.setattr(engines, "RUNC_CONFIG", str(etc / "runc.conf"))
    monkeypatch.setattr(engines, "CRUN_CONFIG", str(etc / "crun.conf"))
    monkeypatch.setattr(criuconf, "OWN_CONFIG", str(etc / "criu-macvlan.conf"))
    (tmp_path / "home" / ".criu").mkdir(parents=True)
    return tmp_path


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


@pytest.fixture
def container(inet_env: dict[str, str], tmp_path: Path) -> Iterator[Runc]:
    if RUNC is None or not os.path.exists(BUSYBOX):
        pytest.skip("needs runc and busybox-static (make setup)")
    env = {k: v for k, v in inet_env.items() if not k.startswith("CRIU_MACVLAN")}
    c = Runc(env)
    try:
        yield c
    finally:
        c.destroy()


@pytest.fixture
def served() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A helper in a runtime dir of this test's own: a helper the host may run is never used."""
    path = f"/run/criu-macvlan/test-{unique('s')}"
    proc = start_serve(path)
    try:
        yield path, proc
    finally:
        stop_serve(proc)
        assert not os.path.exists(path)
