"""``criu-macvlan``: dump and restore through CRIU's RPC, inspect, check and convert images.

Exit status (:class:`~criu_macvlan.errors.ExitCode`): 0 ok, 1 a hook failed,
2 usage, 3 bad images, 4 network, 5 CRIU failed, 6 ``check`` found problems,
70 a bug. Errors are one line on stderr; ``restore`` without ``-d`` exits with
the restored tree's status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import CriuMacvlanError, ExitCode, ImageError, UsageError, printable

if TYPE_CHECKING:  # imported by the commands that need them, not for every command
    from .images import Sidecar
    from .rpc import Criu

PROG = "criu-macvlan"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, our exit code
        sub = self.prog.removeprefix(PROG).strip()
        raise UsageError(f"{sub}: {message}" if sub else message)


def _log_level(text: str) -> int:
    """``-v`` is 3 (CRIU's default is 2), ``-vv`` 4, ``-v4`` 4."""
    if text.isdigit() and 0 <= int(text) <= 4:
        return int(text)
    if set(text) == {"v"}:
        return min(4, 3 + len(text))
    raise argparse.ArgumentTypeError(f"bad log level {text!r}")


def _criu_options(p: argparse.ArgumentParser, dump: bool) -> None:
    g = p.add_argument_group("criu options")
    g.add_argument("-D", "--images-dir", required=True, metavar="DIR")
    g.add_argument("-o", "--log-file", metavar="FILE", help="log file name in the images/work dir")
    g.add_argument("-v", dest="log_level", nargs="?", const=3, type=_log_level, metavar="N",
                   help="log level (-v, -vv, -v4)")
    g.add_argument("--tcp-established", action="store_true")
    g.add_argument("--shell-job", action="store_true")
    g.add_argument("--empty-ns", choices=["net"], help="net: the netns is set up by others (and us)")
    g.add_argument("-W", "--work-dir", metavar="DIR")
    g.add_argument("--external", action="append", default=[], metavar="KEY",
                   help="CRIU external; macvlan[IN]:OUT stays with criu-macvlan")
    g.add_argument("--config", dest="config_file", metavar="FILE", help="CRIU config file (RPC config_file)")
    g.add_argument("--opt", action="append", default=[], metavar="FIELD=VALUE",
                   help="any criu_opts field (VALUE as JSON, else a string); repeatable")
    if dump:
        g.add_argument("-t", "--tree", type=int, required=True, metavar="PID")
        g.add_argument("-R", "--leave-running", action="store_true")
        g.add_argument("--prev-images-dir", metavar="DIR", help="parent images, relative to -D (iterative)")
        g.add_argument("--track-mem", action="store_true")


def get_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="CRIU with macvlan links: dump, restore, inspect, check, convert.")
    p.add_argument("--version", action="store_true", help="print criu-macvlan's and CRIU's versions")
    p.add_argument("--criu", default=os.environ.get("CRIU", "criu"), metavar="PATH", help="the criu binary")
    p.add_argument("--service-socket", metavar="PATH", help="use a running 'criu service' instead")
    p.add_argument("--disable", action="append", default=[], metavar="PLUGIN", help="do not load PLUGIN")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    for name, text in (("dump", "checkpoint a process tree"), ("pre-dump", "pre-dump its memory (iterative)")):
        _criu_options(sub.add_parser(name, help=text, description=text), dump=True)

    r = sub.add_parser("restore", help="restore a tree; prints its pid", description="restore a tree")
    _criu_options(r, dump=False)
    _mapping_options(r)
    r.add_argument("-d", "--restore-detached", action="store_true", help="exit once restored (else wait for it)")
    r.add_argument("--pidfile", metavar="FILE", help="write the restored pid to FILE")
    r.add_argument("--announce", metavar="SPEC", help="announce the restored MACs: on, off, or "
                   "rounds=N,interval=MS (default: $CRIU_MACVLAN_ANNOUNCE, config file, else on; see docs/announce.md)")
    r.add_argument("--no-announce", dest="announce", action="store_const", const="off",
                   help="do not announce the restored MACs (= --announce off)")

    s = sub.add_parser("show", help="decode macvlan.img", description="decode macvlan.img")
    s.add_argument("images_dir", metavar="DIR")
    s.add_argument("--json", action="store_true", help="JSON (every field; MACs and IPs readable)")

    c = sub.add_parser("check", help="preflight a restore on this host (changes nothing)")
    c.add_argument("images_dir", metavar="DIR")
    _mapping_options(c)
    c.add_argument("--netns", metavar="PID|PATH", help="restoring into this existing netns (join-ns)")

    v = sub.add_parser("convert", help="switch netdev macvlan entries between CRIU and criu-macvlan")
    v.add_argument("images_dir", metavar="DIR")
    v.add_argument("--to-native", action="store_true", help="back to CRIU's own MACVLAN entries")

    sub.add_parser("plugins", help="registered plugins and the CRIU actions they handle")
    w = sub.add_parser("serve", help="keep Python warm for the action script (a host service)",
                       description="serve every CRIU action script on this host from one warm process")
    w.add_argument("--idle-timeout", type=float, metavar="SECONDS", help="exit after this long without a request")
    w.add_argument("--dir", metavar="DIR", help="runtime directory (default $CRIU_MACVLAN_SERVE_DIR, "
                   "else /run/criu-macvlan/serve; the action script must see the same)")
    return p


def _mapping_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--macvlan", action="append", default=[], metavar="IN:OUT",
                   help="recreate macvlan IN on host interface OUT; repeatable")
    if not any(a.dest == "external" for a in p._actions):
        p.add_argument("--external", action="append", default=[], metavar="macvlan[IN]:OUT")


def _mappings(args: argparse.Namespace) -> dict[str, str]:
    from . import mappings

    pairs = [mappings.parse_mapping(m) for m in args.macvlan]
    pairs += [mappings.parse_mapping(k) for k in args.external if mappings.is_macvlan_external(k)]
    return mappings.merge(pairs)


def _opts(args: argparse.Namespace) -> dict[str, Any]:
    import json  # here, not for every command

    opts: dict[str, Any] = {}
    for item in args.opt:
        key, eq, raw = item.partition("=")
        if not eq:
            raise UsageError(f"--opt {item!r}: expected FIELD=VALUE")
        try:
            opts[key] = json.loads(raw)
        except ValueError:
            opts[key] = raw
    simple = {
        "log_file": args.log_file, "log_level": args.log_level, "work_dir": args.work_dir,
        "config_file": args.config_file,
        "tcp_established": args.tcp_established or None, "shell_job": args.shell_job or None,
        "empty_ns_net": args.empty_ns == "net" or None,
    }
    if args.command in ("dump", "pre-dump"):
        simple |= {"leave_running": args.leave_running or None, "parent_img": args.prev_images_dir,
                   "track_mem": args.track_mem or None}
    opts |= {k: v for k, v in simple.items() if v is not None}
    others = [k for k in args.external if not k.startswith("macvlan[")]
    if others:
        opts["external"] = others
    return opts


def _driver(args: argparse.Namespace) -> Criu:
    from .rpc import Criu

    return Criu(args.criu, service_socket=args.service_socket, disable=args.disable)


def cmd_dump(args: argparse.Namespace) -> int:
    criu = _driver(args)
    run = criu.dump if args.command == "dump" else criu.pre_dump
    run(args.tree, args.images_dir, **_opts(args))
    return ExitCode.OK


def cmd_restore(args: argparse.Namespace) -> int:
    opts = _opts(args)
    if args.announce is not None:
        opts["announce"] = args.announce
    if not args.restore_detached:
        opts["rst_sibling"] = True  # the tree becomes our child: wait for it like criu restore does
    pid = _driver(args).restore(args.images_dir, _mappings(args), **opts)
    if args.pidfile:
        _write_pidfile(args.pidfile, pid)
    print(pid, flush=True)
    if args.restore_detached:
        return ExitCode.OK
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code & 0xFF  # killed by a signal: 128+N, as a shell says


def _write_pidfile(path: str, pid: int) -> None:
    """``path`` replaced by a new file holding ``pid``: a symlink there is replaced, never followed."""
    from .images import replace

    try:
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            replace(dir_fd, os.path.basename(path), f"{pid}\n".encode("ascii"), 0o644)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise CriuMacvlanError(f"--pidfile {path}: cannot write it ({exc.strerror or exc}); "
                               f"the tree is restored as pid {pid}") from exc


def _load_sidecar(path: str) -> Sidecar:
    from . import images
    from .context import open_images

    d = open_images(path)
    try:
        sidecar = images.load(d.fd)
    finally:
        d.close()
    if sidecar is None:
        raise ImageError(f"{path}: no {images.SIDECAR} (the dump had no macvlan, or ran without criu-macvlan)")
    return sidecar


def cmd_show(args: argparse.Namespace) -> int:
    from . import render

    sidecar = _load_sidecar(args.images_dir)
    print(render.to_json(sidecar) if args.json else render.table(sidecar))
    return ExitCode.OK


def cmd_check(args: argparse.Namespace) -> int:
    from . import preflight

    report = preflight.check(args.images_dir, _mappings(args), args.netns)
    for w in report.warnings:
        print(f"{PROG}: warning: {printable(w)}", file=sys.stderr)
    for problem in report.problems:
        print(f"{PROG}: {printable(problem)}", file=sys.stderr)
    if report.problems:
        return ExitCode.CHECK
    print(f"ok: {report.links} macvlan link(s) can be restored from {args.images_dir}")
    return ExitCode.OK


def cmd_convert(args: argparse.Namespace) -> int:
    from . import convert

    changed = convert.convert(args.images_dir, to_native=args.to_native)
    kind = "MACVLAN (CRIU's own)" if args.to_native else "EXTLINK (criu-macvlan's)"
    print(f"{changed} netdev entr{'y' if changed == 1 else 'ies'} now {kind}")
    return ExitCode.OK


def cmd_plugins(args: argparse.Namespace) -> int:
    from .manager import plugin_manager, write_actions_cache

    hooks = plugin_manager(args.disable)
    write_actions_cache(hooks)
    for name in hooks.plugin_names():
        plugin = hooks.pm.get_plugin(name)
        actions = [a for a, h in _action_hooks() if any(i.plugin is plugin for i in getattr(hooks.pm.hook, h)
                                                         .get_hookimpls())]
        print(f"{name}: {' '.join(actions) or '-'}")
    print(f"handled actions: {' '.join(hooks.handled_actions()) or '-'}")
    return ExitCode.OK


def cmd_serve(args: argparse.Namespace) -> int:
    from . import serve

    path = args.dir or serve.serve_dir()

    def ready() -> None:
        print(f"{PROG}: serving at {path} (pid {os.getpid()})", file=sys.stderr, flush=True)

    return serve.serve(path, idle_timeout=args.idle_timeout, ready=ready)


def _action_hooks() -> list[tuple[str, str]]:
    from .hookspecs import ACTIONS

    return list(ACTIONS.items())


def cmd_version(args: argparse.Namespace) -> int:
    print(f"{PROG} {__version__}")
    try:
        print(f"criu {_driver(args).version()}")
    except CriuMacvlanError as exc:
        print(f"criu: unavailable ({exc})")
    return ExitCode.OK


COMMANDS = {
    "dump": cmd_dump, "pre-dump": cmd_dump, "restore": cmd_restore, "show": cmd_show,
    "check": cmd_check, "convert": cmd_convert, "plugins": cmd_plugins, "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = get_parser().parse_args(argv)
        if args.version:
            return cmd_version(args)
        if args.command is None:
            raise UsageError(f"a command is required (see {PROG} --help)")
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a reader that went away is handled
        return code
    except CriuMacvlanError as exc:
        print(f"{PROG}: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as exc:
        if _reader_gone():  # `show | head`: nothing left to say to it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
            return 128 + signal.SIGPIPE
        return _bug(exc)
    except Exception as exc:
        return _bug(exc)


def _reader_gone() -> bool:
    """Whether our stdout is a pipe nobody reads any more."""
    import select

    poller = select.poll()
    poller.register(sys.stdout.fileno(), 0)
    return any(ev & select.POLLERR for _, ev in poller.poll(0))


def _bug(exc: Exception) -> int:
    """A bug: still one line (the traceback with ``CRIU_MACVLAN_DEBUG=1``)."""
    print(f"{PROG}: internal error: {printable(f'{type(exc).__name__}: {exc}')} "
          "(set CRIU_MACVLAN_DEBUG=1 and report it)", file=sys.stderr)
    if os.environ.get("CRIU_MACVLAN_DEBUG", "") not in ("", "0"):
        raise exc
    return ExitCode.BUG


def run() -> NoReturn:
    """The ``criu-macvlan`` command: :func:`main`, then exit without the interpreter's teardown.

    With pyroute2, protobuf and pluggy loaded the teardown takes tens of
    milliseconds after the work is done (our files are closed by then).
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
