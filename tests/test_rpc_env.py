"""``rpc.Criu(env=...)``: the environment of the ``criu swrk`` it starts, without touching ``os.environ``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from criu_macvlan.errors import CriuError
from criu_macvlan.rpc import Criu

SHELL_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}  # what sh sets itself


def fake_criu(tmp_path: Path) -> tuple[str, Path]:
    """A ``criu`` that writes its environment to a file and exits without answering."""
    out = tmp_path / "env.out"
    script = tmp_path / "criu"
    script.write_text(f"#!/bin/sh\nenv > {out}\n")
    script.chmod(0o755)
    return str(script), out


def test_env_is_criu_swrks_environment(tmp_path: Path) -> None:
    path, out = fake_criu(tmp_path)
    before = dict(os.environ)
    with pytest.raises(CriuError, match="criu closed the connection"):
        Criu(path, env={"CRIU_MACVLAN_TEST_MARK": "given", "PATH": "/usr/bin:/bin"}).version()
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert seen["CRIU_MACVLAN_TEST_MARK"] == "given"
    assert set(seen) - SHELL_OWN == {"CRIU_MACVLAN_TEST_MARK", "PATH"}  # nothing of ours
    assert dict(os.environ) == before


def test_without_env_criu_swrk_inherits_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, out = fake_criu(tmp_path)
    monkeypatch.setenv("CRIU_MACVLAN_TEST_MARK", "inherited")
    with pytest.raises(CriuError, match="criu closed the connection"):
        Criu(path).version()
    assert "CRIU_MACVLAN_TEST_MARK=inherited" in out.read_text().splitlines()
