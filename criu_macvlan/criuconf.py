"""Find the options CRIU itself was given: its command line and its config files.

An action script gets no options from CRIU, only ``CRTOOLS_*`` variables, so the
plugin reads what CRIU read, in CRIU's order (``criu/config.c``):

1. ``/etc/criu/default.conf`` and ``$HOME/.criu/default.conf``, unless
   ``--no-default-config`` or ``--config`` is on the command line;
2. ``$CRIU_CONFIG_FILE``;
3. ``--config FILE``;
4. the command line itself (``/proc/<criu>/cmdline``);
5. in RPC mode, the engine's config file (the RPC ``config_file``).

CRIU keeps its externals as a stack and looks a key up from the top: for one
macvlan, the last source that names it wins (the loser is logged). In RPC mode
CRIU rewrites its process title (``criu: restore --rpc -D DIR``) and scripts see
neither the RPC client's ``opts.external`` nor its ``config_file`` (CRIU gives them
only ``CRTOOLS_*`` variables and its inherited environment): the engine that
started CRIU tells which file it named (:mod:`criu_macvlan.engines`). The
plugin's own ``/etc/criu/criu-macvlan.conf`` (RPC mode) and ``$CRIU_MACVLAN_CONFIG`` come last.

Options are read the way CRIU's ``getopt_long`` reads them: unambiguous prefixes
(``--empty net``), ``--opt=value``, short options with attached values. Only the
options the plugin needs are kept: ``external`` and ``empty-ns``.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator

from . import mappings
from .errors import UsageError
from .proc import strings

GLOBAL_CONFIG = "/etc/criu/default.conf"
USER_CONFIG = ".criu/default.conf"
OWN_CONFIG = "/etc/criu/criu-macvlan.conf"
RPC_COMMANDS = ("swrk", "service")
TITLE_PREFIX = "criu: "  # CRIU's setproctitle() in RPC mode
MAX_CONFIG_BYTES = 1 << 20
COMMAND_LINE = "the command line"
_SEPARATOR = re.compile(r"[ \t]")


def _names(text: str) -> list[str]:
    return text.split()


# CRIU's long options (criu/config.c), by argument kind; getopt_long resolves prefixes against them.
_REQUIRED = frozenset(_names(
    "tree images-dir work-dir log-file join-ns root close pidfile veth-pair action-script address port "
    "prev-images-dir libdir ext-mount-map cgroup-root inherit-fd feature skip-mnt enable-fs freeze-cgroup "
    "ghost-limit irmap-scan-path lsm-profile timeout external empty-ns cgroup-props cgroup-props-file "
    "cgroup-dump-controller status-fd ps-socket config tls-cacert tls-cacrl tls-cert tls-key cgroup-yard "
    "pre-dump-mode file-validation lsm-mount-context network-lock"
))
_OPTIONAL = frozenset(_names("ext-unix-sk cpu-cap manage-cgroups verbosity"))
_BOOLS = _names(
    "restore-detached restore-sibling daemon tcp-established log-pid evasive-devices link-remap shell-job "
    "file-locks page-server track-mem auto-dedup force-irmap extra experimental skip-in-flight deprecated "
    "display-stats weak-sysctls tcp-close stream tls skip-file-rwx-check mntns-compat-mode unprivileged "
    "ghost-fiemap allow-uprobes"
)
_NO_ARG = frozenset(
    _names(
        "leave-stopped leave-running help version ms exec-cmd enable-external-sharing enable-external-masters "
        "lazy-pages all no-default-config tls-no-cn-verify"
    )
    + _BOOLS
    + [f"no-{b}" for b in _BOOLS]
)
LONG_OPTIONS = _REQUIRED | _OPTIONAL | _NO_ARG
_SHORT_REQUIRED = "tDorJWLM"  # short_opts "dSsRt:hD:o:v::x::Vr:jJ:lW:L:M:"
_SHORT_OPTIONAL = "vx"


class CriuOptions:  # plain: the cold path defines no dataclass or NamedTuple (tests/test_cold_imports.py)
    """What the plugin needs from CRIU's options."""

    def __init__(self, rpc: bool = False) -> None:
        self.externals: list[str] = []
        self.origins: list[str] = []  # the source of each external, same order
        self.empty_ns_net = False
        self.sources: list[str] = []  # files read, for messages
        self.rpc = rpc

    @property
    def mappings(self) -> dict[str, str]:
        """``IN -> OUT`` as CRIU would look them up: the last source naming a link wins."""
        by_source: dict[str, list[str]] = {}
        for origin, key in zip(self.origins, self.externals, strict=True):
            by_source.setdefault(origin, []).append(key)
        result: dict[str, str] = {}
        origins: dict[str, str] = {}
        for origin, keys in by_source.items():  # in reading order; a conflict inside one source: error
            mappings.overlay(result, origins, mappings.from_externals(keys), origin)
        return result


def resolve_long(name: str) -> str | None:
    """The long option ``name`` stands for, as ``getopt_long`` resolves it; None if unknown or ambiguous."""
    if name in LONG_OPTIONS:
        return name
    matches = [opt for opt in LONG_OPTIONS if opt.startswith(name)]
    return matches[0] if len(matches) == 1 and name else None


def config_statements(text: str) -> Iterator[tuple[str, str]]:
    """Yield ``(option, value)`` from a CRIU config file, the way ``criu/config.c`` reads it.

    One ``option [value]`` a line, separated by a space or a tab; a value may be
    double-quoted (with ``\\"`` escapes); a ``#`` starts a comment, also inside a value.
    CRIU hands each line to ``getopt_long`` as ``--option``: a prefix is resolved.
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
        name = opt.lstrip("-")
        yield resolve_long(name) or name, value.split("#", 1)[0]


def _closing_quote(value: str) -> int:
    """Index of the first unescaped ``"`` after the opening one, or -1."""
    pos = 0
    while (pos := value.find('"', pos + 1)) > 0:
        if value[pos - 1] != "\\":
            return pos
    return -1


def _tokens(argv: list[str]) -> Iterator[tuple[str | None, str]]:
    """``(option, value)`` for each option of a criu command line, ``(None, arg)`` for the rest.

    As getopt_long reads it: ``--opt value``, ``--opt=value``, unambiguous prefixes,
    short options with attached or separate values; values are never options.
    """
    it = iter(argv)
    for arg in it:
        if arg == "--":
            for rest in it:
                yield None, rest
        elif arg.startswith("--"):
            given, eq, value = arg[2:].partition("=")
            name = resolve_long(given)
            if name is not None:
                if not eq and name in _REQUIRED:
                    value = next(it, "")
                yield name, value
        elif arg.startswith("-") and len(arg) > 1:
            for pos, char in enumerate(arg[1:], 1):
                if char in _SHORT_REQUIRED or char in _SHORT_OPTIONAL:
                    if char in _SHORT_REQUIRED and pos == len(arg) - 1:
                        next(it, "")  # the value is the next argument
                    break
        else:
            yield None, arg


def argv_statements(argv: list[str]) -> Iterator[tuple[str, str]]:
    """Yield ``(option, value)`` for the long options of a criu command line."""
    return ((name, value) for name, value in _tokens(argv) if name is not None)


def parse_process(argv: list[str]) -> tuple[list[str], bool]:
    """``(argv, rpc)`` from a criu process's ``/proc/<pid>/cmdline``.

    In RPC mode CRIU rewrites its title to one string, ``criu: dump --rpc -t PID
    -D DIR``: it carries no options of the request, only that it is one. ``criu
    swrk N`` and ``criu service`` are RPC mode before the title changes.
    """
    if argv and argv[0].startswith(TITLE_PREFIX):
        return ["criu"], "--rpc" in " ".join(argv).split()
    command = next((arg for name, arg in _tokens(argv[1:]) if name is None), "")
    return argv, command in RPC_COMMANDS


def _apply(opts: CriuOptions, statements: Iterator[tuple[str, str]], origin: str) -> None:
    for name, value in statements:
        if name == "external":
            opts.externals.append(value)
            opts.origins.append(origin)
        elif name == "empty-ns" and value == "net":
            opts.empty_ns_net = True


def _read_bytes(path: str, required: bool) -> bytes | None:
    """The file's bytes; None if it is missing (or unreadable, unless ``required``)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        if not required:
            return None
        if exc.errno == errno.ENOENT:
            raise UsageError(f"CRIU config file {path} does not exist") from exc
        raise UsageError(f"cannot read CRIU config file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"CRIU config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    return data


def _read_config(path: str, opts: CriuOptions, required: bool = False) -> None:
    """Apply one config file. CRIU skips a file it cannot open; ``required`` makes that an error."""
    data = _read_bytes(path, required)
    if data is None:
        return
    opts.sources.append(path)
    _apply(opts, config_statements(data.decode("utf-8", "replace")), path)


def read_config(path: str) -> CriuOptions:
    """The options of one CRIU config file (e.g. an RPC ``config_file``); a missing file gives none."""
    opts = CriuOptions()
    _read_config(path, opts)
    return opts


def _command_line_config(argv: list[str]) -> tuple[str | None, bool]:
    """``(--config FILE, no default configs)`` exactly as CRIU's pre-parse finds them (no prefixes)."""
    cmd_config: str | None = None
    no_default = False
    for i, arg in enumerate(argv):
        if arg == "--no-default-config":
            no_default = True
        elif arg == "--config":
            cmd_config, no_default = (argv[i + 1] if i + 1 < len(argv) else None), True
        elif "--config=" in arg:
            cmd_config, no_default = arg.split("--config=", 1)[1], True
    return cmd_config, no_default


def _from_start_dir(path: str, start_dir: str | None, what: str) -> str:
    """``path`` as CRIU opened it: relative to the directory criu was started in."""
    if os.path.isabs(path):
        return path
    if not start_dir:
        raise UsageError(
            f"{what} {path} is relative and the directory criu was started in is unknown "
            "(no PWD in its environment): give criu an absolute path"
        )
    return os.path.join(start_dir, path)


def load(
    argv: list[str],
    env: dict[str, str] | os._Environ[str],
    start_dir: str | None = None,
    engine_configs: list[tuple[str, bool]] | None = None,
) -> CriuOptions:
    """Collect CRIU's options from its ``/proc/<pid>/cmdline`` ``argv`` and its environment ``env``.

    ``start_dir`` is the directory criu was started in (relative config paths);
    ``engine_configs`` the ``(path, required)`` files the engine named in RPC mode
    (default: ``/etc/criu/runc.conf``, optional).
    """
    argv, rpc = parse_process(argv)
    opts = CriuOptions(rpc=rpc)
    cmd_config, no_default = _command_line_config(argv)
    if not no_default:
        _read_config(GLOBAL_CONFIG, opts)
        home = env.get("HOME")
        if home:
            _read_config(os.path.join(home, USER_CONFIG), opts)
    if env.get("CRIU_CONFIG_FILE"):
        _read_config(_from_start_dir(env["CRIU_CONFIG_FILE"], start_dir, "$CRIU_CONFIG_FILE"), opts)
    if cmd_config:
        _read_config(_from_start_dir(cmd_config, start_dir, "--config"), opts)
    _apply(opts, argv_statements(argv[1:]), COMMAND_LINE)
    if rpc:
        from .engines import RUNC_CONFIG

        for path, required in [(RUNC_CONFIG, False)] if engine_configs is None else engine_configs:
            _read_config(path, opts, required)
        _read_config(OWN_CONFIG, opts)
    if env.get("CRIU_MACVLAN_CONFIG"):
        _read_config(env["CRIU_MACVLAN_CONFIG"], opts)
    return opts


def criu_pid_from_env(env: dict[str, str] | os._Environ[str]) -> int | None:
    """CRIU's pid from ``CRTOOLS_IMAGE_DIR`` (``/proc/<criu>/fd/<n>``)."""
    parts = env.get("CRTOOLS_IMAGE_DIR", "").split("/")
    if len(parts) == 5 and parts[1] == "proc" and parts[2].isdigit() and parts[3] == "fd":
        return int(parts[2])
    return None


def _read_proc_list(pid: int, name: str) -> list[str]:
    try:
        return strings(pid, name)
    except OSError:
        return []


def read_cmdline(pid: int) -> list[str]:
    return _read_proc_list(pid, "cmdline")


def start_dir(pid: int) -> str | None:
    """The directory the command-line criu ``pid`` was started in: ``PWD`` of its environment.

    CRIU has moved into the images or work dir by the time it runs scripts, so
    ``/proc/<pid>/cwd`` no longer tells, and the script's own ``PWD`` is reset by
    its shell; the ``PWD`` the shell that started criu set is still in criu's environment.
    """
    for item in _read_proc_list(pid, "environ"):
        if item.startswith("PWD="):
            value = item[4:]
            return value if os.path.isabs(value) else None
    return None


def load_for_criu(pid: int) -> CriuOptions:
    """Collect the options of the running criu process ``pid``."""
    argv = read_cmdline(pid)
    # An action script inherits CRIU's environment: os.environ is CRIU's.
    if not parse_process(argv)[1]:
        return load(argv, os.environ, start_dir(pid))
    # RPC mode: the title has overwritten criu's environment; the engine started criu
    # from the directory it is in (runc moves into the bundle first). Only then are the
    # engines (and their JSON) imported.
    from . import engines

    engine = engines.engine_of(pid)
    return load(argv, os.environ, engine.cwd if engine else None, engines.engine_configs(engine))
