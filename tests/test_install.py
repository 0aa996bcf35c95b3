"""`pip install .` elsewhere gives users a working action script (not only the checkout's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-build-isolation"]
    subprocess.run([*pip, str(REPO)], check=True, capture_output=True)
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
