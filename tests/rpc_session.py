"""A minimal, test-only CRIU RPC client that runs criu-macvlan's hooks in this process.

It exists so that the soak test can check a *long-lived* process running the hooks
in-process (fds, sockets and namespaces must not leak across sessions). It speaks
``criu swrk`` over a SOCK_SEQPACKET socketpair and answers every NOTIFY by
running the hook. The product RPC driver lives in ``criu_macvlan/rpc.py``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from dataclasses import dataclass, field

from conftest import CRIU
from pycriu import rpc_pb2

from criu_macvlan import mappings
from criu_macvlan.context import ActionContext, ImagesDir, Mode
from criu_macvlan.errors import CriuMacvlanError
from criu_macvlan.manager import Hooks

MAX_MESSAGE = 1 << 20


@dataclass
class Session:
    hooks: Hooks
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("criu_macvlan.soak"))
    notified: list[str] = field(default_factory=list)

    def _call(
        self, req: rpc_pb2.criu_req, images: ImagesDir, externals: list[str], pid: int | None
    ) -> rpc_pb2.criu_resp:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = subprocess.Popen(
            [CRIU, "swrk", str(theirs.fileno())],
            pass_fds=[theirs.fileno(), images.fd],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        theirs.close()
        state: dict[str, object] = {}
        try:
            ours.send(req.SerializeToString())
            while True:
                raw = ours.recv(MAX_MESSAGE)
                if not raw:
                    raise RuntimeError("criu swrk closed the connection")
                resp = rpc_pb2.criu_resp()
                resp.ParseFromString(raw)
                if resp.type != rpc_pb2.NOTIFY:
                    return resp
                action = resp.notify.script
                self.notified.append(action)
                ctx = ActionContext(
                    action=action,
                    mode=Mode.RPC,
                    images=images,
                    pid=resp.notify.pid if resp.notify.HasField("pid") and resp.notify.pid else pid,
                    mappings=mappings.from_externals(externals),
                    externals=externals,
                    log=self.log,
                    state=state,
                )
                ok = True
                try:
                    self.hooks.run(ctx)
                except CriuMacvlanError as exc:
                    self.log.error("%s", exc)
                    ok = False
                ours.send(rpc_pb2.criu_req(type=rpc_pb2.NOTIFY, notify_success=ok).SerializeToString())
        finally:
            ours.close()
            proc.wait(timeout=60)

    def dump(self, images: ImagesDir, pid: int, log: str = "dump.log") -> rpc_pb2.criu_resp:
        opts = rpc_pb2.criu_opts(images_dir_fd=images.fd, pid=pid, notify_scripts=True, log_level=4, log_file=log)
        return self._call(rpc_pb2.criu_req(type=rpc_pb2.DUMP, opts=opts), images, [], pid)

    def restore(self, images: ImagesDir, externals: list[str], log: str = "restore.log") -> rpc_pb2.criu_resp:
        opts = rpc_pb2.criu_opts(images_dir_fd=images.fd, notify_scripts=True, log_level=4, log_file=log,
                                 rst_sibling=True)
        opts.external.extend(externals)
        return self._call(rpc_pb2.criu_req(type=rpc_pb2.RESTORE, opts=opts), images, externals, None)


def open_fds() -> list[str]:
    """What this process has open, as ``/proc/self/fd`` shows it (sockets and namespaces included)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            continue
    return sorted(found)
