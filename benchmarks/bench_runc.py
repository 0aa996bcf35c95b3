"""``runc checkpoint`` and ``runc restore`` of a container with one macvlan: the plugin vs a no-op action script.

The container (busybox ``sleep``, its own netns made by runc) gets a macvlan moved in
between ``runc create`` and ``runc start``, as an engine does. Each path names its
action script in the container's CRIU config file (annotation ``org.criu.config``):

* ``no-op script`` -- ``action-script`` a shell script that exits 0: runc and CRIU
  alone (runc restores into an empty netns: the container comes back without its NIC);
* ``no-op, a cold start`` -- the no-op script, but at ``setup-namespaces`` (once per
  CRIU) it runs what a cold ``setup-namespaces`` cannot do without (the interpreter and
  bench.py's COLD_IMPORTS) where our hook runs: the least a cold hook costs, the kernel's
  reaction to a slow action included (see docs/performance.md);
* ``plugin, cold`` -- our action script, a Python start per handled action;
* ``plugin, serve`` -- our action script with ``criu-macvlan serve`` running.

CRIU runs a config file's script twice per action (it reads the file twice): the
plugin's repeats are answered from their markers. The mapping reaches the plugin
through ``$CRIU_MACVLAN_CONFIG`` (the same file; runc passes its environment on).
Paths alternate, one fresh container per run. Also timed: one cold hook start by
itself. Targets: plugin cold <= 1.05 x the no-op with a cold start; plugin with serve
<= 1.3 x no-op.

    .venv/bin/python benchmarks/bench_runc.py [--runs N] [-o DIR]

Needs root, runc and busybox-static. Removes everything it makes, also on failure
(KEEP=1 keeps the bundle, the images and CRIU's logs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ACTION = REPO / "hooks" / "criu-macvlan-action"
CLI = Path(sys.executable).with_name("criu-macvlan")
RUNC = shutil.which("runc") or "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"
TAG = f"{os.getpid() % 10000:04d}"
NOOP, BOUND, COLD, SERVED = "no-op script", "no-op, a cold start", "plugin, cold", "plugin, serve"
LETTERS = {NOOP: "n", BOUND: "b", COLD: "c", SERVED: "s"}  # in container ids: with KEEP=1 every run's dirs stay
COLD_LIMIT = 1.05  # x BOUND, as bench.py holds the cold action script to 1.05 x its cold bound
NO_SERVE = "/nonexistent/criu-macvlan-serve"
SERVE_LIMIT = 1.3


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


class Lab:
    """Two veth parents, a bundle dir, a runc state root, the serve helper; all removed by close()."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cmv-bench-runc-"))
        self.root = self.dir / "state"
        self.links: list[str] = []
        self.serve: subprocess.Popen[str] | None = None
        self.parent_a, self.parent_b = self.veth("bra"), self.veth("brb")
        rootfs = self.dir / "rootfs"
        for sub in ("bin", "proc", "dev", "tmp"):
            (rootfs / sub).mkdir(parents=True)
        shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
        (rootfs / "bin" / "sleep").symlink_to("busybox")
        subprocess.run([RUNC, "spec"], cwd=self.dir, check=True)
        self.spec = json.loads((self.dir / "config.json").read_text())
        self.spec["process"]["terminal"] = False
        self.spec["process"]["args"] = ["/bin/sleep", "100000"]
        self.spec["root"] = {"path": "rootfs", "readonly": False}
        self.spec["mounts"] = [m for m in self.spec["mounts"] if not m["destination"].startswith("/sys")]
        noop = self.dir / "noop.sh"
        noop.write_text("#!/bin/sh\nexit 0\n")
        noop.chmod(0o755)
        self.confs = {
            NOOP: self.conf("noop.conf", noop),
            BOUND: self.conf("cold-start.conf", cold_start_script(self.dir)),
            COLD: self.conf("plugin.conf", ACTION, f"external macvlan[mv0]:{self.parent_b}\n"),
        }
        self.confs[SERVED] = self.confs[COLD]

    def veth(self, prefix: str) -> str:
        name = f"{prefix}{TAG}"
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
        self.links.append(name)
        sh("ip", "link", "set", name, "up")
        sh("ip", "link", "set", name + "p", "up")
        return name

    def conf(self, name: str, script: Path, extra: str = "") -> Path:
        path = self.dir / name
        path.write_text(f"action-script {script}\n{extra}")
        return path

    def start_serve(self) -> str:
        serve_dir = f"/run/criu-macvlan/bench-runc-{os.getpid()}"
        self.serve = subprocess.Popen([str(CLI), "serve", "--dir", serve_dir], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.serve.stderr is not None
        line = self.serve.stderr.readline()
        if "serving at" not in line:
            raise RuntimeError(f"criu-macvlan serve did not start: {line.strip()}")
        return serve_dir

    def close(self) -> None:
        if self.serve is not None:
            self.serve.terminate()  # a clean stop removes its runtime dir
            try:
                self.serve.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.serve.kill()
                self.serve.wait()
        for name in self.links:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        if not os.environ.get("KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def container(lab: Lab, path: str, env: dict[str, str], run: int) -> Iterator[tuple[str, Path, Path]]:
    """A started container of ``path`` with macvlan mv0 on parent A; yields its id, images and work dirs."""
    cid = f"cmvb{TAG}{run:04d}{LETTERS[path]}"
    spec = dict(lab.spec, annotations={"org.criu.config": str(lab.confs[path])})
    bundle = lab.dir / "config.json"
    bundle.write_text(json.dumps(spec))
    images, work = lab.dir / f"img-{cid}", lab.dir / f"work-{cid}"
    images.mkdir()
    work.mkdir()
    try:
        runc(lab, env, "create", cid)
        pid = json.loads(sh(RUNC, "--root", str(lab.root), "state", cid))["pid"]
        tmp = f"bm{TAG}"
        sh("ip", "link", "add", tmp, "link", lab.parent_a, "type", "macvlan", "mode", "bridge")
        try:
            sh("ip", "link", "set", tmp, "netns", str(pid))
        except subprocess.CalledProcessError:
            subprocess.run(["ip", "link", "del", tmp], capture_output=True)
            raise
        for cmd in (("link", "set", tmp, "name", "mv0", "up"), ("addr", "add", "10.249.0.2/24", "dev", "mv0")):
            sh("nsenter", "-t", str(pid), "-n", "ip", *cmd)
        runc(lab, env, "start", cid)
        yield cid, images, work
    finally:
        subprocess.run([RUNC, "--root", str(lab.root), "delete", "--force", cid], capture_output=True)
        if not os.environ.get("KEEP"):
            shutil.rmtree(images, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)


def runc(lab: Lab, env: dict[str, str], *args: str) -> float:
    """Run runc in the bundle; its wall time in seconds."""
    log = lab.dir / "runc.log"
    t0 = time.perf_counter()
    # the container inherits runc's stdio on create/restore: /dev/null (criu cannot dump a pipe or a deleted file)
    proc = subprocess.Popen([RUNC, "--root", str(lab.root), "--log", str(log), *args], cwd=lab.dir, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The deadline on a pidfd: Popen.wait(timeout) polls, sleeping up to 50 ms at a time, which
    # rounded every time measured here up to a step of 50 ms.
    pidfd = os.pidfd_open(proc.pid)
    try:
        ended = select.select([pidfd], [], [], 120)[0]
    finally:
        os.close(pidfd)
    if not ended:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"runc {args[0]} did not finish within 120 s")
    returncode = proc.wait()
    elapsed = time.perf_counter() - t0
    if returncode != 0:
        tail = log.read_text(errors="replace").strip()[-500:] if log.exists() else ""
        raise RuntimeError(f"runc {args[0]} failed: {tail}")
    return elapsed


def one_run(lab: Lab, path: str, env: dict[str, str], run: int) -> tuple[float, float]:
    with container(lab, path, env, run) as (cid, images, work):
        dirs = ("--image-path", str(images), "--work-path", str(work))
        dump = runc(lab, env, "checkpoint", *dirs, cid)
        plugin = path in (COLD, SERVED)
        if plugin and not (images / "macvlan.img").exists():
            raise RuntimeError(f"{path}: the plugin did not run at checkpoint (no macvlan.img)")
        restore = runc(lab, env, "restore", "-d", *dirs, cid)
        if plugin:
            pid = json.loads(sh(RUNC, "--root", str(lab.root), "state", cid))["pid"]
            sh("nsenter", "-t", str(pid), "-n", "ip", "link", "show", "mv0")  # raises if it did not come back
    return dump, restore


def cold_start_script(where: Path) -> Path:
    """The no-op script, but at the first ``setup-namespaces`` of each CRIU process a cold start:
    bench.py's, made in ``where``."""
    return Path(_bench().cold_start_script(str(where)))


def cold_imports() -> str:
    """What a cold ``setup-namespaces`` cannot do without: bench.py's COLD_IMPORTS."""
    return str(_bench().COLD_IMPORTS)


def _bench() -> Any:
    _repo_on_path()
    from benchmarks import bench

    return bench


def _repo_on_path() -> None:
    """The checkout's ``benchmarks`` package importable, as when this file runs as a script."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def cold_hook_start(runs: int) -> list[float]:
    """Wall time of one cold hook start by itself."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-s", "-P", "-c", cold_imports()], check=True)
        times.append(time.perf_counter() - t0)
    return times


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench(runs: int, warmup: bool = True) -> dict[str, Any]:
    lab = Lab()
    try:
        base = dict(os.environ, CRIU_MACVLAN_CONFIG=str(lab.confs[COLD]))
        cold = dict(base, CRIU_MACVLAN_SERVE_DIR=NO_SERVE)
        envs = {NOOP: cold, BOUND: cold, COLD: cold, SERVED: dict(base, CRIU_MACVLAN_SERVE_DIR=lab.start_serve())}
        samples: dict[str, dict[str, list[float]]] = {p: {"checkpoint": [], "restore": []} for p in envs}
        if warmup:
            for path, env in envs.items():
                one_run(lab, path, env, 9999)
        for run in range(runs):
            for path, env in envs.items():
                dump, restore = one_run(lab, path, env, run)
                samples[path]["checkpoint"].append(dump)
                samples[path]["restore"].append(restore)
    finally:
        lab.close()
    result: dict[str, Any] = {
        "runs": runs,
        "paths": {p: {op: stats(v) for op, v in ops.items()} for p, ops in samples.items()},
        "cold_hook_start": stats(cold_hook_start(max(runs, 5))),
        "samples": samples,
    }
    result["targets"] = judged_targets(samples)
    return result


def targets(samples: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """The restore targets, from each path's samples (seconds, in alternation order)."""
    restore = {path: statistics.median(ops["restore"]) for path, ops in samples.items()}
    cold_ratio, served_ratio = restore[COLD] / restore[BOUND], restore[SERVED] / restore[NOOP]
    return [
        {"name": f"runc restore, plugin cold <= {COLD_LIMIT} x {BOUND}", "unit": "x",
         "value": cold_ratio, "limit": COLD_LIMIT, "ok": cold_ratio <= COLD_LIMIT},
        {"name": f"runc restore, plugin with serve <= {SERVE_LIMIT} x no-op", "unit": "x",
         "value": served_ratio, "limit": SERVE_LIMIT, "ok": served_ratio <= SERVE_LIMIT},
    ]


def judged_targets(samples: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """:func:`targets`, each with the share of resamples of the run's rounds in which it is met
    (``met_share``, as bench.py's; see benchmarks/resample.py)."""
    _repo_on_path()
    from benchmarks.resample import met_shares

    def judge(resampled: dict[str, dict[str, dict[str, dict[str, list[float]]]]]) -> list[dict[str, Any]]:
        runs = {path: {op: by_n["1"] for op, by_n in ops.items()} for path, ops in resampled["runc"].items()}
        return [{"target": t["name"], "met": t["ok"]} for t in targets(runs)]

    shares = met_shares({"runc": {p: {op: {"1": v} for op, v in ops.items()} for p, ops in samples.items()}}, judge)
    return [{**t, "met_share": shares.get(t["name"])} for t in targets(samples)]


def render(result: dict[str, Any]) -> str:
    ms = 1000.0
    lines = [f"runc checkpoint/restore of a container with one macvlan ({result['runs']} runs per path, alternating)",
             "", "| path | checkpoint median (min) | restore median (min) | restore / no-op |", "|---|---|---|---|"]
    noop = result["paths"][NOOP]["restore"]["median"]
    for path, ops in result["paths"].items():
        c, r = ops["checkpoint"], ops["restore"]
        lines.append(f"| {path} | {c['median'] * ms:.0f} ms ({c['min'] * ms:.0f}) | {r['median'] * ms:.0f} ms "
                     f"({r['min'] * ms:.0f}) | {r['median'] / noop:.2f} |")
    lines.append(f"\none cold hook start by itself (interpreter + what setup-namespaces imports): "
                 f"{result['cold_hook_start']['median'] * ms:.0f} ms median\n")
    for t in result["targets"]:
        share = "" if t.get("met_share") is None else f"; met in {t['met_share']:.0%} of resamples of the rounds"
        lines.append(f"- {t['name']}: {t['value']:.2f} (limit {t['limit']:.2f}) {'ok' if t['ok'] else 'MISSED'}{share}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--runs", type=int, default=15, help="runs per path")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("-o", "--out", help="write runc.md and runc.json there")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists(RUNC) or not os.path.exists(BUSYBOX):
        print("bench_runc: needs root, runc and busybox-static (make setup)", file=sys.stderr)
        return 2
    result = bench(args.runs, warmup=not args.no_warmup)
    text = render(result)
    print(text, end="")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        Path(args.out, "runc.md").write_text(text)
        Path(args.out, "runc.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
