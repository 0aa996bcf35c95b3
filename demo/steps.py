"""The demo's six steps (``run``), what it checks on the way, and ``main``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from criu_macvlan import announce, images
from criu_macvlan import macvlan_pb2 as pb
from criu_macvlan.errors import CriuError, CriuMacvlanError

from .paths import criu_cli, criu_compat_env, criu_native, criu_rpc, criu_stats
from .service import REPLY_TIMEOUT, SERVICE, Client, connect, gone, kill_and_wait, start_service, wait_exit
from .topology import CLIENT_IP, IFNAME, PORT, PREFIX, SERVICE_IP, SERVICE_MAC, Lab, give_service_a_nic, service_nic
from .ui import DemoError, Interrupted, detail, say, signals_raise, step

WARMUP = 25  # replies before the checkpoint
AFTER = 25  # replies after the restore


def show(images_dir: Path) -> list[pb.macvlan_link]:
    """The sidecar CRIU's post-dump hook wrote, as ``criu-macvlan show`` prints it."""
    from criu_macvlan.render import table

    fd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sidecar = images.load(fd)
    finally:
        os.close(fd)
    if sidecar is None:
        raise DemoError(f"the dump wrote no {images.SIDECAR}: the action script did not run")
    for line in table(sidecar).splitlines():
        detail(line)
    return list(sidecar.links)


def check(images_dir: Path, mappings: dict[str, str]) -> None:
    """``criu-macvlan check``: would a restore with ``mappings`` work on this host?"""
    from criu_macvlan.preflight import check as preflight

    report = preflight(str(images_dir), mappings)
    for warning in report.warnings:
        detail(f"check: warning: {warning}")
    if report.problems:
        raise DemoError("check: " + "; ".join(report.problems))
    targets = ", ".join(f"{name} -> {parent}" for name, parent in mappings.items())
    detail(f"check: ok: {report.links} macvlan link(s) can be restored here ({targets})")

def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


@dataclass
class Report:
    path: str
    nic_a: str = ""
    nic_b: str = ""
    pids: list[int] = field(default_factory=list)
    replies: list[list[float]] = field(default_factory=list)  # n, count, total, sent, received
    migrated_after: int = 0  # the number of the last reply before the checkpoint
    freeze_ms: float = 0.0
    dump_ms: float = 0.0
    restore_ms: float = 0.0
    downtime_ms: float = 0.0
    moved_at_restore: bool = False  # the switch sent the MAC to host B's port when the restore returned
    ifindex: int = 0  # of the service's macvlan (0: the kernel's choice)
    workdir: str = ""  # images, logs, the compat shim; removed unless --keep
    images_dir: str = ""  # set when kept
    error: str = ""


def run(report: Report, criu_bin: str, keep: bool, python: str) -> None:
    tag = f"{os.getpid() % 100000:05d}"
    lab = Lab(nic_a=f"dmA{tag}", nic_b=f"dmB{tag}")
    report.nic_a, report.nic_b = lab.nic_a, lab.nic_b
    cleanup = contextlib.ExitStack()
    with cleanup:
        workdir = Path(tempfile.mkdtemp(prefix="criu-macvlan-demo."))
        report.workdir = str(workdir)
        if keep:
            report.images_dir = str(workdir)
        else:
            cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        cleanup.callback(lab.teardown)
        env = criu_compat_env(criu_bin, workdir)
        criu = {"rpc": criu_rpc, "cli": criu_cli, "native": criu_native}[report.path](criu_bin, env)
        native = criu.name == "native"

        step(f"[1/6] two hosts on one switch: host A's NIC {lab.nic_a}, host B's NIC {lab.nic_b}, "
             f"client {CLIENT_IP} (switch and client in namespaces of their own)")
        lab.build()

        proc, pid = start_service(python)
        report.pids.append(pid)
        cleanup.callback(proc.wait)
        cleanup.callback(kill_and_wait, pid)
        give_service_a_nic(pid, lab.nic_a, report.ifindex)
        before = service_nic(pid)
        step(f"[2/6] service {SERVICE.name}: pid {pid} in its own pid+net namespace, "
             f"{IFNAME} {SERVICE_MAC} {SERVICE_IP}/{PREFIX}, macvlan on {before.parent.name} "
             f"(ifindex {before.parent.ifindex})")

        sock = connect(lab.client_fd)
        cleanup.callback(sock.close)
        client = Client(sock)
        client.start()
        cleanup.callback(client.join, 5)
        cleanup.callback(client.stopping.set)
        client.wait_for(WARMUP, 10)
        step(f"[3/6] client: one TCP connection {CLIENT_IP} -> {SERVICE_IP}:{PORT}, "
             f"{len(client.replies)} numbered messages answered so far")

        images_dir = workdir / "images"
        images_dir.mkdir()
        step(f"[4/6] checkpoint ({criu.name}): criu dump --tcp-established"
             f"{' (native CRIU, no criu-macvlan)' if native else ' with criu-macvlan'}")
        t0 = time.monotonic()
        last_before = len(client.replies)
        criu.dump(pid, images_dir)
        report.dump_ms = _ms(time.monotonic() - t0)
        report.migrated_after = last_before
        stats = criu_stats(images_dir, "dump")
        report.freeze_ms = round(stats.get("frozen_time", 0) / 1000, 1)
        detail(f"dumped in {report.dump_ms} ms; the service was frozen for {report.freeze_ms} ms; "
               f"pid {pid} is {'gone' if gone(pid) else 'STILL RUNNING'}")
        if not native:
            show(images_dir)

        mappings = {IFNAME: lab.nic_b}
        step(f"[5/6] restore on host B: macvlan[{IFNAME}]:{lab.nic_b}")
        if not native:
            check(images_dir, mappings)
        old_port = lab.switch_port_of(SERVICE_MAC)
        t0 = time.monotonic()
        new_pid = criu.restore(images_dir, mappings)
        report.restore_ms = _ms(time.monotonic() - t0)
        report.pids.append(new_pid)
        cleanup.callback(kill_and_wait, new_pid)
        detail(f"restored as pid {new_pid} in {report.restore_ms} ms")
        port = lab.switch_port_of(SERVICE_MAC)
        report.moved_at_restore = port == "port-b"
        if native:
            detail(f"the switch sends {SERVICE_MAC} to {port or 'no port'} (native CRIU announces nothing)")
        elif port != "port-b":
            raise DemoError(f"the switch still sends {SERVICE_MAC} to {port or 'no port'}: the MAC was not announced")
        else:
            schedule = announce.configured(None, os.environ) or announce.DEFAULT
            detail(f"the switch's FDB moved {SERVICE_MAC} from {old_port} to {port}: criu-macvlan announced it "
                   f"before the service resumed (gratuitous ARP at post-setup-namespaces, then "
                   f"{schedule.rounds - 1} more rounds; docs/announce.md)")
        after = service_nic(new_pid)
        verify(after, before, lab.nic_index(lab.nic_b), lab.nic_b)

        client.wait_for(last_before + AFTER, REPLY_TIMEOUT + 10)
        client.stopping.set()
        client.join(REPLY_TIMEOUT + 5)
        if client.error is not None:
            raise DemoError(f"client: {client.error}")
        report.replies = [[r.n, r.count, r.total, r.sent, r.received] for r in client.replies]
        report.downtime_ms = _ms(max(r.received - r.sent for r in client.replies))
        n = len(client.replies)
        step(f"[6/6] the same connection went on: messages 1..{n} answered in order, none lost or repeated, "
             f"service state kept (count {client.replies[-1].count}, total {client.replies[-1].total}); "
             f"the client waited {client.waits}x on its socket for a late reply, never reconnected")
        detail(f"the client's longest wait for a reply: {report.downtime_ms} ms (the service's downtime, "
               "rounded up to the client's next TCP retransmission)")
        wait_exit(new_pid)


def verify(after: pb.macvlan_link, before: pb.macvlan_link, b_index: int, nic_b: str) -> None:
    from criu_macvlan.netlink import mac_to_str

    def addrs(link: pb.macvlan_link) -> set[tuple[bytes, int]]:
        return {(a.address, a.prefixlen) for a in link.addrs}

    def routes(link: pb.macvlan_link) -> set[tuple[int, bytes]]:
        return {(r.dst_len, r.gateway) for r in link.routes}

    problems = []
    if after.address != before.address:
        problems.append(f"MAC {mac_to_str(after.address)} != {mac_to_str(before.address)}")
    if addrs(after) != addrs(before):
        problems.append("addresses differ")
    if routes(after) != routes(before):
        problems.append("routes differ")
    if after.parent.ifindex != b_index or after.parent.name != nic_b:
        problems.append(f"parent is ifindex {after.parent.ifindex} ({after.parent.name or '?'}), not {nic_b}")
    if problems:
        raise DemoError("restored NIC: " + "; ".join(problems))
    detail(f"{IFNAME}: same MAC {mac_to_str(after.address)}, same {SERVICE_IP}/{PREFIX} and default route, "
           f"parent now {nic_b} (IFLA_LINK {b_index})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=("rpc", "cli"), default="rpc",
                        help="drive CRIU through criu-macvlan's RPC driver (default) or plain criu + action script")
    parser.add_argument("--criu", default=shutil.which("criu") or "/usr/sbin/criu", help="the criu binary")
    parser.add_argument("--keep", action="store_true", help="keep the images directory and CRIU's logs")
    parser.add_argument("--report", metavar="FILE", help="also write what happened as JSON (for tests)")
    parser.add_argument("--compare", type=int, metavar="N", help="instead: N migrations per path, alternating "
                        "criu-macvlan (rpc, cli) and native CRIU; medians of downtime and freeze")
    args = parser.parse_args(argv)
    if args.compare is not None:
        from .compare import compare

        return int(compare(args.compare, args.criu, args.report))

    report = Report(path=args.path)
    try:
        with signals_raise():
            if os.geteuid() != 0:
                raise DemoError("run it as root (it makes namespaces, links and runs criu)")
            step(f"demo: live-migrating a TCP service with a macvlan NIC from host A to host B ({args.path} path)")
            run(report, args.criu, args.keep, sys.executable)
    except CriuError as exc:
        if exc.log_tail:
            say("\n".join(f"      | {line}" for line in exc.log_tail.splitlines()[-8:]))
        report.error = str(exc)
    except (DemoError, CriuMacvlanError) as exc:
        report.error = str(exc)
    except Interrupted as exc:
        report.error = f"interrupted by {exc}"
    except OSError as exc:
        report.error = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    if args.report:
        Path(args.report).write_text(json.dumps(asdict(report), indent=1))
    if report.images_dir:
        say(f"      images and CRIU logs kept in {report.images_dir}")
    if report.error:
        say(f"demo: FAILED: {report.error}")
        return 1
    say(f"demo: SUCCESS: the service moved from {report.nic_a} to {report.nic_b} with its TCP connection; "
        f"{len(report.replies)} messages, 0 lost, 0 repeated; frozen {report.freeze_ms} ms, "
        f"dump {report.dump_ms} ms, restore {report.restore_ms} ms, "
        f"client-observed downtime {report.downtime_ms} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
