"""``python -m demo`` (``make demo``) end to end, as root, with the real criu: success, failure, interruption."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, alive, link_names, run

pytestmark = pytest.mark.integration


def netns_names() -> set[str]:
    return set(run("ip", "netns", "list").stdout.split())


def demo(*args: str, report: Path) -> tuple[int, list[str], dict[str, Any]]:
    res = subprocess.run(
        [sys.executable, "-m", "demo", *args, "--report", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    lines = res.stdout.splitlines()
    assert res.stderr == "", res.stderr
    return res.returncode, lines, json.loads(report.read_text())


def assert_nothing_left(data: dict[str, Any], netns_before: set[str]) -> None:
    left = link_names()
    assert data["nic_a"] not in left and data["nic_b"] not in left
    assert netns_names() == netns_before
    assert data["pids"], "the demo reported no pid"
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in data["pids"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in data["pids"] if alive(pid)]
    assert data["workdir"] and not Path(data["workdir"]).exists()


@pytest.mark.parametrize("path", ["cli", "rpc"])
def test_demo_migrates_the_connection(path: str, tmp_path: Path) -> None:
    netns_before = netns_names()
    rc, lines, data = demo("--path", path, report=tmp_path / "report.json")
    assert rc == 0, "\n".join(lines)
    assert lines[-1].startswith("demo: SUCCESS: "), lines[-1]
    assert not [line for line in lines[:-1] if line.startswith("demo: SUCCESS") or "FAILED" in line]
    assert data["error"] == "" and data["path"] == path
    # the plugin announced the MAC (the demo has no frame code of its own): the switch moved it
    assert any("FDB moved 02:c0:ff:ee:00:02 from port-a to port-b: criu-macvlan announced it" in line
               for line in lines)
    assert not [f for f in (REPO / "demo").glob("*.py") if "AF_PACKET" in f.read_text()]

    # The conversation, as the client saw it: 1..N in order, the service's state intact.
    replies = data["replies"]
    numbers = [r[0] for r in replies]
    assert numbers == list(range(1, len(replies) + 1))
    assert all(count == n and total == n * (n + 1) // 2 for n, count, total, _, _ in replies)
    # ... across the migration: messages before the checkpoint and after the restore.
    cut = data["migrated_after"]
    assert 0 < cut < len(replies) - 10
    gaps = [received - sent for _, _, _, sent, received in replies]
    longest = max(range(len(gaps)), key=gaps.__getitem__)
    assert longest >= cut, "the longest wait must be the migration's"
    assert gaps[longest] * 1000 == pytest.approx(data["downtime_ms"], abs=0.2)
    assert data["dump_ms"] > 0 and data["restore_ms"] > 0 and data["freeze_ms"] > 0
    assert f"{len(replies)} messages, 0 lost, 0 repeated" in lines[-1]

    # Two pids: the original service (gone since the dump) and the restored one (exited with the client).
    assert len(data["pids"]) == 2 and data["pids"][0] != data["pids"][1]
    assert_nothing_left(data, netns_before)


def test_demo_failure_cleans_up(tmp_path: Path) -> None:
    """A criu that fails: one FAILED line, exit 1, nothing left behind."""
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho 'Version: 9.9' ; exit 1\n")
    fake.chmod(0o755)
    netns_before = netns_names()
    rc, lines, data = demo("--path", "cli", "--criu", str(fake), report=tmp_path / "report.json")
    assert rc == 1
    assert lines[-1].startswith("demo: FAILED: criu dump failed (exit 1)"), lines[-1]
    assert_nothing_left(data, netns_before)


@pytest.mark.parametrize(("path", "sig", "after"), [("cli", signal.SIGINT, "[3/6]"), ("rpc", signal.SIGTERM, "[4/6]")])
def test_demo_interrupted_cleans_up(path: str, sig: signal.Signals, after: str, tmp_path: Path) -> None:
    netns_before = netns_names()
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo", "--path", path, "--report", str(report)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while not any(line.startswith(after) for line in seen):
            assert time.monotonic() < deadline and proc.poll() is None, seen
            if select.select([proc.stdout], [], [], 1)[0]:
                seen.append(proc.stdout.readline())
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = (("".join(seen)) + out).splitlines()
    assert proc.returncode == 1, lines
    assert lines[-1] == f"demo: FAILED: interrupted by {sig.name}", lines
    assert err == ""
    assert_nothing_left(json.loads(report.read_text()), netns_before)


def test_demo_compare_runs_every_path_side_by_side(tmp_path: Path) -> None:
    netns_before = netns_names()
    rc, lines, data = demo("--compare", "1", report=tmp_path / "compare.json")
    assert rc == 0, "\n".join(lines)
    assert lines[-1].startswith("demo: SUCCESS: criu-macvlan over RPC: "), lines[-1]
    assert data["error"] == "" and set(data["runs"]) == {"rpc", "cli", "native"}
    for path, runs in data["runs"].items():
        assert len(runs) == 1 and runs[0]["path"] == path and runs[0]["error"] == ""
        assert runs[0]["downtime_ms"] > 0 and runs[0]["freeze_ms"] > 0
        assert runs[0]["ifindex"] >= 20000  # free on the host: native CRIU can restore it
        assert_nothing_left(runs[0], netns_before)
    summary = data["summary"]
    assert summary["rpc_downtime_ratio"] == pytest.approx(summary["rpc_downtime_ms"] / summary["native_downtime_ms"])
