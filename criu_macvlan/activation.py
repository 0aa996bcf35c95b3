"""``criu-macvlan serve`` started by systemd: socket activation of its ``req`` FIFO.

systemd passes the FIFO of ``ListenFIFO=`` as fd 3 with ``LISTEN_PID`` and
``LISTEN_FDS`` set for the service (the ``sd_listen_fds`` protocol, a few lines, no
library). The socket unit (``examples/criu-macvlan.socket``) also writes ``1`` to
``pid``: until the service runs, systemd (pid 1) is the helper the hook checks is
alive, and it starts the service on the first request.
"""

from __future__ import annotations

import os
import stat

from .errors import UsageError
from .rundir import private_dir

LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed fd
SYSTEMD_PID = 1


def listen_fd() -> int | None:
    """The FIFO systemd passed us (socket activation: ``LISTEN_PID``, ``LISTEN_FDS``, fd 3), if any.

    The variables are removed either way: they are not for the processes the actions start.
    """
    pid, count = os.environ.pop("LISTEN_PID", ""), os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()):
        return None
    if count != "1":
        raise UsageError(f"serve: systemd passed {count or 'no'} file descriptors, expected one: the FIFO "
                         "(ListenFIFO= alone in the socket unit)")
    os.set_inheritable(LISTEN_FDS_START, False)
    return LISTEN_FDS_START


def adopt(path: str, fd: int) -> int:
    """An fd of ``path``, whose ``req`` must be the FIFO ``fd`` systemd passed, both root's alone."""
    try:
        dir_fd = private_dir(path)
    except OSError as exc:
        raise UsageError(f"serve: {path} is not a directory of root's alone (owner root, mode 0700, no symlink): "
                         "set DirectoryMode=0700 in the socket unit") from exc
    try:
        st, named = os.fstat(fd), os.stat("req", dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        named = None
    if named is None or not stat.S_ISFIFO(st.st_mode) or st.st_uid != 0 or stat.S_IMODE(st.st_mode) != 0o600 \
            or (st.st_dev, st.st_ino) != (named.st_dev, named.st_ino):
        os.close(dir_fd)
        raise UsageError(f"serve: systemd passed another file than the FIFO {path}/req of root's alone: "
                         f"set ListenFIFO={path}/req and SocketMode=0600 in the socket unit (or --dir)")
    return dir_fd
