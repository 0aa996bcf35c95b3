#!/usr/bin/env python3
"""Dump and restore through criu-macvlan's RPC driver, with callbacks of your own.

    rpc_notify.py dump PID IMAGES_DIR [--leave-running]
    rpc_notify.py restore IMAGES_DIR IN:OUT [IN:OUT ...]

CRIU announces every stage of a dump or restore. The driver runs criu-macvlan's
plugins for each (saving the macvlans on dump, recreating them on the OUT
parents on restore), then calls the :class:`criu_macvlan.rpc.Notify` you gave
it. This one prints the time of each stage since the request started; raise
from a callback to make CRIU abort.
"""

from __future__ import annotations

import argparse
import sys
import time

import criu_macvlan
from criu_macvlan.errors import CriuMacvlanError
from criu_macvlan.mappings import merge, parse_mapping
from criu_macvlan.rpc import Notify


class Timestamps(Notify):
    """Prints ``+SECONDS action [pid]`` for every CRIU action."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, action: str, pid: int | None = None) -> None:
        extra = f" pid={pid}" if pid is not None else ""
        print(f"+{time.monotonic() - self.start:.3f}s {action}{extra}", flush=True)

    def pre_dump(self) -> None:
        self.say("pre-dump")

    def network_lock(self) -> None:
        self.say("network-lock")

    def post_dump(self) -> None:
        self.say("post-dump")  # macvlan.img is committed: ship the images from here

    def network_unlock(self) -> None:
        self.say("network-unlock")

    def pre_restore(self) -> None:
        self.say("pre-restore")

    def setup_namespaces(self, pid: int) -> None:
        self.say("setup-namespaces", pid)  # the macvlans exist, on their new parents

    def post_setup_namespaces(self) -> None:
        self.say("post-setup-namespaces")

    def post_restore(self, pid: int) -> None:
        self.say("post-restore", pid)

    def pre_resume(self) -> None:
        self.say("pre-resume")

    def post_resume(self) -> None:
        self.say("post-resume")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    dump = sub.add_parser("dump")
    dump.add_argument("pid", type=int)
    dump.add_argument("images_dir")
    dump.add_argument("--leave-running", action="store_true")
    restore = sub.add_parser("restore")
    restore.add_argument("images_dir")
    restore.add_argument("maps", nargs="+", metavar="IN:OUT",
                         help="macvlan IN of the dump goes onto parent OUT (as criu-macvlan restore --macvlan)")
    parser.add_argument("--criu", default="criu", help="the criu binary")
    args = parser.parse_args()

    notify = Timestamps()
    try:
        if args.cmd == "dump":
            criu_macvlan.dump(args.pid, args.images_dir, criu_bin=args.criu, notify=notify,
                              leave_running=args.leave_running, log_file="dump.log", log_level=4)
            print(f"dumped {args.pid} into {args.images_dir}")
        else:
            mappings = merge(parse_mapping(m) for m in args.maps)
            pid = criu_macvlan.restore(args.images_dir, mappings, criu_bin=args.criu, notify=notify,
                                       log_file="restore.log", log_level=4)
            print(f"restored pid {pid}")
    except CriuMacvlanError as exc:
        print(f"rpc_notify: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
