"""`pip install .` elsewhere gives users a working action script (not only the checkout's)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # from a copy: building writes into the source tree (egg-info), which a user other than its owner cannot
    src = tmp_path_factory.mktemp("src") / "criu-macvlan"
    for tree in ("criu_macvlan", "hooks"):
        shutil.copytree(REPO / tree, src / tree, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-build-isolation"]
    subprocess.run([*pip, str(src)], check=True, capture_output=True)
    return venv


def hook(venv: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CRTOOLS_", "CRIU_MACVLAN_"))}
    clean["PATH"] = "/usr/bin:/bin"  # as CRIU would run it: the venv is not on PATH
    return subprocess.run(
        [str(venv / "bin" / "criu-macvlan-action")], env=clean | env, capture_output=True, text=True, check=False
    )


def test_action_script_installed_next_to_the_interpreter(installed: Path) -> None:
    script = installed / "bin" / "criu-macvlan-action"
    assert os.access(script, os.X_OK)
    res = hook(installed)  # not run by criu: Python starts and says so in one line
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (
        "criu-macvlan-action: not run by criu (CRTOOLS_SCRIPT_ACTION is not set); use it as criu --action-script"
    )


def test_installed_hook_imports_the_installed_package(installed: Path, tmp_path: Path) -> None:
    """An action of the plugin runs with the venv's interpreter and package (not this checkout's)."""
    res = hook(installed, CRTOOLS_SCRIPT_ACTION="pre-restore", CRTOOLS_IMAGE_DIR=str(tmp_path))
    assert res.returncode == 0, res.stderr
    cache = installed / "share" / "criu-macvlan" / "handled-actions"
    assert "setup-namespaces" in cache.read_text().split()
    probe = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import criu_macvlan; print(criu_macvlan.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )
    assert str(installed) in probe.stdout
    assert sys.prefix != str(installed)


def test_hook_never_imports_from_its_working_directory(installed: Path, tmp_path: Path) -> None:
    """CRIU runs the hook in the images/work dir: a module planted there must not be imported."""
    planted = tmp_path / "criu_macvlan"
    planted.mkdir()
    (planted / "__init__.py").write_text("raise SystemExit(99)\n")
    (tmp_path / "pluggy.py").write_text("raise SystemExit(98)\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CRTOOLS_", "CRIU_MACVLAN_"))}
    res = subprocess.run(
        [str(installed / "bin" / "criu-macvlan-action")], env=clean | {"CRTOOLS_SCRIPT_ACTION": "pre-restore",
        "CRTOOLS_IMAGE_DIR": str(tmp_path)}, cwd=tmp_path, capture_output=True, text=True, check=False,
    )
    assert res.returncode == 0, res.stderr


def _apt_policy(*packages: str) -> str:
    try:
        return subprocess.run(["apt-cache", "policy", *packages], capture_output=True, text=True, check=True,
                              timeout=60, env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def installed_from(package: str, policy: str | None = None) -> tuple[str, list[str]]:
    """The installed version of ``package`` and the apt sources that offer exactly that version."""
    installed, current, sources = "", "", []
    for line in (_apt_policy(package) if policy is None else policy).splitlines():
        if line.strip().startswith("Installed:"):
            installed = line.split()[1]
        elif version := re.match(r"^ (?:\*\*\*| {3}) (\S+) -?\d+$", line):
            current = version.group(1)
        elif (source := re.match(r"^ {8}-?\d+ (.+)$", line)) and current == installed:
            sources.append(source.group(1))
    return installed, sources


def test_setup_kept_bookworms_python_on_a_debian_12_host() -> None:
    """On a host whose main release is bookworm, make setup takes criu from trixie but leaves python3 alone.

    (A Debian 13 host uses its own criu: nothing comes from another release there.)
    """
    if not re.search(r"[ ,]n=bookworm,", _apt_policy()):
        pytest.skip("not a Debian 12 host (apt has no bookworm release)")
    version, sources = installed_from("python3")
    assert any(" bookworm/" in s for s in sources), f"python3 {version} is not bookworm's: {sources}"
    assert version.startswith("3.11"), version
    out = subprocess.run(["/usr/bin/python3", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("Python 3.11."), out
    protobuf, sources = installed_from("python3-protobuf")
    if protobuf and protobuf != "(none)":
        assert any(" bookworm/" in s for s in sources), f"python3-protobuf {protobuf} is not bookworm's: {sources}"


def test_a_moved_python_is_seen() -> None:
    """What the check above saw on a Debian 12 host before make setup kept its Python: trixie's 3.13."""
    moved = (
        "python3:\n"
        "  Installed: 3.13.5-1\n"
        "  Candidate: 3.13.5-1\n"
        "  Version table:\n"
        " *** 3.13.5-1 100\n"
        "        100 http://deb.debian.org/debian trixie/main amd64 Packages\n"
        "        100 /var/lib/dpkg/status\n"
        "     3.11.2-1+b1 500\n"
        "        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n"
    )
    version, sources = installed_from("python3", moved)
    assert version == "3.13.5-1"
    assert not any(" bookworm/" in s for s in sources)
