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

import array
import fcntl
import logging
import os
import select
import shutil
import signal
import socket
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import mappings as mapmod
from .context import ActionContext, Mode, open_images
from .errors import CriuError, CriuMacvlanError, ExitCode, HookError, UsageError
from .lean import import_submodules

if TYPE_CHECKING:
    from .manager import Hooks

CLONE_NEWNET = 0x40000000
DEFAULT_LOG_FILE = "criu.log"  # CRIU's DEFAULT_LOG_FILENAME in RPC mode
LOG_TAIL_LINES = 15
MAX_MSG = 1 << 16  # CRIU's own messages stay below 1 KiB
MAX_FDS = 16

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


def _pycriu(module: str) -> Any:
    """``pycriu.<module>`` (``rpc_pb2`` or ``criu``), without ``pycriu/__init__.py`` (see :mod:`.lean`).

    That ``__init__`` imports every CRIU image schema (paid by every CLI command
    otherwise); the RPC messages and connection classes need none of them.
    """
    try:
        return import_submodules("pycriu", module)[0]
    except ImportError as exc:
        hint = "Debian: apt-get install python3-pycriu"
        import site

        if sys.base_prefix not in site.PREFIXES:  # a venv that does not see the system's packages
            hint += (f"; the venv {sys.prefix} must see the system's packages: make it with "
                     "--system-site-packages (or set include-system-site-packages = true in its pyvenv.cfg)")
        raise CriuError(f"pycriu is not importable by {sys.executable} ({hint})") from exc


def _pb() -> Any:
    return _pycriu("rpc_pb2")


def tail_of_log(dir_fd: int, name: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``name`` in directory ``dir_fd`` ('' if unreadable)."""
    from .criulog import read_tail

    return "\n".join(read_tail(dir_fd, name, 16384).splitlines()[-lines:])


# ------------------------------------------------------------- options


def set_opts(opts: Any, values: Mapping[str, Any]) -> None:
    """Set ``criu_opts`` fields by name: scalars, enum names, repeated fields, dict messages."""
    fields = opts.DESCRIPTOR.fields_by_name
    for key, value in values.items():
        if value is None:
            continue
        fd = fields.get(key)
        if fd is None:
            raise UsageError(f"unknown CRIU option {key!r} (not a criu_opts field)")
        errors: tuple[type[Exception], ...] = (TypeError, ValueError, KeyError)
        if fd.message_type is not None:
            from google.protobuf import json_format  # only for message-typed options: not a cheap import

            errors += (json_format.ParseError,)
        try:
            if fd.label == fd.LABEL_REPEATED:
                items: list[Any] = [value] if isinstance(value, str | dict) else list(value)
                target = getattr(opts, key)
                for item in items:
                    if fd.message_type is not None:
                        json_format.ParseDict(item, target.add())
                    else:
                        target.append(item)
            elif fd.message_type is not None:
                json_format.ParseDict(value, getattr(opts, key))
            elif fd.enum_type is not None and isinstance(value, str):
                setattr(opts, key, fd.enum_type.values_by_name[value.upper()].number)
            else:
                setattr(opts, key, value)
        except errors as exc:
            raise UsageError(f"bad value {value!r} for CRIU option {key!r}: {exc}") from exc


class _Request:
    """One request: the opened images dir, the opts, the hook context it implies."""

    def __init__(
        self, images_dir: str, opts: Mapping[str, Any], mappings: Mapping[str, str] | None, restore: bool = False
    ) -> None:
        values = dict(opts)
        self.images = open_images(images_dir, "directory")
        self.work: int | None = None
        try:
            work_dir = values.pop("work_dir", None)
            if work_dir is not None:
                self.work = open_images(work_dir, "directory").fd
            self.log_dir = os.path.abspath(work_dir if work_dir is not None else images_dir)
            empty_ns_net = bool(values.pop("empty_ns_net", False))
            self.announce: str | bool | None = values.pop("announce", None)
            if self.announce is not None:
                from .announce import parse

                parse(self.announce)  # a bad value fails before CRIU restores anything
            externals = list(values.pop("external", None) or [])
            self.opts = _pb().criu_opts()
            self.opts.images_dir_fd = self.images.fd
            if self.work is not None:
                self.opts.work_dir_fd = self.work
            set_opts(self.opts, values)
            if empty_ns_net:
                self.opts.empty_ns |= CLONE_NEWNET
            self.opts.notify_scripts = True
            kept = [k for k in externals if mapmod.is_macvlan_external(k)]
            self.opts.external.extend(k for k in externals if not mapmod.is_macvlan_external(k))
            self.externals = externals
            self.mappings = mapmod.merge(
                (mapmod.parse_mapping(k) for k in kept), mapmod.merge((mappings or {}).items())
            )
            if restore:
                native = _native_macvlans(self.images.fd)
                self.opts.external.extend(
                    mapmod.format_mapping(i, o) for i, o in self.mappings.items() if i in native
                )
            self.empty_ns: bool | None = bool(self.opts.empty_ns & CLONE_NEWNET)
            if self.opts.HasField("config_file"):
                self._add_config_file(self.opts.config_file)
        except BaseException:
            self.close()
            raise
        self.pid: int | None = self.opts.pid if self.opts.HasField("pid") else None
        self.state: dict[str, Any] = {}
        self.criu_pid: int | None = None  # criu swrk's, when we started it

    def _add_config_file(self, path: str) -> None:
        from . import criuconf

        conf = criuconf.read_config(path)
        self.externals.extend(conf.externals)
        self.mappings = mapmod.merge(conf.mappings.items(), self.mappings)
        if conf.empty_ns_net:
            self.empty_ns = True
        elif not self.empty_ns:
            self.empty_ns = None  # the file may say what we cannot see: let the plugins decide

    def context(self, action: str, pid: int | None) -> ActionContext:
        if pid is not None and pid > 0:
            self.pid = pid
        return ActionContext(
            action=action,
            mode=Mode.RPC,
            images=self.images,
            pid=self.pid,
            mappings=dict(self.mappings),
            externals=list(self.externals),
            empty_ns=self.empty_ns,
            announce=self.announce,
            log=log,
            state=self.state,
            criu_pid=self.criu_pid,
        )

    def _log_name(self) -> str:
        return str(self.opts.log_file) if self.opts.HasField("log_file") else DEFAULT_LOG_FILE

    def log_tail(self) -> str:
        return tail_of_log(self._log_dir_fd(), self._log_name())

    def _log_dir_fd(self) -> int:
        return self.work if self.work is not None else self.images.fd

    def why(self, resp: Any) -> str:
        """``: <cause> (CRIU's log: PATH)``: the cause CRIU's log names (else its answer), and where the log is."""
        from . import criulog

        log = criulog.read_tail(self._log_dir_fd(), self._log_name())
        reason = criulog.cause(log)
        if reason is None and resp is not None:
            reason = _resp_error(resp, default="")
        where = f"CRIU's log: {os.path.join(self.log_dir, self._log_name())}" if log else "CRIU wrote no log"
        return f": {reason} ({where})" if reason else f" ({where})"

    def close(self) -> None:
        if self.work is not None:
            os.close(self.work)
            self.work = None
        if getattr(self, "images", None) is not None:
            self.images.close()


def _native_macvlans(dir_fd: int) -> set[str]:
    """Names of the macvlans CRIU's netdev images leave to CRIU itself (MACVLAN entries).

    No name when criu-macvlan made the dump (there is a sidecar): its post-dump
    converted them all (``setup-namespaces`` refuses the images otherwise).
    """
    from . import images

    try:
        os.stat(images.SIDECAR, dir_fd=dir_fd)
        return set()
    except OSError:
        pass
    try:
        return {n for img in images.netdev_images(dir_fd) for n, _ in images.summarize_netdev(dir_fd, img).native}
    except CriuMacvlanError:
        return set()  # CRIU will say what is wrong with its images


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

        rpc = _pb()
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
        rpc = _pb()
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
            comm = _pycriu("criu")._criu_comm_sk(self.service_socket)
        else:
            path = shutil.which(self.criu_bin)
            if path is None:
                raise CriuError(f"criu binary {self.criu_bin!r} not found")
            comm = _Swrk(path, self.env)
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
            raise CriuError(f"criu {_req_name(req)} failed: {_resp_error(resp)}")
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
            rpc = _pb()
            request = _Request(images_dir, opts, mappings, restore)
        except BaseException:
            comm.disconnect()
            raise
        if isinstance(comm, _Swrk):
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
                ended = comm.ended if isinstance(comm, _Swrk) else ""
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
        self, sk: socket.socket, req: Any, request: _Request, pidfd: int | None
    ) -> tuple[Any, HookError | None]:
        """Send ``req``, answer every NOTIFY, return CRIU's final response and the first failure.

        ``pidfd``: criu swrk's; the response is ``None`` once criu exits without answering.
        """
        rpc = _pb()
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

    def on_notify(self, request: _Request, action: str, pid: int | None) -> HookError | None:
        """Run one action through the plugins, then the caller's callback; return the failure."""
        ctx = request.context(action, pid)
        try:
            self.hooks.run(ctx)
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


class _Swrk:
    """``criu swrk`` as our child, like pycriu's ``_criu_comm_bin`` but started by ``posix_spawn``.

    pycriu forks the calling process, whose page tables the kernel copies: a few
    milliseconds for an engine (or our CLI) with pyroute2, protobuf and pluggy
    loaded, on every request. ``posix_spawn`` uses vfork and costs nothing of the
    kind.
    """

    def __init__(self, path: str, env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.env = env
        self.sk: socket.socket | None = None
        self.pid = 0
        self.pidfd: int | None = None
        self.ended = ""  # after disconnect: "criu swrk (pid N) was killed by SIGKILL"

    def connect(self, daemon: bool) -> socket.socket:
        """Start ``criu swrk``; our end of its socket. ``daemon`` (pycriu's signature) must be False."""
        if daemon:
            raise ValueError("criu swrk runs as our child here")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child_fd = -1
        try:
            # criu swrk gets its end as an inherited fd above stdio, and no stdin/stdout/stderr (as with pycriu)
            child_fd = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD, 3)  # inheritable: no FD_CLOEXEC
            self.pid = os.posix_spawn(
                self.path, [self.path, "swrk", str(child_fd)], os.environ if self.env is None else self.env,
                file_actions=[(os.POSIX_SPAWN_CLOSE, fd) for fd in (0, 1, 2)],
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            if child_fd >= 0:
                os.close(child_fd)
        self.sk = ours
        # The socket alone cannot tell that criu died: a task criu forked for the
        # restore inherits its end and keeps it open. Its pidfd can.
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:  # a kernel without pidfds (< 5.3): the socket alone, as before
            self.pidfd = None
        return ours

    def disconnect(self) -> None:
        if self.sk is not None:
            self.sk.close()
        if self.pid:
            _, status = os.waitpid(self.pid, 0)
            self.ended = f"criu swrk (pid {self.pid}) {_how_it_ended(status)}"
            self.pid = 0
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _explain(request: _Request, tail: str) -> str:
    """``; <what the failure means for the macvlans>``, when the plugin can tell."""
    from .macvlan.restore import explain_failure

    why = explain_failure(request.context("restore", None), tail)
    return f"; {why}" if why else ""


def _send(sk: socket.socket, msg: Any) -> bool:
    """Send one message; ``False`` if CRIU is gone."""
    try:
        sk.send(msg.SerializeToString())
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def _how_it_ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"was killed by {signal.Signals(sig).name}"
        except ValueError:  # a real-time signal
            return f"was killed by signal {sig}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _pidfd(comm: Any) -> int | None:
    return comm.pidfd if isinstance(comm, _Swrk) else None


def _criu_exited(sk: socket.socket, pidfd: int) -> bool:
    """Wait until CRIU says something (``False``) or its process ``pidfd`` exited with nothing left to read."""
    poller = select.poll()
    poller.register(sk, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    ready = {fd for fd, _ in poller.poll()}
    return sk.fileno() not in ready  # a message, or the end of the connection, is read first


def _recv(sk: socket.socket, pidfd: int | None = None) -> Any:
    """One CRIU response, or ``None`` at end of connection or when criu's process ``pidfd`` exited.

    fds CRIU passes along are closed.
    """
    rpc = _pb()
    if pidfd is not None and _criu_exited(sk, pidfd):
        return None
    fds = array.array("i")
    try:
        data, ancdata, flags, _ = sk.recvmsg(MAX_MSG, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    except ConnectionResetError:
        return None
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    for fd in fds:
        os.close(fd)  # orphan-pts-master: a pty we do not use
    if not data:
        return None
    if flags & socket.MSG_TRUNC:
        raise CriuError(f"criu sent a message larger than {MAX_MSG} bytes")
    resp = rpc.criu_resp()
    resp.ParseFromString(data)
    return resp


def _req_name(req: Any) -> str:
    return str(_pb().criu_req_type.Name(req.type)).lower().replace("_", "-")


def _resp_error(resp: Any, default: str = "see CRIU's log") -> str:
    """CRIU's own word on a failure, one line: its first error (``cr_errmsg``) unless harmless, else the errno."""
    from . import criulog

    if resp.HasField("cr_errmsg") and resp.cr_errmsg:
        text = " ".join(str(resp.cr_errmsg).split())
        message = criulog.error_message(text) or text
        if criulog.is_cause(message):
            return message
    if resp.HasField("cr_errno") and resp.cr_errno:
        return f"{os.strerror(resp.cr_errno)} (errno {resp.cr_errno})"
    return default
