"""The sidecar image and the netdev rewrite: round trips, hostile input, atomic and safe file access.

No root needed: everything runs on files in a temporary images directory.
"""

from __future__ import annotations

import ast
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import read_line
from sidecars import encoded, full_head, full_link, netdev_entries, valid_samples

from criu_macvlan import images, netdev
from criu_macvlan import macvlan_pb2 as pb
from criu_macvlan.errors import ExitCode, ImageError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def imgdir(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    d = tmp_path / "img"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield d, fd
    finally:
        os.close(fd)


def raw_sidecar(head: pb.macvlan_head, links: list[pb.macvlan_link]) -> bytes:
    """Frame a sidecar without the encoder's validation (to make bad ones)."""
    return images.frame(images.MACVLAN_MAGIC, [head.SerializeToString(), *(lk.SerializeToString() for lk in links)])


def head_for(n: int, version: int = images.VERSION) -> pb.macvlan_head:
    return pb.macvlan_head(version=version, n_links=n)


def expect_error(data: bytes, *fragments: str, name: str = "macvlan.img") -> str:
    with pytest.raises(ImageError) as info:
        images.decode(data, name)
    message = str(info.value)
    assert message.startswith(f"{name}: "), message
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.exit_code == ExitCode.IMAGE
    return message


# -------------------------------------------------------------- round trip


def test_magic_constants_match_pycriu() -> None:
    import pycriu.images.magic as magic
    from pycriu.images import netdev_pb2

    assert magic.by_name["IMG_COMMON"] == images.IMG_COMMON
    assert magic.by_name["NETDEV"] == netdev.NETDEV_MAGIC
    assert images.MACVLAN_MAGIC not in magic.by_name.values()  # ours does not collide with CRIU's
    assert netdev_pb2.EXTLINK == netdev.ND_EXTLINK
    assert netdev_pb2.MACVLAN == netdev.ND_MACVLAN


def test_full_link_sets_every_field() -> None:
    """Guard for the round trip below: the sample must exercise every field of the schema."""

    def unset(msg: object) -> list[str]:
        missing = []
        for field in msg.DESCRIPTOR.fields:  # type: ignore[attr-defined]
            if field.label == field.LABEL_REPEATED:
                if not getattr(msg, field.name):
                    missing.append(field.name)
            elif not msg.HasField(field.name):  # type: ignore[attr-defined]
                missing.append(field.name)
        return missing

    link = full_link(0, mode=16)
    assert unset(link) == []
    assert unset(link.parent) == []
    assert unset(full_head()) == []
    assert set(unset(link.addrs[0])) == {"peer"} and set(unset(link.addrs[1])) >= {"broadcast"}
    assert not {f.name for f in pb.macvlan_route.DESCRIPTOR.fields} - {
        f.name for r in link.routes for f, _ in r.ListFields()
    }


def test_round_trip_every_field(imgdir: tuple[Path, int]) -> None:
    d, fd = imgdir
    links = [full_link(i, mode) for i, mode in enumerate(images.MACVLAN_MODES)]
    head = full_head()
    data = images.encode(head, links)
    assert head.version == images.VERSION and head.n_links == len(links)
    images.write_atomic(fd, images.SIDECAR, data)
    loaded = images.load(fd)
    assert loaded is not None
    assert loaded.head == head
    assert loaded.links == links
    assert images.encode(loaded.head, loaded.links) == data  # stable encoding
    assert stat.S_IMODE((d / images.SIDECAR).stat().st_mode) == criu_image_mode()


def criu_image_mode() -> int:
    """The mode CRIU gives a new image: CR_FD_PERM (0644) under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o644 & ~umask


def test_missing_sidecar_is_none(imgdir: tuple[Path, int]) -> None:
    assert images.load(imgdir[1]) is None


def test_encoder_refuses_what_the_decoder_refuses() -> None:
    bad = full_link(0)
    bad.address = b"\x00" * 5
    with pytest.raises(ImageError, match=r"^sidecar: link 'mv0': MAC address has 5 bytes, not 6$"):
        images.encode(full_head(), [bad])


# ------------------------------------------------------------ bad framing


def test_empty_file() -> None:
    expect_error(b"", "too short for an image header (0 bytes)")


@pytest.mark.parametrize("sample", sorted(valid_samples()))
def test_truncated_at_every_byte(sample: str) -> None:
    data = valid_samples()[sample]
    images.decode(data)  # whole: fine
    for cut in range(len(data)):
        with pytest.raises(ImageError) as info:
            images.decode(data[:cut])
        assert str(info.value).startswith("macvlan.img: "), (cut, str(info.value))


def test_wrong_magic() -> None:
    data = valid_samples()["one-link"]
    netdev_magic = data[:4] + netdev.NETDEV_MAGIC.to_bytes(4, "little") + data[8:]
    expect_error(netdev_magic, "wrong magic", f"expected {images.MACVLAN_MAGIC:#010x}")
    expect_error(b"\0\0\0\0" + data[4:], "wrong magic")


def test_size_field_larger_than_file() -> None:
    data = bytearray(valid_samples()["one-link"])
    data[8:12] = (len(data)).to_bytes(4, "little")
    expect_error(bytes(data), "entry at byte 8 claims")
    expect_error(bytes(data[:8]) + b"\xff\xff\xff\xff", "claims 4294967295 bytes")


def test_trailing_partial_size_field() -> None:
    expect_error(valid_samples()["one-link"] + b"\x01\x00", "truncated entry size")


def test_no_head() -> None:
    expect_error(images.frame(images.MACVLAN_MAGIC, []), "no head entry")


def test_garbage_entries() -> None:
    expect_error(images.frame(images.MACVLAN_MAGIC, [b"\xff\xff\xff"]), "head is not a valid entry")
    expect_error(images.frame(images.MACVLAN_MAGIC, [b""]), "head lacks required fields", "version")
    head = head_for(1).SerializeToString()
    expect_error(images.frame(images.MACVLAN_MAGIC, [head, b"\x0a\xff"]), "link #0 is not a valid entry")
    expect_error(images.frame(images.MACVLAN_MAGIC, [head, b"\x0a\x01a"]), "link #0 lacks required fields")


def test_entry_cut_short_by_an_end_group_tag() -> None:
    """protobuf's C++ backend stops at a stray end-group tag and keeps what it read: an error here."""
    data = valid_samples()["one-link"]
    entries = images.unframe(data, images.MACVLAN_MAGIC, "macvlan.img")
    cut = images.frame(images.MACVLAN_MAGIC, [entries[0], entries[1] + b"\x0c" + b"rest of the entry"])
    expect_error(cut, "link #0 is not a valid entry", "end-group")  # 0x0c: end group, field 1
    # and the backend's warning does not add a line to the one-line error (pytest shows every warning)
    code = "import sys; from criu_macvlan import images; images.decode(sys.stdin.buffer.read())"
    res = subprocess.run([sys.executable, "-c", code], input=cut, capture_output=True, check=False)
    assert res.returncode != 0 and b"ImageError" in res.stderr and b"end-group tag:" not in res.stderr


@pytest.mark.parametrize("version", [images.VERSION + 1, 2**32 - 1])
def test_future_format_version(version: int) -> None:
    expect_error(raw_sidecar(head_for(0, version), []), f"format version {version} is newer", "upgrade")


def test_version_zero() -> None:
    expect_error(raw_sidecar(head_for(0, 0), []), "bad format version 0")


def test_link_count_mismatch() -> None:
    expect_error(raw_sidecar(head_for(2), [full_link(0)]), "head announces 2 links, image has 1")
    expect_error(raw_sidecar(head_for(0), [full_link(0)]), "head announces 0 links, image has 1")


def test_oversized_lists_are_capped() -> None:
    # more entries than links allowed: refused while splitting, before anything is parsed
    many = images.frame(images.MACVLAN_MAGIC, [head_for(0).SerializeToString()] + [b""] * (images.MAX_LINKS + 5))
    expect_error(many, f"more than {images.MAX_LINKS + 1} entries")
    link = full_link(0)
    link.addrs.extend([link.addrs[0]] * images.MAX_ADDRS)
    expect_error(raw_sidecar(head_for(1), [link]), f"more than {images.MAX_ADDRS} addresses")
    link = full_link(0)
    link.routes.extend([link.routes[0]] * images.MAX_ROUTES)
    expect_error(raw_sidecar(head_for(1), [link]), f"more than {images.MAX_ROUTES} routes")
    link = full_link(0, mode=16)
    link.source_macs.extend([b"\x02" * 6] * images.MAX_SOURCE_MACS)
    expect_error(raw_sidecar(head_for(1), [link]), "too many source MACs")


def test_whole_file_size_is_capped(imgdir: tuple[Path, int]) -> None:
    d, fd = imgdir
    (d / images.SIDECAR).write_bytes(b"\0" * 101)
    with pytest.raises(ImageError, match=r"^macvlan\.img: larger than 100 bytes$"):
        images.read_file(fd, images.SIDECAR, limit=100)


# ------------------------------------------------------------- bad values


def _set(field: str, value: object) -> Callable[[pb.macvlan_link], None]:
    def change(link: pb.macvlan_link) -> None:
        setattr(link, field, value)

    return change


def _addr(field: str, value: object) -> Callable[[pb.macvlan_link], None]:
    return lambda link: setattr(link.addrs[0], field, value)


def _route(field: str, value: object) -> Callable[[pb.macvlan_link], None]:
    return lambda link: setattr(link.routes[0], field, value)


BAD_VALUES: list[tuple[str, Callable[[pb.macvlan_link], None], str]] = [
    ("mac-short", _set("address", b"\x02" * 5), "MAC address has 5 bytes, not 6"),
    ("mac-long", _set("address", b"\x02" * 20), "MAC address has 20 bytes, not 6"),
    ("mac-empty", _set("address", b""), "MAC address has 0 bytes"),
    ("mode-0", _set("mode", 0), "unknown macvlan mode 0"),
    ("mode-3", _set("mode", 3), "unknown macvlan mode 3"),
    ("mode-32", _set("mode", 32), "unknown macvlan mode 32"),
    ("flags", _set("flags", 4), "unknown macvlan flags 0x4"),
    ("flags-high", _set("flags", 2**31), "unknown macvlan flags 0x80000000"),
    ("ifindex-0", _set("ifindex", 0), "bad ifindex 0"),
    ("ifindex-huge", _set("ifindex", 2**31), "bad ifindex 2147483648"),
    ("mtu-low", _set("mtu", 67), "MTU 67 out of range"),
    ("mtu-high", _set("mtu", 65536), "MTU 65536 out of range"),
    ("name-empty", _set("name", ""), "empty link name"),
    ("name-long", _set("name", "x" * 16), "longer than 15 bytes"),
    ("name-slash", _set("name", "a/b"), "contains '/'"),
    ("name-space", _set("name", "a b"), "contains ' '"),
    ("name-newline", _set("name", "a\nb"), "contains '\\n'"),
    ("name-nul", _set("name", "a\0b"), "contains '\\x00'"),
    ("name-colon", _set("name", "a:b"), "contains ':'"),
    ("name-dotdot", _set("name", ".."), "is not allowed"),
    ("source-macs-wrong-mode", lambda lk: lk.source_macs.append(b"\x02" * 6), "source MACs on a non-source link"),
    ("source-mac-length", lambda lk: (_set("mode", 16)(lk), lk.source_macs.append(b"\x02")), "bad source MAC length"),
    ("addr-family", _addr("family", 17), "address family 17 unknown"),
    ("addr-length", _addr("address", b"\x01\x02"), "address has 2 bytes"),
    ("addr-prefix", _addr("prefixlen", 33), "prefix length 33"),
    ("addr-broadcast", _addr("broadcast", b"\x01"), "bad address length"),
    ("addr-label-long", _addr("label", "l" * 16), "bad address label"),
    ("route-family", _route("family", 0), "route family 0 unknown"),
    ("route-prefix", _route("dst_len", 33), "route prefix length 33"),
    ("route-gateway", _route("gateway", b"\x01" * 16), "bad route address length"),
]


@pytest.mark.parametrize(("change", "problem"), [(c, p) for _, c, p in BAD_VALUES], ids=[i for i, _, _ in BAD_VALUES])
def test_bad_values(change: Callable[[pb.macvlan_link], None], problem: str) -> None:
    link = full_link(0)
    change(link)
    expect_error(raw_sidecar(head_for(1), [link]), problem)


def test_name_not_utf8() -> None:
    link = full_link(0)
    data = bytearray(raw_sidecar(head_for(1), [link]))
    data[data.index(b"mv0") : data.index(b"mv0") + 3] = b"\xff\xfe\xfd"
    expect_error(bytes(data), "is not valid UTF-8")


def test_duplicate_names_and_ifindexes() -> None:
    a, b = full_link(0), full_link(1)
    b.name = a.name
    expect_error(raw_sidecar(head_for(2), [a, b]), "duplicate link name 'mv0'")
    a, b = full_link(0), full_link(1)
    b.ifindex = a.ifindex
    expect_error(raw_sidecar(head_for(2), [a, b]), f"duplicate ifindex {a.ifindex}")


# ---------------------------------------------------------- netdev rewrite


def test_netdev_rewrite_is_lossless(imgdir: tuple[Path, int]) -> None:
    from pycriu.images import netdev_pb2 as nd

    d, fd = imgdir
    entries = netdev_entries()
    original = images.frame(netdev.NETDEV_MAGIC, entries)
    (d / "netdev-9.img").write_bytes(original)
    assert netdev.netdev_images(fd) == ["netdev-9.img"]
    before = netdev.summarize_netdev(fd, "netdev-9.img")
    assert before.native == [("mv0", 3), ("mv1", 4)] and before.converted == []

    assert netdev.convert_netdev(fd, "netdev-9.img", {3}) == 1
    raw, parsed = netdev.read_netdev(fd, "netdev-9.img")
    assert [raw[0], raw[1], raw[3]] == [entries[0], entries[1], entries[3]]  # untouched, byte for byte
    assert parsed[2].type == nd.EXTLINK  # type: ignore[attr-defined]
    assert parsed[2].macvlan.mode == 4 and parsed[2].macvlan.flags == 1  # type: ignore[attr-defined]
    # its own bytes (unknown fields included), then the new type: parsers take the last value
    assert raw[2] == entries[2] + nd.net_device_entry(type=nd.EXTLINK).SerializePartialToString()  # type: ignore[attr-defined]
    assert entries[2].endswith(b"\xa0\x3e\x2a\xaa\x3e\x03xyz")  # (the unknown fields)
    after = netdev.summarize_netdev(fd, "netdev-9.img")
    assert after.native == [("mv1", 4)] and after.converted == [("mv0", 3)]

    assert netdev.convert_netdev(fd, "netdev-9.img", {3}) == 0  # idempotent: nothing to do
    assert netdev.convert_netdev(fd, "netdev-9.img", {3}, to_native=True) == 1
    raw, parsed = netdev.read_netdev(fd, "netdev-9.img")
    assert [raw[0], raw[1], raw[3]] == [entries[0], entries[1], entries[3]] and raw[2].startswith(entries[2])
    (d / "original.img").write_bytes(original)
    assert parsed == netdev.read_netdev(fd, "original.img")[1]  # what any parser reads: the original entries
    (d / "original.img").unlink()
    assert sorted(os.listdir(d)) == ["netdev-9.img"]  # no temp file left


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_netdev_rewrite_keeps_mode_and_owner(imgdir: tuple[Path, int], mode: int) -> None:
    # a restore in a user namespace opens netdev-<id>.img as the container's host uid
    d, fd = imgdir
    path = d / "netdev-9.img"
    path.write_bytes(images.frame(netdev.NETDEV_MAGIC, netdev_entries()))
    os.chmod(path, mode)
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        owner = (100000, 100000)
        os.chown(path, *owner)
    inode = path.stat().st_ino
    assert netdev.convert_netdev(fd, "netdev-9.img", {3}) == 1
    st = path.stat()
    assert st.st_ino != inode  # replaced, not rewritten in place
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, *owner)


def test_netdev_unconverted_file_untouched(imgdir: tuple[Path, int]) -> None:
    d, fd = imgdir
    (d / "netdev-1.img").write_bytes(images.frame(netdev.NETDEV_MAGIC, netdev_entries()))
    mtime = (d / "netdev-1.img").stat().st_mtime_ns
    assert netdev.convert_netdev(fd, "netdev-1.img", {99}) == 0
    assert (d / "netdev-1.img").stat().st_mtime_ns == mtime


def test_netdev_bad_images(imgdir: tuple[Path, int]) -> None:
    d, fd = imgdir
    with pytest.raises(ImageError, match=r"^netdev-2\.img: missing$"):
        netdev.read_netdev(fd, "netdev-2.img")
    (d / "netdev-2.img").write_bytes(images.frame(images.MACVLAN_MAGIC, []))
    with pytest.raises(ImageError, match=r"^netdev-2\.img: wrong magic"):
        netdev.read_netdev(fd, "netdev-2.img")
    (d / "netdev-2.img").write_bytes(images.frame(netdev.NETDEV_MAGIC, [b"\xff\xff"]))
    with pytest.raises(ImageError, match=r"^netdev-2.img: entry #0 is not a net_device_entry"):
        netdev.read_netdev(fd, "netdev-2.img")


def test_netdev_images_sorted_by_id(imgdir: tuple[Path, int]) -> None:
    d, fd = imgdir
    for name in ("netdev-10.img", "netdev-9.img", "netdev-x.img", "netdev-1.img.tmp", "ifaddr-9.img"):
        (d / name).write_bytes(b"")
    assert netdev.netdev_images(fd) == ["netdev-9.img", "netdev-10.img"]


# ------------------------------------------------------- atomic replacement


def fail_rename(*args: object, **kw: object) -> None:
    raise OSError(5, "Input/output error (injected)")


def test_failed_rename_keeps_old_file(imgdir: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    d, fd = imgdir
    old = valid_samples()["one-link"]
    images.write_atomic(fd, images.SIDECAR, old)
    monkeypatch.setattr(os, "rename", fail_rename)
    with pytest.raises(ImageError, match=r"^macvlan\.img: cannot write it in the images directory: .*injected"):
        images.write_atomic(fd, images.SIDECAR, valid_samples()["every-mode"])
    assert (d / images.SIDECAR).read_bytes() == old
    assert os.listdir(d) == [images.SIDECAR]


def test_failed_write_keeps_old_file(imgdir: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    d, fd = imgdir
    old = valid_samples()["one-link"]
    images.write_atomic(fd, images.SIDECAR, old)
    real_write = os.write
    calls = []

    def short_then_fail(fdw: int, data: object) -> int:
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, "No space left on device (injected)")
        return real_write(fdw, memoryview(data)[:10])  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", short_then_fail)
    with pytest.raises(ImageError, match="No space"):
        images.write_atomic(fd, images.SIDECAR, valid_samples()["every-mode"])
    assert (d / images.SIDECAR).read_bytes() == old
    assert os.listdir(d) == [images.SIDECAR]


def test_failed_netdev_conversion_keeps_old_file(imgdir: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    d, fd = imgdir
    original = images.frame(netdev.NETDEV_MAGIC, netdev_entries())
    (d / "netdev-9.img").write_bytes(original)
    monkeypatch.setattr(os, "rename", fail_rename)
    with pytest.raises(ImageError, match=r"^netdev-9\.img: cannot write"):
        netdev.convert_netdev(fd, "netdev-9.img", {3})
    assert (d / "netdev-9.img").read_bytes() == original
    assert os.listdir(d) == ["netdev-9.img"]


KILLED_WRITER = """
import os, sys, time
from criu_macvlan import images
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
def stall(*args, **kwargs):
    print("writing", flush=True)
    time.sleep(60)
os.rename = stall
images.write_atomic(fd, images.SIDECAR, bytes.fromhex(sys.argv[2]))
"""


def test_killed_writer_leaves_old_file(imgdir: tuple[Path, int]) -> None:
    """SIGKILL between write and rename: the old file stays whole; the temp file is ours to sweep."""
    d, fd = imgdir
    old = valid_samples()["one-link"]
    images.write_atomic(fd, images.SIDECAR, old)
    new = valid_samples()["every-mode"]
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(d), new.hex()], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert read_line(proc.stdout).strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (d / images.SIDECAR).read_bytes() == old
    leftovers = [n for n in os.listdir(d) if n.startswith(images.TMP_PREFIX)]
    assert len(leftovers) == 1
    images.remove_temp_files(fd)
    assert os.listdir(d) == [images.SIDECAR]
    assert images.decode((d / images.SIDECAR).read_bytes()).links == images.decode(old).links


# ------------------------------------------------------------------ safety


def test_symlinked_sidecar_is_refused(imgdir: tuple[Path, int], tmp_path: Path) -> None:
    d, fd = imgdir
    elsewhere = tmp_path / "elsewhere.img"
    elsewhere.write_bytes(valid_samples()["one-link"])
    (d / images.SIDECAR).symlink_to(elsewhere)
    with pytest.raises(ImageError, match=r"^macvlan\.img: is a symlink; refusing to follow it$"):
        images.load(fd)
    (d / "netdev-1.img").symlink_to(elsewhere)
    with pytest.raises(ImageError, match="is a symlink"):
        netdev.read_netdev(fd, "netdev-1.img")


def test_planted_staged_symlink_is_replaced_not_followed(imgdir: tuple[Path, int], tmp_path: Path) -> None:
    d, fd = imgdir
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (d / images.STAGED).symlink_to(victim)
    with pytest.raises(ImageError, match="is a symlink"):
        images.read_file(fd, images.STAGED)
    images.write_atomic(fd, images.STAGED, valid_samples()["one-link"])
    assert victim.read_text() == "precious"
    st = os.lstat(d / images.STAGED)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == criu_image_mode()


def test_temp_file_creation_never_follows_a_link(imgdir: tuple[Path, int], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    d, fd = imgdir
    victim = tmp_path / "victim"
    victim.write_text("precious")
    monkeypatch.setattr(images, "_random_suffix", lambda: "guessed")
    (d / f"{images.TMP_PREFIX}{os.getpid()}-guessed").symlink_to(victim)
    with pytest.raises(ImageError, match="File exists"):
        images.write_atomic(fd, images.SIDECAR, b"x")
    assert victim.read_text() == "precious"
    assert not (d / images.SIDECAR).exists()


def test_images_dir_is_used_by_fd(tmp_path: Path) -> None:
    """Renaming the directory (or swapping its path for a symlink) after open does not redirect us."""
    from criu_macvlan.context import ImagesDir

    d = tmp_path / "img"
    d.mkdir()
    images_dir = ImagesDir.open(str(d))
    try:
        d.rename(tmp_path / "moved")
        decoy = tmp_path / "decoy"
        decoy.mkdir()
        d.symlink_to(decoy)
        images.write_atomic(images_dir.fd, images.SIDECAR, valid_samples()["one-link"])
        assert (tmp_path / "moved" / images.SIDECAR).exists()
        assert os.listdir(decoy) == []
    finally:
        images_dir.close()


def _calls_in(path: Path) -> Iterator[tuple[str, ast.Call]]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def test_image_data_never_reaches_a_shell() -> None:
    """No product module runs a shell: no os.system/popen, no shell=True, no sh -c."""
    modules = sorted((REPO / "criu_macvlan").glob("*.py"))
    assert modules
    for path in modules:
        for func, call in _calls_in(path):
            assert func not in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"), (
                f"{path.name}: {func}"
            )
            for kw in call.keywords:
                assert not (kw.arg == "shell" and ast.unparse(kw.value) != "False"), f"{path.name}: shell="
            literal = ast.unparse(call)
            assert "'sh', '-c'" not in literal and '"sh", "-c"' not in literal, f"{path.name}: sh -c"


# ------------------------------------------------------------ concurrency


def test_concurrent_writers_different_dirs(tmp_path: Path) -> None:
    """Two restores/dumps at once in different images dirs: each dir ends with its own, whole files."""
    samples = valid_samples()
    dirs = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        dirs.append(os.open(tmp_path / name, os.O_RDONLY | os.O_DIRECTORY))
    errors: list[BaseException] = []
    payloads = [samples["one-link"], samples["every-mode"], samples["many-links"]]

    def work(fd: int, data: bytes) -> None:
        try:
            for _ in range(100):
                images.write_atomic(fd, images.SIDECAR, data)
                loaded = images.load(fd)
                assert loaded is not None and images.encode(loaded.head, loaded.links) == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(fd, p)) for fd, p in zip(dirs, payloads, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for fd in dirs:
        os.close(fd)
    assert errors == []
    for name, data in zip("abc", payloads, strict=True):
        assert os.listdir(tmp_path / name) == [images.SIDECAR]
        assert (tmp_path / name / images.SIDECAR).read_bytes() == data


def test_concurrent_writers_same_file(imgdir: tuple[Path, int]) -> None:
    """Racing writers of one file: readers always see one whole version, never a torn one."""
    d, fd = imgdir
    versions = {v for v in valid_samples().values()}
    images.write_atomic(fd, images.SIDECAR, valid_samples()["no-links"])
    stop = threading.Event()
    seen: set[bytes] = set()
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            while not stop.is_set():
                images.write_atomic(fd, images.SIDECAR, data)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            data = images.read_file(fd, images.SIDECAR)
            assert data is not None
            seen.add(data)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert seen <= versions
    assert os.listdir(d) == [images.SIDECAR]


def test_addresses_decode_for_the_kernel() -> None:
    """What validation lets through can be turned into kernel address strings."""
    sidecar = images.decode(encoded([full_link(3)]))
    for addr in sidecar.links[0].addrs:
        socket.inet_ntop(addr.family, addr.address)


def test_informational_strings_not_utf8() -> None:
    head = full_head()
    head.version = images.VERSION
    data = bytearray(raw_sidecar(head, []))
    at = data.index(b"host-a")
    data[at : at + 2] = b"\xff\xfe"
    expect_error(bytes(data), "head hostname is not valid UTF-8")
    data = bytearray(raw_sidecar(head_for(1), [full_link(0)]))
    at = data.index(b"eth0")
    data[at : at + 2] = b"\xff\xfe"
    expect_error(bytes(data), "link 'mv0': parent name is not valid UTF-8")


def test_images_dir_shows_the_real_path_of_a_proc_fd(tmp_path: Path) -> None:
    """CRIU passes /proc/<criu>/fd/<n>; messages must name the directory the user knows."""
    from criu_macvlan.context import ImagesDir

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        opened = ImagesDir.open(f"/proc/{os.getpid()}/fd/{fd}")
        try:
            assert opened.path == str(tmp_path)
        finally:
            opened.close()
    finally:
        os.close(fd)
    plain = ImagesDir.open(str(tmp_path))
    plain.close()
    assert plain.path == str(tmp_path)


def test_failed_commit_rename_is_an_image_error(imgdir: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    d, fd = imgdir
    images.write_atomic(fd, images.STAGED, valid_samples()["one-link"])
    monkeypatch.setattr(os, "rename", fail_rename)
    with pytest.raises(ImageError, match=r"^macvlan\.img: cannot write it in the images directory: .*injected"):
        images.write_atomic(fd, images.SIDECAR, valid_samples()["one-link"])
    assert os.listdir(d) == [images.STAGED]  # no sidecar, no temp file


def test_action_script_unopenable_images_dir(tmp_path: Path) -> None:
    """The shim's entry point: one line, exit code 3, no traceback."""
    env = {**os.environ, "CRTOOLS_SCRIPT_ACTION": "pre-restore", "CRTOOLS_IMAGE_DIR": str(tmp_path / "nope")}
    res = subprocess.run([sys.executable, "-m", "criu_macvlan.action"], env=env, capture_output=True, text=True,
                         cwd=REPO)
    assert res.returncode == ExitCode.IMAGE
    assert res.stderr == f"criu-macvlan-action: pre-restore: cannot open the images directory {tmp_path / 'nope'}: " \
                         "No such file or directory\n"
