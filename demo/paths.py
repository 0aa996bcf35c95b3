"""The ways the demo runs CRIU: criu-macvlan's RPC driver, plain criu with the action script, native CRIU."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from criu_macvlan import rpc

from .ui import DemoError, detail, say

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Criu:
    """How the demo runs CRIU.

    ``dump(pid, dir)``; ``restore(dir, mappings) -> pid``. The plugin announces the
    restored MAC itself (docs/announce.md), before the service resumes.
    """

    name: str
    dump: Callable[[int, Path], None]
    restore: Callable[[Path, dict[str, str]], int]


def action_script() -> str:
    """The installed ``criu-macvlan-action`` next to this Python, else the checkout's."""
    installed = Path(sys.prefix) / "bin" / "criu-macvlan-action"
    if installed.exists():
        return str(installed)
    return str(REPO / "hooks" / "criu-macvlan-action")


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(f"      | {line}" for line in tail)


COMPAT_SRC = REPO / "scripts" / "criu-sockopt-compat.c"


def criu_version(criu_bin: str) -> tuple[int, ...]:
    res = subprocess.run([criu_bin, "--version"], capture_output=True, text=True, check=False)
    for line in res.stdout.splitlines():
        if line.startswith("Version:"):
            return tuple(int(p) for p in line.split()[1].split(".") if p.isdigit())
    return ()


def kernel_refuses_passcred() -> bool:
    """Linux >= 6.16: SO_PASSCRED on an INET socket is EOPNOTSUPP (criu 4.1 cannot dump it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
        except OSError:
            return True
    return False


def criu_compat_env(criu_bin: str, workdir: Path) -> dict[str, str]:
    """Environment criu needs on this box: ``LD_PRELOAD`` of scripts/criu-sockopt-compat.c, or nothing."""
    version = criu_version(criu_bin)
    if version >= (4, 2) or not kernel_refuses_passcred():
        return {}
    shown = ".".join(map(str, version)) or "?"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not COMPAT_SRC.exists():
        raise DemoError(f"criu {shown} cannot dump TCP sockets on Linux {os.uname().release} (fixed in criu 4.2); "
                        "install criu >= 4.2, or a C compiler for the compat shim")
    lib = workdir / "criu-sockopt-compat.so"
    res = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(COMPAT_SRC), "-ldl"],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise DemoError(f"cannot build the criu compat shim: {res.stderr.strip().splitlines()[-1:]}")
    detail(f"criu {shown} cannot dump TCP sockets on Linux {os.uname().release} (fixed in criu 4.2): "
           f"running it with LD_PRELOAD={lib.name}")
    return {"LD_PRELOAD": str(lib)}


def _criu_binary(name: str, criu_bin: str, env: dict[str, str], extra: list[str]) -> Criu:
    """The ``criu`` binary run once per dump and restore, with ``extra`` options."""

    def run(args: list[str], images_dir: Path, log: str) -> None:
        cmd = [criu_bin, *args, "-D", str(images_dir), "-v4", "-o", log, "--tcp-established", *extra]
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
                             env={**os.environ, **env})
        if res.returncode != 0:
            say(_log_tail(images_dir / log))
            raise DemoError(f"criu {args[0]} failed (exit {res.returncode}), see {images_dir / log}")

    def dump(pid: int, images_dir: Path) -> None:
        run(["dump", "-t", str(pid)], images_dir, "dump.log")

    def restore(images_dir: Path, mappings: dict[str, str]) -> int:
        pidfile = images_dir / "restored.pid"
        externals = [f"--external=macvlan[{k}]:{v}" for k, v in mappings.items()]
        run(["restore", "-d", "--pidfile", str(pidfile), *externals], images_dir, "restore.log")
        return int(pidfile.read_text())

    return Criu(name, dump, restore)


def criu_cli(criu_bin: str, env: dict[str, str]) -> Criu:
    """Plain ``criu`` with ``--action-script criu-macvlan-action``."""
    return _criu_binary("cli", criu_bin, env, ["--action-script", action_script()])


def criu_native(criu_bin: str, env: dict[str, str]) -> Criu:
    """Plain ``criu`` without criu-macvlan: CRIU dumps and restores the macvlan itself (``--compare``)."""
    return _criu_binary("native", criu_bin, env, [])


def criu_rpc(criu_bin: str, env: dict[str, str]) -> Criu:
    """criu-macvlan's RPC driver: CRIU's notifications run the plugin hooks in this process."""
    driver = rpc.Criu(criu_bin=criu_bin, env={**os.environ, **env})

    def dump(pid: int, images_dir: Path) -> None:
        driver.dump(pid, str(images_dir), tcp_established=True, log_file="dump.log", log_level=4)

    def restore(images_dir: Path, mappings: dict[str, str]) -> int:
        return driver.restore(str(images_dir), mappings, tcp_established=True, log_file="restore.log", log_level=4)

    return Criu("rpc", dump, restore)


def criu_stats(images_dir: Path, kind: str) -> dict[str, int]:
    """CRIU's own timings (stats-dump.img / stats-restore.img), in microseconds."""
    try:
        import pycriu.images

        with open(images_dir / f"stats-{kind}", "rb") as f:
            entry: dict[str, int] = pycriu.images.load(f)["entries"][0][kind]
        return entry
    except (OSError, ImportError, KeyError, IndexError):
        return {}

