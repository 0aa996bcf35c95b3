"""Reading CRIU's options like CRIU does: config files, command line, their order (no root needed)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from criu_macvlan import criuconf, engines
from criu_macvlan.context import ActionContext, ImagesDir, Mode
from criu_macvlan.errors import UsageError


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
            "empty net",  # a prefix, as getopt_long reads it
            "exte macvlan[mv7]:eth7",
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
        ("empty-ns", "net"),
        ("external", "macvlan[mv7]:eth7"),
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
        # getopt_long: unambiguous prefixes, with or without =
        (["--empty", "net"], [("empty-ns", "net")]),
        (["--empty=net"], [("empty-ns", "net")]),
        (["--exte", "macvlan[a]:b"], [("external", "macvlan[a]:b")]),
        (["--extern=macvlan[a]:b"], [("external", "macvlan[a]:b")]),
        (["--ext", "macvlan[a]:b"], []),  # ambiguous (ext-mount-map, ext-unix-sk, extra): criu refuses it
        (["--leave-r"], [("leave-running", "")]),
        (["--tcp-est"], [("tcp-established", "")]),
        # values of options are not options
        (["-D", "--external", "x"], []),
        (["--log-file", "--empty-ns", "net"], [("log-file", "--empty-ns")]),
        (["-vvvv", "--external", "m[a]:b"], [("external", "m[a]:b")]),
        (["-D/img", "--empty-ns", "net"], [("empty-ns", "net")]),
        (["-dD", "--empty-ns"], []),
        (["--", "--external", "x"], []),
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


def test_empty_prefix_sets_empty_ns(confdir: Path) -> None:
    assert criuconf.load(["criu", "restore", "--empty", "net"], env_for(confdir)).empty_ns_net is True
    Path(criuconf.GLOBAL_CONFIG).write_text("empty net\n")
    assert criuconf.load(["criu", "restore"], env_for(confdir)).empty_ns_net is True


def test_empty_ns_other_than_net_is_not_net(confdir: Path) -> None:
    assert criuconf.load(["criu", "dump", "--empty-ns", "mnt"], env_for(confdir)).empty_ns_net is False


# ---------------------------------------------------------- sources' order


def write_all(confdir: Path) -> dict[str, Path]:
    files = {
        "global": Path(criuconf.GLOBAL_CONFIG),
        "user": confdir / "home" / ".criu" / "default.conf",
        "env": confdir / "env.conf",
        "cmd": confdir / "cmd.conf",
        "runc": Path(engines.RUNC_CONFIG),
        "ours": Path(criuconf.OWN_CONFIG),
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


def test_relative_config_is_read_from_criu_start_dir(confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start, images = confdir / "start", confdir / "images"
    start.mkdir()
    images.mkdir()
    (start / "my.conf").write_text("external macvlan[mv0]:right\n")
    (images / "my.conf").write_text("external macvlan[mv0]:wrong\n")  # where CRIU and the hook are now
    monkeypatch.chdir(images)
    for argv in (["criu", "restore", "--config", "my.conf"], ["criu", "restore", "--config=my.conf"]):
        opts = criuconf.load(argv, env_for(confdir), start_dir=str(start))
        assert opts.mappings == {"mv0": "right"}, argv
        assert opts.sources == [str(start / "my.conf")]
    env = env_for(confdir, CRIU_CONFIG_FILE="my.conf")
    assert criuconf.load(["criu", "restore"], env, start_dir=str(start)).mappings == {"mv0": "right"}
    with pytest.raises(UsageError, match=r"--config my.conf is relative .* give criu an absolute path"):
        criuconf.load(["criu", "restore", "--config", "my.conf"], env_for(confdir), start_dir=None)


def test_config_is_found_as_criu_pre_parse_finds_it(confdir: Path) -> None:
    conf = confdir / "cmd.conf"
    conf.write_text("external macvlan[mv0]:eth0\n")
    Path(criuconf.GLOBAL_CONFIG).write_text("external macvlan[mv1]:eth1\n")
    # CRIU's pre-parse matches --config exactly: a prefix is no config file, defaults stay
    opts = criuconf.load(["criu", "restore", "--conf", str(conf)], env_for(confdir))
    assert opts.mappings == {"mv1": "eth1"}


def started(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``cmd``, once the kernel shows its new environment (exec reports success a little earlier)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env)
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{proc.pid}/environ").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def test_start_dir_is_pwd_of_criu_environment(tmp_path: Path) -> None:
    path = os.environ.get("PATH", "")
    for pwd, expected in (("/where/criu/started", "/where/criu/started"), ("relative", None)):
        proc = started(["sleep", "100"], tmp_path, {"PATH": path, "PWD": pwd})
        try:
            assert criuconf.start_dir(proc.pid) == expected
        finally:
            proc.kill()
            proc.wait()


def test_no_default_config(confdir: Path) -> None:
    write_all(confdir)
    opts = criuconf.load(["criu", "dump", "--no-default-config"], env_for(confdir))
    assert opts.sources == []
    assert opts.externals == []


RPC_TITLES = [
    ["criu", "swrk", "3"],
    ["criu", "service", "--address", "/run/criu.sock"],
    ["criu", "-v4", "swrk", "3"],
    ["criu: dump --rpc -t 4242 -D /var/lib/img"],
    ["criu: restore --rpc -D /var/lib/img"],
    ["criu: pre-dump --rpc -t 4242"],
    ["criu: restore --rpc", "-D", "/var/lib/img"],  # a title that kept NUL separators
]


@pytest.mark.parametrize("argv", RPC_TITLES)
def test_rpc_mode_from_every_title(argv: list[str]) -> None:
    assert criuconf.parse_process(argv)[1] is True


@pytest.mark.parametrize(
    "argv",
    [
        ["criu", "restore", "-D", "/img"],
        ["criu", "dump", "-t", "1", "-D", "swrk"],  # a value, not the command
        ["/usr/sbin/criu", "--log-file", "service", "restore"],
        ["criu", "check"],
        ["criu: restore -D /img"],  # a title without --rpc
        [],
    ],
)
def test_cli_mode(argv: list[str]) -> None:
    assert criuconf.parse_process(argv)[1] is False


def test_rpc_title_options_are_not_the_requests(confdir: Path) -> None:
    # the title shows -t/-D it made up: never --external, and no default config switched off
    opts = criuconf.load(["criu: restore --rpc --external macvlan[a]:b -D /img"], env_for(confdir))
    assert opts.rpc and opts.externals == []


def test_rpc_mode_reads_engine_configs(confdir: Path) -> None:
    files = write_all(confdir)
    for cmd in RPC_TITLES:
        opts = criuconf.load(cmd, env_for(confdir))
        assert opts.sources == [str(files[k]) for k in ("global", "user", "runc", "ours")], cmd
    # the files the engine named, in its order, instead of runc.conf
    crun = Path(engines.CRUN_CONFIG)
    crun.write_text("external macvlan[crun]:p-crun\n")
    opts = criuconf.load(["criu: dump --rpc"], env_for(confdir), engine_configs=[(str(crun), True)])
    assert opts.sources == [str(files["global"]), str(files["user"]), str(crun), str(files["ours"])]
    # not in RPC mode: engine configs are someone else's business
    opts = criuconf.load(["criu", "restore"], env_for(confdir))
    assert str(files["runc"]) not in opts.sources


def test_missing_and_unreadable_configs_are_skipped(confdir: Path) -> None:
    env = env_for(confdir, CRIU_CONFIG_FILE=str(confdir / "nope.conf"), CRIU_MACVLAN_CONFIG="/dev/null/x")
    opts = criuconf.load(["criu", "restore"], env)
    assert opts.sources == []


def test_command_line_wins_over_a_config_file_as_in_criu(confdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    Path(criuconf.GLOBAL_CONFIG).write_text("external macvlan[mv0]:eth0\n")
    opts = criuconf.load(["criu", "restore", "--external", "macvlan[mv0]:eth9"], env_for(confdir))
    assert opts.mappings == {"mv0": "eth9"}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "macvlan[mv0]:eth9 from the command line" in lines[0]
    assert f"macvlan[mv0]:eth0 from {criuconf.GLOBAL_CONFIG}" in lines[0]
    # agreeing repetitions are fine, and silent
    caplog.clear()
    opts = criuconf.load(["criu", "restore", "--external", "macvlan[mv0]:eth0"], env_for(confdir))
    assert opts.mappings == {"mv0": "eth0"}
    assert not caplog.records


def test_later_config_file_wins(confdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    Path(criuconf.GLOBAL_CONFIG).write_text("external macvlan[mv0]:eth0\nexternal macvlan[mv1]:eth1\n")
    env_conf = confdir / "env.conf"
    env_conf.write_text("external macvlan[mv0]:eth5\n")
    opts = criuconf.load(["criu", "restore"], env_for(confdir, CRIU_CONFIG_FILE=str(env_conf)))
    assert opts.mappings == {"mv0": "eth5", "mv1": "eth1"}
    assert [str(env_conf) in r.getMessage() for r in caplog.records] == [True]


def test_rpc_engine_file_wins_over_default_config(confdir: Path) -> None:
    Path(criuconf.GLOBAL_CONFIG).write_text("external macvlan[mv0]:eth0\n")
    Path(engines.RUNC_CONFIG).write_text("external macvlan[mv0]:eth7\n")
    opts = criuconf.load(["criu: restore --rpc -D /img"], env_for(confdir))
    assert opts.mappings == {"mv0": "eth7"}


@pytest.mark.parametrize(
    "where",
    ["file", "argv"],
)
def test_two_parents_within_one_source_stay_an_error(confdir: Path, where: str) -> None:
    argv = ["criu", "restore"]
    if where == "file":
        Path(criuconf.GLOBAL_CONFIG).write_text("external macvlan[mv0]:eth0\nexternal macvlan[mv0]:eth9\n")
    else:
        argv += ["--external", "macvlan[mv0]:eth0", "--external=macvlan[mv0]:eth9"]
    opts = criuconf.load(argv, env_for(confdir))
    with pytest.raises(UsageError, match="conflicting mappings for macvlan 'mv0'"):
        _ = opts.mappings


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
    assert criuconf.parse_process(title)[1] and criuconf.parse_process(["criu", "swrk", "3"])[1]
    assert not criuconf.parse_process(["criu", "restore", "--rpc-ish"])[1]
    assert not criuconf.parse_process(["criu: restore -D x"])[1]
    opts = criuconf.load(title, env_for(confdir))
    assert opts.rpc and str(files["runc"]) in opts.sources and str(files["ours"]) in opts.sources


@pytest.mark.parametrize(
    ("mode", "criu_rpc", "hint"),
    [
        (Mode.ACTION_SCRIPT, False, "add --external macvlan[mv0]:OUT (criu's command line or a CRIU config file)"),
        (Mode.ACTION_SCRIPT, True, "add 'external macvlan[mv0]:OUT' to /etc/criu/criu-macvlan.conf or the file "
         "named by $CRIU_MACVLAN_CONFIG (an action script cannot see an RPC client's opts.external)"),
        (Mode.RPC, False, "add --macvlan mv0:OUT (criu-macvlan restore; in Python, mappings={IN: OUT})"),
    ],
)
def test_missing_mapping_hint_names_what_the_caller_can_use(mode: Mode, criu_rpc: bool, hint: str) -> None:
    from criu_macvlan import images
    from criu_macvlan import macvlan_pb2 as pb
    from criu_macvlan.macvlan.restore import plan_restore

    sidecar = images.Sidecar(pb.macvlan_head(version=1, n_links=1), [pb.macvlan_link(name="mv0")])
    ctx = ActionContext(action="setup-namespaces", mode=mode, images=ImagesDir(-1, "img"), criu_rpc=criu_rpc)
    with pytest.raises(UsageError) as info:
        plan_restore(sidecar, {}, ctx)
    assert str(info.value) == f"no parent given for macvlan[mv0]:OUT: {hint}"
