"""Reading CRIU's options like CRIU does: config files, command line, their order (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from criu_macvlan import criuconf
from criu_macvlan.context import ActionContext, ImagesDir, Mode
from criu_macvlan.errors import UsageError


@pytest.fixture
def confdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the well-known config paths into ``tmp_path`` (none exists until a test writes it)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.setattr(criuconf, "GLOBAL_CONFIG", str(etc / "default.conf"))
    monkeypatch.setattr(criuconf, "ENGINE_CONFIGS", (str(etc / "runc.conf"), str(etc / "criu-macvlan.conf")))
    (tmp_path / "home" / ".criu").mkdir(parents=True)
    return tmp_path


def env_for(confdir: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(confdir / "home"), **extra}


# ------------------------------------------------------------ config files


def test_config_statements_comments_quotes_and_separators() -> None:
    text = "\n".join(
        [
            "# a comment",
            "   # an indented comment",
            "",
            "   ",
            "tcp-established",
            "external macvlan[mv0]:eth0",
            "external\tmacvlan[mv1]:eth1",  # tab separator
            "  external   macvlan[mv2]:eth2   ",  # surrounding blanks
            "external macvlan[mv3]:eth3 # trailing comment",
            "external macvlan[mv4]:eth4#glued comment",
            'external "macvlan[mv5]:eth5"',
            'external "macvlan[mv6]:eth6" # comment after quotes',
            'lsm-profile "a \\"quoted\\" word"',
            "--empty-ns net",  # leading dashes are tolerated
            "log-file",
        ]
    )
    assert list(criuconf.config_statements(text)) == [
        ("tcp-established", ""),
        ("external", "macvlan[mv0]:eth0"),
        ("external", "macvlan[mv1]:eth1"),
        ("external", "macvlan[mv2]:eth2"),
        ("external", "macvlan[mv3]:eth3"),
        ("external", "macvlan[mv4]:eth4"),
        ("external", "macvlan[mv5]:eth5"),
        ("external", "macvlan[mv6]:eth6"),
        ("lsm-profile", 'a "quoted" word'),
        ("empty-ns", "net"),
        ("log-file", ""),
    ]


def test_config_unterminated_quote_gives_empty_value() -> None:
    assert list(criuconf.config_statements('external "macvlan[mv0]:eth0')) == [("external", "")]


# ------------------------------------------------------------ command line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--external", "macvlan[a]:b"], [("external", "macvlan[a]:b")]),
        (["--external=macvlan[a]:b"], [("external", "macvlan[a]:b")]),
        (["--empty-ns", "net"], [("empty-ns", "net")]),
        (["--empty-ns=net"], [("empty-ns", "net")]),
        (["--config", "/x.conf", "-v4"], [("config", "/x.conf")]),
        (["--external"], [("external", "")]),  # value missing at the end
        (["-t", "1", "--leave-running", "-D", "/img"], [("leave-running", "")]),
    ],
)
def test_argv_statements(argv: list[str], expected: list[tuple[str, str]]) -> None:
    assert list(criuconf.argv_statements(argv)) == expected


def test_load_command_line(confdir: Path) -> None:
    argv = ["criu", "restore", "-d", "--external", "macvlan[mv0]:eth0", "--external=net[1]:x",
            "--external=macvlan[mv1]:eth1", "--empty-ns", "net"]
    opts = criuconf.load(argv, env_for(confdir))
    assert opts.externals == ["macvlan[mv0]:eth0", "net[1]:x", "macvlan[mv1]:eth1"]
    assert opts.mappings == {"mv0": "eth0", "mv1": "eth1"}
    assert opts.empty_ns_net is True
    assert opts.sources == []


def test_empty_ns_other_than_net_is_not_net(confdir: Path) -> None:
    assert criuconf.load(["criu", "dump", "--empty-ns", "mnt"], env_for(confdir)).empty_ns_net is False


# ---------------------------------------------------------- sources' order


def write_all(confdir: Path) -> dict[str, Path]:
    files = {
        "global": Path(criuconf.GLOBAL_CONFIG),
        "user": confdir / "home" / ".criu" / "default.conf",
        "env": confdir / "env.conf",
        "cmd": confdir / "cmd.conf",
        "runc": Path(criuconf.ENGINE_CONFIGS[0]),
        "ours": Path(criuconf.ENGINE_CONFIGS[1]),
        "mine": confdir / "mine.conf",
    }
    for key, path in files.items():
        path.write_text(f"external macvlan[{key}]:p-{key}\n")
    return files


def test_order_of_sources(confdir: Path) -> None:
    files = write_all(confdir)
    env = env_for(confdir, CRIU_CONFIG_FILE=str(files["env"]), CRIU_MACVLAN_CONFIG=str(files["mine"]))
    opts = criuconf.load(["criu", "restore", "--external", "macvlan[argv]:p-argv"], env)
    assert [e.split("[")[1].split("]")[0] for e in opts.externals] == ["global", "user", "env", "argv", "mine"]
    assert opts.sources == [str(files[k]) for k in ("global", "user", "env", "mine")]


def test_config_option_replaces_default_configs(confdir: Path) -> None:
    files = write_all(confdir)
    env = env_for(confdir, CRIU_CONFIG_FILE=str(files["env"]))
    for argv in (["criu", "dump", "--config", str(files["cmd"])], ["criu", "dump", f"--config={files['cmd']}"]):
        opts = criuconf.load(argv, env)
        assert opts.sources == [str(files["env"]), str(files["cmd"])], argv
        assert list(opts.mappings) == ["env", "cmd"]


def test_no_default_config(confdir: Path) -> None:
    write_all(confdir)
    opts = criuconf.load(["criu", "dump", "--no-default-config"], env_for(confdir))
    assert opts.sources == []
    assert opts.externals == []


def test_rpc_mode_reads_engine_configs(confdir: Path) -> None:
    files = write_all(confdir)
    for cmd in ("swrk", "service"):
        opts = criuconf.load(["criu", cmd, "3"], env_for(confdir))
        assert opts.sources == [str(files[k]) for k in ("global", "user", "runc", "ours")], cmd
    # not in RPC mode: engine configs are someone else's business
    opts = criuconf.load(["criu", "restore"], env_for(confdir))
    assert str(files["runc"]) not in opts.sources


def test_missing_and_unreadable_configs_are_skipped(confdir: Path) -> None:
    env = env_for(confdir, CRIU_CONFIG_FILE=str(confdir / "nope.conf"), CRIU_MACVLAN_CONFIG="/dev/null/x")
    opts = criuconf.load(["criu", "restore"], env)
    assert opts.sources == []


def test_conflict_between_file_and_command_line(confdir: Path) -> None:
    Path(criuconf.GLOBAL_CONFIG).write_text("external macvlan[mv0]:eth0\n")
    opts = criuconf.load(["criu", "restore", "--external", "macvlan[mv0]:eth9"], env_for(confdir))
    with pytest.raises(UsageError, match="conflicting mappings for macvlan 'mv0'"):
        _ = opts.mappings
    # agreeing repetitions are fine
    opts = criuconf.load(["criu", "restore", "--external", "macvlan[mv0]:eth0"], env_for(confdir))
    assert opts.mappings == {"mv0": "eth0"}


def test_oversized_config_is_an_error(confdir: Path) -> None:
    Path(criuconf.GLOBAL_CONFIG).write_bytes(b"#" * (criuconf.MAX_CONFIG_BYTES + 1))
    with pytest.raises(UsageError, match="larger than"):
        criuconf.load(["criu", "restore"], env_for(confdir))


def test_non_utf8_config_does_not_crash(confdir: Path) -> None:
    Path(criuconf.GLOBAL_CONFIG).write_bytes(b"external macvlan[mv0]:eth0\n\xff\xfe garbage\n")
    assert criuconf.load(["criu", "restore"], env_for(confdir)).mappings == {"mv0": "eth0"}


# --------------------------------------------------- finding CRIU's process


@pytest.mark.parametrize(
    ("value", "pid"),
    [("/proc/1234/fd/7", 1234), ("/proc/self/fd/7", None), ("/tmp/img", None), ("", None), ("/proc/12/fd", None)],
)
def test_criu_pid_from_env(value: str, pid: int | None) -> None:
    assert criuconf.criu_pid_from_env({"CRTOOLS_IMAGE_DIR": value}) == pid


def test_read_cmdline_of_a_process() -> None:
    argv = criuconf.read_cmdline(os.getpid())
    assert argv and "python" in argv[0]
    assert criuconf.read_cmdline(2**22 + 1) == []  # above pid_max: no such process


def test_rpc_mode_from_the_title_criu_gives_itself(confdir: Path) -> None:
    # serving a request, CRIU rewrites its cmdline to one string: what an action script sees
    files = write_all(confdir)
    title = ["criu: restore --rpc -D /srv/images"]
    assert criuconf.is_rpc(title) and criuconf.is_rpc(["criu", "swrk", "3"])
    assert not criuconf.is_rpc(["criu", "restore", "--rpc-ish"]) and not criuconf.is_rpc(["criu: restore -D x"])
    opts = criuconf.load(title, env_for(confdir))
    assert opts.rpc and str(files["runc"]) in opts.sources and str(files["ours"]) in opts.sources


@pytest.mark.parametrize(
    ("mode", "criu_rpc", "hint"),
    [
        (Mode.ACTION_SCRIPT, False, "add --external macvlan[mv0]:OUT (criu's command line or a CRIU config file)"),
        (Mode.ACTION_SCRIPT, True, "add 'external macvlan[mv0]:OUT' to /etc/criu/criu-macvlan.conf or the file "
         "named by $CRIU_MACVLAN_CONFIG (an action script cannot see an RPC client's opts.external)"),
        (Mode.RPC, False, "add --external macvlan[mv0]:OUT (RPC opts.external or a CRIU config file)"),
    ],
)
def test_missing_mapping_hint_names_what_the_caller_can_use(mode: Mode, criu_rpc: bool, hint: str) -> None:
    from criu_macvlan import images
    from criu_macvlan import macvlan_pb2 as pb
    from criu_macvlan.plugin import plan_restore

    sidecar = images.Sidecar(pb.macvlan_head(version=1, n_links=1), [pb.macvlan_link(name="mv0")])
    ctx = ActionContext(action="setup-namespaces", mode=mode, images=ImagesDir(-1, "img"), criu_rpc=criu_rpc)
    with pytest.raises(UsageError) as info:
        plan_restore(sidecar, {}, ctx)
    assert str(info.value) == f"no parent given for macvlan[mv0]:OUT: {hint}"
