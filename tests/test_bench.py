"""The benchmark harness in its smallest mode (N=1, one run): outputs exist and are well-formed.

No timing assertions: speed is judged by ``make bench``, never by a test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from helpers import REPO, link_names

pytestmark = pytest.mark.integration

sys.path.insert(0, str(REPO))


def test_smallest_run_writes_md_json_png(tmp_path: Path) -> None:
    from benchmarks import bench

    out = tmp_path / "results"
    assert bench.main(["--smallest", "-o", str(out)]) == 0

    data = json.loads((out / "latest.json").read_text())
    assert {"date", "machine", "config", "targets", "rows", "hooks", "samples"} <= set(data)
    assert {"nproc", "kernel", "cpu", "criu"} <= set(data["machine"])
    assert data["config"]["ns"] == [1] and data["config"]["runs"] == 1
    paths = {(r["group"], r["path"], r["op"]) for r in data["rows"]}
    for op in ("dump", "restore"):
        assert ("cmdline", "criu (native)", op) in paths
        assert ("cmdline", "criu --action-script", op) in paths
        assert ("inproc", "pycriu (native)", op) in paths
    for row in data["rows"]:
        assert row["n"] == 1 and row["runs"] == 1
        assert 0 < row["min"] <= row["median"] <= row["max"]
        if "(native" in row["path"]:
            assert row["ratio"] == pytest.approx(1.0)
    frozen = {(r["path"], r["op"]) for r in data["rows"] if r["op"].endswith(bench.FROZEN)}
    for path in ("criu (native)", "criu --action-script", bench.SERVED):  # from CRIU's -v3 log
        assert {(path, "dump" + bench.FROZEN), (path, "restore" + bench.FROZEN)} <= frozen
    [memory] = data["helper_memory"]  # serve's peak RSS and its largest child's, from its exit line
    assert memory["path"] == bench.SERVED and memory["own"] > 0 and memory["child"] > 0
    assert "| frozen ms | helper peak RSS MiB |" in (out / "latest.md").read_text()
    actions = {h["action"] for h in data["hooks"]}
    assert {"pre-dump", "post-dump", "setup-namespaces"} <= actions
    assert any(a.startswith("unhandled") for a in actions)
    for target in data["targets"]:
        assert target["met"] in (True, False, None)
        assert (target["met"] is None) == (target["value"] is None)
        if target["unit"] == "x native" and target["met"] is not None and "downtime" not in target["target"]:
            # judged from the samples: one run, so every resample of it decides the same
            assert target["met_share"] == float(target["met"])
    bounds = {b["bound"]: b["value"] for b in data["bounds"]}
    assert set(bounds) == {"cold action script restore, N=1", "CLI restore, N=1",
                           "any action script restore, N=1", "any action script dump, N=1"}
    assert bounds["any action script restore, N=1"] >= 1  # never under native (one run: noise may measure so)
    targets = {t["target"]: t for t in data["targets"]}
    for op, margin in (("restore", 1.1), ("dump", 1.2)):  # the serve targets are held against that bound
        served = targets[f"action script {op}, N=1 (criu-macvlan serve running)"]
        assert served["limit"] == round(margin * bounds[f"any action script {op}, N=1"], 3)
    # native CRIU, its script starting Python cold (that the script imports is tested with bench-runc's);
    # never under native, as one run of each may measure so
    assert bounds["cold action script restore, N=1"] >= 1
    cold = targets["action script restore, N=1 (cold)"]  # held against that bound, measured in place
    assert cold["limit"] == round(1.05 * bounds["cold action script restore, N=1"], 3)
    assert bench.COLD_START in {r["path"] for r in data["rows"]}
    # the CLI's bound: the cold imports timed apart, less CRIU's time to its first notification (the CLI loads
    # meanwhile); never over the imports alone. Not compared with the in-place bound: one run each, apart.
    native, floor = (bench.median_of(data["samples"], "cmdline", p, "restore", 1)
                     for p in ("criu (native)", bench.COLD_FLOOR))
    assert native and floor
    assert 1 <= bounds["CLI restore, N=1"] <= max(1.0, floor / native)

    md = (out / "latest.md").read_text()
    assert md.startswith("# criu-macvlan vs native CRIU")
    assert "## Targets" in md and "## Bounds" in md and "## Hooks alone" in md and "## Downtime" in md
    downtime = data["downtime"]
    assert downtime["runs"] == 1 and {p: len(v) for p, v in downtime["samples"].items()} == {
        "rpc": 1, "cli": 1, "native": 1}
    assert all(ms > 0 for runs in downtime["samples"].values() for ms, _, _ in runs)
    assert "client-observed downtime over RPC (the demo's migration)" in {t["target"] for t in data["targets"]}
    assert data["machine"]["kernel"] in md

    ours = f"bm{os.getpid() % 100000:05d}"  # the harness's veth names (bench.Lab.name)
    assert not [name for name in link_names() if name.startswith(ours)]

    if importlib.util.find_spec("matplotlib") is not None:  # the plot needs the [bench] extra
        png = (out / "latest.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
