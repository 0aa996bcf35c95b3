"""Time a restore of a tree with N macvlans: RPC driver (hooks in-process) vs criu + action script.

    sudo .venv/bin/python benchmarks/bench_rpc_restore.py [N_LINKS] [ROUNDS]

Sets up its own uniquely named veth parents and trees, removes them at the end.
KEEP=1 keeps the images (CRIU's logs) for a look. Prints the median and min wall
time of each restore, and of the hooks' part of the RPC restore (time spent
between NOTIFY and answer).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from criu_macvlan.rpc import Criu
from devtools import tree

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "hooks" / "criu-macvlan-action")
CRIU = shutil.which("criu") or "/usr/sbin/criu"
TAG = f"{os.getpid() % 10000:04d}"


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def start_tree(parents: list[str], n: int) -> int:
    _, pid = tree.start_tree("sleep", "100000")
    for i in range(n):
        tmp = f"bt{TAG}{i:03d}"
        sh("ip", "link", "add", tmp, "link", parents[i % len(parents)], "type", "macvlan", "mode", "bridge")
        sh("ip", "link", "set", tmp, "netns", str(pid))
        sh("nsenter", "-t", str(pid), "-n", "ip", "link", "set", tmp, "name", f"mv{i}", "up")
        sh("nsenter", "-t", str(pid), "-n", "ip", "addr", "add", f"10.250.{i}.2/24", "dev", f"mv{i}")
    return pid


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Timed(Criu):
    hook_time = 0.0

    def on_notify(self, request, action, pid):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return super().on_notify(request, action, pid)
        finally:
            self.hook_time += time.perf_counter() - t


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    srcs = [f"bs{TAG}{i}" for i in range(2)]
    dsts = [f"bd{TAG}{i}" for i in range(2)]
    for name in srcs + dsts:
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
        sh("ip", "link", "set", name, "up")
        sh("ip", "link", "set", name + "p", "up")  # else routes are linkdown and CRIU cannot restore them
    maps = {f"mv{i}": dsts[i % 2] for i in range(n)}
    rpc_times, rpc_hooks, script_times = [], [], []
    pids: list[int] = []
    try:
        with tempfile.TemporaryDirectory(delete=os.environ.get("KEEP") is None) as tmp:
            if os.environ.get("KEEP"):
                print("images in", tmp)
            for r in range(rounds):
                for mode in ("rpc", "script"):
                    d = Path(tmp) / f"{mode}{r}"
                    d.mkdir()
                    pid = start_tree(srcs, n)
                    pids.append(pid)
                    Criu(CRIU).dump(pid, str(d), log_file="dump.log")
                    if mode == "rpc":
                        criu = Timed(CRIU)
                        t = time.perf_counter()
                        new = criu.restore(str(d), maps, log_file="restore.log")
                        rpc_times.append(time.perf_counter() - t)
                        rpc_hooks.append(criu.hook_time)
                    else:
                        ext = [f"--external=macvlan[{k}]:{v}" for k, v in maps.items()]
                        t = time.perf_counter()
                        subprocess.run([CRIU, "restore", "-d", "-D", str(d), "--action-script", SCRIPT,
                                        "--pidfile", str(d / "pid"), "-o", "restore.log", *ext], check=True)
                        script_times.append(time.perf_counter() - t)
                        new = int((d / "pid").read_text())
                    pids.append(new)
                    kill(new)
    finally:
        for pid in pids:
            kill(pid)
        for name in srcs + dsts:
            subprocess.run(["ip", "link", "del", name], capture_output=True)

    def ms(xs: list[float]) -> str:
        return f"median {statistics.median(xs) * 1000:.1f} ms, min {min(xs) * 1000:.1f} ms"

    print(f"restore of a tree with {n} macvlan(s), {rounds} rounds:")
    print(f"  RPC driver:                 {ms(rpc_times)}  (hooks in-process: {ms(rpc_hooks)})")
    print(f"  criu restore + action script: {ms(script_times)}")


if __name__ == "__main__":
    main()
