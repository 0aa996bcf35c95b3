"""Find the options CRIU itself was given: its command line and its config files.

An action script gets no options from CRIU, only ``CRTOOLS_*`` variables, so the
plugin reads what CRIU read, in CRIU's order (``criu/config.c``):

1. ``/etc/criu/default.conf`` and ``$HOME/.criu/default.conf``, unless
   ``--no-default-config`` or ``--config`` is on the command line;
2. ``$CRIU_CONFIG_FILE``;
3. ``--config FILE``;
4. the command line itself (``/proc/<criu>/cmdline``).

In RPC mode (``criu swrk``/``criu service``) the command line holds nothing (CRIU
even rewrites it to a title, ``criu: restore --rpc -D DIR``), and neither the RPC
client's ``opts.external`` nor its ``config_file`` is visible to scripts: CRIU gives
them only ``CRTOOLS_*`` variables and its inherited environment. So the plugin also
reads the engine config files CRIU users already keep in ``/etc/criu``
(``runc.conf``) and its own ``/etc/criu/criu-macvlan.conf``, plus ``$CRIU_MACVLAN_CONFIG``.

Only the options the plugin needs are kept: ``external`` and ``empty-ns``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import mappings
from .errors import UsageError

GLOBAL_CONFIG = "/etc/criu/default.conf"
USER_CONFIG = ".criu/default.conf"
ENGINE_CONFIGS = ("/etc/criu/runc.conf", "/etc/criu/criu-macvlan.conf")
RPC_COMMANDS = ("swrk", "service")
MAX_CONFIG_BYTES = 1 << 20
_SEPARATOR = re.compile(r"[ \t]")


@dataclass
class CriuOptions:
    """What the plugin needs from CRIU's options."""

    externals: list[str] = field(default_factory=list)
    empty_ns_net: bool = False
    rpc: bool = False  # CRIU runs in RPC mode: the client's options are out of sight
    sources: list[str] = field(default_factory=list)  # files read, for messages

    @property
    def mappings(self) -> dict[str, str]:
        return mappings.from_externals(self.externals)  # ignores non-macvlan keys


def config_statements(text: str) -> Iterator[tuple[str, str]]:
    """Yield ``(option, value)`` from a CRIU config file, the way ``criu/config.c`` reads it.

    One ``option [value]`` a line, separated by a space or a tab; a value may be
    double-quoted (with ``\\"`` escapes); a ``#`` starts a comment, also inside a value.
    """
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        opt, *rest = _SEPARATOR.split(line, maxsplit=1)
        value = rest[0].strip() if rest else ""
        if value.startswith('"'):
            end = _closing_quote(value)
            value = value[1:end].replace('\\"', '"') if end > 0 else ""
        else:
            value = value.split(None, 1)[0] if value else ""
        yield opt.lstrip("-"), value.split("#", 1)[0]


def _closing_quote(value: str) -> int:
    """Index of the first unescaped ``"`` after the opening one, or -1."""
    pos = 0
    while (pos := value.find('"', pos + 1)) > 0:
        if value[pos - 1] != "\\":
            return pos
    return -1


def argv_statements(argv: list[str]) -> Iterator[tuple[str, str]]:
    """Yield ``(option, value)`` for the long options of a criu command line."""
    it = iter(argv)
    for arg in it:
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq and name in ("external", "empty-ns", "config"):
            value = next(it, "")
        yield name, value


def _apply(opts: CriuOptions, statements: Iterator[tuple[str, str]]) -> None:
    for name, value in statements:
        if name == "external":
            opts.externals.append(value)
        elif name == "empty-ns" and value == "net":
            opts.empty_ns_net = True


def _read_config(path: str, opts: CriuOptions) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"CRIU config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    opts.sources.append(path)
    _apply(opts, config_statements(data.decode("utf-8", "replace")))


def read_config(path: str) -> CriuOptions:
    """The options of one CRIU config file (e.g. an RPC ``config_file``); a missing file gives none."""
    opts = CriuOptions()
    _read_config(path, opts)
    return opts


def criu_pid_from_env(env: dict[str, str] | os._Environ[str]) -> int | None:
    """CRIU's pid from ``CRTOOLS_IMAGE_DIR`` (``/proc/<criu>/fd/<n>``)."""
    parts = env.get("CRTOOLS_IMAGE_DIR", "").split("/")
    if len(parts) == 5 and parts[1] == "proc" and parts[2].isdigit() and parts[3] == "fd":
        return int(parts[2])
    return None


def read_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0") if a]


def load(argv: list[str], env: dict[str, str] | os._Environ[str]) -> CriuOptions:
    """Collect CRIU's options from its command line ``argv`` and its environment ``env``."""
    opts = CriuOptions()
    cmd_config: str | None = None
    no_default = False
    for i, arg in enumerate(argv):
        if arg == "--no-default-config":
            no_default = True
        elif arg == "--config" and i + 1 < len(argv):
            cmd_config, no_default = argv[i + 1], True
        elif arg.startswith("--config="):
            cmd_config, no_default = arg.split("=", 1)[1], True
    if not no_default:
        _read_config(GLOBAL_CONFIG, opts)
        home = env.get("HOME")
        if home:
            _read_config(os.path.join(home, USER_CONFIG), opts)
    if env.get("CRIU_CONFIG_FILE"):
        _read_config(env["CRIU_CONFIG_FILE"], opts)
    if cmd_config:
        _read_config(cmd_config, opts)
    _apply(opts, argv_statements(argv[1:]))
    opts.rpc = is_rpc(argv)
    if opts.rpc:
        for path in ENGINE_CONFIGS:
            _read_config(path, opts)
    if env.get("CRIU_MACVLAN_CONFIG"):
        _read_config(env["CRIU_MACVLAN_CONFIG"], opts)
    return opts


def is_rpc(argv: list[str]) -> bool:
    """True for a CRIU in RPC mode: ``criu swrk|service ...``, or the title CRIU gives itself
    once it serves a request (``criu: restore --rpc -D DIR``, one string)."""
    if len(argv) > 1:
        return argv[1] in RPC_COMMANDS
    return bool(argv) and argv[0].startswith("criu: ") and " --rpc" in argv[0]


def load_for_criu(pid: int) -> CriuOptions:
    """Collect the options of the running criu process ``pid``."""
    # An action script inherits CRIU's environment: os.environ is CRIU's.
    return load(read_cmdline(pid), os.environ)
