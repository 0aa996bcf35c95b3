"""A dump that fails after pre-dump leaves no valid-looking sidecar and no files of ours (no root needed)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sidecars import encoded, full_link, netdev_entries

from criu_macvlan import images, netdev
from criu_macvlan.context import ActionContext, ImagesDir, Mode
from criu_macvlan.errors import ImageError
from criu_macvlan.plugin import MacvlanPlugin


@pytest.fixture
def staged_dump(tmp_path: Path) -> Iterator[tuple[Path, ActionContext]]:
    """The images dir as pre-dump leaves it: a stage and CRIU's netdev image with macvlan ifindex 3."""
    link = full_link(0)
    link.ifindex = 3
    (tmp_path / images.STAGED).write_bytes(encoded([link]))
    (tmp_path / "netdev-9.img").write_bytes(images.frame(netdev.NETDEV_MAGIC, netdev_entries()))
    d = ImagesDir.open(str(tmp_path))
    try:
        yield tmp_path, ActionContext(action="post-dump", mode=Mode.RPC, images=d, log=logging.getLogger("t"))
    finally:
        d.close()


def test_post_dump_commits_and_converts(staged_dump: tuple[Path, ActionContext]) -> None:
    path, ctx = staged_dump
    stage = (path / images.STAGED).stat()
    MacvlanPlugin().criu_post_dump(ctx)
    assert sorted(os.listdir(path)) == [images.SIDECAR, "netdev-9.img"]
    assert (path / images.SIDECAR).stat().st_ino == stage.st_ino  # the stage itself, renamed
    assert (path / images.SIDECAR).stat().st_mode == stage.st_mode
    assert netdev.summarize_netdev(ctx.images.fd, "netdev-9.img").converted == [("mv0", 3)]
    MacvlanPlugin().criu_post_dump(ctx)  # repeated: no change, no error
    assert sorted(os.listdir(path)) == [images.SIDECAR, "netdev-9.img"]


def test_post_dump_failing_leaves_no_sidecar(staged_dump: tuple[Path, ActionContext],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path, ctx = staged_dump
    original = (path / "netdev-9.img").read_bytes()

    def broken(*args: object, **kw: object) -> int:
        raise ImageError("netdev-9.img: injected failure")

    monkeypatch.setattr(netdev, "convert_netdev", broken)
    with pytest.raises(ImageError):
        MacvlanPlugin().criu_post_dump(ctx)
    assert not (path / images.SIDECAR).exists()
    assert (path / "netdev-9.img").read_bytes() == original
    # CRIU then sends network-unlock: the stage goes too
    ctx.action = "network-unlock"
    MacvlanPlugin().criu_network_unlock(ctx)
    assert os.listdir(path) == ["netdev-9.img"]


def test_network_unlock_sweeps_temp_files(staged_dump: tuple[Path, ActionContext]) -> None:
    path, ctx = staged_dump
    (path / f"{images.TMP_PREFIX}123-abcd").write_bytes(b"partial")
    MacvlanPlugin().criu_network_unlock(ctx)
    assert os.listdir(path) == ["netdev-9.img"]


def test_post_dump_without_netdev_images_marks_the_sidecar_empty_ns(staged_dump: tuple[Path, ActionContext]) -> None:
    """CRIU wrote no netdev image (``--empty-ns net``): the sidecar says so, written anew from the stage."""
    path, ctx = staged_dump
    (path / "netdev-9.img").unlink()
    staged = images.decode((path / images.STAGED).read_bytes(), images.STAGED)
    staged.head.empty_ns = False  # as pre-dump stages a tree whose netns CRIU dumps
    (path / images.STAGED).write_bytes(images.encode(staged.head, staged.links))
    MacvlanPlugin().criu_post_dump(ctx)
    assert os.listdir(path) == [images.SIDECAR]
    sidecar = images.load(ctx.images.fd)
    assert sidecar is not None and sidecar.head.empty_ns and [lk.ifindex for lk in sidecar.links] == [3]
