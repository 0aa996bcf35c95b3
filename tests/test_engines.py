"""Which config file runc or crun handed CRIU: the engine's order and its annotation (no root needed).

crun cannot run on this host (hybrid cgroups; Debian 12's crun has no CRIU), so crun's
lookup is covered here only; runc's is also driven for real in test_runc_conf.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from criu_macvlan import criuconf, engines
from criu_macvlan.engines import Engine
from criu_macvlan.errors import ExitCode, UsageError


@pytest.fixture
def etc(confdir: Path) -> Path:
    """The directory the well-known config paths point into (see ``confdir``)."""
    return confdir / "etc"


def bundle(tmp_path: Path, annotations: dict[str, str] | None, name: str = "bundle") -> Path:
    b = tmp_path / name
    b.mkdir()
    config: dict[str, object] = {"ociVersion": "1.0.2"}
    if annotations is not None:
        config["annotations"] = annotations
    (b / "config.json").write_text(json.dumps(config))
    return b


def runc_state(root: Path, cid: str, labels: list[str]) -> Path:
    (root / cid).mkdir(parents=True)
    path = root / cid / "state.json"
    path.write_text(json.dumps({"id": cid, "config": {"labels": labels}}))
    return path


def runc(root: Path, cwd: Path, command: str = "checkpoint", cid: str = "c1") -> Engine:
    return Engine("runc", 1, ["runc", "--root", str(root), command, "--image-path", "/img", cid], str(cwd))


# ------------------------------------------------------------------- runc


def test_runc_checkpoint_reads_the_annotation_from_state(tmp_path: Path, etc: Path) -> None:
    conf = tmp_path / "ctr.conf"
    conf.write_text("")
    root = tmp_path / "state"
    runc_state(root, "c1", ["bundle=/x", f"org.criu.config={conf}"])
    assert engines.engine_configs(runc(root, tmp_path)) == [(str(conf), True)]


def test_runc_checkpoint_without_annotation_is_runc_conf(tmp_path: Path, etc: Path) -> None:
    root = tmp_path / "state"
    runc_state(root, "c1", ["bundle=/x"])
    assert engines.engine_configs(runc(root, tmp_path)) == [(engines.RUNC_CONFIG, False)]


def test_runc_empty_annotation_names_no_file(tmp_path: Path, etc: Path) -> None:
    root = tmp_path / "state"
    runc_state(root, "c1", ["org.criu.config="])
    (etc / "runc.conf").write_text("external macvlan[a]:b\n")  # runc does not pass it then
    assert engines.engine_configs(runc(root, tmp_path)) == []


def test_runc_restore_reads_the_bundle_it_moved_into(tmp_path: Path, etc: Path) -> None:
    conf = tmp_path / "ctr.conf"
    conf.write_text("")
    b = bundle(tmp_path, {"org.criu.config": str(conf)})
    engine = runc(tmp_path / "state", b, command="restore")  # no state.json yet
    assert engines.engine_configs(engine) == [(str(conf), True)]
    b2 = bundle(tmp_path, {"other": "x"}, name="b2")
    assert engines.engine_configs(runc(tmp_path / "state", b2, "restore")) == [(engines.RUNC_CONFIG, False)]


def test_runc_root_option_forms(tmp_path: Path, etc: Path) -> None:
    conf = tmp_path / "ctr.conf"
    conf.write_text("")
    runc_state(tmp_path / "r", "c9", [f"org.criu.config={conf}"])
    engine = Engine("runc", 1, ["runc", f"--root={tmp_path / 'r'}", "--debug", "checkpoint", "c9"], "/")
    assert engines.engine_configs(engine) == [(str(conf), True)]
    engine = Engine("runc", 1, ["runc", "--log", "/l", "--root", str(tmp_path / "r"), "checkpoint", "c9"], "/")
    assert engines.engine_configs(engine) == [(str(conf), True)]
    # a relative --root is runc's start directory's (runc has not moved at checkpoint)
    engine = Engine("runc", 1, ["runc", "--root", "r", "checkpoint", "c9"], str(tmp_path))
    assert engines.engine_configs(engine) == [(str(conf), True)]


def test_relative_annotation_is_the_engines_directory(tmp_path: Path, etc: Path) -> None:
    b = bundle(tmp_path, {"org.criu.config": "criu.conf"})
    (b / "criu.conf").write_text("")
    assert engines.engine_configs(runc(tmp_path / "s", b, "restore")) == [(str(b / "criu.conf"), True)]


# ---------------------------------------------------------------- bad input


def test_annotation_naming_a_missing_file(tmp_path: Path, etc: Path) -> None:
    root = tmp_path / "state"
    state = runc_state(root, "c1", [f"org.criu.config={tmp_path}/nope.conf"])
    with pytest.raises(UsageError) as info:
        engines.engine_configs(runc(root, tmp_path))
    assert str(info.value) == f"org.criu.config in {state} names {tmp_path}/nope.conf, which does not exist"
    assert info.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("content", ["{not json", "\xff\xfe", "[1, 2]", '{"annotations": [1]}'])
def test_config_json_that_is_not_json(tmp_path: Path, etc: Path, content: str) -> None:
    b = tmp_path / "b"
    b.mkdir()
    (b / "config.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(UsageError, match=f"^{b}/config.json[ :]"):
        engines.engine_configs(runc(tmp_path / "s", b, "restore"))


def test_state_that_is_not_json(tmp_path: Path, etc: Path) -> None:
    (tmp_path / "s" / "c1").mkdir(parents=True)
    (tmp_path / "s" / "c1" / "state.json").write_text("{")
    with pytest.raises(UsageError, match=f"^{tmp_path}/s/c1/state.json is not JSON"):
        engines.engine_configs(runc(tmp_path / "s", tmp_path))


def test_engine_file_missing_or_unreadable_when_required(tmp_path: Path) -> None:
    opts = criuconf.CriuOptions()
    with pytest.raises(UsageError, match=f"^CRIU config file {tmp_path}/gone.conf does not exist$"):
        criuconf._read_config(str(tmp_path / "gone.conf"), opts, required=True)
    with pytest.raises(UsageError, match=f"^cannot read CRIU config file {tmp_path}: Is a directory$"):
        criuconf._read_config(str(tmp_path), opts, required=True)
    criuconf._read_config(str(tmp_path / "gone.conf"), opts)  # runc.conf may be absent: runc names it anyway
    assert opts.sources == []


# ------------------------------------------------------------------- crun


def crun(root: Path, cwd: Path, *args: str) -> Engine:
    return Engine("crun", 1, ["crun", "--root", str(root), *args], str(cwd))


def crun_status(root: Path, cid: str, bundle_dir: Path) -> None:
    (root / cid).mkdir(parents=True)
    (root / cid / "status").write_text(json.dumps({"pid": 1, "bundle": str(bundle_dir), "rootfs": "/r"}))


def test_crun_order_annotation_then_crun_conf_then_runc_conf(tmp_path: Path, etc: Path) -> None:
    conf = tmp_path / "ctr.conf"
    conf.write_text("")
    b = bundle(tmp_path, {"org.criu.config": str(conf)})
    root = tmp_path / "run"
    crun_status(root, "c1", b)
    (etc / "crun.conf").write_text("")
    assert engines.engine_configs(crun(root, tmp_path, "checkpoint", "c1")) == [(str(conf), True)]
    b2 = bundle(tmp_path, {}, name="b2")
    crun_status(root, "c2", b2)
    assert engines.engine_configs(crun(root, tmp_path, "checkpoint", "c2")) == [(engines.CRUN_CONFIG, True)]
    (etc / "crun.conf").unlink()
    assert engines.engine_configs(crun(root, tmp_path, "checkpoint", "c2")) == [(engines.RUNC_CONFIG, False)]


def test_crun_restore_finds_the_bundle_from_its_option(tmp_path: Path, etc: Path) -> None:
    conf = tmp_path / "ctr.conf"
    conf.write_text("")
    b = bundle(tmp_path, {"org.criu.config": str(conf)})
    forms = (("--bundle", "bundle"), ("-b", str(b)), ("--bundle=bundle",))
    for form in forms:
        args = ("restore", *form, "c1")
        assert engines.engine_configs(crun(tmp_path / "run", tmp_path, *args)) == [(str(conf), True)], args
    assert engines.engine_configs(crun(tmp_path / "run", b, "restore", "c1")) == [(str(conf), True)]  # cwd


def test_crun_prefers_its_own_copy_of_config_json(tmp_path: Path, etc: Path) -> None:
    conf = tmp_path / "ctr.conf"
    conf.write_text("")
    root = tmp_path / "run"
    crun_status(root, "c1", bundle(tmp_path, {"org.criu.config": "/changed/since"}))
    (root / "c1" / "config.json").write_text(json.dumps({"annotations": {"org.criu.config": str(conf)}}))
    assert engines.engine_configs(crun(root, tmp_path, "checkpoint", "c1")) == [(str(conf), True)]


def test_crun_empty_annotation_names_no_file(tmp_path: Path, etc: Path) -> None:
    b = bundle(tmp_path, {"org.criu.config": ""})
    (etc / "crun.conf").write_text("")
    assert engines.engine_configs(crun(tmp_path / "run", b, "restore", "c1")) == []


# --------------------------------------------------------- other engines


def test_unknown_parent_reads_runc_conf(etc: Path) -> None:
    assert engines.engine_configs(None) == [(engines.RUNC_CONFIG, False)]
    assert engines.engine_configs(Engine("python3", 1, ["python3"], "/")) == [(engines.RUNC_CONFIG, False)]


def test_engine_of_a_real_process(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "100"], cwd=tmp_path)
    try:
        engine = engines.engine_of(child.pid)
        assert engine is not None
        assert engine.pid == os.getpid()
        assert engine.argv[0] == sys.argv[0] or "python" in engine.argv[0] or "pytest" in engine.argv[0]
        assert engine.cwd == os.getcwd()
    finally:
        child.kill()
        child.wait()
    assert engines.engine_of(2**22 + 1) is None


# ------------------------------------------- the action script, end to end

FAKE_CRIU = """
import os, subprocess, sys
images = sys.argv[1]
fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
env = {"PATH": os.environ["PATH"], "CRTOOLS_SCRIPT_ACTION": "setup-namespaces",
       "CRTOOLS_IMAGE_DIR": f"/proc/{os.getpid()}/fd/{fd}", "CRIU_MACVLAN_ACTIONS": "setup-namespaces",
       "CRIU_MACVLAN_SERVE_DIR": images + "/no-serve"}
res = subprocess.run([sys.argv[2]], env=env, cwd=images, capture_output=True, text=True, timeout=60)
sys.stderr.write(res.stderr)
sys.exit(res.returncode)
"""


def run_under_fake_runc(tmp_path: Path, bundle_dir: Path) -> subprocess.CompletedProcess[str]:
    """The action script under a criu whose title says RPC restore and whose parent is called runc.

    A real runc parses config.json before it starts CRIU, so it cannot hand CRIU a broken
    one; this stands in for a file that changed under it. Only process names and files are fake.
    """
    from helpers import ACTION_SCRIPT

    images = tmp_path / "images"
    images.mkdir()
    (images / "macvlan.img").write_bytes(b"")
    fake = tmp_path / "bin" / "runc"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/bash\ncd "$BUNDLE" || exit 99\n'
        '(exec -a "criu: restore --rpc -D $IMAGES" "$PY" -c "$CODE" "$IMAGES" "$HOOK")\n'
    )
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "BUNDLE": str(bundle_dir), "IMAGES": str(images), "PY": sys.executable,
           "CODE": FAKE_CRIU, "HOOK": str(ACTION_SCRIPT)}
    cmd = [str(fake), "--root", str(tmp_path / "state"), "restore", "-b", str(bundle_dir), "c1"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{oops", "{bundle}/config.json is not JSON ("),
        (json.dumps({"annotations": {"org.criu.config": "/nonexistent/criu.conf"}}),
         "org.criu.config in {bundle}/config.json names /nonexistent/criu.conf, which does not exist"),
    ],
    ids=["not-json", "missing-file"],
)
def test_action_script_bad_engine_input(tmp_path: Path, config: str, message: str) -> None:
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "config.json").write_text(config)
    res = run_under_fake_runc(tmp_path, b)
    assert res.returncode == ExitCode.USAGE, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("criu-macvlan-action: setup-namespaces: " + message.format(bundle=b)), lines
    # nothing made, nothing left
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["macvlan.img"]
    assert sorted(p.name for p in b.iterdir()) == ["config.json"]
