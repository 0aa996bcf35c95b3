"""The cause of a CRIU failure, picked from real CRIU logs (tests/criu-logs/, made by failing runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import CRIU, Procs, wait_unshared

from criu_macvlan import criulog
from criu_macvlan.errors import ExitCode
from criu_macvlan.request import resp_error, rpc_pb2

LOGS = Path(__file__).resolve().parent / "criu-logs"
SESSION = "The root process {} is not a session leader. Consider using --shell-job option"
BIND = "inet: Can't bind inet socket (id 26): Address already in use"


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        # criu-macvlan dump of `unshare --net sleep` (not a session leader), default log level and -v4
        ("dump-not-session-leader.log", SESSION.format(7464)),
        ("dump-not-session-leader-v4.log", SESSION.format(7464)),
        # criu-macvlan restore of a listener whose port another process holds: the restored
        # task's errors come indented behind its pid ("     1: Error (...)")
        ("restore-eaddrinuse.log", BIND),
        ("restore-eaddrinuse-v4.log", BIND),
    ],
)
def test_cause_from_real_logs(log: str, expected: str) -> None:
    text = (LOGS / log).read_text()
    errors = [m for m in map(criulog.error_message, text.splitlines()) if m is not None]
    assert errors[0].startswith("rlimit: Can't setup RLIMIT_NOFILE")  # CRIU's first error is not the cause
    assert errors[-1] in ("Dumping FAILED.", "Restoring FAILED.")  # nor is its last
    assert criulog.cause(text) == expected


def test_no_cause_in_noise_alone() -> None:
    text = ("Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n"
            "Error (criu/cr-restore.c:2320): Restoring FAILED.\n")
    assert criulog.cause(text) is None
    assert criulog.cause("") is None


def response(**fields: Any) -> Any:
    rpc = rpc_pb2()
    return rpc.criu_resp(type=rpc.DUMP, success=False, **fields)


def test_rpc_answer_skips_the_harmless_first_error() -> None:
    """CRIU's cr_errmsg is its first error: the rlimit line, a newline at its end."""
    noise = "Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n"
    assert resp_error(response(cr_errmsg=noise, cr_errno=1)) == "Operation not permitted (errno 1)"
    assert resp_error(response(cr_errmsg="Error (criu/x.c:1): it broke\n")) == "it broke"


@pytest.mark.integration
def test_cli_names_the_cause_and_the_log(procs: Procs, tmp_path: Path) -> None:
    """A real failing dump: the tree is not a session leader (no --shell-job)."""
    # sh leads a session of its own, so the tree's session leader is visible whatever session
    # (or pid namespace) runs this test; unshare execs sleep in place: $! is the tree's root
    p = subprocess.Popen(["setsid", "sh", "-c", "unshare --net sleep 100000 & echo $!; wait"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    procs.popens.append(p)
    assert p.stdout is not None
    pid = wait_unshared(procs.adopt(int(p.stdout.readline())))
    res = subprocess.run([sys.executable, "-m", "criu_macvlan.cli", "--criu", CRIU, "dump", "-t", str(pid),
                          "-D", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert res.stderr.strip().splitlines() == [
        f"criu-macvlan: criu dump failed: {SESSION.format(pid)} (CRIU's log: {tmp_path}/criu.log)"
    ], res.stderr
    assert res.returncode == ExitCode.CRIU
