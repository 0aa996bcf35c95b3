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
    assert set(data["paths"]) == {bench_runc.NOOP, bench_runc.COLD, bench_runc.SERVED}
    for ops in data["paths"].values():
        for op in ("checkpoint", "restore"):
            assert 0 < ops[op]["min"] <= ops[op]["median"] <= ops[op]["max"]
    assert [t["unit"] for t in data["targets"]] == ["ms", "x"]
    assert "| plugin, serve |" in (tmp_path / "runc.md").read_text()
    tag = bench_runc.TAG
    assert not {n for n in link_names() - before if tag in n}
    assert not Path(f"/run/criu-macvlan/bench-runc-{os.getpid()}").exists()  # serve stopped, its dir gone
