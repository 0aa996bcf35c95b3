"""The process tree that tests, benchmarks and the demo dump: a command as pid 1 of new namespaces."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def start_tree(*cmd: str, net: bool = True, pass_fds: tuple[int, ...] = (),
               timeout: float = 10.0) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``cmd`` as pid 1 of a new pid namespace (and net namespace unless ``net`` is false),
    in a session of its own: CRIU dumps a session leader's tree whole.

    Returns the ``unshare`` process (the caller waits for it once the tree is gone) and the
    tree's pid on the host, once ``cmd`` runs: its namespaces are the new ones by then.
    Raises ``RuntimeError`` if it does not run within ``timeout`` seconds (nothing is left then).
    """
    unshare = ["unshare", "--pid", *(["--net"] if net else []), "--fork", "setsid", *cmd]
    proc = subprocess.Popen(unshare, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, pass_fds=pass_fds)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + timeout
    pid = 0
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError, IndexError):  # not forked yet, or gone
            pid = pid or int(children.read_text().split()[0])
            # unshare's child runs setsid, which runs cmd: wait until it is cmd
            if Path(f"/proc/{pid}/comm").read_text().strip() not in ("unshare", "setsid"):
                return proc, pid
        time.sleep(0.002)
    for victim in (pid, proc.pid):
        if victim:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
    proc.wait()
    raise RuntimeError(f"{' '.join(cmd) or 'the tree'} did not start in new namespaces")
