#!/usr/bin/env python3
"""``make zdtm``: CRIU's own zdtm tests against the installed criu, natively and with criu-macvlan.

Fetches the release sources of the installed criu at run time (Debian's orig
tarball, ``apt-get source --download-only --tar-only criu=VERSION``), unpacks them
in ``build/zdtm/`` (git-ignored; nothing of CRIU's is kept in the repository),
builds ``test/zdtm/lib`` and the tests it runs, and runs ``zdtm.py run -t TEST -f
FLAVOR [--rpc]`` twice per case: natively, and with the plugin enabled the way a
CRIU user enables it, a config file named by ``CRIU_CONFIG_FILE`` that holds
``action-script hooks/criu-macvlan-action``. With ``--rpc`` the RPC client's
``opts.external`` never reaches an action script, so the mapping is in a file
named by ``CRIU_MACVLAN_CONFIG``. Prints one table.

zdtm skips its own clean-up when a run fails: this restores ``vm.nr_hugepages``,
removes the cgroup holder directories of zdtm's named hierarchies and the links
named like zdtm's that appeared on the host during the run.

Exit status: 0 when every case that passes natively passes with the plugin (and,
for ``static/macvlan``, the plugin did the work: ``macvlan.img`` written, the link
restored as ``EXTLINK``); 1 otherwise; 77 when the sources cannot be fetched or
built here (the reason is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOOK = REPO / "hooks" / "criu-macvlan-action"
SHIM = REPO / "scripts" / "criu-sockopt-compat.c"
LOCK = "/run/criu-macvlan-zdtm.lock"  # zdtm's link names and cgroup hierarchies are fixed: one run at a time
SKIP = 77
MACVLAN = "zdtm/static/macvlan"
MACVLAN_CASES = [("ns", False), ("uns", False), ("ns", True), ("uns", True)]
MAPPING = "external macvlan[zdtmmvlan0]:zdtmbr0\n"  # the ropts of static/macvlan.desc
HARM = ("netns*", "socket-tcp*", "socket_udp*", "sockets*")
ZDTM_LINK = re.compile(r"zdtm\w*|test_mvlan1|mymacvlan1")  # static/macvlan.hook, .checkskip
CGROUP_HIERARCHIES = ("zdtmtst", "zdtmtst.defaultroot")  # zdtm_mount_cgroups
RUN_TIMEOUT = 300
NOISE = "Can't setup RLIMIT_NOFILE for self"  # logged by every criu run where root lacks CAP_SYS_RESOURCE


class Skip(Exception):
    """zdtm cannot run here; the message says why."""


@dataclass
class Result:
    test: str
    flavor: str
    rpc: bool
    plugin: bool
    verdict: str  # PASS, FAIL, SKIP, TIMEOUT
    seconds: float
    detail: str = ""


def sh(*cmd: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload,no-any-return]


# ------------------------------------------------------------ CRIU's sources


def installed_criu() -> tuple[Path, str]:
    """The criu binary and the Debian version of its package."""
    path = shutil.which("criu") or "/usr/sbin/criu"
    version = sh("dpkg-query", "-W", "-f=${Version}", "criu").stdout.strip()
    if not os.access(path, os.X_OK) or not version:
        raise Skip("criu is not installed from a Debian package (make setup)")
    return Path(path).resolve(), version


def fetch_sources(build: Path, version: str) -> Path:
    """CRIU's release tree of ``version``, unpacked under ``build`` (once)."""
    upstream = version.split(":")[-1].rsplit("-", 1)[0]
    tree = build / f"criu-{upstream}"
    stamp = tree / ".unpacked"
    if stamp.exists():
        return tree
    download = build / "download"
    download.mkdir(parents=True, exist_ok=True)
    res = sh("apt-get", "source", "--download-only", "--tar-only", f"criu={version}", cwd=download, timeout=600)
    tarballs = sorted(download.glob(f"criu_{upstream}.orig.tar.*"))
    if not tarballs:
        why = (res.stderr.strip().splitlines() or ["no orig tarball"])[-1]
        raise Skip(f"cannot fetch the sources of criu {version} ({why}); apt needs a deb-src line for "
                   "the suite that has it (make setup writes one for trixie)")
    shutil.rmtree(tree, ignore_errors=True)
    untar = sh("tar", "-xf", tarballs[-1], "-C", build)
    if untar.returncode != 0 or not (tree / "test" / "zdtm.py").exists():
        raise Skip(f"{tarballs[-1].name} has no test/zdtm.py: {untar.stderr.strip()}")
    stamp.touch()
    return tree


def needs_shim(criu: Path) -> bool:
    """criu < 4.2 on Linux >= 6.16 cannot dump inet sockets (see README, Known limitations)."""
    out = sh(criu, "--version").stdout
    version = tuple(int(x) for x in re.findall(r"Version: (\d+)\.(\d+)", out)[0]) if "Version:" in out else (0, 0)
    release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    return version < (4, 2) and release >= (6, 16)


def prepare(tree: Path, criu: Path) -> str:
    """Point the tree at the installed criu and pycriu, build zdtm's library; describe the criu used."""
    binary = tree / "criu" / "criu"  # zdtm.py's default --criu-bin, relative to test/
    binary.unlink(missing_ok=True)
    used = f"{criu} ({sh(criu, '--version').stdout.split()[1]})"
    if needs_shim(criu):
        shim = tree / "criu" / "criu-sockopt-compat.so"
        res = sh("cc", "-shared", "-fPIC", "-O2", "-o", shim, SHIM, "-ldl")
        if res.returncode != 0:
            raise Skip(f"cannot build {SHIM.name}: {res.stderr.strip()}")
        binary.write_text(f'#!/bin/sh\nLD_PRELOAD={shim} exec {criu} "$@"\n')
        binary.chmod(0o755)
        used += f" with {SHIM.name} preloaded (criu < 4.2 on Linux >= 6.16)"
    else:
        binary.symlink_to(criu)
    spec = importlib.util.find_spec("pycriu")
    if spec is None or not spec.submodule_search_locations:
        raise Skip("pycriu is not installed (apt-get install python3-pycriu)")
    pycriu = tree / "test" / "pycriu"  # in the tarball: a link to the unbuilt lib/pycriu
    pycriu.unlink(missing_ok=True)
    pycriu.symlink_to(next(iter(spec.submodule_search_locations)))
    res = sh("make", "-j2", "-C", tree / "test" / "zdtm" / "lib")
    if res.returncode != 0:
        raise Skip(f"cannot build zdtm's library: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    return used


def harm_tests(tree: Path) -> list[str]:
    static = tree / "test" / "zdtm" / "static"
    names = {p.name.split(".")[0] for p in static.iterdir() if p.suffix in (".c", ".desc")}
    return sorted(f"zdtm/static/{n}" for n in names if any(fnmatch.fnmatch(n, pat) for pat in HARM))


def build_tests(tree: Path, tests: list[str]) -> list[str]:
    """Build ``tests``; return those that built."""
    static = tree / "test" / "zdtm" / "static"
    sh("make", "-k", "-j2", "-C", static, *(t.rsplit("/", 1)[1] for t in tests))
    return [t for t in tests if os.access(tree / "test" / t, os.X_OK)]


# ---------------------------------------------------------- host clean-up


def _holders(hierarchy: str) -> set[str]:
    with tempfile.TemporaryDirectory(prefix="cmv-zdtm-cg-") as mnt:
        if sh("mount", "-t", "cgroup", "-o", f"none,name={hierarchy}", "zdtm", mnt).returncode != 0:
            return set()
        try:
            return {p.name for p in Path(mnt).glob("holder.*")}
        finally:
            sh("umount", "-l", mnt)


def _remove_holders(hierarchy: str, names: set[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="cmv-zdtm-cg-") as mnt:
        if sh("mount", "-t", "cgroup", "-o", f"none,name={hierarchy}", "zdtm", mnt).returncode != 0:
            return
        try:
            for name in names:
                with contextlib.suppress(OSError):
                    os.rmdir(Path(mnt) / name)
        finally:
            sh("umount", "-l", mnt)


def _links() -> set[str]:
    return {line.split(": ")[1].split("@")[0] for line in sh("ip", "-o", "link").stdout.splitlines() if ": " in line}


@contextlib.contextmanager
def host_cleanup(what: str) -> Iterator[None]:
    """Undo what ``what`` leaves on the host (zdtm skips its clean-up when a run fails); say what."""
    sysctl = Path("/proc/sys/vm/nr_hugepages")
    hugepages = sysctl.read_text()
    holders = {h: _holders(h) for h in CGROUP_HIERARCHIES}
    links = _links()
    try:
        yield
    finally:
        undone = []
        if (now := sysctl.read_text()) != hugepages:
            sysctl.write_text(hugepages)
            undone.append(f"vm.nr_hugepages {now.strip()} -> {hugepages.strip()}")
        for hierarchy, before in holders.items():
            new = _holders(hierarchy) - before
            if new:
                _remove_holders(hierarchy, new)
                undone.append(f"cgroup {hierarchy}: {', '.join(sorted(new))}")
        for name in sorted(_links() - links):
            if ZDTM_LINK.fullmatch(name):
                sh("ip", "link", "del", name)
                undone.append(f"link {name}")
        if undone:
            print(f"zdtm: cleaned up after {what}: {'; '.join(undone)}", flush=True)


# ----------------------------------------------------------------- runs


def run_case(tree: Path, conf: Path, mapping: Path, test: str, flavor: str, rpc: bool, plugin: bool) -> Result:
    testdir = tree / "test"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRIU_CONFIG_FILE", "CRIU_MACVLAN_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    if plugin:
        env["CRIU_CONFIG_FILE"] = str(conf)
        if rpc:
            env["CRIU_MACVLAN_CONFIG"] = str(mapping)
    cmd = [sys.executable, "zdtm.py", "run", "-t", test, "-f", flavor, "--keep-img", "always"]
    cmd += ["--rpc"] if rpc else []
    dumps = testdir / "dump" / test
    shutil.rmtree(dumps, ignore_errors=True)
    start = time.monotonic()
    with host_cleanup(f"{test} {flavor}{' --rpc' if rpc else ''}{' (plugin)' if plugin else ''}"):
        proc = subprocess.Popen(cmd, cwd=testdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return Result(test, flavor, rpc, plugin, "TIMEOUT", time.monotonic() - start, f"> {RUN_TIMEOUT} s")
    seconds = time.monotonic() - start
    verdict, detail = _verdict(out, test)
    if verdict == "PASS" and test == MACVLAN:
        verdict, detail = _macvlan_evidence(dumps, plugin)
    elif verdict == "FAIL":
        detail = "; ".join([detail, *_errors(out)])
    shutil.rmtree(dumps, ignore_errors=True)
    return Result(test, flavor, rpc, plugin, verdict, seconds, detail)


def _errors(out: str) -> list[str]:
    """The first error (usually the cause) and the last one, of CRIU or of the hook."""
    # zdtm prints CRIU's log lines as Python bytes reprs: b'(00.06) Error (...): ...'
    errors = [re.sub(r"^b[\"'](.*)[\"']$", r"\1", line) for line in out.splitlines()
              if ("Error (" in line and NOISE not in line) or "criu-macvlan-action:" in line]
    return errors[:1] + errors[1:][-1:]


def _verdict(out: str, test: str) -> tuple[str, str]:
    if m := re.search(rf"Test {re.escape(test)} FAIL at (.*?) #", out):
        return "FAIL", f"at {m.group(1)}"
    if f"Test {test} PASS" in out:
        return "PASS", ""
    if m := re.search(rf"Skipping {re.escape(test)} \((.*)\)", out):
        return "SKIP", m.group(1)
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("#")]
    return "FAIL", (lines or ["no output"])[-1][:200]


def _macvlan_evidence(dumps: Path, plugin: bool) -> tuple[str, str]:
    """A PASS of static/macvlan, checked: who recreated the link, from the kept images."""
    logs = sorted(dumps.glob("*/1/restore.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return "FAIL", "no restore.log kept"
    images, log = logs[-1].parent, logs[-1].read_text(errors="replace")
    kind = re.search(r"Restoring link zdtmmvlan0 type (\d+)", log)
    if not plugin:
        return "PASS", f"CRIU recreated the link (type {kind.group(1) if kind else '?'})"
    if (images / "macvlan.img").exists() and kind and kind.group(1) == "4":
        return "PASS", "macvlan.img written, entry EXTLINK, link recreated by the plugin"
    return "FAIL", "zdtm passed but the plugin did not restore the link"


# ---------------------------------------------------------------- report


def label(r: Result) -> str:
    return f"{r.flavor} with --rpc" if r.rpc else r.flavor


def table(results: list[Result]) -> str:
    pairs: dict[tuple[str, str, bool], dict[bool, Result]] = {}
    for r in results:
        pairs.setdefault((r.test, r.flavor, r.rpc), {})[r.plugin] = r
    rows = ["| test | flavor | native | with criu-macvlan |", "|---|---|---|---|"]
    for (test, _, _), pair in pairs.items():
        cells = [_cell(pair.get(plugin)) for plugin in (False, True)]
        rows.append(f"| {test.removeprefix('zdtm/')} | {label(next(iter(pair.values())))} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def _cell(r: Result | None) -> str:
    if r is None:
        return "-"
    text = f"{r.verdict} ({r.seconds:.1f} s)"
    return f"{text}: {r.detail}" if r.detail else text


def differences(results: list[Result]) -> list[str]:
    """Cases that pass natively and not with the plugin (or, for static/macvlan, that fail at all)."""
    native = {(r.test, r.flavor, r.rpc): r for r in results if not r.plugin}
    bad = []
    for r in results:
        if not r.plugin:
            continue
        base = native.get((r.test, r.flavor, r.rpc))
        if r.verdict != "PASS" and ((base is not None and base.verdict == "PASS") or r.test == MACVLAN):
            bad.append(f"{r.test} {label(r)}: native {base.verdict if base else '-'}, with the plugin {r.verdict}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--harm", action="store_true", help=f"zdtm's network and socket tests ({', '.join(HARM)})")
    ap.add_argument("--flavors", default="ns", help="flavors of the --harm tests (default: ns)")
    ap.add_argument("--build", type=Path, default=REPO / "build" / "zdtm", help="work tree (default: build/zdtm)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("zdtm: SKIP: zdtm needs root", file=sys.stderr)
        return SKIP
    args.build.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            criu, version = installed_criu()
            tree = fetch_sources(args.build.resolve(), version)
            used = prepare(tree, criu)
            if args.harm:
                cases = [(t, f, False) for t in build_tests(tree, harm_tests(tree)) for f in args.flavors.split(",")]
            elif build_tests(tree, [MACVLAN]):
                cases = [(MACVLAN, f, rpc) for f, rpc in MACVLAN_CASES]
            else:
                raise Skip(f"cannot build {MACVLAN}")
        except Skip as exc:
            print(f"zdtm: SKIP: {exc}", file=sys.stderr)
            return SKIP
        conf, mapping = args.build / "criu-macvlan.conf", args.build / "mapping.conf"
        conf.write_text(f"action-script {HOOK}\n")
        mapping.write_text(MAPPING)
        print(f"zdtm: CRIU {version} sources in {tree}; criu: {used}; plugin: CRIU_CONFIG_FILE={conf}", flush=True)
        results = []
        with host_cleanup("the whole run"):  # also what no single run's bookkeeping caught
            for test, flavor, rpc in cases:
                for plugin in (False, True):
                    r = run_case(tree, conf.resolve(), mapping.resolve(), test, flavor, rpc, plugin)
                    print(f"zdtm: {test} {label(r)} {'plugin' if plugin else 'native'}: {r.verdict} "
                          f"{r.seconds:.1f} s {r.detail}", flush=True)
                    results.append(r)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    bad = differences(results)
    passed = sum(r.verdict == "PASS" for r in results if not r.plugin)
    for line in bad:
        print(f"zdtm: DIFFERS: {line}")
    print(f"zdtm: {'FAILED' if bad else 'OK'}: {len(results) // 2} cases, {passed} pass natively, "
          f"{len(bad)} differ with the plugin")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
