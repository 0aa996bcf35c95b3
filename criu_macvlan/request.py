"""One RPC request to CRIU: its options, the images dir it names, the hook context it implies.

Also where pycriu's RPC messages come from (without ``pycriu/__init__.py``, which
imports every image schema) and how CRIU's answer and log are read back.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from . import mappings as mapmod
from .context import ActionContext, Mode, open_images
from .errors import CriuError, CriuMacvlanError, UsageError
from .lean import import_submodules

CLONE_NEWNET = 0x40000000
DEFAULT_LOG_FILE = "criu.log"  # CRIU's DEFAULT_LOG_FILENAME in RPC mode
LOG_TAIL_LINES = 15

log = logging.getLogger("criu_macvlan")


def pycriu(module: str) -> Any:
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


def rpc_pb2() -> Any:
    return pycriu("rpc_pb2")


def tail_of_log(dir_fd: int, name: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``name`` in directory ``dir_fd`` ('' if unreadable)."""
    from .criulog import read_tail

    return "\n".join(read_tail(dir_fd, name, 16384).splitlines()[-lines:])


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


class Request:
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
            self.opts = rpc_pb2().criu_opts()
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
                native = native_macvlans(self.images.fd)
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
        # CRIU reads the config file after the request's options: its mappings win, as there
        origins = dict.fromkeys(self.mappings, "the request")
        mapmod.overlay(self.mappings, origins, conf.mappings, path)
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
            reason = resp_error(resp, default="")
        where = f"CRIU's log: {os.path.join(self.log_dir, self._log_name())}" if log else "CRIU wrote no log"
        return f": {reason} ({where})" if reason else f" ({where})"

    def close(self) -> None:
        if self.work is not None:
            os.close(self.work)
            self.work = None
        if getattr(self, "images", None) is not None:
            self.images.close()


def native_macvlans(dir_fd: int) -> set[str]:
    """Names of the macvlans CRIU's netdev images leave to CRIU itself (MACVLAN entries).

    No name when criu-macvlan made the dump (there is a sidecar): its post-dump
    converted them all (``setup-namespaces`` refuses the images otherwise).
    """
    from . import images, netdev

    try:
        os.stat(images.SIDECAR, dir_fd=dir_fd)
        return set()
    except OSError:
        pass
    try:
        return {n for img in netdev.netdev_images(dir_fd) for n, _ in netdev.summarize_netdev(dir_fd, img).native}
    except CriuMacvlanError:
        return set()  # CRIU will say what is wrong with its images


def resp_error(resp: Any, default: str = "see CRIU's log") -> str:
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
