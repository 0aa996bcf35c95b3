"""Time a repeated delivery of a handled action (the hook answers it from its marker).

Runs as root: a process holds an empty images dir open as CRIU would, the hook
handles ``setup-namespaces`` once (a Python start), then every further delivery is
timed, next to a delivery of an action no plugin handles (the hook's floor).

    .venv/bin/python benchmarks/second_delivery.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOOK = Path(__file__).resolve().parents[1] / "hooks" / "criu-macvlan-action"


def timed(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(HOOK)], env=env, check=True)
    return (time.perf_counter() - t0) * 1000


def summary(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    return (f"{name:28} median {statistics.median(ms):5.2f} ms  p90 {ms[int(len(ms) * 0.9)]:5.2f} ms"
            f"  max {ms[-1]:5.2f} ms  ({len(ms)} runs)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as images:
        fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
        holder = subprocess.Popen(["sleep", "100000"], pass_fds=[fd])
        try:
            env = dict(os.environ, CRTOOLS_IMAGE_DIR=f"/proc/{holder.pid}/fd/{fd}",
                       CRTOOLS_INIT_PID=str(holder.pid), CRIU_MACVLAN_SERVE_DIR=f"{images}/no-serve")
            first = timed(dict(env, CRTOOLS_SCRIPT_ACTION="setup-namespaces"))
            second = [timed(dict(env, CRTOOLS_SCRIPT_ACTION="setup-namespaces")) for _ in range(args.runs)]
            floor = [timed(dict(env, CRTOOLS_SCRIPT_ACTION="post-resume")) for _ in range(args.runs)]
        finally:
            holder.kill()
            holder.wait()
            os.close(fd)
    print(f"{'first setup-namespaces':28} {first:6.2f} ms (a Python start)")
    print(summary("repeated setup-namespaces", second))
    print(summary("unhandled action (floor)", floor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
