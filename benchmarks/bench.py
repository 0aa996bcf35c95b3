"""criu-macvlan against native CRIU, side by side.

Workload: one process tree (``unshare --pid --net``) whose netns holds N macvlan
links (mode bridge, down) on a veth parent in the host
netns. Every *path* keeps its own tree and dumps and restores it in a chain:
dump (timed) -> restore (timed) onto the other of its two parents -> the restored
tree is the next run's tree. Paths of a group run alternately (A B C A B C ...).

Groups (each path's ratio is against the group's native path on the same N):

* ``inproc`` -- one Python process: our RPC driver (plugin makes the links) vs the
  same RPC request through plain pycriu, CRIU's own code making the links
  (``opts.external`` ``macvlan[IN]:OUT``); and our driver with no plugin (CRIU's
  own code again): what the driver and its notifications cost by themselves, and how
  long CRIU takes from the request to its first notification.
* ``cmdline`` -- whole processes: ``criu --action-script hooks/criu-macvlan-action``
  and ``criu-macvlan restore`` (our CLI) vs plain ``criu`` (``--external macvlan[...]``);
  and, at N=1, the bounds: plain ``criu`` with a no-op action script; the same script
  starting a process that only imports what a cold ``setup-namespaces`` needs (the
  interpreter, pluggy, protobuf with the two schemas, pyroute2's netlink layer) at
  ``setup-namespaces`` -- no cold action script can cost less; and plain ``criu``
  followed by that process -- no cold CLI can cost less than that minus CRIU's time to
  its first notification.
* ``actions`` -- the hook alone through the shell shim, outside CRIU, with a prepared
  images dir and netns: an action no plugin handles, ``pre-dump``, ``post-dump`` (after
  an untimed pre-dump of the same stand-in CRIU process, as in a real dump: served by the
  warm helper, whose peak RSS counts as the hook's; and alone), ``setup-namespaces``; wall
  time and peak RSS of the hook process.

Writes ``latest.md``, ``latest.json`` and (with matplotlib, ``pip install -e .[bench]``)
``latest.png`` to ``--out``. Needs root, criu, iproute2 and util-linux. Everything it
creates (veths, trees, images) is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ACTION = REPO / "hooks" / "criu-macvlan-action"
CRIU = shutil.which("criu") or "/usr/sbin/criu"
CLI = Path(sys.executable).with_name("criu-macvlan")
PR_SET_CHILD_SUBREAPER = 36
UNHANDLED_ACTION = "network-lock"
SERVED = "criu --action-script, serve running"
DRIVER_ALONE = "our RPC driver, no plugin"
COLD_FLOOR = "native criu, then cold imports alone"
COLD_START = "criu --action-script, a cold start"  # the no-op script, but the cold imports at setup-namespaces
NOOP = "criu --action-script, a no-op script"  # what any action script costs CRIU: its fork and exec per action
TO_FIRST = "restore: to CRIU's first notification"
FROZEN = ": frozen"  # op suffix: the tree's frozen window in that op (from CRIU's log)
# What a cold setup-namespaces cannot do without, and nothing else: the interpreter, pluggy,
# protobuf with the sidecar's and CRIU's netdev schemas (generated modules), pyroute2's netlink layer. Of
# criu-macvlan only the package and its loaders (lean), which import those libraries the cheapest way we know;
# none of our other modules (they are what the target holds us to). It exits as our hook and CLI do, without
# the interpreter's teardown. COLD_STEPS: the same, one library at a time.
_SCHEMAS = "from criu_macvlan import lean, macvlan_pb2; lean.pycriu_schema('netdev_pb2')"
COLD_STEPS = (
    ("interpreter", "import os"),
    ("+ pluggy", "import os, pluggy"),
    ("+ protobuf, both schemas", f"import os, pluggy; {_SCHEMAS}"),
    ("+ pyroute2's netlink layer", f"import os, pluggy; {_SCHEMAS}; lean.pyroute2_netlink()"),
)
COLD_IMPORTS = COLD_STEPS[-1][1] + "; os._exit(0)"
MiB = 1 << 20
SMALL_N = 100  # up to here (the N of the ratio targets) a full run takes more runs: the ratios are noisy
IFINDEX_BASE = 1 << 20  # macvlan ifindexes: no host link has one so high
SETTLE_WAITED = 0.008  # s: an rtnl change slower than this waited for the lock (Lab.settle)
SETTLE_GAP = 0.005  # s between two such changes
SETTLE_DEADLINE = 5.0  # s: then the operation starts anyway

Sample = dict[str, dict[str, dict[str, dict[str, list[float]]]]]  # group -> path -> op -> N -> seconds


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str, stdin: str | None = None) -> str:
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return res.stdout


# ------------------------------------------------------------------ resources


class Lab:
    """Every veth, process and directory the benchmark makes; :meth:`cleanup` removes them all."""

    def __init__(self, tmp_root: str | None = None) -> None:
        self.veths: list[str] = []
        self.pids: set[int] = set()
        self.popens: list[subprocess.Popen[bytes]] = []
        self.servers: list[subprocess.Popen[str]] = []
        self.helpers: list[Served] = []
        self.tmp = tempfile.mkdtemp(prefix="criu-macvlan-bench-", dir=tmp_root)
        self._seq = 0

    def name(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{os.getpid() % 100000:05d}{self._seq:03d}"[:15]

    def dir(self, prefix: str) -> str:
        return tempfile.mkdtemp(prefix=prefix, dir=self.tmp)

    def veth(self) -> str:
        name = self.name("bm")
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
        self.veths.append(name)
        sh("ip", "link", "set", name, "up")
        sh("ip", "link", "set", name + "p", "up")
        return name

    def settle(self, link: str) -> None:
        """Return once no network namespace the bench killed is still being torn down.

        The kernel tears a dead netns down in the background, holding the rtnl lock
        while it deletes the netns' links (long, with many macvlans). CRIU's
        kernel-feature probe at its start needs that lock too (CRIU caches the probe
        only where /run is tmpfs, which is not so everywhere), so a dump or restore started
        meanwhile waits for the teardown of the tree dumped just before: an artifact
        of dumping and restoring back to back on one host, which a migration's
        restoring host does not have. A no-op script that sleeps in pre-dump and
        post-dump has it too. So each timed operation starts once a change of our
        own ``link`` that takes the lock (its MTU set to what it is) returns at once,
        twice in a row.
        """
        deadline = time.monotonic() + SETTLE_DEADLINE
        fast = 0
        while fast < 2 and time.monotonic() < deadline:
            t = time.monotonic()
            sh("ip", "link", "set", "dev", link, "mtu", "1500")
            fast = fast + 1 if time.monotonic() - t < SETTLE_WAITED else 0
            time.sleep(SETTLE_GAP)

    def tree(self) -> int:
        """Start ``sleep`` as pid 1 of a new pid+net namespace; return its host pid."""
        from devtools.tree import start_tree  # the checkout's: make bench's editable install puts it on sys.path

        p, pid = start_tree("sleep", "1000000")
        self.popens.append(p)
        return self.adopt(pid)

    def adopt(self, pid: int) -> int:
        self.pids.add(pid)
        return pid

    def kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # ours as the child subreaper, or unshare's child (then reaped by it)
        self.pids.discard(pid)

    def reap(self) -> None:
        """Collect restored trees that died (a dump kills them; we are their subreaper)."""
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass

    def cleanup(self) -> None:
        for server in self.servers:
            server.terminate()  # a clean stop removes its runtime dir
            _wait_or_kill(server)
        for pid in list(self.pids):
            self.kill(pid)
        for p in self.popens:
            _wait_or_kill(p)
        for name in reversed(self.veths):
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        self.veths.clear()
        self.reap()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _wait_or_kill(proc: subprocess.Popen[Any]) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def add_macvlans(pid: int, parent: str, n: int) -> None:
    """N macvlans mv0..mv{N-1} (mode bridge, down) in the netns of ``pid``, by one ``ip -batch``.

    Down, so without IPv6 link-local addresses: the native lower bound (links stripped
    from the netdev image) must not find addresses of missing links in CRIU's ifaddr image.
    Their ifindexes start at ``IFINDEX_BASE``, far above the host's: CRIU (4.1.1 at least)
    sends its RTM_NEWLINK without NLM_F_EXCL, and a kernel that finds a link of the same
    ifindex in CRIU's own netns then takes it as a change of that link (EOPNOTSUPP).
    """
    sh("ip", "-batch", "-", stdin="".join(
        f"link add mv{i} link {parent} netns {pid} index {IFINDEX_BASE + i} type macvlan mode bridge\n"
        for i in range(n)))


def strip_macvlans(images: str) -> int:
    """Drop the MACVLAN entries from CRIU's netdev images: CRIU then restores everything but the links."""
    from criu_macvlan import images as img
    from criu_macvlan import netdev

    fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dropped = 0
        for name in netdev.netdev_images(fd):
            raw, entries = netdev.read_netdev(fd, name)
            keep = [r for r, e in zip(raw, entries, strict=True) if e.type != netdev.ND_MACVLAN]
            dropped += len(raw) - len(keep)
            img.write_atomic(fd, name, img.frame(netdev.NETDEV_MAGIC, keep))
        return dropped
    finally:
        os.close(fd)


def mappings(n: int, parent: str) -> dict[str, str]:
    return {f"mv{i}": parent for i in range(n)}


def externals(n: int, parent: str) -> list[str]:
    return [f"macvlan[{k}]:{v}" for k, v in mappings(n, parent).items()]


def log_tail(images: str, name: str) -> str:
    try:
        lines = Path(images, name).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-15:])


# ---------------------------------------------------------------------- paths


@dataclass
class PathSpec:
    """One way to dump and restore; ``dump_timed=False``: its dump only prepares the images."""

    group: str
    name: str
    dump: Callable[[int, str], None]
    restore: Callable[[str, int, str], int]  # (images, n, parent) -> restored pid
    dump_timed: bool = True
    native: bool = False
    prepare: Callable[[str], object] | None = None  # untimed, on the images before the restore
    fixup: Callable[[int, int, str], None] | None = None  # untimed, (pid, n, parent) after the restore
    probe: Callable[[], float | None] | None = None  # after a restore: seconds to record as op TO_FIRST
    only_n: int | None = None  # run at this N only


NO_SERVE = "/nonexistent/criu-macvlan-serve"  # CRIU_MACVLAN_SERVE_DIR of the cold paths


def criu_env(serve_dir: str = NO_SERVE) -> dict[str, str]:
    """CRIU's environment (its action scripts inherit it): the cold paths never find a ``serve`` helper."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRIU_MACVLAN_")}
    env["CRIU_MACVLAN_SERVE_DIR"] = serve_dir
    return env


def criu_cli(*args: str, images: str, logname: str, env: dict[str, str] | None = None) -> None:
    # -v3 (unless args say otherwise): the info lines that time the frozen window (see frozen_time)
    res = subprocess.run([CRIU, "-v3", *args, "-D", images, "-o", logname], capture_output=True, text=True,
                         check=False, env=env or criu_env())
    if res.returncode != 0:
        raise RuntimeError(f"criu {args[0]} failed ({res.returncode}):\n{log_tail(images, logname)}")


# The frozen window in CRIU's log (-v3 and up): dump, from the seize to the unfreeze (the tree is
# killed then); restore, from forking the root task to resuming the tree.
FROZEN_MARKS = {"dump": ("Seized task", "Unfreezing tasks"),
                "restore": ("Forking task with", "Restore finished successfully")}


def frozen_time(images: str, op: str) -> float | None:
    """Seconds the tree was frozen in ``op`` (``dump``/``restore``), from its log in ``images``; ``None``
    if the log does not say (an in-process path logs at CRIU's default level)."""
    first, last = FROZEN_MARKS[op]
    start = end = None
    with contextlib.suppress(OSError), open(os.path.join(images, f"{op}.log"), errors="replace") as f:
        for line in f:
            if start is None and first in line:
                start = float(line[1:line.index(")")])
            elif last in line:
                end = float(line[1:line.index(")")])
    return end - start if start is not None and end is not None and end >= start else None


def pidfile(images: str) -> str:
    return os.path.join(images, "restored.pid")


def pidfile_pid(images: str) -> int:
    return int(Path(pidfile(images)).read_text())


def cli_dump(pid: int, images: str, script: str | None = None, env: dict[str, str] | None = None) -> None:
    """``criu dump``, with ``script`` as its action script if given."""
    action = ["--action-script", script] if script else []
    criu_cli("dump", "-t", str(pid), *action, images=images, logname="dump.log", env=env)


def cli_restore(images: str, n: int, parent: str, script: str | None = None,
                env: dict[str, str] | None = None) -> int:
    """``criu restore -d`` of the N links onto ``parent``, with ``script`` as its action script if given."""
    action = ["--action-script", script] if script else []
    ext = [a for e in externals(n, parent) for a in ("--external", e)]
    criu_cli("restore", "-d", "--pidfile", pidfile(images), *action, *ext, images=images, logname="restore.log",
             env=env)
    return pidfile_pid(images)


def cli_native_dump(pid: int, images: str) -> None:
    cli_dump(pid, images)


def cli_script_dump(pid: int, images: str, env: dict[str, str] | None = None) -> None:
    cli_dump(pid, images, str(ACTION), env)


def cli_native_restore(images: str, n: int, parent: str) -> int:
    return cli_restore(images, n, parent)


def cli_script_restore(images: str, n: int, parent: str, env: dict[str, str] | None = None) -> int:
    return cli_restore(images, n, parent, str(ACTION), env)


class Served:
    """``criu --action-script`` with a ``criu-macvlan serve`` helper running (in a runtime dir of its own)."""

    def __init__(self, lab: Lab) -> None:
        self.dir = f"/run/criu-macvlan/bench-{os.getpid()}"
        # CRIU_MACVLAN_DEBUG for serve alone (its actions take the hook's environment): at exit it
        # says its peak RSS and its largest child's
        self.proc = subprocess.Popen([str(CLI), "serve", "--dir", self.dir], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "CRIU_MACVLAN_DEBUG": "1"})
        lab.servers.append(self.proc)
        lab.helpers.append(self)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "serving at" not in line:
            raise RuntimeError(f"criu-macvlan serve did not start: {line.strip()}")
        self.env = criu_env(self.dir)

    def dump(self, pid: int, images: str) -> None:
        cli_script_dump(pid, images, self.env)

    def restore(self, images: str, n: int, parent: str) -> int:
        return cli_script_restore(images, n, parent, self.env)

    def stop(self) -> tuple[int | None, int | None]:
        """Stop it; its peak RSS and its largest child's (bytes), as it says at exit."""
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        for line in err.splitlines():  # "criu-macvlan: serve: peak RSS <n> KiB, of a child <n> KiB"
            numbers = [int(w) for w in line.split() if w.isdigit()]
            if "peak RSS" in line and len(numbers) == 2:
                return numbers[0] * 1024, numbers[1] * 1024
        return None, None


def noop_script(lab: Lab) -> str:
    """A shell script that exits 0, as our shim is a shell script: CRIU's cost of running one per action."""
    path = os.path.join(lab.tmp, "noop-action")
    Path(path).write_text("#!/bin/sh\nexit 0\n")
    os.chmod(path, 0o755)
    return path


def cold_start_script(where: str) -> str:
    """The no-op script, but at the first ``setup-namespaces`` of each CRIU process (its parent) a
    cold start: the interpreter and :data:`COLD_IMPORTS`, where our hook runs (made in ``where``)."""
    imports = os.path.join(where, "cold_imports.py")
    Path(imports).write_text(COLD_IMPORTS + "\n")
    script = os.path.join(where, "cold-start.sh")
    Path(script).write_text(
        "#!/bin/sh\n"
        '[ "$CRTOOLS_SCRIPT_ACTION" = setup-namespaces ] || exit 0\n'
        f'mark="{where}/started.$PPID"\n'
        '[ -e "$mark" ] && exit 0  # a second delivery (runc), as our hook answers it from its marker\n'
        ': > "$mark"\n'
        f'exec "{sys.executable}" -s -P "{imports}"\n'
    )
    os.chmod(script, 0o755)
    return script


class Noop:
    """Native CRIU, with a no-op action script: the least any action-script design costs."""

    def __init__(self, lab: Lab) -> None:
        self.script = noop_script(lab)

    def dump(self, pid: int, images: str) -> None:
        cli_dump(pid, images, self.script)

    def restore(self, images: str, n: int, parent: str) -> int:
        return cli_restore(images, n, parent, self.script)


class ColdStart(Noop):
    """Native CRIU, with the no-op script that starts Python cold where our hook runs: the least a cold
    action script costs, side effects on CRIU's later steps included."""

    def __init__(self, lab: Lab) -> None:
        self.script = cold_start_script(lab.tmp)


def cold_floor_restore(images: str, n: int, parent: str) -> int:
    """A native restore plus, in series, a process that only imports what a cold hook needs: the cold
    imports timed apart from CRIU (the CLI's bound: it loads while CRIU starts)."""
    subprocess.run([sys.executable, "-s", "-P", "-c", COLD_IMPORTS], check=True, cwd="/", env=criu_env(),
                   stdin=subprocess.DEVNULL)
    return cli_native_restore(images, n, parent)


def ours_cli_restore(images: str, n: int, parent: str) -> int:
    maps = [a for k, v in mappings(n, parent).items() for a in ("--macvlan", f"{k}:{v}")]
    cmd = [str(CLI), "restore", "-D", images, "-d", "--pidfile", pidfile(images), "-o", "restore.log", *maps]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"criu-macvlan restore failed ({res.returncode}): {res.stderr.strip()}\n"
                           f"{log_tail(images, 'restore.log')}")
    return pidfile_pid(images)


class PycriuNative:
    """Plain pycriu over ``criu swrk``, no plugin: CRIU's own code handles the macvlans."""

    def __init__(self) -> None:
        import pycriu

        self.pycriu = pycriu

    def _criu(self, images: str, logname: str) -> tuple[Any, int]:
        c = self.pycriu.criu()
        c.use_binary(CRIU)
        fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
        c.opts.images_dir_fd = fd
        c.opts.log_file = logname
        return c, fd

    def dump(self, pid: int, images: str) -> None:
        c, fd = self._criu(images, "dump.log")
        try:
            c.opts.pid = pid
            c.dump()
        except self.pycriu.CRIUException as exc:
            raise RuntimeError(f"pycriu dump failed: {exc}\n{log_tail(images, 'dump.log')}") from exc
        finally:
            os.close(fd)

    def restore(self, images: str, n: int, parent: str) -> int:
        c, fd = self._criu(images, "restore.log")
        try:
            c.opts.external.extend(externals(n, parent))
            return int(c.restore().pid)
        except self.pycriu.CRIUException as exc:
            raise RuntimeError(f"pycriu restore failed: {exc}\n{log_tail(images, 'restore.log')}") from exc
        finally:
            os.close(fd)


class OurRpc:
    """criu-macvlan's RPC driver: CRIU's notifications run the plugin in this process.

    ``plugin=False``: the driver alone (every notification answered, no plugin):
    CRIU's own code dumps and makes the links, as with plain pycriu.
    """

    def __init__(self, plugin: bool = True) -> None:
        from criu_macvlan.rpc import Criu, Notify

        self.first: list[float] = []  # when CRIU's first notification of the restore came
        first = self.first

        class FirstNotify(Notify):
            def pre_restore(self) -> None:
                first.append(time.perf_counter())

        self.criu = Criu(criu_bin=CRIU, disable=() if plugin else ["macvlan"], notify=FirstNotify())
        self.to_first: float | None = None  # last restore: seconds from the call to CRIU's first notification

    def dump(self, pid: int, images: str) -> None:
        self.criu.dump(pid, images, log_file="dump.log")

    def restore(self, images: str, n: int, parent: str) -> int:
        self.first.clear()
        t0 = time.perf_counter()
        pid = self.criu.restore(images, mappings(n, parent), log_file="restore.log")
        self.to_first = self.first[0] - t0 if self.first else None
        return pid


def have_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def probe_native_restore(lab: Lab) -> str | None:
    """Can this CRIU + kernel restore a macvlan itself? ``None`` if yes, else CRIU's error."""
    parent, pid = lab.veth(), lab.tree()
    add_macvlans(pid, parent, 1)
    images = lab.dir("probe-")
    try:
        cli_native_dump(pid, images)
        lab.pids.discard(pid)
        lab.adopt(cli_native_restore(images, 1, parent))
    except RuntimeError as exc:
        errors = [ln.split("Error ", 1)[1] for ln in str(exc).splitlines() if "Error " in ln and "rlimit" not in ln]
        return "; ".join(errors[:2]) or str(exc)
    return None


def native_substitute(spec: PathSpec) -> PathSpec:
    """Restore the native images without their macvlans (CRIU cannot make them): a lower bound."""
    spec.prepare = strip_macvlans
    spec.fixup = lambda pid, n, parent: add_macvlans(pid, parent, n)
    return spec


def path_specs(groups: list[str], native_ok: bool, lab: Lab) -> list[PathSpec]:
    def nat(spec: PathSpec) -> PathSpec:
        return spec if native_ok else native_substitute(spec)

    specs: list[PathSpec] = []
    if "inproc" in groups:
        native = PycriuNative()
        specs.append(nat(PathSpec("inproc", "pycriu (native)", native.dump, native.restore, native=True)))
        if have_module("criu_macvlan.rpc"):
            ours, driver = OurRpc(), OurRpc(plugin=False)
            specs.append(PathSpec("inproc", "criu-macvlan RPC", ours.dump, ours.restore))
            specs.append(nat(PathSpec("inproc", DRIVER_ALONE, driver.dump, driver.restore,
                                      probe=lambda: driver.to_first)))
        else:
            log("criu_macvlan.rpc is not there yet: in-process group has only the native path")
    if "cmdline" in groups:
        specs.append(nat(PathSpec("cmdline", "criu (native)", cli_native_dump, cli_native_restore, native=True)))
        specs.append(nat(PathSpec("cmdline", COLD_FLOOR, cli_native_dump, cold_floor_restore, dump_timed=False,
                                  only_n=1)))
        noop, cold_start = Noop(lab), ColdStart(lab)
        specs.append(nat(PathSpec("cmdline", NOOP, noop.dump, noop.restore, native=True)))
        specs.append(nat(PathSpec("cmdline", COLD_START, cli_native_dump, cold_start.restore, dump_timed=False,
                                  only_n=1)))
        specs.append(PathSpec("cmdline", "criu --action-script", cli_script_dump, cli_script_restore))
        if CLI.exists() and have_module("criu_macvlan.cli"):
            specs.append(PathSpec("cmdline", "criu-macvlan CLI", cli_script_dump, ours_cli_restore, dump_timed=False))
            served = Served(lab)
            specs.append(PathSpec("cmdline", SERVED, served.dump, served.restore))
        else:
            log(f"{CLI} is not there yet: no CLI path")
    return specs


# ------------------------------------------------------------------ the chains


@dataclass
class Chain:
    spec: PathSpec
    parents: tuple[str, str]
    pid: int
    turn: int = 0


def run_chains(lab: Lab, specs: list[PathSpec], n: int, runs: int, warmup: bool, samples: Sample) -> None:
    chains = []
    for spec in specs:
        parents = (lab.veth(), lab.veth())
        pid = lab.tree()
        add_macvlans(pid, parents[0], n)
        chains.append(Chain(spec, parents, pid))
    total = runs + (1 if warmup else 0)
    for i in range(total):
        for chain in chains:
            spec = chain.spec
            images = lab.dir("img-")
            lab.settle(chain.parents[chain.turn])
            t0 = time.perf_counter()
            spec.dump(chain.pid, images)
            t1 = time.perf_counter()
            lab.pids.discard(chain.pid)
            lab.reap()
            chain.turn ^= 1
            parent = chain.parents[chain.turn]
            if spec.prepare is not None:
                spec.prepare(images)
            lab.settle(parent)
            t2 = time.perf_counter()
            new = lab.adopt(spec.restore(images, n, parent))
            t3 = time.perf_counter()
            chain.pid = new
            if spec.fixup is not None:
                spec.fixup(new, n, parent)
            frozen = {op: frozen_time(images, op) for op in (("dump", "restore") if spec.dump_timed else ("restore",))}
            shutil.rmtree(images, ignore_errors=True)
            if warmup and i == 0:
                continue
            ops = samples.setdefault(spec.group, {}).setdefault(spec.name, {})
            if spec.dump_timed:
                ops.setdefault("dump", {}).setdefault(str(n), []).append(t1 - t0)
            ops.setdefault("restore", {}).setdefault(str(n), []).append(t3 - t2)
            for op, seconds in frozen.items():
                if seconds is not None:
                    ops.setdefault(op + FROZEN, {}).setdefault(str(n), []).append(seconds)
            if spec.probe is not None and (value := spec.probe()) is not None:
                ops.setdefault(TO_FIRST, {}).setdefault(str(n), []).append(value)
        log(f"N={n} run {i + 1}/{total} done")
    for chain in chains:
        lab.kill(chain.pid)


# -------------------------------------------------------------- hooks alone


@dataclass
class HookStats:
    wall: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)  # bytes, from extra runs under /usr/bin/time


TIME = shutil.which("time") or "/usr/bin/time"


def run_hook(env: dict[str, str], argv: list[str] | None = None) -> float:
    """Run the shim once; return its wall time in seconds."""
    t0 = time.perf_counter()
    res = subprocess.run(argv or [str(ACTION)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"hook {env.get('CRTOOLS_SCRIPT_ACTION')} failed ({res.returncode}): "
                           f"{res.stderr.decode().strip()}")
    return wall


def hook_rss(env: dict[str, str], argv: list[str] | None = None) -> int | None:
    """Peak RSS (bytes) of one run, measured by GNU time: a child of ours would inherit our
    own high-water mark (the kernel keeps the larger of the pre-exec and post-exec mm)."""
    if not os.path.exists(TIME):
        return None
    with tempfile.NamedTemporaryFile("r") as out:
        cmd = [TIME, "-f", "%M", "-o", out.name, *(argv or [str(ACTION)])]
        quiet = subprocess.DEVNULL
        res = subprocess.run(cmd, env=env, stdin=quiet, stdout=quiet, stderr=quiet, check=False)
        text = out.read().strip().splitlines()
    return int(text[-1]) * 1024 if res.returncode == 0 and text and text[-1].isdigit() else None


def measure(st: HookStats, runs: int, env: dict[str, str], argv: list[str] | None = None) -> None:
    for _ in range(runs):
        st.wall.append(run_hook(env, argv))
    rss = hook_rss(env, argv)
    if rss is not None:
        st.rss.append(rss)


def hook_env(action: str, images: str, pid: int | None = None, config: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in criu_env().items() if not k.startswith("CRTOOLS_")}
    env.update(CRTOOLS_SCRIPT_ACTION=action, CRTOOLS_IMAGE_DIR=images)
    if pid is not None:
        env["CRTOOLS_INIT_PID"] = str(pid)
    if config is not None:
        env["CRIU_MACVLAN_CONFIG"] = config
    return env


# CRIU's stand-in: it holds the images dir as fd 9 and runs each hook as its own child, as
# CRIU does (the per-dump helper serves only the hooks whose parent is its CRIU process).
STAND_IN = """
import json, os, subprocess, sys, time
os.dup2(os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY), 9)
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    t0 = time.perf_counter()
    res = subprocess.run(req["argv"], env=req["env"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall": wall, "rc": res.returncode, "err": res.stderr.decode(errors="replace")}), flush=True)
"""


class StandInCriu:
    """A process standing in for CRIU: hooks get ``/proc/<it>/fd/9`` and run as its children."""

    def __init__(self, images: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", STAND_IN, images], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid
        self.images = f"/proc/{self.pid}/fd/9"

    def run_hook(self, env: dict[str, str]) -> float:
        """Run the shim once as our child; its wall time in seconds."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": [str(ACTION)], "env": env}) + "\n")
        self.proc.stdin.flush()
        res = json.loads(self.proc.stdout.readline())
        if res["rc"] != 0:
            raise RuntimeError(f"hook {env.get('CRTOOLS_SCRIPT_ACTION')} failed ({res['rc']}): {res['err'].strip()}")
        return float(res["wall"])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def helper_hwm(criu_pid: int) -> int | None:
    """Peak RSS (bytes) of the warm helper of ``criu_pid`` so far, if there is one."""
    from criu_macvlan.rundir import per_dump_dir

    try:
        pid = Path(per_dump_dir(criu_pid), "pid").read_text().strip()
    except OSError:
        return None
    return process_hwm(int(pid))


def process_hwm(pid: int) -> int | None:
    """Peak RSS (bytes) of process ``pid`` so far."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:")), None)
    return int(kib) * 1024 if kib is not None and kib.isdigit() else None


def bench_hooks(lab: Lab, ns: list[int], runs: int, stats: dict[str, dict[str, HookStats]]) -> None:
    empty = lab.dir("empty-")
    many = max(runs, 20)
    for _ in range(3):  # warm the page cache and the shim's handled-actions cache
        run_hook(hook_env("pre-restore", empty))
    for label, argv in (("spawn /bin/true (baseline)", ["/bin/true"]), (f"unhandled ({UNHANDLED_ACTION})", None)):
        measure(stats.setdefault(label, {}).setdefault("1", HookStats()), many, hook_env(UNHANDLED_ACTION, empty), argv)
    # where the cold start goes: the bound's imports, one library more at a time (alternating)
    for _ in range(many):
        for label, code in COLD_STEPS:
            st = stats.setdefault(f"cold start: {label}", {}).setdefault("1", HookStats())
            st.wall.append(run_hook(criu_env(), [sys.executable, "-s", "-P", "-c", code + "; os._exit(0)"]))
    for n in ns:
        parent = lab.veth()
        pid = lab.tree()
        add_macvlans(pid, parent, n)
        conf = os.path.join(lab.tmp, f"maps-{n}.conf")
        Path(conf).write_text("".join(f"external {e}\n" for e in externals(n, parent)))
        # pre-dump: read the live netns, stage the sidecar
        staged_dir = lab.dir("pre-")
        measure(stats.setdefault("pre-dump", {}).setdefault(str(n), HookStats()), runs,
                hook_env("pre-dump", staged_dir, pid))
        # a native dump (tree keeps running) + the stage: what post-dump finds in a real dump
        template = lab.dir("post-")
        criu_cli("dump", "-t", str(pid), "--leave-running", images=template, logname="dump.log")
        shutil.copy(os.path.join(staged_dir, ".criu-macvlan.staged"), template)
        # As in a real dump: CRIU (a stand-in holding the images dir) runs pre-dump
        # (untimed: before the freeze; it leaves the warm helper) and then post-dump.
        # "no warm helper": post-dump alone, a Python start of its own.
        restorable = ""
        for i in range(runs + 1):  # the last run under /usr/bin/time, for the RSS
            for label, warm in (("post-dump", True), ("post-dump (no warm helper)", False)):
                st = stats.setdefault(label, {}).setdefault(str(n), HookStats())
                work = lab.dir("postrun-")
                shutil.copytree(template, work, dirs_exist_ok=True)
                criu = StandInCriu(work)
                try:
                    if warm:
                        criu.run_hook(hook_env("pre-dump", criu.images, pid))
                    env = hook_env("post-dump", criu.images, pid)
                    if i < runs:
                        st.wall.append(criu.run_hook(env))
                    elif (rss := hook_rss(env)) is not None:
                        st.rss.append(rss)
                    if warm and (hwm := helper_hwm(criu.pid)) is not None:
                        st.rss.append(hwm)  # the helper ran post-dump: its memory counts
                finally:
                    criu.close()
                if restorable or not warm:
                    shutil.rmtree(work)
                else:
                    restorable = work
        lab.kill(pid)
        # setup-namespaces: recreate the links in a fresh netns from the committed images
        st = stats.setdefault("setup-namespaces", {}).setdefault(str(n), HookStats())
        for i in range(runs + 1):
            fresh = lab.tree()
            env = hook_env("setup-namespaces", restorable, fresh, conf)
            if i < runs:
                st.wall.append(run_hook(env))
            elif (rss := hook_rss(env)) is not None:
                st.rss.append(rss)
            lab.kill(fresh)
        log(f"hooks alone N={n} done")


# -------------------------------------------------------------------- report


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:  # a row with a memory reading only
        return {"median": None, "min": None, "max": None, "runs": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    version = subprocess.run([CRIU, "--version"], capture_output=True, text=True, check=False).stdout
    return {
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "cpu": cpu,
        "criu": version.split("Version:", 1)[-1].split()[0] if "Version:" in version else version.strip(),
        "python": platform.python_version(),
        "mem_total": next((ln.split(":")[1].strip() for ln in Path("/proc/meminfo").read_text().splitlines()
                           if ln.startswith("MemTotal")), "unknown"),
    }


def build_rows(samples: Sample) -> list[dict[str, Any]]:
    rows = []
    for group, paths in samples.items():
        native = next((p for p in paths if "(native" in p), None)
        for path, ops in paths.items():
            for op, by_n in ops.items():
                for n, values in sorted(by_n.items(), key=lambda kv: int(kv[0])):
                    s = summary(values)
                    base = samples[group].get(native or "", {}).get(op, {}).get(n) if native else None
                    ratio = statistics.median(values) / statistics.median(base) if base else None
                    rows.append({"group": group, "path": path, "op": op, "n": int(n), **s, "ratio": ratio})
    return rows


def median_of(samples: Sample, group: str, path: str, op: str, n: int) -> float | None:
    values = samples.get(group, {}).get(path, {}).get(op, {}).get(str(n))
    return statistics.median(values) if values else None


def target(name: str, value: float | None, limit: float, unit: str, detail: str = "") -> dict[str, Any]:
    met = None if value is None else value <= limit
    return {"target": name, "value": value, "limit": limit, "unit": unit, "met": met, "detail": detail}


def build_targets(samples: Sample, hooks: dict[str, dict[str, HookStats]]) -> list[dict[str, Any]]:
    out = []

    def ratio(group: str, path: str, native: str, op: str, n: int) -> float | None:
        a, b = median_of(samples, group, path, op, n), median_of(samples, group, native, op, n)
        return a / b if a is not None and b else None

    for op in ("restore", "dump"):
        for n in (1, 100):
            limit = 1.03 if (op, n) == ("restore", 1) else 1.05
            out.append(target(f"in-process RPC {op}, N={n}",
                              ratio("inproc", "criu-macvlan RPC", "pycriu (native)", op, n), limit, "x native"))
    def per_link(path: str) -> float | None:
        hi, lo = (median_of(samples, "cmdline", path, "restore", n) for n in (1000, 1))
        return (hi - lo) / 999 if hi is not None and lo is not None else None

    def over_bound(name: str, value: float | None, bound: float | None, margin: float, what: str) -> dict[str, Any]:
        """A target held against a bound (``margin`` x it): what our path adds on top of what no design avoids."""
        if bound is None:
            return target(name, value, margin, "x native", f"{what} not measured: limit {margin} x native")
        detail = f"{value / bound:.2f} x {what}, {bound:.3f} x native" if value is not None else ""
        return target(name, value, round(margin * bound, 3), "x native",
                      f"{detail}; limit {margin} x {what}".lstrip("; "))

    nat = per_link("criu (native)")
    for path, how in (("criu --action-script", "cold"), (SERVED, "criu-macvlan serve running")):
        value = ratio("cmdline", path, "criu (native)", "restore", 1)
        if how == "cold":
            out.append(over_bound(f"action script restore, N=1 ({how})", value, cold_script_bound(samples), 1.05,
                                  "the cold bound"))
        else:  # no action script costs less than any action script: the serve targets are held against that
            for op, n, margin in (("restore", 1, 1.1), ("restore", 100, 1.05), ("dump", 1, 1.2)):
                out.append(over_bound(f"action script {op}, N={n} ({how})",
                                      ratio("cmdline", path, "criu (native)", op, n),
                                      any_script_bound(samples, op, n), margin, "the any-action-script bound"))
        ours = per_link(path)
        out.append(target(f"action script restore per-link cost, N=1000 ({how})",
                          ours / nat if ours is not None and nat else None, 1.2, "x native",
                          f"ours {ours * 1e3:.3f} ms/link, native {nat * 1e3:.3f} ms/link"
                          if ours is not None and nat is not None else ""))
    out.append(target("criu-macvlan CLI restore, N=1",
                      ratio("cmdline", "criu-macvlan CLI", "criu (native)", "restore", 1), 1.5, "x native"))
    un = hooks.get(f"unhandled ({UNHANDLED_ACTION})", {}).get("1")
    out.append(target("unhandled action (shim alone)", statistics.median(un.wall) * 1e3 if un else None, 3.0, "ms"))
    for key, st in sorted(hooks.get("post-dump", {}).items(), key=lambda kv: int(kv[0])):
        limit = 30 + 0.2 * int(key)
        out.append(target(f"post-dump, N={key}", statistics.median(st.wall) * 1e3, limit, "ms"))
    rss = [r for label, by_n in hooks.items() if not label.startswith("spawn") for st in by_n.values() for r in st.rss]
    out.append(target("hook peak RSS", max(rss) / MiB if rss else None, 60.0, "MiB"))
    return out


def judged_targets(samples: Sample, hooks: dict[str, dict[str, HookStats]]) -> list[dict[str, Any]]:
    """:func:`build_targets`, each target judged from the samples with the share of resamples of
    its rounds in which it is met (``met_share``; ``None`` for the hooks' own targets)."""
    from benchmarks.resample import met_shares  # the checkout's: make bench's editable install puts it on sys.path

    shares = met_shares(samples, lambda resampled: build_targets(resampled, {}))
    return [{**t, "met_share": shares.get(t["target"])} for t in build_targets(samples, hooks)]


DOWNTIME_RUNS = 5  # demo migrations per path in a full run (and a quick one)


def measure_downtime(runs: int) -> dict[str, Any]:
    """The demo's live migration, criu-macvlan (RPC, action script) vs native CRIU, alternating: medians of
    the client-observed downtime and the frozen time (``python -m demo --compare``)."""
    from demo import compare

    log(f"downtime: the demo's migration, {runs} run(s) per path ({', '.join(compare.PATHS)})")
    reports = compare.measure(runs, shutil.which("criu") or "criu", log)
    return {"runs": runs, "summary": compare.summarize(reports), "table": compare.table(reports),
            "samples": {p: [[r.downtime_ms, r.freeze_ms, r.restore_ms] for r in rs] for p, rs in reports.items()}}


def downtime_targets(downtime: dict[str, Any] | None) -> list[dict[str, Any]]:
    if downtime is None:
        return []
    s = downtime["summary"]
    return [target("client-observed downtime over RPC (the demo's migration)", s["rpc_downtime_ratio"], 1.1,
                   "x native", f"ours {s['rpc_downtime_ms']:.1f} ms, native {s['native_downtime_ms']:.1f} ms, "
                   f"medians of {downtime['runs']}")]


def script_cost(samples: Sample, op: str, n: int) -> float | None:
    """Seconds a no-op action script adds to a native ``op``; ``None`` if not measured."""
    a, b = (median_of(samples, "cmdline", p, op, n) for p in (NOOP, "criu (native)"))
    return a - b if a is not None and b is not None else None


def any_script_bound(samples: Sample, op: str, n: int) -> float | None:
    """The least any action script can cost at N=n, x native: native with a no-op script (never below native)."""
    cost, native = script_cost(samples, op, n), median_of(samples, "cmdline", "criu (native)", op, n)
    return 1 + max(0.0, cost) / native if cost is not None and native else None


def cold_script_bound(samples: Sample, n: int = 1) -> float | None:
    """The least a cold action script can cost at N=n, x native: native CRIU running the no-op script
    that starts Python cold at ``setup-namespaces`` (never below native)."""
    a, b = (median_of(samples, "cmdline", p, "restore", n) for p in (COLD_START, "criu (native)"))
    return max(1.0, a / b) if a is not None and b else None


def build_bounds(samples: Sample) -> list[dict[str, Any]]:
    """What no design that starts Python cold can beat on this machine, measured in the same alternation as the
    paths: a cold action script costs at least native + the cold imports; a cold CLI, that less CRIU's time to its
    first notification (it loads while CRIU starts)."""
    out = []
    for op in ("restore", "dump"):
        for n in (1, 100):
            cost, bound = script_cost(samples, op, n), any_script_bound(samples, op, n)
            if cost is not None and bound is not None:
                out.append({"bound": f"any action script {op}, N={n}", "value": bound, "unit": "x native",
                            "detail": f"native {op} with a no-op action script: {cost * 1e3:+.1f} ms "
                                      "(CRIU forks and execs it for every action)"})
    for n in sorted({int(k) for k in samples.get("cmdline", {}).get(COLD_FLOOR, {}).get("restore", {})}):
        a, b = (median_of(samples, "cmdline", p, "restore", n) for p in (COLD_FLOOR, "criu (native)"))
        if a is None or not b:
            continue
        bound = cold_script_bound(samples, n)
        if bound is not None:
            script = max(0.0, script_cost(samples, "restore", n) or 0.0)
            out.append({"bound": f"cold action script restore, N={n}", "value": bound, "unit": "x native",
                        "detail": f"native restore, its no-op script starting Python cold at setup-namespaces: "
                                  f"+{(bound - 1) * b * 1e3:.1f} ms; of that, the cold imports timed apart: "
                                  f"{(a - b) * 1e3:.1f} ms, any action script: {script * 1e3:.1f} ms"})
        first = median_of(samples, "inproc", DRIVER_ALONE, TO_FIRST, n)
        if first is not None:  # the CLI loads while CRIU starts, and must be ready at its first notification
            out.append({"bound": f"CLI restore, N={n}", "value": 1 + max(0.0, a - b - first) / b, "unit": "x native",
                        "detail": f"the cold imports ({(a - b) * 1e3:.1f} ms) less CRIU's time to its first "
                                  f"notification ({first * 1e3:.1f} ms), on top of native"})
    return out


def fmt_s(x: float) -> str:
    return f"{x * 1e3:.1f}" if x < 10 else f"{x:.2f} s"


def runs_text(config: dict[str, Any]) -> str:
    runs, small = config["runs"], config.get("runs_small_n", config["runs"])
    return f"{runs} runs per path" + (f" ({small} at N <= {SMALL_N})" if small != runs else "")


def render_md(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# criu-macvlan vs native CRIU",
        "",
        f"- date: {data['date']}",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_total']}, kernel {m['kernel']}, "
        f"criu {m['criu']}, Python {m['python']}",
        f"- N = {', '.join(map(str, data['config']['ns']))} macvlans in one netns; {runs_text(data['config'])}, "
        "paths alternating; times in ms, median (min-max); ratio = median / native median.",
        "",
        *([f"- **native CRIU cannot restore a macvlan on this kernel** ({data['native_restore_error']}); every "
           "native *restore* here restores the same images without their macvlan entries (CRIU makes no link; "
           "links re-added untimed afterwards): a lower bound of native, so restore ratios overstate our "
           "overhead. Native dumps are real.", ""] if data.get("native_restore_error") else []),
        "## Targets",
        "",
        "*met in resamples*: the share of 1000 bootstrap resamples of this run's alternation rounds in which "
        "the target is met (around 50 %: this run cannot tell; see docs/performance.md, Noise).",
        "",
        "| target | value | limit | met | met in resamples |",
        "|---|---|---|---|---|",
    ]
    for t in data["targets"]:
        value = "not measured" if t["value"] is None else f"{t['value']:.3f} {t['unit']}"
        met = {True: "met", False: "**not met**", None: "-"}[t["met"]]
        detail = f" ({t['detail']})" if t["detail"] else ""
        share = "-" if t.get("met_share") is None else f"{t['met_share']:.0%}"
        lines.append(f"| {t['target']} | {value}{detail} | {t['limit']:g} {t['unit']} | {met} | {share} |")
    if data.get("bounds"):
        lines += ["", "## Bounds", "",
                  "The least a design can cost here. Any action script: native CRIU running a shell script "
                  "that exits 0 for every action (CRIU forks and execs it each time; our shim is such a "
                  "script), in the same alternation. "
                  "The cold imports: a process that only starts the interpreter and imports pluggy, "
                  "protobuf with the sidecar's and CRIU's netdev schemas, and pyroute2's netlink layer, of "
                  "criu-macvlan only its loaders (no other module of ours, no hook runs). A cold action "
                  "script: native CRIU running the no-op script, which starts that process at "
                  "`setup-namespaces`, where our hook runs, in the same alternation; so "
                  "the bound includes what a cold start there costs CRIU's later steps. A CLI: the cold "
                  "imports timed apart, after a native restore; it needs at least that before CRIU's "
                  "first notification.", "",
                  "| bound | value |", "|---|---|"]
        for b in data["bounds"]:
            lines.append(f"| {b['bound']} | {b['value']:.3f} {b['unit']} ({b['detail']}) |")
    if data.get("downtime"):
        d = data["downtime"]
        lines += ["", "## Downtime (the demo's live migration)", "",
                  f"`python -m demo --compare {d['runs']}`: the demo's TCP service moved from host A's "
                  "NIC to host B's, criu-macvlan over RPC (`rpc`) and with the action script (`cli`) vs native "
                  "CRIU (the service's macvlan gets an ifindex free on the host, so that native CRIU can restore "
                  "it); paths alternating. Client-observed downtime: the longest wait for a reply over the one "
                  "TCP connection (it moves in steps of the client's TCP retransmission timeout). "
                  "Medians (min-max), ms:", "", "```", *d["table"], "```"]
    titles = {"inproc": "In-process (one Python process, RPC)", "cmdline": "Command line (whole processes)"}
    frozen = {(r["group"], r["path"], r["op"][:-len(FROZEN)], r["n"]): r["median"]
              for r in data["rows"] if r["op"].endswith(FROZEN)}
    memory = {row["path"]: row for row in data.get("helper_memory", [])}
    for group in ("inproc", "cmdline"):
        rows = [r for r in data["rows"] if r["group"] == group and not r["op"].endswith(FROZEN)]
        if not rows:
            continue
        lines += ["", f"## {titles[group]}", "",
                  "| op | N | path | median ms | min-max ms | ratio | frozen ms | helper peak RSS MiB |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["op"] != "restore", r["n"], "(native" not in r["path"], r["path"])):
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            still = frozen.get((group, r["path"], r["op"], r["n"]))
            mem = memory.get(r["path"])
            rss = "-" if mem is None else f"{mem['own'] / MiB:.1f}; child {mem['child'] / MiB:.1f}"
            lines.append(f"| {r['op']} | {r['n']} | {r['path']} | {r['median'] * 1e3:.1f} | "
                         f"{r['min'] * 1e3:.1f}-{r['max'] * 1e3:.1f} | {ratio} | "
                         f"{'-' if still is None else f'{still * 1e3:.1f}'} | {rss} |")
    lines += ["", "frozen ms: median time the tree is frozen, from CRIU's log: a dump from seizing the tree to "
              "unfreezing it, a restore from forking its root task to resuming it. Helper peak RSS: "
              "`criu-macvlan serve` and the largest of its children (which share its pages), over the whole run."]
    lines += ["", "## Hooks alone (the shim, outside CRIU)", "",
              "| action | N | median ms | min-max ms | peak RSS MiB | runs |", "|---|---|---|---|---|---|"]
    for h in data["hooks"]:
        rss = "-" if h["rss_max"] is None else f"{h['rss_max'] / MiB:.1f}"
        if h["median"] is None:
            lines.append(f"| {h['action']} | {h['n']} | - | - | {rss} | - |")
            continue
        lines.append(f"| {h['action']} | {h['n']} | {h['median'] * 1e3:.2f} | {h['min'] * 1e3:.2f}-"
                     f"{h['max'] * 1e3:.2f} | {rss} | {h['runs']} |")
    lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e .[bench]): no plot")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    every = sorted({(r["group"], r["path"]) for r in data["rows"]})
    colors = {key: f"C{i}" for i, key in enumerate(every)}  # one color per path in both plots
    for ax, op in zip(axes, ("restore", "dump"), strict=True):
        keys = sorted({(r["group"], r["path"]) for r in data["rows"] if r["op"] == op})
        for group, name in keys:
            rows = sorted((r for r in data["rows"] if (r["group"], r["path"], r["op"]) == (group, name, op)),
                          key=lambda r: r["n"])
            xs = [r["n"] for r in rows]
            ys = [r["median"] for r in rows]
            err = [[r["median"] - r["min"] for r in rows], [r["max"] - r["median"] for r in rows]]
            style = "--" if "(native" in name else "-"
            ax.errorbar(xs, ys, yerr=err, fmt=style + "o", capsize=3, label=f"{group}: {name}",
                        color=colors[(group, name)])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("macvlans in the netns (N)")
        ax.set_ylabel("seconds (median, min-max)")
        ax.set_title(op)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = data["machine"]
    fig.suptitle(f"criu-macvlan vs native CRIU {m['criu']} - {m['nproc']} CPUs, kernel {m['kernel']}, {data['date']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------- main


def compile_package() -> None:
    """Byte-compile criu_macvlan as ``pip install`` does: with PYTHONDONTWRITEBYTECODE set (as in
    this project's shells), a checkout has no .pyc and every hook would compile its modules anew."""
    import compileall

    compileall.compile_dir(str(REPO / "criu_macvlan"), quiet=1)


def run(ns: list[int], runs: int, groups: list[str], out: str, warmup: bool = True,
        small_runs: int | None = None) -> dict[str, Any]:
    """``small_runs``: runs per path at N <= SMALL_N, the N of the ratio targets (default ``runs``)."""
    small_runs = small_runs or runs
    compile_package()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # restored trees become ours to reap
    samples: Sample = {}
    hooks: dict[str, dict[str, HookStats]] = {}
    helper_memory: list[dict[str, Any]] = []
    native_error: str | None = None
    started = time.monotonic()
    lab = Lab()
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        native_error = probe_native_restore(lab) if {"inproc", "cmdline"} & set(groups) else None
        if native_error:
            log(f"native CRIU cannot restore a macvlan here ({native_error}): native restores run on "
                "images without the macvlan entries (a lower bound), links re-added untimed")
        specs = path_specs(groups, native_error is None, lab)
        for n in ns:
            run_chains(lab, [s for s in specs if s.only_n in (None, n)], n, small_runs if n <= SMALL_N else runs,
                       warmup and n == ns[0], samples)
        for helper in lab.helpers:  # criu-macvlan serve's memory counts as the hook's (its children share it)
            hwm = process_hwm(helper.proc.pid)
            own, child = helper.stop()
            own = own or hwm
            for label, value in (("criu-macvlan serve (the helper)", own), ("its largest child", child)):
                if value is not None:
                    hooks.setdefault(label, {}).setdefault("1", HookStats()).rss.append(value)
            if own is not None and child is not None:
                helper_memory.append({"path": SERVED, "own": own, "child": child})
        if "actions" in groups:
            bench_hooks(lab, ns, runs, hooks)
    finally:
        lab.cleanup()
        for s, h in previous.items():
            signal.signal(s, h)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    downtime = measure_downtime(max(DOWNTIME_RUNS, runs) if warmup else runs) if "downtime" in groups else None
    hook_rows = [
        {"action": label, "n": int(n), **summary(st.wall), "rss_max": max(st.rss, default=None), "wall": st.wall,
         "rss": st.rss}
        for label, by_n in hooks.items() for n, st in sorted(by_n.items(), key=lambda kv: int(kv[0]))
    ]
    data: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "config": {"ns": ns, "runs": runs, "runs_small_n": small_runs, "groups": groups,
                   "seconds": round(time.monotonic() - started, 1)},
        "native_restore_error": native_error,
        "targets": judged_targets(samples, hooks) + downtime_targets(downtime),
        "downtime": downtime,
        "bounds": build_bounds(samples),
        "helper_memory": helper_memory,
        "rows": build_rows(samples),
        "hooks": hook_rows,
        "samples": samples,
    }
    os.makedirs(out, exist_ok=True)
    Path(out, "latest.json").write_text(json.dumps(data, indent=1) + "\n")
    Path(out, "latest.md").write_text(render_md(data))
    plot(data, os.path.join(out, "latest.png"))
    return data


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=1,10 and 3 runs (smoke check)")
    ap.add_argument("--smallest", action="store_true", help="N=1 and 1 run, no warm-up (the test suite's mode)")
    ap.add_argument("-n", "--ns", type=lambda s: [int(x) for x in s.split(",")], help="comma-separated N values")
    ap.add_argument("-r", "--runs", type=int, help="runs per path")
    ap.add_argument("--runs-small", type=int,
                    help=f"runs per path at N <= {SMALL_N} (default: 31 in a full run, else --runs)")
    ap.add_argument("-g", "--groups", default="inproc,cmdline,actions,downtime", help="inproc,cmdline,actions,downtime")
    ap.add_argument("-o", "--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    ns, runs, small_runs, warmup = [1, 10, 100, 1000], 15, 31, True
    if args.quick:
        ns, runs, small_runs = [1, 10], 3, 3
    if args.smallest:
        ns, runs, small_runs, warmup = [1], 1, 1, False
    if args.runs:
        runs = small_runs = args.runs
    ns, small_runs = args.ns or ns, args.runs_small or small_runs
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, links, criu)", file=sys.stderr)
        return 2
    data = run(ns, runs, args.groups.split(","), args.out, warmup, small_runs)
    sys.stdout.write(render_md(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
