"""What people read (escaped, one line, right hints, quiet on a closed pipe) and the shared actions cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ACTION_SCRIPT, CRIU, REPO, Net, Procs, alive, criu, read_line
from sidecars import encoded, full_head, full_link

from criu_macvlan import cli, manager

CLI = Path(sys.executable).with_name("criu-macvlan")
NO_SERVE = {"CRIU_MACVLAN_SERVE_DIR": "/nonexistent/criu-macvlan-serve"}


def hostile_images(d: Path) -> Path:
    head = full_head()
    head.hostname = "\x1b]0;pwned\x07host"
    link = full_link(1)
    link.name = "a\x1b[31mb"
    d.mkdir(exist_ok=True)
    (d / "macvlan.img").write_bytes(encoded([full_link(0), link], head))
    return d


def run_cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60, check=False, **kw)  # type: ignore[call-overload,no-any-return]


def test_show_and_check_escape_what_the_images_say(tmp_path: Path) -> None:
    d = hostile_images(tmp_path / "img")
    res = run_cli("show", str(d))
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout
    assert "dumped on \\x1b]0;pwned\\x07host " in res.stdout
    assert "\na\\x1b[31mb " in res.stdout
    res = run_cli("check", str(d))
    assert res.returncode == 6
    assert "\x1b" not in res.stderr and "a\\x1b[31mb: no parent given" in res.stderr


def test_errors_with_names_from_images_are_escaped_and_one_line(tmp_path: Path) -> None:
    from criu_macvlan.errors import printable

    assert printable("e\u2003x\n\x00") == "e\\u2003x\\n\\x00"
    assert printable("mv0 plain: ok") == "mv0 plain: ok"
    d = tmp_path / "img"
    d.mkdir()
    (d / "macvlan.img").write_bytes(b"\x1b]0;x\x07" * 4)
    res = run_cli("show", str(d))
    assert res.returncode == 3 and len(res.stderr.splitlines()) == 1 and "\x1b" not in res.stderr


def test_show_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`criu-macvlan show DIR | head`: the reader is gone before we write."""
    d = tmp_path / "img"
    d.mkdir()
    (d / "macvlan.img").write_bytes(encoded([full_link(i) for i in range(64)]))
    r, w = os.pipe()
    os.close(r)
    try:
        res = subprocess.run([str(CLI), "show", str(d)], stdout=w, stderr=subprocess.PIPE, text=True, timeout=60,
                             check=False)
    finally:
        os.close(w)
    assert res.stderr == ""
    assert res.returncode == 128 + signal.SIGPIPE
    shell = subprocess.run(["sh", "-c", '"$0" show "$1" | head -n 1', str(CLI), str(d)], capture_output=True,
                           text=True, timeout=60, check=False)
    assert shell.stdout.startswith("macvlan.img v1: 64 link(s)") and shell.stderr == ""


def test_no_command_is_one_line_with_one_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert capsys.readouterr().err == "criu-macvlan: a command is required (see criu-macvlan --help)\n"


def test_pycriu_hint_in_a_venv_without_system_site_packages(tmp_path: Path) -> None:
    """Debian's pycriu is a system package: a venv that does not see those gets told so."""
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    protobuf = tmp_path / "protobuf-only"
    protobuf.mkdir()
    import google.protobuf

    (protobuf / "google").symlink_to(Path(google.protobuf.__file__).parents[1])
    import pluggy
    import pyroute2

    paths = {str(REPO), str(protobuf), str(Path(pyroute2.__file__).parents[1]), str(Path(pluggy.__file__).parents[1])}
    assert "/usr/lib/python3/dist-packages" not in paths
    (site / "deps.pth").write_text("\n".join(sorted(paths)) + "\n")
    res = subprocess.run([str(venv / "bin" / "python"), "-m", "criu_macvlan.cli", "restore", "-D", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert res.returncode == 5, res.stderr
    assert res.stderr.splitlines() == [
        f"criu-macvlan: pycriu is not importable by {venv}/bin/python (Debian: apt-get install python3-pycriu; "
        f"the venv {venv} must see the system's packages: make it with --system-site-packages (or set "
        "include-system-site-packages = true in its pyvenv.cfg))"]


@pytest.fixture
def actions_cache() -> Iterator[Path]:
    """The installation's handled-actions cache, as the action script reads it; put back afterwards."""
    path = Path(manager.actions_cache_path())
    saved = path.read_bytes() if path.exists() else None
    try:
        assert run_cli("plugins").returncode == 0  # written in full
        yield path
    finally:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)


def hook(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CRTOOLS_", "CRIU_MACVLAN_"))}
    return subprocess.run([str(ACTION_SCRIPT)], env={**base, **NO_SERVE, **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.integration
def test_disabled_plugins_never_write_the_shared_cache(actions_cache: Path, tmp_path: Path) -> None:
    full = actions_cache.read_text()
    assert "setup-namespaces" in full.split()
    assert run_cli("--disable", "macvlan", "plugins").stdout.splitlines()[-1] == "handled actions: -"
    assert actions_cache.read_text() == full
    res = hook({"CRTOOLS_SCRIPT_ACTION": "setup-namespaces", "CRTOOLS_IMAGE_DIR": str(tmp_path),
                "CRIU_MACVLAN_DISABLE": "macvlan"}, tmp_path)
    assert res.returncode == 0, res.stderr
    assert actions_cache.read_text() == full


@pytest.mark.integration
def test_the_shim_does_not_glob_the_handled_actions(actions_cache: Path, tmp_path: Path) -> None:
    """CRIU runs the script in the images dir: a file there must not replace a word of the cache."""
    assert "network-unlock?.criu-macvlan.staged" in actions_cache.read_text().split()
    images = tmp_path / "img"
    images.mkdir()
    (images / "network-unlockX.criu-macvlan.staged").write_text("a file that matches the word as a glob\n")
    (images / ".criu-macvlan.staged").write_bytes(b"a stage a failed dump left\n")
    res = hook({"CRTOOLS_SCRIPT_ACTION": "network-unlock", "CRTOOLS_IMAGE_DIR": str(images),
                "CRIU_MACVLAN_DEBUG": "1"}, images)
    assert res.returncode == 0, res.stderr
    assert not (images / ".criu-macvlan.staged").exists()
    assert "dropped the staged macvlan state" in res.stderr


@pytest.mark.integration
def test_action_errors_outside_a_hook_name_the_action(tmp_path: Path) -> None:
    conf = tmp_path / "criu-macvlan.conf"
    conf.write_text("external macvlan[mv0:eth0\n")
    res = hook({"CRTOOLS_SCRIPT_ACTION": "setup-namespaces", "CRTOOLS_IMAGE_DIR": str(tmp_path),
                "CRIU_MACVLAN_CONFIG": str(conf)}, tmp_path)
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("criu-macvlan-action: setup-namespaces: "), res.stderr
    assert "bad mapping 'macvlan[mv0:eth0'" in lines[0]


@pytest.mark.integration
def test_cli_restore_hint_status_and_pidfile(net: Net, procs: Procs, images: Path, tmp_path: Path) -> None:
    """No mapping: the hint names the CLI's option. Restored tree SIGKILLed: 137. --pidfile: never followed."""
    a, b = net.veth("oa"), net.veth("ob")
    pid = procs.tree()
    net.macvlan_into(pid, "mvo", a, "mode", "bridge")
    criu("dump", "-t", str(pid), "--action-script", str(ACTION_SCRIPT), images=images, log="dump.log",
         env={**os.environ, **NO_SERVE})
    res = run_cli("--criu", CRIU, "restore", "-D", str(images), "-d", "-o", "restore.log")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "criu-macvlan: setup-namespaces: no parent given for macvlan[mvo]:OUT: add --macvlan mvo:OUT "
        "(criu-macvlan restore; in Python, mappings={IN: OUT})"]

    victim = tmp_path / "victim"
    victim.write_text("root's own\n")
    pidfile = tmp_path / "restored.pid"
    pidfile.symlink_to(victim)
    restoring = subprocess.Popen([str(CLI), "--criu", CRIU, "restore", "-D", str(images), "-o", "restore2.log",
                                  "--macvlan", f"mvo:{b}", "--pidfile", str(pidfile)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = read_line(restoring.stdout)
        assert line.strip().isdigit(), restoring.stderr.read() if restoring.stderr else ""
        new = procs.adopt(int(line))
        assert alive(new)
        assert victim.read_text() == "root's own\n"
        assert not pidfile.is_symlink() and pidfile.read_text() == f"{new}\n"
        os.kill(new, signal.SIGKILL)
        assert restoring.wait(timeout=60) == 128 + signal.SIGKILL
    finally:
        if restoring.poll() is None:
            restoring.kill()
            restoring.wait()
