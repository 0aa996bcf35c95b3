"""RPC driver: talk to ``criu swrk`` (or a ``criu service`` socket) and run the hooks in-process.

Every request is sent with ``opts.notify_scripts = true``: CRIU then announces
each action as a ``NOTIFY`` response and waits for our answer. The driver calls
the same pluggy hooks as the action script (:class:`~criu_macvlan.manager.Hooks`,
``Mode.RPC``), in this process, without a Python start-up per action, then the
caller's :class:`Notify` callback, and answers ``notify_success``. A failure of
either answers ``false``: CRIU aborts (a failed restore kills the half-restored
tree, whose netns takes our links with it; a failed dump resumes the tree and
sends ``network-unlock``, which is still dispatched) and the driver raises the
first failure as a :class:`~criu_macvlan.errors.HookError` whose ``log_tail``
holds the end of CRIU's log file.

Decisions:

* ``macvlan[IN]:OUT`` externals are **kept back** from CRIU's ``opts.external``;
  they become the hooks' mappings. CRIU resolves the ``OUT`` of such a key with
  ``if_nametoindex()`` in its own netns when it parses it and aborts if it is
  missing, although the plugin, not CRIU, creates those links (the netdev entries
  are ``EXTLINK``) and resolves the parents itself. Every other external passes
  through untouched. Exception: links the images leave to CRIU (native MACVLAN
  netdev entries of a dump made without criu-macvlan, never converted) get their
  mapping passed to CRIU as the external it needs, as on a plain ``criu restore``.
* Ordering: for every action the registered plugins (the built-in macvlan plugin
  first) run before the caller's :class:`Notify` method, so a callback sees our
  work done: the committed ``macvlan.img`` in ``post_dump`` (ship the images from
  there), the recreated links in ``setup_namespaces``. When a plugin fails the
  callback is not called for that action.
* ``pid``: the dumped pid on dump; on restore the ``notify.pid`` CRIU sends with
  ``setup-namespaces`` (and ``post-restore``), remembered for later actions.
* ``empty_ns``: ``True``/``False`` from ``opts.empty_ns & CLONE_NEWNET``; ``None``
  (plugins decide from the images) when a ``config_file`` could have set it.
* Right after sending a dump or restore request the driver calls the plugins'
  ``criu_rpc_request`` hook: their imports and reads (the live netns, the images)
  then run while CRIU starts up, before its first notification.
* Pre-dumps send no notifications; iterative migration works as usual
  (``parent_img``/``track_mem``), the sidecar is written by the final dump.
* CRIU >= 3.19 also runs ``action-script`` entries of its config files after each
  notification, so the hooks may see an action twice: they are idempotent.

pycriu's RPC messages load on the first request, not on ``import criu_macvlan.rpc``,
and without the rest of pycriu (``import pycriu`` loads every image schema).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .action import run_later
from .errors import CriuError, CriuMacvlanError, ExitCode, HookError
from .request import Request, pycriu, resp_error, rpc_pb2, tail_of_log
from .swrk import Swrk, recv, send

if TYPE_CHECKING:
    from .manager import Hooks


log = logging.getLogger("criu_macvlan")


class Notify:
    """Callbacks next to the plugins' hooks, go-criu style; subclass and override.

    Each method runs after the registered plugins handled the same action. Raise
    (preferably :class:`~criu_macvlan.errors.CriuMacvlanError`) to make CRIU
    abort; the exception surfaces from the driver call as a ``HookError``.
    """

    def pre_dump(self) -> None: ...
    def post_dump(self) -> None: ...
    def pre_restore(self) -> None: ...
    def post_restore(self, pid: int) -> None: ...
    def network_lock(self) -> None: ...
    def network_unlock(self) -> None: ...
    def setup_namespaces(self, pid: int) -> None: ...
    def post_setup_namespaces(self) -> None: ...
    def pre_resume(self) -> None: ...
    def post_resume(self) -> None: ...


_WITH_PID = ("setup-namespaces", "post-restore")


def call_notify(notify: Notify, action: str, pid: int | None) -> None:
    """Call ``notify``'s method for ``action`` (actions it has no method for are ignored)."""
    name = action.replace("-", "_")
    if name not in Notify.__dict__:
        return
    method = getattr(notify, name)
    if action in _WITH_PID:
        method(pid if pid is not None else 0)
    else:
        method()


# ------------------------------------------------------------ the driver


class Criu:
    """A CRIU RPC client whose notifications run criu-macvlan's hooks in-process."""

    def __init__(
        self,
        criu_bin: str = "criu",
        *,
        service_socket: str | None = None,
        hooks: Hooks | None = None,
        notify: Notify | None = None,
        disable: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``env``: the environment of the ``criu swrk`` processes started here (e.g. with an
        ``LD_PRELOAD``); ``None``: this process's. The hooks run in this process, with its
        own environment; a ``service_socket``'s CRIU has the environment it was started with."""
        self.criu_bin = criu_bin
        self.service_socket = service_socket
        self.notify = notify
        self.env = env
        self._hooks = hooks
        self._disable = list(disable)

    @property
    def hooks(self) -> Hooks:
        if self._hooks is None:
            from .manager import plugin_manager

            self._hooks = plugin_manager(self._disable)
        return self._hooks

    # ---------------------------------------------------------- requests

    def dump(self, pid: int, images_dir: str, **opts: Any) -> None:
        """Dump the tree of ``pid`` into ``images_dir``; CRIU's options as keywords."""
        self._image_request("DUMP", images_dir, {**opts, "pid": pid}, None)

    def pre_dump(self, pid: int, images_dir: str, **opts: Any) -> None:
        """Pre-dump the memory of ``pid`` (iterative migration; no notifications)."""
        self._image_request("PRE_DUMP", images_dir, {**opts, "pid": pid}, None)

    def restore(self, images_dir: str, mappings: Mapping[str, str] | None = None, **opts: Any) -> int:
        """Restore from ``images_dir``; return the restored root pid.

        ``announce=``: ``False``/``"off"``, ``True``/``"on"`` or ``"rounds=N,interval=MS"``
        (see docs/announce.md); by default the environment or config file decides.
        """
        resp = self._image_request("RESTORE", images_dir, opts, mappings, restore=True)
        return int(resp.restore.pid)

    def check(self) -> None:
        """CRIU's kernel check (``criu check``); raises :class:`CriuError` with CRIU's log if it fails.

        CRIU's check child writes to its log, and fails without one (swrk has no
        stderr): it gets a log file in a temporary directory.
        """
        import tempfile

        rpc = rpc_pb2()
        with tempfile.TemporaryDirectory(prefix="criu-macvlan-check-") as tmp:
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                req = rpc.criu_req(type=rpc.CHECK)
                req.opts.images_dir_fd = fd
                req.opts.log_file = "check.log"
                try:
                    self._simple(req)
                except CriuError as exc:
                    exc.log_tail = tail_of_log(fd, "check.log")
                    raise
            finally:
                os.close(fd)

    def version(self) -> str:
        """CRIU's version, e.g. ``4.1.1`` (plus the git id if CRIU has one)."""
        rpc = rpc_pb2()
        v = self._simple(rpc.criu_req(type=rpc.VERSION)).version
        text = f"{v.major_number}.{v.minor_number}"
        if v.HasField("sublevel"):
            text += f".{v.sublevel}"
        if v.HasField("gitid"):
            text += f" ({v.gitid})"
        return text

    # ---------------------------------------------------------- plumbing

    def _connect(self) -> tuple[Any, socket.socket]:
        comm: Any
        if self.service_socket is not None:
            comm = pycriu("criu")._criu_comm_sk(self.service_socket)
        else:
            path = shutil.which(self.criu_bin)
            if path is None:
                raise CriuError(f"criu binary {self.criu_bin!r} not found")
            comm = Swrk(path, self.env)
        try:
            sk = comm.connect(False)
        except OSError as exc:
            where = self.service_socket or self.criu_bin
            raise CriuError(f"cannot connect to criu ({where}): {exc.strerror or exc}") from exc
        return comm, sk

    def _simple(self, req: Any) -> Any:
        comm, sk = self._connect()
        try:
            resp = _recv(sk, _pidfd(comm)) if _send(sk, req) else None
        finally:
            comm.disconnect()
        if resp is None:
            raise CriuError(f"criu {_req_name(req)}: criu closed the connection")
        if not resp.success:
            raise CriuError(f"criu {_req_name(req)} failed: {resp_error(resp)}")
        return resp

    def _image_request(
        self,
        kind: str,
        images_dir: str,
        opts: Mapping[str, Any],
        mappings: Mapping[str, str] | None,
        restore: bool = False,
    ) -> Any:
        # CRIU first: its start-up runs while we build the request.
        comm, sk = self._connect()
        try:
            rpc = rpc_pb2()
            request = Request(images_dir, opts, mappings, restore)
        except BaseException:
            comm.disconnect()
            raise
        if isinstance(comm, Swrk):
            request.criu_pid = comm.pid
        try:
            req = rpc.criu_req(type=getattr(rpc, kind), opts=request.opts)
            try:
                resp, failure = self._converse(sk, req, request, _pidfd(comm))
            finally:
                comm.disconnect()
            name = _req_name(req)
            if failure is not None:
                failure.log_tail = request.log_tail()
                raise failure
            if resp is None:
                ended = comm.ended if isinstance(comm, Swrk) else ""
                what = f"{ended} before it answered" if ended else "criu closed the connection"
                raise CriuError(f"criu {name}: {what}{request.why(None)}", request.log_tail())
            if not resp.success:
                tail = request.log_tail()
                why = _explain(request, tail) if restore else ""
                raise CriuError(f"criu {name} failed{request.why(resp)}{why}", tail)
            return resp
        finally:
            request.close()

    def _converse(
        self, sk: socket.socket, req: Any, request: Request, pidfd: int | None
    ) -> tuple[Any, HookError | None]:
        """Send ``req``, answer every NOTIFY, return CRIU's final response and the first failure.

        ``pidfd``: criu swrk's; the response is ``None`` once criu exits without answering.
        """
        rpc = rpc_pb2()
        failure: HookError | None = None
        if not _send(sk, req):
            return None, failure
        if req.type in (rpc.DUMP, rpc.RESTORE):
            self.hooks.rpc_request(request.context(_req_name(req), None))
        while True:
            resp = _recv(sk, pidfd)
            if resp is None or resp.type != rpc.NOTIFY:
                return resp, failure
            action = resp.notify.script
            pid = resp.notify.pid if resp.notify.HasField("pid") else None
            error = self.on_notify(request, action, pid)
            if error is not None and failure is None:
                failure = error
            if not _send(sk, rpc.criu_req(type=rpc.NOTIFY, notify_success=error is None)):
                return None, failure

    def on_notify(self, request: Request, action: str, pid: int | None) -> HookError | None:
        """Run one action through the plugins, then the caller's callback; return the failure."""
        ctx = request.context(action, pid)
        try:
            self.hooks.run(ctx)
            run_later(ctx.later)  # nothing runs after our answer to CRIU here: the hooks' later work now
            if self.notify is not None:
                call_notify(self.notify, action, ctx.pid)
        except HookError as exc:
            log.debug("%s failed: %s", action, exc)
            return exc
        except CriuMacvlanError as exc:
            return HookError(action, str(exc), exc.exit_code)
        except Exception as exc:
            return HookError(action, f"callback failed: {type(exc).__name__}: {exc}", ExitCode.FAILED)
        return None


def _explain(request: Request, tail: str) -> str:
    """``; <what the failure means for the macvlans>``, when the plugin can tell."""
    from .macvlan.restore import explain_failure

    why = explain_failure(request.context("restore", None), tail)
    return f"; {why}" if why else ""


def _pidfd(comm: Any) -> int | None:
    return comm.pidfd if isinstance(comm, Swrk) else None


def _send(sk: socket.socket, msg: Any) -> bool:
    """Send one message; ``False`` if CRIU is gone."""
    return send(sk, msg.SerializeToString())


def _recv(sk: socket.socket, pidfd: int | None = None) -> Any:
    """One CRIU response, or ``None`` at end of connection or when criu's process ``pidfd`` exited."""
    data = recv(sk, pidfd)
    if data is None:
        return None
    resp = rpc_pb2().criu_resp()
    resp.ParseFromString(data)
    return resp


def _req_name(req: Any) -> str:
    return str(rpc_pb2().criu_req_type.Name(req.type)).lower().replace("_", "-")


