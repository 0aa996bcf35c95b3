"""benchmarks/bench_runc.py in its smallest mode (one run per path): it runs, its outputs are well-formed,
it leaves nothing behind. No timing assertions: speed is judged by ``make bench``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from helpers import REPO, link_names

pytestmark = pytest.mark.integration

sys.path.insert(0, str(REPO))


def test_one_run_per_path(tmp_path: Path) -> None:
    from benchmarks import bench_runc

    if not os.path.exists(bench_runc.RUNC) or not os.path.exists(bench_runc.BUSYBOX):
        pytest.skip("needs runc and busybox-static (make setup)")
    before = link_names()
    assert bench_runc.main(["--runs", "1", "--no-warmup", "-o", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "runc.json").read_text())
    assert set(data["paths"]) == {bench_runc.NOOP, bench_runc.BOUND, bench_runc.COLD, bench_runc.SERVED}
    for ops in data["paths"].values():
        for op in ("checkpoint", "restore"):
            assert 0 < ops[op]["min"] <= ops[op]["median"] <= ops[op]["max"]
    assert [t["unit"] for t in data["targets"]] == ["x", "x"]
    assert [t["met_share"] for t in data["targets"]] == [float(t["ok"]) for t in data["targets"]]  # one round
    assert {len(ops["restore"]) for ops in data["samples"].values()} == {1}
    assert "| no-op, a cold start |" in (tmp_path / "runc.md").read_text()
    assert "| plugin, serve |" in (tmp_path / "runc.md").read_text()
    tag = bench_runc.TAG
    assert not {n for n in link_names() - before if tag in n}
    assert not Path(f"/run/criu-macvlan/bench-runc-{os.getpid()}").exists()  # serve stopped, its dir gone


def test_the_bounds_script_starts_python_once_per_criu_at_setup_namespaces(tmp_path: Path) -> None:
    import subprocess

    from benchmarks import bench_runc

    script = bench_runc.cold_start_script(tmp_path)
    mark = tmp_path / f"started.{os.getpid()}"  # we are the script's parent, as CRIU is
    for action in ("pre-restore", "setup-namespaces", "setup-namespaces"):
        res = subprocess.run([str(script)], env={**os.environ, "CRTOOLS_SCRIPT_ACTION": action}, check=False)
        assert res.returncode == 0
        assert mark.exists() == (action == "setup-namespaces")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cold-start.sh", "cold_imports.py", mark.name]
