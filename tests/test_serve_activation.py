"""``criu-macvlan serve`` started by systemd's socket activation (``examples/criu-macvlan.socket``).

systemd is not pid 1 here: the test does what the socket unit makes systemd do. It
makes the directory (0700) and the FIFO (0600), holds the FIFO open, writes ``1``
to ``pid`` (``ExecStartPost=``), and when a request arrives starts the service with
the FIFO as fd 3 and ``LISTEN_PID``/``LISTEN_FDS`` set for it.
"""

from __future__ import annotations

import configparser
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CRIU, SCRIPT, Net, Procs, criu, env_for, links_json, unique

from criu_macvlan import serve

pytestmark = pytest.mark.integration
CLI = Path(sys.executable).with_name("criu-macvlan")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEADLINE = 60


class FakeSystemd:
    """What systemd does for criu-macvlan.socket: the directory, the FIFO held open, ``pid`` saying 1."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.mkdir(path, 0o700)
        os.mkfifo(f"{path}/req", 0o600)
        # as socket.c opens a ListenFIFO=
        self.fifo = os.open(f"{path}/req", os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        fd = os.open(f"{path}/pid", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"1\n")
        os.close(fd)

    def wait_for_request(self, deadline: float) -> None:
        poller = select.poll()
        poller.register(self.fifo, select.POLLIN)
        while not poller.poll(100):
            assert time.monotonic() < deadline, "no request came"

    def start(self, *args: str, fifo: int | None = None) -> subprocess.Popen[str]:
        """The service, as systemd execs it: LISTEN_PID is its own pid, the FIFO is fd 3."""
        fd = self.fifo if fifo is None else fifo
        return subprocess.Popen(  # the FIFO comes in as stdin: dash takes only one-digit fds in a redirection
            ["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=req exec "$@" 3<&0 0</dev/null',
             "sh", str(CLI), "serve", "--dir", self.path, *args],
            stdin=fd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def close(self) -> None:
        os.close(self.fifo)
        shutil.rmtree(self.path, ignore_errors=True)


def test_the_first_request_starts_the_service_and_waits_for_it(net: Net, procs: Procs, images: Path) -> None:
    systemd = FakeSystemd(f"/run/criu-macvlan/test-{unique('a')}")
    env = env_for(systemd.path)
    service = None
    restoring = None
    try:
        a, b = net.veth("aa"), net.veth("ab")
        pid = procs.tree()
        net.macvlan_into(pid, "mva", a, "mode", "bridge")
        criu("dump", "-t", str(pid), *SCRIPT, images=images, log="dump.log", env={**env, serve.DIR_ENV: "/none"})
        pidfile = images / "restored.pid"
        restoring = subprocess.Popen([CRIU, "restore", "-d", "--pidfile", str(pidfile), *SCRIPT,
                                      f"--external=macvlan[mva]:{b}", "-D", str(images), "-v4", "-o", "restore.log"],
                                     env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + DEADLINE
        systemd.wait_for_request(deadline)  # setup-namespaces asked pid 1, and waits
        assert restoring.poll() is None
        service = systemd.start("--idle-timeout", "1")
        while restoring.poll() is None:
            if service.poll() is not None or time.monotonic() > deadline:
                service.kill()
                pytest.fail(f"the restore was not served; the service said: {service.communicate()[1]}"
                            f"{(images / 'restore.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.01)
        assert restoring.returncode == 0
        new = procs.adopt(int(pidfile.read_text()))
        assert links_json(new)["mva"]["link_index"] == links_json()[b]["ifindex"]
        log = (images / "restore.log").read_text()
        assert f"criu-macvlan serve (pid {service.pid}) ran setup-namespaces: exit code 0" in log
        assert service.wait(timeout=DEADLINE) == 0  # idle: it exits
        # and leaves the FIFO and the directory to systemd, pid 1 holding them again
        assert Path(systemd.path, "pid").read_text() == "1\n"
        assert sorted(os.listdir(systemd.path)) == ["pid", "req"]
        assert "LISTEN_PID" not in log
    finally:
        for proc in (restoring, service):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        systemd.close()


def test_another_fd_than_the_fifo_is_refused(tmp_path: Path) -> None:
    systemd = FakeSystemd(f"/run/criu-macvlan/test-{unique('w')}")
    other = tmp_path / "other"
    os.mkfifo(other, 0o600)
    fd = os.open(other, os.O_RDWR | os.O_NONBLOCK)
    try:
        proc = systemd.start(fifo=fd)
        _, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 2
        assert err.splitlines() == [
            f"criu-macvlan: serve: systemd passed another file than the FIFO {systemd.path}/req of root's alone: "
            f"set ListenFIFO={systemd.path}/req and SocketMode=0600 in the socket unit (or --dir)"]
        assert Path(systemd.path, "pid").read_text() == "1\n"  # left to systemd as it was
    finally:
        os.close(fd)
        systemd.close()


def test_the_socket_unit_listens_where_the_shim_looks() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(EXAMPLES / "criu-macvlan.socket")
    sock = unit["Socket"]
    assert sock["ListenFIFO"] == f"{serve.SERVE_DIR}/req"
    assert (sock["SocketMode"], sock["DirectoryMode"]) == ("0600", "0700")
    assert f"echo 1 > {serve.SERVE_DIR}/pid" in sock["ExecStartPost"]


def test_the_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for name in ("criu-macvlan.socket", "criu-macvlan.service"):
        text = (EXAMPLES / name).read_text().replace("/usr/local/bin/criu-macvlan", str(CLI))
        (tmp_path / name).write_text(text)
    res = subprocess.run([analyze, "verify", str(tmp_path / "criu-macvlan.socket"),
                          str(tmp_path / "criu-macvlan.service")], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stderr
