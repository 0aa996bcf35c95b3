"""``python -m demo --compare N``: the demo's migration, side by side with native CRIU.

The same migration (the demo's echo service, one TCP connection, host A's NIC to
host B's NIC on one switch) runs N times per path, the paths alternating in a
rotating order: criu-macvlan over RPC (``rpc``), plain ``criu`` with the action
script (``cli``), and native CRIU without criu-macvlan (``native``). Native CRIU
can do this migration only because the parent names exist on the host and the
service's macvlan gets an ifindex that is free on the host (see the known
limitations in docs/how-it-works.md). It reports the medians of the client-observed
downtime (the longest wait for a reply over the one TCP connection) and of the
frozen time.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from criu_macvlan.errors import CriuMacvlanError

from .steps import Report, run
from .ui import DemoError, Interrupted, say, signals_raise

PATHS = ("rpc", "cli", "native")
TARGET = 1.1  # criu-macvlan over RPC, as a multiple of native's client-observed downtime


def free_ifindex() -> int:
    """An ifindex no link of the host's netns uses (native CRIU needs the service's to be free)."""
    from criu_macvlan import netlink as nl

    with nl.Rtnl(None) as host:
        used = {int(msg["index"]) for msg in host.links()}
    return next(i for i in range(20000, 1 << 20) if i not in used)


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def measure(runs: int, criu_bin: str, progress: Callable[[str], None]) -> dict[str, list[Report]]:
    """``runs`` migrations per path, the paths alternating in a rotating order; raises
    :class:`DemoError` (with the failed run's output shown) or :class:`Interrupted`."""
    reports: dict[str, list[Report]] = {p: [] for p in PATHS}
    for i in range(runs):
        for path in PATHS[i % len(PATHS):] + PATHS[:i % len(PATHS)]:
            report = Report(path=path, ifindex=free_ifindex())
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    run(report, criu_bin, False, sys.executable)
            except (DemoError, CriuMacvlanError, OSError) as exc:
                sys.stdout.write(out.getvalue())
                raise DemoError(f"run {i + 1}, {path}: {exc}") from exc
            reports[path].append(report)
            progress(f"  run {i + 1} {path:6}: downtime {report.downtime_ms:7.1f} ms, frozen {report.freeze_ms:6.1f} "
                     f"ms, restore {report.restore_ms:6.1f} ms, switch moved at restore: "
                     f"{'yes' if report.moved_at_restore else 'no'}")
    return reports


def table(reports: dict[str, list[Report]]) -> list[str]:
    """Medians (min-max) per path, and each path's downtime against native's."""
    native = statistics.median(r.downtime_ms for r in reports["native"])
    lines = [f"{'path':7} {'client-observed downtime':26} {'frozen':22} {'restore':22} downtime vs native"]
    for path, rs in reports.items():
        downtime = [r.downtime_ms for r in rs]
        lines.append(f"{path:7} {_median(downtime):26} {_median([r.freeze_ms for r in rs]):22} "
                     f"{_median([r.restore_ms for r in rs]):22} {statistics.median(downtime) / native:.2f}x")
    return lines


def compare(runs: int, criu_bin: str, report_path: str | None) -> int:
    if runs < 1:
        say("demo: FAILED: --compare needs at least 1 run per path")
        return 1
    reports: dict[str, list[Report]] = {}
    error = ""
    say(f"compare: {runs} migration(s) per path, paths alternating ({', '.join(PATHS)}); "
             "each is the whole demo, output hidden")
    try:
        with signals_raise():
            reports = measure(runs, criu_bin, say)
    except DemoError as exc:
        error = str(exc)
    except Interrupted as exc:
        error = f"interrupted by {exc}"
    summary = summarize(reports) if not error else {}
    if report_path:
        data = {"runs": {p: [asdict(r) for r in rs] for p, rs in reports.items()}, "summary": summary, "error": error}
        Path(report_path).write_text(json.dumps(data, indent=1))
    if error:
        say(f"demo: FAILED: {error}")
        return 1
    say("medians (min-max) in ms:")
    for line in table(reports):
        say(line)
    ratio = summary["rpc_downtime_ratio"]
    verdict = "met" if ratio <= TARGET else "NOT met"
    say(f"demo: SUCCESS: criu-macvlan over RPC: {ratio:.2f}x native CRIU's client-observed downtime "
             f"(target <= {TARGET}x: {verdict}); medians of {runs} run(s) per path")
    return 0


def summarize(reports: dict[str, list[Report]]) -> dict[str, float]:
    med = {p: statistics.median(r.downtime_ms for r in rs) for p, rs in reports.items()}
    return {
        **{f"{p}_downtime_ms": v for p, v in med.items()},
        **{f"{p}_freeze_ms": statistics.median(r.freeze_ms for r in rs) for p, rs in reports.items()},
        "rpc_downtime_ratio": med["rpc"] / med["native"],
        "cli_downtime_ratio": med["cli"] / med["native"],
    }
